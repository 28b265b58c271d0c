//! The invalid-playbook corpus: every fixture pins its diagnostics (code, line, column) in its
//! `# expect:` header, and the rendered text is snapshotted. Valid fixtures compile to the
//! expected graphs.

use std::path::{Path, PathBuf};

use salvage::playbook::{self, Diagnostic, Transition};
use salvage::policy::PolicySet;

/// Relative to the crate root (cargo's working directory for tests), so paths in rendered
/// diagnostics are the same on every machine.
fn fixtures_dir() -> PathBuf {
    PathBuf::from("tests/playbooks")
}

fn fixture_policies() -> PolicySet {
    PolicySet::load(&fixtures_dir().join("policies")).expect("fixture policies load")
}

/// `# expect: CODE LINE:COLUMN` lines of a fixture.
fn expectations(text: &str) -> Vec<(String, u32, u32)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# expect: "))
        .map(|pin| {
            let (code, position) = pin.split_once(' ').expect("`# expect: CODE L:C`");
            let (line, column) = position.split_once(':').expect("L:C");
            (code.to_owned(), line.parse().expect("line"), column.parse().expect("column"))
        })
        .collect()
}

fn found(diagnostics: &[Diagnostic], expected: &[(String, u32, u32)]) -> Vec<(String, u32, u32)> {
    // Missing-description warnings are pinned only by the fixtures about them.
    let style = ["P070", "P071"];
    let pins_style = expected.iter().any(|(code, _, _)| style.contains(&code.as_str()));
    let mut found: Vec<(String, u32, u32)> = diagnostics
        .iter()
        .filter(|d| pins_style || !style.contains(&d.code))
        .map(|d| (d.code.to_owned(), d.line, d.column))
        .collect();
    found.sort();
    found
}

#[test]
fn invalid_fixtures_report_their_pinned_diagnostics() {
    let policies = fixture_policies();
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures_dir().join("invalid"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 40, "the corpus has {} fixtures", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let mut expected = expectations(&String::from_utf8_lossy(&bytes));
        expected.sort();
        assert!(!expected.is_empty(), "{} pins nothing", file.display());
        let (compiled, diagnostics) = playbook::compile_file(file, Some(&policies));
        let actual = found(&diagnostics, &expected);
        if actual != expected {
            failures.push(format!("{}:\n  expected {expected:?}\n  found    {actual:?}", file.display()));
        }
        let has_error = expected.iter().any(|(code, _, _)| {
            playbook::CODES
                .iter()
                .find(|info| info.id == code)
                .is_none_or(|info| info.severity == playbook::Severity::Error)
        });
        assert_eq!(compiled.is_none(), has_error, "{}: compiled iff no error", file.display());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_documented_check_has_a_fixture() {
    let mut pinned = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(fixtures_dir().join("invalid")).unwrap() {
        let text = String::from_utf8_lossy(&std::fs::read(entry.unwrap().path()).unwrap()).into_owned();
        pinned.extend(expectations(&text).into_iter().map(|(code, _, _)| code));
    }
    // Set-level codes are covered by tests/playbooks/sets/; the codes checked against
    // salvage.yaml (P062, P063) by tests/approvals_config.rs, P064 by tests/notifications.rs.
    let missing: Vec<&str> = playbook::CODES
        .iter()
        .map(|info| info.id)
        .filter(|id| !pinned.contains(*id) && !["P060", "P061", "P062", "P063", "P064"].contains(id))
        .collect();
    assert!(missing.is_empty(), "codes without a fixture: {missing:?}");
}

#[test]
fn rendered_diagnostics() {
    let policies = fixture_policies();
    insta::glob!("playbooks/invalid/*.yaml", |path| {
        let relative = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(path);
        let (_, diagnostics) = playbook::compile_file(relative, Some(&policies));
        let rendered: Vec<String> = diagnostics.iter().map(Diagnostic::render_plain).collect();
        insta::assert_snapshot!(rendered.join("\n"));
    });
}

#[test]
fn huge_documents_hit_the_size_budget() {
    let mut text = String::from("playbook: huge\nversion: 1\nsteps:\n");
    while text.len() <= playbook::yaml::MAX_FILE_BYTES {
        text.push_str("  # padding padding padding padding padding padding padding padding padding padding\n");
    }
    let (compiled, diagnostics) = playbook::compile_str(Path::new("huge.yaml"), &text, None);
    assert!(compiled.is_none());
    assert_eq!(diagnostics.iter().map(|d| d.code).collect::<Vec<_>>(), vec!["P002"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    std::fs::write(&path, &text).unwrap();
    let (_, from_file) = playbook::compile_file(&path, None);
    assert_eq!(from_file.iter().map(|d| d.code).collect::<Vec<_>>(), vec!["P002"]);
}

#[test]
fn many_nodes_hit_the_node_budget_quickly() {
    // 250,000 one-character list items: small in bytes, large in nodes.
    let text = format!("playbook: wide\nversion: 1\nsteps: [{}]\n", vec!["a"; 250_000].join(","));
    let started = std::time::Instant::now();
    let (compiled, diagnostics) = playbook::compile_str(Path::new("wide.yaml"), &text, None);
    assert!(compiled.is_none());
    assert_eq!(diagnostics.iter().map(|d| d.code).collect::<Vec<_>>(), vec!["P002"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

/// (from, transition, to) of a compiled graph, by ids.
fn edges(compiled: &playbook::CompiledPlaybook) -> Vec<(String, String, String)> {
    let graph = &compiled.graph;
    graph
        .edges()
        .map(|(from, transition, to)| {
            (graph.node(from).id().to_owned(), transition.as_str().to_owned(), graph.node(to).id().to_owned())
        })
        .collect()
}

fn compile_valid(name: &str) -> playbook::CompiledPlaybook {
    let path = fixtures_dir().join("valid").join(name);
    let (compiled, diagnostics) = playbook::compile_file(&path, Some(&fixture_policies()));
    let errors: Vec<&Diagnostic> = diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "{name}: {errors:#?}");
    compiled.unwrap_or_else(|| panic!("{name} did not compile"))
}

fn triples(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    list.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect()
}

#[test]
fn issue_example_compiles_to_its_graph() {
    let compiled = compile_valid("issue-example.yaml");
    assert_eq!(compiled.name, "side-effecting-tool-failed");
    assert_eq!(compiled.priority, 100);
    let ids: Vec<&str> = compiled.graph.nodes().map(|(_, node)| node.id()).collect();
    assert_eq!(
        ids,
        ["export_evidence", "check_effect", "ask_operator", "branch", "resume", "resolved", "abandoned", "escalated"]
    );
    assert_eq!(
        edges(&compiled),
        triples(&[
            ("export_evidence", "ok", "check_effect"),
            ("export_evidence", "failed", "check_effect"),
            ("check_effect", "none", "branch"),
            ("check_effect", "partial", "ask_operator"),
            ("check_effect", "unknown", "ask_operator"),
            ("ask_operator", "approved", "branch"),
            ("ask_operator", "denied", "abandoned"),
            ("ask_operator", "timeout", "abandoned"),
            ("branch", "ok", "resume"),
            ("branch", "failed", "escalated"),
            ("resume", "ok", "resolved"),
            ("resume", "failed", "resolved"),
        ])
    );
    let graph = &compiled.graph;
    let branch = graph.find("branch").unwrap();
    assert_eq!(graph.node(graph.follow(branch, "ok").unwrap()).id(), "resume");
    assert_eq!(graph.next(branch, Transition::Outcome("failed")).map(|n| graph.node(n).id()), Some("escalated"));
    let step = graph.step("branch").unwrap();
    assert_eq!(step.plan_action(), "branch_from_failure_checkpoint");
    assert_eq!(step.params.checkpoint.as_deref(), Some("choose_checkpoint"));
    assert_eq!(graph.step("resume").unwrap().params.target.as_deref(), Some("branch"));
    assert!(compiled.guard.is_some());
}

#[test]
fn reference_planner_chain_compiles_to_a_guarded_line() {
    let compiled = compile_valid("compat-chain.yaml");
    let graph = &compiled.graph;
    let order: Vec<&str> = graph.steps().map(|(_, step)| step.id.as_str()).collect();
    assert_eq!(order, ["resolve_approval", "resume_replay", "branch", "partial_replay", "compare",]);
    assert_eq!(
        edges(&compiled),
        triples(&[
            ("resolve_approval", "ok", "resume_replay"),
            ("resolve_approval", "failed", "resume_replay"),
            ("resolve_approval", "skip", "resume_replay"),
            ("resume_replay", "ok", "branch"),
            ("resume_replay", "failed", "branch"),
            ("resume_replay", "skip", "branch"),
            ("branch", "ok", "partial_replay"),
            ("branch", "failed", "partial_replay"),
            ("branch", "skip", "partial_replay"),
            ("partial_replay", "ok", "compare"),
            ("partial_replay", "failed", "compare"),
            ("partial_replay", "skip", "compare"),
            ("compare", "same", "done"),
            ("compare", "diverged", "done"),
            ("compare", "unavailable", "done"),
            ("compare", "skip", "done"),
        ])
    );
    let resolve = graph.step("resolve_approval").unwrap();
    assert_eq!(resolve.params.reason.as_deref(), Some("Run is blocked on approval."));
    assert_eq!(resolve.params.priority, playbook::Priority::High);
    assert!(matches!(resolve.params.approval, playbook::ApprovalRule::Never { .. }));
    let partial = graph.step("partial_replay").unwrap();
    assert_eq!(partial.params.priority, playbook::Priority::Medium, "catalog default");
    assert_eq!(graph.step("compare").unwrap().plan_action(), "compare_to_known_good");
}

#[test]
fn bounded_retry_loop_compiles() {
    let compiled = compile_valid("bounded-loop.yaml");
    let graph = &compiled.graph;
    let ask = graph.find("ask_again").unwrap();
    assert_eq!(graph.step("ask_again").unwrap().max_visits, Some(3));
    assert_eq!(graph.node(graph.next(ask, Transition::Exhausted).unwrap()).id(), "escalated");
    assert_eq!(graph.node(graph.follow(ask, "approved").unwrap()).id(), "resume");
    let export = graph.step("export").unwrap();
    assert_eq!(export.retry.map(|r| (r.max_attempts, r.backoff.as_secs())), Some((3, 10)));
}
