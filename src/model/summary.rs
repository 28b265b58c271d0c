//! `RunInspector.summarize(run)`: the one-screen view of a run.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::js::{array_index, prop, prop_opt};
use super::json::{JsNumber, truthy};
use super::{Run, RunStatus};

/// A run the reference's `summarize` would crash on: the entry (`path`) and what is wrong with
/// it. `inspect` reports it as `InspectError::MalformedRun`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run \"{run_id}\": `{path}` {problem}")]
pub struct MalformedRun {
    pub run_id: String,
    pub path: String,
    pub problem: String,
}

impl MalformedRun {
    pub(crate) fn new(run_id: &str, path: impl Into<String>, problem: impl Into<String>) -> MalformedRun {
        MalformedRun { run_id: run_id.to_owned(), path: path.into(), problem: problem.into() }
    }
}

/// The summary of one run, key for key what the reference's `RunInspector.summarize` returns.
///
/// Fields the reference copies from the record unchanged (`input`, `output`, `errors`, the
/// pending state) are JSON values; `metrics` and `lineage` are the reference's normalised
/// views (fixed shape, unknown keys left out).
///
/// It reads back from its JSON (a store's kept [`super::TreeLeaf`] holds it as text) to the
/// summary that writes the same JSON: a total that was not finite (written `null`) reads as NaN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub id: String,
    pub status: RunStatus,
    pub input: Value,
    pub output: Value,
    /// Number of events.
    pub events: usize,
    pub steps: Vec<StepSummary>,
    pub checkpoints: Vec<CheckpointSummary>,
    pub metrics: Value,
    pub child_run_aggregate: ChildRunAggregate,
    pub lineage: Value,
    /// `state.assessment`, or `null`.
    pub assessment: Value,
    /// Node and edge counts of `state.evidenceGraph`, or `null` without one.
    pub evidence: Option<EvidenceSummary>,
    pub pending_approval: Value,
    pub pending_pause: Value,
    pub errors: Vec<Value>,
}

/// `{id, type, status, durationMs}` of a step. A key the step does not have is absent
/// (JavaScript `undefined`), not `null`; `durationMs` is `null` when missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepSummary {
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub id: Option<Value>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub step_type: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub status: Option<Value>,
    pub duration_ms: Value,
}

/// `{id, label, status}` of a checkpoint (absent keys stay absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub label: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub status: Option<Value>,
}

/// Totals over `metrics.childRuns.items` (the child runs aggregated into this one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildRunAggregate {
    /// `items.length` (not the record's `childRuns.count`).
    pub count: usize,
    pub token_usage: TokenTotals,
    #[serde(deserialize_with = "total")]
    pub cost: JsNumber,
    /// Every timing key seen in the items, summed.
    pub timings: NumberTotals,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenTotals {
    #[serde(deserialize_with = "total")]
    pub prompt: JsNumber,
    #[serde(deserialize_with = "total")]
    pub completion: JsNumber,
    #[serde(deserialize_with = "total")]
    pub total: JsNumber,
}

/// A key that is present, `null` included (`Option`'s own reading takes `null` for absent).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// A sum as [`JsNumber`] writes it: a number, or `null` for one that is not finite.
fn total<'de, D: Deserializer<'de>>(deserializer: D) -> Result<JsNumber, D::Error> {
    Ok(JsNumber(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN)))
}

/// Sums by key, in the key order a JavaScript object accumulating them would have.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NumberTotals(pub Vec<(String, JsNumber)>);

impl NumberTotals {
    pub fn get(&self, key: &str) -> Option<JsNumber> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// `acc[key] = (acc[key] || 0) + value`.
    pub(crate) fn add(&mut self, key: &str, value: JsNumber) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, sum)) => *sum += value,
            None => {
                // JavaScript keeps array-index keys first, in numeric order.
                let position = match array_index(key) {
                    Some(index) => self.0.iter().position(|(k, _)| array_index(k).is_none_or(|other| other > index)),
                    None => None,
                };
                let entry = (key.to_owned(), JsNumber::ZERO + value);
                match position {
                    Some(position) => self.0.insert(position, entry),
                    None => self.0.push(entry),
                }
            }
        }
    }
}

impl Serialize for NumberTotals {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for NumberTotals {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Totals;
        impl<'de> Visitor<'de> for Totals {
            type Value = NumberTotals;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of totals")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NumberTotals, A::Error> {
                #[derive(Deserialize)]
                struct Total(#[serde(deserialize_with = "total")] JsNumber);
                // In the order written: it is the order a JavaScript object gave them.
                let mut totals = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((key, Total(value))) = map.next_entry::<String, Total>()? {
                    totals.push((key, value));
                }
                Ok(NumberTotals(totals))
            }
        }
        deserializer.deserialize_map(Totals)
    }
}

/// `{nodes, edges}`: the `length` of `state.evidenceGraph.nodes` / `.edges`, or `0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceSummary {
    pub nodes: Value,
    pub edges: Value,
}

const NULL_ENTRY: &str = "is null (the reference fails with \"Cannot read properties of null\")";

/// Summarises a run like `RunInspector.summarize`.
///
/// Fails (with [`MalformedRun`], naming the entry) exactly where the reference
/// crashes: a `null` step or checkpoint, a `null` child-run item, an `evidenceGraph` with a
/// `summarize` key; and where the reference would add a non-number to a metric total.
pub fn summarize(run: &Run) -> Result<RunSummary, MalformedRun> {
    let child_run_aggregate = child_run_aggregate(run)?;
    let steps = run
        .steps
        .iter()
        .enumerate()
        .map(|(index, step)| {
            if step.non_object == Some(Value::Null) {
                return Err(MalformedRun::new(&run.id, format!("steps[{index}]"), NULL_ENTRY));
            }
            Ok(StepSummary {
                id: step.get("id"),
                step_type: step.get("type"),
                status: step.get("status"),
                duration_ms: step.get("durationMs").unwrap_or(Value::Null),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let checkpoints = run
        .checkpoints
        .iter()
        .enumerate()
        .map(|(index, checkpoint)| {
            if checkpoint.non_object == Some(Value::Null) {
                return Err(MalformedRun::new(&run.id, format!("checkpoints[{index}]"), NULL_ENTRY));
            }
            Ok(CheckpointSummary {
                id: checkpoint.get("id"),
                label: checkpoint.get("label"),
                status: checkpoint.get("status"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let assessment = run.state.get("assessment").filter(|value| truthy(value)).cloned().unwrap_or(Value::Null);
    Ok(RunSummary {
        id: run.id.clone(),
        status: run.status.clone(),
        input: run.input.clone(),
        output: run.output.clone(),
        events: run.events.len(),
        steps,
        checkpoints,
        metrics: run.metrics.reference_value(),
        child_run_aggregate,
        lineage: run.lineage().reference_value(),
        assessment,
        evidence: evidence(run)?,
        pending_approval: serde_json::to_value(&run.pending_approval).unwrap_or(Value::Null),
        pending_pause: serde_json::to_value(&run.pending_pause).unwrap_or(Value::Null),
        errors: run.errors.iter().map(|error| error.to_value()).collect(),
    })
}

fn evidence(run: &Run) -> Result<Option<EvidenceSummary>, MalformedRun> {
    let Some(graph) = run.state.get("evidenceGraph").filter(|graph| truthy(graph)) else {
        return Ok(None);
    };
    // A live EvidenceGraph has a `summarize()` method; a record read from JSON never does, and
    // the reference calls whatever sits under that key.
    if prop(graph, "summarize").is_some_and(|value| truthy(&value)) {
        return Err(MalformedRun::new(
            &run.id,
            "state.evidenceGraph.summarize",
            "is set (the reference fails with \"run.state.evidenceGraph.summarize is not a function\")",
        ));
    }
    let count = |key: &str| prop_opt(prop(graph, key).as_ref(), "length").filter(truthy).unwrap_or(Value::from(0));
    Ok(Some(EvidenceSummary { nodes: count("nodes"), edges: count("edges") }))
}

fn child_run_aggregate(run: &Run) -> Result<ChildRunAggregate, MalformedRun> {
    let mut aggregate = ChildRunAggregate {
        count: run.metrics.child_runs.items.len(),
        token_usage: TokenTotals::default(),
        cost: JsNumber::ZERO,
        timings: NumberTotals::default(),
    };
    for (index, item) in run.metrics.child_runs.items.iter().enumerate() {
        let path = format!("metrics.childRuns.items[{index}]");
        if item.is_null() {
            return Err(MalformedRun::new(&run.id, path, NULL_ENTRY));
        }
        let usage = prop(item, "tokenUsage");
        let number = |key: &str, value: Option<Value>| metric_or_zero(run, &format!("{path}.{key}"), value);
        aggregate.token_usage.prompt += number("tokenUsage.prompt", prop_opt(usage.as_ref(), "prompt"))?;
        aggregate.token_usage.completion += number("tokenUsage.completion", prop_opt(usage.as_ref(), "completion"))?;
        aggregate.token_usage.total += number("tokenUsage.total", prop_opt(usage.as_ref(), "total"))?;
        aggregate.cost += number("cost", prop(item, "cost"))?;
        match prop(item, "timings") {
            Some(Value::Object(timings)) => {
                for (key, value) in timings {
                    let value = number(&format!("timings.{key}"), Some(value))?;
                    aggregate.timings.add(&key, value);
                }
            }
            // `Object.entries` of a falsy value (replaced by `{}`), a number or a boolean is empty.
            None | Some(Value::Null | Value::Bool(_) | Value::Number(_)) => {}
            Some(Value::String(text)) if text.is_empty() => {}
            Some(other) => {
                return Err(MalformedRun::new(
                    &run.id,
                    format!("{path}.timings"),
                    format!("must be an object, found {}", super::kind_of(&other)),
                ));
            }
        }
    }
    Ok(aggregate)
}

/// `value || 0` for a number that is then added: a falsy value counts as 0; a number is
/// itself; anything else would make JavaScript concatenate strings, so it is refused.
pub(crate) fn metric_or_zero(run: &Run, path: &str, value: Option<Value>) -> Result<JsNumber, MalformedRun> {
    match value {
        Some(Value::Number(n)) => Ok(JsNumber(n.as_f64().unwrap_or(0.0))),
        Some(ref v) if !truthy(v) => Ok(JsNumber::ZERO),
        None => Ok(JsNumber::ZERO),
        Some(other) => {
            Err(MalformedRun::new(&run.id, path, format!("must be a number, found {}", super::kind_of(&other))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(value: Value) -> Run {
        Run::from_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn absent_step_keys_stay_absent_and_duration_defaults_to_null() {
        let run = run(
            json!({"id": "r", "steps": [{"id": "r:step:1", "type": "tool"}, "x"], "checkpoints": [{"label": "a"}]}),
        );
        let summary = serde_json::to_value(summarize(&run).unwrap_or_else(|e| panic!("{e}"))).unwrap_or_default();
        assert_eq!(
            summary["steps"],
            json!([{"id": "r:step:1", "type": "tool", "durationMs": null}, {"durationMs": null}])
        );
        assert_eq!(summary["checkpoints"], json!([{"label": "a"}]));
        assert_eq!(summary["evidence"], Value::Null);
        assert_eq!(summary["assessment"], Value::Null);
    }

    #[test]
    fn a_summary_reads_back_from_its_json_to_one_that_writes_the_same_json() {
        let run = run(json!({
            "id": "r", "status": "failed", "input": {"q": [1, 2.5]}, "output": null,
            "steps": [{"id": null, "type": "tool", "status": "failed", "durationMs": 12}, {}, "x"],
            "checkpoints": [{"id": "c1", "label": null}, {"status": "saved"}],
            "metrics": {"childRuns": {"items": [
                {"tokenUsage": {"prompt": 1, "completion": 2, "total": 3}, "cost": 0.25,
                 "timings": {"zeta": 1, "2": 5, "alpha": 0.5, "1": 7}},
                {"tokenUsage": {"prompt": 1.5e308, "total": 1.5e308}, "cost": 1.7e308,
                 "timings": {"zeta": 2}},
                {"tokenUsage": {"prompt": 1.5e308, "total": 1.5e308}, "cost": 1.7e308}
            ]}},
            "state": {"assessment": {"ok": false}, "evidenceGraph": {"nodes": [1, 2], "edges": []}},
            "errors": [{"message": "boom"}]
        }));
        let summary = summarize(&run).unwrap_or_else(|e| panic!("{e}"));
        let written = serde_json::to_string(&summary).unwrap_or_else(|e| panic!("{e}"));
        // A key written `null` stays present, an absent one absent, numeric keys first.
        assert!(written.contains(r#""steps":[{"id":null,"type":"tool","status":"failed","durationMs":12},{"durationMs":null},{"durationMs":null}]"#), "{written}");
        assert!(written.contains(r#""timings":{"1":7,"2":5,"zeta":3,"alpha":0.5}"#), "{written}");
        // Sums past a double's range are written `null` and read as NaN.
        assert!(written.contains(r#""cost":null"#), "{written}");
        let read: RunSummary = serde_json::from_str(&written).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serde_json::to_string(&read).unwrap_or_else(|e| panic!("{e}")), written);
        assert!(read.child_run_aggregate.cost.0.is_nan());
        assert_eq!(read.steps, summary.steps);
        assert_eq!(read.checkpoints, summary.checkpoints);
        assert_eq!(read.child_run_aggregate.timings, summary.child_run_aggregate.timings);
    }

    #[test]
    fn a_null_step_is_a_typed_error_naming_the_entry() {
        let run = run(json!({"id": "r9", "steps": [{"id": "a"}, null]}));
        match summarize(&run) {
            Err(MalformedRun { run_id, path, .. }) => {
                assert_eq!(run_id, "r9");
                assert_eq!(path, "steps[1]");
            }
            other => panic!("expected a malformed-run error, got {other:?}"),
        }
    }

    #[test]
    fn child_run_totals_sum_in_item_order_and_collect_every_timing_key() {
        let run = run(json!({"id": "p", "metrics": {"childRuns": {"count": 5, "items": [
            {"tokenUsage": {"prompt": 1, "completion": 2, "total": 3}, "cost": 0.00031, "timings": {"modelMs": 4, "customMs": 1}},
            {"tokenUsage": {"prompt": 10}, "cost": 0.0011, "timings": {"modelMs": 6, "7": 2}},
            "not an object"
        ]}}}));
        let aggregate = summarize(&run).unwrap_or_else(|e| panic!("{e}")).child_run_aggregate;
        assert_eq!(aggregate.count, 3, "count is items.length, not the recorded count");
        assert_eq!(aggregate.token_usage.prompt, JsNumber(11.0));
        assert_eq!(aggregate.cost, JsNumber(0.00031 + 0.0011));
        let keys: Vec<&str> = aggregate.timings.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["7", "modelMs", "customMs"]);
        assert_eq!(aggregate.timings.get("modelMs"), Some(JsNumber(10.0)));
    }

    #[test]
    fn a_string_metric_is_refused_instead_of_concatenated() {
        let run = run(json!({"id": "p", "metrics": {"childRuns": {"items": [{"cost": "0.5"}]}}}));
        match summarize(&run) {
            Err(MalformedRun { path, .. }) => assert_eq!(path, "metrics.childRuns.items[0].cost"),
            other => panic!("expected a malformed-run error, got {other:?}"),
        }
    }

    #[test]
    fn costs_read_from_a_record_are_the_exact_doubles_written() {
        // serde_json's default float parser can be one ulp off on such values; the reference
        // reads them exactly (hence the `float_roundtrip` feature).
        let text = r#"{"id": "p", "metrics": {"cost": 0.010340000000000002, "childRuns": {"items": [{"cost": 0.009720000000000001}]}}}"#;
        let record: Value = serde_json::from_str(text).unwrap_or_default();
        let summary = summarize(&run(record)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(summary.metrics["cost"].as_f64().map(f64::to_bits), Some(0.010340000000000002_f64.to_bits()));
        assert_eq!(summary.child_run_aggregate.cost.get().to_bits(), 0.009720000000000001_f64.to_bits());
    }

    #[test]
    fn an_evidence_graph_with_a_summarize_key_is_a_typed_error() {
        let run = run(json!({"id": "e", "state": {"evidenceGraph": {"summarize": "yes", "nodes": []}}}));
        match summarize(&run) {
            Err(error) => {
                assert!(error.to_string().contains("state.evidenceGraph.summarize"), "{error}");
            }
            other => panic!("expected a malformed-run error, got {other:?}"),
        }
    }

    #[test]
    fn evidence_counts_follow_length_semantics() {
        let run = run(
            json!({"id": "e", "state": {"evidenceGraph": {"nodes": [1, 2, 3], "edges": null}, "assessment": {"confidence": 0.8}}}),
        );
        let summary = summarize(&run).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(summary.evidence, Some(EvidenceSummary { nodes: json!(3), edges: json!(0) }));
        assert_eq!(summary.assessment, json!({"confidence": 0.8}));
    }
}
