//! Notifications: what `notify` steps, approval requests and an execution's end send to the
//! channels configured in `salvage.yaml` (`notifications:`).
//!
//! Three channel types:
//! - **`webhook`**: POSTs a JSON document ([`webhook_body`]) signed with HMAC-SHA256 over the
//!   exact body bytes, in `X-Salvage-Signature: sha256=<hex>`; the secret is read from the
//!   environment variable the channel names (`secret_env`), never from the file.
//! - **`slack`**: a Slack-compatible incoming webhook (`{"text": …}`): the summary, the incident
//!   and, when `notifications.inbox_url` is set, a link to the inbox page.
//! - **`pagerduty`**: the PagerDuty Events API v2: `trigger` for approval requests, escalations
//!   and `notify` steps, `resolve` when the recovery succeeds (only on a channel this execution
//!   triggered), `dedup_key` = `salvage:<incident run id>`; the routing key comes from the
//!   environment (`routing_key_env`), the events URL is configurable.
//!
//! Every request carries `Idempotency-Key` (the execution id and the step id, see
//! [`step_key`]); a delivery is retried with exponential backoff on connection failures,
//! timeouts, `429` and `5xx`, never on another `4xx`. The runner journals an intent before a
//! batch of deliveries and one `delivery` record per channel after it, so that a crash never
//! sends twice silently (see the session's `deliver`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::http_runtime::{HttpRetry, backoff, bounded, error_chain, read_body, tls_config};

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// The header carrying a webhook body's signature.
pub const SIGNATURE_HEADER: &str = "X-Salvage-Signature";
/// The header naming the event of a webhook delivery.
pub const EVENT_HEADER: &str = "X-Salvage-Event";
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a receiver's error answer is kept in the journal.
const KEPT_ANSWER_BYTES: usize = 512;
/// PagerDuty refuses summaries longer than this.
const PAGERDUTY_SUMMARY_CHARS: usize = 1024;

/// The type of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelKind {
    Webhook,
    Slack,
    PagerDuty,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 3] = [ChannelKind::Webhook, ChannelKind::Slack, ChannelKind::PagerDuty];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Slack => "slack",
            ChannelKind::PagerDuty => "pagerduty",
        }
    }

    pub fn parse(text: &str) -> Option<ChannelKind> {
        ChannelKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// The events a channel of this type receives when its `events:` is not set.
    pub fn default_events(self) -> Vec<NotificationEvent> {
        match self {
            ChannelKind::Webhook => NotificationEvent::ALL.to_vec(),
            ChannelKind::Slack => {
                vec![NotificationEvent::Notify, NotificationEvent::ApprovalRequested, NotificationEvent::Escalated]
            }
            ChannelKind::PagerDuty => {
                vec![NotificationEvent::ApprovalRequested, NotificationEvent::Escalated, NotificationEvent::Resolved]
            }
        }
    }
}

impl std::fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NotificationEvent {
    /// A playbook's `notify` step (it goes to the channel the step names, else the default).
    Notify,
    /// A step waits for a person.
    ApprovalRequested,
    /// The execution ended `escalated`: a person must take over.
    Escalated,
    /// The execution ended `resolved` (the recovered run was seen completed).
    Resolved,
}

impl NotificationEvent {
    pub const ALL: [NotificationEvent; 4] = [
        NotificationEvent::Notify,
        NotificationEvent::ApprovalRequested,
        NotificationEvent::Escalated,
        NotificationEvent::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationEvent::Notify => "notify",
            NotificationEvent::ApprovalRequested => "approval_requested",
            NotificationEvent::Escalated => "escalated",
            NotificationEvent::Resolved => "resolved",
        }
    }

    pub fn parse(text: &str) -> Option<NotificationEvent> {
        NotificationEvent::ALL.into_iter().find(|event| event.as_str() == text)
    }
}

impl std::fmt::Display for NotificationEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A URL written in the file, or read from the environment when it is a secret (a Slack
/// incoming-webhook URL is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlSource {
    Literal(String),
    Env(String),
}

/// Where and how a channel delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelTarget {
    Webhook { url: String, secret_env: String },
    Slack { url: UrlSource },
    PagerDuty { events_url: String, routing_key_env: String },
}

/// One configured channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub name: String,
    pub target: ChannelTarget,
    /// The events it receives besides the `notify` steps that name it.
    pub events: Vec<NotificationEvent>,
}

impl Channel {
    pub fn kind(&self) -> ChannelKind {
        match self.target {
            ChannelTarget::Webhook { .. } => ChannelKind::Webhook,
            ChannelTarget::Slack { .. } => ChannelKind::Slack,
            ChannelTarget::PagerDuty { .. } => ChannelKind::PagerDuty,
        }
    }

    pub fn receives(&self, event: NotificationEvent) -> bool {
        self.events.contains(&event)
    }
}

/// `notifications:` in `salvage.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationsConfig {
    pub channels: BTreeMap<String, Channel>,
    /// The channel of `notify` steps that name none.
    pub default: Option<String>,
    /// The approval inbox's base URL: messages link to its pages.
    pub inbox_url: Option<String>,
    pub retry: HttpRetry,
    /// Time for one request (connect, send, answer).
    pub timeout: Duration,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            channels: BTreeMap::new(),
            default: None,
            inbox_url: None,
            retry: HttpRetry { max_attempts: 4, ..HttpRetry::default() },
            timeout: DEFAULT_NOTIFY_TIMEOUT,
        }
    }
}

/// Why a playbook's `channel:` names no configured channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownChannel {
    pub message: String,
    pub help: String,
}

impl NotificationsConfig {
    /// The channel a playbook's `channel:` names: a channel name (`agents-oncall`), or a type
    /// and a name (`pagerduty:agents-oncall`), whose type must be the channel's.
    pub fn channel(&self, reference: &str) -> Result<&Channel, UnknownChannel> {
        let (kind, name) = match reference.split_once(':') {
            Some((kind, name)) => (Some(kind), name),
            None => (None, reference),
        };
        let defined = || {
            if self.channels.is_empty() {
                "salvage.yaml defines no notification channel; add it under `notifications.channels`".to_owned()
            } else {
                format!(
                    "the channels salvage.yaml defines are {}; add it under `notifications.channels` or name one \
                     of them",
                    self.channels.values().map(|c| format!("`{}:{}`", c.kind(), c.name)).collect::<Vec<_>>().join(", ")
                )
            }
        };
        if let Some(kind) = kind
            && ChannelKind::parse(kind).is_none()
        {
            return Err(UnknownChannel {
                message: format!("channel `{reference}`: `{kind}` is not a channel type (webhook, slack, pagerduty)"),
                help: defined(),
            });
        }
        match self.channels.get(name) {
            Some(channel) if kind.is_none_or(|kind| kind == channel.kind().as_str()) => Ok(channel),
            Some(channel) => Err(UnknownChannel {
                message: format!(
                    "channel `{reference}`: `{name}` is a {} channel, not {}",
                    channel.kind(),
                    kind.unwrap_or("")
                ),
                help: format!("write `{}:{name}` or `{name}`", channel.kind()),
            }),
            None => Err(UnknownChannel {
                message: format!("channel `{reference}` is not defined in salvage.yaml"),
                help: defined(),
            }),
        }
    }

    /// Where a `notify` step sends: the channel it names, else the default channel, else every
    /// channel receiving `notify`, else nowhere (the message is only logged).
    pub fn step_channels(&self, named: Option<&str>) -> Result<Vec<&Channel>, UnknownChannel> {
        match named.or(self.default.as_deref()) {
            Some(reference) => self.channel(reference).map(|channel| vec![channel]),
            None => Ok(self.subscribers(NotificationEvent::Notify)),
        }
    }

    /// The channels that receive `event`.
    pub fn subscribers(&self, event: NotificationEvent) -> Vec<&Channel> {
        self.channels.values().filter(|channel| channel.receives(event)).collect()
    }
}

/// The idempotency key of a step's notifications: `<executionId>:<stepId>` on the step's first
/// visit, `<executionId>:<stepId>@<visit>` on later ones. Every attempt and every re-send after
/// a crash carries the same key, so a receiver can drop a duplicate.
pub fn step_key(execution_id: &str, step_id: &str, visit: u32) -> String {
    if visit <= 1 { format!("{execution_id}:{step_id}") } else { format!("{execution_id}:{step_id}@{visit}") }
}

/// An approval request's wording.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalNotice {
    pub approvers: Vec<String>,
    pub reason: String,
    pub expires_at: Option<String>,
}

/// One notification, before it is shaped for a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub event: NotificationEvent,
    /// The idempotency key (the same on every channel, every retry and every re-send).
    pub key: String,
    pub execution_id: String,
    pub incident_run_id: String,
    pub incident_type: String,
    pub playbook: String,
    pub step_id: Option<String>,
    /// A `notify` step's message.
    pub message: Option<String>,
    pub approval: Option<ApprovalNotice>,
}

impl Notice {
    /// One line saying what happened.
    pub fn summary(&self) -> String {
        let incident = format!("run {} ({})", self.incident_run_id, self.incident_type);
        match self.event {
            NotificationEvent::Notify => self.message.clone().unwrap_or_default(),
            NotificationEvent::ApprovalRequested => {
                let approval = self.approval.as_ref();
                let mut text = format!(
                    "Approval needed for step {} of the recovery of {incident}: {}",
                    self.step_id.as_deref().unwrap_or("?"),
                    approval.map_or("", |a| a.reason.as_str())
                );
                if let Some(approval) = approval {
                    text.push_str(&format!(" Approvers: {}.", approval.approvers.join(", ")));
                    if let Some(expires) = &approval.expires_at {
                        text.push_str(&format!(" Answer by {expires}."));
                    }
                }
                text
            }
            NotificationEvent::Escalated => {
                format!("The recovery of {incident} escalated: a person must take over.")
            }
            NotificationEvent::Resolved => format!("The recovery of {incident} succeeded."),
        }
    }

    /// The inbox page of this notification: the approval's page for an approval request, the
    /// execution's page otherwise.
    pub fn link(&self, inbox_url: Option<&str>) -> Option<String> {
        let base = inbox_url?.trim_end_matches('/');
        Some(match (self.event, &self.step_id) {
            (NotificationEvent::ApprovalRequested, Some(step)) => {
                format!("{base}/approvals/{}/{step}", self.execution_id)
            }
            _ => format!("{base}/executions/{}", self.execution_id),
        })
    }

    /// PagerDuty's `dedup_key`: the incident.
    pub fn dedup_key(&self) -> String {
        format!("salvage:{}", self.incident_run_id)
    }
}

/// The JSON document a `webhook` channel receives.
pub fn webhook_body(notice: &Notice, inbox_url: Option<&str>) -> Value {
    json!({
        "event": notice.event.as_str(),
        "idempotencyKey": notice.key,
        "executionId": notice.execution_id,
        "incident": {"runId": notice.incident_run_id, "type": notice.incident_type},
        "playbook": notice.playbook,
        "stepId": notice.step_id,
        "summary": notice.summary(),
        "message": notice.message,
        "approval": notice.approval.as_ref().map(|a| json!({
            "approvers": a.approvers, "reason": a.reason, "expiresAt": a.expires_at,
        })),
        "link": notice.link(inbox_url),
    })
}

/// The message a `slack` channel receives.
pub fn slack_body(notice: &Notice, inbox_url: Option<&str>) -> Value {
    let mut text = format!(
        "*salvage* · {}\nRun `{}` ({}) · playbook `{}` · execution `{}`",
        notice.summary(),
        notice.incident_run_id,
        notice.incident_type,
        notice.playbook,
        notice.execution_id
    );
    if let Some(link) = notice.link(inbox_url) {
        let label =
            if notice.event == NotificationEvent::ApprovalRequested { "Review and answer" } else { "Open in salvage" };
        text.push_str(&format!("\n<{link}|{label}>"));
    }
    json!({ "text": text })
}

/// The event a `pagerduty` channel receives (`routing_key` as given: the real one, or a
/// placeholder in a dry run).
pub fn pagerduty_body(notice: &Notice, inbox_url: Option<&str>, routing_key: &str) -> Value {
    if notice.event == NotificationEvent::Resolved {
        return json!({"routing_key": routing_key, "event_action": "resolve", "dedup_key": notice.dedup_key()});
    }
    let summary: String = notice.summary().chars().take(PAGERDUTY_SUMMARY_CHARS).collect();
    let severity = match notice.event {
        NotificationEvent::Escalated => "error",
        _ => "warning",
    };
    let mut body = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": notice.dedup_key(),
        "payload": {
            "summary": summary,
            "source": format!("salvage run {}", notice.incident_run_id),
            "severity": severity,
            "component": notice.playbook,
            "class": notice.incident_type,
            "custom_details": {
                "event": notice.event.as_str(),
                "executionId": notice.execution_id,
                "stepId": notice.step_id,
                "idempotencyKey": notice.key,
            },
        },
    });
    if let Some(link) = notice.link(inbox_url) {
        body["links"] = json!([{ "href": link, "text": "salvage" }]);
    }
    body
}

/// HMAC-SHA256 of `body` under `secret`, as lowercase hex.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    crate::policy::hex(&mac.finalize().into_bytes())
}

/// How a delivery to one channel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Refused (a 4xx other than 429), unreachable after every retry, or not sendable (a
    /// secret missing from the environment).
    Failed,
    /// A dry run: nothing was sent.
    DryRun,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Failed => "failed",
            DeliveryOutcome::DryRun => "dry_run",
        }
    }
}

/// What delivering to one channel did.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub channel: String,
    pub kind: ChannelKind,
    /// Requests made (0 when nothing could be sent).
    pub attempts: u32,
    /// The last HTTP status answered.
    pub status: Option<u16>,
    pub outcome: DeliveryOutcome,
    pub error: Option<String>,
    /// In a dry run: what would be sent (secrets left out).
    pub would_send: Option<Value>,
}

/// A request ready to send.
struct Prepared {
    url: String,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

fn env_secret(name: &str, what: &str) -> Result<String, String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => Err(format!("the environment variable {name} ({what}) is not set; nothing was sent")),
    }
}

/// Sends notifications over HTTP.
#[derive(Debug, Clone)]
pub struct Notifier {
    config: Arc<NotificationsConfig>,
    client: reqwest::Client,
}

/// Time to connect; the whole request is bounded by `notifications.timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The process's notification client, built once: loading the platform's trusted roots costs
/// more than a delivery to a nearby receiver (`benches/notifications.rs`).
fn shared_client() -> Result<reqwest::Client, String> {
    static CLIENT: std::sync::OnceLock<Result<reqwest::Client, String>> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let tls = tls_config(None)?;
            reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .connect_timeout(CONNECT_TIMEOUT)
                .pool_max_idle_per_host(0)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("salvage/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {}", error_chain(&e)))
        })
        .clone()
}

impl Notifier {
    pub fn new(config: Arc<NotificationsConfig>) -> Result<Notifier, String> {
        Ok(Notifier { config, client: shared_client()? })
    }

    /// The request for `channel`, secrets read from the environment.
    fn prepare(&self, channel: &Channel, notice: &Notice) -> Result<Prepared, String> {
        let inbox = self.config.inbox_url.as_deref();
        let mut headers = vec![("Idempotency-Key", notice.key.clone())];
        let (url, body) = match &channel.target {
            ChannelTarget::Webhook { url, secret_env } => {
                let secret = env_secret(secret_env, "the webhook's signing secret")?;
                let body = serde_json::to_vec(&webhook_body(notice, inbox)).map_err(|e| e.to_string())?;
                headers.push((EVENT_HEADER, notice.event.as_str().to_owned()));
                headers.push((SIGNATURE_HEADER, format!("sha256={}", sign(secret.as_bytes(), &body))));
                (url.clone(), body)
            }
            ChannelTarget::Slack { url } => {
                let url = match url {
                    UrlSource::Literal(url) => url.clone(),
                    UrlSource::Env(name) => env_secret(name, "the incoming webhook's URL")?,
                };
                (url, serde_json::to_vec(&slack_body(notice, inbox)).map_err(|e| e.to_string())?)
            }
            ChannelTarget::PagerDuty { events_url, routing_key_env } => {
                let key = env_secret(routing_key_env, "the PagerDuty routing key")?;
                let body = pagerduty_body(notice, inbox, &key);
                (events_url.clone(), serde_json::to_vec(&body).map_err(|e| e.to_string())?)
            }
        };
        Ok(Prepared { url, body, headers })
    }

    /// What a dry run says it would send: the URL (or the variable holding it) and the body,
    /// secrets named by their variables.
    pub fn would_send(config: &NotificationsConfig, channel: &Channel, notice: &Notice) -> Value {
        let inbox = config.inbox_url.as_deref();
        match &channel.target {
            ChannelTarget::Webhook { url, secret_env } => json!({
                "url": url, "body": webhook_body(notice, inbox),
                "signature": format!("HMAC-SHA256 of the body with ${secret_env}"),
                "idempotencyKey": notice.key,
            }),
            ChannelTarget::Slack { url } => json!({
                "url": match url { UrlSource::Literal(url) => url.clone(), UrlSource::Env(name) => format!("${name}") },
                "body": slack_body(notice, inbox), "idempotencyKey": notice.key,
            }),
            ChannelTarget::PagerDuty { events_url, routing_key_env } => json!({
                "url": events_url, "body": pagerduty_body(notice, inbox, &format!("${routing_key_env}")),
                "idempotencyKey": notice.key,
            }),
        }
    }

    /// Delivers `notice` to `channel`: bounded retries with backoff on connection failures,
    /// timeouts, 429 and 5xx; a 2xx is delivered, any other answer failed at once.
    pub async fn deliver(&self, channel: &Channel, notice: &Notice) -> Delivery {
        let mut delivery = Delivery {
            channel: channel.name.clone(),
            kind: channel.kind(),
            attempts: 0,
            status: None,
            outcome: DeliveryOutcome::Failed,
            error: None,
            would_send: None,
        };
        let prepared = match self.prepare(channel, notice) {
            Ok(prepared) => prepared,
            Err(error) => {
                tracing::warn!(channel = %channel.name, %error, "notification not sent");
                delivery.error = Some(error);
                return delivery;
            }
        };
        let attempts = self.config.retry.max_attempts.max(1);
        loop {
            delivery.attempts += 1;
            let mut request = self
                .client
                .post(&prepared.url)
                .timeout(self.config.timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(prepared.body.clone());
            for (name, value) in &prepared.headers {
                request = request.header(*name, value);
            }
            let mut wait = None;
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    delivery.status = Some(status);
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let answer = read_body(response).await.unwrap_or_default();
                    if (200..300).contains(&status) {
                        delivery.outcome = DeliveryOutcome::Delivered;
                        delivery.error = None;
                        return delivery;
                    }
                    delivery.error = Some(match answer.trim() {
                        "" => format!("answered {status}"),
                        text => format!("answered {status}: {}", bounded(text, KEPT_ANSWER_BYTES)),
                    });
                    if !(status == 429 || (500..600).contains(&status)) {
                        tracing::warn!(channel = %channel.name, status, "notification refused; not retried");
                        return delivery;
                    }
                    wait = retry_after;
                }
                Err(error) => {
                    delivery.status = None;
                    delivery.error = Some(error_chain(&error));
                }
            }
            if delivery.attempts >= attempts {
                tracing::warn!(channel = %channel.name, attempts = delivery.attempts, error = ?delivery.error, "notification not delivered");
                return delivery;
            }
            let pause = wait
                .filter(|w| *w <= self.config.retry.max_backoff)
                .unwrap_or_else(|| backoff(&self.config.retry, delivery.attempts));
            tracing::info!(channel = %channel.name, attempt = delivery.attempts, error = ?delivery.error, "retrying the notification");
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NotificationsConfig {
        let mut channels = BTreeMap::new();
        for (name, target) in [
            ("ops", ChannelTarget::Webhook { url: "http://127.0.0.1:9/h".into(), secret_env: "S".into() }),
            (
                "agents-oncall",
                ChannelTarget::PagerDuty { events_url: PAGERDUTY_EVENTS_URL.into(), routing_key_env: "K".into() },
            ),
        ] {
            let channel = Channel { name: name.into(), target, events: Vec::new() };
            channels.insert(name.to_owned(), channel);
        }
        NotificationsConfig { channels, ..NotificationsConfig::default() }
    }

    fn notice(event: NotificationEvent) -> Notice {
        Notice {
            event,
            key: "ex-1:ask".into(),
            execution_id: "ex-1".into(),
            incident_run_id: "run-1".into(),
            incident_type: "approval_timeout".into(),
            playbook: "p".into(),
            step_id: Some("ask".into()),
            message: None,
            approval: Some(ApprovalNotice {
                approvers: vec!["alice".into(), "bob".into()],
                reason: "Resuming replays a tool.".into(),
                expires_at: Some("2026-12-06T18:00:00.000Z".into()),
            }),
        }
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn channel_references_name_a_channel_with_or_without_its_type() {
        let config = config();
        assert_eq!(config.channel("agents-oncall").map(|c| c.kind()), Ok(ChannelKind::PagerDuty));
        assert_eq!(config.channel("pagerduty:agents-oncall").map(|c| c.kind()), Ok(ChannelKind::PagerDuty));
        let wrong_type = config.channel("slack:agents-oncall").expect_err("typed wrongly");
        assert_eq!(
            wrong_type.message,
            "channel `slack:agents-oncall`: `agents-oncall` is a pagerduty channel, not slack"
        );
        let missing = config.channel("pagerduty:sre").expect_err("undefined");
        assert_eq!(missing.message, "channel `pagerduty:sre` is not defined in salvage.yaml");
        assert!(missing.help.contains("`pagerduty:agents-oncall`, `webhook:ops`"), "{}", missing.help);
        assert!(config.channel("email:ops").expect_err("no such type").message.contains("not a channel type"));
        assert_eq!(config.step_channels(None).map(|c| c.len()), Ok(0), "no default: only logged");
    }

    #[test]
    fn pagerduty_resolves_what_it_triggered_under_the_incidents_dedup_key() {
        let trigger = pagerduty_body(&notice(NotificationEvent::ApprovalRequested), Some("https://s.example/"), "KEY");
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["dedup_key"], "salvage:run-1");
        assert_eq!(trigger["links"][0]["href"], "https://s.example/approvals/ex-1/ask");
        assert_eq!(
            pagerduty_body(&notice(NotificationEvent::Resolved), None, "KEY"),
            json!({"routing_key": "KEY", "event_action": "resolve", "dedup_key": "salvage:run-1"})
        );
    }

    #[test]
    fn keys_are_the_execution_and_the_step() {
        assert_eq!(step_key("ex", "tell", 1), "ex:tell");
        assert_eq!(step_key("ex", "tell", 3), "ex:tell@3");
    }
}
