//! `salvage init`: writes a commented default `salvage.yaml`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::source_error::UnreadableFile;
use super::{CliError, Context};
use crate::execute::config::{CONFIG_FILE, config_template};

/// `salvage.yaml` exists and `--force` was not given.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{path} already exists")]
#[diagnostic(
    code(salvage::init::exists),
    help("keep it, or run `salvage init --force` to replace it with the defaults")
)]
pub struct ConfigExists {
    pub path: String,
}

/// Writes `salvage.yaml` in the working directory.
pub fn run(cx: &mut Context<'_>, force: bool) -> Result<ExitCode, CliError> {
    let approver = super::execute::actor(None);
    let approver = (approver != "unknown").then_some(approver);
    write_config(Path::new(CONFIG_FILE), force, &config_template(approver.as_deref()))?;
    cx.console.note(format!(
        "wrote {CONFIG_FILE}: every option is explained in it; `salvage check` checks the playbooks it names"
    ));
    match approver {
        Some(name) => cx
            .console
            .note(format!("default approver: {name} (approvals.default_approvers); add your on-call rota there")),
        None => cx.console.warn(
            "no user name found ($SALVAGE_ACTOR, $USER): approvals.default_approvers is empty; list approvers there",
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the default configuration to `path`. Without `force` an existing file is never
/// touched (the check and the creation are one step); with it the file is replaced atomically.
pub fn write_config(path: &Path, force: bool, text: &str) -> Result<(), CliError> {
    let fail = |source: std::io::Error| CliError::input(UnreadableFile { path: path.display().to_string(), source });
    if !force {
        let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(CliError::input(ConfigExists { path: path.display().to_string() }));
            }
            Err(error) => return Err(fail(error)),
        };
        return file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(fail);
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let temp = dir.join(format!(".{CONFIG_FILE}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(fail)
}
