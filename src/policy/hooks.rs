//! Calling policy hooks, and the decisions they make.
//!
//! Every decision carries an [`Explanation`]: which hook decided, in which file, under which
//! policy digest, on which inputs, with what result and why. Decisions **fail closed**: a hook
//! that errors, runs past its limits or deadline, or returns the wrong type never lets a step
//! through — its decision becomes "approval required", and the explanation says what went wrong.

use rhai::{CallFnOptions, Dynamic, EvalAltResult, Map, Position, Scope};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::context::DecisionContext;
use super::engine::{self, Deadline, LIMITS, is_deadline_exceeded};
use super::view::to_json;
use super::{PolicyFunction, PolicySet};
use crate::limits::validate_approver_name;
use crate::model::IncidentKind;

/// Why a decision came out the way it did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// `classify`, `choose_checkpoint`, `requires_approval`, `approvers`, `recovery_policy`, a
    /// playbook's own hook name, `guard`, `playbook`, or `default` when no hook was involved.
    pub hook: String,
    /// The policy file that decided (`null` for playbook rules and defaults).
    pub policy_file: Option<String>,
    /// Digest of the whole policy set in force.
    pub policy_digest: String,
    /// sha256 over the decision's inputs.
    pub inputs_digest: String,
    pub result: Value,
    pub reason: Option<String>,
    /// Set when the hook failed and the decision fell back to the safe side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For checkpoint choices: every checkpoint considered, and why it was or was not chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<CheckpointCandidate>>,
}

impl Explanation {
    /// A decision taken without a policy hook (a playbook rule or a built-in default).
    pub fn rule(
        hook: &str,
        policies: &PolicySet,
        inputs_digest: &str,
        result: Value,
        reason: impl Into<String>,
    ) -> Explanation {
        Explanation {
            hook: hook.to_owned(),
            policy_file: None,
            policy_digest: policies.digest().to_owned(),
            inputs_digest: inputs_digest.to_owned(),
            result,
            reason: Some(reason.into()),
            error: None,
            candidates: None,
        }
    }

    pub fn failed_closed(&self) -> bool {
        self.error.is_some()
    }
}

/// One checkpoint considered by a checkpoint choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointCandidate {
    pub checkpoint_id: String,
    pub label: Option<String>,
    pub chosen: bool,
    /// Why it was chosen or passed over.
    pub reason: String,
}

/// A decision and its explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<T> {
    pub value: T,
    pub explanation: Explanation,
}

/// Why calling a hook failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("no function `{name}` with {arity} parameter(s) in the policy set")]
    Missing { name: String, arity: usize },
    #[error("{location}: {message}")]
    Failed { location: String, message: String, deadline_exceeded: bool },
    #[error("`{hook}` returned {found}, expected {expected}")]
    WrongType { hook: String, expected: &'static str, found: String },
}

/// The result of one hook call.
pub struct HookCall<'a> {
    pub value: Dynamic,
    pub function: &'a PolicyFunction,
}

/// Calls `name` with `args` in the sandbox, under the default deadline.
pub fn call<'a>(policies: &'a PolicySet, name: &str, args: Vec<Dynamic>) -> Result<HookCall<'a>, HookError> {
    let (function, ast) = policies
        .function(name, args.len())
        .ok_or_else(|| HookError::Missing { name: name.to_owned(), arity: args.len() })?;
    let _deadline = Deadline::start(LIMITS.default_deadline);
    // The AST is evaluated before the call only to define the file's constants (`global::NAME`):
    // loading guarantees a policy file's top level holds nothing but `fn` and literal `const`.
    let options = CallFnOptions::new().eval_ast(true).rewind_scope(true);
    let mut scope = Scope::new();
    let span = tracing::info_span!(
        "policy_hook",
        hook = name,
        policy_digest = crate::telemetry::digest_label(policies.digest()),
        file = %function.file.display(),
        line = function.line,
        error = tracing::field::Empty,
    );
    let _entered = span.enter();
    let started = std::time::Instant::now();
    let called = engine::engine().call_fn_with_options::<Dynamic>(options, &mut scope, ast, name, args);
    crate::telemetry::policy_hook_called(name, policies.digest(), started.elapsed());
    match called {
        Ok(value) => Ok(HookCall { value, function }),
        Err(error) => {
            let deadline_exceeded = is_deadline_exceeded(&error);
            let (location, message) = if deadline_exceeded {
                (format!("{}:{}", function.file.display(), function.line), deadline_message())
            } else {
                locate_failure(policies, function, &error)
            };
            span.record("error", format!("{location}: {message}"));
            Err(HookError::Failed { location, deadline_exceeded, message })
        }
    }
}

fn deadline_message() -> String {
    format!(
        "ran longer than the time limit of {} ms and was stopped (a policy decides at once: bound its loops)",
        LIMITS.default_deadline.as_millis()
    )
}

/// Where a hook's evaluation failed and why, each position in the file it is in.
///
/// Rhai evaluates the whole set merged into one script, so its own message names the merged
/// script's source (the last file) for every call site; here the chain of calls is followed
/// from the hook's file, each callee looked up in the file that defines it. The location is
/// where the error happened; the message adds each call that led there.
fn locate_failure(policies: &PolicySet, hook: &PolicyFunction, error: &EvalAltResult) -> (String, String) {
    let at = |file: &std::path::Path, position: Position| match (position.line(), position.position()) {
        (Some(line), Some(column)) => format!("{}:{line}:{column}", file.display()),
        (Some(line), None) => format!("{}:{line}", file.display()),
        _ => format!("{}:{}", file.display(), hook.line),
    };
    let mut file = hook.file.clone();
    let mut calls = Vec::new();
    let mut current = error;
    // Bounded by the engine's call depth limit, as the error chain is.
    while let EvalAltResult::ErrorInFunctionCall(name, _, inner, position) = current {
        calls.push(format!("in `{name}`, called at {}", at(&file, *position)));
        if let Some(defining) = policies.file_defining(name) {
            file = defining.to_path_buf();
        }
        current = inner;
    }
    let position = current.position();
    let mut message = current.to_string();
    // Rhai ends the text with the position, which `location` now gives with the right file.
    let suffix = format!(" ({position})");
    if !position.is_none() && message.ends_with(&suffix) {
        message.truncate(message.len() - suffix.len());
    }
    for call in calls.iter().rev() {
        message.push_str("; ");
        message.push_str(call);
    }
    (at(&file, position), message)
}

/// sha256 over a context digest and a decision's own arguments.
pub fn inputs_digest(ctx: &DecisionContext, extra: &[&Value]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(ctx.digest().as_bytes());
    for value in extra {
        hasher.update(serde_json::to_vec(value).unwrap_or_default());
    }
    super::hex(&hasher.finalize())
}

fn explanation(
    hook: &str,
    policies: &PolicySet,
    function: Option<&PolicyFunction>,
    inputs: String,
    result: Value,
    reason: Option<String>,
    error: Option<String>,
) -> Explanation {
    Explanation {
        hook: hook.to_owned(),
        policy_file: function.map(|f| f.file.display().to_string()),
        policy_digest: policies.digest().to_owned(),
        inputs_digest: inputs,
        result,
        reason,
        error,
        candidates: None,
    }
}

/// Splits a hook result into `(value, reason)`: either a bare value, or a map with the value
/// under `key` and an optional `reason`.
fn value_and_reason(result: Dynamic, key: &str) -> (Dynamic, Option<String>) {
    if let Some(map) = result.read_lock::<Map>()
        && map.contains_key(key)
    {
        let reason = map.get("reason").and_then(|r| r.clone().into_string().ok());
        return (map.get(key).cloned().unwrap_or(Dynamic::UNIT), reason);
    }
    (result, None)
}

fn type_name(value: &Dynamic) -> String {
    format!("{} ({value})", value.type_name())
}

/// The outcome of `classify(report, ctx)` (or `classify(report)` when the set defines only the
/// one-parameter form): the incident kind, or — when the hook fails — `None`, in which case
/// every step of the plan must require approval.
pub fn classify(policies: &PolicySet, ctx: &DecisionContext) -> Decision<Option<IncidentKind>> {
    let inputs = inputs_digest(ctx, &[]);
    let args = if policies.function("classify", 2).is_some() {
        vec![ctx.report_view(), Dynamic::from(ctx.clone())]
    } else {
        vec![ctx.report_view()]
    };
    let (value, reason, error, function) = match call(policies, "classify", args) {
        Err(error) => (None, None, Some(error.to_string()), None),
        Ok(call) => {
            let (kind, reason) = value_and_reason(call.value, "kind");
            match kind.clone().into_string() {
                Ok(kind) if !kind.is_empty() => (Some(IncidentKind::parse(&kind)), reason, None, Some(call.function)),
                _ => (
                    None,
                    reason,
                    Some(
                        HookError::WrongType {
                            hook: "classify".into(),
                            expected: "an incident kind string",
                            found: type_name(&kind),
                        }
                        .to_string(),
                    ),
                    Some(call.function),
                ),
            }
        }
    };
    let result = value.as_ref().map_or(Value::Null, |kind| Value::String(kind.to_string()));
    Decision { explanation: explanation("classify", policies, function, inputs, result, reason, error), value }
}

/// Whether a person must approve `step`. Fails closed: any failure means "required".
pub fn requires_approval(policies: &PolicySet, hook: &str, step: &Value, ctx: &DecisionContext) -> Decision<bool> {
    let inputs = inputs_digest(ctx, &[step]);
    let args = vec![super::view::to_dynamic(step), Dynamic::from(ctx.clone())];
    let (required, reason, error, function) = match call(policies, hook, args) {
        Err(error) => (true, None, Some(error.to_string()), None),
        Ok(call) => {
            let (value, reason) = value_and_reason(call.value, "required");
            match value.as_bool() {
                Ok(required) => (required, reason, None, Some(call.function)),
                Err(_) => (
                    true,
                    reason,
                    Some(
                        HookError::WrongType {
                            hook: hook.into(),
                            expected: "a bool or #{ required, reason }",
                            found: type_name(&value),
                        }
                        .to_string(),
                    ),
                    Some(call.function),
                ),
            }
        }
    };
    let reason = match (&error, reason) {
        (Some(_), _) => Some("the policy failed, so a person must approve (fail closed)".to_owned()),
        (None, reason) => reason,
    };
    Decision {
        explanation: explanation(hook, policies, function, inputs, Value::Bool(required), reason, error),
        value: required,
    }
}

/// Who may approve `step`, and whether the person who started the execution may approve it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Approvers {
    pub names: Vec<String>,
    pub allow_self_approval: bool,
}

/// `approvers(step, ctx)`: an array of names, or `#{ approvers: [...], allow_self_approval,
/// reason }`. Fails closed: on failure nobody is listed, so nobody can approve.
pub fn approvers(policies: &PolicySet, hook: &str, step: &Value, ctx: &DecisionContext) -> Decision<Approvers> {
    let inputs = inputs_digest(ctx, &[step]);
    let args = vec![super::view::to_dynamic(step), Dynamic::from(ctx.clone())];
    let parse = |value: &Dynamic| -> Option<Vec<String>> {
        value.read_lock::<rhai::Array>()?.iter().map(|name| name.clone().into_string().ok()).collect()
    };
    let (approvers, reason, error, function) = match call(policies, hook, args) {
        Err(error) => (Approvers::default(), None, Some(error.to_string()), None),
        Ok(call) => {
            let allow_self = call
                .value
                .read_lock::<Map>()
                .and_then(|map| map.get("allow_self_approval").and_then(|v| v.as_bool().ok()))
                .unwrap_or(false);
            let (value, reason) = value_and_reason(call.value, "approvers");
            match parse(&value) {
                // A blank name would let `--as ""` approve: the whole answer is refused (fail
                // closed, nobody can approve), like any other wrong result.
                Some(names) if let Some(bad) = names.iter().find_map(|n| validate_approver_name(n).err()) => (
                    Approvers::default(),
                    reason,
                    Some(format!("`{hook}` returned an invalid approver: {bad}")),
                    Some(call.function),
                ),
                Some(names) => {
                    (Approvers { names, allow_self_approval: allow_self }, reason, None, Some(call.function))
                }
                None => (
                    Approvers::default(),
                    reason,
                    Some(
                        HookError::WrongType {
                            hook: hook.into(),
                            expected: "an array of names",
                            found: type_name(&value),
                        }
                        .to_string(),
                    ),
                    Some(call.function),
                ),
            }
        }
    };
    let result = serde_json::to_value(&approvers).unwrap_or(Value::Null);
    Decision { explanation: explanation(hook, policies, function, inputs, result, reason, error), value: approvers }
}

/// `hook(ctx)` choosing a checkpoint: a checkpoint id, `()` for none, or `#{ checkpoint,
/// reason }`. The id must name a checkpoint of the run. Fails closed: on failure there is no
/// checkpoint and the step requires approval.
pub fn choose_checkpoint(policies: &PolicySet, hook: &str, ctx: &DecisionContext) -> Decision<Option<String>> {
    let inputs = inputs_digest(ctx, &[]);
    let (value, reason, error, function) = match call(policies, hook, vec![Dynamic::from(ctx.clone())]) {
        Err(error) => (None, None, Some(error.to_string()), None),
        Ok(call) => {
            let (value, reason) = value_and_reason(call.value, "checkpoint");
            if value.is_unit() {
                (None, reason, None, Some(call.function))
            } else {
                match value.clone().into_string() {
                    Ok(id) if ctx.run().checkpoint(&id).is_some() => (Some(id), reason, None, Some(call.function)),
                    Ok(id) => (
                        None,
                        reason,
                        Some(format!("`{hook}` chose checkpoint \"{id}\", which the run does not have")),
                        Some(call.function),
                    ),
                    Err(_) => (
                        None,
                        reason,
                        Some(
                            HookError::WrongType {
                                hook: hook.into(),
                                expected: "a checkpoint id or ()",
                                found: type_name(&value),
                            }
                            .to_string(),
                        ),
                        Some(call.function),
                    ),
                }
            }
        }
    };
    let result = value.as_ref().map_or(Value::Null, |id| Value::String(id.clone()));
    let mut explanation = explanation(hook, policies, function, inputs, result, reason, error);
    explanation.candidates = Some(candidates(ctx, value.as_deref()));
    Decision { explanation, value }
}

/// Every checkpoint of the run, with why it was or was not the one chosen.
pub fn candidates(ctx: &DecisionContext, chosen: Option<&str>) -> Vec<CheckpointCandidate> {
    let run = ctx.run();
    let failing = ctx.first_failing_step();
    let before_failure: Vec<&str> = failing
        .map(|step| ctx.checkpoints_before(step).filter_map(|cp| cp.id.as_deref()).collect())
        .unwrap_or_default();
    let chosen_index = chosen.and_then(|id| run.checkpoints.iter().position(|cp| cp.id.as_deref() == Some(id)));
    run.checkpoints
        .iter()
        .enumerate()
        .filter_map(|(index, cp)| {
            let id = cp.id.clone()?;
            let label = cp.label.as_ref().map(ToString::to_string);
            let is_chosen = chosen == Some(id.as_str());
            let after_failure = ctx.taken_after_failure(cp);
            let reason = if is_chosen {
                match failing.and_then(|step| step.id.clone()) {
                    Some(step) if before_failure.contains(&id.as_str()) => {
                        format!("chosen: taken before the failing step {step} started")
                    }
                    Some(step) => format!("chosen, although it was taken after the failing step {step} started"),
                    None => "chosen".to_owned(),
                }
            } else if after_failure {
                match failing.and_then(|step| step.id.clone()) {
                    Some(step) => {
                        format!("taken after the failing step {step} started: its state contains the failure")
                    }
                    None => "taken after the run failed: its state contains the failure".to_owned(),
                }
            } else if chosen_index.is_some_and(|chosen| index < chosen) {
                "an earlier checkpoint than the one chosen (more work would be repeated)".to_owned()
            } else if chosen_index.is_some() {
                "a later checkpoint than the one chosen".to_owned()
            } else {
                "not chosen".to_owned()
            };
            Some(CheckpointCandidate { checkpoint_id: id, label, chosen: is_chosen, reason })
        })
        .collect()
}

/// `recovery_policy(ctx)`: extra flags of the plan's `recoveryPolicy` (a map of booleans).
/// `None` when the set does not define the hook. A failing hook yields no flags and an error.
pub fn recovery_policy(
    policies: &PolicySet,
    ctx: &DecisionContext,
) -> Option<Decision<serde_json::Map<String, Value>>> {
    policies.function("recovery_policy", 1)?;
    let inputs = inputs_digest(ctx, &[]);
    let (flags, reason, error, function) = match call(policies, "recovery_policy", vec![Dynamic::from(ctx.clone())]) {
        Err(error) => (serde_json::Map::new(), None, Some(error.to_string()), None),
        Ok(call) => match to_json(&call.value) {
            Value::Object(map) => (map, None, None, Some(call.function)),
            other => (
                serde_json::Map::new(),
                None,
                Some(
                    HookError::WrongType {
                        hook: "recovery_policy".into(),
                        expected: "a map",
                        found: other.to_string(),
                    }
                    .to_string(),
                ),
                Some(call.function),
            ),
        },
    };
    Some(Decision {
        explanation: explanation(
            "recovery_policy",
            policies,
            function,
            inputs,
            Value::Object(flags.clone()),
            reason,
            error,
        ),
        value: flags,
    })
}

/// The hook API, as comments for the top of the `.d.rhai` definitions file
/// (`salvage policy defs`): the functions a policy set implements.
pub const HOOK_API: &str = r#"// salvage policy hooks — the functions a policy set implements (any file of the directory).
// Every hook may return its value alone or a map with a `reason` the plan shows.
//
// fn classify(report, ctx) -> string | #{ kind: string, reason: string }
//     The incident kind (approval_blocked, paused_replay, workflow_child_failure,
//     queue_worker_failure, service_handoff_failure, tool_failure, generic_failure,
//     generic_recovery, verifier_failure, planning_failure, replay_failure, approval_denied,
//     paused_run, no_incident, or your own). `classify(report)` (one parameter) also works.
//     A playbook may match a kind of your own when `classify` returns it as a literal
//     ("rate_limited" or #{ kind: "rate_limited", ... }) or a file declares it:
//     const INCIDENT_KINDS = ["rate_limited"];
// fn choose_checkpoint(ctx) -> string | () | #{ checkpoint: string | (), reason: string }
//     The checkpoint a branch or replay starts from (named by `checkpoint: policy.NAME`).
// fn requires_approval(step, ctx) -> bool | #{ required: bool, reason: string }
//     Whether a person must approve `step` (named by `approval: policy.NAME`).
// fn approvers(step, ctx) -> array | #{ approvers: array, allow_self_approval: bool, reason: string }
//     Who may approve `step` (named by `approvers: policy.NAME`, or used by default).
// fn recovery_policy(ctx) -> map            (optional)
//     Flags for the plan's `recoveryPolicy`; without it they are read off the plan.
//
// `step` is #{ id, action, catalogAction, effect, scope, priority, reason, payload, target, incident }.
// `ctx` is a Context: its properties and helpers are declared below. Policies decide; they
// cannot write anything. A hook that fails, runs too long or returns the wrong type fails
// closed: the step requires approval and the plan records the error.
"#;
