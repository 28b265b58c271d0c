//! Playbooks: YAML recovery procedures compiled into checked state machines.
//!
//! A playbook says which incidents it handles (`match`) and how to recover: steps, each taking
//! an action of the [catalog](catalog::CATALOG), with outcome-labelled exits to other steps or
//! to ends. [`check`] compiles a directory of playbooks (optionally against a policy directory)
//! and reports every problem with a stable code ([`CODES`], [`explain`]); a playbook that
//! compiles is a [`CompiledPlaybook`] whose [`RecoveryGraph`] is guaranteed to:
//! - reach every step from `start` and reach an end from every step;
//! - have an exit for every outcome of every step, and no unbounded cycle;
//! - pass an approval before every irreversible action (unless `approval: never` says why);
//! - name only catalog actions, existing steps and (with policies) existing hooks of the right
//!   arity, and guards that compile in the policy sandbox.

pub mod catalog;
mod checks;
mod compile;
pub mod diagnostic;
pub mod docs;
pub mod graph;
pub mod language;
mod read;
pub mod render;
pub mod schema;
pub mod suggest;
pub mod yaml;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

pub use catalog::{Action, ActionSpec, CATALOG, EffectClass, Param, Priority, Scope};
pub use compile::HookPosition;
pub use diagnostic::{CODES, Code, CodeInfo, Diagnostic, Severity, explain, explanation};
pub use graph::{
    ApprovalRule, Approvers, CompiledPlaybook, EndNode, GUARD_VARIABLES, GraphNode, Guard, IncidentMatch, Location,
    PlaybookSpans, RecoveryGraph, Retry, StepNode, StepParams, Transition,
};
pub use language::EndOutcome;
pub use render::{graph_json, render_dot, render_mermaid};
pub use schema::playbook_schema;

use crate::model::IncidentKind;
use crate::policy::PolicySet;
use diagnostic::Reporter;

/// File extensions of playbook files.
pub const PLAYBOOK_EXTENSIONS: &[&str] = &["yaml", "yml"];

/// Compiles one playbook given as text; `file` names it in diagnostics. Returns the playbook
/// when it has no error, and every diagnostic (warnings included) sorted by position.
pub fn compile_str(
    file: &Path,
    text: &str,
    policies: Option<&PolicySet>,
) -> (Option<CompiledPlaybook>, Vec<Diagnostic>) {
    let source: Arc<str> = Arc::from(text);
    let mut reporter = Reporter::new(file, source.clone());
    let compiled = compile::compile_text(&mut reporter, policies);
    let mut diagnostics = reporter.diagnostics;
    diagnostics.sort_by_key(|d| (d.span.map(|s| s.start).unwrap_or(0), d.code));
    (compiled.map(|playbook| CompiledPlaybook { source, ..playbook }), diagnostics)
}

/// Reads and compiles one playbook file.
pub fn compile_file(path: &Path, policies: Option<&PolicySet>) -> (Option<CompiledPlaybook>, Vec<Diagnostic>) {
    match read_text(path) {
        Ok(text) => compile_str(path, &text, policies),
        Err(diagnostic) => (None, vec![*diagnostic]),
    }
}

/// Reads a playbook file: a regular file (a FIFO, a device or a dangling symlink is an error,
/// never read) whose size is checked before anything is read.
fn read_text(path: &Path) -> Result<String, Box<Diagnostic>> {
    let limit = yaml::MAX_FILE_BYTES as u64;
    let bytes = crate::limits::read_regular_file(path, limit).map_err(|refused| {
        Box::new(match refused {
            crate::limits::ReadRefused::TooLarge { size, .. } => Diagnostic::unlocated(
                Code::ParseBudget,
                path,
                format!("`{}` is {size} bytes; playbooks are limited to {limit} bytes", path.display()),
            ),
            other => {
                Diagnostic::unlocated(Code::UnreadableFile, path, format!("cannot read `{}`: {other}", path.display()))
            }
        })
    })?;
    String::from_utf8(bytes).map_err(|error| {
        Box::new(Diagnostic::unlocated(
            Code::UnreadableFile,
            path,
            format!("`{}` is not UTF-8 (invalid byte at offset {})", path.display(), error.utf8_error().valid_up_to()),
        ))
    })
}

/// The playbook files directly inside `dir` (subdirectories are separate sets), by name.
pub fn playbook_files(dir: &Path) -> Result<Vec<PathBuf>, Box<Diagnostic>> {
    let entries = std::fs::read_dir(dir).map_err(|error| {
        Box::new(Diagnostic::unlocated(
            Code::UnreadableFile,
            dir,
            format!("cannot read playbook directory `{}`: {error}", dir.display()),
        ))
    })?;
    // Every entry with a playbook extension but directories: a dangling or looping symlink, a
    // FIFO or a device is then an error of `check`, never a playbook that silently vanished.
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            !path.is_dir()
                && path
                    .extension()
                    .and_then(|extension| extension.to_str())
                    .is_some_and(|extension| PLAYBOOK_EXTENSIONS.contains(&extension))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The result of `salvage check`: the playbooks that compiled and every diagnostic.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Playbooks without errors, in file-name order.
    pub playbooks: Vec<CompiledPlaybook>,
    /// Policy diagnostics first, then each playbook file's in file order, then set-level ones.
    pub diagnostics: Vec<Diagnostic>,
    /// The policy set checked against (partial when it had errors).
    pub policies: Option<PolicySet>,
}

impl CheckReport {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    pub fn warning_count(&self) -> usize {
        self.diagnostics.len() - self.error_count()
    }
}

/// Checks every playbook of `playbooks_dir`, hook references against the policies of
/// `policies_dir` when given, and the set as a whole (unique names, unambiguous selection).
pub fn check(playbooks_dir: &Path, policies_dir: Option<&Path>) -> CheckReport {
    let mut report = CheckReport::default();
    if let Some(dir) = policies_dir {
        match PolicySet::load(dir) {
            Ok(set) => report.policies = Some(set),
            Err(error) => {
                report.diagnostics.extend(Diagnostic::from_policy(error.diagnostics));
                report.policies = Some(*error.partial);
            }
        }
    }
    let files = match playbook_files(playbooks_dir) {
        Ok(files) => files,
        Err(diagnostic) => {
            report.diagnostics.push(*diagnostic);
            return report;
        }
    };
    for file in files {
        let (compiled, diagnostics) = compile_file(&file, report.policies.as_ref());
        report.diagnostics.extend(diagnostics);
        report.playbooks.extend(compiled);
    }
    report.diagnostics.extend(check_set(&report.playbooks));
    report
}

/// P062: every step that waits for a person has someone who may answer — the step's own
/// `approvers:`, the policies' `approvers(step, ctx)` hook, else `default_approvers` (the active
/// salvage.yaml's `approvals.default_approvers`). Blank names count as nobody.
pub fn check_approvers(
    playbooks: &[CompiledPlaybook],
    policies: Option<&PolicySet>,
    default_approvers: &[String],
) -> Vec<Diagnostic> {
    use petgraph::visit::EdgeRef;
    let named = |names: &[String]| names.iter().any(|name| !name.trim().is_empty());
    let hook = policies.is_some_and(|set| set.function("approvers", 2).is_some());
    let mut diagnostics = Vec::new();
    for playbook in playbooks {
        let graph = &playbook.graph;
        let g = graph.graph();
        for (index, step) in graph.steps() {
            let asks = match step.action {
                Action::RequestApproval => true,
                // A resolve entered only from `approved` exits of request_approval steps carries
                // their decision.
                Action::ResolveApproval => {
                    g.edges_directed(index, petgraph::Direction::Incoming).any(|edge| {
                        !(*edge.weight() == Transition::Outcome("approved")
                            && g[edge.source()].as_step().is_some_and(|s| s.action == Action::RequestApproval))
                    }) || index == graph.start()
                }
                _ => step.params.approval.is_gate(),
            };
            if !asks {
                continue;
            }
            let covered = match &step.params.approvers {
                Some(Approvers::Names(names)) => named(names),
                Some(Approvers::Hook(_)) => true,
                None => hook || named(default_approvers),
            };
            if covered {
                continue;
            }
            let mut reporter = Reporter::new(&playbook.file, playbook.source.clone());
            reporter
                .report(
                    Code::NobodyMayApprove,
                    step.location.span,
                    format!("step `{}` waits for a person, but nobody may approve it", step.id),
                    "nobody may approve",
                )
                .help(
                    "add `approvers: [name, ...]` (or `approvers: policy.approvers`) to the step, define \
                     `approvers(step, ctx)` in the policies, or list people in salvage.yaml \
                     `approvals.default_approvers`",
                );
            diagnostics.extend(reporter.diagnostics);
        }
    }
    diagnostics
}

/// P063: the steps whose action a configured runtime does not carry out. `routes` are (route
/// name, runtime name, whether it carries out an action).
pub fn check_runtime_actions<F: Fn(Action) -> bool>(
    playbooks: &[CompiledPlaybook],
    routes: &[(String, String, F)],
) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    for playbook in playbooks {
        for (_, step) in playbook.graph.steps() {
            if !step.spec().uses_runtime() {
                continue;
            }
            let lacking: Vec<String> = routes
                .iter()
                .filter(|(_, _, carries_out)| !carries_out(step.action))
                .map(|(route, runtime, _)| format!("`{runtime}` ({route} runs)"))
                .collect();
            if lacking.is_empty() {
                continue;
            }
            let mut reporter = Reporter::new(&playbook.file, playbook.source.clone());
            reporter
                .report(
                    Code::RuntimeLacksAction,
                    step.location.span,
                    format!(
                        "step `{}` ({}) fails on runs owned by {}: that runtime does not carry out `{}`",
                        step.id,
                        step.action,
                        lacking.join(", "),
                        step.action
                    ),
                    "not carried out",
                )
                .help(format!("add `{}` to the runtime's `actions:` in salvage.yaml", step.action));
            diagnostics.extend(reporter.diagnostics);
        }
    }
    diagnostics
}

/// P064: every `notify` step's `channel:` names a configured channel. `resolve` answers, for a
/// channel reference, `Err((message, help))` when the configuration does not define it.
pub fn check_channels<F: Fn(&str) -> Result<(), (String, String)>>(
    playbooks: &[CompiledPlaybook],
    resolve: F,
) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    for playbook in playbooks {
        for (_, step) in playbook.graph.steps() {
            let Some(channel) = step.params.channel.as_deref() else { continue };
            let Err((message, help)) = resolve(channel) else { continue };
            let mut reporter = Reporter::new(&playbook.file, playbook.source.clone());
            reporter
                .report(
                    Code::UnknownChannel,
                    step.params.channel_span.unwrap_or(step.location.span),
                    format!("step `{}`: {message}", step.id),
                    "no such channel",
                )
                .help(help);
            diagnostics.extend(reporter.diagnostics);
        }
    }
    diagnostics
}

/// Set-level checks: P060 (duplicate names) and P061 (ambiguous selection).
pub fn check_set(playbooks: &[CompiledPlaybook]) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    for (later_index, later) in playbooks.iter().enumerate() {
        for earlier in &playbooks[..later_index] {
            let mut reporter = Reporter::new(&later.file, later.source.clone());
            if earlier.name == later.name {
                reporter
                    .report(
                        Code::DuplicatePlaybookName,
                        later.spans.name,
                        format!("playbook `{}` is also defined in {}", later.name, earlier.file.display()),
                        "duplicate name",
                    )
                    .help(format!(
                        "rename one of them; the other is at {}:{}",
                        earlier.file.display(),
                        line_of(earlier, earlier.spans.name.start)
                    ));
            } else if earlier.priority == later.priority && earlier.incidents.overlaps(&later.incidents) {
                let shared = shared_kinds(&earlier.incidents, &later.incidents);
                reporter
                    .report(
                        Code::AmbiguousMatch,
                        later.spans.incident,
                        format!(
                            "playbooks `{}` and `{}` both match {} with priority {}",
                            earlier.name, later.name, shared, later.priority
                        ),
                        "ambiguous selection",
                    )
                    .help(format!(
                        "give one of them a different `priority:` (`{}` is in {})",
                        earlier.name,
                        earlier.file.display()
                    ));
            }
            diagnostics.extend(reporter.diagnostics);
        }
    }
    diagnostics
}

fn line_of(playbook: &CompiledPlaybook, offset: usize) -> u32 {
    crate::policy::source::LineIndex::new(&playbook.source).line_column(&playbook.source, offset).0
}

fn shared_kinds(a: &IncidentMatch, b: &IncidentMatch) -> String {
    match (a, b) {
        (IncidentMatch::Any, IncidentMatch::Any) => "any incident".to_owned(),
        (IncidentMatch::Any, kinds) | (kinds, IncidentMatch::Any) => format!("`{kinds}`"),
        (IncidentMatch::Kinds(a), IncidentMatch::Kinds(b)) => {
            let shared: Vec<&str> = a.iter().filter(|kind| b.contains(kind)).map(IncidentKind::as_str).collect();
            format!("`{}`", shared.join(", "))
        }
    }
}

/// The playbooks of one directory, all compiled cleanly, with a digest of their sources.
#[derive(Debug, Clone)]
pub struct PlaybookSet {
    dir: PathBuf,
    playbooks: Vec<CompiledPlaybook>,
    warnings: Vec<Diagnostic>,
    digest: String,
}

impl PlaybookSet {
    /// Compiles every playbook of `dir`; fails with all diagnostics when any has an error.
    pub fn load(dir: &Path, policies: Option<&PolicySet>) -> Result<PlaybookSet, Vec<Diagnostic>> {
        let files = playbook_files(dir).map_err(|diagnostic| vec![*diagnostic])?;
        let mut playbooks = Vec::new();
        let mut diagnostics = Vec::new();
        for file in files {
            let (compiled, found) = compile_file(&file, policies);
            diagnostics.extend(found);
            playbooks.extend(compiled);
        }
        diagnostics.extend(check_set(&playbooks));
        if diagnostics.iter().any(Diagnostic::is_error) {
            return Err(diagnostics);
        }
        Ok(PlaybookSet { dir: dir.to_path_buf(), digest: set_digest(&playbooks), playbooks, warnings: diagnostics })
    }

    /// Compiles playbooks given in memory as `(path, text)` (the file names order the set and
    /// enter the digest, as for [`PlaybookSet::load`]); `dir` is the directory they are named in.
    pub fn from_sources(
        dir: &Path,
        sources: &[(PathBuf, String)],
        policies: Option<&PolicySet>,
    ) -> Result<PlaybookSet, Vec<Diagnostic>> {
        let mut playbooks = Vec::new();
        let mut diagnostics = Vec::new();
        for (file, text) in sources {
            let (compiled, found) = compile_str(file, text, policies);
            diagnostics.extend(found);
            playbooks.extend(compiled);
        }
        playbooks.sort_by_key(|p| p.file.file_name().map(|n| n.to_owned()));
        diagnostics.extend(check_set(&playbooks));
        if diagnostics.iter().any(Diagnostic::is_error) {
            return Err(diagnostics);
        }
        Ok(PlaybookSet { dir: dir.to_path_buf(), digest: set_digest(&playbooks), playbooks, warnings: diagnostics })
    }

    /// A set without playbooks (for bookkeeping that needs none, such as closing an execution
    /// whose playbooks no longer load).
    pub fn empty() -> PlaybookSet {
        PlaybookSet { dir: PathBuf::new(), digest: set_digest(&[]), playbooks: Vec::new(), warnings: Vec::new() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// In file-name order.
    pub fn playbooks(&self) -> &[CompiledPlaybook] {
        &self.playbooks
    }

    pub fn get(&self, name: &str) -> Option<&CompiledPlaybook> {
        self.playbooks.iter().find(|playbook| playbook.name == name)
    }

    /// Playbooks whose `match.incident` includes `kind`, highest priority first (their `when`
    /// guards are not evaluated here).
    pub fn candidates(&self, kind: &IncidentKind) -> Vec<&CompiledPlaybook> {
        let mut matching: Vec<&CompiledPlaybook> =
            self.playbooks.iter().filter(|p| p.incidents.matches(kind)).collect();
        matching.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.name.cmp(&b.name)));
        matching
    }

    /// Warnings found while loading.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// sha256 (hex) over the playbook sources sorted by file name, each preceded by its file
    /// name and length.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

fn set_digest(playbooks: &[CompiledPlaybook]) -> String {
    let mut sorted: Vec<&CompiledPlaybook> = playbooks.iter().collect();
    sorted.sort_by_key(|p| p.file.file_name().map(|n| n.to_owned()));
    let mut hasher = Sha256::new();
    for playbook in sorted {
        let name = playbook.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((playbook.source.len() as u64).to_le_bytes());
        hasher.update(playbook.source.as_bytes());
    }
    crate::policy::hex(&hasher.finalize())
}
