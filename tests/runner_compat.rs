//! The runner, driven by the compat policy and playbook set, against the recorded
//! `DistributedRecoveryRunner.executePlan` outputs (`runner.default` and `runner.approved` of
//! every recorded run).
//!
//! Each recorded call is replayed on a fresh copy of its store: plan with the compat set,
//! `apply` with the built-in store runtime and, for `runner.approved`, a person approving
//! every step that waits (the reference's `approved: true`). Compared: the executed action
//! (or `waiting_for_recovery_approval` / `inspect_report`), the pending approval the runner
//! returns, the plan it executed, and which runs the action created or changed. The created
//! runs themselves are compared field by field with the corpus in `tests/runtimes.rs`.
//!
//! Deliberate differences, each asserted by name below:
//! - `resolve_approval_waits_for_a_human`: the reference resolves a pending approval without
//!   anyone approving (`approved: false` still executes it); salvage always waits for a
//!   person, then records the answer on the run.
//! - `workflow_branch_is_executed`: the reference cannot execute
//!   `workflow_branch_from_failure_checkpoint` and reports `inspect_report`; salvage asks for
//!   approval and, once approved, branches the workflow run.
//! - `branches_are_not_resumed_by_the_runner`: the reference resumes a branch live right after
//!   creating it (`autoResumeBranch`); salvage creates it paused and leaves the resume to the
//!   agent's own runtime, so the source run is not touched either.
//! - `stale_approvals_are_refused`: the reference "resolves" the stale approval of a failed
//!   run and changes nothing; salvage reports the step as failed.
//! - `approvals_are_recorded_on_the_incident_run`: the reference keeps no trace of who
//!   approved; salvage records each answer (actor, reason, time) on the run it affects.
//! - `the_whole_plan_is_executed`: the reference executes one step per call; salvage walks the
//!   plan's graph to an end.

mod conformance_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use conformance_support::{corpus_dir, read_json, recorded_runs, store_dirs};
use salvage::execute::compat::{RUNTIME_ACTIONS, reference_view};
use salvage::execute::{
    Decision, ExecutionStatus, Mode, Runner, RunnerSettings, RuntimeRegistry, RuntimesConfig, StepReport,
};
use salvage::model::Run;
use salvage::plan::Planner;
use salvage::playbook::PlaybookSet;
use salvage::policy::PolicySet;
use salvage::store::{Expected, MemoryStore, RunStore, Store};

const APPROVER: &str = "incident-commander";

struct CompatSets {
    policies: Arc<PolicySet>,
    playbooks: Arc<PlaybookSet>,
}

fn compat_sets() -> CompatSets {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let policies = PolicySet::load(&root.join("policies/compat")).unwrap_or_else(|e| panic!("compat policies: {e}"));
    let playbooks = PlaybookSet::load(&root.join("playbooks/compat"), Some(&policies))
        .unwrap_or_else(|d| panic!("compat playbooks: {d:?}"));
    CompatSets { policies: Arc::new(policies), playbooks: Arc::new(playbooks) }
}

/// The reference runner sent every run that was not a registered workflow to its one agent;
/// here planning-runtime runs go to the store runtime too (salvage's default leaves them
/// unconfigured, so that they fail closed).
fn registry() -> Arc<RuntimeRegistry> {
    let config = RuntimesConfig { planning: Some("store".to_owned()), ..RuntimesConfig::default() };
    Arc::new(RuntimeRegistry::from_config(&config).expect("registry"))
}

fn runner(store: &Arc<dyn Store>, sets: &CompatSets, actor: &str) -> Runner {
    let settings = RunnerSettings { default_approvers: vec![APPROVER.to_owned()], ..RunnerSettings::default() };
    Runner::new(
        store.clone(),
        sets.policies.clone(),
        sets.playbooks.clone(),
        registry(),
        settings,
        Mode::Enforce,
        actor,
    )
}

/// What one runner call came to, in the corpus' terms.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// The first action a runtime carried out, else `waiting_for_recovery_approval` or
    /// `inspect_report`.
    executed_action: String,
    /// `executePlan`'s pending approval (its keys only).
    pending_approval: Value,
    /// Whether that action created a run (branches and replays).
    created_run: bool,
    /// Whether the incident run's record changed (salvage's record of approvals under
    /// `metadata.recovery.approvals` aside).
    incident_changed: bool,
}

fn recorded_outcome(entry: &Value, run_id: &str) -> Outcome {
    let after = &entry["storeAfter"];
    let executed_action = entry["executedAction"].as_str().unwrap_or_default().to_owned();
    Outcome {
        // Runs the reference's live agent or workflow created while resuming belong to the
        // runtime layer; the runner itself creates runs only by branching or replaying.
        created_run: matches!(executed_action.as_str(), "branch_from_failure_checkpoint" | "partial_replay")
            && after["newRuns"].as_array().is_some_and(|runs| !runs.is_empty()),
        incident_changed: after["changedRuns"]
            .as_array()
            .is_some_and(|runs| runs.iter().any(|r| r["id"].as_str() == Some(run_id))),
        pending_approval: entry["pendingApproval"].clone(),
        executed_action,
    }
}

/// The run without salvage's record of the approvals given for its recovery.
fn without_recorded_approvals(run: &Run) -> Value {
    let mut value = run.to_value();
    if let Some(recovery) = value.pointer_mut("/metadata/recovery").and_then(Value::as_object_mut) {
        recovery.remove("approvals");
        if recovery.is_empty()
            && let Some(metadata) = value.pointer_mut("/metadata").and_then(Value::as_object_mut)
        {
            metadata.remove("recovery");
        }
    }
    value
}

/// The keys of `executePlan`'s pending approval (salvage's view adds its own fields after them).
fn reference_pending_approval(view: &Value) -> Value {
    match &view["pendingApproval"] {
        Value::Object(pending) => {
            let keys = ["action", "runId", "reason", "incidentType", "payload"];
            Value::Object(keys.iter().filter_map(|k| pending.get(*k).map(|v| ((*k).to_owned(), v.clone()))).collect())
        }
        _ => Value::Null,
    }
}

/// One replayed runner call.
struct Replayed {
    outcome: Outcome,
    plan: Value,
    /// Every step any session of the execution handled, in order.
    steps: Vec<StepReport>,
    /// The incident run afterwards.
    incident: Run,
    /// The outcome of the first action a runtime carried out.
    first_outcome: Option<String>,
}

/// Replays one recorded call on a fresh store: plan, apply, and (approved) approve whatever
/// waits and resume.
async fn replay(runs: &[Run], sets: &CompatSets, run_id: &str, approved: bool) -> Replayed {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    store.save_all(runs, Expected::Absent).await.expect("load");
    let before = store.get(run_id).await.expect("get").expect("incident run").run;
    let plan = Planner::new(store.clone() as Arc<dyn RunStore>, sets.policies.clone(), sets.playbooks.clone())
        .plan(run_id, None)
        .await
        .expect("plan")
        .to_value();
    let mut report = runner(&store, sets, "reference-runner").apply(&plan).await.expect("apply");
    let mut steps = report.steps.clone();
    let mut rounds = 0;
    while approved && report.execution.status == ExecutionStatus::WaitingForApproval {
        rounds += 1;
        assert!(rounds < 10, "{run_id}: still waiting after {rounds} approvals");
        let id = report.execution.execution_id.clone();
        let step = report.execution.pending_approval.as_ref().expect("pending").step_id.clone();
        let approver = runner(&store, sets, APPROVER);
        approver.answer(&id, &step, Decision::Approve, None).await.expect("approve");
        report = approver.resume(&id).await.expect("resume");
        steps.extend(report.steps.iter().cloned());
    }
    let view = reference_view(&report, store.as_ref()).await;
    let first = steps.iter().find(|step| {
        RUNTIME_ACTIONS.contains(&step.catalog_action.as_str())
            && !matches!(step.outcome.as_str(), "skipped" | "waiting_for_approval" | "needs_operator")
    });
    let incident = store.get(run_id).await.expect("get").expect("incident run").run;
    let outcome = Outcome {
        executed_action: match first {
            Some(step) => step.action.clone(),
            None => view["executedAction"].as_str().unwrap_or_default().to_owned(),
        },
        pending_approval: reference_pending_approval(&view),
        created_run: first.is_some_and(|step| step.created_run_id.is_some()),
        incident_changed: without_recorded_approvals(&before) != without_recorded_approvals(&incident),
    };
    let first_outcome = first.map(|step| step.outcome.clone());
    Replayed { outcome, plan, steps, incident, first_outcome }
}

#[tokio::test]
async fn the_runner_executes_what_the_reference_runner_executed() {
    let Some(corpus) = corpus_dir() else { return };
    let sets = compat_sets();
    let mut checked = 0;
    let mut named: BTreeMap<&str, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for store_dir in store_dirs(&corpus) {
        let runs = recorded_runs(&store_dir);
        let mut expected_files: Vec<_> = std::fs::read_dir(store_dir.join("expected"))
            .expect("expected dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().is_some_and(|n| n != "_store.json"))
            .collect();
        expected_files.sort();
        for file in expected_files {
            let recorded = read_json(&file);
            let run_id = recorded["runId"].as_str().expect("runId").to_owned();
            for kind in ["default", "approved"] {
                let entry = &recorded["runner"][kind];
                let label = format!("{} {run_id} runner.{kind}", store_dir.file_name().unwrap_or_default().display());
                assert!(entry["threw"].is_null(), "{label}: the corpus has no throwing runner call");
                let approved = kind == "approved";
                let replayed = replay(&runs, &sets, &run_id, approved).await;
                let actual = &replayed.outcome;
                checked += 1;
                // The plan executed is the reference's plan (compared in full by planner_compat).
                for key in ["incidentType", "recommendedAction"] {
                    if replayed.plan[key] != entry["plan"][key] {
                        problems.push(format!("{label}: plan {key} {} vs {}", replayed.plan[key], entry["plan"][key]));
                    }
                }
                let mut wanted = recorded_outcome(entry, &run_id);
                let first_step = &entry["plan"]["steps"][0];
                let first_outcome = replayed.first_outcome.clone();
                let mut count = |name| *named.entry(name).or_default() += 1;
                match (wanted.executed_action.as_str(), wanted.pending_approval.is_null()) {
                    ("resolve_approval", _) if !approved => {
                        count("resolve_approval_waits_for_a_human");
                        wanted = Outcome {
                            executed_action: "waiting_for_recovery_approval".into(),
                            pending_approval: json!({
                                "action": "resolve_approval",
                                "runId": run_id,
                                "reason": actual.pending_approval["reason"],
                                "incidentType": "approval_blocked",
                                "payload": first_step["payload"],
                            }),
                            created_run: false,
                            incident_changed: false,
                        };
                        let reason = actual.pending_approval["reason"].as_str().unwrap_or_default();
                        assert!(reason.contains("never approves"), "{label}: says why it waits: {reason}");
                    }
                    ("resolve_approval", _) if !wanted.incident_changed => {
                        // The reference "resolved" a stale approval of a failed run and changed
                        // nothing; salvage reports that it could not.
                        count("stale_approvals_are_refused");
                        assert_eq!(first_outcome.as_deref(), Some("failed"), "{label}");
                    }
                    ("inspect_report", _)
                        if entry["plan"]["recommendedAction"] == "workflow_branch_from_failure_checkpoint" =>
                    {
                        count("workflow_branch_is_executed");
                        wanted = if approved {
                            Outcome {
                                executed_action: "workflow_branch_from_failure_checkpoint".into(),
                                pending_approval: Value::Null,
                                created_run: true,
                                incident_changed: false,
                            }
                        } else {
                            Outcome {
                                executed_action: "waiting_for_recovery_approval".into(),
                                pending_approval: json!({
                                    "action": "workflow_branch_from_failure_checkpoint",
                                    "runId": run_id,
                                    "reason": "Recovery action requires explicit approval.",
                                    "incidentType": "workflow_child_failure",
                                    "payload": first_step["payload"],
                                }),
                                created_run: false,
                                incident_changed: false,
                            }
                        };
                    }
                    (action, true) if action != "inspect_report" => {
                        assert_eq!(first_outcome.as_deref(), Some("ok"), "{label}: {action}");
                        if action == "branch_from_failure_checkpoint" {
                            count("branches_are_not_resumed_by_the_runner");
                        }
                    }
                    _ => {}
                }
                if actual != &wanted {
                    problems.push(format!("{label}:\n  expected {wanted:?}\n  actual   {actual:?}"));
                }
                // Whoever approved is on record, on the execution and on the incident run.
                let approvals = replayed.incident.metadata.get("recovery").and_then(|r| r.get("approvals"));
                let waited = replayed.steps.iter().any(|s| s.outcome == "waiting_for_approval");
                if approved && waited {
                    let recorded_by = approvals
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(|x| x["actor"].as_str().map(str::to_owned)).collect::<Vec<_>>());
                    assert_eq!(recorded_by, Some(vec![APPROVER.to_owned()]), "{label}: approvals on the run");
                    count("approvals_are_recorded_on_the_incident_run");
                } else {
                    assert!(approvals.is_none(), "{label}: no approval, none recorded");
                }
                // salvage goes on with the plan's later steps; the reference ran one action.
                let runtime_steps = replayed
                    .steps
                    .iter()
                    .filter(|s| RUNTIME_ACTIONS.contains(&s.catalog_action.as_str()) && s.outcome != "skipped")
                    .count();
                if runtime_steps > 1 {
                    count("the_whole_plan_is_executed");
                }
            }
        }
    }
    assert!(problems.is_empty(), "{} runner calls differ:\n{}", problems.len(), problems.join("\n"));
    assert!(checked >= 150, "only {checked} runner calls checked");
    for name in [
        "resolve_approval_waits_for_a_human",
        "stale_approvals_are_refused",
        "workflow_branch_is_executed",
        "branches_are_not_resumed_by_the_runner",
        "approvals_are_recorded_on_the_incident_run",
        "the_whole_plan_is_executed",
    ] {
        assert!(named.get(name).copied().unwrap_or(0) > 0, "the corpus no longer exercises difference {name}");
    }
    eprintln!("runner compat: {checked} recorded runner calls reproduced; named differences {named:?}");
}
