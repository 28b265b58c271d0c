//! The setup of the benchmarks that recover runs with one playbook of their own: the number
//! of incidents (`SALVAGE_BENCH_INCIDENTS`, default 100) and a recovery set of that playbook
//! with the shipped policies, in a temporary directory that also holds the benchmark's files.

use std::path::Path;

use salvage::plan::RecoverySet;

pub struct Setup {
    pub incidents: usize,
    /// The temporary directory (the playbook is in `playbooks/`); removed when dropped.
    pub work: tempfile::TempDir,
    pub set: RecoverySet,
}

/// `playbook` saved as `playbooks/<name>.yaml` and loaded with the shipped policies.
pub fn setup(name: &str, playbook: &str) -> Setup {
    let incidents = std::env::var("SALVAGE_BENCH_INCIDENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(100);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().expect("temp");
    let playbooks = work.path().join("playbooks");
    std::fs::create_dir(&playbooks).expect("mkdir");
    std::fs::write(playbooks.join(format!("{name}.yaml")), playbook).expect("playbook");
    let set = RecoverySet::load(&playbooks, &root.join("policies")).expect("sets");
    Setup { incidents, work, set }
}
