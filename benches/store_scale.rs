//! Read-side speed against store size: stores of 1,000 / 10,000 / 100,000 runs (sqlite, file
//! and memory backends), built from the conformance corpus (see `support`).
//!
//! Per store:
//! - `report_1000_failed`: `create_report` for 1,000 failed runs (one iteration = 1,000 reports);
//! - `forest_build_render`: `build_forest` (every run loaded and summarised) and `render`;
//! - `index_render`: `render_store_forest` (drawn from the index, no run loaded);
//! - `export_bundle_1000`: 1,000 runs read (`trace::get_runs`) and their bundle written as
//!   pretty JSON straight from the runs (as `salvage export --bundle -o FILE` does);
//!   `export_bundle_1000_via_value`: the same through `Value`s, as it was done before;
//! - `export_run` / `export_run_via_value`: the same for one run (`salvage export RUN`);
//! - file store only: `index_build` (first `refresh()` with no sidecar index) and
//!   `refresh_unchanged` (what every new process pays on its first lookup).
//!
//! `cargo bench --bench store_scale` runs everything; a filter picks cases, e.g.
//! `cargo bench --bench store_scale -- 'sqlite/100000'`. Sizes: `SALVAGE_BENCH_SIZES=1000,10000`.
//!
//! The million-run file store runs only when asked:
//! `SALVAGE_BENCH_MILLION=1 cargo bench --bench store_scale -- million` (once, timed with
//! `Instant`, printed as a table: a criterion sample of a 1M-file index build would take an hour).

mod support;

use std::cell::OnceCell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, SamplingMode, measurement::WallTime};
use salvage::inspect::{self, trace};
use salvage::store::{FileStore, RunStore};
use support::{Backend, DiskStore, Manifest, Templates, human};

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    if std::env::var_os("SALVAGE_BENCH_MILLION").is_some() {
        million();
    }
    for size in support::sizes() {
        for backend in [Backend::Sqlite, Backend::File, Backend::Memory] {
            bench_store(&mut criterion, backend, size);
        }
    }
    criterion.final_summary();
}

/// A store opened on first use: criterion calls a case's closure only when the case passes the
/// command-line filter, so stores no selected case needs are never built.
struct LazyStore {
    backend: Backend,
    size: usize,
    cell: OnceCell<(Box<dyn RunStore>, Manifest, Option<DiskStore>)>,
}

impl LazyStore {
    fn get(&self, runtime: &tokio::runtime::Runtime) -> &(Box<dyn RunStore>, Manifest, Option<DiskStore>) {
        self.cell.get_or_init(|| match self.backend {
            Backend::Memory => {
                let (store, manifest) = support::memory_store(self.size);
                (Box::new(store), manifest, None)
            }
            backend => {
                let disk = support::disk_store(backend, self.size, Templates::Full);
                let store = runtime.block_on(disk.open());
                let manifest = disk.manifest.clone();
                eprintln!(
                    "{}: {} runs in {} families ({} children, {} replay branches, depth up to {}), {} failed; \
                     mean record {} B compact / {} B pretty",
                    disk.spec,
                    manifest.runs,
                    manifest.families,
                    manifest.child_runs,
                    manifest.branches,
                    manifest.max_depth,
                    manifest.failed_runs,
                    manifest.mean_record_bytes,
                    manifest.mean_file_bytes
                );
                (store, manifest, Some(disk))
            }
        })
    }
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>, size: usize) {
    // Heavy cases: ten samples, one iteration each when an iteration takes seconds.
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(if size >= 100_000 { 1 } else { 2 }));
    group.measurement_time(Duration::from_secs(if size >= 100_000 { 10 } else { 5 }));
}

fn bench_store(criterion: &mut Criterion, backend: Backend, size: usize) {
    let runtime = support::runtime();
    let lazy = LazyStore { backend, size, cell: OnceCell::new() };
    let mut group = criterion.benchmark_group(format!("{}/{size}", backend.name()));
    configure(&mut group, size);

    group.bench_function("report_1000_failed", |b| {
        let (store, manifest, _) = lazy.get(&runtime);
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    for run_id in &manifest.failed_sample {
                        let report = inspect::create_report(store.as_ref(), run_id, None).await.expect("a report");
                        black_box(report);
                    }
                }
                started.elapsed()
            })
        })
    });

    group.bench_function("forest_build_render", |b| {
        let (store, _, _) = lazy.get(&runtime);
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let forest = inspect::build_forest(store.as_ref()).await.expect("a forest");
                    black_box(inspect::render(&forest.roots, true));
                    // Dropping 100,000 nodes is part of the job.
                    drop(forest);
                }
                started.elapsed()
            })
        })
    });

    group.bench_function("index_render", |b| {
        let (store, _, _) = lazy.get(&runtime);
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    black_box(inspect::render_store_forest(store.as_ref(), true).await.expect("a render"));
                }
                started.elapsed()
            })
        })
    });

    group.bench_function("export_bundle_1000", |b| {
        let (store, manifest, _) = lazy.get(&runtime);
        let metadata = serde_json::Map::new();
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let loaded = trace::get_runs(store.as_ref(), &manifest.export_sample).await.expect("get_many");
                    assert_eq!(loaded.items.len(), manifest.export_sample.len());
                    let runs: Vec<_> = loaded.items.into_iter().map(|stored| stored.run).collect();
                    let mut text = Vec::new();
                    serde_json::to_writer_pretty(&mut text, &trace::export_bundle_of(&runs, &metadata))
                        .expect("a bundle serialises");
                    black_box(text.len());
                }
                started.elapsed()
            })
        })
    });

    // The export as it was before it was streamed: through `Value`s, one `get_many`.
    group.bench_function("export_bundle_1000_via_value", |b| {
        let (store, manifest, _) = lazy.get(&runtime);
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let loaded = store.get_many(&manifest.export_sample).await.expect("get_many");
                    assert_eq!(loaded.items.len(), manifest.export_sample.len());
                    let runs: Vec<_> = loaded.items.into_iter().map(|stored| stored.run).collect();
                    let bundle = trace::export_bundle(&runs, serde_json::Map::new()).to_value();
                    black_box(serde_json::to_string_pretty(&bundle).expect("a bundle serialises").len());
                }
                started.elapsed()
            })
        })
    });

    group.bench_function("export_run", |b| {
        let (store, manifest, _) = lazy.get(&runtime);
        let run_id = &manifest.export_sample[0];
        let metadata = serde_json::Map::new();
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let run = store.get(run_id).await.expect("get").expect("the run").run;
                    let mut text = Vec::new();
                    serde_json::to_writer_pretty(&mut text, &trace::export_run_of(&run, &metadata))
                        .expect("a trace serialises");
                    black_box(text.len());
                }
                started.elapsed()
            })
        })
    });

    group.bench_function("export_run_via_value", |b| {
        let (store, manifest, _) = lazy.get(&runtime);
        let run_id = &manifest.export_sample[0];
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let run = store.get(run_id).await.expect("get").expect("the run").run;
                    let trace = trace::export_run(&run, serde_json::Map::new()).to_value();
                    black_box(serde_json::to_string_pretty(&trace).expect("a trace serialises").len());
                }
                started.elapsed()
            })
        })
    });

    if backend == Backend::File {
        group.bench_function("index_build", |b| {
            let (_, _, disk) = lazy.get(&runtime);
            let dir = disk.as_ref().expect("a file store is on disk").path.clone();
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    remove_sidecar(&dir);
                    let started = Instant::now();
                    runtime.block_on(async {
                        let store = FileStore::open(&dir).await.expect("open");
                        black_box(store.refresh().await.expect("index build"));
                    });
                    total += started.elapsed();
                }
                total
            })
        });

        group.bench_function("refresh_unchanged", |b| {
            let (_, _, disk) = lazy.get(&runtime);
            let dir = disk.as_ref().expect("a file store is on disk").path.clone();
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let store = FileStore::open(&dir).await.expect("open");
                        let stats = store.refresh().await.expect("refresh");
                        assert_eq!(stats.parsed, 0, "nothing changed, nothing is parsed");
                        black_box(stats);
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
}

fn remove_sidecar(dir: &std::path::Path) {
    match std::fs::remove_dir_all(dir.join(".salvage")) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => panic!("cannot remove the sidecar index of {}: {error}", dir.display()),
    }
}

/// The million-run file store, once: index build, refresh, 1,000 reports, subtree lookups,
/// the index-only render of the whole store.
fn million() {
    const SIZE: usize = 1_000_000;
    let runtime = support::runtime();
    let disk = support::disk_store(Backend::File, SIZE, Templates::Slim);
    let manifest = &disk.manifest;
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |what: &str, value: String| {
        eprintln!("  {what}: {value}");
        rows.push((what.to_owned(), value));
    };
    row(
        "store",
        format!(
            "{} runs in {} families ({} children, {} replay branches, depth up to {}), {} failed; mean file {} B",
            manifest.runs,
            manifest.families,
            manifest.child_runs,
            manifest.branches,
            manifest.max_depth,
            manifest.failed_runs,
            manifest.mean_file_bytes
        ),
    );
    runtime.block_on(async {
        remove_sidecar(&disk.path);
        let started = Instant::now();
        let store = FileStore::open(&disk.path).await.expect("open");
        let stats = store.refresh().await.expect("index build");
        row(
            "index build (first refresh, no sidecar)",
            format!("{} ({} files parsed)", human(started.elapsed()), stats.parsed),
        );
        assert_eq!(stats.indexed as usize, SIZE);

        let started = Instant::now();
        let store = FileStore::open(&disk.path).await.expect("open");
        let stats = store.refresh().await.expect("refresh");
        row(
            "refresh of the unchanged store (new process)",
            format!("{} ({} parsed)", human(started.elapsed()), stats.parsed),
        );

        let started = Instant::now();
        for run_id in &manifest.failed_sample {
            black_box(inspect::create_report(&store, run_id, None).await.expect("a report"));
        }
        row("1,000 reports on failed runs", human(started.elapsed()));

        let started = Instant::now();
        let mut members = 0;
        for root in &manifest.family_roots {
            members += store.subtree(root).await.expect("a subtree").items.len();
        }
        row(
            "subtree lookup (largest families)",
            format!(
                "{} per lookup ({} lookups, {members} runs)",
                human(started.elapsed() / manifest.family_roots.len() as u32),
                manifest.family_roots.len()
            ),
        );

        let started = Instant::now();
        let listed = store.list(&salvage::store::RunQuery::all()).await.expect("list");
        row("list every run (index)", format!("{} ({} entries)", human(started.elapsed()), listed.items.len()));
        drop(listed);

        let started = Instant::now();
        let drawn = inspect::render_store_forest(&store, true).await.expect("render");
        row(
            "index-only render of the whole store",
            format!("{} ({} lines)", human(started.elapsed()), drawn.text.lines().count()),
        );
    });
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let peak = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init().ru_maxrss
    };
    row("peak RSS of this process (generation excluded only if cached)", format!("{} MiB", peak / 1024));
    println!("\nmillion-run file store ({})", disk.spec);
    for (what, value) in rows {
        println!("| {what} | {value} |");
    }
}
