//! libFuzzer entry point; the input format and the properties are in
//! `fuzz_checks::classic`, shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::classic::check(data));
