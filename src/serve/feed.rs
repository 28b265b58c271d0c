//! Finding new incidents without rescanning the store.
//!
//! - `sqlite:` follows the store's change cursor (`runs.change_seq`, indexed): each poll reads
//!   only the runs saved since the last one; the cursor is persisted (state `serve/cursor`)
//!   after the batch's incidents are claimed, so a restart neither skips nor rescans.
//! - `file:DIR` listens to filesystem events on DIR (a run file written, renamed in, replaced)
//!   and looks up only those runs; a periodic resync refreshes the store's index and lists the
//!   incident statuses through it, for events the watcher missed (other hosts on NFS, overflow).
//! - `postgres://` listens to the store's save notifications (`LISTEN`) and reads the change
//!   sequence (indexed) from its cursor after each one, after a reconnection, and every
//!   `resync` in any case — a missed notification delays an incident, never loses it. Every
//!   replica follows the feed and offers what it finds; offering is idempotent, so replicas
//!   need not agree on a cursor (each persists the one it reached: any of them is safe, since
//!   everything before it was offered).
//! - `memory:` (tests) polls the listing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::incidents::{CLAIM_BATCH, Intake};
use super::watch::{self as dir_watch, WatchSignal};
use crate::model::RunStatus;
use crate::store::{
    Expected, FileStore, ListenEvent, MemoryStore, PostgresStore, Revision, RunChange, RunQuery, RunStore, SqliteStore,
    StateStore, Store, StoreError, StoreSpec,
};

/// The state key of the SQLite change cursor.
pub const CURSOR_KEY: &str = "serve/cursor";

/// How many changes one cursor poll reads.
const CHANGE_BATCH: usize = 512;

/// The store `serve` watches, with the backend-specific way of following it.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite(Arc<SqliteStore>),
    File(Arc<FileStore>),
    Memory(Arc<MemoryStore>),
    /// Shared by several replicas.
    Postgres(Arc<PostgresStore>),
}

impl Backend {
    pub async fn open(spec: &StoreSpec) -> Result<Backend, StoreError> {
        Ok(match spec {
            StoreSpec::Memory => Backend::Memory(Arc::new(MemoryStore::new())),
            StoreSpec::File(dir) => Backend::File(Arc::new(FileStore::open(dir.clone()).await?)),
            StoreSpec::Sqlite(path) => Backend::Sqlite(Arc::new(SqliteStore::open(path.clone()).await?)),
            StoreSpec::Postgres(url) => Backend::Postgres(Arc::new(PostgresStore::open(url).await?)),
        })
    }

    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(store) => store.clone(),
            Backend::File(store) => store.clone(),
            Backend::Memory(store) => store.clone(),
            Backend::Postgres(store) => store.clone(),
        }
    }
}

/// The statuses that make a run an incident.
pub fn is_incident(status: &RunStatus) -> bool {
    matches!(status, RunStatus::Failed | RunStatus::WaitingForApproval | RunStatus::Paused)
}

const INCIDENT_STATUSES: [RunStatus; 3] = [RunStatus::Failed, RunStatus::WaitingForApproval, RunStatus::Paused];

/// How the feed polls and resyncs.
#[derive(Debug, Clone, Copy)]
pub struct FeedTiming {
    /// Cursor / listing poll interval when nothing changed.
    pub poll: Duration,
    /// File store: full resync through the index.
    pub resync: Duration,
    /// File store: debounce window of the directory watcher.
    pub debounce: Duration,
}

/// Feeds incidents to `intake` until `stop`.
pub async fn run(
    backend: Backend,
    intake: Arc<Intake>,
    timing: FeedTiming,
    stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    match backend {
        Backend::Sqlite(store) => follow_cursor(store, intake, timing, stop).await,
        Backend::File(store) => follow_directory(store, intake, timing, stop).await,
        Backend::Memory(store) => poll_listing(store, intake, timing, stop).await,
        Backend::Postgres(store) => follow_notifications(store, intake, timing, stop).await,
    }
}

/// Sleeps for `duration`; `true` when asked to stop meanwhile.
async fn pause(stop: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = stop.changed() => true,
        () = tokio::time::sleep(duration) => *stop.borrow(),
    }
}

async fn follow_cursor(
    store: Arc<SqliteStore>,
    intake: Arc<Intake>,
    timing: FeedTiming,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let saved = store.get_state(CURSOR_KEY).await?;
    let mut cursor = saved.as_ref().and_then(|s| s.body["changeSeq"].as_u64()).unwrap_or(0);
    let mut cursor_revision = saved.map(|s| s.revision);
    tracing::info!(cursor, "Following the SQLite change cursor.");
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let changes = store.changes_since(cursor, CHANGE_BATCH).await?;
        let Some(last) = changes.last().map(|c| c.change_seq) else {
            if pause(&mut stop, timing.poll).await {
                return Ok(());
            }
            continue;
        };
        if !consider_changes(&intake, &changes, &mut cursor, &stop).await? {
            // The cursor stays before the changes not yet looked at.
            return Ok(());
        }
        debug_assert_eq!(cursor, last);
        let expected = cursor_revision.map_or(Expected::Absent, Expected::Revision);
        cursor_revision = Some(store.put_state(CURSOR_KEY, &json!({"changeSeq": cursor}), expected).await?);
    }
}

async fn follow_notifications(
    store: Arc<PostgresStore>,
    intake: Arc<Intake>,
    timing: FeedTiming,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    // Listening first, then reading from the cursor: nothing committed in between is missed.
    let mut listener = store.listen().await?;
    let mut cursor = store.get_state(CURSOR_KEY).await?.and_then(|saved| saved.body["changeSeq"].as_u64()).unwrap_or(0);
    tracing::info!(cursor, channel = listener.channel(), "Following the PostgreSQL change sequence.");
    loop {
        let reached = catch_up(&store, &intake, cursor, &stop).await?;
        if reached > cursor {
            cursor = reached;
            // Any replica's cursor is a safe start: everything before it was offered.
            store.put_state(CURSOR_KEY, &json!({"changeSeq": cursor}), Expected::Any).await?;
        }
        if *stop.borrow() {
            return Ok(());
        }
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            () = tokio::time::sleep(timing.resync) => {}
            event = listener.next() => match event {
                // Announced changes up to one already read need no read.
                Some(ListenEvent::Changed(seq)) if seq <= cursor => {}
                Some(ListenEvent::Changed(_) | ListenEvent::Reconnected) => {}
                Some(ListenEvent::Lost { error }) => {
                    tracing::warn!(%error, "Lost the notification connection; reading the change sequence until it is back.");
                }
                None => {
                    tracing::warn!("The notification listener ended; listening again.");
                    listener = store.listen().await?;
                }
            },
        }
    }
}

/// Hands the incidents among `changes` to `intake`, moving `cursor` past each change looked
/// at; `false` when stopped before the end.
async fn consider_changes(
    intake: &Intake,
    changes: &[RunChange],
    cursor: &mut u64,
    stop: &watch::Receiver<bool>,
) -> Result<bool, StoreError> {
    // A stretch of changes at a time, no longer than one batch of claims: its incidents are
    // claimed together, and the cursor moves past the stretch once they are.
    for stretch in changes.chunks(CLAIM_BATCH) {
        if *stop.borrow() {
            return Ok(false);
        }
        let incidents: Vec<(String, Option<Revision>)> = stretch
            .iter()
            .filter(|change| is_incident(&change.entry.status))
            .map(|change| (change.entry.id.clone(), Some(change.entry.revision)))
            .collect();
        intake.consider_many(&incidents).await?;
        if let Some(last) = stretch.last() {
            *cursor = last.change_seq;
        }
    }
    Ok(true)
}

/// Offers every incident saved after `cursor`; returns the cursor reached.
async fn catch_up(
    store: &PostgresStore,
    intake: &Intake,
    mut cursor: u64,
    stop: &watch::Receiver<bool>,
) -> Result<u64, StoreError> {
    loop {
        let changes: Vec<RunChange> = store.changes_since(cursor, CHANGE_BATCH).await?;
        let full = changes.len() == CHANGE_BATCH;
        if !consider_changes(intake, &changes, &mut cursor, stop).await? || !full {
            return Ok(cursor);
        }
    }
}

async fn follow_directory(
    store: Arc<FileStore>,
    intake: Arc<Intake>,
    timing: FeedTiming,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let (tx, mut events) = mpsc::channel(64);
    let watcher = dir_watch::spawn(vec![store.dir().to_path_buf()], false, timing.debounce, tx, stop.clone());
    let dir = std::path::absolute(store.dir()).unwrap_or_else(|_| store.dir().to_path_buf());
    let result = async {
        resync(&store, &intake).await?;
        let mut next_resync = tokio::time::Instant::now() + timing.resync;
        loop {
            let signal = tokio::select! {
                _ = stop.changed() => return Ok(()),
                () = tokio::time::sleep_until(next_resync) => None,
                signal = events.recv() => signal,
            };
            if *stop.borrow() {
                return Ok(());
            }
            match signal {
                Some(WatchSignal::Changed(paths)) => {
                    for run_id in run_ids(&dir, &paths) {
                        intake.consider(&run_id, None).await?;
                    }
                }
                Some(WatchSignal::Rescan { .. }) | None => {
                    resync(&store, &intake).await?;
                    next_resync = tokio::time::Instant::now() + timing.resync;
                }
            }
        }
    }
    .await;
    watcher.abort();
    result
}

/// The run ids of changed `<id>.json` files directly in the store directory.
fn run_ids(dir: &std::path::Path, paths: &[PathBuf]) -> Vec<String> {
    let mut ids: Vec<String> = paths
        .iter()
        .filter(|p| p.parent() == Some(dir))
        .filter_map(|p| p.file_name()?.to_str()?.strip_suffix(".json").map(str::to_owned))
        .filter(|id| !id.starts_with('.'))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

async fn resync(store: &FileStore, intake: &Intake) -> Result<(), StoreError> {
    let stats = store.refresh().await?;
    tracing::debug!(?stats, "Resynced the file store index.");
    for status in INCIDENT_STATUSES {
        let listed = store.list(&RunQuery::with_status(status)).await?;
        for problem in &listed.problems {
            tracing::warn!(error = %problem.error, "A run record cannot be read.");
        }
        for entry in listed.items {
            intake.consider(&entry.id, Some(entry.revision)).await?;
        }
    }
    Ok(())
}

async fn poll_listing(
    store: Arc<MemoryStore>,
    intake: Arc<Intake>,
    timing: FeedTiming,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    loop {
        for status in INCIDENT_STATUSES {
            for entry in store.list(&RunQuery::with_status(status)).await?.items {
                intake.consider(&entry.id, Some(entry.revision)).await?;
            }
        }
        if pause(&mut stop, timing.poll).await {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::incidents::{Counters, Work};

    const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
    const HEALTHY_INVOICE: &str = "08f02c15-b89c-5381-9129-2b27974351a8";

    fn example(run_id: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/runs/{run_id}.json"));
        std::fs::read(path).expect("example run")
    }

    /// What the periodic resync is for: a run file another process wrote while no event
    /// reached the daemon is found through the index, once.
    #[tokio::test]
    async fn a_resync_finds_run_files_no_event_announced_and_queues_each_once() {
        let dir = tempfile::tempdir().expect("temp");
        let store = Arc::new(FileStore::open(dir.path()).await.expect("file store"));
        let (queue, mut queued) = mpsc::channel(16);
        let intake = Intake::new(store.clone() as Arc<dyn Store>, queue, Arc::new(Counters::default()));

        resync(&store, &intake).await.expect("resync of an empty store");
        assert!(queued.try_recv().is_err(), "nothing to do");

        // Written behind the store's back, as the runtime's own file store does.
        std::fs::write(dir.path().join(format!("{FAILED_INVOICE}.json")), example(FAILED_INVOICE)).expect("write");
        std::fs::write(dir.path().join(format!("{HEALTHY_INVOICE}.json")), example(HEALTHY_INVOICE)).expect("write");
        resync(&store, &intake).await.expect("resync");
        match queued.try_recv() {
            Ok(Work::Incident(incident)) => assert_eq!(incident.run_id, FAILED_INVOICE),
            other => panic!("expected the failed run, got {other:?}"),
        }
        assert!(queued.try_recv().is_err(), "the completed run is not an incident");

        resync(&store, &intake).await.expect("resync again");
        assert!(queued.try_recv().is_err(), "an incident is queued once");
    }
}
