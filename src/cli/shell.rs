//! `completions` and `man`: salvage's command line described for shells and for `man`.

use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;

use super::{Cli, CliError, Context};

pub fn completions(cx: &mut Context<'_>, shell: clap_complete::Shell) -> Result<ExitCode, CliError> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "salvage", &mut script);
    cx.console.text(String::from_utf8_lossy(&script))?;
    Ok(ExitCode::SUCCESS)
}

pub fn man(cx: &mut Context<'_>, dir: Option<&Path>) -> Result<ExitCode, CliError> {
    let command = Cli::command();
    match dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            cx.console.text(String::from_utf8_lossy(&page))?;
        }
        Some(dir) => {
            let unwritable = |error: std::io::Error| {
                CliError::input_msg(format!("cannot write the manual pages into {}: {error}", dir.display()))
            };
            std::fs::create_dir_all(dir).map_err(unwritable)?;
            clap_mangen::generate_to(command, dir).map_err(unwritable)?;
            cx.console.note(format!("wrote the manual pages into {}", dir.display()));
        }
    }
    Ok(ExitCode::SUCCESS)
}
