//! What only the `postgres://` store promises (its shared behaviour runs with the other
//! backends in `store_conformance.rs`, `execution_store.rs` and `conformance.rs`): versioned
//! migrations that two processes can run at once, the change sequence a follower reads without
//! ever stepping over a save, LISTEN/NOTIFY with a listener that reconnects and says so,
//! passwords never shown, one corrupt row never hiding the others.
//!
//! Every test uses a fresh schema of `$SALVAGE_TEST_POSTGRES` (see `common/postgres.rs`).

#[path = "common/postgres.rs"]
mod postgres;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use assert_cmd::Command;
use postgres::TestSchema;
use salvage::model::{Run, RunStatus};
use salvage::store::{
    ExecutionDoc, ExecutionStore, Expected, JournalRecord, ListenEvent, PostgresStore, PostgresUrl, Revision, RunQuery,
    RunStore, StateStore, StoreError, StoreSpec,
};
use serde_json::json;

/// Skips the test (loudly) when there is no server, fails it when one is required.
macro_rules! require_postgres {
    () => {
        if !postgres::available() {
            return;
        }
    };
}

fn ok<T>(result: Result<T, StoreError>) -> T {
    result.unwrap_or_else(|error| panic!("{error}"))
}

fn run(id: &str, created_at: Option<&str>, parent: Option<&str>, status: RunStatus) -> Run {
    let mut run = Run::new(id, created_at.unwrap_or("2026-01-01T00:00:00.000Z"));
    run.status = status;
    if let Some(parent) = parent {
        run.metadata.lineage.parent_run_id = Some(parent.to_owned());
        run.metadata.lineage.root_run_id = parent.to_owned();
    }
    run
}

async fn open(schema: &TestSchema) -> PostgresStore {
    ok(PostgresStore::open(&schema.postgres_url()).await)
}

/// The next listener event, or a panic after `within`.
async fn next_event(listener: &mut salvage::store::ChangeListener, within: Duration) -> ListenEvent {
    match tokio::time::timeout(within, listener.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the listener stopped"),
        Err(_) => panic!("no listener event within {within:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Migrations

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_are_recorded() {
    require_postgres!();
    let schema = TestSchema::create();
    let url = schema.postgres_url();
    let first = ok(PostgresStore::migrate(&url).await);
    let applied: Vec<(u32, &str)> = first.applied.iter().map(|m| (m.version, m.name.as_str())).collect();
    assert_eq!(applied, [(1, "runs"), (2, "executions"), (3, "state"), (4, "claims"), (5, "tree leaves")]);
    assert_eq!((first.from_version, first.to_version), (Some(0), Some(5)));
    assert_eq!(first.store, url.to_string());

    let again = ok(salvage::store::migrate(&schema.spec()).await);
    assert!(again.applied.is_empty(), "{again:?}");
    assert_eq!((again.from_version, again.to_version), (Some(5), Some(5)));
    // Opening migrates nothing more either.
    drop(open(&schema).await);
    let recorded = schema.query("SELECT version, name FROM schema_migrations ORDER BY version");
    let recorded: Vec<Vec<&str>> =
        recorded.iter().map(|row| row.iter().map(|c| c.as_deref().unwrap_or("NULL")).collect()).collect();
    assert_eq!(
        recorded,
        [vec!["1", "runs"], vec!["2", "executions"], vec!["3", "state"], vec!["4", "claims"], vec!["5", "tree leaves"]]
    );
    let tables = schema.query(&format!(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = '{}' ORDER BY table_name",
        schema.name
    ));
    let tables: Vec<&str> = tables.iter().filter_map(|row| row[0].as_deref()).collect();
    assert_eq!(
        tables,
        ["claims", "executions", "journal", "leadership", "replicas", "runs", "schema_migrations", "state"]
    );
    let sequences = schema.query(&format!(
        "SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = '{}' ORDER BY 1",
        schema.name
    ));
    let sequences: Vec<&str> = sequences.iter().filter_map(|row| row[0].as_deref()).collect();
    assert_eq!(sequences, ["claim_epochs", "run_changes"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_opening_a_fresh_database_at_once_migrate_it_once() {
    require_postgres!();
    let schema = TestSchema::create();
    let url = schema.postgres_url();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::open(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(ok(open.await.expect("task")));
    }
    let count = schema.query("SELECT count(*), count(DISTINCT version) FROM schema_migrations");
    assert_eq!(count, [vec![Some("5".to_owned()), Some("5".to_owned())]]);
    // Every instance works on the one schema.
    for (n, store) in stores.iter().enumerate() {
        ok(store.save(&run(&format!("r{n}"), None, None, RunStatus::Failed), Expected::Absent).await);
    }
    assert_eq!(ok(stores[0].list(&RunQuery::all()).await).items.len(), 4);
    // And migrating by hand while they run applies nothing.
    assert!(ok(PostgresStore::migrate(&url).await).applied.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_from_a_newer_salvage_is_refused() {
    require_postgres!();
    let schema = TestSchema::create();
    drop(open(&schema).await);
    schema.execute("INSERT INTO schema_migrations (version, name) VALUES (99, 'from the future')");
    let error = PostgresStore::open(&schema.postgres_url()).await.expect_err("newer schema");
    let message = error.to_string();
    assert!(message.contains("schema version 99") && message.contains(&schema.name), "{message}");
    let error = PostgresStore::migrate(&schema.postgres_url()).await.expect_err("newer schema");
    assert!(matches!(error, StoreError::Database { .. }), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_path_without_a_schema_is_an_error_naming_the_database() {
    require_postgres!();
    let base = postgres::postgres_url();
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = ok(PostgresUrl::parse(&format!("{base}{separator}options=-csearch_path%3Dsalvage_no_such_schema")));
    let error = PostgresStore::open(&url).await.expect_err("no schema");
    let message = error.to_string();
    assert!(message.contains("search_path") && message.starts_with(url.redacted()), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Revisions, the change sequence, saving loses nothing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_count_saves() {
    require_postgres!();
    let schema = TestSchema::create();
    let store = open(&schema).await;
    let r = run("counted", None, None, RunStatus::Running);
    let revisions = [
        ok(store.save(&r, Expected::Absent).await),
        ok(store.save(&r, Expected::Any).await),
        ok(store.save(&r, Expected::Revision(Revision(2))).await),
    ];
    assert_eq!(revisions, [Revision(1), Revision(2), Revision(3)], "identical saves still count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_is_the_run_as_serialised_key_order_and_unknown_keys_included() {
    require_postgres!();
    let schema = TestSchema::create();
    let store = open(&schema).await;
    let mut value = Run::new("ordered", "2026-01-01T00:00:00.000Z").to_value();
    let object = value.as_object_mut().expect("object");
    object.insert("zeta".into(), json!({"z": 1, "a": 2, "m": [3, {"y": null, "b": 1.5e300}]}));
    object.insert("alpha".into(), json!("unknown to salvage"));
    let original = Run::from_value(value).expect("run");
    ok(store.save(&original, Expected::Absent).await);
    let expected = serde_json::to_string(&original).expect("serialise");
    let stored = schema.query("SELECT body FROM runs WHERE id = 'ordered'");
    assert_eq!(stored, [vec![Some(expected.clone())]], "stored as text, byte for byte (jsonb would reorder)");
    let loaded = ok(store.get("ordered").await).expect("there").run;
    assert_eq!(serde_json::to_string(&loaded).expect("serialise"), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_since_follows_saves() {
    require_postgres!();
    let schema = TestSchema::create();
    let store = open(&schema).await;
    let runs = [
        run("root-b", Some("2026-01-01T00:00:02.000Z"), None, RunStatus::Failed),
        run("root-a", Some("2026-01-01T00:00:01.000Z"), None, RunStatus::Completed),
        run("child-a2", Some("2026-01-01T00:00:05.000Z"), Some("root-a"), RunStatus::Failed),
        run("child-a1", Some("2026-01-01T00:00:05.000Z"), Some("root-a"), RunStatus::Completed),
    ];
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
    assert_eq!(next[0].entry.revision, Revision(2));
    assert!(next[0].change_seq > cursor);
    // A run saved twice appears once, with its last change.
    let everything = ok(store.changes_since(0, 100).await);
    assert_eq!(everything.iter().filter(|c| c.entry.id == "root-b").count(), 1);
    assert_eq!(everything.len(), 4);
    assert_eq!(ok(store.changes_since(0, 2).await)[..], everything[..2]);
    // A conflicting save changes nothing a follower sees.
    assert!(store.save(&runs[3], Expected::Absent).await.is_err());
    assert_eq!(ok(store.changes_since(0, 100).await), everything);
}

/// Writers on two instances (two processes) save concurrently while a follower walks the change
/// sequence with a small page size. If a save could commit with a smaller change number than
/// one the follower already passed, the follower would never see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_the_change_sequence_misses_no_concurrent_save() {
    require_postgres!();
    const WRITERS: usize = 6;
    const SAVES: usize = 25;
    let schema = TestSchema::create();
    let stores = [Arc::new(open(&schema).await), Arc::new(open(&schema).await)];
    let follower = stores[0].clone();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follow = {
        let done = done.clone();
        tokio::spawn(async move {
            let (mut cursor, mut seen) = (0, BTreeSet::new());
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = ok(follower.changes_since(cursor, 5).await);
                for change in &page {
                    assert!(change.change_seq > cursor);
                    cursor = change.change_seq;
                    seen.insert(change.entry.id.clone());
                }
                if page.is_empty() {
                    if finished {
                        return seen;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = stores[writer % 2].clone();
            tokio::spawn(async move {
                for n in 0..SAVES {
                    let id = format!("w{writer}-{n:02}");
                    ok(store.save(&run(&id, None, None, RunStatus::Failed), Expected::Absent).await);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = follow.await.expect("follower");
    assert_eq!(seen.len(), WRITERS * SAVES, "the follower saw every save");
}

// ---------------------------------------------------------------------------------------------
// LISTEN / NOTIFY

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_is_announced_once_committed() {
    require_postgres!();
    let schema = TestSchema::create();
    let store = open(&schema).await;
    let other = open(&schema).await;
    let mut listener = ok(store.listen().await);
    assert_eq!(listener.channel(), format!("salvage_runs:{}", schema.name));
    assert_eq!(store.channel(), listener.channel());

    ok(store.save(&run("first", None, None, RunStatus::Failed), Expected::Absent).await);
    let ListenEvent::Changed(first) = next_event(&mut listener, Duration::from_secs(10)).await else {
        panic!("expected a change")
    };
    // The notification is sent at commit: the change is readable when it arrives.
    let changes = ok(store.changes_since(0, 10).await);
    assert_eq!(changes.iter().map(|c| c.change_seq).collect::<Vec<_>>(), [first]);

    // A batch is one notification, with its last change number; another instance's saves too.
    let batch = [run("b1", None, None, RunStatus::Failed), run("b2", None, None, RunStatus::Paused)];
    ok(other.save_all(&batch, Expected::Absent).await);
    let ListenEvent::Changed(last) = next_event(&mut listener, Duration::from_secs(10)).await else {
        panic!("expected a change")
    };
    let changes = ok(store.changes_since(first, 10).await);
    assert_eq!(changes.iter().map(|c| c.entry.id.as_str()).collect::<Vec<_>>(), ["b1", "b2"]);
    assert_eq!(changes[1].change_seq, last);

    // A refused save announces nothing: the next event is the next real save.
    assert!(store.save(&batch[0], Expected::Absent).await.is_err());
    ok(store.save(&run("after", None, None, RunStatus::Failed), Expected::Absent).await);
    let ListenEvent::Changed(after) = next_event(&mut listener, Duration::from_secs(10)).await else {
        panic!("expected a change")
    };
    assert_eq!(ok(store.changes_since(last, 10).await).iter().map(|c| c.change_seq).collect::<Vec<_>>(), [after]);
    assert_eq!(listener.try_next(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_listener_reconnects_and_the_cursor_catches_up() {
    require_postgres!();
    let schema = TestSchema::create();
    let store = open(&schema).await;
    let mut listener = ok(store.listen().await);
    ok(store.save(&run("before", None, None, RunStatus::Failed), Expected::Absent).await);
    let ListenEvent::Changed(cursor) = next_event(&mut listener, Duration::from_secs(10)).await else {
        panic!("expected a change")
    };

    // An administrator (or a failover) ends the listening session.
    let terminated = schema.query(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'LISTEN \"{}\"'",
        listener.channel()
    ));
    assert_eq!(terminated, [vec![Some("t".to_owned())]], "one listening session");
    let lost = next_event(&mut listener, Duration::from_secs(10)).await;
    assert!(matches!(&lost, ListenEvent::Lost { error } if !error.is_empty()), "{lost:?}");
    // Saved while nobody listens (the listener waits before reconnecting).
    ok(store.save(&run("during", None, None, RunStatus::Failed), Expected::Absent).await);

    let mut announced = Vec::new();
    loop {
        match next_event(&mut listener, Duration::from_secs(10)).await {
            ListenEvent::Reconnected => break,
            ListenEvent::Changed(seq) => announced.push(seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(announced.is_empty(), "nothing is announced between Lost and Reconnected: {announced:?}");
    // What the caller does on Reconnected: catch up from its cursor.
    let caught_up = ok(store.changes_since(cursor, 100).await);
    assert_eq!(caught_up.iter().map(|c| c.entry.id.as_str()).collect::<Vec<_>>(), ["during"]);
    let cursor = caught_up[0].change_seq;
    // And the new connection announces what comes next.
    ok(store.save(&run("after", None, None, RunStatus::Failed), Expected::Absent).await);
    let ListenEvent::Changed(after) = next_event(&mut listener, Duration::from_secs(10)).await else {
        panic!("expected a change")
    };
    assert_eq!(ok(store.changes_since(cursor, 100).await).iter().map(|c| c.change_seq).collect::<Vec<_>>(), [after]);

    // Dropping the listener closes its session.
    let channel = listener.channel().to_owned();
    drop(listener);
    let mut remaining = Vec::new();
    for _ in 0..100 {
        remaining = schema.query(&format!("SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN \"{channel}\"'"));
        if remaining.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(remaining.is_empty(), "the listening session is closed: {remaining:?}");
}

// ---------------------------------------------------------------------------------------------
// Passwords, errors, corrupt rows

const SECRET: &str = "hunter2-very-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_never_appears_in_displays_or_errors() {
    // Without a server: a refused connection.
    let spec = ok(StoreSpec::parse(&format!("postgres://salvage:{SECRET}@127.0.0.1:1/salvage?password={SECRET}")));
    for shown in [spec.to_string(), format!("{spec:?}")] {
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("postgres://salvage:***@127.0.0.1:1/salvage?password=***"), "{shown}");
    }
    let error = salvage::store::open(&spec).await.expect_err("nothing listens on port 1");
    let text = format!("{error} / {error:?}");
    assert!(matches!(error, StoreError::Database { .. }), "{text}");
    assert!(!text.contains(SECRET) && text.contains("postgres://salvage:***@127.0.0.1:1/salvage"), "{text}");
    for bad in [format!("postgresql://u:{SECRET}@db:port/x"), format!("pgsql://u:{SECRET}@db/x")] {
        let error = StoreSpec::parse(&bad).expect_err("bad spec");
        assert!(!format!("{error} {error:?}").contains(SECRET), "{error:?}");
    }
    // The binary says the same on stderr.
    let output = Command::cargo_bin("salvage")
        .expect("binary")
        .args(["runs", "--store", &format!("postgres://salvage:{SECRET}@127.0.0.1:1/salvage")])
        .env("NO_COLOR", "1")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "a store error: {stderr}");
    assert!(!stderr.contains(SECRET) && stderr.contains("salvage:***@127.0.0.1:1"), "{stderr}");

    // With a server (trust authentication ignores the password): the store and its errors.
    require_postgres!();
    let schema = TestSchema::create();
    let (scheme, rest) = schema.url.split_once("://").expect("scheme");
    let with_password = match rest.split_once('@') {
        Some((user, host)) => format!("{scheme}://{}:{SECRET}@{host}", user.split(':').next().unwrap_or(user)),
        None => format!("{scheme}://root:{SECRET}@{rest}"),
    };
    let url = ok(PostgresUrl::parse(&with_password));
    let store = ok(PostgresStore::open(&url).await);
    ok(store.save(&run("r", None, None, RunStatus::Failed), Expected::Absent).await);
    schema.execute("UPDATE runs SET body = 'not json' WHERE id = 'r'");
    let error = store.get("r").await.expect_err("corrupt");
    for shown in [store.spec(), format!("{store:?}"), error.to_string(), format!("{error:?}")] {
        assert!(!shown.contains(SECRET), "{shown}");
    }
    assert!(error.to_string().contains(":***@"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_is_reported_with_its_table_and_id_and_hides_nothing_else() {
    require_postgres!();
    let schema = TestSchema::create();
    let store = open(&schema).await;
    let runs = [
        run("root-a", Some("2026-01-01T00:00:01.000Z"), None, RunStatus::Failed),
        run("child-a0", Some("2026-01-01T00:00:02.000Z"), Some("root-a"), RunStatus::Failed),
        run("child-a1", Some("2026-01-01T00:00:03.000Z"), Some("root-a"), RunStatus::Failed),
        run("child-a2", Some("2026-01-01T00:00:04.000Z"), Some("root-a"), RunStatus::Failed),
    ];
    ok(store.save_all(&runs, Expected::Absent).await);
    // Someone edits the database by hand during an incident.
    schema.execute(
        "UPDATE runs SET body = E'{\\n  \"id\": \"child-a1\",\\n  oops\\n}' WHERE id = 'child-a1';
         UPDATE runs SET body = '{\"id\": \"child-a2\", \"steps\": 7}' WHERE id = 'child-a2';
         UPDATE runs SET revision = -4 WHERE id = 'child-a0';",
    );
    let location = format!("{}#runs/child-a1", store.spec());
    match store.get("child-a1").await {
        Err(error @ StoreError::CorruptRecord { .. }) => {
            assert!(error.to_string().starts_with(&format!("{location}:3:3: ")), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(store.get("child-a2").await, Err(StoreError::NotARun { .. })));
    assert!(ok(store.get("root-a").await).is_some());
    let many = ok(store.get_many(&["root-a".into(), "child-a1".into(), "child-a2".into(), "child-a0".into()]).await);
    assert_eq!(many.items.iter().map(|s| s.run.id.as_str()).collect::<Vec<_>>(), ["root-a"]);
    let problems: Vec<_> = many.problems.iter().map(|p| p.run_id.clone().unwrap_or_default()).collect();
    assert_eq!(problems, ["child-a1", "child-a2", "child-a0"]);
    // The index still lists the runs with readable columns, and names the one without.
    let children = ok(store.list(&RunQuery::children_of("root-a")).await);
    assert_eq!(children.items.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["child-a1", "child-a2"]);
    assert_eq!(children.problems.len(), 1);
    let problem = &children.problems[0];
    assert_eq!(problem.run_id.as_deref(), Some("child-a0"));
    assert!(problem.error.to_string().contains("#runs/child-a0") && problem.error.to_string().contains("negative"));
    let tree = ok(store.subtree("root-a").await);
    assert_eq!(tree.items.len(), 3);
    assert_eq!(tree.problems.len(), 1);
    // Overwriting a corrupt record repairs it.
    ok(store.save(&runs[2], Expected::Any).await);
    assert!(ok(store.get("child-a1").await).is_some());

    // Executions, journals and state documents name their rows too.
    let doc = ExecutionDoc {
        id: "exec-1".into(),
        run_id: "root-a".into(),
        plan_id: "plan".into(),
        status: "running".into(),
        created_at: "2026-03-01T00:00:00.000Z".into(),
        updated_at: "2026-03-01T00:00:00.000Z".into(),
        body: json!({}),
    };
    ok(store.put_execution(doc.clone(), Expected::Absent).await);
    ok(store.append_journal(&JournalRecord { execution_id: "exec-1".into(), seq: 1, body: json!({}) }).await);
    ok(store.put_state("serve/status", &json!({}), Expected::Absent).await);
    schema.execute(
        "UPDATE executions SET body = '{oops' WHERE id = 'exec-1';
         UPDATE journal SET body = '[1,' WHERE execution_id = 'exec-1';
         UPDATE state SET body = 'nope' WHERE key = 'serve/status';",
    );
    let error = store.get_execution("exec-1").await.expect_err("corrupt");
    assert!(
        matches!(&error, StoreError::CorruptRecord { location, .. } if location.ends_with("#executions/exec-1")),
        "{error:?}"
    );
    assert!(store.list_executions(None).await.is_err());
    let error = store.journal("exec-1").await.expect_err("corrupt");
    assert!(error.to_string().contains("#journal/exec-1/1"), "{error}");
    let error = store.get_state("serve/status").await.expect_err("corrupt");
    assert!(error.to_string().contains("#state/serve/status"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// `salvage migrate`

#[test]
fn salvage_migrate_lists_what_it_applied_once() {
    require_postgres!();
    let schema = TestSchema::create();
    let salvage = || {
        let mut command = Command::cargo_bin("salvage").expect("binary");
        command.env("SALVAGE_STORE", &schema.url).env("NO_COLOR", "1").env_remove("SALVAGE_CONFIG");
        command
    };
    let first = salvage().arg("migrate").output().expect("run");
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..5],
        [
            "applied   1  runs",
            "applied   2  executions",
            "applied   3  state",
            "applied   4  claims",
            "applied   5  tree leaves"
        ],
        "{stdout}"
    );
    assert!(lines[5].ends_with("schema version 0 -> 5") && lines[5].contains(&schema.name), "{stdout}");

    let again = salvage().args(["migrate", "--json"]).output().expect("run");
    assert!(again.status.success());
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(report["applied"], json!([]));
    assert_eq!((report["fromVersion"].clone(), report["toVersion"].clone()), (json!(5), json!(5)));
}

#[test]
fn the_tree_leaves_migration_fills_the_runs_already_stored_and_the_forest_stays_the_same() {
    require_postgres!();
    let schema = TestSchema::create();
    let repo = env!("CARGO_MANIFEST_DIR");
    let salvage = |args: &[&str]| {
        let mut command = Command::cargo_bin("salvage").expect("binary");
        command.env("SALVAGE_STORE", &schema.url).env("NO_COLOR", "1").env_remove("SALVAGE_CONFIG");
        command.args(args).output().expect("run")
    };
    assert!(salvage(&["import", &format!("{repo}/examples/runs")]).status.success());
    let forest = salvage(&["tree", "--json"]);
    assert!(forest.status.success(), "{}", String::from_utf8_lossy(&forest.stderr));
    // Back to schema version 4, as the previous salvage left it: no leaves.
    schema.execute("ALTER TABLE runs DROP COLUMN tree_leaf; DELETE FROM schema_migrations WHERE version = 5;");
    let migrated = salvage(&["migrate"]);
    assert!(String::from_utf8_lossy(&migrated.stdout).starts_with("applied   5  tree leaves\n"));
    let missing = schema.query("SELECT count(*) FROM runs WHERE tree_leaf IS NULL");
    assert_eq!(missing, vec![vec![Some("0".to_owned())]], "every run got its leaf");
    let stored = schema.query("SELECT count(*) FROM runs");
    assert_ne!(stored, vec![vec![Some("0".to_owned())]]);
    let again = salvage(&["tree", "--json"]);
    assert_eq!(String::from_utf8_lossy(&again.stdout), String::from_utf8_lossy(&forest.stdout));
}

// ---------------------------------------------------------------------------------------------
// Read commands on a shared database

/// Every table's content, as one digest per table: what "nothing was written" compares.
fn contents(schema: &TestSchema) -> Vec<Vec<Option<String>>> {
    let tables = schema.query(&format!(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = '{}' ORDER BY table_name",
        schema.name
    ));
    tables
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .map(|table| {
            let mut digest = schema.query(&format!(
                "SELECT '{table}', count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {table} t"
            ));
            digest.pop().unwrap_or_default()
        })
        .collect()
}

#[test]
fn read_commands_neither_migrate_nor_write_a_postgres_store() {
    require_postgres!();
    let schema = TestSchema::create();
    let dir = tempfile::tempdir().expect("temp");
    let repo = env!("CARGO_MANIFEST_DIR");
    std::fs::write(
        dir.path().join("salvage.yaml"),
        format!("playbooks: {repo}/playbooks\npolicies: {repo}/policies\n"),
    )
    .expect("config");
    let salvage = |args: &[&str]| {
        Command::cargo_bin("salvage")
            .expect("binary")
            .current_dir(dir.path())
            .env("SALVAGE_STORE", &schema.url)
            .env("NO_COLOR", "1")
            .env_remove("SALVAGE_CONFIG")
            .args(args)
            .output()
            .expect("run")
    };
    let no_tables = || contents(&schema).is_empty();

    // A database nobody migrated: a read command says so and creates nothing.
    assert!(no_tables());
    let output = salvage(&["runs"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("no salvage store") && stderr.contains("salvage migrate"), "{stderr}");
    assert!(no_tables(), "a read command created tables");

    // A schema one migration behind (a newer salvage reading an older database): refused, and
    // still one behind.
    assert!(salvage(&["migrate"]).status.success());
    let run = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";
    assert!(salvage(&["import", &format!("{repo}/examples/runs")]).status.success());
    // (The record of the last migration is taken away; its tables stay.)
    schema.execute("DELETE FROM schema_migrations WHERE version = 5");
    let behind = contents(&schema);
    let output = salvage(&["report", run]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("schema version 4") && stderr.contains("reads schema version 5"), "{stderr}");
    assert_eq!(contents(&schema), behind, "a read command migrated");

    // Current: every read command works and writes nothing.
    schema.execute("INSERT INTO schema_migrations (version, name) VALUES (5, 'tree leaves')");
    let before = contents(&schema);
    for args in [
        &["runs"][..],
        &["tree", "--json"],
        &["inspect", run],
        &["report", run],
        &["plan", run],
        &["apply", run, "--dry-run", "--as", "sre"],
        &["simulate", "--accept"],
        &["executions"],
        &["approvals"],
    ] {
        let output = salvage(args);
        assert!(output.status.success(), "salvage {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    assert_eq!(contents(&schema), before, "a read command wrote to the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_a_write_through_a_store_opened_for_reading() {
    require_postgres!();
    let schema = TestSchema::create();
    let writer = open(&schema).await;
    ok(writer.save(&run("r-1", None, None, RunStatus::Failed), Expected::Absent).await);
    let options = salvage::store::PostgresOptions { read_only: true, ..Default::default() };
    let reader = ok(PostgresStore::open_with(&schema.postgres_url(), options).await);
    assert_eq!(ok(reader.get("r-1").await).map(|stored| stored.revision), Some(Revision(1)));
    // Not salvage's own check: the session is read-only, so PostgreSQL refuses the statement.
    for result in [
        reader.save(&run("r-2", None, None, RunStatus::Failed), Expected::Absent).await.map(|_| ()),
        reader.put_state("k", &json!({"a": 1}), Expected::Any).await.map(|_| ()),
    ] {
        assert!(matches!(result, Err(StoreError::ReadOnly { .. })), "{result:?}");
    }
    assert_eq!(ok(writer.get("r-2").await).map(|s| s.revision), None);
}
