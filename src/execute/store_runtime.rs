//! The `store` runtime (built in, the default): performs the data side of each run-mutating
//! action directly on the run store, with the reference runtime's semantics (spec §4).
//!
//! - `branch_from_checkpoint` creates the branch run exactly as the reference's
//!   `branchRun` / `Run.branchFromCheckpoint` builds it;
//! - `partial_replay` / `frozen_replay` create replay runs as the reference's `replayRun` does;
//! - `cancel_run` cancels as `cancelRun` does;
//! - `resume_run`, `resume_replay` and `resolve_approval` cannot be carried out here (that
//!   needs the agent or workflow that owns the run): the operator decision and a resume
//!   request are recorded on the run, under `metadata.recovery.resumeRequests`, for the owning
//!   runtime to pick up.
//!
//! Every write goes through the [`RunStore`] passed in: new runs with [`Expected::Absent`],
//! changes with compare-and-set on the revision that was read (re-read and re-applied on a
//! conflict). A retry after a crash is recognised and not applied twice: a reserved run id that
//! already holds a run derived from the same source, a cancellation or resume request recorded
//! under the same idempotency key.
//!
//! Deliberate differences from the reference (each has a test in `tests/runtimes.rs`):
//! - a checkpoint without a snapshot is refused instead of silently copying the source's
//!   current state (spec §8 #25);
//! - a frozen replay points at its source: `lineage.branchOriginRunId` is the source run and
//!   `branchCheckpointId` is `null` (the reference inherits the source's branch fields, so the
//!   copy has no lineage pointer to its source, spec §8 #16);
//! - `partial_replay` without a `checkpointId` replays from the last checkpoint (the reference
//!   runner passes `null` and silently gets a full frozen replay instead);
//! - cancelling a terminal run, resuming a run that is not paused or waiting, resolving an
//!   approval that is not pending (or without a recorded operator decision) and resuming a
//!   replay that is not paused at a replay stage are `failed` outcomes with the reason (the
//!   reference returns the run unchanged and reports success);
//! - cancelling clears `pendingApproval` for workflow-owned runs too (the reference's
//!   `WorkflowRunner.cancelRun` leaves it).

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::runtime::{ActionRequest, ActionResult, Runtime, RuntimeError};
use crate::model::json::{epoch_millis, now_iso, truthy};
use crate::model::{Checkpoint, Event, PauseStage, PendingPause, Run, RunStatus};
use crate::playbook::Action;
use crate::store::{Expected, RunStore, StoreError, StoredRun};

/// How many times a compare-and-set update is re-read and re-applied before giving up.
const MAX_UPDATE_ATTEMPTS: usize = 8;

/// The metadata key under which salvage records which execution step created a run.
pub const SALVAGE_METADATA_KEY: &str = "salvage";

/// The `metadata.recovery` key that lists resume requests for the owning runtime.
pub const RESUME_REQUESTS_KEY: &str = "resumeRequests";

/// The built-in runtime that acts on the run store itself.
#[derive(Debug, Clone, Default)]
pub struct StoreRuntime;

impl StoreRuntime {
    pub fn new() -> StoreRuntime {
        StoreRuntime
    }
}

#[async_trait]
impl Runtime for StoreRuntime {
    /// The store runtime only writes the run store, so a dry run runs it against its overlay.
    fn acts_outside_the_store(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        "store".to_owned()
    }

    async fn perform(&self, request: &ActionRequest, runs: &dyn RunStore) -> Result<ActionResult, RuntimeError> {
        match request.action {
            Action::BranchFromCheckpoint => create_derived(request, runs, Derivation::Branch).await,
            Action::PartialReplay => create_derived(request, runs, Derivation::PartialReplay).await,
            Action::FrozenReplay => create_derived(request, runs, Derivation::FrozenReplay).await,
            Action::CancelRun => cancel(request, runs).await,
            Action::ResumeRun | Action::ResumeReplay | Action::ResolveApproval | Action::DenyApproval => {
                record_resume_request(request, runs).await
            }
            other => Err(RuntimeError::Unsupported { runtime: "store".to_owned(), action: other.name().to_owned() }),
        }
    }
}

/// Which runtime flavour the reference would have used for a run: the workflow runner when
/// `metadata.workflowId` is set (the reference runner's routing), else the agent.
#[derive(Debug, Clone, PartialEq)]
enum Flavour {
    Agent,
    Workflow { id: String, name: Option<String> },
}

impl Flavour {
    fn of(run: &Run) -> Flavour {
        match run.workflow_id().filter(|id| !id.is_empty()) {
            Some(id) => Flavour::Workflow {
                id: id.to_owned(),
                name: run.metadata.get("workflowName").and_then(Value::as_str).map(str::to_owned),
            },
            None => Flavour::Agent,
        }
    }

    /// An event or checkpoint payload: workflow payloads start with `workflowId`.
    fn payload(&self, fields: Value) -> Value {
        match self {
            Flavour::Agent => fields,
            Flavour::Workflow { id, .. } => {
                let mut map = Map::new();
                map.insert("workflowId".into(), Value::String(id.clone()));
                if let Value::Object(fields) = fields {
                    map.extend(fields);
                }
                Value::Object(map)
            }
        }
    }

    /// The reference's label / event type for this flavour (`run_branched` ↔ `workflow_branched`,
    /// `replay_started` ↔ `workflow_replay_started`, …).
    fn name(&self, agent: &'static str) -> String {
        match self {
            Flavour::Agent => agent.to_owned(),
            Flavour::Workflow { .. } => match agent {
                "run_branched" => "workflow_branched".to_owned(),
                "run_cancelled" => "workflow_cancelled".to_owned(),
                other => format!("workflow_{other}"),
            },
        }
    }
}

/// What kind of run an action derives from its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Derivation {
    Branch,
    PartialReplay,
    FrozenReplay,
}

impl Derivation {
    fn action(self) -> Action {
        match self {
            Derivation::Branch => Action::BranchFromCheckpoint,
            Derivation::PartialReplay => Action::PartialReplay,
            Derivation::FrozenReplay => Action::FrozenReplay,
        }
    }

    /// The reference's id scheme when no id was reserved.
    fn generated_id(self, source_id: &str) -> String {
        match self {
            Derivation::Branch => uuid::Uuid::new_v4().to_string(),
            Derivation::PartialReplay => format!("{source_id}:partial-replay:{}", epoch_millis()),
            Derivation::FrozenReplay => format!("{source_id}:replay:{}", epoch_millis()),
        }
    }
}

fn failed(message: impl Into<String>) -> ActionResult {
    let message = message.into();
    tracing::info!(%message, "store runtime: action failed");
    ActionResult::failed(json!({ "message": message }))
}

fn not_found(run_id: &str) -> ActionResult {
    failed(format!("Run \"{run_id}\" not found."))
}

/// What salvage records on the runs it creates: which execution step created them, with
/// which operator decision.
fn salvage_record(request: &ActionRequest, now: &str) -> Value {
    json!({
        "executionId": request.execution_id,
        "planId": request.plan_id,
        "stepId": request.step_id,
        "attempt": request.attempt,
        "idempotencyKey": request.idempotency_key,
        "action": request.action.name(),
        "approval": request.approval.clone().unwrap_or(Value::Null),
        "createdAt": now,
    })
}

/// `metadata.recovery` as the reference runner writes it: branches carry the incident type,
/// replays do not.
fn recovery_metadata(request: &ActionRequest, derivation: Derivation) -> Value {
    let mut recovery = Map::new();
    recovery.insert("sourceRunId".into(), Value::String(request.run_id.clone()));
    recovery.insert("action".into(), Value::String(request.plan_action.clone()));
    if derivation == Derivation::Branch {
        let incident = Some(request.incident_type.as_str()).filter(|t| !t.is_empty());
        recovery.insert("incidentType".into(), incident.map_or(Value::Null, |t| Value::String(t.to_owned())));
    }
    Value::Object(recovery)
}

/// The metadata salvage asks a runtime to put on a run it creates for a step (`recovery` as
/// the reference runner writes it, `salvage`: the execution step that created it), so that the
/// run can be told apart as this step's after a crash, and as a run a recovery owns.
pub(crate) fn created_run_metadata(request: &ActionRequest) -> Map<String, Value> {
    let derivation = match request.action {
        Action::PartialReplay => Derivation::PartialReplay,
        Action::FrozenReplay => Derivation::FrozenReplay,
        _ => Derivation::Branch,
    };
    let mut metadata = Map::new();
    metadata.insert("recovery".into(), recovery_metadata(request, derivation));
    metadata.insert(SALVAGE_METADATA_KEY.into(), salvage_record(request, &now_iso()));
    metadata
}

/// `payload.checkpointId || null`.
fn requested_checkpoint(request: &ActionRequest) -> Option<&str> {
    request.payload.get("checkpointId").and_then(Value::as_str).filter(|id| !id.is_empty())
}

async fn create_derived(
    request: &ActionRequest,
    runs: &dyn RunStore,
    derivation: Derivation,
) -> Result<ActionResult, RuntimeError> {
    let Some(StoredRun { run: source, .. }) = runs.get(&request.run_id).await? else {
        return Ok(not_found(&request.run_id));
    };
    // A retry after a crash: the reserved id may already hold the run this step created.
    if let Some(reserved) = &request.new_run_id
        && let Some(existing) = runs.get(reserved).await?
    {
        return Ok(already_created(&existing.run, &source, derivation));
    }
    let flavour = flavour_with_name(&source, runs).await?;
    for _ in 0..MAX_UPDATE_ATTEMPTS {
        let new_id = match &request.new_run_id {
            Some(id) => id.clone(),
            None => derivation.generated_id(&source.id),
        };
        let now = now_iso();
        let built = match derivation {
            Derivation::Branch => build_branch(&source, request, &new_id, &flavour, &now),
            Derivation::PartialReplay => build_partial_replay(&source, request, &new_id, &flavour, &now),
            Derivation::FrozenReplay => Ok(build_frozen_replay(&source, request, &new_id, &flavour, &now)),
        };
        let run = match built {
            Ok(run) => run,
            Err(message) => return Ok(failed(message)),
        };
        match runs.save(&run, Expected::Absent).await {
            Ok(_) => {
                if super::record::mode_of_execution_id(&request.execution_id) == super::Mode::Advisory {
                    // The overlay holds it: nothing was written, and the log must not say so.
                    tracing::info!(source = %source.id, would_create = %run.id, action = %derivation.action(), "store runtime would create a run (dry run: nothing written)");
                } else {
                    tracing::info!(source = %source.id, created = %run.id, action = %derivation.action(), "store runtime created a run");
                }
                return Ok(created(&run, false));
            }
            Err(StoreError::Conflict { .. }) if request.new_run_id.is_none() => {
                // Two replays of one run in the same millisecond get the same generated id
                // (spec §8 #26): take the next millisecond's.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            Err(StoreError::Conflict { .. }) => {
                return match runs.get(&new_id).await? {
                    Some(existing) => Ok(already_created(&existing.run, &source, derivation)),
                    None => Err(RuntimeError::Failed {
                        runtime: "store".to_owned(),
                        message: format!("saving run \"{new_id}\" conflicted, but no such run exists"),
                    }),
                };
            }
            // The store refused the id before writing anything: the step had no effect.
            Err(error @ StoreError::InvalidRunId { .. }) => {
                return Err(RuntimeError::BeforeEffect {
                    runtime: "store runtime".to_owned(),
                    message: error.to_string(),
                });
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(RuntimeError::Failed {
        runtime: "store".to_owned(),
        message: format!("could not find a free id for the new run derived from \"{}\"", source.id),
    })
}

/// The workflow flavour needs the workflow's name; a delegated child run carries the
/// workflow id but not its name, which its parent (the workflow run) has.
async fn flavour_with_name(source: &Run, runs: &dyn RunStore) -> Result<Flavour, RuntimeError> {
    let flavour = Flavour::of(source);
    if let Flavour::Workflow { id, name: None } = &flavour
        && let Some(parent_id) = source.parent_run_id()
        && let Some(parent) = runs.get(parent_id).await?
        && parent.run.workflow_id() == Some(id.as_str())
        && let Some(name) = parent.run.metadata.get("workflowName").and_then(Value::as_str)
    {
        return Ok(Flavour::Workflow { id: id.clone(), name: Some(name.to_owned()) });
    }
    Ok(flavour)
}

fn created(run: &Run, already: bool) -> ActionResult {
    let mut detail = json!({
        "runId": run.id,
        "status": run.status.as_str(),
        "sourceRunId": run.lineage().branch_origin_run_id,
        "checkpointId": run.lineage().branch_checkpoint_id,
    });
    if already {
        detail["alreadyCreated"] = Value::Bool(true);
    }
    ActionResult {
        outcome: "ok".to_owned(),
        created_run_id: Some(run.id.clone()),
        run_status: Some(run.status.as_str().to_owned()),
        detail,
    }
}

/// The reserved id holds a run already: fine when it derives from the same source (this step
/// ran before a crash), an error otherwise.
fn already_created(existing: &Run, source: &Run, derivation: Derivation) -> ActionResult {
    if existing.lineage().branch_origin_run_id.as_deref() == Some(source.id.as_str()) {
        tracing::info!(run = %existing.id, source = %source.id, "store runtime: run already created by an earlier attempt");
        return created(existing, true);
    }
    failed(format!(
        "cannot {} run \"{}\" as \"{}\": a run with that id already exists and does not derive from it",
        derivation.action(),
        source.id,
        existing.id
    ))
}

/// Resolves the checkpoint like `Run.getCheckpoint`, with the reference's messages.
fn resolve_checkpoint<'a>(source: &'a Run, checkpoint_id: Option<&str>) -> Result<&'a Checkpoint, String> {
    match checkpoint_id {
        Some(id) => {
            source.checkpoint(id).ok_or_else(|| format!("Checkpoint \"{id}\" not found on run \"{}\".", source.id))
        }
        None => {
            source.last_checkpoint().ok_or_else(|| format!("Run \"{}\" has no checkpoints to branch from.", source.id))
        }
    }
}

/// `Run.branchFromCheckpoint`: a new paused run seeded from the checkpoint's snapshot.
fn branch_from_checkpoint(
    source: &Run,
    checkpoint: &Checkpoint,
    new_id: &str,
    metadata: Map<String, Value>,
    now: &str,
) -> Result<Run, String> {
    let checkpoint_id = checkpoint.id.clone().unwrap_or_default();
    // Spec §8 #25: the reference silently snapshots the *current* run instead.
    let snapshot = match checkpoint.snapshot.as_ref().map(|text| text.to_value()) {
        Some(Value::Object(snapshot)) => snapshot,
        _ => {
            return Err(format!(
                "Checkpoint \"{checkpoint_id}\" of run \"{}\" has no snapshot, so there is no state to branch from \
                 (the reference would silently copy the run's current state instead)",
                source.id
            ));
        }
    };
    let from_snapshot = |key: &str, empty: Value| snapshot.get(key).cloned().unwrap_or(empty);
    let label = checkpoint.label.as_ref().map_or("undefined", |label| label.as_str());
    let lineage = json!({
        "rootRunId": source.root_run_id(),
        "parentRunId": source.parent_run_id(),
        "childRunIds": [],
        "branchOriginRunId": source.id,
        "branchCheckpointId": checkpoint.id,
    });
    let mut metadata = metadata;
    metadata.insert("lineage".into(), lineage);
    let record = json!({
        "id": new_id,
        "input": source.input,
        "state": from_snapshot("state", json!({})),
        "messages": from_snapshot("messages", json!([])),
        "steps": from_snapshot("steps", json!([])),
        "toolCalls": from_snapshot("toolCalls", json!([])),
        "toolResults": from_snapshot("toolResults", json!([])),
        "checkpoints": [],
        "errors": [],
        "events": [],
        "timestamps": {
            "createdAt": now, "startedAt": null, "updatedAt": now,
            "completedAt": null, "failedAt": null, "cancelledAt": null,
        },
        "status": "pending",
        "output": null,
        "pendingApproval": null,
        "pendingPause": {
            "reason": format!("Branched from checkpoint \"{label}\"."),
            "stage": "branch",
            "sourceRunId": source.id,
            "sourceCheckpointId": checkpoint.id,
        },
        "metrics": from_snapshot("metrics", json!({})),
        "metadata": Value::Object(metadata),
    });
    let mut run = Run::from_value(record).map_err(|error| {
        format!("the snapshot of checkpoint \"{checkpoint_id}\" is not a usable run state: {error}")
    })?;
    set_status(&mut run, RunStatus::Paused, now);
    Ok(run)
}

/// The metadata a branch or partial replay starts from: the runtime's own keys, then the
/// caller's (`recovery`), then salvage's record.
fn base_metadata(
    source: &Run,
    flavour: &Flavour,
    request: &ActionRequest,
    derivation: Derivation,
    now: &str,
) -> Map<String, Value> {
    let mut metadata = Map::new();
    match flavour {
        Flavour::Agent => {
            // The reference uses the agent runtime's description; the source run's is the best
            // record of it here.
            let description =
                source.metadata.get("description").cloned().unwrap_or_else(|| Value::String(String::new()));
            metadata.insert("description".into(), description);
        }
        Flavour::Workflow { id, name } => {
            metadata.insert("workflowId".into(), Value::String(id.clone()));
            if let Some(name) = name {
                metadata.insert("workflowName".into(), Value::String(name.clone()));
            }
        }
    }
    metadata.insert("recovery".into(), recovery_metadata(request, derivation));
    metadata.insert(SALVAGE_METADATA_KEY.into(), salvage_record(request, now));
    metadata
}

/// `branchRun`: the branch, plus its `run_branched` / `workflow_branched` event and checkpoint.
fn build_branch(
    source: &Run,
    request: &ActionRequest,
    new_id: &str,
    flavour: &Flavour,
    now: &str,
) -> Result<Run, String> {
    let checkpoint = resolve_checkpoint(source, requested_checkpoint(request))?;
    let metadata = base_metadata(source, flavour, request, Derivation::Branch, now);
    let mut run = branch_from_checkpoint(source, checkpoint, new_id, metadata, now)?;
    let payload = flavour.payload(json!({
        "sourceRunId": source.id,
        "sourceCheckpointId": run.lineage().branch_checkpoint_id,
    }));
    let name = flavour.name("run_branched");
    emit(&mut run, &name, payload.clone(), now);
    take_checkpoint(&mut run, &name, payload, flavour, now);
    Ok(run)
}

/// The replay's `metadata.replay` and lineage override, as `replayRun` writes them.
fn apply_replay_metadata(run: &mut Run, source: &Run, mode: &str, checkpoint_id: Option<&str>, now: &str) {
    run.metadata.insert(
        "replay",
        json!({
            "mode": mode,
            "sourceRunId": source.id,
            "sourceCheckpointId": checkpoint_id,
            "replayedAt": now,
        }),
    );
    let lineage = &mut run.metadata.lineage;
    lineage.root_run_id = source.root_run_id().to_owned();
    lineage.parent_run_id = None;
    lineage.child_run_ids.clear();
}

/// Clears what `replayRun` clears before the replay starts, and starts it.
fn start_replay(run: &mut Run, source: &Run, flavour: &Flavour, mode: &str, checkpoint_id: Option<&str>, now: &str) {
    run.events.clear();
    run.checkpoints.clear();
    run.timestamps = crate::model::Timestamps {
        created_at: Some(now.to_owned()),
        updated_at: Some(now.to_owned()),
        ..Default::default()
    };
    run.pending_approval = None;
    run.pending_pause = None;
    set_status(run, RunStatus::Running, now);
    let payload = flavour.payload(json!({
        "sourceRunId": source.id,
        "sourceCheckpointId": checkpoint_id,
        "mode": mode,
    }));
    let name = flavour.name("replay_started");
    emit(run, &name, payload.clone(), now);
    take_checkpoint(run, &name, payload, flavour, now);
}

fn complete_replay(
    run: &mut Run,
    source: &Run,
    flavour: &Flavour,
    checkpoint_id: Option<&str>,
    status: &str,
    now: &str,
) {
    let payload = flavour.payload(json!({
        "sourceRunId": source.id,
        "sourceCheckpointId": checkpoint_id,
        "status": status,
    }));
    let name = flavour.name("replay_completed");
    emit(run, &name, payload.clone(), now);
    take_checkpoint(run, &name, payload, flavour, now);
}

/// `replayRun(id, {checkpointId})`: a new run seeded from the checkpoint, paused at the
/// `replay` / `workflow_replay` stage.
fn build_partial_replay(
    source: &Run,
    request: &ActionRequest,
    new_id: &str,
    flavour: &Flavour,
    now: &str,
) -> Result<Run, String> {
    let checkpoint = resolve_checkpoint(source, requested_checkpoint(request))?;
    let checkpoint_id = checkpoint.id.clone().unwrap_or_default();
    let metadata = base_metadata(source, flavour, request, Derivation::PartialReplay, now);
    let mut run = branch_from_checkpoint(source, checkpoint, new_id, metadata, now)?;
    const MODE: &str = "partial_frozen_trace";
    apply_replay_metadata(&mut run, source, MODE, Some(&checkpoint_id), now);
    start_replay(&mut run, source, flavour, MODE, Some(&checkpoint_id), now);
    let (reason, stage) = match flavour {
        Flavour::Agent => (format!("Frozen replay prepared from checkpoint \"{checkpoint_id}\"."), "replay"),
        Flavour::Workflow { .. } => {
            (format!("Frozen workflow replay prepared from checkpoint \"{checkpoint_id}\"."), "workflow_replay")
        }
    };
    run.pending_pause = Some(PendingPause::from_value(json!({
        "reason": reason,
        "stage": stage,
        "sourceRunId": source.id,
        "sourceCheckpointId": checkpoint_id,
    })));
    set_status(&mut run, RunStatus::Paused, now);
    complete_replay(&mut run, source, flavour, Some(&checkpoint_id), "paused", now);
    Ok(run)
}

/// `replayRun(id)` without a checkpoint: a frozen copy of the whole run, in the source's status.
fn build_frozen_replay(source: &Run, request: &ActionRequest, new_id: &str, flavour: &Flavour, now: &str) -> Run {
    let mut run = source.clone();
    run.id = new_id.to_owned();
    run.metadata.insert("recovery", recovery_metadata(request, Derivation::FrozenReplay));
    run.metadata.insert(SALVAGE_METADATA_KEY, salvage_record(request, now));
    const MODE: &str = "frozen_trace";
    apply_replay_metadata(&mut run, source, MODE, None, now);
    // Spec §8 #16: the reference keeps the source's branch fields, so the copy has no lineage
    // pointer to its source; salvage points it at the source (no checkpoint: a whole copy).
    run.metadata.lineage.branch_origin_run_id = Some(source.id.clone());
    run.metadata.lineage.branch_checkpoint_id = None;
    start_replay(&mut run, source, flavour, MODE, None, now);
    // The content stays the source's (the clone above); only the status is set again.
    set_status(&mut run, source.status.clone(), now);
    complete_replay(&mut run, source, flavour, None, source.status.as_str(), now);
    run
}

/// `Run.setStatus`: the status' own timestamp, `startedAt` once, `updatedAt` always.
fn set_status(run: &mut Run, status: RunStatus, now: &str) {
    let stamp = Some(now.to_owned());
    match status {
        RunStatus::Running if run.timestamps.started_at.is_none() => run.timestamps.started_at = stamp.clone(),
        RunStatus::Completed => run.timestamps.completed_at = stamp.clone(),
        RunStatus::Failed => run.timestamps.failed_at = stamp.clone(),
        RunStatus::Cancelled => run.timestamps.cancelled_at = stamp.clone(),
        _ => {}
    }
    run.timestamps.updated_at = stamp;
    run.status = status;
}

/// Appends an event as the runtimes do (`<runId>:<n>`).
fn emit(run: &mut Run, event_type: &str, payload: Value, now: &str) {
    let id = format!("{}:{}", run.id, run.events.len() + 1);
    run.events.push(Event::from_value(json!({
        "id": id,
        "type": event_type,
        "timestamp": now,
        "payload": payload,
    })));
    run.timestamps.updated_at = Some(now.to_owned());
}

/// `createCheckpointSnapshot()`.
fn snapshot_of(run: &Run) -> Value {
    json!({
        "state": run.state,
        "messages": run.messages,
        "steps": run.steps,
        "toolCalls": run.tool_calls,
        "toolResults": run.tool_results,
        "metrics": run.metrics,
        "pendingApproval": run.pending_approval,
        "pendingPause": run.pending_pause,
        "output": run.output,
        "status": run.status.as_str(),
    })
}

/// Appends a checkpoint in the agent's or the workflow runner's shape (`<runId>:checkpoint:<n>`).
fn take_checkpoint(run: &mut Run, label: &str, payload: Value, flavour: &Flavour, now: &str) {
    let id = format!("{}:checkpoint:{}", run.id, run.checkpoints.len() + 1);
    let mut checkpoint = json!({
        "id": id,
        "label": label,
        "timestamp": now,
        "status": run.status.as_str(),
        "payload": payload,
        "snapshot": snapshot_of(run),
    });
    match flavour {
        Flavour::Agent => {
            checkpoint["messageCount"] = json!(run.messages.len());
            checkpoint["toolCallCount"] = json!(run.tool_calls.len());
            checkpoint["toolResultCount"] = json!(run.tool_results.len());
        }
        Flavour::Workflow { id, .. } => {
            let completed: Vec<Value> = run
                .state
                .get("workflow")
                .and_then(|w| w.get("results"))
                .and_then(Value::as_object)
                .map(|results| results.keys().map(|k| Value::String(k.clone())).collect())
                .unwrap_or_default();
            checkpoint["workflowId"] = Value::String(id.clone());
            checkpoint["completedSteps"] = Value::Array(completed);
        }
    }
    run.checkpoints.push(Checkpoint::from_value(checkpoint));
    run.timestamps.updated_at = Some(now.to_owned());
}

/// What an update decided after looking at the current run.
enum Update {
    /// Save the changed run.
    Save(Box<Run>, ActionResult),
    /// Nothing to write: this is the result.
    Done(ActionResult),
}

/// Reads the run, lets `decide` change it and saves it with compare-and-set on the revision
/// read; on a conflict, reads and decides again.
async fn update_run(
    runs: &dyn RunStore,
    run_id: &str,
    mut decide: impl FnMut(Run) -> Update + Send,
) -> Result<ActionResult, RuntimeError> {
    for _ in 0..MAX_UPDATE_ATTEMPTS {
        let Some(stored) = runs.get(run_id).await? else {
            return Ok(not_found(run_id));
        };
        match decide(stored.run) {
            Update::Done(result) => return Ok(result),
            Update::Save(run, result) => match runs.save(&run, Expected::Revision(stored.revision)).await {
                Ok(_) => return Ok(result),
                Err(StoreError::Conflict { .. }) => {
                    tracing::debug!(run = %run_id, "store runtime: run changed while updating it; reading it again");
                }
                Err(error) => return Err(error.into()),
            },
        }
    }
    Err(RuntimeError::Failed {
        runtime: "store".to_owned(),
        message: format!("run \"{run_id}\" kept changing; gave up after {MAX_UPDATE_ATTEMPTS} attempts to update it"),
    })
}

/// `cancelRun` (spec §4.2), refusing terminal runs instead of returning them unchanged.
async fn cancel(request: &ActionRequest, runs: &dyn RunStore) -> Result<ActionResult, RuntimeError> {
    let reason = request.payload.get("reason").and_then(Value::as_str).filter(|r| !r.is_empty()).map_or_else(
        || format!("Cancelled by salvage (execution {}, step {}).", request.execution_id, request.step_id),
        str::to_owned,
    );
    update_run(runs, &request.run_id, |mut run| {
        if run.status.is_terminal() {
            if cancelled_by(&run, &request.idempotency_key) {
                return Update::Done(
                    ActionResult::ok(json!({
                        "runId": run.id, "status": run.status.as_str(), "alreadyCancelled": true,
                    }))
                    .with_run_status(run.status.as_str()),
                );
            }
            return Update::Done(failed(format!(
                "Run \"{}\" is already {}; a terminal run cannot be cancelled (the reference returns it unchanged)",
                run.id, run.status
            )));
        }
        let now = now_iso();
        let flavour = Flavour::of(&run);
        let previous = run.status.as_str().to_owned();
        run.pending_pause = None;
        run.pending_approval = None;
        set_status(&mut run, RunStatus::Cancelled, &now);
        let payload = flavour.payload(json!({
            "reason": reason,
            "cancelledBy": "salvage",
            "executionId": request.execution_id,
            "stepId": request.step_id,
            "idempotencyKey": request.idempotency_key,
        }));
        let name = flavour.name("run_cancelled");
        emit(&mut run, &name, payload.clone(), &now);
        take_checkpoint(&mut run, &name, payload, &flavour, &now);
        let result = ActionResult::ok(json!({ "runId": run.id, "status": "cancelled", "previousStatus": previous }))
            .with_run_status("cancelled");
        Update::Save(Box::new(run), result)
    })
    .await
}

/// Whether the run's cancellation was this very request (a retry after a crash).
fn cancelled_by(run: &Run, idempotency_key: &str) -> bool {
    run.status == RunStatus::Cancelled
        && run.events.iter().rev().any(|event| {
            event.payload.as_ref().and_then(|p| p.get("idempotencyKey")).and_then(Value::as_str)
                == Some(idempotency_key)
        })
}

/// Why the run cannot take this resume request, if it cannot.
fn resume_refusal(run: &Run, request: &ActionRequest) -> Option<String> {
    let status = &run.status;
    let pause_stage = run.pending_pause().and_then(|pause| pause.stage.clone());
    match request.action {
        Action::ResumeRun => match status {
            RunStatus::Paused | RunStatus::WaitingForApproval => None,
            _ => Some(format!(
                "Run \"{}\" is {status}; only a paused or waiting_for_approval run can be resumed \
                 (the reference returns it unchanged)",
                run.id
            )),
        },
        Action::ResumeReplay => match (status, &pause_stage) {
            (RunStatus::Paused, Some(stage)) if stage.is_replay() => None,
            _ => Some(format!(
                "Run \"{}\" is not paused at a replay stage (status {status}, pause stage {}); resume_replay needs a \
                 run paused at `replay` or `workflow_replay`",
                run.id,
                pause_stage.as_ref().map_or("none", PauseStage::as_str)
            )),
        },
        Action::ResolveApproval | Action::DenyApproval => {
            if run.pending_approval().is_none() {
                Some(format!("Run \"{}\" has no pending approval to resolve (status {status})", run.id))
            } else if !matches!(status, RunStatus::WaitingForApproval | RunStatus::Paused) {
                Some(format!(
                    "Run \"{}\" is {status}; its pendingApproval is stale (a denied or failed approval leaves it behind) \
                     and resuming it would do nothing",
                    run.id
                ))
            } else if !request.approval.as_ref().is_some_and(truthy) {
                Some(format!(
                    "resolving the pending approval of run \"{}\" needs a recorded operator decision; salvage never \
                     approves a tool call on the operator's behalf",
                    run.id
                ))
            } else {
                None
            }
        }
        _ => Some(format!("the store runtime does not record `{}` requests", request.action)),
    }
}

/// Records a resume request (and the operator decision) under `metadata.recovery` for the
/// runtime that owns the run.
async fn record_resume_request(request: &ActionRequest, runs: &dyn RunStore) -> Result<ActionResult, RuntimeError> {
    update_run(runs, &request.run_id, |mut run| {
        let mut recovery = match run.metadata.get("recovery") {
            Some(Value::Object(recovery)) => recovery.clone(),
            None | Some(Value::Null) => Map::new(),
            // Keep whatever was there rather than drop it.
            Some(other) => Map::from_iter([("previous".to_owned(), other.clone())]),
        };
        let mut requests = match recovery.get(RESUME_REQUESTS_KEY) {
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        };
        let recorded = requests
            .iter()
            .any(|item| item.get("idempotencyKey").and_then(Value::as_str) == Some(request.idempotency_key.as_str()));
        if recorded {
            return Update::Done(
                ActionResult::ok(json!({
                    "runId": run.id, "resumeRequested": true, "alreadyRecorded": true,
                }))
                .with_run_status(run.status.as_str()),
            );
        }
        if let Some(reason) = resume_refusal(&run, request) {
            return Update::Done(failed(reason));
        }
        let now = now_iso();
        requests.push(json!({
            "idempotencyKey": request.idempotency_key,
            "action": request.action.name(),
            "planAction": request.plan_action,
            "executionId": request.execution_id,
            "planId": request.plan_id,
            "stepId": request.step_id,
            "attempt": request.attempt,
            "decision": request.approval.clone().unwrap_or(Value::Null),
            "approved": request.action != Action::DenyApproval,
            "statusAtRequest": run.status.as_str(),
            "pauseStage": run.pending_pause().and_then(|p| p.stage.as_ref()).map(|s| s.as_str()),
            "requestedAt": now,
            "state": "pending",
        }));
        recovery.insert(RESUME_REQUESTS_KEY.into(), Value::Array(requests));
        run.metadata.insert("recovery", Value::Object(recovery));
        run.timestamps.updated_at = Some(now);
        let result =
            ActionResult::ok(json!({ "runId": run.id, "resumeRequested": true })).with_run_status(run.status.as_str());
        Update::Save(Box::new(run), result)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_names_follow_the_reference() {
        let workflow = Flavour::Workflow { id: "w".into(), name: None };
        assert_eq!(workflow.name("run_branched"), "workflow_branched");
        assert_eq!(workflow.name("replay_started"), "workflow_replay_started");
        assert_eq!(workflow.name("run_cancelled"), "workflow_cancelled");
        assert_eq!(Flavour::Agent.name("replay_completed"), "replay_completed");
        let payload = workflow.payload(json!({"sourceRunId": "s"}));
        let keys: Vec<&String> = payload.as_object().map(|m| m.keys().collect()).unwrap_or_default();
        assert_eq!(keys, ["workflowId", "sourceRunId"]);
    }

    #[test]
    fn set_status_stamps_like_the_reference() {
        let mut run = Run::new("r", "2025-01-01T00:00:00.000Z");
        set_status(&mut run, RunStatus::Running, "t1");
        set_status(&mut run, RunStatus::Running, "t2");
        assert_eq!(run.timestamps.started_at.as_deref(), Some("t1"), "startedAt is set once");
        set_status(&mut run, RunStatus::Failed, "t3");
        assert_eq!(run.timestamps.failed_at.as_deref(), Some("t3"));
        assert_eq!(run.timestamps.updated_at.as_deref(), Some("t3"));
    }
}
