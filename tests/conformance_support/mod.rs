//! Shared machinery of the conformance tests: where the recorded corpus is, which store
//! backends to run it on, how to load a recorded store, and a JSON tree comparator that
//! reports the path of every difference.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use async_trait::async_trait;
use salvage::model::Run;
use salvage::store::{
    Expected, FileStore, MemoryStore, Partial, PostgresStore, Revision, RunIndexEntry, RunQuery, RunStore, SqliteStore,
    StoreError, StoredRun,
};

#[path = "../common/corpus.rs"]
mod corpus;
pub use corpus::corpus_dir;

#[path = "../common/postgres.rs"]
pub mod postgres;

/// The recorded stores, sorted by id.
pub fn store_dirs(corpus: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpus.join("stores"))
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", corpus.display()))
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    dirs
}

pub type OpenedStore = Pin<Box<dyn Future<Output = Result<Arc<dyn RunStore>, StoreError>> + Send>>;

/// A store backend the corpus runs on. `open` gets a fresh empty directory it may use.
pub struct Backend {
    pub name: &'static str,
    pub open: fn(PathBuf) -> OpenedStore,
}

/// Every backend the conformance tests cover. Backends must not be told apart by the
/// surfaces: the corpus gives the same result on each.
pub fn backends() -> Vec<Backend> {
    vec![
        Backend {
            name: "memory",
            open: |_dir| Box::pin(async { Ok(Arc::new(MemoryStore::new()) as Arc<dyn RunStore>) }),
        },
        Backend {
            name: "file",
            open: |dir| {
                Box::pin(async move { Ok(Arc::new(FileStore::open(dir.join("runs")).await?) as Arc<dyn RunStore>) })
            },
        },
        Backend {
            name: "sqlite",
            open: |dir| {
                Box::pin(
                    async move { Ok(Arc::new(SqliteStore::open(dir.join("salvage.db")).await?) as Arc<dyn RunStore>) },
                )
            },
        },
    ]
}

/// PostgreSQL, each store in a fresh schema of the test database (dropped with the store);
/// `None` (after a loud note) when the server is not there, a panic when it is required.
pub fn postgres_backend() -> Option<Backend> {
    postgres::available().then_some(Backend {
        name: "postgres",
        open: |_dir| {
            Box::pin(async move {
                let schema = postgres::TestSchema::create();
                let store = PostgresStore::open(&schema.postgres_url()).await?;
                Ok(Arc::new(SchemaStore { store, _schema: schema }) as Arc<dyn RunStore>)
            })
        },
    })
}

/// A PostgreSQL store that drops its schema when it is dropped.
#[derive(Debug)]
struct SchemaStore {
    store: PostgresStore,
    _schema: postgres::TestSchema,
}

#[async_trait]
impl RunStore for SchemaStore {
    fn spec(&self) -> String {
        self.store.spec()
    }
    async fn get(&self, run_id: &str) -> Result<Option<StoredRun>, StoreError> {
        self.store.get(run_id).await
    }
    async fn get_many(&self, run_ids: &[String]) -> Result<Partial<StoredRun>, StoreError> {
        self.store.get_many(run_ids).await
    }
    async fn save(&self, run: &Run, expected: Expected) -> Result<Revision, StoreError> {
        self.store.save(run, expected).await
    }
    async fn save_all(&self, runs: &[Run], expected: Expected) -> Result<Vec<Revision>, StoreError> {
        self.store.save_all(runs, expected).await
    }
    async fn list(&self, query: &RunQuery) -> Result<Partial<RunIndexEntry>, StoreError> {
        self.store.list(query).await
    }
    async fn subtree(&self, root_id: &str) -> Result<Partial<RunIndexEntry>, StoreError> {
        self.store.subtree(root_id).await
    }
    async fn list_one(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        self.store.list_one(run_id).await
    }
    async fn current_entry(&self, run_id: &str) -> Result<Option<RunIndexEntry>, StoreError> {
        self.store.current_entry(run_id).await
    }
    async fn catch_up(&self) -> Result<(), StoreError> {
        self.store.catch_up().await
    }
}

/// The in-memory backend alone, for corpora of many tiny stores (the surfaces do not depend
/// on the backend: the store conformance suite proves the backends equivalent).
pub fn memory_backend() -> Backend {
    backends().remove(0)
}

pub fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The runs of a recorded store (`runs/*.json`), sorted by file name.
pub fn recorded_runs(store_dir: &Path) -> Vec<Run> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(store_dir.join("runs"))
        .unwrap_or_else(|e| panic!("cannot list runs of {}: {e}", store_dir.display()))
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|file| Run::from_value(read_json(file)).unwrap_or_else(|e| panic!("{}: {e}", file.display())))
        .collect()
}

/// Opens a fresh store of `backend` in `dir` and saves every run of the recorded store in it.
pub async fn load_store(backend: &Backend, dir: &Path, store_dir: &Path) -> Arc<dyn RunStore> {
    let store = (backend.open)(dir.to_path_buf())
        .await
        .unwrap_or_else(|e| panic!("cannot open a {} store in {}: {e}", backend.name, dir.display()));
    let runs = recorded_runs(store_dir);
    store
        .save_all(&runs, Expected::Absent)
        .await
        .unwrap_or_else(|e| panic!("cannot load {} into the {} store: {e}", store_dir.display(), backend.name));
    store
}

/// How a volatile field is checked instead of compared.
#[derive(Debug, Clone)]
pub enum Check {
    /// Not compared at all.
    Skip,
    /// A `toISOString()` timestamp (`2026-11-29T05:15:44.664Z`).
    IsoTimestamp,
    /// `null` where the expected value is `null`, else an ISO timestamp.
    TimestampOrNull,
    /// `^<source>:partial:[0-9]+$`.
    PartialRunId { source: String },
}

/// One difference between an expected and an actual JSON tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// `$`-rooted path, e.g. `$.summary.steps[2].durationMs`.
    pub path: String,
    pub detail: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.detail)
    }
}

/// Compares `actual` with `expected` as trees:
/// - object keys must match exactly (an absent key is not a `null` one), in the same order;
/// - arrays are compared in order;
/// - numbers numerically;
/// - `volatile(relative_path)` can replace the comparison of a field by a [`Check`] (paths
///   are relative to the root, dotted, with `[i]` for array elements, e.g. `run.timestamps.createdAt`);
/// - an `error: {name, message}` whose name is a JavaScript engine error (`TypeError`,
///   `RangeError`) is compared by name only.
pub fn compare_json(expected: &Value, actual: &Value, volatile: &dyn Fn(&str) -> Option<Check>) -> Vec<Difference> {
    let mut out = Vec::new();
    walk(expected, actual, "", volatile, &mut out);
    out
}

fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 160 { format!("{}…", text.chars().take(160).collect::<String>()) } else { text }
}

fn full_path(relative: &str) -> String {
    if relative.is_empty() {
        "$".to_owned()
    } else if relative.starts_with('[') {
        format!("${relative}")
    } else {
        format!("$.{relative}")
    }
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

fn walk(
    expected: &Value,
    actual: &Value,
    path: &str,
    volatile: &dyn Fn(&str) -> Option<Check>,
    out: &mut Vec<Difference>,
) {
    fn differ(out: &mut Vec<Difference>, path: &str, detail: String) {
        out.push(Difference { path: full_path(path), detail });
    }
    if let Some(check) = volatile(path) {
        if let Some(problem) = apply_check(&check, expected, actual) {
            differ(out, path, problem);
        }
        return;
    }
    match (expected, actual) {
        (Value::Object(expected_map), Value::Object(actual_map)) => {
            let engine_error = path.ends_with("error")
                && matches!(expected_map.get("name").and_then(Value::as_str), Some("TypeError" | "RangeError"));
            for key in expected_map.keys().filter(|key| !actual_map.contains_key(*key)) {
                differ(out, path, format!("missing key {key:?} (expected {})", shown(&expected_map[key])));
            }
            for key in actual_map.keys().filter(|key| !expected_map.contains_key(*key)) {
                differ(out, path, format!("unexpected key {key:?} (found {})", shown(&actual_map[key])));
            }
            let expected_order: Vec<&String> =
                expected_map.keys().filter(|key| actual_map.contains_key(*key)).collect();
            let actual_order: Vec<&String> = actual_map.keys().filter(|key| expected_map.contains_key(*key)).collect();
            if expected_order != actual_order {
                differ(out, path, format!("key order differs: expected {expected_order:?}, found {actual_order:?}"));
            }
            for (key, expected_value) in expected_map {
                if engine_error && key == "message" {
                    continue;
                }
                if let Some(actual_value) = actual_map.get(key) {
                    walk(expected_value, actual_value, &child_path(path, key), volatile, out);
                }
            }
        }
        (Value::Array(expected_items), Value::Array(actual_items)) => {
            if expected_items.len() != actual_items.len() {
                differ(out, path, format!("expected {} elements, found {}", expected_items.len(), actual_items.len()));
            }
            for (index, (expected_item, actual_item)) in expected_items.iter().zip(actual_items).enumerate() {
                walk(expected_item, actual_item, &format!("{path}[{index}]"), volatile, out);
            }
        }
        (Value::Number(expected_number), Value::Number(actual_number)) => {
            if expected_number.as_f64() != actual_number.as_f64() {
                differ(out, path, format!("expected {expected_number}, found {actual_number}"));
            }
        }
        _ => {
            if expected != actual {
                differ(out, path, format!("expected {}, found {}", shown(expected), shown(actual)));
            }
        }
    }
}

fn apply_check(check: &Check, expected: &Value, actual: &Value) -> Option<String> {
    match check {
        Check::Skip => None,
        Check::IsoTimestamp => match actual.as_str() {
            Some(text) if is_iso_timestamp(text) => None,
            _ => Some(format!("expected an ISO-8601 timestamp, found {}", shown(actual))),
        },
        Check::TimestampOrNull => match (expected, actual) {
            (Value::Null, Value::Null) => None,
            (Value::Null, other) => Some(format!("expected null, found {}", shown(other))),
            (_, Value::String(text)) if is_iso_timestamp(text) => None,
            (_, other) => Some(format!("expected an ISO-8601 timestamp, found {}", shown(other))),
        },
        Check::PartialRunId { source } => match actual.as_str().and_then(|id| id.strip_prefix(source.as_str())) {
            Some(rest) if rest.strip_prefix(":partial:").is_some_and(all_digits) => None,
            _ => Some(format!("expected an id matching ^{source}:partial:[0-9]+$, found {}", shown(actual))),
        },
    }
}

fn all_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` that parses as a date.
pub fn is_iso_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    let shape_ok = bytes.len() == 24
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            4 | 7 => *byte == b'-',
            10 => *byte == b'T',
            13 | 16 => *byte == b':',
            19 => *byte == b'.',
            23 => *byte == b'Z',
            _ => byte.is_ascii_digit(),
        });
    shape_ok && salvage::model::json::parse_iso(text).is_some()
}

/// Splits a rendered forest into one block per root (a root line and the lines below it).
pub fn render_blocks(text: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    for line in text.split('\n') {
        let is_child = line.starts_with(['├', '└', '│', ' ']);
        match blocks.last_mut() {
            Some(block) if is_child => {
                block.push('\n');
                block.push_str(line);
            }
            _ => blocks.push(line.to_owned()),
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn none(_: &str) -> Option<Check> {
        None
    }

    #[test]
    fn the_comparator_reports_every_difference_with_its_path() {
        let expected = json!({"a": 1, "b": [1, {"c": null}], "d": "x", "order": {"p": 1, "q": 2}});
        let actual = json!({"a": 1.0, "b": [1, {}], "e": "x", "order": {"q": 2, "p": 1}});
        let differences = compare_json(&expected, &actual, &none);
        let paths: Vec<&str> = differences.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["$", "$", "$.b[1]", "$.order"], "{differences:#?}");
        assert!(differences[0].detail.contains("missing key \"d\""));
        assert!(differences[1].detail.contains("unexpected key \"e\""));
        assert!(differences[2].detail.contains("missing key \"c\""), "absent is not null");
        assert!(differences[3].detail.contains("key order"));
        assert!(compare_json(&json!([0.1, 2]), &json!([0.1, 2.0]), &none).is_empty());
        assert_eq!(compare_json(&json!([1]), &json!([1, 2]), &none).len(), 1);
    }

    #[test]
    fn volatile_fields_are_pattern_checked() {
        let rules = |path: &str| match path {
            "at" => Some(Check::IsoTimestamp),
            "id" => Some(Check::PartialRunId { source: "r1".into() }),
            _ => None,
        };
        let expected = json!({"at": "2026-01-01T00:00:00.000Z", "id": "r1:partial:1"});
        assert!(
            compare_json(&expected, &json!({"at": "2030-05-06T07:08:09.010Z", "id": "r1:partial:99"}), &rules)
                .is_empty()
        );
        assert_eq!(compare_json(&expected, &json!({"at": "yesterday", "id": "r2:partial:1"}), &rules).len(), 2);
        assert!(!is_iso_timestamp("2026-13-01T00:00:00.000Z"));
    }

    #[test]
    fn engine_error_messages_are_not_compared() {
        let expected =
            json!({"error": {"name": "TypeError", "message": "Cannot read properties of null (reading 'id')"}});
        let actual = json!({"error": {"name": "TypeError", "message": "run \"r\": `steps[1]` is null"}});
        assert!(compare_json(&expected, &actual, &none).is_empty());
        let library = json!({"error": {"name": "Error", "message": "Run \"x\" not found."}});
        assert_eq!(compare_json(&library, &json!({"error": {"name": "Error", "message": "other"}}), &none).len(), 1);
    }

    #[test]
    fn render_blocks_split_at_roots() {
        let blocks = render_blocks("A [x]\n├─ B [y]\n│  └─ C [z]\n└─ D [w]\nE [v]");
        assert_eq!(blocks, ["A [x]\n├─ B [y]\n│  └─ C [z]\n└─ D [w]", "E [v]"]);
    }
}
