//! `file:DIR` — recovery executions and their journals, kept under salvage's own directory
//! `DIR/.salvage/` so that nothing reading `DIR/*.json` (the reference's `listRuns`, the run
//! index) ever sees them:
//!
//! - `DIR/.salvage/executions/<id>.json` — one execution: its indexed fields, a `revision`
//!   counter (1, 2, ... one per save, as in `memory:` and `sqlite:`) and the runner's `body`,
//!   as pretty JSON. Written like a run (temp file, fsync, rename, fsync of the directory), but
//!   entirely under the store's lock (`DIR/.salvage/lock`): the new revision depends on the
//!   file being replaced, so the check and the write must not be interleaved with another
//!   writer's.
//! - `DIR/.salvage/journal/<id>.jsonl` — the journal, one `{"seq":N,"body":...}` per line,
//!   appended and fsynced under the same lock. The next-`seq` check reads only the last line.
//!
//! **Torn last line.** A crash in the middle of an append can leave a last line without its
//! newline. That append never returned, so its entry was never acknowledged: reading ignores a
//! trailing line without a newline (with a warning), and the next append truncates it before
//! writing, so the runner re-appends the same `seq` as if the crashed write had never
//! happened. A *complete* line that is not a journal entry is corruption, reported with its
//! file, line and column. Entries appended together are one write and one fsync; a crash
//! during it can keep the first of them whole and tear the next — what the runner would have
//! left by appending them one by one (it never needs a later entry without the earlier ones).
//!
//! Reads take no lock: renames are atomic, and an append in progress is, to a reader, a torn
//! line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::executions::{check_expected, check_next_seq, journal_batch, validate_execution_id};
use super::file::{FileStore, SIDECAR_DIR, TEMP_SUFFIX, create_dir_durably, fsync_dir, io_error, lock_store};
use super::file_index::remove_if_stale;
use super::{ExecutionDoc, ExecutionStore, Expected, JournalRecord, Revision, StoreError, StoredExecution};

const EXECUTIONS_DIR: &str = "executions";
const JOURNAL_DIR: &str = "journal";

/// How much of a journal's end is read at a time when looking for its last line.
const TAIL_CHUNK: u64 = 8 * 1024;

/// An execution file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecutionFile {
    id: String,
    run_id: String,
    plan_id: String,
    status: String,
    created_at: String,
    updated_at: String,
    revision: u64,
    body: Value,
}

impl ExecutionFile {
    fn of(doc: &ExecutionDoc, revision: Revision) -> ExecutionFile {
        ExecutionFile {
            id: doc.id.clone(),
            run_id: doc.run_id.clone(),
            plan_id: doc.plan_id.clone(),
            status: doc.status.clone(),
            created_at: doc.created_at.clone(),
            updated_at: doc.updated_at.clone(),
            revision: revision.0,
            body: doc.body.clone(),
        }
    }

    fn into_stored(self) -> StoredExecution {
        StoredExecution {
            revision: Revision(self.revision),
            doc: ExecutionDoc {
                id: self.id,
                run_id: self.run_id,
                plan_id: self.plan_id,
                status: self.status,
                created_at: self.created_at,
                updated_at: self.updated_at,
                body: self.body,
            },
        }
    }
}

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
struct JournalLine {
    seq: u64,
    body: Value,
}

impl FileStore {
    /// Where the execution `id` is (or would be) stored; refuses ids that are not safe file
    /// names.
    pub fn execution_path(&self, id: &str) -> Result<PathBuf, StoreError> {
        validate_execution_id(id)?;
        Ok(self.executions_dir().join(format!("{id}.json")))
    }

    /// Where the journal of the execution `id` is (or would be) stored.
    pub fn journal_path(&self, id: &str) -> Result<PathBuf, StoreError> {
        validate_execution_id(id)?;
        Ok(self.dir.join(SIDECAR_DIR).join(JOURNAL_DIR).join(format!("{id}.jsonl")))
    }

    fn executions_dir(&self) -> PathBuf {
        self.dir.join(SIDECAR_DIR).join(EXECUTIONS_DIR)
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| StoreError::Task(e.to_string()))?
}

#[async_trait]
impl ExecutionStore for FileStore {
    async fn put_execution(&self, doc: ExecutionDoc, expected: Expected) -> Result<Revision, StoreError> {
        self.writable()?;
        let path = self.execution_path(&doc.id)?;
        let dir = self.dir.clone();
        let _writer = self.write_lock.lock().await;
        blocking(move || write_execution(&dir, &path, &doc, expected)).await
    }

    async fn get_execution(&self, id: &str) -> Result<Option<StoredExecution>, StoreError> {
        // An id that cannot be a file name names no execution (and must not reach the file
        // system).
        let Ok(path) = self.execution_path(id) else { return Ok(None) };
        let id = id.to_owned();
        blocking(move || read_execution(&path, &id)).await
    }

    async fn list_executions(&self, status: Option<&str>) -> Result<Vec<StoredExecution>, StoreError> {
        let dir = self.executions_dir();
        let status = status.map(str::to_owned);
        blocking(move || {
            let mut out = read_executions(&dir)?;
            out.retain(|stored| status.as_ref().is_none_or(|s| stored.doc.status == *s));
            out.sort_by(StoredExecution::listing_order);
            Ok(out)
        })
        .await
    }

    async fn append_journal_entries(&self, records: &[JournalRecord]) -> Result<(), StoreError> {
        self.writable()?;
        let Some((execution_id, seq)) = journal_batch(records)? else { return Ok(()) };
        let path = self.journal_path(execution_id)?;
        let lines = journal_lines(&path, records)?;
        let (dir, execution_id) = (self.dir.clone(), execution_id.to_owned());
        let _writer = self.write_lock.lock().await;
        blocking(move || append_line(&dir, &path, &execution_id, seq, &lines)).await
    }

    async fn append_journal_and_put_execution(
        &self,
        records: &[JournalRecord],
        doc: ExecutionDoc,
        expected: Expected,
    ) -> Result<Revision, StoreError> {
        self.writable()?;
        let Some((execution_id, seq)) = journal_batch(records)? else {
            return self.put_execution(doc, expected).await;
        };
        let journal_path = self.journal_path(execution_id)?;
        let execution_path = self.execution_path(&doc.id)?;
        let lines = journal_lines(&journal_path, records)?;
        let (dir, execution_id) = (self.dir.clone(), execution_id.to_owned());
        let _writer = self.write_lock.lock().await;
        blocking(move || {
            append_line_and_write_execution(
                &dir,
                &journal_path,
                &execution_id,
                seq,
                &lines,
                &execution_path,
                &doc,
                expected,
            )
        })
        .await
    }

    async fn journal(&self, execution_id: &str) -> Result<Vec<JournalRecord>, StoreError> {
        let Ok(path) = self.journal_path(execution_id) else { return Ok(Vec::new()) };
        let execution_id = execution_id.to_owned();
        blocking(move || read_journal(&path, &execution_id)).await
    }
}

/// Journal entries as their lines in the journal file (each with its newline).
fn journal_lines(path: &Path, records: &[JournalRecord]) -> Result<Vec<u8>, StoreError> {
    let mut lines = Vec::new();
    for record in records {
        serde_json::to_writer(&mut lines, &JournalLine { seq: record.seq, body: record.body.clone() }).map_err(
            |e| StoreError::Io { location: path.display().to_string(), source: io::Error::other(e.to_string()) },
        )?;
        lines.push(b'\n');
    }
    Ok(lines)
}

/// Whether an error means "there is nothing at this path" (a missing file, or a missing or
/// non-directory parent).
fn is_absent(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

/// Reads `.salvage/executions/<id>.json`: `None` when missing.
fn read_execution(path: &Path, id: &str) -> Result<Option<StoredExecution>, StoreError> {
    // salvage's own file, but still only a regular one: a FIFO here must not hang a listing.
    let bytes =
        match crate::limits::read_regular_file(path, u64::MAX).map_err(crate::limits::ReadRefused::into_io_error) {
            Ok(bytes) => bytes,
            Err(error) if is_absent(&error) => return Ok(None),
            Err(error) => return Err(io_error(path)(error)),
        };
    let location = path.display().to_string();
    let file: ExecutionFile = serde_json::from_slice(&bytes).map_err(|e| StoreError::corrupt(&location, &e))?;
    if file.id != id {
        // A renamed or copied file would otherwise serve another execution.
        return Err(StoreError::CorruptRecord {
            location,
            line: 1,
            column: 1,
            message: format!("holds execution {:?}, but the file is named after {id:?}", file.id),
        });
    }
    Ok(Some(file.into_stored()))
}

/// Every execution file of `dir` (unordered). A file that cannot be read fails the listing,
/// naming it: an execution must not silently disappear from the operator's view.
fn read_executions(dir: &Path) -> Result<Vec<StoredExecution>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if is_absent(&error) => return Ok(Vec::new()),
        Err(error) => return Err(io_error(dir)(error)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let os_name = entry.file_name();
        let Some(name) = os_name.to_str() else {
            tracing::warn!(dir = %dir.display(), file = ?os_name, "skipping a file whose name is not UTF-8");
            continue;
        };
        if name.starts_with('.') {
            if name.ends_with(TEMP_SUFFIX) {
                remove_if_stale(&entry.path());
            }
            continue;
        }
        let Some(id) = name.strip_suffix(".json") else { continue };
        if let Some(stored) = read_execution(&entry.path(), id)? {
            out.push(stored);
        }
    }
    Ok(out)
}

/// Under the store's lock: checks `expected` against the file as it is, then replaces it
/// atomically with the document at the next revision.
fn write_execution(
    store_dir: &Path,
    path: &Path,
    doc: &ExecutionDoc,
    expected: Expected,
) -> Result<Revision, StoreError> {
    let lock = lock_store(store_dir)?;
    let revision = next_execution_revision(path, doc, expected)?;
    replace_execution(path, doc, revision)?;
    drop(lock);
    Ok(revision)
}

/// Under the store's lock: the revision `doc` is saved at if the file holds what `expected`
/// says.
fn next_execution_revision(path: &Path, doc: &ExecutionDoc, expected: Expected) -> Result<Revision, StoreError> {
    let found = read_execution(path, &doc.id)?.map(|stored| stored.revision);
    check_expected(&doc.id, expected, found)?;
    Ok(Revision::after(found))
}

/// Under the store's lock: replaces the execution file atomically (temp file, fsync, rename,
/// directory fsync).
fn replace_execution(path: &Path, doc: &ExecutionDoc, revision: Revision) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(&ExecutionFile::of(doc, revision)).map_err(|e| StoreError::Io {
        location: path.display().to_string(),
        source: io::Error::other(format!("cannot serialise the execution: {e}")),
    })?;
    let Some(dir) = path.parent() else {
        return Err(StoreError::Io { location: path.display().to_string(), source: io::Error::other("no parent") });
    };
    create_dir_durably(dir)?;
    // One writer at a time holds the lock, so the temp file's name needs no uniqueness; a
    // crash leaves it behind, to be overwritten by the next save or swept by a listing.
    let temp = dir.join(format!(".{}{TEMP_SUFFIX}", doc.id));
    let written = (|| {
        let mut out =
            OpenOptions::new().write(true).create(true).truncate(true).open(&temp).map_err(io_error(&temp))?;
        out.write_all(&bytes).and_then(|()| out.sync_all()).map_err(io_error(&temp))?;
        fs::rename(&temp, path).map_err(io_error(path))
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    fsync_dir(dir)
}

/// Under one hold of the store's lock: checks the execution's `expected` and the journal's
/// next number, then appends `line` (synced) and replaces the execution file — the journal
/// first, as two separate calls would. On a conflict nothing is written.
#[allow(clippy::too_many_arguments)]
fn append_line_and_write_execution(
    store_dir: &Path,
    journal_path: &Path,
    execution_id: &str,
    seq: u64,
    line: &[u8],
    execution_path: &Path,
    doc: &ExecutionDoc,
    expected: Expected,
) -> Result<Revision, StoreError> {
    let lock = lock_store(store_dir)?;
    let revision = next_execution_revision(execution_path, doc, expected)?;
    append_line_locked(journal_path, execution_id, seq, line)?;
    replace_execution(execution_path, doc, revision)?;
    drop(lock);
    Ok(revision)
}

/// The end of a journal file as the next append sees it.
#[derive(Debug, PartialEq)]
struct Tail {
    /// Length of the part made of complete lines (up to and including the last newline).
    complete_len: u64,
    /// Bytes after the last newline: an append that did not complete.
    torn_len: u64,
    /// The last complete line, without its newline.
    last_line: Option<Vec<u8>>,
}

/// Finds the last complete line of a journal, reading backwards from the end.
fn read_tail(file: &mut File, path: &Path) -> Result<Tail, StoreError> {
    let len = file.metadata().map_err(io_error(path))?.len();
    // `buffer` holds the bytes `start..len` of the file.
    let mut start = len;
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        if let Some(last_newline) = buffer.iter().rposition(|b| *b == b'\n') {
            let before = &buffer[..last_newline];
            let line_start = match before.iter().rposition(|b| *b == b'\n') {
                Some(previous) => Some(previous + 1),
                None if start == 0 => Some(0),
                None => None,
            };
            if let Some(line_start) = line_start {
                let complete_len = start + last_newline as u64 + 1;
                return Ok(Tail {
                    complete_len,
                    torn_len: len - complete_len,
                    last_line: Some(buffer[line_start..last_newline].to_vec()),
                });
            }
        } else if start == 0 {
            return Ok(Tail { complete_len: 0, torn_len: len, last_line: None });
        }
        let step = TAIL_CHUNK.max(buffer.len() as u64).min(start);
        start -= step;
        let mut chunk = vec![0u8; usize::try_from(step).unwrap_or(usize::MAX)];
        file.seek(SeekFrom::Start(start)).and_then(|_| file.read_exact(&mut chunk)).map_err(io_error(path))?;
        chunk.extend_from_slice(&buffer);
        buffer = chunk;
    }
}

/// Under the store's lock: checks that `seq` follows the journal's last complete line, drops
/// a torn last line, appends `line` and fsyncs. On a conflict nothing is written.
fn append_line(store_dir: &Path, path: &Path, execution_id: &str, seq: u64, line: &[u8]) -> Result<(), StoreError> {
    let lock = lock_store(store_dir)?;
    append_line_locked(path, execution_id, seq, line)?;
    drop(lock);
    Ok(())
}

/// [`append_line`] with the store's lock already held.
fn append_line_locked(path: &Path, execution_id: &str, seq: u64, line: &[u8]) -> Result<(), StoreError> {
    let existing = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => Some(file),
        Err(error) if is_absent(&error) => None,
        Err(error) => return Err(io_error(path)(error)),
    };
    let (mut file, tail, created) = match existing {
        Some(mut file) => {
            let tail = read_tail(&mut file, path)?;
            let last_seq = match &tail.last_line {
                Some(last) => Some(last_seq(path, execution_id, last)?),
                None => None,
            };
            check_next_seq(execution_id, seq, last_seq)?;
            (file, tail, false)
        }
        None => {
            check_next_seq(execution_id, seq, None)?;
            let Some(dir) = path.parent() else {
                return Err(StoreError::Io {
                    location: path.display().to_string(),
                    source: io::Error::other("no parent"),
                });
            };
            create_dir_durably(dir)?;
            let file = OpenOptions::new().read(true).write(true).create_new(true).open(path).map_err(io_error(path))?;
            (file, Tail { complete_len: 0, torn_len: 0, last_line: None }, true)
        }
    };
    let written = (|| {
        if tail.torn_len > 0 {
            tracing::warn!(
                journal = %path.display(), offset = tail.complete_len, bytes = tail.torn_len,
                "overwriting the torn last line of a journal (an append interrupted by a crash; it was never acknowledged)"
            );
            file.set_len(tail.complete_len)?;
        }
        file.seek(SeekFrom::Start(tail.complete_len))?;
        file.write_all(line)?;
        file.sync_all()
    })();
    written.map_err(io_error(path))?;
    if created && let Some(dir) = path.parent() {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// The `seq` of a journal's last complete line. When it is not a journal entry, the whole file
/// is read to name the exact line of the corruption.
fn last_seq(path: &Path, execution_id: &str, last_line: &[u8]) -> Result<u64, StoreError> {
    match serde_json::from_slice::<JournalLine>(last_line) {
        Ok(entry) => Ok(entry.seq),
        Err(error) => Err(match read_journal(path, execution_id) {
            Err(precise) => precise,
            Ok(_) => StoreError::CorruptRecord {
                location: path.display().to_string(),
                line: 0,
                column: error.column(),
                message: format!("the last line is not a journal entry: {error}"),
            },
        }),
    }
}

/// Reads a journal: every complete line, in order. A trailing line without a newline is an
/// interrupted append and is left out (see the module documentation).
fn read_journal(path: &Path, execution_id: &str) -> Result<Vec<JournalRecord>, StoreError> {
    // salvage's own file, but still only a regular one: a FIFO here must not hang a listing.
    let bytes =
        match crate::limits::read_regular_file(path, u64::MAX).map_err(crate::limits::ReadRefused::into_io_error) {
            Ok(bytes) => bytes,
            Err(error) if is_absent(&error) => return Ok(Vec::new()),
            Err(error) => return Err(io_error(path)(error)),
        };
    let complete_len = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |last| last + 1);
    if complete_len < bytes.len() {
        tracing::warn!(
            journal = %path.display(), offset = complete_len, bytes = bytes.len() - complete_len,
            "ignoring the torn last line of a journal (an append interrupted by a crash or still in progress)"
        );
    }
    let location = path.display().to_string();
    let mut records = Vec::new();
    // Every line ends with a newline: `split_inclusive` yields exactly the lines.
    for (index, line) in bytes[..complete_len].split_inclusive(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let number = index + 1;
        let entry: JournalLine = serde_json::from_slice(line).map_err(|e| StoreError::CorruptRecord {
            location: location.clone(),
            line: number,
            column: e.column(),
            message: e.to_string().split(" at line ").next().unwrap_or_default().to_owned(),
        })?;
        if entry.seq != number as u64 {
            return Err(StoreError::CorruptRecord {
                location,
                line: number,
                column: 1,
                message: format!(
                    "entry number {} is numbered {} (a journal numbers its entries 1, 2, 3...)",
                    number, entry.seq
                ),
            });
        }
        records.push(JournalRecord { execution_id: execution_id.to_owned(), seq: entry.seq, body: entry.body });
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(content: &[u8]) -> Tail {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("j.jsonl");
        fs::write(&path, content).unwrap_or_else(|e| panic!("{e}"));
        let mut file = File::open(&path).unwrap_or_else(|e| panic!("{e}"));
        read_tail(&mut file, &path).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_tail_is_the_last_complete_line_and_what_follows_it() {
        assert_eq!(tail_of(b""), Tail { complete_len: 0, torn_len: 0, last_line: None });
        assert_eq!(tail_of(b"{\"se"), Tail { complete_len: 0, torn_len: 4, last_line: None });
        assert_eq!(tail_of(b"one\n"), Tail { complete_len: 4, torn_len: 0, last_line: Some(b"one".to_vec()) });
        assert_eq!(tail_of(b"one\ntwo\nthr"), Tail { complete_len: 8, torn_len: 3, last_line: Some(b"two".to_vec()) });
        // Lines longer than a read chunk, and a newline right at a chunk boundary.
        let long = vec![b'x'; TAIL_CHUNK as usize * 2 + 17];
        let mut content = long.clone();
        content.push(b'\n');
        content.extend_from_slice(&long);
        content.push(b'\n');
        content.extend_from_slice(&vec![b'y'; TAIL_CHUNK as usize - 1]);
        let tail = tail_of(&content);
        assert_eq!(tail.complete_len, long.len() as u64 * 2 + 2);
        assert_eq!(tail.torn_len, TAIL_CHUNK - 1);
        assert_eq!(tail.last_line, Some(long));
        let mut boundary = vec![b'a'; 10];
        boundary.push(b'\n');
        boundary.extend_from_slice(&vec![b'b'; TAIL_CHUNK as usize - 1]);
        boundary.push(b'\n');
        let tail = tail_of(&boundary);
        assert_eq!((tail.complete_len, tail.torn_len), (boundary.len() as u64, 0));
        assert_eq!(tail.last_line.map(|l| l.len()), Some(TAIL_CHUNK as usize - 1));
    }
}
