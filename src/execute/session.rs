//! One runner working on one execution: the step loop, its journal and its effects.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tracing::Instrument;

use super::discovery::{self, Discovery};
use super::engine::{
    ExecuteError, ExecutionReport, PlanView, PlannedStep, Runner, StepReport, check_actor, crash_point, doc_of,
    execution_of, hostname, is_past, journal_entries, later, record_owner, until,
};
use super::fencing::ReplicaLease;
use super::notify::{self, ApprovalNotice, Channel, ChannelKind, DeliveryOutcome, Notice, NotificationEvent, Notifier};
use super::record::{
    ApprovalAnswer, ApprovalKind, Execution, ExecutionStatus, FollowUp, JournalEntry, Mode, OperatorQuestion,
    PendingApproval, idempotency_key, visit_idempotency_key,
};
use super::runtime::{
    ActionRequest, ActionResult, ResolveRuntime, RunExpectation, RunObservation, Runtime, RuntimeError,
};
use super::state::{OpenIntent, State};
use super::store_runtime::StoreRuntime;
use crate::inspect::{self, checks};
use crate::model::IncidentKind;
use crate::model::json::now_iso;
use crate::plan::{PlanError, evaluate_guard};
use crate::playbook::{Action, CompiledPlaybook, EffectClass, GraphNode, StepNode};
use crate::policy::DecisionContext;
use crate::store::{Expected, JournalRecord, Revision, RunStore, StoreError, validate_run_id};

/// Where a step loop got to.
enum Progress {
    /// Go on with the next step.
    Next,
    /// The execution was parked on a timer, or stopped for a shutdown: saved, return.
    Left,
}

/// Failures while carrying out a step: a runtime that could not act, or the runner's own.
enum StepError {
    Runtime(RuntimeError),
    Execute(ExecuteError),
}

pub(crate) struct Session<'r> {
    runner: &'r Runner,
    pub(crate) execution: Execution,
    revision: Revision,
    playbook: &'r CompiledPlaybook,
    view: PlanView,
    state: State,
    ctx: Option<DecisionContext>,
    /// `ctx` still shows the store as this session found it: no step that writes or waits has
    /// run since it was read, so an `inspect_report` of the incident may use its report.
    ctx_current: bool,
    steps: Vec<StepReport>,
    /// The runtimes this execution acts through (pinned at its start).
    runtimes: Arc<dyn ResolveRuntime>,
    pub(crate) notes: Vec<String>,
    /// The status last saved (or loaded): a save in another one is counted in the metrics.
    saved_status: ExecutionStatus,
    /// Entries applied to the state but not written yet, because nothing that follows depends
    /// on them being on disk: a step's outcome, an execution's end. They are committed with
    /// the next journal write (the next effect's intent, a notification's) or the execution
    /// record's save (an end, a pause), one durable commit instead of several; a retry's
    /// back-off, a look at the runtime before the end and every error exit write them first. A
    /// crash before they are written repeats only read-only steps and leaves an effectful
    /// step's intent open, settled by what its effect left — as a crash between an effect and
    /// its outcome always was.
    held: Vec<JournalRecord>,
}

impl<'r> Session<'r> {
    pub(crate) fn new(
        runner: &'r Runner,
        execution: Execution,
        revision: Revision,
        view: &PlanView,
        runtimes: Arc<dyn ResolveRuntime>,
    ) -> Result<Session<'r>, ExecuteError> {
        let playbook = runner.playbook_of(&execution)?;
        Ok(Session {
            saved_status: execution.status,
            runner,
            state: State::new(&playbook.graph),
            execution,
            revision,
            playbook,
            view: view.clone(),
            ctx: None,
            ctx_current: false,
            steps: Vec::new(),
            runtimes,
            notes: Vec::new(),
            held: Vec::new(),
        })
    }

    fn id(&self) -> &str {
        &self.execution.execution_id
    }

    fn inconsistent(&self, problem: impl Into<String>) -> ExecuteError {
        ExecuteError::Inconsistent { execution_id: self.execution.execution_id.clone(), problem: problem.into() }
    }

    /// Rebuilds the position from the journal.
    pub(crate) async fn replay(&mut self) -> Result<(), ExecuteError> {
        let journal = self.runner.store.journal(self.id()).await?;
        let entries = journal_entries(self.id(), &journal)?;
        for entry in &entries {
            self.state.apply(&self.playbook.graph, entry).map_err(|error| ExecuteError::Inconsistent {
                execution_id: self.execution.execution_id.clone(),
                problem: error.to_string(),
            })?;
        }
        if !self.state.ignored.is_empty() {
            self.notes.push(format!(
                "journal entries {} are late second answers to questions already answered; the first answers count",
                self.state.ignored.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(())
    }

    /// Appends a journal entry (durably, at the next position: compare-and-set), with the
    /// entries held before it in the same commit, and applies it.
    pub(crate) async fn append(&mut self, entry: JournalEntry) -> Result<(), ExecuteError> {
        let record = entry.record(&self.execution.execution_id, self.state.next_seq);
        self.held.push(record);
        self.write_held().await?;
        self.apply(&entry)
    }

    /// Applies an entry now and keeps it to be written with the next journal write or save of
    /// the execution record (see `held`).
    fn hold(&mut self, entry: JournalEntry) -> Result<(), ExecuteError> {
        let record = entry.record(&self.execution.execution_id, self.state.next_seq);
        self.apply(&entry)?;
        self.held.push(record);
        Ok(())
    }

    /// Writes the held entries, if any, in one commit.
    async fn write_held(&mut self) -> Result<(), ExecuteError> {
        if self.held.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut self.held);
        self.write_entries(&records).await
    }

    /// Appends records durably, in one commit; a conflict means another process moved the
    /// journal.
    async fn write_entries(&self, records: &[JournalRecord]) -> Result<(), ExecuteError> {
        let started = std::time::Instant::now();
        let appended = self.runner.store.append_journal_entries(records).await;
        crate::telemetry::journal_committed(commit_outcome(&appended), started.elapsed());
        match appended {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict { .. }) => {
                Err(ExecuteError::LostOwnership { execution_id: self.execution.execution_id.clone() })
            }
            Err(error) => Err(error.into()),
        }
    }

    fn apply(&mut self, entry: &JournalEntry) -> Result<(), ExecuteError> {
        self.state.apply(&self.playbook.graph, entry).map_err(|error| ExecuteError::Inconsistent {
            execution_id: self.execution.execution_id.clone(),
            problem: error.to_string(),
        })
    }

    /// Saves the execution record (compare-and-set), its summary taken from the state.
    pub(crate) async fn save(&mut self) -> Result<(), ExecuteError> {
        self.write_record().await?;
        if self.execution.status != self.saved_status {
            self.saved_status = self.execution.status;
            crate::telemetry::execution_reached(self.execution.mode.as_str(), self.execution.status.as_str());
        }
        Ok(())
    }

    async fn write_record(&mut self) -> Result<(), ExecuteError> {
        let graph = &self.playbook.graph;
        self.execution.node = Some(graph.node(self.state.node).id().to_owned());
        self.execution.created_runs = self.state.created_runs.clone();
        self.execution.updated_at = now_iso();
        if let Some((_, outcome)) = &self.state.finished {
            self.execution.outcome = Some(outcome.clone());
            self.execution.status = ExecutionStatus::of_end(outcome);
        }
        if !self.held.is_empty() {
            let records = std::mem::take(&mut self.held);
            let started = std::time::Instant::now();
            let written = self
                .runner
                .store
                .append_journal_and_put_execution(
                    &records,
                    doc_of(&mut self.execution),
                    Expected::Revision(self.revision),
                )
                .await;
            crate::telemetry::journal_committed(commit_outcome(&written), started.elapsed());
            match written {
                Ok(revision) => {
                    self.revision = revision;
                    return Ok(());
                }
                // Nothing was written: the entries alone (a moved journal is a lost ownership),
                // then the record's save below, which merges an answer recorded meanwhile.
                Err(StoreError::Conflict { .. }) => self.write_entries(&records).await?,
                Err(error) => return Err(error.into()),
            }
        }
        // Made again after a conflict above (rare): the store takes the document it saves.
        match self.runner.store.put_execution(doc_of(&mut self.execution), Expected::Revision(self.revision)).await {
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
                let nobody_holds = theirs.lease.is_none() && self.execution.lease.is_none();
                if !holder_is_us && !nobody_holds {
                    return Err(ExecuteError::LostOwnership { execution_id: self.execution.execution_id.clone() });
                }
                for answer in theirs.answers {
                    if !self.execution.answers.contains(&answer) {
                        self.execution.answers.push(answer);
                    }
                }
                // …and, for a quorum, who approved the request still pending.
                if let (Some(ours), Some(theirs)) = (self.execution.pending_approval.as_mut(), theirs.pending_approval)
                    && ours.step_id == theirs.step_id
                {
                    for name in theirs.approved_by {
                        if !ours.approved_by.contains(&name) {
                            ours.approved_by.push(name);
                        }
                    }
                }
                self.revision = self
                    .runner
                    .store
                    .put_execution(doc_of(&mut self.execution), Expected::Revision(stored.revision))
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
        self.ctx_current = true;
        Ok(ctx)
    }

    /// Starts from what the planner read for this plan (the run at the plan's revision, its
    /// report and continuation source) instead of reading it again at the first need.
    pub(crate) fn know_incident(&mut self, planned_from: &DecisionContext) {
        self.ctx = Some(planned_from.with_incident(IncidentKind::parse(&self.view.incident_type)));
        self.ctx_current = true;
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

    /// Whether a `resolve_approval` step carries the approval of the `request_approval` step it
    /// was entered from (its `approved` exit): one person's decision, asked once.
    fn approval_carried_in(&self, step: &StepNode) -> bool {
        step.action == Action::ResolveApproval
            && self.state.entered_by.as_ref().is_some_and(|(from, transition)| {
                transition == "approved"
                    && self.playbook.graph.step(from).is_some_and(|s| s.action == Action::RequestApproval)
            })
    }

    /// Runs until the execution ends, waits for a person or a timer, or needs an operator.
    pub(crate) async fn drive(&mut self) -> Result<(), ExecuteError> {
        let driven = self.drive_steps().await;
        // Every way out saves the record with what is held; this is for the error exits (and
        // any exit that did not save).
        if !self.held.is_empty()
            && let Err(error) = self.write_held().await
        {
            if driven.is_ok() {
                return Err(error);
            }
            // Found again when the execution is resumed: an outcome by what its effect left,
            // an end by going through it again (an end has no effect).
            tracing::warn!(execution = %self.execution.execution_id, %error, "Cannot journal the last entries.");
        }
        driven
    }

    async fn drive_steps(&mut self) -> Result<(), ExecuteError> {
        let graph = &self.playbook.graph;
        for _ in 0..100_000 {
            if let Some((_, outcome)) = self.state.finished.clone() {
                if outcome == "resolved" && !self.state.verified && self.state.recovered.is_some() {
                    self.verify_end().await?;
                    continue;
                }
                return self.finish().await;
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
                        origin: self.runner.origin.clone(),
                    })
                    .await?;
                    continue;
                }
                // Who approved so far, as the journal says (an approval recorded just before a
                // crash is on the record again, counted once).
                if let Some(pending) = self.execution.pending_approval.as_mut().filter(|p| p.step_id == step_id) {
                    pending.approved_by = self.state.approvals.iter().map(|(name, _)| name.clone()).collect();
                }
                // The approval request's notifications (again after a crash before they were
                // all recorded: a channel already recorded is not sent again).
                self.notify_approval().await?;
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
                    // Written with the record's save in `finish` (no effect in between).
                    self.hold(JournalEntry::Finished {
                        at: now_iso(),
                        node: end.id.clone(),
                        outcome: end.outcome.to_string(),
                    })?;
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
            let fresh = self.state.attempt == 1
                && self.state.answer.is_none()
                && self.state.open_intent.is_none()
                && self.state.timer.is_none();
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
            let needs_approval = planned.requires_approval
                || step.action == Action::RequestApproval
                || (step.action == Action::ResolveApproval && !self.approval_carried_in(step));
            // One span per step visit: asking for its approval, the answer, running it.
            let span = tracing::info_span!(
                "step",
                step = %step.id,
                action = step.spec().name,
                approval = tracing::field::Empty
            );
            if needs_approval && self.state.answer.is_none() && self.state.open_intent.is_none() {
                span.record("approval", "requested");
                self.ask(step, &planned).instrument(span).await?;
                continue;
            }
            if let Some(answer) = self.state.answer.clone() {
                span.record("approval", answer.as_str());
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
                        run_id: None,
                        run_status: None,
                    })
                    .instrument(span)
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
                    .instrument(span)
                    .await?;
                    continue;
                }
            }
            let progress = match step.action {
                Action::Wait | Action::AwaitRun => self.run_timed_step(step, &planned).instrument(span).await?,
                _ => {
                    let started = std::time::Instant::now();
                    self.run_step(step, &planned).instrument(span).await?;
                    let outcome = self.steps.last().filter(|s| s.step_id == step.id).map_or("unknown", |s| &s.outcome);
                    let mode = self.execution.mode.as_str();
                    crate::telemetry::step_finished(step.spec().name, outcome, mode, started.elapsed());
                    Progress::Next
                }
            };
            if let Progress::Left = progress {
                return Ok(());
            }
        }
        Err(self.inconsistent("did not reach an end"))
    }

    /// The end was reached: the execution record says how it ended.
    async fn finish(&mut self) -> Result<(), ExecuteError> {
        self.notify_end().await?;
        self.execution.lease = None;
        self.execution.pending_approval = None;
        self.execution.operator_question = None;
        self.execution.wake_at = None;
        let handed_off = self.state.finished.as_ref().is_some_and(|(_, outcome)| outcome == "handed_off");
        self.execution.follow_up = match (&self.state.recovered, handed_off) {
            (Some(recovered), true) => Some(FollowUp {
                run_id: recovered.run_id.clone(),
                last_status: recovered.status.clone().unwrap_or_default(),
                checked_at: now_iso(),
            }),
            _ => None,
        };
        self.save().await
    }

    /// How the recovered run stands: the last runtime answer when it saw the run completed, else
    /// a fresh look (in a dry run, only the overlay: a real runtime knows nothing of it).
    async fn recovered_now(&mut self) -> Result<Option<RunObservation>, ExecuteError> {
        let Some(recovered) = self.state.recovered.clone() else { return Ok(None) };
        let from_answer = recovered.status.as_deref().map(|status| RunObservation {
            run_id: recovered.run_id.clone(),
            status: crate::model::RunStatus::parse(status),
            pending_approval: None,
            pause_stage: None,
            seen_by: "the runtime's answer".into(),
        });
        if self.runner.mode == Mode::Advisory || from_answer.as_ref().is_some_and(|seen| seen.status.is_terminal()) {
            return Ok(from_answer);
        }
        // What happened is on disk before waiting on the runtime.
        self.write_held().await?;
        let runtime = self.runtime_for(&recovered.run_id).await.ok();
        let seen = discovery::observe(self.runner.store.as_ref(), runtime.as_deref(), &recovered.run_id).await?;
        Ok(seen.or(from_answer))
    }

    /// A `resolved` end is verified on the recovered run: completed → resolved; failed or
    /// cancelled → escalated; anything else → handed off (followed up).
    async fn verify_end(&mut self) -> Result<(), ExecuteError> {
        let Some(recovered) = self.state.recovered.clone() else { return Ok(()) };
        let seen = self.recovered_now().await?;
        let status = seen.as_ref().map_or_else(|| "missing".to_owned(), |seen| seen.status.as_str().to_owned());
        let outcome = match seen.as_ref().map(|seen| &seen.status) {
            Some(crate::model::RunStatus::Completed) => "resolved",
            Some(crate::model::RunStatus::Failed | crate::model::RunStatus::Cancelled) | None => "escalated",
            Some(_) => "handed_off",
        };
        tracing::info!(execution = %self.execution.execution_id, run = %recovered.run_id, %status, outcome, "Verified the recovered run.");
        self.hold(JournalEntry::Verified { at: now_iso(), run_id: recovered.run_id, status, outcome: outcome.into() })
    }

    /// Looks at a `handed_off` execution's run again.
    pub(crate) async fn follow_up(&mut self) -> Result<(), ExecuteError> {
        if self.execution.status != ExecutionStatus::HandedOff {
            return Ok(());
        }
        let Some(recovered) = self.state.recovered.clone() else {
            return Err(self.inconsistent("is handed off but names no recovered run"));
        };
        let runtime = self.runtime_for(&recovered.run_id).await.ok();
        let seen = discovery::observe(self.runner.store.as_ref(), runtime.as_deref(), &recovered.run_id).await?;
        let expected = self.expectation_sent_for(&recovered.run_id).await?;
        let outcome = match &seen {
            None => Some("escalated"),
            // Where the action left it: the runtime has not taken it up yet (a `store` runtime's
            // resume request waits for the runtime that owns the run).
            Some(seen) if expected.as_ref().is_some_and(|expect| expect.unchanged_in(seen)) => None,
            Some(seen) => match seen.status {
                crate::model::RunStatus::Completed => Some("resolved"),
                // Failed, or waiting for someone again: a new incident, linked to this one.
                crate::model::RunStatus::Failed
                | crate::model::RunStatus::Cancelled
                | crate::model::RunStatus::WaitingForApproval
                | crate::model::RunStatus::Paused => Some("escalated"),
                _ => None,
            },
        };
        let status = seen.as_ref().map_or_else(|| "missing".to_owned(), |seen| seen.status.as_str().to_owned());
        match outcome {
            Some(outcome) => {
                self.append(JournalEntry::Verified {
                    at: now_iso(),
                    run_id: recovered.run_id,
                    status,
                    outcome: outcome.into(),
                })
                .await?;
                self.finish().await
            }
            None => {
                self.execution.follow_up =
                    Some(FollowUp { run_id: recovered.run_id, last_status: status, checked_at: now_iso() });
                self.save().await
            }
        }
    }

    /// The expectation the last action sent for `run_id` carried (where the run stood then).
    async fn expectation_sent_for(&self, run_id: &str) -> Result<Option<RunExpectation>, ExecuteError> {
        let journal = self.runner.store.journal(self.id()).await?;
        let entries = journal_entries(self.id(), &journal)?;
        Ok(entries.iter().rev().find_map(|entry| match entry {
            JournalEntry::Intent { run_id: target, request, .. } if target == run_id => {
                serde_json::from_value::<ActionRequest>(request.clone()).ok().and_then(|r| r.expect)
            }
            _ => None,
        }))
    }

    /// Pauses for a person (or, in a dry run, records the question and assumes approval).
    /// A step nobody may approve is not left waiting for ever: it is answered `timeout` at once,
    /// with the reason, so the playbook's timeout exit (or escalation) takes over.
    async fn ask(&mut self, step: &StepNode, planned: &PlannedStep) -> Result<(), ExecuteError> {
        let settings = &self.runner.settings;
        let approvers = planned.approvers.clone().unwrap_or_default();
        let names =
            if approvers.names.is_empty() { settings.default_approvers.clone() } else { approvers.names.clone() };
        let names: Vec<String> = names.into_iter().filter(|name| check_actor(name).is_ok()).collect();
        let timeout = planned.timeout_ms.map(Duration::from_millis).unwrap_or(settings.default_approval_timeout);
        let expires_at = later(timeout);
        let reason = approval_reason(step, planned);
        let quorum = planned.quorum.max(1);
        // The requester never counts towards a quorum of two or more.
        let eligible: std::collections::BTreeSet<&String> =
            names.iter().filter(|name| quorum == 1 || **name != self.execution.started_by).collect();
        self.append(JournalEntry::ApprovalRequested {
            at: now_iso(),
            step_id: step.id.clone(),
            approvers: names.clone(),
            reason: reason.clone(),
            expires_at: Some(expires_at.clone()),
            // A dry run assumes the approval in one answer: it asks for a quorum of one (the
            // quorum is in the step's report).
            quorum: if self.runner.mode == Mode::Advisory { 1 } else { quorum },
        })
        .await?;
        if names.is_empty() || eligible.len() < quorum as usize {
            let why = if names.is_empty() {
                format!(
                    "nobody may approve step {}: neither the plan nor salvage.yaml (approvals.default_approvers) names \
                     an approver; it is treated as unanswered (fail closed)",
                    step.id
                )
            } else {
                format!(
                    "step {} needs {quorum} distinct approvers but only {} may approve ({}; the requester {} never \
                     counts); it is treated as unanswered (fail closed)",
                    step.id,
                    eligible.len(),
                    names.join(", "),
                    self.execution.started_by
                )
            };
            self.report_step(
                &step.id,
                &planned.action,
                "no_approvers",
                self.state.attempt,
                None,
                json!({"approvers": names, "reason": why}),
            );
            return self
                .append(JournalEntry::ApprovalAnswered {
                    at: now_iso(),
                    step_id: step.id.clone(),
                    decision: "timeout".into(),
                    actor: "salvage".into(),
                    reason: Some(why),
                    origin: self.runner.origin.clone(),
                })
                .await;
        }
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
            quorum,
            approved_by: Vec::new(),
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
            if quorum > 1 {
                json!({"approvers": names, "quorum": quorum, "reason": reason})
            } else {
                json!({"approvers": names, "reason": reason})
            },
        );
        if self.runner.mode == Mode::Advisory {
            // A dry run says what the request would send, then assumes the answer.
            self.notify_approval().await?;
            self.append(JournalEntry::ApprovalAnswered {
                at: now_iso(),
                step_id: step.id.clone(),
                decision: "approved".into(),
                actor: "dry run (assumed)".into(),
                reason: Some("a dry run assumes every approval is given".into()),
                origin: self.runner.origin.clone(),
            })
            .await?;
            self.execution.pending_approval = None;
        }
        Ok(())
    }

    /// The runtime that owns a run (resolved from the run as the store holds it).
    async fn runtime_for(&self, run_id: &str) -> Result<Arc<dyn Runtime>, StepError> {
        let run = self
            .runner
            .store
            .get(run_id)
            .await
            .map_err(|e| StepError::Execute(e.into()))?
            .map(|stored| stored.run)
            .ok_or_else(|| {
                StepError::Runtime(RuntimeError::BeforeEffect {
                    runtime: "store".into(),
                    message: format!("run {run_id} is not in the store"),
                })
            })?;
        self.runtimes.resolve(&run).map_err(StepError::Runtime)
    }

    /// An intent without an outcome, found when resuming: `Ok(true)` runs the step again with
    /// the same key (its effect is safe to repeat), `Ok(false)` means the situation was settled
    /// (the effect was found, or a person must answer).
    async fn recover_intent(&mut self, intent: OpenIntent) -> Result<bool, ExecuteError> {
        let graph = &self.playbook.graph;
        let Some(step) = graph.step(&intent.step_id) else {
            return Err(self.inconsistent(format!("step {} is not in the playbook", intent.step_id)));
        };
        if matches!(step.effect(), EffectClass::ReadOnly | EffectClass::Idempotent) {
            return Ok(true);
        }
        let (settled, candidates) = self.settle_interrupted(step, &intent, None).await?;
        if let Some(result) = settled {
            self.record_settled(step, &intent, result).await?;
            return Ok(false);
        }
        let found = if candidates.is_empty() {
            String::new()
        } else {
            format!(" Runs that may be its: {}; name the right one with `--created RUN`.", candidates.join(", "))
        };
        let question = format!(
            "Step {} ({}, {}) started (idempotency key {}) but its outcome was never recorded, and salvage could not \
             find its effect.{found} Confirm what happened: `salvage confirm {} {} --outcome ok{}` if it completed, \
             `--outcome failed` if it did not happen, or `--retry` to run it again (a retry first looks again for \
             what an earlier attempt did).",
            intent.step_id,
            step.spec().name,
            intent.effect,
            intent.idempotency_key,
            self.execution.execution_id,
            intent.step_id,
            if step.spec().creates_run { " [--created RUN]" } else { "" },
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

    /// Journals the outcome found for an interrupted step.
    async fn record_settled(
        &mut self,
        step: &StepNode,
        intent: &OpenIntent,
        result: ActionResult,
    ) -> Result<(), ExecuteError> {
        self.report_step(
            &intent.step_id,
            step.spec().name,
            &result.outcome,
            intent.attempt,
            result.created_run_id.clone(),
            result.detail.clone(),
        );
        let created = result.created_run_id.clone();
        self.append(JournalEntry::Outcome {
            at: now_iso(),
            step_id: intent.step_id.clone(),
            attempt: intent.attempt,
            idempotency_key: intent.idempotency_key.clone(),
            outcome: result.outcome,
            created_run_id: result.created_run_id,
            detail: result.detail,
            run_id: Some(intent.run_id.clone()),
            run_status: result.run_status,
        })
        .await?;
        if let Some(created) = created {
            self.own(&created, &intent.step_id).await?;
        }
        Ok(())
    }

    /// Records that this execution step created `run_id` (not in a dry run's real store: the
    /// overlay keeps it).
    async fn own(&self, run_id: &str, step_id: &str) -> Result<(), ExecuteError> {
        record_owner(self.runner.store.as_ref(), run_id, &self.execution.execution_id, step_id, &self.view.run_id).await
    }

    /// What an interrupted attempt did, found without doing it again: the run a run-creating
    /// step made (by every clue its attempts left), or the new state of the run an action was
    /// sent for. `(None, candidates)` when it cannot be told.
    async fn settle_interrupted(
        &mut self,
        step: &StepNode,
        intent: &OpenIntent,
        request: Option<&ActionRequest>,
    ) -> Result<(Option<ActionResult>, Vec<String>), ExecuteError> {
        if step.spec().creates_run {
            return match self.discover(step, request).await? {
                Discovery::Found { run_id, how, duplicates } => {
                    let mut result = ActionResult::ok(json!({
                        "recovered": format!("found the run this step created: {how}"),
                        "duplicates": duplicates,
                    }));
                    result.created_run_id = Some(run_id);
                    Ok((Some(result), Vec::new()))
                }
                Discovery::Ambiguous(candidates) => Ok((None, candidates)),
                Discovery::NotFound => Ok((None, Vec::new())),
            };
        }
        let expect = request.and_then(|r| r.expect.clone()).or_else(|| intent.expect.clone());
        let Some(expect) = expect else { return Ok((None, Vec::new())) };
        let runtime = self.runtime_for(&intent.run_id).await.ok();
        let seen = discovery::observe(self.runner.store.as_ref(), runtime.as_deref(), &intent.run_id).await?;
        Ok((seen.and_then(|seen| discovery::settle_by_observation(step.action, &expect, &seen)), Vec::new()))
    }

    /// Looks for the run a run-creating step made in any earlier attempt.
    async fn discover(&mut self, step: &StepNode, request: Option<&ActionRequest>) -> Result<Discovery, ExecuteError> {
        let intents = self.state.create_attempts.get(&step.id).cloned().unwrap_or_default();
        let Some(clue) = intents.iter().find_map(|intent| intent.clue.clone()) else {
            // Journals from before clues: only the reserved ids can tell.
            for intent in &intents {
                if let Some(reserved) = &intent.new_run_id
                    && self.runner.store.get(reserved).await?.is_some()
                {
                    return Ok(Discovery::Found {
                        run_id: reserved.clone(),
                        how: "the id this step reserved holds a run".into(),
                        duplicates: Vec::new(),
                    });
                }
            }
            return Ok(Discovery::NotFound);
        };
        let runtime = self.runtime_for(&clue.origin_run_id).await.ok();
        let found = discovery::find_created(discovery::Search {
            runs: self.runner.store.as_ref(),
            runtime: runtime.as_deref(),
            execution_id: &self.execution.execution_id,
            step_id: &step.id,
            clue: &clue,
            reserved: intents.iter().filter_map(|intent| intent.new_run_id.clone()).collect(),
            since: intents.first().map(|intent| intent.at.clone()),
            skew: self.runner.settings.creation_skew,
            taken: self.state.all_created.clone(),
            request,
        })
        .await?;
        if let Discovery::Found { duplicates, .. } = &found
            && !duplicates.is_empty()
        {
            tracing::warn!(step = %step.id, ?duplicates, "More than one run records this step; the first one counts.");
        }
        Ok(found)
    }

    /// Every approval answer recorded in the journal, in order.
    async fn approvals_so_far(&self) -> Result<Vec<ApprovalAnswer>, ExecuteError> {
        let journal = self.runner.store.journal(self.id()).await?;
        Ok(journal_entries(self.id(), &journal)?
            .into_iter()
            .filter_map(|entry| match entry {
                JournalEntry::ApprovalAnswered { at, step_id, decision, actor, reason, .. } => {
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

    /// Journals that a person must say what happened to an attempt.
    async fn ask_operator(
        &mut self,
        step: &StepNode,
        planned: &PlannedStep,
        attempt: u32,
        question: String,
        detail: Value,
    ) -> Result<(), ExecuteError> {
        self.report_step(&step.id, &planned.action, "needs_operator", attempt, None, detail);
        self.append(JournalEntry::OperatorNeeded { at: now_iso(), step_id: step.id.clone(), attempt, question }).await
    }

    /// The run a step acts on: the run its `target` created, else the incident run.
    fn target_of(&self, step: &StepNode, planned: &PlannedStep) -> Result<String, String> {
        match planned.target.as_ref().or(step.params.target.as_ref()) {
            Some(target) => {
                self.state.target_run(target).cloned().ok_or_else(|| format!("step {target} created no run to act on"))
            }
            None => Ok(self.view.run_id.clone()),
        }
    }

    /// Under a replica's lease: whether this process may still act (see [`ReplicaLease`]).
    fn check_lease(&self) -> Result<(), ExecuteError> {
        match &self.runner.settings.replica {
            Some(lease) => Ok(lease.check()?),
            None => Ok(()),
        }
    }

    /// Runs one attempt of a step: checks, intent, effect, outcome.
    async fn run_step(&mut self, step: &StepNode, planned: &PlannedStep) -> Result<(), ExecuteError> {
        let attempt = self.state.attempt;
        let mut key = visit_idempotency_key(&self.view.plan_id, &step.id, self.state.visit(), attempt);
        if let Some(epoch) = self.runner.settings.replica.as_ref().map(ReplicaLease::epoch) {
            // A replica sends under its lease's epoch so a runtime can refuse a stale one. The
            // successor of a replica never re-sends an attempt whose outcome is unknown (that
            // goes to a person unless discovery proves it), so the key need not match its
            // predecessor's; idempotent steps may run again by definition.
            key.push_str(&format!("@e{epoch}"));
        }
        let target_run = match self.target_of(step, planned) {
            Ok(run) => run,
            Err(error) => {
                return self
                    .outcome(step, planned, attempt, &key, None, ActionResult::failed(json!({"error": error})))
                    .await;
            }
        };
        let resumed =
            self.state.open_intent.clone().filter(|intent| intent.step_id == step.id && intent.attempt == attempt);
        let runtime_action = uses_runtime(step.action);
        let mut expect = None;
        if runtime_action && resumed.is_none() {
            // Before every effect: is the run still where the plan expected it?
            let runtime = self.runtime_for(&target_run).await.ok();
            let seen = discovery::observe(self.runner.store.as_ref(), runtime.as_deref(), &target_run).await?;
            let Some(seen) = seen else {
                let detail = json!({"error": format!("run {target_run} is not in the store"), "refused": true});
                return self
                    .outcome(step, planned, attempt, &key, Some(&target_run), ActionResult::failed(detail))
                    .await;
            };
            let planned_status = (target_run == self.view.run_id).then_some(self.view.status.as_str());
            let workflow_run = self
                .runner
                .store
                .get(&target_run)
                .await?
                .is_some_and(|stored| stored.run.workflow_id().is_some_and(|id| !id.is_empty()));
            if !step.spec().creates_run
                && let Some(why) =
                    discovery::refusal(step.action, &seen, planned_status, &planned.payload, workflow_run)
            {
                tracing::warn!(step = %step.id, %why, "The run moved; the step is refused.");
                let detail = json!({"refused": why, "runStatus": seen.status.as_str(), "seenBy": seen.seen_by});
                let result = ActionResult::failed(detail).with_run_status(seen.status.as_str());
                return self.outcome(step, planned, attempt, &key, Some(&target_run), result).await;
            }
            expect = Some(RunExpectation::of(&seen));
        }
        // A run-creating step acting again (a retry, an operator's `--retry`) first looks for
        // the run an earlier attempt made.
        if step.spec().creates_run && resumed.is_none() && self.state.create_attempts.contains_key(&step.id) {
            match self.discover(step, None).await? {
                Discovery::Found { run_id, how, duplicates } => {
                    let mut result = ActionResult::ok(json!({
                        "adopted": format!("an earlier attempt had created it: {how}; not created again"),
                        "duplicates": duplicates,
                    }));
                    result.created_run_id = Some(run_id);
                    return self.outcome(step, planned, attempt, &key, Some(&target_run), result).await;
                }
                Discovery::Ambiguous(candidates) => {
                    let question = format!(
                        "Step {} ({}) may already have created one of these runs: {}. Say which: `salvage confirm {} {} \
                         --outcome ok --created RUN`, or `--outcome failed` if none is its.",
                        step.id,
                        step.spec().name,
                        candidates.join(", "),
                        self.execution.execution_id,
                        step.id
                    );
                    return self
                        .ask_operator(step, planned, attempt, question, json!({"candidates": candidates}))
                        .await;
                }
                Discovery::NotFound => {}
            }
        }
        let new_run_id = match &resumed {
            Some(intent) => intent.new_run_id.clone(),
            None => reserved_run_id(step.action, &target_run),
        };
        if let Some(reserved) = &new_run_id
            && resumed.is_none()
            && let Err(error) = validate_run_id(reserved)
        {
            // Refused before anything was sent: a failed step, never an unknown outcome.
            let detail = json!({"error": format!("the run id this step would create is not valid: {error}")});
            return self.outcome(step, planned, attempt, &key, Some(&target_run), ActionResult::failed(detail)).await;
        }
        // The decision that let this step run: its own approval, else the last approval given in
        // this execution (e.g. a request_approval step right before it); for a denial, the last
        // refusal.
        let journal_answers = self.approvals_so_far().await?;
        let answer = if step.action == Action::DenyApproval {
            journal_answers.iter().rev().find(|a| matches!(a.decision.as_str(), "denied" | "timeout")).cloned()
        } else {
            journal_answers
                .iter()
                .rev()
                .find(|a| a.step_id == step.id && a.decision == "approved")
                .or_else(|| journal_answers.iter().rev().find(|a| a.decision == "approved"))
                .cloned()
        };
        let expect = expect.or_else(|| resumed.as_ref().and_then(|intent| intent.expect.clone()));
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
            expect,
        };
        let clue = discovery::clue_of(step.action, &target_run, &planned.payload);
        self.check_lease()?;
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
                clue,
            })
            .await?;
            crash_point("intent", &step.id);
        }
        // Last moment to notice a stall past the lease (the intent's fenced write passed).
        self.check_lease()?;
        if step.effect() != EffectClass::ReadOnly {
            self.ctx_current = false;
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
                // The effect may or may not have happened: look for it before asking a person.
                let intent = self.state.open_intent.clone().unwrap_or_else(|| OpenIntent {
                    step_id: step.id.clone(),
                    attempt,
                    effect: step.effect().as_str().to_owned(),
                    idempotency_key: key.clone(),
                    run_id: target_run.clone(),
                    new_run_id: request.new_run_id.clone(),
                    clue: None,
                    at: now_iso(),
                    expect: request.expect.clone(),
                });
                let (settled, candidates) = self.settle_interrupted(step, &intent, Some(&request)).await?;
                match settled {
                    Some(result) => result,
                    None => {
                        let found = if candidates.is_empty() {
                            String::new()
                        } else {
                            format!(" Runs that may be its: {}.", candidates.join(", "))
                        };
                        let question = format!(
                            "Step {} ({}) could not be carried out cleanly: {error}.{found} Confirm whether its effect \
                             happened: `salvage confirm {} {} --outcome ok|failed{}`, or `--retry`.",
                            step.id,
                            step.spec().name,
                            self.execution.execution_id,
                            step.id,
                            if step.spec().creates_run { " [--created RUN]" } else { "" },
                        );
                        let detail = json!({"error": error.to_string(), "candidates": candidates});
                        return self.ask_operator(step, planned, attempt, question, detail).await;
                    }
                }
            }
            Err(StepError::Execute(error)) => return Err(error),
        };
        crash_point("effect", &step.id);
        let acted_on = runtime_action.then_some(target_run.as_str());
        self.outcome(step, planned, attempt, &key, acted_on, result).await?;
        crash_point("outcome", &step.id);
        Ok(())
    }

    async fn outcome(
        &mut self,
        step: &StepNode,
        planned: &PlannedStep,
        attempt: u32,
        key: &str,
        run_id: Option<&str>,
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
        let created = result.created_run_id.clone();
        // Written with the next step's intent or the execution's end (see `held`).
        self.hold(JournalEntry::Outcome {
            at: now_iso(),
            step_id: step.id.clone(),
            attempt,
            idempotency_key: key.to_owned(),
            outcome: outcome.clone(),
            created_run_id: result.created_run_id,
            detail: result.detail,
            run_id: run_id.map(str::to_owned),
            run_status: result.run_status,
        })?;
        if let Some(created) = created {
            self.own(&created, &step.id).await?;
        }
        if outcome == "failed"
            && let Some(retry) = step.retry.filter(|retry| attempt < retry.max_attempts)
            && self.runner.mode == Mode::Enforce
        {
            self.write_held().await?;
            tokio::time::sleep(crate::limits::bounded_sleep(retry.backoff)).await;
        }
        Ok(())
    }

    /// `wait` and `await_run`: a clock journalled when the step starts (so restarts do not
    /// reset it); the daemon parks the execution instead of holding a worker.
    async fn run_timed_step(&mut self, step: &StepNode, planned: &PlannedStep) -> Result<Progress, ExecuteError> {
        // Time passes: what was read before no longer shows the store as it is.
        self.ctx_current = false;
        let attempt = self.state.attempt;
        let key = idempotency_key(&self.view.plan_id, &step.id, attempt);
        let target = match step.action {
            Action::AwaitRun => match self.target_of(step, planned) {
                Ok(run) => Some(run),
                Err(error) => {
                    let result =
                        ActionResult { outcome: "failed".into(), ..ActionResult::failed(json!({"error": error})) };
                    self.outcome(step, planned, attempt, &key, None, result).await?;
                    return Ok(Progress::Next);
                }
            },
            _ => None,
        };
        if self.runner.mode == Mode::Advisory {
            // A dry run does not wait: it takes the outcome the plan expects.
            let result = match step.action {
                Action::AwaitRun => ActionResult {
                    outcome: planned.expected_outcome.clone(),
                    created_run_id: None,
                    run_status: Some(planned.expected_outcome.replace("timeout", "running")),
                    detail: json!({"dryRun": true, "wouldAwait": target}),
                },
                _ => ActionResult::ok(json!({"waitedMs": 0, "dryRun": true})),
            };
            self.outcome(step, planned, attempt, &key, target.as_deref(), result).await?;
            return Ok(Progress::Next);
        }
        let duration_key = if step.action == Action::Wait { "durationMs" } else { "timeoutMs" };
        let millis = planned.payload.get(duration_key).and_then(Value::as_u64).unwrap_or(0);
        let until_at = match self.state.timer.clone().filter(|t| t.step_id == step.id && t.attempt == attempt) {
            Some(timer) => timer.until,
            None => {
                let until_at = later(Duration::from_millis(millis));
                self.append(JournalEntry::Timer {
                    at: now_iso(),
                    step_id: step.id.clone(),
                    attempt,
                    until: until_at.clone(),
                })
                .await?;
                // The record shows where the execution waits (`salvage executions`).
                self.save().await?;
                until_at
            }
        };
        let runtime = match &target {
            Some(run) => self.runtime_for(run).await.ok(),
            None => None,
        };
        // Where the last action on the awaited run left it: a run still exactly there has not
        // been taken up by its runtime yet (a `store` runtime's request waits for the runtime
        // that owns the run), so it has not settled.
        let sent = match &target {
            Some(run_id) => self.expectation_sent_for(run_id).await?,
            None => None,
        };
        let mut last_seen: Option<String> = None;
        loop {
            if let Some(run_id) = &target {
                let seen = discovery::observe(self.runner.store.as_ref(), runtime.as_deref(), run_id).await?;
                last_seen = seen.as_ref().map(|seen| seen.status.as_str().to_owned());
                if let Some(seen) = &seen
                    && !sent.as_ref().is_some_and(|expect| expect.unchanged_in(seen))
                    && let Some(outcome) = discovery::settled_outcome(seen)
                {
                    let result = ActionResult {
                        outcome: outcome.into(),
                        created_run_id: None,
                        run_status: Some(seen.status.as_str().to_owned()),
                        detail: json!({"runId": run_id, "status": seen.status.as_str(), "seenBy": seen.seen_by}),
                    };
                    self.outcome(step, planned, attempt, &key, Some(run_id), result).await?;
                    return Ok(Progress::Next);
                }
            }
            if is_past(&until_at) {
                let result = match step.action {
                    Action::AwaitRun => ActionResult {
                        outcome: "timeout".into(),
                        created_run_id: None,
                        run_status: last_seen.clone(),
                        detail: json!({"runId": target, "lastStatus": last_seen, "until": until_at}),
                    },
                    _ => ActionResult::ok(json!({"waitedMs": millis, "until": until_at})),
                };
                self.outcome(step, planned, attempt, &key, target.as_deref(), result).await?;
                return Ok(Progress::Next);
            }
            if self.runner.stop_requested() {
                self.execution.lease = None;
                self.save().await?;
                return Ok(Progress::Left);
            }
            let poll = self.runner.settings.await_poll.max(Duration::from_millis(50));
            let next_look = match step.action {
                Action::AwaitRun => until(&until_at).min(poll),
                _ => until(&until_at),
            };
            let long = self.runner.settings.park_after.is_some_and(|after| until(&until_at) > after);
            if long && next_look > Duration::from_millis(200) {
                self.execution.status = ExecutionStatus::Waiting;
                // Parked, a run is looked at every few seconds (each look is a resume).
                let parked_look = match step.action {
                    Action::AwaitRun => until(&until_at).min(poll.max(Duration::from_secs(5))),
                    _ => next_look,
                };
                self.execution.wake_at = Some(later(parked_look));
                self.execution.lease = None;
                self.save().await?;
                return Ok(Progress::Left);
            }
            self.sleep_holding_lease(next_look.min(Duration::from_secs(1))).await?;
        }
    }

    /// Sleeps in this process, keeping the lease alive (another host trusts it until it expires).
    async fn sleep_holding_lease(&mut self, pause: Duration) -> Result<(), ExecuteError> {
        tokio::time::sleep(pause).await;
        let renew_after = self.runner.settings.lease_ttl / 2;
        let expiring = self.execution.lease.as_ref().is_none_or(|lease| until(&lease.expires_at) < renew_after);
        if expiring || self.execution.status != ExecutionStatus::Running {
            self.execution.lease = Some(self.runner.lease());
            self.execution.status = ExecutionStatus::Running;
            self.execution.wake_at = None;
            self.save().await?;
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
        let check = |result: checks::CheckResult| {
            ActionResult::ok(json!({"summary": result.summary, "details": result.details})).with_outcome(result.outcome)
        };
        // The incident's run as the decision context read it, while nothing since changed it.
        let known = self.ctx.clone().filter(|ctx| self.ctx_current && ctx.run().id == request.run_id);
        let run = || async {
            if let Some(ctx) = &known {
                return Ok(ctx.run().clone());
            }
            store
                .get(&request.run_id)
                .await
                .map_err(|e| StepError::Execute(e.into()))?
                .map(|stored| stored.run)
                .ok_or_else(|| {
                    StepError::Runtime(RuntimeError::BeforeEffect {
                        runtime: "store".into(),
                        message: format!("run {} is not in the store", request.run_id),
                    })
                })
        };
        match step.action {
            Action::InspectReport => {
                let summary = |report: &inspect::IncidentReport| json!({"status": report.status, "failure": report.failure, "recommendations": report.recommendations});
                // The incident's report is the decision context's, read once per session (or
                // handed over by the planner) unless a step since has written or waited.
                if request.run_id == self.view.run_id && (self.ctx.is_none() || self.ctx_current) {
                    let ctx = self.context().await.map_err(StepError::Execute)?;
                    return Ok(ActionResult::ok(summary(ctx.report())));
                }
                let report =
                    inspect::create_report(store.as_ref(), &request.run_id, self.view.compare_to_run_id.as_deref())
                        .await
                        .map_err(|e| StepError::Execute(PlanError::from(e).into()))?;
                Ok(ActionResult::ok(summary(&report)))
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
            Action::Notify => self.notify_step(planned, request).await.map_err(StepError::Execute),
            // Timed steps run in `run_timed_step`; reaching here is a runner bug, reported as such.
            Action::Wait | Action::AwaitRun => {
                Err(StepError::Execute(self.inconsistent(format!("step {} is timed and cannot run here", step.id))))
            }
            Action::RequestApproval => Ok(ActionResult::ok(Value::Null)),
            Action::ResolveApproval
            | Action::DenyApproval
            | Action::ResumeReplay
            | Action::ResumeRun
            | Action::BranchFromCheckpoint
            | Action::PartialReplay
            | Action::FrozenReplay
            | Action::CancelRun => {
                let runtime = self.runtime_for(&request.run_id).await?;
                if dry && runtime.acts_outside_the_store() {
                    return simulate(runtime.as_ref(), request, planned, store.as_ref()).await;
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
        let file = self
            .runner
            .settings
            .export_dir
            .join(&request.execution_id)
            .join(format!("{}-{}.bundle.json", request.step_id, request.attempt));
        let detail =
            json!({"file": file.display().to_string(), "runIds": runs.iter().map(|r| &r.id).collect::<Vec<_>>()});
        if dry {
            // The runs are read as the export reads them; the bundle is never written, so it
            // is not built.
            return Ok(ActionResult::ok(json!({"dryRun": true, "wouldWrite": detail})));
        }
        let mut metadata = serde_json::Map::new();
        metadata.insert("exportedFor".into(), json!("salvage recovery"));
        metadata.insert("executionId".into(), json!(request.execution_id));
        metadata.insert("planId".into(), json!(request.plan_id));
        let bundle = inspect::trace::export_bundle_of(&runs, &metadata);
        match write_atomically(&file, &bundle) {
            Ok(()) => Ok(ActionResult::ok(detail)),
            Err(error) => {
                Ok(ActionResult::failed(json!({"file": file.display().to_string(), "error": error.to_string()})))
            }
        }
    }

    /// A notification of this execution, before it is shaped for a channel.
    fn notice(&self, event: NotificationEvent, key: String, step_id: Option<&str>) -> Notice {
        Notice {
            event,
            key,
            execution_id: self.execution.execution_id.clone(),
            incident_run_id: self.view.run_id.clone(),
            incident_type: self.view.incident_type.clone(),
            playbook: self.playbook.name.clone(),
            step_id: step_id.map(str::to_owned),
            message: None,
            approval: None,
        }
    }

    /// A `notify` step: the message to the channel it names, else the default channel, else
    /// every channel receiving `notify`; `ok` when every one got it.
    async fn notify_step(
        &mut self,
        planned: &PlannedStep,
        request: &ActionRequest,
    ) -> Result<ActionResult, ExecuteError> {
        let message = planned.payload.get("message").and_then(Value::as_str).unwrap_or_default().to_owned();
        let named = planned.payload.get("channel").and_then(Value::as_str);
        let config = self.runner.settings.notifications.clone();
        let channels: Vec<Channel> = match config.step_channels(named) {
            Ok(channels) => channels.into_iter().cloned().collect(),
            Err(unknown) => {
                // `salvage check` refuses this (P064); a configuration changed since is caught here.
                tracing::warn!(step = %request.step_id, error = %unknown.message, "notify: no such channel");
                return Ok(ActionResult::failed(
                    json!({"message": message, "error": unknown.message, "help": unknown.help}),
                ));
            }
        };
        if channels.is_empty() {
            tracing::warn!(target: "salvage::notify", execution = %request.execution_id, step = %request.step_id, "{message}");
            return Ok(ActionResult::ok(json!({
                "message": message, "channel": named, "deliveries": [],
                "note": "no notification channel is configured (salvage.yaml `notifications`): the message was only logged",
            })));
        }
        let key = notify::step_key(&self.execution.execution_id, &request.step_id, self.state.visit());
        let mut notice = self.notice(NotificationEvent::Notify, key, Some(&request.step_id));
        notice.message = Some(message.clone());
        let deliveries = self.deliver(&notice, &channels, true).await?;
        let all_sent = deliveries.iter().all(|d| d["outcome"] != DeliveryOutcome::Failed.as_str());
        let detail = json!({"message": message, "channel": named, "deliveries": deliveries});
        Ok(if all_sent { ActionResult::ok(detail) } else { ActionResult::failed(detail) })
    }

    /// The pending approval's request to every channel receiving `approval_requested`; what
    /// was sent goes on the step's report (`notifications`).
    async fn notify_approval(&mut self) -> Result<(), ExecuteError> {
        let Some(pending) = self.execution.pending_approval.clone() else { return Ok(()) };
        let config = self.runner.settings.notifications.clone();
        let channels: Vec<Channel> =
            config.subscribers(NotificationEvent::ApprovalRequested).into_iter().cloned().collect();
        if channels.is_empty() {
            return Ok(());
        }
        let key = format!(
            "{}:approval",
            notify::step_key(&self.execution.execution_id, &pending.step_id, self.state.visit())
        );
        let mut notice = self.notice(NotificationEvent::ApprovalRequested, key, Some(&pending.step_id));
        notice.approval = Some(ApprovalNotice {
            approvers: pending.approvers.clone(),
            reason: pending.reason.clone(),
            expires_at: pending.expires_at.clone(),
        });
        let deliveries = self.deliver(&notice, &channels, false).await?;
        if let Some(report) = self.steps.last_mut().filter(|r| r.step_id == pending.step_id)
            && let Value::Object(detail) = &mut report.detail
        {
            detail.insert("notifications".into(), Value::Array(deliveries));
        }
        Ok(())
    }

    /// An execution that ended `escalated` or `resolved` says so; a PagerDuty channel is sent
    /// `resolve` only when this execution triggered it.
    async fn notify_end(&mut self) -> Result<(), ExecuteError> {
        let event = match self.state.finished.as_ref().map(|(_, outcome)| outcome.as_str()) {
            Some("escalated") => NotificationEvent::Escalated,
            Some("resolved") => NotificationEvent::Resolved,
            _ => return Ok(()),
        };
        let config = self.runner.settings.notifications.clone();
        let channels: Vec<Channel> = config
            .subscribers(event)
            .into_iter()
            .filter(|channel| {
                event != NotificationEvent::Resolved
                    || channel.kind() != ChannelKind::PagerDuty
                    || self.state.triggered.contains(&channel.name)
            })
            .cloned()
            .collect();
        if channels.is_empty() {
            return Ok(());
        }
        let key = format!("{}:{event}", self.execution.execution_id);
        let notice = self.notice(event, key, None);
        for delivery in self.deliver(&notice, &channels, false).await? {
            if delivery.get("note").is_none() {
                self.notes.push(format!(
                    "{event} notification to {} ({}): {}",
                    delivery["channel"].as_str().unwrap_or("?"),
                    delivery["type"].as_str().unwrap_or("?"),
                    delivery["outcome"].as_str().unwrap_or("?")
                ));
            }
        }
        Ok(())
    }

    /// Sends `notice` to `channels`, each at most once as far as the journal can tell: a
    /// channel recorded `delivered` (or, unless `resend_failed`, `failed`) is skipped; the
    /// others are named in a `notification_intent` entry before anything is sent, and each
    /// gets a `delivery` entry after. A channel an earlier intent named with no delivery
    /// recorded was interrupted by a crash: it is sent again with the same idempotency key,
    /// its record marked `redelivery` and a warning logged, so a duplicate is never silent. A
    /// dry run sends nothing and records what it would send.
    async fn deliver(
        &mut self,
        notice: &Notice,
        channels: &[Channel],
        resend_failed: bool,
    ) -> Result<Vec<Value>, ExecuteError> {
        let progress = self.state.deliveries.get(&notice.key).cloned().unwrap_or_default();
        let mut reports = Vec::new();
        let mut to_send = Vec::new();
        for channel in channels {
            match progress.recorded.get(&channel.name).map(String::as_str) {
                Some(outcome) if outcome != "failed" || !resend_failed => reports.push(json!({
                    "channel": channel.name, "type": channel.kind().as_str(), "outcome": outcome,
                    "note": "recorded earlier; not sent again",
                })),
                _ => to_send.push(channel),
            }
        }
        if to_send.is_empty() {
            return Ok(reports);
        }
        let fresh: Vec<String> =
            to_send.iter().filter(|c| !progress.interrupted(&c.name)).map(|c| c.name.clone()).collect();
        if !fresh.is_empty() {
            self.append(JournalEntry::NotificationIntent {
                at: now_iso(),
                event: notice.event.as_str().to_owned(),
                idempotency_key: notice.key.clone(),
                step_id: notice.step_id.clone(),
                channels: fresh,
            })
            .await?;
        }
        // The journal precedes every send (a redelivery appends nothing before it).
        self.write_held().await?;
        let dry = self.runner.mode == Mode::Advisory;
        let config = self.runner.settings.notifications.clone();
        let notifier = if dry { None } else { Some(Notifier::new(config.clone())) };
        for channel in to_send {
            let redelivery = progress.interrupted(&channel.name);
            let delivery = match &notifier {
                None => notify::Delivery {
                    channel: channel.name.clone(),
                    kind: channel.kind(),
                    attempts: 0,
                    status: None,
                    outcome: DeliveryOutcome::DryRun,
                    error: None,
                    would_send: Some(Notifier::would_send(&config, channel, notice)),
                },
                Some(Err(error)) => notify::Delivery {
                    channel: channel.name.clone(),
                    kind: channel.kind(),
                    attempts: 0,
                    status: None,
                    outcome: DeliveryOutcome::Failed,
                    error: Some(error.clone()),
                    would_send: None,
                },
                Some(Ok(notifier)) => {
                    if redelivery {
                        tracing::warn!(
                            channel = %channel.name, key = %notice.key,
                            "A crash interrupted an earlier send of this notification: sending it again with the same \
                             idempotency key (the receiver may get it twice)."
                        );
                        self.notes.push(format!(
                            "notification {} to channel {} is sent again: an earlier send was interrupted before its \
                             outcome was recorded (same Idempotency-Key; the receiver may already have it)",
                            notice.key, channel.name
                        ));
                    }
                    self.check_lease()?;
                    let delivery = notifier.deliver(channel, notice).await;
                    crash_point("delivered", &channel.name);
                    delivery
                }
            };
            crate::telemetry::notification_delivered(
                channel.kind().as_str(),
                notice.event.as_str(),
                delivery.outcome.as_str(),
            );
            self.append(JournalEntry::Delivery {
                at: now_iso(),
                event: notice.event.as_str().to_owned(),
                idempotency_key: notice.key.clone(),
                channel: channel.name.clone(),
                channel_type: channel.kind().as_str().to_owned(),
                attempts: delivery.attempts,
                status: delivery.status,
                outcome: delivery.outcome.as_str().to_owned(),
                error: delivery.error.clone(),
                redelivery,
            })
            .await?;
            let mut report = json!({
                "channel": channel.name, "type": channel.kind().as_str(), "outcome": delivery.outcome.as_str(),
                "attempts": delivery.attempts, "status": delivery.status, "idempotencyKey": notice.key,
            });
            if let Some(error) = delivery.error {
                report["error"] = json!(error);
            }
            if redelivery {
                report["redelivery"] = json!(true);
            }
            if let Some(would_send) = delivery.would_send {
                report["wouldSend"] = would_send;
            }
            reports.push(report);
        }
        Ok(reports)
    }

    pub(crate) async fn report(mut self) -> Result<ExecutionReport, ExecuteError> {
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
        Ok(ExecutionReport { execution: self.execution, steps: self.steps, dry_run_runs, notes: self.notes })
    }
}

/// Actions a runtime carries out on a run.
fn uses_runtime(action: Action) -> bool {
    matches!(
        action,
        Action::ResolveApproval
            | Action::DenyApproval
            | Action::ResumeReplay
            | Action::ResumeRun
            | Action::BranchFromCheckpoint
            | Action::PartialReplay
            | Action::FrozenReplay
            | Action::CancelRun
    )
}

/// How a journal append ended, for the journal commit latency metric.
fn commit_outcome<T>(appended: &Result<T, StoreError>) -> &'static str {
    match appended {
        Ok(_) => "ok",
        Err(StoreError::Conflict { .. }) => "conflict",
        Err(_) => "error",
    }
}

/// A dry run's stand-in for a runtime that acts outside the store: runs it would create are
/// built in the overlay with the reference's semantics (so that later steps find them, as they
/// would in enforce), and actions on runs answer what the plan expects, saying it is a
/// prediction.
async fn simulate(
    runtime: &dyn Runtime,
    request: &ActionRequest,
    planned: &PlannedStep,
    overlay: &dyn RunStore,
) -> Result<ActionResult, StepError> {
    let sent = json!({"dryRun": true, "runtime": runtime.describe(), "wouldSend": request});
    if request.action.spec().creates_run {
        let mut built = StoreRuntime::new().perform(request, overlay).await.map_err(StepError::Runtime)?;
        built.detail = json!({
            "dryRun": true, "runtime": runtime.describe(), "wouldSend": request,
            "predicted": "the run the runtime would create, built with the reference's semantics", "built": built.detail,
        });
        return Ok(built);
    }
    let predicted = match request.action {
        Action::CancelRun => "cancelled",
        Action::DenyApproval => "failed",
        _ => "completed",
    };
    Ok(ActionResult {
        outcome: planned.expected_outcome.clone(),
        created_run_id: None,
        run_status: Some(predicted.into()),
        detail: json!({"dryRun": sent["dryRun"], "runtime": sent["runtime"], "wouldSend": sent["wouldSend"],
                       "predicted": format!("the runtime takes the action and the run ends {predicted}")}),
    })
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

/// The id a run-creating action will give its run, reserved in the journal before the action
/// (the `store` runtime saves under it; runtimes that choose their own ids are found by the
/// step's clue instead).
fn reserved_run_id(action: Action, source: &str) -> Option<String> {
    match action {
        Action::BranchFromCheckpoint => Some(uuid::Uuid::new_v4().to_string()),
        Action::PartialReplay => Some(format!("{source}:partial-replay:{}", crate::model::json::unique_epoch_millis())),
        Action::FrozenReplay => Some(format!("{source}:replay:{}", crate::model::json::unique_epoch_millis())),
        _ => None,
    }
}

fn write_atomically<T: serde::Serialize + ?Sized>(path: &std::path::Path, value: &T) -> std::io::Result<()> {
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
        file.write_all(crate::model::json_text::to_pretty_string(value).map_err(std::io::Error::other)?.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}
