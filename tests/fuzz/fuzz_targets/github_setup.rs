//! The install redirect's query string.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = credbroker_providers::github::parse_setup_query(&String::from_utf8_lossy(data));
});
