//! The playbook language as written: the types the YAML reader produces and the JSON Schema is
//! generated from (`schemars`). Every value keeps its span ([`Sp`]) so later phases can point at
//! it. Required fields are `Option` here because the reader keeps going after a missing field
//! (to report everything at once); the schema marks them required.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use super::catalog::{Action, CATALOG, Priority, Scope};
use crate::model::IncidentKind;
use crate::policy::source::Span;

/// The only language version.
pub const LANGUAGE_VERSION: u32 = 1;

/// Names of steps, ends and playbooks: what [`is_identifier`] accepts.
pub const IDENTIFIER_PATTERN: &str = "^[A-Za-z][A-Za-z0-9_-]{0,63}$";

/// Transition names a step id or outcome may not take.
pub const RESERVED_NAMES: &[&str] = &["skip", "exhausted"];

pub fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    text.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A value with the byte span of its text in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sp<T> {
    pub value: T,
    pub span: Span,
}

impl<T> Sp<T> {
    pub fn new(value: T, span: Span) -> Sp<T> {
        Sp { value, span }
    }
}

impl<T: JsonSchema> JsonSchema for Sp<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// A salvage recovery playbook: which incidents it handles and the graph of steps that recovers
/// from them.
#[derive(Debug, Clone, Default, JsonSchema)]
#[schemars(title = "salvage playbook", deny_unknown_fields)]
pub struct PlaybookSpec {
    /// Unique name of the playbook in its directory (letters, digits, `_`, `-`).
    #[schemars(required, schema_with = "identifier_schema")]
    pub playbook: Option<Sp<String>>,
    /// Version of the playbook language; always 1.
    #[schemars(required, range(min = 1, max = 1))]
    pub version: Option<Sp<u32>>,
    /// Which incident this playbook handles and why it is shaped this way.
    pub description: Option<Sp<String>>,
    /// Which incidents select this playbook.
    #[schemars(required, rename = "match")]
    pub match_: Option<MatchSpec>,
    /// Higher wins when several playbooks match an incident (default 0).
    pub priority: Option<Sp<i64>>,
    /// Id of the first step.
    #[schemars(required, schema_with = "identifier_schema")]
    pub start: Option<Sp<String>>,
    /// The steps, by id.
    #[schemars(required, schema_with = "steps_schema")]
    pub steps: Option<Vec<(Sp<String>, StepSpec)>>,
    /// Where a recovery can finish, by id.
    #[schemars(required, schema_with = "ends_schema")]
    pub ends: Option<Vec<(Sp<String>, EndSpec)>>,
}

/// Which incidents select the playbook.
#[derive(Debug, Clone, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MatchSpec {
    /// One incident kind, a list of kinds, or `any` (a fallback).
    #[schemars(required)]
    pub incident: Option<Sp<IncidentSelector>>,
    /// Optional guard: a Rhai expression over `run`, `report`, `incident` and `comparison`; the
    /// playbook matches only when it is true.
    #[schemars(default, skip_serializing_if = "Option::is_none", schema_with = "expression_schema")]
    pub when: Option<Sp<String>>,
}

/// The incident kinds a playbook matches.
#[derive(Debug, Clone, PartialEq)]
pub enum IncidentSelector {
    Any,
    Kinds(Vec<Sp<IncidentKind>>),
}

impl IncidentSelector {
    pub fn matches(&self, kind: &IncidentKind) -> bool {
        match self {
            IncidentSelector::Any => true,
            IncidentSelector::Kinds(kinds) => kinds.iter().any(|k| &k.value == kind),
        }
    }
}

impl JsonSchema for IncidentSelector {
    fn schema_name() -> Cow<'static, str> {
        "IncidentSelector".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let kinds: Vec<&str> = IncidentKind::KNOWN.iter().map(IncidentKind::as_str).collect();
        let mut with_any = kinds.clone();
        with_any.push("any");
        // A policy set may return kinds of its own, which only `salvage check` knows: the schema
        // offers the built-in kinds for completion and accepts any other word.
        let own = serde_json::json!({
            "type": "string",
            "pattern": "^[A-Za-z0-9_.:-]+$",
            "description": "A kind of the policy set's own (its `classify` returns it, or `INCIDENT_KINDS` declares it); `salvage check` checks it against the policies."
        });
        json_schema!({
            "description": "An incident kind (as returned by the `classify` policy hook), a list of kinds, or `any`.",
            "anyOf": [
                { "type": "string", "enum": with_any },
                own.clone(),
                {
                    "type": "array",
                    "items": { "anyOf": [{ "type": "string", "enum": kinds }, own] },
                    "minItems": 1,
                    "uniqueItems": true
                }
            ]
        })
    }
}

/// One step of the recovery: an action, when to run it, and where to go next.
#[derive(Debug, Clone, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct StepSpec {
    /// The action to take (see the action catalog).
    #[schemars(required)]
    pub action: Option<Sp<Action>>,
    /// What the step is for, shown in plans, graphs and approval requests.
    pub description: Option<Sp<String>>,
    /// Guard: a Rhai expression over `run`, `report`, `incident` and `comparison`. When false the
    /// step is skipped and the recovery continues at `next`.
    #[schemars(default, skip_serializing_if = "Option::is_none", schema_with = "expression_schema")]
    pub when: Option<Sp<String>>,
    /// The step or end taken for every outcome `on` does not list, and when the guard is false.
    #[schemars(default, skip_serializing_if = "Option::is_none", schema_with = "identifier_schema")]
    pub next: Option<Sp<String>>,
    /// Exits by outcome: `{ outcome: step-or-end }`. Playbooks are YAML 1.2, where `on` is a
    /// plain key; a YAML 1.1 loader (PyYAML, js-yaml 3) reads an unquoted `on` as `true`, so
    /// validate with a YAML 1.2 loader (ruamel.yaml, the `yaml` npm package, yq v4) or write
    /// `"on":`, which salvage reads identically.
    #[schemars(default, skip_serializing_if = "Option::is_none", schema_with = "exits_schema")]
    pub on: Option<Vec<(Sp<String>, Sp<String>)>>,
    /// Re-run the step when it fails, at most `max_attempts` times in all.
    pub retry: Option<RetrySpec>,
    /// Bound for loops: the step runs at most this many times; the next arrival takes the
    /// `exhausted` exit.
    #[schemars(range(min = 1, max = 1000))]
    pub max_visits: Option<Sp<u32>>,
    /// Text shown as the plan step's reason.
    pub reason: Option<Sp<String>>,
    /// Plan priority (default: the action's).
    pub priority: Option<Sp<Priority>>,
    /// Whether a person must approve the step: `always`, `never` (requires `why`) or
    /// `policy.NAME` (a hook called as NAME(step, ctx)); or the mapping
    /// `{ approvers, quorum, when }`: `quorum` distinct listed approvers must approve.
    pub approval: Option<Sp<ApprovalSpec>>,
    /// `approval.quorum`: how many distinct approvers must approve (1 when not written).
    #[schemars(skip)]
    pub quorum: Option<Sp<u32>>,
    /// `approval:` was a mapping without `when` (so a `request_approval` step keeps its own
    /// rule rather than being read as `approval: always`).
    #[schemars(skip)]
    pub approval_when_implied: bool,
    /// Why the step runs without approval (with `approval: never`).
    pub why: Option<Sp<String>>,
    /// Who may approve: a list of names or `policy.NAME` (called as NAME(step, ctx)).
    pub approvers: Option<Sp<ApproversSpec>>,
    /// The checkpoint to start from: `policy.NAME` (called as NAME(ctx)).
    pub checkpoint: Option<Sp<HookRef>>,
    /// `run` (default) or `workflow` for `branch_from_checkpoint`.
    pub scope: Option<Sp<Scope>>,
    /// How long `request_approval` waits for a person, or `await_run` for the run, e.g. `30m`.
    pub timeout: Option<Sp<DurationValue>>,
    /// Act on the run created by this earlier step instead of the incident run.
    #[schemars(default, skip_serializing_if = "Option::is_none", schema_with = "identifier_schema")]
    pub target: Option<Sp<String>>,
    /// The text `notify` sends.
    pub message: Option<Sp<String>>,
    /// Where `notify` sends it: a channel of salvage.yaml `notifications.channels`, as `NAME` or
    /// `TYPE:NAME` (e.g. `pagerduty:agents-oncall`); default: `notifications.default`.
    pub channel: Option<Sp<String>>,
    /// How long `wait` waits, e.g. `5m`.
    pub duration: Option<Sp<DurationValue>>,
    /// Fields that were written but could not be read (already reported; later checks skip
    /// what depends on them).
    #[schemars(skip)]
    pub invalid: Vec<&'static str>,
}

/// Automatic retries of a failing step.
#[derive(Debug, Clone, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, the first included.
    #[schemars(required, range(min = 1, max = 20))]
    pub max_attempts: Option<Sp<u32>>,
    /// Pause between attempts, e.g. `10s` (default 0s).
    pub backoff: Option<Sp<DurationValue>>,
}

/// A place where the recovery finishes.
#[derive(Debug, Clone, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct EndSpec {
    /// How the recovery ends.
    #[schemars(required)]
    pub outcome: Option<Sp<EndOutcome>>,
    /// What reaching this end means.
    pub description: Option<Sp<String>>,
}

/// How a recovery ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndOutcome {
    /// The incident is recovered.
    Resolved,
    /// Recovery was given up on purpose (e.g. an approval was denied).
    Abandoned,
    /// Handed to people: automation cannot safely go further.
    Escalated,
}

impl EndOutcome {
    pub const ALL: &'static [EndOutcome] = &[EndOutcome::Resolved, EndOutcome::Abandoned, EndOutcome::Escalated];

    pub fn as_str(self) -> &'static str {
        match self {
            EndOutcome::Resolved => "resolved",
            EndOutcome::Abandoned => "abandoned",
            EndOutcome::Escalated => "escalated",
        }
    }

    pub fn parse(text: &str) -> Option<EndOutcome> {
        EndOutcome::ALL.iter().copied().find(|outcome| outcome.as_str() == text)
    }
}

impl fmt::Display for EndOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `policy.NAME`: a function of the policy set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HookRef {
    pub name: String,
}

pub const HOOK_PATTERN: &str = "^policy\\.[A-Za-z_][A-Za-z0-9_]*$";

impl HookRef {
    /// Parses `policy.NAME`.
    pub fn parse(text: &str) -> Option<HookRef> {
        let name = text.strip_prefix("policy.")?;
        let mut chars = name.chars();
        (chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then(|| HookRef { name: name.to_owned() })
    }
}

impl fmt::Display for HookRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy.{}", self.name)
    }
}

impl JsonSchema for HookRef {
    fn schema_name() -> Cow<'static, str> {
        "HookRef".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": HOOK_PATTERN, "description": "A policy hook: `policy.NAME`." })
    }
}

/// The largest `approval.quorum` (more distinct people than any on-call rota).
pub const MAX_QUORUM: u32 = 100;

/// The `approval:` field (its mapping form's `when`; its `approvers` and `quorum` are read
/// into the step's `approvers` and `quorum`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalSpec {
    Always,
    Never,
    Hook(HookRef),
}

impl JsonSchema for ApprovalSpec {
    fn schema_name() -> Cow<'static, str> {
        "Approval".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let approvers = generator.subschema_for::<ApproversSpec>();
        json_schema!({
            "description": "`always`, `never` (with `why`), `policy.NAME`, or `{ approvers, quorum, when }`: \
                            `quorum` distinct approvers of `approvers` must approve (the requester never counts).",
            "oneOf": [
                { "type": "string", "pattern": "^(always|never|policy\\.[A-Za-z_][A-Za-z0-9_]*)$" },
                {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "approvers": approvers,
                        "quorum": { "type": "integer", "minimum": 1, "maximum": MAX_QUORUM },
                        "when": { "type": "string", "pattern": "^(always|policy\\.[A-Za-z_][A-Za-z0-9_]*)$" }
                    }
                }
            ]
        })
    }
}

/// The `approvers:` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApproversSpec {
    Hook(HookRef),
    Names(Vec<Sp<String>>),
}

impl JsonSchema for ApproversSpec {
    fn schema_name() -> Cow<'static, str> {
        "Approvers".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Who may approve: `policy.NAME` or a list of names.",
            "oneOf": [
                { "type": "string", "pattern": HOOK_PATTERN },
                { "type": "array", "items": { "type": "string", "minLength": 1 }, "minItems": 1 }
            ]
        })
    }
}

/// A duration written like `500ms`, `10s`, `30m`, `2h`, `1d` or `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurationValue(pub Duration);

pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h|d))+$";

/// Why a duration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationError {
    /// Not `<number><unit>...`.
    NotADuration,
    /// Well formed, but longer than [`crate::limits::MAX_DURATION`] (or too long to count).
    TooLong,
}

impl DurationValue {
    /// Parses a duration and checks it against [`crate::limits::MAX_DURATION`]: what every
    /// duration of a playbook or of `salvage.yaml` goes through.
    pub fn parse_checked(text: &str) -> Result<DurationValue, DurationError> {
        if !is_duration_text(text) {
            return Err(DurationError::NotADuration);
        }
        // Well formed: a number too large to add up is too long, not malformed.
        let value = DurationValue::parse(text).ok_or(DurationError::TooLong)?;
        crate::limits::check_duration(value.0).map(DurationValue).map_err(|_| DurationError::TooLong)
    }

    /// Parses a duration without an upper bound (`None` when malformed or beyond `u64`
    /// milliseconds); [`DurationValue::parse_checked`] is what input goes through.
    pub fn parse(text: &str) -> Option<DurationValue> {
        let mut total = Duration::ZERO;
        let mut rest = text;
        if rest.is_empty() {
            return None;
        }
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return None;
            }
            let number: u64 = rest[..digits].parse().ok()?;
            rest = &rest[digits..];
            let (unit_millis, unit_len) = if rest.starts_with("ms") {
                (1, 2)
            } else if rest.starts_with('s') {
                (1_000, 1)
            } else if rest.starts_with('m') {
                (60_000, 1)
            } else if rest.starts_with('h') {
                (3_600_000, 1)
            } else if rest.starts_with('d') {
                (86_400_000, 1)
            } else {
                return None;
            };
            rest = &rest[unit_len..];
            total = total.checked_add(Duration::from_millis(number.checked_mul(unit_millis)?))?;
        }
        Some(DurationValue(total))
    }
}

/// Whether `text` matches [`DURATION_PATTERN`].
fn is_duration_text(text: &str) -> bool {
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d"].into_iter().find(|unit| rest.starts_with(unit));
        match unit {
            Some(unit) => rest = &rest[unit.len()..],
            None => return false,
        }
    }
    true
}

impl fmt::Display for DurationValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::limits::describe_duration(self.0))
    }
}

impl JsonSchema for DurationValue {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration: a number and a unit (ms, s, m, h, d), e.g. `30m`, `10s`, `1h30m`; at most 366d."
        })
    }
}

impl JsonSchema for Action {
    fn schema_name() -> Cow<'static, str> {
        "Action".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let variants: Vec<serde_json::Value> = CATALOG
            .iter()
            .map(|spec| {
                serde_json::json!({
                    "const": spec.name,
                    "description": format!(
                        "{} Effect: {}. Outcomes: {}.",
                        spec.description.replace('\n', " "),
                        spec.effect,
                        spec.outcomes.join(", ")
                    ),
                })
            })
            .collect();
        json_schema!({ "type": "string", "oneOf": variants })
    }
}

fn identifier_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "pattern": IDENTIFIER_PATTERN })
}

fn expression_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "description": "A Rhai expression over `run`, `report`, `incident` and `comparison` that yields a boolean."
    })
}

fn steps_schema(generator: &mut SchemaGenerator) -> Schema {
    let step = generator.subschema_for::<StepSpec>();
    json_schema!({
        "type": "object",
        "description": "The steps, by id.",
        "minProperties": 1,
        "propertyNames": { "pattern": IDENTIFIER_PATTERN, "not": { "enum": RESERVED_NAMES } },
        "additionalProperties": step
    })
}

fn ends_schema(generator: &mut SchemaGenerator) -> Schema {
    let end = generator.subschema_for::<EndSpec>();
    json_schema!({
        "type": "object",
        "description": "Where a recovery can finish, by id.",
        "minProperties": 1,
        "propertyNames": { "pattern": IDENTIFIER_PATTERN, "not": { "enum": RESERVED_NAMES } },
        "additionalProperties": end
    })
}

fn exits_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "Exits by outcome: `{ outcome: step-or-end }`.",
        "minProperties": 1,
        "additionalProperties": { "type": "string", "pattern": IDENTIFIER_PATTERN }
    })
}

/// The field names the schema (and the reader) accept for each object of the language.
pub mod fields {
    pub const PLAYBOOK: &[&str] =
        &["playbook", "version", "description", "match", "priority", "start", "steps", "ends"];
    pub const MATCH: &[&str] = &["incident", "when"];
    pub const STEP_CONTROL: &[&str] = &["action", "description", "when", "next", "on", "max_visits"];
    pub const RETRY: &[&str] = &["max_attempts", "backoff"];
    pub const END: &[&str] = &["outcome", "description"];
    pub const APPROVAL: &[&str] = &["approvers", "quorum", "when"];

    /// Every step field: control fields then parameters, in schema order.
    pub fn step() -> Vec<&'static str> {
        let mut all = STEP_CONTROL.to_vec();
        all.extend(super::super::catalog::Param::ALL.iter().map(|param| param.name()));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(DurationValue::parse("30m"), Some(DurationValue(Duration::from_secs(1800))));
        assert_eq!(DurationValue::parse("500ms"), Some(DurationValue(Duration::from_millis(500))));
        assert_eq!(DurationValue::parse("1h30m"), Some(DurationValue(Duration::from_secs(5400))));
        assert_eq!(DurationValue::parse("0s"), Some(DurationValue(Duration::ZERO)));
        for bad in ["", "soon", "30", "m30", "1.5h", "10 s", "-1s", "99999999999999999999d"] {
            assert_eq!(DurationValue::parse(bad), None, "{bad}");
        }
        assert_eq!(DurationValue::parse("90m").unwrap().to_string(), "1h30m");
        assert_eq!(DurationValue::parse("1500ms").unwrap().to_string(), "1s500ms");
    }

    #[test]
    fn durations_are_bounded_where_they_are_parsed() {
        assert_eq!(DurationValue::parse_checked("366d"), Ok(DurationValue(crate::limits::MAX_DURATION)));
        assert_eq!(DurationValue::parse_checked("1h30m"), Ok(DurationValue(Duration::from_secs(5400))));
        for too_long in ["3650000d", "366d1ms", "18446744073709551615ms", "99999999999999999999d"] {
            assert_eq!(DurationValue::parse_checked(too_long), Err(DurationError::TooLong), "{too_long}");
        }
        for malformed in ["", "soon", "30", "1.5h", "-1s", "10 s"] {
            assert_eq!(DurationValue::parse_checked(malformed), Err(DurationError::NotADuration), "{malformed}");
        }
    }

    #[test]
    fn hooks_and_identifiers() {
        assert_eq!(HookRef::parse("policy.approvers"), Some(HookRef { name: "approvers".into() }));
        for bad in ["approvers", "policy.", "policy.1x", "policy.a.b", "Policy.x"] {
            assert_eq!(HookRef::parse(bad), None, "{bad}");
        }
        assert!(is_identifier("branch-2_a"));
        for bad in ["", "2x", "a b", "é", &"x".repeat(65)] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }
}
