//! `file:DIR` — the reference runtime's file store layout, so the reference and salvage can
//! share a directory.
//!
//! One file per run, `DIR/<runId>.json`, holding `JSON.stringify(run, null, 2)` (what
//! [`Run::to_pretty_json`] writes). Unlike the reference, writes are atomic and conditional:
//! the record goes to a hidden temp file (`.<runId>.<uuid>.salvage-tmp`, which the reference's
//! `listRuns` ignores because it only reads `*.json`), is fsynced, and is renamed over the
//! target under an exclusive lock (`DIR/.salvage/lock`) after the compare-and-set check; then
//! the directory is fsynced.
//!
//! The revision of a run is derived from its file's bytes, so any writer's change — including
//! the reference runtime rewriting a file in place, which takes no lock — changes it.
//!
//! Lookups go through [`FileIndex`] (a sidecar SQLite cache of the directory, brought up to
//! date on the first lookup of each store instance and by [`FileStore::refresh`]); `get`
//! always reads the file. `list` and `subtree` report every file that cannot be served in
//! `problems`, whatever the query: nothing tells which of them would have matched.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::file_index::{FileIndex, FileRow, Indexed, RACY, RefreshStats};
use super::{
    Expected, Partial, Revision, RunIndexEntry, RunQuery, RunStore, StoreError, StoreProblem, StoredRun, StreamOutcome,
    StreamedRuns, check_run_expected, decode_run, kept_or_computed_leaves, validate_run_id,
};
use crate::model::{Run, RunShapeError, TreeLeaf, run_for_leaf};

/// salvage's own files inside a file store's directory (the reference reads only `DIR/*.json`).
pub(crate) const SIDECAR_DIR: &str = ".salvage";

/// Suffix of the temp files saves write before renaming them into place.
pub(crate) const TEMP_SUFFIX: &str = ".salvage-tmp";

/// A run's revision in a file store: the first 52 bits of the SHA-256 of the file, so that it
/// stays an exact integer in JavaScript tools.
pub(crate) fn content_revision(bytes: &[u8]) -> Revision {
    let digest = Sha256::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Revision(u64::from_be_bytes(first) >> 12)
}

/// Reads a run file's bytes as the run `run_id`: the JSON must parse, be a run, and carry the
/// id the file is named after (a renamed or copied file would otherwise serve another run).
pub(crate) fn interpret_run_file(location: &str, run_id: &str, bytes: &[u8]) -> Result<Run, StoreError> {
    let run = decode_run(location, bytes)?;
    if run.id != run_id {
        return Err(StoreError::NotARun {
            location: location.to_owned(),
            source: RunShapeError {
                path: "id".into(),
                problem: format!("is {:?}, but the file is named after run {run_id:?}", run.id),
            },
        });
    }
    Ok(run)
}

/// What the index keeps of a run file: its entry and its encoded [`TreeLeaf`], read through
/// [`run_for_leaf`] (which builds only what they need) when it can, and by
/// [`interpret_run_file`] otherwise — so a file that is not a run fails with exactly the error
/// a full read gives.
pub(crate) fn index_run_file(
    location: &str,
    run_id: &str,
    bytes: &[u8],
    revision: Revision,
) -> Result<(RunIndexEntry, String), StoreError> {
    let run = match run_for_leaf(bytes) {
        Some(run) if run.id == run_id => run,
        _ => interpret_run_file(location, run_id, bytes)?,
    };
    Ok((RunIndexEntry::of(&run, revision), TreeLeaf::of(&run).encode()))
}

/// How a file store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStoreOptions {
    /// Refuse every write; create nothing (not the directory, not `.salvage/`).
    pub read_only: bool,
    /// Run files larger than this are reported as problems without being read.
    pub max_run_bytes: u64,
}

impl Default for FileStoreOptions {
    fn default() -> Self {
        FileStoreOptions { read_only: false, max_run_bytes: crate::limits::DEFAULT_MAX_RUN_BYTES }
    }
}

/// Runs stored as one JSON file each in a directory.
#[derive(Debug)]
pub struct FileStore {
    pub(super) dir: PathBuf,
    options: FileStoreOptions,
    index: Arc<FileIndex>,
    /// Set once the index has been brought up to date by this instance.
    refreshed: tokio::sync::OnceCell<()>,
    refresh_lock: tokio::sync::Mutex<()>,
    /// Writers of this process queue here; the file lock orders them with other processes.
    pub(super) write_lock: tokio::sync::Mutex<()>,
}

impl FileStore {
    /// Opens the store in `dir`, creating the directory when missing (as the reference does).
    /// Nothing is read yet: the index is brought up to date by the first lookup.
    pub async fn open(dir: impl Into<PathBuf>) -> Result<FileStore, StoreError> {
        FileStore::open_with(dir, FileStoreOptions::default()).await
    }

    /// Opens the store in `dir` with `options`. A read-only store creates nothing and refuses
    /// every write with [`StoreError::ReadOnly`].
    pub async fn open_with(dir: impl Into<PathBuf>, options: FileStoreOptions) -> Result<FileStore, StoreError> {
        let dir: PathBuf = dir.into();
        let index_dir = dir.clone();
        let index = tokio::task::spawn_blocking(move || {
            if !options.read_only
                && let Err(error) = fs::create_dir_all(&index_dir)
            {
                tracing::warn!(dir = %index_dir.display(), %error, "cannot create the file store directory");
            }
            FileIndex::open(&index_dir, !options.read_only, options.max_run_bytes)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(FileStore {
            dir,
            options,
            index: Arc::new(index),
            refreshed: tokio::sync::OnceCell::new(),
            refresh_lock: tokio::sync::Mutex::new(()),
            write_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The directory holding the runs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fails with [`StoreError::ReadOnly`] when the store was opened read-only.
    pub(super) fn writable(&self) -> Result<(), StoreError> {
        if self.options.read_only {
            return Err(StoreError::ReadOnly { spec: self.spec() });
        }
        Ok(())
    }

    /// Largest run file read.
    pub(super) fn max_run_bytes(&self) -> u64 {
        self.options.max_run_bytes
    }

    /// Where the run `run_id` is (or would be) stored; refuses ids that are not safe file names.
    pub fn run_path(&self, run_id: &str) -> Result<PathBuf, StoreError> {
        validate_run_id(run_id)?;
        Ok(self.dir.join(format!("{run_id}.json")))
    }

    /// The sidecar index database, or `None` when the index is kept in memory (the directory
    /// is not writable).
    pub fn index_path(&self) -> Option<&Path> {
        self.index.sidecar()
    }

    /// Brings the index in line with the directory: reads new and changed files, forgets
    /// removed ones. Lookups do this once per store instance; a long-running process calls it
    /// to pick up changes made by other writers (e.g. the reference runtime).
    pub async fn refresh(&self) -> Result<RefreshStats, StoreError> {
        let _one_at_a_time = self.refresh_lock.lock().await;
        let index = self.index.clone();
        let stats = tokio::task::spawn_blocking(move || index.refresh())
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        // Already set when this refresh was the lazy one.
        let _ = self.refreshed.set(());
        Ok(stats)
    }

    async fn ensure_indexed(&self) -> Result<(), StoreError> {
        self.refreshed.get_or_try_init(|| async { self.refresh().await.map(|_| ()) }).await.map(|_| ())
    }

    async fn on_index<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&FileIndex) -> Result<T, StoreError> + Send + 'static,
    {
        self.ensure_indexed().await?;
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || work(&index)).await.map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn prepare(&self, run: &Run) -> Result<PreparedFile, StoreError> {
        let target = self.run_path(&run.id)?;
        let bytes = run.to_pretty_json().into_bytes();
        if bytes.is_empty() {
            return Err(StoreError::Io {
                location: target.display().to_string(),
                source: io::Error::other("the run could not be serialised"),
            });
        }
        let revision = content_revision(&bytes);
        let tree_leaf = TreeLeaf::of(run).encode();
        Ok(PreparedFile { entry: RunIndexEntry::of(run, revision), target, bytes, tree_leaf })
    }

    async fn write(&self, prepared: Vec<PreparedFile>, expected: Expected) -> Result<Vec<Revision>, StoreError> {
        self.writable()?;
        // 1. Temp files, written and fsynced outside any lock (writers prepare in parallel).
        let staged = self.stage(Staged::default(), prepared).await?;
        // 2. Check and rename under the locks.
        self.commit(staged, expected).await
    }

    async fn stage(&self, staged: Staged, prepared: Vec<PreparedFile>) -> Result<Staged, StoreError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || stage(&dir, staged, prepared))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn commit(&self, staged: Staged, expected: Expected) -> Result<Vec<Revision>, StoreError> {
        let _writer = self.write_lock.lock().await;
        let dir = self.dir.clone();
        let index = self.index.clone();
        let max_run_bytes = self.max_run_bytes();
        tokio::task::spawn_blocking(move || commit(&dir, &index, staged, expected, max_run_bytes))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// A run ready to be written.
struct PreparedFile {
    entry: RunIndexEntry,
    target: PathBuf,
    bytes: Vec<u8>,
    /// The run's [`TreeLeaf`], encoded, for the index.
    tree_leaf: String,
}

/// A run whose temp file is on disk (its bytes are no longer held).
struct StagedFile {
    entry: RunIndexEntry,
    target: PathBuf,
    temp: PathBuf,
    size: usize,
    tree_leaf: String,
}

/// Runs whose temp files are on disk. Temp files not yet renamed into place are removed when
/// this is dropped, whatever the reason (error, conflict, cancelled task, abandoned stream).
#[derive(Default)]
struct Staged {
    files: Vec<StagedFile>,
    renamed: usize,
}

impl Drop for Staged {
    fn drop(&mut self) {
        for StagedFile { temp, .. } in self.files.iter().skip(self.renamed) {
            if let Err(error) = fs::remove_file(temp)
                && error.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(file = %temp.display(), %error, "cannot remove a temp file");
            }
        }
    }
}

/// Takes the store's exclusive lock, `DIR/.salvage/lock`, held until the returned file is
/// closed. Every write of the store (runs, executions, journals) happens under it.
pub(super) fn lock_store(dir: &Path) -> Result<File, StoreError> {
    let lock_dir = dir.join(SIDECAR_DIR);
    // Durably: executions and journals live in this directory too.
    create_dir_durably(&lock_dir)?;
    let lock_path = lock_dir.join("lock");
    let lock =
        OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io_error(&lock_path))?;
    // A lock per open file description (flock): separate stores, in this process or another,
    // exclude each other.
    fs4::FileExt::lock(&lock).map_err(io_error(&lock_path))?;
    Ok(lock)
}

pub(super) fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

/// Creates `dir` and its missing parents, fsyncing each parent that gained an entry so that
/// the new directories survive a crash.
pub(super) fn create_dir_durably(dir: &Path) -> Result<(), StoreError> {
    if fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_dir_durably(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => parent.map_or(Ok(()), fsync_dir),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(error) => Err(io_error(dir)(error)),
    }
}

pub(super) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| {
        crate::telemetry::store_error("file", "io");
        StoreError::Io { location: path.display().to_string(), source }
    }
}

/// Writes and fsyncs the temp files of `prepared`, adding them to `staged`.
fn stage(dir: &Path, mut staged: Staged, prepared: Vec<PreparedFile>) -> Result<Staged, StoreError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    staged.files.reserve(prepared.len());
    for PreparedFile { entry, target, bytes, tree_leaf } in prepared {
        let temp = dir.join(format!(".{}.{}{TEMP_SUFFIX}", entry.id, uuid::Uuid::new_v4().simple()));
        let mut out = OpenOptions::new().write(true).create_new(true).open(&temp).map_err(io_error(&temp))?;
        let location = temp.display().to_string();
        let written = out.write_all(&bytes).and_then(|()| out.sync_all());
        // Registered before the error is returned, so a failed write still removes the file.
        staged.files.push(StagedFile { entry, target, temp, size: bytes.len(), tree_leaf });
        written.map_err(|source| StoreError::Io { location, source })?;
    }
    Ok(staged)
}

/// The revision of the file at `path` now, `None` when there is no file. Something that is not
/// a regular run file (a FIFO, a device, a giant) is an error, never read.
fn current_revision(path: &Path, max_run_bytes: u64) -> Result<Option<Revision>, StoreError> {
    match crate::limits::read_regular_file(path, max_run_bytes) {
        Ok(bytes) => Ok(Some(content_revision(&bytes))),
        Err(refused) if refused.is_not_found() => Ok(None),
        Err(refused) => Err(io_error(path)(refused.into_io_error())),
    }
}

/// Under the directory's exclusive lock: checks every expectation against the files as they
/// are before the batch, then renames every temp file into place and fsyncs the directory.
///
/// A failure before the first rename writes nothing. The one window left: a crash (or an I/O
/// error) between two renames of a batch leaves the runs renamed so far saved and the rest
/// not (their temp files are removed on error, or by a refresh an hour later after a crash).
/// Each file on its own is always either the old or the new record, never a mix.
fn commit(
    dir: &Path,
    index: &FileIndex,
    mut staged: Staged,
    expected: Expected,
    max_run_bytes: u64,
) -> Result<Vec<Revision>, StoreError> {
    let lock = lock_store(dir)?;

    if expected != Expected::Any {
        for file in &staged.files {
            check_run_expected(&file.entry.id, expected, current_revision(&file.target, max_run_bytes)?)?;
        }
    }
    for index in 0..staged.files.len() {
        let file = &staged.files[index];
        fs::rename(&file.temp, &file.target).map_err(io_error(&file.target))?;
        staged.renamed = index + 1;
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))?;

    let rows: Vec<FileRow> = staged
        .files
        .iter()
        .map(|file| FileRow {
            file_name: format!("{}.json", file.entry.id),
            id: file.entry.id.clone(),
            // Just written: verify by content at the next refresh (see `file_index`).
            mtime_ns: RACY,
            size: i64::try_from(file.size).unwrap_or(i64::MAX),
            revision: file.entry.revision,
            indexed: Indexed::Run(file.entry.clone(), file.tree_leaf.clone()),
        })
        .collect();
    if let Err(error) = index.record(&rows) {
        // The runs are saved; the index catches up at the next refresh (the files' mtimes changed).
        tracing::warn!(%error, "saved, but could not update the file store index");
    }
    drop(lock);
    Ok(staged.files.iter().map(|file| file.entry.revision).collect())
}

/// Reads `DIR/<run_id>.json`: `None` when missing. Only a regular file of at most
/// `max_run_bytes` is read (see [`crate::limits::read_regular_file`]).
fn read_run(path: &Path, run_id: &str, max_run_bytes: u64) -> Result<Option<StoredRun>, StoreError> {
    let bytes = match crate::limits::read_regular_file(path, max_run_bytes) {
        Ok(bytes) => bytes,
        Err(refused) if refused.is_not_found() => return Ok(None),
        Err(refused) => return Err(io_error(path)(refused.into_io_error())),
    };
    let revision = content_revision(&bytes);
    let run = interpret_run_file(&path.display().to_string(), run_id, &bytes)?;
    Ok(Some(StoredRun { run, revision }))
}

#[async_trait]
impl RunStore for FileStore {
    fn spec(&self) -> String {
        format!("file:{}", self.dir.display())
    }

    async fn get(&self, run_id: &str) -> Result<Option<StoredRun>, StoreError> {
        // An id that cannot be a file name of this store names no run in it (and must not
        // reach the file system: `../x` would escape the directory).
        let Ok(path) = self.run_path(run_id) else { return Ok(None) };
        let run_id = run_id.to_owned();
        let max_run_bytes = self.max_run_bytes();
        tokio::task::spawn_blocking(move || read_run(&path, &run_id, max_run_bytes))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn get_many(&self, run_ids: &[String]) -> Result<Partial<StoredRun>, StoreError> {
        let wanted: Vec<(String, PathBuf)> =
            run_ids.iter().filter_map(|id| Some((id.clone(), self.run_path(id).ok()?))).collect();
        let max_run_bytes = self.max_run_bytes();
        tokio::task::spawn_blocking(move || {
            let mut out = Partial::default();
            for (run_id, path) in wanted {
                match read_run(&path, &run_id, max_run_bytes) {
                    Ok(Some(stored)) => out.items.push(stored),
                    Ok(None) => {}
                    Err(error) => out.problems.push(StoreProblem { run_id: Some(run_id), error }),
                }
            }
            out
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))
    }

    async fn save(&self, run: &Run, expected: Expected) -> Result<Revision, StoreError> {
        let prepared = vec![self.prepare(run)?];
        let revisions = self.write(prepared, expected).await?;
        revisions.into_iter().next().ok_or_else(|| StoreError::Task("save returned no revision".into()))
    }

    async fn save_all(&self, runs: &[Run], expected: Expected) -> Result<Vec<Revision>, StoreError> {
        let prepared = runs.iter().map(|run| self.prepare(run)).collect::<Result<Vec<_>, _>>()?;
        if prepared.is_empty() {
            return Ok(Vec::new());
        }
        self.write(prepared, expected).await
    }

    /// Temp files written chunk by chunk (only their index rows stay in memory), renamed into
    /// place at the end under the lock; an abandoned or failed stream removes them.
    async fn save_stream(
        &self,
        mut incoming: tokio::sync::mpsc::Receiver<StreamedRuns>,
        expected: Expected,
    ) -> Result<StreamOutcome, StoreError> {
        self.writable()?;
        let mut staged = Staged::default();
        while let Some(message) = incoming.recv().await {
            match message {
                StreamedRuns::Runs(chunk) => {
                    // A record read as text is decoded: this store writes its own pretty text.
                    let prepared = chunk
                        .into_iter()
                        .map(|run| run.into_run().and_then(|run| self.prepare(&run)))
                        .collect::<Result<Vec<_>, _>>()?;
                    staged = self.stage(staged, prepared).await?;
                }
                StreamedRuns::Commit => return self.commit(staged, expected).await.map(StreamOutcome::Committed),
            }
        }
        Ok(StreamOutcome::Abandoned)
    }

    async fn list(&self, query: &RunQuery) -> Result<Partial<RunIndexEntry>, StoreError> {
        let query = query.clone();
        self.on_index(move |index| index.list(&query)).await
    }

    async fn subtree(&self, root_id: &str) -> Result<Partial<RunIndexEntry>, StoreError> {
        let root_id = root_id.to_owned();
        self.on_index(move |index| index.subtree(&root_id)).await
    }

    async fn list_one(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        let run_id = run_id.to_owned();
        self.on_index(move |index| index.one(&run_id)?).await
    }

    async fn tree_leaves(&self, run_ids: &[String]) -> Result<Partial<(String, TreeLeaf)>, StoreError> {
        let wanted = run_ids.to_vec();
        let indexed = self.on_index(move |index| index.tree_leaves(&wanted)).await?;
        // A run the index has no current leaf for is read from its file.
        kept_or_computed_leaves(self, run_ids, indexed).await
    }

    async fn catch_up(&self) -> Result<(), StoreError> {
        self.refresh().await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_52_bit_content_hashes() {
        let a = content_revision(b"{\"id\": \"a\"}");
        let b = content_revision(b"{\"id\": \"b\"}");
        assert_ne!(a, b);
        assert_eq!(a, content_revision(b"{\"id\": \"a\"}"));
        for revision in [a, b, content_revision(b"")] {
            assert!(revision.0 < 1 << 52, "{revision} must be exact as a JavaScript number");
        }
        // sha256("") = e3b0c442 98fc1c14 ...: the top 52 bits.
        assert_eq!(content_revision(b"").0, 0xe3b0_c442_98fc_1c14 >> 12);
    }
}
