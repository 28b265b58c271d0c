//! The runner: executes a plan step by step, journalling each step before and after its effect.

pub mod compat;
mod engine;
pub mod overlay;
pub mod record;
pub mod runtime;
mod state;

pub use engine::{
    AnswerOutcome, Confirmation, Decision, ExecuteError, ExecutionReport, PlannedStep, Runner, RunnerSettings,
    StepReport, execution_of, journal_entries,
};
pub use record::{Execution, ExecutionStatus, JournalEntry, Mode};
pub use runtime::{ActionRequest, ActionResult, ResolveRuntime, Runtime, RuntimeError};
