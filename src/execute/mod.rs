//! The runner: executes a plan step by step, journalling each step before and after its effect.

pub mod answering;
pub mod command_runtime;
pub mod compat;
pub mod config;
pub mod discovery;
mod engine;
pub mod fencing;
pub mod http_runtime;
pub mod identity;
pub mod notify;
pub mod overlay;
pub mod record;
pub mod runtime;
mod session;
mod state;
pub mod store_runtime;

pub use answering::{ApprovalAnswerRequest, GoOn, SeenApproval, answer_approval, go_on};
pub use command_runtime::{CommandAction, CommandRuntime, CommandRuntimeConfig};
pub use config::{
    AdapterConfig, ApprovalSettings, ConfigError, ConfigProblem, IdentityMode, RuntimeRegistry, RuntimesConfig,
    SalvageConfig, WebConfig,
};
pub(crate) use engine::hostname;
pub use engine::{
    AnswerOutcome, ApplyOptions, ConfirmOutcome, Confirmation, Decision, ExecuteError, ExecutionReport, OWNER_PREFIX,
    PlannedStep, Runner, RunnerSettings, StepReport, execution_of, journal_entries, lease_is_live, owner_key,
    short_digest,
};
pub use fencing::ReplicaLease;
pub use http_runtime::{HttpAction, HttpRetry, HttpRuntime, HttpRuntimeConfig, RuntimeProtocol};
pub use identity::{IdentityError, Person, TokenInfo, TokenRegistry, TrustedProxy, Via, resolve_cli_actor};
pub use record::{Execution, ExecutionStatus, FollowUp, JournalEntry, Mode, Origin, PinnedRuntimes};
pub use runtime::{ActionRequest, ActionResult, ResolveRuntime, RunExpectation, RunObservation, Runtime, RuntimeError};
pub use store_runtime::StoreRuntime;
