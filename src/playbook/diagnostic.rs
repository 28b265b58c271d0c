//! Compiler diagnostics: stable codes, exact positions, rustc-style rendering through miette and
//! a flat JSON form for `salvage check --json`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{LabeledSpan, SourceCode};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::policy::PolicyDiagnostic;
use crate::policy::source::{IndexedSource, LineIndex, Span};

pub use crate::policy::Severity;

/// Every playbook diagnostic code. The code is the stable identifier (`P0xx`); the variant name
/// says what it is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    YamlSyntax,
    ParseBudget,
    WrongType,
    InvalidValue,
    UnknownField,
    MissingField,
    DuplicateKey,
    DuplicateStepId,
    InvalidIdentifier,
    UnsupportedVersion,
    NotAPlaybook,
    UnreadableFile,
    UnknownAction,
    UnknownStep,
    UnknownIncident,
    UnknownHook,
    HookArity,
    ParameterNotAllowed,
    MissingParameter,
    TargetCreatesNoRun,
    TargetMayNotHaveRun,
    GuardSyntax,
    GuardUndefinedVariable,
    OutcomeNeverProduced,
    UnhandledOutcome,
    GuardWithoutNext,
    RetryWithoutFailure,
    RetryIrreversible,
    UnreachableStep,
    CannotTerminate,
    UnboundedCycle,
    ApprovalExitsMissing,
    UngatedIrreversible,
    NeverWithoutWhy,
    DuplicatePlaybookName,
    AmbiguousMatch,
    NobodyMayApprove,
    RuntimeLacksAction,
    UnknownChannel,
    QuorumTooLarge,
    MissingStepDescription,
    MissingPlaybookDescription,
    UnusedNext,
    ApprovalOnReadOnly,
    WhyWithoutNever,
    ApproversWithoutApproval,
}

/// One row of the code table: code, severity, one-line title, long explanation.
#[derive(Debug, Clone, Copy)]
pub struct CodeInfo {
    pub code: Code,
    pub id: &'static str,
    pub severity: Severity,
    pub title: &'static str,
    pub explanation: &'static str,
}

macro_rules! code_table {
    ($( $variant:ident = $id:literal, $severity:ident, $title:literal, $explanation:literal; )*) => {
        /// The code table, in code order: `salvage explain`, the docs and the JSON output read it.
        pub const CODES: &[CodeInfo] = &[
            $( CodeInfo { code: Code::$variant, id: $id, severity: Severity::$severity, title: $title, explanation: $explanation }, )*
        ];

        impl Code {
            /// The stable `P0xx` identifier.
            pub fn as_str(self) -> &'static str {
                match self { $( Code::$variant => $id, )* }
            }

            pub fn severity(self) -> Severity {
                match self { $( Code::$variant => Severity::$severity, )* }
            }

            pub fn title(self) -> &'static str {
                match self { $( Code::$variant => $title, )* }
            }
        }
    };
}

code_table! {
    YamlSyntax = "P001", Error, "YAML syntax error",
"The file is not valid YAML, so nothing else in it can be checked. The label points where the parser \
gave up; the mistake is often just before (an unclosed `[`/`{`, a tab used for indentation, a `:` \
inside an unquoted value). Quote values that contain `: ` or start with a special character, e.g. \
`when: 'report.status == \"failed\"'`.";

    ParseBudget = "P002", Error, "the YAML exceeds a parse budget",
"Playbooks are parsed under budgets so that a hostile or broken file cannot exhaust memory or time: \
at most 2 MiB, 32 levels of nesting, 1,000 anchors and aliases, and a bounded amount of alias expansion \
(an \"alias bomb\" such as `a: &a [x, x]`, `b: &b [*a, *a]`, ... is refused). A real playbook is a few \
KiB; split a generated one or remove the repeated aliases.";

    WrongType = "P003", Error, "a value has the wrong type",
"A field holds a value of the wrong kind, e.g. a list where a string is expected, or a string where a \
number is expected (`max_visits: three`). The message says what was expected and what was found.";

    InvalidValue = "P004", Error, "a value is not valid for its field",
"The value has the right type but not an accepted form: a duration that is not `<number><unit>` \
(`timeout: soon`; units are ms, s, m, h, d, e.g. `30m`, `1h30m`), a priority other than \
high/medium/low, an approval that is not `always`, `never` or `policy.NAME`, a number out of range, \
a duration longer than the maximum of 366d (`timeout: 3650000d`), or a hook reference without the \
`policy.` prefix.";

    UnknownField = "P005", Error, "unknown field",
"The field is not part of the playbook language at this place (often a typo: `nxt:` for `next:`). \
The help suggests the closest known field. The JSON Schema (`salvage schema`) lists every field; with \
`# yaml-language-server: $schema=./playbook.schema.json` at the top of the file, editors complete \
and check fields as you type.";

    MissingField = "P006", Error, "a required field is missing",
"A playbook needs `playbook`, `version`, `match` (with `incident`), `start`, `steps` and `ends`; a step \
needs `action`; an end needs `outcome`; `retry` needs `max_attempts`.";

    DuplicateKey = "P007", Error, "a key appears twice in the same mapping",
"YAML mappings cannot repeat a key; most parsers silently keep one of the values, which hides \
mistakes. Remove or rename one of them.";

    DuplicateStepId = "P008", Error, "duplicate step or end id",
"Step ids and end ids share one namespace: every `steps:` and `ends:` key must be different, \
because `next`, `on` and `start` refer to them by name.";

    InvalidIdentifier = "P009", Error, "invalid name",
"Playbook names, step ids and end ids must start with a letter and contain only ASCII letters, digits, \
`_` and `-` (at most 64 characters), so they can be used on the command line, in graphs and in plans. \
`skip` and `exhausted` are reserved transition names.";

    UnsupportedVersion = "P010", Error, "unsupported playbook language version",
"This salvage understands version 1 of the playbook language (`version: 1`).";

    NotAPlaybook = "P011", Error, "the file is not a playbook",
"A playbook file holds one YAML mapping with the fields `playbook`, `version`, `match`, `start`, \
`steps` and `ends`. An empty file, a list or a plain value at the top level is not a playbook.";

    UnreadableFile = "P012", Error, "the file cannot be read",
"The playbook file or directory could not be read (missing, permission denied or not UTF-8).";

    UnknownAction = "P020", Error, "unknown action",
"`action:` must name an action of the catalog (`salvage schema` or the action table in the docs lists \
them, with their outcomes and effect classes). The help suggests the closest name.";

    UnknownStep = "P021", Error, "reference to an unknown step or end",
"`start`, `next`, the values of `on` and `target` must be the id of a step (a key of `steps`) or, for \
exits, of an end (a key of `ends`). The help suggests the closest id.";

    UnknownIncident = "P022", Error, "unknown incident kind",
"`match.incident` takes incident kinds salvage knows (the values the `classify` policy hook may return) \
or `any`. Besides the built-in kinds (listed in the JSON Schema), a kind of your own is known when the \
policy set's `classify` returns it as a string literal (`return \"rate_limited\";` or \
`#{ kind: \"rate_limited\", reason: ... }`) or a policy file declares it \
(`const INCIDENT_KINDS = [\"rate_limited\"];`); without `--policies` only the built-in kinds are known. \
The help suggests the closest kind.";

    UnknownHook = "P023", Error, "the policy has no such hook",
"A `policy.NAME` reference must name a function defined in one of the policy files given with \
`--policies` (all `.rhai` files of that directory). The help suggests the closest function name. \
Without `--policies`, hook names are not checked.";

    HookArity = "P024", Error, "the hook has the wrong number of parameters",
"Each place that calls a hook passes fixed arguments: `checkpoint:` calls NAME(ctx); `approval:` and \
`approvers:` call NAME(step, ctx). The policy defines the function with another number of parameters.";

    ParameterNotAllowed = "P026", Error, "parameter not allowed for this action",
"The field exists in the language but means nothing for this step's action (e.g. `duration:` on \
`branch_from_checkpoint`). The help lists the parameters the action accepts.";

    MissingParameter = "P027", Error, "the action needs a parameter",
"Some actions cannot run without a parameter: `request_approval` needs `timeout` (an approval that \
can wait forever can hang the recovery), `wait` needs `duration`, `notify` needs `message`.";

    TargetCreatesNoRun = "P028", Error, "`target` names a step that creates no run",
"`target: STEP` makes a step act on the run created by STEP, so STEP must be a \
`branch_from_checkpoint`, `partial_replay` or `frozen_replay` step. Without `target`, a step acts on \
the incident run.";

    TargetMayNotHaveRun = "P029", Error, "the target step may not have run",
"`target: STEP` needs the run STEP created, but some path from `start` reaches this step without \
passing STEP (or passes it only through its skip edge), so there may be no such run. Move the step \
after STEP's `ok` exit.";

    GuardSyntax = "P030", Error, "the guard is not a valid Rhai expression",
"`when:` (on a step or in `match`) is one Rhai expression over `run`, `report`, `incident` and \
`comparison` that yields a boolean, e.g. `when: 'report.failedSteps.len() > 0'`. Statements (`let`, \
`;`), `eval` and `import` are not allowed. Quote the expression in YAML when it contains `:` or `#`.";

    GuardUndefinedVariable = "P031", Error, "the guard uses an undefined variable",
"Guards see four variables: `run` (the run record), `report` (its incident report), `incident` (the \
incident kind, a string) and `comparison` (the trace comparison, or `()`). Anything else is a compile \
error rather than a silent `()` at run time.";

    OutcomeNeverProduced = "P040", Error, "the action never produces this outcome",
"Keys of `on:` must be outcomes the step's action can produce (see the action table), `exhausted` on a \
step with `max_visits`, and nothing else; an exit for an impossible outcome is dead and usually a \
typo or a misunderstanding of the action. `skip` is not an outcome: a false `when` guard follows `next`.";

    UnhandledOutcome = "P042", Error, "an outcome has no exit",
"Every outcome the action can produce needs somewhere to go, either an `on:` entry or `next:` (which \
takes every outcome `on:` does not list); otherwise the recovery would stop in the middle. A step \
with `max_visits` also needs an exit for `exhausted`.";

    GuardWithoutNext = "P043", Error, "a guarded step has no `next`",
"When a step's `when` guard is false the step is skipped and the recovery continues at `next`. A \
guarded step therefore needs `next`, even when `on:` lists every outcome.";

    RetryWithoutFailure = "P044", Error, "`retry` on an action that cannot fail",
"`retry` re-runs a step whose action produced `failed`; this action has no `failed` outcome.";

    RetryIrreversible = "P045", Error, "`retry` on an irreversible action",
"Retrying an irreversible action (`resume_run`, `resume_replay`, `resolve_approval`, `cancel_run`) \
automatically would re-execute side effects without anyone deciding it. Route `failed` to a \
`request_approval` step and loop back from its `approved` exit, bounded with `max_visits`.";

    UnreachableStep = "P050", Error, "step unreachable from start",
"No path of transitions leads from `start` to this step, so it can never run: a dead step is usually \
a missing `next` or a typo in an exit. Remove it or connect it.";

    CannotTerminate = "P051", Error, "no end is reachable from this step",
"Every step must have a path to an end (`ends:`); from this step every path loops among steps \
forever, so a recovery that gets here can never finish.";

    UnboundedCycle = "P052", Error, "a cycle has no bound",
"Loops are allowed only when they are bounded: at least one step on every cycle needs `max_visits: N` \
(its `exhausted` exit leaves the loop once the step has run N times). For a single step, `retry: \
{ max_attempts, backoff }` repeats it without a loop edge.";

    ApprovalExitsMissing = "P053", Error, "an approval step lacks a `denied` or `timeout` exit",
"A `request_approval` step must say explicitly where the recovery goes when the approval is denied \
and when it times out (`on: { approved: ..., denied: ..., timeout: ... }`). Leaving them to `next` \
would treat a refusal like a yes.";

    UngatedIrreversible = "P054", Error, "an irreversible action can run without approval",
"A step whose action is irreversible (it re-executes tools or destroys state) must be dominated by an \
approval: every path from `start` to it passes the `approved` exit of a `request_approval` step or a \
step with `approval: policy.NAME` / `always` (or the step has its own `approval:`). The help shows one \
path that skips every approval. If running without approval is intended, say so with `approval: \
never` and a `why:`.";

    NeverWithoutWhy = "P055", Error, "`approval: never` without `why`",
"Opting a step out of approval must be justified in writing: add `why: <reason>` next to \
`approval: never`. The reason is shown in plans and in the graph.";

    DuplicatePlaybookName = "P060", Error, "two playbooks have the same name",
"`playbook:` names select playbooks on the command line and in plans, so they must be unique in a \
playbook directory.";

    AmbiguousMatch = "P061", Error, "two playbooks match the same incident with the same priority",
"When several playbooks match an incident, the one with the highest `priority` wins. Two playbooks \
that can match the same incident kind with equal priority would make the choice arbitrary. Give one \
of them another priority (a generic fallback usually has the lowest).";

    NobodyMayApprove = "P062", Error, "nobody may approve this step under the configuration",
"The step waits for a person (a `request_approval`, an `approval:` rule, or a `resolve_approval` no \
approval before it decided), but nobody is named: it has no `approvers:`, the policies define no \
`approvers(step, ctx)` hook, and `approvals.default_approvers` in salvage.yaml is empty (or blank). \
Such a step could never be approved; the runner would escalate it at once. Name the approvers in the \
playbook, in the policies' `approvers` hook, or in `approvals.default_approvers`.";

    RuntimeLacksAction = "P063", Warning, "a configured runtime does not carry out this step's action",
"The step's action is carried out by the runtime that owns the run (salvage.yaml `runtimes:`), and \
the runtime a route names has no endpoint or program for it: on those runs the step fails without \
effect. Add the action to that runtime's `actions:`, or route those runs to another runtime.";

    UnknownChannel = "P064", Error, "the notification channel is not defined in the configuration",
"A `notify` step's `channel:` names a channel of salvage.yaml's `notifications.channels`, either by \
its name (`agents-oncall`) or by its type and name (`pagerduty:agents-oncall`, where the type must be \
the channel's). A channel the configuration does not define would send nothing: define it under \
`notifications.channels` (type `webhook`, `slack` or `pagerduty`), or name a channel that exists, or \
leave `channel:` out to use `notifications.default`.";

    QuorumTooLarge = "P065", Error, "the quorum is larger than the number of named approvers",
"`approval: { approvers: [...], quorum: N }` grants the step when N distinct people of the list have \
approved (the person who started the execution never counts). With fewer than N names (or N names, one \
of them the requester) the approval could never be granted and the step would time out. Lower \
`quorum`, or name more approvers.";

    MissingStepDescription = "P070", Warning, "step without description",
"A `description:` says what the step is for; it is shown in plans, graphs and approval requests, \
where an on-call engineer reads it.";

    MissingPlaybookDescription = "P071", Warning, "playbook without description",
"A playbook-level `description:` says which incident it handles and why it is shaped this way.";

    UnusedNext = "P072", Warning, "`next` is never used",
"`on:` already lists every outcome of the action and the step has no `when` guard, so `next` is never \
taken. Remove it, or remove the `on:` entries it duplicates.";

    ApprovalOnReadOnly = "P073", Warning, "approval asked for a read-only action",
"The action changes nothing, so asking a person to approve it only slows the recovery down.";

    WhyWithoutNever = "P074", Warning, "`why` without `approval: never`",
"`why:` justifies `approval: never`; elsewhere it is ignored. Use `reason:` for the text shown as the \
plan step's reason, or `description:`.";

    ApproversWithoutApproval = "P075", Warning, "`approvers` on a step that never asks for approval",
"`approvers:` says who may approve, so it is used by `request_approval` steps and by steps with \
`approval: always` or `approval: policy.NAME`; here it has no effect.";
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The long explanation of a code (`P0xx` or a policy `R0xx`), for `salvage explain`.
/// What `salvage explain CODE --json` prints: the code as listed, its title and explanation.
pub fn explanation(code: &str) -> Option<serde_json::Value> {
    if let Some(info) = CODES.iter().find(|info| info.id.eq_ignore_ascii_case(code)) {
        return Some(serde_json::json!({
            "code": info.id, "severity": info.severity.as_str(), "title": info.title, "explanation": info.explanation,
        }));
    }
    crate::policy::diagnostic::code_info(code).map(|info| {
        serde_json::json!({
            "code": info.code, "severity": "error", "title": info.title, "explanation": info.explanation,
        })
    })
}

pub fn explain(code: &str) -> Option<&'static str> {
    CODES
        .iter()
        .find(|info| info.id.eq_ignore_ascii_case(code))
        .map(|info| info.explanation)
        .or_else(|| crate::policy::diagnostic::explain(code))
}

/// A secondary label in the same file ("first defined here").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelatedLabel {
    pub span: Span,
    pub label: String,
}

/// One finding of the compiler, located in a file.
///
/// Renders rustc-style through [`miette`] (source attached) and serialises to the flat JSON
/// object `{code, severity, file, line, column, message, help}`.
#[derive(Clone)]
pub struct Diagnostic {
    /// `P0xx` for playbooks, `R0xx` for policy files.
    pub code: &'static str,
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based line and character column; 0 when the finding has no position.
    pub line: u32,
    pub column: u32,
    pub span: Option<Span>,
    pub message: String,
    pub label: String,
    pub help: Option<String>,
    pub related: Vec<RelatedLabel>,
    source: Option<Arc<IndexedSource>>,
}

impl fmt::Debug for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Diagnostic")
            .field("code", &self.code)
            .field("severity", &self.severity)
            .field("file", &self.file)
            .field("line", &self.line)
            .field("column", &self.column)
            .field("message", &self.message)
            .field("help", &self.help)
            .finish()
    }
}

impl Diagnostic {
    /// A finding without position (unreadable file, set-level problem).
    pub fn unlocated(code: Code, file: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code: code.as_str(),
            severity: code.severity(),
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            span: None,
            message: message.into(),
            label: String::new(),
            help: None,
            related: Vec::new(),
            source: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The file text the spans refer to, when attached.
    pub fn source_text(&self) -> Option<&str> {
        self.source.as_ref().map(|source| source.text())
    }

    /// Renders the diagnostic like rustc, without colour (tests, logs, non-terminals).
    pub fn render_plain(&self) -> String {
        let handler = miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(100)
            .with_links(false);
        crate::diagnostics::render(&handler, self)
    }
}

impl Diagnostic {
    /// Policy diagnostics as playbook diagnostics; those of one file share one indexed source
    /// (one line index per file, not per diagnostic).
    pub fn from_policy(diagnostics: Vec<PolicyDiagnostic>) -> Vec<Diagnostic> {
        let mut sources: Vec<(Arc<str>, Arc<IndexedSource>)> = Vec::new();
        diagnostics
            .into_iter()
            .map(|policy| {
                let shared = policy.source.as_ref().map(|text| {
                    match sources.iter().find(|(known, _)| Arc::ptr_eq(known, text)) {
                        Some((_, source)) => source.clone(),
                        None => {
                            let source = Arc::new(IndexedSource::new(policy.file.display().to_string(), text));
                            sources.push((text.clone(), source.clone()));
                            source
                        }
                    }
                });
                Diagnostic { source: shared, ..Diagnostic::from(policy) }
            })
            .collect()
    }
}

impl From<PolicyDiagnostic> for Diagnostic {
    fn from(policy: PolicyDiagnostic) -> Diagnostic {
        let source =
            policy.source.as_ref().map(|text| Arc::new(IndexedSource::new(policy.file.display().to_string(), text)));
        Diagnostic {
            code: policy.code,
            severity: policy.severity,
            file: policy.file,
            line: policy.line,
            column: policy.column,
            span: policy.span,
            message: policy.message,
            label: policy.label,
            help: policy.help,
            related: Vec::new(),
            source,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

impl miette::Diagnostic for Diagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|help| Box::new(help) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.source.as_ref().map(|source| source as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.source.as_ref()?;
        let span = self.span?;
        let primary = LabeledSpan::new_primary_with_span(
            (!self.label.is_empty()).then(|| self.label.clone()),
            miette::SourceSpan::from(span),
        );
        let related = self.related.iter().map(|related| {
            LabeledSpan::new_with_span(Some(related.label.clone()), miette::SourceSpan::from(related.span))
        });
        Some(Box::new(std::iter::once(primary).chain(related)))
    }
}

impl Serialize for Diagnostic {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(7))?;
        map.serialize_entry("code", self.code)?;
        map.serialize_entry("severity", self.severity.as_str())?;
        map.serialize_entry("file", &self.file.display().to_string())?;
        map.serialize_entry("line", &self.line)?;
        map.serialize_entry("column", &self.column)?;
        map.serialize_entry("message", &self.message)?;
        map.serialize_entry("help", &self.help)?;
        map.end()
    }
}

/// Collects the diagnostics of one file; knows the text to turn spans into line and column.
pub(crate) struct Reporter {
    file: PathBuf,
    text: Arc<str>,
    index: LineIndex,
    source: Arc<IndexedSource>,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl Reporter {
    pub(crate) fn new(file: &Path, text: Arc<str>) -> Reporter {
        let index = LineIndex::new(&text);
        let source = Arc::new(IndexedSource::new(file.display().to_string(), &text).with_language("yaml"));
        Reporter { file: file.to_path_buf(), text, index, source, diagnostics: Vec::new() }
    }

    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Records a finding at `span` and returns it for `help` / related labels.
    pub(crate) fn report(
        &mut self,
        code: Code,
        span: Span,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> &mut Diagnostic {
        let (line, column) = self.index.line_column(&self.text, span.start);
        self.diagnostics.push(Diagnostic {
            code: code.as_str(),
            severity: code.severity(),
            file: self.file.clone(),
            line,
            column,
            span: Some(span),
            message: message.into(),
            label: label.into(),
            help: None,
            related: Vec::new(),
            source: Some(self.source.clone()),
        });
        let last = self.diagnostics.len() - 1;
        &mut self.diagnostics[last]
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

impl Diagnostic {
    pub(crate) fn help(&mut self, help: impl Into<String>) -> &mut Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub(crate) fn related(&mut self, span: Span, label: impl Into<String>) -> &mut Diagnostic {
        self.related.push(RelatedLabel { span, label: label.into() });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_sorted_and_explained() {
        let mut previous = "";
        for info in CODES {
            assert!(info.id > previous, "{} is out of order or duplicated", info.id);
            previous = info.id;
            assert_eq!(info.code.as_str(), info.id);
            assert!(info.explanation.len() > 60, "{} needs a real explanation", info.id);
        }
        assert!(explain("p054").is_some_and(|text| text.contains("dominated")));
        assert!(explain("R002").is_some(), "policy codes are explained too");
        assert!(explain("P999").is_none());
    }

    #[test]
    fn json_form_is_flat() {
        let mut reporter = Reporter::new(Path::new("playbooks/x.yaml"), Arc::from("a: 1\nnxt: b\n"));
        reporter
            .report(Code::UnknownField, Span::new(5, 8), "unknown field `nxt`", "unknown")
            .help("did you mean `next`?");
        let json = serde_json::to_value(&reporter.diagnostics[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"code": "P005", "severity": "error", "file": "playbooks/x.yaml", "line": 2, "column": 1,
                "message": "unknown field `nxt`", "help": "did you mean `next`?"})
        );
        let rendered = reporter.diagnostics[0].render_plain();
        assert!(
            rendered.contains("P005") && rendered.contains("nxt: b") && rendered.contains("did you mean"),
            "{rendered}"
        );
    }
}
