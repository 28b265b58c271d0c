//! The command line, as parsed. Validation that needs more than clap (store specs, JSON
//! arguments) happens in the commands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// `salvage --version`: the release, the commit it was built from and when.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SALVAGE_COMMIT"),
    ", built ",
    env!("SALVAGE_BUILD_DATE"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "salvage",
    version = VERSION,
    about = "Declarative, policy-driven recovery for AI-agent and workflow runs",
    long_about = "salvage reads the runs an agent or workflow runtime persisted (agnostic-agents \
                  run records), explains incidents and plans their recovery.\n\n\
                  Exit codes: 0 success, 1 a check failed, 2 bad usage or input, 3 store error."
)]
pub struct Cli {
    /// Where runs are stored: sqlite:PATH, file:DIR, memory: or postgres://USER@HOST/DB
    /// [default: salvage.yaml's `store`, else sqlite:.salvage/salvage.db]
    #[arg(long, global = true, env = "SALVAGE_STORE", value_name = "STORE")]
    pub store: Option<String>,

    /// The configuration file [default: ./salvage.yaml when it exists]
    #[arg(long, global = true, env = "SALVAGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log filter for diagnostics on stderr (e.g. `debug`, `salvage=trace`).
    #[arg(long, global = true, env = "SALVAGE_LOG", default_value = "warn", value_name = "FILTER")]
    pub log: String,

    /// How diagnostics on stderr are written: text for people, json (one object per line) for
    /// log collectors.
    #[arg(long, global = true, env = "SALVAGE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Export OpenTelemetry spans (incident, plan, policy hook, execution, step) over OTLP/HTTP
    /// to this collector, e.g. http://127.0.0.1:4318 (`/v1/traces` is added). Off unless this
    /// or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import run JSON files, file-store directories, trace or bundle files into the store.
    ///
    /// All or nothing: if any input is unreadable or an invalid trace, nothing is imported
    /// and every problem is listed.
    Import {
        /// Files or directories to import.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        format: Format,
    },

    /// List the runs of the store.
    Runs {
        /// Only runs with this status (e.g. failed, paused, waiting_for_approval).
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        /// Print only the run ids, one per line (for scripts).
        #[arg(short, long, conflicts_with = "json")]
        quiet: bool,
        #[command(flatten)]
        format: Format,
    },

    /// Summarize one run (RunInspector.summarize).
    Inspect {
        /// The run (its id, as `salvage runs` lists it).
        run_id: String,
        #[command(flatten)]
        format: Format,
    },

    /// Show the run tree (RunTreeInspector): the whole store, or one run's subtree.
    Tree {
        /// Show only the tree below this run.
        #[arg(long, value_name = "RUN_ID")]
        root: Option<String>,
        /// Leave out the `[status]` after each run id.
        #[arg(long)]
        no_status: bool,
        /// Draw each branch and replay under the run it came from, with the checkpoint and the
        /// salvage execution that made it (not as a root of its own, as the reference does).
        #[arg(long)]
        lineage: bool,
        #[command(flatten)]
        format: Format,
    },

    /// Build the incident report of a run (IncidentDebugger.createReport).
    Report {
        /// The run (its id, as `salvage runs` lists it).
        run_id: String,
        /// A known-good run to diff against.
        #[arg(long, value_name = "RUN_ID")]
        compare_to: Option<String>,
        #[command(flatten)]
        format: Format,
    },

    /// Diff two runs (TraceDiffer.diff(left, right)).
    Diff {
        /// The run to diff from (e.g. a known-good run).
        left: String,
        /// The run to diff to (e.g. the failed run).
        right: String,
        #[command(flatten)]
        format: Format,
    },

    /// Export a run, a partial run from a checkpoint, or a bundle of runs as a portable trace.
    Export {
        /// The run to export (several with --bundle).
        #[arg(required = true, value_name = "RUN_ID")]
        run_ids: Vec<String>,
        /// Export the state at a checkpoint as a new paused run (TraceSerializer.exportPartialRun).
        #[arg(long, conflicts_with = "bundle")]
        partial: bool,
        /// The checkpoint for --partial (default: the run's last checkpoint).
        #[arg(long, requires = "partial", value_name = "CHECKPOINT_ID")]
        checkpoint: Option<String>,
        /// Export several runs as one bundle (TraceSerializer.exportBundle).
        #[arg(long)]
        bundle: bool,
        /// Metadata to record in the trace, as a JSON object.
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
        /// Write the trace to this file instead of stdout (atomically).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },

    /// Validate a trace or bundle file (TraceSerializer.validateTrace). Exit 1 when invalid.
    Validate {
        /// The trace or bundle file (`salvage export` writes them).
        file: PathBuf,
        /// Accept trace bundles.
        #[arg(long)]
        allow_bundle: bool,
        #[command(flatten)]
        format: Format,
    },

    /// Show a run's trace correlation ids (TraceCorrelation.fromRun).
    Correlate {
        /// The run (its id, as `salvage runs` lists it).
        run_id: String,
        #[command(flatten)]
        format: Format,
    },

    /// Create a distributed run envelope for handing a run to another process.
    Envelope {
        /// The run (its id, as `salvage runs` lists it).
        run_id: String,
        /// What the receiver should do: resume, branch or replay.
        #[arg(long, value_name = "ACTION")]
        action: String,
        /// Which runtime continues it: agent or workflow.
        #[arg(long, default_value = "agent", value_name = "KIND")]
        runtime_kind: String,
        /// The checkpoint to continue from.
        #[arg(long, value_name = "CHECKPOINT_ID")]
        checkpoint: Option<String>,
        #[command(flatten)]
        format: Format,
    },

    /// Check playbooks (and the policy hooks they name). Exit 1 when there are errors.
    Check {
        /// Directory of playbooks.
        #[arg(long, value_name = "DIR")]
        playbooks: Option<PathBuf>,
        /// Directory of Rhai policies to resolve `policy.NAME` hooks against.
        #[arg(long, value_name = "DIR")]
        policies: Option<PathBuf>,
        #[command(flatten)]
        format: Format,
    },

    /// Draw a playbook's recovery graph.
    Graph {
        /// A playbook name (from --playbooks) or a playbook file.
        #[arg(value_name = "PLAYBOOK_NAME_OR_FILE")]
        playbook: String,
        /// How to draw it.
        #[arg(long, value_enum, default_value = "dot", conflicts_with = "json")]
        format: super::playbooks::GraphFormat,
        /// The graph as JSON: its start, nodes and transitions (`--format json`).
        #[arg(long)]
        json: bool,
        /// The directory of playbooks to find PLAYBOOK_NAME in [default: salvage.yaml's
        /// `playbooks`].
        #[arg(long, value_name = "DIR")]
        playbooks: Option<PathBuf>,
        /// The directory of policies the playbook's hooks are resolved against [default:
        /// salvage.yaml's `policies`].
        #[arg(long, value_name = "DIR")]
        policies: Option<PathBuf>,
    },

    /// Plan the recovery of a run: classify the incident, choose the playbook, lay out its steps.
    Plan {
        /// The run (its id, as `salvage runs` lists it).
        run_id: String,
        /// A known-good run to compare with.
        #[arg(long, value_name = "RUN_ID")]
        compare_to: Option<String>,
        /// The playbooks to plan with [default: salvage.yaml's `playbooks`].
        #[arg(long, value_name = "DIR")]
        playbooks: Option<PathBuf>,
        /// The policies to plan with [default: salvage.yaml's `policies`].
        #[arg(long, value_name = "DIR")]
        policies: Option<PathBuf>,
        #[command(flatten)]
        format: Format,
    },

    /// Replay proposed policies or playbooks over past incidents before they ship: every
    /// decision that changes, with both explanations. Exit 1 on a dangerous change (unless
    /// --accept), 2 when a set does not load.
    ///
    /// The incidents are the most recent runs of the store (by creation time) that are failed,
    /// waiting_for_approval or paused. Each is planned with the current set and with the
    /// proposed one; the decisions compared are the incident kind, the playbook, the
    /// checkpoint of each step, its approval and approvers, the steps of the expected path and
    /// its outcome, and whether the plan failed closed (digests and the wording of reasons are
    /// not decisions: an equivalent refactor shows no changes). Dangerous: an approval that was
    /// required and no longer is, an irreversible step newly reachable, a checkpoint moved
    /// after the failure point.
    ///
    /// Current set: salvage.yaml's `policies` and `playbooks`, or --against DIR. Proposed set:
    /// --policies and --playbooks; a directory not given is salvage.yaml's.
    Simulate {
        /// The proposed policies [default: salvage.yaml's `policies`].
        #[arg(long, value_name = "DIR")]
        policies: Option<PathBuf>,
        /// The proposed playbooks [default: salvage.yaml's `playbooks`].
        #[arg(long, value_name = "DIR")]
        playbooks: Option<PathBuf>,
        /// The current set: a directory holding `policies/` and/or `playbooks/` (e.g. a copy of
        /// what is deployed); a subdirectory it lacks is salvage.yaml's [default: salvage.yaml's
        /// `policies` and `playbooks`].
        #[arg(long, value_name = "DIR")]
        against: Option<PathBuf>,
        /// Replay at most N incidents, the most recent first.
        #[arg(long, default_value_t = 100, value_name = "N")]
        limit: usize,
        /// Only incidents created within this long before now: a number and s, m, h, d or w
        /// (e.g. 30m, 24h, 7d).
        #[arg(long, value_name = "DURATION", value_parser = super::simulate::parse_duration)]
        since: Option<std::time::Duration>,
        /// Exit 0 even when a change is dangerous (the changes are still shown).
        #[arg(long)]
        accept: bool,
        /// Print the simulation as JSON and nothing else on stdout.
        #[arg(long)]
        json: bool,
    },

    /// Policy tooling.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },

    /// Test playbooks and policies: plan recorded runs and compare each plan with what the test
    /// expects. Exit 1 when a test fails, 2 when a test file cannot be used.
    ///
    /// Runs every *.test.yaml under TESTS_DIR (see docs/testing-policies.md). --policies and
    /// --playbooks override the directories the test files name.
    Test {
        /// A directory searched recursively for *.test.yaml files, or one test file.
        #[arg(value_name = "TESTS_DIR", default_value = "tests/playbooks")]
        path: PathBuf,
        /// Plan every test with the playbooks of DIR (instead of the test file's `playbooks:`).
        #[arg(long, value_name = "DIR")]
        playbooks: Option<PathBuf>,
        /// Plan every test with the policies of DIR (instead of the test file's `policies:`).
        #[arg(long, value_name = "DIR")]
        policies: Option<PathBuf>,
        /// Print every test's result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },

    /// Execute a recovery plan: a fresh plan for RUN_ID, or a reviewed plan file.
    ///
    /// Shows the plan and asks for confirmation on a terminal (--yes skips the question and is
    /// required when stdin is not a terminal). With --dry-run (or `mode: advisory` in
    /// salvage.yaml) the same planner and runner run over an in-memory copy of the store:
    /// every step, the runs it would create and the approvals it would wait for are shown, and
    /// nothing is written. Exit 0 when the execution ends or waits for a person, 1 when it
    /// escalates or needs an operator.
    Apply {
        /// The run to recover (planned now).
        #[arg(value_name = "RUN_ID", required_unless_present = "plan", conflicts_with = "plan")]
        run_id: Option<String>,
        /// A plan file (`salvage plan RUN_ID --json > plan.json`); refused when the run or the
        /// plan changed since.
        #[arg(long, value_name = "PLAN_FILE")]
        plan: Option<PathBuf>,
        /// A known-good run to compare with when planning.
        #[arg(long, value_name = "RUN_ID", conflicts_with = "plan")]
        compare_to: Option<String>,
        /// The playbooks to plan with [default: salvage.yaml's `playbooks`].
        #[arg(long, value_name = "DIR")]
        playbooks: Option<PathBuf>,
        /// The policies to plan with [default: salvage.yaml's `policies`].
        #[arg(long, value_name = "DIR")]
        policies: Option<PathBuf>,
        /// Show what would happen; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Recover again on purpose: a run that an earlier execution recovered (or that a
        /// recovery created) is otherwise refused, with that execution's id and outcome.
        #[arg(long)]
        again: bool,
        /// Who applies the plan [default: the token's person; $SALVAGE_ACTOR, else $USER; with
        /// `approvals.identity: strict`, the OS user].
        #[arg(long = "as", value_name = "NAME", value_parser = approver_name)]
        actor: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        format: Format,
    },

    /// Continue an execution after approvals, a crash or a restart.
    Resume {
        /// The execution (its id, as `salvage executions` lists it).
        execution_id: String,
        /// Who acts [default: the token's person; $SALVAGE_ACTOR, else $USER; with
        /// `approvals.identity: strict`, the OS user].
        #[arg(long = "as", value_name = "NAME", value_parser = approver_name)]
        actor: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        format: Format,
    },

    /// List recovery executions.
    Executions {
        /// running, waiting_for_approval, waiting, needs_operator, handed_off, resolved, abandoned
        /// or escalated.
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        #[command(flatten)]
        format: Format,
    },

    /// List the incidents `salvage serve` handled, oldest first: what was decided for each
    /// (state, mode, kind, playbook, outcome), its executions and linked follow-ups.
    Incidents {
        /// Only incidents in this state.
        #[arg(long, value_name = "STATE", value_parser = clap::builder::PossibleValuesParser::new(super::incidents::INCIDENT_STATES))]
        status: Option<String>,
        /// Only incidents found since then: a duration before now (30m, 24h, 7d) or an RFC 3339
        /// timestamp (2026-01-31T08:00:00Z).
        #[arg(long, value_name = "DURATION|TIMESTAMP", value_parser = super::incidents::parse_since)]
        since: Option<time::OffsetDateTime>,
        #[command(flatten)]
        format: Format,
    },

    /// Every decision and answer, for a compliance log: executions started, approvals asked,
    /// answered and refused, operator confirmations, abandonments and ends, what the daemon
    /// decided for each incident, and reload gate acceptances — who, when, from where (cli or
    /// daemon) and the plan hash. Oldest first.
    Audit {
        /// Only entries since then: a duration before now (30m, 24h, 7d) or an RFC 3339
        /// timestamp (2026-01-31T08:00:00Z).
        #[arg(long, value_name = "DURATION|TIMESTAMP", value_parser = super::incidents::parse_since)]
        since: Option<time::OffsetDateTime>,
        #[command(flatten)]
        format: Format,
    },

    /// Show one incident: its record, the plan's steps with their explanations, the advisory
    /// dry run, the executions of the run and the follow-up incidents linked to them.
    Incident {
        /// The incident's run.
        run_id: String,
        #[command(flatten)]
        format: Format,
    },

    /// List the approvals executions are waiting for.
    Approvals {
        #[command(flatten)]
        format: Format,
    },

    /// Approve a step an execution waits on, then let the execution go on.
    Approve {
        /// The execution (its id, as `salvage executions` lists it).
        execution_id: String,
        /// The step that waits for approval (as `salvage approvals` or the execution lists it).
        step_id: String,
        /// Who approves (must be one of the step's approvers). With `approvals.identity: strict`, the
        /// OS user or the person of --token.
        #[arg(long = "as", value_name = "NAME", value_parser = approver_name, required_unless_present = "token")]
        actor: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        /// Why (recorded in the journal and shown to the next operator).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        format: Format,
    },

    /// Deny a step an execution waits on.
    Deny {
        /// The execution (its id, as `salvage executions` lists it).
        execution_id: String,
        /// The step that waits for approval (as `salvage approvals` or the execution lists it).
        step_id: String,
        /// Who denies (must be one of the step's approvers). With `approvals.identity: strict`, the
        /// OS user or the person of --token.
        #[arg(long = "as", value_name = "NAME", value_parser = approver_name, required_unless_present = "token")]
        actor: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        /// Why (recorded in the journal and shown to the next operator).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        format: Format,
    },

    /// Say what happened to a step that was interrupted (an execution in needs_operator).
    Confirm {
        /// The execution (its id, as `salvage executions` lists it).
        execution_id: String,
        /// The step that was interrupted (as `salvage approvals` or the execution lists it).
        step_id: String,
        /// The step's outcome: `ok` if its effect happened, `failed` if it did not.
        #[arg(long, value_name = "OUTCOME", conflicts_with = "retry")]
        outcome: Option<String>,
        /// With `--outcome ok` for a step that creates a run (a branch, a replay): the run it
        /// created, when you know it (salvage looks for it otherwise).
        #[arg(long, value_name = "RUN_ID", requires = "outcome")]
        created: Option<String>,
        /// Run the step again (a new attempt, with a new idempotency key; a step that creates a
        /// run first looks for the run an earlier attempt created).
        #[arg(long)]
        retry: bool,
        /// Who answers for the step (recorded in the journal). With `approvals.identity: strict`,
        /// the OS user or the person of --token.
        #[arg(long = "as", value_name = "NAME", value_parser = approver_name, required_unless_present = "token")]
        actor: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        /// Why (recorded in the journal and shown to the next operator).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        format: Format,
    },

    /// Close an execution as it stands (the way out of one that cannot go on): its journal is
    /// kept, nothing is sent to any runtime. The run can then be recovered again with
    /// `salvage apply RUN --again`.
    Abandon {
        /// The execution (its id, as `salvage executions` lists it).
        execution_id: String,
        /// Who closes the execution (recorded in the journal). With `approvals.identity: strict`,
        /// the OS user or the person of --token.
        #[arg(long = "as", value_name = "NAME", value_parser = approver_name, required_unless_present = "token")]
        actor: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        /// Why (recorded in the journal).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        format: Format,
    },

    /// Run the recovery daemon: find new incidents in the store and plan them (advisory) or
    /// recover them (enforce), hot-reloading playbooks and policies.
    ///
    /// Failed, waiting-for-approval and paused runs are handled once each (also across
    /// restarts). Playbook and policy changes are re-read and checked as a whole; only a clean
    /// set goes live (`salvage status` shows the last reload). SIGHUP reloads, SIGTERM or
    /// Ctrl-C stops after the running steps.
    Serve {
        /// advisory: plan and dry-run each incident, write nothing; enforce: execute [default:
        /// salvage.yaml's `mode`]
        #[arg(long, value_enum)]
        mode: Option<super::serve::ModeArg>,
        /// What must accept a clean new set before it goes live.
        #[arg(long, value_enum, default_value = "none")]
        reload_gate: super::serve::GateArg,
        /// Incidents handled at the same time.
        #[arg(long, default_value_t = 4, value_name = "N")]
        workers: usize,
        /// Incidents claimed and waiting for a worker, at most (backpressure on the feed).
        #[arg(long, default_value_t = 64, value_name = "N")]
        queue: usize,
        /// Who starts executions [default: salvage-serve].
        #[arg(long = "as", value_name = "NAME", value_parser = approver_name)]
        actor: Option<String>,
        /// The playbooks to serve (watched and hot-reloaded) [default: salvage.yaml's `playbooks`].
        #[arg(long, value_name = "DIR")]
        playbooks: Option<PathBuf>,
        /// The policies to serve (watched and hot-reloaded) [default: salvage.yaml's `policies`].
        #[arg(long, value_name = "DIR")]
        policies: Option<PathBuf>,
        /// Seconds running steps get to finish at shutdown.
        #[arg(long, default_value_t = 30, value_name = "SECONDS")]
        shutdown_grace: u64,
        /// postgres:// only: how long a replica's claims and leadership last without a
        /// heartbeat (database clock); a replica that dies or stalls loses its work after this.
        #[arg(long, default_value = "15s", value_name = "DURATION", value_parser = super::simulate::parse_duration)]
        lease_ttl: std::time::Duration,
        /// postgres:// only: how long finished claims, finished incident records, dry runs and
        /// replicas gone are kept before the leader prunes them.
        #[arg(long, default_value = "7d", value_name = "DURATION", value_parser = super::simulate::parse_duration)]
        retention: std::time::Duration,
        /// postgres:// only: take no incidents while this replica's playbooks or policies differ
        /// from the leader's (during a rolling change, only replicas on the leader's set act).
        #[arg(long)]
        require_same_set: bool,
        /// Serve Prometheus metrics at http://ADDRESS/metrics (port 0: a free port, logged)
        /// [default: salvage.yaml's `metrics.listen`, else none].
        #[arg(long, value_name = "ADDRESS")]
        metrics: Option<std::net::SocketAddr>,
        /// Serve the HTTP API and the approval inbox at http://ADDRESS/ beside the daemon (port
        /// 0: a free port, logged) [default: salvage.yaml's `web.listen`, else none].
        #[arg(long, value_name = "ADDRESS")]
        http: Option<std::net::SocketAddr>,
    },

    /// Serve the HTTP API and the approval inbox without a daemon: answered executions go on in
    /// this process. People sign in with a token (`salvage token add NAME`) or come through a
    /// trusted proxy (salvage.yaml's `web:`).
    Web {
        /// Where to listen (port 0: a free port, logged) [default: salvage.yaml's `web.listen`,
        /// else 127.0.0.1:8089].
        #[arg(long, value_name = "ADDRESS")]
        listen: Option<std::net::SocketAddr>,
    },

    /// Show what `salvage serve` is doing on this store: active playbook and policy digests,
    /// the last reload, whether disk differs, pending approvals, executions in flight,
    /// incidents handled. Exit 1 when no daemon is running.
    Status {
        #[command(flatten)]
        format: Format,
    },

    /// Ask the running `salvage serve` to reload its sets now (as SIGHUP does); with
    /// `--accept`, first accept the set its reload gate refused (shown by `salvage status`),
    /// recorded with who and when.
    Reload {
        /// Accept the set waiting for acceptance: the daemon applies it although the gate
        /// refused it, as long as the files on disk are still that set.
        #[arg(long)]
        accept: bool,
        /// Who accepts [default: the token's person; $SALVAGE_ACTOR, else $USER; with
        /// `approvals.identity: strict`, the OS user].
        #[arg(long = "as", value_name = "NAME", value_parser = approver_name, requires = "accept")]
        actor: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        format: Format,
    },

    /// Per-person API tokens: a person proves who they are with one (`--token` or
    /// $SALVAGE_TOKEN on the CLI, the HTTP API and the approval inbox).
    ///
    /// A token is printed once, by `add`; the store keeps only its SHA-256. Anyone who can
    /// write to the store can create tokens: guard the store as you guard the tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },

    /// Bring the store's schema up to date and list the migrations applied (sqlite: and
    /// postgres://; memory: and file: have none).
    ///
    /// Every command does the same when it opens the store; run it on its own as a deploy step,
    /// e.g. before starting several `salvage serve` replicas on a new PostgreSQL database.
    /// Several processes migrating at once apply each migration once.
    Migrate {
        #[command(flatten)]
        format: Format,
    },

    /// Write a commented default salvage.yaml in the working directory.
    Init {
        /// Replace an existing salvage.yaml.
        #[arg(long)]
        force: bool,
    },

    /// Print a shell completion script: `salvage completions bash > /etc/bash_completion.d/salvage`,
    /// `salvage completions zsh > "${fpath[1]}/_salvage"`, `salvage completions fish >
    /// ~/.config/fish/completions/salvage.fish`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Print the manual page (roff): `salvage man | man -l -`, or with --dir one page per
    /// command (salvage.1, salvage-apply.1, ...) to install under a man1 directory.
    Man {
        /// Write salvage.1 and one page per command into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },

    /// Print the playbook JSON Schema (for editors: `# yaml-language-server: $schema=...`).
    Schema,

    /// Explain a diagnostic code (e.g. P054).
    Explain {
        /// The code, as a diagnostic prints it (P054, R003).
        code: String,
        #[command(flatten)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, Args)]
pub struct Format {
    /// Print the result as JSON (exactly the reference's object) and nothing else on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `--token`: who a person is, proven.
#[derive(Debug, Clone, Args)]
pub struct TokenArg {
    /// A token of yours (`salvage token add`): you act as its person. Prefer $SALVAGE_TOKEN: a
    /// command line is visible to every user of the machine (`ps`).
    #[arg(long, env = "SALVAGE_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
}

impl TokenArg {
    /// The token given; an empty `$SALVAGE_TOKEN` is none.
    pub fn get(&self) -> Option<&str> {
        self.token.as_deref().filter(|token| !token.is_empty())
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for NAME and print it, once.
    Add {
        /// The person the token authenticates (an approver name, as playbooks list them).
        #[arg(value_parser = approver_name)]
        name: String,
        /// Who creates it (recorded; the same identity rules as an approval) [default: $SALVAGE_ACTOR,
        /// else $USER; with `approvals.identity: strict`, the OS user].
        #[arg(long = "as", value_name = "NAME", value_parser = approver_name)]
        actor: Option<String>,
        #[command(flatten)]
        format: Format,
    },
    /// List the tokens: id, person, created when and by whom, revoked (never a secret).
    List {
        #[command(flatten)]
        format: Format,
    },
    /// Revoke a token: it never authenticates again.
    Revoke {
        /// The token's id, as `salvage token list` shows it.
        id: String,
        /// Who revokes it (recorded) [default: as for `add`].
        #[arg(long = "as", value_name = "NAME", value_parser = approver_name)]
        actor: Option<String>,
        #[command(flatten)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the Rhai definitions (`.d.rhai`) of the policy API for editors: the hooks to
    /// implement, `ctx` and its helpers, and the sandbox's built-in functions.
    Defs {
        /// Write them to this file instead of stdout.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// `--as NAME`: a name [`crate::limits::validate_approver_name`] accepts; a blank one is a usage
/// error (exit 2), so that `approve --as ""` can never match a blank approver.
fn approver_name(text: &str) -> Result<String, String> {
    crate::limits::validate_approver_name(text).map(|()| text.to_owned()).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every option, argument and command of `salvage` says what it is in `--help`.
    #[test]
    fn every_option_argument_and_command_has_help_text() {
        let mut missing = Vec::new();
        let mut pending = vec![(String::from("salvage"), Cli::command())];
        while let Some((path, command)) = pending.pop() {
            if command.get_about().is_none() && command.get_long_about().is_none() {
                missing.push(format!("{path} (the command)"));
            }
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_long().map_or(id.to_uppercase(), |l| format!("--{l}"))));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_name() != "help" {
                    pending.push((format!("{path} {}", sub.get_name()), sub.clone()));
                }
            }
        }
        missing.sort();
        assert!(missing.is_empty(), "without help text:\n{}", missing.join("\n"));
    }
}
