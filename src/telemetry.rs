//! Prometheus metrics: every metric's name, labels and histogram buckets, defined once.
//!
//! Instrumented code calls the one-line recorders below (`telemetry::plan_finished(...)`) where
//! the thing happens; they go through the `metrics` facade, so they cost nothing and need no
//! exporter until `salvage serve --metrics` installs the Prometheus recorder ([`install`]) and
//! serves its rendering (`serve::metrics`). Names follow Prometheus' conventions (seconds,
//! `_total` on counters); labels are closed vocabularies or digests that change only on a
//! reload — never a run id, an execution id or free text ([`label`] folds anything else into
//! `other`).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const INCIDENTS_FOUND: &str = "salvage_incidents_found_total";
pub const INCIDENTS_HANDLED: &str = "salvage_incidents_handled_total";
pub const PLAN_DURATION: &str = "salvage_plan_duration_seconds";
pub const POLICY_HOOK_DURATION: &str = "salvage_policy_hook_duration_seconds";
pub const RELOADS: &str = "salvage_reloads_total";
pub const ACTIVE_SET_INFO: &str = "salvage_active_set_info";
pub const EXECUTIONS: &str = "salvage_executions_total";
pub const EXECUTIONS_OPEN: &str = "salvage_executions_open";
pub const STEP_DURATION: &str = "salvage_step_duration_seconds";
pub const APPROVALS_PENDING: &str = "salvage_approvals_pending";
pub const APPROVAL_WAIT: &str = "salvage_approval_wait_seconds";
pub const QUEUE_DEPTH: &str = "salvage_queue_depth";
pub const JOURNAL_COMMIT_DURATION: &str = "salvage_journal_commit_duration_seconds";
pub const STORE_ERRORS: &str = "salvage_store_errors_total";
pub const NOTIFICATIONS: &str = "salvage_notifications_total";

/// Digest labels keep this many hex digits (as `salvage status` shows them).
const DIGEST_LABEL_LEN: usize = 12;

/// A label value longer than this, or with other characters than `[A-Za-z0-9_.:-]`, is `other`.
const MAX_LABEL_LEN: usize = 64;

/// At most this many bounds per histogram (each bound is one series per label set).
pub const MAX_BUCKETS: usize = 40;

/// The upper bounds (seconds) of each histogram's buckets: `metrics.buckets` in `salvage.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramBuckets {
    pub plan: Vec<f64>,
    pub policy_hook: Vec<f64>,
    pub step: Vec<f64>,
    pub approval_wait: Vec<f64>,
    pub journal_commit: Vec<f64>,
}

impl Default for HistogramBuckets {
    fn default() -> Self {
        HistogramBuckets {
            plan: vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            policy_hook: vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0],
            step: vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0],
            approval_wait: vec![1.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0],
            journal_commit: vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
        }
    }
}

impl HistogramBuckets {
    /// The `salvage.yaml` key of each histogram, with its metric.
    pub const KEYS: [&'static str; 5] = ["plan", "policy_hook", "step", "approval_wait", "journal_commit"];

    /// The bounds configured under `key` (one of [`HistogramBuckets::KEYS`]).
    pub fn for_key(&mut self, key: &str) -> Option<&mut Vec<f64>> {
        match key {
            "plan" => Some(&mut self.plan),
            "policy_hook" => Some(&mut self.policy_hook),
            "step" => Some(&mut self.step),
            "approval_wait" => Some(&mut self.approval_wait),
            "journal_commit" => Some(&mut self.journal_commit),
            _ => None,
        }
    }

    fn by_metric(&self) -> [(&'static str, &[f64]); 5] {
        [
            (PLAN_DURATION, &self.plan),
            (POLICY_HOOK_DURATION, &self.policy_hook),
            (STEP_DURATION, &self.step),
            (APPROVAL_WAIT, &self.approval_wait),
            (JOURNAL_COMMIT_DURATION, &self.journal_commit),
        ]
    }
}

/// Why a list of bucket bounds cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BucketError {
    #[error("a histogram needs at least one bucket bound")]
    Empty,
    #[error("{count} bucket bounds are too many (at most {MAX_BUCKETS}: each is a series per label set)")]
    TooMany { count: usize },
    #[error("bucket bound #{position} ({value}) must be a finite number of seconds above 0")]
    NotPositive { position: usize, value: f64 },
    #[error("bucket bound #{position} ({value}) must be greater than the one before it ({previous})")]
    NotIncreasing { position: usize, value: f64, previous: f64 },
}

/// Checks that `bounds` are usable upper bounds: 1 to [`MAX_BUCKETS`] finite positive numbers in
/// strictly increasing order (`+Inf` is always added by the exporter). Positions count from 1.
pub fn validate_buckets(bounds: &[f64]) -> Result<(), BucketError> {
    if bounds.is_empty() {
        return Err(BucketError::Empty);
    }
    if bounds.len() > MAX_BUCKETS {
        return Err(BucketError::TooMany { count: bounds.len() });
    }
    for (index, &value) in bounds.iter().enumerate() {
        if !value.is_finite() || value <= 0.0 {
            return Err(BucketError::NotPositive { position: index + 1, value });
        }
        if let Some(&previous) = index.checked_sub(1).and_then(|before| bounds.get(before))
            && value <= previous
        {
            return Err(BucketError::NotIncreasing { position: index + 1, value, previous });
        }
    }
    Ok(())
}

/// Why the metrics recorder could not be installed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum TelemetryError {
    #[error("metrics bucket configuration for {metric}: {source}")]
    #[diagnostic(code(salvage::metrics::buckets), help("fix `metrics.buckets` in salvage.yaml"))]
    Buckets {
        metric: &'static str,
        #[source]
        source: BucketError,
    },
    #[error("cannot install the metrics recorder: {0}")]
    #[diagnostic(
        code(salvage::metrics::recorder),
        help("a process installs one metrics recorder; start one `salvage serve --metrics` per process")
    )]
    Recorder(String),
}

/// Installs the process-wide Prometheus recorder with `buckets` and describes every metric.
/// Once per process: a second call is [`TelemetryError::Recorder`].
pub fn install(buckets: &HistogramBuckets) -> Result<PrometheusHandle, TelemetryError> {
    let mut builder = PrometheusBuilder::new();
    for (metric, bounds) in buckets.by_metric() {
        validate_buckets(bounds).map_err(|source| TelemetryError::Buckets { metric, source })?;
        builder = builder
            .set_buckets_for_metric(Matcher::Full(metric.to_owned()), bounds)
            .map_err(|error| TelemetryError::Recorder(error.to_string()))?;
    }
    let handle = builder.install_recorder().map_err(|error| TelemetryError::Recorder(error.to_string()))?;
    describe();
    // Gauges without labels exist from the start, so a scrape shows them at 0.
    gauge!(APPROVALS_PENDING).set(0.0);
    gauge!(QUEUE_DEPTH).set(0.0);
    Ok(handle)
}

fn describe() {
    describe_counter!(INCIDENTS_FOUND, Unit::Count, "Incidents claimed by the daemon, by the run's status.");
    describe_counter!(INCIDENTS_HANDLED, Unit::Count, "Incidents whose handling ended, by incident kind and outcome.");
    describe_histogram!(PLAN_DURATION, Unit::Seconds, "Time to plan an incident, by outcome.");
    describe_histogram!(
        POLICY_HOOK_DURATION,
        Unit::Seconds,
        "Time of one policy hook call, by hook and policy digest."
    );
    describe_counter!(RELOADS, Unit::Count, "Reloads of the playbook and policy set, by outcome.");
    describe_gauge!(ACTIVE_SET_INFO, "1 for the active policy and playbook set digests (0 for earlier ones).");
    describe_counter!(EXECUTIONS, Unit::Count, "Executions reaching a status, by mode and status.");
    describe_gauge!(EXECUTIONS_OPEN, Unit::Count, "Executions in the store not finished, by status (enforce mode).");
    describe_histogram!(STEP_DURATION, Unit::Seconds, "Time of one playbook step, by action, outcome and mode.");
    describe_gauge!(APPROVALS_PENDING, Unit::Count, "Executions waiting for a person's approval.");
    describe_histogram!(APPROVAL_WAIT, Unit::Seconds, "From an approval's request to its answer, by decision.");
    describe_gauge!(QUEUE_DEPTH, Unit::Count, "Work claimed and waiting for a worker.");
    describe_histogram!(JOURNAL_COMMIT_DURATION, Unit::Seconds, "Time to append one journal entry, by outcome.");
    describe_counter!(STORE_ERRORS, Unit::Count, "Store operations that failed, by backend and kind.");
    describe_counter!(
        NOTIFICATIONS,
        Unit::Count,
        "Notifications sent to a channel, by channel type, event and outcome."
    );
}

/// `value` as a label value when it is a short identifier-like word, else `other`: labels stay
/// low-cardinality whatever a policy or a runtime returns.
pub fn label(value: &str) -> String {
    let fits = !value.is_empty()
        && value.len() <= MAX_LABEL_LEN
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
    if fits { value.to_owned() } else { "other".to_owned() }
}

/// The first hex digits of a digest (`sha256:` prefix dropped), as `status` shows it.
pub fn digest_label(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    label(&hex.chars().take(DIGEST_LABEL_LEN).collect::<String>())
}

/// The daemon claimed an incident (`run_status`: failed, waiting_for_approval, paused).
pub fn incident_found(run_status: &str) {
    counter!(INCIDENTS_FOUND, "run_status" => label(run_status)).increment(1);
}

/// An incident's handling ended in `outcome` (the incident record's state); `kind` is the
/// classification, `unclassified` when it ended before one.
pub fn incident_handled(kind: Option<&str>, outcome: &str) {
    let kind = kind.map_or_else(|| "unclassified".to_owned(), label);
    counter!(INCIDENTS_HANDLED, "kind" => kind, "outcome" => label(outcome)).increment(1);
}

/// A plan was made (`ok`) or could not be (`error`).
pub fn plan_finished(ok: bool, elapsed: Duration) {
    histogram!(PLAN_DURATION, "outcome" => if ok { "ok" } else { "error" }).record(elapsed.as_secs_f64());
}

/// One call of policy hook `hook` of the set with `policy_digest`.
pub fn policy_hook_called(hook: &str, policy_digest: &str, elapsed: Duration) {
    histogram!(POLICY_HOOK_DURATION, "hook" => label(hook), "policy_digest" => digest_label(policy_digest))
        .record(elapsed.as_secs_f64());
}

/// A reload ended `applied`, `unchanged` or `rejected`.
pub fn reload_finished(outcome: &str) {
    counter!(RELOADS, "outcome" => label(outcome)).increment(1);
}

/// The digests published by [`active_set`] last, to set to 0 when another set becomes active.
static PUBLISHED_SET: Mutex<Option<(String, String)>> = Mutex::new(None);

/// The set with these digests is the active one (an info metric: value 1; the set it
/// replaced goes to 0, since a series cannot be withdrawn).
pub fn active_set(policy_digest: &str, playbook_set_digest: &str) {
    let now = (digest_label(policy_digest), digest_label(playbook_set_digest));
    let mut published = PUBLISHED_SET.lock().unwrap_or_else(PoisonError::into_inner);
    if published.as_ref() == Some(&now) {
        return;
    }
    if let Some((policy, playbooks)) = published.take() {
        gauge!(ACTIVE_SET_INFO, "policy_digest" => policy, "playbook_set_digest" => playbooks).set(0.0);
    }
    gauge!(ACTIVE_SET_INFO, "policy_digest" => now.0.clone(), "playbook_set_digest" => now.1.clone()).set(1.0);
    *published = Some(now);
}

/// An execution (`advisory` dry run or `enforce`) reached `status` through this process's
/// runner (a `salvage approve` that resumes an execution counts in its own process);
/// [`executions_open`] counts the store's.
pub fn execution_reached(mode: &str, status: &str) {
    counter!(EXECUTIONS, "mode" => label(mode), "status" => label(status)).increment(1);
}

/// How many executions of the store are in `status` now.
pub fn executions_open(status: &str, count: usize) {
    gauge!(EXECUTIONS_OPEN, "status" => label(status)).set(count as f64);
}

/// A step of catalog action `action` ended with `outcome`.
pub fn step_finished(action: &str, outcome: &str, mode: &str, elapsed: Duration) {
    histogram!(STEP_DURATION, "action" => label(action), "outcome" => label(outcome), "mode" => label(mode))
        .record(elapsed.as_secs_f64());
}

/// A notification to a channel of type `channel_type` ended `outcome` (`delivered`, `failed`,
/// `dry_run`).
pub fn notification_delivered(channel_type: &str, event: &str, outcome: &str) {
    counter!(NOTIFICATIONS, "channel_type" => label(channel_type), "event" => label(event), "outcome" => label(outcome))
        .increment(1);
}

/// How many executions wait for an approval now.
pub fn approvals_pending(count: usize) {
    gauge!(APPROVALS_PENDING).set(count as f64);
}

/// An approval was answered `decision` (`approved`, `denied`, `timeout`) `waited` after it was
/// asked for.
pub fn approval_waited(decision: &str, waited: Duration) {
    histogram!(APPROVAL_WAIT, "decision" => label(decision)).record(waited.as_secs_f64());
}

/// How much work waits for a worker now.
pub fn queue_depth(depth: usize) {
    gauge!(QUEUE_DEPTH).set(depth as f64);
}

/// A journal append ended `ok`, `conflict` (another writer was first) or `error`.
pub fn journal_committed(outcome: &'static str, elapsed: Duration) {
    histogram!(JOURNAL_COMMIT_DURATION, "outcome" => outcome).record(elapsed.as_secs_f64());
}

/// A store operation of `backend` (`sqlite`, `postgres`, `file`) failed with an error of `kind`
/// (`database`, `io`).
pub fn store_error(backend: &'static str, kind: &'static str) {
    counter!(STORE_ERRORS, "backend" => backend, "kind" => kind).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_buckets_are_valid() {
        for (metric, bounds) in HistogramBuckets::default().by_metric() {
            assert_eq!(validate_buckets(bounds), Ok(()), "{metric}");
        }
    }

    #[test]
    fn bucket_bounds_must_be_positive_finite_and_strictly_increasing() {
        assert_eq!(validate_buckets(&[0.1, 0.5, 2.0]), Ok(()));
        assert_eq!(validate_buckets(&[]), Err(BucketError::Empty));
        assert_eq!(validate_buckets(&[0.0, 1.0]), Err(BucketError::NotPositive { position: 1, value: 0.0 }));
        assert_eq!(validate_buckets(&[1.0, -2.0]), Err(BucketError::NotPositive { position: 2, value: -2.0 }));
        assert!(matches!(validate_buckets(&[1.0, f64::NAN]), Err(BucketError::NotPositive { position: 2, .. })));
        assert!(matches!(validate_buckets(&[f64::INFINITY]), Err(BucketError::NotPositive { position: 1, .. })));
        assert_eq!(
            validate_buckets(&[0.1, 0.5, 0.5]),
            Err(BucketError::NotIncreasing { position: 3, value: 0.5, previous: 0.5 })
        );
        assert_eq!(
            validate_buckets(&[1.0, 0.5]),
            Err(BucketError::NotIncreasing { position: 2, value: 0.5, previous: 1.0 })
        );
        let many: Vec<f64> = (1..=MAX_BUCKETS + 1).map(|n| n as f64).collect();
        assert_eq!(validate_buckets(&many), Err(BucketError::TooMany { count: MAX_BUCKETS + 1 }));
        assert_eq!(validate_buckets(&many[..MAX_BUCKETS]), Ok(()));
    }

    #[test]
    fn labels_fold_free_text_and_ids_into_other_and_digests_are_shortened() {
        assert_eq!(label("tool_failure"), "tool_failure");
        assert_eq!(label("waiting_for_approval"), "waiting_for_approval");
        assert_eq!(label("the tool said: boom"), "other");
        assert_eq!(label(""), "other");
        assert_eq!(label(&"x".repeat(MAX_LABEL_LEN + 1)), "other");
        assert_eq!(digest_label("sha256:0123456789abcdef0123"), "0123456789ab");
        assert_eq!(digest_label("0123456789abcdef0123"), "0123456789ab");
    }
}
