//! The fake Entra token endpoint keeps to Entra's rules (PROTOCOLS.md): the broker's Entra
//! provider will be tested against it, so it must refuse what Entra refuses, with Entra's
//! error bodies, and issue tokens with Entra's claims.

use std::collections::HashMap;

use base64::Engine as _;
use credbroker_tests::fake_entra::{is_guid, FakeEntra, ARM, GRAPH};
use serde_json::Value;

const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "fake~secret.value_0123456789abcdefghij";
const TENANT: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn aadsts(body: &Value) -> u64 {
    body["error_codes"][0].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_enforces_entras_rules() {
    let entra = FakeEntra::start(CLIENT, SECRET).await;
    entra.consent(
        TENANT,
        "99999999-8888-7777-6666-555555555555",
        &["User.Read.All"],
    );
    let good = |scope: &'static str| {
        form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("scope", scope),
        ])
    };
    let s = &entra.state;

    // A Graph token: v2 claims, roles, app-only.
    let (status, body) = s.token(TENANT, &good("https://graph.microsoft.com/.default"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["tid"], TENANT);
    assert_eq!(c["azp"], CLIENT);
    assert_eq!(
        c["iss"],
        format!("https://login.microsoftonline.com/{TENANT}/v2.0")
    );
    assert_eq!(c["idtyp"], "app");
    assert_eq!(c["aud"], GRAPH);
    assert_eq!(c["roles"][0], "User.Read.All");
    // ARM tokens carry no roles; v1 tokens name the app in `appid` and use the sts issuer.
    *s.v1_tokens.lock().unwrap() = true;
    let (_, body) = s.token(TENANT, &good("https://management.azure.com/.default"));
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["aud"], ARM);
    assert!(c.get("roles").is_none(), "{c}");
    assert_eq!(c["appid"], CLIENT);
    assert_eq!(c["iss"], format!("https://sts.windows.net/{TENANT}/"));

    // Refusals, with Entra's codes.
    let cases: Vec<(&str, HashMap<String, String>, u16, u64)> = vec![
        (
            "common",
            good("https://graph.microsoft.com/.default"),
            400,
            9001023,
        ),
        (
            "bbbbbbbb-bbbb-cccc-dddd-eeeeeeeeeeee",
            good("https://graph.microsoft.com/.default"),
            400,
            90002,
        ),
        (
            TENANT,
            good("https://graph.microsoft.com/User.Read.All"),
            400,
            1002012,
        ),
        (
            TENANT,
            form(&[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT),
                ("client_secret", "wrong"),
                ("scope", "https://graph.microsoft.com/.default"),
            ]),
            401,
            7000215,
        ),
        (
            TENANT,
            form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "00000000-0000-0000-0000-000000000000"),
                ("client_secret", SECRET),
                ("scope", "https://graph.microsoft.com/.default"),
            ]),
            400,
            700016,
        ),
        (
            TENANT,
            form(&[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", "not.a.jwt"),
                ("scope", "https://graph.microsoft.com/.default"),
            ]),
            401,
            700027,
        ),
    ];
    for (tenant, f, want_status, want_code) in cases {
        let (status, body) = s.token(tenant, &f);
        assert_eq!(
            (status, aadsts(&body)),
            (want_status, want_code),
            "{tenant}: {body}"
        );
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .starts_with(&format!("AADSTS{want_code}:")),
            "{body}"
        );
        assert!(body["trace_id"].is_string() && body["correlation_id"].is_string());
    }
    // An expired secret, an unconsented tenant, consent still propagating, consent withdrawn.
    s.expired_secrets.lock().unwrap().push("old-secret".into());
    let (status, body) = s.token(
        TENANT,
        &form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("client_secret", "old-secret"),
            ("scope", "https://graph.microsoft.com/.default"),
        ]),
    );
    assert_eq!((status, aadsts(&body)), (401, 7000222), "{body}");
    let other = "cccccccc-bbbb-cccc-dddd-eeeeeeeeeeee";
    entra.add_unconsented(other);
    let (status, body) = s.token(other, &good("https://graph.microsoft.com/.default"));
    assert_eq!((status, aadsts(&body)), (400, 7000229), "{body}");
    s.tenants
        .lock()
        .unwrap()
        .get_mut(TENANT)
        .unwrap()
        .propagating = 1;
    assert_eq!(
        aadsts(
            &s.token(TENANT, &good("https://graph.microsoft.com/.default"))
                .1
        ),
        7000229
    );
    assert_eq!(
        s.token(TENANT, &good("https://graph.microsoft.com/.default"))
            .0,
        200
    );
    // A certificate-signed client assertion: accepted when registered, for this token URL.
    let cert = credbroker_tests::fake_github::AppKey::generate();
    s.certificates.lock().unwrap().push(cert.public_der.clone());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(cert.private_pem.as_bytes()).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let assertion = |aud: String| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &serde_json::json!({"aud": aud, "iss": CLIENT, "sub": CLIENT, "jti": "j1",
                "nbf": now, "iat": now, "exp": now + 300}),
            &key,
        )
        .unwrap()
    };
    let with = |jwt: String| {
        form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &jwt),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
    };
    let right = format!("{}/{TENANT}/oauth2/v2.0/token", entra.url);
    assert_eq!(s.token(TENANT, &with(assertion(right))).0, 200);
    let wrong_aud = format!("{}/common/oauth2/v2.0/token", entra.url);
    assert_eq!(
        aadsts(&s.token(TENANT, &with(assertion(wrong_aud))).1),
        700027
    );
    entra.withdraw(TENANT);
    assert_eq!(
        aadsts(
            &s.token(TENANT, &good("https://graph.microsoft.com/.default"))
                .1
        ),
        7000229
    );
    // Secrets are never recorded.
    assert!(s
        .requests
        .lock()
        .unwrap()
        .iter()
        .all(|(_, f)| !f.contains_key("client_secret") && !f.contains_key("client_assertion")));
    assert!(is_guid(TENANT) && !is_guid("common") && !is_guid("contoso.onmicrosoft.com"));
}
