//! Playbooks: YAML text → compiled `RecoveryGraph` or positioned diagnostics.
#![no_main]

mod common;

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let (compiled, diagnostics) = salvage::playbook::compile_str(Path::new("fuzz.yaml"), text, None);
    assert!(compiled.is_some() || diagnostics.iter().any(|d| d.is_error()));
    for diagnostic in &diagnostics {
        if let Some(span) = diagnostic.span {
            assert!(span.end <= text.len());
        }
        common::render_bounded(diagnostic);
    }
});
