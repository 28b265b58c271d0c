//! The reference's `Run` record (agnostic-agents 1.3.3 `src/runtime/Run.js`), written from the
//! spec (§1) and the recorded runs, independently of salvage's own model: the 17 fields of
//! `Run.toJSON` in their order, `setStatus`'s timestamps, the id schemes of events, steps and
//! checkpoints, `createCheckpointSnapshot`, and `RunInspector.summarize` (§3.1).

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::macros::format_description;

/// Milliseconds since the epoch, the reference's clock (`Date.now()`).
pub fn now_ms() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    (nanos / 1_000_000) as i64
}

/// `new Date(ms).toISOString()`: `2026-11-29T05:15:41.554Z`.
pub fn iso(ms: i64) -> String {
    let at =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    at.format(format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"))
        .unwrap_or_default()
}

/// `new Date(ms).toUTCString()`: `Sun, 29 Nov 2026 05:15:41 GMT` (the system prompt's clock).
pub fn utc_string(ms: i64) -> String {
    let at =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    at.format(format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"))
        .unwrap_or_default()
}

/// `Date.parse` of an ISO timestamp written by [`iso`], in ms.
fn parse_iso(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some((at.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// A JavaScript number as JSON: integral values are written without a fraction (`42`, not
/// `42.0`), as `JSON.stringify` does.
pub fn js_number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 { json!(value as i64) } else { json!(value) }
}

/// The run statuses the agent uses.
pub mod status {
    pub const RUNNING: &str = "running";
    pub const PAUSED: &str = "paused";
    pub const WAITING: &str = "waiting_for_approval";
    pub const COMPLETED: &str = "completed";
    pub const FAILED: &str = "failed";
    pub const CANCELLED: &str = "cancelled";
}

/// One run. Fields keep the reference's JSON values; only what the agent reasons about is typed.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: String,
    pub input: Value,
    pub state: Map<String, Value>,
    pub messages: Vec<Value>,
    pub steps: Vec<Value>,
    pub tool_calls: Vec<Value>,
    pub tool_results: Vec<Value>,
    pub checkpoints: Vec<Value>,
    pub errors: Vec<Value>,
    pub events: Vec<Value>,
    /// `{createdAt, startedAt, updatedAt, completedAt, failedAt, cancelledAt}`, in that order.
    pub timestamps: Map<String, Value>,
    pub status: String,
    pub output: Value,
    pub pending_approval: Value,
    pub pending_pause: Value,
    pub metrics: Value,
    pub metadata: Map<String, Value>,
}

const TIMESTAMP_KEYS: [&str; 6] = ["createdAt", "startedAt", "updatedAt", "completedAt", "failedAt", "cancelledAt"];

/// `metrics` normalised to exactly the reference's five keys.
pub fn empty_metrics() -> Value {
    json!({
        "tokenUsage": {"prompt": 0, "completion": 0, "total": 0},
        "cost": 0,
        "timings": {"retrievalMs": 0, "modelMs": 0, "toolMs": 0, "workflowMs": 0, "verifierMs": 0},
        "childRuns": {"count": 0, "items": []},
        "debug": {}
    })
}

/// `metrics` as `Run`'s constructor normalises it: the five keys, numbers defaulting to 0, only
/// the five timing keys, `childRuns.count` trusted from the input.
pub fn normalize_metrics(given: Option<Value>) -> Value {
    let given = given.unwrap_or(Value::Null);
    let number = |pointer: &str| given.pointer(pointer).filter(|v| v.is_number()).cloned().unwrap_or(json!(0));
    let mut metrics = empty_metrics();
    for key in ["prompt", "completion", "total"] {
        metrics["tokenUsage"][key] = number(&format!("/tokenUsage/{key}"));
    }
    metrics["cost"] = number("/cost");
    for key in ["retrievalMs", "modelMs", "toolMs", "workflowMs", "verifierMs"] {
        metrics["timings"][key] = number(&format!("/timings/{key}"));
    }
    metrics["childRuns"]["count"] = number("/childRuns/count");
    if let Some(items) = given.pointer("/childRuns/items").filter(|v| v.is_array()) {
        metrics["childRuns"]["items"] = items.clone();
    }
    if let Some(debug) = given.get("debug").filter(|v| v.is_object()) {
        metrics["debug"] = debug.clone();
    }
    metrics
}

/// The five lineage keys (`Run` normalises `metadata.lineage` to exactly these).
pub fn lineage(
    root: &str,
    parent: Option<&str>,
    branch_origin: Option<&str>,
    branch_checkpoint: Option<&str>,
) -> Value {
    json!({
        "rootRunId": root,
        "parentRunId": parent,
        "childRunIds": [],
        "branchOriginRunId": branch_origin,
        "branchCheckpointId": branch_checkpoint,
    })
}

impl Run {
    /// `new Run({id, input, metadata})`: pending, created now, lineage rooted at itself unless
    /// `metadata.lineage` says otherwise.
    pub fn new(id: String, input: Value, metadata: Map<String, Value>) -> Run {
        let now = Value::String(iso(now_ms()));
        let mut timestamps = Map::new();
        for key in TIMESTAMP_KEYS {
            let value = if key == "createdAt" || key == "updatedAt" { now.clone() } else { Value::Null };
            timestamps.insert(key.to_owned(), value);
        }
        let mut run = Run {
            id,
            input,
            state: Map::new(),
            messages: Vec::new(),
            steps: Vec::new(),
            tool_calls: Vec::new(),
            tool_results: Vec::new(),
            checkpoints: Vec::new(),
            errors: Vec::new(),
            events: Vec::new(),
            timestamps,
            status: "pending".to_owned(),
            output: Value::Null,
            pending_approval: Value::Null,
            pending_pause: Value::Null,
            metrics: empty_metrics(),
            metadata,
        };
        let normalized = run.normalized_lineage();
        // `insert` keeps an existing key's position, appends a new one: the reference's
        // `{...metadata, lineage}` order.
        run.metadata.insert("lineage".to_owned(), normalized);
        run
    }

    /// `metadata.lineage` with the five keys and their defaults (root = the run's own id).
    fn normalized_lineage(&self) -> Value {
        let given = self.metadata.get("lineage").and_then(Value::as_object).cloned().unwrap_or_default();
        let text = |key: &str| given.get(key).and_then(Value::as_str).map(str::to_owned);
        let mut value = lineage(
            &text("rootRunId").unwrap_or_else(|| self.id.clone()),
            text("parentRunId").as_deref(),
            text("branchOriginRunId").as_deref(),
            text("branchCheckpointId").as_deref(),
        );
        if let Some(children) = given.get("childRunIds").filter(|v| v.is_array()) {
            value["childRunIds"] = children.clone();
        }
        value
    }

    /// `Run.fromJSON`: missing arrays are empty, missing objects default as in the constructor.
    pub fn from_json(value: Value) -> Result<Run, String> {
        let Value::Object(mut map) = value else { return Err("a run record must be a JSON object".to_owned()) };
        let id = match map.remove("id") {
            Some(Value::String(id)) => id,
            _ => return Err("the run record has no string `id`".to_owned()),
        };
        let array = |map: &mut Map<String, Value>, key: &str| match map.remove(key) {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        };
        let object = |map: &mut Map<String, Value>, key: &str| match map.remove(key) {
            Some(Value::Object(object)) => object,
            _ => Map::new(),
        };
        let messages = array(&mut map, "messages");
        let steps = array(&mut map, "steps");
        let tool_calls = array(&mut map, "toolCalls");
        let tool_results = array(&mut map, "toolResults");
        let checkpoints = array(&mut map, "checkpoints");
        let errors = array(&mut map, "errors");
        let events = array(&mut map, "events");
        let state = object(&mut map, "state");
        let given_timestamps = object(&mut map, "timestamps");
        let metadata = object(&mut map, "metadata");
        let mut timestamps = Map::new();
        let now = Value::String(iso(now_ms()));
        for key in TIMESTAMP_KEYS {
            let value = match given_timestamps.get(key) {
                Some(value) if !value.is_null() => value.clone(),
                _ if key == "createdAt" || key == "updatedAt" => now.clone(),
                _ => Value::Null,
            };
            timestamps.insert(key.to_owned(), value);
        }
        let mut run = Run {
            id,
            input: map.remove("input").unwrap_or_else(|| json!("")),
            state,
            messages,
            steps,
            tool_calls,
            tool_results,
            checkpoints,
            errors,
            events,
            timestamps,
            status: map
                .remove("status")
                .and_then(|s| s.as_str().map(str::to_owned))
                .unwrap_or_else(|| "pending".into()),
            output: map.remove("output").unwrap_or(Value::Null),
            pending_approval: map.remove("pendingApproval").unwrap_or(Value::Null),
            pending_pause: map.remove("pendingPause").unwrap_or(Value::Null),
            metrics: normalize_metrics(map.remove("metrics")),
            metadata,
        };
        let normalized = run.normalized_lineage();
        run.metadata.insert("lineage".to_owned(), normalized);
        Ok(run)
    }

    /// `Run.toJSON()`: the 17 fields in the reference's order.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("id".into(), json!(self.id));
        map.insert("input".into(), self.input.clone());
        map.insert("state".into(), Value::Object(self.state.clone()));
        map.insert("messages".into(), Value::Array(self.messages.clone()));
        map.insert("steps".into(), Value::Array(self.steps.clone()));
        map.insert("toolCalls".into(), Value::Array(self.tool_calls.clone()));
        map.insert("toolResults".into(), Value::Array(self.tool_results.clone()));
        map.insert("checkpoints".into(), Value::Array(self.checkpoints.clone()));
        map.insert("errors".into(), Value::Array(self.errors.clone()));
        map.insert("events".into(), Value::Array(self.events.clone()));
        map.insert("timestamps".into(), Value::Object(self.timestamps.clone()));
        map.insert("status".into(), json!(self.status));
        map.insert("output".into(), self.output.clone());
        map.insert("pendingApproval".into(), self.pending_approval.clone());
        map.insert("pendingPause".into(), self.pending_pause.clone());
        map.insert("metrics".into(), self.metrics.clone());
        map.insert("metadata".into(), Value::Object(self.metadata.clone()));
        Value::Object(map)
    }

    pub fn lineage(&self) -> Map<String, Value> {
        self.metadata.get("lineage").and_then(Value::as_object).cloned().unwrap_or_default()
    }

    pub fn root_run_id(&self) -> String {
        self.lineage().get("rootRunId").and_then(Value::as_str).map_or_else(|| self.id.clone(), str::to_owned)
    }

    pub fn touch(&mut self) {
        self.timestamps.insert("updatedAt".into(), json!(iso(now_ms())));
    }

    /// `setStatus`: no transition check; the status' own timestamp, `updatedAt` always.
    pub fn set_status(&mut self, status: &str) {
        let now = json!(iso(now_ms()));
        // `startedAt` is set once; the terminal stamps every time.
        let stamp = match status {
            status::RUNNING if self.timestamps.get("startedAt").is_none_or(Value::is_null) => Some("startedAt"),
            status::COMPLETED => Some("completedAt"),
            status::FAILED => Some("failedAt"),
            status::CANCELLED => Some("cancelledAt"),
            _ => None,
        };
        if let Some(key) = stamp {
            self.timestamps.insert(key.into(), now.clone());
        }
        self.status = status.to_owned();
        self.timestamps.insert("updatedAt".into(), now);
    }

    /// Appends `{id: <runId>:<n>, type, timestamp, payload}` (the caller saves).
    pub fn add_event(&mut self, kind: &str, payload: Value) {
        let event = json!({
            "id": format!("{}:{}", self.id, self.events.len() + 1),
            "type": kind,
            "timestamp": iso(now_ms()),
            "payload": payload,
        });
        self.events.push(event);
        self.touch();
    }

    /// `createCheckpointSnapshot()`: deep copies of the resumable content, plus output and status.
    pub fn snapshot(&self) -> Value {
        json!({
            "state": self.state,
            "messages": self.messages,
            "steps": self.steps,
            "toolCalls": self.tool_calls,
            "toolResults": self.tool_results,
            "metrics": self.metrics,
            "pendingApproval": self.pending_approval,
            "pendingPause": self.pending_pause,
            "output": self.output,
            "status": self.status,
        })
    }

    /// The agent's checkpoint shape (`id, label, timestamp, status, payload, snapshot` and the
    /// three counts).
    pub fn add_checkpoint(&mut self, label: &str, payload: Value) {
        let checkpoint = json!({
            "id": format!("{}:checkpoint:{}", self.id, self.checkpoints.len() + 1),
            "label": label,
            "timestamp": iso(now_ms()),
            "status": self.status,
            "payload": payload,
            "snapshot": self.snapshot(),
            "messageCount": self.messages.len(),
            "toolCallCount": self.tool_calls.len(),
            "toolResultCount": self.tool_results.len(),
        });
        self.checkpoints.push(checkpoint);
        self.touch();
    }

    /// `getCheckpoint(id?)`: no id = the last one.
    pub fn checkpoint(&self, id: Option<&str>) -> Option<&Value> {
        match id {
            None => self.checkpoints.last(),
            Some(id) => self.checkpoints.iter().find(|c| c.get("id").and_then(Value::as_str) == Some(id)),
        }
    }

    /// Appends an agent step `{id, type, status: running, createdAt, updatedAt, payload, output,
    /// error}` and returns its id.
    pub fn add_step(&mut self, kind: &str, payload: Value) -> String {
        let id = format!("{}:step:{}", self.id, self.steps.len() + 1);
        let now = iso(now_ms());
        self.steps.push(json!({
            "id": id,
            "type": kind,
            "status": "running",
            "createdAt": now,
            "updatedAt": now,
            "payload": payload,
            "output": null,
            "error": null,
        }));
        self.touch();
        id
    }

    /// `updateStep(id, patch)`: merge, `updatedAt` now, `durationMs` once terminal.
    pub fn update_step(&mut self, step_id: &str, patch: Value) {
        let now_ms = now_ms();
        let Some(step) = self
            .steps
            .iter_mut()
            .find(|s| s.get("id").and_then(Value::as_str) == Some(step_id))
            .and_then(Value::as_object_mut)
        else {
            return;
        };
        if let Value::Object(patch) = patch {
            for (key, value) in patch {
                step.insert(key, value);
            }
        }
        step.insert("updatedAt".into(), json!(iso(now_ms)));
        let terminal = matches!(step.get("status").and_then(Value::as_str), Some("completed" | "failed" | "paused"));
        if terminal && let Some(created) = step.get("createdAt").and_then(Value::as_str).and_then(parse_iso) {
            step.insert("durationMs".into(), json!(now_ms - created));
        }
        self.touch();
    }

    /// `recordUsage` + `recordCost` for one model call.
    pub fn record_usage(&mut self, prompt: i64, completion: i64, cost: f64) {
        let usage = &mut self.metrics["tokenUsage"];
        for (key, add) in [("prompt", prompt), ("completion", completion), ("total", prompt + completion)] {
            let before = usage.get(key).and_then(Value::as_f64).unwrap_or(0.0);
            usage[key] = js_number(before + add as f64);
        }
        let before = self.metrics.get("cost").and_then(Value::as_f64).unwrap_or(0.0);
        self.metrics["cost"] = js_number(before + cost);
        self.touch();
    }

    /// `recordTiming(key, ms)`: additive.
    pub fn record_timing(&mut self, key: &str, ms: i64) {
        let before = self.metrics["timings"].get(key).and_then(Value::as_f64).unwrap_or(0.0);
        self.metrics["timings"][key] = js_number(before + ms as f64);
        self.touch();
    }

    /// A state array (`toolConfidence`, `policyDecisions`), created on first use.
    pub fn push_state(&mut self, key: &str, item: Value) {
        let entry = self.state.entry(key.to_owned()).or_insert_with(|| json!([]));
        if let Some(items) = entry.as_array_mut() {
            items.push(item);
        }
    }
}

/// Sums for `childRunAggregate` over `metrics.childRuns.items`.
fn child_run_aggregate(metrics: &Value) -> Value {
    let items = metrics.pointer("/childRuns/items").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut usage = [0.0f64; 3];
    let mut cost = 0.0;
    let mut timings = Map::new();
    for item in &items {
        for (slot, key) in ["prompt", "completion", "total"].iter().enumerate() {
            usage[slot] += item.pointer(&format!("/tokenUsage/{key}")).and_then(Value::as_f64).unwrap_or(0.0);
        }
        cost += item.get("cost").and_then(Value::as_f64).unwrap_or(0.0);
        if let Some(entries) = item.get("timings").and_then(Value::as_object) {
            for (key, value) in entries {
                let before = timings.get(key).and_then(Value::as_f64).unwrap_or(0.0);
                timings.insert(key.clone(), js_number(before + value.as_f64().unwrap_or(0.0)));
            }
        }
    }
    json!({
        "count": items.len(),
        "tokenUsage": {"prompt": js_number(usage[0]), "completion": js_number(usage[1]), "total": js_number(usage[2])},
        "cost": js_number(cost),
        "timings": timings,
    })
}

/// `RunInspector.summarize(run)`, field for field and in order. `evidence` has the shape of a
/// run read back from a file store (`{nodes, edges}` counts): every run this server answers
/// with went through its store.
pub fn summarize(run: &Run) -> Value {
    let field = |value: &Value, key: &str| value.get(key).cloned().unwrap_or(Value::Null);
    let steps: Vec<Value> = run
        .steps
        .iter()
        .map(|s| {
            json!({
                "id": field(s, "id"),
                "type": field(s, "type"),
                "status": field(s, "status"),
                "durationMs": field(s, "durationMs"),
            })
        })
        .collect();
    let checkpoints: Vec<Value> = run
        .checkpoints
        .iter()
        .map(|c| json!({"id": field(c, "id"), "label": field(c, "label"), "status": field(c, "status")}))
        .collect();
    let evidence = match run.state.get("evidenceGraph") {
        Some(graph) if !graph.is_null() => json!({
            "nodes": graph.get("nodes").and_then(Value::as_array).map_or(0, Vec::len),
            "edges": graph.get("edges").and_then(Value::as_array).map_or(0, Vec::len),
        }),
        _ => Value::Null,
    };
    json!({
        "id": run.id,
        "status": run.status,
        "input": run.input,
        "output": run.output,
        "events": run.events.len(),
        "steps": steps,
        "checkpoints": checkpoints,
        "metrics": run.metrics,
        "childRunAggregate": child_run_aggregate(&run.metrics),
        "lineage": run.metadata.get("lineage").cloned().unwrap_or(Value::Null),
        "assessment": run.state.get("assessment").filter(|v| !v.is_null()).cloned().unwrap_or(Value::Null),
        "evidence": evidence,
        "pendingApproval": run.pending_approval,
        "pendingPause": run.pending_pause,
        "errors": run.errors,
    })
}
