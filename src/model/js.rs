//! The few JavaScript evaluation rules the operator surfaces depend on, beyond those of
//! [`crate::model::json`]: property access on arbitrary JSON (`value.key`), string conversion
//! in template literals (`` `${value}` ``), `String.prototype.trim`, and the key order of objects
//! that JavaScript builds at run time.
//!
//! The reference surfaces read foreign records with these rules, so a record with an odd shape
//! (a string where an object was expected, a number as a message) gives the same output here.

use serde_json::{Map, Value};

/// `value[key]` in JavaScript, for a value that is not `null`/`undefined` (callers decide what
/// property access on those means: a `TypeError`, or `undefined` with `?.`). `None` is
/// `undefined`.
pub fn prop(value: &Value, key: &str) -> Option<Value> {
    match value {
        Value::Object(map) => map.get(key).cloned(),
        Value::Array(items) => match key {
            "length" => Some(Value::from(items.len())),
            _ => array_index(key).and_then(|index| items.get(index).cloned()),
        },
        Value::String(text) => {
            let units: Vec<u16> = text.encode_utf16().collect();
            match key {
                "length" => Some(Value::from(units.len())),
                _ => array_index(key)
                    .and_then(|index| units.get(index).map(|unit| Value::String(String::from_utf16_lossy(&[*unit])))),
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// `value?.key`: `undefined` when `value` is `null`/`undefined`.
pub fn prop_opt(value: Option<&Value>, key: &str) -> Option<Value> {
    match value {
        None | Some(Value::Null) => None,
        Some(value) => prop(value, key),
    }
}

/// The index an array-index property key names (`"0"`, `"17"`, not `"01"` or `"-1"`).
pub fn array_index(key: &str) -> Option<usize> {
    let canonical = key == "0" || (!key.is_empty() && !key.starts_with('0') && key.bytes().all(|b| b.is_ascii_digit()));
    if !canonical {
        return None;
    }
    // JavaScript array indices stop at 2^32 - 2.
    key.parse::<u64>().ok().filter(|index| *index < u64::from(u32::MAX)).and_then(|index| usize::try_from(index).ok())
}

/// Reorders keys as a JavaScript object built at run time holds them: array-index keys first,
/// in ascending numeric order, then every other key in insertion order.
pub fn js_key_order(map: Map<String, Value>) -> Map<String, Value> {
    if !map.keys().any(|key| array_index(key).is_some()) {
        return map;
    }
    let mut indexed: Vec<(usize, String, Value)> = Vec::new();
    let mut named: Vec<(String, Value)> = Vec::new();
    for (key, value) in map {
        match array_index(&key) {
            Some(index) => indexed.push((index, key, value)),
            None => named.push((key, value)),
        }
    }
    indexed.sort_by_key(|(index, _, _)| *index);
    indexed.into_iter().map(|(_, key, value)| (key, value)).chain(named).collect()
}

/// The own enumerable properties `{...value}` copies: an object's entries, an array's or a
/// string's indexed elements, nothing for `null`, numbers and booleans.
pub fn spread_entries(value: &Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map.clone(),
        Value::Array(items) => {
            items.iter().enumerate().map(|(index, item)| (index.to_string(), item.clone())).collect()
        }
        Value::String(text) => text
            .encode_utf16()
            .enumerate()
            .map(|(index, unit)| (index.to_string(), Value::String(String::from_utf16_lossy(&[unit]))))
            .collect(),
        Value::Null | Value::Bool(_) | Value::Number(_) => Map::new(),
    }
}

/// `String(value)` as a template literal prints it; `None` is `undefined`.
pub fn js_to_string(value: Option<&Value>) -> String {
    match value {
        None => "undefined".to_owned(),
        Some(value) => value_to_string(value),
    }
}

fn value_to_string(value: &Value) -> String {
    value_to_string_at(value, 0)
}

/// Arrays deeper than [`MAX_VALUE_DEPTH`] levels print as "" (as an empty array does).
fn value_to_string_at(value: &Value, depth: usize) -> String {
    match value {
        Value::Array(_) if depth >= crate::limits::MAX_VALUE_DEPTH => String::new(),
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) if n.is_i64() => i.to_string(),
            (_, Some(u), _) if n.is_u64() => u.to_string(),
            (_, _, Some(f)) => js_number_to_string(f),
            _ => n.to_string(),
        },
        Value::String(text) => text.clone(),
        // `Array.prototype.join(",")`, where `null` and `undefined` elements print as "".
        Value::Array(items) => items
            .iter()
            .map(|item| if item.is_null() { String::new() } else { value_to_string_at(item, depth + 1) })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => "[object Object]".to_owned(),
    }
}

/// `Number.prototype.toString()` for a double (ECMAScript `Number::toString`, radix 10).
pub fn js_number_to_string(number: f64) -> String {
    if number.is_nan() {
        return "NaN".to_owned();
    }
    if number == 0.0 {
        return "0".to_owned();
    }
    if number.is_infinite() {
        return if number > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    let sign = if number < 0.0 { "-" } else { "" };
    // `{:e}` prints the shortest digits that round-trip, as ECMAScript requires.
    let scientific = format!("{:e}", number.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((scientific.as_str(), "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let k = digits.len() as i64;
    let n = exponent + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let exponent_sign = if n - 1 < 0 { "-" } else { "+" };
        let fraction = if k > 1 { format!(".{}", &digits[1..]) } else { String::new() };
        format!("{}{fraction}e{exponent_sign}{}", &digits[..1], (n - 1).abs())
    };
    format!("{sign}{body}")
}

/// Whether `String.prototype.trim()` leaves nothing: JavaScript's white space and line
/// terminators (which differ from Rust's `char::is_whitespace` on U+0085 and U+FEFF).
pub fn js_trim_is_empty(text: &str) -> bool {
    text.chars().all(|c| {
        matches!(
            c,
            '\u{0009}'
                | '\u{000B}'
                | '\u{000C}'
                | '\u{0020}'
                | '\u{00A0}'
                | '\u{FEFF}'
                | '\u{000A}'
                | '\u{000D}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{1680}'
                | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}'
        )
    })
}

/// JavaScript's `SameValueZero` as `Array.prototype.includes` uses it, for values that come
/// from different parsed records: primitives compare by value, objects and arrays are never
/// the same object. `None` is `undefined`.
pub fn same_value_zero(left: Option<&Value>, right: Option<&Value>) -> bool {
    match (left, right) {
        (None, None) => true,
        (Some(Value::Null), Some(Value::Null)) => true,
        (Some(Value::Bool(a)), Some(Value::Bool(b))) => a == b,
        (Some(Value::String(a)), Some(Value::String(b))) => a == b,
        (Some(Value::Number(a)), Some(Value::Number(b))) => a.as_f64() == b.as_f64(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn property_access_follows_javascript() {
        assert_eq!(prop(&json!({"a": 1}), "a"), Some(json!(1)));
        assert_eq!(prop(&json!([1, 2, 3]), "length"), Some(json!(3)));
        assert_eq!(prop(&json!("héllo"), "length"), Some(json!(5)));
        assert_eq!(prop(&json!("ab"), "1"), Some(json!("b")));
        assert_eq!(prop(&json!("ab"), "id"), None);
        assert_eq!(prop(&json!(7), "id"), None);
        assert_eq!(prop_opt(Some(&Value::Null), "id"), None);
    }

    #[test]
    fn template_literals_print_like_javascript() {
        assert_eq!(js_to_string(None), "undefined");
        assert_eq!(js_to_string(Some(&json!(null))), "null");
        assert_eq!(js_to_string(Some(&json!({"a": 1}))), "[object Object]");
        assert_eq!(js_to_string(Some(&json!([1, null, "x", [2, 3]]))), "1,,x,2,3");
        assert_eq!(js_to_string(Some(&json!(1.1))), "1.1");
        assert_eq!(js_to_string(Some(&json!(42))), "42");
        assert_eq!(js_number_to_string(1e21), "1e+21");
        assert_eq!(js_number_to_string(1e20), "100000000000000000000");
        assert_eq!(js_number_to_string(1.5e-7), "1.5e-7");
        assert_eq!(js_number_to_string(0.000001), "0.000001");
        assert_eq!(js_number_to_string(-123.456), "-123.456");
        assert_eq!(js_number_to_string(0.1 + 0.2), "0.30000000000000004");
    }

    #[test]
    fn runtime_objects_put_index_keys_first() {
        let map: Map<String, Value> =
            serde_json::from_value(json!({"b": 1, "10": 2, "a": 3, "2": 4, "01": 5})).unwrap_or_default();
        let keys: Vec<String> = js_key_order(map).keys().cloned().collect();
        assert_eq!(keys, ["2", "10", "b", "a", "01"]);
    }

    #[test]
    fn trim_uses_the_javascript_white_space_set() {
        assert!(js_trim_is_empty(" \t\n\u{FEFF}\u{3000}"));
        assert!(!js_trim_is_empty("\u{0085}"), "NEL is not white space in JavaScript");
        assert!(!js_trim_is_empty(" 1.1 "));
    }

    #[test]
    fn includes_never_matches_distinct_objects() {
        assert!(same_value_zero(Some(&json!("a")), Some(&json!("a"))));
        assert!(same_value_zero(None, None));
        assert!(!same_value_zero(None, Some(&Value::Null)));
        assert!(!same_value_zero(Some(&json!({})), Some(&json!({}))));
        assert!(same_value_zero(Some(&json!(1)), Some(&json!(1.0))));
    }
}
