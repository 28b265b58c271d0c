//! `IncidentDebugger.createReport(runId, {compareToRunId})`: everything an operator needs to
//! start on a run — summary, family tree, last error, failed steps, last checkpoint, pending
//! state, a diff against a known-good run, and what to do next.

use serde::Serialize;
use serde_json::Value;

use super::InspectError;
use super::diff::{TraceDiff, diff};
use super::js::js_to_string;
use super::tree::{LineageCycle, RunTree, RunTreeNode, SubtreeMetrics, UnreadableRun, build_tree_knowing, render};
use super::{RunSummary, summarize};
use crate::model::json::truthy;
use crate::model::{Checkpoint, PendingApproval, PendingPause, Run, RunError, RunStatus, Step};
use crate::store::RunStore;

/// The incident report, key for key the reference's, plus (only when there is something to
/// say) the lineage cycles salvage cut and the runs it could not read while building the tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentReport {
    pub run_id: String,
    pub root_run_id: String,
    pub status: RunStatus,
    pub summary: RunSummary,
    /// The subtree metrics of the whole root tree (not of this run's subtree), or `null`
    /// when the root is not in the store.
    pub aggregated_metrics: Option<SubtreeMetrics>,
    /// The last recorded error.
    pub failure: Option<RunError>,
    /// Every step whose status is `failed`, in order, as recorded.
    pub failed_steps: Vec<Step>,
    /// The last checkpoint, with its snapshot.
    pub last_checkpoint: Option<Checkpoint>,
    pub pending_approval: Option<PendingApproval>,
    pub pending_pause: Option<PendingPause>,
    /// The tree of the run's lineage root.
    pub run_tree: Option<RunTreeNode>,
    pub rendered_run_tree: Option<String>,
    /// `diff(comparison run, this run)`.
    pub comparison: Option<TraceDiff>,
    pub recommendations: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lineage_cycles: Vec<LineageCycle>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable_runs: Vec<UnreadableRun>,
}

pub const RESOLVE_APPROVAL: &str = "Resolve the pending approval before attempting replay or resume.";
pub const RESUME_OR_BRANCH: &str = "Resume the paused run or branch from the last checkpoint for investigation.";
pub const REVIEW_DIFF: &str = "Review the trace diff to understand where this run diverged from the comparison run.";
pub const NOTHING_DETECTED: &str =
    "No active incident state detected; compare this run against another trace if deeper analysis is needed.";

/// Builds the incident report of `run_id`, optionally comparing it with the known-good run
/// `compare_to_run_id` (an empty id means no comparison, as in the reference).
pub async fn create_report(
    store: &dyn RunStore,
    run_id: &str,
    compare_to_run_id: Option<&str>,
) -> Result<IncidentReport, InspectError> {
    let run = store.get(run_id).await?.ok_or_else(|| InspectError::RunNotFound { run_id: run_id.to_owned() })?.run;
    create_report_of(store, run, compare_to_run_id).await
}

/// [`create_report`] for a run the caller has already read from `store` (the planner reads it
/// for its revision; decoding it twice is a third of a plan's time in a large store).
pub async fn create_report_of(
    store: &dyn RunStore,
    run: Run,
    compare_to_run_id: Option<&str>,
) -> Result<IncidentReport, InspectError> {
    let summary = summarize(&run)?;
    let tree = match build_tree_knowing(store, run.root_run_id(), Some(&run)).await {
        Ok(tree) => tree,
        // The run itself was summarised above, so this is its (malformed) root: report
        // without a tree rather than not at all.
        Err(error @ InspectError::MalformedRun { .. }) => RunTree {
            unreadable_runs: vec![UnreadableRun {
                run_id: Some(run.root_run_id().to_owned()),
                message: error.to_string(),
            }],
            ..RunTree::default()
        },
        Err(error) => return Err(error),
    };
    let comparison = match compare_to_run_id.filter(|id| !id.is_empty()) {
        Some(compare_id) => {
            let known_good = store
                .get(compare_id)
                .await?
                .ok_or_else(|| InspectError::ComparisonRunNotFound { run_id: compare_id.to_owned() })?
                .run;
            Some(diff(&known_good, &run)?)
        }
        None => None,
    };
    Ok(report_for(run, summary, tree.root, comparison, tree.lineage_cycles, tree.unreadable_runs))
}

/// The report of a run whose tree and comparison are already known (for callers that hold
/// the runs outside a store).
pub fn report_for(
    run: Run,
    summary: RunSummary,
    run_tree: Option<RunTreeNode>,
    comparison: Option<TraceDiff>,
    lineage_cycles: Vec<LineageCycle>,
    unreadable_runs: Vec<UnreadableRun>,
) -> IncidentReport {
    let failure = run.last_error().cloned();
    let failed_steps: Vec<Step> = run.failed_steps().cloned().collect();
    let last_checkpoint = run.last_checkpoint().cloned();
    let recommendations =
        recommendations(&run, failure.as_ref(), &failed_steps, last_checkpoint.as_ref(), comparison.as_ref());
    let rendered_run_tree = run_tree.as_ref().map(|root| render(std::slice::from_ref(root), true));
    IncidentReport {
        run_id: run.id.clone(),
        root_run_id: run.root_run_id().to_owned(),
        status: run.status.clone(),
        summary,
        aggregated_metrics: run_tree.as_ref().map(|root| root.subtree_metrics.clone()),
        failure,
        failed_steps,
        last_checkpoint,
        pending_approval: run.pending_approval().cloned(),
        pending_pause: run.pending_pause().cloned(),
        run_tree,
        rendered_run_tree,
        comparison,
        recommendations,
        lineage_cycles,
        unreadable_runs,
    }
}

/// The reference's recommendations, all that apply, in its order and wording (including
/// "Inspect the last error: <message>." which doubles a final period).
pub fn recommendations(
    run: &Run,
    failure: Option<&RunError>,
    failed_steps: &[Step],
    last_checkpoint: Option<&Checkpoint>,
    comparison: Option<&TraceDiff>,
) -> Vec<String> {
    let mut out = Vec::new();
    if run.pending_approval().is_some() {
        out.push(RESOLVE_APPROVAL.to_owned());
    }
    if run.pending_pause().is_some() {
        out.push(RESUME_OR_BRANCH.to_owned());
    }
    if let Some(failure) = failure {
        let text = [failure.get("message"), failure.get("name")]
            .into_iter()
            .flatten()
            .find(truthy)
            .map_or_else(|| "Unknown error".to_owned(), |value| js_to_string(Some(&value)));
        out.push(format!("Inspect the last error: {text}."));
    }
    if let Some(step) = failed_steps.last() {
        out.push(format!("Replay or branch near the failed step: {}.", js_to_string(step.get("id").as_ref())));
    }
    if let Some(id) = last_checkpoint.and_then(|checkpoint| checkpoint.get("id")).filter(truthy) {
        out.push(format!("Use checkpoint \"{}\" for partial replay or branching.", js_to_string(Some(&id))));
    }
    if comparison.is_some_and(|diff| diff.status_changed || diff.output_changed) {
        out.push(REVIEW_DIFF.to_owned());
    }
    if out.is_empty() {
        out.push(NOTHING_DETECTED.to_owned());
    }
    out
}

/// A value for callers that want the report as JSON.
impl IncidentReport {
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Expected, MemoryStore};
    use serde_json::json;

    fn run(value: Value) -> Run {
        Run::from_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    fn recommend(value: Value) -> Vec<String> {
        let run = run(value);
        let failed: Vec<Step> = run.failed_steps().cloned().collect();
        recommendations(&run, run.last_error(), &failed, run.last_checkpoint(), None)
    }

    #[test]
    fn a_message_ending_in_a_period_gets_two() {
        let out = recommend(json!({"id": "r", "errors": [{"name": "Error", "message": "Remote rejected."}]}));
        assert_eq!(out, ["Inspect the last error: Remote rejected.."]);
    }

    #[test]
    fn recommendations_follow_the_reference_order_and_fallbacks() {
        let out = recommend(json!({
            "id": "r", "status": "failed",
            "pendingApproval": {"toolName": "t"}, "pendingPause": {"stage": "replay"},
            "errors": [{"name": "QueueError", "message": ""}],
            "steps": [{"id": "r:step:1", "status": "failed"}, {"status": "failed"}],
            "checkpoints": [{"id": "r:checkpoint:1"}]
        }));
        assert_eq!(
            out,
            [
                RESOLVE_APPROVAL,
                RESUME_OR_BRANCH,
                "Inspect the last error: QueueError.",
                "Replay or branch near the failed step: undefined.",
                "Use checkpoint \"r:checkpoint:1\" for partial replay or branching."
            ]
        );
        assert_eq!(recommend(json!({"id": "r", "errors": ["plain text"]})), ["Inspect the last error: Unknown error."]);
        assert_eq!(recommend(json!({"id": "r", "errors": [{"message": 503}]})), ["Inspect the last error: 503."]);
        assert_eq!(recommend(json!({"id": "r", "checkpoints": [{"label": "x"}]})), [NOTHING_DETECTED]);
        assert_eq!(recommend(json!({"id": "r", "pendingApproval": false, "errors": [null]})), [NOTHING_DETECTED]);
    }

    #[tokio::test]
    async fn reports_name_missing_runs_and_compare_against_a_known_good_run() {
        let store = MemoryStore::new();
        let good =
            run(json!({"id": "good", "status": "completed", "output": "ok", "events": [{"type": "run_completed"}]}));
        let bad = run(json!({"id": "bad", "status": "failed", "events": [{"type": "run_failed"}]}));
        store.save_all(&[good, bad], Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        let missing = create_report(&store, "nope", None).await.err().map(|e| e.to_string());
        assert_eq!(missing.as_deref(), Some("Run \"nope\" not found."));
        let no_comparison = create_report(&store, "bad", Some("gone")).await.err().map(|e| e.to_string());
        assert_eq!(no_comparison.as_deref(), Some("Comparison run \"gone\" not found."));
        let report = create_report(&store, "bad", Some("good")).await.unwrap_or_else(|e| panic!("{e}"));
        let comparison = report.comparison.as_ref().unwrap_or_else(|| panic!("comparison"));
        assert_eq!((comparison.left_run_id.as_str(), comparison.right_run_id.as_str()), ("good", "bad"));
        assert_eq!(report.recommendations, [REVIEW_DIFF]);
        assert_eq!(report.rendered_run_tree.as_deref(), Some("bad [failed]"));
        let value = report.to_value();
        assert!(value.get("lineageCycles").is_none(), "no cycle, no key");
        assert!(value.get("unreadableRuns").is_none());
    }

    #[tokio::test]
    async fn a_malformed_root_leaves_the_report_without_a_tree_instead_of_failing_it() {
        let store = MemoryStore::new();
        let root = run(json!({"id": "root", "status": "failed", "steps": [null]}));
        let child = run(json!({"id": "child", "status": "failed", "errors": [{"message": "boom"}],
            "metadata": {"lineage": {"rootRunId": "root", "parentRunId": "root"}}}));
        store.save_all(&[root, child], Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        let report = create_report(&store, "child", None).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(report.run_tree.is_none() && report.aggregated_metrics.is_none());
        assert_eq!(report.unreadable_runs.len(), 1);
        assert!(report.unreadable_runs[0].message.contains("steps[0]"), "{:?}", report.unreadable_runs);
        assert_eq!(report.recommendations, ["Inspect the last error: boom."]);
        let own = create_report(&store, "root", None).await;
        assert!(matches!(own, Err(InspectError::MalformedRun { .. })), "the run itself must be readable");
    }

    #[tokio::test]
    async fn a_self_parented_run_gets_a_report_that_names_the_cycle() {
        let store = MemoryStore::new();
        let looped = run(json!({"id": "loop", "status": "failed", "metadata": {"lineage": {"parentRunId": "loop"}}}));
        store.save(&looped, Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        let report = create_report(&store, "loop", None).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.rendered_run_tree.as_deref(), Some("loop [failed]"));
        assert_eq!(report.lineage_cycles.len(), 1);
        assert_eq!(report.to_value()["lineageCycles"][0]["cutRunId"], "loop");
        assert_eq!(report.aggregated_metrics.map(|m| m.run_count), Some(1));
    }
}
