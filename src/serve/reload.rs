//! Hot reload of the recovery set: re-read every playbook and policy, check them like
//! `salvage check`, ask the reload gate, and only then swap the whole set in at once.
//!
//! The invariant: the active set is always one that loaded clean. A reload that finds an error
//! changes nothing but the report (`Rejected`, with every diagnostic); planning reads the
//! active set with one atomic load, so a plan sees one whole set, never parts of two.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::json::now_iso;
use crate::plan::{RecoverySet, RecoverySetError};
use crate::playbook::Diagnostic;

/// How many applied sets a reloader remembers.
pub const HISTORY: usize = 4096;

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// A new set is active.
    Applied,
    /// The files on disk are the active set (same digest): nothing to do.
    Unchanged,
    /// The files have errors, or the gate refused them: the last good set stays active.
    Rejected,
}

impl ReloadOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Applied => "applied",
            ReloadOutcome::Unchanged => "unchanged",
            ReloadOutcome::Rejected => "rejected",
        }
    }
}

impl std::fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One diagnostic of a rejected reload, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadDiagnostic {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub code: String,
    pub severity: String,
    pub message: String,
}

impl ReloadDiagnostic {
    pub fn of(diagnostic: &Diagnostic) -> ReloadDiagnostic {
        ReloadDiagnostic {
            file: diagnostic.file.display().to_string(),
            line: diagnostic.line,
            column: diagnostic.column,
            code: diagnostic.code.to_owned(),
            severity: if diagnostic.is_error() { "error" } else { "warning" }.to_owned(),
            message: diagnostic.message.clone(),
        }
    }
}

impl std::fmt::Display for ReloadDiagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: {} {}: {}", self.file, self.line, self.column, self.severity, self.code, self.message)
    }
}

/// The digests of a recovery set, as recorded in plans and shown by `status`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetDigests {
    pub policy_digest: String,
    pub playbook_set_digest: String,
}

impl SetDigests {
    pub fn of(set: &RecoverySet) -> SetDigests {
        SetDigests {
            policy_digest: set.policies.digest().to_owned(),
            playbook_set_digest: set.playbooks.digest().to_owned(),
        }
    }

    /// `policy+playbooks`, [`RecoverySet::digest`]'s spelling.
    pub fn combined(&self) -> String {
        format!("{}+{}", self.policy_digest, self.playbook_set_digest)
    }
}

/// What a reload found and did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    pub at: String,
    /// `watch`, `sighup`, `watcher-recovered`, `request`…
    pub trigger: String,
    pub outcome: ReloadOutcome,
    /// The set active after the reload.
    pub active: SetDigests,
    /// The set found on disk, when it loaded.
    pub proposed: Option<SetDigests>,
    /// Why it was rejected (load errors or the gate's reason).
    pub reason: Option<String>,
    pub diagnostics: Vec<ReloadDiagnostic>,
    /// What the gate reported, when it ran.
    pub gate: Option<Value>,
    pub duration_ms: u64,
}

/// The gate's answer about a proposed set.
#[derive(Debug, Clone, PartialEq)]
pub enum GateVerdict {
    Accept,
    /// Keep the current set; `reason` and `details` go to the reload report and `status`.
    Reject {
        reason: String,
        details: Value,
    },
}

/// A check between "the new set loaded clean" and "the new set is active" (e.g. replaying
/// recent incidents with both sets and refusing dangerous changes).
#[async_trait]
pub trait ReloadGate: Send + Sync {
    /// A short name for reports (`none`, `simulate`).
    fn name(&self) -> &str;

    async fn check(&self, current: &RecoverySet, proposed: &RecoverySet) -> GateVerdict;
}

/// Accepts every clean set.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGate;

#[async_trait]
impl ReloadGate for NoGate {
    fn name(&self) -> &str {
        "none"
    }

    async fn check(&self, _current: &RecoverySet, _proposed: &RecoverySet) -> GateVerdict {
        GateVerdict::Accept
    }
}

/// Where the sets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDirs {
    pub playbooks: PathBuf,
    pub policies: PathBuf,
}

impl SetDirs {
    /// Loads the set on disk (every check of `salvage check`), off the async threads.
    pub async fn load(&self) -> Result<RecoverySet, RecoverySetError> {
        let dirs = self.clone();
        match tokio::task::spawn_blocking(move || RecoverySet::load(&dirs.playbooks, &dirs.policies)).await {
            Ok(loaded) => loaded,
            // The loader panicked: report it as a policy error of the directory rather than
            // taking the daemon down.
            Err(error) => {
                tracing::error!(%error, "Loading the recovery set panicked.");
                Err(RecoverySetError::Policies { dir: self.policies.clone(), diagnostics: Vec::new() })
            }
        }
    }
}

/// The active recovery set and its reloads.
pub struct Reloader {
    dirs: SetDirs,
    active: ArcSwap<RecoverySet>,
    gate: Arc<dyn ReloadGate>,
    /// One reload at a time: two overlapping reloads could otherwise swap in the older set last.
    reloading: tokio::sync::Mutex<()>,
    last: Mutex<Option<ReloadReport>>,
    counts: Mutex<ReloadCounts>,
    /// The sets that were active (the first one included) and since when, oldest first; the
    /// last [`HISTORY`] of them.
    history: Mutex<Vec<(SetDigests, String)>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").field("dirs", &self.dirs).field("gate", &self.gate.name()).finish_non_exhaustive()
    }
}

/// How many reloads ended how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadCounts {
    pub applied: u64,
    pub unchanged: u64,
    pub rejected: u64,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Reloader {
    /// Starts with the set on disk, which must load clean.
    pub async fn start(dirs: SetDirs, gate: Arc<dyn ReloadGate>) -> Result<Reloader, RecoverySetError> {
        let first = dirs.load().await?;
        Ok(Reloader::with_set(dirs, first, gate))
    }

    /// Starts with a set loaded elsewhere.
    pub fn with_set(dirs: SetDirs, set: RecoverySet, gate: Arc<dyn ReloadGate>) -> Reloader {
        let digests = SetDigests::of(&set);
        Reloader {
            dirs,
            active: ArcSwap::from_pointee(set),
            gate,
            reloading: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
            counts: Mutex::new(ReloadCounts::default()),
            history: Mutex::new(vec![(digests, now_iso())]),
        }
    }

    pub fn dirs(&self) -> &SetDirs {
        &self.dirs
    }

    pub fn gate_name(&self) -> &str {
        self.gate.name()
    }

    /// The active set: one atomic load; the caller keeps this set for as long as it needs it,
    /// whatever reloads happen meanwhile.
    pub fn current(&self) -> Arc<RecoverySet> {
        self.active.load_full()
    }

    pub fn last_report(&self) -> Option<ReloadReport> {
        locked(&self.last).clone()
    }

    pub fn counts(&self) -> ReloadCounts {
        *locked(&self.counts)
    }

    /// Every set that has been active, oldest first.
    pub fn history(&self) -> Vec<SetDigests> {
        locked(&self.history).iter().map(|(digests, _)| digests.clone()).collect()
    }

    /// When the active set became active.
    pub fn active_since(&self) -> String {
        locked(&self.history).last().map(|(_, at)| at.clone()).unwrap_or_default()
    }

    /// Re-reads all files; swaps the new set in only when it is clean and the gate accepts it.
    pub async fn reload(&self, trigger: &str) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().await;
        let started = Instant::now();
        let current = self.current();
        let loaded = self.dirs.load().await;
        let mut report = ReloadReport {
            at: now_iso(),
            trigger: trigger.to_owned(),
            outcome: ReloadOutcome::Rejected,
            active: SetDigests::of(&current),
            proposed: None,
            reason: None,
            diagnostics: Vec::new(),
            gate: None,
            duration_ms: 0,
        };
        match loaded {
            Err(error) => {
                report.reason = Some(error.to_string());
                report.diagnostics = error.diagnostics().iter().map(ReloadDiagnostic::of).collect();
            }
            Ok(proposed) if proposed.digest() == current.digest() => {
                report.proposed = Some(SetDigests::of(&proposed));
                report.outcome = ReloadOutcome::Unchanged;
            }
            Ok(proposed) => {
                report.proposed = Some(SetDigests::of(&proposed));
                match self.gate.check(&current, &proposed).await {
                    GateVerdict::Accept => {
                        let digests = SetDigests::of(&proposed);
                        self.active.store(Arc::new(proposed));
                        let mut history = locked(&self.history);
                        history.push((digests.clone(), report.at.clone()));
                        if history.len() > HISTORY {
                            history.remove(0);
                        }
                        drop(history);
                        report.active = digests;
                        report.outcome = ReloadOutcome::Applied;
                    }
                    GateVerdict::Reject { reason, details } => {
                        report.reason = Some(format!("the {} gate refused the change: {reason}", self.gate.name()));
                        report.gate = Some(details);
                    }
                }
            }
        }
        report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match report.outcome {
            ReloadOutcome::Applied => {
                tracing::info!(trigger, digest = %report.active.combined(), "Reload applied.");
            }
            ReloadOutcome::Unchanged => tracing::debug!(trigger, "Reload: nothing changed."),
            ReloadOutcome::Rejected => {
                tracing::warn!(
                    trigger,
                    reason = report.reason.as_deref().unwrap_or(""),
                    "Reload rejected; the last good set stays active."
                );
                for diagnostic in &report.diagnostics {
                    tracing::warn!("{diagnostic}");
                }
            }
        }
        {
            let mut counts = locked(&self.counts);
            match report.outcome {
                ReloadOutcome::Applied => counts.applied += 1,
                ReloadOutcome::Unchanged => counts.unchanged += 1,
                ReloadOutcome::Rejected => counts.rejected += 1,
            }
        }
        crate::telemetry::reload_finished(report.outcome.as_str());
        *locked(&self.last) = Some(report.clone());
        report
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    /// A copy of the shipped playbooks and policies in a temp dir.
    fn copy_sets(into: &Path) -> SetDirs {
        let dirs = SetDirs { playbooks: into.join("playbooks"), policies: into.join("policies") };
        for (from, to) in [("playbooks", &dirs.playbooks), ("policies", &dirs.policies)] {
            std::fs::create_dir_all(to).expect("mkdir");
            for entry in std::fs::read_dir(root().join(from)).expect("read").filter_map(Result::ok) {
                if entry.path().is_file() {
                    std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
                }
            }
        }
        dirs
    }

    struct RefuseAll;

    #[async_trait]
    impl ReloadGate for RefuseAll {
        fn name(&self) -> &str {
            "refuse-all"
        }
        async fn check(&self, _: &RecoverySet, _: &RecoverySet) -> GateVerdict {
            GateVerdict::Reject { reason: "dangerous".into(), details: serde_json::json!({"dangerous": 1}) }
        }
    }

    #[tokio::test]
    async fn a_reload_is_applied_unchanged_or_rejected_and_a_bad_edit_never_goes_live() {
        let dir = tempfile::tempdir().expect("temp");
        let dirs = copy_sets(dir.path());
        let reloader = Reloader::start(dirs.clone(), Arc::new(NoGate)).await.expect("start");
        let first = reloader.current().digest();

        assert_eq!(reloader.reload("test").await.outcome, ReloadOutcome::Unchanged);

        let approvals = dirs.policies.join("approvals.rhai");
        let original = std::fs::read_to_string(&approvals).expect("read");
        std::fs::write(&approvals, format!("{original}\n// a comment changes the digest\n")).expect("write");
        let applied = reloader.reload("test").await;
        assert_eq!(applied.outcome, ReloadOutcome::Applied);
        let second = reloader.current().digest();
        assert_ne!(first, second);
        assert_eq!(applied.active.combined(), second);

        std::fs::write(&approvals, format!("{original}\nfn broken( {{\n")).expect("write");
        let rejected = reloader.reload("test").await;
        assert_eq!(rejected.outcome, ReloadOutcome::Rejected);
        assert_eq!(reloader.current().digest(), second, "the last good set stays active");
        let diagnostic = rejected.diagnostics.first().expect("a diagnostic");
        assert!(diagnostic.file.ends_with("approvals.rhai") && diagnostic.line > 0, "{diagnostic:?}");
        assert_eq!(reloader.counts(), ReloadCounts { applied: 1, unchanged: 1, rejected: 1 });
        assert_eq!(reloader.history().len(), 2);
    }

    #[tokio::test]
    async fn a_gate_can_refuse_a_clean_set() {
        let dir = tempfile::tempdir().expect("temp");
        let dirs = copy_sets(dir.path());
        let reloader = Reloader::start(dirs.clone(), Arc::new(RefuseAll)).await.expect("start");
        let first = reloader.current().digest();
        std::fs::write(dirs.policies.join("extra.rhai"), "fn unused_helper() { 1 }\n").expect("write");
        let report = reloader.reload("test").await;
        assert_eq!(report.outcome, ReloadOutcome::Rejected);
        assert!(report.reason.as_deref().unwrap_or("").contains("refuse-all"), "{report:?}");
        assert_eq!(report.gate, Some(serde_json::json!({"dangerous": 1})));
        assert_eq!(reloader.current().digest(), first);
    }
}
