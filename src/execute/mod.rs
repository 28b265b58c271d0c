//! The runner: executes a plan step by step, journalling each step before and after its effect.

pub mod runtime;
pub mod store_runtime;

pub use runtime::{ActionRequest, ActionResult, Runtime, RuntimeError};
pub use store_runtime::StoreRuntime;
