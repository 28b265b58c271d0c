//! A test runtime server that behaves like agnostic-agents 1.3.3's HTTP runtime service
//! (`examples/referenceExpressRuntimeServer.js`, see `runtime-server-protocol.md`), written from
//! the spec and the recorded runs, independently of salvage's library: an axum server on
//! `127.0.0.1:0` hosting one scripted `Agent` over a reference `FileRunStore` directory, with an
//! `ApprovalInbox` and an external system whose every write is counted.
//!
//! # Routes (paths configurable in [`RoutePaths`]; `{runId}` is the run id, percent-decoded)
//!
//! | route | default | does | answer |
//! |---|---|---|---|
//! | [`Route::CreateRun`] | `POST /runs` `{input, config?}` | `agent.run(input, config)` | 201 + summary |
//! | [`Route::Resume`] | `POST /runs/{runId}/resume` | `agent.resumeRun(runId, body)` | 200 + summary |
//! | [`Route::GetRun`] | `GET /runs/{runId}` | `runStore.getRun` | 200 + summary, 404 `{error: "Run not found."}` |
//! | [`Route::Approvals`] | `GET /approvals` | `approvalInbox.list()` | 200 + the requests |
//! | [`Route::Branch`] | `POST /runs/{runId}/branch` `{checkpointId?, input?, metadata?}` | `agent.branchRun` | 200 + new run's summary |
//! | [`Route::Replay`] | `POST /runs/{runId}/replay` `{checkpointId?, metadata?}` | `agent.replayRun` | 200 + new run's summary |
//! | [`Route::Cancel`] | `POST /runs/{runId}/cancel` `{reason?, payload?}` | `agent.cancelRun` | 200 + summary |
//! | [`Route::Pause`] | `POST /runs/{runId}/pause` `{reason?, stage?, payload?}` | `agent.pauseRun` | 200 + summary |
//!
//! "summary" is `RunInspector.summarize(run)`. Every failure answers 500 `{error: message}` with
//! the reference's messages: `Run "<id>" not found.` (a `RunNotFoundError` has no special case in
//! the example), `Run "<id>" has been cancelled.`, `No approval handler configured.` (a resume of
//! a waiting run without `approved: true`: the run fails), `Tool "<t>" failed: <m>` (a run whose
//! tool failed: `agent.run`/`resumeRun` record the failure, then re-throw). Bodies are read like
//! `express.json()`: only with a JSON content type; none (or another type) is `{}`. Where the
//! options sit in a body is configurable ([`BodyPaths`], JSON pointers; default: the body).
//! There are no idempotency keys: a repeated request repeats the action.
//!
//! # The scripted agent (see `agent.rs`)
//!
//! Input `{"task": "send_invoice", "invoiceId": "INV-1", "amount": 120}` → the model asks the
//! task's tool with the other fields → the tool (an `external_write`, `verificationPolicy:
//! never`, retries per [`ServerOptions::tool_retries`], default 0) behaves per its
//! [`ToolPolicy`]; once its result is in the messages the model answers → `completed`. Any
//! other input is answered at once (`completed`, no tool). Incidents, as salvage classifies
//! them:
//!
//! | policy | run after `POST /runs` | salvage incident |
//! |---|---|---|
//! | `succeed()` | `completed`, 1 write | `no_incident` |
//! | `require_approval()` | `waiting_for_approval` + `pendingApproval` (like the recorded a1 runs) | `approval_blocked` |
//! | `fail_first(n)` | `failed`, `ToolExecutionError`, failed `tool` step, last pre-tool checkpoint `model_response` (like b1) | `tool_failure` |
//! | `pause_before_tool()` | `paused`, stage `before_tool` (`config.pauseOn` on the run only) | `paused_run` |
//! | a branch / a partial replay | `paused`, stage `branch` / `replay` | `paused_run` / `paused_replay` |
//! | `require_approval()`, resumed without `approved: true` | `failed`, `ToolPolicyError`, stale `pendingApproval` | `approval_denied` |
//! | `require_approval().and_fail_first(1)`, approved | `failed`, `ToolExecutionError`, stale `pendingApproval` | `tool_failure` |
//! | `cancelRun` | `cancelled` | `no_incident` |
//!
//! Resuming a paused run (any stage) clears the pause and continues the loop from the run's
//! messages: from a checkpoint before the tool's result the model asks for the tool again, and
//! the tool writes again. Every run change is saved as the reference does (each event and
//! checkpoint), atomically; a run's state transitions are decided under the store's lock (so a
//! second concurrent resume of a paused run sees `running` and returns it unchanged).
//!
//! # Observing and steering it
//!
//! [`RuntimeServer::external_writes`] / [`RuntimeServer::duplicate_writes`] (per business key),
//! [`RuntimeServer::tool_attempts`], [`RuntimeServer::requests`] (every request, recorded when it
//! arrives), [`RuntimeServer::applied`] (every action, recorded when its effect is done),
//! [`RuntimeServer::wait_for_request`] / [`RuntimeServer::wait_for_applied`], answer delays
//! ([`RuntimeServer::set_answer_delay`], [`RuntimeServer::set_delay`] with a [`DelayOrder`]) and
//! holds ([`RuntimeServer::hold`] / [`RuntimeServer::release`]). A request is carried out to the
//! end even when its client goes away (as Node would), so a client killed during a delay finds
//! the effect done ([`DelayOrder::EffectThenDelay`]) or still to come ([`DelayOrder::DelayThenEffect`]).
//!
//! The server runs on its own thread with its own tokio runtime: sync `#[test]`s and async tests
//! can both use it, and the blocking helpers (`create_run`, `post`, ...) work from either.
//! [`RuntimeServer::start_request`] sends a request without waiting (abort it to kill the
//! client); [`RuntimeServer::salvage_json`] runs salvage's binary on the server's store.
//!
//! ```ignore
//! mod runtime_server;
//! use runtime_server::{Route, RuntimeServer, ServerOptions, ToolPolicy};
//!
//! let server = RuntimeServer::start(ServerOptions::new().policy("send_invoice", ToolPolicy::fail_first(1)));
//! let failed = server.create_run(json!({"task": "send_invoice", "invoiceId": "INV-1", "amount": 120}));
//! // ... point salvage at server.store_spec() and server.url_template(Route::Branch) ...
//! assert!(server.duplicate_writes().is_empty());
//! ```
//!
//! # What it leaves out, and where it differs
//!
//! Verifiers, confidence policies, governance hooks, event sinks, retrieval, delegation,
//! workflows, envelopes, `persist: false`, `replayRunId`, live `EvidenceGraph` summaries
//! (summaries always have the `{nodes, edges}` shape of a run read back from a file store). The
//! assessment is the recorded runs' constants, not the reference's computation. A body that is
//! not JSON answers 400 `{error}` (Express answers an HTML page). Like the reference, two
//! replays of one run in the same millisecond get the same id (the second overwrites the first).
#![allow(dead_code)]

mod agent;
mod run;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::RawPathParams;
use axum::extract::rejection::RawPathParamsRejection;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::watch;

use agent::{Agent, Ledger};
pub use agent::{ExternalWrite, TaskSpec, ToolAttempt, ToolPolicy};
pub use store::SaveHook;
use store::{AgentError, FileStore};

/// The service's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    CreateRun,
    Resume,
    GetRun,
    Approvals,
    Branch,
    Replay,
    Cancel,
    Pause,
}

impl Route {
    pub const ALL: [Route; 8] = [
        Route::CreateRun,
        Route::Resume,
        Route::GetRun,
        Route::Approvals,
        Route::Branch,
        Route::Replay,
        Route::Cancel,
        Route::Pause,
    ];

    pub fn method(self) -> Method {
        match self {
            Route::GetRun | Route::Approvals => Method::GET,
            _ => Method::POST,
        }
    }
}

/// The path of each route: axum templates (`/runs/{runId}/resume`); Express's `:runId` is
/// accepted too.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePaths {
    pub create_run: String,
    pub resume: String,
    pub get_run: String,
    pub approvals: String,
    pub branch: String,
    pub replay: String,
    pub cancel: String,
    pub pause: String,
}

impl Default for RoutePaths {
    fn default() -> Self {
        RoutePaths {
            create_run: "/runs".into(),
            resume: "/runs/{runId}/resume".into(),
            get_run: "/runs/{runId}".into(),
            approvals: "/approvals".into(),
            branch: "/runs/{runId}/branch".into(),
            replay: "/runs/{runId}/replay".into(),
            cancel: "/runs/{runId}/cancel".into(),
            pause: "/runs/{runId}/pause".into(),
        }
    }
}

impl RoutePaths {
    pub fn get(&self, route: Route) -> &str {
        match route {
            Route::CreateRun => &self.create_run,
            Route::Resume => &self.resume,
            Route::GetRun => &self.get_run,
            Route::Approvals => &self.approvals,
            Route::Branch => &self.branch,
            Route::Replay => &self.replay,
            Route::Cancel => &self.cancel,
            Route::Pause => &self.pause,
        }
    }

    fn set(&mut self, route: Route, path: String) {
        let slot = match route {
            Route::CreateRun => &mut self.create_run,
            Route::Resume => &mut self.resume,
            Route::GetRun => &mut self.get_run,
            Route::Approvals => &mut self.approvals,
            Route::Branch => &mut self.branch,
            Route::Replay => &mut self.replay,
            Route::Cancel => &mut self.cancel,
            Route::Pause => &mut self.pause,
        };
        *slot = path;
    }

    /// The route's template in axum's syntax (`:name` segments become `{name}`).
    pub fn template(&self, route: Route) -> String {
        self.get(route)
            .split('/')
            .map(|segment| match segment.strip_prefix(':') {
                Some(name) => format!("{{{name}}}"),
                None => segment.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The route's path for a run (its placeholder replaced, percent-encoded).
    pub fn path_for(&self, route: Route, run_id: &str) -> String {
        self.template(route)
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') && segment.ends_with('}') {
                    percent_encode(run_id)
                } else {
                    segment.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Where the reference's options sit in each route's JSON body (JSON pointers; `""` = the whole
/// body). A pointer that finds nothing gives `{}` (every option `undefined`).
#[derive(Debug, Clone, PartialEq)]
pub struct BodyPaths {
    /// `agent.run(input, config)`.
    pub create_input: String,
    pub create_config: String,
    /// `resumeRun(runId, config)`: the reference passes the whole body.
    pub resume_config: String,
    pub branch_options: String,
    pub replay_options: String,
    pub cancel_options: String,
    pub pause_options: String,
}

impl Default for BodyPaths {
    fn default() -> Self {
        BodyPaths {
            create_input: "/input".into(),
            create_config: "/config".into(),
            resume_config: String::new(),
            branch_options: String::new(),
            replay_options: String::new(),
            cancel_options: String::new(),
            pause_options: String::new(),
        }
    }
}

/// Whether a route's effect happens before or after its delay (or hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayOrder {
    /// The action is applied, then the answer waits: a client killed meanwhile finds the effect
    /// done.
    EffectThenDelay,
    /// The request waits, then the action is applied (even if the client has gone), then the
    /// answer is sent.
    DelayThenEffect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerDelay {
    pub delay: Duration,
    pub order: DelayOrder,
}

/// How to start a [`RuntimeServer`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The `FileRunStore` directory; `None` = a temporary directory owned by the server (removed
    /// when it stops).
    pub store_dir: Option<PathBuf>,
    /// The agent's description (`metadata.description`, the system prompt).
    pub description: String,
    /// The model's name (tool-call ids `call_<model>_<n>`, answers `<model>: ...`).
    pub model_name: String,
    /// Task name (the input's `task`) → its tool. Default: `send_invoice` (succeeds).
    pub tasks: BTreeMap<String, TaskSpec>,
    /// The retry manager's retries per tool call (the recorded runs used 0).
    pub tool_retries: u32,
    /// How long each tool execution takes before its effect happens.
    pub tool_delay: Duration,
    /// Whether branch and replay honour the caller's `metadata` (the reference does).
    pub keep_metadata: bool,
    pub routes: RoutePaths,
    pub bodies: BodyPaths,
    /// Initial answer delays per route (see [`RuntimeServer::set_delay`]).
    pub answer_delays: BTreeMap<Route, AnswerDelay>,
    /// Told every run save (see [`SaveHook`]).
    pub on_save: Option<SaveHook>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        let mut tasks = BTreeMap::new();
        tasks.insert("send_invoice".to_owned(), TaskSpec::new("send_invoice", ToolPolicy::succeed()));
        ServerOptions {
            store_dir: None,
            description: "Invoice operations agent".into(),
            model_name: "invoice-agent".into(),
            tasks,
            tool_retries: 0,
            tool_delay: Duration::ZERO,
            keep_metadata: true,
            routes: RoutePaths::default(),
            bodies: BodyPaths::default(),
            answer_delays: BTreeMap::new(),
            on_save: None,
        }
    }
}

impl ServerOptions {
    pub fn new() -> ServerOptions {
        ServerOptions::default()
    }

    pub fn store_dir(mut self, dir: impl Into<PathBuf>) -> ServerOptions {
        self.store_dir = Some(dir.into());
        self
    }

    /// Adds (or replaces) a task.
    pub fn task(mut self, name: &str, spec: TaskSpec) -> ServerOptions {
        self.tasks.insert(name.to_owned(), spec);
        self
    }

    /// A task whose tool has the task's name, with this policy.
    pub fn policy(self, task: &str, policy: ToolPolicy) -> ServerOptions {
        self.task(task, TaskSpec::new(task, policy))
    }

    pub fn keep_metadata(mut self, keep: bool) -> ServerOptions {
        self.keep_metadata = keep;
        self
    }

    pub fn tool_delay(mut self, delay: Duration) -> ServerOptions {
        self.tool_delay = delay;
        self
    }

    pub fn tool_retries(mut self, retries: u32) -> ServerOptions {
        self.tool_retries = retries;
        self
    }

    pub fn route(mut self, route: Route, path: &str) -> ServerOptions {
        self.routes.set(route, path.to_owned());
        self
    }

    pub fn answer_delay(mut self, route: Route, delay: Duration, order: DelayOrder) -> ServerOptions {
        self.answer_delays.insert(route, AnswerDelay { delay, order });
        self
    }
}

/// A request as it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// 1, 2, ... in arrival order.
    pub seq: usize,
    /// `None` for a path no route matched.
    pub route: Option<Route>,
    pub method: String,
    /// The path and query as sent.
    pub path: String,
    /// The decoded `{runId}` of the path.
    pub run_id: Option<String>,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    /// The JSON body; a body that is not JSON as a string; `Null` when empty.
    pub body: Value,
    pub received_at: SystemTime,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(key, _)| *key == name).map(|(_, value)| value.as_str())
    }
}

/// An action the server carried out (recorded when its effect is done, before any delay that
/// follows it).
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedAction {
    /// The request's [`RecordedRequest::seq`].
    pub seq: usize,
    pub route: Route,
    /// The run acted on (the path's run id, or the run `POST /runs` created).
    pub run_id: Option<String>,
    /// The run a branch or replay created.
    pub created_run_id: Option<String>,
    /// The answer the client gets (or would have got).
    pub status: u16,
    pub body: Value,
    pub applied_at: SystemTime,
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpAnswer {
    pub status: u16,
    /// The JSON body; a body that is not JSON as a string.
    pub body: Value,
}

/// What the HTTP layer and the test's handle share.
struct Shared {
    agent: Agent,
    routes: RoutePaths,
    bodies: BodyPaths,
    requests: Mutex<Vec<RecordedRequest>>,
    applied: Mutex<Vec<AppliedAction>>,
    /// Bumped (and notified) whenever a request or an action is recorded.
    changes: (Mutex<u64>, Condvar),
    delays: Mutex<BTreeMap<Route, AnswerDelay>>,
    /// Routes whose requests wait at a point until released.
    holds: watch::Sender<BTreeMap<Route, DelayOrder>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn changed(&self) {
        let mut generation = lock(&self.changes.0);
        *generation += 1;
        self.changes.1.notify_all();
    }

    /// Waits until `find` finds something or the timeout passes.
    fn wait_until<T>(&self, timeout: Duration, find: impl Fn(&Shared) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut seen = *lock(&self.changes.0);
        loop {
            if let Some(found) = find(self) {
                return Some(found);
            }
            let mut generation = lock(&self.changes.0);
            while *generation == seen {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                generation = self.changes.1.wait_timeout(generation, left).unwrap_or_else(|p| p.into_inner()).0;
            }
            seen = *generation;
        }
    }

    fn record_request(&self, request: RecordedRequest) -> usize {
        let seq = {
            let mut requests = lock(&self.requests);
            let seq = requests.len() + 1;
            requests.push(RecordedRequest { seq, ..request });
            seq
        };
        self.changed();
        seq
    }

    async fn wait_hold(&self, route: Route, point: DelayOrder) {
        let mut holds = self.holds.subscribe();
        // An error means the server is stopping: do not wait.
        let _ = holds.wait_for(|holds| holds.get(&route) != Some(&point)).await;
    }
}

/// Reads a body like `express.json()` (strict: an object or an array).
fn parse_body(headers: &HeaderMap, bytes: &Bytes) -> Result<Value, String> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    if !json_type || bytes.is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value @ (Value::Object(_) | Value::Array(_))) => Ok(value),
        Ok(_) => Err("Unexpected token: only objects and arrays are accepted (strict mode)".into()),
        Err(error) => Err(format!("Unexpected token in JSON: {error}")),
    }
}

fn recorded_body(bytes: &Bytes) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// The options at a JSON pointer of the body (`{}` when absent).
fn at_pointer(body: &Value, pointer: &str) -> Value {
    body.pointer(pointer).cloned().unwrap_or_else(|| json!({}))
}

fn error_body(error: &AgentError) -> Value {
    json!({"error": error.message})
}

/// Carries out one route's action (on a blocking thread: the agent is synchronous, like the
/// reference's one-thread loop, and its tool may sleep).
fn apply(shared: &Shared, route: Route, run_id: Option<String>, body: &Value) -> AppliedAction {
    let agent = &shared.agent;
    let bodies = &shared.bodies;
    let id = run_id.clone().unwrap_or_default();
    let answer = |result: Result<run::Run, AgentError>, ok: u16| match result {
        Ok(run) => (ok, run::summarize(&run), Some(run.id)),
        Err(error) => (500, error_body(&error), None),
    };
    let (status, answer_body, acted_on, created) = match route {
        Route::CreateRun => {
            let input = body.pointer(&bodies.create_input).cloned().unwrap_or_else(|| json!(""));
            let config = at_pointer(body, &bodies.create_config);
            let new_id = config
                .get("runId")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
                .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
            let (status, body, _) = answer(agent.run(&new_id, input, &config), 201);
            (status, body, Some(new_id), None)
        }
        Route::Resume => {
            let (status, body, _) = answer(agent.resume(&id, &at_pointer(body, &bodies.resume_config)), 200);
            (status, body, run_id, None)
        }
        Route::Cancel => {
            let (status, body, _) = answer(agent.cancel(&id, &at_pointer(body, &bodies.cancel_options)), 200);
            (status, body, run_id, None)
        }
        Route::Pause => {
            let (status, body, _) = answer(agent.pause(&id, &at_pointer(body, &bodies.pause_options)), 200);
            (status, body, run_id, None)
        }
        Route::Branch => {
            let (status, body, created) = answer(agent.branch(&id, &at_pointer(body, &bodies.branch_options)), 200);
            (status, body, run_id, created)
        }
        Route::Replay => {
            let (status, body, created) = answer(agent.replay(&id, &at_pointer(body, &bodies.replay_options)), 200);
            (status, body, run_id, created)
        }
        Route::GetRun => match agent.summary(&id) {
            Ok(Some(summary)) => (200, summary, run_id, None),
            Ok(None) => (404, json!({"error": "Run not found."}), run_id, None),
            Err(error) => (500, error_body(&error), run_id, None),
        },
        Route::Approvals => (200, Value::Array(agent.approvals()), None, None),
    };
    AppliedAction {
        seq: 0,
        route,
        run_id: acted_on,
        created_run_id: created,
        status,
        body: answer_body,
        applied_at: SystemTime::now(),
    }
}

/// One request: recorded, then carried out in a task of its own so that a client that goes
/// away does not cancel it (Express handlers run to the end).
async fn handle(
    shared: Arc<Shared>,
    route: Option<Route>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let run_id = params.ok().and_then(|params| {
        let all: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        all.iter().find(|(k, _)| k == "runId").or(all.first()).map(|(_, v)| v.clone())
    });
    let seq = shared.record_request(RecordedRequest {
        seq: 0,
        route,
        method: method.to_string(),
        path: uri.path_and_query().map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        run_id: run_id.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: recorded_body(&bytes),
        received_at: SystemTime::now(),
    });
    let Some(route) = route else {
        // Express's default 404 for a path (or method) no route handles.
        let text = format!("Cannot {method} {}", uri.path());
        return (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], text).into_response();
    };
    let body = match parse_body(&headers, &bytes) {
        Ok(body) => body,
        Err(message) => return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": message}))).into_response(),
    };
    let task = tokio::spawn(async move {
        let delay = lock(&shared.delays).get(&route).copied();
        if let Some(AnswerDelay { delay, order: DelayOrder::DelayThenEffect }) = delay {
            tokio::time::sleep(delay).await;
        }
        shared.wait_hold(route, DelayOrder::DelayThenEffect).await;
        let worker = shared.clone();
        let applied = tokio::task::spawn_blocking(move || apply(&worker, route, run_id, &body)).await;
        let applied = match applied {
            Ok(applied) => AppliedAction { seq, ..applied },
            Err(error) => {
                let body = json!({"error": format!("the runtime panicked: {error}")});
                AppliedAction {
                    seq,
                    route,
                    run_id: None,
                    created_run_id: None,
                    status: 500,
                    body,
                    applied_at: SystemTime::now(),
                }
            }
        };
        lock(&shared.applied).push(applied.clone());
        shared.changed();
        if let Some(AnswerDelay { delay, order: DelayOrder::EffectThenDelay }) = delay {
            tokio::time::sleep(delay).await;
        }
        shared.wait_hold(route, DelayOrder::EffectThenDelay).await;
        (applied.status, applied.body)
    });
    match task.await {
        Ok((status, body)) => {
            (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body))
                .into_response()
        }
        Err(error) => {
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"error": error.to_string()}))).into_response()
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new();
    for route in Route::ALL {
        let state = shared.clone();
        let handler =
            move |params, method, uri, headers, bytes| handle(state, Some(route), params, method, uri, headers, bytes);
        let method_router = if route.method() == Method::GET { get(handler) } else { post(handler) };
        router = router.route(&shared.routes.template(route), method_router);
    }
    let state = shared.clone();
    let unmatched = move |params, method, uri, headers, bytes| handle(state, None, params, method, uri, headers, bytes);
    let state = shared;
    let wrong_method =
        move |params, method, uri, headers, bytes| handle(state, None, params, method, uri, headers, bytes);
    router.fallback(unmatched).method_not_allowed_fallback(wrong_method)
}

/// A running server. Stops on [`RuntimeServer::stop`] or when dropped.
pub struct RuntimeServer {
    base_url: String,
    store_dir: PathBuf,
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    client: reqwest::Client,
    stop: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The store directory when the server made it.
    _temp: Option<tempfile::TempDir>,
}

/// An HTTP client for plain-http test servers (reqwest is built without a default TLS provider
/// here, so it is given rustls on ring).
pub fn http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("rustls protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder().tls_backend_preconfigured(tls).build().expect("reqwest client")
}

/// Sends one request and reads the whole answer.
pub async fn send(client: &reqwest::Client, method: Method, url: &str, body: Option<&Value>) -> HttpAnswer {
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request.header(header::CONTENT_TYPE, "application/json").body(body.to_string());
    }
    let response = request.send().await.unwrap_or_else(|error| panic!("{url}: {error}"));
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_else(|error| panic!("{url}: {error}"));
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    HttpAnswer { status, body }
}

impl RuntimeServer {
    /// Binds `127.0.0.1:0` and serves on a thread of its own.
    pub fn start(options: ServerOptions) -> RuntimeServer {
        let (temp, store_dir) = match &options.store_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let temp = tempfile::tempdir().expect("a temporary store directory");
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        std::fs::create_dir_all(&store_dir).expect("the store directory");
        let agent = Agent {
            description: options.description.clone(),
            model_name: options.model_name.clone(),
            tasks: options.tasks.clone(),
            tool_retries: options.tool_retries,
            tool_delay: options.tool_delay,
            keep_metadata: options.keep_metadata,
            store: FileStore::mirrored(store_dir.clone(), options.on_save.clone()),
            ledger: Mutex::new(Ledger::default()),
            inbox: Mutex::new(Vec::new()),
        };
        let shared = Arc::new(Shared {
            agent,
            routes: options.routes.clone(),
            bodies: options.bodies.clone(),
            requests: Mutex::new(Vec::new()),
            applied: Mutex::new(Vec::new()),
            changes: (Mutex::new(0), Condvar::new()),
            delays: Mutex::new(options.answer_delays.clone()),
            holds: watch::Sender::new(BTreeMap::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let address: SocketAddr = listener.local_addr().expect("local address");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("runtime-server")
            .enable_all()
            .build()
            .expect("the server's tokio runtime");
        let handle = runtime.handle().clone();
        let (stop, stopped) = watch::channel(false);
        let app = router(shared.clone());
        let thread = std::thread::Builder::new()
            .name("runtime-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let mut graceful = stopped.clone();
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = graceful.wait_for(|stop| *stop).await;
                    });
                    let mut deadline = stopped;
                    // Graceful shutdown waits for requests in flight; a client that never reads
                    // its answer must not hang the test.
                    tokio::select! {
                        _ = serve => {}
                        _ = async move {
                            let _ = deadline.wait_for(|stop| *stop).await;
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        } => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(5));
            })
            .expect("the server thread");
        RuntimeServer {
            base_url: format!("http://{address}"),
            store_dir,
            shared,
            handle,
            client: http_client(),
            stop: Some(stop),
            thread: Some(thread),
            _temp: temp,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// `file:<store dir>`, for `SALVAGE_STORE` / `--store`.
    pub fn store_spec(&self) -> String {
        format!("file:{}", self.store_dir.display())
    }

    pub fn routes(&self) -> &RoutePaths {
        &self.shared.routes
    }

    /// The absolute URL template of a route (`http://127.0.0.1:PORT/runs/{runId}/resume`).
    pub fn url_template(&self, route: Route) -> String {
        format!("{}{}", self.base_url, self.shared.routes.template(route))
    }

    /// The absolute URL of a route for a run.
    pub fn url(&self, route: Route, run_id: &str) -> String {
        format!("{}{}", self.base_url, self.shared.routes.path_for(route, run_id))
    }

    /// Runs a future on the server's runtime and waits for it: usable from sync tests and from
    /// inside another runtime alike.
    pub fn block_on<F>(&self, future: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (sender, receiver) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = sender.send(future.await);
        });
        receiver.recv().expect("the server's runtime stopped")
    }

    /// One request through HTTP (blocking). `path` is joined to the base URL.
    pub fn request(&self, method: Method, path: &str, body: Option<Value>) -> HttpAnswer {
        let client = self.client.clone();
        let url = format!("{}{path}", self.base_url);
        self.block_on(async move { send(&client, method, &url, body.as_ref()).await })
    }

    pub fn post(&self, path: &str, body: Value) -> HttpAnswer {
        self.request(Method::POST, path, Some(body))
    }

    pub fn get(&self, path: &str) -> HttpAnswer {
        self.request(Method::GET, path, None)
    }

    /// A route for a run, with a JSON body for POST routes.
    pub fn call(&self, route: Route, run_id: &str, body: Value) -> HttpAnswer {
        let path = self.shared.routes.path_for(route, run_id);
        let body = (route.method() == Method::POST).then_some(body);
        self.request(route.method(), &path, body)
    }

    /// Starts a request on the server's runtime without waiting for it: `abort()` the handle to
    /// kill the client (its connection is dropped; the server carries on).
    pub fn start_request(&self, route: Route, run_id: &str, body: Value) -> tokio::task::JoinHandle<HttpAnswer> {
        let client = self.client.clone();
        let url = self.url(route, run_id);
        let body = (route.method() == Method::POST).then_some(body);
        self.handle.spawn(async move { send(&client, route.method(), &url, body.as_ref()).await })
    }

    pub fn resume(&self, run_id: &str, body: Value) -> HttpAnswer {
        self.call(Route::Resume, run_id, body)
    }

    pub fn branch(&self, run_id: &str, body: Value) -> HttpAnswer {
        self.call(Route::Branch, run_id, body)
    }

    pub fn replay(&self, run_id: &str, body: Value) -> HttpAnswer {
        self.call(Route::Replay, run_id, body)
    }

    pub fn cancel(&self, run_id: &str, body: Value) -> HttpAnswer {
        self.call(Route::Cancel, run_id, body)
    }

    pub fn pause(&self, run_id: &str, body: Value) -> HttpAnswer {
        self.call(Route::Pause, run_id, body)
    }

    pub fn get_run(&self, run_id: &str) -> HttpAnswer {
        self.call(Route::GetRun, run_id, Value::Null)
    }

    /// `POST /runs {input, config}` as sent.
    pub fn create_run_with(&self, input: Value, config: Value) -> HttpAnswer {
        self.post(self.shared.routes.get(Route::CreateRun), json!({"input": input, "config": config}))
    }

    /// `POST /runs` through HTTP; returns the run's summary. A run that failed is answered 500
    /// by the reference (`agent.run` re-throws): its summary is then read with `GET /runs/:id`
    /// (the run id is chosen here and passed as `config.runId`, which the reference honours).
    pub fn create_run(&self, input: Value) -> Value {
        let run_id = uuid::Uuid::new_v4().to_string();
        let answer = self.create_run_with(input, json!({"runId": run_id}));
        match answer.status {
            201 => answer.body,
            500 => {
                let summary = self.get_run(&run_id);
                assert_eq!(summary.status, 200, "POST /runs answered {:?}; the run is not readable", answer.body);
                summary.body
            }
            other => panic!("POST /runs answered {other}: {}", answer.body),
        }
    }

    /// A run's stored record (`<store>/<runId>.json`).
    pub fn run(&self, run_id: &str) -> Option<Value> {
        let path = self.store_dir.join(format!("{run_id}.json"));
        let text = std::fs::read_to_string(&path).ok()?;
        Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }

    /// The ids of the stored runs, sorted.
    pub fn run_ids(&self) -> Vec<String> {
        self.shared.agent.store.run_ids()
    }

    /// The approval inbox (what `GET /approvals` answers).
    pub fn approvals(&self) -> Vec<Value> {
        self.shared.agent.approvals()
    }

    /// Every external write, in order.
    pub fn external_writes(&self) -> Vec<ExternalWrite> {
        lock(&self.shared.agent.ledger).writes.clone()
    }

    /// The writes of one business key.
    pub fn writes_for(&self, key: &str) -> Vec<ExternalWrite> {
        self.external_writes().into_iter().filter(|w| w.key == key).collect()
    }

    /// Business keys written more than once, with their counts (sorted by key).
    pub fn duplicate_writes(&self) -> Vec<(String, usize)> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for write in self.external_writes() {
            *counts.entry(write.key).or_default() += 1;
        }
        counts.into_iter().filter(|(_, count)| *count > 1).collect()
    }

    /// Every tool execution, failed or not.
    pub fn tool_attempts(&self) -> Vec<ToolAttempt> {
        lock(&self.shared.agent.ledger).attempts.clone()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    pub fn requests_to(&self, route: Route) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.route == Some(route)).collect()
    }

    pub fn applied(&self) -> Vec<AppliedAction> {
        lock(&self.shared.applied).clone()
    }

    /// The first request to `route` (already arrived or arriving within `timeout`).
    pub fn wait_for_request(&self, route: Route, timeout: Duration) -> Option<RecordedRequest> {
        self.wait_for_nth_request(route, 1, timeout)
    }

    /// The `n`-th (1-based) request to `route`.
    pub fn wait_for_nth_request(&self, route: Route, n: usize, timeout: Duration) -> Option<RecordedRequest> {
        self.shared.wait_until(timeout, |shared| {
            lock(&shared.requests).iter().filter(|r| r.route == Some(route)).nth(n.saturating_sub(1)).cloned()
        })
    }

    /// The first action of `route` whose effect is done (already or within `timeout`).
    pub fn wait_for_applied(&self, route: Route, timeout: Duration) -> Option<AppliedAction> {
        self.wait_for_nth_applied(route, 1, timeout)
    }

    /// The `n`-th (1-based, in completion order) action of `route` whose effect is done.
    pub fn wait_for_nth_applied(&self, route: Route, n: usize, timeout: Duration) -> Option<AppliedAction> {
        self.shared.wait_until(timeout, |shared| {
            lock(&shared.applied).iter().filter(|a| a.route == route).nth(n.saturating_sub(1)).cloned()
        })
    }

    /// Holds the answers of `route` for `delay` after the action is applied.
    pub fn set_answer_delay(&self, route: Route, delay: Duration) {
        self.set_delay(route, AnswerDelay { delay, order: DelayOrder::EffectThenDelay });
    }

    /// A delay for the next requests of `route`, before or after their effect.
    pub fn set_delay(&self, route: Route, delay: AnswerDelay) {
        lock(&self.shared.delays).insert(route, delay);
    }

    pub fn clear_delay(&self, route: Route) {
        lock(&self.shared.delays).remove(&route);
    }

    /// Requests of `route` wait at `point` (before their effect, or after it before the answer)
    /// until [`RuntimeServer::release`]; the deterministic twin of a delay.
    pub fn hold(&self, route: Route, point: DelayOrder) {
        self.shared.holds.send_modify(|holds| {
            holds.insert(route, point);
        });
    }

    pub fn release(&self, route: Route) {
        self.shared.holds.send_modify(|holds| {
            holds.remove(&route);
        });
    }

    /// Runs salvage's binary on this server's store (`SALVAGE_STORE=file:<dir>`, from the
    /// crate's root so that its `policies/` and `playbooks/` are used).
    pub fn salvage(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_salvage"))
            .args(args)
            .env("SALVAGE_STORE", self.store_spec())
            .env_remove("SALVAGE_CONFIG")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run salvage")
    }

    /// [`RuntimeServer::salvage`] that must succeed and print JSON.
    pub fn salvage_json(&self, args: &[&str]) -> Value {
        let output = self.salvage(args);
        assert!(
            output.status.success(),
            "salvage {args:?} failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!("salvage {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&output.stdout))
        })
    }

    /// The incident type salvage's planner gives a run (`salvage plan RUN --json`).
    pub fn salvage_incident_type(&self, run_id: &str) -> String {
        let plan = self.salvage_json(&["plan", run_id, "--json"]);
        plan["incidentType"].as_str().unwrap_or_else(|| panic!("no incidentType in {plan}")).to_owned()
    }

    /// Stops the server (answers held are released first) and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.holds.send_modify(BTreeMap::clear);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RuntimeServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
