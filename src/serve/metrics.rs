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
