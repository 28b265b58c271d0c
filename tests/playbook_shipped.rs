//! The shipped playbooks and policies, `check` as the CLI will call it, and set-level checks.

use std::path::Path;

use salvage::model::IncidentKind;
use salvage::playbook::{self, EffectClass, PlaybookSet};
use salvage::policy::PolicySet;

#[test]
fn shipped_playbooks_check_clean_against_the_shipped_policies() {
    let report = playbook::check(Path::new("playbooks"), Some(Path::new("policies")));
    let rendered: Vec<String> = report.diagnostics.iter().map(|d| d.render_plain()).collect();
    assert!(report.diagnostics.is_empty(), "{}", rendered.join("\n"));
    let names: Vec<&str> = report.playbooks.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "approval-denied",
            "approval-gated-run-paused",
            "generic-fallback",
            "no-incident",
            "queue-handoff-failure",
            "replay-failed",
            "run-paused-for-replay",
            "run-paused",
            "service-handoff-failure",
            "side-effecting-tool-failed",
            "verifier-or-planning-failure",
            "workflow-child-run-failure",
        ]
    );
}

#[test]
fn every_incident_kind_selects_one_playbook_first() {
    let policies = PolicySet::load(Path::new("policies")).unwrap();
    let set = PlaybookSet::load(Path::new("playbooks"), Some(&policies)).unwrap();
    let first = |kind: &str| set.candidates(&IncidentKind::parse(kind)).first().map(|p| p.name.clone());
    assert_eq!(first("approval_blocked").as_deref(), Some("approval-gated-run-paused"));
    assert_eq!(first("tool_failure").as_deref(), Some("side-effecting-tool-failed"));
    assert_eq!(first("verifier_failure").as_deref(), Some("verifier-or-planning-failure"));
    assert_eq!(first("planning_failure").as_deref(), Some("verifier-or-planning-failure"));
    assert_eq!(first("workflow_child_failure").as_deref(), Some("workflow-child-run-failure"));
    assert_eq!(first("queue_worker_failure").as_deref(), Some("queue-handoff-failure"));
    assert_eq!(first("service_handoff_failure").as_deref(), Some("service-handoff-failure"));
    assert_eq!(first("paused_replay").as_deref(), Some("run-paused-for-replay"));
    assert_eq!(first("paused_run").as_deref(), Some("run-paused"));
    assert_eq!(first("replay_failure").as_deref(), Some("replay-failed"));
    assert_eq!(first("approval_denied").as_deref(), Some("approval-denied"));
    assert_eq!(first("no_incident").as_deref(), Some("no-incident"));
    for kind in IncidentKind::KNOWN {
        assert!(!set.candidates(kind).is_empty(), "{kind} has no playbook");
    }
    assert_eq!(first("generic_failure").as_deref(), Some("generic-fallback"));
    assert_eq!(set.digest().len(), 64);
    assert!(set.warnings().is_empty());
}

#[test]
fn shipped_playbooks_follow_the_operator_defaults() {
    let set = PlaybookSet::load(Path::new("playbooks"), None).unwrap();
    for playbook in set.playbooks() {
        let graph = &playbook.graph;
        let start = graph.node(graph.start()).as_step().unwrap();
        assert_eq!(start.action, playbook::Action::InspectReport, "{}: incident report first", playbook.name);
        // An export happens before anything that mutates queue or run state.
        let mutates =
            |step: &playbook::StepNode| matches!(step.effect(), EffectClass::Compensable | EffectClass::Irreversible);
        if playbook.name == "queue-handoff-failure" {
            let order: Vec<_> = graph.steps().map(|(_, step)| step).collect();
            let export = order.iter().position(|s| s.action == playbook::Action::ExportBundle).unwrap();
            let first_mutation = order.iter().position(|s| mutates(s)).unwrap();
            assert!(export < first_mutation);
        }
        // Risky retries go through a branch: no irreversible step resumes the incident run after a
        // tool failure without a branch target.
        if playbook.name == "side-effecting-tool-failed" {
            let resume = graph.step("resume").unwrap();
            assert_eq!(resume.params.target.as_deref(), Some("branch"));
        }
    }
}

#[test]
fn check_without_policies_does_not_resolve_hooks() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("tests/playbooks/invalid/unknown-hook.yaml", dir.path().join("a.yaml")).unwrap();
    let without = playbook::check(dir.path(), None);
    assert!(without.diagnostics.iter().all(|d| d.code != "P023"), "{:?}", without.diagnostics);
    let with = playbook::check(dir.path(), Some(Path::new("tests/playbooks/policies")));
    assert!(with.diagnostics.iter().any(|d| d.code == "P023"));
}

#[test]
fn broken_policies_are_reported_without_cascading_hook_errors() {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("approvals.rhai"), "fn requires_approval(step, ctx) {\n  step.effect !=\n}\n")
        .unwrap();
    std::fs::write(policies.path().join("other.rhai"), "fn approvers(step, ctx) { [] }\nprint(1);\n").unwrap();
    let report = playbook::check(Path::new("playbooks"), Some(policies.path()));
    let codes: Vec<(&str, u32)> = report.diagnostics.iter().map(|d| (d.code, d.line)).collect();
    assert_eq!(codes, [("R001", 3), ("R004", 2)], "{:#?}", report.diagnostics);
    assert_eq!(report.playbooks.len(), 12, "playbooks still compile against the partial set");
    let json = serde_json::to_value(&report.diagnostics[1]).unwrap();
    assert_eq!(json["code"], "R004");
    assert_eq!(json["file"], policies.path().join("other.rhai").display().to_string());
    assert_eq!((json["line"].as_u64(), json["column"].as_u64()), (Some(2), Some(1)));
}

#[test]
fn duplicate_playbook_names_in_a_set() {
    let report = playbook::check(Path::new("tests/playbooks/sets/duplicate-name"), None);
    let found: Vec<(&str, String, u32, u32)> = report
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| (d.code, d.file.display().to_string(), d.line, d.column))
        .collect();
    assert_eq!(found, [("P060", "tests/playbooks/sets/duplicate-name/b.yaml".to_owned(), 1, 11)]);
    assert!(PlaybookSet::load(Path::new("tests/playbooks/sets/duplicate-name"), None).is_err());
}

#[test]
fn ambiguous_selection_in_a_set() {
    let report = playbook::check(Path::new("tests/playbooks/sets/ambiguous"), None);
    let found: Vec<(&str, String, u32, u32)> = report
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| (d.code, d.file.display().to_string(), d.line, d.column))
        .collect();
    // b overlaps a on tool_failure with the same priority; c (any, lower priority) is fine.
    assert_eq!(found, [("P061", "tests/playbooks/sets/ambiguous/b.yaml".to_owned(), 5, 13)]);
    assert!(report.diagnostics[0].message.contains("`tool_failure`"), "{}", report.diagnostics[0].message);
}

#[test]
fn unreadable_playbook_directory() {
    let report = playbook::check(Path::new("tests/playbooks/no-such-dir"), None);
    assert_eq!(report.diagnostics.iter().map(|d| d.code).collect::<Vec<_>>(), ["P012"]);
}

#[test]
fn graph_exports() {
    let set = PlaybookSet::load(Path::new("playbooks"), None).unwrap();
    let playbook = set.get("side-effecting-tool-failed").unwrap();
    let dot = playbook::render_dot(&playbook.graph);
    assert!(dot.starts_with("digraph playbook {"));
    assert!(dot.contains("__start -> \"report\";"));
    assert!(dot.contains("\"check_effect\" -> \"ask_operator\" [label=\"partial, unknown\"];"), "{dot}");
    assert!(
        dot.contains("\"resume\" [label=\"resume\\nresume_run (irreversible)\", shape=box, style=rounded, color=red"),
        "{dot}"
    );
    assert!(dot.contains("\"escalated\" [label=\"escalated\\nescalated\", shape=doublecircle];"));
    let mermaid = playbook::render_mermaid(&playbook.graph);
    assert!(mermaid.starts_with("flowchart TD\n  start((start)) --> n0\n"));
    assert!(mermaid.contains("n3 -->|partial, unknown| n4"), "{mermaid}");
    let compat = playbook::compile_file(Path::new("tests/playbooks/valid/compat-chain.yaml"), None).0.unwrap();
    let mermaid = playbook::render_mermaid(&compat.graph);
    assert!(mermaid.contains("n0 -.->|skip| n1"), "{mermaid}");
    assert!(mermaid.contains("when: report.pendingApproval != ()"), "{mermaid}");
}
