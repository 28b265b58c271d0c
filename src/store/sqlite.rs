//! `sqlite:PATH` — the embedded default store.
//!
//! One `runs` table: the record as JSON (`body`) next to the indexed columns every lookup
//! needs (root, parent, status, creation time), a per-run `revision` (1, 2, ... one per save)
//! and a store-wide `change_seq` (a later daemon follows "what changed since" through it).
//! Recovery executions live beside them (schema version 2): `executions` (the runner's
//! document, its indexed fields and a revision counted like the runs') and `journal` (one row
//! per entry, keyed by `(execution_id, seq)`). Each run's [`TreeLeaf`] lives in `tree_leaves`
//! (schema version 4), written in the same transaction as the run, so that the whole-store
//! forest reads no record.
//!
//! SQLite is synchronous. Calls take a connection from a small pool: lookups by key run on
//! the calling thread (they take microseconds, less than a hand-off to another thread), the
//! rest on tokio's blocking pool. WAL lets readers run next to the single writer; writes take
//! `BEGIN IMMEDIATE`, and the compare-and-set check happens inside that transaction, so two
//! stores on the same file (two processes) serialise correctly. The writes of one process that
//! queue behind each other are committed together, each in its own savepoint ([`group`]).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::executions::{check_expected, check_next_seq, execution_text, journal_batch, journal_entry_text};
use super::migrate::{AppliedMigration, MigrationReport};
use super::sql::{self, Migration};
use super::state::{StateStore, StateWrite, StoredState, validate_state_key};
use super::{
    ExecutionDoc, ExecutionStore, Expected, ForestMark, ForestPlace, ForestScanPage, JournalRecord, LineageLink,
    ListingKey, ListingRange, ParentLink, Partial, Revision, RunIndexEntry, RunQuery, RunRecord, RunStore, StoreError,
    StoreProblem, StoredExecution, StoredRun, StreamOutcome, StreamedRun, StreamedRuns, breadth_first,
    check_run_expected, decode_run, document_text, families_in_order, kept_or_computed_leaves,
};
use crate::model::{Run, TreeLeaf};

mod group;

/// Connections kept per store; also the number of calls that run at once.
const POOL_SIZE: usize = 4;

/// Page cache per connection.
const CACHE_KIB: i64 = 16 * 1024;

/// `IN (...)` lists are cut to this many ids (SQLite's parameter limit is far above it).
const IN_CHUNK: usize = 500;

/// Families asked for per query (three parameters each).
const FAMILY_CHUNK: usize = 500;

/// The schema, one function per version. Adding a table later = appending a function.
const MIGRATIONS: &[Migration] = &[create_runs, create_executions, create_state, add_tree_leaves];

/// The schema version that added `executions` and `journal`.
const EXECUTIONS_VERSION: u32 = 2;

/// The schema version that added `state`.
const STATE_VERSION: u32 = 3;

/// The schema version that added the `tree_leaves` table.
const TREE_LEAF_SCHEMA: u32 = 4;

/// What each migration creates, for `salvage migrate` (same order as [`MIGRATIONS`]).
const MIGRATION_NAMES: [&str; 4] = ["runs", "executions", "state", "tree leaves"];

fn create_runs(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            root_run_id TEXT NOT NULL,
            parent_run_id TEXT,
            status TEXT NOT NULL,
            created_at TEXT,
            revision INTEGER NOT NULL,
            change_seq INTEGER NOT NULL,
            body TEXT NOT NULL
        );
        CREATE INDEX runs_by_root ON runs (root_run_id, created_at, id);
        CREATE INDEX runs_by_parent ON runs (parent_run_id, created_at, id);
        CREATE INDEX runs_by_status ON runs (status, created_at, id);
        CREATE INDEX runs_by_listing ON runs (created_at, id);
        CREATE UNIQUE INDEX runs_by_change ON runs (change_seq);",
    )
}

/// Version 2: recovery executions and their journals.
fn create_executions(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE executions (
            id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            plan_id TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            revision INTEGER NOT NULL,
            body TEXT NOT NULL
        );
        CREATE INDEX executions_by_status ON executions (status, created_at, id);
        CREATE INDEX executions_by_listing ON executions (created_at, id);
        CREATE INDEX executions_by_run ON executions (run_id, created_at, id);
        CREATE TABLE journal (
            execution_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (execution_id, seq)
        ) WITHOUT ROWID;",
    )
}

/// Version 3: state documents of long-running processes (`salvage serve`).
fn create_state(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE state (
            key TEXT PRIMARY KEY,
            revision INTEGER NOT NULL,
            body TEXT NOT NULL
        ) WITHOUT ROWID;",
    )
}

/// Version 4: each run's [`TreeLeaf`] (what the whole-store forest shows of it), written in
/// the same transaction as its record; filled here for the runs already stored. A table of its
/// own rather than a column of `runs`: a column after `body` sits behind the record's overflow
/// pages, which SQLite would read to reach it. A record that cannot be read gets no leaf
/// (reading it reports the problem, as before).
fn add_tree_leaves(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("CREATE TABLE tree_leaves (id TEXT PRIMARY KEY, leaf TEXT NOT NULL);")?;
    let mut select = tx.prepare("SELECT id, body FROM runs")?;
    let mut insert = tx.prepare("INSERT INTO tree_leaves (id, leaf) VALUES (?1, ?2)")?;
    let mut rows = select.query([])?;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let body = match row.get_ref(1)? {
            ValueRef::Text(bytes) | ValueRef::Blob(bytes) => bytes,
            _ => continue,
        };
        if let Ok(run) = decode_run(&id, body) {
            insert.execute(params![id, TreeLeaf::of(&run).encode()])?;
        }
    }
    Ok(())
}

/// A run's index entry together with the change number of its last save.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunChange {
    pub change_seq: u64,
    pub entry: RunIndexEntry,
}

/// Runs in one SQLite database file.
pub struct SqliteStore {
    path: PathBuf,
    pool: Arc<ConnectionPool>,
    /// Writers of this process queue here rather than in SQLite's busy handler (which polls);
    /// whoever holds it commits every write queued by then in one transaction ([`group`]).
    write_lock: tokio::sync::Mutex<()>,
    /// The writes waiting for the write lock.
    queued: group::WriteQueue,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

struct ConnectionPool {
    path: PathBuf,
    location: String,
    /// Connections open with `SQLITE_OPEN_READ_ONLY` and `query_only`.
    read_only: bool,
    /// The schema version found when the store was opened: a read-only store does not migrate,
    /// so tables of later versions may be missing (and read as empty).
    schema_version: std::sync::atomic::AtomicU32,
    idle: Mutex<Vec<Connection>>,
    permits: tokio::sync::Semaphore,
}

/// The columns of `runs` that make a database salvage's (see [`sql::identify`]).
const RUNS_COLUMNS: &[&str] = &["id", "root_run_id", "parent_run_id", "status", "created_at", "revision", "body"];

impl ConnectionPool {
    fn open_connection(&self) -> Result<Connection, StoreError> {
        let db = |e: rusqlite::Error| sql::database_error(&self.location, &e);
        if self.read_only {
            use rusqlite::OpenFlags;
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(&self.path, flags).map_err(db)?;
            sql::configure_read_only(&conn, CACHE_KIB).map_err(db)?;
            return Ok(conn);
        }
        let conn = Connection::open(&self.path).map_err(db)?;
        sql::configure(&conn, "FULL", CACHE_KIB).map_err(db)?;
        Ok(conn)
    }

    fn schema_version(&self) -> u32 {
        self.schema_version.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Refuses a database that is not salvage's, before anything is written to it.
    fn check_identity(&self, conn: &Connection) -> Result<sql::Identity, StoreError> {
        let identity =
            sql::identify(conn, "runs", RUNS_COLUMNS).map_err(|e| sql::database_error(&self.location, &e))?;
        if let sql::Identity::Foreign(reason) = identity {
            return Err(StoreError::ForeignDatabase { location: self.location.clone(), reason });
        }
        Ok(identity)
    }

    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self.open_connection(),
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < POOL_SIZE {
            idle.push(conn);
        }
    }
}

/// A record read back from `body` plus its revision.
struct StoredBody {
    id: String,
    body: Vec<u8>,
    revision: u64,
}

impl SqliteStore {
    /// Opens the database at `path`, creating it (and its parent directory) when missing and
    /// bringing its schema up to date. A database that is not salvage's is refused
    /// ([`StoreError::ForeignDatabase`]) before anything is written to it.
    pub async fn open(path: impl Into<PathBuf>) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, false).await
    }

    /// Opens an existing database for reading only: `SQLITE_OPEN_READ_ONLY` and `query_only`
    /// connections, no `journal_mode` change, no migration, no lock (WAL readers need none, so
    /// a writer in another process does not make a read wait). A database that is not
    /// salvage's is refused; tables a later schema version adds read as empty.
    pub async fn open_read_only(path: impl Into<PathBuf>) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, true).await
    }

    async fn open_with(path: impl Into<PathBuf>, read_only: bool) -> Result<SqliteStore, StoreError> {
        let path: PathBuf = path.into();
        let location = format!("sqlite:{}", path.display());
        let pool = Arc::new(ConnectionPool {
            path: path.clone(),
            location: location.clone(),
            read_only,
            schema_version: std::sync::atomic::AtomicU32::new(0),
            idle: Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(POOL_SIZE),
        });
        let setup = pool.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            if !read_only && let Some(parent) = setup.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|source| StoreError::Io { location: parent.display().to_string(), source })?;
            }
            // Identified before anything else: configuring a read-write connection switches the
            // database to WAL, which must not happen to someone else's file.
            let identity = {
                let plain = if read_only {
                    setup.open_connection()?
                } else {
                    Connection::open(&setup.path).map_err(|e| sql::database_error(&setup.location, &e))?
                };
                plain.busy_timeout(sql::BUSY_TIMEOUT).map_err(|e| sql::database_error(&setup.location, &e))?;
                setup.check_identity(&plain)?
            };
            let mut conn = setup.open_connection()?;
            let version = if read_only {
                let version = match identity {
                    sql::Identity::Salvage { version } => version,
                    _ => {
                        return Err(StoreError::ForeignDatabase {
                            location: setup.location.clone(),
                            reason: "it is empty: no salvage schema".into(),
                        });
                    }
                };
                let known = u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX);
                if version > known {
                    return Err(sql::MigrateError::TooNew { found: version, known }.into_store_error(&setup.location));
                }
                version
            } else {
                let version = sql::migrate(&mut conn, MIGRATIONS).map_err(|e| e.into_store_error(&setup.location))?;
                mark_as_salvage(&conn).map_err(|e| sql::database_error(&setup.location, &e))?;
                version
            };
            setup.schema_version.store(version, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(store = %setup.location, schema_version = version, read_only, "opened sqlite store");
            setup.give_back(conn);
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(SqliteStore { path, pool, write_lock: tokio::sync::Mutex::new(()), queued: group::WriteQueue::default() })
    }

    /// Whether the store was opened with [`SqliteStore::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.pool.read_only
    }

    /// Fails with [`StoreError::ReadOnly`] on a read-only store, before SQLite would.
    fn writable(&self) -> Result<(), StoreError> {
        if self.pool.read_only {
            return Err(StoreError::ReadOnly { spec: self.location().to_owned() });
        }
        Ok(())
    }

    /// Whether the schema has the tables of `version` (a read-only store of an older database
    /// may not).
    fn has_schema(&self, version: u32) -> bool {
        self.pool.schema_version() >= version
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn location(&self) -> &str {
        &self.pool.location
    }

    /// Runs a lookup by key on the calling thread with a pooled connection. It reads a few
    /// B-tree pages (and decodes one record at most), which takes less time than handing it to
    /// the blocking pool and waking the caller again: two thread switches each way, about a
    /// sixth of a daemon's time when every lookup went there (issue 13). Only lookups bounded by
    /// the key asked for come here (a state, an execution, one run, one family's index rows or
    /// leaves); scans, lists of many ids and writes go to the blocking pool. Readers of a WAL
    /// database do not wait for writers (only, rarely, for another process recovering the WAL
    /// index after a crash, within the busy timeout).
    async fn lookup<T>(
        &self,
        work: impl FnOnce(&mut Connection, &str) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _permit = self.pool.permits.acquire().await.map_err(|e| StoreError::Task(e.to_string()))?;
        let mut conn = self.pool.take()?;
        let result = work(&mut conn, &self.pool.location);
        self.pool.give_back(conn);
        result
    }

    /// Runs `work` on the blocking pool with a pooled connection.
    async fn with_connection<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &str) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self.pool.permits.acquire().await.map_err(|e| StoreError::Task(e.to_string()))?;
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.take()?;
            let result = work(&mut conn, &pool.location);
            // A failed transaction was rolled back when it was dropped; the connection is fine.
            pool.give_back(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs saved after `cursor` (a `change_seq` from an earlier call, 0 for all), oldest
    /// change first, at most `limit`. A run saved several times appears once, with its last
    /// change. Feed the last `change_seq` back in as the next cursor.
    pub async fn changes_since(&self, cursor: u64, limit: usize) -> Result<Vec<RunChange>, StoreError> {
        let cursor = i64::try_from(cursor).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_connection(move |conn, location| {
            let db = |e: rusqlite::Error| sql::database_error(location, &e);
            let mut statement = conn
                .prepare_cached(&format!(
                    "SELECT change_seq, {} FROM runs WHERE change_seq > ?1 ORDER BY change_seq LIMIT ?2",
                    sql::ENTRY_COLUMNS
                ))
                .map_err(db)?;
            let mut rows = statement.query(params![cursor, limit]).map_err(db)?;
            let mut changes = Vec::new();
            while let Some(row) = rows.next().map_err(db)? {
                let change_seq: i64 = row.get(0).map_err(db)?;
                let entry = sql::entry_from_row(row, 1)
                    .map_err(|message| StoreError::Database { location: location.to_owned(), message })?;
                changes.push(RunChange { change_seq: u64::try_from(change_seq).unwrap_or(0), entry });
            }
            Ok(changes)
        })
        .await
    }

    async fn write(&self, prepared: Vec<RunRecord>, expected: Expected) -> Result<Vec<Revision>, StoreError> {
        self.write_grouped(move |tx, location| write_runs(tx, location, &prepared, expected)).await
    }

    /// Runs `work` in the transaction of its write group ([`group`]) and returns its result
    /// once the group is committed: `work`'s error when it failed (its writes alone are rolled
    /// back), the group's when the transaction failed (nothing of it was written).
    async fn write_grouped<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &str) -> Result<T, StoreError> + Send + 'static,
    {
        self.writable()?;
        let mut outcome = self.queued.push(work);
        let _writer = self.write_lock.lock().await;
        loop {
            match outcome.try_recv() {
                Ok(result) => return result,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => return Err(group::lost()),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            }
            // The earlier writers' groups were committed by now; this one is among the next.
            let next = self.queued.take();
            if next.is_empty() {
                break;
            }
            self.commit_group(next).await;
        }
        // A writer that gave up while committing took this write with its group; the blocking
        // thread it left behind still answers.
        outcome.await.unwrap_or_else(|_| Err(group::lost()))
    }

    /// Commits one group on the blocking pool; every writer in it is answered there.
    async fn commit_group(&self, next: Vec<Box<dyn group::GroupedWrite>>) {
        let Ok(_permit) = self.pool.permits.acquire().await else {
            let failure = group::GroupFailure::of(&StoreError::Task("the store is closed".into()), self.location());
            return group::fail_group(next, &failure);
        };
        let pool = self.pool.clone();
        let committed = tokio::task::spawn_blocking(move || match pool.take() {
            Ok(mut conn) => {
                group::commit_group(&mut conn, &pool.location, next);
                pool.give_back(conn);
            }
            Err(error) => group::fail_group(next, &group::GroupFailure::of(&error, &pool.location)),
        })
        .await;
        // A write that panicked dropped its group's answers: each writer reports its write lost.
        if let Err(error) = committed {
            tracing::error!(store = %self.location(), %error, "A group of writes failed; none was committed.");
        }
    }
}

/// Sets salvage's application id on a database that has none yet (a new one, or one created
/// before the id was set); a write, so only read-write stores do it.
fn mark_as_salvage(conn: &Connection) -> rusqlite::Result<()> {
    let application_id: i32 = conn.query_row("PRAGMA application_id", [], |row| row.get(0))?;
    if application_id == 0 {
        conn.pragma_update(None, "application_id", sql::APPLICATION_ID)?;
    }
    Ok(())
}

/// Checks every expectation against the store as it was before the batch, then writes the
/// batch, all in the caller's transaction (a write group's, see [`group`]).
fn write_runs(
    tx: &Transaction<'_>,
    location: &str,
    prepared: &[RunRecord],
    expected: Expected,
) -> Result<Vec<Revision>, StoreError> {
    for run in prepared {
        check_run_expected(&run.entry.id, expected, current_revision(tx, location, &run.entry.id)?)?;
    }
    let mut writer = RunWriter::start(tx, location)?;
    prepared.iter().map(|run| writer.write(tx, location, run)).collect()
}

/// [`RunStore::save_stream`] on SQLite: one `BEGIN IMMEDIATE` transaction, each run checked and
/// written as it comes (so memory holds about two chunks), committed on [`StreamedRuns::Commit`]
/// and rolled back (dropped) otherwise. SQLite spills the transaction's pages to the WAL file
/// once the page cache is full, so its size is bounded by the disk, not the memory.
///
/// Serialising the runs (their body, entry and leaf) is as much work as writing them, so a
/// thread of its own prepares the next chunk while this one writes the last: with the import's
/// reader, three threads keep two cores busy (issue 13).
fn write_stream(
    conn: &mut Connection,
    location: &str,
    incoming: tokio::sync::mpsc::Receiver<StreamedRuns>,
    expected: Expected,
) -> Result<StreamOutcome, StoreError> {
    let db = |e: rusqlite::Error| sql::database_error(location, &e);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
    let mut writer = RunWriter::start(&tx, location)?;
    let prepared = prepare_stream(incoming)?;
    let mut revisions = Vec::new();
    // Ends without `Commit` when the stream did (the transaction is dropped: rolled back).
    for chunk in prepared {
        let Some(chunk) = chunk? else {
            tx.commit().map_err(db)?;
            return Ok(StreamOutcome::Committed(revisions));
        };
        for run in chunk {
            check_run_expected(&run.entry.id, expected, current_revision(&tx, location, &run.entry.id)?)?;
            revisions.push(writer.write(&tx, location, &run)?);
        }
    }
    Ok(StreamOutcome::Abandoned)
}

/// A chunk of prepared runs, `None` for [`StreamedRuns::Commit`].
type PreparedChunk = Result<Option<Vec<RunRecord>>, StoreError>;

/// Prepares the chunks of `incoming` on a thread of its own, one chunk ahead of the caller.
/// The thread stops at the stream's end, at its first error, or as soon as the caller drops
/// the receiver (a failed write), and then drops `incoming`, which tells the sender.
fn prepare_stream(
    mut incoming: tokio::sync::mpsc::Receiver<StreamedRuns>,
) -> Result<std::sync::mpsc::Receiver<PreparedChunk>, StoreError> {
    let (prepared, receiver) = std::sync::mpsc::sync_channel::<PreparedChunk>(1);
    std::thread::Builder::new()
        .name("sqlite-prepare".into())
        .spawn(move || {
            while let Some(message) = incoming.blocking_recv() {
                let chunk = match message {
                    StreamedRuns::Runs(runs) => {
                        runs.into_iter().map(StreamedRun::into_record).collect::<Result<Vec<_>, _>>().map(Some)
                    }
                    StreamedRuns::Commit => Ok(None),
                };
                let last = !matches!(chunk, Ok(Some(_)));
                if prepared.send(chunk).is_err() || last {
                    return;
                }
            }
        })
        .map_err(|e| StoreError::Task(format!("cannot start the thread that prepares runs: {e}")))?;
    Ok(receiver)
}

fn current_revision(tx: &Transaction<'_>, location: &str, run_id: &str) -> Result<Option<Revision>, StoreError> {
    let mut current =
        tx.prepare_cached("SELECT revision FROM runs WHERE id = ?1").map_err(|e| sql::database_error(location, &e))?;
    let found: Option<i64> =
        current.query_row([run_id], |row| row.get(0)).optional().map_err(|e| sql::database_error(location, &e))?;
    Ok(found.map(|r| Revision(u64::try_from(r).unwrap_or(0))))
}

/// Writes runs inside a transaction, numbering their changes.
struct RunWriter {
    /// The store-wide change counter: the highest one plus one, inside the write lock. Runs
    /// are never deleted, so the maximum never goes back.
    change_seq: i64,
}

impl RunWriter {
    fn start(tx: &Transaction<'_>, location: &str) -> Result<RunWriter, StoreError> {
        let change_seq = tx
            .query_row("SELECT COALESCE(MAX(change_seq), 0) FROM runs", [], |row| row.get(0))
            .map_err(|e| sql::database_error(location, &e))?;
        Ok(RunWriter { change_seq })
    }

    fn write(&mut self, tx: &Transaction<'_>, location: &str, run: &RunRecord) -> Result<Revision, StoreError> {
        let db = |e: rusqlite::Error| sql::database_error(location, &e);
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO runs (id, root_run_id, parent_run_id, status, created_at, revision, change_seq, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET
                    root_run_id = excluded.root_run_id, parent_run_id = excluded.parent_run_id,
                    status = excluded.status, created_at = excluded.created_at,
                    revision = runs.revision + 1, change_seq = excluded.change_seq, body = excluded.body
                 RETURNING revision",
            )
            .map_err(db)?;
        let mut upsert_leaf = tx
            .prepare_cached(
                "INSERT INTO tree_leaves (id, leaf) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET leaf = excluded.leaf",
            )
            .map_err(db)?;
        self.change_seq += 1;
        let entry = &run.entry;
        let revision: i64 = upsert
            .query_row(
                params![
                    entry.id,
                    entry.root_run_id,
                    entry.parent_run_id,
                    entry.status.as_str(),
                    entry.created_at,
                    self.change_seq,
                    run.body
                ],
                |row| row.get(0),
            )
            .map_err(db)?;
        upsert_leaf.execute(params![entry.id, run.tree_leaf]).map_err(db)?;
        Ok(Revision(u64::try_from(revision).unwrap_or(0)))
    }
}

fn read_body(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredBody> {
    let body = match row.get_ref(1)? {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => bytes.to_vec(),
        _ => Vec::new(),
    };
    Ok(StoredBody { id: row.get(0)?, body, revision: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0) })
}

impl StoredBody {
    fn decode(&self, location: &str) -> Result<StoredRun, StoreError> {
        let run = decode_run(&format!("{location}#{}", self.id), &self.body)?;
        Ok(StoredRun { run, revision: Revision(self.revision) })
    }
}

#[async_trait]
impl RunStore for SqliteStore {
    fn spec(&self) -> String {
        self.location().to_owned()
    }

    async fn get(&self, run_id: &str) -> Result<Option<StoredRun>, StoreError> {
        self.lookup(|conn, location| {
            let db = |e: rusqlite::Error| sql::database_error(location, &e);
            let mut statement = conn.prepare_cached("SELECT id, body, revision FROM runs WHERE id = ?1").map_err(db)?;
            let stored = statement.query_row([run_id], read_body).optional().map_err(db)?;
            stored.map(|stored| stored.decode(location)).transpose()
        })
        .await
    }

    async fn get_many(&self, run_ids: &[String]) -> Result<Partial<StoredRun>, StoreError> {
        let run_ids = run_ids.to_vec();
        self.with_connection(move |conn, location| {
            let db = |e: rusqlite::Error| sql::database_error(location, &e);
            let mut found = std::collections::HashMap::new();
            for (chunk, placeholders) in sql::in_chunks(&run_ids, IN_CHUNK) {
                let mut statement = conn
                    .prepare(&format!("SELECT id, body, revision FROM runs WHERE id IN ({placeholders})"))
                    .map_err(db)?;
                let rows = statement.query_map(rusqlite::params_from_iter(chunk.iter()), read_body).map_err(db)?;
                for row in rows {
                    let stored = row.map_err(db)?;
                    found.insert(stored.id.clone(), stored);
                }
            }
            let mut out = Partial::default();
            for run_id in &run_ids {
                // Decoded per requested id, so an id asked for twice is served twice.
                let Some(stored) = found.get(run_id) else { continue };
                match stored.decode(location) {
                    Ok(run) => out.items.push(run),
                    Err(error) => out.problems.push(StoreProblem { run_id: Some(run_id.clone()), error }),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn tree_leaves(&self, run_ids: &[String]) -> Result<Partial<(String, TreeLeaf)>, StoreError> {
        let mut kept = std::collections::HashMap::with_capacity(run_ids.len());
        // An older database opened read-only has no leaves: they are computed from the records.
        if self.has_schema(TREE_LEAF_SCHEMA) {
            kept = self
                .lookup(|conn, location| {
                    let db = |e: rusqlite::Error| sql::database_error(location, &e);
                    for (chunk, placeholders) in sql::in_chunks(run_ids, IN_CHUNK) {
                        let mut statement = conn
                            .prepare_cached(&format!("SELECT id, leaf FROM tree_leaves WHERE id IN ({placeholders})"))
                            .map_err(db)?;
                        let mut rows = statement.query(rusqlite::params_from_iter(chunk)).map_err(db)?;
                        while let Some(row) = rows.next().map_err(db)? {
                            // A leaf of another salvage's version is computed again below.
                            if let ValueRef::Text(bytes) = row.get_ref(1).map_err(db)?
                                && let Some(leaf) = TreeLeaf::decode(bytes)
                            {
                                kept.insert(row.get(0).map_err(db)?, leaf);
                            }
                        }
                    }
                    Ok(kept)
                })
                .await?;
        }
        kept_or_computed_leaves(self, run_ids, kept).await
    }

    async fn save(&self, run: &Run, expected: Expected) -> Result<Revision, StoreError> {
        let prepared = vec![RunRecord::of(run)?];
        let revisions = self.write(prepared, expected).await?;
        revisions.into_iter().next().ok_or_else(|| StoreError::Task("save returned no revision".into()))
    }

    async fn save_all(&self, runs: &[Run], expected: Expected) -> Result<Vec<Revision>, StoreError> {
        let prepared = runs.iter().map(RunRecord::of).collect::<Result<Vec<_>, _>>()?;
        if prepared.is_empty() {
            return Ok(Vec::new());
        }
        self.write(prepared, expected).await
    }

    async fn save_stream(
        &self,
        incoming: tokio::sync::mpsc::Receiver<StreamedRuns>,
        expected: Expected,
    ) -> Result<StreamOutcome, StoreError> {
        self.writable()?;
        let _writer = self.write_lock.lock().await;
        self.with_connection(move |conn, location| write_stream(conn, location, incoming, expected)).await
    }

    async fn list(&self, query: &RunQuery) -> Result<Partial<RunIndexEntry>, StoreError> {
        let (statement_sql, values) = sql::list_sql("runs", query, None);
        self.with_connection(move |conn, location| {
            query_entries(conn, location, &statement_sql, &values).map(|mut partial| {
                // The query already orders; the sort keeps Rust's ordering authoritative
                // should a collation ever differ.
                partial.items.sort_by(RunIndexEntry::listing_order);
                partial
            })
        })
        .await
    }

    async fn subtree(&self, root_id: &str) -> Result<Partial<RunIndexEntry>, StoreError> {
        self.lookup(|conn, location| {
            let members = query_entries(conn, location, &sql::subtree_sql("runs", None), &[root_id.to_owned()])?;
            Ok(Partial { items: breadth_first(root_id, members.items), problems: members.problems })
        })
        .await
    }

    async fn list_ids(&self, run_ids: &[String]) -> Result<Partial<RunIndexEntry>, StoreError> {
        let run_ids = run_ids.to_vec();
        self.with_connection(move |conn, location| {
            let mut entries = Partial::default();
            for (chunk, placeholders) in sql::in_chunks(&run_ids, IN_CHUNK) {
                let sql_text = format!("SELECT {} FROM runs WHERE id IN ({placeholders})", sql::ENTRY_COLUMNS);
                let values: Vec<String> = chunk.into_iter().cloned().collect();
                let mut found = query_entries(conn, location, &sql_text, &values)?;
                entries.items.append(&mut found.items);
                entries.problems.append(&mut found.problems);
            }
            Ok(entries)
        })
        .await
    }

    /// A forest page asks for hundreds of small families: one query per batch of them, from
    /// the parent index alone.
    async fn families(&self, roots: &[LineageLink]) -> Result<Vec<Partial<LineageLink>>, StoreError> {
        let roots = roots.to_vec();
        self.with_connection(move |conn, location| {
            let db = |e: rusqlite::Error| sql::database_error(location, &e);
            let mut members: HashMap<String, Vec<LineageLink>> = HashMap::with_capacity(roots.len());
            for chunk in roots.chunks(FAMILY_CHUNK) {
                let mut statement = conn.prepare_cached(&sql::families_sql("runs", chunk.len())).map_err(db)?;
                let seeds = chunk
                    .iter()
                    .flat_map(|root| [Some(&root.id), root.parent_run_id.as_ref(), root.created_at.as_ref()]);
                let mut rows = statement.query(rusqlite::params_from_iter(seeds)).map_err(db)?;
                while let Some(row) = rows.next().map_err(db)? {
                    let root: String = row.get(0).map_err(db)?;
                    let link = LineageLink {
                        id: row.get(1).map_err(db)?,
                        parent_run_id: row.get(2).map_err(db)?,
                        created_at: row.get(3).map_err(db)?,
                    };
                    members.entry(root).or_default().push(link);
                }
            }
            Ok(families_in_order(&roots, members))
        })
        .await
    }

    async fn forest_scan(
        &self,
        after: Option<&ListingKey>,
        limit: usize,
    ) -> Result<Option<ForestScanPage>, StoreError> {
        let after = after.cloned();
        self.with_connection(move |conn, location| scan_forest(conn, location, after, limit)).await.map(Some)
    }

    async fn list_one(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        self.lookup(|conn, location| {
            let sql_text = format!("SELECT {} FROM runs WHERE id = ?1", sql::ENTRY_COLUMNS);
            let mut partial = query_entries(conn, location, &sql_text, &[run_id.to_owned()])?;
            match partial.problems.pop() {
                Some(problem) => Err(problem.error),
                None => Ok(partial.items.pop()),
            }
        })
        .await
    }

    /// The `runs` row is written with the record: the index is current.
    async fn current_entry(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        self.list_one(run_id).await
    }
}

/// The columns [`execution_from_row`] reads, in its order.
const EXECUTION_COLUMNS: &str = "id, run_id, plan_id, status, created_at, updated_at, revision, body";

/// Every execution, or (`by_status`) those whose status is `?1`, in listing order; both come
/// from an index ending in `(created_at, id)`.
fn list_executions_sql(by_status: bool) -> String {
    let condition = if by_status { " WHERE status = ?1" } else { "" };
    format!("SELECT {EXECUTION_COLUMNS} FROM executions{condition} ORDER BY created_at, id")
}

/// The journal of an execution (`?1`), in order.
const JOURNAL_SQL: &str = "SELECT seq, body FROM journal WHERE execution_id = ?1 ORDER BY seq";

/// The last journal number of an execution (`?1`); NULL when its journal is empty.
const LAST_SEQ_SQL: &str = "SELECT MAX(seq) FROM journal WHERE execution_id = ?1";

/// Reads an execution row ([`EXECUTION_COLUMNS`]). A column of the wrong type or a body that is
/// not JSON is an error naming the row (`sqlite:PATH#executions/<id>`).
fn execution_from_row(row: &rusqlite::Row<'_>, location: &str) -> Result<StoredExecution, StoreError> {
    let id: Option<String> = row.get(0).ok();
    let row_location = format!("{location}#executions/{}", id.as_deref().unwrap_or("?"));
    let column_error =
        |e: rusqlite::Error| StoreError::Database { location: row_location.clone(), message: e.to_string() };
    let text = |index: usize| row.get::<_, String>(index).map_err(column_error);
    let revision = row.get::<_, i64>(6).map_err(column_error)?;
    let body_text = match row.get_ref(7).map_err(column_error)? {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => bytes.to_vec(),
        _ => Vec::new(),
    };
    let body = serde_json::from_slice(&body_text).map_err(|e| StoreError::corrupt(&row_location, &e))?;
    Ok(StoredExecution {
        doc: ExecutionDoc {
            id: text(0)?,
            run_id: text(1)?,
            plan_id: text(2)?,
            status: text(3)?,
            created_at: text(4)?,
            updated_at: text(5)?,
            body,
        },
        revision: Revision(u64::try_from(revision).unwrap_or(0)),
    })
}

#[async_trait]
impl ExecutionStore for SqliteStore {
    async fn put_execution(&self, doc: ExecutionDoc, expected: Expected) -> Result<Revision, StoreError> {
        self.writable()?;
        let body = execution_text(&doc)?;
        self.write_grouped(move |tx, location| put_execution_in(tx, location, &doc, &body, expected)).await
    }

    async fn get_execution(&self, id: &str) -> Result<Option<StoredExecution>, StoreError> {
        if !self.has_schema(EXECUTIONS_VERSION) {
            return Ok(None);
        }
        self.lookup(|conn, location| {
            let db = |e: rusqlite::Error| sql::database_error(location, &e);
            let mut statement = conn
                .prepare_cached(&format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?1"))
                .map_err(db)?;
            let mut rows = statement.query([id]).map_err(db)?;
            match rows.next().map_err(db)? {
                Some(row) => execution_from_row(row, location).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_executions(&self, status: Option<&str>) -> Result<Vec<StoredExecution>, StoreError> {
        if !self.has_schema(EXECUTIONS_VERSION) {
            return Ok(Vec::new());
        }
        let status = status.map(str::to_owned);
        self.with_connection(move |conn, location| {
            let db = |e: rusqlite::Error| sql::database_error(location, &e);
            let statement_sql = list_executions_sql(status.is_some());
            let values: Vec<String> = status.into_iter().collect();
            let mut statement = conn.prepare_cached(&statement_sql).map_err(db)?;
            let mut rows = statement.query(sql::as_params(&values).as_slice()).map_err(db)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(db)? {
                out.push(execution_from_row(row, location)?);
            }
            // The query already orders; the sort keeps Rust's ordering authoritative.
            out.sort_by(StoredExecution::listing_order);
            Ok(out)
        })
        .await
    }

    async fn executions_of_run(&self, run_id: &str) -> Result<Vec<StoredExecution>, StoreError> {
        if !self.has_schema(EXECUTIONS_VERSION) {
            return Ok(Vec::new());
        }
        self.lookup(|conn, location| {
            let db = |e: rusqlite::Error| sql::database_error(location, &e);
            let statement_sql =
                format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE run_id = ?1 ORDER BY created_at, id");
            let mut statement = conn.prepare_cached(&statement_sql).map_err(db)?;
            let mut rows = statement.query([run_id]).map_err(db)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(db)? {
                out.push(execution_from_row(row, location)?);
            }
            out.sort_by(StoredExecution::listing_order);
            Ok(out)
        })
        .await
    }

    async fn append_journal_entries(&self, records: &[JournalRecord]) -> Result<(), StoreError> {
        self.writable()?;
        let entries = journal_entries(records)?;
        if entries.is_empty() {
            return Ok(());
        }
        self.write_grouped(move |tx, location| append_journal_in(tx, location, &entries)).await
    }

    async fn append_journal_and_put_execution(
        &self,
        records: &[JournalRecord],
        doc: ExecutionDoc,
        expected: Expected,
    ) -> Result<Revision, StoreError> {
        self.writable()?;
        let entries = journal_entries(records)?;
        let doc_body = execution_text(&doc)?;
        self.write_grouped(move |tx, location| {
            // A conflict in either fails the write: both are rolled back (to its savepoint).
            append_journal_in(tx, location, &entries)?;
            put_execution_in(tx, location, &doc, &doc_body, expected)
        })
        .await
    }

    async fn journal(&self, execution_id: &str) -> Result<Vec<JournalRecord>, StoreError> {
        if !self.has_schema(EXECUTIONS_VERSION) {
            return Ok(Vec::new());
        }
        let execution_id = execution_id.to_owned();
        self.with_connection(move |conn, location| {
            let db = |e: rusqlite::Error| sql::database_error(location, &e);
            let mut statement = conn.prepare_cached(JOURNAL_SQL).map_err(db)?;
            let mut rows = statement.query([&execution_id]).map_err(db)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(db)? {
                let seq: i64 = row.get(0).map_err(db)?;
                let row_location = format!("{location}#journal/{execution_id}/{seq}");
                let body_text = match row.get_ref(1).map_err(db)? {
                    ValueRef::Text(bytes) | ValueRef::Blob(bytes) => bytes.to_vec(),
                    _ => Vec::new(),
                };
                let body = serde_json::from_slice(&body_text).map_err(|e| StoreError::corrupt(&row_location, &e))?;
                out.push(JournalRecord {
                    execution_id: execution_id.clone(),
                    seq: u64::try_from(seq).unwrap_or(0),
                    body,
                });
            }
            Ok(out)
        })
        .await
    }
}

/// Saves an execution inside `tx` if the store holds what `expected` says.
fn put_execution_in(
    tx: &Transaction<'_>,
    location: &str,
    doc: &ExecutionDoc,
    body: &str,
    expected: Expected,
) -> Result<Revision, StoreError> {
    let db = |e: rusqlite::Error| sql::database_error(location, &e);
    let found: Option<i64> = tx
        .prepare_cached("SELECT revision FROM executions WHERE id = ?1")
        .map_err(db)?
        .query_row([&doc.id], |row| row.get(0))
        .optional()
        .map_err(db)?;
    check_expected(&doc.id, expected, found.map(|r| Revision(u64::try_from(r).unwrap_or(0))))?;
    let revision: i64 = tx
        .prepare_cached(
            "INSERT INTO executions (id, run_id, plan_id, status, created_at, updated_at, revision, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7)
             ON CONFLICT (id) DO UPDATE SET
                run_id = excluded.run_id, plan_id = excluded.plan_id, status = excluded.status,
                created_at = excluded.created_at, updated_at = excluded.updated_at,
                revision = executions.revision + 1, body = excluded.body
             RETURNING revision",
        )
        .map_err(db)?
        .query_row(params![doc.id, doc.run_id, doc.plan_id, doc.status, doc.created_at, doc.updated_at, body], |row| {
            row.get(0)
        })
        .map_err(db)?;
    Ok(Revision(u64::try_from(revision).unwrap_or(0)))
}

/// Journal entries as appended: execution id, number, stored text.
type JournalEntryRows = Vec<(String, u64, String)>;

/// Entries appended in one commit, checked and serialised before the transaction starts.
fn journal_entries(records: &[JournalRecord]) -> Result<JournalEntryRows, StoreError> {
    journal_batch(records)?;
    records.iter().map(|record| Ok((record.execution_id.clone(), record.seq, journal_entry_text(record)?))).collect()
}

/// Appends journal entries inside `tx`, each if its `seq` is the journal's next number.
fn append_journal_in(tx: &Transaction<'_>, location: &str, entries: &JournalEntryRows) -> Result<(), StoreError> {
    let db = |e: rusqlite::Error| sql::database_error(location, &e);
    for (execution_id, seq, body) in entries {
        let last: Option<i64> =
            tx.prepare_cached(LAST_SEQ_SQL).map_err(db)?.query_row([execution_id], |row| row.get(0)).map_err(db)?;
        check_next_seq(execution_id, *seq, last.map(|s| u64::try_from(s).unwrap_or(0)))?;
        let seq = i64::try_from(*seq).map_err(|_| StoreError::Database {
            location: location.to_owned(),
            message: format!("journal seq {seq} is too large"),
        })?;
        tx.prepare_cached("INSERT INTO journal (execution_id, seq, body) VALUES (?1, ?2, ?3)")
            .map_err(db)?
            .execute(params![execution_id, seq, body])
            .map_err(db)?;
    }
    Ok(())
}

impl SqliteStore {
    /// Brings the database at `path` (created when missing) to the current schema, as opening
    /// it does, and says which migrations that applied (`salvage migrate`).
    pub async fn migrate(path: impl Into<PathBuf>) -> Result<MigrationReport, StoreError> {
        let path: PathBuf = path.into();
        let location = format!("sqlite:{}", path.display());
        // The version before, read without writing (and refusing another application's file).
        let before = if path.exists() {
            let read = SqliteStore::open_read_only(path.clone()).await?;
            read.with_connection(|conn, location| {
                conn.query_row("PRAGMA user_version", [], |row| row.get::<_, u32>(0))
                    .map_err(|e| sql::database_error(location, &e))
            })
            .await?
        } else {
            0
        };
        // Opening read-write brings the schema up to date.
        drop(SqliteStore::open(path.clone()).await?);
        let after = MIGRATIONS.len() as u32;
        let applied = (before + 1..=after)
            .map(|version| AppliedMigration {
                version,
                name: MIGRATION_NAMES.get(version as usize - 1).copied().unwrap_or("?").to_owned(),
            })
            .collect();
        Ok(MigrationReport { store: location, from_version: Some(before), to_version: Some(after), applied })
    }
}

/// The listing-order scan behind [`RunStore::forest_scan`]: each run with whether its parent is
/// stored and where that parent lists. Every page is a range of the `(created_at, id)` index
/// (runs without a creation time form their own range, first), so a page costs its own rows.
fn scan_forest(
    conn: &Connection,
    location: &str,
    after: Option<ListingKey>,
    limit: usize,
) -> Result<ForestScanPage, StoreError> {
    let mut page = ForestScanPage::default();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let (range, then) = ListingRange::after(after.as_ref());
    let scanned = scan_forest_range(conn, location, &range, limit, &mut page)?;
    if let Some(then) = then
        && scanned < limit
    {
        scan_forest_range(conn, location, &then, limit - scanned, &mut page)?;
    }
    Ok(page)
}

/// The rows of [`scan_forest_range`]: `LIMIT ?1`, the range's own parameters from `?2`.
fn forest_scan_sql<'a>(range: &ListingRange<'a>) -> (String, Vec<&'a str>) {
    let (condition, values) = range.condition('?', 2);
    let sql = format!(
        "SELECT run.created_at, run.id, run.parent_run_id, parent.id IS NOT NULL, parent.created_at
         FROM runs AS run LEFT JOIN runs AS parent ON parent.id = run.parent_run_id{condition}
         ORDER BY run.created_at, run.id LIMIT ?1"
    );
    (sql, values)
}

/// Adds up to `limit` runs of one index range to `page`; returns how many the range gave. The
/// page is at its end when a range gives fewer than asked for (the undated range is followed
/// by the dated one in the same page).
fn scan_forest_range(
    conn: &Connection,
    location: &str,
    range: &ListingRange<'_>,
    limit: i64,
    page: &mut ForestScanPage,
) -> Result<i64, StoreError> {
    let db = |e: rusqlite::Error| sql::database_error(location, &e);
    let (statement_sql, values) = forest_scan_sql(range);
    let mut statement = conn.prepare_cached(&statement_sql).map_err(db)?;
    let mut params: Vec<&dyn rusqlite::ToSql> = vec![&limit];
    params.extend(values.iter().map(|value| value as &dyn rusqlite::ToSql));
    let mut rows = statement.query(params.as_slice()).map_err(db)?;
    let mut scanned = 0;
    while let Some(row) = rows.next().map_err(db)? {
        scanned += 1;
        let text = |index: usize| -> Result<Option<String>, String> {
            match row.get_ref(index).map_err(|e| e.to_string())? {
                ValueRef::Null => Ok(None),
                ValueRef::Text(bytes) => String::from_utf8(bytes.to_vec()).map(Some).map_err(|e| e.to_string()),
                other => Err(format!("column {index} holds {:?}, expected text", other.data_type())),
            }
        };
        // A key that cannot be read cannot be paged past: the scan stops there, naming the row.
        let key = (|| -> Result<ListingKey, String> {
            Ok(ListingKey { created_at: text(0)?, id: text(1)?.ok_or("column id is null")? })
        })()
        .map_err(|message| {
            let row_id = row.get::<_, String>(1).unwrap_or_else(|_| "?".to_owned());
            StoreError::Database { location: format!("{location}#{row_id}"), message }
        })?;
        let parent = ParentLink::read(text(2), row.get::<_, bool>(3).map_err(|e| e.to_string()), text(4));
        if let Some(place) = ForestPlace::of(&key, parent) {
            page.marks.push(ForestMark { key: key.clone(), place });
        }
        page.last = Some(key);
    }
    page.at_end = scanned < limit;
    Ok(scanned)
}

/// Runs an index query; a row whose columns cannot be read becomes a problem, not a failure.
fn query_entries(
    conn: &Connection,
    location: &str,
    statement_sql: &str,
    values: &[String],
) -> Result<Partial<RunIndexEntry>, StoreError> {
    let db = |e: rusqlite::Error| sql::database_error(location, &e);
    let mut statement = conn.prepare_cached(statement_sql).map_err(db)?;
    let mut rows = statement.query(sql::as_params(values).as_slice()).map_err(db)?;
    let mut out = Partial::default();
    while let Some(row) = rows.next().map_err(db)? {
        match sql::entry_from_row(row, 0) {
            Ok(entry) => out.items.push(entry),
            Err(message) => {
                let run_id: Option<String> = row.get(0).ok();
                let location = format!("{location}#{}", run_id.as_deref().unwrap_or("?"));
                out.problems.push(StoreProblem { run_id, error: StoreError::Database { location, message } });
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn get_state(&self, key: &str) -> Result<Option<StoredState>, StoreError> {
        if !self.has_schema(STATE_VERSION) {
            return Ok(None);
        }
        self.lookup(|conn, location| read_state(conn, location, key.to_owned())).await
    }

    async fn get_states(&self, keys: &[String]) -> Result<Vec<Option<StoredState>>, StoreError> {
        if !self.has_schema(STATE_VERSION) {
            return Ok(vec![None; keys.len()]);
        }
        self.lookup(|conn, location| {
            let db = |e: rusqlite::Error| sql::database_error(location, &e);
            // One read transaction: the keys are read from one snapshot, on one connection.
            let tx = conn.transaction().map_err(db)?;
            keys.iter().map(|key| read_state(&tx, location, key.clone())).collect()
        })
        .await
    }

    fn writes_states_together(&self) -> bool {
        true
    }

    async fn put_state(&self, key: &str, body: &serde_json::Value, expected: Expected) -> Result<Revision, StoreError> {
        let revisions = self.put_states(&[StateWrite { key, body, expected }]).await?;
        revisions.first().copied().ok_or_else(|| StoreError::Task("no revision for a state write".into()))
    }

    async fn put_states(&self, writes: &[StateWrite<'_>]) -> Result<Vec<Revision>, StoreError> {
        self.writable()?;
        let mut texts = Vec::with_capacity(writes.len());
        for write in writes {
            validate_state_key(write.key)?;
            let text = document_text(&format!("state {}", write.key), "the state document", write.body)?;
            texts.push((write.key.to_owned(), text, write.expected));
        }
        self.write_grouped(move |tx, location| {
            let db = |e: rusqlite::Error| sql::database_error(location, &e);
            let mut revisions = Vec::with_capacity(texts.len());
            for (key, text, expected) in &texts {
                let found: Option<i64> = tx
                    .prepare_cached("SELECT revision FROM state WHERE key = ?1")
                    .map_err(db)?
                    .query_row([key], |row| row.get(0))
                    .optional()
                    .map_err(db)?;
                let found = found.map(|r| Revision(u64::try_from(r).unwrap_or(0)));
                // A conflict fails the write: all its states are rolled back (to its savepoint).
                check_expected(&format!("state {key}"), *expected, found)?;
                let revision: i64 = tx
                    .prepare_cached(
                        "INSERT INTO state (key, revision, body) VALUES (?1, 1, ?2)
                         ON CONFLICT (key) DO UPDATE SET revision = state.revision + 1, body = excluded.body
                         RETURNING revision",
                    )
                    .map_err(db)?
                    .query_row(params![key, text], |row| row.get(0))
                    .map_err(db)?;
                revisions.push(Revision(u64::try_from(revision).unwrap_or(0)));
            }
            Ok(revisions)
        })
        .await
    }

    async fn list_state(&self, prefix: &str) -> Result<Vec<StoredState>, StoreError> {
        validate_state_key(prefix)?;
        if !self.has_schema(STATE_VERSION) {
            return Ok(Vec::new());
        }
        // Keys under `prefix/`: from `prefix/` up to `prefix0` ('0' follows '/').
        let (low, high) = (format!("{prefix}/"), format!("{prefix}0"));
        self.with_connection(move |conn, location| {
            let db = |e: rusqlite::Error| sql::database_error(location, &e);
            let mut statement = conn
                .prepare_cached("SELECT key, revision, body FROM state WHERE key >= ?1 AND key < ?2 ORDER BY key")
                .map_err(db)?;
            let mut rows = statement.query(params![low, high]).map_err(db)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(db)? {
                let key: String = row.get(0).map_err(db)?;
                if key[low.len()..].contains('/') {
                    continue;
                }
                let (revision, body): (i64, String) = (row.get(1).map_err(db)?, row.get(2).map_err(db)?);
                out.push(state_of(location, key, revision, &body)?);
            }
            Ok(out)
        })
        .await
    }
}

/// The state document at `key`, if any.
fn read_state(conn: &Connection, location: &str, key: String) -> Result<Option<StoredState>, StoreError> {
    let db = |e: rusqlite::Error| sql::database_error(location, &e);
    let row: Option<(i64, String)> = conn
        .prepare_cached("SELECT revision, body FROM state WHERE key = ?1")
        .map_err(db)?
        .query_row([&key], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
        .map_err(db)?;
    row.map(|(revision, body)| state_of(location, key, revision, &body)).transpose()
}

fn state_of(location: &str, key: String, revision: i64, body: &str) -> Result<StoredState, StoreError> {
    let body = serde_json::from_str(body).map_err(|e| StoreError::corrupt(format!("{location} state {key}"), &e))?;
    Ok(StoredState { key, body, revision: Revision(u64::try_from(revision).unwrap_or(0)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &Connection, query: &RunQuery) -> String {
        let (statement, values) = sql::list_sql("runs", query, None);
        sql::query_plan(conn, &statement, &values).unwrap_or_else(|e| panic!("{e}")).join(" | ")
    }

    #[tokio::test]
    async fn each_save_keeps_the_runs_tree_leaf_and_a_stale_or_damaged_one_is_computed_again() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("leaves.db");
        let store = SqliteStore::open(&path).await.unwrap_or_else(|e| panic!("{e}"));
        let mut run = Run::new("leafy", "2026-01-01T00:00:00.000Z");
        store.save(&run, Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        async fn leaves(store: &SqliteStore) -> Partial<(String, TreeLeaf)> {
            let ids = ["leafy", "missing", "leafy"].map(str::to_owned);
            store.tree_leaves(&ids).await.unwrap_or_else(|e| panic!("{e}"))
        }
        let expected = |run: &Run| vec![("leafy".to_owned(), TreeLeaf::of(run)); 2];
        assert_eq!(leaves(&store).await.items, expected(&run), "asked twice, served twice; a missing id left out");
        run.status = crate::model::RunStatus::Failed;
        store.save(&run, Expected::Any).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(leaves(&store).await.items, expected(&run), "the leaf follows the record");

        let conn = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        for stale in [r#"{"v":0,"error":"old"}"#, "not json"] {
            conn.execute("UPDATE tree_leaves SET leaf = ?1", [stale]).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(leaves(&store).await.items, expected(&run), "{stale}: computed from the record");
        }
        conn.execute_batch("DELETE FROM tree_leaves; UPDATE runs SET body = '{';").unwrap_or_else(|e| panic!("{e}"));
        let damaged = leaves(&store).await;
        assert!(damaged.items.is_empty());
        assert_eq!(damaged.problems.len(), 2);
        assert!(damaged.problems[0].error.is_record_problem(), "{}", damaged.problems[0].error);
    }

    #[tokio::test]
    async fn lookups_use_the_indexes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = SqliteStore::open(dir.path().join("s.db")).await.unwrap_or_else(|e| panic!("{e}"));
        let mut runs = Vec::new();
        for n in 0..200 {
            let mut run = Run::new(format!("run-{n:03}"), format!("2026-01-01T00:00:{:02}.000Z", n % 60));
            run.metadata.lineage.root_run_id = format!("root-{}", n % 10);
            if n % 3 == 0 {
                run.metadata.lineage.parent_run_id = Some(format!("run-{:03}", n / 3));
            }
            runs.push(run);
        }
        store.save_all(&runs, Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        let conn = Connection::open(store.path()).unwrap_or_else(|e| panic!("{e}"));
        conn.execute_batch("ANALYZE").unwrap_or_else(|e| panic!("{e}"));
        let cases = [
            (RunQuery::in_trace("root-1"), "runs_by_root"),
            (RunQuery::children_of("run-003"), "runs_by_parent"),
            (RunQuery::with_status(crate::model::RunStatus::Failed), "runs_by_status"),
            (RunQuery::all(), "runs_by_listing"),
        ];
        for (query, index) in cases {
            let plan = plan(&conn, &query);
            assert!(plan.contains(index), "{query:?} should use {index}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{query:?} should not sort: {plan}");
        }
        let subtree = sql::query_plan(&conn, &sql::subtree_sql("runs", None), &["run-001".to_owned()])
            .unwrap_or_else(|e| panic!("{e}"))
            .join(" | ");
        assert!(subtree.contains("runs_by_parent"), "the recursive step walks the parent index: {subtree}");
        let scans: Vec<&str> = subtree.split(" | ").filter(|step| step.starts_with("SCAN")).collect();
        assert_eq!(scans, ["SCAN tree", "SCAN tree"], "only the walk itself is scanned: {subtree}");
        // A batch of families is walked down the parent index alone: no row is read.
        let seeds = ["run-001", "", "2026-01-01T00:00:01.000Z", "run-002", "", "2026-01-01T00:00:02.000Z"];
        let families = sql::query_plan(&conn, &sql::families_sql("runs", 2), &seeds.map(str::to_owned))
            .unwrap_or_else(|e| panic!("{e}"))
            .join(" | ");
        assert!(families.contains("child USING COVERING INDEX runs_by_parent"), "{families}");
        // A forest scan's page is a range of the listing index, each parent one lookup by id.
        let ranges = [
            ListingRange::All,
            ListingRange::UndatedAfter("run-001"),
            ListingRange::Dated,
            ListingRange::DatedAfter { created_at: "2026-01-01T00:00:30.000Z", id: "run-030" },
        ];
        for range in ranges {
            let (statement, values) = forest_scan_sql(&range);
            let mut values: Vec<String> = values.into_iter().map(str::to_owned).collect();
            values.insert(0, "100".to_owned());
            let plan = sql::query_plan(&conn, &statement, &values).unwrap_or_else(|e| panic!("{e}")).join(" | ");
            assert!(plan.contains("run USING INDEX runs_by_listing"), "{statement}: {plan}");
            assert!(plan.contains("SEARCH parent USING INDEX sqlite_autoindex_runs_1 (id=?)"), "{statement}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{statement} should not sort: {plan}");
        }
    }

    fn execution(id: &str, status: &str, created_at: &str) -> ExecutionDoc {
        ExecutionDoc {
            id: id.to_owned(),
            run_id: format!("run-of-{id}"),
            plan_id: format!("plan-of-{id}"),
            status: status.to_owned(),
            created_at: created_at.to_owned(),
            updated_at: created_at.to_owned(),
            body: serde_json::json!({ "id": id, "status": status }),
        }
    }

    #[tokio::test]
    async fn execution_lookups_use_the_indexes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = SqliteStore::open(dir.path().join("s.db")).await.unwrap_or_else(|e| panic!("{e}"));
        for n in 0..100 {
            let status = ["running", "completed", "waiting_for_approval", "failed"][n % 4];
            let doc = execution(&format!("exec-{n:03}"), status, &format!("2026-01-01T00:00:{:02}.000Z", n % 60));
            store.put_execution(doc.clone(), Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
            for seq in 1..=3 {
                let record = JournalRecord { execution_id: doc.id.clone(), seq, body: serde_json::json!({}) };
                store.append_journal(&record).await.unwrap_or_else(|e| panic!("{e}"));
            }
        }
        let conn = Connection::open(store.path()).unwrap_or_else(|e| panic!("{e}"));
        conn.execute_batch("ANALYZE").unwrap_or_else(|e| panic!("{e}"));
        let plan = |statement: &str, values: &[String]| {
            sql::query_plan(&conn, statement, values).unwrap_or_else(|e| panic!("{e}")).join(" | ")
        };
        let by_status = plan(&list_executions_sql(true), &["failed".to_owned()]);
        assert!(by_status.contains("executions_by_status"), "{by_status}");
        let all = plan(&list_executions_sql(false), &[]);
        assert!(all.contains("executions_by_listing"), "{all}");
        let journal = plan(JOURNAL_SQL, &["exec-001".to_owned()]);
        let last = plan(LAST_SEQ_SQL, &["exec-001".to_owned()]);
        assert!(!all.contains("TEMP B-TREE"), "listing everything walks the index, no sort: {all}");
        for plan in [&by_status, &journal, &last] {
            assert!(!plan.contains("TEMP B-TREE") && !plan.contains("SCAN"), "a lookup, no sort: {plan}");
        }
        assert!(journal.contains("PRIMARY KEY") && last.contains("PRIMARY KEY"), "{journal} / {last}");
    }

    #[tokio::test]
    async fn a_database_at_schema_version_1_gains_executions_and_keeps_its_runs() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("old.db");
        // What the previous salvage left behind: the runs schema only, runs saved (one twice).
        let runs: Vec<Run> =
            (0..5).map(|n| Run::new(format!("old-{n}"), format!("2026-01-0{}T00:00:00.000Z", n + 1))).collect();
        {
            let mut conn = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
            sql::configure(&conn, "FULL", CACHE_KIB).unwrap_or_else(|e| panic!("{e}"));
            let version = sql::migrate(&mut conn, &MIGRATIONS[..1]).unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(version, 1);
            // Rows as that salvage wrote them (old-0 saved twice, the last change).
            for (n, run) in runs.iter().enumerate() {
                let entry = RunIndexEntry::of(run, Revision(0));
                let body = serde_json::to_string(run).unwrap_or_else(|e| panic!("{e}"));
                let (revision, change_seq): (i64, i64) = if n == 0 { (2, 6) } else { (1, n as i64 + 1) };
                conn.execute(
                    "INSERT INTO runs (id, root_run_id, parent_run_id, status, created_at, revision, change_seq, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        entry.id,
                        entry.root_run_id,
                        entry.parent_run_id,
                        entry.status.as_str(),
                        entry.created_at,
                        revision,
                        change_seq,
                        body
                    ],
                )
                .unwrap_or_else(|e| panic!("{e}"));
            }
        }
        let raw_runs = |path: &Path| -> Vec<(String, i64, i64, String)> {
            let conn = Connection::open(path).unwrap_or_else(|e| panic!("{e}"));
            let mut statement = conn
                .prepare("SELECT id, revision, change_seq, body FROM runs ORDER BY id")
                .unwrap_or_else(|e| panic!("{e}"));
            let rows = statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))
                .unwrap_or_else(|e| panic!("{e}"));
            rows.collect::<rusqlite::Result<Vec<_>>>().unwrap_or_else(|e| panic!("{e}"))
        };
        let tables = |path: &Path| -> (u32, Vec<String>) {
            let conn = Connection::open(path).unwrap_or_else(|e| panic!("{e}"));
            let version = conn.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap_or_else(|e| panic!("{e}"));
            let mut statement = conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .unwrap_or_else(|e| panic!("{e}"));
            let names = statement.query_map([], |row| row.get(0)).unwrap_or_else(|e| panic!("{e}"));
            (version, names.collect::<rusqlite::Result<Vec<String>>>().unwrap_or_else(|e| panic!("{e}")))
        };
        let before = raw_runs(&path);
        assert_eq!(before.len(), 5);
        assert_eq!(tables(&path), (1, vec!["runs".to_owned()]));

        // Read-only, the old database is not migrated: the forest's leaves come from the records.
        let reader = SqliteStore::open_read_only(&path).await.unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<String> = runs.iter().map(|run| run.id.clone()).collect();
        let expected_leaves: Vec<(String, TreeLeaf)> =
            runs.iter().map(|run| (run.id.clone(), TreeLeaf::of(run))).collect();
        let leaves = reader.tree_leaves(&ids).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(leaves.items, expected_leaves);
        drop(reader);
        assert_eq!(tables(&path).0, 1);

        let store = SqliteStore::open(&path).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            tables(&path),
            (4, ["executions", "journal", "runs", "state", "tree_leaves"].map(str::to_owned).to_vec())
        );
        assert_eq!(raw_runs(&path), before, "the runs rows are untouched");
        // The migration kept each run's leaf beside it.
        let stored_leaves: Vec<String> = {
            let conn = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
            let mut statement =
                conn.prepare("SELECT leaf FROM tree_leaves ORDER BY id").unwrap_or_else(|e| panic!("{e}"));
            let rows = statement.query_map([], |row| row.get(0)).unwrap_or_else(|e| panic!("{e}"));
            rows.collect::<rusqlite::Result<Vec<String>>>().unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(stored_leaves, runs.iter().map(|run| TreeLeaf::of(run).encode()).collect::<Vec<_>>());
        let leaves = store.tree_leaves(&ids).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(leaves.items, expected_leaves);
        let listed = store.list(&RunQuery::all()).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            listed.items.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["old-0", "old-1", "old-2", "old-3", "old-4"]
        );
        let first = store.get("old-0").await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!("old-0"));
        assert_eq!((first.run, first.revision), (runs[0].clone(), Revision(2)));

        let doc = execution("exec-1", "running", "2026-02-01T00:00:00.000Z");
        assert_eq!(store.put_execution(doc.clone(), Expected::Absent).await.ok(), Some(Revision(1)));
        let record =
            JournalRecord { execution_id: "exec-1".into(), seq: 1, body: serde_json::json!({"kind": "intent"}) };
        store.append_journal(&record).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.journal("exec-1").await.ok(), Some(vec![record]));
        assert_eq!(store.get_execution("exec-1").await.ok().flatten().map(|s| s.doc), Some(doc));
        // Runs still save where they left off.
        assert_eq!(store.save(&runs[0], Expected::Revision(Revision(2))).await.ok(), Some(Revision(3)));
        drop(store);
        // Reopening at the current version migrates nothing more.
        drop(SqliteStore::open(&path).await.unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(tables(&path).0, 4);
    }

    #[tokio::test]
    async fn a_read_only_store_refuses_writes_and_foreign_databases() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("s.db");
        let writer = SqliteStore::open(&path).await.unwrap_or_else(|e| panic!("{e}"));
        let run = Run::new("r-1", "2026-01-01T00:00:00.000Z");
        writer.save(&run, Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        let reader = SqliteStore::open_read_only(&path).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(reader.is_read_only());
        assert_eq!(reader.get("r-1").await.ok().flatten().map(|stored| stored.run), Some(run.clone()));
        assert!(matches!(reader.save(&run, Expected::Any).await, Err(StoreError::ReadOnly { .. })));
        let doc = execution("exec-1", "running", "2026-02-01T00:00:00.000Z");
        assert!(matches!(reader.put_execution(doc.clone(), Expected::Absent).await, Err(StoreError::ReadOnly { .. })));
        let state = reader.put_state("serve/status", &serde_json::json!({}), Expected::Any).await;
        assert!(matches!(state, Err(StoreError::ReadOnly { .. })));

        let foreign = dir.path().join("other.db");
        Connection::open(&foreign)
            .and_then(|conn| conn.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY);"))
            .unwrap_or_else(|e| panic!("{e}"));
        for read_only in [true, false] {
            let opened = SqliteStore::open_with(&foreign, read_only).await;
            assert!(
                matches!(&opened, Err(StoreError::ForeignDatabase { reason, .. }) if reason.contains("invoices")),
                "{:?}",
                opened.err()
            );
        }
        let conn = Connection::open(&foreign).unwrap_or_else(|e| panic!("{e}"));
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap_or_default();
        assert_eq!(mode, "delete", "refused before anything was changed");
    }

    #[tokio::test]
    async fn a_database_from_a_newer_salvage_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("new.db");
        drop(SqliteStore::open(&path).await.unwrap_or_else(|e| panic!("{e}")));
        let conn = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        conn.pragma_update(None, "user_version", 99).unwrap_or_else(|e| panic!("{e}"));
        drop(conn);
        let error = SqliteStore::open(&path).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("schema version 99") && error.contains("new.db"), "{error}");
    }

    /// Waits until `count` writes are queued behind the write lock held by the test.
    async fn queued_writes(store: &SqliteStore, count: usize) {
        for _ in 0..2000 {
            if store.queued.waiting_len() == count {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("{} writes queued, not {count}", store.queued.waiting_len());
    }

    #[tokio::test]
    async fn writes_queued_together_commit_together_and_a_refused_one_is_rolled_back_alone() {
        let (dir, store) = shared_store("group.db").await;
        let taken = serde_json::json!({"by": "someone"});
        store.put_state("serve/taken", &taken, Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        let run = Run::new("grouped-run", "2026-01-01T00:00:00.000Z");

        // Held by the test, the lock makes every write below queue: they commit as one group.
        let held = store.write_lock.lock().await;
        let mut writers = tokio::task::JoinSet::new();
        for n in 0..10 {
            let store = store.clone();
            writers.spawn(async move {
                let key = format!("serve/w{n}");
                (key.clone(), store.put_state(&key, &serde_json::json!({"n": n}), Expected::Absent).await.map(|_| ()))
            });
        }
        // Refused: its first state is new, its second is taken; neither may be written.
        let refused = store.clone();
        writers.spawn(async move {
            let fresh = serde_json::json!({"half": true});
            let writes = [
                StateWrite { key: "serve/half", body: &fresh, expected: Expected::Absent },
                StateWrite { key: "serve/taken", body: &fresh, expected: Expected::Absent },
            ];
            ("serve/half".to_owned(), refused.put_states(&writes).await.map(|_| ()))
        });
        let runs = store.clone();
        writers.spawn(async move { ("grouped-run".to_owned(), runs.save(&run, Expected::Absent).await.map(|_| ())) });
        queued_writes(&store, 12).await;
        drop(held);

        let mut outcomes = writers.join_all().await;
        outcomes.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, outcome) in &outcomes {
            match key.as_str() {
                "serve/half" => assert!(matches!(outcome, Err(StoreError::Conflict { .. })), "{key}: {outcome:?}"),
                _ => assert!(outcome.is_ok(), "{key}: {outcome:?}"),
            }
        }
        assert_eq!(store.queued.waiting_len(), 0);
        // Read back through a connection of its own: what was answered as written is committed.
        let reopened = SqliteStore::open_read_only(dir.path().join("group.db")).await.unwrap_or_else(|e| panic!("{e}"));
        for n in 0..10 {
            let state = reopened.get_state(&format!("serve/w{n}")).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(state.map(|s| s.body), Some(serde_json::json!({"n": n})));
        }
        assert_eq!(reopened.get_state("serve/half").await.unwrap_or_else(|e| panic!("{e}")), None, "rolled back");
        let kept = reopened.get_state("serve/taken").await.unwrap_or_else(|e| panic!("{e}")).map(|s| s.body);
        assert_eq!(kept, Some(taken), "the refused write changed nothing");
        let saved = reopened.get("grouped-run").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(saved.map(|s| s.revision), Some(Revision(1)));
    }

    /// A new store in a temporary directory, to be shared between tasks.
    async fn shared_store(file: &str) -> (tempfile::TempDir, Arc<SqliteStore>) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = SqliteStore::open(dir.path().join(file)).await.unwrap_or_else(|e| panic!("{e}"));
        (dir, Arc::new(store))
    }

    /// Puts an empty state document at `key` from a task of its own (it queues behind the lock
    /// the test holds).
    fn put_in_task(
        store: &Arc<SqliteStore>,
        key: &'static str,
    ) -> tokio::task::JoinHandle<Result<Revision, StoreError>> {
        let store = store.clone();
        tokio::spawn(async move { store.put_state(key, &serde_json::json!({}), Expected::Absent).await })
    }

    #[tokio::test]
    async fn a_write_given_up_before_its_group_ran_is_not_written() {
        let (_dir, store) = shared_store("gone.db").await;
        let held = store.write_lock.lock().await;
        let given_up = put_in_task(&store, "serve/gone");
        queued_writes(&store, 1).await;
        given_up.abort();
        let _ = given_up.await;
        let written = put_in_task(&store, "serve/kept");
        queued_writes(&store, 2).await;
        drop(held);
        written.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.get_state("serve/gone").await.unwrap_or_else(|e| panic!("{e}")), None);
        assert!(store.get_state("serve/kept").await.unwrap_or_else(|e| panic!("{e}")).is_some());
    }

    /// Commits, as one group, a plain state write (`serve/before`) and then `failing`, and
    /// returns both outcomes.
    async fn group_with<F>(
        store: &Arc<SqliteStore>,
        failing: F,
    ) -> (Result<Revision, StoreError>, Result<(), StoreError>)
    where
        F: FnOnce(&Transaction<'_>, &str) -> Result<(), StoreError> + Send + 'static,
    {
        let held = store.write_lock.lock().await;
        let before = put_in_task(store, "serve/before");
        queued_writes(store, 1).await;
        let second = store.clone();
        let failed = tokio::spawn(async move { second.write_grouped(failing).await });
        queued_writes(store, 2).await;
        drop(held);
        (before.await.unwrap_or_else(|e| panic!("{e}")), failed.await.unwrap_or_else(|e| panic!("{e}")))
    }

    #[tokio::test]
    async fn a_write_whose_savepoint_cannot_be_released_takes_its_group_down_uncommitted() {
        let (_dir, store) = shared_store("release.db").await;
        // Writes a state, then ends the group's savepoint itself: releasing it afterwards fails.
        let (before, released) = group_with(&store, |tx: &Transaction<'_>, location: &str| {
            let db = |e: rusqlite::Error| sql::database_error(location, &e);
            tx.execute("INSERT INTO state (key, revision, body) VALUES ('serve/mine', 1, '{}')", []).map_err(db)?;
            tx.execute_batch("RELEASE grouped_write").map_err(db)
        })
        .await;
        assert!(
            matches!(&before, Err(StoreError::Database { message, .. }) if message.contains("rolled back")),
            "{before:?}"
        );
        assert!(matches!(&released, Err(StoreError::Database { .. })), "{released:?}");
        for key in ["serve/before", "serve/mine"] {
            assert_eq!(store.get_state(key).await.unwrap_or_else(|e| panic!("{e}")), None, "{key}");
        }
    }

    #[tokio::test]
    async fn a_write_that_panics_takes_its_group_down_uncommitted_and_each_writer_is_told() {
        let (_dir, store) = shared_store("panic.db").await;
        let (before, panicked) =
            group_with(&store, |_: &Transaction<'_>, _: &str| -> Result<(), StoreError> { panic!("a bug in a write") })
                .await;
        assert!(matches!(&before, Err(StoreError::Task(m)) if m.contains("none of it was committed")), "{before:?}");
        assert!(matches!(&panicked, Err(StoreError::Task(_))), "{panicked:?}");
        assert_eq!(store.get_state("serve/before").await.unwrap_or_else(|e| panic!("{e}")), None);
        // The store goes on: the next write is a group of its own.
        store
            .put_state("serve/after", &serde_json::json!({}), Expected::Absent)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
