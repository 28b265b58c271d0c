//! `salvage incidents` and `salvage incident RUN`: what the daemon (or a person) decided for
//! each incident, read from the records `salvage serve` keeps (`serve/incident/<run>`), the
//! advisory plan and dry run (`serve/dry-run/<run>`), the executions of the run and the
//! incidents linked to them. Read-only: the store is opened like every read command's.
//!
//! Incidents list oldest first (by the time the daemon found them, then run id), like `runs`
//! and `executions`, so that a follow-up incident comes after the one it follows.

use std::process::ExitCode;

use serde_json::Value;
use time::OffsetDateTime;

use super::console::{Table, heading, paint, status_style};
use super::read::one_line;
use super::{CliError, Context, RunNotFound};
use crate::model::RunStatus;
use crate::web::views::{self, text};

/// Where handling an incident got to (the `state` of its record).
pub const INCIDENT_STATES: [&str; 7] = ["claimed", "applying", "planned", "applied", "escalated", "failed", "settled"];

pub use crate::limits::parse_since;

/// `salvage incidents [--status S] [--since D|T] [--json]`.
pub async fn list(
    cx: &mut Context<'_>,
    state: Option<&str>,
    since: Option<OffsetDateTime>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let store = cx.read_store().await?;
    let shown = views::incidents(store.as_ref(), state, since).await?;
    if json {
        cx.console.json(&shown)?;
        return Ok(ExitCode::SUCCESS);
    }
    if shown.is_empty() {
        let filtered = if state.is_some() || since.is_some() { " matching the filters" } else { "" };
        cx.console
            .note(format!("no incidents{filtered} in {} (incidents are recorded by `salvage serve`)", store.spec()));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table =
        Table::new(["FOUND", "RUN", "STATE", "MODE", "KIND", "PLAYBOOK", "OUTCOME", "EXECUTIONS", "LINKED"]);
    for incident in &shown {
        let executions: Vec<&str> =
            incident["executions"].as_array().into_iter().flatten().filter_map(|e| e["executionId"].as_str()).collect();
        let linked = match (&incident["linkedTo"], incident["followUps"].as_array().map_or(0, Vec::len)) {
            (Value::Object(link), _) => format!("← {}", link.get("executionId").map(one_line).unwrap_or_default()),
            (_, 0) => "-".to_owned(),
            (_, count) => format!("{count} follow-up(s)"),
        };
        let state = text(incident, "state");
        table.styled_row(vec![
            (one_line(&incident["claimedAt"]), Default::default()),
            (one_line(&incident["runId"]), Default::default()),
            (state.to_owned(), state_style(state)),
            (one_line(&incident["mode"]), Default::default()),
            (one_line(&incident["incidentType"]), Default::default()),
            (one_line(&incident["playbook"]), Default::default()),
            (outcome_text(incident), Default::default()),
            (if executions.is_empty() { "-".to_owned() } else { executions.join(", ") }, Default::default()),
            (linked, Default::default()),
        ]);
    }
    for line in table.render() {
        cx.console.line(line)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What came of it: the outcome, else the error, else that it is still going on.
fn outcome_text(incident: &Value) -> String {
    match (&incident["outcome"], &incident["error"]) {
        (Value::Null, Value::Null) => "in progress".to_owned(),
        (Value::Null, error) => one_line(error),
        // An advisory incident's outcome is where its dry run ended: nothing happened.
        (outcome, _) if incident["mode"] == "advisory" && incident["playbook"].is_string() => {
            format!("dry run: {}", one_line(outcome))
        }
        (outcome, _) => one_line(outcome),
    }
}

fn state_style(state: &str) -> anstyle::Style {
    status_style(&match state {
        "applied" | "settled" => RunStatus::Completed,
        "planned" => RunStatus::Paused,
        "claimed" | "applying" => RunStatus::Running,
        "escalated" | "failed" => RunStatus::Failed,
        _ => RunStatus::Other(state.to_owned()),
    })
}

/// The incident no record names: an unknown run (exit 2, like every command given one), or a
/// run the daemon has not handled.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("run \"{run_id}\" has no incident record")]
#[diagnostic(
    code(salvage::incident_not_found),
    help(
        "incidents are recorded by `salvage serve` when it finds a failed, paused or waiting run; `salvage incidents` \
         lists them"
    )
)]
pub struct NoIncident {
    pub run_id: String,
}

/// `salvage incident RUN [--json]`.
pub async fn show(cx: &mut Context<'_>, run_id: &str, json: bool) -> Result<ExitCode, CliError> {
    let store = cx.read_store().await?;
    let Some(incident) = views::incident(store.as_ref(), run_id).await? else {
        if store.get(run_id).await?.is_none() {
            return Err(CliError::input(RunNotFound { run_id: run_id.to_owned(), store: cx.spec.to_string() }));
        }
        return Err(CliError::input(NoIncident { run_id: run_id.to_owned() }));
    };
    if json {
        cx.console.json(&incident)?;
    } else {
        print_incident(cx, &incident)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_incident(cx: &mut Context<'_>, incident: &Value) -> Result<(), CliError> {
    let c = &mut *cx.console;
    let state = text(incident, "state");
    c.line(format!(
        "{} {} ({})",
        heading(format!("incident: run {}", one_line(&incident["runId"]))),
        paint(state_style(state), state),
        one_line(&incident["mode"])
    ))?;
    c.line(format!(
        "  run:       {} at revision {}",
        one_line(&incident["runStatus"]),
        one_line(&incident["revision"])
    ))?;
    c.line(format!("  kind:      {}", one_line(&incident["incidentType"])))?;
    c.line(format!("  playbook:  {}", one_line(&incident["playbook"])))?;
    c.line(format!(
        "  found:     {} (pid {} on {})",
        one_line(&incident["claimedAt"]),
        one_line(&incident["claimedBy"]),
        one_line(&incident["claimedOn"])
    ))?;
    c.line(format!("  handled:   {}", one_line(&incident["handledAt"])))?;
    c.line(format!("  outcome:   {}", outcome_text(incident)))?;
    if let Some(error) = incident["error"].as_str() {
        c.line(format!("  error:     {error}"))?;
    }
    if let Value::Object(link) = &incident["linkedTo"] {
        c.line(format!(
            "  linked to: {} {} (of run {})",
            link.get("relation").map(one_line).unwrap_or_default(),
            link.get("executionId").map(one_line).unwrap_or_default(),
            link.get("incidentRunId").map(one_line).unwrap_or_default()
        ))?;
    }
    let digest = |key: &str| {
        let digest = text(incident, key);
        digest[..12.min(digest.len())].to_owned()
    };
    c.line(format!(
        "  set:       policies {}  playbooks {}",
        or_dash(&digest("policyDigest")),
        or_dash(&digest("playbookSetDigest"))
    ))?;
    print_plan(c, &incident["plan"], &incident["planId"])?;
    print_dry_run(c, &incident["dryRun"])?;
    let executions = incident["executions"].as_array().map(Vec::as_slice).unwrap_or_default();
    if executions.is_empty() {
        c.line(heading("executions: none"))?;
    } else {
        c.line(heading(format!("executions ({})", executions.len())))?;
        for execution in executions {
            let created: Vec<String> = execution["createdRuns"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(step, run)| format!("{step} → {}", one_line(run)))
                .collect();
            c.line(format!(
                "  {} {} (outcome {}, started by {} at {}){}",
                one_line(&execution["executionId"]),
                one_line(&execution["status"]),
                one_line(&execution["outcome"]),
                one_line(&execution["startedBy"]),
                one_line(&execution["createdAt"]),
                if created.is_empty() { String::new() } else { format!("; created {}", created.join(", ")) }
            ))?;
        }
    }
    let follow_ups = incident["followUps"].as_array().map(Vec::as_slice).unwrap_or_default();
    if follow_ups.is_empty() {
        c.line(heading("follow-up incidents: none"))?;
    } else {
        c.line(heading(format!("follow-up incidents ({})", follow_ups.len())))?;
        for follow_up in follow_ups {
            c.line(format!(
                "  {} {} ({} {}): {}",
                one_line(&follow_up["runId"]),
                one_line(&follow_up["state"]),
                one_line(&follow_up["relation"]),
                one_line(&follow_up["executionId"]),
                one_line(&follow_up["outcome"])
            ))?;
        }
    }
    Ok(())
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

/// The recorded plan: each step with its action, effect, approval and explanations.
fn print_plan(c: &mut super::Console, plan: &Value, plan_id: &Value) -> std::io::Result<()> {
    let Value::Object(_) = plan else {
        return match plan_id {
            Value::String(id) => c.line(heading(format!("plan {id} (not recorded: advisory plans only)"))),
            _ => c.line(heading("plan: none recorded")),
        };
    };
    c.line(heading(format!("plan {}", one_line(&plan["planId"]))))?;
    let steps = plan["steps"].as_array().map(Vec::as_slice).unwrap_or_default();
    if steps.is_empty() {
        c.line("  no recovery steps")?;
    }
    for (index, step) in steps.iter().enumerate() {
        let approval = if step["asksApproval"] == true {
            let names: Vec<&str> =
                step["approvers"]["names"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if names.is_empty() {
                "  needs approval".to_owned()
            } else {
                format!("  needs approval by {}", names.join(", "))
            }
        } else {
            String::new()
        };
        c.line(format!(
            "  {:>2}. {} [{}] {}{approval}",
            index + 1,
            heading(one_line(&step["action"])),
            one_line(&step["id"]),
            one_line(&step["effect"])
        ))?;
        if let Some(reason) = step["reason"].as_str() {
            c.line(format!("      {reason}"))?;
        }
        for decision in step["explanation"].as_array().into_iter().flatten() {
            let hook = text(decision, "hook");
            if hook == "guard" {
                continue;
            }
            let Some(reason) = decision["reason"].as_str() else { continue };
            let file = decision["policyFile"].as_str().map(|f| format!(" [{f}]")).unwrap_or_default();
            c.line(format!("      {hook}: {reason}{file}"))?;
        }
    }
    let path: Vec<String> = plan["path"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| match text(entry, "kind") {
            "end" => one_line(&entry["node"]),
            _ => format!("{} ({})", one_line(&entry["node"]), one_line(&entry["transition"])),
        })
        .collect();
    if !path.is_empty() {
        c.line(format!("  path: {}", path.join(" → ")))?;
    }
    Ok(())
}

/// The advisory dry run: each step's outcome and the runs it would have written.
fn print_dry_run(c: &mut super::Console, dry_run: &Value) -> std::io::Result<()> {
    let Value::Object(_) = dry_run else { return c.line(heading("dry run: none recorded")) };
    c.line(heading(format!(
        "dry run {}: {} (outcome {}, nothing was written)",
        one_line(&dry_run["executionId"]),
        one_line(&dry_run["status"]),
        one_line(&dry_run["outcome"])
    )))?;
    for step in dry_run["steps"].as_array().into_iter().flatten() {
        let outcome = text(step, "outcome");
        let mark = match outcome {
            "skipped" => "·",
            "waiting_for_approval" => "⏸",
            "failed" | "needs_operator" | "escalated" | "exhausted" => "✗",
            _ => "✓",
        };
        let created = step["createdRunId"].as_str().map(|id| format!(" → would create run {id}")).unwrap_or_default();
        let summary = step["detail"]["summary"].as_str().map(|s| format!(" — {s}")).unwrap_or_default();
        c.line(format!("  {mark} {} [{}] {outcome}{created}{summary}", text(step, "stepId"), text(step, "action")))?;
    }
    let runs: Vec<&str> =
        dry_run["runsItWouldWrite"].as_array().into_iter().flatten().filter_map(|run| run["id"].as_str()).collect();
    if !runs.is_empty() {
        c.line(format!("  runs it would create or change: {}", runs.join(", ")))?;
    }
    Ok(())
}
