//! `salvage reload [--accept [--as NAME]]`: ask the running daemon to reload its sets, first
//! accepting the set its reload gate refused when asked to.

use std::process::ExitCode;

use serde_json::json;

use super::{CliError, Context};
use crate::serve::reload::{accept, awaiting_acceptance};
use crate::serve::status::{self, DaemonStatus};

pub async fn reload(
    cx: &mut Context<'_>,
    accepting: bool,
    actor: Option<&str>,
    token: Option<&str>,
    json_output: bool,
) -> Result<ExitCode, CliError> {
    let store = cx.write_store().await?;
    let accepted = if accepting {
        let Some(awaiting) = awaiting_acceptance(store.as_ref()).await? else {
            return Err(CliError::input_msg(
                "no recovery set waits for acceptance on this store (`salvage status` shows what the reload gate \
                 refused)",
            ));
        };
        let by = super::execute::person(cx, &store, actor, token).await?.name;
        Some(accept(store.as_ref(), awaiting.proposed, &by).await?)
    } else {
        None
    };
    let daemon = status::read(store.as_ref()).await?.filter(DaemonStatus::alive);
    if daemon.is_none() && accepted.is_none() {
        return Err(CliError::check_failed(
            "no salvage serve runs on this store: there is nothing to reload (a daemon loads the sets when it starts)",
        ));
    }
    let signalled = daemon.as_ref().is_some_and(|daemon| daemon.host == status::hostname() && sighup(daemon.pid));
    if json_output {
        cx.console.json(&json!({
            "accepted": accepted,
            "daemonPid": daemon.as_ref().map(|d| d.pid),
            "signalled": signalled,
        }))?;
    } else {
        if let Some(accepted) = &accepted {
            cx.console.line(format!(
                "accepted the set with policies {} and playbooks {} (by {} at {})",
                crate::execute::short_digest(&accepted.set.policy_digest),
                crate::execute::short_digest(&accepted.set.playbook_set_digest),
                accepted.by,
                accepted.at
            ))?;
        }
        match (&daemon, signalled) {
            (Some(daemon), true) => {
                cx.console.line(format!("asked salvage serve (pid {}) to reload now", daemon.pid))?
            }
            (Some(daemon), false) => cx.console.line(format!(
                "salvage serve runs on {} (pid {}): it applies this at its next reload (send it SIGHUP there)",
                daemon.host, daemon.pid
            ))?,
            (None, _) => cx.console.line("salvage serve is not running: the next one to start applies this")?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP to the daemon's process; false when it cannot be sent.
fn sighup(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else { return false };
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).is_ok()
}
