//! `salvage incidents` and `salvage incident RUN`: what the daemon (or a person) decided for
//! each incident, read from the records `salvage serve` keeps (`serve/incident/<run>`), the
//! advisory plan and dry run (`serve/dry-run/<run>`), the executions of the run and the
//! incidents linked to them. Read-only: the store is opened like every read command's.
//!
//! Incidents list oldest first (by the time the daemon found them, then run id), like `runs`
//! and `executions`, so that a follow-up incident comes after the one it follows.

use std::collections::HashMap;
use std::process::ExitCode;

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::console::{Table, heading, paint, status_style};
use super::read::one_line;
use super::{CliError, Context, RunNotFound};
use crate::execute::{Execution, execution_of};
use crate::model::RunStatus;
use crate::model::json::parse_iso;
use crate::serve::incidents::{INCIDENT_PREFIX, dry_run_key, incident_key};
use crate::store::{Store, StoredExecution};

/// Where handling an incident got to (the `state` of its record).
pub const INCIDENT_STATES: [&str; 7] = ["claimed", "applying", "planned", "applied", "escalated", "failed", "settled"];

/// `--since`: a duration before now (`30m`, `24h`, `7d`) or an RFC 3339 timestamp.
pub fn parse_since(text: &str) -> Result<OffsetDateTime, String> {
    let text = text.trim();
    if let Some(at) = parse_iso(text) {
        return Ok(at);
    }
    let duration = super::simulate::parse_duration(text).map_err(|_| {
        format!(
            "{text:?} is neither a duration (a number and s, m, h, d or w, e.g. 24h) nor an RFC 3339 timestamp \
             (e.g. 2026-01-31T08:00:00Z)"
        )
    })?;
    let duration = crate::limits::check_duration(duration).map_err(|error| error.to_string())?;
    let duration = time::Duration::try_from(duration).map_err(|error| error.to_string())?;
    Ok(OffsetDateTime::now_utc() - duration)
}

/// The incidents' records with what belongs to them, read once.
struct Incidents {
    /// Incident records, oldest first.
    records: Vec<Value>,
    /// Executions by the run they recover, oldest first.
    executions: HashMap<String, Vec<Execution>>,
    /// Positions in `records` of the records linked to a run or an execution (by its id).
    linked_by: HashMap<String, Vec<usize>>,
}

impl Incidents {
    /// Every record, with the executions of `run_id` only (indexed by run) or of every run.
    async fn read(store: &dyn Store, run_id: Option<&str>) -> Result<Incidents, CliError> {
        let mut records: Vec<Value> = store
            .list_state(INCIDENT_PREFIX)
            .await?
            .into_iter()
            .map(|stored| stored.body)
            .filter(|body| body["runId"].is_string())
            .collect();
        records.sort_by(|left, right| {
            let key = |body: &Value| (text(body, "claimedAt").to_owned(), text(body, "runId").to_owned());
            key(left).cmp(&key(right))
        });
        let mut executions: HashMap<String, Vec<Execution>> = HashMap::new();
        let stored_executions = match run_id {
            Some(run_id) => store.executions_of_run(run_id).await?,
            None => store.list_executions(None).await?,
        };
        for stored in stored_executions {
            if let Some(execution) = readable(&stored) {
                executions.entry(execution.run_id.clone()).or_default().push(execution);
            }
        }
        // Linked records by the incident run and the execution they name: one pass, so that
        // listing N incidents is not N × N.
        let mut linked_by: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, record) in records.iter().enumerate() {
            for key in ["incidentRunId", "executionId"] {
                if let Some(key) = record["linkedTo"][key].as_str() {
                    linked_by.entry(key.to_owned()).or_default().push(index);
                }
            }
        }
        Ok(Incidents { records, executions, linked_by })
    }

    /// The record of `run_id`'s incident with its executions and follow-ups, as JSON.
    fn summary(&self, record: &Value) -> Value {
        let run_id = text(record, "runId");
        let executions = self.executions.get(run_id).map(Vec::as_slice).unwrap_or_default();
        let mut summary = record_fields(record);
        summary["executions"] = Value::Array(executions.iter().map(execution_summary).collect());
        summary["followUps"] = Value::Array(self.follow_ups(run_id, executions));
        summary
    }

    /// Incidents linked to this one: runs its recoveries created that failed, and other
    /// incidents naming one of its executions (oldest first).
    fn follow_ups(&self, run_id: &str, executions: &[Execution]) -> Vec<Value> {
        let keys = std::iter::once(run_id).chain(executions.iter().map(|e| e.execution_id.as_str()));
        let mut linked: Vec<usize> =
            keys.flat_map(|key| self.linked_by.get(key).into_iter().flatten().copied()).collect();
        linked.sort_unstable();
        linked.dedup();
        linked
            .into_iter()
            .map(|index| &self.records[index])
            .filter(|other| text(other, "runId") != run_id)
            .map(|other| {
                let link = &other["linkedTo"];
                json!({
                    "runId": other["runId"],
                    "state": other["state"],
                    "outcome": other["outcome"],
                    "relation": link["relation"],
                    "executionId": link["executionId"],
                    "claimedAt": other["claimedAt"],
                })
            })
            .collect()
    }
}

fn readable(stored: &StoredExecution) -> Option<Execution> {
    match execution_of(&stored.doc) {
        Ok(execution) => Some(execution),
        Err(error) => {
            tracing::warn!(execution = %stored.doc.id, %error, "An execution record cannot be read; left out.");
            None
        }
    }
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The incident record's fields, named as the daemon writes them (absent ones `null`).
fn record_fields(record: &Value) -> Value {
    let field = |key: &str| record.get(key).cloned().unwrap_or(Value::Null);
    json!({
        "runId": field("runId"),
        "state": field("state"),
        "mode": field("mode"),
        "runStatus": field("runStatus"),
        "revision": field("revision"),
        "incidentType": field("incidentType"),
        "playbook": field("playbook"),
        "planId": field("planId"),
        "planRevision": field("planRevision"),
        "outcome": field("outcome"),
        "error": field("error"),
        "executionId": field("executionId"),
        "linkedTo": field("linkedTo"),
        "claimedAt": field("claimedAt"),
        "claimedBy": field("claimedBy"),
        "claimedOn": field("claimedOn"),
        "handledAt": field("handledAt"),
        "policyDigest": field("policyDigest"),
        "playbookSetDigest": field("playbookSetDigest"),
    })
}

fn execution_summary(execution: &Execution) -> Value {
    json!({
        "executionId": execution.execution_id,
        "status": execution.status,
        "outcome": execution.outcome,
        "mode": execution.mode,
        "planId": execution.plan_id,
        "startedBy": execution.started_by,
        "createdAt": execution.created_at,
        "updatedAt": execution.updated_at,
        "createdRuns": execution.created_runs,
    })
}

/// `salvage incidents [--status S] [--since D|T] [--json]`.
pub async fn list(
    cx: &mut Context<'_>,
    state: Option<&str>,
    since: Option<OffsetDateTime>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let store = cx.read_store().await?;
    let incidents = Incidents::read(store.as_ref(), None).await?;
    let shown: Vec<Value> = incidents
        .records
        .iter()
        .filter(|record| state.is_none_or(|state| text(record, "state") == state))
        .filter(|record| since.is_none_or(|since| parse_iso(text(record, "claimedAt")).is_some_and(|at| at >= since)))
        .map(|record| incidents.summary(record))
        .collect();
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
    let Some(record) = store.get_state(&incident_key(run_id)).await? else {
        if store.get(run_id).await?.is_none() {
            return Err(CliError::input(RunNotFound { run_id: run_id.to_owned(), store: cx.spec.to_string() }));
        }
        return Err(CliError::input(NoIncident { run_id: run_id.to_owned() }));
    };
    let incidents = Incidents::read(store.as_ref(), Some(run_id)).await?;
    let mut incident = incidents.summary(&record.body);
    let advisory = store.get_state(&dry_run_key(run_id)).await?.map(|stored| stored.body);
    incident["plan"] = advisory.as_ref().and_then(|a| a.get("plan")).cloned().unwrap_or(Value::Null);
    incident["dryRun"] = match advisory.as_ref().and_then(|a| a.get("dryRun")) {
        Some(Value::Object(dry_run)) => {
            let mut dry_run = dry_run.clone();
            dry_run.insert("recordedAt".into(), advisory.as_ref().map_or(Value::Null, |a| a["recordedAt"].clone()));
            Value::Object(dry_run)
        }
        _ => Value::Null,
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
