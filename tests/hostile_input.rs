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
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
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
        vec!["incidents"],
        vec!["tree", "--lineage"],
        vec!["status"],
        vec!["simulate", "--against", env!("CARGO_MANIFEST_DIR"), "--playbooks", PLAYBOOKS, "--policies", POLICIES],
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
    // Commands that write load the shipped sets before they open the store.
    std::fs::write(scratch.path("salvage.yaml"), format!("playbooks: {PLAYBOOKS}\npolicies: {POLICIES}\n"))
        .expect("config");
    let before = sha256_of(&path);
    for args in read_commands().into_iter().chain([
        vec!["import", EXAMPLES],
        vec!["resume", "exec-1"],
        vec!["approve", "exec-1", "ask", "--as", "bob"],
    ]) {
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
            "DROP TABLE executions; DROP TABLE journal; DROP TABLE state; DROP TABLE tree_leaves;
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
    assert_eq!(version, 4);
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

// -------------------------------------------------------------------------------------------
// Item 2: an error past column 65,535 is drawn, never a panic.
// -------------------------------------------------------------------------------------------

/// A playbook that compiles, with `{steps}` as its steps.
fn playbook(steps: &str) -> String {
    format!(
        "playbook: demo\nversion: 1\ndescription: demo\nmatch: {{ incident: any }}\nstart: a\nsteps:\n{steps}ends:\n  done: {{ outcome: resolved, description: ok }}\n"
    )
}

const ONE_STEP: &str = "  a:\n    action: inspect_report\n    description: look\n    next: done\n";

#[test]
fn an_error_past_column_65535_is_drawn_not_a_panic() {
    let scratch = Scratch::new();
    // A minified run record over 64 KiB on one line, its closing brace missing.
    let record = serde_json::json!({"id": "big", "status": "failed", "input": {"blob": "x".repeat(70_000)}});
    let text = record.to_string();
    std::fs::write(scratch.path("big.json"), &text[..text.len() - 1]).expect("write");
    let import = run({
        let mut c = scratch.salvage();
        c.args(["import", "big.json"]);
        c
    });
    assert_eq!(import.code, Some(2));
    // serde_json puts the end of input at the last character.
    assert!(import.stderr.contains(&format!("big.json:1:{}", text.len() - 1)), "{}", import.stderr);
    assert!(import.stderr.lines().all(|line| line.len() < 2_000), "the 70 KB line is cut: {}", import.stderr.len());

    // A 65,536-character description, and an error after it on the same line.
    let dir = scratch.path("playbooks");
    std::fs::create_dir(&dir).expect("dir");
    let long = "d".repeat(65_536);
    let steps = format!("  a: {{ action: inspect_report, description: {long}, nxt: done }}\n");
    std::fs::write(dir.join("long.yaml"), playbook(&steps)).expect("write");
    std::fs::write(
        dir.join("described.yaml"),
        playbook(ONE_STEP).replace("description: demo", &format!("description: {long}\npriority: x")),
    )
    .expect("write");
    for json in [false, true] {
        let check = run({
            let mut c = scratch.salvage();
            c.args(["check", "--playbooks", "playbooks"]);
            if json {
                c.arg("--json");
            }
            c
        });
        assert_eq!(check.code, Some(1), "{}", check.stderr);
        let all = format!("{}{}", check.stdout, check.stderr);
        assert!(all.contains("unknown field `nxt`") && all.contains("P005"), "{all}");
        assert!(all.contains("P003"), "the priority after the long description: {all}");
    }
}

// -------------------------------------------------------------------------------------------
// Item 4: durations are bounded where they are parsed.
// -------------------------------------------------------------------------------------------

#[test]
fn durations_over_the_maximum_are_refused_by_check_with_their_position() {
    let scratch = Scratch::new();
    let dir = scratch.path("playbooks");
    std::fs::create_dir(&dir).expect("dir");
    let steps = "  a:\n    action: request_approval\n    description: ask\n    timeout: 3650000d\n    on: { approved: w, denied: done, timeout: done }\n  w:\n    action: wait\n    description: wait\n    duration: 18446744073709551615ms\n    next: done\n";
    std::fs::write(dir.join("forever.yaml"), playbook(steps)).expect("write");
    let check = run({
        let mut c = scratch.salvage();
        c.args(["check", "--playbooks", "playbooks", "--json"]);
        c
    });
    assert_eq!(check.code, Some(1), "{}", check.stderr);
    let diagnostics: serde_json::Value = serde_json::from_str(&check.stdout).expect("json");
    let too_long: Vec<(u64, u64, &str)> = diagnostics
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["message"].as_str().is_some_and(|m| m.contains("longer than the maximum of 366d")))
        .map(|d| (d["line"].as_u64().unwrap_or(0), d["column"].as_u64().unwrap_or(0), d["code"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(too_long, [(10, 14, "P004"), (15, 15, "P004")], "{diagnostics:#}");
    // The text form names file:line:col.
    let text = run({
        let mut c = scratch.salvage();
        c.args(["check", "--playbooks", "playbooks"]);
        c
    });
    assert!(text.stderr.contains("playbooks/forever.yaml:10:14"), "{}", text.stderr);

    // salvage.yaml's durations too.
    std::fs::write(scratch.path("salvage.yaml"), "approvals:\n  default_timeout: 3650000d\n").expect("write");
    let config = run({
        let mut c = scratch.salvage();
        c.arg("runs");
        c
    });
    assert_eq!(config.code, Some(2), "{}", config.stderr);
    assert!(
        config.stderr.contains("salvage.yaml:2:20") && config.stderr.contains("longer than the maximum of 366d"),
        "{}",
        config.stderr
    );
}

// -------------------------------------------------------------------------------------------
// Items 6 and 8: playbook and policy files are read only when regular, with their size checked
// first; a dangling or looping symlink is an error.
// -------------------------------------------------------------------------------------------

#[test]
fn special_and_dangling_playbook_and_policy_files_are_errors_of_check() {
    let scratch = Scratch::new();
    let playbooks = scratch.path("playbooks");
    let policies = scratch.path("policies");
    std::fs::create_dir(&playbooks).expect("dir");
    std::fs::create_dir(&policies).expect("dir");
    std::fs::write(playbooks.join("good.yaml"), playbook(ONE_STEP)).expect("write");
    std::fs::write(policies.join("good.rhai"), "fn approvers(step, ctx) { [\"oncall-sre\"] }\n").expect("write");
    std::os::unix::fs::symlink(scratch.path("gone.yaml"), playbooks.join("fallback.yaml")).expect("symlink");
    std::os::unix::fs::symlink(playbooks.join("loop.yaml"), playbooks.join("loop.yaml")).expect("symlink");
    std::os::unix::fs::symlink(scratch.path("gone.rhai"), policies.join("classify.rhai")).expect("symlink");
    mkfifo(&playbooks.join("fifo.yaml"));
    mkfifo(&policies.join("fifo.rhai"));
    std::fs::File::create(playbooks.join("sparse.yaml")).and_then(|f| f.set_len(3 << 30)).expect("sparse");
    std::fs::File::create(policies.join("sparse.rhai")).and_then(|f| f.set_len(3 << 30)).expect("sparse");
    let check = run({
        let mut c = scratch.salvage();
        c.args(["check", "--playbooks", "playbooks", "--policies", "policies", "--json"]);
        c
    });
    assert_eq!(check.code, Some(1), "{}", check.stderr);
    let diagnostics: serde_json::Value = serde_json::from_str(&check.stdout).expect("json");
    let found = |file: &str| {
        diagnostics
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["file"].as_str().is_some_and(|f| f.ends_with(file)))
            .map(|d| (d["code"].as_str().unwrap_or("").to_owned(), d["message"].as_str().unwrap_or("").to_owned()))
    };
    for (file, code, why) in [
        ("playbooks/fallback.yaml", "P012", "symlink that leads nowhere"),
        ("playbooks/loop.yaml", "P012", "symlink that leads nowhere"),
        ("playbooks/fifo.yaml", "P012", "FIFO"),
        ("playbooks/sparse.yaml", "P002", "3221225472 bytes; playbooks are limited to 2097152 bytes"),
        ("policies/classify.rhai", "R006", "symlink that leads nowhere"),
        ("policies/fifo.rhai", "R006", "FIFO"),
        ("policies/sparse.rhai", "R006", "3221225472 bytes; policy files are limited to 524288 bytes"),
    ] {
        let (found_code, message) = found(file).unwrap_or_else(|| panic!("{file} is not reported: {diagnostics:#}"));
        assert_eq!(found_code, code, "{file}: {message}");
        assert!(message.contains(why), "{file}: {message}");
    }
}

// -------------------------------------------------------------------------------------------
// Item 9: approver names are validated on every path.
// -------------------------------------------------------------------------------------------

/// The shipped policies in `dir`, with `approvers` returning `names`.
fn policies_with_approvers(dir: &Path, names: &str) {
    std::fs::create_dir_all(dir).expect("dir");
    for entry in std::fs::read_dir(POLICIES).expect("policies") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rhai") {
            let mut text = std::fs::read_to_string(&path).expect("read");
            if let Some(start) = text.find("fn approvers(step, ctx) {") {
                let end = text[start..].find("\n}\n").map_or(text.len(), |end| start + end + 3);
                text.replace_range(start..end, &format!("fn approvers(step, ctx) {{ {names} }}\n"));
            }
            std::fs::write(dir.join(path.file_name().expect("name")), text).expect("write");
        }
    }
}

#[test]
fn blank_approver_names_are_refused_from_the_policy_the_config_and_the_command_line() {
    let scratch = Scratch::new();
    scratch.sqlite_store_with_examples();
    policies_with_approvers(&scratch.path("blank-policies"), r#"["", " "]"#);
    let plan = run({
        let mut c = scratch.salvage();
        c.args(["--store", "sqlite:store.db", "plan", FAILED_INVOICE, "--json"]).args([
            "--playbooks",
            PLAYBOOKS,
            "--policies",
            "blank-policies",
        ]);
        c
    });
    assert_eq!(plan.code, Some(0), "{}", plan.stderr);
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).expect("plan json");
    assert_eq!(plan["failClosed"], true);
    let asking: Vec<&serde_json::Value> =
        plan["steps"].as_array().into_iter().flatten().filter(|s| s["requiresApproval"] == true).collect();
    assert!(!asking.is_empty());
    for step in asking {
        assert_eq!(step["approvers"]["names"], serde_json::json!([]), "nobody can approve: {step:#}");
        let decision = step["explanation"].as_array().into_iter().flatten().find(|e| e["hook"] == "approvers");
        if let Some(decision) = decision {
            assert!(
                decision["error"].as_str().is_some_and(|e| e.contains("invalid approver") && e.contains("empty")),
                "{decision:#}"
            );
        }
    }

    for name in ["", " ", "\t"] {
        for args in [
            vec!["approve", "exec-1", "ask_operator", "--as", name],
            vec!["deny", "exec-1", "ask_operator", "--as", name],
            vec!["confirm", "exec-1", "ask_operator", "--as", name, "--retry"],
            vec!["apply", FAILED_INVOICE, "--yes", "--as", name],
        ] {
            let answer = run({
                let mut c = scratch.salvage();
                c.args(["--store", "sqlite:store.db"]).args(&args);
                c
            });
            assert_eq!(answer.code, Some(2), "{args:?}: {}", answer.stderr);
            assert!(answer.stderr.contains("--as"), "a usage error about --as: {}", answer.stderr);
        }
    }

    std::fs::write(scratch.path("salvage.yaml"), "approvals:\n  default_approvers: [oncall-sre, \"\", \" \"]\n")
        .expect("write");
    let config = run({
        let mut c = scratch.salvage();
        c.args(["--store", "sqlite:store.db", "runs"]);
        c
    });
    assert_eq!(config.code, Some(2), "{}", config.stderr);
    assert!(config.stderr.contains("salvage.yaml:2:35"), "{}", config.stderr);
}

// -------------------------------------------------------------------------------------------
// Item 12: the smaller ones.
// -------------------------------------------------------------------------------------------

#[test]
fn tree_and_report_exit_like_runs_on_an_unreadable_record_and_warn_once() {
    let scratch = Scratch::new();
    let dir = scratch.file_store_with_examples();
    std::fs::write(dir.join("broken.json"), "{\"id\": \"broken\",\n \"status\": ").expect("write");
    let store = format!("file:{}", dir.display());
    for args in [
        vec!["runs"],
        vec!["tree"],
        vec!["tree", "--json"],
        vec!["report", FAILED_INVOICE],
        vec!["report", FAILED_INVOICE, "--json"],
    ] {
        let outcome = run({
            let mut c = scratch.salvage();
            c.args(["--store", &store]).args(&args);
            c
        });
        assert_eq!(outcome.code, Some(3), "{args:?}: {}", outcome.stderr);
        assert!(!outcome.stdout.is_empty(), "{args:?} still shows what it could read");
        let mentions = outcome.stderr.lines().filter(|line| line.contains("broken.json:2:")).count();
        assert!(mentions <= 1, "{args:?} names the record once: {}", outcome.stderr);
    }
}

#[test]
fn a_list_field_of_the_wrong_type_is_refused_naming_the_field() {
    let scratch = Scratch::new();
    std::fs::write(scratch.path("oops.json"), r#"{"id": "oops", "status": "failed", "steps": "oops"}"#).expect("write");
    let import = run({
        let mut c = scratch.salvage();
        c.args(["import", "oops.json"]);
        c
    });
    assert_eq!(import.code, Some(2));
    assert!(
        import.stderr.contains("oops.json: not a run record: `steps` must be an array, found a string"),
        "{}",
        import.stderr
    );
}

#[test]
fn cr_only_line_breaks_give_the_right_line_and_column() {
    let scratch = Scratch::new();
    let dir = scratch.path("playbooks");
    std::fs::create_dir(&dir).expect("dir");
    let steps = "  a:\n    action: inspect_report\n    description: look\n    nxt: done\n";
    std::fs::write(dir.join("mac.yaml"), playbook(steps).replace('\n', "\r")).expect("write");
    let check = run({
        let mut c = scratch.salvage();
        c.args(["check", "--playbooks", "playbooks"]);
        c
    });
    assert_eq!(check.code, Some(1));
    assert!(check.stderr.contains("[playbooks/mac.yaml:10:5]"), "{}", check.stderr);
    assert!(check.stderr.contains(" 10 │     nxt: done"), "the snippet is the line itself: {}", check.stderr);
}
