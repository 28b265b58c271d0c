//! Notifications that are really sent: `notify` steps, approval requests and an execution's end
//! delivered to a local receiver (axum on 127.0.0.1:0) as webhook, Slack-compatible and
//! PagerDuty Events v2 requests — exact payloads and headers, the HMAC signature, retries after
//! a 5xx and none after a 4xx, the journal's delivery records, a dry run that sends nothing, a
//! crash between sending and recording that re-sends once, said so, and `salvage check`
//! refusing a channel the configuration does not define. Through the library and the binary.

#[path = "common/receiver.rs"]
mod receiver;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};

use receiver::{Receiver, Recorded};
use salvage::execute::{Decision, ExecutionReport, JournalEntry, Mode, Runner, SalvageConfig};
use salvage::model::Run;
use salvage::plan::Planner;
use salvage::playbook::PlaybookSet;
use salvage::policy::PolicySet;
use salvage::store::{Expected, SqliteStore, Store};

const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
const SECRET_ENV: &str = "SALVAGE_NOTIFY_TEST_SECRET";
const SECRET: &str = "whsec-test-0123456789";
const PD_KEY_ENV: &str = "SALVAGE_NOTIFY_TEST_PD_KEY";
const PD_KEY: &str = "pd-routing-key-test";
const INBOX: &str = "https://salvage.example";

/// The environment the library tests read their secrets from (set once, before any of them
/// reads it; the binary tests pass theirs to the child only).
fn secrets_in_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: set once, before any notification of this process reads the environment;
        // every other reader here goes through std's synchronised `env::var`.
        unsafe {
            std::env::set_var(SECRET_ENV, SECRET);
            std::env::set_var(PD_KEY_ENV, PD_KEY);
        }
    });
}

const POLICY: &str = "fn classify(report, ctx) { \"tool_failure\" }\n";

/// Tells the webhook, then the chat, then asks alice.
const PLAYBOOK: &str = "playbook: tell\nversion: 1\ndescription: Tells people, then asks one.\n\
match: { incident: tool_failure }\nstart: tell\nsteps:\n\
\x20 tell:\n    action: notify\n    description: d\n    message: The invoice run failed.\n    channel: webhook:ops\n    next: chat\n\
\x20 chat:\n    action: notify\n    description: d\n    message: Look at the invoice run.\n    channel: chat\n    next: ask\n\
\x20 ask:\n    action: request_approval\n    description: d\n    approvers: [alice]\n    timeout: 1h\n\
\x20   on: { approved: resolved, denied: escalated, timeout: escalated }\n\
ends:\n  resolved: { outcome: resolved }\n  escalated: { outcome: escalated }\n";

fn config_yaml(receiver: &Receiver) -> String {
    format!(
        "approvals:\n  default_approvers: [alice]\nnotifications:\n  inbox_url: {INBOX}\n  timeout: 5s\n\
         \x20 retry: {{max_attempts: 3, initial_backoff: 10ms, max_backoff: 50ms}}\n  channels:\n\
         \x20   ops:\n      type: webhook\n      url: {}\n      secret_env: {SECRET_ENV}\n\
         \x20   chat:\n      type: slack\n      url: {}\n\
         \x20   agents-oncall:\n      type: pagerduty\n      routing_key_env: {PD_KEY_ENV}\n      events_url: {}\n",
        receiver.url("/hook"),
        receiver.url("/slack"),
        receiver.url("/pd"),
    )
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn write_sets(dir: &Path, playbook: &str) {
    std::fs::create_dir_all(dir.join("playbooks")).expect("mkdir");
    std::fs::create_dir_all(dir.join("policies")).expect("mkdir");
    std::fs::write(dir.join("policies/classify.rhai"), POLICY).expect("policy");
    std::fs::write(dir.join("playbooks/tell.yaml"), playbook).expect("playbook");
}

fn failed_invoice() -> Run {
    let path = root().join(format!("examples/runs/{FAILED_INVOICE}.json"));
    Run::from_value(serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")).expect("run")
}

struct Library {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    policies: Arc<PolicySet>,
    playbooks: Arc<PlaybookSet>,
    config: SalvageConfig,
}

impl Library {
    async fn new(receiver: &Receiver) -> Library {
        secrets_in_env();
        let dir = tempfile::tempdir().expect("temp");
        write_sets(dir.path(), PLAYBOOK);
        let config = SalvageConfig::parse(Path::new("salvage.yaml"), &config_yaml(receiver)).expect("config");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("salvage.db")).await.expect("open"));
        store.save(&failed_invoice(), Expected::Absent).await.expect("save");
        let policies = Arc::new(PolicySet::load(&dir.path().join("policies")).expect("policies"));
        let playbooks = Arc::new(PlaybookSet::load(&dir.path().join("playbooks"), Some(&policies)).expect("playbooks"));
        Library { _dir: dir, store, policies, playbooks, config }
    }

    fn runner(&self, mode: Mode, actor: &str) -> Runner {
        Runner::new(
            self.store.clone(),
            self.policies.clone(),
            self.playbooks.clone(),
            Arc::new(salvage::execute::RuntimeRegistry::default()),
            self.config.runner_settings(),
            mode,
            actor,
        )
    }

    async fn plan(&self) -> Value {
        Planner::new(self.store.clone(), self.policies.clone(), self.playbooks.clone())
            .plan(FAILED_INVOICE, None)
            .await
            .expect("plan")
            .to_value()
    }

    async fn journal(&self, execution_id: &str) -> Vec<JournalEntry> {
        salvage::execute::journal_entries(execution_id, &self.store.journal(execution_id).await.expect("journal"))
            .expect("entries")
    }
}

fn signature_of(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!("sha256={}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The headers every delivery carries, and the webhook's signature checked over the exact
/// bytes received.
fn assert_headers(request: &Recorded, key: &str) {
    assert_eq!(request.method, "POST");
    assert_eq!(request.header("content-type"), Some("application/json"), "{request:?}");
    assert_eq!(request.header("idempotency-key"), Some(key), "{request:?}");
    assert!(request.header("user-agent").is_some_and(|ua| ua.starts_with("salvage/")), "{request:?}");
    if request.path == "/hook" {
        assert_eq!(request.header("x-salvage-signature"), Some(signature_of(&request.body).as_str()));
        assert_eq!(request.header("x-salvage-event"), request.json()["event"].as_str());
    } else {
        assert_eq!(request.header("x-salvage-signature"), None, "only webhooks are signed");
    }
}

/// (event, channel, attempts, status, outcome) of every delivery record, in order.
fn deliveries(journal: &[JournalEntry]) -> Vec<(String, String, u32, Option<u16>, String)> {
    journal
        .iter()
        .filter_map(|entry| match entry {
            JournalEntry::Delivery { event, channel, attempts, status, outcome, .. } => {
                Some((event.clone(), channel.clone(), *attempts, *status, outcome.clone()))
            }
            _ => None,
        })
        .collect()
}

/// Every delivery follows an intent naming its channel under the same key.
fn assert_intent_before_every_delivery(journal: &[JournalEntry]) {
    for (index, entry) in journal.iter().enumerate() {
        if let JournalEntry::Delivery { idempotency_key, channel, .. } = entry {
            let announced = journal[..index].iter().any(|earlier| {
                matches!(earlier, JournalEntry::NotificationIntent { idempotency_key: k, channels, .. }
                    if k == idempotency_key && channels.contains(channel))
            });
            assert!(announced, "delivery {index} ({idempotency_key} to {channel}) has no intent before it");
        }
    }
}

fn approval_request(journal: &[JournalEntry]) -> (String, String) {
    journal
        .iter()
        .find_map(|entry| match entry {
            JournalEntry::ApprovalRequested { reason, expires_at, .. } => {
                Some((reason.clone(), expires_at.clone().expect("a deadline")))
            }
            _ => None,
        })
        .expect("the approval request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_channel_gets_the_exact_payload_with_retries_after_5xx_and_none_after_4xx() {
    // The webhook answers 500 once (then 200); the chat refuses the first message with 400;
    // PagerDuty is rate-limited once (429, then 202).
    let receiver = Receiver::start(&[("/hook", &[500]), ("/slack", &[400]), ("/pd", &[429, 202, 202])]);
    let lib = Library::new(&receiver).await;
    let plan = lib.plan().await;
    let report = lib.runner(Mode::Enforce, "bob").apply(&plan).await.expect("apply");
    let exec = report.execution.execution_id.clone();
    assert_eq!(report.execution.status.as_str(), "waiting_for_approval");
    let steps: Vec<(&str, &str)> = report.steps.iter().map(|s| (s.step_id.as_str(), s.outcome.as_str())).collect();
    assert_eq!(steps, [("tell", "ok"), ("chat", "failed"), ("ask", "waiting_for_approval")]);

    let journal = lib.journal(&exec).await;
    let (reason, expires) = approval_request(&journal);
    let incident = json!({"runId": FAILED_INVOICE, "type": "tool_failure"});
    let approval_summary = format!(
        "Approval needed for step ask of the recovery of run {FAILED_INVOICE} (tool_failure): {reason} Approvers: \
         alice. Answer by {expires}."
    );

    // The webhook: the first attempt answered 500 and was retried with the same bytes and key.
    let hook = receiver.to("/hook");
    assert_eq!(hook.len(), 3, "notify twice (500, then 200), the approval request once: {hook:#?}");
    assert_eq!(hook[0].body, hook[1].body, "a retry sends the same body");
    assert_headers(&hook[0], &format!("{exec}:tell"));
    assert_headers(&hook[1], &format!("{exec}:tell"));
    assert_eq!(
        hook[1].json(),
        json!({
            "event": "notify", "idempotencyKey": format!("{exec}:tell"), "executionId": exec, "incident": incident,
            "playbook": "tell", "stepId": "tell", "summary": "The invoice run failed.",
            "message": "The invoice run failed.", "approval": null, "link": format!("{INBOX}/executions/{exec}"),
        })
    );
    assert_headers(&hook[2], &format!("{exec}:ask:approval"));
    assert_eq!(
        hook[2].json(),
        json!({
            "event": "approval_requested", "idempotencyKey": format!("{exec}:ask:approval"), "executionId": exec,
            "incident": incident, "playbook": "tell", "stepId": "ask", "summary": approval_summary,
            "message": null, "approval": {"approvers": ["alice"], "reason": reason, "expiresAt": expires},
            "link": format!("{INBOX}/approvals/{exec}/ask"),
        })
    );

    // The chat: 400 is not retried; the approval request still goes out.
    let slack = receiver.to("/slack");
    assert_eq!(slack.len(), 2, "{slack:#?}");
    assert_headers(&slack[0], &format!("{exec}:chat"));
    assert_eq!(
        slack[0].json(),
        json!({"text": format!(
            "*salvage* · Look at the invoice run.\nRun `{FAILED_INVOICE}` (tool_failure) · playbook `tell` · execution \
             `{exec}`\n<{INBOX}/executions/{exec}|Open in salvage>"
        )})
    );
    assert_eq!(
        slack[1].json(),
        json!({"text": format!(
            "*salvage* · {approval_summary}\nRun `{FAILED_INVOICE}` (tool_failure) · playbook `tell` · execution \
             `{exec}`\n<{INBOX}/approvals/{exec}/ask|Review and answer>"
        )})
    );

    // PagerDuty: a trigger for the approval request, deduplicated on the incident; the 429 was
    // retried with the same bytes.
    let pd = receiver.to("/pd");
    assert_eq!(pd.len(), 2, "{pd:#?}");
    assert_eq!(pd[0].body, pd[1].body);
    assert_headers(&pd[1], &format!("{exec}:ask:approval"));
    assert_eq!(
        pd[1].json(),
        json!({
            "routing_key": PD_KEY, "event_action": "trigger", "dedup_key": format!("salvage:{FAILED_INVOICE}"),
            "payload": {
                "summary": approval_summary, "source": format!("salvage run {FAILED_INVOICE}"), "severity": "warning",
                "component": "tell", "class": "tool_failure",
                "custom_details": {"event": "approval_requested", "executionId": exec, "stepId": "ask",
                                   "idempotencyKey": format!("{exec}:ask:approval")},
            },
            "links": [{"href": format!("{INBOX}/approvals/{exec}/ask"), "text": "salvage"}],
        })
    );

    // Alice approves: the recovery succeeds, the webhook hears it and PagerDuty resolves what it
    // was triggered for; the chat does not receive `resolved` by default.
    let alice = lib.runner(Mode::Enforce, "alice");
    alice.answer(&exec, "ask", Decision::Approve, None).await.expect("approve");
    let resumed = alice.resume(&exec).await.expect("resume");
    assert_eq!(resumed.execution.status.as_str(), "resolved");
    let pd = receiver.to("/pd");
    assert_eq!(pd.len(), 3, "{pd:#?}");
    assert_headers(&pd[2], &format!("{exec}:resolved"));
    assert_eq!(
        pd[2].json(),
        json!({"routing_key": PD_KEY, "event_action": "resolve", "dedup_key": format!("salvage:{FAILED_INVOICE}")})
    );
    let hook = receiver.to("/hook");
    assert_eq!(hook.len(), 4);
    assert_headers(&hook[3], &format!("{exec}:resolved"));
    assert_eq!(
        hook[3].json(),
        json!({
            "event": "resolved", "idempotencyKey": format!("{exec}:resolved"), "executionId": exec,
            "incident": incident, "playbook": "tell", "stepId": null,
            "summary": format!("The recovery of run {FAILED_INVOICE} (tool_failure) succeeded."),
            "message": null, "approval": null, "link": format!("{INBOX}/executions/{exec}"),
        })
    );
    assert_eq!(receiver.to("/slack").len(), 2);

    // The journal records every delivery: channel, attempts, HTTP status, outcome.
    let journal = lib.journal(&exec).await;
    let s = |text: &str| text.to_owned();
    assert_eq!(
        deliveries(&journal),
        [
            (s("notify"), s("ops"), 2, Some(200), s("delivered")),
            (s("notify"), s("chat"), 1, Some(400), s("failed")),
            (s("approval_requested"), s("agents-oncall"), 2, Some(202), s("delivered")),
            (s("approval_requested"), s("chat"), 1, Some(200), s("delivered")),
            (s("approval_requested"), s("ops"), 1, Some(200), s("delivered")),
            (s("resolved"), s("agents-oncall"), 1, Some(202), s("delivered")),
            (s("resolved"), s("ops"), 1, Some(200), s("delivered")),
        ]
    );
    assert_intent_before_every_delivery(&journal);
    let failed = journal.iter().find_map(|e| match e {
        JournalEntry::Delivery { channel, error, .. } if channel == "chat" => error.clone(),
        _ => None,
    });
    assert_eq!(failed.as_deref(), Some("answered 400: answered 400"), "the receiver's answer is kept");

    // Resuming a finished execution sends nothing again.
    let again = alice.resume(&exec).await.expect("resume again");
    assert_eq!(again.execution.status.as_str(), "resolved");
    assert_eq!(receiver.requests().len(), 4 + 2 + 3, "4 webhook, 2 chat, 3 PagerDuty requests: nothing more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_sends_nothing_and_says_what_it_would_send() {
    let receiver = Receiver::start(&[]);
    let lib = Library::new(&receiver).await;
    let plan = lib.plan().await;
    let report: ExecutionReport = lib.runner(Mode::Advisory, "bob").apply(&plan).await.expect("dry run");
    assert!(receiver.requests().is_empty(), "a dry run sends nothing: {:#?}", receiver.requests());
    let exec = report.execution.execution_id.clone();
    let tell = &report.steps[0];
    assert_eq!((tell.step_id.as_str(), tell.outcome.as_str()), ("tell", "ok"));
    let delivery = &tell.detail["deliveries"][0];
    assert_eq!(delivery["outcome"], "dry_run");
    assert_eq!(delivery["attempts"], 0);
    assert_eq!(delivery["wouldSend"]["url"], receiver.url("/hook"));
    assert_eq!(delivery["wouldSend"]["body"]["idempotencyKey"], format!("{exec}:tell"));
    assert_eq!(delivery["wouldSend"]["signature"], format!("HMAC-SHA256 of the body with ${SECRET_ENV}"));
    let ask = report.steps.iter().find(|s| s.step_id == "ask").expect("ask");
    let asked: Vec<(&str, &str)> = ask.detail["notifications"]
        .as_array()
        .expect("the approval request's notifications")
        .iter()
        .map(|d| (d["channel"].as_str().unwrap_or(""), d["outcome"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(asked, [("agents-oncall", "dry_run"), ("chat", "dry_run"), ("ops", "dry_run")]);
    let pagerduty = &ask.detail["notifications"][0]["wouldSend"]["body"];
    assert_eq!(pagerduty["routing_key"], format!("${PD_KEY_ENV}"), "the secret is named, never shown");
    assert!(
        !serde_json::to_string(&report.steps.iter().map(|s| &s.detail).collect::<Vec<_>>())
            .expect("json")
            .contains(SECRET)
    );
    // Nothing of it is in the store either.
    assert!(lib.store.journal(&exec).await.expect("journal").is_empty());
}

// ---------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------

fn salvage(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_salvage"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("SALVAGE_STORE")
        .env_remove("SALVAGE_CONFIG")
        .env_remove("SALVAGE_ACTOR")
        .env_remove("SALVAGE_TEST_CRASH_AT")
        .env(SECRET_ENV, SECRET)
        .env(PD_KEY_ENV, PD_KEY)
        .env("NO_COLOR", "1");
    command
}

fn run(dir: &Path, args: &[&str]) -> Output {
    salvage(dir, args).output().expect("salvage")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A directory with the test's playbook, salvage.yaml naming only the webhook (the default
/// channel) and the example runs imported.
fn workspace(receiver: &Receiver, playbook: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp");
    write_sets(dir.path(), playbook);
    let config = format!(
        "approvals:\n  default_approvers: [alice]\nnotifications:\n  default: ops\n  retry: {{max_attempts: 2, initial_backoff: 10ms}}\n  channels:\n\
         \x20   ops:\n      type: webhook\n      url: {}\n      secret_env: {SECRET_ENV}\n      events: [notify]\n",
        receiver.url("/hook")
    );
    std::fs::write(dir.path().join("salvage.yaml"), config).expect("config");
    let imported = run(dir.path(), &["import", root().join("examples/runs").to_str().expect("utf-8")]);
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    dir
}

/// One notify step to the default channel.
const TELL_ONLY: &str = "playbook: tell\nversion: 1\ndescription: Tells people.\n\
match: { incident: tool_failure }\nstart: tell\nsteps:\n\
\x20 tell:\n    action: notify\n    description: d\n    message: The invoice run failed.\n    next: escalated\n\
ends:\n  escalated: { outcome: escalated }\n";

#[test]
fn salvage_apply_sends_a_dry_run_does_not() {
    let receiver = Receiver::start(&[]);
    let dir = workspace(&receiver, TELL_ONLY);
    let dry = run(dir.path(), &["apply", FAILED_INVOICE, "--dry-run"]);
    let stdout = text(&dry.stdout);
    assert!(dry.status.code().is_some(), "{}", text(&dry.stderr));
    assert!(stdout.contains(&format!("would notify ops (webhook): POST {} {{", receiver.url("/hook"))), "{stdout}");
    assert!(receiver.requests().is_empty(), "--dry-run sends nothing");

    let applied = run(dir.path(), &["apply", FAILED_INVOICE, "--yes", "--as", "bob", "--json"]);
    let report: Value =
        serde_json::from_slice(&applied.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&applied.stderr)));
    let exec = report["executionId"].as_str().expect("id").to_owned();
    let hook = receiver.to("/hook");
    assert_eq!(hook.len(), 1, "{hook:#?}");
    assert_headers(&hook[0], &format!("{exec}:tell"));
    assert_eq!(hook[0].json()["message"], "The invoice run failed.");
    assert_eq!(hook[0].json()["link"], Value::Null, "no inbox configured: no link");
    let delivery = &report["steps"][0]["detail"]["deliveries"][0];
    assert_eq!(
        (delivery["channel"].as_str(), delivery["outcome"].as_str(), delivery["status"].as_u64()),
        (Some("ops"), Some("delivered"), Some(200))
    );
    // `ops` receives `notify` only: the escalation is not sent to it.
    assert_eq!(receiver.requests().len(), 1);
}

#[test]
fn a_crash_after_sending_re_sends_once_with_the_same_key_and_says_so() {
    let receiver = Receiver::start(&[]);
    let dir = workspace(&receiver, TELL_ONLY);
    let crashed = salvage(dir.path(), &["apply", FAILED_INVOICE, "--yes", "--as", "bob"])
        .env("SALVAGE_TEST_CRASH_AT", "delivered:ops")
        .output()
        .expect("apply");
    assert_eq!(crashed.status.code(), None, "aborted right after sending: {}", text(&crashed.stderr));
    assert_eq!(receiver.to("/hook").len(), 1, "the receiver got it; the journal does not know");
    let listed: Value = serde_json::from_slice(&run(dir.path(), &["executions", "--json"]).stdout).expect("json");
    let exec = listed[0]["executionId"].as_str().expect("id").to_owned();

    let resumed = run(dir.path(), &["resume", &exec, "--json"]);
    let report: Value =
        serde_json::from_slice(&resumed.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&resumed.stderr)));
    let hook = receiver.to("/hook");
    assert_eq!(hook.len(), 2, "sent again once: {hook:#?}");
    assert_eq!(hook[0].body, hook[1].body);
    assert_eq!(hook[0].header("idempotency-key"), hook[1].header("idempotency-key"), "the receiver can drop it");
    let delivery = &report["steps"][0]["detail"]["deliveries"][0];
    assert_eq!(delivery["redelivery"], true, "{report}");
    let notes = text(&resumed.stderr);
    assert!(notes.contains("is sent again: an earlier send was interrupted"), "{notes}");
    let human = run(dir.path(), &["resume", &exec]);
    assert_eq!(receiver.to("/hook").len(), 2, "a finished execution sends nothing again: {}", text(&human.stdout));
}

#[test]
fn check_refuses_a_channel_the_configuration_does_not_define() {
    let receiver = Receiver::start(&[]);
    let undefined = PLAYBOOK.replace("channel: chat", "channel: pagerduty:sre");
    let dir = workspace(&receiver, &undefined);
    let checked = run(dir.path(), &["check"]);
    let stderr = text(&checked.stderr);
    assert_eq!(checked.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("P064"), "{stderr}");
    assert!(stderr.contains("step `chat`: channel `pagerduty:sre` is not defined in salvage.yaml"), "{stderr}");
    assert!(stderr.contains("tell.yaml:17:14"), "file:line:column of the channel's value: {stderr}");
    assert!(stderr.contains("`webhook:ops`"), "says which channels exist: {stderr}");
    // `webhook:ops` (line 11) is defined and of that type: only `chat` is reported.
    assert_eq!(stderr.matches("P064").count(), 1, "{stderr}");
    let json_out: Value = serde_json::from_slice(&run(dir.path(), &["check", "--json"]).stdout).expect("json");
    let p064: Vec<&Value> = json_out.as_array().expect("diagnostics").iter().filter(|d| d["code"] == "P064").collect();
    assert_eq!((p064[0]["line"].as_u64(), p064[0]["column"].as_u64()), (Some(17), Some(14)));

    let explained = run(dir.path(), &["explain", "P064"]);
    assert!(explained.status.success());
    assert!(text(&explained.stdout).contains("notifications.channels"), "{}", text(&explained.stdout));

    std::fs::write(dir.path().join("playbooks/tell.yaml"), PLAYBOOK.replace("channel: chat", "channel: ops"))
        .expect("fix");
    let fixed = run(dir.path(), &["check"]);
    assert!(fixed.status.success(), "{}", text(&fixed.stderr));
}
