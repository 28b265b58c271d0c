//! A run read from its JSON text for its [`TreeLeaf`](super::TreeLeaf) and its index entry
//! only: the parts neither of them reads (messages, tool calls and results, event bodies,
//! checkpoint snapshots, step payloads and outputs, most of `state`) are parsed and dropped
//! instead of being built into `Value`s and typed parts, which was most of the work of
//! indexing a file store for the first time (issue 13).
//!
//! Exactness rests on one rule: [`run_for_leaf`] answers only when the full decode
//! (`serde_json::Value` → [`Run::from_value`]) would succeed with the same leaf and entry.
//! Anything unusual — a part that is not the array or object it should be, an entry that is
//! not an object, serde_json's private marker keys — makes it answer `None`, and the caller
//! decodes in full (which also gives the exact error of a broken record). Dropped text still
//! goes through `deserialize_any` as a `Value` would (numbers range-checked, strings
//! unescaped, the same nesting limit), so a record the full decode refuses is never accepted.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::Run;

/// Keys serde_json treats specially at the start of an object when some of its features are
/// on (`raw_value`, `arbitrary_precision`); a record using them is left to the full decode.
const SERDE_JSON_MARKER: &str = "$serde_json::private::";

/// Keys of a step that a run's summary reads.
const STEP_KEYS: &[&str] = &["id", "type", "status", "durationMs"];

/// Keys of a checkpoint that a run's summary reads (not its snapshot).
const CHECKPOINT_KEYS: &[&str] = &["id", "label", "status"];

/// Keys of `state` that a run's summary reads.
const STATE_KEYS: &[&str] = &["assessment", "evidenceGraph"];

/// The run in `bytes` with only what [`TreeLeaf::of`](super::TreeLeaf::of) and
/// `RunIndexEntry::of` read; `None` when the full decode must decide (see the module
/// documentation).
pub fn run_for_leaf(bytes: &[u8]) -> Option<Run> {
    // One UTF-8 check of the whole record, then a reader that trusts it: reading from bytes
    // checks every string on its own, which cost 8 % of an index build. Invalid UTF-8 goes to
    // the full decode like any other record this view does not answer.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let record = Part::Record.deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?;
    Run::from_value(record).ok()
}

/// How one part of the record is read.
#[derive(Clone, Copy)]
enum Part {
    /// The top-level object: each key read as its part.
    Record,
    /// An array whose entries nobody reads: read as `[]`.
    Emptied,
    /// An array of which only the length is read: read as that many `null`s.
    Counted,
    /// An array of objects of which only `keys` are read.
    Entries(&'static [&'static str]),
    /// An object of which only `keys` are read.
    Object(&'static [&'static str]),
}

impl Part {
    fn of_key(key: &str) -> Option<Part> {
        match key {
            "messages" | "toolCalls" | "toolResults" => Some(Part::Emptied),
            "events" => Some(Part::Counted),
            "steps" => Some(Part::Entries(STEP_KEYS)),
            "checkpoints" => Some(Part::Entries(CHECKPOINT_KEYS)),
            "state" => Some(Part::Object(STATE_KEYS)),
            _ => None,
        }
    }

    /// A key of an object this module builds: marker keys are refused.
    fn checked_key<E: serde::de::Error>(key: String) -> Result<String, E> {
        if key.starts_with(SERDE_JSON_MARKER) { Err(E::custom("serde_json marker key")) } else { Ok(key) }
    }
}

impl<'de> DeserializeSeed<'de> for Part {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Part {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never shown: any refusal sends the record to the full decode.
        f.write_str("the usual shape of a run record")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        match self {
            Part::Emptied => {
                while seq.next_element_seed(Skip)?.is_some() {}
                Ok(Value::Array(Vec::new()))
            }
            Part::Counted => {
                let mut count = 0;
                while seq.next_element_seed(Skip)?.is_some() {
                    count += 1;
                }
                Ok(Value::Array(vec![Value::Null; count]))
            }
            Part::Entries(keys) => {
                let mut entries = Vec::new();
                while let Some(entry) = seq.next_element_seed(Part::Object(keys))? {
                    entries.push(entry);
                }
                Ok(Value::Array(entries))
            }
            Part::Record | Part::Object(_) => Err(A::Error::custom("not the usual shape")),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        match self {
            Part::Record => {
                while let Some(key) = map.next_key::<String>()? {
                    let key = Part::checked_key(key)?;
                    let value = match Part::of_key(&key) {
                        Some(part) => map.next_value_seed(part)?,
                        None => map.next_value::<Value>()?,
                    };
                    // Like `Value`: a repeated key keeps its first position and its last value.
                    out.insert(key, value);
                }
            }
            Part::Object(keys) => {
                while let Some(key) = map.next_key::<String>()? {
                    let key = Part::checked_key(key)?;
                    if keys.contains(&key.as_str()) {
                        let value = map.next_value::<Value>()?;
                        out.insert(key, value);
                    } else {
                        map.next_value_seed(Skip)?;
                    }
                }
            }
            Part::Emptied | Part::Counted | Part::Entries(_) => return Err(A::Error::custom("not the usual shape")),
        }
        Ok(Value::Object(out))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        // `state: null` reads as an empty state.
        match self {
            Part::Object(STATE_KEYS) => Ok(Value::Null),
            _ => Err(E::custom("not the usual shape")),
        }
    }
}

/// Parses one JSON value of any shape, building nothing.
#[derive(Clone, Copy)]
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(SkippedKey)?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

/// A key of a dropped object: parsed, checked for serde_json's markers, not kept.
struct SkippedKey;

impl<'de> DeserializeSeed<'de> for SkippedKey {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for SkippedKey {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<(), E> {
        if key.starts_with(SERDE_JSON_MARKER) { Err(E::custom("serde_json marker key")) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TreeLeaf;
    use serde_json::json;

    /// The full decode, as the stores do it.
    fn full(bytes: &[u8]) -> Option<Run> {
        serde_json::from_slice::<Value>(bytes).ok().and_then(|value| Run::from_value(value).ok())
    }

    /// Whatever the view answers, it is what the full decode would have given.
    fn assert_agrees(bytes: &[u8]) -> Option<Run> {
        let view = run_for_leaf(bytes);
        if let Some(view) = &view {
            let Some(run) = full(bytes) else {
                panic!("the view accepted a record the full decode refuses: {}", String::from_utf8_lossy(bytes))
            };
            assert_eq!(TreeLeaf::of(view), TreeLeaf::of(&run), "{}", String::from_utf8_lossy(bytes));
            assert_eq!(
                (view.id.as_str(), view.root_run_id(), view.parent_run_id(), &view.status, view.created_at()),
                (run.id.as_str(), run.root_run_id(), run.parent_run_id(), &run.status, run.created_at())
            );
        }
        view
    }

    #[test]
    fn every_example_run_is_read_by_the_view_with_the_full_leaf() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/runs");
        let mut read = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(assert_agrees(&bytes).is_some(), "the view should read {}", path.display());
            // Compact and pretty text alike.
            let compact =
                serde_json::to_vec(&serde_json::from_slice::<Value>(&bytes).unwrap_or_default()).unwrap_or_default();
            assert!(assert_agrees(&compact).is_some());
            read += 1;
        }
        assert!(read >= 10, "examples/runs holds the example runs ({read} read)");
    }

    /// The view must follow what `TreeLeaf::of` and `RunIndexEntry::of` read: on every run the
    /// reference recorded, it answers, with the full decode's leaf and entry.
    #[test]
    fn every_corpus_run_is_read_by_the_view_with_the_full_leaf() {
        for (name, bytes) in crate::model::corpus_records::corpus_records() {
            assert!(assert_agrees(&bytes).is_some(), "the view should read {name}");
        }
    }

    #[test]
    fn records_the_summary_reads_odd_parts_of_agree_with_the_full_decode() {
        let records = [
            json!({"id": "r", "steps": [{"id": "s", "type": "tool", "payload": {"x": [1, 2]}, "durationMs": 5}],
                   "checkpoints": [{"id": "c", "label": "before_tool", "snapshot": {"steps": [null]}, "status": "running"}],
                   "events": [{"type": "x"}, 3, "y"], "state": {"assessment": {"ok": true}, "other": [1],
                   "evidenceGraph": {"nodes": [1, 2], "edges": "ab"}}, "messages": [{"role": "user"}],
                   "toolCalls": [{"toolName": "t"}], "toolResults": [null], "errors": ["boom", {"name": "E"}],
                   "metrics": {"cost": 0.25, "childRuns": {"items": [{"cost": 1, "timings": {"modelMs": 2}}]}},
                   "metadata": {"lineage": {"rootRunId": "p", "parentRunId": "p"}}, "extra": {"kept": 1}}),
            json!({"id": "r", "state": null, "steps": [], "events": []}),
            json!({"id": "r", "steps": [{"id": "a"}], "steps": [{"id": "b", "status": 7}]}),
            json!({"id": "r", "state": {"evidenceGraph": {"summarize": true}}}),
            json!({"id": "r", "metrics": {"childRuns": {"items": [null]}}}),
            json!({"id": "r", "steps": [{"id": "a"}, null]}),
            json!({"id": "r", "steps": ["text"]}),
            json!({"id": "r", "messages": "abc"}),
            json!({"id": "r", "events": null}),
            json!({"id": "r", "state": [1]}),
            json!({"id": "", "steps": []}),
            json!(["not", "a", "run"]),
        ];
        for record in records {
            let bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
            assert_agrees(&bytes);
        }
        assert!(
            run_for_leaf(br#"{"id": "r", "steps": [{"id": "a"}, null]}"#).is_none(),
            "a null step is the full decode's to report"
        );
    }

    #[test]
    fn broken_text_in_a_dropped_part_is_left_to_the_full_decode() {
        for text in [
            r#"{"id": "r", "messages": [{"a": 1e400}]}"#,
            r#"{"id": "r", "checkpoints": [{"id": "c", "snapshot": {"s": "\ud800"}}]}"#,
            r#"{"id": "r", "checkpoints": [{"id": "c", "snapshot": {"s": "\q"}}]}"#,
            r#"{"id": "r", "events": [1, 2,]}"#,
            r#"{"id": "r", "toolResults": [{"$serde_json::private::RawValue": "{"}]}"#,
            r#"{"$serde_json::private::RawValue": "{}"}"#,
            r#"{"id": "r"} trailing"#,
        ] {
            assert!(run_for_leaf(text.as_bytes()).is_none(), "{text}");
            assert_agrees(text.as_bytes());
        }
        // Invalid UTF-8 inside a dropped checkpoint snapshot: the view checks the whole record
        // once, so it must still refuse it, whichever part it is in.
        let mut invalid = br#"{"id": "r", "checkpoints": [{"id": "c", "snapshot": {"s": "x"}}]}"#.to_vec();
        let at = invalid.iter().position(|byte| *byte == b'x').unwrap_or_default();
        invalid[at] = 0xff;
        assert!(run_for_leaf(&invalid).is_none());
        assert!(full(&invalid).is_none());
        // Nested past serde_json's limit (128) inside a dropped step payload.
        let deep =
            format!(r#"{{"id": "r", "steps": [{{"id": "s", "payload": {}{}}}]}}"#, "[".repeat(200), "]".repeat(200));
        assert!(full(deep.as_bytes()).is_none() && run_for_leaf(deep.as_bytes()).is_none());
    }
}
