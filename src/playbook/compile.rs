//! Name resolution, per-step checks and lowering into a [`RecoveryGraph`].
//!
//! Pipeline for one file: YAML → node tree ([`super::yaml`]) → language types ([`super::read`])
//! → resolve names and check each step (here) → lower into the graph → graph checks
//! ([`super::checks`]). Every phase reports all it finds; the graph checks run only when the
//! graph is complete (start, every action and every exit resolved), because a graph with a
//! dangling exit would produce a cascade of "unreachable" and "cannot terminate" noise.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};
use rhai::{ParseErrorType, Scope as RhaiScope};
use sha2::{Digest, Sha256};

use super::catalog::{Action, EffectClass, Param, Scope};
use super::checks;
use super::diagnostic::{Code, Reporter};
use super::graph::{
    ApprovalRule, Approvers, CompiledPlaybook, EndNode, GUARD_VARIABLES, GraphNode, Guard, IncidentMatch, Location,
    PlaybookSpans, RecoveryGraph, Retry, StepNode, StepParams, Transition,
};
use super::language::{ApprovalSpec, ApproversSpec, IncidentSelector, PlaybookSpec, Sp, StepSpec};
use super::suggest::did_you_mean;
use super::yaml::ParseErrorKind;
use crate::policy::source::{LineIndex, Span, token_len};
use crate::policy::{PolicySet, engine, hex};

/// Where a hook is called from, and with which arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPosition {
    /// `approval: policy.NAME` — NAME(step, ctx).
    Approval,
    /// `approvers: policy.NAME` — NAME(step, ctx).
    Approvers,
    /// `checkpoint: policy.NAME` — NAME(ctx).
    Checkpoint,
}

impl HookPosition {
    pub const ALL: &'static [HookPosition] =
        &[HookPosition::Approval, HookPosition::Approvers, HookPosition::Checkpoint];

    pub fn field(self) -> &'static str {
        match self {
            HookPosition::Approval => "approval",
            HookPosition::Approvers => "approvers",
            HookPosition::Checkpoint => "checkpoint",
        }
    }

    /// The parameters the hook is called with.
    pub fn params(self) -> &'static [&'static str] {
        match self {
            HookPosition::Approval | HookPosition::Approvers => &["step", "ctx"],
            HookPosition::Checkpoint => &["ctx"],
        }
    }
}

/// Compiles one playbook text. Diagnostics go to the reporter; the playbook is returned only
/// when there is no error.
pub(crate) fn compile_text(r: &mut Reporter, policies: Option<&PolicySet>) -> Option<CompiledPlaybook> {
    let text = r.text().to_owned();
    let root = match super::yaml::parse(&text) {
        Ok(root) => root,
        Err(error) => {
            let span = error.span.unwrap_or(Span::new(0, 0));
            match error.kind {
                ParseErrorKind::Syntax => {
                    r.report(Code::YamlSyntax, span, error.message.clone(), "here");
                }
                ParseErrorKind::Budget => {
                    r.report(Code::ParseBudget, span, error.message.clone(), "parse budget exceeded here").help(
                        "playbooks are small; remove repeated aliases or split the file (see `salvage explain P002`)",
                    );
                }
                ParseErrorKind::SeveralDocuments => {
                    r.report(Code::NotAPlaybook, span, error.message.clone(), "second document")
                        .help("put each playbook in its own file");
                }
            }
            return None;
        }
    };
    let custom_kinds: Option<Vec<&str>> = policies.map(|set| set.custom_incident_kinds().collect());
    let spec = super::read::playbook(r, &root, custom_kinds.as_deref())?;
    let compiled = lower(r, &spec, policies)?;
    if r.has_errors() {
        return None;
    }
    let digest = hex(&Sha256::digest(text.as_bytes()));
    Some(CompiledPlaybook { digest, file: r.file().to_path_buf(), source: Arc::from(text), ..compiled })
}

struct Ids {
    /// id → (is_step, span of its key)
    all: HashMap<String, (bool, Span)>,
    names: Vec<String>,
}

impl Ids {
    fn resolve(&self, r: &mut Reporter, reference: &Sp<String>, what: &str, steps_only: bool) -> bool {
        match self.all.get(&reference.value) {
            Some((is_step, _)) if *is_step || !steps_only => true,
            Some(_) => {
                r.report(
                    Code::UnknownStep,
                    reference.span,
                    format!("{what} `{}` is an end, not a step", reference.value),
                    "an end",
                )
                .help("only a step can be named here");
                false
            }
            None => {
                let candidates = self.names.iter().map(String::as_str);
                let help = did_you_mean(&reference.value, candidates)
                    .unwrap_or_else(|| format!("known ids: {}", self.names.join(", ")));
                r.report(
                    Code::UnknownStep,
                    reference.span,
                    format!("{what} `{}` is not a step or end of this playbook", reference.value),
                    "unknown step",
                )
                .help(help);
                false
            }
        }
    }
}

fn location(r: &Reporter, index: &LineIndex, span: Span) -> Location {
    let (line, column) = index.line_column(r.text(), span.start);
    Location { line, column, span }
}

/// Parameters set on a step, with the span of their value.
fn params_set(step: &StepSpec) -> Vec<(Param, Span)> {
    let mut set = Vec::new();
    let mut add = |param: Param, span: Option<Span>| {
        if let Some(span) = span {
            set.push((param, span));
        }
    };
    add(Param::Reason, step.reason.as_ref().map(|v| v.span));
    add(Param::Priority, step.priority.as_ref().map(|v| v.span));
    add(Param::Approval, step.approval.as_ref().map(|v| v.span));
    add(Param::Why, step.why.as_ref().map(|v| v.span));
    add(Param::Approvers, step.approvers.as_ref().map(|v| v.span));
    add(Param::Retry, step.retry.as_ref().map(|retry| retry.max_attempts.as_ref().map(|v| v.span).unwrap_or_default()));
    add(Param::Checkpoint, step.checkpoint.as_ref().map(|v| v.span));
    add(Param::Scope, step.scope.as_ref().map(|v| v.span));
    add(Param::Timeout, step.timeout.as_ref().map(|v| v.span));
    add(Param::Target, step.target.as_ref().map(|v| v.span));
    add(Param::Message, step.message.as_ref().map(|v| v.span));
    add(Param::Channel, step.channel.as_ref().map(|v| v.span));
    add(Param::Duration, step.duration.as_ref().map(|v| v.span));
    set
}

fn lower(r: &mut Reporter, spec: &PlaybookSpec, policies: Option<&PolicySet>) -> Option<CompiledPlaybook> {
    let index = LineIndex::new(r.text());
    let empty = Vec::new();
    let steps = spec.steps.as_ref().unwrap_or(&empty);
    let empty_ends = Vec::new();
    let ends = spec.ends.as_ref().unwrap_or(&empty_ends);

    // Step and end ids share one namespace.
    let mut ids = Ids { all: HashMap::new(), names: Vec::new() };
    for (id, _) in steps {
        ids.all.insert(id.value.clone(), (true, id.span));
        ids.names.push(id.value.clone());
    }
    for (id, _) in ends {
        if let Some((_, first)) = ids.all.get(&id.value) {
            let first = *first;
            r.report(
                Code::DuplicateStepId,
                id.span,
                format!("end `{}` has the id of a step", id.value),
                "duplicate id",
            )
            .related(first, "the step")
            .help("steps and ends share one namespace; rename one of them");
            continue;
        }
        ids.all.insert(id.value.clone(), (false, id.span));
        ids.names.push(id.value.clone());
    }

    if spec.description.is_none() && spec.playbook.is_some() {
        let span = spec.playbook.as_ref().map(|p| p.span).unwrap_or_default();
        r.report(Code::MissingPlaybookDescription, span, "playbook without `description`", "no description")
            .help("add `description:` saying which incident this handles");
    }

    let mut complete = spec.steps.is_some() && spec.ends.is_some();
    match &spec.start {
        // Without readable steps every id would look unknown.
        Some(start) if spec.steps.is_some() => complete &= ids.resolve(r, start, "`start`", true),
        _ => complete = false,
    }

    let mut compiled_steps: Vec<StepNode> = Vec::new();
    // (outcome-or-transition, target id) per step, in edge order.
    let mut step_edges: Vec<Vec<(Transition, String)>> = Vec::new();
    for (id, step) in steps {
        let lowered = lower_step(r, &index, &ids, id, step, policies);
        match lowered {
            Some((node, edges)) => {
                compiled_steps.push(node);
                step_edges.push(edges);
            }
            None => complete = false,
        }
    }

    let mut compiled_ends = Vec::new();
    for (id, end) in ends {
        match &end.outcome {
            Some(outcome) => compiled_ends.push(EndNode {
                id: id.value.clone(),
                outcome: outcome.value,
                description: end.description.as_ref().map(|d| d.value.clone()),
                location: location(r, &index, id.span),
            }),
            None => complete = false,
        }
    }

    let guard = spec.match_.as_ref().and_then(|m| m.when.as_ref()).and_then(|when| compile_guard(r, &index, when));
    let incidents = spec.match_.as_ref().and_then(|m| m.incident.as_ref()).map(|selector| match &selector.value {
        IncidentSelector::Any => IncidentMatch::Any,
        IncidentSelector::Kinds(kinds) => IncidentMatch::Kinds(kinds.iter().map(|k| k.value.clone()).collect()),
    });

    if !complete {
        return None;
    }
    // Lower into the graph: steps in declaration order, then ends.
    let mut graph: DiGraph<GraphNode, Transition> = DiGraph::new();
    let mut node_of: HashMap<String, NodeIndex> = HashMap::new();
    for step in &compiled_steps {
        let index = graph.add_node(GraphNode::Step(Box::new(step.clone())));
        node_of.insert(step.id.clone(), index);
    }
    for end in compiled_ends {
        let id = end.id.clone();
        if node_of.contains_key(&id) {
            continue;
        }
        let index = graph.add_node(GraphNode::End(end));
        node_of.insert(id, index);
    }
    for (step, edges) in compiled_steps.iter().zip(&step_edges) {
        let from = node_of[&step.id];
        for (transition, target) in edges {
            let &to = node_of.get(target)?;
            graph.add_edge(from, to, *transition);
        }
    }
    let start = node_of[&spec.start.as_ref()?.value];
    let recovery = RecoveryGraph::new(graph, start, node_of);
    checks::check_graph(r, &recovery, &steps.iter().map(|(id, step)| (id, step)).collect::<Vec<_>>());

    Some(CompiledPlaybook {
        name: spec.playbook.as_ref()?.value.clone(),
        version: spec.version.as_ref()?.value,
        description: spec.description.as_ref().map(|d| d.value.clone()),
        file: Path::new("").to_path_buf(),
        digest: String::new(),
        incidents: incidents?,
        guard,
        priority: spec.priority.as_ref().map_or(0, |p| p.value),
        graph: recovery,
        source: Arc::from(""),
        spans: PlaybookSpans {
            name: spec.playbook.as_ref().map(|p| p.span).unwrap_or_default(),
            incident: spec.match_.as_ref().and_then(|m| m.incident.as_ref()).map(|i| i.span).unwrap_or_default(),
        },
    })
}

/// Checks one step and lowers it; `None` when the graph cannot be built from it (unknown action
/// or unresolved exit). Other errors are reported but do not stop the graph checks.
fn lower_step(
    r: &mut Reporter,
    index: &LineIndex,
    ids: &Ids,
    id: &Sp<String>,
    step: &StepSpec,
    policies: Option<&PolicySet>,
) -> Option<(StepNode, Vec<(Transition, String)>)> {
    let mut resolvable = true;

    // Exits resolve whatever the action.
    if let Some(next) = &step.next {
        resolvable &= ids.resolve(r, next, "`next`", false);
    }
    for (_, target) in step.on.iter().flatten() {
        resolvable &= ids.resolve(r, target, "exit", false);
    }
    if let Some(target) = &step.target {
        ids.resolve(r, target, "`target`", true);
    }

    let guard = step.when.as_ref().and_then(|when| compile_guard(r, index, when));
    if step.description.is_none() {
        r.report(
            Code::MissingStepDescription,
            id.span,
            format!("step `{}` has no description", id.value),
            "no description",
        )
        .help("add `description:`; it is shown in plans and approval requests");
    }

    let Some(action) = &step.action else {
        return None;
    };
    let spec = action.value.spec();

    // Parameters the action does not take, and those it needs.
    for (param, span) in params_set(step) {
        if param == Param::Retry || spec.accepts(param) {
            continue;
        }
        let accepted: Vec<&str> = spec.accepted().filter(|p| *p != Param::Retry).map(Param::name).collect();
        r.report(
            Code::ParameterNotAllowed,
            span,
            format!("`{}` is not a parameter of `{}`", param.name(), spec.name),
            format!("not used by `{}`", spec.name),
        )
        .help(format!("`{}` accepts: {}", spec.name, accepted.join(", ")));
    }
    let set: Vec<Param> = params_set(step).into_iter().map(|(param, _)| param).collect();
    for required in spec.required {
        // A parameter written but unreadable was already reported.
        if !set.contains(required) && !step.invalid.contains(&required.name()) {
            r.report(
                Code::MissingParameter,
                action.span,
                format!("`{}` needs `{}`", spec.name, required.name()),
                format!("`{}` is missing", required.name()),
            )
            .help(match required {
                Param::Timeout => "add e.g. `timeout: 30m`; an approval without a timeout can hang the recovery",
                Param::Duration => "add e.g. `duration: 5m`",
                Param::Message => "add `message: <text to send>`",
                _ => "add it",
            });
        }
    }
    if let Some(retry) = &step.retry {
        let span = retry.max_attempts.as_ref().map(|m| m.span).unwrap_or(action.span);
        if spec.effect == EffectClass::Irreversible {
            r.report(
                Code::RetryIrreversible,
                span,
                format!("`{}` is irreversible and cannot be retried automatically", spec.name),
                "automatic retry",
            )
            .help(
                "route `failed` to a `request_approval` step and loop back from `approved`, bounded with `max_visits`",
            );
        } else if !spec.produces("failed") {
            r.report(
                Code::RetryWithoutFailure,
                span,
                format!("`{}` has no `failed` outcome to retry", spec.name),
                "nothing to retry",
            );
        }
    }

    // Outcomes and exits.
    let mut produced: Vec<Transition> = spec.outcomes.iter().map(|o| Transition::Outcome(o)).collect();
    if step.max_visits.is_some() {
        produced.push(Transition::Exhausted);
    }
    for (outcome, _) in step.on.iter().flatten() {
        if !produced.iter().any(|t| t.as_str() == outcome.value) {
            let listed: Vec<&str> = produced.iter().map(Transition::as_str).collect();
            let help = if outcome.value == "skip" {
                "a false `when` guard follows `next`; `skip` is not an outcome".to_owned()
            } else if outcome.value == "exhausted" {
                "`exhausted` exists only on a step with `max_visits`".to_owned()
            } else {
                let suggestion = did_you_mean(&outcome.value, listed.iter().copied());
                format!(
                    "{}`{}` produces: {}",
                    suggestion.map(|s| format!("{s} ")).unwrap_or_default(),
                    spec.name,
                    listed.join(", ")
                )
            };
            r.report(
                Code::OutcomeNeverProduced,
                outcome.span,
                format!("`{}` never produces outcome `{}`", spec.name, outcome.value),
                "impossible outcome",
            )
            .help(help);
        }
    }
    let exit_for = |transition: &Transition| -> Option<String> {
        step.on
            .iter()
            .flatten()
            .find(|(outcome, _)| outcome.value == transition.as_str())
            .map(|(_, target)| target.value.clone())
            .or_else(|| step.next.as_ref().map(|next| next.value.clone()))
    };
    // Unreadable exits were reported; checking coverage without them would only add noise.
    if step.invalid.contains(&"next") || step.invalid.contains(&"on") {
        return None;
    }
    let mut edges = Vec::new();
    for transition in &produced {
        match exit_for(transition) {
            Some(target) => edges.push((*transition, target)),
            None => {
                resolvable = false;
                r.report(
                    Code::UnhandledOutcome,
                    id.span,
                    format!("step `{}` has no exit for outcome `{}`", id.value, transition),
                    format!("`{transition}` goes nowhere"),
                )
                .help(format!("add `on: {{ {transition}: <step or end> }}` or a `next:`"));
            }
        }
    }
    if step.when.is_some() {
        match &step.next {
            Some(next) => edges.push((Transition::Skip, next.value.clone())),
            None => {
                resolvable = false;
                let span = step.when.as_ref().map(|w| w.span).unwrap_or(id.span);
                r.report(
                    Code::GuardWithoutNext,
                    span,
                    format!("step `{}` has a guard but no `next` to skip to", id.value),
                    "skipped to where?",
                )
                .help("add `next:`; a false guard continues there");
            }
        }
    } else if let Some(next) = &step.next {
        let covered = produced.iter().all(|t| step.on.iter().flatten().any(|(outcome, _)| outcome.value == t.as_str()));
        if covered {
            r.report(
                Code::UnusedNext,
                next.span,
                format!("`next` of step `{}` is never taken", id.value),
                "never taken",
            )
            .help("`on:` lists every outcome; remove `next` or the duplicate `on:` entries");
        }
    }
    if action.value == Action::RequestApproval {
        for required in ["denied", "timeout"] {
            if !step.on.iter().flatten().any(|(outcome, _)| outcome.value == required) {
                r.report(
                    Code::ApprovalExitsMissing,
                    action.span,
                    format!("approval step `{}` has no explicit `{required}` exit", id.value),
                    format!("where does `{required}` go?"),
                )
                .help(format!("add `{required}: <step or end>` to `on:` (usually an `abandoned` or `escalated` end)"));
            }
        }
    }

    // Approval rules.
    let approval = match step.approval.as_ref().map(|a| &a.value) {
        None => ApprovalRule::Unspecified,
        // `approval: { approvers, quorum }` on the approval step itself says only who decides.
        Some(ApprovalSpec::Always) if step.approval_when_implied && action.value == Action::RequestApproval => {
            ApprovalRule::Unspecified
        }
        Some(ApprovalSpec::Always) => ApprovalRule::Always,
        Some(ApprovalSpec::Hook(hook)) => ApprovalRule::Hook(hook.name.clone()),
        Some(ApprovalSpec::Never) => match &step.why {
            Some(why) => ApprovalRule::Never { why: why.value.clone() },
            None => {
                let span = step.approval.as_ref().map(|a| a.span).unwrap_or(id.span);
                r.report(
                    Code::NeverWithoutWhy,
                    span,
                    format!("step `{}` opts out of approval without saying why", id.value),
                    "`never` needs a `why:`",
                )
                .help("add `why: <reason>` next to `approval: never`");
                ApprovalRule::Never { why: String::new() }
            }
        },
    };
    if let Some(why) = &step.why
        && !matches!(step.approval.as_ref().map(|a| &a.value), Some(ApprovalSpec::Never))
    {
        r.report(Code::WhyWithoutNever, why.span, "`why` is used only with `approval: never`", "ignored")
            .help("use `reason:` for the plan step's reason");
    }
    if approval.is_gate() && spec.effect == EffectClass::ReadOnly {
        let span = step.approval.as_ref().map(|a| a.span).unwrap_or(id.span);
        r.report(
            Code::ApprovalOnReadOnly,
            span,
            format!("`{}` is read-only; approving it protects nothing", spec.name),
            "approval on a read-only action",
        );
    }
    if let Some(approvers) = &step.approvers
        && action.value != Action::RequestApproval
        && !approval.is_gate()
    {
        r.report(
            Code::ApproversWithoutApproval,
            approvers.span,
            format!("step `{}` never asks for approval, so `approvers` has no effect", id.value),
            "unused",
        );
    }

    // Hooks.
    let quorum = step.quorum.as_ref().map_or(1, |q| q.value);
    if let (Some(written), Some(Sp { value: ApproversSpec::Names(names), .. })) = (&step.quorum, &step.approvers) {
        let distinct: std::collections::BTreeSet<&str> = names.iter().map(|n| n.value.as_str()).collect();
        if written.value as usize > distinct.len() {
            r.report(
                Code::QuorumTooLarge,
                written.span,
                format!(
                    "step `{}` needs {} approvals but names {} approver{}",
                    id.value,
                    written.value,
                    distinct.len(),
                    if distinct.len() == 1 { "" } else { "s" }
                ),
                "quorum larger than the approvers",
            )
            .help(format!(
                "lower `quorum` to at most {}, or name more approvers (the requester never counts)",
                distinct.len()
            ));
        }
    }
    if let Some(ApprovalSpec::Hook(hook)) = step.approval.as_ref().map(|a| &a.value) {
        check_hook(
            r,
            policies,
            &hook.name,
            step.approval.as_ref().map(|a| a.span).unwrap_or_default(),
            HookPosition::Approval,
        );
    }
    if let Some(Sp { value: ApproversSpec::Hook(hook), span }) = &step.approvers {
        check_hook(r, policies, &hook.name, *span, HookPosition::Approvers);
    }
    if let Some(checkpoint) = &step.checkpoint {
        check_hook(r, policies, &checkpoint.value.name, checkpoint.span, HookPosition::Checkpoint);
    }

    let node = StepNode {
        id: id.value.clone(),
        action: action.value,
        description: step.description.as_ref().map(|d| d.value.clone()),
        guard,
        params: StepParams {
            reason: step.reason.as_ref().map(|v| v.value.clone()),
            priority: step.priority.as_ref().map_or(spec.default_priority, |p| p.value),
            approval,
            approvers: step.approvers.as_ref().map(|a| match &a.value {
                ApproversSpec::Hook(hook) => Approvers::Hook(hook.name.clone()),
                ApproversSpec::Names(names) => Approvers::Names(names.iter().map(|n| n.value.clone()).collect()),
            }),
            quorum,
            checkpoint: step.checkpoint.as_ref().map(|c| c.value.name.clone()),
            scope: step.scope.as_ref().map_or(Scope::Run, |s| s.value),
            timeout: step.timeout.as_ref().map(|t| t.value.0),
            target: step.target.as_ref().map(|t| t.value.clone()),
            message: step.message.as_ref().map(|m| m.value.clone()),
            channel: step.channel.as_ref().map(|c| c.value.clone()),
            channel_span: step.channel.as_ref().map(|c| c.span),
            duration: step.duration.as_ref().map(|d| d.value.0),
        },
        retry: step.retry.as_ref().and_then(|retry| {
            Some(Retry {
                max_attempts: retry.max_attempts.as_ref()?.value,
                backoff: retry.backoff.as_ref().map_or(std::time::Duration::ZERO, |b| b.value.0),
            })
        }),
        max_visits: step.max_visits.as_ref().map(|m| m.value),
        location: location(r, index, id.span),
    };
    resolvable.then_some((node, edges))
}

fn check_hook(r: &mut Reporter, policies: Option<&PolicySet>, name: &str, span: Span, position: HookPosition) {
    let Some(policies) = policies else {
        return;
    };
    let expected = position.params().len();
    let named: Vec<_> = policies.functions_named(name).collect();
    if named.is_empty() {
        // A missing function in a partial set may live in the file that failed to load.
        if !policies.is_complete() {
            return;
        }
        let candidates: Vec<&str> = policies.functions().iter().map(|f| f.name.as_str()).collect();
        let help = did_you_mean(name, candidates.iter().copied()).unwrap_or_else(|| {
            if candidates.is_empty() {
                "the policy directory defines no functions".to_owned()
            } else {
                format!("the policies define: {}", dedup(&candidates).join(", "))
            }
        });
        r.report(
            Code::UnknownHook,
            span,
            format!("no policy function `{name}`"),
            format!("`{name}` is not defined in the policies"),
        )
        .help(help);
        return;
    }
    if named.iter().any(|function| function.arity() == expected) {
        return;
    }
    let defined: Vec<String> = named
        .iter()
        .map(|f| format!("{}({}) in {}:{}", f.name, f.params.join(", "), f.file.display(), f.line))
        .collect();
    r.report(
        Code::HookArity,
        span,
        format!("policy function `{name}` does not take {expected} parameter(s)"),
        format!("called as {name}({})", position.params().join(", ")),
    )
    .help(format!(
        "`{}:` calls {name}({}); the policy defines {}",
        position.field(),
        position.params().join(", "),
        defined.join(", ")
    ));
}

fn dedup<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for name in names {
        if !out.contains(name) {
            out.push(name);
        }
    }
    out
}

/// Compiles a guard expression, mapping Rhai positions back into the YAML file.
fn compile_guard(r: &mut Reporter, index: &LineIndex, when: &Sp<String>) -> Option<Guard> {
    let mut scope = RhaiScope::new();
    for variable in GUARD_VARIABLES {
        scope.push_dynamic(*variable, rhai::Dynamic::UNIT);
    }
    match engine::engine().compile_expression_with_scope(&scope, &when.value) {
        Ok(ast) => {
            Some(Guard { source: when.value.clone(), ast: Arc::new(ast), location: location(r, index, when.span) })
        }
        Err(error) => {
            let rhai::ParseError(kind, position) = &error;
            let span = guard_span(r.text(), when, *position);
            match kind.as_ref() {
                ParseErrorType::VariableUndefined(name) => {
                    let help = did_you_mean(name, GUARD_VARIABLES.iter().copied())
                        .unwrap_or_else(|| format!("guards can read: {}", GUARD_VARIABLES.join(", ")));
                    r.report(
                        Code::GuardUndefinedVariable,
                        span,
                        format!("guard uses undefined variable `{name}`"),
                        "undefined variable",
                    )
                    .help(help);
                }
                other => {
                    let message = other.to_string();
                    let help = if message.contains("'eval'") || message.contains("'import'") {
                        "`eval` and `import` are disabled in guards"
                    } else {
                        "a guard is one Rhai expression that yields a boolean, e.g. `report.failedSteps.len() > 0`"
                    };
                    r.report(Code::GuardSyntax, span, format!("invalid guard: {message}"), "here").help(help);
                }
            }
            None
        }
    }
}

/// Maps a Rhai position inside the expression to a byte span of the YAML file. The expression
/// text is found inside the scalar's source (plain or quoted without escapes); otherwise the
/// whole scalar is labelled.
fn guard_span(file_text: &str, when: &Sp<String>, position: rhai::Position) -> Span {
    let scalar = file_text.get(when.span.range()).unwrap_or_default();
    let (Some(base), Some(line)) = (scalar.find(when.value.as_str()), position.line()) else {
        return when.span;
    };
    let expression = when.value.as_str();
    let within = LineIndex::new(expression).offset_of(expression, line, position.position().unwrap_or(1));
    let start = when.span.start + base + within;
    let len = token_len(expression, within).max(usize::from(within < expression.len()));
    Span::new(start, start + len)
}
