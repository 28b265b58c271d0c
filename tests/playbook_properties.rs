//! Properties of the compiler: random well-formed playbooks either compile (and then their graph
//! keeps its promises) or fail only with documented graph-level codes; arbitrary input never
//! panics and every diagnostic points inside the file.

use std::collections::HashSet;
use std::path::Path;
use std::sync::OnceLock;

use petgraph::visit::{Dfs, Reversed, Walker};
use proptest::prelude::*;
use salvage::playbook::{self, CATALOG, Transition};
use salvage::policy::PolicySet;

fn policies() -> &'static PolicySet {
    static POLICIES: OnceLock<PolicySet> = OnceLock::new();
    POLICIES.get_or_init(|| PolicySet::load(Path::new("tests/playbooks/policies")).expect("fixture policies"))
}

/// Codes a well-formed playbook (valid YAML, known names, right types) can still get: the
/// checks that depend on how the steps are wired.
const GRAPH_CODES: &[&str] = &["P028", "P029", "P050", "P051", "P052", "P053", "P054", "P072", "P073", "P074", "P075"];

const GUARDS: &[&str] = &[
    "report.failedSteps.len() > 0",
    "incident == \"tool_failure\"",
    "comparison != () && comparison.statusChanged",
    "run.status == \"failed\" || report.pendingApproval != ()",
];

#[derive(Debug, Clone)]
struct StepPlan {
    action: usize,
    /// Per outcome: Some(target index) for an `on:` entry, None to leave it to `next`.
    exits: Vec<Option<usize>>,
    next: usize,
    guard: Option<usize>,
    max_visits: Option<u32>,
    approval: u8,
    target: Option<usize>,
}

fn step_plan(targets: usize) -> impl Strategy<Value = StepPlan> {
    (
        0..CATALOG.len(),
        proptest::collection::vec(proptest::option::of(0..targets), 3),
        0..targets,
        proptest::option::of(0..GUARDS.len()),
        proptest::option::of(1u32..4),
        0u8..5,
        proptest::option::of(0..targets),
    )
        .prop_map(|(action, exits, next, guard, max_visits, approval, target)| StepPlan {
            action,
            exits,
            next,
            guard,
            max_visits,
            approval,
            target,
        })
}

const ENDS: &[&str] = &["resolved", "abandoned", "escalated"];

/// Renders a playbook whose every name resolves and every outcome has an exit (`next` is
/// always set); only its wiring is random.
fn render(steps: &[StepPlan]) -> String {
    let count = steps.len();
    let name = |index: usize| -> String {
        if index < count { format!("s{index}") } else { ENDS[(index - count) % ENDS.len()].to_owned() }
    };
    let mut text = String::from(
        "playbook: random\nversion: 1\ndescription: Random wiring.\nmatch:\n  incident: any\nstart: s0\nsteps:\n",
    );
    for (index, step) in steps.iter().enumerate() {
        let spec = &CATALOG[step.action];
        text.push_str(&format!("  s{index}:\n    action: {}\n    description: Step {index}.\n", spec.name));
        let mut on: Vec<String> = spec
            .outcomes
            .iter()
            .zip(&step.exits)
            .filter_map(|(outcome, exit)| exit.map(|target| format!("{outcome}: {}", name(target))))
            .collect();
        if spec.name == "request_approval" {
            on.retain(|entry| !entry.starts_with("denied") && !entry.starts_with("timeout"));
            on.push("denied: abandoned".into());
            on.push("timeout: escalated".into());
            text.push_str("    timeout: 10m\n");
        }
        if let Some(max) = step.max_visits {
            text.push_str(&format!("    max_visits: {max}\n"));
            on.push("exhausted: escalated".into());
        }
        if !on.is_empty() {
            text.push_str(&format!("    on: {{ {} }}\n", on.join(", ")));
        }
        text.push_str(&format!("    next: {}\n", name(step.next)));
        if let Some(guard) = step.guard {
            text.push_str(&format!("    when: '{}'\n", GUARDS[guard]));
        }
        match step.approval {
            1 => text.push_str("    approval: always\n"),
            2 => text.push_str("    approval: never\n    why: Random.\n"),
            3 => text.push_str("    approval: policy.requires_approval\n"),
            _ => {}
        }
        match spec.name {
            "wait" => text.push_str("    duration: 1m\n"),
            "await_run" => text.push_str("    timeout: 10m\n"),
            "notify" => text.push_str("    message: Hello.\n"),
            _ => {}
        }
        if let Some(target) = step.target
            && spec.accepts(playbook::Param::Target)
            && target < count
        {
            text.push_str(&format!("    target: s{target}\n"));
        }
    }
    text.push_str("ends:\n  resolved: { outcome: resolved }\n  abandoned: { outcome: abandoned }\n  escalated: { outcome: escalated }\n");
    text
}

fn random_playbook() -> impl Strategy<Value = Vec<StepPlan>> {
    (1usize..10).prop_flat_map(|count| proptest::collection::vec(step_plan(count + ENDS.len()), count))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn well_formed_playbooks_compile_or_fail_only_on_their_wiring(steps in random_playbook()) {
        let text = render(&steps);
        let (compiled, diagnostics) = playbook::compile_str(Path::new("random.yaml"), &text, Some(policies()));
        for diagnostic in &diagnostics {
            prop_assert!(
                GRAPH_CODES.contains(&diagnostic.code),
                "unexpected {} ({}) in\n{}", diagnostic.code, diagnostic.message, text
            );
            prop_assert!(playbook::explain(diagnostic.code).is_some());
        }
        let has_error = diagnostics.iter().any(|d| d.is_error());
        prop_assert_eq!(compiled.is_some(), !has_error);
        if let Some(compiled) = compiled {
            let graph = &compiled.graph;
            let g = graph.graph();
            let reachable: HashSet<_> = Dfs::new(g, graph.start()).iter(g).collect();
            let mut reaches_end = HashSet::new();
            for (end, _) in graph.ends() {
                reaches_end.extend(Dfs::new(Reversed(g), end).iter(Reversed(g)));
            }
            for (index, step) in graph.steps() {
                prop_assert!(reachable.contains(&index), "{} unreachable", step.id);
                prop_assert!(reaches_end.contains(&index), "{} cannot finish", step.id);
                // Exactly one edge per outcome, plus exhausted and skip when they apply.
                let labels: Vec<Transition> = graph.transitions(index).into_iter().map(|(t, _)| t).collect();
                let mut expected: Vec<Transition> = step.spec().outcomes.iter().map(|o| Transition::Outcome(o)).collect();
                if step.max_visits.is_some() { expected.push(Transition::Exhausted); }
                if step.guard.is_some() { expected.push(Transition::Skip); }
                prop_assert_eq!(labels, expected);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes);
        let (_, diagnostics) = playbook::compile_str(Path::new("bytes.yaml"), &text, Some(policies()));
        for diagnostic in &diagnostics {
            prop_assert!(playbook::explain(diagnostic.code).is_some(), "{}", diagnostic.code);
        }
    }

    #[test]
    fn damaged_playbooks_report_positions_inside_the_file(
        steps in random_playbook(),
        cut in any::<prop::sample::Index>(),
        keep in any::<prop::sample::Index>(),
        junk in "[ a-z:{}\\[\\],&*'\"#-]{0,12}",
    ) {
        let text = render(&steps);
        let lines: Vec<&str> = text.lines().collect();
        let at = cut.index(lines.len());
        let mut damaged: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        let line = &damaged[at];
        let split = keep.index(line.len() + 1).min(line.len());
        let mut boundary = split;
        while !line.is_char_boundary(boundary) { boundary -= 1; }
        damaged[at] = format!("{}{}", &line[..boundary], junk);
        let damaged = damaged.join("\n");
        let (_, diagnostics) = playbook::compile_str(Path::new("damaged.yaml"), &damaged, Some(policies()));
        let line_count = damaged.lines().count().max(1) as u32 + 1;
        for diagnostic in &diagnostics {
            prop_assert!(playbook::explain(diagnostic.code).is_some());
            prop_assert!(diagnostic.line >= 1 && diagnostic.line <= line_count, "{:?}", diagnostic);
            if let Some(span) = diagnostic.span {
                prop_assert!(span.end <= damaged.len() && damaged.is_char_boundary(span.start) && damaged.is_char_boundary(span.end),
                    "{:?} span {:?}", diagnostic, span);
            }
            let _ = diagnostic.render_plain();
        }
    }
}
