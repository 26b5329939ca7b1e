//! The admin API router and body parsers (operators are authenticated, but their input is
//! still untrusted bytes): first byte picks the method, then `path\0body`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = match m % 5 {
        0 => http::Method::GET,
        1 => http::Method::POST,
        2 => http::Method::PUT,
        3 => http::Method::DELETE,
        _ => http::Method::PATCH,
    };
    let (path, body) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let path = format!("/v1/admin/{}", String::from_utf8_lossy(path));
    let _ = credbroker::admin::parse_admin_request(&method, &path, body);
});
