//! Where runs live: the [`RunStore`] trait and its backends.
//!
//! Every later module reads and writes runs through [`RunStore`], never through files or SQL.
//! The trait goes beyond the reference's `saveRun / getRun / listRuns`:
//! - **revisions**: every save returns the run's new [`Revision`] and can be conditioned on the
//!   revision the caller read ([`Expected`]); a stale save fails with [`StoreError::Conflict`]
//!   instead of silently overwriting (the runner's compare-and-set relies on it);
//! - **indexed lookups** ([`RunQuery`], [`RunStore::subtree`]) so that a report on one run reads
//!   that run's family, not the whole store;
//! - **partial results**: one unreadable record never hides the others ([`Partial`]);
//! - **claims, leases and fencing** ([`claims`], `postgres://` only): work taken by one of
//!   several daemon replicas at a time, and every write made under a lease conditioned on its
//!   epoch ([`FencedStore`], [`StoreError::LeaseLost`]).

pub mod claims;
pub mod executions;
mod file;
mod file_executions;
mod file_index;
mod memory;
pub mod migrate;
pub mod postgres;
mod sql;
mod sqlite;
pub mod state;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::model::{Run, RunShapeError, RunStatus, TreeLeaf};

pub use claims::{Claim, ClaimRow, Fence, Finish, Leadership, ReplicaInfo, ReplicaRow};
pub use executions::{ExecutionDoc, ExecutionStore, JournalRecord, StoredExecution, validate_execution_id};
pub use file::{FileStore, FileStoreOptions};
pub use file_index::RefreshStats;
pub use memory::MemoryStore;
pub use migrate::{AppliedMigration, MigrationReport, migrate};
pub use postgres::{ChangeListener, FencedStore, ListenEvent, PostgresOptions, PostgresStore, PostgresUrl};
pub use sqlite::{RunChange, SqliteStore};
pub use state::{StateStore, StateWrite, StoredState, validate_state_key};

/// A run's version in its store; compare, never do arithmetic.
///
/// `memory:` and `sqlite:` count saves (1, 2, ...), so every save changes it. `file:` derives
/// it from the file's bytes (52 bits of their SHA-256, exact as a JSON number), so that a
/// change by another writer — the reference runtime rewriting a file in place — changes it
/// too; there, saving byte-identical content keeps the revision, which is harmless for
/// compare-and-set (the record is exactly what the caller read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Revision(pub u64);

impl Revision {
    /// The revision a save writes when the store holds `found` (1 for a new document).
    pub fn after(found: Option<Revision>) -> Revision {
        Revision(found.map_or(1, |r| r.0 + 1))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a save expects to find in the store (compare-and-set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Overwrite whatever is there (the reference's last-writer-wins `saveRun`).
    Any,
    /// The run must not exist yet.
    Absent,
    /// The run must still be at this revision.
    Revision(Revision),
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Any => f.write_str("any revision"),
            Expected::Absent => f.write_str("no existing run"),
            Expected::Revision(revision) => write!(f, "revision {revision}"),
        }
    }
}

/// A run together with the revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRun {
    pub run: Run,
    pub revision: Revision,
}

/// The indexed columns of a run: enough to list, filter and shape trees without loading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunIndexEntry {
    pub id: String,
    pub root_run_id: String,
    pub parent_run_id: Option<String>,
    pub status: RunStatus,
    pub created_at: Option<String>,
    pub revision: Revision,
}

impl RunIndexEntry {
    pub fn of(run: &Run, revision: Revision) -> RunIndexEntry {
        RunIndexEntry {
            id: run.id.clone(),
            root_run_id: run.root_run_id().to_owned(),
            parent_run_id: run.parent_run_id().map(str::to_owned),
            status: run.status.clone(),
            created_at: run.created_at().map(str::to_owned),
            revision,
        }
    }

    /// The order every backend lists in: creation time, then id (runs without a creation
    /// time first).
    pub fn listing_order(left: &RunIndexEntry, right: &RunIndexEntry) -> std::cmp::Ordering {
        left.created_at.cmp(&right.created_at).then_with(|| left.id.cmp(&right.id))
    }
}

/// Where a run lists: [`RunIndexEntry::listing_order`] as a value (creation time, then id; runs
/// without a creation time first).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListingKey {
    pub created_at: Option<String>,
    pub id: String,
}

impl ListingKey {
    pub fn of(entry: &RunIndexEntry) -> ListingKey {
        ListingKey { created_at: entry.created_at.clone(), id: entry.id.clone() }
    }

    pub fn of_link(link: &LineageLink) -> ListingKey {
        ListingKey { created_at: link.created_at.clone(), id: link.id.clone() }
    }
}

/// Why [`RunStore::forest_scan`] stopped at a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForestPlace {
    /// No parent in the store: a tree of the forest starts here.
    Root,
    /// Lists no later than its parent (created before it, or its own parent). The first run of
    /// a family to list is its root or such a run, and so is the first of a lineage cycle's.
    BeforeParent,
}

impl ForestPlace {
    /// Where the run at `key` stands, given what the scan read of its parent link.
    pub(crate) fn of(key: &ListingKey, parent: ParentLink) -> Option<ForestPlace> {
        match parent {
            ParentLink::None | ParentLink::Missing => Some(ForestPlace::Root),
            ParentLink::Stored(parent) => (parent >= *key).then_some(ForestPlace::BeforeParent),
            // Where an unreadable link leads is left to the walk up the parents, which reads it.
            ParentLink::Unreadable => Some(ForestPlace::BeforeParent),
        }
    }
}

/// A run's parent link as a forest scan reads it.
pub(crate) enum ParentLink {
    None,
    /// The parent is not in the store.
    Missing,
    /// The parent is stored and lists at this key.
    Stored(ListingKey),
    Unreadable,
}

impl ParentLink {
    /// From a scan row's `parent_run_id`, whether that parent was found, and its `created_at`.
    pub(crate) fn read<E>(
        parent_run_id: Result<Option<String>, E>,
        found: Result<bool, E>,
        created_at: Result<Option<String>, E>,
    ) -> ParentLink {
        match (parent_run_id, found, created_at) {
            (Ok(None), _, _) => ParentLink::None,
            (Ok(Some(_)), Ok(false), _) => ParentLink::Missing,
            (Ok(Some(id)), Ok(true), Ok(created_at)) => ParentLink::Stored(ListingKey { created_at, id }),
            _ => ParentLink::Unreadable,
        }
    }
}

/// A range of the listing index that a forest scan's page reads. The undated runs list first,
/// so a page after an undated run reads the rest of them and goes on with the dated ones.
pub(crate) enum ListingRange<'a> {
    All,
    UndatedAfter(&'a str),
    Dated,
    DatedAfter { created_at: &'a str, id: &'a str },
}

impl<'a> ListingRange<'a> {
    /// The range a page after `after` reads, and the one it goes on with when that range gives
    /// fewer runs than the page holds.
    pub(crate) fn after(after: Option<&'a ListingKey>) -> (ListingRange<'a>, Option<ListingRange<'a>>) {
        match after {
            None => (ListingRange::All, None),
            Some(ListingKey { created_at: None, id }) => (ListingRange::UndatedAfter(id), Some(ListingRange::Dated)),
            Some(ListingKey { created_at: Some(created_at), id }) => {
                (ListingRange::DatedAfter { created_at, id }, None)
            }
        }
    }

    /// The range's `WHERE` condition over the scan's `run` table, its parameters numbered from
    /// `first` with `placeholder` (`?` for SQLite, `$` for PostgreSQL), and their values.
    pub(crate) fn condition(&self, placeholder: char, first: usize) -> (String, Vec<&'a str>) {
        let (p1, p2) = (format!("{placeholder}{first}"), format!("{placeholder}{}", first + 1));
        match self {
            ListingRange::All => (String::new(), Vec::new()),
            ListingRange::UndatedAfter(id) => (format!(" WHERE run.created_at IS NULL AND run.id > {p1}"), vec![id]),
            ListingRange::Dated => (" WHERE run.created_at IS NOT NULL".to_owned(), Vec::new()),
            ListingRange::DatedAfter { created_at, id } => {
                (format!(" WHERE (run.created_at, run.id) > ({p1}, {p2})"), vec![created_at, id])
            }
        }
    }
}

/// A run [`RunStore::forest_scan`] stopped at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForestMark {
    pub key: ListingKey,
    pub place: ForestPlace,
}

/// One page of [`RunStore::forest_scan`].
#[derive(Debug, Default)]
pub struct ForestScanPage {
    /// The page's roots and runs listed before their parent, in listing order.
    pub marks: Vec<ForestMark>,
    /// The last run the page covered; the next page starts after it. `None`: the store ends
    /// before this page.
    pub last: Option<ListingKey>,
    /// Fewer runs than asked for were left: this is the last page.
    pub at_end: bool,
}

/// A run's lineage fields: all that shaping a tree needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageLink {
    pub id: String,
    pub parent_run_id: Option<String>,
    pub created_at: Option<String>,
}

impl LineageLink {
    /// A run that starts a tree: its parent, if it has one, is not in the store (or is cut), so
    /// shaping its family ignores the link.
    pub fn root_at(key: &ListingKey) -> LineageLink {
        LineageLink { id: key.id.clone(), parent_run_id: None, created_at: key.created_at.clone() }
    }

    pub fn of(entry: &RunIndexEntry) -> LineageLink {
        LineageLink {
            id: entry.id.clone(),
            parent_run_id: entry.parent_run_id.clone(),
            created_at: entry.created_at.clone(),
        }
    }
}

/// What [`breadth_first`] orders: runs with an id, a parent link and a listing position.
pub(crate) trait Linked: Clone {
    fn run_id(&self) -> &str;
    fn parent(&self) -> Option<&str>;
    /// [`RunIndexEntry::listing_order`]'s key.
    fn listed_at(&self) -> (Option<&str>, &str);
}

/// Both hold a run's lineage fields under the same names.
macro_rules! linked_by_fields {
    ($($kind:ty),*) => {$(
        impl Linked for $kind {
            fn run_id(&self) -> &str {
                &self.id
            }

            fn parent(&self) -> Option<&str> {
                self.parent_run_id.as_deref()
            }

            fn listed_at(&self) -> (Option<&str>, &str) {
                (self.created_at.as_deref(), &self.id)
            }
        }
    )*};
}

linked_by_fields!(RunIndexEntry, LineageLink);

/// A filter over the index. All set conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    pub status: Option<RunStatus>,
    pub root_run_id: Option<String>,
    pub parent_run_id: Option<String>,
}

impl RunQuery {
    /// Every run.
    pub fn all() -> RunQuery {
        RunQuery::default()
    }

    pub fn with_status(status: RunStatus) -> RunQuery {
        RunQuery { status: Some(status), ..RunQuery::default() }
    }

    /// Runs whose `lineage.rootRunId` is `root`.
    pub fn in_trace(root: impl Into<String>) -> RunQuery {
        RunQuery { root_run_id: Some(root.into()), ..RunQuery::default() }
    }

    /// Runs whose `lineage.parentRunId` is `parent`.
    pub fn children_of(parent: impl Into<String>) -> RunQuery {
        RunQuery { parent_run_id: Some(parent.into()), ..RunQuery::default() }
    }

    pub fn matches(&self, entry: &RunIndexEntry) -> bool {
        self.status.as_ref().is_none_or(|s| *s == entry.status)
            && self.root_run_id.as_ref().is_none_or(|r| *r == entry.root_run_id)
            && self.parent_run_id.as_ref().is_none_or(|p| entry.parent_run_id.as_ref() == Some(p))
    }
}

/// A record the store holds but cannot serve, reported next to the ones it can.
#[derive(Debug)]
pub struct StoreProblem {
    /// The run id, when it is known (a file named `<id>.json` gives it away).
    pub run_id: Option<String>,
    pub error: StoreError,
}

/// Results that are complete except for the records listed in `problems`.
#[derive(Debug)]
pub struct Partial<T> {
    pub items: Vec<T>,
    pub problems: Vec<StoreProblem>,
}

impl<T> Partial<T> {
    pub fn complete(items: Vec<T>) -> Partial<T> {
        Partial { items, problems: Vec::new() }
    }
}

impl<T> Default for Partial<T> {
    fn default() -> Self {
        Partial { items: Vec::new(), problems: Vec::new() }
    }
}

/// Everything that can go wrong in a store. Each error says where, so that an operator can
/// go and look.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StoreError {
    /// A stored record is not valid JSON.
    #[error("{location}:{line}:{column}: {message}")]
    #[diagnostic(
        code(salvage::store::corrupt_record),
        help("the record is not valid JSON; restore it from a backup or remove it. Other runs are unaffected.")
    )]
    CorruptRecord { location: String, line: usize, column: usize, message: String },

    /// A stored record is JSON but not a run.
    #[error("{location}: not a run record: {source}")]
    #[diagnostic(code(salvage::store::not_a_run), help("fix the field named above; other runs are unaffected."))]
    NotARun {
        location: String,
        #[source]
        source: RunShapeError,
    },

    /// A compare-and-set save found another revision.
    #[error("run \"{run_id}\" changed in the store: expected {expected}, found {}", found.map_or_else(|| "no run".to_owned(), |r| format!("revision {r}")))]
    #[diagnostic(
        code(salvage::store::conflict),
        help("someone else saved this run since it was read; read it again and re-apply the change.")
    )]
    Conflict { run_id: String, expected: Expected, found: Option<Revision> },

    /// The id cannot be stored (e.g. it would escape the file store's directory).
    #[error("invalid run id {run_id:?}: {reason}")]
    #[diagnostic(code(salvage::store::invalid_run_id))]
    InvalidRunId { run_id: String, reason: String },

    #[error("{location}: {source}")]
    #[diagnostic(code(salvage::store::io))]
    Io {
        location: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{location}: database error: {message}")]
    #[diagnostic(code(salvage::store::database))]
    Database { location: String, message: String },

    /// The store specification given on the command line or in `SALVAGE_STORE` is wrong.
    #[error("invalid store {spec:?}: {reason}")]
    #[diagnostic(
        code(salvage::store::spec),
        help(
            "use sqlite:PATH (the default is sqlite:.salvage/salvage.db), file:DIR, memory: or \
             postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
        )
    )]
    Spec { spec: String, reason: String },

    /// A write to a store opened for reading only (a read command never writes).
    #[error("{spec} is open for reading only; this command cannot write to it")]
    #[diagnostic(code(salvage::store::read_only), help("this is a bug in salvage: a read command tried to write"))]
    ReadOnly { spec: String },

    /// An SQLite file that is not a salvage store.
    #[error("{location} is not a salvage store: {reason}")]
    #[diagnostic(
        code(salvage::store::foreign_database),
        help(
            "point --store / SALVAGE_STORE at a salvage database (sqlite:.salvage/salvage.db by default); salvage does not read or change other applications' databases"
        )
    )]
    ForeignDatabase { location: String, reason: String },

    /// A read command opened a PostgreSQL store whose schema is not (or not yet) this salvage's:
    /// read commands never create or migrate a schema, since a shared database is changed only
    /// on purpose (`salvage migrate`, a deploy step, or a writing command).
    #[error("{location} holds {found}; this salvage reads schema version {needed}")]
    #[diagnostic(
        code(salvage::store::schema_not_current),
        help(
            "run `salvage migrate` against this store first (read commands do not change a shared database), or point --store / SALVAGE_STORE at the right database and schema"
        )
    )]
    SchemaNotCurrent { location: String, found: String, needed: u32 },

    /// A write made under a lease ([`claims::Fence`]) whose lease is no longer this holder's:
    /// another replica claimed the work (a newer epoch), it was finished, or the lease expired.
    /// Nothing was written. Never retry it: the work belongs to someone else now.
    #[error("lease on {key:?} lost: epoch {epoch} held by {holder:?} is no longer current")]
    #[diagnostic(
        code(salvage::store::lease_lost),
        help("another replica took this work over; this replica stops it — the journal lets the new owner go on")
    )]
    LeaseLost { key: String, epoch: i64, holder: String },

    /// A background task of the store died.
    #[error("store task failed: {0}")]
    #[diagnostic(code(salvage::store::task))]
    Task(String),
}

impl StoreError {
    /// A JSON parse failure of a stored record, with its position.
    pub fn corrupt(location: impl Into<String>, error: &serde_json::Error) -> StoreError {
        StoreError::CorruptRecord {
            location: location.into(),
            line: error.line(),
            column: error.column(),
            message: error.to_string().split(" at line ").next().unwrap_or_default().to_owned(),
        }
    }

    /// Whether the error says a lease was lost ([`StoreError::LeaseLost`]): the caller stops
    /// the work and never retries the write.
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, StoreError::LeaseLost { .. })
    }

    /// Whether the error is about one record (the store as a whole still works).
    pub fn is_record_problem(&self) -> bool {
        matches!(self, StoreError::CorruptRecord { .. } | StoreError::NotARun { .. })
    }
}

/// [`RunStore::tree_leaves`] for a store that keeps leaves: `kept` holds the current leaves it
/// found for `run_ids`; the others are computed from their records (`get_many`).
pub(crate) async fn kept_or_computed_leaves<S: RunStore + ?Sized>(
    store: &S,
    run_ids: &[String],
    mut kept: std::collections::HashMap<String, TreeLeaf>,
) -> Result<Partial<(String, TreeLeaf)>, StoreError> {
    let missing: Vec<String> = run_ids.iter().filter(|id| !kept.contains_key(*id)).cloned().collect();
    let read = store.get_many(&missing).await?;
    kept.extend(read.items.iter().map(|stored| (stored.run.id.clone(), TreeLeaf::of(&stored.run))));
    let repeated = run_ids.iter().collect::<std::collections::HashSet<_>>().len() != run_ids.len();
    let mut out = Partial { items: Vec::with_capacity(run_ids.len()), problems: read.problems };
    for run_id in run_ids {
        // Taken out of the map, unless an id is asked for twice (then it is served twice).
        let leaf = if repeated { kept.get(run_id).cloned() } else { kept.remove(run_id) };
        if let Some(leaf) = leaf {
            out.items.push((run_id.clone(), leaf));
        }
    }
    Ok(out)
}

/// What a streamed save ([`RunStore::save_stream`]) receives: runs, chunk by chunk, then
/// `Commit` once every run was sent.
#[derive(Debug)]
pub enum StreamedRuns {
    Runs(Vec<StreamedRun>),
    Commit,
}

/// One run of a streamed save: decoded, or a record read as text ([`RunRecord::read`]), which
/// the database backends store as it is and the others decode.
#[derive(Debug, Clone)]
pub enum StreamedRun {
    /// Boxed: a `Run` is large beside a record.
    Decoded(Box<Run>),
    Record(RunRecord),
}

impl StreamedRun {
    pub fn id(&self) -> &str {
        match self {
            StreamedRun::Decoded(run) => &run.id,
            StreamedRun::Record(record) => &record.entry.id,
        }
    }

    /// The run itself (a record is decoded).
    pub fn into_run(self) -> Result<Run, StoreError> {
        match self {
            StreamedRun::Decoded(run) => Ok(*run),
            StreamedRun::Record(record) => record.decode(),
        }
    }

    /// What a database backend writes for it (a decoded run is serialised).
    pub(crate) fn into_record(self) -> Result<RunRecord, StoreError> {
        match self {
            StreamedRun::Decoded(run) => RunRecord::of(&run),
            StreamedRun::Record(record) => {
                validate_run_id(&record.entry.id)?;
                Ok(record)
            }
        }
    }
}

impl From<Run> for StreamedRun {
    fn from(run: Run) -> StreamedRun {
        StreamedRun::Decoded(Box::new(run))
    }
}

/// A run as the database backends write it: its index entry, its summary leaf (encoded) and
/// its compact JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub(crate) entry: RunIndexEntry,
    pub(crate) body: String,
    pub(crate) tree_leaf: String,
}

impl RunRecord {
    /// The record of a decoded run (serialised).
    pub fn of(run: &Run) -> Result<RunRecord, StoreError> {
        validate_run_id(&run.id)?;
        let body = serde_json::to_string(run).map_err(|e| StoreError::Database {
            location: format!("run {}", run.id),
            message: format!("cannot serialise the run: {e}"),
        })?;
        Ok(RunRecord::with_body(run, body))
    }

    /// `run`'s entry and leaf, with `body` (its text) as the record.
    fn with_body(run: &Run, body: String) -> RunRecord {
        RunRecord { entry: RunIndexEntry::of(run, Revision(0)), body, tree_leaf: TreeLeaf::of(run).encode() }
    }

    /// The record of a run's JSON text without decoding all of it: only what the index entry
    /// and the leaf read is built ([`crate::model::run_for_leaf`]), and the body is the text
    /// itself without the whitespace between tokens. Decoding that body gives the run the full
    /// decode of `text` gives, and serialising a `Value` again was about a fifth of an import
    /// (issue 13). `None` when only the full decode can tell (a part of an unusual shape,
    /// anything it would refuse) or when the text has a top-level `format` (a trace or bundle
    /// is not a record): the caller decodes in full.
    pub fn read(text: &str) -> Option<RunRecord> {
        let run = crate::model::run_for_leaf(text.as_bytes())?;
        if run.extra.contains_key("format") {
            return None;
        }
        Some(RunRecord::with_body(&run, crate::model::json::minify(text)))
    }

    pub fn id(&self) -> &str {
        &self.entry.id
    }

    /// The run the record holds.
    pub fn decode(&self) -> Result<Run, StoreError> {
        decode_run(&format!("run {}", self.entry.id), self.body.as_bytes())
    }
}

/// How a streamed save ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamOutcome {
    /// Every run was saved; their revisions, in the order they came.
    Committed(Vec<Revision>),
    /// The stream ended without [`StreamedRuns::Commit`]: nothing was written.
    Abandoned,
}

/// The channel a streamed save reads from: small, so that the sender waits for the store
/// instead of piling chunks up in memory.
pub fn run_stream() -> (tokio::sync::mpsc::Sender<StreamedRuns>, tokio::sync::mpsc::Receiver<StreamedRuns>) {
    tokio::sync::mpsc::channel(1)
}

/// A JSON document as the database backends store it; serialising a `Value` only fails on a
/// broken writer.
pub(crate) fn document_text(location: &str, what: &str, body: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(body).map_err(|e| StoreError::Database {
        location: location.to_owned(),
        message: format!("cannot serialise {what}: {e}"),
    })
}

/// Checks one expectation of a save against what the store holds.
pub(crate) fn check_run_expected(run_id: &str, expected: Expected, found: Option<Revision>) -> Result<(), StoreError> {
    let ok = match expected {
        Expected::Any => true,
        Expected::Absent => found.is_none(),
        Expected::Revision(revision) => found == Some(revision),
    };
    if ok { Ok(()) } else { Err(StoreError::Conflict { run_id: run_id.to_owned(), expected, found }) }
}

/// Parses a stored record into a run, naming `location` in any error. One pass over the bytes
/// ([`Run::from_json_slice`]), with the errors of `Run::from_value(serde_json::from_slice(..))`.
pub fn decode_run(location: &str, bytes: &[u8]) -> Result<Run, StoreError> {
    // One UTF-8 check of the whole record, then a reader that trusts it: reading bytes checks
    // each string on its own, ~25 % slower (`benches/decode.rs`). Invalid UTF-8 is read as
    // bytes, for serde_json's own error and position.
    let read = match std::str::from_utf8(bytes) {
        Ok(text) => Run::from_json_str(text),
        Err(_) => Run::from_json_slice(bytes),
    };
    read.map_err(|e| StoreError::corrupt(location, &e))?
        .map_err(|source| StoreError::NotARun { location: location.to_owned(), source })
}

/// Checks that an id can be stored by every backend: non-empty, no path separators or NUL,
/// not `.`/`..`, not hidden (the file store keeps its own files under dot-names).
pub fn validate_run_id(run_id: &str) -> Result<(), StoreError> {
    let reason = if run_id.is_empty() {
        Some("it is empty")
    } else if run_id.contains(['/', '\\', '\0']) {
        Some("it contains a path separator or NUL")
    } else if run_id.starts_with('.') {
        Some("it starts with '.'")
    } else if run_id.len() > 200 {
        Some("it is longer than 200 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidRunId { run_id: run_id.to_owned(), reason: reason.to_owned() }),
        None => Ok(()),
    }
}

/// A place that holds runs. Implementations are cheap to share (`Arc<dyn RunStore>`) and safe
/// to use from many tasks at once; saves of one run are serialised by the store.
#[async_trait]
pub trait RunStore: Send + Sync + fmt::Debug {
    /// The store as a specification string (`sqlite:PATH`, `file:DIR`, `memory:`, a
    /// `postgres://` URL without its password).
    fn spec(&self) -> String;

    /// Loads one run. `Ok(None)` when there is no such run.
    async fn get(&self, run_id: &str) -> Result<Option<StoredRun>, StoreError>;

    /// Loads several runs; ids that do not exist are left out, unreadable records are
    /// reported in `problems`. Results follow the order of `run_ids`.
    async fn get_many(&self, run_ids: &[String]) -> Result<Partial<StoredRun>, StoreError>;

    /// Saves a run if the store holds what `expected` says; returns the new revision.
    async fn save(&self, run: &Run, expected: Expected) -> Result<Revision, StoreError>;

    /// Saves several runs, each under the same expectation: all of them or none.
    async fn save_all(&self, runs: &[Run], expected: Expected) -> Result<Vec<Revision>, StoreError>;

    /// Saves the runs `incoming` yields, each under `expected` (checked against the store as
    /// the stream has left it so far), all or none: nothing is visible before
    /// [`StreamedRuns::Commit`], and nothing is written when the stream ends without it (the
    /// sender was dropped: a problem in the input, a cancelled task) or fails. Stores that can
    /// write as they go hold about one chunk in memory (SQLite and PostgreSQL: one
    /// transaction; file: temp files renamed at the end); the default collects every run and
    /// calls [`RunStore::save_all`].
    async fn save_stream(
        &self,
        mut incoming: tokio::sync::mpsc::Receiver<StreamedRuns>,
        expected: Expected,
    ) -> Result<StreamOutcome, StoreError> {
        let mut runs = Vec::new();
        while let Some(message) = incoming.recv().await {
            match message {
                StreamedRuns::Runs(chunk) => {
                    for run in chunk {
                        runs.push(run.into_run()?);
                    }
                }
                StreamedRuns::Commit => return self.save_all(&runs, expected).await.map(StreamOutcome::Committed),
            }
        }
        Ok(StreamOutcome::Abandoned)
    }

    /// Index entries matching `query`, in [`RunIndexEntry::listing_order`].
    async fn list(&self, query: &RunQuery) -> Result<Partial<RunIndexEntry>, StoreError>;

    /// The run `root_id` and every run below it by `lineage.parentRunId`, breadth first, the
    /// children of each run in listing order. A lineage cycle is followed once: every run
    /// appears once, at its first (shallowest) position.
    async fn subtree(&self, root_id: &str) -> Result<Partial<RunIndexEntry>, StoreError> {
        let mut out = Partial::default();
        let Some(root) = self.list_one(root_id).await? else {
            return Ok(out);
        };
        let mut seen = std::collections::HashSet::from([root.id.clone()]);
        let mut frontier = std::collections::VecDeque::from([root.id.clone()]);
        out.items.push(root);
        while let Some(parent) = frontier.pop_front() {
            let children = self.list(&RunQuery::children_of(parent)).await?;
            out.problems.extend(children.problems);
            for child in children.items {
                if seen.insert(child.id.clone()) {
                    frontier.push_back(child.id.clone());
                    out.items.push(child);
                }
            }
        }
        Ok(out)
    }

    /// The index entries of the runs asked for, each once, in no particular order (ids that do
    /// not exist are left out), in one call where the store can.
    async fn list_ids(&self, run_ids: &[String]) -> Result<Partial<RunIndexEntry>, StoreError> {
        let mut entries = Partial::default();
        let mut asked = std::collections::HashSet::with_capacity(run_ids.len());
        for run_id in run_ids.iter().filter(|run_id| asked.insert(run_id.as_str())) {
            entries.items.extend(self.list_one(run_id).await?);
        }
        Ok(entries)
    }

    /// The families below `roots` (each root and every run below it by parent links, as
    /// [`RunStore::subtree`] gives them: breadth first, each run once) with their lineage fields
    /// only, in the order of `roots`. The roots come with their own fields, as a forest scan
    /// found them, so that a store which indexes parent links by parent can answer from that
    /// index alone, in one call for all of them.
    async fn families(&self, roots: &[LineageLink]) -> Result<Vec<Partial<LineageLink>>, StoreError> {
        let mut families = Vec::with_capacity(roots.len());
        for root in roots {
            let members = self.subtree(&root.id).await?;
            families.push(Partial {
                items: members.items.iter().map(LineageLink::of).collect(),
                problems: members.problems,
            });
        }
        Ok(families)
    }

    /// Up to `limit` runs of the whole store in listing order, after `after` (from the first run
    /// when `None`), reporting the runs where a tree of the forest may start
    /// ([`ForestPlace`]), so that the whole-store forest can be written family by family
    /// without holding the listing. `Ok(None)`: this store does not scan; the forest is shaped
    /// from [`RunStore::list`].
    async fn forest_scan(
        &self,
        after: Option<&ListingKey>,
        limit: usize,
    ) -> Result<Option<ForestScanPage>, StoreError> {
        let _ = (after, limit);
        Ok(None)
    }

    /// The index entry of one run.
    async fn list_one(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        Ok(self.get(run_id).await?.map(|stored| RunIndexEntry::of(&stored.run, stored.revision)))
    }

    /// The index entry of one run as its record is now (the stale-plan check). Stores whose
    /// index is written in the same commit as the record answer from the index; the default
    /// reads the record, for stores whose index may lag behind their records (the file store's
    /// is brought up to date by `catch_up`).
    async fn current_entry(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        Ok(self.get(run_id).await?.map(|stored| RunIndexEntry::of(&stored.run, stored.revision)))
    }

    /// What the whole-store forest shows of each run ([`TreeLeaf`]), for the ids asked, in that
    /// order; ids that do not exist are left out, unreadable records are reported in
    /// `problems`. Stores that keep the leaf beside the record (written with it) hand it back
    /// without decoding the run; the others compute it from the record.
    async fn tree_leaves(&self, run_ids: &[String]) -> Result<Partial<(String, TreeLeaf)>, StoreError> {
        kept_or_computed_leaves(self, run_ids, std::collections::HashMap::new()).await
    }

    /// Brings the indexes in line with what other writers did since they were last read (the
    /// file store re-reads its directory: a runtime writes run files behind its back). Stores
    /// whose indexes change with every write have nothing to do. Called before a search that
    /// must not miss a run another process just wrote (finding the run a step created).
    async fn catch_up(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Where runs are kept, as given on the command line or in `SALVAGE_STORE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Memory,
    File(std::path::PathBuf),
    Sqlite(std::path::PathBuf),
    /// `postgres://…` or `postgresql://…`; shown without its password.
    Postgres(PostgresUrl),
}

impl StoreSpec {
    /// The embedded default: `sqlite:.salvage/salvage.db`.
    pub const DEFAULT: &'static str = "sqlite:.salvage/salvage.db";

    /// Whether the store writes a run as its compact JSON text, so that a run read as text
    /// ([`StreamedRun::Record`]) is stored as it is; the others decode it to write their own.
    pub fn stores_run_text(&self) -> bool {
        matches!(self, StoreSpec::Sqlite(_) | StoreSpec::Postgres(_))
    }

    pub fn parse(spec: &str) -> Result<StoreSpec, StoreError> {
        let bad = |reason: &str| StoreError::Spec { spec: postgres::redact(spec), reason: reason.to_owned() };
        let (scheme, rest) = spec.split_once(':').ok_or_else(|| bad("it has no scheme"))?;
        match scheme {
            "memory" if rest.is_empty() => Ok(StoreSpec::Memory),
            "memory" => Err(bad("memory: takes no path")),
            "file" if rest.is_empty() => Err(bad("file: needs a directory, e.g. file:./runs")),
            "file" => Ok(StoreSpec::File(rest.into())),
            "sqlite" if rest.is_empty() => Err(bad("sqlite: needs a database path, e.g. sqlite:.salvage/salvage.db")),
            "sqlite" => Ok(StoreSpec::Sqlite(rest.into())),
            "postgres" | "postgresql" => Ok(StoreSpec::Postgres(PostgresUrl::parse(spec)?)),
            other => Err(bad(&format!("unknown scheme {other:?}"))),
        }
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Memory => f.write_str("memory:"),
            StoreSpec::File(dir) => write!(f, "file:{}", dir.display()),
            StoreSpec::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreSpec::Postgres(url) => write!(f, "{url}"),
        }
    }
}

/// A backend: runs, and the recovery executions, journals and state documents kept beside them.
pub trait Store: RunStore + ExecutionStore + StateStore {}

impl<T: RunStore + ExecutionStore + StateStore> Store for T {}

/// Opens (creating when needed) the store a specification names, for reading and writing.
pub async fn open(spec: &StoreSpec) -> Result<Arc<dyn Store>, StoreError> {
    open_with(spec, OpenOptions::default()).await
}

/// Whether a store is opened for reading only or for reading and writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// Creates what is missing, migrates the schema, takes locks to write.
    #[default]
    ReadWrite,
    /// Creates nothing, migrates nothing, takes no write lock; every write is refused
    /// ([`StoreError::ReadOnly`]). The store must exist.
    ReadOnly,
}

/// How [`open_with`] opens a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    pub access: Access,
    /// Largest run record a `file:` store reads ([`crate::limits::max_run_bytes`]).
    pub max_run_bytes: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { access: Access::ReadWrite, max_run_bytes: crate::limits::DEFAULT_MAX_RUN_BYTES }
    }
}

/// Opens the store a specification names with `options`.
pub async fn open_with(spec: &StoreSpec, options: OpenOptions) -> Result<Arc<dyn Store>, StoreError> {
    let read_only = options.access == Access::ReadOnly;
    match spec {
        StoreSpec::Memory => Ok(Arc::new(MemoryStore::new())),
        StoreSpec::File(dir) => {
            let file_options = FileStoreOptions { read_only, max_run_bytes: options.max_run_bytes };
            Ok(Arc::new(FileStore::open_with(dir.clone(), file_options).await?))
        }
        StoreSpec::Sqlite(path) if read_only => Ok(Arc::new(SqliteStore::open_read_only(path.clone()).await?)),
        StoreSpec::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path.clone()).await?)),
        StoreSpec::Postgres(url) => {
            let pg_options = PostgresOptions { read_only, ..PostgresOptions::default() };
            Ok(Arc::new(PostgresStore::open_with(url, pg_options).await?))
        }
    }
}

/// The families of `roots`, in that order, from the members a batched query found below each
/// root (see [`RunStore::families`]).
pub(crate) fn families_in_order(
    roots: &[LineageLink],
    mut members: std::collections::HashMap<String, Vec<LineageLink>>,
) -> Vec<Partial<LineageLink>> {
    let mut asked_again: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for root in roots {
        *asked_again.entry(&root.id).or_default() += 1;
    }
    roots
        .iter()
        .map(|root| {
            let left = asked_again.get_mut(root.id.as_str()).map_or(0, |left| {
                *left -= 1;
                *left
            });
            // A root asked for again later keeps its members for then.
            let items = match members.get(&root.id) {
                Some(family) if left > 0 => family.clone(),
                _ => members.remove(&root.id).unwrap_or_default(),
            };
            Partial::complete(breadth_first(&root.id, items))
        })
        .collect()
}

/// Orders the members of a subtree (the root and everything reachable below it) the way
/// [`RunStore::subtree`] promises: breadth first from `root_id`, the children of each run in
/// listing order, each run once. Backends that fetch the members in one query use it so that
/// every backend returns the same sequence.
pub(crate) fn breadth_first<E: Linked>(root_id: &str, members: Vec<E>) -> Vec<E> {
    use std::collections::{HashMap, HashSet, VecDeque};
    let mut children: HashMap<String, Vec<E>> = HashMap::new();
    let mut root = None;
    for entry in members {
        if entry.run_id() == root_id && root.is_none() {
            root = Some(entry.clone());
        }
        if let Some(parent) = entry.parent() {
            children.entry(parent.to_owned()).or_default().push(entry);
        }
    }
    let Some(root) = root else {
        return Vec::new();
    };
    for siblings in children.values_mut() {
        siblings.sort_by(|left, right| left.listed_at().cmp(&right.listed_at()));
    }
    let mut seen = HashSet::from([root.run_id().to_owned()]);
    let mut frontier = VecDeque::from([root.run_id().to_owned()]);
    let mut ordered = vec![root];
    while let Some(parent) = frontier.pop_front() {
        for child in children.remove(&parent).unwrap_or_default() {
            if seen.insert(child.run_id().to_owned()) {
                frontier.push_back(child.run_id().to_owned());
                ordered.push(child);
            }
        }
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record read as text holds what the decoded run's record holds: the same entry and
    /// leaf, and a body that decodes to the same run, on every run the reference recorded.
    #[test]
    fn a_record_read_as_text_is_the_decoded_runs_record() {
        let mut read = 0;
        for (name, bytes) in crate::model::corpus_records::corpus_records() {
            let text = String::from_utf8(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            let run = decode_run(&name, text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let Some(record) = RunRecord::read(&text) else { panic!("{name}: not read as a record") };
            let decoded = RunRecord::of(&run).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((&record.entry, &record.tree_leaf), (&decoded.entry, &decoded.tree_leaf), "{name}");
            assert_eq!(record.decode().ok().as_ref(), Some(&run), "{name}");
            assert!(record.body.len() <= text.len() && !record.body.contains("\n  "), "{name}");
            read += 1;
        }
        eprintln!("{read} corpus records read as text");
    }

    #[test]
    fn traces_and_records_of_unusual_shape_are_left_to_the_full_decode() {
        for text in [
            r#"{"format": "agnostic-agents/run-trace", "run": {"id": "r"}}"#,
            r#"{"id": "r", "format": "something else"}"#,
            r#"{"id": "r", "steps": [{"id": "a"}, null]}"#,
            r#"{"id": "r", "steps": {}}"#,
            r#"{"id": "r""#,
            "[]",
        ] {
            assert_eq!(RunRecord::read(text), None, "{text}");
        }
        let Some(record) = RunRecord::read("{\n  \"id\": \"r\",\n  \"status\": \"failed\"\n}") else {
            panic!("a plain record is read")
        };
        assert_eq!((record.id(), record.body.as_str()), ("r", r#"{"id":"r","status":"failed"}"#));
    }

    #[test]
    fn store_specs_parse_and_print_back() {
        for text in [
            "memory:",
            "file:/tmp/runs",
            "sqlite:.salvage/salvage.db",
            "postgres://root@127.0.0.1:5432/test",
            "postgresql://db.internal/salvage?options=-csearch_path%3Dsalvage",
        ] {
            let spec = StoreSpec::parse(text).map(|s| s.to_string()).map_err(|e| e.to_string());
            assert_eq!(spec.as_deref(), Ok(text));
        }
        let secret = StoreSpec::parse("postgres://u:pw@db/salvage").map(|s| format!("{s} {s:?}"));
        assert_eq!(
            secret.ok().as_deref(),
            Some("postgres://u:***@db/salvage Postgres(PostgresUrl(\"postgres://u:***@db/salvage\"))")
        );
        for bad in ["", "postgres://", "postgres://db:port/x", "mysql://db/x", "file:", "memory:x", "runs"] {
            assert!(StoreSpec::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn unsafe_ids_are_refused() {
        for id in ["", "../etc/passwd", "a/b", ".hidden", "nul\0"] {
            assert!(validate_run_id(id).is_err(), "{id:?}");
        }
        assert!(validate_run_id("e3d70963-a3d5:partial-replay:1795929344653").is_ok());
    }
}
