//! The planner: from an incident to an explained, hashed recovery plan.
//!
//! ```text
//! run + incident report ─► classify (policy) ─► select the playbook (match, guard, priority)
//!   ─► walk its RecoveryGraph from `start`: guards skip steps; each step gets its payload,
//!      checkpoint (policy), approval (playbook rule or policy) and approvers; the expected
//!      outcome of each step is predicted (read-only checks are run against the store)
//!   ─► Plan { reference keys …, planId, planHash, runRevision, playbook, policyDigest, path }
//! ```
//!
//! The plan keeps every key of the reference planner's output with the reference's names and
//! meaning (`runId, status, incidentType, recoveryPolicy, correlation, incident, steps,
//! recommendedAction`; each step's `action, priority, reason, runId, payload, requiresApproval`),
//! so a tool written for agnostic-agents reads a salvage plan.
//!
//! Nothing here writes to a store.

mod sets;
mod walk;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::inspect::{self, IncidentReport, InspectError};
use crate::model::{IncidentKind, RunStatus};
use crate::playbook::PlaybookSet;
use crate::policy::{DecisionContext, Explanation, PolicySet};
use crate::store::{Revision, RunStore, StoreError, StoredRun};

pub use sets::{RecoverySet, RecoverySetError};
pub use walk::evaluate_guard;

/// A recovery plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub run_id: String,
    pub status: RunStatus,
    pub incident_type: IncidentKind,
    pub recovery_policy: Map<String, Value>,
    pub correlation: Value,
    pub incident: IncidentReport,
    pub steps: Vec<PlanStep>,
    pub recommended_action: String,
    /// `plan-` and the first 16 hex digits of `planHash`: the same plan has the same id.
    pub plan_id: String,
    /// sha256 over the plan's content (everything but `planId`, `planHash` and `createdAt`).
    pub plan_hash: String,
    /// The run's store revision the plan was made against.
    pub run_revision: Revision,
    pub compare_to_run_id: Option<String>,
    /// The playbook that was walked, or `null` when none handles the incident.
    pub playbook: Option<PlaybookRef>,
    pub policy_digest: String,
    pub playbook_set_digest: String,
    /// A policy failed while planning: every step requires approval.
    pub fail_closed: bool,
    /// How the incident kind and the playbook were decided.
    pub decisions: Vec<Explanation>,
    /// Every node visited, in order, and the transition taken out of it.
    pub path: Vec<PathEntry>,
    /// The end the expected path reaches (e.g. `resolved`), `null` without a playbook.
    pub expected_outcome: Option<String>,
    pub created_at: String,
}

/// Which playbook a plan follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaybookRef {
    pub name: String,
    pub version: u32,
    /// sha256 of the playbook file.
    pub digest: String,
    pub file: String,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanStep {
    /// Reference keys first.
    pub action: String,
    pub priority: String,
    pub reason: String,
    pub run_id: String,
    pub payload: Map<String, Value>,
    pub requires_approval: bool,
    /// The playbook step id.
    pub id: String,
    /// The catalog action (the YAML spelling, e.g. `branch_from_checkpoint`).
    pub catalog_action: String,
    pub effect: String,
    /// Whether the runner stops for a person at this step: `requiresApproval` (the reference's
    /// key, decided by the playbook and the policies), a `request_approval` step, or a
    /// `resolve_approval` that no `request_approval` right before it decided (salvage never
    /// resolves a tool approval on anyone's behalf). Plan, dry run and execution count these.
    pub asks_approval: bool,
    /// The outcome the plan expects, and where each outcome leads.
    pub expected_outcome: String,
    pub exits: Map<String, Value>,
    /// For steps acting on a run an earlier step creates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Who may approve (steps that need approval).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvers: Option<crate::policy::Approvers>,
    /// How many distinct approvers must approve (`approval.quorum`); left out when 1, so plans
    /// of playbooks without a quorum are unchanged.
    #[serde(skip_serializing_if = "is_one")]
    pub quorum: u32,
    /// How long a person has to decide (request_approval).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// What a read-only check found while planning (it runs again at execution).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<inspect::checks::CheckResult>,
    /// Every decision taken for this step.
    pub explanation: Vec<Explanation>,
}

/// Whether a count is the default 1 (serde's `skip_serializing_if`).
pub fn is_one(count: &u32) -> bool {
    *count == 1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff_ms: u64,
}

/// A node of the path the plan expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PathEntry {
    /// Step or end id.
    pub node: String,
    /// `step` or `end`.
    pub kind: &'static str,
    /// The transition taken out of it (`skip` when its guard was false); the outcome for ends.
    pub transition: String,
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PlanError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Inspect(#[from] InspectError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),
    /// The walk did not reach an end within its budget (a playbook whose loops the compiler
    /// bounded cannot do this; it guards against bugs, not input).
    #[error("the walk of playbook {playbook} did not reach an end after {steps} steps")]
    #[diagnostic(code(salvage::plan::walk_budget))]
    WalkBudget { playbook: String, steps: usize },
}

/// What planning one incident reads from the store (see [`Planner::read_incident`]). The
/// views policies see are built once and shared by every plan made from it.
#[derive(Clone)]
pub struct IncidentInputs {
    ctx: DecisionContext,
    revision: Revision,
}

impl IncidentInputs {
    pub fn run(&self) -> &crate::model::Run {
        self.ctx.run()
    }

    /// What the hooks saw (the run, its report, its continuation source).
    pub fn context(&self) -> &DecisionContext {
        &self.ctx
    }

    /// The store revision of the run that was read.
    pub fn revision(&self) -> Revision {
        self.revision
    }
}

/// A plan made to be executed at once ([`Planner::plan_with_inputs`],
/// [`Planner::plan_stored_with_inputs`]): the plan, its JSON as the runner takes it, and what
/// it was made from.
pub struct PlannedIncident {
    pub plan: Plan,
    /// [`Plan::to_value`] of `plan`, made once when the plan was sealed (the plan's content is
    /// serialised to be hashed), not again.
    pub json: Value,
    pub inputs: IncidentInputs,
}

/// The planner: a store to read, and the policy and playbook sets in force.
#[derive(Debug, Clone)]
pub struct Planner {
    store: Arc<dyn RunStore>,
    policies: Arc<PolicySet>,
    playbooks: Arc<PlaybookSet>,
    tool_effects: BTreeMap<String, String>,
}

impl Planner {
    pub fn new(store: Arc<dyn RunStore>, policies: Arc<PolicySet>, playbooks: Arc<PlaybookSet>) -> Planner {
        Planner { store, policies, playbooks, tool_effects: BTreeMap::new() }
    }

    /// The same planner, with side-effect levels by tool name that win over the metadata the
    /// run records (`salvage test` mocks; see [`DecisionContext::with_tool_effects`]).
    pub fn with_tool_effects(mut self, tool_effects: BTreeMap<String, String>) -> Planner {
        self.tool_effects = tool_effects;
        self
    }

    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    pub fn playbooks(&self) -> &PlaybookSet {
        &self.playbooks
    }

    /// Plans the recovery of `run_id`, optionally against the known-good run `compare_to`.
    pub async fn plan(&self, run_id: &str, compare_to: Option<&str>) -> Result<Plan, PlanError> {
        Ok(self.plan_timed(self.read_incident(run_id, compare_to)).await?.plan)
    }

    /// [`Planner::plan`] for a run already read from the store (the plan names the revision
    /// it was read at; executing it checks that the run is still there).
    pub async fn plan_stored(&self, stored: StoredRun, compare_to: Option<&str>) -> Result<Plan, PlanError> {
        Ok(self.plan_timed(self.incident_of(stored, compare_to)).await?.plan)
    }

    /// [`Planner::plan`], also handing back what the plan was made from (see
    /// [`Planner::plan_stored_with_inputs`]).
    pub async fn plan_with_inputs(&self, run_id: &str, compare_to: Option<&str>) -> Result<PlannedIncident, PlanError> {
        self.plan_timed(self.read_incident(run_id, compare_to)).await
    }

    /// [`Planner::plan_stored`], also handing back what the plan was made from, so that a plan
    /// executed at once ([`crate::execute::Runner::apply_planned`], the daemon's dry run) does
    /// not read and report the incident again, and the plan's JSON, which it does not
    /// serialise again.
    pub async fn plan_stored_with_inputs(
        &self,
        stored: StoredRun,
        compare_to: Option<&str>,
    ) -> Result<PlannedIncident, PlanError> {
        self.plan_timed(self.incident_of(stored, compare_to)).await
    }

    /// Reads the incident (`incident`, not started yet) and plans it, timed for the metrics.
    async fn plan_timed(
        &self,
        incident: impl std::future::Future<Output = Result<IncidentInputs, PlanError>>,
    ) -> Result<PlannedIncident, PlanError> {
        let started = std::time::Instant::now();
        let planned = match incident.await {
            Ok(inputs) => walk::plan(self, inputs.ctx.clone(), inputs.revision)
                .await
                .map(|(plan, json)| PlannedIncident { plan, json, inputs }),
            Err(error) => Err(error),
        };
        crate::telemetry::plan_finished(planned.is_ok(), started.elapsed());
        planned
    }

    /// Reads what planning `run_id` needs from the store: the run, its incident report and the
    /// run a continuation came from. Read once, an incident can be planned with several sets
    /// (`simulate` plans each with the current and the proposed set).
    pub async fn read_incident(&self, run_id: &str, compare_to: Option<&str>) -> Result<IncidentInputs, PlanError> {
        let stored =
            self.store.get(run_id).await?.ok_or_else(|| InspectError::RunNotFound { run_id: run_id.to_owned() })?;
        // Boxed: the report's future is large, and this one is awaited deep inside the runner's.
        Box::pin(self.incident_of(stored, compare_to)).await
    }

    /// [`Planner::read_incident`] for a run already read.
    async fn incident_of(&self, stored: StoredRun, compare_to: Option<&str>) -> Result<IncidentInputs, PlanError> {
        let compare_to = compare_to.filter(|id| !id.is_empty());
        let report = inspect::create_report_of(self.store.as_ref(), stored.run.clone(), compare_to).await?;
        let source = self.continuation_source(&stored.run).await?;
        let ctx = DecisionContext::with_tool_effects(
            stored.run,
            report,
            compare_to.map(str::to_owned),
            self.tool_effects.clone(),
        )
        .with_source(source);
        Ok(IncidentInputs { ctx, revision: stored.revision })
    }

    /// Plans an incident read with [`Planner::read_incident`] (by this or another planner over
    /// the same store).
    pub async fn plan_incident(&self, incident: &IncidentInputs) -> Result<Plan, PlanError> {
        Ok(walk::plan(self, incident.ctx.clone(), incident.revision).await?.0)
    }

    /// The run a continuation (replay, branch, hand-off) came from, when the store has it:
    /// resuming the continuation runs what the source ran after the checkpoint.
    async fn continuation_source(&self, run: &crate::model::Run) -> Result<Option<crate::model::Run>, PlanError> {
        match inspect::checks::continuation_source(run) {
            Some((source_id, _)) if source_id != run.id => {
                Ok(self.store.get(&source_id).await?.map(|stored| stored.run))
            }
            _ => Ok(None),
        }
    }

    /// The decision context of `run_id` as the store holds it now, for deciding steps while
    /// a plan executes (with the incident kind the plan was made for).
    pub async fn context(
        &self,
        run_id: &str,
        compare_to: Option<&str>,
        incident: IncidentKind,
    ) -> Result<DecisionContext, PlanError> {
        Ok(self.read_incident(run_id, compare_to).await?.ctx.with_incident(incident))
    }

    /// Decides one step the plan did not lay out (an execution took another outcome than the
    /// plan expected): its payload, checkpoint, approval and approvers, as planning would have.
    pub async fn decide_step(
        &self,
        ctx: &DecisionContext,
        step: &crate::playbook::StepNode,
    ) -> Result<PlanStep, PlanError> {
        walk::decide_step(self, ctx, step).await
    }
}

/// Gives the plan its id and hash (`plan-` + 16 hex digits of the hash, and the hash itself,
/// over the plan without its id, hash and creation time), and returns the plan's JSON
/// ([`Plan::to_value`]): the tree made to be hashed, with the id and hash filled in.
pub(crate) fn seal(plan: &mut Plan) -> Value {
    plan.plan_id.clear();
    plan.plan_hash.clear();
    let mut json = serde_json::to_value(&*plan).unwrap_or(Value::Null);
    let hash = hash_of(&json);
    plan.plan_id = format!("plan-{}", &hash[..16]);
    plan.plan_hash = hash;
    if let Value::Object(map) = &mut json {
        // Both keys are there (empty) and keep their places.
        map.insert("planId".to_owned(), Value::String(plan.plan_id.clone()));
        map.insert("planHash".to_owned(), Value::String(plan.plan_hash.clone()));
    }
    debug_assert_eq!(json, plan.to_value(), "a sealed plan's JSON is the plan's");
    json
}

/// The content hash of a plan given as JSON (as read back from a plan file): sha256 over the
/// plan without `planId`, `planHash` and `createdAt`.
pub fn hash_of(plan: &Value) -> String {
    /// The plan's keys but the excluded ones, in order: serialises to the same bytes as the
    /// plan with those keys removed, without copying the plan.
    struct Content<'a>(&'a Map<String, Value>);
    impl Serialize for Content<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = serializer.serialize_map(None)?;
            for (key, value) in self.0 {
                if !matches!(key.as_str(), "planId" | "planHash" | "createdAt") {
                    map.serialize_entry(key, value)?;
                }
            }
            map.end()
        }
    }
    let bytes = match plan {
        Value::Object(map) => serde_json::to_vec(&Content(map)),
        other => serde_json::to_vec(other),
    };
    let mut hasher = Sha256::new();
    hasher.update(bytes.unwrap_or_default());
    crate::policy::hex(&hasher.finalize())
}

impl Plan {
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Recomputes the hash of the plan's content; differs from `plan_hash` when the plan was
    /// changed after it was made.
    pub fn content_hash(&self) -> String {
        hash_of(&self.to_value())
    }

    /// The expected path as people read it: `report (ok) → export (ok) → resolved`.
    pub fn path_text(&self) -> String {
        let nodes: Vec<String> = self
            .path
            .iter()
            .map(|entry| match entry.kind {
                "end" => entry.node.clone(),
                _ => format!("{} ({})", entry.node, entry.transition),
            })
            .collect();
        nodes.join(" → ")
    }

    /// The steps where a person will be asked.
    pub fn approvals(&self) -> impl Iterator<Item = &PlanStep> {
        self.steps.iter().filter(|step| step.asks_approval)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::Run;
    use crate::store::{Expected, MemoryStore};

    const TOOL_FAILURE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
    const VERIFIER_FAILURE: &str = "b082b9bc-0861-56d5-b884-37bbd428657e";

    /// A planner over a store holding one of the shipped example runs.
    async fn planner(run_id: &str, policies: PolicySet, playbooks: &str) -> Planner {
        let text = std::fs::read_to_string(format!("examples/runs/{run_id}.json")).unwrap();
        let run = Run::from_value(serde_json::from_str(&text).unwrap()).unwrap();
        let store = MemoryStore::new();
        store.save_all(&[run], Expected::Any).await.unwrap();
        let playbooks = PlaybookSet::load(Path::new(playbooks), Some(&policies)).unwrap();
        Planner::new(Arc::new(store), Arc::new(policies), Arc::new(playbooks))
    }

    fn default_policies() -> PolicySet {
        PolicySet::load(Path::new("policies")).unwrap()
    }

    fn step<'a>(plan: &'a Plan, id: &str) -> &'a PlanStep {
        plan.steps.iter().find(|step| step.id == id).unwrap()
    }

    #[tokio::test]
    async fn tool_effects_override_the_recorded_tool_metadata() {
        let recorded =
            planner(TOOL_FAILURE, default_policies(), "playbooks").await.plan(TOOL_FAILURE, None).await.unwrap();
        assert_eq!(step(&recorded, "check_effect").expected_outcome, "unknown", "create_invoice is an external write");
        assert!(step(&recorded, "ask_operator").requires_approval, "a person decides whether the write happened");
        assert!(recorded.steps.iter().all(|step| step.id != "branch"), "the approved branch is branch_approved");

        let read_only = BTreeMap::from([("create_invoice".to_owned(), "read_only".to_owned())]);
        let mocked = planner(TOOL_FAILURE, default_policies(), "playbooks")
            .await
            .with_tool_effects(read_only)
            .plan(TOOL_FAILURE, None)
            .await
            .unwrap();
        assert_eq!(step(&mocked, "check_effect").expected_outcome, "none");
        assert!(mocked.steps.iter().all(|step| step.id != "ask_operator"), "nothing to confirm");
        assert!(!step(&mocked, "branch").requires_approval, "re-running a read-only tool needs nobody");
        assert_ne!(mocked.plan_hash, recorded.plan_hash);
    }

    #[tokio::test]
    async fn a_fail_closed_plan_names_who_may_approve_every_step() {
        let policies = default_policies()
            .with_overrides("mock.rhai", "fn choose_checkpoint(ctx) { throw \"checkpoint catalogue unavailable\"; }")
            .unwrap();
        let plan = planner(TOOL_FAILURE, policies, "playbooks").await.plan(TOOL_FAILURE, None).await.unwrap();
        assert!(plan.fail_closed);
        assert_eq!(step(&plan, "branch_approved").payload.get("checkpointId"), Some(&Value::Null));
        for step in &plan.steps {
            assert!(step.requires_approval, "{} must need approval", step.id);
            let names = step.approvers.as_ref().map(|a| a.names.clone()).unwrap_or_default();
            assert!(!names.is_empty(), "{} needs approval but nobody may give it", step.id);
        }
        // A step the policy let through is flagged by the fail-closed rule, with its approvers.
        let report = step(&plan, "report");
        let hooks: Vec<&str> = report.explanation.iter().map(|e| e.hook.as_str()).collect();
        assert_eq!(hooks, ["fail_closed", "approvers"]);
    }

    #[tokio::test]
    async fn a_failing_recovery_policy_hook_fails_the_plan_closed() {
        let policies = PolicySet::load(Path::new("policies/compat"))
            .unwrap()
            .with_overrides("mock.rhai", "fn recovery_policy(ctx) { throw \"flags unavailable\"; }")
            .unwrap();
        let plan =
            planner(VERIFIER_FAILURE, policies, "playbooks/compat").await.plan(VERIFIER_FAILURE, None).await.unwrap();
        assert!(plan.fail_closed);
        let actions: Vec<(&str, bool)> = plan.steps.iter().map(|s| (s.action.as_str(), s.requires_approval)).collect();
        assert_eq!(actions, [("partial_replay", true)], "the reference would not ask; a failed policy must");
        assert!(plan.decisions.iter().any(|d| d.hook == "recovery_policy" && d.error.is_some()));
    }

    #[test]
    fn a_plan_hash_is_sha256_of_its_text_without_the_id_hash_and_time() {
        // A long text (the plan carries its report and run tree), keys on both sides of the
        // excluded ones, strings that need escaping.
        let long = "é\"x".repeat(5_000);
        let plan = serde_json::json!({
            "planId": "p-1", "kind": "incident", "planHash": "old", "createdAt": "2026-01-01",
            "steps": (0..400).map(|n| serde_json::json!({"n": n, "text": "short"})).collect::<Vec<_>>(),
            "long": long, "after": [1, 2.5, null, true],
        });
        let mut content = plan.clone();
        for key in ["planId", "planHash", "createdAt"] {
            content.as_object_mut().map(|map| map.shift_remove(key));
        }
        let text = serde_json::to_vec(&content).unwrap_or_else(|e| panic!("{e}"));
        assert!(text.len() > 24 * 1024);
        assert_eq!(hash_of(&plan), crate::policy::hex(&Sha256::digest(&text)));
        assert_eq!(hash_of(&serde_json::json!([1, "a"])), crate::policy::hex(&Sha256::digest(br#"[1,"a"]"#)));
    }
}
