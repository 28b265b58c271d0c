//! The runner: walks a plan's recovery graph, one journalled step at a time.
//!
//! For every step with an effect: an `intent` entry (idempotency key, the id reserved for a
//! run it creates) is durable before the effect, an `outcome` entry after it. A step that
//! needs a person pauses the execution until `answer` records a decision. Resuming (after an
//! approval, a crash, a restart) rebuilds the position from the journal; a step found with an
//! intent and no outcome is retried only when its effect is `read_only` or `idempotent` (same
//! key), otherwise the execution stops in `needs_operator` and asks what happened.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use tracing::Instrument;

use super::overlay::Overlay;
use super::record::{
    ApprovalAnswer, ApprovalKind, Execution, ExecutionStatus, JournalEntry, Lease, Mode, OperatorQuestion,
    PendingApproval, execution_id_of, idempotency_key,
};
use super::runtime::{ActionRequest, ActionResult, ResolveRuntime, RuntimeError};
use super::state::State;
use crate::inspect::{self, checks};
use crate::model::IncidentKind;
use crate::model::json::{iso_millis, now_iso, parse_iso, unique_epoch_millis};
use crate::plan::{PlanError, PlanStep, Planner, PlaybookRef, RetryPolicy, evaluate_guard, hash_of};
use crate::playbook::{Action, CompiledPlaybook, EffectClass, GraphNode, PlaybookSet, StepNode};
use crate::policy::{Approvers, DecisionContext, PolicySet};
use crate::store::{ExecutionDoc, Expected, JournalRecord, Revision, RunStore, Store, StoreError};

/// How the runner behaves where a plan says nothing.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// Who may approve a step whose plan lists no approvers.
    pub default_approvers: Vec<String>,
    /// Whether the person who started an execution may approve its steps (a policy can allow
    /// it per step).
    pub allow_self_approval: bool,
    /// How long an approval waits when the step sets no timeout.
    pub default_approval_timeout: Duration,
    /// Where `export_bundle` writes bundles.
    pub export_dir: PathBuf,
    /// How long an executor's lease lasts without renewal (a crashed executor on another host
    /// blocks the execution this long).
    pub lease_ttl: Duration,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        RunnerSettings {
            default_approvers: Vec::new(),
            allow_self_approval: false,
            default_approval_timeout: Duration::from_secs(4 * 3600),
            export_dir: PathBuf::from(".salvage/bundles"),
            lease_ttl: Duration::from_secs(60),
        }
    }
}

/// Why the runner refused or stopped.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ExecuteError {
    #[error("the plan is stale: {}", changes.join("; "))]
    #[diagnostic(
        code(salvage::apply::stale_plan),
        help("make a new plan (`salvage plan RUN_ID`) and review it before applying")
    )]
    StalePlan { changes: Vec<String> },

    #[error("the plan is not a salvage plan: {reason}")]
    #[diagnostic(code(salvage::apply::bad_plan))]
    BadPlan { reason: String },

    #[error("plan {plan_id} was already executed: execution {execution_id} is {status}")]
    #[diagnostic(
        code(salvage::apply::already_executed),
        help("`salvage executions` lists it; a plan runs once — plan again to recover again")
    )]
    AlreadyExecuted { plan_id: String, execution_id: String, status: ExecutionStatus },

    #[error("execution {execution_id} is being executed by another process ({holder})")]
    #[diagnostic(
        code(salvage::apply::busy),
        help("wait for it to finish or pause; `salvage executions` shows its state")
    )]
    Busy { execution_id: String, holder: String },

    #[error("no execution {execution_id}")]
    #[diagnostic(code(salvage::execution_not_found), help("`salvage executions` lists the executions of this store"))]
    NotFound { execution_id: String },

    #[error("execution {execution_id} {state}")]
    #[diagnostic(code(salvage::approve::not_waiting))]
    NotWaiting { execution_id: String, state: String },

    #[error("{actor} may not answer step {step_id}: the approvers are {}", approvers.join(", "))]
    #[diagnostic(code(salvage::approve::not_an_approver))]
    NotAnApprover { actor: String, step_id: String, approvers: Vec<String> },

    #[error("nobody may approve step {step_id}: neither the plan nor salvage.yaml lists approvers")]
    #[diagnostic(
        code(salvage::approve::no_approvers),
        help(
            "return approvers from the policy's `approvers` hook, or set `approvals.default_approvers` in salvage.yaml"
        )
    )]
    NoApprovers { step_id: String },

    #[error("{actor} started execution {execution_id} and may not approve it")]
    #[diagnostic(
        code(salvage::approve::self_approval),
        help("another approver must answer (a policy can allow self-approval)")
    )]
    SelfApproval { actor: String, execution_id: String },

    #[error("step {step_id} was already answered: {existing}")]
    #[diagnostic(code(salvage::approve::conflicting_answer))]
    ConflictingAnswer { step_id: String, existing: String },

    #[error("the {what} changed since the plan was made ({planned} → {current})")]
    #[diagnostic(code(salvage::apply::sets_changed), help("plan again with the current playbooks and policies"))]
    SetsChanged { what: String, planned: String, current: String },

    #[error("execution {execution_id}: {problem}")]
    #[diagnostic(code(salvage::execution::inconsistent))]
    Inconsistent { execution_id: String, problem: String },

    #[error("execution {execution_id} was changed by another process while this one ran it")]
    #[diagnostic(
        code(salvage::execution::lost),
        help("`salvage executions` shows its state; resume it if nobody else is")
    )]
    LostOwnership { execution_id: String },

    #[error("step {step_id} of execution {execution_id} {problem}")]
    #[diagnostic(code(salvage::confirm::invalid))]
    InvalidConfirmation { execution_id: String, step_id: String, problem: String },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] PlanError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),
}

/// The fields of a plan the runner reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlanView {
    plan_id: String,
    plan_hash: String,
    run_id: String,
    run_revision: u64,
    status: String,
    incident_type: String,
    compare_to_run_id: Option<String>,
    playbook: Option<PlaybookRef>,
    policy_digest: String,
    playbook_set_digest: String,
    steps: Vec<PlannedStep>,
    path: Vec<PlannedPath>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlannedPath {
    node: String,
    transition: String,
}

/// A plan step as the runner needs it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStep {
    pub id: String,
    pub action: String,
    pub reason: String,
    pub run_id: String,
    pub payload: Map<String, Value>,
    pub requires_approval: bool,
    pub effect: String,
    pub expected_outcome: String,
    pub target: Option<String>,
    pub approvers: Option<Approvers>,
    pub timeout_ms: Option<u64>,
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub explanation: Value,
}

impl From<PlanStep> for PlannedStep {
    fn from(step: PlanStep) -> PlannedStep {
        PlannedStep {
            id: step.id,
            action: step.action,
            reason: step.reason,
            run_id: step.run_id,
            payload: step.payload,
            requires_approval: step.requires_approval,
            effect: step.effect,
            expected_outcome: step.expected_outcome,
            target: step.target,
            approvers: step.approvers,
            timeout_ms: step.timeout_ms,
            retry: step.retry,
            explanation: serde_json::to_value(step.explanation).unwrap_or(Value::Null),
        }
    }
}

/// One step as this run of the runner handled it (for the report).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    pub step_id: String,
    /// The plan's name for the action (`branch_from_failure_checkpoint`, …).
    pub action: String,
    /// The catalog action (`branch_from_checkpoint`, …).
    pub catalog_action: String,
    /// `ok`, `failed`, a check's outcome, `skipped`, `waiting_for_approval`, …
    pub outcome: String,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_run_id: Option<String>,
    pub detail: Value,
}

/// What an `apply` or `resume` did.
#[derive(Debug, Clone)]
pub struct ExecutionReport {
    pub execution: Execution,
    pub steps: Vec<StepReport>,
    /// In a dry run: every run the execution would have created or changed.
    pub dry_run_runs: Vec<Value>,
}

/// An approval answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approved",
            Decision::Deny => "denied",
        }
    }
}

/// What a person confirms about an interrupted step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// The step had this outcome (`ok` if its effect happened, `failed` if it did not).
    Outcome(String),
    /// Run it again, as a new attempt.
    Retry,
}

/// Executes plans against a store with the policy and playbook sets they were made with.
#[derive(Debug, Clone)]
pub struct Runner {
    store: Arc<dyn Store>,
    /// The dry run's overlay (advisory mode), also reachable through `store`.
    overlay: Option<Arc<Overlay>>,
    policies: Arc<PolicySet>,
    playbooks: Arc<PlaybookSet>,
    runtimes: Arc<dyn ResolveRuntime>,
    settings: RunnerSettings,
    mode: Mode,
    actor: String,
    /// Set by a process shutting down: the runner stops between steps (the execution stays
    /// `running`, its journal complete up to the last step) and `resume` continues it later.
    stop: Option<Arc<AtomicBool>>,
}

/// Where a test asks the runner to crash (`SALVAGE_TEST_CRASH_AT=intent:STEP`, `effect:STEP` or
/// `outcome:STEP`): the process aborts right after that journal point, as a crash would.
const CRASH_SWITCH: &str = "SALVAGE_TEST_CRASH_AT";

fn crash_point(point: &str, step_id: &str) {
    if let Ok(wanted) = std::env::var(CRASH_SWITCH)
        && wanted == format!("{point}:{step_id}")
    {
        tracing::error!(point, step_id, "Crashing on purpose ({CRASH_SWITCH}).");
        std::process::abort();
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".to_owned())
}

fn later(duration: Duration) -> String {
    let now = time::OffsetDateTime::now_utc();
    iso_millis(now + time::Duration::try_from(duration).unwrap_or(time::Duration::MAX))
}

fn is_past(at: &str) -> bool {
    parse_iso(at).is_some_and(|at| at <= time::OffsetDateTime::now_utc())
}

impl Runner {
    /// A runner executing for real (`Mode::Enforce`) or as a dry run over an in-memory overlay
    /// of `store` (`Mode::Advisory`).
    pub fn new(
        store: Arc<dyn Store>,
        policies: Arc<PolicySet>,
        playbooks: Arc<PlaybookSet>,
        runtimes: Arc<dyn ResolveRuntime>,
        settings: RunnerSettings,
        mode: Mode,
        actor: impl Into<String>,
    ) -> Runner {
        let (store, overlay) = match mode {
            Mode::Enforce => (store, None),
            Mode::Advisory => {
                let overlay = Arc::new(Overlay::new(store));
                (overlay.clone() as Arc<dyn Store>, Some(overlay))
            }
        };
        Runner { store, overlay, policies, playbooks, runtimes, settings, mode, actor: actor.into(), stop: None }
    }

    /// The same runner, stopping between steps once `stop` is set (graceful shutdown).
    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> Runner {
        self.stop = Some(stop);
        self
    }

    fn stop_requested(&self) -> bool {
        self.stop.as_ref().is_some_and(|stop| stop.load(Ordering::SeqCst))
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn planner(&self) -> Planner {
        Planner::new(self.store.clone() as Arc<dyn RunStore>, self.policies.clone(), self.playbooks.clone())
    }

    /// Applies a plan (as JSON, e.g. read from a plan file): refuses a stale or changed plan,
    /// creates the execution (once per plan) and runs it until it ends or waits.
    pub async fn apply(&self, plan: &Value) -> Result<ExecutionReport, ExecuteError> {
        let view: PlanView = serde_json::from_value(plan.clone())
            .map_err(|error| ExecuteError::BadPlan { reason: error.to_string() })?;
        self.check_fresh(plan, &view).await?;
        let execution_id = execution_id_of(&view.plan_id, self.mode);
        let now = now_iso();
        let execution = Execution {
            execution_id: execution_id.clone(),
            plan_id: view.plan_id.clone(),
            plan_hash: view.plan_hash.clone(),
            run_id: view.run_id.clone(),
            status: ExecutionStatus::Running,
            mode: self.mode,
            started_by: self.actor.clone(),
            created_at: now.clone(),
            updated_at: now.clone(),
            playbook: view.playbook.clone(),
            policy_digest: view.policy_digest.clone(),
            playbook_set_digest: view.playbook_set_digest.clone(),
            node: None,
            created_runs: BTreeMap::new(),
            pending_approval: None,
            answers: Vec::new(),
            operator_question: None,
            outcome: None,
            lease: Some(self.lease()),
            plan: plan.clone(),
        };
        let revision = match self.store.put_execution(&doc_of(&execution), Expected::Absent).await {
            Ok(revision) => revision,
            Err(StoreError::Conflict { .. }) => return Err(self.already_applied(&view.plan_id, &execution_id).await),
            Err(error) => return Err(error.into()),
        };
        let mut session = Session::new(self, execution, revision, &view)?;
        session
            .append(JournalEntry::Started {
                at: now,
                actor: self.actor.clone(),
                plan_id: view.plan_id.clone(),
                plan_hash: view.plan_hash.clone(),
                policy_digest: view.policy_digest.clone(),
                playbook_set_digest: view.playbook_set_digest.clone(),
                mode: self.mode,
            })
            .await?;
        session.drive().await?;
        session.report().await
    }

    /// The explanation of a refused `apply`: the plan's execution exists already.
    async fn already_applied(&self, plan_id: &str, execution_id: &str) -> ExecuteError {
        match self.store.get_execution(execution_id).await {
            Ok(Some(stored)) => match execution_of(&stored.doc) {
                Ok(existing) if existing.status.is_finished() => ExecuteError::AlreadyExecuted {
                    plan_id: plan_id.to_owned(),
                    execution_id: execution_id.to_owned(),
                    status: existing.status,
                },
                Ok(existing) => match existing.lease.as_ref().filter(|lease| lease_is_live(lease)) {
                    Some(lease) => ExecuteError::Busy {
                        execution_id: execution_id.to_owned(),
                        holder: format!("pid {} on {}", lease.pid, lease.host),
                    },
                    None => ExecuteError::AlreadyExecuted {
                        plan_id: plan_id.to_owned(),
                        execution_id: execution_id.to_owned(),
                        status: existing.status,
                    },
                },
                Err(error) => error,
            },
            Ok(None) => ExecuteError::Inconsistent {
                execution_id: execution_id.to_owned(),
                problem: "another process created and removed it".into(),
            },
            Err(error) => error.into(),
        }
    }

    /// The stale-plan guard: the plan's content, the run's revision and the policy and
    /// playbook sets must be what the plan was made from.
    async fn check_fresh(&self, plan: &Value, view: &PlanView) -> Result<(), ExecuteError> {
        let mut changes = Vec::new();
        if hash_of(plan) != view.plan_hash {
            changes
                .push("the plan's content was changed after it was made (its hash differs from planHash)".to_owned());
        }
        match self.store.get(&view.run_id).await? {
            None => changes.push(format!("run {} is no longer in the store", view.run_id)),
            Some(stored) if stored.revision.0 != view.run_revision => changes.push(format!(
                "run {} changed since the plan was made: revision {} → {}, status {} → {}",
                view.run_id, view.run_revision, stored.revision, view.status, stored.run.status
            )),
            Some(_) => {}
        }
        if !changes.is_empty() {
            return Err(ExecuteError::StalePlan { changes });
        }
        self.check_sets(view)?;
        Ok(())
    }

    /// The policies and the plan's playbook must be the ones the plan was made with: steps the
    /// plan did not lay out are decided with them.
    fn check_sets(&self, view: &PlanView) -> Result<(), ExecuteError> {
        if self.policies.digest() != view.policy_digest {
            return Err(ExecuteError::SetsChanged {
                what: "policy set".into(),
                planned: short(&view.policy_digest),
                current: short(self.policies.digest()),
            });
        }
        if let Some(planned) = &view.playbook {
            let current = self.playbooks.get(&planned.name);
            match current {
                Some(playbook) if playbook.digest == planned.digest => {}
                Some(playbook) => {
                    return Err(ExecuteError::SetsChanged {
                        what: format!("playbook {}", planned.name),
                        planned: short(&planned.digest),
                        current: short(&playbook.digest),
                    });
                }
                None => {
                    return Err(ExecuteError::SetsChanged {
                        what: format!("playbook {}", planned.name),
                        planned: short(&planned.digest),
                        current: "no such playbook".into(),
                    });
                }
            }
        }
        Ok(())
    }

    fn lease(&self) -> Lease {
        Lease { host: hostname(), pid: std::process::id(), expires_at: later(self.settings.lease_ttl) }
    }

    async fn load(&self, execution_id: &str) -> Result<(Execution, Revision), ExecuteError> {
        let stored = self
            .store
            .get_execution(execution_id)
            .await?
            .ok_or_else(|| ExecuteError::NotFound { execution_id: execution_id.to_owned() })?;
        Ok((execution_of(&stored.doc)?, stored.revision))
    }

    /// Continues an execution: after approvals, after a crash, after a restart.
    pub async fn resume(&self, execution_id: &str) -> Result<ExecutionReport, ExecuteError> {
        let (mut execution, revision) = self.load(execution_id).await?;
        if let Some(lease) = execution.lease.as_ref().filter(|lease| lease_is_live(lease))
            && !(lease.pid == std::process::id() && lease.host == hostname())
        {
            return Err(ExecuteError::Busy {
                execution_id: execution_id.to_owned(),
                holder: format!("pid {} on {}", lease.pid, lease.host),
            });
        }
        let view: PlanView = serde_json::from_value(execution.plan.clone())
            .map_err(|error| ExecuteError::BadPlan { reason: error.to_string() })?;
        self.check_sets(&view)?;
        execution.lease = Some(self.lease());
        let mut session = Session::new(self, execution, revision, &view)?;
        session.replay().await?;
        session.save().await?;
        session.drive().await?;
        session.report().await
    }

    /// Records a person's answer to the approval an execution waits for. Idempotent: the same
    /// answer again changes nothing; a different answer is refused.
    pub async fn answer(
        &self,
        execution_id: &str,
        step_id: &str,
        decision: Decision,
        reason: Option<String>,
    ) -> Result<AnswerOutcome, ExecuteError> {
        loop {
            let (execution, _) = self.load(execution_id).await?;
            let journal = self.store.journal(execution_id).await?;
            let entries = journal_entries(execution_id, &journal)?;
            // Answers already given for the step's last request.
            let last_request = entries
                .iter()
                .rposition(|e| matches!(e, JournalEntry::ApprovalRequested { step_id: s, .. } if s == step_id));
            let answered = last_request.and_then(|index| {
                entries[index..].iter().find_map(|e| match e {
                    JournalEntry::ApprovalAnswered { step_id: s, decision, actor, at, .. } if s == step_id => {
                        Some((decision.clone(), actor.clone(), at.clone()))
                    }
                    _ => None,
                })
            });
            if let Some((existing, actor, at)) = answered {
                if existing == decision.as_str() {
                    return Ok(AnswerOutcome::AlreadyAnswered { by: actor, at });
                }
                return Err(ExecuteError::ConflictingAnswer {
                    step_id: step_id.to_owned(),
                    existing: format!("{existing} by {actor} at {at}"),
                });
            }
            let Some(pending) = execution.pending_approval.clone().filter(|p| p.step_id == step_id) else {
                let state = match (&execution.pending_approval, execution.status) {
                    (Some(pending), _) => {
                        format!("waits for an approval of step {}, not of step {step_id}", pending.step_id)
                    }
                    (None, status) => format!("does not wait for an approval (it is {status})"),
                };
                return Err(ExecuteError::NotWaiting { execution_id: execution_id.to_owned(), state });
            };
            if pending.expires_at.as_deref().is_some_and(is_past) {
                self.expire(execution_id).await?;
                return Ok(AnswerOutcome::Expired { at: pending.expires_at.unwrap_or_default() });
            }
            let approvers =
                if pending.approvers.is_empty() { &self.settings.default_approvers } else { &pending.approvers };
            if approvers.is_empty() {
                return Err(ExecuteError::NoApprovers { step_id: step_id.to_owned() });
            }
            if !approvers.contains(&self.actor) {
                return Err(ExecuteError::NotAnApprover {
                    actor: self.actor.clone(),
                    step_id: step_id.to_owned(),
                    approvers: approvers.clone(),
                });
            }
            if decision == Decision::Approve
                && self.actor == execution.started_by
                && !(pending.allow_self_approval || self.settings.allow_self_approval)
            {
                return Err(ExecuteError::SelfApproval {
                    actor: self.actor.clone(),
                    execution_id: execution_id.to_owned(),
                });
            }
            let entry = JournalEntry::ApprovalAnswered {
                at: now_iso(),
                step_id: step_id.to_owned(),
                decision: decision.as_str().to_owned(),
                actor: self.actor.clone(),
                reason: reason.clone(),
            };
            let record = JournalRecord {
                execution_id: execution_id.to_owned(),
                seq: journal.last().map_or(1, |r| r.seq + 1),
                body: serde_json::to_value(&entry).unwrap_or(Value::Null),
            };
            match self.store.append_journal(&record).await {
                // Someone else answered (or the runner moved) meanwhile: look again.
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
                Ok(()) => {}
            }
            let answer = ApprovalAnswer {
                step_id: step_id.to_owned(),
                decision: decision.as_str().to_owned(),
                actor: self.actor.clone(),
                reason,
                at: now_iso(),
            };
            self.record_answer(execution_id, &answer).await?;
            return Ok(AnswerOutcome::Recorded);
        }
    }

    /// Keeps an answer on the execution record and on the incident run (`metadata.recovery.approvals`).
    async fn record_answer(&self, execution_id: &str, answer: &ApprovalAnswer) -> Result<(), ExecuteError> {
        loop {
            let (mut execution, revision) = self.load(execution_id).await?;
            if !execution.answers.contains(answer) {
                execution.answers.push(answer.clone());
            }
            execution.updated_at = now_iso();
            match self.store.put_execution(&doc_of(&execution), Expected::Revision(revision)).await {
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
                Ok(_) => break,
            }
        }
        let (execution, _) = self.load(execution_id).await?;
        record_on_run(self.store.as_ref(), &execution.run_id, execution_id, answer).await
    }

    /// Denies, as timed out, the approval an execution waits for once it has expired.
    pub async fn expire(&self, execution_id: &str) -> Result<bool, ExecuteError> {
        let (execution, _) = self.load(execution_id).await?;
        let Some(pending) = execution.pending_approval.filter(|p| p.expires_at.as_deref().is_some_and(is_past)) else {
            return Ok(false);
        };
        let journal = self.store.journal(execution_id).await?;
        let entries = journal_entries(execution_id, &journal)?;
        if matches!(entries.last(), Some(JournalEntry::ApprovalAnswered { .. })) {
            return Ok(false);
        }
        let entry = JournalEntry::ApprovalAnswered {
            at: now_iso(),
            step_id: pending.step_id.clone(),
            decision: "timeout".into(),
            actor: "salvage".into(),
            reason: Some(format!("nobody answered before {}", pending.expires_at.clone().unwrap_or_default())),
        };
        let record = JournalRecord {
            execution_id: execution_id.to_owned(),
            seq: journal.last().map_or(1, |r| r.seq + 1),
            body: serde_json::to_value(&entry).unwrap_or(Value::Null),
        };
        match self.store.append_journal(&record).await {
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(error) => Err(error.into()),
            Ok(()) => {
                let answer = ApprovalAnswer {
                    step_id: pending.step_id,
                    decision: "timeout".into(),
                    actor: "salvage".into(),
                    reason: None,
                    at: now_iso(),
                };
                self.record_answer(execution_id, &answer).await?;
                Ok(true)
            }
        }
    }

    /// Records what a person says about a step that was interrupted (`needs_operator`).
    pub async fn confirm(
        &self,
        execution_id: &str,
        step_id: &str,
        confirmation: Confirmation,
        reason: Option<String>,
    ) -> Result<(), ExecuteError> {
        let (execution, _) = self.load(execution_id).await?;
        let invalid = |problem: String| ExecuteError::InvalidConfirmation {
            execution_id: execution_id.to_owned(),
            step_id: step_id.to_owned(),
            problem,
        };
        let Some(question) = execution.operator_question.clone().filter(|q| q.step_id == step_id) else {
            return Err(invalid(format!("has no question waiting (the execution is {})", execution.status)));
        };
        if let Confirmation::Outcome(outcome) = &confirmation {
            let step = self
                .playbook_of(&execution)?
                .graph
                .step(step_id)
                .map(|s| s.spec().outcomes.to_vec())
                .unwrap_or_default();
            if !step.contains(&outcome.as_str()) {
                return Err(invalid(format!("cannot have outcome `{outcome}`; its outcomes are {}", step.join(", "))));
            }
        }
        let journal = self.store.journal(execution_id).await?;
        let entry = JournalEntry::OperatorConfirmed {
            at: now_iso(),
            step_id: step_id.to_owned(),
            attempt: question.attempt,
            actor: self.actor.clone(),
            outcome: match confirmation {
                Confirmation::Outcome(outcome) => Some(outcome),
                Confirmation::Retry => None,
            },
            reason,
        };
        let record = JournalRecord {
            execution_id: execution_id.to_owned(),
            seq: journal.last().map_or(1, |r| r.seq + 1),
            body: serde_json::to_value(&entry).unwrap_or(Value::Null),
        };
        self.store.append_journal(&record).await?;
        Ok(())
    }

    fn playbook_of(&self, execution: &Execution) -> Result<&CompiledPlaybook, ExecuteError> {
        let name = execution.playbook.as_ref().map(|p| p.name.as_str()).unwrap_or_default();
        self.playbooks.get(name).ok_or_else(|| ExecuteError::SetsChanged {
            what: format!("playbook {name}"),
            planned: execution.playbook.as_ref().map(|p| short(&p.digest)).unwrap_or_default(),
            current: "no such playbook".into(),
        })
    }
}

/// What `answer` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerOutcome {
    Recorded,
    /// The same answer was already recorded.
    AlreadyAnswered {
        by: String,
        at: String,
    },
    /// The approval had expired: it was denied by timeout.
    Expired {
        at: String,
    },
}

fn short(digest: &str) -> String {
    digest.chars().take(12).collect()
}

/// Whether a lease's holder may still be executing. On this host the holder itself is
/// checked, so a crashed executor releases its executions at once; a holder on another host
/// is trusted until its lease expires.
fn lease_is_live(lease: &Lease) -> bool {
    let proc = std::path::Path::new("/proc");
    if lease.host == hostname() && proc.join("self").exists() {
        return proc.join(lease.pid.to_string()).exists();
    }
    !is_past(&lease.expires_at)
}

fn doc_of(execution: &Execution) -> ExecutionDoc {
    ExecutionDoc {
        id: execution.execution_id.clone(),
        run_id: execution.run_id.clone(),
        plan_id: execution.plan_id.clone(),
        status: execution.status.as_str().to_owned(),
        created_at: execution.created_at.clone(),
        updated_at: execution.updated_at.clone(),
        body: serde_json::to_value(execution).unwrap_or(Value::Null),
    }
}

/// Reads an execution record.
pub fn execution_of(doc: &ExecutionDoc) -> Result<Execution, ExecuteError> {
    serde_json::from_value(doc.body.clone()).map_err(|error| ExecuteError::Inconsistent {
        execution_id: doc.id.clone(),
        problem: format!("its record cannot be read: {error}"),
    })
}

/// Reads journal records.
pub fn journal_entries(execution_id: &str, journal: &[JournalRecord]) -> Result<Vec<JournalEntry>, ExecuteError> {
    journal
        .iter()
        .map(|record| {
            serde_json::from_value(record.body.clone()).map_err(|error| ExecuteError::Inconsistent {
                execution_id: execution_id.to_owned(),
                problem: format!("journal entry {} cannot be read: {error}", record.seq),
            })
        })
        .collect()
}

/// Keeps an approval answer on the run it concerns.
async fn record_on_run(
    store: &dyn Store,
    run_id: &str,
    execution_id: &str,
    answer: &ApprovalAnswer,
) -> Result<(), ExecuteError> {
    for _ in 0..16 {
        let Some(stored) = store.get(run_id).await? else { return Ok(()) };
        let mut run = stored.run;
        let mut recovery = match run.metadata.get("recovery") {
            Some(Value::Object(map)) => map.clone(),
            _ => Map::new(),
        };
        let mut approvals = match recovery.get("approvals") {
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        };
        let entry = json!({"executionId": execution_id, "stepId": answer.step_id, "decision": answer.decision,
                           "actor": answer.actor, "reason": answer.reason, "at": answer.at});
        if approvals.iter().any(|a| {
            a["executionId"] == entry["executionId"]
                && a["stepId"] == entry["stepId"]
                && a["decision"] == entry["decision"]
                && a["actor"] == entry["actor"]
        }) {
            return Ok(());
        }
        approvals.push(entry);
        recovery.insert("approvals".into(), Value::Array(approvals));
        run.metadata.insert("recovery", Value::Object(recovery));
        match store.save(&run, Expected::Revision(stored.revision)).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(ExecuteError::Inconsistent {
        execution_id: execution_id.to_owned(),
        problem: format!("run {run_id} kept changing while the approval was recorded on it"),
    })
}

/// One runner working on one execution.
struct Session<'r> {
    runner: &'r Runner,
    execution: Execution,
    revision: Revision,
    playbook: &'r CompiledPlaybook,
    view: PlanView,
    state: State,
    ctx: Option<DecisionContext>,
    steps: Vec<StepReport>,
}

impl<'r> Session<'r> {
    fn new(
        runner: &'r Runner,
        execution: Execution,
        revision: Revision,
        view: &PlanView,
    ) -> Result<Session<'r>, ExecuteError> {
        let playbook = runner.playbook_of(&execution)?;
        Ok(Session {
            runner,
            state: State::new(&playbook.graph),
            execution,
            revision,
            playbook,
            view: view.clone(),
            ctx: None,
            steps: Vec::new(),
        })
    }

    fn id(&self) -> &str {
        &self.execution.execution_id
    }

    /// Rebuilds the position from the journal.
    async fn replay(&mut self) -> Result<(), ExecuteError> {
        let journal = self.runner.store.journal(self.id()).await?;
        let entries = journal_entries(self.id(), &journal)?;
        for entry in &entries {
            self.state.apply(&self.playbook.graph, entry).map_err(|error| ExecuteError::Inconsistent {
                execution_id: self.execution.execution_id.clone(),
                problem: error.to_string(),
            })?;
        }
        Ok(())
    }

    /// Appends a journal entry (durably) and applies it.
    async fn append(&mut self, entry: JournalEntry) -> Result<(), ExecuteError> {
        let record = JournalRecord {
            execution_id: self.execution.execution_id.clone(),
            seq: self.state.next_seq,
            body: serde_json::to_value(&entry).unwrap_or(Value::Null),
        };
        match self.runner.store.append_journal(&record).await {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(ExecuteError::LostOwnership { execution_id: self.execution.execution_id.clone() });
            }
            Err(error) => return Err(error.into()),
        }
        self.state.apply(&self.playbook.graph, &entry).map_err(|error| ExecuteError::Inconsistent {
            execution_id: self.execution.execution_id.clone(),
            problem: error.to_string(),
        })
    }

    /// Saves the execution record (compare-and-set), its summary taken from the state.
    async fn save(&mut self) -> Result<(), ExecuteError> {
        let graph = &self.playbook.graph;
        self.execution.node = Some(graph.node(self.state.node).id().to_owned());
        self.execution.created_runs = self.state.created_runs.clone();
        self.execution.updated_at = now_iso();
        if let Some((_, outcome)) = &self.state.finished {
            self.execution.outcome = Some(outcome.clone());
            self.execution.status = ExecutionStatus::of_end(outcome);
        }
        match self.runner.store.put_execution(&doc_of(&self.execution), Expected::Revision(self.revision)).await {
            Ok(revision) => {
                self.revision = revision;
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => {
                // An approval answered meanwhile changes only `answers`: merge and retry once.
                let stored = self.runner.store.get_execution(self.id()).await?;
                let Some(stored) = stored else {
                    return Err(ExecuteError::LostOwnership { execution_id: self.execution.execution_id.clone() });
                };
                let theirs = execution_of(&stored.doc)?;
                let holder_is_us =
                    theirs.lease.as_ref().is_some_and(|l| l.pid == std::process::id() && l.host == hostname());
                if !holder_is_us {
                    return Err(ExecuteError::LostOwnership { execution_id: self.execution.execution_id.clone() });
                }
                for answer in theirs.answers {
                    if !self.execution.answers.contains(&answer) {
                        self.execution.answers.push(answer);
                    }
                }
                self.revision = self
                    .runner
                    .store
                    .put_execution(&doc_of(&self.execution), Expected::Revision(stored.revision))
                    .await?;
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    fn report_step(
        &mut self,
        step_id: &str,
        action: &str,
        outcome: &str,
        attempt: u32,
        created: Option<String>,
        detail: Value,
    ) {
        let catalog_action =
            self.playbook.graph.step(step_id).map(|step| step.spec().name.to_owned()).unwrap_or_default();
        self.steps.push(StepReport {
            step_id: step_id.to_owned(),
            action: action.to_owned(),
            catalog_action,
            outcome: outcome.to_owned(),
            attempt,
            created_run_id: created,
            detail,
        });
    }

    async fn context(&mut self) -> Result<DecisionContext, ExecuteError> {
        if let Some(ctx) = &self.ctx {
            return Ok(ctx.clone());
        }
        let incident = IncidentKind::parse(&self.view.incident_type);
        let ctx =
            self.runner.planner().context(&self.view.run_id, self.view.compare_to_run_id.as_deref(), incident).await?;
        self.ctx = Some(ctx.clone());
        Ok(ctx)
    }

    /// The plan's step for this pass through `step` (the n-th planned occurrence for the n-th
    /// pass), or a decision made now with the plan's policies when the plan did not get there.
    async fn planned(&mut self, step: &StepNode, visit: u32) -> Result<PlannedStep, ExecuteError> {
        let planned = self.view.steps.iter().filter(|s| s.id == step.id).nth(visit as usize - 1).cloned();
        match planned {
            Some(planned) => Ok(planned),
            None => {
                let ctx = self.context().await?;
                let decided = self.runner.planner().decide_step(&ctx, step).await?;
                Ok(decided.into())
            }
        }
    }

    /// The plan's guard decision for this pass through `step`, else the guard evaluated now.
    async fn guard_passes(&mut self, step: &StepNode, visit: u32) -> Result<Result<bool, String>, ExecuteError> {
        let Some(guard) = &step.guard else { return Ok(Ok(true)) };
        let planned = self.view.path.iter().filter(|p| p.node == step.id).nth(visit as usize - 1);
        if let Some(planned) = planned {
            return Ok(Ok(planned.transition != "skip"));
        }
        let ctx = self.context().await?;
        Ok(evaluate_guard(guard, &ctx))
    }

    /// Runs until the execution ends, waits for a person, or needs an operator.
    async fn drive(&mut self) -> Result<(), ExecuteError> {
        let graph = &self.playbook.graph;
        for _ in 0..100_000 {
            if self.state.finished.is_some() {
                self.execution.lease = None;
                self.execution.pending_approval = None;
                self.execution.operator_question = None;
                return self.save().await;
            }
            if self.state.operator_needed.is_some() {
                return self.stop_for_operator().await;
            }
            // An interrupted step either runs again with its key (below) or is settled here.
            if let Some(intent) = self.state.open_intent.clone()
                && !self.recover_intent(intent).await?
            {
                continue;
            }
            if let Some(step_id) = self.state.waiting.clone() {
                let expired =
                    self.execution.pending_approval.as_ref().and_then(|p| p.expires_at.as_deref()).is_some_and(is_past);
                if expired {
                    self.append(JournalEntry::ApprovalAnswered {
                        at: now_iso(),
                        step_id,
                        decision: "timeout".into(),
                        actor: "salvage".into(),
                        reason: Some("nobody answered in time".into()),
                    })
                    .await?;
                    continue;
                }
                self.execution.status = ExecutionStatus::WaitingForApproval;
                self.execution.lease = None;
                return self.save().await;
            }
            if self.runner.stop_requested() {
                // Between steps: everything done so far is journalled; `resume` goes on from here.
                tracing::info!(execution = %self.execution.execution_id, "Stopping between steps (shutdown).");
                self.execution.lease = None;
                return self.save().await;
            }
            let node = self.state.node;
            let step = match graph.node(node) {
                GraphNode::End(end) => {
                    self.append(JournalEntry::Finished {
                        at: now_iso(),
                        node: end.id.clone(),
                        outcome: end.outcome.to_string(),
                    })
                    .await?;
                    continue;
                }
                GraphNode::Step(step) => step.as_ref(),
            };
            let visit = self.state.visit();
            if step.max_visits.is_some_and(|max| visit > max) {
                self.append(JournalEntry::Exhausted { at: now_iso(), step_id: step.id.clone() }).await?;
                self.report_step(&step.id, step.spec().name, "exhausted", 0, None, Value::Null);
                continue;
            }
            let fresh = self.state.attempt == 1 && self.state.answer.is_none() && self.state.open_intent.is_none();
            if fresh {
                match self.guard_passes(step, visit).await? {
                    Ok(true) => {}
                    Ok(false) => {
                        self.append(JournalEntry::Skipped {
                            at: now_iso(),
                            step_id: step.id.clone(),
                            reason: format!(
                                "when: {} is false",
                                step.guard.as_ref().map(|g| g.source.as_str()).unwrap_or("")
                            ),
                        })
                        .await?;
                        self.report_step(&step.id, step.spec().name, "skipped", 0, None, Value::Null);
                        continue;
                    }
                    // A guard that fails keeps the step, gated by a person (fail closed).
                    Err(error) => tracing::warn!(step = %step.id, %error, "Guard failed; the step needs approval."),
                }
            }
            let planned = self.planned(step, visit).await?;
            let needs_approval =
                planned.requires_approval || matches!(step.action, Action::RequestApproval | Action::ResolveApproval);
            if needs_approval && self.state.answer.is_none() && self.state.open_intent.is_none() {
                self.ask(step, &planned).await?;
                continue;
            }
            if let Some(answer) = self.state.answer.clone() {
                if step.action == Action::RequestApproval {
                    let attempt = self.state.attempt;
                    self.append(JournalEntry::Outcome {
                        at: now_iso(),
                        step_id: step.id.clone(),
                        attempt,
                        idempotency_key: idempotency_key(&self.view.plan_id, &step.id, attempt),
                        outcome: answer.clone(),
                        created_run_id: None,
                        detail: Value::Null,
                    })
                    .await?;
                    self.report_step(&step.id, &planned.action, &answer, attempt, None, Value::Null);
                    continue;
                }
                if answer != "approved" {
                    // A refused step approval stops the recovery at that step.
                    let outcome = if answer == "timeout" { "escalated" } else { "abandoned" };
                    self.report_step(&step.id, &planned.action, &answer, self.state.attempt, None, Value::Null);
                    self.append(JournalEntry::Finished {
                        at: now_iso(),
                        node: step.id.clone(),
                        outcome: outcome.into(),
                    })
                    .await?;
                    continue;
                }
            }
            let span = tracing::info_span!("step", step = %step.id, action = step.spec().name);
            self.run_step(step, &planned).instrument(span).await?;
        }
        Err(ExecuteError::Inconsistent {
            execution_id: self.execution.execution_id.clone(),
            problem: "did not reach an end".into(),
        })
    }

    /// Pauses for a person (or, in a dry run, records the question and assumes approval).
    async fn ask(&mut self, step: &StepNode, planned: &PlannedStep) -> Result<(), ExecuteError> {
        let settings = &self.runner.settings;
        let approvers = planned.approvers.clone().unwrap_or_default();
        let names =
            if approvers.names.is_empty() { settings.default_approvers.clone() } else { approvers.names.clone() };
        let timeout = planned.timeout_ms.map(Duration::from_millis).unwrap_or(settings.default_approval_timeout);
        let expires_at = later(timeout);
        let reason = approval_reason(step, planned);
        self.append(JournalEntry::ApprovalRequested {
            at: now_iso(),
            step_id: step.id.clone(),
            approvers: names.clone(),
            reason: reason.clone(),
            expires_at: Some(expires_at.clone()),
        })
        .await?;
        self.execution.pending_approval = Some(PendingApproval {
            step_id: step.id.clone(),
            action: planned.action.clone(),
            kind: if step.action == Action::RequestApproval {
                ApprovalKind::RequestApproval
            } else {
                ApprovalKind::Step
            },
            approvers: names.clone(),
            allow_self_approval: approvers.allow_self_approval,
            reason: reason.clone(),
            explanation: planned.explanation.clone(),
            payload: planned.payload.clone(),
            plan_hash: self.view.plan_hash.clone(),
            requested_at: now_iso(),
            expires_at: Some(expires_at),
        });
        self.report_step(
            &step.id,
            &planned.action,
            "waiting_for_approval",
            self.state.attempt,
            None,
            json!({"approvers": names, "reason": reason}),
        );
        if self.runner.mode == Mode::Advisory {
            self.append(JournalEntry::ApprovalAnswered {
                at: now_iso(),
                step_id: step.id.clone(),
                decision: "approved".into(),
                actor: "dry run (assumed)".into(),
                reason: Some("a dry run assumes every approval is given".into()),
            })
            .await?;
            self.execution.pending_approval = None;
        }
        Ok(())
    }

    /// An intent without an outcome, found when resuming: `Ok(true)` runs the step again with
    /// the same key (its effect is safe to repeat), `Ok(false)` means the situation was settled
    /// (the step's run is there, or a person must answer).
    async fn recover_intent(&mut self, intent: super::state::OpenIntent) -> Result<bool, ExecuteError> {
        let graph = &self.playbook.graph;
        let Some(step) = graph.step(&intent.step_id) else {
            return Err(ExecuteError::Inconsistent {
                execution_id: self.execution.execution_id.clone(),
                problem: format!("step {} is not in the playbook", intent.step_id),
            });
        };
        if matches!(step.effect(), EffectClass::ReadOnly | EffectClass::Idempotent) {
            return Ok(true);
        }
        // A run the step reserved and created is proof that its effect happened.
        if let Some(run_id) = &intent.new_run_id
            && self.runner.store.get(run_id).await?.is_some()
        {
            self.append(JournalEntry::Outcome {
                at: now_iso(),
                step_id: intent.step_id.clone(),
                attempt: intent.attempt,
                idempotency_key: intent.idempotency_key.clone(),
                outcome: "ok".into(),
                created_run_id: Some(run_id.clone()),
                detail: json!({"recovered": "the run this step reserved exists: the step had completed before the interruption"}),
            })
            .await?;
            return Ok(false);
        }
        let question = format!(
            "Step {} ({}, {}) started (idempotency key {}) but its outcome was never recorded. Confirm whether the \
             external side effect partially happened: `salvage confirm {} {} --outcome ok` if it completed, \
             `--outcome failed` if it did not happen, or `--retry` to run it again.",
            intent.step_id,
            step.spec().name,
            intent.effect,
            intent.idempotency_key,
            self.execution.execution_id,
            intent.step_id
        );
        self.append(JournalEntry::OperatorNeeded {
            at: now_iso(),
            step_id: intent.step_id.clone(),
            attempt: intent.attempt,
            question,
        })
        .await?;
        Ok(false)
    }

    /// Every approval answer recorded in the journal, in order.
    async fn approvals_so_far(&self) -> Result<Vec<ApprovalAnswer>, ExecuteError> {
        let journal = self.runner.store.journal(self.id()).await?;
        Ok(journal_entries(self.id(), &journal)?
            .into_iter()
            .filter_map(|entry| match entry {
                JournalEntry::ApprovalAnswered { at, step_id, decision, actor, reason } => {
                    Some(ApprovalAnswer { step_id, decision, actor, reason, at })
                }
                _ => None,
            })
            .collect())
    }

    async fn stop_for_operator(&mut self) -> Result<(), ExecuteError> {
        let journal = self.runner.store.journal(self.id()).await?;
        let entries = journal_entries(self.id(), &journal)?;
        let question = entries.iter().rev().find_map(|entry| match entry {
            JournalEntry::OperatorNeeded { step_id, attempt, question, .. } => {
                Some((step_id.clone(), *attempt, question.clone()))
            }
            _ => None,
        });
        if let Some((step_id, attempt, question)) = question {
            let step = self.playbook.graph.step(&step_id);
            self.execution.operator_question = Some(OperatorQuestion {
                action: step.map(|s| s.spec().name.to_owned()).unwrap_or_default(),
                effect: step.map(|s| s.effect().as_str().to_owned()).unwrap_or_default(),
                idempotency_key: idempotency_key(&self.view.plan_id, &step_id, attempt),
                step_id,
                attempt,
                question,
            });
        }
        self.execution.status = ExecutionStatus::NeedsOperator;
        self.execution.lease = None;
        self.save().await
    }

    /// Runs one attempt of a step: intent, effect, outcome.
    async fn run_step(&mut self, step: &StepNode, planned: &PlannedStep) -> Result<(), ExecuteError> {
        let attempt = self.state.attempt;
        let key = idempotency_key(&self.view.plan_id, &step.id, attempt);
        let target_run = match planned.target.as_ref().or(step.params.target.as_ref()) {
            Some(target) => match self.state.created_runs.get(target) {
                Some(run_id) => run_id.clone(),
                None => {
                    let detail = json!({"error": format!("step {target} created no run to act on")});
                    return self.outcome(step, planned, attempt, &key, ActionResult::failed(detail)).await;
                }
            },
            None => self.view.run_id.clone(),
        };
        let resumed =
            self.state.open_intent.clone().filter(|intent| intent.step_id == step.id && intent.attempt == attempt);
        let new_run_id = match &resumed {
            Some(intent) => intent.new_run_id.clone(),
            None => reserved_run_id(step.action, &target_run),
        };
        // The decision that let this step run: its own approval, else the last approval given in
        // this execution (e.g. a request_approval step right before it).
        let journal_answers = self.approvals_so_far().await?;
        let answer = journal_answers
            .iter()
            .rev()
            .find(|a| a.step_id == step.id && a.decision == "approved")
            .or_else(|| journal_answers.iter().rev().find(|a| a.decision == "approved"))
            .cloned();
        let request = ActionRequest {
            execution_id: self.execution.execution_id.clone(),
            plan_id: self.view.plan_id.clone(),
            step_id: step.id.clone(),
            attempt,
            idempotency_key: key.clone(),
            action: step.action,
            plan_action: planned.action.clone(),
            run_id: target_run.clone(),
            payload: planned.payload.clone(),
            incident_type: self.view.incident_type.clone(),
            new_run_id: new_run_id.clone(),
            approval: answer.map(|a| serde_json::to_value(a).unwrap_or(Value::Null)),
        };
        if step.effect() != EffectClass::ReadOnly && resumed.is_none() {
            self.append(JournalEntry::Intent {
                at: now_iso(),
                step_id: step.id.clone(),
                attempt,
                action: step.spec().name.to_owned(),
                effect: step.effect().as_str().to_owned(),
                idempotency_key: key.clone(),
                run_id: target_run.clone(),
                new_run_id,
                request: serde_json::to_value(&request).unwrap_or(Value::Null),
            })
            .await?;
            crash_point("intent", &step.id);
        }
        let result = match self.perform(step, planned, &request).await {
            Ok(result) => result,
            Err(StepError::Runtime(error))
                if error.before_any_effect()
                    || matches!(step.effect(), EffectClass::ReadOnly | EffectClass::Idempotent) =>
            {
                ActionResult::failed(json!({"error": error.to_string()}))
            }
            Err(StepError::Runtime(error)) => {
                // The effect may or may not have happened: a person decides.
                let question = format!(
                    "Step {} ({}) could not be carried out cleanly: {error}. Confirm whether its effect happened: \
                     `salvage confirm {} {} --outcome ok|failed`, or `--retry`.",
                    step.id,
                    step.spec().name,
                    self.execution.execution_id,
                    step.id
                );
                self.report_step(
                    &step.id,
                    &planned.action,
                    "needs_operator",
                    attempt,
                    None,
                    json!({"error": error.to_string()}),
                );
                self.append(JournalEntry::OperatorNeeded {
                    at: now_iso(),
                    step_id: step.id.clone(),
                    attempt,
                    question,
                })
                .await?;
                return Ok(());
            }
            Err(StepError::Execute(error)) => return Err(error),
        };
        crash_point("effect", &step.id);
        self.outcome(step, planned, attempt, &key, result).await?;
        crash_point("outcome", &step.id);
        Ok(())
    }

    async fn outcome(
        &mut self,
        step: &StepNode,
        planned: &PlannedStep,
        attempt: u32,
        key: &str,
        result: ActionResult,
    ) -> Result<(), ExecuteError> {
        let outcome = if step.spec().outcomes.contains(&result.outcome.as_str()) {
            result.outcome.clone()
        } else {
            "failed".to_owned()
        };
        self.report_step(
            &step.id,
            &planned.action,
            &outcome,
            attempt,
            result.created_run_id.clone(),
            result.detail.clone(),
        );
        self.append(JournalEntry::Outcome {
            at: now_iso(),
            step_id: step.id.clone(),
            attempt,
            idempotency_key: key.to_owned(),
            outcome: outcome.clone(),
            created_run_id: result.created_run_id,
            detail: result.detail,
        })
        .await?;
        if outcome == "failed"
            && let Some(retry) = step.retry.filter(|retry| attempt < retry.max_attempts)
            && self.runner.mode == Mode::Enforce
        {
            tokio::time::sleep(retry.backoff).await;
        }
        Ok(())
    }

    /// The effect of a step.
    async fn perform(
        &mut self,
        step: &StepNode,
        planned: &PlannedStep,
        request: &ActionRequest,
    ) -> Result<ActionResult, StepError> {
        let store = self.runner.store.clone();
        let dry = self.runner.mode == Mode::Advisory;
        let check = |result: checks::CheckResult| ActionResult {
            outcome: result.outcome.to_owned(),
            created_run_id: None,
            detail: json!({"summary": result.summary, "details": result.details}),
        };
        let run = || async {
            store
                .get(&request.run_id)
                .await
                .map_err(|e| StepError::Execute(e.into()))?
                .map(|stored| stored.run)
                .ok_or_else(|| {
                    StepError::Runtime(RuntimeError::Failed {
                        runtime: "store".into(),
                        message: format!("run {} is not in the store", request.run_id),
                    })
                })
        };
        match step.action {
            Action::InspectReport => {
                let report =
                    inspect::create_report(store.as_ref(), &request.run_id, self.view.compare_to_run_id.as_deref())
                        .await
                        .map_err(|e| StepError::Execute(PlanError::from(e).into()))?;
                Ok(ActionResult::ok(
                    json!({"status": report.status, "failure": report.failure, "recommendations": report.recommendations}),
                ))
            }
            Action::InspectRunTree => {
                let run = run().await?;
                let ctx = self.context().await.map_err(StepError::Execute)?;
                let root_status = ctx.report().run_tree.as_ref().map(|root| root.status.clone());
                Ok(check(checks::inspect_run_tree(&run, root_status.as_ref())))
            }
            Action::CompareToKnownGood => {
                let ctx = self.context().await.map_err(StepError::Execute)?;
                Ok(check(checks::compare_to_known_good(ctx.report().comparison.as_ref())))
            }
            Action::VerifyPersisted => Ok(check(
                checks::verify_persisted(store.as_ref(), &run().await?)
                    .await
                    .map_err(|e| StepError::Execute(PlanError::from(e).into()))?,
            )),
            Action::CheckDuplicateDelivery => Ok(check(
                checks::check_duplicate_delivery(store.as_ref(), &run().await?)
                    .await
                    .map_err(|e| StepError::Execute(PlanError::from(e).into()))?,
            )),
            Action::CheckEnvelope => Ok(check(
                checks::check_envelope(store.as_ref(), &run().await?)
                    .await
                    .map_err(|e| StepError::Execute(PlanError::from(e).into()))?,
            )),
            Action::InspectSideEffects => {
                let ctx = self.context().await.map_err(StepError::Execute)?;
                Ok(check(checks::inspect_side_effects(ctx.run(), |tool| ctx.tool_effect(tool))))
            }
            Action::ExportBundle => self.export_bundle(planned, request, dry).await,
            Action::Notify => {
                let message = planned.payload.get("message").and_then(Value::as_str).unwrap_or_default().to_owned();
                tracing::warn!(target: "salvage::notify", execution = %request.execution_id, step = %request.step_id, "{message}");
                Ok(ActionResult::ok(json!({"message": message, "channel": planned.payload.get("channel")})))
            }
            Action::Wait => {
                let millis = planned.payload.get("durationMs").and_then(Value::as_u64).unwrap_or(0);
                if !dry {
                    tokio::time::sleep(Duration::from_millis(millis)).await;
                }
                Ok(ActionResult::ok(json!({"waitedMs": if dry { 0 } else { millis }})))
            }
            Action::RequestApproval => Ok(ActionResult::ok(Value::Null)),
            Action::ResolveApproval
            | Action::ResumeReplay
            | Action::ResumeRun
            | Action::BranchFromCheckpoint
            | Action::PartialReplay
            | Action::FrozenReplay
            | Action::CancelRun => {
                let run = run().await?;
                let runtime = self.runner.runtimes.resolve(&run).map_err(StepError::Runtime)?;
                if dry && runtime.acts_outside_the_store() {
                    return Ok(ActionResult {
                        outcome: planned.expected_outcome.clone(),
                        created_run_id: None,
                        detail: json!({"dryRun": true, "runtime": runtime.describe(), "wouldSend": request}),
                    });
                }
                runtime.perform(request, store.as_ref() as &dyn RunStore).await.map_err(StepError::Runtime)
            }
        }
    }

    async fn export_bundle(
        &mut self,
        planned: &PlannedStep,
        request: &ActionRequest,
        dry: bool,
    ) -> Result<ActionResult, StepError> {
        let ids: Vec<String> = planned
            .payload
            .get("runIds")
            .and_then(Value::as_array)
            .map(|ids| ids.iter().filter_map(|id| id.as_str().map(str::to_owned)).collect())
            .unwrap_or_else(|| vec![request.run_id.clone()]);
        let loaded = self.runner.store.get_many(&ids).await.map_err(|e| StepError::Execute(e.into()))?;
        let runs: Vec<crate::model::Run> = loaded.items.into_iter().map(|stored| stored.run).collect();
        let mut metadata = Map::new();
        metadata.insert("exportedFor".into(), json!("salvage recovery"));
        metadata.insert("executionId".into(), json!(request.execution_id));
        metadata.insert("planId".into(), json!(request.plan_id));
        let bundle = inspect::trace::export_bundle(&runs, metadata).to_value();
        let file = self
            .runner
            .settings
            .export_dir
            .join(&request.execution_id)
            .join(format!("{}-{}.bundle.json", request.step_id, request.attempt));
        let detail =
            json!({"file": file.display().to_string(), "runIds": runs.iter().map(|r| &r.id).collect::<Vec<_>>()});
        if dry {
            return Ok(ActionResult::ok(json!({"dryRun": true, "wouldWrite": detail})));
        }
        match write_atomically(&file, &bundle) {
            Ok(()) => Ok(ActionResult::ok(detail)),
            Err(error) => {
                Ok(ActionResult::failed(json!({"file": file.display().to_string(), "error": error.to_string()})))
            }
        }
    }

    async fn report(mut self) -> Result<ExecutionReport, ExecuteError> {
        let dry_run_runs = match &self.runner.overlay {
            Some(overlay) => overlay.written_runs().await?.iter().map(crate::model::Run::to_value).collect(),
            None => Vec::new(),
        };
        if self.execution.status == ExecutionStatus::Running
            && self.state.finished.is_none()
            && self.state.waiting.is_none()
            && self.state.operator_needed.is_none()
        {
            self.save().await?;
        }
        Ok(ExecutionReport { execution: self.execution, steps: self.steps, dry_run_runs })
    }
}

/// Failures while carrying out a step: a runtime that could not act, or the runner's own.
enum StepError {
    Runtime(RuntimeError),
    Execute(ExecuteError),
}

/// Why a step waits for a person, as the plan explains it.
fn approval_reason(step: &StepNode, planned: &PlannedStep) -> String {
    if step.action == Action::RequestApproval {
        return planned.reason.clone();
    }
    if step.action == Action::ResolveApproval && !planned.requires_approval {
        return "resolving a tool approval runs the gated tool: salvage never approves it on anyone's behalf"
            .to_owned();
    }
    let from_policy = planned.explanation.as_array().and_then(|decisions| {
        decisions.iter().find_map(|d| {
            (d["hook"] != "guard" && d["result"] == Value::Bool(true))
                .then(|| d["reason"].as_str().map(str::to_owned))
                .flatten()
        })
    });
    from_policy.unwrap_or_else(|| "Recovery action requires explicit approval.".to_owned())
}

/// The id a run-creating action will give its run, reserved in the journal before the action.
fn reserved_run_id(action: Action, source: &str) -> Option<String> {
    match action {
        Action::BranchFromCheckpoint => Some(uuid::Uuid::new_v4().to_string()),
        Action::PartialReplay => Some(format!("{source}:partial-replay:{}", unique_epoch_millis())),
        Action::FrozenReplay => Some(format!("{source}:replay:{}", unique_epoch_millis())),
        _ => None,
    }
}

fn write_atomically(path: &std::path::Path, value: &Value) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(serde_json::to_string_pretty(value).map_err(std::io::Error::other)?.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}
