//! Policy files: Rhai source → compiled policy set or positioned diagnostics.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    if let Err(error) = salvage::policy::PolicySet::from_sources([("policies/fuzz.rhai", text)]) {
        for diagnostic in salvage::playbook::Diagnostic::from_policy(error.diagnostics) {
            if let Some(span) = diagnostic.span {
                assert!(span.end <= text.len());
            }
            common::render_bounded(&diagnostic);
        }
    }
});
