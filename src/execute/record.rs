//! What an execution persists: its record (a document in the execution store) and its
//! journal (append-only entries, the source of truth for what ran).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::plan::PlaybookRef;
use crate::store::JournalRecord;

/// Where an execution stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// A runner is (or was, until it crashed) executing steps.
    Running,
    /// Paused until a person approves or denies a step.
    WaitingForApproval,
    /// Parked on a timer (`wait`) or on a run it awaits (`await_run`) until `wakeAt`; the
    /// daemon (or `salvage resume`) continues it then, counting from the journalled start.
    Waiting,
    /// Stopped: a step with external effects started and its outcome is unknown; a person
    /// must say what happened (`salvage confirm`).
    NeedsOperator,
    /// Reached a `resolved` end, but the recovered run was not yet seen in a good terminal
    /// state: the runtime accepted the work and its result is pending. The daemon follows the
    /// run up until the execution turns `resolved` (the run completed) or `escalated` (it failed
    /// or waits for someone again, which is then a new incident linked to this one).
    HandedOff,
    /// Reached an end of the playbook (`resolved`: the recovered run was seen completed).
    Resolved,
    Abandoned,
    Escalated,
}

impl ExecutionStatus {
    pub const ALL: [ExecutionStatus; 8] = [
        ExecutionStatus::Running,
        ExecutionStatus::WaitingForApproval,
        ExecutionStatus::Waiting,
        ExecutionStatus::NeedsOperator,
        ExecutionStatus::HandedOff,
        ExecutionStatus::Resolved,
        ExecutionStatus::Abandoned,
        ExecutionStatus::Escalated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Running => "running",
            ExecutionStatus::WaitingForApproval => "waiting_for_approval",
            ExecutionStatus::Waiting => "waiting",
            ExecutionStatus::NeedsOperator => "needs_operator",
            ExecutionStatus::HandedOff => "handed_off",
            ExecutionStatus::Resolved => "resolved",
            ExecutionStatus::Abandoned => "abandoned",
            ExecutionStatus::Escalated => "escalated",
        }
    }

    pub fn parse(text: &str) -> Option<ExecutionStatus> {
        ExecutionStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// The execution reached an end and will not move again (`handed_off` still may: its
    /// result is followed up).
    pub fn is_finished(self) -> bool {
        matches!(self, ExecutionStatus::Resolved | ExecutionStatus::Abandoned | ExecutionStatus::Escalated)
    }

    /// The status of an execution that reached an end with this outcome (before the
    /// recovered run is verified: see [`ExecutionStatus::HandedOff`]).
    pub fn of_end(outcome: &str) -> ExecutionStatus {
        match outcome {
            "resolved" => ExecutionStatus::Resolved,
            "handed_off" => ExecutionStatus::HandedOff,
            "abandoned" => ExecutionStatus::Abandoned,
            _ => ExecutionStatus::Escalated,
        }
    }
}

impl std::fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether effects are real.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Execute: runtimes act, the store changes (after confirmation and the playbook's
    /// approvals).
    #[default]
    Enforce,
    /// Dry run: the same path, every effect recorded instead of made; nothing is written.
    Advisory,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Advisory => "advisory",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The process executing an execution, so that a second one does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    pub host: String,
    pub pid: u32,
    /// After this time a lease whose holder cannot be checked (another host) is stale.
    pub expires_at: String,
    /// Set when a replica of the daemon holds it under a claim of this epoch (its writes are
    /// fenced; replicas decide between themselves by the claim, not by this lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
}

/// A step waiting for a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingApproval {
    pub step_id: String,
    /// The plan's name for the action waiting (`request_approval`, `branch_from_failure_checkpoint`…).
    pub action: String,
    /// `request_approval` (the step is the question) or `step` (the step runs once approved).
    pub kind: ApprovalKind,
    /// Who may answer.
    pub approvers: Vec<String>,
    pub allow_self_approval: bool,
    /// How many distinct approvers must approve (the requester never counts); 1 is left out.
    #[serde(default = "one", skip_serializing_if = "crate::plan::is_one")]
    pub quorum: u32,
    /// Who approved so far, while a quorum is incomplete (the journal is the truth; this is
    /// its summary for `salvage approvals`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_by: Vec<String>,
    pub reason: String,
    /// The decisions behind the approval (policy explanations).
    pub explanation: Value,
    pub payload: Map<String, Value>,
    pub plan_hash: String,
    pub requested_at: String,
    /// When the question expires (then it is denied by timeout); `null` never.
    pub expires_at: Option<String>,
}

impl PendingApproval {
    /// How many more approvals the quorum needs.
    pub fn still_needed(&self) -> u32 {
        self.quorum.saturating_sub(self.approved_by.len() as u32)
    }
}

/// The default quorum (serde's `default`).
pub fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalKind {
    RequestApproval,
    Step,
}

/// A person's (or the timeout's) answer to a pending approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalAnswer {
    pub step_id: String,
    /// `approved`, `denied` or `timeout`.
    pub decision: String,
    pub actor: String,
    pub reason: Option<String>,
    pub at: String,
}

/// What a person must confirm before a `needs_operator` execution can go on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorQuestion {
    pub step_id: String,
    pub attempt: u32,
    pub action: String,
    pub effect: String,
    pub idempotency_key: String,
    pub question: String,
}

/// An execution of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    /// `exec-` and the plan id's hash part: one execution per plan.
    pub execution_id: String,
    pub plan_id: String,
    pub plan_hash: String,
    pub run_id: String,
    pub status: ExecutionStatus,
    pub mode: Mode,
    /// Who started it (self-approval is refused unless the policy allows it).
    pub started_by: String,
    pub created_at: String,
    pub updated_at: String,
    pub playbook: Option<PlaybookRef>,
    pub policy_digest: String,
    pub playbook_set_digest: String,
    /// The node the execution is at (a step about to run or waiting, or the end reached).
    pub node: Option<String>,
    /// Runs created by steps, by step id (for `target:`).
    pub created_runs: BTreeMap<String, String>,
    pub pending_approval: Option<PendingApproval>,
    pub answers: Vec<ApprovalAnswer>,
    pub operator_question: Option<OperatorQuestion>,
    /// The end reached (`resolved`, `abandoned`, `escalated`).
    pub outcome: Option<String>,
    pub lease: Option<Lease>,
    /// The plan as it was applied (so that `resume` needs no plan file).
    pub plan: Value,
    /// The runtimes the execution acts through, fixed when it started: approvals, resumes and
    /// the daemon use these, whatever the local `salvage.yaml` says now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtimes: Option<PinnedRuntimes>,
    /// When a `waiting` execution is due to go on (its timer ends, or its awaited run is
    /// looked at again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<String>,
    /// For a `handed_off` execution: the run whose result is followed up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_up: Option<FollowUp>,
}

/// The runtime set an execution was started with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PinnedRuntimes {
    /// sha256 of `config`'s canonical JSON.
    pub digest: String,
    /// `runtimes:` of the `salvage.yaml` in force when the execution started (paths absolute).
    pub config: Value,
}

/// The run a `handed_off` execution waits on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FollowUp {
    pub run_id: String,
    /// The run's status when it was last looked at.
    pub last_status: String,
    pub checked_at: String,
}

/// What identifies the run a run-creating step makes, recorded before it acts, so that after
/// a crash the run can be found (by lineage in the store, or by asking the runtime) before the
/// step ever acts again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedRunClue {
    /// The run it derives from.
    pub origin_run_id: String,
    /// The checkpoint it starts from (`null` for a frozen replay).
    pub checkpoint_id: Option<String>,
    /// `branch`, `partial_replay` or `frozen_replay`.
    pub mode: String,
}

crate::model::open_vocabulary! {
    /// Where an action on an execution came from, for the audit log: a person's command or the
    /// daemon.
    pub enum Origin {
        Cli = "cli",
        Daemon = "daemon",
        /// The HTTP API (`/api/v1/…`), with a token or through a trusted proxy.
        Api = "api",
        /// The approval inbox's pages.
        Web = "web",
    }
}

/// One journal entry. The journal is the truth about what ran: the execution record is a
/// summary that can be rebuilt from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JournalEntry {
    /// The execution began (who, which plan, which policy and playbook sets).
    Started {
        at: String,
        actor: String,
        plan_id: String,
        plan_hash: String,
        policy_digest: String,
        playbook_set_digest: String,
        mode: Mode,
        /// The W3C `traceparent` of the span that started it (when spans are exported): who
        /// carries the execution on later (an approval, a restart, another replica) continues
        /// this trace.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
        /// Where it was started from (journals written before salvage recorded it have none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<Origin>,
    },
    /// A step's guard was false.
    Skipped { at: String, step_id: String, reason: String },
    /// A step was entered more often than its `max_visits`.
    Exhausted { at: String, step_id: String },
    /// A step waits for a person.
    ApprovalRequested {
        at: String,
        step_id: String,
        approvers: Vec<String>,
        reason: String,
        expires_at: Option<String>,
        /// How many distinct approvers must approve (left out when 1).
        #[serde(default = "one", skip_serializing_if = "crate::plan::is_one")]
        quorum: u32,
    },
    /// A person (or the timeout) answered.
    ApprovalAnswered {
        at: String,
        step_id: String,
        decision: String,
        actor: String,
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<Origin>,
    },
    /// An answer that was refused (not a listed approver, or approving one's own execution):
    /// kept for the audit log; it changes nothing in the execution.
    AnswerRefused {
        at: String,
        step_id: String,
        decision: String,
        actor: String,
        /// Why it was refused.
        refusal: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<Origin>,
    },
    /// Written before a step's effect, with the idempotency key and (for actions that create a
    /// run) the id reserved for the run.
    Intent {
        at: String,
        step_id: String,
        attempt: u32,
        action: String,
        effect: String,
        idempotency_key: String,
        run_id: String,
        new_run_id: Option<String>,
        request: Value,
        /// For run-creating steps: what identifies the run it makes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clue: Option<CreatedRunClue>,
    },
    /// Written after the effect.
    Outcome {
        at: String,
        step_id: String,
        attempt: u32,
        idempotency_key: String,
        outcome: String,
        created_run_id: Option<String>,
        detail: Value,
        /// The run the step acted on or looked at, and its status afterwards as the runtime
        /// answered or the store showed (the basis of verified outcomes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_status: Option<String>,
    },
    /// A `wait` or `await_run` step started its clock: it ends at `until`, whatever restarts
    /// happen meanwhile.
    Timer { at: String, step_id: String, attempt: u32, until: String },
    /// The runner stopped: a person must say whether an interrupted step's effect happened.
    OperatorNeeded { at: String, step_id: String, attempt: u32, question: String },
    /// A person said what happened (an outcome) or asked for the step to run again.
    OperatorConfirmed {
        at: String,
        step_id: String,
        attempt: u32,
        actor: String,
        outcome: Option<String>,
        reason: Option<String>,
        /// The run the step created, as the person named it (`--created RUN`) or as salvage
        /// found it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        created_run_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<Origin>,
    },
    /// The execution reached an end.
    Finished { at: String, node: String, outcome: String },
    /// The recovered run was looked at after a `resolved` end: `resolved` when it was seen
    /// completed, `handed_off` while its result is pending, `escalated` when it failed or
    /// waits for someone again.
    Verified { at: String, run_id: String, status: String, outcome: String },
    /// A person closed the execution as it stands (`salvage abandon`): the way out of an
    /// execution that cannot go on (a journal that no longer fits its playbook, say).
    Abandoned {
        at: String,
        actor: String,
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<Origin>,
    },
    /// Written before notifications are sent: the event, its idempotency key and the channels
    /// about to receive it. A channel named here without a later [`JournalEntry::Delivery`]
    /// was interrupted: it may or may not have received the notification.
    NotificationIntent {
        at: String,
        event: String,
        idempotency_key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step_id: Option<String>,
        channels: Vec<String>,
    },
    /// How sending a notification to one channel ended (`delivered`, `failed`, `dry_run`).
    Delivery {
        at: String,
        event: String,
        idempotency_key: String,
        channel: String,
        channel_type: String,
        attempts: u32,
        status: Option<u16>,
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Sent again after a crash interrupted an earlier send to this channel (the same
        /// idempotency key: the receiver may already have it).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        redelivery: bool,
    },
}

impl JournalEntry {
    /// The entry as the store keeps it: position `seq` of `execution_id`'s journal.
    pub fn record(&self, execution_id: &str, seq: u64) -> JournalRecord {
        JournalRecord {
            execution_id: execution_id.to_owned(),
            seq,
            body: serde_json::to_value(self).unwrap_or(Value::Null),
        }
    }

    pub fn step_id(&self) -> Option<&str> {
        match self {
            JournalEntry::Started { .. }
            | JournalEntry::Finished { .. }
            | JournalEntry::Verified { .. }
            | JournalEntry::Delivery { .. }
            | JournalEntry::Abandoned { .. } => None,
            JournalEntry::NotificationIntent { step_id, .. } => step_id.as_deref(),
            JournalEntry::Skipped { step_id, .. }
            | JournalEntry::Exhausted { step_id, .. }
            | JournalEntry::ApprovalRequested { step_id, .. }
            | JournalEntry::ApprovalAnswered { step_id, .. }
            | JournalEntry::AnswerRefused { step_id, .. }
            | JournalEntry::Intent { step_id, .. }
            | JournalEntry::Outcome { step_id, .. }
            | JournalEntry::Timer { step_id, .. }
            | JournalEntry::OperatorNeeded { step_id, .. }
            | JournalEntry::OperatorConfirmed { step_id, .. } => Some(step_id),
        }
    }
}

/// The idempotency key of an attempt: `<planId>:<stepId>:<attempt>` on a step's first visit,
/// `<planId>:<stepId>@<visit>:<attempt>` on later ones (a loop back to a step is a new action,
/// which a runtime that honours keys must not take for a repeat of the first).
pub fn idempotency_key(plan_id: &str, step_id: &str, attempt: u32) -> String {
    format!("{plan_id}:{step_id}:{attempt}")
}

/// [`idempotency_key`] for a given visit of the step (1 for the first).
pub fn visit_idempotency_key(plan_id: &str, step_id: &str, visit: u32, attempt: u32) -> String {
    if visit <= 1 {
        idempotency_key(plan_id, step_id, attempt)
    } else {
        format!("{plan_id}:{step_id}@{visit}:{attempt}")
    }
}

/// The execution id of a plan: one execution per plan.
pub fn execution_id_of(plan_id: &str, mode: Mode) -> String {
    let hash = plan_id.strip_prefix("plan-").unwrap_or(plan_id);
    match mode {
        Mode::Enforce => format!("exec-{hash}"),
        Mode::Advisory => format!("dry-{hash}"),
    }
}

/// The mode an execution id was made for by [`execution_id_of`]: a dry run's starts `dry-`.
/// (A runtime sees only the request, and must not say it did what a dry run only simulated.)
pub fn mode_of_execution_id(execution_id: &str) -> Mode {
    if execution_id.starts_with("dry-") { Mode::Advisory } else { Mode::Enforce }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_execution_id_says_the_mode_it_was_made_for() {
        for mode in [Mode::Advisory, Mode::Enforce] {
            assert_eq!(mode_of_execution_id(&execution_id_of("plan-0123abcd", mode)), mode);
        }
        assert_eq!(mode_of_execution_id("exec-dry-looking"), Mode::Enforce, "only the prefix counts");
    }

    #[test]
    fn a_journal_written_before_origins_reads_and_an_unknown_origin_is_kept() {
        let old = serde_json::json!({
            "kind": "approval_answered", "at": "2026-01-01T00:00:00.000Z", "step_id": "ask",
            "decision": "approved", "actor": "oncall-sre", "reason": null,
        });
        let entry: JournalEntry = serde_json::from_value(old.clone()).expect("an old entry");
        assert!(matches!(&entry, JournalEntry::ApprovalAnswered { origin: None, .. }), "{entry:?}");
        assert_eq!(serde_json::to_value(&entry).expect("json"), old, "written back without an origin");
        let mut newer = old;
        newer["origin"] = "chatops".into();
        let entry: JournalEntry = serde_json::from_value(newer.clone()).expect("a newer entry");
        assert!(
            matches!(&entry, JournalEntry::ApprovalAnswered { origin: Some(Origin::Other(o)), .. } if o == "chatops")
        );
        assert_eq!(serde_json::to_value(&entry).expect("json"), newer);
        // The API's and the inbox's origins are known words.
        newer["origin"] = "web".into();
        let entry: JournalEntry = serde_json::from_value(newer.clone()).expect("an inbox answer");
        assert!(matches!(&entry, JournalEntry::ApprovalAnswered { origin: Some(Origin::Web), .. }));
    }
}
