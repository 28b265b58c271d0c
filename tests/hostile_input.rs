//! Hostile input through the real binary: what an adversarial sweep found (issue 10) — special
//! files in a `file:` store, other applications' SQLite files, locked databases, oversized
//! and malformed inputs, overflowing durations, blank approver names. Every command here must
//! end (each run has a timeout), never panic, and say what is wrong with which file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use rusqlite::Connection;
use sha2::{Digest, Sha256};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/runs");
const PLAYBOOKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/playbooks");
const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
const FAILED_INVOICE: &str = "aea53804-c3ca-53ed-8fc6-47ff46e44c8e";

/// Long enough for a debug build on a loaded 2-core machine; a hang is what it catches.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch { dir: tempfile::tempdir().expect("temp dir") }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `salvage` inside the scratch directory: no colour, no inherited store or limit, a timeout.
    fn salvage(&self) -> Command {
        let mut command = Command::cargo_bin("salvage").expect("binary");
        command
            .current_dir(self.dir.path())
            .env_remove("SALVAGE_STORE")
            .env_remove("SALVAGE_MAX_RUN_BYTES")
            .env_remove("RUST_BACKTRACE")
            .env("NO_COLOR", "1")
            .timeout(COMMAND_TIMEOUT);
        command
    }

    /// A `file:` store directory `runs/` holding the example runs, as the reference writes it.
    fn file_store_with_examples(&self) -> PathBuf {
        let dir = self.path("runs");
        std::fs::create_dir_all(&dir).expect("runs dir");
        for entry in std::fs::read_dir(EXAMPLES).expect("examples") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
            }
        }
        dir
    }

    /// The examples imported into `sqlite:store.db`.
    fn sqlite_store_with_examples(&self) -> PathBuf {
        self.salvage().args(["--store", "sqlite:store.db", "import", EXAMPLES]).assert().success();
        self.path("store.db")
    }
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(mut command: Command) -> Outcome {
    let output = command.output().expect("salvage ran");
    let outcome = Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        !outcome.stderr.contains("panicked") && !outcome.stderr.contains("RUST_BACKTRACE"),
        "salvage panicked: {}",
        outcome.stderr
    );
    assert!(outcome.code.is_some(), "salvage was killed (timeout?): {}", outcome.stderr);
    outcome
}

fn example_ids() -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(EXAMPLES)
        .expect("examples")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.path().file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    ids.sort();
    ids
}

fn sha256_of(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    format!("{:x}", Sha256::digest(&bytes))
}

fn mkfifo(path: &Path) {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
    let status = unsafe { libc::mkfifo(name.as_ptr(), 0o600) };
    assert_eq!(status, 0, "mkfifo {}", path.display());
}

// -------------------------------------------------------------------------------------------
// Item 5: the file store reads only regular files, with a size limit.
// -------------------------------------------------------------------------------------------

#[test]
fn special_files_in_a_file_store_are_reported_by_name_and_never_hide_the_good_runs() {
    let scratch = Scratch::new();
    let dir = scratch.file_store_with_examples();
    mkfifo(&dir.join("fifo.json"));
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.json")).expect("symlink");
    std::os::unix::fs::symlink(dir.join("missing-target.json"), dir.join("dangling.json")).expect("symlink");
    // 3 GiB, sparse: costs no disk, and must cost no memory either.
    std::fs::File::create(dir.join("sparse.json")).and_then(|f| f.set_len(3 << 30)).expect("sparse");
    let store = format!("file:{}", dir.display());

    let listed = run({
        let mut c = scratch.salvage();
        c.args(["--store", &store, "runs", "-q"]);
        c
    });
    assert_eq!(listed.code, Some(3), "some records could not be read: {}", listed.stderr);
    let mut ids: Vec<&str> = listed.stdout.lines().collect();
    ids.sort();
    assert_eq!(ids, example_ids(), "every good run is still listed");
    for (file, why) in [
        ("fifo.json", "FIFO, not a regular file"),
        ("zero.json", "character device, not a regular file"),
        ("dangling.json", "symlink that leads nowhere"),
        ("sparse.json", "3221225472 bytes, over the limit of 268435456 bytes"),
    ] {
        let line = listed.stderr.lines().find(|line| line.contains(file)).unwrap_or_default();
        assert!(
            line.contains(&dir.join(file).display().to_string()) && line.contains(why),
            "{file}: {}",
            listed.stderr
        );
    }

    for args in [
        vec!["tree"],
        vec!["tree", "--json"],
        vec!["report", FAILED_INVOICE],
        vec!["plan", FAILED_INVOICE, "--playbooks", PLAYBOOKS, "--policies", POLICIES],
        vec![
            "apply",
            FAILED_INVOICE,
            "--dry-run",
            "--yes",
            "--as",
            "alice",
            "--playbooks",
            PLAYBOOKS,
            "--policies",
            POLICIES,
        ],
    ] {
        let outcome = run({
            let mut c = scratch.salvage();
            c.args(["--store", &store]).args(&args);
            c
        });
        assert!(outcome.code.is_some_and(|code| code != 2), "{args:?} ended: {}", outcome.stderr);
        assert!(!outcome.stdout.is_empty(), "{args:?} still serves the readable runs: {}", outcome.stderr);
    }
}

#[test]
fn the_run_size_limit_is_configurable_and_checked_before_reading() {
    let scratch = Scratch::new();
    let dir = scratch.file_store_with_examples();
    let store = format!("file:{}", dir.display());
    let limited = run({
        let mut c = scratch.salvage();
        c.args(["--store", &store, "runs", "-q"]).env("SALVAGE_MAX_RUN_BYTES", "1KiB");
        c
    });
    assert_eq!(limited.code, Some(3));
    assert!(limited.stderr.contains("over the limit of 1024 bytes"), "{}", limited.stderr);
    let refused = run({
        let mut c = scratch.salvage();
        c.args(["--store", &store, "runs"]).env("SALVAGE_MAX_RUN_BYTES", "lots");
        c
    });
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("SALVAGE_MAX_RUN_BYTES") && refused.stderr.contains("256MiB"),
        "{}",
        refused.stderr
    );
    // The limit applies to imports too.
    let import = run({
        let mut c = scratch.salvage();
        c.args(["--store", "sqlite:limited.db", "import", EXAMPLES]).env("SALVAGE_MAX_RUN_BYTES", "1KiB");
        c
    });
    assert_eq!(import.code, Some(2));
    assert!(import.stderr.contains("over the limit of 1024 bytes"), "{}", import.stderr);
    assert!(!scratch.path("limited.db").exists(), "nothing was imported");
}

#[test]
fn a_file_store_entry_with_an_invalid_id_is_named_by_its_file() {
    let scratch = Scratch::new();
    let dir = scratch.file_store_with_examples();
    let long_id = "r".repeat(210);
    let file = dir.join(format!("{long_id}.json"));
    std::fs::write(&file, format!("{{\"id\": \"{long_id}\", \"status\": \"failed\"}}")).expect("write");
    let outcome = run({
        let mut c = scratch.salvage();
        c.args(["--store", &format!("file:{}", dir.display()), "runs", "-q"]);
        c
    });
    assert_eq!(outcome.code, Some(3));
    let line = outcome.stderr.lines().find(|line| line.contains(&long_id)).unwrap_or_default();
    assert!(line.starts_with(&format!("error: {}", file.display())), "the file is named first: {}", outcome.stderr);
    assert!(line.contains("longer than 200 bytes"), "{line}");
}

#[test]
fn import_refuses_special_files_and_never_quotes_a_file_that_is_not_json() {
    let scratch = Scratch::new();
    let secret = scratch.path("secret.txt");
    std::fs::write(&secret, "root:x:0:0:root:/root:/bin/bash\nsecond line\n").expect("write");
    std::os::unix::fs::symlink(&secret, scratch.path("passwd.json")).expect("symlink");
    let quoted = run({
        let mut c = scratch.salvage();
        c.args(["import", "passwd.json"]);
        c
    });
    assert_eq!(quoted.code, Some(2));
    assert!(quoted.stderr.contains("passwd.json"), "{}", quoted.stderr);
    assert!(!quoted.stderr.contains("root:x"), "the content is not quoted: {}", quoted.stderr);

    let inputs = scratch.path("inputs");
    std::fs::create_dir(&inputs).expect("dir");
    mkfifo(&inputs.join("fifo.json"));
    std::os::unix::fs::symlink("/dev/zero", inputs.join("zero.json")).expect("symlink");
    std::os::unix::fs::symlink(inputs.join("nowhere"), inputs.join("dangling.json")).expect("symlink");
    let special = run({
        let mut c = scratch.salvage();
        c.args(["import", "inputs"]);
        c
    });
    assert_eq!(special.code, Some(2), "{}", special.stderr);
    for name in ["fifo.json", "zero.json", "dangling.json"] {
        assert!(special.stderr.contains(name), "{name}: {}", special.stderr);
    }
    assert!(!scratch.path(".salvage").exists(), "nothing imported, no store created");
}

// -------------------------------------------------------------------------------------------
// Item 7: reads never write.
// -------------------------------------------------------------------------------------------

/// Every command that only reads, with the arguments it needs.
fn read_commands() -> Vec<Vec<&'static str>> {
    vec![
        vec!["runs"],
        vec!["inspect", FAILED_INVOICE],
        vec!["tree"],
        vec!["report", FAILED_INVOICE],
        vec!["diff", FAILED_INVOICE, FAILED_INVOICE],
        vec!["export", FAILED_INVOICE, "-o", "exported.json"],
        vec!["correlate", FAILED_INVOICE],
        vec!["plan", FAILED_INVOICE, "--playbooks", PLAYBOOKS, "--policies", POLICIES],
        vec!["executions"],
        vec!["approvals"],
        vec!["status"],
        vec!["simulate", "--playbooks", PLAYBOOKS, "--policies", POLICIES],
        vec![
            "apply",
            FAILED_INVOICE,
            "--dry-run",
            "--yes",
            "--as",
            "alice",
            "--playbooks",
            PLAYBOOKS,
            "--policies",
            POLICIES,
        ],
    ]
}

fn foreign_database(path: &Path) {
    let conn = Connection::open(path).expect("open");
    conn.execute_batch(
        "CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount INTEGER);
         INSERT INTO invoices (amount) VALUES (10), (20);",
    )
    .expect("foreign schema");
}

#[test]
fn another_applications_sqlite_file_is_refused_and_left_untouched() {
    let scratch = Scratch::new();
    let path = scratch.path("billing.db");
    foreign_database(&path);
    let before = sha256_of(&path);
    for args in read_commands().into_iter().chain([vec!["import", EXAMPLES], vec!["resume", "exec-1"]]) {
        let outcome = run({
            let mut c = scratch.salvage();
            c.args(["--store", "sqlite:billing.db"]).args(&args);
            c
        });
        assert_eq!(outcome.code, Some(2), "{args:?}: {}", outcome.stderr);
        assert!(
            outcome.stderr.contains("billing.db is not a salvage store")
                && outcome.stderr.contains("tables salvage did not create (invoices)"),
            "{args:?}: {}",
            outcome.stderr
        );
    }
    assert_eq!(sha256_of(&path), before, "the file is byte for byte what it was");
    assert!(!scratch.path("billing.db-wal").exists(), "not switched to WAL");
    let conn = Connection::open(&path).expect("open");
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).expect("mode");
    assert_eq!(mode, "delete");
}

#[test]
fn read_commands_neither_migrate_nor_write_a_salvage_database() {
    let scratch = Scratch::new();
    let path = scratch.sqlite_store_with_examples();
    // Back to schema version 1 (runs only), as an older salvage left it.
    {
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(
            "DROP TABLE executions; DROP TABLE journal; DROP TABLE state;
             PRAGMA user_version = 1; PRAGMA application_id = 0; PRAGMA wal_checkpoint(TRUNCATE);",
        )
        .expect("downgrade");
    }
    let before = sha256_of(&path);
    for args in read_commands() {
        let outcome = run({
            let mut c = scratch.salvage();
            c.args(["--store", "sqlite:store.db"]).args(&args);
            c
        });
        assert!(outcome.code.is_some_and(|code| code <= 1), "{args:?}: {}", outcome.stderr);
    }
    assert_eq!(sha256_of(&path), before, "no read changed the database");
    let conn = Connection::open(&path).expect("open");
    let version: u32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0)).expect("version");
    assert_eq!(version, 1, "no migration ran");
    drop(conn);
    // A command that writes migrates it.
    scratch.salvage().args(["--store", "sqlite:store.db", "import", EXAMPLES]).assert().success();
    let conn = Connection::open(&path).expect("open");
    let version: u32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0)).expect("version");
    assert_eq!(version, 3);
}

#[test]
fn a_read_does_not_wait_for_a_writer_in_another_process() {
    let scratch = Scratch::new();
    let path = scratch.sqlite_store_with_examples();
    let mut writer = Connection::open(&path).expect("open");
    let tx = writer.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).expect("write lock");
    tx.execute("UPDATE runs SET status = status WHERE id = ?1", [FAILED_INVOICE]).expect("write");
    for args in [vec!["runs", "-q"], vec!["report", FAILED_INVOICE], vec!["executions"]] {
        let outcome = run({
            let mut c = scratch.salvage();
            c.args(["--store", "sqlite:store.db"]).args(&args);
            c
        });
        assert_eq!(outcome.code, Some(0), "{args:?} reads past the writer: {}", outcome.stderr);
    }
    tx.rollback().expect("rollback");
}

#[test]
fn read_commands_create_nothing_in_a_reference_file_store() {
    let scratch = Scratch::new();
    let dir = scratch.file_store_with_examples();
    let store = format!("file:{}", dir.display());
    for args in read_commands() {
        let outcome = run({
            let mut c = scratch.salvage();
            c.args(["--store", &store]).args(&args);
            c
        });
        assert!(outcome.code.is_some_and(|code| code <= 1), "{args:?}: {}", outcome.stderr);
    }
    assert!(!dir.join(".salvage").exists(), "no sidecar, no lock, no executions directory");
    // A write creates them.
    scratch
        .salvage()
        .args(["--store", &store, "apply", FAILED_INVOICE, "--yes", "--as", "alice"])
        .args(["--playbooks", PLAYBOOKS, "--policies", POLICIES])
        .assert()
        .code(predicates::ord::le(1));
    assert!(dir.join(".salvage").is_dir());
}
