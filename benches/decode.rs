//! Throughput of reading runs from their stored bytes (issue 13): `store::decode_run` over every
//! run of the conformance corpus (its stores' files and the runs of `random/base-runs.jsonl`),
//! and, for comparison in the same binary, the two-step decode (`Value`, then
//! `Run::from_value`).
//!
//! `cargo bench --bench decode` prints MB/s (wall and CPU time) for the best of
//! `SALVAGE_BENCH_REPEATS` (default 5) passes of `SALVAGE_BENCH_PASSES` (default 20) decodes of
//! the whole corpus.

mod support;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use salvage::model::Run;
use serde_json::Value;
use support::{corpus_dir, cpu_time};

/// Every corpus run as stored bytes.
fn records() -> Vec<Vec<u8>> {
    let dir = corpus_dir();
    let mut records = Vec::new();
    let stores = std::fs::read_dir(dir.join("stores")).unwrap_or_else(|e| {
        panic!("the decode bench needs the corpus at {} ({e}); set SALVAGE_CONFORMANCE", dir.display())
    });
    let mut paths: Vec<PathBuf> = stores
        .flat_map(|store| std::fs::read_dir(store.expect("store").path().join("runs")).into_iter().flatten())
        .map(|entry| entry.expect("run file").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    for path in paths {
        records.push(std::fs::read(&path).expect("read a run"));
    }
    let base = std::fs::read_to_string(dir.join("random/base-runs.jsonl")).expect("base-runs.jsonl");
    for line in base.lines().filter(|line| !line.trim().is_empty()) {
        let mut entry: Value = serde_json::from_str(line).expect("a JSON line");
        records.push(serde_json::to_vec(&entry["run"].take()).expect("a run"));
    }
    records
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn measure(what: &str, records: &[Vec<u8>], decode: impl Fn(&[u8]) -> Run) {
    let bytes: usize = records.iter().map(Vec::len).sum();
    let passes = env_count("SALVAGE_BENCH_PASSES", 20);
    let mut best: Option<(Duration, Duration)> = None;
    for _ in 0..env_count("SALVAGE_BENCH_REPEATS", 5) {
        let (started, cpu) = (Instant::now(), cpu_time());
        for _ in 0..passes {
            for record in records {
                black_box(decode(black_box(record)));
            }
        }
        let took = (started.elapsed(), cpu_time() - cpu);
        best = Some(best.map_or(took, |b| if took.0 < b.0 { took } else { b }));
    }
    let (wall, cpu) = best.expect("at least one repeat");
    let total = (bytes * passes) as f64 / 1e6;
    println!(
        "{what:<44} {:>8.1} MB/s wall {:>8.1} MB/s cpu   ({} runs, {:.2} MB per pass, {passes} passes, best wall {:?})",
        total / wall.as_secs_f64(),
        total / cpu.as_secs_f64(),
        records.len(),
        bytes as f64 / 1e6,
        wall
    );
}

fn main() {
    let records = records();
    measure("decode_run (what every store read does)", &records, |bytes| {
        salvage::store::decode_run("bench", bytes).expect("a corpus run")
    });
    measure("one UTF-8 check, then the one pass over text", &records, |bytes| {
        let text = std::str::from_utf8(bytes).expect("UTF-8");
        Run::from_json_str(text).expect("JSON").expect("a run")
    });
    measure("two steps: Value, then Run::from_value", &records, |bytes| {
        Run::from_value(serde_json::from_slice(bytes).expect("JSON")).expect("a run")
    });
}
