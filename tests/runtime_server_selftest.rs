//! The test runtime server (`tests/runtime_server/`) against the reference's behaviour: its
//! HTTP routes, the run records it writes (compared with the recorded reference runs), its
//! external-write counter, and salvage reading and classifying what it wrote.

mod runtime_server;

#[path = "common/corpus.rs"]
mod corpus;

use std::collections::BTreeSet;
use std::time::Duration;

use runtime_server::{DelayOrder, Route, RuntimeServer, ServerOptions, TaskSpec, ToolPolicy};
use serde_json::{Value, json};

/// A server that knows four invoice tasks, one per incident its tool produces.
fn server() -> RuntimeServer {
    RuntimeServer::start(
        ServerOptions::new()
            .policy("send_invoice", ToolPolicy::succeed())
            .policy("send_invoice_gated", ToolPolicy::require_approval())
            .policy("send_invoice_flaky", ToolPolicy::fail_first(1))
            .policy("send_invoice_paused", ToolPolicy::pause_before_tool()),
    )
}

fn invoice(task: &str, id: &str) -> Value {
    json!({"task": task, "invoiceId": id, "amount": 120})
}

fn id_of(summary: &Value) -> String {
    summary["id"].as_str().unwrap_or_else(|| panic!("no id in {summary}")).to_owned()
}

fn strings(values: &[Value], key: &str) -> Vec<String> {
    values.iter().map(|v| v[key].as_str().unwrap_or_default().to_owned()).collect()
}

fn event_types(run: &Value) -> Vec<String> {
    strings(run["events"].as_array().expect("events"), "type")
}

fn checkpoint_labels(run: &Value) -> Vec<String> {
    strings(run["checkpoints"].as_array().expect("checkpoints"), "label")
}

fn keys(value: &Value) -> Vec<String> {
    value.as_object().unwrap_or_else(|| panic!("not an object: {value}")).keys().cloned().collect()
}

fn write_keys(server: &RuntimeServer) -> Vec<String> {
    server.external_writes().into_iter().map(|w| w.key).collect()
}

#[test]
fn an_approved_resume_writes_once_and_a_repeated_resume_returns_the_run_unchanged() {
    let server = server();
    let created = server.create_run(invoice("send_invoice_gated", "INV-1"));
    let run_id = id_of(&created);
    assert_eq!(created["status"], "waiting_for_approval");
    assert_eq!(created["pendingApproval"]["toolName"], "send_invoice_gated");
    assert_eq!(created["pendingApproval"]["reason"], "Tool requires explicit approval.");
    assert_eq!(keys(&created["pendingApproval"]["arguments"]), ["invoiceId", "amount"], "the input's order");
    assert!(server.external_writes().is_empty(), "nothing is written before the approval");

    let approvals = server.get("/approvals");
    assert_eq!(approvals.status, 200);
    assert_eq!(approvals.body, json!([created["pendingApproval"]]), "the inbox holds the pending request");

    let resumed = server.resume(&run_id, json!({"approved": true, "reason": "approved by on-call lead"}));
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert_eq!(resumed.body["status"], "completed");
    assert_eq!(resumed.body["pendingApproval"], Value::Null);
    assert_eq!(write_keys(&server), ["INV-1"]);
    assert_eq!(server.external_writes()[0].run_id, run_id);

    // The recorded approved twin (a1, f4c060c7) has exactly these events and checkpoints.
    let record = server.run(&run_id).expect("the run's file");
    assert_eq!(
        event_types(&record),
        [
            "run_started",
            "model_request",
            "model_response",
            "tool_requested",
            "tool_confidence_scored",
            "policy_decision",
            "approval_requested",
            "approval_resolved",
            "tool_started",
            "tool_completed",
            "model_request",
            "model_response",
            "run_completed"
        ]
    );
    assert_eq!(
        checkpoint_labels(&record),
        [
            "run_started",
            "model_response",
            "waiting_for_approval",
            "approval_resolved",
            "tool_completed",
            "tool_approved_and_resumed",
            "model_response",
            "run_completed"
        ]
    );
    let resolved = &record["events"][7]["payload"];
    assert_eq!(resolved["approved"], true);
    assert_eq!(resolved["reason"], "approved by on-call lead");
    assert_eq!(resolved["request"], created["pendingApproval"]);
    assert_eq!(record["messages"].as_array().map(Vec::len), Some(4), "the function call and its result were appended");

    // No idempotency: the same request again is another resume, of a run that is no longer
    // waiting — the reference returns it unchanged.
    let again = server.resume(&run_id, json!({"approved": true, "reason": "approved by on-call lead"}));
    assert_eq!(again.status, 200);
    assert_eq!(again.body, resumed.body, "the run is returned unchanged");
    assert_eq!(server.run(&run_id).expect("file"), record, "nothing was written");
    assert_eq!(server.external_writes().len(), 1);
    assert!(server.duplicate_writes().is_empty());
    // The reference's inbox is never resolved.
    assert_eq!(server.approvals().len(), 1);
}

#[test]
fn a_resume_without_approved_true_fails_the_waiting_run() {
    let server = server();
    let run_id = id_of(&server.create_run(invoice("send_invoice_gated", "INV-2")));
    let denied = server.resume(&run_id, json!({"approved": "yes", "reason": ""}));
    assert_eq!(denied.status, 500);
    assert_eq!(denied.body, json!({"error": "No approval handler configured."}));

    let record = server.run(&run_id).expect("file");
    assert_eq!(record["status"], "failed");
    assert_eq!(record["errors"], json!([{"name": "ToolPolicyError", "message": "No approval handler configured."}]));
    assert_eq!(record["pendingApproval"]["toolName"], "send_invoice_gated", "the stale request stays on the run");
    let events = event_types(&record);
    assert_eq!(events[events.len() - 3..], ["approval_requested", "approval_resolved", "run_failed"]);
    // `approved: config.approved === true`, `reason: config.reason || null`.
    assert_eq!(record["events"][7]["payload"]["approved"], false);
    assert_eq!(record["events"][7]["payload"]["reason"], Value::Null);
    assert_eq!(
        checkpoint_labels(&record),
        ["run_started", "model_response", "waiting_for_approval", "approval_resolved", "run_failed"]
    );
    assert!(record["timestamps"]["failedAt"].is_string());
    assert!(server.external_writes().is_empty());
    assert_eq!(server.get_run(&run_id).body["status"], "failed");
}

#[test]
fn a_branch_from_the_pre_tool_checkpoint_of_a_failed_run_is_paused_and_its_resume_writes_once() {
    let server = server();
    let failed = server.create_run(invoice("send_invoice_flaky", "INV-3"));
    let source = id_of(&failed);
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["errors"],
        json!([{
            "name": "ToolExecutionError",
            "message": "Tool \"send_invoice_flaky\" failed: HTTP 503 Service Unavailable from billing API"
        }])
    );
    let create = server.applied().into_iter().find(|a| a.route == Route::CreateRun).expect("applied");
    assert_eq!(create.status, 500, "agent.run re-throws: the reference answers 500");
    assert_eq!(create.body["error"], failed["errors"][0]["message"]);
    assert!(server.external_writes().is_empty());
    assert_eq!(server.tool_attempts().len(), 1);
    assert!(!server.tool_attempts()[0].succeeded);

    let record = server.run(&source).expect("file");
    assert_eq!(checkpoint_labels(&record), ["run_started", "model_response", "run_failed"]);
    let tool_step = &record["steps"][1];
    assert_eq!((&tool_step["type"], &tool_step["status"]), (&json!("tool"), &json!("failed")));
    assert_eq!(
        tool_step["error"],
        json!({"name": "HttpError", "message": "HTTP 503 Service Unavailable from billing API"})
    );

    let checkpoint = format!("{source}:checkpoint:2");
    let answer = server.branch(&source, json!({"checkpointId": checkpoint, "metadata": {"incident": "INC-7"}}));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let branch_id = id_of(&answer.body);
    let parsed = uuid::Uuid::parse_str(&branch_id).expect("the runtime chose a UUID");
    assert_eq!(parsed.get_version_num(), 4);
    assert_ne!(branch_id, source);
    assert_eq!(answer.body["status"], "paused");
    assert_eq!(
        answer.body["pendingPause"],
        json!({
            "reason": "Branched from checkpoint \"model_response\".",
            "stage": "branch",
            "sourceRunId": source,
            "sourceCheckpointId": checkpoint,
        })
    );
    assert_eq!(
        answer.body["lineage"],
        json!({
            "rootRunId": source,
            "parentRunId": null,
            "childRunIds": [],
            "branchOriginRunId": source,
            "branchCheckpointId": checkpoint,
        })
    );
    let branch = server.run(&branch_id).expect("the branch's file");
    assert_eq!(keys(&branch["metadata"]), ["description", "incident", "lineage"]);
    assert_eq!(branch["metadata"]["description"], "Invoice operations agent");
    assert_eq!(event_types(&branch), ["run_branched"]);
    assert_eq!(branch["events"][0]["payload"], json!({"sourceRunId": source, "sourceCheckpointId": checkpoint}));
    assert_eq!(branch["checkpoints"][0]["status"], "paused");
    assert_eq!(branch["timestamps"]["startedAt"], Value::Null);
    assert_eq!(branch["steps"].as_array().map(Vec::len), Some(1), "the snapshot's steps");
    assert_eq!(branch["steps"][0]["id"], format!("{source}:step:1"), "copied steps keep the source's ids");
    assert_eq!(server.run(&source).expect("file"), record, "the source is not touched");

    let resumed = server.resume(&branch_id, json!({}));
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert_eq!(resumed.body["status"], "completed");
    assert_eq!(write_keys(&server), ["INV-3"]);
    assert_eq!(server.external_writes()[0].run_id, branch_id);
    let branch = server.run(&branch_id).expect("file");
    assert_eq!(event_types(&branch)[..3], ["run_branched", "run_resumed", "model_request"]);
    assert_eq!(
        branch["events"][1]["payload"],
        json!({"reason": "Branched from checkpoint \"model_response\".", "stage": "branch"})
    );
    assert!(branch["timestamps"]["startedAt"].is_string());
    assert_eq!(branch["steps"][2]["id"], format!("{branch_id}:step:3"), "new steps continue the numbering");
}

#[test]
fn replays_have_the_reference_ids_metadata_and_lineage_and_a_resumed_partial_replay_writes_again() {
    let server = server();
    let source = id_of(&server.create_run(invoice("send_invoice", "INV-4")));
    assert_eq!(write_keys(&server), ["INV-4"]);
    let checkpoint = format!("{source}:checkpoint:2");

    let before = runtime_server_now_ms();
    let partial = server.replay(&source, json!({"checkpointId": checkpoint, "metadata": {"requestedBy": "ops"}}));
    assert_eq!(partial.status, 200, "{}", partial.body);
    let partial_id = id_of(&partial.body);
    let stamp: i64 = partial_id
        .strip_prefix(&format!("{source}:partial-replay:"))
        .unwrap_or_else(|| panic!("not a partial replay id: {partial_id}"))
        .parse()
        .expect("epoch ms");
    assert!(stamp >= before && stamp <= runtime_server_now_ms(), "the id carries Date.now()");
    let record = server.run(&partial_id).expect("the partial replay's file");
    assert_eq!(record["status"], "paused");
    assert_eq!(
        record["pendingPause"],
        json!({
            "reason": format!("Frozen replay prepared from checkpoint \"{checkpoint}\"."),
            "stage": "replay",
            "sourceRunId": source,
            "sourceCheckpointId": checkpoint,
        })
    );
    assert_eq!(keys(&record["metadata"]), ["description", "requestedBy", "lineage", "replay"]);
    assert_eq!(record["metadata"]["replay"]["mode"], "partial_frozen_trace");
    assert_eq!(record["metadata"]["replay"]["sourceCheckpointId"], checkpoint);
    assert_eq!(record["metadata"]["replay"]["replayedAt"], record["timestamps"]["createdAt"]);
    assert_eq!(record["metadata"]["lineage"]["branchOriginRunId"], source);
    assert_eq!(record["metadata"]["lineage"]["branchCheckpointId"], checkpoint);
    assert_eq!(event_types(&record), ["replay_started", "replay_completed"]);
    assert_eq!(strings(record["checkpoints"].as_array().expect("checkpoints"), "status"), ["running", "paused"]);
    assert_eq!(record["checkpoints"][0]["snapshot"]["pendingPause"], Value::Null);
    assert_eq!(record["output"], Value::Null);

    std::thread::sleep(Duration::from_millis(2)); // two replays in one ms would share an id
    let frozen = server.replay(&source, json!({"metadata": {"requestedBy": "audit"}}));
    assert_eq!(frozen.status, 200, "{}", frozen.body);
    let frozen_id = id_of(&frozen.body);
    assert!(frozen_id.starts_with(&format!("{source}:replay:")), "{frozen_id}");
    let record = server.run(&frozen_id).expect("the frozen replay's file");
    let original = server.run(&source).expect("file");
    assert_eq!(record["status"], "completed", "a frozen replay takes the source's status");
    assert_eq!(record["output"], original["output"]);
    assert_eq!(record["steps"], original["steps"]);
    assert_eq!(record["pendingPause"], Value::Null);
    assert_eq!(keys(&record["metadata"]), ["description", "lineage", "requestedBy", "replay"]);
    assert_eq!(
        record["metadata"]["replay"],
        json!({
            "mode": "frozen_trace",
            "sourceRunId": source,
            "sourceCheckpointId": null,
            "replayedAt": record["timestamps"]["createdAt"],
        })
    );
    assert_eq!(
        record["metadata"]["lineage"],
        json!({"rootRunId": source, "parentRunId": null, "childRunIds": [], "branchOriginRunId": null, "branchCheckpointId": null})
    );
    assert_eq!(strings(record["checkpoints"].as_array().expect("checkpoints"), "status"), ["running", "completed"]);
    assert!(record["timestamps"]["completedAt"].is_string());
    assert_eq!(server.external_writes().len(), 1, "replays execute nothing");

    // Resuming the partial replay runs live from the checkpoint before the tool: the tool
    // writes the same invoice again. The counter is what catches it.
    let resumed = server.resume(&partial_id, json!({}));
    assert_eq!(resumed.body["status"], "completed");
    assert_eq!(server.duplicate_writes(), [("INV-4".to_owned(), 2)]);
    assert_eq!(server.writes_for("INV-4")[1].run_id, partial_id);
}

#[test]
fn branch_and_replay_can_ignore_the_callers_metadata() {
    let server = RuntimeServer::start(ServerOptions::new().keep_metadata(false));
    let source = id_of(&server.create_run(invoice("send_invoice", "INV-5")));
    let branch = server.branch(&source, json!({"metadata": {"incident": "INC-9"}}));
    let branch = server.run(&id_of(&branch.body)).expect("file");
    assert_eq!(keys(&branch["metadata"]), ["description", "lineage"]);
    // No checkpoint id: the source's last checkpoint.
    assert_eq!(branch["metadata"]["lineage"]["branchCheckpointId"], format!("{source}:checkpoint:5"));
    assert_eq!(branch["pendingPause"]["reason"], "Branched from checkpoint \"run_completed\".");
    let replay =
        server.replay(&source, json!({"checkpointId": format!("{source}:checkpoint:1"), "metadata": {"x": 1}}));
    let replay = server.run(&id_of(&replay.body)).expect("file");
    assert_eq!(keys(&replay["metadata"]), ["description", "lineage", "replay"]);
}

#[test]
fn cancel_not_found_and_the_reference_error_messages() {
    let server = server();
    let run_id = id_of(&server.create_run(invoice("send_invoice_gated", "INV-6")));
    let cancelled = server.cancel(&run_id, json!({}));
    assert_eq!(cancelled.status, 200);
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(cancelled.body["pendingApproval"], Value::Null);
    let record = server.run(&run_id).expect("file");
    assert_eq!(
        record["events"].as_array().and_then(|e| e.last()).map(|e| &e["payload"]),
        Some(&json!({"reason": "Cancelled manually."}))
    );
    assert_eq!(checkpoint_labels(&record).last().map(String::as_str), Some("run_cancelled"));
    assert!(record["timestamps"]["cancelledAt"].is_string());

    let again = server.cancel(&run_id, json!({"reason": "again"}));
    assert_eq!((again.status, &again.body["events"]), (200, &cancelled.body["events"]), "unchanged");
    let resume = server.resume(&run_id, json!({"approved": true}));
    assert_eq!(
        (resume.status, resume.body.clone()),
        (500, json!({"error": format!("Run \"{run_id}\" has been cancelled.")}))
    );
    assert!(server.external_writes().is_empty());

    let missing = server.get_run("no-such-run");
    assert_eq!((missing.status, missing.body), (404, json!({"error": "Run not found."})));
    for route in [Route::Resume, Route::Branch, Route::Replay, Route::Cancel, Route::Pause] {
        let answer = server.call(route, "no-such-run", json!({}));
        assert_eq!(
            (answer.status, answer.body),
            (500, json!({"error": "Run \"no-such-run\" not found."})),
            "{route:?}"
        );
    }
    let bad = server.branch(&run_id, json!({"checkpointId": "nope"}));
    assert_eq!(
        (bad.status, bad.body),
        (500, json!({"error": format!("Checkpoint \"nope\" not found on run \"{run_id}\".")}))
    );
    let completed = id_of(&server.create_run(invoice("send_invoice", "INV-7")));
    let pause = server.pause(&completed, json!({}));
    assert_eq!(
        (pause.status, pause.body),
        (500, json!({"error": format!("Run \"{completed}\" cannot be paused from status \"completed\".")}))
    );
    let unknown = server.post("/runs/x/retry", json!({}));
    assert_eq!(unknown.status, 404);
    assert_eq!(server.requests().last().map(|r| r.route), Some(None));
}

#[test]
fn a_paused_run_resumed_twice_at_once_writes_once() {
    let server = RuntimeServer::start(
        ServerOptions::new()
            .policy("send_invoice", ToolPolicy::pause_before_tool())
            .tool_delay(Duration::from_millis(1500)),
    );
    let created = server.create_run(invoice("send_invoice", "INV-8"));
    let run_id = id_of(&created);
    assert_eq!(created["status"], "paused");
    assert_eq!(created["pendingPause"]["stage"], "before_tool");
    assert_eq!(created["pendingPause"]["reason"], "Paused at before_tool.");
    assert_eq!(created["pendingPause"]["payload"]["toolCall"]["name"], "send_invoice");

    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| server.resume(&run_id, json!({})));
        // The second resume arrives while the first one's tool is working: every read of the
        // file on the way must parse (saves are atomic).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while server.run(&run_id).expect("file")["status"] != "running" {
            assert!(std::time::Instant::now() < deadline, "the first resume never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        let second = server.resume(&run_id, json!({}));
        (first.join().expect("first resume"), second)
    });
    assert_eq!((first.status, &first.body["status"]), (200, &json!("completed")));
    assert_eq!((second.status, &second.body["status"]), (200, &json!("running")), "the second sees running: unchanged");
    assert_eq!(write_keys(&server), ["INV-8"]);
    let record = server.run(&run_id).expect("file");
    assert_eq!(event_types(&record).iter().filter(|t| *t == "run_resumed").count(), 1);

    // Both at once, with no ordering help: still one resume, one write.
    let other = id_of(&server.create_run(invoice("send_invoice", "INV-9")));
    let answers: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2).map(|_| scope.spawn(|| server.resume(&other, json!({})).status)).collect();
        handles.into_iter().map(|h| h.join().expect("resume")).collect()
    });
    assert_eq!(answers, [200, 200]);
    assert_eq!(server.writes_for("INV-9").len(), 1);
    assert!(server.duplicate_writes().is_empty());
}

#[test]
fn an_effect_is_done_even_when_the_client_is_killed_before_the_answer() {
    let server = server();
    let gated = id_of(&server.create_run(invoice("send_invoice_gated", "INV-10")));

    // Effect then hold: the write happens, the answer waits; the client is killed.
    server.hold(Route::Resume, DelayOrder::EffectThenDelay);
    let client = server.start_request(Route::Resume, &gated, json!({"approved": true}));
    let applied = server.wait_for_applied(Route::Resume, Duration::from_secs(10)).expect("the resume was applied");
    assert_eq!(applied.run_id.as_deref(), Some(gated.as_str()));
    assert_eq!(applied.body["status"], "completed");
    client.abort();
    assert_eq!(write_keys(&server), ["INV-10"]);
    server.release(Route::Resume);

    // Hold then effect: the request arrives, the client is killed, the effect still happens
    // once the hold is released.
    let paused = id_of(&server.create_run(invoice("send_invoice_paused", "INV-11")));
    server.hold(Route::Resume, DelayOrder::DelayThenEffect);
    let client = server.start_request(Route::Resume, &paused, json!({}));
    let request = server.wait_for_nth_request(Route::Resume, 2, Duration::from_secs(10)).expect("the request arrived");
    assert_eq!(request.run_id.as_deref(), Some(paused.as_str()));
    assert_eq!(request.header("content-type"), Some("application/json"));
    client.abort();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(server.writes_for("INV-11").len(), 0, "held before the effect");
    server.release(Route::Resume);
    let applied = server.wait_for_nth_applied(Route::Resume, 2, Duration::from_secs(10)).expect("the held resume ran");
    assert_eq!(applied.body["status"], "completed");
    assert_eq!(server.writes_for("INV-11").len(), 1);
    assert_eq!(server.run(&paused).expect("file")["status"], "completed");

    // A timed delay after the effect: the answer comes late, the effect is already visible.
    let gated = id_of(&server.create_run(invoice("send_invoice_gated", "INV-12")));
    server.set_answer_delay(Route::Resume, Duration::from_millis(300));
    let started = std::time::Instant::now();
    let answer = server.resume(&gated, json!({"approved": true}));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(answer.body["status"], "completed");
    assert!(server.duplicate_writes().is_empty());
}

#[test]
fn the_records_have_the_reference_shapes() {
    let Some(corpus) = corpus::corpus_dir() else { return };
    let recorded = |store: &str, run: &str| -> Value {
        let path = corpus.join(format!("stores/{store}/runs/{run}.json"));
        serde_json::from_str(&std::fs::read_to_string(&path).expect("recorded run")).expect("JSON")
    };
    let pending = recorded("a1-approval-metadata-policy", "dd474cd4-d50f-473b-a91e-9a37a46c8efc");
    let failed = recorded("b1-tool-failure-single-write", "ecb03895-54a8-423a-ac39-6218850a1ebe");

    let server = server();
    let gated = server.run(&id_of(&server.create_run(invoice("send_invoice_gated", "INV-13")))).expect("file");
    let flaky = server.run(&id_of(&server.create_run(invoice("send_invoice_flaky", "INV-14")))).expect("file");

    for (ours, theirs) in [(&gated, &pending), (&flaky, &failed)] {
        assert_eq!(keys(ours), keys(theirs), "Run.toJSON's fields and order");
        for field in ["timestamps", "metrics", "metadata"] {
            assert_eq!(keys(&ours[field]), keys(&theirs[field]), "{field}");
        }
        assert_eq!(keys(&ours["metadata"]["lineage"]), keys(&theirs["metadata"]["lineage"]));
        assert_eq!(keys(&ours["checkpoints"][0]), keys(&theirs["checkpoints"][0]), "checkpoint");
        assert_eq!(keys(&ours["checkpoints"][0]["snapshot"]), keys(&theirs["checkpoints"][0]["snapshot"]), "snapshot");
        assert_eq!(keys(&ours["events"][0]), keys(&theirs["events"][0]), "event");
        assert_eq!(keys(&ours["steps"][0]), keys(&theirs["steps"][0]), "model step");
        assert_eq!(
            keys(&ours["steps"][0]["output"]["toolCalls"][0]),
            keys(&theirs["steps"][0]["output"]["toolCalls"][0])
        );
        assert_eq!(keys(&ours["toolCalls"][0]), keys(&theirs["toolCalls"][0]), "tool request");
        assert_eq!(keys(&ours["toolCalls"][0]["metadata"]), keys(&theirs["toolCalls"][0]["metadata"]), "tool metadata");
        assert_eq!(
            keys(&ours["state"]),
            keys(&theirs["state"]).into_iter().filter(|k| k != "evidenceGraph").collect::<Vec<_>>()
        );
    }
    assert_eq!(keys(&gated["pendingApproval"]), keys(&pending["pendingApproval"]));
    assert_eq!(event_types(&gated), event_types(&pending));
    assert_eq!(checkpoint_labels(&gated), checkpoint_labels(&pending));
    // b1's agent ran a verifier before the tool; this one does not.
    let without_verifier: Vec<String> =
        event_types(&failed).into_iter().filter(|t| !t.starts_with("verifier_")).collect();
    assert_eq!(event_types(&flaky), without_verifier);
    assert_eq!(keys(&flaky["steps"][1]), keys(&failed["steps"][2]), "failed tool step");
    assert_eq!(flaky["errors"][0]["name"], failed["errors"][0]["name"]);

    // Pretty JSON with two spaces and no trailing newline, as FileRunStore writes it.
    let text = std::fs::read_to_string(server.store_dir().join(format!("{}.json", gated["id"].as_str().expect("id"))))
        .expect("file");
    assert!(text.starts_with("{\n  \"id\": "));
    assert!(text.ends_with('}'));
}

#[test]
fn salvage_reads_the_store_and_classifies_each_incident() {
    let server = server();
    let completed = id_of(&server.create_run(invoice("send_invoice", "INV-20")));
    let waiting = id_of(&server.create_run(invoice("send_invoice_gated", "INV-21")));
    let failed = id_of(&server.create_run(invoice("send_invoice_flaky", "INV-22")));
    let paused = id_of(&server.create_run(invoice("send_invoice_paused", "INV-23")));
    let branch = id_of(&server.branch(&failed, json!({"checkpointId": format!("{failed}:checkpoint:2")})).body);
    let replay = id_of(&server.replay(&completed, json!({"checkpointId": format!("{completed}:checkpoint:2")})).body);
    let cancelled = id_of(&server.create_run(invoice("send_invoice_gated", "INV-24")));
    assert_eq!(server.cancel(&cancelled, json!({"reason": "duplicate order"})).status, 200);
    let denied = id_of(&server.create_run(invoice("send_invoice_gated", "INV-25")));
    assert_eq!(server.resume(&denied, json!({})).status, 500);

    let listed = server.salvage_json(&["runs", "--json"]);
    let listed: BTreeSet<(String, String)> = listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|run| {
            (run["id"].as_str().unwrap_or_default().to_owned(), run["status"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        (&completed, "completed"),
        (&waiting, "waiting_for_approval"),
        (&failed, "failed"),
        (&paused, "paused"),
        (&branch, "paused"),
        (&replay, "paused"),
        (&cancelled, "cancelled"),
        (&denied, "failed"),
    ]
    .into_iter()
    .map(|(id, status)| (id.clone(), status.to_owned()))
    .collect();
    assert_eq!(listed, expected);
    assert_eq!(
        server.run_ids().into_iter().collect::<BTreeSet<_>>(),
        expected.iter().map(|(id, _)| id.clone()).collect()
    );

    for (run, incident) in [
        (&completed, "no_incident"),
        (&waiting, "approval_blocked"),
        (&failed, "tool_failure"),
        (&paused, "paused_run"),
        (&branch, "paused_run"),
        (&replay, "paused_replay"),
        (&cancelled, "no_incident"),
        (&denied, "approval_denied"),
    ] {
        assert_eq!(server.salvage_incident_type(run), incident, "run {run}");
    }

    // The failed run's recovery branches from the checkpoint before the tool ran.
    let plan = server.salvage_json(&["plan", &failed, "--json"]);
    let checkpoints: BTreeSet<&str> = plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|step| step["payload"]["checkpointId"].as_str())
        .collect();
    assert_eq!(checkpoints, BTreeSet::from([format!("{failed}:checkpoint:2").as_str()]), "{plan}");

    // salvage's `inspect` is RunInspector.summarize too: it must print what the server answers.
    for run in [&completed, &waiting, &failed, &branch, &replay] {
        let ours = server.get_run(run).body;
        assert_eq!(server.salvage_json(&["inspect", run, "--json"]), ours, "summary of {run}");
    }
}

fn runtime_server_now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    since.as_millis() as i64
}

#[test]
fn tasks_and_routes_are_configurable() {
    let server = RuntimeServer::start(
        ServerOptions::new()
            .task(
                "bill",
                TaskSpec::new("create_invoice", ToolPolicy::require_approval().and_fail_first(1))
                    .key_field("accountId"),
            )
            .route(Route::Resume, "/api/runs/:runId/decide"),
    );
    assert_eq!(server.url_template(Route::Resume), format!("{}/api/runs/{{runId}}/decide", server.base_url()));
    let run_id = id_of(&server.create_run(json!({"task": "bill", "accountId": "A-1"})));
    // An approved tool that then fails: the run fails with the request still on it.
    let answer = server.post(&format!("/api/runs/{run_id}/decide"), json!({"approved": true}));
    assert_eq!(answer.status, 500);
    assert_eq!(answer.body["error"], "Tool \"create_invoice\" failed: HTTP 503 Service Unavailable from billing API");
    let record = server.run(&run_id).expect("file");
    assert_eq!(record["status"], "failed");
    assert_eq!(record["pendingApproval"]["toolName"], "create_invoice");
    assert_eq!(server.salvage_incident_type(&run_id), "tool_failure");
    assert_eq!(server.post(&format!("/runs/{run_id}/resume"), json!({})).status, 404, "the default path is gone");
    // A plain prompt is answered without a tool.
    let answered = server.create_run(json!("What is our refund policy?"));
    assert_eq!(answered["status"], "completed");
    assert_eq!(answered["output"], "invoice-agent: What is our refund policy?");
    assert_eq!(answered["evidence"], json!({"nodes": 0, "edges": 0}));
    assert!(server.external_writes().is_empty());
}
