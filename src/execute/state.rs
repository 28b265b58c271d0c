//! An execution's position, rebuilt from its journal.
//!
//! The runner changes its state only by appending a journal entry and applying it with
//! [`State::apply`]; resuming applies the same entries to a fresh state. So the state after a
//! crash is exactly the state the journal describes — nothing the runner held only in memory.
//!
//! Answers are compare-and-set (the runner appends them at the journal's next sequence number
//! only while the question is open), so a journal written by this version holds one deciding
//! answer per question; a question with a quorum of N also holds the approvals before the
//! deciding one, one per distinct approver. Journals written before answers were
//! compare-and-set may hold a second, late answer to a question already answered: it is kept
//! in the journal and ignored here (the first answer won), instead of making the whole journal
//! unreadable.

use std::collections::{BTreeMap, HashMap};

use petgraph::graph::NodeIndex;

use super::record::{CreatedRunClue, JournalEntry};
use super::runtime::{ActionRequest, RunExpectation};
use crate::playbook::{Action, RecoveryGraph, Transition};

/// A step whose intent is journalled and whose outcome is not.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenIntent {
    pub step_id: String,
    pub attempt: u32,
    pub effect: String,
    pub idempotency_key: String,
    pub run_id: String,
    pub new_run_id: Option<String>,
    pub clue: Option<CreatedRunClue>,
    /// When the intent was journalled (created runs are looked for from then on).
    pub at: String,
    /// Where the run acted on stood when the action was sent.
    pub expect: Option<RunExpectation>,
}

/// A running `wait` / `await_run` clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub step_id: String,
    pub attempt: u32,
    pub until: String,
}

/// A run the execution resumed (or whose approval it resolved): the one a `resolved` end is
/// verified on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredRun {
    pub run_id: String,
    /// Its status as last seen (a runtime's answer, a store read, an `await_run`).
    pub status: Option<String>,
}

/// The notifications sent under one idempotency key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deliveries {
    /// Channels an intent named.
    pub intended: std::collections::BTreeSet<String>,
    /// The outcome recorded for each channel since its last intent (`delivered`, `failed`,
    /// `dry_run`); a channel intended and not here was interrupted.
    pub recorded: BTreeMap<String, String>,
}

impl Deliveries {
    /// The channel was named by an intent whose delivery was never recorded.
    pub fn interrupted(&self, channel: &str) -> bool {
        self.intended.contains(channel) && !self.recorded.contains_key(channel)
    }
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
    /// The attempts of a run-creating step's current visit that journalled an intent, by step,
    /// until the step's outcome is known: the run one of them made is looked for before any
    /// later attempt acts again.
    pub create_attempts: BTreeMap<String, Vec<OpenIntent>>,
    /// Every run a step of this execution is recorded to have created (all visits): never the
    /// run a later visit is looking for.
    pub all_created: std::collections::BTreeSet<String>,
    /// The step an approval was asked for and not yet answered.
    pub waiting: Option<String>,
    /// How many distinct approvers the open approval needs.
    pub quorum: u32,
    /// Who approved the open approval so far, with when (a quorum not yet complete).
    pub approvals: Vec<(String, String)>,
    /// The answer given for the current visit of the current step.
    pub answer: Option<String>,
    /// Who gave it.
    pub answered_by: Option<String>,
    /// An interrupted step waits for a person to say what happened.
    pub operator_needed: Option<(String, u32)>,
    /// The clock of the current `wait` / `await_run` step.
    pub timer: Option<Timer>,
    /// The step and transition the current node was entered by (a `resolve_approval` entered
    /// by the `approved` exit of a `request_approval` step carries that approval).
    pub entered_by: Option<(String, String)>,
    /// The last run the execution resumed or resolved.
    pub recovered: Option<RecoveredRun>,
    /// `(end node id, outcome)` once an end is reached; the outcome may be refined by
    /// [`JournalEntry::Verified`].
    pub finished: Option<(String, String)>,
    /// The end's `resolved` was checked against the recovered run.
    pub verified: bool,
    /// Late answers ignored while replaying (sequence numbers).
    pub ignored: Vec<u64>,
    /// The number the next journal entry gets.
    pub next_seq: u64,
    /// Notifications by idempotency key.
    pub deliveries: BTreeMap<String, Deliveries>,
    /// Channels that received a trigger (any delivered event but `resolved`): the PagerDuty
    /// channels a successful recovery resolves.
    pub triggered: std::collections::BTreeSet<String>,
}

/// The journal does not fit the playbook (it was changed, or the journal is not this
/// execution's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("journal entry {seq} does not fit the playbook: {problem}")]
pub struct ReplayError {
    pub seq: u64,
    pub problem: String,
}

/// Actions that continue a run: a `resolved` end is verified on the last run they acted on.
pub fn recovers_run(action: Action) -> bool {
    matches!(action, Action::ResumeRun | Action::ResumeReplay | Action::ResolveApproval)
}

impl State {
    pub fn new(graph: &RecoveryGraph) -> State {
        State {
            node: graph.start(),
            visits: HashMap::new(),
            attempt: 1,
            created_runs: BTreeMap::new(),
            open_intent: None,
            create_attempts: BTreeMap::new(),
            all_created: std::collections::BTreeSet::new(),
            waiting: None,
            quorum: 1,
            approvals: Vec::new(),
            answer: None,
            answered_by: None,
            operator_needed: None,
            timer: None,
            entered_by: None,
            recovered: None,
            finished: None,
            verified: false,
            ignored: Vec::new(),
            next_seq: 1,
            deliveries: BTreeMap::new(),
            triggered: std::collections::BTreeSet::new(),
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
        self.entered_by = Some((graph.node(self.node).id().to_owned(), transition.to_owned()));
        self.node = next;
        self.attempt = 1;
        self.answer = None;
        self.answered_by = None;
        self.approvals.clear();
        self.quorum = 1;
        self.timer = None;
        Ok(())
    }

    /// The run a `target:` names: the run the target step created.
    pub fn target_run(&self, target: &str) -> Option<&String> {
        self.created_runs.get(target)
    }

    /// Applies one journal entry (the next one: entries are applied in sequence order).
    pub fn apply(&mut self, graph: &RecoveryGraph, entry: &JournalEntry) -> Result<(), ReplayError> {
        match entry {
            // Kept for the audit log only.
            JournalEntry::Started { .. } | JournalEntry::AnswerRefused { .. } => {}
            JournalEntry::Skipped { step_id, .. } => {
                self.expect_at(graph, step_id)?;
                self.go(graph, Transition::Skip.as_str())?;
            }
            JournalEntry::Exhausted { step_id, .. } => {
                self.expect_at(graph, step_id)?;
                self.go(graph, Transition::Exhausted.as_str())?;
            }
            JournalEntry::ApprovalRequested { step_id, quorum, .. } => {
                self.expect_at(graph, step_id)?;
                self.waiting = Some(step_id.clone());
                self.quorum = (*quorum).max(1);
                self.approvals.clear();
            }
            JournalEntry::ApprovalAnswered { at, step_id, decision, actor, .. } => {
                if self.waiting.as_deref() != Some(step_id.as_str()) {
                    // A late second answer (older journals): the first one won.
                    self.ignored.push(self.next_seq);
                } else if decision == "approved" && self.approvals.iter().any(|(name, _)| name == actor) {
                    // The same person twice counts once (the runner never writes it; a
                    // journal that holds it is still read).
                    self.ignored.push(self.next_seq);
                } else {
                    self.expect_at(graph, step_id)?;
                    if decision == "approved" {
                        self.approvals.push((actor.clone(), at.clone()));
                    }
                    // An approval decides once the quorum is complete; a denial or a timeout
                    // decides at once.
                    if decision != "approved" || self.approvals.len() >= self.quorum as usize {
                        self.waiting = None;
                        self.answer = Some(decision.clone());
                        self.answered_by = Some(actor.clone());
                    }
                }
            }
            JournalEntry::Intent {
                at,
                step_id,
                attempt,
                effect,
                idempotency_key,
                run_id,
                new_run_id,
                clue,
                request,
                ..
            } => {
                self.expect_at(graph, step_id)?;
                let intent = OpenIntent {
                    step_id: step_id.clone(),
                    attempt: *attempt,
                    effect: effect.clone(),
                    idempotency_key: idempotency_key.clone(),
                    run_id: run_id.clone(),
                    new_run_id: new_run_id.clone(),
                    clue: clue.clone(),
                    at: at.clone(),
                    expect: serde_json::from_value::<ActionRequest>(request.clone()).ok().and_then(|r| r.expect),
                };
                if clue.is_some() || new_run_id.is_some() {
                    self.create_attempts.entry(step_id.clone()).or_default().push(intent.clone());
                }
                self.open_intent = Some(intent);
            }
            JournalEntry::Outcome { step_id, attempt, outcome, created_run_id, run_id, run_status, .. } => {
                self.expect_at(graph, step_id)?;
                let acted_on = self.open_intent.take().map(|intent| intent.run_id);
                self.create_attempts.remove(step_id);
                if let Some(created) = created_run_id {
                    self.created_runs.insert(step_id.clone(), created.clone());
                    self.all_created.insert(created.clone());
                }
                let action = graph.node(self.node).as_step().map(|step| step.action);
                if let Some(run) = run_id.clone().or(acted_on) {
                    let recovers = action.is_some_and(recovers_run);
                    let same = self.recovered.as_ref().is_some_and(|r| r.run_id == run);
                    if recovers || same {
                        self.recovered = Some(RecoveredRun { run_id: run, status: run_status.clone() });
                    }
                }
                self.after_outcome(graph, *attempt, outcome)?;
            }
            JournalEntry::Timer { step_id, attempt, until, .. } => {
                self.expect_at(graph, step_id)?;
                self.timer = Some(Timer { step_id: step_id.clone(), attempt: *attempt, until: until.clone() });
            }
            JournalEntry::OperatorNeeded { step_id, attempt, .. } => {
                self.expect_at(graph, step_id)?;
                self.operator_needed = Some((step_id.clone(), *attempt));
            }
            JournalEntry::OperatorConfirmed { step_id, attempt, outcome, created_run_id, .. } => {
                if self.operator_needed.as_ref() != Some(&(step_id.clone(), *attempt)) {
                    // A late second confirmation (older journals): the first one won.
                    self.ignored.push(self.next_seq);
                } else {
                    self.expect_at(graph, step_id)?;
                    self.operator_needed = None;
                    let acted_on = self.open_intent.take().map(|intent| intent.run_id);
                    if let Some(created) = created_run_id {
                        self.created_runs.insert(step_id.clone(), created.clone());
                        self.all_created.insert(created.clone());
                    }
                    match outcome {
                        Some(outcome) => {
                            self.create_attempts.remove(step_id);
                            let action = graph.node(self.node).as_step().map(|step| step.action);
                            if let Some(run) = acted_on.filter(|_| action.is_some_and(recovers_run)) {
                                self.recovered = Some(RecoveredRun { run_id: run, status: None });
                            }
                            self.after_outcome(graph, *attempt, outcome)?
                        }
                        // Run the step again, as a new attempt (a new idempotency key).
                        None => self.attempt = attempt + 1,
                    }
                }
            }
            JournalEntry::Finished { node, outcome, .. } => {
                self.finished = Some((node.clone(), outcome.clone()));
            }
            JournalEntry::Verified { run_id, status, outcome, .. } => {
                self.verified = true;
                if let Some((node, _)) = self.finished.clone() {
                    self.finished = Some((node, outcome.clone()));
                }
                self.recovered = Some(RecoveredRun { run_id: run_id.clone(), status: Some(status.clone()) });
            }
            // Notifications are bookkeeping beside the step loop: they do not move the position.
            JournalEntry::NotificationIntent { idempotency_key, channels, .. } => {
                let deliveries = self.deliveries.entry(idempotency_key.clone()).or_default();
                for channel in channels {
                    deliveries.intended.insert(channel.clone());
                    deliveries.recorded.remove(channel);
                }
            }
            JournalEntry::Delivery { idempotency_key, channel, outcome, event, .. } => {
                self.deliveries
                    .entry(idempotency_key.clone())
                    .or_default()
                    .recorded
                    .insert(channel.clone(), outcome.clone());
                if outcome == "delivered" && event != "resolved" {
                    self.triggered.insert(channel.clone());
                }
            }
            JournalEntry::Abandoned { .. } => {
                let node = graph.node(self.node).id().to_owned();
                self.finished = Some((node, "abandoned".to_owned()));
                self.verified = true;
                self.waiting = None;
                self.operator_needed = None;
                self.open_intent = None;
                self.timer = None;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playbook::PlaybookSet;

    fn graph() -> crate::playbook::RecoveryGraph {
        let dir = tempfile::tempdir().expect("temp");
        std::fs::write(
            dir.path().join("p.yaml"),
            "playbook: p\nversion: 1\ndescription: d\nmatch: { incident: any }\nstart: ask\nsteps:\n  ask:\n    action: request_approval\n    description: d\n    approvers: [a, b]\n    timeout: 1h\n    on: { approved: resolved, denied: abandoned, timeout: abandoned }\nends:\n  resolved: { outcome: resolved }\n  abandoned: { outcome: abandoned }\n",
        )
        .expect("write");
        let set = PlaybookSet::load(dir.path(), None).unwrap_or_else(|d| panic!("{d:?}"));
        set.get("p").expect("p").graph.clone()
    }

    fn answered(decision: &str, actor: &str) -> JournalEntry {
        JournalEntry::ApprovalAnswered {
            at: "2026-01-01T00:00:00.000Z".into(),
            step_id: "ask".into(),
            decision: decision.into(),
            actor: actor.into(),
            reason: None,
            origin: None,
        }
    }

    #[test]
    fn a_late_second_answer_in_an_old_journal_is_ignored_not_a_dead_end() {
        let graph = graph();
        let entries = [
            JournalEntry::ApprovalRequested {
                at: "2026-01-01T00:00:00.000Z".into(),
                step_id: "ask".into(),
                approvers: vec!["a".into(), "b".into()],
                reason: "r".into(),
                expires_at: None,
                quorum: 1,
            },
            answered("approved", "a"),
            // Written by a version whose answers were not compare-and-set.
            answered("denied", "b"),
        ];
        let mut state = State::new(&graph);
        for entry in &entries {
            state.apply(&graph, entry).expect("the journal still fits");
        }
        assert_eq!(state.answer.as_deref(), Some("approved"), "the first answer counts");
        assert_eq!(state.answered_by.as_deref(), Some("a"));
        assert_eq!(state.ignored, [3]);
        assert_eq!(state.next_seq, 4);
    }

    fn requested(quorum: u32) -> JournalEntry {
        JournalEntry::ApprovalRequested {
            at: "2026-01-01T00:00:00.000Z".into(),
            step_id: "ask".into(),
            approvers: vec!["a".into(), "b".into(), "c".into()],
            reason: "r".into(),
            expires_at: None,
            quorum,
        }
    }

    fn replay(entries: &[JournalEntry]) -> State {
        let graph = graph();
        let mut state = State::new(&graph);
        for entry in entries {
            state.apply(&graph, entry).expect("the journal fits");
        }
        state
    }

    #[test]
    fn a_quorum_is_granted_by_distinct_approvers_and_counts_a_repeat_once() {
        let first = replay(&[requested(2), answered("approved", "a")]);
        assert_eq!(first.waiting.as_deref(), Some("ask"), "one of two: still waiting");
        assert_eq!(first.answer, None);
        assert_eq!(first.approvals.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["a"]);

        // Replayed after a crash that followed the first approval: counted once, and a repeat
        // by the same person (written by nothing current, but readable) does not complete it.
        let repeated = replay(&[requested(2), answered("approved", "a"), answered("approved", "a")]);
        assert_eq!(repeated.waiting.as_deref(), Some("ask"));
        assert_eq!(repeated.approvals.len(), 1);
        assert_eq!(repeated.ignored, [3]);

        let granted = replay(&[requested(2), answered("approved", "a"), answered("approved", "b")]);
        assert_eq!(granted.waiting, None);
        assert_eq!(granted.answer.as_deref(), Some("approved"));
        assert_eq!(granted.answered_by.as_deref(), Some("b"), "the deciding approver");
    }

    #[test]
    fn one_denial_decides_a_quorum_and_a_quorum_of_one_is_the_first_answer() {
        let denied = replay(&[requested(3), answered("approved", "a"), answered("denied", "b")]);
        assert_eq!(denied.waiting, None);
        assert_eq!(denied.answer.as_deref(), Some("denied"));
        assert_eq!(denied.answered_by.as_deref(), Some("b"));

        let single = replay(&[requested(1), answered("approved", "c")]);
        assert_eq!(single.answer.as_deref(), Some("approved"));
        assert_eq!(single.waiting, None);
    }

    #[test]
    fn a_journal_written_before_quorums_reads_as_a_quorum_of_one() {
        let old = serde_json::json!({
            "kind": "approval_requested", "at": "2026-01-01T00:00:00.000Z", "step_id": "ask",
            "approvers": ["a"], "reason": "r", "expires_at": null,
        });
        let entry: JournalEntry = serde_json::from_value(old.clone()).expect("an old entry");
        assert!(matches!(entry, JournalEntry::ApprovalRequested { quorum: 1, .. }), "{entry:?}");
        assert_eq!(serde_json::to_value(&entry).expect("json"), old, "a quorum of one is not written");
    }
}
