//! Incidents found and planned per second by `salvage serve` as failed runs arrive in a large
//! SQLite store (`benches/support`, default 100,000 runs; `SALVAGE_BENCH_SERVE_SIZE=N`).
//!
//! A copy of the cached store is opened, the daemon's change cursor is set to the store's last
//! change (the runs already there are not new), the daemon starts (advisory, 2 workers), and
//! `SALVAGE_BENCH_INCIDENTS` (default 300) failed runs — clones of the store's failed runs
//! under new ids — are saved in batches of 50, as a runtime would write them. Measured: from
//! the first save until the daemon counts every incident planned (its plan and dry run
//! recorded; the dry runs in the store are counted once at the end).
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
    let incidents_wanted: usize =
        std::env::var("SALVAGE_BENCH_INCIDENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let workers: usize = std::env::var("SALVAGE_BENCH_WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let cached = support::disk_store(Backend::Sqlite, size, Templates::Full);
    let temp = tempfile::tempdir().expect("temp");
    let db = temp.path().join("serve.db");
    std::fs::copy(&cached.path, &db).expect("copy the store");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = SetDirs { playbooks: root.join("playbooks"), policies: root.join("policies") };

    let runtime = support::runtime();
    let (elapsed, planned, saved) = runtime.block_on(async {
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
        // Made before the clock starts: the runtime's writes are measured, not their making.
        let new_runs: Vec<Run> = (0..incidents_wanted)
            .map(|n| {
                let mut value = templates[n % templates.len()].to_value();
                value["id"] = json!(format!("bench-incident-{n:06}"));
                Run::from_value(value).expect("run")
            })
            .collect();
        let daemon = Daemon::start(ServeBackend::Sqlite(store.clone()), options).await.expect("start");
        let handle = daemon.handle();
        let serving = tokio::spawn(daemon.run());
        let started = Instant::now();
        for batch in new_runs.chunks(50) {
            store.save_all(batch, Expected::Absent).await.expect("save");
        }
        let saved = started.elapsed();
        // Watched through the daemon's own counters, which cost nothing: counting the recorded
        // dry runs in SQLite every 20 ms took 8 % of the two cores the daemon runs on.
        loop {
            let incidents = handle.incidents();
            let count = |key: &str| usize::try_from(incidents[key].as_u64().unwrap_or(0)).unwrap_or(usize::MAX);
            assert_eq!(count("failed"), 0, "an incident failed: {incidents}");
            if count("planned") >= incidents_wanted {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(1800), "only {incidents} after 30 minutes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = started.elapsed();
        handle.stop();
        serving.await.expect("join").expect("serve");
        // Each incident planned has its dry run recorded.
        let planned: i64 = rusqlite::Connection::open(&db)
            .expect("sqlite")
            .query_row(
                "SELECT COUNT(*) FROM state WHERE key >= 'serve/dry-run/' AND key < 'serve/dry-run0'",
                [],
                |row| row.get(0),
            )
            .expect("count the dry runs");
        (elapsed, planned, saved)
    });
    println!(
        "serve, {size}-run sqlite store: {planned} new failed runs found, planned and dry-run in {} ({:.1} incidents/s, {workers} workers)",
        human(elapsed),
        planned as f64 / elapsed.as_secs_f64()
    );
    println!("  (the runs were all saved {} after the first save)", human(saved));
}
