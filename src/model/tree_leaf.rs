//! What the whole-store run forest (`salvage tree --json`) needs of one run, computed once per
//! revision so that drawing the forest never decodes a run.
//!
//! A [`TreeLeaf`] is a pure function of a run record: the head of its tree node (`id`,
//! `status`, `input`, `createdAt`, `lineage`, `summary`, as compact JSON) and its own metrics
//! (to which a tree adds those of the runs below it); or, for a record the reference's
//! `summarize` would crash on, the message that says why it is left out. Stores keep its
//! [`TreeLeaf::encode`]d form beside the record, written with it (SQLite and PostgreSQL: a
//! column of the same row; the file store: its sidecar index), and hand it back through
//! `RunStore::tree_leaves`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::json::JsNumber;
use super::summary::{NumberTotals, RunSummary, TokenTotals, summarize};
use super::{Run, RunStatus, Timings};

/// The version of the encoded form. A stored leaf of another version is not used (the store
/// computes it again from the record), so a salvage whose summaries change bumps it.
pub const TREE_LEAF_VERSION: u64 = 1;

/// One run as the whole-store forest shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum TreeLeaf {
    Node {
        /// `{"id":…,"status":…,"input":…,"createdAt":…,"lineage":…,"summary":…}`, compact.
        head: String,
        metrics: LeafMetrics,
    },
    /// The run cannot be summarised (the message of the `MalformedRun` error).
    Malformed(String),
}

/// A run's own token usage, cost and timings (the seed of a tree node's `subtreeMetrics`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeafMetrics {
    pub token_usage: TokenTotals,
    pub cost: JsNumber,
    /// The values of [`Timings::entries`], in that order.
    pub timings: [JsNumber; 5],
}

/// The head of a tree node, serialised exactly like the first keys of `RunTreeNode`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeHead<'a> {
    id: &'a str,
    status: &'a RunStatus,
    input: &'a Value,
    created_at: Option<&'a str>,
    lineage: Value,
    summary: &'a RunSummary,
}

/// The start of an encoded node: the head follows its metrics, which hold only numbers, so
/// the first occurrence of this key is the head's.
const HEAD_KEY: &[u8] = b",\"head\":";

/// An encoded malformed run.
#[derive(Deserialize)]
struct EncodedError {
    v: u64,
    error: String,
}

impl LeafMetrics {
    /// The run's own metrics.
    pub fn of(run: &Run) -> LeafMetrics {
        let metrics = &run.metrics;
        LeafMetrics {
            token_usage: TokenTotals {
                prompt: metrics.token_usage.prompt,
                completion: metrics.token_usage.completion,
                total: metrics.token_usage.total,
            },
            cost: metrics.cost,
            timings: metrics.timings.entries().map(|(_, value)| value),
        }
    }

    /// The timings by key, in the reference's key order (a tree node's `timings`).
    pub fn timing_totals(&self) -> NumberTotals {
        let mut totals = NumberTotals::default();
        for ((key, _), value) in Timings::default().entries().iter().zip(self.timings) {
            totals.add(key, value);
        }
        totals
    }

    fn numbers(&self) -> [JsNumber; 9] {
        let [a, b, c, d, e] = self.timings;
        [self.token_usage.prompt, self.token_usage.completion, self.token_usage.total, self.cost, a, b, c, d, e]
    }
}

impl TreeLeaf {
    /// The leaf of a run (summarising it).
    pub fn of(run: &Run) -> TreeLeaf {
        let summary = match summarize(run) {
            Ok(summary) => summary,
            Err(error) => return TreeLeaf::Malformed(error.to_string()),
        };
        let head = NodeHead {
            id: &run.id,
            status: &run.status,
            input: &run.input,
            created_at: run.created_at(),
            lineage: run.lineage().reference_value(),
            summary: &summary,
        };
        match serde_json::to_string(&head) {
            Ok(head) => TreeLeaf::Node { head, metrics: LeafMetrics::of(run) },
            // Plain JSON values and strings always serialise; say so if one ever does not.
            Err(error) => TreeLeaf::Malformed(format!("run \"{}\": cannot serialise its summary: {error}", run.id)),
        }
    }

    /// The stored form (compact JSON): `{"v":…,"metrics":[…],"head":{…}}`, the metrics as the
    /// bits of their doubles (exact, whatever the value), or `{"v":…,"error":"…"}`.
    pub fn encode(&self) -> String {
        match self {
            TreeLeaf::Node { head, metrics } => {
                let bits: Vec<String> = metrics.numbers().iter().map(|number| number.0.to_bits().to_string()).collect();
                format!(r#"{{"v":{TREE_LEAF_VERSION},"metrics":[{}],"head":{head}}}"#, bits.join(","))
            }
            TreeLeaf::Malformed(message) => {
                let message = serde_json::Value::String(message.clone());
                format!(r#"{{"v":{TREE_LEAF_VERSION},"error":{message}}}"#)
            }
        }
    }

    /// Reads a stored leaf; `None` when it is of another version or not a leaf (the caller
    /// then computes it from the record).
    pub fn decode(bytes: &[u8]) -> Option<TreeLeaf> {
        let prefix = format!(r#"{{"v":{TREE_LEAF_VERSION},"#);
        let rest = bytes.strip_prefix(prefix.as_bytes())?;
        if rest.starts_with(b"\"error\":") {
            let encoded: EncodedError = serde_json::from_slice(bytes).ok()?;
            return (encoded.v == TREE_LEAF_VERSION).then_some(TreeLeaf::Malformed(encoded.error));
        }
        let rest = rest.strip_prefix(b"\"metrics\":[")?;
        let end = rest.iter().position(|byte| *byte == b']')?;
        let mut numbers = [JsNumber::ZERO; 9];
        let mut fields = std::str::from_utf8(&rest[..end]).ok()?.split(',');
        for number in &mut numbers {
            *number = JsNumber(f64::from_bits(fields.next()?.parse().ok()?));
        }
        if fields.next().is_some() {
            return None;
        }
        let head = rest[end + 1..].strip_prefix(HEAD_KEY)?.strip_suffix(b"}")?;
        // Written by this code, but a database can be edited: a head that is not one whole
        // object (cut, unbalanced, an open string) is not used. Tokens are not re-validated:
        // a full JSON parse of every head was 13 % of `tree --json`.
        if !head.starts_with(b"{\"id\":") || !is_one_object(head) {
            return None;
        }
        let head = String::from_utf8(head.to_vec()).ok()?;
        let [prompt, completion, total, cost, a, b, c, d, e] = numbers;
        Some(TreeLeaf::Node {
            head,
            metrics: LeafMetrics {
                token_usage: TokenTotals { prompt, completion, total },
                cost,
                timings: [a, b, c, d, e],
            },
        })
    }
}

/// Whether `bytes` is one JSON object as far as its structure goes: brackets balanced outside
/// strings, closing only at the last byte, every string closed.
fn is_one_object(bytes: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'"' => match find_string_end(&bytes[index + 1..]) {
                Some(length) => index += length + 1,
                None => return false,
            },
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = match depth.checked_sub(1) {
                    Some(depth) => depth,
                    None => return false,
                };
                if depth == 0 && index + 1 != bytes.len() {
                    return false;
                }
            }
            _ => {}
        }
        index += 1;
    }
    depth == 0 && !bytes.is_empty()
}

/// The length of a string's content up to (not including) its closing quote.
fn find_string_end(bytes: &[u8]) -> Option<usize> {
    let mut index = 0;
    loop {
        let found = index + memchr::memchr2(b'"', b'\\', &bytes[index..])?;
        if bytes[found] == b'"' {
            return Some(found);
        }
        // An escape: the next byte is part of it (a `\"` does not close).
        index = found + 2;
        if index > bytes.len() {
            return None;
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
    fn a_leaf_reads_back_as_written() {
        let run = run(json!({
            "id": "r1", "status": "failed", "input": {"q": "a \"quoted\" ]} text"},
            "metadata": {"lineage": {"rootRunId": "r0", "parentRunId": "r0"}},
            "metrics": {"tokenUsage": {"prompt": 3, "completion": 4, "total": 7}, "cost": 0.010340000000000002,
                        "timings": {"modelMs": 12.5, "toolMs": 1}},
            "steps": [{"id": "s", "type": "tool", "status": "failed"}],
            "timestamps": {"createdAt": "2026-01-01T00:00:00.000Z"}
        }));
        let leaf = TreeLeaf::of(&run);
        let TreeLeaf::Node { head, metrics } = &leaf else { panic!("expected a node, got {leaf:?}") };
        let head: Value = serde_json::from_str(head).unwrap_or_default();
        assert_eq!(head["id"], "r1");
        assert_eq!(head["createdAt"], "2026-01-01T00:00:00.000Z");
        assert_eq!(head["summary"]["steps"][0]["status"], "failed");
        assert_eq!(metrics.cost.0.to_bits(), 0.010340000000000002_f64.to_bits());
        let keys: Vec<String> = metrics.timing_totals().0.into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, ["retrievalMs", "modelMs", "toolMs", "workflowMs", "verifierMs"]);
        assert_eq!(TreeLeaf::decode(leaf.encode().as_bytes()), Some(leaf));
    }

    #[test]
    fn a_malformed_run_is_kept_as_its_message() {
        let record = run(json!({"id": "r9", "steps": [null]}));
        let message = match summarize(&record) {
            Err(error) => error.to_string(),
            Ok(summary) => panic!("expected a malformed run, got {summary:?}"),
        };
        let leaf = TreeLeaf::of(&record);
        assert_eq!(leaf, TreeLeaf::Malformed(message));
        assert_eq!(TreeLeaf::decode(leaf.encode().as_bytes()), Some(leaf));
    }

    #[test]
    fn a_leaf_of_another_version_or_a_damaged_one_is_not_used() {
        let leaf = TreeLeaf::of(&run(json!({"id": "r1"}))).encode();
        let other_version = leaf.replacen(&format!("\"v\":{TREE_LEAF_VERSION}"), "\"v\":0", 1);
        assert_eq!(TreeLeaf::decode(other_version.as_bytes()), None);
        assert_eq!(TreeLeaf::decode(&leaf.as_bytes()[..leaf.len() - 2]), None, "a cut leaf");
        assert_eq!(TreeLeaf::decode(b"{}"), None);
        assert_eq!(TreeLeaf::decode(b""), None);
        let head_at = leaf.find(",\"head\":").unwrap_or_else(|| panic!("a node leaf: {leaf}")) + 8;
        for broken in [r#"{"id":"r1","x":"open}"#, r#"{"id":"r1"}}"#, r#"{"id":"r1"},{}"#, r#"{"id":"r1","x":[}"#] {
            let damaged = format!("{}{broken}}}", &leaf[..head_at]);
            assert_eq!(TreeLeaf::decode(damaged.as_bytes()), None, "{damaged}");
        }
        let escaped = format!("{}{}}}", &leaf[..head_at], r#"{"id":"r1","x":"a \" } \\"}"#);
        assert!(TreeLeaf::decode(escaped.as_bytes()).is_some(), "escapes inside strings: {escaped}");
    }
}
