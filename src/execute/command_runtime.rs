//! The `command` runtime: runs a configured program per action.
//!
//! The program gets the [`ActionRequest`] as JSON on stdin (and the main fields as
//! `SALVAGE_*` environment variables, for shell scripts) and answers on stdout:
//! - nothing, with exit status 0: outcome `ok`;
//! - a JSON object `{"outcome": "...", "createdRunId": "...", "detail": ...}` with exit
//!   status 0: that outcome (it must be one of the action's outcomes);
//! - a non-zero exit status, or no exit before the timeout: outcome `failed`, with the exit
//!   status and the end of stderr in `detail` (kept in the journal).
//!
//! The program runs in its own process group; on a timeout the whole group is terminated
//! (SIGTERM, then SIGKILL after a short grace), and once the program exits anything it left
//! running in its group is killed, so no stray process outlives its action.
//!
//! A program that cannot be started, or that exits 0 with something on stdout that is not a
//! valid answer, is an `Err` ([`RuntimeError::Failed`]): the runner cannot know what happened.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::runtime::{ActionRequest, ActionResult, Runtime, RuntimeError};
use crate::playbook::Action;
use crate::store::RunStore;

/// How much of stdout a program may answer with.
pub const MAX_STDOUT_BYTES: usize = 1024 * 1024;
/// How much of stderr is kept (its end: that is where the error usually is).
pub const KEPT_STDERR_BYTES: usize = 8 * 1024;
/// Default time a program may run.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Between SIGTERM and SIGKILL when a program overruns its timeout.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// One configured program.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommandAction {
    /// The program and its arguments (no shell is involved).
    pub command: Vec<String>,
    /// Overrides the runtime's timeout for this action.
    #[serde(default, with = "super::config::optional_millis")]
    pub timeout: Option<Duration>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Where the program runs (default: salvage's working directory).
    pub working_dir: Option<PathBuf>,
}

/// The `command` runtime's configuration (`kind: command` in `salvage.yaml`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommandRuntimeConfig {
    #[serde(with = "super::config::millis")]
    pub timeout: Duration,
    pub actions: BTreeMap<Action, CommandAction>,
}

impl Default for CommandRuntimeConfig {
    fn default() -> Self {
        CommandRuntimeConfig { timeout: DEFAULT_COMMAND_TIMEOUT, actions: BTreeMap::new() }
    }
}

/// Runs a configured program per action.
#[derive(Debug, Clone)]
pub struct CommandRuntime {
    name: String,
    config: CommandRuntimeConfig,
}

impl CommandRuntime {
    /// `name` is the runtime's name in `salvage.yaml` (for messages).
    pub fn new(name: impl Into<String>, config: CommandRuntimeConfig) -> CommandRuntime {
        CommandRuntime { name: name.into(), config }
    }

    fn error(&self, message: impl Into<String>) -> RuntimeError {
        RuntimeError::Failed { runtime: format!("command runtime `{}`", self.name), message: message.into() }
    }

    /// An error raised before the program ran: the action certainly had no effect.
    fn not_started(&self, message: impl Into<String>) -> RuntimeError {
        RuntimeError::BeforeEffect { runtime: format!("command runtime `{}`", self.name), message: message.into() }
    }
}

#[async_trait]
impl Runtime for CommandRuntime {
    fn describe(&self) -> String {
        let programs: Vec<String> = self
            .config
            .actions
            .iter()
            .map(|(action, spec)| format!("{action}={}", spec.command.first().map_or("", String::as_str)))
            .collect();
        format!("command {} ({})", self.name, programs.join(", "))
    }

    fn carries_out(&self, action: Action) -> bool {
        self.config.actions.contains_key(&action)
    }

    async fn perform(&self, request: &ActionRequest, _runs: &dyn RunStore) -> Result<ActionResult, RuntimeError> {
        let Some(spec) = self.config.actions.get(&request.action) else {
            return Err(RuntimeError::Unsupported {
                runtime: format!("command runtime `{}`", self.name),
                action: request.action.name().to_owned(),
            });
        };
        let Some((program, args)) = spec.command.split_first() else {
            return Err(self.not_started(format!("no program is configured for `{}`", request.action)));
        };
        let timeout = spec.timeout.unwrap_or(self.config.timeout);
        let body =
            serde_json::to_vec(request).map_err(|e| self.not_started(format!("cannot encode the request: {e}")))?;

        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .envs(&spec.env)
            .env("SALVAGE_ACTION", request.action.name())
            .env("SALVAGE_PLAN_ACTION", &request.plan_action)
            .env("SALVAGE_RUN_ID", &request.run_id)
            .env("SALVAGE_EXECUTION_ID", &request.execution_id)
            .env("SALVAGE_PLAN_ID", &request.plan_id)
            .env("SALVAGE_STEP_ID", &request.step_id)
            .env("SALVAGE_ATTEMPT", request.attempt.to_string())
            .env("SALVAGE_IDEMPOTENCY_KEY", &request.idempotency_key)
            .env(
                "SALVAGE_CHECKPOINT_ID",
                request.payload.get("checkpointId").and_then(Value::as_str).unwrap_or_default(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(new_run_id) = &request.new_run_id {
            command.env("SALVAGE_NEW_RUN_ID", new_run_id);
        }
        if let Some(dir) = &spec.working_dir {
            command.current_dir(dir);
        }
        #[cfg(unix)]
        command.process_group(0);

        let mut child = command
            .spawn()
            .map_err(|e| self.not_started(format!("cannot start `{program}` for `{}`: {e}", request.action)))?;
        let group = child.id();
        tracing::info!(runtime = %self.name, action = %request.action, program = %program, pid = ?group, "command runtime: started");

        let stdin = child.stdin.take();
        let writer = tokio::spawn(async move {
            if let Some(mut stdin) = stdin {
                // A program that does not read its input closes the pipe: that is its business.
                let _ = stdin.write_all(&body).await;
                let _ = stdin.shutdown().await;
            }
        });
        let stdout = child.stdout.take().map(|out| tokio::spawn(capture(out, Keep::Head(MAX_STDOUT_BYTES + 1))));
        let stderr = child.stderr.take().map(|err| tokio::spawn(capture(err, Keep::Tail(KEPT_STDERR_BYTES))));

        let status = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => {
                // Whatever the program left running in its group goes with it.
                signal_group(group, Signal::Kill);
                Some(status.map_err(|e| self.error(format!("waiting for `{program}` failed: {e}")))?)
            }
            Err(_) => {
                tracing::warn!(runtime = %self.name, action = %request.action, ?timeout, "command runtime: timed out; terminating the process group");
                signal_group(group, Signal::Term);
                if tokio::time::timeout(KILL_GRACE.min(timeout), child.wait()).await.is_err() {
                    signal_group(group, Signal::Kill);
                    let _ = child.kill().await;
                }
                signal_group(group, Signal::Kill);
                None
            }
        };
        writer.abort();
        let stdout = join_capture(stdout).await;
        let stderr = join_capture(stderr).await;
        let stderr_text = stderr.text();

        let Some(status) = status else {
            return Ok(ActionResult::failed(json!({
                "message": format!("`{program}` did not finish within {}", human(timeout)),
                "timedOut": true,
                "timeoutMs": u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                "stderr": stderr_text,
            })));
        };
        if !status.success() {
            return Ok(ActionResult::failed(json!({
                "message": format!("`{program}` {}", describe_exit(status)),
                "exitCode": status.code(),
                "signal": exit_signal(status),
                "stderr": stderr_text,
                "stdout": stdout.text_bounded(KEPT_STDERR_BYTES),
            })));
        }
        if stdout.total > MAX_STDOUT_BYTES {
            return Err(self.error(format!(
                "`{program}` wrote {} bytes on stdout; an answer is at most {MAX_STDOUT_BYTES} bytes",
                stdout.total
            )));
        }
        let answer = String::from_utf8_lossy(&stdout.bytes);
        if answer.trim().is_empty() {
            return Ok(ActionResult::ok(json!({ "exitCode": 0, "stderr": stderr_text })));
        }
        parse_answer(request.action, answer.trim())
            .map_err(|problem| self.error(format!("`{program}` answered {problem}")))
    }
}

/// Reads a `{outcome, createdRunId?, runStatus?, detail?}` answer (from a program's stdout or an HTTP
/// response body). Err says what is wrong with it.
pub(crate) fn parse_answer(action: Action, text: &str) -> Result<ActionResult, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("something that is not JSON ({e}): {}", bounded(text, 200)))?;
    let Value::Object(map) = &value else {
        return Err(format!("JSON that is not an object: {}", bounded(text, 200)));
    };
    let outcome = match map.get("outcome") {
        Some(Value::String(outcome)) => outcome.clone(),
        Some(other) => return Err(format!("an `outcome` that is not a string: {other}")),
        None => return Err("a JSON object without `outcome`".to_owned()),
    };
    let spec = action.spec();
    if !spec.produces(&outcome) {
        return Err(format!(
            "outcome `{outcome}`, which `{action}` does not have (it has {})",
            spec.outcomes.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    let created_run_id = match map.get("createdRunId") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
        Some(other) => return Err(format!("a `createdRunId` that is not a run id: {other}")),
    };
    let run_status = match map.get("runStatus") {
        None | Some(Value::Null) => None,
        Some(Value::String(status)) if !status.is_empty() => Some(status.clone()),
        Some(other) => return Err(format!("a `runStatus` that is not a run status: {other}")),
    };
    Ok(ActionResult { outcome, created_run_id, run_status, detail: map.get("detail").cloned().unwrap_or(Value::Null) })
}

fn bounded(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn human(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), exit_signal(status)) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended abnormally".to_owned(),
    }
}

#[cfg(unix)]
fn exit_signal(status: ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

#[cfg(not(unix))]
fn exit_signal(_: ExitStatus) -> Option<i32> {
    None
}

#[derive(Debug, Clone, Copy)]
enum Signal {
    Term,
    Kill,
}

/// Signals the program's process group (its pid is the group id: it was started with
/// `process_group(0)`). A group that is already gone is fine.
#[cfg(unix)]
fn signal_group(group: Option<u32>, signal: Signal) {
    use rustix::process::{Pid, Signal as Sig, kill_process_group};
    let Some(pid) = group.and_then(|id| i32::try_from(id).ok()).and_then(Pid::from_raw) else {
        return;
    };
    let signal = match signal {
        Signal::Term => Sig::TERM,
        Signal::Kill => Sig::KILL,
    };
    if let Err(error) = kill_process_group(pid, signal)
        && error != rustix::io::Errno::SRCH
    {
        tracing::warn!(%error, group = pid.as_raw_nonzero().get(), "command runtime: cannot signal the process group");
    }
}

#[cfg(not(unix))]
fn signal_group(_: Option<u32>, _: Signal) {}

/// Which part of a stream to keep.
#[derive(Debug, Clone, Copy)]
enum Keep {
    Head(usize),
    Tail(usize),
}

/// What was read from a stream: the kept bytes and how many there were in all.
#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    total: usize,
    tail: bool,
}

impl Captured {
    /// The kept text, marked when the beginning was cut.
    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes).into_owned();
        if self.tail && self.total > self.bytes.len() {
            format!("[…{} earlier bytes cut]\n{text}", self.total - self.bytes.len())
        } else {
            text
        }
    }

    fn text_bounded(&self, limit: usize) -> String {
        bounded(&self.text(), limit)
    }
}

/// Reads a stream to its end (so the program never blocks on a full pipe), keeping a bounded
/// part of it.
async fn capture(mut stream: impl AsyncRead + Unpin, keep: Keep) -> Captured {
    let mut captured = Captured { tail: matches!(keep, Keep::Tail(_)), ..Captured::default() };
    let mut buffer = [0u8; 8192];
    loop {
        let read = match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        captured.total += read;
        match keep {
            Keep::Head(limit) => {
                let room = limit.saturating_sub(captured.bytes.len());
                captured.bytes.extend_from_slice(&buffer[..read.min(room)]);
            }
            Keep::Tail(limit) => {
                captured.bytes.extend_from_slice(&buffer[..read]);
                if captured.bytes.len() > 2 * limit {
                    let cut = captured.bytes.len() - limit;
                    captured.bytes.drain(..cut);
                }
            }
        }
    }
    if let Keep::Tail(limit) = keep
        && captured.bytes.len() > limit
    {
        let cut = captured.bytes.len() - limit;
        captured.bytes.drain(..cut);
    }
    captured
}

/// Waits for a capture task; a stream still held open by an escaped process is abandoned
/// after a moment.
async fn join_capture(task: Option<tokio::task::JoinHandle<Captured>>) -> Captured {
    let Some(task) = task else {
        return Captured::default();
    };
    let abort = task.abort_handle();
    match tokio::time::timeout(Duration::from_secs(2), task).await {
        Ok(Ok(captured)) => captured,
        _ => {
            abort.abort();
            Captured::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_against_the_action() {
        let ok =
            parse_answer(Action::BranchFromCheckpoint, r#"{"outcome":"ok","createdRunId":"b-1","detail":{"x":1}}"#);
        let ok = ok.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((ok.outcome.as_str(), ok.created_run_id.as_deref()), ("ok", Some("b-1")));
        assert_eq!(ok.detail, json!({"x": 1}));
        let wrong = parse_answer(Action::ResumeRun, r#"{"outcome":"duplicate"}"#).unwrap_err();
        assert!(wrong.contains("`resume_run` does not have"), "{wrong}");
        assert!(parse_answer(Action::ResumeRun, "[1]").unwrap_err().contains("not an object"));
        assert!(parse_answer(Action::ResumeRun, "done!").unwrap_err().contains("not JSON"));
        assert!(parse_answer(Action::ResumeRun, r#"{"detail":1}"#).unwrap_err().contains("without `outcome`"));
    }

    #[tokio::test]
    async fn stderr_keeps_its_end() {
        let text = format!("{}THE END", "x".repeat(3 * KEPT_STDERR_BYTES));
        let captured = capture(text.as_bytes(), Keep::Tail(KEPT_STDERR_BYTES)).await;
        assert_eq!(captured.total, text.len());
        assert_eq!(captured.bytes.len(), KEPT_STDERR_BYTES);
        assert!(captured.text().ends_with("THE END"));
        assert!(captured.text().starts_with("[…"));
    }
}
