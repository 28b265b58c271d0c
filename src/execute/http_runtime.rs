//! The `http` runtime: drives a runtime service over HTTP, in one of two protocols.
//!
//! **`protocol: salvage`** (the default; `docs/runtime-protocol/`): POSTs the [`ActionRequest`]
//! as JSON to a configured URL per action and reads an [`ActionResult`]-shaped answer
//! `{outcome, createdRunId?, runStatus?, detail?}`. A `2xx` without a body means the runtime
//! accepted the action and said nothing of the run (the execution then verifies the run
//! itself); any other status is outcome `failed` with the status and the body (bounded) in
//! `detail`. Optional `observe` (GET a run's state) and `find_created` (GET the run an
//! idempotency key created) routes let the runner check runs through the service.
//!
//! **`protocol: agnostic-agents`**: speaks the reference runtime's own HTTP service
//! (agnostic-agents 1.3.3, `runtime-server-protocol.md`) exactly: resumes and approval decisions
//! are `POST /runs/:runId/resume` with a top-level `{approved, reason}`; branches and replays,
//! which the reference example does not expose, default to `POST /runs/:runId/branch
//! {checkpointId, metadata}` and `POST /runs/:runId/replay {checkpointId?, metadata}` (the body
//! passed as the options of `branchRun` / `replayRun`), cancellation to
//! `POST /runs/:runId/cancel {reason}`; every route is configurable. The service answers
//! `RunInspector.summarize(run)`; the **run's status in the answer decides the outcome**, never
//! the HTTP status alone: a resume answered with the run still paused where it was, or still
//! waiting for the very approval it resolved, did nothing (`failed`); a branch answered with
//! the source run created nothing. A failure answer (`500 {error}`) is followed by `GET
//! /runs/:runId`: a denial is *answered* 500 by the reference (its approval handler throws) and
//! has worked when the run is now failed.
//!
//! Both protocols:
//! - every request carries an `Idempotency-Key` header (the same for every retry and for a
//!   retry after a crash) — the reference ignores it, which is why the runner itself makes
//!   sure a step never acts twice;
//! - retries, with exponential backoff, only for actions whose effect class is `read_only` or
//!   `idempotent`: on connection failures, timeouts and `408`/`429`/`5xx` answers;
//! - a connection that could not be made (refused, DNS, TLS handshake) means the request never
//!   reached the server: outcome `failed`. A failure after the request may have reached the
//!   server (a timeout waiting for the answer, a connection cut mid-answer) cannot tell whether
//!   the effect happened: that is an `Err` ([`RuntimeError::Failed`]); the runner then looks
//!   for the effect (the created run, the run's new state) before asking an operator.
//!
//! TLS is rustls (ring) with the platform's trust store, plus the CA certificates of
//! `ca_file` when one is configured (private CAs). Connections are not pooled: recovery
//! actions are rare, and a fresh connection per request keeps "refused" unambiguous.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::command_runtime::parse_answer;
use super::runtime::{ActionRequest, ActionResult, RunObservation, Runtime, RuntimeError};
use crate::model::RunStatus;
use crate::playbook::{Action, EffectClass};
use crate::store::RunStore;

/// How much of an error response body is kept in the journal.
pub const KEPT_BODY_BYTES: usize = 8 * 1024;
/// Largest answer body read.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The placeholders a URL template may use, and the request field each stands for.
pub const URL_PLACEHOLDERS: &[&str] =
    &["runId", "executionId", "planId", "stepId", "attempt", "action", "planAction", "newRunId", "idempotencyKey"];

/// The language a runtime service speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeProtocol {
    /// salvage's own: the action request as JSON, an `{outcome, …}` answer.
    #[default]
    Salvage,
    /// The reference runtime service of agnostic-agents 1.3.3.
    AgnosticAgents,
}

impl RuntimeProtocol {
    pub const ALL: [RuntimeProtocol; 2] = [RuntimeProtocol::Salvage, RuntimeProtocol::AgnosticAgents];

    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeProtocol::Salvage => "salvage",
            RuntimeProtocol::AgnosticAgents => "agnostic-agents",
        }
    }

    pub fn parse(text: &str) -> Option<RuntimeProtocol> {
        RuntimeProtocol::ALL.into_iter().find(|protocol| protocol.as_str() == text)
    }

    /// The route of an action when the configuration gives none (`agnostic-agents` only).
    pub fn default_route(self, action: Action) -> Option<&'static str> {
        match (self, action) {
            (RuntimeProtocol::Salvage, _) => None,
            (
                RuntimeProtocol::AgnosticAgents,
                Action::ResumeRun | Action::ResumeReplay | Action::ResolveApproval | Action::DenyApproval,
            ) => Some("/runs/{runId}/resume"),
            (RuntimeProtocol::AgnosticAgents, Action::BranchFromCheckpoint) => Some("/runs/{runId}/branch"),
            (RuntimeProtocol::AgnosticAgents, Action::PartialReplay | Action::FrozenReplay) => {
                Some("/runs/{runId}/replay")
            }
            (RuntimeProtocol::AgnosticAgents, Action::CancelRun) => Some("/runs/{runId}/cancel"),
            (RuntimeProtocol::AgnosticAgents, _) => None,
        }
    }

    /// `GET` of a run's state when the configuration gives none.
    pub fn default_observe_route(self) -> Option<&'static str> {
        match self {
            RuntimeProtocol::Salvage => None,
            RuntimeProtocol::AgnosticAgents => Some("/runs/{runId}"),
        }
    }
}

impl std::fmt::Display for RuntimeProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configured endpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HttpAction {
    /// An absolute URL, or a path joined to the runtime's `base_url`; `{runId}` and the other
    /// [`URL_PLACEHOLDERS`] are replaced (percent-encoded).
    pub url: String,
    /// Overrides the runtime's timeout for this action.
    #[serde(default, with = "super::config::optional_millis")]
    pub timeout: Option<Duration>,
}

/// Retries of idempotent and read-only actions.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HttpRetry {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    #[serde(with = "super::config::millis")]
    pub initial_backoff: Duration,
    #[serde(with = "super::config::millis")]
    pub max_backoff: Duration,
}

impl Default for HttpRetry {
    fn default() -> Self {
        HttpRetry { max_attempts: 3, initial_backoff: Duration::from_millis(200), max_backoff: Duration::from_secs(5) }
    }
}

/// The `http` runtime's configuration (`kind: http` in `salvage.yaml`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HttpRuntimeConfig {
    #[serde(default)]
    pub protocol: RuntimeProtocol,
    pub base_url: Option<String>,
    /// Time for a whole request (connect, send, answer).
    #[serde(with = "super::config::millis")]
    pub timeout: Duration,
    #[serde(with = "super::config::millis")]
    pub connect_timeout: Duration,
    /// Sent with every request. Values may name environment variables as `${NAME}` (for
    /// tokens), read when the runtime is built.
    pub headers: BTreeMap<String, String>,
    /// PEM file of extra CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    pub retry: HttpRetry,
    /// Routes by action; the protocol's defaults fill the others.
    pub actions: BTreeMap<Action, HttpAction>,
    /// `GET` route of a run's state (`{runId}`); the protocol's default when not set.
    #[serde(default)]
    pub observe: Option<String>,
    /// `GET` route answering `{createdRunId}` for an idempotency key (`{idempotencyKey}`), or
    /// 404 when it created nothing (salvage protocol only).
    #[serde(default)]
    pub find_created: Option<String>,
}

impl Default for HttpRuntimeConfig {
    fn default() -> Self {
        HttpRuntimeConfig {
            protocol: RuntimeProtocol::default(),
            base_url: None,
            timeout: DEFAULT_HTTP_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            headers: BTreeMap::new(),
            ca_file: None,
            retry: HttpRetry::default(),
            actions: BTreeMap::new(),
            observe: None,
            find_created: None,
        }
    }
}

impl HttpRuntimeConfig {
    /// The route of an action: configured, else the protocol's default.
    pub fn route(&self, action: Action) -> Option<HttpAction> {
        self.actions.get(&action).cloned().or_else(|| {
            self.protocol.default_route(action).map(|url| HttpAction { url: url.to_owned(), timeout: None })
        })
    }

    /// The route that reads a run's state, if any.
    pub fn observe_route(&self) -> Option<String> {
        self.observe.clone().or_else(|| self.protocol.default_observe_route().map(str::to_owned))
    }
}

/// POSTs actions to an HTTP endpoint.
#[derive(Debug, Clone)]
pub struct HttpRuntime {
    name: String,
    config: HttpRuntimeConfig,
    headers: reqwest::header::HeaderMap,
    client: reqwest::Client,
}

/// What one attempt gave.
enum Attempt {
    /// An answer: final, or retryable for idempotent actions.
    Answer { status: u16, body: String },
    /// The request never reached the server.
    NotSent(String),
    /// The request may have reached the server.
    Ambiguous(String),
}

impl HttpRuntime {
    /// Builds the runtime: checks the URL templates, reads `${NAME}` header values from the
    /// environment and sets up TLS.
    pub fn new(name: impl Into<String>, config: HttpRuntimeConfig) -> Result<HttpRuntime, RuntimeError> {
        let name = name.into();
        let fail = |message: String| RuntimeError::Failed { runtime: format!("http runtime `{name}`"), message };
        let mut routes: Vec<(String, String)> = Action::all()
            .filter_map(|action| config.route(action).map(|route| (format!("`{action}`"), route.url)))
            .collect();
        routes.extend(config.observe_route().map(|url| ("`observe`".to_owned(), url)));
        routes.extend(config.find_created.clone().map(|url| ("`find_created`".to_owned(), url)));
        for (what, url) in &routes {
            check_template(url).map_err(|problem| fail(format!("the URL of {what}: {problem}")))?;
            let sample = join_url(config.base_url.as_deref(), url);
            if !(sample.starts_with("http://") || sample.starts_with("https://")) {
                return Err(fail(format!(
                    "the URL of {what} ({sample}) is not an http:// or https:// URL; give an absolute URL or a \
                     `base_url`"
                )));
            }
        }
        let mut headers = reqwest::header::HeaderMap::new();
        for (key, value) in &config.headers {
            let value = expand_env(value).map_err(|problem| fail(format!("header `{key}`: {problem}")))?;
            let key = reqwest::header::HeaderName::from_bytes(key.as_bytes())
                .map_err(|e| fail(format!("`{key}` is not a valid header name: {e}")))?;
            let mut value = reqwest::header::HeaderValue::from_str(&value)
                .map_err(|e| fail(format!("the value of header `{key}` is not valid: {e}")))?;
            value.set_sensitive(true);
            headers.insert(key, value);
        }
        let tls = tls_config(config.ca_file.as_ref()).map_err(fail)?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(config.connect_timeout.min(config.timeout))
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("salvage/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| fail(format!("cannot build the HTTP client: {e}")))?;
        Ok(HttpRuntime { name, config, headers, client })
    }

    fn label(&self) -> String {
        format!("http runtime `{}`", self.name)
    }

    fn error(&self, message: impl Into<String>) -> RuntimeError {
        RuntimeError::Failed { runtime: self.label(), message: message.into() }
    }

    fn not_sent(&self, message: impl Into<String>) -> RuntimeError {
        RuntimeError::BeforeEffect { runtime: self.label(), message: message.into() }
    }

    /// One request: `body` is POSTed, `None` is a GET.
    async fn attempt(&self, url: &str, body: Option<&[u8]>, key: Option<&str>, timeout: Duration) -> Attempt {
        let mut builder = match body {
            Some(body) => {
                self.client.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_vec())
            }
            None => self.client.get(url),
        };
        builder = builder.headers(self.headers.clone()).header(reqwest::header::ACCEPT, "application/json");
        if let Some(key) = key {
            builder = builder.header("Idempotency-Key", key);
        }
        let response = match builder.timeout(timeout).send().await {
            Ok(response) => response,
            Err(error) if error.is_connect() => return Attempt::NotSent(error_chain(&error)),
            Err(error) => return Attempt::Ambiguous(error_chain(&error)),
        };
        let status = response.status().as_u16();
        match read_body(response).await {
            Ok(body) => Attempt::Answer { status, body },
            // The status came back, so the request reached the server; only the body is lost.
            Err(error) => Attempt::Ambiguous(format!("status {status}, but reading the answer failed: {error}")),
        }
    }

    /// GET `template` filled for `request`; `Ok(None)` on 404.
    async fn get_json(&self, template: &str, request: &ActionRequest) -> Result<Option<Value>, RuntimeError> {
        let url = join_url(self.config.base_url.as_deref(), &fill_template(template, request));
        match self.attempt(&url, None, None, self.config.timeout).await {
            Attempt::Answer { status: 404, .. } => Ok(None),
            Attempt::Answer { status, body } if (200..300).contains(&status) => serde_json::from_str(body.trim())
                .map(Some)
                .map_err(|e| self.error(format!("GET {url} answered {status} with something that is not JSON: {e}"))),
            Attempt::Answer { status, body } => {
                Err(self.error(format!("GET {url} answered {status}: {}", bounded(&body, 300))))
            }
            Attempt::NotSent(error) | Attempt::Ambiguous(error) => Err(self.error(format!("GET {url}: {error}"))),
        }
    }

    /// The body the reference service expects for `request`.
    fn agnostic_body(request: &ActionRequest) -> Value {
        let decision = request.approval.as_ref();
        let actor = decision.and_then(|d| d.get("actor")).and_then(Value::as_str).unwrap_or("salvage");
        let given = decision.and_then(|d| d.get("reason")).and_then(Value::as_str).filter(|r| !r.is_empty());
        let why = |verb: &str| match given {
            Some(reason) => format!("{verb} by {actor} via salvage ({}): {reason}", request.execution_id),
            None => format!("{verb} by {actor} via salvage ({})", request.execution_id),
        };
        let metadata = || Value::Object(super::store_runtime::created_run_metadata(request));
        match request.action {
            Action::ResolveApproval => json!({ "approved": true, "reason": why("approved") }),
            Action::DenyApproval => json!({ "approved": false, "reason": why("denied") }),
            Action::ResumeRun | Action::ResumeReplay => {
                json!({ "reason": format!("resumed by salvage ({}, step {})", request.execution_id, request.step_id) })
            }
            Action::BranchFromCheckpoint | Action::PartialReplay => json!({
                "checkpointId": request.payload.get("checkpointId").cloned().unwrap_or(Value::Null),
                "metadata": metadata(),
            }),
            Action::FrozenReplay => json!({ "metadata": metadata() }),
            Action::CancelRun => json!({
                "reason": format!("Cancelled by salvage (execution {}, step {}).", request.execution_id, request.step_id),
            }),
            _ => json!({}),
        }
    }

    /// What a reference service's answer means for the step.
    async fn agnostic_answer(
        &self,
        request: &ActionRequest,
        url: &str,
        status: u16,
        body: &str,
    ) -> Result<ActionResult, RuntimeError> {
        let parsed: Option<Value> = serde_json::from_str(body.trim()).ok();
        if (200..300).contains(&status) {
            let summary = parsed.as_ref().and_then(|value| RunObservation::of_summary(value, self.describe()));
            let Some(seen) = summary else {
                return Err(self.error(format!(
                    "{url} answered {status} with something that is not a run summary ({}); whether `{}` happened is \
                     unknown",
                    bounded(body, 300),
                    request.action
                )));
            };
            return Ok(judge_summary(request, &seen, parsed.unwrap_or(Value::Null)));
        }
        let message = parsed
            .as_ref()
            .and_then(|value| value.get("error"))
            .and_then(Value::as_str)
            .map_or_else(|| bounded(body, KEPT_BODY_BYTES), str::to_owned);
        // A failure answer: what became of the run decides (a denial is answered 500).
        let seen = self.observe(&request.run_id).await.ok().flatten();
        let detail =
            json!({ "message": format!("{url} answered {status}: {message}"), "status": status, "error": message });
        Ok(match seen {
            Some(seen) if request.action == Action::DenyApproval && seen.status == RunStatus::Failed => {
                ActionResult::ok(detail).with_run_status("failed")
            }
            Some(seen) => ActionResult::failed(detail).with_run_status(seen.status.as_str()),
            None => ActionResult::failed(detail),
        })
    }
}

/// The outcome of an action from the summary of the run the service answered with.
fn judge_summary(request: &ActionRequest, seen: &RunObservation, summary: Value) -> ActionResult {
    let status = seen.status.as_str().to_owned();
    let unchanged = request.expect.as_ref().is_some_and(|expect| expect.unchanged_in(seen));
    let detail = |note: &str| json!({ "note": note, "summary": summary });
    let result = match request.action {
        Action::BranchFromCheckpoint | Action::PartialReplay | Action::FrozenReplay => {
            if seen.run_id == request.run_id {
                return ActionResult::failed(detail("the service answered with the source run: it created no run"))
                    .with_run_status(status);
            }
            let mut result = ActionResult::ok(detail("created"));
            result.created_run_id = Some(seen.run_id.clone());
            result
        }
        _ if seen.run_id != request.run_id => {
            ActionResult::failed(detail("the service answered with another run than the one acted on"))
        }
        Action::ResumeRun | Action::ResumeReplay | Action::ResolveApproval if unchanged => ActionResult::failed(
            detail("the service answered with the run exactly where it was: the runtime did not continue it"),
        ),
        Action::ResumeRun | Action::ResumeReplay | Action::ResolveApproval => match seen.status {
            RunStatus::Failed | RunStatus::Cancelled => ActionResult::failed(detail("the run failed when resumed")),
            RunStatus::Completed => ActionResult::ok(detail("the run completed")),
            _ => ActionResult::ok(detail("the runtime continued the run; it has not finished")),
        },
        Action::DenyApproval => match seen.status {
            RunStatus::Failed => ActionResult::ok(detail("the denial was applied: the run failed without the tool")),
            _ if unchanged => ActionResult::failed(detail("the run still waits for the approval")),
            _ => ActionResult::ok(detail("the approval is no longer pending")),
        },
        Action::CancelRun => match seen.status {
            RunStatus::Cancelled => ActionResult::ok(detail("cancelled")),
            _ => ActionResult::failed(detail("the run is not cancelled")),
        },
        _ => ActionResult::ok(detail("answered")),
    };
    result.with_run_status(status)
}

/// Reads at most [`MAX_BODY_BYTES`] of an answer.
pub(crate) async fn read_body(mut response: reqwest::Response) -> Result<String, String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        let room = MAX_BODY_BYTES.saturating_sub(bytes.len());
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room < chunk.len() {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// An error with its causes ("error sending request: connection refused").
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Whether an answer is worth retrying (for actions that can be repeated).
fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

pub(crate) fn backoff(retry: &HttpRetry, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1));
    retry.initial_backoff.saturating_mul(factor).min(retry.max_backoff)
}

pub(crate) fn bounded(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[async_trait]
impl Runtime for HttpRuntime {
    fn describe(&self) -> String {
        match &self.config.base_url {
            Some(base) => format!("http {} ({base}, {} protocol)", self.name, self.config.protocol),
            None => format!("http {} ({} protocol)", self.name, self.config.protocol),
        }
    }

    fn carries_out(&self, action: Action) -> bool {
        self.config.route(action).is_some()
    }

    async fn perform(&self, request: &ActionRequest, _runs: &dyn RunStore) -> Result<ActionResult, RuntimeError> {
        let Some(endpoint) = self.config.route(request.action) else {
            return Err(RuntimeError::Unsupported { runtime: self.label(), action: request.action.name().to_owned() });
        };
        let url = join_url(self.config.base_url.as_deref(), &fill_template(&endpoint.url, request));
        let timeout = endpoint.timeout.unwrap_or(self.config.timeout);
        let body = match self.config.protocol {
            RuntimeProtocol::Salvage => serde_json::to_vec(request),
            RuntimeProtocol::AgnosticAgents => serde_json::to_vec(&HttpRuntime::agnostic_body(request)),
        }
        .map_err(|e| self.not_sent(format!("cannot encode the request: {e}")))?;
        let repeatable = matches!(request.action.spec().effect, EffectClass::ReadOnly | EffectClass::Idempotent);
        let attempts = if repeatable { self.config.retry.max_attempts.max(1) } else { 1 };
        let mut attempt_number = 0;
        loop {
            attempt_number += 1;
            let last = attempt_number >= attempts;
            tracing::info!(runtime = %self.name, action = %request.action, %url, attempt = attempt_number, "http runtime: POST");
            let outcome = self.attempt(&url, Some(&body), Some(&request.idempotency_key), timeout).await;
            match outcome {
                Attempt::Answer { status, body } if self.config.protocol == RuntimeProtocol::AgnosticAgents => {
                    // The reference service answers every failure 500, deliberate ones included:
                    // its answer (and the run's state) is final, never retried.
                    return self.agnostic_answer(request, &url, status, &body).await;
                }
                Attempt::Answer { status, body } if (200..300).contains(&status) => {
                    let text = body.trim();
                    if text.is_empty() {
                        return Ok(ActionResult::ok(json!({ "status": status, "attempts": attempt_number })));
                    }
                    return match serde_json::from_str::<Value>(text) {
                        Ok(Value::Object(map)) if map.contains_key("outcome") => parse_answer(request.action, text)
                            .map_err(|problem| self.error(format!("{url} answered {status} with {problem}"))),
                        Ok(other) => {
                            Ok(ActionResult::ok(json!({ "status": status, "attempts": attempt_number, "body": other })))
                        }
                        Err(_) => Ok(ActionResult::ok(json!({
                            "status": status, "attempts": attempt_number, "body": bounded(text, KEPT_BODY_BYTES),
                        }))),
                    };
                }
                Attempt::Answer { status, body } if !(repeatable && retryable_status(status)) || last => {
                    return Ok(ActionResult::failed(json!({
                        "message": format!("{url} answered {status}"),
                        "status": status,
                        "attempts": attempt_number,
                        "body": bounded(&body, KEPT_BODY_BYTES),
                    })));
                }
                Attempt::NotSent(error) if last => {
                    return Ok(ActionResult::failed(json!({
                        "message": format!("cannot reach {url}: {error}"),
                        "notSent": true,
                        "attempts": attempt_number,
                    })));
                }
                Attempt::Ambiguous(error) if last => {
                    return Err(self.error(format!(
                        "POST {url} for `{}` (idempotency key {}) failed after the request may have reached the \
                         server ({error}); whether its effect happened is unknown",
                        request.action, request.idempotency_key
                    )));
                }
                Attempt::Answer { status, .. } => {
                    tracing::warn!(runtime = %self.name, %url, status, "http runtime: retrying");
                }
                Attempt::NotSent(error) | Attempt::Ambiguous(error) => {
                    tracing::warn!(runtime = %self.name, %url, %error, "http runtime: retrying");
                }
            }
            tokio::time::sleep(backoff(&self.config.retry, attempt_number)).await;
        }
    }

    async fn observe(&self, run_id: &str) -> Result<Option<RunObservation>, RuntimeError> {
        let Some(template) = self.config.observe_route() else { return Ok(None) };
        let request = ActionRequest::for_run(run_id);
        let Some(answer) = self.get_json(&template, &request).await? else { return Ok(None) };
        // The reference answers a summary; the salvage protocol may answer `{id, status, …}` or
        // `{runId, runStatus}`.
        let normalised = match (&answer.get("id"), &answer.get("runId")) {
            (None, Some(id)) => json!({ "id": id, "status": answer.get("runStatus").or(answer.get("status")) }),
            _ => answer.clone(),
        };
        RunObservation::of_summary(&normalised, self.describe())
            .map(Some)
            .ok_or_else(|| self.error(format!("the state of run {run_id} came back without an id and a status")))
    }

    async fn find_created(&self, request: &ActionRequest) -> Result<Option<String>, RuntimeError> {
        let Some(template) = &self.config.find_created else { return Ok(None) };
        let Some(answer) = self.get_json(template, request).await? else { return Ok(None) };
        Ok(answer.get("createdRunId").and_then(Value::as_str).filter(|id| !id.is_empty()).map(str::to_owned))
    }
}

/// rustls on ring, trusting the platform's roots and the certificates of `ca_file`.
pub(crate) fn tls_config(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut extra: Vec<CertificateDer<'static>> = Vec::new();
    if let Some(path) = ca_file {
        let certificates = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?;
        for certificate in certificates {
            extra.push(certificate.map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?);
        }
        if extra.is_empty() {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
    }
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
        .map_err(|e| format!("cannot load the trusted CA certificates: {e}"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Replaces `${NAME}` with the environment variable `NAME`.
fn expand_env(value: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("`${{` without a closing `}}` in {value:?}"))?;
        let name = &after[..end];
        let found = std::env::var(name).map_err(|_| format!("the environment variable {name} is not set"))?;
        out.push_str(&found);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks that a URL template's placeholders are known and closed.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let end = after.find('}').ok_or_else(|| format!("`{{` without a closing `}}` in {template:?}"))?;
        let name = &after[..end];
        if !URL_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder `{{{name}}}` (known: {})",
                URL_PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(", ")
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

/// Fills a checked template from the request, percent-encoding each value.
fn fill_template(template: &str, request: &ActionRequest) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            break;
        };
        let value = match &after[..end] {
            "runId" => request.run_id.clone(),
            "executionId" => request.execution_id.clone(),
            "planId" => request.plan_id.clone(),
            "stepId" => request.step_id.clone(),
            "attempt" => request.attempt.to_string(),
            "action" => request.action.name().to_owned(),
            "planAction" => request.plan_action.clone(),
            "newRunId" => request.new_run_id.clone().unwrap_or_default(),
            "idempotencyKey" => request.idempotency_key.clone(),
            other => format!("{{{other}}}"),
        };
        out.push_str(&percent_encode(&value));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn join_url(base: Option<&str>, url: &str) -> String {
    match base {
        Some(base) if !url.starts_with("http://") && !url.starts_with("https://") => {
            format!("{}/{}", base.trim_end_matches('/'), url.trim_start_matches('/'))
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_checked_and_filled_with_encoded_values() {
        assert!(check_template("/runs/{runId}/resume").is_ok());
        assert!(check_template("/runs/{run_id}").unwrap_err().contains("unknown placeholder `{run_id}`"));
        assert!(check_template("/runs/{runId").unwrap_err().contains("without a closing"));
        let request: ActionRequest = serde_json::from_value(json!({
            "executionId": "e", "planId": "p", "stepId": "s", "attempt": 2, "idempotencyKey": "p:s:2",
            "action": "resume_run", "planAction": "resume_run", "runId": "r1:partial-replay:17/x",
            "payload": {}, "incidentType": "t"
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            fill_template("/runs/{runId}/resume?key={idempotencyKey}&n={attempt}", &request),
            "/runs/r1%3Apartial-replay%3A17%2Fx/resume?key=p%3As%3A2&n=2"
        );
        assert_eq!(join_url(Some("http://h:1/api/"), "/runs/x"), "http://h:1/api/runs/x");
        assert_eq!(join_url(Some("http://h:1"), "https://other/x"), "https://other/x");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let retry = HttpRetry {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
        };
        let waits: Vec<u128> = (1..=4).map(|n| backoff(&retry, n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 300, 300]);
    }

    #[test]
    fn header_values_read_the_environment() {
        // PATH is set in every test environment.
        let path = std::env::var("PATH").unwrap_or_default();
        assert_eq!(expand_env("x ${PATH} y").ok(), Some(format!("x {path} y")));
        assert!(expand_env("${SALVAGE_TEST_SURELY_UNSET_VARIABLE}").unwrap_err().contains("is not set"));
    }
}
