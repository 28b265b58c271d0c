//! The file store's index: which runs live in `DIR`, with the columns lookups need, so that a
//! report on one run does not read every file.
//!
//! It is a cache of the directory, kept in a sidecar SQLite database `DIR/.salvage/index.sqlite`
//! (shared by every salvage process using `DIR`, reused across restarts) or, when `DIR` is not
//! writable, in memory. One row per `*.json` file, keyed by file name, with the file's
//! `(mtime_ns, size)` when it was read: [`FileIndex::refresh`] streams the directory, stats
//! each file and re-reads only new or changed ones, so a refresh of an unchanged store costs
//! one `stat` per file and never holds more than one file in memory.
//!
//! Files are the truth: `get` always reads the file, saves through the store update their row
//! directly, and a change made behind the store's back (the reference runtime writing in place)
//! shows up at the next refresh.
//!
//! The table is keyed by run id, which is the file name without `.json` (one determines the
//! other), so that lineage lookups and the subtree walk join on the primary key.
//!
//! Racy rows: a file written within the filesystem's timestamp granularity of being indexed
//! can change again without changing `(mtime, size)`. Such rows are stored with
//! `mtime_ns = RACY` and verified by content hash at the next refresh (the trick git uses for
//! its index).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use super::file::{TEMP_SUFFIX, content_revision, index_run_file};
use super::sql::{self, Migration};
use super::{Partial, Revision, RunIndexEntry, RunQuery, StoreError, StoreProblem, breadth_first, validate_run_id};
use crate::model::{RunShapeError, TreeLeaf};

/// `mtime_ns` of a row that must be verified by content at the next refresh.
pub(crate) const RACY: i64 = -1;

/// Files modified this recently when they are indexed are recorded as [`RACY`]. Generous: Linux
/// file systems stamp with the kernel tick, network file systems can be coarser.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Directory entries handled per index transaction during a refresh.
const BATCH: usize = 4096;

/// Crash leftovers: temp files older than this are removed by a refresh (a live writer holds
/// its temp file for milliseconds).
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

const MIGRATIONS: &[Migration] = &[create_files, add_tree_leaves];

fn create_files(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE files (
            id TEXT PRIMARY KEY,
            file_name TEXT NOT NULL,
            mtime_ns INTEGER NOT NULL,
            size INTEGER NOT NULL,
            root_run_id TEXT,
            parent_run_id TEXT,
            status TEXT,
            created_at TEXT,
            revision INTEGER NOT NULL,
            problem TEXT
        );
        CREATE INDEX files_by_root ON files (root_run_id, created_at, id);
        CREATE INDEX files_by_parent ON files (parent_run_id, created_at, id);
        CREATE INDEX files_by_status ON files (status, created_at, id);
        CREATE INDEX files_by_listing ON files (created_at, id);
        CREATE INDEX files_with_problems ON files (id) WHERE problem IS NOT NULL;",
    )
}

/// Version 2: each run's [`TreeLeaf`] (what the whole-store forest shows of it), computed
/// when its file is read. Rows indexed before have none: their size is forgotten, so the next
/// refresh reads those files again and fills it.
fn add_tree_leaves(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("ALTER TABLE files ADD COLUMN tree_leaf TEXT; UPDATE files SET size = -1 WHERE problem IS NULL;")
}

/// Every file that cannot be served (the partial index `files_with_problems` holds just those).
const PROBLEMS_SQL: &str = "SELECT file_name, id, problem FROM files WHERE problem IS NOT NULL ORDER BY id";

/// Rows that hold a run (problem rows have no index columns).
const RUNS_ONLY: &str = "problem IS NULL";

/// What one refresh did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshStats {
    /// `*.json` files found in the directory.
    pub files: u64,
    /// Files that still existed when stat'ed (and so have a row).
    pub indexed: u64,
    /// Files read and parsed because they were new or changed.
    pub parsed: u64,
    /// Files read only to confirm by hash that a recently written file did not change.
    pub verified: u64,
    /// Rows dropped because their file is gone.
    pub removed: u64,
    /// Files that cannot be served (corrupt, not a run, unreadable), as of this refresh.
    pub problems: u64,
    /// Crash-leftover temp files removed.
    pub stale_temps_removed: u64,
    pub elapsed: Duration,
}

/// A file that cannot be served, as the index remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum StoredProblem {
    Corrupt { line: usize, column: usize, message: String },
    NotARun { path: String, problem: String },
    InvalidId { reason: String },
    Io { message: String, os_error: Option<i32> },
    Other { message: String },
}

impl StoredProblem {
    pub(crate) fn of(error: &StoreError) -> StoredProblem {
        match error {
            StoreError::CorruptRecord { line, column, message, .. } => {
                StoredProblem::Corrupt { line: *line, column: *column, message: message.clone() }
            }
            StoreError::NotARun { source, .. } => {
                StoredProblem::NotARun { path: source.path.clone(), problem: source.problem.clone() }
            }
            StoreError::InvalidRunId { reason, .. } => StoredProblem::InvalidId { reason: reason.clone() },
            StoreError::Io { source, .. } => {
                StoredProblem::Io { message: source.to_string(), os_error: source.raw_os_error() }
            }
            other => StoredProblem::Other { message: other.to_string() },
        }
    }

    /// The error again, naming `location` (the file's path).
    pub(crate) fn to_error(&self, location: String, run_id: &str) -> StoreError {
        match self.clone() {
            StoredProblem::Corrupt { line, column, message } => {
                StoreError::CorruptRecord { location, line, column, message }
            }
            StoredProblem::NotARun { path, problem } => {
                StoreError::NotARun { location, source: RunShapeError { path, problem } }
            }
            // The file is what the operator can find and fix; its id may not even print well.
            StoredProblem::InvalidId { reason } => StoreError::NotARun {
                location,
                source: RunShapeError {
                    path: "id".into(),
                    problem: format!("the file name gives the run id {run_id:?}, which cannot be stored: {reason}"),
                },
            },
            StoredProblem::Io { message, os_error } => StoreError::Io {
                location,
                source: os_error.map_or_else(|| io::Error::other(message), io::Error::from_raw_os_error),
            },
            StoredProblem::Other { message } => StoreError::Database { location, message },
        }
    }

    /// An I/O failure may go away without the file changing (permissions fixed), so such
    /// rows are always re-read.
    fn is_transient(&self) -> bool {
        matches!(self, StoredProblem::Io { .. } | StoredProblem::Other { .. })
    }
}

/// What a row says about its file.
#[derive(Debug, Clone)]
pub(crate) enum Indexed {
    /// A run: its index entry and its encoded [`TreeLeaf`].
    Run(RunIndexEntry, String),
    Problem(StoredProblem),
}

/// One row of the index.
#[derive(Debug, Clone)]
pub(crate) struct FileRow {
    pub(crate) file_name: String,
    pub(crate) id: String,
    pub(crate) mtime_ns: i64,
    pub(crate) size: i64,
    pub(crate) revision: Revision,
    pub(crate) indexed: Indexed,
}

/// The index of one directory.
pub(crate) struct FileIndex {
    dir: PathBuf,
    /// The sidecar database, `None` when the index lives in memory.
    sidecar: Option<PathBuf>,
    location: String,
    /// Larger run files are reported as problems without being read.
    max_run_bytes: u64,
    /// Only ever locked inside blocking tasks, never across an await.
    conn: Mutex<Connection>,
    /// Read-only connections to the sidecar, opened on demand, so that reads that run side
    /// by side (the two halves of the forest's leaves) do not queue for `conn`. Unused for an
    /// in-memory index, which has only `conn`.
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for FileIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileIndex").field("dir", &self.dir).field("sidecar", &self.sidecar).finish_non_exhaustive()
    }
}

impl FileIndex {
    /// Opens the sidecar index of `dir`, or an in-memory one when the sidecar cannot be used
    /// (read-only directory, a file where `.salvage/` should be, a database from a newer
    /// salvage). A sidecar that is not a database (corrupted) is rebuilt.
    ///
    /// With `create: false` (a read-only store) an existing sidecar is used — it is salvage's
    /// own cache of the directory, and keeping it current is what keeps reads fast — but a
    /// missing one is not created: the index is then kept in memory.
    pub(crate) fn open(dir: &Path, create: bool, max_run_bytes: u64) -> Result<FileIndex, StoreError> {
        let sidecar_dir = dir.join(".salvage");
        let sidecar = sidecar_dir.join("index.sqlite");
        if !create && !sidecar.is_file() {
            return FileIndex::in_memory(dir, max_run_bytes);
        }
        let attempt = || -> Result<Connection, StoreError> {
            fs::create_dir_all(&sidecar_dir)
                .map_err(|source| StoreError::Io { location: sidecar_dir.display().to_string(), source })?;
            open_database(&sidecar, &format!("index {}", sidecar.display()))
        };
        let opened = match attempt() {
            Err(StoreError::Database { message, .. }) if is_not_a_database(&message) => {
                tracing::warn!(index = %sidecar.display(), %message, "sidecar index is damaged; rebuilding it");
                for suffix in ["", "-wal", "-shm"] {
                    let _ = fs::remove_file(format!("{}{suffix}", sidecar.display()));
                }
                attempt()
            }
            other => other,
        };
        match opened {
            Ok(conn) => Ok(FileIndex {
                dir: dir.to_owned(),
                location: format!("index {}", sidecar.display()),
                sidecar: Some(sidecar),
                max_run_bytes,
                conn: Mutex::new(conn),
                readers: Mutex::new(Vec::new()),
            }),
            Err(error) => {
                tracing::warn!(
                    dir = %dir.display(), %error,
                    "cannot keep the file store's index next to the runs; indexing in memory (reads work, \
                     each start re-reads every file)"
                );
                FileIndex::in_memory(dir, max_run_bytes)
            }
        }
    }

    pub(crate) fn in_memory(dir: &Path, max_run_bytes: u64) -> Result<FileIndex, StoreError> {
        let location = format!("in-memory index of {}", dir.display());
        let mut conn = Connection::open_in_memory().map_err(|e| sql::database_error(&location, &e))?;
        sql::migrate(&mut conn, MIGRATIONS).map_err(|e| e.into_store_error(&location))?;
        Ok(FileIndex {
            dir: dir.to_owned(),
            sidecar: None,
            location,
            max_run_bytes,
            conn: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// The sidecar database, `None` when the index is in memory.
    pub(crate) fn sidecar(&self) -> Option<&Path> {
        self.sidecar.as_deref()
    }

    fn with<T>(&self, work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        work(&mut conn).map_err(|e| sql::database_error(&self.location, &e))
    }

    /// Runs a read on a connection of its own (see `readers`); on `conn` for an in-memory
    /// index. Only for reads that need no refresh in the same transaction.
    fn read<T>(&self, work: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let Some(sidecar) = &self.sidecar else { return self.with(|conn| work(conn)) };
        let idle = self.readers.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_reader(sidecar).map_err(|e| sql::database_error(&self.location, &e))?,
        };
        let result = work(&conn).map_err(|e| sql::database_error(&self.location, &e));
        self.readers.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
        result
    }

    fn file_location(&self, file_name: &str) -> String {
        self.dir.join(file_name).display().to_string()
    }

    /// Records rows written through the store (one transaction).
    pub(crate) fn record(&self, rows: &[FileRow]) -> Result<(), StoreError> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for row in rows {
                upsert(&tx, row)?;
            }
            tx.commit()
        })
    }

    /// Index entries matching `query`, plus every file that cannot be served (any of them
    /// might have matched).
    pub(crate) fn list(&self, query: &RunQuery) -> Result<Partial<RunIndexEntry>, StoreError> {
        let (statement, values) = sql::list_sql("files", query, Some(RUNS_ONLY));
        let mut out = self.entries(&statement, &values)?;
        out.items.sort_by(RunIndexEntry::listing_order);
        out.problems.extend(self.problems()?);
        Ok(out)
    }

    pub(crate) fn subtree(&self, root_id: &str) -> Result<Partial<RunIndexEntry>, StoreError> {
        let root_problem = self.one(root_id)?;
        if let Err(error) = root_problem {
            return Ok(Partial {
                items: Vec::new(),
                problems: vec![StoreProblem { run_id: Some(root_id.into()), error }],
            });
        }
        let statement = sql::subtree_sql("files", Some(RUNS_ONLY));
        let members = self.entries(&statement, &[root_id.to_owned()])?;
        let mut problems = members.problems;
        problems.extend(self.problems()?);
        Ok(Partial { items: breadth_first(root_id, members.items), problems })
    }

    /// The entry of one run; `Err` inside when its file cannot be served.
    pub(crate) fn one(&self, run_id: &str) -> Result<Result<Option<RunIndexEntry>, StoreError>, StoreError> {
        let row = self.with(|conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT problem, file_name, {} FROM files WHERE id = ?1",
                sql::ENTRY_COLUMNS
            ))?;
            statement
                .query_row([run_id], |row| {
                    let problem: Option<String> = row.get(0)?;
                    let file_name: String = row.get(1)?;
                    let entry = if problem.is_none() { Some(sql::entry_from_row(row, 2)) } else { None };
                    Ok((problem, file_name, entry))
                })
                .optional()
        })?;
        Ok(match row {
            None => Ok(None),
            Some((Some(problem), file_name, _)) => Err(self.problem_error(&file_name, run_id, &problem)),
            Some((None, _, Some(Ok(entry)))) => Ok(Some(entry)),
            Some((None, file_name, entry)) => Err(StoreError::Database {
                location: format!("{} ({file_name})", self.location),
                message: entry.and_then(Result::err).unwrap_or_default(),
            }),
        })
    }

    fn problem_error(&self, file_name: &str, run_id: &str, problem: &str) -> StoreError {
        let location = self.file_location(file_name);
        match serde_json::from_str::<StoredProblem>(problem) {
            Ok(stored) => stored.to_error(location, run_id),
            Err(_) => StoreError::Database { location, message: problem.to_owned() },
        }
    }

    fn problems(&self) -> Result<Vec<StoreProblem>, StoreError> {
        let rows = self.with(|conn| {
            let mut statement = conn.prepare_cached(PROBLEMS_SQL)?;
            let rows = statement.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(rows
            .into_iter()
            .map(|(file_name, id, problem)| StoreProblem {
                error: self.problem_error(&file_name, &id, &problem),
                run_id: Some(id),
            })
            .collect())
    }

    fn entries(&self, statement: &str, values: &[String]) -> Result<Partial<RunIndexEntry>, StoreError> {
        let results = self.with(|conn| {
            let mut prepared = conn.prepare_cached(statement)?;
            let mut rows = prepared.query(sql::as_params(values).as_slice())?;
            let mut results = Vec::new();
            while let Some(row) = rows.next()? {
                results.push((sql::entry_from_row(row, 0), row.get::<_, Option<String>>(0).ok().flatten()));
            }
            Ok(results)
        })?;
        let mut out = Partial::default();
        for (entry, id) in results {
            match entry {
                Ok(entry) => out.items.push(entry),
                Err(message) => out.problems.push(StoreProblem {
                    error: StoreError::Database {
                        location: format!("{} ({})", self.location, id.as_deref().unwrap_or("?")),
                        message,
                    },
                    run_id: id,
                }),
            }
        }
        Ok(out)
    }

    /// Brings the index in line with the directory: new and changed files are read, removed
    /// ones dropped, unchanged ones only stat'ed. Streams the directory in batches; other
    /// readers and writers of the index get their turn between batches. A batch's rows are
    /// written on a thread of their own while the next batch is read, so that a first index
    /// build keeps both cores parsing.
    pub(crate) fn refresh(&self) -> Result<RefreshStats, StoreError> {
        let started = Instant::now();
        let mut stats = RefreshStats::default();
        // Without rows (a first index build) there is nothing to compare a file with: every
        // file is read, and no row is looked up. A row saved meanwhile by another process is
        // still kept (see `apply`).
        let empty: bool =
            self.with(|conn| conn.query_row("SELECT NOT EXISTS (SELECT 1 FROM files)", [], |row| row.get(0)))?;
        std::thread::scope(|scope| {
            let (changes_tx, changes_rx) = mpsc::sync_channel::<Vec<Change>>(1);
            let writer = scope.spawn(move || changes_rx.into_iter().try_for_each(|changes| self.apply(&changes)));
            let scanned = self.scan(&mut stats, empty, |changes| changes_tx.send(changes).is_ok());
            drop(changes_tx);
            let written = writer.join().map_err(|_| StoreError::Task("the file index writer panicked".into()))?;
            // A failed write stops the scan (the writer takes no more): its error is the cause.
            written.and(scanned)
        })?;
        self.sweep(&mut stats)?;
        stats.problems = self.with(|conn| {
            conn.query_row("SELECT COUNT(*) FROM files WHERE problem IS NOT NULL", [], |row| row.get::<_, i64>(0))
        })? as u64;
        stats.elapsed = started.elapsed();
        tracing::debug!(dir = %self.dir.display(), ?stats, "file store index refreshed");
        Ok(stats)
    }

    /// Streams the directory in batches and hands each batch's changes to `write`, which says
    /// whether the writer still takes them (it stops at its first error).
    fn scan(
        &self,
        stats: &mut RefreshStats,
        empty: bool,
        mut write: impl FnMut(Vec<Change>) -> bool,
    ) -> Result<(), StoreError> {
        let dir_error = |source: io::Error| StoreError::Io { location: self.dir.display().to_string(), source };
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(dir_error(error)),
        };
        let mut batch = Vec::with_capacity(BATCH);
        for entry in entries {
            let entry = entry.map_err(dir_error)?;
            let os_name = entry.file_name();
            let Some(name) = os_name.to_str() else {
                tracing::warn!(dir = %self.dir.display(), file = ?os_name, "skipping a file whose name is not UTF-8");
                continue;
            };
            if name.starts_with('.') {
                if name.ends_with(TEMP_SUFFIX) && remove_if_stale(&self.dir.join(name)) {
                    stats.stale_temps_removed += 1;
                }
                continue;
            }
            let Some(id) = name.strip_suffix(".json") else { continue };
            stats.files += 1;
            batch.push(Candidate { file_name: name.to_owned(), id: id.to_owned(), entry });
            if batch.len() >= BATCH {
                let changes = self.examine_batch(&mut batch, stats, empty)?;
                if !changes.is_empty() && !write(changes) {
                    return Ok(());
                }
            }
        }
        let changes = self.examine_batch(&mut batch, stats, empty)?;
        if !changes.is_empty() {
            write(changes);
        }
        Ok(())
    }

    /// What must change in the index for the files of `batch` (which it empties).
    fn examine_batch(
        &self,
        batch: &mut Vec<Candidate>,
        stats: &mut RefreshStats,
        empty: bool,
    ) -> Result<Vec<Change>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // 1. The rows of the batch's files, to compare their stat with.
        let known: Vec<Option<KnownRow>> = if empty {
            batch.iter().map(|_| None).collect()
        } else {
            self.with(|conn| {
                let mut statement =
                    conn.prepare_cached("SELECT mtime_ns, size, revision, problem FROM files WHERE id = ?1")?;
                batch
                    .iter()
                    .map(|candidate| {
                        statement
                            .query_row([&candidate.id], |row| {
                                Ok(KnownRow {
                                    mtime_ns: row.get(0)?,
                                    size: row.get(1)?,
                                    revision: row.get(2)?,
                                    problem: row.get(3)?,
                                })
                            })
                            .optional()
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()
            })?
        };
        // 2. Stat each file and read what must be read, without holding the index.
        let items: Vec<Item> = batch.drain(..).zip(known).collect();
        let mut changes = Vec::new();
        for (action, work, version) in self.examine_all(items)? {
            match work {
                Work::Vanished => continue,
                Work::Verified => stats.verified += 1,
                Work::Parsed => stats.parsed += 1,
                Work::Nothing => {}
            }
            stats.indexed += 1;
            if !matches!(action, Action::Unchanged) {
                changes.push((action, version));
            }
        }
        Ok(changes)
    }

    /// Applies a batch's changes in one transaction. A row that changed since its batch
    /// looked it up was written by a save (of this or another process) while the file was
    /// being read: the save's row is newer than what was read, so it is kept.
    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut current = tx.prepare_cached("SELECT mtime_ns, size, revision FROM files WHERE id = ?1")?;
                let mut restat = tx.prepare_cached("UPDATE files SET mtime_ns = ?2, size = ?3 WHERE id = ?1")?;
                for (action, version) in changes {
                    let (Action::Restat(id, _) | Action::Write(FileRow { id, .. })) = action else { continue };
                    let now: Option<RowVersion> =
                        current.query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?))).optional()?;
                    if now != *version {
                        continue;
                    }
                    match action {
                        Action::Restat(id, stat) => {
                            restat.execute(params![id, stat.recorded_mtime(), stat.size])?;
                        }
                        Action::Write(row) => upsert(&tx, row)?,
                        Action::Unchanged => {}
                    }
                }
            }
            tx.commit()
        })
    }

    /// Examines a batch on every core: reading and parsing new files is most of the work of
    /// indexing a store for the first time.
    fn examine_all(&self, items: Vec<Item>) -> Result<Vec<(Action, Work, Option<RowVersion>)>, StoreError> {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
        let per_worker = items.len().div_ceil(workers).max(1);
        let mut chunks: Vec<Vec<Item>> = Vec::with_capacity(workers);
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            chunks.push(items.by_ref().take(per_worker).collect());
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .into_iter()
                            .map(|(candidate, known)| {
                                let version = known.as_ref().map(KnownRow::version);
                                let stat = candidate.stat(&self.dir);
                                let (action, work) = self.examine(candidate, stat, known);
                                (action, work, version)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut out = Vec::new();
            for handle in handles {
                out.extend(handle.join().map_err(|_| StoreError::Task("a file index worker panicked".into()))?);
            }
            Ok(out)
        })
    }

    /// Decides what a file needs, reading it only when its row cannot be trusted.
    fn examine(&self, candidate: Candidate, stat: io::Result<FileStat>, known: Option<KnownRow>) -> (Action, Work) {
        let path = self.dir.join(&candidate.file_name);
        let stat = match stat {
            Ok(stat) => stat,
            // A symlink whose target is gone is still an entry of the directory: reported, not
            // skipped (it may be the run someone is looking for).
            Err(error) if error.kind() == io::ErrorKind::NotFound && !crate::limits::is_broken_symlink(&path) => {
                return (Action::Unchanged, Work::Vanished);
            }
            Err(error) => {
                let refused = match crate::limits::read_regular_file(&path, self.max_run_bytes) {
                    Err(refused) if !refused.is_not_found() => refused.into_io_error(),
                    _ => error,
                };
                return (Action::Write(self.problem_row(&candidate, FileStat::unknown(), &refused)), Work::Nothing);
            }
        };
        let transient = known
            .as_ref()
            .and_then(|k| k.problem.as_deref())
            .is_some_and(|problem| serde_json::from_str::<StoredProblem>(problem).map_or(true, |p| p.is_transient()));
        // A file indexed under a larger size limit than this store's is looked at again.
        let within_limit = u64::try_from(stat.size).is_ok_and(|size| size <= self.max_run_bytes);
        let transient = transient || !within_limit;
        let verify_against = match &known {
            Some(k) if !transient && k.size == stat.size && k.mtime_ns == stat.mtime_ns && k.mtime_ns != RACY => {
                return (Action::Unchanged, Work::Nothing);
            }
            Some(k) if !transient && k.size == stat.size && k.mtime_ns == RACY => Some(k.revision),
            _ => None,
        };
        // Only a regular file within the size limit is read: a FIFO would block the refresh
        // for ever, a symlink to a device or a sparse giant would exhaust memory.
        let bytes = match crate::limits::read_regular_file(&path, self.max_run_bytes) {
            Ok(bytes) => bytes,
            Err(refused) if refused.is_not_found() => return (Action::Unchanged, Work::Vanished),
            Err(refused) => {
                return (Action::Write(self.problem_row(&candidate, stat, &refused.into_io_error())), Work::Nothing);
            }
        };
        let revision = content_revision(&bytes);
        if verify_against.is_some_and(|known| known == i64::try_from(revision.0).unwrap_or(-1)) {
            return (Action::Restat(candidate.id, stat), Work::Verified);
        }
        let location = path.display().to_string();
        let indexed = match validate_run_id(&candidate.id)
            .and_then(|()| index_run_file(&location, &candidate.id, &bytes, revision))
        {
            Ok((entry, tree_leaf)) => Indexed::Run(entry, tree_leaf),
            Err(error) => Indexed::Problem(StoredProblem::of(&error)),
        };
        let row = FileRow {
            file_name: candidate.file_name,
            id: candidate.id,
            mtime_ns: stat.recorded_mtime(),
            size: stat.size,
            revision,
            indexed,
        };
        (Action::Write(row), Work::Parsed)
    }

    fn problem_row(&self, candidate: &Candidate, stat: FileStat, error: &io::Error) -> FileRow {
        FileRow {
            file_name: candidate.file_name.clone(),
            id: candidate.id.clone(),
            mtime_ns: RACY,
            size: stat.size,
            revision: Revision(0),
            indexed: Indexed::Problem(StoredProblem::Io { message: error.to_string(), os_error: error.raw_os_error() }),
        }
    }

    /// The [`TreeLeaf`]s indexed for `run_ids` (those of runs whose rows hold a current one;
    /// the others are missing from the map).
    pub(crate) fn tree_leaves(&self, run_ids: &[String]) -> Result<HashMap<String, TreeLeaf>, StoreError> {
        self.read(|conn| {
            let mut found = HashMap::with_capacity(run_ids.len());
            for (chunk, placeholders) in sql::in_chunks(run_ids, 500) {
                let mut statement = conn.prepare_cached(&format!(
                    "SELECT id, tree_leaf FROM files WHERE problem IS NULL AND id IN ({placeholders})"
                ))?;
                let mut rows = statement.query(rusqlite::params_from_iter(chunk))?;
                while let Some(row) = rows.next()? {
                    if let rusqlite::types::ValueRef::Text(bytes) = row.get_ref(1)?
                        && let Some(leaf) = TreeLeaf::decode(bytes)
                    {
                        found.insert(row.get(0)?, leaf);
                    }
                }
            }
            Ok(found)
        })
    }

    /// Drops the rows of files that are gone. Every file the scan found has a row, so when
    /// the table holds as many rows as the scan indexed there is nothing to drop; otherwise
    /// each row's file is checked (a row saved by another process during the scan is kept).
    fn sweep(&self, stats: &mut RefreshStats) -> Result<(), StoreError> {
        let rows: i64 = self.with(|conn| conn.query_row("SELECT COUNT(*) FROM files", [], |row| row.get(0)))?;
        if u64::try_from(rows).unwrap_or(0) <= stats.indexed {
            return Ok(());
        }
        let mut after = String::new();
        loop {
            let page: Vec<(String, String)> = self.with(|conn| {
                let mut statement =
                    conn.prepare_cached("SELECT id, file_name FROM files WHERE id > ?1 ORDER BY id LIMIT ?2")?;
                let rows = statement.query_map(params![after, BATCH as i64], |row| Ok((row.get(0)?, row.get(1)?)))?;
                rows.collect()
            })?;
            let Some((last, _)) = page.last() else { return Ok(()) };
            after = last.clone();
            let gone: Vec<&String> = page
                .iter()
                .filter(|(_, file_name)| {
                    matches!(fs::symlink_metadata(self.dir.join(file_name)), Err(e) if e.kind() == io::ErrorKind::NotFound)
                })
                .map(|(id, _)| id)
                .collect();
            if gone.is_empty() {
                continue;
            }
            stats.removed += gone.len() as u64;
            self.with(|conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                {
                    let mut delete = tx.prepare_cached("DELETE FROM files WHERE id = ?1")?;
                    for id in &gone {
                        delete.execute([id])?;
                    }
                }
                tx.commit()
            })?;
        }
    }
}

fn open_database(path: &Path, location: &str) -> Result<Connection, StoreError> {
    let db = |e: rusqlite::Error| sql::database_error(location, &e);
    let mut conn = Connection::open(path).map_err(db)?;
    // The index can always be rebuilt from the files: NORMAL is enough. One connection per
    // store, so a generous page cache: at a million runs the index is a few hundred MB.
    sql::configure(&conn, "NORMAL", 64 * 1024).map_err(db)?;
    sql::migrate(&mut conn, MIGRATIONS).map_err(|e| e.into_store_error(location))?;
    Ok(conn)
}

/// A connection for [`FileIndex::read`]: the sidecar is in WAL mode, so it reads beside the
/// store's own connection without waiting for it.
fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    sql::configure_read_only(&conn, 16 * 1024)?;
    Ok(conn)
}

fn is_not_a_database(message: &str) -> bool {
    message.contains("not a database") || message.contains("malformed")
}

fn upsert(tx: &Transaction<'_>, row: &FileRow) -> rusqlite::Result<()> {
    let mut statement = tx.prepare_cached(
        "INSERT INTO files
            (file_name, id, mtime_ns, size, root_run_id, parent_run_id, status, created_at, revision, problem,
             tree_leaf)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (id) DO UPDATE SET
            file_name = excluded.file_name, mtime_ns = excluded.mtime_ns, size = excluded.size,
            root_run_id = excluded.root_run_id, parent_run_id = excluded.parent_run_id, status = excluded.status,
            created_at = excluded.created_at, revision = excluded.revision, problem = excluded.problem,
            tree_leaf = excluded.tree_leaf",
    )?;
    let revision = i64::try_from(row.revision.0).unwrap_or(i64::MAX);
    match &row.indexed {
        Indexed::Run(entry, tree_leaf) => statement.execute(params![
            row.file_name,
            row.id,
            row.mtime_ns,
            row.size,
            entry.root_run_id,
            entry.parent_run_id,
            entry.status.as_str(),
            entry.created_at,
            revision,
            Option::<String>::None,
            tree_leaf
        ])?,
        Indexed::Problem(problem) => {
            let problem = serde_json::to_string(problem).unwrap_or_else(|e| format!("unrecorded problem: {e}"));
            statement.execute(params![
                row.file_name,
                row.id,
                row.mtime_ns,
                row.size,
                Option::<String>::None,
                Option::<String>::None,
                Option::<String>::None,
                Option::<String>::None,
                revision,
                problem,
                Option::<String>::None
            ])?
        }
    };
    Ok(())
}

struct Candidate {
    file_name: String,
    id: String,
    entry: fs::DirEntry,
}

impl Candidate {
    /// The file's stat: through its directory entry (a `statx` relative to the open
    /// directory, no path walk) unless it is a symlink, which is followed as `fs::metadata`
    /// follows it.
    fn stat(&self, dir: &Path) -> io::Result<FileStat> {
        match self.entry.file_type() {
            Ok(file_type) if !file_type.is_symlink() => self.entry.metadata().map(|m| FileStat::of_metadata(&m)),
            _ => FileStat::of(&dir.join(&self.file_name)),
        }
    }
}

struct KnownRow {
    mtime_ns: i64,
    size: i64,
    revision: i64,
    problem: Option<String>,
}

/// A directory entry with its row (if any), ready to be examined.
type Item = (Candidate, Option<KnownRow>);

/// A change to the index and the version of the row it was decided against.
type Change = (Action, Option<RowVersion>);

/// What examining a file cost.
#[derive(Debug, Clone, Copy)]
enum Work {
    Nothing,
    /// Read and hashed: same content as indexed.
    Verified,
    /// Read and parsed.
    Parsed,
    /// Gone between listing and reading.
    Vanished,
}

/// `(mtime_ns, size, revision)` of a row: what a refresh saw before reading the file.
type RowVersion = (i64, i64, i64);

impl KnownRow {
    fn version(&self) -> RowVersion {
        (self.mtime_ns, self.size, self.revision)
    }
}

enum Action {
    /// Same `(mtime, size)` as indexed: nothing to do.
    Unchanged,
    /// Same content (verified by hash), new `(mtime, size)`.
    Restat(String, FileStat),
    Write(FileRow),
}

/// What a refresh compares: modification time and size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileStat {
    pub(crate) mtime_ns: i64,
    pub(crate) size: i64,
    /// Modified within [`RACY_WINDOW`] of being looked at.
    racy: bool,
}

impl FileStat {
    pub(crate) fn of(path: &Path) -> io::Result<FileStat> {
        fs::metadata(path).map(|metadata| FileStat::of_metadata(&metadata))
    }

    fn of_metadata(metadata: &fs::Metadata) -> FileStat {
        let modified = metadata.modified().ok();
        let mtime_ns = modified
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_nanos()).ok())
            .unwrap_or(RACY);
        let racy = modified.is_none_or(|t| SystemTime::now().duration_since(t).map_or(true, |age| age < RACY_WINDOW));
        FileStat { mtime_ns, size: i64::try_from(metadata.len()).unwrap_or(i64::MAX), racy }
    }

    fn unknown() -> FileStat {
        FileStat { mtime_ns: RACY, size: -1, racy: true }
    }

    /// The mtime to store: [`RACY`] when it cannot be trusted yet.
    pub(crate) fn recorded_mtime(&self) -> i64 {
        if self.racy { RACY } else { self.mtime_ns }
    }
}

/// Removes a temp file left by a crashed writer; returns whether it did.
pub(crate) fn remove_if_stale(path: &Path) -> bool {
    let stale = fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_some_and(|age| age > STALE_TEMP_AGE);
    if stale && fs::remove_file(path).is_ok() {
        tracing::warn!(file = %path.display(), "removed a temp file left by an interrupted save");
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_problems_come_back_as_the_same_errors() {
        let corrupt = StoreError::CorruptRecord { location: "x".into(), line: 3, column: 7, message: "EOF".into() };
        let again = StoredProblem::of(&corrupt).to_error("/runs/a.json".into(), "a");
        assert_eq!(again.to_string(), "/runs/a.json:3:7: EOF");
        let io_error = StoreError::Io { location: "x".into(), source: io::Error::from_raw_os_error(13) };
        let again = StoredProblem::of(&io_error).to_error("/runs/b.json".into(), "b");
        assert!(matches!(&again, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied));
        assert!(StoredProblem::of(&io_error).is_transient());
    }

    #[test]
    fn list_queries_use_the_sidecar_indexes() {
        let index = FileIndex::in_memory(Path::new("/nonexistent"), crate::limits::DEFAULT_MAX_RUN_BYTES)
            .unwrap_or_else(|e| panic!("{e}"));
        let plans = index
            .with(|conn| {
                let mut plans = Vec::new();
                for query in
                    [RunQuery::in_trace("r"), RunQuery::children_of("p"), RunQuery::with_status("failed".into())]
                {
                    let (statement, values) = sql::list_sql("files", &query, Some(RUNS_ONLY));
                    plans.push(sql::query_plan(conn, &statement, &values)?.join(" | "));
                }
                Ok(plans)
            })
            .unwrap_or_else(|e| panic!("{e}"));
        for (plan, index) in plans.iter().zip(["files_by_root", "files_by_parent", "files_by_status"]) {
            assert!(plan.contains(index), "{plan}");
        }
        let problems =
            index.with(|conn| sql::query_plan(conn, PROBLEMS_SQL, &[])).unwrap_or_else(|e| panic!("{e}")).join(" | ");
        assert!(problems.contains("files_with_problems"), "listing problems reads only problem rows: {problems}");
        let subtree = index
            .with(|conn| sql::query_plan(conn, &sql::subtree_sql("files", Some(RUNS_ONLY)), &["r".to_owned()]))
            .unwrap_or_else(|e| panic!("{e}"))
            .join(" | ");
        assert!(subtree.contains("files_by_parent"), "{subtree}");
        let scans: Vec<&str> = subtree.split(" | ").filter(|step| step.starts_with("SCAN")).collect();
        assert_eq!(scans, ["SCAN tree", "SCAN tree"], "only the walk itself is scanned: {subtree}");
    }
}
