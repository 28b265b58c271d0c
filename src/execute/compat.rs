//! The reference runner's view of an execution: `executedAction`, `pendingApproval`, `result`
//! and `plan`, with the reference's values, so a tool written for agnostic-agents'
//! `DistributedRecoveryRunner.executePlan` reads `salvage apply --json`.

use serde_json::{Value, json};

use super::engine::ExecutionReport;
use super::record::ExecutionStatus;
use crate::store::RunStore;

/// The catalog actions a runtime carries out (the reference runner executes only such steps).
pub const RUNTIME_ACTIONS: [&str; 8] = [
    "resolve_approval",
    "deny_approval",
    "resume_replay",
    "resume_run",
    "branch_from_checkpoint",
    "partial_replay",
    "frozen_replay",
    "cancel_run",
];

/// The execution as the reference runner reports it, followed by salvage's own fields.
pub async fn reference_view(report: &ExecutionReport, store: &dyn RunStore) -> Value {
    let execution = &report.execution;
    let plan = &execution.plan;
    let executed = report.steps.iter().find(|step| {
        RUNTIME_ACTIONS.contains(&step.catalog_action.as_str())
            && !matches!(step.outcome.as_str(), "skipped" | "waiting_for_approval" | "needs_operator")
    });
    let waiting = execution.status == ExecutionStatus::WaitingForApproval;
    let executed_action = match executed {
        Some(step) => step.action.clone(),
        None if waiting => "waiting_for_recovery_approval".to_owned(),
        None => "inspect_report".to_owned(),
    };
    let pending_approval = execution.pending_approval.as_ref().filter(|_| waiting).map(|pending| {
        json!({
            "action": pending.action,
            "runId": plan["runId"],
            "reason": pending.reason,
            "incidentType": plan["incidentType"],
            "payload": pending.payload,
        })
    });
    let result_run_id = executed.map(|step| {
        step.created_run_id.clone().unwrap_or_else(|| plan["runId"].as_str().unwrap_or_default().to_owned())
    });
    let result = match result_run_id {
        Some(run_id) => store.get(&run_id).await.ok().flatten().map_or(Value::Null, |stored| stored.run.to_value()),
        None => Value::Null,
    };
    json!({
        "plan": plan,
        "executedAction": executed_action,
        "pendingApproval": pending_approval,
        "result": result,
        "executionId": execution.execution_id,
        "status": execution.status,
        "outcome": execution.outcome,
        "mode": execution.mode,
        "steps": report.steps,
        "createdRuns": execution.created_runs,
        "operatorQuestion": execution.operator_question,
        "dryRunRuns": report.dry_run_runs,
    })
}
