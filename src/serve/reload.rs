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
use crate::store::{Expected, Store, StoreError};

/// The state document holding the set last applied, with its sources: a daemon that starts
/// gates the set on disk against it.
pub const APPLIED_SET_KEY: &str = "serve/applied-set";
/// The state document naming the set the gate refused, which waits for a person.
pub const AWAITING_KEY: &str = "serve/awaiting-acceptance";
/// The state document recording a person's acceptance of a gated set (`salvage reload --accept`).
pub const ACCEPTANCE_KEY: &str = "serve/reload-acceptance";
/// Where every acceptance is also kept, one document each, for the audit log
/// (`serve/acceptances/<unix ms>-<uuid>`): [`ACCEPTANCE_KEY`] holds only the latest.
pub const ACCEPTANCES_PREFIX: &str = "serve/acceptances";

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
    /// Set when the set was applied because a person accepted it over the gate's refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<Acceptance>,
}

/// A person's decision to apply a set the reload gate refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Acceptance {
    /// The set accepted (it is applied only while the files on disk are that set).
    pub set: SetDigests,
    pub by: String,
    pub at: String,
}

/// A set the gate refused, kept out until a person accepts it (or the files change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AwaitingAcceptance {
    pub proposed: SetDigests,
    /// The set that stays active meanwhile.
    pub active: SetDigests,
    pub reason: String,
    pub since: String,
    /// `start` when the daemon gated the set it started with, else the reload's trigger.
    pub trigger: String,
}

/// One source file of an applied set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// The set last applied, as recorded in [`APPLIED_SET_KEY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedSet {
    pub set: SetDigests,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<Acceptance>,
    pub policies: Vec<SourceFile>,
    pub playbooks: Vec<SourceFile>,
}

impl AppliedSet {
    fn of(set: &RecoverySet, accepted: Option<Acceptance>) -> AppliedSet {
        AppliedSet {
            set: SetDigests::of(set),
            at: now_iso(),
            accepted,
            policies: set
                .policies
                .files()
                .iter()
                .map(|file| SourceFile { name: file.name.clone(), text: file.source.to_string() })
                .collect(),
            playbooks: set
                .playbooks
                .playbooks()
                .iter()
                .map(|playbook| SourceFile {
                    name: playbook
                        .file
                        .file_name()
                        .map(|name| name.to_string_lossy().into_owned())
                        .unwrap_or_else(|| playbook.file.display().to_string()),
                    text: playbook.source.to_string(),
                })
                .collect(),
        }
    }

    /// The set again, compiled from the recorded sources (named as files of `dirs`).
    fn rebuild(&self, dirs: &SetDirs) -> Result<RecoverySet, RecoverySetError> {
        let policies = self.policies.iter().map(|f| (dirs.policies.join(&f.name), f.text.clone())).collect();
        let playbooks: Vec<(PathBuf, String)> =
            self.playbooks.iter().map(|f| (dirs.playbooks.join(&f.name), f.text.clone())).collect();
        RecoverySet::from_sources(&dirs.playbooks, policies, &playbooks)
    }
}

/// Reads a state document as `T`; `None` when absent or `null`.
async fn read_state<T: serde::de::DeserializeOwned>(store: &dyn Store, key: &str) -> Result<Option<T>, StoreError> {
    let Some(stored) = store.get_state(key).await? else { return Ok(None) };
    if stored.body.is_null() {
        return Ok(None);
    }
    serde_json::from_value(stored.body)
        .map(Some)
        .map_err(|error| StoreError::corrupt(format!("{} state {key}", store.spec()), &error))
}

/// The set waiting for a person's acceptance, as the daemon recorded it.
pub async fn awaiting_acceptance(store: &dyn Store) -> Result<Option<AwaitingAcceptance>, StoreError> {
    read_state(store, AWAITING_KEY).await
}

/// Records a person's acceptance of `set` (the daemon applies it at its next reload).
pub async fn accept(store: &dyn Store, set: SetDigests, by: &str) -> Result<Acceptance, StoreError> {
    let acceptance = Acceptance { set, by: by.to_owned(), at: now_iso() };
    let body = serde_json::to_value(&acceptance).unwrap_or_default();
    let millis = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let kept = format!("{ACCEPTANCES_PREFIX}/{millis}-{}", uuid::Uuid::new_v4().simple());
    store.put_state(&kept, &body, Expected::Absent).await?;
    store.put_state(ACCEPTANCE_KEY, &body, Expected::Any).await?;
    Ok(acceptance)
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
    /// Where the applied set, the set awaiting acceptance and acceptances are recorded.
    store: Option<Arc<dyn Store>>,
    awaiting: Mutex<Option<AwaitingAcceptance>>,
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
            store: None,
            awaiting: Mutex::new(None),
        }
    }

    /// Starts with the set on disk, gated against the set last applied on `store` (recorded
    /// with its sources): when the gate refuses it and no person accepted it, the last applied
    /// set stays active and the set on disk waits for acceptance. Every applied set is
    /// recorded.
    pub async fn start_recorded(
        dirs: SetDirs,
        gate: Arc<dyn ReloadGate>,
        store: Arc<dyn Store>,
    ) -> Result<Reloader, RecoverySetError> {
        let on_disk = dirs.load().await?;
        let previous = match read_state::<AppliedSet>(store.as_ref(), APPLIED_SET_KEY).await {
            Ok(previous) => previous,
            Err(error) => {
                tracing::warn!(%error, "The last applied set cannot be read; the set on disk is not gated.");
                None
            }
        };
        let mut reloader = Reloader::with_set(dirs.clone(), on_disk.clone(), gate);
        reloader.store = Some(store);
        let Some(previous) = previous.filter(|previous| previous.set != SetDigests::of(&on_disk)) else {
            reloader.record_applied(&on_disk, None).await;
            return Ok(reloader);
        };
        if reloader.gate.name() == NoGate.name() {
            reloader.record_applied(&on_disk, None).await;
            return Ok(reloader);
        }
        let last = match previous.rebuild(&dirs) {
            Ok(last) => last,
            Err(error) => {
                // A set this version cannot compile any more cannot be compared with: the gate
                // has nothing to replay, so the set on disk starts as it would without a record.
                tracing::warn!(%error, "The last applied set no longer loads; the set on disk is not gated.");
                reloader.record_applied(&on_disk, None).await;
                return Ok(reloader);
            }
        };
        let verdict = reloader.gate.check(&last, &on_disk).await;
        let accepted = reloader.acceptance_of(&on_disk).await;
        match (verdict, accepted) {
            (GateVerdict::Accept, _) => reloader.record_applied(&on_disk, None).await,
            (GateVerdict::Reject { .. }, Some(acceptance)) => reloader.record_applied(&on_disk, Some(acceptance)).await,
            (GateVerdict::Reject { reason, details }, None) => {
                let reason = format!("the {} gate refused the set on disk at start: {reason}", reloader.gate.name());
                tracing::warn!(%reason, "Starting with the last applied set; the set on disk waits for acceptance.");
                reloader.active.store(Arc::new(last.clone()));
                *locked(&reloader.history) = vec![(SetDigests::of(&last), now_iso())];
                reloader
                    .set_awaiting(Some(AwaitingAcceptance {
                        proposed: SetDigests::of(&on_disk),
                        active: SetDigests::of(&last),
                        reason: reason.clone(),
                        since: now_iso(),
                        trigger: "start".to_owned(),
                    }))
                    .await;
                *locked(&reloader.last) = Some(ReloadReport {
                    at: now_iso(),
                    trigger: "start".to_owned(),
                    outcome: ReloadOutcome::Rejected,
                    active: SetDigests::of(&last),
                    proposed: Some(SetDigests::of(&on_disk)),
                    reason: Some(reason),
                    diagnostics: Vec::new(),
                    gate: Some(details),
                    duration_ms: 0,
                    accepted: None,
                });
                locked(&reloader.counts).rejected += 1;
                crate::telemetry::reload_finished(ReloadOutcome::Rejected.as_str());
            }
        }
        Ok(reloader)
    }

    /// The set that waits for a person's acceptance, if any.
    pub fn awaiting(&self) -> Option<AwaitingAcceptance> {
        locked(&self.awaiting).clone()
    }

    /// A person's acceptance of exactly this set, if one is recorded.
    async fn acceptance_of(&self, set: &RecoverySet) -> Option<Acceptance> {
        let store = self.store.as_ref()?;
        match read_state::<Acceptance>(store.as_ref(), ACCEPTANCE_KEY).await {
            Ok(acceptance) => acceptance.filter(|acceptance| acceptance.set == SetDigests::of(set)),
            Err(error) => {
                tracing::warn!(%error, "The reload acceptance cannot be read.");
                None
            }
        }
    }

    async fn record_applied(&self, set: &RecoverySet, accepted: Option<Acceptance>) {
        self.set_awaiting(None).await;
        let Some(store) = &self.store else { return };
        let body = serde_json::to_value(AppliedSet::of(set, accepted)).unwrap_or_default();
        if let Err(error) = store.put_state(APPLIED_SET_KEY, &body, Expected::Any).await {
            tracing::warn!(%error, "Cannot record the applied set.");
        }
    }

    async fn set_awaiting(&self, awaiting: Option<AwaitingAcceptance>) {
        let changed = *locked(&self.awaiting) != awaiting;
        *locked(&self.awaiting) = awaiting.clone();
        let Some(store) = &self.store else { return };
        if !changed {
            return;
        }
        let body = serde_json::to_value(&awaiting).unwrap_or_default();
        if let Err(error) = store.put_state(AWAITING_KEY, &body, Expected::Any).await {
            tracing::warn!(%error, "Cannot record the set awaiting acceptance.");
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
            accepted: None,
        };
        match loaded {
            Err(error) => {
                report.reason = Some(error.to_string());
                report.diagnostics = error.diagnostics().iter().map(ReloadDiagnostic::of).collect();
            }
            Ok(proposed) if proposed.digest() == current.digest() => {
                report.proposed = Some(SetDigests::of(&proposed));
                report.outcome = ReloadOutcome::Unchanged;
                // The files are the active set again: nothing waits any more.
                self.set_awaiting(None).await;
            }
            Ok(proposed) => {
                report.proposed = Some(SetDigests::of(&proposed));
                let verdict = match self.gate.check(&current, &proposed).await {
                    GateVerdict::Reject { reason, details } => match self.acceptance_of(&proposed).await {
                        Some(acceptance) => {
                            tracing::info!(by = %acceptance.by, at = %acceptance.at, %reason, "Applying a gated set a person accepted.");
                            report.accepted = Some(acceptance);
                            report.gate = Some(details);
                            GateVerdict::Accept
                        }
                        None => GateVerdict::Reject { reason, details },
                    },
                    accept => accept,
                };
                match verdict {
                    GateVerdict::Accept => {
                        let digests = SetDigests::of(&proposed);
                        let proposed = Arc::new(proposed);
                        self.active.store(Arc::clone(&proposed));
                        {
                            let mut history = locked(&self.history);
                            history.push((digests.clone(), report.at.clone()));
                            if history.len() > HISTORY {
                                history.remove(0);
                            }
                        }
                        report.active = digests;
                        report.outcome = ReloadOutcome::Applied;
                        self.record_applied(&proposed, report.accepted.clone()).await;
                    }
                    GateVerdict::Reject { reason, details } => {
                        let reason = format!("the {} gate refused the change: {reason}", self.gate.name());
                        report.reason = Some(reason.clone());
                        report.gate = Some(details);
                        self.set_awaiting(Some(AwaitingAcceptance {
                            proposed: SetDigests::of(&proposed),
                            active: SetDigests::of(&current),
                            reason,
                            since: report.at.clone(),
                            trigger: trigger.to_owned(),
                        }))
                        .await;
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
