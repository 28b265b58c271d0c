//! Edit-to-active reload latency of `salvage serve`: a policy file is rewritten (a new valid
//! version), and the time until the daemon's active set is the new one is measured — the
//! debounce window (50 ms), re-reading and checking every playbook and policy, and the swap.
//!
//! `cargo bench --bench serve_reload`; `SALVAGE_BENCH_RELOADS=N` edits (default 40). Prints
//! p50, p99 and max (target: p99 under 200 ms).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use salvage::execute::{Mode, RunnerSettings, RuntimeRegistry};
use salvage::serve::{Backend, Daemon, NoGate, ServeOptions, SetDirs, Timing};
use salvage::store::MemoryStore;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read").filter_map(Result::ok) {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let edits: usize = std::env::var("SALVAGE_BENCH_RELOADS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let temp = tempfile::tempdir().expect("temp");
    let dirs = SetDirs { playbooks: temp.path().join("playbooks"), policies: temp.path().join("policies") };
    copy_dir(&root.join("playbooks"), &dirs.playbooks);
    copy_dir(&root.join("policies"), &dirs.policies);
    let policy = dirs.policies.join("approvals.rhai");
    let original = std::fs::read_to_string(&policy).expect("read");

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let latencies = runtime.block_on(async {
        let options = ServeOptions {
            dirs: dirs.clone(),
            mode: Mode::Advisory,
            workers: 2,
            queue_capacity: 8,
            actor: "bench".into(),
            settings: RunnerSettings { export_dir: temp.path().join("bundles"), ..RunnerSettings::default() },
            runtimes: Arc::new(RuntimeRegistry::default()),
            gate: Arc::new(NoGate),
            timing: Timing::default(),
            watch_sets: true,
            replicas: salvage::serve::ReplicaSettings::default(),
        };
        let daemon =
            Daemon::start(Backend::Memory(Arc::new(MemoryStore::new())), options).await.expect("start the daemon");
        let handle = daemon.handle();
        let serving = tokio::spawn(daemon.run());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut latencies = Vec::with_capacity(edits);
        for n in 0..edits {
            let before = handle.reloader().current().digest();
            let started = Instant::now();
            std::fs::write(&policy, format!("{original}\n// edit {n}\n")).expect("write");
            loop {
                if handle.reloader().current().digest() != before {
                    latencies.push(started.elapsed());
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "edit {n} never became active");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Let the watcher settle so that edits do not share a debounce window.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        handle.stop();
        serving.await.expect("join").expect("serve");
        latencies
    });
    let mut sorted = latencies.clone();
    sorted.sort();
    println!(
        "reload latency (edit → active), {} edits, debounce 50 ms: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        sorted.len(),
        percentile(&sorted, 0.5).as_secs_f64() * 1e3,
        percentile(&sorted, 0.99).as_secs_f64() * 1e3,
        sorted.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    );
}
