//! The conformance corpus's run records, for tests that compare two ways of reading a run on
//! real data (`$SALVAGE_CONFORMANCE`, default `../shared/conformance`; never copied here).

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The conformance corpus (`$SALVAGE_CONFORMANCE`, default `../shared/conformance`), or a
/// loud note that these tests skip it.
fn corpus_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SALVAGE_CONFORMANCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"));
    if dir.join("stores").is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("SALVAGE_REQUIRE_CONFORMANCE").is_none(),
        "conformance corpus not found at {} and SALVAGE_REQUIRE_CONFORMANCE is set",
        dir.display()
    );
    eprintln!("\n**************************************************************");
    eprintln!("SKIPPED: conformance corpus not found at {}", dir.display());
    eprintln!("set SALVAGE_CONFORMANCE to the corpus folder to run these tests");
    eprintln!("**************************************************************\n");
    None
}

/// Every run record of the corpus as stored bytes, named: the stores' files and the lines
/// of `random/base-runs.jsonl`.
pub(crate) fn corpus_records() -> Vec<(String, Vec<u8>)> {
    let Some(dir) = corpus_dir() else { return Vec::new() };
    let mut records = Vec::new();
    let mut stores: Vec<PathBuf> = std::fs::read_dir(dir.join("stores"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap_or_else(|e| panic!("{e}")).path())
        .collect();
    stores.sort();
    for store in stores {
        let Ok(runs) = std::fs::read_dir(store.join("runs")) else { continue };
        let mut paths: Vec<PathBuf> = runs.map(|entry| entry.unwrap_or_else(|e| panic!("{e}")).path()).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            records.push((path.display().to_string(), bytes));
        }
    }
    let base = dir.join("random/base-runs.jsonl");
    let text = std::fs::read(&base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
    for (line, bytes) in text.split(|b| *b == b'\n').enumerate() {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // Each line is `{storeId, role, run}`: the record is its `run`.
        let name = format!("{}:{}", base.display(), line + 1);
        let mut entry: Value = serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let run = entry.get_mut("run").map(Value::take).unwrap_or_else(|| panic!("{name}: no `run`"));
        let bytes = serde_json::to_vec(&run).unwrap_or_else(|e| panic!("{name}: {e}"));
        records.push((name, bytes));
    }
    records
}
