//! The action catalog: the one table of what a playbook step can do.
//!
//! Validation, the JSON Schema's `action` enum and the action table of the docs are all
//! generated from [`CATALOG`]. The runner executes these actions; the planner names them in
//! plans with [`ActionSpec::plan_name`], which keeps the reference planner's names where it has
//! one (so a tool written for the reference reads salvage's plans).

use std::fmt;

use serde::Serialize;

/// What running an action does to the world, from harmless to permanent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectClass {
    /// Reads only; running it any number of times changes nothing.
    ReadOnly,
    /// Writes something, but running it again gives the same state (a bundle file, a request).
    Idempotent,
    /// Creates something that can be undone (a new paused run that can be cancelled); the source
    /// run is untouched and nothing executes.
    Compensable,
    /// Executes tools or model calls, or destroys state: it cannot be taken back. Every path to
    /// an irreversible step must pass an approval (check P054).
    Irreversible,
}

impl EffectClass {
    pub fn as_str(self) -> &'static str {
        match self {
            EffectClass::ReadOnly => "read_only",
            EffectClass::Idempotent => "idempotent",
            EffectClass::Compensable => "compensable",
            EffectClass::Irreversible => "irreversible",
        }
    }
}

impl fmt::Display for EffectClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Priority of a plan step (the reference planner's vocabulary plus `low`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    Medium,
    Low,
}

impl Priority {
    pub const ALL: &'static [Priority] = &[Priority::High, Priority::Medium, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }

    pub fn parse(text: &str) -> Option<Priority> {
        Priority::ALL.iter().copied().find(|priority| priority.as_str() == text)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Step fields that parameterise an action (as opposed to the control fields `action`,
/// `description`, `when`, `next`, `on`, `max_visits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Param {
    Reason,
    Priority,
    Approval,
    Why,
    Approvers,
    Retry,
    Checkpoint,
    Scope,
    Timeout,
    Target,
    Message,
    Channel,
    Duration,
}

impl Param {
    pub const ALL: &'static [Param] = &[
        Param::Reason,
        Param::Priority,
        Param::Approval,
        Param::Why,
        Param::Approvers,
        Param::Retry,
        Param::Checkpoint,
        Param::Scope,
        Param::Timeout,
        Param::Target,
        Param::Message,
        Param::Channel,
        Param::Duration,
    ];

    /// Accepted by every action.
    pub const COMMON: &'static [Param] =
        &[Param::Reason, Param::Priority, Param::Approval, Param::Why, Param::Approvers];

    /// The YAML field name.
    pub fn name(self) -> &'static str {
        match self {
            Param::Reason => "reason",
            Param::Priority => "priority",
            Param::Approval => "approval",
            Param::Why => "why",
            Param::Approvers => "approvers",
            Param::Retry => "retry",
            Param::Checkpoint => "checkpoint",
            Param::Scope => "scope",
            Param::Timeout => "timeout",
            Param::Target => "target",
            Param::Message => "message",
            Param::Channel => "channel",
            Param::Duration => "duration",
        }
    }

    pub fn from_name(name: &str) -> Option<Param> {
        Param::ALL.iter().copied().find(|param| param.name() == name)
    }
}

/// How the plan names an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanName {
    /// The catalog name.
    Same,
    /// Depends on `scope:` (`run` is the default).
    ByScope { run: &'static str, workflow: &'static str },
}

/// Whether a step acts on a run (`run`, the default) or on its whole workflow tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Run,
    Workflow,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Run => "run",
            Scope::Workflow => "workflow",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "run" => Some(Scope::Run),
            "workflow" => Some(Scope::Workflow),
            _ => None,
        }
    }
}

/// The actions a step can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    InspectReport,
    InspectRunTree,
    CompareToKnownGood,
    ExportBundle,
    VerifyPersisted,
    CheckDuplicateDelivery,
    CheckEnvelope,
    InspectSideEffects,
    RequestApproval,
    ResolveApproval,
    DenyApproval,
    ResumeReplay,
    ResumeRun,
    BranchFromCheckpoint,
    PartialReplay,
    FrozenReplay,
    CancelRun,
    Notify,
    Wait,
    AwaitRun,
}

/// One row of the catalog.
#[derive(Debug, Clone, Copy)]
pub struct ActionSpec {
    pub action: Action,
    /// The YAML spelling.
    pub name: &'static str,
    /// What it does, for people (docs, schema hover text).
    pub description: &'static str,
    pub effect: EffectClass,
    /// Why it has that effect class.
    pub effect_note: &'static str,
    /// Every outcome it can produce; `on:` keys must be among these.
    pub outcomes: &'static [&'static str],
    /// Parameters beyond [`Param::COMMON`].
    pub params: &'static [Param],
    /// Parameters it cannot run without.
    pub required: &'static [Param],
    /// Plan priority when the step does not set `priority:`.
    pub default_priority: Priority,
    pub plan_name: PlanName,
    /// Creates a new run that a later step can act on with `target:`.
    pub creates_run: bool,
}

const OK_FAILED: &[&str] = &["ok", "failed"];

/// The catalog, in [`Action`] order.
pub const CATALOG: &[ActionSpec] = &[
    ActionSpec {
        action: Action::InspectReport,
        name: "inspect_report",
        description: "Build the incident report of the run (failure, failed steps, last checkpoint, run tree, \
comparison, recommendations) and attach it to the recovery record.",
        effect: EffectClass::ReadOnly,
        effect_note: "reads the run store only",
        outcomes: &["ok"],
        params: &[Param::Target],
        required: &[],
        default_priority: Priority::Low,
        plan_name: PlanName::Same,
        creates_run: false,
    },
    ActionSpec {
        action: Action::InspectRunTree,
        name: "inspect_run_tree",
        description: "Inspect the run's tree (root, parents, children): `isolated` when the failure stayed in one \
delegated child run, `propagated` when it reached the root orchestration.",
        effect: EffectClass::ReadOnly,
        effect_note: "reads the run store only",
        outcomes: &["isolated", "propagated"],
        params: &[],
        required: &[],
        default_priority: Priority::Low,
        plan_name: PlanName::Same,
        creates_run: false,
    },
    ActionSpec {
        action: Action::CompareToKnownGood,
        name: "compare_to_known_good",
        description: "Diff the run against a known-good run (`--compare-to`): `diverged` when status or output \
differ, `same` when they do not, `unavailable` when there is no known-good run.",
        effect: EffectClass::ReadOnly,
        effect_note: "reads the run store only",
        outcomes: &["same", "diverged", "unavailable"],
        params: &[Param::Target],
        required: &[],
        default_priority: Priority::Medium,
        plan_name: PlanName::Same,
        creates_run: false,
    },
    ActionSpec {
        action: Action::ExportBundle,
        name: "export_bundle",
        description: "Export a portable trace bundle of the run and its tree (source, worker and branch runs) \
for offline analysis, before anything is mutated.",
        effect: EffectClass::Idempotent,
        effect_note: "writes a bundle outside the run store; exporting again gives an equivalent bundle",
        outcomes: OK_FAILED,
        params: &[Param::Retry],
        required: &[],
        default_priority: Priority::Medium,
        plan_name: PlanName::Same,
        creates_run: false,
    },
    ActionSpec {
        action: Action::VerifyPersisted,
        name: "verify_persisted",
        description: "Check that the source run and its checkpoint were persisted in the durable store before \
the envelope was queued or handed off.",
        effect: EffectClass::ReadOnly,
        effect_note: "reads the run store only",
        outcomes: &["persisted", "missing"],
        params: &[],
        required: &[],
        default_priority: Priority::Medium,
        plan_name: PlanName::Same,
        creates_run: false,
    },
    ActionSpec {
        action: Action::CheckDuplicateDelivery,
        name: "check_duplicate_delivery",
        description: "Check that the queued continuation was not consumed twice (two worker runs for one \
envelope): `clean`, `duplicate`, or `unknown` when the store cannot tell.",
        effect: EffectClass::ReadOnly,
        effect_note: "reads the run store only",
        outcomes: &["clean", "duplicate", "unknown"],
        params: &[],
        required: &[],
        default_priority: Priority::Medium,
        plan_name: PlanName::Same,
        creates_run: false,
    },
    ActionSpec {
        action: Action::CheckEnvelope,
        name: "check_envelope",
        description: "Compare the distributed envelope (runtimeKind, action, checkpointId, correlation) with the \
stored run and the target runtime: `consistent`, `mismatch`, or `missing` when the run or checkpoint \
cannot be resolved.",
        effect: EffectClass::ReadOnly,
        effect_note: "reads the run store only",
        outcomes: &["consistent", "mismatch", "missing"],
        params: &[],
        required: &[],
        default_priority: Priority::Medium,
        plan_name: PlanName::Same,
        creates_run: false,
    },
    ActionSpec {
        action: Action::InspectSideEffects,
        name: "inspect_side_effects",
        description: "Determine whether the failed tool's external side effect happened: `none`, `partial`, or \
`unknown` when the tool metadata and events cannot tell.",
        effect: EffectClass::ReadOnly,
        effect_note: "reads the run record and tool metadata only",
        outcomes: &["none", "partial", "unknown"],
        params: &[],
        required: &[],
        default_priority: Priority::High,
        plan_name: PlanName::Same,
        creates_run: false,
    },
    ActionSpec {
        action: Action::RequestApproval,
        name: "request_approval",
        description: "Ask a person to approve the next steps and wait for the answer, at most `timeout`.",
        effect: EffectClass::Idempotent,
        effect_note: "records an approval request; asking again for the same step reuses it",
        outcomes: &["approved", "denied", "timeout"],
        params: &[Param::Timeout],
        required: &[Param::Timeout],
        default_priority: Priority::High,
        plan_name: PlanName::Same,
        creates_run: false,
    },
    ActionSpec {
        action: Action::ResolveApproval,
        name: "resolve_approval",
        description: "Approve the run's pending tool approval and resume the run: the pending tool call executes.",
        effect: EffectClass::Irreversible,
        effect_note: "the approved tool call executes for real, with its external side effects",
        outcomes: OK_FAILED,
        params: &[],
        required: &[],
        default_priority: Priority::High,
        plan_name: PlanName::Same,
        creates_run: false,
    },
    ActionSpec {
        action: Action::DenyApproval,
        name: "deny_approval",
        description: "Send a person's denial of the run's pending tool approval to the runtime (a resume with \
`approved: false`): the gated tool call does not run and the runtime fails the run, as its own approval inbox \
would. Reached from the `denied` (or `timeout`) exit of a `request_approval` step, which is the decision it \
carries.",
        effect: EffectClass::Irreversible,
        effect_note: "the runtime fails the run for good; the tool call never runs",
        outcomes: OK_FAILED,
        params: &[],
        required: &[],
        default_priority: Priority::High,
        plan_name: PlanName::Same,
        creates_run: false,
    },
    ActionSpec {
        action: Action::ResumeReplay,
        name: "resume_replay",
        description: "Resume a run paused in replay mode (the incident run, or the replay created by a \
`partial_replay` step named in `target`); execution continues live from the replay's checkpoint.",
        effect: EffectClass::Irreversible,
        effect_note: "model and tool calls execute live from the checkpoint",
        outcomes: OK_FAILED,
        params: &[Param::Target],
        required: &[],
        default_priority: Priority::High,
        plan_name: PlanName::Same,
        creates_run: false,
    },
    ActionSpec {
        action: Action::ResumeRun,
        name: "resume_run",
        description: "Resume a paused run (the incident run, or the run created by the step named in `target`, \
e.g. a branch); model and tool calls execute live.",
        effect: EffectClass::Irreversible,
        effect_note: "model and tool calls execute live",
        outcomes: OK_FAILED,
        params: &[Param::Target],
        required: &[],
        default_priority: Priority::High,
        plan_name: PlanName::Same,
        creates_run: false,
    },
    ActionSpec {
        action: Action::BranchFromCheckpoint,
        name: "branch_from_checkpoint",
        description: "Create a new paused run from a checkpoint (chosen by the `checkpoint:` hook) of the run \
(`scope: run`) or of its workflow (`scope: workflow`); the source run is untouched.",
        effect: EffectClass::Compensable,
        effect_note: "creates a new paused run and executes nothing; cancelling the branch undoes it. Resuming \
it is a separate `resume_run` step (with `target:`), which is the irreversible part (the reference runner \
resumes a branch at once; salvage gates the resume on its own)",
        outcomes: OK_FAILED,
        params: &[Param::Checkpoint, Param::Scope, Param::Retry],
        required: &[],
        default_priority: Priority::High,
        plan_name: PlanName::ByScope {
            run: "branch_from_failure_checkpoint",
            workflow: "workflow_branch_from_failure_checkpoint",
        },
        creates_run: true,
    },
    ActionSpec {
        action: Action::PartialReplay,
        name: "partial_replay",
        description: "Prepare a partial frozen replay from a checkpoint: a new run seeded from the checkpoint \
snapshot, paused in replay mode (resume it with `resume_replay`).",
        effect: EffectClass::Compensable,
        effect_note: "creates a new paused run and executes nothing; cancelling it undoes it",
        outcomes: OK_FAILED,
        params: &[Param::Checkpoint, Param::Retry],
        required: &[],
        default_priority: Priority::Medium,
        plan_name: PlanName::Same,
        creates_run: true,
    },
    ActionSpec {
        action: Action::FrozenReplay,
        name: "frozen_replay",
        description: "Create a frozen, deterministic copy of the whole run for inspection; nothing executes.",
        effect: EffectClass::Compensable,
        effect_note: "adds a copy of the run to the store and executes nothing; the copy can be cancelled",
        outcomes: OK_FAILED,
        params: &[Param::Retry],
        required: &[],
        default_priority: Priority::Medium,
        plan_name: PlanName::Same,
        creates_run: true,
    },
    ActionSpec {
        action: Action::CancelRun,
        name: "cancel_run",
        description: "Cancel a run (the incident run, or the run created by the step named in `target`).",
        effect: EffectClass::Irreversible,
        effect_note: "a cancelled run can never be resumed",
        outcomes: OK_FAILED,
        params: &[Param::Target],
        required: &[],
        default_priority: Priority::High,
        plan_name: PlanName::Same,
        creates_run: false,
    },
    ActionSpec {
        action: Action::Notify,
        name: "notify",
        description: "Send `message` to people on `channel`, a channel of salvage.yaml `notifications` (`NAME` or \
`TYPE:NAME`, e.g. `pagerduty:agents-oncall`), else the default channel.",
        effect: EffectClass::Idempotent,
        effect_note: "sending twice duplicates a message but changes no run",
        outcomes: OK_FAILED,
        params: &[Param::Message, Param::Channel, Param::Retry],
        required: &[Param::Message],
        default_priority: Priority::Low,
        plan_name: PlanName::Same,
        creates_run: false,
    },
    ActionSpec {
        action: Action::Wait,
        name: "wait",
        description: "Pause the recovery for `duration` (e.g. to let a queue drain or a lease expire).",
        effect: EffectClass::ReadOnly,
        effect_note: "only time passes",
        outcomes: &["ok"],
        params: &[Param::Duration],
        required: &[Param::Duration],
        default_priority: Priority::Low,
        plan_name: PlanName::Same,
        creates_run: false,
    },
    ActionSpec {
        action: Action::AwaitRun,
        name: "await_run",
        description: "Wait until a run reaches a state where it needs nobody else: the run created by the step \
named in `target` (e.g. a branch resumed by the step before), else the incident run. `completed`, `failed` \
(cancelled included), `paused`, `waiting_for_approval`, or `timeout` when `timeout` passes first. It only \
reads: the daemon parks the execution meanwhile instead of holding a worker.",
        effect: EffectClass::ReadOnly,
        effect_note: "reads the run (and asks its runtime) until it settles; only time passes",
        outcomes: &["completed", "failed", "paused", "waiting_for_approval", "timeout"],
        params: &[Param::Target, Param::Timeout],
        required: &[Param::Timeout],
        default_priority: Priority::Medium,
        plan_name: PlanName::Same,
        creates_run: false,
    },
];

impl Action {
    /// Every action, in catalog order.
    pub fn all() -> impl Iterator<Item = Action> {
        CATALOG.iter().map(|spec| spec.action)
    }

    /// This action's catalog row.
    pub fn spec(self) -> &'static ActionSpec {
        // The catalog is in `Action` order (checked by a test); the search is the fallback.
        match CATALOG.get(self as usize) {
            Some(spec) if spec.action == self => spec,
            _ => CATALOG.iter().find(|spec| spec.action == self).unwrap_or(&CATALOG[0]),
        }
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn from_name(name: &str) -> Option<Action> {
        CATALOG.iter().find(|spec| spec.name == name).map(|spec| spec.action)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl ActionSpec {
    /// Whether the action accepts a parameter.
    pub fn accepts(&self, param: Param) -> bool {
        Param::COMMON.contains(&param) || self.params.contains(&param)
    }

    /// Every parameter it accepts, common ones first.
    pub fn accepted(&self) -> impl Iterator<Item = Param> + '_ {
        Param::COMMON.iter().chain(self.params.iter()).copied()
    }

    /// Whether the runtime that owns the run carries the action out (as opposed to salvage
    /// itself: reads, bundles, approvals, notifications, timers).
    pub fn uses_runtime(&self) -> bool {
        matches!(
            self.action,
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

    pub fn produces(&self, outcome: &str) -> bool {
        self.outcomes.contains(&outcome)
    }

    /// The outcome as the catalog spells it (a `'static` string).
    pub fn outcome(&self, outcome: &str) -> Option<&'static str> {
        self.outcomes.iter().copied().find(|known| *known == outcome)
    }

    /// The action name a plan uses for this step.
    pub fn plan_name(&self, scope: Scope) -> &'static str {
        match (self.plan_name, scope) {
            (PlanName::Same, _) => self.name,
            (PlanName::ByScope { run, .. }, Scope::Run) => run,
            (PlanName::ByScope { workflow, .. }, Scope::Workflow) => workflow,
        }
    }
}

/// The action table of the docs (markdown), generated from the catalog.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| action | effect | outcomes | parameters (beyond reason, priority, approval, why, approvers) | default priority | plan name | what it does |\n|---|---|---|---|---|---|---|\n",
    );
    for spec in CATALOG {
        let outcomes = spec.outcomes.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ");
        let params = spec
            .params
            .iter()
            .map(|param| {
                if spec.required.contains(param) {
                    format!("`{}` (required)", param.name())
                } else {
                    format!("`{}`", param.name())
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let plan = match spec.plan_name {
            PlanName::Same => format!("`{}`", spec.name),
            PlanName::ByScope { run, workflow } => format!("`{run}` (scope run), `{workflow}` (scope workflow)"),
        };
        out.push_str(&format!(
            "| `{}` | {} — {} | {} | {} | {} | {} | {} |\n",
            spec.name,
            spec.effect,
            spec.effect_note,
            outcomes,
            if params.is_empty() { "—".to_owned() } else { params },
            spec.default_priority,
            plan,
            spec.description.replace('\n', " ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_in_action_order_with_unique_names() {
        for (index, spec) in CATALOG.iter().enumerate() {
            assert_eq!(spec.action as usize, index, "{} is out of order", spec.name);
            assert_eq!(Action::from_name(spec.name), Some(spec.action));
            assert!(!spec.outcomes.is_empty());
            for required in spec.required {
                assert!(spec.params.contains(required), "{}: required {:?} must be accepted", spec.name, required);
            }
            for outcome in spec.outcomes {
                assert!(!["skip", "exhausted"].contains(outcome), "{} uses a reserved outcome", spec.name);
            }
            if spec.params.contains(&Param::Retry) {
                assert!(spec.produces("failed") && spec.effect != EffectClass::Irreversible, "{}", spec.name);
            }
        }
        let serde_names: Vec<String> =
            Action::all().map(|a| serde_json::to_value(a).unwrap().as_str().unwrap().to_owned()).collect();
        let names: Vec<&str> = CATALOG.iter().map(|s| s.name).collect();
        assert_eq!(serde_names, names);
    }

    #[test]
    fn plan_names_follow_the_reference() {
        let branch = Action::BranchFromCheckpoint.spec();
        assert_eq!(branch.plan_name(Scope::Run), "branch_from_failure_checkpoint");
        assert_eq!(branch.plan_name(Scope::Workflow), "workflow_branch_from_failure_checkpoint");
        for kept in ["resolve_approval", "resume_replay", "partial_replay", "compare_to_known_good", "inspect_report"] {
            let action = Action::from_name(kept).unwrap();
            assert_eq!(action.spec().plan_name(Scope::Run), kept);
        }
        // The reference planner's priorities for the actions it emits.
        assert_eq!(Action::ResolveApproval.spec().default_priority, Priority::High);
        assert_eq!(Action::ResumeReplay.spec().default_priority, Priority::High);
        assert_eq!(branch.default_priority, Priority::High);
        assert_eq!(Action::PartialReplay.spec().default_priority, Priority::Medium);
        assert_eq!(Action::CompareToKnownGood.spec().default_priority, Priority::Medium);
    }

    #[test]
    fn anything_that_executes_or_destroys_is_irreversible() {
        for action in
            [Action::ResolveApproval, Action::DenyApproval, Action::ResumeReplay, Action::ResumeRun, Action::CancelRun]
        {
            assert_eq!(action.spec().effect, EffectClass::Irreversible, "{action}");
        }
        for action in [Action::BranchFromCheckpoint, Action::PartialReplay, Action::FrozenReplay] {
            assert_eq!(action.spec().effect, EffectClass::Compensable, "{action}");
            assert!(action.spec().creates_run);
        }
    }
}
