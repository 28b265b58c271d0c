//! OpenTelemetry spans over OTLP/HTTP (protobuf), when `--otlp-endpoint` (or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) names a collector.
//!
//! The exporter posts through salvage's own reqwest client (rustls on ring, the platform's
//! roots), driven by the command's tokio runtime: the SDK's batch processor runs on its own
//! thread and only waits for the request. Spans are batched (`OTEL_BSP_*` tune it) and flushed
//! when the command ends. A collector that is down never fails a command: its first failed
//! export is logged as a warning, and the next one that works says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use super::CliError;

/// How long one export may take (a collector that hangs does not hold a command up longer).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest collector response read (a collector answers with a few bytes).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Spans being exported; [`TraceExport::shutdown`] flushes them.
pub struct TraceExport {
    provider: SdkTracerProvider,
}

/// `/v1/traces` of a collector's base URL, as the OTLP exporter specification adds it to
/// `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn traces_url(base: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(base).map_err(|error| {
        format!(
            "--otlp-endpoint `{base}` is not a URL ({error}); give the collector's base URL, e.g. http://127.0.0.1:4318"
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "--otlp-endpoint `{base}` is not an http:// or https:// URL; salvage exports OTLP over HTTP (e.g. \
             http://127.0.0.1:4318)"
        ));
    }
    Ok(format!("{}/v1/traces", base.trim_end_matches('/')))
}

impl TraceExport {
    /// Starts exporting when an endpoint is configured (`None`: spans are not exported).
    pub fn start(endpoint: Option<&str>, runtime: &tokio::runtime::Runtime) -> Result<Option<TraceExport>, CliError> {
        let url = match endpoint.filter(|endpoint| !endpoint.is_empty()) {
            Some(base) => Some(traces_url(base).map_err(CliError::input_msg)?),
            // The SDK reads the per-signal variable itself (used as it is).
            None if std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some_and(|v| !v.is_empty()) => None,
            None => return Ok(None),
        };
        let tls = crate::execute::http_runtime::tls_config(None).map_err(CliError::input_msg)?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(EXPORT_TIMEOUT)
            .user_agent(concat!("salvage/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| CliError::input_msg(format!("cannot build the OTLP HTTP client: {error}")))?;
        let client =
            CollectorClient { client, runtime: runtime.handle().clone(), failing: Arc::new(AtomicBool::new(false)) };
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(EXPORT_TIMEOUT);
        if let Some(url) = url {
            builder = builder.with_endpoint(url);
        }
        let exporter = builder
            .build()
            .map_err(|error| CliError::input_msg(format!("cannot set up the OTLP exporter: {error}")))?;
        let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            format!("{}:{}", crate::execute::hostname(), std::process::id()),
        ));
        let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
            || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|attributes| attributes.contains("service.name="));
        if !named {
            resource = resource.with_service_name("salvage");
        }
        let resource =
            resource.with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        crate::trace_context::set_exporting();
        Ok(Some(TraceExport { provider }))
    }

    /// The subscriber layer that turns salvage's spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + use<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        // salvage's spans at `info` and above, whatever `--log` lets through to stderr.
        let spans = tracing_subscriber::filter::Targets::new().with_target("salvage", tracing::Level::INFO);
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("salvage")).with_filter(spans)
    }

    /// Exports the spans still batched and stops. Runs the SDK's blocking shutdown off the
    /// runtime's workers, which carry the last requests meanwhile.
    pub async fn shutdown(self) {
        let provider = self.provider;
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "Could not export the last spans to the OTLP collector."),
            Err(error) => tracing::warn!(%error, "Could not flush the OTLP exporter."),
        }
    }
}

/// The exporter's HTTP client: each request runs on the command's runtime.
#[derive(Debug)]
struct CollectorClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    /// Whether the last export failed (so that a collector that is down is reported once).
    failing: Arc<AtomicBool>,
}

impl CollectorClient {
    fn reached(&self, ok: bool, problem: impl FnOnce() -> String) {
        let was_failing = self.failing.swap(!ok, Ordering::Relaxed);
        match (ok, was_failing) {
            (false, false) => tracing::warn!(
                problem = %problem(),
                "Cannot export spans to the OTLP collector; salvage goes on and says so again only once it works."
            ),
            (true, true) => tracing::info!("Spans reach the OTLP collector again."),
            _ => {}
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for CollectorClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let url = reqwest::Url::parse(&parts.uri.to_string())?;
            let response = client.request(parts.method, url).headers(parts.headers).body(body).send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let mut body = Vec::new();
            let mut response = response;
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(HttpError::from("the collector's response is larger than 1 MiB"));
                }
                body.extend_from_slice(&chunk);
            }
            let mut answer = Response::new(Bytes::from(body));
            *answer.status_mut() = status;
            *answer.headers_mut() = headers;
            Ok::<_, HttpError>(answer)
        });
        let result = sent.await.map_err(HttpError::from).and_then(|result| result);
        match &result {
            Ok(response) if response.status().is_success() => self.reached(true, String::new),
            Ok(response) => self.reached(false, || format!("the collector answered {}", response.status())),
            Err(error) => self.reached(false, || error.to_string()),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn the_traces_path_is_added_to_the_base_url_once() {
        assert_eq!(traces_url("http://127.0.0.1:4318").as_deref(), Ok("http://127.0.0.1:4318/v1/traces"));
        assert_eq!(traces_url("https://otel.example/").as_deref(), Ok("https://otel.example/v1/traces"));
    }

    #[test]
    fn an_endpoint_that_is_not_http_is_refused_with_an_example() {
        let refused = traces_url("127.0.0.1:4318").unwrap_err();
        assert!(refused.contains("http://127.0.0.1:4318"), "{refused}");
        let refused = traces_url("grpc://collector:4317").unwrap_err();
        assert!(refused.contains("not an http:// or https:// URL"), "{refused}");
    }
}
