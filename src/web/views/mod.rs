//! The JSON objects salvage shows, in one place: the CLI's `--json` output and the HTTP API's
//! bodies are built by these functions, so that they are the same objects by construction.

mod audit;
mod incidents;

pub use audit::audit;
pub(crate) use incidents::text;
pub use incidents::{incident, incidents};

use serde_json::{Value, json};

use crate::execute::record::PendingApproval;
use crate::execute::{Execution, ExecutionStatus, execution_of};
use crate::plan::RecoverySetError;
use crate::serve::status::{self, DaemonStatus, ExecutionLine, LinkedIncident};
use crate::serve::{ReloadDiagnostic, SetDigests, SetDirs};
use crate::store::{Store, StoreError, StoredExecution};

/// One execution as `salvage executions --json` lists it.
pub fn execution_summary(execution: &Execution) -> Value {
    json!({
        "executionId": execution.execution_id,
        "status": execution.status,
        "runId": execution.run_id,
        "planId": execution.plan_id,
        "playbook": execution.playbook.as_ref().map(|p| &p.name),
        "node": execution.node,
        "startedBy": execution.started_by,
        "createdAt": execution.created_at,
        "updatedAt": execution.updated_at,
        "outcome": execution.outcome,
        "createdRuns": execution.created_runs,
        "pendingApproval": execution.pending_approval,
        "operatorQuestion": execution.operator_question,
        "wakeAt": execution.wake_at,
        "followUp": execution.follow_up,
        "runtimesDigest": execution.runtimes.as_ref().map(|pinned| &pinned.digest),
    })
}

/// One pending approval as `salvage approvals --json` lists it.
pub fn approval_row(execution: &Execution, pending: &PendingApproval) -> Value {
    let mut row = json!({
        "executionId": execution.execution_id,
        "runId": execution.run_id,
        "stepId": pending.step_id,
        "action": pending.action,
        "approvers": pending.approvers,
        "reason": pending.reason,
        "requestedAt": pending.requested_at,
        "expiresAt": pending.expires_at,
        "startedBy": execution.started_by,
        "planHash": pending.plan_hash,
        "policyDigest": execution.policy_digest,
        "explanation": pending.explanation,
    });
    // Only a quorum of two or more adds fields: the rows of single approvals stay as they were.
    if pending.quorum > 1
        && let Some(fields) = row.as_object_mut()
    {
        fields.insert("quorum".into(), json!(pending.quorum));
        fields.insert("approvedBy".into(), json!(pending.approved_by));
        fields.insert("stillNeeded".into(), json!(pending.still_needed()));
        fields.insert("waitingFor".into(), json!(still_eligible(execution, pending)));
    }
    row
}

/// The approvers who may still complete a quorum: listed, not yet approved, not the requester.
pub fn still_eligible(execution: &Execution, pending: &PendingApproval) -> Vec<String> {
    pending
        .approvers
        .iter()
        .filter(|name| !pending.approved_by.contains(name) && **name != execution.started_by)
        .cloned()
        .collect()
}

/// A stored execution, or `None` (logged) when its record cannot be read: one bad record never
/// hides the others.
pub(crate) fn readable(stored: &StoredExecution) -> Option<Execution> {
    match execution_of(&stored.doc) {
        Ok(execution) => Some(execution),
        Err(error) => {
            tracing::warn!(execution = %stored.doc.id, %error, "An execution record cannot be read; left out.");
            None
        }
    }
}

/// The executions waiting for an approval, with their approval, oldest request first.
pub async fn pending_approvals(store: &dyn Store) -> Result<Vec<(Execution, PendingApproval)>, StoreError> {
    let stored = store.list_executions(Some(ExecutionStatus::WaitingForApproval.as_str())).await?;
    let mut pending: Vec<(Execution, PendingApproval)> = stored
        .iter()
        .filter_map(readable)
        .filter_map(|execution| execution.pending_approval.clone().map(|pending| (execution, pending)))
        .collect();
    pending.sort_by(|left, right| left.1.requested_at.cmp(&right.1.requested_at));
    Ok(pending)
}

/// What `salvage status` shows of a (non-replicated) store's daemon.
pub struct DaemonView {
    pub daemon: Option<DaemonStatus>,
    pub waiting: Vec<ExecutionLine>,
    pub in_flight: Vec<ExecutionLine>,
    pub linked: Vec<LinkedIncident>,
    /// The set on disk, read from the daemon's directories (else `fallback`'s).
    pub on_disk: Result<crate::plan::RecoverySet, RecoverySetError>,
    pub differs: Option<bool>,
    pub alive: bool,
}

impl DaemonView {
    pub async fn read(store: &dyn Store, fallback: SetDirs) -> Result<DaemonView, StoreError> {
        let daemon = status::read(store).await?;
        let (waiting, in_flight) = status::executions(store).await?;
        let linked = status::linked_incidents(store, 20).await?;
        let dirs = daemon.as_ref().map(DaemonStatus::dirs).unwrap_or(fallback);
        let on_disk = dirs.load().await;
        let on_disk_digests = on_disk.as_ref().ok().map(SetDigests::of);
        let alive = daemon.as_ref().is_some_and(DaemonStatus::alive);
        let differs = match (&daemon, &on_disk_digests) {
            (Some(daemon), Some(disk)) => Some(daemon.active != *disk),
            (Some(_), None) => Some(true),
            _ => None,
        };
        Ok(DaemonView { daemon, waiting, in_flight, linked, on_disk, differs, alive })
    }

    /// `salvage status --json`.
    pub fn to_json(&self) -> Value {
        let disk = match &self.on_disk {
            Ok(set) => json!({"loads": true, "digests": SetDigests::of(set)}),
            Err(error) => json!({
                "loads": false,
                "error": error.to_string(),
                "diagnostics": error.diagnostics().iter().map(ReloadDiagnostic::of).collect::<Vec<_>>(),
            }),
        };
        json!({
            "running": self.alive,
            "daemon": self.daemon,
            "onDisk": disk,
            "diskDiffersFromActive": self.differs,
            "pendingApprovals": self.waiting,
            "executionsInFlight": self.in_flight,
            "linkedIncidents": self.linked,
        })
    }
}
