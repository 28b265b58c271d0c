//! A store with an execution waiting for a person, for the API's, the inbox's and the browser's
//! tests: the shipped sets, the failed invoice run imported and recovered by `oncall-sre` up to
//! its `ask_operator` approval (oncall-sre or incident-commander may approve, unless the step
//! is given another `approval:`). Needs `scratch.rs` beside it as `mod scratch`.

#![allow(dead_code)]

use std::path::Path;
use std::process::Output;

use serde_json::Value;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");
pub const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
pub const STORE: &str = "sqlite:salvage.db";
pub const STEP: &str = "ask_operator";

pub fn salvage(dir: &Path, args: &[&str]) -> Output {
    super::scratch::salvage_in(dir, STORE, args, &[])
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A command's `--json` output (it must succeed).
pub fn cli_json(dir: &Path, args: &[&str]) -> Value {
    let out = salvage(dir, args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?} --json: {e}"))
}

/// The shipped sets and the failed invoice imported; with `approval`, the shipped playbook's
/// `ask_operator` step needs that instead of the policy's approvers.
pub fn incident(dir: &Path, approval: Option<&str>) {
    super::scratch::copy_shipped_sets(dir);
    if let Some(approval) = approval {
        let path = dir.join("playbooks/side-effecting-tool-failed.yaml");
        let shipped = std::fs::read_to_string(&path).expect("playbook");
        let approvers = "    approvers: policy.approvers\n    timeout: 30m\n";
        assert!(shipped.contains(approvers), "the shipped step changed: update this helper");
        std::fs::write(&path, shipped.replace(approvers, &format!("    approval: {approval}\n    timeout: 30m\n")))
            .expect("edit the playbook");
    }
    let run = Path::new(ROOT).join(format!("examples/runs/{FAILED_INVOICE}.json"));
    let import = salvage(dir, &["import", run.to_str().expect("utf-8")]);
    assert!(import.status.success(), "import: {}", stderr(&import));
}

/// [`incident`], then `oncall-sre` applies the plan: the id of the execution waiting at `STEP`.
pub fn waiting_execution(dir: &Path, approval: Option<&str>) -> String {
    incident(dir, approval);
    let apply = salvage(dir, &["apply", FAILED_INVOICE, "--yes", "--as", "oncall-sre"]);
    assert!(apply.status.success(), "apply: {}", stderr(&apply));
    let approvals = cli_json(dir, &["approvals", "--json"]);
    assert_eq!(approvals[0]["stepId"], STEP, "{approvals:#}");
    approvals[0]["executionId"].as_str().expect("a pending approval").to_owned()
}

/// A token for `name`, made with `salvage token add`.
pub fn token(dir: &Path, name: &str) -> String {
    let added = cli_json(dir, &["token", "add", name, "--json"]);
    added["token"].as_str().unwrap_or_else(|| panic!("a token in {added}")).to_owned()
}

/// Edits the policies on disk (a comment: the same decisions under another digest, which makes
/// a waiting approval stale) or puts them back.
pub fn edit_policies(dir: &Path, edited: bool) {
    let file = dir.join("policies/approvals.rhai");
    let text = std::fs::read_to_string(&file).expect("policy");
    let marker = "\n// edited while an approval waited\n";
    let text = if edited { format!("{text}{marker}") } else { text.replace(marker, "") };
    std::fs::write(&file, text).expect("write policy");
}
