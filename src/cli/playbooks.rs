//! `check`, `graph`, `schema` and `explain`: authoring playbooks and policies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use miette::{GraphicalReportHandler, GraphicalTheme};

use super::{CliError, Context, Failure};
use crate::playbook::{self, CompiledPlaybook, Diagnostic};

/// The default directories, relative to where salvage runs.
pub const DEFAULT_PLAYBOOKS: &str = "playbooks";
pub const DEFAULT_POLICIES: &str = "policies";

/// Which policy directory to check hooks against: an explicit one must exist; the configured
/// one (salvage.yaml, default `policies/`) is skipped with a note when it is absent.
fn policies_dir(cx: &mut Context<'_>, given: Option<&Path>) -> Option<PathBuf> {
    match given {
        Some(dir) => Some(dir.to_path_buf()),
        None if cx.config.policies.is_dir() => Some(cx.config.policies.clone()),
        None => {
            cx.console
                .note("no policies/ directory here: policy hook references are not checked (pass --policies DIR)");
            None
        }
    }
}

fn colour(cx: &Context<'_>) -> bool {
    cx.console.stderr_is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Renders diagnostics like rustc on stderr.
pub fn print_diagnostics(cx: &mut Context<'_>, diagnostics: &[Diagnostic]) {
    let theme = if colour(cx) { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
    let handler = GraphicalReportHandler::new_themed(theme).with_links(false);
    for diagnostic in diagnostics {
        cx.console.stderr_text(crate::diagnostics::render(&handler, diagnostic));
    }
}

pub fn check(
    cx: &mut Context<'_>,
    playbooks: Option<&Path>,
    policies: Option<&Path>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let configured = cx.config.playbooks.clone();
    let playbooks = playbooks.unwrap_or(&configured);
    let policies = policies_dir(cx, policies);
    let mut report = playbook::check(playbooks, policies.as_deref());
    // Under the active salvage.yaml: someone may approve every approval, every channel named
    // is configured, and the configured runtimes carry out the actions the playbooks ask of them.
    report.diagnostics.extend(playbook::check_approvers(
        &report.playbooks,
        report.policies.as_ref(),
        &cx.config.approvals.default_approvers,
    ));
    let notifications = &cx.config.notifications;
    report.diagnostics.extend(playbook::check_channels(&report.playbooks, |reference| {
        notifications.channel(reference).map(|_| ()).map_err(|unknown| (unknown.message, unknown.help))
    }));
    let mut runtime_errors = 0;
    match crate::execute::config::RuntimeRegistry::from_config(&cx.config.runtimes) {
        Ok(registry) => {
            let routes: Vec<_> = registry
                .routes()
                .into_iter()
                .map(|(route, name, runtime)| (route, name, move |action| runtime.carries_out(action)))
                .collect();
            report.diagnostics.extend(playbook::check_runtime_actions(&report.playbooks, &routes));
        }
        Err(error) => {
            runtime_errors += 1;
            cx.console.error(format!("salvage.yaml runtimes: {error}"));
        }
    }
    let checked = report.playbooks.len() + failed_files(&report.diagnostics);
    if json {
        cx.console.json(&report.diagnostics)?;
    } else {
        print_diagnostics(cx, &report.diagnostics);
        let policy_files = report.policies.as_ref().map_or(0, |set| set.files().len());
        cx.console.note(format!(
            "checked {checked} playbook(s) in {} and {policy_files} policy file(s): {} error(s), {} warning(s)",
            playbooks.display(),
            report.error_count() + runtime_errors,
            report.warning_count()
        ));
    }
    if checked == 0 && !report.has_errors() {
        // A wrong --playbooks (or an empty checkout) must not pass as "0 errors".
        return Err(CliError::check_failed(format!(
            "nothing was checked: {} holds no playbook files ({}); point --playbooks (or salvage.yaml's \
             `playbooks`) at the directory of your playbooks",
            playbooks.display(),
            playbook::PLAYBOOK_EXTENSIONS.iter().map(|e| format!("*.{e}")).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(if report.has_errors() || runtime_errors > 0 { Failure::CheckFailed.into() } else { ExitCode::SUCCESS })
}

/// Playbook files that did not compile (they have at least one error).
fn failed_files(diagnostics: &[Diagnostic]) -> usize {
    let mut files: Vec<&Path> = diagnostics
        .iter()
        .filter(|d| d.is_error() && d.code.starts_with('P'))
        .map(|d| d.file.as_path())
        .filter(|file| file.extension().is_some_and(|e| e != "rhai"))
        .collect();
    files.sort();
    files.dedup();
    files.len()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    /// Graphviz (`| dot -Tsvg`).
    Dot,
    /// A Mermaid flowchart (GitHub renders it in markdown).
    Mermaid,
    /// The nodes and transitions as JSON (the same as `--json`).
    Json,
}

pub fn graph(
    cx: &mut Context<'_>,
    name_or_file: &str,
    format: GraphFormat,
    playbooks: Option<&Path>,
    policies: Option<&Path>,
) -> Result<ExitCode, CliError> {
    let policies = match policies {
        Some(dir) => Some(dir.to_path_buf()),
        None => Some(cx.config.policies.clone()).filter(|dir| dir.is_dir()),
    };
    let as_file = Path::new(name_or_file);
    let compiled: CompiledPlaybook = if as_file.is_file() {
        let policy_set = match &policies {
            Some(dir) => match crate::policy::PolicySet::load(dir) {
                Ok(set) => Some(set),
                Err(error) => {
                    let diagnostics: Vec<Diagnostic> = Diagnostic::from_policy(error.diagnostics);
                    print_diagnostics(cx, &diagnostics);
                    return Err(CliError::check_failed(format!("the policies in {} have errors", dir.display())));
                }
            },
            None => None,
        };
        let (compiled, diagnostics) = playbook::compile_file(as_file, policy_set.as_ref());
        print_diagnostics(cx, &diagnostics);
        compiled.ok_or_else(|| CliError::check_failed(format!("{name_or_file} does not compile")))?
    } else {
        let configured = cx.config.playbooks.clone();
        let dir = playbooks.unwrap_or(&configured);
        let report = playbook::check(dir, policies.as_deref());
        let Some(found) = report.playbooks.into_iter().find(|p| p.name == name_or_file) else {
            let names: Vec<String> = playbook::playbook_files(dir)
                .unwrap_or_default()
                .iter()
                .filter_map(|file| file.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect();
            let failing = report
                .diagnostics
                .iter()
                .any(|d| d.is_error() && d.file.file_stem().is_some_and(|s| s == name_or_file));
            if failing {
                print_diagnostics(cx, &report.diagnostics);
                return Err(CliError::check_failed(format!("playbook {name_or_file} does not compile")));
            }
            return Err(CliError::input_msg(format!(
                "no playbook named {name_or_file:?} in {} (and no such file); playbooks there: {}",
                dir.display(),
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            )));
        };
        found
    };
    match format {
        GraphFormat::Dot => cx.console.text(playbook::render_dot(&compiled.graph))?,
        GraphFormat::Mermaid => cx.console.text(playbook::render_mermaid(&compiled.graph))?,
        GraphFormat::Json => cx.console.json(&playbook::graph_json(&compiled.name, &compiled.graph))?,
    }
    Ok(ExitCode::SUCCESS)
}

pub fn schema(cx: &mut Context<'_>) -> Result<ExitCode, CliError> {
    cx.console.json(&playbook::playbook_schema())?;
    Ok(ExitCode::SUCCESS)
}

pub fn explain(cx: &mut Context<'_>, code: &str, json: bool) -> Result<ExitCode, CliError> {
    match (playbook::explain(code), playbook::explanation(code)) {
        (Some(_), Some(entry)) if json => {
            cx.console.json(&entry)?;
            Ok(ExitCode::SUCCESS)
        }
        (Some(text), _) => {
            cx.console.line(text.trim_end())?;
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            let known: Vec<&str> = playbook::CODES.iter().map(|info| info.id).collect();
            Err(CliError::input_msg(format!(
                "no diagnostic code {code:?}; playbook codes are {} (policy codes {})",
                known.join(", "),
                policy_codes()
            )))
        }
    }
}

/// "R001–R008": the range of the policy code table.
fn policy_codes() -> String {
    let codes = crate::policy::diagnostic::CODES;
    match (codes.first(), codes.last()) {
        (Some(first), Some(last)) => format!("{}–{}", first.code, last.code),
        _ => "none".to_owned(),
    }
}

/// `salvage policy defs`: the hook API and the engine's definitions, as one `.d.rhai` file.
pub fn policy_defs(cx: &mut Context<'_>, output: Option<&Path>) -> Result<ExitCode, CliError> {
    let definitions = crate::policy::engine::engine().definitions().with_headers(true).single_file();
    let text = format!("{}\n{definitions}", crate::policy::hooks::HOOK_API);
    match output {
        None => cx.console.text(text)?,
        Some(path) => {
            std::fs::write(path, text).map_err(|source| {
                CliError::input(super::source_error::UnreadableFile { path: path.display().to_string(), source })
            })?;
            cx.console.note(format!("wrote the policy definitions to {}", path.display()));
        }
    }
    Ok(ExitCode::SUCCESS)
}
