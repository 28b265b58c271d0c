//! The JSON API, `/api/v1/…`: the objects the CLI's `--json` prints (built by [`super::views`]),
//! errors as problem details. Every route but the OpenAPI document needs a person (a bearer
//! token or a trusted proxy's header; the inbox's session cookie also works for reading).
//! `docs/openapi.json` describes every route; a test keeps the two the same.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{self, Person};
use super::problem::Problem;
use super::{WebState, views};
use crate::execute::{AnswerOutcome, ApprovalAnswerRequest, Decision, Origin, SeenApproval, answer_approval};
use crate::model::RunStatus;
use crate::plan::Planner;
use crate::store::RunQuery;

/// The OpenAPI document (committed in `docs/openapi.json`).
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// A router with the list of its routes (method, path), for the OpenAPI check.
pub struct Routes {
    pub router: axum::Router<WebState>,
    pub table: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn new() -> Routes {
        Routes { router: axum::Router::new(), table: Vec::new() }
    }

    fn add(mut self, method: &'static str, path: &'static str, route: MethodRouter<WebState>) -> Routes {
        self.table.push((method, path));
        self.router = self.router.route(path, route);
        self
    }
}

/// The API's routes.
pub fn routes() -> Routes {
    Routes::new()
        .add("get", "/api/v1/openapi.json", get(openapi))
        .add("get", "/api/v1/whoami", get(whoami))
        .add("get", "/api/v1/runs", get(runs))
        .add("get", "/api/v1/runs/{run_id}", get(run_summary))
        .add("get", "/api/v1/runs/{run_id}/report", get(run_report))
        .add("get", "/api/v1/runs/{run_id}/tree", get(run_tree))
        .add("get", "/api/v1/runs/{run_id}/plan", get(run_plan))
        .add("get", "/api/v1/executions", get(executions))
        .add("get", "/api/v1/executions/{execution_id}", get(execution))
        .add("get", "/api/v1/executions/{execution_id}/journal", get(journal))
        .add("post", "/api/v1/executions/{execution_id}/steps/{step_id}/approve", post(approve))
        .add("post", "/api/v1/executions/{execution_id}/steps/{step_id}/deny", post(deny))
        .add("get", "/api/v1/approvals", get(approvals))
        .add("get", "/api/v1/incidents", get(incidents))
        .add("get", "/api/v1/incidents/{run_id}", get(incident))
        .add("get", "/api/v1/status", get(status))
        .add("get", "/api/v1/reload", get(reload))
        .add("get", "/api/v1/audit", get(audit))
}

/// The peer's address (`0.0.0.0` when the server was not started with connection info, as in
/// in-process tests: never a trusted proxy).
pub fn peer(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(address)| address.ip())
}

/// A person the request authenticates (401 when nobody).
pub struct Authenticated(pub Person);

impl FromRequestParts<WebState> for Authenticated {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, Self::Rejection> {
        match auth::person(state, &parts.headers, peer(parts)).await? {
            Some(person) => Ok(Authenticated(person)),
            None => Err(Problem::unauthorized("this route needs a person: no token, session or trusted proxy user")),
        }
    }
}

type ApiResult = Result<Response, Problem>;

fn json_response(value: impl serde::Serialize) -> ApiResult {
    Ok(Json(value).into_response())
}

async fn openapi() -> Response {
    let mut response = OPENAPI.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn whoami(Authenticated(person): Authenticated) -> ApiResult {
    let via = match &person.via {
        auth::Via::Token { .. } => "token",
        auth::Via::Session { .. } => "session",
        auth::Via::TrustedProxy => "trusted_proxy",
    };
    json_response(json!({"name": person.name, "via": via}))
}

#[derive(Deserialize)]
struct StatusFilter {
    status: Option<String>,
}

async fn runs(_: Authenticated, State(state): State<WebState>, Query(filter): Query<StatusFilter>) -> ApiResult {
    let query = match filter.status.as_deref() {
        Some(status) => RunQuery::with_status(RunStatus::parse(status)),
        None => RunQuery::all(),
    };
    let listing = state.store().list(&query).await?;
    json_response(listing.items)
}

async fn run_summary(_: Authenticated, State(state): State<WebState>, Path(run_id): Path<String>) -> ApiResult {
    let stored = state.store().get(&run_id).await?.ok_or_else(|| run_not_found(&run_id))?;
    json_response(crate::inspect::summarize(&stored.run)?)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReportQuery {
    compare_to: Option<String>,
}

async fn run_report(
    _: Authenticated,
    State(state): State<WebState>,
    Path(run_id): Path<String>,
    Query(query): Query<ReportQuery>,
) -> ApiResult {
    let report = crate::inspect::create_report(state.store().as_ref(), &run_id, query.compare_to.as_deref()).await?;
    json_response(report)
}

async fn run_tree(_: Authenticated, State(state): State<WebState>, Path(run_id): Path<String>) -> ApiResult {
    let tree = crate::inspect::build_tree(state.store().as_ref(), &run_id).await?;
    json_response(tree.root.ok_or_else(|| run_not_found(&run_id))?)
}

async fn run_plan(
    Authenticated(_): Authenticated,
    State(state): State<WebState>,
    Path(run_id): Path<String>,
    Query(query): Query<ReportQuery>,
) -> ApiResult {
    if state.store().get(&run_id).await?.is_none() {
        return Err(run_not_found(&run_id));
    }
    let set = state.inner.sets.current().await?;
    let planner = Planner::new(state.store().clone(), set.policies.clone(), set.playbooks.clone());
    let plan = planner.plan(&run_id, query.compare_to.as_deref()).await?;
    json_response(plan.to_value())
}

fn run_not_found(run_id: &str) -> Problem {
    Problem::not_found(
        "salvage::run_not_found",
        format!("no run {run_id:?} in the store"),
        Some("`GET /api/v1/runs` lists the runs of this store"),
    )
}

async fn executions(_: Authenticated, State(state): State<WebState>, Query(filter): Query<StatusFilter>) -> ApiResult {
    if let Some(status) = filter.status.as_deref()
        && crate::execute::ExecutionStatus::parse(status).is_none()
    {
        return Err(Problem::bad_request(
            "salvage::execution::unknown_status",
            format!("unknown execution status {status:?}"),
        ));
    }
    let stored = state.store().list_executions(filter.status.as_deref()).await?;
    let rows: Vec<Value> =
        stored.iter().filter_map(views::readable).map(|execution| views::execution_summary(&execution)).collect();
    json_response(rows)
}

async fn execution(_: Authenticated, State(state): State<WebState>, Path(execution_id): Path<String>) -> ApiResult {
    json_response(views::execution_summary(&state.execution(&execution_id).await?))
}

async fn journal(_: Authenticated, State(state): State<WebState>, Path(execution_id): Path<String>) -> ApiResult {
    state.execution(&execution_id).await?;
    let records = state.store().journal(&execution_id).await?;
    let rows: Vec<Value> = records
        .into_iter()
        .map(|record| {
            let mut row = json!({"seq": record.seq});
            if let (Some(row), Value::Object(body)) = (row.as_object_mut(), record.body) {
                row.extend(body);
            }
            row
        })
        .collect();
    json_response(rows)
}

/// An answer's body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnswerBody {
    pub reason: Option<String>,
    /// The plan hash the answer is for (as shown with the approval); refused with 409 when the
    /// approval waits under another one now.
    pub plan_hash: Option<String>,
    /// The policy digest shown with the approval; refused with 409 when it differs.
    pub policy_digest: Option<String>,
}

async fn approve(
    person: Authenticated,
    State(state): State<WebState>,
    Path((execution_id, step_id)): Path<(String, String)>,
    body: Option<Json<AnswerBody>>,
) -> ApiResult {
    answer(person, state, execution_id, step_id, Decision::Approve, body.map(|Json(body)| body).unwrap_or_default())
        .await
}

async fn deny(
    person: Authenticated,
    State(state): State<WebState>,
    Path((execution_id, step_id)): Path<(String, String)>,
    body: Option<Json<AnswerBody>>,
) -> ApiResult {
    answer(person, state, execution_id, step_id, Decision::Deny, body.map(|Json(body)| body).unwrap_or_default()).await
}

async fn answer(
    Authenticated(person): Authenticated,
    state: WebState,
    execution_id: String,
    step_id: String,
    decision: Decision,
    body: AnswerBody,
) -> ApiResult {
    // A session cookie is the inbox's, whose forms carry a CSRF token; the API's writes take a
    // bearer token or a trusted proxy's user only, so no page elsewhere can post with a cookie.
    if matches!(person.via, auth::Via::Session { .. }) {
        return Err(Problem::forbidden(
            "salvage::web::session_cannot_write",
            "the API's answers need a bearer token (or a trusted proxy's user), not the inbox's session cookie",
            Some("send `Authorization: Bearer TOKEN`, or answer on the approval's page"),
        ));
    }
    let seen = match (body.plan_hash, body.policy_digest) {
        (Some(plan_hash), Some(policy_digest)) => Some(SeenApproval { plan_hash, policy_digest }),
        (None, None) => None,
        _ => {
            return Err(Problem::bad_request(
                "salvage::web::half_seen",
                "give both planHash and policyDigest (as the approval shows them), or neither",
            ));
        }
    };
    let outcome =
        record_answer(&state, &person, Origin::Api, &execution_id, &step_id, decision, body.reason, seen).await?;
    let execution = state.execution(&execution_id).await?;
    json_response(json!({"outcome": outcome, "execution": views::execution_summary(&execution)}))
}

/// The one way the API and the inbox answer: [`answer_approval`] as `person`, then (when no
/// daemon will) the execution goes on here. Returns the outcome as JSON.
#[allow(clippy::too_many_arguments)]
pub(super) async fn record_answer(
    state: &WebState,
    person: &Person,
    origin: Origin,
    execution_id: &str,
    step_id: &str,
    decision: Decision,
    reason: Option<String>,
    seen: Option<SeenApproval>,
) -> Result<Value, Problem> {
    let runner = state.runner(&person.name, origin).await?;
    let request = ApprovalAnswerRequest { execution_id, step_id, decision, reason, seen };
    let outcome = answer_approval(&runner, request).await?;
    let shown = match &outcome {
        AnswerOutcome::Recorded => json!({"result": "recorded", "decision": decision_text(decision)}),
        AnswerOutcome::AlreadyAnswered { by, at } => json!({"result": "already_answered", "by": by, "at": at}),
        AnswerOutcome::Expired { at } => json!({"result": "expired", "at": at}),
        AnswerOutcome::Counted { approvals, quorum } => {
            json!({"result": "counted", "decision": "approved", "approvals": approvals, "quorum": quorum})
        }
    };
    state.go_on(runner, execution_id);
    Ok(shown)
}

fn decision_text(decision: Decision) -> &'static str {
    match decision {
        Decision::Approve => "approved",
        Decision::Deny => "denied",
    }
}

async fn approvals(_: Authenticated, State(state): State<WebState>) -> ApiResult {
    let pending = views::pending_approvals(state.store().as_ref()).await?;
    json_response(
        pending.iter().map(|(execution, pending)| views::approval_row(execution, pending)).collect::<Vec<_>>(),
    )
}

#[derive(Deserialize)]
struct IncidentFilter {
    state: Option<String>,
    since: Option<String>,
}

fn since(text: Option<&str>) -> Result<Option<time::OffsetDateTime>, Problem> {
    text.map(|text| {
        crate::limits::parse_since(text).map_err(|error| Problem::bad_request("salvage::web::bad_since", error))
    })
    .transpose()
}

async fn incidents(_: Authenticated, State(state): State<WebState>, Query(filter): Query<IncidentFilter>) -> ApiResult {
    let since = since(filter.since.as_deref())?;
    json_response(views::incidents(state.store().as_ref(), filter.state.as_deref(), since).await?)
}

async fn incident(_: Authenticated, State(state): State<WebState>, Path(run_id): Path<String>) -> ApiResult {
    match views::incident(state.store().as_ref(), &run_id).await? {
        Some(incident) => json_response(incident),
        None => Err(Problem::not_found(
            "salvage::incident::none",
            format!("the daemon recorded no incident for run {run_id:?}"),
            Some("`GET /api/v1/incidents` lists the incidents"),
        )),
    }
}

async fn status(_: Authenticated, State(state): State<WebState>) -> ApiResult {
    let fallback = match &state.inner.sets {
        super::SetSource::Daemon(reloader) => reloader.dirs().clone(),
        super::SetSource::Disk(dirs) => dirs.clone(),
    };
    json_response(views::DaemonView::read(state.store().as_ref(), fallback).await?.to_json())
}

async fn reload(_: Authenticated, State(state): State<WebState>) -> ApiResult {
    let daemon = crate::serve::status::read(state.store().as_ref()).await?;
    let awaiting = crate::serve::reload::awaiting_acceptance(state.store().as_ref()).await?;
    json_response(json!({
        "lastReload": daemon.as_ref().and_then(|d| d.last_reload.clone()),
        "reloads": daemon.as_ref().map(|d| d.reloads),
        "awaitingAcceptance": awaiting,
    }))
}

#[derive(Deserialize)]
struct AuditFilter {
    since: Option<String>,
}

async fn audit(_: Authenticated, State(state): State<WebState>, Query(filter): Query<AuditFilter>) -> ApiResult {
    let since = since(filter.since.as_deref())?;
    json_response(views::audit(state.store().as_ref(), since).await?)
}
