//! JSON kept as text, and the pretty layout that writes it.
//!
//! A checkpoint's snapshot is more than half of a run's bytes, and salvage copies it between
//! records far more often than it looks inside (branches and replays read four of its keys,
//! the planner the ids of its steps). [`JsonText`] holds such a value as its compact text: a
//! read only checks and copies it, a compact write copies it back, and a pretty write
//! re-indents it ([`PrettyJson`]). Only the code that looks inside decodes it.
//!
//! serde_json's own pretty formatter writes kept text as it is (compact), so everything that
//! may hold a [`JsonText`] is written pretty through [`to_pretty_vec`] and friends.

use std::fmt;
use std::io::Write;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use super::json::{FromJson, string_end};

/// Nesting below which kept text is known to decode as a `Value` (serde_json stops at 128).
const CHECKED_DEPTH: usize = 100;

/// A JSON value held as its compact text (no whitespace between tokens), decoded only when
/// something looks inside. The text always decodes to a `Value` ([`JsonText::to_value`]):
/// text serde_json could not decode (a number beyond a double, nesting past its limit) is
/// refused when it is read, as a `Value` decode of the record would have refused it.
#[derive(Clone)]
pub struct JsonText(Box<RawValue>);

impl JsonText {
    /// The compact text of `value`.
    pub fn from_value(value: &Value) -> JsonText {
        // A `Value`'s own text always reads back.
        JsonText(RawValue::from_string(value.to_string()).unwrap_or_else(|_| null()))
    }

    /// Keeps JSON text, compacted, once it is known to decode.
    pub fn parse(text: &str) -> Result<JsonText, serde_json::Error> {
        JsonText::from_raw(serde_json::from_str(text)?)
    }

    /// Keeps text a JSON parser has accepted, compacted, once it is known to decode.
    fn from_raw(raw: Box<RawValue>) -> Result<JsonText, serde_json::Error> {
        let text = raw.get();
        let scan = Scan::of(text.as_bytes());
        if scan.max_depth > CHECKED_DEPTH || scan.unusual_numbers {
            // Rare: decoded once, to refuse what a `Value` cannot hold.
            serde_json::from_str::<Value>(text)?;
        }
        if scan.whitespace {
            return RawValue::from_string(super::json::minify(text)).map(JsonText);
        }
        Ok(JsonText(raw))
    }

    /// The compact text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The value, decoded.
    pub fn to_value(&self) -> Value {
        // Checked when kept: the text decodes.
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }

    /// Whether the text is a JSON object.
    pub fn is_object(&self) -> bool {
        self.as_str().starts_with('{')
    }

    /// One key of the object the text holds, decoded (`None` when the key is absent or the
    /// text is not an object); of a key written twice, the last value, as a `Value` has it.
    pub fn get(&self, key: &str) -> Option<Value> {
        if !self.is_object() {
            return None;
        }
        let mut deserializer = serde_json::Deserializer::from_str(self.as_str());
        serde::de::DeserializeSeed::deserialize(KeyOf(key), &mut deserializer).ok().flatten()
    }
}

fn null() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// Reads one key's value out of an object, skipping the others undecoded.
struct KeyOf<'k>(&'k str);

impl<'de> serde::de::DeserializeSeed<'de> for KeyOf<'_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Value>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyOf<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
        let mut found = None;
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if name == self.0 {
                found = Some(map.next_value::<Value>()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // As a `RawValue`: serde_json writes it verbatim (re-indented by `PrettyJson`), and
        // decodes it for `to_value`.
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        JsonText::from_raw(Box::<RawValue>::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

impl FromJson for JsonText {
    const KEEPS_TEXT: bool = true;

    fn from_json(value: Value) -> Result<Self, Value> {
        Ok(JsonText::from_value(&value))
    }

    fn from_text(text: JsonText) -> Option<Self> {
        Some(text)
    }
}

/// What one pass over JSON text finds outside its strings.
struct Scan {
    whitespace: bool,
    max_depth: usize,
    /// An exponent, or more digits than a double's range: the text may hold a number
    /// serde_json refuses.
    unusual_numbers: bool,
}

impl Scan {
    fn of(bytes: &[u8]) -> Scan {
        let mut scan = Scan { whitespace: false, max_depth: 0, unusual_numbers: false };
        let (mut depth, mut digits, mut at) = (0usize, 0usize, 0usize);
        while at < bytes.len() {
            let byte = bytes[at];
            at += 1;
            if byte.is_ascii_digit() {
                digits += 1;
                scan.unusual_numbers |= digits > 300;
                continue;
            }
            digits = 0;
            match byte {
                b'"' => at = string_end(bytes, at),
                b'{' | b'[' => {
                    depth += 1;
                    scan.max_depth = scan.max_depth.max(depth);
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                b' ' | b'\n' | b'\r' | b'\t' => scan.whitespace = true,
                // An exponent (the `e` of `true` and `false` follows a letter).
                b'e' | b'E' => scan.unusual_numbers |= at >= 2 && bytes[at - 2].is_ascii_digit(),
                _ => {}
            }
        }
        scan
    }
}

/// serde_json's pretty layout (two spaces a level), starting `level` levels deep and with its
/// indentation capped at `cap` levels, that also lays out kept text ([`JsonText`]).
pub struct PrettyJson {
    level: usize,
    cap: usize,
    has_value: bool,
}

impl PrettyJson {
    /// `serde_json::to_string_pretty`'s layout.
    pub fn new() -> PrettyJson {
        PrettyJson { level: 0, cap: usize::MAX, has_value: false }
    }

    /// For a value written `level` levels deep into a pretty document: its lines come out
    /// indented as they are in place.
    pub fn nested(level: usize) -> PrettyJson {
        PrettyJson { level, ..PrettyJson::new() }
    }

    /// Indentation stops growing after `cap` levels: the text of deeply nested data stays
    /// linear in its size.
    pub fn capped(cap: usize) -> PrettyJson {
        PrettyJson { cap, ..PrettyJson::new() }
    }

    fn new_line<W: ?Sized + Write>(&self, writer: &mut W, comma: bool) -> std::io::Result<()> {
        writer.write_all(if comma { b",\n" } else { b"\n" })?;
        for _ in 0..self.level.min(self.cap) {
            writer.write_all(b"  ")?;
        }
        Ok(())
    }

    fn open<W: ?Sized + Write>(&mut self, writer: &mut W, bracket: &[u8]) -> std::io::Result<()> {
        self.level += 1;
        self.has_value = false;
        writer.write_all(bracket)
    }

    fn close<W: ?Sized + Write>(&mut self, writer: &mut W, bracket: &[u8]) -> std::io::Result<()> {
        self.level = self.level.saturating_sub(1);
        if self.has_value {
            self.new_line(writer, false)?;
        }
        writer.write_all(bracket)
    }
}

impl Default for PrettyJson {
    fn default() -> Self {
        PrettyJson::new()
    }
}

impl serde_json::ser::Formatter for PrettyJson {
    fn begin_array<W: ?Sized + Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.open(writer, b"[")
    }

    fn end_array<W: ?Sized + Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.close(writer, b"]")
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        self.new_line(writer, !first)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, _writer: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.open(writer, b"{")
    }

    fn end_object<W: ?Sized + Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.close(writer, b"}")
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        self.new_line(writer, !first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(b": ")
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, _writer: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn write_raw_fragment<W: ?Sized + Write>(&mut self, writer: &mut W, fragment: &str) -> std::io::Result<()> {
        lay_out(fragment.as_bytes(), self.level, self.cap, writer)
    }
}

/// Writes `text` (JSON, any whitespace between tokens) as [`PrettyJson`] writes the value it
/// holds `level` levels deep: runs of tokens that need no layout are written at once.
fn lay_out<W: ?Sized + Write>(text: &[u8], level: usize, cap: usize, out: &mut W) -> std::io::Result<()> {
    const SPACES: &[u8; 64] = &[b' '; 64];
    let new_line = |out: &mut W, level: usize| -> std::io::Result<()> {
        out.write_all(b"\n")?;
        let mut indent = 2 * level.min(cap);
        while indent > 0 {
            let step = indent.min(SPACES.len());
            out.write_all(&SPACES[..step])?;
            indent -= step;
        }
        Ok(())
    };
    let mut level = level;
    // A bracket was just opened: the next token tells an empty container from a first item.
    let mut opened = false;
    // Where the bytes not yet written start.
    let mut kept = 0;
    let mut at = 0;
    while at < text.len() {
        let byte = text[at];
        match byte {
            b'"' => {
                if std::mem::take(&mut opened) {
                    out.write_all(&text[kept..at])?;
                    kept = at;
                    new_line(out, level)?;
                }
                at = string_end(text, at + 1);
                continue;
            }
            b'{' | b'[' | b'}' | b']' | b',' | b':' | b' ' | b'\n' | b'\r' | b'\t' => {}
            _ => {
                if std::mem::take(&mut opened) {
                    out.write_all(&text[kept..at])?;
                    kept = at;
                    new_line(out, level)?;
                }
                at += 1;
                continue;
            }
        }
        out.write_all(&text[kept..at])?;
        at += 1;
        kept = at;
        match byte {
            b'}' | b']' => {
                level = level.saturating_sub(1);
                if !std::mem::take(&mut opened) {
                    new_line(out, level)?;
                }
                out.write_all(&[byte])?;
            }
            b'{' | b'[' => {
                if std::mem::take(&mut opened) {
                    new_line(out, level)?;
                }
                out.write_all(&[byte])?;
                level += 1;
                opened = true;
            }
            b',' => {
                out.write_all(b",")?;
                new_line(out, level)?;
            }
            b':' => out.write_all(b": ")?,
            // Whitespace between tokens is dropped.
            _ => {}
        }
    }
    out.write_all(&text[kept..])
}

/// `serde_json::to_vec_pretty`, laying out kept text too.
pub fn to_pretty_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(256);
    to_pretty_writer(&mut bytes, value)?;
    Ok(bytes)
}

/// `serde_json::to_string_pretty`, laying out kept text too.
pub fn to_pretty_string<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let bytes = to_pretty_vec(value)?;
    // Only ever valid UTF-8: serde_json writes UTF-8 and kept text is a `str`.
    String::from_utf8(bytes).map_err(|error| serde_json::Error::custom(error.to_string()))
}

/// `serde_json::to_writer_pretty`, laying out kept text too.
pub fn to_pretty_writer<W: Write, T: Serialize + ?Sized>(writer: W, value: &T) -> serde_json::Result<()> {
    value.serialize(&mut serde_json::Serializer::with_formatter(writer, PrettyJson::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kept(value: &Value) -> JsonText {
        JsonText::parse(&serde_json::to_string_pretty(value).unwrap_or_default()).expect("keeps")
    }

    #[test]
    fn kept_text_is_compact_and_decodes_to_the_value() {
        let value = json!({"a b": [1, 2.5, true, null, {}, []], "q\" x": " \" \\ é ", "e": {"f": [[]]}});
        let text = kept(&value);
        assert_eq!(text.as_str(), value.to_string());
        assert_eq!(text.to_value(), value);
        assert_eq!(text.get("e"), Some(json!({"f": [[]]})));
        assert_eq!(text.get("missing"), None);
        assert_eq!(JsonText::from_value(&json!([1])).get("0"), None, "not an object");
    }

    #[test]
    fn text_a_value_cannot_hold_is_refused_when_kept() {
        assert!(JsonText::parse("[1e400]").is_err(), "beyond a double");
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(JsonText::parse(&deep).is_err(), "past serde_json's nesting limit");
        let fine = format!("{}{}", "[".repeat(110), "]".repeat(110));
        assert!(JsonText::parse(&fine).is_ok());
        assert_eq!(JsonText::parse("[1.5e-7]").map(|t| t.to_value()).ok(), Some(json!([1.5e-7])));
    }

    #[test]
    fn only_exponents_and_long_numbers_send_text_to_the_full_check() {
        let unusual = |text: &str| Scan::of(text.as_bytes()).unusual_numbers;
        assert!(!unusual(r#"[true,false,null,1,-2.5,"1e5",{"e":"E"}]"#));
        assert!(unusual("[1e5]") && unusual("[2.5E-3]") && unusual(&"9".repeat(301)));
        assert!(!unusual(&"9".repeat(300)));
        assert_eq!(Scan::of(br#"{"a":[[1]],"b":"[[[["}"#).max_depth, 3);
        assert!(!Scan::of(br#"{"a":"x y"}"#).whitespace && Scan::of(b"[1, 2]").whitespace);
    }

    #[test]
    fn a_duplicated_key_reads_as_its_last_value() {
        let text = JsonText::parse(r#"{"a":1,"b":2,"a":3}"#).expect("keeps");
        assert_eq!(text.get("a"), Some(json!(3)));
    }

    #[test]
    fn a_runs_snapshot_is_written_back_as_the_runtime_wrote_it() {
        // JavaScript writes 1e21 as `1e+21`; a `Value` would have written it back as `1e21`.
        let text = r#"{"id":"r","checkpoints":[{"id":"c","snapshot":{"n":1e+21,"steps":[{"id":"s1"}],"f":0.5}}]}"#;
        let run = crate::model::Run::from_json_str(text).expect("JSON").expect("a run");
        let snapshot = run.checkpoints[0].snapshot.as_ref().expect("kept");
        assert_eq!(snapshot.as_str(), r#"{"n":1e+21,"steps":[{"id":"s1"}],"f":0.5}"#);
        assert!(serde_json::to_string(&run).unwrap_or_default().contains(r#""snapshot":{"n":1e+21,"#));
        assert_eq!(run.checkpoints[0].snapshot_step_ids(), Some(vec!["s1".to_owned()]));
        let pretty = crate::model::Run::from_json_str(&run.to_pretty_json()).expect("JSON").expect("a run");
        assert_eq!(pretty, run, "the file store's pretty text reads back as the same run");
    }

    #[derive(Serialize)]
    struct Holder<'a> {
        before: Value,
        kept: &'a JsonText,
        list: Vec<&'a JsonText>,
    }

    fn samples() -> Vec<Value> {
        vec![
            json!({}),
            json!([]),
            json!(null),
            json!("text with \"quotes\" and \\ and , : { ["),
            json!(-12.5),
            json!({"state": {"n": 1, "list": [1, [2, []], {}], "s": "a,b"}, "steps": [{"id": "s1"}, {"id": "s2"}]}),
            json!([[[{"deep": [{}]}]]]),
        ]
    }

    #[test]
    fn pretty_layout_of_kept_text_is_serde_jsons_layout_of_the_value() {
        for value in samples() {
            let text = JsonText::from_value(&value);
            let ours = to_pretty_string(&Holder { before: json!({"x": [1]}), kept: &text, list: vec![&text, &text] })
                .expect("pretty");
            let theirs =
                serde_json::to_string_pretty(&json!({"before": {"x": [1]}, "kept": value, "list": [value, value]}))
                    .expect("pretty");
            assert_eq!(ours, theirs);
            assert_eq!(to_pretty_string(&text).ok(), serde_json::to_string_pretty(&value).ok());
            assert_eq!(serde_json::to_string(&text).ok(), Some(value.to_string()), "compact is verbatim");
            assert_eq!(serde_json::to_value(&text).ok(), Some(value));
        }
    }

    #[test]
    fn nested_and_capped_layouts_apply_to_kept_text() {
        let value = json!({"a": {"b": {"c": [1, {"d": 2}]}}});
        let text = JsonText::from_value(&value);
        for cap in [0, 1, 2, 10] {
            let mut ours = Vec::new();
            text.serialize(&mut serde_json::Serializer::with_formatter(&mut ours, PrettyJson::capped(cap)))
                .expect("write");
            let mut theirs = Vec::new();
            value
                .serialize(&mut serde_json::Serializer::with_formatter(&mut theirs, PrettyJson::capped(cap)))
                .expect("write");
            assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs), "cap {cap}");
        }
        let mut nested = Vec::new();
        text.serialize(&mut serde_json::Serializer::with_formatter(&mut nested, PrettyJson::nested(2))).expect("write");
        let mut theirs = Vec::new();
        value
            .serialize(&mut serde_json::Serializer::with_formatter(&mut theirs, PrettyJson::nested(2)))
            .expect("write");
        assert_eq!(nested, theirs);
    }

    proptest::proptest! {
        #[test]
        fn any_value_kept_as_text_lays_out_as_the_value(value in crate::model::json::tests::any_json()) {
            let text = JsonText::from_value(&value);
            proptest::prop_assert_eq!(to_pretty_string(&text).ok(), serde_json::to_string_pretty(&value).ok());
            let pretty = serde_json::to_string_pretty(&value).unwrap_or_default();
            let from_pretty = JsonText::parse(&pretty);
            proptest::prop_assert_eq!(from_pretty.ok(), Some(text));
            // Laid out again as it is, whitespace and all.
            let mut again = Vec::new();
            lay_out(pretty.as_bytes(), 0, usize::MAX, &mut again).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert_eq!(String::from_utf8_lossy(&again), pretty.as_str());
        }
    }
}
