//! `postgres://…` — runs, executions, journals and state documents in PostgreSQL, so that
//! several salvage processes on several machines can share one store.
//!
//! The same tables, columns and semantics as `sqlite:` ([`super::SqliteStore`]): run bodies as
//! `text` (key order and every unknown key survive), revisions counting saves, compare-and-set
//! on every save, the journal append-only with gap-free sequence numbers, the same listing
//! orders (byte order, runs without a creation time first), indexed lookups. The schema lives
//! in whatever schema the connection's `search_path` selects (`public` unless the URL says
//! `?options=-csearch_path%3Dname`), so several stores can share a database.
//!
//! - **Saves of runs are serialised** by a transaction-scoped advisory lock per schema: the
//!   compare-and-set check, the new `change_seq` (`nextval('run_changes')`) and the commit
//!   happen in that order, one writer at a time, so change numbers are committed in increasing
//!   order and a follower reading [`PostgresStore::changes_since`] can never step over a save
//!   that commits later with a smaller number.
//! - **Every run save notifies** the store's channel (`salvage_runs` in the `public` schema)
//!   in the same transaction, with the highest change number it committed;
//!   [`PostgresStore::listen`] turns those into [`ListenEvent`]s from a dedicated connection
//!   that reconnects by itself and says so, so that the caller catches up.
//! - **Executions, journals and state documents** are compare-and-set with single statements
//!   (`INSERT … ON CONFLICT`, `UPDATE … WHERE revision = $n`), which PostgreSQL makes atomic
//!   across processes.
//!
//! - **Claims, leases, fencing, replicas and leadership** for several `salvage serve` replicas
//!   (`postgres/claims.rs`, schema version 4): claims taken with `FOR UPDATE SKIP LOCKED` and
//!   leased on the database clock, expired ones rescued by the same query with a new epoch;
//!   [`FencedStore`], whose every write (the same code path as the unfenced one, given the
//!   fence) checks the claim's holder and epoch in its own transaction and fails with
//!   [`StoreError::LeaseLost`] once another replica has taken the work over.
//!
//! Connections come from a bounded pool (deadpool-postgres) with timeouts; a connection the
//! server ended is replaced before it is handed out again. Errors name the
//! database by its URL without the password, plus the table and row where there is one.

mod claims;
mod listen;
mod schema;
mod url;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType, Transaction,
};
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, NoTls, Row};

pub use claims::FencedStore;
pub use listen::{ChangeListener, ListenEvent};
pub use url::{PostgresUrl, redact};

use super::claims::Fence;
use super::executions::{check_next_seq, execution_text, journal_batch, journal_entry_text};
use super::migrate::MigrationReport;
use super::state::{StateStore, StateWrite, StoredState, validate_state_key};
use super::{
    ExecutionDoc, ExecutionStore, Expected, ForestMark, ForestPlace, ForestScanPage, JournalRecord, LineageLink,
    ListingKey, ListingRange, ParentLink, Partial, Revision, RunChange, RunIndexEntry, RunQuery, RunRecord, RunStore,
    StoreError, StoreProblem, StoredExecution, StoredRun, StreamOutcome, StreamedRun, StreamedRuns, breadth_first,
    check_run_expected, decode_run, document_text, families_in_order, kept_or_computed_leaves,
};
use crate::model::{Run, RunStatus, TreeLeaf};

/// Advisory lock classes (the first key of `pg_advisory_xact_lock(int, int)`; the second is
/// the schema's key, so stores in different schemas do not wait for each other).
pub(crate) const LOCK_MIGRATE: i32 = 0x5A17_0001;
const LOCK_RUN_SAVES: i32 = 0x5A17_0002;

/// The notification channel of the `public` schema's store.
pub const CHANNEL: &str = "salvage_runs";

/// Pool and timeout settings of a [`PostgresStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Connections the store keeps open at most (also the calls that run at once).
    pub max_connections: usize,
    /// How long establishing a connection may take (unless the URL sets `connect_timeout`).
    pub connect_timeout: Duration,
    /// How long a call waits for a free connection before failing.
    pub wait_timeout: Duration,
    /// Open for reading only (read commands): no migration, the schema must be current, and
    /// every session is `default_transaction_read_only`, so the database itself refuses a
    /// write ([`StoreError::ReadOnly`]).
    pub read_only: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            max_connections: 8,
            connect_timeout: Duration::from_secs(10),
            wait_timeout: Duration::from_secs(30),
            read_only: false,
        }
    }
}

/// Where errors happen: the database (its URL without the password), and a table and row.
/// Mapping an error also notes whether it lost its connection (see [`PostgresStore::client`]).
#[derive(Clone)]
pub(crate) struct PgLocation {
    url: PostgresUrl,
    /// Set when an error said its connection is gone; the next checkout re-checks the pool.
    lost: Arc<AtomicBool>,
}

impl fmt::Display for PgLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.redacted())
    }
}

impl PgLocation {
    pub(crate) fn new(url: PostgresUrl) -> PgLocation {
        PgLocation { url, lost: Arc::new(AtomicBool::new(false)) }
    }

    /// `URL#table/row`.
    fn row(&self, table: &str, row: &str) -> String {
        format!("{}#{table}/{row}", self.url.redacted())
    }

    /// A database error of the store as a whole.
    pub(crate) fn error(&self, error: &tokio_postgres::Error) -> StoreError {
        self.error_at(self.url.redacted().to_owned(), error)
    }

    fn error_at(&self, location: String, error: &tokio_postgres::Error) -> StoreError {
        if connection_lost(error) {
            self.lost.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if error.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION) {
            return StoreError::ReadOnly { spec: self.url.redacted().to_owned() };
        }
        crate::telemetry::store_error("postgres", "database");
        StoreError::Database { location, message: self.describe(error) }
    }

    /// What went wrong, never with the password (see [`describe`]).
    pub(crate) fn describe(&self, error: &tokio_postgres::Error) -> String {
        url::scrub(self.url.secret_url(), &describe(error))
    }

    fn message(&self, location: String, message: impl Into<String>) -> StoreError {
        crate::telemetry::store_error("postgres", "database");
        StoreError::Database { location, message: message.into() }
    }
}

/// Whether an error means that its connection is gone: closed, broken (I/O), or ended by the
/// server (`FATAL`, a connection exception `08…`, an operator or a shutdown `57P…`, e.g.
/// `pg_terminate_backend`). Errors of a statement (`ERROR`) leave the connection usable.
fn connection_lost(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57P") || matches!(db.severity(), "FATAL" | "PANIC")
        }
        None => std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>()),
    }
}

/// What went wrong, with the server's severity, SQLSTATE, message, detail and hint when the
/// server said it, else the client error and its causes.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" (detail: {detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!(" (hint: {hint})"));
            }
            text
        }
        None => url::describe_chain(error),
    }
}

/// A stable 32-bit key of a schema name, for advisory locks.
fn schema_key(schema: &str) -> i32 {
    let digest = Sha256::digest(schema.as_bytes());
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The notification channel of a schema's store: `salvage_runs` in `public`, else
/// `salvage_runs:<schema>` (a hash of it when that would pass PostgreSQL's 63-byte limit).
fn channel_of(schema: &str) -> String {
    if schema == "public" {
        return CHANNEL.to_owned();
    }
    let channel = format!("{CHANNEL}:{schema}");
    if channel.len() <= 63 {
        return channel;
    }
    let digest = Sha256::digest(schema.as_bytes());
    let hex: String = digest.iter().take(12).map(|byte| format!("{byte:02x}")).collect();
    format!("{CHANNEL}:{hex}")
}

/// Whether a value can be sent as text at all (PostgreSQL text holds no NUL); an id with one
/// cannot have been stored, so lookups of it find nothing.
fn storable(text: &str) -> bool {
    !text.contains('\0')
}

fn to_revision(value: i64) -> Option<Revision> {
    u64::try_from(value).ok().map(Revision)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The columns [`entry_from_row`] reads, in its order.
const ENTRY_COLUMNS: &str = "id, root_run_id, parent_run_id, status, created_at, revision";

/// The order every run listing uses; the indexes end in the same columns.
const LISTING_ORDER: &str = "ORDER BY created_at NULLS FIRST, id";

/// The columns [`execution_from_row`] reads, in its order.
const EXECUTION_COLUMNS: &str = "id, run_id, plan_id, status, created_at, updated_at, revision, body";

const UPSERT_RUN: &str =
    "INSERT INTO runs (id, root_run_id, parent_run_id, status, created_at, revision, change_seq, body, tree_leaf)
     VALUES ($1, $2, $3, $4, $5, 1, nextval('run_changes'), $6, $7)
     ON CONFLICT (id) DO UPDATE SET
        root_run_id = excluded.root_run_id, parent_run_id = excluded.parent_run_id,
        status = excluded.status, created_at = excluded.created_at,
        revision = runs.revision + 1, change_seq = excluded.change_seq, body = excluded.body,
        tree_leaf = excluded.tree_leaf
     RETURNING revision, change_seq";

/// Appends a journal entry only when it is the next number of its execution; returns no row
/// otherwise (or when another writer appended the same number first).
const APPEND_JOURNAL: &str = "INSERT INTO journal (execution_id, seq, body)
     SELECT $1::text, $2::bigint, $3::text
     WHERE (SELECT COALESCE(MAX(seq), 0) FROM journal WHERE execution_id = $1::text) = $2::bigint - 1
     ON CONFLICT DO NOTHING
     RETURNING seq";

const LIST_STATE: &str = "SELECT key, revision, body FROM state WHERE key >= $1 AND key < $2 ORDER BY key";

const LAST_SEQ: &str = "SELECT MAX(seq) FROM journal WHERE execution_id = $1";

const JOURNAL: &str = "SELECT seq, body FROM journal WHERE execution_id = $1 ORDER BY seq";

/// Reads an index entry ([`ENTRY_COLUMNS`] from column `first`). A value that cannot be read
/// (a negative revision someone wrote by hand) is an error naming the column.
fn entry_from_row(row: &Row, first: usize) -> Result<RunIndexEntry, String> {
    let text = |index: usize, name: &str| -> Result<Option<String>, String> {
        row.try_get::<_, Option<String>>(first + index).map_err(|e| format!("column {name}: {e}"))
    };
    let required = |index: usize, name: &str| text(index, name)?.ok_or_else(|| format!("column {name} is NULL"));
    let revision: i64 = row.try_get(first + 5).map_err(|e| format!("column revision: {e}"))?;
    Ok(RunIndexEntry {
        id: required(0, "id")?,
        root_run_id: required(1, "root_run_id")?,
        parent_run_id: text(2, "parent_run_id")?,
        status: RunStatus::parse(&required(3, "status")?),
        created_at: text(4, "created_at")?,
        revision: to_revision(revision).ok_or_else(|| format!("column revision is negative ({revision})"))?,
    })
}

/// `SELECT <ENTRY_COLUMNS> FROM runs WHERE … ORDER BY …` for a query, with its parameters.
/// Every filter column leads an index that continues with the listing order.
fn list_sql(query: &RunQuery) -> (String, Vec<String>) {
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    let mut filter = |column: &str, value: Option<String>| {
        if let Some(value) = value {
            params.push(value);
            conditions.push(format!("{column} = ${}", params.len()));
        }
    };
    filter("parent_run_id", query.parent_run_id.clone());
    filter("root_run_id", query.root_run_id.clone());
    filter("status", query.status.as_ref().map(|status| status.as_str().to_owned()));
    let mut sql = format!("SELECT {ENTRY_COLUMNS} FROM runs");
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push(' ');
    sql.push_str(LISTING_ORDER);
    (sql, params)
}

/// The families below the roots given as arrays (`$1` ids, `$2` parents, `$3` creation
/// times), each member with its root and lineage fields, walked down the parent index alone;
/// `UNION` ends a walk around a lineage cycle (the cut run comes back as its seed).
const FAMILIES: &str = r#"WITH RECURSIVE tree(root, id, parent, created_at) AS (
        SELECT seed.id COLLATE "C", seed.id COLLATE "C", seed.parent COLLATE "C", seed.created_at COLLATE "C"
        FROM unnest($1::text[], $2::text[], $3::text[]) AS seed(id, parent, created_at)
        UNION
        SELECT tree.root, child.id, child.parent_run_id, child.created_at
        FROM runs AS child JOIN tree ON child.parent_run_id = tree.id
    )
    SELECT root, id, parent, created_at FROM tree"#;

/// Each run of a listing range with whether its parent is stored and where that parent lists:
/// `LIMIT $1`, the range's own parameters from `$2`.
fn forest_scan_sql<'a>(range: &ListingRange<'a>) -> (String, Vec<&'a str>) {
    let (condition, values) = range.condition('$', 2);
    let sql = format!(
        "SELECT run.created_at, run.id, run.parent_run_id, parent.id IS NOT NULL, parent.created_at
         FROM runs AS run LEFT JOIN runs AS parent ON parent.id = run.parent_run_id{condition}
         ORDER BY run.created_at NULLS FIRST, run.id LIMIT $1"
    );
    (sql, values)
}

/// The members of a run's subtree in one query: `UNION` (not `UNION ALL`) drops the runs
/// already found, which is what ends a walk around a lineage cycle.
fn subtree_sql() -> String {
    format!(
        "WITH RECURSIVE tree(id) AS (
            SELECT id FROM runs WHERE id = $1
            UNION
            SELECT child.id FROM runs AS child JOIN tree ON child.parent_run_id = tree.id
        )
        SELECT {columns} FROM tree JOIN runs AS run ON run.id = tree.id",
        columns = ENTRY_COLUMNS.split(", ").map(|c| format!("run.{c}")).collect::<Vec<_>>().join(", "),
    )
}

/// Runs whose last change is after `$1`, in change order, at most `$2` (index `runs_by_change`).
fn changes_since_sql() -> String {
    format!("SELECT change_seq, {ENTRY_COLUMNS} FROM runs WHERE change_seq > $1 ORDER BY change_seq LIMIT $2")
}

/// Every execution, or (`by_status`) those whose status is `$1`, oldest first.
fn list_executions_sql(by_status: bool) -> String {
    let condition = if by_status { " WHERE status = $1" } else { "" };
    format!("SELECT {EXECUTION_COLUMNS} FROM executions{condition} ORDER BY created_at, id")
}

/// The executions of one run (`$1`), oldest first (index `executions_by_run`).
fn executions_of_run_sql() -> String {
    format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE run_id = $1 ORDER BY created_at, id")
}

fn params(values: &[String]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|value| value as &(dyn ToSql + Sync)).collect()
}

/// Runs, executions, journals and state documents in one PostgreSQL schema. Clones share the
/// pool (and the count of rejected fenced writes).
#[derive(Clone)]
pub struct PostgresStore {
    location: PgLocation,
    pool: Pool,
    options: PostgresOptions,
    schema: String,
    schema_key: i32,
    channel: String,
    /// Fenced writes refused with [`StoreError::LeaseLost`] through this store and its
    /// [`FencedStore`]s.
    rejections: Arc<AtomicU64>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.location.url)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Connection settings: the URL's, plus salvage's defaults where the URL says nothing.
fn connection_config(url: &PostgresUrl, options: &PostgresOptions, role: &str) -> Result<Config, StoreError> {
    let mut config = url.config()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(options.connect_timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name(role);
    }
    if options.read_only {
        // Kept with the URL's own `options` (a search_path, say).
        let given = config.get_options().unwrap_or_default().to_owned();
        config.options(format!("{given} -c default_transaction_read_only=on").trim_start());
    }
    Ok(config)
}

/// One connection outside the pool (migrations, listening), its connection driven by a task
/// that ends when the client is dropped.
async fn connect(config: &Config, location: &PgLocation) -> Result<tokio_postgres::Client, StoreError> {
    let (client, connection) = config.connect(NoTls).await.map_err(|e| location.error(&e))?;
    let task_location = location.clone();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(store = %task_location, error = %task_location.describe(&error), "postgres connection ended");
        }
    });
    Ok(client)
}

/// The schema the connection creates tables in; an error when its search path names none
/// that exists.
async fn current_schema(client: &tokio_postgres::Client, location: &PgLocation) -> Result<String, StoreError> {
    let row = client.query_one("SELECT current_schema()", &[]).await.map_err(|e| location.error(&e))?;
    let schema: Option<String> = row.try_get(0).map_err(|e| location.error(&e))?;
    schema.ok_or_else(|| {
        location.message(
            location.to_string(),
            "no schema to keep the store in: the connection's search_path names no existing schema \
             (create it, or fix options=-csearch_path=...)",
        )
    })
}

impl PostgresStore {
    /// Connects with the default pool settings and brings the schema up to date.
    pub async fn open(url: &PostgresUrl) -> Result<PostgresStore, StoreError> {
        PostgresStore::open_with(url, PostgresOptions::default()).await
    }

    /// Connects with `options` and brings the schema up to date (see [`PostgresStore::migrate`]);
    /// opened for reading only, it migrates nothing and refuses a schema that is not current.
    pub async fn open_with(url: &PostgresUrl, options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let location = PgLocation::new(url.clone());
        let config = connection_config(url, &options, "salvage")?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.wait_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| location.message(location.to_string(), format!("cannot build the connection pool: {e}")))?;
        let mut store = PostgresStore {
            location,
            pool,
            options,
            schema: String::new(),
            schema_key: 0,
            channel: String::new(),
            rejections: Arc::new(AtomicU64::new(0)),
        };
        let mut client = store.client().await?;
        store.schema = current_schema(&client, &store.location).await?;
        store.schema_key = schema_key(&store.schema);
        store.channel = channel_of(&store.schema);
        let version = if store.options.read_only {
            schema::require_current(&client, &store.location, &store.schema, schema::MIGRATIONS).await?
        } else {
            let report = schema::migrate(&mut client, &store.location, store.schema_key, schema::MIGRATIONS).await?;
            report.to_version.unwrap_or(0)
        };
        drop(client);
        tracing::debug!(
            store = %store.location, schema = %store.schema, version, read_only = store.options.read_only,
            "opened postgres store"
        );
        Ok(store)
    }

    /// Applies the migrations the database has not seen (each in its own transaction under an
    /// advisory lock, recorded in `schema_migrations`) over one connection, and says which.
    /// Opening a store does the same; this is for running them on their own (`salvage migrate`).
    pub async fn migrate(url: &PostgresUrl) -> Result<MigrationReport, StoreError> {
        let location = PgLocation::new(url.clone());
        let config = connection_config(url, &PostgresOptions::default(), "salvage migrate")?;
        let mut client = connect(&config, &location).await?;
        let schema = current_schema(&client, &location).await?;
        schema::migrate(&mut client, &location, schema_key(&schema), schema::MIGRATIONS).await
    }

    /// The URL (its `Display` hides the password).
    pub fn url(&self) -> &PostgresUrl {
        &self.location.url
    }

    /// The schema the store's tables are in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The channel every run save notifies (`NOTIFY <channel>, '<change_seq>'`).
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// A pooled connection, or an error naming the database and what timed out.
    ///
    /// The pool drops a connection it finds closed when handing it out, but a connection the
    /// server has just ended (`pg_terminate_backend`, a failover) may not look closed yet when
    /// the call that saw its last error gives it back. So after an error that lost its
    /// connection, the next checkout drops the connections known closed and checks the one it
    /// hands out with an empty query, replacing it if it is dead: a dead connection costs the
    /// call that saw it die, never the next one.
    async fn client(&self) -> Result<Object, StoreError> {
        if !self.location.lost.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return self.checkout().await;
        }
        self.pool.retain(|client, _| !client.is_closed());
        let mut attempts = 0;
        loop {
            let client = self.checkout().await?;
            match client.simple_query("").await {
                Ok(_) => return Ok(client),
                Err(error) => {
                    tracing::debug!(store = %self.location, error = %self.location.describe(&error), "dropped a dead pooled connection");
                    drop(Object::take(client));
                    attempts += 1;
                    if attempts > self.options.max_connections {
                        return Err(self.location.error(&error));
                    }
                }
            }
        }
    }

    async fn checkout(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|error| match error {
            PoolError::Backend(error) => self.location.error(&error),
            PoolError::Timeout(kind) => {
                let what = match kind {
                    TimeoutType::Wait => format!(
                        "no free connection within {:?} (all {} in use)",
                        self.options.wait_timeout, self.options.max_connections
                    ),
                    TimeoutType::Create => format!("cannot connect within {:?}", self.options.connect_timeout),
                    TimeoutType::Recycle => "checking a pooled connection timed out".to_owned(),
                };
                self.location.message(self.location.to_string(), what)
            }
            other => self.location.message(self.location.to_string(), other.to_string()),
        })
    }

    fn db(&self) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        move |error| self.location.error(&error)
    }

    /// Runs saved after `cursor` (a `change_seq` from an earlier call, 0 for all), oldest change
    /// first, at most `limit`. A run saved several times appears once, with its last change.
    /// Feed the last `change_seq` back in as the next cursor: saves commit in change order, so
    /// no save is ever stepped over.
    pub async fn changes_since(&self, cursor: u64, limit: usize) -> Result<Vec<RunChange>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(&changes_since_sql()).await.map_err(self.db())?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client.query(&statement, &[&to_i64(cursor), &limit]).await.map_err(self.db())?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            let change_seq: i64 = row.try_get(0).map_err(self.db())?;
            let entry = entry_from_row(&row, 1).map_err(|message| {
                let id: Option<String> = row.try_get(1).ok();
                self.location.message(self.location.row("runs", id.as_deref().unwrap_or("?")), message)
            })?;
            changes.push(RunChange { change_seq: u64::try_from(change_seq).unwrap_or(0), entry });
        }
        Ok(changes)
    }

    /// Listens to the store's run saves on a dedicated connection (not one of the pool's).
    ///
    /// Returns once the connection is listening, so that a caller can then read
    /// [`PostgresStore::changes_since`] and miss nothing: every save committed afterwards is
    /// announced as [`ListenEvent::Changed`]. When the connection drops, the listener says
    /// [`ListenEvent::Lost`], reconnects with backoff and says [`ListenEvent::Reconnected`]
    /// once it listens again; saves in between were not announced, so the caller catches up
    /// with `changes_since` from its cursor.
    pub async fn listen(&self) -> Result<ChangeListener, StoreError> {
        let config = connection_config(self.url(), &self.options, "salvage listen")?;
        listen::start(config, self.location.clone(), self.channel.clone()).await
    }

    /// The advisory lock run saves of this schema serialise on, as `(class, key)` of
    /// `pg_advisory_xact_lock(int, int)` (in `pg_locks`: `classid`, `objid`), for an operator
    /// looking at who waits for whom.
    pub fn run_save_lock(&self) -> (i32, i32) {
        (LOCK_RUN_SAVES, self.schema_key)
    }

    /// Checks every expectation against the store as it was before the batch, then writes the
    /// batch, in one transaction that holds the schema's run-save lock; notifies the channel
    /// with the last change number. Under a `fence`, the transaction checks it first (before
    /// waiting for the run-save lock, so that a stale writer queues behind nobody).
    async fn write(
        &self,
        prepared: Vec<RunRecord>,
        expected: Expected,
        fence: Option<&Fence>,
    ) -> Result<Vec<Revision>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(self.db())?;
        if let Some(fence) = fence {
            self.check_fence(&tx, fence).await?;
        }
        self.lock_run_saves(&tx).await?;
        let (revisions, last_change) = self.write_in(&tx, &prepared, expected).await?;
        self.announce(&tx, last_change).await?;
        tx.commit().await.map_err(self.db())?;
        Ok(revisions)
    }

    /// [`RunStore::save_stream`] on PostgreSQL: one transaction holding the run-save lock, each
    /// chunk checked and written as it comes, committed (and announced) on
    /// [`StreamedRuns::Commit`], rolled back otherwise.
    async fn write_stream(
        &self,
        mut incoming: tokio::sync::mpsc::Receiver<StreamedRuns>,
        expected: Expected,
    ) -> Result<StreamOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(self.db())?;
        self.lock_run_saves(&tx).await?;
        let mut revisions = Vec::new();
        let mut last_change = None;
        while let Some(message) = incoming.recv().await {
            match message {
                StreamedRuns::Runs(chunk) => {
                    let prepared = chunk.into_iter().map(StreamedRun::into_record).collect::<Result<Vec<_>, _>>()?;
                    if prepared.is_empty() {
                        continue;
                    }
                    let (written, last) = self.write_in(&tx, &prepared, expected).await?;
                    revisions.extend(written);
                    last_change = Some(last);
                }
                StreamedRuns::Commit => {
                    if let Some(last_change) = last_change {
                        self.announce(&tx, last_change).await?;
                    }
                    tx.commit().await.map_err(self.db())?;
                    return Ok(StreamOutcome::Committed(revisions));
                }
            }
        }
        Ok(StreamOutcome::Abandoned)
    }

    async fn lock_run_saves(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_RUN_SAVES, &self.schema_key])
            .await
            .map(drop)
            .map_err(self.db())
    }

    /// Tells listeners ([`PostgresStore::listen`]) that runs changed, up to `last_change`.
    async fn announce(&self, tx: &Transaction<'_>, last_change: i64) -> Result<(), StoreError> {
        tx.execute("SELECT pg_notify($1, $2)", &[&self.channel, &last_change.to_string()])
            .await
            .map(drop)
            .map_err(self.db())
    }

    /// Checks every expectation of `prepared` against the store as the transaction sees it,
    /// then writes them; returns their revisions and the last change number.
    async fn write_in(
        &self,
        tx: &Transaction<'_>,
        prepared: &[RunRecord],
        expected: Expected,
    ) -> Result<(Vec<Revision>, i64), StoreError> {
        let ids: Vec<&str> = prepared.iter().map(|run| run.entry.id.as_str()).collect();
        let rows = tx.query("SELECT id, revision FROM runs WHERE id = ANY($1)", &[&ids]).await.map_err(self.db())?;
        let mut current = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get(0).map_err(self.db())?;
            let revision: i64 = row.try_get(1).map_err(self.db())?;
            current.insert(id, to_revision(revision).unwrap_or(Revision(0)));
        }
        for run in prepared {
            check_run_expected(&run.entry.id, expected, current.get(&run.entry.id).copied())?;
        }
        let upsert = tx.prepare_cached(UPSERT_RUN).await.map_err(self.db())?;
        let mut revisions = Vec::with_capacity(prepared.len());
        let mut last_change = 0_i64;
        for run in prepared {
            let entry = &run.entry;
            let row = tx
                .query_one(
                    &upsert,
                    &[
                        &entry.id,
                        &entry.root_run_id,
                        &entry.parent_run_id,
                        &entry.status.as_str(),
                        &entry.created_at,
                        &run.body,
                        &run.tree_leaf,
                    ],
                )
                .await
                .map_err(|e| self.location.error_at(self.location.row("runs", &entry.id), &e))?;
            let revision: i64 = row.try_get(0).map_err(self.db())?;
            last_change = row.try_get(1).map_err(self.db())?;
            revisions.push(to_revision(revision).unwrap_or(Revision(0)));
        }
        Ok((revisions, last_change))
    }

    /// `save`, under a fence or not.
    async fn save_with(&self, run: &Run, expected: Expected, fence: Option<&Fence>) -> Result<Revision, StoreError> {
        let revisions = self.write(vec![RunRecord::of(run)?], expected, fence).await?;
        revisions.into_iter().next().ok_or_else(|| StoreError::Task("save returned no revision".into()))
    }

    /// `save_all`, under a fence or not. An empty batch writes nothing and checks nothing.
    async fn save_all_with(
        &self,
        runs: &[Run],
        expected: Expected,
        fence: Option<&Fence>,
    ) -> Result<Vec<Revision>, StoreError> {
        let prepared = runs.iter().map(RunRecord::of).collect::<Result<Vec<_>, _>>()?;
        if prepared.is_empty() {
            return Ok(Vec::new());
        }
        self.write(prepared, expected, fence).await
    }

    /// A transaction on `client` that has checked `fence` (see [`PostgresStore::check_fence`]).
    async fn fenced_transaction<'c>(
        &self,
        client: &'c mut Object,
        fence: &Fence,
    ) -> Result<Transaction<'c>, StoreError> {
        let tx = client.transaction().await.map_err(self.db())?;
        self.check_fence(&tx, fence).await?;
        Ok(tx)
    }

    /// Runs an index query; a row whose columns cannot be read becomes a problem, not a failure.
    async fn query_entries(&self, sql: &str, values: &[String]) -> Result<Partial<RunIndexEntry>, StoreError> {
        if !values.iter().all(|value| storable(value)) {
            return Ok(Partial::default());
        }
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(self.db())?;
        let rows = client.query(&statement, &params(values)).await.map_err(self.db())?;
        Ok(self.entries_of(rows))
    }

    /// Index entries from rows of [`ENTRY_COLUMNS`]; a row that cannot be read is a problem
    /// naming it.
    fn entries_of(&self, rows: Vec<Row>) -> Partial<RunIndexEntry> {
        let mut out = Partial::default();
        for row in rows {
            match entry_from_row(&row, 0) {
                Ok(entry) => out.items.push(entry),
                Err(message) => {
                    let run_id: Option<String> = row.try_get(0).ok();
                    let location = self.location.row("runs", run_id.as_deref().unwrap_or("?"));
                    out.problems.push(StoreProblem { run_id, error: self.location.message(location, message) });
                }
            }
        }
        out
    }

    /// Adds up to `limit` runs of one range of the listing index to `page` (see
    /// [`RunStore::forest_scan`]); returns how many the range gave.
    async fn scan_forest_range(
        &self,
        range: &ListingRange<'_>,
        limit: i64,
        page: &mut ForestScanPage,
    ) -> Result<i64, StoreError> {
        let (statement_sql, values) = forest_scan_sql(range);
        let client = self.client().await?;
        let statement = client.prepare_cached(&statement_sql).await.map_err(self.db())?;
        let mut parameters: Vec<&(dyn ToSql + Sync)> = vec![&limit];
        parameters.extend(values.iter().map(|value| value as &(dyn ToSql + Sync)));
        let rows = client.query(&statement, &parameters).await.map_err(self.db())?;
        let scanned = i64::try_from(rows.len()).unwrap_or(i64::MAX);
        for row in rows {
            // A key that cannot be read cannot be paged past: the scan stops there, naming the row.
            let key = match (row.try_get::<_, Option<String>>(0), row.try_get::<_, String>(1)) {
                (Ok(created_at), Ok(id)) => ListingKey { created_at, id },
                (Err(error), _) | (_, Err(error)) => {
                    let id = row.try_get::<_, String>(1).unwrap_or_else(|_| "?".to_owned());
                    return Err(self.location.error_at(self.location.row("runs", &id), &error));
                }
            };
            let parent = ParentLink::read(row.try_get(2), row.try_get(3), row.try_get(4));
            if let Some(place) = ForestPlace::of(&key, parent) {
                page.marks.push(ForestMark { key: key.clone(), place });
            }
            page.last = Some(key);
        }
        page.at_end = scanned < limit;
        Ok(scanned)
    }

    /// A run from its `id, body, revision` columns.
    fn run_from_row(&self, row: &Row) -> Result<StoredRun, StoreError> {
        let id: String = row.try_get(0).map_err(self.db())?;
        let location = self.location.row("runs", &id);
        let body: String = row.try_get(1).map_err(|e| self.location.error_at(location.clone(), &e))?;
        let revision: i64 = row.try_get(2).map_err(|e| self.location.error_at(location.clone(), &e))?;
        let revision = to_revision(revision)
            .ok_or_else(|| self.location.message(location.clone(), format!("negative revision {revision}")))?;
        Ok(StoredRun { run: decode_run(&location, body.as_bytes())?, revision })
    }

    /// An execution from its [`EXECUTION_COLUMNS`]; a body that is not JSON is an error naming
    /// the row.
    fn execution_from_row(&self, row: &Row) -> Result<StoredExecution, StoreError> {
        let id: String = row.try_get(0).map_err(self.db())?;
        let location = self.location.row("executions", &id);
        let column = |e: tokio_postgres::Error| self.location.error_at(location.clone(), &e);
        let text = |index: usize| row.try_get::<_, String>(index).map_err(column);
        let revision: i64 = row.try_get(6).map_err(column)?;
        let body_text = text(7)?;
        let body = serde_json::from_str(&body_text).map_err(|e| StoreError::corrupt(&location, &e))?;
        Ok(StoredExecution {
            doc: ExecutionDoc {
                id: id.clone(),
                run_id: text(1)?,
                plan_id: text(2)?,
                status: text(3)?,
                created_at: text(4)?,
                updated_at: text(5)?,
                body,
            },
            revision: to_revision(revision)
                .ok_or_else(|| self.location.message(location.clone(), format!("negative revision {revision}")))?,
        })
    }

    /// The revision a failed compare-and-set found, for its conflict error.
    async fn revision_of(
        &self,
        client: &impl GenericClient,
        table: &str,
        key_column: &str,
        key: &str,
    ) -> Result<Option<Revision>, StoreError> {
        let sql = format!("SELECT revision FROM {table} WHERE {key_column} = $1");
        let row = client.query_opt(&sql, &[&key]).await.map_err(self.db())?;
        row.map(|row| row.try_get::<_, i64>(0).map(|r| to_revision(r).unwrap_or(Revision(0))))
            .transpose()
            .map_err(self.db())
    }
}

#[async_trait]
impl RunStore for PostgresStore {
    fn spec(&self) -> String {
        self.location.to_string()
    }

    async fn get(&self, run_id: &str) -> Result<Option<StoredRun>, StoreError> {
        if !storable(run_id) {
            return Ok(None);
        }
        let client = self.client().await?;
        let statement =
            client.prepare_cached("SELECT id, body, revision FROM runs WHERE id = $1").await.map_err(self.db())?;
        let row = client.query_opt(&statement, &[&run_id]).await.map_err(self.db())?;
        row.map(|row| self.run_from_row(&row)).transpose()
    }

    async fn get_many(&self, run_ids: &[String]) -> Result<Partial<StoredRun>, StoreError> {
        let mut out = Partial::default();
        let mut unique: Vec<&str> = run_ids.iter().map(String::as_str).filter(|id| storable(id)).collect();
        unique.sort_unstable();
        unique.dedup();
        if unique.is_empty() {
            return Ok(out);
        }
        let client = self.client().await?;
        let statement =
            client.prepare_cached("SELECT id, body, revision FROM runs WHERE id = ANY($1)").await.map_err(self.db())?;
        let rows = client.query(&statement, &[&unique]).await.map_err(self.db())?;
        let mut found: HashMap<String, Row> = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0).map_err(self.db())?;
            found.insert(id, row);
        }
        for run_id in run_ids {
            // Decoded per requested id, so an id asked for twice is served twice.
            let Some(row) = found.get(run_id) else { continue };
            match self.run_from_row(row) {
                Ok(run) => out.items.push(run),
                Err(error) => out.problems.push(StoreProblem { run_id: Some(run_id.clone()), error }),
            }
        }
        Ok(out)
    }

    async fn tree_leaves(&self, run_ids: &[String]) -> Result<Partial<(String, TreeLeaf)>, StoreError> {
        let mut unique: Vec<&str> = run_ids.iter().map(String::as_str).filter(|id| storable(id)).collect();
        unique.sort_unstable();
        unique.dedup();
        let mut kept = HashMap::with_capacity(unique.len());
        if !unique.is_empty() {
            let client = self.client().await?;
            let statement = client
                .prepare_cached("SELECT id, tree_leaf FROM runs WHERE id = ANY($1) AND tree_leaf IS NOT NULL")
                .await
                .map_err(self.db())?;
            for row in client.query(&statement, &[&unique]).await.map_err(self.db())? {
                let leaf: &str = row.try_get(1).map_err(self.db())?;
                if let Some(leaf) = TreeLeaf::decode(leaf.as_bytes()) {
                    kept.insert(row.try_get(0).map_err(self.db())?, leaf);
                }
            }
        }
        // A leaf of another salvage's version, or none: computed from the record.
        kept_or_computed_leaves(self, run_ids, kept).await
    }

    async fn save(&self, run: &Run, expected: Expected) -> Result<Revision, StoreError> {
        self.save_with(run, expected, None).await
    }

    async fn save_all(&self, runs: &[Run], expected: Expected) -> Result<Vec<Revision>, StoreError> {
        self.save_all_with(runs, expected, None).await
    }

    async fn save_stream(
        &self,
        incoming: tokio::sync::mpsc::Receiver<StreamedRuns>,
        expected: Expected,
    ) -> Result<StreamOutcome, StoreError> {
        self.write_stream(incoming, expected).await
    }

    async fn list(&self, query: &RunQuery) -> Result<Partial<RunIndexEntry>, StoreError> {
        let (sql, values) = list_sql(query);
        let mut partial = self.query_entries(&sql, &values).await?;
        // The query already orders (byte order); the sort keeps Rust's ordering authoritative.
        partial.items.sort_by(RunIndexEntry::listing_order);
        Ok(partial)
    }

    async fn subtree(&self, root_id: &str) -> Result<Partial<RunIndexEntry>, StoreError> {
        let members = self.query_entries(&subtree_sql(), &[root_id.to_owned()]).await?;
        Ok(Partial { items: breadth_first(root_id, members.items), problems: members.problems })
    }

    async fn list_ids(&self, run_ids: &[String]) -> Result<Partial<RunIndexEntry>, StoreError> {
        let ids: Vec<&str> = run_ids.iter().map(String::as_str).filter(|id| storable(id)).collect();
        if ids.is_empty() {
            return Ok(Partial::default());
        }
        let client = self.client().await?;
        let sql = format!("SELECT {ENTRY_COLUMNS} FROM runs WHERE id = ANY($1)");
        let statement = client.prepare_cached(&sql).await.map_err(self.db())?;
        let rows = client.query(&statement, &[&ids]).await.map_err(self.db())?;
        Ok(self.entries_of(rows))
    }

    /// A forest page asks for hundreds of small families: one query (one round trip) for all,
    /// from the parent index alone.
    async fn families(&self, roots: &[LineageLink]) -> Result<Vec<Partial<LineageLink>>, StoreError> {
        let mut members: HashMap<String, Vec<LineageLink>> = HashMap::with_capacity(roots.len());
        let storable_root = |root: &&LineageLink| {
            storable(&root.id)
                && root.parent_run_id.as_deref().is_none_or(storable)
                && root.created_at.as_deref().is_none_or(storable)
        };
        let seeds: Vec<&LineageLink> = roots.iter().filter(storable_root).collect();
        if !seeds.is_empty() {
            let ids: Vec<&str> = seeds.iter().map(|root| root.id.as_str()).collect();
            let parents: Vec<Option<&str>> = seeds.iter().map(|root| root.parent_run_id.as_deref()).collect();
            let created: Vec<Option<&str>> = seeds.iter().map(|root| root.created_at.as_deref()).collect();
            let client = self.client().await?;
            let statement = client.prepare_cached(FAMILIES).await.map_err(self.db())?;
            for row in client.query(&statement, &[&ids, &parents, &created]).await.map_err(self.db())? {
                let root: String = row.try_get(0).map_err(self.db())?;
                let link = LineageLink {
                    id: row.try_get(1).map_err(self.db())?,
                    parent_run_id: row.try_get(2).map_err(self.db())?,
                    created_at: row.try_get(3).map_err(self.db())?,
                };
                members.entry(root).or_default().push(link);
            }
        }
        Ok(families_in_order(roots, members))
    }

    async fn forest_scan(
        &self,
        after: Option<&ListingKey>,
        limit: usize,
    ) -> Result<Option<ForestScanPage>, StoreError> {
        let mut page = ForestScanPage::default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (range, then) = ListingRange::after(after);
        let scanned = self.scan_forest_range(&range, limit, &mut page).await?;
        if let Some(then) = then
            && scanned < limit
        {
            self.scan_forest_range(&then, limit - scanned, &mut page).await?;
        }
        Ok(Some(page))
    }

    async fn list_one(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        let sql = format!("SELECT {ENTRY_COLUMNS} FROM runs WHERE id = $1");
        let mut partial = self.query_entries(&sql, &[run_id.to_owned()]).await?;
        match partial.problems.pop() {
            Some(problem) => Err(problem.error),
            None => Ok(partial.items.pop()),
        }
    }

    /// The `runs` row is written with the record: the index is current.
    async fn current_entry(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        self.list_one(run_id).await
    }
}

#[async_trait]
impl ExecutionStore for PostgresStore {
    async fn put_execution(&self, doc: ExecutionDoc, expected: Expected) -> Result<Revision, StoreError> {
        self.put_execution_with(&doc, expected, None).await
    }

    async fn get_execution(&self, id: &str) -> Result<Option<StoredExecution>, StoreError> {
        if !storable(id) {
            return Ok(None);
        }
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1"))
            .await
            .map_err(self.db())?;
        let row = client.query_opt(&statement, &[&id]).await.map_err(self.db())?;
        row.map(|row| self.execution_from_row(&row)).transpose()
    }

    async fn list_executions(&self, status: Option<&str>) -> Result<Vec<StoredExecution>, StoreError> {
        if status.is_some_and(|status| !storable(status)) {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let statement = client.prepare_cached(&list_executions_sql(status.is_some())).await.map_err(self.db())?;
        let rows = match status {
            Some(status) => client.query(&statement, &[&status]).await,
            None => client.query(&statement, &[]).await,
        }
        .map_err(self.db())?;
        let mut out = rows.iter().map(|row| self.execution_from_row(row)).collect::<Result<Vec<_>, _>>()?;
        // The query already orders; the sort keeps Rust's ordering authoritative.
        out.sort_by(StoredExecution::listing_order);
        Ok(out)
    }

    /// An indexed lookup (`executions_by_run`) instead of the trait's scan.
    async fn executions_of_run(&self, run_id: &str) -> Result<Vec<StoredExecution>, StoreError> {
        if !storable(run_id) {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let statement = client.prepare_cached(&executions_of_run_sql()).await.map_err(self.db())?;
        let rows = client.query(&statement, &[&run_id]).await.map_err(self.db())?;
        let mut out = rows.iter().map(|row| self.execution_from_row(row)).collect::<Result<Vec<_>, _>>()?;
        out.sort_by(StoredExecution::listing_order);
        Ok(out)
    }

    async fn append_journal_entries(&self, records: &[JournalRecord]) -> Result<(), StoreError> {
        self.append_journal_with(records, None).await
    }

    async fn append_journal_and_put_execution(
        &self,
        records: &[JournalRecord],
        doc: ExecutionDoc,
        expected: Expected,
    ) -> Result<Revision, StoreError> {
        self.append_journal_and_put_execution_with(records, &doc, expected, None).await
    }

    async fn journal(&self, execution_id: &str) -> Result<Vec<JournalRecord>, StoreError> {
        if !storable(execution_id) {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let statement = client.prepare_cached(JOURNAL).await.map_err(self.db())?;
        let rows = client.query(&statement, &[&execution_id]).await.map_err(self.db())?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.try_get(0).map_err(self.db())?;
            let location = self.location.row("journal", &format!("{execution_id}/{seq}"));
            let body: String = row.try_get(1).map_err(|e| self.location.error_at(location.clone(), &e))?;
            let body = serde_json::from_str(&body).map_err(|e| StoreError::corrupt(&location, &e))?;
            out.push(JournalRecord {
                execution_id: execution_id.to_owned(),
                seq: u64::try_from(seq).unwrap_or(0),
                body,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl StateStore for PostgresStore {
    async fn get_state(&self, key: &str) -> Result<Option<StoredState>, StoreError> {
        if !storable(key) {
            return Ok(None);
        }
        let client = self.client().await?;
        let statement =
            client.prepare_cached("SELECT key, revision, body FROM state WHERE key = $1").await.map_err(self.db())?;
        let row = client.query_opt(&statement, &[&key]).await.map_err(self.db())?;
        row.map(|row| self.state_from_row(&row)).transpose()
    }

    async fn get_states(&self, keys: &[String]) -> Result<Vec<Option<StoredState>>, StoreError> {
        let asked: Vec<&str> = keys.iter().map(String::as_str).filter(|key| storable(key)).collect();
        let mut found = std::collections::HashMap::with_capacity(asked.len());
        if !asked.is_empty() {
            let client = self.client().await?;
            let statement = client
                .prepare_cached("SELECT key, revision, body FROM state WHERE key = ANY($1)")
                .await
                .map_err(self.db())?;
            for row in client.query(&statement, &[&asked]).await.map_err(self.db())? {
                let state = self.state_from_row(&row)?;
                found.insert(state.key.clone(), state);
            }
        }
        // In the order asked; a key asked for twice is served twice.
        Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
    }

    fn writes_states_together(&self) -> bool {
        true
    }

    async fn put_state(&self, key: &str, body: &serde_json::Value, expected: Expected) -> Result<Revision, StoreError> {
        self.put_state_with(key, body, expected, None).await
    }

    async fn put_states(&self, writes: &[StateWrite<'_>]) -> Result<Vec<Revision>, StoreError> {
        self.put_states_with(writes, None).await
    }

    async fn list_state(&self, prefix: &str) -> Result<Vec<StoredState>, StoreError> {
        validate_state_key(prefix)?;
        // Keys under `prefix/`: from `prefix/` up to `prefix0` ('0' follows '/'), byte order.
        let (low, high) = (format!("{prefix}/"), format!("{prefix}0"));
        let client = self.client().await?;
        let statement = client.prepare_cached(LIST_STATE).await.map_err(self.db())?;
        let rows = client.query(&statement, &[&low, &high]).await.map_err(self.db())?;
        let mut out = Vec::new();
        for row in rows {
            let key: String = row.try_get(0).map_err(self.db())?;
            if key.get(low.len()..).is_none_or(|rest| rest.contains('/')) {
                continue;
            }
            out.push(self.state_from_row(&row)?);
        }
        Ok(out)
    }
}

impl PostgresStore {
    /// A state document from its `key, revision, body` columns.
    fn state_from_row(&self, row: &Row) -> Result<StoredState, StoreError> {
        let key: String = row.try_get(0).map_err(self.db())?;
        let location = self.location.row("state", &key);
        let revision: i64 = row.try_get(1).map_err(|e| self.location.error_at(location.clone(), &e))?;
        let body: String = row.try_get(2).map_err(|e| self.location.error_at(location.clone(), &e))?;
        let body = serde_json::from_str(&body).map_err(|e| StoreError::corrupt(&location, &e))?;
        Ok(StoredState { key, body, revision: to_revision(revision).unwrap_or(Revision(0)) })
    }
}

/// The writes of executions, journals and state documents, each one statement: on its own
/// (`fence` = `None`), or in a transaction that checks the fence first.
impl PostgresStore {
    async fn put_execution_with(
        &self,
        doc: &ExecutionDoc,
        expected: Expected,
        fence: Option<&Fence>,
    ) -> Result<Revision, StoreError> {
        let body = execution_text(doc)?;
        let mut client = self.client().await?;
        let Some(fence) = fence else {
            return self.put_execution_on(&client, doc, &body, expected).await;
        };
        let tx = self.fenced_transaction(&mut client, fence).await?;
        let revision = self.put_execution_on(&tx, doc, &body, expected).await?;
        tx.commit().await.map_err(self.db())?;
        Ok(revision)
    }

    async fn put_execution_on(
        &self,
        client: &impl GenericClient,
        doc: &ExecutionDoc,
        body: &str,
        expected: Expected,
    ) -> Result<Revision, StoreError> {
        let at = |e: tokio_postgres::Error| self.location.error_at(self.location.row("executions", &doc.id), &e);
        let values: [&(dyn ToSql + Sync); 7] =
            [&doc.id, &doc.run_id, &doc.plan_id, &doc.status, &doc.created_at, &doc.updated_at, &body];
        let written = match expected {
            Expected::Absent => client
                .query_opt(
                    "INSERT INTO executions (id, run_id, plan_id, status, created_at, updated_at, revision, body)
                     VALUES ($1, $2, $3, $4, $5, $6, 1, $7)
                     ON CONFLICT (id) DO NOTHING
                     RETURNING revision",
                    &values,
                )
                .await
                .map_err(at)?,
            Expected::Any => client
                .query_opt(
                    "INSERT INTO executions (id, run_id, plan_id, status, created_at, updated_at, revision, body)
                     VALUES ($1, $2, $3, $4, $5, $6, 1, $7)
                     ON CONFLICT (id) DO UPDATE SET
                        run_id = excluded.run_id, plan_id = excluded.plan_id, status = excluded.status,
                        created_at = excluded.created_at, updated_at = excluded.updated_at,
                        revision = executions.revision + 1, body = excluded.body
                     RETURNING revision",
                    &values,
                )
                .await
                .map_err(at)?,
            Expected::Revision(revision) => {
                let revision = to_i64(revision.0);
                let mut with_revision = values.to_vec();
                with_revision.push(&revision);
                client
                    .query_opt(
                        "UPDATE executions SET
                            run_id = $2, plan_id = $3, status = $4, created_at = $5, updated_at = $6,
                            revision = revision + 1, body = $7
                         WHERE id = $1 AND revision = $8
                         RETURNING revision",
                        &with_revision,
                    )
                    .await
                    .map_err(at)?
            }
        };
        match written {
            Some(row) => Ok(to_revision(row.try_get(0).map_err(at)?).unwrap_or(Revision(0))),
            None => {
                let found = self.revision_of(client, "executions", "id", &doc.id).await?;
                Err(StoreError::Conflict { run_id: format!("execution {}", doc.id), expected, found })
            }
        }
    }

    /// Journal entries appended in one commit with their stored bodies and numbers, checked
    /// before taking a connection.
    fn journal_entries<'r>(
        &self,
        records: &'r [JournalRecord],
    ) -> Result<Vec<(&'r JournalRecord, i64, String)>, StoreError> {
        journal_batch(records)?;
        records
            .iter()
            .map(|record| {
                let body = journal_entry_text(record)?;
                let seq = i64::try_from(record.seq).map_err(|_| {
                    self.location.message(self.location.to_string(), format!("journal seq {} is too large", record.seq))
                })?;
                Ok((record, seq, body))
            })
            .collect()
    }

    async fn append_journal_with(&self, records: &[JournalRecord], fence: Option<&Fence>) -> Result<(), StoreError> {
        let entries = self.journal_entries(records)?;
        let mut client = self.client().await?;
        match (fence, entries.as_slice()) {
            (_, []) => Ok(()),
            // One entry and no fence: one statement, its own commit.
            (None, [(record, seq, body)]) => self.append_journal_on(&client, record, *seq, body).await,
            _ => {
                let tx = match fence {
                    Some(fence) => self.fenced_transaction(&mut client, fence).await?,
                    None => client.transaction().await.map_err(self.db())?,
                };
                for (record, seq, body) in &entries {
                    self.append_journal_on(&tx, record, *seq, body).await?;
                }
                tx.commit().await.map_err(self.db())
            }
        }
    }

    /// All the writes in one transaction (after the fence's check, when there is one).
    async fn append_journal_and_put_execution_with(
        &self,
        records: &[JournalRecord],
        doc: &ExecutionDoc,
        expected: Expected,
        fence: Option<&Fence>,
    ) -> Result<Revision, StoreError> {
        let entries = self.journal_entries(records)?;
        let doc_body = execution_text(doc)?;
        let mut client = self.client().await?;
        let tx = match fence {
            Some(fence) => self.fenced_transaction(&mut client, fence).await?,
            None => client.transaction().await.map_err(self.db())?,
        };
        // A conflict in any returns before the commit: the transaction is rolled back.
        for (record, seq, body) in &entries {
            self.append_journal_on(&tx, record, *seq, body).await?;
        }
        let revision = self.put_execution_on(&tx, doc, &doc_body, expected).await?;
        tx.commit().await.map_err(self.db())?;
        Ok(revision)
    }

    async fn append_journal_on(
        &self,
        client: &impl GenericClient,
        record: &JournalRecord,
        seq: i64,
        body: &str,
    ) -> Result<(), StoreError> {
        let execution_id = &record.execution_id;
        let at = |e: tokio_postgres::Error| {
            self.location.error_at(self.location.row("journal", &format!("{execution_id}/{seq}")), &e)
        };
        let statement = client.prepare_cached(APPEND_JOURNAL).await.map_err(at)?;
        if client.query_opt(&statement, &[execution_id, &seq, &body]).await.map_err(at)?.is_some() {
            return Ok(());
        }
        // Not the next number: say what the journal holds now.
        let row = client.query_one(LAST_SEQ, &[execution_id]).await.map_err(at)?;
        let last: Option<i64> = row.try_get(0).map_err(at)?;
        let last = last.map(|s| u64::try_from(s).unwrap_or(0));
        check_next_seq(execution_id, record.seq, last)?;
        // The entry before it was committed in between: still a conflict (retry appends).
        Err(StoreError::Conflict {
            run_id: format!("journal of execution {execution_id}"),
            expected: Expected::Revision(Revision(record.seq)),
            found: last.map(Revision),
        })
    }

    async fn put_state_with(
        &self,
        key: &str,
        body: &serde_json::Value,
        expected: Expected,
        fence: Option<&Fence>,
    ) -> Result<Revision, StoreError> {
        validate_state_key(key)?;
        let text = document_text(&format!("state {key}"), "the state document", body)?;
        let mut client = self.client().await?;
        let Some(fence) = fence else {
            return self.put_state_on(&client, key, &text, expected).await;
        };
        let tx = self.fenced_transaction(&mut client, fence).await?;
        let revision = self.put_state_on(&tx, key, &text, expected).await?;
        tx.commit().await.map_err(self.db())?;
        Ok(revision)
    }

    /// Several state writes in one transaction (after the fence's check, when given): a
    /// conflict on any of them rolls back all of them.
    pub(crate) async fn put_states_with(
        &self,
        writes: &[StateWrite<'_>],
        fence: Option<&Fence>,
    ) -> Result<Vec<Revision>, StoreError> {
        let mut texts = Vec::with_capacity(writes.len());
        for write in writes {
            validate_state_key(write.key)?;
            texts.push(document_text(&format!("state {}", write.key), "the state document", write.body)?);
        }
        let mut client = self.client().await?;
        let tx = match fence {
            Some(fence) => self.fenced_transaction(&mut client, fence).await?,
            None => client.transaction().await.map_err(self.db())?,
        };
        let mut revisions = Vec::with_capacity(writes.len());
        for (write, text) in writes.iter().zip(&texts) {
            // An error drops `tx` uncommitted: nothing of the batch is written.
            revisions.push(self.put_state_on(&tx, write.key, text, write.expected).await?);
        }
        tx.commit().await.map_err(self.db())?;
        Ok(revisions)
    }

    /// `updated_at` is the database's clock, for pruning by age.
    async fn put_state_on(
        &self,
        client: &impl GenericClient,
        key: &str,
        text: &str,
        expected: Expected,
    ) -> Result<Revision, StoreError> {
        let at = |e: tokio_postgres::Error| self.location.error_at(self.location.row("state", key), &e);
        let written = match expected {
            Expected::Absent => client
                .query_opt(
                    "INSERT INTO state (key, revision, body, updated_at) VALUES ($1, 1, $2, now())
                     ON CONFLICT (key) DO NOTHING RETURNING revision",
                    &[&key, &text],
                )
                .await
                .map_err(at)?,
            Expected::Any => client
                .query_opt(
                    "INSERT INTO state (key, revision, body, updated_at) VALUES ($1, 1, $2, now())
                     ON CONFLICT (key) DO UPDATE SET
                        revision = state.revision + 1, body = excluded.body, updated_at = excluded.updated_at
                     RETURNING revision",
                    &[&key, &text],
                )
                .await
                .map_err(at)?,
            Expected::Revision(revision) => client
                .query_opt(
                    "UPDATE state SET revision = revision + 1, body = $2, updated_at = now()
                     WHERE key = $1 AND revision = $3
                     RETURNING revision",
                    &[&key, &text, &to_i64(revision.0)],
                )
                .await
                .map_err(at)?,
        };
        match written {
            Some(row) => Ok(to_revision(row.try_get(0).map_err(at)?).unwrap_or(Revision(0))),
            None => {
                let found = self.revision_of(client, "state", "key", key).await?;
                Err(StoreError::Conflict { run_id: format!("state {key}"), expected, found })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_and_lock_keys_follow_the_schema() {
        assert_eq!(channel_of("public"), "salvage_runs");
        assert_eq!(channel_of("team_a"), "salvage_runs:team_a");
        let long = "s".repeat(60);
        assert!(channel_of(&long).len() <= 63 && channel_of(&long).starts_with("salvage_runs:"));
        assert_ne!(channel_of(&long), channel_of(&"t".repeat(60)));
        assert_eq!(schema_key("public"), schema_key("public"));
        assert_ne!(schema_key("public"), schema_key("team_a"));
    }

    /// A schema of the test server (`$SALVAGE_TEST_POSTGRES`, as in `tests/common/postgres.rs`),
    /// dropped when this is.
    struct LiveSchema {
        base: String,
        name: String,
        url: PostgresUrl,
    }

    impl LiveSchema {
        /// `None` (after a loud note) without a server, unless `SALVAGE_REQUIRE_POSTGRES` is set.
        async fn create() -> Option<LiveSchema> {
            let base = std::env::var("SALVAGE_TEST_POSTGRES")
                .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned());
            let name = format!("salvage_unit_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
            let created = async {
                let client =
                    connect(&PostgresUrl::parse(&base)?.config()?, &PgLocation::new(PostgresUrl::parse(&base)?))
                        .await?;
                client
                    .batch_execute(&format!("CREATE SCHEMA {name}"))
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))
            };
            if let Err(error) = created.await {
                let required = std::env::var_os("SALVAGE_REQUIRE_POSTGRES").is_some_and(|v| !v.is_empty() && v != "0");
                assert!(!required, "PostgreSQL is not usable ({error}) and SALVAGE_REQUIRE_POSTGRES is set");
                eprintln!("SKIPPED: PostgreSQL unit test: {error}");
                return None;
            }
            let separator = if base.contains('?') { '&' } else { '?' };
            let url = PostgresUrl::parse(&format!("{base}{separator}options=-csearch_path%3D{name}")).ok()?;
            Some(LiveSchema { base, name, url })
        }
    }

    impl Drop for LiveSchema {
        fn drop(&mut self) {
            let (base, statement) = (self.base.clone(), format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                runtime.block_on(async {
                    let url = PostgresUrl::parse(&base).ok()?;
                    let client = connect(&url.config().ok()?, &PgLocation::new(url)).await.ok()?;
                    client.batch_execute(&statement).await.ok()
                })
            })
            .join();
            if !matches!(dropped, Ok(Some(()))) {
                eprintln!("warning: could not drop schema {}", self.name);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn several_state_writes_commit_all_or_none() {
        let Some(schema) = LiveSchema::create().await else { return };
        let store = PostgresStore::open(&schema.url).await.unwrap_or_else(|e| panic!("{e}"));
        crate::store::state::assert_state_writes_all_or_none(&store).await;
    }

    /// Every lookup the store makes is served by an index that also gives the order it needs:
    /// with sequential scans, bitmap scans and sorts priced out, no plan needs a scan of the
    /// table or a sort.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_use_the_indexes() {
        use crate::store::claims::Finish;
        let Some(schema) = LiveSchema::create().await else { return };
        let store = PostgresStore::open(&schema.url).await.unwrap_or_else(|e| panic!("{e}"));
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
        for n in 0..100 {
            let status = ["running", "completed", "waiting_for_approval", "failed"][n % 4];
            let created_at = format!("2026-01-01T00:00:{:02}.000Z", n % 60);
            let doc = ExecutionDoc {
                id: format!("exec-{n:03}"),
                run_id: format!("run-{:03}", n % 7),
                plan_id: "plan".into(),
                status: status.into(),
                created_at: created_at.clone(),
                updated_at: created_at,
                body: serde_json::json!({}),
            };
            store.put_execution(doc.clone(), Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
            for seq in 1..=3 {
                let record = JournalRecord { execution_id: doc.id.clone(), seq, body: serde_json::json!({}) };
                store.append_journal(&record).await.unwrap_or_else(|e| panic!("{e}"));
            }
            store
                .put_state(&format!("serve/incident/{n}"), &serde_json::json!({}), Expected::Any)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let client = store.client().await.unwrap_or_else(|e| panic!("{e}"));
        client
            .batch_execute("ANALYZE; SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_sort = off")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let plan = |sql: String, values: Vec<Box<dyn ToSql + Sync + Send>>| {
            let client = &client;
            async move {
                let values: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref() as _).collect();
                let rows = client.query(&format!("EXPLAIN {sql}"), &values).await.unwrap_or_else(|e| panic!("{e}"));
                rows.iter().map(|row| row.get::<_, String>(0)).collect::<Vec<_>>().join(" | ")
            }
        };
        let text = |value: &str| -> Box<dyn ToSql + Sync + Send> { Box::new(value.to_owned()) };
        let queries = [
            (RunQuery::in_trace("root-1"), "runs_by_root"),
            (RunQuery::children_of("run-003"), "runs_by_parent"),
            (RunQuery::with_status(RunStatus::Failed), "runs_by_status"),
            (RunQuery::all(), "runs_by_listing"),
        ];
        let mut cases = Vec::new();
        for (query, index) in queries {
            let (sql, values) = list_sql(&query);
            cases.push((format!("{query:?}"), sql, values.iter().map(|v| text(v)).collect::<Vec<_>>(), index));
        }
        let long = |value: i64| -> Box<dyn ToSql + Sync + Send> { Box::new(value) };
        cases.push(("subtree".into(), subtree_sql(), vec![text("run-001")], "runs_by_parent"));
        cases.push(("changes".into(), changes_since_sql(), vec![long(10), long(100)], "runs_by_change"));
        cases.push((
            "get".into(),
            "SELECT id, body, revision FROM runs WHERE id = $1".into(),
            vec![text("run-001")],
            "runs_pkey",
        ));
        cases.push((
            "executions by status".into(),
            list_executions_sql(true),
            vec![text("failed")],
            "executions_by_status",
        ));
        cases.push(("executions".into(), list_executions_sql(false), vec![], "executions_by_listing"));
        cases.push(("executions of a run".into(), executions_of_run_sql(), vec![text("r")], "executions_by_run"));
        cases.push(("journal".into(), JOURNAL.into(), vec![text("e")], "journal_pkey"));
        cases.push(("last seq".into(), LAST_SEQ.into(), vec![text("e")], "journal_pkey"));
        cases.push(("state".into(), LIST_STATE.into(), vec![text("serve/"), text("serve0")], "state_pkey"));
        for (name, sql, values, index) in cases {
            let plan = plan(sql, values).await;
            assert!(plan.contains(index), "{name} should use {index}: {plan}");
            assert!(!plan.contains("Seq Scan on runs") && !plan.contains("Sort"), "{name}: {plan}");
        }

        // Claims: no statement scans the table (the claim query sorts only the due rows).
        for n in 0..200 {
            let key = format!("incident/{n:03}");
            store
                .offer(&key, "incident", &serde_json::json!({}), Duration::ZERO)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let claimed = store.claim("h", Duration::from_secs(60), 100, &[]).await.unwrap_or_else(|e| panic!("{e}"));
        for claim in &claimed[..50] {
            store.finish(&claim.fence, Finish::Done).await.unwrap_or_else(|e| panic!("{e}"));
        }
        client
            .batch_execute("ANALYZE; SET enable_bitmapscan = on; SET enable_sort = on")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let kinds = |values: &[&str]| -> Box<dyn ToSql + Sync + Send> {
            Box::new(values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>())
        };
        let claim_cases = [
            (
                "claim",
                claims::CLAIM,
                vec![text("h"), kinds(&["incident"]), long(1), long(10)],
                &["claims_by_due", "claims_by_expiry"][..],
            ),
            (
                "renew",
                claims::RENEW,
                vec![text("h"), long(1), kinds(&["k"]), Box::new(vec![1_i64])],
                &["claims_pkey", "claims_by_expiry", "claims_by_due"][..],
            ),
            ("fence", claims::CHECK_FENCE, vec![text("k"), text("h"), long(1)], &["claims_pkey"][..]),
            ("prune", claims::PRUNE_CLAIMS, vec![long(1), long(1000)], &["claims_pkey"][..]),
        ];
        for (name, sql, values, indexes) in claim_cases {
            let plan = plan(sql.to_owned(), values).await;
            // On a table this small the planner may prefer either `(state, …)` index.
            assert!(indexes.iter().any(|index| plan.contains(index)), "{name} should use {indexes:?}: {plan}");
            assert!(!plan.contains("Seq Scan"), "{name}: {plan}");
        }
    }

    #[test]
    fn listing_queries_filter_on_indexed_columns_in_listing_order() {
        let (sql, values) = list_sql(&RunQuery {
            status: Some(RunStatus::Failed),
            root_run_id: Some("r".into()),
            parent_run_id: Some("p".into()),
        });
        assert_eq!(
            sql,
            "SELECT id, root_run_id, parent_run_id, status, created_at, revision FROM runs \
             WHERE parent_run_id = $1 AND root_run_id = $2 AND status = $3 ORDER BY created_at NULLS FIRST, id"
        );
        assert_eq!(values, ["p", "r", "failed"]);
        assert!(!list_sql(&RunQuery::all()).0.contains("WHERE"));
    }
}
