//! Runtimes: the built-in `store` runtime against the recorded corpus and the reference's
//! semantics (with salvage's deliberate differences, each named in a test), the `command`
//! runtime with real programs, the `http` runtime against a real local HTTP server, and
//! `salvage.yaml` (routing, parsing, `salvage init`).

mod conformance_support;

use std::sync::Arc;

use serde_json::{Map, Value, json};

use conformance_support::{Check, compare_json, corpus_dir, read_json, recorded_runs, store_dirs};
use salvage::execute::{ActionRequest, ActionResult, Runtime, StoreRuntime};
use salvage::model::json_text::JsonText;
use salvage::model::{Run, RunStatus};
use salvage::playbook::Action;
use salvage::store::{Expected, MemoryStore, RunStore};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn request(action: Action, plan_action: &str, run_id: &str, payload: Value) -> ActionRequest {
    let payload = match payload {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    ActionRequest {
        execution_id: "exec-1".into(),
        plan_id: "plan-1".into(),
        step_id: "step-1".into(),
        attempt: 1,
        idempotency_key: "plan-1:step-1:1".into(),
        action,
        plan_action: plan_action.into(),
        run_id: run_id.into(),
        payload,
        incident_type: "tool_failure".into(),
        new_run_id: None,
        approval: None,
        expect: None,
    }
}

async fn store_with(runs: &[Run]) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    store.save_all(runs, Expected::Absent).await.unwrap();
    store
}

async fn get(store: &dyn RunStore, id: &str) -> Run {
    store.get(id).await.unwrap().unwrap_or_else(|| panic!("run {id} is not in the store")).run
}

fn message(result: &ActionResult) -> String {
    result.detail["message"].as_str().unwrap_or_default().to_owned()
}

/// A failed agent run with three checkpoints (the last one post-failure), like spec §1.12 A.
fn failed_agent_run(id: &str) -> Run {
    let snapshot = |steps: Value, status: &str| {
        json!({
            "state": {"k": 1}, "messages": [{"role": "user", "content": "hi"}], "steps": steps,
            "toolCalls": [], "toolResults": [],
            "metrics": {"tokenUsage": {"prompt": 3, "completion": 4, "total": 7}, "cost": 0.5},
            "pendingApproval": null, "pendingPause": null, "output": null, "status": status
        })
    };
    let model_step = json!({"id": format!("{id}:step:1"), "type": "model", "status": "completed"});
    let tool_step = json!({"id": format!("{id}:step:2"), "type": "tool", "status": "failed"});
    Run::from_value(json!({
        "id": id,
        "input": "Send the deploy status update to ops.",
        "state": {"k": 2},
        "steps": [model_step.clone(), tool_step.clone()],
        "checkpoints": [
            {"id": format!("{id}:checkpoint:1"), "label": "run_started", "status": "running",
             "snapshot": snapshot(json!([]), "running")},
            {"id": format!("{id}:checkpoint:2"), "label": "model_response", "status": "running",
             "snapshot": snapshot(json!([model_step.clone()]), "running")},
            {"id": format!("{id}:checkpoint:3"), "label": "run_failed", "status": "failed",
             "snapshot": snapshot(json!([model_step, tool_step]), "failed")}
        ],
        "errors": [{"name": "ToolExecutionError", "message": "boom"}],
        "events": [{"id": format!("{id}:1"), "type": "run_started"}, {"id": format!("{id}:2"), "type": "run_failed"}],
        "status": "failed",
        "output": "partial output",
        "metadata": {
            "description": "Ops agent",
            "queue": "jobs",
            "lineage": {"rootRunId": "root-1", "parentRunId": "root-1", "childRunIds": ["c"],
                        "branchOriginRunId": "older", "branchCheckpointId": "older:checkpoint:1"}
        }
    }))
    .unwrap()
}

fn event_types(run: &Run) -> Vec<String> {
    run.events.iter().map(|e| e.event_type.as_ref().map(|t| t.to_string()).unwrap_or_default()).collect()
}

fn checkpoint_labels(run: &Run) -> Vec<String> {
    run.checkpoints.iter().map(|c| c.label.as_ref().map(|l| l.to_string()).unwrap_or_default()).collect()
}

fn is_uuid_v4(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok_and(|id| id.get_version_num() == 4) && text.len() == 36
}

fn generated_suffix_ok(id: &str, source: &str, scheme: &str) -> bool {
    id.strip_prefix(source)
        .and_then(|rest| rest.strip_prefix(scheme))
        .is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
}

// ---------------------------------------------------------------------------------------------
// The store runtime against the recorded corpus
// ---------------------------------------------------------------------------------------------

/// The digest the corpus records for a run (`runner.*.storeAfter.newRuns[]`).
fn digest(run: &Run) -> Value {
    let metadata = &run.metadata;
    json!({
        "id": run.id,
        "status": run.status.as_str(),
        "input": run.input,
        "output": run.output,
        "lineage": run.lineage().reference_value(),
        "workflowId": metadata.get("workflowId").cloned().unwrap_or(Value::Null),
        "recovery": metadata.get("recovery").cloned().unwrap_or(Value::Null),
        "replay": metadata.get("replay").cloned().unwrap_or(Value::Null),
        "pendingPause": run.pending_pause.as_ref().map_or(Value::Null, |p| p.to_value()),
        "pendingApproval": run.pending_approval.as_ref().map_or(Value::Null, |p| json!({
            "toolName": p.tool_name, "reason": p.reason,
        })),
        "errors": run.errors.iter().map(|e| e.to_value()).collect::<Vec<_>>(),
        "steps": run.steps.iter().map(|s| json!({
            "type": s.step_type.as_ref().map(|t| t.to_string()),
            "status": s.status.as_ref().map(|t| t.to_string()),
            "key": s.key,
        })).collect::<Vec<_>>(),
        "eventTypes": event_types(run),
        "checkpointLabels": checkpoint_labels(run),
    })
}

/// For every `runner.default` / `runner.approved` entry whose executed action is
/// `partial_replay` or `branch_from_failure_checkpoint`, the store runtime, given the plan's
/// step, creates the run the reference created.
///
/// Partial replays are compared whole (the generated id is pattern-checked, `replayedAt` is a
/// timestamp). Branches were resumed live by the reference's agent right after they were
/// created (`autoResumeBranch`), so the recorded run is the branch *plus* a live model turn:
/// the branch as created is compared with the recorded one's prefix — first event and first
/// checkpoint `run_branched`, steps a prefix of the recorded steps — and its own fields
/// (lineage, recovery, input, workflow id, no replay, no errors, no pending approval); its
/// pending pause, which the resume cleared, is checked against the reference's formula.
#[tokio::test]
async fn store_runtime_creates_the_runs_the_reference_runner_created() {
    let Some(corpus) = corpus_dir() else { return };
    let runtime = StoreRuntime::new();
    let mut compared = (0, 0);
    let mut problems = Vec::new();
    for store_dir in store_dirs(&corpus) {
        let runs = recorded_runs(&store_dir);
        let mut expected_files: Vec<_> = std::fs::read_dir(store_dir.join("expected"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().is_some_and(|n| n != "_store.json"))
            .collect();
        expected_files.sort();
        for file in expected_files {
            let expected = read_json(&file);
            for kind in ["default", "approved"] {
                let entry = &expected["runner"][kind];
                let executed = entry["executedAction"].as_str().unwrap_or_default();
                let action = match executed {
                    "partial_replay" => Action::PartialReplay,
                    "branch_from_failure_checkpoint" => Action::BranchFromCheckpoint,
                    _ => continue,
                };
                let label =
                    format!("{} {} runner.{kind}", store_dir.file_name().unwrap().to_string_lossy(), file.display());
                let plan = &entry["plan"];
                let source_id = plan["runId"].as_str().unwrap();
                let step = plan["steps"].as_array().unwrap().iter().find(|s| s["action"] == executed).unwrap();
                let mut req = request(action, executed, source_id, step["payload"].clone());
                req.incident_type = plan["incidentType"].as_str().unwrap_or_default().to_owned();
                let store = store_with(&runs).await;
                let result = runtime.perform(&req, store.as_ref()).await.unwrap();
                assert_eq!(result.outcome, "ok", "{label}: {:?}", result.detail);
                let created_id = result.created_run_id.clone().unwrap();
                let new_runs = entry["storeAfter"]["newRuns"].as_array().unwrap();
                assert_eq!(new_runs.len(), 1, "{label}");
                let recorded = &new_runs[0];
                let created = get(store.as_ref(), &created_id).await;
                assert_eq!(store.list(&Default::default()).await.unwrap().items.len(), runs.len() + 1, "{label}");
                let actual = digest(&created);
                let differences = if action == Action::PartialReplay {
                    compared.0 += 1;
                    assert!(
                        generated_suffix_ok(&created_id, source_id, ":partial-replay:"),
                        "{label}: id {created_id}"
                    );
                    let volatile = |path: &str| match path {
                        "id" => Some(Check::Skip),
                        "replay.replayedAt" => Some(Check::IsoTimestamp),
                        _ => None,
                    };
                    compare_json(recorded, &actual, &volatile)
                } else {
                    compared.1 += 1;
                    assert!(is_uuid_v4(&created_id), "{label}: id {created_id}");
                    assert!(is_uuid_v4(recorded["id"].as_str().unwrap()), "{label}: the recorded branch id is a UUID");
                    // The branch's own fields, as created.
                    let mut differences = Vec::new();
                    for key in ["input", "lineage", "workflowId", "recovery", "replay", "errors", "pendingApproval"] {
                        let volatile = |_: &str| None;
                        for mut d in compare_json(&recorded[key], &actual[key], &volatile) {
                            d.path = format!("{key}{}", d.path.trim_start_matches('$'));
                            differences.push(d);
                        }
                    }
                    assert_eq!(actual["status"], "paused", "{label}");
                    assert_eq!(actual["eventTypes"], json!(["run_branched"]), "{label}");
                    assert_eq!(actual["checkpointLabels"], json!(["run_branched"]), "{label}");
                    assert_eq!(recorded["eventTypes"][0], "run_branched", "{label}");
                    assert_eq!(recorded["checkpointLabels"][0], "run_branched", "{label}");
                    let ours = actual["steps"].as_array().unwrap();
                    let theirs = recorded["steps"].as_array().unwrap();
                    assert!(
                        ours.len() <= theirs.len() && ours[..] == theirs[..ours.len()],
                        "{label}: steps {ours:?} vs {theirs:?}"
                    );
                    let source = runs.iter().find(|r| r.id == source_id).unwrap();
                    let checkpoint_id = step["payload"]["checkpointId"].as_str().unwrap();
                    let checkpoint_label = source.checkpoint(checkpoint_id).unwrap().label.clone().unwrap();
                    assert_eq!(
                        actual["pendingPause"],
                        json!({
                            "reason": format!("Branched from checkpoint \"{checkpoint_label}\"."),
                            "stage": "branch",
                            "sourceRunId": source_id,
                            "sourceCheckpointId": checkpoint_id,
                        }),
                        "{label}"
                    );
                    differences
                };
                if !differences.is_empty() {
                    problems.push(format!(
                        "{label}:\n  {}",
                        differences.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n  ")
                    ));
                }
                // The source run is never touched.
                let source_after = get(store.as_ref(), source_id).await;
                assert_eq!(&source_after, runs.iter().find(|r| r.id == source_id).unwrap(), "{label}: source changed");
            }
        }
    }
    assert!(problems.is_empty(), "{} entries differ:\n{}", problems.len(), problems.join("\n"));
    assert!(compared.0 >= 50 && compared.1 >= 5, "compared {compared:?} (partial replays, branches)");
    eprintln!("compared {} partial replays and {} branches with the corpus", compared.0, compared.1);
}

// ---------------------------------------------------------------------------------------------
// The store runtime: reference semantics and deliberate differences
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn branch_is_built_from_the_checkpoint_snapshot_and_saved_under_the_reserved_id() {
    let source = failed_agent_run("src");
    let store = store_with(std::slice::from_ref(&source)).await;
    let mut req = request(
        Action::BranchFromCheckpoint,
        "branch_from_failure_checkpoint",
        "src",
        json!({"checkpointId": "src:checkpoint:2"}),
    );
    req.new_run_id = Some("branch-1".into());
    req.approval = Some(json!({"actor": "alice", "decision": "approved"}));
    let result = StoreRuntime::new().perform(&req, store.as_ref()).await.unwrap();
    assert_eq!((result.outcome.as_str(), result.created_run_id.as_deref()), ("ok", Some("branch-1")));
    let branch = get(store.as_ref(), "branch-1").await;
    let value = branch.to_value();
    // Content from checkpoint 2's snapshot, not from the run's current state.
    assert_eq!(value["state"], json!({"k": 1}));
    assert_eq!(value["steps"].as_array().unwrap().len(), 1);
    assert_eq!(value["metrics"]["tokenUsage"]["total"], 7);
    assert_eq!((value["output"].clone(), value["errors"].clone()), (Value::Null, json!([])));
    assert_eq!(value["input"], "Send the deploy status update to ops.");
    assert_eq!(branch.status, RunStatus::Paused);
    assert_eq!(value["timestamps"]["startedAt"], Value::Null, "a branch has not started");
    assert_eq!(
        value["metadata"]["lineage"],
        json!({"rootRunId": "root-1", "parentRunId": "root-1", "childRunIds": [],
               "branchOriginRunId": "src", "branchCheckpointId": "src:checkpoint:2"})
    );
    assert_eq!(value["pendingPause"]["reason"], "Branched from checkpoint \"model_response\".");
    assert_eq!(value["metadata"]["description"], "Ops agent");
    assert_eq!(value["metadata"].get("queue"), None, "a branch carries none of the source's metadata");
    assert_eq!(
        value["metadata"]["recovery"],
        json!({"sourceRunId": "src", "action": "branch_from_failure_checkpoint", "incidentType": "tool_failure"})
    );
    assert_eq!(value["metadata"]["salvage"]["idempotencyKey"], "plan-1:step-1:1");
    assert_eq!(value["metadata"]["salvage"]["approval"]["actor"], "alice");
    // One event and one checkpoint, in the agent's shapes.
    assert_eq!(
        value["events"],
        json!([{
            "id": "branch-1:1", "type": "run_branched", "timestamp": value["events"][0]["timestamp"],
            "payload": {"sourceRunId": "src", "sourceCheckpointId": "src:checkpoint:2"}
        }])
    );
    let checkpoint = &value["checkpoints"][0];
    assert_eq!(checkpoint["id"], "branch-1:checkpoint:1");
    assert_eq!(checkpoint["status"], "paused");
    assert_eq!(checkpoint["snapshot"]["pendingPause"]["stage"], "branch");
    assert_eq!((checkpoint["messageCount"].clone(), checkpoint["toolCallCount"].clone()), (json!(1), json!(0)));
    // The source is untouched.
    assert_eq!(get(store.as_ref(), "src").await, source);
}

#[tokio::test]
async fn a_retried_branch_returns_the_run_it_already_created() {
    let store = store_with(&[failed_agent_run("src")]).await;
    let mut req = request(Action::BranchFromCheckpoint, "branch_from_failure_checkpoint", "src", json!({}));
    req.new_run_id = Some("branch-1".into());
    let runtime = StoreRuntime::new();
    let first = runtime.perform(&req, store.as_ref()).await.unwrap();
    let revision = store.get("branch-1").await.unwrap().unwrap().revision;
    let second = runtime.perform(&req, store.as_ref()).await.unwrap();
    assert_eq!(second.outcome, "ok");
    assert_eq!(second.created_run_id, first.created_run_id);
    assert_eq!(second.detail["alreadyCreated"], true);
    assert_eq!(store.get("branch-1").await.unwrap().unwrap().revision, revision, "not written again");
    assert_eq!(store.list(&Default::default()).await.unwrap().items.len(), 2);
    // Without a checkpoint id the last checkpoint is used.
    assert_eq!(
        get(store.as_ref(), "branch-1").await.lineage().branch_checkpoint_id.as_deref(),
        Some("src:checkpoint:3")
    );
    // A reserved id that holds an unrelated run is not mistaken for a retry.
    req.new_run_id = Some("src".into());
    let clash = runtime.perform(&req, store.as_ref()).await.unwrap();
    assert_eq!(clash.outcome, "failed");
    assert!(message(&clash).contains("already exists"), "{clash:?}");
}

#[tokio::test]
async fn missing_checkpoints_fail_with_the_reference_messages() {
    let mut bare = failed_agent_run("bare");
    bare.checkpoints.clear();
    let store = store_with(&[failed_agent_run("src"), bare]).await;
    let runtime = StoreRuntime::new();
    let req = request(
        Action::BranchFromCheckpoint,
        "branch_from_failure_checkpoint",
        "src",
        json!({"checkpointId": "src:checkpoint:9"}),
    );
    let result = runtime.perform(&req, store.as_ref()).await.unwrap();
    assert_eq!(
        (result.outcome.as_str(), message(&result).as_str()),
        ("failed", "Checkpoint \"src:checkpoint:9\" not found on run \"src\".")
    );
    let req = request(Action::PartialReplay, "partial_replay", "bare", json!({}));
    let result = runtime.perform(&req, store.as_ref()).await.unwrap();
    assert_eq!(
        (result.outcome.as_str(), message(&result).as_str()),
        ("failed", "Run \"bare\" has no checkpoints to branch from.")
    );
    let req = request(Action::FrozenReplay, "frozen_replay", "nope", json!({}));
    let result = runtime.perform(&req, store.as_ref()).await.unwrap();
    assert_eq!((result.outcome.as_str(), message(&result).as_str()), ("failed", "Run \"nope\" not found."));
    assert_eq!(store.list(&Default::default()).await.unwrap().items.len(), 2, "nothing was created");
}

/// Deliberate difference (spec §8 #25): the reference silently branches from the run's
/// *current* state when the checkpoint has no snapshot.
#[tokio::test]
async fn difference_checkpoint_without_snapshot_is_refused() {
    let mut source = failed_agent_run("src");
    source.checkpoints[1].snapshot = None;
    let store = store_with(&[source]).await;
    for action in [Action::BranchFromCheckpoint, Action::PartialReplay] {
        let req = request(action, action.name(), "src", json!({"checkpointId": "src:checkpoint:2"}));
        let result = StoreRuntime::new().perform(&req, store.as_ref()).await.unwrap();
        assert_eq!(result.outcome, "failed", "{action}");
        assert!(message(&result).contains("has no snapshot"), "{}", message(&result));
    }
    assert_eq!(store.list(&Default::default()).await.unwrap().items.len(), 1);
}

#[tokio::test]
async fn partial_replay_of_a_workflow_run_uses_the_workflow_shapes() {
    let mut source = failed_agent_run("wf");
    source.metadata.insert("workflowId", json!("nightly-sync"));
    source.metadata.insert("workflowName", json!("Nightly sync"));
    if let Some(text) = source.checkpoints[1].snapshot.as_mut()
        && let Value::Object(mut snapshot) = text.to_value()
    {
        snapshot.insert("state".into(), json!({"workflow": {"results": {"extract": 1, "load": 2}}}));
        *text = JsonText::from_value(&Value::Object(snapshot));
    }
    let store = store_with(&[source]).await;
    let mut req = request(Action::PartialReplay, "partial_replay", "wf", json!({"checkpointId": "wf:checkpoint:2"}));
    req.new_run_id = Some("wf:partial-replay:reserved".into());
    let result = StoreRuntime::new().perform(&req, store.as_ref()).await.unwrap();
    assert_eq!(result.outcome, "ok", "{result:?}");
    let replay = get(store.as_ref(), "wf:partial-replay:reserved").await;
    let value = replay.to_value();
    assert_eq!(event_types(&replay), ["workflow_replay_started", "workflow_replay_completed"]);
    assert_eq!(
        value["events"][0]["payload"],
        json!({
            "workflowId": "nightly-sync", "sourceRunId": "wf", "sourceCheckpointId": "wf:checkpoint:2", "mode": "partial_frozen_trace"
        })
    );
    assert_eq!(value["events"][1]["payload"]["status"], "paused");
    let checkpoint = &value["checkpoints"][0];
    assert_eq!(
        (checkpoint["workflowId"].clone(), checkpoint["completedSteps"].clone()),
        (json!("nightly-sync"), json!(["extract", "load"]))
    );
    assert_eq!(checkpoint["status"], "running");
    assert_eq!(value["checkpoints"][1]["status"], "paused");
    assert_eq!(
        value["pendingPause"],
        json!({
            "reason": "Frozen workflow replay prepared from checkpoint \"wf:checkpoint:2\".",
            "stage": "workflow_replay", "sourceRunId": "wf", "sourceCheckpointId": "wf:checkpoint:2"
        })
    );
    assert_eq!(
        (value["metadata"]["workflowId"].clone(), value["metadata"]["workflowName"].clone()),
        (json!("nightly-sync"), json!("Nightly sync"))
    );
    assert_eq!(value["metadata"]["recovery"], json!({"sourceRunId": "wf", "action": "partial_replay"}));
    assert_eq!(value["metadata"]["lineage"]["parentRunId"], Value::Null, "replays are new roots");
    assert_eq!(value["metadata"]["lineage"]["rootRunId"], "root-1");
    assert_eq!(value["timestamps"]["startedAt"], value["timestamps"]["createdAt"]);
}

/// Deliberate difference: the reference runner passes `checkpointId: null` to `replayRun`
/// when the plan step has none, which silently makes a full frozen replay.
#[tokio::test]
async fn difference_partial_replay_without_checkpoint_uses_the_last_checkpoint() {
    let store = store_with(&[failed_agent_run("src")]).await;
    let req = request(Action::PartialReplay, "partial_replay", "src", json!({}));
    let result = StoreRuntime::new().perform(&req, store.as_ref()).await.unwrap();
    let replay = get(store.as_ref(), result.created_run_id.as_deref().unwrap()).await;
    assert!(generated_suffix_ok(&replay.id, "src", ":partial-replay:"), "{}", replay.id);
    assert_eq!(replay.metadata.get("replay").unwrap()["mode"], "partial_frozen_trace");
    assert_eq!(replay.lineage().branch_checkpoint_id.as_deref(), Some("src:checkpoint:3"));
    assert_eq!(replay.status, RunStatus::Paused);
}

/// Deliberate difference (spec §8 #16): a frozen replay points at its source through
/// `branchOriginRunId` (no checkpoint: it copies the whole run); the reference keeps the
/// source's own branch fields, so the copy had no lineage pointer to its source.
#[tokio::test]
async fn difference_frozen_replay_points_at_its_source() {
    let source = failed_agent_run("src");
    let store = store_with(std::slice::from_ref(&source)).await;
    let req = request(Action::FrozenReplay, "frozen_replay", "src", json!({}));
    let result = StoreRuntime::new().perform(&req, store.as_ref()).await.unwrap();
    let id = result.created_run_id.unwrap();
    assert!(generated_suffix_ok(&id, "src", ":replay:"), "{id}");
    let replay = get(store.as_ref(), &id).await;
    let value = replay.to_value();
    assert_eq!(
        value["metadata"]["lineage"],
        json!({"rootRunId": "root-1", "parentRunId": null, "childRunIds": [],
               "branchOriginRunId": "src", "branchCheckpointId": null})
    );
    // Otherwise the reference's frozen copy: the source's content, metadata and status.
    assert_eq!(replay.status, RunStatus::Failed);
    assert_eq!(value["output"], "partial output");
    assert_eq!(value["state"], json!({"k": 2}));
    assert_eq!(value["errors"].as_array().unwrap().len(), 1);
    assert_eq!(value["metadata"]["queue"], "jobs");
    assert_eq!(value["metadata"]["replay"]["mode"], "frozen_trace");
    assert_eq!(value["metadata"]["replay"]["sourceCheckpointId"], Value::Null);
    assert_eq!(value["metadata"]["recovery"], json!({"sourceRunId": "src", "action": "frozen_replay"}));
    assert_eq!(event_types(&replay), ["replay_started", "replay_completed"]);
    assert_eq!(value["events"][1]["payload"]["status"], "failed");
    assert_eq!(value["checkpoints"][1]["status"], "failed");
    assert_eq!(value["pendingPause"], Value::Null);
    assert!(value["timestamps"]["failedAt"].is_string());
    assert_eq!(value["timestamps"]["startedAt"], value["timestamps"]["createdAt"]);
}

#[tokio::test]
async fn two_replays_in_the_same_millisecond_get_distinct_ids() {
    let store = store_with(&[failed_agent_run("src")]).await;
    let runtime = StoreRuntime::new();
    let req = request(Action::FrozenReplay, "frozen_replay", "src", json!({}));
    let (a, b) = tokio::join!(runtime.perform(&req, store.as_ref()), runtime.perform(&req, store.as_ref()));
    let (a, b) = (a.unwrap().created_run_id.unwrap(), b.unwrap().created_run_id.unwrap());
    assert_ne!(a, b);
    assert_eq!(store.list(&Default::default()).await.unwrap().items.len(), 3);
}

#[tokio::test]
async fn cancel_clears_pending_state_and_is_idempotent() {
    let mut run = failed_agent_run("r");
    run.status = RunStatus::Paused;
    run.pending_pause = Some(salvage::model::PendingPause::from_value(json!({"reason": "x", "stage": "manual"})));
    run.pending_approval = Some(salvage::model::PendingApproval::from_value(json!({"toolName": "t"})));
    let store = store_with(&[run]).await;
    let runtime = StoreRuntime::new();
    let req = request(Action::CancelRun, "cancel_run", "r", json!({"reason": "operator gave up"}));
    let result = runtime.perform(&req, store.as_ref()).await.unwrap();
    assert_eq!(result.outcome, "ok", "{result:?}");
    let cancelled = get(store.as_ref(), "r").await;
    let value = cancelled.to_value();
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    assert_eq!((value["pendingPause"].clone(), value["pendingApproval"].clone()), (Value::Null, Value::Null));
    assert!(value["timestamps"]["cancelledAt"].is_string());
    assert_eq!(event_types(&cancelled).last().map(String::as_str), Some("run_cancelled"));
    assert_eq!(checkpoint_labels(&cancelled).last().map(String::as_str), Some("run_cancelled"));
    assert_eq!(value["events"][2]["payload"]["reason"], "operator gave up");
    assert_eq!(value["events"][2]["id"], "r:3");
    // A retry of the same step (same idempotency key) finds its own cancellation.
    let revision = store.get("r").await.unwrap().unwrap().revision;
    let again = runtime.perform(&req, store.as_ref()).await.unwrap();
    assert_eq!((again.outcome.as_str(), again.detail["alreadyCancelled"].clone()), ("ok", json!(true)));
    assert_eq!(store.get("r").await.unwrap().unwrap().revision, revision);
    // Another step cancelling it is told it is terminal.
    let mut other = req.clone();
    other.idempotency_key = "plan-2:cancel:1".into();
    let refused = runtime.perform(&other, store.as_ref()).await.unwrap();
    assert_eq!(refused.outcome, "failed");
    assert!(message(&refused).contains("already cancelled"), "{refused:?}");
}

/// Deliberate difference (spec §4.2): cancelling a terminal run is a `failed` outcome, not a
/// silent no-op reported as done.
#[tokio::test]
async fn difference_cancel_of_a_terminal_run_fails() {
    let store = store_with(&[failed_agent_run("r")]).await;
    let result = StoreRuntime::new()
        .perform(&request(Action::CancelRun, "cancel_run", "r", json!({})), store.as_ref())
        .await
        .unwrap();
    assert_eq!(result.outcome, "failed");
    assert!(message(&result).contains("is already failed"), "{result:?}");
    assert_eq!(get(store.as_ref(), "r").await.status, RunStatus::Failed);
}

/// Deliberate difference: the reference's `WorkflowRunner.cancelRun` keeps `pendingApproval`
/// (delegated children routed to it can carry one); salvage clears it for every run.
#[tokio::test]
async fn difference_cancel_of_a_workflow_run_clears_pending_approval() {
    let mut run = failed_agent_run("w");
    run.status = RunStatus::WaitingForApproval;
    run.metadata.insert("workflowId", json!("vendor-payout"));
    run.pending_approval = Some(salvage::model::PendingApproval::from_value(json!({"toolName": "send_sms"})));
    let store = store_with(&[run]).await;
    let result = StoreRuntime::new()
        .perform(&request(Action::CancelRun, "cancel_run", "w", json!({})), store.as_ref())
        .await
        .unwrap();
    assert_eq!(result.outcome, "ok");
    let cancelled = get(store.as_ref(), "w").await;
    assert!(cancelled.pending_approval.is_none());
    assert_eq!(event_types(&cancelled).last().map(String::as_str), Some("workflow_cancelled"));
    assert_eq!(cancelled.events.last().unwrap().payload.as_ref().unwrap()["workflowId"], "vendor-payout");
}

/// Compare-and-set: a writer that changes the run between the runtime's read and its save
/// makes the runtime read again and apply its change on top (nothing is lost).
#[tokio::test]
async fn cancel_reapplies_on_top_of_a_concurrent_change() {
    #[derive(Debug)]
    struct InterferingStore {
        inner: MemoryStore,
        interfered: std::sync::atomic::AtomicBool,
    }
    #[async_trait::async_trait]
    impl RunStore for InterferingStore {
        fn spec(&self) -> String {
            "test:".into()
        }
        async fn get(&self, id: &str) -> Result<Option<salvage::store::StoredRun>, salvage::store::StoreError> {
            let got = self.inner.get(id).await;
            if !self.interfered.swap(true, std::sync::atomic::Ordering::SeqCst) {
                // Another writer saves the run right after our read.
                let mut run = self.inner.get(id).await?.unwrap().run;
                run.metadata.insert("touchedBy", json!("someone else"));
                self.inner.save(&run, Expected::Any).await?;
            }
            got
        }
        async fn get_many(
            &self,
            ids: &[String],
        ) -> Result<salvage::store::Partial<salvage::store::StoredRun>, salvage::store::StoreError> {
            self.inner.get_many(ids).await
        }
        async fn save(
            &self,
            run: &Run,
            expected: Expected,
        ) -> Result<salvage::store::Revision, salvage::store::StoreError> {
            self.inner.save(run, expected).await
        }
        async fn save_all(
            &self,
            runs: &[Run],
            expected: Expected,
        ) -> Result<Vec<salvage::store::Revision>, salvage::store::StoreError> {
            self.inner.save_all(runs, expected).await
        }
        async fn list(
            &self,
            query: &salvage::store::RunQuery,
        ) -> Result<salvage::store::Partial<salvage::store::RunIndexEntry>, salvage::store::StoreError> {
            self.inner.list(query).await
        }
    }
    let mut run = failed_agent_run("r");
    run.status = RunStatus::Running;
    let store = InterferingStore { inner: MemoryStore::new(), interfered: false.into() };
    store.inner.save(&run, Expected::Absent).await.unwrap();
    let result =
        StoreRuntime::new().perform(&request(Action::CancelRun, "cancel_run", "r", json!({})), &store).await.unwrap();
    assert_eq!(result.outcome, "ok");
    let after = get(&store.inner, "r").await;
    assert_eq!(after.status, RunStatus::Cancelled);
    assert_eq!(after.metadata.get("touchedBy"), Some(&json!("someone else")), "the other writer's change survived");
    assert_eq!(store.inner.get("r").await.unwrap().unwrap().revision.0, 3, "initial save, interference, cancel");
}

#[tokio::test]
async fn resume_requests_are_recorded_once_and_keep_the_recovery_keys() {
    let mut branch = failed_agent_run("b");
    branch.status = RunStatus::Paused;
    branch.pending_pause =
        Some(salvage::model::PendingPause::from_value(json!({"reason": "Branched", "stage": "branch"})));
    branch.metadata.insert(
        "recovery",
        json!({"sourceRunId": "src", "action": "branch_from_failure_checkpoint", "incidentType": "tool_failure"}),
    );
    let store = store_with(&[branch]).await;
    let runtime = StoreRuntime::new();
    let mut req = request(Action::ResumeRun, "resume_run", "b", json!({}));
    req.approval = Some(json!({"actor": "alice", "decision": "approved", "reason": "checked the ledger"}));
    let result = runtime.perform(&req, store.as_ref()).await.unwrap();
    assert_eq!(result.outcome, "ok", "{result:?}");
    let again = runtime.perform(&req, store.as_ref()).await.unwrap();
    assert_eq!((again.outcome.as_str(), again.detail["alreadyRecorded"].clone()), ("ok", json!(true)));
    let run = get(store.as_ref(), "b").await;
    let recovery = run.metadata.get("recovery").unwrap();
    assert_eq!(recovery["sourceRunId"], "src");
    assert_eq!(recovery["incidentType"], "tool_failure");
    let requests = recovery["resumeRequests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "a retry adds no second request");
    assert_eq!(requests[0]["idempotencyKey"], "plan-1:step-1:1");
    assert_eq!(requests[0]["decision"]["actor"], "alice");
    assert_eq!(requests[0]["state"], "pending");
    assert_eq!(requests[0]["pauseStage"], "branch");
    assert_eq!(run.status, RunStatus::Paused, "the store runtime does not run the agent");
    // A second step adds a second request.
    req.idempotency_key = "plan-1:step-1:2".into();
    runtime.perform(&req, store.as_ref()).await.unwrap();
    let run = get(store.as_ref(), "b").await;
    assert_eq!(run.metadata.get("recovery").unwrap()["resumeRequests"].as_array().unwrap().len(), 2);
}

/// Deliberate difference: the reference silently returns the run unchanged (and the runner
/// reports the action as executed) when there is nothing to resume.
#[tokio::test]
async fn difference_resumes_that_the_reference_ignores_are_refused() {
    let failed_run = failed_agent_run("failed");
    let mut stale = failed_agent_run("stale");
    stale.pending_approval = Some(salvage::model::PendingApproval::from_value(json!({"toolName": "t"})));
    let mut manual = failed_agent_run("manual");
    manual.status = RunStatus::Paused;
    manual.pending_pause = Some(salvage::model::PendingPause::from_value(json!({"reason": "x", "stage": "manual"})));
    let mut waiting = failed_agent_run("waiting");
    waiting.status = RunStatus::WaitingForApproval;
    waiting.pending_approval = Some(salvage::model::PendingApproval::from_value(json!({"toolName": "t"})));
    let store = store_with(&[failed_run, stale, manual, waiting]).await;
    let runtime = StoreRuntime::new();
    let decision = json!({"actor": "alice", "decision": "approved"});
    let cases = [
        (Action::ResumeRun, "failed", None, "only a paused or waiting_for_approval run can be resumed"),
        (Action::ResolveApproval, "manual", Some(decision.clone()), "has no pending approval"),
        (Action::ResolveApproval, "stale", Some(decision.clone()), "is stale"),
        (Action::ResolveApproval, "waiting", None, "needs a recorded operator decision"),
        (Action::ResumeReplay, "manual", None, "not paused at a replay stage"),
    ];
    for (action, run_id, approval, why) in cases {
        let before = store.get(run_id).await.unwrap().unwrap();
        let mut req = request(action, action.name(), run_id, json!({}));
        req.approval = approval;
        let result = runtime.perform(&req, store.as_ref()).await.unwrap();
        assert_eq!(result.outcome, "failed", "{action} on {run_id}");
        assert!(message(&result).contains(why), "{action} on {run_id}: {}", message(&result));
        assert_eq!(store.get(run_id).await.unwrap().unwrap(), before, "{action} on {run_id} wrote nothing");
    }
    // The accepted cases.
    let mut req = request(Action::ResolveApproval, "resolve_approval", "waiting", json!({}));
    req.approval = Some(decision);
    assert_eq!(runtime.perform(&req, store.as_ref()).await.unwrap().outcome, "ok");
    assert_eq!(
        runtime
            .perform(&request(Action::ResumeRun, "resume_run", "manual", json!({})), store.as_ref())
            .await
            .unwrap()
            .outcome,
        "ok"
    );
}

#[tokio::test]
async fn resume_replay_is_recorded_on_a_prepared_replay() {
    let store = store_with(&[failed_agent_run("src")]).await;
    let runtime = StoreRuntime::new();
    let created = runtime
        .perform(&request(Action::PartialReplay, "partial_replay", "src", json!({})), store.as_ref())
        .await
        .unwrap();
    let replay_id = created.created_run_id.unwrap();
    let mut req = request(Action::ResumeReplay, "resume_replay", &replay_id, json!({}));
    req.step_id = "resume".into();
    req.idempotency_key = "plan-1:resume:1".into();
    let result = runtime.perform(&req, store.as_ref()).await.unwrap();
    assert_eq!(result.outcome, "ok", "{result:?}");
    let replay = get(store.as_ref(), &replay_id).await;
    let recovery = replay.metadata.get("recovery").unwrap();
    assert_eq!(recovery["action"], "partial_replay", "the replay's own recovery record is kept");
    assert_eq!(recovery["resumeRequests"][0]["action"], "resume_replay");
    assert_eq!(recovery["resumeRequests"][0]["pauseStage"], "replay");
}

#[tokio::test]
async fn actions_the_store_runtime_does_not_carry_out_are_unsupported() {
    let store = store_with(&[failed_agent_run("r")]).await;
    for action in [Action::Notify, Action::Wait, Action::RequestApproval, Action::InspectReport] {
        let error = StoreRuntime::new().perform(&request(action, action.name(), "r", json!({})), store.as_ref()).await;
        assert!(
            matches!(error, Err(salvage::execute::RuntimeError::Unsupported { action: ref name, .. }) if name == action.name()),
            "{error:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The command runtime, with real programs
// ---------------------------------------------------------------------------------------------

mod command {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use salvage::execute::{CommandAction, CommandRuntime, CommandRuntimeConfig, RuntimeError};

    use super::*;

    fn sh_runtime(action: Action, script: &str, timeout: Duration, env: &[(&str, &str)]) -> CommandRuntime {
        let spec = CommandAction {
            command: vec!["sh".into(), "-c".into(), script.into()],
            timeout: None,
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            working_dir: None,
        };
        CommandRuntime::new("test", CommandRuntimeConfig { timeout, actions: BTreeMap::from([(action, spec)]) })
    }

    #[tokio::test]
    async fn the_program_gets_the_request_on_stdin_and_empty_stdout_is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("request.json");
        let env_out = dir.path().join("env.txt");
        let runtime = sh_runtime(
            Action::ResumeRun,
            "cat > \"$OUT\"; printf '%s %s %s' \"$SALVAGE_RUN_ID\" \"$SALVAGE_ACTION\" \"$SALVAGE_IDEMPOTENCY_KEY\" > \"$ENV_OUT\"",
            Duration::from_secs(10),
            &[("OUT", out.to_str().unwrap()), ("ENV_OUT", env_out.to_str().unwrap())],
        );
        let mut req = request(Action::ResumeRun, "resume_run", "run-7", json!({"toolName": "send"}));
        req.approval = Some(json!({"actor": "alice"}));
        let result = runtime.perform(&req, &MemoryStore::new()).await.unwrap();
        assert_eq!(result.outcome, "ok", "{result:?}");
        let received: ActionRequest = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(received, req);
        assert_eq!(std::fs::read_to_string(&env_out).unwrap(), "run-7 resume_run plan-1:step-1:1");
    }

    #[tokio::test]
    async fn a_json_answer_is_honoured_and_checked() {
        let answer = r#"{"outcome":"ok","createdRunId":"branch-9","detail":{"worker":"w1"}}"#;
        let runtime =
            sh_runtime(Action::BranchFromCheckpoint, &format!("echo '{answer}'"), Duration::from_secs(10), &[]);
        let req = request(Action::BranchFromCheckpoint, "branch_from_failure_checkpoint", "r", json!({}));
        let result = runtime.perform(&req, &MemoryStore::new()).await.unwrap();
        assert_eq!((result.outcome.as_str(), result.created_run_id.as_deref()), ("ok", Some("branch-9")));
        assert_eq!(result.detail, json!({"worker": "w1"}));
        // An outcome the action does not have, or text that is no answer, cannot be trusted.
        for script in [r#"echo '{"outcome":"duplicate"}'"#, "echo done"] {
            let suspicious = sh_runtime(Action::BranchFromCheckpoint, script, Duration::from_secs(10), &[]);
            let error = suspicious.perform(&req, &MemoryStore::new()).await.unwrap_err();
            assert!(matches!(error, RuntimeError::Failed { .. }), "{error:?}");
        }
    }

    #[tokio::test]
    async fn a_non_zero_exit_is_failed_with_the_end_of_stderr() {
        let script = "i=0; while [ $i -lt 2000 ]; do echo \"noise line $i\" >&2; i=$((i+1)); done; echo 'ECONNRESET from billing' >&2; exit 3";
        let runtime = sh_runtime(Action::CancelRun, script, Duration::from_secs(10), &[]);
        let result = runtime
            .perform(&request(Action::CancelRun, "cancel_run", "r", json!({})), &MemoryStore::new())
            .await
            .unwrap();
        assert_eq!(result.outcome, "failed");
        assert_eq!(result.detail["exitCode"], 3);
        let stderr = result.detail["stderr"].as_str().unwrap();
        assert!(stderr.ends_with("ECONNRESET from billing\n"), "{stderr}");
        assert!(
            stderr.len() <= salvage::execute::command_runtime::KEPT_STDERR_BYTES + 64,
            "stderr is bounded: {}",
            stderr.len()
        );
        assert!(stderr.starts_with("[…"), "the cut is marked");
    }

    #[cfg(target_os = "linux")]
    fn is_gone(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // A zombie waiting for its (new) parent to reap it is no longer running.
            Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let script = "sleep 60 & echo $! > \"$PID_FILE\"; sleep 60";
        let runtime = sh_runtime(
            Action::ResumeRun,
            script,
            Duration::from_millis(400),
            &[("PID_FILE", pid_file.to_str().unwrap())],
        );
        let started = Instant::now();
        let result = runtime
            .perform(&request(Action::ResumeRun, "resume_run", "r", json!({})), &MemoryStore::new())
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert_eq!((result.outcome.as_str(), result.detail["timedOut"].clone()), ("failed", json!(true)));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let pid = pid.trim();
        let deadline = Instant::now() + Duration::from_secs(3);
        while !is_gone(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(is_gone(pid), "the background `sleep` ({pid}) survived the timeout");
    }

    #[tokio::test]
    async fn unconfigured_actions_and_missing_programs() {
        let runtime = sh_runtime(Action::ResumeRun, "true", Duration::from_secs(10), &[]);
        let error =
            runtime.perform(&request(Action::CancelRun, "cancel_run", "r", json!({})), &MemoryStore::new()).await;
        assert!(matches!(error, Err(RuntimeError::Unsupported { .. })), "{error:?}");
        let missing = CommandRuntime::new(
            "test",
            CommandRuntimeConfig {
                timeout: Duration::from_secs(5),
                actions: BTreeMap::from([(
                    Action::ResumeRun,
                    CommandAction {
                        command: vec!["/nonexistent/salvage-test-program".into()],
                        timeout: None,
                        env: BTreeMap::new(),
                        working_dir: None,
                    },
                )]),
            },
        );
        let error = missing
            .perform(&request(Action::ResumeRun, "resume_run", "r", json!({})), &MemoryStore::new())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("cannot start `/nonexistent/salvage-test-program`"), "{error}");
    }
}

// ---------------------------------------------------------------------------------------------
// The http runtime, against a real local HTTP server
// ---------------------------------------------------------------------------------------------

mod http {
    use std::collections::{BTreeMap, HashMap, VecDeque};
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use salvage::execute::{HttpAction, HttpRetry, HttpRuntime, HttpRuntimeConfig, RuntimeError};

    use super::*;

    #[derive(Debug, Clone)]
    struct Recorded {
        method: String,
        path: String,
        headers: HashMap<String, String>,
        body: Vec<u8>,
    }

    #[derive(Debug, Clone)]
    struct Reply {
        status: u16,
        body: String,
        delay: Duration,
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply { status, body: body.to_owned(), delay: Duration::ZERO }
    }

    /// A minimal HTTP/1.1 server: records every request and answers from a script (then 200).
    struct TestServer {
        addr: SocketAddr,
        requests: Arc<Mutex<Vec<Recorded>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl TestServer {
        async fn start(script: Vec<Reply>) -> TestServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let script = Arc::new(Mutex::new(VecDeque::from(script)));
            let recorded = requests.clone();
            let task = tokio::spawn(async move {
                loop {
                    let Ok((mut socket, _)) = listener.accept().await else { return };
                    let recorded = recorded.clone();
                    let script = script.clone();
                    tokio::spawn(async move {
                        let Some(request) = read_request(&mut socket).await else { return };
                        recorded.lock().unwrap().push(request);
                        let reply = script.lock().unwrap().pop_front().unwrap_or_else(|| reply(200, ""));
                        tokio::time::sleep(reply.delay).await;
                        let response = format!(
                            "HTTP/1.1 {} Test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                            reply.status,
                            reply.body.len(),
                            reply.body
                        );
                        let _ = socket.write_all(response.as_bytes()).await;
                        let _ = socket.shutdown().await;
                    });
                }
            });
            TestServer { addr, requests, task }
        }

        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        fn requests(&self) -> Vec<Recorded> {
            self.requests.lock().unwrap().clone()
        }
    }

    async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Recorded> {
        let mut data = Vec::new();
        let mut buffer = [0u8; 4096];
        let header_end = loop {
            let read = socket.read(&mut buffer).await.ok()?;
            if read == 0 {
                return None;
            }
            data.extend_from_slice(&buffer[..read]);
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
        };
        let head = String::from_utf8_lossy(&data[..header_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
        let headers: HashMap<String, String> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = data[header_end..].to_vec();
        while body.len() < length {
            let read = socket.read(&mut buffer).await.ok()?;
            if read == 0 {
                break;
            }
            body.extend_from_slice(&buffer[..read]);
        }
        Some(Recorded { method, path, headers, body })
    }

    fn config(base: &str, actions: &[(Action, &str)], timeout: Duration) -> HttpRuntimeConfig {
        HttpRuntimeConfig {
            base_url: Some(base.to_owned()),
            timeout,
            connect_timeout: Duration::from_secs(2),
            headers: BTreeMap::from([("X-Team".to_owned(), "sre".to_owned())]),
            ca_file: None,
            retry: HttpRetry {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(50),
            },
            actions: actions
                .iter()
                .map(|(a, url)| (*a, HttpAction { url: (*url).to_owned(), timeout: None }))
                .collect(),
            ..HttpRuntimeConfig::default()
        }
    }

    /// `action` on run `run_id` (empty payload) through a runtime with that one route.
    async fn perform_once(base: &str, action: Action, path: &str, plan_action: &str, run_id: &str) -> ActionResult {
        let runtime = HttpRuntime::new("ops", config(base, &[(action, path)], Duration::from_secs(5))).unwrap();
        runtime.perform(&request(action, plan_action, run_id, json!({})), &MemoryStore::new()).await.unwrap()
    }

    #[tokio::test]
    async fn posts_the_request_with_an_idempotency_key_and_honours_the_answer() {
        let server =
            TestServer::start(vec![reply(201, r#"{"outcome":"ok","createdRunId":"b-7","detail":{"queued":true}}"#)])
                .await;
        let runtime = HttpRuntime::new(
            "ops",
            config(&server.url(), &[(Action::BranchFromCheckpoint, "/runs/{runId}/branch")], Duration::from_secs(5)),
        )
        .unwrap();
        let req = request(
            Action::BranchFromCheckpoint,
            "branch_from_failure_checkpoint",
            "r:partial-replay:1",
            json!({"checkpointId": "c"}),
        );
        let result = runtime.perform(&req, &MemoryStore::new()).await.unwrap();
        assert_eq!((result.outcome.as_str(), result.created_run_id.as_deref()), ("ok", Some("b-7")));
        assert_eq!(result.detail, json!({"queued": true}));
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        let sent = &requests[0];
        assert_eq!((sent.method.as_str(), sent.path.as_str()), ("POST", "/runs/r%3Apartial-replay%3A1/branch"));
        assert_eq!(sent.headers.get("idempotency-key").map(String::as_str), Some("plan-1:step-1:1"));
        assert_eq!(sent.headers.get("x-team").map(String::as_str), Some("sre"));
        assert_eq!(sent.headers.get("content-type").map(String::as_str), Some("application/json"));
        let body: ActionRequest = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(body, req);
    }

    #[tokio::test]
    async fn idempotent_actions_are_retried_with_the_same_key() {
        let server = TestServer::start(vec![reply(503, "busy"), reply(502, "busy"), reply(204, "")]).await;
        let runtime =
            HttpRuntime::new("ops", config(&server.url(), &[(Action::Notify, "/notify")], Duration::from_secs(5)))
                .unwrap();
        let result = runtime
            .perform(&request(Action::Notify, "notify", "r", json!({"message": "hi"})), &MemoryStore::new())
            .await
            .unwrap();
        assert_eq!(result.outcome, "ok", "{result:?}");
        assert_eq!(result.detail["attempts"], 3);
        let keys: Vec<String> = server.requests().iter().map(|r| r.headers["idempotency-key"].clone()).collect();
        assert_eq!(keys, ["plan-1:step-1:1"; 3]);
        // Retries stop at max_attempts.
        let server =
            TestServer::start(vec![reply(503, "a"), reply(503, "b"), reply(503, "still busy"), reply(200, "")]).await;
        let runtime =
            HttpRuntime::new("ops", config(&server.url(), &[(Action::Notify, "/notify")], Duration::from_secs(5)))
                .unwrap();
        let result =
            runtime.perform(&request(Action::Notify, "notify", "r", json!({})), &MemoryStore::new()).await.unwrap();
        assert_eq!(
            (result.outcome.as_str(), result.detail["status"].clone(), result.detail["body"].clone()),
            ("failed", json!(503), json!("still busy"))
        );
        assert_eq!(server.requests().len(), 3);
    }

    #[tokio::test]
    async fn irreversible_actions_are_not_retried_and_errors_keep_the_body() {
        let server = TestServer::start(vec![reply(503, r#"{"error":"worker pool exhausted"}"#), reply(200, "")]).await;
        let result = perform_once(&server.url(), Action::ResumeRun, "/runs/{runId}/resume", "resume_run", "r1").await;
        assert_eq!(result.outcome, "failed");
        assert_eq!(result.detail["status"], 503);
        assert_eq!(result.detail["body"], r#"{"error":"worker pool exhausted"}"#);
        assert_eq!(server.requests().len(), 1, "no retry for an irreversible action");
        // A compensable action (creates a run) is not retried either.
        let server = TestServer::start(vec![reply(500, "oops")]).await;
        let result = perform_once(&server.url(), Action::PartialReplay, "/replays", "partial_replay", "r1").await;
        assert_eq!((result.outcome.as_str(), server.requests().len()), ("failed", 1));
        // A 4xx is failed too, with the body.
        let server = TestServer::start(vec![reply(409, "already resumed")]).await;
        let result = perform_once(&server.url(), Action::ResumeRun, "/runs/{runId}/resume", "resume_run", "r1").await;
        assert_eq!((result.outcome.as_str(), result.detail["body"].clone()), ("failed", json!("already resumed")));
    }

    #[tokio::test]
    async fn a_timeout_after_sending_is_an_error_for_the_operator() {
        let slow = Reply { status: 200, body: String::new(), delay: Duration::from_secs(3) };
        let server = TestServer::start(vec![slow.clone(), slow.clone(), slow]).await;
        let runtime = HttpRuntime::new(
            "ops",
            config(
                &server.url(),
                &[(Action::ResumeRun, "/resume"), (Action::Notify, "/notify")],
                Duration::from_millis(300),
            ),
        )
        .unwrap();
        let started = Instant::now();
        let error = runtime
            .perform(&request(Action::ResumeRun, "resume_run", "r", json!({})), &MemoryStore::new())
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(matches!(error, RuntimeError::Failed { .. }), "{error:?}");
        assert!(error.to_string().contains("may have reached the server"), "{error}");
        assert_eq!(server.requests().len(), 1, "the request did reach the server");
        // An idempotent action is retried first (same key), then reported the same way.
        let server = TestServer::start(vec![
            Reply { status: 200, body: String::new(), delay: Duration::from_secs(3) },
            Reply { status: 200, body: String::new(), delay: Duration::from_secs(3) },
            Reply { status: 200, body: String::new(), delay: Duration::from_secs(3) },
        ])
        .await;
        let runtime =
            HttpRuntime::new("ops", config(&server.url(), &[(Action::Notify, "/notify")], Duration::from_millis(300)))
                .unwrap();
        let error =
            runtime.perform(&request(Action::Notify, "notify", "r", json!({})), &MemoryStore::new()).await.unwrap_err();
        assert!(matches!(error, RuntimeError::Failed { .. }), "{error:?}");
        assert_eq!(server.requests().len(), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_failed_without_retry_for_irreversible_actions() {
        // A port that was just free: nothing listens on it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let runtime = HttpRuntime::new(
            "ops",
            config(&format!("http://{addr}"), &[(Action::ResumeRun, "/resume")], Duration::from_secs(2)),
        )
        .unwrap();
        let started = Instant::now();
        let result = runtime
            .perform(&request(Action::ResumeRun, "resume_run", "r", json!({})), &MemoryStore::new())
            .await
            .unwrap();
        assert_eq!((result.outcome.as_str(), result.detail["notSent"].clone()), ("failed", json!(true)), "{result:?}");
        assert_eq!(result.detail["attempts"], 1);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn bad_configurations_fail_when_the_runtime_is_built() {
        let bad_placeholder =
            config("http://127.0.0.1:9", &[(Action::ResumeRun, "/runs/{run_id}")], Duration::from_secs(1));
        let error = HttpRuntime::new("ops", bad_placeholder).unwrap_err();
        assert!(error.to_string().contains("unknown placeholder `{run_id}`"), "{error}");
        let mut missing_env = config("http://127.0.0.1:9", &[(Action::ResumeRun, "/r")], Duration::from_secs(1));
        missing_env.headers.insert("Authorization".into(), "Bearer ${SALVAGE_TEST_TOKEN_THAT_IS_NOT_SET}".into());
        let error = HttpRuntime::new("ops", missing_env).unwrap_err();
        assert!(error.to_string().contains("SALVAGE_TEST_TOKEN_THAT_IS_NOT_SET is not set"), "{error}");
    }

    /// https works: a local TLS server with a certificate from a private CA, trusted through
    /// `ca_file`; without it the handshake fails and the request is not sent.
    #[tokio::test]
    async fn https_with_a_private_ca() {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "salvage test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server_cert =
            CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&server_key, &ca).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .unwrap();
        let server_config = Arc::new(server_config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen_by_server = seen.clone();
        // Two connections: one from the client without the CA (its handshake fails), one with.
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            for _ in 0..2 {
                let Ok((tcp, _)) = listener.accept() else { return };
                let connection = rustls::ServerConnection::new(server_config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(connection, tcp);
                let mut data = Vec::new();
                let mut buffer = [0u8; 4096];
                while !data.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => data.extend_from_slice(&buffer[..n]),
                    }
                }
                if data.is_empty() {
                    continue;
                }
                seen_by_server
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&data).lines().next().unwrap_or_default().to_owned());
                let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        let base = format!("https://localhost:{port}");
        let mut untrusted = config(&base, &[(Action::ResumeRun, "/runs/{runId}/resume")], Duration::from_secs(5));
        let runtime = HttpRuntime::new("ops", untrusted.clone()).unwrap();
        let result = runtime
            .perform(&request(Action::ResumeRun, "resume_run", "r1", json!({})), &MemoryStore::new())
            .await
            .unwrap();
        assert_eq!((result.outcome.as_str(), result.detail["notSent"].clone()), ("failed", json!(true)), "{result:?}");
        untrusted.ca_file = Some(ca_file);
        let runtime = HttpRuntime::new("ops", untrusted).unwrap();
        let result = runtime
            .perform(&request(Action::ResumeRun, "resume_run", "r1", json!({})), &MemoryStore::new())
            .await
            .unwrap();
        assert_eq!(result.outcome, "ok", "{result:?}");
        server.join().unwrap();
        assert_eq!(*seen.lock().unwrap(), ["POST /runs/r1/resume HTTP/1.1"]);
    }
}

// ---------------------------------------------------------------------------------------------
// salvage.yaml: parsing, routing, `salvage init`
// ---------------------------------------------------------------------------------------------

mod config {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use salvage::execute::config::{CONFIG_FILE, DEFAULT_CONFIG_YAML};
    use salvage::execute::{
        AdapterConfig, ConfigError, Mode, RuntimeError, RuntimeRegistry, RuntimesConfig, SalvageConfig,
    };

    use super::*;

    fn parse(text: &str) -> Result<SalvageConfig, ConfigError> {
        SalvageConfig::parse(Path::new("salvage.yaml"), text)
    }

    fn problems(text: &str) -> Vec<String> {
        let error = parse(text).expect_err("the configuration must be refused");
        error.problems().iter().map(|p| format!("{} | {}", p, p.help.clone().unwrap_or_default())).collect()
    }

    fn run_with(metadata: Value) -> Run {
        Run::from_value(json!({"id": "r", "metadata": metadata})).unwrap()
    }

    #[test]
    fn the_init_template_parses_to_the_default_configuration() {
        let parsed = parse(DEFAULT_CONFIG_YAML).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(parsed, SalvageConfig::default());
        // The defaults, spelled out (what the template promises).
        assert_eq!(parsed.store, "sqlite:.salvage/salvage.db");
        assert_eq!(parsed.mode, Mode::Enforce);
        assert_eq!(parsed.runtimes.agent.as_deref(), Some("store"));
        assert_eq!(parsed.runtimes.workflow.as_deref(), Some("store"));
        assert_eq!(parsed.runtimes.planning, None);
        assert_eq!(parsed.approvals.default_timeout, Duration::from_secs(3600));
        assert!(!parsed.approvals.allow_self_approval);
        // An empty file is the default configuration too.
        assert_eq!(parse("# nothing yet\n").unwrap(), SalvageConfig::default());
    }

    /// The commented-out examples of the template are valid once uncommented.
    #[test]
    fn the_template_examples_parse_when_uncommented() {
        let mut text = String::new();
        for line in DEFAULT_CONFIG_YAML.lines() {
            if line.starts_with("  adapters: {}") {
                text.push_str("  adapters:\n");
            } else if let Some(rest) = line.strip_prefix("  #   ") {
                if !rest.trim_start().starts_with('#') {
                    text.push_str("    ");
                    text.push_str(rest);
                    text.push('\n');
                }
            } else if line != "  #" {
                text.push_str(line);
                text.push('\n');
            }
        }
        let parsed = parse(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        let adapters = &parsed.runtimes.adapters;
        let Some(AdapterConfig::Command(command)) = adapters.get("sync-worker") else { panic!("{adapters:?}") };
        let resume = &command.actions[&Action::ResumeRun];
        assert_eq!(resume.command, ["./bin/resume-run", "--verbose"]);
        assert_eq!((resume.timeout, command.timeout), (Some(Duration::from_secs(600)), Duration::from_secs(300)));
        assert_eq!(resume.env.get("SYNC_REGION").map(String::as_str), Some("eu-west-1"));
        let Some(AdapterConfig::Http(http)) = adapters.get("ops-api") else { panic!("{adapters:?}") };
        assert_eq!(http.base_url.as_deref(), Some("https://runtime.internal.example"));
        assert_eq!(http.actions[&Action::ResumeRun].url, "/runs/{runId}/resume");
        assert_eq!(http.actions[&Action::ResolveApproval].timeout, Some(Duration::from_secs(120)));
        assert_eq!(http.retry.max_attempts, 3);
        assert_eq!(http.headers["Authorization"], "Bearer ${OPS_API_TOKEN}");
    }

    #[test]
    fn problems_name_the_line_and_column_and_suggest_the_key() {
        let text = "playbook: ./pb\nmode: advisroy\napprovals:\n  default_timeout: soon\nruntimes:\n  agent: stor\n";
        let found = problems(text);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(
            found[0].starts_with("salvage.yaml:1:1: unknown key `playbook`")
                && found[0].contains("did you mean `playbooks`?"),
            "{}",
            found[0]
        );
        assert!(
            found[1].starts_with("salvage.yaml:2:7: `mode` must be advisory or enforce")
                && found[1].contains("did you mean `advisory`?"),
            "{}",
            found[1]
        );
        assert!(
            found[2].starts_with("salvage.yaml:4:20: `approvals.default_timeout` must be a duration"),
            "{}",
            found[2]
        );
        assert!(
            found[3].starts_with("salvage.yaml:6:10: `runtimes.agent` names runtime `stor`")
                && found[3].contains("did you mean `store`?"),
            "{}",
            found[3]
        );
        // The error itself names the file and the first problem.
        let error = parse(text).unwrap_err();
        assert!(error.to_string().starts_with("salvage.yaml: 4 problem(s); the first: salvage.yaml:1:1"), "{error}");
    }

    #[test]
    fn unknown_runtime_kinds_and_bad_adapters_are_refused_clearly() {
        let text = "runtimes:\n  adapters:\n    k8s:\n      kind: kubernetes\n      actions: {}\n";
        let found = problems(text);
        assert!(
            found[0].starts_with("salvage.yaml:4:13: unknown runtime kind `kubernetes` for `runtimes.adapters.k8s`"),
            "{found:?}"
        );
        assert!(found[0].contains("`command` and `http`"), "{found:?}");
        let text = "runtimes:\n  adapters:\n    w:\n      kind: comand\n";
        assert!(problems(text)[0].contains("did you mean `command`?"));
        let text =
            "runtimes:\n  adapters:\n    w:\n      kind: command\n      actions:\n        resume_rn: {command: [x]}\n";
        let found = problems(text);
        assert!(
            found[0].contains("unknown action `resume_rn`") && found[0].contains("did you mean `resume_run`?"),
            "{found:?}"
        );
        let text =
            "runtimes:\n  adapters:\n    api:\n      kind: http\n      actions:\n        resume_run: /runs/{run_id}\n";
        assert!(problems(text)[0].contains("unknown placeholder `{run_id}`"));
        let text =
            "runtimes:\n  adapters:\n    api:\n      kind: http\n      actions:\n        resume_run: /runs/{runId}\n";
        assert!(problems(text)[0].contains("the runtime has no `base_url`"));
        let text =
            "runtimes:\n  adapters:\n    store:\n      kind: command\n      actions: {resume_run: {command: [x]}}\n";
        assert!(problems(text)[0].contains("built-in runtime's name"));
        let text = "store: mysql://db\n";
        assert!(problems(text)[0].starts_with("salvage.yaml:1:8: invalid store"), "{:?}", problems(text));
        let config = parse("store: postgres://salvage@db:5432/salvage\n").expect("a postgres:// store is valid");
        assert_eq!(config.store, "postgres://salvage@db:5432/salvage");
        let text = "mode: enforce\nmode: advisory\n";
        assert!(
            problems(text)[0].starts_with("salvage.yaml:2:1: `salvage.yaml` has `mode` twice"),
            "{:?}",
            problems(text)
        );
        let text = "runtimes: [store]\n";
        assert!(problems(text)[0].contains("`runtimes` must be a mapping, found a list"));
        let text = "a: [1, 2\n";
        assert!(problems(text)[0].starts_with("salvage.yaml:"));
    }

    #[test]
    fn load_resolves_relative_paths_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = "store: file:runs\nplaybooks: pb\nruntimes:\n  agent: w\n  adapters:\n    w:\n      kind: command\n      actions:\n        resume_run: {command: [./bin/resume, a], working_dir: ops}\n        cancel_run: {command: [sh, -c, 'true']}\n";
        std::fs::write(dir.path().join(CONFIG_FILE), text).unwrap();
        let config = SalvageConfig::load_or_default(dir.path()).unwrap();
        assert_eq!(config.store, format!("file:{}", dir.path().join("runs").display()));
        assert_eq!(config.playbooks, dir.path().join("pb"));
        assert_eq!(config.policies, dir.path().join("policies"));
        let Some(AdapterConfig::Command(command)) = config.runtimes.adapters.get("w") else { panic!() };
        let resume = &command.actions[&Action::ResumeRun];
        assert_eq!(PathBuf::from(&resume.command[0]), dir.path().join("./bin/resume"));
        assert_eq!(resume.working_dir.as_deref(), Some(dir.path().join("ops").as_path()));
        assert_eq!(command.actions[&Action::CancelRun].command[0], "sh", "a bare program name is looked up on PATH");
        // No file: the defaults.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(SalvageConfig::load_or_default(empty.path()).unwrap(), SalvageConfig::default());
    }

    #[tokio::test]
    async fn the_default_routing_sends_agent_and_workflow_runs_to_the_store_runtime() {
        let registry = RuntimeRegistry::default();
        for metadata in [json!({}), json!({"workflowId": "nightly-sync"})] {
            let run = run_with(metadata);
            assert_eq!(registry.resolve(&run).unwrap().describe(), "store");
            assert_eq!(registry.resolve_name(&run), Some("store"));
        }
        let planning = run_with(json!({"planningRuntime": true}));
        let error = registry.resolve(&planning).unwrap_err();
        assert!(matches!(error, RuntimeError::NotConfigured { .. }), "{error:?}");
        assert!(error.to_string().contains("no runtime is configured for run \"r\""), "{error}");
    }

    /// Spec §8 #8: the reference hands a workflow run whose workflow runtime is not registered
    /// (and planning runs) to the agent runtime; salvage refuses.
    #[tokio::test]
    async fn difference_routing_fails_closed() {
        let config = parse(
            "runtimes:\n  agent: worker\n  workflow: null\n  workflows:\n    nightly-sync: store\n  adapters:\n    worker:\n      kind: command\n      actions:\n        resume_run: {command: ['true']}\n",
        )
        .unwrap();
        let registry = RuntimeRegistry::from_config(&config.runtimes).unwrap();
        assert!(registry.resolve(&run_with(json!({}))).unwrap().describe().starts_with("command worker"));
        assert_eq!(registry.resolve(&run_with(json!({"workflowId": "nightly-sync"}))).unwrap().describe(), "store");
        let other_workflow = registry.resolve(&run_with(json!({"workflowId": "ledger-export"}))).unwrap_err();
        assert!(
            matches!(&other_workflow, RuntimeError::NotConfigured { wanted, .. } if wanted.contains("ledger-export")),
            "{other_workflow:?}"
        );
        assert!(matches!(
            registry.resolve(&run_with(json!({"planningRuntime": true}))),
            Err(RuntimeError::NotConfigured { .. })
        ));
        // With nothing configured for agents either, an agent run is refused too.
        let bare = RuntimesConfig { agent: None, workflow: None, ..RuntimesConfig::default() };
        let registry = RuntimeRegistry::from_config(&bare).unwrap();
        assert!(matches!(registry.resolve(&run_with(json!({}))), Err(RuntimeError::NotConfigured { .. })));
        // A route to a runtime that does not exist is refused when the registry is built.
        let broken = RuntimesConfig { agent: Some("ghost".into()), ..RuntimesConfig::default() };
        let error = RuntimeRegistry::from_config(&broken).unwrap_err();
        assert!(error.to_string().contains("`runtimes.agent` names runtime `ghost`"), "{error}");
    }

    #[test]
    fn salvage_init_writes_the_template_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let salvage = || {
            let mut command = assert_cmd::Command::cargo_bin("salvage").unwrap();
            command
                .current_dir(dir.path())
                .env_remove("SALVAGE_STORE")
                .env_remove("SALVAGE_ACTOR")
                .env("USER", "alice");
            command
        };
        salvage().arg("init").assert().success();
        let path = dir.path().join(CONFIG_FILE);
        let written = std::fs::read_to_string(&path).unwrap();
        // The template, with the person who ran init as the default approver: approvals can be
        // given from the start (an empty list would make every unnamed approval unanswerable).
        assert_eq!(written, DEFAULT_CONFIG_YAML.replacen("default_approvers: []", "default_approvers: [\"alice\"]", 1));
        let parsed = SalvageConfig::parse(&path, &written).unwrap();
        assert_eq!(parsed.approvals.default_approvers, ["alice"]);
        assert_eq!(
            SalvageConfig { approvals: salvage::execute::ApprovalSettings::default(), ..parsed },
            SalvageConfig::default()
        );
        std::fs::write(&path, "mode: advisory\n").unwrap();
        let refused = salvage().arg("init").assert().code(2);
        let stderr = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
        assert!(stderr.contains("salvage.yaml already exists") && stderr.contains("--force"), "{stderr}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "mode: advisory\n", "left alone");
        salvage().args(["init", "--force"]).assert().success();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
        let leftovers: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(leftovers, [std::ffi::OsString::from(CONFIG_FILE)], "no temp file left behind");
    }
}
