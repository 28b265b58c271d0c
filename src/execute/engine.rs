//! The runner: walks a plan's recovery graph, one journalled step at a time.
//!
//! For every step with an effect: an `intent` entry (idempotency key, the id reserved for a
//! run it creates, what identifies a run the runtime will create) is durable before the effect,
//! an `outcome` entry after it. Before an effect on a run, the run is looked at again and the
//! step refused (a `failed` outcome, nothing sent) when it moved since the plan was made. A
//! step that needs a person pauses the execution until `answer` records a decision — one
//! compare-and-set append: the first answer wins. Resuming (after an approval, a crash, a
//! restart) rebuilds the position from the journal; a step found with an intent and no outcome
//! is settled by looking for its effect (the run it created, the run it moved); it is run again
//! only when its effect is `read_only` or `idempotent`, otherwise the execution stops in
//! `needs_operator` and asks what happened. An execution ends `resolved` only once the run it
//! recovered is seen `completed`; until then it is `handed_off`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use tracing::Instrument;

use super::config::{RuntimeRegistry, RuntimesConfig};
use super::discovery::{self, Discovery};
use super::fencing::ReplicaLease;
use super::overlay::Overlay;
use super::record::{ApprovalAnswer, Execution, ExecutionStatus, JournalEntry, Lease, Mode, Origin, execution_id_of};
use super::runtime::ResolveRuntime;
use super::session::Session;
use super::state::State;
use crate::model::json::{iso_millis, now_iso, parse_iso};
use crate::plan::{IncidentInputs, PlanError, PlanStep, Planner, PlaybookRef, RetryPolicy, hash_of};
use crate::playbook::{CompiledPlaybook, PlaybookSet};
use crate::policy::{Approvers, PolicySet};
use crate::store::{ExecutionDoc, Expected, JournalRecord, Revision, RunStore, Store, StoreError, StoredRun};

/// The state-document prefix recording which execution created a run (`owner/<run id>`): a
/// run a recovery made belongs to that recovery, never to a second one.
pub const OWNER_PREFIX: &str = "owner";

pub fn owner_key(run_id: &str) -> String {
    format!("{OWNER_PREFIX}/{run_id}")
}

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
    /// A `wait` / `await_run` step with more than this left to wait parks the execution
    /// (status `waiting`, `wakeAt`) instead of sleeping in the process: the daemon wakes it when
    /// due (or `salvage resume` continues it), and no worker or terminal is held meanwhile.
    /// `None`: always sleep in the process.
    pub park_after: Option<Duration>,
    /// How often `await_run` looks at the run it waits for.
    pub await_poll: Duration,
    /// How much earlier than a step's intent a run it created may say it was created (clocks of
    /// the runtime and of salvage differ).
    pub creation_skew: Duration,
    /// The lease this runner works under, when a replica of the daemon claimed the work in a
    /// shared store: its store is fenced by that lease (every write conditioned on its epoch),
    /// every effect is preceded by a check that the lease is still trusted, its epoch goes into
    /// every idempotency key handed to a runtime (`…@e<epoch>`), and another replica's process
    /// lease on the execution is not consulted (the fence decides between replicas).
    pub replica: Option<ReplicaLease>,
    /// Where notifications go (`salvage.yaml` `notifications:`); none configured: `notify`
    /// steps are only logged.
    pub notifications: Arc<super::notify::NotificationsConfig>,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        RunnerSettings {
            default_approvers: Vec::new(),
            allow_self_approval: false,
            default_approval_timeout: Duration::from_secs(4 * 3600),
            export_dir: PathBuf::from(".salvage/bundles"),
            lease_ttl: Duration::from_secs(60),
            park_after: Some(Duration::from_secs(10)),
            await_poll: Duration::from_secs(1),
            creation_skew: Duration::from_secs(60),
            replica: None,
            notifications: Arc::default(),
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

    #[error(
        "run {run_id} {} by execution {execution_id} ({status}{})",
        if *open { "is being recovered" } else { "was already recovered" },
        outcome.as_ref().map(|o| format!(", outcome {o}")).unwrap_or_default()
    )]
    #[diagnostic(
        code(salvage::apply::already_recovered),
        help(
            "one recovery per incident: `salvage executions` shows it. When it has finished and the run needs another \
             recovery, `salvage apply RUN --again` plans a new one on purpose"
        )
    )]
    AlreadyRecovered {
        run_id: String,
        execution_id: String,
        status: ExecutionStatus,
        outcome: Option<String>,
        open: bool,
    },

    #[error("run {run_id} was created by step {step_id} of execution {execution_id}, which is {status}")]
    #[diagnostic(
        code(salvage::apply::run_of_a_recovery),
        help(
            "a run a recovery made belongs to that recovery. Once it has finished, `salvage apply RUN --again` recovers \
             this run on its own"
        )
    )]
    RunOfARecovery { run_id: String, execution_id: String, step_id: String, status: String },

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

    #[error("{actor} started execution {execution_id}: their approval does not count towards its quorum of {quorum}")]
    #[diagnostic(
        code(salvage::approve::requester_does_not_count),
        help("{quorum} other approvers must approve (separation of duties: the requester never counts)")
    )]
    RequesterDoesNotCount { actor: String, execution_id: String, quorum: u32 },

    #[error("{actor:?} is not a name a person answers under: {problem}")]
    #[diagnostic(code(salvage::approve::bad_actor), help("give your name with --as NAME"))]
    BadActor { actor: String, problem: String },

    #[error("step {step_id} of execution {execution_id} was already answered: {answer} by {by} at {at}")]
    #[diagnostic(
        code(salvage::approve::already_answered),
        help("the first answer counts; `salvage executions --json` shows the execution as it stands")
    )]
    AnsweredBy { execution_id: String, step_id: String, answer: String, by: String, at: String },

    #[error("the approval of step {step_id} of execution {execution_id} is stale: {why}")]
    #[diagnostic(
        code(salvage::approve::stale),
        help(
            "read the approval again as it stands now (`salvage approvals --json`, or reload the page) and answer that"
        )
    )]
    StaleApproval { execution_id: String, step_id: String, why: String },

    #[error("the {what} changed since the plan was made ({planned} → {current})")]
    #[diagnostic(code(salvage::apply::sets_changed), help("plan again with the current playbooks and policies"))]
    SetsChanged { what: String, planned: String, current: String },

    #[error("execution {execution_id}: {problem}")]
    #[diagnostic(
        code(salvage::execution::inconsistent),
        help(
            "if the execution cannot go on, `salvage abandon EXECUTION --as NAME --reason WHY` closes it as it stands \
             (its journal is kept); then recover the run again with `salvage apply RUN --again`"
        )
    )]
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

    #[error("the runtimes execution {execution_id} started with cannot be used: {problem}")]
    #[diagnostic(
        code(salvage::execution::pinned_runtimes),
        help(
            "an execution acts through the runtimes it started with; fix what the message names (an environment variable, a CA file) and resume"
        )
    )]
    PinnedRuntimes { execution_id: String, problem: String },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] PlanError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),
}

impl ExecuteError {
    /// The store error underneath, however deep (planning reads through the inspector): a
    /// daemon tells "the store went away mid-way" from "this cannot be done" by it.
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            ExecuteError::Store(error)
            | ExecuteError::Plan(PlanError::Store(error))
            | ExecuteError::Plan(PlanError::Inspect(crate::inspect::InspectError::Store(error))) => Some(error),
            _ => None,
        }
    }
}

/// The fields of a plan the runner reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PlanView {
    pub plan_id: String,
    pub plan_hash: String,
    pub run_id: String,
    pub run_revision: u64,
    pub status: String,
    pub incident_type: String,
    pub compare_to_run_id: Option<String>,
    pub playbook: Option<PlaybookRef>,
    pub policy_digest: String,
    pub playbook_set_digest: String,
    pub steps: Vec<PlannedStep>,
    pub path: Vec<PlannedPath>,
}

impl PlanView {
    /// Reads the runner's fields of a plan without copying the plan first.
    pub(crate) fn of(plan: &Value) -> Result<PlanView, ExecuteError> {
        PlanView::deserialize(plan).map_err(|error| ExecuteError::BadPlan { reason: error.to_string() })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PlannedPath {
    pub node: String,
    pub transition: String,
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
    /// Distinct approvers needed (plans leave a quorum of 1 out).
    #[serde(default = "super::record::one")]
    pub quorum: u32,
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
            quorum: step.quorum,
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
    /// What the operator should know beyond the steps (a pinned runtime set that differs from
    /// the local salvage.yaml, late answers ignored, …).
    pub notes: Vec<String>,
}

/// An approval answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny,
}

impl Decision {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approved",
            Decision::Deny => "denied",
        }
    }
}

/// What a person confirms about an interrupted step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// The step had this outcome (`ok` if its effect happened, `failed` if it did not), and for
    /// a run-creating step, the run it created when the person knows it.
    Outcome { outcome: String, created: Option<String> },
    /// Run it again, as a new attempt (a run-creating step first looks for the run an earlier
    /// attempt made).
    Retry,
}

/// How `apply` treats a run that was recovered before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Recover again on purpose although an earlier execution recovered the run (or the run
    /// was created by a recovery). An execution still open is never overridden.
    pub again: bool,
}

/// What `confirm` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmOutcome {
    Recorded,
    /// The same confirmation was already recorded (by this actor).
    AlreadyConfirmed {
        by: String,
        at: String,
    },
}

/// Executes plans against a store with the policy and playbook sets they were made with.
#[derive(Debug, Clone)]
pub struct Runner {
    pub(crate) store: Arc<dyn Store>,
    /// The dry run's overlay (advisory mode), also reachable through `store`.
    pub(crate) overlay: Option<Arc<Overlay>>,
    pub(crate) policies: Arc<PolicySet>,
    pub(crate) playbooks: Arc<PlaybookSet>,
    pub(crate) runtimes: Arc<dyn ResolveRuntime>,
    pub(crate) settings: RunnerSettings,
    pub(crate) mode: Mode,
    pub(crate) actor: String,
    /// Set by a process shutting down: the runner stops between steps (the execution stays
    /// `running`, its journal complete up to the last step) and `resume` continues it later.
    pub(crate) stop: Option<Arc<AtomicBool>>,
    /// Where this runner's actions come from, recorded in the journal (`None`: not said).
    pub(crate) origin: Option<Origin>,
}

/// Where a test asks the runner to crash (`SALVAGE_TEST_CRASH_AT=intent:STEP`, `effect:STEP`,
/// `outcome:STEP` or `answered:STEP`): the process aborts right after that journal point, as a
/// crash would.
const CRASH_SWITCH: &str = "SALVAGE_TEST_CRASH_AT";

pub(crate) fn crash_point(point: &str, step_id: &str) {
    if let Ok(wanted) = std::env::var(CRASH_SWITCH)
        && wanted == format!("{point}:{step_id}")
    {
        tracing::error!(point, step_id, "Crashing on purpose ({CRASH_SWITCH}).");
        std::process::abort();
    }
}

/// This machine's name, read once: leases, claims and status documents name it, and a
/// daemon records one per incident.
pub(crate) fn hostname() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "localhost".to_owned())
    })
    .clone()
}

/// `now + duration`, as an ISO timestamp; far-future durations end at the end of the
/// representable range instead of overflowing.
pub(crate) fn later(duration: Duration) -> String {
    let now = time::OffsetDateTime::now_utc();
    let bounded = crate::limits::bounded_sleep(duration);
    let at =
        crate::limits::deadline_after(now, bounded).unwrap_or(time::macros::datetime!(9999-12-31 23:59:59.999 UTC));
    iso_millis(at)
}

pub(crate) fn is_past(at: &str) -> bool {
    parse_iso(at).is_some_and(|at| at <= time::OffsetDateTime::now_utc())
}

/// Time left until `at` (zero when past; `at` unreadable: zero).
pub(crate) fn until(at: &str) -> Duration {
    parse_iso(at)
        .map(|at| at - time::OffsetDateTime::now_utc())
        .and_then(|left| Duration::try_from(left).ok())
        .unwrap_or(Duration::ZERO)
}

/// A name an answer is recorded under (the rules of [`crate::limits::validate_approver_name`]).
pub(crate) fn check_actor(actor: &str) -> Result<(), ExecuteError> {
    crate::limits::validate_approver_name(actor)
        .map_err(|error| ExecuteError::BadActor { actor: actor.to_owned(), problem: error.to_string() })
}

/// Every duration a plan carries (approval timeouts, waits, awaits, retry backoffs) within the
/// language's maximum: a plan written or edited by hand cannot make the runner wait for ever.
fn check_plan_durations(view: &PlanView) -> Result<(), ExecuteError> {
    for step in &view.steps {
        let mut millis = vec![("timeout", step.timeout_ms)];
        millis.push(("retry backoff", step.retry.map(|r| r.backoff_ms)));
        for key in ["durationMs", "timeoutMs"] {
            millis.push((key, step.payload.get(key).and_then(Value::as_u64)));
        }
        for (what, value) in millis {
            if let Some(value) = value
                && let Err(error) = crate::limits::check_duration(Duration::from_millis(value))
            {
                return Err(ExecuteError::BadPlan { reason: format!("step {}: its {what}: {error}", step.id) });
            }
        }
    }
    Ok(())
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
        Runner {
            store,
            overlay,
            policies,
            playbooks,
            runtimes,
            settings,
            mode,
            actor: actor.into(),
            stop: None,
            origin: None,
        }
    }

    /// The same runner, recording in the journal where its actions come from (the CLI, the
    /// daemon) for the audit log.
    pub fn with_origin(mut self, origin: Origin) -> Runner {
        self.origin = Some(origin);
        self
    }

    /// The same runner, stopping between steps once `stop` is set (graceful shutdown).
    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> Runner {
        self.stop = Some(stop);
        self
    }

    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.as_ref().is_some_and(|stop| stop.load(Ordering::SeqCst))
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub(crate) fn planner(&self) -> Planner {
        Planner::new(self.store.clone() as Arc<dyn RunStore>, self.policies.clone(), self.playbooks.clone())
    }

    /// Applies a plan (as JSON, e.g. read from a plan file): refuses a stale or changed plan and
    /// a run that was (or is being) recovered, creates the execution (once per plan) and runs it
    /// until it ends or waits.
    pub async fn apply(&self, plan: &Value) -> Result<ExecutionReport, ExecuteError> {
        self.apply_with(plan, ApplyOptions::default()).await
    }

    /// [`Runner::apply`] with options (`--again`).
    pub async fn apply_with(&self, plan: &Value, options: ApplyOptions) -> Result<ExecutionReport, ExecuteError> {
        self.apply_untraced(plan.clone(), options, None).instrument(self.apply_span()).await
    }

    fn apply_span(&self) -> tracing::Span {
        tracing::info_span!(
            "execution",
            operation = "apply",
            execution_id = tracing::field::Empty,
            mode = self.mode.as_str()
        )
    }

    /// [`Runner::apply`] for a plan just made from `incident` (by
    /// [`Planner::plan_stored_with_inputs`]): while the run is still at the revision the plan
    /// was made at, the execution decides and reports from what the planner read instead of
    /// reading and reporting the incident again (the daemon's dry run of each new incident).
    /// The plan is kept in the execution record as it is (not copied): the report's
    /// `execution.plan` gives it back.
    pub async fn apply_planned(&self, plan: Value, incident: &IncidentInputs) -> Result<ExecutionReport, ExecuteError> {
        self.apply_untraced(plan, ApplyOptions::default(), Some(incident)).instrument(self.apply_span()).await
    }

    async fn apply_untraced(
        &self,
        plan: Value,
        options: ApplyOptions,
        incident: Option<&IncidentInputs>,
    ) -> Result<ExecutionReport, ExecuteError> {
        check_actor(&self.actor)?;
        let view = PlanView::of(&plan)?;
        check_plan_durations(&view)?;
        self.check_fresh(&plan, &view).await?;
        let execution_id = execution_id_of(&view.plan_id, self.mode);
        tracing::Span::current().record("execution_id", execution_id.as_str());
        self.check_not_recovered(&view.run_id, &execution_id, options).await?;
        let now = now_iso();
        let mut execution = Execution {
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
            plan,
            runtimes: self.runtimes.pinned(),
            wake_at: None,
            follow_up: None,
        };
        let revision = match self.store.put_execution(doc_of(&mut execution), Expected::Absent).await {
            Ok(revision) => {
                crate::telemetry::execution_reached(self.mode.as_str(), ExecutionStatus::Running.as_str());
                revision
            }
            Err(StoreError::Conflict { .. }) => return Err(self.already_applied(&view.plan_id, &execution_id).await),
            Err(error) => return Err(error.into()),
        };
        let mut session = Session::new(self, execution, revision, &view, self.runtimes.clone())?;
        // `check_fresh` found the run at the plan's revision: what the planner read is current.
        if let Some(incident) = incident.filter(|incident| {
            incident.revision().0 == view.run_revision
                && incident.run().id == view.run_id
                && incident.context().compare_to() == view.compare_to_run_id.as_deref()
        }) {
            session.know_incident(incident.context());
            if let Some(overlay) = &self.overlay {
                overlay.know_base_run(StoredRun { run: incident.run().clone(), revision: incident.revision() });
            }
        }
        session
            .append(JournalEntry::Started {
                at: now,
                actor: self.actor.clone(),
                plan_id: view.plan_id.clone(),
                plan_hash: view.plan_hash.clone(),
                policy_digest: view.policy_digest.clone(),
                playbook_set_digest: view.playbook_set_digest.clone(),
                mode: self.mode,
                traceparent: crate::trace_context::traceparent_of(&tracing::Span::current()),
                origin: self.origin.clone(),
            })
            .await?;
        session.drive().await?;
        session.report().await
    }

    /// One recovery per incident: an earlier execution of the run (other than this plan's
    /// own), or a recovery that created the run, refuses a new one unless `again` — and an
    /// execution still open always does.
    async fn check_not_recovered(
        &self,
        run_id: &str,
        execution_id: &str,
        options: ApplyOptions,
    ) -> Result<(), ExecuteError> {
        let mut earlier = Vec::new();
        for stored in self.store.executions_of_run(run_id).await? {
            if stored.doc.id == execution_id {
                continue;
            }
            let Ok(existing) = execution_of(&stored.doc) else { continue };
            if existing.mode == Mode::Enforce {
                earlier.push(existing);
            }
        }
        if let Some(open) = earlier.iter().rev().find(|e| !e.status.is_finished()) {
            return Err(ExecuteError::AlreadyRecovered {
                run_id: run_id.to_owned(),
                execution_id: open.execution_id.clone(),
                status: open.status,
                outcome: open.outcome.clone(),
                open: true,
            });
        }
        if let Some(owner) = self.store.get_state(&owner_key(run_id)).await?
            && let Some(owner_execution) = owner.body["executionId"].as_str()
        {
            let status = match self.store.get_execution(owner_execution).await? {
                Some(stored) => execution_of(&stored.doc).map(|e| e.status).ok(),
                None => None,
            };
            let open = status.is_some_and(|status| !status.is_finished());
            if open || !options.again {
                return Err(ExecuteError::RunOfARecovery {
                    run_id: run_id.to_owned(),
                    execution_id: owner_execution.to_owned(),
                    step_id: owner.body["stepId"].as_str().unwrap_or_default().to_owned(),
                    status: status.map_or_else(|| "gone".to_owned(), |s| s.to_string()),
                });
            }
        }
        if let Some(last) = earlier.last()
            && !options.again
        {
            return Err(ExecuteError::AlreadyRecovered {
                run_id: run_id.to_owned(),
                execution_id: last.execution_id.clone(),
                status: last.status,
                outcome: last.outcome.clone(),
                open: false,
            });
        }
        Ok(())
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
        // The revision and status, without decoding the run where the store's index is current.
        match self.store.current_entry(&view.run_id).await? {
            None => changes.push(format!("run {} is no longer in the store", view.run_id)),
            Some(entry) if entry.revision.0 != view.run_revision => changes.push(format!(
                "run {} changed since the plan was made: revision {} → {}, status {} → {}",
                view.run_id, view.run_revision, entry.revision, view.status, entry.status
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
    pub(crate) fn check_sets(&self, view: &PlanView) -> Result<(), ExecuteError> {
        if self.policies.digest() != view.policy_digest {
            return Err(ExecuteError::SetsChanged {
                what: "policy set".into(),
                planned: short_digest(&view.policy_digest),
                current: short_digest(self.policies.digest()),
            });
        }
        if let Some(planned) = &view.playbook {
            let current = self.playbooks.get(&planned.name);
            match current {
                Some(playbook) if playbook.digest == planned.digest => {}
                Some(playbook) => {
                    return Err(ExecuteError::SetsChanged {
                        what: format!("playbook {}", planned.name),
                        planned: short_digest(&planned.digest),
                        current: short_digest(&playbook.digest),
                    });
                }
                None => {
                    return Err(ExecuteError::SetsChanged {
                        what: format!("playbook {}", planned.name),
                        planned: short_digest(&planned.digest),
                        current: "no such playbook".into(),
                    });
                }
            }
        }
        Ok(())
    }

    pub(crate) fn lease(&self) -> Lease {
        Lease {
            host: hostname(),
            pid: std::process::id(),
            expires_at: later(self.settings.lease_ttl),
            epoch: self.settings.replica.as_ref().map(ReplicaLease::epoch),
        }
    }

    /// Runs `work` on an existing execution in an `execution` span that continues the trace
    /// the execution started in (its journal's `traceparent`), whichever process or replica
    /// started it.
    async fn traced<T>(&self, operation: &'static str, execution_id: &str, work: impl Future<Output = T>) -> T {
        let span = tracing::info_span!("execution", operation, execution_id, mode = self.mode.as_str());
        if crate::trace_context::exporting()
            && let Some(traceparent) = self.started_traceparent(execution_id).await
        {
            crate::trace_context::continue_trace(&span, &traceparent);
        }
        work.instrument(span).await
    }

    /// The `traceparent` the execution's `started` entry recorded, if any (a journal that
    /// cannot be read here is reported by the work itself).
    async fn started_traceparent(&self, execution_id: &str) -> Option<String> {
        let journal = self.store.journal(execution_id).await.ok()?;
        journal_entries(execution_id, &journal).ok()?.into_iter().find_map(|entry| match entry {
            JournalEntry::Started { traceparent, .. } => traceparent,
            _ => None,
        })
    }

    pub(crate) async fn load(&self, execution_id: &str) -> Result<(Execution, Revision), ExecuteError> {
        let stored = self
            .store
            .get_execution(execution_id)
            .await?
            .ok_or_else(|| ExecuteError::NotFound { execution_id: execution_id.to_owned() })?;
        Ok((execution_of(&stored.doc)?, stored.revision))
    }

    /// The runtimes an execution acts through: the set it was started with, rebuilt when it
    /// differs from this runner's (and a note says so); this runner's for executions that
    /// recorded none.
    fn runtimes_of(
        &self,
        execution: &Execution,
        notes: &mut Vec<String>,
    ) -> Result<Arc<dyn ResolveRuntime>, ExecuteError> {
        let Some(pinned) = &execution.runtimes else { return Ok(self.runtimes.clone()) };
        let local = self.runtimes.pinned();
        if local.as_ref().is_some_and(|local| local.digest == pinned.digest) {
            return Ok(self.runtimes.clone());
        }
        let problem =
            |problem: String| ExecuteError::PinnedRuntimes { execution_id: execution.execution_id.clone(), problem };
        let config = RuntimesConfig::from_pinned(pinned).map_err(|e| problem(e.to_string()))?;
        let registry = RuntimeRegistry::from_config(&config).map_err(|e| problem(e.to_string()))?;
        notes.push(format!(
            "execution {} acts through the runtimes it started with (digest {}); the local salvage.yaml's runtimes \
             (digest {}) differ and are not used",
            execution.execution_id,
            short_digest(&pinned.digest),
            local.map_or_else(|| "none".to_owned(), |l| short_digest(&l.digest))
        ));
        Ok(Arc::new(registry))
    }

    /// The playbook graph state of an execution, from its journal.
    pub(crate) async fn replayed(
        &self,
        execution: &Execution,
    ) -> Result<(State, Vec<JournalRecord>, Vec<JournalEntry>), ExecuteError> {
        let playbook = self.playbook_of(execution)?;
        let journal = self.store.journal(&execution.execution_id).await?;
        let entries = journal_entries(&execution.execution_id, &journal)?;
        let mut state = State::new(&playbook.graph);
        for entry in &entries {
            state.apply(&playbook.graph, entry).map_err(|error| ExecuteError::Inconsistent {
                execution_id: execution.execution_id.clone(),
                problem: error.to_string(),
            })?;
        }
        Ok((state, journal, entries))
    }

    /// Continues an execution: after approvals, after a crash, after a restart. A `handed_off`
    /// execution is followed up instead (its run looked at once).
    pub async fn resume(&self, execution_id: &str) -> Result<ExecutionReport, ExecuteError> {
        self.traced("resume", execution_id, self.resume_untraced(execution_id)).await
    }

    async fn resume_untraced(&self, execution_id: &str) -> Result<ExecutionReport, ExecuteError> {
        let (mut execution, revision) = self.load(execution_id).await?;
        if execution.status == ExecutionStatus::HandedOff {
            return self.follow_up_untraced(execution_id).await;
        }
        // Between replicas the fenced store refuses a stale owner; a process lease taken by a
        // person's command (no epoch) is respected by everyone.
        let replicas_only =
            self.settings.replica.is_some() && execution.lease.as_ref().is_none_or(|lease| lease.epoch.is_some());
        if !replicas_only
            && let Some(lease) = execution.lease.as_ref().filter(|lease| lease_is_live(lease))
            && !(lease.pid == std::process::id() && lease.host == hostname())
        {
            return Err(ExecuteError::Busy {
                execution_id: execution_id.to_owned(),
                holder: format!("pid {} on {}", lease.pid, lease.host),
            });
        }
        let view = PlanView::of(&execution.plan)?;
        self.check_sets(&view)?;
        let mut notes = Vec::new();
        let runtimes = self.runtimes_of(&execution, &mut notes)?;
        execution.lease = Some(self.lease());
        // Running from now on (until it waits or ends again): a process that dies meanwhile
        // leaves a `running` execution whose lease is dead, which the daemon takes over.
        execution.status = ExecutionStatus::Running;
        execution.wake_at = None;
        let mut session = Session::new(self, execution, revision, &view, runtimes)?;
        session.notes = notes;
        session.replay().await?;
        session.save().await?;
        session.drive().await?;
        session.report().await
    }

    /// Looks at the run a `handed_off` execution waits on: `completed` turns it `resolved`;
    /// failed, cancelled or waiting for someone again turns it `escalated` (the run is then a
    /// new incident linked to it); anything else leaves it handed off, the check recorded.
    pub async fn follow_up(&self, execution_id: &str) -> Result<ExecutionReport, ExecuteError> {
        self.traced("follow_up", execution_id, self.follow_up_untraced(execution_id)).await
    }

    async fn follow_up_untraced(&self, execution_id: &str) -> Result<ExecutionReport, ExecuteError> {
        let (execution, revision) = self.load(execution_id).await?;
        let view = PlanView::of(&execution.plan)?;
        let mut notes = Vec::new();
        let runtimes = self.runtimes_of(&execution, &mut notes)?;
        let mut session = Session::new(self, execution, revision, &view, runtimes)?;
        session.notes = notes;
        session.replay().await?;
        session.follow_up().await?;
        session.report().await
    }

    /// Records a person's answer to the approval an execution waits for: one compare-and-set
    /// append at the journal's next position while the question is open. The same answer again
    /// changes nothing; a different answer after the first is refused with who answered.
    pub async fn answer(
        &self,
        execution_id: &str,
        step_id: &str,
        decision: Decision,
        reason: Option<String>,
    ) -> Result<AnswerOutcome, ExecuteError> {
        self.traced("answer", execution_id, self.answer_untraced(execution_id, step_id, decision, reason)).await
    }

    async fn answer_untraced(
        &self,
        execution_id: &str,
        step_id: &str,
        decision: Decision,
        reason: Option<String>,
    ) -> Result<AnswerOutcome, ExecuteError> {
        check_actor(&self.actor)?;
        loop {
            let (execution, _) = self.load(execution_id).await?;
            let (state, journal, entries) = self.replayed(&execution).await?;
            if state.waiting.as_deref() != Some(step_id) {
                // Answered already (or never asked): who answered the step's last request?
                let last_request = entries
                    .iter()
                    .rposition(|e| matches!(e, JournalEntry::ApprovalRequested { step_id: s, .. } if s == step_id));
                let given: Vec<(String, String, String)> = last_request
                    .map(|index| {
                        entries[index..]
                            .iter()
                            .filter_map(|e| match e {
                                JournalEntry::ApprovalAnswered { step_id: s, decision, actor, at, .. }
                                    if s == step_id =>
                                {
                                    Some((decision.clone(), actor.clone(), at.clone()))
                                }
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let quorum = last_request
                    .and_then(|index| match &entries[index] {
                        JournalEntry::ApprovalRequested { quorum, .. } => Some(*quorum),
                        _ => None,
                    })
                    .unwrap_or(1);
                if let Some(deciding) = deciding_answer(&given, quorum) {
                    // The same answer by the same person (one of a quorum's approvals, say)
                    // changes nothing; answers after the deciding one never counted.
                    if let Some((_, by, at)) = given[..=deciding]
                        .iter()
                        .find(|(existing, by, _)| existing == decision.as_str() && *by == self.actor)
                    {
                        return Ok(AnswerOutcome::AlreadyAnswered { by: by.clone(), at: at.clone() });
                    }
                    let (existing, by, at) = given[deciding].clone();
                    return Err(ExecuteError::AnsweredBy {
                        execution_id: execution_id.to_owned(),
                        step_id: step_id.to_owned(),
                        answer: existing,
                        by,
                        at,
                    });
                }
                let state_text = match (&state.waiting, execution.status) {
                    (Some(other), _) => format!("waits for an approval of step {other}, not of step {step_id}"),
                    (None, status) => format!("does not wait for an approval (it is {status})"),
                };
                return Err(ExecuteError::NotWaiting { execution_id: execution_id.to_owned(), state: state_text });
            }
            let requested = entries.iter().rev().find_map(|e| match e {
                JournalEntry::ApprovalRequested { step_id: s, approvers, expires_at, .. } if s == step_id => {
                    Some((approvers.clone(), expires_at.clone()))
                }
                _ => None,
            });
            let pending = execution.pending_approval.clone().filter(|p| p.step_id == step_id);
            let (approvers, expires_at) = match (&pending, requested) {
                (Some(pending), _) => (pending.approvers.clone(), pending.expires_at.clone()),
                (None, Some(requested)) => requested,
                (None, None) => (Vec::new(), None),
            };
            // The journal's request says the quorum (the record only summarises it).
            let quorum = state.quorum.max(1);
            let allow_self =
                pending.as_ref().is_some_and(|p| p.allow_self_approval) || self.settings.allow_self_approval;
            if expires_at.as_deref().is_some_and(is_past) {
                self.expire(execution_id).await?;
                return Ok(AnswerOutcome::Expired { at: expires_at.unwrap_or_default() });
            }
            let approvers: Vec<String> =
                if approvers.is_empty() { self.settings.default_approvers.clone() } else { approvers };
            let approvers: Vec<String> = approvers.into_iter().filter(|name| check_actor(name).is_ok()).collect();
            if approvers.is_empty() {
                return Err(ExecuteError::NoApprovers { step_id: step_id.to_owned() });
            }
            // An approver who already approved this request is counted once.
            if decision == Decision::Approve
                && let Some((by, at)) = state.approvals.iter().find(|(name, _)| *name == self.actor)
            {
                return Ok(AnswerOutcome::AlreadyAnswered { by: by.clone(), at: at.clone() });
            }
            let refused = if !approvers.contains(&self.actor) {
                Some(ExecuteError::NotAnApprover { actor: self.actor.clone(), step_id: step_id.to_owned(), approvers })
            } else if decision == Decision::Approve && self.actor == execution.started_by && !allow_self {
                Some(ExecuteError::SelfApproval { actor: self.actor.clone(), execution_id: execution_id.to_owned() })
            } else if decision == Decision::Approve && self.actor == execution.started_by && quorum > 1 {
                // Allowed to approve alone, but never one of several: separation of duties.
                Some(ExecuteError::RequesterDoesNotCount {
                    actor: self.actor.clone(),
                    execution_id: execution_id.to_owned(),
                    quorum,
                })
            } else {
                None
            };
            if let Some(refusal) = refused {
                // The refusal is kept for the audit log, at the journal's next position like
                // any answer (someone answering meanwhile: look again).
                let entry = JournalEntry::AnswerRefused {
                    at: now_iso(),
                    step_id: step_id.to_owned(),
                    decision: decision.as_str().to_owned(),
                    actor: self.actor.clone(),
                    refusal: refusal.to_string(),
                    origin: self.origin.clone(),
                };
                let record = entry.record(execution_id, state.next_seq);
                match self.store.append_journal(&record).await {
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(error) => {
                        tracing::warn!(execution_id, %error, "Cannot record the refused answer in the journal.");
                    }
                    Ok(()) => {}
                }
                return Err(refusal);
            }
            let at = now_iso();
            let entry = JournalEntry::ApprovalAnswered {
                at: at.clone(),
                step_id: step_id.to_owned(),
                decision: decision.as_str().to_owned(),
                actor: self.actor.clone(),
                reason: reason.clone(),
                origin: self.origin.clone(),
            };
            let record = entry.record(execution_id, state.next_seq);
            debug_assert_eq!(state.next_seq, journal.len() as u64 + 1);
            match self.store.append_journal(&record).await {
                // Someone else answered (or the runner moved) meanwhile: look again.
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
                Ok(()) => {}
            }
            crash_point("answered", step_id);
            let answer = ApprovalAnswer {
                step_id: step_id.to_owned(),
                decision: decision.as_str().to_owned(),
                actor: self.actor.clone(),
                reason,
                at,
            };
            let approvals = state.approvals.len() as u32 + 1;
            if decision == Decision::Approve && approvals < quorum {
                let mut approved_by: Vec<String> = state.approvals.iter().map(|(name, _)| name.clone()).collect();
                approved_by.push(self.actor.clone());
                self.record_answer(execution_id, &answer, Some(approved_by)).await?;
                return Ok(AnswerOutcome::Counted { approvals, quorum });
            }
            self.record_answer(execution_id, &answer, None).await?;
            return Ok(AnswerOutcome::Recorded);
        }
    }

    /// Keeps an answer on the execution record and on the incident run (`metadata.recovery.approvals`);
    /// `approved_by` (a quorum not yet complete) is who approved the pending request so far.
    async fn record_answer(
        &self,
        execution_id: &str,
        answer: &ApprovalAnswer,
        approved_by: Option<Vec<String>>,
    ) -> Result<(), ExecuteError> {
        loop {
            let (mut execution, revision) = self.load(execution_id).await?;
            if !execution.answers.contains(answer) {
                execution.answers.push(answer.clone());
            }
            if let Some(names) = &approved_by
                && let Some(pending) = execution.pending_approval.as_mut().filter(|p| p.step_id == answer.step_id)
            {
                pending.approved_by = names.clone();
            }
            execution.updated_at = now_iso();
            match self.store.put_execution(doc_of(&mut execution), Expected::Revision(revision)).await {
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
        let Some(pending) = execution.pending_approval.clone().filter(|p| p.expires_at.as_deref().is_some_and(is_past))
        else {
            return Ok(false);
        };
        let (state, _, _) = self.replayed(&execution).await?;
        if state.waiting.as_deref() != Some(pending.step_id.as_str()) {
            return Ok(false);
        }
        let at = now_iso();
        let reason = format!("nobody answered before {}", pending.expires_at.clone().unwrap_or_default());
        let entry = JournalEntry::ApprovalAnswered {
            at: at.clone(),
            step_id: pending.step_id.clone(),
            decision: "timeout".into(),
            actor: "salvage".into(),
            reason: Some(reason.clone()),
            origin: self.origin.clone(),
        };
        let record = entry.record(execution_id, state.next_seq);
        match self.store.append_journal(&record).await {
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(error) => Err(error.into()),
            Ok(()) => {
                let answer = ApprovalAnswer {
                    step_id: pending.step_id,
                    decision: "timeout".into(),
                    actor: "salvage".into(),
                    reason: Some(reason),
                    at,
                };
                self.record_answer(execution_id, &answer, None).await?;
                Ok(true)
            }
        }
    }

    /// Records what a person says about a step that was interrupted (`needs_operator`): one
    /// compare-and-set append while the question is open, after checking that the execution
    /// can go on with this runner's sets (so that an answer is never recorded for a resume
    /// that cannot happen). For a run-creating step, `--outcome ok` names the run it created,
    /// or salvage finds it.
    pub async fn confirm(
        &self,
        execution_id: &str,
        step_id: &str,
        confirmation: Confirmation,
        reason: Option<String>,
    ) -> Result<ConfirmOutcome, ExecuteError> {
        self.traced("confirm", execution_id, self.confirm_untraced(execution_id, step_id, confirmation, reason)).await
    }

    async fn confirm_untraced(
        &self,
        execution_id: &str,
        step_id: &str,
        confirmation: Confirmation,
        reason: Option<String>,
    ) -> Result<ConfirmOutcome, ExecuteError> {
        check_actor(&self.actor)?;
        loop {
            let confirmation = confirmation.clone();
            let reason = reason.clone();
            let (execution, _) = self.load(execution_id).await?;
            let view = PlanView::of(&execution.plan)?;
            self.check_sets(&view)?;
            let mut notes = Vec::new();
            let runtimes = self.runtimes_of(&execution, &mut notes)?;
            let invalid = |problem: String| ExecuteError::InvalidConfirmation {
                execution_id: execution_id.to_owned(),
                step_id: step_id.to_owned(),
                problem,
            };
            let playbook = self.playbook_of(&execution)?;
            let (state, _, entries) = self.replayed(&execution).await?;
            let Some((_, attempt)) = state.operator_needed.clone().filter(|(s, _)| s == step_id) else {
                let earlier = entries.iter().rev().find_map(|e| match e {
                    JournalEntry::OperatorConfirmed { step_id: s, actor, at, outcome, .. } if s == step_id => {
                        Some((actor.clone(), at.clone(), outcome.clone()))
                    }
                    _ => None,
                });
                return match earlier {
                    Some((by, at, outcome)) => {
                        let same = by == self.actor
                            && match (&confirmation, &outcome) {
                                (Confirmation::Retry, None) => true,
                                (Confirmation::Outcome { outcome: mine, .. }, Some(theirs)) => mine == theirs,
                                _ => false,
                            };
                        if same {
                            Ok(ConfirmOutcome::AlreadyConfirmed { by, at })
                        } else {
                            Err(ExecuteError::AnsweredBy {
                                execution_id: execution_id.to_owned(),
                                step_id: step_id.to_owned(),
                                answer: outcome.map_or_else(|| "retry".to_owned(), |o| format!("outcome {o}")),
                                by,
                                at,
                            })
                        }
                    }
                    None => Err(invalid(format!("has no question waiting (the execution is {})", execution.status))),
                };
            };
            let step = playbook.graph.step(step_id).ok_or_else(|| invalid("is not in the playbook".into()))?;
            let mut created_run_id = None;
            let outcome = match confirmation {
                Confirmation::Retry => None,
                Confirmation::Outcome { outcome, created } => {
                    let outcomes = step.spec().outcomes;
                    if !outcomes.contains(&outcome.as_str()) {
                        return Err(invalid(format!(
                            "cannot have outcome `{outcome}`; its outcomes are {}",
                            outcomes.join(", ")
                        )));
                    }
                    let creates = step.spec().creates_run;
                    if created.is_some() && !creates {
                        return Err(invalid(format!(
                            "is a `{}` step, which creates no run: leave out --created",
                            step.action
                        )));
                    }
                    if creates && outcome == "ok" {
                        let intents = state.create_attempts.get(step_id).cloned().unwrap_or_default();
                        let clue = intents.iter().find_map(|i| i.clue.clone());
                        created_run_id = Some(match created {
                            Some(run_id) => {
                                let Some(stored) = self.store.get(&run_id).await? else {
                                    return Err(invalid(format!(
                                        "names run {run_id} with --created, which is not in the store"
                                    )));
                                };
                                if let Some(clue) = &clue
                                    && !discovery::derives_as(&stored.run, clue)
                                {
                                    return Err(invalid(format!(
                                        "names run {run_id} with --created, but it does not derive from run {} (checkpoint \
                                     {}) as this step's `{}` would",
                                        clue.origin_run_id,
                                        clue.checkpoint_id.as_deref().unwrap_or("any"),
                                        clue.mode
                                    )));
                                }
                                run_id
                            }
                            None => {
                                let Some(clue) = clue else {
                                    return Err(invalid(
                                        "created a run nobody can find; name it with --created RUN".into(),
                                    ));
                                };
                                let source = self.store.get(&clue.origin_run_id).await?.map(|s| s.run);
                                let runtime = source.as_ref().and_then(|run| runtimes.resolve(run).ok());
                                let found = discovery::find_created(discovery::Search {
                                    runs: self.store.as_ref(),
                                    runtime: runtime.as_deref(),
                                    execution_id,
                                    step_id,
                                    clue: &clue,
                                    reserved: intents.iter().filter_map(|i| i.new_run_id.clone()).collect(),
                                    since: intents.first().map(|i| i.at.clone()),
                                    skew: self.settings.creation_skew,
                                    taken: state.all_created.clone(),
                                    request: None,
                                })
                                .await?;
                                match found {
                                    Discovery::Found { run_id, .. } => run_id,
                                    Discovery::Ambiguous(candidates) => {
                                        return Err(invalid(format!(
                                            "created one of these runs: {}; say which with --created RUN",
                                            candidates.join(", ")
                                        )));
                                    }
                                    Discovery::NotFound => {
                                        return Err(invalid(format!(
                                            "should have created a run deriving from run {}, and none is in the store: name \
                                         it with --created RUN if it exists elsewhere, or confirm --outcome failed if \
                                         it was never created",
                                            clue.origin_run_id
                                        )));
                                    }
                                }
                            }
                        });
                    }
                    Some(outcome)
                }
            };
            let entry = JournalEntry::OperatorConfirmed {
                at: now_iso(),
                step_id: step_id.to_owned(),
                attempt,
                actor: self.actor.clone(),
                outcome,
                reason,
                created_run_id: created_run_id.clone(),
                origin: self.origin.clone(),
            };
            let record = entry.record(execution_id, state.next_seq);
            match self.store.append_journal(&record).await {
                // The journal moved: someone answered first; the next pass says who.
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
                Ok(()) => {}
            }
            if let Some(run_id) = &created_run_id {
                record_owner(self.store.as_ref(), run_id, execution_id, step_id, &execution.run_id).await?;
            }
            return Ok(ConfirmOutcome::Recorded);
        }
    }

    /// Closes an execution as it stands (`salvage abandon`): the documented way out of one that
    /// cannot go on. The journal is kept and gets an `abandoned` entry; nothing is sent to any
    /// runtime. Refused while another process runs it.
    pub async fn abandon(&self, execution_id: &str, reason: Option<String>) -> Result<Execution, ExecuteError> {
        self.traced("abandon", execution_id, self.abandon_untraced(execution_id, reason)).await
    }

    async fn abandon_untraced(&self, execution_id: &str, reason: Option<String>) -> Result<Execution, ExecuteError> {
        check_actor(&self.actor)?;
        loop {
            let (mut execution, revision) = self.load(execution_id).await?;
            if execution.status.is_finished() {
                return Err(ExecuteError::NotWaiting {
                    execution_id: execution_id.to_owned(),
                    state: format!("has already ended ({})", execution.status),
                });
            }
            if let Some(lease) = execution.lease.as_ref().filter(|lease| lease_is_live(lease))
                && !(lease.pid == std::process::id() && lease.host == hostname())
            {
                return Err(ExecuteError::Busy {
                    execution_id: execution_id.to_owned(),
                    holder: format!("pid {} on {}", lease.pid, lease.host),
                });
            }
            let journal = self.store.journal(execution_id).await?;
            let entry = JournalEntry::Abandoned {
                at: now_iso(),
                actor: self.actor.clone(),
                reason: reason.clone(),
                origin: self.origin.clone(),
            };
            let record = entry.record(execution_id, journal.last().map_or(1, |r| r.seq + 1));
            match self.store.append_journal(&record).await {
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
                Ok(()) => {}
            }
            execution.status = ExecutionStatus::Abandoned;
            execution.outcome = Some("abandoned".into());
            execution.pending_approval = None;
            execution.operator_question = None;
            execution.lease = None;
            execution.wake_at = None;
            execution.follow_up = None;
            execution.updated_at = now_iso();
            match self.store.put_execution(doc_of(&mut execution), Expected::Revision(revision)).await {
                Err(StoreError::Conflict { .. }) => {
                    // The journal says abandoned; bring the record in line with it.
                    let (mut current, revision) = self.load(execution_id).await?;
                    current.status = ExecutionStatus::Abandoned;
                    current.outcome = Some("abandoned".into());
                    current.pending_approval = None;
                    current.operator_question = None;
                    current.lease = None;
                    current.updated_at = now_iso();
                    self.store.put_execution(doc_of(&mut current), Expected::Revision(revision)).await?;
                    return Ok(current);
                }
                Err(error) => return Err(error.into()),
                Ok(_) => return Ok(execution),
            }
        }
    }

    pub(crate) fn playbook_of(&self, execution: &Execution) -> Result<&CompiledPlaybook, ExecuteError> {
        let name = execution.playbook.as_ref().map(|p| p.name.as_str()).unwrap_or_default();
        self.playbooks.get(name).ok_or_else(|| ExecuteError::SetsChanged {
            what: format!("playbook {name}"),
            planned: execution.playbook.as_ref().map(|p| short_digest(&p.digest)).unwrap_or_default(),
            current: "no such playbook".into(),
        })
    }
}

/// Which of the `(decision, actor, at)` given to a request, in order, decided it: a denial or
/// timeout, or the approval completing the quorum (so an old journal's late second answer
/// never does).
fn deciding_answer(given: &[(String, String, String)], quorum: u32) -> Option<usize> {
    let mut approvers: Vec<&str> = Vec::new();
    for (index, (decision, actor, _)) in given.iter().enumerate() {
        if decision != "approved" {
            return Some(index);
        }
        if !approvers.contains(&actor.as_str()) {
            approvers.push(actor);
        }
        if approvers.len() >= quorum as usize {
            return Some(index);
        }
    }
    given.len().checked_sub(1)
}

/// What `answer` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerOutcome {
    /// The deciding answer (a denial, or the approval completing the quorum).
    Recorded,
    /// An approval counted towards a quorum that is not yet complete: the execution still waits.
    Counted { approvals: u32, quorum: u32 },
    /// The same answer was already recorded by the same person.
    AlreadyAnswered { by: String, at: String },
    /// The approval had expired: it was denied by timeout.
    Expired { at: String },
}

/// The first 12 characters of a digest, as people are shown it.
pub fn short_digest(digest: &str) -> String {
    digest.chars().take(12).collect()
}

/// Whether a lease's holder may still be executing. On this host the holder itself is
/// checked, so a crashed executor releases its executions at once; a holder on another host
/// is trusted until its lease expires.
pub fn lease_is_live(lease: &Lease) -> bool {
    let proc = std::path::Path::new("/proc");
    if lease.host == hostname() && proc.join("self").exists() {
        return proc.join(lease.pid.to_string()).exists();
    }
    !is_past(&lease.expires_at)
}

/// The execution record as stored. Its plan, most of the record, is cloned into its place
/// rather than serialised: a `Value` serialised into a `Value` is rebuilt key by key, every key
/// hashed again. The record is left as it was (`&mut` only to lend the plan out meanwhile).
pub(crate) fn doc_of(execution: &mut Execution) -> ExecutionDoc {
    let plan = std::mem::take(&mut execution.plan);
    let mut body = serde_json::to_value(&*execution).unwrap_or(Value::Null);
    if let Some(slot) = body.get_mut("plan") {
        *slot = plan.clone();
    }
    execution.plan = plan;
    ExecutionDoc {
        id: execution.execution_id.clone(),
        run_id: execution.run_id.clone(),
        plan_id: execution.plan_id.clone(),
        status: execution.status.as_str().to_owned(),
        created_at: execution.created_at.clone(),
        updated_at: execution.updated_at.clone(),
        body,
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

/// Records which execution step created a run (`owner/<run id>`).
pub(crate) async fn record_owner(
    store: &dyn Store,
    run_id: &str,
    execution_id: &str,
    step_id: &str,
    incident_run_id: &str,
) -> Result<(), ExecuteError> {
    let body = json!({
        "runId": run_id,
        "executionId": execution_id,
        "stepId": step_id,
        "incidentRunId": incident_run_id,
        "role": "created",
        "at": now_iso(),
    });
    match store.put_state(&owner_key(run_id), &body, Expected::Absent).await {
        Ok(_) => Ok(()),
        // Recorded before (a resumed step): the first record stands.
        Err(StoreError::Conflict { .. }) => Ok(()),
        Err(error) => Err(error.into()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_execution_document_is_the_record_serialised_and_leaves_the_record_as_it_was() {
        let plan = json!({
            "planId": "plan-0123456789abcdef",
            "steps": [{"id": "look", "action": "inspect_report", "payload": {"nested": [1, 2.5, null, {"k": "v"}]}}],
            "incident": {"runTree": {"id": "r-1", "children": []}},
        });
        let mut execution = Execution {
            execution_id: "dry-0123456789abcdef".into(),
            plan_id: "plan-0123456789abcdef".into(),
            plan_hash: "0123456789abcdef".into(),
            run_id: "r-1".into(),
            status: ExecutionStatus::Running,
            mode: Mode::Advisory,
            started_by: "alice".into(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            updated_at: "2026-01-01T00:00:01.000Z".into(),
            playbook: None,
            policy_digest: "p".into(),
            playbook_set_digest: "s".into(),
            node: Some("look".into()),
            created_runs: BTreeMap::from([("branch".to_owned(), "r-2".to_owned())]),
            pending_approval: None,
            answers: Vec::new(),
            operator_question: None,
            outcome: None,
            lease: None,
            plan: plan.clone(),
            runtimes: None,
            wake_at: None,
            follow_up: None,
        };
        let serialised = serde_json::to_value(&execution).expect("json");
        let doc = doc_of(&mut execution);
        // The same tree, keys in the same order (the stored text is written from it).
        assert_eq!(doc.body, serialised);
        assert_eq!(serde_json::to_string(&doc.body).ok(), serde_json::to_string(&serialised).ok());
        assert_eq!(execution.plan, plan, "the plan is back in the record");
        assert_eq!(execution_of(&doc).expect("read back").plan, plan);
        assert_eq!((doc.id.as_str(), doc.status.as_str()), ("dry-0123456789abcdef", "running"));
    }
}
