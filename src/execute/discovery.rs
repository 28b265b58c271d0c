//! Finding out what an effect did without doing it again: the run a run-creating step made
//! (by the id reserved for it, by the execution step recorded in its metadata, by lineage in
//! the store, by asking the runtime), and whether a run an action was sent for has moved.
//!
//! Runtimes like the reference choose the ids of the runs they create (`Agent.branchRun`
//! cannot take one), so after a crash between a step's intent and its outcome the only way to
//! know whether the branch exists is to look for it. What identifies it was journalled with
//! the intent ([`CreatedRunClue`]): the origin run, the checkpoint, the mode and the time.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::record::CreatedRunClue;
use super::runtime::{ActionRequest, ActionResult, RunExpectation, RunObservation, Runtime};
use super::store_runtime::SALVAGE_METADATA_KEY;
use crate::model::json::parse_iso;
use crate::model::{Run, RunStatus};
use crate::playbook::Action;
use crate::store::{RunQuery, RunStore, StoreError};

/// What a search for a step's created run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// The run, and how it was recognised.
    Found {
        run_id: String,
        how: String,
        duplicates: Vec<String>,
    },
    /// Several runs could be the step's; a person must say which (`confirm --created`).
    Ambiguous(Vec<String>),
    NotFound,
}

/// The clue a run-creating action leaves, from its request.
pub fn clue_of(
    action: Action,
    source_run_id: &str,
    payload: &serde_json::Map<String, Value>,
) -> Option<CreatedRunClue> {
    let checkpoint = payload.get("checkpointId").and_then(Value::as_str).filter(|id| !id.is_empty()).map(str::to_owned);
    let mode = match action {
        Action::BranchFromCheckpoint => "branch",
        Action::PartialReplay => "partial_replay",
        Action::FrozenReplay => "frozen_replay",
        _ => return None,
    };
    Some(CreatedRunClue {
        origin_run_id: source_run_id.to_owned(),
        checkpoint_id: if action == Action::FrozenReplay { None } else { checkpoint },
        mode: mode.to_owned(),
    })
}

/// Whether `run` derives from the clue's origin the way the clue's action would have made it.
/// A checkpoint the plan left to the runtime (`null`) matches any.
pub fn derives_as(run: &Run, clue: &CreatedRunClue) -> bool {
    if run.id == clue.origin_run_id {
        return false;
    }
    let lineage = run.lineage();
    let replay = run.metadata.get("replay");
    let replay_field = |key: &str| replay.and_then(|r| r.get(key)).and_then(Value::as_str);
    let checkpoint_matches = |found: Option<&str>| clue.checkpoint_id.as_deref().is_none_or(|id| found == Some(id));
    match clue.mode.as_str() {
        "branch" => {
            replay.is_none()
                && lineage.branch_origin_run_id.as_deref() == Some(clue.origin_run_id.as_str())
                && checkpoint_matches(lineage.branch_checkpoint_id.as_deref())
        }
        "partial_replay" => {
            replay_field("mode") == Some("partial_frozen_trace")
                && replay_field("sourceRunId") == Some(clue.origin_run_id.as_str())
                && checkpoint_matches(replay_field("sourceCheckpointId"))
        }
        "frozen_replay" => {
            replay_field("mode") == Some("frozen_trace")
                && replay_field("sourceRunId") == Some(clue.origin_run_id.as_str())
        }
        _ => false,
    }
}

/// Whether `run` points at `origin` as its branch origin or replay source (any checkpoint).
fn derives_from(run: &Run, origin: &str) -> bool {
    run.id != origin
        && (run.lineage().branch_origin_run_id.as_deref() == Some(origin)
            || run.metadata.get("replay").and_then(|r| r.get("sourceRunId")).and_then(Value::as_str) == Some(origin))
}

/// `metadata.salvage.{executionId, stepId}` of a run, when salvage's record is on it.
pub fn salvage_owner(run: &Run) -> Option<(String, String)> {
    let record = run.metadata.get(SALVAGE_METADATA_KEY)?;
    let execution = record.get("executionId")?.as_str()?.to_owned();
    let step = record.get("stepId").and_then(Value::as_str).unwrap_or_default().to_owned();
    Some((execution, step))
}

/// Where to look and what counts.
pub struct Search<'a> {
    pub runs: &'a dyn RunStore,
    pub runtime: Option<&'a dyn Runtime>,
    pub execution_id: &'a str,
    pub step_id: &'a str,
    pub clue: &'a CreatedRunClue,
    /// Ids reserved by earlier attempts (the `store` runtime saves under them).
    pub reserved: Vec<String>,
    /// The earliest intent of the step; runs created more than `skew` before it are not it.
    pub since: Option<String>,
    pub skew: std::time::Duration,
    /// Runs other steps of the execution already created (never this step's).
    pub taken: BTreeSet<String>,
    /// The request of the last attempt (for asking the runtime by idempotency key).
    pub request: Option<&'a ActionRequest>,
}

/// Looks for the run a step created: its reserved id, then runs deriving from its origin in
/// the store (those recording this execution step first; those recording another execution
/// never), then the runtime.
pub async fn find_created(search: Search<'_>) -> Result<Discovery, StoreError> {
    for reserved in &search.reserved {
        // The id was made for this step: a run there that derives from the origin is its run.
        if let Some(stored) = search.runs.get(reserved).await?
            && (derives_from(&stored.run, &search.clue.origin_run_id)
                || salvage_owner(&stored.run).is_some_and(|(e, _)| e == search.execution_id))
        {
            return Ok(Discovery::Found {
                run_id: reserved.clone(),
                how: "the id this step reserved holds a run derived from its origin".into(),
                duplicates: Vec::new(),
            });
        }
    }
    let Some(origin) = search.runs.get(&search.clue.origin_run_id).await? else {
        return Ok(Discovery::NotFound);
    };
    // The runtime wrote the run behind the store's back: indexes must see it.
    search.runs.catch_up().await?;
    let mut roots = vec![origin.run.root_run_id().to_owned()];
    if !roots.contains(&origin.run.id) {
        roots.push(origin.run.id.clone());
    }
    let not_before = search
        .since
        .as_deref()
        .and_then(parse_iso)
        .map(|at| at - time::Duration::try_from(search.skew).unwrap_or(time::Duration::ZERO));
    let mut ours = Vec::new();
    let mut unclaimed = Vec::new();
    let mut seen = BTreeSet::new();
    for root in roots {
        let listed = search.runs.list(&RunQuery::in_trace(root)).await?;
        let ids: Vec<String> = listed
            .items
            .into_iter()
            .filter(|entry| entry.id != search.clue.origin_run_id && !search.taken.contains(&entry.id))
            .filter(|entry| seen.insert(entry.id.clone()))
            .map(|entry| entry.id)
            .collect();
        for stored in search.runs.get_many(&ids).await?.items {
            let run = stored.run;
            if !derives_as(&run, search.clue) {
                continue;
            }
            match salvage_owner(&run) {
                Some((execution, step)) if execution == search.execution_id && step == search.step_id => {
                    ours.push((run.created_at().unwrap_or_default().to_owned(), run.id.clone()));
                }
                // Another execution's (or another step's) run is never this step's.
                Some(_) => {}
                None => {
                    let recent = match (not_before, run.created_at().and_then(parse_iso)) {
                        (Some(limit), Some(created)) => created >= limit,
                        (Some(_), None) => false,
                        (None, _) => true,
                    };
                    if recent {
                        unclaimed.push((run.created_at().unwrap_or_default().to_owned(), run.id.clone()));
                    }
                }
            }
        }
    }
    ours.sort();
    unclaimed.sort();
    if let Some(((_, first), rest)) = ours.split_first() {
        return Ok(Discovery::Found {
            run_id: first.clone(),
            how: "a run deriving from the step's origin records this execution step".into(),
            duplicates: rest.iter().map(|(_, id)| id.clone()).collect(),
        });
    }
    match unclaimed.as_slice() {
        [(_, only)] => {
            return Ok(Discovery::Found {
                run_id: only.clone(),
                how: "the only run deriving from the step's origin and checkpoint since its intent".into(),
                duplicates: Vec::new(),
            });
        }
        [] => {}
        several => return Ok(Discovery::Ambiguous(several.iter().map(|(_, id)| id.clone()).collect())),
    }
    if let (Some(runtime), Some(request)) = (search.runtime, search.request) {
        match runtime.find_created(request).await {
            Ok(Some(run_id)) => {
                return Ok(Discovery::Found {
                    run_id,
                    how: format!("{} says this idempotency key created it", runtime.describe()),
                    duplicates: Vec::new(),
                });
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "Cannot ask the runtime for the run a step created."),
        }
    }
    Ok(Discovery::NotFound)
}

/// How a run stands now: the runtime's view when it has one, else the store's. `Ok(None)`:
/// the run is nowhere.
pub async fn observe(
    runs: &dyn RunStore,
    runtime: Option<&dyn Runtime>,
    run_id: &str,
) -> Result<Option<RunObservation>, StoreError> {
    if let Some(runtime) = runtime {
        match runtime.observe(run_id).await {
            Ok(Some(seen)) => return Ok(Some(seen)),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(run_id, %error, "The runtime cannot say how the run stands; reading the store.")
            }
        }
    }
    Ok(runs.get(run_id).await?.map(|stored| RunObservation::of_run(&stored.run, "store")))
}

/// Why an action cannot be sent for a run that stands as `seen` (the plan expected otherwise),
/// or `None` when it may go ahead. `planned` is the status the plan saw (for the incident run).
pub fn refusal(
    action: Action,
    seen: &RunObservation,
    planned: Option<&str>,
    payload: &serde_json::Map<String, Value>,
    workflow_run: bool,
) -> Option<String> {
    let status = &seen.status;
    let moved = |expected: &str| {
        Some(format!(
            "run {} is {status}{} ({}), but `{action}` expects it {expected}: it moved since the plan was made; \
             nothing was sent",
            seen.run_id,
            seen.pause_stage.as_deref().map(|s| format!(" at stage `{s}`")).unwrap_or_default(),
            seen.seen_by
        ))
    };
    if let Some(planned) = planned
        && status.as_str() != planned
        && action != Action::CancelRun
    {
        return moved(&format!("{planned}, as when it was planned"));
    }
    match action {
        Action::ResumeRun => match status {
            RunStatus::Paused => None,
            RunStatus::Failed if workflow_run => None,
            _ => moved("paused"),
        },
        Action::ResumeReplay => match (status, seen.pause_stage.as_deref()) {
            (RunStatus::Paused, Some("replay" | "workflow_replay")) => None,
            _ => moved("paused at a replay stage"),
        },
        Action::ResolveApproval | Action::DenyApproval => {
            let waiting = matches!(status, RunStatus::WaitingForApproval | RunStatus::Paused);
            let decided_on = payload
                .get("toolCallId")
                .and_then(Value::as_str)
                .or_else(|| payload.get("toolName").and_then(Value::as_str));
            match (&seen.pending_approval, decided_on) {
                _ if !waiting => moved("waiting for approval"),
                (None, _) => moved("waiting for approval"),
                (Some(pending), Some(decided)) if pending != decided => Some(format!(
                    "run {} now waits for another approval ({pending}) than the one decided on ({decided}); nothing \
                     was sent",
                    seen.run_id
                )),
                _ => None,
            }
        }
        Action::CancelRun if status.is_terminal() => moved("not finished"),
        _ => None,
    }
}

/// An interrupted action on an existing run, judged from where the run stands now compared
/// with where it stood when the action was sent: moved means the effect happened (whoever made
/// it), unchanged means it is unknown.
pub fn settle_by_observation(action: Action, expect: &RunExpectation, seen: &RunObservation) -> Option<ActionResult> {
    if expect.unchanged_in(seen) {
        return None;
    }
    let detail = json!({
        "recovered": format!(
            "the run moved from {} to {} ({}): the action had taken effect before the interruption; not repeated",
            expect.status, seen.status, seen.seen_by
        ),
    });
    let status = seen.status.as_str().to_owned();
    let result = match (action, &seen.status) {
        (Action::DenyApproval, RunStatus::Failed) => ActionResult::ok(detail),
        (Action::CancelRun, RunStatus::Cancelled) => ActionResult::ok(detail),
        (Action::CancelRun, _) => ActionResult::failed(detail),
        (_, RunStatus::Failed | RunStatus::Cancelled) => ActionResult::failed(detail),
        _ => ActionResult::ok(detail),
    };
    Some(result.with_run_status(status))
}

/// The outcome of `await_run` for a run that stands as `seen`, or `None` while it is still on
/// its way (running, pending).
pub fn settled_outcome(seen: &RunObservation) -> Option<&'static str> {
    match seen.status {
        RunStatus::Completed => Some("completed"),
        RunStatus::Failed | RunStatus::Cancelled => Some("failed"),
        RunStatus::Paused => Some("paused"),
        RunStatus::WaitingForApproval => Some("waiting_for_approval"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(value: Value) -> Run {
        Run::from_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    fn branch(id: &str, origin: &str, checkpoint: &str, owner: Option<(&str, &str)>) -> Run {
        let mut metadata = json!({"lineage": {"rootRunId": origin, "parentRunId": null, "childRunIds": [],
            "branchOriginRunId": origin, "branchCheckpointId": checkpoint}});
        if let Some((execution, step)) = owner {
            metadata["salvage"] = json!({"executionId": execution, "stepId": step});
        }
        run(json!({"id": id, "status": "paused", "metadata": metadata,
            "timestamps": {"createdAt": "2026-01-01T00:00:10.000Z"}}))
    }

    #[test]
    fn a_branch_derives_from_its_origin_and_checkpoint_only() {
        let clue =
            CreatedRunClue { origin_run_id: "src".into(), checkpoint_id: Some("cp-2".into()), mode: "branch".into() };
        assert!(derives_as(&branch("b", "src", "cp-2", None), &clue));
        assert!(!derives_as(&branch("b", "src", "cp-1", None), &clue), "another checkpoint");
        assert!(!derives_as(&branch("b", "other", "cp-2", None), &clue), "another origin");
        let replay = CreatedRunClue { mode: "partial_replay".into(), ..clue.clone() };
        assert!(!derives_as(&branch("b", "src", "cp-2", None), &replay), "a branch is not a replay");
        let partial = run(json!({"id": "src:partial-replay:1", "status": "paused",
            "metadata": {"replay": {"mode": "partial_frozen_trace", "sourceRunId": "src", "sourceCheckpointId": "cp-2"}}}));
        assert!(derives_as(&partial, &replay));
        let frozen = CreatedRunClue { origin_run_id: "src".into(), checkpoint_id: None, mode: "frozen_replay".into() };
        assert!(!derives_as(&partial, &frozen));
    }

    #[test]
    fn actions_are_refused_on_runs_that_moved() {
        let seen = |status: &str, stage: Option<&str>, approval: Option<&str>| RunObservation {
            run_id: "r".into(),
            status: RunStatus::parse(status),
            pending_approval: approval.map(str::to_owned),
            pause_stage: stage.map(str::to_owned),
            seen_by: "store".into(),
        };
        let empty = serde_json::Map::new();
        assert!(refusal(Action::ResumeRun, &seen("paused", Some("branch"), None), None, &empty, false).is_none());
        let completed = refusal(Action::ResumeRun, &seen("completed", None, None), None, &empty, false);
        assert!(completed.is_some_and(|why| why.contains("moved")));
        assert!(
            refusal(Action::ResumeRun, &seen("failed", None, None), None, &empty, true).is_none(),
            "workflows resume failed runs"
        );
        assert!(refusal(Action::ResumeReplay, &seen("paused", Some("branch"), None), None, &empty, false).is_some());
        let mut decided = serde_json::Map::new();
        decided.insert("toolCallId".into(), json!("call-1"));
        assert!(
            refusal(
                Action::ResolveApproval,
                &seen("waiting_for_approval", None, Some("call-1")),
                None,
                &decided,
                false
            )
            .is_none()
        );
        assert!(
            refusal(
                Action::ResolveApproval,
                &seen("waiting_for_approval", None, Some("call-2")),
                None,
                &decided,
                false
            )
            .is_some_and(|why| why.contains("another approval"))
        );
        assert!(
            refusal(Action::ResumeRun, &seen("paused", None, None), Some("failed"), &empty, false).is_some(),
            "the plan saw it failed"
        );
        assert!(refusal(Action::CancelRun, &seen("cancelled", None, None), None, &empty, false).is_some());
    }

    #[test]
    fn an_interrupted_resume_is_settled_only_when_the_run_moved() {
        let expect =
            RunExpectation { status: "paused".into(), pause_stage: Some("branch".into()), pending_approval: None };
        let unchanged = RunObservation {
            run_id: "r".into(),
            status: RunStatus::Paused,
            pending_approval: None,
            pause_stage: Some("branch".into()),
            seen_by: "store".into(),
        };
        assert!(settle_by_observation(Action::ResumeRun, &expect, &unchanged).is_none());
        let completed = RunObservation { status: RunStatus::Completed, pause_stage: None, ..unchanged.clone() };
        let settled = settle_by_observation(Action::ResumeRun, &expect, &completed).expect("settled");
        assert_eq!((settled.outcome.as_str(), settled.run_status.as_deref()), ("ok", Some("completed")));
        let failed = RunObservation { status: RunStatus::Failed, pause_stage: None, ..unchanged };
        assert_eq!(
            settle_by_observation(Action::ResumeRun, &expect, &failed).map(|r| r.outcome),
            Some("failed".into())
        );
        assert_eq!(settle_by_observation(Action::DenyApproval, &expect, &failed).map(|r| r.outcome), Some("ok".into()));
    }
}
