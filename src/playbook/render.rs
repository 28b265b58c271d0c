//! Graph export: Graphviz DOT and Mermaid. Parallel edges between the same two nodes are merged
//! into one arrow labelled with all their transitions; skip edges are dashed; irreversible steps
//! are marked, and so are approval gates.

use std::fmt::Write;

use petgraph::graph::NodeIndex;

use super::catalog::{Action, EffectClass};
use super::graph::{ApprovalRule, Approvers, GraphNode, RecoveryGraph, StepNode, Transition};

/// Edges grouped by (from, to, dashed), labels joined, in first-appearance order.
fn merged_edges(graph: &RecoveryGraph) -> Vec<(NodeIndex, NodeIndex, bool, String)> {
    let mut merged: Vec<(NodeIndex, NodeIndex, bool, Vec<&'static str>)> = Vec::new();
    for (from, _) in graph.nodes() {
        for (transition, to) in graph.transitions(from) {
            let dashed = transition == Transition::Skip;
            match merged.iter_mut().find(|(f, t, d, _)| *f == from && *t == to && *d == dashed) {
                Some((_, _, _, labels)) => labels.push(transition.as_str()),
                None => merged.push((from, to, dashed, vec![transition.as_str()])),
            }
        }
    }
    merged.into_iter().map(|(from, to, dashed, labels)| (from, to, dashed, labels.join(", "))).collect()
}

/// Extra lines of a step's label: action, effect, approval, bounds.
fn step_details(step: &StepNode) -> Vec<String> {
    let mut lines = vec![format!("{} ({})", step.action, step.effect())];
    match &step.params.approval {
        ApprovalRule::Always => lines.push("approval: always".into()),
        ApprovalRule::Hook(hook) => lines.push(format!("approval: policy.{hook}")),
        ApprovalRule::Never { .. } => lines.push("approval: never".into()),
        ApprovalRule::Unspecified => {}
    }
    if let Some(guard) = &step.guard {
        lines.push(format!("when: {}", guard.source));
    }
    if let Some(retry) = &step.retry {
        lines.push(format!("retry ×{}", retry.max_attempts));
    }
    if let Some(max) = step.max_visits {
        lines.push(format!("max visits {max}"));
    }
    lines
}

fn dot_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', " ")
}

/// Graphviz DOT.
pub fn render_dot(graph: &RecoveryGraph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph playbook {{");
    let _ = writeln!(out, "  rankdir=TB;");
    let _ = writeln!(out, "  node [fontname=\"Helvetica\", fontsize=11];");
    let _ = writeln!(out, "  edge [fontname=\"Helvetica\", fontsize=10];");
    let _ = writeln!(out, "  __start [shape=point, width=0.15];");
    for (_, node) in graph.nodes() {
        match node {
            GraphNode::Step(step) => {
                let mut label = step.id.clone();
                for line in step_details(step) {
                    label.push_str("\\n");
                    label.push_str(&dot_escape(&line));
                }
                let mut attributes = vec!["shape=box".to_owned(), "style=rounded".to_owned()];
                if step.effect() == EffectClass::Irreversible {
                    attributes.push("color=red".into());
                    attributes.push("penwidth=2".into());
                }
                if step.action == Action::RequestApproval || step.params.approval.is_gate() {
                    attributes[1] = "style=\"rounded,filled\"".into();
                    attributes.push("fillcolor=lightyellow".into());
                }
                let _ = writeln!(
                    out,
                    "  \"{}\" [label=\"{}\", {}];",
                    dot_escape(&step.id),
                    dot_escape_label(&label),
                    attributes.join(", ")
                );
            }
            GraphNode::End(end) => {
                let _ = writeln!(
                    out,
                    "  \"{}\" [label=\"{}\\n{}\", shape=doublecircle];",
                    dot_escape(&end.id),
                    dot_escape(&end.id),
                    end.outcome
                );
            }
        }
    }
    let _ = writeln!(out, "  __start -> \"{}\";", dot_escape(graph.node(graph.start()).id()));
    for (from, to, dashed, label) in merged_edges(graph) {
        let style = if dashed { ", style=dashed" } else { "" };
        let _ = writeln!(
            out,
            "  \"{}\" -> \"{}\" [label=\"{}\"{}];",
            dot_escape(graph.node(from).id()),
            dot_escape(graph.node(to).id()),
            dot_escape(&label),
            style
        );
    }
    out.push_str("}\n");
    out
}

/// Escapes a label that already contains `\n` line breaks.
fn dot_escape_label(label: &str) -> String {
    label.replace('"', "\\\"")
}

fn mermaid_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "#quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('|', "#124;")
        .replace('\n', " ")
}

/// Mermaid flowchart (GitHub renders it in markdown). Node ids are `n0`, `n1`, ... because step
/// ids may collide with Mermaid keywords such as `end`.
pub fn render_mermaid(graph: &RecoveryGraph) -> String {
    let mut out = String::from("flowchart TD\n");
    let id = |index: NodeIndex| format!("n{}", index.index());
    let _ = writeln!(out, "  start((start)) --> {}", id(graph.start()));
    for (index, node) in graph.nodes() {
        match node {
            GraphNode::Step(step) => {
                let mut label = mermaid_escape(&step.id);
                for line in step_details(step) {
                    label.push_str("<br/>");
                    label.push_str(&mermaid_escape(&line));
                }
                let _ = writeln!(out, "  {}[\"{}\"]", id(index), label);
            }
            GraphNode::End(end) => {
                let _ = writeln!(out, "  {}([\"{}: {}\"])", id(index), mermaid_escape(&end.id), end.outcome);
            }
        }
    }
    for (from, to, dashed, label) in merged_edges(graph) {
        let arrow = if dashed { "-.->" } else { "-->" };
        let _ = writeln!(out, "  {} {}|{}| {}", id(from), arrow, mermaid_escape(&label), id(to));
    }
    let irreversible: Vec<String> = graph
        .steps()
        .filter(|(_, step)| step.effect() == EffectClass::Irreversible)
        .map(|(index, _)| id(index))
        .collect();
    let gates: Vec<String> = graph
        .steps()
        .filter(|(_, step)| step.action == Action::RequestApproval || step.params.approval.is_gate())
        .map(|(index, _)| id(index))
        .collect();
    if !irreversible.is_empty() {
        out.push_str("  classDef irreversible stroke:#c00,stroke-width:2px\n");
        let _ = writeln!(out, "  class {} irreversible", irreversible.join(","));
    }
    if !gates.is_empty() {
        out.push_str("  classDef approval fill:#fff6c2\n");
        let _ = writeln!(out, "  class {} approval", gates.join(","));
    }
    out
}

/// The graph as data (`salvage graph --format json`): where it starts, every node (a step with
/// its action, effect class, approval rule and approvers, guard, retry and bound; an end with
/// its outcome), each with its line and column, and every transition, one per outcome.
pub fn graph_json(name: &str, graph: &RecoveryGraph) -> serde_json::Value {
    use serde_json::{Value, json};
    let nodes: Vec<Value> = graph
        .nodes()
        .map(|(_, node)| match node {
            GraphNode::Step(step) => json!({
                "id": step.id,
                "kind": "step",
                "action": step.action.to_string(),
                "effect": step.effect().as_str(),
                "approval": match &step.params.approval {
                    ApprovalRule::Always => json!("always"),
                    ApprovalRule::Hook(hook) => json!(format!("policy.{hook}")),
                    ApprovalRule::Never { why } => json!({"never": why}),
                    ApprovalRule::Unspecified => Value::Null,
                },
                "approvers": match &step.params.approvers {
                    Some(Approvers::Names(names)) => json!(names),
                    Some(Approvers::Hook(hook)) => json!(format!("policy.{hook}")),
                    None => Value::Null,
                },
                "when": step.guard.as_ref().map(|guard| guard.source.as_str()),
                "retry": step.retry.map(|retry| json!({
                    "maxAttempts": retry.max_attempts,
                    "backoffMs": u64::try_from(retry.backoff.as_millis()).unwrap_or(u64::MAX),
                })),
                "maxVisits": step.max_visits,
                "line": step.location.line,
                "column": step.location.column,
            }),
            GraphNode::End(end) => json!({
                "id": end.id,
                "kind": "end",
                "outcome": end.outcome.as_str(),
                "line": end.location.line,
                "column": end.location.column,
            }),
        })
        .collect();
    let mut transitions = Vec::new();
    for (from, _) in graph.nodes() {
        for (transition, to) in graph.transitions(from) {
            transitions.push(json!({
                "from": graph.node(from).id(),
                "to": graph.node(to).id(),
                "on": transition.as_str(),
            }));
        }
    }
    json!({
        "playbook": name,
        "start": graph.node(graph.start()).id(),
        "nodes": nodes,
        "transitions": transitions,
    })
}
