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
//! A cached store is used only when its manifest carries the fingerprint of the generator
//! version, the size, the template set and the corpus file's SHA-256, and the store holds
//! exactly the manifest's number of runs; anything else is deleted and rebuilt. Stores are built
//! in a `.building` directory and renamed into place with their manifest, so an interrupted
//! build never looks complete.

#![allow(dead_code)] // Each bench target uses part of this module.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use salvage::model::Run;
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
}

impl Templates {
    fn tag(self) -> &'static str {
        match self {
            Templates::Full => "full",
            Templates::Slim => "slim",
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
    /// SHA-256 of the corpus file, for the fingerprint.
    digest: String,
}

fn load_corpus(which: Templates) -> Corpus {
    let path = corpus_dir().join("random/base-runs.jsonl");
    let bytes = fs::read(&path).unwrap_or_else(|e| {
        panic!("benchmarks need the conformance corpus: cannot read {} ({e}); set SALVAGE_CONFORMANCE", path.display())
    });
    let digest: String = Sha256::digest(&bytes).iter().map(|byte| format!("{byte:02x}")).collect();
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
    Corpus { templates, digest }
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

    /// A UUID-shaped id, pseudo-random so that index inserts are not sequential.
    fn fresh_id(&mut self) -> String {
        let (a, b) = (self.id_rng.next(), self.id_rng.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
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
    fn generate(mut self, size: usize, fingerprint: String, mut sink: impl FnMut(Vec<Run>)) -> Manifest {
        let mut manifest = Manifest {
            fingerprint,
            runs: 0,
            failed_runs: 0,
            families: 0,
            child_runs: 0,
            branches: 0,
            max_depth: 0,
            mean_record_bytes: 0,
            mean_file_bytes: 0,
            failed_sample: Vec::new(),
            export_sample: Vec::new(),
            family_roots: Vec::new(),
        };
        let (mut failed, mut all, mut roots) = (Vec::new(), Vec::with_capacity(size), Vec::new());
        let (mut record_bytes, mut file_bytes) = (0u64, 0u64);
        let mut batch = Vec::with_capacity(SAVE_BATCH);
        while manifest.runs < size {
            let members = self.family(size - manifest.runs);
            manifest.families += 1;
            roots.push((members.len(), members[0].id.clone()));
            for index in 0..members.len() {
                let run = self.run(&members, index);
                let member = &members[index];
                manifest.child_runs += usize::from(member.parent.is_some());
                manifest.branches += usize::from(member.branch_of.is_some());
                manifest.max_depth = manifest.max_depth.max(member.depth);
                if run.status == salvage::model::RunStatus::Failed {
                    failed.push(run.id.clone());
                }
                all.push(run.id.clone());
                record_bytes += serde_json::to_string(&run).map_or(0, |s| s.len() as u64);
                file_bytes += run.to_pretty_json().len() as u64;
                batch.push(run);
                if batch.len() == SAVE_BATCH {
                    sink(std::mem::replace(&mut batch, Vec::with_capacity(SAVE_BATCH)));
                }
            }
            manifest.runs += members.len();
        }
        if !batch.is_empty() {
            sink(batch);
        }
        manifest.failed_runs = failed.len();
        manifest.mean_record_bytes = record_bytes / size as u64;
        manifest.mean_file_bytes = file_bytes / size as u64;
        manifest.failed_sample = (0..SAMPLE).map(|i| failed[i * failed.len() / SAMPLE].clone()).collect();
        manifest.export_sample = (0..SAMPLE.min(size)).map(|i| all[i * size / SAMPLE.min(size)].clone()).collect();
        roots.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        manifest.family_roots = roots.into_iter().take(100).map(|(_, id)| id).collect();
        manifest
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
            let manifest = Generator::new(&corpus, size).generate(size, fingerprint, |batch| {
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
            Generator::new(&corpus, size).generate(size, fingerprint, |batch| {
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
    let manifest = Generator::new(&corpus, size).generate(
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
    let of = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    of(usage.ru_utime) + of(usage.ru_stime)
}
