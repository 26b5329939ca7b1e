//! The resolve request parser: any body yields a typed result, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = credbroker::resolve::parse_resolve_request(data);
});
