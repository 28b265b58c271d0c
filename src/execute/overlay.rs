//! The dry-run store: reads see the real store, writes stay in memory.
//!
//! Advisory mode runs the very same runner over this overlay. Every run the store runtime would
//! create or change, every execution record and journal entry, lands in the overlay's memory,
//! where the dry run's report reads it back; the real store is never written.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;

use crate::model::Run;
use crate::store::{
    ExecutionDoc, ExecutionStore, Expected, JournalRecord, MemoryStore, Partial, Revision, RunIndexEntry, RunQuery,
    RunStore, StateStore, Store, StoreError, StoredExecution, StoredRun, StoredState,
};

#[derive(Debug)]
pub struct Overlay {
    base: Arc<dyn Store>,
    writes: MemoryStore,
}

impl Overlay {
    pub fn new(base: Arc<dyn Store>) -> Overlay {
        Overlay { base, writes: MemoryStore::new() }
    }

    /// The runs written during the dry run (created or changed), in listing order.
    pub async fn written_runs(&self) -> Result<Vec<Run>, StoreError> {
        let listed = self.writes.list(&RunQuery::all()).await?;
        let ids: Vec<String> = listed.items.into_iter().map(|entry| entry.id).collect();
        Ok(self.writes.get_many(&ids).await?.items.into_iter().map(|stored| stored.run).collect())
    }

    /// Whether the run existed in the real store (as opposed to being created by the dry run).
    pub async fn existed(&self, run_id: &str) -> Result<bool, StoreError> {
        Ok(self.base.get(run_id).await?.is_some())
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
            Some(stored) => Ok(Some(stored)),
            None => self.base.get(run_id).await,
        }
    }

    async fn get_many(&self, run_ids: &[String]) -> Result<Partial<StoredRun>, StoreError> {
        let mut own = HashMap::new();
        let mut from_base = Vec::new();
        for run_id in run_ids {
            match self.writes.get(run_id).await? {
                Some(stored) => {
                    own.insert(run_id.as_str(), stored);
                }
                None => from_base.push(run_id.clone()),
            }
        }
        // The base's runs in one read (a family is one query, not one per run), then every
        // run in the order asked.
        let base = if from_base.is_empty() { Partial::default() } else { self.base.get_many(&from_base).await? };
        let mut base_runs: HashMap<String, StoredRun> =
            base.items.into_iter().map(|stored| (stored.run.id.clone(), stored)).collect();
        let items = run_ids
            .iter()
            .filter_map(|run_id| own.remove(run_id.as_str()).or_else(|| base_runs.remove(run_id)))
            .collect();
        Ok(Partial { items, problems: base.problems })
    }

    async fn list_one(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        match self.writes.list_one(run_id).await? {
            Some(entry) => Ok(Some(entry)),
            None => self.base.list_one(run_id).await,
        }
    }

    async fn current_entry(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        match self.writes.list_one(run_id).await? {
            Some(entry) => Ok(Some(entry)),
            None => self.base.current_entry(run_id).await,
        }
    }

    async fn save(&self, run: &Run, expected: Expected) -> Result<Revision, StoreError> {
        self.check(run, expected).await?;
        // Revisions in the overlay continue from the base's, so that compare-and-set works the
        // same as against the real store.
        let base = self.base.get(&run.id).await?.map_or(0, |stored| stored.revision.0);
        let own = self.writes.save(run, Expected::Any).await?;
        Ok(Revision(base + own.0))
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
        base.items.extend(own.items);
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
        members.items.extend(own.items);
        let mut seen = HashSet::new();
        members.items.retain(|entry| seen.insert(entry.id.clone()));
        members.items = crate::store::breadth_first(root_id, members.items);
        Ok(members)
    }
}

#[async_trait]
impl ExecutionStore for Overlay {
    async fn put_execution(&self, doc: &ExecutionDoc, expected: Expected) -> Result<Revision, StoreError> {
        if self.writes.get_execution(&doc.id).await?.is_none() {
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
        doc: &ExecutionDoc,
        expected: Expected,
    ) -> Result<Revision, StoreError> {
        // As `put_execution`: the base's revision counts until the overlay has its own copy.
        if self.writes.get_execution(&doc.id).await?.is_none() {
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
