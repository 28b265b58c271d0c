//! `salvage audit`: every decision and answer for a compliance log — who, what, when, the plan
//! hash, and where it came from (a person's command or the daemon). Read from the executions'
//! journals (starts, approval requests, answers and refused answers, operator confirmations,
//! abandonments, ends), the daemon's incident records, the reload acceptances and the API
//! tokens created and revoked (never a token's secret or hash). Read-only.
//!
//! Entries list oldest first; entries at the same instant keep the order they were written in.

use std::process::ExitCode;

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::console::Table;
use super::{CliError, Context};
use crate::execute::identity::TOKENS_PREFIX;
use crate::execute::{Execution, JournalEntry, execution_of, journal_entries, short_digest};
use crate::model::json::parse_iso;
use crate::serve::incidents::INCIDENT_PREFIX;
use crate::serve::reload::ACCEPTANCES_PREFIX;
use crate::store::Store;

/// One line of the audit log (camelCase JSON; absent fields are left out).
fn entry(at: &str, event: &str, fields: Value) -> Value {
    let mut entry = json!({"at": at, "event": event});
    if let (Some(entry), Value::Object(fields)) = (entry.as_object_mut(), fields) {
        entry.extend(fields.into_iter().filter(|(_, value)| !value.is_null()));
    }
    entry
}

/// The audit entries of one execution's journal.
fn execution_entries(execution: &Execution, entries: Vec<JournalEntry>) -> Vec<Value> {
    let common = |mut fields: Value| {
        fields["executionId"] = json!(execution.execution_id);
        fields["runId"] = json!(execution.run_id);
        fields["planHash"] = json!(execution.plan_hash);
        fields
    };
    entries
        .into_iter()
        .filter_map(|journal_entry| match journal_entry {
            JournalEntry::Started { at, actor, plan_id, policy_digest, playbook_set_digest, mode, origin, .. } => {
                Some(entry(
                    &at,
                    "execution_started",
                    common(json!({
                        "actor": actor, "origin": origin, "mode": mode, "planId": plan_id,
                        "policyDigest": policy_digest, "playbookSetDigest": playbook_set_digest,
                    })),
                ))
            }
            JournalEntry::ApprovalRequested { at, step_id, approvers, reason, expires_at, .. } => Some(entry(
                &at,
                "approval_requested",
                common(json!({"stepId": step_id, "approvers": approvers, "reason": reason, "expiresAt": expires_at})),
            )),
            JournalEntry::ApprovalAnswered { at, step_id, decision, actor, reason, origin } => Some(entry(
                &at,
                "approval_answered",
                common(json!({
                    "stepId": step_id, "decision": decision, "actor": actor, "reason": reason, "origin": origin,
                })),
            )),
            JournalEntry::AnswerRefused { at, step_id, decision, actor, refusal, origin } => Some(entry(
                &at,
                "answer_refused",
                common(json!({
                    "stepId": step_id, "decision": decision, "actor": actor, "reason": refusal, "origin": origin,
                })),
            )),
            JournalEntry::OperatorConfirmed {
                at,
                step_id,
                attempt,
                actor,
                outcome,
                reason,
                created_run_id,
                origin,
            } => Some(entry(
                &at,
                "operator_confirmed",
                common(json!({
                    "stepId": step_id, "attempt": attempt, "actor": actor,
                    "decision": outcome.unwrap_or_else(|| "retry".to_owned()), "reason": reason,
                    "createdRunId": created_run_id, "origin": origin,
                })),
            )),
            JournalEntry::Abandoned { at, actor, reason, origin } => Some(entry(
                &at,
                "execution_abandoned",
                common(json!({"actor": actor, "reason": reason, "origin": origin})),
            )),
            JournalEntry::Finished { at, node, outcome } => {
                Some(entry(&at, "execution_finished", common(json!({"stepId": node, "decision": outcome}))))
            }
            JournalEntry::Verified { at, run_id, status, outcome } => Some(entry(
                &at,
                "execution_verified",
                common(json!({"verifiedRunId": run_id, "runStatus": status, "decision": outcome})),
            )),
            // Steps, timers and notifications are what ran, not decisions: `salvage executions`
            // shows them.
            JournalEntry::NotificationIntent { .. }
            | JournalEntry::Delivery { .. }
            | JournalEntry::Skipped { .. }
            | JournalEntry::Exhausted { .. }
            | JournalEntry::Intent { .. }
            | JournalEntry::Outcome { .. }
            | JournalEntry::Timer { .. }
            | JournalEntry::OperatorNeeded { .. } => None,
        })
        .collect()
}

/// What the daemon decided for one incident (its record), once it decided.
fn incident_entry(record: &Value) -> Option<Value> {
    let at = record["handledAt"].as_str()?;
    let field = |key: &str| record.get(key).cloned().unwrap_or(Value::Null);
    // The daemon process that claimed it.
    let actor = match (&record["claimedBy"], record["claimedOn"].as_str()) {
        (Value::Number(pid), Some(host)) => json!(format!("pid {pid} on {host}")),
        _ => Value::Null,
    };
    Some(entry(
        at,
        "incident_handled",
        json!({
            "actor": actor, "origin": "daemon", "runId": field("runId"), "mode": field("mode"),
            "decision": field("state"), "incidentType": field("incidentType"), "playbook": field("playbook"),
            "planId": field("planId"), "policyDigest": field("policyDigest"),
            "playbookSetDigest": field("playbookSetDigest"), "executionId": field("executionId"),
            "reason": record.get("outcome").filter(|v| !v.is_null()).cloned().unwrap_or_else(|| field("error")),
        }),
    ))
}

/// A person's acceptance of a set the reload gate refused.
fn acceptance_entry(record: &Value) -> Option<Value> {
    let at = record["at"].as_str()?;
    Some(entry(
        at,
        "set_accepted",
        json!({
            "actor": record["by"], "origin": "cli",
            "policyDigest": record["set"]["policyDigest"], "playbookSetDigest": record["set"]["playbookSetDigest"],
        }),
    ))
}

/// A token's creation and, once revoked, its revocation: who, when, the token's id and person.
/// Fields are picked one by one, so the stored hash never reaches the log.
fn token_entries(record: &Value) -> Vec<Value> {
    let token = json!({"origin": "cli", "tokenId": record["id"], "name": record["name"]});
    let mut entries = Vec::new();
    if let Some(at) = record["createdAt"].as_str() {
        let mut fields = token.clone();
        fields["actor"] = record["createdBy"].clone();
        entries.push(entry(at, "token_added", fields));
    }
    if let Some(at) = record["revokedAt"].as_str() {
        let mut fields = token;
        fields["actor"] = record["revokedBy"].clone();
        entries.push(entry(at, "token_revoked", fields));
    }
    entries
}

/// Every audit entry of the store, oldest first.
async fn read(store: &dyn Store) -> Result<Vec<Value>, CliError> {
    let mut entries = Vec::new();
    for stored in store.list_executions(None).await? {
        let execution = match execution_of(&stored.doc) {
            Ok(execution) => execution,
            Err(error) => {
                tracing::warn!(execution = %stored.doc.id, %error, "An execution record cannot be read; left out.");
                continue;
            }
        };
        let journal = store.journal(&execution.execution_id).await?;
        match journal_entries(&execution.execution_id, &journal) {
            Ok(journal) => entries.extend(execution_entries(&execution, journal)),
            Err(error) => {
                tracing::warn!(execution = %execution.execution_id, %error, "A journal cannot be read; left out.");
            }
        }
    }
    for stored in store.list_state(INCIDENT_PREFIX).await? {
        entries.extend(incident_entry(&stored.body));
    }
    for stored in store.list_state(ACCEPTANCES_PREFIX).await? {
        entries.extend(acceptance_entry(&stored.body));
    }
    for stored in store.list_state(TOKENS_PREFIX).await? {
        entries.extend(token_entries(&stored.body));
    }
    // A stable sort: entries of one journal at the same millisecond stay in journal order.
    entries.sort_by_cached_key(|entry| entry["at"].as_str().and_then(parse_iso));
    Ok(entries)
}

/// `salvage audit [--since D|T] [--json]`.
pub async fn list(cx: &mut Context<'_>, since: Option<OffsetDateTime>, json: bool) -> Result<ExitCode, CliError> {
    let store = cx.read_store().await?;
    let entries: Vec<Value> = read(store.as_ref())
        .await?
        .into_iter()
        .filter(|entry| {
            since.is_none_or(|since| entry["at"].as_str().and_then(parse_iso).is_some_and(|at| at >= since))
        })
        .collect();
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
