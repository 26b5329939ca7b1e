//! STS `Credentials` as the SDK hands them over (AssumeRole, AssumeRoleWithWebIdentity): the
//! checks a mint applies before anything is cached or handed out, on any key id, secret,
//! session token, expiry and session length.
#![no_main]
use aws_sdk_sts::primitives::DateTime;
use aws_sdk_sts::types::Credentials;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (String, String, String, i64, u32, u32)| {
    let (key_id, secret, token, expiry_s, expiry_nanos, duration_s) = input;
    let Ok(c) = Credentials::builder()
        .access_key_id(key_id)
        .secret_access_key(secret)
        .session_token(token)
        .expiration(DateTime::from_secs_and_nanos(
            expiry_s,
            expiry_nanos % 1_000_000_000,
        ))
        .build()
    else {
        return;
    };
    let asked = time::OffsetDateTime::now_utc() + time::Duration::seconds(i64::from(duration_s));
    if let Ok(cred) = credbroker_providers::aws::credential_of(Some(&c), Some("id"), duration_s) {
        // Whatever was accepted ends no later than the session asked for.
        let expires = cred.expires_at.expect("STS credentials expire");
        assert!(expires <= asked + time::Duration::seconds(1));
    }
});
