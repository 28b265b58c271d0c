//! The policy and playbook sets a planner plans with, loaded and checked together.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Planner;
use crate::playbook::{Diagnostic, PlaybookSet};
use crate::policy::PolicySet;
use crate::store::RunStore;

/// A policy set and the playbook set compiled against it, both clean (every check of
/// `salvage check` passed). Immutable: a reload builds a new one and swaps it in whole, so a
/// plan never mixes the policies of one edit with the playbooks of another.
#[derive(Debug, Clone)]
pub struct RecoverySet {
    pub policies: Arc<PolicySet>,
    pub playbooks: Arc<PlaybookSet>,
}

/// Why a recovery set did not load; every diagnostic is kept for the operator.
#[derive(Debug, thiserror::Error)]
pub enum RecoverySetError {
    #[error("the policies in {} have {} error(s)", dir.display(), errors(diagnostics))]
    Policies { dir: PathBuf, diagnostics: Vec<Diagnostic> },
    #[error("the playbooks in {} have {} error(s)", dir.display(), errors(diagnostics))]
    Playbooks { dir: PathBuf, diagnostics: Vec<Diagnostic> },
}

fn errors(diagnostics: &[Diagnostic]) -> usize {
    diagnostics.iter().filter(|d| d.is_error()).count()
}

impl RecoverySetError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            RecoverySetError::Policies { diagnostics, .. } | RecoverySetError::Playbooks { diagnostics, .. } => {
                diagnostics
            }
        }
    }
}

impl RecoverySet {
    /// Reads every policy of `policies_dir` and every playbook of `playbooks_dir`, compiling
    /// the playbooks against those policies.
    pub fn load(playbooks_dir: &Path, policies_dir: &Path) -> Result<RecoverySet, RecoverySetError> {
        let policies = PolicySet::load(policies_dir).map_err(|error| RecoverySetError::Policies {
            dir: policies_dir.to_path_buf(),
            diagnostics: error.diagnostics.into_iter().map(Diagnostic::from).collect(),
        })?;
        let playbooks = PlaybookSet::load(playbooks_dir, Some(&policies))
            .map_err(|diagnostics| RecoverySetError::Playbooks { dir: playbooks_dir.to_path_buf(), diagnostics })?;
        Ok(RecoverySet { policies: Arc::new(policies), playbooks: Arc::new(playbooks) })
    }

    /// Compiles a set given in memory (as `(path, text)` per file), e.g. a set recorded when it
    /// was applied; equal sources give the same digests as [`RecoverySet::load`].
    pub fn from_sources(
        playbooks_dir: &Path,
        policies: Vec<(PathBuf, String)>,
        playbooks: &[(PathBuf, String)],
    ) -> Result<RecoverySet, RecoverySetError> {
        let dir = policies.first().and_then(|(path, _)| path.parent()).map(Path::to_path_buf).unwrap_or_default();
        let policies = PolicySet::from_sources(policies).map_err(|error| RecoverySetError::Policies {
            dir,
            diagnostics: error.diagnostics.into_iter().map(Diagnostic::from).collect(),
        })?;
        let playbooks = PlaybookSet::from_sources(playbooks_dir, playbooks, Some(&policies))
            .map_err(|diagnostics| RecoverySetError::Playbooks { dir: playbooks_dir.to_path_buf(), diagnostics })?;
        Ok(RecoverySet { policies: Arc::new(policies), playbooks: Arc::new(playbooks) })
    }

    /// A planner over `store` with these sets.
    pub fn planner(&self, store: Arc<dyn RunStore>) -> Planner {
        Planner::new(store, Arc::clone(&self.policies), Arc::clone(&self.playbooks))
    }

    /// `policy digest` + `playbook digest`: equal digests mean equal sources.
    pub fn digest(&self) -> String {
        format!("{}+{}", self.policies.digest(), self.playbooks.digest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn the_shipped_sets_load_and_have_a_stable_digest() {
        let first = RecoverySet::load(&root().join("playbooks"), &root().join("policies")).expect("shipped sets");
        let second = RecoverySet::load(&root().join("playbooks"), &root().join("policies")).expect("shipped sets");
        assert_eq!(first.digest(), second.digest());
        assert!(!first.playbooks.playbooks().is_empty());
    }

    #[test]
    fn a_policy_error_is_reported_with_its_diagnostics() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("bad.rhai"), "fn classify(report, ctx) { ").expect("write");
        let error = RecoverySet::load(&root().join("playbooks"), dir.path()).expect_err("broken policy");
        assert!(matches!(error, RecoverySetError::Policies { .. }), "{error}");
        assert!(error.diagnostics().iter().any(|d| d.file.ends_with("bad.rhai")), "{:?}", error.diagnostics());
    }

    #[test]
    fn playbooks_naming_a_missing_hook_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("only.rhai"), "fn classify(report, ctx) { \"tool_failure\" }\n").expect("write");
        let error = RecoverySet::load(&root().join("playbooks"), dir.path()).expect_err("hooks missing");
        assert!(matches!(error, RecoverySetError::Playbooks { .. }), "{error}");
    }
}
