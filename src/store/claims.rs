//! Claims, leases and fencing: what lets several `salvage serve` replicas share one store and
//! work each incident or execution on exactly one of them at a time.
//!
//! These are the backend-neutral types; only the `postgres://` store implements them
//! ([`super::PostgresStore`], see `store/postgres/claims.rs` for the SQL). SQLite, file and
//! memory stores serve one daemon and need none of it.
//!
//! - **A claim** is a row per piece of work (`key`, e.g. an incident or an execution id) that is
//!   `ready` (offered, due at some time), `claimed` (by one holder, under a lease that expires
//!   at a time on the **database's clock**) or `done`. Claiming takes due work with
//!   `FOR UPDATE SKIP LOCKED`, so concurrent claimers never wait for each other and never take
//!   the same key; a claim whose lease expired (its replica died or stalled) is taken again by
//!   the same query.
//! - **Every claim carries an epoch** that grows each time the key changes hands (a database
//!   sequence: it never repeats, not even for a key pruned and offered again). The [`Fence`]
//!   — key, holder, epoch — is what every write made under the lease is conditioned on, in the
//!   write's own transaction: once another replica has taken the key, the old holder's writes
//!   fail with [`super::StoreError::LeaseLost`] and write nothing. The epoch also belongs in the
//!   idempotency key handed to a runtime, so that an effect sent by the old holder and one sent
//!   by the new holder are told apart.
//! - **Replicas** announce themselves with a heartbeat ([`ReplicaInfo`], one row per process,
//!   updated in place) and **one of them leads** the housekeeping through a lease row with a
//!   term ([`Leadership`]).
//!
//! Holder names are replica ids: unique per process (a restarted process is a new replica).

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

/// What a write made under a lease is conditioned on: the claim `key` is still held by
/// `holder` at `epoch`, and its lease has not expired.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Fence {
    pub key: String,
    pub holder: String,
    pub epoch: i64,
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{} ({})", self.key, self.epoch, self.holder)
    }
}

/// A key taken by a holder: the work to do and the fence to write under.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub key: String,
    pub kind: String,
    /// Grows every time the key changes hands (never repeats for a key).
    pub epoch: i64,
    /// What the work is (as offered).
    pub payload: Value,
    /// How many times the key was claimed since it was offered (this claim included).
    pub attempts: i32,
    pub fence: Fence,
    /// When the lease ends, on the database's clock (ISO-8601, UTC, microseconds).
    pub lease_expires_at: String,
    /// Until when this process may trust the lease by its own monotonic clock: the instant the
    /// claim was sent plus the TTL. The database set the expiry to its `now()` (which is later)
    /// plus the TTL, so the lease certainly outlives this instant whatever the clocks say.
    /// Renew before it; past it, expect [`super::StoreError::LeaseLost`].
    pub trusted_until: Instant,
}

/// How a claimed key is given back ([`super::PostgresStore::finish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The work is finished; the row is kept (`done`) until pruned, and offering the key again
    /// re-arms it.
    Done,
    /// Back to `ready`, due `after` from now (a retry after a cool-down, a timer, a graceful
    /// stop with `after` = 0). `attempts` is kept, so a caller can stop after N.
    Again { after: Duration },
}

/// What a replica says about itself in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaInfo {
    /// Unique per process; also the holder name of its claims and leadership.
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// `advisory` or `enforce`.
    pub mode: String,
    pub policy_digest: String,
    pub playbook_set_digest: String,
    /// Leases the replica holds, as it counts them.
    pub leases_held: u32,
}

/// A replica as the store sees it (`salvage status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaRow {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub mode: String,
    pub policy_digest: String,
    pub playbook_set_digest: String,
    /// As the replica reported in its last heartbeat.
    pub leases_held: u32,
    /// Unexpired claims the store holds for it now (holder = its id).
    pub claims_held: u32,
    /// ISO-8601, UTC, microseconds (database clock).
    pub started_at: String,
    pub heartbeat_at: String,
    /// When it said it stopped.
    pub stopped_at: Option<String>,
    /// Not stopped, and its last heartbeat is within the TTL asked for, on the database clock.
    pub alive: bool,
}

/// Who leads a piece of housekeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Leadership {
    pub holder: String,
    /// Grows by one every time leadership changes hands (a resignation included).
    pub term: i64,
    /// ISO-8601, UTC, microseconds (database clock).
    pub expires_at: String,
}

/// A claim row as stored, for status pages and tests ([`super::PostgresStore::claim_row`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRow {
    pub key: String,
    pub kind: String,
    /// `ready`, `claimed` or `done`.
    pub state: String,
    /// Who holds it (`claimed`) or held it last.
    pub holder: Option<String>,
    pub epoch: i64,
    pub attempts: i32,
    pub payload: Value,
    /// ISO-8601, UTC, microseconds (database clock); set while `claimed`.
    pub lease_expires_at: Option<String>,
    pub due_at: String,
    pub updated_at: String,
}
