//! The runner: executes a plan step by step, journalling each step before and after its effect.

pub mod command_runtime;
pub mod config;
pub mod http_runtime;
pub mod runtime;
pub mod store_runtime;

pub use command_runtime::{CommandAction, CommandRuntime, CommandRuntimeConfig};
pub use config::{
    AdapterConfig, ApprovalSettings, ConfigError, ConfigProblem, Mode, RuntimeRegistry, RuntimesConfig, SalvageConfig,
};
pub use http_runtime::{HttpAction, HttpRetry, HttpRuntime, HttpRuntimeConfig};
pub use runtime::{ActionRequest, ActionResult, Runtime, RuntimeError};
pub use store_runtime::StoreRuntime;
