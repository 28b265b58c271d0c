//! `salvage plan`: an incident turned into an explained recovery plan.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use super::console::{heading, paint, status_style};
use super::playbooks::print_diagnostics;
use super::read::inspect_error;
use super::{CliError, Context, RunNotFound};
use crate::plan::{Plan, PlanError, Planner, RecoverySet, RecoverySetError};
use crate::playbook::PlaybookSet;
use crate::policy::PolicySet;

/// The policy and playbook sets to plan with, loaded and checked; every problem is shown.
pub fn load_sets(
    cx: &mut Context<'_>,
    playbooks: Option<&Path>,
    policies: Option<&Path>,
) -> Result<(Arc<PolicySet>, Arc<PlaybookSet>), CliError> {
    // The command line wins over salvage.yaml (whose defaults are `policies/` and `playbooks/`).
    let policies_dir = policies.map_or_else(|| cx.config.policies.clone(), Path::to_path_buf);
    let playbooks_dir = playbooks.map_or_else(|| cx.config.playbooks.clone(), Path::to_path_buf);
    match RecoverySet::load(&playbooks_dir, &policies_dir) {
        Ok(set) => Ok((set.policies, set.playbooks)),
        Err(error) => {
            print_diagnostics(cx, error.diagnostics());
            let check = match &error {
                RecoverySetError::Policies { dir, .. } => format!("salvage check --policies {}", dir.display()),
                RecoverySetError::Playbooks { .. } => "salvage check".to_owned(),
            };
            Err(CliError::input_msg(format!("cannot plan: {error} (see `{check}`)")))
        }
    }
}

/// Maps a planning error to what the operator sees.
pub fn plan_error(cx: &Context<'_>, error: PlanError) -> CliError {
    match error {
        PlanError::Inspect(error) => inspect_error(cx, error),
        PlanError::Store(error) => error.into(),
        other => CliError::store(other),
    }
}

pub struct PlanRequest<'a> {
    pub run_id: &'a str,
    pub compare_to: Option<&'a str>,
    pub playbooks: Option<&'a Path>,
    pub policies: Option<&'a Path>,
    pub json: bool,
}

pub async fn plan(cx: &mut Context<'_>, request: PlanRequest<'_>) -> Result<ExitCode, CliError> {
    let (policies, playbooks) = load_sets(cx, request.playbooks, request.policies)?;
    let store = cx.existing_store().await?;
    if store.get(request.run_id).await?.is_none() {
        return Err(CliError::input(RunNotFound { run_id: request.run_id.to_owned(), store: cx.spec.to_string() }));
    }
    let planner = Planner::new(store, policies, playbooks);
    let plan = planner.plan(request.run_id, request.compare_to).await.map_err(|e| plan_error(cx, e))?;
    if request.json {
        cx.console.json(&plan)?;
    } else {
        print_plan(cx, &plan)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The plan for people: the steps, the chosen checkpoint and why, the approvals, the path.
pub fn print_plan(cx: &mut Context<'_>, plan: &Plan) -> Result<(), CliError> {
    let c = &mut *cx.console;
    c.line(format!(
        "{} for run {} {}",
        heading(&plan.plan_id),
        plan.run_id,
        paint(status_style(&plan.status), &plan.status)
    ))?;
    let classification = plan.decisions.iter().find(|d| d.hook == "classify");
    let why = classification.and_then(|d| d.reason.clone().or_else(|| d.policy_file.clone())).unwrap_or_default();
    c.line(format!(
        "  incident:  {}{}",
        plan.incident_type,
        if why.is_empty() { String::new() } else { format!(" ({why})") }
    ))?;
    match &plan.playbook {
        Some(playbook) => {
            c.line(format!("  playbook:  {} v{} ({})", playbook.name, playbook.version, playbook.file))?
        }
        None => c.line("  playbook:  none handles this incident")?,
    }
    if plan.fail_closed {
        c.line(paint(
            status_style(&crate::model::RunStatus::Failed),
            "  a policy failed while planning: every step needs approval",
        ))?;
        for decision in plan.decisions.iter().chain(plan.steps.iter().flat_map(|s| s.explanation.iter())) {
            if let Some(error) = &decision.error {
                c.line(format!("    {}: {error}", decision.hook))?;
            }
        }
    }
    if plan.steps.is_empty() {
        c.line("  no recovery steps")?;
    }
    for (index, step) in plan.steps.iter().enumerate() {
        let approval = if step.asks_approval {
            let who = step
                .approvers
                .as_ref()
                .filter(|a| !a.names.is_empty())
                .map(|a| format!(" by {}", a.names.join(", ")))
                .unwrap_or_default();
            paint(status_style(&crate::model::RunStatus::WaitingForApproval), format!("  needs approval{who}"))
        } else {
            String::new()
        };
        c.line(format!("  {:>2}. {} [{}] {}{approval}", index + 1, heading(&step.action), step.id, step.effect))?;
        c.line(format!("      {}", step.reason))?;
        if let Some(checkpoint) = step.payload.get("checkpointId") {
            let choice = step.explanation.iter().find(|e| e.candidates.is_some());
            let chosen_reason = choice
                .and_then(|e| e.candidates.as_ref())
                .and_then(|candidates| candidates.iter().find(|c| c.chosen))
                .map(|c| format!(" — {}", c.reason))
                .unwrap_or_default();
            c.line(format!("      checkpoint: {}{chosen_reason}", super::read::one_line(checkpoint)))?;
            if let Some(candidates) = choice.and_then(|e| e.candidates.as_ref()) {
                for candidate in candidates.iter().filter(|c| !c.chosen) {
                    c.line(format!(
                        "        not {} ({}): {}",
                        candidate.checkpoint_id,
                        candidate.label.as_deref().unwrap_or("-"),
                        candidate.reason
                    ))?;
                }
            }
        }
        if let Some(prediction) = &step.prediction {
            c.line(format!("      expected {}: {}", prediction.outcome, prediction.summary))?;
        }
        for decision in step.explanation.iter().filter(|d| d.hook != "guard" && d.candidates.is_none()) {
            if let Some(reason) = &decision.reason {
                let file = decision.policy_file.as_deref().map(|f| format!(" [{f}]")).unwrap_or_default();
                c.line(format!("      {}: {reason}{file}", decision.hook))?;
            }
        }
    }
    if !plan.path.is_empty() {
        c.line(format!("  path: {}", plan.path_text()))?;
    }
    let approvals: Vec<&str> = plan.approvals().map(|s| s.id.as_str()).collect();
    if !approvals.is_empty() {
        c.line(format!("  a person is asked: {} time(s) ({})", approvals.len(), approvals.join(", ")))?;
    }
    c.line(format!("  recommended action: {}", plan.recommended_action))?;
    c.line(format!(
        "  run revision {}, policy digest {}, plan hash {}",
        plan.run_revision,
        &plan.policy_digest[..12.min(plan.policy_digest.len())],
        plan.plan_hash
    ))?;
    Ok(())
}
