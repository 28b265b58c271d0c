//! The simulate reload gate through the real daemon: it never locks the fix out (a set that
//! failed closed is replaced by the good one), it gates the set a daemon starts with against
//! the last applied one, and a person accepts a gated set with `salvage reload --accept`.

#[path = "common/scratch.rs"]
mod scratch;

#[path = "common/wait.rs"]
mod wait;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wait::{PATIENCE, wait_for};

use salvage::plan::RecoverySet;

const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
const SERVE: [&str; 8] =
    ["--mode", "advisory", "--reload-gate", "simulate", "--playbooks", "playbooks", "--policies", "policies"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("temp");
        scratch::copy_shipped_sets(dir.path());
        Workspace { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_salvage"));
        command
            .current_dir(self.dir.path())
            .env("SALVAGE_STORE", format!("sqlite:{}", self.path("salvage.db").display()))
            .env_remove("SALVAGE_CONFIG")
            .env("NO_COLOR", "1");
        command
    }

    fn salvage(&self, args: &[&str]) -> std::process::Output {
        self.command().args(args).env_remove("SALVAGE_LOG").output().expect("run salvage")
    }

    fn status(&self) -> Option<Value> {
        serde_json::from_slice(&self.salvage(&["status", "--json"]).stdout).ok()
    }

    fn serve(&self) -> Daemon {
        let log = std::fs::File::create(self.path("serve.log")).expect("log");
        let child = self
            .command()
            .arg("serve")
            .args(SERVE)
            .env("SALVAGE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start serve");
        let daemon = Daemon { child: Some(child) };
        let pid = daemon.child.as_ref().map(Child::id).unwrap_or(0);
        wait_for("the daemon to run", || {
            let status = self.status()?;
            (status["running"] == true && status["daemon"]["pid"] == pid).then_some(())
        });
        daemon
    }

    fn policy_digest(&self) -> String {
        let set = RecoverySet::load(&self.path("playbooks"), &self.path("policies")).expect("the set loads");
        set.policies.digest().to_owned()
    }
}

struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    fn stop(mut self) {
        let mut child = self.child.take().expect("child");
        let pid = i32::try_from(child.id()).expect("pid");
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + PATIENCE;
        while child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "serve did not stop");
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

/// `choose_checkpoint` broken at run time (a field its map lacks): the set loads and every
/// plan that chooses a checkpoint fails closed.
fn break_checkpoints(ws: &Workspace) -> String {
    let file = ws.path("policies/checkpoints.rhai");
    let good = std::fs::read_to_string(&file).expect("read");
    let broken = good.replacen(
        "fn choose_checkpoint(ctx) {\n",
        "fn choose_checkpoint(ctx) {\n    let limits = #{ window: 60 };\n    let typo = limits.windw;\n",
        1,
    );
    assert_ne!(broken, good);
    std::fs::write(&file, broken).expect("write");
    good
}

#[test]
fn the_gate_restores_a_fail_closed_set_gates_the_start_and_takes_an_accepted_set() {
    let ws = Workspace::new();
    let invoice = root().join("examples/runs").join(format!("{FAILED_INVOICE}.json"));
    assert!(ws.salvage(&["import", invoice.to_str().expect("utf-8")]).status.success());

    // A broken policy went live (the first set a daemon starts with has nothing to be gated
    // against); restoring the good file must not be refused as "approvals removed".
    let good = break_checkpoints(&ws);
    let broken_digest = ws.policy_digest();
    let daemon = ws.serve();
    std::fs::write(ws.path("policies/checkpoints.rhai"), &good).expect("restore");
    let good_digest = ws.policy_digest();
    let status = wait_for("the good set to be applied", || {
        let status = ws.status()?;
        (status["daemon"]["active"]["policyDigest"] == good_digest.as_str()).then_some(status)
    });
    assert_eq!(status["daemon"]["lastReload"]["outcome"], "applied", "{:#}", status["daemon"]["lastReload"]);
    daemon.stop();

    // The broken set while no daemon runs: the next one gates it against the set last applied
    // (failing closed where that set decided is dangerous) and keeps the good one.
    break_checkpoints(&ws);
    let daemon = ws.serve();
    let status = ws.status().expect("status");
    assert_eq!(status["daemon"]["active"]["policyDigest"], good_digest.as_str(), "{status:#}");
    let awaiting = &status["daemon"]["awaitingAcceptance"];
    assert_eq!(awaiting["proposed"]["policyDigest"], broken_digest.as_str(), "{status:#}");
    assert_eq!(awaiting["trigger"], "start");
    assert!(awaiting["reason"].as_str().is_some_and(|r| r.contains("dangerous change")), "{awaiting:#}");
    let fails_closed = status["daemon"]["lastReload"]["gate"]["dangerous"]
        .as_array()
        .expect("the dangerous changes")
        .iter()
        .any(|change| change["danger"] == "fails_closed");
    assert!(fails_closed, "{:#}", status["daemon"]["lastReload"]);
    let text = String::from_utf8_lossy(&ws.salvage(&["status"]).stdout).into_owned();
    assert!(text.contains("awaiting acceptance:") && text.contains("salvage reload --accept"), "{text}");

    // A person accepts it: recorded with who and when, applied by the daemon.
    let accepted = ws.salvage(&["reload", "--accept", "--as", "alice", "--json"]);
    assert!(accepted.status.success(), "{}", String::from_utf8_lossy(&accepted.stderr));
    let accepted: Value = serde_json::from_slice(&accepted.stdout).expect("json");
    assert_eq!(accepted["accepted"]["by"], "alice");
    assert!(accepted["accepted"]["at"].is_string());
    assert_eq!(accepted["signalled"], true);
    let status = wait_for("the accepted set to be applied", || {
        let status = ws.status()?;
        (status["daemon"]["active"]["policyDigest"] == broken_digest.as_str()).then_some(status)
    });
    let last = &status["daemon"]["lastReload"];
    assert_eq!(
        (&last["outcome"], &last["accepted"]["by"]),
        (&Value::from("applied"), &Value::from("alice")),
        "{last:#}"
    );
    assert!(status["daemon"].get("awaitingAcceptance").is_none(), "{status:#}");
    let text = String::from_utf8_lossy(&ws.salvage(&["status"]).stdout).into_owned();
    assert!(text.contains("last reload accepted by alice"), "{text}");

    // Nothing waits any more.
    let again = ws.salvage(&["reload", "--accept"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no recovery set waits for acceptance"));
    assert!(ws.salvage(&["reload"]).status.success(), "a plain reload asks the running daemon");
    daemon.stop();
    let without_daemon = ws.salvage(&["reload"]);
    assert_eq!(without_daemon.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&without_daemon.stderr).contains("no salvage serve runs on this store"));
}

#[test]
fn simulate_passes_restoring_a_set_that_failed_closed_and_flags_one_that_newly_fails_closed() {
    let ws = Workspace::new();
    let invoice = root().join("examples/runs").join(format!("{FAILED_INVOICE}.json"));
    assert!(ws.salvage(&["import", invoice.to_str().expect("utf-8")]).status.success());
    // `broken/` holds the set that fails closed, `policies/` the good one.
    let broken = ws.path("broken");
    std::fs::create_dir(&broken).expect("mkdir");
    let good = break_checkpoints(&ws);
    for entry in std::fs::read_dir(ws.path("policies")).expect("read").filter_map(Result::ok) {
        std::fs::copy(entry.path(), broken.join(entry.file_name())).expect("copy");
    }
    std::fs::write(ws.path("policies/checkpoints.rhai"), good).expect("restore");
    std::fs::create_dir(ws.path("deployed")).expect("mkdir");
    std::fs::rename(&broken, ws.path("deployed/policies")).expect("move");

    // Current: the broken set (deployed); proposed: the good one.
    let restore = ws.salvage(&["simulate", "--against", "deployed", "--policies", "policies", "--json"]);
    assert_eq!(restore.status.code(), Some(0), "{}", String::from_utf8_lossy(&restore.stderr));
    let document: Value = serde_json::from_slice(&restore.stdout).expect("json");
    assert_eq!(document["counts"]["dangerous"], 0, "{document:#}");
    assert!(document["counts"]["changed"].as_u64() > Some(0), "the approvals the failure added go away");

    // Current: the good set; proposed: the broken one.
    let output = ws.salvage(&["simulate", "--policies", "deployed/policies"]);
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("fail closed: no → yes  DANGEROUS: a policy fails on an incident the current set decided"),
        "{text}"
    );
}
