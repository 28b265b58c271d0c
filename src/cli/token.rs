//! `salvage token add|list|revoke`: per-person API tokens. The secret is printed once, by
//! `add`; the store keeps only its SHA-256 (`execute::identity`).

use std::process::ExitCode;
use std::sync::Arc;

use serde_json::json;

use super::console::Table;
use super::execute::identity_error;
use super::{CliError, Context};
use crate::execute::identity::TokenRegistry;
use crate::store::{StateStore, Store};

/// The registry of the store, and who is acting (the same identity rules as an approval).
/// `create`: a token can be made before any run is imported (a new store is created).
async fn registry(cx: &Context<'_>, actor: Option<&str>, create: bool) -> Result<(TokenRegistry, String), CliError> {
    let store = if create { cx.store().await? } else { cx.write_store().await? };
    let by = super::execute::person(cx, &store, actor, None).await?.name;
    let state: Arc<dyn StateStore> = store;
    Ok((TokenRegistry::new(state), by))
}

/// `salvage token add NAME`: creates a token and prints its secret, once.
pub async fn add(cx: &mut Context<'_>, name: &str, actor: Option<&str>, json: bool) -> Result<ExitCode, CliError> {
    let (registry, by) = registry(cx, actor, true).await?;
    let (info, secret) = registry.add(name, &by).await.map_err(identity_error)?;
    if json {
        cx.console.json(&json!({
            "id": info.id, "name": info.name, "createdAt": info.created_at, "createdBy": info.created_by,
            "token": secret,
        }))?;
    } else {
        cx.console.line(&secret)?;
        cx.console.note(format!(
            "token {} for {} (created by {}). This is the only time it is shown: salvage keeps only its SHA-256. \
             {} uses it with `--token` or $SALVAGE_TOKEN; `salvage token revoke {}` ends it.",
            info.id, info.name, info.created_by, info.name, info.id
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// `salvage token list`: every token, never a secret.
pub async fn list(cx: &mut Context<'_>, json: bool) -> Result<ExitCode, CliError> {
    let store: Arc<dyn Store> = cx.read_store().await?;
    let spec = store.spec();
    let tokens = TokenRegistry::new(store).list().await.map_err(identity_error)?;
    if json {
        cx.console.json(&tokens)?;
        return Ok(ExitCode::SUCCESS);
    }
    if tokens.is_empty() {
        cx.console.note(format!("no tokens in {spec} (`salvage token add NAME` creates one)"));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(["ID", "NAME", "CREATED", "BY", "REVOKED"]);
    for token in tokens {
        let revoked = match (&token.revoked_at, &token.revoked_by) {
            (Some(at), Some(by)) => format!("{at} by {by}"),
            (Some(at), None) => at.clone(),
            _ => "-".to_owned(),
        };
        let cells = [token.id, token.name, token.created_at, token.created_by, revoked];
        table.styled_row(cells.into_iter().map(|cell| (cell, Default::default())).collect());
    }
    for line in table.render() {
        cx.console.line(line)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `salvage token revoke ID`: the token never authenticates again.
pub async fn revoke(cx: &mut Context<'_>, id: &str, actor: Option<&str>, json: bool) -> Result<ExitCode, CliError> {
    let (registry, by) = registry(cx, actor, false).await?;
    let (info, newly) = registry.revoke(id, &by).await.map_err(identity_error)?;
    if json {
        cx.console.json(&json!({"token": info, "revoked": newly}))?;
    } else if newly {
        cx.console.note(format!("token {} of {} revoked by {by}", info.id, info.name));
    } else {
        cx.console.note(format!(
            "token {} of {} was already revoked at {} by {}; nothing changed",
            info.id,
            info.name,
            info.revoked_at.as_deref().unwrap_or("?"),
            info.revoked_by.as_deref().unwrap_or("?")
        ));
    }
    Ok(ExitCode::SUCCESS)
}
