//! `serve` (the daemon) and `status` (what it is doing, from another process).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::json;

use super::console::heading;
use super::playbooks::print_diagnostics;
use super::{CliError, Context, Failure};
use crate::execute::config::RuntimeRegistry;
use crate::execute::{Mode, short_digest};
use crate::serve::metrics::MetricsEndpoint;
use crate::serve::replicas;
use crate::serve::status::{self, DaemonStatus, ExecutionLine};
use crate::serve::{
    Backend, Daemon, NoGate, ReloadGate, ReplicaSettings, ServeError, ServeOptions, SetDigests, SetDirs, SimulateGate,
    Timing,
};
use crate::simulate::SimulateOptions;
use crate::store::{PostgresStore, PostgresUrl, ReplicaRow, RunStore, StateStore};
use crate::web::views;

/// `--reload-gate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GateArg {
    /// Every clean set is applied.
    None,
    /// A clean set is first replayed against the active one over the 100 most recent
    /// incidents (`salvage simulate`); a dangerous change rejects it.
    Simulate,
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    Advisory,
    Enforce,
}

pub struct ServeRequest {
    pub mode: Option<ModeArg>,
    pub reload_gate: GateArg,
    pub workers: usize,
    pub queue: usize,
    pub actor: Option<String>,
    pub playbooks: Option<PathBuf>,
    pub policies: Option<PathBuf>,
    pub shutdown_grace_secs: u64,
    pub replicas: ReplicaSettings,
    /// `--metrics`: where to serve `/metrics` (else salvage.yaml's `metrics.listen`).
    pub metrics: Option<std::net::SocketAddr>,
    /// `--http`: where to serve the API and the inbox (else salvage.yaml's `web.listen`).
    pub http: Option<std::net::SocketAddr>,
}

pub async fn serve(cx: &mut Context<'_>, request: ServeRequest) -> Result<ExitCode, CliError> {
    let mode = match request.mode {
        Some(ModeArg::Advisory) => Mode::Advisory,
        Some(ModeArg::Enforce) => Mode::Enforce,
        None => cx.config.mode,
    };
    if request.workers == 0 {
        return Err(CliError::input_msg("--workers must be at least 1"));
    }
    if request.replicas.lease_ttl < std::time::Duration::from_secs(1) {
        return Err(CliError::input_msg(
            "--lease-ttl must be at least 1s (a replica renews every third of it; shorter leases are lost to ordinary \
             database latency)",
        ));
    }
    // Bound before anything else starts: an address in use stops `serve` at once.
    let metrics = match request.metrics.or(cx.config.metrics.listen) {
        Some(address) => {
            Some(MetricsEndpoint::start(address, &cx.config.metrics.buckets).await.map_err(CliError::input)?)
        }
        None => None,
    };
    let http = match request.http.or(cx.config.web.listen) {
        Some(address) => Some(super::web::bind(address).await?),
        None => None,
    };
    let backend = Backend::open(&cx.spec).await?;
    let gate: Arc<dyn ReloadGate> = match request.reload_gate {
        GateArg::None => Arc::new(NoGate),
        GateArg::Simulate => Arc::new(SimulateGate::new(backend.store(), SimulateOptions::default())),
    };
    let registry = RuntimeRegistry::from_config(&cx.config.runtimes).map_err(CliError::input)?;
    let runtimes: Arc<dyn crate::execute::ResolveRuntime> = Arc::new(registry);
    let settings = cx.config.runner_settings();
    let timing =
        Timing { shutdown_grace: std::time::Duration::from_secs(request.shutdown_grace_secs), ..Timing::default() };
    let options = ServeOptions {
        dirs: SetDirs {
            playbooks: request.playbooks.unwrap_or_else(|| cx.config.playbooks.clone()),
            policies: request.policies.unwrap_or_else(|| cx.config.policies.clone()),
        },
        mode,
        workers: request.workers,
        queue_capacity: request.queue,
        actor: request.actor.unwrap_or_else(|| "salvage-serve".to_owned()),
        settings: settings.clone(),
        runtimes: runtimes.clone(),
        gate,
        timing,
        watch_sets: true,
        replicas: request.replicas,
    };
    let daemon = match Daemon::start(backend, options).await {
        Ok(daemon) => daemon,
        Err(error @ ServeError::Sets(_)) => {
            print_diagnostics(cx, error.diagnostics());
            return Err(CliError::input(error));
        }
        Err(error @ ServeError::AlreadyRunning { .. }) => return Err(CliError::input(error)),
        Err(ServeError::Store(error)) => return Err(error.into()),
    };
    let handle = daemon.handle();
    let signals = install_signals(handle.clone()).map_err(CliError::output)?;
    let shared = if daemon.replica_id().is_some() { ", one replica of several" } else { "" };
    cx.console.note(format!(
        "salvage serve: pid {}, {mode} mode, store {}{shared}, {} worker(s); SIGHUP reloads, SIGTERM stops",
        std::process::id(),
        cx.spec,
        request.workers
    ));
    if let Some(endpoint) = &metrics {
        cx.console.note(format!("salvage serve: metrics at http://{}/metrics", endpoint.address()));
    }
    // The API and the inbox answer with the daemon's live set; the daemon resumes what they answer.
    let (web_stop, web) = match http {
        Some(listener) => {
            let options = crate::web::WebOptions {
                store: daemon.store(),
                store_spec: cx.spec.to_string(),
                sets: crate::web::SetSource::Daemon(handle.reloader().clone()),
                runtimes,
                settings,
                proxy: crate::execute::identity::TrustedProxy::from_config(&cx.config.web),
                go_on_here: false,
            };
            let (stop, server) = super::web::start(cx, listener, options, "salvage serve")?;
            (Some(stop), Some(server))
        }
        None => (None, None),
    };
    let result = daemon.run().await;
    signals.abort();
    if let (Some(stop), Some(server)) = (web_stop, web) {
        let _ = stop.send(());
        let _ = server.await;
    }
    match result {
        Ok(summary) => {
            cx.console.note(format!("salvage serve stopped ({} incident(s) handled)", summary.handled));
            Ok(ExitCode::SUCCESS)
        }
        Err(ServeError::Store(error)) => Err(error.into()),
        Err(error) => Err(CliError::input(error)),
    }
}

/// SIGTERM / SIGINT stop the daemon, SIGHUP reloads the sets.
fn install_signals(handle: crate::serve::DaemonHandle) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping."); handle.stop(); }
                _ = interrupt.recv() => { tracing::info!("Interrupted: stopping."); handle.stop(); }
                _ = hangup.recv() => {
                    let handle = handle.clone();
                    tokio::spawn(async move { handle.reload("sighup").await; });
                }
            }
        }
    }))
}

fn digests_text(digests: &SetDigests) -> String {
    format!(
        "policies {}  playbooks {}",
        short_digest(&digests.policy_digest),
        short_digest(&digests.playbook_set_digest)
    )
}

pub async fn status(cx: &mut Context<'_>, json_output: bool) -> Result<ExitCode, CliError> {
    if let crate::store::StoreSpec::Postgres(url) = &cx.spec {
        let url = url.clone();
        return replicas_status(cx, &url, json_output).await;
    }
    let store = cx.read_store().await?;
    let fallback = SetDirs { playbooks: cx.config.playbooks.clone(), policies: cx.config.policies.clone() };
    let status = views::DaemonView::read(store.as_ref(), fallback).await?;
    let views::DaemonView { daemon, waiting, in_flight, linked, on_disk, differs, alive } = &status;
    if json_output {
        cx.console.json(&status.to_json())?;
    } else {
        print_status(cx, daemon.as_ref(), *alive, on_disk, *differs, waiting, in_flight)?;
        print_linked(cx, linked)?;
    }
    Ok(if *alive { ExitCode::SUCCESS } else { Failure::CheckFailed.into() })
}

/// Later failures in recovery families: which recovery each one is linked to.
fn print_linked(cx: &mut Context<'_>, linked: &[status::LinkedIncident]) -> Result<(), CliError> {
    if linked.is_empty() {
        return Ok(());
    }
    cx.console.line(format!("linked incidents (most recent {}):", linked.len()))?;
    for incident in linked {
        cx.console.line(format!(
            "  run {} ({}) — {} {} of run {}: {}",
            incident.run_id,
            incident.state,
            incident.relation,
            incident.execution_id,
            incident.incident_run_id,
            incident.outcome.as_deref().unwrap_or("in progress")
        ))?;
    }
    Ok(())
}

fn print_status(
    cx: &mut Context<'_>,
    daemon: Option<&DaemonStatus>,
    alive: bool,
    on_disk: &Result<crate::plan::RecoverySet, crate::plan::RecoverySetError>,
    differs: Option<bool>,
    waiting: &[ExecutionLine],
    in_flight: &[ExecutionLine],
) -> Result<(), CliError> {
    let c = &mut *cx.console;
    match daemon {
        None => c.line("salvage serve: never ran on this store")?,
        Some(d) => {
            let state = if alive {
                format!("running (pid {} on {}, since {})", d.pid, d.host, d.started_at)
            } else {
                format!(
                    "not running (last: pid {} on {}, {})",
                    d.pid,
                    d.host,
                    d.stopped_at.as_deref().unwrap_or(&d.heartbeat_at)
                )
            };
            c.line(heading(format!("salvage serve: {state}")))?;
            c.line(format!(
                "  mode {}, {} worker(s), reload gate {}, store {}",
                d.mode, d.workers, d.reload_gate, d.store
            ))?;
            c.line(format!("  active set: {} (since {})", digests_text(&d.active), d.active_since))?;
            let disk = match (on_disk, differs) {
                (Err(error), _) => format!("does not load ({} diagnostic(s)): {error}", error.diagnostics().len()),
                (Ok(_), Some(false)) => "same as active".to_owned(),
                (Ok(set), _) => format!("DIFFERS from active: {}", digests_text(&SetDigests::of(set))),
            };
            c.line(format!("  on disk:    {disk}"))?;
            match &d.last_reload {
                None => c.line("  last reload: none since start")?,
                Some(r) => {
                    c.line(format!("  last reload: {} {} ({}, {} ms)", r.at, r.outcome, r.trigger, r.duration_ms))?;
                    if let Some(reason) = &r.reason {
                        c.line(format!("    {reason}"))?;
                    }
                    for diagnostic in &r.diagnostics {
                        c.line(format!("    {diagnostic}"))?;
                    }
                }
            }
            if let Some(awaiting) = &d.awaiting_acceptance {
                c.line(format!(
                    "  awaiting acceptance: {} (since {}, {})",
                    digests_text(&awaiting.proposed),
                    awaiting.since,
                    awaiting.trigger
                ))?;
                c.line(format!("    {}", awaiting.reason))?;
                c.line("    apply it anyway with `salvage reload --accept [--as NAME]`")?;
            }
            if let Some(accepted) = d.last_reload.as_ref().and_then(|r| r.accepted.as_ref()) {
                c.line(format!("  last reload accepted by {} at {}", accepted.by, accepted.at))?;
            }
            c.line(format!(
                "  reloads: {} applied, {} unchanged, {} rejected",
                d.reloads.applied, d.reloads.unchanged, d.reloads.rejected
            ))?;
            let n = |name: &str| d.incidents[name].as_u64().unwrap_or(0);
            c.line(format!(
                "  incidents: {} handled ({} planned, {} executed, {} failed), {} in flight, {} queued",
                n("handled"),
                n("planned"),
                n("executed"),
                n("failed"),
                n("inFlight"),
                n("queued")
            ))?;
        }
    }
    print_executions(c, waiting, in_flight)
}

fn print_executions(
    c: &mut super::console::Console,
    waiting: &[ExecutionLine],
    in_flight: &[ExecutionLine],
) -> Result<(), CliError> {
    c.line(format!("pending approvals: {}", waiting.len()))?;
    for line in waiting {
        c.line(format!(
            "  {} step {} of run {} (approvers: {})",
            line.execution_id,
            line.step.as_deref().unwrap_or("?"),
            line.run_id,
            if line.approvers.is_empty() { "salvage.yaml".to_owned() } else { line.approvers.join(", ") }
        ))?;
    }
    c.line(format!("executions in flight: {}", in_flight.len()))?;
    for line in in_flight {
        c.line(format!(
            "  {} {} at {} (run {}, updated {})",
            line.execution_id,
            line.status,
            line.step.as_deref().unwrap_or("-"),
            line.run_id,
            line.updated_at
        ))?;
    }
    Ok(())
}

/// A replica as `status` shows it: the store's row and the replica's own status document.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ReplicaLine {
    #[serde(flatten)]
    row: ReplicaRow,
    leader: bool,
    status: Option<DaemonStatus>,
}

/// `status` on a `postgres://` store: every replica, the leader, whether their sets differ.
async fn replicas_status(cx: &mut Context<'_>, url: &PostgresUrl, json_output: bool) -> Result<ExitCode, CliError> {
    let store = PostgresStore::open(url).await?;
    let mut documents = std::collections::HashMap::new();
    for record in store.list_state(replicas::REPLICA_STATUS_PREFIX).await? {
        match serde_json::from_value::<DaemonStatus>(record.body) {
            Ok(status) => {
                if let Some(replica) = &status.replica {
                    documents.insert(replica.id.clone(), status);
                }
            }
            Err(error) => tracing::warn!(key = %record.key, %error, "A replica's status document cannot be read."),
        }
    }
    // Alive = a heartbeat within the longest lease any replica uses.
    let ttl = documents
        .values()
        .filter_map(|d| d.replica.as_ref().map(|r| std::time::Duration::from_millis(r.lease_ttl_ms)))
        .max()
        .unwrap_or_else(|| ReplicaSettings::default().lease_ttl);
    let rows = store.replicas(ttl).await?;
    let leader = store.leader(replicas::HOUSEKEEPING).await?;
    let (waiting, in_flight) = status::executions(&store).await?;
    let linked = status::linked_incidents(&store, 20).await?;
    let running: Vec<&ReplicaRow> = rows.iter().filter(|row| row.alive).collect();
    let sets: std::collections::BTreeSet<(&str, &str)> =
        running.iter().map(|row| (row.policy_digest.as_str(), row.playbook_set_digest.as_str())).collect();
    let lines: Vec<ReplicaLine> = rows
        .iter()
        .map(|row| ReplicaLine {
            leader: leader.as_ref().is_some_and(|l| l.holder == row.id),
            status: documents.get(&row.id).cloned(),
            row: row.clone(),
        })
        .collect();
    if json_output {
        cx.console.json(&json!({
            "running": !running.is_empty(),
            "replicas": lines,
            "leader": leader,
            "sameSet": sets.len() <= 1,
            "pendingApprovals": waiting,
            "executionsInFlight": in_flight,
            "linkedIncidents": linked,
        }))?;
    } else {
        let c = &mut *cx.console;
        let leads = match &leader {
            Some(l) => format!("leader {} (term {})", l.holder, l.term),
            None => "no leader".to_owned(),
        };
        c.line(heading(format!("salvage serve: {} replica(s) running on {}, {leads}", running.len(), store.spec())))?;
        for line in &lines {
            let row = &line.row;
            let state = match (&row.stopped_at, row.alive) {
                (Some(at), _) => format!("stopped {at}"),
                (None, true) => format!("heartbeat {}", row.heartbeat_at),
                (None, false) => format!("NOT RESPONDING since {}", row.heartbeat_at),
            };
            c.line(format!(
                "  {}{} pid {} on {}, {}, policies {} playbooks {}, {} lease(s), {state}",
                row.id,
                if line.leader { " [leader]" } else { "" },
                row.pid,
                row.host,
                row.mode,
                short_digest(&row.policy_digest),
                short_digest(&row.playbook_set_digest),
                row.claims_held,
            ))?;
            if let Some(replica) = line.status.as_ref().filter(|_| row.alive) {
                let n = |name: &str| replica.incidents[name].as_u64().unwrap_or(0);
                let counts = replica.replica.as_ref();
                c.line(format!(
                    "      {} handled, {} executed, {} in flight; {} taken over, {} lease(s) lost, {} fenced write(s) refused",
                    n("handled"),
                    n("executed"),
                    n("inFlight"),
                    counts.map_or(0, |r| r.takeovers),
                    counts.map_or(0, |r| r.leases_lost),
                    counts.map_or(0, |r| r.fenced_rejections),
                ))?;
                if let Some(why) = counts.and_then(|r| r.refusing_incidents.as_deref()) {
                    c.line(format!("      refusing incidents: {why}"))?;
                }
            }
        }
        if sets.len() > 1 {
            c.line(format!(
                "  DIFFERENT SETS: the running replicas use {} sets; reload them (SIGHUP) to the same files",
                sets.len()
            ))?;
        } else if !running.is_empty() {
            c.line("  every running replica uses the same set")?;
        }
        print_executions(c, &waiting, &in_flight)?;
        print_linked(cx, &linked)?;
    }
    Ok(if running.is_empty() { Failure::CheckFailed.into() } else { ExitCode::SUCCESS })
}
