//! An execution's position, rebuilt from its journal.
//!
//! The runner changes its state only by appending a journal entry and applying it with
//! [`State::apply`]; resuming applies the same entries to a fresh state. So the state after a
//! crash is exactly the state the journal describes — nothing the runner held only in memory.

use std::collections::{BTreeMap, HashMap};

use petgraph::graph::NodeIndex;

use super::record::JournalEntry;
use crate::playbook::{RecoveryGraph, Transition};

/// A step whose intent is journalled and whose outcome is not.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenIntent {
    pub step_id: String,
    pub attempt: u32,
    pub effect: String,
    pub idempotency_key: String,
    pub run_id: String,
    pub new_run_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct State {
    pub node: NodeIndex,
    /// Completed passes through each node.
    pub visits: HashMap<NodeIndex, u32>,
    /// The attempt in progress at the current step (1 for the first).
    pub attempt: u32,
    pub created_runs: BTreeMap<String, String>,
    pub open_intent: Option<OpenIntent>,
    /// The step an approval was asked for and not yet answered.
    pub waiting: Option<String>,
    /// The answer given for the current visit of the current step.
    pub answer: Option<String>,
    /// An interrupted step waits for a person to say what happened.
    pub operator_needed: Option<(String, u32)>,
    /// `(end node id, outcome)` once an end is reached.
    pub finished: Option<(String, String)>,
    /// The number the next journal entry gets.
    pub next_seq: u64,
}

/// The journal does not fit the playbook (it was changed, or the journal is not this
/// execution's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("journal entry {seq} does not fit the playbook: {problem}")]
pub struct ReplayError {
    pub seq: u64,
    pub problem: String,
}

impl State {
    pub fn new(graph: &RecoveryGraph) -> State {
        State {
            node: graph.start(),
            visits: HashMap::new(),
            attempt: 1,
            created_runs: BTreeMap::new(),
            open_intent: None,
            waiting: None,
            answer: None,
            operator_needed: None,
            finished: None,
            next_seq: 1,
        }
    }

    /// The pass through the current node being made (1 for the first).
    pub fn visit(&self) -> u32 {
        self.visits.get(&self.node).copied().unwrap_or(0) + 1
    }

    fn expect_at(&self, graph: &RecoveryGraph, step_id: &str) -> Result<(), ReplayError> {
        let here = graph.node(self.node).id();
        if here == step_id {
            Ok(())
        } else {
            Err(ReplayError {
                seq: self.next_seq,
                problem: format!("it is about step {step_id}, the execution is at {here}"),
            })
        }
    }

    fn go(&mut self, graph: &RecoveryGraph, transition: &str) -> Result<(), ReplayError> {
        let next = graph.follow(self.node, transition).ok_or_else(|| ReplayError {
            seq: self.next_seq,
            problem: format!("step {} has no `{transition}` exit", graph.node(self.node).id()),
        })?;
        if transition != Transition::Exhausted.as_str() {
            *self.visits.entry(self.node).or_insert(0) += 1;
        }
        self.node = next;
        self.attempt = 1;
        self.answer = None;
        Ok(())
    }

    /// Applies one journal entry (the next one: entries are applied in sequence order).
    pub fn apply(&mut self, graph: &RecoveryGraph, entry: &JournalEntry) -> Result<(), ReplayError> {
        match entry {
            JournalEntry::Started { .. } => {}
            JournalEntry::Skipped { step_id, .. } => {
                self.expect_at(graph, step_id)?;
                self.go(graph, Transition::Skip.as_str())?;
            }
            JournalEntry::Exhausted { step_id, .. } => {
                self.expect_at(graph, step_id)?;
                self.go(graph, Transition::Exhausted.as_str())?;
            }
            JournalEntry::ApprovalRequested { step_id, .. } => {
                self.expect_at(graph, step_id)?;
                self.waiting = Some(step_id.clone());
            }
            JournalEntry::ApprovalAnswered { step_id, decision, .. } => {
                self.expect_at(graph, step_id)?;
                self.waiting = None;
                self.answer = Some(decision.clone());
            }
            JournalEntry::Intent { step_id, attempt, effect, idempotency_key, run_id, new_run_id, .. } => {
                self.expect_at(graph, step_id)?;
                self.open_intent = Some(OpenIntent {
                    step_id: step_id.clone(),
                    attempt: *attempt,
                    effect: effect.clone(),
                    idempotency_key: idempotency_key.clone(),
                    run_id: run_id.clone(),
                    new_run_id: new_run_id.clone(),
                });
            }
            JournalEntry::Outcome { step_id, attempt, outcome, created_run_id, .. } => {
                self.expect_at(graph, step_id)?;
                self.open_intent = None;
                if let Some(run_id) = created_run_id {
                    self.created_runs.insert(step_id.clone(), run_id.clone());
                }
                self.after_outcome(graph, *attempt, outcome)?;
            }
            JournalEntry::OperatorNeeded { step_id, attempt, .. } => {
                self.expect_at(graph, step_id)?;
                self.operator_needed = Some((step_id.clone(), *attempt));
            }
            JournalEntry::OperatorConfirmed { step_id, attempt, outcome, .. } => {
                self.expect_at(graph, step_id)?;
                self.operator_needed = None;
                self.open_intent = None;
                match outcome {
                    Some(outcome) => self.after_outcome(graph, *attempt, outcome)?,
                    // Run the step again, as a new attempt (a new idempotency key).
                    None => self.attempt = attempt + 1,
                }
            }
            JournalEntry::Finished { node, outcome, .. } => {
                self.finished = Some((node.clone(), outcome.clone()));
            }
        }
        self.next_seq += 1;
        Ok(())
    }

    /// A failed attempt is retried while the step's `retry` allows; anything else moves on.
    fn after_outcome(&mut self, graph: &RecoveryGraph, attempt: u32, outcome: &str) -> Result<(), ReplayError> {
        let retry = graph.node(self.node).as_step().and_then(|step| step.retry);
        if outcome == "failed" && retry.is_some_and(|retry| attempt < retry.max_attempts) {
            self.attempt = attempt + 1;
            return Ok(());
        }
        self.go(graph, outcome)
    }
}
