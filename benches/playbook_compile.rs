//! Compile speed: every shipped playbook (with policies), and a generated 500-step playbook
//! (target: well under 50 ms).

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use salvage::playbook;
use salvage::policy::PolicySet;

/// A 500-step playbook: a chain of inspections, exports, approvals and gated resumes, with
/// guards, retries and a bounded loop, so every check has work to do.
fn generated(steps: usize) -> String {
    let mut text = String::from(
        "playbook: generated\nversion: 1\ndescription: Generated for benchmarks.\nmatch:\n  incident: any\nstart: s0\nsteps:\n",
    );
    for index in 0..steps {
        let next = if index + 1 < steps { format!("s{}", index + 1) } else { "resolved".to_owned() };
        let body = match index % 5 {
            0 => format!(
                "    action: inspect_report\n    when: 'report.failedSteps.len() > {index}'\n    next: {next}\n"
            ),
            1 => {
                format!("    action: export_bundle\n    retry: {{ max_attempts: 3, backoff: 10s }}\n    next: {next}\n")
            }
            2 => format!(
                "    action: request_approval\n    approvers: policy.approvers\n    timeout: 30m\n    max_visits: 3\n    on: {{ approved: {next}, denied: abandoned, timeout: escalated, exhausted: escalated }}\n"
            ),
            3 => format!(
                "    action: branch_from_checkpoint\n    checkpoint: policy.choose_checkpoint\n    approval: policy.requires_approval\n    on: {{ ok: {next}, failed: s{} }}\n",
                index - 1
            ),
            _ => format!(
                "    action: resume_run\n    target: s{}\n    on: {{ ok: {next}, failed: escalated }}\n",
                index - 1
            ),
        };
        text.push_str(&format!("  s{index}:\n    description: Step {index}.\n{body}"));
    }
    text.push_str("ends:\n  resolved: { outcome: resolved }\n  abandoned: { outcome: abandoned }\n  escalated: { outcome: escalated }\n");
    text
}

fn benches(c: &mut Criterion) {
    let policies = PolicySet::load(Path::new("policies")).expect("shipped policies");
    let report = playbook::check(Path::new("playbooks"), Some(Path::new("policies")));
    assert!(report.diagnostics.is_empty(), "{:#?}", report.diagnostics);
    c.bench_function("check shipped playbooks and policies", |b| {
        b.iter(|| black_box(playbook::check(Path::new("playbooks"), Some(Path::new("policies")))))
    });

    let text = generated(500);
    let (compiled, diagnostics) = playbook::compile_str(Path::new("generated.yaml"), &text, Some(&policies));
    assert!(diagnostics.is_empty(), "{:#?}", diagnostics.first());
    assert_eq!(compiled.map(|p| p.graph.steps().count()), Some(500));
    c.bench_function("compile a 500-step playbook", |b| {
        b.iter(|| black_box(playbook::compile_str(Path::new("generated.yaml"), &text, Some(&policies))))
    });
}

criterion_group!(compile, benches);
criterion_main!(compile);
