//! The JSON hub protocol: record splitting (incremental and whole), parsing, re-encoding and
//! argument binding.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, data)) = data.split_first() else {
        return;
    };
    common::check(tidings::protocol::Protocol::Json, cuts, data);
});
