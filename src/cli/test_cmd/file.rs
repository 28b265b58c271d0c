//! Reading `*.test.yaml` files: every problem of a file is reported at once, each with
//! file:line:column.
//!
//! ```yaml
//! policies: ../../../policies          # optional, relative to this file
//! playbooks: ../../../playbooks        # optional
//! fixture: ../../../examples/runs      # optional default for every test
//! tests:
//!   - name: failed-invoice-write
//!     run: aea53804-c3ca-53ed-8fc6-47ff46e44c8e
//!     compare_to: 08f02c15-b89c-5381-9129-2b27974351a8
//!     mocks: { tool_effect: { create_invoice: read_only } }
//!     expect: { incident: tool_failure, approvals: [] }
//! ```

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use miette::{Diagnostic, NamedSource, SourceSpan};
use serde::Serialize;

use crate::model::IncidentKind;
use crate::playbook::catalog::PlanName;
use crate::playbook::suggest::did_you_mean;
use crate::playbook::yaml::{self, Node, ParseErrorKind, Value};
use crate::playbook::{CATALOG, EndOutcome};
use crate::policy::source::{LineIndex, Span};

/// Test files end with this (the other YAML files of a tests directory are playbook fixtures).
pub const TEST_SUFFIXES: &[&str] = &[".test.yaml", ".test.yml"];

/// A problem in a test file, located precisely.
#[derive(Debug, Clone, thiserror::Error, Diagnostic, Serialize)]
#[error("{file}:{line}:{column}: {message}")]
#[diagnostic(code(salvage::test::bad_test_file))]
pub struct TestFileError {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
    #[help]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    #[source_code]
    #[serde(skip)]
    pub source_code: NamedSource<String>,
    #[label("here")]
    #[serde(skip)]
    pub span: SourceSpan,
}

/// The text of one test file, to locate errors in.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: Arc<str>,
    index: LineIndex,
}

impl Source {
    pub fn new(path: PathBuf, text: String) -> Source {
        let index = LineIndex::new(&text);
        Source { path, text: Arc::from(text), index }
    }

    pub fn line_column(&self, offset: usize) -> (u32, u32) {
        self.index.line_column(&self.text, offset)
    }

    /// Byte offset of a 1-based line and character column.
    pub fn offset_of(&self, line: usize, column: usize) -> usize {
        self.index.offset_of(&self.text, line, column)
    }

    pub fn error(&self, span: Span, message: impl Into<String>, help: Option<String>) -> TestFileError {
        let (line, column) = self.line_column(span.start);
        TestFileError {
            file: self.path.display().to_string(),
            line,
            column,
            message: message.into(),
            help,
            source_code: NamedSource::new(
                self.path.display().to_string(),
                crate::policy::source::drawable(&self.text).into_owned(),
            ),
            span: SourceSpan::new(span.start.into(), span.len()),
        }
    }
}

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub span: Span,
}

/// One test file.
#[derive(Debug, Clone)]
pub struct TestFile {
    pub source: Source,
    /// `policies:`, resolved against the file's directory.
    pub policies: Option<Located<PathBuf>>,
    pub playbooks: Option<Located<PathBuf>>,
    pub tests: Vec<TestCase>,
}

/// One test of a file.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub name: Located<String>,
    /// The fixture paths (the test's own, else the file's), resolved against the file's directory.
    pub fixture: Located<Vec<PathBuf>>,
    pub run: Option<Located<String>>,
    pub compare_to: Option<Located<String>>,
    pub mocks: Mocks,
    pub expect: Expect,
    /// The plan is known not to meet the expectation yet, and why: the test then reports
    /// "known issue" instead of failing, and fails once the plan meets it.
    pub known_issue: Option<String>,
}

/// What a test replaces for its plan.
#[derive(Debug, Clone, Default)]
pub struct Mocks {
    /// Tool name → side-effect level, winning over the run's tool metadata.
    pub tool_effect: BTreeMap<String, String>,
    /// Rhai source added to the policy set; its functions replace those of the same name and
    /// arity.
    pub policy: Option<MockPolicy>,
}

/// `mocks.policy`: the source, and where its first line is in the test file.
#[derive(Debug, Clone)]
pub struct MockPolicy {
    pub source: String,
    pub span: Span,
    /// 1-based line of the test file holding the source's first line, and the number of
    /// characters before it on each line (a literal block scalar's indentation); `None` for a
    /// quoted or plain scalar (errors then point at the scalar).
    pub origin: Option<(usize, usize)>,
}

/// Which checkpoint the plan must choose.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckpointExpectation {
    /// For the first step that starts from a checkpoint (a branch or a replay); `None`: no
    /// checkpoint.
    First(Option<String>),
    /// Per step id.
    PerStep(Vec<(Located<String>, Option<String>)>),
}

/// What the plan must be; `None` fields are not checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expect {
    pub incident: Option<String>,
    /// The expected kind when it is not a built-in one, where it was written: it must be a kind
    /// of the policy set's own, which is checked once the set is loaded.
    pub custom_incident: Option<Located<String>>,
    /// `Some(None)`: no playbook handles the incident.
    pub playbook: Option<Option<String>>,
    pub steps: Option<Vec<String>>,
    pub actions: Option<Vec<String>>,
    pub checkpoint: Option<CheckpointExpectation>,
    pub approvals: Option<Vec<String>>,
    pub approvers: Option<Vec<(String, Vec<String>)>>,
    pub recommended_action: Option<String>,
    /// `Some(None)`: no end is reached (no playbook).
    pub outcome: Option<Option<String>>,
    pub fail_closed: Option<bool>,
}

const FILE_KEYS: &[&str] = &["policies", "playbooks", "fixture", "tests"];
const TEST_KEYS: &[&str] = &["name", "fixture", "run", "compare_to", "mocks", "expect", "known_issue"];
const MOCK_KEYS: &[&str] = &["tool_effect", "policy"];
const EXPECT_KEYS: &[&str] = &[
    "incident",
    "playbook",
    "steps",
    "actions",
    "checkpoint",
    "approvals",
    "approvers",
    "recommended_action",
    "outcome",
    "fail_closed",
];

/// Every action name a plan can show (the reference's names where it has them).
pub fn plan_action_names() -> Vec<&'static str> {
    let mut names = Vec::new();
    for spec in CATALOG {
        match spec.plan_name {
            PlanName::Same => names.push(spec.name),
            PlanName::ByScope { run, workflow } => names.extend([run, workflow]),
        }
    }
    names
}

/// Reads one test file; every problem found is returned.
pub fn read(path: &Path, text: String) -> Result<TestFile, Vec<TestFileError>> {
    let source = Source::new(path.to_path_buf(), text);
    let root = match yaml::parse(&source.text) {
        Ok(root) => root,
        Err(error) => {
            let span = error.span.unwrap_or_default();
            let message = match error.kind {
                ParseErrorKind::SeveralDocuments => {
                    "a test file holds one YAML document; list several tests under `tests:`".to_owned()
                }
                _ => error.message,
            };
            return Err(vec![source.error(span, message, None)]);
        }
    };
    let mut reader = Reader { source: &source, errors: Vec::new() };
    let file = reader.file(&root);
    match file {
        Some(file) if reader.errors.is_empty() => Ok(file),
        _ => {
            let mut errors = reader.errors;
            errors.sort_by_key(|error| (error.line, error.column));
            Err(errors)
        }
    }
}

struct Reader<'a> {
    source: &'a Source,
    errors: Vec<TestFileError>,
}

impl Reader<'_> {
    fn error(&mut self, node: &Node, message: impl Into<String>) {
        self.errors.push(self.source.error(node.span, message, None));
    }

    fn error_with_help(&mut self, node: &Node, message: impl Into<String>, help: Option<String>) {
        self.errors.push(self.source.error(node.span, message, help));
    }

    /// The entries of a mapping, with unknown and duplicate keys reported.
    fn mapping<'n>(&mut self, node: &'n Node, what: &str, known: &[&str]) -> Option<Vec<(&'n str, &'n Node)>> {
        let Value::Map(entries) = &node.value else {
            self.error(node, format!("{what} must be a mapping, found {}", node.value.kind()));
            return None;
        };
        let mut seen: Vec<(&'n str, &'n Node)> = Vec::new();
        for (key, value) in entries {
            let Value::Str(name) = &key.value else {
                self.error(key, format!("keys of {what} must be strings, found {}", key.value.kind()));
                continue;
            };
            if !known.contains(&name.as_str()) {
                self.error_with_help(
                    key,
                    format!("unknown key `{name}` in {what}"),
                    Some(
                        did_you_mean(name, known.iter().copied())
                            .unwrap_or_else(|| format!("the keys of {what} are: {}", known.join(", "))),
                    ),
                );
                continue;
            }
            if seen.iter().any(|(seen, _)| seen == name) {
                self.error(key, format!("`{name}` appears twice in {what}"));
                continue;
            }
            seen.push((name.as_str(), value));
        }
        Some(seen)
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(text) if !text.trim().is_empty() => Some(text.clone()),
            Value::Str(_) => {
                self.error(node, format!("{what} must not be empty"));
                None
            }
            other => {
                self.error(node, format!("{what} must be a string, found {}", other.kind()));
                None
            }
        }
    }

    /// A string, or `null` (→ `Some(None)`).
    fn string_or_null(&mut self, node: &Node, what: &str) -> Option<Option<String>> {
        match &node.value {
            Value::Null => Some(None),
            _ => self.string(node, what).map(Some),
        }
    }

    fn strings(&mut self, node: &Node, what: &str) -> Option<Vec<String>> {
        let Value::Seq(items) = &node.value else {
            self.error(node, format!("{what} must be a list, found {}", node.value.kind()));
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            match self.string(item, &format!("an entry of {what}")) {
                Some(text) => out.push(text),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A path relative to the test file's directory.
    fn path(&mut self, node: &Node, what: &str) -> Option<PathBuf> {
        let text = self.string(node, what)?;
        Some(relative_to(&self.source.path, &text))
    }

    fn file(&mut self, root: &Node) -> Option<TestFile> {
        if root.value == Value::Null {
            self.error(root, "the test file is empty: it needs `tests:`");
            return None;
        }
        let entries = self.mapping(root, "a test file", FILE_KEYS)?;
        let get = |key: &str| entries.iter().find(|(name, _)| *name == key).map(|(_, node)| *node);
        let policies = get("policies")
            .and_then(|node| self.path(node, "`policies`").map(|value| Located { value, span: node.span }));
        let playbooks = get("playbooks")
            .and_then(|node| self.path(node, "`playbooks`").map(|value| Located { value, span: node.span }));
        let fixture = get("fixture").and_then(|node| self.fixture(node));
        let Some(tests_node) = get("tests") else {
            self.error(root, "the test file has no `tests:` list");
            return None;
        };
        let Value::Seq(items) = &tests_node.value else {
            self.error(tests_node, format!("`tests` must be a list of tests, found {}", tests_node.value.kind()));
            return None;
        };
        if items.is_empty() {
            self.error(tests_node, "`tests` is empty: a test file holds at least one test");
        }
        let mut tests: Vec<TestCase> = Vec::new();
        for item in items {
            if let Some(test) = self.test(item, fixture.as_ref()) {
                if tests.iter().any(|other| other.name.value == test.name.value) {
                    self.errors.push(self.source.error(
                        test.name.span,
                        format!("two tests of this file are named `{}`", test.name.value),
                        None,
                    ));
                    continue;
                }
                tests.push(test);
            }
        }
        Some(TestFile { source: self.source.clone(), policies, playbooks, tests })
    }

    fn fixture(&mut self, node: &Node) -> Option<Located<Vec<PathBuf>>> {
        let paths = match &node.value {
            Value::Seq(items) if items.is_empty() => {
                self.error(node, "`fixture` lists no files");
                return None;
            }
            Value::Seq(items) => {
                let mut paths = Vec::new();
                for item in items {
                    paths.push(self.path(item, "a `fixture` entry")?);
                }
                paths
            }
            _ => vec![self.path(node, "`fixture` (a file, a directory or a list of them)")?],
        };
        Some(Located { value: paths, span: node.span })
    }

    fn test(&mut self, node: &Node, file_fixture: Option<&Located<Vec<PathBuf>>>) -> Option<TestCase> {
        let entries = self.mapping(node, "a test", TEST_KEYS)?;
        let get = |key: &str| entries.iter().find(|(name, _)| *name == key).map(|(_, node)| *node);
        let name = match get("name") {
            None => {
                self.error(node, "the test has no `name`");
                None
            }
            Some(name_node) => self.string(name_node, "`name`").and_then(|name| {
                let valid = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if valid {
                    Some(Located { value: name, span: name_node.span })
                } else {
                    self.error_with_help(
                        name_node,
                        format!("test name `{name}` may use only letters, digits, `-` and `_`"),
                        Some("name tests like functions, e.g. `denied-refund-is-not-retried`".into()),
                    );
                    None
                }
            }),
        };
        let fixture = match get("fixture") {
            Some(node) => self.fixture(node),
            None if file_fixture.is_some() => file_fixture.cloned(),
            None => {
                self.error_with_help(
                    node,
                    "the test has no `fixture` (and the file sets none)",
                    Some("`fixture:` names a run JSON file, a file-store directory, a trace or bundle file, or a list of them".into()),
                );
                None
            }
        };
        let run =
            get("run").and_then(|node| self.string(node, "`run`").map(|value| Located { value, span: node.span }));
        let compare_to = get("compare_to")
            .and_then(|node| self.string(node, "`compare_to`").map(|value| Located { value, span: node.span }));
        let mocks = match get("mocks") {
            Some(node) => self.mocks(node),
            None => Some(Mocks::default()),
        };
        let expect = match get("expect") {
            Some(node) => self.expect(node),
            None => {
                self.error(node, "the test has no `expect`: it would check nothing");
                None
            }
        };
        let known_issue = match get("known_issue") {
            Some(node) => Some(
                self.string(node, "`known_issue` (why the plan does not meet the expectation yet)")?.trim().to_owned(),
            ),
            None => None,
        };
        Some(TestCase { name: name?, fixture: fixture?, run, compare_to, mocks: mocks?, expect: expect?, known_issue })
    }

    fn mocks(&mut self, node: &Node) -> Option<Mocks> {
        let entries = self.mapping(node, "`mocks`", MOCK_KEYS)?;
        let mut mocks = Mocks::default();
        let mut ok = true;
        for (key, value) in entries {
            match key {
                "tool_effect" => match self.mapping_of_strings(value, "`mocks.tool_effect`") {
                    Some(effects) => mocks.tool_effect = effects.into_iter().collect(),
                    None => ok = false,
                },
                "policy" => match self.string(value, "`mocks.policy` (Rhai source)") {
                    Some(source) => {
                        mocks.policy = Some(MockPolicy {
                            origin: block_origin(self.source, value.span, &source),
                            source,
                            span: value.span,
                        })
                    }
                    None => ok = false,
                },
                _ => {}
            }
        }
        ok.then_some(mocks)
    }

    /// A mapping of any string keys to strings.
    fn mapping_of_strings(&mut self, node: &Node, what: &str) -> Option<Vec<(String, String)>> {
        let Value::Map(entries) = &node.value else {
            self.error(node, format!("{what} must be a mapping, found {}", node.value.kind()));
            return None;
        };
        let mut out: Vec<(String, String)> = Vec::new();
        let mut ok = true;
        for (key, value) in entries {
            let (Some(key_text), Some(value_text)) =
                (self.string(key, &format!("a key of {what}")), self.string(value, &format!("a value of {what}")))
            else {
                ok = false;
                continue;
            };
            if out.iter().any(|(seen, _)| *seen == key_text) {
                self.error(key, format!("`{key_text}` appears twice in {what}"));
                ok = false;
                continue;
            }
            out.push((key_text, value_text));
        }
        ok.then_some(out)
    }

    fn expect(&mut self, node: &Node) -> Option<Expect> {
        let entries = self.mapping(node, "`expect`", EXPECT_KEYS)?;
        if entries.is_empty() {
            self.error(node, "`expect` is empty: the test would check nothing");
            return None;
        }
        let mut expect = Expect::default();
        let errors_before = self.errors.len();
        let actions = plan_action_names();
        for (key, value) in entries {
            match key {
                "incident" => {
                    if let Some(kind) = self.string(value, "`expect.incident`") {
                        if !IncidentKind::parse(&kind).is_known() {
                            expect.custom_incident = Some(Located { value: kind.clone(), span: value.span });
                        }
                        expect.incident = Some(kind);
                    }
                }
                "playbook" => expect.playbook = self.string_or_null(value, "`expect.playbook`"),
                "steps" => expect.steps = self.strings(value, "`expect.steps`"),
                "actions" => {
                    let listed = self.strings(value, "`expect.actions`");
                    if let (Some(listed), Value::Seq(items)) = (&listed, &value.value) {
                        for (name, item) in listed.iter().zip(items) {
                            if !actions.contains(&name.as_str()) {
                                self.error_with_help(
                                    item,
                                    format!("`{name}` is not an action a plan can show"),
                                    Some(
                                        did_you_mean(name, actions.iter().copied())
                                            .unwrap_or_else(|| format!("plan actions are: {}", actions.join(", "))),
                                    ),
                                );
                            }
                        }
                    }
                    expect.actions = listed;
                }
                "checkpoint" => expect.checkpoint = self.checkpoint(value),
                "approvals" => expect.approvals = self.strings(value, "`expect.approvals`"),
                "approvers" => expect.approvers = self.approvers(value),
                "recommended_action" => {
                    expect.recommended_action = self.string(value, "`expect.recommended_action`");
                    if let Some(name) = &expect.recommended_action
                        && !actions.contains(&name.as_str())
                        && name != "inspect_report"
                    {
                        self.error_with_help(
                            value,
                            format!("`{name}` is not an action a plan can show"),
                            did_you_mean(name, actions.iter().copied()),
                        );
                    }
                }
                "outcome" => {
                    expect.outcome = self.string_or_null(value, "`expect.outcome`");
                    if let Some(Some(outcome)) = &expect.outcome
                        && EndOutcome::parse(outcome).is_none()
                    {
                        let known: Vec<&str> = EndOutcome::ALL.iter().map(|o| o.as_str()).collect();
                        self.error_with_help(
                            value,
                            format!("`{outcome}` is not an end outcome"),
                            Some(format!("outcomes are: {}", known.join(", "))),
                        );
                    }
                }
                "fail_closed" => match value.value {
                    Value::Bool(flag) => expect.fail_closed = Some(flag),
                    ref other => {
                        self.error(value, format!("`expect.fail_closed` must be true or false, found {}", other.kind()))
                    }
                },
                _ => {}
            }
        }
        (self.errors.len() == errors_before).then_some(expect)
    }

    fn checkpoint(&mut self, node: &Node) -> Option<CheckpointExpectation> {
        match &node.value {
            Value::Map(entries) => {
                let mut per_step: Vec<(Located<String>, Option<String>)> = Vec::new();
                for (key, value) in entries {
                    let step = self.string(key, "a step id of `expect.checkpoint`")?;
                    if per_step.iter().any(|(seen, _)| seen.value == step) {
                        self.error(key, format!("`{step}` appears twice in `expect.checkpoint`"));
                        return None;
                    }
                    let checkpoint = self.string_or_null(value, "a checkpoint id (or null)")?;
                    per_step.push((Located { value: step, span: key.span }, checkpoint));
                }
                Some(CheckpointExpectation::PerStep(per_step))
            }
            _ => self
                .string_or_null(node, "`expect.checkpoint` (a checkpoint id, null, or step id: checkpoint id)")
                .map(CheckpointExpectation::First),
        }
    }

    fn approvers(&mut self, node: &Node) -> Option<Vec<(String, Vec<String>)>> {
        let Value::Map(entries) = &node.value else {
            self.error(node, format!("`expect.approvers` must map step ids to names, found {}", node.value.kind()));
            return None;
        };
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for (key, value) in entries {
            let step = self.string(key, "a step id of `expect.approvers`")?;
            if out.iter().any(|(seen, _)| *seen == step) {
                self.error(key, format!("`{step}` appears twice in `expect.approvers`"));
                return None;
            }
            out.push((step, self.strings(value, "the approvers of a step")?));
        }
        Some(out)
    }
}

/// Where the mock's source starts in the test file: its first line and the characters before
/// it on each line — known when the file holds the source verbatim (a literal block scalar,
/// `|`, or a plain one-line scalar), not for quoted scalars (escapes shift columns).
fn block_origin(source: &Source, span: Span, value: &str) -> Option<(usize, usize)> {
    let first_line = value.lines().next().filter(|line| !line.is_empty())?;
    let written = source.text.get(span.start..)?;
    if !written.starts_with(first_line) {
        return None;
    }
    let (line, column) = source.line_column(span.start);
    Some((line as usize, column as usize - 1))
}

/// `text` relative to the directory of `file`, with `.` and `..` folded away where possible.
pub fn relative_to(file: &Path, text: &str) -> PathBuf {
    let given = Path::new(text);
    if given.is_absolute() {
        return normalize(given);
    }
    normalize(&file.parent().unwrap_or(Path::new("")).join(given))
}

/// Folds `.` and `name/..` without touching the file system (paths stay as short as the user
/// would write them, e.g. `policies` rather than `tests/playbooks/default/../../../policies`).
pub fn normalize(path: &Path) -> PathBuf {
    let mut parts: Vec<Component<'_>> = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match parts.last() {
                Some(Component::Normal(_)) => {
                    parts.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => parts.push(component),
            },
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return PathBuf::from(".");
    }
    parts.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<(u32, u32, String)> {
        read(Path::new("t/x.test.yaml"), text.to_owned())
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.line, e.column, e.message))
            .collect()
    }

    #[test]
    fn reads_a_full_test() {
        let text = "policies: ../policies\nfixture: [runs/a.json, runs]\ntests:\n  - name: one\n    run: r1\n    compare_to: r0\n    mocks:\n      tool_effect: { send: read_only }\n      policy: |\n        fn f() { 1 }\n    expect:\n      incident: tool_failure\n      playbook: null\n      checkpoint: { branch: cp-2, replay: null }\n      approvals: [branch]\n      approvers: { branch: [sre] }\n      outcome: resolved\n      fail_closed: false\n";
        let file = read(Path::new("t/x.test.yaml"), text.to_owned()).unwrap();
        assert_eq!(file.policies.unwrap().value, PathBuf::from("policies"));
        let test = &file.tests[0];
        assert_eq!(test.fixture.value, [PathBuf::from("t/runs/a.json"), PathBuf::from("t/runs")]);
        assert_eq!(test.run.as_ref().unwrap().value, "r1");
        assert_eq!(test.mocks.tool_effect.get("send").map(String::as_str), Some("read_only"));
        let policy = test.mocks.policy.as_ref().unwrap();
        assert_eq!(policy.source, "fn f() { 1 }\n");
        assert_eq!(policy.origin, Some((10, 8)));
        assert_eq!(test.expect.playbook, Some(None));
        assert_eq!(test.expect.approvals.as_deref(), Some(&["branch".to_owned()][..]));
        match &test.expect.checkpoint {
            Some(CheckpointExpectation::PerStep(steps)) => {
                let steps: Vec<(&str, Option<&str>)> =
                    steps.iter().map(|(s, c)| (s.value.as_str(), c.as_deref())).collect();
                assert_eq!(steps, [("branch", Some("cp-2")), ("replay", None)]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_problem_is_located() {
        let text = "fixture: runs\ntests:\n  - name: a b\n    expct: {}\n  - name: ok\n    expect:\n      incident: tool_failur\n      fail_closed: nope\n      actions: [branch_from_checkpoint, resume_run]\n";
        assert_eq!(
            errors(text),
            vec![
                (3, 5, "the test has no `expect`: it would check nothing".to_owned()),
                (3, 11, "test name `a b` may use only letters, digits, `-` and `_`".to_owned()),
                (4, 5, "unknown key `expct` in a test".to_owned()),
                (8, 20, "`expect.fail_closed` must be true or false, found a string".to_owned()),
                (9, 17, "`branch_from_checkpoint` is not an action a plan can show".to_owned()),
            ]
        );
    }

    #[test]
    fn structural_problems() {
        assert_eq!(errors("# nothing\n"), vec![(1, 1, "the test file is empty: it needs `tests:`".to_owned())]);
        assert_eq!(errors("tests: []\n")[0].2, "`tests` is empty: a test file holds at least one test");
        assert_eq!(
            errors("tests:\n  - name: t\n    expect: { incident: tool_failure }\n")[0].2,
            "the test has no `fixture` (and the file sets none)"
        );
        assert_eq!(
            errors(
                "fixture: r\ntests:\n  - { name: t, expect: { incident: tool_failure } }\n  - { name: t, expect: { incident: tool_failure } }\n"
            ),
            vec![(4, 13, "two tests of this file are named `t`".to_owned())]
        );
        let syntax = errors("tests:\n  - name: [a\n");
        assert_eq!(syntax, vec![(2, 11, "unclosed bracket '['".to_owned())]);
    }

    #[test]
    fn paths_are_relative_to_the_file_and_folded() {
        assert_eq!(
            relative_to(Path::new("tests/playbooks/default/a.test.yaml"), "../../../policies"),
            PathBuf::from("policies")
        );
        assert_eq!(relative_to(Path::new("a.test.yaml"), "../x"), PathBuf::from("../x"));
        assert_eq!(relative_to(Path::new("/t/a.test.yaml"), "/abs/p"), PathBuf::from("/abs/p"));
        assert_eq!(normalize(Path::new("a/./b/../c")), PathBuf::from("a/c"));
    }
}
