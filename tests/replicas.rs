//! `salvage serve` replicas on one PostgreSQL schema, driven through the real binary: what
//! `salvage status` shows of them, `--require-same-set`, and a clean stop. (The kills, stalls
//! and lost connections are `tests/replicas_chaos.rs`.)

#[path = "common/postgres.rs"]
mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use postgres::TestSchema;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Replicas that are stopped (SIGTERM, then SIGKILL) when the test ends, however it ends.
struct Replicas(Vec<(Child, PathBuf)>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Replicas {
    fn start(&mut self, dir: &Path, url: &str, extra: &[&str]) -> u32 {
        let log = dir.join(format!("replica-{}.log", self.0.len() + 1));
        let child = Command::new(env!("CARGO_BIN_EXE_salvage"))
            .args(["serve", "--mode", "advisory", "--workers", "2", "--lease-ttl", "3s"])
            .args(extra)
            .current_dir(dir)
            .env("SALVAGE_STORE", url)
            .env("SALVAGE_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("SALVAGE_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("serve");
        let pid = child.id();
        self.0.push((child, log));
        pid
    }

    /// SIGTERM and wait: a replica stops cleanly, resigning and marking itself stopped.
    fn stop(&mut self, pid: u32) {
        let (child, log) = self.0.iter_mut().find(|(c, _)| c.id() == pid).expect("a replica of this test");
        assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill").success());
        let status = child.wait().expect("wait");
        assert!(
            status.success(),
            "replica {pid} exited {status}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    fn logs(&self) -> String {
        self.0.iter().map(|(_, log)| std::fs::read_to_string(log).unwrap_or_default()).collect::<Vec<_>>().join("\n")
    }
}

fn salvage(dir: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_salvage"))
        .args(args)
        .current_dir(dir)
        .env("SALVAGE_STORE", url)
        .env("NO_COLOR", "1")
        .env_remove("SALVAGE_CONFIG")
        .output()
        .expect("salvage")
}

fn status_json(dir: &Path, url: &str) -> (Option<i32>, Value) {
    let out = salvage(dir, url, &["status", "--json"]);
    let body = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("status --json: {e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code(), body)
}

fn wait_until(what: &str, replicas: &Replicas, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not happen within 60 s; logs:\n{}", replicas.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A set directory: the shipped playbooks, and the shipped policies (changed by `edit`).
fn set_dir(dir: &Path, edit: Option<&str>) {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("mkdir");
    for entry in std::fs::read_dir(Path::new(ROOT).join("policies")).expect("policies") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rhai") {
            let mut text = std::fs::read_to_string(&path).expect("policy");
            if let Some(edit) = edit {
                text.push_str(edit);
            }
            std::fs::write(policies.join(path.file_name().expect("name")), text).expect("write");
        }
    }
    std::fs::write(
        dir.join("salvage.yaml"),
        format!("playbooks: {}\npolicies: policies\n", Path::new(ROOT).join("playbooks").display()),
    )
    .expect("config");
}

fn planned(schema: &TestSchema) -> usize {
    schema
        .query("SELECT count(*) FROM state WHERE key LIKE 'serve/incident/%' AND body::jsonb ->> 'state' = 'planned'")
        .first()
        .and_then(|row| row[0].as_deref().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn status_shows_every_replica_the_leader_and_a_replica_that_refuses_another_set() {
    if !postgres::available() {
        return;
    }
    let schema = TestSchema::create();
    let url = schema.url.clone();
    let (a, b) = (tempfile::tempdir().expect("temp"), tempfile::tempdir().expect("temp"));
    set_dir(a.path(), None);
    set_dir(b.path(), Some("\n// an edit on one host only\n"));
    let import = salvage(a.path(), &url, &["import", &Path::new(ROOT).join("examples/runs").display().to_string()]);
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));

    let mut replicas = Replicas(Vec::new());
    let first = replicas.start(a.path(), &url, &[]);
    let second = replicas.start(a.path(), &url, &[]);
    // The seven incidents of the examples are planned once between them.
    wait_until("the incidents planned", &replicas, || planned(&schema) == 7);
    wait_until("a leader", &replicas, || status_json(a.path(), &url).1["leader"].is_object());

    let (code, status) = status_json(a.path(), &url);
    assert_eq!(code, Some(0), "{status:#}");
    assert_eq!(status["sameSet"], true, "{status:#}");
    let rows = status["replicas"].as_array().expect("replicas");
    let pids: Vec<u64> = rows.iter().filter_map(|r| r["pid"].as_u64()).collect();
    assert!(pids.contains(&u64::from(first)) && pids.contains(&u64::from(second)), "{status:#}");
    assert_eq!(rows.iter().filter(|r| r["leader"] == true).count(), 1, "one leader: {status:#}");
    // Status documents are written a moment after the work; each incident counts once.
    let handled = |status: &Value| -> u64 {
        status["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["status"]["incidents"]["handled"].as_u64())
            .sum()
    };
    wait_until("the counters caught up", &replicas, || handled(&status_json(a.path(), &url).1) == 7);

    // A third replica, on a host whose policies differ, refuses incidents under --require-same-set.
    let third = replicas.start(b.path(), &url, &["--require-same-set"]);
    wait_until("the third replica refusing", &replicas, || {
        let (_, status) = status_json(a.path(), &url);
        status["replicas"].as_array().into_iter().flatten().any(|r| {
            r["pid"].as_u64() == Some(u64::from(third))
                && r["status"]["replica"]["refusingIncidents"]
                    .as_str()
                    .is_some_and(|why| why.contains("differs from the leader's"))
        })
    });
    let text = salvage(a.path(), &url, &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("salvage serve: 3 replica(s) running"), "{text}");
    assert!(text.contains("[leader]"), "{text}");
    assert!(text.contains("DIFFERENT SETS: the running replicas use 2 sets"), "{text}");
    assert!(text.contains("refusing incidents: This replica's set"), "{text}");

    // A new incident goes to a replica with the leader's set, never to the refusing one.
    let original = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
    let text =
        std::fs::read_to_string(Path::new(ROOT).join(format!("examples/runs/{original}.json"))).expect("example");
    let copy = a.path().join("copy.json");
    std::fs::write(&copy, text.replace(original, "aea53804-0000-4000-8000-000000000001")).expect("copy");
    let import = salvage(a.path(), &url, &["import", &copy.display().to_string()]);
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
    wait_until("the new incident planned", &replicas, || planned(&schema) == 8);
    let handled_by = |status: &Value, pid: u32| {
        status["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["pid"].as_u64() == Some(u64::from(pid)))
            .map_or(0, |r| r["status"]["incidents"]["handled"].as_u64().unwrap_or(0))
    };
    // Status documents are written a moment after the work.
    wait_until("the counters caught up", &replicas, || {
        let (_, status) = status_json(a.path(), &url);
        handled_by(&status, first) + handled_by(&status, second) == 8
    });
    let (_, status) = status_json(a.path(), &url);
    assert_eq!(handled_by(&status, third), 0, "the refusing replica took no incident: {status:#}");

    // Clean stops: each replica says it stopped; with none left, status exits 1.
    for pid in [third, second, first] {
        replicas.stop(pid);
    }
    let (code, status) = status_json(a.path(), &url);
    assert_eq!(code, Some(1), "{status:#}");
    assert_eq!(status["running"], false);
    assert!(status["replicas"].as_array().expect("replicas").iter().all(|r| r["stoppedAt"].is_string()), "{status:#}");
    let text = String::from_utf8_lossy(&salvage(a.path(), &url, &["status"]).stdout).into_owned();
    assert!(text.contains("salvage serve: 0 replica(s) running"), "{text}");
    assert_eq!(text.matches(" stopped ").count(), 3, "{text}");
    assert!(!replicas.logs().contains("panicked"), "{}", replicas.logs());
}
