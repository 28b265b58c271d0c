//! What can go wrong on the read side.

use crate::model::RunShapeError;
use crate::store::StoreError;

/// An operator surface could not produce its output.
///
/// Variants that mirror an error the reference throws keep its message exactly (see
/// [`InspectError::reference_name`]); the others say which run and which field is at fault.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum InspectError {
    /// The run asked for is not in the store.
    #[error("Run \"{run_id}\" not found.")]
    #[diagnostic(
        code(salvage::inspect::run_not_found),
        help("check the run id, and that salvage reads the store that holds the run (SALVAGE_STORE).")
    )]
    RunNotFound { run_id: String },

    /// The run given as a known-good comparison is not in the store.
    #[error("Comparison run \"{run_id}\" not found.")]
    #[diagnostic(
        code(salvage::inspect::comparison_run_not_found),
        help("the comparison run must live in the same store as the incident run.")
    )]
    ComparisonRunNotFound { run_id: String },

    /// The output could not be written (a closed pipe, a full disk).
    #[error("cannot write the output: {0}")]
    #[diagnostic(code(salvage::inspect::output))]
    Output(#[source] std::io::Error),

    /// The store failed as a whole (not one record).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),

    /// A run has an entry the surface cannot read, where the reference crashes with a
    /// `TypeError` (for example a `null` entry in `steps`).
    #[error("run \"{run_id}\": `{path}` {problem}")]
    #[diagnostic(
        code(salvage::inspect::malformed_run),
        help("fix or remove the entry named above in the run record; the reference runtime cannot read it either.")
    )]
    MalformedRun { run_id: String, path: String, problem: String },

    /// A record (a trace's run, a branch snapshot) cannot be read as a run.
    #[error("{context}: {source}")]
    #[diagnostic(code(salvage::inspect::not_a_run), help("fix the field named above."))]
    NotARun {
        context: String,
        #[source]
        source: RunShapeError,
    },

    /// `exportPartialRun` with a checkpoint id the run does not have.
    #[error("Checkpoint \"{checkpoint_id}\" not found on run \"{run_id}\".")]
    #[diagnostic(
        code(salvage::inspect::checkpoint_not_found),
        help("the run summary lists the run's checkpoints; omit the checkpoint to use the last one.")
    )]
    CheckpointNotFound { run_id: String, checkpoint_id: String },

    /// `exportPartialRun` of a run without checkpoints.
    #[error("Run \"{run_id}\" has no checkpoints to export from.")]
    #[diagnostic(
        code(salvage::inspect::no_checkpoints),
        help("a partial trace starts from a checkpoint; export the whole run instead.")
    )]
    NoCheckpoints { run_id: String },

    /// `importRun` of a payload that is not a valid run trace.
    #[error("Invalid run trace format: {}", errors.join("; "))]
    #[diagnostic(
        code(salvage::inspect::invalid_trace),
        help("a run trace has schemaVersion, format \"agnostic-agents-run-trace\", exportedAt, metadata and run.")
    )]
    InvalidTrace { errors: Vec<String> },

    /// `importBundle` of a payload that is not a valid trace bundle.
    #[error("Invalid trace bundle format: {}", errors.join("; "))]
    #[diagnostic(
        code(salvage::inspect::invalid_bundle),
        help("a bundle has format \"agnostic-agents-trace-bundle\" and a `traces` array of run traces.")
    )]
    InvalidBundle { errors: Vec<String> },

    /// `importBundle` of a valid single-run trace (the reference fails with an empty reason).
    #[error(
        "Invalid trace bundle format: the payload is a single run trace (format \"{format}\"), not a bundle (format \"agnostic-agents-trace-bundle\")."
    )]
    #[diagnostic(code(salvage::inspect::not_a_bundle), help("import it as a run trace instead."))]
    NotABundle { format: String },

    /// `DistributedRunEnvelope.parse` of an invalid envelope.
    #[error("Invalid distributed run envelope: {}", errors.join("; "))]
    #[diagnostic(
        code(salvage::inspect::invalid_envelope),
        help(
            "an envelope has schemaVersion \"1.0\", format \"agnostic-agents-distributed-run-envelope\", runtimeKind, action and runId."
        )
    )]
    InvalidEnvelope { errors: Vec<String> },
}

impl InspectError {
    /// The `name` of the error the reference throws in the same situation: `Error` for the
    /// messages the library composes, `TypeError` where the reference crashes on a malformed
    /// record. `None` where the reference does not fail (salvage is stricter) or fails
    /// differently.
    pub fn reference_name(&self) -> Option<&'static str> {
        match self {
            InspectError::RunNotFound { .. }
            | InspectError::ComparisonRunNotFound { .. }
            | InspectError::CheckpointNotFound { .. }
            | InspectError::NoCheckpoints { .. }
            | InspectError::InvalidTrace { .. }
            | InspectError::InvalidBundle { .. }
            | InspectError::NotABundle { .. }
            | InspectError::InvalidEnvelope { .. } => Some("Error"),
            InspectError::MalformedRun { .. } => Some("TypeError"),
            InspectError::Store(_) | InspectError::NotARun { .. } | InspectError::Output(_) => None,
        }
    }

    pub(crate) fn malformed(run_id: &str, path: impl Into<String>, problem: impl Into<String>) -> InspectError {
        InspectError::MalformedRun { run_id: run_id.to_owned(), path: path.into(), problem: problem.into() }
    }
}

impl From<crate::model::MalformedRun> for InspectError {
    fn from(error: crate::model::MalformedRun) -> Self {
        InspectError::MalformedRun { run_id: error.run_id, path: error.path, problem: error.problem }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_messages_are_kept_verbatim() {
        let missing = InspectError::CheckpointNotFound { run_id: "r1".into(), checkpoint_id: "r1:checkpoint:9".into() };
        assert_eq!(missing.to_string(), "Checkpoint \"r1:checkpoint:9\" not found on run \"r1\".");
        let invalid = InspectError::InvalidEnvelope {
            errors: vec!["Unsupported schemaVersion \"0.9\".".into(), "runtimeKind is required.".into()],
        };
        assert_eq!(
            invalid.to_string(),
            "Invalid distributed run envelope: Unsupported schemaVersion \"0.9\".; runtimeKind is required."
        );
        assert_eq!(invalid.reference_name(), Some("Error"));
    }

    #[test]
    fn importing_a_run_trace_as_a_bundle_says_why() {
        let error = InspectError::NotABundle { format: "agnostic-agents-run-trace".into() };
        let message = error.to_string();
        assert!(message.starts_with("Invalid trace bundle format: "));
        assert!(message.len() > "Invalid trace bundle format: ".len() + 20, "{message}");
        assert!(message.contains("single run trace"), "{message}");
    }
}
