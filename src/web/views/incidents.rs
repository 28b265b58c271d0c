//! The daemon's incidents as JSON (`salvage incidents --json`, `salvage incident RUN --json`,
//! `GET /api/v1/incidents`): the records `salvage serve` keeps (`serve/incident/<run>`), the
//! advisory plan and dry run (`serve/dry-run/<run>`), the executions of the run and the
//! incidents linked to them.
//!
//! Incidents list oldest first (by the time the daemon found them, then run id), like `runs`
//! and `executions`, so that a follow-up incident comes after the one it follows.

use std::collections::HashMap;

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::readable;
use crate::execute::Execution;
use crate::model::json::parse_iso;
use crate::serve::incidents::{INCIDENT_PREFIX, dry_run_key, incident_key};
use crate::store::{Store, StoreError};

/// Every incident (with a `state` and a `since` filter), oldest first.
pub async fn incidents(
    store: &dyn Store,
    state: Option<&str>,
    since: Option<OffsetDateTime>,
) -> Result<Vec<Value>, StoreError> {
    let incidents = Incidents::read(store, None).await?;
    Ok(incidents
        .records
        .iter()
        .filter(|record| state.is_none_or(|state| text(record, "state") == state))
        .filter(|record| since.is_none_or(|since| parse_iso(text(record, "claimedAt")).is_some_and(|at| at >= since)))
        .map(|record| incidents.summary(record))
        .collect())
}

/// One run's incident with the advisory plan and dry run; `None` when the daemon recorded none.
pub async fn incident(store: &dyn Store, run_id: &str) -> Result<Option<Value>, StoreError> {
    let Some(record) = store.get_state(&incident_key(run_id)).await? else {
        return Ok(None);
    };
    let incidents = Incidents::read(store, Some(run_id)).await?;
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
    Ok(Some(incident))
}

/// The incidents' records with what belongs to them, read once.
pub(crate) struct Incidents {
    /// Incident records, oldest first.
    records: Vec<Value>,
    /// Executions by the run they recover, oldest first.
    executions: HashMap<String, Vec<Execution>>,
    /// Positions in `records` of the records linked to a run or an execution (by its id).
    linked_by: HashMap<String, Vec<usize>>,
}

impl Incidents {
    /// Every record, with the executions of `run_id` only (indexed by run) or of every run.
    pub(crate) async fn read(store: &dyn Store, run_id: Option<&str>) -> Result<Incidents, StoreError> {
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
    pub(crate) fn summary(&self, record: &Value) -> Value {
        let run_id = text(record, "runId");
        let executions = self.executions.get(run_id).map(Vec::as_slice).unwrap_or_default();
        let mut summary = record_fields(record);
        summary["executions"] = Value::Array(executions.iter().map(incident_execution).collect());
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

pub(crate) fn text<'a>(value: &'a Value, key: &str) -> &'a str {
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

fn incident_execution(execution: &Execution) -> Value {
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
