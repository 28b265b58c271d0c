//! A run read straight from JSON text (issue 13): the top-level keys are visited one by one and
//! each array field is read entry by entry into its typed parts, instead of building the whole
//! record as a `serde_json::Value` and converting it ([`Run::from_value`]).
//!
//! Exactness rests on four rules:
//! - every value still goes through serde_json as a `Value` would (`deserialize_any`: the same
//!   syntax checks, number ranges, nesting limit and error positions), only into its final place;
//! - a key read twice keeps its last value, and unknown keys keep their first position (what a
//!   `Value` map with `preserve_order` does);
//! - shape problems are not raised while reading: the fields are collected into [`RunFields`]
//!   and checked once the whole text has parsed, by the code [`Run::from_value`] uses. So a
//!   syntax error anywhere wins over a shape error, and of several shape errors the same one
//!   is reported;
//! - an object whose first key is serde_json's raw-value marker ([`RAW_VALUE_KEY`]; the
//!   `raw_value` feature is on through a dependency) is handed to `Value`'s own visitor, which
//!   reads it as the JSON text in its value.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer, StringDeserializer};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::run::{NotArray, RunFields, RunKey, Spread};
use super::{Checkpoint, Event, Run, RunError, RunShapeError, Step, ToolCall};

/// A run record as read: the run, or the shape error [`Run::from_value`] gives for it. The
/// deserializer's own error is only ever the JSON's.
pub(crate) struct RunRecord(pub Result<Run, RunShapeError>);

impl<'de> Deserialize<'de> for RunRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RecordVisitor).map(RunRecord)
    }
}

/// The record in `deserializer`'s text, which must hold nothing else (as `serde_json::from_*`).
pub(crate) fn read_record<'de, R: serde_json::de::Read<'de>>(
    mut deserializer: serde_json::Deserializer<R>,
) -> Result<Result<Run, RunShapeError>, serde_json::Error> {
    let record = RunRecord::deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(record.0)
}

/// A first key that serde_json's `Value` (with its `raw_value` feature, which a dependency
/// turns on) does not keep: the object then stands for the JSON text in its value.
pub(super) const RAW_VALUE_KEY: &str = "$serde_json::private::RawValue";

/// The `Value` of an object whose first key, `first_key`, has already been read: the key is
/// handed back to `Value`'s own visitor, so the object (raw-value marker included) is read
/// exactly as a two-step decode would have read it.
pub(super) fn replay_as_value<'de, A: MapAccess<'de>>(first_key: String, map: A) -> Result<Value, A::Error> {
    Value::deserialize(MapAccessDeserializer::new(Replay { first_key: Some(first_key), map }))
}

struct Replay<A> {
    first_key: Option<String>,
    map: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Replay<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        match self.first_key.take() {
            Some(key) => seed.deserialize(StringDeserializer::<A::Error>::new(key)).map(Some),
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// "(run) must be an object" for a record that is some other JSON value.
fn not_an_object(kind: &str) -> Result<Run, RunShapeError> {
    Err(RunShapeError::expected_kind("(run)", "an object", kind))
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = Result<Run, RunShapeError>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = RunFields::default();
        let mut first = true;
        while let Some(key) = map.next_key::<Key>()? {
            if std::mem::take(&mut first)
                && let Key::Other(name) = &key
                && name == RAW_VALUE_KEY
            {
                return Ok(Run::from_value(replay_as_value(name.clone(), map)?));
            }
            match key {
                Key::Known(RunKey::Messages) => fields.messages = Some(map.next_value_seed(SpreadSeed::new())?),
                Key::Known(RunKey::Steps) => fields.steps = Some(map.next_value_seed(SpreadSeed::new())?),
                Key::Known(RunKey::ToolCalls) => fields.tool_calls = Some(map.next_value_seed(SpreadSeed::new())?),
                Key::Known(RunKey::ToolResults) => fields.tool_results = Some(map.next_value_seed(SpreadSeed::new())?),
                Key::Known(RunKey::Checkpoints) => fields.checkpoints = Some(map.next_value_seed(SpreadSeed::new())?),
                Key::Known(RunKey::Errors) => fields.errors = Some(map.next_value_seed(SpreadSeed::new())?),
                Key::Known(RunKey::Events) => fields.events = Some(map.next_value_seed(SpreadSeed::new())?),
                Key::Known(other) => fields.set(other, map.next_value()?),
                Key::Other(name) => {
                    let value = map.next_value()?;
                    fields.extra.insert(name, value);
                }
            }
        }
        Ok(fields.into_run())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        // Read in full all the same: a syntax error further on is still the record's error.
        Value::deserialize(SeqAccessDeserializer::new(seq))?;
        Ok(not_an_object("an array"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(not_an_object("a string"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(not_an_object("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(not_an_object("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(not_an_object("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(not_an_object("a number"))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(not_an_object("null"))
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(not_an_object("null"))
    }
}

/// A top-level key: one salvage models, or another (kept in `extra`).
enum Key {
    Known(RunKey),
    Other(String),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Key, E> {
        Ok(RunKey::of(key).map_or_else(|| Key::Other(key.to_owned()), Key::Known))
    }

    fn visit_string<E>(self, key: String) -> Result<Key, E> {
        Ok(RunKey::of(&key).map_or(Key::Other(key), Key::Known))
    }
}

/// An array field read entry by entry as `T`; anything else is read in full and described
/// for [`RunFields`]'s error.
struct SpreadSeed<T>(PhantomData<T>);

impl<T> SpreadSeed<T> {
    fn new() -> Self {
        SpreadSeed(PhantomData)
    }
}

/// An entry of an array field, read from the deserializer or from its `Value`.
trait Entry: Sized {
    fn from_value(value: Value) -> Self;
}

impl Entry for Value {
    fn from_value(value: Value) -> Self {
        value
    }
}

macro_rules! part_entries {
    ($($part:ty),*) => {
        $( impl Entry for $part {
            fn from_value(value: Value) -> Self {
                <$part>::from_value(value)
            }
        } )*
    };
}

part_entries!(Step, ToolCall, Checkpoint, RunError, Event);

impl<'de, T: Deserialize<'de> + Entry> DeserializeSeed<'de> for SpreadSeed<T> {
    type Value = Spread<T>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: Deserialize<'de> + Entry> Visitor<'de> for SpreadSeed<T> {
    type Value = Spread<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Ok(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        // An object, unless it is serde_json's raw-value marker standing for an array.
        match Value::deserialize(MapAccessDeserializer::new(map))? {
            Value::Array(items) => Ok(Ok(items.into_iter().map(T::from_value).collect())),
            other => Ok(Err(NotArray::of(&other))),
        }
    }

    fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Err(NotArray::String { chars: text.chars().count() }))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(NotArray::Kind("a boolean")))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(NotArray::Kind("a number")))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(NotArray::Kind("a number")))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(NotArray::Kind("a number")))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err(NotArray::Kind("null")))
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Err(NotArray::Kind("null")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::corpus_records::corpus_records;
    use crate::model::{Checkpoint, Event, PendingApproval, PendingPause, RunError, Step, ToolCall};
    use proptest::prelude::*;

    /// The two-step decode every read used before: the text as a `Value`, then the run.
    fn via_value(bytes: &[u8]) -> Result<Result<Run, RunShapeError>, serde_json::Error> {
        serde_json::from_slice::<Value>(bytes).map(Run::from_value)
    }

    /// `Deserialize for Run` as it was: the record as a `Value`, then the run, its shape error
    /// made outside the deserializer.
    struct OldRun(Run);

    impl<'de> Deserialize<'de> for OldRun {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let value = Value::deserialize(deserializer)?;
            Run::from_value(value).map(OldRun).map_err(serde::de::Error::custom)
        }
    }

    /// Decodes `bytes` both ways and checks they agree: the same JSON error (message and
    /// position), or the same shape error, or the same run written to the same bytes. Returns
    /// what happened, for the callers that expect one outcome.
    fn agree(bytes: &[u8]) -> Result<Result<Run, RunShapeError>, String> {
        let text = String::from_utf8_lossy(bytes);
        let text = &text[..text.len().min(300)];
        let one = Run::from_json_slice(bytes);
        let two = via_value(bytes);
        if let Ok(text) = std::str::from_utf8(bytes) {
            let from_str = Run::from_json_str(text).map_err(|e| (e.to_string(), e.line(), e.column()));
            let value_str = serde_json::from_str::<Value>(text).map(Run::from_value);
            assert_eq!(from_str, value_str.map_err(|e| (e.to_string(), e.line(), e.column())), "{text}");
        }
        // `Deserialize for Run` (serde callers) gives what it gave before, errors included.
        let typed = serde_json::from_slice::<Run>(bytes).map_err(|e| e.to_string());
        let old_typed = serde_json::from_slice::<OldRun>(bytes).map(|run| run.0).map_err(|e| e.to_string());
        assert_eq!(typed, old_typed, "{text}");
        match (&one, &two) {
            (Err(a), Err(b)) => {
                assert_eq!(
                    (a.to_string(), a.line(), a.column(), a.classify()),
                    (b.to_string(), b.line(), b.column(), b.classify()),
                    "{text}"
                );
            }
            (Ok(Err(a)), Ok(Err(b))) => {
                assert_eq!(a, b, "{text}");
                assert_eq!(typed.as_ref().err(), Some(&b.to_string()), "{text}");
            }
            (Ok(Ok(a)), Ok(Ok(b))) => {
                assert_eq!(a, b, "{text}");
                assert_eq!(serde_json::to_string(a).ok(), serde_json::to_string(b).ok(), "{text}");
                assert_eq!(a.to_pretty_json(), b.to_pretty_json(), "{text}");
                assert!(typed.as_ref().is_ok_and(|run| run == b), "{text}");
            }
            _ => panic!("the decodes disagree on {text}: {one:?} against {two:?}"),
        }
        one.map_err(|e| e.to_string())
    }

    #[test]
    fn the_one_pass_decode_equals_the_value_decode_on_the_corpus() {
        let records = corpus_records();
        if records.is_empty() {
            return;
        }
        let mut runs = 0;
        for (name, bytes) in &records {
            let decoded = agree(bytes);
            assert!(matches!(decoded, Ok(Ok(_))), "{name}: corpus runs are valid: {decoded:?}");
            runs += 1;
        }
        assert!(runs > 100, "only {runs} corpus runs found");
    }

    /// The parts read by move (no clone) equal what the previous, cloning reading gave, on
    /// every entry of every corpus run.
    #[test]
    fn parts_read_by_move_equal_the_cloning_reading_on_the_corpus() {
        fn check<T: PartialEq + fmt::Debug + Serialize>(
            name: &str,
            entries: Option<&Value>,
            by_move: fn(Value) -> T,
            by_clone: fn(Value) -> T,
        ) -> usize {
            let entries = match entries {
                Some(Value::Array(entries)) => entries.clone(),
                Some(single) => vec![single.clone()],
                None => return 0,
            };
            for entry in &entries {
                let (a, b) = (by_move(entry.clone()), by_clone(entry.clone()));
                assert_eq!(a, b, "{name}: {entry}");
                assert_eq!(serde_json::to_string(&a).ok(), serde_json::to_string(&b).ok(), "{name}");
            }
            entries.len()
        }
        use serde::Serialize;
        let mut parts = 0;
        for (name, bytes) in corpus_records() {
            let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            parts += check(&name, value.get("steps"), Step::from_value, Step::from_value_by_clone);
            parts += check(&name, value.get("toolCalls"), ToolCall::from_value, ToolCall::from_value_by_clone);
            parts += check(&name, value.get("checkpoints"), Checkpoint::from_value, Checkpoint::from_value_by_clone);
            parts += check(&name, value.get("errors"), RunError::from_value, RunError::from_value_by_clone);
            parts += check(&name, value.get("events"), Event::from_value, Event::from_value_by_clone);
            let (approval, pause) = (value.get("pendingApproval"), value.get("pendingPause"));
            parts += check(&name, approval, PendingApproval::from_value, PendingApproval::from_value_by_clone);
            parts += check(&name, pause, PendingPause::from_value, PendingPause::from_value_by_clone);
        }
        eprintln!("{parts} parts compared");
    }

    #[test]
    fn parts_read_by_move_equal_the_cloning_reading_on_odd_entries() {
        let entries = [
            r#"{"id":"s","type":"tool","status":"failed","createdAt":"a","updatedAt":"b","payload":{"toolName":"x"},"output":null,"error":{"m":1},"durationMs":95}"#,
            r#"{"durationMs":3,"id":"s","status":"failed"}"#,
            r#"{"x":1,"id":"s"}"#,
            r#"{"id":7,"type":null,"status":["failed"],"durationMs":"3","createdAt":false,"key":"k"}"#,
            r#"{"status":"failed","id":"s","status":7,"extra":1,"id":"t","extra":2}"#,
            r#"{"id":5,"x":1,"id":"s"}"#,
            r#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":15,"p":16,"q":17,"id":"s","c":"again"}"#,
            r#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":15,"p":16,"q":17,"id":"s"}"#,
            r#""é\u00e9\ud83d\ude00""#,
            r#"-1.5e-7"#,
            r#"-12"#,
            r#"{"id":"s","x":1,"id":5}"#,
            r#"{"durationMs":1e300,"type":"REPLAY","status":"Failed"}"#,
            r#"{"durationMs":18446744073709551615,"payload":-0}"#,
            r#"{}"#,
            r#""plain string""#,
            r#"null"#,
            r#"[1,{"id":"s"}]"#,
            r#"false"#,
        ];
        for text in entries {
            let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(Step::from_value(value.clone()), Step::from_value_by_clone(value.clone()), "{text}");
            assert_eq!(Checkpoint::from_value(value.clone()), Checkpoint::from_value_by_clone(value.clone()));
            assert_eq!(PendingPause::from_value(value.clone()), PendingPause::from_value_by_clone(value.clone()));
            // Read straight from the text, as the one-pass decode reads the entries of `steps`.
            let read: Result<Step, _> = serde_json::from_str(text);
            assert_eq!(read.ok(), Some(Step::from_value_by_clone(value.clone())), "{text}");
            let read: Result<PendingApproval, _> = serde_json::from_str(text);
            assert_eq!(read.ok(), Some(PendingApproval::from_value_by_clone(value)), "{text}");
        }
    }

    #[test]
    fn hostile_records_decode_the_same_both_ways() {
        // Every modelled key, and one the model does not know.
        let fields = crate::model::RUN_KEYS.into_iter().chain(["extraKey"]);
        let values = [
            "null",
            "true",
            "false",
            "0",
            "-1.5",
            "1e300",
            "\"\"",
            "\"oops\"",
            "\"é\\u00e9\"",
            "[]",
            "[1]",
            "[null,\"x\",1,[],{}]",
            "{}",
            "{\"a\":1}",
            "{\"id\":\"s\",\"status\":\"failed\"}",
        ];
        let mut outcomes = [0usize; 3];
        for field in fields {
            for value in values {
                for record in [
                    format!(r#"{{"id":"r","{field}":{value}}}"#),
                    format!(r#"{{"{field}":{value},"id":"r","steps":[]}}"#),
                    format!(r#"{{"{field}":{value},"{field}":{value},"steps":"x","id":"r"}}"#),
                ] {
                    match agree(record.as_bytes()) {
                        Ok(Ok(_)) => outcomes[0] += 1,
                        Ok(Err(_)) => outcomes[1] += 1,
                        Err(_) => outcomes[2] += 1,
                    }
                }
            }
        }
        assert!(outcomes[0] > 0 && outcomes[1] > 0, "both runs and shape errors are covered: {outcomes:?}");
        // Wrong types inside nested objects, arrays of odd entries, nested errors.
        for record in [
            r#"{"id":"r","steps":[1,"x",null,[],true,{"id":"s","status":7}],"errors":["plain",{"name":"E"}]}"#,
            r#"{"id":"r","timestamps":{"createdAt":5}}"#,
            r#"{"id":"r","timestamps":{"createdAt":"","startedAt":false,"archivedAt":"x"}}"#,
            r#"{"id":"r","metrics":{"tokenUsage":{"prompt":"1"}}}"#,
            r#"{"id":"r","metrics":{"cost":null,"timings":{"modelMs":1e308},"childRuns":{"items":"x"},"debug":0}}"#,
            r#"{"id":"r","metadata":{"lineage":{"childRunIds":["a",1]}}}"#,
            r#"{"id":"r","metadata":{"q":1,"lineage":{"rootRunId":"x","rootRunId":""},"lineage":null}}"#,
            r#"{"id":"r","metadata":[]}"#,
            r#"{"id":"r","pendingApproval":false,"pendingPause":"x"}"#,
            r#"{"id":"","steps":"x"}"#,
            r#"{"steps":"x"}"#,
            r#"{"id":"r","status":"waiting_for_approval","status":"failed"}"#,
            r#"{"x":1,"id":"a","y":2,"x":3,"id":"b","steps":"oops","steps":[{"id":"s"}],"y":{"z":[]}}"#,
            r#"{"a":1,"id":"r","b":2,"a":3,"steps":[{"k":1,"id":"s","j":2,"k":3}]}"#,
            r#"{"\u0069d":"escaped key","st\u0065ps":[{"\u0069d":"s"}]}"#,
            r#"{"id":"r","steps":[{"durationMs":123456789012345678901234567890,"output":-0,"payload":1.0}]}"#,
            r#"{"id":"r","metrics":{"cost":-0.0,"tokenUsage":{"total":9007199254740993}}}"#,
            r#"{"id":"r","$serde_json::private::RawValue":"1"}"#,
            r#"{"$serde_json::private::RawValue":"{\"id\":\"r\",\"steps\":[{\"id\":\"s\"}]}"}"#,
            r#"{"$serde_json::private::RawValue":"{\"id\":\"r\"}","x":1}"#,
            r#"{"$serde_json::private::RawValue":"{\"id\":\"r\"","x":1}"#,
            r#"{"$serde_json::private::RawValue":5}"#,
            r#"{"$serde_json::private::RawValue":null}"#,
            r#"{"$serde_json::private::RawValue":"nope"}"#,
            r#"{"$serde_json::private::RawValue":"[1,{\"a\":2}]"}"#,
            r#"{"id":"r","steps":[{"$serde_json::private::RawValue":"{\"id\":\"s\",\"status\":\"failed\"}"},{"$serde_json::private::RawValue":"[1]"}]}"#,
            r#"{"id":"r","steps":[{"$serde_json::private::RawValue":"{\"id\":"}]}"#,
            r#"{"id":"r","steps":[{"$serde_json::private::RawValue":"{}","id":"s"}]}"#,
            r#"{"id":"r","steps":[{"id":"s","$serde_json::private::RawValue":"{}"}]}"#,
            r#"{"id":"r","pendingPause":{"$serde_json::private::RawValue":"{\"stage\":\"replay\"}"}}"#,
            r#"{"id":"r","steps":"x","x":{"$serde_json::private::RawValue":"{\"a\":1}"}}"#,
            r#"{"id":"r","steps":{"$serde_json::private::RawValue":"[{\"id\":\"s\"}]"}}"#,
        ] {
            let _ = agree(record.as_bytes());
        }
    }

    #[test]
    fn json_errors_win_over_shape_errors_and_keep_their_position() {
        let cases = [
            r#"{"steps":"oops","x":tru}"#,
            r#"{"id":5,"steps":[{"id":"s"},]}"#,
            r#"{"id":"r","steps":[{"durationMs":1e400}]}"#,
            r#"{"id":"r","extra":1e400}"#,
            r#"{"id":"r"} trailing"#,
            r#"{"id":"r","steps":"x"}}"#,
            r#"{"id":"r\ud800"}"#,
            r#"{"id":"r","bad":"\x"}"#,
            r#"[1,2,{"id":"r"}"#,
            r#"[1,2,{"id":"r"}] x"#,
            "",
            "   ",
            "nul",
            "{\"id\":\"r\",\"k\":\"a\u{0001}b\"}",
            "{\"id\":\"r\",\"input\":\"\\u0000\"}",
        ];
        for text in cases {
            let _ = agree(text.as_bytes());
        }
        let outcome = agree(br#"{"steps":"oops","x":tru}"#);
        assert!(outcome.is_err_and(|e| e.contains("line 1 column")), "a syntax error, not the shape error");
        // Every prefix of a record: truncated files are the commonest corruption.
        let record = br#"{"id":"r","steps":[{"id":"s","status":"failed","payload":{"a":[1,2.5,"x"]}}],"x":{"y":null}}"#;
        for end in 0..=record.len() {
            let _ = agree(&record[..end]);
        }
        // Invalid UTF-8 in a string.
        let _ = agree(b"{\"id\":\"r\xff\"}");
        let _ = agree(b"{\"id\":\"r\",\"steps\":[\"\xc3\"]}");
    }

    #[test]
    fn non_object_records_are_read_in_full_before_the_shape_error() {
        for text in ["[]", "[1,{\"a\":[]}]", "\"x\"", "1", "-2.5", "null", "true", "1e5"] {
            let outcome = agree(text.as_bytes());
            assert!(
                outcome.as_ref().is_ok_and(|r| r.as_ref().is_err_and(|e| e.path == "(run)")),
                "{text}: {outcome:?}"
            );
        }
    }

    #[test]
    fn deep_nesting_fails_or_passes_the_same_way() {
        for depth in [1, 60, 120, 124, 125, 126, 127, 128, 129, 200, 5000] {
            let deep = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            for record in [
                format!(r#"{{"id":"r","x":{deep}}}"#),
                format!(r#"{{"id":"r","steps":[{{"payload":{deep}}}]}}"#),
                format!(r#"{{"id":"r","steps":{deep}}}"#),
                format!(r#"{{"id":"r","metadata":{{"lineage":{{"extra":{deep}}}}}}}"#),
                deep.clone(),
            ] {
                let _ = agree(record.as_bytes());
            }
        }
    }

    /// JSON text for a record shaped like a run: run and part keys (with duplicates), values of
    /// every type, nesting.
    fn json_text() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            proptest::sample::select(
                crate::model::RUN_KEYS
                    .into_iter()
                    .chain([
                        "lineage",
                        "rootRunId",
                        "childRunIds",
                        "type",
                        "durationMs",
                        "createdAt",
                        "name",
                        "label",
                        "snapshot",
                        "tokenUsage",
                        "cost",
                        "timings",
                        "childRuns",
                        "items",
                        "debug",
                        "stage",
                        "x",
                        RAW_VALUE_KEY,
                    ])
                    .collect::<Vec<_>>()
            )
            .prop_map(str::to_owned),
            "[a-z]{1,3}",
        ];
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("0".to_owned()),
            Just("\"\"".to_owned()),
            Just("\"failed\"".to_owned()),
            Just("\"r\"".to_owned()),
            // Text that a raw-value marker key stands for.
            Just(r#""{\"id\":\"r\",\"steps\":[{\"id\":\"s\"}]}""#.to_owned()),
            Just(r#""[{\"id\":\"s\"},1]""#.to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
            "[a-z ]{0,5}".prop_map(|s| format!("\"{s}\"")),
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(|items| format!("[{}]", items.join(","))),
                proptest::collection::vec((key.clone(), inner), 0..7).prop_map(|entries| {
                    let entries: Vec<String> = entries.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", entries.join(","))
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_run_shaped_records_decode_the_same_both_ways(body in json_text(), id in prop_oneof![Just(""), Just("\"id\":\"r\",")]) {
            // Mostly objects with an id, so that the reading goes past the id check.
            let text = match body.strip_prefix('{') {
                Some(rest) if !id.is_empty() && rest != "}" => format!("{{{id}{rest}"),
                Some(_) if !id.is_empty() => "{\"id\":\"r\"}".to_owned(),
                _ => body,
            };
            let _ = agree(text.as_bytes());
        }
    }
}
