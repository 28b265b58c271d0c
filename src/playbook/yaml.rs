//! The one place that knows the YAML parser.
//!
//! A playbook is parsed into a plain tree of [`Node`]s that carry byte spans; everything after
//! this module reads the tree, so swapping serde-saphyr for another parser means rewriting this
//! file only. Reading a tree (instead of deserialising straight into typed structs) is what lets
//! the compiler report *every* wrong type, unknown field and duplicate key of a file at once:
//! serde stops at the first error.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_saphyr::options::{DuplicateKeyPolicy, MergeKeyPolicy};
use serde_saphyr::{Options, Spanned};

use crate::policy::source::{LineIndex, Span};

/// Largest playbook file accepted, in bytes. Real playbooks are a few KiB; a 500-step playbook
/// is about 60 KiB.
pub const MAX_FILE_BYTES: usize = 2 * 1024 * 1024;

/// A YAML node with the byte span of its text in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
}

/// A YAML value. Mappings keep their entries in file order, duplicates included (the compiler
/// reports them).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// How the value is called in "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Why a file could not be read as YAML.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// One line, no snippet (the diagnostic renders its own).
    pub message: String,
    /// Where, when the parser knows.
    pub span: Option<Span>,
    pub kind: ParseErrorKind,
}

/// What kind of parse failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// Not valid YAML.
    Syntax,
    /// Valid so far, but over a parse budget (alias bomb, nesting, size).
    Budget,
    /// More than one YAML document in the file.
    SeveralDocuments,
}

/// The budget every playbook is parsed under: generous for hand-written files, small enough
/// that an alias bomb or a machine-generated monster fails fast instead of eating memory.
fn options() -> Options {
    let budget = serde_saphyr::budget! {
        max_events: 400_000,
        max_aliases: 1_000,
        max_anchors: 1_000,
        max_recorded_anchor_events: 50_000,
        max_recorded_anchor_bytes: 1024 * 1024,
        max_depth: 32,
        max_documents: 1,
        max_nodes: 200_000,
        max_total_scalar_bytes: 4 * 1024 * 1024,
        max_merge_keys: 100,
    };
    let limits = serde_saphyr::alias_limits! {
        max_total_replayed_events: 20_000,
        max_replay_stack_depth: 16,
        max_alias_expansions_per_anchor: 200,
    };
    serde_saphyr::options! {
        budget: budget,
        alias_limits: limits,
        // Duplicates reach the tree so the compiler can point at both occurrences.
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
        merge_keys: MergeKeyPolicy::Merge,
        // `on:` must stay a string key: YAML 1.1 would read it (and yes/no/off) as a boolean.
        strict_booleans: true,
    }
}

/// Parses one YAML document into a [`Node`] tree. An empty document is `Null`.
pub fn parse(text: &str) -> Result<Node, ParseError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(ParseError {
            message: format!("the file is {} bytes; playbooks are limited to {} bytes", text.len(), MAX_FILE_BYTES),
            span: None,
            kind: ParseErrorKind::Budget,
        });
    }
    if text.trim().is_empty() || text.lines().all(|line| line.trim().is_empty() || line.trim_start().starts_with('#')) {
        return Ok(Node { value: Value::Null, span: Span::new(0, 0) });
    }
    match serde_saphyr::from_str_with_options::<Spanned<Value>>(text, options()) {
        Ok(spanned) => Ok(pending(spanned)),
        Err(error) => Err(parse_error(&error, text)),
    }
}

/// A budget breach said for people.
fn budget_message(error: &serde_saphyr::Error) -> Option<(String, ParseErrorKind)> {
    use serde_saphyr::Error;
    use serde_saphyr::budget::BudgetBreach;
    let budget = |message: String| Some((message, ParseErrorKind::Budget));
    match error {
        Error::Budget { breach, .. } => match breach {
            BudgetBreach::Documents { .. } => Some((
                "a playbook file holds one YAML document, but a second one starts here".to_owned(),
                ParseErrorKind::SeveralDocuments,
            )),
            BudgetBreach::Depth { depth } => {
                budget(format!("the YAML nests {depth} levels deep; at most 32 are allowed"))
            }
            BudgetBreach::Nodes { nodes } => {
                budget(format!("the YAML has more than {} nodes", nodes.saturating_sub(1)))
            }
            BudgetBreach::Events { .. } => budget("the YAML is too large to be a playbook".to_owned()),
            BudgetBreach::ScalarBytes { .. } => budget("the YAML holds more than 4 MiB of text".to_owned()),
            BudgetBreach::Aliases { .. }
            | BudgetBreach::Anchors { .. }
            | BudgetBreach::AliasAnchorRatio { .. }
            | BudgetBreach::RecordedAnchorEvents { .. }
            | BudgetBreach::RecordedAnchorBytes { .. }
            | BudgetBreach::MergeKeys { .. } => {
                budget("the YAML uses too many anchors, aliases or merge keys (alias bomb protection)".to_owned())
            }
            other => budget(format!("the YAML exceeds a parse budget ({other:?})")),
        },
        Error::AliasReplayLimitExceeded { .. }
        | Error::AliasExpansionLimitExceeded { .. }
        | Error::AliasReplayStackDepthExceeded { .. }
        | Error::AliasReplayCounterOverflow { .. } => {
            budget("aliases here expand to too much YAML (alias bomb protection)".to_owned())
        }
        _ => None,
    }
}

/// The error under snippet and alias wrappers.
fn innermost(mut error: &serde_saphyr::Error) -> &serde_saphyr::Error {
    while let serde_saphyr::Error::AliasError { error: inner, .. }
    | serde_saphyr::Error::WithSnippet { error: inner, .. } = error
    {
        error = inner;
    }
    error
}

fn parse_error(error: &serde_saphyr::Error, text: &str) -> ParseError {
    let plain = innermost(error);
    let span = error.location().and_then(|location| span_of(&location, text));
    if let Some((message, kind)) = budget_message(plain) {
        return ParseError { message, span, kind };
    }
    let mut message = plain.to_string();
    // serde-saphyr prefixes "line L column C: "; the diagnostic shows the position itself.
    if let Some(rest) = message.strip_prefix("error: ") {
        message = rest.to_owned();
    }
    if let Some(index) = message.find(": ")
        && message.starts_with("line ")
    {
        message = message[index + 2..].to_owned();
    }
    let mut message = message.lines().next().unwrap_or_default().trim().to_owned();
    // Scanner errors repeat the position at the end ("... at line 2, column 2").
    if let Some(index) = message.rfind(" at line ") {
        message.truncate(index);
    }
    ParseError { message, span, kind: ParseErrorKind::Syntax }
}

fn span_of(location: &serde_saphyr::Location, text: &str) -> Option<Span> {
    if location.line() == 0 {
        return None;
    }
    let span = location.span();
    let start = match span.byte_offset().and_then(|offset| usize::try_from(offset).ok()) {
        Some(start) => start,
        // Scanner errors carry only line and character column.
        None => {
            let line = usize::try_from(location.line()).ok()?;
            let column = usize::try_from(location.column()).ok()?;
            LineIndex::new(text).offset_of(text, line, column)
        }
    };
    let len = span.byte_len().and_then(|len| usize::try_from(len).ok()).unwrap_or(0);
    let start = start.min(text.len());
    Some(Span::new(start, (start + len).min(text.len())))
}

/// Deserialises any YAML value, keeping spans of every nested node.
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

/// A nested value with its location, as the parser reports it.
#[derive(Debug, Clone, PartialEq)]
struct RawNode(Spanned<Value>);

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Spanned::<Value>::deserialize(deserializer).map(RawNode)
    }
}

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any YAML value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }
    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Int(value))
    }
    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(i64::try_from(value).map(Value::Int).unwrap_or(Value::Float(value as f64)))
    }
    fn visit_i128<E>(self, value: i128) -> Result<Value, E> {
        Ok(i64::try_from(value).map(Value::Int).unwrap_or(Value::Float(value as f64)))
    }
    fn visit_u128<E>(self, value: u128) -> Result<Value, E> {
        Ok(i64::try_from(value).map(Value::Int).unwrap_or(Value::Float(value as f64)))
    }
    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Value::Float(value))
    }
    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::Str(value.to_owned()))
    }
    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::Str(value))
    }
    fn visit_bytes<E>(self, value: &[u8]) -> Result<Value, E> {
        Ok(Value::Str(String::from_utf8_lossy(value).into_owned()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(RawNode(item)) = seq.next_element::<RawNode>()? {
            items.push(pending(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(RawNode(key)) = map.next_key::<RawNode>()? {
            let RawNode(value) = map.next_value::<RawNode>()?;
            entries.push((pending(key), pending(value)));
        }
        Ok(Value::Map(entries))
    }
}

/// Keeps the parser's byte offsets (always present for string input).
fn pending(spanned: Spanned<Value>) -> Node {
    let span = spanned.referenced.span();
    let start = span.byte_offset().and_then(|offset| usize::try_from(offset).ok()).unwrap_or(0);
    let len = span.byte_len().and_then(|len| usize::try_from(len).ok()).unwrap_or(0);
    Node { value: spanned.value, span: Span::new(start, start + len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(node: &Node) -> &[(Node, Node)] {
        match &node.value {
            Value::Map(entries) => entries,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn spans_point_at_keys_and_values() {
        let text = "playbook: demo\nsteps:\n  first:\n    action: 'inspect_report'\n    on: { ok: done }\n";
        let root = parse(text).unwrap();
        let entries = map(&root);
        let (key, value) = &entries[0];
        assert_eq!(&text[key.span.range()], "playbook");
        assert_eq!(&text[value.span.range()], "demo");
        let steps = map(&entries[1].1);
        let first = map(&steps[0].1);
        assert_eq!(&text[first[0].1.span.range()], "'inspect_report'");
        assert_eq!(first[0].1.value, Value::Str("inspect_report".into()));
        let (on_key, on_value) = &first[1];
        assert_eq!(on_key.value, Value::Str("on".into()), "`on` must not become a boolean");
        let exits = map(on_value);
        assert_eq!(&text[exits[0].1.span.range()], "done");
    }

    #[test]
    fn duplicate_keys_are_kept_for_the_compiler() {
        let root = parse("a: 1\na: 2\n").unwrap();
        assert_eq!(map(&root).len(), 2);
    }

    #[test]
    fn scalars_are_typed() {
        let root = parse("a: 3\nb: true\nc: 1.5\nd: ~\ne: 30m\nf: yes\n").unwrap();
        let values: Vec<Value> = map(&root).iter().map(|(_, v)| v.value.clone()).collect();
        assert_eq!(
            values,
            vec![
                Value::Int(3),
                Value::Bool(true),
                Value::Float(1.5),
                Value::Null,
                Value::Str("30m".into()),
                Value::Str("yes".into())
            ]
        );
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let text = "a: [1, 2\nb: 3\n";
        let error = parse(text).unwrap_err();
        assert_eq!(error.kind, ParseErrorKind::Syntax);
        assert!(error.span.is_some(), "{error:?}");
    }

    #[test]
    fn alias_bombs_hit_the_budget() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..12 {
            let prev = level - 1;
            text.push_str(&format!(
                "a{level}: &a{level} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let error = parse(&text).unwrap_err();
        assert_eq!(error.kind, ParseErrorKind::Budget, "{error:?}");
    }

    #[test]
    fn comment_only_files_are_null() {
        assert_eq!(parse("# nothing\n\n").unwrap().value, Value::Null);
    }
}
