//! What a ServiceNow instance answers to the token request, the instance or Data Center base
//! URL an operator (or an intake) hands the broker, and Data Center's PAT expiry times.
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
    let _ = credbroker_providers::atlassian_dc::parse_config(
        &serde_json::json!({ "base_url": url, "product": "jira" }),
        &allowed,
    );
    let _ = credbroker_providers::atlassian_dc::parse_time(&url);
});
