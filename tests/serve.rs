//! `salvage serve` and `salvage status` end to end: the real binary as a daemon, other
//! processes (`import`, `approve`, `status`) talking to it through real SQLite and file stores
//! in temp directories. Waits poll with generous bounds that only keep a broken build from
//! hanging; nothing here measures speed.

#[path = "common/scratch.rs"]
mod scratch;

#[path = "common/wait.rs"]
mod wait;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use wait::{PATIENCE, wait_for};

use salvage::execute::JournalEntry;
use salvage::plan::RecoverySet;
use salvage::store::{ExecutionStore, FileStore, SqliteStore, StateStore};

const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
const FAILED_VERIFIER: &str = "b082b9bc-0861-56d5-b884-37bbd428657e";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_salvage"))
}

/// A working directory with its own copies of the shipped playbooks and policies.
struct Workspace {
    dir: tempfile::TempDir,
    store: String,
}

impl Workspace {
    fn new(backend: &str) -> Workspace {
        let dir = tempfile::tempdir().expect("temp");
        scratch::copy_shipped_sets(dir.path());
        let store = match backend {
            "sqlite" => format!("sqlite:{}", dir.path().join("salvage.db").display()),
            _ => format!("file:{}", dir.path().join("runs").display()),
        };
        Workspace { dir, store }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `salvage ARGS` against this store, from the workspace; waits for it.
    fn salvage(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary())
            .args(args)
            .current_dir(self.dir.path())
            .env("SALVAGE_STORE", &self.store)
            .env_remove("SALVAGE_CONFIG")
            .env_remove("SALVAGE_LOG")
            .output()
            .expect("run salvage")
    }

    fn import(&self, run_id: &str) {
        let file = root().join("examples/runs").join(format!("{run_id}.json"));
        let out = self.salvage(&["import", file.to_str().expect("utf-8")]);
        assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.salvage(args);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)))
    }

    fn status(&self) -> Value {
        self.json(&["status", "--json"])
    }

    /// The status, or `None` while the store does not exist yet.
    fn try_status(&self) -> Option<Value> {
        serde_json::from_slice(&self.salvage(&["status", "--json"]).stdout).ok()
    }

    fn serve(&self, args: &[&str]) -> Daemon {
        self.serve_logging_to(&self.path(&format!("serve-{}.log", unique())), args)
    }

    fn serve_logging_to(&self, log: &Path, args: &[&str]) -> Daemon {
        let log = std::fs::File::create(log).expect("log");
        let child = Command::new(binary())
            .arg("serve")
            .args(args)
            .current_dir(self.dir.path())
            .env("SALVAGE_STORE", &self.store)
            .env("SALVAGE_LOG", "info")
            .env_remove("SALVAGE_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start serve");
        let daemon = Daemon { child: Some(child) };
        let pid = daemon.pid();
        wait_for("the daemon to report running", || {
            let status = self.try_status()?;
            (status["running"] == true && status["daemon"]["pid"] == pid).then_some(())
        });
        daemon
    }

    async fn sqlite(&self) -> Arc<SqliteStore> {
        Arc::new(SqliteStore::open(self.path("salvage.db")).await.expect("open sqlite"))
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// A running `salvage serve`; killed if a test fails before stopping it.
struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.pid()).expect("pid");
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill");
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
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

fn counter(status: &Value, name: &str) -> u64 {
    status["daemon"]["incidents"][name].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn advisory_serve_plans_and_dry_runs_a_new_failed_run_and_writes_no_run() {
    for backend in ["sqlite", "file"] {
        let ws = Workspace::new(backend);
        let daemon = ws.serve(&["--mode", "advisory", "--playbooks", "playbooks", "--policies", "policies"]);
        // Another process writes a failed run while the daemon runs.
        ws.import(FAILED_INVOICE);
        let runs_before = ws.json(&["runs", "--json"]);
        wait_for("the incident to be planned", || (counter(&ws.status(), "planned") >= 1).then_some(()));

        let dry_run_key = format!("serve/dry-run/{FAILED_INVOICE}");
        let incident_key = format!("serve/incident/{FAILED_INVOICE}");
        let (dry_run, incident) = match backend {
            "sqlite" => {
                let store = ws.sqlite().await;
                (store.get_state(&dry_run_key).await, store.get_state(&incident_key).await)
            }
            _ => {
                let store = FileStore::open(ws.path("runs")).await.expect("file store");
                (store.get_state(&dry_run_key).await, store.get_state(&incident_key).await)
            }
        };
        let dry_run = dry_run.expect("read").expect("the plan and dry run are recorded").body;
        assert_eq!(dry_run["plan"]["runId"], FAILED_INVOICE, "{backend}");
        assert_eq!(dry_run["plan"]["playbook"]["name"], "side-effecting-tool-failed", "{backend}");
        let steps: Vec<&str> =
            dry_run["dryRun"]["steps"].as_array().expect("steps").iter().filter_map(|s| s["stepId"].as_str()).collect();
        assert!(steps.contains(&"ask_operator") && steps.contains(&"branch_approved"), "{backend}: {steps:?}");
        assert!(
            !dry_run["dryRun"]["runsItWouldWrite"].as_array().expect("runs").is_empty(),
            "{backend}: the branch it would create is shown"
        );
        let incident = incident.expect("read").expect("incident record").body;
        assert_eq!(incident["state"], "planned", "{backend}");
        // The file store's revisions are content hashes, SQLite's count saves: either way the
        // record names the revision that was handled.
        assert_eq!(incident["revision"], dry_run["plan"]["runRevision"], "{backend}");
        assert_eq!(incident["policyDigest"], dry_run["plan"]["policyDigest"]);

        assert_eq!(ws.json(&["runs", "--json"]), runs_before, "{backend}: advisory writes no run");
        assert_eq!(ws.json(&["executions", "--json"]), Value::Array(vec![]), "{backend}: and no execution");
        assert!(daemon.terminate().success(), "{backend}: SIGTERM exits 0");
        let status = ws.status();
        assert_eq!(status["running"], false);
        assert!(status["daemon"]["stoppedAt"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn enforce_serve_pauses_for_an_approval_answered_from_another_process() {
    for backend in ["sqlite", "file"] {
        let ws = Workspace::new(backend);
        ws.import(FAILED_INVOICE);
        let daemon = ws.serve(&["--mode", "enforce", "--playbooks", "playbooks", "--policies", "policies"]);
        let execution_id = wait_for("a pending approval", || {
            let status = ws.status();
            status["pendingApprovals"][0]["executionId"].as_str().map(str::to_owned)
        });
        let status = ws.status();
        assert_eq!(status["pendingApprovals"][0]["step"], "ask_operator", "{backend}");
        assert_eq!(status["pendingApprovals"][0]["runId"], FAILED_INVOICE, "{backend}");

        let out = ws.salvage(&["approve", &execution_id, "ask_operator", "--as", "oncall-sre"]);
        assert!(out.status.success(), "{backend}: approve: {}", String::from_utf8_lossy(&out.stderr));
        // The store runtime records the resume of the branch for the runtime that owns it: the
        // branch is still paused, so the playbook's await_run waits for it, parked.
        wait_for("the execution to wait for the branch", || {
            let executions = ws.json(&["executions", "--json"]);
            let ours = executions.as_array()?.iter().find(|e| e["executionId"] == execution_id.as_str())?.clone();
            (ours["status"] == "waiting" && ours["node"] == "settle_approved").then_some(())
        });
        let status = ws.status();
        let pending = status["pendingApprovals"].as_array().expect("list");
        assert!(pending.iter().all(|p| p["executionId"] != execution_id.as_str()), "{backend}: {status}");
        // The branch it created waits for its runtime: not a new incident.
        wait_for("the incident to be counted", || (counter(&ws.status(), "handled") >= 1).then_some(()));
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(counter(&ws.status(), "handled"), 1, "{backend}");
        assert!(daemon.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incident_is_handled_once_across_restarts() {
    for backend in ["sqlite", "file"] {
        let ws = Workspace::new(backend);
        ws.import(FAILED_INVOICE);
        let args = ["--mode", "advisory", "--playbooks", "playbooks", "--policies", "policies"];
        let daemon = ws.serve(&args);
        wait_for("the first incident", || (counter(&ws.status(), "planned") >= 1).then_some(()));
        assert!(daemon.terminate().success());
        let key = format!("serve/incident/{FAILED_INVOICE}");
        let record = || async {
            match backend {
                "sqlite" => ws.sqlite().await.get_state(&key).await,
                _ => FileStore::open(ws.path("runs")).await.expect("file store").get_state(&key).await,
            }
            .expect("read")
            .expect("record")
        };
        let first = record().await;

        let daemon = ws.serve(&args);
        ws.import(FAILED_VERIFIER);
        wait_for("the second incident", || (counter(&ws.status(), "planned") >= 1).then_some(()));
        let status = ws.status();
        assert_eq!(counter(&status, "planned"), 1, "{backend}: only the new incident was planned: {status}");
        assert_eq!(counter(&status, "handled"), 2, "{backend}: both are counted as handled");
        assert_eq!(record().await, first, "{backend}: the first incident's record is untouched");
        assert!(daemon.terminate().success());
    }
}

const SLOW_PLAYBOOK: &str = "playbook: slow-recovery
version: 1
description: Waits, then tells someone; long enough to be interrupted.
match:
  incident: any
start: pause
steps:
  pause:
    action: wait
    duration: 3s
    next: tell
  tell:
    action: notify
    message: recovered after a pause
    next: resolved
ends:
  resolved: { outcome: resolved }
";

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_wait_stops_at_once_and_a_restart_waits_only_the_rest() {
    let ws = Workspace::new("sqlite");
    std::fs::create_dir(ws.path("slow")).expect("mkdir");
    std::fs::write(ws.path("slow/slow.yaml"), SLOW_PLAYBOOK).expect("write");
    ws.import(FAILED_VERIFIER);
    let args = ["--mode", "enforce", "--playbooks", "slow", "--policies", "policies"];
    let daemon = ws.serve(&args);
    let execution_id = wait_for("the execution to start", || {
        let executions = ws.json(&["executions", "--json"]);
        executions[0]["executionId"].as_str().map(str::to_owned)
    });
    // Mid-step (the 3 s wait): stop. The wait's clock is journalled; nothing is lost by stopping.
    assert!(daemon.terminate().success(), "SIGTERM exits 0");
    let executions = ws.json(&["executions", "--json"]);
    assert!(
        matches!(executions[0]["status"].as_str(), Some("running" | "waiting")),
        "stopped between steps or parked: {executions}"
    );

    let daemon = ws.serve(&args);
    wait_for("the execution to resolve after the restart", || {
        (ws.json(&["executions", "--json"])[0]["status"] == "resolved").then_some(())
    });
    assert!(daemon.terminate().success());
    let store = ws.sqlite().await;
    let journal = store.journal(&execution_id).await.expect("journal");
    let entries: Vec<JournalEntry> =
        journal.iter().map(|r| serde_json::from_value(r.body.clone()).expect("entry")).collect();
    let outcomes = |step: &str| {
        entries.iter().filter(|e| matches!(e, JournalEntry::Outcome { step_id, .. } if step_id == step)).count()
    };
    let timers: Vec<&String> = entries
        .iter()
        .filter_map(|e| match e {
            JournalEntry::Timer { until, .. } => Some(until),
            _ => None,
        })
        .collect();
    assert_eq!(timers.len(), 1, "the wait's clock started once, before the restart: {entries:#?}");
    assert_eq!((outcomes("pause"), outcomes("tell")), (1, 1), "{entries:#?}");
    let waited_until = entries.iter().find_map(|e| match e {
        JournalEntry::Outcome { step_id, detail, .. } if step_id == "pause" => {
            detail["until"].as_str().map(str::to_owned)
        }
        _ => None,
    });
    assert_eq!(waited_until.as_deref(), Some(timers[0].as_str()), "the wait ended when its first clock said");
}

fn policy_digest(ws: &Workspace) -> String {
    RecoverySet::load(&ws.path("playbooks"), &ws.path("policies")).expect("valid set").policies.digest().to_owned()
}

fn wait_for_reload(ws: &Workspace, previous_count: u64, outcome: &str) -> Value {
    wait_for(&format!("a reload with outcome {outcome}"), || {
        let status = ws.status();
        let counts = &status["daemon"]["reloads"];
        let total = ["applied", "unchanged", "rejected"].iter().map(|k| counts[k].as_u64().unwrap_or(0)).sum::<u64>();
        (total > previous_count && status["daemon"]["lastReload"]["outcome"] == outcome).then_some(status)
    })
}

fn reload_count(ws: &Workspace) -> u64 {
    let status = ws.status();
    ["applied", "unchanged", "rejected"].iter().map(|k| status["daemon"]["reloads"][k].as_u64().unwrap_or(0)).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_are_applied_rejected_with_positions_or_unchanged_and_status_shows_them() {
    let ws = Workspace::new("sqlite");
    let daemon = ws.serve(&["--mode", "advisory", "--playbooks", "playbooks", "--policies", "policies"]);
    let approvals = ws.path("policies/approvals.rhai");
    let original = std::fs::read_to_string(&approvals).expect("read");
    let first = policy_digest(&ws);
    assert_eq!(ws.status()["daemon"]["active"]["policyDigest"], first);

    // A valid edit goes live.
    let edited = format!("{original}\n// reviewed\n");
    let before = reload_count(&ws);
    std::fs::write(&approvals, &edited).expect("write");
    let second = policy_digest(&ws);
    let status = wait_for_reload(&ws, before, "applied");
    assert_eq!(status["daemon"]["active"]["policyDigest"], second);
    assert_eq!(status["diskDiffersFromActive"], false);

    // A broken edit is rejected with where it is broken; the last good set stays.
    let before = reload_count(&ws);
    std::fs::write(&approvals, format!("{edited}\nfn broken( {{\n")).expect("write");
    let status = wait_for_reload(&ws, before, "rejected");
    assert_eq!(status["daemon"]["active"]["policyDigest"], second, "the old set is still active");
    let diagnostic = &status["daemon"]["lastReload"]["diagnostics"][0];
    assert!(diagnostic["file"].as_str().unwrap_or("").ends_with("approvals.rhai"), "{diagnostic}");
    assert!(diagnostic["line"].as_u64() > Some(0) && diagnostic["column"].as_u64() > Some(0), "{diagnostic}");
    assert_eq!(status["diskDiffersFromActive"], true);
    assert_eq!(status["onDisk"]["loads"], false);
    let text = String::from_utf8_lossy(&ws.salvage(&["status"]).stdout).into_owned();
    assert!(text.contains("rejected") && text.contains("approvals.rhai:"), "{text}");

    // Back to the active content: nothing to apply.
    let before = reload_count(&ws);
    std::fs::write(&approvals, &edited).expect("write");
    let status = wait_for_reload(&ws, before, "unchanged");
    assert_eq!(status["daemon"]["active"]["policyDigest"], second);

    // SIGHUP reloads too.
    let before = reload_count(&ws);
    daemon.signal(libc::SIGHUP);
    let status = wait_for_reload(&ws, before, "unchanged");
    assert_eq!(status["daemon"]["lastReload"]["trigger"], "sighup");
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_editor_save_pattern_and_a_replaced_directory_are_picked_up() {
    let ws = Workspace::new("sqlite");
    let daemon = ws.serve(&["--mode", "advisory", "--playbooks", "playbooks", "--policies", "policies"]);
    let policies = ws.path("policies");
    let approvals = policies.join("approvals.rhai");
    let original = std::fs::read_to_string(&approvals).expect("read");
    let expect_active = |label: &str| {
        let wanted = policy_digest(&ws);
        wait_for(label, || (ws.status()["daemon"]["active"]["policyDigest"] == wanted.as_str()).then_some(()));
    };

    std::fs::write(&approvals, format!("{original}\n// in place\n")).expect("write");
    expect_active("a write in place");

    let temp = policies.join(".approvals.rhai.swp");
    std::fs::write(&temp, format!("{original}\n// temp and rename\n")).expect("write");
    std::fs::rename(&temp, &approvals).expect("rename");
    expect_active("a temp file renamed over the policy");

    std::fs::remove_file(&approvals).expect("remove");
    std::thread::sleep(Duration::from_millis(150));
    std::fs::write(&approvals, format!("{original}\n// deleted and recreated\n")).expect("write");
    expect_active("a delete and recreate");

    // The whole directory replaced (as a deploy does: build next to it, swap in).
    let staged = ws.path("policies.new");
    std::fs::create_dir(&staged).expect("mkdir");
    for entry in std::fs::read_dir(&policies).expect("read").filter_map(Result::ok) {
        std::fs::copy(entry.path(), staged.join(entry.file_name())).expect("copy");
    }
    std::fs::write(staged.join("approvals.rhai"), format!("{original}\n// new directory\n")).expect("write");
    std::fs::rename(&policies, ws.path("policies.old")).expect("move away");
    std::fs::rename(&staged, &policies).expect("swap in");
    expect_active("a replaced directory");
    // ...and the new directory is watched.
    std::fs::write(policies.join("approvals.rhai"), format!("{original}\n// edited in the new directory\n"))
        .expect("write");
    expect_active("an edit in the replaced directory");
    assert!(daemon.terminate().success());
}

#[test]
fn status_without_a_daemon_says_so_and_exits_1() {
    let ws = Workspace::new("sqlite");
    ws.import(FAILED_INVOICE);
    let out = ws.salvage(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("never ran on this store"));
}

#[test]
fn serve_refuses_to_start_from_a_broken_set_and_names_the_file() {
    let ws = Workspace::new("sqlite");
    std::fs::write(ws.path("policies/approvals.rhai"), "fn requires_approval(step, ctx) {\n").expect("write");
    let out = ws.salvage(&["serve", "--playbooks", "playbooks", "--policies", "policies"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("approvals.rhai"), "{stderr}");
}

const FAILED_WORKFLOW_CHILD: &str = "bc96e94c-2c82-545b-8884-4d94b2e595d4";

#[tokio::test(flavor = "multi_thread")]
async fn the_simulate_gate_rejects_a_reload_that_drops_an_approval_and_applies_a_harmless_one() {
    let ws = Workspace::new("sqlite");
    ws.import(FAILED_WORKFLOW_CHILD);
    let daemon = ws.serve(&[
        "--mode",
        "advisory",
        "--reload-gate",
        "simulate",
        "--playbooks",
        "playbooks",
        "--policies",
        "policies",
    ]);
    assert_eq!(ws.status()["daemon"]["reloadGate"], "simulate");
    let approvals = ws.path("policies/approvals.rhai");
    let original = std::fs::read_to_string(&approvals).expect("read");
    let first = policy_digest(&ws);

    // The workflow branch stops asking (the resume asks instead): an approval that was
    // required is not any more, which is dangerous, so the old set stays.
    let playbook = ws.path("playbooks/workflow-child-run-failure.yaml");
    let shipped = std::fs::read_to_string(&playbook).expect("read");
    let branch_asks = "    checkpoint: policy.choose_checkpoint\n    approval: always\n";
    let resume = "  resume_workflow:\n    action: resume_run\n";
    assert!(shipped.contains(branch_asks) && shipped.contains(resume), "the shipped playbook changed");
    let dangerous = shipped
        .replacen(
            branch_asks,
            "    checkpoint: policy.choose_checkpoint\n    approval: never\n    why: the resume asks\n",
            1,
        )
        .replacen(resume, "  resume_workflow:\n    action: resume_run\n    approval: always\n", 1);
    let before = reload_count(&ws);
    std::fs::write(&playbook, dangerous).expect("write");
    let status = wait_for_reload(&ws, before, "rejected");
    let reason = status["daemon"]["lastReload"]["reason"].as_str().unwrap_or("").to_owned();
    assert!(reason.contains("simulate gate") && reason.contains("dangerous"), "{reason}");
    assert!(status["daemon"]["lastReload"]["gate"]["counts"]["dangerous"].as_u64() >= Some(1), "{status}");
    assert_eq!(status["daemon"]["active"]["policyDigest"], first);
    assert_eq!(status["diskDiffersFromActive"], true, "disk holds the refused set");

    // Back to the shipped playbook (the active set: unchanged), then a comment in a policy
    // changes no decision: applied.
    let before = reload_count(&ws);
    std::fs::write(&playbook, &shipped).expect("write");
    wait_for_reload(&ws, before, "unchanged");
    let before = reload_count(&ws);
    std::fs::write(&approvals, format!("{original}\n// reviewed, no change\n")).expect("write");
    let status = wait_for_reload(&ws, before, "applied");
    assert_eq!(status["daemon"]["active"]["policyDigest"], policy_digest(&ws));
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn enforce_serve_recovers_each_example_incident_once_and_does_not_chase_its_own_writes() {
    let ws = Workspace::new("sqlite");
    let out = ws.salvage(&["import", root().join("examples/runs").to_str().expect("utf-8")]);
    assert!(out.status.success());
    let daemon = ws.serve(&["--mode", "enforce", "--playbooks", "playbooks", "--policies", "policies"]);
    let count = || ws.json(&["executions", "--json"]).as_array().map_or(0, Vec::len);
    wait_for("every incident to be handled", || (counter(&ws.status(), "handled") >= 7).then_some(()));
    // Executions write to the runs they recover (resume requests, approvals, save times) and
    // create branches and replays paused for their runtime: none of that is a new incident.
    std::thread::sleep(Duration::from_secs(3));
    let settled = count();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(), settled, "no new executions once the incidents are handled");
    let status = ws.status();
    assert_eq!(counter(&status, "handled"), 7, "the 7 example incidents, once each: {status}");
    assert_eq!(settled, 7, "one execution per incident");
    assert!(daemon.terminate().success());
}

#[test]
fn a_second_daemon_on_the_same_store_is_refused() {
    let ws = Workspace::new("sqlite");
    let daemon = ws.serve(&["--mode", "advisory", "--playbooks", "playbooks", "--policies", "policies"]);
    let out = ws.salvage(&["serve", "--mode", "advisory", "--playbooks", "playbooks", "--policies", "policies"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another salvage serve") && stderr.contains(&daemon.pid().to_string()), "{stderr}");
    assert!(daemon.terminate().success());
}

#[test]
fn json_logs_carry_the_incident_and_step_spans() {
    let ws = Workspace::new("sqlite");
    let log = ws.path("serve.json.log");
    let daemon = ws.serve_logging_to(
        &log,
        &["--log-format", "json", "--mode", "advisory", "--playbooks", "playbooks", "--policies", "policies"],
    );
    ws.import(FAILED_INVOICE);
    wait_for("the incident to be planned", || (counter(&ws.status(), "planned") >= 1).then_some(()));
    assert!(daemon.terminate().success());
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<Value> = text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
    assert!(lines.iter().any(|l| l["fields"]["message"] == "salvage serve started."), "{text}");
    let spans = |line: &Value| -> Vec<String> {
        line["spans"]
            .as_array()
            .map_or_else(Vec::new, |spans| spans.iter().filter_map(|s| s["name"].as_str().map(str::to_owned)).collect())
    };
    let in_step = lines.iter().find(|l| spans(l).contains(&"step".to_owned())).expect("a line inside a step span");
    assert_eq!(spans(in_step)[0], "incident", "{in_step}");
    let incident = in_step["spans"][0].clone();
    assert_eq!(incident["run_id"], FAILED_INVOICE, "{in_step}");
}
