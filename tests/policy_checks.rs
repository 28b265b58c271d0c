//! `salvage check` and `salvage test` on policy sets: calls to undefined functions (R008) and
//! the user's own incident kinds, through the real binary.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn salvage(dir: &Path) -> Command {
    let mut command = Command::cargo_bin("salvage").expect("binary");
    command.current_dir(dir).env_remove("SALVAGE_STORE").env("NO_COLOR", "1");
    command
}

/// `salvage check --playbooks PLAYBOOKS --policies POLICIES` run in `dir`.
fn check(dir: &Path, playbooks: impl AsRef<Path>, policies: impl AsRef<Path>) -> Command {
    let mut command = salvage(dir);
    command.args(["check", "--playbooks"]).arg(playbooks.as_ref()).arg("--policies").arg(policies.as_ref());
    command
}

/// A copy of the shipped policies in `dir/policies`.
fn shipped_policies(dir: &Path) -> PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("mkdir");
    for entry in std::fs::read_dir(Path::new(REPO).join("policies")).expect("read").filter_map(Result::ok) {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), policies.join(entry.file_name())).expect("copy");
        }
    }
    policies
}

#[test]
fn check_refuses_a_policy_calling_a_function_no_file_defines() {
    let dir = tempfile::tempdir().expect("temp");
    let policies = shipped_policies(dir.path());
    let classify = std::fs::read_to_string(policies.join("classify.rhai")).expect("read");
    // The first statement of `classify` now asks a helper nobody wrote.
    let edited = classify.replacen(
        "fn classify(report, ctx) {\n",
        "fn classify(report, ctx) {\n    if is_throttled(ctx) { return \"tool_failure\"; }\n",
        1,
    );
    assert_ne!(edited, classify);
    std::fs::write(policies.join("classify.rhai"), &edited).expect("write");
    let line = edited.lines().position(|line| line.contains("is_throttled")).expect("the call") + 1;
    std::fs::write(policies.join("rate_limits.rhai"), format!("{}fn window(ctx) {{ 60 }}\n", "//\n".repeat(60)))
        .expect("write");

    let output = salvage(dir.path())
        .args(["check", "--json", "--playbooks"])
        .arg(Path::new(REPO).join("playbooks"))
        .arg("--policies")
        .arg(&policies)
        .output()
        .expect("check");
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    let diagnostics: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let r008: Vec<&serde_json::Value> =
        diagnostics.as_array().expect("array").iter().filter(|d| d["code"] == "R008").collect();
    assert_eq!(r008.len(), 1, "{diagnostics:#}");
    assert!(r008[0]["file"].as_str().is_some_and(|file| file.ends_with("classify.rhai")), "{:#}", r008[0]);
    assert_eq!((r008[0]["line"].as_u64(), r008[0]["column"].as_u64()), (Some(line as u64), Some(8)));

    check(dir.path(), Path::new(REPO).join("playbooks"), &policies)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("R008"))
        .stderr(predicate::str::contains(format!("classify.rhai:{line}:8")))
        .stderr(predicate::str::contains("`is_throttled` is not defined"));

    salvage(dir.path())
        .args(["explain", "R008"])
        .assert()
        .success()
        .stdout(predicate::str::contains("is_throttled"))
        .stdout(predicate::str::contains("salvage policy defs"));
}

/// A copy of the shipped playbooks in `dir/playbooks`, plus one for `rate_limited` incidents.
fn playbooks_with_rate_limited(dir: &Path, incident: &str) -> PathBuf {
    let playbooks = dir.join("playbooks");
    std::fs::create_dir_all(&playbooks).expect("mkdir");
    for entry in std::fs::read_dir(Path::new(REPO).join("playbooks")).expect("read").filter_map(Result::ok) {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), playbooks.join(entry.file_name())).expect("copy");
        }
    }
    std::fs::write(
        playbooks.join("rate-limited.yaml"),
        format!(
            "playbook: rate-limited
version: 1
description: A tool was throttled; wait for the window, then look again.
match:
  incident: {incident}
start: report
steps:
  report:
    action: inspect_report
    description: Record what was throttled.
    next: resolved
ends:
  resolved: {{ outcome: resolved, description: \"Nothing to re-run.\" }}
"
        ),
    )
    .expect("write");
    playbooks
}

/// The shipped policies with `classify` saying `rate_limited` for every failed tool step.
fn policies_returning_rate_limited(dir: &Path) -> PathBuf {
    let policies = shipped_policies(dir);
    let classify = policies.join("classify.rhai");
    let text = std::fs::read_to_string(&classify).expect("read");
    let edited = text.replacen(
        "fn classify(report, ctx) {\n",
        "fn classify(report, ctx) {\n    if report.status == \"failed\" && ctx.failed_steps_of_type(\"tool\").len() > 0 {\n        \
         return #{ kind: \"rate_limited\", reason: \"the tool was throttled\" };\n    }\n",
        1,
    );
    assert_ne!(edited, text);
    std::fs::write(&classify, edited).expect("write");
    policies
}

#[test]
fn a_playbook_may_match_a_kind_classify_returns_and_a_typo_of_it_is_p022() {
    let dir = tempfile::tempdir().expect("temp");
    let policies = policies_returning_rate_limited(dir.path());
    let playbooks = playbooks_with_rate_limited(dir.path(), "rate_limited");
    check(dir.path(), &playbooks, &policies).assert().success().stderr(predicate::str::contains("0 error(s)"));

    let typo = tempfile::tempdir().expect("temp");
    let playbooks = playbooks_with_rate_limited(typo.path(), "rate_limted");
    check(dir.path(), &playbooks, &policies)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("P022"))
        .stderr(predicate::str::contains("unknown incident kind `rate_limted`"))
        .stderr(predicate::str::contains("did you mean `rate_limited`?"));

    // A kind declared in the set is known as well.
    let declared = tempfile::tempdir().expect("temp");
    let shipped = shipped_policies(declared.path());
    let playbooks = playbooks_with_rate_limited(declared.path(), "rate_limited");
    check(declared.path(), &playbooks, &shipped).assert().code(1).stderr(predicate::str::contains("P022"));
    std::fs::write(shipped.join("kinds.rhai"), "const INCIDENT_KINDS = [\"rate_limited\"];\n").expect("write");
    check(declared.path(), &playbooks, &shipped).assert().success();
}

#[test]
fn salvage_test_expects_a_kind_of_the_policies_own() {
    let dir = tempfile::tempdir().expect("temp");
    let policies = policies_returning_rate_limited(dir.path());
    let playbooks = playbooks_with_rate_limited(dir.path(), "rate_limited");
    let header = format!(
        "policies: {}\nplaybooks: {}\nfixture: {REPO}/examples/runs\n",
        policies.display(),
        playbooks.display()
    );
    let tests = dir.path().join("tests");
    std::fs::create_dir(&tests).expect("mkdir");
    std::fs::write(
        tests.join("throttled.test.yaml"),
        format!(
            "{header}tests:\n  - name: throttled\n    run: aea53804-c3ca-53ed-8fc6-47ff46e44c8e\n    expect:\n      \
             incident: rate_limited\n      playbook: rate-limited\n"
        ),
    )
    .expect("write");
    salvage(dir.path())
        .arg("test")
        .arg(&tests)
        .assert()
        .success()
        .stdout(predicate::str::contains("test throttled::throttled ... ok"));

    std::fs::write(
        tests.join("throttled.test.yaml"),
        format!(
            "{header}tests:\n  - name: throttled\n    run: aea53804-c3ca-53ed-8fc6-47ff46e44c8e\n    expect:\n      \
             incident: rate_limted\n"
        ),
    )
    .expect("write");
    salvage(dir.path())
        .arg("test")
        .arg(&tests)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`rate_limted` is not an incident kind the policies can return"))
        .stderr(predicate::str::contains("did you mean `rate_limited`?"))
        .stderr(predicate::str::contains("throttled.test.yaml:8:17"));
}
