//! A workspace where salvage drives a live reference-like runtime: the test runtime server
//! (`tests/runtime_server`) writes its `FileRunStore` directory, salvage reads it as
//! `--store file:runs` and acts on it through the server with `protocol: agnostic-agents`.
//! Everything runs through the real binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::runtime_server::{RuntimeServer, ServerOptions};

#[path = "../common/wait.rs"]
mod wait;
pub use wait::{PATIENCE, wait_for};

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_salvage"))
}

/// The `salvage.yaml` of a live workspace: the store is the server's directory, every run is
/// owned by the server, the shipped playbooks and policies decide.
pub fn config(base_url: &str, playbooks: &Path, extra_http: &str) -> String {
    config_with(base_url, playbooks, &repo("policies"), extra_http)
}

/// [`config`] with another policy directory.
pub fn config_with(base_url: &str, playbooks: &Path, policies: &Path, extra_http: &str) -> String {
    format!(
        "store: file:runs\nplaybooks: {}\npolicies: {}\nbundles: bundles\n\
         approvals:\n  default_approvers: [oncall-sre]\n\
         runtimes:\n  agent: reference\n  workflow: reference\n  adapters:\n    reference:\n      kind: http\n\
         \x20     protocol: agnostic-agents\n      base_url: {base_url}\n      timeout: 20s\n{extra_http}",
        playbooks.display(),
        policies.display(),
    )
}

pub struct Live {
    pub dir: tempfile::TempDir,
    pub server: RuntimeServer,
}

impl Live {
    /// A workspace around a server started with `options` (its store is `runs/` here).
    pub fn new(options: ServerOptions) -> Live {
        Live::with_playbooks(options, &repo("playbooks"))
    }

    pub fn with_playbooks(options: ServerOptions, playbooks: &Path) -> Live {
        Live::with_sets(options, playbooks, None)
    }

    /// A workspace with its own playbooks and, when given, a policy directory (else a copy of the
    /// shipped policies in `policies/`, which a test may edit).
    pub fn with_sets(options: ServerOptions, playbooks: &Path, policies: Option<&Path>) -> Live {
        let dir = tempfile::tempdir().expect("temp");
        let server = RuntimeServer::start(options.store_dir(dir.path().join("runs")));
        let policies = match policies {
            Some(policies) => policies.to_path_buf(),
            None => {
                let copy = dir.path().join("policies");
                std::fs::create_dir(&copy).expect("mkdir");
                for entry in std::fs::read_dir(repo("policies")).expect("read").filter_map(Result::ok) {
                    if entry.path().is_file() {
                        std::fs::copy(entry.path(), copy.join(entry.file_name())).expect("copy");
                    }
                }
                copy
            }
        };
        std::fs::write(dir.path().join("salvage.yaml"), config_with(server.base_url(), playbooks, &policies, ""))
            .expect("config");
        Live { dir, server }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("SALVAGE_STORE")
            .env_remove("SALVAGE_CONFIG")
            .env_remove("SALVAGE_TEST_CRASH_AT")
            .env_remove("SALVAGE_ACTOR")
            .env("NO_COLOR", "1")
            .env("SALVAGE_LOG", "warn");
        command
    }

    pub fn salvage(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run salvage")
    }

    /// `salvage ARGS` with a crash switch (`intent|effect|outcome:STEP`): it must abort.
    pub fn crashing(&self, point: &str, args: &[&str]) -> Output {
        let output = self.command(args).env("SALVAGE_TEST_CRASH_AT", point).output().expect("run salvage");
        assert_eq!(output.status.code(), None, "{point}: salvage must abort: {}", text(&output.stderr));
        output
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let output = self.salvage(args);
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}{}", text(&output.stdout), text(&output.stderr)))
    }

    /// A new incident: the server's agent runs `task` for an invoice.
    pub fn incident(&self, task: &str, invoice: &str) -> String {
        let summary = self.server.create_run(json!({"task": task, "invoiceId": invoice, "amount": 120}));
        summary["id"].as_str().expect("run id").to_owned()
    }

    pub fn executions(&self) -> Vec<Value> {
        self.json(&["executions", "--json"]).as_array().cloned().unwrap_or_default()
    }

    pub fn execution_of(&self, run_id: &str) -> Option<Value> {
        self.executions().into_iter().rev().find(|e| e["runId"] == run_id)
    }

    /// The run as the server's store holds it now.
    pub fn run(&self, run_id: &str) -> Value {
        self.server.run(run_id).unwrap_or_else(|| panic!("run {run_id} is not in the store"))
    }

    pub fn status_of(&self, run_id: &str) -> String {
        self.run(run_id)["status"].as_str().unwrap_or_default().to_owned()
    }

    /// Runs derived (branches, replays) from `origin`.
    pub fn derived_from(&self, origin: &str) -> Vec<String> {
        self.server
            .run_ids()
            .into_iter()
            .filter(|id| {
                self.server.run(id).is_some_and(|run| {
                    run["metadata"]["lineage"]["branchOriginRunId"] == origin
                        || run["metadata"]["replay"]["sourceRunId"] == origin
                })
            })
            .collect()
    }

    /// Runs a recovery created that no execution names (an orphan: created, then lost).
    pub fn orphans(&self) -> Vec<String> {
        let named: Vec<String> = self
            .executions()
            .iter()
            .flat_map(|e| {
                e["createdRuns"].as_object().map(|m| m.values().cloned().collect::<Vec<_>>()).unwrap_or_default()
            })
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        self.server
            .run_ids()
            .into_iter()
            .filter(|id| {
                self.server.run(id).is_some_and(|run| {
                    let derived = run["metadata"]["lineage"]["branchOriginRunId"].is_string()
                        || run["metadata"]["replay"]["sourceRunId"].is_string();
                    derived && !named.contains(id)
                })
            })
            .collect()
    }

    pub fn serve(&self, args: &[&str]) -> Daemon {
        let log = std::fs::File::create(self.path(&format!("serve-{}.log", unique()))).expect("log");
        let child = self
            .command(&[&["serve"], args].concat())
            .env("SALVAGE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start serve");
        let daemon = Daemon { child: Some(child) };
        let pid = daemon.pid();
        wait_for("the daemon to report running", || {
            let status: Value = serde_json::from_slice(&self.salvage(&["status", "--json"]).stdout).ok()?;
            (status["running"] == true && status["daemon"]["pid"] == pid).then_some(())
        });
        daemon
    }

    pub fn serve_crashing(&self, point: &str, args: &[&str]) -> Child {
        let log = std::fs::File::create(self.path(&format!("serve-{}.log", unique()))).expect("log");
        self.command(&[&["serve"], args].concat())
            .env("SALVAGE_LOG", "info")
            .env("SALVAGE_TEST_CRASH_AT", point)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start serve")
    }

    pub fn status(&self) -> Value {
        self.json(&["status", "--json"])
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// A running `salvage serve`; killed if a test fails before stopping it.
pub struct Daemon {
    pub child: Option<Child>,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.pid()).expect("pid");
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill");
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
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

    /// SIGKILL, as a crash.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
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
