//! Closed vocabularies of the run record.
//!
//! Each enum lists every value the reference runtime writes. Foreign data may carry values
//! salvage does not know (a newer runtime, a hand-built record, a typo such as `"REPLAY"`):
//! those land in `Other` and are written back unchanged, so nothing is lost or normalised.

/// Declares a string-valued enum with an `Other(String)` escape hatch.
macro_rules! open_vocabulary {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value this version of salvage does not know, kept verbatim.
            Other(String),
        }

        impl $name {
            /// Every known value, in catalogue order.
            pub const KNOWN: &'static [$name] = &[$($name::$variant),*];

            /// The wire spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $text, )*
                    $name::Other(text) => text,
                }
            }

            /// Reads a wire value; unknown spellings become `Other`.
            pub fn parse(text: &str) -> Self {
                match text {
                    $( $text => $name::$variant, )*
                    other => $name::Other(other.to_owned()),
                }
            }

            /// [`Self::parse`] of an owned string: an unknown spelling keeps its allocation.
            pub fn parse_owned(text: String) -> Self {
                match text.as_str() {
                    $( $text => $name::$variant, )*
                    _ => $name::Other(text),
                }
            }

            /// Whether the value is one of the catalogue's.
            pub fn is_known(&self) -> bool {
                !matches!(self, $name::Other(_))
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                Self::parse(text)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Ok(Self::parse(text))
            }
        }

        impl $crate::model::json::FromJson for $name {
            fn from_json(value: serde_json::Value) -> Result<Self, serde_json::Value> {
                match value {
                    serde_json::Value::String(text) => Ok(Self::parse_owned(text)),
                    other => Err(other),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Ok(Self::parse(&text))
            }
        }
    };
}

pub(crate) use open_vocabulary;

open_vocabulary! {
    /// Run status (`run.status`).
    pub enum RunStatus {
        Pending = "pending",
        Running = "running",
        Paused = "paused",
        WaitingForApproval = "waiting_for_approval",
        Completed = "completed",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl RunStatus {
    /// Terminal statuses: the runtime will not continue the run by itself.
    pub fn is_terminal(&self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled)
    }
}

open_vocabulary! {
    /// Step type (`steps[].type`).
    pub enum StepType {
        Model = "model",
        Tool = "tool",
        Verifier = "verifier",
        SelfVerification = "self_verification",
        WorkflowStep = "workflow_step",
        Planning = "planning",
        Execution = "execution",
        Recovery = "recovery",
        Verification = "verification",
    }
}

open_vocabulary! {
    /// Step status (`steps[].status`).
    pub enum StepStatus {
        Running = "running",
        Completed = "completed",
        Failed = "failed",
        Paused = "paused",
    }
}

open_vocabulary! {
    /// Pause stage (`pendingPause.stage`).
    pub enum PauseStage {
        AfterPromptBuild = "after_prompt_build",
        BeforeModel = "before_model",
        AfterModel = "after_model",
        BeforeTool = "before_tool",
        AfterTool = "after_tool",
        ConfidenceReview = "confidence_review",
        AdaptiveRetryEscalation = "adaptive_retry_escalation",
        Manual = "manual",
        Branch = "branch",
        Replay = "replay",
        WorkflowReplay = "workflow_replay",
    }
}

impl PauseStage {
    /// The two stages of a prepared frozen replay waiting to be resumed.
    pub fn is_replay(&self) -> bool {
        matches!(self, PauseStage::Replay | PauseStage::WorkflowReplay)
    }
}

open_vocabulary! {
    /// Event type (`events[].type`): the agent's, the workflow runner's, the agent workflow
    /// step's, the delegation runtime's and the planning runtime's catalogues.
    pub enum EventType {
        RunStarted = "run_started",
        RetrievalStarted = "retrieval_started",
        RetrievalCompleted = "retrieval_completed",
        ModelRequest = "model_request",
        ModelResponse = "model_response",
        ToolRequested = "tool_requested",
        ToolConfidenceScored = "tool_confidence_scored",
        ConfidencePolicyDecision = "confidence_policy_decision",
        PolicyDecision = "policy_decision",
        ApprovalRequested = "approval_requested",
        ApprovalResolved = "approval_resolved",
        VerifierStarted = "verifier_started",
        VerifierCompleted = "verifier_completed",
        VerifierFailed = "verifier_failed",
        ToolStarted = "tool_started",
        ToolCompleted = "tool_completed",
        ToolFailed = "tool_failed",
        AdaptiveRetryEscalated = "adaptive_retry_escalated",
        SelfVerificationStarted = "self_verification_started",
        SelfVerificationCompleted = "self_verification_completed",
        SelfVerificationFailed = "self_verification_failed",
        RunPaused = "run_paused",
        RunResumed = "run_resumed",
        RunCancelled = "run_cancelled",
        RunCompleted = "run_completed",
        RunFailed = "run_failed",
        RunBranched = "run_branched",
        ReplayStarted = "replay_started",
        ReplayCompleted = "replay_completed",
        WorkflowStarted = "workflow_started",
        WorkflowStepStarted = "workflow_step_started",
        WorkflowStepCompleted = "workflow_step_completed",
        WorkflowStepFailed = "workflow_step_failed",
        WorkflowFailed = "workflow_failed",
        WorkflowCompleted = "workflow_completed",
        WorkflowPaused = "workflow_paused",
        WorkflowResumed = "workflow_resumed",
        WorkflowCancelled = "workflow_cancelled",
        WorkflowCompensationCompleted = "workflow_compensation_completed",
        WorkflowBranched = "workflow_branched",
        WorkflowReplayStarted = "workflow_replay_started",
        WorkflowReplayCompleted = "workflow_replay_completed",
        DelegationRequested = "delegation_requested",
        AgentHandoff = "agent_handoff",
        AgentStepStarted = "agent_step_started",
        DelegationCompleted = "delegation_completed",
        AgentStepCompleted = "agent_step_completed",
        DelegationRuntimeStarted = "delegation_runtime_started",
        DelegationRuntimeCompleted = "delegation_runtime_completed",
        PlanningStarted = "planning_started",
        PlanCreated = "plan_created",
        PlanExecuted = "plan_executed",
        PlanExecutionFailed = "plan_execution_failed",
        PlanRecovered = "plan_recovered",
        PlanVerified = "plan_verified",
        PlanningCompleted = "planning_completed",
        PlanningFailed = "planning_failed",
    }
}

open_vocabulary! {
    /// Checkpoint label (`checkpoints[].label`): the agent's, the workflow runner's and the
    /// planning runtime's catalogues. Workflow steps may take checkpoints with any label.
    pub enum CheckpointLabel {
        RunStarted = "run_started",
        ModelResponse = "model_response",
        WaitingForApproval = "waiting_for_approval",
        ApprovalResolved = "approval_resolved",
        ToolApprovedAndResumed = "tool_approved_and_resumed",
        VerifierCompleted = "verifier_completed",
        ToolCompleted = "tool_completed",
        SelfVerificationCompleted = "self_verification_completed",
        RunPaused = "run_paused",
        RunResumed = "run_resumed",
        RunCancelled = "run_cancelled",
        RunCompleted = "run_completed",
        RunFailed = "run_failed",
        RunBranched = "run_branched",
        ReplayStarted = "replay_started",
        ReplayCompleted = "replay_completed",
        WorkflowStarted = "workflow_started",
        WorkflowStepCompleted = "workflow_step_completed",
        AgentStepCompleted = "agent_step_completed",
        WorkflowPaused = "workflow_paused",
        WorkflowResumed = "workflow_resumed",
        WorkflowCompensationCompleted = "workflow_compensation_completed",
        WorkflowFailed = "workflow_failed",
        WorkflowCompleted = "workflow_completed",
        WorkflowCancelled = "workflow_cancelled",
        WorkflowBranched = "workflow_branched",
        WorkflowReplayStarted = "workflow_replay_started",
        WorkflowReplayCompleted = "workflow_replay_completed",
        PlanningStarted = "planning_started",
        PlanCreated = "plan_created",
        PlanExecuted = "plan_executed",
        PlanExecutionFailed = "plan_execution_failed",
        PlanRecovered = "plan_recovered",
        PlanVerified = "plan_verified",
        PlanningCompleted = "planning_completed",
        PlanningFailed = "planning_failed",
    }
}

impl CheckpointLabel {
    /// Checkpoints taken after the run had already failed (their snapshot contains the
    /// failure). A branch from one of these re-runs the failed step.
    pub fn is_post_failure(&self) -> bool {
        matches!(self, CheckpointLabel::RunFailed | CheckpointLabel::WorkflowFailed | CheckpointLabel::PlanningFailed)
    }
}

open_vocabulary! {
    /// What kind of incident a run is in. The first eight are the reference planner's
    /// classification; the others are salvage's finer distinctions (its default policies use
    /// them, the `compat` policies never do).
    pub enum IncidentKind {
        ApprovalBlocked = "approval_blocked",
        PausedReplay = "paused_replay",
        WorkflowChildFailure = "workflow_child_failure",
        QueueWorkerFailure = "queue_worker_failure",
        ServiceHandoffFailure = "service_handoff_failure",
        ToolFailure = "tool_failure",
        GenericFailure = "generic_failure",
        GenericRecovery = "generic_recovery",
        /// A verifier or self-verification step denied or threw.
        VerifierFailure = "verifier_failure",
        /// A planning-runtime run failed (planner, executor or verification phase).
        PlanningFailure = "planning_failure",
        /// A prepared replay that failed while it still carries its replay pause.
        ReplayFailure = "replay_failure",
        /// An approval was denied; the run failed and still carries the stale request.
        ApprovalDenied = "approval_denied",
        /// A run paused for another reason than a replay (manual, branch, before a tool, ...).
        PausedRun = "paused_run",
        /// Nothing to recover: the run is healthy or finished cleanly.
        NoIncident = "no_incident",
    }
}

impl IncidentKind {
    /// The kinds the reference planner can produce.
    pub fn is_reference_kind(&self) -> bool {
        matches!(
            self,
            IncidentKind::ApprovalBlocked
                | IncidentKind::PausedReplay
                | IncidentKind::WorkflowChildFailure
                | IncidentKind::QueueWorkerFailure
                | IncidentKind::ServiceHandoffFailure
                | IncidentKind::ToolFailure
                | IncidentKind::GenericFailure
                | IncidentKind::GenericRecovery
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_round_trip_and_unknown_values_pass_through() {
        for status in RunStatus::KNOWN {
            assert_eq!(&RunStatus::parse(status.as_str()), status);
        }
        let odd = PauseStage::parse("REPLAY");
        assert_eq!(odd, PauseStage::Other("REPLAY".into()));
        assert!(!odd.is_replay(), "stage matching is exact, as in the reference");
        let json = serde_json::to_string(&odd).unwrap_or_default();
        assert_eq!(json, "\"REPLAY\"");
        let back: Result<PauseStage, _> = serde_json::from_str(&json);
        assert_eq!(back.ok(), Some(odd));
    }

    #[test]
    fn catalogues_have_no_duplicate_spellings() {
        fn check<T: std::fmt::Display>(items: &[T]) {
            let mut seen = std::collections::HashSet::new();
            for item in items {
                assert!(seen.insert(item.to_string()), "duplicate {item}");
            }
        }
        check(EventType::KNOWN);
        check(CheckpointLabel::KNOWN);
        check(StepType::KNOWN);
    }
}
