//! Approver identity through the real binary on an SQLite store in a temp dir: API tokens
//! (printed once, stored hashed, listed without their secret, revoked for good, in the audit
//! log) and `approvals.identity: strict` (`--as` must be the OS user or a token's person; a
//! refusal is exit 2 and an `answer_refused` in the journal).

#[path = "common/scratch.rs"]
mod scratch;

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use sha2::{Digest, Sha256};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
const STORE: &str = "sqlite:salvage.db";

/// `salvage ARGS` in `dir`, with neither a name nor a token taken from the caller's environment.
fn salvage_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let quiet = [("SALVAGE_ACTOR", ""), ("SALVAGE_TOKEN", "")];
    let env: Vec<(&str, &str)> = quiet.iter().copied().chain(env.iter().copied()).collect();
    scratch::salvage_in(dir, STORE, args, &env)
}

fn salvage(dir: &Path, args: &[&str]) -> Output {
    salvage_env(dir, args, &[])
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    assert!(output.status.success(), "{}", stderr(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Every byte of the SQLite store (the database and its WAL).
fn store_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with("salvage.db") {
            bytes.extend(std::fs::read(entry.path()).expect("read store file"));
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle.as_bytes())
}

/// The audit log's entries of `event`.
fn audit_events(dir: &Path, event: &str) -> Vec<Value> {
    let entries = json(&salvage(dir, &["audit", "--json"]));
    entries.as_array().expect("entries").iter().filter(|e| e["event"] == event).cloned().collect()
}

/// A store holding the failed invoice run, with an execution started by `starter` (`--as`, or
/// the identity rules when `None`) waiting for the approval of step `ask_operator`
/// (approvers: oncall-sre, incident-commander). Returns the execution id.
fn waiting_execution(dir: &Path, starter: Option<&str>) -> String {
    scratch::copy_shipped_sets(dir);
    let run = Path::new(ROOT).join(format!("examples/runs/{FAILED_INVOICE}.json"));
    let import = salvage(dir, &["import", run.to_str().expect("utf-8")]);
    assert!(import.status.success(), "import: {}", stderr(&import));
    let mut apply = vec!["apply", FAILED_INVOICE, "--yes"];
    apply.extend(starter.map(|name| ["--as", name]).into_iter().flatten());
    let applied = salvage(dir, &apply);
    assert!(applied.status.success(), "apply: {}", stderr(&applied));
    let approvals = json(&salvage(dir, &["approvals", "--json"]));
    assert_eq!(approvals[0]["stepId"], "ask_operator", "{approvals}");
    approvals[0]["executionId"].as_str().expect("a pending approval").to_owned()
}

/// A token for `name`, created by `by` (`--as`; the identity rules when `None`): (id, secret).
fn add_token(dir: &Path, name: &str, by: Option<&str>) -> (String, String) {
    let mut args = vec!["token", "add", name, "--json"];
    args.extend(by.map(|by| ["--as", by]).into_iter().flatten());
    let added = json(&salvage(dir, &args));
    let id = added["id"].as_str().expect("id").to_owned();
    (id, added["token"].as_str().expect("token").to_owned())
}

#[test]
fn a_token_is_printed_once_listed_without_its_secret_and_stored_only_as_its_hash() {
    let dir = tempfile::tempdir().expect("temp");
    let added = json(&salvage(dir.path(), &["token", "add", "alice", "--as", "admin", "--json"]));
    let secret = added["token"].as_str().expect("the secret").to_owned();
    let id = added["id"].as_str().expect("the id").to_owned();
    assert!(secret.starts_with("slv_") && secret.len() == 68, "{secret}");
    assert_eq!((added["name"].as_str(), added["createdBy"].as_str()), (Some("alice"), Some("admin")));

    // Without --json: the secret alone on stdout (for a pipe), what it is on stderr.
    let text = salvage(dir.path(), &["token", "add", "bob", "--as", "admin"]);
    assert!(text.status.success(), "{}", stderr(&text));
    let bob_secret = stdout(&text).trim().to_owned();
    assert!(bob_secret.starts_with("slv_") && bob_secret != secret, "{bob_secret}");
    assert!(stderr(&text).contains("only time it is shown"), "{}", stderr(&text));

    let listed = salvage(dir.path(), &["token", "list", "--json"]);
    let tokens = json(&listed);
    let names: Vec<&str> = tokens.as_array().expect("list").iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(tokens[0]["id"], id.as_str());
    assert_eq!(tokens[0]["createdBy"], "admin");
    let table = salvage(dir.path(), &["token", "list"]);
    assert!(table.status.success() && stdout(&table).contains(&id), "{}", stdout(&table));
    for shown in [stdout(&listed), stdout(&table), stderr(&table)] {
        for hidden in [&secret, &bob_secret] {
            assert!(!shown.contains(hidden.as_str()) && !shown.contains(&hidden[4..]), "{shown}");
            assert!(!shown.contains(&sha256_hex(hidden)), "the hash is not shown either: {shown}");
        }
    }

    // The database holds each token's SHA-256 and never its text.
    let bytes = store_bytes(dir.path());
    for stored in [&secret, &bob_secret] {
        assert!(contains(&bytes, &sha256_hex(stored)), "the hash is where the tokens are kept");
        assert!(!contains(&bytes, stored) && !contains(&bytes, &stored[4..]), "a secret reached the store");
    }

    // The audit log: who created which token for whom, never the secret or its hash.
    let audit = salvage(dir.path(), &["audit", "--json"]);
    let audit_text = stdout(&audit);
    let added_events = audit_events(dir.path(), "token_added");
    assert_eq!(added_events.len(), 2, "{audit_text}");
    assert_eq!(added_events[0]["tokenId"], id.as_str());
    assert_eq!((added_events[0]["actor"].as_str(), added_events[0]["name"].as_str()), (Some("admin"), Some("alice")));
    assert_eq!(added_events[0]["at"], tokens[0]["createdAt"]);
    for hidden in [&secret, &bob_secret] {
        assert!(!audit_text.contains(hidden.as_str()) && !audit_text.contains(&sha256_hex(hidden)), "{audit_text}");
    }
    let people = salvage(dir.path(), &["audit"]);
    assert!(stdout(&people).contains(&format!("token {id} for alice")), "{}", stdout(&people));

    // A name no approver could have is refused before anything is stored.
    let blank = salvage(dir.path(), &["token", "add", " alice", "--as", "admin"]);
    assert_eq!(blank.status.code(), Some(2), "{}", stderr(&blank));
    assert_eq!(json(&salvage(dir.path(), &["token", "list", "--json"])).as_array().map(Vec::len), Some(2));
}

#[test]
fn a_token_answers_as_its_person_until_it_is_revoked() {
    let dir = tempfile::tempdir().expect("temp");
    let execution = waiting_execution(dir.path(), Some("alice"));
    let (id, secret) = add_token(dir.path(), "oncall-sre", Some("admin"));

    // Nobody named: an empty $SALVAGE_TOKEN is no token.
    let nobody = salvage(dir.path(), &["approve", &execution, "ask_operator"]);
    assert_eq!(nobody.status.code(), Some(2), "{}", stderr(&nobody));
    assert!(stderr(&nobody).contains("needs to know who you are"), "{}", stderr(&nobody));

    // --as someone else with oncall-sre's token: refused, recorded, nothing answered.
    let mismatch = salvage(dir.path(), &["approve", &execution, "ask_operator", "--as", "mallory", "--token", &secret]);
    assert_eq!(mismatch.status.code(), Some(2), "{}", stderr(&mismatch));
    assert!(stderr(&mismatch).contains("does not match the token"), "{}", stderr(&mismatch));
    assert!(audit_events(dir.path(), "approval_answered").is_empty());

    // Revoked: the token proves nothing any more.
    let revoke = salvage(dir.path(), &["token", "revoke", &id, "--as", "admin"]);
    assert!(revoke.status.success(), "{}", stderr(&revoke));
    let refused = salvage_env(dir.path(), &["approve", &execution, "ask_operator"], &[("SALVAGE_TOKEN", &secret)]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("revoked"), "{}", stderr(&refused));
    assert!(audit_events(dir.path(), "approval_answered").is_empty());
    let listed = json(&salvage(dir.path(), &["token", "list", "--json"]));
    assert_eq!(listed[0]["revokedBy"], "admin");
    let revoked = audit_events(dir.path(), "token_revoked");
    assert_eq!(revoked.len(), 1);
    assert_eq!((revoked[0]["tokenId"].as_str(), revoked[0]["actor"].as_str()), (Some(id.as_str()), Some("admin")));
    assert_eq!(revoked[0]["name"], "oncall-sre");
    let again = salvage(dir.path(), &["token", "revoke", &id, "--as", "someone"]);
    assert!(again.status.success() && stderr(&again).contains("already revoked"), "{}", stderr(&again));
    let unknown = salvage(dir.path(), &["token", "revoke", "000000000000", "--as", "admin"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));

    // A fresh token of another approver answers, as that person, without --as.
    let (_, commander) = add_token(dir.path(), "incident-commander", Some("admin"));
    let approve = salvage_env(dir.path(), &["approve", &execution, "ask_operator"], &[("SALVAGE_TOKEN", &commander)]);
    assert!(approve.status.success(), "{}", stderr(&approve));
    let answered = audit_events(dir.path(), "approval_answered");
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0]["actor"], "incident-commander");
    let refusals: Vec<String> = audit_events(dir.path(), "answer_refused")
        .iter()
        .map(|e| format!("{} {}", e["actor"].as_str().unwrap_or("-"), e["reason"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(refusals[0].starts_with("mallory ") && refusals[0].contains("does not match the token"), "{refusals:?}");
    assert!(refusals[1].contains("revoked"), "{refusals:?}");
}

/// The OS user, as the system's own tool names it (NSS, not salvage's /etc/passwd reader).
fn os_user() -> String {
    let out = std::process::Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn strict_identity_refuses_another_persons_name_and_accepts_their_token() {
    let dir = tempfile::tempdir().expect("temp");
    std::fs::write(dir.path().join("salvage.yaml"), "approvals:\n  identity: strict\n").expect("config");
    let me = os_user();
    assert!(!me.is_empty() && me != "oncall-sre", "{me:?}");

    // Started without --as: the OS user started it ($USER is not asked).
    let execution = waiting_execution(dir.path(), None);
    let started = audit_events(dir.path(), "execution_started");
    assert_eq!(started[0]["actor"], me.as_str(), "{started:?}");
    let claimed = salvage(dir.path(), &["apply", FAILED_INVOICE, "--yes", "--as", "oncall-sre"]);
    assert_eq!(claimed.status.code(), Some(2), "{}", stderr(&claimed));
    assert!(stderr(&claimed).contains("approvals.identity is strict"), "{}", stderr(&claimed));

    // Typing an approver's name is not enough, nor is setting $USER to it.
    let refused = salvage_env(
        dir.path(),
        &["approve", &execution, "ask_operator", "--as", "oncall-sre"],
        &[("USER", "oncall-sre")],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let message = stderr(&refused);
    assert!(message.contains("approvals.identity is strict") && message.contains(&me), "{message}");
    assert!(message.contains("--token"), "the message says what to do: {message}");
    let refusals = audit_events(dir.path(), "answer_refused");
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(
        (refusals[0]["actor"].as_str(), refusals[0]["decision"].as_str()),
        (Some("oncall-sre"), Some("approved"))
    );
    assert!(refusals[0]["reason"].as_str().is_some_and(|r| r.contains("strict")), "{:?}", refusals[0]);
    assert_eq!(refusals[0]["executionId"], execution.as_str());
    assert!(audit_events(dir.path(), "approval_answered").is_empty());
    let denied = salvage(dir.path(), &["deny", &execution, "ask_operator", "--as", "incident-commander"]);
    assert_eq!(denied.status.code(), Some(2), "{}", stderr(&denied));
    assert_eq!(audit_events(dir.path(), "answer_refused")[1]["decision"], "denied");
    for closing in [
        vec!["abandon", execution.as_str(), "--as", "oncall-sre"],
        vec!["confirm", execution.as_str(), "ask_operator", "--retry", "--as", "oncall-sre"],
    ] {
        let out = salvage(dir.path(), &closing);
        assert_eq!(out.status.code(), Some(2), "{closing:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("approvals.identity is strict"), "{closing:?}: {}", stderr(&out));
    }

    // The approver's own token proves who they are.
    let by_someone_else = salvage(dir.path(), &["token", "add", "oncall-sre", "--as", "oncall-sre"]);
    assert_eq!(by_someone_else.status.code(), Some(2), "{}", stderr(&by_someone_else));
    let (_, secret) = add_token(dir.path(), "oncall-sre", None);
    assert_eq!(audit_events(dir.path(), "token_added")[0]["actor"], me.as_str());
    let approve =
        salvage(dir.path(), &["approve", &execution, "ask_operator", "--as", "oncall-sre", "--token", &secret]);
    assert!(approve.status.success(), "{}", stderr(&approve));
    let answered = audit_events(dir.path(), "approval_answered");
    assert_eq!(
        (answered[0]["actor"].as_str(), answered[0]["decision"].as_str()),
        (Some("oncall-sre"), Some("approved"))
    );
    let executions = json(&salvage(dir.path(), &["executions", "--json"]));
    assert_ne!(executions[0]["status"], "waiting_for_approval", "{executions}");
}
