//! What Google's Security Token Service answers to the token exchange: a federated token
//! (`expires_in` a number or a string) or an OAuth error body, under any status. Never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

use credbroker_providers::gcp_wif::answer::sts_answer;

const STATUSES: [u16; 8] = [200, 400, 401, 403, 404, 429, 500, 503];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let status = STATUSES[usize::from(selector) % STATUSES.len()];
    let _ = sts_answer(status, body);
});
