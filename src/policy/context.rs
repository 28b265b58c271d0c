//! `ctx`: what a policy hook knows about the incident, and the read-only helpers it can call.
//!
//! A [`DecisionContext`] is built once per plan from the run and its incident report. Policies
//! receive it as `ctx` (a Rhai type named `Context`); every property returns a fresh copy, so a
//! hook cannot change what the next hook sees, and nothing a hook does reaches a store.
//!
//! | property / method | returns |
//! |---|---|
//! | `ctx.run`, `ctx.report` | the run record and its incident report (policy views) |
//! | `ctx.incident` | the incident kind decided by `classify` (`()` while classifying) |
//! | `ctx.comparison`, `ctx.tree` | the diff against `--compare-to` and the run tree, or `()` |
//! | `ctx.compare_to`, `ctx.run_id`, `ctx.status` | strings (or `()`) |
//! | `ctx.failure_text()` / `ctx.error_text()` | the last error as `"<name> <message>"`, lower case (the reference's text) |
//! | `ctx.failed_steps()`, `ctx.failed_steps_of_type(t)` | failed steps, in order |
//! | `ctx.first_failing_step()` | the first failed step with an external effect, else the first failed step, else `()` |
//! | `ctx.checkpoints()` | every checkpoint (`id, label, status, timestamp, payload, stepIds`; no snapshot) |
//! | `ctx.checkpoints_before(step_id)` | checkpoints taken strictly before that step started |
//! | `ctx.last_checkpoint()` | the last checkpoint, or `()` |
//! | `ctx.last_checkpoint_before_failure()` | the last checkpoint strictly before the first failing step, or `()` |
//! | `ctx.tool_effect(step_or_tool_name)` | the tool's `sideEffectLevel` (`external_write`, `read_only`, `none`, …), `"none"` for steps that call no tool, `"unknown"` when nothing says (a `salvage test` mock may set it per tool) |
//! | `ctx.steps_after(checkpoint_id)` | every step a run resumed from that checkpoint would run again, any type: `#{ stepId, type, tool, effect, status }` |
//! | `ctx.source_tools_after()` | for a continuation: the tool steps its source ran after the continuation's checkpoint |
//! | `ctx.tools_after(checkpoint_id)` | the tool steps a run resumed from that checkpoint would run again: `#{ tool, effect, stepId, status }` |
//! | `ctx.has_event(type)`, `ctx.event_types()` | event types recorded on the run |
//! | `ctx.metadata(key)` | a `metadata` key of the run, or `()` |

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use rhai::{Array, Dynamic, Engine, FuncRegistration, Map};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::view::{record_view, report_view, run_view, to_dynamic};
use crate::inspect::IncidentReport;
use crate::inspect::js::js_to_string;
use crate::model::json::{parse_iso, truthy};
use crate::model::{Checkpoint, IncidentKind, Run, Step, StepType};

/// What hooks know about one incident. Cheap to clone.
#[derive(Clone)]
pub struct DecisionContext {
    facts: Arc<Facts>,
    incident: Option<IncidentKind>,
}

#[derive(Clone)]
struct Facts {
    run: Run,
    /// The run a continuation came from (a replay's or branch's source), when known.
    source: Option<Run>,
    report: IncidentReport,
    compare_to: Option<String>,
    /// Side-effect levels by tool name that win over the run's tool metadata (test mocks).
    tool_effects: BTreeMap<String, String>,
    run_json: OnceLock<Value>,
    report_json: OnceLock<Value>,
    run_view: OnceLock<Dynamic>,
    report_view: OnceLock<Dynamic>,
    /// The policy view of each of the run's steps, built once: helpers hand out copies.
    step_views: OnceLock<Vec<Dynamic>>,
    digest: OnceLock<String>,
}

impl std::fmt::Debug for DecisionContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionContext")
            .field("run_id", &self.facts.run.id)
            .field("incident", &self.incident)
            .field("compare_to", &self.facts.compare_to)
            .finish()
    }
}

impl DecisionContext {
    pub fn new(run: Run, report: IncidentReport, compare_to: Option<String>) -> DecisionContext {
        DecisionContext::with_tool_effects(run, report, compare_to, BTreeMap::new())
    }

    /// A context in which `tool_effects` (tool name → side-effect level) decides the effect of
    /// those tools instead of the metadata recorded on the run: `salvage test`'s
    /// `mocks.tool_effect`, to ask "what would the plan be if this tool were read-only?".
    pub fn with_tool_effects(
        run: Run,
        report: IncidentReport,
        compare_to: Option<String>,
        tool_effects: BTreeMap<String, String>,
    ) -> DecisionContext {
        DecisionContext {
            facts: Arc::new(Facts {
                run,
                source: None,
                report,
                compare_to,
                tool_effects,
                run_json: OnceLock::new(),
                report_json: OnceLock::new(),
                run_view: OnceLock::new(),
                report_view: OnceLock::new(),
                step_views: OnceLock::new(),
                digest: OnceLock::new(),
            }),
            incident: None,
        }
    }

    /// The same context with the run the continuation came from (see
    /// `checks::continuation_source`); its tool steps after the source checkpoint are what a
    /// resumed continuation runs again.
    pub fn with_source(mut self, source: Option<Run>) -> DecisionContext {
        let facts = Arc::make_mut(&mut self.facts);
        facts.source = source;
        facts.digest = OnceLock::new();
        self
    }

    /// The continuation's source run, when known.
    pub fn source(&self) -> Option<&Run> {
        self.facts.source.as_ref()
    }

    /// The same context once the incident kind is known.
    pub fn with_incident(&self, incident: IncidentKind) -> DecisionContext {
        DecisionContext { facts: self.facts.clone(), incident: Some(incident) }
    }

    pub fn run(&self) -> &Run {
        &self.facts.run
    }

    pub fn report(&self) -> &IncidentReport {
        &self.facts.report
    }

    pub fn incident(&self) -> Option<&IncidentKind> {
        self.incident.as_ref()
    }

    pub fn compare_to(&self) -> Option<&str> {
        self.facts.compare_to.as_deref()
    }

    pub fn run_json(&self) -> &Value {
        self.facts.run_json.get_or_init(|| self.facts.run.to_value())
    }

    pub fn report_json(&self) -> &Value {
        self.facts.report_json.get_or_init(|| self.facts.report.to_value())
    }

    /// The run's policy view (a copy).
    pub fn run_view(&self) -> Dynamic {
        self.facts.run_view.get_or_init(|| run_view(self.run_json())).clone()
    }

    /// The policy view of one of the run's steps (a copy of the one built for the context), or
    /// of any other step.
    fn step_view(&self, step: &Step) -> Dynamic {
        let steps = &self.facts.run.steps;
        let views = self.facts.step_views.get_or_init(|| steps.iter().map(step_view).collect());
        match steps.iter().position(|candidate| std::ptr::eq(candidate, step)) {
            Some(index) => views[index].clone(),
            None => step_view(step),
        }
    }

    /// Every step of the run, as policy views.
    fn step_views(&self) -> Array {
        let steps = &self.facts.run.steps;
        self.facts.step_views.get_or_init(|| steps.iter().map(step_view).collect()).clone()
    }

    /// The report's policy view (a copy).
    pub fn report_view(&self) -> Dynamic {
        self.facts.report_view.get_or_init(|| report_view(self.report_json())).clone()
    }

    pub fn comparison_view(&self) -> Dynamic {
        self.report_json().get("comparison").map_or(Dynamic::UNIT, to_dynamic)
    }

    pub fn tree_view(&self) -> Dynamic {
        self.report_json().get("runTree").map_or(Dynamic::UNIT, to_dynamic)
    }

    pub fn incident_view(&self) -> Dynamic {
        self.incident.as_ref().map_or(Dynamic::UNIT, |kind| Dynamic::from(kind.as_str().to_owned()))
    }

    /// sha256 of what every decision of this plan reads: the run and its report (and the
    /// comparison run's id, and any overridden tool effects). Explanations combine it with each
    /// hook's own arguments.
    pub fn digest(&self) -> &str {
        self.facts.digest.get_or_init(|| {
            let mut hasher = Sha256::new();
            // Serialised straight from the typed values: the JSON trees are built only when a
            // policy reads them.
            hasher.update(serde_json::to_vec(&self.facts.run).unwrap_or_default());
            hasher.update(serde_json::to_vec(&self.facts.report).unwrap_or_default());
            hasher.update(self.facts.compare_to.as_deref().unwrap_or_default().as_bytes());
            for (tool, effect) in &self.facts.tool_effects {
                hasher.update(serde_json::to_vec(&[tool, effect]).unwrap_or_default());
            }
            if let Some(source) = &self.facts.source {
                hasher.update(serde_json::to_vec(&source.to_value()).unwrap_or_default());
            }
            super::hex(&hasher.finalize())
        })
    }

    /// The reference's failure text: `` `${failure?.name || ''} ${failure?.message || ''}` ``,
    /// lower case.
    pub fn failure_text(&self) -> String {
        failure_text(self.facts.run.last_error().map(|error| error.to_value()).as_ref())
    }

    /// Failed steps whose `type` is `step_type`.
    pub fn failed_steps_of_type<'a>(&'a self, step_type: &'a str) -> impl Iterator<Item = &'a Step> + 'a {
        self.facts
            .run
            .failed_steps()
            .filter(move |step| step.step_type.as_ref().is_some_and(|t| t.as_str() == step_type))
    }

    /// The side-effect class of a tool, from its metadata as recorded on the run (tool calls,
    /// the pending approval, `tool_requested` events): `sideEffectLevel`, or `"unknown"`. A
    /// level given to [`DecisionContext::with_tool_effects`] wins.
    pub fn tool_effect(&self, tool_name: &str) -> String {
        if let Some(effect) = self.facts.tool_effects.get(tool_name) {
            return effect.clone();
        }
        let run = &self.facts.run;
        let from_calls = run
            .tool_calls
            .iter()
            .filter(|call| call.tool_name.as_deref().or(call.name.as_deref()) == Some(tool_name))
            .find_map(|call| call.side_effect_level().map(str::to_owned));
        let from_approval = || {
            run.pending_approval()
                .filter(|approval| approval.tool_name.as_deref() == Some(tool_name))
                .and_then(|approval| approval.metadata.as_ref()?.get("sideEffectLevel")?.as_str().map(str::to_owned))
        };
        let from_events = || {
            run.events.iter().filter_map(|event| event.payload.as_ref()).find_map(|payload| {
                (payload.get("toolName")?.as_str()? == tool_name)
                    .then(|| payload.get("metadata")?.get("sideEffectLevel")?.as_str().map(str::to_owned))
                    .flatten()
            })
        };
        let from_source = || {
            self.facts
                .source
                .as_ref()?
                .tool_calls
                .iter()
                .filter(|call| call.tool_name.as_deref().or(call.name.as_deref()) == Some(tool_name))
                .find_map(|call| call.side_effect_level().map(str::to_owned))
        };
        from_calls
            .or_else(from_approval)
            .or_else(from_events)
            .or_else(from_source)
            .unwrap_or_else(|| "unknown".to_owned())
    }

    /// The effect of a step: its tool's for tool and verifier steps, `"unknown"` for workflow
    /// steps (a child may have called anything), `"none"` for the others.
    pub fn step_effect(&self, step: &Step) -> String {
        match step.step_type.as_ref() {
            Some(StepType::Tool) => {
                step.tool_name().map_or_else(|| "unknown".to_owned(), |name| self.tool_effect(name))
            }
            // A workflow step delegates to a child that may call anything; a planning
            // runtime's execution and recovery phases run the plan's actions.
            Some(StepType::WorkflowStep | StepType::Execution | StepType::Recovery) => "unknown".to_owned(),
            _ => "none".to_owned(),
        }
    }

    /// The first failed step that may have had an external effect, else the first failed step.
    pub fn first_failing_step(&self) -> Option<&Step> {
        let run = &self.facts.run;
        run.failed_steps()
            .find(|step| !matches!(self.step_effect(step).as_str(), "none" | "read_only"))
            .or_else(|| run.failed_steps().next())
    }

    /// Checkpoints taken strictly before `step` started, in order. A checkpoint's snapshot lists
    /// the steps that existed when it was taken; without a snapshot, timestamps decide; a
    /// checkpoint taken after a failure never counts.
    pub fn checkpoints_before<'a>(&'a self, step: &'a Step) -> impl Iterator<Item = &'a Checkpoint> + 'a {
        self.facts.run.checkpoints.iter().filter(move |checkpoint| precedes(checkpoint, step))
    }

    /// Tool steps that a run resumed from `checkpoint_id` would run again: the tool steps not in
    /// the checkpoint's snapshot (without a snapshot: started at or after it was taken).
    pub fn tool_steps_after(&self, checkpoint_id: &str) -> Vec<&Step> {
        steps_after(&self.facts.run, checkpoint_id)
            .into_iter()
            .filter(|s| s.step_type == Some(StepType::Tool))
            .collect()
    }

    /// Every step a run resumed from `checkpoint_id` would run again (no such checkpoint: every
    /// step of the run).
    pub fn steps_after(&self, checkpoint_id: &str) -> Vec<&Step> {
        steps_after(&self.facts.run, checkpoint_id)
    }

    /// The tool steps the continuation's source ran after the checkpoint the continuation was
    /// prepared from: what resuming the continuation is about to run again. Empty when the run
    /// is not a continuation or its source is not in the store.
    pub fn source_tool_steps_after(&self) -> Vec<&Step> {
        let Some(source) = &self.facts.source else { return Vec::new() };
        let checkpoint = crate::inspect::checks::continuation_source(&self.facts.run).and_then(|(_, cp)| cp);
        steps_after(source, checkpoint.as_deref().unwrap_or_default())
            .into_iter()
            .filter(|s| s.step_type == Some(StepType::Tool))
            .collect()
    }

    /// Whether `checkpoint`'s state already contains the failure: it is labelled as taken after
    /// the failure, or it was not taken before the first failing step started.
    pub fn taken_after_failure(&self, checkpoint: &Checkpoint) -> bool {
        checkpoint.label.as_ref().is_some_and(|label| label.is_post_failure())
            || self.first_failing_step().is_some_and(|step| !precedes(checkpoint, step))
    }

    /// The last checkpoint strictly before the first failing step; for a failure without a
    /// failed step, the last checkpoint taken before the failure.
    pub fn last_checkpoint_before_failure(&self) -> Option<&Checkpoint> {
        match self.first_failing_step() {
            Some(step) => self.checkpoints_before(step).last(),
            None => self
                .facts
                .run
                .checkpoints
                .iter()
                .rev()
                .filter(|cp| cp.is_object() && cp.id.is_some())
                .find(|cp| !cp.label.as_ref().is_some_and(|label| label.is_post_failure())),
        }
    }
}

/// Whether `checkpoint` was taken before `step` started.
fn precedes(checkpoint: &Checkpoint, step: &Step) -> bool {
    if !checkpoint.is_object() || checkpoint.label.as_ref().is_some_and(|label| label.is_post_failure()) {
        return false;
    }
    if let Some(ids) = checkpoint.snapshot_step_ids() {
        return step.id.as_ref().is_some_and(|id| !ids.contains(id));
    }
    let taken = checkpoint.timestamp.as_deref().and_then(parse_iso);
    let started = step.created_at.as_deref().and_then(parse_iso);
    matches!((taken, started), (Some(taken), Some(started)) if taken <= started)
}

/// The steps of `run` not yet started when `checkpoint_id` was taken (all of them when the run
/// has no such checkpoint).
fn steps_after<'a>(run: &'a Run, checkpoint_id: &str) -> Vec<&'a Step> {
    match run.checkpoint(checkpoint_id) {
        Some(checkpoint) => {
            // Decoded once for all the steps.
            let ids = checkpoint.snapshot_step_ids();
            run.steps.iter().filter(|s| !precedes_or_contains(checkpoint, ids.as_deref(), s)).collect()
        }
        None => run.steps.iter().collect(),
    }
}

/// Whether `step` had started when `checkpoint` was taken (it is in the snapshot).
/// `snapshot_ids`: the checkpoint's [`Checkpoint::snapshot_step_ids`].
fn precedes_or_contains(checkpoint: &Checkpoint, snapshot_ids: Option<&[String]>, step: &Step) -> bool {
    if let Some(ids) = snapshot_ids {
        return step.id.as_ref().is_some_and(|id| ids.contains(id));
    }
    let taken = checkpoint.timestamp.as_deref().and_then(parse_iso);
    let started = step.created_at.as_deref().and_then(parse_iso);
    matches!((taken, started), (Some(taken), Some(started)) if started < taken)
}

/// `` `${failure?.name || ''} ${failure?.message || ''}`.toLowerCase() `` of an error value.
pub fn failure_text(failure: Option<&Value>) -> String {
    let part = |key: &str| {
        failure
            .and_then(|f| match f {
                Value::Object(map) => map.get(key).filter(|v| truthy(v)).map(|v| js_to_string(Some(v))),
                // A string error has no `name`/`message` properties in JavaScript.
                _ => None,
            })
            .unwrap_or_default()
    };
    format!("{} {}", part("name"), part("message")).to_lowercase()
}

/// A step that would run again: `#{ stepId, type, tool, effect, status }`.
fn rerun_view(ctx: &DecisionContext, step: &Step) -> Dynamic {
    let mut map = Map::new();
    map.insert("stepId".into(), optional(step.id.clone(), Dynamic::from));
    map.insert("type".into(), optional(step.step_type.as_ref().map(ToString::to_string), Dynamic::from));
    map.insert("tool".into(), optional(step.tool_name().map(str::to_owned), Dynamic::from));
    map.insert("effect".into(), Dynamic::from(ctx.step_effect(step)));
    map.insert("status".into(), optional(step.status.as_ref().map(ToString::to_string), Dynamic::from));
    Dynamic::from_map(map)
}

fn step_view(step: &Step) -> Dynamic {
    record_view(&step.to_value(), Step::KEYS)
}

/// A checkpoint without its snapshot, plus the ids of the steps the snapshot holds.
fn checkpoint_view(checkpoint: &Checkpoint) -> Dynamic {
    if !checkpoint.is_object() {
        return to_dynamic(&checkpoint.to_value());
    }
    let mut map = Map::new();
    let field = |value: Option<Value>| value.map_or(Dynamic::UNIT, |v| to_dynamic(&v));
    for key in ["id", "label", "status", "timestamp", "payload"] {
        map.insert(key.into(), field(checkpoint.get(key)));
    }
    let step_ids: Array = checkpoint.snapshot_step_ids().unwrap_or_default().into_iter().map(Dynamic::from).collect();
    map.insert("stepIds".into(), Dynamic::from_array(step_ids));
    Dynamic::from_map(map)
}

fn optional<T>(value: Option<T>, view: impl FnOnce(T) -> Dynamic) -> Dynamic {
    value.map_or(Dynamic::UNIT, view)
}

/// The step a policy passes to a helper: a step map (its `id` is looked up on the run) or a
/// step id.
fn find_step<'a>(ctx: &'a DecisionContext, step: &Dynamic) -> Option<&'a Step> {
    let id = if let Some(map) = step.read_lock::<Map>() {
        map.get("id").and_then(|id| id.clone().into_string().ok())
    } else {
        step.clone().into_string().ok()
    }?;
    ctx.facts.run.steps.iter().find(|candidate| candidate.id.as_deref() == Some(id.as_str()))
}

/// Registers the `Context` type, its properties and helpers (with the documentation
/// `salvage policy defs` exports), and the global `failure_text(report)`.
pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<DecisionContext>("Context");
    macro_rules! getter {
        ($name:literal, $ret:literal, $doc:literal, $body:expr) => {
            FuncRegistration::new_getter($name)
                .with_params_info(["ctx: Context", $ret])
                .with_comments([concat!("/// ", $doc)])
                .register_into_engine(engine, $body);
        };
    }
    macro_rules! helper {
        ($name:literal, [$($param:literal),*], $doc:literal, $body:expr) => {
            FuncRegistration::new($name)
                .with_params_info([$($param),*])
                .with_comments([concat!("/// ", $doc)])
                .register_into_engine(engine, $body);
        };
    }
    getter!("run", "map", "The run record (policy view: every modelled key present).", |ctx: &mut DecisionContext| {
        ctx.run_view()
    });
    getter!("report", "map", "The incident report (policy view).", |ctx: &mut DecisionContext| ctx.report_view());
    getter!(
        "incident",
        "string",
        "The incident kind `classify` decided, or `()` while classifying.",
        |ctx: &mut DecisionContext| { ctx.incident_view() }
    );
    getter!(
        "comparison",
        "map",
        "The diff against the known-good run (`--compare-to`), or `()`.",
        |ctx: &mut DecisionContext| { ctx.comparison_view() }
    );
    getter!("tree", "map", "The run tree of the run's lineage root, or `()`.", |ctx: &mut DecisionContext| ctx
        .tree_view());
    getter!("compare_to", "string", "The known-good run's id, or `()`.", |ctx: &mut DecisionContext| {
        optional(ctx.compare_to().map(str::to_owned), Dynamic::from)
    });
    getter!("run_id", "string", "The run's id.", |ctx: &mut DecisionContext| ctx.run().id.clone());
    getter!("status", "string", "The run's status.", |ctx: &mut DecisionContext| ctx.run().status.to_string());
    helper!(
        "failure_text",
        ["ctx: Context", "string"],
        "The last error as `\"<name> <message>\"`, lower case: the text the reference's keyword rules search.",
        |ctx: &mut DecisionContext| ctx.failure_text()
    );
    helper!("error_text", ["ctx: Context", "string"], "Same as `failure_text()`.", |ctx: &mut DecisionContext| {
        ctx.failure_text()
    });
    helper!(
        "failed_steps",
        ["ctx: Context", "array"],
        "The steps whose status is `failed`, in order.",
        |ctx: &mut DecisionContext| -> Array { ctx.run().failed_steps().map(|step| ctx.step_view(step)).collect() }
    );
    helper!(
        "steps",
        ["ctx: Context", "array"],
        "Every step of the run, in order (the same maps as `ctx.run.steps`, without copying the whole run).",
        |ctx: &mut DecisionContext| -> Array { ctx.step_views() }
    );
    helper!(
        "failed_steps_of_type",
        ["ctx: Context", "step_type: string", "array"],
        "The failed steps of one type (`tool`, `verifier`, `workflow_step`, ...).",
        |ctx: &mut DecisionContext, step_type: &str| -> Array {
            ctx.failed_steps_of_type(step_type).map(|step| ctx.step_view(step)).collect()
        }
    );
    helper!(
        "first_failing_step",
        ["ctx: Context", "map"],
        "The first failed step that may have had an external effect, else the first failed step, else `()`.",
        |ctx: &mut DecisionContext| optional(ctx.first_failing_step(), |step| ctx.step_view(step))
    );
    helper!(
        "checkpoints",
        ["ctx: Context", "array"],
        "Every checkpoint: `#{ id, label, status, timestamp, payload, stepIds }` (no snapshot).",
        |ctx: &mut DecisionContext| -> Array { ctx.run().checkpoints.iter().map(checkpoint_view).collect() }
    );
    helper!(
        "checkpoints_before",
        ["ctx: Context", "step: map|string", "array"],
        "The checkpoints taken strictly before a step (given as a step map or its id) started.",
        |ctx: &mut DecisionContext, step: Dynamic| -> Array {
            match find_step(ctx, &step) {
                Some(step) => ctx.checkpoints_before(step).map(checkpoint_view).collect(),
                None => Array::new(),
            }
        }
    );
    helper!(
        "last_checkpoint",
        ["ctx: Context", "map"],
        "The run's last checkpoint, or `()`.",
        |ctx: &mut DecisionContext| { optional(ctx.run().last_checkpoint(), checkpoint_view) }
    );
    helper!(
        "last_checkpoint_before_failure",
        ["ctx: Context", "map"],
        "The last checkpoint strictly before the first failing step (for a failure without a failed step: before the failure), or `()`.",
        |ctx: &mut DecisionContext| optional(ctx.last_checkpoint_before_failure(), checkpoint_view)
    );
    helper!(
        "tools_after",
        ["ctx: Context", "checkpoint_id: string", "array"],
        "The tool steps a run resumed from that checkpoint would run again: `#{ tool, effect, stepId, status }`.",
        |ctx: &mut DecisionContext, checkpoint_id: Dynamic| -> Array {
            let id = checkpoint_id.into_string().unwrap_or_default();
            ctx.tool_steps_after(&id)
                .into_iter()
                .map(|step| {
                    let tool = step.tool_name().unwrap_or_default().to_owned();
                    let mut map = Map::new();
                    map.insert("stepId".into(), optional(step.id.clone(), Dynamic::from));
                    map.insert("effect".into(), Dynamic::from(ctx.tool_effect(&tool)));
                    map.insert("tool".into(), Dynamic::from(tool));
                    map.insert("status".into(), optional(step.status.as_ref().map(ToString::to_string), Dynamic::from));
                    Dynamic::from_map(map)
                })
                .collect()
        }
    );
    helper!(
        "steps_after",
        ["ctx: Context", "checkpoint_id: string", "array"],
        "Every step a run resumed from that checkpoint would run again, any type: `#{ stepId, type, tool, effect, status }` (`effect` as `tool_effect`: tools' metadata, `unknown` for workflow and planning execution steps).",
        |ctx: &mut DecisionContext, checkpoint_id: Dynamic| -> Array {
            let id = checkpoint_id.into_string().unwrap_or_default();
            ctx.steps_after(&id).into_iter().map(|step| rerun_view(ctx, step)).collect()
        }
    );
    helper!(
        "source_tools_after",
        ["ctx: Context", "array"],
        "For a continuation (a replay, a branch, a hand-off): the tool steps its source ran after the checkpoint it was prepared from — what resuming it runs again. Empty otherwise.",
        |ctx: &mut DecisionContext| -> Array {
            ctx.source_tool_steps_after().into_iter().map(|step| rerun_view(ctx, step)).collect()
        }
    );
    helper!(
        "tool_effect",
        ["ctx: Context", "step_or_tool: map|string", "string"],
        "A tool's `sideEffectLevel` from its recorded metadata (`external_write`, `read_only`, `none`, ...); `\"none\"` for steps that call no tool; `\"unknown\"` when nothing says.",
        |ctx: &mut DecisionContext, subject: Dynamic| -> String {
            if let Some(step) = find_step(ctx, &subject) {
                return ctx.step_effect(step);
            }
            if let Some(map) = subject.read_lock::<Map>() {
                // A step that is not on the run (e.g. from another run's report): use its payload.
                let tool =
                    map.get("payload").and_then(|p| p.read_lock::<Map>()?.get("toolName")?.clone().into_string().ok());
                return tool.map_or_else(|| "unknown".to_owned(), |tool| ctx.tool_effect(&tool));
            }
            match subject.into_string() {
                Ok(tool) => ctx.tool_effect(&tool),
                Err(_) => "unknown".to_owned(),
            }
        }
    );
    helper!(
        "has_event",
        ["ctx: Context", "event_type: string", "bool"],
        "Whether the run recorded an event of this type.",
        |ctx: &mut DecisionContext, event_type: &str| -> bool {
            ctx.run().events.iter().any(|event| event.event_type.as_ref().is_some_and(|t| t.as_str() == event_type))
        }
    );
    helper!(
        "event_types",
        ["ctx: Context", "array"],
        "The run's event types, in order.",
        |ctx: &mut DecisionContext| -> Array {
            ctx.run()
                .events
                .iter()
                .filter_map(|event| event.event_type.as_ref())
                .map(|t| Dynamic::from(t.as_str().to_owned()))
                .collect()
        }
    );
    helper!(
        "metadata",
        ["ctx: Context", "key: string", "?"],
        "A key of the run's `metadata` (`transport`, `queue`, `workerId`, `workflowId`, ...), or `()`.",
        |ctx: &mut DecisionContext, key: &str| -> Dynamic {
            if key == "lineage" {
                return to_dynamic(&ctx.run().lineage().reference_value());
            }
            ctx.run().metadata.get(key).map_or(Dynamic::UNIT, to_dynamic)
        }
    );
    helper!(
        "failure_text",
        ["report: map", "string"],
        "`failure_text()` of a report: for `classify(report)`, which gets no `ctx`.",
        |report: Map| -> String {
            failure_text(report.get("failure").map(super::view::to_json).as_ref().filter(|v| !v.is_null()))
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn failure_text_is_the_reference_text() {
        assert_eq!(
            failure_text(Some(&json!({"name": "QueueWorkerError", "message": "Lease LOST"}))),
            "queueworkererror lease lost"
        );
        assert_eq!(failure_text(Some(&json!({"message": "Remote down"}))), " remote down");
        assert_eq!(failure_text(Some(&json!("queue timeout"))), " ", "a string error has no name or message");
        assert_eq!(failure_text(None), " ");
        assert_eq!(failure_text(Some(&json!({"name": 7, "message": ""}))), "7 ");
    }
}
