//! Crash safety of the runner, on the real binary: a test-only switch
//! (`SALVAGE_TEST_CRASH_AT=intent|effect|outcome:STEP`) aborts the process at each journal
//! point of a plan whose effects run through the `command` runtime; the command records every
//! idempotency key it is given. After each crash, `salvage resume` must finish the execution
//! without running an irreversible command twice, and an interrupted step whose effect cannot
//! be repeated safely must stop in `needs_operator` until a person says what happened.

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;

const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A working directory with the examples in a `file:` store, a command runtime that acts like
/// a runtime writing that store (it creates the replay as a run file, and a resume completes the
/// run) and logs every effect, and a playbook whose steps are idempotent (export), compensable
/// (the replay) and irreversible (the resume of the replay).
struct Workspace {
    dir: tempfile::TempDir,
}

/// The command runtime: records `<idempotency key> <action>`, then does what a runtime would.
const RUNTIME_SCRIPT: &str = r#"#!/bin/sh
dir="$(dirname "$0")"
echo "$SALVAGE_IDEMPOTENCY_KEY $SALVAGE_ACTION" >> "$dir/effects.log"
now="$(date -u +%Y-%m-%dT%H:%M:%S.000Z)"
case "$SALVAGE_ACTION" in
  partial_replay)
    id="$SALVAGE_NEW_RUN_ID"
    cat > "$dir/runs/.new.tmp" <<EOF
{"id": "$id", "input": "retry", "state": {}, "messages": [], "steps": [], "toolCalls": [], "toolResults": [],
 "checkpoints": [], "errors": [], "events": [],
 "timestamps": {"createdAt": "$now", "startedAt": "$now", "updatedAt": "$now", "completedAt": null, "failedAt": null, "cancelledAt": null},
 "status": "paused", "output": null, "pendingApproval": null,
 "pendingPause": {"reason": "Frozen replay prepared.", "stage": "replay", "sourceRunId": "$SALVAGE_RUN_ID", "sourceCheckpointId": "$SALVAGE_CHECKPOINT_ID"},
 "metrics": {},
 "metadata": {"lineage": {"rootRunId": "$SALVAGE_RUN_ID", "parentRunId": null, "childRunIds": [], "branchOriginRunId": "$SALVAGE_RUN_ID", "branchCheckpointId": "$SALVAGE_CHECKPOINT_ID"},
   "replay": {"mode": "partial_frozen_trace", "sourceRunId": "$SALVAGE_RUN_ID", "sourceCheckpointId": "$SALVAGE_CHECKPOINT_ID", "replayedAt": "$now"}}}
EOF
    mv "$dir/runs/.new.tmp" "$dir/runs/$id.json"
    printf '{"outcome":"ok","createdRunId":"%s","runStatus":"paused"}' "$id" ;;
  resume_run)
    sed -e 's/"status": "paused"/"status": "completed"/' -e 's/"pendingPause": {[^}]*}/"pendingPause": null/' \
      "$dir/runs/$SALVAGE_RUN_ID.json" > "$dir/runs/.resumed.tmp"
    mv "$dir/runs/.resumed.tmp" "$dir/runs/$SALVAGE_RUN_ID.json"
    printf '{"outcome":"ok","runStatus":"completed"}' ;;
  *) printf '{"outcome":"ok"}' ;;
esac
"#;

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("temp");
        let root = dir.path();
        let script = root.join("act.sh");
        std::fs::write(&script, RUNTIME_SCRIPT).expect("script");
        std::process::Command::new("chmod").arg("+x").arg(&script).status().expect("chmod");
        std::fs::create_dir(root.join("playbooks")).expect("dir");
        std::fs::write(
            root.join("playbooks/crash.yaml"),
            "playbook: crash\nversion: 1\ndescription: Effects of every class, through a command.\n\
             match: { incident: tool_failure }\nstart: report\nsteps:\n\
             \x20 report:\n    action: inspect_report\n    description: d\n    next: export\n\
             \x20 export:\n    action: export_bundle\n    description: d\n    next: replay\n\
             \x20 replay:\n    action: partial_replay\n    description: d\n    on: { ok: resume, failed: escalated }\n\
             \x20 resume:\n    action: resume_run\n    description: d\n    target: replay\n    approval: never\n    why: a test of crashes, not of approvals\n    on: { ok: resolved, failed: escalated }\n\
             ends:\n  resolved: { outcome: resolved }\n  escalated: { outcome: escalated }\n",
        )
        .expect("playbook");
        std::fs::write(
            root.join("salvage.yaml"),
            format!(
                "store: file:runs\nplaybooks: playbooks\npolicies: {}\nbundles: bundles\n\
                 runtimes:\n  agent: ops\n  workflow: store\n  adapters:\n    ops:\n      kind: command\n      timeout: 30s\n      actions:\n\
                 \x20       partial_replay: {{command: [./act.sh]}}\n        resume_run: {{command: [./act.sh]}}\n",
                repo("policies").display()
            ),
        )
        .expect("config");
        let workspace = Workspace { dir };
        workspace.salvage().arg("import").arg(repo("examples/runs")).assert().success();
        workspace
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn salvage(&self) -> Command {
        let mut command = Command::cargo_bin("salvage").expect("binary");
        command
            .current_dir(self.dir.path())
            .env_remove("SALVAGE_STORE")
            .env_remove("SALVAGE_TEST_CRASH_AT")
            .env("NO_COLOR", "1");
        command
    }

    /// Plans the failed invoice into plan.json.
    fn plan(&self) -> PathBuf {
        let output = self.salvage().args(["plan", FAILED_INVOICE, "--json"]).output().expect("plan");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let path = self.path("plan.json");
        std::fs::write(&path, &output.stdout).expect("write plan");
        path
    }

    /// The effects the command carried out: (idempotency key, action).
    fn effects(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.path("effects.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_once(' ').map(|(k, a)| (k.to_owned(), a.to_owned())))
            .collect()
    }

    fn execution(&self) -> Value {
        let output = self.salvage().args(["executions", "--json"]).output().expect("executions");
        let all: Value = serde_json::from_slice(&output.stdout).expect("json");
        all[0].clone()
    }
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

#[test]
fn without_a_crash_every_effect_runs_once() {
    let workspace = Workspace::new();
    let plan = workspace.plan();
    let output =
        workspace.salvage().arg("apply").arg("--plan").arg(&plan).args(["--yes", "--json"]).output().expect("apply");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let result = json(&output);
    assert_eq!(result["status"], "resolved");
    assert_eq!(result["executedAction"], "partial_replay", "the reference view names the first runtime action");
    let actions: Vec<String> = workspace.effects().into_iter().map(|(_, action)| action).collect();
    assert_eq!(actions, ["partial_replay", "resume_run"]);
    let bundle_path =
        workspace.path(&format!("bundles/{}/export-1.bundle.json", result["executionId"].as_str().unwrap_or("")));
    let text = std::fs::read_to_string(&bundle_path).expect("the export step wrote its bundle");
    let bundle: Value = serde_json::from_str(&text).expect("a JSON bundle");
    assert_eq!(bundle["format"], "agnostic-agents-trace-bundle");
    let traces = bundle["traces"].as_array().cloned().unwrap_or_default();
    assert_eq!(traces.len(), 1, "{bundle}");
    assert_eq!(traces[0]["run"]["id"], bundle["index"][0]["runId"]);
    assert!(traces[0]["run"]["checkpoints"][0]["snapshot"].is_object(), "snapshots are exported");
    // Laid out as serde_json lays out the whole value, snapshots included.
    assert_eq!(serde_json::to_string_pretty(&bundle).ok().as_deref(), Some(text.trim_end()));
}

#[test]
fn every_crash_point_resumes_without_repeating_an_effect() {
    for step in ["export", "replay", "resume"] {
        for point in ["intent", "effect", "outcome"] {
            if step == "export" && point == "intent" {
                // export_bundle is idempotent: no intent is needed to repeat it, but one is written.
            }
            let workspace = Workspace::new();
            let plan = workspace.plan();
            let crashed = workspace
                .salvage()
                .arg("apply")
                .arg("--plan")
                .arg(&plan)
                .arg("--yes")
                .env("SALVAGE_TEST_CRASH_AT", format!("{point}:{step}"))
                .output()
                .expect("apply");
            assert!(!crashed.status.success(), "{point}:{step} must crash");
            assert_eq!(crashed.status.code(), None, "{point}:{step}: aborted by a signal, as a crash");
            let id = workspace.execution()["executionId"].as_str().expect("execution id").to_owned();
            let resumed = workspace.salvage().args(["resume", &id, "--json"]).output().expect("resume");
            let result = json(&resumed);
            // An interrupted compensable or irreversible step is settled by what it did: the replay
            // run it created, the resumed run that moved on. Only when nothing shows (the crash came
            // before the effect) does a person say what happened.
            let effect_unknown = point == "intent" && step != "export";
            if effect_unknown {
                assert_eq!(resumed.status.code(), Some(1), "{point}:{step}");
                assert_eq!(result["status"], "needs_operator", "{point}:{step}");
                let question = result["operatorQuestion"]["question"].as_str().unwrap_or_default();
                assert!(question.contains(&format!("salvage confirm {id} {step}")), "{question}");
                assert_eq!(result["operatorQuestion"]["stepId"], step);
                let confirm = workspace
                    .salvage()
                    .args(["confirm", &id, step, "--as", "oncall-sre", "--json", "--outcome", "failed"])
                    .output()
                    .expect("confirm");
                let confirmed = json(&confirm);
                assert_eq!(
                    confirmed["status"],
                    "escalated",
                    "{point}:{step}: {}",
                    String::from_utf8_lossy(&confirm.stderr)
                );
            } else {
                assert!(resumed.status.success(), "{point}:{step}: {}", String::from_utf8_lossy(&resumed.stderr));
                assert_eq!(result["status"], "resolved", "{point}:{step}");
            }
            let effects = workspace.effects();
            for action in ["partial_replay", "resume_run"] {
                let runs = effects.iter().filter(|(_, a)| a == action).count();
                assert!(runs <= 1, "{point}:{step}: {action} ran {runs} times: {effects:?}");
            }
        }
    }
}

#[test]
fn a_retry_after_an_interruption_uses_a_new_attempt_and_key() {
    let workspace = Workspace::new();
    let plan = workspace.plan();
    workspace
        .salvage()
        .arg("apply")
        .arg("--plan")
        .arg(&plan)
        .arg("--yes")
        .env("SALVAGE_TEST_CRASH_AT", "intent:resume")
        .output()
        .expect("apply");
    let id = workspace.execution()["executionId"].as_str().expect("id").to_owned();
    workspace.salvage().args(["resume", &id]).assert().code(1);
    let output = workspace
        .salvage()
        .args(["confirm", &id, "resume", "--retry", "--as", "oncall-sre", "--json"])
        .output()
        .expect("confirm");
    assert_eq!(json(&output)["status"], "resolved");
    let keys: Vec<String> =
        workspace.effects().into_iter().filter(|(_, a)| a == "resume_run").map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].ends_with(":resume:2"), "the retry is attempt 2: {keys:?}");
}

#[test]
fn applying_the_same_plan_from_two_processes_runs_it_once() {
    let workspace = Workspace::new();
    let plan = workspace.plan();
    let spawn = || {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("salvage"))
            .current_dir(workspace.dir.path())
            .env_remove("SALVAGE_STORE")
            .arg("apply")
            .arg("--plan")
            .arg(&plan)
            .arg("--yes")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (first, second) = (spawn(), spawn());
    let outputs = [first.wait_with_output().expect("wait"), second.wait_with_output().expect("wait")];
    let codes: Vec<Option<i32>> = outputs.iter().map(|o| o.status.code()).collect();
    assert!(codes.contains(&Some(0)) && codes.contains(&Some(2)), "{codes:?}");
    let refused = outputs.iter().find(|o| o.status.code() == Some(2)).expect("refused");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("already executed") || message.contains("being executed by another process"), "{message}");
    let actions: Vec<String> = workspace.effects().into_iter().map(|(_, a)| a).collect();
    assert_eq!(actions, ["partial_replay", "resume_run"], "each effect once");
}

#[test]
fn apply_asks_before_executing_and_refuses_a_non_terminal_without_yes() {
    let workspace = Workspace::new();
    workspace
        .salvage()
        .args(["apply", FAILED_INVOICE])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("stdin is not a terminal"));
    assert!(workspace.effects().is_empty());
    let output = workspace.salvage().args(["executions", "--json"]).output().expect("executions");
    assert_eq!(json(&output), serde_json::json!([]), "nothing was started");
}
