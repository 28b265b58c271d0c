//! `salvage simulate`: a proposed policy or playbook set replayed over past incidents.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use indicatif::ProgressBar;
use serde_json::Value;

use super::console::{heading, paint, status_style};
use super::playbooks::print_diagnostics;
use super::{CliError, Console, Context};
use crate::execute::short_digest;
use crate::model::RunStatus;
use crate::plan::RecoverySet;
use crate::policy::Explanation;
use crate::simulate::{DecisionChange, DecisionKind, IncidentChanges, SimulateOptions, Simulation, simulate};

pub struct SimulateRequest<'a> {
    pub policies: Option<&'a Path>,
    pub playbooks: Option<&'a Path>,
    pub against: Option<&'a Path>,
    pub options: SimulateOptions,
    pub accept: bool,
    pub json: bool,
}

pub use crate::limits::parse_duration;

/// The current set's directories: `--against DIR`'s `policies/` and `playbooks/`, each
/// defaulting to salvage.yaml's.
fn current_dirs(cx: &Context<'_>, against: Option<&Path>) -> Result<(PathBuf, PathBuf), CliError> {
    let configured = (cx.config.policies.clone(), cx.config.playbooks.clone());
    let Some(dir) = against else { return Ok(configured) };
    let (policies, playbooks) = (dir.join("policies"), dir.join("playbooks"));
    if !policies.is_dir() && !playbooks.is_dir() {
        return Err(CliError::input_msg(format!(
            "--against {}: the directory holds neither policies/ nor playbooks/",
            dir.display()
        )));
    }
    Ok((
        if policies.is_dir() { policies } else { configured.0 },
        if playbooks.is_dir() { playbooks } else { configured.1 },
    ))
}

/// Loads one set, showing every diagnostic (file:line:column) when it does not load.
fn load(cx: &mut Context<'_>, which: &str, policies: &Path, playbooks: &Path) -> Result<RecoverySet, CliError> {
    RecoverySet::load(playbooks, policies).map_err(|error| {
        print_diagnostics(cx, error.diagnostics());
        CliError::input_msg(format!("the {which} set does not load: {error} (see `salvage check`)"))
    })
}

pub async fn run(cx: &mut Context<'_>, request: SimulateRequest<'_>) -> Result<ExitCode, CliError> {
    let (current_policies, current_playbooks) = current_dirs(cx, request.against)?;
    let proposed_policies = request.policies.map_or_else(|| cx.config.policies.clone(), Path::to_path_buf);
    let proposed_playbooks = request.playbooks.map_or_else(|| cx.config.playbooks.clone(), Path::to_path_buf);
    let current = load(cx, "current", &current_policies, &current_playbooks)?;
    let proposed = load(cx, "proposed", &proposed_policies, &proposed_playbooks)?;
    let store = cx.read_store().await?;

    let simulation = {
        let console: &Console = cx.console;
        let bar: OnceLock<ProgressBar> = OnceLock::new();
        let progress = |done: usize, total: usize| {
            let bar = bar.get_or_init(|| console.progress(total as u64, "simulate"));
            bar.set_position(done as u64);
        };
        let result = simulate(store, &current, &proposed, &request.options, &progress).await;
        if let Some(bar) = bar.get() {
            bar.finish_and_clear();
        }
        result.map_err(|error| match error {
            crate::simulate::SimulateError::Store(error) => CliError::from(error),
            other => CliError::store(other),
        })?
    };
    for problem in &simulation.problems {
        cx.console.warn(problem);
    }
    if request.json {
        cx.console.json(&simulation)?;
    } else {
        print_simulation(cx.console, &simulation)?;
    }
    let dangerous = simulation.counts.dangerous_changes;
    if dangerous > 0 && !request.accept {
        return Err(CliError::check_failed(format!(
            "{dangerous} dangerous change(s) in {} incident(s); review them, or pass --accept to ship anyway",
            simulation.counts.dangerous
        )));
    }
    Ok(ExitCode::SUCCESS)
}

/// Run ids shown for a group of incidents; the others are counted.
const EXAMPLE_RUNS: usize = 3;

/// The lines of one incident's changes, as printed under its header. Run ids are left out
/// (checkpoint ids and reasons repeat them), so incidents that changed the same way have the
/// same lines.
fn change_lines(incident: &IncidentChanges) -> Vec<String> {
    let danger_style = status_style(&RunStatus::Failed).bold();
    let mut lines = Vec::new();
    for change in &incident.changes {
        let step = change.step.as_deref().map(|s| format!(" [{s}]")).unwrap_or_default();
        let danger = change
            .danger
            .map(|danger| format!("  {}", paint(danger_style, format!("DANGEROUS: {}", danger.describe()))))
            .unwrap_or_default();
        lines.push(format!(
            "  {}{step}: {} → {}{danger}",
            change.decision.as_str(),
            shown(&change.run_id, change.decision, &change.before),
            shown(&change.run_id, change.decision, &change.after)
        ));
        for (side, explanations) in [("before", &change.before_explanation), ("after", &change.after_explanation)] {
            for reason in reasons(change, explanations) {
                lines.push(format!("    {side:<6} {reason}"));
            }
        }
    }
    lines
}

/// Incidents that changed the same way (same status, kind and change lines), in the order of
/// their first incident (most recent first).
fn grouped(simulation: &Simulation) -> Vec<(Vec<String>, Vec<&IncidentChanges>)> {
    let mut groups: Vec<(Vec<String>, Vec<&IncidentChanges>)> = Vec::new();
    let mut index: HashMap<(String, String, Vec<String>), usize> = HashMap::new();
    for incident in &simulation.incidents {
        let lines = change_lines(incident);
        let kind = incident.incident_type.as_ref().map(ToString::to_string).unwrap_or_else(|| "-".to_owned());
        let key = (incident.status.to_string(), kind, lines);
        match index.get(&key) {
            Some(&group) => groups[group].1.push(incident),
            None => {
                index.insert(key.clone(), groups.len());
                groups.push((key.2, vec![incident]));
            }
        }
    }
    groups
}

fn print_simulation(c: &mut Console, simulation: &Simulation) -> Result<(), CliError> {
    let danger_style = status_style(&RunStatus::Failed).bold();
    for (lines, incidents) in grouped(simulation) {
        let first = incidents[0];
        let kind = first.incident_type.as_ref().map(ToString::to_string).unwrap_or_else(|| "-".to_owned());
        let status = paint(status_style(&first.status), &first.status);
        if incidents.len() == 1 {
            c.line(format!(
                "{} {status} {kind}{}",
                heading(format!("run {}", first.run_id)),
                first.created_at.as_deref().map(|at| format!(" (created {at})")).unwrap_or_default()
            ))?;
        } else {
            let examples: Vec<&str> = incidents.iter().take(EXAMPLE_RUNS).map(|i| i.run_id.as_str()).collect();
            let more = incidents.len().saturating_sub(EXAMPLE_RUNS);
            c.line(format!(
                "{} {status} {kind}, the same change: runs {}{}",
                heading(format!("{} incidents", incidents.len())),
                examples.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() }
            ))?;
        }
        for line in lines {
            c.line(line)?;
        }
        c.line("")?;
    }
    let counts = simulation.counts;
    let mut summary = format!(
        "simulated {} incident(s): {} unchanged, {} changed, {} dangerous",
        counts.simulated, counts.unchanged, counts.changed, counts.dangerous
    );
    if counts.unplannable > 0 {
        summary.push_str(&format!(" ({} could not be planned with either set)", counts.unplannable));
    }
    c.line(if counts.dangerous > 0 { paint(danger_style, summary) } else { summary })?;
    c.line(format!(
        "  current:  {} + {} (policy digest {})",
        simulation.current.policies,
        simulation.current.playbooks,
        short_digest(&simulation.current.policy_digest)
    ))?;
    c.line(format!(
        "  proposed: {} + {} (policy digest {})",
        simulation.proposed.policies,
        simulation.proposed.playbooks,
        short_digest(&simulation.proposed.policy_digest)
    ))?;
    Ok(())
}

/// A decision's value for people. Checkpoint ids lose the `<run id>:` they start with (the
/// reference names them `<runId>:checkpoint:<n>`; the run is in the block's header).
fn shown(run_id: &str, kind: DecisionKind, value: &Value) -> String {
    let text = |value: &Value| value.as_str().map_or_else(|| value.to_string(), str::to_owned);
    let checkpoint = |value: &Value| {
        let id = text(value);
        id.strip_prefix(run_id).and_then(|rest| rest.strip_prefix(':')).map_or_else(|| id.clone(), str::to_owned)
    };
    match (kind, value) {
        (DecisionKind::PlanningError, value) => text(value),
        (_, Value::Null) => "none".to_owned(),
        (DecisionKind::Checkpoint, value) => checkpoint(value),
        (DecisionKind::Playbook, value) => format!("{} v{}", text(&value["name"]), value["version"]),
        (DecisionKind::Approval, Value::Bool(true)) => "required".to_owned(),
        (DecisionKind::Approval, Value::Bool(false)) => "not required".to_owned(),
        (DecisionKind::FailClosed, Value::Bool(failed)) => if *failed { "yes" } else { "no" }.to_owned(),
        (DecisionKind::Approvers, value) => {
            let names: Vec<String> =
                value["names"].as_array().map(|names| names.iter().map(text).collect()).unwrap_or_default();
            let names = if names.is_empty() { "nobody named".to_owned() } else { names.join(", ") };
            if value["allowSelfApproval"] == Value::Bool(true) {
                format!("{names} (self-approval allowed)")
            } else {
                names
            }
        }
        (DecisionKind::StepAdded | DecisionKind::StepRemoved | DecisionKind::StepChanged, value) => format!(
            "{} ({}, {}{}{})",
            text(&value["action"]),
            text(&value["catalogAction"]),
            text(&value["effect"]),
            if value["requiresApproval"] == Value::Bool(true) { ", needs approval" } else { "" },
            value
                .get("checkpointId")
                .map(|cp| format!(", from checkpoint {}", shown(run_id, DecisionKind::Checkpoint, cp)))
                .unwrap_or_default()
        ),
        (DecisionKind::Reachable, value) => format!("{} (irreversible)", text(value)),
        (_, value) => text(value),
    }
}

/// The reasons of a side's explanation records, one line each: `hook: reason [file]`.
fn reasons(change: &DecisionChange, explanations: &[Explanation]) -> Vec<String> {
    explanations
        .iter()
        .filter(|e| e.reason.is_some() || e.error.is_some())
        .map(|e| {
            let mut line = format!("{}: {}", e.hook, e.reason.as_deref().unwrap_or_default());
            if change.decision == DecisionKind::Checkpoint
                && let Some(chosen) = e.candidates.iter().flatten().find(|c| c.chosen && c.reason != "chosen")
            {
                line.push_str(&format!(" ({})", chosen.reason));
            }
            if let Some(error) = &e.error {
                line.push_str(&format!(" — error: {error}"));
            }
            if let Some(file) = &e.policy_file {
                line.push_str(&format!(" [{file}]"));
            }
            // Step and checkpoint ids repeat the run id the block is about.
            line.replace(&format!("{}:", change.run_id), "")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn durations_take_a_number_and_a_unit() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
        for bad in ["", "h", "10", "10y", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
