//! Several `salvage serve` replicas on one `postgres://` store.
//!
//! ```text
//!               ┌ feed (LISTEN + change sequence) ─► intake ─► offer incident/<run>      (every replica)
//!  replica × N ─┼ workers: claim (SKIP LOCKED, lease on the database clock)
//!               │           └► handler over a store fenced by the claim ─► planner + runner
//!               ├ heartbeat (lease TTL / 3): renew claims, replica row, leadership
//!               └ leader only: the clocks (answered / expired approvals, due timers,
//!                 follow-ups, orphans) → offers; pruning after the retention
//! ```
//!
//! - **One key per incident run** (`incident/<run id>`): the first handling, the resumption
//!   of its execution after an approval or a timer, a follow-up — all of a run's recovery work
//!   goes through that one claim, so at most one replica works on a run at a time, and a
//!   replica that dies or stalls loses it after the TTL to whichever replica claims it next.
//! - **Fenced.** The worker's store refuses every write once the claim is another's
//!   ([`crate::store::FencedStore`]); before every effect the runner checks that the lease may
//!   still be trusted by this process's monotonic clock ([`ReplicaLease`]); the epoch goes into
//!   the runtime's idempotency key. A lost lease ([`StoreError::LeaseLost`]) ends the work on
//!   that claim: it is counted, never retried.
//! - **Taking over.** A claim that finds its incident record `claimed` or `applying` was
//!   left mid-way: the execution (if it started) is continued from its journal, whose open
//!   intents go to a person unless their outcome can be proved.
//! - **The leader** only keeps house; leading needs no fence, because everything it does is
//!   idempotent (offers) or concerns finished things (pruning).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::incidents::{self, DRY_RUN_PREFIX, Handled, Handler, INCIDENT_PREFIX, Incident, Intake, Sink, Work};
use super::reload::SetDigests;
use super::{Daemon, ServeError, ServeSummary, digests_of, feed};
use crate::execute::{
    Execution, ExecutionStatus, Mode, ReplicaLease, RunnerSettings, execution_of, lease_is_live, short_digest,
};
use crate::model::json::now_iso;
use crate::store::{
    Claim, ExecutionStore, Finish, Leadership, PostgresStore, ReplicaInfo, Revision, Store, StoreError,
};

/// The kind of the claims replicas take.
pub const INCIDENT_KIND: &str = "incident";
/// The leadership the housekeeping goes with.
pub const HOUSEKEEPING: &str = "housekeeping";
/// Each replica's status document lives under this prefix.
pub const REPLICA_STATUS_PREFIX: &str = "serve/replica";
/// A claim taken this many times without being finished (its replicas died on it, or lost
/// it) is not worked again: it is recorded as escalated, for a person.
pub const MAX_CLAIM_ATTEMPTS: i32 = 10;
/// How long a resumption that could not be made waits before it is tried again.
const RETRY_LATER: Duration = Duration::from_secs(60);

/// Claim keys of runs' recovery work start with this.
const CLAIM_PREFIX: &str = "incident/";

/// The claim key of a run's recovery work.
pub fn claim_key(run_id: &str) -> String {
    format!("{CLAIM_PREFIX}{run_id}")
}

/// The status document of a replica.
pub fn status_key(replica_id: &str) -> String {
    format!("{REPLICA_STATUS_PREFIX}/{replica_id}")
}

/// Offers a new incident to whichever replica claims it first; `false` when its run's work is
/// already offered or being worked on (that replica looks at the run afresh).
pub async fn offer_incident(store: &PostgresStore, run_id: &str, revision: Revision) -> Result<bool, StoreError> {
    let payload = json!({"action": "consider", "runId": run_id, "revision": revision.0});
    store.offer(&claim_key(run_id), INCIDENT_KIND, &payload, Duration::ZERO).await
}

/// How replicas lease, claim and keep house.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaSettings {
    /// How long a claim or the leadership lasts without renewal (database clock): a replica
    /// that dies or stalls loses its work after this. Renewed every third of it.
    pub lease_ttl: Duration,
    /// How often a replica with free workers looks for work offered by others.
    pub claim_poll: Duration,
    /// How long finished claims, finished incident records, dry runs and the rows of replicas
    /// gone are kept.
    pub retention: Duration,
    /// How often the leader prunes.
    pub prune_every: Duration,
    /// Take no incidents while this replica's set differs from the leader's.
    pub require_same_set: bool,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        ReplicaSettings {
            lease_ttl: Duration::from_secs(15),
            claim_poll: Duration::from_millis(250),
            retention: Duration::from_secs(7 * 24 * 3600),
            prune_every: Duration::from_secs(300),
            require_same_set: false,
        }
    }
}

/// What a replica says about itself in its status document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaState {
    pub id: String,
    pub leader: bool,
    pub leader_term: Option<i64>,
    pub lease_ttl_ms: u64,
    pub leases_held: usize,
    pub claims_taken: u64,
    /// Claims that found their incident left mid-way by another replica and carried it on.
    pub takeovers: u64,
    /// Claims lost while being worked on (another replica took them; the work stopped).
    pub leases_lost: u64,
    /// Writes this process attempted under a lost lease, refused by the store.
    pub fenced_rejections: u64,
    /// Effects this process did not send because its lease had run out by its own clock.
    pub effects_refused: u64,
    pub require_same_set: bool,
    /// Why this replica takes no incidents now (`--require-same-set`).
    pub refusing_incidents: Option<String>,
}

#[derive(Debug, Default)]
struct ReplicaCounters {
    claims: AtomicU64,
    takeovers: AtomicU64,
    leases_lost: AtomicU64,
    effects_refused: Arc<AtomicU64>,
}

/// This process as one replica among several.
#[derive(Debug)]
pub struct Replica {
    /// Unique per process: host, pid and a random suffix.
    pub id: String,
    store: Arc<PostgresStore>,
    settings: ReplicaSettings,
    /// Claims being worked on, with the instant each was taken.
    held: Mutex<HashMap<String, (ReplicaLease, Instant)>>,
    /// The housekeeping leadership, trusted until the instant.
    leading: Mutex<Option<(Leadership, Instant)>>,
    refusing: Mutex<Option<String>>,
    counters: ReplicaCounters,
    /// Work was offered by this process.
    wake: Arc<Notify>,
}

impl Replica {
    pub fn new(store: Arc<PostgresStore>, settings: ReplicaSettings) -> Arc<Replica> {
        let suffix: String = uuid::Uuid::new_v4().simple().to_string().chars().take(8).collect();
        Arc::new(Replica {
            id: format!("{}-{}-{suffix}", super::status::hostname(), std::process::id()),
            store,
            settings,
            held: Mutex::new(HashMap::new()),
            leading: Mutex::new(None),
            refusing: Mutex::new(None),
            counters: ReplicaCounters::default(),
            wake: Arc::new(Notify::new()),
        })
    }

    pub fn state(&self) -> ReplicaState {
        let leading = self.leadership();
        ReplicaState {
            id: self.id.clone(),
            leader: leading.is_some(),
            leader_term: leading.map(|l| l.term),
            lease_ttl_ms: u64::try_from(self.settings.lease_ttl.as_millis()).unwrap_or(u64::MAX),
            leases_held: self.held().len(),
            claims_taken: self.counters.claims.load(Ordering::Relaxed),
            takeovers: self.counters.takeovers.load(Ordering::Relaxed),
            leases_lost: self.counters.leases_lost.load(Ordering::Relaxed),
            fenced_rejections: self.store.fenced_rejections(),
            effects_refused: self.counters.effects_refused.load(Ordering::Relaxed),
            require_same_set: self.settings.require_same_set,
            refusing_incidents: self.refusing.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, (ReplicaLease, Instant)>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The leadership, while this process may trust it.
    fn leadership(&self) -> Option<Leadership> {
        let leading = self.leading.lock().unwrap_or_else(PoisonError::into_inner);
        leading.as_ref().filter(|(_, until)| Instant::now() < *until).map(|(leadership, _)| leadership.clone())
    }

    fn hold(&self, claim: &Claim) -> ReplicaLease {
        let lease =
            ReplicaLease::new(claim.fence.clone(), claim.trusted_until).counting(self.counters.effects_refused.clone());
        self.held().insert(claim.key.clone(), (lease.clone(), Instant::now()));
        lease
    }

    fn release(&self, key: &str, epoch: i64) {
        let mut held = self.held();
        if held.get(key).is_some_and(|(lease, _)| lease.epoch() == epoch) {
            held.remove(key);
        }
    }

    /// Renews every claim, says it is alive, keeps or seeks the leadership; with
    /// `--require-same-set`, compares its set with the leader's.
    async fn heartbeat(&self, digests: &SetDigests, mode: Mode) -> Result<(), StoreError> {
        let ttl = self.settings.lease_ttl;
        let sent = Instant::now();
        let working: Vec<(String, i64)> =
            self.held().iter().map(|(key, (lease, _))| (key.clone(), lease.epoch())).collect();
        let renewed: HashMap<String, i64> = self.store.renew(&self.id, ttl, &working).await?.into_iter().collect();
        for (key, (lease, taken)) in self.held().iter() {
            if renewed.get(key) == Some(&lease.epoch()) {
                lease.extend(sent + ttl);
            } else if *taken < sent {
                // Taken over, or expired while this process could not renew (a stall).
                lease.end();
            }
        }
        let info = ReplicaInfo {
            id: self.id.clone(),
            host: super::status::hostname(),
            pid: std::process::id(),
            mode: mode.to_string(),
            policy_digest: digests.policy_digest.clone(),
            playbook_set_digest: digests.playbook_set_digest.clone(),
            leases_held: u32::try_from(self.held().len()).unwrap_or(u32::MAX),
        };
        self.store.heartbeat_replica(&info).await?;
        let leadership = self.store.lead(HOUSEKEEPING, &self.id, ttl).await?;
        {
            let mut leading = self.leading.lock().unwrap_or_else(PoisonError::into_inner);
            let was = leading.as_ref().map(|(l, _)| l.term);
            if let Some(now) = &leadership
                && was != Some(now.term)
            {
                tracing::info!(replica = %self.id, term = now.term, "This replica leads the housekeeping.");
            }
            *leading = leadership.map(|l| (l, sent + ttl));
        }
        if self.settings.require_same_set {
            let refusal = self.refusal(digests).await?;
            let mut refusing = self.refusing.lock().unwrap_or_else(PoisonError::into_inner);
            if refusal != *refusing {
                match &refusal {
                    Some(why) => tracing::warn!(replica = %self.id, "{why}"),
                    None => tracing::info!(replica = %self.id, "Same set as the leader; taking incidents."),
                }
            }
            *refusing = refusal;
        }
        Ok(())
    }

    /// Why this replica may not take incidents under `--require-same-set`, if it may not.
    async fn refusal(&self, mine: &SetDigests) -> Result<Option<String>, StoreError> {
        let Some(leader) = self.store.leader(HOUSEKEEPING).await? else { return Ok(None) };
        if leader.holder == self.id {
            return Ok(None);
        }
        let rows = self.store.replicas(self.settings.lease_ttl).await?;
        let Some(row) = rows.iter().find(|row| row.id == leader.holder) else { return Ok(None) };
        if row.policy_digest == mine.policy_digest && row.playbook_set_digest == mine.playbook_set_digest {
            return Ok(None);
        }
        Ok(Some(format!(
            "This replica's set (policies {}, playbooks {}) differs from the leader's ({}: policies {}, playbooks {}); \
             --require-same-set: it takes no incidents until they match (reload one of them)",
            short_digest(&mine.policy_digest),
            short_digest(&mine.playbook_set_digest),
            row.id,
            short_digest(&row.policy_digest),
            short_digest(&row.playbook_set_digest)
        )))
    }

    fn refusing(&self) -> bool {
        self.refusing.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }
}

/// Serves as one replica until [`super::DaemonHandle::stop`].
pub(super) async fn run(daemon: Arc<Daemon>, replica: Arc<Replica>) -> Result<ServeSummary, ServeError> {
    let options = &daemon.options;
    let workers = options.workers.max(1);
    let stop_rx = daemon.handle.stop_tx.subscribe();
    let mode = options.mode;
    // Registered (and maybe leading) before taking any work.
    replica.heartbeat(&SetDigests::of(&daemon.reloader.current()), mode).await?;
    daemon.write_status(0, false).await;
    tracing::info!(
        replica = %replica.id, %mode, workers, store = %daemon.store.spec(),
        lease_ttl = ?replica.settings.lease_ttl, digest = %daemon.reloader.current().digest(),
        "salvage serve started as a replica."
    );

    let mut background = JoinSet::new();
    daemon.spawn_status_writer(&mut background, || 0, stop_rx.clone());
    daemon.spawn_set_watcher(&mut background, stop_rx.clone());
    let handler = daemon.handler();
    let intake = Arc::new(Intake::with_sink(
        daemon.store.clone(),
        Sink::Offer { store: replica.store.clone(), wake: replica.wake.clone() },
        daemon.counters.clone(),
    ));

    // Heartbeat: every third of the TTL, so that two may fail before a lease runs out.
    {
        let (daemon, replica, mut stop) = (daemon.clone(), replica.clone(), stop_rx.clone());
        background.spawn(async move {
            let every = (replica.settings.lease_ttl / 3).max(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(every) => {}
                }
                let digests = SetDigests::of(&daemon.reloader.current());
                if let Err(error) = replica.heartbeat(&digests, mode).await {
                    tracing::warn!(%error, "Heartbeat failed; leases run out unless the next one succeeds.");
                }
            }
        });
    }
    // The feed: a failure (the database restarting, a connection killed) is retried, since
    // the other replicas go on and this one must not miss what they miss.
    {
        let (daemon, intake, mut stop) = (daemon.clone(), intake.clone(), stop_rx.clone());
        background.spawn(async move {
            loop {
                let result =
                    feed::run(daemon.backend.clone(), intake.clone(), daemon.options.timing.feed, stop.clone()).await;
                match result {
                    Ok(()) => return,
                    Err(error) => tracing::warn!(%error, "The incident feed failed; starting it again."),
                }
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
    // Housekeeping, by whichever replica leads.
    {
        let (daemon, replica, intake, mut stop) = (daemon.clone(), replica.clone(), intake.clone(), stop_rx.clone());
        background.spawn(async move {
            let mut open = HashSet::new();
            let mut pruned_at: Option<Instant> = None;
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(daemon.options.timing.approvals_poll) => {}
                }
                if replica.leadership().is_none() {
                    open.clear();
                    continue;
                }
                if let Err(error) = clocks(&daemon, &replica, &intake, &mut open).await {
                    tracing::warn!(%error, "Cannot check the waiting executions.");
                }
                if pruned_at.is_none_or(|at| at.elapsed() >= replica.settings.prune_every) {
                    pruned_at = Some(Instant::now());
                    if let Err(error) = prune(&replica).await {
                        tracing::warn!(%error, "Cannot prune finished claims and records.");
                    }
                }
            }
        });
    }

    // The workers: claim as much work as there are free workers.
    let permits = Arc::new(Semaphore::new(workers));
    let mut tasks = JoinSet::new();
    let mut stop = stop_rx.clone();
    let poll = replica.settings.claim_poll;
    loop {
        while tasks.try_join_next().is_some() {}
        if *stop.borrow() {
            break;
        }
        if replica.refusing() {
            tokio::select! {
                _ = stop.changed() => break,
                () = tokio::time::sleep(poll) => continue,
            }
        }
        let first = tokio::select! {
            _ = stop.changed() => break,
            permit = permits.clone().acquire_owned() => permit,
        };
        let Ok(first) = first else { break };
        let mut free = vec![first];
        while let Ok(permit) = permits.clone().try_acquire_owned() {
            free.push(permit);
        }
        let claims =
            match replica.store.claim(&replica.id, replica.settings.lease_ttl, free.len(), &[INCIDENT_KIND]).await {
                Ok(claims) => claims,
                Err(error) => {
                    tracing::warn!(%error, "Cannot claim work; trying again.");
                    Vec::new()
                }
            };
        if claims.is_empty() {
            drop(free);
            tokio::select! {
                _ = stop.changed() => break,
                () = replica.wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
            continue;
        }
        for claim in claims {
            let Some(permit) = free.pop() else { break };
            replica.counters.claims.fetch_add(1, Ordering::Relaxed);
            let (replica, handler, intake) = (replica.clone(), handler.clone(), intake.clone());
            tasks.spawn(async move {
                // Boxed: the whole recovery's future lives on the heap, not the worker's stack.
                Box::pin(work(&replica, &handler, &intake, claim)).await;
                drop(permit);
            });
        }
    }

    daemon.handle.stop();
    let abandoned = daemon.drain(&mut tasks).await;
    background.abort_all();
    while background.join_next().await.is_some() {}
    for (what, result) in [
        ("leave the leadership", replica.store.resign(HOUSEKEEPING, &replica.id).await),
        ("say it stopped", replica.store.stop_replica(&replica.id).await),
    ] {
        if let Err(error) = result {
            tracing::warn!(%error, "Cannot {what}.");
        }
    }
    daemon.write_status(0, true).await;
    let handled = daemon.counters.handled.load(Ordering::Relaxed);
    tracing::info!(replica = %replica.id, handled, "salvage serve stopped.");
    Ok(ServeSummary { handled, abandoned_tasks: abandoned })
}

/// What a claim's work asks of its claim afterwards.
enum After {
    Done {
        execution_id: Option<String>,
    },
    /// It could not be done now; again after a while.
    Later,
}

/// Works one claim under its lease, then gives it back.
async fn work(replica: &Replica, handler: &Handler, intake: &Intake, claim: Claim) {
    let span = tracing::info_span!("claim", key = %claim.key, epoch = claim.epoch, replica = %replica.id);
    work_inner(replica, handler, intake, claim).instrument(span).await;
}

async fn work_inner(replica: &Replica, handler: &Handler, intake: &Intake, claim: Claim) {
    let lease = replica.hold(&claim);
    let fenced = Arc::new(replica.store.fenced(claim.fence.clone()));
    let handler = Handler {
        store: fenced.clone() as Arc<dyn Store>,
        settings: RunnerSettings { replica: Some(lease), ..handler.settings.clone() },
        ..handler.clone()
    };
    let after = match work_on(replica, &handler, intake, &claim).await {
        Ok(after) => after,
        Err(error) if error.is_lease_lost() => After::Done { execution_id: None },
        Err(error) => {
            tracing::warn!(key = %claim.key, %error, "Working on the claim failed; it is tried again later.");
            After::Later
        }
    };
    let (how, execution_id) = match after {
        // Stopping: whoever claims it next carries on from the journal.
        _ if handler.stop.load(Ordering::SeqCst) => (Finish::Again { after: Duration::ZERO }, None),
        After::Done { execution_id } => (Finish::Done, execution_id),
        After::Later => (Finish::Again { after: RETRY_LATER }, None),
    };
    match fenced.finish(how).await {
        Ok(()) => {}
        Err(error) if error.is_lease_lost() => {
            replica.counters.leases_lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(key = %claim.key, epoch = claim.epoch, "The lease was lost during the work; another replica has it.");
        }
        Err(error) => {
            tracing::warn!(key = %claim.key, %error, "Cannot give the claim back; it returns after its lease.")
        }
    }
    replica.release(&claim.key, claim.epoch);
    // An execution that ended releases its family's changes set aside meanwhile.
    if let Some(execution_id) = execution_id
        && let Err(error) = intake.reconsider_family(&execution_id).await
    {
        tracing::warn!(execution = %execution_id, %error, "Cannot look again at the family of an ended execution.");
    }
}

async fn work_on(replica: &Replica, handler: &Handler, intake: &Intake, claim: &Claim) -> Result<After, StoreError> {
    let payload = &claim.payload;
    let run_id = match payload["runId"].as_str() {
        Some(run_id) => run_id.to_owned(),
        None => match claim.key.strip_prefix(CLAIM_PREFIX) {
            Some(run_id) => run_id.to_owned(),
            None => {
                tracing::error!(key = %claim.key, "A claim that names no run; dropped.");
                return Ok(After::Done { execution_id: None });
            }
        },
    };
    if claim.attempts > MAX_CLAIM_ATTEMPTS {
        let outcome = format!(
            "its work was claimed {} times without being finished (the replicas that took it died or lost it): a \
             person looks at the replicas' logs for {}, then `salvage resume` or `salvage apply {run_id} --again`",
            claim.attempts, claim.key
        );
        tracing::error!(key = %claim.key, attempts = claim.attempts, "{outcome}");
        handler.record(&run_id, json!({"state": "escalated", "outcome": outcome, "handledAt": now_iso()})).await?;
        return Ok(After::Done { execution_id: None });
    }
    match payload["action"].as_str() {
        Some(action @ ("resume" | "follow_up")) => {
            let Some(execution_id) = payload["executionId"].as_str() else {
                tracing::error!(key = %claim.key, "A resumption that names no execution; dropped.");
                return Ok(After::Done { execution_id: None });
            };
            continue_execution(handler, execution_id, action == "follow_up").await
        }
        _ => {
            let record = handler.store.get_state(&incidents::incident_key(&run_id)).await?;
            if let Some(record) = record.filter(|r| matches!(r.body["state"].as_str(), Some("claimed" | "applying"))) {
                // Left mid-way by a replica that stopped, died or stalled: carry on.
                replica.counters.takeovers.fetch_add(1, Ordering::Relaxed);
                tracing::info!(run_id, state = ?record.body["state"], "Taking over an incident left mid-way.");
                return take_over(handler, &record.body).await;
            }
            match intake.claim_afresh(&run_id, handler.store.as_ref()).await? {
                Some(incident) => handle_claimed(handler, incident).await,
                None => Ok(After::Done { execution_id: None }),
            }
        }
    }
}

/// Handles an incident this replica recorded as claimed; [`After::Later`] when cut off.
async fn handle_claimed(handler: &Handler, incident: Incident) -> Result<After, StoreError> {
    match super::isolate::handle(handler, incident).await {
        Handled::Done { execution_id } => Ok(After::Done { execution_id }),
        Handled::Interrupted => Ok(After::Later),
    }
}

/// Resumes or follows up an execution; [`After::Later`] when it could not be.
async fn continue_execution(handler: &Handler, execution_id: &str, follow_up: bool) -> Result<After, StoreError> {
    let Some(execution) = load(handler.store.as_ref(), execution_id).await? else {
        return Ok(After::Done { execution_id: None });
    };
    if execution.status.is_finished() {
        return Ok(After::Done { execution_id: Some(execution_id.to_owned()) });
    }
    let digests = digests_of(&execution);
    let done = if follow_up {
        handler.follow_up(execution_id, &digests).await
    } else {
        handler.resume(execution_id, &digests).await
    };
    if !done {
        return Ok(After::Later);
    }
    // The incident record follows its execution (a store error may have left it `failed`).
    let record = handler.store.get_state(&incidents::incident_key(&execution.run_id)).await?;
    if record.is_some_and(|r| r.body["executionId"].as_str() == Some(execution_id))
        && let Some(now) = load(handler.store.as_ref(), execution_id).await?
    {
        let update = json!({"state": "applied", "outcome": now.status.to_string(), "handledAt": now_iso()});
        handler.record(&execution.run_id, update).await?;
    }
    Ok(After::Done { execution_id: Some(execution_id.to_owned()) })
}

/// Carries on an incident another replica left `claimed` or `applying`.
async fn take_over(handler: &Handler, record: &Value) -> Result<After, StoreError> {
    let run_id = record["runId"].as_str().unwrap_or_default().to_owned();
    let execution = match record["executionId"].as_str() {
        Some(id) => load(handler.store.as_ref(), id).await?,
        None => None,
    };
    let Some(execution) = execution else {
        // Its execution never started: handle the incident as claimed.
        let incident = Incident {
            run_id: run_id.clone(),
            revision: Revision(record["revision"].as_u64().unwrap_or(0)),
            fingerprint: record["fingerprint"].as_str().unwrap_or_default().to_owned(),
            read: None,
            record: Some(record.clone()),
        };
        return handle_claimed(handler, incident).await;
    };
    let execution_id = execution.execution_id.clone();
    // A running one is continued here; one parked (approval, timer, handed off) is the
    // leader's clocks' to wake.
    if execution.status == ExecutionStatus::Running && !handler.resume(&execution_id, &digests_of(&execution)).await {
        return Ok(After::Later);
    }
    let status = load(handler.store.as_ref(), &execution_id).await?.map_or(execution.status, |e| e.status);
    handler.record(&run_id, json!({"state": "applied", "outcome": status.to_string(), "handledAt": now_iso()})).await?;
    Ok(After::Done { execution_id: Some(execution_id) })
}

async fn load(store: &dyn Store, execution_id: &str) -> Result<Option<Execution>, StoreError> {
    let Some(stored) = store.get_execution(execution_id).await? else { return Ok(None) };
    match execution_of(&stored.doc) {
        Ok(execution) => Ok(Some(execution)),
        Err(error) => {
            tracing::warn!(execution_id, %error, "An execution record cannot be read.");
            Ok(None)
        }
    }
}

/// The leader's clocks: offers the resumption of executions whose approval was answered or
/// expired, whose timer is due, or that nobody runs any more, and follow-ups of handed-off
/// ones; looks again at the families of executions that ended.
async fn clocks(
    daemon: &Daemon,
    replica: &Replica,
    intake: &Intake,
    open: &mut HashSet<String>,
) -> Result<(), StoreError> {
    if daemon.options.mode != Mode::Enforce {
        return Ok(());
    }
    // A person's command holds its process lease; a replica's work is rescued by its claim
    // expiring — a `running` execution whose claim is finished is offered again (offering a
    // claim being worked on changes nothing).
    let orphaned = |execution: &Execution| match &execution.lease {
        Some(lease) if lease.epoch.is_none() => !lease_is_live(lease),
        _ => execution.status == ExecutionStatus::Running,
    };
    let (due, now_open) = daemon.due_work(|_| false, orphaned).await?;
    for (work, run_id) in due {
        let (action, execution_id) = match &work {
            Work::Resume { execution_id, .. } => ("resume", execution_id),
            Work::FollowUp { execution_id, .. } => ("follow_up", execution_id),
            Work::Incident(_) => continue,
        };
        let payload = json!({"action": action, "runId": run_id, "executionId": execution_id});
        if replica.store.offer(&claim_key(&run_id), INCIDENT_KIND, &payload, Duration::ZERO).await? {
            tracing::info!(execution = %execution_id, action, "Offered a waiting execution's work.");
            replica.wake.notify_one();
        }
    }
    intake.reconsider_ended(open, now_open).await;
    Ok(())
}

/// Keeps the tables bounded: finished claims, finished incident records (whose execution has
/// ended), dry runs, and replicas gone, older than the retention.
async fn prune(replica: &Replica) -> Result<(), StoreError> {
    let store = &replica.store;
    let retention = replica.settings.retention;
    let mut open = HashSet::new();
    for status in ExecutionStatus::ALL.into_iter().filter(|status| !status.is_finished()) {
        for stored in store.list_executions(Some(status.as_str())).await? {
            open.insert(stored.doc.id);
        }
    }
    let claims = store.prune(retention).await?;
    let records = store
        .prune_state_where(INCIDENT_PREFIX, retention, |record| {
            let body = &record.body;
            !matches!(body["state"].as_str(), Some("claimed" | "applying"))
                && body["executionId"].as_str().is_none_or(|id| !open.contains(id))
        })
        .await?;
    let dry_runs = store.prune_state(DRY_RUN_PREFIX, retention).await?;
    let replicas = store.prune_replicas(retention).await?;
    let statuses = store.prune_state(REPLICA_STATUS_PREFIX, retention).await?;
    tracing::info!(
        claims,
        records,
        dry_runs,
        replicas,
        statuses,
        ?retention,
        "Pruned what finished before the retention."
    );
    Ok(())
}
