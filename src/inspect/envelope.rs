//! `DistributedRunEnvelope` (format version 1.0): the payload that hands a run to another
//! process or service for continuation.
//!
//! [`create`], [`validate`] and [`parse`] behave exactly like the reference. The reference
//! checks nothing else before continuing a run; [`check_envelope_request`] adds the checks a
//! receiver needs (known action and runtime kind, the run and checkpoint exist, the envelope is
//! not stale), for the CLI to call before acting on an envelope.

use serde::Serialize;
use serde_json::{Map, Value};

use super::InspectError;
use super::js::{js_key_order, js_to_string, prop};
use crate::model::json::{now_iso, truthy};
use crate::model::{Run, RunStatus};

pub const SCHEMA_VERSION: &str = "1.0";
pub const FORMAT: &str = "agnostic-agents-distributed-run-envelope";

/// Actions a receiving runtime can carry out (`continueDistributedRun`).
pub const KNOWN_ACTIONS: [&str; 3] = ["resume", "branch", "replay"];
/// Runtimes that can continue a run (the planning runtime cannot).
pub const KNOWN_RUNTIME_KINDS: [&str; 2] = ["agent", "workflow"];

/// An envelope as [`create`] builds it (key order as the reference's).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DistributedRunEnvelope {
    pub schema_version: String,
    pub format: String,
    pub exported_at: String,
    pub runtime_kind: String,
    pub action: String,
    pub run_id: String,
    pub checkpoint_id: Option<String>,
    pub status: RunStatus,
    /// The run's lineage (the reference's five keys).
    pub lineage: Value,
    /// The caller's metadata, then `sourceRunId` (always the run's id).
    pub metadata: Map<String, Value>,
}

impl DistributedRunEnvelope {
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Options of [`create`]; `None` takes the reference's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvelopeOptions {
    /// Default `agent`.
    pub runtime_kind: Option<String>,
    /// Default `resume`.
    pub action: Option<String>,
    pub checkpoint_id: Option<String>,
    pub metadata: Map<String, Value>,
}

/// `DistributedRunEnvelope.create(run, options)`. Like the reference, it checks neither the
/// action, the runtime kind nor the checkpoint (see [`check_envelope_request`]).
pub fn create(run: &Run, options: EnvelopeOptions) -> DistributedRunEnvelope {
    let mut metadata = options.metadata;
    metadata.insert("sourceRunId".into(), Value::String(run.id.clone()));
    DistributedRunEnvelope {
        schema_version: SCHEMA_VERSION.to_owned(),
        format: FORMAT.to_owned(),
        exported_at: now_iso(),
        runtime_kind: options.runtime_kind.unwrap_or_else(|| "agent".to_owned()),
        action: options.action.unwrap_or_else(|| "resume".to_owned()),
        run_id: run.id.clone(),
        checkpoint_id: options.checkpoint_id,
        status: run.status.clone(),
        lineage: run.lineage().reference_value(),
        metadata: js_key_order(metadata),
    }
}

/// `{valid, errors}` of [`validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvelopeValidation {
    pub valid: bool,
    pub errors: Vec<String>,
}

/// `DistributedRunEnvelope.validate(envelope)`: the reference's checks and messages, in order.
pub fn validate(envelope: &Value) -> EnvelopeValidation {
    if !truthy(envelope) || !matches!(envelope, Value::Object(_) | Value::Array(_)) {
        return EnvelopeValidation { valid: false, errors: vec!["Envelope payload must be an object.".to_owned()] };
    }
    let mut errors = Vec::new();
    let field = |key: &str| prop(envelope, key);
    if field("schemaVersion").as_ref().and_then(Value::as_str) != Some(SCHEMA_VERSION) {
        let shown = field("schemaVersion").filter(truthy).map(|v| js_to_string(Some(&v))).unwrap_or_default();
        errors.push(format!("Unsupported schemaVersion \"{shown}\"."));
    }
    if field("format").as_ref().and_then(Value::as_str) != Some(FORMAT) {
        errors.push("Unsupported distributed run envelope format.".to_owned());
    }
    for (key, message) in [
        ("runtimeKind", "runtimeKind is required."),
        ("action", "action is required."),
        ("runId", "runId is required."),
    ] {
        if !field(key).is_some_and(|value| truthy(&value)) {
            errors.push(message.to_owned());
        }
    }
    EnvelopeValidation { valid: errors.is_empty(), errors }
}

/// `DistributedRunEnvelope.parse(envelope)`: the envelope itself when valid.
pub fn parse(envelope: &Value) -> Result<&Value, InspectError> {
    let validation = validate(envelope);
    if validation.valid { Ok(envelope) } else { Err(InspectError::InvalidEnvelope { errors: validation.errors }) }
}

/// What a receiver found wrong (`errors`: do not act) or suspicious (`warnings`) about an
/// envelope it is asked to continue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EnvelopeRequestCheck {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl EnvelopeRequestCheck {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Checks an envelope the way a receiver should before acting on it, beyond [`validate`]:
/// - `receiver` (`agent` or `workflow`), when given, must match the envelope's runtime kind
///   (with the reference runtimes' own messages);
/// - the runtime kind and the action must be ones a runtime can carry out;
/// - `run` is the envelope's run as found in the receiver's store (`None`: not found);
/// - the checkpoint, when the envelope names one, must exist on that run;
/// - a status or lineage that differs from the stored run is a warning (stale envelope), as
///   is a resume that the runtime would silently ignore.
///
/// The errors come in the order the reference's continuation would meet them.
pub fn check_envelope_request(envelope: &Value, run: Option<&Run>, receiver: Option<&str>) -> EnvelopeRequestCheck {
    let mut check = EnvelopeRequestCheck { errors: validate(envelope).errors, warnings: Vec::new() };
    if !check.errors.is_empty() {
        return check;
    }
    let text = |key: &str| js_to_string(prop(envelope, key).as_ref());
    let runtime_kind = text("runtimeKind");
    let action = text("action");
    let run_id = text("runId");
    match receiver {
        Some("agent") if runtime_kind != "agent" => {
            check.errors.push(format!("Envelope runtimeKind \"{runtime_kind}\" is not valid for Agent."));
        }
        Some("workflow") if runtime_kind != "workflow" => check.errors.push(format!(
            "Distributed run envelope runtime \"{runtime_kind}\" cannot be continued by WorkflowRunner."
        )),
        _ if !KNOWN_RUNTIME_KINDS.contains(&runtime_kind.as_str()) => check.errors.push(format!(
            "Unsupported distributed run envelope runtime \"{runtime_kind}\" (expected one of: {}).",
            KNOWN_RUNTIME_KINDS.join(", ")
        )),
        _ => {}
    }
    if !KNOWN_ACTIONS.contains(&action.as_str()) {
        check.errors.push(format!("Unsupported distributed run action \"{action}\"."));
    }
    let Some(run) = run else {
        check.errors.push(format!("Run \"{run_id}\" not found."));
        return check;
    };
    if run.id != run_id {
        check.errors.push(format!("The envelope is for run \"{run_id}\", not for run \"{}\".", run.id));
        return check;
    }
    if let Some(checkpoint_id) = prop(envelope, "checkpointId").filter(truthy) {
        let found = run.checkpoints.iter().any(|checkpoint| checkpoint.get("id").as_ref() == Some(&checkpoint_id));
        if !found && action != "resume" {
            check.errors.push(format!(
                "Checkpoint \"{}\" not found on run \"{}\".",
                js_to_string(Some(&checkpoint_id)),
                run.id
            ));
        } else if !found {
            check.warnings.push(format!(
                "Checkpoint \"{}\" is not on run \"{}\"; a resume does not use it.",
                js_to_string(Some(&checkpoint_id)),
                run.id
            ));
        }
    }
    if let Some(status) = prop(envelope, "status").filter(truthy)
        && status.as_str() != Some(run.status.as_str())
    {
        check.warnings.push(format!(
            "The envelope says the run is \"{}\" but the store has \"{}\": the envelope may be stale.",
            js_to_string(Some(&status)),
            run.status
        ));
    }
    if let Some(lineage) = prop(envelope, "lineage").filter(truthy)
        && lineage != run.lineage().reference_value()
    {
        check.warnings.push("The envelope's lineage differs from the stored run's lineage.".to_owned());
    }
    if action == "resume" {
        let resumable = match runtime_kind.as_str() {
            "agent" => matches!(run.status, RunStatus::Paused | RunStatus::WaitingForApproval),
            _ => !matches!(run.status, RunStatus::Completed | RunStatus::Cancelled),
        };
        if !resumable {
            check.warnings.push(format!(
                "Run \"{}\" is {}: the {runtime_kind} runtime returns it unchanged instead of resuming it.",
                run.id, run.status
            ));
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid_envelope() -> Value {
        json!({"schemaVersion": "1.0", "format": FORMAT, "runtimeKind": "agent", "action": "replay", "runId": "r1",
               "checkpointId": "r1:checkpoint:1", "status": "completed"})
    }

    #[test]
    fn validation_messages_come_in_the_reference_order() {
        assert_eq!(validate(&json!(null)).errors, ["Envelope payload must be an object."]);
        assert_eq!(validate(&json!("text")).errors, ["Envelope payload must be an object."]);
        assert_eq!(
            validate(&json!({})).errors,
            [
                "Unsupported schemaVersion \"\".",
                "Unsupported distributed run envelope format.",
                "runtimeKind is required.",
                "action is required.",
                "runId is required."
            ]
        );
        assert_eq!(
            validate(&json!({"schemaVersion": 1, "format": FORMAT, "runtimeKind": "a", "action": "b", "runId": "c"}))
                .errors,
            ["Unsupported schemaVersion \"1\"."]
        );
        assert!(validate(&valid_envelope()).valid);
        assert_eq!(validate(&json!([])).errors.len(), 5, "an array is an object to JavaScript");
    }

    #[test]
    fn create_applies_defaults_and_source_run_id_wins() {
        let run = Run::from_value(json!({"id": "r1", "status": "failed"})).unwrap_or_else(|e| panic!("{e}"));
        let metadata: Map<String, Value> =
            serde_json::from_value(json!({"sourceRunId": "spoofed", "queue": "q"})).unwrap_or_default();
        let envelope = create(&run, EnvelopeOptions { metadata, ..EnvelopeOptions::default() });
        let value = envelope.to_value();
        assert_eq!(value["runtimeKind"], "agent");
        assert_eq!(value["action"], "resume");
        assert_eq!(value["checkpointId"], Value::Null);
        assert_eq!(value["metadata"], json!({"sourceRunId": "r1", "queue": "q"}));
        let keys: Vec<&String> = value.as_object().map(|m| m.keys().collect()).unwrap_or_default();
        assert_eq!(
            keys,
            [
                "schemaVersion",
                "format",
                "exportedAt",
                "runtimeKind",
                "action",
                "runId",
                "checkpointId",
                "status",
                "lineage",
                "metadata"
            ]
        );
        assert!(validate(&value).valid);
    }

    #[test]
    fn the_request_check_catches_what_the_reference_lets_through() {
        let run =
            Run::from_value(json!({"id": "r1", "status": "completed", "checkpoints": [{"id": "r1:checkpoint:1"}]}))
                .unwrap_or_else(|e| panic!("{e}"));
        let ok = check_envelope_request(&valid_envelope(), Some(&run), Some("agent"));
        assert!(ok.is_ok(), "{ok:?}");
        let mut unknown = valid_envelope();
        unknown["action"] = json!("migrate");
        unknown["checkpointId"] = json!("r1:checkpoint:9");
        let check = check_envelope_request(&unknown, Some(&run), None);
        assert_eq!(
            check.errors,
            [
                "Unsupported distributed run action \"migrate\".",
                "Checkpoint \"r1:checkpoint:9\" not found on run \"r1\"."
            ]
        );
        let wrong_receiver = check_envelope_request(&valid_envelope(), Some(&run), Some("workflow"));
        assert_eq!(
            wrong_receiver.errors,
            ["Distributed run envelope runtime \"agent\" cannot be continued by WorkflowRunner."]
        );
        assert_eq!(check_envelope_request(&valid_envelope(), None, None).errors, ["Run \"r1\" not found."]);
        let mut resume = valid_envelope();
        resume["action"] = json!("resume");
        let noop = check_envelope_request(&resume, Some(&run), None);
        assert!(noop.is_ok() && noop.warnings.iter().any(|w| w.contains("unchanged")), "{noop:?}");
    }

    /// The reference continues a stale envelope without a word; salvage warns (and still lets
    /// the operator decide: a warning is not an error).
    #[test]
    fn difference_a_stale_envelope_is_a_warning() {
        let run =
            Run::from_value(json!({"id": "r1", "status": "completed", "checkpoints": [{"id": "r1:checkpoint:1"}]}))
                .unwrap_or_else(|e| panic!("{e}"));
        let fresh = check_envelope_request(&valid_envelope(), Some(&run), Some("agent"));
        assert!(fresh.warnings.is_empty(), "{fresh:?}");
        let mut stale = valid_envelope();
        stale["status"] = json!("failed");
        stale["lineage"] = json!({"rootRunId": "someone-else", "parentRunId": null, "childRunIds": [],
            "branchOriginRunId": null, "branchOriginCheckpointId": null});
        let check = check_envelope_request(&stale, Some(&run), Some("agent"));
        assert!(check.is_ok(), "stale is a warning, not an error: {check:?}");
        assert_eq!(
            check.warnings,
            [
                "The envelope says the run is \"failed\" but the store has \"completed\": the envelope may be stale.",
                "The envelope's lineage differs from the stored run's lineage."
            ]
        );
    }
}
