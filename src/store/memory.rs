//! `memory:` — runs held in the process. Values are copies: what a caller holds is never the
//! stored value, so mutating a loaded run changes nothing until it is saved.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

use async_trait::async_trait;

use super::executions::{check_expected, check_next_seq, journal_batch, validate_execution_id};
use super::state::{StateStore, StoredState, validate_state_key};
use super::{
    ExecutionDoc, ExecutionStore, Expected, JournalRecord, Partial, Revision, RunIndexEntry, RunQuery, RunStore,
    StoreError, StoredExecution, StoredRun, validate_run_id,
};
use crate::model::Run;

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: RwLock<MemoryState>,
    executions: RwLock<ExecutionState>,
    states: RwLock<std::collections::BTreeMap<String, (serde_json::Value, Revision)>>,
}

#[derive(Debug, Default)]
struct ExecutionState {
    docs: HashMap<String, (ExecutionDoc, Revision)>,
    journals: HashMap<String, Vec<JournalRecord>>,
}

impl ExecutionState {
    /// The revision `doc` is saved at if the store holds what `expected` says.
    fn check_put(&self, doc: &ExecutionDoc, expected: Expected) -> Result<Revision, StoreError> {
        let found = self.docs.get(&doc.id).map(|(_, revision)| *revision);
        check_expected(&doc.id, expected, found)?;
        Ok(Revision::after(found))
    }

    /// Checks that `records` are one journal's next entries.
    fn check_append(&self, records: &[JournalRecord]) -> Result<(), StoreError> {
        let Some((execution_id, seq)) = journal_batch(records)? else { return Ok(()) };
        let last = self.journals.get(execution_id).and_then(|journal| journal.last()).map(|r| r.seq);
        check_next_seq(execution_id, seq, last)
    }

    fn put(&mut self, doc: ExecutionDoc, revision: Revision) {
        self.docs.insert(doc.id.clone(), (doc, revision));
    }

    fn append(&mut self, records: &[JournalRecord]) {
        for record in records {
            self.journals.entry(record.execution_id.clone()).or_default().push(record.clone());
        }
    }
}

#[derive(Debug, Default)]
struct MemoryState {
    runs: HashMap<String, (Run, RunIndexEntry)>,
    by_root: HashMap<String, BTreeSet<String>>,
    by_parent: HashMap<String, BTreeSet<String>>,
    by_status: HashMap<String, BTreeSet<String>>,
}

impl MemoryState {
    fn check(&self, run_id: &str, expected: Expected) -> Result<(), StoreError> {
        let found = self.runs.get(run_id).map(|(_, entry)| entry.revision);
        super::check_run_expected(run_id, expected, found)
    }

    fn unindex(&mut self, entry: &RunIndexEntry) {
        remove_from(&mut self.by_root, &entry.root_run_id, &entry.id);
        if let Some(parent) = &entry.parent_run_id {
            remove_from(&mut self.by_parent, parent, &entry.id);
        }
        remove_from(&mut self.by_status, entry.status.as_str(), &entry.id);
    }

    fn put(&mut self, run: &Run) -> Revision {
        let previous = self.runs.remove(&run.id);
        let revision = Revision::after(previous.as_ref().map(|(_, entry)| entry.revision));
        if let Some((_, entry)) = &previous {
            self.unindex(entry);
        }
        let entry = RunIndexEntry::of(run, revision);
        self.by_root.entry(entry.root_run_id.clone()).or_default().insert(entry.id.clone());
        if let Some(parent) = &entry.parent_run_id {
            self.by_parent.entry(parent.clone()).or_default().insert(entry.id.clone());
        }
        self.by_status.entry(entry.status.as_str().to_owned()).or_default().insert(entry.id.clone());
        self.runs.insert(run.id.clone(), (run.clone(), entry));
        revision
    }
}

fn remove_from(index: &mut HashMap<String, BTreeSet<String>>, key: &str, id: &str) {
    if let Some(ids) = index.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, MemoryState> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the store, so a poisoned lock is simply taken over.
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, MemoryState> {
        self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl RunStore for MemoryStore {
    fn spec(&self) -> String {
        "memory:".to_owned()
    }

    async fn get(&self, run_id: &str) -> Result<Option<StoredRun>, StoreError> {
        Ok(self.read().runs.get(run_id).map(|(run, entry)| StoredRun { run: run.clone(), revision: entry.revision }))
    }

    async fn get_many(&self, run_ids: &[String]) -> Result<Partial<StoredRun>, StoreError> {
        let state = self.read();
        let items = run_ids
            .iter()
            .filter_map(|id| state.runs.get(id))
            .map(|(run, entry)| StoredRun { run: run.clone(), revision: entry.revision })
            .collect();
        Ok(Partial::complete(items))
    }

    async fn save(&self, run: &Run, expected: Expected) -> Result<Revision, StoreError> {
        validate_run_id(&run.id)?;
        let mut state = self.write();
        state.check(&run.id, expected)?;
        Ok(state.put(run))
    }

    async fn save_all(&self, runs: &[Run], expected: Expected) -> Result<Vec<Revision>, StoreError> {
        let mut state = self.write();
        for run in runs {
            validate_run_id(&run.id)?;
            state.check(&run.id, expected)?;
        }
        Ok(runs.iter().map(|run| state.put(run)).collect())
    }

    async fn list(&self, query: &RunQuery) -> Result<Partial<RunIndexEntry>, StoreError> {
        let state = self.read();
        let candidates: Box<dyn Iterator<Item = &String>> = if let Some(parent) = &query.parent_run_id {
            Box::new(state.by_parent.get(parent).into_iter().flatten())
        } else if let Some(root) = &query.root_run_id {
            Box::new(state.by_root.get(root).into_iter().flatten())
        } else if let Some(status) = &query.status {
            Box::new(state.by_status.get(status.as_str()).into_iter().flatten())
        } else {
            Box::new(state.runs.keys())
        };
        let mut items: Vec<RunIndexEntry> = candidates
            .filter_map(|id| state.runs.get(id))
            .map(|(_, entry)| entry)
            .filter(|entry| query.matches(entry))
            .cloned()
            .collect();
        items.sort_by(RunIndexEntry::listing_order);
        Ok(Partial::complete(items))
    }

    async fn list_one(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        Ok(self.read().runs.get(run_id).map(|(_, entry)| entry.clone()))
    }

    async fn current_entry(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        self.list_one(run_id).await
    }
}

impl MemoryStore {
    /// Whether an execution record is kept (without copying it).
    pub(crate) fn has_execution(&self, id: &str) -> bool {
        self.executions_read().docs.contains_key(id)
    }

    fn executions_read(&self) -> std::sync::RwLockReadGuard<'_, ExecutionState> {
        self.executions.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn executions_write(&self) -> std::sync::RwLockWriteGuard<'_, ExecutionState> {
        self.executions.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl ExecutionStore for MemoryStore {
    async fn put_execution(&self, doc: ExecutionDoc, expected: Expected) -> Result<Revision, StoreError> {
        validate_execution_id(&doc.id)?;
        let mut state = self.executions_write();
        let revision = state.check_put(&doc, expected)?;
        state.put(doc, revision);
        Ok(revision)
    }

    async fn get_execution(&self, id: &str) -> Result<Option<StoredExecution>, StoreError> {
        Ok(self
            .executions_read()
            .docs
            .get(id)
            .map(|(doc, revision)| StoredExecution { doc: doc.clone(), revision: *revision }))
    }

    async fn list_executions(&self, status: Option<&str>) -> Result<Vec<StoredExecution>, StoreError> {
        let state = self.executions_read();
        let mut out: Vec<StoredExecution> = state
            .docs
            .values()
            .filter(|(doc, _)| status.is_none_or(|s| doc.status == s))
            .map(|(doc, revision)| StoredExecution { doc: doc.clone(), revision: *revision })
            .collect();
        out.sort_by(StoredExecution::listing_order);
        Ok(out)
    }

    async fn append_journal_entries(&self, records: &[JournalRecord]) -> Result<(), StoreError> {
        let mut state = self.executions_write();
        state.check_append(records)?;
        state.append(records);
        Ok(())
    }

    async fn journal(&self, execution_id: &str) -> Result<Vec<JournalRecord>, StoreError> {
        Ok(self.executions_read().journals.get(execution_id).cloned().unwrap_or_default())
    }

    async fn append_journal_and_put_execution(
        &self,
        records: &[JournalRecord],
        doc: ExecutionDoc,
        expected: Expected,
    ) -> Result<Revision, StoreError> {
        validate_execution_id(&doc.id)?;
        let mut state = self.executions_write();
        // All checked before anything is written.
        state.check_append(records)?;
        let revision = state.check_put(&doc, expected)?;
        state.append(records);
        state.put(doc, revision);
        Ok(revision)
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn get_state(&self, key: &str) -> Result<Option<StoredState>, StoreError> {
        let states = self.states.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(states.get(key).map(|(body, revision)| StoredState {
            key: key.to_owned(),
            body: body.clone(),
            revision: *revision,
        }))
    }

    async fn put_state(&self, key: &str, body: &serde_json::Value, expected: Expected) -> Result<Revision, StoreError> {
        validate_state_key(key)?;
        let mut states = self.states.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = states.get(key).map(|(_, revision)| *revision);
        check_expected(&format!("state {key}"), expected, found)?;
        let revision = Revision::after(found);
        states.insert(key.to_owned(), (body.clone(), revision));
        Ok(revision)
    }

    async fn list_state(&self, prefix: &str) -> Result<Vec<StoredState>, StoreError> {
        validate_state_key(prefix)?;
        let states = self.states.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = format!("{prefix}/");
        Ok(states
            .range(start.clone()..)
            .take_while(|(key, _)| key.starts_with(&start))
            .filter(|(key, _)| !key[start.len()..].contains('/'))
            .map(|(key, (body, revision))| StoredState { key: key.clone(), body: body.clone(), revision: *revision })
            .collect())
    }
}
