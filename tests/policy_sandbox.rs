//! Bad policies: every kind of mistake or abuse gives a positioned diagnostic when the set
//! loads, or a fail-closed decision when a hook runs — never a panic, never a hang.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use salvage::model::Run;
use salvage::plan::{Plan, Planner};
use salvage::playbook::PlaybookSet;
use salvage::policy::PolicySet;
use salvage::store::{Expected, MemoryStore, RunStore};

const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
/// A verifier failure: its plan replays from a checkpoint (`choose_checkpoint`), then asks
/// `requires_approval` before resuming the replay.
const FAILED_VERIFIER: &str = "b082b9bc-0861-56d5-b884-37bbd428657e";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped default policies, with `file` replaced (or added).
fn default_policies_with(file: &str, source: &str) -> Result<PolicySet, salvage::policy::PolicyLoadError> {
    default_policies_replacing(&[(file, source)])
}

fn default_policies_replacing(files: &[(&str, &str)]) -> Result<PolicySet, salvage::policy::PolicyLoadError> {
    let mut sources: Vec<(std::path::PathBuf, String)> = std::fs::read_dir(root().join("policies"))
        .expect("policies")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "rhai") && !files.iter().any(|(f, _)| path.ends_with(f)))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read");
            (path, text)
        })
        .collect();
    sources.extend(files.iter().map(|(file, source)| (root().join("policies").join(file), (*source).to_owned())));
    PolicySet::from_sources(sources)
}

async fn plan_failed_invoice(policies: PolicySet) -> Plan {
    plan_example(FAILED_INVOICE, policies).await
}

async fn plan_example(run_id: &str, policies: PolicySet) -> Plan {
    let text = std::fs::read(root().join(format!("examples/runs/{run_id}.json"))).expect("example");
    let run = Run::from_value(serde_json::from_slice(&text).expect("json")).expect("run");
    let store = Arc::new(MemoryStore::new());
    store.save(&run, Expected::Any).await.expect("save");
    let playbooks = PlaybookSet::load(&root().join("playbooks"), Some(&policies)).expect("playbooks");
    Planner::new(store as Arc<dyn RunStore>, Arc::new(policies), Arc::new(playbooks))
        .plan(run_id, None)
        .await
        .expect("a failing policy still yields a plan")
}

fn load_error(source: &str) -> Vec<(String, u32, u32, String)> {
    match PolicySet::from_sources([("policies/bad.rhai", source)]) {
        Ok(_) => panic!("`{source}` loaded"),
        Err(error) => {
            error.diagnostics.iter().map(|d| (d.code.to_owned(), d.line, d.column, d.message.clone())).collect()
        }
    }
}

#[test]
fn syntax_errors_name_the_line_and_column() {
    let errors = load_error("fn classify(report) {\n    let x = ;\n}\n");
    assert_eq!(errors[0].0, "R001");
    assert_eq!((errors[0].1, errors[0].2), (2, 13), "{errors:?}");
}

#[test]
fn eval_import_and_top_level_code_are_refused_at_load() {
    assert_eq!(load_error("fn f() { eval(\"1\") }").first().map(|e| e.0.clone()).as_deref(), Some("R003"));
    assert_eq!(load_error("import \"fs\" as fs;\nfn f() { 1 }").first().map(|e| e.0.clone()).as_deref(), Some("R002"));
    let top_level = load_error("fn f() { 1 }\nlet counter = 0;\n");
    assert_eq!(top_level.first().map(|e| (e.0.as_str(), e.1)), Some(("R004", 2)));
}

#[test]
fn a_playbook_naming_a_missing_hook_or_the_wrong_arity_does_not_compile() {
    let policies = PolicySet::from_sources([("p.rhai", "fn choose_checkpoint(ctx, extra) { () }")]).expect("loads");
    let playbook = "playbook: x\nversion: 1\ndescription: d\nmatch: { incident: tool_failure }\nstart: b\nsteps:\n  b:\n    action: branch_from_checkpoint\n    description: d\n    checkpoint: policy.choose_checkpoint\n    approval: policy.requires_aproval\n    next: done\nends:\n  done: { outcome: resolved }\n";
    let (compiled, diagnostics) = salvage::playbook::compile_str(Path::new("x.yaml"), playbook, Some(&policies));
    assert!(compiled.is_none());
    let codes: Vec<&str> = diagnostics.iter().map(|d| d.code).collect();
    assert!(codes.contains(&"P024"), "wrong arity of choose_checkpoint: {codes:?}");
    assert!(codes.contains(&"P023"), "no requires_aproval: {codes:?}");
}

#[tokio::test]
async fn a_hook_returning_the_wrong_type_fails_closed() {
    let policies = default_policies_with(
        "approvals.rhai",
        "fn requires_approval(step, ctx) { \"no\" }\nfn approvers(step, ctx) { [\"oncall-sre\"] }\n",
    )
    .expect("loads");
    let plan = plan_example(FAILED_VERIFIER, policies).await;
    assert!(plan.fail_closed);
    let resume = plan.steps.iter().find(|s| s.catalog_action == "resume_replay").expect("resume");
    assert!(resume.requires_approval);
    let decision = resume.explanation.iter().find(|e| e.hook == "requires_approval").expect("explained");
    assert!(decision.error.as_deref().is_some_and(|e| e.contains("returned")), "{decision:?}");
    assert!(plan.steps.iter().all(|s| s.requires_approval), "a failed policy gates every step");
}

/// A hook that runs away must be stopped quickly and fail closed.
async fn assert_stopped(source: &str, expected_errors: &[&str]) {
    let policies = default_policies_with("checkpoints.rhai", source).expect("loads");
    let started = Instant::now();
    let plan = plan_failed_invoice(policies).await;
    assert!(started.elapsed() < Duration::from_secs(10), "bounded, took {:?}", started.elapsed());
    assert!(plan.fail_closed);
    let branch = plan.steps.iter().find(|s| s.catalog_action == "branch_from_checkpoint").expect("branch");
    assert!(branch.requires_approval);
    assert_eq!(branch.payload["checkpointId"], serde_json::Value::Null, "no checkpoint from a failed hook");
    let decision = branch.explanation.iter().find(|e| e.hook == "choose_checkpoint").expect("explained");
    let error = decision.error.as_deref().unwrap_or_default();
    assert!(
        expected_errors.iter().any(|expected| error.contains(expected)),
        "expected one of {expected_errors:?} in {error:?}"
    );
}

/// Whichever bound comes first — the operation count, or the wall clock on a loaded machine
/// — stops it.
#[tokio::test]
async fn an_infinite_loop_is_stopped_by_the_operation_or_time_limit() {
    assert_stopped(
        "fn choose_checkpoint(ctx) { loop { } }",
        &["Too many operations", "ran longer than the time limit"],
    )
    .await;
}

#[tokio::test]
async fn deep_recursion_is_stopped_by_the_call_depth_limit() {
    assert_stopped("fn choose_checkpoint(ctx) { deeper(0) }\nfn deeper(n) { deeper(n + 1) }", &["Stack overflow"])
        .await;
}

#[tokio::test]
async fn a_huge_string_is_stopped_by_the_size_limit() {
    assert_stopped("fn choose_checkpoint(ctx) { let s = \"x\"; loop { s += s; } }", &["Length of string"]).await;
}

#[tokio::test]
async fn a_classify_that_throws_fails_closed_on_the_safe_kind() {
    // checkpoints.rhai calls `denied_by_verifier`, which classify.rhai defines: the replacement
    // keeps it (a set calling an undefined function does not load, R008).
    let policies = default_policies_with(
        "classify.rhai",
        "fn classify(report, ctx) { throw \"no idea\"; }\nfn denied_by_verifier(ctx) { () }",
    )
    .expect("loads");
    let plan = plan_failed_invoice(policies).await;
    assert!(plan.fail_closed);
    assert_eq!(plan.incident_type.as_str(), "generic_failure", "the failed run falls back to the generic kind");
    let classify = plan.decisions.iter().find(|d| d.hook == "classify").expect("explained");
    assert!(classify.error.as_deref().is_some_and(|e| e.contains("no idea")), "{classify:?}");
    assert!(plan.steps.iter().all(|s| s.requires_approval));
}

#[tokio::test]
async fn a_policy_cannot_change_what_the_next_hook_sees() {
    // choose_checkpoint rewrites the report it reads; requires_approval, called later in the
    // same plan, must still see the run as failed.
    let checkpoints = "fn choose_checkpoint(ctx) { let r = ctx.report; r.status = \"completed\"; r.recommendations.clear(); ctx.last_checkpoint_before_failure().id }";
    let approvals = "fn requires_approval(step, ctx) { ctx.report.status == \"failed\" && ctx.report.recommendations.len() > 0 }\nfn approvers(step, ctx) { [\"oncall-sre\"] }";
    let policies =
        default_policies_replacing(&[("checkpoints.rhai", checkpoints), ("approvals.rhai", approvals)]).expect("loads");
    let plan = plan_example(FAILED_VERIFIER, policies).await;
    assert!(!plan.fail_closed, "{:?}", plan.decisions);
    let replay = plan.steps.iter().find(|s| s.catalog_action == "partial_replay").expect("replay");
    assert!(replay.explanation.iter().any(|e| e.hook == "choose_checkpoint"), "the checkpoint hook ran first");
    let resume = plan.steps.iter().find(|s| s.catalog_action == "resume_replay").expect("resume");
    assert!(resume.explanation.iter().any(|e| e.hook == "requires_approval"));
    assert!(resume.requires_approval, "requires_approval still sees the failed run");
}
