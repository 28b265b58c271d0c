//! What sending notifications costs a recovery: failed runs recovered by a one-step playbook
//! whose `notify` step goes to a signed webhook, a Slack-compatible webhook and a PagerDuty
//! Events endpoint (all the local receiver of the tests, on 127.0.0.1), against the same
//! playbook with no channel configured (the message only logged). Each delivery journals an
//! intent and a delivery record in the SQLite store, signs (webhook) and POSTs. Timed: the
//! whole run (plan + apply per incident) and each `apply` (the execution: started, the step's
//! intent, its deliveries, its outcome, the end).
//!
//! `cargo bench --bench notifications` (`SALVAGE_BENCH_INCIDENTS`, default 100).

#[path = "../tests/common/receiver.rs"]
mod receiver;

#[path = "common/one_playbook.rs"]
mod one_playbook;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use salvage::execute::{Mode, Runner, RuntimeRegistry, SalvageConfig};
use salvage::model::Run;
use salvage::store::{Expected, SqliteStore, Store};
use serde_json::Value;

const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";

const PLAYBOOK: &str = "playbook: tell\nversion: 1\ndescription: Tells people.\n\
match: { incident: tool_failure }\npriority: 1000\nstart: tell\nsteps:\n\
\x20 tell:\n    action: notify\n    description: d\n    message: The invoice run failed.\n    next: escalated\n\
ends:\n  escalated: { outcome: escalated }\n";

fn main() {
    let one_playbook::Setup { incidents, work, set } = one_playbook::setup("tell", PLAYBOOK);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let template: Value = serde_json::from_slice(
        &std::fs::read(root.join(format!("examples/runs/{FAILED_INVOICE}.json"))).expect("read"),
    )
    .expect("json");
    // SAFETY: set before the runtime starts and before anything reads the environment.
    unsafe { std::env::set_var("SALVAGE_BENCH_SECRET", "bench-secret") };
    unsafe { std::env::set_var("SALVAGE_BENCH_PD_KEY", "bench-key") };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");

    println!("notifications: {incidents} failed runs, each recovered by one `notify` step (SQLite store)");
    println!("{:>27}  {:>10}  {:>12}  {:>12}  {:>12}", "channels", "total", "incidents/s", "p50/apply", "p99/apply");
    for (label, channels) in [("none (only logged)", 0), ("webhook + slack + pagerduty", 3)] {
        let receiver = receiver::Receiver::start(&[]);
        let mut config = String::from("notifications:\n  channels:\n");
        if channels > 0 {
            config.push_str(&format!(
                "    hook: {{type: webhook, url: \"{}\", secret_env: SALVAGE_BENCH_SECRET, events: [notify]}}\n\
                 \x20   chat: {{type: slack, url: \"{}\"}}\n\
                 \x20   page: {{type: pagerduty, routing_key_env: SALVAGE_BENCH_PD_KEY, events_url: \"{}\", events: []}}\n\
                 \x20 default: null\n",
                receiver.url("/hook"),
                receiver.url("/slack"),
                receiver.url("/pd")
            ));
        }
        let config = SalvageConfig::parse(Path::new("salvage.yaml"), &config).expect("config");
        let dir = work.path().join(format!("store-{channels}"));
        std::fs::create_dir(&dir).expect("mkdir");
        let (elapsed, mut per_step) = runtime.block_on(async {
            let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.join("salvage.db")).await.expect("open"));
            let runs: Vec<Run> = (0..incidents)
                .map(|n| {
                    let mut value = template.clone();
                    value["id"] = Value::String(format!("bench-{n:05}"));
                    Run::from_value(value).expect("run")
                })
                .collect();
            store.save_all(&runs, Expected::Any).await.expect("save");
            let mut settings = config.runner_settings();
            settings.export_dir = dir.join("bundles");
            let runner = Runner::new(
                store.clone(),
                set.policies.clone(),
                set.playbooks.clone(),
                Arc::new(RuntimeRegistry::default()),
                settings,
                Mode::Enforce,
                "bench",
            );
            let planner = salvage::plan::Planner::new(store.clone(), set.policies.clone(), set.playbooks.clone());
            let mut per_step = Vec::with_capacity(incidents);
            let started = Instant::now();
            for run in &runs {
                let plan = planner.plan(&run.id, None).await.expect("plan").to_value();
                let applying = Instant::now();
                let report = runner.apply(&plan).await.expect("apply");
                per_step.push(applying.elapsed());
                assert_eq!(report.steps[0].outcome, "ok", "{:?}", report.steps[0].detail);
            }
            let elapsed = started.elapsed();
            (elapsed, per_step)
        });
        per_step.sort();
        let quantile =
            |q: f64| per_step.get(((per_step.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default();
        println!(
            "{label:>27}  {:>10.2?}  {:>12.1}  {:>12.2?}  {:>12.2?}",
            elapsed,
            incidents as f64 / elapsed.as_secs_f64(),
            quantile(0.5),
            quantile(0.99)
        );
        assert_eq!(receiver.requests().len(), incidents * channels, "every channel got every notification once");
    }
}
