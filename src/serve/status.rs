//! What `salvage status` shows, shared through the store: the daemon writes its status
//! document (`serve/status`) on every change and at least every heartbeat; `status` (another
//! process) reads it and adds what it can see itself — the executions waiting for a person or
//! in flight, and whether the sets on disk differ from the active ones.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::reload::{ReloadCounts, ReloadReport, SetDigests, SetDirs};
use crate::execute::{ExecutionStatus, Mode, execution_of};
use crate::store::{Store, StoreError};

pub(crate) use crate::execute::hostname;

pub const STATUS_KEY: &str = "serve/status";

/// The daemon's own account of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonStatus {
    pub pid: u32,
    pub host: String,
    pub started_at: String,
    /// Refreshed at least every heartbeat while the daemon runs.
    pub heartbeat_at: String,
    /// Set when the daemon stopped cleanly.
    pub stopped_at: Option<String>,
    pub mode: Mode,
    pub store: String,
    pub playbooks_dir: String,
    pub policies_dir: String,
    pub workers: usize,
    pub reload_gate: String,
    pub active: SetDigests,
    pub active_since: String,
    pub last_reload: Option<ReloadReport>,
    pub reloads: ReloadCounts,
    /// `handled`, `planned`, `executed`, `failed`, `inFlight`, `resumed`, `queued`.
    pub incidents: Value,
    pub heartbeat_seconds: u64,
    /// On a shared store: this process as one replica among several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<super::replicas::ReplicaState>,
    /// A set the reload gate refused, waiting for `salvage reload --accept`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting_acceptance: Option<super::reload::AwaitingAcceptance>,
}

impl DaemonStatus {
    pub fn dirs(&self) -> SetDirs {
        SetDirs { playbooks: self.playbooks_dir.clone().into(), policies: self.policies_dir.clone().into() }
    }

    /// Whether the daemon is running: its process exists (same host), else its heartbeat is
    /// recent.
    pub fn alive(&self) -> bool {
        if self.stopped_at.is_some() {
            return false;
        }
        let proc = std::path::Path::new("/proc");
        if self.host == hostname() && proc.join("self").exists() {
            return proc.join(self.pid.to_string()).exists();
        }
        crate::model::json::parse_iso(&self.heartbeat_at).is_some_and(|at| {
            let age = time::OffsetDateTime::now_utc() - at;
            age.whole_seconds() <= i64::try_from(self.heartbeat_seconds.saturating_mul(3)).unwrap_or(i64::MAX)
        })
    }
}

/// Reads the daemon's status document, when a daemon ever ran on this store.
pub async fn read(store: &dyn Store) -> Result<Option<DaemonStatus>, StoreError> {
    let Some(stored) = store.get_state(STATUS_KEY).await? else { return Ok(None) };
    serde_json::from_value(stored.body)
        .map(Some)
        .map_err(|error| StoreError::corrupt(format!("{} state {STATUS_KEY}", store.spec()), &error))
}

/// An execution as `status` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionLine {
    pub execution_id: String,
    pub run_id: String,
    pub status: ExecutionStatus,
    pub step: Option<String>,
    pub approvers: Vec<String>,
    pub updated_at: String,
}

/// Executions waiting for a person and executions in flight (running, parked on a timer,
/// handed off and followed up, or needing an operator).
pub async fn executions(store: &dyn Store) -> Result<(Vec<ExecutionLine>, Vec<ExecutionLine>), StoreError> {
    let mut waiting = Vec::new();
    let mut in_flight = Vec::new();
    for status in [
        ExecutionStatus::WaitingForApproval,
        ExecutionStatus::Running,
        ExecutionStatus::Waiting,
        ExecutionStatus::HandedOff,
        ExecutionStatus::NeedsOperator,
    ] {
        for stored in store.list_executions(Some(status.as_str())).await? {
            let Ok(execution) = execution_of(&stored.doc) else {
                tracing::warn!(execution = %stored.doc.id, "An execution record cannot be read.");
                continue;
            };
            let line = ExecutionLine {
                execution_id: execution.execution_id.clone(),
                run_id: execution.run_id.clone(),
                status: execution.status,
                step: execution.pending_approval.as_ref().map(|p| p.step_id.clone()).or(execution.node.clone()),
                approvers: execution.pending_approval.as_ref().map(|p| p.approvers.clone()).unwrap_or_default(),
                updated_at: execution.updated_at.clone(),
            };
            if status == ExecutionStatus::WaitingForApproval { waiting.push(line) } else { in_flight.push(line) }
        }
    }
    Ok((waiting, in_flight))
}

/// An incident in a recovery's family: a run the recovery created, or the recovered run
/// failing again.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkedIncident {
    pub run_id: String,
    pub state: String,
    pub outcome: Option<String>,
    /// `created by the recovery` or `failed again after its recovery`.
    pub relation: String,
    pub execution_id: String,
    pub incident_run_id: String,
    pub claimed_at: String,
}

/// The most recent linked incidents the daemon recorded (newest first, at most `limit`).
pub async fn linked_incidents(store: &dyn Store, limit: usize) -> Result<Vec<LinkedIncident>, StoreError> {
    let mut linked: Vec<LinkedIncident> = store
        .list_state(super::incidents::INCIDENT_PREFIX)
        .await?
        .into_iter()
        .filter_map(|record| {
            let body = record.body;
            let link = body.get("linkedTo")?;
            Some(LinkedIncident {
                run_id: body["runId"].as_str()?.to_owned(),
                state: body["state"].as_str().unwrap_or_default().to_owned(),
                outcome: body["outcome"].as_str().map(str::to_owned),
                relation: link["relation"].as_str().unwrap_or_default().to_owned(),
                execution_id: link["executionId"].as_str().unwrap_or_default().to_owned(),
                incident_run_id: link["incidentRunId"].as_str().unwrap_or_default().to_owned(),
                claimed_at: body["claimedAt"].as_str().unwrap_or_default().to_owned(),
            })
        })
        .collect();
    linked.sort_by(|a, b| b.claimed_at.cmp(&a.claimed_at));
    linked.truncate(limit);
    Ok(linked)
}
