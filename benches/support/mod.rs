//! Stores of 1,000 to 1,000,000 runs for the benchmarks, made from the conformance corpus and
//! cached under `target/bench-stores/` between runs.
//!
//! Every run is a clone of one of the corpus runs (`random/base-runs.jsonl`, 81 runs of the
//! reference runtime) with a fresh id (every occurrence of the old id in the record, so step and
//! checkpoint ids follow), a creation time one second after the previous run, and its lineage
//! rewired into a generated family: a root alone, a root with children, a root with children and
//! grandchildren, or a deeper chain; a failed run sometimes gets a replay branch
//! (`branchOriginRunId` = the failed run, parent = the failed run's parent, as the reference's
//! `branchFromCheckpoint` does). Generation is deterministic (fixed seed per size), so a cached
//! store is the store the generator would build again.
//!
//! `Templates::Scenarios` builds stores the way the reference's speed figures were taken
//! (`../shared/reference/reference-speed.md`): whole conformance scenario stores
//! (`stores/<id>/runs/*.json`, 17 stores, 81 runs, ~17 KB of compact JSON per run) cloned with
//! fresh ids, ~30 % of the clones attached under a run of an earlier clone for depth. Every
//! run id of a store is replaced everywhere in the store's records, so lineage, replay ids
//! (`<source>:replay:<ms>`), step and checkpoint ids follow.
//!
//! A cached store is used only when its manifest carries the fingerprint of the generator
//! version, the size, the template set and the corpus file's SHA-256, and the store holds
//! exactly the manifest's number of runs; anything else is deleted and rebuilt. Stores are built
//! in a `.building` directory and renamed into place with their manifest, so an interrupted
//! build never looks complete.

#![allow(dead_code)] // Each bench target uses part of this module.

// Every bench target that uses this module measures in-process work (the store, the planner,
// the daemon) with the allocator the `salvage` binary runs with (src/main.rs), not glibc's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use salvage::model::Run;
use salvage::model::json::{iso_millis, parse_iso};
use salvage::store::{Expected, FileStore, MemoryStore, RunStore, SqliteStore};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Bump when the generated stores change shape, so caches built by older code are rebuilt.
const GENERATOR_VERSION: u32 = 1;

/// Runs saved per `save_all` while building.
const SAVE_BATCH: usize = 1000;

/// How many runs the per-size samples hold (reports, export).
pub const SAMPLE: usize = 1000;

/// Which corpus runs the clones are made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Templates {
    /// All 81 corpus runs, as recorded.
    Full,
    /// Only the corpus runs of at most 4,000 bytes (compact JSON): 20 runs, used for the
    /// million-run file store to keep it to a few GB of disk.
    Slim,
    /// Whole conformance scenario stores, cloned (the reference's benchmark stores).
    Scenarios,
}

impl Templates {
    fn tag(self) -> &'static str {
        match self {
            Templates::Full => "full",
            Templates::Slim => "slim",
            Templates::Scenarios => "scenario",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    File,
    Memory,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::File => "file",
            Backend::Memory => "memory",
        }
    }
}

/// What a generated store holds, beyond its runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub fingerprint: String,
    pub runs: usize,
    pub failed_runs: usize,
    pub families: usize,
    /// Runs whose parent is another run (children, grandchildren, deeper).
    pub child_runs: usize,
    /// Replay branches of failed runs.
    pub branches: usize,
    pub max_depth: usize,
    /// Mean size of a record as the SQLite store keeps it (compact JSON).
    pub mean_record_bytes: u64,
    /// Mean size of a record as the file store keeps it (`JSON.stringify(run, null, 2)`).
    pub mean_file_bytes: u64,
    /// `SAMPLE` failed runs spread over the store (repeated when the store has fewer).
    pub failed_sample: Vec<String>,
    /// `SAMPLE` distinct runs spread over the store, every status.
    pub export_sample: Vec<String>,
    /// The roots of the largest families, for subtree lookups.
    pub family_roots: Vec<String>,
}

/// The corpus folder: `$SALVAGE_CONFORMANCE`, default `../shared/conformance` next to the crate.
pub fn corpus_dir() -> PathBuf {
    match std::env::var_os("SALVAGE_CONFORMANCE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"),
    }
}

/// Where built stores are cached: `$SALVAGE_BENCH_STORES`, default `target/bench-stores`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SALVAGE_BENCH_STORES") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-stores")
}

/// One corpus run to clone.
struct Template {
    /// Compact JSON of the run.
    text: String,
    id: String,
    failed: bool,
}

struct Corpus {
    templates: Vec<Template>,
    /// The scenario stores (`Templates::Scenarios` only).
    scenarios: Vec<Scenario>,
    /// SHA-256 of the corpus file(s), for the fingerprint.
    digest: String,
}

/// One conformance scenario store: its runs as compact JSON, in file-name order.
struct Scenario {
    runs: Vec<Template>,
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Every `stores/<id>/runs/*.json` of the corpus, stores and runs in name order.
fn load_scenarios() -> Corpus {
    let stores_dir = corpus_dir().join("stores");
    let sorted = |dir: &Path| -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap_or_else(|e| {
                panic!(
                    "benchmarks need the conformance corpus: cannot read {} ({e}); set SALVAGE_CONFORMANCE",
                    dir.display()
                )
            })
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        paths.sort();
        paths
    };
    let mut hasher = Sha256::new();
    let mut scenarios = Vec::new();
    for store in sorted(&stores_dir).into_iter().filter(|path| path.join("runs").is_dir()) {
        let mut runs = Vec::new();
        for path in sorted(&store.join("runs")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            hasher.update(path.strip_prefix(&stores_dir).expect("under stores/").to_string_lossy().as_bytes());
            hasher.update(&bytes);
            let run: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            runs.push(Template {
                id: run["id"].as_str().expect("corpus runs have ids").to_owned(),
                failed: run["status"] == "failed",
                text: serde_json::to_string(&run).expect("a JSON value serialises"),
            });
        }
        scenarios.push(Scenario { runs });
    }
    assert!(!scenarios.is_empty(), "no scenario stores under {}", stores_dir.display());
    Corpus { templates: Vec::new(), scenarios, digest: hex(&hasher.finalize()) }
}

fn load_corpus(which: Templates) -> Corpus {
    if which == Templates::Scenarios {
        return load_scenarios();
    }
    let path = corpus_dir().join("random/base-runs.jsonl");
    let bytes = fs::read(&path).unwrap_or_else(|e| {
        panic!("benchmarks need the conformance corpus: cannot read {} ({e}); set SALVAGE_CONFORMANCE", path.display())
    });
    let digest = hex(&Sha256::digest(&bytes));
    let text = String::from_utf8(bytes).expect("base-runs.jsonl is UTF-8");
    let mut templates = Vec::new();
    for (number, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        let entry: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), number + 1));
        let run = &entry["run"];
        let compact = serde_json::to_string(run).expect("a JSON value serialises");
        if which == Templates::Slim && compact.len() > 4000 {
            continue;
        }
        templates.push(Template {
            id: run["id"].as_str().expect("corpus runs have ids").to_owned(),
            failed: run["status"] == "failed",
            text: compact,
        });
    }
    assert!(templates.iter().any(|t| t.failed), "the templates must include failed runs");
    Corpus { templates, scenarios: Vec::new(), digest }
}

/// splitmix64: small, deterministic, good enough to pick shapes and templates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn range(&mut self, low: usize, high_inclusive: usize) -> usize {
        low + self.below(high_inclusive - low + 1)
    }
}

/// One run of a family being planned.
struct Member {
    id: String,
    template: usize,
    parent: Option<usize>,
    branch_of: Option<usize>,
    depth: usize,
}

/// Generates `size` runs in families and hands them to `sink` in batches, in creation order.
struct Generator<'a> {
    corpus: &'a Corpus,
    rng: Rng,
    id_rng: Rng,
    created: u64,
}

const EPOCH_2026: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

impl<'a> Generator<'a> {
    fn new(corpus: &'a Corpus, size: usize) -> Generator<'a> {
        Generator { corpus, rng: Rng(0x5A17_A6E0 ^ size as u64), id_rng: Rng(0xB0D1E5 ^ size as u64), created: 0 }
    }

    fn fresh_id(&mut self) -> String {
        fresh_uuid(&mut self.id_rng)
    }

    fn template(&mut self) -> usize {
        self.rng.below(self.corpus.templates.len())
    }

    fn member(&mut self, parent: Option<(usize, usize)>, branch_of: Option<usize>) -> Member {
        let template = match branch_of {
            Some(_) => usize::MAX, // filled in by the caller
            None => self.template(),
        };
        Member {
            id: self.fresh_id(),
            template,
            parent: parent.map(|(index, _)| index),
            branch_of,
            depth: parent.map_or(1, |(_, depth)| depth + 1),
        }
    }

    /// Plans one family of at most `room` runs.
    fn family(&mut self, room: usize) -> Vec<Member> {
        let mut members = vec![self.member(None, None)];
        let roll = self.rng.below(100);
        let add = |generator: &mut Generator<'_>, members: &mut Vec<Member>, parent: usize| {
            let depth = members[parent].depth;
            let child = generator.member(Some((parent, depth)), None);
            members.push(child);
            members.len() - 1
        };
        if roll < 45 {
            // A root alone.
        } else if roll < 70 {
            for _ in 0..self.rng.range(1, 3) {
                add(self, &mut members, 0);
            }
        } else if roll < 90 {
            for _ in 0..self.rng.range(2, 3) {
                let child = add(self, &mut members, 0);
                for _ in 0..self.rng.range(0, 2) {
                    add(self, &mut members, child);
                }
            }
        } else {
            // A deeper chain (workflow → agent → delegated agent ...), a sibling here and there.
            let mut tip = 0;
            for _ in 0..self.rng.range(3, 6) {
                let next = add(self, &mut members, tip);
                if self.rng.below(3) == 0 {
                    add(self, &mut members, tip);
                }
                tip = next;
            }
        }
        // Replays of failed runs: same parent as the source, branch origin the source.
        for source in 0..members.len() {
            if self.corpus.templates[members[source].template].failed && self.rng.below(100) < 35 {
                let parent = members[source].parent.map(|p| (p, members[p].depth));
                let mut branch = self.member(parent, Some(source));
                branch.template = members[source].template;
                members.push(branch);
            }
        }
        members.truncate(room);
        members
    }

    fn created_at(&mut self) -> String {
        let at = time::OffsetDateTime::from_unix_timestamp(EPOCH_2026 + self.created as i64).expect("in range");
        self.created += 1;
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.000Z",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        )
    }

    /// The run of `members[index]`, cloned from its template.
    fn run(&mut self, members: &[Member], index: usize) -> Run {
        let member = &members[index];
        let template = &self.corpus.templates[member.template];
        let text = template.text.replace(&template.id, &member.id);
        let mut value: Value = serde_json::from_str(&text).expect("a template stays JSON after an id swap");
        let created_at = self.created_at();
        let record = value.as_object_mut().expect("runs are objects");
        let timestamps = record.entry("timestamps").or_insert_with(|| json!({}));
        if let Some(timestamps) = timestamps.as_object_mut() {
            timestamps.insert("createdAt".into(), Value::String(created_at.clone()));
            timestamps.insert("updatedAt".into(), Value::String(created_at));
        }
        let children: Vec<&str> = members
            .iter()
            .filter(|m| m.parent == Some(index) && m.branch_of.is_none())
            .map(|m| m.id.as_str())
            .collect();
        let lineage = json!({
            "rootRunId": members[0].id,
            "parentRunId": member.parent.map(|p| members[p].id.clone()),
            "childRunIds": children,
            "branchOriginRunId": member.branch_of.map(|s| members[s].id.clone()),
            "branchCheckpointId": member.branch_of.map(|s| format!("{}:checkpoint:1", members[s].id)),
        });
        let metadata = record.entry("metadata").or_insert_with(|| json!({}));
        if let Some(metadata) = metadata.as_object_mut() {
            metadata.insert("lineage".into(), lineage);
        }
        Run::from_value(value).expect("a cloned corpus run is a run")
    }

    /// Generates every run, calling `sink` with batches of at most [`SAVE_BATCH`].
    fn generate(mut self, size: usize, fingerprint: String, sink: impl FnMut(Vec<Run>)) -> Manifest {
        let mut tally = Tally::new(size, sink);
        while tally.runs < size {
            let members = self.family(size - tally.runs);
            tally.family(members.len(), &members[0].id);
            for index in 0..members.len() {
                let run = self.run(&members, index);
                let member = &members[index];
                tally.add(run, member.depth, member.branch_of.is_some());
            }
        }
        tally.finish(fingerprint)
    }
}

/// Counts what the generated runs hold (the manifest) and hands them to the sink in batches.
struct Tally<S: FnMut(Vec<Run>)> {
    size: usize,
    sink: S,
    batch: Vec<Run>,
    runs: usize,
    families: usize,
    child_runs: usize,
    branches: usize,
    max_depth: usize,
    record_bytes: u64,
    file_bytes: u64,
    failed: Vec<String>,
    all: Vec<String>,
    /// (family size, root id) of every family.
    roots: Vec<(usize, String)>,
}

impl<S: FnMut(Vec<Run>)> Tally<S> {
    fn new(size: usize, sink: S) -> Tally<S> {
        Tally {
            size,
            sink,
            batch: Vec::with_capacity(SAVE_BATCH),
            runs: 0,
            families: 0,
            child_runs: 0,
            branches: 0,
            max_depth: 0,
            record_bytes: 0,
            file_bytes: 0,
            failed: Vec::new(),
            all: Vec::with_capacity(size),
            roots: Vec::new(),
        }
    }

    fn family(&mut self, runs: usize, root: &str) {
        self.families += 1;
        self.roots.push((runs, root.to_owned()));
    }

    /// One run, `depth` 1 for a root; `branch` when it replays or branches another run.
    fn add(&mut self, run: Run, depth: usize, branch: bool) {
        self.runs += 1;
        self.child_runs += usize::from(run.parent_run_id().is_some());
        self.branches += usize::from(branch);
        self.max_depth = self.max_depth.max(depth);
        if run.status == salvage::model::RunStatus::Failed {
            self.failed.push(run.id.clone());
        }
        self.all.push(run.id.clone());
        self.record_bytes += serde_json::to_string(&run).map_or(0, |s| s.len() as u64);
        self.file_bytes += run.to_pretty_json().len() as u64;
        self.batch.push(run);
        if self.batch.len() == SAVE_BATCH {
            (self.sink)(std::mem::replace(&mut self.batch, Vec::with_capacity(SAVE_BATCH)));
        }
    }

    fn finish(mut self, fingerprint: String) -> Manifest {
        if !self.batch.is_empty() {
            (self.sink)(std::mem::take(&mut self.batch));
        }
        let size = self.size;
        let failed = &self.failed;
        self.roots.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        Manifest {
            fingerprint,
            runs: self.runs,
            failed_runs: failed.len(),
            families: self.families,
            child_runs: self.child_runs,
            branches: self.branches,
            max_depth: self.max_depth,
            mean_record_bytes: self.record_bytes / size as u64,
            mean_file_bytes: self.file_bytes / size as u64,
            failed_sample: (0..SAMPLE).map(|i| failed[i * failed.len() / SAMPLE].clone()).collect(),
            export_sample: (0..SAMPLE.min(size)).map(|i| self.all[i * size / SAMPLE.min(size)].clone()).collect(),
            family_roots: self.roots.into_iter().take(100).map(|(_, id)| id).collect(),
        }
    }
}

/// Builds a store from whole scenario stores, cloned (see the module documentation).
struct ScenarioGenerator<'a> {
    corpus: &'a Corpus,
    rng: Rng,
    id_rng: Rng,
    clones: i64,
}

/// The share of clones attached under a run of an earlier clone, in percent.
const ATTACHED_PERCENT: usize = 30;

impl<'a> ScenarioGenerator<'a> {
    fn new(corpus: &'a Corpus, size: usize) -> ScenarioGenerator<'a> {
        ScenarioGenerator {
            corpus,
            rng: Rng(0x5CE7_A210 ^ size as u64),
            id_rng: Rng(0xC1_0E5 ^ size as u64),
            clones: 0,
        }
    }

    /// One scenario store cloned: fresh ids everywhere, timestamps moved to this clone's slot.
    fn clone_scenario(&mut self) -> Vec<Value> {
        let scenario = &self.corpus.scenarios[self.rng.below(self.corpus.scenarios.len())];
        // Replay ids start with their source's id and change with it; longest first, so an id
        // that contains another is replaced whole.
        let mut renames: Vec<(&str, String)> = scenario
            .runs
            .iter()
            .filter(|run| !run.id.contains(':'))
            .map(|run| (run.id.as_str(), fresh_uuid(&mut self.id_rng)))
            .collect();
        renames.sort_by_key(|(old, _)| std::cmp::Reverse(old.len()));
        let shift = time::Duration::minutes(10 * self.clones);
        self.clones += 1;
        let earliest = scenario.runs.iter().filter_map(|run| created_at_of(&run.text)).min();
        scenario
            .runs
            .iter()
            .map(|template| {
                let mut text = template.text.clone();
                for (old, new) in &renames {
                    text = text.replace(old, new);
                }
                let mut run: Value = serde_json::from_str(&text).expect("a template stays JSON after an id swap");
                if let (Some(earliest), Some(timestamps)) = (earliest, run["timestamps"].as_object_mut()) {
                    for key in ["createdAt", "updatedAt"] {
                        let moved = timestamps
                            .get(key)
                            .and_then(Value::as_str)
                            .and_then(parse_iso)
                            .map(|at| EPOCH_2026_AT + shift + (at - earliest).max(time::Duration::ZERO));
                        if let Some(moved) = moved {
                            timestamps.insert(key.into(), Value::String(iso_millis(moved)));
                        }
                    }
                }
                run
            })
            .collect()
    }

    /// Generates every run, calling `sink` with batches of at most [`SAVE_BATCH`].
    fn generate(mut self, size: usize, fingerprint: String, sink: impl FnMut(Vec<Run>)) -> Manifest {
        let mut tally = Tally::new(size, sink);
        while tally.runs < size {
            // A family: one clone, then clones attached under its runs while the roll says so
            // (a geometric number, so ATTACHED_PERCENT of all clones are attached).
            let mut family = self.clone_scenario();
            while self.rng.below(100) < ATTACHED_PERCENT && family.len() < size - tally.runs {
                let mut clone = self.clone_scenario();
                let parent = self.rng.below(family.len());
                let parent_id = family[parent]["id"].as_str().expect("ids are strings").to_owned();
                let root_id =
                    family[parent]["metadata"]["lineage"]["rootRunId"].as_str().unwrap_or(&parent_id).to_owned();
                let clone_roots: Vec<String> = clone
                    .iter()
                    .filter(|run| run["metadata"]["lineage"]["parentRunId"].is_null())
                    .filter_map(|run| run["id"].as_str().map(str::to_owned))
                    .collect();
                for run in &mut clone {
                    let lineage = &mut run["metadata"]["lineage"];
                    let is_root = lineage["parentRunId"].is_null();
                    if lineage["rootRunId"].as_str().is_some_and(|root| clone_roots.iter().any(|r| r == root)) {
                        lineage["rootRunId"] = Value::String(root_id.clone());
                    }
                    if is_root {
                        lineage["parentRunId"] = Value::String(parent_id.clone());
                    }
                }
                if let Some(children) = family[parent]["metadata"]["lineage"]["childRunIds"].as_array_mut() {
                    children.extend(clone_roots.into_iter().map(Value::String));
                }
                family.extend(clone);
            }
            family.truncate(size - tally.runs);
            let depths = depths(&family);
            let root = family[0]["id"].as_str().expect("ids are strings").to_owned();
            tally.family(family.len(), &root);
            for (value, depth) in family.into_iter().zip(depths) {
                let branch = !value["metadata"]["lineage"]["branchOriginRunId"].is_null();
                tally.add(Run::from_value(value).expect("a cloned corpus run is a run"), depth, branch);
            }
        }
        tally.finish(fingerprint)
    }
}

/// Each run's depth in its family (1 for a run without a parent in the family).
fn depths(family: &[Value]) -> Vec<usize> {
    let parent_of: std::collections::HashMap<&str, &str> = family
        .iter()
        .filter_map(|run| Some((run["id"].as_str()?, run["metadata"]["lineage"]["parentRunId"].as_str()?)))
        .collect();
    family
        .iter()
        .map(|run| {
            let mut depth = 1;
            let mut at = run["id"].as_str().unwrap_or_default();
            while let Some(parent) = parent_of.get(at) {
                depth += 1;
                at = parent;
                if depth > family.len() {
                    break; // a cycle in foreign data; depth is only reported
                }
            }
            depth
        })
        .collect()
}

fn created_at_of(text: &str) -> Option<time::OffsetDateTime> {
    let run: Value = serde_json::from_str(text).ok()?;
    parse_iso(run["timestamps"]["createdAt"].as_str()?)
}

const EPOCH_2026_AT: time::OffsetDateTime = time::macros::datetime!(2026-01-01 00:00:00 UTC);

/// A UUID-shaped id, pseudo-random so that index inserts are not sequential.
fn fresh_uuid(rng: &mut Rng) -> String {
    let (a, b) = (rng.next(), rng.next());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// Every run of a store of `size` runs built from `templates`, handed to `sink` in batches.
fn generate(
    corpus: &Corpus,
    templates: Templates,
    size: usize,
    fingerprint: String,
    sink: impl FnMut(Vec<Run>),
) -> Manifest {
    match templates {
        Templates::Scenarios => ScenarioGenerator::new(corpus, size).generate(size, fingerprint, sink),
        Templates::Full | Templates::Slim => Generator::new(corpus, size).generate(size, fingerprint, sink),
    }
}

fn fingerprint(corpus: &Corpus, backend: Backend, size: usize, templates: Templates) -> String {
    format!("v{GENERATOR_VERSION}-{}-{size}-{}-{}", backend.name(), templates.tag(), &corpus.digest[..16])
}

fn read_manifest(dir: &Path) -> Option<Manifest> {
    serde_json::from_slice(&fs::read(dir.join("manifest.json")).ok()?).ok()
}

/// The number of runs a cached store actually holds.
fn count_runs(backend: Backend, dir: &Path) -> Option<usize> {
    match backend {
        Backend::Sqlite => {
            let conn =
                rusqlite::Connection::open_with_flags(dir.join("runs.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .ok()?;
            conn.query_row("SELECT COUNT(*) FROM runs", [], |row| row.get::<_, i64>(0)).ok().map(|n| n as usize)
        }
        Backend::File => Some(
            fs::read_dir(dir.join("runs"))
                .ok()?
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json") && !n.starts_with('.')))
                .count(),
        ),
        Backend::Memory => None,
    }
}

/// A store on disk, ready to open.
#[derive(Debug, Clone)]
pub struct DiskStore {
    pub backend: Backend,
    pub size: usize,
    /// `sqlite:...` / `file:...`, as the CLI takes it.
    pub spec: String,
    /// The database file or the runs directory.
    pub path: PathBuf,
    pub manifest: Manifest,
}

impl DiskStore {
    pub async fn open(&self) -> Box<dyn RunStore> {
        match self.backend {
            Backend::Sqlite => Box::new(SqliteStore::open(&self.path).await.expect("open the sqlite store")),
            Backend::File => {
                let store = FileStore::open(&self.path).await.expect("open the file store");
                // The per-instance index refresh belongs to opening, not to the first lookup.
                store.refresh().await.expect("refresh the file store index");
                Box::new(store)
            }
            Backend::Memory => unreachable!("memory stores are not on disk"),
        }
    }
}

/// The cached store of `size` runs, built (and cached) when missing or stale.
pub fn disk_store(backend: Backend, size: usize, templates: Templates) -> DiskStore {
    let corpus = load_corpus(templates);
    let fingerprint = fingerprint(&corpus, backend, size, templates);
    let dir = cache_dir().join(format!("{}-{size}-{}", backend.name(), templates.tag()));
    let store_path = |dir: &Path| match backend {
        Backend::Sqlite => dir.join("runs.db"),
        _ => dir.join("runs"),
    };
    if let Some(manifest) = read_manifest(&dir)
        && manifest.fingerprint == fingerprint
        && count_runs(backend, &dir) == Some(manifest.runs)
        && manifest.runs == size
    {
        let path = store_path(&dir);
        if backend == Backend::Sqlite {
            // A store cached by an older salvage is brought to this one's schema (read
            // commands never migrate), as `salvage migrate` would.
            runtime().block_on(SqliteStore::open(&path)).expect("migrate the cached sqlite store");
        }
        let spec = format!("{}:{}", backend.name(), path.display());
        return DiskStore { backend, size, spec, path, manifest };
    }
    eprintln!("building the {} store of {size} runs in {} ...", backend.name(), dir.display());
    let started = Instant::now();
    let building = dir.with_extension("building");
    let _ = fs::remove_dir_all(&building);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&building).expect("create the store cache directory");
    let path = store_path(&building);
    let runtime = runtime();
    let manifest = match backend {
        Backend::Sqlite => {
            let store = runtime.block_on(SqliteStore::open(&path)).expect("create the sqlite store");
            let manifest = generate(&corpus, templates, size, fingerprint, |batch| {
                runtime.block_on(store.save_all(&batch, Expected::Any)).expect("save a batch");
            });
            drop(store);
            manifest
        }
        Backend::File => {
            fs::create_dir_all(&path).expect("create the runs directory");
            // Written directly (what the reference's file store writes, without the per-file
            // fsync of a save): building a million-run store through `save` takes too long.
            // Indexing happens at the first lookup and is measured as "index build".
            generate(&corpus, templates, size, fingerprint, |batch| {
                for run in batch {
                    fs::write(path.join(format!("{}.json", run.id)), run.to_pretty_json()).expect("write a run file");
                }
            })
        }
        Backend::Memory => unreachable!("memory stores are not cached"),
    };
    fs::write(building.join("manifest.json"), serde_json::to_vec_pretty(&manifest).expect("manifest serialises"))
        .expect("write the manifest");
    fs::rename(&building, &dir).expect("move the built store into place");
    eprintln!("  built in {:.1?}", started.elapsed());
    let path = store_path(&dir);
    let spec = format!("{}:{}", backend.name(), path.display());
    DiskStore { backend, size, spec, path, manifest }
}

/// A memory store of `size` runs (not cached: it lives in the process).
pub fn memory_store(size: usize) -> (MemoryStore, Manifest) {
    let corpus = load_corpus(Templates::Full);
    let store = MemoryStore::new();
    let runtime = runtime();
    let manifest = generate(
        &corpus,
        Templates::Full,
        size,
        fingerprint(&corpus, Backend::Memory, size, Templates::Full),
        |batch| {
            runtime.block_on(store.save_all(&batch, Expected::Any)).expect("save a batch");
        },
    );
    (store, manifest)
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime")
}

/// `1.23 s`, `45.6 ms`, `789 µs`.
pub fn human(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs >= 1.0 {
        format!("{secs:.2} s")
    } else if secs >= 1e-3 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{:.0} µs", secs * 1e6)
    }
}

/// The sizes to run, from `SALVAGE_BENCH_SIZES` (comma-separated; empty for none), default
/// 1,000 / 10,000 / 100,000.
pub fn sizes() -> Vec<usize> {
    match std::env::var("SALVAGE_BENCH_SIZES") {
        Ok(text) => text
            .split(',')
            .map(|s| s.trim().replace('_', ""))
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().expect("SALVAGE_BENCH_SIZES: comma-separated numbers"))
            .collect(),
        Err(_) => vec![1_000, 10_000, 100_000],
    }
}

/// CPU time (user + system) this process has used so far, every thread included: a figure that
/// other work on the machine does not inflate the way it inflates wall time.
pub fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid rusage.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

/// What one run of the binary cost.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub wall: Duration,
    /// User + system CPU time of the child, every thread included.
    pub cpu: Duration,
    pub peak_rss_kib: i64,
}

/// Set when this bench binary runs as [`measure`]'s launcher.
const LAUNCHER: &str = "SALVAGE_BENCH_LAUNCHER";

/// Runs the `salvage` binary (`$SALVAGE_BENCH_BINARY`, default the one cargo built) with
/// `--store STORE ARGS`, stdout to /dev/null, and returns its wall time, CPU time and peak RSS.
/// `$SALVAGE_BENCH_PRELOAD` is preloaded when set. Panics when the command fails: a benchmark
/// of a failing command measures nothing.
///
/// The command is started by a fresh copy of this bench binary (see [`launcher`]): Linux
/// carries the peak RSS of the process that forks over `exec` into the child's `ru_maxrss`, so
/// a bench that has just built a store in memory would report its own peak for every job.
/// The launcher is small when it forks.
pub fn measure(store: &str, args: &[&str]) -> Measured {
    let binary = std::env::var_os("SALVAGE_BENCH_BINARY").unwrap_or_else(|| env!("CARGO_BIN_EXE_salvage").into());
    let output = Command::new(std::env::current_exe().expect("the bench binary's path"))
        .env(LAUNCHER, "1")
        .arg(binary)
        .arg("--store")
        .arg(store)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("start the launcher");
    let report = String::from_utf8_lossy(&output.stdout);
    let figures: Vec<i64> = report.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    assert!(
        output.status.success() && figures.len() == 4,
        "launcher for salvage --store {store} {} failed: {report}",
        args.join(" ")
    );
    assert_eq!(figures[3], 0, "salvage --store {store} {} failed (wait status {:#x})", args.join(" "), figures[3]);
    Measured {
        wall: Duration::from_nanos(figures[0] as u64),
        cpu: Duration::from_nanos(figures[1] as u64),
        peak_rss_kib: figures[2],
    }
}

/// The launcher side of [`measure`]: when this process was started as one, runs the command of
/// its arguments, waits for it with `wait4` (which reports the child's resource usage) and
/// prints `wall-ns cpu-ns peak-rss-kib wait-status`, then exits. Call first in `main`.
pub fn launcher() {
    if std::env::var_os(LAUNCHER).is_none() {
        return;
    }
    let mut args = std::env::args_os().skip(1);
    let program = args.next().expect("the launcher's program");
    let mut command = Command::new(program);
    command.args(args).env_remove(LAUNCHER).stdin(Stdio::null()).stdout(Stdio::null());
    if let Some(preload) = std::env::var_os("SALVAGE_BENCH_PRELOAD") {
        command.env("LD_PRELOAD", preload);
    }
    let started = Instant::now();
    // Reaped by wait4 below, which (unlike `Child::wait`) returns the child's resource usage.
    #[allow(clippy::zombie_processes)]
    let child = command.spawn().expect("start salvage");
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `child` is our unreaped child; wait4 fills `status` and `usage`.
    let (waited, usage) = unsafe {
        let waited = libc::wait4(pid, &mut status, 0, usage.as_mut_ptr());
        (waited, usage.assume_init())
    };
    let wall = started.elapsed();
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    let cpu = timeval(usage.ru_utime) + timeval(usage.ru_stime);
    // Linux reports ru_maxrss in KiB.
    println!("{} {} {} {status}", wall.as_nanos(), cpu.as_nanos(), usage.ru_maxrss);
    std::process::exit(0);
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// `123 MiB`.
pub fn mib(kib: i64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}
