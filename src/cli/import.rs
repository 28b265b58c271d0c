//! `salvage import PATH...`: run records, file-store directories, traces and bundles.
//!
//! All or nothing, in one pass and bounded memory: the inputs are read in order on a blocking
//! thread and the runs streamed, a chunk at a time, into one store transaction
//! ([`RunStore::save_stream`]) that commits only when every input was read and checked. A
//! problem anywhere stops the writing, every other input is still checked so that every
//! problem is listed, and the transaction is rolled back: nothing is imported. The store is
//! opened only once the first chunk is ready, so input found bad early leaves no store behind.
//!
//! What is kept for the whole import is one small entry per run id (where it was first seen),
//! so that a run given twice is imported once, and a run given twice with different content
//! is refused. The first copy is read again to compare (runs given twice are rare).

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
use crate::store::{Expected, Revision, StoreError, StreamOutcome, StreamedRuns};

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
        move || Reader::new(files, max_run_bytes, sender, ready, bar).read_all()
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
        let mut imported: Vec<(String, Revision)> = read
            .seen
            .into_iter()
            .filter_map(|(id, first)| revisions.get(first.sent).map(|revision| (id, *revision)))
            .collect();
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

/// Where a run id was first seen: the file (an index into the import's files), the run's place
/// in it (a bundle holds several), and its place in what was sent to the store.
#[derive(Debug, Clone, Copy)]
struct FirstSeen {
    file: usize,
    position: usize,
    sent: usize,
}

/// What reading every input found.
struct ReadOutcome {
    problems: Vec<ImportProblem>,
    /// Every run id imported, with where it was first seen.
    seen: HashMap<String, FirstSeen>,
}

/// Reads the inputs in order and streams their runs to the store (see the module's comment).
struct Reader {
    files: Vec<Expanded>,
    max_run_bytes: u64,
    sender: Option<mpsc::Sender<StreamedRuns>>,
    /// Told once, before the first message is sent.
    ready: Option<oneshot::Sender<()>>,
    bar: ProgressBar,
    chunk: Vec<Run>,
    chunk_bytes: usize,
    sent: usize,
    seen: HashMap<String, FirstSeen>,
    problems: Vec<ImportProblem>,
    /// The last file read again to compare a run given twice (a bundle given twice compares
    /// every run with the same first file).
    reread: Option<(usize, Vec<Run>)>,
}

impl Reader {
    fn new(
        files: Vec<Expanded>,
        max_run_bytes: u64,
        sender: mpsc::Sender<StreamedRuns>,
        ready: oneshot::Sender<()>,
        bar: ProgressBar,
    ) -> Reader {
        Reader {
            files,
            max_run_bytes,
            sender: Some(sender),
            ready: Some(ready),
            bar,
            chunk: Vec::new(),
            chunk_bytes: 0,
            sent: 0,
            seen: HashMap::new(),
            problems: Vec::new(),
            reread: None,
        }
    }

    fn read_all(mut self) -> ReadOutcome {
        for file in 0..self.files.len() {
            self.bar.inc(1);
            if self.sender.is_none() {
                // The store failed (its error is the import's): nothing more to do.
                break;
            }
            let path = match &self.files[file] {
                Err(problem) => {
                    let problem = UnreadableFile { path: problem.0.clone(), source: problem.1.kind().into() };
                    self.problems.push(problem.into());
                    continue;
                }
                Ok(path) => path.clone(),
            };
            match read_runs(&path, self.max_run_bytes) {
                Err(mut found) => self.problems.append(&mut found),
                Ok((runs, bytes)) => {
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
        if self.problems.is_empty() {
            self.flush();
            self.send(StreamedRuns::Commit);
        }
        // Dropping the sender without `Commit` abandons the store's transaction.
        ReadOutcome { problems: self.problems, seen: self.seen }
    }

    /// Takes one run: checks its id and whether it was seen before. Returns whether it joined
    /// the chunk.
    fn add(&mut self, run: Run, path: &Path, file: usize, position: usize) -> bool {
        if let Err(error) = crate::store::validate_run_id(&run.id) {
            let origin = path.display().to_string();
            self.problems.push(ImportProblem::InvalidRunId { path: origin, reason: error.to_string() });
            return false;
        }
        if let Some(first) = self.seen.get(&run.id).copied() {
            self.compare_with_first(&run, path, first);
            return false;
        }
        self.seen.insert(run.id.clone(), FirstSeen { file, position, sent: self.sent });
        self.sent += 1;
        // Once the import is refused, runs are still checked but no longer kept.
        if self.problems.is_empty() {
            self.chunk.push(run);
        }
        true
    }

    /// A run id given twice: the same run is imported once; different content is a problem.
    fn compare_with_first(&mut self, run: &Run, path: &Path, first: FirstSeen) {
        let Ok(first_path) = self.files[first.file].as_ref().map(PathBuf::clone) else {
            return;
        };
        if self.reread.as_ref().is_none_or(|(file, _)| *file != first.file) {
            let runs = read_runs(&first_path, self.max_run_bytes).map(|(runs, _)| runs).unwrap_or_default();
            self.reread = Some((first.file, runs));
        }
        let first_run = self.reread.as_ref().and_then(|(_, runs)| runs.get(first.position));
        let (first_display, second) = (first_path.display().to_string(), path.display().to_string());
        match first_run {
            Some(first_run) if first_run.id != run.id => self.problems.push(ImportProblem::ChangedDuringImport {
                path: first_display,
                run_id: run.id.clone(),
                reason: "is no longer where it was read".into(),
            }),
            Some(first_run) if first_run != run => self.problems.push(ImportProblem::ConflictingDuplicate {
                run_id: run.id.clone(),
                first: first_display,
                second,
            }),
            Some(_) => {}
            None => self.problems.push(ImportProblem::ChangedDuringImport {
                path: first_display,
                run_id: run.id.clone(),
                reason: "can no longer be read from it".into(),
            }),
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

/// Reads one file: a run record, a run trace or a trace bundle. Only a regular file of at most
/// `max_run_bytes` is read.
/// Returns the runs and the size of the file's text.
pub(super) fn read_runs(path: &Path, max_run_bytes: u64) -> Result<(Vec<Run>, usize), Vec<ImportProblem>> {
    let display = path.display().to_string();
    let text = crate::limits::read_regular_text(path, max_run_bytes)
        .map_err(|refused| vec![UnreadableFile { path: display.clone(), source: refused.into_io_error() }.into()])?;
    let value: Value =
        serde_json::from_str(&text).map_err(|error| vec![JsonSyntaxError::new(path, &text, &error).into()])?;
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
