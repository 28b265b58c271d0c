//! The runner: executes a plan step by step, journalling each step before and after its effect.

pub mod command_runtime;
pub mod compat;
pub mod config;
mod engine;
pub mod http_runtime;
pub mod overlay;
pub mod record;
pub mod runtime;
mod state;
pub mod store_runtime;

pub use command_runtime::{CommandAction, CommandRuntime, CommandRuntimeConfig};
pub use config::{
    AdapterConfig, ApprovalSettings, ConfigError, ConfigProblem, RuntimeRegistry, RuntimesConfig, SalvageConfig,
};
pub use engine::{
    AnswerOutcome, Confirmation, Decision, ExecuteError, ExecutionReport, PlannedStep, Runner, RunnerSettings,
    StepReport, execution_of, journal_entries,
};
pub use http_runtime::{HttpAction, HttpRetry, HttpRuntime, HttpRuntimeConfig};
pub use record::{Execution, ExecutionStatus, JournalEntry, Mode};
pub use runtime::{ActionRequest, ActionResult, ResolveRuntime, Runtime, RuntimeError};
pub use store_runtime::StoreRuntime;
