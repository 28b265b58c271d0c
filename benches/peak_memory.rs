//! Peak memory (and wall time) of the real `salvage` binary on the benchmark stores: criterion
//! measures no memory, so each job runs as a child process and its peak RSS comes from
//! `wait4`'s `rusage.ru_maxrss`.
//!
//! `cargo bench --bench peak_memory` prints a table for the stores of 1,000 / 10,000 / 100,000
//! runs (`SALVAGE_BENCH_SIZES` to choose), on the sqlite and file backends (a `memory:` store
//! starts empty in every process, so the CLI has nothing to measure there). With
//! `SALVAGE_BENCH_MILLION=1` it adds the million-run file store.
//!
//! Jobs, as an operator would run them:
//! - file store only, `runs --quiet` with the sidecar index removed: the index build;
//! - `report <failed run>`;
//! - `tree` (drawn from the index);
//! - `tree --json` (the whole forest, every run loaded and summarised);
//! - `export --bundle <1,000 runs> -o FILE`;
//! - file store only, `import DIR` of the whole store directory into a new SQLite store.
//!
//! `SALVAGE_BENCH_PRELOAD=/path/to/lib.so` runs every job with that library preloaded
//! (`LD_PRELOAD`): the way to compare allocators on one binary (e.g. glibc's malloc against
//! `libjemalloc.so.2`; the binary links jemalloc itself, so set
//! `SALVAGE_BENCH_BINARY` to a build without it for the glibc figures).

mod support;

use std::path::Path;

use support::{Backend, DiskStore, Measured, Templates, human, measure, mib};

fn jobs(disk: &DiskStore, scratch: &Path, with_json_forest: bool) -> Vec<(String, Measured)> {
    let mut out = Vec::new();
    let mut run = |what: String, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let measured = measure(&disk.spec, &args);
        eprintln!(
            "  {:<8} {:>9} {:<44} {:>10} {:>9}",
            disk.backend.name(),
            disk.size,
            what,
            human(measured.wall),
            mib(measured.peak_rss_kib)
        );
        out.push((what, measured));
    };
    if disk.backend == Backend::File {
        std::fs::remove_dir_all(disk.path.join(".salvage"))
            .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
            .expect("remove the sidecar index");
        run("index build: `runs --quiet`, no sidecar index".into(), vec!["runs".into(), "--quiet".into()]);
        // A read command does not create the sidecar index (it indexes in memory); a writer
        // does, as the store's first writer would have.
        let runtime = support::runtime();
        runtime.block_on(async { disk.open().await.catch_up().await }).expect("build the sidecar index");
        run("`runs --quiet` (index present)".into(), vec!["runs".into(), "--quiet".into()]);
    }
    let failed = disk.manifest.failed_sample[0].clone();
    run("`report <failed run>`".into(), vec!["report".into(), failed.clone()]);
    run("`report <failed run> --json`".into(), vec!["report".into(), failed, "--json".into()]);
    run("`tree` (index only)".into(), vec!["tree".into()]);
    if with_json_forest {
        run("`tree --json` (whole forest, summaries)".into(), vec!["tree".into(), "--json".into()]);
    }
    let output = scratch.join(format!("bundle-{}-{}.json", disk.backend.name(), disk.size));
    let mut args: Vec<String> = vec!["export".into(), "--bundle".into()];
    args.extend(disk.manifest.export_sample.iter().cloned());
    args.extend(["-o".into(), output.display().to_string()]);
    run(format!("`export --bundle` {} runs `-o FILE`", disk.manifest.export_sample.len()), args);
    let _ = std::fs::remove_file(&output);
    if disk.backend == Backend::File {
        // Every run of the directory into a new SQLite store, streamed into one transaction.
        let target = scratch.join(format!("import-{}.db", disk.size));
        let spec = format!("sqlite:{}", target.display());
        let args = ["import".to_owned(), disk.path.display().to_string()];
        let measured = measure(&spec, &args.iter().map(String::as_str).collect::<Vec<_>>());
        let what = format!("`import` of the {} files into a new SQLite store", disk.size);
        eprintln!(
            "  {:<8} {:>9} {:<44} {:>10} {:>9}",
            "sqlite",
            disk.size,
            what,
            human(measured.wall),
            mib(measured.peak_rss_kib)
        );
        out.push((what, measured));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", target.display()));
        }
    }
    out
}

fn main() {
    support::launcher();
    // `cargo bench` passes `--bench`; a filter argument is ignored here.
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let mut table = Vec::new();
    for size in support::sizes() {
        for backend in [Backend::Sqlite, Backend::File] {
            let disk = support::disk_store(backend, size, Templates::Full);
            for (what, measured) in jobs(&disk, scratch.path(), true) {
                table.push((backend.name(), size, what, measured));
            }
        }
    }
    if std::env::var_os("SALVAGE_BENCH_MILLION").is_some() {
        let disk = support::disk_store(Backend::File, 1_000_000, Templates::Slim);
        // The whole forest with summaries of a million runs is not an operator's job (`tree`
        // draws it from the index); it is left out.
        for (what, measured) in jobs(&disk, scratch.path(), false) {
            table.push(("file (slim runs)", 1_000_000, what, measured));
        }
    }
    println!("\n| store | runs | job | wall time | peak RSS |");
    println!("|---|---:|---|---:|---:|");
    for (backend, size, what, measured) in table {
        println!("| {backend} | {size} | {what} | {} | {} |", human(measured.wall), mib(measured.peak_rss_kib));
    }
}
