//! The run record (`<runId>.json`) and its normalisation on load.

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::json::{JsNumber, js_number_value, truthy};
use super::parts::{Checkpoint, Event, PendingApproval, PendingPause, RunError, Step, ToolCall};
use super::vocab::RunStatus;

/// A record whose shape cannot be read as a run (the reference's `Run.fromJSON` throws on
/// these too, e.g. `steps: null`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{path}` {problem}")]
pub struct RunShapeError {
    /// Dotted path of the offending field, e.g. `metadata.lineage.parentRunId`.
    pub path: String,
    /// What is wrong, e.g. "must be an array, found null".
    pub problem: String,
}

impl RunShapeError {
    fn expected(path: impl Into<String>, expected: &str, found: &Value) -> Self {
        Self::expected_kind(path, expected, kind_of(found))
    }

    /// [`Self::expected`] when only the found value's [`kind_of`] is known.
    pub(super) fn expected_kind(path: impl Into<String>, expected: &str, found: &str) -> Self {
        RunShapeError { path: path.into(), problem: format!("must be {expected}, found {found}") }
    }
}

/// A human name for a JSON value's type, for error messages.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An agent, workflow or planning run, as the reference runtime persists it.
///
/// Loading applies the reference's normalisation (defaults, the five lineage keys, the fixed
/// metrics shape) so that every surface sees what the reference saw; anything else in the
/// record — unknown top-level keys, unknown metadata, unknown lineage or timing keys, odd
/// entries — is kept and written back unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: String,
    pub input: Value,
    pub state: Map<String, Value>,
    pub messages: Vec<Value>,
    pub steps: Vec<Step>,
    pub tool_calls: Vec<ToolCall>,
    pub tool_results: Vec<Value>,
    pub checkpoints: Vec<Checkpoint>,
    pub errors: Vec<RunError>,
    pub events: Vec<Event>,
    pub timestamps: Timestamps,
    pub status: RunStatus,
    pub output: Value,
    /// `None` is JSON `null`.
    pub pending_approval: Option<PendingApproval>,
    /// `None` is JSON `null`.
    pub pending_pause: Option<PendingPause>,
    pub metrics: Metrics,
    pub metadata: Metadata,
    /// Top-level keys the reference record does not have.
    pub extra: Map<String, Value>,
}

/// The top-level keys of a run, in the order the reference writes them.
pub const RUN_KEYS: [&str; 17] = [
    "id",
    "input",
    "state",
    "messages",
    "steps",
    "toolCalls",
    "toolResults",
    "checkpoints",
    "errors",
    "events",
    "timestamps",
    "status",
    "output",
    "pendingApproval",
    "pendingPause",
    "metrics",
    "metadata",
];

impl Run {
    /// A new, empty run (status `pending`) with the given id and creation time.
    pub fn new(id: impl Into<String>, created_at: impl Into<String>) -> Run {
        let id = id.into();
        let created_at = created_at.into();
        Run {
            input: Value::String(String::new()),
            state: Map::new(),
            messages: Vec::new(),
            steps: Vec::new(),
            tool_calls: Vec::new(),
            tool_results: Vec::new(),
            checkpoints: Vec::new(),
            errors: Vec::new(),
            events: Vec::new(),
            timestamps: Timestamps {
                created_at: Some(created_at.clone()),
                updated_at: Some(created_at),
                ..Timestamps::default()
            },
            status: RunStatus::Pending,
            output: Value::Null,
            pending_approval: None,
            pending_pause: None,
            metrics: Metrics::default(),
            metadata: Metadata { lineage: Lineage::root(&id), ..Metadata::default() },
            extra: Map::new(),
            id,
        }
    }

    /// Reads a run record, normalising it like the reference's `Run.fromJSON`.
    pub fn from_value(value: Value) -> Result<Run, RunShapeError> {
        let Value::Object(record) = value else {
            return Err(RunShapeError::expected("(run)", "an object", &value));
        };
        RunFields::from_map(record).into_run()
    }

    /// Reads a run record from JSON text in one pass, without building the record as a
    /// `Value` first: the same run, and the same shape error, as
    /// `Run::from_value(serde_json::from_slice(bytes)?)`. The outer error is the text's JSON
    /// syntax (serde_json's, at the same position); the inner one the record's shape.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Result<Run, RunShapeError>, serde_json::Error> {
        super::decode::read_record(serde_json::Deserializer::from_slice(bytes))
    }

    /// [`Run::from_json_slice`] for text, with the errors of `serde_json::from_str`.
    pub fn from_json_str(text: &str) -> Result<Result<Run, RunShapeError>, serde_json::Error> {
        super::decode::read_record(serde_json::Deserializer::from_str(text))
    }

    /// The record as JSON, exactly as it is stored (reference key order, then extras).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The record as the reference's file store writes it: `JSON.stringify(run, null, 2)`.
    pub fn to_pretty_json(&self) -> String {
        super::json_text::to_pretty_string(self).unwrap_or_default()
    }

    pub fn lineage(&self) -> &Lineage {
        &self.metadata.lineage
    }

    /// `metadata.lineage.rootRunId`, which normalisation guarantees (defaults to the run id).
    pub fn root_run_id(&self) -> &str {
        &self.metadata.lineage.root_run_id
    }

    pub fn parent_run_id(&self) -> Option<&str> {
        self.metadata.lineage.parent_run_id.as_deref()
    }

    /// `metadata.workflowId`: which workflow runtime owns the run, if any.
    pub fn workflow_id(&self) -> Option<&str> {
        self.metadata.get("workflowId").and_then(Value::as_str)
    }

    /// The last recorded error, when it is truthy (`errors[errors.length - 1] || null`).
    pub fn last_error(&self) -> Option<&RunError> {
        self.errors.last().filter(|error| error.non_object.as_ref().is_none_or(truthy))
    }

    /// Steps whose status is `failed`, in order.
    pub fn failed_steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|step| step.is_failed())
    }

    /// The last checkpoint, when it is truthy (`checkpoints[checkpoints.length - 1] || null`).
    pub fn last_checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoints.last().filter(|cp| cp.non_object.as_ref().is_none_or(truthy))
    }

    /// The checkpoint with this id.
    pub fn checkpoint(&self, checkpoint_id: &str) -> Option<&Checkpoint> {
        self.checkpoints.iter().find(|cp| cp.id.as_deref() == Some(checkpoint_id))
    }

    /// `pendingApproval`, when present (truthy).
    pub fn pending_approval(&self) -> Option<&PendingApproval> {
        self.pending_approval.as_ref().filter(|p| p.is_present())
    }

    /// `pendingPause`, when present (truthy).
    pub fn pending_pause(&self) -> Option<&PendingPause> {
        self.pending_pause.as_ref().filter(|p| p.is_present())
    }

    /// `createdAt`, when recorded.
    pub fn created_at(&self) -> Option<&str> {
        self.timestamps.created_at.as_deref()
    }
}

/// The top-level keys salvage models (see [`RUN_KEYS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunKey {
    Id,
    Input,
    State,
    Messages,
    Steps,
    ToolCalls,
    ToolResults,
    Checkpoints,
    Errors,
    Events,
    Timestamps,
    Status,
    Output,
    PendingApproval,
    PendingPause,
    Metrics,
    Metadata,
}

impl RunKey {
    pub(super) fn of(key: &str) -> Option<RunKey> {
        Some(match key {
            "id" => RunKey::Id,
            "input" => RunKey::Input,
            "state" => RunKey::State,
            "messages" => RunKey::Messages,
            "steps" => RunKey::Steps,
            "toolCalls" => RunKey::ToolCalls,
            "toolResults" => RunKey::ToolResults,
            "checkpoints" => RunKey::Checkpoints,
            "errors" => RunKey::Errors,
            "events" => RunKey::Events,
            "timestamps" => RunKey::Timestamps,
            "status" => RunKey::Status,
            "output" => RunKey::Output,
            "pendingApproval" => RunKey::PendingApproval,
            "pendingPause" => RunKey::PendingPause,
            "metrics" => RunKey::Metrics,
            "metadata" => RunKey::Metadata,
            _ => return None,
        })
    }
}

/// What an array field held instead of an array: all [`spread`] needs for its error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotArray {
    /// A string of this many characters.
    String { chars: usize },
    /// Anything else, as [`kind_of`] names it.
    Kind(&'static str),
}

impl NotArray {
    pub(super) fn of(value: &Value) -> NotArray {
        match value {
            Value::String(text) => NotArray::String { chars: text.chars().count() },
            other => NotArray::Kind(kind_of(other)),
        }
    }
}

/// An array field as read: its entries, or what it held instead.
pub(super) type Spread<T> = Result<Vec<T>, NotArray>;

/// An array field's value as [`Spread`], each entry read with `read`.
fn spread_value<T>(value: Value, read: impl FnMut(Value) -> T) -> Spread<T> {
    match value {
        Value::Array(items) => Ok(items.into_iter().map(read).collect()),
        other => Err(NotArray::of(&other)),
    }
}

/// Reads an array field as the reference's `[...value]` does, except for strings: a missing
/// field is empty; anything that is not an array is a typed error naming the field (the
/// reference's `TypeError: <field> is not iterable`). The reference spreads a string into its
/// characters — `steps: "oops"` would become four phantom steps — which salvage refuses as it
/// refuses `null` (a named difference from the reference).
fn spread<T>(field: &str, value: Option<Spread<T>>) -> Result<Vec<T>, RunShapeError> {
    match value {
        None => Ok(Vec::new()),
        Some(Ok(items)) => Ok(items),
        Some(Err(NotArray::String { chars })) => Err(RunShapeError {
            path: field.into(),
            problem: format!(
                "must be an array, found a string of {chars} character(s) (the reference would spread it into one \
                 entry per character)"
            ),
        }),
        Some(Err(NotArray::Kind(kind))) => Err(RunShapeError {
            path: field.into(),
            problem: format!("must be an array, found {kind} (the reference fails with \"{field} is not iterable\")"),
        }),
    }
}

/// A record's top-level fields as read, before normalisation. [`Run::from_value`] and the
/// one-pass decode both fill one and call [`RunFields::into_run`], so that they normalise,
/// check and fail identically. A key read twice keeps its last value (as a `Value` map does).
#[derive(Debug, Default)]
pub(super) struct RunFields {
    pub id: Option<Value>,
    pub input: Option<Value>,
    pub state: Option<Value>,
    pub messages: Option<Spread<Value>>,
    pub steps: Option<Spread<Step>>,
    pub tool_calls: Option<Spread<ToolCall>>,
    pub tool_results: Option<Spread<Value>>,
    pub checkpoints: Option<Spread<Checkpoint>>,
    pub errors: Option<Spread<RunError>>,
    pub events: Option<Spread<Event>>,
    pub timestamps: Option<Value>,
    pub status: Option<Value>,
    pub output: Option<Value>,
    pub pending_approval: Option<Value>,
    pub pending_pause: Option<Value>,
    pub metrics: Option<Value>,
    pub metadata: Option<Value>,
    /// Unknown keys, in record order.
    pub extra: Map<String, Value>,
}

impl RunFields {
    fn from_map(record: Map<String, Value>) -> RunFields {
        let mut fields = RunFields::default();
        for (key, value) in record {
            match RunKey::of(&key) {
                Some(known) => fields.set(known, value),
                None => {
                    fields.extra.insert(key, value);
                }
            }
        }
        fields
    }

    /// Sets a modelled field from its JSON value.
    pub(super) fn set(&mut self, key: RunKey, value: Value) {
        match key {
            RunKey::Id => self.id = Some(value),
            RunKey::Input => self.input = Some(value),
            RunKey::State => self.state = Some(value),
            RunKey::Messages => self.messages = Some(spread_value(value, |item| item)),
            RunKey::Steps => self.steps = Some(spread_value(value, Step::from_value)),
            RunKey::ToolCalls => self.tool_calls = Some(spread_value(value, ToolCall::from_value)),
            RunKey::ToolResults => self.tool_results = Some(spread_value(value, |item| item)),
            RunKey::Checkpoints => self.checkpoints = Some(spread_value(value, Checkpoint::from_value)),
            RunKey::Errors => self.errors = Some(spread_value(value, RunError::from_value)),
            RunKey::Events => self.events = Some(spread_value(value, Event::from_value)),
            RunKey::Timestamps => self.timestamps = Some(value),
            RunKey::Status => self.status = Some(value),
            RunKey::Output => self.output = Some(value),
            RunKey::PendingApproval => self.pending_approval = Some(value),
            RunKey::PendingPause => self.pending_pause = Some(value),
            RunKey::Metrics => self.metrics = Some(value),
            RunKey::Metadata => self.metadata = Some(value),
        }
    }

    /// Normalises the fields into a run; the first shape problem, in the order the fields
    /// are checked (not the order of the record), is the error.
    pub(super) fn into_run(self) -> Result<Run, RunShapeError> {
        let id = match self.id {
            Some(Value::String(id)) if !id.is_empty() => id,
            Some(other) if !other.is_null() => return Err(RunShapeError::expected("id", "a non-empty string", &other)),
            _ => {
                return Err(RunShapeError { path: "id".into(), problem: "is missing: every run needs an id".into() });
            }
        };
        let input = self.input.unwrap_or_else(|| Value::String(String::new()));
        let state = match self.state {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map,
            Some(other) => return Err(RunShapeError::expected("state", "an object", &other)),
        };
        let messages = spread("messages", self.messages)?;
        let steps = spread("steps", self.steps)?;
        let tool_calls = spread("toolCalls", self.tool_calls)?;
        let tool_results = spread("toolResults", self.tool_results)?;
        let checkpoints = spread("checkpoints", self.checkpoints)?;
        let errors = spread("errors", self.errors)?;
        let events = spread("events", self.events)?;
        let timestamps = Timestamps::from_value(self.timestamps)?;
        let status = match self.status {
            None => RunStatus::Pending,
            Some(Value::String(status)) => RunStatus::parse_owned(status),
            Some(other) => return Err(RunShapeError::expected("status", "a string", &other)),
        };
        let output = self.output.unwrap_or(Value::Null);
        let pending_approval = match self.pending_approval {
            None | Some(Value::Null) => None,
            Some(value) => Some(PendingApproval::from_value(value)),
        };
        let pending_pause = match self.pending_pause {
            None | Some(Value::Null) => None,
            Some(value) => Some(PendingPause::from_value(value)),
        };
        let metrics = Metrics::from_value(self.metrics)?;
        let metadata = Metadata::from_value(self.metadata, &id)?;
        Ok(Run {
            id,
            input,
            state,
            messages,
            steps,
            tool_calls,
            tool_results,
            checkpoints,
            errors,
            events,
            timestamps,
            status,
            output,
            pending_approval,
            pending_pause,
            metrics,
            metadata,
            extra: self.extra,
        })
    }
}

impl Serialize for Run {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("input", &self.input)?;
        map.serialize_entry("state", &self.state)?;
        map.serialize_entry("messages", &self.messages)?;
        map.serialize_entry("steps", &self.steps)?;
        map.serialize_entry("toolCalls", &self.tool_calls)?;
        map.serialize_entry("toolResults", &self.tool_results)?;
        map.serialize_entry("checkpoints", &self.checkpoints)?;
        map.serialize_entry("errors", &self.errors)?;
        map.serialize_entry("events", &self.events)?;
        map.serialize_entry("timestamps", &self.timestamps)?;
        map.serialize_entry("status", &self.status)?;
        map.serialize_entry("output", &self.output)?;
        map.serialize_entry("pendingApproval", &self.pending_approval)?;
        map.serialize_entry("pendingPause", &self.pending_pause)?;
        map.serialize_entry("metrics", &self.metrics)?;
        map.serialize_entry("metadata", &self.metadata)?;
        for (key, value) in &self.extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Run {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The shape error is made here, outside the deserializer, so that serde_json does not
        // append a position to it (as it did not when this read a `Value` first).
        super::decode::RunRecord::deserialize(deserializer)?.0.map_err(serde::de::Error::custom)
    }
}

/// Reads `a || null` for an id or timestamp: strings pass (an empty string is falsy and
/// becomes absent), JavaScript-falsy values are absent, anything else is a shape error.
fn optional_string(path: &str, value: Option<Value>) -> Result<Option<String>, RunShapeError> {
    match value {
        Some(Value::String(text)) if !text.is_empty() => Ok(Some(text)),
        Some(ref v) if v.is_string() || !truthy(v) => Ok(None),
        None => Ok(None),
        Some(other) => Err(RunShapeError::expected(path, "a string or null", &other)),
    }
}

/// Reads `a || 0` for a metric.
fn number_or_zero(path: &str, value: Option<Value>) -> Result<JsNumber, RunShapeError> {
    match value {
        Some(Value::Number(n)) => Ok(JsNumber(n.as_f64().unwrap_or(0.0))),
        Some(ref v) if !truthy(v) => Ok(JsNumber::ZERO),
        None => Ok(JsNumber::ZERO),
        Some(other) => Err(RunShapeError::expected(path, "a number", &other)),
    }
}

/// Reads an optional sub-object: missing or falsy is empty, an object is taken, anything else
/// is a shape error.
fn object_or_empty(path: &str, value: Option<Value>) -> Result<Map<String, Value>, RunShapeError> {
    match value {
        Some(Value::Object(map)) => Ok(map),
        Some(ref v) if !truthy(v) => Ok(Map::new()),
        None => Ok(Map::new()),
        Some(other) => Err(RunShapeError::expected(path, "an object", &other)),
    }
}

/// `timestamps`: always the six keys; a missing timestamp is `null`.
///
/// The reference stamps a missing `createdAt` / `updatedAt` with the time of loading; salvage
/// leaves them `null` so that loading the same record twice gives the same run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timestamps {
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub updated_at: Option<String>,
    pub completed_at: Option<String>,
    pub failed_at: Option<String>,
    pub cancelled_at: Option<String>,
    /// Keys the reference does not have (it drops them; salvage keeps them).
    pub extra: Map<String, Value>,
}

impl Timestamps {
    fn from_value(value: Option<Value>) -> Result<Timestamps, RunShapeError> {
        let mut map = match value {
            None => Map::new(),
            Some(Value::Object(map)) => map,
            Some(other) => return Err(RunShapeError::expected("timestamps", "an object", &other)),
        };
        let mut field = |key: &str| optional_string(&format!("timestamps.{key}"), map.shift_remove(key));
        Ok(Timestamps {
            created_at: field("createdAt")?,
            started_at: field("startedAt")?,
            updated_at: field("updatedAt")?,
            completed_at: field("completedAt")?,
            failed_at: field("failedAt")?,
            cancelled_at: field("cancelledAt")?,
            extra: map,
        })
    }
}

impl Serialize for Timestamps {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("createdAt", &self.created_at)?;
        map.serialize_entry("startedAt", &self.started_at)?;
        map.serialize_entry("updatedAt", &self.updated_at)?;
        map.serialize_entry("completedAt", &self.completed_at)?;
        map.serialize_entry("failedAt", &self.failed_at)?;
        map.serialize_entry("cancelledAt", &self.cancelled_at)?;
        for (key, value) in &self.extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// `metrics`, in the reference's fixed shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub token_usage: TokenUsage,
    pub cost: JsNumber,
    pub timings: Timings,
    pub child_runs: ChildRuns,
    /// Free-form (`metrics.debug || {}`).
    pub debug: Value,
    /// Keys the reference drops on load; salvage keeps them in the record (not in surfaces).
    pub extra: Map<String, Value>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            token_usage: TokenUsage::default(),
            cost: JsNumber::ZERO,
            timings: Timings::default(),
            child_runs: ChildRuns::default(),
            debug: Value::Object(Map::new()),
            extra: Map::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenUsage {
    pub prompt: JsNumber,
    pub completion: JsNumber,
    pub total: JsNumber,
    pub extra: Map<String, Value>,
}

/// The five timings the reference keeps (`retrievalMs, modelMs, toolMs, workflowMs,
/// verifierMs`); other timing keys are kept in `extra` but, as in the reference, are not part
/// of the normalised metrics the surfaces see.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    pub retrieval_ms: JsNumber,
    pub model_ms: JsNumber,
    pub tool_ms: JsNumber,
    pub workflow_ms: JsNumber,
    pub verifier_ms: JsNumber,
    pub extra: Map<String, Value>,
}

impl Timings {
    /// The normalised timings as `(key, value)` pairs, in the reference's order.
    pub fn entries(&self) -> [(&'static str, JsNumber); 5] {
        [
            ("retrievalMs", self.retrieval_ms),
            ("modelMs", self.model_ms),
            ("toolMs", self.tool_ms),
            ("workflowMs", self.workflow_ms),
            ("verifierMs", self.verifier_ms),
        ]
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChildRuns {
    /// Taken from the record as is; the reference does not recompute it from `items`.
    pub count: JsNumber,
    pub items: Vec<Value>,
    pub extra: Map<String, Value>,
}

impl Metrics {
    fn from_value(value: Option<Value>) -> Result<Metrics, RunShapeError> {
        let mut map = match value {
            None => Map::new(),
            Some(Value::Object(map)) => map,
            Some(other) => return Err(RunShapeError::expected("metrics", "an object", &other)),
        };
        let mut usage = object_or_empty("metrics.tokenUsage", map.shift_remove("tokenUsage"))?;
        let token_usage = TokenUsage {
            prompt: number_or_zero("metrics.tokenUsage.prompt", usage.shift_remove("prompt"))?,
            completion: number_or_zero("metrics.tokenUsage.completion", usage.shift_remove("completion"))?,
            total: number_or_zero("metrics.tokenUsage.total", usage.shift_remove("total"))?,
            extra: usage,
        };
        let cost = number_or_zero("metrics.cost", map.shift_remove("cost"))?;
        let mut times = object_or_empty("metrics.timings", map.shift_remove("timings"))?;
        let mut timing = |key: &str| number_or_zero(&format!("metrics.timings.{key}"), times.shift_remove(key));
        let timings = Timings {
            retrieval_ms: timing("retrievalMs")?,
            model_ms: timing("modelMs")?,
            tool_ms: timing("toolMs")?,
            workflow_ms: timing("workflowMs")?,
            verifier_ms: timing("verifierMs")?,
            extra: times,
        };
        let mut children = object_or_empty("metrics.childRuns", map.shift_remove("childRuns"))?;
        let child_runs = ChildRuns {
            count: number_or_zero("metrics.childRuns.count", children.shift_remove("count"))?,
            items: match children.shift_remove("items") {
                Some(Value::Array(items)) => items,
                Some(ref v) if !truthy(v) => Vec::new(),
                None => Vec::new(),
                Some(other) => return Err(RunShapeError::expected("metrics.childRuns.items", "an array", &other)),
            },
            extra: children,
        };
        let debug = match map.shift_remove("debug") {
            Some(v) if truthy(&v) => v,
            _ => Value::Object(Map::new()),
        };
        Ok(Metrics { token_usage, cost, timings, child_runs, debug, extra: map })
    }

    /// The metrics exactly as the reference's normalised run holds them (what
    /// `RunInspector.summarize` returns as `metrics`): the fixed shape, no extra keys.
    pub fn reference_value(&self) -> Value {
        let mut timings = Map::new();
        for (key, value) in self.timings.entries() {
            timings.insert(key.into(), value.to_json());
        }
        serde_json::json!({
            "tokenUsage": {
                "prompt": self.token_usage.prompt,
                "completion": self.token_usage.completion,
                "total": self.token_usage.total,
            },
            "cost": self.cost,
            "timings": timings,
            "childRuns": { "count": self.child_runs.count, "items": self.child_runs.items },
            "debug": self.debug,
        })
    }
}

fn with_extra(mut value: Map<String, Value>, extra: &Map<String, Value>) -> Value {
    for (key, item) in extra {
        value.insert(key.clone(), item.clone());
    }
    Value::Object(value)
}

impl Serialize for Metrics {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut usage = Map::new();
        usage.insert("prompt".into(), self.token_usage.prompt.to_json());
        usage.insert("completion".into(), self.token_usage.completion.to_json());
        usage.insert("total".into(), self.token_usage.total.to_json());
        let mut timings = Map::new();
        for (key, value) in self.timings.entries() {
            timings.insert(key.into(), value.to_json());
        }
        let mut children = Map::new();
        children.insert("count".into(), self.child_runs.count.to_json());
        children.insert("items".into(), Value::Array(self.child_runs.items.clone()));
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("tokenUsage", &with_extra(usage, &self.token_usage.extra))?;
        map.serialize_entry("cost", &js_number_value(self.cost.0))?;
        map.serialize_entry("timings", &with_extra(timings, &self.timings.extra))?;
        map.serialize_entry("childRuns", &with_extra(children, &self.child_runs.extra))?;
        map.serialize_entry("debug", &self.debug)?;
        for (key, value) in &self.extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// `metadata`: free-form keys plus the normalised `lineage`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// Every key except `lineage`, in record order.
    pub entries: Map<String, Value>,
    pub lineage: Lineage,
    /// Where `lineage` sits among the keys (the reference appends it when it was missing).
    pub lineage_position: usize,
}

impl Metadata {
    fn from_value(value: Option<Value>, run_id: &str) -> Result<Metadata, RunShapeError> {
        let mut entries = match value {
            None => Map::new(),
            Some(Value::Object(map)) => map,
            Some(other) => return Err(RunShapeError::expected("metadata", "an object", &other)),
        };
        let lineage_position = entries.keys().position(|key| key == "lineage").unwrap_or(entries.len());
        let lineage = Lineage::from_value(entries.shift_remove("lineage"), run_id)?;
        Ok(Metadata { entries, lineage, lineage_position })
    }

    /// A metadata key (never `lineage`; use the typed field).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.get(key)
    }

    /// Sets a metadata key. A new key goes after the existing ones (and after `lineage`), as
    /// an assignment to a JavaScript object does.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        self.entries.insert(key.into(), value);
    }

    /// Metadata as the reference holds it: every key, with the normalised five-key lineage.
    pub fn reference_value(&self) -> Value {
        let mut map = Map::new();
        self.write_entries(&mut map, self.lineage.reference_value());
        Value::Object(map)
    }

    fn write_entries(&self, map: &mut Map<String, Value>, lineage: Value) {
        let mut lineage = Some(lineage);
        for (index, (key, value)) in self.entries.iter().enumerate() {
            if index == self.lineage_position
                && let Some(lineage) = lineage.take()
            {
                map.insert("lineage".into(), lineage);
            }
            map.insert(key.clone(), value.clone());
        }
        if let Some(lineage) = lineage {
            map.insert("lineage".into(), lineage);
        }
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = Map::new();
        self.write_entries(&mut out, serde_json::to_value(&self.lineage).unwrap_or(Value::Null));
        out.serialize(serializer)
    }
}

/// `metadata.lineage`, always the reference's five keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lineage {
    /// Trace root; defaults to the run's own id.
    pub root_run_id: String,
    /// Structural parent (workflow → child agent, delegation).
    pub parent_run_id: Option<String>,
    pub child_run_ids: Vec<String>,
    /// Source run of a branch or partial replay.
    pub branch_origin_run_id: Option<String>,
    /// Checkpoint a branch or partial replay came from.
    pub branch_checkpoint_id: Option<String>,
    /// Keys the reference drops on load; salvage keeps them in the record.
    pub extra: Map<String, Value>,
}

impl Lineage {
    /// The lineage of a run that is its own root.
    pub fn root(run_id: &str) -> Lineage {
        Lineage { root_run_id: run_id.to_owned(), ..Lineage::default() }
    }

    fn from_value(value: Option<Value>, run_id: &str) -> Result<Lineage, RunShapeError> {
        let mut map = object_or_empty("metadata.lineage", value)?;
        let mut id = |key: &str| optional_string(&format!("metadata.lineage.{key}"), map.shift_remove(key));
        let root_run_id = id("rootRunId")?.unwrap_or_else(|| run_id.to_owned());
        let parent_run_id = id("parentRunId")?;
        let branch_origin_run_id = id("branchOriginRunId")?;
        let branch_checkpoint_id = id("branchCheckpointId")?;
        let child_run_ids = match map.shift_remove("childRunIds") {
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(child) => Ok(child),
                    other => Err(RunShapeError::expected("metadata.lineage.childRunIds[]", "a string", &other)),
                })
                .collect::<Result<_, _>>()?,
            Some(ref v) if !truthy(v) => Vec::new(),
            None => Vec::new(),
            Some(other) => return Err(RunShapeError::expected("metadata.lineage.childRunIds", "an array", &other)),
        };
        Ok(Lineage {
            root_run_id,
            parent_run_id,
            child_run_ids,
            branch_origin_run_id,
            branch_checkpoint_id,
            extra: map,
        })
    }

    /// The five keys, exactly as the reference's normalised run holds them.
    pub fn reference_value(&self) -> Value {
        serde_json::json!({
            "rootRunId": self.root_run_id,
            "parentRunId": self.parent_run_id,
            "childRunIds": self.child_run_ids,
            "branchOriginRunId": self.branch_origin_run_id,
            "branchCheckpointId": self.branch_checkpoint_id,
        })
    }
}

impl Serialize for Lineage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("rootRunId", &self.root_run_id)?;
        map.serialize_entry("parentRunId", &self.parent_run_id)?;
        map.serialize_entry("childRunIds", &self.child_run_ids)?;
        map.serialize_entry("branchOriginRunId", &self.branch_origin_run_id)?;
        map.serialize_entry("branchCheckpointId", &self.branch_checkpoint_id)?;
        for (key, value) in &self.extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hand_built_records_get_the_reference_defaults() {
        let run = Run::from_value(json!({"id": "r1", "status": "failed"})).map_err(|e| e.to_string());
        let run = run.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run.root_run_id(), "r1");
        assert_eq!(run.input, json!(""));
        assert_eq!(run.metrics.reference_value()["timings"]["verifierMs"], json!(0));
        let value = run.to_value();
        assert_eq!(value["metadata"]["lineage"]["childRunIds"], json!([]));
        assert_eq!(value["pendingPause"], Value::Null);
        let keys: Vec<&str> = value.as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default();
        assert_eq!(keys, RUN_KEYS);
    }

    /// The reference stamps a missing `createdAt` / `updatedAt` with the load time, so the same
    /// record loads differently twice; salvage leaves them `null`.
    #[test]
    fn difference_missing_timestamps_stay_null() {
        let record = json!({"id": "r1", "status": "failed"});
        let first = Run::from_value(record.clone()).unwrap_or_else(|e| panic!("{e}"));
        let second = Run::from_value(record).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.timestamps.created_at, None);
        assert_eq!(first.timestamps.updated_at, None);
        assert_eq!(first.to_value(), second.to_value(), "loading the same record twice gives the same run");
        assert_eq!(first.to_value()["timestamps"]["createdAt"], Value::Null);
    }

    #[test]
    fn falsy_lineage_ids_normalise_like_javascript() {
        let run = Run::from_value(json!({
            "id": "r2",
            "metadata": {"lineage": {"rootRunId": "", "parentRunId": "", "custom": 1}, "queue": "q"}
        }));
        let run = run.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run.root_run_id(), "r2");
        assert_eq!(run.parent_run_id(), None);
        assert_eq!(run.lineage().extra.get("custom"), Some(&json!(1)), "kept in the record");
        assert_eq!(run.lineage().reference_value().as_object().map(|m| m.len()), Some(5));
        // lineage keeps its place before `queue`
        let keys: Vec<String> =
            run.to_value()["metadata"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        assert_eq!(keys, ["lineage", "queue"]);
    }

    #[test]
    fn difference_a_list_field_of_the_wrong_type_is_a_typed_error_naming_it() {
        for field in ["messages", "steps", "toolCalls", "toolResults", "checkpoints", "errors", "events"] {
            for wrong in [json!("oops"), json!(null), json!(7), json!({"0": "a"})] {
                let error = Run::from_value(json!({"id": "r3", field: wrong.clone()})).err();
                assert_eq!(error.as_ref().map(|e| e.path.as_str()), Some(field), "{field}: {wrong}");
            }
        }
        let error = Run::from_value(json!({"id": "r4", "steps": "oops"})).err().map(|e| e.to_string());
        assert!(error.as_deref().is_some_and(|e| e.contains("steps") && e.contains("string")), "{error:?}");
        let listed = Run::from_value(json!({"id": "r5", "steps": [], "checkpoints": []}));
        assert!(listed.is_ok_and(|run| run.steps.is_empty() && run.checkpoints.is_empty()));
    }

    #[test]
    fn unknown_keys_everywhere_survive() {
        let raw = json!({
            "id": "r5", "input": {"q": 1}, "state": {}, "messages": [], "steps": [], "toolCalls": [],
            "toolResults": [], "checkpoints": [], "errors": ["plain string"], "events": [],
            "timestamps": {"createdAt": "2025-01-01T00:00:00.000Z", "startedAt": null, "updatedAt": null,
                           "completedAt": null, "failedAt": null, "cancelledAt": null, "archivedAt": "x"},
            "status": "quarantined", "output": null, "pendingApproval": null, "pendingPause": null,
            "metrics": {"tokenUsage": {"prompt": 1, "completion": 2, "total": 3, "cached": 9}, "cost": 0.5,
                        "timings": {"retrievalMs": 0, "modelMs": 1.5, "toolMs": 0, "workflowMs": 0, "verifierMs": 0, "customMs": 4},
                        "childRuns": {"count": 0, "items": []}, "debug": {}, "gpuSeconds": 2},
            "metadata": {"lineage": {"rootRunId": "r5", "parentRunId": null, "childRunIds": [],
                                     "branchOriginRunId": null, "branchCheckpointId": null, "tenant": "t"}},
            "runtimeKind": "agent"
        });
        let run = Run::from_value(raw.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run.status, RunStatus::Other("quarantined".into()));
        assert_eq!(run.to_value(), raw);
        assert_eq!(run.metrics.reference_value()["timings"].as_object().map(|m| m.len()), Some(5));
    }
}
