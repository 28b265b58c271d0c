//! SQLite plumbing shared by the `sqlite:` store and the file store's sidecar index: connection
//! setup, the schema migrator and the index queries (both keep the same indexed columns).
//!
//! No migration crate: the schema is a handful of tables owned by this crate, `PRAGMA
//! user_version` records how many migrations ran, and each migration is one function.

use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row, ToSql, Transaction, TransactionBehavior};

use super::{Revision, RunIndexEntry, RunQuery, StoreError};
use crate::model::RunStatus;

/// One schema step. Migration `n` (0-based) brings the database to `user_version = n + 1`.
pub(crate) type Migration = fn(&Transaction<'_>) -> rusqlite::Result<()>;

/// How long a connection waits for another writer (another task or process) before giving up.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

/// Per-connection settings. `synchronous` is `FULL` for the run store (every commit is on disk)
/// and `NORMAL` for caches that can be rebuilt; `cache_kib` bounds the page cache (SQLite's
/// default, 2 MiB, makes a bulk import spend its time re-reading index pages).
pub(crate) fn configure(conn: &Connection, synchronous: &str, cache_kib: i64) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    // `journal_mode` answers with the mode in force; an in-memory database stays `memory`.
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Per-connection settings of a read-only connection: no `journal_mode` change (that is a
/// write, and would switch someone else's database to WAL), `query_only` so that nothing can
/// write through it even by mistake.
pub(crate) fn configure_read_only(conn: &Connection, cache_kib: i64) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(())
}

/// `PRAGMA application_id` of salvage's databases ("SALV"), so that they can be told from
/// other applications' SQLite files. Databases created before it was set are recognised by
/// their schema ([`identify`]).
pub(crate) const APPLICATION_ID: i32 = 0x5341_4C56;

/// What an SQLite file holds, as far as salvage is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    /// No tables at all: a new database (salvage may create its schema in it).
    Empty,
    /// salvage's schema at this version.
    Salvage { version: u32 },
    /// Someone else's database: why it is not salvage's.
    Foreign(String),
}

/// Tells a salvage database from another application's, without writing anything: the
/// application id when it is set; else the schema version and a `runs` table with salvage's
/// columns (`required_columns`); a database with tables but neither is not salvage's.
pub(crate) fn identify(
    conn: &Connection,
    required_table: &str,
    required_columns: &[&str],
) -> rusqlite::Result<Identity> {
    let application_id: i32 = conn.query_row("PRAGMA application_id", [], |row| row.get(0))?;
    let version: u32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if application_id == APPLICATION_ID {
        return Ok(Identity::Salvage { version });
    }
    if application_id != 0 {
        return Ok(Identity::Foreign(format!("its application id is {application_id:#x}, not salvage's")));
    }
    let mut statement =
        conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?;
    let tables = statement.query_map([], |row| row.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
    if tables.is_empty() && version == 0 {
        return Ok(Identity::Empty);
    }
    let shown = |tables: &[String]| {
        let mut names: Vec<&str> = tables.iter().take(5).map(String::as_str).collect();
        if tables.len() > 5 {
            names.push("...");
        }
        names.join(", ")
    };
    if version == 0 {
        return Ok(Identity::Foreign(format!("it holds tables salvage did not create ({})", shown(&tables))));
    }
    if !tables.iter().any(|table| table == required_table) {
        return Ok(Identity::Foreign(format!(
            "it has schema version {version} but no `{required_table}` table (its tables: {})",
            shown(&tables)
        )));
    }
    let mut columns_statement = conn.prepare(&format!("SELECT name FROM pragma_table_info('{required_table}')"))?;
    let columns =
        columns_statement.query_map([], |row| row.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
    if let Some(missing) = required_columns.iter().find(|column| !columns.iter().any(|c| c == *column)) {
        return Ok(Identity::Foreign(format!("its `{required_table}` table has no `{missing}` column")));
    }
    Ok(Identity::Salvage { version })
}

/// Why a database could not be brought to the current schema.
#[derive(Debug)]
pub(crate) enum MigrateError {
    /// The database was written by a newer salvage (more migrations than this build knows).
    TooNew {
        found: u32,
        known: u32,
    },
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(error: rusqlite::Error) -> Self {
        MigrateError::Sql(error)
    }
}

impl MigrateError {
    pub(crate) fn into_store_error(self, location: &str) -> StoreError {
        match self {
            MigrateError::TooNew { found, known } => StoreError::Database {
                location: location.to_owned(),
                message: format!(
                    "schema version {found} is newer than this salvage understands ({known}); use a newer salvage"
                ),
            },
            MigrateError::Sql(error) => database_error(location, &error),
        }
    }
}

/// Runs the migrations the database has not seen yet, each in its own write transaction.
/// The version is re-read inside the transaction, so two processes opening a fresh database
/// at once do not both apply a step.
pub(crate) fn migrate(conn: &mut Connection, migrations: &[Migration]) -> Result<u32, MigrateError> {
    let known = u32::try_from(migrations.len()).unwrap_or(u32::MAX);
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: u32 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if version > known {
            return Err(MigrateError::TooNew { found: version, known });
        }
        let Some(step) = migrations.get(version as usize) else {
            return Ok(version);
        };
        step(&tx)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
}

pub(crate) fn database_error(location: &str, error: &rusqlite::Error) -> StoreError {
    crate::telemetry::store_error("sqlite", "database");
    StoreError::Database { location: location.to_owned(), message: error.to_string() }
}

/// The columns [`entry_from_row`] reads, in its order.
pub(crate) const ENTRY_COLUMNS: &str = "id, root_run_id, parent_run_id, status, created_at, revision";

/// Reads an index entry from the [`ENTRY_COLUMNS`] starting at `first`. A column of the wrong
/// type (someone edited the database by hand) is an error naming the column, so the caller
/// can report that one row and go on.
pub(crate) fn entry_from_row(row: &Row<'_>, first: usize) -> Result<RunIndexEntry, String> {
    let text = |index: usize, name: &str| -> Result<Option<String>, String> {
        match row.get_ref(first + index).map_err(|e| e.to_string())? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(bytes) => {
                String::from_utf8(bytes.to_vec()).map(Some).map_err(|_| format!("column {name} is not UTF-8"))
            }
            other => Err(format!("column {name} holds {:?}, expected text", other.data_type())),
        }
    };
    let required = |index: usize, name: &str| text(index, name)?.ok_or_else(|| format!("column {name} is NULL"));
    let revision = match row.get_ref(first + 5).map_err(|e| e.to_string())? {
        ValueRef::Integer(value) => u64::try_from(value).map_err(|_| "column revision is negative".to_owned())?,
        other => return Err(format!("column revision holds {:?}, expected an integer", other.data_type())),
    };
    Ok(RunIndexEntry {
        id: required(0, "id")?,
        root_run_id: required(1, "root_run_id")?,
        parent_run_id: text(2, "parent_run_id")?,
        status: RunStatus::parse(&required(3, "status")?),
        created_at: text(4, "created_at")?,
        revision: Revision(revision),
    })
}

/// `SELECT <ENTRY_COLUMNS> FROM <table> WHERE ... ORDER BY created_at, id` for a query, with
/// its parameters. `always` is an extra condition (e.g. `problem IS NULL`).
///
/// Every filter column leads an index that continues with `(created_at, id)`, so the lookup
/// and the ordering both come from the index.
pub(crate) fn list_sql(table: &str, query: &RunQuery, always: Option<&str>) -> (String, Vec<String>) {
    let mut conditions: Vec<String> = always.map(str::to_owned).into_iter().collect();
    let mut params = Vec::new();
    let mut filter = |column: &str, value: &Option<String>| {
        if let Some(value) = value {
            params.push(value.clone());
            conditions.push(format!("{column} = ?{}", params.len()));
        }
    };
    filter("parent_run_id", &query.parent_run_id);
    filter("root_run_id", &query.root_run_id);
    filter("status", &query.status.as_ref().map(|status| status.as_str().to_owned()));
    let mut sql = format!("SELECT {ENTRY_COLUMNS} FROM {table}");
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(" ORDER BY created_at, id");
    (sql, params)
}

/// The members of a run's subtree: the recursive walk down `parent_run_id` that the default
/// [`super::RunStore::subtree`] does, as one query. `UNION` (not `UNION ALL`) drops rows
/// already produced, which is what makes a lineage cycle terminate. `CROSS JOIN` keeps the
/// walk's rows on the outside (SQLite does not reorder it), so each member is one lookup by
/// id instead of a scan of the table.
pub(crate) fn subtree_sql(table: &str, always: Option<&str>) -> String {
    let condition = always.map(|c| format!(" AND {c}")).unwrap_or_default();
    format!(
        "WITH RECURSIVE tree(id) AS (
            SELECT id FROM {table} WHERE id = ?1{condition}
            UNION
            SELECT child.id FROM {table} AS child JOIN tree ON child.parent_run_id = tree.id
            WHERE 1 = 1{condition_child}
        )
        SELECT {columns} FROM tree CROSS JOIN {table} AS run ON run.id = tree.id",
        condition_child = always.map(|c| format!(" AND child.{c}")).unwrap_or_default(),
        columns = ENTRY_COLUMNS.split(", ").map(|c| format!("run.{c}")).collect::<Vec<_>>().join(", "),
    )
}

/// The families below `roots` seeds (`(?, ?, ?)` each: a root's id, parent and creation
/// time), each member with its root and its lineage fields. The walk down reads only the
/// `(parent_run_id, created_at, id)` index, never a row: the seeds bring the roots' own fields.
/// `UNION` ends a walk around a lineage cycle (the cut run comes back as its seed). One query
/// per batch of families: a recursive query's setup costs as much as a small family's rows.
pub(crate) fn families_sql(table: &str, roots: usize) -> String {
    let seeds = vec!["(?, ?, ?)"; roots].join(", ");
    format!(
        "WITH RECURSIVE
            seed(id, parent, created_at) AS (VALUES {seeds}),
            tree(root, id, parent, created_at) AS (
                SELECT id, id, parent, created_at FROM seed
                UNION
                SELECT tree.root, child.id, child.parent_run_id, child.created_at
                FROM {table} AS child JOIN tree ON child.parent_run_id = tree.id
            )
        SELECT root, id, parent, created_at FROM tree"
    )
}

/// Parameters as `&dyn ToSql`, for `params_from_iter`-style calls over owned strings.
/// The distinct `ids` in chunks of at most `size`, each with the `?, ?, …` of its `IN (…)`.
pub(crate) fn in_chunks(ids: &[String], size: usize) -> Vec<(Vec<&String>, String)> {
    let mut unique: Vec<&String> = ids.iter().collect();
    unique.sort();
    unique.dedup();
    unique.chunks(size).map(|chunk| (chunk.to_vec(), vec!["?"; chunk.len()].join(", "))).collect()
}

pub(crate) fn as_params(values: &[String]) -> Vec<&dyn ToSql> {
    values.iter().map(|value| value as &dyn ToSql).collect()
}

/// The `EXPLAIN QUERY PLAN` lines of a statement (tests check that lookups use an index).
#[cfg(test)]
pub(crate) fn query_plan(conn: &Connection, sql: &str, params: &[String]) -> rusqlite::Result<Vec<String>> {
    let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    let rows = statement.query_map(as_params(params).as_slice(), |row| row.get::<_, String>(3))?;
    rows.collect()
}
