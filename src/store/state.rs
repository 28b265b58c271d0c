//! Small durable documents a long-running process keeps beside the runs: `salvage serve`'s
//! change cursor, the incidents it handled and its status for other processes.
//!
//! A document is JSON under a key of `/`-separated segments (`serve/status`,
//! `serve/incident/<run id>`), each segment obeying the run-id rules (the file store names
//! files after them). Saves are compare-and-set like runs and executions ([`Expected`]), so
//! claiming an incident (`Expected::Absent` or the revision read) happens once even when two
//! processes race.
//!
//! - `memory:` keeps them in the process;
//! - `sqlite:` in the `state` table (schema version 3);
//! - `file:DIR` as `DIR/.salvage/state/<key>.json`, written temp → fsync → rename → fsync(dir)
//!   under the store's lock, so a reader sees the old or the new document, never a torn one.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::file::{FileStore, SIDECAR_DIR, TEMP_SUFFIX, create_dir_durably, fsync_dir, io_error, lock_store};
use super::{Expected, Revision, StoreError, validate_run_id};

const STATE_DIR: &str = "state";

/// A state document with the revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredState {
    pub key: String,
    pub body: Value,
    pub revision: Revision,
}

/// Durable key → JSON documents. Every backend implements it next to the runs and executions.
#[async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    async fn get_state(&self, key: &str) -> Result<Option<StoredState>, StoreError>;

    /// Several [`StateStore::get_state`]s, in the order asked (one round trip on SQLite and
    /// PostgreSQL). Each document is read as it is when the store gets to it: the reads are
    /// not one snapshot.
    async fn get_states(&self, keys: &[String]) -> Result<Vec<Option<StoredState>>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            found.push(self.get_state(key).await?);
        }
        Ok(found)
    }

    /// Whether [`StateStore::put_states`] commits all its writes or none (SQLite,
    /// PostgreSQL): a caller may then batch compare-and-set writes and, on a conflict, know
    /// that nothing was written.
    fn writes_states_together(&self) -> bool {
        false
    }

    /// Creates or replaces a document if the store holds what `expected` says; returns its new
    /// revision (1 for a new document, then +1 per save).
    async fn put_state(&self, key: &str, body: &Value, expected: Expected) -> Result<Revision, StoreError>;

    /// The documents directly under `prefix` (`prefix/<segment>`), ordered by key.
    async fn list_state(&self, prefix: &str) -> Result<Vec<StoredState>, StoreError>;

    /// Several [`StateStore::put_state`]s, in order; their new revisions. SQLite and
    /// PostgreSQL commit them as one transaction (all or none, one sync to disk); the file and
    /// memory stores write them one after another, so a failure can leave the earlier ones
    /// written.
    async fn put_states(&self, writes: &[StateWrite<'_>]) -> Result<Vec<Revision>, StoreError> {
        let mut revisions = Vec::with_capacity(writes.len());
        for write in writes {
            revisions.push(self.put_state(write.key, write.body, write.expected).await?);
        }
        Ok(revisions)
    }
}

/// One write of [`StateStore::put_states`].
#[derive(Debug, Clone, Copy)]
pub struct StateWrite<'a> {
    pub key: &'a str,
    pub body: &'a Value,
    pub expected: Expected,
}

/// Checks a state key: `/`-separated segments, each a valid run id.
pub fn validate_state_key(key: &str) -> Result<(), StoreError> {
    let invalid = |reason: String| StoreError::InvalidRunId { run_id: format!("state key {key}"), reason };
    if key.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    for segment in key.split('/') {
        validate_run_id(segment).map_err(|error| match error {
            StoreError::InvalidRunId { reason, .. } => invalid(format!("segment {segment:?}: {reason}")),
            other => other,
        })?;
    }
    Ok(())
}

/// A state file: the document and its revision.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    key: String,
    revision: u64,
    body: Value,
}

impl FileStore {
    fn state_dir(&self) -> PathBuf {
        self.dir.join(SIDECAR_DIR).join(STATE_DIR)
    }

    /// Where the state document `key` is (or would be) kept.
    pub fn state_path(&self, key: &str) -> Result<PathBuf, StoreError> {
        validate_state_key(key)?;
        let mut path = self.state_dir();
        let mut segments = key.split('/').peekable();
        while let Some(segment) = segments.next() {
            if segments.peek().is_some() {
                path.push(segment);
            } else {
                path.push(format!("{segment}.json"));
            }
        }
        Ok(path)
    }
}

fn read_state_file(path: &Path) -> Result<Option<StateFile>, StoreError> {
    // salvage's own file, but still only a regular one: a FIFO here must not hang a listing.
    let bytes =
        match crate::limits::read_regular_file(path, u64::MAX).map_err(crate::limits::ReadRefused::into_io_error) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error(path)(error)),
        };
    serde_json::from_slice(&bytes).map(Some).map_err(|error| StoreError::corrupt(path.display().to_string(), &error))
}

/// Writes a state document under the store's lock: the revision check and the write are not
/// interleaved with another writer's (another task or process).
fn write_state_file(
    store_dir: &Path,
    path: &Path,
    key: &str,
    body: Value,
    expected: Expected,
) -> Result<Revision, StoreError> {
    let _lock = lock_store(store_dir)?;
    let found = read_state_file(path)?.map(|f| Revision(f.revision));
    super::check_run_expected(&format!("state {key}"), expected, found)?;
    let revision = Revision::after(found);
    let file = StateFile { key: key.to_owned(), revision: revision.0, body };
    let dir = path.parent().unwrap_or(store_dir);
    create_dir_durably(dir)?;
    let temp = dir.join(format!(".state.{}{TEMP_SUFFIX}", uuid::Uuid::new_v4().simple()));
    let bytes = serde_json::to_vec_pretty(&file).map_err(|e| StoreError::Io {
        location: path.display().to_string(),
        source: io::Error::other(e.to_string()),
    })?;
    let written = (|| {
        let mut out = OpenOptions::new().write(true).create_new(true).open(&temp)?;
        out.write_all(&bytes)?;
        out.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&temp);
        return Err(io_error(path)(error));
    }
    fsync_dir(dir)?;
    Ok(revision)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| StoreError::Task(e.to_string()))?
}

#[async_trait]
impl StateStore for FileStore {
    async fn get_state(&self, key: &str) -> Result<Option<StoredState>, StoreError> {
        let path = self.state_path(key)?;
        let file = blocking(move || read_state_file(&path)).await?;
        Ok(file.map(|f| StoredState { key: f.key, body: f.body, revision: Revision(f.revision) }))
    }

    async fn put_state(&self, key: &str, body: &Value, expected: Expected) -> Result<Revision, StoreError> {
        self.writable()?;
        let path = self.state_path(key)?;
        let _writer = self.write_lock.lock().await;
        let store_dir = self.dir.clone();
        let (key, body) = (key.to_owned(), body.clone());
        blocking(move || write_state_file(&store_dir, &path, &key, body, expected)).await
    }

    async fn list_state(&self, prefix: &str) -> Result<Vec<StoredState>, StoreError> {
        validate_state_key(prefix)?;
        let dir = prefix.split('/').fold(self.state_dir(), |dir, segment| dir.join(segment));
        let prefix = prefix.to_owned();
        blocking(move || {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(error) => return Err(io_error(&dir)(error)),
            };
            let mut out = Vec::new();
            for entry in entries {
                let path = entry.map_err(io_error(&dir))?.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
                let Some(segment) = name.strip_suffix(".json").filter(|s| !s.starts_with('.')) else { continue };
                if let Some(file) = read_state_file(&path)? {
                    debug_assert_eq!(file.key, format!("{prefix}/{segment}"));
                    out.push(StoredState { key: file.key, body: file.body, revision: Revision(file.revision) });
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }
}

/// `put_states` of a transactional backend: a conflict on the second write rolls back the
/// first; without one, both are written with their new revisions (the backends' tests).
#[cfg(test)]
pub(crate) async fn assert_state_writes_all_or_none(store: &dyn StateStore) {
    use serde_json::json;
    store.put_state("taken", &json!(0), Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
    let (body, conflict) = (json!({"n": 1}), json!({"n": 2}));
    let writes = [
        StateWrite { key: "first", body: &body, expected: Expected::Any },
        StateWrite { key: "taken", body: &conflict, expected: Expected::Absent },
    ];
    let refused = store.put_states(&writes).await;
    assert!(matches!(refused, Err(StoreError::Conflict { .. })), "{refused:?}");
    assert_eq!(store.get_state("first").await.ok(), Some(None), "the first write was rolled back with the second");
    assert_eq!(store.get_state("taken").await.ok().flatten().map(|s| s.body), Some(json!(0)));
    let writes = [
        StateWrite { key: "first", body: &body, expected: Expected::Absent },
        StateWrite { key: "taken", body: &conflict, expected: Expected::Revision(Revision(1)) },
    ];
    assert_eq!(store.put_states(&writes).await.ok(), Some(vec![Revision(1), Revision(2)]));
    assert_eq!(store.get_state("taken").await.ok().flatten().map(|s| s.body), Some(conflict));
    assert!(store.writes_states_together());
    assert_read_together_as_one_by_one(store).await;
}

/// `get_states` answers what `get_state` answers for each key, in the order asked, a key asked
/// for twice served twice.
#[cfg(test)]
pub(crate) async fn assert_read_together_as_one_by_one(store: &dyn StateStore) {
    let keys: Vec<String> = ["taken", "missing", "first", "taken"].map(str::to_owned).to_vec();
    let together = store.get_states(&keys).await.unwrap_or_else(|e| panic!("{e}"));
    let mut one_by_one = Vec::new();
    for key in &keys {
        one_by_one.push(store.get_state(key).await.unwrap_or_else(|e| panic!("{e}")));
    }
    assert_eq!(together, one_by_one);
    assert_eq!(together.iter().filter(|found| found.is_some()).count(), 3, "{together:?}");
    assert_eq!(store.get_states(&[]).await.ok(), Some(Vec::new()));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::store::{MemoryStore, SqliteStore};

    async fn exercise(store: Arc<dyn StateStore>) {
        assert_eq!(store.get_state("serve/status").await.ok(), Some(None));
        let first = store.put_state("serve/status", &json!({"pid": 1}), Expected::Absent).await.expect("create");
        assert_eq!(first, Revision(1));
        let again = store.put_state("serve/status", &json!({"pid": 2}), Expected::Absent).await;
        assert!(matches!(again, Err(StoreError::Conflict { .. })), "{again:?}");
        let stale = store.put_state("serve/status", &json!({"pid": 2}), Expected::Revision(Revision(7))).await;
        assert!(matches!(stale, Err(StoreError::Conflict { .. })), "{stale:?}");
        let second = store.put_state("serve/status", &json!({"pid": 3}), Expected::Revision(first)).await.expect("cas");
        assert_eq!(second, Revision(2));
        assert_eq!(store.put_state("serve/status", &json!({"pid": 4}), Expected::Any).await.ok(), Some(Revision(3)));
        let read = store.get_state("serve/status").await.expect("get").expect("there");
        assert_eq!((read.body, read.revision), (json!({"pid": 4}), Revision(3)));

        for id in ["b:1", "a", "c"] {
            store.put_state(&format!("serve/incident/{id}"), &json!({"run": id}), Expected::Absent).await.expect("put");
        }
        let listed = store.list_state("serve/incident").await.expect("list");
        assert_eq!(
            listed.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(),
            ["serve/incident/a", "serve/incident/b:1", "serve/incident/c"]
        );
        assert_eq!(store.list_state("serve/nothing").await.expect("list"), Vec::new());
        for bad in ["", "serve/../x", "serve//x", ".hidden"] {
            assert!(store.put_state(bad, &json!(1), Expected::Any).await.is_err(), "{bad:?}");
        }

        // Several writes at once, in order, each with its own expectation.
        let (one, two) = (json!({"n": 1}), json!({"n": 2}));
        let writes = [
            StateWrite { key: "batch/one", body: &one, expected: Expected::Absent },
            StateWrite { key: "serve/status", body: &two, expected: Expected::Revision(Revision(3)) },
        ];
        assert_eq!(store.put_states(&writes).await.ok(), Some(vec![Revision(1), Revision(4)]));
        assert_eq!(store.get_state("batch/one").await.ok().flatten().map(|s| s.body), Some(one.clone()));
        assert_eq!(store.get_state("serve/status").await.ok().flatten().map(|s| s.body), Some(two.clone()));
        let stale = store.put_states(&[StateWrite { key: "batch/one", body: &two, expected: Expected::Absent }]).await;
        assert!(matches!(stale, Err(StoreError::Conflict { .. })), "{stale:?}");
        store.put_state("taken", &one, Expected::Absent).await.expect("put");
        store.put_state("first", &two, Expected::Absent).await.expect("put");
        assert_read_together_as_one_by_one(store.as_ref()).await;
    }

    #[tokio::test]
    async fn sqlite_commits_several_state_writes_all_or_none() {
        let dir = tempfile::tempdir().expect("temp");
        let store = SqliteStore::open(dir.path().join("s.db")).await.expect("sqlite");
        assert_state_writes_all_or_none(&store).await;
    }

    #[tokio::test]
    async fn every_backend_keeps_state_documents_with_compare_and_set() {
        exercise(Arc::new(MemoryStore::new())).await;
        let dir = tempfile::tempdir().expect("temp");
        exercise(Arc::new(FileStore::open(dir.path().join("runs")).await.expect("file"))).await;
        exercise(Arc::new(SqliteStore::open(dir.path().join("s.db")).await.expect("sqlite"))).await;
        // The file store keeps them under its sidecar directory, out of the runs' way.
        assert!(dir.path().join("runs/.salvage/state/serve/status.json").is_file());
    }
}
