//! `GET /metrics`: the Prometheus text rendering of the recorder [`crate::telemetry::install`]
//! installed, served by `salvage serve --metrics ADDRESS` (one daemon or each replica alike).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::telemetry::{self, HistogramBuckets, TelemetryError};

/// The content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histograms are drained and idle series swept between scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {address}: {source}")]
    #[diagnostic(
        code(salvage::metrics::bind),
        help("choose a free address with --metrics (or `metrics.listen` in salvage.yaml); port 0 picks a free port")
    )]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// The metrics endpoint, listening; it serves until dropped.
pub struct MetricsEndpoint {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsEndpoint {
    /// Binds `address` first (a port in use fails before anything is installed), then installs
    /// the recorder with `buckets` and serves `/metrics`.
    pub async fn start(address: SocketAddr, buckets: &HistogramBuckets) -> Result<MetricsEndpoint, MetricsError> {
        let listener =
            tokio::net::TcpListener::bind(address).await.map_err(|source| MetricsError::Bind { address, source })?;
        let bound = listener.local_addr().map_err(|source| MetricsError::Bind { address, source })?;
        let handle = telemetry::install(buckets)?;
        let upkeep = handle.clone();
        let app = Router::new().route("/metrics", get(move || render(handle.clone())));
        let task = tokio::spawn(async move {
            let mut upkeep_timer = tokio::time::interval(UPKEEP);
            let serving = std::future::IntoFuture::into_future(axum::serve(listener, app));
            tokio::pin!(serving);
            loop {
                tokio::select! {
                    result = &mut serving => {
                        if let Err(error) = result {
                            tracing::error!(%error, address = %bound, "The metrics endpoint stopped.");
                        }
                        return;
                    }
                    _ = upkeep_timer.tick() => upkeep.run_upkeep(),
                }
            }
        });
        tracing::info!(address = %bound, "Serving metrics at /metrics.");
        Ok(MetricsEndpoint { address: bound, task })
    }

    /// Where it listens (the port chosen when port 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn render(handle: PrometheusHandle) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], handle.render())
}

/// The approvals the daemon's clocks saw waiting, so that the time each waited is measured
/// once it is answered — by whichever process answered and resumed it (`salvage approve`
/// usually resumes the execution itself).
#[derive(Debug, Default)]
pub struct ApprovalWatch {
    /// (execution id, step id) → when the approval was asked for.
    waiting: std::sync::Mutex<std::collections::HashMap<(String, String), String>>,
}

impl ApprovalWatch {
    /// Takes the approvals waiting now, each (execution id, step id, asked at); returns those
    /// seen waiting before that no longer are.
    pub fn observe(&self, now: Vec<(String, String, String)>) -> Vec<(String, String, String)> {
        let now: std::collections::HashMap<(String, String), String> =
            now.into_iter().map(|(execution, step, asked)| ((execution, step), asked)).collect();
        let mut waiting = self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = std::mem::replace(&mut *waiting, now);
        before
            .into_iter()
            .filter(|(key, _)| !waiting.contains_key(key))
            .map(|((execution, step), asked)| (execution, step, asked))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(execution: &str, step: &str) -> (String, String, String) {
        (execution.to_owned(), step.to_owned(), "2026-01-01T00:00:00.000Z".to_owned())
    }

    #[test]
    fn an_approval_is_reported_once_when_it_stops_waiting() {
        let watch = ApprovalWatch::default();
        assert!(watch.observe(vec![approval("e1", "ask"), approval("e2", "ask")]).is_empty());
        assert!(watch.observe(vec![approval("e1", "ask"), approval("e2", "ask")]).is_empty());
        // e1 answered; e2 moved on to a second approval step.
        let mut ended = watch.observe(vec![approval("e2", "second")]);
        ended.sort();
        assert_eq!(ended, vec![approval("e1", "ask"), approval("e2", "ask")]);
        assert!(watch.observe(vec![approval("e2", "second")]).is_empty(), "reported once");
        assert_eq!(watch.observe(Vec::new()), vec![approval("e2", "second")]);
    }
}
