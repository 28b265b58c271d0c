//! Execution store conformance: recovery executions and their journals, the same tests over
//! every backend (`memory:`, `file:` and `sqlite:` in temp dirs, `postgres://` in a fresh
//! schema), then what only one backend promises (the file store's layout, torn journal lines, read-only directories; the SQLite
//! store's corrupt rows).

#[macro_use]
mod store_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use salvage::model::{Run, RunStatus};
use salvage::store::{
    ExecutionDoc, ExecutionStore, Expected, FileStore, JournalRecord, MemoryStore, PostgresStore, Revision, RunQuery,
    RunStore, SqliteStore, Store, StoreError,
};
use serde_json::{Value, json};
use store_support::Backend;
use store_support::postgres::TestSchema;
use tempfile::TempDir;

on_backends!(every_backend: [Memory, File, Sqlite, Postgres] =>
    create_get_update_with_compare_and_set,
    list_is_ordered_and_filters_by_status,
    journal_appends_come_back_in_order,
    journal_gaps_and_duplicates_are_refused_and_write_nothing,
    an_entry_and_the_record_are_written_together_or_not_at_all,
    entries_appended_together_are_written_together_or_not_at_all,
    racing_creates_of_one_execution_have_one_winner,
    racing_appends_of_one_seq_have_one_winner,
    concurrent_appends_with_retry_make_a_gapless_journal,
    executions_and_runs_do_not_mix,
    executions_of_a_run_come_oldest_first,
    unsafe_execution_ids_are_refused,
);

on_backends!(persistent_backends: [File, Sqlite, Postgres] =>
    executions_and_journals_survive_reopening,
);

/// A fresh store of one backend, in a temp dir that lives as long as the fixture.
struct Fixture {
    backend: Backend,
    store: Arc<dyn Store>,
    path: PathBuf,
    _temp: TempDir,
    schema: Option<TestSchema>,
}

impl Fixture {
    async fn new(backend: Backend) -> Fixture {
        let temp = tempfile::tempdir().expect("temp dir");
        let path = match backend {
            Backend::Memory | Backend::Postgres => PathBuf::new(),
            Backend::File => temp.path().join("runs"),
            Backend::Sqlite => temp.path().join("state").join("salvage.db"),
        };
        let schema = (backend == Backend::Postgres).then(TestSchema::create);
        let store = match backend {
            Backend::Memory => Arc::new(MemoryStore::new()) as Arc<dyn Store>,
            _ => open(backend, &path, schema.as_ref()).await,
        };
        Fixture { backend, store, path, _temp: temp, schema }
    }

    /// Another instance on the same files, as another process would open it; the memory store
    /// has none, so its callers share the one instance.
    async fn other_instance(&self) -> Arc<dyn Store> {
        match self.backend {
            Backend::Memory => self.store.clone(),
            backend => open(backend, &self.path, self.schema.as_ref()).await,
        }
    }
}

/// Opens the store of a fixture: its files, or its PostgreSQL schema.
async fn open(backend: Backend, path: &Path, schema: Option<&TestSchema>) -> Arc<dyn Store> {
    match (backend, schema) {
        (Backend::File, _) => Arc::new(ok(FileStore::open(path).await)),
        (Backend::Sqlite, _) => Arc::new(ok(SqliteStore::open(path).await)),
        (Backend::Memory, _) => Arc::new(MemoryStore::new()),
        (Backend::Postgres, Some(schema)) => Arc::new(ok(PostgresStore::open(&schema.postgres_url()).await)),
        (Backend::Postgres, None) => panic!("a PostgreSQL fixture has a schema"),
    }
}

fn ok<T>(result: Result<T, StoreError>) -> T {
    result.unwrap_or_else(|error| panic!("{error}"))
}

fn run(id: &str, created_at: Option<&str>, status: RunStatus) -> Run {
    let mut run = Run::new(id, created_at.unwrap_or("2026-01-01T00:00:00.000Z"));
    run.status = status;
    run
}

fn execution(id: &str, status: &str, created_at: &str) -> ExecutionDoc {
    ExecutionDoc {
        id: id.to_owned(),
        run_id: format!("run-{id}"),
        plan_id: format!("plan-{id}"),
        status: status.to_owned(),
        created_at: created_at.to_owned(),
        updated_at: created_at.to_owned(),
        body: json!({ "id": id, "status": status, "steps": [] }),
    }
}

fn entry(execution_id: &str, seq: u64, body: Value) -> JournalRecord {
    JournalRecord { execution_id: execution_id.to_owned(), seq, body }
}

fn is_conflict<T: std::fmt::Debug>(result: &Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::Conflict { .. }))
}

fn ids(executions: &[salvage::store::StoredExecution]) -> Vec<&str> {
    executions.iter().map(|stored| stored.doc.id.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Shared tests

async fn create_get_update_with_compare_and_set(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    assert_eq!(ok(store.get_execution("exec-1").await), None);

    let mut doc = execution("exec-1", "running", "2026-03-01T10:00:00.000Z");
    // A body with what JSON round trips tend to lose: big integers, exact floats, escapes,
    // non-ASCII, nesting.
    doc.body = json!({
        "steps": [{ "id": "s1", "attempt": 1, "outcome": null }],
        "counter": 9_007_199_254_740_993_u64,
        "ratio": 0.1,
        "note": "ünïcødé \"quoted\"\nsecond line",
        "approvals": { "s2": { "actor": "alice", "at": "2026-03-01T10:01:00.000Z" } }
    });
    // Every backend counts execution saves.
    assert_eq!(ok(store.put_execution(doc.clone(), Expected::Absent).await), Revision(1));
    let stored = ok(store.get_execution("exec-1").await).expect("created");
    assert_eq!((&stored.doc, stored.revision), (&doc, Revision(1)));

    let again = store.put_execution(execution("exec-1", "other", "x"), Expected::Absent).await;
    assert!(
        matches!(&again, Err(StoreError::Conflict { expected: Expected::Absent, found: Some(Revision(1)), .. })),
        "{again:?}"
    );
    assert_eq!(ok(store.get_execution("exec-1").await).map(|s| s.doc), Some(doc.clone()), "the loser wrote nothing");

    let mut updated = doc.clone();
    updated.status = "waiting_for_approval".into();
    updated.updated_at = "2026-03-01T10:05:00.000Z".into();
    updated.body["steps"][0]["outcome"] = json!("succeeded");
    assert_eq!(ok(store.put_execution(updated.clone(), Expected::Revision(Revision(1))).await), Revision(2));
    let stale = store.put_execution(doc.clone(), Expected::Revision(Revision(1))).await;
    assert!(
        matches!(&stale, Err(StoreError::Conflict { found: Some(Revision(2)), .. })),
        "a save from revision 1 after revision 2: {stale:?}"
    );
    let stored = ok(store.get_execution("exec-1").await).expect("updated");
    assert_eq!((&stored.doc, stored.revision), (&updated, Revision(2)));

    let missing = store.put_execution(execution("exec-2", "running", "x"), Expected::Revision(Revision(1))).await;
    assert!(matches!(&missing, Err(StoreError::Conflict { found: None, .. })), "{missing:?}");
    assert_eq!(ok(store.get_execution("exec-2").await), None);

    assert_eq!(ok(store.put_execution(doc.clone(), Expected::Any).await), Revision(3));
    assert_eq!(ok(store.put_execution(execution("exec-3", "running", "x"), Expected::Any).await), Revision(1));
    let stored = ok(store.get_execution("exec-1").await).expect("overwritten");
    assert_eq!((&stored.doc, stored.revision), (&doc, Revision(3)));
    let message = stale.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("exec-1") && message.contains("revision 1"), "{message}");
}

async fn list_is_ordered_and_filters_by_status(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    assert!(ok(store.list_executions(None).await).is_empty());
    // Saved in an order that is neither creation nor id order; two share a creation time.
    let docs = [
        execution("e-late", "completed", "2026-03-03T00:00:00.000Z"),
        execution("e-b", "waiting_for_approval", "2026-03-02T00:00:00.000Z"),
        execution("e-early", "running", "2026-03-01T00:00:00.000Z"),
        execution("e-a", "waiting_for_approval", "2026-03-02T00:00:00.000Z"),
        execution("e-mid", "needs_operator", "2026-03-02T12:00:00.000Z"),
    ];
    for doc in &docs {
        ok(store.put_execution(doc.clone(), Expected::Absent).await);
    }
    let all = ok(store.list_executions(None).await);
    assert_eq!(ids(&all), ["e-early", "e-a", "e-b", "e-mid", "e-late"]);
    for stored in &all {
        let saved = docs.iter().find(|d| d.id == stored.doc.id).expect("saved");
        assert_eq!((&stored.doc, stored.revision), (saved, Revision(1)), "listed as saved");
    }
    assert_eq!(ids(&ok(store.list_executions(Some("waiting_for_approval")).await)), ["e-a", "e-b"]);
    assert_eq!(ids(&ok(store.list_executions(Some("running")).await)), ["e-early"]);
    assert!(ok(store.list_executions(Some("no_such_status")).await).is_empty());

    // A status change moves the execution between filters.
    let mut answered = docs[3].clone();
    answered.status = "running".into();
    ok(store.put_execution(answered.clone(), Expected::Revision(Revision(1))).await);
    assert_eq!(ids(&ok(store.list_executions(Some("waiting_for_approval")).await)), ["e-b"]);
    let running = ok(store.list_executions(Some("running")).await);
    assert_eq!(ids(&running), ["e-early", "e-a"]);
    assert_eq!(running[1].revision, Revision(2));
}

async fn journal_appends_come_back_in_order(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    assert!(ok(store.journal("exec-1").await).is_empty());
    let mut expected_one = Vec::new();
    let mut expected_two = Vec::new();
    // Two journals appended in alternation stay separate.
    for seq in 1..=6 {
        let one = entry("exec-1", seq, json!({ "kind": if seq % 2 == 1 { "intent" } else { "outcome" }, "n": seq }));
        let two = entry("exec-2", seq, json!({ "other": seq, "text": "line\nbreak" }));
        ok(store.append_journal(&one).await);
        ok(store.append_journal(&two).await);
        expected_one.push(one);
        expected_two.push(two);
    }
    assert_eq!(ok(store.journal("exec-1").await), expected_one);
    assert_eq!(ok(store.journal("exec-2").await), expected_two);
    assert!(ok(store.journal("exec-3").await).is_empty());
}

async fn journal_gaps_and_duplicates_are_refused_and_write_nothing(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    for seq in [0, 2, 7] {
        let refused = store.append_journal(&entry("exec-1", seq, json!({ "bad": seq }))).await;
        assert!(is_conflict(&refused), "seq {seq} on an empty journal: {refused:?}");
    }
    assert!(ok(store.journal("exec-1").await).is_empty());
    let first = entry("exec-1", 1, json!({ "kind": "intent" }));
    let second = entry("exec-1", 2, json!({ "kind": "outcome" }));
    ok(store.append_journal(&first).await);
    ok(store.append_journal(&second).await);
    for seq in [1, 2, 4, 100] {
        let refused = store.append_journal(&entry("exec-1", seq, json!({ "overwrite": seq }))).await;
        assert!(is_conflict(&refused), "seq {seq} after 2: {refused:?}");
    }
    let message = store.append_journal(&entry("exec-1", 5, json!({}))).await.err().map(|e| e.to_string());
    let message = message.unwrap_or_default();
    assert!(message.contains("exec-1") && message.contains('3'), "names the journal and the next seq: {message}");
    assert_eq!(ok(store.journal("exec-1").await), [first.clone(), second.clone()], "nothing written");
    let third = entry("exec-1", 3, json!({ "kind": "intent" }));
    ok(store.append_journal(&third).await);
    assert_eq!(ok(store.journal("exec-1").await), [first, second, third]);
}

async fn an_entry_and_the_record_are_written_together_or_not_at_all(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    let created = execution("exec-1", "running", "2026-01-01T00:00:00.000Z");
    let first = ok(store.put_execution(created.clone(), Expected::Absent).await);
    let started = entry("exec-1", 1, json!({ "kind": "started" }));
    ok(store.append_journal(&started).await);

    // A stale revision: neither the entries nor the record are written.
    let mut finished = created.clone();
    finished.status = "succeeded".into();
    let end = [entry("exec-1", 2, json!({ "kind": "outcome" })), entry("exec-1", 3, json!({ "kind": "finished" }))];
    let stale =
        store.append_journal_and_put_execution(&end, finished.clone(), Expected::Revision(Revision(first.0 + 1))).await;
    assert!(is_conflict(&stale), "a stale revision: {stale:?}");
    // A journal that moved: nothing is written either.
    let moved = store
        .append_journal_and_put_execution(std::slice::from_ref(&started), finished.clone(), Expected::Revision(first))
        .await;
    assert!(is_conflict(&moved), "a seq already taken: {moved:?}");
    // Entries with a gap between them: nothing is written.
    let gap = [end[0].clone(), entry("exec-1", 4, json!({ "kind": "finished" }))];
    let refused = store.append_journal_and_put_execution(&gap, finished.clone(), Expected::Revision(first)).await;
    assert!(is_conflict(&refused), "a gap between the entries: {refused:?}");
    assert_eq!(ok(store.journal("exec-1").await), std::slice::from_ref(&started), "no entry written");
    let stored = ok(store.get_execution("exec-1").await).expect("the execution");
    assert_eq!((stored.doc.status.as_str(), stored.revision), ("running", first), "the record unchanged");

    // Every check passes: all are written, and another instance reads them back.
    let saved = ok(store.append_journal_and_put_execution(&end, finished.clone(), Expected::Revision(first)).await);
    assert_eq!(saved, Revision(first.0 + 1));
    let other = fixture.other_instance().await;
    let [outcome, finish] = end;
    assert_eq!(ok(other.journal("exec-1").await), [started, outcome, finish]);
    let stored = ok(other.get_execution("exec-1").await).expect("the execution");
    assert_eq!((stored.doc.status.as_str(), stored.revision), ("succeeded", saved));
}

async fn entries_appended_together_are_written_together_or_not_at_all(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    let first = entry("exec-1", 1, json!({ "kind": "intent" }));
    ok(store.append_journal(&first).await);
    let outcome = entry("exec-1", 2, json!({ "kind": "outcome" }));
    let intent = entry("exec-1", 3, json!({ "kind": "intent", "step": "resume" }));
    // Refused, and nothing of them written: a first entry already taken, a gap between them,
    // entries of two executions.
    let taken = store.append_journal_entries(&[first.clone(), outcome.clone()]).await;
    assert!(is_conflict(&taken), "a seq already taken: {taken:?}");
    let gap = store.append_journal_entries(&[outcome.clone(), entry("exec-1", 4, json!({}))]).await;
    assert!(is_conflict(&gap), "a gap between the entries: {gap:?}");
    let mixed = store.append_journal_entries(&[outcome.clone(), entry("exec-2", 3, json!({}))]).await;
    let message = mixed.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("exec-2") && message.contains("exec-1"), "names both executions: {message}");
    assert_eq!(ok(store.journal("exec-1").await), std::slice::from_ref(&first), "nothing written");
    assert!(ok(store.journal("exec-2").await).is_empty());
    // No entries: nothing to do.
    ok(store.append_journal_entries(&[]).await);

    ok(store.append_journal_entries(&[outcome.clone(), intent.clone()]).await);
    let other = fixture.other_instance().await;
    assert_eq!(ok(other.journal("exec-1").await), [first, outcome, intent]);
    let next = store.append_journal(&entry("exec-1", 3, json!({}))).await;
    assert!(is_conflict(&next), "the next number is 4: {next:?}");
}

/// Runs `attempts` at once (released together by a barrier) and returns their results.
async fn race<T, F, Fut>(attempts: usize, make: F) -> Vec<Result<T, StoreError>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(attempts));
    let tasks: Vec<_> = (0..attempts)
        .map(|n| {
            let barrier = barrier.clone();
            let attempt = make(n);
            tokio::spawn(async move {
                barrier.wait().await;
                attempt.await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task"));
    }
    results
}

async fn racing_creates_of_one_execution_have_one_winner(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let stores = [fixture.store.clone(), fixture.other_instance().await];
    for round in 0..5 {
        let id = format!("exec-{round}");
        let results = race(6, |n| {
            let store = stores[n % 2].clone();
            let mut doc = execution(&id, "running", "2026-03-01T00:00:00.000Z");
            doc.body = json!({ "owner": n });
            async move { store.put_execution(doc.clone(), Expected::Absent).await }
        })
        .await;
        let winners: Vec<usize> = results.iter().enumerate().filter(|(_, r)| r.is_ok()).map(|(n, _)| n).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one create wins: {results:?}");
        assert!(results.iter().filter(|r| r.is_err()).all(is_conflict), "the others conflict: {results:?}");
        for store in &stores {
            let stored = ok(store.get_execution(&id).await).expect("created");
            assert_eq!((stored.doc.body, stored.revision), (json!({ "owner": winners[0] }), Revision(1)));
        }
    }
}

async fn racing_appends_of_one_seq_have_one_winner(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let stores = [fixture.store.clone(), fixture.other_instance().await];
    let mut expected = Vec::new();
    for seq in 1..=5 {
        let results = race(6, |n| {
            let store = stores[(n + 1) % 2].clone();
            let record = entry("exec-1", seq, json!({ "writer": n }));
            async move { store.append_journal(&record).await }
        })
        .await;
        let winners: Vec<usize> = results.iter().enumerate().filter(|(_, r)| r.is_ok()).map(|(n, _)| n).collect();
        assert_eq!(winners.len(), 1, "seq {seq}: exactly one append wins: {results:?}");
        assert!(results.iter().filter(|r| r.is_err()).all(is_conflict), "the others conflict: {results:?}");
        expected.push(entry("exec-1", seq, json!({ "writer": winners[0] })));
        for store in &stores {
            assert_eq!(ok(store.journal("exec-1").await), expected);
        }
    }
}

async fn concurrent_appends_with_retry_make_a_gapless_journal(backend: Backend) {
    const WRITERS: usize = 4;
    const EACH: usize = 20;
    let fixture = Fixture::new(backend).await;
    let stores = [fixture.store.clone(), fixture.other_instance().await];
    let results = race(WRITERS, |writer| {
        let store = stores[writer % 2].clone();
        async move {
            let mut conflicts = 0;
            for n in 0..EACH {
                loop {
                    let next = store.journal("exec-1").await?.len() as u64 + 1;
                    match store.append_journal(&entry("exec-1", next, json!({ "writer": writer, "n": n }))).await {
                        Ok(()) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(other) => return Err(other),
                    }
                }
            }
            Ok(conflicts)
        }
    })
    .await;
    let conflicts: usize = results.into_iter().map(ok).sum();
    let journal = ok(fixture.store.journal("exec-1").await);
    assert_eq!(journal.len(), WRITERS * EACH, "nothing lost ({conflicts} conflicts retried)");
    assert!(journal.iter().enumerate().all(|(index, record)| record.seq == index as u64 + 1), "numbered 1..=N");
    let mut per_writer: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for record in &journal {
        per_writer
            .entry(record.body["writer"].as_u64().expect("writer"))
            .or_default()
            .push(record.body["n"].as_u64().expect("n"));
    }
    let in_order: Vec<u64> = (0..EACH as u64).collect();
    assert_eq!(per_writer.len(), WRITERS);
    assert!(per_writer.values().all(|ns| *ns == in_order), "each writer's entries once, in its order: {per_writer:?}");
}

async fn executions_and_runs_do_not_mix(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    let runs = [
        run("r-1", Some("2026-01-01T00:00:00.000Z"), RunStatus::Failed),
        run("shared", Some("2026-01-02T00:00:00.000Z"), RunStatus::Running),
    ];
    ok(store.save_all(&runs, Expected::Absent).await);
    let runs_before = ok(store.list(&RunQuery::all()).await);
    assert!(runs_before.problems.is_empty());

    // An execution may carry the id of a run: they live in separate namespaces.
    for id in ["shared", "e-1"] {
        ok(store.put_execution(execution(id, "running", "2026-03-01T00:00:00.000Z"), Expected::Absent).await);
        ok(store.append_journal(&entry(id, 1, json!({ "kind": "intent" }))).await);
    }
    let runs_after = ok(store.list(&RunQuery::all()).await);
    assert_eq!(runs_after.items, runs_before.items, "the list of runs is unaffected");
    assert!(runs_after.problems.is_empty(), "{:?}", runs_after.problems);
    assert_eq!(ok(store.get("e-1").await), None, "an execution is not a run");
    assert_eq!(ok(store.get("shared").await).map(|s| s.run), Some(runs[1].clone()));
    assert_eq!(ids(&ok(store.list_executions(None).await)), ["e-1", "shared"], "runs are not executions");
    assert_eq!(ok(store.get_execution("r-1").await), None);
    assert!(ok(store.journal("r-1").await).is_empty());
    // A run saved afterwards is not an execution either, and saving it leaves executions alone.
    ok(store.save(&run("e-2", None, RunStatus::Completed), Expected::Absent).await);
    assert_eq!(ids(&ok(store.list_executions(None).await)), ["e-1", "shared"]);
    assert_eq!(ok(store.get_execution("shared").await).map(|s| s.revision), Some(Revision(1)));

    if backend != Backend::Memory {
        // A fresh instance (a fresh index, for the file store) sees the same separation.
        let reopened = fixture.other_instance().await;
        let listed: Vec<String> = ok(reopened.list(&RunQuery::all()).await).items.into_iter().map(|e| e.id).collect();
        assert_eq!(listed, ["e-2", "r-1", "shared"]);
        assert_eq!(ids(&ok(reopened.list_executions(None).await)), ["e-1", "shared"]);
    }
}

async fn executions_of_a_run_come_oldest_first(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    for (n, (run_id, day)) in [("r1", "03"), ("r2", "01"), ("r1", "01"), ("r1", "02"), ("r2", "02")].iter().enumerate()
    {
        let mut doc = execution(&format!("exec-{n}"), "running", &format!("2026-03-{day}T00:00:00.000Z"));
        doc.run_id = (*run_id).to_owned();
        ok(store.put_execution(doc.clone(), Expected::Absent).await);
    }
    assert_eq!(ids(&ok(store.executions_of_run("r1").await)), ["exec-2", "exec-3", "exec-0"]);
    assert_eq!(ids(&ok(store.executions_of_run("r2").await)), ["exec-1", "exec-4"]);
    assert!(ok(store.executions_of_run("none").await).is_empty());
    // An update that moves an execution to another run moves it between lookups.
    let mut moved = ok(store.get_execution("exec-0").await).expect("exec-0");
    moved.doc.run_id = "r2".into();
    ok(store.put_execution(moved.doc.clone(), Expected::Revision(moved.revision)).await);
    assert_eq!(ids(&ok(store.executions_of_run("r1").await)), ["exec-2", "exec-3"]);
    assert_eq!(ids(&ok(store.executions_of_run("r2").await)), ["exec-1", "exec-4", "exec-0"]);
}

async fn unsafe_execution_ids_are_refused(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let store = &fixture.store;
    for id in ["", "../escape", "a/b", "a\\b", ".hidden", "nul\0"] {
        let put = store.put_execution(execution(id, "running", "x"), Expected::Any).await;
        assert!(matches!(&put, Err(StoreError::InvalidRunId { .. })), "{id:?}: {put:?}");
        let message = put.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("execution"), "the error says it is an execution id: {message}");
        let append = store.append_journal(&entry(id, 1, json!({}))).await;
        assert!(matches!(&append, Err(StoreError::InvalidRunId { .. })), "{id:?}: {append:?}");
        assert_eq!(ok(store.get_execution(id).await), None);
        assert!(ok(store.journal(id).await).is_empty());
    }
    assert!(ok(store.list_executions(None).await).is_empty());
    if backend == Backend::File {
        let parent = fixture.path.parent().expect("parent");
        assert!(!parent.join("escape.json").exists() && !parent.join(".salvage").exists(), "nothing escaped");
    }
}

async fn executions_and_journals_survive_reopening(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let doc = execution("exec-1", "waiting_for_approval", "2026-03-01T00:00:00.000Z");
    ok(fixture.store.put_execution(doc.clone(), Expected::Absent).await);
    ok(fixture.store.put_execution(doc.clone(), Expected::Revision(Revision(1))).await);
    let journal: Vec<JournalRecord> = (1..=3).map(|seq| entry("exec-1", seq, json!({ "n": seq }))).collect();
    for record in &journal {
        ok(fixture.store.append_journal(record).await);
    }
    let path = fixture.path.clone();
    let Fixture { store, _temp, .. } = fixture;
    drop(store);

    let reopened = open(backend, &path, fixture.schema.as_ref()).await;
    let stored = ok(reopened.get_execution("exec-1").await).expect("kept");
    assert_eq!((stored.doc, stored.revision), (doc.clone(), Revision(2)));
    assert_eq!(ok(reopened.journal("exec-1").await), journal);
    assert_eq!(ids(&ok(reopened.list_executions(Some("waiting_for_approval")).await)), ["exec-1"]);
    // Numbering and revisions continue where they were.
    assert!(is_conflict(&reopened.append_journal(&entry("exec-1", 3, json!({}))).await));
    ok(reopened.append_journal(&entry("exec-1", 4, json!({ "n": 4 }))).await);
    assert_eq!(ok(reopened.put_execution(doc.clone(), Expected::Revision(Revision(2))).await), Revision(3));
}

// ---------------------------------------------------------------------------------------------
// File store

mod file_store {
    use super::*;

    async fn open_file(dir: &Path) -> FileStore {
        ok(FileStore::open(dir).await)
    }

    fn journal_file(dir: &Path, id: &str) -> PathBuf {
        dir.join(".salvage").join("journal").join(format!("{id}.jsonl"))
    }

    /// Every file under `dir`, with its bytes (the lock file and the run index aside).
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for entry in std::fs::read_dir(dir).expect("read dir") {
                let path = entry.expect("entry").path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
                if path.is_dir() {
                    walk(&path, out);
                } else if name != "lock" && !name.starts_with("index.sqlite") {
                    out.insert(path.clone(), std::fs::read(&path).expect("read"));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(dir, &mut out);
        out
    }

    #[tokio::test]
    async fn executions_and_journals_live_under_the_sidecar_directory() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path();
        let store = open_file(dir).await;
        ok(store.save(&run("r-1", None, RunStatus::Failed), Expected::Absent).await);
        let doc = execution("exec-1", "running", "2026-03-01T00:00:00.000Z");
        ok(store.put_execution(doc.clone(), Expected::Absent).await);
        ok(store.put_execution(doc.clone(), Expected::Any).await);
        for seq in 1..=3 {
            ok(store.append_journal(&entry("exec-1", seq, json!({ "n": seq, "text": "a\nb" }))).await);
        }

        let execution_file = dir.join(".salvage").join("executions").join("exec-1.json");
        assert_eq!(ok(store.execution_path("exec-1")), execution_file);
        assert_eq!(ok(store.journal_path("exec-1")), journal_file(dir, "exec-1"));
        let on_disk: Value = serde_json::from_slice(&std::fs::read(&execution_file).expect("file")).expect("JSON");
        assert_eq!(
            on_disk,
            json!({
                "id": "exec-1", "runId": "run-exec-1", "planId": "plan-exec-1", "status": "running",
                "createdAt": "2026-03-01T00:00:00.000Z", "updatedAt": "2026-03-01T00:00:00.000Z",
                "revision": 2, "body": doc.body
            })
        );
        let journal = std::fs::read_to_string(journal_file(dir, "exec-1")).expect("journal");
        let lines: Vec<Value> = journal.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
        assert!(journal.ends_with('\n'));
        assert_eq!(lines, (1..=3).map(|n| json!({ "seq": n, "body": { "n": n, "text": "a\nb" } })).collect::<Vec<_>>());

        // Directly in DIR: the runs and salvage's directory, nothing else (the reference's
        // listRuns reads every DIR/*.json). No temp file is left anywhere.
        let top: BTreeSet<String> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(top, BTreeSet::from(["r-1.json".to_owned(), ".salvage".to_owned()]));
        let all = snapshot(dir);
        assert!(all.keys().all(|p| !p.to_string_lossy().ends_with(".salvage-tmp")), "{:?}", all.keys());
        let stats = ok(store.refresh().await);
        assert_eq!((stats.files, stats.problems), (1, 0), "the index sees one run file");
    }

    #[tokio::test]
    async fn refused_appends_and_puts_leave_the_files_untouched() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path();
        let store = open_file(dir).await;
        ok(store.put_execution(execution("exec-1", "running", "x"), Expected::Absent).await);
        ok(store.append_journal(&entry("exec-1", 1, json!({}))).await);
        let before = snapshot(dir);
        assert!(is_conflict(&store.append_journal(&entry("exec-1", 1, json!({ "again": true }))).await));
        assert!(is_conflict(&store.append_journal(&entry("exec-1", 3, json!({}))).await));
        assert!(is_conflict(&store.append_journal(&entry("exec-2", 2, json!({}))).await));
        assert!(is_conflict(&store.put_execution(execution("exec-1", "done", "y"), Expected::Absent).await));
        let stale = Expected::Revision(Revision(7));
        assert!(is_conflict(&store.put_execution(execution("exec-1", "done", "y"), stale).await));
        assert_eq!(snapshot(dir), before, "no file changed, none created");
        assert!(!journal_file(dir, "exec-2").exists());
    }

    #[tokio::test]
    async fn a_torn_last_line_is_ignored_and_overwritten_by_the_next_append() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path();
        let store = open_file(dir).await;
        let mut expected: Vec<JournalRecord> = (1..=3).map(|seq| entry("exec-1", seq, json!({ "n": seq }))).collect();
        for record in &expected {
            ok(store.append_journal(record).await);
        }
        let path = journal_file(dir, "exec-1");
        let complete = std::fs::read(&path).expect("journal");

        // A crash in the middle of appending entry 4.
        let mut torn = complete.clone();
        torn.extend_from_slice(br#"{"seq":4,"body":{"n":"#);
        std::fs::write(&path, &torn).expect("tear");
        assert_eq!(ok(store.journal("exec-1").await), expected, "the torn line is not an entry");
        // A reopened store (the runner after the crash) reads the same.
        assert_eq!(ok(open_file(dir).await.journal("exec-1").await), expected);
        // Entry 4 was never acknowledged: its seq is still the next one, and a refused append
        // does not touch the torn bytes either.
        assert!(is_conflict(&store.append_journal(&entry("exec-1", 5, json!({}))).await));
        assert_eq!(std::fs::read(&path).expect("journal"), torn);
        let fourth = entry("exec-1", 4, json!({ "n": 4, "retried": true }));
        ok(store.append_journal(&fourth).await);
        expected.push(fourth);
        assert_eq!(ok(store.journal("exec-1").await), expected);
        let text = std::fs::read_to_string(&path).expect("journal");
        assert_eq!(text.lines().count(), 4);
        assert!(text.ends_with("\"retried\":true}}\n") && !text.contains(r#"{"n":{"#), "torn bytes gone: {text}");

        // A line that is complete JSON but lost its newline was not acknowledged either.
        let mut unterminated = std::fs::read(&path).expect("journal");
        unterminated.extend_from_slice(br#"{"seq":5,"body":{"lost":true}}"#);
        std::fs::write(&path, &unterminated).expect("write");
        assert_eq!(ok(store.journal("exec-1").await), expected);
        let fifth = entry("exec-1", 5, json!({ "kept": true }));
        ok(store.append_journal(&fifth).await);
        expected.push(fifth);
        assert_eq!(ok(store.journal("exec-1").await), expected);

        // A crash during the very first append.
        let first_path = journal_file(dir, "exec-2");
        std::fs::write(&first_path, br#"{"se"#).expect("write");
        assert!(ok(store.journal("exec-2").await).is_empty());
        assert!(is_conflict(&store.append_journal(&entry("exec-2", 2, json!({}))).await));
        ok(store.append_journal(&entry("exec-2", 1, json!({ "first": true }))).await);
        assert_eq!(std::fs::read_to_string(&first_path).expect("journal"), "{\"seq\":1,\"body\":{\"first\":true}}\n");
    }

    #[tokio::test]
    async fn a_corrupt_journal_line_is_an_error_naming_file_and_line() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path();
        let store = open_file(dir).await;
        for seq in 1..=3 {
            ok(store.append_journal(&entry("exec-1", seq, json!({ "n": seq }))).await);
        }
        let path = journal_file(dir, "exec-1");
        let text = std::fs::read_to_string(&path).expect("journal");
        let lines: Vec<&str> = text.lines().collect();

        std::fs::write(&path, format!("{}\n{{\"seq\":2,\"body\":\n{}\n", lines[0], lines[2])).expect("write");
        let error = store.journal("exec-1").await.expect_err("corrupt");
        assert!(
            matches!(&error, StoreError::CorruptRecord { location, line: 2, .. } if location == &path.display().to_string()),
            "{error:?}"
        );
        assert!(error.to_string().starts_with(&format!("{}:2:", path.display())), "{error}");

        // The last complete line corrupt: the append says where, and writes nothing.
        let corrupt_last = format!("{}\n{}\nnot json\n", lines[0], lines[1]);
        std::fs::write(&path, &corrupt_last).expect("write");
        let error = store.append_journal(&entry("exec-1", 3, json!({}))).await.expect_err("corrupt");
        assert!(matches!(&error, StoreError::CorruptRecord { line: 3, .. }), "{error:?}");
        assert_eq!(std::fs::read_to_string(&path).expect("journal"), corrupt_last);

        // Entries out of sequence (edited by hand).
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).expect("write");
        let error = store.journal("exec-1").await.expect_err("misnumbered");
        assert!(matches!(&error, StoreError::CorruptRecord { line: 2, .. }), "{error:?}");
        assert!(error.to_string().contains("numbered 3"), "{error}");
    }

    #[tokio::test]
    async fn a_corrupt_or_misnamed_execution_file_is_an_error_naming_it() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path();
        let store = open_file(dir).await;
        ok(store.put_execution(execution("good", "running", "2026-03-01T00:00:00.000Z"), Expected::Absent).await);
        ok(store.put_execution(execution("other", "running", "2026-03-02T00:00:00.000Z"), Expected::Absent).await);
        let broken = ok(store.execution_path("broken"));
        std::fs::write(&broken, "{\n  \"id\": \"broken\",\n  oops\n}").expect("write");
        let error = store.get_execution("broken").await.expect_err("corrupt");
        assert!(error.to_string().starts_with(&format!("{}:3:", broken.display())), "{error}");
        let error = store.list_executions(None).await.expect_err("a listing does not hide an execution");
        assert!(error.to_string().contains(&broken.display().to_string()), "{error}");
        let error = store.put_execution(execution("broken", "running", "x"), Expected::Any).await.expect_err("x");
        assert!(matches!(error, StoreError::CorruptRecord { .. }), "{error:?}");
        std::fs::remove_file(&broken).expect("remove");

        // A copy under another name would serve the wrong execution.
        let copy = ok(store.execution_path("copy"));
        std::fs::copy(ok(store.execution_path("good")), &copy).expect("copy");
        let error = store.get_execution("copy").await.expect_err("misnamed");
        assert!(error.to_string().contains("\"good\"") && error.to_string().contains(&copy.display().to_string()));
        std::fs::remove_file(&copy).expect("remove");
        assert_eq!(ids(&ok(store.list_executions(None).await)), ["good", "other"]);
    }

    #[tokio::test]
    async fn an_unwritable_sidecar_keeps_runs_readable_and_fails_execution_writes_clearly() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path();
        let r = run("readable", Some("2026-01-01T00:00:00.000Z"), RunStatus::Failed);
        std::fs::write(dir.join("readable.json"), r.to_pretty_json()).expect("write");
        // A file where salvage's directory should be: as unwritable as a read-only mount,
        // which the tests cannot make when they run as root.
        std::fs::write(dir.join(".salvage"), "not a directory").expect("write");
        let store = open_file(dir).await;
        assert_eq!(ok(store.get("readable").await).map(|s| s.run), Some(r));
        assert_eq!(ok(store.list(&RunQuery::all()).await).items.len(), 1);
        assert_eq!(ok(store.get_execution("exec-1").await), None);
        assert!(ok(store.list_executions(None).await).is_empty());
        assert!(ok(store.journal("exec-1").await).is_empty());

        let sidecar = dir.join(".salvage").display().to_string();
        let put = store.put_execution(execution("exec-1", "running", "x"), Expected::Absent).await;
        assert!(matches!(&put, Err(StoreError::Io { location, .. }) if location == &sidecar), "{put:?}");
        let append = store.append_journal(&entry("exec-1", 1, json!({}))).await;
        assert!(matches!(&append, Err(StoreError::Io { location, .. }) if location == &sidecar), "{append:?}");
        let message = append.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.starts_with(&sidecar), "{message}");
    }

    /// Makes directories writable again when dropped, so that the temp dir can be removed.
    struct RestorePermissions(Vec<PathBuf>);

    impl Drop for RestorePermissions {
        fn drop(&mut self) {
            use std::os::unix::fs::PermissionsExt;
            for dir in &self.0 {
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
            }
        }
    }

    #[tokio::test]
    async fn a_read_only_directory_keeps_runs_and_executions_readable() {
        use std::os::unix::fs::PermissionsExt;
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path().join("store");
        let store = open_file(&dir).await;
        let r = run("readable", Some("2026-01-01T00:00:00.000Z"), RunStatus::Failed);
        ok(store.save(&r, Expected::Absent).await);
        let doc = execution("exec-1", "running", "x");
        ok(store.put_execution(doc.clone(), Expected::Absent).await);
        ok(store.append_journal(&entry("exec-1", 1, json!({}))).await);
        drop(store);
        let sidecar = dir.join(".salvage");
        let dirs = [dir.clone(), sidecar.clone(), sidecar.join("executions"), sidecar.join("journal")];
        let files = [sidecar.join("lock"), journal_file(&dir, "exec-1"), sidecar.join("executions/exec-1.json")];
        let _restore = RestorePermissions(dirs.to_vec());
        for path in &dirs {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        }
        for file in &files {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o444)).expect("chmod");
        }
        let probe = std::fs::OpenOptions::new().append(true).open(sidecar.join("lock"));
        if probe.is_ok() {
            eprintln!(
                "SKIPPED: read-only permissions do not apply to this user (root); see the .salvage-as-a-file test"
            );
            return;
        }
        let store = open_file(&dir).await;
        assert_eq!(ok(store.get("readable").await).map(|s| s.run), Some(r));
        assert_eq!(ok(store.list(&RunQuery::all()).await).items.len(), 1);
        assert_eq!(ok(store.get_execution("exec-1").await).map(|s| s.doc), Some(doc.clone()));
        assert_eq!(ok(store.journal("exec-1").await).len(), 1);
        let put = store.put_execution(doc.clone(), Expected::Any).await;
        let lock = sidecar.join("lock").display().to_string();
        assert!(matches!(&put, Err(StoreError::Io { location, .. }) if location == &lock), "{put:?}");
        let append = store.append_journal(&entry("exec-1", 2, json!({}))).await;
        assert!(matches!(&append, Err(StoreError::Io { location, .. }) if location == &lock), "{append:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite store

mod sqlite_store {
    use super::*;

    #[tokio::test]
    async fn a_corrupt_body_is_an_error_naming_the_row() {
        let temp = tempfile::tempdir().expect("temp");
        let path = temp.path().join("s.db");
        let store = ok(SqliteStore::open(&path).await);
        ok(store.put_execution(execution("exec-1", "running", "x"), Expected::Absent).await);
        ok(store.append_journal(&entry("exec-1", 1, json!({}))).await);
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute("UPDATE executions SET body = '{oops' WHERE id = 'exec-1'", []).expect("update");
        conn.execute("UPDATE journal SET body = '[1,' WHERE execution_id = 'exec-1'", []).expect("update");
        let error = store.get_execution("exec-1").await.expect_err("corrupt");
        assert!(
            matches!(&error, StoreError::CorruptRecord { location, .. } if location.ends_with("#executions/exec-1"))
        );
        assert!(store.list_executions(None).await.is_err());
        let error = store.journal("exec-1").await.expect_err("corrupt");
        assert!(error.to_string().contains("#journal/exec-1/1"), "{error}");
    }
}
