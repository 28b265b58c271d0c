//! Operators answering an execution at the same time, answers that cannot be used, journals
//! that no longer fit, and errors raised before any effect — through the real binary against
//! the reference-like runtime server. Answers are one compare-and-set: the first wins, later
//! ones are told who answered (exit 2), the same answer again changes nothing (exit 0); a
//! stuck execution has a documented way out (`salvage abandon`); an error before the effect is
//! a failed step, never a question to an operator.

mod live_support;
mod runtime_server;

use std::process::Output;

use serde_json::json;

use live_support::{Live, text};
use runtime_server::{Route, ServerOptions, ToolPolicy};

/// A tool failure recovered without approvals: branch, then resume the branch.
const BRANCH_RESUME: &str = "playbook: branch-resume\nversion: 1\ndescription: Branch and resume.\n\
match: { incident: tool_failure }\npriority: 1000\nstart: branch\nsteps:\n\
\x20 branch:\n    action: branch_from_checkpoint\n    description: d\n    checkpoint: policy.choose_checkpoint\n    approval: never\n    why: operator tests\n    on: { ok: resume, failed: escalated }\n\
\x20 resume:\n    action: resume_run\n    description: d\n    target: branch\n    approval: never\n    why: operator tests\n    on: { ok: resolved, failed: escalated }\n\
ends:\n  resolved: { outcome: resolved }\n  escalated: { outcome: escalated }\n";

/// A workspace whose only playbook is `playbook`, recovering a failed invoice run.
fn workspace(playbook: &str) -> (Live, String) {
    let dir = tempfile::tempdir().expect("temp");
    let playbooks = dir.path().join("only");
    std::fs::create_dir(&playbooks).expect("mkdir");
    std::fs::write(playbooks.join("only.yaml"), playbook).expect("playbook");
    // The temp dir must outlive the workspace: keep it inside the workspace's own directory.
    let live = Live::with_playbooks(ServerOptions::new().policy("send_invoice", ToolPolicy::fail_first(1)), &playbooks);
    let kept = live.path("only-playbooks");
    std::fs::create_dir(&kept).expect("mkdir");
    std::fs::write(kept.join("only.yaml"), playbook).expect("playbook");
    let config = std::fs::read_to_string(live.path("salvage.yaml")).expect("config");
    std::fs::write(
        live.path("salvage.yaml"),
        config.replace(&playbooks.display().to_string(), &kept.display().to_string()),
    )
    .expect("config");
    let run = live.incident("send_invoice", "INV-1");
    (live, run)
}

/// An execution stopped in `needs_operator` at step `resume`: the process died after the intent.
fn needs_operator(live: &Live, run: &str) -> String {
    live.crashing("intent:resume", &["apply", run, "--yes", "--as", "alice"]);
    let id = live.execution_of(run).expect("execution")["executionId"].as_str().expect("id").to_owned();
    let asked = live.json(&["resume", &id, "--json"]);
    assert_eq!(asked["status"], "needs_operator", "{asked}");
    id
}

/// The kinds of an execution's journal entries, read through the library (the file store keeps
/// journals under `runs/.salvage/`).
fn journal_kinds(live: &Live, execution: &str) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        use salvage::store::ExecutionStore;
        let store = salvage::store::FileStore::open(live.path("runs")).await.expect("store");
        store
            .journal(execution)
            .await
            .expect("journal")
            .into_iter()
            .map(|r| r.body["kind"].as_str().unwrap_or_default().to_owned())
            .collect()
    })
}

fn code(output: &Output) -> Option<i32> {
    output.status.code()
}

#[test]
fn a_confirmation_whose_execution_cannot_go_on_is_not_recorded() {
    let (live, run) = workspace(BRANCH_RESUME);
    let id = needs_operator(&live, &run);
    let before = journal_kinds(&live, &id);
    // The policies change under the execution: it cannot go on with this configuration.
    let policy = live.path("policies/checkpoints.rhai");
    let original = std::fs::read_to_string(&policy).expect("read");
    std::fs::write(&policy, format!("{original}\n// edited\n")).expect("edit");
    let refused = live.salvage(&["confirm", &id, "resume", "--retry", "--as", "oncall-sre"]);
    assert_eq!(code(&refused), Some(2), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("changed since the plan was made"), "{}", text(&refused.stderr));
    assert_eq!(journal_kinds(&live, &id), before, "nothing recorded for an answer that could not be used");
    // Back to the policies it was planned with: the same answer goes through once.
    std::fs::write(&policy, original).expect("restore");
    let done = live.json(&["confirm", &id, "resume", "--retry", "--as", "oncall-sre", "--json"]);
    assert_eq!(done["status"], "resolved", "{done}");
    assert_eq!(live.server.writes_for("INV-1").len(), 1);
}

#[test]
fn two_operators_confirming_at_once_one_wins_and_the_other_is_told_who() {
    let (live, run) = workspace(BRANCH_RESUME);
    let id = needs_operator(&live, &run);
    let spawn = |actor: &str, answer: &[&str]| {
        live.command(&[&["confirm", id.as_str(), "resume", "--as", actor], answer].concat())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("confirm")
    };
    let (first, second) = (spawn("oncall-sre", &["--retry"]), spawn("incident-commander", &["--outcome", "failed"]));
    let outputs = [first.wait_with_output().expect("wait"), second.wait_with_output().expect("wait")];
    let codes: Vec<Option<i32>> = outputs.iter().map(code).collect();
    assert!(codes.contains(&Some(2)), "the later answer is refused: {codes:?}");
    let loser = outputs.iter().find(|o| code(o) == Some(2)).expect("loser");
    let message = text(&loser.stderr);
    assert!(
        message.contains("already answered")
            && (message.contains("by oncall-sre") || message.contains("by incident-commander")),
        "{message}"
    );
    assert!(!message.contains("journal of execution"), "no talk of a run called 'journal of execution': {message}");
    let kinds = journal_kinds(&live, &id);
    assert_eq!(kinds.iter().filter(|k| *k == "operator_confirmed").count(), 1, "{kinds:?}");
    // Not a dead end: the execution goes on (or has ended) and resume says so.
    let settled = live.json(&["executions", "--json"])[0].clone();
    assert!(matches!(settled["status"].as_str(), Some("resolved" | "escalated")), "{settled}");
    let again = live.salvage(&["resume", &id]);
    assert!(matches!(code(&again), Some(0 | 1)), "{}", text(&again.stderr));
    assert!(live.server.duplicate_writes().is_empty());
}

#[test]
fn an_execution_that_cannot_go_on_is_closed_with_abandon_and_recovered_again() {
    let (live, run) = workspace(BRANCH_RESUME);
    let id = needs_operator(&live, &run);
    // The playbook is edited: the execution no longer fits the set on disk.
    let playbook = live.path("only-playbooks/only.yaml");
    std::fs::write(&playbook, BRANCH_RESUME.replace("description: Branch and resume.", "description: Edited."))
        .expect("edit");
    let stuck = live.salvage(&["resume", &id]);
    assert_eq!(code(&stuck), Some(2), "{}", text(&stuck.stderr));
    let closed = live.salvage(&["abandon", &id, "--as", "oncall-sre", "--reason", "playbook replaced"]);
    assert!(closed.status.success(), "{}", text(&closed.stderr));
    assert!(text(&closed.stderr).contains(&format!("salvage apply {run} --again")), "{}", text(&closed.stderr));
    assert_eq!(live.execution_of(&run).expect("execution")["status"], "abandoned");
    assert_eq!(journal_kinds(&live, &id).last().map(String::as_str), Some("abandoned"));
    let again = live.json(&["apply", &run, "--yes", "--again", "--as", "alice", "--json"]);
    assert_eq!(again["status"], "resolved", "{again}");
    assert_eq!(live.server.writes_for("INV-1").len(), 1);
}

const WAIT_THEN_RESUME: &str = "playbook: wait-then-resume\nversion: 1\ndescription: Waits, then resumes.\n\
match: { incident: tool_failure }\npriority: 1000\nstart: ask\nsteps:\n\
\x20 ask:\n    action: request_approval\n    description: d\n    approvers: [oncall-sre, incident-commander]\n    timeout: 1h\n    on: { approved: pause, denied: escalated, timeout: escalated }\n\
\x20 pause:\n    action: wait\n    description: d\n    duration: 3s\n    next: branch\n\
\x20 branch:\n    action: branch_from_checkpoint\n    description: d\n    checkpoint: policy.choose_checkpoint\n    approval: never\n    why: operator tests\n    on: { ok: resolved, failed: escalated }\n\
ends:\n  resolved: { outcome: resolved }\n  escalated: { outcome: escalated }\n";

#[test]
fn the_approver_who_loses_a_race_is_told_who_answered_and_the_same_answer_twice_is_fine() {
    let (live, run) = workspace(WAIT_THEN_RESUME);
    let started = live.json(&["apply", &run, "--yes", "--as", "alice", "--json"]);
    let id = started["executionId"].as_str().expect("id").to_owned();
    let spawn = |actor: &str| {
        live.command(&["approve", id.as_str(), "ask", "--as", actor])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("approve")
    };
    let (a, b) = (spawn("oncall-sre"), spawn("incident-commander"));
    let outputs = [a.wait_with_output().expect("wait"), b.wait_with_output().expect("wait")];
    let codes: Vec<Option<i32>> = outputs.iter().map(code).collect();
    assert!(codes.contains(&Some(0)) && codes.contains(&Some(2)), "{codes:?}");
    let winner = if code(&outputs[0]) == Some(0) { "oncall-sre" } else { "incident-commander" };
    let loser = outputs.iter().find(|o| code(o) == Some(2)).expect("loser");
    assert!(text(&loser.stderr).contains(&format!("approved by {winner}")), "{}", text(&loser.stderr));
    // The winner again: nothing changes, exit 0.
    let repeat = live.salvage(&["approve", &id, "ask", "--as", winner]);
    assert!(repeat.status.success(), "{}", text(&repeat.stderr));
    assert!(text(&repeat.stderr).contains("already answered the same way"), "{}", text(&repeat.stderr));
    assert_eq!(live.server.requests_to(Route::Branch).len(), 1);
}

#[test]
fn a_concurrent_resume_loses_with_exit_2_naming_the_process_that_runs_it() {
    let (live, run) = workspace(WAIT_THEN_RESUME);
    let id =
        live.json(&["apply", &run, "--yes", "--as", "alice", "--json"])["executionId"].as_str().expect("id").to_owned();
    // Approve: this process runs the 3 s wait in place.
    let approving = live.command(&["approve", &id, "ask", "--as", "oncall-sre"]).spawn().expect("approve");
    live_support::wait_for("the wait to start", || (live.execution_of(&run)?["node"] == "pause").then_some(()));
    let racing = live.salvage(&["resume", &id]);
    assert_eq!(code(&racing), Some(2), "{}", text(&racing.stderr));
    assert!(text(&racing.stderr).contains("being executed by another process (pid"), "{}", text(&racing.stderr));
    let finished = approving.wait_with_output().expect("wait");
    assert!(finished.status.success());
    assert_eq!(live.server.requests_to(Route::Branch).len(), 1, "one branch");
}

#[test]
fn a_replay_id_past_the_id_limit_fails_the_step_before_any_effect() {
    let replay = "playbook: replay\nversion: 1\ndescription: Replays.\nmatch: { incident: tool_failure }\npriority: 1000\nstart: replay\nsteps:\n\
\x20 replay:\n    action: partial_replay\n    description: d\n    checkpoint: policy.choose_checkpoint\n    on: { ok: resolved, failed: escalated }\n\
ends:\n  resolved: { outcome: resolved }\n  escalated: { outcome: escalated }\n";
    let (live, _) = workspace(replay);
    // A run whose id leaves no room for `:partial-replay:<ms>` under the 200-byte id limit.
    let long_id = "r".repeat(190);
    let failed = live
        .server
        .create_run_with(json!({"task": "send_invoice", "invoiceId": "INV-9", "amount": 1}), json!({"runId": long_id}));
    assert_eq!(failed.status, 500, "the run fails: {:?}", failed.body);
    let done = live.json(&["apply", &long_id, "--yes", "--as", "alice", "--json"]);
    assert_eq!(done["status"], "escalated", "a failed step, not a question for an operator: {done}");
    let step =
        done["steps"].as_array().and_then(|s| s.iter().find(|s| s["stepId"] == "replay")).cloned().expect("replay");
    assert_eq!(step["outcome"], "failed");
    assert!(step["detail"]["error"].as_str().is_some_and(|e| e.contains("longer than 200 bytes")), "{step}");
    assert!(live.server.requests_to(Route::Replay).is_empty(), "nothing was sent");
}
