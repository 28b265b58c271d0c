//! Every parser salvage exposes to input — run records, playbooks, policy files, salvage.yaml —
//! fed mutated versions of real files: whatever the bytes, it returns (a value or positioned
//! diagnostics), never panics, and what it prints stays bounded. A bounded number of cases
//! runs in CI; `fuzz/` has a cargo-fuzz target per parser for longer runs (see the README).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use miette::{GraphicalReportHandler, GraphicalTheme};
use proptest::prelude::*;
use salvage::execute::SalvageConfig;
use salvage::model::Run;
use salvage::playbook;
use salvage::policy::PolicySet;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `*.ext` files of `dir` (in the repository), read once.
fn corpus(dir: &str, ext: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(root().join(dir))
        .expect("corpus dir")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == ext))
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read");
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {ext} files in {dir}");
    files
}

fn runs() -> &'static [(PathBuf, Vec<u8>)] {
    static RUNS: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    RUNS.get_or_init(|| corpus("examples/runs", "json"))
}

fn playbooks() -> &'static [(PathBuf, Vec<u8>)] {
    static PLAYBOOKS: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    PLAYBOOKS.get_or_init(|| corpus("playbooks", "yaml"))
}

fn policy_files() -> &'static [(PathBuf, Vec<u8>)] {
    static POLICIES: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    POLICIES.get_or_init(|| corpus("policies", "rhai"))
}

fn shipped_policies() -> &'static PolicySet {
    static SET: OnceLock<PolicySet> = OnceLock::new();
    SET.get_or_init(|| PolicySet::load(&root().join("policies")).expect("shipped policies"))
}

const CONFIG: &str = "store: sqlite:.salvage/salvage.db\nplaybooks: playbooks\npolicies: policies\nmode: advisory\napprovals:\n  default_approvers: [oncall-sre]\n  allow_self_approval: false\n  default_timeout: 30m\nruntimes:\n  agent: store\n  adapters:\n    hooks:\n      kind: command\n      timeout: 30s\n      actions:\n        resume_run: { command: [./resume.sh], timeout: 1m }\n";

/// One edit of a file's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    /// Cut the file at this fraction of its length.
    Truncate(f64),
    /// Overwrite a byte.
    Flip(f64, u8),
    /// Insert text that parsers treat specially.
    Insert(f64, &'static str),
    /// Remove a stretch.
    Delete(f64, usize),
    /// Repeat a stretch many times (size, depth, long lines).
    Repeat(f64, usize, usize),
    /// Turn the line breaks into another kind.
    LineBreaks(&'static str),
}

const INSERTS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    "'",
    ":",
    ",",
    "\n",
    "\r",
    "\r\n",
    "\t",
    "\0",
    "null",
    "\"oops\"",
    "-1",
    "1e999",
    "18446744073709551615",
    "3650000d",
    "18446744073709551615ms",
    "&a [*a]",
    "*a",
    "<<: *x",
    "!!binary",
    "---\n",
    "é",
    "\u{202e}",
    "\u{feff}",
    "#",
    "fn ",
    "eval(\"1\")",
    "loop {}",
    "\"\"",
    "[\"\", \" \"]",
    "{{{{{{{{",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = 0.0..1.0f64;
    prop_oneof![
        at.clone().prop_map(Mutation::Truncate),
        (at.clone(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip(at, byte)),
        (at.clone(), proptest::sample::select(INSERTS)).prop_map(|(at, text)| Mutation::Insert(at, text)),
        (at.clone(), 1usize..200).prop_map(|(at, len)| Mutation::Delete(at, len)),
        (at, 1usize..64, 2usize..2_000).prop_map(|(at, len, times)| Mutation::Repeat(at, len, times)),
        proptest::sample::select(&["\r", "\r\n", "\n\n"][..]).prop_map(Mutation::LineBreaks),
    ]
}

fn position(bytes: &[u8], at: f64) -> usize {
    ((bytes.len() as f64) * at) as usize
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        match mutation {
            Mutation::Truncate(at) => bytes.truncate(position(&bytes, *at)),
            Mutation::Flip(at, byte) => {
                let index = position(&bytes, *at);
                if let Some(slot) = bytes.get_mut(index) {
                    *slot = *byte;
                }
            }
            Mutation::Insert(at, text) => {
                let index = position(&bytes, *at);
                bytes.splice(index..index, text.bytes());
            }
            Mutation::Delete(at, len) => {
                let start = position(&bytes, *at);
                let end = (start + len).min(bytes.len());
                bytes.drain(start..end);
            }
            Mutation::Repeat(at, len, times) => {
                let start = position(&bytes, *at);
                let end = (start + len).min(bytes.len());
                let stretch = bytes[start..end].to_vec();
                let repeated: Vec<u8> = std::iter::repeat_n(stretch, *times).flatten().collect();
                bytes.splice(start..end, repeated);
            }
            Mutation::LineBreaks(with) => {
                let text = String::from_utf8_lossy(&bytes).replace("\r\n", "\n").replace('\n', with);
                bytes = text.into_bytes();
            }
        }
    }
    bytes
}

/// Renders a diagnostic as `salvage` does and checks the output stays bounded: no line longer
/// than a window around the label, no more text than the message and a snippet need.
fn render_bounded(diagnostic: &dyn miette::Diagnostic) -> Result<(), TestCaseError> {
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor()).with_links(false);
    let out = salvage::diagnostics::render(&handler, diagnostic);
    let message_len = diagnostic.to_string().len() + diagnostic.help().map_or(0, |h| h.to_string().len());
    for line in out.lines() {
        prop_assert!(
            line.len() <= message_len + 4 * salvage::diagnostics::MAX_SNIPPET_LINE + 200,
            "a rendered line of {} bytes ({}…) for {}",
            line.len(),
            line.chars().take(200).collect::<String>(),
            diagnostic
        );
    }
    Ok(())
}

fn config() -> ProptestConfig {
    // Bounded for CI: a few seconds per parser in a debug build; `PROPTEST_CASES=N` for more.
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(96);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn run_records_parse_or_fail_with_a_located_error(
        file in 0..64usize,
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let (path, original) = &runs()[file % runs().len()];
        let bytes = apply(original.clone(), &mutations);
        match salvage::store::decode_run(&path.display().to_string(), &bytes) {
            Ok(run) => {
                // What loads saves again and loads back to the same run.
                let again = Run::from_value(run.to_value());
                prop_assert_eq!(again.as_ref().ok(), Some(&run));
            }
            Err(error) => {
                prop_assert!(error.to_string().contains(&path.display().to_string()), "{error}");
                render_bounded(&error)?;
            }
        }
    }

    #[test]
    fn playbooks_compile_or_report_positioned_diagnostics(
        file in 0..64usize,
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let (path, original) = &playbooks()[file % playbooks().len()];
        let bytes = apply(original.clone(), &mutations);
        let Ok(text) = String::from_utf8(bytes) else { return Ok(()) };
        let (compiled, diagnostics) = playbook::compile_str(path, &text, Some(shipped_policies()));
        prop_assert!(compiled.is_some() || diagnostics.iter().any(|d| d.is_error()));
        for diagnostic in &diagnostics {
            if let Some(span) = diagnostic.span {
                prop_assert!(span.end <= text.len(), "{diagnostic:?} points past the end");
            }
            render_bounded(diagnostic)?;
        }
    }

    #[test]
    fn policy_files_load_or_report_positioned_diagnostics(
        file in 0..64usize,
        mutations in proptest::collection::vec(mutation(), 1..3),
    ) {
        let (path, original) = &policy_files()[file % policy_files().len()];
        let bytes = apply(original.clone(), &mutations);
        let Ok(text) = String::from_utf8(bytes) else { return Ok(()) };
        let len = text.len();
        if let Err(error) = PolicySet::from_sources([(path.clone(), text)]) {
            prop_assert!(!error.diagnostics.is_empty());
            for diagnostic in playbook::Diagnostic::from_policy(error.diagnostics) {
                if let Some(span) = diagnostic.span {
                    prop_assert!(span.end <= len, "{diagnostic:?} points past the end");
                }
                render_bounded(&diagnostic)?;
            }
        }
    }

    #[test]
    fn salvage_yaml_parses_or_reports_positioned_problems(
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let bytes = apply(CONFIG.as_bytes().to_vec(), &mutations);
        let Ok(text) = String::from_utf8(bytes) else { return Ok(()) };
        match SalvageConfig::parse(Path::new("salvage.yaml"), &text) {
            Ok(config) => {
                prop_assert!(config.approvals.default_timeout <= salvage::limits::MAX_DURATION);
                for name in &config.approvals.default_approvers {
                    prop_assert!(salvage::limits::validate_approver_name(name).is_ok(), "{name:?}");
                }
            }
            Err(error) => {
                prop_assert!(!error.problems().is_empty());
                render_bounded(&error)?;
            }
        }
    }

    /// A label anywhere in a line of any length, with multi-byte characters around it, renders.
    #[test]
    fn labels_on_long_lines_render(
        before in 0usize..80_000,
        after in 0usize..2_000,
        wide in any::<bool>(),
        len in 0usize..300,
    ) {
        let filler = if wide { "é" } else { "x" };
        let text = format!("{}OOPS{}\n", filler.repeat(before), filler.repeat(after));
        let at = filler.len() * before;
        let len = len.min(text.len() - at);
        let error = Labelled {
            text: miette::NamedSource::new("long.txt", text),
            span: miette::SourceSpan::new(at.into(), len),
        };
        render_bounded(&error)?;
    }
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("labelled")]
struct Labelled {
    #[source_code]
    text: miette::NamedSource<String>,
    #[label("here")]
    span: miette::SourceSpan,
}
