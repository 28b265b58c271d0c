//! Generated documentation: the action table, the diagnostic code table and the page of shipped
//! playbooks with their graphs. Tests compare the committed files with these functions.

use std::fmt::Write;

use super::catalog;
use super::diagnostic::CODES;
use super::graph::{ApprovalRule, CompiledPlaybook};
use super::render::render_mermaid;

/// The action table (markdown), generated from the catalog.
pub fn action_table() -> String {
    catalog::markdown_table()
}

/// The diagnostic code table (markdown), playbook codes then policy codes.
pub fn code_table() -> String {
    let mut out = String::from("| code | severity | meaning |\n|---|---|---|\n");
    for info in CODES {
        let _ = writeln!(out, "| `{}` | {} | {} |", info.id, info.severity.as_str(), info.title);
    }
    for info in crate::policy::diagnostic::CODES {
        let _ = writeln!(out, "| `{}` | error | {} |", info.code, info.title);
    }
    out
}

/// `docs/playbooks.md`: every playbook with what it matches, its steps and its graph.
pub fn playbooks_page(playbooks: &[CompiledPlaybook]) -> String {
    let mut out = String::from(
        "# Shipped playbooks\n\n<!-- Generated from playbooks/*.yaml by salvage; do not edit. \
Regenerate with `UPDATE_GENERATED=1 cargo test --test playbook_generated`. -->\n\n",
    );
    out.push_str("| playbook | matches | priority | file |\n|---|---|---|---|\n");
    for playbook in playbooks {
        let _ = writeln!(
            out,
            "| [`{}`](#{}) | `{}` | {} | `{}` |",
            playbook.name,
            playbook.name,
            playbook.incidents,
            playbook.priority,
            file_name(playbook)
        );
    }
    for playbook in playbooks {
        let _ = writeln!(out, "\n## {}\n", playbook.name);
        if let Some(description) = &playbook.description {
            let _ = writeln!(out, "{}\n", description.trim());
        }
        let _ = write!(out, "Matches `{}`, priority {}", playbook.incidents, playbook.priority);
        if let Some(guard) = &playbook.guard {
            let _ = write!(out, ", when `{}`", guard.source);
        }
        let _ = writeln!(out, ". Source: `playbooks/{}`.\n", file_name(playbook));
        out.push_str("| step | action | effect | approval | description |\n|---|---|---|---|---|\n");
        for (_, step) in playbook.graph.steps() {
            let approval = match &step.params.approval {
                ApprovalRule::Unspecified => "—".to_owned(),
                ApprovalRule::Always => "always".to_owned(),
                ApprovalRule::Never { why } => format!("never: {why}"),
                ApprovalRule::Hook(hook) => format!("`policy.{hook}`"),
            };
            let _ = writeln!(
                out,
                "| `{}` | `{}` | {} | {} | {} |",
                step.id,
                step.action,
                step.effect(),
                approval.replace('|', "\\|"),
                step.description.as_deref().unwrap_or("").replace('\n', " ").replace('|', "\\|")
            );
        }
        let _ = writeln!(out, "\n```mermaid\n{}```", render_mermaid(&playbook.graph));
    }
    out
}

fn file_name(playbook: &CompiledPlaybook) -> String {
    playbook.file.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Replaces the text between `<!-- BEGIN GENERATED: NAME -->` and `<!-- END GENERATED: NAME -->`
/// with `content`. `None` when the markers are missing.
pub fn replace_generated(document: &str, name: &str, content: &str) -> Option<String> {
    let begin = format!("<!-- BEGIN GENERATED: {name} -->");
    let end = format!("<!-- END GENERATED: {name} -->");
    let start = document.find(&begin)? + begin.len();
    let stop = start + document[start..].find(&end)?;
    Some(format!("{}\n{}{}", &document[..start], content, &document[stop..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_regions_are_replaced_in_place() {
        let document = "intro\n<!-- BEGIN GENERATED: t -->\nold\n<!-- END GENERATED: t -->\nafter\n";
        let replaced = replace_generated(document, "t", "new\n").unwrap();
        assert_eq!(replaced, "intro\n<!-- BEGIN GENERATED: t -->\nnew\n<!-- END GENERATED: t -->\nafter\n");
        assert_eq!(replace_generated(&replaced, "t", "new\n").unwrap(), replaced);
        assert!(replace_generated(document, "other", "x").is_none());
    }
}
