//! The incident kinds a policy set can produce: the string literals its `classify` hook
//! returns (`"rate_limited"` or `#{ kind: "rate_limited", reason: … }`, read off the AST) and
//! the kinds it declares (`const INCIDENT_KINDS = ["rate_limited"];` in any file).
//!
//! Playbooks are checked against these and the built-in kinds: `match.incident` may name a
//! kind of the user's own only when the policies can return it.

use std::collections::BTreeSet;

use rhai::{AST, ASTNode, Dynamic, Expr, Stmt, StmtBlock};

use super::PolicyFile;

/// The constant a policy file declares its own incident kinds in.
pub const DECLARED_KINDS: &str = "INCIDENT_KINDS";

/// Every kind the files' `classify` functions return as a literal or declare.
pub(crate) fn incident_kinds(files: &[PolicyFile]) -> BTreeSet<String> {
    let mut kinds = BTreeSet::new();
    for file in files {
        declared(&file.ast, &mut kinds);
        returned_by_classify(&file.ast, &mut kinds);
    }
    kinds
}

fn declared(ast: &AST, kinds: &mut BTreeSet<String>) {
    for (name, _, value) in ast.iter_literal_variables(true, false) {
        if name != DECLARED_KINDS {
            continue;
        }
        let listed = value.into_array().unwrap_or_default();
        kinds.extend(listed.into_iter().filter_map(|item| item.into_string().ok()).filter(|kind| !kind.is_empty()));
    }
}

/// (line, column) of a position, for ordering.
type Place = (usize, usize);

/// The place of a position; `None` when it has none.
fn place(position: rhai::Position) -> Option<Place> {
    Some((position.line()?, position.position().unwrap_or(0)))
}

fn returned_by_classify(ast: &AST, kinds: &mut BTreeSet<String>) {
    // Where each `classify` body and each closure body lies in the file: a statement belongs to
    // the `classify` whose body holds it, unless a closure inside it does.
    let mut bodies = Vec::new();
    let mut closures = Vec::new();
    for (_, _, name, _, definition) in ast.shared_lib().iter_script_fn_info() {
        let (Some(start), Some(end)) = (place(definition.body.start_position()), place(definition.body.end_position()))
        else {
            continue;
        };
        if name == "classify" {
            bodies.push((start, end));
        } else if name.starts_with("anon$") {
            closures.push((start, end));
        }
    }
    let owner = |position: rhai::Position| {
        let at = place(position)?;
        if closures.iter().any(|&(start, end)| start <= at && at <= end) {
            return None;
        }
        bodies.iter().position(|&(start, end)| start <= at && at <= end)
    };
    // Per body: the position of its latest top-level statement and the kinds that statement
    // ends with; once the walk is over, those of the body's last statement.
    let mut tails: Vec<(Option<Place>, BTreeSet<String>)> = vec![(None, BTreeSet::new()); bodies.len()];
    ast.walk(&mut |nodes: &[ASTNode]| {
        // Every `return EXPR` anywhere in a body.
        if let [.., ASTNode::Stmt(statement @ Stmt::Return(Some(value), ..))] = nodes
            && owner(statement.position()).is_some()
        {
            kinds_of(value, kinds);
        }
        if let [ASTNode::Stmt(statement)] = nodes
            && let Some(body) = owner(statement.position())
        {
            let at = place(statement.position());
            let tail = &mut tails[body];
            if tail.0.is_none() || at > tail.0 {
                tail.0 = at;
                tail.1.clear();
                tail_statement(statement, &mut tail.1);
            }
        }
        true
    });
    for (_, mut tail) in tails {
        kinds.append(&mut tail);
    }
}

/// The kinds the value of a block can be: its last statement, through `if`/`else` branches
/// and nested blocks. Bounded by Rhai's expression depth limit, which the parser enforces.
fn tail_of(block: &StmtBlock, kinds: &mut BTreeSet<String>) {
    if let Some(statement) = block.statements().last() {
        tail_statement(statement, kinds);
    }
}

fn tail_statement(statement: &Stmt, kinds: &mut BTreeSet<String>) {
    match statement {
        Stmt::Expr(value) => kinds_of(value, kinds),
        Stmt::If(flow, _) => {
            tail_of(&flow.body, kinds);
            tail_of(&flow.branch, kinds);
        }
        Stmt::Block(inner) => tail_of(inner, kinds),
        _ => {}
    }
}

/// A kind in a returned value: a string, or the `kind` of a map.
fn kinds_of(value: &Expr, kinds: &mut BTreeSet<String>) {
    match value {
        Expr::Map(map, _) => {
            if let Some((_, kind)) = map.0.iter().find(|(name, _)| name.as_str() == "kind") {
                kinds_of(kind, kinds);
            }
        }
        Expr::Stmt(block) => tail_of(block, kinds),
        other => {
            if let Some(literal) = other.get_literal_value(None) {
                kind_of_literal(literal, kinds);
            }
        }
    }
}

fn kind_of_literal(value: Dynamic, kinds: &mut BTreeSet<String>) {
    if value.is_map() {
        if let Some(kind) = value.cast::<rhai::Map>().remove("kind") {
            kind_of_literal(kind, kinds);
        }
        return;
    }
    if let Ok(kind) = value.into_string()
        && !kind.is_empty()
    {
        kinds.insert(kind);
    }
}

#[cfg(test)]
mod tests {
    use super::super::PolicySet;

    #[test]
    fn literals_classify_returns_and_declared_kinds_are_the_sets_own() {
        let set = PolicySet::from_sources([
            (
                "classify.rhai",
                "fn classify(report, ctx) {\n    if report.status == \"paused\" { return \"rate_limited\"; }\n    \
                 if report.status == \"failed\" {\n        return #{ kind: \"quota_exceeded\", reason: `at ${report.status}` };\n    }\n    \
                 if report.runId == \"x\" { \"tail_string\" } else { #{ kind: \"tail_map\", reason: \"r\" } }\n}\n\
                 fn classify(report) { \"tool_failure\" }\n",
            ),
            (
                "kinds.rhai",
                "const INCIDENT_KINDS = [\"declared_kind\"];\nfn other(ctx) { return \"not_a_kind\"; }\n",
            ),
        ])
        .unwrap_or_else(|error| panic!("{:#?}", error.diagnostics));
        let custom: Vec<&str> = set.custom_incident_kinds().collect();
        assert_eq!(custom, ["declared_kind", "quota_exceeded", "rate_limited", "tail_map", "tail_string"]);
        // A kind of the user's own is the vocabulary's escape hatch, and stays as written.
        let kind = crate::model::IncidentKind::parse("rate_limited");
        assert!(!kind.is_known());
        let json = serde_json::to_string(&kind).expect("json");
        assert_eq!(json, "\"rate_limited\"");
        assert_eq!(serde_json::from_str::<crate::model::IncidentKind>(&json).ok(), Some(kind));
    }

    #[test]
    fn the_shipped_policies_have_no_kind_of_their_own() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let set = PolicySet::load(&dir).expect("shipped policies");
        assert_eq!(set.custom_incident_kinds().count(), 0, "{:?}", set.custom_incident_kinds().collect::<Vec<_>>());
    }
}
