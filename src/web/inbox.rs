//! The approval inbox: server-rendered pages that work without JavaScript (a few lines of it only
//! refresh the list). The list of pending approvals, oldest first; one approval's page with the
//! incident, every decision's explanation, the steps that run once it is approved and their
//! effect classes, and approve/deny with a reason. Forms carry a CSRF token; no secret is ever
//! put in a URL. The answer goes through the same path as the API's and the CLI's.

use std::fmt::Write as _;

use axum::Form;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::Value;

use super::api::peer;
use super::auth::{self, LOGIN_COOKIE, Person, SESSION_COOKIE, Via};
use super::problem::Problem;
use super::{WebState, views};
use crate::execute::identity::{constant_time_eq, random_hex};
use crate::execute::{Decision, Execution, Origin, SeenApproval};

/// The inbox's routes.
pub fn routes() -> axum::Router<WebState> {
    axum::Router::new()
        .route("/", get(|| async { Redirect::to("/approvals") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/approvals", get(inbox))
        .route("/approvals/{execution_id}/{step_id}", get(approval_page).post(answer))
        .route("/executions/{execution_id}", get(execution_page))
}

/// The person of a page request; nobody → the login page.
struct Viewer(Person);

impl FromRequestParts<WebState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, Self::Rejection> {
        match auth::person(state, &parts.headers, peer(parts)).await {
            Ok(Some(person)) => Ok(Viewer(person)),
            Ok(None) => Err(Redirect::to("/login").into_response()),
            Err(problem) => Err(error_page(&problem)),
        }
    }
}

/// Escapes text for HTML (element content and quoted attributes).
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment for a link (ids are checked names, but never trusted in a URL).
fn seg(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:.7em 1.5em;display:flex;justify-content:space-between;align-items:center}\
header a{color:#fff}main{padding:1em 1.5em;max-width:70em}table{border-collapse:collapse;width:100%;background:#fff}\
th,td{border-bottom:1px solid #dde1e7;padding:.45em .6em;text-align:left;vertical-align:top}th{background:#eef0f4}\
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:.8em 1.1em;margin:1em 0}\
.error{border-color:#c0392b;background:#fdecea}.ok{border-color:#2e7d32;background:#edf7ee}\
code{background:#eef0f4;padding:0 .25em;border-radius:3px}.effect{font-weight:600}\
button{font-size:1em;padding:.45em 1.2em;margin-right:.6em;border-radius:4px;border:1px solid #555;cursor:pointer}\
button.approve{background:#2e7d32;color:#fff}button.deny{background:#c0392b;color:#fff}\
textarea{width:100%;min-height:4em;font:inherit}.muted{color:#5c6370}ul.cands li.chosen{font-weight:600}";

fn page(title: &str, person: Option<&Person>, state: Option<&WebState>, body: &str, script: &str) -> String {
    let who = match (person, state) {
        (Some(person), Some(state)) => format!(
            "<span><span class=\"muted\">{}</span> · signed in as <strong id=\"who\">{}</strong> <form method=\"post\" action=\"/logout\" \
             style=\"display:inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>sign out</button>\
             </form></span>",
            esc(&state.inner.store_spec),
            esc(&person.name),
            esc(&person.csrf(state))
        ),
        _ => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} — salvage</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style></head><body>\
         <header><a href=\"/approvals\"><strong>salvage</strong> approvals</a>{who}</header><main>{body}</main>{script}\
         </body></html>",
        esc(title)
    )
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    // Pages are never framed (clickjacking an approve button) nor cached (they show live state).
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    response
}

/// A problem as the pages show it: status, what is wrong, what to do.
fn problem_html(problem: &Problem) -> String {
    format!(
        "<section class=\"error\" id=\"problem\"><h2>{} {}</h2><p>{}</p>{}</section>",
        problem.status.as_u16(),
        esc(problem.title()),
        esc(&problem.detail),
        problem.help.as_deref().map(|help| format!("<p class=\"muted\">{}</p>", esc(help))).unwrap_or_default()
    )
}

fn error_page(problem: &Problem) -> Response {
    html(problem.status, page(problem.title(), None, None, &problem_html(problem), ""))
}

async fn login_page(headers: HeaderMap) -> Response {
    // Double-submit CSRF before there is a session: the form's token must equal the cookie's.
    let csrf = auth::cookie(&headers, LOGIN_COOKIE).map(str::to_owned).unwrap_or_else(random_hex);
    login_form(StatusCode::OK, &csrf, None)
}

fn login_form(status: StatusCode, csrf: &str, error: Option<&str>) -> Response {
    let error = error.map(|e| format!("<section class=\"error\" id=\"problem\"><p>{}</p></section>", esc(e)));
    let body = format!(
        "<h1>Sign in</h1>{}<section><form method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <p><label>Your token (from <code>salvage token add NAME</code>)<br>\
         <input type=\"password\" name=\"token\" id=\"token\" size=\"60\" autocomplete=\"off\" required></label></p>\
         <p><button type=\"submit\" id=\"sign-in\">Sign in</button></p></form></section>",
        error.unwrap_or_default(),
        esc(csrf)
    );
    let mut response = html(status, page("Sign in", None, None, &body, ""));
    if let Ok(cookie) = HeaderValue::from_str(&format!("{LOGIN_COOKIE}={csrf}; Path=/login; HttpOnly; SameSite=Strict"))
    {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    csrf: String,
}

async fn login(State(state): State<WebState>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let expected = auth::cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !constant_time_eq(expected.as_bytes(), form.csrf.as_bytes()) {
        return login_form(StatusCode::FORBIDDEN, &random_hex(), Some("The form expired; sign in again."));
    }
    match auth::log_in(&state, &form.token).await {
        Ok((_, secret)) => {
            let mut response = Redirect::to("/approvals").into_response();
            if let Ok(cookie) =
                HeaderValue::from_str(&format!("{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict"))
            {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            response
        }
        Err(problem) => login_form(problem.status, expected, Some(&problem.detail)),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(State(state): State<WebState>, Viewer(person): Viewer, Form(form): Form<CsrfForm>) -> Response {
    if !person.csrf_matches(&state, &form.csrf) {
        return error_page(&csrf_problem());
    }
    if let Via::Session { secret, .. } = &person.via
        && let Err(problem) = auth::log_out(&state, secret).await
    {
        return error_page(&problem);
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("salvage_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
    );
    response
}

fn csrf_problem() -> Problem {
    Problem::forbidden(
        "salvage::web::csrf",
        "the form's CSRF token is missing or not yours",
        Some("open the page again from the inbox and answer there"),
    )
}

fn list(names: &[String]) -> String {
    if names.is_empty() { "salvage.yaml's default approvers".to_owned() } else { names.join(", ") }
}

async fn inbox(State(state): State<WebState>, Viewer(person): Viewer) -> Response {
    let pending = match views::pending_approvals(state.store().as_ref()).await {
        Ok(pending) => pending,
        Err(error) => return error_page(&Problem::from(error)),
    };
    let mut body = format!("<h1>Pending approvals <span class=\"muted\">({})</span></h1>", pending.len());
    if pending.is_empty() {
        body.push_str("<section id=\"empty\"><p>Nothing waits for a person.</p></section>");
    } else {
        body.push_str(
            "<table id=\"approvals\"><thead><tr><th>Requested</th><th>Incident (run)</th><th>Step</th>\
             <th>Who may approve</th><th>Deadline</th><th>Started by</th></tr></thead><tbody>",
        );
        for (execution, approval) in &pending {
            let _ = write!(
                body,
                "<tr><td>{}</td><td><code>{}</code><br><span class=\"muted\">{}</span></td>\
                 <td><a class=\"approval\" href=\"/approvals/{}/{}\">{} <span class=\"muted\">[{}]</span></a><br>{}</td>\
                 <td>{}{}</td><td>{}</td><td>{}</td></tr>",
                esc(&approval.requested_at),
                esc(&execution.run_id),
                esc(execution.playbook.as_ref().map_or("", |p| p.name.as_str())),
                seg(&execution.execution_id),
                seg(&approval.step_id),
                esc(&approval.step_id),
                esc(&approval.action),
                esc(&approval.reason),
                esc(&list(&approval.approvers)),
                if approval.quorum > 1 {
                    format!(" <strong>({} of {} approved)</strong>", approval.approved_by.len(), approval.quorum)
                } else {
                    String::new()
                },
                esc(approval.expires_at.as_deref().unwrap_or("none")),
                esc(&execution.started_by),
            );
        }
        body.push_str("</tbody></table>");
    }
    // Live refresh of the list only (the approval page, with its form, never reloads itself); the
    // page works the same without it.
    let script =
        "<script>setInterval(function(){if(document.visibilityState==='visible'){location.reload();}},15000);</script>";
    html(StatusCode::OK, page("Pending approvals", Some(&person), Some(&state), &body, script))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// One decision's explanation: hook, policy file, result, reason, and the checkpoints chosen and
/// refused.
fn explanation_html(decision: &Value) -> String {
    let mut out = format!(
        "<li class=\"decision\"><strong>{}</strong> → <code>{}</code> <span class=\"muted\">({})</span>",
        esc(&text(&decision["hook"])),
        esc(&text(&decision["result"])),
        esc(decision["policyFile"].as_str().unwrap_or("playbook rule or default"))
    );
    if let Some(reason) = decision["reason"].as_str() {
        let _ = write!(out, "<br>{}", esc(reason));
    }
    if let Some(error) = decision["error"].as_str() {
        let _ = write!(out, "<br><strong>the hook failed:</strong> {} (decided on the safe side)", esc(error));
    }
    if let Some(candidates) = decision["candidates"].as_array() {
        out.push_str("<ul class=\"cands\">");
        for candidate in candidates {
            let chosen = candidate["chosen"] == true;
            let _ = write!(
                out,
                "<li class=\"{}\">{} checkpoint <code>{}</code>{}: {}</li>",
                if chosen { "chosen" } else { "refused" },
                if chosen { "chosen" } else { "refused" },
                esc(&text(&candidate["checkpointId"])),
                candidate["label"].as_str().map(|l| format!(" ({})", esc(l))).unwrap_or_default(),
                esc(&text(&candidate["reason"]))
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</li>");
    out
}

/// The steps the plan expects to run once `step_id` is approved (the expected path), with their
/// effects: the step itself when it is the one approved, not when it is only the question.
fn steps_after(plan: &Value, step_id: &str, including: bool) -> Vec<(String, String, String)> {
    let steps: Vec<&Value> = plan["steps"].as_array().map(|s| s.iter().collect()).unwrap_or_default();
    let effect =
        |id: &str| steps.iter().find(|s| s["id"] == id).map(|s| (text(&s["catalogAction"]), text(&s["effect"])));
    let path = plan["path"].as_array().cloned().unwrap_or_default();
    let start =
        path.iter().position(|entry| entry["node"] == step_id).map_or(0, |index| index + usize::from(!including));
    path.iter()
        .skip(start)
        .filter(|entry| entry["kind"] == "step" && entry["transition"] != "skip")
        .filter_map(|entry| {
            let id = entry["node"].as_str()?;
            let (action, effect) = effect(id)?;
            Some((id.to_owned(), action, effect))
        })
        .chain(
            path.iter()
                .filter(|e| e["kind"] == "end")
                .map(|e| (text(&e["node"]), "end".to_owned(), text(&e["transition"]))),
        )
        .collect()
}

fn approval_body(state: &WebState, person: &Person, execution: &Execution, step_id: &str, notice: &str) -> String {
    let plan = &execution.plan;
    let mut body = format!("<p><a href=\"/approvals\">← all approvals</a></p>{notice}");
    let waiting = execution.status == crate::execute::ExecutionStatus::WaitingForApproval;
    let Some(approval) = execution.pending_approval.as_ref().filter(|p| waiting && p.step_id == step_id) else {
        let _ = write!(
            body,
            "<section id=\"not-waiting\"><h1>Step {} of {}</h1><p>This step does not wait for an approval now: the \
             execution is <strong>{}</strong>.</p><p><a href=\"/executions/{}\">See the execution</a></p></section>",
            esc(step_id),
            esc(&execution.execution_id),
            esc(execution.status.as_str()),
            seg(&execution.execution_id)
        );
        return body;
    };
    let incident = &plan["incident"];
    let failure = &incident["failure"];
    let _ = write!(
        body,
        "<h1>Approve <code>{}</code> [{}]?</h1>\
         <section id=\"incident\"><h2>The incident</h2><table>\
         <tr><th>Run</th><td><code>{}</code> (root <code>{}</code>), {}</td></tr>\
         <tr><th>Kind</th><td>{}</td></tr><tr><th>Playbook</th><td>{}</td></tr>\
         <tr><th>Failure</th><td>{}</td></tr><tr><th>Last checkpoint</th><td>{}</td></tr>\
         <tr><th>Why a person</th><td>{}</td></tr>\
         <tr><th>Who may approve</th><td id=\"approvers\">{}{}</td></tr>\
         <tr><th>Started by</th><td>{} <span class=\"muted\">(may not approve unless allowed)</span></td></tr>\
         <tr><th>Requested</th><td>{} — deadline {}</td></tr>\
         <tr><th>Plan</th><td><code>{}</code> hash <code>{}</code>, policy set <code>{}</code></td></tr></table></section>",
        esc(step_id),
        esc(&approval.action),
        esc(&execution.run_id),
        esc(&text(&incident["rootRunId"])),
        esc(&text(&incident["status"])),
        esc(&text(&plan["incidentType"])),
        esc(execution.playbook.as_ref().map_or("-", |p| p.name.as_str())),
        esc(&failure["message"].as_str().map_or_else(|| text(failure), str::to_owned)),
        esc(&text(&incident["lastCheckpoint"]["id"])),
        esc(&approval.reason),
        esc(&list(&approval.approvers)),
        quorum_html(execution, approval),
        esc(&execution.started_by),
        esc(&approval.requested_at),
        esc(approval.expires_at.as_deref().unwrap_or("none")),
        esc(&execution.plan_id),
        esc(&crate::execute::short_digest(&approval.plan_hash)),
        esc(&crate::execute::short_digest(&execution.policy_digest)),
    );
    body.push_str("<section id=\"explanation\"><h2>Every decision, explained</h2><h3>The incident</h3><ul>");
    for decision in plan["decisions"].as_array().into_iter().flatten() {
        body.push_str(&explanation_html(decision));
    }
    body.push_str("</ul>");
    for step in plan["steps"].as_array().into_iter().flatten() {
        let decisions = step["explanation"].as_array().map(Vec::as_slice).unwrap_or_default();
        if decisions.is_empty() {
            continue;
        }
        let _ = write!(
            body,
            "<h3>Step <code>{}</code> [{}] <span class=\"effect\">{}</span></h3><ul>",
            esc(&text(&step["id"])),
            esc(&text(&step["catalogAction"])),
            esc(&text(&step["effect"]))
        );
        for decision in decisions {
            body.push_str(&explanation_html(decision));
        }
        body.push_str("</ul>");
    }
    body.push_str("</section><section id=\"after\"><h2>What runs once approved</h2><ol>");
    let including = approval.kind == crate::execute::record::ApprovalKind::Step;
    for (id, action, effect) in steps_after(plan, step_id, including) {
        let _ = write!(
            body,
            "<li><code>{}</code> {} — <span class=\"effect\">{}</span></li>",
            esc(&id),
            esc(&action),
            esc(&effect)
        );
    }
    let _ = write!(
        body,
        "</ol></section><section id=\"answer\"><h2>Your answer</h2>\
         <form method=\"post\" action=\"/approvals/{}/{}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"planHash\" value=\"{}\">\
         <input type=\"hidden\" name=\"policyDigest\" value=\"{}\">\
         <p><label>Reason (kept in the journal)<br><textarea name=\"reason\" id=\"reason\"></textarea></label></p>\
         <p><button class=\"approve\" name=\"decision\" value=\"approve\" id=\"approve\">Approve</button>\
         <button class=\"deny\" name=\"decision\" value=\"deny\" id=\"deny\">Deny</button></p></form></section>",
        seg(&execution.execution_id),
        seg(step_id),
        esc(&person.csrf(state)),
        esc(&approval.plan_hash),
        esc(&execution.policy_digest),
    );
    body
}

/// A quorum's progress: how many of how many, who approved, who may still.
fn quorum_html(execution: &Execution, approval: &crate::execute::record::PendingApproval) -> String {
    if approval.quorum <= 1 {
        return String::new();
    }
    format!(
        "<br><span id=\"quorum\"><strong>{} of {} approvals</strong> (approved by {}; still possible: {})</span>",
        approval.approved_by.len(),
        approval.quorum,
        esc(&if approval.approved_by.is_empty() { "nobody yet".to_owned() } else { approval.approved_by.join(", ") }),
        esc(&views::still_eligible(execution, approval).join(", "))
    )
}

async fn approval_page(
    State(state): State<WebState>,
    Viewer(person): Viewer,
    Path((execution_id, step_id)): Path<(String, String)>,
) -> Response {
    match state.execution(&execution_id).await {
        Ok(execution) => {
            let body = approval_body(&state, &person, &execution, &step_id, "");
            html(StatusCode::OK, page(&format!("Approve {step_id}"), Some(&person), Some(&state), &body, ""))
        }
        Err(problem) => error_page(&problem),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerForm {
    csrf: String,
    decision: String,
    #[serde(default)]
    reason: String,
    plan_hash: String,
    policy_digest: String,
}

async fn answer(
    State(state): State<WebState>,
    Viewer(person): Viewer,
    Path((execution_id, step_id)): Path<(String, String)>,
    Form(form): Form<AnswerForm>,
) -> Response {
    let result = answer_form(&state, &person, &execution_id, &step_id, form).await;
    let (status, notice) = match &result {
        Ok(outcome) => (
            StatusCode::OK,
            format!("<section class=\"ok\" id=\"answered\"><p>{}</p></section>", esc(&outcome_text(outcome))),
        ),
        Err(problem) => (problem.status, problem_html(problem)),
    };
    match state.execution(&execution_id).await {
        Ok(execution) => {
            let body = approval_body(&state, &person, &execution, &step_id, &notice);
            html(status, page(&format!("Approve {step_id}"), Some(&person), Some(&state), &body, ""))
        }
        Err(problem) => error_page(&problem),
    }
}

async fn answer_form(
    state: &WebState,
    person: &Person,
    execution_id: &str,
    step_id: &str,
    form: AnswerForm,
) -> Result<Value, Problem> {
    if !person.csrf_matches(state, &form.csrf) {
        return Err(csrf_problem());
    }
    let decision = match form.decision.as_str() {
        "approve" => Decision::Approve,
        "deny" => Decision::Deny,
        other => {
            return Err(Problem::bad_request(
                "salvage::web::bad_decision",
                format!("{other:?} is not an answer: approve or deny"),
            ));
        }
    };
    let reason = Some(form.reason.trim().to_owned()).filter(|reason| !reason.is_empty());
    let seen = SeenApproval { plan_hash: form.plan_hash, policy_digest: form.policy_digest };
    super::api::record_answer(state, person, Origin::Web, execution_id, step_id, decision, reason, Some(seen)).await
}

fn outcome_text(outcome: &Value) -> String {
    match outcome["result"].as_str() {
        Some("recorded") => format!("Your answer was recorded: {}.", text(&outcome["decision"])),
        Some("already_answered") => {
            format!(
                "You already answered the same way ({} at {}); nothing changed.",
                text(&outcome["by"]),
                text(&outcome["at"])
            )
        }
        Some("expired") => format!("The approval had expired at {}: it was denied by timeout.", text(&outcome["at"])),
        Some("counted") => format!(
            "Your approval was recorded: {} of {} approvals; the step waits for the others.",
            text(&outcome["approvals"]),
            text(&outcome["quorum"])
        ),
        _ => outcome.to_string(),
    }
}

async fn execution_page(
    State(state): State<WebState>,
    Viewer(person): Viewer,
    Path(execution_id): Path<String>,
) -> Response {
    let execution = match state.execution(&execution_id).await {
        Ok(execution) => execution,
        Err(problem) => return error_page(&problem),
    };
    let journal = match state.store().journal(&execution_id).await {
        Ok(journal) => journal,
        Err(error) => return error_page(&Problem::from(error)),
    };
    let mut body = format!(
        "<p><a href=\"/approvals\">← all approvals</a></p><h1>Execution <code>{}</code></h1><section><table>\
         <tr><th>Status</th><td id=\"status\">{}</td></tr><tr><th>Run</th><td><code>{}</code></td></tr>\
         <tr><th>Playbook</th><td>{}</td></tr><tr><th>Started by</th><td>{} at {}</td></tr>\
         <tr><th>Outcome</th><td>{}</td></tr></table></section>",
        esc(&execution.execution_id),
        esc(execution.status.as_str()),
        esc(&execution.run_id),
        esc(execution.playbook.as_ref().map_or("-", |p| p.name.as_str())),
        esc(&execution.started_by),
        esc(&execution.created_at),
        esc(execution.outcome.as_deref().unwrap_or("-")),
    );
    if let Some(approval) = execution
        .pending_approval
        .as_ref()
        .filter(|_| execution.status == crate::execute::ExecutionStatus::WaitingForApproval)
    {
        let _ = write!(
            body,
            "<section><p>Waits for an approval of step <a href=\"/approvals/{}/{}\">{}</a>.</p></section>",
            seg(&execution.execution_id),
            seg(&approval.step_id),
            esc(&approval.step_id)
        );
    }
    body.push_str("<section><h2>Journal</h2><table id=\"journal\"><tr><th>#</th><th>At</th><th>Entry</th><th>Step</th><th>Who</th></tr>");
    for record in &journal {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            record.seq,
            esc(&text(&record.body["at"])),
            esc(&text(&record.body["kind"])),
            esc(&text(&record.body["stepId"])),
            esc(&text(&record.body["actor"]))
        );
    }
    body.push_str("</table></section>");
    html(StatusCode::OK, page(&format!("Execution {execution_id}"), Some(&person), Some(&state), &body, ""))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn text_and_links_are_escaped() {
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(seg("exec-1/../x y"), "exec-1%2F..%2Fx%20y");
    }

    #[test]
    fn the_steps_after_an_approval_follow_the_expected_path_with_their_effects() {
        let plan = json!({
            "steps": [
                {"id": "check", "catalogAction": "check_envelope", "effect": "read_only"},
                {"id": "ask", "catalogAction": "request_approval", "effect": "none"},
                {"id": "branch", "catalogAction": "branch_from_checkpoint", "effect": "creates_run"},
                {"id": "skipped", "catalogAction": "notify", "effect": "external_write"},
                {"id": "resume", "catalogAction": "resume_run", "effect": "external_write"}
            ],
            "path": [
                {"node": "check", "kind": "step", "transition": "ok"},
                {"node": "ask", "kind": "step", "transition": "approved"},
                {"node": "branch", "kind": "step", "transition": "ok"},
                {"node": "skipped", "kind": "step", "transition": "skip"},
                {"node": "resume", "kind": "step", "transition": "ok"},
                {"node": "resolved", "kind": "end", "transition": "resolved"}
            ]
        });
        let shown = |step: &str, including: bool| -> Vec<String> {
            steps_after(&plan, step, including)
                .into_iter()
                .map(|(id, action, effect)| format!("{id} {action} {effect}"))
                .collect()
        };
        // A request_approval step is the question: what runs is what follows it.
        assert_eq!(
            shown("ask", false),
            ["branch branch_from_checkpoint creates_run", "resume resume_run external_write", "resolved end resolved"]
        );
        // A step that needs approval itself runs once approved.
        assert_eq!(
            shown("branch", true),
            ["branch branch_from_checkpoint creates_run", "resume resume_run external_write", "resolved end resolved"]
        );
    }
}
