//! `salvage simulate` over many incidents: the time to replay the recent incidents of a SQLite
//! store with the current set and a proposed one, per incident.
//!
//! `cargo bench --bench simulate` replays 1,000 incidents; `SALVAGE_BENCH_INCIDENTS=10000` (the
//! figure in BENCHMARKS.md) replays 10,000. The store is a generated one of the shared bench
//! stores (`benches/support`), 2.5 runs per incident wanted (about 44 % of the generated runs
//! are failed, waiting for approval or paused), cached in `target/bench-stores/`.
//!
//! Two jobs, each timed once (a 10,000-incident replay takes minutes; one run is the figure):
//! - `identical`: the shipped set against itself: the cost of planning twice and comparing;
//! - `compat`: the shipped set against the reference's (`policies/compat`, `playbooks/compat`):
//!   every incident changes, so the comparison, the danger checks and the report are included.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use salvage::plan::RecoverySet;
use salvage::simulate::{SimulateOptions, simulate};
use salvage::store::RunStore;
use support::{Backend, Templates, human};

fn incidents() -> usize {
    std::env::var("SALVAGE_BENCH_INCIDENTS")
        .ok()
        .map(|text| text.replace('_', "").parse().expect("SALVAGE_BENCH_INCIDENTS: a number"))
        .unwrap_or(1_000)
}

fn main() {
    // `cargo bench` passes `--bench`; a `cargo test --benches` run passes nothing and only
    // checks that the bench builds.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let incidents = incidents();
    let store = support::disk_store(Backend::Sqlite, incidents * 5 / 2, Templates::Full);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = RecoverySet::load(&root.join("playbooks"), &root.join("policies")).expect("the shipped sets");
    let compat = RecoverySet::load(&root.join("playbooks/compat"), &root.join("policies/compat")).expect("compat");
    let runtime = support::runtime();
    let opened: Arc<dyn RunStore> = Arc::from(runtime.block_on(store.open()));
    let options = SimulateOptions { limit: incidents, since: None };
    println!("simulate over {} of the {} runs of {}", incidents, store.size, store.spec);
    println!("| job | incidents | changed | dangerous | total | per incident |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (job, proposed) in [("identical", &shipped), ("compat", &compat)] {
        let started = Instant::now();
        let simulation = runtime
            .block_on(simulate(Arc::clone(&opened), &shipped, proposed, &options, &|_, _| {}))
            .expect("simulate");
        let elapsed = started.elapsed();
        let counts = simulation.counts;
        assert_eq!(counts.simulated, incidents, "the store holds enough incidents");
        println!(
            "| {job} | {} | {} | {} | {} | {} |",
            counts.simulated,
            counts.changed,
            counts.dangerous,
            human(elapsed),
            human(elapsed / counts.simulated.max(1) as u32)
        );
    }
}
