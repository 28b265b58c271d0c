//! Store conformance suite: the same tests over every backend (`memory:`, `file:` in a temp
//! dir, `sqlite:` in a temp dir, `postgres://` in a fresh schema of the test database), then
//! what only one backend promises.

#[macro_use]
mod store_support;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use salvage::model::{Run, RunStatus};
use salvage::store::{
    Expected, ForestMark, ForestPlace, LineageLink, ListingKey, Revision, RunIndexEntry, RunQuery, RunRecord, RunStore,
    StoreError, StreamOutcome, StreamedRun, StreamedRuns, run_stream,
};
use serde_json::{Value, json};
use store_support::{Backend, Fixture, corpus_dir, corpus_stores, run};

on_backends!(every_backend: [Memory, File, Sqlite, Postgres] =>
    corpus_runs_round_trip,
    corpus_index_matches_the_manifests,
    revisions_change_and_stale_saves_conflict,
    get_many_follows_the_requested_order,
    list_filters_and_orders,
    list_one_gives_the_index_entry,
    subtree_is_breadth_first_in_listing_order,
    subtree_survives_cycles_and_self_parents,
    families_and_listed_ids_are_the_single_lookups,
    forest_scan_marks_where_trees_start,
    the_whole_store_forest_is_written_as_built,
    save_all_is_all_or_nothing,
    streamed_saves_are_all_or_nothing,
    concurrent_increments_lose_nothing,
    stored_runs_are_copies,
    unsafe_ids_are_refused,
);

on_backends!(persistent_backends: [File, Sqlite, Postgres] =>
    concurrent_increments_across_two_instances_lose_nothing,
    runs_survive_reopening,
);

fn ok<T>(result: Result<T, StoreError>) -> T {
    result.unwrap_or_else(|error| panic!("{error}"))
}

fn ids(entries: &[RunIndexEntry]) -> Vec<&str> {
    entries.iter().map(|entry| entry.id.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Shared tests

/// Every recorded run comes back as the same JSON tree; the file store writes the very bytes
/// the reference wrote.
async fn corpus_runs_round_trip(backend: Backend) {
    let Some(corpus) = corpus_dir() else { return };
    let (mut checked, mut byte_identical) = (0, 0);
    for recorded in corpus_stores(&corpus) {
        let fixture = Fixture::new(backend).await;
        let runs: Vec<Run> = recorded.runs.iter().map(|r| r.run()).collect();
        let revisions = ok(fixture.store.save_all(&runs, Expected::Absent).await);
        assert_eq!(revisions.len(), runs.len());
        for (corpus_run, revision) in recorded.runs.iter().zip(revisions) {
            let stored = ok(fixture.store.get(&corpus_run.id).await)
                .unwrap_or_else(|| panic!("{}/{} not found after saving", recorded.store_id, corpus_run.id));
            assert_eq!(stored.revision, revision, "{}", corpus_run.id);
            assert!(
                stored.run.to_value() == corpus_run.value,
                "{}/{}: the stored run differs from the recorded one",
                recorded.store_id,
                corpus_run.id
            );
            // Saving loses nothing, not even the order of keys (`Value`'s equality ignores it).
            assert!(
                serde_json::to_string(&stored.run).ok() == serde_json::to_string(&corpus_run.run()).ok(),
                "{}/{}: the stored run does not serialise as the saved one did (key order?)",
                recorded.store_id,
                corpus_run.id
            );
            if backend == Backend::File {
                let on_disk = std::fs::read(fixture.dir().join(format!("{}.json", corpus_run.id))).expect("run file");
                assert!(
                    on_disk == stored.run.to_pretty_json().as_bytes(),
                    "{}: the file is the run's pretty JSON",
                    corpus_run.id
                );
                // Where the model keeps the recorded key order, the file is byte for byte what
                // the reference wrote (indentation, number and string formatting).
                let written: Value = serde_json::from_slice(&on_disk).expect("written JSON");
                if same_key_order(&written, &corpus_run.value) {
                    assert!(
                        on_disk == corpus_run.bytes,
                        "{}/{}: the file differs from what the reference wrote",
                        recorded.store_id,
                        corpus_run.id
                    );
                    byte_identical += 1;
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 81, "the corpus has 81 runs, checked {checked}");
    if backend == Backend::File {
        eprintln!("{byte_identical} of {checked} corpus files written back byte for byte");
        assert!(byte_identical > checked / 2, "only {byte_identical} of {checked} files compared byte for byte");
    }
}

/// Whether two JSON trees list their object keys in the same order everywhere.
fn same_key_order(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Object(l), Value::Object(r)) => {
            l.keys().eq(r.keys()) && l.values().zip(r.values()).all(|(a, b)| same_key_order(a, b))
        }
        (Value::Array(l), Value::Array(r)) => l.len() == r.len() && l.iter().zip(r).all(|(a, b)| same_key_order(a, b)),
        _ => true,
    }
}

/// The index of each recorded store says what the store's manifest says about its runs.
async fn corpus_index_matches_the_manifests(backend: Backend) {
    let Some(corpus) = corpus_dir() else { return };
    for recorded in corpus_stores(&corpus) {
        let fixture = Fixture::new(backend).await;
        let runs: Vec<Run> = recorded.runs.iter().map(|r| r.run()).collect();
        ok(fixture.store.save_all(&runs, Expected::Absent).await);
        let listed = ok(fixture.store.list(&RunQuery::all()).await);
        assert!(listed.problems.is_empty());
        let listed: HashMap<&str, &RunIndexEntry> = listed.items.iter().map(|e| (e.id.as_str(), e)).collect();
        let manifest_runs = recorded.manifest["runs"].as_array().expect("manifest runs");
        assert_eq!(listed.len(), manifest_runs.len(), "{}", recorded.store_id);
        for expected in manifest_runs {
            let id = expected["runId"].as_str().expect("runId");
            let entry = listed.get(id).unwrap_or_else(|| panic!("{}: {id} not listed", recorded.store_id));
            assert_eq!(entry.status.as_str(), expected["status"], "{id}");
            assert_eq!(entry.root_run_id, expected["rootRunId"], "{id}");
            assert_eq!(json!(entry.parent_run_id), expected["parentRunId"], "{id}");
            assert_eq!(json!(entry.created_at), expected["createdAt"], "{id}");
            // Lookups agree with the manifest too.
            let family = ok(fixture.store.list(&RunQuery::in_trace(entry.root_run_id.clone())).await);
            assert!(ids(&family.items).contains(&id));
            if let Some(parent) = &entry.parent_run_id {
                let siblings = ok(fixture.store.list(&RunQuery::children_of(parent.clone())).await);
                assert!(ids(&siblings.items).contains(&id));
            }
        }
    }
}

async fn revisions_change_and_stale_saves_conflict(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    let mut r = run("rev-1", Some("2026-01-01T00:00:00.000Z"), None, None, RunStatus::Running);

    let first = ok(store.save(&r, Expected::Absent).await);
    assert_eq!(ok(store.get("rev-1").await).map(|s| s.revision), Some(first));

    r.status = RunStatus::Failed;
    let second = ok(store.save(&r, Expected::Revision(first)).await);
    assert_ne!(second, first, "a save that changes the record changes the revision");
    r.metadata.insert("note", json!("third"));
    let third = ok(store.save(&r, Expected::Any).await);
    assert!(third != second && third != first);

    match store.save(&r, Expected::Absent).await {
        Err(StoreError::Conflict { run_id, expected, found }) => {
            assert_eq!(run_id, "rev-1");
            assert_eq!(expected, Expected::Absent);
            assert_eq!(found, Some(third));
        }
        other => panic!("Absent on an existing run must conflict, got {other:?}"),
    }
    r.status = RunStatus::Completed;
    match store.save(&r, Expected::Revision(first)).await {
        Err(error @ StoreError::Conflict { .. }) => {
            let StoreError::Conflict { expected, found, .. } = &error else { unreachable!() };
            assert_eq!(*expected, Expected::Revision(first));
            assert_eq!(*found, Some(third));
            let message = error.to_string();
            assert!(message.contains("rev-1") && message.contains(&format!("revision {first}")), "{message}");
        }
        other => panic!("a stale revision must conflict, got {other:?}"),
    }
    // The conflicting saves changed nothing.
    let stored = ok(store.get("rev-1").await).expect("stored");
    assert_eq!(stored.revision, third);
    assert_eq!(stored.run.status, RunStatus::Failed);

    let missing = run("rev-2", None, None, None, RunStatus::Pending);
    match store.save(&missing, Expected::Revision(first)).await {
        Err(StoreError::Conflict { found: None, .. }) => {}
        other => panic!("a revision expected on a missing run must conflict, got {other:?}"),
    }
    assert!(ok(store.get("rev-2").await).is_none());
    assert!(ok(store.get("never-saved").await).is_none());
}

async fn get_many_follows_the_requested_order(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let runs: Vec<Run> = ["a", "b", "c"]
        .iter()
        .map(|id| run(id, Some("2026-01-01T00:00:00.000Z"), None, None, RunStatus::Completed))
        .collect();
    ok(fixture.store.save_all(&runs, Expected::Absent).await);
    let wanted: Vec<String> = ["c", "missing", "a", "b"].iter().map(|s| s.to_string()).collect();
    let got = ok(fixture.store.get_many(&wanted).await);
    assert!(got.problems.is_empty());
    let got: Vec<&str> = got.items.iter().map(|s| s.run.id.as_str()).collect();
    assert_eq!(got, ["c", "a", "b"]);
    assert!(ok(fixture.store.get_many(&[]).await).items.is_empty());
}

/// A small forest with ties in creation time and runs without one.
fn forest() -> Vec<Run> {
    use RunStatus::*;
    vec![
        run("root-b", Some("2026-01-01T00:00:02.000Z"), None, None, Failed),
        run("root-a", Some("2026-01-01T00:00:01.000Z"), None, None, Completed),
        run("child-a2", Some("2026-01-01T00:00:05.000Z"), Some("root-a"), Some("root-a"), Failed),
        run("child-a1", Some("2026-01-01T00:00:05.000Z"), Some("root-a"), Some("root-a"), Completed),
        run("child-a0", Some("2026-01-01T00:00:03.000Z"), Some("root-a"), Some("root-a"), Failed),
        run("grand-a1", Some("2026-01-01T00:00:04.000Z"), Some("root-a"), Some("child-a1"), Paused),
        run("grand-a0", Some("2026-01-01T00:00:09.000Z"), Some("root-a"), Some("child-a0"), Failed),
        run("undated", None, None, None, Other("quarantined".into())),
        run("orphan", Some("2026-01-01T00:00:00.000Z"), Some("root-a"), Some("gone"), Running),
    ]
}

async fn list_filters_and_orders(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    ok(store.save_all(&forest(), Expected::Absent).await);

    let all = ok(store.list(&RunQuery::all()).await);
    assert!(all.problems.is_empty());
    assert_eq!(
        ids(&all.items),
        ["undated", "orphan", "root-a", "root-b", "child-a0", "grand-a1", "child-a1", "child-a2", "grand-a0"],
        "creation time, then id; runs without one first"
    );
    let failed = ok(store.list(&RunQuery::with_status(RunStatus::Failed)).await);
    assert_eq!(ids(&failed.items), ["root-b", "child-a0", "child-a2", "grand-a0"]);
    let odd = ok(store.list(&RunQuery::with_status(RunStatus::Other("quarantined".into()))).await);
    assert_eq!(ids(&odd.items), ["undated"]);
    let trace = ok(store.list(&RunQuery::in_trace("root-a")).await);
    assert_eq!(ids(&trace.items), ["orphan", "root-a", "child-a0", "grand-a1", "child-a1", "child-a2", "grand-a0"]);
    let children = ok(store.list(&RunQuery::children_of("root-a")).await);
    assert_eq!(ids(&children.items), ["child-a0", "child-a1", "child-a2"]);
    let combined = RunQuery {
        status: Some(RunStatus::Failed),
        root_run_id: Some("root-a".into()),
        parent_run_id: Some("root-a".into()),
    };
    assert_eq!(ids(&ok(store.list(&combined).await).items), ["child-a0", "child-a2"]);
    assert!(ok(store.list(&RunQuery::children_of("nobody")).await).items.is_empty());

    // A save moves a run between lookups.
    let mut moved =
        run("child-a2", Some("2026-01-01T00:00:05.000Z"), Some("root-b"), Some("root-b"), RunStatus::Completed);
    moved.metadata.insert("moved", json!(true));
    ok(store.save(&moved, Expected::Any).await);
    assert_eq!(ids(&ok(store.list(&RunQuery::children_of("root-a")).await).items), ["child-a0", "child-a1"]);
    assert_eq!(ids(&ok(store.list(&RunQuery::children_of("root-b")).await).items), ["child-a2"]);
    assert_eq!(
        ids(&ok(store.list(&RunQuery::with_status(RunStatus::Failed)).await).items),
        ["root-b", "child-a0", "grand-a0"]
    );
}

async fn list_one_gives_the_index_entry(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    let saved = ok(store.save_all(&forest(), Expected::Absent).await);
    let entry = ok(store.list_one("grand-a1").await).expect("entry");
    assert_eq!(
        entry,
        RunIndexEntry {
            id: "grand-a1".into(),
            root_run_id: "root-a".into(),
            parent_run_id: Some("child-a1".into()),
            status: RunStatus::Paused,
            created_at: Some("2026-01-01T00:00:04.000Z".into()),
            revision: saved[5],
        }
    );
    let undated = ok(store.list_one("undated").await).expect("entry");
    assert_eq!(undated.created_at, None);
    assert_eq!(undated.root_run_id, "undated");
    assert!(ok(store.list_one("missing").await).is_none());
}

async fn subtree_is_breadth_first_in_listing_order(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    ok(store.save_all(&forest(), Expected::Absent).await);
    let tree = ok(store.subtree("root-a").await);
    assert!(tree.problems.is_empty());
    // Level 1 in listing order; level 2 follows its parents' order (child-a0 before child-a1).
    assert_eq!(ids(&tree.items), ["root-a", "child-a0", "child-a1", "child-a2", "grand-a0", "grand-a1"]);
    assert_eq!(ids(&ok(store.subtree("child-a1").await).items), ["child-a1", "grand-a1"]);
    assert_eq!(ids(&ok(store.subtree("root-b").await).items), ["root-b"]);
    assert!(ok(store.subtree("missing").await).items.is_empty());
}

async fn subtree_survives_cycles_and_self_parents(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    use RunStatus::Failed;
    let runs = vec![
        // x → y → z → x
        run("x", Some("2026-01-01T00:00:01.000Z"), Some("x"), Some("z"), Failed),
        run("y", Some("2026-01-01T00:00:02.000Z"), Some("x"), Some("x"), Failed),
        run("z", Some("2026-01-01T00:00:03.000Z"), Some("x"), Some("y"), Failed),
        run("z-child", Some("2026-01-01T00:00:04.000Z"), Some("x"), Some("z"), Failed),
        // s is its own parent, with a real child
        run("s", Some("2026-01-01T00:00:05.000Z"), Some("s"), Some("s"), Failed),
        run("s-child", Some("2026-01-01T00:00:06.000Z"), Some("s"), Some("s"), Failed),
    ];
    ok(store.save_all(&runs, Expected::Absent).await);
    let from_x = tokio::time::timeout(std::time::Duration::from_secs(10), store.subtree("x")).await;
    let from_x = ok(from_x.expect("subtree of a cycle must terminate"));
    assert_eq!(ids(&from_x.items), ["x", "y", "z", "z-child"]);
    assert_eq!(ids(&ok(store.subtree("y").await).items), ["y", "z", "x", "z-child"]);
    assert_eq!(ids(&ok(store.subtree("s").await).items), ["s", "s-child"]);
    let children_of_s = ok(store.list(&RunQuery::children_of("s")).await);
    assert_eq!(ids(&children_of_s.items), ["s", "s-child"], "a self-parented run is its own child in the index");
}

/// Lineage every forest must cope with: the [`forest`] above (ties, a run without a creation
/// time, a parent not in the store), children created before their parent and before other
/// roots, a parent loop with a run below it, and a run that is its own parent.
fn tangled_forest() -> Vec<Run> {
    use RunStatus::*;
    let mut runs = forest();
    runs.extend([
        run("late-root", Some("2026-01-01T00:00:08.000Z"), None, None, Completed),
        run("early-child", Some("2026-01-01T00:00:00.500Z"), None, Some("late-root"), Failed),
        run("earlier-grandchild", Some("2026-01-01T00:00:00.200Z"), None, Some("early-child"), Failed),
        run("x", Some("2026-01-01T00:00:06.000Z"), None, Some("z"), Failed),
        run("y", Some("2026-01-01T00:00:07.000Z"), None, Some("x"), Failed),
        run("z", Some("2026-01-01T00:00:01.500Z"), None, Some("y"), Failed),
        run("z-child", Some("2026-01-01T00:00:10.000Z"), None, Some("z"), Paused),
        run("s", Some("2026-01-01T00:00:11.000Z"), None, Some("s"), Failed),
        run("s-child", Some("2026-01-01T00:00:12.000Z"), None, Some("s"), Completed),
        run("undated-child", None, None, Some("undated"), Failed),
    ]);
    runs
}

async fn families_and_listed_ids_are_the_single_lookups(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    let runs = tangled_forest();
    ok(store.save_all(&runs, Expected::Absent).await);
    let mut roots = Vec::new();
    for run in runs.iter().chain(&runs[1..2]) {
        let entry = ok(store.list_one(&run.id).await).unwrap_or_else(|| panic!("{} is stored", run.id));
        roots.push(LineageLink::of(&entry));
    }
    let families = ok(store.families(&roots).await);
    assert_eq!(families.len(), roots.len(), "one family per root, in order, a root asked twice twice");
    for (root, family) in roots.iter().zip(&families) {
        let subtree: Vec<LineageLink> = ok(store.subtree(&root.id).await).items.iter().map(LineageLink::of).collect();
        assert_eq!(family.items, subtree, "family of {}", root.id);
    }
    let mut asked: Vec<String> = runs.iter().map(|run| run.id.clone()).collect();
    asked.extend(["gone".to_owned(), "root-a".to_owned()]);
    let mut listed = ok(store.list_ids(&asked).await).items;
    listed.sort_by(RunIndexEntry::listing_order);
    let mut single = Vec::new();
    for id in &runs {
        single.extend(ok(store.list_one(&id.id).await));
    }
    single.sort_by(RunIndexEntry::listing_order);
    assert_eq!(listed, single, "every stored run once, the missing one left out");
}

/// Stores that scan their forest stop at each run without a stored parent and at each run that
/// lists no later than its parent, in listing order, whatever the page size.
async fn forest_scan_marks_where_trees_start(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    ok(store.save_all(&tangled_forest(), Expected::Absent).await);
    let listed = ok(store.list(&RunQuery::all()).await).items;
    let key_of: HashMap<&str, ListingKey> =
        listed.iter().map(|entry| (entry.id.as_str(), ListingKey::of(entry))).collect();
    let expected: Vec<ForestMark> = listed
        .iter()
        .filter_map(|entry| {
            let key = ListingKey::of(entry);
            let place = match entry.parent_run_id.as_deref().and_then(|parent| key_of.get(parent)) {
                None => Some(ForestPlace::Root),
                Some(parent) => (*parent >= key).then_some(ForestPlace::BeforeParent),
            };
            place.map(|place| ForestMark { key, place })
        })
        .collect();
    assert!(expected.iter().any(|mark| mark.place == ForestPlace::BeforeParent));
    let scans = matches!(backend, Backend::Sqlite | Backend::Postgres);
    for limit in [1, 2, 5, 1000] {
        let mut marks = Vec::new();
        let mut after: Option<ListingKey> = None;
        let mut pages = 0;
        loop {
            let Some(page) = ok(store.forest_scan(after.as_ref(), limit).await) else {
                assert!(!scans, "{backend:?} scans its forest");
                return;
            };
            pages += 1;
            assert!(pages <= listed.len() + 1, "the scan moves on ({limit} a page)");
            marks.extend(page.marks);
            if page.at_end {
                break;
            }
            after = page.last;
        }
        assert!(scans, "{backend:?} scanned, but is not expected to");
        assert_eq!(marks, expected, "{limit} runs a page");
    }
}

/// `tree --json`'s writer gives exactly the JSON of the built forest, and finds the same cycles
/// and unreadable runs: the whole listing shaped at once (memory, file) or a scan written
/// family by family (SQLite, PostgreSQL), on the corpus and on tangled lineage.
async fn the_whole_store_forest_is_written_as_built(backend: Backend) {
    let mut cases: Vec<(String, Vec<Run>)> = vec![("tangled".to_owned(), tangled_forest())];
    let mut broken = tangled_forest();
    // A run that cannot be summarised, with runs below it (they become trees of their own).
    broken[1].steps.push(salvage::model::Step::from_value(Value::Null));
    cases.push(("unreadable root-a".to_owned(), broken));
    if let Some(corpus) = corpus_dir() {
        for recorded in corpus_stores(&corpus) {
            cases.push((recorded.store_id.clone(), recorded.runs.iter().map(|r| r.run()).collect()));
        }
    }
    for (name, runs) in cases {
        let fixture = Fixture::new(backend).await;
        ok(fixture.store.save_all(&runs, Expected::Absent).await);
        let forest = salvage::inspect::build_forest(fixture.store.as_ref()).await.unwrap_or_else(|e| panic!("{e}"));
        let mut written = Vec::new();
        let found = salvage::inspect::write_forest_json(fixture.store.as_ref(), &mut written)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let built = serde_json::to_string(&forest.roots).unwrap_or_default();
        assert!(String::from_utf8(written).ok() == Some(built), "{name}: written as built");
        assert_eq!(found.omitted_runs, forest.omitted_runs, "{name}");
        assert_eq!(found.lineage_cycles, forest.lineage_cycles, "{name}");
        assert_eq!(found.unreadable_runs, forest.unreadable_runs, "{name}");
        if name == "tangled" {
            assert_eq!(forest.lineage_cycles.len(), 2, "the loop and the self-parented run");
        }
    }
}

async fn save_all_is_all_or_nothing(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    let existing = run("exists", Some("2026-01-01T00:00:00.000Z"), None, None, RunStatus::Running);
    let existing_revision = ok(store.save(&existing, Expected::Absent).await);

    let mut changed = existing.clone();
    changed.status = RunStatus::Failed;
    let batch = vec![
        run("new-1", Some("2026-01-01T00:00:01.000Z"), None, None, RunStatus::Pending),
        changed.clone(),
        run("new-2", Some("2026-01-01T00:00:02.000Z"), None, None, RunStatus::Pending),
    ];
    match store.save_all(&batch, Expected::Absent).await {
        Err(StoreError::Conflict { run_id, found, .. }) => {
            assert_eq!(run_id, "exists");
            assert_eq!(found, Some(existing_revision));
        }
        other => panic!("the batch must conflict on `exists`, got {other:?}"),
    }
    assert!(ok(store.get("new-1").await).is_none(), "nothing of a failed batch is saved");
    assert!(ok(store.get("new-2").await).is_none());
    let still = ok(store.get("exists").await).expect("exists");
    assert_eq!((still.revision, still.run.status), (existing_revision, RunStatus::Running));
    assert_eq!(ids(&ok(store.list(&RunQuery::all()).await).items), ["exists"]);

    // An invalid id anywhere in the batch also saves nothing.
    let mut bad = batch.clone();
    bad[2].id = "../escape".into();
    assert!(matches!(store.save_all(&bad, Expected::Any).await, Err(StoreError::InvalidRunId { .. })));
    assert!(ok(store.get("new-1").await).is_none());

    let revisions = ok(store.save_all(&batch, Expected::Any).await);
    assert_eq!(revisions.len(), 3);
    assert_eq!(
        ok(store.get("exists").await).map(|s| (s.revision, s.run.status)),
        Some((revisions[1], RunStatus::Failed))
    );
    assert_eq!(ok(store.list(&RunQuery::all()).await).items.len(), 3);
    assert!(ok(store.save_all(&[], Expected::Absent).await).is_empty());
}

/// `save_stream` (what `salvage import` writes through): runs arrive chunk by chunk; nothing is
/// visible before `Commit`, and a stream that is dropped or fails leaves the store as it was.
/// `run` as `import` streams a run file of the usual shape: its pretty text, kept as a record.
fn as_text(run: &Run) -> StreamedRun {
    match RunRecord::read(&run.to_pretty_json()) {
        Some(record) => StreamedRun::Record(record),
        None => panic!("{}: a plain run is read as a record", run.id),
    }
}

async fn streamed_saves_are_all_or_nothing(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = fixture.store.clone();
    let existing = run("exists", Some("2026-01-01T00:00:00.000Z"), None, None, RunStatus::Running);
    let existing_revision = ok(store.save(&existing, Expected::Absent).await);
    let new = |id: &str, second: u32| {
        run(id, Some(&format!("2026-01-01T00:00:{second:02}.000Z")), None, None, RunStatus::Pending)
    };
    let stream = |expected: Expected| {
        let (sender, receiver) = run_stream();
        let store = store.clone();
        (sender, tokio::spawn(async move { store.save_stream(receiver, expected).await }))
    };
    let only_existing = || async {
        assert_eq!(ids(&ok(store.list(&RunQuery::all()).await).items), ["exists"], "{backend:?}");
        assert!(ok(store.get("new-1").await).is_none(), "{backend:?}: nothing of the stream is saved");
        assert_eq!(ok(store.get("exists").await).map(|s| s.revision), Some(existing_revision));
    };

    // Dropped without `Commit` (the importer found a problem): nothing is written, even though
    // the first chunks went through (the channel holds one chunk, so once the third send
    // returns the first chunk has been written inside the stream).
    let (sender, saving) = stream(Expected::Any);
    for chunk in [vec![new("new-1", 1), new("new-2", 2)], vec![new("new-3", 3)], vec![new("new-4", 4)]] {
        assert!(sender.send(StreamedRuns::Runs(chunk.into_iter().map(StreamedRun::from).collect())).await.is_ok());
    }
    only_existing().await;
    if backend == Backend::File {
        assert!(temp_files(&fixture).len() >= 2, "the file store stages each chunk as it comes");
    }
    drop(sender);
    assert_eq!(saving.await.map(|saved| saved.map_err(|e| e.to_string())).ok(), Some(Ok(StreamOutcome::Abandoned)));
    only_existing().await;
    assert_eq!(temp_files(&fixture), Vec::<String>::new(), "an abandoned stream leaves no temp file");

    // A conflict in a later chunk undoes the earlier ones.
    let mut changed = existing.clone();
    changed.status = RunStatus::Failed;
    let (sender, saving) = stream(Expected::Absent);
    let _ = sender.send(StreamedRuns::Runs(vec![new("new-1", 1).into()])).await;
    let _ = sender.send(StreamedRuns::Runs(vec![changed.clone().into()])).await;
    let _ = sender.send(StreamedRuns::Commit).await;
    match saving.await.ok() {
        Some(Err(StoreError::Conflict { run_id, found, .. })) => {
            assert_eq!((run_id.as_str(), found), ("exists", Some(existing_revision)), "{backend:?}")
        }
        other => panic!("{backend:?}: the stream must conflict on `exists`, got {other:?}"),
    }
    only_existing().await;

    // So does an id that cannot be stored.
    let mut escaping = new("new-2", 2);
    escaping.id = "../escape".into();
    let (sender, saving) = stream(Expected::Any);
    let _ = sender.send(StreamedRuns::Runs(vec![new("new-1", 1).into(), as_text(&escaping)])).await;
    let _ = sender.send(StreamedRuns::Commit).await;
    assert!(matches!(saving.await.ok(), Some(Err(StoreError::InvalidRunId { .. }))), "{backend:?}");
    only_existing().await;

    // Committed: every run, with the revisions a read gives back, in the order sent.
    let (sender, saving) = stream(Expected::Any);
    // A run read as text (as `import` reads run files) is saved like a decoded one.
    let _ = sender.send(StreamedRuns::Runs(vec![as_text(&new("new-2", 2)), new("new-1", 1).into()])).await;
    let _ = sender.send(StreamedRuns::Runs(vec![changed.into()])).await;
    let _ = sender.send(StreamedRuns::Commit).await;
    let revisions = match saving.await.ok() {
        Some(Ok(StreamOutcome::Committed(revisions))) => revisions,
        other => panic!("{backend:?}: the stream must commit, got {other:?}"),
    };
    let read: Vec<Option<Revision>> = revisions_of(&*store, &["new-2", "new-1", "exists"]).await;
    assert_eq!(read, revisions.into_iter().map(Some).collect::<Vec<_>>(), "{backend:?}");
    assert_eq!(ids(&ok(store.list(&RunQuery::all()).await).items), ["exists", "new-1", "new-2"]);
    assert_eq!(ok(store.get("exists").await).map(|s| s.run.status), Some(RunStatus::Failed));
    assert_eq!(ok(store.get("new-2").await).map(|s| s.run), Some(new("new-2", 2)), "{backend:?}");
    assert_eq!(temp_files(&fixture), Vec::<String>::new());
}

/// The file store's temp files (`.<id>.<uuid>.salvage-tmp`) in its directory.
fn temp_files(fixture: &Fixture) -> Vec<String> {
    if fixture.backend != Backend::File {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(fixture.dir()) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".salvage-tmp"))
        .collect()
}

async fn revisions_of(store: &dyn RunStore, run_ids: &[&str]) -> Vec<Option<Revision>> {
    let mut out = Vec::new();
    for run_id in run_ids {
        out.push(ok(store.get(run_id).await).map(|stored| stored.revision));
    }
    out
}

const TASKS: u64 = 8;
const INCREMENTS: u64 = 25;

/// Read, add one to `metadata.counter`, save against the revision read; retry on conflict.
async fn increment(store: Arc<dyn RunStore>, run_id: &str) -> u64 {
    let mut conflicts = 0;
    for _ in 0..INCREMENTS {
        loop {
            let stored = ok(store.get(run_id).await).expect("counter run");
            let mut run = stored.run;
            let count = run.metadata.get("counter").and_then(Value::as_u64).unwrap_or(0);
            run.metadata.insert("counter", json!(count + 1));
            match store.save(&run, Expected::Revision(stored.revision)).await {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) => conflicts += 1,
                Err(error) => panic!("{error}"),
            }
        }
    }
    conflicts
}

async fn count_concurrent_increments(stores: Vec<Arc<dyn RunStore>>) -> (u64, u64) {
    let counter = run("counter", Some("2026-01-01T00:00:00.000Z"), None, None, RunStatus::Running);
    ok(stores[0].save(&counter, Expected::Absent).await);
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = stores[task as usize % stores.len()].clone();
            tokio::spawn(async move { increment(store, "counter").await })
        })
        .collect();
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.expect("task");
    }
    let last = ok(stores[stores.len() - 1].get("counter").await).expect("counter");
    (last.run.metadata.get("counter").and_then(Value::as_u64).unwrap_or(0), conflicts)
}

async fn concurrent_increments_lose_nothing(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let (count, conflicts) = count_concurrent_increments(vec![fixture.store.clone()]).await;
    assert_eq!(count, TASKS * INCREMENTS, "no lost update ({conflicts} conflicts retried)");
}

async fn concurrent_increments_across_two_instances_lose_nothing(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let other = fixture.second_instance().await;
    let (count, conflicts) = count_concurrent_increments(vec![fixture.store.clone(), other]).await;
    assert_eq!(count, TASKS * INCREMENTS, "no lost update across instances ({conflicts} conflicts retried)");
}

async fn stored_runs_are_copies(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    let mut mine = run("copy", Some("2026-01-01T00:00:00.000Z"), None, None, RunStatus::Running);
    ok(store.save(&mine, Expected::Absent).await);
    mine.status = RunStatus::Failed;
    mine.metadata.insert("local", json!(1));
    let mut loaded = ok(store.get("copy").await).expect("copy").run;
    assert_eq!(loaded.status, RunStatus::Running, "changing the saved value changed the store");
    assert!(loaded.metadata.get("local").is_none());
    loaded.status = RunStatus::Cancelled;
    loaded.messages.push(json!("mutated"));
    let again = ok(store.get("copy").await).expect("copy").run;
    assert_eq!(again.status, RunStatus::Running, "changing a loaded value changed the store");
    assert!(again.messages.is_empty());
    assert_eq!(ok(store.list_one("copy").await).map(|e| e.status), Some(RunStatus::Running));
}

async fn unsafe_ids_are_refused(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    for id in ["../escape", "a/b", ".hidden"] {
        let mut bad = run("placeholder", None, None, None, RunStatus::Pending);
        bad.id = id.to_owned();
        match fixture.store.save(&bad, Expected::Any).await {
            Err(StoreError::InvalidRunId { run_id, .. }) => assert_eq!(run_id, id),
            other => panic!("{id:?} must be refused, got {other:?}"),
        }
    }
    assert!(ok(fixture.store.list(&RunQuery::all()).await).items.is_empty());
    assert!(ok(fixture.store.get("../escape").await).is_none(), "no such run");
    assert!(ok(fixture.store.get_many(&["../escape".into(), "".into()]).await).items.is_empty());
    // Replay ids contain ':' and are fine.
    let replay = run("e9fb7c28:partial-replay:1795929343183", None, None, None, RunStatus::Paused);
    ok(fixture.store.save(&replay, Expected::Absent).await);
    assert!(ok(fixture.store.get(&replay.id).await).is_some());
}

async fn runs_survive_reopening(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let saved = ok(fixture.store.save_all(&forest(), Expected::Absent).await);
    let reopened = fixture.second_instance().await;
    let before: Vec<RunIndexEntry> = ok(fixture.store.list(&RunQuery::all()).await).items;
    let after = ok(reopened.list(&RunQuery::all()).await).items;
    assert_eq!(after, before);
    let stored = ok(reopened.get("grand-a1").await).expect("grand-a1");
    assert_eq!(stored.revision, saved[5]);
    assert_eq!(stored.run, forest()[5]);
    let mut changed = stored.run.clone();
    changed.status = RunStatus::Completed;
    let revision = ok(reopened.save(&changed, Expected::Revision(stored.revision)).await);
    assert_eq!(ok(fixture.store.get("grand-a1").await).map(|s| s.revision), Some(revision));
}

// ---------------------------------------------------------------------------------------------
// file: only

mod file_store {
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    use salvage::store::{FileStore, RunStore, StoreError};

    use super::*;

    async fn open(dir: &Path) -> FileStore {
        ok(FileStore::open(dir).await)
    }

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write fixture file");
    }

    /// Makes a file look old, so the index trusts its `(mtime, size)` without re-reading it.
    fn age(path: &Path) {
        let file = std::fs::File::options().write(true).open(path).expect("open");
        file.set_modified(SystemTime::now() - Duration::from_secs(3600)).expect("set mtime");
    }

    fn names_in(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[tokio::test]
    async fn corrupt_files_are_reported_and_isolated() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path();
        let store = open(dir).await;
        let good = [
            run("good-1", Some("2026-01-01T00:00:01.000Z"), None, None, RunStatus::Failed),
            run("good-2", Some("2026-01-01T00:00:02.000Z"), Some("good-1"), Some("good-1"), RunStatus::Completed),
        ];
        ok(store.save_all(&good, Expected::Absent).await);
        // Malformed JSON: the value of "status" is missing; the parser stops at the `}` on
        // line 4, column 1.
        write(&dir.join("broken.json"), "{\n  \"id\": \"broken\",\n  \"status\": \n}");
        // Valid JSON that is not a run.
        write(&dir.join("array.json"), "[1, 2, 3]");
        write(&dir.join("steps-null.json"), r#"{"id": "steps-null", "steps": null}"#);
        // A run in a file named after another run.
        write(&dir.join("misnamed.json"), r#"{"id": "someone-else"}"#);

        let listed = ok(store.list(&RunQuery::all()).await);
        assert_eq!(ids(&listed.items), ["good-1", "good-2"]);
        let problems: HashMap<String, &StoreError> =
            listed.problems.iter().map(|p| (p.run_id.clone().expect("run id"), &p.error)).collect();
        assert_eq!(problems.len(), 4, "{problems:?}");
        let broken_path = dir.join("broken.json").display().to_string();
        match problems["broken"] {
            StoreError::CorruptRecord { location, line, column, .. } => {
                assert_eq!((location.as_str(), *line, *column), (broken_path.as_str(), 4, 1));
            }
            other => panic!("{other:?}"),
        }
        assert!(problems["broken"].to_string().starts_with(&format!("{broken_path}:4:1: ")));
        assert!(matches!(problems["array"], StoreError::NotARun { location, .. } if location.ends_with("array.json")));
        match problems["steps-null"] {
            StoreError::NotARun { source, .. } => assert_eq!(source.path, "steps"),
            other => panic!("{other:?}"),
        }
        match problems["misnamed"] {
            StoreError::NotARun { source, .. } => assert_eq!(source.path, "id"),
            other => panic!("{other:?}"),
        }

        // The good runs are still served; the bad ones are errors naming their file.
        assert_eq!(ok(store.get("good-2").await).map(|s| s.run.id), Some("good-2".to_owned()));
        let children = ok(store.list(&RunQuery::children_of("good-1")).await);
        assert_eq!(ids(&children.items), ["good-2"]);
        assert_eq!(ids(&ok(store.subtree("good-1").await).items), ["good-1", "good-2"]);
        match store.get("broken").await {
            Err(StoreError::CorruptRecord { location, line: 4, column: 1, .. }) => assert_eq!(location, broken_path),
            other => panic!("{other:?}"),
        }
        assert!(matches!(store.list_one("array").await, Err(StoreError::NotARun { .. })));
        let many = ok(store.get_many(&["broken".into(), "good-1".into(), "misnamed".into()]).await);
        assert_eq!(many.items.len(), 1);
        assert_eq!(many.problems.len(), 2);

        // Repairing a file clears its problem at the next refresh.
        write(&dir.join("broken.json"), r#"{"id": "broken", "status": "failed"}"#);
        ok(store.refresh().await);
        let listed = ok(store.list(&RunQuery::with_status(RunStatus::Failed)).await);
        assert_eq!(ids(&listed.items), ["broken", "good-1"]);
        assert_eq!(listed.problems.len(), 3);
    }

    #[tokio::test]
    async fn a_file_rewritten_behind_the_store_is_reindexed() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path();
        let store = open(dir).await;
        let original = run("rewritten", Some("2026-01-01T00:00:00.000Z"), None, None, RunStatus::Failed);
        let saved = ok(store.save(&original, Expected::Absent).await);
        assert_eq!(ok(store.list_one("rewritten").await).map(|e| e.revision), Some(saved));

        // The reference runtime rewrites the file in place: same size, within the same
        // clock tick as the save, so `(mtime, size)` alone cannot tell.
        let path = dir.join("rewritten.json");
        let text = std::fs::read_to_string(&path).expect("read");
        let edited = text.replace("\"status\": \"failed\"", "\"status\": \"paused\"");
        assert_eq!(edited.len(), text.len());
        write(&path, &edited);

        let fresh = ok(store.get("rewritten").await).expect("get reads the file");
        assert_eq!(fresh.run.status, RunStatus::Paused);
        assert_ne!(fresh.revision, saved, "another writer's change changes the revision");
        // A save against the revision read before the external change conflicts.
        assert!(matches!(
            store.save(&original, Expected::Revision(saved)).await,
            Err(StoreError::Conflict { found: Some(found), .. }) if found == fresh.revision
        ));

        let stats = ok(store.refresh().await);
        assert_eq!(stats.parsed, 1, "{stats:?}");
        let entry = ok(store.list_one("rewritten").await).expect("entry");
        assert_eq!((entry.status, entry.revision), (RunStatus::Paused, fresh.revision));
        assert_eq!(ids(&ok(store.list(&RunQuery::with_status(RunStatus::Paused)).await).items), ["rewritten"]);
        assert!(ok(store.list(&RunQuery::with_status(RunStatus::Failed)).await).items.is_empty());
        // A new instance sees it on its first lookup without an explicit refresh.
        let other = open(dir).await;
        assert_eq!(ok(other.list_one("rewritten").await).map(|e| e.status), Some(RunStatus::Paused));
    }

    #[tokio::test]
    async fn instances_share_the_sidecar_index() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path();
        let writer = open(dir).await;
        let reader = open(dir).await;
        assert!(ok(reader.list(&RunQuery::all()).await).items.is_empty(), "indexed (empty) once");
        ok(writer.save(&run("shared", None, None, None, RunStatus::Failed), Expected::Absent).await);
        let seen = ok(reader.list(&RunQuery::with_status(RunStatus::Failed)).await);
        assert_eq!(ids(&seen.items), ["shared"], "a save by one instance is in the other's lookups at once");
    }

    #[tokio::test]
    async fn removed_files_leave_the_index() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path();
        let store = open(dir).await;
        let runs: Vec<Run> = ["r1", "r2", "r3"]
            .iter()
            .map(|id| run(id, Some("2026-01-01T00:00:00.000Z"), Some("r1"), None, RunStatus::Completed))
            .collect();
        ok(store.save_all(&runs, Expected::Absent).await);
        assert_eq!(ok(store.list(&RunQuery::in_trace("r1")).await).items.len(), 3);
        std::fs::remove_file(dir.join("r2.json")).expect("remove");
        let stats = ok(store.refresh().await);
        assert_eq!((stats.files, stats.removed), (2, 1));
        assert_eq!(ids(&ok(store.list(&RunQuery::in_trace("r1")).await).items), ["r1", "r3"]);
        assert!(ok(store.get("r2").await).is_none());
        assert!(ok(store.list_one("r2").await).is_none());
    }

    #[tokio::test]
    async fn saves_leave_no_temp_files() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path();
        let store = open(dir).await;
        let mut r = run("tmp-check", Some("2026-01-01T00:00:00.000Z"), None, None, RunStatus::Running);
        let first = ok(store.save(&r, Expected::Absent).await);
        r.status = RunStatus::Failed;
        ok(store.save(&r, Expected::Revision(first)).await);
        assert!(store.save(&r, Expected::Revision(first)).await.is_err(), "stale");
        let batch = [run("other", None, None, None, RunStatus::Pending), r.clone()];
        assert!(store.save_all(&batch, Expected::Absent).await.is_err(), "conflicting batch");
        assert_eq!(names_in(dir), BTreeSet::from([".salvage".to_owned(), "tmp-check.json".to_owned()]));
        // The file is exactly the reference's pretty JSON.
        let on_disk = std::fs::read_to_string(dir.join("tmp-check.json")).expect("read");
        assert_eq!(on_disk, r.to_pretty_json());
        assert!(on_disk.starts_with("{\n  \"id\": \"tmp-check\",\n  \"input\": \"\","));
    }

    #[tokio::test]
    async fn a_failed_write_leaves_nothing_behind() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path();
        let store = open(dir).await;
        // A directory where the run's file should go: the rename into place fails.
        std::fs::create_dir_all(dir.join("blocked.json").join("inside")).expect("blocker");
        let blocked = run("blocked", None, None, None, RunStatus::Failed);
        match store.save(&blocked, Expected::Any).await {
            Err(StoreError::Io { location, .. }) => assert!(location.ends_with("blocked.json"), "{location}"),
            other => panic!("the save must fail, got {other:?}"),
        }
        assert_eq!(names_in(dir), BTreeSet::from([".salvage".to_owned(), "blocked.json".to_owned()]));
        assert!(dir.join("blocked.json").is_dir(), "left as it was");
        // The directory is reported, not mistaken for a run.
        let listed = ok(store.list(&RunQuery::all()).await);
        assert!(listed.items.is_empty());
        assert!(matches!(&listed.problems[..], [p] if matches!(p.error, StoreError::Io { .. })));
    }

    #[tokio::test]
    async fn the_sidecar_index_is_reused_across_reopening() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path();
        for n in 0..40 {
            let r =
                run(&format!("run-{n:02}"), Some("2026-01-01T00:00:00.000Z"), Some("run-00"), None, RunStatus::Failed);
            let path = dir.join(format!("{}.json", r.id));
            write(&path, &r.to_pretty_json());
            age(&path);
        }
        let first = open(dir).await;
        let sidecar = first.index_path().map(Path::to_path_buf).expect("sidecar index");
        assert_eq!(sidecar, dir.join(".salvage").join("index.sqlite"));
        let stats = ok(first.refresh().await);
        assert_eq!((stats.files, stats.parsed), (40, 40));
        drop(first);

        let second = open(dir).await;
        let stats = ok(second.refresh().await);
        assert_eq!((stats.files, stats.parsed, stats.verified), (40, 0, 0), "nothing re-read: {stats:?}");
        assert_eq!(ok(second.list(&RunQuery::in_trace("run-00")).await).items.len(), 40);
    }

    #[tokio::test]
    async fn an_unusable_index_location_falls_back_to_memory() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path();
        let r = run("readable", Some("2026-01-01T00:00:00.000Z"), None, None, RunStatus::Failed);
        write(&dir.join("readable.json"), &r.to_pretty_json());
        // A file where the sidecar directory should go (as unusable as a read-only directory,
        // which the tests cannot make since they may run as root).
        write(&dir.join(".salvage"), "not a directory");
        let store = open(dir).await;
        assert_eq!(store.index_path(), None);
        assert_eq!(ids(&ok(store.list(&RunQuery::with_status(RunStatus::Failed)).await).items), ["readable"]);
        assert_eq!(ok(store.get("readable").await).map(|s| s.run), Some(r));
    }

    #[tokio::test]
    async fn a_damaged_sidecar_is_rebuilt() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path();
        let store = open(dir).await;
        ok(store.save(&run("kept", None, None, None, RunStatus::Failed), Expected::Absent).await);
        drop(store);
        let sidecar = dir.join(".salvage").join("index.sqlite");
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", sidecar.display()));
        }
        write(&sidecar, "this is not a database, it is garbage of some length to be sure");
        let store = open(dir).await;
        assert_eq!(store.index_path(), Some(sidecar.as_path()));
        assert_eq!(ids(&ok(store.list(&RunQuery::all()).await).items), ["kept"]);
    }

    #[tokio::test]
    async fn stale_temp_files_of_a_crashed_save_are_swept() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path();
        let old = dir.join(".crashed.0123.salvage-tmp");
        let recent = dir.join(".in-flight.4567.salvage-tmp");
        write(&old, "{");
        write(&recent, "{");
        age(&old);
        let store = open(dir).await;
        let stats = ok(store.refresh().await);
        assert_eq!(stats.stale_temps_removed, 1);
        assert!(!old.exists());
        assert!(recent.exists(), "a temp file being written right now is left alone");
    }
}

// ---------------------------------------------------------------------------------------------
// sqlite: only

mod sqlite_store {
    use salvage::store::{SqliteStore, StoreError};

    use super::*;

    #[tokio::test]
    async fn changes_since_follows_saves() {
        let temp = tempfile::tempdir().expect("temp");
        let store = ok(SqliteStore::open(temp.path().join("db").join("salvage.db")).await);
        let runs = forest();
        ok(store.save_all(&runs[..3], Expected::Absent).await);
        let all = ok(store.changes_since(0, 100).await);
        let seen: Vec<&str> = all.iter().map(|c| c.entry.id.as_str()).collect();
        assert_eq!(seen, ["root-b", "root-a", "child-a2"], "in save order");
        assert!(all.windows(2).all(|w| w[0].change_seq < w[1].change_seq));
        let cursor = all[2].change_seq;
        assert!(ok(store.changes_since(cursor, 100).await).is_empty());

        let mut changed = runs[0].clone();
        changed.status = RunStatus::Completed;
        ok(store.save(&changed, Expected::Any).await);
        ok(store.save(&runs[3], Expected::Absent).await);
        let next = ok(store.changes_since(cursor, 100).await);
        let seen: Vec<(&str, &RunStatus)> = next.iter().map(|c| (c.entry.id.as_str(), &c.entry.status)).collect();
        assert_eq!(seen, [("root-b", &RunStatus::Completed), ("child-a1", &RunStatus::Completed)]);
        assert!(next[0].change_seq > cursor);
        // The old change of root-b is gone: a run appears once, with its last change.
        let everything = ok(store.changes_since(0, 100).await);
        assert_eq!(everything.iter().filter(|c| c.entry.id == "root-b").count(), 1);
        assert_eq!(everything.len(), 4);
        let first_two = ok(store.changes_since(0, 2).await);
        assert_eq!(first_two.len(), 2);
        assert_eq!(first_two[..], everything[..2]);
        // A conflicting save takes no change number.
        assert!(store.save(&runs[3], Expected::Absent).await.is_err());
        assert_eq!(ok(store.changes_since(0, 100).await), everything);
    }

    #[tokio::test]
    async fn revisions_count_saves() {
        let temp = tempfile::tempdir().expect("temp");
        let store = ok(SqliteStore::open(temp.path().join("salvage.db")).await);
        let r = run("counted", None, None, None, RunStatus::Running);
        let revisions = [
            ok(store.save(&r, Expected::Absent).await),
            ok(store.save(&r, Expected::Any).await),
            ok(store.save(&r, Expected::Revision(Revision(2))).await),
        ];
        assert_eq!(revisions, [Revision(1), Revision(2), Revision(3)], "identical saves still count");
    }

    #[tokio::test]
    async fn a_corrupt_body_is_reported_and_isolated() {
        let temp = tempfile::tempdir().expect("temp");
        let path = temp.path().join("salvage.db");
        let store = ok(SqliteStore::open(&path).await);
        ok(store.save_all(&forest(), Expected::Absent).await);
        // Someone edits the database by hand during an incident.
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute("UPDATE runs SET body = ?1 WHERE id = 'child-a1'", ["{\n  \"id\": \"child-a1\",\n  oops\n}"])
            .expect("tamper");
        conn.execute("UPDATE runs SET body = '{\"id\": \"child-a2\", \"steps\": 7}' WHERE id = 'child-a2'", [])
            .expect("tamper");
        drop(conn);

        let location = format!("sqlite:{}#child-a1", path.display());
        match store.get("child-a1").await {
            Err(error @ StoreError::CorruptRecord { .. }) => {
                assert!(error.to_string().starts_with(&format!("{location}:3:3: ")), "{error}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(store.get("child-a2").await, Err(StoreError::NotARun { .. })));
        assert!(ok(store.get("child-a0").await).is_some());
        // Listing reads the indexed columns and still shows every run.
        assert_eq!(ok(store.list(&RunQuery::children_of("root-a")).await).items.len(), 3);
        let many = ok(store.get_many(&["child-a0".into(), "child-a1".into(), "child-a2".into()]).await);
        assert_eq!(many.items.iter().map(|s| s.run.id.as_str()).collect::<Vec<_>>(), ["child-a0"]);
        let problem_ids: Vec<_> = many.problems.iter().map(|p| p.run_id.clone().unwrap_or_default()).collect();
        assert_eq!(problem_ids, ["child-a1", "child-a2"]);
        // Overwriting a corrupt record repairs it.
        ok(store.save(&forest()[3], Expected::Any).await);
        assert!(ok(store.get("child-a1").await).is_some());
    }

    #[tokio::test]
    async fn the_database_uses_wal_and_creates_its_directory() {
        let temp = tempfile::tempdir().expect("temp");
        let path = temp.path().join("nested").join("dir").join("salvage.db");
        let store = ok(SqliteStore::open(&path).await);
        ok(store.save(&run("w", None, None, None, RunStatus::Pending), Expected::Absent).await);
        let conn = rusqlite::Connection::open(&path).expect("open");
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).expect("pragma");
        assert_eq!(mode, "wal");
        let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0)).expect("pragma");
        assert_eq!(version, 4, "schema version 4: runs, executions and journal, state documents, tree leaves");
        assert_eq!(store.spec(), format!("sqlite:{}", path.display()));
    }
}
