//! Generated files stay in sync with the code: the JSON Schema, the page of shipped playbooks
//! and the generated tables of the writing guide. When one drifts, regenerate with
//! `UPDATE_GENERATED=1 cargo test --test playbook_generated` and commit the result.

use std::path::Path;

use salvage::playbook::{self, docs};

fn regenerate() -> bool {
    std::env::var_os("UPDATE_GENERATED").is_some()
}

/// Compares `path` with `expected`, or rewrites it under UPDATE_GENERATED.
fn assert_generated(path: &str, expected: &str) {
    let path = Path::new(path);
    if regenerate() {
        std::fs::write(path, expected).unwrap();
        return;
    }
    let actual = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        actual == expected,
        "{} is stale; regenerate it with `UPDATE_GENERATED=1 cargo test --test playbook_generated` and commit it",
        path.display()
    );
}

#[test]
fn schema_file_matches_the_types() {
    let mut text = serde_json::to_string_pretty(&playbook::playbook_schema()).unwrap();
    text.push('\n');
    assert_generated(playbook::schema::SCHEMA_PATH, &text);
}

#[test]
fn playbooks_page_matches_the_shipped_playbooks() {
    let report = playbook::check(Path::new("playbooks"), Some(Path::new("policies")));
    assert!(!report.has_errors(), "{:#?}", report.diagnostics);
    assert_generated("docs/playbooks.md", &docs::playbooks_page(&report.playbooks));
}

#[test]
fn writing_guide_tables_match_the_catalog_and_codes() {
    let path = "docs/writing-playbooks.md";
    let document = std::fs::read_to_string(path).unwrap();
    let with_actions = docs::replace_generated(&document, "actions", &docs::action_table()).expect("actions markers");
    let with_codes = docs::replace_generated(&with_actions, "codes", &docs::code_table()).expect("codes markers");
    assert_generated(path, &with_codes);
}

#[test]
fn runtime_protocol_schemas_match_the_types() {
    let (request, answer) = salvage::execute::runtime::protocol_schemas();
    for (path, schema) in
        [("docs/runtime-protocol/request.schema.json", request), ("docs/runtime-protocol/answer.schema.json", answer)]
    {
        let mut text = serde_json::to_string_pretty(&schema).unwrap();
        text.push('\n');
        assert_generated(path, &text);
    }
}
