//! `salvage incidents` and `salvage incident RUN` end to end: the real binary as an advisory
//! daemon over the example runs, then the two read commands on the store it left (SQLite, the
//! file store and PostgreSQL), and the advisory log line of a run a dry run would create.
//! Waits poll with generous bounds that only keep a broken build from hanging.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod live_support;
#[path = "common/postgres.rs"]
mod postgres;
mod runtime_server;

const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
const HEALTHY: &str = "33d396d5-5af9-5cd6-96a2-1232e99c4f4d";
const PATIENCE: Duration = Duration::from_secs(90);

/// The example incidents (`examples/ROLES.tsv`): the failed, paused and waiting runs.
const EXAMPLE_INCIDENTS: [&str; 7] = [
    "221768ec-bf9c-5e1a-a8b2-ebb43be8e23d",
    "59fd728d-9938-5d34-914f-4e32b6f4609d:partial-replay:1795588321456",
    "6642c01a-890f-53f5-85d9-81f26aaed645",
    "aea53804-c3ca-53ed-8fc6-47ff46e44c8e",
    "b082b9bc-0861-56d5-b884-37bbd428657e",
    "b112671a-8349-5cbc-975d-1b8765aa1873:partial-replay:1795589000123",
    "bc96e94c-2c82-545b-8884-4d94b2e595d4",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A working directory and a store spec; the shipped playbooks and policies are used in place.
struct Workspace {
    dir: tempfile::TempDir,
    store: String,
    _schema: Option<postgres::TestSchema>,
}

impl Workspace {
    fn new(backend: &str) -> Option<Workspace> {
        let dir = tempfile::tempdir().expect("temp");
        let (store, schema) = match backend {
            "sqlite" => (format!("sqlite:{}", dir.path().join("salvage.db").display()), None),
            "file" => (format!("file:{}", dir.path().join("runs").display()), None),
            _ => {
                if !postgres::available() {
                    return None;
                }
                let schema = postgres::TestSchema::create();
                (schema.url.clone(), Some(schema))
            }
        };
        Some(Workspace { dir, store, _schema: schema })
    }

    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_salvage"));
        command
            .current_dir(self.dir.path())
            .env("SALVAGE_STORE", &self.store)
            .env("NO_COLOR", "1")
            .env_remove("SALVAGE_CONFIG")
            .env_remove("SALVAGE_LOG");
        command
    }

    fn salvage(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run salvage")
    }

    fn stdout(&self, args: &[&str]) -> String {
        let out = self.salvage(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.stdout(args)).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn import_examples(&self) {
        let examples = root().join("examples/runs");
        self.stdout(&["import", examples.to_str().expect("utf-8")]);
    }

    /// `salvage serve` in advisory mode with the shipped set, logging at info to a file.
    fn serve_advisory(&self) -> Daemon {
        let log = self.dir.path().join("serve.log");
        let playbooks = root().join("playbooks");
        let policies = root().join("policies");
        let child = self
            .command()
            .args(["serve", "--mode", "advisory", "--playbooks"])
            .arg(&playbooks)
            .arg("--policies")
            .arg(&policies)
            .env("SALVAGE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start serve");
        Daemon { child: Some(child), log }
    }

    /// Waits until every example incident is recorded and handled.
    fn wait_for_the_example_incidents(&self) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let incidents = self.json(&["incidents", "--json"]);
            let incidents = incidents.as_array().cloned().unwrap_or_default();
            let handled = incidents.iter().filter(|i| !matches!(i["state"].as_str(), Some("claimed" | "applying")));
            if handled.count() >= EXAMPLE_INCIDENTS.len() {
                return incidents;
            }
            assert!(Instant::now() < deadline, "timed out waiting for the incidents: {incidents:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A running `salvage serve`; killed if a test fails before stopping it.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// SIGTERM, waits for the exit, returns the log.
    fn stop(mut self) -> String {
        let mut child = self.child.take().expect("child");
        let pid = i32::try_from(child.id()).expect("pid");
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill");
        let deadline = Instant::now() + PATIENCE;
        while child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "serve did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::read_to_string(&self.log).expect("log")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The observation: after an advisory `serve` over the examples, `status` counted the incidents
/// planned while `executions` said "no executions" and the plans were unreadable. Now
/// `incidents` lists each with its plan and dry-run outcome, and `incident RUN` shows the plan
/// and the dry run.
fn advisory_incidents_show_their_plan_and_dry_run(backend: &str) {
    let Some(ws) = Workspace::new(backend) else { return };
    ws.import_examples();
    let daemon = ws.serve_advisory();
    let incidents = ws.wait_for_the_example_incidents();
    let log = daemon.stop();

    let mut run_ids: Vec<&str> = incidents.iter().filter_map(|i| i["runId"].as_str()).collect();
    run_ids.sort_unstable();
    assert_eq!(run_ids, EXAMPLE_INCIDENTS, "{backend}: each example incident once");
    let found: Vec<&str> = incidents.iter().filter_map(|i| i["claimedAt"].as_str()).collect();
    assert!(found.windows(2).all(|w| w[0] <= w[1]), "{backend}: oldest first: {found:?}");
    assert_eq!(ws.json(&["executions", "--json"]), Value::Array(vec![]), "{backend}: advisory executes nothing");
    let executions = ws.salvage(&["executions"]);
    let note = String::from_utf8_lossy(&executions.stderr);
    assert!(note.contains("no executions in") && note.contains("`salvage incidents`"), "{backend}: {note}");

    for incident in &incidents {
        let run_id = incident["runId"].as_str().expect("run id");
        assert_eq!(incident["state"], "planned", "{backend} {run_id}");
        assert_eq!(incident["mode"], "advisory", "{backend} {run_id}");
        assert_eq!(incident["executions"], Value::Array(vec![]), "{backend} {run_id}");
        let plan_id = incident["planId"].as_str().expect("a plan id");

        let detail = ws.json(&["incident", run_id, "--json"]);
        assert_eq!(detail["runId"], run_id);
        assert_eq!(detail["plan"]["planId"], plan_id, "{backend} {run_id}: the recorded plan");
        assert_eq!(detail["plan"]["runId"], run_id);
        let dry_run = &detail["dryRun"];
        let expected_id = format!("dry-{}", plan_id.trim_start_matches("plan-"));
        assert_eq!(dry_run["executionId"], expected_id.as_str(), "{backend} {run_id}: the dry run of that plan");
        assert_eq!(dry_run["status"], incident["outcome"], "{backend} {run_id}: the outcome is the dry run's");
        assert!(dry_run["steps"].as_array().is_some_and(|s| !s.is_empty()), "{backend} {run_id}: {dry_run}");
        assert!(dry_run["recordedAt"].is_string());
    }

    let list = ws.stdout(&["incidents"]);
    for run_id in EXAMPLE_INCIDENTS {
        let line = list.lines().find(|line| line.contains(run_id)).unwrap_or_else(|| panic!("{run_id} in\n{list}"));
        assert!(line.contains("planned") && line.contains("advisory"), "{backend}: {line}");
    }
    let invoice = incidents.iter().find(|i| i["runId"] == FAILED_INVOICE).expect("the invoice incident");
    let line = list.lines().find(|line| line.contains(FAILED_INVOICE)).expect("listed");
    assert!(line.contains("tool_failure") && line.contains("side-effecting-tool-failed"), "{line}");
    assert!(line.contains(&format!("dry run: {}", invoice["outcome"].as_str().expect("outcome"))), "{line}");

    let text = ws.stdout(&["incident", FAILED_INVOICE]);
    let plan_id = invoice["planId"].as_str().expect("plan id");
    for expected in [
        format!("incident: run {FAILED_INVOICE} planned (advisory)"),
        format!("plan {plan_id}"),
        // A step with its explanation: the checkpoint chosen and why, from the policy file.
        "6. branch_from_failure_checkpoint [branch_approved] compensable".to_owned(),
        "choose_checkpoint: the last checkpoint before tool step".to_owned(),
        "5. request_approval [ask_operator] idempotent  needs approval by oncall-sre, incident-commander".to_owned(),
        "nothing was written".to_owned(),
        "branch_approved [branch_from_failure_checkpoint] ok → would create run".to_owned(),
        "executions: none".to_owned(),
    ] {
        assert!(text.contains(&expected), "{backend}: {expected:?} in\n{text}");
    }

    if backend == "sqlite" {
        // What varies between runs of the test: times, the process, digests and the hashes
        // derived from them, the ids of the runs a dry run would create, the checkout's path.
        let filters = vec![
            (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", "[time]"),
            (r"pid \d+ on \S+\)", "pid [pid] on [host])"),
            (r"\b(plan|dry)-[0-9a-f]{16}\b", "$1-[hash]"),
            (r"policies [0-9a-f]{12}  playbooks [0-9a-f]{12}", "policies [digest]  playbooks [digest]"),
            (r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", "[new run]"),
        ];
        let text = text.replace(env!("CARGO_MANIFEST_DIR"), "[repo]");
        let list = list.replace(env!("CARGO_MANIFEST_DIR"), "[repo]");
        insta::with_settings!({filters => filters}, {
            insta::assert_snapshot!("incident_advisory_invoice", text);
            insta::assert_snapshot!("incidents_advisory_examples", list);
        });
    }

    // The daemon's log says what the dry run would have done, not that it did it.
    assert!(log.contains("store runtime would create a run"), "{backend}: {log}");
    assert!(!log.contains("store runtime created a run"), "{backend}: {log}");
}

#[test]
fn advisory_incidents_show_their_plan_and_dry_run_on_sqlite() {
    advisory_incidents_show_their_plan_and_dry_run("sqlite");
}

#[test]
fn advisory_incidents_show_their_plan_and_dry_run_on_the_file_store() {
    advisory_incidents_show_their_plan_and_dry_run("file");
}

#[test]
fn advisory_incidents_show_their_plan_and_dry_run_on_postgres() {
    advisory_incidents_show_their_plan_and_dry_run("postgres");
}

#[test]
fn incidents_filter_by_state_and_since() {
    let ws = Workspace::new("sqlite").expect("sqlite");
    ws.import_examples();
    let daemon = ws.serve_advisory();
    ws.wait_for_the_example_incidents();
    daemon.stop();
    let count = |args: &[&str]| {
        let mut all = vec!["incidents", "--json"];
        all.extend_from_slice(args);
        ws.json(&all).as_array().map_or(usize::MAX, Vec::len)
    };
    assert_eq!(count(&["--status", "planned"]), 7);
    assert_eq!(count(&["--status", "failed"]), 0);
    assert_eq!(count(&["--since", "1h"]), 7, "found within the hour");
    assert_eq!(count(&["--since", "2000-01-01T00:00:00Z"]), 7);
    assert_eq!(count(&["--since", "2999-01-01T00:00:00Z"]), 0, "none found after a future time");
    assert_eq!(count(&["--status", "planned", "--since", "2999-01-01T00:00:00Z"]), 0);
    let none = ws.salvage(&["incidents", "--status", "escalated"]);
    assert!(none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no incidents matching the filters"));
}

#[test]
fn an_unknown_status_or_since_exits_2_naming_the_valid_values() {
    let ws = Workspace::new("sqlite").expect("sqlite");
    ws.import_examples();
    let out = ws.salvage(&["incidents", "--status", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("claimed, applying, planned, applied, escalated, failed, settled"),
        "every valid state is named: {stderr}"
    );
    let out = ws.salvage(&["incidents", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("neither a duration") && stderr.contains("RFC 3339"), "{stderr}");
    assert_eq!(ws.salvage(&["incidents", "--since", "400d"]).status.code(), Some(2), "past the 366-day bound");
}

#[test]
fn an_unknown_run_exits_with_the_not_found_code_and_a_run_never_handled_says_so() {
    let ws = Workspace::new("sqlite").expect("sqlite");
    ws.import_examples();
    let unknown = ws.salvage(&["incident", "no-such-run"]);
    let inspect = ws.salvage(&["inspect", "no-such-run"]);
    assert_eq!(unknown.status.code(), inspect.status.code(), "the code every command gives an unknown run");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("run \"no-such-run\" not found"));
    let never = ws.salvage(&["incident", HEALTHY]);
    assert_eq!(never.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&never.stderr);
    assert!(stderr.contains("has no incident record") && stderr.contains("salvage serve"), "{stderr}");
    let empty = ws.salvage(&["incidents"]);
    assert!(empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("no incidents in"), "nothing handled yet");
    let executions = ws.salvage(&["executions"]);
    let note = String::from_utf8_lossy(&executions.stderr);
    assert!(note.contains("no executions in") && !note.contains("salvage incidents"), "no daemon, no hint: {note}");
}

/// `apply --dry-run` runs the store runtime over the overlay: its log line says it would create
/// the run (the advisory observation), and names it `would_create`, not `created`.
#[test]
fn a_dry_run_logs_that_the_store_runtime_would_create_a_run() {
    let ws = Workspace::new("sqlite").expect("sqlite");
    ws.import_examples();
    let playbooks = root().join("playbooks");
    let policies = root().join("policies");
    let out = ws
        .command()
        .args(["--log", "info", "apply", FAILED_INVOICE, "--dry-run", "--yes", "--as", "alice", "--playbooks"])
        .arg(&playbooks)
        .arg("--policies")
        .arg(&policies)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code().is_some_and(|code| code <= 1), "{stderr}");
    let line = stderr.lines().find(|line| line.contains("store runtime")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("store runtime would create a run") && line.contains("would_create="), "{line}");
    assert!(!line.contains(" created="), "{line}");
    assert!(ws.json(&["runs", "--json"]).as_array().is_some_and(|runs| runs.len() == 12), "nothing was written");
}

/// An enforce daemon against a live runtime: the tool fails on the run and on the branch the
/// recovery made; a person denies a second try. The failed branch is a new incident linked to
/// the recovery: `incident RUN` shows the execution and the follow-up, `incident BRANCH` what
/// it is linked to, and `incidents` both.
#[test]
fn a_failed_branch_of_a_recovery_is_shown_as_a_follow_up_of_its_incident() {
    use runtime_server::{ServerOptions, ToolPolicy};
    let dir = tempfile::tempdir().expect("temp");
    let playbooks = dir.path().join("playbooks");
    std::fs::create_dir_all(&playbooks).expect("mkdir");
    for entry in std::fs::read_dir(root().join("playbooks")).expect("read").filter_map(Result::ok) {
        if entry.path().extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(entry.path()).expect("read").replace("duration: 1m", "duration: 1s");
            std::fs::write(playbooks.join(entry.file_name()), text).expect("write");
        }
    }
    let live = live_support::Live::with_playbooks(
        ServerOptions::new().policy("send_invoice", ToolPolicy::fail_first(2)),
        &playbooks,
    );
    let daemon = live.serve(&["--mode", "enforce"]);
    let run = live.incident("send_invoice", "INV-21");
    let execution = live_support::wait_for("the approval request", || {
        live.execution_of(&run)
            .filter(|e| e["status"] == "waiting_for_approval")
            .and_then(|e| e["executionId"].as_str().map(str::to_owned))
    });
    let approve = ["approve", &execution, "ask_operator", "--as", "oncall-sre", "--reason", "checked", "--json"];
    let approved = live.salvage(&approve);
    assert!(approved.status.success(), "approve: {}", live_support::text(&approved.stderr));
    let asked_again: Value = serde_json::from_slice(&approved.stdout).expect("approve --json");
    let branch = asked_again["createdRuns"]["branch_approved"].as_str().expect("branch").to_owned();
    let denied = live.salvage(&["deny", &execution, "ask_operator", "--as", "oncall-sre", "--reason", "stop"]);
    assert!(denied.status.success(), "{}", live_support::text(&denied.stderr));
    let follow_up = live_support::wait_for("the follow-up incident", || {
        // Read while the daemon works: a read that fails now is tried again.
        let detail: Value = serde_json::from_slice(&live.salvage(&["incident", &run, "--json"]).stdout).ok()?;
        let follow_up = detail["followUps"].as_array()?.first()?.clone();
        (follow_up["state"] == "escalated").then_some((detail, follow_up))
    });
    assert!(daemon.terminate().success());

    let (detail, follow_up) = follow_up;
    assert_eq!(detail["state"], "applied");
    assert_eq!(detail["mode"], "enforce");
    assert_eq!(detail["executionId"], execution.as_str());
    let executions = detail["executions"].as_array().expect("executions");
    assert_eq!(executions.len(), 1, "{executions:?}");
    assert_eq!(executions[0]["executionId"], execution.as_str());
    assert_eq!(executions[0]["status"], "abandoned", "the person denied a second try");
    assert_eq!(executions[0]["createdRuns"]["branch_approved"], branch.as_str());
    assert_eq!(detail["dryRun"], Value::Null, "enforce records no dry run");
    assert_eq!(follow_up["runId"], branch.as_str());
    assert_eq!(follow_up["relation"], "created by the recovery");
    assert_eq!(follow_up["executionId"], execution.as_str());

    let linked = live.json(&["incident", &branch, "--json"]);
    assert_eq!(linked["linkedTo"]["executionId"], execution.as_str());
    assert_eq!(linked["linkedTo"]["incidentRunId"], run.as_str());
    assert_eq!(linked["followUps"], Value::Array(vec![]), "the link points one way");

    let text = live_support::text(&live.salvage(&["incident", &run]).stdout);
    assert!(text.contains(&format!("{execution} abandoned")), "{text}");
    assert!(text.contains(&format!("branch_approved → {branch}")), "{text}");
    assert!(text.contains("follow-up incidents (1)"), "{text}");
    assert!(text.contains(&format!("{branch} escalated (created by the recovery {execution})")), "{text}");
    let text = live_support::text(&live.salvage(&["incident", &branch]).stdout);
    assert!(text.contains(&format!("linked to: created by the recovery {execution} (of run {run})")), "{text}");
    let list = live_support::text(&live.salvage(&["incidents"]).stdout);
    let line = |id: &str| list.lines().find(|l| l.contains(id)).map(str::to_owned).unwrap_or_default();
    assert!(line(&run).contains(&execution) && line(&run).contains("1 follow-up(s)"), "{list}");
    assert!(line(&branch).contains(&format!("← {execution}")), "{list}");
}
