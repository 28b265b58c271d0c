//! Deep and wide lineage through the real binary (issue 10, item 1): a parent chain of 100,000
//! runs, a family of 10,000 runs and a parent cycle in a `file:` store. Every command must end
//! without aborting (a recursive walk, `Clone` or `Drop` over the chain overflows the stack),
//! print output linear in the runs, and stay in bounded memory; `serve` must plan the incidents
//! of such a family and go on. Peak memory is each child's own (`wait4`'s `ru_maxrss`).

#[path = "common/scratch.rs"]
mod scratch;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use salvage::model::Run;
use salvage::store::{Expected, RunStore, SqliteStore};

const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
/// Generous: a debug build on a loaded 2-core machine. A hang is what it catches.
const PATIENCE: Duration = Duration::from_secs(240);
/// Peak memory any one command may take.
const MEMORY_BOUND_KIB: i64 = 1024 * 1024;
/// Largest output per run of the family (a drawn line is at most 64 levels of prefix).
const BYTES_PER_RUN: usize = 400;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_salvage"))
}

fn created_at(n: usize) -> String {
    format!("2025-01-{:02}T{:02}:{:02}:{:02}.000Z", 1 + n / 86_400, n / 3600 % 24, n / 60 % 60, n % 60)
}

/// A completed run below `parent` in the family of `root_id`.
fn member(id: &str, parent: Option<&str>, root_id: &str, n: usize) -> Value {
    json!({
        "id": id, "status": "completed", "input": {"n": n},
        "timestamps": {"createdAt": created_at(n)},
        "metrics": {"tokenUsage": {"prompt": 1, "completion": 1, "total": 2}, "cost": 0.01},
        "metadata": {"lineage": {"rootRunId": root_id, "parentRunId": parent}}
    })
}

/// The failed example run (a side-effecting tool failed) as a member of a family.
fn failed_member(id: &str, parent: Option<&str>, root_id: &str, n: usize) -> Value {
    let text = std::fs::read(root().join(format!("examples/runs/{FAILED_INVOICE}.json"))).expect("example");
    let mut value: Value = serde_json::from_slice(&text).expect("json");
    value["id"] = json!(id);
    value["timestamps"]["createdAt"] = json!(created_at(n));
    value["metadata"]["lineage"]["rootRunId"] = json!(root_id);
    value["metadata"]["lineage"]["parentRunId"] = json!(parent);
    value
}

/// A temp directory with copies of the shipped playbooks and policies and an SQLite store.
struct Workspace {
    dir: tempfile::TempDir,
    store: String,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("temp");
        scratch::copy_shipped_sets(dir.path());
        let store = format!("sqlite:{}", dir.path().join("salvage.db").display());
        Workspace { dir, store }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Saves the runs through the library, in batches (100,000 imports would take hours).
    async fn save(&self, runs: Vec<Value>) {
        let store = SqliteStore::open(self.path("salvage.db")).await.expect("open sqlite");
        for batch in runs.chunks(10_000) {
            let batch: Vec<Run> = batch.iter().map(|value| Run::from_value(value.clone()).expect("run")).collect();
            store.save_all(&batch, Expected::Absent).await.expect("save");
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("SALVAGE_STORE", &self.store)
            .env("NO_COLOR", "1")
            .env_remove("SALVAGE_CONFIG")
            .env_remove("SALVAGE_LOG")
            .env_remove("RUST_BACKTRACE");
        command
    }

    /// Runs `salvage ARGS` to the end and measures it.
    #[allow(clippy::zombie_processes, reason = "reaped by wait_measured, through its pid")]
    fn run(&self, args: &[&str]) -> Measured {
        let name = format!("out-{}", unique());
        let (out_path, err_path) = (self.path(&format!("{name}.stdout")), self.path(&format!("{name}.stderr")));
        let child = self
            .command(args)
            .stdout(std::fs::File::create(&out_path).expect("stdout"))
            .stderr(std::fs::File::create(&err_path).expect("stderr"))
            .spawn()
            .expect("start salvage");
        let (code, max_rss_kib, elapsed) = wait_measured(child.id(), Instant::now());
        let measured = Measured {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            code,
            stdout: std::fs::read(&out_path).expect("stdout"),
            stderr: String::from_utf8_lossy(&std::fs::read(&err_path).expect("stderr")).into_owned(),
            max_rss_kib,
            elapsed,
        };
        eprintln!("{measured}");
        measured
    }

    fn status(&self) -> Option<Value> {
        let out = self.command(&["status", "--json"]).output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// Waits for the child `pid` (killing it after [`PATIENCE`]); its exit code (128 + the signal
/// when a signal ended it), peak resident memory (KiB) and time. The peak is the child's
/// `VmHWM`, polled: `wait4`'s `ru_maxrss` would start from this test process's own peak, which
/// a forked child inherits.
fn wait_measured(pid: u32, started: Instant) -> (i32, i64, Duration) {
    let status_file = format!("/proc/{pid}/status");
    let pid = i32::try_from(pid).expect("pid");
    let mut peak_kib = 0;
    loop {
        let high_water = std::fs::read_to_string(&status_file).ok().and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<i64>().ok()
        });
        peak_kib = peak_kib.max(high_water.unwrap_or(0));
        let mut status = 0;
        // SAFETY: a non-blocking wait for our own child, with a valid pointer to a local.
        let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(waited >= 0, "waitpid failed");
        if waited == pid {
            let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
            return (code, peak_kib, started.elapsed());
        }
        if started.elapsed() > PATIENCE {
            // SAFETY: killing our own child that did not end in time.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Measured {
    args: Vec<String>,
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
    max_rss_kib: i64,
    elapsed: Duration,
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "salvage {}: exit {}, {} bytes out, peak {} MiB, {:.1} s",
            self.args.join(" "),
            self.code,
            self.stdout.len(),
            self.max_rss_kib / 1024,
            self.elapsed.as_secs_f64()
        )
    }
}

impl Measured {
    /// Ended on its own with `code`, in bounded memory, with output linear in `runs`.
    fn assert_bounded(&self, code: i32, runs: usize) -> &Measured {
        assert_eq!(self.code, code, "{self}\n{}", self.stderr);
        assert!(self.max_rss_kib < MEMORY_BOUND_KIB, "{self}");
        assert!(self.stdout.len() < BYTES_PER_RUN * runs, "{self}");
        assert!(!self.stderr.contains("panicked"), "{self}\n{}", self.stderr);
        self
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| panic!("{self}: {e}"))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// How deep a tree node's first-child chain goes (iteratively).
fn depth_of(mut node: &Value) -> usize {
    let mut depth = 1;
    while let Some(child) = node["children"].get(0) {
        node = child;
        depth += 1;
    }
    depth
}

/// `salvage serve --mode advisory` until `incidents` are planned, then SIGTERM; its measure.
#[allow(clippy::zombie_processes, reason = "reaped by wait_measured, through its pid")]
fn serve_until_planned(ws: &Workspace, incidents: u64) -> Measured {
    let log = ws.path("serve.log");
    let child = ws
        .command(&["serve", "--mode", "advisory", "--playbooks", "playbooks", "--policies", "policies"])
        .env("SALVAGE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start serve");
    let pid = child.id();
    let started = Instant::now();
    let planned = |status: &Value| status["daemon"]["incidents"]["planned"].as_u64().unwrap_or(0);
    loop {
        let status = ws.status();
        if status.as_ref().is_some_and(|s| s["running"] == true && planned(s) >= incidents) {
            break;
        }
        // A daemon that died (a zombie now) fails the test.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.split_whitespace().nth(2).is_none_or(|state| state == "Z") {
            panic!("serve ended early: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        assert!(started.elapsed() < PATIENCE, "incidents not planned in time: {status:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: SIGTERM to our own child.
    unsafe { libc::kill(i32::try_from(pid).expect("pid"), libc::SIGTERM) };
    let (code, max_rss_kib, elapsed) = wait_measured(pid, started);
    let measured = Measured {
        args: vec!["serve --mode advisory".into()],
        code,
        stdout: Vec::new(),
        stderr: std::fs::read_to_string(&log).unwrap_or_default(),
        max_rss_kib,
        elapsed,
    };
    eprintln!("{measured}");
    measured
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100000_deep_chain_is_read_planned_and_served_in_bounded_memory() {
    const LENGTH: usize = 100_000;
    let ws = Workspace::new();
    let id = |n: usize| format!("chain-{n:06}");
    let root_id = id(0);
    let leaf_id = id(LENGTH - 1);
    let runs: Vec<Value> = (0..LENGTH)
        .map(|n| {
            let parent = n.checked_sub(1).map(id);
            if n == LENGTH - 1 {
                failed_member(&id(n), parent.as_deref(), &root_id, n)
            } else {
                member(&id(n), parent.as_deref(), &root_id, n)
            }
        })
        .collect();
    ws.save(runs).await;

    let plan = ws.run(&["plan", &leaf_id, "--json"]);
    let plan = plan.assert_bounded(0, LENGTH).json();
    assert_eq!(plan["runId"], leaf_id.as_str());
    assert!(plan["playbook"]["name"].is_string(), "a playbook handles the failed leaf: {plan}");

    let report = ws.run(&["report", &leaf_id, "--json"]);
    let report = report.assert_bounded(0, LENGTH).json();
    let tree = &report["runTree"];
    assert_eq!(tree["id"], root_id.as_str());
    assert_eq!(depth_of(tree), 40, "the tree stops at 40 levels");
    assert_eq!(tree["omittedRuns"], (LENGTH - 40) as u64, "and says how many runs it left out");
    let text = ws.run(&["report", &leaf_id]);
    assert!(text.assert_bounded(0, LENGTH).text().contains("99960 more runs below, not shown"), "{}", text.text());

    let drawn = ws.run(&["tree"]);
    let drawn = drawn.assert_bounded(0, LENGTH).text();
    assert_eq!(drawn.lines().count(), LENGTH, "the whole-store drawing has every run");
    assert!(drawn.lines().last().is_some_and(|l| l.ends_with(&format!("(+{}) └─ {leaf_id} [failed]", LENGTH - 66))));
    let forest = ws.run(&["tree", "--json"]);
    let forest = forest.assert_bounded(0, LENGTH).json();
    assert_eq!(depth_of(&forest[0]), 40);
    let subtree = ws.run(&["tree", "--root", &id(50_000), "--json"]);
    assert_eq!(subtree.assert_bounded(0, LENGTH).json()["omittedRuns"], (LENGTH / 2 - 40) as u64);
    let subtree = ws.run(&["tree", "--root", &id(50_000)]);
    assert_eq!(subtree.assert_bounded(0, LENGTH).text().lines().count(), 40);
    let listed = ws.run(&["runs", "-q"]);
    assert_eq!(listed.assert_bounded(0, LENGTH).text().lines().count(), LENGTH);

    let served = serve_until_planned(&ws, 1);
    assert_eq!(served.code, 0, "SIGTERM ends serve with 0: {served}\n{}", served.stderr);
    assert!(served.max_rss_kib < MEMORY_BOUND_KIB, "{served}");
    let status = ws.status().expect("status");
    assert_eq!(status["daemon"]["incidents"]["failed"].as_u64().unwrap_or(0), 0, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_10000_run_family_is_read_planned_and_served_in_bounded_memory() {
    // One root with 5,009 children, ten of which lead chains of 500; the root and the ends of
    // two chains failed.
    let ws = Workspace::new();
    let root_id = "family-root".to_owned();
    let mut runs = vec![failed_member(&root_id, None, &root_id, 0)];
    let mut n = 1;
    for chain in 0..10 {
        let mut parent = root_id.clone();
        for link in 0..500 {
            let id = format!("family-chain{chain}-{link:03}");
            runs.push(if link == 499 && chain < 2 {
                failed_member(&id, Some(&parent), &root_id, n)
            } else {
                member(&id, Some(&parent), &root_id, n)
            });
            parent = id;
            n += 1;
        }
    }
    for child in 0..4_999 {
        runs.push(member(&format!("family-child-{child:04}"), Some(&root_id), &root_id, n));
        n += 1;
    }
    assert_eq!(runs.len(), 10_000);
    ws.save(runs).await;

    let plan = ws.run(&["plan", "family-chain1-499", "--json"]);
    assert!(plan.assert_bounded(0, 10_000).json()["playbook"]["name"].is_string());
    let report = ws.run(&["report", &root_id, "--json"]);
    let tree = report.assert_bounded(0, 10_000).json()["runTree"].clone();
    let mut shown = 0;
    let mut stack = vec![&tree];
    while let Some(node) = stack.pop() {
        shown += 1;
        stack.extend(node["children"].as_array().into_iter().flatten());
    }
    assert_eq!(shown, 1_000, "the report shows the first 1,000 runs");
    assert_eq!(tree["omittedRuns"], 9_000);
    assert_eq!(tree["subtreeMetrics"]["runCount"], 1_000, "its metrics are those of the runs shown");
    for args in
        [&["tree"][..], &["tree", "--json"], &["tree", "--root", &root_id], &["report", "family-chain0-499"], &["runs"]]
    {
        ws.run(args).assert_bounded(0, 10_000);
    }

    let served = serve_until_planned(&ws, 3);
    assert_eq!(served.code, 0, "{served}\n{}", served.stderr);
    assert!(served.max_rss_kib < MEMORY_BOUND_KIB, "{served}");
}

#[test]
fn a_parent_cycle_in_a_file_store_is_cut_and_reported_by_every_command() {
    // a → c → b → a (each run's parent is the next), a deep chain below b, and a failed run
    // whose root is a member of the cycle.
    let ws = Workspace::new();
    let dir = ws.path("runs");
    std::fs::create_dir(&dir).expect("mkdir");
    let mut runs = vec![
        member("a", Some("c"), "a", 0),
        member("b", Some("a"), "a", 1),
        member("c", Some("b"), "a", 2),
        failed_member("incident", Some("b"), "b", 3),
    ];
    let mut parent = "b".to_owned();
    for n in 0..3_000 {
        let id = format!("below-{n:04}");
        runs.push(member(&id, Some(&parent), "a", 4 + n));
        parent = id;
    }
    for run in &runs {
        let id = run["id"].as_str().expect("id");
        std::fs::write(dir.join(format!("{id}.json")), serde_json::to_vec(run).expect("json")).expect("write");
    }
    let ws = Workspace { store: format!("file:{}", dir.display()), ..ws };
    let count = runs.len();
    ws.run(&["runs"]).assert_bounded(0, count);
    for args in [&["tree"][..], &["tree", "--json"], &["tree", "--root", "a"], &["tree", "--root", "b", "--json"]] {
        let out = ws.run(args);
        out.assert_bounded(0, count);
        assert!(out.stderr.contains("lineage cycle"), "{out}: {}", out.stderr);
    }
    let report = ws.run(&["report", "incident", "--json"]);
    let report = report.assert_bounded(0, count).json();
    assert_eq!(report["runTree"]["id"], "b");
    assert!(report["lineageCycles"][0]["runIds"].is_array(), "{report}");
    let plan = ws.run(&["plan", "incident", "--json"]);
    assert!(plan.assert_bounded(0, count).json()["playbook"]["name"].is_string());
}

/// A runtime whose every action panics (a bug salvage has not found yet).
#[derive(Debug)]
struct Panics;

#[async_trait::async_trait]
impl salvage::execute::Runtime for Panics {
    fn describe(&self) -> String {
        "panics".into()
    }
    async fn perform(
        &self,
        _request: &salvage::execute::ActionRequest,
        _runs: &dyn RunStore,
    ) -> Result<salvage::execute::ActionResult, salvage::execute::RuntimeError> {
        panic!("a bug met while recovering");
    }
}

#[derive(Debug)]
struct PanicsOn {
    run_id: String,
}

impl salvage::execute::ResolveRuntime for PanicsOn {
    fn resolve(
        &self,
        run: &Run,
    ) -> Result<std::sync::Arc<dyn salvage::execute::Runtime>, salvage::execute::RuntimeError> {
        if run.id == self.run_id {
            Ok(std::sync::Arc::new(Panics))
        } else {
            salvage::execute::RuntimeRegistry::default().resolve(run)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_records_an_incident_whose_handling_panics_and_goes_on_with_the_others() {
    use salvage::execute::{Mode, RunnerSettings};
    use salvage::serve::{Backend, Daemon, NoGate, ServeOptions, SetDirs, Timing};
    use salvage::store::{ExecutionStore, StateStore};
    use std::sync::Arc;

    let temp = tempfile::tempdir().expect("temp");
    let store = Arc::new(SqliteStore::open(temp.path().join("salvage.db")).await.expect("sqlite"));
    // Two incidents whose playbooks act through the runtime without asking anyone first; the
    // first one's runtime panics. Then a third arrives.
    let panicking = "b082b9bc-0861-56d5-b884-37bbd428657e";
    let healthy = "59fd728d-9938-5d34-914f-4e32b6f4609d:partial-replay:1795588321456";
    let example = |id: &str| -> Run {
        let text = std::fs::read(root().join(format!("examples/runs/{id}.json"))).expect("read");
        Run::from_value(serde_json::from_slice(&text).expect("json")).expect("run")
    };
    for id in [panicking, healthy] {
        store.save(&example(id), Expected::Absent).await.expect("save");
    }
    let options = ServeOptions {
        dirs: SetDirs { playbooks: root().join("playbooks"), policies: root().join("policies") },
        mode: Mode::Enforce,
        workers: 1,
        queue_capacity: 4,
        actor: "serve-test".into(),
        settings: RunnerSettings { export_dir: temp.path().join("bundles"), ..RunnerSettings::default() },
        runtimes: Arc::new(PanicsOn { run_id: panicking.into() }),
        gate: Arc::new(NoGate),
        timing: Timing { shutdown_grace: Duration::from_millis(500), ..Timing::default() },
        watch_sets: false,
        replicas: salvage::serve::ReplicaSettings::default(),
    };
    let daemon = Daemon::start(Backend::Sqlite(store.clone()), options).await.expect("start");
    let handle = daemon.handle();
    let serving = tokio::spawn(daemon.run());

    let record_of = |id: &str| {
        let store = store.clone();
        let key = format!("serve/incident/{id}");
        async move { store.get_state(&key).await.expect("read").map(|record| record.body) }
    };
    let deadline = Instant::now() + PATIENCE;
    let failed = loop {
        if let Some(record) = record_of(panicking).await.filter(|r| r["state"] == "failed") {
            break record;
        }
        assert!(Instant::now() < deadline, "the panicking incident was not recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("panicked") && error.contains("a bug met while recovering"), "{failed}");

    // With one worker, the other incidents go through the worker the panic happened on.
    let mut late = example(healthy);
    late.id = "late-arrival".into();
    store.save(&late, Expected::Absent).await.expect("save");
    for id in [healthy, "late-arrival"] {
        loop {
            let executions = store.list_executions(None).await.expect("list");
            let finished = ["resolved", "escalated", "abandoned"];
            if executions.iter().any(|e| e.doc.run_id == id && finished.contains(&e.doc.status.as_str())) {
                break;
            }
            assert!(Instant::now() < deadline, "{id} was not recovered after the panic");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    handle.stop();
    let summary = tokio::time::timeout(PATIENCE, serving).await.expect("stops").expect("join").expect("serve ok");
    assert!(summary.handled >= 3, "{summary:?}");
}
