//! Exit codes and how errors reach the operator.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | a check failed (an invalid trace, playbook errors) |
//! | 2 | bad usage or input (unknown run id, unreadable file) |
//! | 3 | store error |
//! | 141 | stdout was closed early (`salvage runs \| head`): quiet, like a tool killed by SIGPIPE |

use std::process::ExitCode;

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, Report};

use crate::store::StoreError;

/// Why the process exits non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    CheckFailed = 1,
    BadInput = 2,
    Store = 3,
    /// The reader of stdout went away (a pipe closed by `head`): nothing is printed, and the
    /// status is the one a shell reports for a command ended by SIGPIPE (128 + 13).
    ClosedPipe = 141,
}

impl From<Failure> for ExitCode {
    fn from(failure: Failure) -> ExitCode {
        ExitCode::from(failure as u8)
    }
}

/// An error on its way to the operator: what to print and with which exit code.
#[derive(Debug)]
pub struct CliError {
    pub failure: Failure,
    pub report: Report,
}

impl CliError {
    /// Bad usage or input (exit 2).
    pub fn input(diagnostic: impl Diagnostic + Send + Sync + 'static) -> CliError {
        CliError { failure: Failure::BadInput, report: Report::new(diagnostic) }
    }

    /// Bad usage or input, from a message (exit 2).
    pub fn input_msg(message: impl std::fmt::Display) -> CliError {
        CliError { failure: Failure::BadInput, report: miette::miette!("{message}") }
    }

    /// A store that does not work (exit 3).
    pub fn store(diagnostic: impl Diagnostic + Send + Sync + 'static) -> CliError {
        CliError { failure: Failure::Store, report: Report::new(diagnostic) }
    }

    /// A check that failed, after its findings were printed (exit 1).
    pub fn check_failed(message: impl std::fmt::Display) -> CliError {
        CliError { failure: Failure::CheckFailed, report: miette::miette!("{message}") }
    }

    /// Writing to stdout failed: a closed pipe (`salvage runs | head`) ends quietly, anything
    /// else (a full disk) is reported.
    pub fn output(error: std::io::Error) -> CliError {
        let failure = if error.kind() == std::io::ErrorKind::BrokenPipe { Failure::ClosedPipe } else { Failure::Store };
        CliError { failure, report: miette::miette!("cannot write output: {error}") }
    }

    /// Renders the report the way rustc renders diagnostics; colour only when `colour`.
    pub fn render(&self, colour: bool) -> String {
        let theme = if colour { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
        let handler = GraphicalReportHandler::new_themed(theme).with_links(false);
        crate::diagnostics::render(&handler, self.report.as_ref())
    }
}

impl From<StoreError> for CliError {
    fn from(error: StoreError) -> CliError {
        let failure = match &error {
            // A record that cannot be read, or an id that cannot be stored, is bad input.
            StoreError::CorruptRecord { .. } | StoreError::NotARun { .. } | StoreError::InvalidRunId { .. } => {
                Failure::BadInput
            }
            // A store spec pointing at the wrong thing (another application's database) is
            // bad input, like a malformed spec: nothing is wrong with any store.
            StoreError::Spec { .. } | StoreError::ForeignDatabase { .. } => Failure::BadInput,
            _ => Failure::Store,
        };
        CliError { failure, report: Report::new(error) }
    }
}

impl From<std::io::Error> for CliError {
    fn from(error: std::io::Error) -> CliError {
        CliError::output(error)
    }
}

/// `run "<id>" not found`, exit 2.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("run \"{run_id}\" not found")]
#[diagnostic(code(salvage::run_not_found), help("`salvage runs` lists the runs of {store}"))]
pub struct RunNotFound {
    pub run_id: String,
    pub store: String,
}

/// A command that reads runs was pointed at a store that does not exist.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("store {spec} does not exist ({path} is missing)")]
#[diagnostic(
    code(salvage::store_missing),
    help("import runs first (`salvage import PATH...`), or point --store / SALVAGE_STORE at an existing store")
)]
pub struct StoreMissing {
    pub spec: String,
    pub path: String,
}
