//! Incidents found and planned per second by `salvage serve` as failed runs arrive in a large
//! SQLite store (`benches/support`, default 100,000 runs; `SALVAGE_BENCH_SERVE_SIZE=N`).
//!
//! A copy of the cached store is opened, the daemon's change cursor is set to the store's last
//! change (the runs already there are not new), the daemon starts (advisory, 2 workers), and
//! `SALVAGE_BENCH_INCIDENTS` (default 300) failed runs — clones of the store's failed runs
//! under new ids — are saved in batches of 50, as a runtime would write them. Measured: from
//! the first save until every incident's plan and dry run are recorded.
//!
//! `SALVAGE_BENCH_WORKERS` (default 2) sets the daemon's workers.
//!
//! `cargo bench --bench serve_incidents`

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use salvage::execute::{Mode, RunnerSettings, RuntimeRegistry};
use salvage::model::Run;
use salvage::serve::{Backend as ServeBackend, Daemon, NoGate, ServeOptions, SetDirs, Timing};
use salvage::store::{Expected, RunStore, SqliteStore, StateStore};
use support::{Backend, Templates, human};

fn main() {
    let size: usize =
        std::env::var("SALVAGE_BENCH_SERVE_SIZE").ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(100_000);
    let incidents: usize = std::env::var("SALVAGE_BENCH_INCIDENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let workers: usize = std::env::var("SALVAGE_BENCH_WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let cached = support::disk_store(Backend::Sqlite, size, Templates::Full);
    let temp = tempfile::tempdir().expect("temp");
    let db = temp.path().join("serve.db");
    std::fs::copy(&cached.path, &db).expect("copy the store");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = SetDirs { playbooks: root.join("playbooks"), policies: root.join("policies") };

    let runtime = support::runtime();
    let (elapsed, planned) = runtime.block_on(async {
        let store = Arc::new(SqliteStore::open(&db).await.expect("open"));
        // Everything already in the store counts as seen.
        let last: i64 = rusqlite::Connection::open(&db)
            .expect("sqlite")
            .query_row("SELECT COALESCE(MAX(change_seq), 0) FROM runs", [], |row| row.get(0))
            .expect("max change_seq");
        store.put_state("serve/cursor", &json!({"changeSeq": last}), Expected::Any).await.expect("cursor");
        let templates: Vec<Run> = store
            .get_many(&cached.manifest.failed_sample)
            .await
            .expect("failed runs")
            .items
            .into_iter()
            .map(|stored| stored.run)
            .collect();
        let options = ServeOptions {
            dirs,
            mode: Mode::Advisory,
            workers,
            queue_capacity: 64,
            actor: "bench".into(),
            settings: RunnerSettings { export_dir: temp.path().join("bundles"), ..RunnerSettings::default() },
            runtimes: Arc::new(RuntimeRegistry::default()),
            gate: Arc::new(NoGate),
            timing: Timing::default(),
            watch_sets: false,
            replicas: salvage::serve::ReplicaSettings::default(),
        };
        let daemon = Daemon::start(ServeBackend::Sqlite(store.clone()), options).await.expect("start");
        let handle = daemon.handle();
        let serving = tokio::spawn(daemon.run());
        let started = Instant::now();
        let new_runs: Vec<Run> = (0..incidents)
            .map(|n| {
                let mut value = templates[n % templates.len()].to_value();
                value["id"] = json!(format!("bench-incident-{n:06}"));
                Run::from_value(value).expect("run")
            })
            .collect();
        for batch in new_runs.chunks(50) {
            store.save_all(batch, Expected::Absent).await.expect("save");
        }
        // Counted on a connection of its own, without reading the results back: decoding every
        // dry run recorded so far at each look (`list_state`) cost the daemon a third of the CPU.
        let counter = rusqlite::Connection::open(&db).expect("sqlite");
        let planned = loop {
            let done: usize = counter
                .query_row(
                    "SELECT COUNT(*) FROM state WHERE key >= 'serve/dry-run/' AND key < 'serve/dry-run0'",
                    [],
                    |row| row.get::<_, i64>(0),
                )
                .map(|count| usize::try_from(count).unwrap_or(0))
                .expect("count the dry runs");
            if done >= incidents {
                break done;
            }
            assert!(started.elapsed() < Duration::from_secs(1800), "only {done}/{incidents} planned");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let elapsed = started.elapsed();
        handle.stop();
        serving.await.expect("join").expect("serve");
        (elapsed, planned)
    });
    println!(
        "serve, {size}-run sqlite store: {planned} new failed runs found, planned and dry-run in {} ({:.1} incidents/s, {workers} workers)",
        human(elapsed),
        planned as f64 / elapsed.as_secs_f64()
    );
}
