//! Chaos: three `salvage serve` replicas (the real binary) on one PostgreSQL schema recover
//! ≥ 200 incidents from the test runtime server while a seeded driver `kill -9`s replicas (and
//! starts them again), `SIGSTOP`s one past its lease and `SIGCONT`s it, and terminates their
//! database connections (`pg_terminate_backend`).
//!
//! The runtime server keeps its reference `FileRunStore`; every save is mirrored into the
//! schema synchronously (before the server answers), as a runtime persisting to the shared
//! database would. Its external system counts every write per business key.
//!
//! Holds: every incident has exactly one execution, recovered with exactly one external write
//! (0 duplicates); a stopped replica's writes after it lost its leases were refused and
//! counted; no claim stayed with an expired lease longer than the rescue interval; the seed
//! is printed (`SALVAGE_CHAOS_SEED=N` replays the schedule).

#[path = "common/postgres.rs"]
mod postgres;
mod runtime_server;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::TestSchema;
use runtime_server::{AnswerDelay, DelayOrder, Route, RuntimeServer, SaveHook, ServerOptions, ToolPolicy};
use salvage::model::Run;
use salvage::store::{Expected, PostgresStore, PostgresUrl, RunStore};
use serde_json::{Value, json};

const LEASE_TTL: Duration = Duration::from_secs(2);
/// A claim whose lease expired must be taken again within this: an idle replica looks for
/// work every 250 ms; add a query, the sampler's own period and room for a loaded machine.
const RESCUE_BOUND: Duration = Duration::from_secs(3);
const PATIENCE: Duration = Duration::from_secs(300);

/// A small, seedable generator (xorshift64*): the schedule is replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from + 1))
    }
}

/// Mirrors every run the server saves into the schema, before the server answers.
fn mirror(url: String, failures: Arc<Mutex<Vec<String>>>) -> SaveHook {
    let (tx, rx) = channel::<(Value, SyncSender<()>)>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("mirror runtime");
        runtime.block_on(async move {
            let url = PostgresUrl::parse(&url).expect("mirror url");
            let store = PostgresStore::open(&url).await.expect("mirror store");
            while let Ok((json, ack)) = rx.recv() {
                match Run::from_value(json) {
                    Ok(run) => loop {
                        // A terminated connection is retried: the runtime's save must land.
                        match store.save(&run, Expected::Any).await {
                            Ok(_) => break,
                            Err(error) => {
                                eprintln!("mirror: {error}; retrying");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    },
                    Err(error) => failures.lock().expect("lock").push(format!("{error}")),
                }
                let _ = ack.send(());
            }
        });
    });
    let tx: Mutex<Sender<(Value, SyncSender<()>)>> = Mutex::new(tx);
    SaveHook(Arc::new(move |_id: &str, json: &Value| {
        let (ack_tx, ack_rx) = sync_channel(1);
        if tx.lock().expect("lock").send((json.clone(), ack_tx)).is_ok() {
            let _ = ack_rx.recv();
        }
    }))
}

const PLAYBOOK: &str = r#"playbook: chaos-branch-and-resume
version: 1
description: Branch a failed run from its last checkpoint before the tool, resume the branch, wait for it to complete.
match:
  incident: tool_failure
priority: 1000
start: branch
steps:
  branch:
    action: branch_from_checkpoint
    description: Branch from the last checkpoint before the failing tool.
    checkpoint: policy.choose_checkpoint
    approval: never
    why: The chaos test recovers without people; the runtime's ledger proves each write happened once.
    reason: Branch from the failure boundary.
    on: { ok: resume, failed: escalated }
  resume:
    action: resume_run
    description: Resume the branch; the tool writes once.
    target: branch
    approval: never
    why: The chaos test recovers without people.
    on: { ok: settle, failed: escalated }
  settle:
    action: await_run
    description: Wait for the branch to complete.
    target: branch
    timeout: 5m
    on: { completed: resolved, failed: escalated, paused: escalated, waiting_for_approval: escalated, timeout: escalated }
ends:
  resolved: { outcome: resolved, description: "The branch completed." }
  escalated: { outcome: escalated, description: "Something stopped the recovery." }
"#;

struct Replica {
    child: Child,
    pid: u32,
    log: PathBuf,
}

struct Cluster {
    dir: PathBuf,
    url: String,
    replicas: Vec<Replica>,
    started: usize,
}

/// A failing test leaves no replica behind (they would go on against a dropped schema).
impl Drop for Cluster {
    fn drop(&mut self) {
        for replica in &mut self.replicas {
            let _ = replica.child.kill();
            let _ = replica.child.wait();
        }
    }
}

impl Cluster {
    fn start_replica(&mut self) -> u32 {
        self.started += 1;
        let log = self.dir.join(format!("replica-{}.log", self.started));
        let child = Command::new(env!("CARGO_BIN_EXE_salvage"))
            .args(["serve", "--mode", "enforce", "--workers", "8", "--lease-ttl", "2s", "--shutdown-grace", "5"])
            .current_dir(&self.dir)
            .env("SALVAGE_STORE", &self.url)
            .env("SALVAGE_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("SALVAGE_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start a replica");
        let pid = child.id();
        self.replicas.push(Replica { child, pid, log });
        pid
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// One query's single number.
fn number(schema: &TestSchema, sql: &str) -> f64 {
    schema.query(sql).first().and_then(|row| row.first().cloned().flatten()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// A `kill -9`: when, and the claims (key, epoch) the replica held then.
#[derive(Debug)]
struct Kill {
    at: Instant,
    held: Vec<(String, i64)>,
}

#[derive(Debug, Default)]
struct Events {
    kills: Vec<Kill>,
    stops: Vec<u32>,
    terminated: usize,
}

#[test]
fn replicas_recover_every_incident_once_through_kills_stalls_and_lost_connections() {
    if !postgres::available() {
        return;
    }
    let seed = std::env::var("SALVAGE_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    let incidents: usize = std::env::var("SALVAGE_CHAOS_INCIDENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    eprintln!("chaos seed {seed} ({incidents} incidents); replay with SALVAGE_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);

    let schema = TestSchema::create();
    let app = format!("chaos_{}", schema.name);
    let url = format!("{}&application_name={app}", schema.url);
    let dir = Workspace(Some(tempfile::Builder::new().prefix("salvage-chaos-").tempdir().expect("temp")));
    let mirror_failures = Arc::new(Mutex::new(Vec::new()));
    let server = Arc::new(RuntimeServer::start(ServerOptions {
        on_save: Some(mirror(format!("{}&application_name=chaos_mirror", schema.url), mirror_failures.clone())),
        ..ServerOptions::new()
            .store_dir(dir.path().join("runtime-runs"))
            .policy("send_invoice", ToolPolicy::fail_first(1))
    }));
    // Effects land, then the answer is late: a replica killed or stopped meanwhile has sent an
    // effect whose outcome it never recorded.
    for route in [Route::Branch, Route::Resume] {
        server.set_delay(route, AnswerDelay { delay: Duration::from_millis(300), order: DelayOrder::EffectThenDelay });
    }
    let playbooks = dir.path().join("playbooks");
    std::fs::create_dir(&playbooks).expect("mkdir");
    std::fs::write(playbooks.join("chaos.yaml"), PLAYBOOK).expect("playbook");
    std::fs::write(
        dir.path().join("salvage.yaml"),
        format!(
            "playbooks: playbooks\npolicies: {}\napprovals:\n  default_approvers: [oncall-sre]\n\
             runtimes:\n  agent: reference\n  workflow: reference\n  adapters:\n    reference:\n      kind: http\n\
             \x20     protocol: agnostic-agents\n      base_url: {}\n      timeout: 20s\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policies").display(),
            server.base_url()
        ),
    )
    .expect("config");
    let migrated = Command::new(env!("CARGO_BIN_EXE_salvage"))
        .args(["migrate"])
        .current_dir(dir.path())
        .env("SALVAGE_STORE", &url)
        .output()
        .expect("migrate");
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));

    let cluster = Arc::new(Mutex::new(Cluster {
        dir: dir.path().to_path_buf(),
        url: url.clone(),
        replicas: Vec::new(),
        started: 0,
    }));
    for _ in 0..3 {
        cluster.lock().expect("lock").start_replica();
    }
    wait_for(&schema, "three replicas alive", "SELECT count(*) FROM replicas WHERE stopped_at IS NULL", 3.0);

    // The sampler: how long did any claim stay with an expired lease? When did a killed
    // replica's claims change hands?
    let done = Arc::new(AtomicBool::new(false));
    let events = Arc::new(Mutex::new(Events::default()));
    let takeovers = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let sampler = {
        let (schema_url, done, events, takeovers) =
            (schema.url.clone(), done.clone(), events.clone(), takeovers.clone());
        let probe = TestSchema::attach(&schema_url);
        std::thread::spawn(move || {
            let mut worst = 0.0_f64;
            let mut pending: Vec<(String, i64, Instant)> = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let overdue = number(
                    &probe,
                    "SELECT coalesce(max(extract(epoch FROM now() - lease_expires_at)), 0) FROM claims \
                     WHERE state = 'claimed' AND lease_expires_at < now()",
                );
                worst = worst.max(overdue);
                {
                    let mut events = events.lock().expect("lock");
                    for kill in events.kills.iter_mut() {
                        let at = kill.at;
                        pending.extend(kill.held.drain(..).map(|(key, epoch)| (key, epoch, at)));
                    }
                }
                pending.retain(|(key, epoch, killed_at)| {
                    let rows = probe
                        .query(&format!("SELECT epoch, state FROM claims WHERE key = '{}'", key.replace('\'', "''")));
                    let moved = rows.first().is_none_or(|row| {
                        row[0].as_deref().and_then(|e| e.parse::<i64>().ok()) != Some(*epoch)
                            || row[1].as_deref() != Some("claimed")
                    });
                    if moved {
                        takeovers.lock().expect("lock").push(killed_at.elapsed());
                    }
                    !moved
                });
                std::thread::sleep(Duration::from_millis(100));
            }
            worst
        })
    };

    // The driver: kills, stalls, lost connections, in a seeded order, while incidents arrive.
    let driver = {
        let (cluster, events, done, schema_url, app) =
            (cluster.clone(), events.clone(), done.clone(), schema.url.clone(), app.clone());
        let mut rng = Rng(rng.next() | 1);
        std::thread::spawn(move || {
            let probe = TestSchema::attach(&schema_url);
            // Four blocks of a kill, a stall and lost connections, each block in a seeded order:
            // the first kill comes before a second stall, so some replica is always left to kill.
            let mut order = [0, 1, 2];
            for round in 0..12 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(rng.millis(1500, 3500));
                if round % 3 == 0 {
                    for i in (1..3).rev() {
                        order.swap(i, rng.below(i + 1));
                    }
                }
                let what = order[round % 3];
                match what {
                    0 => {
                        // The replica holding the most work dies (a stalled one is left alone:
                        // its counters are checked at the end); ties go to the seeded order.
                        let stalled = events.lock().expect("lock").stops.clone();
                        let pids: Vec<u32> = cluster.lock().expect("lock").replicas.iter().map(|r| r.pid).collect();
                        let start = rng.below(pids.len());
                        let Some((pid, held)) = pids
                            .iter()
                            .cycle()
                            .skip(start)
                            .take(pids.len())
                            .filter(|pid| !stalled.contains(pid))
                            .map(|pid| (*pid, held_by(&probe, *pid)))
                            .max_by_key(|(_, held)| held.len())
                        else {
                            continue;
                        };
                        let mut members = cluster.lock().expect("lock");
                        let Some(index) = members.replicas.iter().position(|r| r.pid == pid) else {
                            continue;
                        };
                        let _ = members.replicas[index].child.kill();
                        let _ = members.replicas[index].child.wait();
                        let killed_at = Instant::now();
                        eprintln!("chaos: kill -9 replica pid {pid} holding {} claim(s)", held.len());
                        events.lock().expect("lock").kills.push(Kill { at: killed_at, held });
                        members.replicas.remove(index);
                        drop(members);
                        std::thread::sleep(Duration::from_millis(500));
                        let new = cluster_start(&cluster);
                        eprintln!("chaos: started replica pid {new}");
                    }
                    1 => {
                        // The replica holding the most work (and not stalled before) stalls past
                        // its lease; if none holds any for 3 s, this round passes.
                        let mut chosen = None;
                        for _ in 0..10 {
                            let stalled = events.lock().expect("lock").stops.clone();
                            let pids: Vec<u32> = cluster.lock().expect("lock").replicas.iter().map(|r| r.pid).collect();
                            chosen = pids
                                .iter()
                                .filter(|pid| !stalled.contains(pid))
                                .map(|pid| (*pid, held_by(&probe, *pid).len()))
                                .filter(|(_, held)| *held > 0)
                                .max_by_key(|(_, held)| *held);
                            if chosen.is_some() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(300));
                        }
                        let Some((pid, held)) = chosen else {
                            eprintln!("chaos: no replica held work to stall");
                            continue;
                        };
                        eprintln!("chaos: SIGSTOP replica pid {pid} holding {held} claim(s)");
                        signal(pid, "STOP");
                        std::thread::sleep(LEASE_TTL + Duration::from_millis(1500));
                        signal(pid, "CONT");
                        eprintln!("chaos: SIGCONT replica pid {pid}");
                        events.lock().expect("lock").stops.push(pid);
                    }
                    _ => {
                        let terminated = number(
                            &probe,
                            &format!(
                                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app}'"
                            ),
                        ) as usize;
                        eprintln!("chaos: terminated {terminated} database connection(s) of the replicas");
                        events.lock().expect("lock").terminated += terminated;
                    }
                }
            }
        })
    };

    // Incidents arrive while the driver works.
    let mut runs = Vec::with_capacity(incidents);
    for i in 0..incidents {
        let summary =
            server.create_run(json!({"task": "send_invoice", "invoiceId": format!("INV-{i}"), "amount": 100 + i}));
        assert_eq!(summary["status"], "failed", "{summary}");
        runs.push(summary["id"].as_str().expect("id").to_owned());
        std::thread::sleep(rng.millis(50, 250));
    }
    driver.join().expect("driver");

    // Every incident reaches an end (or a person).
    let started = Instant::now();
    loop {
        let settled = number(
            &schema,
            "SELECT count(*) FROM executions WHERE status IN ('resolved', 'escalated', 'abandoned', 'needs_operator')",
        ) as usize;
        if settled >= incidents {
            break;
        }
        if started.elapsed() > PATIENCE {
            let open = schema.query(
                "SELECT e.id, e.run_id, e.status, s.body, c.state, c.holder, c.epoch, c.payload FROM executions e \
                 LEFT JOIN state s ON s.key = 'serve/incident/' || e.run_id LEFT JOIN claims c ON c.key = 'incident/' || e.run_id \
                 WHERE e.status NOT IN ('resolved', 'escalated', 'abandoned', 'needs_operator')",
            );
            done.store(true, Ordering::SeqCst);
            // An incident with no execution at all: what its record and its claim say.
            let ids = runs.iter().map(|id| format!("'{}'", id.replace('\'', "''"))).collect::<Vec<_>>().join(",");
            let without = schema.query(&format!(
                "SELECT r.id, s.body, c.state, c.holder, c.epoch, c.attempts, c.payload FROM unnest(ARRAY[{ids}]) AS r(id) \
                 LEFT JOIN state s ON s.key = 'serve/incident/' || r.id LEFT JOIN claims c ON c.key = 'incident/' || r.id \
                 WHERE NOT EXISTS (SELECT 1 FROM executions e WHERE e.run_id = r.id)"
            ));
            panic!(
                "only {settled} of {incidents} incidents settled in {PATIENCE:?} (seed {seed}); open: {open:#?}; \
                 without an execution: {without:#?}"
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    done.store(true, Ordering::SeqCst);
    let worst_overdue = sampler.join().expect("sampler");

    // Stop the replicas cleanly; their last status documents carry their counters.
    let replicas = std::mem::take(&mut cluster.lock().expect("lock").replicas);
    for replica in &replicas {
        signal(replica.pid, "TERM");
    }
    let mut logs = BTreeMap::new();
    for mut replica in replicas {
        let deadline = Instant::now() + Duration::from_secs(30);
        while replica.child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "replica {} did not stop", replica.pid);
            std::thread::sleep(Duration::from_millis(100));
        }
        logs.insert(replica.pid, replica.log);
    }
    let events = events.lock().expect("lock");
    let statuses: HashMap<u32, Value> = schema
        .query("SELECT body FROM state WHERE key LIKE 'serve/replica/%'")
        .into_iter()
        .filter_map(|row| row[0].as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()))
        .filter_map(|body| Some((u32::try_from(body["pid"].as_u64()?).ok()?, body)))
        .collect();

    // One execution per incident, each recovered by exactly one external write.
    let per_run: HashMap<String, (usize, String)> = schema
        .query("SELECT run_id, count(*), max(status) FROM executions GROUP BY run_id")
        .into_iter()
        .map(|row| {
            let run = row[0].clone().unwrap_or_default();
            (run, (row[1].as_deref().and_then(|n| n.parse().ok()).unwrap_or(0), row[2].clone().unwrap_or_default()))
        })
        .collect();
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for (i, run) in runs.iter().enumerate() {
        let (count, status) = per_run.get(run).cloned().unwrap_or_default();
        assert_eq!(count, 1, "incident {run} has {count} executions (seed {seed})");
        *by_status.entry(status.clone()).or_default() += 1;
        let writes = server.writes_for(&format!("INV-{i}")).len();
        match status.as_str() {
            "resolved" => assert_eq!(writes, 1, "incident {run} resolved with {writes} writes (seed {seed})"),
            // A person decides when an effect's outcome could not be proved; never twice.
            _ => assert!(writes <= 1, "incident {run} ({status}) with {writes} writes (seed {seed})"),
        }
    }
    assert!(
        server.duplicate_writes().is_empty(),
        "duplicate external writes: {:?} (seed {seed})",
        server.duplicate_writes()
    );
    let derived = derived_counts(&server);
    let branches_per_incident = runs.iter().map(|run| derived.get(run).copied().unwrap_or(0)).max().unwrap_or(0);
    assert!(branches_per_incident <= 1, "an incident was branched {branches_per_incident} times (seed {seed})");
    assert!(mirror_failures.lock().expect("lock").is_empty(), "{:?}", mirror_failures.lock());

    // A stalled replica's writes under its lost leases were refused, and counted.
    let mut refused_total = 0;
    for pid in &events.stops {
        let status = statuses.get(pid).unwrap_or_else(|| panic!("replica {pid} left no status"));
        let replica = &status["replica"];
        let (rejections, refused, lost) = (
            replica["fencedRejections"].as_u64().unwrap_or(0),
            replica["effectsRefused"].as_u64().unwrap_or(0),
            replica["leasesLost"].as_u64().unwrap_or(0),
        );
        let log = std::fs::read_to_string(&logs[pid]).unwrap_or_default();
        let logged = log.matches("fenced write refused").count() as u64;
        assert_eq!(logged, rejections, "replica {pid}: every refused write is counted (seed {seed})");
        assert!(
            lost >= 1,
            "replica {pid} held claims when it stalled; it must have lost them (seed {seed}): {replica}"
        );
        refused_total += rejections + refused;
    }
    assert!(!events.stops.is_empty(), "the driver stalled no replica (seed {seed})");
    assert!(!events.kills.is_empty(), "the driver killed no replica (seed {seed})");
    assert!(
        worst_overdue <= RESCUE_BOUND.as_secs_f64(),
        "a claim stayed with an expired lease for {worst_overdue:.2}s (bound {RESCUE_BOUND:?}, seed {seed})"
    );
    let mut takeovers = takeovers.lock().expect("lock").clone();
    takeovers.sort();
    let quantile = |q: f64| takeovers.get(((takeovers.len() as f64 - 1.0) * q).round() as usize).copied();
    eprintln!(
        "chaos seed {seed}: {incidents} incidents {by_status:?}; {} kill(s), {} stall(s), {} connection(s) terminated; \
         {refused_total} stale write(s)/effect(s) refused; longest expired claim {worst_overdue:.2}s; death → work \
         taken over p50 {:?} p99 {:?} ({} claims)",
        events.kills.len(),
        events.stops.len(),
        events.terminated,
        quantile(0.5),
        quantile(0.99),
        takeovers.len()
    );
    drop(schema);
}

/// The test's directory: kept when the test fails (the replicas' logs are the evidence),
/// removed when it passes.
struct Workspace(Option<tempfile::TempDir>);

impl Workspace {
    fn path(&self) -> &Path {
        self.0.as_ref().map_or(Path::new("."), |dir| dir.path())
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("chaos: logs kept in {}", dir.keep().display());
        }
    }
}

fn cluster_start(cluster: &Mutex<Cluster>) -> u32 {
    cluster.lock().expect("lock").start_replica()
}

/// The claims a replica process holds now, by its pid (replica ids are `host-pid-suffix`).
fn held_by(schema: &TestSchema, pid: u32) -> Vec<(String, i64)> {
    schema
        .query(&format!("SELECT key, epoch FROM claims WHERE state = 'claimed' AND holder LIKE '%-{pid}-%'"))
        .into_iter()
        .filter_map(|row| Some((row[0].clone()?, row[1].as_deref()?.parse().ok()?)))
        .collect()
}

/// How many runs were branched or replayed from each run (one pass over the runtime's runs).
fn derived_counts(server: &RuntimeServer) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for id in server.run_ids() {
        let Some(run) = server.run(&id) else { continue };
        for origin in [&run["metadata"]["lineage"]["branchOriginRunId"], &run["metadata"]["replay"]["sourceRunId"]] {
            if let Some(origin) = origin.as_str() {
                *counts.entry(origin.to_owned()).or_default() += 1;
            }
        }
    }
    counts
}

fn wait_for(schema: &TestSchema, what: &str, sql: &str, at_least: f64) {
    let started = Instant::now();
    while number(schema, sql) < at_least {
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
