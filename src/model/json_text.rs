//! JSON kept as text, and the pretty layout that writes it.
//!
//! A checkpoint's snapshot is more than half of a run's bytes, and salvage copies it between
//! records far more often than it looks inside (branches and replays read four of its keys,
//! the planner the ids of its steps). [`JsonText`] holds such a value as its compact text: a
//! read checks and copies it, a compact write copies it back, and a pretty write
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
/// something looks inside. The text is always the text of the `Value` it decodes to
/// ([`JsonText::to_value`]): text that reads otherwise than it is written (a repeated key, a
/// number not spelled as serde_json writes it) is kept as its `Value`'s text, and text serde_json
/// could not decode (a number beyond a double, nesting past its limit) is refused when it is
/// read, as a `Value` decode of the record would have refused it.
#[derive(Clone)]
pub struct JsonText(Box<RawValue>);

impl JsonText {
    /// The compact text of `value`.
    pub fn from_value(value: &Value) -> JsonText {
        // Serialised, not parsed again: a `Value`'s own text is valid JSON (and always is one).
        JsonText(serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned()))
    }

    /// Keeps JSON text, compacted, once it is known to decode.
    pub fn parse(text: &str) -> Result<JsonText, serde_json::Error> {
        JsonText::from_raw(serde_json::from_str(text)?)
    }

    /// Keeps text a JSON parser has accepted, compacted, once it is known to decode.
    fn from_raw(raw: Box<RawValue>) -> Result<JsonText, serde_json::Error> {
        let text = raw.get();
        let scan = Scan::of(text.as_bytes());
        if scan.maybe_duplicate_keys || scan.unusual_numbers {
            // Rare: kept as the text of the `Value` it reads as (a repeated key's last value at
            // its first position, numbers as serde_json writes them), so that the run reads
            // the same from its text and from its `Value`; a `Value` refuses what it cannot hold.
            let value: Value = serde_json::from_str(text)?;
            return Ok(JsonText::from_value(&value));
        }
        if scan.max_depth > CHECKED_DEPTH {
            // Rare: decoded once, to refuse nesting a `Value` cannot hold.
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
    /// A number not spelled as serde_json writes it (`0.50`, `1e+21`, `-0`, an integer past
    /// 64 bits, one past a double's range): a `Value` would read it and write it otherwise.
    unusual_numbers: bool,
    /// An object may repeat a key: a key written twice, a key spelled with an escape (it
    /// could equal another one unescaped), or an object too large to compare its keys.
    maybe_duplicate_keys: bool,
}

/// Keys of one object compared with each other, at most (past that, the object is decoded).
const COMPARED_KEYS: usize = 64;

impl Scan {
    fn of(bytes: &[u8]) -> Scan {
        let mut scan = Scan { whitespace: false, max_depth: 0, unusual_numbers: false, maybe_duplicate_keys: false };
        // The keys of the open objects, as byte ranges, and where each open container's start.
        let mut keys: Vec<(usize, usize)> = Vec::new();
        let mut open: Vec<usize> = Vec::new();
        let mut at = 0usize;
        while at < bytes.len() {
            let byte = bytes[at];
            at += 1;
            if byte.is_ascii_digit() || byte == b'-' {
                let end = bytes[at..]
                    .iter()
                    .position(|b| !matches!(b, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'))
                    .map_or(bytes.len(), |offset| at + offset);
                scan.unusual_numbers |= !spelled_as_serde_json_writes(&bytes[at - 1..end]);
                at = end;
                continue;
            }
            match byte {
                b'"' => {
                    let start = at - 1;
                    at = string_end(bytes, at);
                    if !scan.maybe_duplicate_keys && next_token(bytes, at) == Some(b':') {
                        let key = &bytes[start..at];
                        let siblings = &keys[open.last().copied().unwrap_or(0)..];
                        scan.maybe_duplicate_keys = key.contains(&b'\\')
                            || siblings.len() >= COMPARED_KEYS
                            || siblings.iter().any(|&(from, to)| &bytes[from..to] == key);
                        keys.push((start, at));
                    }
                }
                b'{' | b'[' => {
                    open.push(keys.len());
                    scan.max_depth = scan.max_depth.max(open.len());
                }
                b'}' | b']' => {
                    if let Some(first_key) = open.pop() {
                        keys.truncate(first_key);
                    }
                }
                b' ' | b'\n' | b'\r' | b'\t' => scan.whitespace = true,
                _ => {}
            }
        }
        scan
    }
}

/// Whether a number token is spelled exactly as serde_json writes the number it reads.
fn spelled_as_serde_json_writes(token: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(token) else { return false };
    if token.iter().all(|b| b.is_ascii_digit() || *b == b'-') {
        // An integer: kept as one within 64 bits (`-0` reads as a double).
        return text != "-0" && (text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok());
    }
    match text.parse::<f64>() {
        Ok(number) if number.is_finite() => {
            serde_json::to_string(&Value::from(number)).is_ok_and(|written| written == text)
        }
        _ => false,
    }
}

/// The first byte at or after `at` that is not whitespace.
fn next_token(bytes: &[u8], at: usize) -> Option<u8> {
    bytes.get(at..)?.iter().copied().find(|byte| !matches!(byte, b' ' | b'\n' | b'\r' | b'\t'))
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
        if comma {
            writer.write_all(b",")?;
        }
        new_line(writer, self.level, self.cap)
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

/// A line break and the indentation of `level` levels (capped at `cap`), two spaces a level.
fn new_line<W: ?Sized + Write>(out: &mut W, level: usize, cap: usize) -> std::io::Result<()> {
    const SPACES: &[u8; 64] = &[b' '; 64];
    out.write_all(b"\n")?;
    let mut indent = 2 * level.min(cap);
    while indent > 0 {
        let step = indent.min(SPACES.len());
        out.write_all(&SPACES[..step])?;
        indent -= step;
    }
    Ok(())
}

/// Writes `text` (JSON, any whitespace between tokens) as [`PrettyJson`] writes the value it
/// holds `level` levels deep: runs of tokens that need no layout are written at once.
fn lay_out<W: ?Sized + Write>(text: &[u8], level: usize, cap: usize, out: &mut W) -> std::io::Result<()> {
    let mut level = level;
    // A bracket was just opened: the next token tells an empty container from a first item.
    let mut opened = false;
    // Where the bytes not yet written start.
    let mut kept = 0;
    let mut at = 0;
    while at < text.len() {
        let byte = text[at];
        let starts_value = !matches!(byte, b'}' | b']' | b',' | b':' | b' ' | b'\n' | b'\r' | b'\t');
        if starts_value && std::mem::take(&mut opened) {
            // A container's first item goes on a line of its own.
            out.write_all(&text[kept..at])?;
            kept = at;
            new_line(out, level, cap)?;
        }
        match byte {
            b'"' => {
                at = string_end(text, at + 1);
                continue;
            }
            b'{' | b'[' => {
                level += 1;
                opened = true;
                at += 1;
                continue;
            }
            b'}' | b']' | b',' | b':' | b' ' | b'\n' | b'\r' | b'\t' => {}
            _ => {
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
                    new_line(out, level, cap)?;
                }
                out.write_all(&[byte])?;
            }
            b',' => {
                out.write_all(b",")?;
                new_line(out, level, cap)?;
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
    fn numbers_not_spelled_as_serde_json_writes_them_are_rewritten() {
        let unusual = |text: &str| Scan::of(text.as_bytes()).unusual_numbers;
        assert!(!unusual(r#"[true,false,null,1,-2.5,0.9,1.0,1e+21,1.5e-7,18446744073709551615,"0.50",{"e":"E"}]"#));
        for odd in ["[0.50]", "[1e21]", "[1E+21]", "[-0]", "[2.5E-3]", "[18446744073709551616]", "[1e400]"] {
            assert!(unusual(odd), "{odd}");
        }
        let text = JsonText::parse(r#"{"a":0.50,"b":1e21,"c":[-0,7]}"#).expect("keeps");
        assert_eq!(text.as_str(), r#"{"a":0.5,"b":1e+21,"c":[-0.0,7]}"#);
        assert_eq!(Scan::of(br#"{"a":[[1]],"b":"[[[["}"#).max_depth, 3);
        assert!(!Scan::of(br#"{"a":"x y"}"#).whitespace && Scan::of(b"[1, 2]").whitespace);
    }

    #[test]
    fn every_corpus_snapshot_takes_the_fast_path() {
        for (name, bytes) in crate::model::corpus_records::corpus_records() {
            let Ok(record) = serde_json::from_slice::<Value>(&bytes) else { continue };
            for checkpoint in record["checkpoints"].as_array().into_iter().flatten() {
                let text = checkpoint["snapshot"].to_string();
                let scan = Scan::of(text.as_bytes());
                assert!(!scan.maybe_duplicate_keys && !scan.unusual_numbers, "{name}: {text}");
                assert!(scan.max_depth <= CHECKED_DEPTH, "{name}");
            }
        }
    }

    #[test]
    fn a_repeated_key_is_kept_as_a_value_keeps_it() {
        // The last value at the first position, as `Value` and the lenient parts read it.
        let text = JsonText::parse(r#"{"a":1,"b":{"c":[{"a":0,"c":1}]},"a":3}"#).expect("keeps");
        assert_eq!(text.as_str(), r#"{"a":3,"b":{"c":[{"a":0,"c":1}]}}"#);
        assert_eq!(text.get("a"), Some(json!(3)));
        let escaped = JsonText::parse(r#"{"a":1,"\u0061":2}"#).expect("keeps");
        assert_eq!(escaped.as_str(), r#"{"a":2}"#, "a key spelled with an escape");
        let many: String = (0..100).map(|n| format!("\"k{n}\":{n}")).collect::<Vec<_>>().join(",");
        let many = format!("{{{many},\"k7\":0}}");
        assert_eq!(JsonText::parse(&many).map(|t| t.get("k7")).ok().flatten(), Some(json!(0)));
        // Same keys in sibling or nested objects are not repeats: the text is kept as written.
        let kept = r#"[{"a":1},{"a":2,"b":{"a":3}}]"#;
        assert_eq!(JsonText::parse(kept).map(|t| t.as_str().to_owned()).ok().as_deref(), Some(kept));
    }

    #[test]
    fn a_run_reads_the_same_from_its_text_and_from_its_value() {
        for snapshot in [r#"{"n":12,"steps":[{"id":"s1"}],"f":0.5}"#, r#"{"n":1e21,"steps":[{"id":"s1"}],"n":0.50}"#] {
            let text = format!(r#"{{"id":"r","checkpoints":[{{"id":"c","snapshot":{snapshot}}}]}}"#);
            let run = crate::model::Run::from_json_str(&text).expect("JSON").expect("a run");
            let value: Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(crate::model::Run::from_value(value).ok().as_ref(), Some(&run), "{snapshot}");
            assert_eq!(crate::model::Run::from_value(run.to_value()).ok().as_ref(), Some(&run), "{snapshot}");
            assert_eq!(run.checkpoints[0].snapshot_step_ids(), Some(vec!["s1".to_owned()]));
            let pretty = crate::model::Run::from_json_str(&run.to_pretty_json()).expect("JSON").expect("a run");
            assert_eq!(pretty, run, "the file store's pretty text reads back as the same run");
        }
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
