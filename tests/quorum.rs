//! Quorum approvals (`approval: { approvers: [...], quorum: N }`) through the real binary on the
//! embedded store: the shipped tool-failure playbook, its `ask_operator` step edited to need two
//! of alice, bob and carol. Distinct approvers count, a repeat counts once, the requester never
//! counts, one denial denies, `salvage check` refuses a quorum nobody can reach, and every
//! answer is in the audit log.

#[path = "common/scratch.rs"]
mod scratch;

use std::path::Path;
use std::process::Output;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
const PLAYBOOK: &str = "playbooks/side-effecting-tool-failed.yaml";
/// The shipped step's approvers line, replaced by the quorum form.
const SHIPPED_APPROVERS: &str = "    approvers: policy.approvers\n    timeout: 30m\n";

fn salvage(dir: &Path, args: &[&str]) -> Output {
    scratch::salvage_in(dir, "sqlite:salvage.db", args, &[])
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(output)))
}

/// The shipped sets with `ask_operator` needing `approval`, and the failed invoice imported.
fn workspace(approval: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp");
    scratch::copy_shipped_sets(dir.path());
    let path = dir.path().join(PLAYBOOK);
    let shipped = std::fs::read_to_string(&path).expect("playbook");
    assert!(shipped.contains(SHIPPED_APPROVERS), "the shipped step changed: update this test");
    let edited = shipped.replace(SHIPPED_APPROVERS, &format!("    approval: {approval}\n    timeout: 30m\n"));
    std::fs::write(&path, edited).expect("edit");
    let run = Path::new(ROOT).join(format!("examples/runs/{FAILED_INVOICE}.json"));
    let import = salvage(dir.path(), &["import", run.to_str().expect("utf-8")]);
    assert!(import.status.success(), "import: {}", stderr(&import));
    dir
}

/// alice applies the plan; the execution waits at `ask_operator`. Returns its pending approval.
fn waiting(dir: &Path) -> Value {
    let apply = salvage(dir, &["apply", FAILED_INVOICE, "--yes", "--as", "alice"]);
    assert!(apply.status.success(), "apply: {}", stderr(&apply));
    pending(dir).unwrap_or_else(|| panic!("nothing waits for approval: {}", stderr(&apply)))
}

fn pending(dir: &Path) -> Option<Value> {
    let approvals = json(&salvage(dir, &["approvals", "--json"]));
    approvals.as_array().expect("rows").first().cloned()
}

fn answer(dir: &Path, verb: &str, execution: &str, actor: &str) -> Output {
    salvage(dir, &[verb, execution, "ask_operator", "--as", actor, "--json"])
}

fn audit(dir: &Path) -> Vec<Value> {
    let out = salvage(dir, &["audit", "--json"]);
    assert!(out.status.success(), "audit: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("audit --json")
}

/// `(event, actor, decision)` of the audit entries about answers.
fn answers(entries: &[Value]) -> Vec<(String, String, String)> {
    let text = |entry: &Value, key: &str| entry[key].as_str().unwrap_or("-").to_owned();
    entries
        .iter()
        .filter(|e| matches!(e["event"].as_str(), Some("approval_answered" | "answer_refused")))
        .map(|e| (text(e, "event"), text(e, "actor"), text(e, "decision")))
        .collect()
}

fn row(event: &str, actor: &str, decision: &str) -> (String, String, String) {
    (event.to_owned(), actor.to_owned(), decision.to_owned())
}

#[test]
fn two_of_three_distinct_approvers_grant_the_step_and_the_requester_never_counts() {
    let dir = workspace("{ approvers: [alice, bob, carol], quorum: 2 }");
    let asked = waiting(dir.path());
    let execution = asked["executionId"].as_str().expect("id").to_owned();
    assert_eq!(asked["quorum"], 2, "{asked}");
    assert_eq!(asked["approvedBy"], serde_json::json!([]), "{asked}");
    assert_eq!(asked["stillNeeded"], 2, "{asked}");
    assert_eq!(asked["waitingFor"], serde_json::json!(["bob", "carol"]), "alice started it: {asked}");

    // One of two: recorded, still waiting.
    let first = answer(dir.path(), "approve", &execution, "bob");
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stderr(&first).contains("approved (1 of 2); waiting for one more of carol"), "{}", stderr(&first));
    assert_eq!(json(&first)["status"], "waiting_for_approval");
    let after_one = pending(dir.path()).expect("still pending");
    assert_eq!(after_one["approvedBy"], serde_json::json!(["bob"]), "{after_one}");
    assert_eq!(after_one["stillNeeded"], 1, "{after_one}");
    let table = salvage(dir.path(), &["approvals"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("alice, bob, carol (approved (1 of 2); waiting for one more of carol)"), "{table}");

    // The same person again counts once; resuming reads the journal and still counts one.
    let again = answer(dir.path(), "approve", &execution, "bob");
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("already answered the same way by bob"), "{}", stderr(&again));
    let resumed = salvage(dir.path(), &["resume", &execution, "--json"]);
    assert_eq!(json(&resumed)["status"], "waiting_for_approval", "{}", stderr(&resumed));
    assert_eq!(pending(dir.path()).expect("still pending")["approvedBy"], serde_json::json!(["bob"]));

    // The requester is refused (and recorded as refused).
    let own = answer(dir.path(), "approve", &execution, "alice");
    assert_eq!(own.status.code(), Some(2), "{}", stderr(&own));
    assert!(stderr(&own).contains("alice started execution"), "{}", stderr(&own));

    // A second distinct approver completes the quorum: the execution goes on past the step.
    let second = answer(dir.path(), "approve", &execution, "carol");
    assert!(second.status.success(), "{}", stderr(&second));
    let report = json(&second);
    assert_ne!(report["status"], "waiting_for_approval", "{report}");
    assert!(
        report["steps"].as_array().expect("steps").iter().any(|s| s["stepId"] == "branch_approved"),
        "the approved branch ran: {report}"
    );
    assert!(pending(dir.path()).is_none(), "nothing waits any more");

    assert_eq!(
        answers(&audit(dir.path())),
        [
            row("approval_answered", "bob", "approved"),
            row("answer_refused", "alice", "approved"),
            row("approval_answered", "carol", "approved"),
        ]
    );
}

#[test]
fn one_denial_by_an_approver_denies_a_quorum_step() {
    let dir = workspace("{ approvers: [alice, bob, carol], quorum: 2 }");
    let execution = waiting(dir.path())["executionId"].as_str().expect("id").to_owned();
    let approved = answer(dir.path(), "approve", &execution, "bob");
    assert!(approved.status.success(), "{}", stderr(&approved));
    let denied = answer(dir.path(), "deny", &execution, "carol");
    assert!(denied.status.success(), "{}", stderr(&denied));
    assert_eq!(json(&denied)["status"], "abandoned", "the `denied` exit leads to `abandoned`");
    let late = answer(dir.path(), "approve", &execution, "alice");
    assert_eq!(late.status.code(), Some(2), "{}", stderr(&late));
    let entries = audit(dir.path());
    assert_eq!(
        answers(&entries),
        [row("approval_answered", "bob", "approved"), row("approval_answered", "carol", "denied")]
    );
    let denial = entries.iter().find(|e| e["decision"] == "denied").expect("the denial");
    assert_eq!(denial["origin"], "cli", "{denial}");
    assert_eq!(denial["executionId"], execution.as_str(), "{denial}");
    assert!(denial["at"].as_str().is_some_and(|at| at.ends_with('Z')), "{denial}");
    let requested = entries.iter().find(|e| e["event"] == "approval_requested").expect("the request");
    assert_eq!(requested["quorum"], 2, "the audit log says how many must approve: {requested}");
}

#[test]
fn check_refuses_a_quorum_larger_than_the_named_approvers() {
    let approval = "{ approvers: [alice, bob, carol], quorum: 4 }";
    let dir = workspace(approval);
    let checked = salvage(dir.path(), &["check", "--json"]);
    assert_eq!(checked.status.code(), Some(1), "{}", stderr(&checked));
    let diagnostics = json(&checked);
    let refused: Vec<&Value> =
        diagnostics.as_array().expect("array").iter().filter(|d| d["severity"] == "error").collect();
    assert_eq!(refused.len(), 1, "{diagnostics:#}");
    let text = std::fs::read_to_string(dir.path().join(PLAYBOOK)).expect("playbook");
    let line_index = text.lines().position(|l| l.contains("quorum: 4")).expect("the line");
    let column = text.lines().nth(line_index).and_then(|l| l.find("4 }")).expect("the value") + 1;
    let found = refused[0];
    assert_eq!(found["code"], "P065", "{found}");
    assert_eq!((found["line"].as_u64(), found["column"].as_u64()), (Some(line_index as u64 + 1), Some(column as u64)));
    assert!(found["file"].as_str().is_some_and(|f| f.ends_with("side-effecting-tool-failed.yaml")), "{found}");
    assert!(found["help"].as_str().is_some_and(|h| h.contains("at most 3")), "{found}");

    // The same step with both forms of approvers is refused too, at the second.
    let twice = workspace("{ approvers: [alice, bob], quorum: 2 }\n    approvers: [carol]");
    let checked = salvage(twice.path(), &["check", "--json"]);
    assert_eq!(checked.status.code(), Some(1), "{}", stderr(&checked));
    let diagnostics = json(&checked);
    assert!(
        diagnostics
            .as_array()
            .expect("array")
            .iter()
            .any(|d| d["code"] == "P007" && d["message"].as_str().is_some_and(|m| m.contains("approvers given twice"))),
        "{diagnostics:#}"
    );
}

#[test]
fn the_plan_carries_the_quorum_and_a_dry_run_assumes_it_granted() {
    let dir = workspace("{ approvers: [alice, bob, carol], quorum: 2 }");
    let plan = json(&salvage(dir.path(), &["plan", FAILED_INVOICE, "--json"]));
    let steps = plan["steps"].as_array().expect("steps");
    let ask = steps.iter().find(|s| s["id"] == "ask_operator").expect("the approval step is planned");
    assert_eq!(ask["quorum"], 2, "{ask}");
    let quorum = ask["explanation"].as_array().expect("explanation").iter().find(|e| e["hook"] == "quorum");
    let reason = quorum.and_then(|e| e["reason"].as_str()).unwrap_or_default();
    assert!(reason.starts_with("needs 2 of alice, bob, carol"), "{ask}");
    assert!(
        steps.iter().filter(|s| s["id"] != "ask_operator").all(|s| s.get("quorum").is_none()),
        "a quorum of one is left out"
    );
    let text = salvage(dir.path(), &["plan", FAILED_INVOICE]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("quorum: needs 2 of alice, bob, carol"),
        "{}",
        stderr(&text)
    );

    let dry = salvage(dir.path(), &["apply", FAILED_INVOICE, "--dry-run", "--json"]);
    let report = json(&dry);
    assert_ne!(report["status"], "waiting_for_approval", "{report}");
    let asked = report["steps"].as_array().expect("steps").iter().find(|s| s["stepId"] == "ask_operator");
    assert_eq!(asked.map(|s| &s["detail"]["quorum"]), Some(&Value::from(2)), "the request says its quorum: {report}");
    assert!(pending(dir.path()).is_none(), "a dry run leaves nothing waiting");
}

#[test]
fn a_requester_allowed_to_approve_alone_still_does_not_count_towards_a_quorum() {
    let dir = workspace("{ approvers: [alice, bob, carol], quorum: 2 }");
    std::fs::write(dir.path().join("salvage.yaml"), "approvals:\n  allow_self_approval: true\n").expect("config");
    let execution = waiting(dir.path())["executionId"].as_str().expect("id").to_owned();
    let own = answer(dir.path(), "approve", &execution, "alice");
    assert_eq!(own.status.code(), Some(2), "{}", stderr(&own));
    assert!(stderr(&own).contains("does not count towards its quorum of 2"), "{}", stderr(&own));
    let bob = answer(dir.path(), "approve", &execution, "bob");
    assert_eq!(json(&bob)["status"], "waiting_for_approval", "alice did not count: {}", stderr(&bob));
    assert_eq!(
        answers(&audit(dir.path())),
        [row("answer_refused", "alice", "approved"), row("approval_answered", "bob", "approved")]
    );
}

#[test]
fn an_approval_journalled_just_before_a_crash_counts_once_after_resuming() {
    let dir = workspace("{ approvers: [alice, bob, carol], quorum: 2 }");
    let execution = waiting(dir.path())["executionId"].as_str().expect("id").to_owned();
    // bob's approval reaches the journal, then the process dies before the record says so.
    let crashed = scratch::salvage_in(
        dir.path(),
        "sqlite:salvage.db",
        &["approve", &execution, "ask_operator", "--as", "bob"],
        &[("SALVAGE_TEST_CRASH_AT", "answered:ask_operator")],
    );
    assert!(!crashed.status.success(), "the crash switch aborts: {}", stderr(&crashed));
    assert_eq!(pending(dir.path()).expect("pending")["approvedBy"], serde_json::json!([]), "the record lags");

    let resumed = salvage(dir.path(), &["resume", &execution, "--json"]);
    assert_eq!(json(&resumed)["status"], "waiting_for_approval", "{}", stderr(&resumed));
    assert_eq!(
        pending(dir.path()).expect("pending")["approvedBy"],
        serde_json::json!(["bob"]),
        "rebuilt from the journal"
    );
    let again = answer(dir.path(), "approve", &execution, "bob");
    assert!(stderr(&again).contains("already answered the same way by bob"), "{}", stderr(&again));
    assert_eq!(json(&again)["status"], "waiting_for_approval", "counted once");
    let done = answer(dir.path(), "approve", &execution, "carol");
    assert_ne!(json(&done)["status"], "waiting_for_approval", "{}", stderr(&done));
}
