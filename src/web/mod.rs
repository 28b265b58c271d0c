//! People in the loop over HTTP: the JSON API (`/api/v1/…`) and the approval inbox
//! (server-rendered pages that work without JavaScript), served by `salvage serve --http
//! ADDRESS` beside the daemon or by `salvage web` alone.
//!
//! Answers go through [`crate::execute::answer_approval`], the path the CLI's `approve` takes:
//! who may answer, self-approval, quorum and staleness are decided in one place. Beside the
//! daemon, an answered execution is resumed by the daemon; `salvage web` alone resumes it
//! itself, in the background.

pub mod api;
pub mod auth;
pub mod inbox;
pub mod problem;
pub mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use crate::execute::identity::TrustedProxy;
use crate::execute::{Execution, Mode, Origin, ResolveRuntime, Runner, RunnerSettings, execution_of};
use crate::plan::RecoverySet;
use crate::serve::{Reloader, SetDirs};
use crate::store::Store;

pub use problem::Problem;

/// Where the playbooks and policies answers are checked against come from.
#[derive(Clone)]
pub enum SetSource {
    /// The daemon's live set (`serve --http`): what resuming will use.
    Daemon(Arc<Reloader>),
    /// The directories on disk, read for each answer (`salvage web`), as the CLI's `approve` does.
    Disk(SetDirs),
}

impl SetSource {
    async fn current(&self) -> Result<Arc<RecoverySet>, Problem> {
        match self {
            SetSource::Daemon(reloader) => Ok(reloader.current()),
            SetSource::Disk(dirs) => dirs.load().await.map(Arc::new).map_err(|error| {
                Problem::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "salvage::web::sets_do_not_load",
                    format!("the playbooks and policies do not load: {error}"),
                    Some("`salvage check` and `salvage policy check` show what is wrong"),
                )
            }),
        }
    }
}

/// What the HTTP server needs.
pub struct WebOptions {
    pub store: Arc<dyn Store>,
    /// The store as the operator named it (shown on pages).
    pub store_spec: String,
    pub sets: SetSource,
    pub runtimes: Arc<dyn ResolveRuntime>,
    pub settings: RunnerSettings,
    pub proxy: TrustedProxy,
    /// Resume an answered execution in this process (no daemon does).
    pub go_on_here: bool,
}

/// The server's shared state.
#[derive(Clone)]
pub struct WebState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    store_spec: String,
    sets: SetSource,
    runtimes: Arc<dyn ResolveRuntime>,
    settings: RunnerSettings,
    proxy: TrustedProxy,
    go_on_here: bool,
    /// Keys the CSRF tokens of people behind a trusted proxy (they have no session).
    process_key: Vec<u8>,
    /// Executions going on here after an answer (`go_on_here`), and the flag that stops them
    /// between steps at shutdown.
    going_on: Mutex<tokio::task::JoinSet<()>>,
    stop: Arc<AtomicBool>,
}

impl WebState {
    pub fn new(options: WebOptions) -> WebState {
        WebState {
            inner: Arc::new(Inner {
                store: options.store,
                store_spec: options.store_spec,
                sets: options.sets,
                runtimes: options.runtimes,
                settings: options.settings,
                proxy: options.proxy,
                go_on_here: options.go_on_here,
                process_key: crate::execute::identity::random_hex().into_bytes(),
                going_on: Mutex::new(tokio::task::JoinSet::new()),
                stop: Arc::new(AtomicBool::new(false)),
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// One execution (404 when there is none).
    async fn execution(&self, execution_id: &str) -> Result<Execution, Problem> {
        let stored = self.inner.store.get_execution(execution_id).await?.ok_or_else(|| {
            Problem::from(crate::execute::ExecuteError::NotFound { execution_id: execution_id.to_owned() })
        })?;
        execution_of(&stored.doc).map_err(Problem::from)
    }

    /// A runner acting for `person`, with the current sets.
    async fn runner(&self, person: &str, origin: Origin) -> Result<Runner, Problem> {
        let set = self.inner.sets.current().await?;
        Ok(Runner::new(
            self.inner.store.clone(),
            set.policies.clone(),
            set.playbooks.clone(),
            self.inner.runtimes.clone(),
            self.inner.settings.clone(),
            Mode::Enforce,
            person.to_owned(),
        )
        .with_origin(origin))
    }

    /// After an answer: resume here when no daemon will (in the background: a recovery's steps
    /// can take longer than a request should).
    fn go_on(&self, runner: Runner, execution_id: &str) {
        if !self.inner.go_on_here {
            return;
        }
        let execution_id = execution_id.to_owned();
        let runner = runner.with_stop(self.inner.stop.clone());
        let mut going_on = self.inner.going_on.lock().unwrap_or_else(PoisonError::into_inner);
        // Finished ones are dropped as new ones come, so the set stays small.
        while going_on.try_join_next().is_some() {}
        going_on.spawn(async move {
            match crate::execute::go_on(&runner, &execution_id).await {
                Ok(outcome) => tracing::info!(execution_id, ?outcome, "Went on after an answer from the web."),
                Err(error) => tracing::warn!(execution_id, %error, "Cannot go on after an answer from the web."),
            }
        });
    }
}

impl WebState {
    /// At shutdown: executions going on here stop between steps (journalled; the daemon or
    /// `salvage resume` continues them), given `grace` to get there.
    pub async fn stop_going_on(&self, grace: Duration) {
        self.inner.stop.store(true, Ordering::SeqCst);
        let mut tasks = std::mem::take(&mut *self.inner.going_on.lock().unwrap_or_else(PoisonError::into_inner));
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "Executions were still going on at shutdown; they continue from their journal on the next resume."
            );
            tasks.abort_all();
        }
    }
}

/// Every route: the API's, the inbox's.
pub fn router(state: WebState) -> Router {
    api::routes().router.merge(inbox::routes()).with_state(state)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: WebState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
