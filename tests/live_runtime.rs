//! salvage acting on a live runtime that behaves like agnostic-agents 1.3.3's HTTP runtime
//! service (the test runtime server), in enforce mode, through the real binary. Each test is an
//! observation of the issue "Acting exactly once against live runtimes": it failed before the
//! runner spoke the reference's protocol, found the runs it created, owned them, pinned its
//! runtimes, re-read runs before acting and verified outcomes.

mod live_support;
mod runtime_server;

use std::time::Duration;

use serde_json::{Value, json};

use live_support::{Live, text, wait_for};
use runtime_server::{DelayOrder, Route, ServerOptions, ToolPolicy};

const APPROVER: &str = "oncall-sre";

fn approval_server() -> ServerOptions {
    ServerOptions::new().policy("send_invoice", ToolPolicy::require_approval())
}

fn failing_tool_server() -> ServerOptions {
    ServerOptions::new().policy("send_invoice", ToolPolicy::fail_first(1))
}

/// `apply RUN --yes --as alice --json`.
fn apply(live: &Live, run_id: &str) -> Value {
    live.json(&["apply", run_id, "--yes", "--as", "alice", "--json"])
}

fn approve(live: &Live, execution: &str, step: &str) -> std::process::Output {
    live.salvage(&["approve", execution, step, "--as", APPROVER, "--reason", "checked the invoice", "--json"])
}

fn json_of(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(&output.stdout), text(&output.stderr)))
}

#[test]
fn protocol_an_approval_is_sent_as_the_reference_resume_body_and_the_run_is_seen_completed() {
    let live = Live::new(approval_server());
    let run = live.incident("send_invoice", "INV-1");
    assert_eq!(live.status_of(&run), "waiting_for_approval");
    let started = apply(&live, &run);
    assert_eq!(started["status"], "waiting_for_approval", "{started}");
    let execution = started["executionId"].as_str().expect("id").to_owned();
    let done = approve(&live, &execution, "decide");
    assert!(done.status.success(), "{}", text(&done.stderr));
    let done = json_of(&done);
    assert_eq!(done["status"], "resolved", "{done}");
    // The reference's body: a top-level `approved` and `reason` (not a nested decision).
    let resumes = live.server.requests_to(Route::Resume);
    assert_eq!(resumes.len(), 1, "{resumes:?}");
    assert_eq!(resumes[0].body["approved"], true);
    assert!(resumes[0].body["reason"].as_str().is_some_and(|r| r.contains(APPROVER)), "{:?}", resumes[0].body);
    assert_eq!(live.status_of(&run), "completed");
    assert_eq!(live.server.writes_for("INV-1").len(), 1, "the approved tool wrote once");
}

#[test]
fn protocol_a_denial_reaches_the_runtime_and_the_run_does_not_wait_for_ever() {
    let live = Live::new(approval_server());
    let run = live.incident("send_invoice", "INV-2");
    let execution = apply(&live, &run)["executionId"].as_str().expect("id").to_owned();
    let denied = live.salvage(&["deny", &execution, "decide", "--as", APPROVER, "--reason", "wrong amount", "--json"]);
    assert!(denied.status.success(), "{}", text(&denied.stderr));
    let denied = json_of(&denied);
    // The reference answers a denial 500 (its approval handler throws); the run's state decides.
    assert_eq!(denied["status"], "abandoned", "{denied}");
    let resumes = live.server.requests_to(Route::Resume);
    assert_eq!(resumes.len(), 1);
    assert_eq!(resumes[0].body["approved"], false);
    assert_eq!(live.status_of(&run), "failed", "the runtime failed the run without the tool");
    assert!(live.server.writes_for("INV-2").is_empty(), "a denied tool never writes");
}

#[test]
fn protocol_a_branch_answer_names_the_run_the_runtime_created() {
    let live = Live::new(failing_tool_server());
    let run = live.incident("send_invoice", "INV-3");
    assert_eq!(live.status_of(&run), "failed");
    let started = apply(&live, &run);
    assert_eq!(started["status"], "waiting_for_approval", "{started}");
    let execution = started["executionId"].as_str().expect("id").to_owned();
    let done = json_of(&approve(&live, &execution, "ask_operator"));
    assert_eq!(done["status"], "resolved", "{done}");
    let branches = live.server.requests_to(Route::Branch);
    assert_eq!(branches.len(), 1);
    assert!(
        branches[0].body["checkpointId"].as_str().is_some_and(|c| c.ends_with(":checkpoint:2")),
        "{:?}",
        branches[0].body
    );
    let created = done["createdRuns"]["branch_approved"].as_str().expect("the branch is known").to_owned();
    let derived = live.derived_from(&run);
    assert_eq!(derived, std::slice::from_ref(&created), "one branch, the one the runtime answered with");
    assert_eq!(
        live.run(&created)["metadata"]["salvage"]["executionId"],
        execution.as_str(),
        "the branch carries its execution"
    );
    assert_eq!(live.status_of(&created), "completed");
    assert_eq!(live.server.writes_for("INV-3").len(), 1);
    assert!(live.orphans().is_empty());
}

#[test]
fn created_runs_are_found_after_a_crash_between_the_branch_and_its_outcome() {
    for keep_metadata in [true, false] {
        let live = Live::new(failing_tool_server().keep_metadata(keep_metadata));
        let run = live.incident("send_invoice", "INV-4");
        let execution = apply(&live, &run)["executionId"].as_str().expect("id").to_owned();
        // The approver's process dies after the runtime made the branch, before the outcome.
        live.crashing("effect:branch_approved", &["approve", &execution, "ask_operator", "--as", APPROVER]);
        assert_eq!(live.derived_from(&run).len(), 1, "the runtime made the branch");
        let resumed = live.json(&["resume", &execution, "--json"]);
        assert_eq!(resumed["status"], "resolved", "keep_metadata={keep_metadata}: {resumed}");
        assert_eq!(live.derived_from(&run).len(), 1, "keep_metadata={keep_metadata}: no second branch");
        assert_eq!(live.server.requests_to(Route::Branch).len(), 1);
        assert_eq!(live.server.writes_for("INV-4").len(), 1);
        assert!(live.orphans().is_empty(), "{:?}", live.orphans());
    }
}

#[test]
fn a_retry_after_an_interrupted_branch_looks_for_it_before_branching_again() {
    let live = Live::new(failing_tool_server().keep_metadata(false));
    let run = live.incident("send_invoice", "INV-5");
    let execution = apply(&live, &run)["executionId"].as_str().expect("id").to_owned();
    // The runtime holds the branch request until released; the approver's process is killed
    // while it waits: nobody knows yet whether the branch will be made.
    live.server.hold(Route::Branch, DelayOrder::DelayThenEffect);
    let mut approving =
        live.command(&["approve", &execution, "ask_operator", "--as", APPROVER]).spawn().expect("approve");
    live.server.wait_for_request(Route::Branch, Duration::from_secs(30)).expect("the branch request arrived");
    approving.kill().expect("kill");
    let _ = approving.wait();
    let asked = live.json(&["resume", &execution, "--json"]);
    assert_eq!(asked["status"], "needs_operator", "the branch is not there yet: {asked}");
    // The runtime carries the request out after all; the operator asks for a retry.
    live.server.release(Route::Branch);
    live.server.wait_for_applied(Route::Branch, Duration::from_secs(30)).expect("branched");
    let retried = live.json(&["confirm", &execution, "branch_approved", "--retry", "--as", APPROVER, "--json"]);
    assert_eq!(retried["status"], "resolved", "{retried}");
    assert_eq!(live.server.requests_to(Route::Branch).len(), 1, "the retry found the branch instead of making another");
    assert_eq!(live.derived_from(&run).len(), 1);
    assert_eq!(live.server.writes_for("INV-5").len(), 1);
}

#[test]
fn an_operator_names_the_created_run_when_several_could_be_it() {
    let live = Live::new(failing_tool_server().keep_metadata(false));
    let run = live.incident("send_invoice", "INV-6");
    let execution = apply(&live, &run)["executionId"].as_str().expect("id").to_owned();
    live.crashing("effect:branch_approved", &["approve", &execution, "ask_operator", "--as", APPROVER]);
    // Meanwhile someone branches from the same checkpoint by hand: two candidates, no marks.
    let ours = live.derived_from(&run);
    let checkpoint = live.run(&ours[0])["metadata"]["lineage"]["branchCheckpointId"].clone();
    let theirs = live.server.branch(&run, json!({"checkpointId": checkpoint}));
    let theirs = theirs.body["id"].as_str().expect("hand-made branch").to_owned();
    let asked = live.json(&["resume", &execution, "--json"]);
    assert_eq!(asked["status"], "needs_operator", "{asked}");
    let question = asked["operatorQuestion"]["question"].as_str().unwrap_or_default();
    assert!(question.contains(&ours[0]) && question.contains(&theirs), "{question}");
    let refused = live.salvage(&["confirm", &execution, "branch_approved", "--outcome", "ok", "--as", APPROVER]);
    assert_eq!(refused.status.code(), Some(2), "ambiguous without --created: {}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("--created"), "{}", text(&refused.stderr));
    let confirmed = live.json(&[
        "confirm",
        &execution,
        "branch_approved",
        "--outcome",
        "ok",
        "--created",
        &ours[0],
        "--as",
        APPROVER,
        "--json",
    ]);
    assert_eq!(confirmed["status"], "resolved", "{confirmed}");
    assert_eq!(confirmed["createdRuns"]["branch_approved"], ours[0].as_str());
    assert_eq!(live.status_of(&ours[0]), "completed");
    assert_eq!(live.status_of(&theirs), "paused", "the hand-made branch is left alone");
    assert_eq!(live.server.requests_to(Route::Branch).len(), 2, "salvage branched once, the person once");
}

#[test]
fn the_daemon_does_not_take_a_run_its_recovery_is_making_for_a_new_incident() {
    for keep_metadata in [true, false] {
        // The runtime answers the branch 3 s after making it: the branch is in the store, paused,
        // while the recovery that made it has not heard back yet.
        let live = Live::new(failing_tool_server().keep_metadata(keep_metadata).answer_delay(
            Route::Branch,
            Duration::from_secs(3),
            DelayOrder::EffectThenDelay,
        ));
        let daemon = live.serve(&["--mode", "enforce"]);
        let run = live.incident("send_invoice", "INV-7");
        let execution = wait_for("the approval request", || {
            live.execution_of(&run).filter(|e| e["status"] == "waiting_for_approval").map(|e| e["executionId"].clone())
        });
        let execution = execution.as_str().expect("id").to_owned();
        let approved = approve(&live, &execution, "ask_operator");
        assert!(approved.status.success(), "{}", text(&approved.stderr));
        wait_for("the recovery to resolve", || (live.execution_of(&run)?["status"] == "resolved").then_some(()));
        std::thread::sleep(Duration::from_secs(2));
        let status = live.status();
        assert_eq!(status["daemon"]["incidents"]["handled"], 1, "keep_metadata={keep_metadata}: {status}");
        assert_eq!(live.executions().len(), 1, "no second execution");
        assert_eq!(live.server.writes_for("INV-7").len(), 1);
        assert!(live.orphans().is_empty());
        assert!(daemon.terminate().success());
    }
}

#[test]
fn the_daemon_takes_over_an_answered_execution_whose_approver_was_killed() {
    let live = Live::new(failing_tool_server());
    let daemon = live.serve(&["--mode", "enforce"]);
    let run = live.incident("send_invoice", "INV-8");
    let execution = wait_for("the approval request", || {
        live.execution_of(&run).filter(|e| e["status"] == "waiting_for_approval").map(|e| e["executionId"].clone())
    });
    let execution = execution.as_str().expect("id").to_owned();
    // `salvage approve` records the answer, goes on with the execution and is killed (-9) right
    // after the runtime made the branch.
    live.crashing("effect:branch_approved", &["approve", &execution, "ask_operator", "--as", APPROVER]);
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(30);
    while live.execution_of(&run).is_none_or(|e| e["status"] != "resolved") {
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = std::fs::read_dir(live.dir.path())
                .expect("dir")
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("serve-"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect();
            panic!("not resolved: {:?}\n{}", live.execution_of(&run), logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(started.elapsed() < Duration::from_secs(15), "picked up in {:?}", started.elapsed());
    assert_eq!(live.derived_from(&run).len(), 1, "the daemon found the branch instead of making another");
    assert_eq!(live.server.writes_for("INV-8").len(), 1);
    assert_eq!(live.status()["daemon"]["incidents"]["handled"], 1, "the orphaned branch was no new incident");
    assert!(daemon.terminate().success());
}

#[test]
fn applying_a_recovered_run_again_is_refused_with_the_execution_unless_again() {
    let live = Live::new(approval_server());
    let run = live.incident("send_invoice", "INV-9");
    let execution = apply(&live, &run)["executionId"].as_str().expect("id").to_owned();
    assert_eq!(json_of(&approve(&live, &execution, "decide"))["status"], "resolved");
    // The approval recorded on the run changed its revision: a new plan is possible, a new
    // recovery is not.
    let again = live.salvage(&["apply", &run, "--yes", "--as", "alice"]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again.stderr));
    let message = text(&again.stderr);
    assert!(
        message.contains(&execution) && message.contains("already recovered") && message.contains("--again"),
        "{message}"
    );
    assert_eq!(live.server.requests_to(Route::Resume).len(), 1, "nothing was sent again");
    // On purpose: the run is completed now, so the plan has nothing to recover.
    let forced = live.salvage(&["apply", &run, "--yes", "--again", "--as", "alice", "--json"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert_eq!(live.server.writes_for("INV-9").len(), 1);
}

#[test]
fn an_execution_acts_through_the_runtimes_it_started_with() {
    let live = Live::new(failing_tool_server());
    let run = live.incident("send_invoice", "INV-10");
    let execution = apply(&live, &run)["executionId"].as_str().expect("id").to_owned();
    // The approver works from another directory whose salvage.yaml routes agent runs to the
    // `store` runtime.
    let elsewhere = tempfile::tempdir().expect("temp");
    std::fs::write(
        elsewhere.path().join("salvage.yaml"),
        format!(
            "store: file:{}\nplaybooks: {}\npolicies: {}\nruntimes:\n  agent: store\n  workflow: store\n",
            live.path("runs").display(),
            live_support::repo("playbooks").display(),
            live_support::repo("policies").display()
        ),
    )
    .expect("config");
    let mut command = live.command(&["approve", &execution, "ask_operator", "--as", APPROVER, "--json"]);
    let output = command.current_dir(elsewhere.path()).output().expect("approve");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(json_of(&output)["status"], "resolved");
    assert!(text(&output.stderr).contains("acts through the runtimes it started with"), "{}", text(&output.stderr));
    assert_eq!(live.server.requests_to(Route::Branch).len(), 1, "the branch went to the pinned runtime");
    let derived = live.derived_from(&run);
    assert_eq!(derived.len(), 1);
    assert_eq!(
        live.run(&derived[0])["metadata"]["description"],
        "Invoice operations agent",
        "made by the runtime, not salvage's store runtime"
    );
}

#[test]
fn a_step_on_a_run_that_moved_is_refused_and_nothing_is_sent() {
    let live = Live::new(ServerOptions::new().policy("send_invoice", ToolPolicy::pause_before_tool()));
    let run = live.incident("send_invoice", "INV-11");
    assert_eq!(live.status_of(&run), "paused");
    let execution = apply(&live, &run)["executionId"].as_str().expect("id").to_owned();
    // Someone resumes the run directly while the recovery waits for its approval.
    assert_eq!(live.server.resume(&run, json!({})).status, 200);
    assert_eq!(live.status_of(&run), "completed");
    let done = json_of(&approve(&live, &execution, "decide"));
    assert_eq!(done["status"], "escalated", "{done}");
    let resume = done["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["stepId"] == "resume"))
        .cloned()
        .expect("resume step");
    assert_eq!(resume["outcome"], "failed");
    assert!(resume["detail"]["refused"].as_str().is_some_and(|why| why.contains("moved")), "{resume}");
    assert_eq!(live.server.requests_to(Route::Resume).len(), 1, "only the person's resume reached the runtime");
    assert_eq!(live.server.writes_for("INV-11").len(), 1, "the tool wrote once");
}

#[test]
fn a_dry_run_with_an_http_runtime_predicts_the_path_enforce_takes() {
    let live = Live::new(failing_tool_server());
    let run = live.incident("send_invoice", "INV-12");
    let dry = live.json(&["apply", &run, "--dry-run", "--as", "alice", "--json"]);
    assert_eq!(dry["status"], "resolved", "{dry}");
    let sent: Vec<_> = live
        .server
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.route != Some(Route::CreateRun))
        .collect();
    assert!(sent.is_empty(), "a dry run only reads the runtime: {sent:?}");
    let path = |steps: &Value| -> Vec<(String, String)> {
        steps
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .filter(|s| s["outcome"] != "waiting_for_approval")
                    .map(|s| {
                        (s["stepId"].as_str().unwrap_or("").to_owned(), s["outcome"].as_str().unwrap_or("").to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let started = apply(&live, &run);
    let execution = started["executionId"].as_str().expect("id").to_owned();
    let done = json_of(&approve(&live, &execution, "ask_operator"));
    assert_eq!(done["status"], "resolved");
    let mut enforced = path(&started["steps"]);
    enforced.extend(path(&done["steps"]));
    assert_eq!(path(&dry["steps"]), enforced, "the dry run took the path and outcomes enforce took");
}

/// The shipped playbooks with their cool-down waits shortened to a second (a test waits for
/// them; the waits themselves are what is tested).
fn quick_playbooks(live_dir: &std::path::Path) -> std::path::PathBuf {
    let dir = live_dir.join("playbooks");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for entry in std::fs::read_dir(live_support::repo("playbooks")).expect("read").filter_map(Result::ok) {
        if entry.path().extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(entry.path()).expect("read").replace("duration: 1m", "duration: 1s");
            std::fs::write(dir.join(entry.file_name()), text).expect("write");
        }
    }
    dir
}

#[test]
fn a_branch_that_fails_again_is_retried_once_after_a_cool_down_then_a_person_decides() {
    for (failures, expected, writes) in [(2, "resolved", 1), (3, "escalated", 0)] {
        let dir = tempfile::tempdir().expect("temp");
        let playbooks = quick_playbooks(dir.path());
        let live = Live::with_playbooks(
            ServerOptions::new().policy("send_invoice", ToolPolicy::fail_first(failures)),
            &playbooks,
        );
        let run = live.incident("send_invoice", "INV-13");
        let execution = apply(&live, &run)["executionId"].as_str().expect("id").to_owned();
        // The first branch fails like the run did; the execution waits a second, then asks again.
        let second_ask = json_of(&approve(&live, &execution, "ask_operator"));
        assert_eq!(second_ask["status"], "waiting_for_approval", "failures={failures}: {second_ask}");
        let resumed = second_ask["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["stepId"] == "resume_approved"))
            .cloned()
            .expect("resume step");
        assert_eq!(resumed["outcome"], "failed", "the reference answers the resumed branch's failure: {resumed}");
        // One execution, one person deciding twice: the second branch (from the same checkpoint)
        // completes or fails; a third failure is not tried.
        let done = json_of(&approve(&live, &execution, "ask_operator"));
        let done = if done["status"] == "waiting_for_approval" {
            json_of(&approve(&live, &execution, "ask_operator"))
        } else {
            done
        };
        assert_eq!(done["status"], expected, "failures={failures}: {}", done["steps"]);
        assert_eq!(live.executions().len(), 1, "one playbook, one execution");
        assert_eq!(live.derived_from(&run).len(), 2, "two branches at most");
        assert_eq!(live.server.writes_for("INV-13").len(), writes);
        assert!(live.server.duplicate_writes().is_empty());
    }
}

#[test]
fn an_approval_nobody_answers_is_denied_by_the_daemon_without_a_command() {
    let dir = tempfile::tempdir().expect("temp");
    let playbooks = quick_playbooks(dir.path());
    let path = playbooks.join("approval-gated-run-paused.yaml");
    let text = std::fs::read_to_string(&path).expect("read").replace("timeout: 4h", "timeout: 2s");
    std::fs::write(&path, text).expect("write");
    let live = Live::with_playbooks(approval_server(), &playbooks);
    let daemon = live.serve(&["--mode", "enforce"]);
    let run = live.incident("send_invoice", "INV-14");
    // Nobody answers; nobody runs a command.
    wait_for("the daemon to deny on timeout", || (live.execution_of(&run)?["status"] == "escalated").then_some(()));
    let resumes = live.server.requests_to(Route::Resume);
    assert_eq!(resumes.len(), 1, "the denial was sent: {resumes:?}");
    assert_eq!(resumes[0].body["approved"], false);
    assert_eq!(live.status_of(&run), "failed", "the run does not wait for ever");
    assert!(live.server.writes_for("INV-14").is_empty());
    assert!(daemon.terminate().success());
}

#[test]
fn a_later_failure_of_a_run_a_recovery_made_is_an_incident_linked_to_it_for_a_person() {
    // The tool fails on the run and on the first branch; the person then denies a second try.
    let dir = tempfile::tempdir().expect("temp");
    let playbooks = quick_playbooks(dir.path());
    let live = Live::with_playbooks(ServerOptions::new().policy("send_invoice", ToolPolicy::fail_first(2)), &playbooks);
    let daemon = live.serve(&["--mode", "enforce"]);
    let run = live.incident("send_invoice", "INV-15");
    let execution = wait_for("the approval request", || {
        live.execution_of(&run)
            .filter(|e| e["status"] == "waiting_for_approval")
            .and_then(|e| e["executionId"].as_str().map(str::to_owned))
    });
    let asked_again = json_of(&approve(&live, &execution, "ask_operator"));
    assert_eq!(asked_again["status"], "waiting_for_approval", "{asked_again}");
    let branch = asked_again["createdRuns"]["branch_approved"].as_str().expect("branch").to_owned();
    assert_eq!(live.status_of(&branch), "failed");
    let denied = live.salvage(&["deny", &execution, "ask_operator", "--as", APPROVER, "--reason", "stop retrying"]);
    assert!(denied.status.success(), "{}", text(&denied.stderr));
    // Now that its recovery has ended, the failed branch is an incident of that family: linked,
    // recorded for a person, not recovered automatically.
    let linked = wait_for("the linked incident", || {
        let status = live.status();
        status["linkedIncidents"]
            .as_array()?
            .iter()
            .find(|l| l["runId"] == branch.as_str() && !matches!(l["state"].as_str(), Some("claimed" | "applying")))
            .cloned()
    });
    assert_eq!(linked["executionId"], execution.as_str());
    assert_eq!(linked["relation"], "created by the recovery");
    assert_eq!(linked["state"], "escalated");
    assert!(linked["outcome"].as_str().is_some_and(|o| o.contains("--again")), "{linked}");
    assert_eq!(live.executions().len(), 1, "no second automatic recovery in the family");
    let report = text(&live.salvage(&["report", &branch]).stdout);
    assert!(report.contains(&format!("created by step branch_approved of execution {execution}")), "{report}");
    assert!(report.contains("linked incident: created by the recovery"), "{report}");
    let report = text(&live.salvage(&["report", &run]).stdout);
    assert!(report.contains(&format!("recovered by execution {execution}")), "{report}");
    assert_eq!(live.server.writes_for("INV-15").len(), 0);
    assert!(daemon.terminate().success());
}
