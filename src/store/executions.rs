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
    /// Creates or updates an execution if the store holds what `expected` says. The store takes
    /// the document: the in-memory store keeps it as it is, the others write it, and no backend
    /// copies the record (it carries the whole plan) to do so.
    async fn put_execution(&self, doc: ExecutionDoc, expected: Expected) -> Result<Revision, StoreError>;

    async fn get_execution(&self, id: &str) -> Result<Option<StoredExecution>, StoreError>;

    /// Executions, oldest first (by `created_at`, then id), optionally only those with `status`.
    async fn list_executions(&self, status: Option<&str>) -> Result<Vec<StoredExecution>, StoreError>;

    /// Appends consecutive entries of one execution's journal, durably and as one commit: the
    /// first must be the journal's next number (1 for the first entry), the others follow it
    /// without gaps. Anything else is a conflict and nothing is written. The runner writes an
    /// entry that needs no commit of its own (a step's outcome) with the next one.
    async fn append_journal_entries(&self, records: &[JournalRecord]) -> Result<(), StoreError>;

    /// Appends one entry, durably (see [`ExecutionStore::append_journal_entries`]).
    async fn append_journal(&self, record: &JournalRecord) -> Result<(), StoreError> {
        self.append_journal_entries(std::slice::from_ref(record)).await
    }

    /// The journal of an execution, in order.
    async fn journal(&self, execution_id: &str) -> Result<Vec<JournalRecord>, StoreError>;

    /// Appends `records` to their execution's journal (as [`ExecutionStore::append_journal_entries`])
    /// and then saves `doc` if the store holds what `expected` says, as one commit: everything is
    /// checked before anything is written, and on a conflict (any check) nothing is. The runner
    /// uses it where journal entries are followed by the execution record's save with no effect
    /// in between (an execution's end, a wait), to pay one durable commit instead of several.
    /// The database backends write them in one transaction; the file store, which cannot commit
    /// two files at once, writes the journal lines first (one synced write) and the record after
    /// them, under one lock — the order of the separate calls.
    async fn append_journal_and_put_execution(
        &self,
        records: &[JournalRecord],
        doc: ExecutionDoc,
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

/// The execution and first number of entries appended in one commit, once checked that they
/// belong to one execution and follow each other without gaps; `None` for no entries.
pub(crate) fn journal_batch(records: &[JournalRecord]) -> Result<Option<(&str, u64)>, StoreError> {
    let Some(first) = records.first() else { return Ok(None) };
    validate_execution_id(&first.execution_id)?;
    for pair in records.windows(2) {
        if pair[1].execution_id != first.execution_id {
            return Err(StoreError::InvalidRunId {
                run_id: format!("execution {}", pair[1].execution_id),
                reason: format!(
                    "its entry cannot be appended in one commit with the journal of execution {}",
                    first.execution_id
                ),
            });
        }
        check_next_seq(&first.execution_id, pair[1].seq, Some(pair[0].seq))?;
    }
    Ok(Some((&first.execution_id, first.seq)))
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
