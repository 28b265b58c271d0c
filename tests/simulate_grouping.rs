//! `salvage simulate` groups the incidents that changed the same way in its text output (a
//! count and a few run ids), while `--json` keeps every incident. Real binary, real SQLite
//! store: the shipped examples plus 40 copies of the failed-invoice run under other ids.

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
const COPIES: usize = 40;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir").filter_map(Result::ok) {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

fn salvage(dir: &Path) -> Command {
    let mut command = Command::cargo_bin("salvage").expect("binary");
    command.current_dir(dir).env("SALVAGE_STORE", "sqlite:runs.db").env_remove("SALVAGE_CONFIG").env("NO_COLOR", "1");
    command
}

/// The lab: the examples and the copies imported, the shipped sets as the current set and a
/// proposed policy set that names other approvers (the same change on every tool failure).
fn lab() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp");
    copy_dir(&Path::new(REPO).join("policies"), &dir.path().join("policies"));
    copy_dir(&Path::new(REPO).join("playbooks"), &dir.path().join("playbooks"));
    let runs = dir.path().join("runs");
    copy_dir(&Path::new(REPO).join("examples/runs"), &runs);
    let invoice = std::fs::read_to_string(runs.join(format!("{FAILED_INVOICE}.json"))).expect("read");
    for copy in 0..COPIES {
        let id = format!("aea53804-0000-4000-8000-{copy:012}");
        std::fs::write(runs.join(format!("{id}.json")), invoice.replace(FAILED_INVOICE, &id)).expect("write");
    }
    salvage(dir.path()).arg("import").arg(&runs).assert().success();
    let next = dir.path().join("policies.next");
    copy_dir(&dir.path().join("policies"), &next);
    let approvals = next.join("approvals.rhai");
    let text = std::fs::read_to_string(&approvals).expect("read");
    let edited = text.replace("[\"oncall-sre\", \"incident-commander\"]", "[\"oncall-sre\", \"platform-lead\"]");
    assert_ne!(edited, text);
    std::fs::write(&approvals, edited).expect("write");
    dir
}

#[test]
fn simulate_groups_identical_changes_and_json_keeps_every_incident() {
    let dir = lab();
    let output = salvage(dir.path()).args(["simulate", "--policies", "policies.next"]).output().expect("simulate");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("utf-8");
    // 42 incidents changed (the invoice, its copies, the other tool failure): one block.
    assert!(text.lines().count() < 12, "{text}");
    insta::with_settings!({ filters => vec![(r"policy digest [0-9a-f]{12}", "policy digest [digest]")] }, {
        insta::assert_snapshot!(text);
    });

    let output =
        salvage(dir.path()).args(["simulate", "--policies", "policies.next", "--json"]).output().expect("simulate");
    assert_eq!(output.status.code(), Some(0));
    let document: Value = serde_json::from_slice(&output.stdout).expect("json");
    let incidents = document["incidents"].as_array().expect("incidents");
    assert_eq!(incidents.len(), COPIES + 2, "every changed incident is listed");
    assert_eq!(document["counts"]["changed"].as_u64(), Some((COPIES + 2) as u64));
    let copies = incidents.iter().filter(|i| i["runId"].as_str().is_some_and(|id| id.contains("-0000-4000-"))).count();
    assert_eq!(copies, COPIES);
}
