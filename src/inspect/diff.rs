//! `TraceDiffer.diff(left, right)`: where two runs' traces part ways.

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use super::InspectError;
use super::js::same_value_zero;
use crate::model::Run;
use crate::model::json::{js_stringify, truthy};

/// How `right` differs from `left`, as the reference's `TraceDiffer.diff` reports it.
/// Deltas are `right − left`; indices are `-1` when the sequences agree.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceDiff {
    pub left_run_id: String,
    pub right_run_id: String,
    pub status_changed: bool,
    pub output_changed: bool,
    pub event_count_delta: i64,
    pub step_count_delta: i64,
    pub tool_call_count_delta: i64,
    /// Event types of `right` (in order, duplicates kept) that `left` never has.
    pub event_types_added: Vec<EventTypeValue>,
    /// Event types of `left` (in order, duplicates kept) that `right` never has.
    pub event_types_removed: Vec<EventTypeValue>,
    pub first_diverging_step_index: i64,
    pub first_diverging_event_index: i64,
    pub first_diverging_tool_call_index: i64,
}

/// An event's `type` as recorded; `None` when the event has none (JavaScript `undefined`,
/// which an array serialises as `null`).
#[derive(Debug, Clone, PartialEq)]
pub struct EventTypeValue(pub Option<Value>);

impl Serialize for EventTypeValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.as_ref().unwrap_or(&Value::Null).serialize(serializer)
    }
}

/// Compares two runs: `left` is the reference point (for an incident, the known-good run),
/// `right` the run under investigation. Fails only where the reference crashes: a `null`
/// entry in `steps`, `events` or `toolCalls`.
pub fn diff(left: &Run, right: &Run) -> Result<TraceDiff, InspectError> {
    let left_steps = step_summaries(left)?;
    let right_steps = step_summaries(right)?;
    let left_events = event_types(left)?;
    let right_events = event_types(right)?;
    let left_calls = tool_call_summaries(left)?;
    let right_calls = tool_call_summaries(right)?;
    let not_in = |types: &[Option<Value>], others: &[Option<Value>]| -> Vec<EventTypeValue> {
        types
            .iter()
            .filter(|kind| !others.iter().any(|other| same_value_zero(kind.as_ref(), other.as_ref())))
            .map(|kind| EventTypeValue(kind.clone()))
            .collect()
    };
    let as_values =
        |types: &[Option<Value>]| -> Vec<Value> { types.iter().map(|t| t.clone().unwrap_or(Value::Null)).collect() };
    Ok(TraceDiff {
        left_run_id: left.id.clone(),
        right_run_id: right.id.clone(),
        status_changed: left.status != right.status,
        output_changed: js_stringify(&left.output) != js_stringify(&right.output),
        event_count_delta: delta(left_events.len(), right_events.len()),
        step_count_delta: delta(left_steps.len(), right_steps.len()),
        tool_call_count_delta: delta(left_calls.len(), right_calls.len()),
        event_types_added: not_in(&right_events, &left_events),
        event_types_removed: not_in(&left_events, &right_events),
        first_diverging_step_index: first_diverging_index(&left_steps, &right_steps),
        first_diverging_event_index: first_diverging_index(&as_values(&left_events), &as_values(&right_events)),
        first_diverging_tool_call_index: first_diverging_index(&left_calls, &right_calls),
    })
}

fn delta(left: usize, right: usize) -> i64 {
    i64::try_from(right).unwrap_or(i64::MAX) - i64::try_from(left).unwrap_or(i64::MAX)
}

fn null_entry(run: &Run, field: &str, index: usize) -> InspectError {
    InspectError::malformed(
        &run.id,
        format!("{field}[{index}]"),
        "is null (the reference fails with \"Cannot read properties of null\")",
    )
}

/// `{type, status, output ?? null}` per step (`type` / `status` absent when the step has none).
fn step_summaries(run: &Run) -> Result<Vec<Value>, InspectError> {
    run.steps
        .iter()
        .enumerate()
        .map(|(index, step)| {
            if step.non_object == Some(Value::Null) {
                return Err(null_entry(run, "steps", index));
            }
            let mut summary = Map::new();
            if let Some(kind) = step.get("type") {
                summary.insert("type".into(), kind);
            }
            if let Some(status) = step.get("status") {
                summary.insert("status".into(), status);
            }
            summary.insert("output".into(), step.get("output").unwrap_or(Value::Null));
            Ok(Value::Object(summary))
        })
        .collect()
}

fn event_types(run: &Run) -> Result<Vec<Option<Value>>, InspectError> {
    run.events
        .iter()
        .enumerate()
        .map(|(index, event)| {
            if event.non_object == Some(Value::Null) {
                return Err(null_entry(run, "events", index));
            }
            Ok(event.get("type"))
        })
        .collect()
}

/// `{toolName: toolName || name || null, arguments: arguments || null}` per tool call.
fn tool_call_summaries(run: &Run) -> Result<Vec<Value>, InspectError> {
    let or_null = |value: Option<Value>| value.filter(truthy);
    run.tool_calls
        .iter()
        .enumerate()
        .map(|(index, call)| {
            if call.non_object == Some(Value::Null) {
                return Err(null_entry(run, "toolCalls", index));
            }
            let tool_name = or_null(call.get("toolName")).or_else(|| or_null(call.get("name"))).unwrap_or(Value::Null);
            let arguments = or_null(call.get("arguments")).unwrap_or(Value::Null);
            Ok(serde_json::json!({"toolName": tool_name, "arguments": arguments}))
        })
        .collect()
}

/// The first index where `JSON.stringify(left[i] ?? null)` and the same of `right` differ.
fn first_diverging_index(left: &[Value], right: &[Value]) -> i64 {
    let null = Value::Null;
    (0..left.len().max(right.len()))
        .find(|index| {
            js_stringify(left.get(*index).unwrap_or(&null)) != js_stringify(right.get(*index).unwrap_or(&null))
        })
        .map_or(-1, |index| i64::try_from(index).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(value: Value) -> Run {
        Run::from_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn identical_runs_do_not_diverge() {
        let a = run(json!({"id": "a", "status": "completed", "output": {"x": 1},
            "steps": [{"type": "model", "status": "completed"}], "events": [{"type": "run_started"}]}));
        let report = diff(&a, &a).unwrap_or_else(|e| panic!("{e}"));
        assert!(!report.status_changed && !report.output_changed);
        assert_eq!(report.first_diverging_step_index, -1);
        assert_eq!(report.first_diverging_event_index, -1);
        assert_eq!(report.first_diverging_tool_call_index, -1);
        assert!(report.event_types_added.is_empty());
    }

    #[test]
    fn added_and_removed_event_types_keep_duplicates_and_order() {
        let left = run(
            json!({"id": "l", "events": [{"type": "run_started"}, {"type": "tool_completed"}, {"type": "tool_completed"}]}),
        );
        let right = run(json!({"id": "r", "status": "failed", "events": [
            {"type": "run_started"}, {"type": "tool_failed"}, {"type": "tool_failed"}, {"type": "run_failed"}, {}]}));
        let report = diff(&left, &right).unwrap_or_else(|e| panic!("{e}"));
        let value = serde_json::to_value(&report).unwrap_or_default();
        assert_eq!(value["eventTypesAdded"], json!(["tool_failed", "tool_failed", "run_failed", null]));
        assert_eq!(value["eventTypesRemoved"], json!(["tool_completed", "tool_completed"]));
        assert_eq!(report.first_diverging_event_index, 1);
        assert_eq!(report.event_count_delta, 2);
        assert!(report.status_changed);
    }

    #[test]
    fn output_equality_is_key_order_sensitive() {
        let left = run(json!({"id": "l", "output": {"a": 1, "b": 2}}));
        let right = run(json!({"id": "r", "output": {"b": 2, "a": 1}}));
        assert!(diff(&left, &right).map(|d| d.output_changed).unwrap_or(false));
    }

    #[test]
    fn a_missing_entry_compares_as_null_and_tool_names_fall_back() {
        let left = run(json!({"id": "l", "toolCalls": [{"name": "search", "arguments": {"q": 1}}]}));
        let right =
            run(json!({"id": "r", "toolCalls": [{"toolName": "search", "arguments": {"q": 1}}, {"toolName": ""}]}));
        let report = diff(&left, &right).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.first_diverging_tool_call_index, 1, "name and toolName are the same tool");
        assert_eq!(report.tool_call_count_delta, 1);
        let step_left = run(json!({"id": "l", "steps": [{"type": "model"}]}));
        let step_right = run(json!({"id": "r", "steps": [{"type": "model", "status": "running"}]}));
        assert_eq!(diff(&step_left, &step_right).map(|d| d.first_diverging_step_index).ok(), Some(0));
    }

    #[test]
    fn a_null_event_is_a_typed_error() {
        let left = run(json!({"id": "l"}));
        let right = run(json!({"id": "r", "events": [null]}));
        assert!(matches!(diff(&left, &right), Err(InspectError::MalformedRun { path, .. }) if path == "events[0]"));
    }
}
