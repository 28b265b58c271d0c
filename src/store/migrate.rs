//! `salvage migrate`: bringing a store's schema up to date on its own, before any command or
//! daemon opens it (every open also does it).

use serde::Serialize;

use super::{PostgresStore, SqliteStore, StoreError, StoreSpec};

/// One migration a call applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedMigration {
    pub version: u32,
    pub name: String,
}

/// What bringing a store's schema up to date did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationReport {
    /// The store, as shown to people (no password).
    pub store: String,
    /// The schema version before and after; `None` for stores without a schema (`memory:`,
    /// `file:`).
    pub from_version: Option<u32>,
    pub to_version: Option<u32>,
    /// The migrations this call applied, oldest first (empty when the schema was current).
    pub applied: Vec<AppliedMigration>,
}

/// Applies the migrations the store named by `spec` has not seen (creating an SQLite database
/// when missing). `memory:` and `file:` have no schema: nothing is applied.
pub async fn migrate(spec: &StoreSpec) -> Result<MigrationReport, StoreError> {
    match spec {
        StoreSpec::Sqlite(path) => SqliteStore::migrate(path.clone()).await,
        StoreSpec::Postgres(url) => PostgresStore::migrate(url).await,
        StoreSpec::Memory | StoreSpec::File(_) => {
            Ok(MigrationReport { store: spec.to_string(), from_version: None, to_version: None, applied: Vec::new() })
        }
    }
}
