//! Group commit: writes of one process that queue behind each other share a transaction.
//!
//! Every SQLite commit of a `synchronous = FULL` WAL database syncs the WAL, and every write
//! takes a trip to the blocking pool. A daemon's workers each write small records (an
//! incident's outcome, a claim, an execution record) at about the same time, and each used to
//! wait for the one before it and then pay for its own commit. Now a write queues itself and
//! waits for the process's write lock; whoever gets the lock runs every write queued by then,
//! each in its own savepoint, and commits them once. A write that fails (a compare-and-set
//! conflict, say) is rolled back to its savepoint alone: the others commit. Each caller learns
//! its own result only after the commit, so nothing is reported written before it is durable.
//!
//! A caller that gave up (its future was dropped) before its write ran is skipped.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::super::StoreError;
use super::super::sql;

/// Writes committed together at most: a bound on one transaction's size (and on the time the
/// first writer of a long queue waits for the last one's work).
pub(super) const MAX_GROUP: usize = 64;

/// What a whole group's failure is reported as to each of its writers (the [`StoreError`]
/// itself is made once, and counted once).
#[derive(Debug, Clone)]
pub(super) struct GroupFailure {
    location: String,
    message: String,
}

impl GroupFailure {
    pub(super) fn of(error: &StoreError, location: &str) -> GroupFailure {
        match error {
            StoreError::Database { location, message } => {
                GroupFailure { location: location.clone(), message: message.clone() }
            }
            other => GroupFailure { location: location.to_owned(), message: other.to_string() },
        }
    }

    fn error(&self) -> StoreError {
        StoreError::Database { location: self.location.clone(), message: self.message.clone() }
    }
}

/// Tells a write's caller its outcome once its group is committed (or not).
type Settle = Box<dyn FnOnce(Result<(), &GroupFailure>) + Send>;

/// A queued write: its work and its caller's end of the channel.
struct Pending<T, F> {
    sender: oneshot::Sender<Result<T, StoreError>>,
    work: F,
}

/// A queued write of any result type.
pub(super) trait GroupedWrite: Send {
    /// Runs the write in the group's transaction; `None` when its caller is gone (it was not run).
    fn run(self: Box<Self>, tx: &Transaction<'_>, location: &str) -> Option<Settle>;

    /// Tells the caller its write failed with its group, without running it.
    fn fail(self: Box<Self>, failure: &GroupFailure);
}

impl<T, F> GroupedWrite for Pending<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Transaction<'_>, &str) -> Result<T, StoreError> + Send + 'static,
{
    fn run(self: Box<Self>, tx: &Transaction<'_>, location: &str) -> Option<Settle> {
        let Pending { sender, work } = *self;
        if sender.is_closed() {
            return None;
        }
        let outcome = in_savepoint(tx, location, work);
        Some(Box::new(move |committed: Result<(), &GroupFailure>| {
            // The caller may have gone since: its write is committed all the same.
            let _ = sender.send(committed.map_err(GroupFailure::error).and(outcome));
        }))
    }

    fn fail(self: Box<Self>, failure: &GroupFailure) {
        let _ = self.sender.send(Err(failure.error()));
    }
}

/// The writes waiting for the next group, oldest first.
#[derive(Default)]
pub(super) struct WriteQueue {
    waiting: Mutex<VecDeque<Box<dyn GroupedWrite>>>,
}

impl WriteQueue {
    /// Queues `work`; the receiver gets its result once its group was committed or failed.
    pub(super) fn push<T, F>(&self, work: F) -> oneshot::Receiver<Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &str) -> Result<T, StoreError> + Send + 'static,
    {
        let (sender, receiver) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).push_back(Box::new(Pending { sender, work }));
        receiver
    }

    /// How many writes wait.
    #[cfg(test)]
    pub(super) fn waiting_len(&self) -> usize {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Takes the next group (at most [`MAX_GROUP`] writes, oldest first).
    pub(super) fn take(&self) -> Vec<Box<dyn GroupedWrite>> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let count = waiting.len().min(MAX_GROUP);
        waiting.drain(..count).collect()
    }
}

/// Runs `work` between `SAVEPOINT` and `RELEASE`, rolled back to the savepoint when it fails.
/// When the savepoint itself cannot be rolled back to or released, what the write left in the
/// transaction is unknown: the whole transaction is rolled back, and [`commit_group`] fails the
/// group (a write told "failed" must not be committed with the others).
fn in_savepoint<T>(
    tx: &Transaction<'_>,
    location: &str,
    work: impl FnOnce(&Transaction<'_>, &str) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let db = |e: rusqlite::Error| sql::database_error(location, &e);
    let end = |statement: &str| {
        tx.execute_batch(statement).map_err(|error| {
            let _ = tx.execute_batch("ROLLBACK");
            db(error)
        })
    };
    tx.execute_batch("SAVEPOINT grouped_write").map_err(db)?;
    let outcome = work(tx, location);
    if outcome.is_err() && !tx.is_autocommit() {
        end("ROLLBACK TO grouped_write")?;
    }
    if !tx.is_autocommit() {
        end("RELEASE grouped_write")?;
    }
    outcome
}

/// Runs a group in one `BEGIN IMMEDIATE` transaction on `conn` and tells each writer its
/// outcome after the commit. A failure of the transaction itself (it cannot begin, SQLite rolled
/// it back on an I/O error or a full disk, the commit fails) is every writer's: none of their
/// writes happened.
pub(super) fn commit_group(conn: &mut Connection, location: &str, group: Vec<Box<dyn GroupedWrite>>) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(error) => return fail_group(group, &GroupFailure::of(&sql::database_error(location, &error), location)),
    };
    let mut settles = Vec::with_capacity(group.len());
    let mut queued = group.into_iter();
    for write in queued.by_ref() {
        settles.extend(write.run(&tx, location));
        if tx.is_autocommit() {
            // The transaction ended under a write (SQLite rolled it back on an I/O error or a full
            // disk, or its savepoint could not be ended): what ran is gone.
            let failure = GroupFailure {
                location: location.to_owned(),
                message: "the transaction was rolled back after a failed write; nothing of it was written".to_owned(),
            };
            crate::telemetry::store_error("sqlite", "database");
            settle_all(settles, Err(&failure));
            return fail_group(queued.collect(), &failure);
        }
    }
    match tx.commit() {
        Ok(()) => settle_all(settles, Ok(())),
        Err(error) => settle_all(settles, Err(&GroupFailure::of(&sql::database_error(location, &error), location))),
    }
}

/// Tells every writer of a group that was not run that it failed with `failure`.
pub(super) fn fail_group(group: Vec<Box<dyn GroupedWrite>>, failure: &GroupFailure) {
    for write in group {
        write.fail(failure);
    }
}

fn settle_all(settles: Vec<Settle>, committed: Result<(), &GroupFailure>) {
    for settle in settles {
        settle(committed);
    }
}

/// What a writer is told when its group ended without answering it (a write panicked): the
/// transaction was dropped, so nothing of the group was committed.
pub(super) fn lost() -> StoreError {
    StoreError::Task("a group of writes ended without an answer (a write panicked); none of it was committed".into())
}
