//! A scratch directory to run the real `salvage` binary in, on its default store.

#![allow(dead_code)]

use std::path::PathBuf;

use assert_cmd::Command;

pub const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/runs");

pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { dir: tempfile::tempdir().expect("temp dir") }
    }

    /// The scratch directory with the shipped examples imported into the default store.
    pub fn with_examples() -> Scratch {
        let scratch = Scratch::new();
        scratch.salvage().args(["import", EXAMPLES]).assert().success();
        scratch
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `salvage` run inside the scratch directory, on its default store, without colour.
    pub fn salvage(&self) -> Command {
        Command::from_std(self.std_salvage())
    }

    /// The same, as a std command (for what assert_cmd cannot do: a closed pipe as stdout).
    pub fn std_salvage(&self) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_salvage"));
        command
            .current_dir(self.dir.path())
            .env_remove("SALVAGE_STORE")
            .env_remove("SALVAGE_CONFIG")
            .env_remove("SALVAGE_LOG_FORMAT")
            .env("NO_COLOR", "1");
        command
    }
}

/// `salvage ARGS` run in `dir` on `store` with `env` set: no colour, and neither a
/// `salvage.yaml` nor an OpenTelemetry collector taken from the caller's environment.
pub fn salvage_in(dir: &std::path::Path, store: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_salvage"))
        .args(args)
        .current_dir(dir)
        .env("SALVAGE_STORE", store)
        .env("NO_COLOR", "1")
        .env_remove("SALVAGE_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .envs(env.iter().copied())
        .output()
        .expect("run salvage")
}

/// Copies of the shipped playbooks and policies in `dir/playbooks` and `dir/policies`, for a
/// test that edits them or runs a daemon that watches them.
pub fn copy_shipped_sets(dir: &std::path::Path) {
    for name in ["playbooks", "policies"] {
        let to = dir.join(name);
        std::fs::create_dir(&to).expect("mkdir");
        let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        for entry in std::fs::read_dir(from).expect("read").filter_map(Result::ok) {
            if entry.path().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
            }
        }
    }
}
