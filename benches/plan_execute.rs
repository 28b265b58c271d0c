//! Planning and executing at scale (issues 4 and 5). Timed with `Instant` and printed as tables:
//! each case is a batch whose total is the figure that matters (1,000 plans; one 50-step
//! execution), not a per-call mean.
//!
//! - `plans`: `Planner::plan` with the shipped policies and playbooks for the 1,000 failed runs
//!   of a generated SQLite store (see `support`), per size of `SALVAGE_BENCH_SIZES` (default
//!   1,000 / 10,000 / 100,000). Target: 1,000 plans in a 100,000-run store in under 2 s.
//! - `journal`: a plan of 50 read-only steps (a generated playbook chaining `inspect_report`)
//!   applied by the runner in enforce mode on each store backend — every step journals an intent
//!   and an outcome — and the same plan applied in advisory mode (journal in memory). Target:
//!   journalling costs at most 1 ms per step on SQLite. The cost is shown two ways: enforce minus
//!   advisory on the same backend (the journal and execution record written durably versus kept
//!   in memory), and the journal writes alone (an intent and an outcome per step, appended
//!   through `ExecutionStore::append_journal`, each durable before it returns).
//!
//! `cargo bench --bench plan_execute` runs both; `-- plans` or `-- journal` picks one.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use salvage::execute::{Mode, Runner, RunnerSettings, RuntimeRegistry};
use salvage::model::Run;
use salvage::plan::RecoverySet;
use salvage::store::{Expected, FileStore, JournalRecord, MemoryStore, RunStore, SqliteStore, Store};
use serde_json::json;
use support::{Backend, Templates, human};

const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
const JOURNAL_STEPS: usize = 50;
const JOURNAL_ROUNDS: usize = 20;

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with('-')).collect();
    let wanted = |case: &str| filter.is_empty() || filter.iter().any(|f| case.contains(f.as_str()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if wanted("plans") {
        plans(root);
    }
    if wanted("journal") {
        journal(root);
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

fn plans(root: &Path) {
    let set = RecoverySet::load(&root.join("playbooks"), &root.join("policies")).expect("the shipped sets load");
    let runtime = support::runtime();
    println!("plans: 1,000 failed runs planned one after another with the shipped sets (SQLite store)");
    println!("{:>9}  {:>11}  {:>9}  {:>9}  {:>9}  {:>9}", "store", "1,000 plans", "CPU", "p50", "p99", "max");
    for size in support::sizes() {
        let disk = support::disk_store(Backend::Sqlite, size, Templates::Full);
        let store: Arc<dyn RunStore> = Arc::from(runtime.block_on(disk.open()));
        let planner = set.planner(store);
        let mut each = Vec::with_capacity(disk.manifest.failed_sample.len());
        let started = Instant::now();
        let cpu_before = support::cpu_time();
        for run_id in &disk.manifest.failed_sample {
            let one = Instant::now();
            let plan = runtime.block_on(planner.plan(run_id, None)).expect("every failed run plans");
            each.push(one.elapsed());
            std::hint::black_box(plan);
        }
        let total = started.elapsed();
        let cpu = support::cpu_time() - cpu_before;
        each.sort();
        println!(
            "{:>9}  {:>11}  {:>9}  {:>9}  {:>9}  {:>9}",
            size,
            human(total),
            human(cpu),
            human(percentile(&each, 0.5)),
            human(percentile(&each, 0.99)),
            human(percentile(&each, 1.0))
        );
        // The same 1,000 plans, as many at a time as the machine has cores (how `serve` and
        // `simulate` plan a backlog).
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let started = Instant::now();
        runtime.block_on(async {
            let mut pending = disk.manifest.failed_sample.iter().cloned();
            let mut running = tokio::task::JoinSet::new();
            loop {
                while running.len() < workers {
                    let Some(run_id) = pending.next() else { break };
                    let planner = planner.clone();
                    running.spawn(async move { planner.plan(&run_id, None).await.map(|plan| plan.plan_hash) });
                }
                match running.join_next().await {
                    Some(done) => {
                        std::hint::black_box(done.expect("planning task").expect("every failed run plans"));
                    }
                    None => break,
                }
            }
        });
        println!("{:>9}  {:>11}  ({workers} at a time)", size, human(started.elapsed()));
    }
}

/// A playbook of `JOURNAL_STEPS` read-only steps for tool failures, outranking the shipped ones.
fn long_playbook() -> String {
    let mut text = String::from(
        "playbook: long-read-only\nversion: 1\ndescription: \"Journal benchmark, read-only steps only.\"\n\
         match:\n  incident: tool_failure\npriority: 10000\nstart: s1\nsteps:\n",
    );
    for step in 1..=JOURNAL_STEPS {
        let next = if step == JOURNAL_STEPS { "done".to_owned() } else { format!("s{}", step + 1) };
        text.push_str(&format!("  s{step}:\n    action: inspect_report\n    next: {next}\n"));
    }
    text.push_str("ends:\n  done: { outcome: resolved }\n");
    text
}

fn example_runs(root: &Path) -> Vec<Run> {
    std::fs::read_dir(root.join("examples/runs"))
        .expect("examples/runs")
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|x| x == "json"))
        .map(|entry| {
            let bytes = std::fs::read(entry.path()).expect("read an example run");
            Run::from_value(serde_json::from_slice(&bytes).expect("example runs are JSON")).expect("example run")
        })
        .collect()
}

async fn fresh_store(backend: Backend, dir: &Path, runs: &[Run]) -> Arc<dyn Store> {
    let store: Arc<dyn Store> = match backend {
        Backend::Sqlite => Arc::new(SqliteStore::open(dir.join("runs.db")).await.expect("sqlite store")),
        Backend::File => Arc::new(FileStore::open(dir.join("runs")).await.expect("file store")),
        Backend::Memory => Arc::new(MemoryStore::new()),
    };
    store.save_all(runs, Expected::Absent).await.expect("save the example runs");
    store
}

fn journal(root: &Path) {
    let playbooks = tempfile::tempdir().expect("tempdir");
    std::fs::write(playbooks.path().join("long-read-only.yaml"), long_playbook()).expect("write the playbook");
    for shipped in std::fs::read_dir(root.join("playbooks")).expect("playbooks").filter_map(Result::ok) {
        if shipped.path().extension().is_some_and(|x| x == "yaml") {
            std::fs::copy(shipped.path(), playbooks.path().join(shipped.file_name())).expect("copy a playbook");
        }
    }
    let set = RecoverySet::load(playbooks.path(), &root.join("policies")).expect("the benchmark sets load");
    let runs = example_runs(root);
    let runtime = support::runtime();
    println!(
        "journal: one plan of {JOURNAL_STEPS} read-only steps applied by the runner, {JOURNAL_ROUNDS} rounds \
         (fresh store each round)"
    );
    println!("{:>8}  {:>9}  {:>10}  {:>10}  {:>10}", "store", "mode", "execution", "per step", "p99 exec");
    for backend in [Backend::Memory, Backend::Sqlite, Backend::File] {
        for mode in [Mode::Advisory, Mode::Enforce] {
            let mut each = Vec::with_capacity(JOURNAL_ROUNDS);
            for _ in 0..JOURNAL_ROUNDS {
                let dir = tempfile::tempdir().expect("tempdir");
                let store = runtime.block_on(fresh_store(backend, dir.path(), &runs));
                let plan = runtime
                    .block_on(set.planner(store.clone() as Arc<dyn RunStore>).plan(FAILED_INVOICE, None))
                    .expect("plan");
                assert_eq!(plan.steps.len(), JOURNAL_STEPS, "the benchmark playbook was chosen");
                let settings = RunnerSettings { export_dir: dir.path().join("bundles"), ..RunnerSettings::default() };
                let runner = Runner::new(
                    store,
                    set.policies.clone(),
                    set.playbooks.clone(),
                    Arc::new(RuntimeRegistry::default()),
                    settings,
                    mode,
                    "bench",
                );
                let plan = plan.to_value();
                let started = Instant::now();
                let report = runtime.block_on(runner.apply(&plan)).expect("apply");
                each.push(started.elapsed());
                assert_eq!(report.steps.len(), JOURNAL_STEPS, "every step ran");
            }
            each.sort();
            let median = percentile(&each, 0.5);
            println!(
                "{:>8}  {:>9}  {:>10}  {:>10}  {:>10}",
                backend.name(),
                format!("{mode:?}").to_lowercase(),
                human(median),
                human(median / JOURNAL_STEPS as u32),
                human(percentile(&each, 0.99))
            );
        }
    }
    journal_writes(&runtime, &runs);
}

/// The durable journal writes of one step (intent, then outcome), alone.
fn journal_writes(runtime: &tokio::runtime::Runtime, runs: &[Run]) {
    const STEPS: usize = 200;
    println!("journal writes: intent + outcome of {STEPS} steps appended one by one");
    println!("{:>8}  {:>10}  {:>10}", "store", "total", "per step");
    for backend in [Backend::Memory, Backend::Sqlite, Backend::File] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = runtime.block_on(fresh_store(backend, dir.path(), runs));
        let started = Instant::now();
        runtime.block_on(async {
            for step in 0..STEPS {
                for (offset, kind) in [(1, "intent"), (2, "outcome")] {
                    let record = JournalRecord {
                        execution_id: "exec-bench".to_owned(),
                        seq: (step * 2 + offset) as u64,
                        body: json!({"kind": kind, "stepId": format!("s{step}"), "attempt": 1,
                                     "idempotencyKey": format!("plan-bench:s{step}:1"), "outcome": "ok"}),
                    };
                    store.append_journal(&record).await.expect("append");
                }
            }
        });
        let total = started.elapsed();
        println!("{:>8}  {:>10}  {:>10}", backend.name(), human(total), human(total / STEPS as u32));
    }
    // What the disk charges for one durable write, for scale: the journal cannot be cheaper than
    // the fsyncs it needs (SQLite in WAL mode with `synchronous = FULL`: one per commit).
    let dir = tempfile::tempdir().expect("tempdir");
    let mut file = std::fs::File::create(dir.path().join("sync")).expect("create");
    let started = Instant::now();
    for _ in 0..STEPS {
        std::io::Write::write_all(&mut file, &[0u8; 4096]).expect("write");
        file.sync_data().expect("fsync");
    }
    let per_sync = started.elapsed() / STEPS as u32;
    println!("baseline: one 4 KiB write + fdatasync on this disk: {}", human(per_sync));
}
