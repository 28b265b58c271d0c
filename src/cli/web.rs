//! `salvage web` (the API and the inbox alone) and the `--http` part of `salvage serve`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::plan::load_sets;
use super::{CliError, Context};
use crate::execute::config::RuntimeRegistry;
use crate::execute::identity::TrustedProxy;
use crate::serve::SetDirs;
use crate::web::{SetSource, WebOptions, WebState};

/// How long executions going on in `salvage web` get to reach the end of their step at shutdown.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Where `salvage web` listens when neither `--listen` nor `web.listen` says.
const DEFAULT_LISTEN: &str = "127.0.0.1:8089";

/// Binds the address before anything else starts: an address in use stops the command at once.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, CliError> {
    TcpListener::bind(address)
        .await
        .map_err(|error| CliError::input_msg(format!("cannot listen on {address}: {error} (choose another address)")))
}

/// Serves in the background; sending on the returned channel stops the server, and the
/// executions it let go on stop between steps.
pub fn start(
    cx: &mut Context<'_>,
    listener: TcpListener,
    options: WebOptions,
    command: &str,
) -> Result<(oneshot::Sender<()>, tokio::task::JoinHandle<()>), CliError> {
    let address = listener.local_addr().map_err(CliError::output)?;
    cx.console.note(format!("{command}: approvals and API at http://{address}/"));
    let (stop, stopped) = oneshot::channel::<()>();
    let state = WebState::new(options);
    let server = tokio::spawn(async move {
        let going_on = state.clone();
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(error) = crate::web::serve(listener, state, shutdown).await {
            tracing::error!(%error, "The HTTP server stopped.");
        }
        going_on.stop_going_on(SHUTDOWN_GRACE).await;
    });
    Ok((stop, server))
}

/// `salvage web [--listen ADDRESS]`.
pub async fn run(cx: &mut Context<'_>, listen: Option<SocketAddr>) -> Result<ExitCode, CliError> {
    let address = match listen.or(cx.config.web.listen) {
        Some(address) => address,
        None => DEFAULT_LISTEN
            .parse()
            .map_err(|error| CliError::input_msg(format!("bad default address {DEFAULT_LISTEN}: {error}")))?,
    };
    let listener = bind(address).await?;
    // The sets must load now (answers are checked against them); each answer reads them again.
    let dirs = SetDirs { playbooks: cx.config.playbooks.clone(), policies: cx.config.policies.clone() };
    load_sets(cx, Some(&dirs.playbooks), Some(&dirs.policies))?;
    let store = cx.write_store().await?;
    let registry = RuntimeRegistry::from_config(&cx.config.runtimes).map_err(CliError::input)?;
    let options = WebOptions {
        store,
        store_spec: cx.spec.to_string(),
        sets: SetSource::Disk(dirs),
        runtimes: Arc::new(registry),
        settings: cx.config.runner_settings(),
        proxy: TrustedProxy::from_config(&cx.config.web),
        go_on_here: true,
    };
    let (stop, server) = start(cx, listener, options, "salvage web")?;
    wait_for_stop().await.map_err(CliError::output)?;
    let _ = stop.send(());
    let _ = server.await;
    cx.console.note("salvage web stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or Ctrl-C.
async fn wait_for_stop() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result?,
    }
    Ok(())
}
