//! The `compat` policy set with `playbooks/compat` reproduces the reference planner exactly:
//! every recorded `recoveryPlan` / `compared[].recoveryPlan` of the corpus stores, and every
//! case of the randomized planner corpus (`random/planner-cases.jsonl`).
//!
//! Compared, as the corpus README says: `runId, status, incidentType, recoveryPolicy,
//! correlation, steps (action, priority, reason, runId, payload, requiresApproval),
//! recommendedAction`, the incident report, and the report's recommendations.

mod conformance_support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use conformance_support::{compare_json, corpus_dir, load_store, memory_backend, read_json, store_dirs};
use salvage::model::Run;
use salvage::plan::{Plan, PlanError, Planner};
use salvage::playbook::PlaybookSet;
use salvage::policy::PolicySet;
use salvage::store::{Expected, MemoryStore, RunStore};

const STEP_KEYS: [&str; 6] = ["action", "priority", "reason", "runId", "payload", "requiresApproval"];

fn compat_sets() -> (Arc<PolicySet>, Arc<PlaybookSet>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let policies = PolicySet::load(&root.join("policies/compat")).unwrap_or_else(|e| panic!("compat policies: {e}"));
    let playbooks = PlaybookSet::load(&root.join("playbooks/compat"), Some(&policies))
        .unwrap_or_else(|d| panic!("compat playbooks: {d:?}"));
    (Arc::new(policies), Arc::new(playbooks))
}

/// The plan projected onto the keys the reference's plan has.
fn reference_view(plan: &Plan) -> Value {
    let value = plan.to_value();
    let steps: Vec<Value> = value["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|step| {
                    let object: Map<String, Value> =
                        STEP_KEYS.iter().filter_map(|key| Some(((*key).to_owned(), step.get(*key)?.clone()))).collect();
                    Value::Object(object)
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "runId": value["runId"],
        "status": value["status"],
        "incidentType": value["incidentType"],
        "recoveryPolicy": value["recoveryPolicy"],
        "correlation": value["correlation"],
        "steps": steps,
        "recommendedAction": value["recommendedAction"],
    })
}

fn without_incident(expected: &Value) -> Value {
    let mut expected = expected.clone();
    if let Some(map) = expected.as_object_mut() {
        map.shift_remove("incident");
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_plans_are_reproduced_by_the_compat_set() {
    let Some(corpus) = corpus_dir() else { return };
    let (policies, playbooks) = compat_sets();
    let mut checked = 0;
    let mut failures = Vec::new();
    for store_dir in store_dirs(&corpus) {
        let scratch = tempfile::tempdir().expect("temp dir");
        let store = load_store(&memory_backend(), scratch.path(), &store_dir).await;
        let planner = Planner::new(store.clone(), policies.clone(), playbooks.clone());
        for file in std::fs::read_dir(store_dir.join("expected")).expect("expected dir").filter_map(Result::ok) {
            let path = file.path();
            if path.file_stem().is_some_and(|stem| stem == "_store") {
                continue;
            }
            let expected = read_json(&path);
            let run_id = expected["runId"].as_str().expect("runId").to_owned();
            let mut cases = vec![(None, expected["recoveryPlan"].clone(), expected["incidentReport"].clone())];
            for compared in expected["compared"].as_array().into_iter().flatten() {
                let report =
                    compared["recoveryPlan"].get("incident").cloned().unwrap_or(compared["incidentReport"].clone());
                cases.push((
                    compared["compareToRunId"].as_str().map(str::to_owned),
                    compared["recoveryPlan"].clone(),
                    report,
                ));
            }
            for (compare_to, expected_plan, expected_report) in cases {
                checked += 1;
                let label = format!("{} run {run_id} compare {compare_to:?}", store_dir.display());
                let plan = match planner.plan(&run_id, compare_to.as_deref()).await {
                    Ok(plan) => plan,
                    Err(error) => {
                        failures.push(format!("{label}: planning failed: {error}"));
                        continue;
                    }
                };
                let expected_report = expected_plan.get("incident").cloned().unwrap_or(expected_report);
                let mut differences =
                    compare_json(&without_incident(&expected_plan), &reference_view(&plan), &|_| None);
                differences.extend(compare_json(&expected_report, &plan.incident.to_value(), &|_| None));
                if !differences.is_empty() {
                    failures.push(format!(
                        "{label}:\n  {}",
                        differences.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n  ")
                    ));
                }
            }
        }
    }
    eprintln!("planner compat: {checked} recorded plans, {} mismatches", failures.len());
    assert!(failures.is_empty(), "{} of {checked} recorded plans differ:\n{}", failures.len(), failures.join("\n"));
}

/// The list field of a run record that holds a string (which the reference spreads into
/// characters and salvage refuses), if any.
fn string_list_field(run: &Value) -> Option<&'static str> {
    ["messages", "steps", "toolCalls", "toolResults", "checkpoints", "errors", "events"]
        .into_iter()
        .find(|field| run.get(*field).is_some_and(Value::is_string))
}

/// One line of `random/planner-cases.jsonl`.
struct Case {
    id: String,
    compare_to: Option<String>,
    run: Value,
    expected: Value,
}

fn cases(corpus: &Path) -> (Vec<Case>, HashMap<String, Value>) {
    let base: HashMap<String, Value> = std::fs::read_to_string(corpus.join("random/base-runs.jsonl"))
        .expect("base runs")
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("json"))
        .map(|base| (base["run"]["id"].as_str().unwrap_or_default().to_owned(), base["run"].clone()))
        .collect();
    let cases = std::fs::read_to_string(corpus.join("random/planner-cases.jsonl"))
        .expect("cases")
        .lines()
        .map(|line| {
            let case: Value = serde_json::from_str(line).expect("json");
            Case {
                id: case["caseId"].to_string(),
                compare_to: case["compareToRunId"].as_str().map(str::to_owned),
                run: case["run"].clone(),
                expected: case["expected"].clone(),
            }
        })
        .collect();
    (cases, base)
}

/// The reference's stage and error name for what salvage did with a case.
enum Outcome {
    Planned(Box<Plan>),
    /// The record is not a run (the reference's `saveRun` stage).
    NotARun(String),
    /// Planning failed (the reference's `createPlan` stage).
    PlanFailed(PlanError),
}

async fn run_case(
    case: &Case,
    base: &HashMap<String, Value>,
    policies: &Arc<PolicySet>,
    playbooks: &Arc<PlaybookSet>,
) -> Outcome {
    let store = Arc::new(MemoryStore::new());
    if let Some(compare_to) = &case.compare_to {
        let known_good = Run::from_value(base[compare_to].clone()).expect("base runs are valid");
        store.save(&known_good, Expected::Any).await.expect("save base run");
    }
    let run = match Run::from_value(case.run.clone()) {
        Ok(run) => run,
        Err(error) => return Outcome::NotARun(error.to_string()),
    };
    store.save(&run, Expected::Any).await.expect("save run");
    let planner = Planner::new(store as Arc<dyn RunStore>, policies.clone(), playbooks.clone());
    match planner.plan(&run.id, case.compare_to.as_deref()).await {
        Ok(plan) => Outcome::Planned(Box::new(plan)),
        Err(error) => Outcome::PlanFailed(error),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_planner_cases_match_the_reference() {
    let Some(corpus) = corpus_dir() else { return };
    let (policies, playbooks) = compat_sets();
    let (cases, base) = cases(&corpus);
    let mut failures = Vec::new();
    let mut fixed_crashes = 0;
    let mut string_lists_refused = 0;
    for case in &cases {
        let outcome = run_case(case, &base, &policies, &playbooks).await;
        let expected = &case.expected;
        let stage = expected["stage"].as_str();
        let error_name = expected["error"]["name"].as_str();
        match (expected["ok"].as_bool(), stage, outcome) {
            (Some(true), _, Outcome::Planned(plan)) => {
                let mut actual = reference_view(&plan);
                actual["recommendations"] = json!(plan.incident.recommendations);
                let differences = compare_json(&expected["plan"], &actual, &|_| None);
                if !differences.is_empty() {
                    failures.push(format!(
                        "case {}:\n  {}",
                        case.id,
                        differences.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n  ")
                    ));
                }
            }
            (Some(false), Some("saveRun"), Outcome::NotARun(_)) => {}
            // The reference spreads a string list field (`checkpoints: "cp-1"`) into one
            // phantom entry per character; salvage refuses the run naming the field (issue 10).
            (Some(true), _, Outcome::NotARun(error))
                if string_list_field(&case.run).is_some_and(|field| error.starts_with(&format!("`{field}`"))) =>
            {
                string_lists_refused += 1;
            }
            // A `null` step makes the reference throw a TypeError; salvage refuses the run with
            // a typed error naming the entry.
            (Some(false), Some("createPlan"), Outcome::PlanFailed(_)) if error_name == Some("TypeError") => {}
            // The reference overflows its stack on a self-parented run (RangeError); salvage
            // cuts the lineage cycle and plans — a deliberate difference, see README.
            (Some(false), Some("createPlan"), Outcome::Planned(plan)) if error_name == Some("RangeError") => {
                assert!(!plan.incident.lineage_cycles.is_empty(), "case {}: the cycle must be reported", case.id);
                fixed_crashes += 1;
            }
            (ok, stage, Outcome::Planned(_)) => {
                failures.push(format!("case {}: expected ok={ok:?} stage={stage:?}, salvage planned", case.id))
            }
            (ok, stage, Outcome::NotARun(error)) => failures.push(format!(
                "case {}: expected ok={ok:?} stage={stage:?}, salvage refused the run: {error}",
                case.id
            )),
            (ok, stage, Outcome::PlanFailed(error)) => {
                failures.push(format!("case {}: expected ok={ok:?} stage={stage:?}, planning failed: {error}", case.id))
            }
        }
    }
    eprintln!(
        "planner compat (random): {} cases, {} mismatches, {fixed_crashes} reference stack overflows planned instead, \
         {string_lists_refused} string list fields refused",
        cases.len(),
        failures.len()
    );
    assert!(string_lists_refused > 0, "the corpus spreads string list fields; none was refused");
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
