//! The compiled form of a playbook: a petgraph state machine the planner and runner walk.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use petgraph::graph::{DiGraph, EdgeIndex, NodeIndex};
use petgraph::visit::EdgeRef;

use super::catalog::{Action, ActionSpec, EffectClass, Priority, Scope};
use super::language::EndOutcome;
use crate::model::IncidentKind;
use crate::policy::source::Span;

/// Where something was written: 1-based line and character column, and the byte span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    pub line: u32,
    pub column: u32,
    pub span: Span,
}

/// A compiled `when` guard: a Rhai expression over `run`, `report`, `incident`, `comparison`.
#[derive(Debug, Clone)]
pub struct Guard {
    /// The expression as written.
    pub source: String,
    /// Compiled in the sandboxed policy engine (evaluate with `eval_ast_with_scope` and a
    /// [`crate::policy::engine::Deadline`]).
    pub ast: Arc<rhai::AST>,
    pub location: Location,
}

/// The variables a guard may read, in the order a caller should push them into the scope.
pub const GUARD_VARIABLES: &[&str] = &["run", "report", "incident", "comparison"];

/// Whether a step needs a person's approval before it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalRule {
    /// Nothing said: the step does not ask (it may still be gated by an earlier approval).
    Unspecified,
    Always,
    /// Explicitly never, with the written justification.
    Never {
        why: String,
    },
    /// Ask the policy: `NAME(step, ctx)`.
    Hook(String),
}

impl ApprovalRule {
    /// An approval decision happens at this step (always, or a policy decides).
    pub fn is_gate(&self) -> bool {
        matches!(self, ApprovalRule::Always | ApprovalRule::Hook(_))
    }
}

/// Who may approve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approvers {
    /// Ask the policy: `NAME(step, ctx)`.
    Hook(String),
    Names(Vec<String>),
}

/// Automatic retries of a failing step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub backoff: Duration,
}

/// The parameters of a step, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct StepParams {
    /// The plan step's reason, as written.
    pub reason: Option<String>,
    pub priority: Priority,
    pub approval: ApprovalRule,
    pub approvers: Option<Approvers>,
    /// How many distinct approvers must approve (`approval.quorum`, 1 by default).
    pub quorum: u32,
    /// The hook choosing the checkpoint (`NAME(ctx)`), for branches and partial replays.
    pub checkpoint: Option<String>,
    pub scope: Scope,
    pub timeout: Option<Duration>,
    /// Id of the earlier step whose created run this step acts on.
    pub target: Option<String>,
    pub message: Option<String>,
    pub channel: Option<String>,
    /// Where `channel:`'s value is written (P064 points at it).
    pub channel_span: Option<Span>,
    pub duration: Option<Duration>,
}

/// A step of the compiled graph.
#[derive(Debug, Clone)]
pub struct StepNode {
    pub id: String,
    pub action: Action,
    pub description: Option<String>,
    pub guard: Option<Guard>,
    pub params: StepParams,
    pub retry: Option<Retry>,
    pub max_visits: Option<u32>,
    pub location: Location,
}

impl StepNode {
    pub fn spec(&self) -> &'static ActionSpec {
        self.action.spec()
    }

    pub fn effect(&self) -> EffectClass {
        self.spec().effect
    }

    /// The action name the plan uses (the reference's where it has one).
    pub fn plan_action(&self) -> &'static str {
        self.spec().plan_name(self.params.scope)
    }
}

/// An end of the compiled graph.
#[derive(Debug, Clone, PartialEq)]
pub struct EndNode {
    pub id: String,
    pub outcome: EndOutcome,
    pub description: Option<String>,
    pub location: Location,
}

/// A node: a step or an end.
#[derive(Debug, Clone)]
pub enum GraphNode {
    Step(Box<StepNode>),
    End(EndNode),
}

impl GraphNode {
    pub fn id(&self) -> &str {
        match self {
            GraphNode::Step(step) => &step.id,
            GraphNode::End(end) => &end.id,
        }
    }

    pub fn as_step(&self) -> Option<&StepNode> {
        match self {
            GraphNode::Step(step) => Some(step),
            GraphNode::End(_) => None,
        }
    }

    pub fn as_end(&self) -> Option<&EndNode> {
        match self {
            GraphNode::End(end) => Some(end),
            GraphNode::Step(_) => None,
        }
    }

    pub fn location(&self) -> Location {
        match self {
            GraphNode::Step(step) => step.location,
            GraphNode::End(end) => end.location,
        }
    }
}

/// The label of an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transition {
    /// The action produced this outcome (a catalog spelling).
    Outcome(&'static str),
    /// The step's guard was false.
    Skip,
    /// The step was entered more than `max_visits` times.
    Exhausted,
}

impl Transition {
    pub fn as_str(&self) -> &'static str {
        match self {
            Transition::Outcome(outcome) => outcome,
            Transition::Skip => "skip",
            Transition::Exhausted => "exhausted",
        }
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A playbook's steps and ends with their outcome-labelled transitions.
///
/// Every step has exactly one edge per outcome its action can produce (plus `exhausted` when it
/// has `max_visits`, and `skip` when it has a guard), so walking never gets stuck; every step is
/// reachable from [`RecoveryGraph::start`] and reaches an end (the compiler checked).
#[derive(Debug, Clone)]
pub struct RecoveryGraph {
    graph: DiGraph<GraphNode, Transition>,
    start: NodeIndex,
    index: HashMap<String, NodeIndex>,
}

impl RecoveryGraph {
    pub(crate) fn new(
        graph: DiGraph<GraphNode, Transition>,
        start: NodeIndex,
        index: HashMap<String, NodeIndex>,
    ) -> RecoveryGraph {
        RecoveryGraph { graph, start, index }
    }

    /// The first step.
    pub fn start(&self) -> NodeIndex {
        self.start
    }

    /// A node by index. Panics only on an index from another graph.
    pub fn node(&self, index: NodeIndex) -> &GraphNode {
        &self.graph[index]
    }

    /// A node by step or end id.
    pub fn find(&self, id: &str) -> Option<NodeIndex> {
        self.index.get(id).copied()
    }

    /// A step by id.
    pub fn step(&self, id: &str) -> Option<&StepNode> {
        self.find(id).and_then(|index| self.graph[index].as_step())
    }

    /// Where `transition` leads from `from`, if `from` has that transition.
    pub fn next(&self, from: NodeIndex, transition: Transition) -> Option<NodeIndex> {
        self.graph.edges(from).find(|edge| *edge.weight() == transition).map(|edge| edge.target())
    }

    /// Where outcome `outcome` (or `skip` / `exhausted`) leads from `from`.
    pub fn follow(&self, from: NodeIndex, outcome: &str) -> Option<NodeIndex> {
        self.graph.edges(from).find(|edge| edge.weight().as_str() == outcome).map(|edge| edge.target())
    }

    /// The transitions leaving `from`, in declaration order (action outcomes in catalog order,
    /// then `exhausted`, then `skip`).
    pub fn transitions(&self, from: NodeIndex) -> Vec<(Transition, NodeIndex)> {
        let mut edges: Vec<(EdgeIndex, Transition, NodeIndex)> =
            self.graph.edges(from).map(|edge| (edge.id(), *edge.weight(), edge.target())).collect();
        edges.sort_by_key(|(id, _, _)| *id);
        edges.into_iter().map(|(_, transition, target)| (transition, target)).collect()
    }

    /// Every node in declaration order: steps as written, then ends.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeIndex, &GraphNode)> {
        self.graph.node_indices().map(|index| (index, &self.graph[index]))
    }

    /// Every step in declaration order.
    pub fn steps(&self) -> impl Iterator<Item = (NodeIndex, &StepNode)> {
        self.nodes().filter_map(|(index, node)| node.as_step().map(|step| (index, step)))
    }

    /// Every end in declaration order.
    pub fn ends(&self) -> impl Iterator<Item = (NodeIndex, &EndNode)> {
        self.nodes().filter_map(|(index, node)| node.as_end().map(|end| (index, end)))
    }

    /// Every edge as (from, transition, to), in insertion order.
    pub fn edges(&self) -> impl Iterator<Item = (NodeIndex, Transition, NodeIndex)> + '_ {
        self.graph.edge_references().map(|edge| (edge.source(), *edge.weight(), edge.target()))
    }

    /// The petgraph graph, for algorithms.
    pub fn graph(&self) -> &DiGraph<GraphNode, Transition> {
        &self.graph
    }
}

/// The incident kinds a compiled playbook matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncidentMatch {
    Any,
    Kinds(Vec<IncidentKind>),
}

impl IncidentMatch {
    pub fn matches(&self, kind: &IncidentKind) -> bool {
        match self {
            IncidentMatch::Any => true,
            IncidentMatch::Kinds(kinds) => kinds.contains(kind),
        }
    }

    /// Whether some incident kind matches both.
    pub fn overlaps(&self, other: &IncidentMatch) -> bool {
        match (self, other) {
            (IncidentMatch::Any, _) | (_, IncidentMatch::Any) => true,
            (IncidentMatch::Kinds(a), IncidentMatch::Kinds(b)) => a.iter().any(|kind| b.contains(kind)),
        }
    }
}

impl fmt::Display for IncidentMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IncidentMatch::Any => f.write_str("any"),
            IncidentMatch::Kinds(kinds) => {
                let names: Vec<&str> = kinds.iter().map(IncidentKind::as_str).collect();
                f.write_str(&names.join(", "))
            }
        }
    }
}

/// A playbook that compiled without errors.
#[derive(Debug, Clone)]
pub struct CompiledPlaybook {
    pub name: String,
    pub version: u32,
    pub description: Option<String>,
    pub file: PathBuf,
    /// sha256 (hex) of the file's bytes.
    pub digest: String,
    pub incidents: IncidentMatch,
    /// The optional `match.when` guard.
    pub guard: Option<Guard>,
    /// Higher wins among matching playbooks.
    pub priority: i64,
    pub graph: RecoveryGraph,
    /// The file's text (diagnostics and `salvage graph` point into it).
    pub source: Arc<str>,
    pub spans: PlaybookSpans,
}

/// Where the playbook's selection fields are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlaybookSpans {
    /// The value of `playbook:`.
    pub name: Span,
    /// The value of `match.incident`.
    pub incident: Span,
}
