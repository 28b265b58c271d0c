//! `salvage.yaml`: where salvage finds its store, playbooks and policies, how it runs
//! recoveries (mode, approvals), and which runtime acts on which runs.
//!
//! ```yaml
//! store: sqlite:.salvage/salvage.db
//! playbooks: playbooks
//! policies: policies
//! mode: enforce                  # or advisory: every apply is a dry run
//! bundles: .salvage/bundles
//! approvals:
//!   default_approvers: []        # when a playbook step names none; empty = nobody (fail closed)
//!   allow_self_approval: false
//!   default_timeout: 1h
//!   identity: local              # or strict: `--as` must be the OS user or a token's person
//! runtimes:
//!   agent: store                 # runtime of agent runs
//!   workflow: store              # runtime of workflow runs whose id is not listed below
//!   workflows: {}                # workflow id -> runtime
//!   planning: null               # runtime of planning-runtime runs (none: they fail closed)
//!   adapters: {}                 # named `command` / `http` runtimes (`store` is built in)
//! metrics:                       # `salvage serve`'s Prometheus endpoint
//!   listen: 127.0.0.1:9464       # none by default; --metrics overrides it
//!   buckets:                     # histogram upper bounds in seconds, strictly increasing
//!     plan: [0.01, 0.1, 1]       # also policy_hook, step, approval_wait, journal_commit
//! web:                           # the HTTP API and approval inbox
//!   listen: 127.0.0.1:8089
//!   trusted_proxies: [127.0.0.1, 10.0.0.0/8]   # may name the user in `user_header`
//!   user_header: X-Forwarded-User
//! ```
//!
//! Routing ([`RuntimeRegistry::resolve`]) fails closed: a run whose runtime is not configured
//! is never handed to another runtime (spec §8 #8).
//!
//! Parsing reports every problem of the file at once, each with file, line and column, and a
//! "did you mean" for misspelled keys, runtime names and actions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use miette::{Diagnostic, SourceSpan};

use super::command_runtime::{CommandAction, CommandRuntime, CommandRuntimeConfig, DEFAULT_COMMAND_TIMEOUT};
use super::http_runtime::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_HTTP_TIMEOUT, HttpAction, HttpRetry, HttpRuntime, HttpRuntimeConfig,
    RuntimeProtocol, check_template,
};
use super::notify::{
    Channel, ChannelKind, ChannelTarget, NotificationEvent, NotificationsConfig, PAGERDUTY_EVENTS_URL, UrlSource,
};
use super::runtime::{Runtime, RuntimeError};
use super::store_runtime::StoreRuntime;
use crate::model::Run;
use crate::model::json::truthy;
use crate::playbook::Action;
use crate::playbook::language::DurationValue;
use crate::playbook::yaml::{self, Node, ParseErrorKind, Value};
use crate::policy::source::{LineIndex, Span};
use crate::store::StoreSpec;

/// The configuration file's usual name, looked for in the working directory.
pub const CONFIG_FILE: &str = "salvage.yaml";

/// The built-in runtime's name.
pub const STORE_RUNTIME: &str = "store";

pub use super::record::Mode;

/// Approval settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalSettings {
    /// Who may approve a step whose plan names no approvers. Empty: nobody — such a step
    /// cannot be approved until approvers are named here or by the policy (fail closed).
    pub default_approvers: Vec<String>,
    /// Whether the operator who started an execution may approve its steps.
    pub allow_self_approval: bool,
    /// How long an approval waits when the playbook sets no timeout; then it is denied.
    pub default_timeout: Duration,
    /// How the CLI's `--as` is checked (`approvals.identity`).
    pub identity: IdentityMode,
}

/// `approvals.identity`: whom the CLI believes a person is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentityMode {
    /// `--as`, `$SALVAGE_ACTOR` or `$USER`, taken at their word (one trusted operator).
    #[default]
    Local,
    /// `--as` must be the OS user (real uid, /etc/passwd) or the person of the token given.
    Strict,
}

impl IdentityMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityMode::Local => "local",
            IdentityMode::Strict => "strict",
        }
    }
}

/// `web:`: the HTTP API and approval inbox, and who may say who a user is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// Where to listen (a command-line address overrides it); none: not configured.
    pub listen: Option<std::net::SocketAddr>,
    /// Reverse proxies whose `user_header` is believed (addresses or CIDR ranges).
    pub trusted_proxies: Vec<super::identity::IpNet>,
    /// The header a trusted proxy names the user in.
    pub user_header: String,
}

/// The header SSO proxies (oauth2-proxy, Pomerium, nginx `auth_request`) usually set.
pub const DEFAULT_USER_HEADER: &str = "X-Forwarded-User";

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig { listen: None, trusted_proxies: Vec::new(), user_header: DEFAULT_USER_HEADER.to_owned() }
    }
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        ApprovalSettings {
            default_approvers: Vec::new(),
            allow_self_approval: false,
            default_timeout: Duration::from_secs(3600),
            identity: IdentityMode::default(),
        }
    }
}

/// A named runtime besides the built-in `store`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AdapterConfig {
    Command(CommandRuntimeConfig),
    Http(HttpRuntimeConfig),
}

/// Which runtime acts on which runs, and the named runtimes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RuntimesConfig {
    /// The runtime of agent runs (no `metadata.workflowId`); `None`: not configured.
    pub agent: Option<String>,
    /// The runtime of workflow runs whose workflow id is not in `workflows`.
    pub workflow: Option<String>,
    /// Workflow id → runtime.
    pub workflows: BTreeMap<String, String>,
    /// The runtime of planning-runtime runs (`metadata.planningRuntime: true`).
    pub planning: Option<String>,
    /// Named `command` and `http` runtimes.
    pub adapters: BTreeMap<String, AdapterConfig>,
}

impl Default for RuntimesConfig {
    fn default() -> Self {
        RuntimesConfig {
            agent: Some(STORE_RUNTIME.to_owned()),
            workflow: Some(STORE_RUNTIME.to_owned()),
            workflows: BTreeMap::new(),
            planning: None,
            adapters: BTreeMap::new(),
        }
    }
}

/// `salvage.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct SalvageConfig {
    /// The store specification (`sqlite:PATH`, `file:DIR`, `memory:`).
    pub store: String,
    pub playbooks: PathBuf,
    pub policies: PathBuf,
    pub mode: Mode,
    /// Where `export_bundle` writes bundles.
    pub bundles: PathBuf,
    pub approvals: ApprovalSettings,
    pub runtimes: RuntimesConfig,
    pub metrics: MetricsConfig,
    /// Where notifications go (`notifications:`).
    pub notifications: NotificationsConfig,
    /// The HTTP API and approval inbox (`web:`).
    pub web: WebConfig,
}

/// `metrics:`: where `salvage serve` serves Prometheus metrics, and the histograms' buckets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricsConfig {
    /// `--metrics` overrides it; none: no endpoint.
    pub listen: Option<std::net::SocketAddr>,
    pub buckets: crate::telemetry::HistogramBuckets,
}

impl Default for SalvageConfig {
    fn default() -> Self {
        SalvageConfig {
            store: StoreSpec::DEFAULT.to_owned(),
            playbooks: PathBuf::from("playbooks"),
            policies: PathBuf::from("policies"),
            mode: Mode::default(),
            bundles: PathBuf::from(".salvage/bundles"),
            approvals: ApprovalSettings::default(),
            runtimes: RuntimesConfig::default(),
            metrics: MetricsConfig::default(),
            notifications: NotificationsConfig::default(),
            web: WebConfig::default(),
        }
    }
}

/// One problem in a configuration file, with where it is.
#[derive(Debug, Clone, thiserror::Error, Diagnostic)]
#[error("{file}:{line}:{column}: {message}")]
#[diagnostic(code(salvage::config::invalid))]
pub struct ConfigProblem {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
    #[help]
    pub help: Option<String>,
    /// The file's text, shared by all its problems and indexed once (rendering stays linear
    /// in the number of problems).
    #[source_code]
    pub source_code: Arc<crate::policy::source::IndexedSource>,
    #[label("here")]
    pub span: SourceSpan,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    #[diagnostic(code(salvage::config::unreadable))]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// Every problem of the file (the first one is also the error's message).
    #[error("{path}: {} problem(s); the first: {}", problems.len(), problems.first().map(|p| p.to_string()).unwrap_or_default())]
    #[diagnostic(code(salvage::config::invalid), help("`salvage init` writes a commented salvage.yaml"))]
    Invalid {
        path: String,
        #[related]
        problems: Vec<ConfigProblem>,
    },
}

impl ConfigError {
    /// The problems of an invalid file (empty for an unreadable one).
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            ConfigError::Unreadable { .. } => &[],
        }
    }
}

impl SalvageConfig {
    /// The runner's settings from `approvals:` and `bundles:` (the rest at their defaults):
    /// `salvage apply`/`resume` and `salvage serve` run with the same ones.
    pub fn runner_settings(&self) -> super::RunnerSettings {
        super::RunnerSettings {
            default_approvers: self.approvals.default_approvers.clone(),
            allow_self_approval: self.approvals.allow_self_approval,
            default_approval_timeout: self.approvals.default_timeout,
            export_dir: self.bundles.clone(),
            notifications: Arc::new(self.notifications.clone()),
            ..super::RunnerSettings::default()
        }
    }

    /// Parses a configuration; `file` names it in messages. Paths stay as written (see
    /// [`SalvageConfig::resolve_paths`]).
    pub fn parse(file: &Path, text: &str) -> Result<SalvageConfig, ConfigError> {
        let mut reader = Reader::new(file, text);
        let config = match yaml::parse(text) {
            Ok(root) => reader.config(&root),
            Err(error) => {
                let message = match error.kind {
                    ParseErrorKind::SeveralDocuments => {
                        "salvage.yaml holds one YAML document, but a second one starts here".to_owned()
                    }
                    _ => error.message.replace("playbook", "configuration"),
                };
                reader.problem(error.span.unwrap_or_default(), message, None);
                None
            }
        };
        match config {
            Some(config) if reader.problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid { path: file.display().to_string(), problems: reader.problems }),
        }
    }

    /// Reads a configuration file; relative paths in it are taken relative to the file's
    /// directory.
    pub fn load(path: &Path) -> Result<SalvageConfig, ConfigError> {
        let text = crate::limits::read_regular_text(path, crate::limits::MAX_CONFIG_BYTES).map_err(|refused| {
            ConfigError::Unreadable { path: path.display().to_string(), source: refused.into_io_error() }
        })?;
        let mut config = SalvageConfig::parse(path, &text)?;
        let base = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// `salvage.yaml` in `dir` when there is one, else the default configuration.
    pub fn load_or_default(dir: &Path) -> Result<SalvageConfig, ConfigError> {
        let path = dir.join(CONFIG_FILE);
        // Only a missing file means "the defaults": a dangling symlink or a FIFO named
        // salvage.yaml is an error of `load`.
        if path.symlink_metadata().is_ok() { SalvageConfig::load(&path) } else { Ok(SalvageConfig::default()) }
    }

    /// Makes every relative path (store, playbooks, policies, bundles, programs given with a
    /// directory, working directories, CA files) relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let join = |path: &Path| if path.is_relative() { base.join(path) } else { path.to_path_buf() };
        self.playbooks = join(&self.playbooks);
        self.policies = join(&self.policies);
        self.bundles = join(&self.bundles);
        self.store = match StoreSpec::parse(&self.store) {
            Ok(StoreSpec::File(dir)) => StoreSpec::File(join(&dir)).to_string(),
            Ok(StoreSpec::Sqlite(path)) => StoreSpec::Sqlite(join(&path)).to_string(),
            _ => self.store.clone(),
        };
        for adapter in self.runtimes.adapters.values_mut() {
            match adapter {
                AdapterConfig::Command(command) => {
                    for action in command.actions.values_mut() {
                        if let Some(program) = action.command.first_mut()
                            && program.contains('/')
                            && Path::new(program.as_str()).is_relative()
                        {
                            *program = base.join(program.as_str()).display().to_string();
                        }
                        if let Some(dir) = &action.working_dir {
                            action.working_dir = Some(join(dir));
                        }
                    }
                }
                AdapterConfig::Http(http) => {
                    if let Some(file) = &http.ca_file {
                        http.ca_file = Some(join(file));
                    }
                }
            }
        }
    }
}

/// Durations as whole milliseconds (a pinned runtime set is JSON in the execution record).
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// Optional durations as whole milliseconds.
pub(crate) mod optional_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => serializer.serialize_some(&u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(deserializer).map(|millis| millis.map(Duration::from_millis))
    }
}

impl RuntimesConfig {
    /// The pinned form of this configuration: its JSON and that JSON's digest.
    pub fn pinned(&self) -> super::record::PinnedRuntimes {
        use sha2::{Digest, Sha256};
        let config = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let digest = crate::policy::hex(&Sha256::digest(serde_json::to_vec(&config).unwrap_or_default()));
        super::record::PinnedRuntimes { digest, config }
    }

    /// Reads a pinned configuration back.
    pub fn from_pinned(pinned: &super::record::PinnedRuntimes) -> Result<RuntimesConfig, RuntimeError> {
        serde_json::from_value(pinned.config.clone()).map_err(|error| RuntimeError::Failed {
            runtime: "pinned runtime set".to_owned(),
            message: format!("the runtime set recorded on the execution cannot be read: {error}"),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

/// A runtime with its configured name.
#[derive(Debug, Clone)]
struct Named {
    name: String,
    runtime: Arc<dyn Runtime>,
}

/// Which runtime acts on a run, built from [`RuntimesConfig`].
#[derive(Debug, Clone)]
pub struct RuntimeRegistry {
    config: RuntimesConfig,
    pinned: super::record::PinnedRuntimes,
    agent: Option<Named>,
    workflow: Option<Named>,
    workflows: BTreeMap<String, Named>,
    planning: Option<Named>,
    by_name: BTreeMap<String, Arc<dyn Runtime>>,
}

impl Default for RuntimeRegistry {
    /// The default configuration: agent and workflow runs go to the `store` runtime; planning
    /// runs have no runtime.
    fn default() -> Self {
        match RuntimeRegistry::from_config(&RuntimesConfig::default()) {
            Ok(registry) => registry,
            // The default configuration names only the built-in runtime, which cannot fail.
            Err(_) => RuntimeRegistry {
                config: RuntimesConfig::default(),
                pinned: RuntimesConfig::default().pinned(),
                agent: None,
                workflow: None,
                workflows: BTreeMap::new(),
                planning: None,
                by_name: BTreeMap::new(),
            },
        }
    }
}

impl RuntimeRegistry {
    /// Builds every configured runtime. Fails when an adapter cannot be built (an `http`
    /// runtime's environment variable is missing, its CA file unreadable) or a route names a
    /// runtime that does not exist.
    pub fn from_config(config: &RuntimesConfig) -> Result<RuntimeRegistry, RuntimeError> {
        let mut by_name: BTreeMap<String, Arc<dyn Runtime>> = BTreeMap::new();
        by_name.insert(STORE_RUNTIME.to_owned(), Arc::new(StoreRuntime::new()));
        for (name, adapter) in &config.adapters {
            let runtime: Arc<dyn Runtime> = match adapter {
                AdapterConfig::Command(command) => Arc::new(CommandRuntime::new(name.clone(), command.clone())),
                AdapterConfig::Http(http) => Arc::new(HttpRuntime::new(name.clone(), http.clone())?),
            };
            by_name.insert(name.clone(), runtime);
        }
        let lookup = |route: &str, name: &str| -> Result<Named, RuntimeError> {
            match by_name.get(name) {
                Some(runtime) => Ok(Named { name: name.to_owned(), runtime: runtime.clone() }),
                None => Err(RuntimeError::Failed {
                    runtime: "configuration".to_owned(),
                    message: format!("`runtimes.{route}` names runtime `{name}`, which is not defined"),
                }),
            }
        };
        let optional = |route: &str, name: &Option<String>| name.as_deref().map(|name| lookup(route, name)).transpose();
        let mut workflows = BTreeMap::new();
        for (workflow_id, name) in &config.workflows {
            workflows.insert(workflow_id.clone(), lookup(&format!("workflows.{workflow_id}"), name)?);
        }
        Ok(RuntimeRegistry {
            config: config.clone(),
            pinned: config.pinned(),
            agent: optional("agent", &config.agent)?,
            workflow: optional("workflow", &config.workflow)?,
            workflows,
            planning: optional("planning", &config.planning)?,
            by_name,
        })
    }

    /// The runtime that owns `run`:
    /// - planning-runtime runs (`metadata.planningRuntime` truthy) → the planning runtime;
    /// - runs with `metadata.workflowId` → the runtime configured for that workflow id, else
    ///   the default workflow runtime;
    /// - any other run → the agent runtime.
    ///
    /// A run whose runtime is not configured is [`RuntimeError::NotConfigured`]: it is never
    /// handed to another runtime.
    pub fn resolve(&self, run: &Run) -> Result<Arc<dyn Runtime>, RuntimeError> {
        let not_configured = |wanted: String| RuntimeError::NotConfigured { run_id: run.id.clone(), wanted };
        if run.metadata.get("planningRuntime").is_some_and(truthy) {
            return self.planning.as_ref().map(|named| named.runtime.clone()).ok_or_else(|| {
                not_configured(
                    "it is a planning-runtime run (metadata.planningRuntime) and `runtimes.planning` is not set".into(),
                )
            });
        }
        if let Some(workflow_id) = run.workflow_id().filter(|id| !id.is_empty()) {
            return self
                .workflows
                .get(workflow_id)
                .or(self.workflow.as_ref())
                .map(|named| named.runtime.clone())
                .ok_or_else(|| {
                    not_configured(format!(
                        "it belongs to workflow \"{workflow_id}\", which is not under `runtimes.workflows`, and \
                         `runtimes.workflow` is not set"
                    ))
                });
        }
        self.agent
            .as_ref()
            .map(|named| named.runtime.clone())
            .ok_or_else(|| not_configured("it is an agent run and `runtimes.agent` is not set".into()))
    }

    /// The name of the runtime [`RuntimeRegistry::resolve`] picks (for plans and messages).
    pub fn resolve_name(&self, run: &Run) -> Option<&str> {
        if run.metadata.get("planningRuntime").is_some_and(truthy) {
            return self.planning.as_ref().map(|named| named.name.as_str());
        }
        if let Some(workflow_id) = run.workflow_id().filter(|id| !id.is_empty()) {
            return self.workflows.get(workflow_id).or(self.workflow.as_ref()).map(|named| named.name.as_str());
        }
        self.agent.as_ref().map(|named| named.name.as_str())
    }

    /// A runtime by its configured name (`store` is always there).
    pub fn runtime(&self, name: &str) -> Option<Arc<dyn Runtime>> {
        self.by_name.get(name).cloned()
    }

    /// The configuration the registry was built from.
    pub fn config(&self) -> &RuntimesConfig {
        &self.config
    }

    /// Every configured route: (route, runtime name, runtime).
    pub fn routes(&self) -> Vec<(String, String, Arc<dyn Runtime>)> {
        let mut routes = Vec::new();
        let mut add = |route: String, named: &Named| routes.push((route, named.name.clone(), named.runtime.clone()));
        if let Some(named) = &self.agent {
            add("agent".into(), named);
        }
        if let Some(named) = &self.workflow {
            add("workflow".into(), named);
        }
        for (id, named) in &self.workflows {
            add(format!("workflows.{id}"), named);
        }
        if let Some(named) = &self.planning {
            add("planning".into(), named);
        }
        routes
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the YAML tree
// ---------------------------------------------------------------------------------------------

const TOP_KEYS: &[&str] =
    &["store", "playbooks", "policies", "mode", "bundles", "approvals", "runtimes", "metrics", "notifications", "web"];
const WEB_KEYS: &[&str] = &["listen", "trusted_proxies", "user_header"];
const NOTIFICATION_KEYS: &[&str] = &["default", "inbox_url", "timeout", "retry", "channels"];
const CHANNEL_KEYS: &[&str] = &["type", "url", "url_env", "secret_env", "routing_key_env", "events_url", "events"];
const METRICS_KEYS: &[&str] = &["listen", "buckets"];
const APPROVAL_KEYS: &[&str] = &["default_approvers", "allow_self_approval", "default_timeout", "identity"];
const RUNTIME_KEYS: &[&str] = &["agent", "workflow", "workflows", "planning", "adapters"];
const COMMAND_KEYS: &[&str] = &["kind", "timeout", "actions"];
const COMMAND_ACTION_KEYS: &[&str] = &["command", "timeout", "env", "working_dir"];
const HTTP_KEYS: &[&str] = &[
    "kind",
    "protocol",
    "base_url",
    "timeout",
    "connect_timeout",
    "headers",
    "ca_file",
    "retry",
    "actions",
    "observe",
    "find_created",
];
const HTTP_ACTION_KEYS: &[&str] = &["url", "timeout"];
const RETRY_KEYS: &[&str] = &["max_attempts", "initial_backoff", "max_backoff"];
const ADAPTER_KINDS: &[&str] = &["command", "http"];

/// A route as written: (its path in the file, the runtime it names, where).
type Route = (String, String, Span);

/// Entries of a mapping node: (key text, key node, value node).
type Entries<'n> = Vec<(&'n str, &'n Node, &'n Node)>;

struct Reader<'t> {
    file: String,
    text: &'t str,
    lines: LineIndex,
    problems: Vec<ConfigProblem>,
    /// The text as problems show it, made once on the first problem.
    source: Option<Arc<crate::policy::source::IndexedSource>>,
}

impl<'t> Reader<'t> {
    fn new(file: &Path, text: &'t str) -> Reader<'t> {
        Reader {
            file: file.display().to_string(),
            text,
            lines: LineIndex::new(text),
            problems: Vec::new(),
            source: None,
        }
    }

    fn source(&mut self) -> &Arc<crate::policy::source::IndexedSource> {
        let (file, text) = (&self.file, self.text);
        self.source.get_or_insert_with(|| {
            Arc::new(crate::policy::source::IndexedSource::new(file.clone(), &Arc::from(text)).with_language("yaml"))
        })
    }

    fn problem(&mut self, span: Span, message: String, help: Option<String>) {
        let (line, column) = self.lines.line_column(self.text, span.start);
        let source_code = self.source().clone();
        self.problems.push(ConfigProblem {
            file: self.file.clone(),
            line,
            column,
            message,
            help,
            source_code,
            span: span.into(),
        });
    }

    fn expected(&mut self, node: &Node, what: &str, expected: &str) {
        self.problem(node.span, format!("`{what}` must be {expected}, found {}", node.value.kind()), None);
    }

    /// A mapping's entries; unknown keys (with a suggestion), duplicate and non-string keys
    /// are reported and left out. `known: None` accepts any key (maps of names).
    fn mapping<'n>(&mut self, node: &'n Node, what: &str, known: Option<&[&str]>) -> Option<Entries<'n>> {
        let entries = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => return Some(Vec::new()),
            _ => {
                self.expected(node, what, "a mapping");
                return None;
            }
        };
        let mut out: Entries<'n> = Vec::new();
        for (key, value) in entries {
            let Value::Str(name) = &key.value else {
                self.problem(key.span, format!("keys of `{what}` must be strings, found {}", key.value.kind()), None);
                continue;
            };
            if out.iter().any(|(seen, _, _)| seen == name) {
                self.problem(key.span, format!("`{what}` has `{name}` twice"), None);
                continue;
            }
            if let Some(known) = known
                && !known.contains(&name.as_str())
            {
                let help = did_you_mean(name, known.iter().copied())
                    .or_else(|| Some(format!("the keys of `{what}` are {}", list(known))));
                self.problem(key.span, format!("unknown key `{name}` in `{what}`"), help);
                continue;
            }
            out.push((name.as_str(), key, value));
        }
        Some(out)
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(text) if !text.is_empty() => Some(text.clone()),
            Value::Str(_) => {
                self.problem(node.span, format!("`{what}` must not be empty"), None);
                None
            }
            _ => {
                self.expected(node, what, "a string");
                None
            }
        }
    }

    /// A string, or `null` for "not configured".
    fn optional_string(&mut self, node: &Node, what: &str) -> Option<Option<String>> {
        match &node.value {
            Value::Null => Some(None),
            _ => self.string(node, what).map(Some),
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(value) => Some(*value),
            _ => {
                self.expected(node, what, "true or false");
                None
            }
        }
    }

    /// A duration, at most [`crate::limits::MAX_DURATION`] and not zero.
    fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let parsed = match &node.value {
            Value::Str(text) => DurationValue::parse_checked(text).map(|d| d.0),
            _ => Err(crate::playbook::language::DurationError::NotADuration),
        };
        match parsed {
            Ok(duration) if !duration.is_zero() => Some(duration),
            Err(crate::playbook::language::DurationError::TooLong) => {
                self.problem(
                    node.span,
                    format!("`{what}` is longer than the maximum of {}", crate::limits::MAX_DURATION_TEXT),
                    Some(format!("durations are at most {}", crate::limits::MAX_DURATION_TEXT)),
                );
                None
            }
            _ => {
                let found = match &node.value {
                    Value::Str(text) => format!("{text:?}"),
                    other => other.kind().to_owned(),
                };
                self.problem(
                    node.span,
                    format!("`{what}` must be a duration such as 30s, 5m or 1h30m, found {found}"),
                    Some("units: ms, s, m, h, d".into()),
                );
                None
            }
        }
    }

    fn string_list(&mut self, node: &Node, what: &str) -> Option<Vec<String>> {
        match &node.value {
            Value::Seq(items) => {
                let mut out = Vec::new();
                let mut ok = true;
                for item in items {
                    match self.string(item, &format!("{what}[]")) {
                        Some(text) => out.push(text),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            Value::Null => Some(Vec::new()),
            _ => {
                self.expected(node, what, "a list of strings");
                None
            }
        }
    }

    /// A list of approver names, each checked by [`crate::limits::validate_approver_name`].
    fn approver_list(&mut self, node: &Node, what: &str) -> Option<Vec<String>> {
        let names = self.string_list(node, what)?;
        let Value::Seq(items) = &node.value else { return Some(names) };
        let mut ok = true;
        for (name, item) in names.iter().zip(items) {
            if let Err(error) = crate::limits::validate_approver_name(name) {
                self.problem(item.span, format!("`{what}`: {error}"), Some("name a person or a role".into()));
                ok = false;
            }
        }
        ok.then_some(names)
    }

    fn string_map(&mut self, node: &Node, what: &str) -> Option<BTreeMap<String, String>> {
        let entries = self.mapping(node, what, None)?;
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (key, _, value) in entries {
            let text = match &value.value {
                Value::Str(text) => Some(text.clone()),
                Value::Int(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => {
                    self.expected(value, &format!("{what}.{key}"), "a string");
                    None
                }
            };
            match text {
                Some(text) => {
                    out.insert(key.to_owned(), text);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn config(&mut self, root: &Node) -> Option<SalvageConfig> {
        let mut config = SalvageConfig::default();
        let entries = self.mapping(root, "salvage.yaml", Some(TOP_KEYS))?;
        let mut route_nodes = Vec::new();
        for (key, _, value) in entries {
            match key {
                "store" => {
                    if let Some(store) = self.string(value, "store") {
                        match StoreSpec::parse(&store) {
                            Ok(_) => config.store = store,
                            Err(error) => self.problem(
                                value.span,
                                error.to_string(),
                                Some("use sqlite:PATH, file:DIR or memory:".into()),
                            ),
                        }
                    }
                }
                "playbooks" => {
                    config.playbooks = self.string(value, "playbooks").map_or(config.playbooks, PathBuf::from)
                }
                "policies" => config.policies = self.string(value, "policies").map_or(config.policies, PathBuf::from),
                "bundles" => config.bundles = self.string(value, "bundles").map_or(config.bundles, PathBuf::from),
                "mode" => match &value.value {
                    Value::Str(mode) if mode == "advisory" => config.mode = Mode::Advisory,
                    Value::Str(mode) if mode == "enforce" => config.mode = Mode::Enforce,
                    Value::Str(mode) => {
                        let help = did_you_mean(mode, ["advisory", "enforce"]);
                        self.problem(value.span, format!("`mode` must be advisory or enforce, found {mode:?}"), help);
                    }
                    _ => self.expected(value, "mode", "advisory or enforce"),
                },
                "approvals" => {
                    if let Some(approvals) = self.approvals(value) {
                        config.approvals = approvals;
                    }
                }
                "metrics" => {
                    if let Some(metrics) = self.metrics(value) {
                        config.metrics = metrics;
                    }
                }
                "web" => {
                    if let Some(web) = self.web(value) {
                        config.web = web;
                    }
                }
                "notifications" => {
                    if let Some(notifications) = self.notifications(value) {
                        config.notifications = notifications;
                    }
                }
                "runtimes" => {
                    if let Some((runtimes, routes)) = self.runtimes(value) {
                        config.runtimes = runtimes;
                        route_nodes = routes;
                    }
                }
                _ => {}
            }
        }
        self.check_routes(&config.runtimes, &route_nodes);
        Some(config)
    }

    fn notifications(&mut self, node: &Node) -> Option<NotificationsConfig> {
        let mut config = NotificationsConfig::default();
        let mut default = None;
        let mut ok = true;
        for (key, _, value) in self.mapping(node, "notifications", Some(NOTIFICATION_KEYS))? {
            match key {
                "default" => match self.optional_string(value, "notifications.default") {
                    Some(name) => default = name.map(|name| (name, value.span)),
                    None => ok = false,
                },
                "inbox_url" => match self.optional_string(value, "notifications.inbox_url") {
                    Some(url) => {
                        config.inbox_url = url.filter(|url| self.web_url(value, "notifications.inbox_url", url))
                    }
                    None => ok = false,
                },
                "timeout" => config.timeout = self.duration(value, "notifications.timeout").unwrap_or(config.timeout),
                "retry" => match self.retry("notifications.retry", value) {
                    Some(retry) => config.retry = retry,
                    None => ok = false,
                },
                "channels" => {
                    let Some(entries) = self.mapping(value, "notifications.channels", None) else {
                        ok = false;
                        continue;
                    };
                    for (name, key_node, channel) in entries {
                        if name.is_empty()
                            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                        {
                            self.problem(
                                key_node.span,
                                format!("channel name `{name}` may use only letters, digits, `-`, `_` and `.`"),
                                Some("playbooks name channels as `NAME` or `TYPE:NAME`".into()),
                            );
                            ok = false;
                            continue;
                        }
                        match self.channel(name, channel) {
                            Some(channel) => {
                                config.channels.insert(name.to_owned(), channel);
                            }
                            None => ok = false,
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some((name, span)) = default {
            match config.channel(&name) {
                Ok(channel) => config.default = Some(channel.name.clone()),
                Err(unknown) => {
                    self.problem(span, format!("`notifications.default`: {}", unknown.message), Some(unknown.help));
                    ok = false;
                }
            }
        }
        ok.then_some(config)
    }

    /// An `http://` or `https://` URL; reported otherwise.
    fn web_url(&mut self, node: &Node, what: &str, url: &str) -> bool {
        let ok = url.starts_with("http://") || url.starts_with("https://");
        if !ok {
            self.problem(node.span, format!("`{what}` must be an http:// or https:// URL, found {url:?}"), None);
        }
        ok
    }

    /// The name of an environment variable holding a secret.
    fn env_name(&mut self, node: &Node, what: &str) -> Option<String> {
        let name = self.string(node, what)?;
        if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
        {
            return Some(name);
        }
        self.problem(
            node.span,
            format!("`{what}` names an environment variable, found {name:?}"),
            Some("write the variable's name (e.g. SALVAGE_WEBHOOK_SECRET), never the secret itself".into()),
        );
        None
    }

    fn channel(&mut self, name: &str, node: &Node) -> Option<Channel> {
        let what = format!("notifications.channels.{name}");
        let entries = self.mapping(node, &what, Some(CHANNEL_KEYS))?;
        let field = |key: &str| entries.iter().find(|(k, _, _)| *k == key).map(|(_, _, value)| *value);
        let Some(type_node) = field("type") else {
            self.problem(
                node.span,
                format!("`{what}` has no `type`"),
                Some("type: webhook, slack or pagerduty".into()),
            );
            return None;
        };
        let kind_text = self.string(type_node, &format!("{what}.type"))?;
        let Some(kind) = ChannelKind::parse(&kind_text) else {
            let help = did_you_mean(&kind_text, ChannelKind::ALL.iter().map(|k| k.as_str()))
                .or_else(|| Some("the types are `webhook`, `slack` and `pagerduty`".into()));
            self.problem(type_node.span, format!("`{what}.type` {kind_text:?} is not a channel type"), help);
            return None;
        };
        let allowed: &[&str] = match kind {
            ChannelKind::Webhook => &["type", "url", "secret_env", "events"],
            ChannelKind::Slack => &["type", "url", "url_env", "events"],
            ChannelKind::PagerDuty => &["type", "routing_key_env", "events_url", "events"],
        };
        let mut ok = true;
        for (key, key_node, _) in &entries {
            if !allowed.contains(key) {
                self.problem(
                    key_node.span,
                    format!("`{key}` is not a setting of a {kind} channel (`{what}`)"),
                    Some(format!("a {kind} channel takes {}", list(allowed))),
                );
                ok = false;
            }
        }
        let required = |reader: &mut Self, key: &str| -> Option<&Node> {
            let found = field(key);
            if found.is_none() {
                reader.problem(node.span, format!("`{what}` ({kind}) needs `{key}`"), None);
            }
            found
        };
        let url = |reader: &mut Self, key: &str, value: &Node| -> Option<String> {
            let path = format!("{what}.{key}");
            let url = reader.string(value, &path)?;
            reader.web_url(value, &path, &url).then_some(url)
        };
        let events = match field("events") {
            None => kind.default_events(),
            Some(list_node) => {
                let names = self.string_list(list_node, &format!("{what}.events"))?;
                let mut events = Vec::new();
                let items: &[Node] = match &list_node.value {
                    Value::Seq(items) => items,
                    _ => &[],
                };
                for (name, item) in names.iter().zip(items) {
                    match NotificationEvent::parse(name) {
                        Some(event) => events.push(event),
                        None => {
                            let help = did_you_mean(name, NotificationEvent::ALL.iter().map(|e| e.as_str()));
                            self.problem(
                                item.span,
                                format!("`{what}.events`: {name:?} is not an event"),
                                help.or_else(|| {
                                    Some("the events are notify, approval_requested, escalated and resolved".into())
                                }),
                            );
                            ok = false;
                        }
                    }
                }
                events
            }
        };
        let target = match kind {
            ChannelKind::Webhook => {
                let url_node = required(self, "url");
                let secret_node = required(self, "secret_env");
                let url = url_node.and_then(|n| url(self, "url", n));
                let secret_env = secret_node.and_then(|n| self.env_name(n, &format!("{what}.secret_env")));
                ChannelTarget::Webhook { url: url?, secret_env: secret_env? }
            }
            ChannelKind::Slack => match (field("url"), field("url_env")) {
                (Some(n), None) => ChannelTarget::Slack { url: UrlSource::Literal(url(self, "url", n)?) },
                (None, Some(n)) => {
                    ChannelTarget::Slack { url: UrlSource::Env(self.env_name(n, &format!("{what}.url_env"))?) }
                }
                _ => {
                    self.problem(
                        node.span,
                        format!("`{what}` (slack) needs one of `url` and `url_env`"),
                        Some("an incoming webhook's URL is a secret: prefer `url_env: SLACK_WEBHOOK_URL`".into()),
                    );
                    return None;
                }
            },
            ChannelKind::PagerDuty => {
                let key_node = required(self, "routing_key_env");
                let routing_key_env = key_node.and_then(|n| self.env_name(n, &format!("{what}.routing_key_env")));
                let events_url = match field("events_url") {
                    Some(n) => url(self, "events_url", n)?,
                    None => PAGERDUTY_EVENTS_URL.to_owned(),
                };
                ChannelTarget::PagerDuty { events_url, routing_key_env: routing_key_env? }
            }
        };
        ok.then(|| Channel { name: name.to_owned(), target, events })
    }

    fn metrics(&mut self, node: &Node) -> Option<MetricsConfig> {
        let mut metrics = MetricsConfig::default();
        let mut ok = true;
        for (key, _, value) in self.mapping(node, "metrics", Some(METRICS_KEYS))? {
            match key {
                "listen" => match self.optional_string(value, "metrics.listen") {
                    Some(None) => metrics.listen = None,
                    Some(Some(text)) => match text.parse::<std::net::SocketAddr>() {
                        Ok(address) => metrics.listen = Some(address),
                        Err(error) => {
                            let help = Some("an IP address and a port, such as 127.0.0.1:9464 or [::1]:9464".into());
                            self.problem(value.span, format!("`metrics.listen` {text:?}: {error}"), help);
                            ok = false;
                        }
                    },
                    None => ok = false,
                },
                "buckets" => {
                    let keys = crate::telemetry::HistogramBuckets::KEYS;
                    let Some(entries) = self.mapping(value, "metrics.buckets", Some(&keys)) else {
                        ok = false;
                        continue;
                    };
                    for (name, _, list) in entries {
                        match (self.bucket_bounds(list, name), metrics.buckets.for_key(name)) {
                            (Some(bounds), Some(slot)) => *slot = bounds,
                            _ => ok = false,
                        }
                    }
                }
                _ => {}
            }
        }
        ok.then_some(metrics)
    }

    /// A histogram's bucket bounds, checked by [`crate::telemetry::validate_buckets`]; a bad
    /// bound is pointed at.
    fn bucket_bounds(&mut self, node: &Node, name: &str) -> Option<Vec<f64>> {
        let what = format!("metrics.buckets.{name}");
        let Value::Seq(items) = &node.value else {
            self.expected(node, &what, "a list of numbers of seconds");
            return None;
        };
        let mut bounds = Vec::with_capacity(items.len());
        for item in items {
            match item.value {
                Value::Int(n) => bounds.push(n as f64),
                Value::Float(x) => bounds.push(x),
                _ => {
                    self.expected(item, &format!("{what}[]"), "a number of seconds");
                    return None;
                }
            }
        }
        if let Err(error) = crate::telemetry::validate_buckets(&bounds) {
            use crate::telemetry::BucketError;
            let at = match &error {
                BucketError::NotPositive { position, .. } | BucketError::NotIncreasing { position, .. } => {
                    items.get(position - 1).map_or(node.span, |item| item.span)
                }
                BucketError::Empty | BucketError::TooMany { .. } => node.span,
            };
            let help = Some("upper bounds in seconds, smallest first, such as [0.01, 0.1, 1, 10]".into());
            self.problem(at, format!("`{what}`: {error}"), help);
            return None;
        }
        Some(bounds)
    }

    fn web(&mut self, node: &Node) -> Option<WebConfig> {
        let mut web = WebConfig::default();
        let mut ok = true;
        for (key, _, value) in self.mapping(node, "web", Some(WEB_KEYS))? {
            match key {
                "listen" => match self.optional_string(value, "web.listen") {
                    Some(None) => web.listen = None,
                    Some(Some(text)) => match text.parse::<std::net::SocketAddr>() {
                        Ok(address) => web.listen = Some(address),
                        Err(error) => {
                            let help = Some("an IP address and a port, such as 127.0.0.1:8089 or [::1]:8089".into());
                            self.problem(value.span, format!("`web.listen` {text:?}: {error}"), help);
                            ok = false;
                        }
                    },
                    None => ok = false,
                },
                "trusted_proxies" => {
                    let Some(texts) = self.string_list(value, "web.trusted_proxies") else {
                        ok = false;
                        continue;
                    };
                    let items: &[Node] = match &value.value {
                        Value::Seq(items) => items,
                        _ => &[],
                    };
                    for (text, item) in texts.iter().zip(items) {
                        match text.parse::<super::identity::IpNet>() {
                            Ok(net) => web.trusted_proxies.push(net),
                            Err(error) => {
                                let help = Some(
                                    "an address (127.0.0.1, ::1) or a CIDR range (10.0.0.0/8, fd00::/8); host names \
                                     are not resolved"
                                        .into(),
                                );
                                self.problem(item.span, format!("`web.trusted_proxies`: {error}"), help);
                                ok = false;
                            }
                        }
                    }
                }
                "user_header" => {
                    let Some(header) = self.string(value, "web.user_header") else {
                        ok = false;
                        continue;
                    };
                    // An HTTP field name is a token (RFC 9110 §5.1): no spaces, colons or quotes.
                    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
                    if header.chars().all(is_token_char) {
                        web.user_header = header;
                    } else {
                        let help = Some("a header name such as X-Forwarded-User or X-Auth-Request-User".into());
                        self.problem(
                            value.span,
                            format!("`web.user_header` {header:?} is not an HTTP header name"),
                            help,
                        );
                        ok = false;
                    }
                }
                _ => {}
            }
        }
        ok.then_some(web)
    }

    fn approvals(&mut self, node: &Node) -> Option<ApprovalSettings> {
        let mut approvals = ApprovalSettings::default();
        for (key, _, value) in self.mapping(node, "approvals", Some(APPROVAL_KEYS))? {
            match key {
                "default_approvers" => {
                    if let Some(list) = self.approver_list(value, "approvals.default_approvers") {
                        approvals.default_approvers = list;
                    }
                }
                "allow_self_approval" => {
                    if let Some(allow) = self.boolean(value, "approvals.allow_self_approval") {
                        approvals.allow_self_approval = allow;
                    }
                }
                "default_timeout" => {
                    if let Some(timeout) = self.duration(value, "approvals.default_timeout") {
                        approvals.default_timeout = timeout;
                    }
                }
                "identity" => match &value.value {
                    Value::Str(mode) if mode == "local" => approvals.identity = IdentityMode::Local,
                    Value::Str(mode) if mode == "strict" => approvals.identity = IdentityMode::Strict,
                    Value::Str(mode) => {
                        let help = did_you_mean(mode, ["local", "strict"]).or_else(|| {
                            Some(
                                "local: --as is taken at its word; strict: --as must be the OS user or a token's"
                                    .into(),
                            )
                        });
                        self.problem(
                            value.span,
                            format!("`approvals.identity` must be local or strict, found {mode:?}"),
                            help,
                        );
                    }
                    _ => self.expected(value, "approvals.identity", "local or strict"),
                },
                _ => {}
            }
        }
        Some(approvals)
    }

    /// The runtimes section, and each route's (path, runtime name, node) for checking.
    fn runtimes(&mut self, node: &Node) -> Option<(RuntimesConfig, Vec<Route>)> {
        let mut runtimes = RuntimesConfig::default();
        let mut routes = Vec::new();
        for (key, _, value) in self.mapping(node, "runtimes", Some(RUNTIME_KEYS))? {
            match key {
                "agent" | "workflow" | "planning" => {
                    let path = format!("runtimes.{key}");
                    if let Some(name) = self.optional_string(value, &path) {
                        if let Some(name) = &name {
                            routes.push((path, name.clone(), value.span));
                        }
                        match key {
                            "agent" => runtimes.agent = name,
                            "workflow" => runtimes.workflow = name,
                            _ => runtimes.planning = name,
                        }
                    }
                }
                "workflows" => {
                    let Some(entries) = self.mapping(value, "runtimes.workflows", None) else { continue };
                    for (workflow_id, _, route) in entries {
                        let path = format!("runtimes.workflows.{workflow_id}");
                        if let Some(name) = self.string(route, &path) {
                            routes.push((path, name.clone(), route.span));
                            runtimes.workflows.insert(workflow_id.to_owned(), name);
                        }
                    }
                }
                "adapters" => {
                    let Some(entries) = self.mapping(value, "runtimes.adapters", None) else { continue };
                    for (name, key_node, adapter) in entries {
                        if name == STORE_RUNTIME {
                            self.problem(
                                key_node.span,
                                "`store` is the built-in runtime's name; give this runtime another name".into(),
                                None,
                            );
                            continue;
                        }
                        if let Some(adapter) = self.adapter(name, adapter) {
                            runtimes.adapters.insert(name.to_owned(), adapter);
                        }
                    }
                }
                _ => {}
            }
        }
        Some((runtimes, routes))
    }

    fn check_routes(&mut self, runtimes: &RuntimesConfig, routes: &[Route]) {
        let mut names: Vec<&str> = vec![STORE_RUNTIME];
        names.extend(runtimes.adapters.keys().map(String::as_str));
        for (path, name, span) in routes {
            if !names.contains(&name.as_str()) {
                let help = did_you_mean(name, names.iter().copied())
                    .unwrap_or_else(|| format!("define it under `runtimes.adapters`, or use one of {}", list(&names)));
                self.problem(*span, format!("`{path}` names runtime `{name}`, which is not defined"), Some(help));
            }
        }
    }

    fn adapter(&mut self, name: &str, node: &Node) -> Option<AdapterConfig> {
        let what = format!("runtimes.adapters.{name}");
        let Value::Map(entries) = &node.value else {
            self.expected(node, &what, "a mapping with a `kind`");
            return None;
        };
        let kind_node = entries.iter().find(|(key, _)| key.value == Value::Str("kind".into())).map(|(_, value)| value);
        let Some(kind_node) = kind_node else {
            self.problem(node.span, format!("`{what}` has no `kind`"), Some("kind: command or kind: http".into()));
            return None;
        };
        match &kind_node.value {
            Value::Str(kind) if kind == "command" => self.command_adapter(&what, node).map(AdapterConfig::Command),
            Value::Str(kind) if kind == "http" => self.http_adapter(&what, node).map(AdapterConfig::Http),
            Value::Str(kind) => {
                let help = did_you_mean(kind, ADAPTER_KINDS.iter().copied())
                    .unwrap_or_else(|| "the runtime kinds are `command` and `http` (`store` is built in)".into());
                self.problem(kind_node.span, format!("unknown runtime kind `{kind}` for `{what}`"), Some(help));
                None
            }
            _ => {
                self.expected(kind_node, &format!("{what}.kind"), "command or http");
                None
            }
        }
    }

    /// `actions:` of an adapter: catalog action name → its entry, read by `read`.
    fn actions<T>(
        &mut self,
        what: &str,
        node: &Node,
        mut read: impl FnMut(&mut Self, &str, &Node) -> Option<T>,
    ) -> Option<BTreeMap<Action, T>> {
        let path = format!("{what}.actions");
        let entries = self.mapping(node, &path, None)?;
        if entries.is_empty() {
            self.problem(node.span, format!("`{path}` configures no action"), None);
            return None;
        }
        let mut out = BTreeMap::new();
        for (name, key_node, value) in entries {
            let Some(action) = Action::from_name(name) else {
                let help = did_you_mean(name, Action::all().map(Action::name))
                    .or_else(|| Some("actions are the catalog's names (`salvage explain` lists them)".into()));
                self.problem(key_node.span, format!("unknown action `{name}` in `{path}`"), help);
                continue;
            };
            if let Some(entry) = read(self, &format!("{path}.{name}"), value) {
                out.insert(action, entry);
            }
        }
        Some(out)
    }

    fn command_adapter(&mut self, what: &str, node: &Node) -> Option<CommandRuntimeConfig> {
        let mut config = CommandRuntimeConfig { timeout: DEFAULT_COMMAND_TIMEOUT, actions: BTreeMap::new() };
        let mut actions_node = None;
        for (key, _, value) in self.mapping(node, what, Some(COMMAND_KEYS))? {
            match key {
                "timeout" => {
                    config.timeout = self.duration(value, &format!("{what}.timeout")).unwrap_or(config.timeout)
                }
                "actions" => actions_node = Some(value),
                _ => {}
            }
        }
        let Some(actions_node) = actions_node else {
            self.problem(node.span, format!("`{what}` has no `actions`"), None);
            return None;
        };
        config.actions = self.actions(what, actions_node, |reader, path, value| reader.command_action(path, value))?;
        Some(config)
    }

    fn command_action(&mut self, what: &str, node: &Node) -> Option<CommandAction> {
        let mut action = CommandAction { command: Vec::new(), timeout: None, env: BTreeMap::new(), working_dir: None };
        let mut ok = true;
        for (key, _, value) in self.mapping(node, what, Some(COMMAND_ACTION_KEYS))? {
            match key {
                "command" => match self.string_list(value, &format!("{what}.command")) {
                    Some(command) if !command.is_empty() => action.command = command,
                    Some(_) => {
                        self.problem(value.span, format!("`{what}.command` is empty"), None);
                        ok = false;
                    }
                    None => ok = false,
                },
                "timeout" => action.timeout = self.duration(value, &format!("{what}.timeout")),
                "env" => action.env = self.string_map(value, &format!("{what}.env")).unwrap_or_default(),
                "working_dir" => {
                    action.working_dir = self.string(value, &format!("{what}.working_dir")).map(PathBuf::from)
                }
                _ => {}
            }
        }
        if action.command.is_empty() && ok {
            self.problem(
                node.span,
                format!("`{what}` has no `command`"),
                Some("command: [./bin/program, --flag] (a list: the program, then its arguments)".into()),
            );
            return None;
        }
        ok.then_some(action)
    }

    fn http_adapter(&mut self, what: &str, node: &Node) -> Option<HttpRuntimeConfig> {
        let mut config = HttpRuntimeConfig {
            timeout: DEFAULT_HTTP_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ..HttpRuntimeConfig::default()
        };
        let mut actions_node = None;
        let mut routes = Vec::new();
        let entries = self.mapping(node, what, Some(HTTP_KEYS))?;
        // The protocol first: it decides whether `actions` may be left out.
        for (key, _, value) in &entries {
            if *key == "protocol" {
                let path = format!("{what}.protocol");
                match self.string(value, &path).as_deref().map(|text| (text, RuntimeProtocol::parse(text))) {
                    Some((_, Some(protocol))) => config.protocol = protocol,
                    Some((text, None)) => {
                        let names = RuntimeProtocol::ALL.map(RuntimeProtocol::as_str);
                        let help = did_you_mean(text, names.iter().copied())
                            .unwrap_or_else(|| format!("the protocols are {}", list(&names)));
                        self.problem(value.span, format!("unknown protocol `{text}` for `{what}`"), Some(help));
                    }
                    None => {}
                }
            }
        }
        for (key, _, value) in entries {
            let path = format!("{what}.{key}");
            match key {
                "base_url" => {
                    if let Some(url) = self.string(value, &path) {
                        if url.starts_with("http://") || url.starts_with("https://") {
                            config.base_url = Some(url);
                        } else {
                            self.problem(value.span, format!("`{path}` must start with http:// or https://"), None);
                        }
                    }
                }
                "timeout" => config.timeout = self.duration(value, &path).unwrap_or(config.timeout),
                "connect_timeout" => {
                    config.connect_timeout = self.duration(value, &path).unwrap_or(config.connect_timeout)
                }
                "headers" => config.headers = self.string_map(value, &path).unwrap_or_default(),
                "ca_file" => config.ca_file = self.string(value, &path).map(PathBuf::from),
                "retry" => {
                    if let Some(retry) = self.retry(&path, value) {
                        config.retry = retry;
                    }
                }
                "actions" => actions_node = Some(value),
                "observe" | "find_created" => routes.push((key, path, value)),
                _ => {}
            }
        }
        let base_url = config.base_url.clone();
        for (key, path, value) in routes {
            let url = self.http_url(&path, value, base_url.as_deref());
            match key {
                "observe" => config.observe = url,
                _ => config.find_created = url,
            }
        }
        if config.protocol == RuntimeProtocol::AgnosticAgents && base_url.is_none() {
            let has_absolute_routes = actions_node.is_some() && config.observe.is_some();
            if !has_absolute_routes {
                self.problem(
                    node.span,
                    format!("`{what}` speaks the agnostic-agents protocol but has no `base_url`"),
                    Some("its default routes (/runs/{runId}/resume, …) are paths on the service's base URL".into()),
                );
                return None;
            }
        }
        if config.find_created.is_some() && config.protocol == RuntimeProtocol::AgnosticAgents {
            self.problem(
                node.span,
                format!("`{what}.find_created` is a route of the salvage protocol; the reference service has none"),
                Some("remove it: created runs are found by lineage in the store".into()),
            );
        }
        match actions_node {
            Some(actions_node) => {
                config.actions = self.actions(what, actions_node, |reader, path, value| {
                    reader.http_action(path, value, base_url.as_deref())
                })?;
            }
            // The reference service's routes are the defaults.
            None if config.protocol == RuntimeProtocol::AgnosticAgents => {}
            None => {
                self.problem(
                    node.span,
                    format!("`{what}` has no `actions`"),
                    Some(
                        "list a route per action, or set `protocol: agnostic-agents` for the reference's routes".into(),
                    ),
                );
                return None;
            }
        }
        Some(config)
    }

    fn http_action(&mut self, what: &str, node: &Node, base_url: Option<&str>) -> Option<HttpAction> {
        // `resume_run: /runs/{runId}/resume` is short for `resume_run: {url: ...}`.
        if let Value::Str(_) = &node.value {
            let url = self.http_url(what, node, base_url)?;
            return Some(HttpAction { url, timeout: None });
        }
        let mut action = HttpAction { url: String::new(), timeout: None };
        for (key, _, value) in self.mapping(node, what, Some(HTTP_ACTION_KEYS))? {
            match key {
                "url" => action.url = self.http_url(&format!("{what}.url"), value, base_url)?,
                "timeout" => action.timeout = self.duration(value, &format!("{what}.timeout")),
                _ => {}
            }
        }
        if action.url.is_empty() {
            self.problem(node.span, format!("`{what}` has no `url`"), None);
            return None;
        }
        Some(action)
    }

    fn http_url(&mut self, what: &str, node: &Node, base_url: Option<&str>) -> Option<String> {
        let url = self.string(node, what)?;
        if let Err(problem) = check_template(&url) {
            self.problem(node.span, format!("`{what}`: {problem}"), None);
            return None;
        }
        let absolute = url.starts_with("http://") || url.starts_with("https://");
        if !absolute && base_url.is_none() {
            self.problem(
                node.span,
                format!("`{what}` is a path, but the runtime has no `base_url`"),
                Some("give an absolute URL (https://host/path) or set `base_url`".into()),
            );
            return None;
        }
        Some(url)
    }

    fn retry(&mut self, what: &str, node: &Node) -> Option<HttpRetry> {
        let mut retry = HttpRetry::default();
        for (key, _, value) in self.mapping(node, what, Some(RETRY_KEYS))? {
            let path = format!("{what}.{key}");
            match key {
                "max_attempts" => match &value.value {
                    Value::Int(n) if (1..=20).contains(n) => retry.max_attempts = u32::try_from(*n).unwrap_or(1),
                    _ => self.expected(value, &path, "a number from 1 to 20"),
                },
                "initial_backoff" => {
                    retry.initial_backoff = self.duration(value, &path).unwrap_or(retry.initial_backoff)
                }
                "max_backoff" => retry.max_backoff = self.duration(value, &path).unwrap_or(retry.max_backoff),
                _ => {}
            }
        }
        Some(retry)
    }
}

fn list(items: &[&str]) -> String {
    items.iter().map(|item| format!("`{item}`")).collect::<Vec<_>>().join(", ")
}

/// "did you mean `x`?" for a plausible typo of one of `candidates`.
fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(&word.to_ascii_lowercase(), &candidate.to_ascii_lowercase()), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min()
        .map(|(_, candidate)| format!("did you mean `{candidate}`?"))
}

/// Levenshtein distance with adjacent transpositions.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1).min(rows[i][j - 1] + 1).min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// The commented `salvage.yaml` that `salvage init` writes: every option with its default
/// value and what it means; the `command` and `http` runtime examples are commented out.
/// Parsing it gives [`SalvageConfig::default`].
pub const DEFAULT_CONFIG_YAML: &str = r#"# salvage.yaml: how salvage finds its data and recovers runs.
# Relative paths are relative to this file's directory.

# Where runs (and recovery executions) are stored: sqlite:PATH, file:DIR (the reference
# runtime's FileRunStore layout) or memory: (tests). --store and SALVAGE_STORE override it.
store: sqlite:.salvage/salvage.db

# Recovery playbooks (YAML) and the Rhai policies their hooks call (`salvage check`).
playbooks: playbooks
policies: policies

# enforce: `salvage apply` executes plans (after confirmation and the playbooks' approvals).
# advisory: every apply is a dry run: salvage shows what it would do and writes nothing.
mode: enforce

# Where export_bundle steps write trace bundles.
bundles: .salvage/bundles

approvals:
  # Who may approve a step whose plan names no approvers (the policy's `approvers` hook
  # names them for the shipped policies). `salvage init` puts the person who ran it here;
  # list your on-call rota, e.g. [oncall-sre, alice]. Empty: nobody may, and `salvage check`
  # refuses playbooks with approval steps nobody could answer.
  default_approvers: []
  # Whether the operator who started an execution may approve its own steps.
  allow_self_approval: false
  # How long an approval waits when the playbook sets no timeout; then it is denied.
  default_timeout: 1h
  # Who the CLI believes a person is (approve, deny, confirm, abandon, apply, resume,
  # reload --accept). local: --as NAME (else $SALVAGE_ACTOR, else $USER) at its word.
  # strict: --as must be the OS user running the command (its uid in /etc/passwd; $USER is
  # not trusted) or the person of the token given with --token or $SALVAGE_TOKEN
  # (`salvage token add NAME`).
  identity: local

# Which runtime acts on which runs. `store` is built in: it performs the data side of each
# action on the run store (creates branches and replays, cancels, and records resume
# requests and approvals on the run for the runtime that owns it). A run whose runtime is not
# configured is refused, never handed to another runtime.
runtimes:
  # Agent runs (runs without metadata.workflowId).
  agent: store
  # Workflow runs whose workflow id is not listed under `workflows`.
  workflow: store
  # Workflow id -> runtime, e.g.  nightly-sync: sync-worker
  workflows: {}
  # Planning-runtime runs (metadata.planningRuntime: true). null: not configured, so their
  # recovery fails closed.
  planning: null
  # Named runtimes, for the routes above. Two kinds:
  adapters: {}   # replace {} with entries like the examples below
  #   # `command`: runs a program per action. It gets the action request as JSON on stdin (and
  #   # SALVAGE_RUN_ID, SALVAGE_ACTION, SALVAGE_IDEMPOTENCY_KEY, ... in its environment) and
  #   # may answer {"outcome": "ok", "createdRunId": "...", "detail": {...}} on stdout; nothing
  #   # on stdout with exit status 0 is `ok`; a non-zero exit or a timeout is `failed`, with
  #   # the end of stderr kept in the journal.
  #   sync-worker:
  #     kind: command
  #     timeout: 5m                      # per action unless the action sets its own
  #     actions:                         # catalog action -> program
  #       resume_run:
  #         command: [./bin/resume-run, --verbose]
  #         timeout: 10m
  #         env: {SYNC_REGION: eu-west-1}
  #         working_dir: ./ops
  #       cancel_run:
  #         command: [./bin/cancel-run]
  #
  #   # `http`: POSTs the action request as JSON, with an Idempotency-Key header. 2xx is
  #   # `ok` (a JSON body {"outcome", "createdRunId", "detail"} is honoured); other statuses
  #   # are `failed`. Only read_only and idempotent actions are retried.
  #   ops-api:
  #     kind: http
  #     base_url: https://runtime.internal.example
  #     timeout: 30s
  #     connect_timeout: 5s
  #     headers:
  #       Authorization: Bearer ${OPS_API_TOKEN}   # ${NAME} reads the environment
  #     ca_file: ./certs/internal-ca.pem          # extra CA certificates to trust
  #     retry: {max_attempts: 3, initial_backoff: 200ms, max_backoff: 5s}
  #     actions:
  #       resume_run: "/runs/{runId}/resume"    # {runId}, {executionId}, {stepId}, ...
  #       resume_replay: "/runs/{runId}/resume"  # (quote URLs: YAML reads { } as a mapping)
  #       resolve_approval: {url: "/runs/{runId}/approval", timeout: 2m}

# `salvage serve`'s Prometheus metrics (the README's "Observing salvage"): where GET /metrics
# is served (--metrics overrides it; none by default) and the histograms' upper bounds in
# seconds, strictly increasing (plan, policy_hook, step, approval_wait, journal_commit).
# metrics:
#   listen: 127.0.0.1:9464
#   buckets:
#     plan: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

# Where `notify` steps, approval requests and an execution's end are sent (the README's
# "Notifications"). A playbook names a channel as `channel: NAME` or `channel: TYPE:NAME`
# (`pagerduty:agents-oncall`); `salvage check` refuses a name not defined here. Secrets are
# read from the environment variables named here, never written in this file. None
# configured: `notify` steps are only logged.
# notifications:
#   default: ops-webhook             # the channel of `notify` steps that name none
#   inbox_url: https://salvage.example.internal   # messages link to the inbox's pages
#   timeout: 10s                     # per request
#   retry: {max_attempts: 4, initial_backoff: 200ms, max_backoff: 5s}   # 5xx, 429, no answer
#   channels:
#     ops-webhook:
#       type: webhook                # JSON body, X-Salvage-Signature: sha256=HMAC(body)
#       url: https://hooks.example.internal/salvage
#       secret_env: SALVAGE_WEBHOOK_SECRET
#       events: [notify, approval_requested, escalated, resolved]   # the default for webhooks
#     chat:
#       type: slack                  # a Slack-compatible incoming webhook
#       url_env: SLACK_WEBHOOK_URL   # or `url:` when the URL is not a secret
#     agents-oncall:
#       type: pagerduty              # Events API v2: trigger, then resolve on recovery
#       routing_key_env: PAGERDUTY_ROUTING_KEY
#       events_url: https://events.pagerduty.com/v2/enqueue

# The HTTP API and approval inbox (the README's "Tokens and identity"). People authenticate
# with a token (`salvage token add NAME`) or through a reverse proxy doing SSO: its user header
# is believed only from the addresses listed here (addresses or CIDR ranges, IPv4 or IPv6);
# from any other address the header is refused (403). None listed: no header is believed.
# web:
#   listen: 127.0.0.1:8089
#   trusted_proxies: [127.0.0.1, 10.0.0.0/8]
#   user_header: X-Forwarded-User
"#;

/// The `salvage.yaml` that `salvage init` writes: [`DEFAULT_CONFIG_YAML`] with `approver` (the
/// person running it) as the default approver, so that approvals can be given from the start.
pub fn config_template(approver: Option<&str>) -> String {
    match approver.map(str::trim).filter(|name| !name.is_empty() && !name.chars().any(char::is_control)) {
        Some(name) => DEFAULT_CONFIG_YAML.replacen(
            "  default_approvers: []",
            &format!("  default_approvers: [{}]", serde_json::Value::String(name.to_owned())),
            1,
        ),
        None => DEFAULT_CONFIG_YAML.to_owned(),
    }
}

impl super::runtime::ResolveRuntime for RuntimeRegistry {
    fn resolve(&self, run: &Run) -> Result<Arc<dyn Runtime>, RuntimeError> {
        RuntimeRegistry::resolve(self, run)
    }

    fn pinned(&self) -> Option<super::record::PinnedRuntimes> {
        Some(self.pinned.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_section_sets_the_listen_address_and_each_histograms_buckets() {
        let text = "metrics:\n  listen: 127.0.0.1:9464\n  buckets:\n    plan: [0.5, 2, 30]\n    step: [1]\n";
        let config = SalvageConfig::parse(Path::new("salvage.yaml"), text).expect("valid");
        assert_eq!(config.metrics.listen, Some("127.0.0.1:9464".parse().expect("address")));
        assert_eq!(config.metrics.buckets.plan, vec![0.5, 2.0, 30.0]);
        assert_eq!(config.metrics.buckets.step, vec![1.0]);
        let defaults = crate::telemetry::HistogramBuckets::default();
        assert_eq!(config.metrics.buckets.policy_hook, defaults.policy_hook, "unnamed histograms keep the defaults");
        assert_eq!(
            SalvageConfig::parse(Path::new("salvage.yaml"), "").expect("empty").metrics,
            MetricsConfig::default()
        );
    }

    #[test]
    fn the_templates_metrics_example_parses_when_uncommented() {
        let start = DEFAULT_CONFIG_YAML.find("# metrics:").expect("the metrics example");
        let example = &DEFAULT_CONFIG_YAML[start..];
        let example = &example[..example.find("\n\n").unwrap_or(example.len())];
        let text: String = example.lines().map(|line| format!("{}\n", line.trim_start_matches("# "))).collect();
        let config = SalvageConfig::parse(Path::new("salvage.yaml"), &text).expect("valid");
        assert_eq!(config.metrics.listen, Some("127.0.0.1:9464".parse().expect("address")));
        assert_eq!(config.metrics.buckets, crate::telemetry::HistogramBuckets::default(), "the default plan buckets");
    }

    #[test]
    fn bad_metrics_settings_are_each_reported_where_they_are() {
        let text = "metrics:\n  listen: localhost\n  buckets:\n    plan: [1, 0.5]\n    step: []\n    steps: [1]\n    journal_commit: [0.1, fast]\n";
        let error = SalvageConfig::parse(Path::new("salvage.yaml"), text).expect_err("invalid");
        let problems: Vec<String> = error.problems().iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(problems[0].starts_with("salvage.yaml:2:11: `metrics.listen` \"localhost\""), "{problems:#?}");
        let rest = &problems[1..];
        let find =
            |needle: &str| rest.iter().find(|p| p.contains(needle)).unwrap_or_else(|| panic!("{needle}: {rest:#?}"));
        assert!(find("steps").starts_with("salvage.yaml:6:5:"), "{rest:#?}");
        assert_eq!(
            find("metrics.buckets.plan"),
            "salvage.yaml:4:15: `metrics.buckets.plan`: bucket bound #2 (0.5) must be greater than the one before it (1)"
        );
        assert_eq!(
            find("metrics.buckets.step"),
            "salvage.yaml:5:11: `metrics.buckets.step`: a histogram needs at least one bucket bound"
        );
        assert!(find("journal_commit[]").starts_with("salvage.yaml:7:27:"), "{rest:#?}");
    }

    #[test]
    fn the_templates_notifications_example_parses_when_uncommented() {
        let start = DEFAULT_CONFIG_YAML.find("# notifications:").expect("the notifications example");
        let example = &DEFAULT_CONFIG_YAML[start..];
        let example = &example[..example.find("\n\n").unwrap_or(example.len())];
        let text: String = example.lines().map(|line| format!("{}\n", line.trim_start_matches("# "))).collect();
        let config = SalvageConfig::parse(Path::new("salvage.yaml"), &text).expect("valid");
        let notifications = &config.notifications;
        assert_eq!(notifications.default.as_deref(), Some("ops-webhook"));
        assert_eq!(notifications.retry.max_attempts, 4);
        let kinds: Vec<_> = notifications.channels.values().map(|c| (c.name.as_str(), c.kind())).collect();
        assert_eq!(
            kinds,
            [
                ("agents-oncall", ChannelKind::PagerDuty),
                ("chat", ChannelKind::Slack),
                ("ops-webhook", ChannelKind::Webhook)
            ]
        );
        assert_eq!(
            notifications.channels["chat"].target,
            ChannelTarget::Slack { url: UrlSource::Env("SLACK_WEBHOOK_URL".into()) }
        );
        assert_eq!(notifications.channels["agents-oncall"].events, ChannelKind::PagerDuty.default_events());
    }

    #[test]
    fn bad_notification_channels_are_each_reported_where_they_are() {
        let text = "notifications:\n  default: pager\n  channels:\n    hook:\n      type: webhook\n      url: hooks.example\n      secret_env: my secret\n    chat:\n      type: slak\n    page:\n      type: pagerduty\n      url: https://x.example\n      events: [resolved, paged]\n";
        let error = SalvageConfig::parse(Path::new("salvage.yaml"), text).expect_err("invalid");
        let problems: Vec<String> = error.problems().iter().map(ToString::to_string).collect();
        let expected = [
            "salvage.yaml:6:12: `notifications.channels.hook.url` must be an http:// or https:// URL, found \"hooks.example\"",
            "salvage.yaml:7:19: `notifications.channels.hook.secret_env` names an environment variable, found \"my secret\"",
            "salvage.yaml:9:13: `notifications.channels.chat.type` \"slak\" is not a channel type",
            "salvage.yaml:12:7: `url` is not a setting of a pagerduty channel (`notifications.channels.page`)",
            "salvage.yaml:13:26: `notifications.channels.page.events`: \"paged\" is not an event",
            "salvage.yaml:11:7: `notifications.channels.page` (pagerduty) needs `routing_key_env`",
            "salvage.yaml:2:12: `notifications.default`: channel `pager` is not defined in salvage.yaml",
        ];
        assert_eq!(problems, expected);
    }

    #[test]
    fn the_templates_web_example_parses_when_uncommented() {
        let start = DEFAULT_CONFIG_YAML.find("# web:").expect("the web example");
        let example = &DEFAULT_CONFIG_YAML[start..];
        let example = &example[..example.find("\n\n").unwrap_or(example.len())];
        let text: String = example.lines().map(|line| format!("{}\n", line.trim_start_matches("# "))).collect();
        let web = SalvageConfig::parse(Path::new("salvage.yaml"), &text).expect("valid").web;
        assert_eq!(web.listen, Some("127.0.0.1:8089".parse().expect("address")));
        let proxies: Vec<String> = web.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(proxies, ["127.0.0.1", "10.0.0.0/8"]);
        assert_eq!(web.user_header, "X-Forwarded-User");
        let proxy = super::super::identity::TrustedProxy::from_config(&web);
        assert!(
            proxy.is_trusted("10.9.8.7".parse().expect("ip")) && !proxy.is_trusted("192.0.2.1".parse().expect("ip"))
        );
    }

    #[test]
    fn the_web_section_and_approvals_identity_are_checked_where_they_are() {
        let text = "approvals:\n  identity: stirct\nweb:\n  listen: localhost\n  trusted_proxies: [127.0.0.1, fd00::/8, 10.0.0.1/8, proxy.internal, ::/200]\n  user_header: X Forwarded User\n  users: []\n";
        let error = SalvageConfig::parse(Path::new("salvage.yaml"), text).expect_err("invalid");
        let problems: Vec<String> = error.problems().iter().map(ToString::to_string).collect();
        let expected = [
            "salvage.yaml:2:13: `approvals.identity` must be local or strict, found \"stirct\"",
            "salvage.yaml:7:3: unknown key `users` in `web`",
            "salvage.yaml:4:11: `web.listen` \"localhost\": invalid socket address syntax",
            "salvage.yaml:5:42: `web.trusted_proxies`: 10.0.0.1/8 has bits set after the first 8; the range is 10.0.0.0/8",
            "salvage.yaml:5:54: `web.trusted_proxies`: \"proxy.internal\" is not an IP address",
            "salvage.yaml:5:70: `web.trusted_proxies`: the prefix length \"200\" is not a number from 0 to 128",
            "salvage.yaml:6:16: `web.user_header` \"X Forwarded User\" is not an HTTP header name",
        ];
        assert_eq!(problems, expected);
        assert_eq!(error.problems()[0].help.as_deref(), Some("did you mean `strict`?"));

        let strict = "approvals:\n  identity: strict\nweb:\n  trusted_proxies: ['::1']\n";
        let config = SalvageConfig::parse(Path::new("salvage.yaml"), strict).expect("valid");
        assert_eq!(config.approvals.identity, IdentityMode::Strict);
        assert_eq!((config.web.listen, config.web.user_header.as_str()), (None, DEFAULT_USER_HEADER));
        assert_eq!(
            SalvageConfig::parse(Path::new("salvage.yaml"), "").expect("empty").approvals.identity,
            IdentityMode::Local
        );
    }

    #[test]
    fn suggestions_catch_typos_only() {
        assert_eq!(did_you_mean("playbook", TOP_KEYS.iter().copied()).as_deref(), Some("did you mean `playbooks`?"));
        assert_eq!(did_you_mean("advisroy", ["advisory", "enforce"]).as_deref(), Some("did you mean `advisory`?"));
        assert_eq!(did_you_mean("kubernetes", ADAPTER_KINDS.iter().copied()), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
