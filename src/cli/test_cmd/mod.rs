//! `salvage test [TESTS_DIR]`: playbooks and policies tested from recorded runs.
//!
//! Every `*.test.yaml` under TESTS_DIR (default `tests/playbooks`) names a run fixture, optional
//! mocks and the plan it expects (format: `docs/testing-policies.md`). Each test loads its
//! fixture into an in-memory store, runs the real planner, and compares the plan with the
//! expectation field by field. Output follows `cargo test`.
//!
//! Exit codes: 0 every test passed; 1 a test failed; 2 a test file (or the policies and
//! playbooks it names, or its fixture) cannot be used — then no test runs.

mod expect;
mod file;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anstyle::{AnsiColor, Style};
use serde::Serialize;

use super::plan::load_sets;
use super::playbooks::{DEFAULT_PLAYBOOKS, DEFAULT_POLICIES};
use super::{CliError, Context, Failure, import};
use crate::model::Run;
use crate::plan::{Plan, Planner};
use crate::playbook::PlaybookSet;
use crate::policy::source::{LineIndex, Span};
use crate::policy::{PolicyDiagnostic, PolicySet};
use crate::store::{Expected, MemoryStore, RunStore};
use expect::{Mismatch, compare, show};
use file::{Located, MockPolicy, Source, TEST_SUFFIXES, TestCase, TestFile, TestFileError};

/// How deep the test directory is searched (a guard against symlink loops).
const MAX_DEPTH: usize = 32;

pub struct TestRequest<'a> {
    /// A directory of test files (searched recursively) or one test file.
    pub path: &'a Path,
    pub playbooks: Option<&'a Path>,
    pub policies: Option<&'a Path>,
    pub json: bool,
}

/// A test ready to run: its run records, sets and mocks resolved.
struct Prepared {
    id: String,
    file: String,
    name: String,
    run_id: String,
    compare_to: Option<String>,
    runs: Arc<Vec<Run>>,
    policies: Arc<PolicySet>,
    playbooks: Arc<PlaybookSet>,
    tool_effects: BTreeMap<String, String>,
    expect: file::Expect,
    known_issue: Option<String>,
}

/// The result of one test, as `--json` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TestResult {
    id: String,
    file: String,
    name: String,
    run_id: String,
    /// `ok`, `failed`, or `known_issue` (the plan does not meet the expectation, as the test's
    /// `known_issue` says).
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    known_issue: Option<String>,
    mismatches: Vec<Mismatch>,
    /// Why no plan could be made.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<PlanSummary>,
}

/// What the plan was, for reading a failure.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanSummary {
    plan_id: String,
    incident: String,
    /// Why `classify` chose it.
    incident_reason: Option<String>,
    playbook: Option<String>,
    path: String,
}

impl PlanSummary {
    fn of(plan: &Plan) -> PlanSummary {
        PlanSummary {
            plan_id: plan.plan_id.clone(),
            incident: plan.incident_type.to_string(),
            incident_reason: plan.decisions.iter().find(|d| d.hook == "classify").and_then(|d| d.reason.clone()),
            playbook: plan.playbook.as_ref().map(|p| p.name.clone()),
            path: plan.path_text(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary<'a> {
    passed: usize,
    failed: usize,
    known_issues: usize,
    tests: &'a [TestResult],
}

pub async fn run(cx: &mut Context<'_>, request: TestRequest<'_>) -> Result<ExitCode, CliError> {
    let root = request.path.to_path_buf();
    let found = discover(&root)?;
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for (path, _) in &found {
        match crate::limits::read_regular_text(path, crate::limits::MAX_CONFIG_BYTES) {
            Err(error) => errors.push(whole_file_error(path, format!("cannot read the test file: {error}"))),
            Ok(text) => match file::read(path, text) {
                Ok(parsed) => files.push(parsed),
                Err(mut found) => errors.append(&mut found),
            },
        }
    }
    if !errors.is_empty() {
        return Err(bad_test_files(cx, &errors, request.json));
    }

    let mut preparer = Preparer { sets: HashMap::new(), fixtures: HashMap::new(), request: &request };
    let mut prepared = Vec::new();
    for (test_file, (_, id)) in files.iter().zip(&found) {
        for test in &test_file.tests {
            match preparer.prepare(cx, test_file, id, test) {
                Ok(ready) => prepared.push(ready),
                Err(Problem::File(mut found)) => errors.append(&mut found),
                Err(Problem::Sets(error)) => return Err(error),
            }
        }
    }
    if !errors.is_empty() {
        return Err(bad_test_files(cx, &errors, request.json));
    }

    if !request.json {
        cx.console.line(format!("\nrunning {} test{}", prepared.len(), plural(prepared.len())))?;
    }
    let mut results = Vec::new();
    for test in prepared {
        let result = run_one(test).await;
        if !request.json {
            let status = match result.result {
                "ok" => paint(AnsiColor::Green, "ok"),
                "known_issue" => paint(AnsiColor::Yellow, "known issue"),
                _ => paint(AnsiColor::Red, "FAILED"),
            };
            cx.console.line(format!("test {} ... {status}", result.id))?;
        }
        results.push(result);
    }
    let count = |result: &str| results.iter().filter(|r| r.result == result).count();
    let (passed, failed, known_issues) = (count("ok"), count("failed"), count("known_issue"));
    if request.json {
        cx.console.json(&Summary { passed, failed, known_issues, tests: &results })?;
    } else {
        print_known_issues(cx, &results)?;
        print_failures(cx, &results)?;
        let verdict = if failed == 0 { paint(AnsiColor::Green, "ok") } else { paint(AnsiColor::Red, "FAILED") };
        let known = if known_issues == 0 {
            String::new()
        } else {
            format!("; {known_issues} known issue{}", plural(known_issues))
        };
        cx.console.line(format!("\ntest result: {verdict}. {passed} passed; {failed} failed{known}\n"))?;
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { Failure::CheckFailed.into() })
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn paint(colour: AnsiColor, text: &str) -> String {
    let style = Style::new().fg_color(Some(colour.into()));
    format!("{style}{text}{style:#}")
}

/// The test files under `root` (or `root` itself when it is a file), with their test-id
/// prefixes (the path below `root` without the suffix), in path order.
fn discover(root: &Path) -> Result<Vec<(PathBuf, String)>, CliError> {
    if root.is_file() {
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(vec![(root.to_path_buf(), strip_suffix(&name).to_owned())]);
    }
    if !root.is_dir() {
        return Err(CliError::input_msg(format!(
            "{} does not exist: give a directory of *.test.yaml files or one test file",
            root.display()
        )));
    }
    let mut found = Vec::new();
    walk(root, 0, &mut found)
        .map_err(|error| CliError::input_msg(format!("cannot read {}: {error}", root.display())))?;
    found.sort();
    if found.is_empty() {
        return Err(CliError::input_msg(format!(
            "no test files (*.test.yaml) under {} (other YAML files there are not tests)",
            root.display()
        )));
    }
    Ok(found
        .into_iter()
        .map(|path| {
            let below = path.strip_prefix(root).unwrap_or(&path);
            let id = below.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            let id = strip_suffix(&id).to_owned();
            (path, id)
        })
        .collect())
}

fn walk(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, depth + 1, found)?;
        } else if is_test_file(&path) {
            found.push(path);
        }
    }
    Ok(())
}

fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|name| {
        let name = name.to_string_lossy();
        TEST_SUFFIXES.iter().any(|suffix| name.ends_with(suffix) && name.len() > suffix.len())
    })
}

fn strip_suffix(name: &str) -> &str {
    TEST_SUFFIXES.iter().find_map(|suffix| name.strip_suffix(suffix)).unwrap_or(name)
}

fn whole_file_error(path: &Path, message: String) -> TestFileError {
    Source::new(path.to_path_buf(), String::new()).error(Span::new(0, 0), message, None)
}

/// Prints every problem (stderr; also as JSON on stdout with `--json`) and returns exit 2.
fn bad_test_files(cx: &mut Context<'_>, errors: &[TestFileError], json: bool) -> CliError {
    let colour = cx.console.stderr_is_terminal() && std::env::var_os("NO_COLOR").is_none();
    for error in errors {
        cx.console.stderr_text(CliError::input(error.clone()).render(colour));
    }
    if json {
        let _ = cx.console.json(&serde_json::json!({ "errors": errors }));
    }
    CliError::input_msg(format!("{} problem{} in the test files; no test was run", errors.len(), plural(errors.len())))
}

enum Problem {
    /// Located in a test file.
    File(Vec<TestFileError>),
    /// The policies or playbooks a test names do not load (already printed).
    Sets(CliError),
}

type SetPair = (Arc<PolicySet>, Arc<PlaybookSet>);

struct Preparer<'r, 'a> {
    sets: HashMap<(PathBuf, PathBuf), SetPair>,
    fixtures: HashMap<PathBuf, Result<Arc<Vec<Run>>, String>>,
    request: &'r TestRequest<'a>,
}

impl Preparer<'_, '_> {
    fn prepare(
        &mut self,
        cx: &mut Context<'_>,
        test_file: &TestFile,
        file_id: &str,
        test: &TestCase,
    ) -> Result<Prepared, Problem> {
        let source = &test_file.source;
        let (policies, playbooks) = self.sets(cx, test_file)?;
        let runs = self.fixture_runs(source, &test.fixture)?;
        let ids: Vec<&str> = runs.iter().map(|run| run.id.as_str()).collect();
        let run_id = match &test.run {
            Some(run) if ids.contains(&run.value.as_str()) => run.value.clone(),
            Some(run) => {
                return Err(Problem::File(vec![source.error(
                    run.span,
                    format!("run `{}` is not in the fixture", run.value),
                    Some(format!("the fixture holds: {}", listing(&ids))),
                )]));
            }
            None if ids.len() == 1 => ids[0].to_owned(),
            None => {
                return Err(Problem::File(vec![source.error(
                    test.name.span,
                    format!("the fixture holds {} runs: say which one to plan with `run:`", ids.len()),
                    Some(format!("the fixture holds: {}", listing(&ids))),
                )]));
            }
        };
        if let Some(other) = &test.compare_to
            && !ids.contains(&other.value.as_str())
        {
            return Err(Problem::File(vec![source.error(
                other.span,
                format!("`compare_to` run `{}` is not in the fixture", other.value),
                Some(format!("the fixture holds: {}", listing(&ids))),
            )]));
        }
        let policies = match &test.mocks.policy {
            None => policies,
            Some(mock) => Arc::new(mocked_policies(&policies, source, &test.name.value, mock)?),
        };
        if let Some(kind) = &test.expect.custom_incident {
            let custom: Vec<&str> = policies.custom_incident_kinds().collect();
            if !custom.contains(&kind.value.as_str()) {
                let known: Vec<&str> = crate::model::IncidentKind::KNOWN
                    .iter()
                    .map(|k| k.as_str())
                    .chain(custom.iter().copied())
                    .collect();
                let help =
                    crate::playbook::suggest::did_you_mean(&kind.value, known.iter().copied()).unwrap_or_else(|| {
                        format!(
                            "the kinds are {}; a kind of your own must be one `classify` returns as a literal or one \
                         listed in `const INCIDENT_KINDS = [...]` in a policy file",
                            known.join(", ")
                        )
                    });
                return Err(Problem::File(vec![source.error(
                    kind.span,
                    format!("`{}` is not an incident kind the policies can return", kind.value),
                    Some(help),
                )]));
            }
        }
        Ok(Prepared {
            id: format!("{file_id}::{}", test.name.value),
            file: source.path.display().to_string(),
            name: test.name.value.clone(),
            run_id,
            compare_to: test.compare_to.as_ref().map(|c| c.value.clone()),
            runs,
            policies,
            playbooks,
            tool_effects: test.mocks.tool_effect.clone(),
            expect: test.expect.clone(),
            known_issue: test.known_issue.clone(),
        })
    }

    /// The sets for a file: the command line's, else the file's, else the defaults.
    fn sets(&mut self, cx: &mut Context<'_>, test_file: &TestFile) -> Result<SetPair, Problem> {
        let choose = |given: Option<&Path>, in_file: &Option<Located<PathBuf>>, default: &str| {
            given
                .map(Path::to_path_buf)
                .or_else(|| in_file.as_ref().map(|located| located.value.clone()))
                .unwrap_or_else(|| PathBuf::from(default))
        };
        let policies = choose(self.request.policies, &test_file.policies, DEFAULT_POLICIES);
        let playbooks = choose(self.request.playbooks, &test_file.playbooks, DEFAULT_PLAYBOOKS);
        let key = (policies.clone(), playbooks.clone());
        if let Some(sets) = self.sets.get(&key) {
            return Ok(sets.clone());
        }
        let loaded = load_sets(cx, Some(&playbooks), Some(&policies)).map_err(|error| {
            cx.console.error(format!(
                "test file {} plans with the policies in {} and the playbooks in {}",
                test_file.source.path.display(),
                policies.display(),
                playbooks.display()
            ));
            Problem::Sets(error)
        })?;
        self.sets.insert(key, loaded.clone());
        Ok(loaded)
    }

    /// Every run of a fixture (files, directories, traces, bundles), each path read once.
    fn fixture_runs(&mut self, source: &Source, fixture: &Located<Vec<PathBuf>>) -> Result<Arc<Vec<Run>>, Problem> {
        let mut runs: BTreeMap<String, (Run, PathBuf)> = BTreeMap::new();
        let mut errors = Vec::new();
        for path in &fixture.value {
            let loaded = self.fixtures.entry(path.clone()).or_insert_with(|| load_fixture(path).map(Arc::new)).clone();
            match loaded {
                Err(message) => errors.push(source.error(fixture.span, message, None)),
                Ok(found) => {
                    for run in found.iter() {
                        match runs.get(&run.id) {
                            Some((existing, first)) if existing != run => errors.push(source.error(
                                fixture.span,
                                format!(
                                    "run `{}` is in {} and in {} with different content",
                                    run.id,
                                    first.display(),
                                    path.display()
                                ),
                                None,
                            )),
                            Some(_) => {}
                            None => {
                                runs.insert(run.id.clone(), (run.clone(), path.clone()));
                            }
                        }
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(Problem::File(errors));
        }
        Ok(Arc::new(runs.into_values().map(|(run, _)| run).collect()))
    }
}

fn listing(ids: &[&str]) -> String {
    const SHOWN: usize = 12;
    let mut text = ids.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
    if ids.len() > SHOWN {
        text.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    text
}

/// Reads one fixture path the way `salvage import` does; the first problem, as one message.
fn load_fixture(path: &Path) -> Result<Vec<Run>, String> {
    if !path.exists() {
        return Err(format!("fixture {} does not exist", path.display()));
    }
    let mut runs = Vec::new();
    let files = import::expand(std::slice::from_ref(&path.to_path_buf()));
    if files.is_empty() {
        return Err(format!("fixture directory {} holds no run files (*.json)", path.display()));
    }
    for file in files {
        let file = file.map_err(|(shown, error)| format!("fixture {shown} cannot be read: {error}"))?;
        let limit = crate::limits::max_run_bytes().map_err(|error| error.to_string())?;
        let (found, _) = import::read_runs(&file, limit).map_err(|problems| {
            let first = problems.first().map(ToString::to_string).unwrap_or_default();
            format!("fixture {} cannot be loaded: {first}", file.display())
        })?;
        runs.extend(found);
    }
    Ok(runs)
}

/// The policy set with a test's `mocks.policy` added; errors point into the test file.
fn mocked_policies(
    policies: &PolicySet,
    source: &Source,
    test_name: &str,
    mock: &MockPolicy,
) -> Result<PolicySet, Problem> {
    let label = PathBuf::from(format!("{}[{test_name}].mocks.policy", source.path.display()));
    let mocked = policies.with_overrides(label.clone(), &mock.source).map_err(|error| {
        Problem::File(error.diagnostics.iter().map(|diagnostic| mock_error(source, mock, diagnostic)).collect())
    })?;
    let mut errors = Vec::new();
    for function in mocked.functions().iter().filter(|f| f.file == label) {
        let arities: Vec<usize> = policies.functions_named(&function.name).map(|f| f.arity()).collect();
        if !arities.is_empty() && !arities.contains(&function.arity()) {
            let (line, column) =
                definition_position(&mock.source, &function.name).unwrap_or((function.line, function.column));
            let span = mock_span(source, mock, line, column);
            errors.push(source.error(
                span,
                format!(
                    "`mocks.policy` defines `{}` with {} parameter(s), but the policy set's `{}` takes {}",
                    function.name,
                    function.arity(),
                    function.name,
                    arities.iter().map(ToString::to_string).collect::<Vec<_>>().join(" or ")
                ),
                Some("a mock replaces the function with the same name and number of parameters".into()),
            ));
        }
    }
    if errors.is_empty() { Ok(mocked) } else { Err(Problem::File(errors)) }
}

/// Line and column of the name in `fn NAME` in a Rhai source.
fn definition_position(rhai_source: &str, name: &str) -> Option<(u32, u32)> {
    let needle = format!("fn {name}");
    let offset = rhai_source
        .match_indices(&needle)
        .map(|(offset, _)| offset + 3)
        .find(|&offset| !rhai_source[offset + name.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_'))?;
    Some(LineIndex::new(rhai_source).line_column(rhai_source, offset))
}

fn mock_error(source: &Source, mock: &MockPolicy, diagnostic: &PolicyDiagnostic) -> TestFileError {
    let span = mock_span(source, mock, diagnostic.line, diagnostic.column);
    let help = diagnostic.help.clone();
    source.error(span, format!("`mocks.policy`: {} {}", diagnostic.code, diagnostic.message), help)
}

/// Where a (line, column) of the mock's Rhai source is in the test file.
fn mock_span(source: &Source, mock: &MockPolicy, line: u32, column: u32) -> Span {
    match mock.origin {
        Some((first_line, indent)) if line > 0 => {
            let offset = source.offset_of(first_line + line as usize - 1, indent + column.max(1) as usize);
            Span::new(offset, offset + 1)
        }
        _ => Span::new(mock.span.start, mock.span.start + 1),
    }
}

async fn run_one(test: Prepared) -> TestResult {
    let mut result = TestResult {
        id: test.id,
        file: test.file,
        name: test.name,
        run_id: test.run_id.clone(),
        result: "failed",
        known_issue: test.known_issue.clone(),
        mismatches: Vec::new(),
        error: None,
        plan: None,
    };
    let store = Arc::new(MemoryStore::new());
    if let Err(error) = store.save_all(&test.runs, Expected::Any).await {
        result.error = Some(format!("the fixture could not be stored: {error}"));
        return result;
    }
    let planner = Planner::new(store, test.policies, test.playbooks).with_tool_effects(test.tool_effects);
    match planner.plan(&test.run_id, test.compare_to.as_deref()).await {
        Err(error) => result.error = Some(format!("no plan could be made: {error}")),
        Ok(plan) => {
            result.mismatches = compare(&test.expect, &plan);
            result.plan = Some(PlanSummary::of(&plan));
            result.result = match (result.mismatches.is_empty(), &test.known_issue) {
                (true, None) => "ok",
                (false, Some(_)) => "known_issue",
                (false, None) => "failed",
                // The issue is fixed: the marker must go, or it would hide a regression.
                (true, Some(_)) => {
                    result.error = Some(
                        "the plan now meets the expectation: the known issue is fixed, remove `known_issue`".into(),
                    );
                    "failed"
                }
            };
        }
    }
    result
}

fn print_known_issues(cx: &mut Context<'_>, results: &[TestResult]) -> Result<(), CliError> {
    let known: Vec<&TestResult> = results.iter().filter(|r| r.result == "known_issue").collect();
    if known.is_empty() {
        return Ok(());
    }
    cx.console.line("\nknown issues:")?;
    for test in known {
        let fields: Vec<&str> = test.mismatches.iter().map(|m| m.field.as_str()).collect();
        cx.console.line(format!(
            "    {} ({}): {}",
            test.id,
            fields.join(", "),
            test.known_issue.as_deref().unwrap_or_default()
        ))?;
    }
    Ok(())
}

fn print_failures(cx: &mut Context<'_>, results: &[TestResult]) -> Result<(), CliError> {
    let failures: Vec<&TestResult> = results.iter().filter(|r| r.result == "failed").collect();
    if failures.is_empty() {
        return Ok(());
    }
    let c = &mut *cx.console;
    c.line("\nfailures:")?;
    for failure in &failures {
        c.line(format!("\n---- {} ----", failure.id))?;
        c.line(format!("file: {}", failure.file))?;
        if let Some(error) = &failure.error {
            c.line(format!("run {}: {error}", failure.run_id))?;
            continue;
        }
        if let Some(plan) = &failure.plan {
            c.line(format!(
                "run {}: {} ({}), playbook {} — {}",
                failure.run_id,
                plan.incident,
                plan.incident_reason.as_deref().unwrap_or("no reason given"),
                plan.playbook.as_deref().unwrap_or("none"),
                plan.plan_id
            ))?;
            c.line(format!("path: {}", plan.path))?;
        }
        for mismatch in &failure.mismatches {
            let note = mismatch.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
            c.line(format!("  {}{note}", mismatch.field))?;
            c.line(format!("    expected: {}", paint(AnsiColor::Green, &show(&mismatch.expected))))?;
            c.line(format!("    actual:   {}", paint(AnsiColor::Red, &show(&mismatch.actual))))?;
        }
    }
    c.line("\nfailures:")?;
    for failure in &failures {
        c.line(format!("    {}", failure.id))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_test_files_are_tests() {
        assert!(is_test_file(Path::new("tests/playbooks/default/a.test.yaml")));
        assert!(is_test_file(Path::new("b.test.yml")));
        assert!(!is_test_file(Path::new("tests/playbooks/valid/compat-chain.yaml")));
        assert!(!is_test_file(Path::new(".test.yaml")), "a suffix alone names no test");
        assert_eq!(strip_suffix("default/tool-failure.test.yaml"), "default/tool-failure");
    }

    #[test]
    fn tests_are_found_recursively_and_named_by_their_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("compat/deeper")).unwrap();
        std::fs::write(dir.path().join("b.test.yaml"), "").unwrap();
        std::fs::write(dir.path().join("compat/deeper/a.test.yml"), "").unwrap();
        std::fs::write(dir.path().join("compat/playbook.yaml"), "").unwrap();
        let ids: Vec<String> = discover(dir.path()).unwrap().into_iter().map(|(_, id)| id).collect();
        assert_eq!(ids, ["b", "compat/deeper/a"]);
        let single = discover(&dir.path().join("b.test.yaml")).unwrap();
        assert_eq!(single[0].1, "b");
        assert!(discover(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn mock_definitions_are_found_by_name() {
        let source = "// helpers\nfn classify_all(x) { 1 }\nfn classify(report) { 2 }\n";
        assert_eq!(definition_position(source, "classify"), Some((3, 4)));
        assert_eq!(definition_position(source, "classify_all"), Some((2, 4)));
        assert_eq!(definition_position(source, "approvers"), None);
    }
}
