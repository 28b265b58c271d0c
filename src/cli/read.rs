//! The read-side commands: `inspect`, `tree`, `report`, `diff`, `correlate`.
//!
//! `--json` prints exactly the reference's object; without it the output is for people.

use std::process::ExitCode;

use serde_json::{Map, Value};

use super::console::{Table, heading, paint, status_style};
use super::{CliError, Context, RunNotFound};
use crate::inspect::{self, IncidentReport, InspectError, LineageCycle, RunSummary, TraceDiff, UnreadableRun};
use crate::model::json::JsNumber;
use crate::model::{Run, RunStatus};

/// Maps a surface error to what the operator sees: unknown ids are bad input (exit 2).
pub fn inspect_error(cx: &Context<'_>, error: InspectError) -> CliError {
    match error {
        InspectError::RunNotFound { run_id } => CliError::input(RunNotFound { run_id, store: cx.spec.to_string() }),
        InspectError::ComparisonRunNotFound { run_id } => {
            CliError::input_msg(format!("comparison run \"{run_id}\" not found in {}", cx.spec))
        }
        InspectError::Store(error) => error.into(),
        // Like any other output failure (a closed pipe).
        InspectError::Output(error) => error.into(),
        other => CliError::input(other),
    }
}

pub async fn inspect(cx: &mut Context<'_>, run_id: &str, json: bool) -> Result<ExitCode, CliError> {
    let store = cx.read_store().await?;
    let run = cx.run(store.as_ref(), run_id).await?.run;
    let summary = inspect::summarize(&run).map_err(|e| inspect_error(cx, e))?;
    if json {
        cx.console.json(&summary)?;
    } else {
        print_summary(cx, &run, &summary)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(cx: &mut Context<'_>, run: &Run, summary: &RunSummary) -> Result<(), CliError> {
    let c = &mut *cx.console;
    c.line(format!("{} {}", heading(format!("run {}", run.id)), paint(status_style(&run.status), &run.status)))?;
    c.line(format!("  input:   {}", one_line(&run.input)))?;
    if !run.output.is_null() {
        c.line(format!("  output:  {}", one_line(&run.output)))?;
    }
    let lineage = run.lineage();
    if lineage.root_run_id != run.id {
        c.line(format!("  root:    {}", lineage.root_run_id))?;
    }
    if let Some(parent) = &lineage.parent_run_id {
        c.line(format!("  parent:  {parent}"))?;
    }
    if let Some(origin) = &lineage.branch_origin_run_id {
        let at = lineage.branch_checkpoint_id.as_deref().unwrap_or("?");
        c.line(format!("  branched from {origin} at {at}"))?;
    }
    if !lineage.child_run_ids.is_empty() {
        c.line(format!("  children: {}", lineage.child_run_ids.join(", ")))?;
    }
    if let Some(workflow) = run.workflow_id() {
        c.line(format!("  workflow: {workflow}"))?;
    }
    c.line(format!("  created: {}", run.created_at().unwrap_or("-")))?;
    let usage = &run.metrics.token_usage;
    c.line(format!(
        "  tokens:  {} prompt, {} completion, {} total; cost {}",
        number(usage.prompt),
        number(usage.completion),
        number(usage.total),
        number(run.metrics.cost)
    ))?;
    if summary.child_run_aggregate.count > 0 {
        c.line(format!("  child runs aggregated: {}", summary.child_run_aggregate.count))?;
    }
    if let Some(approval) = run.pending_approval() {
        let tool = approval.tool_name.as_deref().unwrap_or("?");
        let reason = approval.reason.as_ref().map(one_line).unwrap_or_default();
        c.line(paint(
            status_style(&RunStatus::WaitingForApproval),
            format!("  pending approval: tool {tool} — {reason}"),
        ))?;
    }
    if let Some(pause) = run.pending_pause() {
        let stage = pause.stage.as_ref().map_or("(no stage)".to_owned(), ToString::to_string);
        let reason = pause.reason.as_ref().map(one_line).unwrap_or_default();
        c.line(paint(status_style(&RunStatus::Paused), format!("  paused at {stage}: {reason}")))?;
    }
    c.line("")?;
    c.line(heading(format!("steps ({})", run.steps.len())))?;
    let mut steps = Table::new(["STEP", "TYPE", "STATUS", "MS"]);
    for step in &run.steps {
        let status = step.status.as_ref().map_or("-".to_owned(), ToString::to_string);
        let style = status_style(&RunStatus::parse(&status));
        steps.styled_row(vec![
            (step.id.clone().unwrap_or_else(|| "-".into()), Default::default()),
            (step.step_type.as_ref().map_or("-".into(), ToString::to_string), Default::default()),
            (status, style),
            (step.duration_ms.map_or("-".into(), number), Default::default()),
        ]);
    }
    for line in steps.render() {
        c.line(format!("  {line}"))?;
    }
    c.line(heading(format!("checkpoints ({})", run.checkpoints.len())))?;
    let mut checkpoints = Table::new(["CHECKPOINT", "LABEL", "STATUS"]);
    for checkpoint in &run.checkpoints {
        let status = checkpoint.status.clone().unwrap_or(RunStatus::Other("-".into()));
        checkpoints.styled_row(vec![
            (checkpoint.id.clone().unwrap_or_else(|| "-".into()), Default::default()),
            (checkpoint.label.as_ref().map_or("-".into(), ToString::to_string), Default::default()),
            (status.to_string(), status_style(&status)),
        ]);
    }
    for line in checkpoints.render() {
        c.line(format!("  {line}"))?;
    }
    if !run.errors.is_empty() {
        c.line(heading(format!("errors ({})", run.errors.len())))?;
        for error in &run.errors {
            c.line(format!("  {}", error_line(&error.to_value())))?;
        }
    }
    Ok(())
}

pub async fn tree(cx: &mut Context<'_>, root: Option<&str>, no_status: bool, json: bool) -> Result<ExitCode, CliError> {
    let store = cx.read_store().await?;
    let include_status = !no_status;
    let (cycles, unreadable) = match (root, json) {
        (Some(root_id), _) => {
            let tree = inspect::build_tree(store.as_ref(), root_id).await.map_err(|e| inspect_error(cx, e))?;
            let Some(node) = tree.root else {
                return Err(CliError::input(RunNotFound { run_id: root_id.to_owned(), store: cx.spec.to_string() }));
            };
            if json {
                cx.console.json(&node)?;
            } else {
                cx.console.line(inspect::render(std::slice::from_ref(&node), include_status))?;
            }
            (tree.lineage_cycles, tree.unreadable_runs)
        }
        (None, true) => {
            // Streamed: the forest of a large store is never built in memory.
            let mut out = cx.console.json_stream()?;
            let found = inspect::write_forest_json(store.as_ref(), &mut out).await.map_err(|e| inspect_error(cx, e))?;
            cx.console.end_json_stream(out)?;
            (found.lineage_cycles, found.unreadable_runs)
        }
        (None, false) => {
            // Drawing needs ids, statuses and parents only: no run is loaded.
            let drawn =
                inspect::render_store_forest(store.as_ref(), include_status).await.map_err(|e| inspect_error(cx, e))?;
            if drawn.text.is_empty() {
                cx.console.note(format!("no runs in {}", store.spec()));
            } else {
                cx.console.line(&drawn.text)?;
            }
            (drawn.lineage_cycles, drawn.unreadable_runs)
        }
    };
    warn_findings(cx, &cycles, &unreadable);
    Ok(unreadable_exit(&unreadable))
}

/// `tree --lineage`: branches and replays under the run they came from, each with the salvage
/// execution that made it (`owner/<run>` records, else the run's `metadata.salvage`).
pub async fn lineage_tree(
    cx: &mut Context<'_>,
    root: Option<&str>,
    no_status: bool,
    json: bool,
) -> Result<ExitCode, CliError> {
    let store = cx.read_store().await?;
    let mut created_by = std::collections::HashMap::new();
    for owner in store.list_state(crate::execute::OWNER_PREFIX).await? {
        let body = &owner.body;
        let (Some(run_id), Some(execution_id)) = (body["runId"].as_str(), body["executionId"].as_str()) else {
            continue;
        };
        let text = |key: &str| body[key].as_str().filter(|text| !text.is_empty()).map(str::to_owned);
        created_by.insert(
            run_id.to_owned(),
            inspect::CreatedBy {
                execution_id: execution_id.to_owned(),
                step_id: text("stepId"),
                incident_run_id: text("incidentRunId"),
            },
        );
    }
    let forest =
        inspect::build_lineage_forest(store.as_ref(), root, &created_by).await.map_err(|e| inspect_error(cx, e))?;
    match (root, forest.roots.first()) {
        (Some(root_id), None) => {
            // A run that is in the index but cannot be read is named by the warnings.
            warn_findings(cx, &forest.lineage_cycles, &forest.unreadable_runs);
            return Err(CliError::input(RunNotFound { run_id: root_id.to_owned(), store: cx.spec.to_string() }));
        }
        (Some(_), Some(node)) if json => cx.console.json(node)?,
        (None, _) if json => cx.console.json(&forest.roots)?,
        (None, None) => cx.console.note(format!("no runs in {}", store.spec())),
        _ => cx.console.line(inspect::render_lineage(&forest.roots, !no_status))?,
    }
    warn_findings(cx, &forest.lineage_cycles, &forest.unreadable_runs);
    Ok(unreadable_exit(&forest.unreadable_runs))
}

/// Warns about each lineage cycle and unreadable run once (a record can reach a surface
/// through more than one lookup).
fn warn_findings(cx: &mut Context<'_>, cycles: &[LineageCycle], unreadable: &[UnreadableRun]) {
    let mut said = std::collections::HashSet::new();
    for cycle in cycles {
        let text = cycle.to_string();
        if said.insert(text.clone()) {
            cx.console.warn(text);
        }
    }
    for run in unreadable {
        let text = format!("left out of the tree: {}", run.message);
        if said.insert(text.clone()) {
            cx.console.warn(text);
        }
    }
}

/// The run's place in salvage's recoveries: the execution that created it, the executions that
/// recovered it, and the earlier recovery a later failure of it is linked to.
async fn print_recovery_family(
    cx: &mut Context<'_>,
    store: &dyn crate::store::Store,
    run_id: &str,
) -> Result<(), CliError> {
    let status_of = |doc: &crate::store::ExecutionDoc| {
        crate::execute::execution_of(doc)
            .map(|e| match e.outcome {
                Some(outcome) if outcome != e.status.as_str() => format!("{} ({outcome})", e.status),
                _ => e.status.to_string(),
            })
            .unwrap_or_else(|_| doc.status.clone())
    };
    let mut lines = Vec::new();
    if let Some(owner) = store.get_state(&crate::execute::owner_key(run_id)).await? {
        let execution = owner.body["executionId"].as_str().unwrap_or_default();
        let status = match store.get_execution(execution).await? {
            Some(stored) => status_of(&stored.doc),
            None => "gone".to_owned(),
        };
        lines.push(format!(
            "  created by step {} of execution {execution} ({status}), recovering run {}",
            owner.body["stepId"].as_str().unwrap_or("?"),
            owner.body["incidentRunId"].as_str().unwrap_or("?")
        ));
    }
    for stored in store.executions_of_run(run_id).await? {
        let Ok(execution) = crate::execute::execution_of(&stored.doc) else { continue };
        if execution.mode != crate::execute::Mode::Enforce {
            continue;
        }
        let created: Vec<String> = execution.created_runs.iter().map(|(step, run)| format!("{step} → {run}")).collect();
        lines.push(format!(
            "  recovered by execution {} ({}, started by {}){}",
            execution.execution_id,
            status_of(&stored.doc),
            execution.started_by,
            if created.is_empty() { String::new() } else { format!("; created {}", created.join(", ")) }
        ));
    }
    let record = store.get_state(&format!("{}/{run_id}", crate::serve::incidents::INCIDENT_PREFIX)).await?;
    if let Some(link) = record.as_ref().and_then(|r| r.body.get("linkedTo")) {
        lines.push(format!(
            "  linked incident: {} execution {} (of run {})",
            link["relation"].as_str().unwrap_or("linked to"),
            link["executionId"].as_str().unwrap_or("?"),
            link["incidentRunId"].as_str().unwrap_or("?")
        ));
    }
    if !lines.is_empty() {
        cx.console.line(heading("recovery:"))?;
        for line in lines {
            cx.console.line(line)?;
        }
    }
    Ok(())
}

/// Like `salvage runs`: what could be read was shown, and the exit status still tells scripts
/// that some records could not be read (3).
fn unreadable_exit(unreadable: &[UnreadableRun]) -> ExitCode {
    if unreadable.is_empty() { ExitCode::SUCCESS } else { super::Failure::Store.into() }
}

pub async fn report(
    cx: &mut Context<'_>,
    run_id: &str,
    compare_to: Option<&str>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let store = cx.read_store().await?;
    let report = inspect::create_report(store.as_ref(), run_id, compare_to).await.map_err(|e| inspect_error(cx, e))?;
    if json {
        cx.console.json(&report)?;
    } else {
        print_report(cx, &report, compare_to)?;
        print_recovery_family(cx, store.as_ref(), run_id).await?;
        warn_findings(cx, &report.lineage_cycles, &report.unreadable_runs);
    }
    Ok(unreadable_exit(&report.unreadable_runs))
}

fn print_report(cx: &mut Context<'_>, report: &IncidentReport, compare_to: Option<&str>) -> Result<(), CliError> {
    let c = &mut *cx.console;
    c.line(format!(
        "{} {}",
        heading(format!("incident report: run {}", report.run_id)),
        paint(status_style(&report.status), &report.status)
    ))?;
    if report.root_run_id != report.run_id {
        c.line(format!("  root run: {}", report.root_run_id))?;
    }
    match &report.failure {
        Some(failure) => c.line(format!("  failure: {}", error_line(&failure.to_value())))?,
        None => c.line("  failure: none recorded")?,
    }
    if !report.failed_steps.is_empty() {
        c.line("  failed steps:")?;
        for step in &report.failed_steps {
            let kind = step.step_type.as_ref().map_or("-".to_owned(), ToString::to_string);
            let tool = step.tool_name().map(|t| format!(" ({t})")).unwrap_or_default();
            let error = step.error.as_ref().map(error_line).unwrap_or_default();
            c.line(format!("    {} [{kind}{tool}] {error}", step.id.as_deref().unwrap_or("-")))?;
        }
    }
    if let Some(checkpoint) = &report.last_checkpoint {
        c.line(format!(
            "  last checkpoint: {} ({}, {})",
            checkpoint.id.as_deref().unwrap_or("-"),
            checkpoint.label.as_ref().map_or("-".to_owned(), ToString::to_string),
            checkpoint.status.as_ref().map_or("-".to_owned(), ToString::to_string)
        ))?;
    }
    if let Some(approval) = report.pending_approval.as_ref().filter(|a| a.is_present()) {
        let reason = approval.reason.as_ref().map(one_line).unwrap_or_default();
        c.line(format!("  pending approval: tool {} — {reason}", approval.tool_name.as_deref().unwrap_or("?")))?;
    }
    if let Some(pause) = report.pending_pause.as_ref().filter(|p| p.is_present()) {
        let stage = pause.stage.as_ref().map_or("(no stage)".to_owned(), ToString::to_string);
        c.line(format!("  paused at {stage}: {}", pause.reason.as_ref().map(one_line).unwrap_or_default()))?;
    }
    if let Some(metrics) = &report.aggregated_metrics {
        c.line(format!(
            "  run tree: {} run(s), {} tokens, cost {}",
            metrics.run_count,
            number(metrics.token_usage.total),
            number(metrics.cost)
        ))?;
    }
    if let Some(rendered) = &report.rendered_run_tree {
        for line in rendered.lines() {
            c.line(format!("    {line}"))?;
        }
    }
    if let (Some(comparison), Some(known_good)) = (&report.comparison, compare_to) {
        c.line(format!("  compared with {known_good}:"))?;
        for line in diff_lines(comparison) {
            c.line(format!("    {line}"))?;
        }
    }
    c.line(heading("recommendations"))?;
    for (index, recommendation) in report.recommendations.iter().enumerate() {
        c.line(format!("  {}. {recommendation}", index + 1))?;
    }
    Ok(())
}

pub async fn diff(cx: &mut Context<'_>, left: &str, right: &str, json: bool) -> Result<ExitCode, CliError> {
    let store = cx.read_store().await?;
    let left_run = cx.run(store.as_ref(), left).await?.run;
    let right_run = cx.run(store.as_ref(), right).await?.run;
    let diff = inspect::diff(&left_run, &right_run).map_err(|e| inspect_error(cx, e))?;
    if json {
        cx.console.json(&diff)?;
    } else {
        cx.console.line(heading(format!("{left} → {right}")))?;
        for line in diff_lines(&diff) {
            cx.console.line(format!("  {line}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn diff_lines(diff: &TraceDiff) -> Vec<String> {
    let types = |types: &[inspect::EventTypeValue]| {
        types.iter().map(|t| t.0.as_ref().map_or("?".to_owned(), one_line)).collect::<Vec<_>>().join(", ")
    };
    let index = |i: i64| if i < 0 { "none".to_owned() } else { i.to_string() };
    let mut lines = vec![
        format!("status changed:  {}", if diff.status_changed { "yes" } else { "no" }),
        format!("output changed:  {}", if diff.output_changed { "yes" } else { "no" }),
        format!(
            "deltas:          {:+} events, {:+} steps, {:+} tool calls",
            diff.event_count_delta, diff.step_count_delta, diff.tool_call_count_delta
        ),
        format!(
            "first divergence: step {}, event {}, tool call {}",
            index(diff.first_diverging_step_index),
            index(diff.first_diverging_event_index),
            index(diff.first_diverging_tool_call_index)
        ),
    ];
    if !diff.event_types_added.is_empty() {
        lines.push(format!("events added:    {}", types(&diff.event_types_added)));
    }
    if !diff.event_types_removed.is_empty() {
        lines.push(format!("events removed:  {}", types(&diff.event_types_removed)));
    }
    lines
}

pub async fn correlate(cx: &mut Context<'_>, run_id: &str, json: bool) -> Result<ExitCode, CliError> {
    let store = cx.read_store().await?;
    let run = cx.run(store.as_ref(), run_id).await?.run;
    let correlation = inspect::correlation::from_run(&run, &Map::new());
    if json {
        cx.console.json(&correlation)?;
    } else {
        print_fields(cx, &correlation.0)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `key: value` lines, aligned.
pub fn print_fields(cx: &mut Context<'_>, fields: &Map<String, Value>) -> Result<(), CliError> {
    let width = fields.keys().map(|k| k.chars().count()).max().unwrap_or(0) + 1;
    for (key, value) in fields {
        cx.console.line(format!("{:<width$} {}", format!("{key}:"), one_line(value)))?;
    }
    Ok(())
}

/// A JSON value on one line: strings without quotes, `null` as `-`.
pub fn one_line(value: &Value) -> String {
    match value {
        Value::String(text) => text.replace('\n', " "),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn error_line(error: &Value) -> String {
    match (error.get("name").and_then(Value::as_str), error.get("message").and_then(Value::as_str)) {
        (Some(name), Some(message)) => format!("{name}: {message}"),
        (None, Some(message)) => message.to_owned(),
        (Some(name), None) => name.to_owned(),
        (None, None) => one_line(error),
    }
}

fn number(value: JsNumber) -> String {
    value.to_json().to_string()
}
