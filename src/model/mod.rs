//! Runs and their parts, as the reference runtime (agnostic-agents 1.3.3) persists them.
//!
//! Everything downstream reads runs through this module, so it holds the two promises the rest
//! of salvage relies on: loading normalises exactly like the reference's `Run.fromJSON`, and
//! writing back keeps every field of the record, known or not.

#[cfg(test)]
pub(crate) mod corpus_records;
mod decode;
pub mod js;
pub mod json;
pub mod json_text;
mod leaf_view;
mod parts;
mod run;
pub mod summary;
mod tree_leaf;
mod vocab;

pub use leaf_view::run_for_leaf;
pub use parts::{Checkpoint, Event, PendingApproval, PendingPause, RunError, Step, ToolCall};
pub use run::{
    ChildRuns, Lineage, Metadata, Metrics, RUN_KEYS, Run, RunShapeError, Timestamps, Timings, TokenUsage, kind_of,
};
pub use summary::MalformedRun;
pub use tree_leaf::{LeafMetrics, TREE_LEAF_VERSION, TreeLeaf};
#[allow(unused_imports)]
pub(crate) use vocab::open_vocabulary;
pub use vocab::{CheckpointLabel, EventType, IncidentKind, PauseStage, RunStatus, StepStatus, StepType};
