//! The formal checks on a complete graph: reachability (DFS from start), termination (reverse DFS
//! from the ends), bounded cycles (Tarjan's strongly connected components) and approval gating
//! (dominators), plus `target:` availability.

use std::collections::{HashSet, VecDeque};

use petgraph::algo::{dominators, tarjan_scc};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, EdgeFiltered, EdgeRef, NodeFiltered, Reversed, Walker};

use super::catalog::{Action, EffectClass};
use super::diagnostic::{Code, Reporter};
use super::graph::{ApprovalRule, GraphNode, RecoveryGraph, Transition};
use super::language::{Sp, StepSpec};

pub(crate) fn check_graph(r: &mut Reporter, graph: &RecoveryGraph, specs: &[(&Sp<String>, &StepSpec)]) {
    let g = graph.graph();
    let reachable: HashSet<NodeIndex> = Dfs::new(g, graph.start()).iter(g).collect();

    // P050: steps no path from start reaches.
    for (index, step) in graph.steps() {
        if !reachable.contains(&index) {
            r.report(
                Code::UnreachableStep,
                step.location.span,
                format!("step `{}` is unreachable from `start`", step.id),
                "never reached",
            )
            .help("connect it with `next`/`on` from another step, or remove it");
        }
    }

    // P051: reachable steps from which no end is reachable (reverse DFS from every end).
    let reversed = Reversed(g);
    let mut dfs = Dfs::empty(reversed);
    let mut reaches_end: HashSet<NodeIndex> = HashSet::new();
    for (end, _) in graph.ends() {
        dfs.move_to(end);
        while let Some(node) = dfs.next(reversed) {
            reaches_end.insert(node);
        }
    }
    for (index, step) in graph.steps() {
        if reachable.contains(&index) && !reaches_end.contains(&index) {
            r.report(
                Code::CannotTerminate,
                step.location.span,
                format!("no end is reachable from step `{}`", step.id),
                "cannot finish from here",
            )
            .help("every path from here loops among steps; give one of them an exit to an end");
        }
    }

    // P052: cycles among steps without `max_visits`. Every cycle is bounded iff the subgraph of
    // unbounded steps is acyclic.
    let unbounded = NodeFiltered::from_fn(g, |node| g[node].as_step().is_some_and(|step| step.max_visits.is_none()));
    for component in tarjan_scc(&unbounded) {
        let cyclic = component.len() > 1 || g.find_edge(component[0], component[0]).is_some();
        if !cyclic {
            continue;
        }
        let mut members = component.clone();
        members.sort();
        let first = members[0];
        let cycle = cycle_path(g, &members);
        let step = g[first].as_step().map(|s| s.location.span).unwrap_or_default();
        r.report(
            Code::UnboundedCycle,
            step,
            format!("steps {} form a cycle with no bound", cycle),
            "this cycle can repeat forever",
        )
        .help("add `max_visits: N` to one step of the cycle, with an exit for `exhausted`");
    }

    check_approvals(r, graph, &reachable, specs);
    check_targets(r, graph, specs);
}

/// "a → b → a" for a strongly connected component (following edges inside it from its first
/// node).
fn cycle_path(g: &DiGraph<GraphNode, Transition>, members: &[NodeIndex]) -> String {
    let start = members[0];
    let mut path = vec![start];
    let mut current = start;
    let mut seen = HashSet::from([start]);
    loop {
        let next = g.edges(current).map(|edge| edge.target()).filter(|target| members.contains(target)).min();
        match next {
            Some(next) if next == start || seen.contains(&next) => {
                path.push(next);
                break;
            }
            Some(next) => {
                seen.insert(next);
                path.push(next);
                current = next;
            }
            None => break,
        }
    }
    path.iter().map(|node| format!("`{}`", g[*node].id())).collect::<Vec<_>>().join(" → ")
}

/// P054: every irreversible step must be dominated by an approval gate.
///
/// Gates are the `approved` edges of `request_approval` steps and the outgoing edges of steps
/// with `approval: always` / `policy.NAME` (the decision happens before they act). All gates are
/// routed through one virtual node X; a step is gated iff X dominates it, i.e. every path from
/// start to it passes some gate.
fn check_approvals(
    r: &mut Reporter,
    graph: &RecoveryGraph,
    reachable: &HashSet<NodeIndex>,
    specs: &[(&Sp<String>, &StepSpec)],
) {
    let g = graph.graph();
    let mut aux: DiGraph<(), ()> = DiGraph::with_capacity(g.node_count() + 1, g.edge_count() * 2);
    for _ in g.node_indices() {
        aux.add_node(());
    }
    let gate = aux.add_node(());
    // A person's `denied` (or the deadline's `timeout`) is the decision a `deny_approval` step
    // sends: those edges gate it as `approved` gates the steps that act.
    let is_gate_edge = |source: NodeIndex, transition: Transition, target: NodeIndex| match &g[source] {
        GraphNode::Step(step) => {
            let carries_denial = matches!(transition, Transition::Outcome("denied" | "timeout"))
                && g[target].as_step().is_some_and(|next| next.action == Action::DenyApproval);
            step.params.approval.is_gate()
                || (step.action == Action::RequestApproval
                    && (transition == Transition::Outcome("approved") || carries_denial))
        }
        GraphNode::End(_) => false,
    };
    for edge in g.edge_references() {
        if is_gate_edge(edge.source(), *edge.weight(), edge.target()) {
            aux.add_edge(edge.source(), gate, ());
            aux.add_edge(gate, edge.target(), ());
        } else {
            aux.add_edge(edge.source(), edge.target(), ());
        }
    }
    let dominance = dominators::simple_fast(&aux, graph.start());
    for (index, step) in graph.steps() {
        if step.effect() != EffectClass::Irreversible || !reachable.contains(&index) {
            continue;
        }
        if step.params.approval.is_gate() || matches!(step.params.approval, ApprovalRule::Never { .. }) {
            continue;
        }
        // An `approval:` that could not be read was reported already; its intent is unknown.
        if specs.iter().any(|(id, spec)| id.value == step.id && spec.invalid.contains(&"approval")) {
            continue;
        }
        let gated = dominance.dominators(index).is_some_and(|mut dominators| dominators.any(|node| node == gate));
        if gated {
            continue;
        }
        let path = ungated_path(&aux, graph, gate, index);
        r.report(
            Code::UngatedIrreversible,
            step.location.span,
            format!("irreversible action `{}` in step `{}` can run without approval", step.action, step.id),
            "reachable without any approval",
        )
        .help(format!(
            "this path passes no approval: {path}; add a `request_approval` step before it, `approval: policy.NAME` \
or `always` on it, or `approval: never` with a `why:`"
        ));
    }
}

/// A shortest path from start to `target` that avoids the gate node, as "`a` → `b`".
fn ungated_path(aux: &DiGraph<(), ()>, graph: &RecoveryGraph, gate: NodeIndex, target: NodeIndex) -> String {
    let mut previous: Vec<Option<NodeIndex>> = vec![None; aux.node_count()];
    let mut queue = VecDeque::from([graph.start()]);
    let mut seen = HashSet::from([graph.start()]);
    while let Some(node) = queue.pop_front() {
        if node == target {
            break;
        }
        for next in aux.neighbors(node) {
            if next != gate && seen.insert(next) {
                previous[next.index()] = Some(node);
                queue.push_back(next);
            }
        }
    }
    let mut path = vec![target];
    let mut current = target;
    while let Some(before) = previous[current.index()] {
        path.push(before);
        current = before;
    }
    path.reverse();
    path.iter().map(|node| format!("`{}`", graph.node(*node).id())).collect::<Vec<_>>().join(" → ")
}

/// P028 / P029: `target:` must name a run-creating step that has run (`ok`) on every path.
fn check_targets(r: &mut Reporter, graph: &RecoveryGraph, specs: &[(&Sp<String>, &StepSpec)]) {
    let g = graph.graph();
    for (id, spec) in specs {
        let Some(target) = &spec.target else { continue };
        let (Some(step_index), Some(target_index)) = (graph.find(&id.value), graph.find(&target.value)) else {
            continue;
        };
        let Some(target_step) = g[target_index].as_step() else { continue };
        if !target_step.spec().creates_run {
            r.report(
                Code::TargetCreatesNoRun,
                target.span,
                format!("`target` `{}` is a `{}` step, which creates no run", target.value, target_step.action),
                "creates no run",
            )
            .help("target a `branch_from_checkpoint`, `partial_replay` or `frozen_replay` step");
            continue;
        }
        // Remove the target's `ok` edge: if the step is still reachable, some path gets there
        // without the run having been created.
        let without_ok = EdgeFiltered::from_fn(g, |edge| {
            !(edge.source() == target_index && *edge.weight() == Transition::Outcome("ok"))
        });
        let still_reachable = Dfs::new(&without_ok, graph.start()).iter(&without_ok).any(|node| node == step_index);
        if still_reachable {
            r.report(
                Code::TargetMayNotHaveRun,
                target.span,
                format!("step `{}` can be reached without step `{}` having created its run", id.value, target.value),
                "may not exist",
            )
            .help(format!("reach `{}` only from the `ok` exit of `{}`", id.value, target.value));
        }
    }
}
