//! `export`, `validate` and `envelope`: portable traces and hand-off payloads.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use serde_json::{Map, Value};

use super::read::{inspect_error, one_line, print_fields};
use super::source_error::{JsonSyntaxError, UnreadableFile};
use super::{CliError, Context, Failure, RunNotFound};
use crate::inspect::trace::{BundleLayout, RenderedTrace};
use crate::inspect::{envelope, trace};

pub struct ExportRequest<'a> {
    pub run_ids: &'a [String],
    pub partial: bool,
    pub checkpoint: Option<&'a str>,
    pub bundle: bool,
    pub metadata: Option<&'a str>,
    pub output: Option<&'a Path>,
}

pub async fn export(cx: &mut Context<'_>, request: ExportRequest<'_>) -> Result<ExitCode, CliError> {
    let metadata = parse_metadata(request.metadata)?;
    if !request.bundle && request.run_ids.len() != 1 {
        return Err(CliError::input_msg(format!(
            "export takes one run id ({} given); use --bundle to export several runs in one trace",
            request.run_ids.len()
        )));
    }
    let store = cx.read_store().await?;
    if request.bundle {
        // A file gets the pretty text; the console lays compact text out itself.
        let layout = if request.output.is_some() { BundleLayout::Pretty } else { BundleLayout::Compact };
        let traces = bundle_traces(cx, store.as_ref(), request.run_ids, layout).await?;
        write_bundle(cx, request.output, &traces, &metadata)?;
    } else {
        let run = cx.run(store.as_ref(), &request.run_ids[0]).await?.run;
        if request.partial {
            let trace =
                trace::export_partial_run(&run, request.checkpoint, metadata).map_err(|e| inspect_error(cx, e))?;
            write_trace(cx, request.output, &trace)?;
        } else {
            write_trace(cx, request.output, &trace::export_run_of(&run, &metadata))?;
        }
    }
    if let Some(path) = request.output {
        let what = if request.bundle { format!("bundle of {} run(s)", request.run_ids.len()) } else { "trace".into() };
        cx.console.note(format!("wrote {what} to {}", path.display()));
    }
    Ok(ExitCode::SUCCESS)
}

/// The traces of a bundle in the order asked, each run once; every one must exist and be
/// readable, which is known before anything is written.
async fn bundle_traces(
    cx: &Context<'_>,
    store: &dyn crate::store::RunStore,
    run_ids: &[String],
    layout: BundleLayout,
) -> Result<Vec<RenderedTrace>, CliError> {
    // A repeated id is exported once, where it first appears.
    let mut seen = HashSet::with_capacity(run_ids.len());
    let unique: Vec<String> = run_ids.iter().filter(|id| seen.insert(id.as_str())).cloned().collect();
    let rendered = trace::render_traces(store, &unique, layout).await.map_err(|e| inspect_error(cx, e))?;
    if let Some(problem) = rendered.problems.into_iter().next() {
        return Err(problem.error.into());
    }
    let found: HashSet<&str> = rendered.items.iter().map(RenderedTrace::run_id).collect();
    if let Some(missing) = unique.iter().find(|id| !found.contains(id.as_str())) {
        return Err(CliError::input(RunNotFound { run_id: missing.clone(), store: cx.spec.to_string() }));
    }
    drop(found);
    Ok(rendered.items)
}

/// Writes a bundle of rendered traces: on stdout as [`Console::json`](super::console::Console::json)
/// prints it, or into `output` as `serde_json::to_string_pretty` writes it.
fn write_bundle(
    cx: &mut Context<'_>,
    output: Option<&Path>,
    traces: &[RenderedTrace],
    metadata: &Map<String, Value>,
) -> Result<(), CliError> {
    match output {
        None => {
            let mut stream = cx.console.json_stream()?;
            {
                let mut compact = std::io::BufWriter::with_capacity(STREAM_CHUNK, &mut stream);
                trace::write_rendered_bundle(&mut compact, traces, metadata, BundleLayout::Compact)?;
                compact.flush()?;
            }
            cx.console.end_json_stream(stream)?;
        }
        Some(path) => write_atomically(path, |file| {
            let mut out = std::io::BufWriter::with_capacity(STREAM_CHUNK, file);
            trace::write_rendered_bundle(&mut out, traces, metadata, BundleLayout::Pretty)?;
            out.write_all(b"\n")?;
            out.flush()
        })?,
    }
    Ok(())
}

/// Writes a trace as pretty JSON: on stdout as [`Console::json`](super::console::Console::json)
/// prints it, or into `output` as `serde_json::to_string_pretty` writes it. Streamed, so a
/// bundle of many runs is never held as text (nor as a `Value`).
fn write_trace<T: Serialize>(cx: &mut Context<'_>, output: Option<&Path>, trace: &T) -> Result<(), CliError> {
    match output {
        None => {
            let mut stream = cx.console.json_stream()?;
            {
                // serde_json writes token by token; the pretty-printer wants large pieces.
                let mut compact = std::io::BufWriter::with_capacity(STREAM_CHUNK, &mut stream);
                serde_json::to_writer(&mut compact, trace).map_err(std::io::Error::from)?;
                compact.flush()?;
            }
            cx.console.end_json_stream(stream)?;
        }
        Some(path) => write_atomically(path, |file| {
            let mut out = std::io::BufWriter::with_capacity(STREAM_CHUNK, file);
            crate::model::json_text::to_pretty_writer(&mut out, trace).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            out.flush()
        })?,
    }
    Ok(())
}

/// Bytes gathered before they are written on.
const STREAM_CHUNK: usize = 256 * 1024;

fn parse_metadata(text: Option<&str>) -> Result<Map<String, Value>, CliError> {
    let Some(text) = text else { return Ok(Map::new()) };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => {
            Err(CliError::input_msg(format!("--metadata must be a JSON object, got {}", crate::model::kind_of(&other))))
        }
        Err(error) => Err(CliError::input_msg(format!("--metadata is not valid JSON: {error}"))),
    }
}

/// Writes a file next to `path` (with `write`) and renames it into place, so a reader never
/// sees half a trace.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), CliError> {
    let fail = |source: std::io::Error| CliError::input(UnreadableFile { path: path.display().to_string(), source });
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "trace".into());
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        write(&mut file)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(fail)
}

/// Reads a JSON file the operator named; errors point at the file (and line:column).
pub fn read_json_file(path: &Path) -> Result<Value, CliError> {
    let limit = crate::limits::max_run_bytes().map_err(CliError::input)?;
    let text = crate::limits::read_regular_text(path, limit).map_err(|refused| {
        CliError::input(UnreadableFile { path: path.display().to_string(), source: refused.into_io_error() })
    })?;
    serde_json::from_str(&text).map_err(|error| CliError::input(JsonSyntaxError::new(path, &text, &error)))
}

pub async fn validate(cx: &mut Context<'_>, file: &Path, allow_bundle: bool, json: bool) -> Result<ExitCode, CliError> {
    let value = read_json_file(file)?;
    let validation = trace::validate_trace(&value, allow_bundle);
    if json {
        cx.console.json(&validation)?;
    } else {
        if validation.valid {
            cx.console.line(format!("{}: valid", file.display()))?;
        } else {
            cx.console.line(format!("{}: invalid", file.display()))?;
            for error in &validation.errors {
                cx.console.line(format!("  error: {error}"))?;
            }
        }
        for warning in &validation.warnings {
            cx.console.line(format!("  warning: {warning}"))?;
        }
    }
    Ok(if validation.valid { ExitCode::SUCCESS } else { Failure::CheckFailed.into() })
}

pub struct EnvelopeRequest<'a> {
    pub run_id: &'a str,
    pub action: &'a str,
    pub runtime_kind: &'a str,
    pub checkpoint: Option<&'a str>,
    pub json: bool,
}

pub async fn envelope(cx: &mut Context<'_>, request: EnvelopeRequest<'_>) -> Result<ExitCode, CliError> {
    let store = cx.read_store().await?;
    let run = cx.run(store.as_ref(), request.run_id).await?.run;
    let created = envelope::create(
        &run,
        envelope::EnvelopeOptions {
            runtime_kind: Some(request.runtime_kind.to_owned()),
            action: Some(request.action.to_owned()),
            checkpoint_id: request.checkpoint.map(str::to_owned),
            metadata: Map::new(),
        },
    );
    let value = created.to_value();
    // The reference creates envelopes no runtime can continue (unknown actions, missing
    // checkpoints); refuse those here, where the operator can still fix the command.
    let check = envelope::check_envelope_request(&value, Some(&run), None);
    if !check.is_ok() {
        for error in &check.errors {
            cx.console.error(error);
        }
        return Err(CliError::input_msg(format!(
            "no envelope was created for run \"{}\": {} problem(s) above",
            run.id,
            check.errors.len()
        )));
    }
    for warning in &check.warnings {
        cx.console.warn(warning);
    }
    if request.json {
        cx.console.json(&value)?;
    } else if let Value::Object(fields) = &value {
        let mut shown = fields.clone();
        shown.remove("lineage");
        print_fields(cx, &shown)?;
        cx.console.line(format!("lineage: {}", one_line(&created.lineage)))?;
    }
    Ok(ExitCode::SUCCESS)
}
