//! `salvage serve` replicas on PostgreSQL against one daemon on SQLite (issue "Several
//! machines"), side by side in one run, with real binaries and a live runtime.
//!
//! Each scenario gets a fresh store (an SQLite file, or a fresh PostgreSQL schema on
//! `$SALVAGE_TEST_POSTGRES`) and a fresh reference-like runtime server (`tests/runtime_server`)
//! whose every save is mirrored into that store, as a runtime writing to the shared database
//! would. Incidents are failed tool runs recovered by branch + resume through the `http`
//! runtime (agnostic-agents protocol).
//!
//! - **backlog**: `SALVAGE_BENCH_INCIDENTS` (default 200) incidents are waiting when the
//!   daemons start; measured from the start of the daemons until every incident is planned
//!   and dry-run (advisory) or resolved (enforce: two runtime steps each).
//! - **claim latency**: then, with the daemons running, 20 incidents one by one: from the
//!   commit of the run's first `failed` save until a daemon has recorded the incident as its
//!   own (the incident record's `claimedAt`): notification or poll, offer, claim, record.
//!
//! `cargo bench --bench serve_replicas` (needs the PostgreSQL server; 2 workers per daemon).

#[path = "../tests/common/postgres.rs"]
mod postgres;
#[path = "../tests/runtime_server/mod.rs"]
mod runtime_server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use postgres::TestSchema;
use runtime_server::{RuntimeServer, SaveHook, ServerOptions, ToolPolicy};
use salvage::model::Run;
use salvage::store::{Expected, StoreSpec};
use serde_json::{Value, json};

const PLAYBOOK: &str = "playbook: branch-resume\nversion: 1\ndescription: Branch and resume.\n\
match: { incident: tool_failure }\npriority: 1000\nstart: branch\nsteps:\n\
\x20 branch:\n    action: branch_from_checkpoint\n    description: d\n    checkpoint: policy.choose_checkpoint\n    approval: never\n    why: benchmark\n    on: { ok: resume, failed: escalated }\n\
\x20 resume:\n    action: resume_run\n    description: d\n    target: branch\n    approval: never\n    why: benchmark\n    on: { ok: resolved, failed: escalated }\n\
ends:\n  resolved: { outcome: resolved }\n  escalated: { outcome: escalated }\n";

/// Runtime steps per incident in enforce mode (branch, resume).
const STEPS: usize = 2;
const LATENCY_SAMPLES: usize = 20;
const WORKERS: &str = "2";
const PATIENCE: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, PartialEq)]
enum Engine {
    Sqlite,
    Postgres,
}

/// Where a scenario's store is, and how to count in it.
enum Target {
    Sqlite(PathBuf),
    Postgres(TestSchema),
}

impl Target {
    fn spec(&self) -> String {
        match self {
            Target::Sqlite(path) => format!("sqlite:{}", path.display()),
            Target::Postgres(schema) => schema.url.clone(),
        }
    }

    /// Incident records in `state`, and the executions `resolved`.
    fn count(&self, incident_state: &str) -> usize {
        let records = format!(
            "SELECT count(*) FROM state WHERE key LIKE 'serve/incident/%' AND {}",
            match self {
                Target::Sqlite(_) => format!("json_extract(body, '$.state') = '{incident_state}'"),
                Target::Postgres(_) => format!("body::jsonb ->> 'state' = '{incident_state}'"),
            }
        );
        self.number(&records)
    }

    fn resolved(&self) -> usize {
        self.number("SELECT count(*) FROM executions WHERE status = 'resolved'")
    }

    fn number(&self, sql: &str) -> usize {
        match self {
            Target::Sqlite(path) => {
                let Ok(conn) = rusqlite::Connection::open(path) else { return 0 };
                conn.query_row(sql, [], |row| row.get::<_, i64>(0)).map_or(0, |n| n as usize)
            }
            Target::Postgres(schema) => schema
                .query(sql)
                .first()
                .and_then(|row| row.first().cloned().flatten())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        }
    }

    /// When the incident record of `run_id` says it was claimed.
    fn claimed_at(&self, run_id: &str) -> Option<SystemTime> {
        let sql = format!("SELECT body FROM state WHERE key = 'serve/incident/{run_id}'");
        let body: String = match self {
            Target::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).ok()?;
                conn.query_row(&sql, [], |row| row.get(0)).ok()?
            }
            Target::Postgres(schema) => schema.query(&sql).first()?.first()?.clone()?,
        };
        let body: Value = serde_json::from_str(&body).ok()?;
        let at =
            time::OffsetDateTime::parse(body["claimedAt"].as_str()?, &time::format_description::well_known::Rfc3339)
                .ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(at.unix_timestamp_nanos()).ok()?))
    }
}

/// When each run was first saved `failed` in the scenario's store (committed).
type FailedAt = Arc<Mutex<std::collections::HashMap<String, SystemTime>>>;

/// The runtime's saves, written into the scenario's store before the runtime answers.
fn mirror(spec: String, failed_at: FailedAt) -> SaveHook {
    let (tx, rx) = std::sync::mpsc::channel::<(Value, SyncSender<()>)>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("mirror runtime");
        runtime.block_on(async move {
            let spec = StoreSpec::parse(&spec).expect("spec");
            let store = salvage::store::open(&spec).await.expect("mirror store");
            while let Ok((json, ack)) = rx.recv() {
                let run = Run::from_value(json).expect("a run");
                store.save(&run, Expected::Any).await.expect("mirror save");
                if run.status == salvage::model::RunStatus::Failed {
                    failed_at.lock().expect("lock").entry(run.id.clone()).or_insert_with(SystemTime::now);
                }
                let _ = ack.send(());
            }
        });
    });
    let tx = Mutex::new(tx);
    SaveHook(Arc::new(move |_id: &str, json: &Value| {
        let (ack_tx, ack_rx) = sync_channel(1);
        if tx.lock().expect("lock").send((json.clone(), ack_tx)).is_ok() {
            let _ = ack_rx.recv();
        }
    }))
}

struct Outcome {
    backlog: Duration,
    latencies: Vec<Duration>,
}

fn scenario(engine: Engine, replicas: usize, mode: &str, incidents: usize) -> Outcome {
    let dir = tempfile::tempdir().expect("temp");
    let target = match engine {
        Engine::Sqlite => Target::Sqlite(dir.path().join("salvage.db")),
        Engine::Postgres => Target::Postgres(TestSchema::create()),
    };
    let playbooks = dir.path().join("playbooks");
    std::fs::create_dir(&playbooks).expect("mkdir");
    std::fs::write(playbooks.join("branch-resume.yaml"), PLAYBOOK).expect("playbook");
    let salvage = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_salvage"));
        command.args(args).current_dir(dir.path()).env("SALVAGE_STORE", target.spec()).env_remove("SALVAGE_CONFIG");
        command
    };
    let failed_at = FailedAt::default();
    // The schema first: the runtime's mirror writes into it from its first save.
    let migrated = salvage(&["migrate"]).output().expect("migrate");
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let server = RuntimeServer::start(ServerOptions {
        on_save: Some(mirror(target.spec(), failed_at.clone())),
        ..ServerOptions::new()
            .store_dir(dir.path().join("runtime-runs"))
            .policy("send_invoice", ToolPolicy::fail_first(1))
    });
    std::fs::write(
        dir.path().join("salvage.yaml"),
        format!(
            "playbooks: playbooks\npolicies: {}\nruntimes:\n  agent: reference\n  workflow: reference\n  adapters:\n    \
             reference:\n      kind: http\n      protocol: agnostic-agents\n      base_url: {}\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policies").display(),
            server.base_url()
        ),
    )
    .expect("config");
    for n in 0..incidents {
        let summary = server.create_run(json!({"task": "send_invoice", "invoiceId": format!("INV-{n}"), "amount": 10}));
        assert_eq!(summary["status"], "failed", "{summary}");
    }

    let started = Instant::now();
    let mut daemons: Vec<Child> = (0..replicas)
        .map(|_| {
            salvage(&["serve", "--mode", mode, "--workers", WORKERS])
                .env("SALVAGE_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("serve")
        })
        .collect();
    let done = |target: &Target| if mode == "advisory" { target.count("planned") } else { target.resolved() };
    wait(|| done(&target) >= incidents, "the backlog");
    let backlog = started.elapsed();

    let mut latencies = Vec::with_capacity(LATENCY_SAMPLES);
    for n in 0..LATENCY_SAMPLES {
        let summary =
            server.create_run(json!({"task": "send_invoice", "invoiceId": format!("LATE-{n}"), "amount": 10}));
        let run_id = summary["id"].as_str().expect("id").to_owned();
        let saved = failed_at.lock().expect("lock").get(&run_id).copied().expect("saved failed");
        let mut claimed = None;
        wait(
            || {
                claimed = target.claimed_at(&run_id);
                claimed.is_some()
            },
            "a claim",
        );
        let claimed = claimed.expect("claimed");
        // `claimedAt` has millisecond precision.
        let early = saved.duration_since(claimed).unwrap_or_default();
        assert!(early <= Duration::from_millis(1), "{run_id} claimed {early:?} before it failed");
        latencies.push(claimed.duration_since(saved).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
    wait(|| done(&target) >= incidents + LATENCY_SAMPLES, "the latency incidents");
    if mode == "enforce" {
        assert!(server.duplicate_writes().is_empty(), "duplicate external writes");
        assert_eq!(server.external_writes().len(), incidents + LATENCY_SAMPLES, "one write per incident");
    }
    for daemon in &daemons {
        let _ = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status();
    }
    for daemon in &mut daemons {
        let _ = daemon.wait();
    }
    server.stop();
    Outcome { backlog, latencies }
}

fn wait(mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} was not done within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn millis(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if !postgres::available() {
        eprintln!("serve_replicas: no PostgreSQL server; nothing measured");
        return;
    }
    let incidents: usize = std::env::var("SALVAGE_BENCH_INCIDENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(200);
    println!(
        "serve replicas: {incidents} waiting incidents (failed tool runs), then {LATENCY_SAMPLES} arriving one by one;"
    );
    println!(
        "real `salvage serve` processes ({WORKERS} workers each) and the reference-like runtime server on 127.0.0.1"
    );
    println!(
        "{:>9}  {:>22}  {:>9}  {:>14}  {:>14}  {:>11}  {:>11}",
        "mode", "store", "backlog", "incidents/s", "steps/s", "claim p50", "claim p99"
    );
    for mode in ["advisory", "enforce"] {
        for (engine, replicas) in
            [(Engine::Sqlite, 1), (Engine::Postgres, 1), (Engine::Postgres, 2), (Engine::Postgres, 3)]
        {
            let outcome = scenario(engine, replicas, mode, incidents);
            let mut sorted = outcome.latencies.clone();
            sorted.sort();
            let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
            let per_second = incidents as f64 / outcome.backlog.as_secs_f64();
            let store = match engine {
                Engine::Sqlite => "sqlite, one daemon".to_owned(),
                Engine::Postgres => format!("postgres, {replicas} replica(s)"),
            };
            println!(
                "{:>9}  {:>22}  {:>9}  {:>14.1}  {:>14}  {:>11}  {:>11}",
                mode,
                store,
                format!("{:.2} s", outcome.backlog.as_secs_f64()),
                per_second,
                if mode == "enforce" { format!("{:.1}", per_second * STEPS as f64) } else { "-".to_owned() },
                millis(at(0.5)),
                millis(at(0.99)),
            );
        }
    }
}
