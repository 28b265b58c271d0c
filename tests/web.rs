//! The HTTP API and the approval inbox through the real binary (`salvage web`, `salvage serve
//! --http`) on the embedded store: every route against the OpenAPI document, the JSON bodies
//! against the CLI's `--json`, problem details, tokens, the trusted proxy, CSRF — and one table
//! of approval answers run through the CLI, the API and the inbox's form, which must all decide
//! the same way (they share one code path).

#[path = "common/scratch.rs"]
mod scratch;

#[path = "common/wait.rs"]
mod wait;

#[path = "common/daemon.rs"]
mod daemon;

#[path = "common/http.rs"]
mod http;

#[path = "common/approvals.rs"]
mod approvals;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Value, json};

use approvals::{FAILED_INVOICE, ROOT, STEP, STORE, cli_json, salvage, stderr, token, waiting_execution};
use daemon::Daemon;
use http::{Http, Reply};
use wait::wait_for;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn assert_problem(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.content_type, "application/problem+json", "{}", reply.body);
    let problem = reply.json();
    assert_eq!(problem["status"], status, "{problem}");
    assert_eq!(problem["code"], code, "{problem}");
    assert!(problem["title"].is_string() && problem["detail"].is_string(), "{problem}");
}

#[test]
fn every_route_is_in_the_openapi_document_and_every_documented_route_is_served() {
    let document: Value = serde_json::from_str(salvage::web::api::OPENAPI).expect("docs/openapi.json is JSON");
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("docs/openapi.json")).expect("docs/openapi.json"),
    )
    .expect("JSON");
    assert_eq!(document, committed, "the served document is the committed one");
    let documented: BTreeSet<(String, String)> = document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, methods)| {
            methods.as_object().expect("methods").keys().map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = salvage::web::api::routes()
        .table
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(served, documented);
    // Every documented error response is a problem detail.
    for (method, path) in &documented {
        let responses = &document["paths"][path][method]["responses"];
        assert!(responses["200"].is_object(), "{method} {path}");
        for (status, response) in responses.as_object().expect("responses") {
            if status != "200" {
                assert_eq!(response["$ref"], "#/components/responses/Problem", "{method} {path} {status}");
            }
        }
    }
}

#[test]
fn the_api_serves_the_objects_the_cli_prints_and_errors_as_problem_details() {
    let dir = tempfile::tempdir().expect("temp");
    let execution = waiting_execution(dir.path(), None);
    let reader = token(dir.path(), "incident-commander");
    let web = Daemon::start_web(dir.path(), STORE, &[]);
    let http = Http::new(web.web_address());
    let auth = bearer(&reader);
    let get = |path: &str| {
        let reply = http.get(path, &[("authorization", &auth)]);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert!(reply.content_type.starts_with("application/json"), "{path}: {}", reply.content_type);
        reply.json()
    };

    // The same objects as the CLI's --json.
    for (path, args) in [
        ("/api/v1/runs", vec!["runs", "--json"]),
        ("/api/v1/runs?status=failed", vec!["runs", "--status", "failed", "--json"]),
        (&format!("/api/v1/runs/{FAILED_INVOICE}"), vec!["inspect", FAILED_INVOICE, "--json"]),
        (&format!("/api/v1/runs/{FAILED_INVOICE}/report"), vec!["report", FAILED_INVOICE, "--json"]),
        (&format!("/api/v1/runs/{FAILED_INVOICE}/tree"), vec!["tree", "--root", FAILED_INVOICE, "--json"]),
        ("/api/v1/executions", vec!["executions", "--json"]),
        ("/api/v1/approvals", vec!["approvals", "--json"]),
        ("/api/v1/incidents", vec!["incidents", "--json"]),
        ("/api/v1/audit", vec!["audit", "--json"]),
    ] {
        assert_eq!(get(path), cli_json(dir.path(), &args), "{path}");
    }
    let plan = get(&format!("/api/v1/runs/{FAILED_INVOICE}/plan"));
    assert_eq!(plan["planHash"], cli_json(dir.path(), &["plan", FAILED_INVOICE, "--json"])["planHash"]);
    let one = get(&format!("/api/v1/executions/{execution}"));
    assert_eq!(one, cli_json(dir.path(), &["executions", "--json"])[0]);
    let journal = get(&format!("/api/v1/executions/{execution}/journal"));
    let kinds: Vec<&str> = journal.as_array().expect("entries").iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"started"), "{journal:#}");
    assert_eq!(kinds.last(), Some(&"approval_requested"), "{journal:#}");
    assert_eq!(journal[0]["seq"], 1);
    let status = get("/api/v1/status");
    assert_eq!(status["running"], false, "no daemon runs beside `salvage web`: {status:#}");
    assert_eq!(status["pendingApprovals"][0]["executionId"], execution.as_str(), "{status:#}");
    let reload = get("/api/v1/reload");
    assert!(reload["lastReload"].is_null(), "{reload:#}");
    assert_eq!(get("/api/v1/whoami"), json!({"name": "incident-commander", "via": "token"}));
    let since_later = get("/api/v1/audit?since=2999-01-01T00:00:00Z");
    assert_eq!(since_later, json!([]));
    let document = http.get("/api/v1/openapi.json", &[]);
    assert_eq!(document.status, 200, "the document needs no token");
    assert_eq!(document.json()["openapi"], "3.1.0");

    // Problem details with the CLI's codes.
    assert_problem(&http.get("/api/v1/runs", &[]), 401, "salvage::web::unauthenticated");
    let forged = bearer(&format!("slv_{}", "0".repeat(64)));
    assert_problem(&http.get("/api/v1/runs", &[("authorization", &forged)]), 401, "salvage::identity::unknown_token");
    assert_problem(&http.get("/api/v1/runs/no-such-run", &[("authorization", &auth)]), 404, "salvage::run_not_found");
    assert_problem(
        &http.get("/api/v1/executions/exec-nope", &[("authorization", &auth)]),
        404,
        "salvage::execution_not_found",
    );
    assert_problem(
        &http.get("/api/v1/executions?status=sleeping", &[("authorization", &auth)]),
        400,
        "salvage::execution::unknown_status",
    );
    assert_problem(
        &http.get("/api/v1/audit?since=yesterday", &[("authorization", &auth)]),
        400,
        "salvage::web::bad_since",
    );
    assert_problem(
        &http.get(&format!("/api/v1/incidents/{FAILED_INVOICE}"), &[("authorization", &auth)]),
        404,
        "salvage::incident::none",
    );
    let half = http.post_json(
        &format!("/api/v1/executions/{execution}/steps/{STEP}/approve"),
        &[("authorization", &auth)],
        &json!({"planHash": "abc"}),
    );
    assert_problem(&half, 400, "salvage::web::half_seen");

    // The inbox's session cookie reads the API but cannot answer through it (no CSRF token there).
    let cookie = http.sign_in(&reader);
    assert_eq!(http.get("/api/v1/approvals", &[("cookie", &cookie)]).status, 200);
    let posted = http.post_json(
        &format!("/api/v1/executions/{execution}/steps/{STEP}/approve"),
        &[("cookie", &cookie)],
        &json!({}),
    );
    assert_problem(&posted, 403, "salvage::web::session_cannot_write");

    // A user header is believed only from a configured proxy: salvage.yaml lists none here.
    let proxied = http.get("/api/v1/whoami", &[("x-forwarded-user", "incident-commander")]);
    assert_problem(&proxied, 403, "salvage::identity::untrusted_proxy");

    // A revoked token stops working at once, and so do its inbox sessions.
    let session = http.sign_in(&reader);
    assert_eq!(http.get("/approvals", &[("cookie", &session)]).status, 200);
    let id = cli_json(dir.path(), &["token", "list", "--json"])[0]["id"].as_str().expect("token id").to_owned();
    let revoke = salvage(dir.path(), &["token", "revoke", &id, "--as", "admin"]);
    assert!(revoke.status.success(), "revoke: {}", stderr(&revoke));
    assert_problem(&http.get("/api/v1/runs", &[("authorization", &auth)]), 401, "salvage::identity::revoked_token");
    let after = http.get("/approvals", &[("cookie", &session)]);
    assert_eq!((after.status, after.location.as_deref()), (303, Some("/login")), "{}", after.body);
    web.stop();
}

#[test]
fn a_trusted_proxy_names_the_user_only_from_its_own_address() {
    let dir = tempfile::tempdir().expect("temp");
    waiting_execution(dir.path(), None);
    std::fs::write(
        dir.path().join("salvage.yaml"),
        "web:\n  trusted_proxies: [\"127.0.0.1\"]\n  user_header: X-Auth-User\n",
    )
    .expect("salvage.yaml");
    let web = Daemon::start_web(dir.path(), STORE, &[]);
    let http = Http::new(web.web_address());
    let me = http.get("/api/v1/whoami", &[("x-auth-user", "incident-commander")]);
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json(), json!({"name": "incident-commander", "via": "trusted_proxy"}));
    // A name salvage would not record is refused, not trusted.
    let bad = http.get("/api/v1/whoami", &[("x-auth-user", "  ")]);
    assert_eq!(bad.status, 400, "{}", bad.body);
    web.stop();

    // The same header from an address that is not listed.
    std::fs::write(
        dir.path().join("salvage.yaml"),
        "web:\n  trusted_proxies: [\"10.0.0.0/8\"]\n  user_header: X-Auth-User\n",
    )
    .expect("salvage.yaml");
    let web = Daemon::start_web(dir.path(), STORE, &[]);
    let http = Http::new(web.web_address());
    assert_problem(
        &http.get("/api/v1/whoami", &[("x-auth-user", "incident-commander")]),
        403,
        "salvage::identity::untrusted_proxy",
    );
    web.stop();
}

#[test]
fn forms_without_the_sessions_csrf_token_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("temp");
    let execution = waiting_execution(dir.path(), None);
    let commander = token(dir.path(), "incident-commander");
    let web = Daemon::start_web(dir.path(), STORE, &[]);
    let http = Http::new(web.web_address());
    let session = http.sign_in(&commander);
    let path = format!("/approvals/{execution}/{STEP}");
    let page = http.get(&path, &[("cookie", &session)]);
    assert_eq!(page.status, 200, "{}", page.body);
    let journal_before = cli_json(dir.path(), &["audit", "--json"]).as_array().map(Vec::len);
    for csrf in ["", "0000", "a".repeat(64).as_str()] {
        let form = [
            ("csrf", csrf),
            ("decision", "approve"),
            ("reason", "looks fine"),
            ("planHash", &page.field("planHash").expect("planHash")),
            ("policyDigest", &page.field("policyDigest").expect("policyDigest")),
        ];
        let posted = http.post_form(&path, &[("cookie", &session)], &form);
        assert_eq!(posted.status, 403, "csrf {csrf:?}: {}", posted.body);
        assert!(posted.body.contains("CSRF"), "{}", posted.body);
    }
    assert_eq!(cli_json(dir.path(), &["audit", "--json"]).as_array().map(Vec::len), journal_before);
    assert_eq!(cli_json(dir.path(), &["approvals", "--json"])[0]["executionId"], execution.as_str());

    // Signing in needs the login form's own token too (no login CSRF).
    let login = http.post_form("/login", &[], &[("token", &commander), ("csrf", "x")]);
    assert_eq!(login.status, 403, "{}", login.body);
    assert!(login.cookie("salvage_session").is_none());
    // A wrong token is refused on the form, with the reason.
    let page = http.get("/login", &[]);
    let cookie = format!("salvage_login={}", page.cookie("salvage_login").expect("cookie"));
    let wrong = http.post_form(
        "/login",
        &[("cookie", &cookie)],
        &[("token", "slv_nope"), ("csrf", &page.field("csrf").expect("csrf"))],
    );
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.body.contains("not a salvage token"), "{}", wrong.body);
    web.stop();
}

/// Where an answer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    Cli,
    Api,
    Web,
}

/// What an answer came to, the same for every door: an HTTP status (the CLI's exit code mapped:
/// 0 → 200, 2 → 403 or 409 by the error's code) and the message.
#[derive(Debug)]
struct Answered {
    status: u16,
    message: String,
}

struct Setting {
    dir: tempfile::TempDir,
    execution: String,
    tokens: std::collections::HashMap<&'static str, String>,
    web: Option<(Daemon, Http)>,
}

const PEOPLE: [&str; 3] = ["oncall-sre", "incident-commander", "mallory"];

fn setting(door: Door) -> Setting {
    let dir = tempfile::tempdir().expect("temp");
    let execution = waiting_execution(dir.path(), None);
    let tokens = PEOPLE.iter().map(|name| (*name, token(dir.path(), name))).collect();
    let web = (door != Door::Cli).then(|| {
        let web = Daemon::start_web(dir.path(), STORE, &[]);
        let http = Http::new(web.web_address());
        (web, http)
    });
    Setting { dir, execution, tokens, web }
}

fn answer(setting: &Setting, door: Door, who: &str, decision: &str, reason: &str) -> Answered {
    let dir = setting.dir.path();
    let execution = setting.execution.as_str();
    match door {
        Door::Cli => {
            let out = salvage(dir, &[decision, execution, STEP, "--as", who, "--reason", reason]);
            let message = stderr(&out);
            let status = match out.status.code() {
                Some(0) => 200,
                Some(2) if message.contains("salvage::approve::stale") || message.contains("is stale") => 409,
                Some(2) => 403,
                other => panic!("{decision} as {who}: exit {other:?}: {message}"),
            };
            Answered { status, message }
        }
        Door::Api => {
            let (_, http) = setting.web.as_ref().expect("a server");
            let reply = http.post_json(
                &format!("/api/v1/executions/{execution}/steps/{STEP}/{decision}"),
                &[("authorization", &bearer(&setting.tokens[who]))],
                &json!({"reason": reason}),
            );
            let message = if reply.status == 200 { reply.body.clone() } else { reply.json()["detail"].to_string() };
            Answered { status: reply.status, message }
        }
        Door::Web => {
            let (_, http) = setting.web.as_ref().expect("a server");
            let session = http.sign_in(&setting.tokens[who]);
            let path = format!("/approvals/{execution}/{STEP}");
            let page = http.get(&path, &[("cookie", &session)]);
            assert_eq!(page.status, 200, "{}", page.body);
            let form = [
                ("csrf", page.field("csrf").expect("csrf")),
                ("decision", decision.to_owned()),
                ("reason", reason.to_owned()),
                ("planHash", page.field("planHash").expect("planHash")),
                ("policyDigest", page.field("policyDigest").expect("policyDigest")),
            ];
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let reply = http.post_form(&path, &[("cookie", &session)], &form);
            Answered { status: reply.status, message: reply.body }
        }
    }
}

#[test]
fn the_cli_the_api_and_the_inbox_decide_every_answer_the_same_way() {
    // (who, decision, policies edited since the request, expected status, in the message)
    let table: [(&str, &str, bool, u16, &str); 5] = [
        ("oncall-sre", "approve", false, 403, "oncall-sre started execution"),
        ("mallory", "approve", false, 403, "mallory may not answer step ask_operator"),
        ("mallory", "deny", false, 403, "mallory may not answer step ask_operator"),
        ("incident-commander", "approve", true, 409, "stale"),
        ("incident-commander", "approve", false, 200, ""),
    ];
    for door in [Door::Cli, Door::Api, Door::Web] {
        let setting = setting(door);
        for (who, decision, edited, status, says) in table {
            approvals::edit_policies(setting.dir.path(), edited);
            let answered = answer(&setting, door, who, decision, "checked the invoice");
            assert_eq!(answered.status, status, "{door:?}: {decision} as {who}: {}", answered.message);
            assert!(answered.message.contains(says), "{door:?}: {decision} as {who}: {}", answered.message);
        }
        // The approval was taken once, and the execution went on (here, or in `salvage web`).
        let execution = setting.execution.clone();
        wait_for("the execution to go on after the approval", || {
            let executions = cli_json(setting.dir.path(), &["executions", "--json"]);
            let status = executions[0]["status"].as_str().unwrap_or_default().to_owned();
            let still_asking = status == "waiting_for_approval" && executions[0]["pendingApproval"]["stepId"] == STEP;
            (!still_asking && status != "running").then_some(())
        });
        let audit = cli_json(setting.dir.path(), &["audit", "--json"]);
        let origin = match door {
            Door::Cli => "cli",
            Door::Api => "api",
            Door::Web => "web",
        };
        let answers: Vec<(String, String, String)> = audit
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["executionId"] == execution.as_str())
            .filter(|e| e["event"] == "answer_refused" || e["event"] == "approval_answered")
            .map(|e| {
                assert_eq!(e["origin"], origin, "{door:?}: {e}");
                let text = |key: &str| e[key].as_str().unwrap_or("-").to_owned();
                (text("event"), text("actor"), text("decision"))
            })
            .collect();
        let row = |event: &str, actor: &str, decision: &str| (event.to_owned(), actor.to_owned(), decision.to_owned());
        assert_eq!(
            answers,
            [
                row("answer_refused", "oncall-sre", "approved"),
                row("answer_refused", "mallory", "approved"),
                row("answer_refused", "mallory", "denied"),
                row("approval_answered", "incident-commander", "approved"),
            ],
            "{door:?}: {audit:#}"
        );
        if let Some((web, _)) = setting.web {
            web.stop();
        }
    }
}

#[test]
fn beside_the_daemon_the_api_answers_and_the_daemon_goes_on() {
    let dir = tempfile::tempdir().expect("temp");
    approvals::incident(dir.path(), None);
    let commander = token(dir.path(), "incident-commander");
    let daemon = Daemon::start_in(dir.path(), STORE, "enforce", &["--http", "127.0.0.1:0"]);
    let http = Http::new(daemon.web_address());
    let auth = bearer(&commander);
    // The daemon recovers the incident up to its approval; the API sees what the CLI sees.
    let pending = wait_for("the daemon's execution to wait for an approval", || {
        let reply = http.get("/api/v1/approvals", &[("authorization", &auth)]);
        let rows = reply.json();
        rows.as_array().and_then(|rows| rows.first().cloned())
    });
    assert_eq!(pending["startedBy"], "salvage-serve");
    assert_eq!(
        http.get("/api/v1/incidents", &[("authorization", &auth)]).json(),
        cli_json(dir.path(), &["incidents", "--json"])
    );
    let incident = http.get(&format!("/api/v1/incidents/{FAILED_INVOICE}"), &[("authorization", &auth)]);
    assert_eq!(incident.status, 200, "{}", incident.body);
    assert_eq!(incident.json(), cli_json(dir.path(), &["incident", FAILED_INVOICE, "--json"]));
    let status = http.get("/api/v1/status", &[("authorization", &auth)]).json();
    assert_eq!(status["running"], true, "{status:#}");
    let execution = pending["executionId"].as_str().expect("execution").to_owned();
    let approved = http.post_json(
        &format!("/api/v1/executions/{execution}/steps/{STEP}/approve"),
        &[("authorization", &auth)],
        &json!({"reason": "from the API", "planHash": pending["planHash"], "policyDigest": pending["policyDigest"]}),
    );
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert_eq!(approved.json()["outcome"]["result"], "recorded");
    // The same answer again changes nothing and says so.
    let again = http.post_json(
        &format!("/api/v1/executions/{execution}/steps/{STEP}/approve"),
        &[("authorization", &auth)],
        &json!({"reason": "from the API"}),
    );
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["outcome"]["result"], "already_answered");
    // A stale plan hash is refused, with nothing recorded.
    let stale = http.post_json(
        &format!("/api/v1/executions/{execution}/steps/{STEP}/deny"),
        &[("authorization", &bearer(&token(dir.path(), "oncall-sre")))],
        &json!({"planHash": "0".repeat(64), "policyDigest": pending["policyDigest"]}),
    );
    assert!(stale.status == 409, "{}", stale.body);
    wait_for("the daemon to go on after the approval", || {
        let executions = cli_json(dir.path(), &["executions", "--json"]);
        (executions[0]["status"] != "waiting_for_approval" && executions[0]["status"] != "running").then_some(())
    });
    let journal = http.get(&format!("/api/v1/executions/{execution}/journal"), &[("authorization", &auth)]).json();
    let answered: Vec<&Value> =
        journal.as_array().expect("journal").iter().filter(|e| e["kind"] == "approval_answered").collect();
    assert_eq!(answered.len(), 1, "{journal:#}");
    assert_eq!(answered[0]["actor"], "incident-commander");
    assert_eq!(answered[0]["origin"], "api");
    daemon.stop();
}

#[test]
fn beside_the_daemon_a_partial_quorum_waits_and_the_completing_answer_lets_it_go_on() {
    let dir = tempfile::tempdir().expect("temp");
    approvals::incident(dir.path(), Some("{ approvers: [bob, carol, dave], quorum: 2 }"));
    let (bob, carol) = (bearer(&token(dir.path(), "bob")), bearer(&token(dir.path(), "carol")));
    let daemon = Daemon::start_in(dir.path(), STORE, "enforce", &["--http", "127.0.0.1:0"]);
    let http = Http::new(daemon.web_address());
    let pending = wait_for("the daemon's execution to wait for an approval", || {
        http.get("/api/v1/approvals", &[("authorization", &bob)]).json().as_array().and_then(|r| r.first().cloned())
    });
    assert_eq!((pending["quorum"].as_u64(), pending["stillNeeded"].as_u64()), (Some(2), Some(2)), "{pending:#}");
    let execution = pending["executionId"].as_str().expect("execution").to_owned();
    let approve = |auth: &str| {
        let reply = http.post_json(
            &format!("/api/v1/executions/{execution}/steps/{STEP}/approve"),
            &[("authorization", auth)],
            &json!({"reason": "checked"}),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["outcome"].clone()
    };
    let journal_length = || {
        http.get(&format!("/api/v1/executions/{execution}/journal"), &[("authorization", &bob)])
            .json()
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(approve(&bob), json!({"result": "counted", "decision": "approved", "approvals": 1, "quorum": 2}));
    // The daemon's clocks tick every second: one approval of two must not wake the execution.
    let after_one = journal_length();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(journal_length(), after_one, "the daemon touched an execution whose quorum is not complete");
    let still = http.get("/api/v1/approvals", &[("authorization", &bob)]).json();
    assert_eq!(still[0]["approvedBy"], json!(["bob"]), "{still:#}");
    assert_eq!(approve(&carol)["result"], "recorded");
    wait_for("the daemon to go on once the quorum is complete", || {
        let executions = cli_json(dir.path(), &["executions", "--json"]);
        (executions[0]["status"] != "waiting_for_approval" && executions[0]["status"] != "running").then_some(())
    });
    daemon.stop();
}
