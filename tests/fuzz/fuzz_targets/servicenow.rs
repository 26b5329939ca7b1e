//! What a ServiceNow instance answers to the token request, and the instance URL an operator
//! (or an intake) hands the broker.
#![no_main]
use libfuzzer_sys::fuzz_target;

use credbroker_providers::servicenow::parse_token_answer;

fuzz_target!(|data: &[u8]| {
    let _ = parse_token_answer(data);
    let url = String::from_utf8_lossy(data);
    let allowed = ["snow.acme.example".to_owned()];
    if let Ok((origin, _)) = credbroker_providers::servicenow::settings_parse_config(
        &serde_json::json!({ "instance_url": url }),
        &allowed,
    ) {
        // Whatever passes is https (or allow-listed loopback http) on an allowed host.
        assert!(origin.starts_with("https://") || origin.starts_with("http://"));
    }
});
