//! `salvage simulate` on the real binary: a real SQLite store of the shipped example runs, the
//! shipped policies and playbooks copied into a temp dir as the current set, and edited copies
//! as the proposed one.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
const VERIFIER_FAILURE: &str = "b082b9bc-0861-56d5-b884-37bbd428657e";
/// The incidents among the examples: failed, waiting_for_approval or paused.
const EXAMPLE_INCIDENTS: u64 = 7;

/// A temp dir holding `runs.db` (the examples imported) and the shipped `policies/` and
/// `playbooks/` (the current set, as salvage.yaml's defaults find them).
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab { dir: tempfile::tempdir().expect("temp dir") };
        copy_dir(&Path::new(REPO).join("policies"), &lab.path("policies"));
        copy_dir(&Path::new(REPO).join("playbooks"), &lab.path("playbooks"));
        lab.salvage().args(["import", &format!("{REPO}/examples/runs")]).assert().success();
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn salvage(&self) -> Command {
        let mut command = Command::cargo_bin("salvage").expect("binary");
        command
            .current_dir(self.dir.path())
            .env("SALVAGE_STORE", "sqlite:runs.db")
            .env_remove("SALVAGE_CONFIG")
            .env("NO_COLOR", "1");
        command
    }

    /// A copy of a shipped directory (`policies`, `policies/compat`, `playbooks`, ...) under
    /// `name`, to edit.
    fn copy(&self, shipped: &str, name: &str) -> PathBuf {
        let target = self.path(name);
        copy_dir(&Path::new(REPO).join(shipped), &target);
        target
    }

    /// `salvage simulate ARGS --json`: the exit code and the document.
    fn simulate_json(&self, args: &[&str]) -> (i32, Value) {
        let output = self.salvage().arg("simulate").args(args).arg("--json").output().expect("simulate");
        let document = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.code().expect("exit code"), document)
    }
}

/// Copies the files of `from` (subdirectories too) into `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// Replaces `from` (which must be there) by `to` everywhere in `path`.
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{} does not contain {from:?}", path.display());
    std::fs::write(path, text.replace(from, to)).expect("write");
}

fn counts(document: &Value) -> [u64; 4] {
    let counts = &document["counts"];
    ["simulated", "unchanged", "changed", "dangerous"].map(|key| counts[key].as_u64().expect(key))
}

fn changes(document: &Value) -> Vec<&Value> {
    document["incidents"]
        .as_array()
        .expect("incidents")
        .iter()
        .flat_map(|incident| incident["changes"].as_array().expect("changes").iter())
        .collect()
}

fn dangers(document: &Value) -> Vec<&str> {
    changes(document).iter().filter_map(|change| change["danger"].as_str()).collect()
}

#[test]
fn identical_sets_change_nothing() {
    let lab = Lab::new();
    let policies = lab.copy("policies", "proposed/policies");
    let playbooks = lab.copy("playbooks", "proposed/playbooks");
    let policies = policies.to_str().expect("utf-8");
    let playbooks = playbooks.to_str().expect("utf-8");
    let (code, document) = lab.simulate_json(&["--policies", policies, "--playbooks", playbooks]);
    assert_eq!(code, 0);
    assert_eq!(counts(&document), [EXAMPLE_INCIDENTS, EXAMPLE_INCIDENTS, 0, 0]);
    assert_eq!(document["current"]["policyDigest"], document["proposed"]["policyDigest"]);
    lab.salvage()
        .arg("simulate")
        .assert()
        .success()
        .stdout(predicate::str::contains("simulated 7 incident(s): 7 unchanged, 0 changed, 0 dangerous"));
}

#[test]
fn an_equivalent_refactor_of_the_policies_changes_nothing() {
    let lab = Lab::new();
    let policies = lab.copy("policies", "proposed");
    // Helpers renamed, comments added and removed, indentation changed.
    let approvals = policies.join("approvals.rhai");
    edit(&approvals, "ask_if_writes", "needs_person_when_writing");
    edit(&approvals, "join(", "joined_with(");
    edit(
        &approvals,
        "// Who must approve what.",
        "// Approval rules (refactored; same decisions).\n// Who must approve what.",
    );
    let checkpoints = policies.join("checkpoints.rhai");
    let text = std::fs::read_to_string(&checkpoints).expect("read");
    let reindented: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .map(|line| format!("{}\n", line.replacen("    ", "\t", 4)))
        .collect();
    std::fs::write(&checkpoints, reindented).expect("write");
    // The wording of a reason is an explanation, not a decision.
    edit(&approvals, "on-call recovery", "on-call recovery (reworded)");

    let (code, document) = lab.simulate_json(&["--policies", policies.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{document}");
    assert_eq!(counts(&document), [EXAMPLE_INCIDENTS, EXAMPLE_INCIDENTS, 0, 0], "{document:#}");
    assert_ne!(document["current"]["policyDigest"], document["proposed"]["policyDigest"], "the sources differ");
}

#[test]
fn a_policy_that_drops_an_approval_is_dangerous_unless_accepted() {
    let lab = Lab::new();
    // Current: the reference's set, which asks before branching after a tool failure.
    let deployed = lab.path("deployed");
    lab.copy("policies/compat", "deployed/policies");
    lab.copy("playbooks/compat", "deployed/playbooks");
    let policies = lab.copy("policies/compat", "proposed");
    edit(
        &policies.join("reference.rhai"),
        "fn requires_approval(step, ctx) {\n    recovery_policy(ctx).requiresApprovalForBranch\n}",
        "fn requires_approval(step, ctx) {\n    #{ required: false, reason: \"branches are cheap\" }\n}",
    );
    let deployed = deployed.to_str().expect("utf-8");
    let policies = policies.to_str().expect("utf-8");
    let playbooks = lab.path("deployed/playbooks");
    let args = ["--against", deployed, "--policies", policies, "--playbooks", playbooks.to_str().expect("utf-8")];

    let (code, document) = lab.simulate_json(&args);
    assert_eq!(code, 1);
    let [simulated, _, changed, dangerous] = counts(&document);
    assert_eq!(simulated, EXAMPLE_INCIDENTS);
    assert!(dangerous >= 2 && changed >= dangerous, "{document:#}");
    let removed = changes(&document)
        .into_iter()
        .find(|c| c["runId"] == FAILED_INVOICE && c["decision"] == "approval")
        .expect("the invoice's branch no longer asks");
    assert_eq!(removed["step"], "branch");
    assert_eq!(removed["before"], true);
    assert_eq!(removed["after"], false);
    assert_eq!(removed["danger"], "approval_removed");
    assert_eq!(removed["beforeExplanation"][0]["hook"], "requires_approval");
    assert_eq!(removed["afterExplanation"][0]["reason"], "branches are cheap");
    assert!(removed["afterExplanation"][0]["policyFile"].as_str().is_some_and(|f| f.ends_with("reference.rhai")));

    let output = lab.salvage().arg("simulate").args(args).output().expect("simulate");
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(
            "approval [branch]: required → not required  DANGEROUS: an approval that was required no longer is"
        ),
        "{text}"
    );
    assert!(text.contains("after  requires_approval: branches are cheap"), "both reasons are shown: {text}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--accept"), "the error says how to ship anyway");

    let (code, accepted) = lab.simulate_json(&[&args[..], &["--accept"]].concat());
    assert_eq!(code, 0);
    assert_eq!(counts(&accepted), counts(&document), "--accept changes the exit code, not the findings");
}

#[test]
fn choosing_the_checkpoint_after_the_failure_is_dangerous() {
    let lab = Lab::new();
    let policies = lab.copy("policies", "proposed");
    // The reference's rule: the run's last checkpoint (for a failed agent run, the one taken
    // after the failure).
    std::fs::write(
        policies.join("checkpoints.rhai"),
        "fn choose_checkpoint(ctx) {\n    let last = ctx.last_checkpoint();\n    \
         if last == () { return (); }\n    #{ checkpoint: last.id, reason: \"the run's last checkpoint\" }\n}\n",
    )
    .expect("write");
    let (code, document) = lab.simulate_json(&["--policies", policies.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{document:#}");
    let moved = changes(&document)
        .into_iter()
        .find(|c| c["runId"] == FAILED_INVOICE && c["decision"] == "checkpoint")
        .expect("the invoice's branch moves");
    assert_eq!(moved["step"], "branch_approved");
    assert_eq!(moved["before"], format!("{FAILED_INVOICE}:checkpoint:2"));
    assert_eq!(moved["after"], format!("{FAILED_INVOICE}:checkpoint:3"));
    assert_eq!(moved["danger"], "checkpoint_after_failure");
    let candidates = moved["afterExplanation"][0]["candidates"].as_array().expect("candidates");
    assert!(
        candidates.iter().any(|c| c["chosen"] == true && c["reason"].as_str().is_some_and(|r| r.contains("after")))
    );

    let output = lab.salvage().args(["simulate", "--policies"]).arg(&policies).output().expect("simulate");
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("DANGEROUS: the checkpoint is after the failure"), "{text}");
    assert!(text.contains("before choose_checkpoint: the last checkpoint before tool step"), "{text}");
    assert!(text.contains("after  choose_checkpoint: the run's last checkpoint"), "{text}");
}

#[test]
fn harmless_changes_are_shown_but_pass() {
    let lab = Lab::new();
    let policies = lab.copy("policies", "proposed");
    // Another approver for on-call recovery, and verifier denials filed as planning failures
    // (the same playbook handles both).
    edit(
        &policies.join("approvals.rhai"),
        "[\"oncall-sre\", \"incident-commander\"]",
        "[\"oncall-sre\", \"platform-lead\"]",
    );
    edit(&policies.join("classify.rhai"), "kind: \"verifier_failure\"", "kind: \"planning_failure\"");

    let (code, document) = lab.simulate_json(&["--policies", policies.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{document:#}");
    let [simulated, unchanged, changed, dangerous] = counts(&document);
    assert_eq!((simulated, dangerous), (EXAMPLE_INCIDENTS, 0));
    assert_eq!(changed, 3, "two invoices' approvers and one verifier incident: {document:#}");
    assert_eq!(unchanged, simulated - changed);
    assert!(dangers(&document).is_empty());
    let kinds: Vec<(&str, &str)> = changes(&document)
        .iter()
        .map(|c| (c["runId"].as_str().unwrap_or_default(), c["decision"].as_str().unwrap_or_default()))
        .collect();
    assert!(kinds.contains(&(FAILED_INVOICE, "approvers")), "{kinds:?}");
    assert!(kinds.contains(&(VERIFIER_FAILURE, "incident_kind")), "{kinds:?}");
    assert!(!kinds.iter().any(|(run, kind)| *run == VERIFIER_FAILURE && *kind == "playbook"), "same playbook");

    let output = lab.salvage().args(["simulate", "--policies"]).arg(&policies).output().expect("simulate");
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("approvers [ask_operator]: oncall-sre, incident-commander → oncall-sre, platform-lead"),
        "{text}"
    );
    assert!(text.contains("incident kind: verifier_failure → planning_failure"), "{text}");
    assert!(!text.contains("DANGEROUS"), "{text}");
}

#[test]
fn a_set_that_does_not_load_is_bad_input_with_its_location() {
    let lab = Lab::new();
    let broken = lab.copy("policies", "broken");
    std::fs::write(broken.join("bad.rhai"), "fn classify(report) {\n  report.status ==\n}\n").expect("write");
    lab.salvage()
        .args(["simulate", "--policies"])
        .arg(&broken)
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains("bad.rhai:3:1"))
        .stderr(predicate::str::contains("the proposed set does not load"));
    std::fs::create_dir_all(lab.path("deployed")).expect("dir");
    std::fs::rename(&broken, lab.path("deployed/policies")).expect("move");
    lab.salvage()
        .args(["simulate", "--against", "deployed"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("the current set does not load"));
    lab.salvage()
        .args(["simulate", "--against", "nowhere"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("neither policies/ nor playbooks/"));
    lab.salvage().args(["simulate", "--since", "a week"]).assert().code(2).stderr(predicate::str::contains("duration"));
}

#[test]
fn limit_and_since_pick_the_most_recent_incidents() {
    let lab = Lab::new();
    // A fresh copy of the failed invoice, created ten minutes ago; the examples are older.
    let recent_id = "recent-invoice-failure";
    let text = std::fs::read_to_string(format!("{REPO}/examples/runs/{FAILED_INVOICE}.json")).expect("example");
    let mut run: Value = serde_json::from_str(&text.replace(FAILED_INVOICE, recent_id)).expect("json");
    let ten_minutes_ago = time::OffsetDateTime::now_utc() - time::Duration::minutes(10);
    let created = ten_minutes_ago.format(&time::format_description::well_known::Rfc3339).expect("format");
    run["timestamps"]["createdAt"] = Value::String(created);
    let file = lab.path("recent.json");
    std::fs::write(&file, serde_json::to_vec(&run).expect("json")).expect("write");
    lab.salvage().arg("import").arg(&file).assert().success();

    // The reference's set changes every incident, so each simulated one is listed.
    let compat = ["--policies", "policies/compat", "--playbooks", "playbooks/compat", "--accept"];
    let simulated_runs = |document: &Value| -> Vec<String> {
        document["incidents"]
            .as_array()
            .expect("incidents")
            .iter()
            .map(|i| i["runId"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let (code, all) = lab.simulate_json(&compat);
    assert_eq!(code, 0);
    assert_eq!(counts(&all)[0], EXAMPLE_INCIDENTS + 1);
    let order = simulated_runs(&all);
    assert_eq!(order[0], recent_id, "newest first: {order:?}");
    let created: Vec<&str> =
        all["incidents"].as_array().expect("incidents").iter().filter_map(|i| i["createdAt"].as_str()).collect();
    assert!(created.windows(2).all(|pair| pair[0] >= pair[1]), "{created:?}");

    let (_, limited) = lab.simulate_json(&[&compat[..], &["--limit", "3"]].concat());
    assert_eq!(counts(&limited)[0], 3);
    assert_eq!(simulated_runs(&limited), order[..3]);

    let (_, recent) = lab.simulate_json(&[&compat[..], &["--since", "1h"]].concat());
    assert_eq!(counts(&recent)[0], 1);
    assert_eq!(simulated_runs(&recent), [recent_id]);

    let (_, long_ago) = lab.simulate_json(&[&compat[..], &["--since", "5200w"]].concat());
    assert_eq!(counts(&long_ago)[0], EXAMPLE_INCIDENTS + 1);

    let (_, none) = lab.simulate_json(&[&compat[..], &["--limit", "0"]].concat());
    assert_eq!(counts(&none), [0, 0, 0, 0]);
}

#[test]
fn the_json_document_has_a_stable_shape() {
    let lab = Lab::new();
    let (code, document) =
        lab.simulate_json(&["--policies", "policies/compat", "--playbooks", "playbooks/compat", "--limit", "2"]);
    assert_eq!(code, 1, "the reference's set is dangerous");
    let keys = |value: &Value| -> Vec<String> { value.as_object().expect("object").keys().cloned().collect() };
    assert_eq!(keys(&document), ["current", "proposed", "counts", "incidents", "problems"]);
    assert_eq!(keys(&document["current"]), ["policies", "playbooks", "policyDigest", "playbookSetDigest"]);
    assert_eq!(document["proposed"]["policies"], "policies/compat");
    assert_eq!(
        keys(&document["counts"]),
        ["simulated", "unchanged", "changed", "dangerous", "dangerousChanges", "unplannable"]
    );
    let incident = &document["incidents"][0];
    assert_eq!(keys(incident), ["runId", "status", "createdAt", "incidentType", "changes"]);
    for change in incident["changes"].as_array().expect("changes") {
        assert_eq!(
            keys(change),
            ["runId", "decision", "step", "before", "after", "danger", "beforeExplanation", "afterExplanation"]
        );
        assert!(
            [
                "incident_kind",
                "playbook",
                "checkpoint",
                "approval",
                "approvers",
                "step_added",
                "step_removed",
                "step_changed",
                "reachable",
                "outcome",
                "fail_closed",
                "planning_error"
            ]
            .contains(&change["decision"].as_str().unwrap_or_default()),
            "{change}"
        );
    }
    let playbook = incident["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["decision"] == "playbook")
        .expect("the playbook changes");
    assert_eq!(playbook["after"], serde_json::json!({ "name": "reference-planner", "version": 1 }));
}

#[test]
fn an_unreadable_incident_is_counted_and_the_others_are_simulated() {
    let lab = Lab::new();
    let conn = rusqlite::Connection::open(lab.path("runs.db")).expect("open the store's database");
    let corrupted =
        conn.execute("UPDATE runs SET body = '{ \"id\": oops' WHERE id = ?1", [VERIFIER_FAILURE]).expect("corrupt");
    assert_eq!(corrupted, 1);
    drop(conn);
    let (code, document) =
        lab.simulate_json(&["--policies", "policies/compat", "--playbooks", "playbooks/compat", "--accept"]);
    assert_eq!(code, 0);
    assert_eq!(document["counts"]["simulated"], EXAMPLE_INCIDENTS);
    assert_eq!(document["counts"]["unplannable"], 1, "neither set can read it: {document:#}");
    assert_eq!(document["counts"]["changed"], EXAMPLE_INCIDENTS - 1, "every other incident is replayed");
    assert!(!changes(&document).iter().any(|c| c["runId"] == VERIFIER_FAILURE));
    let problems = document["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].as_str().is_some_and(|p| p.starts_with(VERIFIER_FAILURE) && p.contains(":1:9: expected value")),
        "{problems:?}"
    );
    lab.salvage()
        .arg("simulate")
        .assert()
        .success()
        .stdout(predicate::str::contains("(1 could not be planned with either set)"))
        .stderr(predicate::str::contains(format!("warning: {VERIFIER_FAILURE}: neither set can plan it")));
}

#[test]
fn the_report_for_people_shows_each_change_with_both_reasons() {
    let lab = Lab::new();
    let policies = lab.copy("policies", "policies.next");
    std::fs::write(
        policies.join("checkpoints.rhai"),
        "fn choose_checkpoint(ctx) {\n    let last = ctx.last_checkpoint();\n    \
         if last == () { return (); }\n    #{ checkpoint: last.id, reason: \"simpler: the run's last checkpoint\" }\n}\n",
    )
    .expect("write");
    edit(
        &policies.join("approvals.rhai"),
        "[\"oncall-sre\", \"incident-commander\"]",
        "[\"oncall-sre\", \"platform-lead\"]",
    );
    let output = lab.salvage().args(["simulate", "--policies", "policies.next"]).output().expect("simulate");
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8(output.stdout).expect("utf-8");
    insta::with_settings!({ filters => vec![(r"policy digest [0-9a-f]{12}", "policy digest [digest]")] }, {
        insta::assert_snapshot!(text);
    });
}
