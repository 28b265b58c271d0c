//! `salvage test`: the shipped playbook tests pass, and failing or malformed test files are
//! reported the way the docs say (exit 1 with a diff, exit 2 with file:line:column).

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `salvage` run from the crate root (where the default `tests/playbooks`, `policies` and
/// `playbooks` directories are), without colour.
fn salvage() -> Command {
    let mut command = Command::cargo_bin("salvage").expect("binary");
    command.current_dir(ROOT).env("NO_COLOR", "1").env_remove("SALVAGE_STORE");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scratch directory holding test files that point at the repository's policies, playbooks
/// and example runs by absolute path.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch { dir: tempfile::tempdir().expect("temp dir") }
    }

    fn write(&self, name: &str, body: &str) -> PathBuf {
        let header = format!("policies: {ROOT}/policies\nplaybooks: {ROOT}/playbooks\nfixture: {ROOT}/examples/runs\n");
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{header}{body}")).expect("write test file");
        path
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[test]
fn shipped_tests_pass_and_cover_every_shipped_playbook_and_both_policy_sets() {
    let output = salvage().arg("test").output().expect("run");
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{}", text(&output.stderr));
    assert!(stdout.contains("\ntest result: ok. "), "{stdout}");
    assert!(stdout.contains(" passed; 0 failed"), "{stdout}");

    let output = salvage().args(["test", "--json"]).output().expect("run");
    assert_eq!(output.status.code(), Some(0));
    let summary: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let tests = summary["tests"].as_array().expect("tests");
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["passed"].as_u64(), Some(tests.iter().filter(|t| t["result"] == "ok").count() as u64));

    // Every shipped playbook is chosen by at least one passing test of the default set.
    let passing_playbooks: Vec<&str> = tests
        .iter()
        .filter(|t| t["result"] == "ok" && t["file"].as_str().is_some_and(|f| f.contains("/default/")))
        .filter_map(|t| t["plan"]["playbook"].as_str())
        .collect();
    let mut shipped = Vec::new();
    for entry in std::fs::read_dir(Path::new(ROOT).join("playbooks")).expect("playbooks") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let source = std::fs::read_to_string(&path).expect("playbook");
            let name = source
                .lines()
                .find_map(|line| line.strip_prefix("playbook: "))
                .unwrap_or_else(|| panic!("{} names no playbook", path.display()))
                .trim()
                .to_owned();
            shipped.push(name);
        }
    }
    assert_eq!(shipped.len(), 12, "{shipped:?}");
    for name in &shipped {
        assert!(passing_playbooks.contains(&name.as_str()), "no passing test plans with playbook {name}");
    }
    // And the compat set's playbook is exercised by its own tests.
    let compat = tests.iter().filter(|t| t["result"] == "ok" && t["plan"]["playbook"] == "reference-planner").count();
    assert!(compat >= 10, "only {compat} passing compat tests");
}

#[test]
fn a_failing_expectation_exits_1_with_a_diff() {
    let scratch = Scratch::new();
    scratch.write(
        "invoice.test.yaml",
        "tests:
  - name: right
    run: aea53804-c3ca-53ed-8fc6-47ff46e44c8e
    expect:
      incident: tool_failure
  - name: wrong
    run: aea53804-c3ca-53ed-8fc6-47ff46e44c8e
    expect:
      incident: service_handoff_failure
      approvals: [branch]
      checkpoint: aea53804-c3ca-53ed-8fc6-47ff46e44c8e:checkpoint:3
",
    );
    let output = salvage().arg("test").arg(scratch.path()).output().expect("run");
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("test invoice::right ... ok\n"), "{stdout}");
    assert!(stdout.contains("test invoice::wrong ... FAILED\n"), "{stdout}");
    for line in [
        "---- invoice::wrong ----",
        "  incident\n    expected: service_handoff_failure\n    actual:   tool_failure\n",
        "  checkpoint (chosen for step branch_approved)\n    expected: aea53804-c3ca-53ed-8fc6-47ff46e44c8e:checkpoint:3\n    actual:   aea53804-c3ca-53ed-8fc6-47ff46e44c8e:checkpoint:2\n",
        "  approvals (missing: branch; unexpected: ask_operator)\n    expected: [branch]\n    actual:   [ask_operator]\n",
        "path: report (ok) → export (ok) → compare (unavailable) → check_effect (unknown) → ask_operator (approved) → branch_approved (ok) → resume_approved (ok) → settle_approved (completed) → resolved",
        "\ntest result: FAILED. 1 passed; 1 failed\n",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }

    let output = salvage().arg("test").arg(scratch.path()).arg("--json").output().expect("run");
    assert_eq!(output.status.code(), Some(1));
    let summary: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!((summary["passed"].as_u64(), summary["failed"].as_u64()), (Some(1), Some(1)));
    let wrong = &summary["tests"][1];
    assert_eq!(wrong["id"], "invoice::wrong");
    assert_eq!(wrong["result"], "failed");
    let fields: Vec<&str> =
        wrong["mismatches"].as_array().unwrap().iter().map(|m| m["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["incident", "checkpoint", "approvals"]);
    assert_eq!(wrong["mismatches"][2]["actual"], serde_json::json!(["ask_operator"]));
}

#[test]
fn command_line_sets_override_the_files_and_both_sets_are_testable() {
    // The compat tests expect the reference's plans; run with the default set they fail.
    let compat = Path::new(ROOT).join("tests/playbooks/compat");
    salvage().arg("test").arg(&compat).assert().code(0);
    let output = salvage()
        .arg("test")
        .arg(&compat)
        .args(["--policies", "policies", "--playbooks", "playbooks"])
        .output()
        .expect("run");
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("test reference-planner::tool-failure-branches-from-the-post-failure-checkpoint ... FAILED")
    );
    assert!(stdout.contains("    expected: reference-planner\n    actual:   side-effecting-tool-failed\n"), "{stdout}");
}

#[test]
fn a_known_issue_does_not_fail_until_it_is_fixed() {
    let scratch = Scratch::new();
    scratch.write(
        "known.test.yaml",
        "tests:
  - name: still-broken
    run: aea53804-c3ca-53ed-8fc6-47ff46e44c8e
    known_issue: a pretend defect
    expect:
      approvals: []
",
    );
    let output = salvage().arg("test").arg(scratch.path()).output().expect("run");
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("test known::still-broken ... known issue\n"), "{stdout}");
    assert!(stdout.contains("    known::still-broken (approvals): a pretend defect\n"), "{stdout}");
    assert!(stdout.contains("test result: ok. 0 passed; 0 failed; 1 known issue\n"), "{stdout}");

    scratch.write(
        "known.test.yaml",
        "tests:
  - name: fixed-meanwhile
    run: aea53804-c3ca-53ed-8fc6-47ff46e44c8e
    known_issue: a pretend defect
    expect:
      approvals: [ask_operator]
",
    );
    let output = salvage().arg("test").arg(scratch.path()).output().expect("run");
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("the known issue is fixed, remove `known_issue`"), "{stdout}");
}

#[test]
fn malformed_test_files_exit_2_with_file_line_and_column() {
    let scratch = Scratch::new();
    // The header written by `Scratch::write` takes three lines.
    let typo = scratch.write(
        "typo.test.yaml",
        "tests:
  - name: typo
    run: aea53804-c3ca-53ed-8fc6-47ff46e44c8e
    expct:
      incident: tool_failure
",
    );
    let output = salvage().arg("test").arg(scratch.path()).output().expect("run");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(output.stdout.is_empty() || !text(&output.stdout).contains("test result"), "no test runs");
    assert!(stderr.contains(&format!("{}:7:5: unknown key `expct` in a test", typo.display())), "{stderr}");
    assert!(stderr.contains("did you mean `expect`?"), "{stderr}");
    assert!(stderr.contains(&format!("{}:5:5: the test has no `expect`", typo.display())), "{stderr}");
    std::fs::remove_file(&typo).unwrap();

    let syntax = scratch.write("syntax.test.yaml", "tests:\n  - name: [unclosed\n");
    let output = salvage().arg("test").arg(&syntax).output().expect("run");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{}:5:11:", syntax.display())), "{stderr}");
    std::fs::remove_file(&syntax).unwrap();

    // Problems found only once the fixture and mocks are read are located too.
    let deep = scratch.write(
        "deep.test.yaml",
        "tests:
  - name: unknown-run
    run: no-such-run
    expect: { incident: tool_failure }
  - name: bad-mock
    run: aea53804-c3ca-53ed-8fc6-47ff46e44c8e
    mocks:
      policy: |
        fn classify(report, ctx) { \"tool_failure\" }
        let counter = 0;
    expect: { incident: tool_failure }
  - name: mock-wrong-arity
    run: aea53804-c3ca-53ed-8fc6-47ff46e44c8e
    mocks:
      policy: |
        fn classify(report) { \"tool_failure\" }
    expect: { incident: tool_failure }
",
    );
    let output = salvage().arg("test").arg(&deep).arg("--json").output().expect("run");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let errors: Value = serde_json::from_slice(&output.stdout).expect("JSON errors");
    let found: Vec<(u64, u64, String)> = errors["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (e["line"].as_u64().unwrap(), e["column"].as_u64().unwrap(), e["message"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        found,
        vec![
            (6, 10, "run `no-such-run` is not in the fixture".to_owned()),
            (13, 9, "`mocks.policy`: R004 top-level variable `counter` is not allowed in a policy file".to_owned()),
            (
                19,
                12,
                "`mocks.policy` defines `classify` with 1 parameter(s), but the policy set's `classify` takes 2"
                    .to_owned()
            ),
        ]
    );
    assert!(errors["errors"].as_array().unwrap().iter().all(|e| e["file"] == deep.display().to_string()));
}

#[test]
fn a_directory_without_test_files_is_bad_input() {
    let scratch = Scratch::new();
    std::fs::write(scratch.path().join("playbook.yaml"), "playbook: not-a-test\n").unwrap();
    let output = salvage().arg("test").arg(scratch.path()).output().expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("no test files (*.test.yaml)"), "{}", text(&output.stderr));
}
