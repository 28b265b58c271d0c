//! The runner through its library API, on real stores (SQLite and the file store in temp
//! directories), the shipped policy and playbook sets, and the built-in store runtime.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use salvage::execute::{
    AnswerOutcome, Decision, ExecuteError, ExecutionReport, ExecutionStatus, JournalEntry, Mode, ReplicaLease, Runner,
    RunnerSettings, RuntimeRegistry, execution_of,
};
use salvage::model::Run;
use salvage::plan::Planner;
use salvage::playbook::PlaybookSet;
use salvage::policy::PolicySet;
use salvage::store::{Expected, Fence, FileStore, RunQuery, SqliteStore, Store, StoreError};

const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
const WAITING_REFUND: &str = "6642c01a-890f-53f5-85d9-81f26aaed645";
const HEALTHY_INVOICE: &str = "08f02c15-b89c-5381-9129-2b27974351a8";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn examples() -> Vec<Run> {
    let mut runs: Vec<Run> = std::fs::read_dir(root().join("examples/runs"))
        .expect("examples")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            Run::from_value(serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")).expect("run")
        })
        .collect();
    runs.sort_by(|a, b| a.id.cmp(&b.id));
    runs
}

struct Sets {
    policies: Arc<PolicySet>,
    playbooks: Arc<PlaybookSet>,
}

fn sets(policies: &Path, playbooks: &Path) -> Sets {
    let policies = PolicySet::load(policies).expect("policies");
    let playbooks = PlaybookSet::load(playbooks, Some(&policies)).expect("playbooks");
    Sets { policies: Arc::new(policies), playbooks: Arc::new(playbooks) }
}

fn default_sets() -> Sets {
    sets(&root().join("policies"), &root().join("playbooks"))
}

fn compat_sets() -> Sets {
    sets(&root().join("policies/compat"), &root().join("playbooks/compat"))
}

/// A SQLite store in `dir` holding the example runs.
async fn sqlite_store(dir: &Path) -> Arc<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.join("salvage.db")).await.expect("open"));
    store.save_all(&examples(), Expected::Any).await.expect("import");
    store
}

fn settings(dir: &Path) -> RunnerSettings {
    RunnerSettings { export_dir: dir.join("bundles"), ..RunnerSettings::default() }
}

fn runner(store: &Arc<dyn Store>, sets: &Sets, settings: RunnerSettings, mode: Mode, actor: &str) -> Runner {
    Runner::new(
        store.clone(),
        sets.policies.clone(),
        sets.playbooks.clone(),
        Arc::new(RuntimeRegistry::default()),
        settings,
        mode,
        actor,
    )
}

async fn plan(store: &Arc<dyn Store>, sets: &Sets, run_id: &str) -> Value {
    Planner::new(store.clone(), sets.policies.clone(), sets.playbooks.clone())
        .plan(run_id, None)
        .await
        .expect("plan")
        .to_value()
}

/// The example store's seven incidents: its failed, paused and approval-waiting runs.
async fn incident_ids(store: &Arc<dyn Store>) -> Vec<String> {
    let incidents: Vec<String> = store
        .list(&RunQuery::all())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter(|e| matches!(e.status.as_str(), "failed" | "paused" | "waiting_for_approval"))
        .map(|e| e.id)
        .collect();
    assert_eq!(incidents.len(), 7);
    incidents
}

fn outcomes(report: &ExecutionReport) -> Vec<(String, String)> {
    report.steps.iter().map(|s| (s.step_id.clone(), s.outcome.clone())).collect()
}

/// Everything a store holds, as JSON: every run, every execution and its journal.
async fn contents(store: &Arc<dyn Store>) -> Value {
    let listed = store.list(&RunQuery::all()).await.expect("list");
    let ids: Vec<String> = listed.items.iter().map(|e| e.id.clone()).collect();
    let runs: Vec<Value> =
        store.get_many(&ids).await.expect("get").items.iter().map(|s| json!([s.run.to_value(), s.revision])).collect();
    let mut executions = Vec::new();
    for stored in store.list_executions(None).await.expect("executions") {
        let journal: Vec<Value> =
            store.journal(&stored.doc.id).await.expect("journal").into_iter().map(|r| json!([r.seq, r.body])).collect();
        executions.push(json!([stored.doc.body, stored.revision, journal]));
    }
    json!({"runs": runs, "executions": executions})
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).expect("dir").filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.display().to_string(), std::fs::read(&path).expect("file")));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_dry_run_takes_the_same_path_and_writes_nothing() {
    for backend in ["sqlite", "file"] {
        let dir = tempfile::tempdir().expect("temp");
        let store: Arc<dyn Store> = match backend {
            "sqlite" => sqlite_store(dir.path()).await,
            _ => {
                let store: Arc<dyn Store> = Arc::new(FileStore::open(dir.path().join("runs")).await.expect("open"));
                store.save_all(&examples(), Expected::Any).await.expect("import");
                store
            }
        };
        let sets = default_sets();
        let before = contents(&store).await;
        let run_files = if backend == "file" { Some(files(&dir.path().join("runs"))) } else { None };
        let incidents = incident_ids(&store).await;
        let mut created = 0;
        for run_id in &incidents {
            let plan = plan(&store, &sets, run_id).await;
            let dry = runner(&store, &sets, settings(dir.path()), Mode::Advisory, "alice")
                .apply(&plan)
                .await
                .expect("dry run");
            assert!(
                dry.execution.status.is_finished() || dry.execution.status == ExecutionStatus::HandedOff,
                "{run_id}: a dry run assumes approvals and reaches an end ({})",
                dry.execution.status
            );
            assert_eq!(dry.execution.mode, Mode::Advisory);
            created += dry.dry_run_runs.len();
            // The same path as the plan: every planned step ran (the dry run follows predictions).
            let executed: Vec<&str> =
                dry.steps.iter().filter(|s| s.outcome != "waiting_for_approval").map(|s| s.step_id.as_str()).collect();
            let planned: Vec<&str> = plan["path"]
                .as_array()
                .expect("path")
                .iter()
                .filter(|p| p["kind"] == "step")
                .map(|p| p["node"].as_str().unwrap_or(""))
                .collect();
            assert_eq!(executed, planned, "{run_id}");
        }
        assert!(created >= 5, "the dry runs would have created branches and replays ({created})");
        assert_eq!(contents(&store).await, before, "{backend}: runs, executions and journals unchanged");
        if let Some(run_files) = run_files {
            assert_eq!(
                files(&dir.path().join("runs"))
                    .into_iter()
                    .filter(|(p, _)| !p.contains("/.salvage/"))
                    .collect::<Vec<_>>(),
                run_files.into_iter().filter(|(p, _)| !p.contains("/.salvage/")).collect::<Vec<_>>(),
                "run files byte-identical"
            );
        }
        assert!(!dir.path().join("bundles").exists(), "no bundle written");
    }
}

#[tokio::test]
async fn a_dry_run_handed_what_the_planner_read_reports_what_one_reading_again_reports() {
    let dir = tempfile::tempdir().expect("temp");
    let store = sqlite_store(dir.path()).await;
    let sets = default_sets();
    let planner = Planner::new(store.clone(), sets.policies.clone(), sets.playbooks.clone());
    let incidents = incident_ids(&store).await;
    let mut inspected = 0;
    for run_id in &incidents {
        let stored = store.get(run_id).await.expect("get").expect("the run");
        let planned = planner.plan_stored_with_inputs(stored, None).await.expect("plan");
        // The JSON handed back is the plan's, made when it was sealed.
        assert_eq!(planned.json, planned.plan.to_value(), "{run_id}");
        let (plan, planned_from) = (planned.json, planned.inputs);
        let dry = |handed: bool| {
            let runner = runner(&store, &sets, settings(dir.path()), Mode::Advisory, "alice");
            let plan = plan.clone();
            let planned_from = planned_from.clone();
            async move {
                if handed { runner.apply_planned(plan, &planned_from).await } else { runner.apply(&plan).await }
                    .expect("dry run")
            }
        };
        let (handed, read_again) = (dry(true).await, dry(false).await);
        let steps = |report: &ExecutionReport| -> Vec<Value> {
            report
                .steps
                .iter()
                .map(|step| {
                    // What a read-only step found; a created run has an id (and times) of its own.
                    const READS: [&str; 7] = [
                        "inspect_report",
                        "inspect_run_tree",
                        "inspect_side_effects",
                        "compare_to_known_good",
                        "verify_persisted",
                        "check_duplicate_delivery",
                        "check_envelope",
                    ];
                    let detail =
                        if READS.contains(&step.catalog_action.as_str()) { step.detail.clone() } else { Value::Null };
                    json!([step.step_id, step.outcome, step.created_run_id.is_some(), detail])
                })
                .collect()
        };
        assert_eq!(steps(&handed), steps(&read_again), "{run_id}");
        assert_eq!(handed.execution.status, read_again.execution.status, "{run_id}");
        // The plan handed over is kept in the record as it was given (the daemon takes it back).
        assert_eq!(handed.execution.plan, plan, "{run_id}");
        assert_eq!(read_again.execution.plan, plan, "{run_id}");
        inspected += handed.steps.iter().filter(|step| step.catalog_action == "inspect_report").count();
    }
    assert!(inspected >= 7, "every incident's dry run inspected its report ({inspected})");
    // A plan whose run changed since is refused as stale whatever the runner was handed.
    let run_id = &incidents[0];
    let stored = store.get(run_id).await.expect("get").expect("the run");
    let planned = planner.plan_stored_with_inputs(stored.clone(), None).await.expect("plan");
    store.save(&stored.run, Expected::Revision(stored.revision)).await.expect("save again");
    let refused = runner(&store, &sets, settings(dir.path()), Mode::Advisory, "alice")
        .apply_planned(planned.json, &planned.inputs)
        .await;
    assert!(matches!(refused, Err(ExecuteError::StalePlan { .. })), "{refused:?}");
}

#[tokio::test]
async fn approvals_are_checked_recorded_idempotent_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp");
    let store = sqlite_store(dir.path()).await;
    let sets = default_sets();
    let plan = plan(&store, &sets, FAILED_INVOICE).await;
    let started =
        runner(&store, &sets, settings(dir.path()), Mode::Enforce, "alice").apply(&plan).await.expect("apply");
    assert_eq!(started.execution.status, ExecutionStatus::WaitingForApproval);
    let pending = started.execution.pending_approval.clone().expect("pending");
    assert_eq!(pending.step_id, "ask_operator");
    assert_eq!(pending.approvers, ["oncall-sre", "incident-commander"]);
    let id = started.execution.execution_id.clone();

    let as_actor = |actor: &str| runner(&store, &sets, settings(dir.path()), Mode::Enforce, actor);
    let refused = as_actor("mallory").answer(&id, "ask_operator", Decision::Approve, None).await;
    assert!(matches!(refused, Err(ExecuteError::NotAnApprover { .. })), "{refused:?}");
    let refused = as_actor("incident-commander").answer(&id, "branch", Decision::Approve, None).await;
    assert!(matches!(refused, Err(ExecuteError::NotWaiting { .. })), "{refused:?}");

    // Both approvers answer at the same moment: one answer is recorded (compare-and-set); the
    // other is told who answered.
    let (commander, sre) = (as_actor("incident-commander"), as_actor("oncall-sre"));
    let (a, b) = tokio::join!(
        commander.answer(&id, "ask_operator", Decision::Approve, Some("no invoice in billing".into())),
        sre.answer(&id, "ask_operator", Decision::Approve, None),
    );
    let answers = [a, b];
    assert_eq!(answers.iter().filter(|r| matches!(r, Ok(AnswerOutcome::Recorded))).count(), 1, "{answers:?}");
    let winner = if matches!(answers[0], Ok(AnswerOutcome::Recorded)) { "incident-commander" } else { "oncall-sre" };
    let loser = if winner == "oncall-sre" { "incident-commander" } else { "oncall-sre" };
    assert!(
        answers.iter().any(|r| matches!(r, Err(ExecuteError::AnsweredBy { by, .. }) if by == winner)),
        "the later answer is told who answered: {answers:?}"
    );
    let again = as_actor(winner).answer(&id, "ask_operator", Decision::Approve, None).await;
    assert!(
        matches!(again, Ok(AnswerOutcome::AlreadyAnswered { .. })),
        "the same answer twice by the same person changes nothing: {again:?}"
    );
    let conflict = as_actor(loser).answer(&id, "ask_operator", Decision::Deny, None).await;
    assert!(
        matches!(&conflict, Err(ExecuteError::AnsweredBy { by, answer, .. }) if by == winner && answer == "approved"),
        "{conflict:?}"
    );

    // A new process (a fresh store handle and runner) picks the approval up.
    drop(store);
    let reopened: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("salvage.db")).await.expect("reopen"));
    let done = runner(&reopened, &sets, settings(dir.path()), Mode::Enforce, "incident-commander")
        .resume(&id)
        .await
        .expect("resume");
    assert_eq!(
        outcomes(&done),
        [
            ("ask_operator".into(), "approved".into()),
            ("branch_approved".into(), "ok".into()),
            ("resume_approved".into(), "ok".into())
        ]
    );
    let branch_id = done.execution.created_runs.get("branch_approved").expect("branch created").clone();
    // The store runtime only records a resume request for the runtime that owns the branch: the
    // branch is still paused where the request found it, so the playbook's `await_run` keeps
    // waiting for it (parked until its next look), never claiming the recovery resolved.
    assert_eq!(done.execution.status, ExecutionStatus::Waiting);
    assert_eq!(done.execution.node.as_deref(), Some("settle_approved"));
    assert!(done.execution.wake_at.is_some());
    assert_eq!(reopened.get(&branch_id).await.expect("get").expect("branch").run.status.as_str(), "paused");
    let branch = reopened.get(&branch_id).await.expect("get").expect("branch").run;
    assert_eq!(
        branch.lineage().branch_checkpoint_id.as_deref(),
        Some(format!("{FAILED_INVOICE}:checkpoint:2").as_str())
    );
    let approver = branch.metadata.get("salvage").and_then(|s| s["approval"]["actor"].as_str()).map(str::to_owned);
    assert!(
        matches!(approver.as_deref(), Some("incident-commander" | "oncall-sre")),
        "the approval travels with the branch: {approver:?}"
    );
    let incident = reopened.get(FAILED_INVOICE).await.expect("get").expect("run").run;
    let approvals = &incident.metadata.get("recovery").expect("recorded on the run")["approvals"];
    assert_eq!(approvals.as_array().map(Vec::len), Some(1));
    assert_eq!(approvals[0]["actor"].as_str().map(str::to_owned), approver);
    let execution =
        execution_of(&reopened.get_execution(&id).await.expect("get").expect("execution").doc).expect("record");
    assert_eq!(execution.answers.len(), 1);
}

#[tokio::test]
async fn the_person_who_started_an_execution_may_not_approve_it() {
    let dir = tempfile::tempdir().expect("temp");
    let store = sqlite_store(dir.path()).await;
    let sets = default_sets();
    let plan = plan(&store, &sets, WAITING_REFUND).await;
    let started =
        runner(&store, &sets, settings(dir.path()), Mode::Enforce, "oncall-sre").apply(&plan).await.expect("apply");
    let id = started.execution.execution_id;
    let own = runner(&store, &sets, settings(dir.path()), Mode::Enforce, "oncall-sre")
        .answer(&id, "decide", Decision::Approve, None)
        .await;
    assert!(matches!(own, Err(ExecuteError::SelfApproval { .. })), "{own:?}");
    let allowed = RunnerSettings { allow_self_approval: true, ..settings(dir.path()) };
    let own = runner(&store, &sets, allowed, Mode::Enforce, "oncall-sre")
        .answer(&id, "decide", Decision::Approve, None)
        .await;
    assert!(matches!(own, Ok(AnswerOutcome::Recorded)), "salvage.yaml may allow it: {own:?}");
}

#[tokio::test]
async fn an_approval_nobody_answers_in_time_takes_the_timeout_exit() {
    let dir = tempfile::tempdir().expect("temp");
    let store = sqlite_store(dir.path()).await;
    let playbooks = dir.path().join("playbooks");
    std::fs::create_dir(&playbooks).expect("dir");
    std::fs::write(
        playbooks.join("hurry.yaml"),
        "playbook: hurry\nversion: 1\ndescription: Ask quickly.\nmatch: { incident: tool_failure }\nstart: report\nsteps:\n  report:\n    action: inspect_report\n    description: The report.\n    next: ask\n  ask:\n    action: request_approval\n    description: Quick.\n    approvers: [oncall-sre]\n    timeout: 1s\n    on: { approved: resolved, denied: abandoned, timeout: escalated }\nends:\n  resolved: { outcome: resolved }\n  abandoned: { outcome: abandoned }\n  escalated: { outcome: escalated }\n",
    )
    .expect("write");
    let sets = sets(&root().join("policies"), &playbooks);
    let plan = plan(&store, &sets, FAILED_INVOICE).await;
    let started =
        runner(&store, &sets, settings(dir.path()), Mode::Enforce, "alice").apply(&plan).await.expect("apply");
    assert_eq!(started.execution.status, ExecutionStatus::WaitingForApproval);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let late = runner(&store, &sets, settings(dir.path()), Mode::Enforce, "oncall-sre")
        .answer(&started.execution.execution_id, "ask", Decision::Approve, None)
        .await;
    assert!(matches!(late, Ok(AnswerOutcome::Expired { .. })), "{late:?}");
    let done = runner(&store, &sets, settings(dir.path()), Mode::Enforce, "alice")
        .resume(&started.execution.execution_id)
        .await
        .expect("resume");
    assert_eq!(done.execution.status, ExecutionStatus::Escalated);
    assert_eq!(
        done.execution.answers.last().map(|a| (a.decision.as_str(), a.actor.as_str())),
        Some(("timeout", "salvage"))
    );
}

#[tokio::test]
async fn a_denied_approval_abandons_the_recovery() {
    let dir = tempfile::tempdir().expect("temp");
    let store = sqlite_store(dir.path()).await;
    let sets = default_sets();
    let plan = plan(&store, &sets, WAITING_REFUND).await;
    let started =
        runner(&store, &sets, settings(dir.path()), Mode::Enforce, "alice").apply(&plan).await.expect("apply");
    assert_eq!(started.execution.pending_approval.as_ref().map(|p| p.step_id.as_str()), Some("decide"));
    let id = started.execution.execution_id;
    let denied = runner(&store, &sets, settings(dir.path()), Mode::Enforce, "service-owner")
        .answer(&id, "decide", Decision::Deny, Some("duplicate refund".into()))
        .await
        .expect("deny");
    assert_eq!(denied, AnswerOutcome::Recorded);
    let done =
        runner(&store, &sets, settings(dir.path()), Mode::Enforce, "service-owner").resume(&id).await.expect("resume");
    assert_eq!(done.execution.status, ExecutionStatus::Abandoned);
    let refund = store.get(WAITING_REFUND).await.expect("get").expect("run").run;
    assert!(refund.pending_approval().is_some(), "the tool was never resolved");
    // The denial is sent to the runtime that owns the run (the store runtime records it for
    // that runtime): a denied run does not wait for ever.
    let requests =
        refund.metadata.get("recovery").and_then(|r| r.get("resumeRequests")).expect("the denial is recorded");
    assert_eq!(requests.as_array().map(Vec::len), Some(1), "{requests}");
    assert_eq!(requests[0]["action"], "deny_approval");
    assert_eq!(requests[0]["approved"], false);
    assert_eq!(requests[0]["decision"]["actor"], "service-owner");
}

#[tokio::test]
async fn resolving_a_tool_approval_waits_for_a_person_even_when_the_plan_says_not() {
    let dir = tempfile::tempdir().expect("temp");
    let store = sqlite_store(dir.path()).await;
    let sets = compat_sets();
    let plan = plan(&store, &sets, WAITING_REFUND).await;
    assert_eq!(plan["steps"][0]["action"], "resolve_approval");
    assert_eq!(plan["steps"][0]["requiresApproval"], false, "the reference would approve the tool itself");
    let operators = RunnerSettings { default_approvers: vec!["oncall-sre".into()], ..settings(dir.path()) };
    let started = runner(&store, &sets, operators.clone(), Mode::Enforce, "alice").apply(&plan).await.expect("apply");
    assert_eq!(started.execution.status, ExecutionStatus::WaitingForApproval);
    let pending = started.execution.pending_approval.clone().expect("pending");
    assert_eq!(
        (pending.step_id.as_str(), pending.approvers.clone()),
        ("resolve_approval", vec!["oncall-sre".to_owned()])
    );
    let id = started.execution.execution_id;
    runner(&store, &sets, operators.clone(), Mode::Enforce, "oncall-sre")
        .answer(&id, "resolve_approval", Decision::Approve, Some("refund verified".into()))
        .await
        .expect("approve");
    let done = runner(&store, &sets, operators, Mode::Enforce, "oncall-sre").resume(&id).await.expect("resume");
    // The store runtime records the decision for the runtime that owns the run; until that
    // runtime continues it, the execution is handed off, not resolved.
    assert_eq!(done.execution.status, ExecutionStatus::HandedOff, "{:?}", outcomes(&done));
    assert_eq!(done.execution.follow_up.as_ref().map(|f| f.run_id.as_str()), Some(WAITING_REFUND));
    let refund = store.get(WAITING_REFUND).await.expect("get").expect("run").run;
    let request = &refund.metadata.get("recovery").expect("recovery")["resumeRequests"][0];
    assert_eq!(request["action"], "resolve_approval");
    assert_eq!(request["decision"]["actor"], "oncall-sre", "the person's decision travels with the request");
}

#[tokio::test]
async fn a_stale_or_altered_plan_is_refused_with_what_changed() {
    let dir = tempfile::tempdir().expect("temp");
    let store = sqlite_store(dir.path()).await;
    let sets = default_sets();
    let plan = plan(&store, &sets, FAILED_INVOICE).await;

    let mut altered = plan.clone();
    altered["steps"][0]["requiresApproval"] = json!(true);
    let refused = runner(&store, &sets, settings(dir.path()), Mode::Enforce, "alice").apply(&altered).await;
    match refused {
        Err(ExecuteError::StalePlan { changes }) => assert!(changes[0].contains("hash"), "{changes:?}"),
        other => panic!("expected a stale plan, got {other:?}"),
    }

    let mut run = store.get(FAILED_INVOICE).await.expect("get").expect("run").run;
    run.status = salvage::model::RunStatus::Running;
    store.save(&run, Expected::Any).await.expect("save");
    match runner(&store, &sets, settings(dir.path()), Mode::Enforce, "alice").apply(&plan).await {
        Err(ExecuteError::StalePlan { changes }) => {
            assert!(changes[0].contains("revision 1 → 2") && changes[0].contains("failed → running"), "{changes:?}");
        }
        other => panic!("expected a stale plan, got {other:?}"),
    }
    assert!(store.list_executions(None).await.expect("list").is_empty(), "nothing was started");

    let fresh = self::plan(&store, &sets, FAILED_INVOICE).await;
    let other_policies = compat_sets();
    let mixed = Sets { policies: other_policies.policies, playbooks: sets.playbooks.clone() };
    assert!(matches!(
        runner(&store, &mixed, settings(dir.path()), Mode::Enforce, "alice").apply(&fresh).await,
        Err(ExecuteError::SetsChanged { .. })
    ));
}

#[tokio::test]
async fn a_plan_is_executed_once_even_when_applied_twice_at_the_same_time() {
    let dir = tempfile::tempdir().expect("temp");
    let store = sqlite_store(dir.path()).await;
    let other: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir.path().join("salvage.db")).await.expect("second handle"));
    let sets = default_sets();
    let plan = plan(&store, &sets, FAILED_INVOICE).await;
    let first = runner(&store, &sets, settings(dir.path()), Mode::Enforce, "alice");
    let second = runner(&other, &sets, settings(dir.path()), Mode::Enforce, "bob");
    let (a, b) = tokio::join!(first.apply(&plan), second.apply(&plan));
    let results = [a, b];
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(
        results.iter().any(|r| matches!(r, Err(ExecuteError::Busy { .. } | ExecuteError::AlreadyExecuted { .. }))),
        "{results:?}"
    );
    assert_eq!(store.list_executions(None).await.expect("list").len(), 1);
    // Later, the plan is refused as already applied.
    let again = runner(&store, &sets, settings(dir.path()), Mode::Enforce, "carol").apply(&plan).await;
    assert!(matches!(again, Err(ExecuteError::AlreadyExecuted { .. } | ExecuteError::Busy { .. })), "{again:?}");
}

#[tokio::test]
async fn a_run_without_a_configured_runtime_fails_its_step_without_asking_an_operator() {
    let dir = tempfile::tempdir().expect("temp");
    let store = sqlite_store(dir.path()).await;
    // A planning-runtime run: salvage.yaml's default leaves `runtimes.planning` unset.
    let mut run = store.get(HEALTHY_INVOICE).await.expect("get").expect("run").run;
    run.metadata.insert("planningRuntime", Value::Bool(true));
    store.save(&run, Expected::Any).await.expect("save");
    let sets = compat_sets();
    let plan = plan(&store, &sets, HEALTHY_INVOICE).await;
    assert_eq!(plan["recommendedAction"], "partial_replay");
    let before = store.list(&RunQuery::all()).await.expect("list").items.len();
    let report = runner(&store, &sets, settings(dir.path()), Mode::Enforce, "alice").apply(&plan).await.expect("apply");
    let step = report.steps.iter().find(|s| s.action == "partial_replay").expect("partial replay step");
    // Nothing was sent anywhere, so the outcome is known: failed, with what to configure.
    assert_eq!(step.outcome, "failed");
    let error = step.detail["error"].as_str().unwrap_or_default();
    assert!(error.contains("runtimes.planning"), "{error}");
    assert_ne!(report.execution.status, ExecutionStatus::NeedsOperator);
    assert!(report.execution.operator_question.is_none());
    assert_eq!(store.list(&RunQuery::all()).await.expect("list").items.len(), before, "no run created");
}

/// Difference (§8 #9): the reference resolves the runtime before looking at the plan, so a plan
/// that only reads fails when no runtime is registered. salvage asks for a runtime only when a
/// step needs one.
#[tokio::test]
async fn difference_a_read_only_plan_needs_no_runtime() {
    let dir = tempfile::tempdir().expect("temp");
    let store = sqlite_store(dir.path()).await;
    // A planning-runtime run: salvage.yaml's default leaves `runtimes.planning` unset.
    let mut run = store.get(HEALTHY_INVOICE).await.expect("get").expect("run").run;
    run.metadata.insert("planningRuntime", Value::Bool(true));
    store.save(&run, Expected::Any).await.expect("save");
    let sets = default_sets();
    let plan = plan(&store, &sets, HEALTHY_INVOICE).await;
    let effects: Vec<&str> =
        plan["steps"].as_array().expect("steps").iter().filter_map(|s| s["effect"].as_str()).collect();
    assert!(!effects.is_empty() && effects.iter().all(|e| *e == "read_only"), "a read-only plan: {effects:?}");
    let report = runner(&store, &sets, settings(dir.path()), Mode::Enforce, "alice").apply(&plan).await.expect("apply");
    assert_eq!(report.execution.status, ExecutionStatus::Resolved, "{:?}", outcomes(&report));
    assert!(report.steps.iter().all(|s| s.outcome != "failed"), "{:?}", outcomes(&report));
}

/// The intents journalled for `step`: (attempt, idempotency key).
async fn intents(store: &Arc<dyn Store>, execution_id: &str, step: &str) -> Vec<String> {
    store
        .journal(execution_id)
        .await
        .expect("journal")
        .into_iter()
        .filter_map(|record| match serde_json::from_value::<JournalEntry>(record.body) {
            Ok(JournalEntry::Intent { step_id, idempotency_key, .. }) if step_id == step => Some(idempotency_key),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_replica_whose_lease_ran_out_sends_no_effect_and_a_trusted_one_keys_its_effects_by_epoch() {
    let dir = tempfile::tempdir().expect("temp");
    let store = sqlite_store(dir.path()).await;
    let sets = default_sets();
    let plan = plan(&store, &sets, FAILED_INVOICE).await;
    let under = |epoch: i64, trusted_for: Option<Duration>, refused: &Arc<std::sync::atomic::AtomicU64>| {
        let fence = Fence { key: format!("incident/{FAILED_INVOICE}"), holder: format!("replica-{epoch}"), epoch };
        let now = std::time::Instant::now();
        // A lease last renewed long ago: trusted until a moment that has passed.
        let until = trusted_for.map_or(now - Duration::from_millis(1), |d| now + d);
        let lease = ReplicaLease::new(fence, until).counting(refused.clone());
        runner(&store, &sets, RunnerSettings { replica: Some(lease), ..settings(dir.path()) }, Mode::Enforce, "daemon")
    };
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = under(7, Some(Duration::from_secs(60)), &refused).apply(&plan).await.expect("apply");
    assert_eq!(started.execution.status, ExecutionStatus::WaitingForApproval);
    let id = started.execution.execution_id.clone();
    runner(&store, &sets, settings(dir.path()), Mode::Enforce, "oncall-sre")
        .answer(&id, "ask_operator", Decision::Approve, None)
        .await
        .expect("approve");
    let runs_before = store.list(&RunQuery::all()).await.expect("list").items.len();

    // The replica stalled past its lease: the branch is not sent, nothing is journalled for
    // it, and the refusal is counted.
    let stale = under(7, None, &refused).resume(&id).await;
    assert!(
        matches!(&stale, Err(ExecuteError::Store(StoreError::LeaseLost { epoch: 7, .. }))),
        "a stale lease stops the runner: {stale:?}"
    );
    assert_eq!(refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(intents(&store, &id, "branch_approved").await.is_empty(), "no intent under a stale lease");
    assert_eq!(store.list(&RunQuery::all()).await.expect("list").items.len(), runs_before, "no branch was made");

    // The replica that claimed it next (epoch 8) carries on; its effect's key names its epoch.
    let resumed = under(8, Some(Duration::from_secs(60)), &refused).resume(&id).await.expect("resume");
    assert_ne!(resumed.execution.status, ExecutionStatus::NeedsOperator, "{:?}", resumed.steps);
    let keys = intents(&store, &id, "branch_approved").await;
    assert_eq!(keys.len(), 1, "{keys:?} {:?}", outcomes(&resumed));
    assert!(keys[0].ends_with("@e8"), "the idempotency key carries the epoch: {}", keys[0]);
    assert_eq!(store.list(&RunQuery::all()).await.expect("list").items.len(), runs_before + 1, "one branch");
    assert_eq!(refused.load(std::sync::atomic::Ordering::Relaxed), 1);
}
