#![cfg(feature = "otel")]
//! OpenTelemetry traces: the real binary exports its spans over OTLP/HTTP (protobuf) to an
//! in-process collector on 127.0.0.1 that decodes them with the OTLP protobuf definitions
//! (`opentelemetry-proto`). A recovery is one trace from the incident through an approval
//! answered hours later by another process (the journal keeps the W3C trace context); a
//! collector that is down never fails a command; spans are off unless an endpoint is given.

#[path = "common/scratch.rs"]
mod scratch;

#[path = "common/wait.rs"]
mod wait;

#[path = "common/daemon.rs"]
mod daemon;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use salvage::execute::{JournalEntry, journal_entries};
use salvage::store::{ExecutionStore, SqliteStore};
use serde_json::Value;

use daemon::Daemon;
use scratch::salvage_in as salvage;
use wait::wait_for;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
/// The failed run's own trace, as an instrumented agent runtime would record it.
const RUNTIME_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const RUNTIME_SPAN: &str = "00f067aa0ba902b7";

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    attributes: BTreeMap<String, String>,
    links: Vec<(String, String)>,
    /// `service.instance.id` of the process that sent it.
    instance: String,
    service: String,
}

/// An OTLP/HTTP collector on 127.0.0.1 (its own runtime on a thread), keeping every span.
struct Collector {
    address: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
}

fn text_of(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

async fn collect(State(spans): State<Arc<Mutex<Vec<Received>>>>, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else { return StatusCode::BAD_REQUEST };
    let mut kept = spans.lock().expect("spans");
    for resource_spans in request.resource_spans {
        let resource = text_of(&resource_spans.resource.map(|r| r.attributes).unwrap_or_default());
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                kept.push(Received {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    attributes: text_of(&span.attributes),
                    links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                    instance: resource.get("service.instance.id").cloned().unwrap_or_default(),
                    service: resource.get("service.name").cloned().unwrap_or_default(),
                });
            }
        }
    }
    StatusCode::OK
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Collector {
    fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = spans.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                tx.send(listener.local_addr().expect("address")).expect("send");
                let app = axum::Router::new().route("/v1/traces", axum::routing::post(collect)).with_state(shared);
                axum::serve(listener, app).await.expect("serve");
            });
        });
        let address = rx.recv().expect("the collector's address");
        Collector { address, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("spans").clone()
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A working directory with the shipped sets and the failed invoice run (carrying the
/// runtime's own `traceparent` in its metadata) imported into SQLite.
fn workspace() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp");
    scratch::copy_shipped_sets(dir.path());
    let source = Path::new(ROOT).join(format!("examples/runs/{FAILED_INVOICE}.json"));
    let mut run: Value = serde_json::from_str(&std::fs::read_to_string(source).expect("run")).expect("json");
    run["metadata"]["traceparent"] = format!("00-{RUNTIME_TRACE}-{RUNTIME_SPAN}-01").into();
    let file = dir.path().join("failed-invoice.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&run).expect("json")).expect("write");
    let store = format!("sqlite:{}", dir.path().join("salvage.db").display());
    let import = salvage(dir.path(), &store, &["import", file.to_str().expect("utf-8")], &[]);
    assert!(import.status.success(), "import: {}", stderr(&import));
    (dir, store)
}

fn pending_execution(dir: &Path, store: &str) -> Option<String> {
    let status = salvage(dir, store, &["status", "--json"], &[]);
    let status: Value = serde_json::from_slice(&status.stdout).ok()?;
    Some(status["pendingApprovals"][0]["executionId"].as_str()?.to_owned())
}

/// The `traceparent` the execution's journal recorded when it started.
fn started_traceparent(dir: &Path, execution_id: &str) -> Option<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let store = SqliteStore::open(dir.join("salvage.db")).await.expect("store");
        let journal = store.journal(execution_id).await.expect("journal");
        journal_entries(execution_id, &journal).expect("entries").into_iter().find_map(|entry| match entry {
            JournalEntry::Started { traceparent, .. } => traceparent,
            _ => None,
        })
    })
}

fn named<'s>(spans: &'s [Received], name: &str) -> Vec<&'s Received> {
    spans.iter().filter(|span| span.name == name).collect()
}

#[test]
fn a_recovery_is_one_trace_from_the_incident_through_an_approval_answered_by_another_process() {
    let collector = Collector::start();
    let (dir, store) = workspace();
    let endpoint = collector.endpoint();
    // The daemon takes the collector from the standard variable, batching briefly.
    let daemon = Daemon::start_with(
        dir.path(),
        &store,
        "enforce",
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let execution_id = wait_for("the recovery to wait for an approval", || pending_execution(dir.path(), &store));
    wait_for("the daemon's spans to reach the collector", || {
        let spans = collector.spans();
        (!named(&spans, "incident").is_empty() && !named(&spans, "execution").is_empty()).then_some(())
    });
    let daemon_spans = collector.spans();
    let incident = named(&daemon_spans, "incident")[0].clone();
    let trace = incident.trace_id.clone();

    // Another process answers (and carries the execution on), with the flag this time.
    let approve = salvage(
        dir.path(),
        &store,
        &["approve", &execution_id, "ask_operator", "--as", "oncall-sre", "--otlp-endpoint", &endpoint],
        &[],
    );
    assert!(approve.status.success(), "approve: {}", stderr(&approve));
    daemon.stop();
    let spans = collector.spans();

    // The incident: the failed run, its kind and playbook, what became of it, and a link to
    // the runtime's own trace of the failed run (not a parent: it is another trace).
    assert_eq!(incident.service, "salvage");
    assert_eq!(incident.attributes["run_id"], FAILED_INVOICE, "{incident:?}");
    assert_eq!(incident.attributes["root_run_id"], FAILED_INVOICE, "{incident:?}");
    assert_eq!(incident.attributes["kind"], "tool_failure", "{incident:?}");
    assert!(incident.attributes.contains_key("playbook"), "{incident:?}");
    assert_eq!(incident.attributes["outcome"], "applied", "{incident:?}");
    assert_eq!(incident.parent_span_id, "", "the incident starts the trace");
    assert_eq!(incident.links, vec![(RUNTIME_TRACE.to_owned(), RUNTIME_SPAN.to_owned())]);

    // Planning under the incident, each policy hook under the plan.
    let plan = named(&spans, "plan");
    assert_eq!(plan.len(), 1, "{plan:?}");
    assert_eq!(plan[0].parent_span_id, incident.span_id);
    let hooks = named(&spans, "policy_hook");
    let hook_names: BTreeSet<&str> = hooks.iter().map(|h| h.attributes["hook"].as_str()).collect();
    assert!(hook_names.contains("classify"), "{hook_names:?}");
    for hook in &hooks {
        assert_eq!(hook.parent_span_id, plan[0].span_id, "{hook:?}");
        assert_eq!(hook.attributes["policy_digest"].len(), 12, "{hook:?}");
        assert!(hook.attributes["file"].ends_with(".rhai"), "{hook:?}");
    }

    // Every span of both processes is in the incident's trace.
    let instances: BTreeSet<&str> = spans.iter().map(|s| s.instance.as_str()).collect();
    assert_eq!(instances.len(), 2, "spans from the daemon and from `salvage approve`: {instances:?}");
    let traces: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces, BTreeSet::from([trace.as_str()]), "{spans:#?}");

    // The daemon's execution started under the incident, and its journal kept that span's
    // trace context; the answering process's spans are children of it.
    let executions = named(&spans, "execution");
    let started = executions
        .iter()
        .find(|e| e.attributes["operation"] == "apply")
        .unwrap_or_else(|| panic!("the daemon's execution span: {executions:?}"));
    assert_eq!(started.parent_span_id, incident.span_id);
    assert_eq!(started.attributes["execution_id"], execution_id);
    assert_eq!(started_traceparent(dir.path(), &execution_id), Some(format!("00-{trace}-{}-01", started.span_id)));
    let approver = &started.instance;
    let answered: Vec<&&Received> = executions.iter().filter(|e| &e.instance != approver).collect();
    let operations: BTreeSet<&str> = answered.iter().map(|e| e.attributes["operation"].as_str()).collect();
    assert_eq!(operations, BTreeSet::from(["answer", "resume"]), "{answered:?}");
    for execution in &answered {
        assert_eq!(execution.parent_span_id, started.span_id, "{execution:?}");
    }

    // Steps: the approval request in the daemon, and steps after the approval in the other
    // process, each under its execution's span.
    let steps = named(&spans, "step");
    let after_approval: Vec<&&Received> = steps.iter().filter(|s| &s.instance != approver).collect();
    assert!(!after_approval.is_empty(), "steps run after the approval: {steps:?}");
    let resumed = answered.iter().find(|e| e.attributes["operation"] == "resume").expect("resume span");
    for step in &after_approval {
        assert_eq!(step.parent_span_id, resumed.span_id, "{step:?}");
        assert!(step.attributes.contains_key("action"), "{step:?}");
    }
    let asked = |instance_is_daemon: bool, approval: &str| {
        steps.iter().any(|s| {
            (&s.instance == approver) == instance_is_daemon
                && s.attributes["step"] == "ask_operator"
                && s.attributes.get("approval").map(String::as_str) == Some(approval)
        })
    };
    assert!(asked(true, "requested"), "the daemon asked for the approval: {steps:?}");
    assert!(asked(false, "approved"), "the answering process recorded it approved: {steps:?}");
}

#[test]
fn without_an_endpoint_nothing_is_exported_and_the_journal_keeps_no_trace_context() {
    let collector = Collector::start();
    let (dir, store) = workspace();
    let apply = salvage(dir.path(), &store, &["apply", FAILED_INVOICE, "--yes", "--as", "alice", "--json"], &[]);
    assert!(apply.status.success(), "apply: {}", stderr(&apply));
    let execution_id = pending_execution(dir.path(), &store).expect("the execution waits for an approval");
    assert_eq!(started_traceparent(dir.path(), &execution_id), None);
    assert!(collector.spans().is_empty());
}

#[test]
fn a_collector_that_is_down_never_fails_a_command_and_is_reported_once() {
    let (dir, store) = workspace();
    // A port nothing listens on: bind one and let it go.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address");
    let endpoint = format!("http://{closed}");
    let plan = salvage(dir.path(), &store, &["plan", FAILED_INVOICE, "--json", "--otlp-endpoint", &endpoint], &[]);
    assert!(plan.status.success(), "plan: {}", stderr(&plan));
    serde_json::from_slice::<Value>(&plan.stdout).expect("the plan is printed as usual");
    let text = stderr(&plan);
    assert_eq!(text.matches("Cannot export spans to the OTLP collector").count(), 1, "{text}");
}

#[test]
fn an_endpoint_that_is_not_an_http_url_is_refused_before_anything_runs() {
    let (dir, store) = workspace();
    for (endpoint, says) in
        [("127.0.0.1:4318", "is not a URL"), ("grpc://collector:4317", "is not an http:// or https:// URL")]
    {
        let out = salvage(dir.path(), &store, &["runs", "--otlp-endpoint", endpoint], &[]);
        assert_eq!(out.status.code(), Some(2), "{endpoint}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{endpoint}: {}", stderr(&out));
        assert!(stderr(&out).contains("http://127.0.0.1:4318"), "names an example: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "nothing ran: {}", String::from_utf8_lossy(&out.stdout));
    }
}
