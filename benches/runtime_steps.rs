//! Steps per second against a live runtime (issue "Acting exactly once against live runtimes"):
//! the runner driving the reference-like runtime server of the tests (`tests/runtime_server`,
//! an axum service writing a `FileRunStore` directory) through the `http` runtime in the
//! `agnostic-agents` protocol, with salvage reading that directory as its `file:` store.
//!
//! Each incident is a failed tool run recovered by a two-step playbook: branch from the
//! checkpoint before the tool (`POST /runs/:id/branch`, the server creates the run), then resume
//! the branch (`POST /runs/:id/resume`: the server's agent runs the tool and completes it). Every
//! effect step re-reads its run through the runtime first (`GET /runs/:id`), journals an intent
//! and an outcome, and the end is verified on the resumed run. Enforce mode does all of it;
//! advisory mode goes through the same planner and runner but simulates the runtime's actions
//! in an overlay (it still reads runs through the runtime).
//!
//! `cargo bench --bench runtime_steps` (`SALVAGE_BENCH_INCIDENTS`, default 100).

#[path = "../tests/runtime_server/mod.rs"]
mod runtime_server;

#[path = "common/one_playbook.rs"]
mod one_playbook;

use std::sync::Arc;
use std::time::Instant;

use salvage::execute::config::{AdapterConfig, RuntimeRegistry, RuntimesConfig};
use salvage::execute::{HttpRuntimeConfig, Mode, Runner, RunnerSettings, RuntimeProtocol};
use salvage::store::{FileStore, Store};
use serde_json::json;

use runtime_server::{RuntimeServer, ServerOptions, ToolPolicy};

const PLAYBOOK: &str = "playbook: branch-resume\nversion: 1\ndescription: Branch and resume.\n\
match: { incident: tool_failure }\npriority: 1000\nstart: branch\nsteps:\n\
\x20 branch:\n    action: branch_from_checkpoint\n    description: d\n    checkpoint: policy.choose_checkpoint\n    approval: never\n    why: benchmark\n    on: { ok: resume, failed: escalated }\n\
\x20 resume:\n    action: resume_run\n    description: d\n    target: branch\n    approval: never\n    why: benchmark\n    on: { ok: resolved, failed: escalated }\n\
ends:\n  resolved: { outcome: resolved }\n  escalated: { outcome: escalated }\n";

/// Runtime steps per incident (branch, resume).
const STEPS: usize = 2;

fn main() {
    let one_playbook::Setup { incidents, work, set } = one_playbook::setup("branch-resume", PLAYBOOK);

    println!("runtime steps: {incidents} failed tool runs, each recovered by branch + resume through the");
    println!("http runtime (agnostic-agents protocol) against the reference-like test server on 127.0.0.1");
    println!(
        "{:>9}  {:>10}  {:>10}  {:>12}  {:>10}  {:>10}",
        "mode", "incidents", "total", "steps/s", "p50/step", "p99/step"
    );
    for mode in [Mode::Enforce, Mode::Advisory] {
        let store_dir = work.path().join(format!("runs-{mode}"));
        let server = RuntimeServer::start(
            ServerOptions::new().store_dir(&store_dir).policy("send_invoice", ToolPolicy::fail_first(1)),
        );
        let runs: Vec<String> = (0..incidents)
            .map(|n| {
                server.create_run(json!({"task": "send_invoice", "invoiceId": format!("INV-{n}"), "amount": 10}))["id"]
                    .as_str()
                    .expect("id")
                    .to_owned()
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        let (total, per_step) = runtime.block_on(async {
            let store: Arc<dyn Store> = Arc::new(FileStore::open(&store_dir).await.expect("store"));
            let config = RuntimesConfig {
                agent: Some("reference".into()),
                workflow: Some("reference".into()),
                adapters: [(
                    "reference".to_owned(),
                    AdapterConfig::Http(HttpRuntimeConfig {
                        protocol: RuntimeProtocol::AgnosticAgents,
                        base_url: Some(server.base_url().to_owned()),
                        ..HttpRuntimeConfig::default()
                    }),
                )]
                .into(),
                ..RuntimesConfig::default()
            };
            let registry = Arc::new(RuntimeRegistry::from_config(&config).expect("runtimes"));
            let settings = RunnerSettings { export_dir: work.path().join("bundles"), ..RunnerSettings::default() };
            let planner = set.planner(store.clone());
            let runner = Runner::new(
                store.clone(),
                set.policies.clone(),
                set.playbooks.clone(),
                registry,
                settings,
                mode,
                "bench",
            );
            let mut per_step = Vec::new();
            let started = Instant::now();
            for run in &runs {
                let plan = planner.plan(run, None).await.expect("plan").to_value();
                let one = Instant::now();
                let report = runner.apply(&plan).await.expect("apply");
                assert_eq!(report.execution.status.as_str(), "resolved", "{run}: {:?}", report.steps);
                per_step.push(one.elapsed() / STEPS as u32);
            }
            (started.elapsed(), per_step)
        });
        let mut sorted = per_step.clone();
        sorted.sort();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        println!(
            "{:>9}  {:>10}  {:>10}  {:>12.1}  {:>10}  {:>10}",
            mode.to_string(),
            incidents,
            format!("{:.2} s", total.as_secs_f64()),
            (incidents * STEPS) as f64 / total.as_secs_f64(),
            format!("{:.1} ms", at(0.5).as_secs_f64() * 1000.0),
            format!("{:.1} ms", at(0.99).as_secs_f64() * 1000.0),
        );
        if mode == Mode::Enforce {
            assert!(server.duplicate_writes().is_empty());
            assert_eq!(server.external_writes().len(), incidents, "one write per incident");
        }
        server.stop();
    }
}
