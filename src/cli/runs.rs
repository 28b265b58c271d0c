//! `salvage runs`: the store's runs, one line each.

use std::process::ExitCode;

use super::console::{Table, heading, paint, status_style};
use super::{CliError, Context};
use crate::model::RunStatus;
use crate::store::{RunIndexEntry, RunQuery};

pub async fn list(cx: &mut Context<'_>, status: Option<&str>, quiet: bool, json: bool) -> Result<ExitCode, CliError> {
    let store = cx.read_store().await?;
    let status = status.map(parse_status).transpose()?;
    let query = match &status {
        Some(status) => RunQuery::with_status(status.clone()),
        None => RunQuery::all(),
    };
    let listing = store.list(&query).await?;
    // A status salvage does not know is taken only as one some run really has (a foreign
    // runtime's): otherwise it is a typo, not "no runs".
    if let Some(status) = status.filter(|s| !s.is_known())
        && listing.items.is_empty()
        && listing.problems.is_empty()
    {
        return Err(unknown_status(status.as_str()));
    }
    if json {
        cx.console.json(&listing.items)?;
    } else if quiet {
        for entry in &listing.items {
            cx.console.line(&entry.id)?;
        }
    } else if listing.items.is_empty() {
        cx.console.note(format!("no runs in {}", store.spec()));
    } else {
        print_table(cx, &listing.items)?;
    }
    for problem in &listing.problems {
        cx.console.error(problem.error.to_string());
    }
    if listing.problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        // The readable runs were listed; the exit status still tells scripts that some were not.
        cx.console.note(format!(
            "{} record(s) could not be read; the other {} run(s) are listed",
            listing.problems.len(),
            listing.items.len()
        ));
        Ok(super::Failure::Store.into())
    }
}

fn print_table(cx: &mut Context<'_>, entries: &[RunIndexEntry]) -> Result<(), CliError> {
    let mut table = Table::new(["RUN", "STATUS", "CREATED", "PARENT", "ROOT"]);
    for entry in entries {
        let root = if entry.root_run_id == entry.id { "-".to_owned() } else { entry.root_run_id.clone() };
        table.styled_row(vec![
            (entry.id.clone(), Default::default()),
            (entry.status.to_string(), status_style(&entry.status)),
            (entry.created_at.clone().unwrap_or_else(|| "-".into()), Default::default()),
            (entry.parent_run_id.clone().unwrap_or_else(|| "-".into()), Default::default()),
            (root, Default::default()),
        ]);
    }
    for line in table.render() {
        cx.console.line(line)?;
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    for entry in entries {
        match counts.iter_mut().find(|(status, _)| *status == entry.status.as_str()) {
            Some((_, count)) => *count += 1,
            None => counts.push((entry.status.to_string(), 1)),
        }
    }
    let summary: Vec<String> = counts
        .iter()
        .map(|(status, count)| format!("{count} {}", paint(status_style(&RunStatus::parse(status)), status)))
        .collect();
    cx.console.line(format!("{} {}", heading(format!("{} runs:", entries.len())), summary.join(", ")))?;
    Ok(())
}

/// A status from the command line: a known status, or an exact custom one.
pub fn parse_status(text: &str) -> Result<RunStatus, CliError> {
    let status = RunStatus::parse(text);
    if status.is_known() {
        return Ok(status);
    }
    let known: Vec<&str> = RunStatus::KNOWN.iter().map(RunStatus::as_str).collect();
    if let Some(close) = known.iter().find(|k| k.eq_ignore_ascii_case(text) || k.replace('_', "-") == text) {
        return Err(CliError::input_msg(format!("unknown status {text:?}; did you mean {close:?}?")));
    }
    // Foreign runtimes may write statuses salvage does not know; let those through, but only
    // when they look like a status word.
    if text.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !text.is_empty() {
        return Ok(status);
    }
    Err(unknown_status(text))
}

fn unknown_status(text: &str) -> CliError {
    let known: Vec<&str> = RunStatus::KNOWN.iter().map(RunStatus::as_str).collect();
    CliError::input_msg(format!(
        "unknown status {text:?}: no run has it; known statuses: {} (a custom status is accepted when a \
         run in the store has it)",
        known.join(", ")
    ))
}
