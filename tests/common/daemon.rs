//! `salvage serve` as a child process for tests: killed if the test ends before stopping it,
//! its log kept in a file of the working directory.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::wait::wait_for;

pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// An advisory daemon over `dir`'s `playbooks/` and `policies/`, on `store`.
    pub fn start(dir: &Path, store: &str, extra: &[&str]) -> Daemon {
        Daemon::start_in(dir, store, "advisory", extra)
    }

    /// A daemon in `mode` (`advisory` or `enforce`).
    pub fn start_in(dir: &Path, store: &str, mode: &str, extra: &[&str]) -> Daemon {
        Daemon::start_with(dir, store, mode, extra, &[])
    }

    /// A daemon in `mode` with extra environment variables.
    pub fn start_with(dir: &Path, store: &str, mode: &str, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let args = [&["serve", "--mode", mode, "--playbooks", "playbooks", "--policies", "policies"], extra].concat();
        Daemon::spawn(dir, store, &args, env)
    }

    /// `salvage web` on a free port (the API and the inbox without a daemon).
    pub fn start_web(dir: &Path, store: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn(dir, store, &["web", "--listen", "127.0.0.1:0"], env)
    }

    fn spawn(dir: &Path, store: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let log = dir.join(format!("serve-{}.log", unique()));
        let child = Command::new(env!("CARGO_BIN_EXE_salvage"))
            .args(args)
            .current_dir(dir)
            .env("SALVAGE_STORE", store)
            .env("SALVAGE_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("SALVAGE_CONFIG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start serve");
        Daemon { child: Some(child), log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address `serve` says it serves metrics at (it was asked for port 0).
    pub fn metrics_address(&self) -> SocketAddr {
        wait_for("the metrics address in the log", || {
            let log = self.log();
            let rest = log.split("metrics at http://").nth(1)?;
            rest.split("/metrics").next()?.parse().ok()
        })
    }

    /// Where the API and the inbox listen (`serve --http 127.0.0.1:0` or `web`), from the log.
    pub fn web_address(&self) -> SocketAddr {
        wait_for("the web address in the log", || {
            let log = self.log();
            let rest = log.split("approvals and API at http://").nth(1)?;
            rest.split('/').next()?.parse().ok()
        })
    }

    /// SIGTERM; the exit must be clean.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("child");
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill").success());
        let status = child.wait().expect("wait");
        assert!(status.success(), "serve exited {status}: {}", self.log());
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

fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}
