//! Approvals that can be given: the configuration `salvage init` writes names an approver; the
//! plan, its dry run and the execution ask a person as often as each other; `salvage check`
//! refuses an approval step nobody could answer. And a resume the `store` runtime only records
//! is never claimed resolved.

#[path = "common/scratch.rs"]
mod scratch;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const WAITING_REFUND: &str = "6642c01a-890f-53f5-85d9-81f26aaed645";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn salvage(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_salvage"))
        .args(args)
        .current_dir(dir)
        .env_remove("SALVAGE_STORE")
        .env_remove("SALVAGE_ACTOR")
        .env("USER", "alice")
        .env("NO_COLOR", "1")
        .output()
        .expect("salvage")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A directory set up as a new user would: `salvage init`, the shipped playbooks and policies.
fn initialised() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp");
    scratch::copy_shipped_sets(dir.path());
    assert!(salvage(dir.path(), &["init"]).status.success());
    assert!(salvage(dir.path(), &["import", repo("examples/runs").to_str().expect("utf-8")]).status.success());
    dir
}

#[test]
fn plan_dry_run_and_execution_ask_a_person_as_often_with_the_init_configuration() {
    let dir = initialised();
    let check = salvage(dir.path(), &["check"]);
    assert!(check.status.success(), "{}", text(&check.stderr));
    let plan: Value =
        serde_json::from_slice(&salvage(dir.path(), &["plan", WAITING_REFUND, "--json"]).stdout).expect("plan");
    let planned = plan["steps"].as_array().expect("steps").iter().filter(|s| s["asksApproval"] == true).count();
    assert_eq!(planned, 1, "the request_approval step; the resolve carries its decision");
    let dry = salvage(dir.path(), &["apply", WAITING_REFUND, "--dry-run"]);
    let dry_text = text(&dry.stdout);
    assert_eq!(dry_text.matches("would wait for approval by").count(), 1, "{dry_text}");
    assert!(!dry_text.contains("approval by :"), "a dry run never waits for nobody: {dry_text}");
    let started = salvage(dir.path(), &["apply", WAITING_REFUND, "--yes", "--as", "bob", "--json"]);
    let started: Value = serde_json::from_slice(&started.stdout).expect("json");
    let execution = started["executionId"].as_str().expect("id").to_owned();
    let answered = salvage(dir.path(), &["approve", &execution, "decide", "--as", "oncall-sre", "--json"]);
    assert!(answered.status.success(), "{}", text(&answered.stderr));
    let answered: Value = serde_json::from_slice(&answered.stdout).expect("json");
    let asked_again =
        answered["steps"].as_array().expect("steps").iter().filter(|s| s["outcome"] == "waiting_for_approval").count();
    assert_eq!(asked_again, 0, "no second approval: {answered}");
    // The store runtime only records the decision for the runtime that owns the run: the run
    // still waits where it was, so `await_run` goes on waiting (parked), never claiming it
    // resolved.
    assert_eq!(answered["status"], "waiting", "{answered}");
}

#[test]
fn check_refuses_an_approval_step_nobody_may_answer() {
    let dir = tempfile::tempdir().expect("temp");
    std::fs::create_dir(dir.path().join("playbooks")).expect("mkdir");
    std::fs::create_dir(dir.path().join("policies")).expect("mkdir");
    std::fs::write(dir.path().join("policies/classify.rhai"), "fn classify(report, ctx) { \"tool_failure\" }\n")
        .expect("policy");
    std::fs::write(
        dir.path().join("playbooks/ask.yaml"),
        "playbook: ask\nversion: 1\ndescription: Asks a person.\nmatch: { incident: tool_failure }\nstart: decide\nsteps:\n  decide:\n    action: request_approval\n    description: d\n    timeout: 1h\n    on: { approved: resolved, denied: resolved, timeout: resolved }\nends:\n  resolved: { outcome: resolved }\n",
    )
    .expect("playbook");
    std::fs::write(dir.path().join("salvage.yaml"), "approvals:\n  default_approvers: []\n").expect("config");
    let refused = salvage(dir.path(), &["check"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("P062") && stderr.contains("ask.yaml:7:") && stderr.contains("nobody may approve"),
        "{stderr}"
    );
    std::fs::write(dir.path().join("salvage.yaml"), "approvals:\n  default_approvers: [oncall-sre]\n").expect("config");
    let passed = salvage(dir.path(), &["check"]);
    assert!(passed.status.success(), "{}", text(&passed.stderr));
}

#[test]
fn check_warns_when_a_configured_runtime_does_not_carry_out_a_playbook_action() {
    let dir = initialised();
    std::fs::write(
        dir.path().join("salvage.yaml"),
        "approvals:\n  default_approvers: [oncall-sre]\nruntimes:\n  agent: ops\n  workflow: store\n  adapters:\n    ops:\n      kind: http\n      base_url: http://127.0.0.1:9\n      actions:\n        resume_run: /runs/{runId}/resume\n",
    )
    .expect("config");
    let checked = salvage(dir.path(), &["check"]);
    let stderr = text(&checked.stderr);
    assert!(checked.status.success(), "warnings only: {stderr}");
    assert!(
        stderr.contains("P063") && stderr.contains("`ops` (agent runs)") && stderr.contains("branch_from_checkpoint"),
        "{stderr}"
    );
    assert!(!stderr.contains("`store` (workflow runs)"), "the store runtime carries out every action: {stderr}");
}
