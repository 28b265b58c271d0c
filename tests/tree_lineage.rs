//! `salvage tree --lineage`: the observation was that `tree` draws parent/child links only (as
//! the reference does), so a branch or replay and the run it came from stand apart as two
//! roots. With `--lineage` they are drawn under their origin, with the checkpoint and the
//! salvage execution that made them; the default output stays the reference's.

#[macro_use]
mod store_support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use salvage::model::Run;
use salvage::store::Expected;
use serde_json::Value;
use store_support::{Backend, Fixture};

const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
const QUEUE_SOURCE: &str = "59fd728d-9938-5d34-914f-4e32b6f4609d";
const QUEUE_REPLAY: &str = "59fd728d-9938-5d34-914f-4e32b6f4609d:partial-replay:1795588321456";
const REPLAY_SOURCE: &str = "b112671a-8349-5cbc-975d-1b8765aa1873";
const PAUSED_REPLAY: &str = "b112671a-8349-5cbc-975d-1b8765aa1873:partial-replay:1795589000123";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn example_runs() -> Vec<Run> {
    let mut runs: Vec<Run> = std::fs::read_dir(root().join("examples/runs"))
        .expect("examples")
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "json"))
        .map(|entry| {
            let text = std::fs::read_to_string(entry.path()).expect("read");
            Run::from_value(serde_json::from_str(&text).expect("json")).expect("run")
        })
        .collect();
    runs.sort_by(|a, b| a.id.cmp(&b.id));
    runs
}

/// The examples' replays (`examples/ROLES.tsv`: queue_worker_failed of queue_source,
/// paused_replay of replay_source) are drawn under their sources on every backend, from the
/// checkpoint their records name; the workflow's children stay under it.
async fn example_replays_are_drawn_under_their_source(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    fixture.store.save_all(&example_runs(), Expected::Absent).await.expect("save");
    let forest = salvage::inspect::build_lineage_forest(fixture.store.as_ref(), None, &HashMap::new())
        .await
        .expect("lineage forest");
    let text = salvage::inspect::render_lineage(&forest.roots, true);
    assert!(forest.unreadable_runs.is_empty() && forest.lineage_cycles.is_empty(), "{backend:?}");
    assert_eq!(forest.roots.len(), 8, "{backend:?}: 12 runs, two under the workflow, two under their source\n{text}");
    for (source, replay, checkpoint) in [
        (QUEUE_SOURCE, QUEUE_REPLAY, "59fd728d-9938-5d34-914f-4e32b6f4609d:checkpoint:5"),
        (REPLAY_SOURCE, PAUSED_REPLAY, "b112671a-8349-5cbc-975d-1b8765aa1873:checkpoint:3"),
    ] {
        let node = forest.roots.iter().find(|node| node.id == source).expect("the source is a root");
        assert_eq!(node.children.len(), 1, "{backend:?}");
        assert_eq!(node.children[0].id, replay);
        assert_eq!(node.children[0].relation, salvage::inspect::LineageRelation::Replay);
        assert_eq!(node.children[0].from_checkpoint_id.as_deref(), Some(checkpoint));
        assert!(text.contains(&format!("{source} [completed]\n└─ {replay} [")), "{backend:?}:\n{text}");
    }
    assert!(text.starts_with(
        "bc96e94c-2c82-545b-8884-4d94b2e595d4 [failed]\n├─ d6603f76-1071-5071-8996-2b5451fa71b5 [completed]\n└─ \
         221768ec-bf9c-5e1a-a8b2-ebb43be8e23d [failed]\n"
    ));
    // One run's tree reads that run's trace: the replay shares its source's root.
    let below = salvage::inspect::build_lineage_forest(fixture.store.as_ref(), Some(REPLAY_SOURCE), &HashMap::new())
        .await
        .expect("tree");
    let text = salvage::inspect::render_lineage(&below.roots, false);
    assert_eq!(
        text,
        format!("{REPLAY_SOURCE}\n└─ {PAUSED_REPLAY} — replay from checkpoint {REPLAY_SOURCE}:checkpoint:3")
    );
}

on_backends!(lineage: [Memory, File, Sqlite, Postgres] => example_replays_are_drawn_under_their_source);

/// A working directory with a salvage.yaml naming the shipped set and an SQLite store of the
/// examples.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("temp");
        let config = format!(
            "playbooks: {}\npolicies: {}\n",
            root().join("playbooks").display(),
            root().join("policies").display()
        );
        std::fs::write(dir.path().join("salvage.yaml"), config).expect("config");
        let ws = Workspace { dir };
        let examples = root().join("examples/runs");
        ws.ok(&["import", examples.to_str().expect("utf-8")]);
        ws
    }

    fn salvage(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_salvage"))
            .args(args)
            .current_dir(self.dir.path())
            .env("SALVAGE_STORE", "sqlite:salvage.db")
            .env("NO_COLOR", "1")
            .env_remove("SALVAGE_CONFIG")
            .env_remove("SALVAGE_LOG")
            .output()
            .expect("run salvage")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.salvage(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }
}

#[test]
fn tree_lineage_draws_the_example_replays_under_their_source() {
    let ws = Workspace::new();
    insta::assert_snapshot!("examples_lineage", ws.ok(&["tree", "--lineage"]));
    insta::assert_snapshot!("examples_lineage_no_status", ws.ok(&["tree", "--lineage", "--no-status"]));
    // The default stays the reference's: each replay is a root of its own.
    let default = ws.ok(&["tree"]);
    for replay in [QUEUE_REPLAY, PAUSED_REPLAY] {
        assert!(default.lines().any(|line| line.starts_with(replay)), "{replay} is a root in\n{default}");
    }
    let json: Value = serde_json::from_str(&ws.ok(&["tree", "--lineage", "--json"])).expect("json");
    let roots = json.as_array().expect("an array of roots");
    assert_eq!(roots.len(), 8, "12 runs, two under the workflow, two under their source");
    assert!(roots.iter().all(|root| root["relation"] == "root"));
    let source = roots.iter().find(|root| root["id"] == REPLAY_SOURCE).expect("source");
    assert_eq!(source["children"][0]["id"], PAUSED_REPLAY);
    assert_eq!(source["children"][0]["relation"], "replay");
    assert_eq!(source["children"][0]["fromCheckpointId"], format!("{REPLAY_SOURCE}:checkpoint:3"));
    let unknown = ws.salvage(&["tree", "--lineage", "--root", "no-such-run"]);
    assert_eq!(unknown.status.code(), Some(2), "an unknown run, as without --lineage");
}

/// A recovery applied and approved branches the failed invoice run: the branch is drawn under
/// it, with the checkpoint it came from and the execution step that made it.
#[test]
fn a_branch_a_recovery_made_is_drawn_under_its_origin_with_the_execution() {
    let ws = Workspace::new();
    let applied = ws.salvage(&["apply", FAILED_INVOICE, "--yes", "--as", "alice"]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let listed: Value = serde_json::from_str(&ws.ok(&["executions", "--json"])).expect("json");
    let execution = listed[0]["executionId"].as_str().expect("the execution").to_owned();
    let approved = ws.salvage(&["approve", &execution, "ask_operator", "--as", "oncall-sre", "--json"]);
    assert!(approved.status.code().is_some_and(|c| c <= 1), "{}", String::from_utf8_lossy(&approved.stderr));
    let listed: Value = serde_json::from_str(&ws.ok(&["executions", "--json"])).expect("json");
    let branch = listed[0]["createdRuns"]["branch_approved"].as_str().expect("a branch was made").to_owned();

    let tree: Value =
        serde_json::from_str(&ws.ok(&["tree", "--lineage", "--root", FAILED_INVOICE, "--json"])).expect("json");
    assert_eq!(tree["id"], FAILED_INVOICE);
    let node = &tree["children"][0];
    assert_eq!(node["id"], branch.as_str());
    assert_eq!(node["relation"], "branch");
    // The checkpoint the plan chose: the last one before the failing step (policies/checkpoints.rhai).
    assert_eq!(node["fromCheckpointId"], format!("{FAILED_INVOICE}:checkpoint:2"));
    assert_eq!(node["createdBy"]["executionId"], execution.as_str());
    assert_eq!(node["createdBy"]["stepId"], "branch_approved");
    assert_eq!(node["createdBy"]["incidentRunId"], FAILED_INVOICE);

    let text = ws.ok(&["tree", "--lineage", "--root", FAILED_INVOICE]);
    let text = text.replace(&branch, "[branch]").replace(&execution, "[execution]");
    insta::assert_snapshot!("branch_of_a_recovery", text);
    // Without --lineage the branch is not below the run (the reference's tree).
    let default = ws.ok(&["tree", "--root", FAILED_INVOICE]);
    assert!(!default.contains(&branch), "{default}");
}

/// A 20,000-run chain of branches (each from the one before) and an origin loop in an SQLite
/// store: `tree --lineage` draws and prints them bounded like every tree (40 levels, the rest
/// counted), cuts the loop and says so, and never recurses over the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_chain_of_branches_and_an_origin_loop_are_bounded_and_cut() {
    const CHAIN: usize = 20_000;
    let dir = tempfile::tempdir().expect("temp");
    let path = dir.path().join("salvage.db");
    let store = salvage::store::SqliteStore::open(&path).await.expect("open");
    let branch = |id: &str, origin: Option<&str>, n: usize| {
        let created_at =
            format!("2025-01-01T{:02}:{:02}:{:02}.{:03}Z", n / 3_600_000, n / 60_000 % 60, n / 1000 % 60, n % 1000);
        Run::from_value(serde_json::json!({
            "id": id, "status": "failed",
            "timestamps": {"createdAt": created_at},
            "metadata": {"lineage": {
                "rootRunId": "chain-00000", "branchOriginRunId": origin,
                "branchCheckpointId": origin.map(|o| format!("{o}:checkpoint:1")),
            }},
        }))
        .expect("run")
    };
    let mut runs: Vec<Run> = (0..CHAIN)
        .map(|n| {
            let origin = n.checked_sub(1).map(|p| format!("chain-{p:05}"));
            branch(&format!("chain-{n:05}"), origin.as_deref(), n)
        })
        .collect();
    runs.push(branch("loop-a", Some("loop-b"), 1));
    runs.push(branch("loop-b", Some("loop-a"), 2));
    salvage::store::RunStore::save_all(&store, &runs, Expected::Absent).await.expect("save");
    drop(store);

    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_salvage"))
            .args(args)
            .current_dir(dir.path())
            .env("SALVAGE_STORE", "sqlite:salvage.db")
            .env_remove("SALVAGE_CONFIG")
            .output()
            .expect("run salvage")
    };
    let text = run(&["tree", "--lineage", "--no-status"]);
    assert_eq!(text.status.code(), Some(0), "{}", String::from_utf8_lossy(&text.stderr));
    let stdout = String::from_utf8(text.stdout).expect("utf-8");
    let chain: Vec<&str> = stdout.lines().take_while(|line| !line.starts_with("loop-")).collect();
    assert_eq!(chain.len(), 40, "40 levels drawn");
    assert!(
        chain[39].ends_with(&format!("({} more runs below, not shown)", CHAIN - 40)),
        "the rest counted where the chain was cut: {}",
        chain[39]
    );
    assert!(stdout.contains("loop-a\n└─ loop-b — branch from checkpoint loop-a:checkpoint:1"), "{stdout}");
    assert!(String::from_utf8_lossy(&text.stderr).contains("lineage cycle"), "the loop is reported");

    let json = run(&["tree", "--lineage", "--root", "chain-00000", "--json"]);
    assert_eq!(json.status.code(), Some(0));
    let mut node: Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(node["omittedRuns"], (CHAIN - 40) as u64);
    let mut depth = 1;
    while let Some(child) = node["children"].get(0).cloned() {
        assert_eq!(child["relation"], "branch");
        node = child;
        depth += 1;
    }
    assert_eq!(depth, 40);
}
