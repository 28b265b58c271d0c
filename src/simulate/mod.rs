//! The policy flight simulator: replays a proposed policy and playbook set over past incidents
//! before it ships.
//!
//! ```text
//! store index ─► the last N incidents (failed, waiting_for_approval, paused; newest first)
//!   ─► plan each with the current set and with the proposed set
//!   ─► compare the decisions (incident kind, playbook, checkpoint, approvals, approvers, the
//!      steps of the expected path, the expected outcome, fail-closed), never digests or the
//!      wording of reasons: an equivalent refactor of a policy changes nothing
//!   ─► flag the dangerous changes: an approval that was required and no longer is, an
//!      irreversible step newly reachable, a checkpoint moved after the failure point
//! ```
//!
//! Nothing here writes to a store. `salvage simulate` prints a [`Simulation`]; `salvage serve`
//! rejects a reload whose simulation [`is_dangerous`](Simulation::is_dangerous).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::model::json::parse_iso;
use crate::model::{IncidentKind, RunStatus};
use crate::plan::{Plan, PlanStep, RecoverySet};
use crate::playbook::EffectClass;
use crate::policy::{DecisionContext, Explanation};
use crate::store::{RunIndexEntry, RunQuery, RunStore, StoreError};

/// The run statuses that are incidents (as `salvage plan` and `scripts/main-job` treat them).
pub const INCIDENT_STATUSES: [RunStatus; 3] = [RunStatus::Failed, RunStatus::WaitingForApproval, RunStatus::Paused];

/// Which incidents to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulateOptions {
    /// At most this many incidents, the most recent first.
    pub limit: usize,
    /// Only incidents created within this long before now (runs without a creation time are
    /// left out when it is set).
    pub since: Option<Duration>,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        SimulateOptions { limit: 100, since: None }
    }
}

/// Why a simulation could not run at all (one incident that cannot be planned is a change,
/// not an error).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SimulateError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),
    /// A replay task died (a bug, not input).
    #[error("a simulation task failed: {0}")]
    #[diagnostic(code(salvage::simulate::task))]
    Task(String),
}

/// The outcome of replaying a proposed set over past incidents.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Simulation {
    pub current: SetDigests,
    pub proposed: SetDigests,
    pub counts: Counts,
    /// The incidents whose decisions changed, most recent first.
    pub incidents: Vec<IncidentChanges>,
    /// Index records the store could not read (not simulated), and incidents neither set
    /// could plan (counted as unchanged and `unplannable`), each with its error.
    pub problems: Vec<String>,
}

/// Which sets were compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SetDigests {
    pub policies: String,
    pub playbooks: String,
    pub policy_digest: String,
    pub playbook_set_digest: String,
}

impl SetDigests {
    fn of(set: &RecoverySet) -> SetDigests {
        SetDigests {
            policies: set.policies.dir().map(|dir| dir.display().to_string()).unwrap_or_default(),
            playbooks: set.playbooks.dir().display().to_string(),
            policy_digest: set.policies.digest().to_owned(),
            playbook_set_digest: set.playbooks.digest().to_owned(),
        }
    }
}

/// How many incidents were replayed, and what became of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub simulated: usize,
    pub unchanged: usize,
    /// Incidents with at least one changed decision (dangerous ones included).
    pub changed: usize,
    /// Incidents with at least one dangerous change.
    pub dangerous: usize,
    /// Dangerous changes over all incidents.
    pub dangerous_changes: usize,
    /// Incidents neither set could plan (the same error both times; counted as unchanged).
    pub unplannable: usize,
}

/// One incident whose decisions changed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentChanges {
    pub run_id: String,
    pub status: RunStatus,
    pub created_at: Option<String>,
    /// The incident kind under the current set (the proposed set's when the current set
    /// could not plan it).
    pub incident_type: Option<IncidentKind>,
    pub changes: Vec<DecisionChange>,
}

impl IncidentChanges {
    pub fn is_dangerous(&self) -> bool {
        self.changes.iter().any(DecisionChange::is_dangerous)
    }
}

/// Which decision changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// The incident kind (`classify`).
    IncidentKind,
    /// The playbook chosen (name and version).
    Playbook,
    /// The checkpoint a step starts from.
    Checkpoint,
    /// Whether a step needs a person's approval.
    Approval,
    /// Who may approve a step.
    Approvers,
    /// A step the expected path now takes.
    StepAdded,
    /// A step the expected path no longer takes.
    StepRemoved,
    /// A step of the same id now does something else.
    StepChanged,
    /// An irreversible action the chosen playbook can now reach off the expected path.
    Reachable,
    /// The end the expected path reaches.
    Outcome,
    /// Whether a policy failed while planning (every step then needs approval).
    FailClosed,
    /// One of the sets could not plan the incident.
    PlanningError,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::IncidentKind => "incident kind",
            DecisionKind::Playbook => "playbook",
            DecisionKind::Checkpoint => "checkpoint",
            DecisionKind::Approval => "approval",
            DecisionKind::Approvers => "approvers",
            DecisionKind::StepAdded => "step added",
            DecisionKind::StepRemoved => "step removed",
            DecisionKind::StepChanged => "step changed",
            DecisionKind::Reachable => "reachable",
            DecisionKind::Outcome => "outcome",
            DecisionKind::FailClosed => "fail closed",
            DecisionKind::PlanningError => "planning error",
        }
    }
}

/// Why a change is dangerous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Danger {
    /// An approval that was required no longer is.
    ApprovalRemoved,
    /// An irreversible step is newly reachable (on the expected path or off it).
    IrreversibleReachable,
    /// A checkpoint moved after the failure point: resuming from it repeats the failure.
    CheckpointAfterFailure,
    /// A policy of the proposed set fails on an incident the current set decided: every step
    /// then waits for a person, and the decisions the policies were written for are lost.
    FailsClosed,
}

impl Danger {
    pub fn describe(self) -> &'static str {
        match self {
            Danger::ApprovalRemoved => "an approval that was required no longer is",
            Danger::IrreversibleReachable => "an irreversible step is newly reachable",
            Danger::CheckpointAfterFailure => {
                "the checkpoint is after the failure: its state already contains the failure"
            }
            Danger::FailsClosed => "a policy fails on an incident the current set decided (every step now waits)",
        }
    }
}

/// One decision that differs between the current and the proposed set.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionChange {
    pub run_id: String,
    pub decision: DecisionKind,
    /// The playbook step the decision is about (`null` for plan-wide decisions).
    pub step: Option<String>,
    pub before: Value,
    pub after: Value,
    /// Set when the change is dangerous.
    pub danger: Option<Danger>,
    /// The explanation records of the decision in the current plan and in the proposed one.
    pub before_explanation: Vec<Explanation>,
    pub after_explanation: Vec<Explanation>,
}

impl DecisionChange {
    pub fn is_dangerous(&self) -> bool {
        self.danger.is_some()
    }
}

impl Simulation {
    /// Whether any change is dangerous (a reload gate rejects the proposed set).
    pub fn is_dangerous(&self) -> bool {
        self.counts.dangerous > 0
    }

    /// Every dangerous change, incident by incident.
    pub fn dangerous(&self) -> impl Iterator<Item = &DecisionChange> {
        self.incidents.iter().flat_map(|incident| incident.changes.iter()).filter(|change| change.is_dangerous())
    }

    /// Every change, incident by incident.
    pub fn changes(&self) -> impl Iterator<Item = &DecisionChange> {
        self.incidents.iter().flat_map(|incident| incident.changes.iter())
    }
}

/// Replays `proposed` against `current` over the recent incidents of `store`. `progress` is
/// called with (incidents done, incidents in total), first with 0 once the incidents are known.
///
/// Incidents are replayed a few at a time on the runtime's worker threads (planning is mostly
/// policy evaluation, i.e. CPU); the result keeps the newest-first order.
pub async fn simulate(
    store: Arc<dyn RunStore>,
    current: &RecoverySet,
    proposed: &RecoverySet,
    options: &SimulateOptions,
    progress: &(dyn Fn(usize, usize) + Send + Sync),
) -> Result<Simulation, SimulateError> {
    let (incidents, mut problems) = recent_incidents(store.as_ref(), options).await?;
    let total = incidents.len();
    progress(0, total);
    let replay = Arc::new(Replay {
        before: current.planner(Arc::clone(&store)),
        after: proposed.planner(Arc::clone(&store)),
        before_reach: IrreversibleActions::of(current),
        after_reach: IrreversibleActions::of(proposed),
    });
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, MAX_WORKERS);
    let mut outcomes: Vec<Option<Outcome>> = (0..total).map(|_| None).collect();
    let mut running = tokio::task::JoinSet::new();
    let mut pending = incidents.into_iter().enumerate();
    let mut done = 0;
    while done < total {
        while running.len() < workers {
            let Some((index, entry)) = pending.next() else { break };
            let replay = Arc::clone(&replay);
            running.spawn(async move { (index, replay.incident(entry).await) });
        }
        match running.join_next().await {
            Some(Ok((index, outcome))) => outcomes[index] = Some(outcome?),
            Some(Err(error)) => return Err(SimulateError::Task(error.to_string())),
            None => break,
        }
        done += 1;
        progress(done, total);
    }

    let mut counts = Counts::default();
    let mut changed = Vec::new();
    for outcome in outcomes.into_iter().flatten() {
        counts.simulated += 1;
        match outcome {
            Outcome::Unchanged => counts.unchanged += 1,
            Outcome::Unplannable(problem) => {
                counts.unchanged += 1;
                counts.unplannable += 1;
                problems.push(problem);
            }
            Outcome::Changed(incident) => {
                counts.changed += 1;
                let dangerous = incident.changes.iter().filter(|change| change.is_dangerous()).count();
                counts.dangerous_changes += dangerous;
                counts.dangerous += usize::from(dangerous > 0);
                changed.push(incident);
            }
        }
    }
    Ok(Simulation {
        current: SetDigests::of(current),
        proposed: SetDigests::of(proposed),
        counts,
        incidents: changed,
        problems,
    })
}

/// Incidents replayed at once, at most (one per worker thread up to this).
const MAX_WORKERS: usize = 8;

/// What replaying one incident needs, shared by the tasks.
struct Replay {
    before: crate::plan::Planner,
    after: crate::plan::Planner,
    before_reach: IrreversibleActions,
    after_reach: IrreversibleActions,
}

/// What became of one incident.
enum Outcome {
    Unchanged,
    /// Neither set can plan it, with the same error (the problem, for the report).
    Unplannable(String),
    Changed(IncidentChanges),
}

impl Replay {
    async fn incident(&self, entry: RunIndexEntry) -> Result<Outcome, SimulateError> {
        // One read of the store and one set of policy views for both plans.
        let (incident, before, after) = match self.before.read_incident(&entry.id, None).await {
            Ok(incident) => {
                let before = self.before.plan_incident(&incident).await;
                let after = self.after.plan_incident(&incident).await;
                (Some(incident), before, after)
            }
            Err(error) => (None, Err(error), self.after.plan(&entry.id, None).await),
        };
        let (incident_type, changes) = match (&before, &after) {
            (Ok(before), Ok(after)) => {
                let mut changes = compare(&entry.id, before, after, &self.before_reach, &self.after_reach);
                if let Some(incident) = &incident {
                    flag_checkpoints_after_failure(incident.context(), before, &mut changes);
                }
                (Some(before.incident_type.clone()), changes)
            }
            (Err(before_error), Err(after_error)) => {
                let (before_error, after_error) = (before_error.to_string(), after_error.to_string());
                if before_error == after_error {
                    tracing::debug!(run_id = %entry.id, error = %before_error, "neither set can plan this incident");
                    return Ok(Outcome::Unplannable(format!("{}: neither set can plan it: {before_error}", entry.id)));
                }
                (None, vec![planning_error(&entry.id, json!(before_error), json!(after_error))])
            }
            (Err(error), Ok(plan)) => (
                Some(plan.incident_type.clone()),
                vec![planning_error(&entry.id, json!(error.to_string()), planned(plan))],
            ),
            (Ok(plan), Err(error)) => (
                Some(plan.incident_type.clone()),
                vec![planning_error(&entry.id, planned(plan), json!(error.to_string()))],
            ),
        };
        if changes.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        Ok(Outcome::Changed(IncidentChanges {
            run_id: entry.id,
            status: entry.status,
            created_at: entry.created_at,
            incident_type,
            changes,
        }))
    }
}

/// The most recent incidents by creation time (newest first), from the store's index only.
async fn recent_incidents(
    store: &dyn RunStore,
    options: &SimulateOptions,
) -> Result<(Vec<RunIndexEntry>, Vec<String>), SimulateError> {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for status in INCIDENT_STATUSES {
        let listed = store.list(&RunQuery::with_status(status)).await?;
        entries.extend(listed.items);
        problems.extend(listed.problems.into_iter().map(|problem| match problem.run_id {
            Some(run_id) => format!("{run_id}: {}", problem.error),
            None => problem.error.to_string(),
        }));
    }
    if let Some(since) = options.since {
        // A window longer than the calendar reaches keeps everything that has a creation time.
        let cutoff = time::Duration::try_from(since).ok().and_then(|d| time::OffsetDateTime::now_utc().checked_sub(d));
        entries.retain(|entry| {
            let created = entry.created_at.as_deref().and_then(parse_iso);
            match (created, cutoff) {
                (Some(created), Some(cutoff)) => created >= cutoff,
                (Some(_), None) => true,
                (None, _) => false,
            }
        });
    }
    entries.sort_by(|left, right| RunIndexEntry::listing_order(right, left));
    entries.truncate(options.limit);
    Ok((entries, problems))
}

fn planned(plan: &Plan) -> Value {
    match &plan.playbook {
        Some(playbook) => json!(format!("planned with playbook {} v{}", playbook.name, playbook.version)),
        None => json!("planned (no playbook)"),
    }
}

fn planning_error(run_id: &str, before: Value, after: Value) -> DecisionChange {
    DecisionChange {
        run_id: run_id.to_owned(),
        decision: DecisionKind::PlanningError,
        step: None,
        before,
        after,
        danger: None,
        before_explanation: Vec::new(),
        after_explanation: Vec::new(),
    }
}

/// The irreversible catalog actions each playbook of a set can reach from its start (every
/// transition, guards and alternative outcomes included), by playbook name.
#[derive(Debug, Default)]
struct IrreversibleActions(HashMap<String, BTreeSet<String>>);

impl IrreversibleActions {
    fn of(set: &RecoverySet) -> IrreversibleActions {
        let mut by_playbook = HashMap::new();
        for playbook in set.playbooks.playbooks() {
            let graph = &playbook.graph;
            let mut seen = BTreeSet::new();
            let mut actions = BTreeSet::new();
            let mut frontier = vec![graph.start()];
            while let Some(node) = frontier.pop() {
                if !seen.insert(node) {
                    continue;
                }
                if let Some(step) = graph.node(node).as_step()
                    && step.effect() == EffectClass::Irreversible
                {
                    actions.insert(step.spec().name.to_owned());
                }
                frontier.extend(graph.transitions(node).into_iter().map(|(_, target)| target));
            }
            by_playbook.insert(playbook.name.clone(), actions);
        }
        IrreversibleActions(by_playbook)
    }

    fn of_plan(&self, plan: &Plan) -> BTreeSet<String> {
        plan.playbook.as_ref().and_then(|p| self.0.get(&p.name)).cloned().unwrap_or_default()
    }
}

/// The steps of a plan keyed by playbook step id and visit number (a bounded loop visits a
/// step more than once).
fn keyed(plan: &Plan) -> Vec<((String, usize), &PlanStep)> {
    let mut visits: HashMap<&str, usize> = HashMap::new();
    plan.steps
        .iter()
        .map(|step| {
            let visit = visits.entry(step.id.as_str()).or_insert(0);
            *visit += 1;
            ((step.id.clone(), *visit), step)
        })
        .collect()
}

/// The explanation records behind one kind of step decision.
fn explanations_of(step: &PlanStep, kind: DecisionKind) -> Vec<Explanation> {
    let is_checkpoint = |e: &Explanation| e.candidates.is_some();
    let is_approvers = |e: &Explanation| e.result.get("names").is_some();
    let is_approval = |e: &Explanation| e.result.is_boolean() && e.hook != "guard";
    step.explanation
        .iter()
        .filter(|e| match kind {
            DecisionKind::Checkpoint => is_checkpoint(e),
            DecisionKind::Approvers => is_approvers(e),
            DecisionKind::Approval => is_approval(e),
            _ => true,
        })
        .cloned()
        .collect()
}

fn plan_decisions(plan: &Plan, hook: &str) -> Vec<Explanation> {
    plan.decisions.iter().filter(|d| d.hook == hook).cloned().collect()
}

fn step_value(step: &PlanStep) -> Value {
    let mut value = json!({
        "action": step.action,
        "catalogAction": step.catalog_action,
        "effect": step.effect,
        "requiresApproval": step.requires_approval,
    });
    if let (Some(checkpoint), Value::Object(map)) = (step.payload.get("checkpointId"), &mut value) {
        map.insert("checkpointId".into(), checkpoint.clone());
    }
    value
}

/// The checkpoint an added step starts from, if any.
fn added_checkpoint(change: &DecisionChange) -> Option<&str> {
    (change.decision == DecisionKind::StepAdded).then(|| change.after.get("checkpointId")?.as_str()).flatten()
}

fn approvers_value(step: &PlanStep) -> Value {
    step.approvers.as_ref().map_or(Value::Null, |a| serde_json::to_value(a).unwrap_or(Value::Null))
}

fn is_irreversible(step: &PlanStep) -> bool {
    step.effect == EffectClass::Irreversible.as_str()
}

/// Whether a policy or the playbook requires a person's approval of the step, as opposed to
/// an approval required only because a hook failed (the plan failed closed): removing the
/// latter is restoring a decision, not dropping one.
fn decided_approval(step: &PlanStep) -> bool {
    step.requires_approval
        && step.explanation.iter().any(|e| {
            e.result == Value::Bool(true) && e.error.is_none() && !matches!(e.hook.as_str(), "guard" | "fail_closed")
        })
}

/// Every decision that differs between `before` (the current set's plan) and `after` (the
/// proposed set's), with its danger. Checkpoints are compared by id here; whether a new one is
/// after the failure needs the run ([`flag_checkpoints_after_failure`], with the incident both
/// plans were made from).
fn compare(
    run_id: &str,
    before: &Plan,
    after: &Plan,
    before_reach: &IrreversibleActions,
    after_reach: &IrreversibleActions,
) -> Vec<DecisionChange> {
    let mut changes = Vec::new();
    let mut change = |decision, step: Option<&str>, before_value, after_value, danger, before_expl, after_expl| {
        changes.push(DecisionChange {
            run_id: run_id.to_owned(),
            decision,
            step: step.map(str::to_owned),
            before: before_value,
            after: after_value,
            danger,
            before_explanation: before_expl,
            after_explanation: after_expl,
        });
    };

    if before.incident_type != after.incident_type {
        change(
            DecisionKind::IncidentKind,
            None,
            json!(before.incident_type),
            json!(after.incident_type),
            None,
            plan_decisions(before, "classify"),
            plan_decisions(after, "classify"),
        );
    }
    let playbook_of = |plan: &Plan| plan.playbook.as_ref().map(|p| (p.name.clone(), p.version));
    if playbook_of(before) != playbook_of(after) {
        let value = |plan: &Plan| {
            plan.playbook.as_ref().map_or(Value::Null, |p| json!({ "name": p.name, "version": p.version }))
        };
        change(
            DecisionKind::Playbook,
            None,
            value(before),
            value(after),
            None,
            plan_decisions(before, "playbook"),
            plan_decisions(after, "playbook"),
        );
    }
    if before.fail_closed != after.fail_closed {
        // Failing closed where the current set decided loses every decision of the plan;
        // returning from a failure is restoring them.
        let danger = (!before.fail_closed && after.fail_closed).then_some(Danger::FailsClosed);
        let failures = |plan: &Plan| {
            plan.decisions
                .iter()
                .chain(plan.steps.iter().flat_map(|s| s.explanation.iter()))
                .filter(|e| e.error.is_some() || e.hook == "fail_closed")
                .cloned()
                .collect::<Vec<_>>()
        };
        change(
            DecisionKind::FailClosed,
            None,
            json!(before.fail_closed),
            json!(after.fail_closed),
            danger,
            failures(before),
            failures(after),
        );
    }

    let before_steps = keyed(before);
    let after_steps = keyed(after);
    let after_by_key: BTreeMap<&(String, usize), &PlanStep> = after_steps.iter().map(|(k, s)| (k, *s)).collect();
    let before_keys: BTreeSet<&(String, usize)> = before_steps.iter().map(|(k, _)| k).collect();
    let before_irreversible_on_path: BTreeSet<(&str, &str)> = before
        .steps
        .iter()
        .filter(|s| is_irreversible(s))
        .map(|s| (s.id.as_str(), s.catalog_action.as_str()))
        .collect();
    let fewer_approvals = after.steps.iter().filter(|s| decided_approval(s)).count()
        < before.steps.iter().filter(|s| decided_approval(s)).count();
    // A plan that failed closed decided nothing (its playbook may be the fallback of a failed
    // `classify`): an irreversible step is a danger against it only when it runs unapproved.
    let newly_irreversible_danger = |step: &PlanStep| !before.fail_closed || !step.requires_approval;

    for (key, old) in &before_steps {
        let id = Some(key.0.as_str());
        let Some(new) = after_by_key.get(key) else {
            // A gate that disappears with its step is a removed approval when the proposed
            // plan asks fewer people overall.
            let danger = (decided_approval(old) && fewer_approvals).then_some(Danger::ApprovalRemoved);
            change(
                DecisionKind::StepRemoved,
                id,
                step_value(old),
                Value::Null,
                danger,
                old.explanation.clone(),
                Vec::new(),
            );
            continue;
        };
        if (&old.action, &old.catalog_action, &old.effect) != (&new.action, &new.catalog_action, &new.effect) {
            let danger = (is_irreversible(new) && !is_irreversible(old) && newly_irreversible_danger(new))
                .then_some(Danger::IrreversibleReachable);
            change(
                DecisionKind::StepChanged,
                id,
                step_value(old),
                step_value(new),
                danger,
                old.explanation.clone(),
                new.explanation.clone(),
            );
        }
        let old_checkpoint = old.payload.get("checkpointId");
        let new_checkpoint = new.payload.get("checkpointId");
        if old_checkpoint != new_checkpoint {
            change(
                DecisionKind::Checkpoint,
                id,
                old_checkpoint.cloned().unwrap_or(Value::Null),
                new_checkpoint.cloned().unwrap_or(Value::Null),
                None,
                explanations_of(old, DecisionKind::Checkpoint),
                explanations_of(new, DecisionKind::Checkpoint),
            );
        }
        if old.requires_approval != new.requires_approval {
            let danger = (decided_approval(old) && !new.requires_approval).then_some(Danger::ApprovalRemoved);
            change(
                DecisionKind::Approval,
                id,
                json!(old.requires_approval),
                json!(new.requires_approval),
                danger,
                explanations_of(old, DecisionKind::Approval),
                explanations_of(new, DecisionKind::Approval),
            );
        } else if new.requires_approval && old.approvers != new.approvers {
            change(
                DecisionKind::Approvers,
                id,
                approvers_value(old),
                approvers_value(new),
                None,
                explanations_of(old, DecisionKind::Approvers),
                explanations_of(new, DecisionKind::Approvers),
            );
        }
    }
    for (key, new) in &after_steps {
        if before_keys.contains(key) {
            continue;
        }
        let newly_irreversible = is_irreversible(new)
            && !before_irreversible_on_path.contains(&(new.id.as_str(), new.catalog_action.as_str()))
            && newly_irreversible_danger(new);
        change(
            DecisionKind::StepAdded,
            Some(key.0.as_str()),
            Value::Null,
            step_value(new),
            newly_irreversible.then_some(Danger::IrreversibleReachable),
            Vec::new(),
            new.explanation.clone(),
        );
    }

    // Off the expected path: irreversible actions the proposed playbook can reach that the
    // current one could not (an action already flagged on the path is not repeated).
    let flagged_on_path: BTreeSet<&str> = after
        .steps
        .iter()
        .filter(|s| {
            is_irreversible(s) && !before_irreversible_on_path.contains(&(s.id.as_str(), s.catalog_action.as_str()))
        })
        .map(|s| s.catalog_action.as_str())
        .collect();
    let reachable_before = before_reach.of_plan(before);
    for action in after_reach.of_plan(after).difference(&reachable_before) {
        if flagged_on_path.contains(action.as_str()) || before.fail_closed {
            continue;
        }
        change(
            DecisionKind::Reachable,
            None,
            Value::Null,
            json!(action),
            Some(Danger::IrreversibleReachable),
            plan_decisions(before, "playbook"),
            plan_decisions(after, "playbook"),
        );
    }

    if before.expected_outcome != after.expected_outcome {
        change(
            DecisionKind::Outcome,
            None,
            json!(before.expected_outcome),
            json!(after.expected_outcome),
            None,
            Vec::new(),
            Vec::new(),
        );
    }
    changes
}

/// Marks the checkpoint changes whose new checkpoint holds the failure while the old one did
/// not. Reads the run (only incidents with a changed checkpoint get here).
fn flag_checkpoints_after_failure(ctx: &DecisionContext, before: &Plan, changes: &mut [DecisionChange]) {
    let before_checkpoints: Vec<&str> =
        before.steps.iter().filter_map(|step| step.payload.get("checkpointId")?.as_str()).collect();
    classify_checkpoints(changes, &before_checkpoints, |id| {
        ctx.run().checkpoint(id).is_some_and(|checkpoint| ctx.taken_after_failure(checkpoint))
    });
}

/// A checkpoint change is dangerous when the new checkpoint is after the failure and the old
/// one was not (or there was none); a step the proposed plan adds is, when it starts from a
/// checkpoint after the failure and no step of the current plan did.
fn classify_checkpoints(
    changes: &mut [DecisionChange],
    before_checkpoints: &[&str],
    after_failure: impl Fn(&str) -> bool,
) {
    let before_after_failure = before_checkpoints.iter().any(|id| after_failure(id));
    for change in changes.iter_mut().filter(|c| c.danger.is_none()) {
        let newly_after = match change.decision {
            DecisionKind::Checkpoint => {
                change.after.as_str().is_some_and(&after_failure) && !change.before.as_str().is_some_and(&after_failure)
            }
            DecisionKind::StepAdded => added_checkpoint(change).is_some_and(&after_failure) && !before_after_failure,
            _ => false,
        };
        if newly_after {
            change.danger = Some(Danger::CheckpointAfterFailure);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::Run;
    use crate::store::{Expected, MemoryStore};

    const TOOL_FAILURE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";

    fn shipped() -> RecoverySet {
        RecoverySet::load(Path::new("playbooks"), Path::new("policies")).expect("the shipped sets load")
    }

    /// A memory store holding every example run.
    async fn examples() -> Arc<dyn RunStore> {
        let store = MemoryStore::new();
        let mut runs = Vec::new();
        for entry in std::fs::read_dir("examples/runs").expect("examples") {
            let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
            runs.push(Run::from_value(serde_json::from_str(&text).expect("json")).expect("run"));
        }
        store.save_all(&runs, Expected::Any).await.expect("save");
        Arc::new(store)
    }

    async fn plan_of(set: &RecoverySet, store: &Arc<dyn RunStore>, run_id: &str) -> Plan {
        set.planner(Arc::clone(store)).plan(run_id, None).await.expect("plan")
    }

    fn step_mut<'a>(plan: &'a mut Plan, id: &str) -> &'a mut PlanStep {
        plan.steps.iter_mut().find(|step| step.id == id).expect("step")
    }

    fn compared(before: &Plan, after: &Plan) -> Vec<DecisionChange> {
        let reach = IrreversibleActions::of(&shipped());
        compare(&before.run_id, before, after, &reach, &reach)
    }

    fn summary(changes: &[DecisionChange]) -> Vec<(DecisionKind, Option<&str>, Option<Danger>)> {
        changes.iter().map(|c| (c.decision, c.step.as_deref(), c.danger)).collect()
    }

    #[tokio::test]
    async fn the_same_decisions_are_no_change_whatever_the_digests() {
        let store = examples().await;
        let before = plan_of(&shipped(), &store, TOOL_FAILURE).await;
        let mut after = before.clone();
        after.policy_digest = "another".into();
        after.plan_hash = "another".into();
        for step in &mut after.steps {
            for explanation in &mut step.explanation {
                explanation.policy_digest = "another".into();
                explanation.reason = Some("reworded".into());
            }
        }
        assert!(compared(&before, &after).is_empty());
    }

    #[tokio::test]
    async fn dropping_a_required_approval_is_dangerous_and_adding_one_is_not() {
        let store = examples().await;
        let before = plan_of(&shipped(), &store, TOOL_FAILURE).await;
        let mut dropped = before.clone();
        step_mut(&mut dropped, "ask_operator").requires_approval = false;
        let changes = compared(&before, &dropped);
        assert_eq!(summary(&changes), [(DecisionKind::Approval, Some("ask_operator"), Some(Danger::ApprovalRemoved))]);
        assert_eq!((&changes[0].before, &changes[0].after), (&json!(true), &json!(false)));
        assert!(changes[0].before_explanation.iter().all(|e| e.result.is_boolean()), "the approval's records only");

        let mut added = before.clone();
        step_mut(&mut added, "export").requires_approval = true;
        assert_eq!(summary(&compared(&before, &added)), [(DecisionKind::Approval, Some("export"), None)]);

        let mut approvers = before.clone();
        step_mut(&mut approvers, "ask_operator").approvers =
            Some(crate::policy::Approvers { names: vec!["someone-else".into()], allow_self_approval: true });
        assert_eq!(summary(&compared(&before, &approvers)), [(DecisionKind::Approvers, Some("ask_operator"), None)]);
    }

    #[tokio::test]
    async fn a_gate_removed_from_the_path_is_a_removed_approval() {
        let store = examples().await;
        let before = plan_of(&shipped(), &store, TOOL_FAILURE).await;
        let mut after = before.clone();
        after.steps.retain(|step| step.id != "ask_operator");
        assert_eq!(
            summary(&compared(&before, &after)),
            [(DecisionKind::StepRemoved, Some("ask_operator"), Some(Danger::ApprovalRemoved))]
        );
        // A removed read-only step is a change, not a danger.
        let mut after = before.clone();
        after.steps.retain(|step| step.id != "compare");
        assert_eq!(summary(&compared(&before, &after)), [(DecisionKind::StepRemoved, Some("compare"), None)]);
    }

    #[tokio::test]
    async fn an_irreversible_step_new_on_the_path_is_dangerous() {
        let store = examples().await;
        let before = plan_of(&shipped(), &store, TOOL_FAILURE).await;
        let mut after = before.clone();
        let mut cancel = after.steps[0].clone();
        cancel.id = "cancel".into();
        cancel.action = "cancel_run".into();
        cancel.catalog_action = "cancel_run".into();
        cancel.effect = "irreversible".into();
        after.steps.push(cancel);
        assert_eq!(
            summary(&compared(&before, &after)),
            [(DecisionKind::StepAdded, Some("cancel"), Some(Danger::IrreversibleReachable))]
        );
        // The same step turning irreversible is dangerous too.
        let mut after = before.clone();
        step_mut(&mut after, "export").effect = "irreversible".into();
        assert_eq!(
            summary(&compared(&before, &after)),
            [(DecisionKind::StepChanged, Some("export"), Some(Danger::IrreversibleReachable))]
        );
    }

    #[tokio::test]
    async fn an_irreversible_action_reachable_off_the_path_is_dangerous() {
        let store = examples().await;
        let plan = plan_of(&shipped(), &store, TOOL_FAILURE).await;
        let name = plan.playbook.as_ref().expect("a playbook").name.clone();
        let before = IrreversibleActions::of(&shipped());
        assert_eq!(before.of_plan(&plan), BTreeSet::from(["resume_run".to_owned()]), "resume after either branch");
        let mut after = IrreversibleActions::of(&shipped());
        after.0.entry(name).or_default().insert("cancel_run".to_owned());
        let changes = compare(&plan.run_id, &plan, &plan, &before, &after);
        assert_eq!(summary(&changes), [(DecisionKind::Reachable, None, Some(Danger::IrreversibleReachable))]);
        assert_eq!(changes[0].after, json!("cancel_run"));
    }

    fn checkpoint_change(decision: DecisionKind, before: Value, after: Value) -> DecisionChange {
        DecisionChange {
            run_id: "run".into(),
            decision,
            step: Some("branch".into()),
            before,
            after,
            danger: None,
            before_explanation: Vec::new(),
            after_explanation: Vec::new(),
        }
    }

    #[test]
    fn only_a_checkpoint_newly_after_the_failure_is_dangerous() {
        let after_failure = |id: &str| id.starts_with("post");
        let mut changes = vec![
            checkpoint_change(DecisionKind::Checkpoint, json!("pre-1"), json!("post-1")),
            checkpoint_change(DecisionKind::Checkpoint, Value::Null, json!("post-1")),
            checkpoint_change(DecisionKind::Checkpoint, json!("post-1"), json!("post-2")),
            checkpoint_change(DecisionKind::Checkpoint, json!("pre-2"), json!("pre-1")),
            checkpoint_change(DecisionKind::Checkpoint, json!("post-1"), json!("pre-1")),
            checkpoint_change(DecisionKind::StepAdded, Value::Null, json!({ "checkpointId": "post-1" })),
            checkpoint_change(DecisionKind::StepAdded, Value::Null, json!({ "checkpointId": "pre-1" })),
        ];
        classify_checkpoints(&mut changes, &["pre-1"], after_failure);
        let dangers: Vec<Option<Danger>> = changes.iter().map(|c| c.danger).collect();
        let after = Some(Danger::CheckpointAfterFailure);
        assert_eq!(dangers, [after, after, None, None, None, after, None]);

        // A current plan that already started after the failure: an added step doing the same
        // is no new danger.
        let mut added =
            vec![checkpoint_change(DecisionKind::StepAdded, Value::Null, json!({ "checkpointId": "post-1" }))];
        classify_checkpoints(&mut added, &["post-2"], after_failure);
        assert_eq!(added[0].danger, None);
    }

    #[tokio::test]
    async fn the_failure_point_comes_from_the_run() {
        let store = examples().await;
        let stored = store.get(TOOL_FAILURE).await.expect("get").expect("run");
        let report = crate::inspect::create_report(store.as_ref(), TOOL_FAILURE, None).await.expect("report");
        let ctx = DecisionContext::new(stored.run, report, None);
        let after: Vec<bool> = ctx.run().checkpoints.iter().map(|cp| ctx.taken_after_failure(cp)).collect();
        assert_eq!(after, [false, false, true], "checkpoint 3 is the post-failure one");
    }

    /// The shipped set with `choose_checkpoint` broken at run time (it reads a field its map
    /// does not have): it loads clean, and every plan that chooses a checkpoint fails closed.
    fn failing_closed() -> (tempfile::TempDir, RecoverySet) {
        let dir = tempfile::tempdir().expect("temp");
        for entry in std::fs::read_dir("policies").expect("policies").filter_map(Result::ok) {
            if entry.path().is_file() {
                std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
            }
        }
        let checkpoints = dir.path().join("checkpoints.rhai");
        let text = std::fs::read_to_string(&checkpoints).expect("read");
        let broken = text.replacen(
            "fn choose_checkpoint(ctx) {\n",
            "fn choose_checkpoint(ctx) {\n    let limits = #{ window: 60 };\n    let typo = limits.windw;\n",
            1,
        );
        assert_ne!(broken, text);
        std::fs::write(&checkpoints, broken).expect("write");
        let set = RecoverySet::load(Path::new("playbooks"), dir.path()).expect("the broken set loads");
        (dir, set)
    }

    #[tokio::test]
    async fn restoring_a_set_that_failed_closed_removes_no_policy_approval() {
        let store = examples().await;
        let (_dir, broken) = failing_closed();
        let before = plan_of(&broken, &store, TOOL_FAILURE).await;
        let after = plan_of(&shipped(), &store, TOOL_FAILURE).await;
        assert!(before.fail_closed && !after.fail_closed);
        let changes = compared(&before, &after);
        let approvals: Vec<Option<&str>> =
            changes.iter().filter(|c| c.decision == DecisionKind::Approval).map(|c| c.step.as_deref()).collect();
        assert!(!approvals.is_empty(), "the failure's approvals go away: {:#?}", summary(&changes));
        assert_eq!(changes.iter().filter(|c| c.is_dangerous()).count(), 0, "{:#?}", summary(&changes));
        let fail_closed = changes.iter().find(|c| c.decision == DecisionKind::FailClosed).expect("fail closed change");
        assert_eq!((&fail_closed.before, &fail_closed.after, fail_closed.danger), (&json!(true), &json!(false), None));
    }

    #[tokio::test]
    async fn failing_closed_where_the_current_set_decided_is_dangerous() {
        let store = examples().await;
        let (_dir, broken) = failing_closed();
        let before = plan_of(&shipped(), &store, TOOL_FAILURE).await;
        let after = plan_of(&broken, &store, TOOL_FAILURE).await;
        let changes = compared(&before, &after);
        let dangerous: Vec<(DecisionKind, Option<Danger>)> =
            changes.iter().filter(|c| c.is_dangerous()).map(|c| (c.decision, c.danger)).collect();
        assert_eq!(dangerous, [(DecisionKind::FailClosed, Some(Danger::FailsClosed))]);
    }

    #[tokio::test]
    async fn simulate_counts_and_reports_progress() {
        let store = examples().await;
        let set = shipped();
        let calls = std::sync::Mutex::new(Vec::new());
        let progress = |done: usize, total: usize| calls.lock().expect("lock").push((done, total));
        let options = SimulateOptions { limit: 5, since: None };
        let simulation = simulate(Arc::clone(&store), &set, &set, &options, &progress).await.expect("simulate");
        assert_eq!(simulation.counts, Counts { simulated: 5, unchanged: 5, ..Counts::default() });
        assert!(!simulation.is_dangerous());
        assert_eq!(simulation.dangerous().count(), 0);
        assert_eq!(calls.into_inner().expect("lock"), (0..=5).map(|done| (done, 5)).collect::<Vec<_>>());
    }
}
