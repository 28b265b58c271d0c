//! The real `salvage` binary, driven command by command, including its error paths.

mod conformance_support;
#[path = "common/scratch.rs"]
mod scratch;

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;
use scratch::{EXAMPLES, Scratch};
use serde_json::Value;

const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
const HEALTHY_INVOICE: &str = "08f02c15-b89c-5381-9129-2b27974351a8";
const WAITING_REFUND: &str = "6642c01a-890f-53f5-85d9-81f26aaed645";
const WORKFLOW_ROOT: &str = "bc96e94c-2c82-545b-8884-4d94b2e595d4";
const WORKFLOW_FAILED_CHILD: &str = "221768ec-bf9c-5e1a-a8b2-ebb43be8e23d";

fn stdout_json(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
}

fn example_count() -> usize {
    std::fs::read_dir(EXAMPLES)
        .expect("examples")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json")))
        .count()
}

#[test]
fn import_creates_the_default_sqlite_store_and_runs_lists_every_run() {
    let scratch = Scratch::new();
    scratch.salvage().args(["import", EXAMPLES]).assert().success().stderr(predicate::str::contains(format!(
        "imported {} run(s) into sqlite:.salvage/salvage.db",
        example_count()
    )));
    assert!(scratch.path(".salvage/salvage.db").is_file());
    let output = scratch.salvage().args(["runs", "--json"]).output().expect("runs");
    assert!(output.status.success());
    let runs = stdout_json(&output);
    assert_eq!(runs.as_array().map(Vec::len), Some(example_count()));
    let text = scratch.salvage().arg("runs").assert().success().get_output().stdout.clone();
    let text = String::from_utf8(text).expect("utf-8");
    assert!(text.starts_with("RUN"), "a header line first: {text}");
    assert!(!text.contains('\u{1b}'), "no colour when stdout is not a terminal");
    assert!(text.contains(&format!("{} runs:", example_count())));
}

#[test]
fn runs_filters_by_status_and_refuses_a_misspelled_status() {
    let scratch = Scratch::with_examples();
    let output = scratch.salvage().args(["runs", "--status", "failed", "--json"]).output().expect("runs");
    let runs = stdout_json(&output);
    let runs = runs.as_array().expect("array");
    assert_eq!(runs.len(), 5, "invoice, workflow root and child, queue worker, verifier denial");
    assert!(runs.iter().all(|run| run["status"] == "failed"));
    scratch
        .salvage()
        .args(["runs", "--status", "FAILED"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("did you mean \"failed\""));
}

#[test]
fn inspect_prints_the_run_summary() {
    let scratch = Scratch::with_examples();
    let output = scratch.salvage().args(["inspect", FAILED_INVOICE, "--json"]).output().expect("inspect");
    assert!(output.status.success());
    let summary = stdout_json(&output);
    assert_eq!(summary["id"], FAILED_INVOICE);
    assert_eq!(summary["status"], "failed");
    let types: Vec<&str> =
        summary["steps"].as_array().expect("steps").iter().filter_map(|s| s["type"].as_str()).collect();
    assert_eq!(types, ["model", "tool"]);
    assert_eq!(summary["checkpoints"].as_array().map(Vec::len), Some(3));
    assert_eq!(summary["errors"][0]["name"], "ToolExecutionError");
    let keys: Vec<&String> = summary.as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        [
            "id",
            "status",
            "input",
            "output",
            "events",
            "steps",
            "checkpoints",
            "metrics",
            "childRunAggregate",
            "lineage",
            "assessment",
            "evidence",
            "pendingApproval",
            "pendingPause",
            "errors"
        ]
    );
    scratch
        .salvage()
        .args(["inspect", FAILED_INVOICE])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("{FAILED_INVOICE}:step:2")))
        .stdout(predicate::str::contains("ToolExecutionError: Tool \"create_invoice\" failed"));
}

#[test]
fn an_unknown_run_id_is_bad_input_everywhere() {
    let scratch = Scratch::with_examples();
    for args in [
        vec!["inspect", "nope"],
        vec!["report", "nope"],
        vec!["tree", "--root", "nope"],
        vec!["diff", FAILED_INVOICE, "nope"],
        vec!["correlate", "nope"],
        vec!["export", "nope"],
        vec!["envelope", "nope", "--action", "replay"],
    ] {
        scratch
            .salvage()
            .args(&args)
            .assert()
            .code(2)
            .stdout(predicate::str::is_empty())
            .stderr(predicate::str::contains("run \"nope\" not found"));
    }
    scratch
        .salvage()
        .args(["report", FAILED_INVOICE, "--compare-to", "nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("comparison run \"nope\" not found"));
}

#[test]
fn reading_a_store_that_does_not_exist_is_a_store_error_and_creates_nothing() {
    let scratch = Scratch::new();
    scratch
        .salvage()
        .arg("runs")
        .assert()
        .code(3)
        .stderr(predicate::str::contains("store sqlite:.salvage/salvage.db does not exist"));
    assert!(!scratch.path(".salvage").exists(), "a read must not create a store");
    scratch
        .salvage()
        .args(["--store", "mysql://x", "runs"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown scheme"));
}

#[test]
fn report_recommends_and_compares() {
    let scratch = Scratch::with_examples();
    let output = scratch
        .salvage()
        .args(["report", FAILED_INVOICE, "--compare-to", HEALTHY_INVOICE, "--json"])
        .output()
        .expect("report");
    assert!(output.status.success());
    let report = stdout_json(&output);
    assert_eq!(report["failedSteps"][0]["id"], format!("{FAILED_INVOICE}:step:2"));
    assert_eq!(report["comparison"]["leftRunId"], HEALTHY_INVOICE);
    assert_eq!(report["comparison"]["statusChanged"], true);
    let recommendations: Vec<&str> =
        report["recommendations"].as_array().expect("array").iter().filter_map(Value::as_str).collect();
    assert_eq!(
        recommendations,
        [
            "Inspect the last error: Tool \"create_invoice\" failed: billing-api returned 503 Service Unavailable (request id 7f3a).",
            &format!("Replay or branch near the failed step: {FAILED_INVOICE}:step:2."),
            &format!("Use checkpoint \"{FAILED_INVOICE}:checkpoint:3\" for partial replay or branching."),
            "Review the trace diff to understand where this run diverged from the comparison run.",
        ]
    );
    let text = scratch.salvage().args(["report", WAITING_REFUND]).assert().success().get_output().stdout.clone();
    let text = String::from_utf8(text).expect("utf-8");
    assert!(text.contains("pending approval: tool send_refund"), "{text}");
    assert!(text.contains("1. Resolve the pending approval before attempting replay or resume."), "{text}");
}

#[test]
fn tree_renders_the_workflow_family_exactly_like_the_reference() {
    let scratch = Scratch::with_examples();
    let output = scratch.salvage().args(["tree", "--root", WORKFLOW_ROOT]).output().expect("tree");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!(
            "{WORKFLOW_ROOT} [failed]\n├─ d6603f76-1071-5071-8996-2b5451fa71b5 [completed]\n└─ {WORKFLOW_FAILED_CHILD} [failed]\n"
        )
    );
    let output = scratch.salvage().args(["tree", "--root", WORKFLOW_ROOT, "--no-status"]).output().expect("tree");
    assert!(!String::from_utf8_lossy(&output.stdout).contains('['));
    let output = scratch.salvage().args(["tree", "--json"]).output().expect("tree");
    let roots = stdout_json(&output);
    let count = |node: &Value| -> usize {
        fn walk(node: &Value) -> usize {
            1 + node["children"].as_array().map_or(0, |children| children.iter().map(walk).sum())
        }
        walk(node)
    };
    let total: usize = roots.as_array().expect("roots").iter().map(count).sum();
    assert_eq!(total, example_count(), "every run appears once in the forest");
}

#[test]
fn diff_and_correlate() {
    let scratch = Scratch::with_examples();
    let output = scratch.salvage().args(["diff", HEALTHY_INVOICE, FAILED_INVOICE, "--json"]).output().expect("diff");
    let diff = stdout_json(&output);
    assert_eq!(diff["leftRunId"], HEALTHY_INVOICE);
    assert_eq!(diff["eventTypesAdded"], serde_json::json!(["tool_failed", "run_failed"]));
    assert_eq!(diff["firstDivergingStepIndex"], 1);
    let output = scratch.salvage().args(["correlate", WORKFLOW_FAILED_CHILD, "--json"]).output().expect("correlate");
    let correlation = stdout_json(&output);
    assert_eq!(
        correlation,
        serde_json::json!({"traceId": WORKFLOW_ROOT, "spanId": WORKFLOW_FAILED_CHILD, "parentSpanId": WORKFLOW_ROOT,
                           "checkpointId": null, "status": "failed"})
    );
}

#[test]
fn export_validate_and_reimport_round_trip() {
    let scratch = Scratch::with_examples();
    let trace = scratch.path("invoice.trace.json");
    scratch
        .salvage()
        .args(["export", FAILED_INVOICE, "--metadata", r#"{"ticket":"INC-1"}"#, "-o"])
        .arg(&trace)
        .assert()
        .success()
        .stdout(predicate::str::is_empty());
    let exported: Value = serde_json::from_slice(&std::fs::read(&trace).expect("trace file")).expect("json");
    assert_eq!(exported["metadata"]["ticket"], "INC-1");
    assert_eq!(exported["traceType"], "run");
    scratch.salvage().arg("validate").arg(&trace).assert().success().stdout(predicate::str::contains("valid"));

    let bundle = scratch.path("bundle.json");
    scratch
        .salvage()
        .args(["export", "--bundle", FAILED_INVOICE, HEALTHY_INVOICE, "-o"])
        .arg(&bundle)
        .assert()
        .success();
    scratch
        .salvage()
        .arg("validate")
        .arg(&bundle)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("Bundle format is not allowed in this context."));
    let output =
        scratch.salvage().arg("validate").arg(&bundle).args(["--allow-bundle", "--json"]).output().expect("validate");
    assert_eq!(stdout_json(&output), serde_json::json!({"valid": true, "errors": [], "warnings": []}));

    // A fresh file store gets the bundle's runs back, unchanged.
    let other = scratch.path("other-store");
    scratch
        .salvage()
        .arg("--store")
        .arg(format!("file:{}", other.display()))
        .arg("import")
        .arg(&bundle)
        .assert()
        .success();
    let original: Value = serde_json::from_slice(
        &std::fs::read(Path::new(EXAMPLES).join(format!("{FAILED_INVOICE}.json"))).expect("example"),
    )
    .expect("json");
    let copied: Value =
        serde_json::from_slice(&std::fs::read(other.join(format!("{FAILED_INVOICE}.json"))).expect("copied run"))
            .expect("json");
    assert_eq!(copied, original);
}

#[test]
fn partial_export_from_a_checkpoint() {
    let scratch = Scratch::with_examples();
    let checkpoint = format!("{FAILED_INVOICE}:checkpoint:2");
    let output = scratch
        .salvage()
        .args(["export", FAILED_INVOICE, "--partial", "--checkpoint", &checkpoint])
        .output()
        .expect("export");
    assert!(output.status.success());
    let trace = stdout_json(&output);
    assert_eq!(trace["traceType"], "partial");
    assert_eq!(trace["metadata"]["checkpointId"], checkpoint.as_str());
    assert_eq!(trace["run"]["status"], "paused");
    assert_eq!(trace["run"]["pendingPause"]["stage"], "branch");
    let id = trace["run"]["id"].as_str().expect("id");
    assert!(id.starts_with(&format!("{FAILED_INVOICE}:partial:")), "{id}");
    scratch
        .salvage()
        .args(["export", FAILED_INVOICE, "--partial", "--checkpoint", "missing"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!("Checkpoint \"missing\" not found on run \"{FAILED_INVOICE}\".")));
    scratch
        .salvage()
        .args(["export", FAILED_INVOICE, HEALTHY_INVOICE])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--bundle"));
    scratch
        .salvage()
        .args(["export", FAILED_INVOICE, "--metadata", "[1]"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--metadata must be a JSON object"));
}

#[test]
fn import_is_all_or_nothing_and_lists_every_problem() {
    let scratch = Scratch::new();
    let broken = scratch.path("broken.json");
    std::fs::write(&broken, "{\n  \"id\": \"r1\",\n  \"status\": failed\n}\n").expect("write");
    let bad_trace = scratch.path("bad-trace.json");
    std::fs::write(&bad_trace, r#"{"format": "agnostic-agents-run-trace", "run": {"id": "x"}}"#).expect("write");
    scratch
        .salvage()
        .arg("import")
        .arg(EXAMPLES)
        .arg(&broken)
        .arg(&bad_trace)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("broken.json:3:15"))
        .stderr(predicate::str::contains("schemaVersion is required."))
        .stderr(predicate::str::contains("exportedAt is required."))
        .stderr(predicate::str::contains("run.status is required."))
        .stderr(predicate::str::contains("nothing was imported"));
    assert!(!scratch.path(".salvage").exists(), "nothing may be written when the batch is rejected");
}

/// Writes `count` clones of an example run (ids `clone-00000`...) into `dir`, one file each.
fn write_clones(dir: &Path, count: usize) {
    std::fs::create_dir_all(dir).expect("dir");
    let text = std::fs::read_to_string(Path::new(EXAMPLES).join(format!("{FAILED_INVOICE}.json"))).expect("example");
    for n in 0..count {
        let id = format!("clone-{n:05}");
        std::fs::write(dir.join(format!("{id}.json")), text.replace(FAILED_INVOICE, &id)).expect("write");
    }
}

fn run_count(scratch: &Scratch) -> usize {
    let output = scratch.salvage().args(["runs", "--json"]).output().expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    stdout_json(&output).as_array().map_or(0, Vec::len)
}

/// An import larger than one chunk goes to the store while it is read; a problem in the last
/// file still imports nothing, and every problem is listed (here a run given twice with
/// different content, found in a later chunk than its first copy).
#[test]
fn a_streamed_import_with_a_late_problem_imports_nothing() {
    let scratch = Scratch::with_examples();
    let before = run_count(&scratch);
    let clones = scratch.path("clones");
    write_clones(&clones, 1_300);
    let other = scratch.path("other");
    std::fs::create_dir(&other).expect("dir");
    let first = std::fs::read_to_string(clones.join("clone-00003.json")).expect("clone");
    // The same run again (imported once) and the same id with other content (refused).
    std::fs::write(other.join("same.json"), &first).expect("write");
    std::fs::write(other.join("different.json"), first.replace("\"failed\"", "\"completed\"")).expect("write");
    std::fs::write(other.join("zz-broken.json"), "{\n  \"id\": \"late\",\n  \"status\": nope\n}\n").expect("write");
    scratch
        .salvage()
        .arg("import")
        .arg(&clones)
        .arg(&other)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("run \"clone-00003\" appears twice with different content"))
        .stderr(predicate::str::contains("clone-00003.json and "))
        .stderr(predicate::str::contains("different.json"))
        .stderr(predicate::str::contains("zz-broken.json:3:14"))
        .stderr(predicate::str::contains("nothing was imported: 2 problem(s)"));
    assert_eq!(run_count(&scratch), before, "a rejected import leaves the store as it was");

    std::fs::remove_file(other.join("different.json")).expect("remove");
    std::fs::remove_file(other.join("zz-broken.json")).expect("remove");
    let output = scratch.salvage().arg("import").arg(&clones).arg(&other).arg("--json").output().expect("import");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let imported = stdout_json(&output);
    assert_eq!((imported["files"].as_u64(), imported["imported"].as_u64()), (Some(1_301), Some(1_300)));
    let ids: Vec<&str> =
        imported["runs"].as_array().map_or(Vec::new(), |runs| runs.iter().filter_map(|r| r["id"].as_str()).collect());
    assert_eq!(ids.len(), 1_300);
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "listed in id order, once each");
    assert_eq!(run_count(&scratch), before + 1_300);
}

/// An import killed (`kill -9`) while it writes leaves the store as it was: what it wrote was
/// in a transaction that never committed, and the next command rolls it back.
#[test]
fn an_import_killed_while_it_writes_leaves_the_store_as_it_was() {
    let scratch = Scratch::with_examples();
    let before = run_count(&scratch);
    let clones = scratch.path("clones");
    write_clones(&clones, 4_000);
    let wal = scratch.path(".salvage/salvage.db-wal");
    let wal_before = std::fs::metadata(&wal).map_or(0, |m| m.len());
    let mut import = scratch
        .std_salvage()
        .arg("import")
        .arg(&clones)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the import");
    // Killed once the transaction has spilled pages to the WAL (runs written, not committed).
    let started = std::time::Instant::now();
    while std::fs::metadata(&wal).map_or(0, |m| m.len()) < wal_before + (1 << 20) {
        assert!(import.try_wait().expect("poll").is_none(), "the import ended before it could be killed");
        assert!(started.elapsed() < std::time::Duration::from_secs(120), "the import never wrote");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    import.kill().expect("kill the import");
    let status = import.wait().expect("wait");
    assert!(!status.success(), "killed, not finished: {status:?}");
    assert_eq!(run_count(&scratch), before, "a killed import leaves the store as it was");
    // And the store takes the same import again, whole.
    scratch.salvage().arg("import").arg(&clones).assert().success();
    assert_eq!(run_count(&scratch), before + 4_000);
}

/// A store that cannot take the runs (here a file store directory that is a file) fails the
/// import with the store's error, and the input is left alone.
#[test]
fn an_import_into_a_store_that_fails_reports_the_store() {
    let scratch = Scratch::new();
    let clones = scratch.path("clones");
    write_clones(&clones, 600);
    std::fs::write(scratch.path("not-a-dir"), "").expect("write");
    let store = format!("file:{}", scratch.path("not-a-dir").display());
    scratch
        .salvage()
        .args(["--store", &store, "import"])
        .arg(&clones)
        .assert()
        .code(3)
        .stderr(predicate::str::contains("not-a-dir"));
    assert_eq!(std::fs::read_dir(&clones).map(Iterator::count).ok(), Some(600));
}

#[test]
fn a_corrupt_file_in_a_file_store_is_named_and_the_others_still_serve() {
    let scratch = Scratch::new();
    let dir = scratch.path("runs");
    std::fs::create_dir(&dir).expect("dir");
    for name in [FAILED_INVOICE, HEALTHY_INVOICE] {
        std::fs::copy(Path::new(EXAMPLES).join(format!("{name}.json")), dir.join(format!("{name}.json")))
            .expect("copy");
    }
    std::fs::write(dir.join("corrupt-run.json"), "{\"id\": \"corrupt-run\",\n \"status\": ").expect("write");
    let store = format!("file:{}", dir.display());
    scratch
        .salvage()
        .args(["--store", &store, "runs"])
        .assert()
        .code(3)
        .stdout(predicate::str::contains(FAILED_INVOICE).and(predicate::str::contains(HEALTHY_INVOICE)))
        .stderr(predicate::str::contains("corrupt-run.json:2:"));
    scratch.salvage().args(["--store", &store, "inspect", FAILED_INVOICE]).assert().success();
    scratch
        .salvage()
        .args(["--store", &store, "inspect", "corrupt-run"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("corrupt-run.json:2:"));
}

#[test]
fn validate_rejects_what_is_not_a_trace() {
    let scratch = Scratch::new();
    let file = scratch.path("x.json");
    std::fs::write(&file, r#"{"format": "bad"}"#).expect("write");
    let output = scratch.salvage().arg("validate").arg(&file).arg("--json").output().expect("validate");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stdout_json(&output),
        serde_json::json!({"valid": false, "errors": ["schemaVersion is required.", "Unsupported trace format."], "warnings": []})
    );
    std::fs::write(&file, "not json").expect("write");
    scratch.salvage().arg("validate").arg(&file).assert().code(2).stderr(predicate::str::contains("x.json:1:2"));
    scratch
        .salvage()
        .arg("validate")
        .arg(scratch.path("absent.json"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot read"));
}

#[test]
fn envelopes_are_created_only_when_a_runtime_could_continue_them() {
    let scratch = Scratch::with_examples();
    let checkpoint = format!("{HEALTHY_INVOICE}:checkpoint:5");
    let output = scratch
        .salvage()
        .args(["envelope", HEALTHY_INVOICE, "--action", "replay", "--checkpoint", &checkpoint, "--json"])
        .output()
        .expect("envelope");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let envelope = stdout_json(&output);
    assert_eq!(envelope["format"], "agnostic-agents-distributed-run-envelope");
    assert_eq!(envelope["schemaVersion"], "1.0");
    assert_eq!(envelope["action"], "replay");
    assert_eq!(envelope["runtimeKind"], "agent");
    assert_eq!(envelope["checkpointId"], checkpoint.as_str());
    assert_eq!(envelope["metadata"], serde_json::json!({"sourceRunId": HEALTHY_INVOICE}));
    scratch
        .salvage()
        .args(["envelope", HEALTHY_INVOICE, "--action", "teleport"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("Unsupported distributed run action \"teleport\"."));
    scratch
        .salvage()
        .args(["envelope", HEALTHY_INVOICE, "--action", "branch", "--checkpoint", "nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("Checkpoint \"nope\" not found"));
}

#[test]
fn json_output_of_a_corpus_store_is_exactly_the_reference_object() {
    let Some(corpus) = conformance_support::corpus_dir() else { return };
    let store_dir = corpus.join("stores/b1-tool-failure-single-write");
    let scratch = Scratch::new();
    scratch.salvage().arg("import").arg(store_dir.join("runs")).assert().success();
    for expected_file in std::fs::read_dir(store_dir.join("expected")).expect("expected").filter_map(Result::ok) {
        let path = expected_file.path();
        let run_id = path.file_stem().and_then(|s| s.to_str()).expect("name").to_owned();
        if run_id == "_store" {
            continue;
        }
        let expected = conformance_support::read_json(&path);
        let output = scratch.salvage().args(["report", &run_id, "--json"]).output().expect("report");
        assert_eq!(stdout_json(&output), expected["incidentReport"], "report of {run_id}");
        let output = scratch.salvage().args(["inspect", &run_id, "--json"]).output().expect("inspect");
        assert_eq!(stdout_json(&output), expected["summarize"], "summary of {run_id}");
    }
}

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn in_repo() -> Command {
    let mut command = Command::cargo_bin("salvage").expect("binary");
    command.current_dir(REPO).env("NO_COLOR", "1");
    command
}

#[test]
fn check_passes_the_shipped_playbooks_and_fails_broken_ones() {
    in_repo().arg("check").assert().success().stderr(predicate::str::contains("0 error(s)"));
    let output = in_repo().args(["check", "--playbooks", "tests/playbooks/invalid", "--json"]).output().expect("check");
    assert_eq!(output.status.code(), Some(1));
    let diagnostics = stdout_json(&output);
    let diagnostics = diagnostics.as_array().expect("array");
    assert!(diagnostics.len() >= 40, "one or more per fixture");
    for diagnostic in diagnostics {
        let keys: Vec<&String> = diagnostic.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["code", "severity", "file", "line", "column", "message", "help"]);
    }
    // Rendered like rustc: file:line:column and a label under the offending text.
    in_repo()
        .args(["check", "--playbooks", "tests/playbooks/invalid"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("╭─[tests/playbooks/invalid/"))
        .stderr(predicate::str::contains("error(s)"));
    in_repo()
        .args(["check", "--policies", "no-such-dir"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no-such-dir"));
}

#[test]
fn graph_schema_and_explain() {
    let output =
        in_repo().args(["graph", "side-effecting-tool-failed", "--format", "mermaid"]).output().expect("graph");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("flowchart TD"), "{text}");
    assert!(text.contains("ask_operator"), "{text}");
    let output = in_repo().args(["graph", "playbooks/generic-fallback.yaml"]).output().expect("graph");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("digraph"));
    in_repo()
        .args(["graph", "no-such-playbook"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("side-effecting-tool-failed"));

    let output = in_repo().arg("schema").output().expect("schema");
    let committed: Value = serde_json::from_slice(
        &std::fs::read(Path::new(REPO).join("playbooks/playbook.schema.json")).expect("schema file"),
    )
    .expect("json");
    assert_eq!(stdout_json(&output), committed, "`salvage schema` prints the committed schema");

    in_repo().args(["explain", "P054"]).assert().success().stdout(predicate::str::contains("irreversible"));
    in_repo().args(["explain", "p052"]).assert().success();
    in_repo().args(["explain", "X999"]).assert().code(2).stderr(predicate::str::contains("P001"));
}

#[test]
fn plan_explains_the_incident_and_fails_clearly_on_bad_input() {
    let scratch = Scratch::with_examples();
    let policies = Path::new(REPO).join("policies");
    let playbooks = Path::new(REPO).join("playbooks");
    let output = scratch
        .salvage()
        .args(["plan", FAILED_INVOICE, "--compare-to", HEALTHY_INVOICE, "--json", "--policies"])
        .arg(&policies)
        .arg("--playbooks")
        .arg(&playbooks)
        .output()
        .expect("plan");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let plan = stdout_json(&output);
    assert_eq!(plan["incidentType"], "tool_failure");
    assert_eq!(plan["playbook"]["name"], "side-effecting-tool-failed");
    assert_eq!(plan["recommendedAction"], "branch_from_failure_checkpoint");
    assert_eq!(plan["runRevision"], 1);
    for key in
        ["runId", "status", "incidentType", "recoveryPolicy", "correlation", "incident", "steps", "recommendedAction"]
    {
        assert!(plan.get(key).is_some(), "the reference's key {key} is there");
    }
    let text = scratch
        .salvage()
        .args(["plan", FAILED_INVOICE, "--policies"])
        .arg(&policies)
        .arg("--playbooks")
        .arg(&playbooks)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(text).expect("utf-8");
    assert!(text.contains("needs approval"), "{text}");
    assert!(text.contains(&format!("checkpoint: {FAILED_INVOICE}:checkpoint:2")), "{text}");
    assert!(text.contains("path: report (ok) → export (ok)"), "{text}");

    scratch
        .salvage()
        .args(["plan", "nope", "--policies"])
        .arg(&policies)
        .arg("--playbooks")
        .arg(&playbooks)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("run \"nope\" not found"));
    let broken = scratch.path("broken-policies");
    std::fs::create_dir(&broken).expect("dir");
    std::fs::write(broken.join("bad.rhai"), "fn classify(report) {\n  report.status ==\n}\n").expect("write");
    scratch
        .salvage()
        .args(["plan", FAILED_INVOICE, "--policies"])
        .arg(&broken)
        .arg("--playbooks")
        .arg(&playbooks)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("bad.rhai:3:1"))
        .stderr(predicate::str::contains("cannot plan"));
}

#[test]
fn policy_defs_describe_the_hooks_and_ctx() {
    let output = in_repo().args(["policy", "defs"]).output().expect("defs");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("fn classify(report, ctx)"), "the hook API header");
    assert!(text.contains("fn last_checkpoint_before_failure(ctx: Context) -> map;"));
    assert!(text.contains("fn get report(ctx: Context) -> map;"));
}

#[test]
fn migrate_brings_a_sqlite_store_up_to_date_once() {
    let scratch = Scratch::new();
    let first = scratch.salvage().arg("migrate").output().expect("run");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(
        String::from_utf8_lossy(&first.stdout),
        "applied   1  runs\napplied   2  executions\napplied   3  state\napplied   4  tree leaves\n\
         sqlite:.salvage/salvage.db: schema version 0 -> 4\n"
    );
    assert!(scratch.path(".salvage/salvage.db").is_file());
    scratch
        .salvage()
        .arg("migrate")
        .assert()
        .success()
        .stdout("sqlite:.salvage/salvage.db: schema version 4, up to date\n");
    let json = scratch.salvage().args(["migrate", "--json"]).output().expect("run");
    assert_eq!(
        stdout_json(&json),
        serde_json::json!({"store": "sqlite:.salvage/salvage.db", "fromVersion": 4, "toVersion": 4, "applied": []})
    );
    scratch
        .salvage()
        .args(["migrate", "--store", "memory:"])
        .assert()
        .success()
        .stdout("")
        .stderr(predicate::str::contains("memory: has no schema to migrate"));
}

/// `exportedAt` stamps the moment of export; everything else must match.
fn without_export_times(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\"exportedAt\": \"") {
        let value = at + "\"exportedAt\": \"".len();
        out.push_str(&rest[..value]);
        let end = rest[value..].find('"').map_or(rest.len(), |end| value + end);
        out.push_str("<time>");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The streamed exports print exactly what the export's `Value` (`export_run` /
/// `export_bundle` + `to_value`) pretty-prints, on stdout and into a file, for every example
/// run in the store.
#[test]
fn streamed_exports_are_the_value_exports_byte_for_byte() {
    use salvage::inspect::trace;
    use salvage::store::StoreSpec;

    let scratch = Scratch::with_examples();
    let spec = StoreSpec::parse(&format!("sqlite:{}", scratch.path(".salvage/salvage.db").display())).expect("spec");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let runs = runtime.block_on(async {
        let store = salvage::store::open(&spec).await.expect("open the store");
        let ids: Vec<String> =
            store.list(&salvage::store::RunQuery::all()).await.expect("list").items.into_iter().map(|e| e.id).collect();
        store.get_many(&ids).await.expect("runs").items.into_iter().map(|stored| stored.run).collect::<Vec<_>>()
    });
    assert_eq!(runs.len(), example_count());
    let ids: Vec<&str> = runs.iter().map(|run| run.id.as_str()).collect();
    let metadata: serde_json::Map<String, Value> =
        serde_json::from_str(r#"{"ticket":"INC-1","nested":{"a":[1,2.5,"x"]}}"#).expect("metadata");

    let expected = format!(
        "{}\n",
        serde_json::to_string_pretty(&trace::export_bundle(&runs, metadata.clone()).to_value()).expect("pretty")
    );
    let stdout = scratch
        .salvage()
        .args(["export", "--bundle", "--metadata", r#"{"ticket":"INC-1","nested":{"a":[1,2.5,"x"]}}"#])
        .args(&ids)
        .output()
        .expect("export");
    assert!(stdout.status.success(), "{}", String::from_utf8_lossy(&stdout.stderr));
    let printed = String::from_utf8(stdout.stdout).expect("utf-8");
    assert_eq!(without_export_times(&printed), without_export_times(&expected));
    let file = scratch.path("bundle.json");
    scratch
        .salvage()
        .args(["export", "--bundle", "--metadata", r#"{"ticket":"INC-1","nested":{"a":[1,2.5,"x"]}}"#])
        .args(&ids)
        .arg("-o")
        .arg(&file)
        .assert()
        .success();
    let written = std::fs::read_to_string(&file).expect("bundle file");
    assert_eq!(without_export_times(&written), without_export_times(&expected));

    for run in &runs {
        let expected = format!(
            "{}\n",
            serde_json::to_string_pretty(&trace::export_run(run, serde_json::Map::new()).to_value()).expect("pretty")
        );
        let output = scratch.salvage().args(["export", &run.id]).output().expect("export");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let printed = String::from_utf8(output.stdout).expect("utf-8");
        assert_eq!(without_export_times(&printed), without_export_times(&expected), "run {}", run.id);
    }
}
