//! `sqlite:PATH` — the embedded default store.
//!
//! One `runs` table: the record as JSON (`body`) next to the indexed columns every lookup
//! needs (root, parent, status, creation time), a per-run `revision` (1, 2, ... one per save)
//! and a store-wide `change_seq` (a later daemon follows "what changed since" through it).
//!
//! SQLite is synchronous, so every call runs on tokio's blocking pool with a connection from a
//! small pool. WAL lets readers run next to the single writer; writes take `BEGIN IMMEDIATE`,
//! and the compare-and-set check happens inside that transaction, so two stores on the same
//! file (two processes) serialise correctly.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::sql::{self, Migration};
use super::{
    Expected, Partial, Revision, RunIndexEntry, RunQuery, RunStore, StoreError, StoreProblem, StoredRun, breadth_first,
    decode_run, validate_run_id,
};
use crate::model::Run;

/// Connections kept per store; also the number of calls that run at once.
const POOL_SIZE: usize = 4;

/// Page cache per connection.
const CACHE_KIB: i64 = 16 * 1024;

/// `IN (...)` lists are cut to this many ids (SQLite's parameter limit is far above it).
const IN_CHUNK: usize = 500;

/// The schema, one function per version. Adding a table later = appending a function.
const MIGRATIONS: &[Migration] = &[create_runs];

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
    /// Writers of this process queue here rather than in SQLite's busy handler (which polls).
    write_lock: tokio::sync::Mutex<()>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

struct ConnectionPool {
    path: PathBuf,
    location: String,
    idle: Mutex<Vec<Connection>>,
    permits: tokio::sync::Semaphore,
}

impl ConnectionPool {
    fn open_connection(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open(&self.path).map_err(|e| sql::database_error(&self.location, &e))?;
        sql::configure(&conn, "FULL", CACHE_KIB).map_err(|e| sql::database_error(&self.location, &e))?;
        Ok(conn)
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

/// What a save writes, prepared before entering the blocking pool.
struct PreparedRun {
    entry: RunIndexEntry,
    body: String,
}

impl SqliteStore {
    /// Opens the database at `path`, creating it (and its parent directory) when missing and
    /// bringing its schema up to date.
    pub async fn open(path: impl Into<PathBuf>) -> Result<SqliteStore, StoreError> {
        let path: PathBuf = path.into();
        let location = format!("sqlite:{}", path.display());
        let pool = Arc::new(ConnectionPool {
            path: path.clone(),
            location: location.clone(),
            idle: Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(POOL_SIZE),
        });
        let setup = pool.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            if let Some(parent) = setup.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|source| StoreError::Io { location: parent.display().to_string(), source })?;
            }
            let mut conn = setup.open_connection()?;
            let version = sql::migrate(&mut conn, MIGRATIONS).map_err(|e| e.into_store_error(&setup.location))?;
            tracing::debug!(store = %setup.location, schema_version = version, "opened sqlite store");
            setup.give_back(conn);
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(SqliteStore { path, pool, write_lock: tokio::sync::Mutex::new(()) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn location(&self) -> &str {
        &self.pool.location
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

    fn prepare(run: &Run) -> Result<PreparedRun, StoreError> {
        validate_run_id(&run.id)?;
        let body = serde_json::to_string(run).map_err(|e| StoreError::Database {
            location: format!("run {}", run.id),
            message: format!("cannot serialise the run: {e}"),
        })?;
        Ok(PreparedRun { entry: RunIndexEntry::of(run, Revision(0)), body })
    }

    async fn write(&self, prepared: Vec<PreparedRun>, expected: Expected) -> Result<Vec<Revision>, StoreError> {
        let _writer = self.write_lock.lock().await;
        self.with_connection(move |conn, location| write_runs(conn, location, &prepared, expected)).await
    }
}

/// Checks every expectation against the store as it was before the batch, then writes the
/// batch, all inside one `BEGIN IMMEDIATE` transaction.
fn write_runs(
    conn: &mut Connection,
    location: &str,
    prepared: &[PreparedRun],
    expected: Expected,
) -> Result<Vec<Revision>, StoreError> {
    let db = |e: rusqlite::Error| sql::database_error(location, &e);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
    {
        let mut current = tx.prepare_cached("SELECT revision FROM runs WHERE id = ?1").map_err(db)?;
        for run in prepared {
            let found: Option<i64> = current.query_row([&run.entry.id], |row| row.get(0)).optional().map_err(db)?;
            let found = found.map(|r| Revision(u64::try_from(r).unwrap_or(0)));
            let ok = match expected {
                Expected::Any => true,
                Expected::Absent => found.is_none(),
                Expected::Revision(revision) => found == Some(revision),
            };
            if !ok {
                return Err(StoreError::Conflict { run_id: run.entry.id.clone(), expected, found });
            }
        }
    }
    let mut revisions = Vec::with_capacity(prepared.len());
    {
        // The store-wide change counter: the highest one plus one, inside the write lock.
        // Runs are never deleted, so the maximum never goes back.
        let mut change_seq: i64 =
            tx.query_row("SELECT COALESCE(MAX(change_seq), 0) FROM runs", [], |row| row.get(0)).map_err(db)?;
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
        for run in prepared {
            change_seq += 1;
            let entry = &run.entry;
            let revision: i64 = upsert
                .query_row(
                    params![
                        entry.id,
                        entry.root_run_id,
                        entry.parent_run_id,
                        entry.status.as_str(),
                        entry.created_at,
                        change_seq,
                        run.body
                    ],
                    |row| row.get(0),
                )
                .map_err(db)?;
            revisions.push(Revision(u64::try_from(revision).unwrap_or(0)));
        }
    }
    tx.commit().map_err(db)?;
    Ok(revisions)
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
        let run_id = run_id.to_owned();
        self.with_connection(move |conn, location| {
            let db = |e: rusqlite::Error| sql::database_error(location, &e);
            let mut statement = conn.prepare_cached("SELECT id, body, revision FROM runs WHERE id = ?1").map_err(db)?;
            let stored = statement.query_row([&run_id], read_body).optional().map_err(db)?;
            stored.map(|stored| stored.decode(location)).transpose()
        })
        .await
    }

    async fn get_many(&self, run_ids: &[String]) -> Result<Partial<StoredRun>, StoreError> {
        let run_ids = run_ids.to_vec();
        self.with_connection(move |conn, location| {
            let db = |e: rusqlite::Error| sql::database_error(location, &e);
            let mut found = std::collections::HashMap::new();
            let mut unique: Vec<&String> = run_ids.iter().collect();
            unique.sort();
            unique.dedup();
            for chunk in unique.chunks(IN_CHUNK) {
                let placeholders = vec!["?"; chunk.len()].join(", ");
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

    async fn save(&self, run: &Run, expected: Expected) -> Result<Revision, StoreError> {
        let prepared = vec![SqliteStore::prepare(run)?];
        let revisions = self.write(prepared, expected).await?;
        revisions.into_iter().next().ok_or_else(|| StoreError::Task("save returned no revision".into()))
    }

    async fn save_all(&self, runs: &[Run], expected: Expected) -> Result<Vec<Revision>, StoreError> {
        let prepared = runs.iter().map(SqliteStore::prepare).collect::<Result<Vec<_>, _>>()?;
        if prepared.is_empty() {
            return Ok(Vec::new());
        }
        self.write(prepared, expected).await
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
        let root_id = root_id.to_owned();
        self.with_connection(move |conn, location| {
            let members =
                query_entries(conn, location, &sql::subtree_sql("runs", None), std::slice::from_ref(&root_id))?;
            Ok(Partial { items: breadth_first(&root_id, members.items), problems: members.problems })
        })
        .await
    }

    async fn list_one(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        let run_id = run_id.to_owned();
        self.with_connection(move |conn, location| {
            let sql_text = format!("SELECT {} FROM runs WHERE id = ?1", sql::ENTRY_COLUMNS);
            let mut partial = query_entries(conn, location, &sql_text, std::slice::from_ref(&run_id))?;
            match partial.problems.pop() {
                Some(problem) => Err(problem.error),
                None => Ok(partial.items.pop()),
            }
        })
        .await
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &Connection, query: &RunQuery) -> String {
        let (statement, values) = sql::list_sql("runs", query, None);
        sql::query_plan(conn, &statement, &values).unwrap_or_else(|e| panic!("{e}")).join(" | ")
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
}
