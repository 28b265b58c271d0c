//! The audit log as JSON (`salvage audit --json`, `GET /api/v1/audit`): every decision and
//! answer — who, what, when, the plan hash, and where it came from (a person's command, the API,
//! the inbox or the daemon). Read from the executions' journals (starts, approval requests,
//! answers and refused answers, operator confirmations, abandonments, ends), the daemon's
//! incident records and the reload acceptances. Read-only.
//!
//! Entries list oldest first; entries at the same instant keep the order they were written in.

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::execute::identity::TOKENS_PREFIX;
use crate::execute::{Execution, JournalEntry, journal_entries};
use crate::model::json::parse_iso;
use crate::serve::incidents::INCIDENT_PREFIX;
use crate::serve::reload::ACCEPTANCES_PREFIX;
use crate::store::{Store, StoreError};

/// Every audit entry at or after `since`, oldest first.
pub async fn audit(store: &dyn Store, since: Option<OffsetDateTime>) -> Result<Vec<Value>, StoreError> {
    Ok(read(store)
        .await?
        .into_iter()
        .filter(|entry| {
            since.is_none_or(|since| entry["at"].as_str().and_then(parse_iso).is_some_and(|at| at >= since))
        })
        .collect())
}

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
            JournalEntry::ApprovalRequested { at, step_id, approvers, reason, expires_at, quorum } => Some(entry(
                &at,
                "approval_requested",
                common(json!({
                    "stepId": step_id, "approvers": approvers, "reason": reason, "expiresAt": expires_at,
                    // Only a quorum of two or more is shown, like the approvals' rows.
                    "quorum": (quorum > 1).then_some(quorum),
                })),
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
async fn read(store: &dyn Store) -> Result<Vec<Value>, StoreError> {
    let mut entries = Vec::new();
    for stored in store.list_executions(None).await? {
        let Some(execution) = super::readable(&stored) else { continue };
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
