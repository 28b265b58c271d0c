//! W3C trace context (`traceparent`) of salvage's spans, for the journal.
//!
//! An execution can outlive the process that started it (an approval answered hours later, a
//! crash, another replica taking over). Its journal keeps the `traceparent` of the span that
//! started it, and whoever carries the execution on opens its span as a child of that one, so
//! the whole recovery is one trace in the tracing backend.
//!
//! Everything here is a no-op when spans are not exported (no `--otlp-endpoint`, or a build
//! without the `otel` feature): no context is stored, and a stored one is ignored.

static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Says that spans are exported from now on (the CLI, once it installed the exporter).
pub fn set_exporting() {
    EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether spans are exported: a stored trace context is worth reading only then.
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// The `traceparent` of `span`, when spans are exported and it is being recorded.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    imp::traceparent_of(span)
}

/// Makes `span` a child of the span `traceparent` names (a stored one), so that it continues
/// that trace. Must be called before `span` is first entered; an invalid value is ignored
/// (with a debug line): a trace that cannot be continued starts anew.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    imp::continue_trace(span, traceparent);
}

/// Links `span` to the span `traceparent` names without making it its parent (a failed run of
/// the agent runtime that carries its own trace context). An invalid value is ignored.
pub fn link(span: &tracing::Span, traceparent: &str) {
    imp::link(span, traceparent);
}

#[cfg(feature = "otel")]
mod imp {
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    const TRACEPARENT: &str = "traceparent";

    pub(super) fn traceparent_of(span: &tracing::Span) -> Option<String> {
        let context = span.context();
        if !context.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut carrier);
        carrier.remove(TRACEPARENT)
    }

    fn parse(traceparent: &str) -> Option<opentelemetry::Context> {
        let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
        let context = TraceContextPropagator::new().extract(&carrier);
        if context.span().span_context().is_valid() {
            Some(context)
        } else {
            tracing::debug!(traceparent, "Not a valid W3C traceparent; the trace is not continued.");
            None
        }
    }

    pub(super) fn continue_trace(span: &tracing::Span, traceparent: &str) {
        if let Some(parent) = parse(traceparent)
            && let Err(error) = span.set_parent(parent)
        {
            tracing::debug!(%error, "Cannot continue the stored trace.");
        }
    }

    pub(super) fn link(span: &tracing::Span, traceparent: &str) {
        if let Some(context) = parse(traceparent) {
            span.add_link(context.span().span_context().clone());
        }
    }
}

#[cfg(not(feature = "otel"))]
mod imp {
    pub(super) fn traceparent_of(_span: &tracing::Span) -> Option<String> {
        None
    }

    pub(super) fn continue_trace(_span: &tracing::Span, _traceparent: &str) {}

    pub(super) fn link(_span: &tracing::Span, _traceparent: &str) {}
}
