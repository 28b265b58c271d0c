//! Comparing a plan with what a test expects: one mismatch per field that differs.

use serde::Serialize;
use serde_json::{Value, json};

use super::file::{CheckpointExpectation, Expect};
use crate::plan::{Plan, PlanStep};

/// A field of the plan that is not what the test expects.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mismatch {
    /// The `expect` key (with the step id for per-step keys, e.g. `checkpoint.branch`).
    pub field: String,
    pub expected: Value,
    pub actual: Value,
    /// What is missing or extra, for lists compared as sets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn mismatch(field: impl Into<String>, expected: Value, actual: Value) -> Mismatch {
    Mismatch { field: field.into(), expected, actual, note: None }
}

/// Every difference between `plan` and `expect`, in the order of the `expect` keys' docs.
pub fn compare(expect: &Expect, plan: &Plan) -> Vec<Mismatch> {
    let mut found = Vec::new();
    if let Some(incident) = &expect.incident
        && plan.incident_type.as_str() != incident
    {
        found.push(mismatch("incident", json!(incident), json!(plan.incident_type.as_str())));
    }
    if let Some(playbook) = &expect.playbook {
        let actual = plan.playbook.as_ref().map(|p| p.name.clone());
        if *playbook != actual {
            found.push(mismatch("playbook", json!(playbook), json!(actual)));
        }
    }
    if let Some(steps) = &expect.steps {
        let actual: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
        if *steps != actual {
            found.push(mismatch("steps", json!(steps), json!(actual)));
        }
    }
    if let Some(actions) = &expect.actions {
        let actual: Vec<&str> = plan.steps.iter().map(|s| s.action.as_str()).collect();
        if *actions != actual {
            found.push(mismatch("actions", json!(actions), json!(actual)));
        }
    }
    match &expect.checkpoint {
        None => {}
        Some(CheckpointExpectation::First(expected)) => {
            let first = plan.steps.iter().find(|step| step.payload.contains_key("checkpointId"));
            match first {
                None => found.push(Mismatch {
                    note: Some("no step of the plan starts from a checkpoint".into()),
                    ..mismatch("checkpoint", json!(expected), Value::Null)
                }),
                Some(step) => {
                    let actual = checkpoint_of(step);
                    if actual != *expected {
                        found.push(Mismatch {
                            note: Some(format!("chosen for step {}", step.id)),
                            ..mismatch("checkpoint", json!(expected), json!(actual))
                        });
                    }
                }
            }
        }
        Some(CheckpointExpectation::PerStep(per_step)) => {
            for (step_id, expected) in per_step {
                let field = format!("checkpoint.{}", step_id.value);
                match plan.steps.iter().find(|step| step.id == step_id.value) {
                    None => found.push(Mismatch {
                        note: Some(format!("step {} is not in the plan", step_id.value)),
                        ..mismatch(field, json!(expected), Value::Null)
                    }),
                    Some(step) if !step.payload.contains_key("checkpointId") => found.push(Mismatch {
                        note: Some(format!("step {} ({}) does not start from a checkpoint", step.id, step.action)),
                        ..mismatch(field, json!(expected), Value::Null)
                    }),
                    Some(step) => {
                        let actual = checkpoint_of(step);
                        if actual != *expected {
                            found.push(mismatch(field, json!(expected), json!(actual)));
                        }
                    }
                }
            }
        }
    }
    if let Some(approvals) = &expect.approvals {
        // The plan's `requiresApproval` (what the playbook and the policies decided); a
        // `resolve_approval` the runner asks for anyway is not counted here.
        let actual: Vec<&str> = plan.steps.iter().filter(|s| s.requires_approval).map(|s| s.id.as_str()).collect();
        if let Some(note) = set_difference(approvals, &actual) {
            found.push(Mismatch { note: Some(note), ..mismatch("approvals", json!(approvals), json!(actual)) });
        }
    }
    if let Some(approvers) = &expect.approvers {
        for (step_id, names) in approvers {
            let field = format!("approvers.{step_id}");
            match plan.steps.iter().find(|step| step.id == *step_id) {
                None => found.push(Mismatch {
                    note: Some(format!("step {step_id} is not in the plan")),
                    ..mismatch(field, json!(names), Value::Null)
                }),
                Some(step) => {
                    let actual: Vec<&str> =
                        step.approvers.iter().flat_map(|a| a.names.iter().map(String::as_str)).collect();
                    if let Some(note) = set_difference(names, &actual) {
                        found.push(Mismatch { note: Some(note), ..mismatch(field, json!(names), json!(actual)) });
                    }
                }
            }
        }
    }
    if let Some(action) = &expect.recommended_action
        && plan.recommended_action != *action
    {
        found.push(mismatch("recommended_action", json!(action), json!(plan.recommended_action)));
    }
    if let Some(outcome) = &expect.outcome
        && *outcome != plan.expected_outcome
    {
        found.push(mismatch("outcome", json!(outcome), json!(plan.expected_outcome)));
    }
    if let Some(fail_closed) = expect.fail_closed
        && fail_closed != plan.fail_closed
    {
        found.push(mismatch("fail_closed", json!(fail_closed), json!(plan.fail_closed)));
    }
    found
}

fn checkpoint_of(step: &PlanStep) -> Option<String> {
    step.payload.get("checkpointId").and_then(Value::as_str).map(str::to_owned)
}

/// `None` when both lists hold the same names (in any order); else what is missing and extra.
fn set_difference(expected: &[String], actual: &[&str]) -> Option<String> {
    let missing: Vec<&str> = expected.iter().map(String::as_str).filter(|name| !actual.contains(name)).collect();
    let extra: Vec<&str> = actual.iter().copied().filter(|name| !expected.iter().any(|e| e == name)).collect();
    let same_length = expected.len() == actual.len();
    if missing.is_empty() && extra.is_empty() && same_length {
        return None;
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing: {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        parts.push(format!("unexpected: {}", extra.join(", ")));
    }
    if parts.is_empty() {
        parts.push("a name is listed twice".to_owned());
    }
    Some(parts.join("; "))
}

/// A JSON value on one line, strings without quotes (for the text diff).
pub fn show(value: &Value) -> String {
    match value {
        Value::Null => "none".to_owned(),
        Value::String(text) => text.clone(),
        Value::Array(items) => format!("[{}]", items.iter().map(show).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_compare_without_order() {
        let expected = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(set_difference(&expected, &["b", "a"]), None);
        assert_eq!(set_difference(&expected, &["b"]).as_deref(), Some("missing: a"));
        assert_eq!(set_difference(&expected, &["a", "b", "c"]).as_deref(), Some("unexpected: c"));
        assert_eq!(set_difference(&expected, &["a", "b", "b"]).as_deref(), Some("a name is listed twice"));
        assert_eq!(set_difference(&[], &[]), None);
    }

    #[test]
    fn values_show_on_one_line() {
        assert_eq!(show(&json!(["a", "b"])), "[a, b]");
        assert_eq!(show(&Value::Null), "none");
        assert_eq!(show(&json!(true)), "true");
        assert_eq!(show(&json!([])), "[]");
    }
}
