//! `salvage.yaml`: YAML text → configuration (durations and approvers within their bounds) or
//! positioned problems.
#![no_main]

mod common;

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    match salvage::execute::SalvageConfig::parse(Path::new("salvage.yaml"), text) {
        Ok(config) => {
            assert!(config.approvals.default_timeout <= salvage::limits::MAX_DURATION);
            for name in &config.approvals.default_approvers {
                assert!(salvage::limits::validate_approver_name(name).is_ok());
            }
        }
        Err(error) => common::render_bounded(&error),
    }
});
