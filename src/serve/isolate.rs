//! One incident's failure is that incident's, never the daemon's. Errors are recorded by
//! [`Handler::handle`]; this catches a panic while handling an incident (a bug, or data no
//! test foresaw), records it on the incident (`state: failed`) with a log line naming the run,
//! and lets the worker go on with the next one (one daemon or a replica: a replica that let the
//! claim lapse instead would hand the panic to the next replica, for ever).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use serde_json::json;

use super::incidents::{Handled, Handler, Incident};

/// A future that turns a panic while it is polled into `Err(message)`.
pub(crate) struct CatchUnwind<F> {
    inner: Pin<Box<F>>,
}

pub(crate) fn catch_unwind<F: Future>(future: F) -> CatchUnwind<F> {
    CatchUnwind { inner: Box::pin(future) }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner.as_mut();
        // The future is dropped after a panic, never polled again: nothing sees a broken state.
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// [`Handler::handle`], with a panic recorded on the incident instead of lost with its task.
pub(super) async fn handle(handler: &Handler, incident: Incident) -> Handled {
    let run_id = incident.run_id.clone();
    let panic = match catch_unwind(handler.handle(incident)).await {
        Ok(handled) => return handled,
        Err(panic) => panic,
    };
    let counters = &handler.counters;
    // `handle` counted it in flight and did not get to count it out.
    let _ = counters.in_flight.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    counters.failed.fetch_add(1, Ordering::Relaxed);
    handler.status_changed.notify_one();
    tracing::error!(run_id = %run_id, panic = %panic, "Handling the incident panicked; it is recorded failed and the daemon goes on.");
    let update = json!({
        "state": "failed",
        "error": format!("salvage panicked while handling this incident: {panic}"),
        "handledAt": crate::model::json::now_iso(),
    });
    let execution_id = match handler.record(&run_id, update).await {
        Ok(record) => record["executionId"].as_str().map(str::to_owned),
        Err(error) => {
            tracing::error!(run_id = %run_id, %error, "Cannot record the incident's failure.");
            None
        }
    };
    Handled::Done { execution_id }
}

/// A resume or follow-up of an execution: a panic is logged naming it and counts as not done
/// (the execution stays marked, so it is not retried for ever).
pub(super) async fn resumed(execution_id: &str, work: impl Future<Output = bool>) -> bool {
    catch_unwind(work).await.unwrap_or_else(|panic| {
        tracing::error!(execution = %execution_id, panic = %panic, "Resuming the execution panicked; the daemon goes on.");
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_while_polled_becomes_an_error_and_a_value_passes_through() {
        assert_eq!(catch_unwind(async { 7 }).await, Ok(7));
        let failed = catch_unwind(async {
            tokio::task::yield_now().await;
            if std::hint::black_box(true) {
                panic!("deep data");
            }
        })
        .await;
        assert_eq!(failed, Err("deep data".to_owned()));
        let formatted = catch_unwind(async { panic!("run {}", 42) }).await;
        assert_eq!(formatted, Err("run 42".to_owned()));
    }
}
