//! `salvage serve`: the recovery daemon.
//!
//! ```text
//! store ──feed──► intake (new? claim once) ──bounded queue──► workers (N) ──► planner + runner
//!  (cursor /        │                                            │  advisory: plan + dry run kept
//!   fs events /     └─ serve/incident/<run> records              │  enforce: execute, pause for
//!   poll)                                                        │  approvals; answered ones resume
//! playbooks/ policies/ ──watch + SIGHUP──► Reloader (ArcSwap<RecoverySet>, gate) ──► status
//! ```
//!
//! - **Incidents** (failed, waiting-for-approval and paused runs) are found without rescanning:
//!   see [`feed`]. Each is claimed once through a durable record ([`incidents`]).
//! - **Bounded concurrency, backpressure.** `workers` tasks at most run at once, each incident
//!   in its own task (a slow runtime holds one worker, and the runtimes' own timeouts bound it);
//!   the queue between the feed and the workers is bounded, so a burst of incidents slows the
//!   feed down rather than filling memory.
//! - **Shutdown.** [`DaemonHandle::stop`]: the feed stops taking incidents, running executions
//!   stop between steps (journalled, `running`), workers get `shutdown_grace` to finish, the
//!   status says stopped. **Start** resumes executions left `running` and queues again
//!   incidents claimed but not handled.
//! - **Hot reload** ([`reload`]): one whole clean set at a time; plans record its digests.

pub mod feed;
pub mod gate;
pub mod incidents;
mod isolate;
pub mod metrics;
pub mod reload;
pub mod replicas;
pub mod status;
pub mod watch;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, watch as signal};
use tokio::task::JoinSet;

pub use feed::{Backend, FeedTiming};
pub use gate::SimulateGate;
pub use incidents::{Counters, Handled, Incident, Intake, Sink, Work};
pub use reload::{
    GateVerdict, NoGate, ReloadCounts, ReloadDiagnostic, ReloadGate, ReloadOutcome, ReloadReport, Reloader, SetDigests,
    SetDirs,
};
pub use replicas::{Replica, ReplicaSettings, ReplicaState};
pub use status::{DaemonStatus, STATUS_KEY};

use crate::execute::{ExecutionStatus, Mode, ResolveRuntime, RunnerSettings, execution_of, lease_is_live};
use crate::model::json::now_iso;
use crate::plan::RecoverySetError;
use crate::store::{Expected, Store, StoreError};

/// How `serve` runs.
#[derive(Clone)]
pub struct ServeOptions {
    pub dirs: SetDirs,
    pub mode: Mode,
    /// Incidents handled at once.
    pub workers: usize,
    /// Incidents claimed and waiting for a worker, at most.
    pub queue_capacity: usize,
    /// Who starts executions (approvers may not be this actor unless allowed).
    pub actor: String,
    pub settings: RunnerSettings,
    pub runtimes: Arc<dyn ResolveRuntime>,
    pub gate: Arc<dyn ReloadGate>,
    pub timing: Timing,
    /// Watch the playbook and policy directories (reloads also come from SIGHUP / the handle).
    pub watch_sets: bool,
    /// Leases, claims and housekeeping of replicas on a `postgres://` store (ignored elsewhere).
    pub replicas: ReplicaSettings,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("dirs", &self.dirs)
            .field("mode", &self.mode)
            .field("workers", &self.workers)
            .field("gate", &self.gate.name())
            .finish_non_exhaustive()
    }
}

/// Intervals and windows.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub feed: FeedTiming,
    /// Reload debounce window.
    pub reload_debounce: Duration,
    /// How often the status is rewritten when nothing happens.
    pub heartbeat: Duration,
    /// The least time between two status rewrites when things happen: a busy daemon rewrites
    /// it a few times a second, not once per incident (each rewrite is a commit to disk).
    pub status_spacing: Duration,
    /// How often waiting executions are checked for answers, expiry and due timers, and
    /// orphaned ones (their process died) are taken over.
    pub approvals_poll: Duration,
    /// How often the run of a handed-off execution is looked at.
    pub follow_up: Duration,
    /// How long running steps get to finish at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            feed: FeedTiming {
                poll: Duration::from_millis(250),
                resync: Duration::from_secs(30),
                debounce: Duration::from_millis(50),
            },
            reload_debounce: Duration::from_millis(50),
            heartbeat: Duration::from_secs(2),
            status_spacing: Duration::from_millis(200),
            approvals_poll: Duration::from_secs(1),
            follow_up: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Why `serve` could not start or stopped with an error.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ServeError {
    #[error("cannot start: {0}")]
    #[diagnostic(
        code(salvage::serve::sets),
        help("`salvage check` shows every problem; serve starts only from a clean set")
    )]
    Sets(#[source] RecoverySetError),

    #[error("another salvage serve (pid {pid} on {host}) is running on this store")]
    #[diagnostic(code(salvage::serve::already_running), help("`salvage status` shows it; stop it first"))]
    AlreadyRunning { pid: u32, host: String },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),
}

impl ServeError {
    pub fn diagnostics(&self) -> &[crate::playbook::Diagnostic] {
        match self {
            ServeError::Sets(error) => error.diagnostics(),
            _ => &[],
        }
    }
}

/// What a run of the daemon did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeSummary {
    pub handled: u64,
    /// Tasks still running when the shutdown grace ran out (their journals say where they were).
    pub abandoned_tasks: usize,
}

/// Controls a running daemon from another task (signal handlers, tests).
#[derive(Clone)]
pub struct DaemonHandle {
    stop_tx: Arc<signal::Sender<bool>>,
    stop_flag: Arc<AtomicBool>,
    reloader: Arc<Reloader>,
    status_changed: Arc<Notify>,
    counters: Arc<Counters>,
}

impl DaemonHandle {
    /// Stop taking incidents; let running steps finish; exit.
    pub fn stop(&self) {
        self.stop_flag.store(true, Ordering::SeqCst);
        let _ = self.stop_tx.send(true);
    }

    /// Reload the sets now (SIGHUP).
    pub async fn reload(&self, trigger: &str) -> ReloadReport {
        let report = self.reloader.reload(trigger).await;
        self.status_changed.notify_one();
        report
    }

    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// The incidents handled so far, as the status file's `incidents` counts them (`planned`
    /// counts an incident once its plan and dry run are recorded).
    pub fn incidents(&self) -> serde_json::Value {
        self.counters.snapshot()
    }
}

/// The daemon, started (set loaded, store open) but not yet running.
pub struct Daemon {
    backend: Backend,
    store: Arc<dyn Store>,
    options: ServeOptions,
    reloader: Arc<Reloader>,
    handle: DaemonHandle,
    counters: Arc<Counters>,
    started_at: String,
    /// On a shared (`postgres://`) store: this process as one replica among several.
    replica: Option<Arc<Replica>>,
    /// The approvals the clocks saw waiting (for the approval wait metric).
    approvals: metrics::ApprovalWatch,
}

impl Daemon {
    /// Loads the sets (they must be clean) and checks that no other daemon serves the store
    /// (on a `postgres://` store, several replicas share it instead).
    pub async fn start(backend: Backend, options: ServeOptions) -> Result<Daemon, ServeError> {
        let store = backend.store();
        let replica = match &backend {
            Backend::Postgres(shared) => Some(Replica::new(shared.clone(), options.replicas)),
            _ => None,
        };
        if replica.is_none()
            && let Some(previous) = status::read(store.as_ref()).await?
            && previous.alive()
            && !(previous.pid == std::process::id() && previous.host == status::hostname())
        {
            return Err(ServeError::AlreadyRunning { pid: previous.pid, host: previous.host });
        }
        // The set on disk is gated against the last applied one (recorded in the store).
        let reloader = Arc::new(
            Reloader::start_recorded(options.dirs.clone(), options.gate.clone(), store.clone())
                .await
                .map_err(ServeError::Sets)?,
        );
        let (stop_tx, _) = signal::channel(false);
        let handle = DaemonHandle {
            stop_tx: Arc::new(stop_tx),
            stop_flag: Arc::new(AtomicBool::new(false)),
            reloader: reloader.clone(),
            status_changed: Arc::new(Notify::new()),
            counters: Arc::new(Counters::default()),
        };
        Ok(Daemon {
            backend,
            store,
            options,
            reloader,
            counters: handle.counters.clone(),
            handle,
            started_at: now_iso(),
            replica,
            approvals: metrics::ApprovalWatch::default(),
        })
    }

    pub fn handle(&self) -> DaemonHandle {
        self.handle.clone()
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// On a shared store, this replica's id.
    pub fn replica_id(&self) -> Option<&str> {
        self.replica.as_ref().map(|replica| replica.id.as_str())
    }

    fn status(&self, queued: usize, stopped: bool) -> DaemonStatus {
        let active = self.reloader.current();
        let last = self.reloader.last_report();
        let active_since = self.reloader.active_since();
        crate::telemetry::active_set(active.policies.digest(), active.playbooks.digest());
        let mut incidents = self.counters.snapshot();
        incidents["queued"] = serde_json::json!(queued);
        DaemonStatus {
            pid: std::process::id(),
            host: status::hostname(),
            started_at: self.started_at.clone(),
            heartbeat_at: now_iso(),
            stopped_at: stopped.then(now_iso),
            mode: self.options.mode,
            store: self.store.spec(),
            playbooks_dir: absolute(&self.options.dirs.playbooks),
            policies_dir: absolute(&self.options.dirs.policies),
            workers: self.options.workers,
            reload_gate: self.reloader.gate_name().to_owned(),
            active: SetDigests::of(&active),
            active_since,
            last_reload: last,
            reloads: self.reloader.counts(),
            incidents,
            heartbeat_seconds: self.options.timing.heartbeat.as_secs().max(1),
            replica: self.replica.as_ref().map(|replica| replica.state()),
            awaiting_acceptance: self.reloader.awaiting(),
        }
    }

    /// The status document: `serve/status`, or one per replica on a shared store.
    async fn write_status(&self, queued: usize, stopped: bool) {
        let body = serde_json::to_value(self.status(queued, stopped)).unwrap_or_default();
        let key = match &self.replica {
            Some(replica) => replicas::status_key(&replica.id),
            None => STATUS_KEY.to_owned(),
        };
        if let Err(error) = self.store.put_state(&key, &body, Expected::Any).await {
            tracing::warn!(%error, "Cannot write the status.");
        }
    }

    /// Rewrites the status after changes (at most every `status_spacing`) and at least every
    /// heartbeat, until `stop`.
    fn spawn_status_writer(
        self: &Arc<Self>,
        background: &mut JoinSet<()>,
        queued: impl Fn() -> usize + Send + 'static,
        mut stop: signal::Receiver<bool>,
    ) {
        let this = self.clone();
        background.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    () = this.handle.status_changed.notified() => {}
                    () = tokio::time::sleep(this.options.timing.heartbeat) => {}
                }
                this.write_status(queued(), false).await;
                // Changes meanwhile leave the notification's permit: written after the pause.
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(this.options.timing.status_spacing) => {}
                }
            }
        });
    }

    /// Hot reload from the directory watcher, when the daemon watches its sets.
    fn spawn_set_watcher(self: &Arc<Self>, background: &mut JoinSet<()>, stop: signal::Receiver<bool>) {
        if !self.options.watch_sets {
            return;
        }
        let (tx, mut rx) = mpsc::channel(16);
        let dirs = vec![self.options.dirs.playbooks.clone(), self.options.dirs.policies.clone()];
        let watcher = watch::spawn(dirs, true, self.options.timing.reload_debounce, tx, stop);
        let handle = self.handle.clone();
        background.spawn(async move {
            while let Some(signal) = rx.recv().await {
                let mut trigger = match signal {
                    watch::WatchSignal::Changed(_) => "watch",
                    watch::WatchSignal::Rescan { .. } => "watcher-recovered",
                };
                // Changes that piled up during the last reload are all covered by one more.
                while let Ok(more) = rx.try_recv() {
                    if matches!(more, watch::WatchSignal::Rescan { .. }) {
                        trigger = "watcher-recovered";
                    }
                }
                handle.reload(trigger).await;
            }
            watcher.abort();
        });
    }

    /// What every worker of this daemon works with.
    fn handler(&self) -> incidents::Handler {
        incidents::Handler {
            store: self.store.clone(),
            reloader: self.reloader.clone(),
            runtimes: self.options.runtimes.clone(),
            settings: self.options.settings.clone(),
            mode: self.options.mode,
            actor: self.options.actor.clone(),
            stop: self.handle.stop_flag.clone(),
            counters: self.counters.clone(),
            status_changed: self.handle.status_changed.clone(),
            sets: Arc::new(Mutex::new(incidents::RecentSets::new())),
        }
    }

    /// Lets running tasks reach the end of their step, for at most the shutdown grace; returns
    /// how many were still running when it ran out.
    async fn drain(&self, tasks: &mut JoinSet<()>) -> usize {
        while tasks.try_join_next().is_some() {}
        tracing::info!(running = tasks.len(), "Stopping: letting the running incidents reach the end of their step.");
        let grace = tokio::time::sleep(self.options.timing.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = tasks.join_next() => if next.is_none() { return 0 },
                () = &mut grace => {
                    let abandoned = tasks.len();
                    tracing::warn!(abandoned, "Shutdown grace over; the journal keeps where they were.");
                    tasks.abort_all();
                    return abandoned;
                }
            }
        }
    }

    /// Serves until [`DaemonHandle::stop`].
    pub async fn run(self) -> Result<ServeSummary, ServeError> {
        if let Some(replica) = self.replica.clone() {
            return replicas::run(Arc::new(self), replica).await;
        }
        let this = Arc::new(self);
        let options = &this.options;
        let workers = options.workers.max(1);
        let (queue_tx, mut queue_rx) = mpsc::channel::<Work>(options.queue_capacity.max(1));
        let stop_rx = this.handle.stop_tx.subscribe();
        let queued = {
            let queue = queue_tx.clone();
            move || queue.max_capacity() - queue.capacity()
        };
        this.write_status(queued(), false).await;
        tracing::info!(
            mode = %options.mode, workers, store = %this.store.spec(),
            digest = %this.reloader.current().digest(), "salvage serve started."
        );

        let mut background = JoinSet::new();
        this.spawn_status_writer(&mut background, queued.clone(), stop_rx.clone());
        this.spawn_set_watcher(&mut background, stop_rx.clone());

        let handler = this.handler();
        let resuming: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
        let feed_failure: Arc<Mutex<Option<StoreError>>> = Arc::new(Mutex::new(None));
        let intake = Arc::new(Intake::new(this.store.clone(), queue_tx.clone(), this.counters.clone()));

        // The feed: first what a previous run left, then new incidents.
        {
            let this = this.clone();
            let intake = intake.clone();
            let queue = queue_tx.clone();
            let resuming = resuming.clone();
            let stop = stop_rx.clone();
            let feed_failure = feed_failure.clone();
            background.spawn(async move {
                let result = async {
                    this.recover(&intake, &queue, &resuming).await?;
                    feed::run(this.backend.clone(), intake, this.options.timing.feed, stop).await
                }
                .await;
                if let Err(error) = result {
                    tracing::error!(%error, "The incident feed stopped; stopping the daemon.");
                    *feed_failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
                    this.handle.stop();
                }
            });
        }
        // The daemon's clocks: approvals answered from other processes or expired, parked
        // executions whose time has come, handed-off ones to follow up, orphaned ones.
        if options.mode == Mode::Enforce {
            let this = this.clone();
            let queue = queue_tx.clone();
            let resuming = resuming.clone();
            let intake = intake.clone();
            let mut stop = stop_rx.clone();
            background.spawn(async move {
                let mut open = HashSet::new();
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        () = tokio::time::sleep(this.options.timing.approvals_poll) => {}
                    }
                    match this.tick(&queue, &resuming).await {
                        Ok(now_open) => intake.reconsider_ended(&mut open, now_open).await,
                        Err(error) => tracing::warn!(%error, "Cannot check the waiting executions."),
                    }
                }
            });
        }

        // The workers.
        let permits = Arc::new(Semaphore::new(workers));
        let mut tasks = JoinSet::new();
        let mut stop = stop_rx.clone();
        loop {
            while tasks.try_join_next().is_some() {}
            let work = tokio::select! {
                _ = stop.changed() => break,
                work = queue_rx.recv() => work,
            };
            let Some(work) = work else { break };
            crate::telemetry::queue_depth(queued());
            let permit = tokio::select! {
                _ = stop.changed() => break,
                permit = permits.clone().acquire_owned() => permit,
            };
            let Ok(permit) = permit else { break };
            let handler = handler.clone();
            let resuming = resuming.clone();
            let intake = intake.clone();
            tasks.spawn(async move {
                let mut family_of = match &work {
                    Work::Incident(_) => None,
                    Work::Resume { execution_id, .. } | Work::FollowUp { execution_id, .. } => {
                        Some(execution_id.clone())
                    }
                };
                match work {
                    Work::Incident(incident) => {
                        // The execution the incident record names now.
                        if let Handled::Done { execution_id } = isolate::handle(&handler, incident).await {
                            family_of = execution_id;
                        }
                    }
                    Work::Resume { execution_id, digests } => {
                        // One that cannot be resumed stays marked, so it is not retried forever.
                        if isolate::resumed(&execution_id, handler.resume(&execution_id, &digests)).await {
                            resuming.lock().unwrap_or_else(PoisonError::into_inner).remove(&execution_id);
                        }
                    }
                    Work::FollowUp { execution_id, digests } => {
                        if isolate::resumed(&execution_id, handler.follow_up(&execution_id, &digests)).await {
                            resuming.lock().unwrap_or_else(PoisonError::into_inner).remove(&execution_id);
                        }
                    }
                }
                // An execution that ended releases its family's changes set aside meanwhile.
                if let Some(execution_id) = family_of
                    && let Err(error) = intake.reconsider_family(&execution_id).await
                {
                    tracing::warn!(execution = %execution_id, %error, "Cannot look again at the family of an ended execution.");
                }
                drop(permit);
            });
            if *stop.borrow() {
                break;
            }
        }

        // Shutdown: nothing new; running executions stop between steps.
        this.handle.stop();
        let abandoned = this.drain(&mut tasks).await;
        background.abort_all();
        while background.join_next().await.is_some() {}
        drop(queue_rx);
        this.write_status(queued(), true).await;
        let handled = this.counters.handled.load(Ordering::Relaxed);
        tracing::info!(handled, "salvage serve stopped.");
        if let Some(error) = feed_failure.lock().unwrap_or_else(PoisonError::into_inner).take() {
            return Err(ServeError::Store(error));
        }
        Ok(ServeSummary { handled, abandoned_tasks: abandoned })
    }

    /// After a restart: resume executions left running; queue again incidents claimed but not
    /// handled.
    async fn recover(
        &self,
        intake: &Intake,
        queue: &mpsc::Sender<Work>,
        resuming: &Mutex<HashSet<String>>,
    ) -> Result<(), StoreError> {
        if self.options.mode == Mode::Enforce {
            for stored in self.store.list_executions(Some(ExecutionStatus::Running.as_str())).await? {
                let Ok(execution) = execution_of(&stored.doc) else { continue };
                if execution.mode != Mode::Enforce {
                    continue;
                }
                let digests = SetDigests {
                    policy_digest: execution.policy_digest.clone(),
                    playbook_set_digest: execution.playbook_set_digest.clone(),
                };
                resuming.lock().unwrap_or_else(PoisonError::into_inner).insert(execution.execution_id.clone());
                tracing::info!(execution = %execution.execution_id, "Resuming an execution left in flight.");
                if queue.send(Work::Resume { execution_id: execution.execution_id, digests }).await.is_err() {
                    return Ok(());
                }
            }
        }
        let records = self.store.list_state(incidents::INCIDENT_PREFIX).await?;
        self.counters.handled.fetch_add(records.len() as u64, Ordering::Relaxed);
        for record in records {
            match record.body["state"].as_str() {
                Some("claimed") => {}
                Some("applying") => {
                    // Its execution exists: it was resumed above (or is waiting for a person).
                    if let Some(id) = record.body["executionId"].as_str()
                        && self.store.get_execution(id).await?.is_some()
                    {
                        continue;
                    }
                }
                _ => continue,
            }
            tracing::info!(key = %record.key, "Queueing again an incident claimed before the restart.");
            if !intake.requeue(&record).await {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The daemon's clocks, every `approvals_poll`: queues the resumption of executions whose
    /// approval was answered (by `salvage approve` in another process, whose own resume may have
    /// lost the race) or has expired, of parked executions whose timer is due, and of executions
    /// left `running` by a process that died (a killed `salvage apply`); queues a follow-up of
    /// handed-off executions every `follow_up`.
    /// Returns the executions open now (not finished), so that the caller notices those that end.
    async fn tick(
        &self,
        queue: &mpsc::Sender<Work>,
        resuming: &Mutex<HashSet<String>>,
    ) -> Result<HashSet<String>, StoreError> {
        let busy = |id: &str| resuming.lock().unwrap_or_else(PoisonError::into_inner).contains(id);
        // A process that died while running it (its lease is dead) left it behind.
        let orphaned =
            |execution: &crate::execute::Execution| execution.lease.as_ref().is_some_and(|l| !lease_is_live(l));
        let (due, open) = self.due_work(busy, orphaned).await?;
        for (work, _) in due {
            let (Work::Resume { execution_id, .. } | Work::FollowUp { execution_id, .. }) = &work else { continue };
            resuming.lock().unwrap_or_else(PoisonError::into_inner).insert(execution_id.clone());
            tracing::info!(execution = %execution_id, work = ?std::mem::discriminant(&work), "Taking up a waiting execution.");
            if queue.send(work).await.is_err() {
                return Ok(open);
            }
        }
        Ok(open)
    }

    /// What the daemon's clocks find due (with the run each execution recovers), and the
    /// executions open now. `busy`: already taken up; `orphaned`: a `running` execution nobody
    /// runs any more.
    async fn due_work(
        &self,
        busy: impl Fn(&str) -> bool,
        orphaned: impl Fn(&crate::execute::Execution) -> bool,
    ) -> Result<(Vec<(Work, String)>, HashSet<String>), StoreError> {
        let mut due = Vec::new();
        let mut open = HashSet::new();
        for status in [ExecutionStatus::WaitingForApproval, ExecutionStatus::Waiting, ExecutionStatus::Running] {
            let listed = self.store.list_executions(Some(status.as_str())).await?;
            crate::telemetry::executions_open(status.as_str(), listed.len());
            if status == ExecutionStatus::WaitingForApproval {
                self.measure_approvals(&listed).await;
            }
            for stored in listed {
                let Ok(execution) = execution_of(&stored.doc) else { continue };
                open.insert(execution.execution_id.clone());
                if execution.mode != Mode::Enforce || busy(&execution.execution_id) {
                    continue;
                }
                let wake = orphaned(&execution)
                    || match status {
                        ExecutionStatus::WaitingForApproval => {
                            let expired = execution
                                .pending_approval
                                .as_ref()
                                .and_then(|p| p.expires_at.as_deref())
                                .is_some_and(is_past);
                            expired || self.answered(&execution).await?
                        }
                        ExecutionStatus::Waiting => execution.wake_at.as_deref().is_none_or(is_past),
                        // Running with a live lease: some process (maybe this one) is on it.
                        _ => false,
                    };
                if wake {
                    let work = Work::Resume { digests: digests_of(&execution), execution_id: execution.execution_id };
                    due.push((work, execution.run_id));
                }
            }
        }
        let mut handed_off = Vec::new();
        for status in [ExecutionStatus::NeedsOperator, ExecutionStatus::HandedOff] {
            let listed = self.store.list_executions(Some(status.as_str())).await?;
            crate::telemetry::executions_open(status.as_str(), listed.len());
            open.extend(listed.iter().map(|stored| stored.doc.id.clone()));
            if status == ExecutionStatus::HandedOff {
                // Listed once a tick: the same listing says which are due a follow-up.
                handed_off = listed;
            }
        }
        for stored in handed_off {
            let Ok(execution) = execution_of(&stored.doc) else { continue };
            if execution.mode != Mode::Enforce || busy(&execution.execution_id) {
                continue;
            }
            let checked = execution.follow_up.as_ref().and_then(|f| crate::model::json::parse_iso(&f.checked_at));
            let interval = time::Duration::try_from(self.options.timing.follow_up).unwrap_or(time::Duration::SECOND);
            if checked.is_none_or(|at| at + interval <= time::OffsetDateTime::now_utc()) {
                let work = Work::FollowUp { digests: digests_of(&execution), execution_id: execution.execution_id };
                due.push((work, execution.run_id));
            }
        }
        Ok((due, open))
    }

    /// The approvals pending now, and how long each one that was answered since the last look
    /// waited (from its request to its answer, as the execution records them).
    async fn measure_approvals(&self, waiting: &[crate::store::StoredExecution]) {
        crate::telemetry::approvals_pending(waiting.len());
        let now = waiting
            .iter()
            .filter_map(|stored| execution_of(&stored.doc).ok())
            .filter_map(|e| e.pending_approval.map(|p| (e.execution_id, p.step_id, p.requested_at)))
            .collect();
        for (execution_id, step_id, asked) in self.approvals.observe(now) {
            let Ok(Some(stored)) = self.store.get_execution(&execution_id).await else { continue };
            let Ok(execution) = execution_of(&stored.doc) else { continue };
            // Not answered (abandoned, say): it did not wait for an answer.
            let Some(answer) = execution.answers.iter().rev().find(|a| a.step_id == step_id) else { continue };
            let parse = crate::model::json::parse_iso;
            if let (Some(asked), Some(answered)) = (parse(&asked), parse(&answer.at)) {
                let waited = Duration::try_from(answered - asked).unwrap_or_default();
                crate::telemetry::approval_waited(&answer.decision, waited);
            }
        }
    }

    /// Whether the last journal entry of an execution is an approval answer that moves it: not
    /// an approval already counted on the record towards a quorum still incomplete.
    async fn answered(&self, execution: &crate::execute::Execution) -> Result<bool, StoreError> {
        let journal = self.store.journal(&execution.execution_id).await?;
        Ok(journal
            .last()
            .and_then(|record| serde_json::from_value::<crate::execute::JournalEntry>(record.body.clone()).ok())
            .is_some_and(|entry| match entry {
                crate::execute::JournalEntry::ApprovalAnswered { decision, actor, .. } => {
                    let counted = execution
                        .pending_approval
                        .as_ref()
                        .is_some_and(|p| p.still_needed() > 0 && p.approved_by.contains(&actor));
                    !(decision == "approved" && counted)
                }
                _ => false,
            }))
    }
}

fn digests_of(execution: &crate::execute::Execution) -> SetDigests {
    SetDigests {
        policy_digest: execution.policy_digest.clone(),
        playbook_set_digest: execution.playbook_set_digest.clone(),
    }
}

fn is_past(at: &str) -> bool {
    crate::model::json::parse_iso(at).is_some_and(|at| at <= time::OffsetDateTime::now_utc())
}

fn absolute(path: &std::path::Path) -> String {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}
