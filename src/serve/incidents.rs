//! Incidents: claimed once, then planned and (dry-)run.
//!
//! **Handled once, across restarts.** Each incident run has one durable record, the state
//! document `serve/incident/<run id>`: the revision and content fingerprint handled last, where
//! handling got to (`claimed` → `applying` → `planned` / `applied` / `failed`), the plan, the
//! execution and the digests of the set used. Claiming is a compare-and-set save of that
//! record, made before the incident is queued: a crash after the claim finds the record
//! `claimed` at the next start and queues it again; the execution id derives from the plan, so
//! an incident whose execution had started is resumed, not started twice.
//!
//! A new revision of a run is a new incident unless only salvage's own bookkeeping changed
//! (`metadata.recovery`, written when an approval is answered; the fingerprint leaves it out),
//! or an execution recovering the run is still in flight — salvage does not start a second
//! recovery of a run it is recovering. A record per run (rather than per revision) keeps the
//! state as large as the set of incident runs, and one lookup answers "handled?".
//!
//! Handled once means once per store, whatever the mode: incidents a daemon planned in
//! `advisory` mode are not executed by a later `enforce` daemon (`salvage apply` recovers
//! them); new incidents are.
//!
//! In `advisory` mode the plan and its dry run (the runner over an in-memory overlay) are
//! kept in `serve/dry-run/<run id>`; nothing is written to the runs.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::feed::is_incident;
use super::reload::{Reloader, SetDigests};
use crate::execute::discovery::salvage_owner;
use crate::execute::{
    ExecuteError, ExecutionReport, Mode, Origin, ResolveRuntime, Runner, RunnerSettings, execution_of, owner_key,
};
use crate::model::Run;
use crate::model::json::now_iso;
use crate::plan::{PlannedIncident, RecoverySet};
use crate::store::{Expected, Revision, RunStore, StateWrite, Store, StoreError, StoredRun, StoredState};

/// How many recently used recovery sets a daemon keeps for resuming executions planned with
/// them (a set is a few MB of compiled policies and playbooks).
pub const KEPT_SETS: usize = 16;

/// Recently used sets by combined digest, newest last.
pub type RecentSets = std::collections::VecDeque<(String, Arc<RecoverySet>)>;

/// The state prefix of incident records.
pub const INCIDENT_PREFIX: &str = "serve/incident";
/// The state prefix of advisory results (plan + dry run).
pub const DRY_RUN_PREFIX: &str = "serve/dry-run";

pub fn incident_key(run_id: &str) -> String {
    format!("{INCIDENT_PREFIX}/{run_id}")
}

pub fn dry_run_key(run_id: &str) -> String {
    format!("{DRY_RUN_PREFIX}/{run_id}")
}

/// What a worker does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Plan and (dry-)run a new incident.
    Incident(Incident),
    /// Continue an execution (in flight at the last stop, its approval was answered, its timer
    /// is due, or the process running it died).
    Resume { execution_id: String, digests: SetDigests },
    /// Look again at the run a handed-off execution waits on.
    FollowUp { execution_id: String, digests: SetDigests },
}

/// Which recovery a run belongs to, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Belonging {
    /// Nobody's: an incident in its own right.
    Nobody,
    /// A recovery still going on made it (or it derives from a run being recovered): the
    /// recovery handles it; it is looked at again once that recovery has ended.
    OpenRecovery { execution_id: String },
    /// A recovery that has ended made it: a later failure is an incident of that family.
    FinishedRecovery { execution_id: String, step_id: String, incident_run_id: String },
}

/// An incident waiting for a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub run_id: String,
    pub revision: Revision,
    pub fingerprint: String,
    /// The run as read when it was claimed, planned without reading it again (`None` when the
    /// incident was taken up from its record: after a restart, by another replica).
    pub read: Option<Arc<StoredRun>>,
    /// The incident record as claimed (or as found, when taken up again): the claimer is its
    /// only writer, so the handling updates it without reading it back (`None`: read it).
    pub record: Option<Value>,
}

/// An incident's record as this process last wrote it, updated by [`Handler::write_record`].
#[derive(Debug)]
struct IncidentRecord {
    run_id: String,
    /// `None` until read or written.
    body: Option<Value>,
}

/// How the handling of an incident ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Handled, or failed and recorded `failed`; the execution its record names, if any.
    Done { execution_id: Option<String> },
    /// A replica lost its database connection or its lease mid-way; nothing was recorded over
    /// the incident's `claimed`/`applying` state.
    Interrupted,
}

/// Whether an error says the work was cut off (the store unreachable, the lease gone) rather
/// than that it cannot be done.
fn interrupted(error: &ExecuteError) -> bool {
    matches!(
        error.store_error(),
        Some(StoreError::Database { .. } | StoreError::Io { .. } | StoreError::Task(_) | StoreError::LeaseLost { .. })
    )
}

/// How many times an incident whose run moved while it was planned is planned (then it is
/// recorded failed).
const STALE_PLAN_ATTEMPTS: u32 = 5;

/// The pause before planning again, times the attempt.
const STALE_PLAN_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// The run's content without salvage's own bookkeeping (`metadata.recovery`: approvals and
/// resume requests recorded on the run) and without the save time (`timestamps.updatedAt`,
/// which every save moves): what the runtime did to the run.
pub fn fingerprint(run: &Run) -> String {
    let mut value = run.to_value();
    if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.shift_remove("recovery");
    }
    if let Some(timestamps) = value.get_mut("timestamps").and_then(Value::as_object_mut) {
        timestamps.shift_remove("updatedAt");
    }
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&value).unwrap_or_default());
    crate::policy::hex(&hasher.finalize())
}

/// A paused run a salvage execution created (`metadata.salvage.executionId`).
pub fn created_by_salvage_for_its_runtime(run: &Run) -> bool {
    run.status == crate::model::RunStatus::Paused
        && run.metadata.get("salvage").and_then(|s| s.get("executionId")).is_some_and(Value::is_string)
}

/// Counters shown by `status`.
#[derive(Debug, Default)]
pub struct Counters {
    pub handled: AtomicU64,
    pub planned: AtomicU64,
    pub executed: AtomicU64,
    pub failed: AtomicU64,
    pub in_flight: AtomicU64,
    pub resumed: AtomicU64,
    /// Incidents of runs a recovery made or already recovered (a family's later failures).
    pub linked: AtomicU64,
    pub followed_up: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Value {
        json!({
            "handled": self.handled.load(Ordering::Relaxed),
            "planned": self.planned.load(Ordering::Relaxed),
            "executed": self.executed.load(Ordering::Relaxed),
            "failed": self.failed.load(Ordering::Relaxed),
            "inFlight": self.in_flight.load(Ordering::Relaxed),
            "resumed": self.resumed.load(Ordering::Relaxed),
            "linked": self.linked.load(Ordering::Relaxed),
            "followedUp": self.followed_up.load(Ordering::Relaxed),
        })
    }
}

/// Where the intake sends the new incidents it finds.
#[derive(Debug, Clone)]
pub enum Sink {
    /// One daemon: the incident record is claimed here and the incident queued for this
    /// process's workers (waiting when the queue is full: the feed slows down instead of memory
    /// growing).
    Queue(mpsc::Sender<Work>),
    /// Replicas on a shared store: the incident is offered as work
    /// ([`super::replicas::offer_incident`]); whichever replica claims it records and handles
    /// it. `wake` tells this process's workers that there is work.
    Offer { store: Arc<crate::store::PostgresStore>, wake: Arc<tokio::sync::Notify> },
}

/// Decides what is a new incident and hands it on.
#[derive(Debug)]
pub struct Intake {
    store: Arc<dyn Store>,
    sink: Sink,
    /// Revisions known handled, handed on, or not incidents, to skip the store on repeats.
    seen: Mutex<HashMap<String, Revision>>,
    counters: Arc<Counters>,
}

/// A run found to be a new incident, not yet claimed.
struct Assessment {
    stored: crate::store::StoredRun,
    record: Option<StoredState>,
    belonging: Belonging,
    fingerprint: String,
}

/// What a batch of runs looked at together has read already: their incident and owner
/// records (present or known absent) and the runs; anything else is read when asked. The
/// batch's own claims are added as they are decided, so a later run of the batch sees them
/// as a run looked at alone would.
#[derive(Default)]
struct Prefetched {
    states: HashMap<String, Option<StoredState>>,
    runs: HashMap<String, StoredRun>,
}

impl Prefetched {
    async fn state(&self, store: &dyn Store, key: &str) -> Result<Option<StoredState>, StoreError> {
        match self.states.get(key) {
            Some(found) => Ok(found.clone()),
            None => store.get_state(key).await,
        }
    }

    async fn run(&mut self, store: &dyn Store, run_id: &str) -> Result<Option<StoredRun>, StoreError> {
        match self.runs.remove(run_id) {
            Some(stored) => Ok(Some(stored)),
            // Not read with the batch (gone, or unreadable: the single read reports it).
            None => store.get(run_id).await,
        }
    }
}

/// A claim decided and not yet written.
struct Claim {
    key: String,
    body: Value,
    expected: Expected,
    found: Assessment,
}

/// The most runs a batch claims in one commit: small enough that the workers start on the
/// first incidents of a burst soon.
pub(super) const CLAIM_BATCH: usize = 32;

/// Whether an incident record says its run was handled at `revision` already.
fn handled_at(record: Option<&StoredState>, revision: Revision) -> bool {
    record.is_some_and(|record| record.body["revision"].as_u64() == Some(revision.0))
}

/// Queues a claimed incident for the workers; `false` when shutting down (the claim stays, the
/// next start queues it again).
async fn queue_claimed(queue: &mpsc::Sender<Work>, incident: Incident) -> bool {
    if queue.send(Work::Incident(incident)).await.is_err() {
        return false;
    }
    crate::telemetry::queue_depth(queue.max_capacity() - queue.capacity());
    true
}

impl Intake {
    pub fn new(store: Arc<dyn Store>, queue: mpsc::Sender<Work>, counters: Arc<Counters>) -> Intake {
        Intake::with_sink(store, Sink::Queue(queue), counters)
    }

    pub fn with_sink(store: Arc<dyn Store>, sink: Sink, counters: Arc<Counters>) -> Intake {
        Intake { store, sink, seen: Mutex::new(HashMap::new()), counters }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Revision>> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks at the run as the store holds it now and hands it on when it is a new incident:
    /// claimed and queued (one daemon) or offered (replicas). `Ok(true)` when handed on.
    /// `revision`, when the caller knows it from the index, lets a run already handled at that
    /// revision be skipped without reading it (a resync then costs an index listing and one
    /// small record per incident run, once).
    pub async fn consider(&self, run_id: &str, revision: Option<Revision>) -> Result<bool, StoreError> {
        match &self.sink {
            Sink::Queue(queue) => {
                let store = self.store.clone();
                let Some(incident) = self.claim(run_id, revision, store.as_ref()).await? else { return Ok(false) };
                Ok(queue_claimed(queue, incident).await)
            }
            Sink::Offer { store, wake } => {
                let Some(found) = self.assess(run_id, revision, true, &mut Prefetched::default()).await? else {
                    return Ok(false);
                };
                // Whoever claims the offer looks again; this replica need not offer it twice.
                self.seen().insert(run_id.to_owned(), found.stored.revision);
                let offered = super::replicas::offer_incident(store, run_id, found.stored.revision).await?;
                if offered {
                    wake.notify_one();
                }
                Ok(offered)
            }
        }
    }

    /// Decides whether the run as the store holds it now is a new incident and, when it is,
    /// records the claim (a compare-and-set save of its incident record through `writer`: the
    /// store itself, or a replica's store fenced by its lease on the work) and returns it.
    pub async fn claim(
        &self,
        run_id: &str,
        revision: Option<Revision>,
        writer: &dyn Store,
    ) -> Result<Option<Incident>, StoreError> {
        self.claim_with(run_id, revision, true, writer).await
    }

    /// [`Intake::claim`] for a replica that claimed the incident's work: looks at the store
    /// afresh, whatever this process saw before.
    pub async fn claim_afresh(&self, run_id: &str, writer: &dyn Store) -> Result<Option<Incident>, StoreError> {
        self.claim_with(run_id, None, false, writer).await
    }

    async fn claim_with(
        &self,
        run_id: &str,
        revision: Option<Revision>,
        cached: bool,
        writer: &dyn Store,
    ) -> Result<Option<Incident>, StoreError> {
        match self.assess(run_id, revision, cached, &mut Prefetched::default()).await? {
            Some(found) => self.record_claim(self.claim_of(run_id, found), writer).await,
            None => Ok(None),
        }
    }

    /// [`Intake::consider`] for several runs (in order, each once), the reads and the claims
    /// of one daemon batched: a few store round trips and one commit for up to
    /// [`CLAIM_BATCH`] runs instead of several round trips and a commit each. Replicas, and
    /// stores whose state writes are not all or nothing, look at the runs one by one. The
    /// number of incidents handed on.
    pub async fn consider_many(&self, runs: &[(String, Option<Revision>)]) -> Result<usize, StoreError> {
        let Sink::Queue(queue) = &self.sink else { return self.consider_each(runs).await };
        if runs.len() < 2 || !self.store.writes_states_together() {
            return self.consider_each(runs).await;
        }
        let mut handed_on = 0;
        for batch in runs.chunks(CLAIM_BATCH) {
            let claims = self.decide_claims(batch).await?;
            for incident in self.commit_claims(claims).await? {
                if !queue_claimed(queue, incident).await {
                    return Ok(handed_on);
                }
                handed_on += 1;
            }
        }
        Ok(handed_on)
    }

    /// The claims of a batch's new incidents, decided in order from one prefetch.
    async fn decide_claims(&self, batch: &[(String, Option<Revision>)]) -> Result<Vec<Claim>, StoreError> {
        let mut prefetched = self.prefetch(batch).await?;
        let mut claims = Vec::new();
        for (run_id, revision) in batch {
            let Some(found) = self.assess(run_id, *revision, true, &mut prefetched).await? else { continue };
            let claim = self.claim_of(run_id, found);
            let pending = StoredState { key: claim.key.clone(), body: claim.body.clone(), revision: Revision(0) };
            prefetched.states.insert(claim.key.clone(), Some(pending));
            claims.push(claim);
        }
        Ok(claims)
    }

    /// Records a batch's claims in one commit; when another process claimed one of them first
    /// (nothing was written), one by one. The incidents claimed here.
    async fn commit_claims(&self, claims: Vec<Claim>) -> Result<Vec<Incident>, StoreError> {
        let writes: Vec<StateWrite<'_>> = claims
            .iter()
            .map(|claim| StateWrite { key: &claim.key, body: &claim.body, expected: claim.expected })
            .collect();
        match self.store.put_states(&writes).await {
            Ok(_) => Ok(claims.into_iter().map(|claim| self.claimed(claim)).collect()),
            Err(StoreError::Conflict { .. }) => {
                let mut incidents = Vec::with_capacity(claims.len());
                for claim in claims {
                    incidents.extend(self.record_claim(claim, self.store.as_ref()).await?);
                }
                Ok(incidents)
            }
            Err(error) => Err(error),
        }
    }

    async fn consider_each(&self, runs: &[(String, Option<Revision>)]) -> Result<usize, StoreError> {
        let mut handed_on = 0;
        for (run_id, revision) in runs {
            handed_on += usize::from(self.consider(run_id, *revision).await?);
        }
        Ok(handed_on)
    }

    /// Reads what [`Intake::assess`] asks of a batch: the incident and owner records in one
    /// round trip, then the runs not already handled at the revision given, in another.
    async fn prefetch(&self, batch: &[(String, Option<Revision>)]) -> Result<Prefetched, StoreError> {
        let unseen: Vec<&(String, Option<Revision>)> = {
            let seen = self.seen();
            batch
                .iter()
                .filter(|(run_id, revision)| revision.is_none() || seen.get(run_id) != revision.as_ref())
                .collect()
        };
        let keys: Vec<String> =
            unseen.iter().flat_map(|(run_id, _)| [incident_key(run_id), owner_key(run_id)]).collect();
        let mut prefetched = Prefetched::default();
        if keys.is_empty() {
            return Ok(prefetched);
        }
        let states = self.store.get_states(&keys).await?;
        prefetched.states = keys.into_iter().zip(states).collect();
        let to_read: Vec<String> = unseen
            .iter()
            .filter(|(run_id, revision)| {
                let handled = prefetched.states.get(&incident_key(run_id)).and_then(Option::as_ref);
                !revision.is_some_and(|revision| handled_at(handled, revision))
            })
            .map(|(run_id, _)| run_id.clone())
            .collect();
        if !to_read.is_empty() {
            // An unreadable run is left out here; its single read reports it.
            let read = self.store.get_many(&to_read).await?;
            prefetched.runs = read.items.into_iter().map(|stored| (stored.run.id.clone(), stored)).collect();
        }
        Ok(prefetched)
    }

    /// Whether the run is a new incident now (`cached`: trust the revisions seen before).
    async fn assess(
        &self,
        run_id: &str,
        revision: Option<Revision>,
        cached: bool,
        prefetched: &mut Prefetched,
    ) -> Result<Option<Assessment>, StoreError> {
        let seen = |revision: &Revision| cached && self.seen().get(run_id) == Some(revision);
        if let Some(revision) = revision {
            if seen(&revision) {
                return Ok(None);
            }
            let handled = prefetched.state(self.store.as_ref(), &incident_key(run_id)).await?;
            if handled_at(handled.as_ref(), revision) {
                self.seen().insert(run_id.to_owned(), revision);
                return Ok(None);
            }
        }
        let stored = match prefetched.run(self.store.as_ref(), run_id).await {
            Ok(Some(stored)) => stored,
            Ok(None) => return Ok(None),
            // One unreadable run does not stop the feed for the others: it is reported once per
            // revision and looked at again when it is saved again.
            Err(error @ (StoreError::CorruptRecord { .. } | StoreError::NotARun { .. })) => {
                tracing::warn!(run_id, %error, "A run the feed offered cannot be read; it is skipped until it is saved again.");
                if let Some(revision) = revision {
                    self.seen().insert(run_id.to_owned(), revision);
                }
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        if seen(&stored.revision) || !is_incident(&stored.run.status) {
            return Ok(None);
        }
        let belonging = self.belonging(&stored.run, prefetched).await?;
        if let Belonging::OpenRecovery { execution_id } = &belonging {
            // Not marked seen: once that recovery ends, this revision is looked at again.
            tracing::debug!(run_id, execution = %execution_id, "A run of a recovery in flight; not a new incident.");
            return Ok(None);
        }
        let owned = !matches!(belonging, Belonging::Nobody);
        if stored.run.status == crate::model::RunStatus::Paused
            && (owned || created_by_salvage_for_its_runtime(&stored.run))
        {
            // A branch or replay a recovery made, paused until its runtime continues it: it is
            // the recovery, not a new incident (it becomes one if the runtime fails it).
            self.seen().insert(run_id.to_owned(), stored.revision);
            return Ok(None);
        }
        let fingerprint = fingerprint(&stored.run);
        let record = prefetched.state(self.store.as_ref(), &incident_key(run_id)).await?;
        if let Some(record) = &record {
            let body = &record.body;
            let same_revision = body["revision"].as_u64() == Some(stored.revision.0);
            let same_content = body["fingerprint"].as_str() == Some(fingerprint.as_str());
            if same_revision || same_content {
                self.seen().insert(run_id.to_owned(), stored.revision);
                return Ok(None);
            }
            if self.in_flight(body).await? {
                tracing::debug!(run_id, "The run changed while salvage recovers it; not a new incident.");
                return Ok(None);
            }
        }
        Ok(Some(Assessment { stored, record, belonging, fingerprint }))
    }

    /// The claim of an incident found new: its incident record, saved over the record read.
    fn claim_of(&self, run_id: &str, found: Assessment) -> Claim {
        let Assessment { stored, record, belonging, fingerprint } = &found;
        let key = incident_key(run_id);
        let mut claim = json!({
            "runId": run_id,
            "revision": stored.revision.0,
            "fingerprint": fingerprint,
            "runStatus": stored.run.status,
            "state": "claimed",
            "claimedAt": now_iso(),
            "claimedBy": std::process::id(),
            "claimedOn": super::status::hostname(),
        });
        // A later failure in a recovery's family is linked to it: to the recovery that made the
        // run, or to the earlier recovery of this very run.
        let previous_execution = record.as_ref().and_then(|r| r.body["executionId"].as_str().map(str::to_owned));
        match (belonging, previous_execution) {
            (Belonging::FinishedRecovery { execution_id, step_id, incident_run_id }, _) => {
                claim["linkedTo"] = json!({
                    "executionId": execution_id, "stepId": step_id, "incidentRunId": incident_run_id,
                    "relation": "created by the recovery",
                });
            }
            (_, Some(execution_id)) => {
                claim["linkedTo"] = json!({
                    "executionId": execution_id, "incidentRunId": run_id, "relation": "failed again after its recovery",
                });
            }
            _ => {}
        }
        let expected = record.as_ref().map_or(Expected::Absent, |r| Expected::Revision(r.revision));
        Claim { key, body: claim, expected, found }
    }

    /// Records a claim (compare-and-set through `writer`); `None` when another process
    /// recorded it first.
    async fn record_claim(&self, claim: Claim, writer: &dyn Store) -> Result<Option<Incident>, StoreError> {
        match writer.put_state(&claim.key, &claim.body, claim.expected).await {
            Ok(_) => Ok(Some(self.claimed(claim))),
            // Another process claimed it first.
            Err(StoreError::Conflict { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The bookkeeping of a claim recorded, and the incident to hand on.
    fn claimed(&self, claim: Claim) -> Incident {
        if claim.body.get("linkedTo").is_some() {
            self.counters.linked.fetch_add(1, Ordering::Relaxed);
        }
        let Assessment { stored, fingerprint, .. } = claim.found;
        let run_id = stored.run.id.clone();
        self.seen().insert(run_id.clone(), stored.revision);
        self.counters.handled.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::incident_found(stored.run.status.as_str());
        tracing::info!(run_id, revision = stored.revision.0, status = %stored.run.status, "New incident.");
        Incident {
            run_id,
            revision: stored.revision,
            fingerprint,
            read: Some(Arc::new(stored)),
            record: Some(claim.body),
        }
    }

    /// Which recovery `run` belongs to: the execution recorded as its creator
    /// (`owner/<run>`, else `metadata.salvage`), or — for a run that derives from a run being
    /// recovered right now and is not recorded yet (its outcome is on its way) — that recovery.
    async fn belonging(&self, run: &Run, prefetched: &Prefetched) -> Result<Belonging, StoreError> {
        let recorded = match prefetched.state(self.store.as_ref(), &owner_key(&run.id)).await? {
            Some(owner) => owner.body["executionId"].as_str().map(|execution| {
                (
                    execution.to_owned(),
                    owner.body["stepId"].as_str().unwrap_or_default().to_owned(),
                    owner.body["incidentRunId"].as_str().unwrap_or_default().to_owned(),
                )
            }),
            None => None,
        };
        let recorded =
            recorded.or_else(|| salvage_owner(run).map(|(execution, step)| (execution, step, String::new())));
        if let Some((execution_id, step_id, incident_run_id)) = recorded {
            let open = match self.store.get_execution(&execution_id).await? {
                Some(stored) => execution_of(&stored.doc).map(|e| !e.status.is_finished()).unwrap_or(false),
                None => false,
            };
            return Ok(if open {
                Belonging::OpenRecovery { execution_id }
            } else {
                Belonging::FinishedRecovery { execution_id, step_id, incident_run_id }
            });
        }
        let origin = run
            .lineage()
            .branch_origin_run_id
            .clone()
            .or_else(|| {
                run.metadata.get("replay").and_then(|r| r.get("sourceRunId")).and_then(Value::as_str).map(str::to_owned)
            })
            .filter(|origin| *origin != run.id);
        if let Some(origin) = origin
            && let Some(record) = prefetched.state(self.store.as_ref(), &incident_key(&origin)).await?
            && self.in_flight(&record.body).await?
        {
            let execution_id = record.body["executionId"].as_str().unwrap_or("its recovery").to_owned();
            return Ok(Belonging::OpenRecovery { execution_id });
        }
        Ok(Belonging::Nobody)
    }

    /// Looks again at the families of the executions in `open` that `now_open` no longer has
    /// (they ended since the last look, here or in another process, e.g. `salvage deny`): their
    /// families' changes set aside meanwhile. Keeps `now_open` for the next look.
    pub async fn reconsider_ended(&self, open: &mut HashSet<String>, now_open: HashSet<String>) {
        for ended in open.difference(&now_open) {
            if let Err(error) = self.reconsider_family(ended).await {
                tracing::warn!(execution = %ended, %error, "Cannot look again at an ended execution's family.");
            }
        }
        *open = now_open;
    }

    /// Once an execution has ended, looks again at its family — the run it recovered and the runs
    /// it created — whose changes were set aside while it was in flight (a handed-off run that
    /// failed after all is then a new incident, linked to it).
    pub async fn reconsider_family(&self, execution_id: &str) -> Result<(), StoreError> {
        let Some(stored) = self.store.get_execution(execution_id).await? else { return Ok(()) };
        let Ok(execution) = execution_of(&stored.doc) else { return Ok(()) };
        if !execution.status.is_finished() {
            return Ok(());
        }
        let mut family = vec![execution.run_id.clone()];
        family.extend(execution.created_runs.values().cloned());
        for run_id in family {
            self.seen().remove(&run_id);
            self.consider(&run_id, None).await?;
        }
        Ok(())
    }

    /// Queues again an incident claimed before a restart (one daemon).
    pub async fn requeue(&self, record: &StoredState) -> bool {
        let Sink::Queue(queue) = &self.sink else { return false };
        let body = &record.body;
        let (Some(run_id), Some(revision)) = (body["runId"].as_str(), body["revision"].as_u64()) else {
            return false;
        };
        self.seen().insert(run_id.to_owned(), Revision(revision));
        let incident = Incident {
            run_id: run_id.to_owned(),
            revision: Revision(revision),
            fingerprint: body["fingerprint"].as_str().unwrap_or_default().to_owned(),
            read: None,
            record: Some(body.clone()),
        };
        queue.send(Work::Incident(incident)).await.is_ok()
    }

    /// Whether the record's recovery is still going on (claimed, being applied, or its
    /// execution not finished).
    async fn in_flight(&self, body: &Value) -> Result<bool, StoreError> {
        if matches!(body["state"].as_str(), Some("claimed" | "applying")) {
            return Ok(true);
        }
        let Some(execution_id) = body["executionId"].as_str() else { return Ok(false) };
        Ok(match self.store.get_execution(execution_id).await? {
            Some(stored) => execution_of(&stored.doc).map(|e| !e.status.is_finished()).unwrap_or(false),
            None => false,
        })
    }
}

/// Everything a worker needs to handle an incident.
#[derive(Clone)]
pub struct Handler {
    pub store: Arc<dyn Store>,
    pub reloader: Arc<Reloader>,
    pub runtimes: Arc<dyn ResolveRuntime>,
    pub settings: RunnerSettings,
    pub mode: Mode,
    pub actor: String,
    pub stop: Arc<AtomicBool>,
    pub counters: Arc<Counters>,
    /// Told when an incident or a resume is done (the status is rewritten).
    pub status_changed: Arc<tokio::sync::Notify>,
    /// The last sets plans were made with (at most [`KEPT_SETS`], newest last), by combined
    /// digest: a waiting execution resumes with the set it started with, even after reloads.
    pub sets: Arc<Mutex<RecentSets>>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler").field("mode", &self.mode).field("actor", &self.actor).finish_non_exhaustive()
    }
}

impl Handler {
    /// A runner with this daemon's sets and runtimes. The daemon parks executions at their
    /// timers (`wait`, `await_run`) instead of holding a worker, and wakes them when due.
    pub fn runner(&self, set: &RecoverySet, mode: Mode) -> Runner {
        Runner::new(
            self.store.clone(),
            set.policies.clone(),
            set.playbooks.clone(),
            self.runtimes.clone(),
            RunnerSettings { park_after: Some(std::time::Duration::from_secs(1)), ..self.settings.clone() },
            mode,
            self.actor.clone(),
        )
        .with_origin(Origin::Daemon)
        .with_stop(self.stop.clone())
    }

    fn remember(&self, set: &Arc<RecoverySet>) {
        let digest = set.digest();
        let mut sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(index) = sets.iter().position(|(known, _)| *known == digest) {
            sets.remove(index);
        }
        sets.push_back((digest, set.clone()));
        while sets.len() > KEPT_SETS {
            sets.pop_front();
        }
    }

    /// The set an execution was planned with, when this process still has it; else the active
    /// one (the runner refuses it if the execution's policies or playbook differ).
    pub fn set_for(&self, digests: &SetDigests) -> Arc<RecoverySet> {
        let wanted = digests.combined();
        let sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        let known = sets.iter().rev().find(|(digest, _)| *digest == wanted).map(|(_, set)| set.clone());
        drop(sets);
        known.unwrap_or_else(|| self.reloader.current())
    }

    /// Merges `update` into the incident record of `run_id` (read first); the record written.
    pub(super) async fn record(&self, run_id: &str, update: Value) -> Result<Value, StoreError> {
        let mut record = IncidentRecord { run_id: run_id.to_owned(), body: None };
        self.write_record(&mut record, update, None).await?;
        Ok(record.body.unwrap_or_default())
    }

    /// Merges `update` into the incident record and writes it, with the dry run's document
    /// (`serve/dry-run/<run>`) in the same commit where the store has one
    /// ([`StateStore::put_states`]).
    async fn write_record(
        &self,
        record: &mut IncidentRecord,
        update: Value,
        dry_run: Option<&Value>,
    ) -> Result<(), StoreError> {
        let key = incident_key(&record.run_id);
        let ends = update.get("handledAt").is_some();
        let mut body = match record.body.take() {
            Some(body) => body,
            None => self.store.get_state(&key).await?.map(|s| s.body).unwrap_or_else(|| json!({})),
        };
        if let (Some(body), Value::Object(update)) = (body.as_object_mut(), update) {
            for (name, value) in update {
                body.insert(name, value);
            }
        }
        // This process claimed the incident: it is the record's only writer (a replica writes
        // through its fenced store, which refuses once the claim is another's), so what it
        // wrote last is what the store holds. The dry run goes first: a record that says
        // `planned` always has its dry run.
        let dry_run_key = dry_run_key(&record.run_id);
        let mut writes = Vec::with_capacity(2);
        if let Some(dry_run) = dry_run {
            writes.push(StateWrite { key: &dry_run_key, body: dry_run, expected: Expected::Any });
        }
        writes.push(StateWrite { key: &key, body: &body, expected: Expected::Any });
        self.store.put_states(&writes).await?;
        if ends {
            tracing::Span::current().record("outcome", body["state"].as_str().unwrap_or(""));
            crate::telemetry::incident_handled(body["incidentType"].as_str(), body["state"].as_str().unwrap_or(""));
        }
        record.body = Some(body);
        Ok(())
    }

    /// Plans the incident with the active set and dry-runs (advisory) or executes (enforce)
    /// the plan. Errors are recorded on the incident, not returned: one incident's failure
    /// does not concern the others.
    pub async fn handle(&self, incident: Incident) -> Handled {
        let span = tracing::info_span!(
            "incident",
            run_id = %incident.run_id,
            revision = incident.revision.0,
            root_run_id = tracing::field::Empty,
            kind = tracing::field::Empty,
            playbook = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut record = IncidentRecord { run_id: incident.run_id.clone(), body: incident.record.clone() };
        let mut result =
            self.handle_inner(&incident, incident.read.clone(), &mut record).instrument(span.clone()).await;
        let mut attempt = 1;
        while let Err(ExecuteError::StalePlan { changes }) = &result {
            if attempt >= STALE_PLAN_ATTEMPTS {
                break;
            }
            attempt += 1;
            // The incident is the run, not one revision of it: a runtime often saves a failed
            // run again right after the save that made it an incident (and a replica may have
            // been offered the earlier one), so plan it again as it is now.
            tracing::info!(run_id = %incident.run_id, changes = %changes.join("; "), attempt, "The run changed while it was planned; planning it again.");
            tokio::time::sleep(STALE_PLAN_PAUSE * attempt).await;
            match self.store.get(&incident.run_id).await {
                Ok(Some(stored)) if !is_incident(&stored.run.status) => {
                    let update = json!({
                        "state": "settled",
                        "outcome": format!("the run is {} now: nothing to recover", stored.run.status),
                        "handledAt": now_iso(),
                    });
                    result = self.write_record(&mut record, update, None).await.map_err(ExecuteError::from);
                    break;
                }
                // Read again: the run read at the claim is the one that changed.
                _ => result = self.handle_inner(&incident, None, &mut record).instrument(span.clone()).await,
            }
        }
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.status_changed.notify_one();
        if let Err(error) = result {
            if self.settings.replica.is_some() && interrupted(&error) {
                // The database went away (or the lease did) mid-way: the record stays `claimed`
                // or `applying`, so whoever claims the incident next carries on from the journal.
                tracing::warn!(run_id = %incident.run_id, %error, "Handling the incident was interrupted; it is taken up again.");
                return Handled::Interrupted;
            }
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(run_id = %incident.run_id, %error, "Handling the incident failed.");
            let update = json!({"state": "failed", "error": error.to_string(), "handledAt": now_iso()});
            if let Err(error) = self.write_record(&mut record, update, None).instrument(span).await {
                tracing::error!(run_id = %incident.run_id, %error, "Cannot record the incident's failure.");
            }
        }
        let execution_id = record.body.as_ref().and_then(|body| body["executionId"].as_str().map(str::to_owned));
        Handled::Done { execution_id }
    }

    /// Plans and (dry-)runs the incident; `read` is the run as claimed, else it is read now.
    async fn handle_inner(
        &self,
        incident: &Incident,
        read: Option<Arc<StoredRun>>,
        record: &mut IncidentRecord,
    ) -> Result<(), ExecuteError> {
        // One atomic load: the plan and its execution use this set whatever reloads happen.
        let set = self.reloader.current();
        self.remember(&set);
        let digests = SetDigests::of(&set);
        let planner = set.planner(self.store.clone() as Arc<dyn RunStore>);
        let plan_span = tracing::info_span!("plan", run_id = %incident.run_id);
        let PlannedIncident { plan, json: plan_value, inputs: planned_from } = match read {
            // The revision claimed: a change since is found by the runner's stale-plan check,
            // and the incident is planned again.
            Some(read) => {
                planner.plan_stored_with_inputs(Arc::unwrap_or_clone(read), None).instrument(plan_span).await?
            }
            None => planner.plan_with_inputs(&incident.run_id, None).instrument(plan_span).await?,
        };
        let span = tracing::Span::current();
        span.record("kind", plan.incident_type.as_str());
        if let Some(playbook) = &plan.playbook {
            span.record("playbook", playbook.name.as_str());
        }
        if crate::trace_context::exporting() {
            self.link_failed_run(&span, &incident.run_id).await;
        }
        let common = json!({
            "planId": plan.plan_id,
            "planRevision": plan.run_revision.0,
            "policyDigest": plan.policy_digest,
            "playbookSetDigest": plan.playbook_set_digest,
            "playbook": plan.playbook.as_ref().map(|p| &p.name),
            "incidentType": plan.incident_type,
            "mode": self.mode,
        });
        debug_assert_eq!(plan.policy_digest, digests.policy_digest);
        if plan.playbook.is_none() {
            self.counters.planned.fetch_add(1, Ordering::Relaxed);
            let mut update = common;
            update["state"] = json!("planned");
            update["outcome"] = json!("no playbook handles this incident");
            update["handledAt"] = json!(now_iso());
            // Built from the plan's JSON as it is: `json!` would serialise it into a new tree.
            let dry_run =
                (self.mode == Mode::Advisory).then(|| Value::Object(Map::from_iter([("plan".to_owned(), plan_value)])));
            return Ok(self.write_record(record, update, dry_run.as_ref()).await?);
        }
        match self.mode {
            Mode::Advisory => {
                let mut report = self.runner(&set, Mode::Advisory).apply_planned(plan_value, &planned_from).await?;
                // The plan as applied (the execution record kept it, uncopied) and the runs the dry
                // run would write, moved into the document rather than serialised by `json!`.
                let dry_run = Value::Object(Map::from_iter([
                    ("plan".to_owned(), std::mem::take(&mut report.execution.plan)),
                    ("dryRun".to_owned(), report_json(&mut report)),
                    ("recordedAt".to_owned(), Value::String(now_iso())),
                ]));
                let mut update = common;
                update["state"] = json!("planned");
                update["outcome"] = json!(report.execution.status);
                update["handledAt"] = json!(now_iso());
                self.write_record(record, update, Some(&dry_run)).await?;
                self.counters.planned.fetch_add(1, Ordering::Relaxed);
            }
            Mode::Enforce => {
                let execution_id = crate::execute::record::execution_id_of(&plan.plan_id, Mode::Enforce);
                let mut update = common.clone();
                update["state"] = json!("applying");
                update["executionId"] = json!(execution_id);
                self.write_record(record, update, None).await?;
                let status = match self.runner(&set, Mode::Enforce).apply(&plan_value).await {
                    Ok(report) => report.execution.status.to_string(),
                    Err(ExecuteError::AlreadyExecuted { status, .. }) => status.to_string(),
                    Err(ExecuteError::Busy { holder, .. }) => format!("running in {holder}"),
                    Err(error @ (ExecuteError::AlreadyRecovered { .. } | ExecuteError::RunOfARecovery { .. })) => {
                        // One recovery per incident: a person decides whether this family gets
                        // another one (`salvage apply RUN --again`).
                        let mut update = common;
                        update["state"] = json!("escalated");
                        update["outcome"] = json!(format!(
                            "{error}; a person decides: `salvage apply {} --again` starts another recovery",
                            incident.run_id
                        ));
                        update["executionId"] = Value::Null;
                        update["handledAt"] = json!(now_iso());
                        return Ok(self.write_record(record, update, None).await?);
                    }
                    Err(error) => return Err(error),
                };
                self.counters.executed.fetch_add(1, Ordering::Relaxed);
                let mut update = common;
                update["state"] = json!("applied");
                update["executionId"] = json!(execution_id);
                update["outcome"] = json!(status);
                update["handledAt"] = json!(now_iso());
                self.write_record(record, update, None).await?;
            }
        }
        Ok(())
    }

    /// Ties the incident's span to the failed run: the reference's correlation ids as attributes
    /// (its `traceId` is the family's root run), and a span link to the run's own trace when
    /// the runtime recorded a W3C `traceparent` in its metadata (`metadata.traceparent` or
    /// `metadata.correlation.traceparent`). A run that cannot be read adds nothing.
    async fn link_failed_run(&self, span: &tracing::Span, run_id: &str) {
        let Ok(Some(stored)) = self.store.get(run_id).await else { return };
        span.record("root_run_id", stored.run.root_run_id());
        let metadata = &stored.run.metadata;
        let traceparent = metadata
            .get("traceparent")
            .or_else(|| metadata.get("correlation").and_then(|correlation| correlation.get("traceparent")))
            .and_then(Value::as_str);
        if let Some(traceparent) = traceparent {
            crate::trace_context::link(span, traceparent);
        }
    }

    /// Looks again at the run a handed-off execution waits on (`false`: it cannot be, e.g. its
    /// set is gone; it is not tried again by this daemon).
    pub async fn follow_up(&self, execution_id: &str, digests: &SetDigests) -> bool {
        // The runner opens the execution's span (continuing the trace it started in).
        let set = self.set_for(digests);
        match self.runner(&set, Mode::Enforce).follow_up(execution_id).await {
            Ok(report) => {
                self.counters.followed_up.fetch_add(1, Ordering::Relaxed);
                if report.execution.status != crate::execute::ExecutionStatus::HandedOff {
                    tracing::info!(execution_id, status = %report.execution.status, "A handed-off execution settled.");
                    self.status_changed.notify_one();
                }
                true
            }
            Err(error) => {
                tracing::warn!(execution_id, %error, "Cannot follow the handed-off execution up.");
                false
            }
        }
    }

    /// Continues an execution (after a restart, or once its approval was answered) with the
    /// set it was planned with. `false` when it cannot be resumed by this daemon (e.g. its set
    /// is no longer on disk): it is not tried again, and `status` lists it as in flight.
    pub async fn resume(&self, execution_id: &str, digests: &SetDigests) -> bool {
        let set = self.set_for(digests);
        let result = self.runner(&set, Mode::Enforce).resume(execution_id).await;
        match result {
            Ok(report) => {
                self.counters.resumed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(execution_id, status = %report.execution.status, "Resumed an execution.");
                true
            }
            Err(ExecuteError::Busy { .. } | ExecuteError::LostOwnership { .. }) => {
                tracing::debug!(execution_id, "Another process is running the execution.");
                true
            }
            Err(error) => {
                tracing::warn!(execution_id, %error, "Cannot resume the execution; `salvage resume` can, with its sets.");
                false
            }
        }
    }
}

/// The dry run's part of the document; the runs it would write are moved out of `report`.
fn report_json(report: &mut ExecutionReport) -> Value {
    let mut json = json!({
        "executionId": report.execution.execution_id,
        "status": report.execution.status,
        "outcome": report.execution.outcome,
        "steps": report.steps,
    });
    json["runsItWouldWrite"] = Value::Array(std::mem::take(&mut report.dry_run_runs));
    json
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RunStatus;
    use crate::store::MemoryStore;

    fn failed(id: &str) -> Run {
        let mut run = Run::new(id.to_owned(), "2026-01-01T00:00:00.000Z".to_owned());
        run.status = RunStatus::Failed;
        run
    }

    #[test]
    fn a_store_cut_off_while_planning_is_an_interruption_not_a_failure() {
        use crate::inspect::InspectError;
        use crate::plan::PlanError;
        let gone = || StoreError::Database { location: "postgres".into(), message: "connection closed".into() };
        // The planner reads the run (and its family) through the inspector: a terminated
        // connection there must leave the incident for the next claimer, not record it failed.
        for error in [
            ExecuteError::Store(gone()),
            ExecuteError::Plan(PlanError::Store(gone())),
            ExecuteError::Plan(PlanError::Inspect(InspectError::Store(gone()))),
        ] {
            assert!(interrupted(&error), "{error:?}");
        }
        let conflict = StoreError::Conflict { run_id: "r-1".into(), expected: Expected::Absent, found: None };
        for error in
            [ExecuteError::Plan(PlanError::Store(conflict)), ExecuteError::StalePlan { changes: vec!["status".into()] }]
        {
            assert!(!interrupted(&error), "{error:?}");
        }
    }

    #[tokio::test]
    async fn an_incident_is_claimed_once_and_salvages_own_writes_are_not_new_incidents() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (tx, mut rx) = mpsc::channel(8);
        let intake = Intake::new(store.clone(), tx, Arc::new(Counters::default()));
        let mut run = failed("r-1");
        store.save(&run, Expected::Absent).await.expect("save");
        assert!(intake.consider("r-1", None).await.expect("consider"), "a new failed run is queued");
        assert!(matches!(rx.try_recv(), Ok(Work::Incident(Incident { revision: Revision(1), .. }))));
        assert!(!intake.consider("r-1", Some(Revision(1))).await.expect("again"), "once");

        // While it is being handled, a change to the run is not a new incident.
        run.metadata.insert("note", json!("the runtime touched it"));
        store.save(&run, Expected::Any).await.expect("save");
        assert!(!intake.consider("r-1", None).await.expect("in flight"));
        // Handled: only salvage's bookkeeping changes → still not new; a real change → new.
        let key = incident_key("r-1");
        let mut record = store.get_state(&key).await.expect("read").expect("claimed").body;
        record["state"] = json!("planned");
        store.put_state(&key, &record, Expected::Any).await.expect("put");
        let fresh = Intake::with_sink(store.clone(), intake.sink.clone(), Arc::new(Counters::default()));
        assert!(fresh.consider("r-1", None).await.expect("changed"), "the runtime's change is a new incident");
        assert!(matches!(rx.try_recv(), Ok(Work::Incident(Incident { revision: Revision(2), .. }))));
        let mut record = store.get_state(&key).await.expect("read").expect("claimed").body;
        record["state"] = json!("planned");
        store.put_state(&key, &record, Expected::Any).await.expect("put");
        run.metadata.insert("recovery", json!({"approvals": []}));
        store.save(&run, Expected::Any).await.expect("save");
        let fresh = Intake::with_sink(store.clone(), intake.sink.clone(), Arc::new(Counters::default()));
        assert!(!fresh.consider("r-1", None).await.expect("bookkeeping"), "salvage's own write is not new");

        // A branch a recovery created, paused for its runtime, is the recovery itself.
        let mut branch = failed("b-1");
        branch.status = RunStatus::Paused;
        branch.metadata.insert("salvage", json!({"executionId": "exec-1"}));
        store.save(&branch, Expected::Absent).await.expect("save");
        assert!(!intake.consider("b-1", None).await.expect("branch"));
        assert!(rx.try_recv().is_err(), "nothing else was queued");
    }

    /// The runs [`a_batch`] looks at, saved in a fresh SQLite store: a new failure, a
    /// completed run, a failure already handled at its revision, a failed branch of the first
    /// (its recovery is claimed in the same batch), another new failure named twice.
    async fn batch_store(dir: &std::path::Path) -> (Arc<dyn Store>, Vec<(String, Option<Revision>)>) {
        let store: Arc<dyn Store> = Arc::new(crate::store::SqliteStore::open(dir.join("s.db")).await.expect("sqlite"));
        let mut completed = failed("r-2");
        completed.status = RunStatus::Completed;
        let mut branch = failed("r-4");
        branch.metadata.lineage.branch_origin_run_id = Some("r-1".into());
        for run in [failed("r-1"), completed, failed("r-3"), branch, failed("r-5")] {
            store.save(&run, Expected::Absent).await.expect("save");
        }
        let handled = json!({"runId": "r-3", "revision": 1, "state": "planned"});
        store.put_state(&incident_key("r-3"), &handled, Expected::Absent).await.expect("handled");
        let runs = ["r-1", "r-2", "r-3", "r-4", "r-5", "r-5"].map(|id| (id.to_owned(), Some(Revision(1))));
        (store, runs.to_vec())
    }

    fn queued(rx: &mut mpsc::Receiver<Work>) -> Vec<String> {
        std::iter::from_fn(|| match rx.try_recv() {
            Ok(Work::Incident(incident)) => Some(incident.run_id),
            _ => None,
        })
        .collect()
    }

    #[tokio::test]
    async fn a_batch_is_claimed_as_its_runs_one_at_a_time_would_be() {
        let (one, batch) = (tempfile::tempdir().expect("temp"), tempfile::tempdir().expect("temp"));
        let (store, runs) = batch_store(one.path()).await;
        let (tx, mut rx) = mpsc::channel(16);
        let intake = Intake::new(store.clone(), tx, Arc::new(Counters::default()));
        for (run_id, revision) in &runs {
            intake.consider(run_id, *revision).await.expect("consider");
        }
        let one_by_one = queued(&mut rx);
        assert_eq!(one_by_one, ["r-1", "r-5"], "r-4 belongs to r-1's recovery, claimed just before it");

        let (batch_store, runs) = batch_store(batch.path()).await;
        assert!(batch_store.writes_states_together());
        let (tx, mut rx) = mpsc::channel(16);
        let counters = Arc::new(Counters::default());
        let intake = Intake::new(batch_store.clone(), tx, counters.clone());
        assert_eq!(intake.consider_many(&runs).await.expect("consider"), 2);
        assert_eq!(queued(&mut rx), one_by_one);
        assert_eq!(counters.handled.load(Ordering::Relaxed), 2);
        for (run_id, state) in
            [("r-1", Some("claimed")), ("r-3", Some("planned")), ("r-4", None), ("r-5", Some("claimed"))]
        {
            let record = batch_store.get_state(&incident_key(run_id)).await.expect("read");
            assert_eq!(record.as_ref().and_then(|r| r.body["state"].as_str()), state, "{run_id}");
        }
        // Claimed: looked at again, nothing is new.
        assert_eq!(intake.consider_many(&runs).await.expect("again"), 0);
    }

    #[tokio::test]
    async fn an_unreadable_run_is_skipped_and_the_others_of_its_batch_are_claimed() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, runs) = batch_store(dir.path()).await;
        let conn = rusqlite::Connection::open(dir.path().join("s.db")).expect("open");
        conn.execute("UPDATE runs SET body = '{\"id\": \"r-2\", ' WHERE id = 'r-2'", []).expect("corrupt r-2");
        let (tx, mut rx) = mpsc::channel(16);
        let intake = Intake::new(store.clone(), tx, Arc::new(Counters::default()));
        assert_eq!(intake.consider_many(&runs).await.expect("the feed goes on"), 2);
        assert_eq!(queued(&mut rx), ["r-1", "r-5"]);
        assert_eq!(store.get_state(&incident_key("r-2")).await.expect("read"), None, "not claimed");
        // Reported once per revision: offered again unchanged, it is not read again.
        assert!(!intake.consider("r-2", runs[1].1).await.expect("again"));
        // Saved again (readable now): a new revision, a new incident.
        store.save(&failed("r-2"), Expected::Any).await.expect("save");
        assert!(intake.consider("r-2", None).await.expect("fixed"));
    }

    #[tokio::test]
    async fn a_batch_that_lost_a_claim_to_another_process_claims_the_rest() {
        let dir = tempfile::tempdir().expect("temp");
        let (store, runs) = batch_store(dir.path()).await;
        let (tx, mut rx) = mpsc::channel(16);
        let intake = Intake::new(store.clone(), tx, Arc::new(Counters::default()));
        let claims = intake.decide_claims(&runs).await.expect("decide");
        assert_eq!(
            claims.iter().map(|claim| claim.key.as_str()).collect::<Vec<_>>(),
            [incident_key("r-1"), incident_key("r-5")]
        );
        // Another daemon claims r-5 between this one's reads and its commit.
        let (other_tx, mut other_rx) = mpsc::channel(16);
        let other = Intake::new(store.clone(), other_tx, Arc::new(Counters::default()));
        assert!(other.consider("r-5", None).await.expect("other"));
        let theirs = store.get_state(&incident_key("r-5")).await.expect("read").expect("claimed");

        let incidents = intake.commit_claims(claims).await.expect("commit");
        assert_eq!(incidents.iter().map(|i| i.run_id.as_str()).collect::<Vec<_>>(), ["r-1"]);
        assert_eq!(store.get_state(&incident_key("r-5")).await.expect("read"), Some(theirs), "theirs stays");
        assert_eq!(queued(&mut other_rx), ["r-5"]);
        assert!(store.get_state(&incident_key("r-1")).await.expect("read").is_some());
        assert!(queued(&mut rx).is_empty(), "commit_claims hands the incidents back, it does not queue");
    }

    #[test]
    fn the_fingerprint_ignores_salvages_own_bookkeeping_only() {
        let mut run = Run::new("r-1".to_owned(), "2026-01-01T00:00:00.000Z".to_owned());
        let before = fingerprint(&run);
        run.metadata.insert("recovery", json!({"approvals": [{"decision": "approved"}]}));
        assert_eq!(fingerprint(&run), before, "an approval recorded on the run is not a new incident");
        let mut value = run.to_value();
        value["timestamps"]["updatedAt"] = json!("2026-02-02T00:00:00.000Z");
        let run = Run::from_value(value).expect("run");
        assert_eq!(fingerprint(&run), before, "a save time alone is not a new incident");
        let mut run = run;
        run.metadata.insert("note", json!("changed by the runtime"));
        assert_ne!(fingerprint(&run), before);
    }
}
