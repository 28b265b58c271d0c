//! The default policy set against the reference (`compat`): each improvement named in the
//! issue, shown on realistic runs (the shipped examples, altered the way incidents alter runs).

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use salvage::model::{IncidentKind, Run};
use salvage::plan::{Plan, Planner};
use salvage::playbook::PlaybookSet;
use salvage::policy::{DecisionContext, PolicySet};
use salvage::store::{Expected, MemoryStore, RunStore};

const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
const HEALTHY_INVOICE: &str = "08f02c15-b89c-5381-9129-2b27974351a8";
const WAITING_REFUND: &str = "6642c01a-890f-53f5-85d9-81f26aaed645";
const QUEUE_WORKER: &str = "59fd728d-9938-5d34-914f-4e32b6f4609d:partial-replay:1795588321456";
const QUEUE_SOURCE: &str = "59fd728d-9938-5d34-914f-4e32b6f4609d";
const PAUSED_REPLAY: &str = "b112671a-8349-5cbc-975d-1b8765aa1873:partial-replay:1795589000123";
const REPLAY_SOURCE: &str = "b112671a-8349-5cbc-975d-1b8765aa1873";
const HEALTHY: &str = "33d396d5-5af9-5cd6-96a2-1232e99c4f4d";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn example(id: &str) -> Value {
    let path = root().join("examples/runs").join(format!("{id}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).expect("json")
}

#[derive(Clone, Copy)]
enum Set {
    Default,
    Compat,
}

fn sets(set: Set) -> (Arc<PolicySet>, Arc<PlaybookSet>) {
    let (policies, playbooks) = match set {
        Set::Default => ("policies", "playbooks"),
        Set::Compat => ("policies/compat", "playbooks/compat"),
    };
    let policies = PolicySet::load(&root().join(policies)).expect("policies load");
    let playbooks = PlaybookSet::load(&root().join(playbooks), Some(&policies)).expect("playbooks load");
    (Arc::new(policies), Arc::new(playbooks))
}

/// Plans `run_id` over a store holding `runs`.
async fn plan(set: Set, runs: &[Value], run_id: &str, compare_to: Option<&str>) -> Plan {
    let store = Arc::new(MemoryStore::new());
    for run in runs {
        store.save(&Run::from_value(run.clone()).expect("run"), Expected::Any).await.expect("save");
    }
    let (policies, playbooks) = sets(set);
    Planner::new(store as Arc<dyn RunStore>, policies, playbooks).plan(run_id, compare_to).await.expect("plan")
}

fn step<'a>(plan: &'a Plan, catalog_action: &str) -> &'a salvage::plan::PlanStep {
    plan.steps.iter().find(|s| s.catalog_action == catalog_action).unwrap_or_else(|| {
        panic!("no {catalog_action} step in {:?}", plan.steps.iter().map(|s| &s.id).collect::<Vec<_>>())
    })
}

fn actions(plan: &Plan) -> Vec<&str> {
    plan.steps.iter().map(|s| s.action.as_str()).collect()
}

/// Replaces every occurrence of the failed invoice's error text (error, step error, events).
fn with_tool_error(mut run: Value, message: &str) -> Value {
    let text = serde_json::to_string(&run).expect("json");
    let text = text.replace("billing-api returned 503 Service Unavailable (request id 7f3a)", message);
    run = serde_json::from_str(&text).expect("json");
    run
}

#[tokio::test]
async fn remote_host_closed_connection_on_a_tool_is_a_tool_failure() {
    let run = with_tool_error(example(FAILED_INVOICE), "Remote host closed connection");
    let reference = plan(Set::Compat, std::slice::from_ref(&run), FAILED_INVOICE, None).await;
    assert_eq!(reference.incident_type, IncidentKind::ServiceHandoffFailure, "the reference reads the word 'Remote'");
    let salvage = plan(Set::Default, &[run], FAILED_INVOICE, None).await;
    assert_eq!(salvage.incident_type, IncidentKind::ToolFailure, "a failed tool step is a tool failure");
    assert_eq!(salvage.playbook.as_ref().map(|p| p.name.as_str()), Some("side-effecting-tool-failed"));
}

#[tokio::test]
async fn the_branch_checkpoint_is_strictly_before_the_failing_tool() {
    let run = example(FAILED_INVOICE);
    let reference = plan(Set::Compat, std::slice::from_ref(&run), FAILED_INVOICE, None).await;
    assert_eq!(
        step(&reference, "branch_from_checkpoint").payload["checkpointId"],
        json!(format!("{FAILED_INVOICE}:checkpoint:3")),
        "the reference branches from run_failed, whose state holds the failed call"
    );
    let salvage = plan(Set::Default, &[run], FAILED_INVOICE, None).await;
    let branch = step(&salvage, "branch_from_checkpoint");
    assert_eq!(
        branch.payload["checkpointId"],
        json!(format!("{FAILED_INVOICE}:checkpoint:2")),
        "model_response, before the tool"
    );
    let choice = branch.explanation.iter().find(|e| e.hook == "choose_checkpoint").expect("explained");
    let candidates = choice.candidates.as_ref().expect("candidates");
    let rejected =
        candidates.iter().find(|c| c.checkpoint_id.ends_with(":checkpoint:3")).expect("run_failed considered");
    assert!(!rejected.chosen);
    assert!(rejected.reason.contains("after the failing step"), "{}", rejected.reason);
}

#[tokio::test]
async fn re_running_an_external_write_needs_approval_once_and_read_only_steps_never_ask() {
    let salvage =
        plan(Set::Default, &[example(FAILED_INVOICE), example(HEALTHY_INVOICE)], FAILED_INVOICE, Some(HEALTHY_INVOICE))
            .await;
    // The write's effect is unknown: a person decides before branching, and that decision is
    // the approval of the branch that follows (it does not ask a second time).
    let ask = step(&salvage, "request_approval");
    assert!(ask.requires_approval);
    let branch = step(&salvage, "branch_from_checkpoint");
    assert_eq!(branch.id, "branch_approved");
    assert!(!branch.requires_approval);
    for read_only in salvage.steps.iter().filter(|s| s.effect == "read_only") {
        assert!(!read_only.requires_approval, "{} is read-only", read_only.id);
    }
    // The policy itself, asked about a branch from either checkpoint: both re-run the write.
    let ctx = context_of(FAILED_INVOICE, IncidentKind::ToolFailure).await;
    let (policies, _) = sets(Set::Default);
    for checkpoint in [2, 3] {
        let step = json!({"id": "branch", "action": "branch_from_failure_checkpoint", "catalogAction": "branch_from_checkpoint",
                          "effect": "compensable", "scope": "run", "priority": "high", "reason": "", "target": null,
                          "incident": "tool_failure", "payload": {"checkpointId": format!("{FAILED_INVOICE}:checkpoint:{checkpoint}")}});
        let decision = salvage::policy::hooks::requires_approval(&policies, "requires_approval", &step, &ctx);
        assert!(decision.value, "from checkpoint {checkpoint}");
        let reason = decision.explanation.reason.unwrap_or_default();
        assert!(reason.contains("create_invoice (external_write)"), "{reason}");
    }
}

/// The decision context of one example run.
async fn context_of(run_id: &str, incident: IncidentKind) -> DecisionContext {
    let store = Arc::new(MemoryStore::new());
    store.save(&Run::from_value(example(run_id)).expect("run"), Expected::Any).await.expect("save");
    let report = salvage::inspect::create_report(store.as_ref(), run_id, None).await.expect("report");
    let stored = store.get(run_id).await.expect("get").expect("run");
    DecisionContext::new(stored.run, report, None).with_incident(incident)
}

#[tokio::test]
async fn a_failed_read_only_tool_is_branched_without_approval() {
    let text = serde_json::to_string(&example(FAILED_INVOICE)).expect("json").replace("external_write", "read_only");
    let run: Value = serde_json::from_str(&text).expect("json");
    let reference = plan(Set::Compat, std::slice::from_ref(&run), FAILED_INVOICE, None).await;
    assert!(step(&reference, "branch_from_checkpoint").requires_approval, "the reference gates every failed tool");
    let salvage = plan(Set::Default, &[run], FAILED_INVOICE, None).await;
    assert_eq!(salvage.incident_type, IncidentKind::ToolFailure);
    assert_eq!(step(&salvage, "inspect_side_effects").expected_outcome, "none");
    assert!(!step(&salvage, "branch_from_checkpoint").requires_approval, "nothing external runs again");
}

#[tokio::test]
async fn resolving_a_tool_approval_needs_a_recorded_human_decision() {
    let reference = plan(Set::Compat, &[example(WAITING_REFUND)], WAITING_REFUND, None).await;
    assert_eq!(actions(&reference), ["resolve_approval", "partial_replay"]);
    assert!(!reference.steps[0].requires_approval, "the reference approves the tool call itself");
    let salvage = plan(Set::Default, &[example(WAITING_REFUND)], WAITING_REFUND, None).await;
    assert_eq!(salvage.incident_type, IncidentKind::ApprovalBlocked);
    let ask = step(&salvage, "request_approval");
    let approvers = ask.approvers.as_ref().expect("approvers");
    assert_eq!(approvers.names, ["oncall-sre", "service-owner"]);
    assert!(!approvers.allow_self_approval);
    let asked = salvage.steps.iter().position(|s| s.catalog_action == "request_approval");
    let resolved = salvage.steps.iter().position(|s| s.catalog_action == "resolve_approval");
    assert!(asked < resolved, "a person decides before the tool runs");
    assert_eq!(salvage.steps[resolved.unwrap_or(0)].payload, step(&reference, "resolve_approval").payload);
}

#[tokio::test]
async fn a_workflow_scoped_branch_needs_approval() {
    let ctx = context_of(FAILED_INVOICE, IncidentKind::WorkflowChildFailure).await;
    let (policies, _) = sets(Set::Default);
    let step = |scope: &str| {
        json!({"id": "b", "action": "branch_from_failure_checkpoint", "catalogAction": "branch_from_checkpoint",
               "effect": "compensable", "scope": scope, "priority": "high", "reason": "", "target": null,
               "incident": "workflow_child_failure", "payload": {"checkpointId": format!("{FAILED_INVOICE}:checkpoint:2")}})
    };
    let workflow = salvage::policy::hooks::requires_approval(&policies, "requires_approval", &step("workflow"), &ctx);
    assert!(workflow.value);
    assert!(workflow.explanation.reason.as_deref().is_some_and(|r| r.contains("workflow")));
    let approvers = salvage::policy::hooks::approvers(&policies, "approvers", &step("workflow"), &ctx);
    assert_eq!(approvers.value.names, ["incident-commander"]);
}

/// The waiting refund after a person denied it: failed, still carrying its request.
fn denied_refund() -> Value {
    let mut run = example(WAITING_REFUND);
    run["status"] = json!("failed");
    run["errors"] = json!([{"name": "ToolPolicyError", "message": "Execution denied for tool \"send_refund\"."}]);
    let events = run["events"].as_array_mut().expect("events");
    let id = format!("{WAITING_REFUND}:{}", events.len() + 1);
    events.push(json!({"id": id, "type": "approval_resolved", "timestamp": "2026-11-20T04:00:00.000Z",
                       "payload": {"request": {}, "approved": false, "reason": "Refund is a duplicate of RF-221."}}));
    run
}

#[tokio::test]
async fn a_denied_approval_left_on_a_failed_run_is_not_approval_blocked() {
    let reference = plan(Set::Compat, &[denied_refund()], WAITING_REFUND, None).await;
    assert_eq!(
        reference.incident_type,
        IncidentKind::ApprovalBlocked,
        "the reference re-plans resolve_approval forever"
    );
    assert_eq!(reference.recommended_action, "resolve_approval");
    let salvage = plan(Set::Default, &[denied_refund()], WAITING_REFUND, None).await;
    assert_eq!(salvage.incident_type, IncidentKind::ApprovalDenied);
    assert!(!actions(&salvage).contains(&"resolve_approval"), "the denial stands: {:?}", actions(&salvage));
    assert_eq!(salvage.expected_outcome.as_deref(), Some("abandoned"));
}

#[tokio::test]
async fn a_failed_replay_that_still_carries_its_pause_is_a_replay_failure() {
    let mut run = example(PAUSED_REPLAY);
    run["status"] = json!("failed");
    run["errors"] = json!([{"name": "Error", "message": "model adapter timed out"}]);
    let runs = [run, example(REPLAY_SOURCE)];
    let reference = plan(Set::Compat, &runs, PAUSED_REPLAY, None).await;
    assert_eq!(reference.incident_type, IncidentKind::GenericFailure, "failed, so not paused_replay; no keyword");
    let salvage = plan(Set::Default, &runs, PAUSED_REPLAY, None).await;
    assert_eq!(salvage.incident_type, IncidentKind::ReplayFailure);
    assert_eq!(step(&salvage, "verify_persisted").expected_outcome, "persisted");
    assert!(step(&salvage, "resume_replay").target.as_deref() == Some("replay"));
}

#[tokio::test]
async fn a_queue_continuation_is_recognised_by_its_metadata_not_its_error_words() {
    let text = serde_json::to_string(&example(QUEUE_WORKER))
        .expect("json")
        .replace("QueueWorkerError", "LeaseLostError")
        .replace("worker-b lost its lease on msg-20261120-0007 after 30s", "lease lost after 30s");
    let run: Value = serde_json::from_str(&text).expect("json");
    let runs = [run, example(QUEUE_SOURCE)];
    let reference = plan(Set::Compat, &runs, QUEUE_WORKER, None).await;
    assert_eq!(reference.incident_type, IncidentKind::GenericFailure, "no 'queue' in the error text");
    let salvage = plan(Set::Default, &runs, QUEUE_WORKER, None).await;
    assert_eq!(salvage.incident_type, IncidentKind::QueueWorkerFailure, "transport, queue and workerId say so");
    assert_eq!(step(&salvage, "verify_persisted").expected_outcome, "persisted");
    assert_eq!(step(&salvage, "check_duplicate_delivery").expected_outcome, "clean");
    let export = step(&salvage, "export_bundle");
    let ids = export.payload["runIds"].as_array().expect("ids");
    assert!(
        ids.contains(&json!(QUEUE_SOURCE)) && ids.contains(&json!(QUEUE_WORKER)),
        "source and worker runs: {ids:?}"
    );
}

#[tokio::test]
async fn a_healthy_run_gets_a_plan_that_changes_nothing() {
    let reference = plan(Set::Compat, &[example(HEALTHY)], HEALTHY, None).await;
    assert_eq!(actions(&reference), ["partial_replay"], "the reference replays healthy runs");
    let salvage = plan(Set::Default, &[example(HEALTHY)], HEALTHY, None).await;
    assert_eq!(salvage.incident_type, IncidentKind::NoIncident);
    assert!(salvage.steps.iter().all(|s| s.effect == "read_only"), "{:?}", actions(&salvage));
    assert_eq!(salvage.recommended_action, "inspect_report");
    assert_eq!(salvage.expected_outcome.as_deref(), Some("resolved"));
}

#[tokio::test]
async fn plans_are_sealed_with_their_content_hash_and_the_revision_they_read() {
    let a = plan(Set::Default, &[example(FAILED_INVOICE)], FAILED_INVOICE, None).await;
    let b = plan(Set::Default, &[example(FAILED_INVOICE)], FAILED_INVOICE, None).await;
    assert_eq!(a.plan_hash, a.content_hash(), "the hash covers the content");
    assert_eq!(a.plan_hash, b.plan_hash, "the same incident, policies and playbooks give the same plan");
    assert_eq!(a.plan_id, format!("plan-{}", &a.plan_hash[..16]));
    assert_eq!(a.run_revision.0, 1);
    let mut changed = a.clone();
    changed.steps[0].requires_approval = !changed.steps[0].requires_approval;
    assert_ne!(changed.content_hash(), a.plan_hash, "any change to the content changes the hash");
    let hashed_from_json = salvage::plan::hash_of(&a.to_value());
    assert_eq!(hashed_from_json, a.plan_hash, "a plan read back from a file hashes the same");
}
