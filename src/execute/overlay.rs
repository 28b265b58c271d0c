//! The dry-run store: reads see the real store, writes stay in memory.
//!
//! Advisory mode runs the very same runner over this overlay. Every run the store runtime would
//! create or change, every execution record and journal entry, lands in the overlay's memory,
//! where the dry run's report reads it back; the real store is never written.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;

use crate::model::{Run, TreeLeaf};
use crate::store::{
    ExecutionDoc, ExecutionStore, Expected, JournalRecord, MemoryStore, Partial, Revision, RunIndexEntry, RunQuery,
    RunStore, StateStore, Store, StoreError, StoredExecution, StoredRun, StoredState,
};

#[derive(Debug)]
pub struct Overlay {
    base: Arc<dyn Store>,
    writes: MemoryStore,
    /// For each run the overlay wrote, the base's revision before its first write (0 for a run
    /// the base does not have). The overlay's own revisions (1, 2, ...) are shown added to it,
    /// by reads and saves alike, so that compare-and-set sees what the real store would show.
    revision_base: std::sync::Mutex<HashMap<String, u64>>,
    /// The runs read whole from the base, by id (`None`: the base has no such run). A dry run
    /// reads its incident's run at several steps; it sees one snapshot of each run it did not
    /// write, and decodes it once.
    base_runs: std::sync::Mutex<HashMap<String, Option<StoredRun>>>,
}

impl Overlay {
    pub fn new(base: Arc<dyn Store>) -> Overlay {
        Overlay {
            base,
            writes: MemoryStore::new(),
            revision_base: std::sync::Mutex::default(),
            base_runs: std::sync::Mutex::default(),
        }
    }

    /// Takes `stored` as the base's copy of its run, read by the caller (the planner, whose
    /// read the stale-plan check has just confirmed current).
    pub fn know_base_run(&self, stored: StoredRun) {
        self.base_runs().entry(stored.run.id.clone()).or_insert(Some(stored));
    }

    fn base_runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<StoredRun>>> {
        // Each change is one insert: a panic elsewhere cannot leave it half-changed.
        self.base_runs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The base's copy of `run_id`, read once.
    async fn base_run(&self, run_id: &str) -> Result<Option<StoredRun>, StoreError> {
        if let Some(known) = self.base_runs().get(run_id) {
            return Ok(known.clone());
        }
        let read = self.base.get(run_id).await?;
        self.base_runs().insert(run_id.to_owned(), read.clone());
        Ok(read)
    }

    fn revision_bases(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // A panic elsewhere cannot leave the map half-changed: each change is one insert.
        self.revision_base.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An overlay revision of `run_id` as the real store would count it.
    fn shown(&self, run_id: &str, own: Revision) -> Revision {
        Revision(self.revision_bases().get(run_id).copied().unwrap_or(0) + own.0)
    }

    fn shown_run(&self, mut stored: StoredRun) -> StoredRun {
        stored.revision = self.shown(&stored.run.id, stored.revision);
        stored
    }

    fn shown_entry(&self, mut entry: RunIndexEntry) -> RunIndexEntry {
        entry.revision = self.shown(&entry.id, entry.revision);
        entry
    }

    /// The runs written during the dry run (created or changed), in listing order.
    pub async fn written_runs(&self) -> Result<Vec<Run>, StoreError> {
        let listed = self.writes.list(&RunQuery::all()).await?;
        let ids: Vec<String> = listed.items.into_iter().map(|entry| entry.id).collect();
        Ok(self.writes.get_many(&ids).await?.items.into_iter().map(|stored| stored.run).collect())
    }

    /// Whether the run existed in the real store (as opposed to being created by the dry run).
    pub async fn existed(&self, run_id: &str) -> Result<bool, StoreError> {
        Ok(self.base_run(run_id).await?.is_some())
    }

    /// What `run_ids` are, in the order asked (ids found nowhere left out): from the overlay's
    /// own copy where the dry run wrote the run (`own`), else from the base, whose runs are
    /// read in one call (`base`: a family is one query, not one per run).
    async fn own_or_base<T, Base>(
        &self,
        run_ids: &[String],
        own: impl Fn(StoredRun) -> T,
        base: impl FnOnce(Vec<String>) -> Base,
    ) -> Result<Partial<(String, T)>, StoreError>
    where
        Base: std::future::Future<Output = Result<Partial<(String, T)>, StoreError>>,
    {
        let mut owned = HashMap::new();
        let mut from_base = Vec::new();
        for run_id in run_ids {
            match self.writes.get(run_id).await? {
                Some(stored) => {
                    owned.insert(run_id.as_str(), own(stored));
                }
                None => from_base.push(run_id.clone()),
            }
        }
        let read = if from_base.is_empty() { Partial::default() } else { base(from_base).await? };
        let mut based: HashMap<String, T> = read.items.into_iter().collect();
        let items = run_ids
            .iter()
            .filter_map(|run_id| {
                let item = owned.remove(run_id.as_str()).or_else(|| based.remove(run_id))?;
                Some((run_id.clone(), item))
            })
            .collect();
        Ok(Partial { items, problems: read.problems })
    }

    /// A write's expectation holds against the overlay's view (base revisions count until the
    /// overlay has its own copy).
    async fn check(&self, run: &Run, expected: Expected) -> Result<(), StoreError> {
        let found = self.get(&run.id).await?.map(|stored| stored.revision);
        crate::store::check_run_expected(&run.id, expected, found)
    }
}

#[async_trait]
impl RunStore for Overlay {
    fn spec(&self) -> String {
        format!("dry-run over {}", self.base.spec())
    }

    async fn get(&self, run_id: &str) -> Result<Option<StoredRun>, StoreError> {
        match self.writes.get(run_id).await? {
            Some(stored) => Ok(Some(self.shown_run(stored))),
            None => self.base_run(run_id).await,
        }
    }

    async fn get_many(&self, run_ids: &[String]) -> Result<Partial<StoredRun>, StoreError> {
        let read = self
            .own_or_base(
                run_ids,
                |stored| self.shown_run(stored),
                |ids| async move {
                    let base = self.base.get_many(&ids).await?;
                    let items = base.items.into_iter().map(|stored| (stored.run.id.clone(), stored)).collect();
                    Ok(Partial { items, problems: base.problems })
                },
            )
            .await?;
        Ok(Partial { items: read.items.into_iter().map(|(_, stored)| stored).collect(), problems: read.problems })
    }

    async fn tree_leaves(&self, run_ids: &[String]) -> Result<Partial<(String, TreeLeaf)>, StoreError> {
        // The runs the dry run wrote are computed from its copies; the base keeps the others'.
        self.own_or_base(
            run_ids,
            |stored| TreeLeaf::of(&stored.run),
            |ids| async move { self.base.tree_leaves(&ids).await },
        )
        .await
    }

    async fn list_one(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        match self.writes.list_one(run_id).await? {
            Some(entry) => Ok(Some(self.shown_entry(entry))),
            None => self.base.list_one(run_id).await,
        }
    }

    async fn current_entry(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        match self.writes.list_one(run_id).await? {
            Some(entry) => Ok(Some(self.shown_entry(entry))),
            None => self.base.current_entry(run_id).await,
        }
    }

    async fn save(&self, run: &Run, expected: Expected) -> Result<Revision, StoreError> {
        self.check(run, expected).await?;
        // The overlay's revisions continue from the base's at its first write of the run.
        if !self.revision_bases().contains_key(&run.id) {
            // From the snapshot the dry run read, where it read one.
            let known = self.base_runs().get(&run.id).map(|known| known.as_ref().map_or(0, |stored| stored.revision.0));
            let base = match known {
                Some(revision) => revision,
                None => self.base.current_entry(&run.id).await?.map_or(0, |entry| entry.revision.0),
            };
            self.revision_bases().entry(run.id.clone()).or_insert(base);
        }
        let own = self.writes.save(run, Expected::Any).await?;
        Ok(self.shown(&run.id, own))
    }

    async fn save_all(&self, runs: &[Run], expected: Expected) -> Result<Vec<Revision>, StoreError> {
        for run in runs {
            self.check(run, expected).await?;
        }
        let mut revisions = Vec::with_capacity(runs.len());
        for run in runs {
            revisions.push(self.save(run, Expected::Any).await?);
        }
        Ok(revisions)
    }

    async fn catch_up(&self) -> Result<(), StoreError> {
        self.base.catch_up().await
    }

    async fn list(&self, query: &RunQuery) -> Result<Partial<RunIndexEntry>, StoreError> {
        let own = self.writes.list(query).await?;
        let all_own = self.writes.list(&RunQuery::all()).await?;
        let shadowed: HashSet<&str> = all_own.items.iter().map(|entry| entry.id.as_str()).collect();
        let mut base = self.base.list(query).await?;
        base.items.retain(|entry| !shadowed.contains(entry.id.as_str()));
        base.items.extend(own.items.into_iter().map(|entry| self.shown_entry(entry)));
        base.items.sort_by(RunIndexEntry::listing_order);
        Ok(base)
    }

    /// The base's own subtree walk (one indexed query, not the default's query per member:
    /// a 100,000-run family), with the overlay's runs in place of the base's and the base's
    /// runs below each of them.
    async fn subtree(&self, root_id: &str) -> Result<Partial<RunIndexEntry>, StoreError> {
        let own = self.writes.list(&RunQuery::all()).await?;
        if own.items.is_empty() {
            return self.base.subtree(root_id).await;
        }
        let shadowed: HashSet<String> = own.items.iter().map(|entry| entry.id.clone()).collect();
        let mut members = self.base.subtree(root_id).await?;
        for entry in &own.items {
            let below = self.base.subtree(&entry.id).await?;
            members.items.extend(below.items);
            members.problems.extend(below.problems);
        }
        members.items.retain(|entry| !shadowed.contains(&entry.id));
        members.items.extend(own.items.into_iter().map(|entry| self.shown_entry(entry)));
        let mut seen = HashSet::new();
        members.items.retain(|entry| seen.insert(entry.id.clone()));
        members.items = crate::store::breadth_first(root_id, members.items);
        Ok(members)
    }
}

#[async_trait]
impl ExecutionStore for Overlay {
    async fn put_execution(&self, doc: ExecutionDoc, expected: Expected) -> Result<Revision, StoreError> {
        if !self.writes.has_execution(&doc.id) {
            let found = self.base.get_execution(&doc.id).await?.map(|stored| stored.revision);
            crate::store::executions::check_expected(&doc.id, expected, found)?;
            return self.writes.put_execution(doc, Expected::Any).await;
        }
        self.writes.put_execution(doc, expected).await
    }

    async fn get_execution(&self, id: &str) -> Result<Option<StoredExecution>, StoreError> {
        match self.writes.get_execution(id).await? {
            Some(stored) => Ok(Some(stored)),
            None => self.base.get_execution(id).await,
        }
    }

    async fn list_executions(&self, status: Option<&str>) -> Result<Vec<StoredExecution>, StoreError> {
        let own = self.writes.list_executions(status).await?;
        let mut all = self.base.list_executions(status).await?;
        all.retain(|stored| !own.iter().any(|o| o.doc.id == stored.doc.id));
        all.extend(own);
        all.sort_by(|a, b| a.doc.created_at.cmp(&b.doc.created_at).then_with(|| a.doc.id.cmp(&b.doc.id)));
        Ok(all)
    }

    async fn append_journal_entries(&self, records: &[JournalRecord]) -> Result<(), StoreError> {
        self.writes.append_journal_entries(records).await
    }

    async fn append_journal_and_put_execution(
        &self,
        records: &[JournalRecord],
        doc: ExecutionDoc,
        expected: Expected,
    ) -> Result<Revision, StoreError> {
        // As `put_execution`: the base's revision counts until the overlay has its own copy.
        if !self.writes.has_execution(&doc.id) {
            let found = self.base.get_execution(&doc.id).await?.map(|stored| stored.revision);
            crate::store::executions::check_expected(&doc.id, expected, found)?;
            return self.writes.append_journal_and_put_execution(records, doc, Expected::Any).await;
        }
        self.writes.append_journal_and_put_execution(records, doc, expected).await
    }

    async fn journal(&self, execution_id: &str) -> Result<Vec<JournalRecord>, StoreError> {
        let own = self.writes.journal(execution_id).await?;
        if own.is_empty() { self.base.journal(execution_id).await } else { Ok(own) }
    }
}

/// A dry run keeps state documents in memory too (it writes nothing).
#[async_trait]
impl StateStore for Overlay {
    async fn get_state(&self, key: &str) -> Result<Option<StoredState>, StoreError> {
        match self.writes.get_state(key).await? {
            Some(stored) => Ok(Some(stored)),
            None => self.base.get_state(key).await,
        }
    }

    async fn put_state(&self, key: &str, body: &serde_json::Value, expected: Expected) -> Result<Revision, StoreError> {
        if self.writes.get_state(key).await?.is_none() {
            let found = self.base.get_state(key).await?.map(|stored| stored.revision);
            crate::store::executions::check_expected(key, expected, found)?;
            return self.writes.put_state(key, body, Expected::Any).await;
        }
        self.writes.put_state(key, body, expected).await
    }

    async fn list_state(&self, prefix: &str) -> Result<Vec<StoredState>, StoreError> {
        let own = self.writes.list_state(prefix).await?;
        let mut all = self.base.list_state(prefix).await?;
        all.retain(|stored| !own.iter().any(|o| o.key == stored.key));
        all.extend(own);
        all.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(id: &str, parent: Option<&str>, second: u32) -> Run {
        Run::from_value(json!({
            "id": id, "status": "completed",
            "timestamps": {"createdAt": format!("2025-01-01T00:00:{second:02}.000Z")},
            "metadata": {"lineage": {"rootRunId": "root", "parentRunId": parent}}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn ids(partial: &Partial<RunIndexEntry>) -> Vec<&str> {
        partial.items.iter().map(|entry| entry.id.as_str()).collect()
    }

    /// A run the dry run did not write is read from the base once: later reads (several steps
    /// read the incident's run) see that snapshot, a run known from the planner is not read at
    /// all, and the overlay's own writes still come first.
    #[tokio::test]
    async fn a_base_run_is_read_once_and_own_writes_come_first() {
        let base = Arc::new(MemoryStore::new());
        base.save(&run("root", None, 0), Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        let overlay = Overlay::new(base.clone());
        let first = overlay.get("root").await.unwrap_or_else(|e| panic!("{e}")).map(|stored| stored.revision);
        assert_eq!(first, Some(Revision(1)));
        base.save(&run("root", None, 5), Expected::Any).await.unwrap_or_else(|e| panic!("{e}"));
        let again = overlay.get("root").await.unwrap_or_else(|e| panic!("{e}")).map(|stored| stored.revision);
        assert_eq!(again, first, "the snapshot the dry run started from");
        assert!(!overlay.existed("gone").await.unwrap_or_else(|e| panic!("{e}")));
        base.save(&run("gone", None, 1), Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(!overlay.existed("gone").await.unwrap_or_else(|e| panic!("{e}")), "absent in the snapshot too");

        let known = Overlay::new(base.clone());
        let mut planned = run("child", Some("root"), 2);
        planned.metadata.insert("note", json!("as the planner read it"));
        known.know_base_run(StoredRun { run: planned.clone(), revision: Revision(7) });
        let read = known.get("child").await.unwrap_or_else(|e| panic!("{e}")).expect("known");
        assert_eq!((read.run, read.revision), (planned, Revision(7)), "not read from the base, which lacks it");

        overlay.save(&run("root", None, 9), Expected::Revision(Revision(1))).await.unwrap_or_else(|e| panic!("{e}"));
        let own = overlay.get("root").await.unwrap_or_else(|e| panic!("{e}")).expect("own copy");
        let shown = (own.revision, own.run.created_at().map(str::to_owned));
        assert_eq!(shown, (Revision(2), Some("2025-01-01T00:00:09.000Z".to_owned())), "counted from the snapshot");
    }

    /// Compare-and-set through the overlay sees what it would see against the real store: the
    /// revision a save returns is the one every read then shows, continuing from the base's.
    #[tokio::test]
    async fn revisions_through_the_overlay_are_the_real_stores() {
        let base = Arc::new(MemoryStore::new());
        let real = MemoryStore::new();
        for store in [&*base, &real] {
            for _ in 0..2 {
                store.save(&run("root", None, 0), Expected::Any).await.unwrap_or_else(|e| panic!("{e}"));
            }
        }
        let overlay = Overlay::new(base.clone());
        for (id, parent) in [("root", None), ("new", Some("root")), ("root", None), ("new", Some("root"))] {
            let read = |stored: Option<StoredRun>| stored.map(|stored| stored.revision);
            let expected = match read(real.get(id).await.unwrap_or_else(|e| panic!("{e}"))) {
                Some(revision) => Expected::Revision(revision),
                None => Expected::Absent,
            };
            assert_eq!(
                read(overlay.get(id).await.unwrap_or_else(|e| panic!("{e}"))),
                read(real.get(id).await.ok().flatten())
            );
            let saved = overlay.save(&run(id, parent, 1), expected).await.unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(saved, real.save(&run(id, parent, 1), expected).await.unwrap_or_else(|e| panic!("{e}")));
            assert_eq!(read(overlay.get(id).await.unwrap_or_else(|e| panic!("{e}"))), Some(saved), "{id}");
            let entry = |found: Option<RunIndexEntry>| found.map(|entry| entry.revision);
            assert_eq!(entry(overlay.list_one(id).await.unwrap_or_else(|e| panic!("{e}"))), Some(saved));
            assert_eq!(entry(overlay.current_entry(id).await.unwrap_or_else(|e| panic!("{e}"))), Some(saved));
            let listed = overlay.list(&RunQuery::all()).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(listed.items.iter().find(|e| e.id == id).map(|e| e.revision), Some(saved));
            // A save expecting the revision before this one is refused, as by the real store.
            let stale = Expected::Revision(Revision(saved.0 - 1));
            assert!(matches!(overlay.save(&run(id, parent, 1), stale).await, Err(StoreError::Conflict { .. })), "{id}");
        }
        assert_eq!(base.get("root").await.ok().flatten().map(|stored| stored.revision), Some(Revision(2)));
        assert!(base.get("new").await.ok().flatten().is_none(), "the base is never written");
    }

    #[tokio::test]
    async fn the_subtree_is_the_base_family_as_the_overlay_changed_it() {
        let base_runs = [
            run("root", None, 0),
            run("a", Some("root"), 1),
            run("b", Some("a"), 2),
            run("away", None, 3),
            run("x", Some("away"), 4),
        ];
        let base = Arc::new(MemoryStore::new());
        base.save_all(&base_runs, Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        let overlay = Overlay::new(base.clone());
        assert_eq!(ids(&overlay.subtree("root").await.unwrap_or_else(|e| panic!("{e}"))), ["root", "a", "b"]);

        // A new run below b, and `away` (with x below it) moved under root.
        let writes = [run("new", Some("b"), 5), run("away", Some("root"), 3)];
        for written in &writes {
            overlay.save(written, Expected::Any).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let merged = MemoryStore::new();
        merged.save_all(&base_runs, Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        for written in &writes {
            merged.save(written, Expected::Any).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let expected = merged.subtree("root").await.unwrap_or_else(|e| panic!("{e}"));
        let found = overlay.subtree("root").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ids(&found), ids(&expected), "what the default walk over the merged store finds");
        assert_eq!(ids(&found), ["root", "a", "away", "b", "x", "new"]);
    }
}
