//! `salvage import PATH...`: run records, file-store directories, traces and bundles.
//!
//! All or nothing: every input is read and checked first; if anything is wrong, every problem
//! is listed and nothing is written. Then all runs are saved in one batch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use miette::Diagnostic;
use serde_json::Value;

use super::source_error::{JsonSyntaxError, UnreadableFile};
use super::{CliError, Context};
use crate::inspect::trace;
use crate::model::Run;
use crate::store::Expected;

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

pub async fn run(cx: &mut Context<'_>, paths: &[PathBuf], json: bool) -> Result<ExitCode, CliError> {
    let max_run_bytes = crate::limits::max_run_bytes().map_err(CliError::input)?;
    let files = expand(paths);
    let mut problems: Vec<ImportProblem> = Vec::new();
    let mut runs: BTreeMap<String, (Run, String)> = BTreeMap::new();
    let bar = cx.console.progress(files.len() as u64, "reading");
    for file in &files {
        bar.inc(1);
        match file {
            Err(problem) => {
                problems.push(UnreadableFile { path: problem.0.clone(), source: problem.1.kind().into() }.into())
            }
            Ok(path) => match read_runs(path, max_run_bytes) {
                Err(mut found) => problems.append(&mut found),
                Ok(found) => {
                    for run in found {
                        add(&mut runs, &mut problems, run, path);
                    }
                }
            },
        }
    }
    bar.finish_and_clear();
    if !problems.is_empty() {
        let count = problems.len();
        for problem in problems {
            cx.console.report(&CliError::input(problem));
        }
        return Err(CliError::input(ImportRejected { count }));
    }
    let store = cx.store().await?;
    let batch: Vec<Run> = runs.into_values().map(|(run, _)| run).collect();
    let revisions = store.save_all(&batch, Expected::Any).await?;
    tracing::info!(count = revisions.len(), store = %store.spec(), "Imported runs.");
    if json {
        let imported: Vec<Value> = batch
            .iter()
            .zip(&revisions)
            .map(|(run, revision)| serde_json::json!({"id": run.id, "revision": revision}))
            .collect();
        cx.console.json(&serde_json::json!({
            "store": store.spec().to_string(),
            "files": files.len(),
            "imported": imported.len(),
            "runs": imported,
        }))?;
    } else {
        cx.console.note(format!("imported {} run(s) into {}", batch.len(), store.spec()));
    }
    Ok(ExitCode::SUCCESS)
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

fn add(runs: &mut BTreeMap<String, (Run, String)>, problems: &mut Vec<ImportProblem>, run: Run, path: &Path) {
    let origin = path.display().to_string();
    if let Err(error) = crate::store::validate_run_id(&run.id) {
        problems.push(ImportProblem::InvalidRunId { path: origin, reason: error.to_string() });
        return;
    }
    match runs.get(&run.id) {
        Some((existing, first)) if *existing != run => problems.push(ImportProblem::ConflictingDuplicate {
            run_id: run.id.clone(),
            first: first.clone(),
            second: origin,
        }),
        Some(_) => {}
        None => {
            runs.insert(run.id.clone(), (run, origin));
        }
    }
}

/// Reads one file: a run record, a run trace or a trace bundle. Only a regular file of at most
/// `max_run_bytes` is read.
pub(super) fn read_runs(path: &Path, max_run_bytes: u64) -> Result<Vec<Run>, Vec<ImportProblem>> {
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
            .map_err(|error| vec![ImportProblem::InvalidTrace { path: display, reason: error.to_string() }]);
    }
    let run = Run::from_value(value)
        .map_err(|error| vec![ImportProblem::NotARun { path: display, reason: error.to_string() }])?;
    Ok(vec![run])
}
