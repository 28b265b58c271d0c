//! Running plans: `apply`, `resume`, `executions`, `approvals`, `approve`, `deny`, `confirm`.

use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::Value;

use super::console::{Table, heading, paint, status_style};
use super::plan::{load_sets, plan_error, print_plan};
use super::traces::read_json_file;
use super::{CliError, Context, Failure, RunNotFound};
use crate::execute::config::RuntimeRegistry;
use crate::execute::identity::{IdentityError, Person, refuse_answer, resolve_cli_actor};
use crate::execute::{
    AnswerOutcome, ApplyOptions, ApprovalAnswerRequest, ConfirmOutcome, Confirmation, Decision, ExecuteError,
    Execution, ExecutionReport, ExecutionStatus, GoOn, Mode, Origin, Runner, answer_approval, compat, execution_of,
    go_on,
};
use crate::model::RunStatus;
use crate::plan::Planner;
use crate::store::{ExecutionStore, StateStore, Store};
use crate::web::views;

/// The name `salvage init` proposes as the default approver: `--as`, else `$SALVAGE_ACTOR`,
/// else `$USER` (no identity is checked: nothing is approved with it).
pub fn actor(given: Option<&str>) -> String {
    // `--as` was validated by clap; a blank variable is as good as none.
    let usable = |name: &String| crate::limits::validate_approver_name(name).is_ok();
    given
        .map(str::to_owned)
        .or_else(|| std::env::var("SALVAGE_ACTOR").ok().filter(usable))
        .or_else(|| std::env::var("USER").ok().filter(usable))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Who runs this command that acts as a person, by `approvals.identity`
/// ([`resolve_cli_actor`]): `--as`, `--token` / `$SALVAGE_TOKEN`, the OS user.
pub async fn person(
    cx: &Context<'_>,
    store: &Arc<dyn Store>,
    given: Option<&str>,
    token: Option<&str>,
) -> Result<Person, CliError> {
    let state: Arc<dyn StateStore> = store.clone();
    resolve_cli_actor(&cx.config.approvals, given, token, state).await.map_err(identity_error)
}

/// `approve`, `deny`, `confirm` and `abandon` name who acts: clap requires `--as` unless a
/// token is given, and an empty `$SALVAGE_TOKEN` satisfies clap but is no token.
fn require_someone(command: &str, actor: Option<&str>, token: Option<&str>) -> Result<(), CliError> {
    if actor.is_none() && token.is_none() {
        return Err(CliError::input_msg(format!(
            "{command} needs to know who you are: --as NAME, or your token in --token / $SALVAGE_TOKEN"
        )));
    }
    Ok(())
}

/// A refused identity is bad input (exit 2); a store that fails is a store error.
pub fn identity_error(error: IdentityError) -> CliError {
    match error {
        IdentityError::Store(error) => error.into(),
        other => CliError::input(other),
    }
}

/// The store a runner in `mode` works on: a dry run (advisory mode) writes nothing, it reads
/// the store through an in-memory overlay.
async fn store_for(cx: &Context<'_>, mode: Mode) -> Result<Arc<dyn Store>, CliError> {
    if mode == Mode::Advisory { cx.read_store().await } else { cx.write_store().await }
}

/// Maps a runner error to what the operator sees and the exit code.
pub fn execute_error(cx: &Context<'_>, error: ExecuteError) -> CliError {
    match error {
        ExecuteError::Plan(error) => plan_error(cx, error),
        ExecuteError::Store(error) => error.into(),
        error @ ExecuteError::Inconsistent { .. } => CliError::store(error),
        // A lost race (another process runs it, another person answered first) is exit 2.
        other => CliError::input(other),
    }
}

/// The runner for this store, with the policy and playbook sets and salvage.yaml's runtimes.
async fn runner(
    cx: &mut Context<'_>,
    playbooks: Option<&Path>,
    policies: Option<&Path>,
    mode: Mode,
    store: Arc<dyn Store>,
    actor: String,
) -> Result<(Runner, Arc<dyn Store>), CliError> {
    let playbooks = playbooks.map(Path::to_path_buf).unwrap_or_else(|| cx.config.playbooks.clone());
    let policies = policies.map(Path::to_path_buf).unwrap_or_else(|| cx.config.policies.clone());
    let (policies, playbooks) = load_sets(cx, Some(&playbooks), Some(&policies))?;
    let registry = RuntimeRegistry::from_config(&cx.config.runtimes).map_err(CliError::input)?;
    let settings = cx.config.runner_settings();
    let runner = Runner::new(store.clone(), policies, playbooks, Arc::new(registry), settings, mode, actor)
        .with_origin(Origin::Cli);
    Ok((runner, store))
}

pub struct ApplyRequest<'a> {
    pub run_id: Option<&'a str>,
    pub plan_file: Option<&'a Path>,
    pub compare_to: Option<&'a str>,
    pub playbooks: Option<&'a Path>,
    pub policies: Option<&'a Path>,
    pub dry_run: bool,
    pub yes: bool,
    pub again: bool,
    pub json: bool,
    pub actor: Option<&'a str>,
    pub token: Option<&'a str>,
}

pub async fn apply(cx: &mut Context<'_>, request: ApplyRequest<'_>) -> Result<ExitCode, CliError> {
    let mode = if request.dry_run || cx.config.mode == crate::execute::config::Mode::Advisory {
        Mode::Advisory
    } else {
        Mode::Enforce
    };
    let store = store_for(cx, mode).await?;
    let actor = person(cx, &store, request.actor, request.token).await?.name;
    let (runner, store) = runner(cx, request.playbooks, request.policies, mode, store, actor).await?;
    let plan = match (request.plan_file, request.run_id) {
        (Some(file), _) => read_json_file(file)?,
        (None, Some(run_id)) => {
            if store.get(run_id).await?.is_none() {
                return Err(CliError::input(RunNotFound { run_id: run_id.to_owned(), store: cx.spec.to_string() }));
            }
            let (policies, playbooks) = load_sets(
                cx,
                request.playbooks.or(Some(&cx.config.playbooks.clone())),
                request.policies.or(Some(&cx.config.policies.clone())),
            )?;
            let planner = Planner::new(store.clone(), policies, playbooks);
            let plan = planner.plan(run_id, request.compare_to).await.map_err(|e| plan_error(cx, e))?;
            if !request.json {
                print_plan(cx, &plan)?;
            }
            plan.to_value()
        }
        (None, None) => return Err(CliError::input_msg("apply needs a RUN_ID or --plan PLAN_FILE")),
    };
    if mode == Mode::Enforce && !request.yes {
        confirm(cx, &plan)?;
    }
    let report =
        runner.apply_with(&plan, ApplyOptions { again: request.again }).await.map_err(|e| execute_error(cx, e))?;
    finish(cx, &report, store.as_ref(), request.json).await
}

/// Asks on the terminal before anything is executed.
fn confirm(cx: &mut Context<'_>, plan: &Value) -> Result<(), CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::input_msg(
            "refusing to apply without confirmation: stdin is not a terminal (pass --yes, or --dry-run to see what would happen)",
        ));
    }
    let approvals = plan["steps"]
        .as_array()
        .map_or(0, |steps| steps.iter().filter(|s| s["asksApproval"] == true || s["requiresApproval"] == true).count());
    cx.console.stderr_text(format!(
        "apply plan {} to run {} ({} steps, {approvals} need a person's approval)? [y/N] ",
        plan["planId"].as_str().unwrap_or("?"),
        plan["runId"].as_str().unwrap_or("?"),
        plan["steps"].as_array().map_or(0, Vec::len)
    ));
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).map_err(CliError::output)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(CliError::input_msg("not applied"))
    }
}

/// Prints what happened and picks the exit code: 0 when the execution ended or waits for a
/// person, 1 when it escalated or needs an operator.
async fn finish(
    cx: &mut Context<'_>,
    report: &ExecutionReport,
    store: &dyn Store,
    json: bool,
) -> Result<ExitCode, CliError> {
    let execution = &report.execution;
    if json {
        cx.console.json(&compat::reference_view(report, store).await)?;
    } else {
        print_report(cx, report)?;
    }
    for note in &report.notes {
        cx.console.note(note);
    }
    Ok(match execution.status {
        ExecutionStatus::Escalated | ExecutionStatus::NeedsOperator => Failure::CheckFailed.into(),
        _ => ExitCode::SUCCESS,
    })
}

/// One notification of a step: what was sent (or, in a dry run, would be) and how it ended.
fn delivery_line(delivery: &Value) -> String {
    let channel = delivery["channel"].as_str().unwrap_or("?");
    let kind = delivery["type"].as_str().unwrap_or("?");
    if let Some(would) = delivery.get("wouldSend") {
        return format!(
            "would notify {channel} ({kind}): POST {} {}",
            would["url"].as_str().unwrap_or("?"),
            would["body"]
        );
    }
    let mut line = format!("notified {channel} ({kind}): {}", delivery["outcome"].as_str().unwrap_or("?"));
    if let Some(status) = delivery["status"].as_u64() {
        line.push_str(&format!(", HTTP {status}"));
    }
    if let Some(attempts) = delivery["attempts"].as_u64().filter(|n| *n > 1) {
        line.push_str(&format!(" after {attempts} attempts"));
    }
    if let Some(note) = delivery["note"].as_str() {
        line.push_str(&format!(" ({note})"));
    }
    if delivery["redelivery"] == true {
        line.push_str(" (sent again after an interrupted send: the receiver may get it twice)");
    }
    if let Some(error) = delivery["error"].as_str() {
        line.push_str(&format!(" — {error}"));
    }
    line
}

fn print_report(cx: &mut Context<'_>, report: &ExecutionReport) -> Result<(), CliError> {
    let execution = &report.execution;
    let dry = execution.mode == Mode::Advisory;
    let c = &mut *cx.console;
    c.line(heading(format!(
        "{} {} of plan {} for run {}",
        if dry { "dry run" } else { "execution" },
        execution.execution_id,
        execution.plan_id,
        execution.run_id
    )))?;
    for step in &report.steps {
        let mark = match step.outcome.as_str() {
            "skipped" => "  ·",
            "waiting_for_approval" => "  ⏸",
            "failed" | "needs_operator" | "escalated" | "exhausted" => "  ✗",
            _ => "  ✓",
        };
        let created = step
            .created_run_id
            .as_ref()
            .map(|id| format!(" → {}run {id}", if dry { "would create " } else { "" }))
            .unwrap_or_default();
        let summary = step.detail.get("summary").and_then(Value::as_str).map(|s| format!(" — {s}")).unwrap_or_default();
        c.line(format!("{mark} {} [{}] {}{created}{summary}", step.step_id, step.action, step.outcome))?;
        if dry {
            if let Some(request) = step.detail.get("wouldSend") {
                c.line(format!("      would send to {}: {}", step.detail["runtime"].as_str().unwrap_or("?"), request))?;
            }
            if let Some(write) = step.detail.get("wouldWrite") {
                c.line(format!("      would write {}", write["file"].as_str().unwrap_or("?")))?;
            }
        }
        let deliveries = step.detail.get("deliveries").or_else(|| step.detail.get("notifications"));
        for delivery in deliveries.and_then(Value::as_array).into_iter().flatten() {
            c.line(format!("      {}", delivery_line(delivery)))?;
        }
        if step.outcome == "waiting_for_approval" {
            let approvers = step.detail["approvers"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            c.line(format!(
                "      {} approval by {approvers}: {}",
                if dry { "would wait for" } else { "waiting for" },
                step.detail["reason"].as_str().unwrap_or("")
            ))?;
        }
    }
    if dry && !report.dry_run_runs.is_empty() {
        c.line(heading("runs the execution would create or change (nothing was written):"))?;
        for run in &report.dry_run_runs {
            let lineage = &run["metadata"]["lineage"];
            c.line(format!(
                "  {} {} (pause: {}) root {} origin {} checkpoint {}",
                run["id"].as_str().unwrap_or("?"),
                run["status"].as_str().unwrap_or("?"),
                run["pendingPause"]["stage"].as_str().unwrap_or("none"),
                lineage["rootRunId"].as_str().unwrap_or("-"),
                lineage["branchOriginRunId"].as_str().unwrap_or("-"),
                lineage["branchCheckpointId"].as_str().unwrap_or("-")
            ))?;
        }
    }
    let status = match execution.status {
        ExecutionStatus::Resolved | ExecutionStatus::Abandoned => {
            paint(status_style(&RunStatus::Completed), execution.status)
        }
        ExecutionStatus::WaitingForApproval | ExecutionStatus::Waiting | ExecutionStatus::HandedOff => {
            paint(status_style(&RunStatus::WaitingForApproval), execution.status)
        }
        _ => paint(status_style(&RunStatus::Failed), execution.status),
    };
    c.line(format!("status: {status}"))?;
    if let Some(follow_up) = &execution.follow_up {
        c.line(format!(
            "handed off: the runtime took the work; run {} is {} and salvage follows it up (`salvage resume {}` looks \
             now)",
            follow_up.run_id,
            if follow_up.last_status.is_empty() { "not yet finished" } else { follow_up.last_status.as_str() },
            execution.execution_id
        ))?;
    }
    if let (ExecutionStatus::Waiting, Some(wake_at)) = (execution.status, &execution.wake_at) {
        c.line(format!("waiting on a timer until {wake_at} (the daemon, or `salvage resume`, continues it)"))?;
    }
    if let Some(pending) =
        execution.pending_approval.as_ref().filter(|_| execution.status == ExecutionStatus::WaitingForApproval)
    {
        c.line(format!(
            "next: a person approves step {} — `salvage approve {} {} --as NAME` (approvers: {}), or `salvage deny ...`",
            pending.step_id,
            execution.execution_id,
            pending.step_id,
            if pending.approvers.is_empty() { "see salvage.yaml".to_owned() } else { pending.approvers.join(", ") }
        ))?;
    }
    if let Some(question) = &execution.operator_question {
        c.line(format!("needs an operator: {}", question.question))?;
    }
    Ok(())
}

pub async fn resume(
    cx: &mut Context<'_>,
    execution_id: &str,
    actor_name: Option<&str>,
    token: Option<&str>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let store = store_for(cx, Mode::Enforce).await?;
    let actor = person(cx, &store, actor_name, token).await?.name;
    let (runner, store) = runner(cx, None, None, Mode::Enforce, store, actor).await?;
    let report = runner.resume(execution_id).await.map_err(|e| execute_error(cx, e))?;
    finish(cx, &report, store.as_ref(), json).await
}

async fn load_all(store: &dyn ExecutionStore, status: Option<&str>) -> Result<Vec<Execution>, CliError> {
    let stored = store.list_executions(status).await?;
    stored.iter().map(|s| execution_of(&s.doc)).collect::<Result<Vec<_>, _>>().map_err(CliError::store)
}

pub async fn executions(cx: &mut Context<'_>, status: Option<&str>, json: bool) -> Result<ExitCode, CliError> {
    if let Some(status) = status
        && ExecutionStatus::parse(status).is_none()
    {
        let known: Vec<&str> = ExecutionStatus::ALL.iter().map(|s| s.as_str()).collect();
        return Err(CliError::input_msg(format!("unknown execution status {status:?}; one of {}", known.join(", "))));
    }
    let store = cx.read_store().await?;
    let all = load_all(store.as_ref(), status).await?;
    if json {
        let rows: Vec<Value> = all.iter().map(views::execution_summary).collect();
        cx.console.json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        // An advisory daemon's plans are dry runs, not executions: say where they are.
        let decided = !store.list_state(crate::serve::incidents::INCIDENT_PREFIX).await?.is_empty();
        let hint = if decided { " (what the daemon decided for each incident: `salvage incidents`)" } else { "" };
        cx.console.note(format!("no executions in {}{hint}", store.spec()));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(["EXECUTION", "STATUS", "RUN", "PLAYBOOK", "AT", "STARTED BY", "UPDATED"]);
    for execution in &all {
        table.styled_row(vec![
            (execution.execution_id.clone(), Default::default()),
            (execution.status.to_string(), execution_style(execution.status)),
            (execution.run_id.clone(), Default::default()),
            (execution.playbook.as_ref().map_or("-".to_owned(), |p| p.name.clone()), Default::default()),
            (execution.node.clone().unwrap_or_else(|| "-".into()), Default::default()),
            (execution.started_by.clone(), Default::default()),
            (execution.updated_at.clone(), Default::default()),
        ]);
    }
    for line in table.render() {
        cx.console.line(line)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn execution_style(status: ExecutionStatus) -> anstyle::Style {
    status_style(&match status {
        ExecutionStatus::Resolved => RunStatus::Completed,
        ExecutionStatus::Running => RunStatus::Running,
        ExecutionStatus::WaitingForApproval
        | ExecutionStatus::Waiting
        | ExecutionStatus::HandedOff
        | ExecutionStatus::Abandoned => RunStatus::WaitingForApproval,
        ExecutionStatus::NeedsOperator | ExecutionStatus::Escalated => RunStatus::Failed,
    })
}

/// Age of an ISO timestamp, for people (`3m`, `2h5m`).
fn age(since: &str) -> String {
    let Some(then) = crate::model::json::parse_iso(since) else { return "-".into() };
    let seconds = (time::OffsetDateTime::now_utc() - then).whole_seconds().max(0);
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn remaining(until: Option<&str>) -> String {
    let Some(until) = until.and_then(crate::model::json::parse_iso) else { return "never".into() };
    let seconds = (until - time::OffsetDateTime::now_utc()).whole_seconds();
    if seconds <= 0 {
        "expired".into()
    } else {
        format!(
            "in {}",
            age(&crate::model::json::iso_millis(time::OffsetDateTime::now_utc() - time::Duration::seconds(seconds)))
        )
    }
}

pub async fn approvals(cx: &mut Context<'_>, json: bool) -> Result<ExitCode, CliError> {
    let store = cx.read_store().await?;
    let pending = views::pending_approvals(store.as_ref()).await?;
    if json {
        let rows: Vec<Value> =
            pending.iter().map(|(execution, pending)| views::approval_row(execution, pending)).collect();
        cx.console.json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if pending.is_empty() {
        cx.console.note("no pending approvals");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(["EXECUTION", "STEP", "ACTION", "AGE", "EXPIRES", "APPROVERS", "REASON"]);
    for (execution, pending) in pending {
        table.styled_row(vec![
            (execution.execution_id.clone(), Default::default()),
            (pending.step_id.clone(), Default::default()),
            (pending.action.clone(), Default::default()),
            (age(&pending.requested_at), Default::default()),
            (remaining(pending.expires_at.as_deref()), Default::default()),
            (
                match (pending.approvers.is_empty(), pending.quorum > 1) {
                    (true, _) => "(salvage.yaml)".into(),
                    (false, false) => pending.approvers.join(", "),
                    (false, true) => format!(
                        "{} ({})",
                        pending.approvers.join(", "),
                        quorum_progress(
                            pending.approved_by.len() as u32,
                            pending.quorum,
                            &views::still_eligible(&execution, &pending)
                        )
                    ),
                },
                Default::default(),
            ),
            (pending.reason.clone(), Default::default()),
        ]);
    }
    for line in table.render() {
        cx.console.line(line)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// "approved (1 of 2); waiting for one more of bob, carol".
fn quorum_progress(approvals: u32, quorum: u32, waiting_for: &[String]) -> String {
    let more = match quorum.saturating_sub(approvals) {
        1 => "one more".to_owned(),
        n => format!("{n} more"),
    };
    let of = if waiting_for.is_empty() { String::new() } else { format!(" of {}", waiting_for.join(", ")) };
    format!("approved ({approvals} of {quorum}); waiting for {more}{of}")
}

pub struct AnswerRequest<'a> {
    pub execution_id: &'a str,
    pub step_id: &'a str,
    pub decision: Decision,
    pub actor: Option<&'a str>,
    pub token: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub json: bool,
}

/// `approve` / `deny`: records the answer, then lets the execution go on (unless another
/// process is running it).
pub async fn answer(cx: &mut Context<'_>, request: AnswerRequest<'_>) -> Result<ExitCode, CliError> {
    require_someone(
        if request.decision == Decision::Approve { "approve" } else { "deny" },
        request.actor,
        request.token,
    )?;
    let store = store_for(cx, Mode::Enforce).await?;
    let state: Arc<dyn StateStore> = store.clone();
    let actor = match resolve_cli_actor(&cx.config.approvals, request.actor, request.token, state).await {
        Ok(person) => person.name,
        Err(IdentityError::Store(error)) => return Err(error.into()),
        Err(refusal) => {
            // Kept for the audit log like the runner's refusals: who claimed to answer, and why
            // that was not believed.
            let claimed = request.actor.unwrap_or("(unknown)");
            let recorded = refuse_answer(
                store.as_ref(),
                request.execution_id,
                request.step_id,
                request.decision,
                claimed,
                &refusal.to_string(),
                Origin::Cli,
            )
            .await;
            if let Err(error) = recorded {
                tracing::warn!(execution_id = request.execution_id, %error, "Cannot record the refused answer in the journal.");
            }
            return Err(CliError::input(refusal));
        }
    };
    let (runner, store) = runner(cx, None, None, Mode::Enforce, store, actor.clone()).await?;
    let outcome = answer_approval(
        &runner,
        ApprovalAnswerRequest {
            execution_id: request.execution_id,
            step_id: request.step_id,
            decision: request.decision,
            reason: request.reason.map(str::to_owned),
            seen: None,
        },
    )
    .await
    .map_err(|e| execute_error(cx, e))?;
    match &outcome {
        AnswerOutcome::Recorded => cx.console.note(format!(
            "{} step {} of {} as {}",
            if request.decision == Decision::Approve { "approved" } else { "denied" },
            request.step_id,
            request.execution_id,
            actor
        )),
        AnswerOutcome::Counted { approvals, quorum } => {
            // The record names who approved so far; unreadable, the count alone is still true.
            let waiting_for = match runner.load(request.execution_id).await {
                Ok((execution, _)) => execution
                    .pending_approval
                    .as_ref()
                    .map(|p| views::still_eligible(&execution, p))
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            cx.console.note(quorum_progress(*approvals, *quorum, &waiting_for));
        }
        AnswerOutcome::AlreadyAnswered { by, at } => {
            cx.console.note(format!("already answered the same way by {by} at {at}; nothing changed"));
        }
        AnswerOutcome::Expired { at } => {
            cx.console.warn(format!("the approval expired at {at}: the step was denied by timeout"))
        }
    }
    go_on_here(cx, &runner, store.as_ref(), request.execution_id, request.json).await
}

/// After an answer was recorded: resume the execution here, unless another process runs it —
/// then it picks the answer up, and this command's work is done (exit 0).
async fn go_on_here(
    cx: &mut Context<'_>,
    runner: &Runner,
    store: &dyn Store,
    execution_id: &str,
    json: bool,
) -> Result<ExitCode, CliError> {
    match go_on(runner, execution_id).await.map_err(|e| execute_error(cx, e))? {
        GoOn::Ran(report) => finish(cx, &report, store, json).await,
        GoOn::RunElsewhere { holder } => {
            cx.console.note(format!("the execution is being run by {holder}; it picks up the answer"));
            Ok(ExitCode::SUCCESS)
        }
        GoOn::TakenOver => {
            cx.console.note("another process took the execution on meanwhile; it goes on with the answer");
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub struct ConfirmRequest<'a> {
    pub execution_id: &'a str,
    pub step_id: &'a str,
    pub outcome: Option<&'a str>,
    pub created: Option<&'a str>,
    pub retry: bool,
    pub actor: Option<&'a str>,
    pub token: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub json: bool,
}

/// `confirm`: says what happened to an interrupted step, then resumes the execution.
pub async fn confirm_step(cx: &mut Context<'_>, request: ConfirmRequest<'_>) -> Result<ExitCode, CliError> {
    let confirmation = match (request.outcome, request.retry) {
        (Some(outcome), false) => {
            Confirmation::Outcome { outcome: outcome.to_owned(), created: request.created.map(str::to_owned) }
        }
        (None, true) => Confirmation::Retry,
        _ => return Err(CliError::input_msg("give either --outcome OUTCOME or --retry")),
    };
    require_someone("confirm", request.actor, request.token)?;
    let store = store_for(cx, Mode::Enforce).await?;
    let actor = person(cx, &store, request.actor, request.token).await?.name;
    let (runner, store) = runner(cx, None, None, Mode::Enforce, store, actor).await?;
    let recorded = runner
        .confirm(request.execution_id, request.step_id, confirmation, request.reason.map(str::to_owned))
        .await
        .map_err(|e| execute_error(cx, e))?;
    if let ConfirmOutcome::AlreadyConfirmed { by, at } = recorded {
        cx.console.note(format!("already confirmed the same way by {by} at {at}; nothing changed"));
    }
    go_on_here(cx, &runner, store.as_ref(), request.execution_id, request.json).await
}

/// `abandon`: closes an execution as it stands.
pub struct AbandonRequest<'a> {
    pub execution_id: &'a str,
    pub actor: Option<&'a str>,
    pub token: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub json: bool,
}

pub async fn abandon(cx: &mut Context<'_>, request: AbandonRequest<'_>) -> Result<ExitCode, CliError> {
    let AbandonRequest { execution_id, reason, json, .. } = request;
    require_someone("abandon", request.actor, request.token)?;
    // Closing needs no playbook or policy: it must work when they no longer load.
    let store = cx.write_store().await?;
    let actor = person(cx, &store, request.actor, request.token).await?.name;
    let runner = Runner::new(
        store,
        Arc::new(crate::policy::PolicySet::empty()),
        Arc::new(crate::playbook::PlaybookSet::empty()),
        Arc::new(RuntimeRegistry::default()),
        cx.config.runner_settings(),
        Mode::Enforce,
        actor.clone(),
    )
    .with_origin(Origin::Cli);
    let execution = runner.abandon(execution_id, reason.map(str::to_owned)).await.map_err(|e| execute_error(cx, e))?;
    if json {
        cx.console.json(&views::execution_summary(&execution))?;
    } else {
        cx.console.note(format!(
            "execution {execution_id} abandoned by {actor}; run {} can be recovered again with `salvage apply {} --again`",
            execution.run_id, execution.run_id
        ));
    }
    Ok(ExitCode::SUCCESS)
}
