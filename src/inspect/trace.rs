//! `TraceSerializer` (trace schema 1.1): portable run traces, partial traces cut at a
//! checkpoint, bundles of traces, their validation and import.
//!
//! Exports carry the run record losslessly (every key salvage keeps, see [`crate::model`]);
//! for records written by the reference that is exactly the reference's `run.toJSON()`.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::InspectError;
use super::js::{js_key_order, js_to_string, js_trim_is_empty, prop, same_value_zero};
use crate::model::Run;
use crate::model::json::{now_iso, truthy};
use crate::model::json_text::PrettyJson;
use crate::store::{Partial, RunStore, StoreError, StoredRun};

pub const SCHEMA_VERSION: &str = "1.1";
pub const RUN_FORMAT: &str = "agnostic-agents-run-trace";
pub const BUNDLE_FORMAT: &str = "agnostic-agents-trace-bundle";

/// `TraceSerializer.describeSchema()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSchema {
    pub schema_version: &'static str,
    pub run_format: &'static str,
    pub bundle_format: &'static str,
    pub required_run_fields: [&'static str; 5],
    pub required_bundle_fields: [&'static str; 5],
}

pub fn describe_schema() -> TraceSchema {
    TraceSchema {
        schema_version: SCHEMA_VERSION,
        run_format: RUN_FORMAT,
        bundle_format: BUNDLE_FORMAT,
        required_run_fields: ["schemaVersion", "format", "exportedAt", "metadata", "run"],
        required_bundle_fields: ["schemaVersion", "format", "exportedAt", "metadata", "traces"],
    }
}

/// `traceType` of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceType {
    Run,
    Partial,
    Bundle,
}

/// A run trace (`traceType` `run` or `partial`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunTrace {
    pub schema_version: String,
    pub format: String,
    pub trace_type: TraceType,
    pub exported_at: String,
    pub metadata: Map<String, Value>,
    pub run: Value,
}

/// A bundle of run traces.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceBundle {
    pub schema_version: String,
    pub format: String,
    pub trace_type: TraceType,
    pub exported_at: String,
    pub metadata: Map<String, Value>,
    /// One `{runId, status}` per trace, same order.
    pub index: Vec<BundleIndexEntry>,
    pub traces: Vec<RunTrace>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleIndexEntry {
    /// The run id, or `null`.
    pub run_id: Value,
    /// The status, or `null` when empty.
    pub status: Value,
}

impl RunTrace {
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl TraceBundle {
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// `TraceSerializer.exportRun(run, metadata)`.
pub fn export_run(run: &Run, metadata: Map<String, Value>) -> RunTrace {
    RunTrace {
        schema_version: SCHEMA_VERSION.to_owned(),
        format: RUN_FORMAT.to_owned(),
        trace_type: TraceType::Run,
        exported_at: now_iso(),
        metadata,
        run: run.to_value(),
    }
}

/// [`export_run`] as it is written, borrowing the run: serialised, it is the same JSON as
/// `export_run(run, metadata).to_value()`, without first copying the run into a `Value`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunTraceOf<'a> {
    schema_version: &'static str,
    format: &'static str,
    trace_type: TraceType,
    exported_at: String,
    metadata: Cow<'a, Map<String, Value>>,
    run: &'a Run,
}

/// [`export_bundle`] as it is written, borrowing the runs (see [`RunTraceOf`]).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceBundleOf<'a> {
    schema_version: &'static str,
    format: &'static str,
    trace_type: TraceType,
    exported_at: String,
    metadata: &'a Map<String, Value>,
    index: Vec<BundleIndexEntryOf<'a>>,
    traces: Vec<RunTraceOf<'a>>,
}

/// [`BundleIndexEntry`] borrowing the run's id and status.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BundleIndexEntryOf<'a> {
    run_id: &'a str,
    /// `null` when the status is empty.
    status: Option<&'a str>,
}

/// A run's status in a bundle's index: `None` (`null`) when it is empty.
fn index_status(run: &Run) -> Option<&str> {
    Some(run.status.as_str()).filter(|status| !status.is_empty())
}

/// [`export_run`], to be serialised straight from the run.
pub fn export_run_of<'a>(run: &'a Run, metadata: &'a Map<String, Value>) -> RunTraceOf<'a> {
    RunTraceOf {
        schema_version: SCHEMA_VERSION,
        format: RUN_FORMAT,
        trace_type: TraceType::Run,
        exported_at: now_iso(),
        metadata: Cow::Borrowed(metadata),
        run,
    }
}

/// [`export_bundle`], to be serialised straight from the runs: the same traces, index and
/// times (each trace stamped as it is made, the bundle after them).
pub fn export_bundle_of<'a>(runs: &'a [Run], metadata: &'a Map<String, Value>) -> TraceBundleOf<'a> {
    let traces = runs
        .iter()
        .map(|run| RunTraceOf {
            schema_version: SCHEMA_VERSION,
            format: RUN_FORMAT,
            trace_type: TraceType::Run,
            exported_at: now_iso(),
            metadata: Cow::Owned(Map::new()),
            run,
        })
        .collect();
    let index = runs.iter().map(|run| BundleIndexEntryOf { run_id: &run.id, status: index_status(run) }).collect();
    TraceBundleOf {
        schema_version: SCHEMA_VERSION,
        format: BUNDLE_FORMAT,
        trace_type: TraceType::Bundle,
        exported_at: now_iso(),
        metadata,
        index,
        traces,
    }
}

/// How a bundle's text is laid out: as `serde_json::to_writer_pretty` writes it (a file), or
/// compact (for a writer that lays it out itself, like the console's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleLayout {
    Pretty,
    Compact,
}

/// One run's trace, rendered as it sits in a bundle's `traces` ([`write_rendered_bundle`]),
/// with what the bundle's index needs: an export renders each run as soon as it is read and
/// keeps only this text, never every decoded run at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedTrace {
    run_id: String,
    /// `None` when the run's status is empty (the index says `null`).
    status: Option<String>,
    text: Vec<u8>,
}

impl RenderedTrace {
    /// The trace of `run` (stamped now, with empty metadata, as in [`export_bundle_of`]).
    pub fn render(run: &Run, layout: BundleLayout) -> Result<RenderedTrace, serde_json::Error> {
        RenderedTrace::render_sized(run, layout, 0)
    }

    /// [`RenderedTrace::render`] into a buffer of `capacity` bytes (a guess from the trace
    /// before: growing a buffer of tens of kilobytes copies it each time).
    fn render_sized(run: &Run, layout: BundleLayout, capacity: usize) -> Result<RenderedTrace, serde_json::Error> {
        let metadata = Map::new();
        let trace = export_run_of(run, &metadata);
        let mut text = Vec::with_capacity(capacity);
        match layout {
            BundleLayout::Compact => serde_json::to_writer(&mut text, &trace)?,
            BundleLayout::Pretty => {
                // A trace in a bundle is two levels deep: the bundle's object, then `traces`.
                let formatter = PrettyJson::nested(2);
                trace.serialize(&mut serde_json::Serializer::with_formatter(&mut text, formatter))?;
            }
        }
        if text.capacity() > text.len() + text.len() / 4 {
            // Held until the bundle is written: a guess far too large is given back.
            text.shrink_to_fit();
        }
        let status = index_status(run).map(str::to_owned);
        Ok(RenderedTrace { run_id: run.id.clone(), status, text })
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }
}

/// Writes the bundle of `traces` (rendered with the same `layout`), stamped now, after them:
/// the same bytes as serialising [`export_bundle_of`] of their runs whole.
pub fn write_rendered_bundle(
    out: &mut impl std::io::Write,
    traces: &[RenderedTrace],
    metadata: &Map<String, Value>,
    layout: BundleLayout,
) -> std::io::Result<()> {
    let head = TraceBundleOf {
        schema_version: SCHEMA_VERSION,
        format: BUNDLE_FORMAT,
        trace_type: TraceType::Bundle,
        exported_at: now_iso(),
        metadata,
        index: traces
            .iter()
            .map(|trace| BundleIndexEntryOf { run_id: &trace.run_id, status: trace.status.as_deref() })
            .collect(),
        traces: Vec::new(),
    };
    // The head is the bundle with no traces, `traces` being its last field: written up to that
    // empty array, which the traces then fill.
    let text = match layout {
        BundleLayout::Pretty => crate::model::json_text::to_pretty_vec(&head)?,
        BundleLayout::Compact => serde_json::to_vec(&head)?,
    };
    // The empty array and the bundle's end; around the traces: before, between, after.
    let [empty_end, open, separator, end]: [&[u8]; 4] = match layout {
        BundleLayout::Pretty => [b"[]\n}", b"[\n    ", b",\n    ", b"\n  ]\n}"],
        BundleLayout::Compact => [b"[]}", b"[", b",", b"]}"],
    };
    let Some(head) = text.strip_suffix(empty_end) else {
        return Err(std::io::Error::other("a bundle's head must end with its traces"));
    };
    out.write_all(head)?;
    if traces.is_empty() {
        return out.write_all(empty_end);
    }
    out.write_all(open)?;
    for (position, trace) in traces.iter().enumerate() {
        if position > 0 {
            out.write_all(separator)?;
        }
        out.write_all(&trace.text)?;
    }
    out.write_all(end)
}

/// The traces of `run_ids` rendered for a bundle ([`RenderedTrace`]), in the order asked, as
/// [`get_runs`] reads them: the ids in two halves read at once, each half a batch of runs at a
/// time, rendered on a blocking thread and dropped before the next. Memory holds the texts
/// and two batches of runs, not every decoded run (whose maps were most of a large export's
/// memory and its page faults, issue 13); problems and missing ids as [`get_runs`] reports them.
pub async fn render_traces(
    store: &dyn RunStore,
    run_ids: &[String],
    layout: BundleLayout,
) -> Result<Partial<RenderedTrace>, InspectError> {
    let rendered = read_in_halves(run_ids, |half| async move {
        let mut out = Partial::default();
        for batch in half.chunks(RENDER_BATCH) {
            let read = store.get_many(batch).await?;
            out.problems.extend(read.problems);
            let runs = read.items;
            let traces = tokio::task::spawn_blocking(move || {
                let mut capacity = 0;
                runs.iter()
                    .map(|stored| {
                        let trace = RenderedTrace::render_sized(&stored.run, layout, capacity)?;
                        // Runs of one store are alike: room for a trace a little larger.
                        capacity = trace.text.len() + trace.text.len() / 8;
                        Ok(trace)
                    })
                    .collect::<Result<Vec<_>, serde_json::Error>>()
            })
            .await
            .map_err(|e| StoreError::Task(format!("rendering traces failed: {e}")))?
            .map_err(|e| StoreError::Task(format!("cannot serialise a trace: {e}")))?;
            out.items.extend(traces);
        }
        Ok(out)
    })
    .await?;
    Ok(rendered)
}

/// Runs read and rendered at a time by each half of [`render_traces`].
const RENDER_BATCH: usize = 50;

/// `store.get_many(run_ids)` in two halves read at once: decoding the records is most of an
/// export's work, and a store reads each half on its own blocking thread. Same items and
/// problems, in the same order, as one `get_many`.
pub async fn get_runs(store: &dyn RunStore, run_ids: &[String]) -> Result<Partial<StoredRun>, StoreError> {
    read_in_halves(run_ids, |half| store.get_many(half)).await
}

/// `read(run_ids)` as two reads of its halves at once (a store serves each on its own blocking
/// thread); the same items and problems, in the same order, as one read. Below twice
/// [`MIN_HALF`] ids, one read.
pub(crate) async fn read_in_halves<'a, T, Read, Reading>(
    run_ids: &'a [String],
    read: Read,
) -> Result<Partial<T>, StoreError>
where
    Read: Fn(&'a [String]) -> Reading,
    Reading: std::future::Future<Output = Result<Partial<T>, StoreError>>,
{
    if run_ids.len() < 2 * MIN_HALF {
        return read(run_ids).await;
    }
    let (first, second) = run_ids.split_at(run_ids.len() / 2);
    let (first, second) = tokio::join!(read(first), read(second));
    let (mut loaded, second) = (first?, second?);
    loaded.items.extend(second.items);
    loaded.problems.extend(second.problems);
    Ok(loaded)
}

/// Below twice this many runs, one read is quicker than two.
const MIN_HALF: usize = 32;

/// `TraceSerializer.exportPartialRun(run, {checkpointId, metadata})`: the run as a paused
/// branch of the checkpoint (the last one when `checkpoint_id` is `None`), with id
/// `<runId>:partial:<epoch ms>`.
///
/// Unlike the reference (`Date.now()`), the millisecond part comes from a process-wide
/// counter that never repeats, so two exports in the same millisecond get different ids.
pub fn export_partial_run(
    run: &Run,
    checkpoint_id: Option<&str>,
    metadata: Map<String, Value>,
) -> Result<RunTrace, InspectError> {
    let requested = checkpoint_id.filter(|id| !id.is_empty());
    let chosen = match requested {
        Some(id) => find_checkpoint(run, &Value::String(id.to_owned()), None),
        None => last_checkpoint(run),
    };
    let Some(chosen) = chosen else {
        return Err(match requested {
            Some(id) => InspectError::CheckpointNotFound { run_id: run.id.clone(), checkpoint_id: id.to_owned() },
            None => InspectError::NoCheckpoints { run_id: run.id.clone() },
        });
    };
    let checkpoint_id = run.checkpoints[chosen].get("id");
    let partial_id = format!("{}:partial:{}", run.id, crate::model::json::unique_epoch_millis());
    let mut branch_metadata = Map::new();
    branch_metadata.insert("replaySourceRunId".into(), Value::String(run.id.clone()));
    if let Some(id) = &checkpoint_id {
        branch_metadata.insert("replayCheckpointId".into(), id.clone());
    }
    let partial = branch_from_checkpoint(run, checkpoint_id.as_ref(), chosen, &partial_id, branch_metadata)?;
    let mut metadata = metadata;
    metadata.insert("mode".into(), json!("partial"));
    metadata.insert("sourceRunId".into(), Value::String(run.id.clone()));
    match checkpoint_id {
        Some(id) => {
            metadata.insert("checkpointId".into(), id);
        }
        // `checkpointId: undefined` keeps an existing key's place but drops it from the JSON.
        None => {
            metadata.shift_remove("checkpointId");
        }
    }
    Ok(RunTrace {
        schema_version: SCHEMA_VERSION.to_owned(),
        format: RUN_FORMAT.to_owned(),
        trace_type: TraceType::Partial,
        exported_at: now_iso(),
        metadata: js_key_order(metadata),
        run: partial.to_value(),
    })
}

/// `run.getCheckpoint()`: the last checkpoint, when it is truthy.
fn last_checkpoint(run: &Run) -> Option<usize> {
    run.last_checkpoint().map(|_| run.checkpoints.len() - 1)
}

/// `run.getCheckpoint(id)` for a truthy id: the first checkpoint whose `id` is `===` to it.
/// An object id is only ever identical to itself (`same_entry`).
fn find_checkpoint(run: &Run, id: &Value, same_entry: Option<usize>) -> Option<usize> {
    run.checkpoints.iter().enumerate().position(|(index, checkpoint)| match id {
        Value::Object(_) | Value::Array(_) => same_entry == Some(index),
        _ => same_value_zero(checkpoint.get("id").as_ref(), Some(id)),
    })
}

/// `run.branchFromCheckpoint(checkpointId, {id, metadata})` as the partial export uses it:
/// the snapshot's state as a new paused run whose lineage points at the source.
fn branch_from_checkpoint(
    run: &Run,
    checkpoint_id: Option<&Value>,
    chosen: usize,
    id: &str,
    metadata: Map<String, Value>,
) -> Result<Run, InspectError> {
    // The reference resolves the checkpoint again from its id.
    let resolved = match checkpoint_id.filter(|id| truthy(id)) {
        Some(id) => find_checkpoint(run, id, Some(chosen)),
        None => last_checkpoint(run),
    }
    .unwrap_or(chosen);
    let checkpoint = &run.checkpoints[resolved];
    // A checkpoint without a snapshot branches from the run as it is now.
    let snapshot = checkpoint.get("snapshot").filter(truthy).unwrap_or_else(|| run.to_value());
    let from_snapshot = |key: &str| prop(&snapshot, key);
    let now = now_iso();
    let lineage = run.lineage();
    let mut pause = Map::new();
    pause.insert(
        "reason".into(),
        Value::String(format!("Branched from checkpoint \"{}\".", js_to_string(checkpoint.get("label").as_ref()))),
    );
    pause.insert("stage".into(), json!("branch"));
    pause.insert("sourceRunId".into(), Value::String(run.id.clone()));
    if let Some(id) = checkpoint.get("id") {
        pause.insert("sourceCheckpointId".into(), id);
    }
    let mut metadata = metadata;
    metadata.insert(
        "lineage".into(),
        json!({
            "rootRunId": lineage.root_run_id,
            "parentRunId": lineage.parent_run_id,
            "childRunIds": [],
            "branchOriginRunId": run.id,
            "branchCheckpointId": checkpoint.get("id").filter(truthy).unwrap_or(Value::Null),
        }),
    );
    let mut record = Map::new();
    record.insert("id".into(), Value::String(id.to_owned()));
    record.insert("input".into(), run.input.clone());
    for key in ["state", "messages", "steps", "toolCalls", "toolResults"] {
        if let Some(value) = from_snapshot(key) {
            record.insert(key.into(), value);
        }
    }
    record.insert(
        "timestamps".into(),
        json!({"createdAt": now, "startedAt": null, "updatedAt": now, "completedAt": null, "failedAt": null, "cancelledAt": null}),
    );
    record.insert("status".into(), json!("paused"));
    record.insert("output".into(), Value::Null);
    record.insert("pendingApproval".into(), Value::Null);
    record.insert("pendingPause".into(), Value::Object(pause));
    if let Some(metrics) = from_snapshot("metrics") {
        record.insert("metrics".into(), metrics);
    }
    record.insert("metadata".into(), Value::Object(metadata));
    Run::from_value(Value::Object(record)).map_err(|source| InspectError::NotARun {
        context: format!(
            "run \"{}\": the snapshot of checkpoint {} cannot be branched",
            run.id,
            js_to_string(checkpoint.get("id").as_ref())
        ),
        source,
    })
}

/// `TraceSerializer.exportBundle(runs, metadata)`: each run exported with empty metadata.
pub fn export_bundle(runs: &[Run], metadata: Map<String, Value>) -> TraceBundle {
    let traces: Vec<RunTrace> = runs.iter().map(|run| export_run(run, Map::new())).collect();
    let index = runs
        .iter()
        .map(|run| BundleIndexEntry {
            run_id: Value::String(run.id.clone()),
            status: match run.status.as_str() {
                "" => Value::Null,
                status => Value::String(status.to_owned()),
            },
        })
        .collect();
    TraceBundle {
        schema_version: SCHEMA_VERSION.to_owned(),
        format: BUNDLE_FORMAT.to_owned(),
        trace_type: TraceType::Bundle,
        exported_at: now_iso(),
        metadata,
        index,
        traces,
    }
}

/// `{valid, errors, warnings}` of [`validate_trace`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceValidation {
    pub valid: bool,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// `TraceSerializer.validateTrace(trace, {allowBundle})`: the reference's checks, messages and
/// order. Bundles are errors unless `allow_bundle`; traces inside a bundle never may be bundles.
pub fn validate_trace(trace: &Value, allow_bundle: bool) -> TraceValidation {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    if !is_object(trace) {
        return TraceValidation { valid: false, errors: vec!["Trace payload must be an object.".to_owned()], warnings };
    }
    let field = |key: &str| prop(trace, key);
    let schema_version = field("schemaVersion");
    if !matches!(&schema_version, Some(Value::String(text)) if !js_trim_is_empty(text)) {
        errors.push("schemaVersion is required.".to_owned());
    }
    if let Some(version) = schema_version.as_ref().filter(|v| truthy(v))
        && version.as_str() != Some(SCHEMA_VERSION)
    {
        warnings.push(format!(
            "Trace schemaVersion \"{}\" differs from supported version \"{SCHEMA_VERSION}\".",
            js_to_string(Some(version))
        ));
    }
    match field("format").as_ref().and_then(Value::as_str) {
        Some(RUN_FORMAT) => {
            if !field("exportedAt").is_some_and(|v| truthy(&v)) {
                errors.push("exportedAt is required.".to_owned());
            }
            if !trace.as_object().is_some_and(|map| map.contains_key("metadata")) {
                errors.push("metadata is required.".to_owned());
            }
            match field("run").filter(is_object) {
                None => errors.push("run is required.".to_owned()),
                Some(run) => {
                    if !prop(&run, "id").is_some_and(|v| truthy(&v)) {
                        errors.push("run.id is required.".to_owned());
                    }
                    if !prop(&run, "status").is_some_and(|v| truthy(&v)) {
                        errors.push("run.status is required.".to_owned());
                    }
                }
            }
        }
        Some(BUNDLE_FORMAT) => {
            if !allow_bundle {
                errors.push("Bundle format is not allowed in this context.".to_owned());
            }
            match field("traces") {
                Some(Value::Array(traces)) => {
                    for (index, child) in traces.iter().enumerate() {
                        let child = validate_trace(child, false);
                        if !child.valid {
                            errors.push(format!("traces[{index}] is invalid: {}", child.errors.join(", ")));
                        }
                        warnings.extend(child.warnings);
                    }
                }
                _ => errors.push("traces must be an array.".to_owned()),
            }
        }
        _ => errors.push("Unsupported trace format.".to_owned()),
    }
    TraceValidation { valid: errors.is_empty(), errors, warnings }
}

/// `typeof value === 'object'` for a truthy value: objects and arrays.
fn is_object(value: &Value) -> bool {
    matches!(value, Value::Object(_) | Value::Array(_))
}

/// `TraceSerializer.importRun(trace)`: the run of a valid run (or partial) trace.
pub fn import_run(trace: &Value) -> Result<Run, InspectError> {
    let validation = validate_trace(trace, false);
    if !validation.valid {
        return Err(InspectError::InvalidTrace { errors: validation.errors });
    }
    run_of(trace, "trace")
}

fn run_of(trace: &Value, context: &str) -> Result<Run, InspectError> {
    let record = prop(trace, "run").unwrap_or(Value::Null);
    Run::from_value(record).map_err(|source| InspectError::NotARun { context: format!("{context}.run"), source })
}

/// `TraceSerializer.importBundle(bundle)`: the runs of a valid bundle, in order. A valid
/// single-run trace is refused with [`InspectError::NotABundle`] (the reference gives an empty
/// reason).
pub fn import_bundle(bundle: &Value) -> Result<Vec<Run>, InspectError> {
    let validation = validate_trace(bundle, true);
    if !validation.valid {
        return Err(InspectError::InvalidBundle { errors: validation.errors });
    }
    match prop(bundle, "traces") {
        Some(Value::Array(traces))
            if prop(bundle, "format").as_ref().and_then(Value::as_str) == Some(BUNDLE_FORMAT) =>
        {
            traces.iter().enumerate().map(|(index, trace)| run_of(trace, &format!("traces[{index}]"))).collect()
        }
        _ => Err(InspectError::NotABundle {
            format: prop(bundle, "format").map(|format| js_to_string(Some(&format))).unwrap_or_default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(value: Value) -> Run {
        Run::from_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    fn source() -> Run {
        run(json!({
            "id": "src", "input": "do it", "status": "failed", "output": "x",
            "steps": [{"id": "src:step:1"}, {"id": "src:step:2", "status": "failed"}],
            "errors": [{"name": "Error", "message": "boom"}], "events": [{"type": "run_started"}],
            "checkpoints": [
                {"id": "src:checkpoint:1", "label": "run_started", "status": "running",
                 "snapshot": {"state": {"a": 1}, "messages": [{"role": "user"}], "steps": [], "toolCalls": [], "toolResults": [],
                              "metrics": {"tokenUsage": {"prompt": 3}}, "status": "running"}},
                {"id": "src:checkpoint:2", "label": "run_failed", "status": "failed"}
            ],
            "metadata": {"lineage": {"rootRunId": "root", "parentRunId": "parent"}}
        }))
    }

    #[test]
    fn a_partial_export_is_a_paused_branch_of_the_checkpoint() {
        let metadata: Map<String, Value> =
            serde_json::from_value(json!({"mode": "x", "who": "ops"})).unwrap_or_default();
        let trace = export_partial_run(&source(), Some("src:checkpoint:1"), metadata).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(trace.trace_type, TraceType::Partial);
        assert_eq!(
            Value::Object(trace.metadata.clone()),
            json!({"mode": "partial", "who": "ops", "sourceRunId": "src", "checkpointId": "src:checkpoint:1"})
        );
        let partial = &trace.run;
        assert_eq!(partial["status"], "paused");
        assert_eq!(partial["state"], json!({"a": 1}));
        assert_eq!(partial["steps"], json!([]));
        assert_eq!(partial["errors"], json!([]));
        assert_eq!(partial["events"], json!([]));
        assert_eq!(partial["output"], Value::Null);
        assert_eq!(partial["metrics"]["tokenUsage"], json!({"prompt": 3, "completion": 0, "total": 0}));
        assert_eq!(
            partial["pendingPause"],
            json!({"reason": "Branched from checkpoint \"run_started\".", "stage": "branch", "sourceRunId": "src", "sourceCheckpointId": "src:checkpoint:1"})
        );
        assert_eq!(
            partial["metadata"],
            json!({"replaySourceRunId": "src", "replayCheckpointId": "src:checkpoint:1", "lineage": {
                "rootRunId": "root", "parentRunId": "parent", "childRunIds": [],
                "branchOriginRunId": "src", "branchCheckpointId": "src:checkpoint:1"}})
        );
        assert!(validate_trace(&trace.to_value(), false).valid);
    }

    #[test]
    fn a_checkpoint_without_snapshot_branches_from_the_current_run() {
        let trace = export_partial_run(&source(), None, Map::new()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(trace.metadata["checkpointId"], "src:checkpoint:2");
        assert_eq!(trace.run["steps"].as_array().map(Vec::len), Some(2), "the run's current steps");
        assert_eq!(trace.run["pendingPause"]["reason"], "Branched from checkpoint \"run_failed\".");
    }

    #[test]
    fn exports_keep_the_keys_the_reference_drops() {
        let record = json!({
            "id": "x", "status": "completed", "tenant": "acme",
            "metrics": {"timings": {"customMs": 5}},
            "metadata": {"lineage": {"rootRunId": "x", "shard": 3}}
        });
        let exported = export_run(&run(record), Map::new()).run;
        assert_eq!(exported["tenant"], "acme");
        assert_eq!(exported["metrics"]["timings"]["customMs"], 5);
        assert_eq!(exported["metadata"]["lineage"]["shard"], 3);
        let imported = import_run(&export_run(&run(exported.clone()), Map::new()).to_value());
        assert_eq!(imported.map(|run| run.to_value()).ok(), Some(exported));
    }

    /// `exportedAt` is the moment of export; everything else must match.
    fn without_export_times(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find("\"exportedAt\":") {
            let value = at + "\"exportedAt\":".len();
            out.push_str(&rest[..value]);
            let start = rest[value..].find('"').map_or(rest.len(), |start| value + start + 1);
            let end = rest[start..].find('"').map_or(rest.len(), |end| start + end);
            out.push_str("<time>");
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn traces_serialised_from_the_runs_are_the_value_traces() {
        let odd = run(json!({
            "id": "odd", "status": "", "tenant": "acme", "input": {"q": [1, 2.5, -0.0, 1e300, "\u{1}\"\\"]},
            "steps": ["not an object", {"durationMs": 1.0, "zz": 1, "id": "odd:step:1"}],
            "metrics": {"timings": {"customMs": 5}, "cost": 0.1},
            "metadata": {"queue": "q", "lineage": {"rootRunId": "odd", "shard": 3}}
        }));
        let runs = [source(), odd, source()];
        let metadata: Map<String, Value> =
            serde_json::from_value(json!({"ticket": "INC-1", "n": [1, {}]})).unwrap_or_default();
        let streamed =
            crate::model::json_text::to_pretty_string(&export_bundle_of(&runs, &metadata)).unwrap_or_default();
        let built =
            serde_json::to_string_pretty(&export_bundle(&runs, metadata.clone()).to_value()).unwrap_or_default();
        assert!(streamed.contains("\"tenant\": \"acme\""), "{streamed}");
        assert_eq!(without_export_times(&streamed), without_export_times(&built));
        for run in &runs {
            let streamed = serde_json::to_string(&export_run_of(run, &metadata)).unwrap_or_default();
            let built = serde_json::to_string(&export_run(run, metadata.clone()).to_value()).unwrap_or_default();
            assert_eq!(without_export_times(&streamed), without_export_times(&built));
        }
    }

    /// A bundle put together from traces rendered one by one is the bundle serialised whole,
    /// pretty and compact, with no run, one, and runs of odd shapes (a status that is empty,
    /// strings holding newlines and quotes).
    #[test]
    fn a_bundle_of_rendered_traces_is_the_bundle_serialised_whole() {
        let odd = run(json!({
            "id": "odd", "status": "", "input": {"q": ["line\nbreak", "\"quoted\"", {}, []]},
            "steps": [{"id": "odd:step:1", "output": {"text": "a\n  b"}}], "metadata": {}
        }));
        let metadata: Map<String, Value> =
            serde_json::from_value(json!({"ticket": "INC-1", "n": [1, {}]})).unwrap_or_default();
        for runs in [vec![], vec![source()], vec![source(), odd, source()]] {
            for layout in [BundleLayout::Pretty, BundleLayout::Compact] {
                let rendered: Vec<RenderedTrace> = runs
                    .iter()
                    .map(|run| RenderedTrace::render(run, layout).unwrap_or_else(|e| panic!("{e}")))
                    .collect();
                let mut written = Vec::new();
                write_rendered_bundle(&mut written, &rendered, &metadata, layout).unwrap_or_else(|e| panic!("{e}"));
                let whole = export_bundle_of(&runs, &metadata);
                let whole = match layout {
                    BundleLayout::Pretty => crate::model::json_text::to_pretty_string(&whole),
                    BundleLayout::Compact => serde_json::to_string(&whole),
                };
                assert_eq!(
                    without_export_times(&String::from_utf8_lossy(&written)),
                    without_export_times(&whole.unwrap_or_default()),
                    "{} runs, {layout:?}",
                    runs.len()
                );
            }
        }
    }

    /// A memory store of `count` runs `run-000`, `run-001`, ..., and their ids.
    async fn numbered_runs(count: usize) -> (crate::store::MemoryStore, Vec<String>) {
        let store = crate::store::MemoryStore::new();
        let mut ids = Vec::new();
        for index in 0..count {
            let id = format!("run-{index:03}");
            store
                .save(&Run::new(id.clone(), "2025-01-01T00:00:00.000Z"), crate::store::Expected::Absent)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            ids.push(id);
        }
        (store, ids)
    }

    /// In batches and halves, the traces keep the order asked; a missing id is left out.
    #[tokio::test]
    async fn rendered_traces_come_back_in_the_order_asked() {
        let (store, ids) = numbered_runs(130).await;
        let mut asked: Vec<String> = ids.iter().rev().cloned().collect();
        asked.insert(70, "missing".into());
        let rendered = render_traces(&store, &asked, BundleLayout::Compact).await.unwrap_or_else(|e| panic!("{e}"));
        let whole = store.get_many(&asked).await.unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = rendered.items.iter().map(RenderedTrace::run_id).collect();
        assert_eq!(names, whole.items.iter().map(|s| s.run.id.as_str()).collect::<Vec<_>>());
        assert_eq!(names.len(), 130);
        let first = &rendered.items[0];
        let trace: Value = serde_json::from_slice(&first.text).unwrap_or_default();
        assert_eq!(trace["run"]["id"], "run-129");
    }

    #[tokio::test]
    async fn runs_read_in_halves_come_back_in_the_order_asked() {
        let (store, ids) = numbered_runs(100).await;
        // Reversed, one id twice, one missing: as one get_many would answer.
        let mut asked: Vec<String> = ids.iter().rev().cloned().collect();
        asked.insert(10, "run-050".into());
        asked.insert(70, "missing".into());
        let halves = get_runs(&store, &asked).await.unwrap_or_else(|e| panic!("{e}"));
        let whole = store.get_many(&asked).await.unwrap_or_else(|e| panic!("{e}"));
        let names = |loaded: &Partial<StoredRun>| loaded.items.iter().map(|s| s.run.id.clone()).collect::<Vec<_>>();
        assert_eq!(names(&halves), names(&whole));
        assert_eq!(halves.items.len(), 101);
    }

    #[test]
    fn partial_export_errors_use_the_reference_messages() {
        let missing = export_partial_run(&source(), Some("src:checkpoint:missing"), Map::new()).err();
        assert_eq!(
            missing.map(|e| e.to_string()).as_deref(),
            Some("Checkpoint \"src:checkpoint:missing\" not found on run \"src\".")
        );
        let bare = run(json!({"id": "bare"}));
        let none = export_partial_run(&bare, None, Map::new()).err();
        assert_eq!(none.map(|e| e.to_string()).as_deref(), Some("Run \"bare\" has no checkpoints to export from."));
    }

    #[test]
    fn partial_ids_are_unique_within_a_millisecond() {
        let ids: Vec<String> = (0..50)
            .filter_map(|_| export_partial_run(&source(), None, Map::new()).ok())
            .filter_map(|trace| trace.run["id"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(ids.len(), 50);
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), 50, "{ids:?}");
        assert!(ids.iter().all(|id| {
            id.strip_prefix("src:partial:").is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
        }));
    }

    #[test]
    fn validation_messages_and_warnings_follow_the_reference() {
        assert_eq!(validate_trace(&json!("x"), false).errors, ["Trace payload must be an object."]);
        assert_eq!(
            validate_trace(&json!({}), false).errors,
            ["schemaVersion is required.", "Unsupported trace format."]
        );
        let old = json!({"schemaVersion": "1.0", "format": RUN_FORMAT, "run": {"id": "", "status": "ok"}});
        let result = validate_trace(&old, false);
        assert_eq!(result.errors, ["exportedAt is required.", "metadata is required.", "run.id is required."]);
        assert_eq!(result.warnings, ["Trace schemaVersion \"1.0\" differs from supported version \"1.1\"."]);
        let blank = json!({"schemaVersion": " \u{FEFF} ", "format": RUN_FORMAT, "exportedAt": "t", "metadata": null, "run": []});
        assert_eq!(
            validate_trace(&blank, false).errors,
            ["schemaVersion is required.", "run.id is required.", "run.status is required."]
        );
        let bundle = json!({"schemaVersion": "1.1", "format": BUNDLE_FORMAT, "traces": [
            {"schemaVersion": "2.0", "format": RUN_FORMAT, "exportedAt": "t", "metadata": {}, "run": {"id": "a", "status": "x"}},
            {"format": BUNDLE_FORMAT, "schemaVersion": "1.1", "traces": []}
        ]});
        let result = validate_trace(&bundle, false);
        assert_eq!(
            result.errors,
            [
                "Bundle format is not allowed in this context.",
                "traces[1] is invalid: Bundle format is not allowed in this context."
            ]
        );
        assert_eq!(result.warnings, ["Trace schemaVersion \"2.0\" differs from supported version \"1.1\"."]);
        assert_eq!(
            validate_trace(&json!({"schemaVersion": "1.1", "format": BUNDLE_FORMAT}), true).errors,
            ["traces must be an array."]
        );
    }

    #[test]
    fn import_round_trips_and_refuses_what_is_not_a_bundle() {
        let source = source();
        let imported = import_run(&export_run(&source, Map::new()).to_value()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(imported, source);
        let bundle = export_bundle(std::slice::from_ref(&source), Map::new()).to_value();
        assert_eq!(bundle["index"], json!([{"runId": "src", "status": "failed"}]));
        assert_eq!(import_bundle(&bundle).map(|runs| runs.len()).ok(), Some(1));
        let single = export_run(&source, Map::new()).to_value();
        assert!(matches!(import_bundle(&single), Err(InspectError::NotABundle { .. })));
        let invalid = import_run(&json!({"format": RUN_FORMAT}));
        assert_eq!(
            invalid.err().map(|e| e.to_string()).as_deref(),
            Some(
                "Invalid run trace format: schemaVersion is required.; exportedAt is required.; metadata is required.; run is required."
            )
        );
        assert_eq!(describe_schema().required_bundle_fields[4], "traces");
    }
}
