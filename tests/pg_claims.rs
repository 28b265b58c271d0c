//! Claims, leases and fencing on the `postgres://` store, against a real server: several store
//! instances (several pools, as several replicas would have) race over the same rows of a fresh
//! schema of `$SALVAGE_TEST_POSTGRES` (see `common/postgres.rs`).
//!
//! Lease times are short (a few hundred milliseconds) and every "has it expired?" is asked of
//! the database's clock, like the store does. Where a write must be caught in the middle of its
//! transaction, the test holds the advisory lock run saves take after their fence check, so the
//! save is parked exactly there.

#[path = "common/postgres.rs"]
mod postgres;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::TestSchema;
use salvage::model::{Run, RunStatus};
use salvage::store::{
    Claim, ExecutionDoc, ExecutionStore, Expected, Fence, FencedStore, Finish, JournalRecord, PostgresOptions,
    PostgresStore, ReplicaInfo, Revision, RunStore, StateStore, Store, StoreError,
};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Skips the test (loudly) when there is no server, fails it when one is required.
macro_rules! require_postgres {
    () => {
        if !postgres::available() {
            return;
        }
    };
}

const KIND: &str = "incident";
const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(60);

fn ok<T>(result: Result<T, StoreError>) -> T {
    result.unwrap_or_else(|error| panic!("{error}"))
}

async fn open(schema: &TestSchema) -> PostgresStore {
    ok(PostgresStore::open(&schema.postgres_url()).await)
}

fn run(id: &str) -> Run {
    let mut run = Run::new(id, "2026-01-01T00:00:00.000Z");
    run.status = RunStatus::Failed;
    run
}

fn execution(id: &str, status: &str) -> ExecutionDoc {
    ExecutionDoc {
        id: id.into(),
        run_id: "incident-run".into(),
        plan_id: "plan".into(),
        status: status.into(),
        created_at: "2026-03-01T00:00:00.000Z".into(),
        updated_at: "2026-03-01T00:00:00.000Z".into(),
        body: json!({"status": status}),
    }
}

fn entry(execution_id: &str, seq: u64) -> JournalRecord {
    JournalRecord { execution_id: execution_id.into(), seq, body: json!({"seq": seq}) }
}

fn time(text: &str) -> OffsetDateTime {
    OffsetDateTime::parse(text, &Rfc3339).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Sleeps until the database's clock is past `at` (a lease end, a heartbeat + TTL).
async fn until_db_passes(store: &PostgresStore, at: &str) {
    let at = time(at);
    for _ in 0..200 {
        if ok(store.db_now().await) > at {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the database clock never passed {at}");
}

fn assert_lease_lost<T: std::fmt::Debug>(result: Result<T, StoreError>, fence: &Fence, what: &str) {
    match result {
        Err(StoreError::LeaseLost { key, epoch, holder }) => {
            assert_eq!((key.as_str(), epoch, holder.as_str()), (fence.key.as_str(), fence.epoch, fence.holder.as_str()))
        }
        other => panic!("{what}: expected LeaseLost, got {other:?}"),
    }
}

/// A connection of the test's own (an operator's psql, another process), driven on this runtime.
async fn raw(schema: &TestSchema) -> tokio_postgres::Client {
    let config: tokio_postgres::Config = schema.url.parse().unwrap_or_else(|e| panic!("{e}"));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(connection);
    client
}

/// The backends waiting for the run-save advisory lock of `store`'s schema.
async fn waiting_for_run_saves(observer: &tokio_postgres::Client, store: &PostgresStore) -> Vec<i32> {
    let (class, key) = store.run_save_lock();
    // pg_locks shows the two int4 keys as oids (unsigned).
    let sql = format!(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
         AND classid = {} AND objid = {} AND objsubid = 2",
        class as u32, key as u32
    );
    let rows = observer.query(&sql, &[]).await.unwrap_or_else(|e| panic!("{e}"));
    rows.iter().map(|row| row.get(0)).collect()
}

/// Waits until some backend waits for the run-save lock; returns its pid.
async fn parked_save(observer: &tokio_postgres::Client, store: &PostgresStore) -> i32 {
    for _ in 0..400 {
        if let Some(pid) = waiting_for_run_saves(observer, store).await.first() {
            return *pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no save ever waited for the run-save lock");
}

/// Holds the schema's run-save lock in an open transaction until `release` is called, so a save
/// (fenced or not) parks after its fence check.
async fn hold_run_saves<'c>(
    holder: &'c mut tokio_postgres::Client,
    store: &PostgresStore,
) -> tokio_postgres::Transaction<'c> {
    let (class, key) = store.run_save_lock();
    let tx = holder.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&class, &key]).await.unwrap_or_else(|e| panic!("{e}"));
    tx
}

fn is_pending<T>(task: &tokio::task::JoinHandle<T>) -> bool {
    !task.is_finished()
}

// ---------------------------------------------------------------------------------------------
// Offering and claiming

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claimers_take_each_offered_key_exactly_once() {
    require_postgres!();
    const KEYS: usize = 300;
    const CLAIMERS: usize = 3;
    let schema = TestSchema::create();
    let offerer = open(&schema).await;
    for n in 0..KEYS {
        assert!(ok(offerer.offer(&format!("incident/{n:03}"), KIND, &json!({"n": n}), Duration::ZERO).await));
    }
    // Offered again (a second feed saw the same run): still one claim per key.
    for n in 0..KEYS {
        assert!(!ok(offerer.offer(&format!("incident/{n:03}"), KIND, &json!({"n": n}), Duration::ZERO).await));
    }
    let mut tasks = Vec::new();
    for claimer in 0..CLAIMERS {
        let store = open(&schema).await; // its own pool: another replica
        tasks.push(tokio::spawn(async move {
            let holder = format!("replica-{claimer}");
            let mut taken: Vec<Claim> = Vec::new();
            let mut empty_rounds = 0;
            while empty_rounds < 3 {
                let claims = ok(store.claim(&holder, LONG, 7, &[KIND]).await);
                if claims.is_empty() {
                    empty_rounds += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                empty_rounds = 0;
                for claim in claims {
                    assert_eq!((claim.fence.holder.as_str(), claim.attempts), (holder.as_str(), 1));
                    taken.push(claim);
                }
            }
            taken
        }));
    }
    let mut by_key: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    let mut per_claimer = Vec::new();
    for task in tasks {
        let taken = task.await.expect("claimer");
        per_claimer.push(taken.len());
        for claim in taken {
            let n = claim.payload["n"].as_u64().expect("payload");
            assert_eq!(claim.key, format!("incident/{n:03}"), "the payload travels with its key");
            by_key.entry(claim.key.clone()).or_default().push((claim.fence.holder.clone(), claim.epoch));
        }
    }
    assert_eq!(by_key.len(), KEYS, "every key was claimed");
    let twice: Vec<_> = by_key.iter().filter(|(_, holders)| holders.len() > 1).collect();
    assert!(twice.is_empty(), "keys claimed more than once: {twice:?}");
    let epochs: BTreeSet<i64> = by_key.values().map(|holders| holders[0].1).collect();
    assert_eq!(epochs.len(), KEYS, "epochs never repeat, across keys too");
    assert_eq!(per_claimer.iter().sum::<usize>(), KEYS, "{per_claimer:?}");
    // Claimed keys are nobody else's while their lease runs.
    assert!(ok(offerer.claim("late", LONG, 100, &[KIND]).await).is_empty());
    let stored = schema.query("SELECT count(*) FROM claims WHERE state = 'claimed' AND attempts = 1");
    assert_eq!(stored, [vec![Some(KEYS.to_string())]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_are_deduplicated_delayed_filtered_by_kind_and_re_armed_when_done() {
    require_postgres!();
    let schema = TestSchema::create();
    let store = open(&schema).await;
    assert!(ok(store.offer("incident/a", KIND, &json!({"v": 1}), Duration::ZERO).await));
    assert!(!ok(store.offer("incident/a", KIND, &json!({"v": 2}), Duration::ZERO).await), "ready: left alone");
    assert!(ok(store.offer("execution/x", "execution", &json!({}), Duration::ZERO).await));
    assert!(ok(store.offer("incident/later", KIND, &json!({}), Duration::from_secs(3600)).await));

    // Only the kinds asked for, only what is due; the first payload stands.
    let claims = ok(store.claim("r1", LONG, 10, &[KIND]).await);
    assert_eq!(claims.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), ["incident/a"]);
    assert_eq!(claims[0].payload, json!({"v": 1}));
    assert!(!ok(store.offer("incident/a", KIND, &json!({"v": 3}), Duration::ZERO).await), "claimed: left alone");
    // No kinds = every kind.
    let rest = ok(store.claim("r1", LONG, 10, &[]).await);
    assert_eq!(rest.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), ["execution/x"]);
    assert!(ok(store.claim("r1", LONG, 10, &[]).await).is_empty(), "incident/later is not due");

    ok(store.finish(&claims[0].fence, Finish::Done).await);
    let done = ok(store.claim_row("incident/a").await).expect("kept until pruned");
    assert_eq!((done.state.as_str(), done.lease_expires_at.as_deref()), ("done", None));
    // Done work offered again is new work: re-armed with the new payload, attempts from 0.
    assert!(ok(store.offer("incident/a", KIND, &json!({"v": 4}), Duration::ZERO).await));
    let again = ok(store.claim("r2", LONG, 10, &[KIND]).await);
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].payload.clone(), again[0].attempts), (json!({"v": 4}), 1));
    assert!(again[0].epoch > claims[0].epoch, "the epoch moves on, never back");
    assert_eq!(ok(store.claim("r2", LONG, 0, &[]).await), Vec::new());

    // A payload someone broke by hand: the key stays claimed (back after its TTL, for an
    // operator to repair); the others are served.
    ok(store.offer("incident/broken", KIND, &json!({}), Duration::ZERO).await);
    ok(store.offer("incident/fine", KIND, &json!({"fine": true}), Duration::ZERO).await);
    schema.execute("UPDATE claims SET payload = '{oops' WHERE key = 'incident/broken'");
    let served = ok(store.claim("r3", LONG, 10, &[KIND]).await);
    assert_eq!(served.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), ["incident/fine"]);
    let row = schema.query("SELECT state, holder FROM claims WHERE key = 'incident/broken'");
    assert_eq!(row, [vec![Some("claimed".to_owned()), Some("r3".to_owned())]]);
    let error = store.claim_row("incident/broken").await.expect_err("corrupt");
    assert!(
        matches!(&error, StoreError::CorruptRecord { location, .. } if location.ends_with("#claims/incident/broken"))
    );
    for bad in ["", "nul\0key"] {
        assert!(matches!(
            store.offer(bad, KIND, &json!({}), Duration::ZERO).await,
            Err(StoreError::InvalidRunId { .. })
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_again_returns_the_key_after_its_delay_with_its_attempts() {
    require_postgres!();
    let schema = TestSchema::create();
    let store = open(&schema).await;
    ok(store.offer("incident/retry", KIND, &json!({}), Duration::ZERO).await);
    let first = ok(store.claim("r1", LONG, 1, &[KIND]).await).pop().expect("claimed");
    ok(store.finish(&first.fence, Finish::Again { after: SHORT }).await);
    let row = ok(store.claim_row("incident/retry").await).expect("row");
    assert_eq!(row.state, "ready");
    assert!(ok(store.claim("r2", LONG, 1, &[KIND]).await).is_empty(), "not before its time");
    // The fence of a finished claim is spent.
    assert_lease_lost(store.finish(&first.fence, Finish::Done).await, &first.fence, "finish twice");
    until_db_passes(&store, &row.due_at).await;
    let second = ok(store.claim("r2", LONG, 1, &[KIND]).await).pop().expect("due again");
    assert_eq!((second.attempts, second.fence.holder.as_str()), (2, "r2"));
    assert!(second.epoch > first.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_takes_new_ready_done_and_expired_keys_keeps_its_own_and_waits_its_turn() {
    require_postgres!();
    let schema = TestSchema::create();
    let a = open(&schema).await;
    let b = open(&schema).await;
    // New key: inserted claimed.
    let first = ok(a.acquire("execution/e1", "execution", &json!({"p": 1}), "a", SHORT).await).expect("new");
    assert_eq!((first.attempts, first.payload.clone()), (1, json!({"p": 1})));
    // Mine, unexpired: the same epoch, the lease extended.
    let mine = ok(a.acquire("execution/e1", "execution", &json!({"p": 2}), "a", LONG).await).expect("mine");
    assert_eq!((mine.epoch, mine.attempts, mine.payload.clone()), (first.epoch, 1, json!({"p": 1})));
    assert!(time(&mine.lease_expires_at) > time(&first.lease_expires_at));
    // Someone else's, unexpired: not taken.
    assert_eq!(ok(b.acquire("execution/e1", "execution", &json!({}), "b", LONG).await), None);
    assert_eq!(ok(b.claim("b", LONG, 10, &[]).await), Vec::new());

    // Expired: taken over with a new epoch; a ready key (due or not) and a done key too.
    let short = ok(a.acquire("execution/e2", "execution", &json!({}), "a", SHORT).await).expect("new");
    until_db_passes(&a, &short.lease_expires_at).await;
    let taken = ok(b.acquire("execution/e2", "execution", &json!({}), "b", LONG).await).expect("expired");
    assert!(taken.epoch > short.epoch);
    assert_eq!(taken.attempts, 2);
    ok(a.offer("execution/e3", "execution", &json!({"offered": true}), Duration::from_secs(3600)).await);
    let ready = ok(b.acquire("execution/e3", "execution", &json!({"offered": false}), "b", LONG).await).expect("ready");
    assert_eq!(ready.payload, json!({"offered": true}), "an offered key keeps what it was offered with");
    ok(b.finish(&ready.fence, Finish::Done).await);
    let reopened = ok(a.acquire("execution/e3", "execution", &json!({"new": 1}), "a", LONG).await).expect("done");
    assert_eq!((reopened.payload.clone(), reopened.attempts), (json!({"new": 1}), 1));
    assert!(reopened.epoch > ready.epoch);
}

// ---------------------------------------------------------------------------------------------
// Rescue and fencing

/// A replica claims an incident, writes under its lease, then stalls past the TTL. Another
/// replica's ordinary claim rescues the work with a newer epoch; from then on every write of
/// the stalled replica is refused and writes nothing, and the new holder's writes go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_claim_is_rescued_and_every_write_of_the_old_holder_is_refused() {
    require_postgres!();
    let schema = TestSchema::create();
    let a = open(&schema).await;
    let b = open(&schema).await;
    ok(a.offer("incident/r1", KIND, &json!({"run": "r1"}), Duration::ZERO).await);
    let old = ok(a.claim("replica-a", SHORT, 10, &[KIND]).await).pop().expect("claimed");
    assert!(old.trusted_until <= Instant::now() + SHORT, "the local trust window is within the TTL");
    let fa = a.fenced(old.fence.clone());
    let store: Arc<dyn Store> = Arc::new(fa.clone()); // what the runner would be given
    ok(store.save(&run("before"), Expected::Absent).await);
    ok(store.put_execution(execution("exec-1", "running"), Expected::Absent).await);
    ok(store.append_journal(&entry("exec-1", 1)).await);
    ok(store.put_state("serve/incident/r1", &json!({"state": "applying"}), Expected::Absent).await);
    assert_eq!(a.fenced_rejections(), 0);

    // Not before the lease ends (database clock), then rescued by the same claim query.
    assert!(ok(b.claim("replica-b", LONG, 10, &[KIND]).await).is_empty());
    until_db_passes(&a, &old.lease_expires_at).await;
    let new = ok(b.claim("replica-b", LONG, 10, &[KIND]).await).pop().expect("rescued");
    assert_eq!((new.key.as_str(), new.attempts, new.payload.clone()), ("incident/r1", 2, json!({"run": "r1"})));
    assert!(new.epoch > old.epoch, "{} > {}", new.epoch, old.epoch);

    let journal_before = ok(a.journal("exec-1").await);
    let execution_before = ok(a.get_execution("exec-1").await).expect("execution");
    let state_before = ok(a.get_state("serve/incident/r1").await).expect("state");
    let claim_before = ok(a.claim_row("incident/r1").await).expect("claim");
    let fence = &old.fence;
    assert_lease_lost(store.save(&run("late"), Expected::Absent).await, fence, "save");
    assert_lease_lost(store.save_all(&[run("late-1"), run("late-2")], Expected::Any).await, fence, "save_all");
    assert_lease_lost(
        store.put_execution(execution("exec-1", "resolved"), Expected::Revision(execution_before.revision)).await,
        fence,
        "put_execution",
    );
    assert_lease_lost(store.append_journal(&entry("exec-1", 2)).await, fence, "append_journal");
    assert_lease_lost(
        store.put_state("serve/incident/r1", &json!({"state": "applied"}), Expected::Any).await,
        fence,
        "put_state",
    );
    assert_lease_lost(fa.finish(Finish::Done).await, fence, "finish");
    assert_eq!(a.fenced_rejections(), 6, "each refused write is counted");
    assert_eq!(fa.fenced_rejections(), 6);
    assert_eq!(b.fenced_rejections(), 0, "per store instance");

    // Nothing of it was written.
    for id in ["late", "late-1", "late-2"] {
        assert!(ok(a.get(id).await).is_none(), "{id}");
    }
    assert_eq!(ok(a.journal("exec-1").await), journal_before);
    assert_eq!(ok(a.get_execution("exec-1").await), Some(execution_before.clone()));
    assert_eq!(ok(a.get_state("serve/incident/r1").await), Some(state_before));
    assert_eq!(ok(a.claim_row("incident/r1").await), Some(claim_before));
    // Reads still pass through.
    assert!(ok(store.get("before").await).is_some());

    // The new holder goes on from the journal.
    let fb = b.fenced(new.fence.clone());
    assert_eq!(ok(fb.journal("exec-1").await).len(), 1);
    ok(fb.append_journal(&entry("exec-1", 2)).await);
    ok(fb.put_execution(execution("exec-1", "resolved"), Expected::Revision(execution_before.revision)).await);
    ok(fb.save_all(&[run("after-1"), run("after-2")], Expected::Absent).await);
    ok(fb.put_state("serve/incident/r1", &json!({"state": "applied"}), Expected::Any).await);
    ok(fb.finish(Finish::Done).await);
    assert_eq!(b.fenced_rejections(), 0);
    // Its fence is spent now too.
    assert_lease_lost(fb.save(&run("after-done"), Expected::Any).await, &new.fence, "after finish");
    assert_eq!(b.fenced_rejections(), 1);
}

/// The error an operator sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_lost_says_what_happened_and_what_to_do() {
    require_postgres!();
    let schema = TestSchema::create();
    let store = open(&schema).await;
    let fence = Fence { key: "incident/x".into(), holder: "replica-a".into(), epoch: 7 };
    let error = store.fenced(fence.clone()).save(&run("x"), Expected::Any).await.expect_err("no such claim");
    assert!(error.is_lease_lost());
    assert_eq!(error.to_string(), "lease on \"incident/x\" lost: epoch 7 held by \"replica-a\" is no longer current");
    let diagnostic: &dyn miette::Diagnostic = &error;
    assert_eq!(diagnostic.code().map(|c| c.to_string()).as_deref(), Some("salvage::store::lease_lost"));
    let help = diagnostic.help().map(|h| h.to_string()).unwrap_or_default();
    assert!(help.contains("another replica took this work over") && help.contains("journal"), "{help}");
}

/// A fenced save parked inside its transaction, after its fence check (the test holds the lock
/// run saves wait for), while its lease expires. The takeover cannot overtake it: `claim`
/// skips the row, `acquire` waits; once the save commits, the takeover bumps the epoch and the
/// save is in the store — committed before the bump, never after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_write_in_flight_holds_off_the_takeover_until_it_commits() {
    require_postgres!();
    let schema = TestSchema::create();
    let a = open(&schema).await;
    let b = open(&schema).await;
    let observer = raw(&schema).await;
    let mut locker = raw(&schema).await;
    let old = ok(a.acquire("incident/slow", KIND, &json!({}), "replica-a", SHORT).await).expect("claimed");
    let fa = a.fenced(old.fence.clone());

    let held = hold_run_saves(&mut locker, &a).await;
    let save = tokio::spawn({
        let fa = fa.clone();
        async move { fa.save_all(&[run("slow-1"), run("slow-2")], Expected::Absent).await }
    });
    parked_save(&observer, &a).await;
    until_db_passes(&b, &old.lease_expires_at).await;

    // The lease has expired, but the write that checked it still holds the row.
    let skipped = tokio::time::timeout(Duration::from_secs(5), b.claim("replica-b", LONG, 10, &[KIND])).await;
    assert!(ok(skipped.expect("claim never waits")).is_empty(), "claim skips a row being written under");
    let takeover = tokio::spawn({
        let b = b.clone();
        async move { b.acquire("incident/slow", KIND, &json!({}), "replica-b", LONG).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(is_pending(&takeover), "acquire waits for the write");
    assert!(is_pending(&save), "the save is parked");

    held.commit().await.unwrap_or_else(|e| panic!("{e}"));
    let revisions = ok(save.await.expect("save task"));
    assert_eq!(revisions, [Revision(1), Revision(1)]);
    let new = ok(takeover.await.expect("takeover task")).expect("taken over after the write");
    assert!(new.epoch > old.epoch);
    assert!(ok(b.get("slow-1").await).is_some() && ok(b.get("slow-2").await).is_some(), "committed before the bump");
    // And from now on the old holder is refused.
    assert_lease_lost(fa.save(&run("slow-3"), Expected::Absent).await, &old.fence, "after the takeover");
    assert!(ok(b.get("slow-3").await).is_none());
}

/// The other order: a takeover's update of the claim row is in flight (uncommitted) when the
/// old holder writes. The write's fence check waits for it, then re-reads the row: committed,
/// the write is refused and writes nothing; rolled back, the write goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_write_waits_for_a_takeover_in_flight_and_follows_its_outcome() {
    require_postgres!();
    let schema = TestSchema::create();
    let a = open(&schema).await;
    let mut takeover = raw(&schema).await;
    let claim = ok(a.acquire("incident/contested", KIND, &json!({}), "replica-a", LONG).await).expect("claimed");
    let fa = a.fenced(claim.fence.clone());
    ok(fa.put_execution(execution("exec-c", "running"), Expected::Absent).await);
    let take = "UPDATE claims SET holder = 'replica-b', epoch = nextval('claim_epochs'),
                lease_expires_at = now() + interval '1 minute' WHERE key = 'incident/contested'";

    for commit in [false, true] {
        let tx = takeover.transaction().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tx.execute(take, &[]).await.unwrap_or_else(|e| panic!("{e}")), 1);
        let seq = if commit { 2 } else { 1 };
        let write = tokio::spawn({
            let fa = fa.clone();
            async move { fa.append_journal(&entry("exec-c", seq)).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(is_pending(&write), "the fence check waits for the row");
        if commit {
            tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
            assert_lease_lost(write.await.expect("write task"), &claim.fence, "after a committed takeover");
        } else {
            tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
            ok(write.await.expect("write task"));
        }
    }
    let journal = ok(a.journal("exec-c").await);
    assert_eq!(journal.iter().map(|r| r.seq).collect::<Vec<_>>(), [1], "only the write made before the takeover");
    assert_eq!(a.fenced_rejections(), 1);
}

/// Many rounds of one holder appending to a journal as fast as it can while another replica
/// waits to take the key over the moment its lease ends. Whatever the interleaving, every
/// append the old holder was told succeeded is in the journal the new holder reads right after
/// taking over, and none lands after: the new holder's next append never conflicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writes_and_takeovers_never_both_commit() {
    require_postgres!();
    const ROUNDS: usize = 12;
    let schema = TestSchema::create();
    let a = open(&schema).await;
    let b = open(&schema).await;
    let mut appended_total = 0;
    for round in 0..ROUNDS {
        let key = format!("incident/race-{round}");
        let execution_id = format!("exec-race-{round}");
        let ttl = Duration::from_millis(120 + 20 * (round as u64 % 4));
        let claim = ok(a.acquire(&key, KIND, &json!({}), "replica-a", ttl).await).expect("claimed");
        let fa = a.fenced(claim.fence.clone());
        let writer = tokio::spawn({
            let execution_id = execution_id.clone();
            async move {
                let mut acknowledged = 0;
                loop {
                    match fa.append_journal(&entry(&execution_id, acknowledged + 1)).await {
                        Ok(()) => acknowledged += 1,
                        Err(StoreError::LeaseLost { .. }) => return acknowledged,
                        Err(other) => panic!("only LeaseLost may stop the old holder: {other}"),
                    }
                }
            }
        });
        let new = loop {
            if let Some(new) = ok(b.acquire(&key, KIND, &json!({}), "replica-b", LONG).await) {
                break new;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let seen = ok(b.journal(&execution_id).await).len() as u64;
        let acknowledged = writer.await.expect("writer");
        assert_eq!(acknowledged, seen, "round {round}: the new holder sees exactly what the old one was told");
        let fb = b.fenced(new.fence.clone());
        ok(fb.append_journal(&entry(&execution_id, seen + 1)).await);
        appended_total += seen;
    }
    assert!(appended_total > 0, "the old holders wrote something");
}

// ---------------------------------------------------------------------------------------------
// Renewal

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_extends_only_this_holders_unexpired_claims_on_the_database_clock() {
    require_postgres!();
    let schema = TestSchema::create();
    let a = open(&schema).await;
    let b = open(&schema).await;
    let k1 = ok(a.acquire("k1", KIND, &json!({}), "a", Duration::from_secs(10)).await).expect("k1");
    let k2 = ok(a.acquire("k2", KIND, &json!({}), "a", Duration::from_secs(10)).await).expect("k2");
    let k3 = ok(b.acquire("k3", KIND, &json!({}), "b", Duration::from_secs(10)).await).expect("k3");
    // k4 expires and is rescued by b; k5 expires and nobody takes it.
    let k4 = ok(a.acquire("k4", KIND, &json!({}), "a", SHORT).await).expect("k4");
    let k5 = ok(a.acquire("k5", KIND, &json!({}), "a", SHORT).await).expect("k5");
    until_db_passes(&a, &k4.lease_expires_at).await;
    until_db_passes(&a, &k5.lease_expires_at).await;
    let rescued = ok(b.acquire("k4", KIND, &json!({}), "b", Duration::from_secs(10)).await).expect("rescued");

    let before = ok(a.db_now().await);
    let a_works_on = |claims: &[&salvage::store::Claim]| -> Vec<(String, i64)> {
        claims.iter().map(|c| (c.key.clone(), c.epoch)).collect()
    };
    let renewed = ok(a.renew("a", LONG, &a_works_on(&[&k1, &k2, &k4, &k5])).await);
    let after = ok(a.db_now().await);
    assert_eq!(renewed, [("k1".to_owned(), k1.epoch), ("k2".to_owned(), k2.epoch)], "k4 and k5 are lost");
    for key in ["k1", "k2"] {
        let row = ok(a.claim_row(key).await).expect("row");
        let expires = time(row.lease_expires_at.as_deref().expect("leased"));
        // Measured on the database clock: now() of the renewing statement + 60 s.
        assert!(expires >= before + LONG && expires <= after + LONG, "{key}: {expires} vs [{before}, {after}] + 60s");
    }
    let k3_row = ok(b.claim_row("k3").await).expect("row");
    assert_eq!(k3_row.lease_expires_at.as_deref(), Some(k3.lease_expires_at.as_str()), "b's claim untouched");
    let k4_row = ok(b.claim_row("k4").await).expect("row");
    assert_eq!((k4_row.holder.as_deref(), k4_row.epoch), (Some("b"), rescued.epoch));
    // An expired claim nobody took is lost all the same: no renewal, no writes.
    let k5_row = ok(a.claim_row("k5").await).expect("row");
    assert_eq!((k5_row.state.as_str(), k5_row.holder.as_deref(), k5_row.epoch), ("claimed", Some("a"), k5.epoch));
    assert_lease_lost(a.fenced(k5.fence.clone()).put_state("x/k5", &json!({}), Expected::Any).await, &k5.fence, "k5");
    // b renews its own (k3, k4) and nothing of a's.
    let renewed = ok(b.renew("b", LONG, &a_works_on(&[&k3, &rescued])).await);
    assert_eq!(renewed, [("k3".to_owned(), k3.epoch), ("k4".to_owned(), rescued.epoch)]);
    assert_eq!(ok(a.renew("nobody", LONG, &a_works_on(&[&k1, &k3])).await), Vec::new());
    // Naming a claim is not enough: a's heartbeat cannot renew b's k3, nor k4 at a's old epoch.
    assert_eq!(ok(a.renew("a", LONG, &a_works_on(&[&k3, &k4])).await), Vec::new());
}

/// A claim its holder stopped working on without giving it back (the database was unreachable
/// when the work ended) is not kept alive by the holder's heartbeats: it runs out and another
/// replica rescues it. (Renewing every claim of the holder kept such an incident claimed for
/// ever, with nobody working on it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_renews_only_the_claims_its_holder_still_works_on() {
    require_postgres!();
    let schema = TestSchema::create();
    let a = open(&schema).await;
    let b = open(&schema).await;
    // A lease of 3 s renewed every second: slack for a loaded machine.
    let ttl = Duration::from_secs(3);
    let kept = ok(a.acquire("kept", KIND, &json!({}), "a", ttl).await).expect("kept");
    let dropped = ok(a.acquire("dropped", KIND, &json!({}), "a", ttl).await).expect("dropped");
    // a's heartbeats name only the claim it still works on, past the first lease.
    let working = [(kept.key.clone(), kept.epoch)];
    for _ in 0..4 {
        assert_eq!(ok(a.renew("a", ttl, &working).await), working);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    until_db_passes(&a, &dropped.lease_expires_at).await;
    assert!(ok(b.acquire("kept", KIND, &json!({}), "b", LONG).await).is_none(), "kept is still a's");
    let rescued = ok(b.acquire("dropped", KIND, &json!({}), "b", LONG).await).expect("the dropped claim is rescued");
    assert!(rescued.epoch > dropped.epoch);
}

// ---------------------------------------------------------------------------------------------
// Leadership

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_terms_grow_on_change_expiry_hands_over_and_resign_frees_it() {
    require_postgres!();
    let schema = TestSchema::create();
    let a = open(&schema).await;
    let b = open(&schema).await;
    const NAME: &str = "housekeeping";
    assert_eq!(ok(a.leader(NAME).await), None);
    let first = ok(a.lead(NAME, "a", SHORT).await).expect("nobody led");
    assert_eq!((first.holder.as_str(), first.term), ("a", 1));
    assert_eq!(ok(b.lead(NAME, "b", SHORT).await), None, "a leads");
    let again = ok(a.lead(NAME, "a", SHORT).await).expect("a stays");
    assert_eq!(again.term, 1, "the same holder keeps its term");
    assert!(time(&again.expires_at) >= time(&first.expires_at));
    assert_eq!(ok(b.leader(NAME).await), Some(again.clone()));
    // Another piece of housekeeping is led independently.
    assert_eq!(ok(b.lead("other", "b", SHORT).await).map(|l| l.term), Some(1));

    until_db_passes(&a, &again.expires_at).await;
    assert_eq!(ok(b.leader(NAME).await), None, "expired");
    let second = ok(b.lead(NAME, "b", LONG).await).expect("a's lease expired");
    assert_eq!((second.holder.as_str(), second.term), ("b", 2));
    assert_eq!(ok(a.lead(NAME, "a", LONG).await), None);

    assert!(!ok(a.resign(NAME, "a").await), "a does not lead");
    assert!(ok(b.resign(NAME, "b").await));
    assert_eq!(ok(a.leader(NAME).await), None);
    let third = ok(a.lead(NAME, "a", LONG).await).expect("free after the resignation");
    assert_eq!((third.holder.as_str(), third.term), ("a", 3));

    // Candidates racing for a free leadership: one wins.
    assert!(ok(a.resign(NAME, "a").await));
    let mut tasks = Vec::new();
    for n in 0..8 {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { store.lead(NAME, &format!("candidate-{n}"), LONG).await }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        winners.extend(ok(task.await.expect("candidate")));
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(winners[0].term, 4);
    assert_eq!(ok(a.leader(NAME).await), Some(winners[0].clone()));
}

// ---------------------------------------------------------------------------------------------
// Replicas

fn replica(id: &str, leases: u32) -> ReplicaInfo {
    ReplicaInfo {
        id: id.into(),
        host: "host-1".into(),
        pid: 4242,
        mode: "enforce".into(),
        policy_digest: "sha256:p".into(),
        playbook_set_digest: "sha256:s".into(),
        leases_held: leases,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_heartbeat_in_place_are_alive_by_the_database_clock_and_are_pruned() {
    require_postgres!();
    let schema = TestSchema::create();
    let store = open(&schema).await;
    for n in 0..100 {
        ok(store.heartbeat_replica(&replica("r1", n % 3)).await);
        if n == 0 {
            ok(store.heartbeat_replica(&replica("r2", 0)).await);
        }
    }
    assert_eq!(schema.query("SELECT count(*) FROM replicas"), [vec![Some("2".to_owned())]], "one row per replica");
    ok(store.acquire("incident/held", KIND, &json!({}), "r1", LONG).await);

    let rows = ok(store.replicas(Duration::from_secs(30)).await);
    assert_eq!(rows.iter().map(|r| (r.id.as_str(), r.alive)).collect::<Vec<_>>(), [("r1", true), ("r2", true)]);
    let r1 = &rows[0];
    assert_eq!((r1.host.as_str(), r1.pid, r1.mode.as_str()), ("host-1", 4242, "enforce"));
    assert_eq!((r1.leases_held, r1.claims_held, rows[1].claims_held), (99 % 3, 1, 0));
    assert!(r1.started_at <= r1.heartbeat_at && r1.stopped_at.is_none());

    // r2's last heartbeat is older than a short TTL on the database clock; r1 keeps beating.
    let r2_seen = rows[1].heartbeat_at.clone();
    until_db_passes(&store, &OffsetDateTime::format(time(&r2_seen) + SHORT, &Rfc3339).expect("format")).await;
    ok(store.heartbeat_replica(&replica("r1", 1)).await);
    let rows = ok(store.replicas(SHORT).await);
    assert_eq!(rows.iter().map(|r| (r.id.as_str(), r.alive)).collect::<Vec<_>>(), [("r1", true), ("r2", false)]);

    // A stopped replica is not alive, whatever its heartbeat.
    assert!(ok(store.stop_replica("r1").await));
    assert!(!ok(store.stop_replica("nobody").await));
    let rows = ok(store.replicas(LONG).await);
    assert!(!rows[0].alive && rows[0].stopped_at.is_some() && rows[0].leases_held == 0, "{rows:?}");
    // A heartbeat (the same process going on) clears it.
    ok(store.heartbeat_replica(&replica("r1", 2)).await);
    assert!(ok(store.replicas(LONG).await)[0].alive);

    // Pruning removes the ones silent for longer than asked.
    assert_eq!(ok(store.prune_replicas(SHORT).await), 1);
    assert_eq!(ok(store.replicas(LONG).await).iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["r1"]);
    assert_eq!(ok(store.prune_replicas(LONG).await), 0);
}

// ---------------------------------------------------------------------------------------------
// Pruning

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_only_old_done_claims_and_old_state_documents() {
    require_postgres!();
    let schema = TestSchema::create();
    let store = open(&schema).await;
    for key in ["c-done-1", "c-done-2", "c-again", "c-claimed", "c-ready", "c-done-young"] {
        ok(store.offer(key, KIND, &json!({}), Duration::ZERO).await);
    }
    let claims: BTreeMap<String, Claim> =
        ok(store.claim("r", LONG, 5, &[KIND]).await).into_iter().map(|c| (c.key.clone(), c)).collect();
    assert_eq!(claims.len(), 5);
    ok(store.finish(&claims["c-done-1"].fence, Finish::Done).await);
    ok(store.finish(&claims["c-done-2"].fence, Finish::Done).await);
    ok(store.finish(&claims["c-again"].fence, Finish::Again { after: Duration::ZERO }).await);
    ok(store.put_state("serve/dry-run/a", &json!({}), Expected::Any).await);
    ok(store.put_state("serve/dry-run/b", &json!({}), Expected::Any).await);
    ok(store.put_state("serve/dry-run/b/nested", &json!({}), Expected::Any).await);
    ok(store.put_state("serve/incident/applied", &json!({"state": "applied"}), Expected::Any).await);
    ok(store.put_state("serve/incident/open", &json!({"state": "applying"}), Expected::Any).await);
    ok(store.put_state("serve/incident/rewritten", &json!({"state": "failed"}), Expected::Any).await);
    schema.execute("UPDATE state SET body = 'not json' WHERE key = 'serve/incident/open'");
    let old_enough = ok(store.db_now().await) + SHORT;
    until_db_passes(&store, &old_enough.format(&Rfc3339).expect("format")).await;

    let young = ok(store.claim("r", LONG, 1, &[KIND]).await).pop().expect("c-done-young");
    ok(store.finish(&young.fence, Finish::Done).await);
    ok(store.put_state("serve/dry-run/young", &json!({}), Expected::Any).await);
    assert_eq!(ok(store.prune(Duration::from_secs(3600)).await), 0, "nothing is that old");
    assert_eq!(ok(store.prune(SHORT).await), 2);
    let left: Vec<Vec<Option<String>>> = schema.query("SELECT key, state FROM claims ORDER BY key");
    let left: Vec<(&str, &str)> =
        left.iter().map(|r| (r[0].as_deref().unwrap_or(""), r[1].as_deref().unwrap_or(""))).collect();
    assert_eq!(
        left,
        [("c-again", "ready"), ("c-claimed", "claimed"), ("c-done-young", "done"), ("c-ready", "claimed")],
        "only old done claims go"
    );

    // A pruned key offered again starts over, with an epoch it never had.
    assert!(ok(store.offer("c-done-1", KIND, &json!({}), Duration::ZERO).await));
    let reborn = ok(store.acquire("c-done-1", KIND, &json!({}), "r", LONG).await).expect("claimed");
    assert!(reborn.epoch > claims["c-done-1"].epoch, "an idempotency key carrying the epoch never repeats");

    // State: direct children of the prefix, old enough; nested and young ones stay.
    assert_eq!(ok(store.prune_state("serve/dry-run", SHORT).await), 2);
    let keys = |prefix: &str| {
        schema
            .query(&format!("SELECT key FROM state WHERE key LIKE '{prefix}%' ORDER BY key"))
            .into_iter()
            .filter_map(|row| row[0].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(keys("serve/dry-run/"), ["serve/dry-run/b/nested", "serve/dry-run/young"]);
    // Finished ones only, and only at the revision read: one rewritten meanwhile stays.
    let rewrite = store.clone();
    let pruned = ok(store
        .prune_state_where("serve/incident", SHORT, |state| {
            let finished = matches!(state.body["state"].as_str(), Some("applied" | "failed"));
            if state.key == "serve/incident/rewritten" {
                // Another writer saves it between the read and the delete (revision 2 now).
                let handle = tokio::runtime::Handle::current();
                let rewrite = rewrite.clone();
                std::thread::spawn(move || {
                    handle.block_on(rewrite.put_state(
                        "serve/incident/rewritten",
                        &json!({"state": "applying"}),
                        Expected::Any,
                    ))
                })
                .join()
                .expect("writer thread")
                .unwrap_or_else(|e| panic!("{e}"));
            }
            finished
        })
        .await);
    assert_eq!(pruned, 1);
    assert_eq!(keys("serve/incident/"), ["serve/incident/open", "serve/incident/rewritten"]);
}

// ---------------------------------------------------------------------------------------------
// Connections dropped under a holder

/// An administrator (or a failover) terminates the connection of a holder in the middle of a
/// fenced save: the save fails, nothing of it is in the store, the claim is as it was, and the
/// store's pool replaces the dead connection for the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_holder_connection_leaves_nothing_half_written_and_the_pool_recovers() {
    require_postgres!();
    let schema = TestSchema::create();
    let options = PostgresOptions { max_connections: 1, ..PostgresOptions::default() };
    let a = ok(PostgresStore::open_with(&schema.postgres_url(), options).await);
    let observer = raw(&schema).await;
    let mut locker = raw(&schema).await;
    let claim = ok(a.acquire("incident/t", KIND, &json!({}), "replica-a", LONG).await).expect("claimed");
    let fa: FencedStore = a.fenced(claim.fence.clone());
    ok(fa.append_journal(&entry("exec-t", 1)).await);
    let claim_before = ok(a.claim_row("incident/t").await);

    let held = hold_run_saves(&mut locker, &a).await;
    let save = tokio::spawn({
        let fa = fa.clone();
        async move { fa.save_all(&[run("t-1"), run("t-2"), run("t-3")], Expected::Absent).await }
    });
    let pid = parked_save(&observer, &a).await;
    let terminated = observer.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await.expect("terminate");
    assert!(terminated.get::<_, bool>(0));
    let failed = save.await.expect("save task");
    assert!(matches!(failed, Err(StoreError::Database { .. })), "{failed:?}");
    held.commit().await.unwrap_or_else(|e| panic!("{e}"));

    // Nothing half-written: no run of the batch, the claim unchanged, no rejection counted.
    for id in ["t-1", "t-2", "t-3"] {
        assert!(ok(a.get(id).await).is_none(), "{id}");
    }
    assert_eq!(ok(a.claim_row("incident/t").await), claim_before);
    assert_eq!(a.fenced_rejections(), 0);
    // The pool (of one connection) recovers; the lease is still this holder's.
    let working = [("incident/t".to_owned(), claim.epoch)];
    assert_eq!(ok(a.renew("replica-a", LONG, &working).await), working);
    ok(fa.save_all(&[run("t-1"), run("t-2"), run("t-3")], Expected::Absent).await);
    ok(fa.append_journal(&entry("exec-t", 2)).await);
    assert_eq!(ok(a.journal("exec-t").await).len(), 2);
}

/// The fenced and unfenced writes share their semantics: compare-and-set conflicts are
/// conflicts (not lease losses), and a run save through a fence is announced like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_keep_the_stores_semantics() {
    require_postgres!();
    let schema = TestSchema::create();
    let store = open(&schema).await;
    let claim = ok(store.acquire("incident/s", KIND, &json!({}), "a", LONG).await).expect("claimed");
    let fenced = store.fenced(claim.fence.clone());
    let mut listener = ok(store.listen().await);
    let first = ok(fenced.save(&run("s"), Expected::Absent).await);
    assert!(matches!(fenced.save(&run("s"), Expected::Absent).await, Err(StoreError::Conflict { .. })));
    assert_eq!(ok(fenced.save(&run("s"), Expected::Revision(first)).await), Revision(2));
    let event = tokio::time::timeout(Duration::from_secs(10), listener.next()).await.expect("announced");
    assert!(matches!(event, Some(salvage::store::ListenEvent::Changed(_))), "{event:?}");
    ok(fenced.put_execution(execution("exec-s", "running"), Expected::Absent).await);
    let stale = fenced.put_execution(execution("exec-s", "done"), Expected::Revision(Revision(9))).await;
    assert!(matches!(stale, Err(StoreError::Conflict { found: Some(Revision(1)), .. })), "{stale:?}");
    ok(fenced.append_journal(&entry("exec-s", 1)).await);
    assert!(matches!(fenced.append_journal(&entry("exec-s", 3)).await, Err(StoreError::Conflict { .. })));
    ok(fenced.put_state("serve/s", &json!({}), Expected::Absent).await);
    assert!(matches!(
        fenced.put_state("serve/s", &json!({}), Expected::Absent).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(store.fenced_rejections(), 0);
    assert_eq!(ok(store.changes_since(0, 10).await).len(), 1);
}
