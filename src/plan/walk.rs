//! Walking a playbook's graph into plan steps.

use rhai::{Dynamic, Scope};
use serde_json::{Map, Value, json};

use super::{PathEntry, Plan, PlanError, PlanStep, Planner, PlaybookRef, RetryPolicy, seal};
use crate::inspect::checks::{self, CheckResult};
use crate::model::json::{now_iso, truthy};
use crate::model::{IncidentKind, RunStatus};
use crate::playbook::{
    Action, ApprovalRule, Approvers as ApproversRule, CompiledPlaybook, GraphNode, Guard, Param, StepNode, Transition,
};
use crate::policy::engine::{self, Deadline, LIMITS};
use crate::policy::hooks::{self, inputs_digest};
use crate::policy::{Approvers, DecisionContext, Explanation, PolicySet};
use crate::store::Revision;

/// Steps a walk may visit before it is considered stuck (bounded loops stay far below).
const WALK_BUDGET: usize = 10_000;

/// Evaluates a `when` guard with the variables `run`, `report`, `incident`, `comparison`.
/// Each evaluation gets its own copies: a guard cannot change what the next one sees.
pub fn evaluate_guard(guard: &Guard, ctx: &DecisionContext) -> Result<bool, String> {
    let mut scope = Scope::new();
    // Same order as the guard was compiled with (`GUARD_VARIABLES`).
    scope.push_dynamic("run", ctx.run_view());
    scope.push_dynamic("report", ctx.report_view());
    scope.push_dynamic("incident", ctx.incident_view());
    scope.push_dynamic("comparison", ctx.comparison_view());
    let _deadline = Deadline::start(LIMITS.default_deadline);
    match engine::engine().eval_ast_with_scope::<Dynamic>(&mut scope, &guard.ast) {
        Ok(value) => value.as_bool().map_err(|_| {
            format!("guard `{}` returned {} ({value}), not true or false", guard.source, value.type_name())
        }),
        Err(error) => Err(format!("guard `{}` failed: {error}", guard.source)),
    }
}

fn guard_explanation(
    policies: &PolicySet,
    ctx: &DecisionContext,
    guard: &Guard,
    outcome: &Result<bool, String>,
) -> Explanation {
    let inputs = inputs_digest(ctx, &[&Value::String(guard.source.clone())]);
    let mut explanation = Explanation::rule(
        "guard",
        policies,
        &inputs,
        outcome.as_ref().map_or(Value::Null, |b| Value::Bool(*b)),
        format!("when: {}", guard.source),
    );
    if let Err(error) = outcome {
        explanation.error = Some(error.clone());
        explanation.reason = Some(format!(
            "when: {} — the guard failed, so the step is kept and needs approval (fail closed)",
            guard.source
        ));
    }
    explanation
}

/// The kind used when `classify` failed: the plan continues on the safe side.
fn fallback_kind(ctx: &DecisionContext) -> IncidentKind {
    if ctx.run().status == RunStatus::Failed { IncidentKind::GenericFailure } else { IncidentKind::GenericRecovery }
}

/// The plan of an incident, sealed, and its JSON (made to hash it).
pub(super) async fn plan(
    planner: &Planner,
    ctx: DecisionContext,
    revision: Revision,
) -> Result<(Plan, Value), PlanError> {
    let policies = planner.policies();
    let mut decisions = Vec::new();
    let classified = hooks::classify(policies, &ctx);
    let mut fail_closed = classified.value.is_none();
    let kind = classified.value.clone().unwrap_or_else(|| fallback_kind(&ctx));
    decisions.push(classified.explanation);
    let ctx = ctx.with_incident(kind.clone());

    let (playbook, selection, selection_failed) = select(planner, &ctx, &kind);
    fail_closed |= selection_failed;
    decisions.push(selection);

    let mut walked = Walked::default();
    if let Some(playbook) = playbook {
        walk(planner, &ctx, playbook, &mut walked).await?;
    }
    fail_closed |= walked.failed_closed;
    // Decided before the steps are sealed: a failing `recovery_policy` hook fails the plan
    // closed like any other.
    let policy_flags = hooks::recovery_policy(policies, &ctx);
    fail_closed |= policy_flags.as_ref().is_some_and(|decision| decision.explanation.failed_closed());
    if fail_closed {
        for step in &mut walked.steps {
            if !step.requires_approval {
                step.requires_approval = true;
                step.asks_approval = true;
                step.explanation.push(Explanation::rule(
                    "fail_closed",
                    policies,
                    ctx.digest(),
                    Value::Bool(true),
                    "a policy failed while planning, so every step needs a person's approval",
                ));
                if let Some(node) = playbook.and_then(|p| p.graph.step(&step.id)) {
                    require_approval(policies, &ctx, node, step);
                }
            }
        }
    }

    let mut recovery_policy = Map::new();
    recovery_policy.insert("incidentType".into(), Value::String(kind.to_string()));
    match policy_flags {
        Some(decision) => {
            recovery_policy.extend(decision.value);
            decisions.push(decision.explanation);
        }
        None => recovery_policy.extend(derived_recovery_policy(&walked.steps)),
    }
    let recovery_policy = in_reference_order(recovery_policy);

    let report = ctx.report();
    let lineage = ctx.run().lineage();
    let correlation = json!({
        "traceId": report.root_run_id,
        "spanId": report.run_id,
        "parentSpanId": lineage.parent_run_id.as_ref().or(lineage.branch_origin_run_id.as_ref()),
    });
    let recommended_action = recommended_action(&walked.steps);
    let mut plan = Plan {
        run_id: report.run_id.clone(),
        status: report.status.clone(),
        incident_type: kind,
        recovery_policy,
        correlation,
        incident: report.clone(),
        steps: walked.steps,
        recommended_action,
        plan_id: String::new(),
        plan_hash: String::new(),
        run_revision: revision,
        compare_to_run_id: ctx.compare_to().map(str::to_owned),
        playbook: playbook.map(|p| PlaybookRef {
            name: p.name.clone(),
            version: p.version,
            digest: p.digest.clone(),
            file: p.file.display().to_string(),
        }),
        policy_digest: policies.digest().to_owned(),
        playbook_set_digest: planner.playbooks().digest().to_owned(),
        fail_closed,
        decisions,
        path: walked.path,
        expected_outcome: walked.outcome,
        created_at: now_iso(),
    };
    let json = seal(&mut plan);
    Ok((plan, json))
}

/// The reference's `recommendedAction` generalised: the first step that recovers something —
/// an irreversible action, a branch or a partial replay (a frozen replay only copies the run
/// for inspection) — else the first step, else `inspect_report`.
fn recommended_action(steps: &[PlanStep]) -> String {
    steps
        .iter()
        .find(|step| {
            step.effect == "irreversible"
                || matches!(step.catalog_action.as_str(), "branch_from_checkpoint" | "partial_replay")
        })
        .or_else(|| steps.first())
        .map_or_else(|| "inspect_report".to_owned(), |step| step.action.clone())
}

/// The reference's flag order first (Rhai maps come back sorted by key), then any others.
fn in_reference_order(mut flags: Map<String, Value>) -> Map<String, Value> {
    const ORDER: [&str; 5] = [
        "incidentType",
        "requiresApprovalForBranch",
        "prefersWorkflowScopedRecovery",
        "prefersReplayFirst",
        "prefersCompareFirst",
    ];
    let mut ordered = Map::new();
    for key in ORDER {
        if let Some(value) = flags.shift_remove(key) {
            ordered.insert(key.to_owned(), value);
        }
    }
    ordered.extend(flags);
    ordered
}

/// The reference's `recoveryPolicy` flags, read off the plan when the policies do not define
/// `recovery_policy(ctx)`.
fn derived_recovery_policy(steps: &[PlanStep]) -> Map<String, Value> {
    let branches: Vec<&PlanStep> = steps.iter().filter(|s| s.catalog_action == "branch_from_checkpoint").collect();
    let first_change = steps.iter().position(|s| matches!(s.effect.as_str(), "compensable" | "irreversible"));
    let first_compare = steps.iter().position(|s| s.catalog_action == "compare_to_known_good");
    let mut flags = Map::new();
    flags.insert("requiresApprovalForBranch".into(), Value::Bool(branches.iter().any(|s| s.requires_approval)));
    flags.insert(
        "prefersWorkflowScopedRecovery".into(),
        Value::Bool(branches.iter().any(|s| s.action == "workflow_branch_from_failure_checkpoint")),
    );
    flags.insert(
        "prefersReplayFirst".into(),
        Value::Bool(first_change.is_some_and(|index| {
            matches!(steps[index].catalog_action.as_str(), "resume_replay" | "partial_replay" | "frozen_replay")
        })),
    );
    flags.insert(
        "prefersCompareFirst".into(),
        Value::Bool(
            matches!((first_compare, first_change), (Some(c), Some(f)) if c < f)
                || (first_compare.is_some() && first_change.is_none()),
        ),
    );
    flags
}

/// Chooses the playbook: matching incident kind, `match.when` true, highest priority.
fn select<'a>(
    planner: &'a Planner,
    ctx: &DecisionContext,
    kind: &IncidentKind,
) -> (Option<&'a CompiledPlaybook>, Explanation, bool) {
    let policies = planner.policies();
    let mut notes = Vec::new();
    let mut chosen = None;
    let mut failed = false;
    let mut errors = Vec::new();
    for candidate in planner.playbooks().candidates(kind) {
        if chosen.is_some() {
            notes.push(format!("{} (priority {}): lower priority", candidate.name, candidate.priority));
            continue;
        }
        match candidate.guard.as_ref().map(|guard| evaluate_guard(guard, ctx)) {
            None | Some(Ok(true)) => chosen = Some(candidate),
            Some(Ok(false)) => {
                notes.push(format!("{} (priority {}): match.when is false", candidate.name, candidate.priority))
            }
            Some(Err(error)) => {
                failed = true;
                notes.push(format!("{} (priority {}): match.when failed", candidate.name, candidate.priority));
                errors.push(error);
            }
        }
    }
    let reason = match chosen {
        Some(playbook) => format!(
            "handles incident kind {kind} at priority {}{}",
            playbook.priority,
            if notes.is_empty() { String::new() } else { format!("; also considered: {}", notes.join("; ")) }
        ),
        None if notes.is_empty() => format!("no playbook handles incident kind {kind}"),
        None => format!("no playbook applies to incident kind {kind}: {}", notes.join("; ")),
    };
    let mut explanation = Explanation::rule(
        "playbook",
        policies,
        ctx.digest(),
        chosen.map_or(Value::Null, |p| Value::String(p.name.clone())),
        reason,
    );
    if !errors.is_empty() {
        explanation.error = Some(errors.join("; "));
    }
    (chosen, explanation, failed)
}

#[derive(Default)]
struct Walked {
    steps: Vec<PlanStep>,
    path: Vec<PathEntry>,
    outcome: Option<String>,
    failed_closed: bool,
}

async fn walk(
    planner: &Planner,
    ctx: &DecisionContext,
    playbook: &CompiledPlaybook,
    walked: &mut Walked,
) -> Result<(), PlanError> {
    let graph = &playbook.graph;
    let policies = planner.policies();
    let mut node = graph.start();
    let mut visits = std::collections::HashMap::new();
    for _ in 0..WALK_BUDGET {
        let step = match graph.node(node) {
            GraphNode::End(end) => {
                walked.path.push(PathEntry { node: end.id.clone(), kind: "end", transition: end.outcome.to_string() });
                walked.outcome = Some(end.outcome.to_string());
                return Ok(());
            }
            GraphNode::Step(step) => step,
        };
        let count = visits.entry(node).or_insert(0u32);
        *count += 1;
        if step.max_visits.is_some_and(|max| *count > max)
            && let Some(next) = graph.next(node, Transition::Exhausted)
        {
            walked.path.push(PathEntry { node: step.id.clone(), kind: "step", transition: "exhausted".into() });
            node = next;
            continue;
        }
        let mut explanation = Vec::new();
        let mut guard_failed = false;
        if let Some(guard) = &step.guard {
            let outcome = evaluate_guard(guard, ctx);
            explanation.push(guard_explanation(policies, ctx, guard, &outcome));
            match outcome {
                Ok(false) => {
                    walked.path.push(PathEntry { node: step.id.clone(), kind: "step", transition: "skip".into() });
                    node = graph.next(node, Transition::Skip).unwrap_or(node);
                    continue;
                }
                Ok(true) => {}
                Err(_) => guard_failed = true,
            }
        }
        let (mut plan_step, prediction) = plan_step(planner, ctx, step, explanation).await?;
        if guard_failed && !plan_step.requires_approval {
            require_approval(policies, ctx, step, &mut plan_step);
        }
        settle_asks_approval(planner, ctx, graph, walked.path.last(), step, &mut plan_step);
        walked.failed_closed |= guard_failed || plan_step.explanation.iter().any(Explanation::failed_closed);
        let outcome = prediction.as_ref().map_or_else(|| expected_outcome(step), |p| p.outcome);
        plan_step.expected_outcome = outcome.to_owned();
        plan_step.exits = graph
            .transitions(node)
            .into_iter()
            .filter(|(transition, _)| matches!(transition, Transition::Outcome(_)))
            .map(|(transition, target)| {
                (transition.as_str().to_owned(), Value::String(graph.node(target).id().to_owned()))
            })
            .collect();
        plan_step.prediction = prediction;
        walked.path.push(PathEntry { node: step.id.clone(), kind: "step", transition: outcome.to_owned() });
        walked.steps.push(plan_step);
        node = match graph.follow(node, outcome) {
            Some(next) => next,
            None => return Err(PlanError::WalkBudget { playbook: playbook.name.clone(), steps: walked.path.len() }),
        };
    }
    Err(PlanError::WalkBudget { playbook: playbook.name.clone(), steps: WALK_BUDGET })
}

/// Whether the runner will stop for a person at a step (see [`PlanStep::asks_approval`]); a
/// `resolve_approval` entered from the `approved` exit of a `request_approval` step carries that
/// decision — one decision, asked once. The explanation says which.
fn settle_asks_approval(
    planner: &Planner,
    ctx: &DecisionContext,
    graph: &crate::playbook::RecoveryGraph,
    entered_from: Option<&PathEntry>,
    step: &StepNode,
    plan_step: &mut PlanStep,
) {
    plan_step.asks_approval = plan_step.requires_approval || step.action == Action::RequestApproval;
    if step.action != Action::ResolveApproval || plan_step.requires_approval {
        return;
    }
    let carried = entered_from.filter(|entry| {
        entry.transition == "approved" && graph.step(&entry.node).is_some_and(|s| s.action == Action::RequestApproval)
    });
    let policies = planner.policies();
    match carried {
        Some(entry) => plan_step.explanation.push(Explanation::rule(
            "approval",
            policies,
            ctx.digest(),
            Value::Bool(false),
            format!(
                "the decision on the tool call is the one given at step {} (its approved exit leads here)",
                entry.node
            ),
        )),
        None => {
            plan_step.asks_approval = true;
            plan_step.explanation.push(Explanation::rule(
                "approval",
                policies,
                ctx.digest(),
                Value::Bool(true),
                "resolving a tool approval runs the gated tool: the runner asks a person, whatever the plan's \
                 requiresApproval says (salvage never approves a tool on anyone's behalf)",
            ));
            if plan_step.approvers.is_none() {
                let step_json = step_json(ctx, step, &plan_step.action, &plan_step.reason, &plan_step.payload);
                plan_step.approvers = approvers_of(policies, ctx, step, &step_json, &mut plan_step.explanation);
            }
            note_quorum(policies, ctx, step, plan_step);
        }
    }
}

/// One step decided outside a walk (see [`Planner::decide_step`]).
pub(super) async fn decide_step(
    planner: &Planner,
    ctx: &DecisionContext,
    step: &StepNode,
) -> Result<PlanStep, PlanError> {
    let (mut plan_step, prediction) = plan_step(planner, ctx, step, Vec::new()).await?;
    plan_step.expected_outcome = prediction.as_ref().map_or_else(|| expected_outcome(step), |p| p.outcome).to_owned();
    plan_step.prediction = prediction;
    Ok(plan_step)
}

/// The outcome a step without a check is expected to have: a person approves; effects succeed.
fn expected_outcome(step: &StepNode) -> &'static str {
    match step.action {
        Action::RequestApproval => "approved",
        _ => step.spec().outcomes.first().copied().unwrap_or("ok"),
    }
}

/// Runs the read-only check behind a step, when it has one, to predict its outcome.
async fn predict(planner: &Planner, ctx: &DecisionContext, step: &StepNode) -> Result<Option<CheckResult>, PlanError> {
    let store = planner_store(planner);
    let run = ctx.run();
    Ok(match step.action {
        Action::CompareToKnownGood => Some(checks::compare_to_known_good(ctx.report().comparison.as_ref())),
        Action::InspectRunTree => {
            let root_status = ctx.report().run_tree.as_ref().map(|root| &root.status);
            Some(checks::inspect_run_tree(run, root_status))
        }
        Action::InspectSideEffects => Some(checks::inspect_side_effects(run, |tool| ctx.tool_effect(tool))),
        Action::VerifyPersisted => Some(checks::verify_persisted(store, run).await?),
        Action::CheckDuplicateDelivery => Some(checks::check_duplicate_delivery(store, run).await?),
        Action::CheckEnvelope => Some(checks::check_envelope(store, run).await?),
        _ => None,
    })
}

fn planner_store(planner: &Planner) -> &dyn crate::store::RunStore {
    planner.store.as_ref()
}

/// `value || null` with JavaScript truthiness.
fn or_null(value: Option<Value>) -> Value {
    value.filter(truthy).unwrap_or(Value::Null)
}

async fn plan_step(
    planner: &Planner,
    ctx: &DecisionContext,
    step: &StepNode,
    mut explanation: Vec<Explanation>,
) -> Result<(PlanStep, Option<CheckResult>), PlanError> {
    let policies = planner.policies();
    let spec = step.spec();
    let report = ctx.report();

    // The checkpoint, for the actions that start from one.
    let mut checkpoint: Option<String> = None;
    if spec.params.contains(&Param::Checkpoint) {
        match &step.params.checkpoint {
            Some(hook) => {
                let decision = hooks::choose_checkpoint(policies, hook, ctx);
                checkpoint = decision.value;
                explanation.push(decision.explanation);
            }
            None => {
                checkpoint = report.last_checkpoint.as_ref().and_then(|cp| cp.id.clone());
                let mut rule = Explanation::rule(
                    "checkpoint",
                    policies,
                    ctx.digest(),
                    checkpoint.clone().map_or(Value::Null, Value::String),
                    "no checkpoint hook: the run's last checkpoint (the reference planner's choice)",
                );
                rule.candidates = Some(hooks::candidates(ctx, checkpoint.as_deref()));
                explanation.push(rule);
            }
        }
    }

    let payload = payload(ctx, step, checkpoint.as_deref());
    let action = step.plan_action().to_owned();
    let reason =
        step.params.reason.clone().or_else(|| step.description.clone()).unwrap_or_else(|| spec.description.to_owned());
    let step_json = step_json(ctx, step, &action, &reason, &payload);

    let requires_approval = match &step.params.approval {
        ApprovalRule::Always => {
            explanation.push(Explanation::rule(
                "approval",
                policies,
                ctx.digest(),
                Value::Bool(true),
                "the playbook says `approval: always`",
            ));
            true
        }
        ApprovalRule::Never { why } => {
            explanation.push(Explanation::rule(
                "approval",
                policies,
                ctx.digest(),
                Value::Bool(false),
                format!("the playbook says `approval: never`: {why}"),
            ));
            false
        }
        ApprovalRule::Hook(hook) => {
            let decision = hooks::requires_approval(policies, hook, &step_json, ctx);
            explanation.push(decision.explanation);
            decision.value
        }
        ApprovalRule::Unspecified if step.action == Action::RequestApproval => {
            explanation.push(Explanation::rule(
                "approval",
                policies,
                ctx.digest(),
                Value::Bool(true),
                "a request_approval step waits for a person",
            ));
            true
        }
        ApprovalRule::Unspecified => false,
    };
    // A failed checkpoint choice never lets the step through either.
    let requires_approval = requires_approval || explanation.iter().any(Explanation::failed_closed);

    let approvers =
        if requires_approval { approvers_of(policies, ctx, step, &step_json, &mut explanation) } else { None };

    let prediction = predict(planner, ctx, step).await?;
    let mut plan_step = PlanStep {
        action,
        priority: step.params.priority.as_str().to_owned(),
        reason,
        run_id: report.run_id.clone(),
        payload,
        requires_approval,
        id: step.id.clone(),
        catalog_action: spec.name.to_owned(),
        effect: spec.effect.as_str().to_owned(),
        asks_approval: requires_approval || step.action == Action::RequestApproval,
        expected_outcome: String::new(),
        exits: Map::new(),
        target: step.params.target.clone(),
        approvers,
        quorum: 1,
        timeout_ms: step.params.timeout.map(|t| t.as_millis() as u64),
        retry: step.retry.map(|retry| RetryPolicy {
            max_attempts: retry.max_attempts,
            backoff_ms: retry.backoff.as_millis() as u64,
        }),
        prediction: None,
        explanation,
    };
    if plan_step.asks_approval {
        note_quorum(policies, ctx, step, &mut plan_step);
    }
    Ok((plan_step, prediction))
}

/// A step as policy hooks see it (`requires_approval(step, ctx)`, `approvers(step, ctx)`).
fn step_json(
    ctx: &DecisionContext,
    step: &StepNode,
    action: &str,
    reason: &str,
    payload: &Map<String, Value>,
) -> Value {
    json!({
        "id": step.id,
        "action": action,
        "catalogAction": step.spec().name,
        "effect": step.spec().effect.as_str(),
        "scope": step.params.scope.as_str(),
        "priority": step.params.priority.as_str(),
        "reason": reason,
        "payload": payload,
        "target": step.params.target,
        "incident": ctx.incident().map(IncidentKind::as_str),
    })
}

/// Who may approve `step`: the playbook's `approvers:`, else the policy set's
/// `approvers(step, ctx)` hook, else nobody is named.
fn approvers_of(
    policies: &PolicySet,
    ctx: &DecisionContext,
    step: &StepNode,
    step_json: &Value,
    explanation: &mut Vec<Explanation>,
) -> Option<Approvers> {
    match &step.params.approvers {
        Some(ApproversRule::Hook(hook)) => {
            let decision = hooks::approvers(policies, hook, step_json, ctx);
            explanation.push(decision.explanation);
            Some(decision.value)
        }
        Some(ApproversRule::Names(names)) => Some(Approvers { names: names.clone(), allow_self_approval: false }),
        None if policies.function("approvers", 2).is_some() => {
            let decision = hooks::approvers(policies, "approvers", step_json, ctx);
            explanation.push(decision.explanation);
            Some(decision.value)
        }
        None => None,
    }
}

/// Makes a step that was planned without approval require it (a policy failed): the people
/// who may approve it are chosen as for any step that needs approval, so that the approval a
/// fail-closed plan demands can be given.
fn require_approval(policies: &PolicySet, ctx: &DecisionContext, step: &StepNode, plan_step: &mut PlanStep) {
    plan_step.requires_approval = true;
    if plan_step.approvers.is_none() {
        let step_json = step_json(ctx, step, &plan_step.action, &plan_step.reason, &plan_step.payload);
        plan_step.approvers = approvers_of(policies, ctx, step, &step_json, &mut plan_step.explanation);
    }
    note_quorum(policies, ctx, step, plan_step);
}

/// Carries the playbook's `approval.quorum` onto a step that asks for approval, and says so in
/// its explanation ("needs 2 of alice, bob, carol"). A quorum of 1 changes nothing in the plan.
fn note_quorum(policies: &PolicySet, ctx: &DecisionContext, step: &StepNode, plan_step: &mut PlanStep) {
    let quorum = step.params.quorum;
    if quorum <= 1 || plan_step.quorum == quorum {
        return;
    }
    plan_step.quorum = quorum;
    let who = match plan_step.approvers.as_ref().filter(|a| !a.names.is_empty()) {
        Some(approvers) => approvers.names.join(", "),
        None => "the approvers".to_owned(),
    };
    plan_step.explanation.push(Explanation::rule(
        "quorum",
        policies,
        ctx.digest(),
        Value::from(quorum),
        format!(
            "needs {quorum} of {who}: {quorum} distinct approvers must approve; the person who started the \
             execution never counts"
        ),
    ));
}

/// The step's payload: the reference's keys for the reference's actions.
fn payload(ctx: &DecisionContext, step: &StepNode, checkpoint: Option<&str>) -> Map<String, Value> {
    let report = ctx.report();
    let checkpoint_value = checkpoint.map_or(Value::Null, |id| Value::String(id.to_owned()));
    let mut payload = Map::new();
    match step.action {
        Action::ResolveApproval | Action::DenyApproval => {
            let approval = report.pending_approval.as_ref();
            payload.insert("toolName".into(), or_null(approval.and_then(|a| a.get("toolName"))));
            payload
                .insert("toolCallId".into(), or_null(approval.and_then(|a| a.tool_call.as_ref()?.get("id").cloned())));
        }
        Action::ResumeReplay => {
            let pause = report.pending_pause.as_ref();
            payload.insert("sourceRunId".into(), or_null(pause.and_then(|p| p.get("sourceRunId"))));
            payload.insert("sourceCheckpointId".into(), or_null(pause.and_then(|p| p.get("sourceCheckpointId"))));
        }
        Action::BranchFromCheckpoint => {
            // JavaScript leaves `failedStepId` out when the step has no id.
            if let Some(id) = report.failed_steps.last().and_then(|step| step.get("id")) {
                payload.insert("failedStepId".into(), id);
            }
            payload.insert("checkpointId".into(), checkpoint_value);
        }
        Action::PartialReplay => {
            payload.insert("checkpointId".into(), checkpoint_value);
        }
        Action::CompareToKnownGood => {
            payload.insert(
                "compareToRunId".into(),
                ctx.compare_to().map_or(Value::Null, |id| Value::String(id.to_owned())),
            );
        }
        Action::ExportBundle => {
            let mut ids = Vec::new();
            if let Some(root) = &report.run_tree {
                collect_ids(root, &mut ids);
            }
            if !ids.contains(&report.run_id) {
                ids.push(report.run_id.clone());
            }
            if let Some(other) = ctx.compare_to().filter(|id| !ids.iter().any(|i| i == id)) {
                ids.push(other.to_owned());
            }
            payload.insert("runIds".into(), json!(ids));
        }
        Action::Notify => {
            payload.insert("message".into(), json!(step.params.message));
            payload.insert("channel".into(), json!(step.params.channel));
        }
        Action::Wait => {
            payload.insert("durationMs".into(), json!(step.params.duration.map(|d| d.as_millis() as u64)));
        }
        Action::RequestApproval | Action::AwaitRun => {
            payload.insert("timeoutMs".into(), json!(step.params.timeout.map(|d| d.as_millis() as u64)));
        }
        Action::VerifyPersisted | Action::CheckDuplicateDelivery | Action::CheckEnvelope => {
            if let Some((source, checkpoint)) = checks::continuation_source(ctx.run()) {
                payload.insert("sourceRunId".into(), Value::String(source));
                payload.insert("sourceCheckpointId".into(), checkpoint.map_or(Value::Null, Value::String));
            }
        }
        Action::InspectSideEffects => {
            if let Some(step) = ctx.first_failing_step() {
                payload.insert("failedStepId".into(), step.get("id").unwrap_or(Value::Null));
                payload
                    .insert("toolName".into(), step.tool_name().map_or(Value::Null, |t| Value::String(t.to_owned())));
            }
        }
        Action::InspectReport
        | Action::InspectRunTree
        | Action::ResumeRun
        | Action::FrozenReplay
        | Action::CancelRun => {}
    }
    payload
}

/// The tree's run ids, depth first in child order (with an explicit stack: no walk over user
/// data recurses).
fn collect_ids(root: &crate::inspect::RunTreeNode, ids: &mut Vec<String>) {
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        ids.push(node.id.clone());
        stack.extend(node.children.iter().rev());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Run;

    fn run(id: &str, parent: Option<&str>, second: u32) -> Run {
        Run::from_value(json!({
            "id": id, "status": "failed",
            "timestamps": {"createdAt": format!("2025-01-01T00:00:{second:02}.000Z")},
            "metadata": {"lineage": {"rootRunId": "R", "parentRunId": parent}}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn tree_ids_are_collected_depth_first_in_child_order() {
        let runs = [
            run("R", None, 0),
            run("B", Some("R"), 3),
            run("A", Some("R"), 1),
            run("A1", Some("A"), 2),
            run("A2", Some("A"), 4),
            run("B1", Some("B"), 5),
        ];
        let tree = crate::inspect::tree_from_runs(&runs, "R").unwrap_or_else(|e| panic!("{e}"));
        let root = tree.root.unwrap_or_else(|| panic!("root"));
        let mut ids = Vec::new();
        collect_ids(&root, &mut ids);
        assert_eq!(ids, ["R", "A", "A1", "A2", "B", "B1"]);
    }
}
