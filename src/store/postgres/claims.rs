//! Claims with leases, fenced writes, replica heartbeats and leadership on PostgreSQL (the
//! types and the model are in [`crate::store::claims`]).
//!
//! Every time here is the database's: leases, due times and heartbeats are computed from
//! `now()` in the statement that sets or compares them, never from a replica's clock, so a
//! replica whose clock is wrong can neither keep a lease too long nor steal one early. A lease
//! is valid while `lease_expires_at > now()` and claimable once `lease_expires_at <= now()`.
//!
//! - [`PostgresStore::claim`] is one statement: it locks due `ready` rows and `claimed` rows
//!   whose lease expired with `FOR UPDATE SKIP LOCKED` (concurrent claimers never wait for or
//!   take each other's rows) and, in the same statement, gives them to the holder with a new
//!   epoch. Taking an expired claim is how the work of a dead or stalled replica is rescued; the
//!   new epoch is what fences the old holder out.
//! - [`PostgresStore::renew`] extends every unexpired claim of a holder in one statement and
//!   says which ones it still had.
//! - A [`FencedStore`] ([`PostgresStore::fenced`]) is a whole [`crate::store::Store`] whose every
//!   write runs in a transaction that first checks the fence (see [`CHECK_FENCE`] for why that
//!   check cannot be overtaken by a takeover) and fails with [`StoreError::LeaseLost`], writing
//!   nothing, once the key is no longer the holder's at that epoch.
//! - Epochs come from the `claim_epochs` sequence, so an epoch never repeats — not even for a
//!   key whose `done` row was pruned and which is offered again — and can go into idempotency
//!   keys.
//! - Nothing grows per heartbeat: claims, replicas and leadership rows are updated in place;
//!   `done` claims, old replicas and old state documents are deleted by [`PostgresStore::prune`],
//!   [`PostgresStore::prune_replicas`] and [`PostgresStore::prune_state`] (the leader's job), in
//!   batches that skip rows someone else has locked.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::{PostgresStore, storable};
use crate::model::{Run, TreeLeaf};
use crate::store::claims::{Claim, ClaimRow, Fence, Finish, Leadership, ReplicaInfo, ReplicaRow};
use crate::store::executions::{ExecutionDoc, ExecutionStore, JournalRecord, StoredExecution};
use crate::store::state::{StateStore, StateWrite, StoredState, validate_state_key};
use crate::store::{
    Expected, ForestScanPage, LineageLink, ListingKey, Partial, Revision, RunIndexEntry, RunQuery, RunStore,
    StoreError, StoredRun, document_text,
};

/// A timestamp column as microseconds since the Unix epoch (read without the `time` feature
/// of tokio-postgres, and exact).
macro_rules! micros {
    ($column:literal) => {
        concat!("(EXTRACT(EPOCH FROM ", $column, ") * 1000000)::bigint")
    };
}

/// The columns `PostgresStore::claim_from_row` reads, in its order.
macro_rules! claim_columns {
    () => {
        concat!("key, kind, epoch, payload, attempts, ", micros!("lease_expires_at"), ", ", micros!("due_at"))
    };
}

/// Takes up to `$4` due keys of the kinds `$2` (every kind when empty) for holder `$1` for
/// `$3` µs: ready ones that are due, and claimed ones whose lease expired (rescue). One
/// statement: the CTE locks the rows (skipping rows other transactions hold, so claimers never
/// queue behind each other or take the same key) and the `UPDATE` gives them a new epoch from
/// the sequence. `MATERIALIZED` keeps the locking subquery evaluated once.
pub(super) const CLAIM: &str = concat!(
    "WITH due AS MATERIALIZED (
        SELECT key AS due_key FROM claims
        WHERE (cardinality($2::text[]) = 0 OR kind = ANY($2::text[]))
          AND ((state = 'ready' AND due_at <= now()) OR (state = 'claimed' AND lease_expires_at <= now()))
        ORDER BY due_at, key
        LIMIT $4
        FOR UPDATE SKIP LOCKED
    )
    UPDATE claims SET
        state = 'claimed', holder = $1, epoch = nextval('claim_epochs'), attempts = attempts + 1,
        lease_expires_at = now() + $3::bigint * interval '1 microsecond', updated_at = now()
    FROM due WHERE claims.key = due.due_key
    RETURNING ",
    claim_columns!()
);

/// Takes key `$1` (kind `$2`, payload `$3`) for holder `$4` for `$5` µs: inserted claimed when
/// new; taken when ready, done or expired (new epoch); kept when already the holder's and
/// unexpired (same epoch, lease extended). A `done` key is new work: kind, payload and due time
/// are the caller's and attempts restart. No row when another holder's lease is running.
const ACQUIRE: &str = concat!(
    "INSERT INTO claims AS c (key, kind, state, holder, epoch, lease_expires_at, due_at, payload, attempts)
    VALUES ($1, $2, 'claimed', $4, nextval('claim_epochs'), now() + $5::bigint * interval '1 microsecond', now(), $3, 1)
    ON CONFLICT (key) DO UPDATE SET
        epoch = CASE WHEN c.state = 'claimed' AND c.holder = excluded.holder AND c.lease_expires_at > now()
                     THEN c.epoch ELSE excluded.epoch END,
        attempts = CASE WHEN c.state = 'done' THEN 1
                        WHEN c.state = 'claimed' AND c.holder = excluded.holder AND c.lease_expires_at > now()
                        THEN c.attempts
                        ELSE c.attempts + 1 END,
        kind = CASE WHEN c.state = 'done' THEN excluded.kind ELSE c.kind END,
        payload = CASE WHEN c.state = 'done' THEN excluded.payload ELSE c.payload END,
        due_at = CASE WHEN c.state = 'done' THEN excluded.due_at ELSE c.due_at END,
        state = 'claimed', holder = excluded.holder, lease_expires_at = excluded.lease_expires_at,
        updated_at = now()
    WHERE c.state <> 'claimed' OR c.lease_expires_at <= now() OR c.holder = excluded.holder
    RETURNING ",
    claim_columns!()
);

/// Offers key `$1` (kind `$2`, payload `$3`) due in `$4` µs: a new row, or a `done` one re-armed.
/// A ready or claimed row is left alone (no row returned). The epoch is never reset.
const OFFER: &str = "INSERT INTO claims AS c (key, kind, state, due_at, payload)
    VALUES ($1, $2, 'ready', now() + $4::bigint * interval '1 microsecond', $3)
    ON CONFLICT (key) DO UPDATE SET
        state = 'ready', kind = excluded.kind, payload = excluded.payload, due_at = excluded.due_at,
        attempts = 0, updated_at = now()
    WHERE c.state = 'done'
    RETURNING epoch";

/// Extends, by `$2` µs from now, every unexpired claim of holder `$1`, in one statement; returns
/// the keys and epochs renewed. The rows are locked in key order (the CTE), so two statements
/// that lock several of the same rows cannot deadlock; a row being taken over concurrently is
/// re-read once the takeover commits, and then is no longer this holder's.
pub(super) const RENEW: &str = "WITH mine AS (
        SELECT key AS mine_key FROM claims
        WHERE holder = $1 AND state = 'claimed' AND lease_expires_at > now()
            AND (key, epoch) IN (SELECT * FROM unnest($3::text[], $4::bigint[]))
        ORDER BY key
        FOR NO KEY UPDATE
    )
    UPDATE claims SET lease_expires_at = now() + $2::bigint * interval '1 microsecond'
    FROM mine WHERE claims.key = mine.mine_key
    RETURNING key, epoch";

/// The fence check every fenced write makes first, in the write's own transaction: the claim
/// `$1` is still held by `$2` at epoch `$3` and its lease runs (`now()` is the transaction's
/// start, on the database clock).
///
/// **Why a write can never land after a takeover.** `FOR SHARE` locks the claim row until the
/// write's transaction ends, and every change of a claim's holder or epoch (`claim`, `acquire`,
/// `finish`) is an `UPDATE` of that row, which needs a lock that conflicts with `FOR SHARE`.
/// So one of the two goes first, entirely:
/// - the takeover locked the row first: this check waits for it to commit, then re-reads the
///   newest version of the row (READ COMMITTED re-checks the `WHERE`), finds another holder or
///   epoch and fails — the write writes nothing ([`StoreError::LeaseLost`]);
/// - the check locked the row first: `acquire` waits, and `claim` skips the row
///   (`SKIP LOCKED`), until the write has committed; the new owner then reads the journal
///   with that write in it. Even a lease that expires while the write's transaction is open
///   cannot be taken before the write commits.
///
/// `FOR SHARE` rather than `FOR UPDATE`: several writes of one holder may run at once (shared
/// locks do not conflict with each other) and a write does not block the holder's own renewals
/// for longer than itself.
pub(super) const CHECK_FENCE: &str = "SELECT 1 FROM claims
    WHERE key = $1 AND holder = $2 AND epoch = $3 AND state = 'claimed' AND lease_expires_at > now()
    FOR SHARE";

/// `finish(Done)`, fenced in the statement itself.
const FINISH_DONE: &str = "UPDATE claims SET state = 'done', lease_expires_at = NULL, updated_at = now()
    WHERE key = $1 AND holder = $2 AND epoch = $3 AND state = 'claimed' AND lease_expires_at > now()";

/// `finish(Again { after: $4 µs })`, fenced in the statement itself.
const FINISH_AGAIN: &str = "UPDATE claims SET
        state = 'ready', lease_expires_at = NULL, due_at = now() + $4::bigint * interval '1 microsecond',
        updated_at = now()
    WHERE key = $1 AND holder = $2 AND epoch = $3 AND state = 'claimed' AND lease_expires_at > now()";

/// How many rows one pruning statement deletes at most (short transactions, short locks).
const PRUNE_BATCH: i64 = 1000;

/// Deletes up to `$2` `done` claims last changed more than `$1` µs ago (index `claims_finished`).
/// (`= ANY(ARRAY(…))` so that the rows are deleted by primary key, not by joining the table.)
pub(super) const PRUNE_CLAIMS: &str = "DELETE FROM claims WHERE key = ANY(ARRAY(
        SELECT key FROM claims
        WHERE state = 'done' AND updated_at < now() - $1::bigint * interval '1 microsecond'
        ORDER BY updated_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ))";

/// Deletes up to `$4` state documents directly under the prefix (`$1` = `prefix/`, `$2` =
/// `prefix0`, the key range [`StateStore::list_state`] reads) not written for `$3` µs.
const PRUNE_STATE: &str = "DELETE FROM state WHERE key = ANY(ARRAY(
        SELECT key FROM state
        WHERE key >= $1 AND key < $2 AND strpos(substr(key, char_length($1) + 1), '/') = 0
          AND updated_at < now() - $3::bigint * interval '1 microsecond'
        ORDER BY key
        LIMIT $4
        FOR UPDATE SKIP LOCKED
    ))";

/// A page of old state documents under a prefix, after key `$1` (exclusive), below `$2`.
const OLD_STATE: &str = "SELECT key, revision, body FROM state
    WHERE key > $1 AND key < $2 AND strpos(substr(key, char_length($4) + 1), '/') = 0
      AND updated_at < now() - $3::bigint * interval '1 microsecond'
    ORDER BY key
    LIMIT $5";

/// Deletes the documents whose key and revision are still `$1[i]`, `$2[i]`.
const DELETE_STATE_AT: &str = "DELETE FROM state USING unnest($1::text[], $2::bigint[]) AS gone(key, revision)
    WHERE state.key = gone.key AND state.revision = gone.revision";

const HEARTBEAT: &str = "INSERT INTO replicas AS r
        (id, host, pid, mode, policy_digest, playbook_set_digest, leases_held, started_at, heartbeat_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, now(), now())
    ON CONFLICT (id) DO UPDATE SET
        host = excluded.host, pid = excluded.pid, mode = excluded.mode,
        policy_digest = excluded.policy_digest, playbook_set_digest = excluded.playbook_set_digest,
        leases_held = excluded.leases_held, heartbeat_at = now(), stopped_at = NULL";

/// Every replica with its claims held now (alive = not stopped and a heartbeat within `$1` µs).
const REPLICAS: &str = concat!(
    "SELECT r.id, r.host, r.pid, r.mode, r.policy_digest, r.playbook_set_digest, r.leases_held,
        COALESCE(held.n, 0), ",
    micros!("r.started_at"),
    ", ",
    micros!("r.heartbeat_at"),
    ", ",
    micros!("r.stopped_at"),
    ",
        r.stopped_at IS NULL AND r.heartbeat_at > now() - $1::bigint * interval '1 microsecond'
    FROM replicas AS r
    LEFT JOIN (
        SELECT holder, count(*) AS n FROM claims
        WHERE state = 'claimed' AND lease_expires_at > now()
        GROUP BY holder
    ) AS held ON held.holder = r.id
    ORDER BY r.id"
);

/// Becomes or stays leader `$1` as `$2` for `$3` µs: when nobody leads, the lease expired, or it
/// is already `$2`'s. The term grows only when the holder changes (from nobody, after a
/// resignation, included).
const LEAD: &str = concat!(
    "INSERT INTO leadership AS l (name, holder, term, expires_at)
    VALUES ($1, $2, 1, now() + $3::bigint * interval '1 microsecond')
    ON CONFLICT (name) DO UPDATE SET
        term = CASE WHEN l.holder IS NOT DISTINCT FROM excluded.holder THEN l.term ELSE l.term + 1 END,
        holder = excluded.holder, expires_at = excluded.expires_at
    WHERE l.holder IS NULL OR l.holder = excluded.holder OR l.expires_at <= now()
    RETURNING holder, term, ",
    micros!("expires_at")
);

const LEADER: &str = concat!(
    "SELECT holder, term, ",
    micros!("expires_at"),
    " FROM leadership WHERE name = $1 AND holder IS NOT NULL AND expires_at > now()"
);

const CLAIM_ROW: &str = concat!(
    "SELECT key, kind, state, holder, epoch, attempts, payload, ",
    micros!("lease_expires_at"),
    ", ",
    micros!("due_at"),
    ", ",
    micros!("updated_at"),
    " FROM claims WHERE key = $1"
);

/// The largest span a duration is sent as (durations are at most 366 days where they are
/// parsed; this only keeps `now() ± span` inside PostgreSQL's range whatever a caller passes).
const MAX_SPAN: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

/// A duration as the microseconds the statements take.
fn span(duration: Duration) -> i64 {
    i64::try_from(duration.min(MAX_SPAN).as_micros()).unwrap_or(i64::MAX)
}

/// Microseconds since the Unix epoch as a time.
fn time_of(micros: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).ok()
}

/// A database time as ISO-8601 in UTC with microseconds (fixed width, so that two of them
/// compare as strings the way they compare as times).
fn iso_micros(micros: i64) -> Option<String> {
    let at = time_of(micros)?;
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    ))
}

/// Checks a claim key or holder name: not empty, no NUL (PostgreSQL text cannot hold one), at
/// most 400 bytes.
fn validate_name(what: &str, name: &str) -> Result<(), StoreError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if !storable(name) {
        Some("it contains NUL")
    } else if name.len() > 400 {
        Some("it is longer than 400 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidRunId { run_id: format!("{what} {name}"), reason: reason.to_owned() }),
        None => Ok(()),
    }
}

impl PostgresStore {
    /// The database's clock (`now()`), which every lease, due time and heartbeat is measured on.
    pub async fn db_now(&self) -> Result<OffsetDateTime, StoreError> {
        let client = self.client().await?;
        let row = client.query_one(concat!("SELECT ", micros!("now()")), &[]).await.map_err(self.db())?;
        let micros: i64 = row.try_get(0).map_err(self.db())?;
        time_of(micros).ok_or_else(|| self.location.message(self.location.to_string(), "now() is out of range"))
    }

    /// Offers `key` as work of `kind`, due `delay` from now (database clock). A new key is
    /// inserted `ready`; a `done` key is re-armed (ready again, with this payload, attempts 0);
    /// a key that is `ready` or `claimed` is left as it is and `false` is returned — offering
    /// the same work twice makes one claim.
    pub async fn offer(&self, key: &str, kind: &str, payload: &Value, delay: Duration) -> Result<bool, StoreError> {
        validate_name("claim key", key)?;
        validate_name("claim kind", kind)?;
        let payload = document_text(&self.location.row("claims", key), "the payload", payload)?;
        let client = self.client().await?;
        let statement = client.prepare_cached(OFFER).await.map_err(self.db())?;
        let row = client.query_opt(&statement, &[&key, &kind, &payload, &span(delay)]).await.map_err(self.at(key))?;
        Ok(row.is_some())
    }

    /// Takes up to `limit` due keys of `kinds` (every kind when empty) for `holder`, leased for
    /// `ttl`: offered keys whose time has come and claimed keys whose lease expired (their
    /// holder died or stalled; the new epoch fences it out), oldest due first. Keys another
    /// transaction has locked are skipped, never waited for. A key whose payload is not JSON is
    /// left claimed and logged (it comes back after its TTL, for an operator to repair).
    pub async fn claim(
        &self,
        holder: &str,
        ttl: Duration,
        limit: usize,
        kinds: &[&str],
    ) -> Result<Vec<Claim>, StoreError> {
        validate_name("claim holder", holder)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let kinds: Vec<&str> = kinds.to_vec();
        let sent = Instant::now();
        let client = self.client().await?;
        let statement = client.prepare_cached(CLAIM).await.map_err(self.db())?;
        let rows = client.query(&statement, &[&holder, &kinds, &span(ttl), &limit]).await.map_err(self.db())?;
        let mut claims = Vec::with_capacity(rows.len());
        for row in &rows {
            match self.claim_from_row(row, holder, sent + ttl) {
                Ok(claim) => claims.push(claim),
                Err(error) => tracing::error!(store = %self.location, %error, "claimed a key it cannot use"),
            }
        }
        claims.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.key.cmp(&b.0.key)));
        let claims: Vec<Claim> = claims.into_iter().map(|(claim, _)| claim).collect();
        if !claims.is_empty() {
            tracing::debug!(store = %self.location, holder, count = claims.len(), "claimed");
        }
        Ok(claims)
    }

    /// Takes `key` for `holder` directly, leased for `ttl`: inserts it claimed when it is new;
    /// takes it when it is ready (due or not), done (new work: this kind and payload) or its
    /// lease expired (new epoch); keeps it when `holder` already holds it (same epoch, lease
    /// extended). `None` when another holder's lease is running. The payload returned is the
    /// stored one (an offered key keeps what it was offered with).
    pub async fn acquire(
        &self,
        key: &str,
        kind: &str,
        payload: &Value,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        validate_name("claim key", key)?;
        validate_name("claim kind", kind)?;
        validate_name("claim holder", holder)?;
        let payload = document_text(&self.location.row("claims", key), "the payload", payload)?;
        let sent = Instant::now();
        let client = self.client().await?;
        let statement = client.prepare_cached(ACQUIRE).await.map_err(self.db())?;
        let row =
            client.query_opt(&statement, &[&key, &kind, &payload, &holder, &span(ttl)]).await.map_err(self.at(key))?;
        row.map(|row| self.claim_from_row(&row, holder, sent + ttl).map(|(claim, _)| claim)).transpose()
    }

    /// Extends the unexpired claims of `working` (key, epoch) that `holder` still holds to
    /// `ttl` from now (database clock), in one statement; returns the `(key, epoch)` renewed,
    /// in key order. A claim the holder had and is not in the answer is lost (taken over,
    /// finished, or expired): stop working on it. Only the claims a holder still works on are
    /// renewed: one it let go of without giving it back (the database went away at that moment)
    /// runs out and is rescued, instead of being kept alive by heartbeats with nobody on it.
    /// The lease is trusted locally until the instant before this call + `ttl`.
    pub async fn renew(
        &self,
        holder: &str,
        ttl: Duration,
        working: &[(String, i64)],
    ) -> Result<Vec<(String, i64)>, StoreError> {
        validate_name("claim holder", holder)?;
        if working.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = working.iter().map(|(key, _)| key.as_str()).filter(|key| storable(key)).collect();
        let epochs: Vec<i64> = working.iter().filter(|(key, _)| storable(key)).map(|(_, epoch)| *epoch).collect();
        let client = self.client().await?;
        let statement = client.prepare_cached(RENEW).await.map_err(self.db())?;
        let rows = client.query(&statement, &[&holder, &span(ttl), &keys, &epochs]).await.map_err(self.db())?;
        let mut renewed = rows
            .iter()
            .map(|row| Ok((row.try_get::<_, String>(0)?, row.try_get::<_, i64>(1)?)))
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(self.db())?;
        renewed.sort();
        Ok(renewed)
    }

    /// Gives a claimed key back: `done`, or `ready` again after a delay. Fenced: when the key is
    /// no longer the fence's (another epoch or holder, finished, or the lease expired) nothing
    /// changes and the error is [`StoreError::LeaseLost`].
    pub async fn finish(&self, fence: &Fence, how: Finish) -> Result<(), StoreError> {
        if !storable(&fence.key) || !storable(&fence.holder) {
            return Err(self.lease_lost(fence));
        }
        let client = self.client().await?;
        let changed = match how {
            Finish::Done => {
                let statement = client.prepare_cached(FINISH_DONE).await.map_err(self.db())?;
                client.execute(&statement, &[&fence.key, &fence.holder, &fence.epoch]).await
            }
            Finish::Again { after } => {
                let statement = client.prepare_cached(FINISH_AGAIN).await.map_err(self.db())?;
                client.execute(&statement, &[&fence.key, &fence.holder, &fence.epoch, &span(after)]).await
            }
        }
        .map_err(self.at(&fence.key))?;
        if changed == 0 {
            return Err(self.lease_lost(fence));
        }
        Ok(())
    }

    /// Deletes `done` claims last changed more than `older_than` ago (database clock), in
    /// batches; returns how many.
    pub async fn prune(&self, older_than: Duration) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(PRUNE_CLAIMS).await.map_err(self.db())?;
        let mut total = 0;
        loop {
            let deleted = client.execute(&statement, &[&span(older_than), &PRUNE_BATCH]).await.map_err(self.db())?;
            total += deleted;
            if deleted < PRUNE_BATCH as u64 {
                break;
            }
        }
        if total > 0 {
            tracing::debug!(store = %self.location, deleted = total, "pruned finished claims");
        }
        Ok(total)
    }

    /// Deletes the state documents directly under `prefix` (those [`StateStore::list_state`]
    /// lists) not written for `older_than` (database clock); returns how many. For prefixes
    /// whose documents are all finished once old (dry runs); [`PostgresStore::prune_state_where`]
    /// looks at each document first.
    pub async fn prune_state(&self, prefix: &str, older_than: Duration) -> Result<u64, StoreError> {
        validate_state_key(prefix)?;
        let (low, high) = (format!("{prefix}/"), format!("{prefix}0"));
        let client = self.client().await?;
        let statement = client.prepare_cached(PRUNE_STATE).await.map_err(self.db())?;
        let mut total = 0;
        loop {
            let deleted =
                client.execute(&statement, &[&low, &high, &span(older_than), &PRUNE_BATCH]).await.map_err(self.db())?;
            total += deleted;
            if deleted < PRUNE_BATCH as u64 {
                break;
            }
        }
        Ok(total)
    }

    /// Like [`PostgresStore::prune_state`], but deletes only the old documents `finished` says
    /// are finished, each only if it has not been written since it was read (compare-and-set on
    /// its revision). A document that is not JSON is kept (and logged).
    pub async fn prune_state_where(
        &self,
        prefix: &str,
        older_than: Duration,
        finished: impl Fn(&StoredState) -> bool + Send + Sync,
    ) -> Result<u64, StoreError> {
        validate_state_key(prefix)?;
        let (low, high) = (format!("{prefix}/"), format!("{prefix}0"));
        let client = self.client().await?;
        let page = client.prepare_cached(OLD_STATE).await.map_err(self.db())?;
        let delete = client.prepare_cached(DELETE_STATE_AT).await.map_err(self.db())?;
        let (mut after, mut total) = (low.clone(), 0);
        loop {
            let rows = client
                .query(&page, &[&after, &high, &span(older_than), &low, &PRUNE_BATCH])
                .await
                .map_err(self.db())?;
            let (mut keys, mut revisions) = (Vec::new(), Vec::new());
            for row in &rows {
                let key: String = row.try_get(0).map_err(self.db())?;
                match self.state_from_row(row) {
                    Ok(state) if finished(&state) => {
                        revisions.push(i64::try_from(state.revision.0).unwrap_or(i64::MAX));
                        keys.push(state.key);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(store = %self.location, %error, "kept a state document it cannot read")
                    }
                }
                after = key;
            }
            if !keys.is_empty() {
                total += client.execute(&delete, &[&keys, &revisions]).await.map_err(self.db())?;
            }
            if (rows.len() as i64) < PRUNE_BATCH {
                break;
            }
        }
        Ok(total)
    }

    /// Records a replica's heartbeat: its row (by id) is created or updated in place, with
    /// `heartbeat_at` = the database's `now()` and `stopped_at` cleared.
    pub async fn heartbeat_replica(&self, info: &ReplicaInfo) -> Result<(), StoreError> {
        validate_name("replica id", &info.id)?;
        for (what, text) in [
            ("host", &info.host),
            ("mode", &info.mode),
            ("policy digest", &info.policy_digest),
            ("playbook set digest", &info.playbook_set_digest),
        ] {
            if !storable(text) {
                return Err(StoreError::InvalidRunId {
                    run_id: format!("replica {} {what}", info.id),
                    reason: "it contains NUL".into(),
                });
            }
        }
        let client = self.client().await?;
        let statement = client.prepare_cached(HEARTBEAT).await.map_err(self.db())?;
        let leases = i32::try_from(info.leases_held).unwrap_or(i32::MAX);
        client
            .execute(
                &statement,
                &[
                    &info.id,
                    &info.host,
                    &i64::from(info.pid),
                    &info.mode,
                    &info.policy_digest,
                    &info.playbook_set_digest,
                    &leases,
                ],
            )
            .await
            .map_err(|e| self.location.error_at(self.location.row("replicas", &info.id), &e))?;
        Ok(())
    }

    /// Marks a replica stopped (a graceful stop); `false` when there is no such replica.
    pub async fn stop_replica(&self, id: &str) -> Result<bool, StoreError> {
        if !storable(id) {
            return Ok(false);
        }
        let client = self.client().await?;
        let changed = client
            .execute("UPDATE replicas SET stopped_at = now(), leases_held = 0 WHERE id = $1", &[&id])
            .await
            .map_err(self.db())?;
        Ok(changed > 0)
    }

    /// Every replica the store knows, by id; `alive` when it has not stopped and its last
    /// heartbeat is less than `ttl` old on the database clock.
    pub async fn replicas(&self, ttl: Duration) -> Result<Vec<ReplicaRow>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(REPLICAS).await.map_err(self.db())?;
        let rows = client.query(&statement, &[&span(ttl)]).await.map_err(self.db())?;
        rows.iter().map(|row| self.replica_from_row(row)).collect()
    }

    /// Deletes the replicas whose last heartbeat is older than `older_than` (stopped or dead);
    /// returns how many.
    pub async fn prune_replicas(&self, older_than: Duration) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM replicas WHERE heartbeat_at < now() - $1::bigint * interval '1 microsecond'",
                &[&span(older_than)],
            )
            .await
            .map_err(self.db())
    }

    /// Becomes or stays the leader `name` as `holder` for `ttl` (database clock): when nobody
    /// leads, the leader's lease expired, or `holder` already leads (the lease is extended).
    /// `None` while another holder leads. The term grows by one whenever the holder changes.
    /// Call it again well within `ttl` (and trust it locally only until the instant before the
    /// call + `ttl`).
    pub async fn lead(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Leadership>, StoreError> {
        validate_name("leadership", name)?;
        validate_name("leader", holder)?;
        let client = self.client().await?;
        let statement = client.prepare_cached(LEAD).await.map_err(self.db())?;
        let row = client
            .query_opt(&statement, &[&name, &holder, &span(ttl)])
            .await
            .map_err(|e| self.location.error_at(self.location.row("leadership", name), &e))?;
        row.map(|row| self.leadership_from_row(&row)).transpose()
    }

    /// The current leader `name` (unexpired on the database clock), if any.
    pub async fn leader(&self, name: &str) -> Result<Option<Leadership>, StoreError> {
        if !storable(name) {
            return Ok(None);
        }
        let client = self.client().await?;
        let statement = client.prepare_cached(LEADER).await.map_err(self.db())?;
        let row = client.query_opt(&statement, &[&name]).await.map_err(self.db())?;
        row.map(|row| self.leadership_from_row(&row)).transpose()
    }

    /// Gives leadership `name` up if `holder` has it (the next [`PostgresStore::lead`] of anyone
    /// succeeds at once, with the next term); `false` when it was not `holder`'s.
    pub async fn resign(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        if !storable(name) || !storable(holder) {
            return Ok(false);
        }
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE leadership SET holder = NULL, expires_at = now() WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )
            .await
            .map_err(self.db())?;
        Ok(changed > 0)
    }

    /// One claim row as stored, whatever its state.
    pub async fn claim_row(&self, key: &str) -> Result<Option<ClaimRow>, StoreError> {
        if !storable(key) {
            return Ok(None);
        }
        let client = self.client().await?;
        let statement = client.prepare_cached(CLAIM_ROW).await.map_err(self.db())?;
        let Some(row) = client.query_opt(&statement, &[&key]).await.map_err(self.db())? else {
            return Ok(None);
        };
        let at = self.at(key);
        let payload: String = row.try_get(6).map_err(&at)?;
        let location = self.location.row("claims", key);
        let time = |index: usize| -> Result<Option<String>, StoreError> {
            let micros: Option<i64> = row.try_get(index).map_err(&at)?;
            micros.map(|micros| iso_micros(micros).ok_or_else(|| self.out_of_range(&location))).transpose()
        };
        Ok(Some(ClaimRow {
            key: row.try_get(0).map_err(&at)?,
            kind: row.try_get(1).map_err(&at)?,
            state: row.try_get(2).map_err(&at)?,
            holder: row.try_get(3).map_err(&at)?,
            epoch: row.try_get(4).map_err(&at)?,
            attempts: row.try_get(5).map_err(&at)?,
            payload: serde_json::from_str(&payload).map_err(|e| StoreError::corrupt(&location, &e))?,
            lease_expires_at: time(7)?,
            due_at: time(8)?.unwrap_or_default(),
            updated_at: time(9)?.unwrap_or_default(),
        }))
    }

    /// A store whose every write is conditioned on `fence` (see [`FencedStore`]).
    pub fn fenced(&self, fence: Fence) -> FencedStore {
        FencedStore { store: self.clone(), fence: Arc::new(fence) }
    }

    /// How many fenced writes (and [`PostgresStore::finish`]es) this store and its
    /// [`FencedStore`]s refused with [`StoreError::LeaseLost`].
    pub fn fenced_rejections(&self) -> u64 {
        self.rejections.load(Ordering::Relaxed)
    }

    /// Checks `fence` inside a write's transaction ([`CHECK_FENCE`]); the transaction then
    /// holds the claim row until it ends.
    pub(super) async fn check_fence(&self, tx: &Transaction<'_>, fence: &Fence) -> Result<(), StoreError> {
        if !storable(&fence.key) || !storable(&fence.holder) {
            return Err(self.lease_lost(fence));
        }
        let statement = tx.prepare_cached(CHECK_FENCE).await.map_err(self.db())?;
        let row =
            tx.query_opt(&statement, &[&fence.key, &fence.holder, &fence.epoch]).await.map_err(self.at(&fence.key))?;
        match row {
            Some(_) => Ok(()),
            None => Err(self.lease_lost(fence)),
        }
    }

    /// The error of a refused fenced write, counted and logged.
    fn lease_lost(&self, fence: &Fence) -> StoreError {
        self.rejections.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(store = %self.location, key = %fence.key, epoch = fence.epoch, holder = %fence.holder,
            "fenced write refused: the lease is no longer this holder's");
        StoreError::LeaseLost { key: fence.key.clone(), epoch: fence.epoch, holder: fence.holder.clone() }
    }

    fn at(&self, key: &str) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        let location = self.location.row("claims", key);
        move |error| self.location.error_at(location.clone(), &error)
    }

    fn out_of_range(&self, location: &str) -> StoreError {
        self.location.message(location.to_owned(), "a time is out of range")
    }

    /// A claim from the columns of `claim_columns!`, with its due time (µs) for ordering.
    fn claim_from_row(&self, row: &Row, holder: &str, trusted_until: Instant) -> Result<(Claim, i64), StoreError> {
        let key: String = row.try_get(0).map_err(self.db())?;
        let location = self.location.row("claims", &key);
        let at = |e: tokio_postgres::Error| self.location.error_at(location.clone(), &e);
        let epoch: i64 = row.try_get(2).map_err(at)?;
        let payload: String = row.try_get(3).map_err(at)?;
        let lease: i64 = row.try_get(5).map_err(at)?;
        let due: i64 = row.try_get(6).map_err(at)?;
        let claim = Claim {
            kind: row.try_get(1).map_err(at)?,
            epoch,
            payload: serde_json::from_str(&payload).map_err(|e| StoreError::corrupt(&location, &e))?,
            attempts: row.try_get(4).map_err(at)?,
            fence: Fence { key: key.clone(), holder: holder.to_owned(), epoch },
            lease_expires_at: iso_micros(lease).ok_or_else(|| self.out_of_range(&location))?,
            trusted_until,
            key,
        };
        Ok((claim, due))
    }

    fn replica_from_row(&self, row: &Row) -> Result<ReplicaRow, StoreError> {
        let id: String = row.try_get(0).map_err(self.db())?;
        let location = self.location.row("replicas", &id);
        let at = |e: tokio_postgres::Error| self.location.error_at(location.clone(), &e);
        let time = |micros: i64| iso_micros(micros).ok_or_else(|| self.out_of_range(&location));
        let pid: i64 = row.try_get(2).map_err(at)?;
        let leases: i32 = row.try_get(6).map_err(at)?;
        let held: i64 = row.try_get(7).map_err(at)?;
        let stopped: Option<i64> = row.try_get(10).map_err(at)?;
        Ok(ReplicaRow {
            host: row.try_get(1).map_err(at)?,
            pid: u32::try_from(pid).unwrap_or(0),
            mode: row.try_get(3).map_err(at)?,
            policy_digest: row.try_get(4).map_err(at)?,
            playbook_set_digest: row.try_get(5).map_err(at)?,
            leases_held: u32::try_from(leases).unwrap_or(0),
            claims_held: u32::try_from(held).unwrap_or(u32::MAX),
            started_at: time(row.try_get(8).map_err(at)?)?,
            heartbeat_at: time(row.try_get(9).map_err(at)?)?,
            stopped_at: stopped.map(time).transpose()?,
            alive: row.try_get(11).map_err(at)?,
            id,
        })
    }

    fn leadership_from_row(&self, row: &Row) -> Result<Leadership, StoreError> {
        let holder: String = row.try_get(0).map_err(self.db())?;
        let expires: i64 = row.try_get(2).map_err(self.db())?;
        Ok(Leadership {
            holder,
            term: row.try_get(1).map_err(self.db())?,
            expires_at: iso_micros(expires).ok_or_else(|| self.out_of_range(&self.location.to_string()))?,
        })
    }
}

/// A [`PostgresStore`] seen through one lease: reads pass through; **every write** — `save`,
/// `save_all`, `put_execution`, `append_journal`, `put_state` — runs in one transaction that
/// first checks the fence (`CHECK_FENCE` in this module: the claim is still the holder's at
/// this epoch and its lease runs) and fails with [`StoreError::LeaseLost`], writing nothing,
/// when it is not. The write's own semantics are the store's (compare-and-set, the run-save
/// lock and its change numbers, `NOTIFY`). Cheap to clone; a whole [`crate::store::Store`], so
/// the runner can be given one as `Arc<dyn Store>`.
#[derive(Clone)]
pub struct FencedStore {
    store: PostgresStore,
    fence: Arc<Fence>,
}

impl fmt::Debug for FencedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FencedStore").field("store", &self.store).field("fence", &self.fence).finish()
    }
}

impl FencedStore {
    /// What every write is conditioned on.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// The store underneath (its writes are not fenced).
    pub fn store(&self) -> &PostgresStore {
        &self.store
    }

    /// [`PostgresStore::finish`] with this fence.
    pub async fn finish(&self, how: Finish) -> Result<(), StoreError> {
        self.store.finish(&self.fence, how).await
    }

    /// [`PostgresStore::fenced_rejections`] of the store underneath.
    pub fn fenced_rejections(&self) -> u64 {
        self.store.fenced_rejections()
    }
}

#[async_trait]
impl RunStore for FencedStore {
    fn spec(&self) -> String {
        self.store.spec()
    }

    async fn get(&self, run_id: &str) -> Result<Option<StoredRun>, StoreError> {
        self.store.get(run_id).await
    }

    async fn get_many(&self, run_ids: &[String]) -> Result<Partial<StoredRun>, StoreError> {
        self.store.get_many(run_ids).await
    }

    async fn tree_leaves(&self, run_ids: &[String]) -> Result<Partial<(String, TreeLeaf)>, StoreError> {
        self.store.tree_leaves(run_ids).await
    }

    async fn save(&self, run: &Run, expected: Expected) -> Result<Revision, StoreError> {
        self.store.save_with(run, expected, Some(&self.fence)).await
    }

    async fn save_all(&self, runs: &[Run], expected: Expected) -> Result<Vec<Revision>, StoreError> {
        self.store.save_all_with(runs, expected, Some(&self.fence)).await
    }

    async fn list(&self, query: &RunQuery) -> Result<Partial<RunIndexEntry>, StoreError> {
        self.store.list(query).await
    }

    async fn subtree(&self, root_id: &str) -> Result<Partial<RunIndexEntry>, StoreError> {
        self.store.subtree(root_id).await
    }

    async fn list_one(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        self.store.list_one(run_id).await
    }

    async fn list_ids(&self, run_ids: &[String]) -> Result<Partial<RunIndexEntry>, StoreError> {
        self.store.list_ids(run_ids).await
    }

    async fn families(&self, roots: &[LineageLink]) -> Result<Vec<Partial<LineageLink>>, StoreError> {
        self.store.families(roots).await
    }

    async fn forest_scan(
        &self,
        after: Option<&ListingKey>,
        limit: usize,
    ) -> Result<Option<ForestScanPage>, StoreError> {
        self.store.forest_scan(after, limit).await
    }

    async fn current_entry(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        self.store.current_entry(run_id).await
    }

    async fn catch_up(&self) -> Result<(), StoreError> {
        self.store.catch_up().await
    }
}

#[async_trait]
impl ExecutionStore for FencedStore {
    async fn put_execution(&self, doc: ExecutionDoc, expected: Expected) -> Result<Revision, StoreError> {
        self.store.put_execution_with(&doc, expected, Some(&self.fence)).await
    }

    async fn get_execution(&self, id: &str) -> Result<Option<StoredExecution>, StoreError> {
        self.store.get_execution(id).await
    }

    async fn list_executions(&self, status: Option<&str>) -> Result<Vec<StoredExecution>, StoreError> {
        self.store.list_executions(status).await
    }

    async fn append_journal_entries(&self, records: &[JournalRecord]) -> Result<(), StoreError> {
        self.store.append_journal_with(records, Some(&self.fence)).await
    }

    async fn append_journal_and_put_execution(
        &self,
        records: &[JournalRecord],
        doc: ExecutionDoc,
        expected: Expected,
    ) -> Result<Revision, StoreError> {
        self.store.append_journal_and_put_execution_with(records, &doc, expected, Some(&self.fence)).await
    }

    async fn journal(&self, execution_id: &str) -> Result<Vec<JournalRecord>, StoreError> {
        self.store.journal(execution_id).await
    }

    async fn executions_of_run(&self, run_id: &str) -> Result<Vec<StoredExecution>, StoreError> {
        self.store.executions_of_run(run_id).await
    }
}

#[async_trait]
impl StateStore for FencedStore {
    async fn get_state(&self, key: &str) -> Result<Option<StoredState>, StoreError> {
        self.store.get_state(key).await
    }

    async fn put_state(&self, key: &str, body: &Value, expected: Expected) -> Result<Revision, StoreError> {
        self.store.put_state_with(key, body, expected, Some(&self.fence)).await
    }

    async fn put_states(&self, writes: &[StateWrite<'_>]) -> Result<Vec<Revision>, StoreError> {
        self.store.put_states_with(writes, Some(&self.fence)).await
    }

    async fn list_state(&self, prefix: &str) -> Result<Vec<StoredState>, StoreError> {
        self.store.list_state(prefix).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_times_are_fixed_width_iso_and_order_as_strings() {
        assert_eq!(iso_micros(0).as_deref(), Some("1970-01-01T00:00:00.000000Z"));
        assert_eq!(iso_micros(1_796_553_289_108_931).as_deref(), Some("2026-12-06T10:34:49.108931Z"));
        let (a, b) = (iso_micros(1_796_553_289_000_009), iso_micros(1_796_553_289_100_000));
        assert!(a < b);
        assert_eq!(iso_micros(i64::MAX), None);
    }

    #[test]
    fn spans_are_microseconds_and_bounded() {
        assert_eq!(span(Duration::from_millis(300)), 300_000);
        assert_eq!(span(Duration::ZERO), 0);
        assert_eq!(span(Duration::MAX), span(MAX_SPAN));
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("claim key", "incident/run-1:3").is_ok());
        for bad in [String::new(), "a\0b".into(), "x".repeat(401)] {
            assert!(matches!(validate_name("claim key", &bad), Err(StoreError::InvalidRunId { .. })), "{bad:?}");
        }
    }
}
