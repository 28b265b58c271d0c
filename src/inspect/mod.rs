//! The read-side operator surfaces of the reference runtime, output-identical to
//! agnostic-agents 1.3.3 (each value serialises to exactly the reference's JSON), with the
//! reference's crashes and hangs turned into typed errors and reported findings.
//!
//! | reference | here |
//! |---|---|
//! | `RunInspector.summarize` | [`summarize`] |
//! | `RunTreeInspector.build` / `render` | [`build_tree`], [`build_forest`], [`render`], [`render_store_forest`] |
//! | `IncidentDebugger.createReport` | [`create_report`] |
//! | `TraceDiffer.diff` | [`diff`] |
//! | `TraceCorrelation` | [`correlation`] |
//! | `TraceSerializer` | [`trace`] |
//! | `DistributedRunEnvelope` | [`envelope`] |
//!
//! Everything reads runs through [`crate::store::RunStore`]; a report on one run reads that
//! run's family only.

pub mod checks;
pub mod correlation;
mod diff;
pub mod envelope;
mod error;
mod incident;
pub mod trace;
mod tree;

/// The JavaScript evaluation rules the surfaces use (they live in `model`, next to the run
/// summary that needs them too).
pub use crate::model::js;
pub use crate::model::summary::{
    CheckpointSummary, ChildRunAggregate, EvidenceSummary, NumberTotals, RunSummary, StepSummary, TokenTotals,
};
pub use diff::{EventTypeValue, TraceDiff, diff};
pub use error::InspectError;
pub use incident::{
    IncidentReport, NOTHING_DETECTED, RESOLVE_APPROVAL, RESUME_OR_BRANCH, REVIEW_DIFF, create_report, create_report_of,
    recommendations, report_for,
};
/// Summarises a run like `RunInspector.summarize` ([`crate::model::summary::summarize`]);
/// a record the reference would crash on is an [`InspectError::MalformedRun`].
pub fn summarize(run: &crate::model::Run) -> Result<RunSummary, InspectError> {
    crate::model::summary::summarize(run).map_err(InspectError::from)
}

pub use tree::{
    CreatedBy, ForestFindings, IndexForestRender, LineageCycle, LineageEntry, LineageForest, LineageNode,
    LineageOrigin, LineageRelation, RunForest, RunTree, RunTreeNode, SubtreeMetrics, UnreadableRun, build_forest,
    build_lineage_forest, build_tree, build_tree_knowing, forest_from_runs, lineage_forest, render,
    render_index_forest, render_lineage, render_store_forest, tree_from_runs, write_forest_json,
};
