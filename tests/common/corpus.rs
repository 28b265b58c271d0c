//! Where the recorded conformance corpus is. Shared by every test that reads it.

use std::path::{Path, PathBuf};

/// The corpus root: `$SALVAGE_CONFORMANCE`, default `../shared/conformance` next to the crate.
///
/// When it is absent the caller skips, after a loud note on stderr — unless
/// `SALVAGE_REQUIRE_CONFORMANCE` is set (CI sets it), in which case the test fails.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SALVAGE_CONFORMANCE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"),
    };
    if dir.join("stores").is_dir() {
        return Some(dir);
    }
    if std::env::var_os("SALVAGE_REQUIRE_CONFORMANCE").is_some() {
        panic!("conformance corpus not found at {} and SALVAGE_REQUIRE_CONFORMANCE is set", dir.display());
    }
    eprintln!("\n**************************************************************");
    eprintln!("SKIPPED: conformance corpus not found at {}", dir.display());
    eprintln!("set SALVAGE_CONFORMANCE to the corpus folder to run these tests");
    eprintln!("**************************************************************\n");
    None
}
