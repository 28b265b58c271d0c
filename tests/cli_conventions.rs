//! The conventions SREs expect of a command-line tool, on the real binary: a closed pipe ends
//! quietly, nonsense is refused rather than answered with silence, every result has `--json`,
//! errors are JSON lines under `--log-format json`, and shells and `man` know salvage.

#[path = "common/scratch.rs"]
mod scratch;

use std::io::Read;
use std::path::Path;

use predicates::prelude::*;
use scratch::{EXAMPLES, Scratch};
use serde_json::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn stdout_json(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
}

/// The one JSON line salvage wrote on stderr.
fn stderr_json_line(output: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {text}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("stderr is not a JSON line ({e}): {text}"))
}

/// salvage.yaml naming the shipped playbooks and policies.
fn configure(scratch: &Scratch) {
    std::fs::write(scratch.path("salvage.yaml"), format!("playbooks: {REPO}/playbooks\npolicies: {REPO}/policies\n"))
        .expect("salvage.yaml");
}

#[test]
fn a_closed_stdout_ends_quietly_with_the_sigpipe_status() {
    let scratch = Scratch::with_examples();
    configure(&scratch);
    for args in [&["policy", "defs"][..], &["runs"], &["simulate"], &["tree", "--json"]] {
        // The reader is gone before salvage writes a byte: every write fails with EPIPE.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let output = scratch.std_salvage().args(args).stdout(writer).output().expect("run");
        assert_eq!(output.status.code(), Some(141), "salvage {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("Broken pipe") && !stderr.contains("cannot write"), "quiet: {stderr}");
    }
    // An open pipe read to the end is unaffected.
    let mut child =
        scratch.std_salvage().args(["runs", "-q"]).stdout(std::process::Stdio::piped()).spawn().expect("run");
    let mut listed = String::new();
    child.stdout.take().expect("stdout").read_to_string(&mut listed).expect("read");
    assert!(child.wait().expect("wait").success());
    assert_eq!(listed.lines().count(), 12);
}

#[test]
fn an_unknown_run_status_is_refused_rather_than_listed_as_no_runs() {
    let scratch = Scratch::with_examples();
    scratch.salvage().args(["runs", "--status", "bogus"]).assert().code(2).stderr(
        predicate::str::contains("unknown status \"bogus\"").and(predicate::str::contains("waiting_for_approval")),
    );
    scratch
        .salvage()
        .args(["runs", "--status", "Failed"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("did you mean \"failed\""));
    // A foreign runtime's own status is a real one once a run has it.
    let mut run: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(EXAMPLES).join(
                std::fs::read_dir(EXAMPLES)
                    .expect("examples")
                    .filter_map(Result::ok)
                    .map(|e| e.file_name())
                    .find(|name| name.to_string_lossy().ends_with(".json"))
                    .expect("an example run"),
            ),
        )
        .expect("read"),
    )
    .expect("json");
    run["id"] = "archived-run-1".into();
    run["status"] = "archived".into();
    std::fs::write(scratch.path("archived.json"), run.to_string()).expect("write");
    scratch.salvage().args(["import", "archived.json"]).assert().success();
    scratch.salvage().args(["runs", "--status", "archived", "-q"]).assert().success().stdout("archived-run-1\n");
}

#[test]
fn check_of_a_directory_without_playbooks_says_nothing_was_checked_and_fails() {
    let scratch = Scratch::new();
    std::fs::create_dir(scratch.path("empty")).expect("mkdir");
    std::fs::write(scratch.path("empty/README.md"), "not a playbook\n").expect("write");
    scratch
        .salvage()
        .args(["check", "--playbooks", "empty"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("nothing was checked").and(predicate::str::contains("*.yaml")));
    // The shipped playbooks still pass.
    scratch
        .salvage()
        .args(["check", "--playbooks", &format!("{REPO}/playbooks"), "--policies", &format!("{REPO}/policies")])
        .assert()
        .success();
}

#[test]
fn import_explain_and_graph_print_their_results_as_json() {
    let scratch = Scratch::new();
    let output = scratch.salvage().args(["import", EXAMPLES, "--json"]).output().expect("import");
    assert!(output.status.success());
    let imported = stdout_json(&output);
    let listed = scratch.salvage().args(["runs", "-q"]).output().expect("runs");
    let mut ids: Vec<String> = String::from_utf8_lossy(&listed.stdout).lines().map(str::to_owned).collect();
    ids.sort();
    let mut reported: Vec<String> =
        imported["runs"].as_array().expect("runs").iter().map(|r| r["id"].as_str().expect("id").to_owned()).collect();
    reported.sort();
    assert_eq!(reported, ids, "the runs the import reports are the runs stored");
    assert_eq!(imported["imported"], ids.len());
    assert!(imported["runs"].as_array().expect("runs").iter().all(|r| r["revision"] == 1));
    assert_eq!(imported["store"], "sqlite:.salvage/salvage.db");

    let output = scratch.salvage().args(["explain", "p022", "--json"]).output().expect("explain");
    let explained = stdout_json(&output);
    assert_eq!((explained["code"].as_str(), explained["severity"].as_str()), (Some("P022"), Some("error")));
    let text = scratch.salvage().args(["explain", "P022"]).output().expect("explain");
    assert_eq!(
        String::from_utf8_lossy(&text.stdout).trim_end(),
        explained["explanation"].as_str().expect("text").trim_end()
    );
    scratch
        .salvage()
        .args(["explain", "R001", "--json"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"R001\""));

    let playbook = format!("{REPO}/playbooks/side-effecting-tool-failed.yaml");
    let output = scratch.salvage().args(["graph", &playbook, "--json"]).output().expect("graph");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let graph = stdout_json(&output);
    let nodes = graph["nodes"].as_array().expect("nodes");
    let id_of = |node: &Value| node["id"].as_str().expect("id").to_owned();
    let ids: Vec<String> = nodes.iter().map(id_of).collect();
    // Every step and end the YAML writes (the two-space keys under `steps:` and `ends:`) is a
    // node, and the graph starts at `start:`.
    let yaml = std::fs::read_to_string(&playbook).expect("read");
    let mut written: Vec<&str> = Vec::new();
    let mut in_nodes = false;
    for line in yaml.lines() {
        if !line.starts_with(' ') {
            in_nodes = matches!(line.trim_end(), "steps:" | "ends:");
        } else if in_nodes && !line.starts_with("   ") {
            written.extend(line.trim().split_once(':').map(|(key, _)| key));
        }
    }
    let start = yaml.lines().find_map(|line| line.strip_prefix("start: ")).map(str::trim);
    assert_eq!(graph["start"].as_str(), start);
    assert_eq!(written.len(), ids.len(), "{written:?} vs {ids:?}");
    for step in &written {
        assert!(ids.iter().any(|id| id == step), "step {step} is a node: {ids:?}");
    }
    let transitions = graph["transitions"].as_array().expect("transitions");
    assert!(!transitions.is_empty());
    for transition in transitions {
        for end in ["from", "to"] {
            let id = transition[end].as_str().expect("id");
            assert!(ids.iter().any(|n| n == id), "{end} {id} is a node");
        }
    }
    let steps_in_dot =
        String::from_utf8_lossy(&scratch.salvage().args(["graph", &playbook]).output().expect("dot").stdout)
            .matches("shape=box")
            .count();
    assert_eq!(nodes.iter().filter(|n| n["kind"] == "step").count(), steps_in_dot);
    assert_eq!(
        scratch.salvage().args(["graph", &playbook, "--format", "json"]).output().expect("graph").stdout,
        output.stdout
    );
}

#[test]
fn errors_are_json_lines_on_stderr_under_log_format_json() {
    let scratch = Scratch::with_examples();
    let output = scratch.salvage().args(["inspect", "no-such-run", "--log-format", "json"]).output().expect("inspect");
    assert_eq!(output.status.code(), Some(2));
    let line = stderr_json_line(&output);
    assert_eq!(line["level"], "ERROR");
    assert_eq!(line["fields"]["code"], "salvage::run_not_found");
    assert_eq!(line["fields"]["message"], "run \"no-such-run\" not found");
    assert_eq!(line["fields"]["exit_code"], 2);
    assert!(line["fields"]["help"].as_str().is_some_and(|help| help.contains("salvage runs")));

    // A located error keeps its file, line and column.
    std::fs::write(scratch.path("broken.json"), "{\n  \"id\": \"r-1\",\n  \"status\" \"failed\"\n}\n").expect("write");
    let output =
        scratch.salvage().args(["import", "broken.json"]).env("SALVAGE_LOG_FORMAT", "json").output().expect("import");
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<Value> =
        text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect();
    let syntax = lines.iter().find(|line| line["fields"]["labels"].is_array()).expect("a located error");
    let label = &syntax["fields"]["labels"][0];
    assert!(label["file"].as_str().is_some_and(|file| file.ends_with("broken.json")), "{label}");
    assert_eq!((label["line"].as_u64(), label["column"].as_u64()), (Some(3), Some(12)), "{label}");
    assert!(lines.iter().any(|line| line["fields"]["code"] == "salvage::import::rejected"));

    // A command line clap refuses is a JSON line too; text stays the default.
    let output = scratch.salvage().args(["runs", "--bogus", "--log-format=json"]).output().expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let line = stderr_json_line(&output);
    assert_eq!(line["fields"]["code"], "salvage::usage");
    assert!(line["fields"]["message"].as_str().is_some_and(|m| m.contains("--bogus")));
    scratch.salvage().args(["runs", "--bogus"]).assert().code(2).stderr(predicate::str::starts_with("error:"));
}

#[test]
fn shells_and_man_know_every_command() {
    let scratch = Scratch::new();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let output = scratch.salvage().args(["completions", shell]).output().expect("completions");
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&output.stdout);
        // fish writes long options without their dashes (`-l reload-gate`).
        for command in ["approve", "simulate", "completions", "reload-gate"] {
            assert!(script.contains(command), "{shell} completes {command}");
        }
    }
    let bash = scratch.salvage().args(["completions", "bash"]).output().expect("bash").stdout;
    std::fs::write(scratch.path("salvage.bash"), &bash).expect("write");
    if let Ok(status) = std::process::Command::new("bash").arg("-n").arg(scratch.path("salvage.bash")).status() {
        assert!(status.success(), "bash parses the completion script");
    }
    scratch.salvage().args(["completions", "tcsh"]).assert().code(2);

    let page = scratch.salvage().arg("man").output().expect("man");
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(page.contains(".TH salvage 1") && page.contains("simulate"), "{page}");
    scratch.salvage().args(["man", "--dir", "man1"]).assert().success();
    for name in ["salvage.1", "salvage-apply.1", "salvage-approve.1", "salvage-serve.1"] {
        let text = std::fs::read_to_string(scratch.path("man1").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{name} is a man page");
    }
}

#[test]
fn version_names_the_commit_and_the_build_date() {
    let output = Scratch::new().salvage().arg("--version").output().expect("version");
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let rest = text
        .strip_prefix(&format!("salvage {} (commit ", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{text}"));
    let (commit, date) =
        rest.strip_suffix(')').and_then(|r| r.split_once(", built ")).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(date.len(), 10, "{date}");
    assert!(
        date.chars().enumerate().all(|(i, c)| if i == 4 || i == 7 { c == '-' } else { c.is_ascii_digit() }),
        "{date}"
    );
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(REPO)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match head {
        Some(head) => assert_eq!(commit, head, "the commit built"),
        None => assert_eq!(commit, "unknown"),
    }
}

#[test]
fn a_quoted_on_key_is_read_exactly_like_on() {
    let scratch = Scratch::new();
    let original = std::fs::read_to_string(format!("{REPO}/playbooks/side-effecting-tool-failed.yaml")).expect("read");
    assert!(original.contains("    on: "), "the playbook uses `on:`");
    std::fs::create_dir(scratch.path("quoted")).expect("mkdir");
    // Same length per line is not needed: locations are of step ids, which do not move.
    std::fs::write(
        scratch.path("quoted/side-effecting-tool-failed.yaml"),
        original.replace("    on: ", "    \"on\": "),
    )
    .expect("write");
    let graph = |path: String| {
        let output = scratch
            .salvage()
            .args(["graph", &path, "--json", "--policies", &format!("{REPO}/policies")])
            .output()
            .expect("graph");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        stdout_json(&output)
    };
    let plain = graph(format!("{REPO}/playbooks/side-effecting-tool-failed.yaml"));
    let quoted = graph(scratch.path("quoted/side-effecting-tool-failed.yaml").display().to_string());
    assert!(
        plain["transitions"].as_array().is_some_and(|t| t.iter().any(|t| t["on"] != "next")),
        "outcome exits exist"
    );
    assert_eq!(quoted, plain);
    scratch
        .salvage()
        .args(["check", "--playbooks", "quoted", "--policies", &format!("{REPO}/policies")])
        .assert()
        .success();
}
