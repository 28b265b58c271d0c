//! `salvage audit`: every decision and answer for a compliance log — who, what, when, the plan
//! hash, and where it came from (a person's command or the daemon). Read from the executions'
//! journals (starts, approval requests, answers and refused answers, operator confirmations,
//! abandonments, ends), the daemon's incident records, the reload acceptances and the API
//! tokens created and revoked (never a token's secret or hash). Read-only.
//!
//! Entries list oldest first; entries at the same instant keep the order they were written in.

use std::process::ExitCode;

use serde_json::Value;
use time::OffsetDateTime;

use super::console::Table;
use super::{CliError, Context};
use crate::execute::short_digest;

/// `salvage audit [--since D|T] [--json]`.
pub async fn list(cx: &mut Context<'_>, since: Option<OffsetDateTime>, json: bool) -> Result<ExitCode, CliError> {
    let store = cx.read_store().await?;
    let entries = crate::web::views::audit(store.as_ref(), since).await?;
    if json {
        cx.console.json(&entries)?;
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        let filtered = if since.is_some() { " since then" } else { "" };
        cx.console.note(format!("nothing was decided or answered{filtered} in {}", store.spec()));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(["AT", "EVENT", "WHO", "FROM", "EXECUTION / RUN", "WHAT", "PLAN"]);
    for entry in &entries {
        let text = |key: &str| entry[key].as_str().unwrap_or_default().to_owned();
        let subject = match entry["executionId"].as_str() {
            Some(execution) if entry["event"] != "incident_handled" => execution.to_owned(),
            _ => text("runId"),
        };
        let plan = entry["planHash"].as_str().map(short_digest).unwrap_or_default();
        let cells = [text("at"), text("event"), text("actor"), text("origin"), subject, what(entry), plan];
        table.styled_row(cells.into_iter().map(|cell| (cell, Default::default())).collect());
    }
    for line in table.render() {
        cx.console.line(line)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The decision of an entry, in a few words.
fn what(entry: &Value) -> String {
    let text = |key: &str| entry[key].as_str().unwrap_or_default();
    let reason = match entry["reason"].as_str() {
        Some(reason) if !reason.is_empty() => format!(" — {reason}"),
        _ => String::new(),
    };
    let step = |rest: String| format!("step {}: {rest}{reason}", text("stepId"));
    match text("event") {
        "execution_started" => {
            format!("started ({} mode, policy {})", text("mode"), short_digest(text("policyDigest")))
        }
        "approval_requested" => {
            let approvers: Vec<&str> =
                entry["approvers"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            step(format!("approval asked of {}", approvers.join(", ")))
        }
        "approval_answered" | "operator_confirmed" => step(text("decision").to_owned()),
        "answer_refused" => step(format!("answer `{}` refused", text("decision"))),
        "execution_abandoned" => format!("abandoned{reason}"),
        "execution_finished" => format!("ended {} at {}", text("decision"), text("stepId")),
        "execution_verified" => format!("{} (run {})", text("decision"), text("runStatus")),
        "incident_handled" => format!(
            "{} {}: {} with {}{reason}",
            text("mode"),
            text("decision"),
            text("incidentType"),
            if text("playbook").is_empty() { "no playbook" } else { text("playbook") }
        ),
        "token_added" => format!("token {} for {}", text("tokenId"), text("name")),
        "token_revoked" => format!("token {} of {} revoked", text("tokenId"), text("name")),
        "set_accepted" => format!(
            "accepted policy {} / playbooks {}",
            short_digest(text("policyDigest")),
            short_digest(text("playbookSetDigest"))
        ),
        other => other.to_owned(),
    }
}
