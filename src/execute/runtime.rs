//! Runtimes: what performs a recovery action on a run.
//!
//! The runner decides *what* to do and journals it; a [`Runtime`] does it. Which runtime owns a
//! run is resolved from the run (its `metadata.workflowId` names a workflow runtime, otherwise
//! the agent runtime) through `salvage.yaml`; a run whose runtime is not configured fails
//! closed with a clear error, it is never handed to another runtime.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::playbook::Action;
use crate::store::RunStore;

/// A recovery action to perform, as the runner sends it to a runtime (and, as JSON, to
/// `command` programs on stdin and to `http` endpoints as the request body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRequest {
    pub execution_id: String,
    pub plan_id: String,
    /// The playbook step.
    pub step_id: String,
    /// 1 for the first attempt; retries count up.
    pub attempt: u32,
    /// `<planId>:<stepId>:<attempt>`: the same for a retry after a crash, so that an external
    /// system can recognise a request it has already carried out.
    pub idempotency_key: String,
    /// The catalog action (`branch_from_checkpoint`, `resume_run`, …).
    pub action: Action,
    /// The name the plan uses for it (`branch_from_failure_checkpoint`, …).
    pub plan_action: String,
    /// The run acted on: the incident run, or the run an earlier step created (`target:`).
    pub run_id: String,
    /// The plan step's payload (`checkpointId`, `failedStepId`, `toolName`, …).
    pub payload: Map<String, Value>,
    pub incident_type: String,
    /// For actions that create a run: the id reserved for it in the journal before the action,
    /// so that a retry finds the run it already created instead of creating another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_run_id: Option<String>,
    /// The recorded human decision that let this step run, if one was needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<Value>,
}

/// What a runtime did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionResult {
    /// One of the action's outcomes (`ok`, `failed`).
    pub outcome: String,
    /// The run the action created (branches, replays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_run_id: Option<String>,
    /// Anything worth keeping in the journal (a runtime's response, stderr, …).
    #[serde(default)]
    pub detail: Value,
}

impl ActionResult {
    pub fn ok(detail: Value) -> ActionResult {
        ActionResult { outcome: "ok".to_owned(), created_run_id: None, detail }
    }

    pub fn failed(detail: Value) -> ActionResult {
        ActionResult { outcome: "failed".to_owned(), created_run_id: None, detail }
    }
}

/// A runtime could not be used at all (as opposed to an action that ran and failed, which is
/// an [`ActionResult`] with outcome `failed`).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum RuntimeError {
    /// The run's runtime is not configured.
    #[error("no runtime is configured for run \"{run_id}\" ({wanted})")]
    #[diagnostic(
        code(salvage::runtime::not_configured),
        help("add it under `runtimes:` in salvage.yaml (`salvage init` writes a commented example)")
    )]
    NotConfigured { run_id: String, wanted: String },

    /// The runtime does not carry out this action.
    #[error("the {runtime} runtime does not carry out `{action}`")]
    #[diagnostic(code(salvage::runtime::unsupported_action))]
    Unsupported { runtime: String, action: String },

    /// The run store failed while the runtime worked.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] crate::store::StoreError),

    /// Anything else that kept the runtime from acting (a program that cannot be started, a
    /// malformed response).
    #[error("{runtime} runtime: {message}")]
    #[diagnostic(code(salvage::runtime::failed))]
    Failed { runtime: String, message: String },
}

impl RuntimeError {
    /// Whether the error was raised before anything was sent anywhere (no runtime for the run,
    /// an action the runtime does not carry out): the step certainly had no effect.
    pub fn before_any_effect(&self) -> bool {
        matches!(self, RuntimeError::NotConfigured { .. } | RuntimeError::Unsupported { .. })
    }
}

/// Performs recovery actions on runs.
#[async_trait]
pub trait Runtime: Send + Sync + std::fmt::Debug {
    /// A short description for logs and plans (`store`, `command ./bin/resume`, `http http://…`).
    fn describe(&self) -> String;

    /// Whether the runtime acts outside the run store (programs, services). In a dry run such
    /// a runtime is replaced by a recorder; a runtime that only writes the store runs against
    /// the dry run's in-memory overlay.
    fn acts_outside_the_store(&self) -> bool {
        true
    }

    /// Performs `request`. `runs` is the store the runner executes against (in a dry run, an
    /// overlay that keeps every write in memory). An action that ran and did not succeed
    /// returns `Ok` with outcome `failed`; `Err` means the runtime could not act at all.
    async fn perform(&self, request: &ActionRequest, runs: &dyn RunStore) -> Result<ActionResult, RuntimeError>;
}

/// Finds the runtime that owns a run (implemented by the `salvage.yaml` runtime registry).
pub trait ResolveRuntime: Send + Sync + std::fmt::Debug {
    fn resolve(&self, run: &crate::model::Run) -> Result<std::sync::Arc<dyn Runtime>, RuntimeError>;
}
