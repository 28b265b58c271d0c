//! One policy decision (each hook of the shipped policies) on a realistic context: the failed
//! invoicing run of `examples/runs` (a side-effecting tool failed after a model turn), its
//! incident report, and the branch step its playbook plans.
//!
//! Two measurements per hook:
//! - `warm`: the hook alone, on a context whose run and report views are already built (the
//!   planner makes several decisions per context, so this is the per-decision cost);
//! - `cold`: a fresh context each time, so the first decision also pays for turning the run and
//!   report into Rhai values.
//!
//! Target (issue 4): p50 ≤ 20 µs, p99 ≤ 100 µs per decision. Criterion reports the mean and its
//! confidence interval; `decision_percentiles` below prints p50/p99 over 20,000 single calls.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

use salvage::model::{IncidentKind, Run};
use salvage::plan::Planner;
use salvage::playbook::PlaybookSet;
use salvage::policy::{DecisionContext, PolicySet, hooks};
use salvage::store::{Expected, MemoryStore, RunStore};

const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";

struct Fixture {
    policies: Arc<PolicySet>,
    ctx: DecisionContext,
    branch_step: Value,
    planner: Planner,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> Fixture {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let policies = Arc::new(PolicySet::load(&root.join("policies")).expect("policies"));
    let playbooks = Arc::new(PlaybookSet::load(&root.join("playbooks"), Some(&policies)).expect("playbooks"));
    let runs: Vec<Run> = std::fs::read_dir(root.join("examples/runs"))
        .expect("examples")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| Run::from_value(serde_json::from_slice(&std::fs::read(e.path()).expect("read")).expect("json")))
        .collect::<Result<_, _>>()
        .expect("runs");
    let store = Arc::new(MemoryStore::new());
    runtime.block_on(store.save_all(&runs, Expected::Absent)).expect("save");
    let planner = Planner::new(store as Arc<dyn RunStore>, policies.clone(), playbooks);
    let ctx = runtime.block_on(planner.context(FAILED_INVOICE, None, IncidentKind::ToolFailure)).expect("context");
    let plan = runtime.block_on(planner.plan(FAILED_INVOICE, None)).expect("plan").to_value();
    let planned = plan["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["catalogAction"] == "branch_from_checkpoint"))
        .expect("the plan branches");
    let branch_step = json!({
        "id": planned["id"],
        "action": planned["action"],
        "catalogAction": planned["catalogAction"],
        "effect": planned["effect"],
        "scope": "run",
        "priority": planned["priority"],
        "reason": planned["reason"],
        "payload": planned["payload"],
        "target": Value::Null,
        "incident": "tool_failure",
    });
    Fixture { policies, ctx, branch_step, planner, runtime }
}

fn decide(fixture: &Fixture, ctx: &DecisionContext, hook: &str) {
    let policies = &fixture.policies;
    match hook {
        "classify" => {
            black_box(hooks::classify(policies, ctx));
        }
        "choose_checkpoint" => {
            black_box(hooks::choose_checkpoint(policies, "choose_checkpoint", ctx));
        }
        "requires_approval" => {
            black_box(hooks::requires_approval(policies, "requires_approval", &fixture.branch_step, ctx));
        }
        _ => {
            black_box(hooks::approvers(policies, "approvers", &fixture.branch_step, ctx));
        }
    }
}

const HOOKS: [&str; 4] = ["classify", "choose_checkpoint", "requires_approval", "approvers"];

fn decisions(c: &mut Criterion) {
    let fixture = fixture();
    // The decisions are real ones (the shipped policies answer, none fails closed).
    assert!(!hooks::classify(&fixture.policies, &fixture.ctx).explanation.failed_closed());
    assert!(
        hooks::requires_approval(&fixture.policies, "requires_approval", &fixture.branch_step, &fixture.ctx).value,
        "branching after a side-effecting tool failure needs approval"
    );
    let mut group = c.benchmark_group("decision");
    for hook in HOOKS {
        group.bench_function(format!("warm/{hook}"), |b| b.iter(|| decide(&fixture, &fixture.ctx, hook)));
        group.bench_function(format!("cold/{hook}"), |b| {
            b.iter_batched(
                || {
                    fixture
                        .runtime
                        .block_on(fixture.planner.context(FAILED_INVOICE, None, IncidentKind::ToolFailure))
                        .expect("context")
                },
                |ctx| decide(&fixture, &ctx, hook),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
    percentiles(&fixture);
}

/// p50 / p99 of single warm decisions (criterion gives means; the target is on percentiles),
/// and of a hook that returns a constant: the fixed cost of calling into the sandbox.
fn percentiles(fixture: &Fixture) {
    let dir = tempfile::tempdir().expect("temp");
    std::fs::write(
        dir.path().join("trivial.rhai"),
        "fn requires_approval(step, ctx) { false }\nfn classify(report, ctx) { \"tool_failure\" }\n",
    )
    .expect("write");
    let trivial = PolicySet::load(dir.path()).expect("trivial policy");
    let mut samples: Vec<u128> = (0..20_000)
        .map(|_| {
            let start = Instant::now();
            black_box(hooks::requires_approval(&trivial, "requires_approval", &fixture.branch_step, &fixture.ctx));
            start.elapsed().as_nanos()
        })
        .collect();
    report("constant_hook", &mut samples);
    let mut samples: Vec<u128> = (0..20_000)
        .map(|_| {
            let start = Instant::now();
            black_box(hooks::classify(&trivial, &fixture.ctx));
            start.elapsed().as_nanos()
        })
        .collect();
    report("constant_classify", &mut samples);
    for hook in HOOKS {
        let mut samples: Vec<u128> = (0..20_000)
            .map(|_| {
                let start = Instant::now();
                decide(fixture, &fixture.ctx, hook);
                start.elapsed().as_nanos()
            })
            .collect();
        report(hook, &mut samples);
    }
}

fn report(name: &str, samples: &mut [u128]) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
    println!("decision_percentiles/{name}: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs", at(0.5), at(0.99), at(1.0));
}

criterion_group!(benches, decisions);
criterion_main!(benches);
