//! Where recovery executions and their journals are persisted: the same backend as the runs
//! (SQLite tables, files beside the file store's runs, memory), through this API.
//!
//! The store treats an execution as a document with a few indexed fields and the journal as an
//! append-only sequence of documents; what they mean belongs to the runner (`execute`).
//!
//! Two guarantees the runner builds on:
//! - **compare-and-set** on execution documents ([`Expected`]): two processes cannot both
//!   believe they own an execution, and concurrent approval answers are serialised;
//! - **append-only, durable journal**: an entry is on disk before `append_journal` returns, and
//!   appending a sequence number that already exists is a [`StoreError::Conflict`] — so a step's
//!   intent is recorded exactly once, before its effect.

use async_trait::async_trait;
use serde_json::Value;

use super::{Expected, Revision, StoreError, validate_run_id};

/// An execution document as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionDoc {
    pub id: String,
    /// The incident run the execution recovers.
    pub run_id: String,
    pub plan_id: String,
    /// Indexed for `salvage executions --status`.
    pub status: String,
    /// ISO-8601; executions list oldest first by creation.
    pub created_at: String,
    pub updated_at: String,
    /// The whole execution record (the runner's JSON).
    pub body: Value,
}

/// An execution document with the revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredExecution {
    pub doc: ExecutionDoc,
    pub revision: Revision,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalRecord {
    pub execution_id: String,
    /// 1, 2, 3… per execution, without gaps.
    pub seq: u64,
    pub body: Value,
}

/// Persisted executions and journals. Every backend implements it next to [`super::RunStore`].
#[async_trait]
pub trait ExecutionStore: Send + Sync + std::fmt::Debug {
    /// Creates or updates an execution if the store holds what `expected` says.
    async fn put_execution(&self, doc: &ExecutionDoc, expected: Expected) -> Result<Revision, StoreError>;

    async fn get_execution(&self, id: &str) -> Result<Option<StoredExecution>, StoreError>;

    /// Executions, oldest first (by `created_at`, then id), optionally only those with `status`.
    async fn list_executions(&self, status: Option<&str>) -> Result<Vec<StoredExecution>, StoreError>;

    /// Appends one entry, durably. `record.seq` must be the next number of that execution's
    /// journal (1 for the first); anything else is a conflict and nothing is written.
    async fn append_journal(&self, record: &JournalRecord) -> Result<(), StoreError>;

    /// The journal of an execution, in order.
    async fn journal(&self, execution_id: &str) -> Result<Vec<JournalRecord>, StoreError>;

    /// Appends `record` to its execution's journal and then saves `doc` if the store holds what
    /// `expected` says, as one commit: both are checked before anything is written, and on a
    /// conflict (either check) nothing is. The runner uses it where a journal entry is followed
    /// by the execution record's save with no effect in between (an execution's end), to pay
    /// one durable commit instead of two. The database backends write both in one transaction;
    /// the file store, which cannot commit two files at once, writes the journal line first
    /// (synced) and the record after it, under one lock — the order of the two separate calls.
    async fn append_journal_and_put_execution(
        &self,
        record: &JournalRecord,
        doc: &ExecutionDoc,
        expected: Expected,
    ) -> Result<Revision, StoreError>;

    /// The executions of one incident run, oldest first (backends with an index on the run
    /// override this scan).
    async fn executions_of_run(&self, run_id: &str) -> Result<Vec<StoredExecution>, StoreError> {
        let mut all = self.list_executions(None).await?;
        all.retain(|stored| stored.doc.run_id == run_id);
        Ok(all)
    }
}

impl StoredExecution {
    /// The order executions list in: creation time, then id.
    pub fn listing_order(left: &StoredExecution, right: &StoredExecution) -> std::cmp::Ordering {
        left.doc.created_at.cmp(&right.doc.created_at).then_with(|| left.doc.id.cmp(&right.doc.id))
    }
}

/// Checks that an execution id can be stored by every backend: the rules of run ids (the file
/// store names files after it). The error names it as `execution <id>`.
pub fn validate_execution_id(id: &str) -> Result<(), StoreError> {
    validate_run_id(id).map_err(|error| match error {
        StoreError::InvalidRunId { reason, .. } => {
            StoreError::InvalidRunId { run_id: format!("execution {id}"), reason }
        }
        other => other,
    })
}

/// Checks an execution save against the revision found (shared by the backends).
pub fn check_expected(id: &str, expected: Expected, found: Option<Revision>) -> Result<(), StoreError> {
    super::check_run_expected(&format!("execution {id}"), expected, found)
}

/// An execution's body as the database backends store it (its id checked first).
pub(crate) fn execution_text(doc: &ExecutionDoc) -> Result<String, StoreError> {
    validate_execution_id(&doc.id)?;
    super::document_text(&format!("execution {}", doc.id), "the execution", &doc.body)
}

/// A journal entry's body as the database backends store it (its execution id checked first).
pub(crate) fn journal_entry_text(record: &JournalRecord) -> Result<String, StoreError> {
    validate_execution_id(&record.execution_id)?;
    super::document_text(&format!("journal of execution {}", record.execution_id), "the journal entry", &record.body)
}

/// Checks that `seq` is the next journal number after `last` (shared by the backends).
pub(crate) fn check_next_seq(execution_id: &str, seq: u64, last: Option<u64>) -> Result<(), StoreError> {
    let next = last.map_or(1, |last| last + 1);
    if seq == next {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            run_id: format!("journal of execution {execution_id}"),
            expected: Expected::Revision(Revision(next)),
            found: Some(Revision(seq)),
        })
    }
}
