//! The daemon through the library, on real SQLite stores:
//! - hot reload under load: incidents are planned (advisory) while the policy and playbook
//!   files flip between valid and broken versions a hundred times, by the watcher and by
//!   explicit reloads; every plan must name one whole set that was applied, a broken version is
//!   never active, and the last valid version is active at the end;
//! - a hung runtime holds one worker while the other incidents go on;
//! - an answer recorded by another process that does not resume is picked up by the daemon.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use salvage::execute::{Mode, RunnerSettings, RuntimeRegistry};
use salvage::model::Run;
use salvage::plan::RecoverySet;
use salvage::serve::{Backend, Daemon, FeedTiming, NoGate, ReloadOutcome, ServeOptions, SetDigests, SetDirs, Timing};
use salvage::store::{Expected, RunStore, SqliteStore, StateStore};

const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read").filter_map(Result::ok) {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

/// A copy of a failed example run under a new id.
fn failed_run(template: &Value, n: usize) -> Run {
    let mut value = template.clone();
    value["id"] = Value::String(format!("load-{n:04}"));
    Run::from_value(value).expect("run")
}

/// The versions the files flip between: valid ones differ in a comment (policy) and a
/// description (playbook); broken ones do not load.
struct Versions {
    policy_file: PathBuf,
    playbook_file: PathBuf,
    policy: String,
    playbook: String,
}

impl Versions {
    fn write_valid(&self, n: usize) {
        std::fs::write(&self.policy_file, format!("{}\n// version {n}\n", self.policy)).expect("write");
        let playbook = self.playbook.replacen("description:", &format!("description: v{n}"), 1);
        std::fs::write(&self.playbook_file, playbook).expect("write");
    }

    fn write_broken(&self, n: usize) {
        if n.is_multiple_of(2) {
            std::fs::write(&self.policy_file, format!("{}\nfn broken_{n}( {{\n", self.policy)).expect("write");
        } else {
            std::fs::write(&self.playbook_file, format!("{}\n  oops: [unclosed\n", self.playbook)).expect("write");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_every_plan_uses_one_whole_applied_set_and_the_last_valid_set_wins() {
    let temp = tempfile::tempdir().expect("temp");
    let dirs = SetDirs { playbooks: temp.path().join("playbooks"), policies: temp.path().join("policies") };
    copy_dir(&root().join("playbooks"), &dirs.playbooks);
    copy_dir(&root().join("policies"), &dirs.policies);
    let versions = Versions {
        policy_file: dirs.policies.join("approvals.rhai"),
        playbook_file: dirs.playbooks.join("side-effecting-tool-failed.yaml"),
        policy: std::fs::read_to_string(dirs.policies.join("approvals.rhai")).expect("read"),
        playbook: std::fs::read_to_string(dirs.playbooks.join("side-effecting-tool-failed.yaml")).expect("read"),
    };
    let store = Arc::new(SqliteStore::open(temp.path().join("salvage.db")).await.expect("sqlite"));
    let defaults = Timing::default();
    let timing = Timing {
        feed: FeedTiming { poll: Duration::from_millis(20), ..defaults.feed },
        heartbeat: Duration::from_millis(500),
        ..defaults
    };
    let options = ServeOptions {
        dirs: dirs.clone(),
        mode: Mode::Advisory,
        workers: 2,
        queue_capacity: 8,
        actor: "serve-test".into(),
        settings: RunnerSettings { export_dir: temp.path().join("bundles"), ..RunnerSettings::default() },
        runtimes: Arc::new(RuntimeRegistry::default()),
        gate: Arc::new(NoGate),
        timing,
        watch_sets: true,
        replicas: salvage::serve::ReplicaSettings::default(),
    };
    let daemon = Daemon::start(Backend::Sqlite(store.clone()), options).await.expect("start");
    let handle = daemon.handle();
    let serving = tokio::spawn(daemon.run());

    // Incidents keep arriving while the files flip.
    let template: Value = serde_json::from_slice(
        &std::fs::read(root().join(format!("examples/runs/{FAILED_INVOICE}.json"))).expect("read"),
    )
    .expect("json");
    let producer_store = store.clone();
    let producer = tokio::spawn(async move {
        let mut n = 0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(4) || n < 40 {
            producer_store.save(&failed_run(&template, n), Expected::Absent).await.expect("save");
            n += 1;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        n
    });

    let mut outcomes = Vec::new();
    for flip in 0..100_usize {
        if flip.is_multiple_of(2) {
            versions.write_valid(flip);
        } else {
            versions.write_broken(flip);
        }
        // Half the reloads are explicit (SIGHUP's path), half are left to the watcher.
        if flip % 4 < 2 {
            outcomes.push((flip, handle.reload("test").await.outcome));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    versions.write_valid(1000);
    let last_valid = RecoverySet::load(&dirs.playbooks, &dirs.policies).expect("the last version is valid").digest();
    let produced = producer.await.expect("producer");

    // Every incident gets planned, and the watcher catches up with the last version.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let planned = store.list_state("serve/dry-run").await.expect("list").len();
        let active = handle.reloader().current().digest();
        if planned == produced && active == last_valid {
            break;
        }
        assert!(Instant::now() < deadline, "{planned}/{produced} planned; active {active} (want {last_valid})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.stop();
    serving.await.expect("join").expect("serve");

    for (flip, outcome) in &outcomes {
        if flip % 2 == 1 {
            assert_eq!(*outcome, ReloadOutcome::Rejected, "flip {flip} wrote a broken version");
        }
    }
    assert!(outcomes.iter().any(|(_, o)| *o == ReloadOutcome::Applied));
    let applied: HashSet<SetDigests> = handle.reloader().history().into_iter().collect();
    assert!(applied.len() > 10, "many versions went live: {}", applied.len());
    let mut used = HashSet::new();
    for doc in store.list_state("serve/dry-run").await.expect("list") {
        let plan = &doc.body["plan"];
        let digests = SetDigests {
            policy_digest: plan["policyDigest"].as_str().expect("policy digest").to_owned(),
            playbook_set_digest: plan["playbookSetDigest"].as_str().expect("playbook digest").to_owned(),
        };
        assert!(applied.contains(&digests), "{} was planned with a set that was never applied: {digests:?}", doc.key);
        let run_id = doc.key.trim_start_matches("serve/dry-run/");
        let record = store.get_state(&format!("serve/incident/{run_id}")).await.expect("read").expect("record");
        assert_eq!(record.body["policyDigest"], plan["policyDigest"], "the record names the plan's set");
        used.insert(digests);
    }
    assert!(used.len() >= 2, "plans were made with several sets while they flipped: {}", used.len());
    assert_eq!(handle.reloader().current().digest(), last_valid, "the last valid version is active");
}

/// The store runtime, except that acting on one run never finishes (a hung runtime).
#[derive(Debug)]
struct HangsOn {
    run_id: String,
}

#[derive(Debug)]
struct Hung;

#[async_trait::async_trait]
impl salvage::execute::Runtime for Hung {
    fn describe(&self) -> String {
        "hung".into()
    }
    async fn perform(
        &self,
        _request: &salvage::execute::ActionRequest,
        _runs: &dyn RunStore,
    ) -> Result<salvage::execute::ActionResult, salvage::execute::RuntimeError> {
        std::future::pending().await
    }
}

impl salvage::execute::ResolveRuntime for HangsOn {
    fn resolve(&self, run: &Run) -> Result<Arc<dyn salvage::execute::Runtime>, salvage::execute::RuntimeError> {
        if run.id.starts_with(&self.run_id) { Ok(Arc::new(Hung)) } else { RuntimeRegistry::default().resolve(run) }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_runtime_holds_one_worker_and_the_other_incidents_go_on() {
    use salvage::store::ExecutionStore;
    let temp = tempfile::tempdir().expect("temp");
    let store = Arc::new(SqliteStore::open(temp.path().join("salvage.db")).await.expect("sqlite"));
    // Two incidents whose playbooks act through the runtime without asking anyone first.
    let hung = "b082b9bc-0861-56d5-b884-37bbd428657e";
    let healthy = "59fd728d-9938-5d34-914f-4e32b6f4609d:partial-replay:1795588321456";
    for id in [hung, healthy] {
        let value: Value =
            serde_json::from_slice(&std::fs::read(root().join(format!("examples/runs/{id}.json"))).expect("read"))
                .expect("json");
        store.save(&Run::from_value(value).expect("run"), Expected::Absent).await.expect("save");
    }
    let defaults = Timing::default();
    let options = ServeOptions {
        dirs: SetDirs { playbooks: root().join("playbooks"), policies: root().join("policies") },
        mode: Mode::Enforce,
        workers: 2,
        queue_capacity: 4,
        actor: "serve-test".into(),
        settings: RunnerSettings { export_dir: temp.path().join("bundles"), ..RunnerSettings::default() },
        runtimes: Arc::new(HangsOn { run_id: hung.into() }),
        gate: Arc::new(NoGate),
        timing: Timing { shutdown_grace: Duration::from_millis(500), ..defaults },
        watch_sets: false,
        replicas: salvage::serve::ReplicaSettings::default(),
    };
    let daemon = Daemon::start(Backend::Sqlite(store.clone()), options).await.expect("start");
    let handle = daemon.handle();
    let serving = tokio::spawn(daemon.run());
    let deadline = Instant::now() + Duration::from_secs(60);
    let healthy_execution = loop {
        let executions = store.list_executions(None).await.expect("list");
        let finished = ["resolved", "escalated", "abandoned"];
        let done = executions.iter().find(|e| e.doc.run_id == healthy && finished.contains(&e.doc.status.as_str()));
        if let Some(done) = done {
            break done.doc.clone();
        }
        let states: Vec<(&str, &str)> =
            executions.iter().map(|e| (e.doc.run_id.as_str(), e.doc.status.as_str())).collect();
        assert!(Instant::now() < deadline, "the healthy incident was stalled: {states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Its playbook ends in `escalated` (the replay's source is not in this store): it ran to the end.
    assert_eq!(healthy_execution.status, "escalated");
    let stuck = store.list_executions(Some("running")).await.expect("list");
    assert_eq!(
        stuck.iter().map(|e| e.doc.run_id.as_str()).collect::<Vec<_>>(),
        [hung],
        "the hung one is still running"
    );
    // Stopping does not wait for the hung step beyond the grace: its journal says where it was.
    handle.stop();
    let summary =
        tokio::time::timeout(Duration::from_secs(30), serving).await.expect("stops").expect("join").expect("ok");
    assert_eq!(summary.abandoned_tasks, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_recorded_by_another_process_without_resuming_is_picked_up_by_the_daemon() {
    use salvage::execute::{Decision, ExecutionStatus, Runner};
    use salvage::store::ExecutionStore;
    let temp = tempfile::tempdir().expect("temp");
    let path = temp.path().join("salvage.db");
    let store = Arc::new(SqliteStore::open(&path).await.expect("sqlite"));
    let value: Value = serde_json::from_slice(
        &std::fs::read(root().join(format!("examples/runs/{FAILED_INVOICE}.json"))).expect("read"),
    )
    .expect("json");
    store.save(&Run::from_value(value).expect("run"), Expected::Absent).await.expect("save");
    let dirs = SetDirs { playbooks: root().join("playbooks"), policies: root().join("policies") };
    let defaults = Timing::default();
    let options = ServeOptions {
        dirs: dirs.clone(),
        mode: Mode::Enforce,
        workers: 2,
        queue_capacity: 4,
        actor: "serve-test".into(),
        settings: RunnerSettings { export_dir: temp.path().join("bundles"), ..RunnerSettings::default() },
        runtimes: Arc::new(RuntimeRegistry::default()),
        gate: Arc::new(NoGate),
        timing: Timing { approvals_poll: Duration::from_millis(100), ..defaults },
        watch_sets: false,
        replicas: salvage::serve::ReplicaSettings::default(),
    };
    let daemon = Daemon::start(Backend::Sqlite(store.clone()), options).await.expect("start");
    let handle = daemon.handle();
    let serving = tokio::spawn(daemon.run());
    let status_of = |store: Arc<SqliteStore>| async move {
        store.list_executions(None).await.expect("list").first().map(|e| e.doc.clone())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let waiting = loop {
        if let Some(doc) = status_of(store.clone()).await.filter(|d| d.status == "waiting_for_approval") {
            break doc;
        }
        assert!(Instant::now() < deadline, "no approval requested");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Another store handle (as another process has) records the answer and does not resume.
    let other: Arc<dyn salvage::store::Store> = Arc::new(SqliteStore::open(&path).await.expect("sqlite"));
    let set = RecoverySet::load(&dirs.playbooks, &dirs.policies).expect("set");
    let approver = Runner::new(
        other,
        set.policies.clone(),
        set.playbooks.clone(),
        Arc::new(RuntimeRegistry::default()),
        RunnerSettings::default(),
        Mode::Enforce,
        "oncall-sre",
    );
    approver.answer(&waiting.id, "ask_operator", Decision::Approve, None).await.expect("answer");
    let done = loop {
        let doc = status_of(store.clone()).await.expect("execution");
        let status = ExecutionStatus::parse(&doc.status);
        if status.is_some_and(|s| s.is_finished() || s == ExecutionStatus::Waiting) {
            break doc;
        }
        assert!(Instant::now() < deadline, "the daemon did not resume the answered execution: {}", doc.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The store runtime records the branch's resume for its runtime; the playbook's await_run
    // then waits for the branch, parked.
    assert_eq!(done.status, "waiting");
    assert_eq!(salvage::execute::execution_of(&done).ok().and_then(|e| e.node).as_deref(), Some("settle_approved"));
    handle.stop();
    serving.await.expect("join").expect("serve");
}
