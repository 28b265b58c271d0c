//! How policies see runs and reports: JSON turned into Rhai values, with the gaps of foreign
//! data filled so that policies stay short.
//!
//! Every modelled key of a step, checkpoint, error, event, tool call, pending approval and
//! pending pause is present in the policy view — `()` when the record lacks it — so a policy can
//! write `step.type == "tool"` without first checking that the key exists (the sandbox makes a
//! missing map property an error). Entries that are not objects (the reference tolerates a
//! plain string in `errors`) are passed as they are.
//!
//! Checkpoints come without their `snapshot` (the whole run state at that point, often most of
//! a report's size, copied into every call) and with the ids of the steps the snapshot holds
//! (`stepIds`): the report's `lastCheckpoint` as well as `ctx.checkpoints()`.

use rhai::{Array, Dynamic, Map};
use serde_json::Value;

use crate::limits::MAX_VALUE_DEPTH;

use crate::model::{Checkpoint, Event, PendingApproval, PendingPause, RunError, Step, ToolCall};

/// A JSON value as a Rhai value: objects are maps, arrays arrays, integers `INT`, other numbers
/// `FLOAT`, `null` is `()`. Values deeper than [`MAX_VALUE_DEPTH`] levels are `()`.
pub fn to_dynamic(value: &Value) -> Dynamic {
    dynamic_at(value, 0)
}

fn dynamic_at(value: &Value, depth: usize) -> Dynamic {
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Dynamic::from(s.clone()),
        _ if depth >= MAX_VALUE_DEPTH => Dynamic::UNIT,
        Value::Array(items) => Dynamic::from_array(items.iter().map(|item| dynamic_at(item, depth + 1)).collect()),
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, item) in map {
                out.insert(key.as_str().into(), dynamic_at(item, depth + 1));
            }
            Dynamic::from_map(out)
        }
    }
}

/// A Rhai value as JSON (for explanations and plan payloads). Values without a JSON form
/// (functions, custom types) become their display string; arrays and maps deeper than
/// [`MAX_VALUE_DEPTH`] levels (a policy can build them in a loop) become `null`.
pub fn to_json(value: &Dynamic) -> Value {
    json_at(value, 0)
}

fn json_at(value: &Dynamic, depth: usize) -> Value {
    if value.is_unit() {
        return Value::Null;
    }
    if let Ok(b) = value.as_bool() {
        return Value::Bool(b);
    }
    if let Ok(i) = value.as_int() {
        return Value::from(i);
    }
    if let Ok(f) = value.as_float() {
        return crate::model::json::js_number_value(f);
    }
    if let Some(s) = value.read_lock::<rhai::ImmutableString>() {
        return Value::String(s.to_string());
    }
    if value.is_array() || value.is_map() {
        if depth >= MAX_VALUE_DEPTH {
            return Value::Null;
        }
        if let Some(items) = value.read_lock::<Array>() {
            return Value::Array(items.iter().map(|item| json_at(item, depth + 1)).collect());
        }
        if let Some(map) = value.read_lock::<Map>() {
            return Value::Object(map.iter().map(|(k, v)| (k.to_string(), json_at(v, depth + 1))).collect());
        }
    }
    Value::String(value.to_string())
}

/// Fills the missing `keys` of a map with `()`.
fn fill(value: &mut Dynamic, keys: &[&str]) {
    if let Some(mut map) = value.write_lock::<Map>() {
        for key in keys {
            map.entry((*key).into()).or_insert(Dynamic::UNIT);
        }
    }
}

fn fill_each(value: &mut Dynamic, keys: &[&str]) {
    if let Some(mut items) = value.write_lock::<Array>() {
        for item in items.iter_mut() {
            fill(item, keys);
        }
    }
}

fn fill_key(value: &mut Dynamic, key: &str, each: bool, keys: &[&str]) {
    if let Some(mut map) = value.write_lock::<Map>()
        && let Some(field) = map.get_mut(key)
    {
        if each { fill_each(field, keys) } else { fill(field, keys) }
    }
}

/// The policy view of a run record (see the module documentation).
pub fn run_view(run: &Value) -> Dynamic {
    let mut view = to_dynamic(run);
    fill_key(&mut view, "steps", true, Step::KEYS);
    fill_key(&mut view, "checkpoints", true, Checkpoint::KEYS);
    fill_key(&mut view, "errors", true, RunError::KEYS);
    fill_key(&mut view, "events", true, Event::KEYS);
    fill_key(&mut view, "toolCalls", true, ToolCall::KEYS);
    fill_key(&mut view, "pendingApproval", false, PendingApproval::KEYS);
    fill_key(&mut view, "pendingPause", false, PendingPause::KEYS);
    view
}

/// The policy view of an incident report (see the module documentation).
pub fn report_view(report: &Value) -> Dynamic {
    let mut view = match report {
        // The checkpoint's snapshot is left out as the view is made, not made and removed.
        Value::Object(map) => Dynamic::from_map(
            map.iter()
                .map(|(key, item)| {
                    let item = match (key.as_str(), item) {
                        ("lastCheckpoint", Value::Object(checkpoint)) => Dynamic::from_map(
                            checkpoint
                                .iter()
                                .filter(|(key, _)| key.as_str() != "snapshot")
                                .map(|(key, item)| (key.as_str().into(), dynamic_at(item, 2)))
                                .collect(),
                        ),
                        _ => dynamic_at(item, 1),
                    };
                    (key.as_str().into(), item)
                })
                .collect(),
        ),
        other => to_dynamic(other),
    };
    fill_key(&mut view, "failure", false, RunError::KEYS);
    fill_key(&mut view, "failedSteps", true, Step::KEYS);
    fill_key(&mut view, "lastCheckpoint", false, Checkpoint::KEYS);
    fill_key(&mut view, "pendingApproval", false, PendingApproval::KEYS);
    fill_key(&mut view, "pendingPause", false, PendingPause::KEYS);
    if let Some(mut map) = view.write_lock::<Map>()
        && let Some(mut checkpoint) = map.get_mut("lastCheckpoint").and_then(|c| c.write_lock::<Map>())
    {
        checkpoint.remove("snapshot");
        let step_ids = report
            .pointer("/lastCheckpoint/snapshot/steps")
            .and_then(Value::as_array)
            .map(|steps| steps.iter().filter_map(|s| s.get("id")?.as_str()).map(|id| Dynamic::from(id.to_owned())))
            .map_or_else(Array::new, Iterator::collect);
        checkpoint.insert("stepIds".into(), Dynamic::from_array(step_ids));
    }
    view
}

/// A step, checkpoint or other record as its policy view.
pub fn record_view(record: &Value, keys: &[&str]) -> Dynamic {
    let mut view = to_dynamic(record);
    fill(&mut view, keys);
    view
}

#[cfg(test)]
mod tests {
    #[test]
    fn deep_values_are_cut_at_the_value_depth_limit_both_ways() {
        let mut deep_json = Value::from(1);
        let mut deep_rhai = Dynamic::from_int(1);
        for _ in 0..MAX_VALUE_DEPTH + 10 {
            deep_json = Value::Array(vec![deep_json]);
            deep_rhai = Dynamic::from_array(vec![deep_rhai]);
        }
        let depth_of_dynamic = |mut value: Dynamic| {
            let mut depth = 0;
            while let Some(inner) = value.clone().try_cast::<Array>().and_then(|items| items.into_iter().next()) {
                value = inner;
                depth += 1;
            }
            (depth, value.is_unit())
        };
        assert_eq!(depth_of_dynamic(to_dynamic(&deep_json)), (MAX_VALUE_DEPTH, true));
        let mut json = to_json(&deep_rhai);
        let mut depth = 0;
        while let Value::Array(mut items) = json {
            json = items.pop().unwrap_or(Value::Bool(false));
            depth += 1;
        }
        assert_eq!((depth, json), (MAX_VALUE_DEPTH, Value::Null));
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn missing_record_keys_read_as_unit_and_others_pass_through() {
        let view = report_view(&json!({
            "failedSteps": [{"id": "s1", "status": "failed"}],
            "failure": "plain string error",
            "pendingPause": {"reason": "x"},
            "custom": [1, 2.5, null]
        }));
        let engine = crate::policy::engine::engine();
        let mut scope = rhai::Scope::new();
        scope.push_dynamic("report", view);
        let eval = |scope: &mut rhai::Scope, text: &str| {
            engine.eval_with_scope::<Dynamic>(scope, text).map(|d| d.to_string()).map_err(|e| e.to_string())
        };
        assert_eq!(eval(&mut scope, r#"report.failedSteps[0].type == ()"#).as_deref(), Ok("true"));
        assert_eq!(eval(&mut scope, r#"report.pendingPause.stage == ()"#).as_deref(), Ok("true"));
        assert_eq!(eval(&mut scope, r#"type_of(report.failure)"#).as_deref(), Ok("string"));
        assert_eq!(eval(&mut scope, r#"report.custom[1] + report.custom[0]"#).as_deref(), Ok("3.5"));
        assert!(eval(&mut scope, r#"report.nope"#).is_err(), "unknown top-level keys stay errors");
    }

    #[test]
    fn the_last_checkpoint_comes_with_its_step_ids_instead_of_its_snapshot() {
        let snapshot = json!({"steps": [{"id": "r:step:1"}, {"id": "r:step:2"}, {"type": "model"}], "messages": []});
        let view = report_view(&json!({
            "lastCheckpoint": {"id": "r:checkpoint:3", "label": "run_failed", "snapshot": snapshot},
        }));
        let checkpoint = to_json(&view)["lastCheckpoint"].clone();
        assert_eq!(checkpoint["stepIds"], json!(["r:step:1", "r:step:2"]));
        assert_eq!(checkpoint["label"], "run_failed");
        assert!(checkpoint.get("snapshot").is_none());
        let without = to_json(&report_view(&json!({"lastCheckpoint": null})));
        assert_eq!(without["lastCheckpoint"], Value::Null, "no checkpoint stays ()");
    }

    #[test]
    fn values_convert_back_to_json() {
        let value = json!({"a": [1, 2.5, "x", null, true], "b": {"c": -3}});
        assert_eq!(to_json(&to_dynamic(&value)), value);
    }
}
