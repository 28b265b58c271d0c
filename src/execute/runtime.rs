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
/// `command` programs on stdin and to `http` endpoints of the `salvage` protocol as the request
/// body; `docs/runtime-protocol/request.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// The recorded human decision that let this step run, if one was needed (for
    /// `deny_approval`: the denial it carries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<Value>,
    /// The run's state as the runner saw it just before sending (for actions on an existing
    /// run): a runtime may refuse a request whose run is elsewhere, and can tell an answer that
    /// left the run unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<RunExpectation>,
}

impl ActionRequest {
    /// A request that names only a run: fills `{runId}` in a route that reads it.
    pub fn for_run(run_id: &str) -> ActionRequest {
        ActionRequest {
            execution_id: String::new(),
            plan_id: String::new(),
            step_id: String::new(),
            attempt: 0,
            idempotency_key: String::new(),
            action: Action::InspectReport,
            plan_action: String::new(),
            run_id: run_id.to_owned(),
            payload: Map::new(),
            incident_type: String::new(),
            new_run_id: None,
            approval: None,
            expect: None,
        }
    }
}

/// The state of a run an action expects to find.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunExpectation {
    /// `paused`, `waiting_for_approval`, …
    pub status: String,
    /// `pendingPause.stage` (`""`: paused without a stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_stage: Option<String>,
    /// The pending approval's tool call id (else its tool name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_approval: Option<String>,
}

impl RunExpectation {
    pub fn of(observation: &RunObservation) -> RunExpectation {
        RunExpectation {
            status: observation.status.as_str().to_owned(),
            pause_stage: observation.pause_stage.clone(),
            pending_approval: observation.pending_approval.clone(),
        }
    }

    /// Whether `observation` shows the run exactly where this expectation found it (an
    /// action "answered" with the run unchanged did nothing).
    pub fn unchanged_in(&self, observation: &RunObservation) -> bool {
        observation.status.as_str() == self.status
            && observation.pause_stage == self.pause_stage
            && observation.pending_approval == self.pending_approval
    }
}

/// What a runtime did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionResult {
    /// One of the action's outcomes (`ok`, `failed`).
    pub outcome: String,
    /// The run the action created (branches, replays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_run_id: Option<String>,
    /// The status of the run acted on (or created) after the action, as the runtime saw it
    /// (`completed`, `failed`, `paused`, `waiting_for_approval`, `running`, …). An execution
    /// ends `resolved` only once the recovered run is seen `completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_status: Option<String>,
    /// Anything worth keeping in the journal (a runtime's response, stderr, …).
    #[serde(default)]
    pub detail: Value,
}

impl ActionResult {
    pub fn ok(detail: Value) -> ActionResult {
        ActionResult { outcome: "ok".to_owned(), created_run_id: None, run_status: None, detail }
    }

    pub fn failed(detail: Value) -> ActionResult {
        ActionResult { outcome: "failed".to_owned(), created_run_id: None, run_status: None, detail }
    }

    /// The same result with another outcome (a check's `persisted`, `clean`, …).
    pub fn with_outcome(mut self, outcome: impl Into<String>) -> ActionResult {
        self.outcome = outcome.into();
        self
    }

    /// The same result, saying what became of the run.
    pub fn with_run_status(mut self, status: impl Into<String>) -> ActionResult {
        self.run_status = Some(status.into());
        self
    }
}

/// A run as its runtime (or the store) shows it now: what the runner compares with what a
/// plan expected before acting, and what verifies an outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct RunObservation {
    pub run_id: String,
    pub status: crate::model::RunStatus,
    /// The pending tool approval's call id (`pendingApproval.toolCall.id`) or tool name, when
    /// one is pending.
    pub pending_approval: Option<String>,
    /// `pendingPause.stage`, when paused (`""` for a pause without a stage).
    pub pause_stage: Option<String>,
    /// Who answered: `store`, or the runtime's description.
    pub seen_by: String,
}

impl RunObservation {
    /// What the store holds for a run.
    pub fn of_run(run: &crate::model::Run, seen_by: impl Into<String>) -> RunObservation {
        RunObservation {
            run_id: run.id.clone(),
            status: run.status.clone(),
            pending_approval: run.pending_approval().map(approval_identity),
            pause_stage: run
                .pending_pause()
                .map(|pause| pause.stage.as_ref().map(|stage| stage.as_str().to_owned()).unwrap_or_default()),
            seen_by: seen_by.into(),
        }
    }

    /// From a `RunInspector.summarize` answer (the reference's runtime service).
    pub fn of_summary(summary: &Value, seen_by: impl Into<String>) -> Option<RunObservation> {
        let run_id = summary.get("id")?.as_str()?.to_owned();
        let status = crate::model::RunStatus::parse(summary.get("status")?.as_str()?);
        let pending_approval = summary.get("pendingApproval").filter(|p| p.is_object()).map(|p| {
            p.pointer("/toolCall/id")
                .and_then(Value::as_str)
                .or_else(|| p.get("toolName").and_then(Value::as_str))
                .unwrap_or_default()
                .to_owned()
        });
        let pause_stage = summary
            .get("pendingPause")
            .filter(|p| p.is_object())
            .map(|pause| pause.get("stage").and_then(Value::as_str).unwrap_or_default().to_owned());
        Some(RunObservation { run_id, status, pending_approval, pause_stage, seen_by: seen_by.into() })
    }
}

/// How a pending approval is told apart from another one: its tool call id, else its tool.
fn approval_identity(approval: &crate::model::PendingApproval) -> String {
    approval
        .tool_call_id()
        .and_then(|id| id.as_str().map(str::to_owned))
        .or_else(|| approval.tool_name.clone())
        .unwrap_or_default()
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

    /// Something kept the runtime from acting before anything was sent or written (a program
    /// that cannot be started, a request that cannot be built, an id the store refuses): the
    /// step certainly had no effect.
    #[error("{runtime}: {message}")]
    #[diagnostic(code(salvage::runtime::not_sent))]
    BeforeEffect { runtime: String, message: String },

    /// The runtime may have acted but its answer is missing or unreadable (a timeout waiting
    /// for the answer, a malformed response): whether the effect happened is unknown.
    #[error("{runtime} runtime: {message}")]
    #[diagnostic(code(salvage::runtime::failed))]
    Failed { runtime: String, message: String },
}

impl RuntimeError {
    /// Whether the error was raised before anything was sent anywhere (no runtime for the run,
    /// an action the runtime does not carry out, a request that could not be sent): the step
    /// certainly had no effect.
    pub fn before_any_effect(&self) -> bool {
        matches!(
            self,
            RuntimeError::NotConfigured { .. } | RuntimeError::Unsupported { .. } | RuntimeError::BeforeEffect { .. }
        )
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

    /// How the runtime sees a run now; `None` when it cannot tell (the runner then reads the
    /// store). Used before every effect (is the run still where the plan expected it?), after
    /// an interruption (did the effect happen?) and to verify outcomes.
    async fn observe(&self, _run_id: &str) -> Result<Option<RunObservation>, RuntimeError> {
        Ok(None)
    }

    /// The run an earlier attempt of a run-creating request made, when the runtime can find it
    /// by the request's idempotency key; `None` when it cannot tell.
    async fn find_created(&self, _request: &ActionRequest) -> Result<Option<String>, RuntimeError> {
        Ok(None)
    }

    /// Whether it carries out `action` at all (`salvage check` warns about playbook actions
    /// that a configured runtime does not carry out).
    fn carries_out(&self, _action: Action) -> bool {
        true
    }
}

/// Finds the runtime that owns a run (implemented by the `salvage.yaml` runtime registry).
pub trait ResolveRuntime: Send + Sync + std::fmt::Debug {
    fn resolve(&self, run: &crate::model::Run) -> Result<std::sync::Arc<dyn Runtime>, RuntimeError>;

    /// The configuration the routes were built from, pinned on every execution started with
    /// them; `None` for routes not built from `salvage.yaml` (tests), which are not pinned.
    fn pinned(&self) -> Option<super::record::PinnedRuntimes> {
        None
    }
}

/// The JSON Schemas of salvage's own runtime protocol (`protocol: salvage`, and `command`
/// programs): the request a runtime receives and the answer it gives. Committed under
/// `docs/runtime-protocol/`; a test keeps them in sync with the types.
pub fn protocol_schemas() -> (Value, Value) {
    let schema = |mut value: Value, title: &str, comment: &str| {
        if let Some(object) = value.as_object_mut() {
            object.insert("title".into(), Value::String(title.to_owned()));
            object.insert("$comment".into(), Value::String(comment.to_owned()));
        }
        value
    };
    let generator = || schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let request = generator().into_root_schema_for::<ActionRequest>().to_value();
    let answer = generator().into_root_schema_for::<ActionResult>().to_value();
    (
        schema(
            request,
            "salvage runtime request",
            "What salvage POSTs to a `protocol: salvage` runtime (and writes to a `command` program's stdin). \
             Generated from salvage's types; see docs/runtime-protocol/README.md.",
        ),
        schema(
            answer,
            "salvage runtime answer",
            "What a `protocol: salvage` runtime (or a `command` program, on stdout) answers. Generated from salvage's \
             types; see docs/runtime-protocol/README.md.",
        ),
    )
}
