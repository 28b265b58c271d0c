//! A person's answer to an approval, whichever door it comes through (the CLI's `approve`/`deny`,
//! the HTTP API, the approval inbox): one path, so that who may answer, self-approval, quorum
//! and staleness mean exactly the same everywhere.
//!
//! An answer is bound to what the person was shown: the plan hash of the approval, and the
//! policy set it was requested under. After a reload or a re-plan that changed them, the answer
//! is refused as stale (HTTP 409) before anything is recorded — approving what one did not read
//! is the failure mode this guards against.

use super::engine::{AnswerOutcome, Decision, ExecuteError, ExecutionReport, PlanView, Runner};

/// What the person answering saw (the approval page's hidden fields, the API body's fields).
/// The CLI passes none: `salvage approvals` shows the approval as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenApproval {
    pub plan_hash: String,
    pub policy_digest: String,
}

/// One answer to a pending approval.
#[derive(Debug, Clone)]
pub struct ApprovalAnswerRequest<'a> {
    pub execution_id: &'a str,
    pub step_id: &'a str,
    pub decision: Decision,
    pub reason: Option<String>,
    pub seen: Option<SeenApproval>,
}

/// Checks that the approval is still what was shown and that the execution could go on with
/// the loaded sets, then records the answer (the runner decides who may answer).
pub async fn answer_approval(
    runner: &Runner,
    request: ApprovalAnswerRequest<'_>,
) -> Result<AnswerOutcome, ExecuteError> {
    let (execution, _) = runner.load(request.execution_id).await?;
    if let Some(pending) = execution.pending_approval.as_ref().filter(|p| p.step_id == request.step_id) {
        let stale = |why: String| ExecuteError::StaleApproval {
            execution_id: request.execution_id.to_owned(),
            step_id: request.step_id.to_owned(),
            why,
        };
        if let Some(seen) = &request.seen
            && seen.plan_hash != pending.plan_hash
        {
            return Err(stale(format!(
                "it was shown for plan {} but waits under plan {} now",
                short(&seen.plan_hash),
                short(&pending.plan_hash)
            )));
        }
        // The execution goes on with the loaded sets: if they are not the ones it was planned
        // with, the approval would be for decisions that would not be the ones made.
        let view = PlanView::of(&execution.plan)?;
        if let Err(changed) = runner.check_sets(&view) {
            return Err(stale(format!(
                "{changed} — it was requested under other playbooks or policies than the ones loaded now; \
                 abandon the execution and plan the run again"
            )));
        }
        if let Some(seen) = &request.seen
            && seen.policy_digest != execution.policy_digest
        {
            return Err(stale(format!(
                "it was shown under policy set {} but was requested under {}",
                short(&seen.policy_digest),
                short(&execution.policy_digest)
            )));
        }
    }
    runner.answer(request.execution_id, request.step_id, request.decision, request.reason).await
}

/// What happened when an answered execution was asked to go on here.
#[derive(Debug)]
pub enum GoOn {
    /// It ran here until it ended or waited again.
    Ran(Box<ExecutionReport>),
    /// Another process runs it; it picks the answer up.
    RunElsewhere { holder: String },
    /// Another process took it on meanwhile.
    TakenOver,
}

/// After an answer: resume the execution here, unless another process runs it.
pub async fn go_on(runner: &Runner, execution_id: &str) -> Result<GoOn, ExecuteError> {
    match runner.resume(execution_id).await {
        Ok(report) => Ok(GoOn::Ran(Box::new(report))),
        Err(ExecuteError::Busy { holder, .. }) => Ok(GoOn::RunElsewhere { holder }),
        Err(ExecuteError::LostOwnership { .. }) => Ok(GoOn::TakenOver),
        Err(error) => Err(error),
    }
}

fn short(digest: &str) -> String {
    super::engine::short_digest(digest)
}
