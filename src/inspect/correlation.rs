//! `TraceCorrelation`: trace/span ids that tie a run to its family across processes.

use serde::Serialize;
use serde_json::{Map, Value};

use super::InspectError;
use super::envelope;
use super::js::{js_key_order, prop, prop_opt, spread_entries};
use crate::model::Run;
use crate::model::json::truthy;

/// A correlation object: `traceId`, `spanId`, `parentSpanId`, `checkpointId`, then `status`
/// (from a run) or `runtimeKind` and `action` (from an envelope), then the caller's extra keys
/// (which override the computed ones in place, as a JavaScript spread does).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Correlation(pub Map<String, Value>);

impl Correlation {
    pub fn trace_id(&self) -> Option<&Value> {
        self.0.get("traceId")
    }

    pub fn span_id(&self) -> Option<&Value> {
        self.0.get("spanId")
    }

    pub fn parent_span_id(&self) -> Option<&Value> {
        self.0.get("parentSpanId")
    }

    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

/// `TraceCorrelation.fromRun(run, extra)`: the trace is the lineage root, the span the run,
/// the parent span its structural parent or else the run it was branched from.
pub fn from_run(run: &Run, extra: &Map<String, Value>) -> Correlation {
    let lineage = run.lineage();
    let mut map = Map::new();
    map.insert("traceId".into(), Value::String(lineage.root_run_id.clone()));
    map.insert("spanId".into(), Value::String(run.id.clone()));
    let parent_span = lineage.parent_run_id.as_ref().or(lineage.branch_origin_run_id.as_ref());
    map.insert("parentSpanId".into(), parent_span.map_or(Value::Null, |id| Value::String(id.clone())));
    map.insert(
        "checkpointId".into(),
        lineage.branch_checkpoint_id.as_ref().map_or(Value::Null, |id| Value::String(id.clone())),
    );
    map.insert("status".into(), Value::String(run.status.as_str().to_owned()));
    Correlation(merge(map, extra))
}

/// `TraceCorrelation.fromEnvelope(envelope, extra)`: parses the envelope first (an invalid one
/// is [`InspectError::InvalidEnvelope`]). The span is the envelope's *source* run.
pub fn from_envelope(envelope: &Value, extra: &Map<String, Value>) -> Result<Correlation, InspectError> {
    let parsed = envelope::parse(envelope)?;
    let lineage = prop(parsed, "lineage");
    let lineage_key = |key: &str| prop_opt(lineage.as_ref(), key).filter(truthy);
    let run_id = prop(parsed, "runId").unwrap_or(Value::Null);
    let mut map = Map::new();
    map.insert("traceId".into(), lineage_key("rootRunId").unwrap_or_else(|| run_id.clone()));
    map.insert("spanId".into(), run_id);
    map.insert(
        "parentSpanId".into(),
        lineage_key("parentRunId").or_else(|| lineage_key("branchOriginRunId")).unwrap_or(Value::Null),
    );
    map.insert(
        "checkpointId".into(),
        prop(parsed, "checkpointId")
            .filter(truthy)
            .or_else(|| lineage_key("branchCheckpointId"))
            .unwrap_or(Value::Null),
    );
    // Both are truthy: `parse` checked them.
    map.insert("runtimeKind".into(), prop(parsed, "runtimeKind").unwrap_or(Value::Null));
    map.insert("action".into(), prop(parsed, "action").unwrap_or(Value::Null));
    Ok(Correlation(merge(map, extra)))
}

/// `TraceCorrelation.annotateMetadata(metadata, correlation)`: `metadata` with its
/// `correlation` key shallow-merged with `correlation` (new keys win).
pub fn annotate_metadata(metadata: &Map<String, Value>, correlation: &Map<String, Value>) -> Map<String, Value> {
    let existing = metadata.get("correlation").filter(|value| truthy(value)).map(spread_entries).unwrap_or_default();
    let merged = merge(js_key_order(existing), correlation);
    let mut out = metadata.clone();
    out.insert("correlation".into(), Value::Object(merged));
    js_key_order(out)
}

/// `{...base, ...extra}`: existing keys keep their place with the new value, new keys follow.
fn merge(mut base: Map<String, Value>, extra: &Map<String, Value>) -> Map<String, Value> {
    for (key, value) in extra {
        base.insert(key.clone(), value.clone());
    }
    js_key_order(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        serde_json::from_value(value).unwrap_or_default()
    }

    #[test]
    fn a_branch_correlates_to_its_origin() {
        let run = Run::from_value(json!({"id": "b", "status": "paused", "metadata": {"lineage": {
            "rootRunId": "root", "branchOriginRunId": "src", "branchCheckpointId": "src:checkpoint:2"}}}))
        .unwrap_or_else(|e| panic!("{e}"));
        let correlation = from_run(&run, &map(json!({"status": "overridden", "queue": "q"})));
        assert_eq!(
            serde_json::to_string(&correlation).unwrap_or_default(),
            r#"{"traceId":"root","spanId":"b","parentSpanId":"src","checkpointId":"src:checkpoint:2","status":"overridden","queue":"q"}"#
        );
    }

    #[test]
    fn an_envelope_correlates_to_its_source_run() {
        let envelope = json!({"schemaVersion": "1.0", "format": "agnostic-agents-distributed-run-envelope",
            "runtimeKind": "agent", "action": "replay", "runId": "src", "checkpointId": null,
            "lineage": {"rootRunId": "", "parentRunId": null, "branchCheckpointId": "cp"}});
        let correlation = from_envelope(&envelope, &Map::new()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            Value::Object(correlation.0),
            json!({"traceId": "src", "spanId": "src", "parentSpanId": null, "checkpointId": "cp", "runtimeKind": "agent", "action": "replay"})
        );
        let invalid = from_envelope(&json!({"runId": "x"}), &Map::new());
        assert!(matches!(invalid, Err(InspectError::InvalidEnvelope { .. })));
    }

    #[test]
    fn annotate_merges_into_existing_correlation_in_place() {
        let metadata = map(json!({"queue": "q", "correlation": {"traceId": "t", "spanId": "old"}, "tail": 1}));
        let annotated = annotate_metadata(&metadata, &map(json!({"spanId": "new", "action": "branch"})));
        assert_eq!(
            serde_json::to_string(&annotated).unwrap_or_default(),
            r#"{"queue":"q","correlation":{"traceId":"t","spanId":"new","action":"branch"},"tail":1}"#
        );
        let fresh = annotate_metadata(&map(json!({"a": 1})), &map(json!({"traceId": "t"})));
        assert_eq!(Value::Object(fresh), json!({"a": 1, "correlation": {"traceId": "t"}}));
    }
}
