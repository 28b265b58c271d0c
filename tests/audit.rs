//! `salvage audit`: every decision and answer, through the real binary on the embedded store —
//! what the daemon decided, who started an execution and from where, the approval asked, the
//! answers refused (self-approval, a person not on the step's list) with their reason, the
//! answer given, a reload gate acceptance; `--since` and `--json`; the text as a snapshot.

#[path = "common/scratch.rs"]
mod scratch;

#[path = "common/wait.rs"]
mod wait;

#[path = "common/daemon.rs"]
mod daemon;

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use daemon::Daemon;
use wait::wait_for;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";

fn salvage(dir: &Path, args: &[&str]) -> Output {
    scratch::salvage_in(dir, "sqlite:salvage.db", args, &[])
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn audit(dir: &Path, extra: &[&str]) -> Vec<Value> {
    let out = salvage(dir, &[&["audit", "--json"], extra].concat());
    assert!(out.status.success(), "audit: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("audit --json")
}

/// `(event, actor, origin, decision)` of each entry, in order.
fn digest(entries: &[Value]) -> Vec<(String, String, String, String)> {
    let text = |entry: &Value, key: &str| entry[key].as_str().unwrap_or("-").to_owned();
    entries.iter().map(|e| (text(e, "event"), text(e, "actor"), text(e, "origin"), text(e, "decision"))).collect()
}

fn row(event: &str, actor: &str, origin: &str, decision: &str) -> (String, String, String, String) {
    (event.to_owned(), actor.to_owned(), origin.to_owned(), decision.to_owned())
}

#[test]
fn every_decision_and_answer_is_in_the_audit_log_with_who_when_from_where_and_the_plan_hash() {
    let dir = tempfile::tempdir().expect("temp");
    scratch::copy_shipped_sets(dir.path());
    let run = Path::new(ROOT).join(format!("examples/runs/{FAILED_INVOICE}.json"));
    let import = salvage(dir.path(), &["import", run.to_str().expect("utf-8")]);
    assert!(import.status.success(), "import: {}", stderr(&import));
    let empty = salvage(dir.path(), &["audit"]);
    assert!(empty.status.success());
    assert!(stderr(&empty).contains("nothing was decided or answered"), "{}", stderr(&empty));

    // The daemon plans the incident (advisory), then a person recovers it from the CLI.
    let daemon = Daemon::start(dir.path(), "sqlite:salvage.db", &[]);
    wait_for("the daemon to plan the incident", || {
        audit(dir.path(), &[]).iter().any(|e| e["event"] == "incident_handled").then_some(())
    });
    daemon.stop();
    let apply = salvage(dir.path(), &["apply", FAILED_INVOICE, "--yes", "--as", "alice"]);
    assert!(apply.status.success(), "apply: {}", stderr(&apply));
    let approvals: Value =
        serde_json::from_slice(&salvage(dir.path(), &["approvals", "--json"]).stdout).expect("approvals");
    let execution = approvals[0]["executionId"].as_str().expect("a pending approval").to_owned();
    let answered_at = time::OffsetDateTime::now_utc();

    // Refused: the person who started it, and someone not on the step's list.
    for (actor, says) in [("alice", "alice may not answer step ask_operator"), ("mallory", "mallory may not answer")] {
        let refused = salvage(dir.path(), &["approve", &execution, "ask_operator", "--as", actor]);
        assert_eq!(refused.status.code(), Some(2), "{actor}: {}", stderr(&refused));
        assert!(stderr(&refused).contains(says), "{actor}: {}", stderr(&refused));
    }
    let approve =
        salvage(dir.path(), &["approve", &execution, "ask_operator", "--as", "oncall-sre", "--reason", "checked"]);
    assert!(approve.status.success(), "approve: {}", stderr(&approve));

    // A person accepts a set the reload gate refused.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let store = salvage::store::SqliteStore::open(dir.path().join("salvage.db")).await.expect("store");
        let set =
            salvage::serve::reload::SetDigests { policy_digest: "a".repeat(64), playbook_set_digest: "b".repeat(64) };
        salvage::serve::reload::accept(&store, set, "carol").await.expect("accept");
    });

    let entries = audit(dir.path(), &[]);
    let daemon_actor = entries[0]["actor"].as_str().expect("the daemon's identity").to_owned();
    assert_eq!(
        digest(&entries)[..6],
        [
            row("incident_handled", &daemon_actor, "daemon", "planned"),
            row("execution_started", "alice", "cli", "-"),
            row("approval_requested", "-", "-", "-"),
            row("answer_refused", "alice", "cli", "approved"),
            row("answer_refused", "mallory", "cli", "approved"),
            row("approval_answered", "oncall-sre", "cli", "approved"),
        ],
        "{entries:#?}"
    );
    assert_eq!(digest(&entries).last(), Some(&row("set_accepted", "carol", "cli", "-")), "{entries:#?}");
    let started = &entries[1];
    let plan_hash = started["planHash"].as_str().expect("plan hash");
    assert_eq!(plan_hash.len(), 64);
    for entry in &entries[1..6] {
        assert_eq!(entry["executionId"], execution.as_str(), "{entry}");
        assert_eq!(entry["runId"], FAILED_INVOICE, "{entry}");
        assert_eq!(entry["planHash"], plan_hash, "{entry}");
    }
    assert_eq!(entries[0]["runId"], FAILED_INVOICE);
    assert_eq!(entries[0]["incidentType"], "tool_failure");
    assert!(entries[3]["reason"].as_str().is_some_and(|r| r.contains("may not answer")), "{}", entries[3]);
    assert_eq!(entries[5]["reason"], "checked");
    let approvers: Vec<&str> =
        entries[2]["approvers"].as_array().expect("approvers").iter().flat_map(Value::as_str).collect();
    assert_eq!(approvers, ["oncall-sre", "incident-commander"]);
    let times: Vec<&str> = entries.iter().map(|e| e["at"].as_str().expect("at")).collect();
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "oldest first: {times:?}");

    // --since: only what came after.
    let since = answered_at.format(&time::format_description::well_known::Rfc3339).expect("time");
    let recent = digest(&audit(dir.path(), &["--since", &since]));
    assert_eq!(recent.first(), Some(&row("answer_refused", "alice", "cli", "approved")), "{recent:?}");
    assert!(!recent.iter().any(|(event, ..)| event == "execution_started"), "{recent:?}");

    // The text table, for a person.
    let text = salvage(dir.path(), &["audit"]);
    assert!(text.status.success(), "{}", stderr(&text));
    let text =
        String::from_utf8_lossy(&text.stdout).replace(&daemon_actor, "[daemon]").replace(FAILED_INVOICE, "[run]");
    // Column widths follow the daemon's pid and host: runs of spaces are compared as two.
    let filters = vec![
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", "[time]"),
        (r"\bexec-[0-9a-f]{16}\b", "exec-[hash]"),
        (r"\b[0-9a-f]{12}\b", "[digest]"),
        (r" {2,}", "  "),
        // How far the advisory dry run got depends on timers; the decision itself does not.
        (r"(advisory planned: [^—]*) — \S+", "$1 — [dry run outcome]"),
    ];
    insta::with_settings!({filters => filters}, {
        insta::assert_snapshot!("audit_text", text);
    });
}

#[test]
fn audit_refuses_a_since_it_cannot_read_and_names_the_forms_it_takes() {
    let dir = tempfile::tempdir().expect("temp");
    let out = salvage(dir.path(), &["audit", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("neither a duration"), "{}", stderr(&out));
}
