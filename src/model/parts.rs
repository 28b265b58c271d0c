//! The parts of a run: steps, checkpoints, events, errors, tool calls and pending state.
//!
//! Parts come from foreign data (the reference runtime, hand-built records, older or newer
//! runtimes), so they are read leniently and written back losslessly:
//! - a modelled key whose value has the expected type lands in its typed field;
//! - any other key, and a modelled key whose value has an unexpected type (including `null`
//!   where a string is expected), is kept verbatim in `extra`;
//! - an entry that is not a JSON object at all (the reference tolerates strings in `errors`)
//!   is kept verbatim in `non_object`, and every typed field reads as absent, exactly as
//!   property access on a string reads `undefined` in JavaScript.
//!
//! Serialisation writes the typed fields (in the reference's key order) and then `extra`.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{
    BoolDeserializer, F64Deserializer, I64Deserializer, SeqAccessDeserializer, StrDeserializer, StringDeserializer,
    U64Deserializer, UnitDeserializer,
};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::decode::{RAW_VALUE_KEY, replay_as_value};
use super::json::{FromJson, JsNumber, truthy};
use super::json_text::JsonText;
use super::vocab::{CheckpointLabel, EventType, PauseStage, RunStatus, StepStatus, StepType};

/// Index of `key` in `keys` (`usize::MAX` when absent), at compile time.
const fn key_index(keys: &[&str], key: &str) -> usize {
    let mut index = 0;
    while index < keys.len() {
        let (a, b) = (keys[index].as_bytes(), key.as_bytes());
        let mut same = a.len() == b.len();
        let mut at = 0;
        while same && at < a.len() {
            same = a[at] == b[at];
            at += 1;
        }
        if same {
            return index;
        }
        index += 1;
    }
    usize::MAX
}

/// Most modelled keys a lenient record has (the size of its key-position table).
const MAX_KEYS: usize = 16;

/// A lenient record built from an object's entries (unique keys, in record order) or from
/// the non-object value foreign data put in its place.
trait Lenient: Sized {
    fn from_entries(entries: impl Iterator<Item = (String, Value)>, len: usize) -> Self;
    fn from_non_object(value: Value) -> Self;
    /// Whether `key`'s field is read as kept text ([`JsonText`]).
    fn keeps_text(key: &str) -> bool;
    /// Sets `key`'s field from kept text.
    fn set_text(&mut self, key: &str, text: JsonText);

    /// Reads an entry leniently (see the module documentation).
    fn from_json_value(value: Value) -> Self {
        match value {
            Value::Object(map) => {
                let len = map.len();
                Self::from_entries(map.into_iter(), len)
            }
            other => Self::from_non_object(other),
        }
    }
}

/// Reads a lenient record straight from the deserializer: the object's entries are collected
/// without building a `Value` map first (no hashing of keys), and a non-object is read as the
/// `Value` it is.
struct LenientVisitor<T>(PhantomData<T>);

impl<'de, T: Lenient> Visitor<'de> for LenientVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut entries: Vec<(String, Value)> = Vec::with_capacity(map.size_hint().unwrap_or(12));
        // Fields kept as text: read as text, placed by a `null` standing in for them.
        let mut texts: Vec<(String, JsonText)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if entries.is_empty() && key == RAW_VALUE_KEY {
                return replay_as_value(key, map).map(T::from_json_value);
            }
            if T::keeps_text(&key) {
                texts.push((key.clone(), map.next_value()?));
                entries.push((key, Value::Null));
                continue;
            }
            let value = map.next_value()?;
            entries.push((key, value));
        }
        let len = entries.len();
        let mut record = if has_duplicate_keys(&entries) {
            // A key written twice: its last value at its first position, as a `Value` map has it.
            let unique: Map<String, Value> = entries.into_iter().collect();
            let len = unique.len();
            T::from_entries(unique.into_iter(), len)
        } else {
            T::from_entries(entries.into_iter(), len)
        };
        // In record order, so of a key written twice the last text wins.
        for (key, text) in texts {
            record.set_text(&key, text);
        }
        Ok(record)
    }

    // Non-objects go through `Value`'s own visitor, so they are exactly the `Value` a
    // two-step decode would have kept.
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq)).map(T::from_non_object)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        Value::deserialize(StrDeserializer::<E>::new(text)).map(T::from_non_object)
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<T, E> {
        Value::deserialize(StringDeserializer::<E>::new(text)).map(T::from_non_object)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<T, E> {
        Value::deserialize(BoolDeserializer::<E>::new(value)).map(T::from_non_object)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        Value::deserialize(I64Deserializer::<E>::new(value)).map(T::from_non_object)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        Value::deserialize(U64Deserializer::<E>::new(value)).map(T::from_non_object)
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<T, E> {
        Value::deserialize(F64Deserializer::<E>::new(value)).map(T::from_non_object)
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Value::deserialize(UnitDeserializer::<E>::new()).map(T::from_non_object)
    }

    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        self.visit_unit()
    }
}

/// Whether an object's entries repeat a key (rare: hand-edited or hostile records).
fn has_duplicate_keys(entries: &[(String, Value)]) -> bool {
    if entries.len() <= 16 {
        return entries
            .iter()
            .enumerate()
            .any(|(index, (key, _))| entries[..index].iter().any(|(seen, _)| seen == key));
    }
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    !entries.iter().all(|(key, _)| seen.insert(key.as_str()))
}

macro_rules! lenient_record {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty => $key:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: Option<$ty>, )*
            /// Keys salvage does not model, and modelled keys whose value had another type.
            pub extra: Map<String, Value>,
            /// The entry itself when foreign data put something other than an object here.
            pub non_object: Option<Value>,
            /// The record's key order when it differs from the written order (typed keys,
            /// then `extra`); empty otherwise. Keys added later are written after these.
            pub key_order: Vec<String>,
        }

        impl $name {
            /// The modelled keys, in the order they are written.
            pub const KEYS: &'static [&'static str] = &[$($key),*];

            /// Reads an entry leniently (see the module documentation).
            pub fn from_value(value: Value) -> Self {
                <Self as Lenient>::from_json_value(value)
            }


            /// The previous reading (each modelled key deserialised from a borrowed value, then
            /// removed), kept as the oracle the by-move reading is tested against.
            #[cfg(test)]
            pub(crate) fn from_value_by_clone(value: Value) -> Self {
                fn take_typed<T: for<'de> Deserialize<'de>>(map: &mut Map<String, Value>, key: &str) -> Option<T> {
                    let parsed = T::deserialize(map.get(key)?).ok()?;
                    map.shift_remove(key);
                    Some(parsed)
                }
                match value {
                    Value::Object(mut map) => {
                        let original: Vec<String> = map.keys().cloned().collect();
                        let mut entry = Self::default();
                        $( entry.$field = take_typed(&mut map, $key); )*
                        entry.extra = map;
                        let written = Self::KEYS
                            .iter()
                            .filter(|key| entry.has_typed(key))
                            .map(|key| (*key).to_owned())
                            .chain(entry.extra.keys().cloned());
                        if !written.eq(original.iter().cloned()) {
                            entry.key_order = original;
                        }
                        entry
                    }
                    other => Self { non_object: Some(other), ..Self::default() },
                }
            }

            /// The entry as JSON, exactly as it will be stored.
            pub fn to_value(&self) -> Value {
                serde_json::to_value(self).unwrap_or(Value::Null)
            }

            /// Whether the entry was a JSON object (and not, say, a string or `null`).
            pub fn is_object(&self) -> bool {
                self.non_object.is_none()
            }

            /// Whether the typed field of a modelled key holds a value.
            #[cfg(test)]
            fn has_typed(&self, key: &str) -> bool {
                match key {
                    $( $key => self.$field.is_some(), )*
                    _ => false,
                }
            }

            /// Writes `key` (typed field or `extra`) when the entry has it.
            fn serialize_key<M: SerializeMap>(&self, key: &str, map: &mut M) -> Result<bool, M::Error> {
                match key {
                    $( $key if self.$field.is_some() => {
                        map.serialize_entry($key, &self.$field)?;
                        return Ok(true);
                    } )*
                    _ => {}
                }
                match self.extra.get(key) {
                    Some(value) => map.serialize_entry(key, value).map(|()| true),
                    None => Ok(false),
                }
            }

            /// A key of the entry as stored, typed or not.
            pub fn get(&self, key: &str) -> Option<Value> {
                if self.non_object.is_some() {
                    return None;
                }
                match key {
                    $( $key => self.$field.as_ref().and_then(|v| serde_json::to_value(v).ok())
                        .or_else(|| self.extra.get(key).cloned()), )*
                    _ => self.extra.get(key).cloned(),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if let Some(raw) = &self.non_object {
                    return raw.serialize(serializer);
                }
                let mut map = serializer.serialize_map(None)?;
                // The record's own order first (reference outputs echo records verbatim),
                // then whatever was added since, in the written order.
                let mut written: Vec<&str> = Vec::new();
                for key in &self.key_order {
                    if !written.contains(&key.as_str()) && self.serialize_key(key, &mut map)? {
                        written.push(key);
                    }
                }
                $( if !written.contains(&$key) {
                    if let Some(value) = &self.$field { map.serialize_entry($key, value)?; }
                } )*
                for (key, value) in &self.extra {
                    if !written.contains(&key.as_str()) {
                        map.serialize_entry(key, value)?;
                    }
                }
                map.end()
            }
        }

        impl Lenient for $name {
            /// Reads an object's entries by move: each modelled key's value is converted in
            /// place (no clone), anything else goes to `extra` in record order.
            fn from_entries(entries: impl Iterator<Item = (String, Value)>, len: usize) -> Self {
                const { assert!($name::KEYS.len() <= MAX_KEYS) };
                let mut entry = Self::default();
                // Where each typed key sat in the record, to rebuild the record's order only
                // when it differs from the written one (typed keys in `KEYS` order, then extras).
                let mut typed_at = [usize::MAX; MAX_KEYS];
                let mut in_written_order = true;
                let mut last_typed: Option<usize> = None;
                for (position, (key, value)) in entries.enumerate() {
                    let value = match key.as_str() {
                        $( $key => match FromJson::from_json(value) {
                            Ok(typed) => {
                                const INDEX: usize = key_index($name::KEYS, $key);
                                entry.$field = Some(typed);
                                typed_at[INDEX] = position;
                                in_written_order &= entry.extra.is_empty() && last_typed.is_none_or(|last| last < INDEX);
                                last_typed = Some(INDEX);
                                continue;
                            }
                            Err(value) => value,
                        }, )*
                        _ => value,
                    };
                    entry.extra.insert(key, value);
                }
                if !in_written_order {
                    let mut order: Vec<Option<String>> = vec![None; len];
                    for (index, position) in typed_at.iter().enumerate() {
                        if let Some(slot) = order.get_mut(*position) {
                            *slot = Some(Self::KEYS[index].to_owned());
                        }
                    }
                    let mut extras = entry.extra.keys();
                    entry.key_order =
                        order.into_iter().map(|slot| slot.or_else(|| extras.next().cloned()).unwrap_or_default()).collect();
                }
                entry
            }

            fn from_non_object(value: Value) -> Self {
                Self { non_object: Some(value), ..Self::default() }
            }

            fn keeps_text(key: &str) -> bool {
                match key {
                    $( $key => <$ty as FromJson>::KEEPS_TEXT, )*
                    _ => false,
                }
            }

            fn set_text(&mut self, key: &str, text: JsonText) {
                match key {
                    $( $key => if let Some(typed) = <$ty as FromJson>::from_text(text) {
                        self.$field = Some(typed);
                    }, )*
                    _ => {}
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_any(LenientVisitor(PhantomData))
            }
        }
    };
}

lenient_record! {
    /// One step of a run (`steps[]`): a model call, a tool attempt, a verifier, a workflow
    /// step, a planning phase.
    pub struct Step {
        id: String => "id",
        /// Workflow steps: the step id inside the workflow definition.
        key: String => "key",
        step_type: StepType => "type",
        status: StepStatus => "status",
        created_at: String => "createdAt",
        updated_at: String => "updatedAt",
        payload: Value => "payload",
        output: Value => "output",
        error: Value => "error",
        duration_ms: JsNumber => "durationMs",
    }
}

impl Step {
    pub fn is_failed(&self) -> bool {
        self.status == Some(StepStatus::Failed)
    }

    /// The tool a `tool` or `verifier` step is about (`payload.toolName`).
    pub fn tool_name(&self) -> Option<&str> {
        self.payload.as_ref()?.get("toolName")?.as_str()
    }
}

lenient_record! {
    /// A checkpoint: a labelled snapshot of the run's state (`checkpoints[]`).
    pub struct Checkpoint {
        id: String => "id",
        label: CheckpointLabel => "label",
        timestamp: String => "timestamp",
        status: RunStatus => "status",
        payload: Value => "payload",
        /// `{state, messages, steps, toolCalls, toolResults, metrics, pendingApproval,
        /// pendingPause, output, status}` — kept as text: it is copied far more often than
        /// looked into.
        snapshot: JsonText => "snapshot",
        message_count: JsNumber => "messageCount",
        tool_call_count: JsNumber => "toolCallCount",
        tool_result_count: JsNumber => "toolResultCount",
        workflow_id: String => "workflowId",
        completed_steps: Value => "completedSteps",
    }
}

impl Checkpoint {
    /// Ids of the steps recorded in the snapshot, in order; `None` when the snapshot holds
    /// no `steps` array. Only the snapshot's `steps` are decoded.
    pub fn snapshot_step_ids(&self) -> Option<Vec<String>> {
        let steps = self.snapshot.as_ref()?.get("steps")?;
        let steps = steps.as_array()?;
        Some(steps.iter().filter_map(|step| step.get("id")?.as_str().map(str::to_owned)).collect())
    }
}

lenient_record! {
    /// A run event (`events[]`).
    pub struct Event {
        id: String => "id",
        event_type: EventType => "type",
        timestamp: String => "timestamp",
        payload: Value => "payload",
    }
}

lenient_record! {
    /// A recorded error (`errors[]`): `{name, message}`, plus `stepId` for workflow errors.
    pub struct RunError {
        name: String => "name",
        message: String => "message",
        step_id: String => "stepId",
    }
}

lenient_record! {
    /// A tool-gate request (`toolCalls[]`).
    pub struct ToolCall {
        run_id: String => "runId",
        tool_name: String => "toolName",
        /// Some producers write `name` instead of `toolName`.
        name: String => "name",
        tool_call: Value => "toolCall",
        arguments: Value => "arguments",
        metadata: Value => "metadata",
    }
}

impl ToolCall {
    /// The tool's side-effect class from its metadata (`sideEffectLevel`), e.g.
    /// `external_write`, `read_only`, `none`.
    pub fn side_effect_level(&self) -> Option<&str> {
        self.metadata.as_ref()?.get("sideEffectLevel")?.as_str()
    }
}

lenient_record! {
    /// A tool call waiting for a human decision (`pendingApproval`).
    pub struct PendingApproval {
        run_id: String => "runId",
        tool_name: String => "toolName",
        tool_call: Value => "toolCall",
        arguments: Value => "arguments",
        metadata: Value => "metadata",
        reason: Value => "reason",
        confidence: Value => "confidence",
        verification: Value => "verification",
    }
}

impl PendingApproval {
    /// JavaScript truthiness of the stored value: an object always counts; a stray `false`,
    /// `0` or `""` does not.
    pub fn is_present(&self) -> bool {
        self.non_object.as_ref().is_none_or(truthy)
    }

    /// `pendingApproval.toolCall.id`.
    pub fn tool_call_id(&self) -> Option<&Value> {
        self.tool_call.as_ref()?.get("id")
    }
}

lenient_record! {
    /// Why and where a run is paused (`pendingPause`).
    pub struct PendingPause {
        reason: Value => "reason",
        stage: PauseStage => "stage",
        source_run_id: String => "sourceRunId",
        source_checkpoint_id: String => "sourceCheckpointId",
        payload: Value => "payload",
        workflow_id: String => "workflowId",
        step_id: String => "stepId",
        source: Value => "source",
        assessment: Value => "assessment",
        tool_name: String => "toolName",
    }
}

impl PendingPause {
    pub fn is_present(&self) -> bool {
        self.non_object.as_ref().is_none_or(truthy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_and_mistyped_keys_survive_a_round_trip() {
        let raw = json!({
            "id": "r:step:1", "type": "tool", "status": 7, "durationMs": null,
            "createdAt": "2025-01-01T00:00:00.000Z", "customField": {"a": 1}
        });
        let step = Step::from_value(raw.clone());
        assert_eq!(step.id.as_deref(), Some("r:step:1"));
        assert_eq!(step.step_type, Some(StepType::Tool));
        assert_eq!(step.status, None, "a numeric status is not a status");
        assert_eq!(step.duration_ms, None);
        assert_eq!(step.to_value(), raw);
    }

    #[test]
    fn non_object_entries_are_kept_verbatim() {
        let error = RunError::from_value(json!("queue timeout while waiting for worker"));
        assert_eq!(error.message, None);
        assert!(!error.is_object());
        assert_eq!(error.to_value(), json!("queue timeout while waiting for worker"));
        assert!(!PendingApproval::from_value(json!(false)).is_present());
        assert!(PendingApproval::from_value(json!({})).is_present());
    }

    #[test]
    fn the_record_key_order_survives_a_round_trip() {
        // Planning steps get `output` / `error` before `updatedAt` (`updateStep` merges them in).
        let text = r#"{"id":"r:step:2","type":"execution","status":"failed","createdAt":"a","error":{"name":"E"},"updatedAt":"b","durationMs":3}"#;
        let mut step: Step = serde_json::from_str(text).unwrap_or_default();
        assert_eq!(serde_json::to_string(&step).unwrap_or_default(), text);
        step.output = Some(serde_json::json!("late"));
        step.extra.insert("note".into(), serde_json::json!(1));
        let written = serde_json::to_string(&step).unwrap_or_default();
        assert!(written.starts_with(&text[..text.len() - 1]), "{written}");
        assert!(written.ends_with(r#","output":"late","note":1}"#), "{written}");
    }

    #[test]
    fn reference_key_order_is_written_for_agent_steps() {
        let text = r#"{"id":"r:step:2","type":"tool","status":"failed","createdAt":"a","updatedAt":"b","payload":{"toolName":"x"},"output":null,"error":{"name":"Error","message":"boom"},"durationMs":95}"#;
        let step: Step = serde_json::from_str(text).unwrap_or_default();
        assert_eq!(serde_json::to_string(&step).unwrap_or_default(), text);
        assert_eq!(step.tool_name(), Some("x"));
    }
}
