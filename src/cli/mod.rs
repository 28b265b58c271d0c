//! The `salvage` command line. The only module that prints; everything else returns values.

mod args;
mod audit;
mod console;
mod error;
mod execute;
mod import;
mod incidents;
mod init;
mod migrate;
#[cfg(feature = "otel")]
mod otlp;
mod plan;
mod playbooks;
mod read;
mod reload;
mod runs;
mod serve;
mod shell;
mod simulate;
mod source_error;
mod test_cmd;
mod token;
mod traces;
mod web;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

pub use args::{Cli, Command, LogFormat, PolicyCommand, TokenCommand};
pub use console::Console;
pub use error::{CliError, Failure, RunNotFound, StoreMissing};

use crate::execute::SalvageConfig;
use crate::store::{self, RunStore, Store, StoreSpec, StoredRun};

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    // A daemon reports what it does unless told otherwise.
    let daemon = matches!(cli.command, Command::Serve { .. });
    let filter = if daemon && cli.log == "warn" { "info" } else { &cli.log };
    let mut console = Console::new().with_json_errors(cli.log_format == LogFormat::Json);
    // 8 MiB per worker like the main thread: a recovery's future (plan, runner, runtime call)
    // is deep, and a debug build's frames are large.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(8 * 1024 * 1024)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            init_tracing(filter, cli.log_format, daemon, None);
            console.error(format!("cannot start the async runtime: {error}"));
            return Failure::Store.into();
        }
    };
    let spans = match SpanExport::start(cli.otlp_endpoint.as_deref(), &runtime) {
        Ok(spans) => spans,
        Err(error) => {
            init_tracing(filter, cli.log_format, daemon, None);
            console.report(&error);
            return error.failure.into();
        }
    };
    init_tracing(filter, cli.log_format, daemon, spans.as_ref());
    let code = match runtime.block_on(run(cli, &mut console)) {
        Ok(code) => code,
        Err(error) if error.failure == Failure::ClosedPipe => error.failure.into(),
        Err(error) => {
            console.report(&error);
            error.failure.into()
        }
    };
    if let Some(spans) = spans {
        runtime.block_on(spans.shutdown());
    }
    code
}

#[cfg(feature = "otel")]
use otlp::TraceExport as SpanExport;

/// A build without the `otel` feature exports no spans, and says so when asked to.
#[cfg(not(feature = "otel"))]
enum SpanExport {}

#[cfg(not(feature = "otel"))]
impl SpanExport {
    fn start(endpoint: Option<&str>, _runtime: &tokio::runtime::Runtime) -> Result<Option<SpanExport>, CliError> {
        let asked = endpoint.is_some_and(|endpoint| !endpoint.is_empty())
            || std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some_and(|value| !value.is_empty());
        if asked {
            return Err(CliError::input_msg(
                "this salvage was built without OpenTelemetry (the `otel` cargo feature), so it cannot export spans; \
                 build it with `--features otel` or unset --otlp-endpoint / OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT",
            ));
        }
        Ok(None)
    }

    async fn shutdown(self) {}
}

/// A command line clap refused: its own rendering (exit 2), or one JSON line on stderr when
/// `--log-format json` (or `SALVAGE_LOG_FORMAT=json`) was asked for; `--help` and `--version`
/// print as usual.
fn usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        error.exit();
    }
    let args: Vec<String> = std::env::args().collect();
    let json = args.windows(2).any(|pair| pair[0] == "--log-format" && pair[1] == "json")
        || args.iter().any(|arg| arg == "--log-format=json")
        || std::env::var("SALVAGE_LOG_FORMAT").is_ok_and(|format| format == "json");
    if !json {
        error.exit();
    }
    let text = error.render().to_string();
    let mut lines = text.lines();
    let message = lines.next().unwrap_or_default().trim_start_matches("error: ").to_owned();
    let detail: Vec<&str> = lines.map(str::trim_end).filter(|line| !line.is_empty()).collect();
    let fields = serde_json::json!({
        "message": message, "code": "salvage::usage", "help": detail.join("\n"), "exit_code": Failure::BadInput as u8,
    });
    let line = crate::diagnostics::log_line("ERROR", fields.as_object().cloned().unwrap_or_default());
    Console::new().stderr_text(format!("{line}\n"));
    Failure::BadInput.into()
}

/// Diagnostics on stderr under `--log`'s filter and, when spans are exported, salvage's spans
/// to the collector whatever that filter is (each layer has its own filter).
fn init_tracing(filter: &str, format: LogFormat, daemon: bool, spans: Option<&SpanExport>) {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour only for a person at a terminal: a daemon's log file must stay greppable.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let stderr: Boxed = match format {
        // Timestamps and spans (incident, plan, step) for log collectors.
        LogFormat::Json => layer.json().with_current_span(true).with_span_list(true).with_filter(filter).boxed(),
        // A daemon's lines say when; a one-shot command's warnings do not need to.
        LogFormat::Text if daemon => layer.with_target(false).with_filter(filter).boxed(),
        LogFormat::Text => layer.with_target(false).without_time().with_filter(filter).boxed(),
    };
    let mut layers = vec![stderr];
    #[cfg(feature = "otel")]
    layers.extend(spans.map(|spans| spans.layer().boxed()));
    #[cfg(not(feature = "otel"))]
    layers.extend(spans.map(|never| -> Boxed { match *never {} }));
    let _ = tracing_subscriber::registry().with(layers).try_init();
}

/// What every command needs: where to print, which store to use, and salvage.yaml.
pub struct Context<'a> {
    pub console: &'a mut Console,
    pub spec: StoreSpec,
    pub config: SalvageConfig,
}

impl Context<'_> {
    /// Opens a store that must already exist, for reading only: every read command (`runs`,
    /// `inspect`, `tree`, `report`, `plan`, `simulate`, `apply --dry-run`, ...). It creates,
    /// migrates and locks nothing, and refuses an SQLite file that is not salvage's.
    pub async fn read_store(&self) -> Result<Arc<dyn Store>, CliError> {
        self.existing(store::Access::ReadOnly).await
    }

    /// Opens a store that must already exist, for writing (`apply`, `resume`, `approve`,
    /// `deny`, `confirm`): reading from or recovering in a store that is not there is a
    /// mistake, and must not leave an empty database behind.
    pub async fn write_store(&self) -> Result<Arc<dyn Store>, CliError> {
        self.existing(store::Access::ReadWrite).await
    }

    async fn existing(&self, access: store::Access) -> Result<Arc<dyn Store>, CliError> {
        let missing = match &self.spec {
            StoreSpec::Memory | StoreSpec::Postgres(_) => None,
            StoreSpec::File(dir) => (!dir.is_dir()).then(|| dir.clone()),
            StoreSpec::Sqlite(path) => (!path.is_file()).then(|| path.clone()),
        };
        if let Some(path) = missing {
            return Err(CliError::store(StoreMissing {
                spec: self.spec.to_string(),
                path: path.display().to_string(),
            }));
        }
        Ok(store::open_with(&self.spec, self.open_options(access)?).await?)
    }

    /// Opens the store, creating it when needed (`import`).
    pub async fn store(&self) -> Result<Arc<dyn Store>, CliError> {
        Ok(store::open_with(&self.spec, self.open_options(store::Access::ReadWrite)?).await?)
    }

    /// The store options of this invocation: `SALVAGE_MAX_RUN_BYTES` bounds the run files read.
    fn open_options(&self, access: store::Access) -> Result<store::OpenOptions, CliError> {
        let max_run_bytes = crate::limits::max_run_bytes().map_err(CliError::input)?;
        Ok(store::OpenOptions { access, max_run_bytes })
    }

    /// Loads a run or fails with `run "<id>" not found` (exit 2).
    pub async fn run(&self, store: &dyn RunStore, run_id: &str) -> Result<StoredRun, CliError> {
        store
            .get(run_id)
            .await?
            .ok_or_else(|| CliError::input(RunNotFound { run_id: run_id.to_owned(), store: self.spec.to_string() }))
    }
}

/// `--config FILE`, else `salvage.yaml` in the working directory, else the defaults.
fn load_config(given: Option<&std::path::Path>) -> Result<SalvageConfig, CliError> {
    let loaded = match given {
        Some(path) => SalvageConfig::load(path),
        None => SalvageConfig::load_or_default(std::path::Path::new(".")),
    };
    loaded.map_err(CliError::input)
}

async fn run(cli: Cli, console: &mut Console) -> Result<ExitCode, CliError> {
    let config = load_config(cli.config.as_deref())?;
    // The command line (or SALVAGE_STORE) wins over salvage.yaml.
    let spec = StoreSpec::parse(cli.store.as_deref().unwrap_or(&config.store))?;
    let mut cx = Context { console, spec, config };
    match cli.command {
        Command::Import { paths, format } => import::run(&mut cx, &paths, format.json).await,
        Command::Runs { status, quiet, format } => runs::list(&mut cx, status.as_deref(), quiet, format.json).await,
        Command::Inspect { run_id, format } => read::inspect(&mut cx, &run_id, format.json).await,
        Command::Tree { root, no_status, lineage: true, format } => {
            read::lineage_tree(&mut cx, root.as_deref(), no_status, format.json).await
        }
        Command::Tree { root, no_status, lineage: false, format } => {
            read::tree(&mut cx, root.as_deref(), no_status, format.json).await
        }
        Command::Report { run_id, compare_to, format } => {
            read::report(&mut cx, &run_id, compare_to.as_deref(), format.json).await
        }
        Command::Diff { left, right, format } => read::diff(&mut cx, &left, &right, format.json).await,
        Command::Correlate { run_id, format } => read::correlate(&mut cx, &run_id, format.json).await,
        Command::Export { run_ids, partial, checkpoint, bundle, metadata, output } => {
            let request = traces::ExportRequest {
                run_ids: &run_ids,
                partial,
                checkpoint: checkpoint.as_deref(),
                bundle,
                metadata: metadata.as_deref(),
                output: output.as_deref(),
            };
            traces::export(&mut cx, request).await
        }
        Command::Validate { file, allow_bundle, format } => {
            traces::validate(&mut cx, &file, allow_bundle, format.json).await
        }
        Command::Envelope { run_id, action, runtime_kind, checkpoint, format } => {
            let request = traces::EnvelopeRequest {
                run_id: &run_id,
                action: &action,
                runtime_kind: &runtime_kind,
                checkpoint: checkpoint.as_deref(),
                json: format.json,
            };
            traces::envelope(&mut cx, request).await
        }
        Command::Check { playbooks, policies, format } => {
            playbooks::check(&mut cx, playbooks.as_deref(), policies.as_deref(), format.json)
        }
        Command::Graph { playbook, format, json, playbooks, policies } => {
            let format = if json { playbooks::GraphFormat::Json } else { format };
            playbooks::graph(&mut cx, &playbook, format, playbooks.as_deref(), policies.as_deref())
        }
        Command::Plan { run_id, compare_to, playbooks, policies, format } => {
            let request = plan::PlanRequest {
                run_id: &run_id,
                compare_to: compare_to.as_deref(),
                playbooks: playbooks.as_deref(),
                policies: policies.as_deref(),
                json: format.json,
            };
            plan::plan(&mut cx, request).await
        }
        Command::Simulate { policies, playbooks, against, limit, since, accept, json } => {
            let request = simulate::SimulateRequest {
                policies: policies.as_deref(),
                playbooks: playbooks.as_deref(),
                against: against.as_deref(),
                options: crate::simulate::SimulateOptions { limit, since },
                accept,
                json,
            };
            simulate::run(&mut cx, request).await
        }
        Command::Policy { command: PolicyCommand::Defs { output } } => {
            playbooks::policy_defs(&mut cx, output.as_deref())
        }
        Command::Test { path, playbooks, policies, json } => {
            let request = test_cmd::TestRequest {
                path: &path,
                playbooks: playbooks.as_deref(),
                policies: policies.as_deref(),
                json,
            };
            test_cmd::run(&mut cx, request).await
        }
        Command::Init { force } => init::run(&mut cx, force),
        Command::Migrate { format } => migrate::run(&mut cx, format.json).await,
        Command::Apply { run_id, plan, compare_to, playbooks, policies, dry_run, yes, again, actor, token, format } => {
            let request = execute::ApplyRequest {
                run_id: run_id.as_deref(),
                plan_file: plan.as_deref(),
                compare_to: compare_to.as_deref(),
                playbooks: playbooks.as_deref(),
                policies: policies.as_deref(),
                dry_run,
                yes,
                again,
                json: format.json,
                actor: actor.as_deref(),
                token: token.get(),
            };
            execute::apply(&mut cx, request).await
        }
        Command::Resume { execution_id, actor, token, format } => {
            execute::resume(&mut cx, &execution_id, actor.as_deref(), token.get(), format.json).await
        }
        Command::Executions { status, format } => execute::executions(&mut cx, status.as_deref(), format.json).await,
        Command::Incidents { status, since, format } => {
            incidents::list(&mut cx, status.as_deref(), since, format.json).await
        }
        Command::Incident { run_id, format } => incidents::show(&mut cx, &run_id, format.json).await,
        Command::Audit { since, format } => audit::list(&mut cx, since, format.json).await,
        Command::Approvals { format } => execute::approvals(&mut cx, format.json).await,
        Command::Approve { execution_id, step_id, actor, token, reason, format } => {
            let request = execute::AnswerRequest {
                execution_id: &execution_id,
                step_id: &step_id,
                decision: crate::execute::Decision::Approve,
                actor: actor.as_deref(),
                token: token.get(),
                reason: reason.as_deref(),
                json: format.json,
            };
            execute::answer(&mut cx, request).await
        }
        Command::Deny { execution_id, step_id, actor, token, reason, format } => {
            let request = execute::AnswerRequest {
                execution_id: &execution_id,
                step_id: &step_id,
                decision: crate::execute::Decision::Deny,
                actor: actor.as_deref(),
                token: token.get(),
                reason: reason.as_deref(),
                json: format.json,
            };
            execute::answer(&mut cx, request).await
        }
        Command::Abandon { execution_id, actor, token, reason, format } => {
            let request = execute::AbandonRequest {
                execution_id: &execution_id,
                actor: actor.as_deref(),
                token: token.get(),
                reason: reason.as_deref(),
                json: format.json,
            };
            execute::abandon(&mut cx, request).await
        }
        Command::Confirm { execution_id, step_id, outcome, created, retry, actor, token, reason, format } => {
            let request = execute::ConfirmRequest {
                execution_id: &execution_id,
                step_id: &step_id,
                outcome: outcome.as_deref(),
                created: created.as_deref(),
                retry,
                actor: actor.as_deref(),
                token: token.get(),
                reason: reason.as_deref(),
                json: format.json,
            };
            execute::confirm_step(&mut cx, request).await
        }
        Command::Serve {
            mode,
            reload_gate,
            workers,
            queue,
            actor,
            playbooks,
            policies,
            shutdown_grace,
            lease_ttl,
            retention,
            require_same_set,
            metrics,
            http,
        } => {
            let request = serve::ServeRequest {
                mode,
                reload_gate,
                workers,
                queue,
                actor,
                playbooks,
                policies,
                shutdown_grace_secs: shutdown_grace,
                metrics,
                http,
                replicas: crate::serve::ReplicaSettings {
                    lease_ttl,
                    retention,
                    require_same_set,
                    ..crate::serve::ReplicaSettings::default()
                },
            };
            serve::serve(&mut cx, request).await
        }
        Command::Web { listen } => web::run(&mut cx, listen).await,
        Command::Status { format } => serve::status(&mut cx, format.json).await,
        Command::Reload { accept, actor, token, format } => {
            reload::reload(&mut cx, accept, actor.as_deref(), token.get(), format.json).await
        }
        Command::Token { command: TokenCommand::Add { name, actor, format } } => {
            token::add(&mut cx, &name, actor.as_deref(), format.json).await
        }
        Command::Token { command: TokenCommand::List { format } } => token::list(&mut cx, format.json).await,
        Command::Token { command: TokenCommand::Revoke { id, actor, format } } => {
            token::revoke(&mut cx, &id, actor.as_deref(), format.json).await
        }
        Command::Schema => playbooks::schema(&mut cx),
        Command::Completions { shell } => shell::completions(&mut cx, shell),
        Command::Man { dir } => shell::man(&mut cx, dir.as_deref()),
        Command::Explain { code, format } => playbooks::explain(&mut cx, &code, format.json),
    }
}
