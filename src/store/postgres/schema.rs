//! The PostgreSQL schema and its versioned migrations.
//!
//! `schema_migrations` records every version applied (with its name and when). Each migration
//! runs in its own transaction that first takes a transaction-scoped advisory lock for the
//! store's schema (`pg_advisory_xact_lock`) and then re-reads the versions applied, so two
//! processes opening a fresh database at once apply each step exactly once: the second waits
//! for the first to commit and then finds nothing left to do.
//!
//! Text columns that are compared or ordered use `COLLATE "C"` (byte order, which is Rust's
//! `String` order and SQLite's `BINARY`), whatever the database's locale; indexes list
//! `created_at NULLS FIRST` because every backend lists runs without a creation time first.
//! Run bodies are `text`, never `jsonb`: `jsonb` reorders object keys and drops duplicates,
//! and saving must lose nothing.

use tokio_postgres::Client;

use super::{LOCK_MIGRATE, PgLocation};
use crate::model::TreeLeaf;
use crate::store::StoreError;
use crate::store::migrate::{AppliedMigration, MigrationReport};

/// One schema step: version `n` is `MIGRATIONS[n - 1]`.
pub(crate) struct Migration {
    pub(crate) name: &'static str,
    pub(crate) sql: &'static str,
    /// Rows to fill in Rust after `sql`, in the same transaction.
    pub(crate) fill: Option<Fill>,
}

/// Data a migration computes for the rows already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    /// `runs.tree_leaf`: each run's [`TreeLeaf`] from its record.
    TreeLeaves,
}

/// Runs whose tree leaves [`fill_tree_leaves`] computes per statement.
const FILL_BATCH: i64 = 500;

/// Fills `runs.tree_leaf` for every run, a batch at a time in id order. A record that cannot
/// be read keeps `NULL` (reading it reports the problem, as before).
async fn fill_tree_leaves(tx: &tokio_postgres::Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    let mut after = String::new();
    loop {
        let rows =
            tx.query("SELECT id, body FROM runs WHERE id > $1 ORDER BY id LIMIT $2", &[&after, &FILL_BATCH]).await?;
        let Some(last) = rows.last() else { return Ok(()) };
        after = last.try_get(0)?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut leaves = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get(0)?;
            let body: &str = row.try_get(1)?;
            if let Ok(run) = crate::store::decode_run(&id, body.as_bytes()) {
                leaves.push(TreeLeaf::of(&run).encode());
                ids.push(id);
            }
        }
        tx.execute(
            "UPDATE runs SET tree_leaf = fill.leaf FROM unnest($1::text[], $2::text[]) AS fill(id, leaf) \
             WHERE runs.id = fill.id",
            &[&ids, &leaves],
        )
        .await?;
    }
}

/// The schema, in order. Adding a table later = appending a migration.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "runs",
        sql: r#"
            CREATE SEQUENCE run_changes AS bigint;
            CREATE TABLE runs (
                id text COLLATE "C" PRIMARY KEY,
                root_run_id text COLLATE "C" NOT NULL,
                parent_run_id text COLLATE "C",
                status text COLLATE "C" NOT NULL,
                created_at text COLLATE "C",
                revision bigint NOT NULL,
                change_seq bigint NOT NULL,
                body text NOT NULL
            );
            CREATE INDEX runs_by_root ON runs (root_run_id, created_at NULLS FIRST, id);
            CREATE INDEX runs_by_parent ON runs (parent_run_id, created_at NULLS FIRST, id);
            CREATE INDEX runs_by_status ON runs (status, created_at NULLS FIRST, id);
            CREATE INDEX runs_by_listing ON runs (created_at NULLS FIRST, id);
            CREATE UNIQUE INDEX runs_by_change ON runs (change_seq);
        "#,
        fill: None,
    },
    Migration {
        name: "executions",
        sql: r#"
            CREATE TABLE executions (
                id text COLLATE "C" PRIMARY KEY,
                run_id text COLLATE "C" NOT NULL,
                plan_id text NOT NULL,
                status text COLLATE "C" NOT NULL,
                created_at text COLLATE "C" NOT NULL,
                updated_at text NOT NULL,
                revision bigint NOT NULL,
                body text NOT NULL
            );
            CREATE INDEX executions_by_status ON executions (status, created_at, id);
            CREATE INDEX executions_by_listing ON executions (created_at, id);
            CREATE INDEX executions_by_run ON executions (run_id, created_at, id);
            CREATE TABLE journal (
                execution_id text COLLATE "C" NOT NULL,
                seq bigint NOT NULL,
                body text NOT NULL,
                PRIMARY KEY (execution_id, seq)
            );
        "#,
        fill: None,
    },
    Migration {
        name: "state",
        sql: r#"
            CREATE TABLE state (
                key text COLLATE "C" PRIMARY KEY,
                revision bigint NOT NULL,
                body text NOT NULL
            );
        "#,
        fill: None,
    },
    // Several replicas (see `store/postgres/claims.rs`). Epochs come from a sequence so that a
    // key pruned and offered again never repeats an epoch (idempotency keys carry it). Every
    // time is `timestamptz` set from the database's `now()`. `state.updated_at` lets the leader
    // prune documents by age (existing rows count from the migration).
    Migration {
        name: "claims",
        sql: r#"
            CREATE SEQUENCE claim_epochs AS bigint;
            CREATE TABLE claims (
                key text COLLATE "C" PRIMARY KEY,
                kind text COLLATE "C" NOT NULL,
                state text COLLATE "C" NOT NULL CHECK (state IN ('ready', 'claimed', 'done')),
                holder text COLLATE "C",
                epoch bigint NOT NULL DEFAULT 0,
                lease_expires_at timestamptz,
                due_at timestamptz NOT NULL,
                payload text NOT NULL,
                attempts integer NOT NULL DEFAULT 0,
                created_at timestamptz NOT NULL DEFAULT now(),
                updated_at timestamptz NOT NULL DEFAULT now(),
                CHECK (state <> 'claimed' OR (holder IS NOT NULL AND lease_expires_at IS NOT NULL))
            );
            CREATE INDEX claims_by_due ON claims (state, due_at, key);
            CREATE INDEX claims_by_expiry ON claims (state, lease_expires_at);
            CREATE INDEX claims_finished ON claims (updated_at) WHERE state = 'done';
            CREATE TABLE replicas (
                id text COLLATE "C" PRIMARY KEY,
                host text NOT NULL,
                pid bigint NOT NULL,
                mode text NOT NULL,
                policy_digest text NOT NULL,
                playbook_set_digest text NOT NULL,
                started_at timestamptz NOT NULL DEFAULT now(),
                heartbeat_at timestamptz NOT NULL DEFAULT now(),
                leases_held integer NOT NULL DEFAULT 0,
                stopped_at timestamptz
            );
            CREATE TABLE leadership (
                name text COLLATE "C" PRIMARY KEY,
                holder text COLLATE "C",
                term bigint NOT NULL,
                expires_at timestamptz NOT NULL
            );
            ALTER TABLE state ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
        "#,
        fill: None,
    },
    Migration { name: "tree leaves", sql: "ALTER TABLE runs ADD COLUMN tree_leaf text;", fill: Some(Fill::TreeLeaves) },
];

const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// The schema version of a store opened for reading: every migration this salvage knows must
/// have been applied (a read command changes nothing, so it cannot bring a schema up to date).
pub(crate) async fn require_current(
    client: &Client,
    location: &PgLocation,
    schema: &str,
    migrations: &[Migration],
) -> Result<u32, StoreError> {
    let db = |error: tokio_postgres::Error| location.error(&error);
    let needed = u32::try_from(migrations.len()).unwrap_or(u32::MAX);
    let not_current = |found: String| StoreError::SchemaNotCurrent {
        location: location.to_string(),
        found: format!("{found} in schema {schema:?}"),
        needed,
    };
    let table = client.query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[]).await.map_err(db)?;
    if !table.try_get::<_, bool>(0).map_err(db)? {
        return Err(not_current("no salvage store".to_owned()));
    }
    let row = client.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[]).await.map_err(db)?;
    let version = u32::try_from(row.try_get::<_, i32>(0).map_err(db)?).unwrap_or(0);
    match version.cmp(&needed) {
        std::cmp::Ordering::Equal => Ok(version),
        std::cmp::Ordering::Less => Err(not_current(format!("schema version {version}"))),
        std::cmp::Ordering::Greater => Err(StoreError::Database {
            location: location.to_string(),
            message: format!(
                "schema version {version} is newer than this salvage understands ({needed}); use a newer salvage"
            ),
        }),
    }
}

/// Brings the schema `client`'s search path selects up to date (see the module docs).
pub(crate) async fn migrate(
    client: &mut Client,
    location: &PgLocation,
    schema_key: i32,
    migrations: &[Migration],
) -> Result<MigrationReport, StoreError> {
    let db = |error: tokio_postgres::Error| location.error(&error);
    let known = u32::try_from(migrations.len()).unwrap_or(u32::MAX);
    let mut applied = Vec::new();
    let mut from_version = None;
    loop {
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_MIGRATE, &schema_key]).await.map_err(db)?;
        tx.batch_execute(CREATE_MIGRATIONS_TABLE).await.map_err(db)?;
        let row = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[]).await.map_err(db)?;
        let version: i32 = row.try_get(0).map_err(db)?;
        let version = u32::try_from(version).unwrap_or(0);
        from_version.get_or_insert(version);
        if version > known {
            return Err(StoreError::Database {
                location: location.to_string(),
                message: format!(
                    "schema version {version} is newer than this salvage understands ({known}); use a newer salvage"
                ),
            });
        }
        let Some(step) = migrations.get(version as usize) else {
            tx.commit().await.map_err(db)?;
            return Ok(MigrationReport {
                store: location.to_string(),
                from_version,
                to_version: Some(version),
                applied,
            });
        };
        let next = version + 1;
        tx.batch_execute(step.sql).await.map_err(db)?;
        match step.fill {
            Some(Fill::TreeLeaves) => fill_tree_leaves(&tx).await.map_err(db)?,
            None => {}
        }
        let next_i32 = i32::try_from(next).unwrap_or(i32::MAX);
        tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[&next_i32, &step.name])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        tracing::info!(store = %location, version = next, name = step.name, "applied schema migration");
        applied.push(AppliedMigration { version: next, name: step.name.to_owned() });
    }
}
