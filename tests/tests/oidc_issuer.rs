//! The broker's own OIDC issuer: discovery and JWKS on the public listener, byte-identical
//! `issuer`, keys sealed in the store, the staged key lifecycle (a rotated key is published
//! before it signs; a token signed by the previous key keeps verifying until that key is
//! retired), `keys issuer …` and `issuer jwks`, all checked with an independent JOSE
//! library (PyJWT) against what the broker publishes.

use std::time::Duration;

use credbroker_tests::issuer_env::{subject_of, IssuerEnv, POOL, SA};
use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

/// PyJWT's verdict on `token` against `jwks`: the claims, or the error's class name.
fn pyjwt(jwks: &Value, token: &str, issuer: &str, audience: &str) -> Result<Value, String> {
    let script = r#"
import json, sys, jwt
jwks, token, issuer, audience = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
try:
    kid = jwt.get_unverified_header(token)["kid"]
    keys = [k for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id == kid]
    if not keys:
        raise jwt.exceptions.PyJWKError("no key " + kid)
    claims = jwt.decode(token, key=keys[0].key, algorithms=["RS256"], audience=audience,
                        issuer=issuer,
                        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]})
    print(json.dumps({"ok": claims}))
except Exception as e:
    print(json.dumps({"err": type(e).__name__ + ": " + str(e)}))
"#;
    let python = test_python();
    let out = std::process::Command::new(python)
        .args(["-c", script, &jwks.to_string(), token, issuer, audience])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    match v.get("ok") {
        Some(c) => Ok(c.clone()),
        None => Err(v["err"].as_str().unwrap_or_default().to_owned()),
    }
}

fn cli(env: &IssuerEnv, args: &[&str]) -> (i32, Value) {
    let (code, out, err) = operator_cli(&env.pki, &env.daemon.url, args);
    let v = serde_json::from_str(&out).unwrap_or_else(|_| json!({"stderr": err}));
    (code, v)
}

fn phase(list: &Value, version: u64) -> String {
    list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["version"] == version)
        .map(|k| k["phase"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn last_token(env: &IssuerEnv) -> String {
    env.gcp
        .state
        .subject_tokens
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_jwks_rotation_and_retirement_as_a_relying_party_sees_them() {
    // A 10 s lead: the steps between the rotation and the key's turn (a JWKS fetch, three
    // CLI runs, an audited change, a mint) fit in it on a loaded machine.
    let mut env = IssuerEnv::start(10, 60, "").await;
    // Discovery: issuer byte-identical to the configured URL, RS256, the JWKS under it.
    let (s, d) = env.public_get("/.well-known/openid-configuration").await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["issuer"], env.issuer.as_str());
    assert_eq!(
        d["jwks_uri"],
        format!("{}/.well-known/jwks.json", env.issuer)
    );
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["RS256"]));
    assert_eq!(d["response_types_supported"], json!(["id_token"]));
    assert_eq!(d["subject_types_supported"], json!(["public"]));
    // The test issuer listens on a port of its own: the doctor says AWS IAM would refuse it.
    let config = env.daemon.config.to_str().unwrap().to_owned();
    let (_, out, err) = run_cli(&["doctor", "--config", &config, "--output", "json"]);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "issuer.url")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(finding["status"], "warn", "{finding}");
    assert!(
        finding["detail"]
            .as_str()
            .unwrap()
            .contains("AWS IAM refuses"),
        "{finding}"
    );
    // And that a 10 s lead signs before relying parties caching the JWKS have fetched it.
    let lead = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "issuer.publish_lead")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(lead["status"], "warn", "{lead}");
    assert!(
        lead["detail"]
            .as_str()
            .unwrap()
            .contains("publish_lead_s is 10 s"),
        "{lead}"
    );
    let jwks = env.jwks().await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "the first key, made at start");
    for field in ["kty", "use", "alg", "kid", "n", "e"] {
        assert!(keys[0][field].is_string(), "{field} in {jwks}");
    }
    assert_eq!(
        (
            keys[0]["kty"].as_str(),
            keys[0]["use"].as_str(),
            keys[0]["alg"].as_str()
        ),
        (Some("RSA"), Some("sig"), Some("RS256"))
    );
    // Relying parties may cache it for half the time a rotated key waits to sign (10 s).
    let python = test_python();
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import ssl,sys,urllib.request;r=urllib.request.urlopen(sys.argv[1],context=ssl.create_default_context(cafile=sys.argv[2]));print(r.headers['Cache-Control'])",
            &format!("{}/.well-known/jwks.json", env.issuer),
            &env.pki.dir.join("ca.crt").display().to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "public, max-age=5",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `issuer jwks` prints what the public listener serves (for inline pinning).
    let (code, printed) = cli(&env, &["issuer", "jwks"]);
    assert_eq!(code, 0, "{printed}");
    assert_eq!(printed, jwks);
    let (code, list) = cli(&env, &["keys", "issuer", "list"]);
    assert_eq!(code, 0, "{list}");
    assert_eq!(phase(&list, 1), "current");

    // A real assertion (the GCP probe's), verified by PyJWT against the published JWKS.
    let (s, v) = env
        .add_gcp_binding("g1", "t1", POOL, SA, IssuerEnv::both_scopes())
        .await;
    assert_eq!(s, 201, "{v}");
    let subject = subject_of(&v);
    env.customer_trusts(POOL, SA, &subject, true, false).await;
    let (s, v) = env.probe("g1").await;
    assert_eq!(s, 200, "{v}");
    let audience = format!("https://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/{POOL}/providers/{POOL}");
    let first = env.gcp.state.subject_tokens.lock().unwrap()[0].clone();
    let claims = pyjwt(&jwks, &first, &env.issuer, &audience).unwrap();
    assert_eq!(claims["sub"], subject.as_str());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        60
    );
    assert_eq!(claims["nbf"], claims["iat"]);
    // The wrong audience or issuer fails PyJWT too (the claims are what relying parties pin).
    assert!(pyjwt(&jwks, &first, &env.issuer, "sts.amazonaws.com").is_err());
    assert!(pyjwt(&jwks, &first, "https://evil.example", &audience).is_err());

    // Rotate: the new key is published at once and signs only after publish_lead_s.
    let (code, r) = cli(&env, &["keys", "issuer", "rotate"]);
    assert_eq!(code, 0, "{r}");
    // Its turn comes by then: the lead began before the rotation answered.
    let turn = std::time::Instant::now() + Duration::from_millis(10_500);
    assert_eq!(r["key"]["phase"], "next", "{r}");
    // Each live key names the KEK version wrapping it (a KEK rotation's check).
    assert_eq!(r["key"]["kek_version"], 1, "{r}");
    let jwks2 = env.jwks().await;
    assert_eq!(jwks2["keys"].as_array().unwrap().len(), 2, "{jwks2}");
    // One waiting key at a time; the signing key is never retired.
    let (code, r) = cli(&env, &["keys", "issuer", "rotate"]);
    assert_ne!(code, 0, "{r}");
    let (code, r) = cli(&env, &["keys", "issuer", "retire", "1"]);
    assert_ne!(code, 0, "{r}");
    // Nor the waiting key when it is about to sign (it could be the signing key by the time
    // the change commits).
    let (code, r) = cli(&env, &["keys", "issuer", "retire", "2"]);
    assert_ne!(code, 0, "{r}");
    // Until then the old key still signs.
    let mut w1 = env.pki.client_for("w1", &env.daemon.url);
    env.add_instance("ig1", "t1", "g1").await;
    let (s, v) = resolve(&mut w1, json!({"instance_id": "ig1"})).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        pyjwt(&jwks, &last_token(&env), &env.issuer, &audience).is_ok(),
        "still key 1"
    );
    tokio::time::sleep(turn.saturating_duration_since(std::time::Instant::now())).await;
    let (_, list) = cli(&env, &["keys", "issuer", "list"]);
    assert_eq!(
        (phase(&list, 1).as_str(), phase(&list, 2).as_str()),
        ("previous", "current"),
        "{list}"
    );
    let narrow = json!({"instance_id": "ig1", "narrow": {"scopes": ["https://www.googleapis.com/auth/cloud-platform.read-only"]}});
    let (s, v) = resolve(&mut w1, narrow.clone()).await;
    assert_eq!(s, 200, "{v}");
    let second = last_token(&env);
    let published = env.jwks().await;
    assert_eq!(
        published["keys"].as_array().unwrap().len(),
        2,
        "previous key still published"
    );
    assert!(
        pyjwt(&jwks, &second, &env.issuer, &audience).is_err(),
        "signed by the new key"
    );
    // The token signed by the previous key still verifies against what is published.
    assert!(pyjwt(&published, &first, &env.issuer, &audience).is_ok());
    assert!(pyjwt(&published, &second, &env.issuer, &audience).is_ok());

    // Retiring the previous key before its tokens expired needs --compromised; then its
    // tokens stop verifying at once.
    let (code, r) = cli(&env, &["keys", "issuer", "retire", "1"]);
    assert_ne!(code, 0, "{r}");
    let (code, r) = cli(&env, &["keys", "issuer", "retire", "1", "--compromised"]);
    assert_eq!(code, 0, "{r}");
    let after = env.jwks().await;
    assert_eq!(after["keys"].as_array().unwrap().len(), 1, "{after}");
    assert!(pyjwt(&after, &first, &env.issuer, &audience).is_err());
    assert!(pyjwt(&after, &second, &env.issuer, &audience).is_ok());
    let (_, list) = cli(&env, &["keys", "issuer", "list"]);
    assert_eq!(phase(&list, 1), "retired");
    let retired = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["version"] == 1)
        .unwrap()
        .clone();
    assert_eq!(retired["compromised"], true, "{retired}");

    // Every change is audited; the key material never leaves the sealed store.
    let records = env.daemon.audit_records();
    for action in ["keys.issuer.rotate", "keys.issuer.retire"] {
        assert!(
            records
                .iter()
                .any(|r| r["action"] == action && r["outcome"] == "allowed"),
            "{action}"
        );
    }
    let mut stack = vec![env.daemon.data_dir.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(11).any(|w| w == b"PRIVATE KEY"),
                    "key material in the clear in {}",
                    p.display()
                );
            }
        }
    }
    // Keys live in the store: after a restart the same key signs and is published.
    let kid = after["keys"][0]["kid"].clone();
    env.daemon.restart();
    let again = env.jwks().await;
    assert_eq!(again["keys"].as_array().unwrap().len(), 1);
    assert_eq!(again["keys"][0]["kid"], kid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_routes_refuse_everyone_they_are_not_for() {
    let mut env = IssuerEnv::start(3600, 300, "").await;
    env.pki.operator("op2");
    // A revoked operator: registered, then disabled.
    for id in ["op", "op2"] {
        let (s, v) = call(
            &mut env.op,
            Method::POST,
            "/v1/admin/operators",
            Some(json!({"id": id})),
        )
        .await;
        assert!(s == 201 || s == 409, "{v}");
    }
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/operators/op2/disable",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let mut op2 = env.pki.client_for("op2", &env.daemon.url);
    for (method, path) in [
        (Method::POST, "/v1/admin/issuer/keys"),
        (Method::POST, "/v1/admin/issuer/keys/1/retire"),
        (Method::GET, "/v1/admin/issuer/keys"),
    ] {
        let (s, v) = call(&mut op2, method, path, Some(json!({"now": true}))).await;
        assert_eq!((s, code(&v)), (403, "operator_required"), "{path}: {v}");
    }
    // A worker is not an operator.
    let mut w1 = env.pki.client_for("w1", &env.daemon.url);
    let (s, v) = call(
        &mut w1,
        Method::POST,
        "/v1/admin/issuer/keys",
        Some(json!({})),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "operator_required"), "{v}");
    // Anonymous clients on the public listener: read only, nothing administrative there.
    let (s, v) = call(
        &mut public_client(&env.pki, &env.issuer),
        Method::POST,
        "/.well-known/jwks.json",
        Some(json!({})),
    )
    .await;
    assert_eq!((s, code(&v)), (405, "method_not_allowed"), "{v}");
    let (s, v) = env.public_get("/v1/admin/issuer/jwks").await;
    assert_eq!((s, code(&v)), (404, "not_found"), "{v}");
    // The mTLS listener does not serve the public documents.
    let (s, v) = call(&mut w1, Method::GET, "/.well-known/jwks.json", None).await;
    assert_eq!((s, code(&v)), (404, "not_found"), "{v}");
    // Nothing changed: still the one key made at start, and the refusals are audited.
    let (_, list) = cli(&env, &["keys", "issuer", "list"]);
    assert_eq!(list["keys"].as_array().unwrap().len(), 1, "{list}");
    let denied: Vec<Value> = env
        .daemon
        .audit_records()
        .into_iter()
        .filter(|r| r["actor"] == "operator:op2" && r["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 3, "{denied:?}");
}

/// A platform key record read only at its own key: the issuer's key copied under another
/// version's key (by whoever can write the store, not the KEK) would open — its seal names
/// the version inside the record — and be published twice; the start refuses the store as
/// corrupt, naming the key, and nothing is served from it; the log it opened is left signed
/// (the next start finds no unsigned tail). Fails if keys are read by the prefix they sit
/// under alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_key_copied_under_another_key_stops_the_start() {
    use credbroker::store::{Batch, Op, Store, Table};
    let mut env = IssuerEnv::start(60, 300, "").await;
    assert_eq!(env.jwks().await["keys"].as_array().unwrap().len(), 1);
    // Killed: its last records have no checkpoint (the next open records that, once).
    env.daemon.kill_hard();
    {
        let store = credbroker::store::SledStore::open(&env.daemon.data_dir.join("store")).unwrap();
        let key = store
            .scan(Table::PlatformKeys, "issuer/")
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(key.0, "issuer/0000000001");
        let mut batch = Batch::new();
        batch.push(Op::Put(
            Table::PlatformKeys,
            "issuer/0000000002".into(),
            key.1,
        ));
        store.commit(batch).await.unwrap();
    }
    let (c, err) = env.daemon.serve_refused(&[]);
    assert_ne!(c, 0, "{err}");
    assert!(
        err.contains("platform_keys") && err.contains("issuer/0000000002"),
        "{err}"
    );
    // The refused start closed the log it had opened (its record of the unsigned tail is
    // signed over): once the copy is gone, the next start finds no unsigned tail.
    {
        let store = credbroker::store::SledStore::open(&env.daemon.data_dir.join("store")).unwrap();
        let mut batch = Batch::new();
        batch.push(Op::Delete(Table::PlatformKeys, "issuer/0000000002".into()));
        store.commit(batch).await.unwrap();
    }
    env.daemon.restart_with(&[]);
    env.daemon.stop();
    let tails = env
        .daemon
        .audit_records()
        .into_iter()
        .filter(|r| r["action"] == "audit.unsigned_tail")
        .count();
    assert_eq!(tails, 1, "a refused start left its log unsigned");
}
