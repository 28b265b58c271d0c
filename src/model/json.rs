//! JSON with JavaScript semantics.
//!
//! The reference runtime is JavaScript: it defaults with `a || b`, sums numbers as IEEE-754
//! doubles and compares values by `JSON.stringify`. The helpers here reproduce exactly those
//! rules so that every surface computes what the reference computed.

use std::fmt::Write as _;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::limits::MAX_VALUE_DEPTH;

/// A JSON number as JavaScript holds it: an IEEE-754 double that serialises like
/// `JSON.stringify` (integral values without a fractional part).
#[derive(Debug, Clone, Copy, Default, PartialEq, PartialOrd)]
pub struct JsNumber(pub f64);

impl JsNumber {
    pub const ZERO: JsNumber = JsNumber(0.0);

    pub fn get(self) -> f64 {
        self.0
    }

    /// The number as a `serde_json::Number`, formatted like JavaScript would print it.
    pub fn to_json(self) -> Value {
        js_number_value(self.0)
    }
}

impl std::ops::Add for JsNumber {
    type Output = JsNumber;
    fn add(self, rhs: JsNumber) -> JsNumber {
        JsNumber(self.0 + rhs.0)
    }
}

impl std::ops::AddAssign for JsNumber {
    fn add_assign(&mut self, rhs: JsNumber) {
        self.0 += rhs.0;
    }
}

impl From<f64> for JsNumber {
    fn from(value: f64) -> Self {
        JsNumber(value)
    }
}

impl Serialize for JsNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        js_number_value(self.0).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for JsNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        f64::deserialize(deserializer).map(JsNumber)
    }
}

/// A modelled field read from its JSON value by move (no clone): the typed value, or the value
/// itself back when it has another type (the lenient parts then keep it in `extra`). Accepts
/// exactly what `T::deserialize(&value)` accepts.
pub(crate) trait FromJson: Sized {
    /// Whether the field is read as kept text ([`super::json_text::JsonText`]) rather than
    /// as a `Value`, when the record is read from JSON text.
    const KEEPS_TEXT: bool = false;

    fn from_json(value: Value) -> Result<Self, Value>;

    /// The field from kept text (only for a type that `KEEPS_TEXT`).
    fn from_text(_text: super::json_text::JsonText) -> Option<Self> {
        None
    }
}

impl FromJson for Value {
    fn from_json(value: Value) -> Result<Self, Value> {
        Ok(value)
    }
}

impl FromJson for String {
    fn from_json(value: Value) -> Result<Self, Value> {
        match value {
            Value::String(text) => Ok(text),
            other => Err(other),
        }
    }
}

impl FromJson for JsNumber {
    fn from_json(value: Value) -> Result<Self, Value> {
        // Deserialising a number from a borrowed value copies no heap data.
        match f64::deserialize(&value) {
            Ok(number) => Ok(JsNumber(number)),
            Err(_) => Err(value),
        }
    }
}

/// Largest integer a double holds exactly (`Number.MAX_SAFE_INTEGER`).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// A double as a JSON value the way `JSON.stringify` writes it: integral values print without
/// a fraction, non-finite values become `null`.
pub fn js_number_value(number: f64) -> Value {
    if !number.is_finite() {
        return Value::Null;
    }
    if number.fract() == 0.0 && number.abs() <= MAX_SAFE_INTEGER {
        // `-0` prints as `0` in JavaScript.
        return Value::from(number as i64);
    }
    serde_json::Number::from_f64(number).map_or(Value::Null, Value::Number)
}

/// JavaScript truthiness of a JSON value (`if (value)`).
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Truthiness of an optional value, where `None` is JavaScript's `undefined`.
pub fn truthy_opt(value: Option<&Value>) -> bool {
    value.is_some_and(truthy)
}

/// `a || b` for optional JSON values.
pub fn or_value<'a>(value: Option<&'a Value>, fallback: &'a Value) -> &'a Value {
    match value {
        Some(v) if truthy(v) => v,
        _ => fallback,
    }
}

/// `JSON.stringify(value)` for a JSON value: the same bytes JavaScript produces, so that
/// equality by serialisation (which the reference uses everywhere) behaves identically.
/// Key order is significant, as it is in JavaScript.
pub fn js_stringify(value: &Value) -> String {
    let mut out = String::new();
    write_js(value, &mut out, 0);
    out
}

/// Arrays and objects deeper than [`MAX_VALUE_DEPTH`] levels are written `null`.
fn write_js(value: &Value, out: &mut String, depth: usize) {
    match value {
        Value::Array(_) | Value::Object(_) if depth >= MAX_VALUE_DEPTH => out.push_str("null"),
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => write_js_double(f, out),
            _ => {
                let _ = write!(out, "{n}");
            }
        },
        Value::String(s) => write_js_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_js(item, out, depth + 1);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (index, (key, item)) in map.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_js_string(key, out);
                out.push(':');
                write_js(item, out, depth + 1);
            }
            out.push('}');
        }
    }
}

fn write_js_double(number: f64, out: &mut String) {
    match js_number_value(number) {
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        _ => out.push_str("null"),
    }
}

fn write_js_string(s: &str, out: &mut String) {
    // serde_json escapes exactly the characters JSON.stringify escapes (quotes, backslash,
    // control characters); it never escapes non-ASCII.
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

/// JSON equality the way the reference checks it: `JSON.stringify(a) === JSON.stringify(b)`.
pub fn js_equal(left: &Value, right: &Value) -> bool {
    js_stringify(left) == js_stringify(right)
}

/// The current time as JavaScript's `new Date().toISOString()` prints it
/// (`2025-03-04T10:00:00.000Z`).
pub fn now_iso() -> String {
    iso_millis(OffsetDateTime::now_utc())
}

/// A timestamp formatted as `toISOString()` does: UTC, milliseconds, `Z`.
pub fn iso_millis(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// Milliseconds since the Unix epoch (`Date.now()`).
pub fn epoch_millis() -> i64 {
    let now = OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

static LAST_UNIQUE_MILLIS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Epoch milliseconds for ids built the reference's way (`<runId>:partial:<ms>`,
/// `<runId>:partial-replay:<ms>`): the current time, or one more than the last value this
/// process handed out, so that two ids made in the same millisecond never collide.
pub fn unique_epoch_millis() -> i64 {
    use std::sync::atomic::Ordering;
    let now = epoch_millis();
    let mut last = LAST_UNIQUE_MILLIS.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST_UNIQUE_MILLIS.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(actual) => last = actual,
        }
    }
}

/// Parses an ISO-8601 / RFC 3339 timestamp as the runtimes write them.
pub fn parse_iso(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// `text` without the whitespace between its tokens: a JSON document means the same
/// compact. Strings are copied whole (an escaped quote does not end one). Only ASCII
/// whitespace outside strings is dropped, so the result is valid UTF-8 whatever `text` holds;
/// meant for text a JSON parser has accepted.
pub fn minify(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    // Everything between two runs of whitespace is copied at once; `kept` is where the bytes
    // not yet copied start. Cuts fall only on ASCII bytes, so on character boundaries.
    let mut kept = 0;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b' ' | b'\n' | b'\r' | b'\t' => {
                out.push_str(&text[kept..at]);
                at += 1;
                while at < bytes.len() && matches!(bytes[at], b' ' | b'\n' | b'\r' | b'\t') {
                    at += 1;
                }
                kept = at;
            }
            b'"' => at = string_end(bytes, at + 1),
            _ => at += 1,
        }
    }
    out.push_str(&text[kept..]);
    out
}

/// Where the string whose contents start at `from` ends: just past its closing quote (the
/// text's end when it has none).
pub(crate) fn string_end(bytes: &[u8], from: usize) -> usize {
    let mut at = from;
    while let Some(found) = memchr::memchr2(b'"', b'\\', &bytes[at..]) {
        at += found;
        if bytes[at] == b'"' {
            return at + 1;
        }
        // A backslash escapes the next byte (an ASCII character in valid JSON).
        at += 2;
        if at >= bytes.len() {
            return bytes.len();
        }
    }
    bytes.len()
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn js_stringify_stops_descending_at_the_value_depth_limit() {
        let mut deep = Value::from(1);
        for _ in 0..MAX_VALUE_DEPTH + 10 {
            deep = Value::Array(vec![deep]);
        }
        let text = js_stringify(&deep);
        assert!(text.starts_with(&format!("{}null]", "[".repeat(MAX_VALUE_DEPTH))), "{}", &text[..600]);
        assert_eq!(text.len(), 2 * MAX_VALUE_DEPTH + 4);
    }

    use super::*;

    #[test]
    fn minify_drops_whitespace_between_tokens_and_keeps_strings_whole() {
        let text =
            "{\n  \"a b\": [ 1 ,\t2.50e3, true ,null ],\r\n  \"q\\\" x\\\\\": \" \\\" \\\\ \\n é \",\n  \"e\": {}\n}\n";
        let compact = minify(text);
        assert_eq!(compact, r#"{"a b":[1,2.50e3,true,null],"q\" x\\":" \" \\ \n é ","e":{}}"#);
        let parsed: Value = serde_json::from_str(text).unwrap_or_default();
        assert_eq!(serde_json::from_str::<Value>(&compact).ok(), Some(parsed));
    }

    #[test]
    fn minify_gives_the_compact_text_of_every_corpus_record() {
        for (name, bytes) in crate::model::corpus_records::corpus_records() {
            let text = String::from_utf8(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            let read: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let pretty = serde_json::to_string_pretty(&read).unwrap_or_default();
            for text in [text, pretty] {
                let compact = minify(&text);
                assert_eq!(compact, serde_json::to_string(&read).unwrap_or_default(), "{name}");
            }
        }
    }

    /// Values whose strings hold what a minifier could mistake for whitespace or an end.
    pub(crate) fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "[ \t\r\n\"\\\\a-zé\u{1}/]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::vec(("[ \"\\\\a-z\n]{0,4}", inner), 0..5)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn minify_of_any_layout_is_the_compact_text(value in any_json()) {
            let compact = serde_json::to_string(&value).unwrap_or_default();
            proptest::prop_assert_eq!(&minify(&serde_json::to_string_pretty(&value).unwrap_or_default()), &compact);
            proptest::prop_assert_eq!(&minify(&compact), &compact);
        }
    }

    #[test]
    fn minify_never_panics_on_text_that_is_not_json() {
        for text in ["\"unterminated", "\"ends in a backslash\\", "\\", "   ", "", "{\"a\": \"é\\\"}"] {
            let compact = minify(text);
            assert!(compact.len() <= text.len());
        }
    }
    use serde_json::json;

    #[test]
    fn numbers_print_like_javascript() {
        assert_eq!(js_stringify(&json!(1.0)), "1");
        assert_eq!(js_stringify(&json!(0.1 + 0.2)), "0.30000000000000004");
        assert_eq!(js_stringify(&json!(-0.0)), "0");
        assert_eq!(js_number_value(42.0), json!(42));
        assert_eq!(js_number_value(f64::NAN), Value::Null);
        assert_eq!(serde_json::to_string(&JsNumber(0.00031 + 0.0011)).ok(), Some(format!("{}", 0.00031 + 0.0011)));
    }

    #[test]
    fn stringify_keeps_key_order_and_escapes() {
        let value: Value = serde_json::from_str(r#"{"b":1,"a":"x\"y\u0001é"}"#).unwrap_or_default();
        assert_eq!(js_stringify(&value), r#"{"b":1,"a":"x\"y\u0001é"}"#);
        let reordered: Value = serde_json::from_str(r#"{"a":"x\"y\u0001é","b":1}"#).unwrap_or_default();
        assert!(!js_equal(&value, &reordered), "JSON.stringify equality is key-order sensitive");
    }

    #[test]
    fn truthiness_matches_javascript() {
        for falsy in [json!(null), json!(false), json!(0), json!(0.0), json!("")] {
            assert!(!truthy(&falsy), "{falsy} is falsy in JavaScript");
        }
        for truthy_value in [json!(true), json!(-1), json!("0"), json!([]), json!({})] {
            assert!(truthy(&truthy_value), "{truthy_value} is truthy in JavaScript");
        }
    }

    #[test]
    fn iso_timestamps_have_millisecond_precision() {
        let at = time::macros::datetime!(2025-03-04 10:00:00.123_456 UTC);
        assert_eq!(iso_millis(at), "2025-03-04T10:00:00.123Z");
        assert_eq!(parse_iso("2025-03-04T10:00:00.123Z").map(iso_millis).as_deref(), Some("2025-03-04T10:00:00.123Z"));
    }
}
