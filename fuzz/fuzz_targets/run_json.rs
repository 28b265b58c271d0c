//! Run records: bytes → JSON → `Run` (what the stores and `salvage import` do).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    match salvage::store::decode_run("fuzz.json", bytes) {
        Ok(run) => {
            let again = salvage::model::Run::from_value(run.to_value()).expect("a loaded run loads again");
            assert_eq!(again, run);
        }
        Err(error) => common::render_bounded(&error),
    }
});
