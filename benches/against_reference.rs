//! salvage against the reference (agnostic-agents 1.3.3 on Node 20), on stores of the shape
//! the reference was measured on: whole conformance scenario stores cloned with fresh ids,
//! ~30 % attached under an earlier clone for depth, ~17 KB of compact JSON per run
//! (`support::Templates::Scenarios`). Prints the "Against the reference" table of BENCHMARKS.md.
//!
//! `cargo bench --bench against_reference` measures 10,000 and 100,000 runs
//! (`SALVAGE_BENCH_SIZES` to choose; the first run builds and caches the stores: ~2 minutes
//! for 10,000, ~20 for 100,000 on two cores), `SALVAGE_BENCH_REPEAT` times each (default 3;
//! the table shows the median wall and CPU time and the largest peak RSS).
//!
//! `SALVAGE_BENCH_JOBS` chooses jobs by short name (comma-separated: `report`, `plan`, `tree`,
//! `tree-json`, `export-bundle`, `index-build`, `import`); only the stores those jobs read are
//! built or opened (`index-build,import` needs the file store alone).
//!
//! `SALVAGE_BENCH_MILLION=1` adds `tree --json` on a million-run SQLite store of slim clones
//! (`Templates::Slim`, ~3 KB per run; ~10 minutes to build).
//!
//! Every salvage figure is the real binary as a fresh process (`support::measure`: wall time,
//! user + system CPU time and peak RSS from `wait4`), store opening included, output to
//! /dev/null. The reference's figures are copied from `../shared/reference/reference-speed.md`
//! (same 2-core machine type, medians of 3). Two ratios: against the reference's call alone
//! (in-process, store already loaded: the harder comparison for a process that starts, opens
//! the store and prints) and against the reference as a process, where it has that figure.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{Backend, DiskStore, Measured, Templates, human, measure, mib};

/// What the reference did for one operation at one store size.
#[derive(Clone, Copy)]
enum Reference {
    /// Wall time of the call alone, in seconds (a range when it varied between plans).
    InProcess(f64, Option<f64>),
    /// In-process, and as a `node` process: (in-process s, process s, process peak MiB).
    Both(f64, f64, f64),
    /// As a process only: (s, peak MiB).
    Process(f64, f64),
    /// The reference cannot do it (why).
    Fails(&'static str),
}

impl Reference {
    fn describe(self) -> String {
        let s = |secs: f64| human(Duration::from_secs_f64(secs));
        match self {
            Reference::InProcess(low, None) => format!("{} in-process", s(low)),
            Reference::InProcess(low, Some(high)) => format!("{}–{} in-process", s(low), s(high)),
            Reference::Both(call, process, rss) => {
                format!("{} in-process; {}, {rss:.0} MiB as a process", s(call), s(process))
            }
            Reference::Process(process, rss) => format!("{}, {rss:.0} MiB", s(process)),
            Reference::Fails(why) => format!("fails: {why}"),
        }
    }

    /// The call alone, in seconds (the fastest when it varied).
    fn in_process(self) -> Option<f64> {
        match self {
            Reference::InProcess(low, _) | Reference::Both(low, _, _) => Some(low),
            Reference::Process(..) | Reference::Fails(_) => None,
        }
    }

    /// A fresh `node` process, store loading included, in seconds.
    fn process(self) -> Option<f64> {
        match self {
            Reference::Both(_, process, _) | Reference::Process(process, _) => Some(process),
            Reference::InProcess(..) | Reference::Fails(_) => None,
        }
    }
}

/// One operation of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Report,
    Plan,
    Tree,
    TreeJson,
    ExportBundle,
    IndexBuild,
    Import,
}

impl Job {
    const ALL: [Job; 7] =
        [Job::Report, Job::Plan, Job::Tree, Job::TreeJson, Job::ExportBundle, Job::IndexBuild, Job::Import];

    /// The name `SALVAGE_BENCH_JOBS` knows the job by.
    fn short_name(self) -> &'static str {
        match self {
            Job::Report => "report",
            Job::Plan => "plan",
            Job::Tree => "tree",
            Job::TreeJson => "tree-json",
            Job::ExportBundle => "export-bundle",
            Job::IndexBuild => "index-build",
            Job::Import => "import",
        }
    }

    /// The jobs `SALVAGE_BENCH_JOBS` names (every job when it is not set).
    fn chosen() -> Vec<Job> {
        let Ok(names) = std::env::var("SALVAGE_BENCH_JOBS") else {
            return Job::ALL.to_vec();
        };
        let names: Vec<&str> = names.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
        for name in &names {
            assert!(
                Job::ALL.iter().any(|job| job.short_name() == *name),
                "SALVAGE_BENCH_JOBS: unknown job {name:?} (known: {:?})",
                Job::ALL.map(Job::short_name)
            );
        }
        Job::ALL.into_iter().filter(|job| names.contains(&job.short_name())).collect()
    }

    fn name(self) -> &'static str {
        match self {
            Job::Report => "`report <failed run>` (IncidentDebugger.createReport)",
            Job::Plan => "`plan <failed run>` (DistributedRecoveryPlanner.createPlan)",
            Job::Tree => "`tree` (RunTreeInspector.build + render)",
            Job::TreeJson => "`tree --json` (whole-store tree + JSON.stringify + write)",
            Job::ExportBundle => "`export --bundle` of 1,000 runs (TraceSerializer.exportBundle + stringify)",
            Job::IndexBuild => "file store first open: index build (`runs --quiet`, no sidecar; FileRunStore.listRuns)",
            Job::Import => "writing the store: `import` of the run files into a new SQLite store (saveRun each)",
        }
    }

    /// The reference's figures at 10,000 and 100,000 runs (reference-speed.md).
    fn reference(self, size: usize) -> Option<Reference> {
        let [ten_thousand, hundred_thousand] = match self {
            Job::Report => [Reference::InProcess(0.169, None), Reference::InProcess(1.45, None)],
            Job::Plan => [Reference::InProcess(0.058, Some(0.112)), Reference::InProcess(1.34, Some(1.68))],
            Job::Tree => [Reference::InProcess(0.203, None), Reference::InProcess(1.85, None)],
            Job::TreeJson => [Reference::Both(0.423, 2.27, 466.0), Reference::Both(4.84, 28.1, 3970.0)],
            // At 100,000 runs: in-process on the memory store; its FileRunStore process fails
            // (EMFILE).
            Job::ExportBundle => [Reference::Both(0.238, 0.848, 205.0), Reference::InProcess(0.459, None)],
            Job::IndexBuild => [Reference::Process(7.2, 1200.0), Reference::Fails("opens every file at once (EMFILE)")],
            Job::Import => [Reference::Process(5.2, 86.0), Reference::Process(65.0, 91.0)],
        };
        match size {
            10_000 => Some(ten_thousand),
            100_000 => Some(hundred_thousand),
            _ => None,
        }
    }

    /// Whether the job runs on `backend` (the index build and the import read a file store).
    fn runs_on(self, backend: Backend) -> bool {
        match self {
            Job::IndexBuild | Job::Import => backend == Backend::File,
            _ => true,
        }
    }

    /// The salvage arguments on `disk` (`scratch` for outputs).
    fn arguments(self, disk: &DiskStore, scratch: &Path) -> Vec<String> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let failed = || disk.manifest.failed_sample[0].clone();
        match self {
            Job::Report => vec!["report".into(), failed()],
            Job::Plan => vec![
                "plan".into(),
                failed(),
                "--playbooks".into(),
                repo.join("playbooks").display().to_string(),
                "--policies".into(),
                repo.join("policies").display().to_string(),
            ],
            Job::Tree => vec!["tree".into()],
            Job::TreeJson => vec!["tree".into(), "--json".into()],
            Job::ExportBundle => {
                let mut args = vec!["export".into(), "--bundle".into()];
                args.extend(disk.manifest.export_sample.iter().cloned());
                args.extend(["-o".into(), scratch.join("bundle.json").display().to_string()]);
                args
            }
            Job::IndexBuild => vec!["runs".into(), "--quiet".into()],
            Job::Import => vec!["import".into(), disk.path.display().to_string()],
        }
    }

    /// Runs the job `repeat` times on `disk`: median wall and CPU, largest peak RSS.
    fn run(self, disk: &DiskStore, scratch: &Path, repeat: usize) -> Measured {
        let args = self.arguments(disk, scratch);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Every job but the index build reads a file store with its sidecar index, as a store
        // in use has it.
        if self != Job::IndexBuild {
            ensure_sidecar(disk);
        }
        let mut samples = Vec::new();
        for _ in 0..repeat {
            let measured = match self {
                Job::IndexBuild => {
                    // The first open of a file store: no sidecar index yet (a read command
                    // indexes in memory and leaves none behind).
                    remove_if_present(&disk.path.join(".salvage"));
                    measure(&disk.spec, &args)
                }
                Job::Import => {
                    let target = scratch.join("import.db");
                    for suffix in ["", "-wal", "-shm"] {
                        remove_if_present(Path::new(&format!("{}{suffix}", target.display())));
                    }
                    measure(&format!("sqlite:{}", target.display()), &args)
                }
                _ => measure(&disk.spec, &args),
            };
            eprintln!(
                "  {:<6} {:>7}  {:<40.40} {:>9} wall {:>9} CPU {:>9}",
                disk.backend.name(),
                disk.size,
                self.name(),
                human(measured.wall),
                human(measured.cpu),
                mib(measured.peak_rss_kib)
            );
            samples.push(measured);
        }
        let median = |mut values: Vec<Duration>| {
            values.sort();
            values[values.len() / 2]
        };
        Measured {
            wall: median(samples.iter().map(|m| m.wall).collect()),
            cpu: median(samples.iter().map(|m| m.cpu).collect()),
            peak_rss_kib: samples.iter().map(|m| m.peak_rss_kib).max().unwrap_or(0),
        }
    }
}

fn remove_if_present(path: &Path) {
    let removed = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    if let Err(error) = removed {
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "remove {}: {error}", path.display());
    }
}

/// The file store's sidecar index, as its first writer leaves it.
fn ensure_sidecar(disk: &DiskStore) {
    if disk.backend == Backend::File && !disk.path.join(".salvage").exists() {
        let runtime = support::runtime();
        runtime.block_on(async { disk.open().await.catch_up().await }).expect("build the sidecar index");
    }
}

fn main() {
    support::launcher();
    let sizes: Vec<usize> = match std::env::var("SALVAGE_BENCH_SIZES") {
        Ok(_) => support::sizes(),
        Err(_) => vec![10_000, 100_000],
    };
    let repeat: usize = std::env::var("SALVAGE_BENCH_REPEAT").ok().and_then(|n| n.parse().ok()).unwrap_or(3).max(1);
    let jobs = Job::chosen();
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let mut rows = Vec::new();
    for &size in &sizes {
        let stores: Vec<DiskStore> = [Backend::Sqlite, Backend::File]
            .into_iter()
            .filter(|&backend| jobs.iter().any(|job| job.runs_on(backend)))
            .map(|b| support::disk_store(b, size, Templates::Scenarios))
            .collect();
        let Some(first) = stores.first() else { continue };
        let manifest = &first.manifest;
        eprintln!(
            "{size} runs: {} roots, {} failed, depth up to {}, {} B per run compact, {} B pretty",
            manifest.runs - manifest.child_runs,
            manifest.failed_runs,
            manifest.max_depth,
            manifest.mean_record_bytes,
            manifest.mean_file_bytes
        );
        for &job in &jobs {
            let cells: Vec<(Backend, Measured)> = stores
                .iter()
                .filter(|disk| job.runs_on(disk.backend))
                .map(|disk| (disk.backend, job.run(disk, scratch.path(), repeat)))
                .collect();
            rows.push((job.name(), size, job.reference(size), cells));
        }
    }
    if std::env::var_os("SALVAGE_BENCH_MILLION").is_some() {
        // The million-run target for the whole forest (the reference has no figure at
        // this size). Slim clones keep the store to a few GB; the forest's shape, not the
        // records' size, is what grows.
        let disk = support::disk_store(Backend::Sqlite, 1_000_000, Templates::Slim);
        let measured = Job::TreeJson.run(&disk, scratch.path(), repeat);
        rows.push((Job::TreeJson.name(), 1_000_000, None, vec![(Backend::Sqlite, measured)]));
    }
    println!(
        "\n| operation | runs | reference | salvage, SQLite | salvage, file store | ÷ reference call alone (SQLite / file) | ÷ reference process (SQLite / file) |"
    );
    println!("|---|---:|---|---|---|---:|---:|");
    for (name, size, reference, cells) in rows {
        let cell = |backend: Backend| {
            cells.iter().find(|(b, _)| *b == backend).map_or_else(
                || "—".to_owned(),
                |(_, m)| format!("{} ({} CPU), {}", human(m.wall), human(m.cpu), mib(m.peak_rss_kib)),
            )
        };
        let ratio = |figure: Option<f64>, backend: Backend| match (figure, cells.iter().find(|(b, _)| *b == backend)) {
            (Some(reference), Some((_, m))) => format!("{:.1}×", reference / m.wall.as_secs_f64()),
            (None, Some(_)) if matches!(reference, Some(Reference::Fails(_))) => "only salvage".to_owned(),
            _ => "—".to_owned(),
        };
        let call = reference.and_then(Reference::in_process);
        let process = reference.and_then(Reference::process);
        println!(
            "| {name} | {size} | {} | {} | {} | {} / {} | {} / {} |",
            reference.map_or_else(|| "not measured".to_owned(), Reference::describe),
            cell(Backend::Sqlite),
            cell(Backend::File),
            ratio(call, Backend::Sqlite),
            ratio(call, Backend::File),
            ratio(process, Backend::Sqlite),
            ratio(process, Backend::File),
        );
    }
}
