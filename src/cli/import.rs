//! `salvage import PATH...`: run records, file-store directories, traces and bundles.
//!
//! All or nothing, in one pass and bounded memory: the inputs are read and decoded by two
//! threads, taken in order on a blocking thread ([`Decoded`]), and the runs streamed, a chunk
//! at a time, into one store transaction ([`RunStore::save_stream`]) that commits only when
//! every input was read and checked. A problem anywhere stops the writing, every other input
//! is still checked so that every problem is listed, and the transaction is rolled back:
//! nothing is imported. The store is opened only once the first chunk is ready, so input found
//! bad early leaves no store behind. Into SQLite or PostgreSQL, a run file of the usual shape
//! is not decoded in full: it is kept as its own text ([`RunRecord::read`]), which those
//! stores write as the run's body.
//!
//! What is kept for the whole import is the list of input paths and one small entry per run
//! (a 64-bit hash of its id and where it was first seen), so that a run given twice is
//! imported once, and a run given twice with different content is refused. The first copy is
//! read again to compare (runs given twice are rare); that also tells two ids whose hashes are
//! equal apart, and such an id is then kept whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::ProgressBar;
use miette::Diagnostic;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::source_error::{JsonSyntaxError, UnreadableFile};
use super::{CliError, Context};
use crate::inspect::trace;
use crate::model::Run;
use crate::store::{Expected, Revision, RunRecord, StoreError, StreamOutcome, StreamedRun, StreamedRuns};

/// One problem with one input.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ImportProblem {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Unreadable(#[from] UnreadableFile),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Syntax(#[from] JsonSyntaxError),
    #[error("{path}: not a run record: {reason}")]
    #[diagnostic(
        code(salvage::import::not_a_run),
        help("a run record is the JSON the runtime's file store writes (`<runId>.json`)")
    )]
    NotARun { path: String, reason: String },
    #[error("{path}: {reason}")]
    #[diagnostic(code(salvage::import::invalid_trace))]
    InvalidTrace { path: String, reason: String },
    #[error("run \"{run_id}\" appears twice with different content: {first} and {second}")]
    #[diagnostic(code(salvage::import::conflicting_duplicate), help("import one of the two files"))]
    ConflictingDuplicate { run_id: String, first: String, second: String },
    #[error("{path}: {reason}")]
    #[diagnostic(code(salvage::import::invalid_run_id))]
    InvalidRunId { path: String, reason: String },
    #[error("{path} changed while it was imported: run \"{run_id}\" {reason}")]
    #[diagnostic(
        code(salvage::import::changed_during_import),
        help("import again once nothing writes to the input any more")
    )]
    ChangedDuringImport { path: String, run_id: String, reason: String },
}

/// Nothing was imported.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("nothing was imported: {count} problem(s) in the input")]
#[diagnostic(
    code(salvage::import::rejected),
    help("fix the inputs listed above and import again; the store was not changed")
)]
struct ImportRejected {
    count: usize,
}

/// A chunk is handed to the store once it holds this much input text, or this many runs: a
/// few MiB keep the store's transaction busy without holding much in memory.
const CHUNK_BYTES: usize = 4 << 20;
const CHUNK_RUNS: usize = 512;

pub async fn run(cx: &mut Context<'_>, paths: &[PathBuf], json: bool) -> Result<ExitCode, CliError> {
    let max_run_bytes = crate::limits::max_run_bytes().map_err(CliError::input)?;
    let files = expand(paths);
    let file_count = files.len();
    let bar = cx.console.progress(file_count as u64, "importing");
    let (sender, receiver) = crate::store::run_stream();
    let (ready, first_chunk) = oneshot::channel();
    let reading = tokio::task::spawn_blocking({
        let bar = bar.clone();
        let as_text = cx.spec.stores_run_text();
        move || Reader::new(files, ReadOptions { max_run_bytes, as_text }, sender, ready, bar, json).read_all()
    });
    // The store is opened only when there is something to write: input found bad before the
    // first chunk leaves no store behind. The reader waits for it (the channel holds one chunk).
    let saving = match first_chunk.await {
        Ok(()) => {
            let store = cx.store().await?;
            let saved = store.save_stream(receiver, Expected::Any).await;
            Some((store, saved))
        }
        Err(_) => None,
    };
    let read =
        reading.await.map_err(|e| CliError::from(StoreError::Task(format!("the import's reader failed: {e}"))))?;
    bar.finish_and_clear();
    if !read.problems.is_empty() {
        let count = read.problems.len();
        for problem in read.problems {
            cx.console.report(&CliError::input(problem));
        }
        return Err(CliError::input(ImportRejected { count }));
    }
    let Some((store, saved)) = saving else {
        return Err(CliError::from(StoreError::Task("the import's reader ended without its runs".into())));
    };
    let StreamOutcome::Committed(revisions) = saved? else {
        return Err(CliError::from(StoreError::Task("the import's reader ended without committing".into())));
    };
    tracing::info!(count = revisions.len(), store = %store.spec(), "Imported runs.");
    if json {
        let mut imported: Vec<(String, Revision)> =
            read.sent_ids.unwrap_or_default().into_iter().zip(revisions.iter().copied()).collect();
        imported.sort_unstable();
        let runs: Vec<Value> =
            imported.iter().map(|(id, revision)| serde_json::json!({"id": id, "revision": revision})).collect();
        cx.console.json(&serde_json::json!({
            "store": store.spec().to_string(),
            "files": file_count,
            "imported": runs.len(),
            "runs": runs,
        }))?;
    } else {
        cx.console.note(format!("imported {} run(s) into {}", revisions.len(), store.spec()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a run id was first seen: the file (an index into the import's files) and the run's
/// place in it (a bundle holds several).
#[derive(Debug, Clone, Copy)]
struct FirstSeen {
    file: usize,
    position: usize,
}

/// The run ids seen so far, in about 25 bytes each (a million-run directory is imported in
/// bounded memory): by a 64-bit hash of the id; an id whose hash another id has already is
/// kept whole in `collided`.
#[derive(Default)]
struct SeenIds {
    by_hash: HashMap<u64, FirstSeen>,
    collided: HashMap<String, FirstSeen>,
}

impl SeenIds {
    fn hash(run_id: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        run_id.hash(&mut hasher);
        hasher.finish()
    }
}

/// What reading every input found.
struct ReadOutcome {
    problems: Vec<ImportProblem>,
    /// The ids sent to the store, in order (for `--json` only).
    sent_ids: Option<Vec<String>>,
}

/// Reads the inputs in order and streams their runs to the store (see the module's comment).
struct Reader {
    /// Shared with the decoders.
    files: std::sync::Arc<[Expanded]>,
    options: ReadOptions,
    sender: Option<mpsc::Sender<StreamedRuns>>,
    /// Told once, before the first message is sent.
    ready: Option<oneshot::Sender<()>>,
    bar: ProgressBar,
    chunk: Vec<StreamedRun>,
    chunk_bytes: usize,
    sent_ids: Option<Vec<String>>,
    seen: SeenIds,
    problems: Vec<ImportProblem>,
    /// The last file read again to compare a run given twice (a bundle given twice compares
    /// every run with the same first file).
    reread: Option<(usize, Vec<Run>)>,
}

impl Reader {
    fn new(
        files: Vec<Expanded>,
        options: ReadOptions,
        sender: mpsc::Sender<StreamedRuns>,
        ready: oneshot::Sender<()>,
        bar: ProgressBar,
        keep_ids: bool,
    ) -> Reader {
        Reader {
            files: files.into(),
            options,
            sender: Some(sender),
            ready: Some(ready),
            bar,
            chunk: Vec::new(),
            chunk_bytes: 0,
            sent_ids: keep_ids.then(Vec::new),
            seen: SeenIds::default(),
            problems: Vec::new(),
            reread: None,
        }
    }

    fn read_all(mut self) -> ReadOutcome {
        let files = std::sync::Arc::clone(&self.files);
        std::thread::scope(|scope| {
            let decoded = Decoded::start(scope, &files, self.options);
            for file in 0..self.files.len() {
                self.bar.inc(1);
                if self.sender.is_none() {
                    // The store failed (its error is the import's): nothing more to do.
                    break;
                }
                let read = decoded.next(file);
                let path = match &self.files[file] {
                    Err(problem) => {
                        let problem = UnreadableFile { path: problem.0.clone(), source: problem.1.kind().into() };
                        self.problems.push(problem.into());
                        continue;
                    }
                    Ok(path) => path.clone(),
                };
                match read {
                    None => {}
                    Some(Err(mut found)) => self.problems.append(&mut found),
                    Some(Ok((runs, bytes))) => {
                        let mut added = false;
                        for (position, run) in runs.into_iter().enumerate() {
                            added |= self.add(run, &path, file, position);
                        }
                        if added {
                            self.chunk_bytes += bytes;
                        }
                        if self.chunk_bytes >= CHUNK_BYTES || self.chunk.len() >= CHUNK_RUNS {
                            self.flush();
                        }
                    }
                }
            }
            // Dropping `decoded` here (before the scope waits for its threads) stops them.
        });
        if self.problems.is_empty() {
            self.flush();
            self.send(StreamedRuns::Commit);
        }
        // Dropping the sender without `Commit` abandons the store's transaction.
        ReadOutcome { problems: self.problems, sent_ids: self.sent_ids }
    }

    /// Takes one run: checks its id and whether it was seen before. Returns whether it joined
    /// the chunk.
    fn add(&mut self, run: StreamedRun, path: &Path, file: usize, position: usize) -> bool {
        if let Err(error) = crate::store::validate_run_id(run.id()) {
            let origin = path.display().to_string();
            self.problems.push(ImportProblem::InvalidRunId { path: origin, reason: error.to_string() });
            return false;
        }
        let here = FirstSeen { file, position };
        let hash = SeenIds::hash(run.id());
        if let Some(first) = self.seen.collided.get(run.id()).copied() {
            self.compare_with_first(&run, path, first, true);
            return false;
        }
        if let Some(first) = self.seen.by_hash.get(&hash).copied() {
            if self.compare_with_first(&run, path, first, false) {
                return false;
            }
            // Another id with the same hash: this one is new.
            self.seen.collided.insert(run.id().to_owned(), here);
        } else {
            self.seen.by_hash.insert(hash, here);
        }
        if let Some(sent_ids) = &mut self.sent_ids {
            sent_ids.push(run.id().to_owned());
        }
        // Once the import is refused, runs are still checked but no longer kept.
        if self.problems.is_empty() {
            self.chunk.push(run);
        }
        true
    }

    /// A run id seen before (`same_id`), or whose hash was: reads the first copy again. The
    /// same run is imported once; the same id with different content is a problem. Returns
    /// whether the first copy has this run's id (false: only the hashes were equal).
    fn compare_with_first(&mut self, run: &StreamedRun, path: &Path, first: FirstSeen, same_id: bool) -> bool {
        let Ok(first_path) = self.files[first.file].as_ref().map(PathBuf::clone) else {
            return false;
        };
        if self.reread.as_ref().is_none_or(|(file, _)| *file != first.file) {
            let runs = read_runs(&first_path, self.options.max_run_bytes).map(|(runs, _)| runs).unwrap_or_default();
            self.reread = Some((first.file, runs));
        }
        let first_run = self.reread.as_ref().and_then(|(_, runs)| runs.get(first.position));
        let (first_display, second) = (first_path.display().to_string(), path.display().to_string());
        let changed = |reason: &str| ImportProblem::ChangedDuringImport {
            path: first_display.clone(),
            run_id: run.id().to_owned(),
            reason: reason.into(),
        };
        match first_run {
            Some(first_run) if first_run.id != run.id() && same_id => {
                self.problems.push(changed("is no longer where it was read"));
                true
            }
            Some(first_run) if first_run.id != run.id() => false,
            Some(first_run) => {
                let same = match run {
                    StreamedRun::Decoded(run) => first_run == &**run,
                    StreamedRun::Record(record) => record.decode().is_ok_and(|run| &run == first_run),
                };
                if !same {
                    let (run_id, first) = (run.id().to_owned(), first_display);
                    self.problems.push(ImportProblem::ConflictingDuplicate { run_id, first, second });
                }
                true
            }
            None => {
                self.problems.push(changed("can no longer be read from it"));
                true
            }
        }
    }

    /// Hands the chunk to the store, unless the import is refused already.
    fn flush(&mut self) {
        self.chunk_bytes = 0;
        if !self.problems.is_empty() {
            self.chunk.clear();
            return;
        }
        if !self.chunk.is_empty() {
            let chunk = std::mem::take(&mut self.chunk);
            self.send(StreamedRuns::Runs(chunk));
        }
    }

    fn send(&mut self, message: StreamedRuns) {
        if let Some(ready) = self.ready.take() {
            // The other end waits for this before it opens the store; it never goes away first.
            let _ = ready.send(());
        }
        let sent = self.sender.as_ref().is_some_and(|sender| sender.blocking_send(message).is_ok());
        if !sent {
            // The store stopped reading (it failed); its error is reported.
            self.sender = None;
        }
    }
}

/// What [`read_for_import`] gives for one file.
type ReadResult = Result<(Vec<StreamedRun>, usize), Vec<ImportProblem>>;

/// Threads that read and decode the input files ahead of the reader, which takes their
/// results in file order: decoding is most of an import's reading, and with the store's
/// threads it keeps both cores busy (issue 13).
const DECODERS: usize = 2;

/// Files each decoder may have finished ahead of the reader: memory holds at most
/// `DECODERS × (DECODED_AHEAD + 1)` decoded files besides the chunk.
const DECODED_AHEAD: usize = 1;

/// The decoders' results, file by file: decoder `k` reads files `k`, `k + DECODERS`, ... and
/// sends one result per file (`None` for an input that was not found), so that the next
/// result for file `i` is always on channel `i % DECODERS`.
struct Decoded {
    /// Empty when the threads could not be started: the reader then decodes itself.
    channels: Vec<std::sync::mpsc::Receiver<Option<ReadResult>>>,
    files: std::sync::Arc<[Expanded]>,
    options: ReadOptions,
}

impl Decoded {
    fn start<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        files: &std::sync::Arc<[Expanded]>,
        options: ReadOptions,
    ) -> Decoded {
        let mut channels = Vec::with_capacity(DECODERS);
        for decoder in 0..DECODERS {
            let (results, channel) = std::sync::mpsc::sync_channel(DECODED_AHEAD);
            let files = std::sync::Arc::clone(files);
            let started = std::thread::Builder::new().name("import-decode".into()).spawn_scoped(scope, move || {
                for file in files.iter().skip(decoder).step_by(DECODERS) {
                    let read = file.as_deref().ok().map(|path| read_for_import(path, options));
                    // The reader stopped (the store failed): so does this decoder.
                    if results.send(read).is_err() {
                        return;
                    }
                }
            });
            match started {
                Ok(_) => channels.push(channel),
                Err(error) => {
                    tracing::debug!(%error, "cannot start the import's decoders; decoding on the reader");
                    // Without all of them the files' order cannot be kept: none is used.
                    channels.clear();
                    break;
                }
            }
        }
        Decoded { channels, files: std::sync::Arc::clone(files), options }
    }

    /// The result for file `file` (the files are asked for in order).
    fn next(&self, file: usize) -> Option<ReadResult> {
        let decode_here = || self.files.get(file)?.as_deref().ok().map(|path| read_for_import(path, self.options));
        match self.channels.get(file % DECODERS) {
            // A decoder that ended early panicked (the scope reports it): decoded here.
            Some(channel) => channel.recv().unwrap_or_else(|_| decode_here()),
            None => decode_here(),
        }
    }
}

pub(super) type Expanded = Result<PathBuf, (String, std::io::Error)>;

/// Files to read: each file argument, and every `*.json` of each directory argument (the
/// reference file store's layout), in name order.
pub(super) fn expand(paths: &[PathBuf]) -> Vec<Expanded> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(Ok(path.clone()));
            continue;
        }
        match std::fs::read_dir(path) {
            Err(error) => files.push(Err((path.display().to_string(), error))),
            Ok(entries) => {
                // Every `*.json` entry but directories: a FIFO, a device or a dangling symlink
                // is reported when it is read, never skipped in silence.
                let mut found: Vec<PathBuf> = entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.is_dir())
                    .collect();
                found.sort();
                files.extend(found.into_iter().map(Ok));
            }
        }
    }
    files
}

/// How the import reads its inputs.
#[derive(Debug, Clone, Copy)]
struct ReadOptions {
    /// Larger files are refused unread.
    max_run_bytes: u64,
    /// Keep run records as text (for a store that writes run text:
    /// [`StoreSpec::stores_run_text`](crate::store::StoreSpec::stores_run_text)).
    as_text: bool,
}

/// Reads one file for the store. With `as_text`, a run record of the usual shape is kept as
/// its text ([`RunRecord::read`]: only its index entry and leaf are decoded); anything else is
/// read as [`read_runs`] reads it.
fn read_for_import(path: &Path, options: ReadOptions) -> ReadResult {
    let text = read_text(path, options.max_run_bytes)?;
    if options.as_text
        && let Some(record) = RunRecord::read(&text)
    {
        return Ok((vec![StreamedRun::Record(record)], text.len()));
    }
    let (runs, bytes) = runs_of_text(path, &text)?;
    Ok((runs.into_iter().map(StreamedRun::from).collect(), bytes))
}

/// Reads one file: a run record, a run trace or a trace bundle. Only a regular file of at most
/// `max_run_bytes` is read.
/// Returns the runs and the size of the file's text.
pub(super) fn read_runs(path: &Path, max_run_bytes: u64) -> Result<(Vec<Run>, usize), Vec<ImportProblem>> {
    runs_of_text(path, &read_text(path, max_run_bytes)?)
}

/// The text of `path`, a regular file of at most `max_run_bytes`.
fn read_text(path: &Path, max_run_bytes: u64) -> Result<String, Vec<ImportProblem>> {
    crate::limits::read_regular_text(path, max_run_bytes).map_err(|refused| {
        vec![UnreadableFile { path: path.display().to_string(), source: refused.into_io_error() }.into()]
    })
}

/// The runs in `text`, read from `path`: a run record, a run trace or a trace bundle, and the
/// text's size.
fn runs_of_text(path: &Path, text: &str) -> Result<(Vec<Run>, usize), Vec<ImportProblem>> {
    let display = path.display().to_string();
    let syntax_error = |error: serde_json::Error| vec![JsonSyntaxError::new(path, text, &error).into()];
    // A run record, the common case, is read in one pass. A trace or bundle (a top-level
    // `format`), or a record that is not a run, is read again as a `Value`, which the trace
    // reading and the errors below work from.
    if let Ok(run) = Run::from_json_str(text).map_err(syntax_error)?
        && !matches!(run.extra.get("format").and_then(Value::as_str), Some(trace::RUN_FORMAT | trace::BUNDLE_FORMAT))
    {
        return Ok((vec![run], text.len()));
    }
    let value: Value = serde_json::from_str(text).map_err(syntax_error)?;
    let format = value.get("format").and_then(Value::as_str);
    if matches!(format, Some(trace::RUN_FORMAT | trace::BUNDLE_FORMAT)) {
        // A trace or bundle: the reference's validation first, every error listed.
        let validation = trace::validate_trace(&value, true);
        if !validation.valid {
            return Err(validation
                .errors
                .into_iter()
                .map(|reason| ImportProblem::InvalidTrace { path: display.clone(), reason })
                .collect());
        }
        let imported = if format == Some(trace::BUNDLE_FORMAT) {
            trace::import_bundle(&value)
        } else {
            trace::import_run(&value).map(|run| vec![run])
        };
        return imported
            .map(|runs| (runs, text.len()))
            .map_err(|error| vec![ImportProblem::InvalidTrace { path: display, reason: error.to_string() }]);
    }
    let run = Run::from_value(value)
        .map_err(|error| vec![ImportProblem::NotARun { path: display, reason: error.to_string() }])?;
    Ok((vec![run], text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As an import into SQLite reads.
    const TEXT: ReadOptions = ReadOptions { max_run_bytes: 1 << 20, as_text: true };

    /// Writes each run to its own file in a temp dir; the reader's inputs, in that order.
    fn inputs(dir: &Path, runs: &[(&str, Run)]) -> Vec<Expanded> {
        runs.iter()
            .map(|(name, run)| {
                let path = dir.join(name);
                std::fs::write(&path, run.to_pretty_json()).map(|()| path).map_err(|e| (name.to_string(), e))
            })
            .collect()
    }

    /// Reads `files` and collects what reaches the store. With `collide_with`, the first
    /// input's run is taken to have that id's hash (a 64-bit collision, made on purpose).
    fn read(files: Vec<Expanded>, collide_with: Option<&str>) -> (ReadOutcome, Vec<String>) {
        let (sender, mut receiver) = crate::store::run_stream();
        let (ready, _first) = oneshot::channel();
        let store = std::thread::spawn(move || {
            let mut ids = Vec::new();
            while let Some(message) = receiver.blocking_recv() {
                if let StreamedRuns::Runs(chunk) = message {
                    ids.extend(chunk.iter().map(|run| run.id().to_owned()));
                }
            }
            ids
        });
        let mut reader = Reader::new(files, TEXT, sender, ready, ProgressBar::hidden(), true);
        if let Some(hash_of) = collide_with {
            reader.seen.by_hash.insert(SeenIds::hash(hash_of), FirstSeen { file: 0, position: 0 });
        }
        let outcome = reader.read_all();
        let received = store.join().unwrap_or_default();
        (outcome, received)
    }

    /// The decoders hand each file's result to the reader in file order, whatever thread read
    /// it: the same results, in the same order, as reading the files one after the other.
    #[test]
    fn decoders_give_the_results_of_reading_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let runs: Vec<(String, Run)> =
            (0..9).map(|n| (format!("{n}.json"), Run::new(format!("run-{n}"), "2026-01-01T00:00:00.000Z"))).collect();
        let named: Vec<(&str, Run)> = runs.iter().map(|(name, run)| (name.as_str(), run.clone())).collect();
        let mut files = inputs(dir.path(), &named);
        // An argument that could not be listed, a file that is gone, a file that is not JSON.
        files.insert(3, Err(("listed".into(), std::io::Error::from(std::io::ErrorKind::PermissionDenied))));
        files.insert(5, Ok(dir.path().join("gone.json")));
        std::fs::write(dir.path().join("broken.json"), "{ nope").expect("write");
        files.insert(7, Ok(dir.path().join("broken.json")));
        let summary = |read: Option<ReadResult>| match read {
            None => "not listed".to_owned(),
            Some(Err(problems)) => problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            Some(Ok((runs, bytes))) => format!("{:?} {bytes}", runs.iter().map(StreamedRun::id).collect::<Vec<_>>()),
        };
        let one_by_one: Vec<String> =
            files.iter().map(|file| summary(file.as_deref().ok().map(|path| read_for_import(path, TEXT)))).collect();
        let files: std::sync::Arc<[Expanded]> = files.into();
        let decoded: Vec<String> = std::thread::scope(|scope| {
            let decoded = Decoded::start(scope, &files, TEXT);
            assert_eq!(decoded.channels.len(), DECODERS, "the decoders started");
            (0..files.len()).map(|file| summary(decoded.next(file))).collect()
        });
        assert_eq!(decoded, one_by_one);
    }

    /// A run file is kept as its text, minified; a trace of the same run is decoded.
    #[test]
    fn a_run_file_is_kept_as_text_and_a_trace_is_decoded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut run = Run::new("kept", "2026-01-01T00:00:00.000Z");
        run.status = crate::model::RunStatus::Failed;
        let files = inputs(dir.path(), &[("kept.json", run.clone())]);
        let path = files[0].as_ref().map(PathBuf::clone).unwrap_or_default();
        let Ok((read, bytes)) = read_for_import(&path, TEXT) else { panic!("the run file is read") };
        assert_eq!(bytes, run.to_pretty_json().len());
        match read.as_slice() {
            [StreamedRun::Record(record)] => assert_eq!(record.decode().ok(), Some(run.clone())),
            other => panic!("a run file is kept as a record: {other:?}"),
        }
        // For a store that writes its own text (file:, memory:), it is decoded.
        let decoding = ReadOptions { as_text: false, ..TEXT };
        let Ok((read, _)) = read_for_import(&path, decoding) else { panic!("the run file is read") };
        assert!(matches!(read.as_slice(), [StreamedRun::Decoded(decoded)] if **decoded == run), "{read:?}");
        let trace_path = dir.path().join("trace.json");
        let trace = trace::export_run(&run, serde_json::Map::new());
        std::fs::write(&trace_path, serde_json::to_string_pretty(&trace).unwrap_or_default()).expect("write");
        let Ok((read, _)) = read_for_import(&trace_path, TEXT) else { panic!("the trace is read") };
        match read.as_slice() {
            [StreamedRun::Decoded(decoded)] => assert_eq!(decoded.id, "kept"),
            other => panic!("a trace is decoded: {other:?}"),
        }
    }

    #[test]
    fn two_ids_with_one_hash_are_both_imported_and_their_copies_compared() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = (Run::new("a", "2026-01-01T00:00:00.000Z"), Run::new("b", "2026-01-01T00:00:01.000Z"));
        let files = inputs(dir.path(), &[("a.json", a.clone()), ("b.json", b.clone()), ("b-again.json", b.clone())]);
        let (outcome, received) = read(files, Some("b"));
        assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
        assert_eq!(received, ["a", "b"], "b is new although its hash was seen; its copy is imported once");
        assert_eq!(outcome.sent_ids, Some(vec!["a".to_owned(), "b".to_owned()]));

        let mut other_b = b.clone();
        other_b.status = crate::model::RunStatus::Failed;
        let files = inputs(dir.path(), &[("a.json", a), ("b.json", b), ("b-other.json", other_b)]);
        let (outcome, received) = read(files, Some("b"));
        let problems: Vec<String> = outcome.problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("run \"b\" appears twice with different content"), "{problems:?}");
        assert!(received.is_empty(), "a refused import sends nothing: {received:?}");
    }
}
