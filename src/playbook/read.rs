//! Reads the YAML node tree into the language types, reporting every wrong type, unknown field,
//! missing field and duplicate key (not just the first).

use super::catalog::{Action, CATALOG, Param, Priority, Scope};
use super::diagnostic::{Code, Reporter};
use super::language::{
    ApprovalSpec, ApproversSpec, DurationError, DurationValue, EndOutcome, EndSpec, HookRef, IncidentSelector,
    LANGUAGE_VERSION, MAX_QUORUM, MatchSpec, PlaybookSpec, RESERVED_NAMES, RetrySpec, Sp, StepSpec, fields,
    is_identifier,
};
use super::suggest::did_you_mean;
use super::yaml::{Node, Value};
use crate::model::IncidentKind;
use crate::policy::source::Span;

/// The entries of a mapping whose keys were checked.
struct Fields<'n> {
    entries: Vec<(&'n str, &'n Node, &'n Node)>,
}

impl<'n> Fields<'n> {
    fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries.iter().find(|(key, _, _)| *key == name).map(|(_, _, value)| *value)
    }
}

fn expected(r: &mut Reporter, node: &Node, what: &str, expected: &str) {
    r.report(
        Code::WrongType,
        node.span,
        format!("{what} must be {expected}, found {}", node.value.kind()),
        format!("expected {expected}"),
    );
}

/// Checks a mapping's keys: strings, no duplicates, all in `allowed`. Unknown keys are reported
/// and dropped; the first of duplicated keys is kept.
fn mapping<'n>(r: &mut Reporter, node: &'n Node, what: &str, allowed: &[&str]) -> Option<Fields<'n>> {
    let Value::Map(entries) = &node.value else {
        expected(r, node, what, "a mapping");
        return None;
    };
    let mut fields = Fields { entries: Vec::new() };
    // A map, not a list: a hostile file with 20,000 keys must not cost 20,000² comparisons.
    let mut seen: std::collections::HashMap<&str, Span> = std::collections::HashMap::new();
    for (key, value) in entries {
        let Value::Str(name) = &key.value else {
            expected(r, key, &format!("a key of {what}"), "a string");
            continue;
        };
        if let Some(first) = seen.get(name.as_str()) {
            let first = *first;
            r.report(Code::DuplicateKey, key.span, format!("`{name}` appears twice in {what}"), "duplicate key")
                .related(first, "first here")
                .help("YAML keys must be unique; remove one of them");
            continue;
        }
        seen.insert(name, key.span);
        if !allowed.contains(&name.as_str()) {
            let diagnostic =
                r.report(Code::UnknownField, key.span, format!("unknown field `{name}` in {what}"), "unknown field");
            match did_you_mean(name, allowed.iter().copied()) {
                Some(help) => diagnostic.help(help),
                None => diagnostic.help(format!("expected one of: {}", allowed.join(", "))),
            };
            continue;
        }
        fields.entries.push((name, key, value));
    }
    Some(fields)
}

fn missing(r: &mut Reporter, anchor: Span, what: &str, field: &str) {
    r.report(Code::MissingField, anchor, format!("{what} has no `{field}`"), format!("`{field}` is required"));
}

fn string(r: &mut Reporter, node: &Node, what: &str) -> Option<Sp<String>> {
    match &node.value {
        Value::Str(text) => Some(Sp::new(text.clone(), node.span)),
        _ => {
            expected(r, node, what, "a string");
            None
        }
    }
}

/// A non-empty string.
fn text(r: &mut Reporter, node: &Node, what: &str) -> Option<Sp<String>> {
    let value = string(r, node, what)?;
    if value.value.trim().is_empty() {
        r.report(Code::InvalidValue, node.span, format!("{what} is empty"), "empty");
        return None;
    }
    Some(value)
}

fn identifier(r: &mut Reporter, node: &Node, what: &str) -> Option<Sp<String>> {
    let value = string(r, node, what)?;
    check_identifier(r, &value, what);
    Some(value)
}

fn check_identifier(r: &mut Reporter, value: &Sp<String>, what: &str) -> bool {
    if !is_identifier(&value.value) {
        r.report(
            Code::InvalidIdentifier,
            value.span,
            format!("{what} `{}` is not a valid name", value.value),
            "letters, digits, `_` and `-`, starting with a letter",
        );
        return false;
    }
    if RESERVED_NAMES.contains(&value.value.as_str()) {
        r.report(
            Code::InvalidIdentifier,
            value.span,
            format!("{what} `{}` is a reserved transition name", value.value),
            "reserved",
        );
        return false;
    }
    true
}

fn integer(r: &mut Reporter, node: &Node, what: &str, min: i64, max: i64) -> Option<Sp<i64>> {
    match &node.value {
        Value::Int(value) if (min..=max).contains(value) => Some(Sp::new(*value, node.span)),
        Value::Int(value) => {
            r.report(
                Code::InvalidValue,
                node.span,
                format!("{what} is {value}; it must be between {min} and {max}"),
                "out of range",
            );
            None
        }
        _ => {
            expected(r, node, what, "an integer");
            None
        }
    }
}

fn count(r: &mut Reporter, node: &Node, what: &str, min: u32, max: u32) -> Option<Sp<u32>> {
    let value = integer(r, node, what, i64::from(min), i64::from(max))?;
    u32::try_from(value.value).ok().map(|count| Sp::new(count, value.span))
}

fn duration(r: &mut Reporter, node: &Node, what: &str) -> Option<Sp<DurationValue>> {
    match &node.value {
        Value::Str(text) => match DurationValue::parse_checked(text) {
            Ok(duration) => Some(Sp::new(duration, node.span)),
            Err(DurationError::NotADuration) => {
                r.report(Code::InvalidValue, node.span, format!("{what} `{text}` is not a duration"), "not a duration")
                    .help("write a number and a unit (ms, s, m, h, d), e.g. `30m`, `10s`, `1h30m`");
                None
            }
            Err(DurationError::TooLong) => {
                r.report(
                    Code::InvalidValue,
                    node.span,
                    format!("{what} `{text}` is longer than the maximum of {}", crate::limits::MAX_DURATION_TEXT),
                    "too long",
                )
                .help(format!(
                    "durations are at most {}; a longer wait or approval window cannot be meant",
                    crate::limits::MAX_DURATION_TEXT
                ));
                None
            }
        },
        Value::Int(number) => {
            r.report(Code::InvalidValue, node.span, format!("{what} `{number}` has no unit"), "no unit")
                .help(format!("write `{number}s` for seconds or `{number}m` for minutes"));
            None
        }
        _ => {
            expected(r, node, what, "a duration string such as `30m`");
            None
        }
    }
}

fn hook(r: &mut Reporter, node: &Node, what: &str) -> Option<Sp<HookRef>> {
    let value = string(r, node, what)?;
    match HookRef::parse(&value.value) {
        Some(hook) => Some(Sp::new(hook, value.span)),
        None => {
            let help = if is_identifier(&value.value) {
                format!("policy hooks are written `policy.NAME`: did you mean `policy.{}`?", value.value)
            } else {
                "policy hooks are written `policy.NAME`".to_owned()
            };
            r.report(
                Code::InvalidValue,
                value.span,
                format!("{what} `{}` is not a policy hook reference", value.value),
                "expected `policy.NAME`",
            )
            .help(help);
            None
        }
    }
}

/// The incident kinds `match.incident` accepts beyond the built-in ones: the kinds of the
/// policy set's own (`None` without a policy set: only built-in kinds are known then).
pub(crate) type CustomKinds<'a> = Option<&'a [&'a str]>;

/// Reads a whole playbook. `None` when the document is not a mapping at all.
pub(crate) fn playbook(r: &mut Reporter, root: &Node, custom_kinds: CustomKinds<'_>) -> Option<PlaybookSpec> {
    if !matches!(root.value, Value::Map(_)) {
        let found = root.value.kind();
        r.report(
            Code::NotAPlaybook,
            root.span,
            format!("a playbook is a YAML mapping, found {found}"),
            "not a playbook",
        )
        .help("start with `playbook: NAME`, `version: 1`, `match:`, `start:`, `steps:` and `ends:`");
        return None;
    }
    let fields = mapping(r, root, "the playbook", fields::PLAYBOOK)?;
    let anchor = root.entries_anchor();
    let mut spec = PlaybookSpec::default();
    match fields.get("playbook") {
        Some(node) => spec.playbook = identifier(r, node, "the playbook name"),
        None => missing(r, anchor, "the playbook", "playbook"),
    }
    match fields.get("version") {
        Some(node) => match &node.value {
            Value::Int(version) if *version == i64::from(LANGUAGE_VERSION) => {
                spec.version = Some(Sp::new(LANGUAGE_VERSION, node.span));
            }
            Value::Int(version) => {
                r.report(
                    Code::UnsupportedVersion,
                    node.span,
                    format!("playbook language version {version} is not supported"),
                    "unsupported version",
                )
                .help("this salvage reads `version: 1`");
            }
            _ => expected(r, node, "`version`", "an integer"),
        },
        None => missing(r, anchor, "the playbook", "version"),
    }
    if let Some(node) = fields.get("description") {
        spec.description = text(r, node, "`description`");
    }
    match fields.get("match") {
        Some(node) => spec.match_ = match_spec(r, node, custom_kinds),
        None => missing(r, anchor, "the playbook", "match"),
    }
    if let Some(node) = fields.get("priority") {
        spec.priority = integer(r, node, "`priority`", -1_000_000, 1_000_000);
    }
    match fields.get("start") {
        Some(node) => spec.start = identifier(r, node, "`start`"),
        None => missing(r, anchor, "the playbook", "start"),
    }
    match fields.get("steps") {
        Some(node) => spec.steps = keyed(r, node, "`steps`", step),
        None => missing(r, anchor, "the playbook", "steps"),
    }
    match fields.get("ends") {
        Some(node) => spec.ends = keyed(r, node, "`ends`", end),
        None => missing(r, anchor, "the playbook", "ends"),
    }
    Some(spec)
}

impl Node {
    /// Where to point for "missing field" in this mapping: its first key.
    fn entries_anchor(&self) -> Span {
        match &self.value {
            Value::Map(entries) => entries.first().map(|(key, _)| key.span).unwrap_or(self.span),
            _ => self.span,
        }
    }
}

/// A mapping of id → item (steps, ends). Duplicate ids are reported here (P008) because the
/// YAML keeps them.
fn keyed<T>(
    r: &mut Reporter,
    node: &Node,
    what: &str,
    read: fn(&mut Reporter, &Sp<String>, &Node) -> T,
) -> Option<Vec<(Sp<String>, T)>> {
    let Value::Map(entries) = &node.value else {
        expected(r, node, what, "a mapping of ids");
        return None;
    };
    if entries.is_empty() {
        r.report(Code::MissingField, node.span, format!("{what} is empty"), "nothing here");
        return None;
    }
    let mut items: Vec<(Sp<String>, T)> = Vec::new();
    let mut seen: std::collections::HashMap<&str, Span> = std::collections::HashMap::new();
    for (key, value) in entries {
        let Value::Str(name) = &key.value else {
            expected(r, key, &format!("an id in {what}"), "a string");
            continue;
        };
        let id = Sp::new(name.clone(), key.span);
        if let Some(first) = seen.get(name.as_str()) {
            let first = *first;
            r.report(Code::DuplicateStepId, key.span, format!("`{name}` is defined twice in {what}"), "duplicate id")
                .related(first, "first defined here");
            continue;
        }
        seen.insert(name, key.span);
        check_identifier(r, &id, "the id");
        let item = read(r, &id, value);
        items.push((id, item));
    }
    Some(items)
}

fn match_spec(r: &mut Reporter, node: &Node, custom_kinds: CustomKinds<'_>) -> Option<MatchSpec> {
    let fields = mapping(r, node, "`match`", fields::MATCH)?;
    let mut spec = MatchSpec::default();
    match fields.get("incident") {
        Some(incident) => spec.incident = incident_selector(r, incident, custom_kinds),
        None => missing(r, node.entries_anchor(), "`match`", "incident"),
    }
    if let Some(when) = fields.get("when") {
        spec.when = text(r, when, "`match.when`");
    }
    Some(spec)
}

fn incident_kind(r: &mut Reporter, node: &Node, custom_kinds: CustomKinds<'_>) -> Option<Sp<IncidentKind>> {
    let name = string(r, node, "an incident kind")?;
    let kind = IncidentKind::parse(&name.value);
    let custom = custom_kinds.unwrap_or_default();
    if kind.is_known() || custom.contains(&name.value.as_str()) {
        return Some(Sp::new(kind, name.span));
    }
    let known: Vec<&str> = IncidentKind::KNOWN.iter().map(IncidentKind::as_str).chain(custom.iter().copied()).collect();
    let own = match custom_kinds {
        Some(_) => "; a kind of your own must be one `classify` returns as a literal or one listed in \
                    `const INCIDENT_KINDS = [...]` in a policy file"
            .to_owned(),
        None => "; kinds of your own are known only with the policies that return them (--policies)".to_owned(),
    };
    let help = did_you_mean(&name.value, known.iter().copied().chain(["any"]))
        .unwrap_or_else(|| format!("known kinds: {}{own}", known.join(", ")));
    r.report(
        Code::UnknownIncident,
        name.span,
        format!("unknown incident kind `{}`", name.value),
        "unknown incident kind",
    )
    .help(help);
    None
}

fn incident_selector(r: &mut Reporter, node: &Node, custom_kinds: CustomKinds<'_>) -> Option<Sp<IncidentSelector>> {
    match &node.value {
        Value::Str(text) if text == "any" => Some(Sp::new(IncidentSelector::Any, node.span)),
        Value::Str(_) => {
            incident_kind(r, node, custom_kinds).map(|kind| Sp::new(IncidentSelector::Kinds(vec![kind]), node.span))
        }
        Value::Seq(items) => {
            if items.is_empty() {
                r.report(Code::InvalidValue, node.span, "`match.incident` is an empty list", "no incident kind");
                return None;
            }
            let mut kinds: Vec<Sp<IncidentKind>> = Vec::new();
            let mut valid = true;
            for item in items {
                match incident_kind(r, item, custom_kinds) {
                    Some(kind) => {
                        if let Some(first) = kinds.iter().find(|k| k.value == kind.value) {
                            let first = first.span;
                            r.report(
                                Code::DuplicateKey,
                                kind.span,
                                format!("incident kind `{}` is listed twice", kind.value),
                                "listed again",
                            )
                            .related(first, "first here");
                        } else {
                            kinds.push(kind);
                        }
                    }
                    None => valid = false,
                }
            }
            valid.then(|| Sp::new(IncidentSelector::Kinds(kinds), node.span))
        }
        _ => {
            expected(r, node, "`match.incident`", "an incident kind or a list of kinds");
            None
        }
    }
}

fn step(r: &mut Reporter, id: &Sp<String>, node: &Node) -> StepSpec {
    let what = format!("step `{}`", id.value);
    let allowed = fields::step();
    let Some(fields) = mapping(r, node, &what, &allowed) else {
        return StepSpec::default();
    };
    let mut spec = StepSpec::default();
    match fields.get("action") {
        Some(node) => spec.action = action(r, node),
        None => missing(r, id.span, &what, "action"),
    }
    if let Some(node) = fields.get("description") {
        spec.description = text(r, node, "`description`");
    }
    if let Some(node) = fields.get("when") {
        spec.when = text(r, node, "`when`");
    }
    if let Some(node) = fields.get("next") {
        spec.next = identifier(r, node, "`next`");
    }
    if let Some(node) = fields.get("on") {
        spec.on = exits(r, node);
    }
    if let Some(node) = fields.get("retry") {
        spec.retry = retry(r, node);
    }
    if let Some(node) = fields.get("max_visits") {
        spec.max_visits = count(r, node, "`max_visits`", 1, 1000);
    }
    if let Some(node) = fields.get("reason") {
        spec.reason = text(r, node, "`reason`");
    }
    if let Some(node) = fields.get("priority") {
        spec.priority = string(r, node, "`priority`").and_then(|value| match Priority::parse(&value.value) {
            Some(priority) => Some(Sp::new(priority, value.span)),
            None => {
                r.report(
                    Code::InvalidValue,
                    value.span,
                    format!("priority `{}` is not one of high, medium, low", value.value),
                    "unknown priority",
                )
                .help(
                    did_you_mean(&value.value, Priority::ALL.iter().map(|p| p.as_str()))
                        .unwrap_or_else(|| "use high, medium or low".into()),
                );
                None
            }
        });
    }
    if let Some(node) = fields.get("approval") {
        spec.approval = approval(r, node, &mut spec);
    }
    if let Some(node) = fields.get("why") {
        spec.why = text(r, node, "`why`");
    }
    if let Some(node) = fields.get("approvers") {
        match &spec.approvers {
            // `approval: { approvers: … }` already said who approves.
            Some(first) => {
                let first = first.span;
                r.report(
                    Code::DuplicateKey,
                    node.span,
                    "approvers given twice: in `approval:` and as `approvers:`",
                    "second list of approvers",
                )
                .related(first, "first here")
                .help("keep one: `approval: { approvers: [...], quorum: N }` or the separate `approvers:`");
            }
            None => spec.approvers = approvers(r, node),
        }
    }
    if let Some(node) = fields.get("checkpoint") {
        spec.checkpoint = hook(r, node, "`checkpoint`");
    }
    if let Some(node) = fields.get("scope") {
        spec.scope = string(r, node, "`scope`").and_then(|value| match Scope::parse(&value.value) {
            Some(scope) => Some(Sp::new(scope, value.span)),
            None => {
                r.report(
                    Code::InvalidValue,
                    value.span,
                    format!("scope `{}` is not `run` or `workflow`", value.value),
                    "unknown scope",
                );
                None
            }
        });
    }
    if let Some(node) = fields.get("timeout") {
        spec.timeout = duration(r, node, "`timeout`");
    }
    if let Some(node) = fields.get("target") {
        spec.target = identifier(r, node, "`target`");
    }
    if let Some(node) = fields.get("message") {
        spec.message = text(r, node, "`message`");
    }
    if let Some(node) = fields.get("channel") {
        spec.channel = text(r, node, "`channel`");
    }
    if let Some(node) = fields.get("duration") {
        spec.duration = duration(r, node, "`duration`");
    }
    debug_assert!(Param::ALL.iter().all(|param| allowed.contains(&param.name())));
    for (name, _, _) in &fields.entries {
        if !is_set(&spec, name)
            && let Some(field) = allowed.iter().find(|field| *field == name)
        {
            spec.invalid.push(field);
        }
    }
    spec
}

/// Whether a step field holds a value after reading.
fn is_set(spec: &StepSpec, field: &str) -> bool {
    match field {
        "action" => spec.action.is_some(),
        "description" => spec.description.is_some(),
        "when" => spec.when.is_some(),
        "next" => spec.next.is_some(),
        "on" => spec.on.is_some(),
        "retry" => spec.retry.is_some(),
        "max_visits" => spec.max_visits.is_some(),
        "reason" => spec.reason.is_some(),
        "priority" => spec.priority.is_some(),
        "approval" => spec.approval.is_some(),
        "why" => spec.why.is_some(),
        "approvers" => spec.approvers.is_some(),
        "checkpoint" => spec.checkpoint.is_some(),
        "scope" => spec.scope.is_some(),
        "timeout" => spec.timeout.is_some(),
        "target" => spec.target.is_some(),
        "message" => spec.message.is_some(),
        "channel" => spec.channel.is_some(),
        "duration" => spec.duration.is_some(),
        _ => false,
    }
}

fn action(r: &mut Reporter, node: &Node) -> Option<Sp<Action>> {
    let name = string(r, node, "`action`")?;
    match Action::from_name(&name.value) {
        Some(action) => Some(Sp::new(action, name.span)),
        None => {
            let help = did_you_mean(&name.value, CATALOG.iter().map(|spec| spec.name))
                .unwrap_or_else(|| "`salvage schema` lists the actions".to_owned());
            r.report(Code::UnknownAction, name.span, format!("unknown action `{}`", name.value), "unknown action")
                .help(help);
            None
        }
    }
}

fn exits(r: &mut Reporter, node: &Node) -> Option<Vec<(Sp<String>, Sp<String>)>> {
    let Value::Map(entries) = &node.value else {
        expected(r, node, "`on`", "a mapping of outcome to step");
        return None;
    };
    let mut exits: Vec<(Sp<String>, Sp<String>)> = Vec::new();
    for (key, value) in entries {
        let Value::Str(outcome) = &key.value else {
            expected(r, key, "an outcome in `on`", "a string");
            continue;
        };
        if let Some((first, _)) = exits.iter().find(|(existing, _)| &existing.value == outcome) {
            let first = first.span;
            r.report(
                Code::DuplicateKey,
                key.span,
                format!("outcome `{outcome}` appears twice in `on`"),
                "duplicate key",
            )
            .related(first, "first here");
            continue;
        }
        if let Some(target) = identifier(r, value, "an exit") {
            exits.push((Sp::new(outcome.clone(), key.span), target));
        }
    }
    Some(exits)
}

fn retry(r: &mut Reporter, node: &Node) -> Option<RetrySpec> {
    let fields = mapping(r, node, "`retry`", fields::RETRY)?;
    let mut spec = RetrySpec::default();
    match fields.get("max_attempts") {
        Some(value) => spec.max_attempts = count(r, value, "`retry.max_attempts`", 1, 20),
        None => missing(r, node.entries_anchor(), "`retry`", "max_attempts"),
    }
    if let Some(value) = fields.get("backoff") {
        spec.backoff = duration(r, value, "`retry.backoff`");
    }
    Some(spec)
}

/// `approval:` — a scalar rule, or `{ approvers, quorum, when }` (whose approvers and quorum
/// go to the step's `approvers` and `quorum`).
fn approval(r: &mut Reporter, node: &Node, spec: &mut StepSpec) -> Option<Sp<ApprovalSpec>> {
    if let Value::Map(_) = &node.value {
        let fields = mapping(r, node, "`approval`", fields::APPROVAL)?;
        if let Some(value) = fields.get("approvers") {
            spec.approvers = approvers(r, value);
        }
        if let Some(value) = fields.get("quorum") {
            spec.quorum = count(r, value, "`approval.quorum`", 1, MAX_QUORUM);
        }
        let rule = match fields.get("when") {
            None => {
                spec.approval_when_implied = true;
                Some(Sp::new(ApprovalSpec::Always, node.span))
            }
            Some(when) => match &when.value {
                Value::Str(text) if text == "always" => Some(Sp::new(ApprovalSpec::Always, when.span)),
                Value::Str(text) if text == "never" => {
                    r.report(
                        Code::InvalidValue,
                        when.span,
                        "`approval.when` is `never`, but the mapping names approvers",
                        "expected always or policy.NAME",
                    )
                    .help("write `approval: never` with a `why:` for a step nobody approves");
                    None
                }
                _ => hook(r, when, "`approval.when`").map(|hook| Sp::new(ApprovalSpec::Hook(hook.value), hook.span)),
            },
        };
        // A quorum or approvers that could not be read leave the rule unusable too.
        let unreadable = (fields.get("quorum").is_some() && spec.quorum.is_none())
            || (fields.get("approvers").is_some() && spec.approvers.is_none());
        return rule.filter(|_| !unreadable);
    }
    let value = match &node.value {
        // `approval: true/false` is a natural mistake; say what to write instead.
        Value::Bool(flag) => {
            r.report(
                Code::InvalidValue,
                node.span,
                "`approval` is not a boolean",
                "expected always, never or policy.NAME",
            )
            .help(if *flag { "write `approval: always`" } else { "write `approval: never` with a `why:`" });
            return None;
        }
        _ => string(r, node, "`approval`")?,
    };
    match value.value.as_str() {
        "always" => Some(Sp::new(ApprovalSpec::Always, value.span)),
        "never" => Some(Sp::new(ApprovalSpec::Never, value.span)),
        _ => hook(r, node, "`approval`").map(|hook| Sp::new(ApprovalSpec::Hook(hook.value), hook.span)),
    }
}

fn approvers(r: &mut Reporter, node: &Node) -> Option<Sp<ApproversSpec>> {
    match &node.value {
        Value::Str(_) => hook(r, node, "`approvers`").map(|hook| Sp::new(ApproversSpec::Hook(hook.value), hook.span)),
        Value::Seq(items) if !items.is_empty() => {
            let names: Vec<Sp<String>> =
                items.iter().filter_map(|item| text(r, item, "an approver").filter(|name| approver(r, name))).collect();
            (names.len() == items.len()).then(|| Sp::new(ApproversSpec::Names(names), node.span))
        }
        Value::Seq(_) => {
            r.report(Code::InvalidValue, node.span, "`approvers` is an empty list", "nobody could approve");
            None
        }
        _ => {
            expected(r, node, "`approvers`", "`policy.NAME` or a list of names");
            None
        }
    }
}

/// Whether a listed approver is a usable name ([`crate::limits::validate_approver_name`]).
fn approver(r: &mut Reporter, name: &Sp<String>) -> bool {
    match crate::limits::validate_approver_name(&name.value) {
        Ok(()) => true,
        Err(error) => {
            r.report(Code::InvalidValue, name.span, error.to_string(), "not an approver name")
                .help("name a person or a role, e.g. oncall-sre");
            false
        }
    }
}

fn end(r: &mut Reporter, id: &Sp<String>, node: &Node) -> EndSpec {
    let what = format!("end `{}`", id.value);
    let Some(fields) = mapping(r, node, &what, fields::END) else {
        return EndSpec::default();
    };
    let mut spec = EndSpec::default();
    match fields.get("outcome") {
        Some(value) => {
            spec.outcome = string(r, value, "`outcome`").and_then(|text| match EndOutcome::parse(&text.value) {
                Some(outcome) => Some(Sp::new(outcome, text.span)),
                None => {
                    let known = EndOutcome::ALL.iter().map(|o| o.as_str());
                    r.report(
                        Code::InvalidValue,
                        text.span,
                        format!("end outcome `{}` is not one of resolved, abandoned, escalated", text.value),
                        "unknown end outcome",
                    )
                    .help(
                        did_you_mean(&text.value, known)
                            .unwrap_or_else(|| "use resolved, abandoned or escalated".into()),
                    );
                    None
                }
            });
        }
        None => missing(r, id.span, &what, "outcome"),
    }
    if let Some(value) = fields.get("description") {
        spec.description = text(r, value, "`description`");
    }
    spec
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::playbook::{ApprovalRule, Approvers, CompiledPlaybook, Diagnostic, compile_str};

    /// A playbook whose one step is `action` with `fields` (indented under the step).
    fn playbook(action: &str, fields: &str) -> String {
        let exits = if action == "request_approval" {
            "timeout: 1h\n    on: { approved: done, denied: done, timeout: done }"
        } else {
            "on: { ok: done, failed: done }"
        };
        format!(
            "playbook: q\nversion: 1\ndescription: d\nmatch: {{ incident: any }}\nstart: s\nsteps:\n  s:\n    action: \
             {action}\n    description: d\n{fields}    {exits}\nends:\n  done: {{ outcome: resolved }}\n"
        )
    }

    fn compile(text: &str) -> (Option<CompiledPlaybook>, Vec<Diagnostic>) {
        compile_str(Path::new("q.yaml"), text, None)
    }

    fn errors(diagnostics: &[Diagnostic]) -> Vec<(&str, u32, u32)> {
        diagnostics
            .iter()
            .filter(|d| d.severity == crate::playbook::Severity::Error)
            .map(|d| (d.code, d.line, d.column))
            .collect()
    }

    #[test]
    fn the_approval_mapping_names_approvers_and_a_quorum() {
        let text = playbook("cancel_run", "    approval: { approvers: [alice, bob, carol], quorum: 2 }\n");
        let (compiled, diagnostics) = compile(&text);
        let compiled = compiled.unwrap_or_else(|| panic!("{diagnostics:?}"));
        let (_, step) = compiled.graph.steps().next().expect("a step");
        assert_eq!(step.params.quorum, 2);
        assert_eq!(step.params.approval, ApprovalRule::Always, "`when` defaults to always");
        assert_eq!(step.params.approvers, Some(Approvers::Names(vec!["alice".into(), "bob".into(), "carol".into()])));

        let hooked = playbook("cancel_run", "    approval: { approvers: policy.who, quorum: 3, when: policy.gate }\n");
        let (compiled, diagnostics) = compile(&hooked);
        let compiled = compiled.unwrap_or_else(|| panic!("{diagnostics:?}"));
        let (_, step) = compiled.graph.steps().next().expect("a step");
        assert_eq!(step.params.approval, ApprovalRule::Hook("gate".into()));
        assert_eq!(step.params.approvers, Some(Approvers::Hook("who".into())));
        assert_eq!(step.params.quorum, 3, "a hook's approvers cannot be counted before planning");

        // On the approval step itself the mapping only says who decides.
        let asked = playbook("request_approval", "    approval: { approvers: [alice, bob], quorum: 2 }\n");
        let (compiled, diagnostics) = compile(&asked);
        let compiled = compiled.unwrap_or_else(|| panic!("{diagnostics:?}"));
        let (_, step) = compiled.graph.steps().next().expect("a step");
        assert_eq!((step.params.approval.clone(), step.params.quorum), (ApprovalRule::Unspecified, 2));

        let scalar = playbook("cancel_run", "    approval: always\n    approvers: [alice]\n");
        let (compiled, diagnostics) = compile(&scalar);
        let compiled = compiled.unwrap_or_else(|| panic!("{diagnostics:?}"));
        let (_, step) = compiled.graph.steps().next().expect("a step");
        assert_eq!(step.params.quorum, 1, "the scalar forms keep a quorum of one");
    }

    #[test]
    fn approvers_given_twice_are_an_error_at_the_second() {
        let text =
            playbook("cancel_run", "    approval: { approvers: [alice, bob], quorum: 2 }\n    approvers: [carol]\n");
        let (compiled, diagnostics) = compile(&text);
        assert!(compiled.is_none());
        assert_eq!(errors(&diagnostics), [("P007", 11, 16)], "{diagnostics:?}");
        assert!(diagnostics[0].message.contains("approvers given twice"), "{}", diagnostics[0].message);
    }

    #[test]
    fn a_quorum_is_a_count_of_at_least_one_and_at_most_the_named_approvers() {
        for (quorum, code) in [("0", "P004"), ("two", "P003"), ("101", "P004")] {
            let text = playbook("cancel_run", &format!("    approval: {{ approvers: [alice], quorum: {quorum} }}\n"));
            let (compiled, diagnostics) = compile(&text);
            assert!(compiled.is_none(), "{quorum}");
            assert_eq!(errors(&diagnostics), [(code, 10, 45)], "{quorum}: {diagnostics:?}");
        }
        // The same name twice is one approver.
        let text = playbook("cancel_run", "    approval: { approvers: [alice, bob, alice], quorum: 3 }\n");
        let (compiled, diagnostics) = compile(&text);
        assert!(compiled.is_none());
        assert_eq!(errors(&diagnostics), [("P065", 10, 57)], "{diagnostics:?}");
        assert!(diagnostics[0].help.as_deref().is_some_and(|h| h.contains("at most 2")), "{diagnostics:?}");
        for unknown in ["when: never", "quorm: 2"] {
            let text = playbook("cancel_run", &format!("    approval: {{ approvers: [alice], {unknown} }}\n"));
            let (compiled, diagnostics) = compile(&text);
            assert!(compiled.is_none(), "{unknown}: {diagnostics:?}");
        }
    }
}
