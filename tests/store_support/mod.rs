//! Shared setup of the store conformance suite: the backends under test and the recorded
//! corpus.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use salvage::model::{Run, RunStatus};
use salvage::store::{RunStore, StoreSpec};
use serde_json::Value;
use tempfile::TempDir;

/// Generates one `#[tokio::test]` per backend for each shared test function
/// (`super::super::Backend` is the test file's `Backend`, this module's). A backend that is
/// not available here (PostgreSQL without a server) is skipped loudly, or fails when required.
macro_rules! on_backends {
    ($module:ident: $backends:tt => $($test:ident),* $(,)?) => {
        mod $module {
            $( on_backends!(@one $test $backends); )*
        }
    };
    (@one $test:ident [$($backend:ident),*]) => {
        mod $test {
            $(
                #[allow(non_snake_case)]
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $backend() {
                    if super::super::Backend::$backend.available() {
                        super::super::$test(super::super::Backend::$backend).await
                    }
                }
            )*
        }
    };
}

/// The backends every conformance test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    File,
    Sqlite,
    /// A fresh schema of the test database (`$SALVAGE_TEST_POSTGRES`).
    Postgres,
}

impl Backend {
    /// Whether the backend can be tested here (see `common/postgres.rs` for PostgreSQL).
    pub fn available(self) -> bool {
        self != Backend::Postgres || postgres::available()
    }
}

#[path = "../common/postgres.rs"]
pub mod postgres;

/// A fresh, empty store of one backend (in a temp dir that lives as long as the fixture).
pub struct Fixture {
    pub backend: Backend,
    pub store: Arc<dyn RunStore>,
    pub spec: StoreSpec,
    _dir: TempDir,
    /// The schema of a PostgreSQL store (dropped last).
    pub schema: Option<postgres::TestSchema>,
}

impl Fixture {
    pub async fn new(backend: Backend) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let schema = (backend == Backend::Postgres).then(postgres::TestSchema::create);
        let spec = match (backend, &schema) {
            (Backend::Memory, _) => StoreSpec::Memory,
            (Backend::File, _) => StoreSpec::File(dir.path().join("runs")),
            (Backend::Sqlite, _) => StoreSpec::Sqlite(dir.path().join("state").join("salvage.db")),
            (Backend::Postgres, Some(schema)) => schema.spec(),
            (Backend::Postgres, None) => unreachable!("a schema was created"),
        };
        let store = salvage::store::open(&spec).await.unwrap_or_else(|e| panic!("open {spec}: {e}"));
        Fixture { backend, store, spec, _dir: dir, schema }
    }

    /// Another store instance on the same files, as a second process would open it.
    pub async fn second_instance(&self) -> Arc<dyn RunStore> {
        assert_ne!(self.backend, Backend::Memory, "a memory store has no second instance");
        salvage::store::open(&self.spec).await.unwrap_or_else(|e| panic!("reopen {}: {e}", self.spec))
    }

    /// The directory of a file store.
    pub fn dir(&self) -> &Path {
        match &self.spec {
            StoreSpec::File(dir) => dir,
            StoreSpec::Sqlite(path) => path.parent().expect("db parent"),
            StoreSpec::Memory | StoreSpec::Postgres(_) => panic!("{} has no directory", self.spec),
        }
    }
}

/// A run with the given lineage and status.
pub fn run(id: &str, created_at: Option<&str>, root: Option<&str>, parent: Option<&str>, status: RunStatus) -> Run {
    let mut run = Run::new(id, created_at.unwrap_or_default());
    if created_at.is_none() {
        run.timestamps.created_at = None;
        run.timestamps.updated_at = None;
    }
    run.status = status;
    run.metadata.lineage.root_run_id = root.unwrap_or(id).to_owned();
    run.metadata.lineage.parent_run_id = parent.map(str::to_owned);
    run
}

#[path = "../common/corpus.rs"]
mod corpus;
#[allow(unused_imports)] // Not every test file that includes this module reads the corpus.
pub use corpus::corpus_dir;

/// One recorded store: its manifest and its run files.
pub struct CorpusStore {
    pub store_id: String,
    pub manifest: Value,
    pub runs: Vec<CorpusRun>,
}

pub struct CorpusRun {
    pub id: String,
    pub bytes: Vec<u8>,
    pub value: Value,
}

impl CorpusRun {
    pub fn run(&self) -> Run {
        Run::from_value(self.value.clone()).unwrap_or_else(|e| panic!("corpus run {}: {e}", self.id))
    }
}

pub fn corpus_stores(corpus: &Path) -> Vec<CorpusStore> {
    let mut store_dirs: Vec<PathBuf> = std::fs::read_dir(corpus.join("stores"))
        .expect("stores dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.is_dir())
        .collect();
    store_dirs.sort();
    store_dirs
        .into_iter()
        .map(|dir| {
            let manifest: Value =
                serde_json::from_slice(&std::fs::read(dir.join("store.json")).expect("store.json")).expect("manifest");
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("runs"))
                .expect("runs dir")
                .map(|entry| entry.expect("entry").path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
                .collect();
            files.sort();
            let runs = files
                .into_iter()
                .map(|path| {
                    let bytes = std::fs::read(&path).expect("run file");
                    let value: Value = serde_json::from_slice(&bytes).expect("run JSON");
                    let id = path.file_stem().and_then(|s| s.to_str()).expect("utf-8 name").to_owned();
                    CorpusRun { id, bytes, value }
                })
                .collect();
            CorpusStore { store_id: dir.file_name().and_then(|s| s.to_str()).expect("name").to_owned(), manifest, runs }
        })
        .collect()
}
