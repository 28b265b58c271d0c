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

    salvage(dir.path())
        .args(["check", "--playbooks"])
        .arg(Path::new(REPO).join("playbooks"))
        .arg("--policies")
        .arg(&policies)
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
