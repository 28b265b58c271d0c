//! `salvage serve --metrics`: the real binary in advisory mode over stores holding the example
//! incidents, scraped over HTTP; the body is parsed with a Prometheus text-format parser
//! (`prometheus-parse`) and checked against what the daemon reports it did (`salvage status`).
//! One daemon on SQLite, and replicas on PostgreSQL (skipped loudly without a server).

#[path = "common/scratch.rs"]
mod scratch;

#[path = "common/wait.rs"]
mod wait;

#[path = "common/postgres.rs"]
mod postgres;

#[path = "common/daemon.rs"]
mod daemon;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use daemon::Daemon;
use prometheus_parse::{Sample, Scrape, Value as Metric};
use salvage::serve::incidents::INCIDENT_PREFIX;
use salvage::store::{SqliteStore, StateStore};
use serde_json::Value;
use wait::{PATIENCE, wait_for};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The example runs that are incidents (failed, waiting for approval or paused).
const EXAMPLE_INCIDENTS: u64 = 7;

fn salvage(dir: &Path, store: &str, args: &[&str]) -> Output {
    scratch::salvage_in(dir, store, args, &[])
}

fn status(dir: &Path, store: &str) -> Value {
    let out = salvage(dir, store, &["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}"))
}

/// A working directory with copies of the shipped playbooks and policies, `salvage.yaml`
/// holding `config`, and the example runs imported into `store`.
fn workspace(store: impl FnOnce(&Path) -> String, config: &str) -> (tempfile::TempDir, String) {
    workspace_with(store, config, &Path::new(ROOT).join("examples/runs"))
}

/// [`workspace`] with the runs of `import` (a file or a directory).
fn workspace_with(store: impl FnOnce(&Path) -> String, config: &str, import: &Path) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp");
    scratch::copy_shipped_sets(dir.path());
    std::fs::write(dir.path().join("salvage.yaml"), config).expect("config");
    let store = store(dir.path());
    let import = salvage(dir.path(), &store, &["import", import.to_str().expect("utf-8")]);
    assert!(import.status.success(), "import: {}", String::from_utf8_lossy(&import.stderr));
    (dir, store)
}

/// `GET /metrics` over plain HTTP/1.1: the content type and the body.
fn scrape(address: SocketAddr) -> (String, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the metrics endpoint");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header and a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_owned()))
        .expect("a content type");
    (content_type, body.to_owned())
}

fn parse(body: &str) -> Scrape {
    Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).expect("the Prometheus text format")
}

/// The samples of one family (histograms under their own name, their `_count` and `_sum` apart).
fn family<'s>(scrape: &'s Scrape, name: &str) -> Vec<&'s Sample> {
    scrape.samples.iter().filter(|s| s.metric == name).collect()
}

fn counter_sum(scrape: &Scrape, name: &str, filter: impl Fn(&Sample) -> bool) -> f64 {
    family(scrape, name)
        .into_iter()
        .filter(|s| filter(s))
        .map(|s| match s.value {
            Metric::Counter(v) => v,
            ref other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

fn gauges(scrape: &Scrape, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    family(scrape, name)
        .into_iter()
        .map(|s| match s.value {
            Metric::Gauge(v) => (s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), v),
            ref other => panic!("{name} is not a gauge: {other:?}"),
        })
        .collect()
}

/// The histograms of a family: (labels, bucket bounds, the `+Inf` bucket's count).
fn histograms(scrape: &Scrape, name: &str) -> Vec<(BTreeMap<String, String>, Vec<f64>, f64)> {
    family(scrape, name)
        .into_iter()
        .map(|s| match &s.value {
            Metric::Histogram(buckets) => {
                let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
                let total = buckets.iter().find(|b| b.less_than.is_infinite()).map_or(0.0, |b| b.count);
                (s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), bounds, total)
            }
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .collect()
}

fn labels(sample: &Sample, key: &str) -> String {
    sample.labels.get(key).unwrap_or_default().to_owned()
}

/// Every label value of every sample, to check that none is a run id.
fn all_label_values(scrape: &Scrape) -> BTreeSet<String> {
    scrape.samples.iter().flat_map(|s| s.labels.values().cloned()).collect()
}

fn example_run_ids() -> Vec<String> {
    std::fs::read_dir(Path::new(ROOT).join("examples/runs"))
        .expect("examples")
        .filter_map(Result::ok)
        .filter_map(|entry| entry.path().file_stem().and_then(|s| s.to_str()).map(str::to_owned))
        .collect()
}

fn short(digest: &Value) -> String {
    digest.as_str().expect("a digest").chars().take(12).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn advisory_serve_exposes_what_it_handled_as_prometheus_metrics() {
    // Plan latency gets its own buckets from salvage.yaml; the others keep the defaults.
    let config = "metrics:\n  buckets:\n    plan: [0.5, 2, 30]\n";
    let (dir, store) = workspace(|dir| format!("sqlite:{}", dir.join("salvage.db").display()), config);
    let daemon = Daemon::start(dir.path(), &store, &["--metrics", "127.0.0.1:0"]);
    let address = daemon.metrics_address();
    assert!(address.ip().is_loopback() && address.port() != 0, "{address}");

    let settled = |status: &Value| {
        let n = |name: &str| status["daemon"]["incidents"][name].as_u64().unwrap_or(0);
        (n("handled") == EXAMPLE_INCIDENTS && n("planned") + n("failed") == EXAMPLE_INCIDENTS && n("inFlight") == 0)
            .then_some(())
    };
    wait_for("every example incident handled", || settled(&status(dir.path(), &store)));
    let before_reload = status(dir.path(), &store);
    let first_policies = short(&before_reload["daemon"]["active"]["policyDigest"]);

    // A policy edit is reloaded by the watcher: a reload outcome and a new active set.
    let policy = dir.path().join("policies/approvals.rhai");
    let text = std::fs::read_to_string(&policy).expect("policy");
    std::fs::write(&policy, format!("{text}\n// reviewed\n")).expect("edit");
    let after = wait_for("the edit applied", || {
        let status = status(dir.path(), &store);
        (status["daemon"]["reloads"]["applied"].as_u64() == Some(1)
            && short(&status["daemon"]["active"]["policyDigest"]) != first_policies)
            .then_some(status)
    });
    let policies = short(&after["daemon"]["active"]["policyDigest"]);
    let playbooks = short(&after["daemon"]["active"]["playbookSetDigest"]);

    // The info metric follows within a status heartbeat.
    let (content_type, body) = wait_for("the active set in the metrics", || {
        let (content_type, body) = scrape(address);
        let active = gauges(&parse(&body), "salvage_active_set_info")
            .iter()
            .any(|(labels, value)| *value == 1.0 && labels["policy_digest"] == policies);
        active.then_some((content_type, body))
    });
    assert!(content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"), "{content_type}");
    let scrape = parse(&body);

    // Incidents: found by run status, handled by kind and outcome, as many as the daemon says.
    let handled = counter_sum(&scrape, "salvage_incidents_handled_total", |_| true);
    assert_eq!(handled, EXAMPLE_INCIDENTS as f64, "{body}");
    assert_eq!(counter_sum(&scrape, "salvage_incidents_found_total", |_| true), EXAMPLE_INCIDENTS as f64, "{body}");
    for sample in family(&scrape, "salvage_incidents_found_total") {
        let status = labels(sample, "run_status");
        assert!(["failed", "waiting_for_approval", "paused"].contains(&status.as_str()), "{status}");
    }
    let planned = after["daemon"]["incidents"]["planned"].as_u64().expect("planned") as f64;
    let planned_in_metrics =
        counter_sum(&scrape, "salvage_incidents_handled_total", |s| labels(s, "outcome") == "planned");
    assert_eq!(planned_in_metrics, planned, "{body}");
    // By kind and outcome exactly as the incident records say.
    let sqlite = SqliteStore::open(dir.path().join("salvage.db")).await.expect("open the store");
    let mut recorded: BTreeMap<(String, String), f64> = BTreeMap::new();
    for record in sqlite.list_state(INCIDENT_PREFIX).await.expect("incident records") {
        let kind = record.body["incidentType"].as_str().unwrap_or("unclassified").to_owned();
        let state = record.body["state"].as_str().expect("a state").to_owned();
        *recorded.entry((kind, state)).or_default() += 1.0;
    }
    let mut measured: BTreeMap<(String, String), f64> = BTreeMap::new();
    for sample in family(&scrape, "salvage_incidents_handled_total") {
        let Metric::Counter(value) = sample.value else { panic!("not a counter: {sample:?}") };
        *measured.entry((labels(sample, "kind"), labels(sample, "outcome"))).or_default() += value;
    }
    assert_eq!(measured, recorded, "{body}");
    assert!(recorded.keys().any(|(kind, _)| kind != "unclassified"), "{recorded:?}");

    // Plan latency: the configured buckets, one observation per plan made.
    let plans = histograms(&scrape, "salvage_plan_duration_seconds");
    let (plan_labels, bounds, plans_made) = plans.iter().find(|(l, _, _)| l["outcome"] == "ok").expect("ok plans");
    assert_eq!(bounds, &vec![0.5, 2.0, 30.0, f64::INFINITY], "{plan_labels:?}");
    assert!(*plans_made >= planned, "{plans_made} plans for {planned} planned incidents");

    // Policy hooks, by hook and by the digest of the set that ran them.
    let hooks = histograms(&scrape, "salvage_policy_hook_duration_seconds");
    let hook_names: BTreeSet<&str> = hooks.iter().map(|(l, _, _)| l["hook"].as_str()).collect();
    assert!(hook_names.contains("classify"), "{hook_names:?}");
    assert!(hooks.iter().all(|(l, _, n)| l["policy_digest"] == first_policies && *n > 0.0), "{hooks:?}");

    // Steps of the dry runs, their journal commits, the executions they reached.
    let steps = histograms(&scrape, "salvage_step_duration_seconds");
    assert!(steps.iter().any(|(l, _, n)| l["mode"] == "advisory" && !l["action"].is_empty() && *n > 0.0), "{steps:?}");
    let commits = histograms(&scrape, "salvage_journal_commit_duration_seconds");
    assert!(commits.iter().any(|(l, _, n)| l["outcome"] == "ok" && *n > 0.0), "{commits:?}");
    let advisory = |s: &Sample| labels(s, "mode") == "advisory";
    assert!(counter_sum(&scrape, "salvage_executions_total", advisory) > 0.0, "{body}");
    assert!(counter_sum(&scrape, "salvage_executions_total", |s| labels(s, "status") == "running") > 0.0, "{body}");

    // Reloads and the active set: the new set is 1, the one it replaced 0.
    assert_eq!(counter_sum(&scrape, "salvage_reloads_total", |s| labels(s, "outcome") == "applied"), 1.0, "{body}");
    let sets = gauges(&scrape, "salvage_active_set_info");
    let value_of = |digest: &str| sets.iter().find(|(l, _)| l["policy_digest"] == digest).map(|(_, v)| *v);
    assert_eq!(value_of(&policies), Some(1.0), "{sets:?}");
    assert_eq!(value_of(&first_policies), Some(0.0), "{sets:?}");
    assert!(sets.iter().all(|(l, _)| l["playbook_set_digest"] == playbooks), "{sets:?}");

    // Gauges exist from the start; nothing waits in advisory mode once all is handled.
    assert_eq!(gauges(&scrape, "salvage_approvals_pending"), vec![(BTreeMap::new(), 0.0)]);
    assert_eq!(gauges(&scrape, "salvage_queue_depth"), vec![(BTreeMap::new(), 0.0)]);
    // Every family says what it is.
    for name in ["salvage_incidents_handled_total", "salvage_plan_duration_seconds", "salvage_active_set_info"] {
        assert!(scrape.docs.get(name).is_some_and(|doc| !doc.is_empty()), "no HELP for {name}");
    }

    // No label holds a run id.
    let values = all_label_values(&scrape);
    for run_id in example_run_ids() {
        let prefix = run_id.split(':').next().unwrap_or(&run_id).to_owned();
        assert!(values.iter().all(|v| !v.contains(&prefix)), "a label holds run id {run_id}: {values:?}");
    }
    daemon.stop();
}

#[test]
fn enforce_serve_measures_pending_approvals_and_how_long_an_answer_took() {
    let failed_invoice = Path::new(ROOT).join("examples/runs/aea53804-c3ca-53ed-8fc6-47ff46e44c8e.json");
    let (dir, store) =
        workspace_with(|dir| format!("sqlite:{}", dir.join("salvage.db").display()), "", &failed_invoice);
    let daemon = Daemon::start_in(dir.path(), &store, "enforce", &["--metrics", "127.0.0.1:0"]);
    let address = daemon.metrics_address();
    let pending = |scrape: &Scrape| gauges(scrape, "salvage_approvals_pending").first().map(|(_, v)| *v);
    let open = |scrape: &Scrape, status: &str| {
        gauges(scrape, "salvage_executions_open").iter().find(|(l, _)| l["status"] == status).map(|(_, v)| *v)
    };
    wait_for("one approval pending in the metrics", || {
        let scrape = parse(&scrape(address).1);
        (pending(&scrape) == Some(1.0) && open(&scrape, "waiting_for_approval") == Some(1.0)).then_some(())
    });
    let before = parse(&scrape(address).1);
    assert!(histograms(&before, "salvage_approval_wait_seconds").is_empty(), "nothing answered yet");

    let execution_id = status(dir.path(), &store)["pendingApprovals"][0]["executionId"]
        .as_str()
        .expect("the pending approval")
        .to_owned();
    // Another process answers (and resumes the execution itself).
    let approve = salvage(dir.path(), &store, &["approve", &execution_id, "ask_operator", "--as", "oncall-sre"]);
    assert!(approve.status.success(), "approve: {}", String::from_utf8_lossy(&approve.stderr));

    let waits = wait_for("the answered approval measured", || {
        let scrape = parse(&scrape(address).1);
        let waits = histograms(&scrape, "salvage_approval_wait_seconds");
        (pending(&scrape) == Some(0.0) && !waits.is_empty()).then_some(waits)
    });
    assert_eq!(waits.len(), 1, "{waits:?}");
    let (labels, bounds, count) = &waits[0];
    assert_eq!(labels["decision"], "approved", "{labels:?}");
    assert_eq!(*count, 1.0, "one approval, measured once");
    assert_eq!(bounds.first(), Some(&1.0), "the default approval buckets: {bounds:?}");
    // Still once a few ticks later.
    std::thread::sleep(Duration::from_secs(2));
    let later = histograms(&parse(&scrape(address).1), "salvage_approval_wait_seconds");
    assert_eq!(later.iter().map(|(_, _, n)| *n).sum::<f64>(), 1.0, "{later:?}");
    daemon.stop();
}

#[test]
fn a_failing_store_write_is_counted_by_backend_and_kind() {
    let (dir, store) = workspace(|dir| format!("file:{}", dir.join("runs").display()), "");
    let daemon = Daemon::start(dir.path(), &store, &["--metrics", "127.0.0.1:0"]);
    let address = daemon.metrics_address();
    let errors = |scrape: &Scrape| {
        counter_sum(scrape, "salvage_store_errors_total", |s| {
            labels(s, "backend") == "file" && labels(s, "kind") == "io"
        })
    };
    wait_for("the daemon's status document", || {
        dir.path().join("runs/.salvage/state/serve/status.json").is_file().then_some(())
    });
    assert_eq!(errors(&parse(&scrape(address).1)), 0.0, "no store error yet");
    // The daemon's status document becomes a directory: its next status write fails (the
    // rename onto it is refused), and the daemon goes on.
    // The daemon may write the document again between the removal and the mkdir: again, then.
    let status_document = dir.path().join("runs/.salvage/state/serve/status.json");
    wait_for("the status document replaced by a directory", || {
        if status_document.is_file() {
            std::fs::remove_file(&status_document).ok()?;
        }
        std::fs::create_dir_all(status_document.join("in-the-way")).ok()
    });
    wait_for("the failed writes counted", || (errors(&parse(&scrape(address).1)) > 0.0).then_some(()));
    let values = all_label_values(&parse(&scrape(address).1));
    assert!(values.iter().all(|v| !v.contains("runs")), "no path in labels: {values:?}");
    drop(daemon);
}

#[test]
fn serve_refuses_a_metrics_address_in_use_and_names_it() {
    let (dir, store) = workspace(|dir| format!("sqlite:{}", dir.join("salvage.db").display()), "");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let out = salvage(
        dir.path(),
        &store,
        &["serve", "--mode", "advisory", "--playbooks", "playbooks", "--policies", "policies", "--metrics", &address],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen for metrics on {address}")), "{stderr}");
    // It stopped before the daemon started: it never ran on this store.
    let status = salvage(dir.path(), &store, &["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).expect("status");
    assert_eq!(status["daemon"], Value::Null, "{status}");
}

#[test]
fn serve_takes_the_metrics_address_from_salvage_yaml_and_refuses_bad_buckets_with_their_place() {
    let config = "metrics:\n  listen: 127.0.0.1:0\n";
    let (dir, store) = workspace(|dir| format!("sqlite:{}", dir.join("salvage.db").display()), config);
    let daemon = Daemon::start(dir.path(), &store, &[]);
    let (_, body) = scrape(daemon.metrics_address());
    assert!(!gauges(&parse(&body), "salvage_queue_depth").is_empty(), "{body}");
    daemon.stop();

    std::fs::write(dir.path().join("salvage.yaml"), "metrics:\n  buckets:\n    step: [1, 10, 5]\n").expect("config");
    let out = salvage(dir.path(), &store, &["serve", "--metrics", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("salvage.yaml:3:19"), "the third bound is pointed at: {stderr}");
    assert!(stderr.contains("must be greater than the one before it"), "{stderr}");
}

#[test]
fn replicas_on_postgres_serve_the_same_metrics_and_handle_each_incident_once_between_them() {
    if !postgres::available() {
        return;
    }
    let schema = postgres::TestSchema::create();
    let (dir, store) = workspace(|_| schema.url.clone(), "");
    let first = Daemon::start(dir.path(), &store, &["--metrics", "127.0.0.1:0", "--lease-ttl", "3s"]);
    let second = Daemon::start(dir.path(), &store, &["--metrics", "127.0.0.1:0", "--lease-ttl", "3s"]);
    let addresses = [first.metrics_address(), second.metrics_address()];
    assert_ne!(addresses[0], addresses[1]);
    let handled = || -> f64 {
        addresses
            .iter()
            .map(|address| counter_sum(&parse(&scrape(*address).1), "salvage_incidents_handled_total", |_| true))
            .sum()
    };
    wait_for("every example incident handled by one replica or the other", || {
        (handled() == EXAMPLE_INCIDENTS as f64).then_some(())
    });
    for address in addresses {
        let scrape = parse(&scrape(address).1);
        assert_eq!(gauges(&scrape, "salvage_active_set_info").len(), 1, "each replica names its active set");
        let values = all_label_values(&scrape);
        assert!(!values.iter().any(|v| v.contains(&schema.url)), "no store URL in labels: {values:?}");
    }
    first.stop();
    second.stop();
}
