//! `salvage migrate`: applies the store's pending schema migrations and lists them.

use std::process::ExitCode;

use super::{CliError, Context};
use crate::store;

pub async fn run(cx: &mut Context<'_>, json: bool) -> Result<ExitCode, CliError> {
    let report = store::migrate(&cx.spec).await?;
    if json {
        cx.console.json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(version) = report.to_version else {
        cx.console.note(format!("{} has no schema to migrate", report.store));
        return Ok(ExitCode::SUCCESS);
    };
    for migration in &report.applied {
        cx.console.line(format!("applied {:>3}  {}", migration.version, migration.name))?;
    }
    let from = report.from_version.unwrap_or(0);
    if report.applied.is_empty() {
        cx.console.line(format!("{}: schema version {version}, up to date", report.store))?;
    } else {
        cx.console.line(format!("{}: schema version {from} -> {version}", report.store))?;
    }
    Ok(ExitCode::SUCCESS)
}
