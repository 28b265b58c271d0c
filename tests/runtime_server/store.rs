//! The reference's `FileRunStore` (spec §2.3): one pretty-printed `<runId>.json` per run (2-space
//! indent, no trailing newline), ids used verbatim as file names. Unlike the reference, a save is
//! atomic (temp file + rename in the same directory) so that a reader never sees half a record.
//!
//! The store's lock stands in for Node's single thread: a request holds it around the
//! load-decide-save of a state transition, so two concurrent resumes of one run are decided
//! one after the other (the second sees the first one's `running`).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::run::Run;

/// A failure of the runtime, with the reference's error class name and message.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentError {
    pub name: String,
    pub message: String,
}

impl AgentError {
    pub fn new(name: &str, message: impl Into<String>) -> AgentError {
        AgentError { name: name.to_owned(), message: message.into() }
    }

    pub fn run_not_found(run_id: &str) -> AgentError {
        AgentError::new("RunNotFoundError", format!("Run \"{run_id}\" not found."))
    }
}

pub struct FileStore {
    dir: PathBuf,
    lock: Mutex<()>,
    temp_counter: AtomicU64,
    mirror: Option<SaveHook>,
}

/// Called with every run saved, under the store's lock, after the file is in place (the
/// run's JSON as written): a test mirrors the runtime's saves into another store with it.
#[derive(Clone)]
pub struct SaveHook(pub std::sync::Arc<SaveFn>);

/// What a [`SaveHook`] calls: the run id and the run's JSON.
pub type SaveFn = dyn Fn(&str, &serde_json::Value) + Send + Sync;

impl std::fmt::Debug for SaveHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaveHook")
    }
}

/// Proof that the caller holds the store's lock.
pub type StoreGuard<'a> = MutexGuard<'a, ()>;

impl FileStore {
    pub fn new(dir: PathBuf) -> FileStore {
        FileStore { dir, lock: Mutex::new(()), temp_counter: AtomicU64::new(0), mirror: None }
    }

    pub fn mirrored(dir: PathBuf, mirror: Option<SaveHook>) -> FileStore {
        FileStore { mirror, ..FileStore::new(dir) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn lock(&self) -> StoreGuard<'_> {
        // A panic while holding the lock leaves no half-written file (writes are atomic).
        self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn path(&self, run_id: &str) -> PathBuf {
        self.dir.join(format!("{run_id}.json"))
    }

    /// `getRun`: `None` when the file does not exist; a read or parse problem is an error
    /// (the reference lets it propagate: a 500 with its message).
    pub fn get(&self, run_id: &str) -> Result<Option<Run>, AgentError> {
        let text = match std::fs::read_to_string(self.path(run_id)) {
            Ok(text) => text,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(AgentError::new("Error", format!("cannot read run {run_id}: {error}"))),
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|error| AgentError::new("SyntaxError", format!("run {run_id}: {error}")))?;
        Run::from_json(value).map(Some).map_err(|problem| AgentError::new("Error", format!("run {run_id}: {problem}")))
    }

    /// `saveRun` with the lock already held by the caller.
    pub fn save_locked(&self, _guard: &StoreGuard<'_>, run: &Run) -> Result<(), AgentError> {
        let fail = |error: std::io::Error| AgentError::new("Error", format!("cannot save run {}: {error}", run.id));
        std::fs::create_dir_all(&self.dir).map_err(fail)?;
        let json = run.to_json();
        let text = serde_json::to_string_pretty(&json)
            .map_err(|error| AgentError::new("Error", format!("cannot encode run {}: {error}", run.id)))?;
        // The temp name does not end in `.json`, so that store readers never list it.
        let serial = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let temp = self.dir.join(format!(".{}.{}.{serial}.tmp", run.id, std::process::id()));
        std::fs::write(&temp, text).map_err(fail)?;
        std::fs::rename(&temp, self.path(&run.id)).map_err(|error| {
            let _ = std::fs::remove_file(&temp);
            fail(error)
        })?;
        if let Some(mirror) = &self.mirror {
            (mirror.0)(&run.id, &json);
        }
        Ok(())
    }

    /// `saveRun`, taking the lock for the write only.
    pub fn save(&self, run: &Run) -> Result<(), AgentError> {
        let guard = self.lock();
        self.save_locked(&guard, run)
    }

    /// Every run id in the directory (`*.json` files), sorted.
    pub fn run_ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(str::to_owned))
            .collect();
        ids.sort();
        ids
    }
}
