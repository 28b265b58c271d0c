//! The read-only checks of the operator guide's playbooks, computed from the store.
//!
//! The planner runs them to predict a playbook's path; the runner runs them again when it
//! executes the step (the store may have changed in between). None of them writes anything.
//!
//! | check | outcomes | question (operator guide) |
//! |---|---|---|
//! | [`verify_persisted`] | `persisted`, `missing` | were the source run and checkpoint saved before the hand-off? |
//! | [`check_duplicate_delivery`] | `clean`, `duplicate`, `unknown` | was the queued message consumed twice? |
//! | [`check_envelope`] | `consistent`, `mismatch`, `missing` | does the continuation match the runtime, action and checkpoint? |
//! | [`inspect_side_effects`] | `none`, `partial`, `unknown` | did the failed tool's external effect happen? |
//! | [`inspect_run_tree`] | `isolated`, `propagated` | did the failure stay in one child or reach the root? |
//! | [`compare_to_known_good`] | `same`, `diverged`, `unavailable` | did the run diverge from a known-good one? |

use serde::Serialize;
use serde_json::{Value, json};

use super::{InspectError, TraceDiff};
use crate::model::{EventType, Run, RunStatus, Step, StepType};
use crate::store::{RunQuery, RunStore};

/// The result of a check: the outcome that drives the playbook, and what was found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    pub outcome: &'static str,
    /// One sentence for people.
    pub summary: String,
    /// What the check looked at.
    pub details: Value,
}

fn result(outcome: &'static str, summary: impl Into<String>, details: Value) -> CheckResult {
    CheckResult { outcome, summary: summary.into(), details }
}

/// Where a continuation came from: `(source run id, source checkpoint id)`, from the pause,
/// the replay metadata, the lineage or the envelope metadata — whichever the run records.
pub fn continuation_source(run: &Run) -> Option<(String, Option<String>)> {
    let pause = run.pending_pause();
    let replay = run.metadata.get("replay");
    let source = pause
        .and_then(|p| p.source_run_id.clone())
        .or_else(|| replay.and_then(|r| r.get("sourceRunId")?.as_str().map(str::to_owned)))
        .or_else(|| run.lineage().branch_origin_run_id.clone())
        .or_else(|| run.metadata.get("sourceRunId")?.as_str().map(str::to_owned).filter(|id| *id != run.id))?;
    let checkpoint = pause
        .and_then(|p| p.source_checkpoint_id.clone())
        .or_else(|| replay.and_then(|r| r.get("sourceCheckpointId")?.as_str().map(str::to_owned)))
        .or_else(|| run.lineage().branch_checkpoint_id.clone())
        .or_else(|| run.metadata.get("correlation")?.get("checkpointId")?.as_str().map(str::to_owned));
    Some((source, checkpoint))
}

/// Were the source run and its checkpoint persisted (in this store) before the hand-off?
/// A run that is not a continuation checks itself.
pub async fn verify_persisted(store: &dyn RunStore, run: &Run) -> Result<CheckResult, InspectError> {
    let Some((source_id, checkpoint_id)) = continuation_source(run) else {
        return Ok(result(
            "persisted",
            format!("run {} is not a continuation; it is persisted in the store", run.id),
            json!({"sourceRunId": null}),
        ));
    };
    let Some(source) = store.get(&source_id).await?.map(|stored| stored.run) else {
        return Ok(result(
            "missing",
            format!("the source run {source_id} is not in the store: the receiver could not continue it"),
            json!({"sourceRunId": source_id, "sourceCheckpointId": checkpoint_id, "sourceFound": false}),
        ));
    };
    match checkpoint_id {
        Some(checkpoint) if source.checkpoint(&checkpoint).is_none() => Ok(result(
            "missing",
            format!("the source run {source_id} has no checkpoint {checkpoint}"),
            json!({"sourceRunId": source_id, "sourceCheckpointId": checkpoint, "sourceFound": true, "checkpointFound": false}),
        )),
        checkpoint => Ok(result(
            "persisted",
            format!(
                "the source run {source_id}{} is persisted",
                checkpoint.as_ref().map(|c| format!(" and its checkpoint {c}")).unwrap_or_default()
            ),
            json!({"sourceRunId": source_id, "sourceCheckpointId": checkpoint, "sourceFound": true, "checkpointFound": true}),
        )),
    }
}

/// Was the queued message that started this continuation consumed more than once? Looks for
/// other continuations of the same source and checkpoint in the run's trace, and for other
/// runs carrying the same `messageId`.
pub async fn check_duplicate_delivery(store: &dyn RunStore, run: &Run) -> Result<CheckResult, InspectError> {
    let Some((source_id, checkpoint_id)) = continuation_source(run) else {
        return Ok(result("unknown", "the run is not a continuation of a queued message", json!({})));
    };
    let message_id = run.metadata.get("messageId").and_then(Value::as_str).map(str::to_owned);
    let family = store.list(&RunQuery::in_trace(run.root_run_id())).await?;
    let ids: Vec<String> = family.items.into_iter().map(|entry| entry.id).filter(|id| *id != run.id).collect();
    let others = store.get_many(&ids).await?;
    let mut duplicates = Vec::new();
    for other in others.items.iter().map(|stored| &stored.run) {
        let same_message =
            message_id.is_some() && other.metadata.get("messageId").and_then(Value::as_str) == message_id.as_deref();
        let same_source = continuation_source(other)
            .is_some_and(|(source, checkpoint)| source == source_id && checkpoint == checkpoint_id)
            && other.metadata.get("replay").is_some();
        if same_message || (same_source && message_id.is_none()) {
            duplicates.push(other.id.clone());
        }
    }
    let details = json!({"sourceRunId": source_id, "sourceCheckpointId": checkpoint_id, "messageId": message_id, "duplicates": duplicates});
    if !duplicates.is_empty() {
        return Ok(result(
            "duplicate",
            format!("the message was consumed more than once: also by {}", duplicates.join(", ")),
            details,
        ));
    }
    if message_id.is_none() {
        return Ok(result(
            "unknown",
            "the run records no messageId, and no other continuation of the same checkpoint exists",
            details,
        ));
    }
    Ok(result("clean", "no other run consumed the same message", details))
}

/// Does the continuation match what was handed off: runtime kind, action and checkpoint?
/// Reads the envelope facts the run carries (`metadata.correlation`, `metadata.replay`).
pub async fn check_envelope(store: &dyn RunStore, run: &Run) -> Result<CheckResult, InspectError> {
    let correlation = run.metadata.get("correlation");
    let Some((source_id, checkpoint_id)) = continuation_source(run) else {
        return Ok(result(
            "missing",
            "the run carries no hand-off (no source run, replay or correlation metadata)",
            json!({}),
        ));
    };
    let mut problems = Vec::new();
    let runtime_kind = correlation.and_then(|c| c.get("runtimeKind")?.as_str());
    let expected_kind = if run.workflow_id().is_some() { "workflow" } else { "agent" };
    if let Some(kind) = runtime_kind
        && kind != expected_kind
    {
        problems.push(format!("the envelope was for the {kind} runtime but the run is an {expected_kind} run"));
    }
    if let Some(action) = correlation.and_then(|c| c.get("action")?.as_str())
        && !super::envelope::KNOWN_ACTIONS.contains(&action)
    {
        problems.push(format!("the envelope action {action:?} is not one a runtime can carry out"));
    }
    if let (Some(expected), Some(found)) =
        (correlation.and_then(|c| c.get("checkpointId")?.as_str()), checkpoint_id.as_deref())
        && expected != found
    {
        problems.push(format!("the envelope named checkpoint {expected} but the run continued from {found}"));
    }
    let source = store.get(&source_id).await?;
    if source.is_none() {
        return Ok(result(
            "missing",
            format!("the source run {source_id} is not in this store: the receiving service cannot resolve it"),
            json!({"sourceRunId": source_id, "problems": problems}),
        ));
    }
    let details = json!({"sourceRunId": source_id, "sourceCheckpointId": checkpoint_id, "runtimeKind": runtime_kind, "problems": problems});
    if problems.is_empty() {
        Ok(result("consistent", "the continuation matches its envelope and the source run is resolvable", details))
    } else {
        Ok(result("mismatch", problems.join("; "), details))
    }
}

/// The tool a step called, as recorded in its payload.
fn failed_tool_steps(run: &Run) -> impl Iterator<Item = &Step> {
    run.failed_steps().filter(|step| step.step_type == Some(StepType::Tool))
}

/// Did the failed tool's external effect happen? `none` when the failed tools cannot write
/// (read-only metadata) or no tool step failed; otherwise a record cannot tell whether a write
/// partially happened: `partial` when the tool was attempted more than once or completed an
/// earlier write in the same run, `unknown` otherwise — a person or the tool's own system must
/// confirm.
pub fn inspect_side_effects(run: &Run, tool_effect: impl Fn(&str) -> String) -> CheckResult {
    let failed: Vec<&Step> = failed_tool_steps(run).collect();
    if failed.is_empty() {
        return result(
            "none",
            "no tool step failed: nothing external was attempted by the failing step",
            json!({"failedToolSteps": []}),
        );
    }
    let mut writers = Vec::new();
    for step in &failed {
        let tool = step.tool_name().unwrap_or("?");
        let effect = tool_effect(tool);
        if !matches!(effect.as_str(), "none" | "read_only") {
            writers.push(json!({"stepId": step.id, "tool": tool, "sideEffectLevel": effect}));
        }
    }
    let details = json!({"failedToolSteps": failed.iter().map(|s| &s.id).collect::<Vec<_>>(), "writers": writers});
    if writers.is_empty() {
        return result("none", "the failed tools are read-only: no external effect to confirm", details);
    }
    let attempts_of = |tool: &str| {
        run.steps.iter().filter(|s| s.step_type == Some(StepType::Tool) && s.tool_name() == Some(tool)).count()
    };
    let completed_writes = run
        .events
        .iter()
        .filter(|event| event.event_type == Some(EventType::ToolCompleted))
        .filter_map(|event| event.payload.as_ref()?.get("toolName")?.as_str())
        .filter(|tool| !matches!(tool_effect(tool).as_str(), "none" | "read_only"))
        .count();
    let retried = failed.iter().filter_map(|s| s.tool_name()).any(|tool| attempts_of(tool) > 1);
    if retried || completed_writes > 0 {
        return result(
            "partial",
            "an external write was attempted more than once or an earlier write completed: part of the effect may have happened",
            details,
        );
    }
    result("unknown", "a tool with external effects failed; the record cannot tell whether its write happened", details)
}

/// Did the failure stay in one delegated child (`isolated`) or reach the root (`propagated`)?
pub fn inspect_run_tree(run: &Run, root_status: Option<&RunStatus>) -> CheckResult {
    let is_root = run.root_run_id() == run.id;
    let root_failed = root_status == Some(&RunStatus::Failed);
    let details = json!({"rootRunId": run.root_run_id(), "rootStatus": root_status.map(RunStatus::as_str)});
    if is_root || root_failed {
        result("propagated", "the failure reached the root orchestration", details)
    } else {
        result("isolated", "the failure stayed in this delegated run; the root did not fail", details)
    }
}

/// Did the run diverge from the known-good comparison run?
pub fn compare_to_known_good(comparison: Option<&TraceDiff>) -> CheckResult {
    match comparison {
        None => result("unavailable", "no known-good run to compare with (--compare-to)", json!({})),
        Some(diff) if diff.status_changed || diff.output_changed => result(
            "diverged",
            format!(
                "the run diverged from {}: status {}, output {}",
                diff.left_run_id,
                if diff.status_changed { "changed" } else { "same" },
                if diff.output_changed { "changed" } else { "same" }
            ),
            json!({"comparedTo": diff.left_run_id, "firstDivergingStepIndex": diff.first_diverging_step_index}),
        ),
        Some(diff) => result(
            "same",
            format!("status and output match {}", diff.left_run_id),
            json!({"comparedTo": diff.left_run_id}),
        ),
    }
}
