//! The Entra provider authenticating the platform's multi-tenant app with a federated
//! credential from the broker's own issuer: no Entra secret is stored anywhere. The fake
//! Entra holds one FIC (issuer, subject, audience `api://AzureADTokenExchange`) and our JWKS;
//! every consented tenant is served by it.

use credbroker_tests::fake_entra::{self, FakeEntra};
use credbroker_tests::issuer_env::IssuerEnv;
use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

const CLIENT_ID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const ACME: &str = "11111111-2222-4333-8444-555555555555";
const ACME_SP: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const FIC_SUBJECT: &str = "credbroker-entra";
const FIC_AUDIENCE: &str = "api://AzureADTokenExchange";

fn graph_roles() -> Vec<String> {
    let v: Value =
        serde_json::from_slice(&std::fs::read(repo_root().join("policies/azure.json")).unwrap())
            .unwrap();
    v["graph_application_permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

async fn start() -> (IssuerEnv, FakeEntra) {
    // The fake knows a secret, but the daemon is never given one.
    let entra = FakeEntra::start(CLIENT_ID, "never-given-to-the-daemon-0123456789").await;
    let extra = format!(
        "[providers.entra_multi_tenant]\nclient_id = \"{CLIENT_ID}\"\nauthority_host = \"{0}\"\narm_base_url = \"{0}\"\ngraph_base_url = \"{0}\"\nredirect_uri = \"@ISSUER@/callbacks/entra_multi_tenant/setup\"\nceiling_file = {1:?}\ntimeout_ms = 3000\nfederated_subject = \"{FIC_SUBJECT}\"\n",
        entra.url,
        repo_root().join("policies/azure.json").display().to_string(),
    );
    let env = IssuerEnv::start(3600, 300, &extra).await;
    entra.register_redirect_uri(&format!(
        "{}/callbacks/entra_multi_tenant/setup",
        env.issuer
    ));
    let roles = graph_roles();
    let refs: Vec<&str> = roles.iter().map(String::as_str).collect();
    entra.consent(ACME, ACME_SP, &refs);
    entra.require_federated(true);
    (env, entra)
}

/// ACME's consent proven for t1 through a link (with the federated credential as `entra`
/// holds it now, which must match): only then is ACME bound by hand.
async fn prove(env: &mut IssuerEnv, entra: &FakeEntra) {
    let mut public = public_client(&env.pki, &env.issuer);
    fake_entra::prove_then_unbind(&mut env.op, &mut public, entra, "t1", ACME).await;
}

async fn bind(env: &mut IssuerEnv) -> (u16, Value) {
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(
            json!({"owner": "team-tests", "purpose": "integration test", "id": "acme-entra", "tenant": "t1", "provider": "entra_multi_tenant",
                    "config": {"tenant_id": ACME}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    env.probe("acme-entra").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_tokens_with_a_federated_assertion_and_no_secret() {
    let (mut env, entra) = start().await;
    entra.set_federated_credential(&env.issuer, FIC_SUBJECT, FIC_AUDIENCE, env.jwks().await);
    // No Entra key is stored: the platform holds no Entra secret.
    let (code, out, _) = operator_cli(&env.pki, &env.daemon.url, &["keys", "entra", "list"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["keys"],
        json!([])
    );
    prove(&mut env, &entra).await;
    let (s, v) = bind(&mut env).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["binding"]["status"], "active", "{v}");
    env.add_instance("ie", "t1", "acme-entra").await;
    let mut w1 = env.pki.client_for("w1", &env.daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "ie"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["kind"], "entra_access_token", "{v}");
    let auths = entra.client_auths(ACME);
    assert!(
        !auths.is_empty() && auths.iter().all(|a| a == "federated"),
        "{auths:?}"
    );
    // The resolve's audit record names the assertion it sent.
    let records = env.daemon.audit_records();
    let minted = records
        .iter()
        .find(|r| r["action"] == "resolve" && r["outcome"] == "allowed")
        .unwrap();
    let detail = minted["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("sub={FIC_SUBJECT}")) && detail.contains(FIC_AUDIENCE),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_credential_that_does_not_match_is_refused() {
    let (mut env, entra) = start().await;
    // ACME consented while the FIC matched.
    entra.set_federated_credential(&env.issuer, FIC_SUBJECT, FIC_AUDIENCE, env.jwks().await);
    prove(&mut env, &entra).await;
    // The FIC names another subject: Entra finds no matching record (AADSTS700213).
    entra.set_federated_credential(&env.issuer, "someone-else", FIC_AUDIENCE, env.jwks().await);
    let (s, v) = bind(&mut env).await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("700213"),
        "{v}"
    );
    // The FIC trusts another issuer (AADSTS700211).
    entra.set_federated_credential(
        "https://evil.example",
        FIC_SUBJECT,
        FIC_AUDIENCE,
        env.jwks().await,
    );
    let (s, v) = env.probe("acme-entra").await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("700211"),
        "{v}"
    );
    // Keys Entra does not hold for our issuer: the signature fails (AADSTS700027).
    let other = credbroker_tests::issuer_env::TestSigner::new(&env.issuer);
    entra.set_federated_credential(&env.issuer, FIC_SUBJECT, FIC_AUDIENCE, other.jwks());
    let (s, v) = env.probe("acme-entra").await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("700027"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_secret_still_serves_while_the_federated_credential_does_not_match() {
    // Moving from a secret to the FIC: the FIC is not matched yet (AADSTS70021, as for
    // minutes after it is created); the app's active secret is tried next.
    let (mut env, entra) = start().await;
    entra.require_federated(false);
    let secret = "never-given-to-the-daemon-0123456789";
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/keys/entra_multi_tenant",
        Some(json!({"fields": {"client_secret": secret}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let version = v["key"]["version"].as_u64().unwrap();
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        &format!("/v1/admin/keys/entra_multi_tenant/{version}/activate"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    prove(&mut env, &entra).await;
    let (s, v) = bind(&mut env).await;
    assert_eq!(s, 200, "{v}");
    let auths = entra.client_auths(ACME);
    assert!(
        auths.contains(&"federated".to_owned()) && auths.contains(&"secret".to_owned()),
        "{auths:?}"
    );
    // Once the FIC exists, the assertion is used first and the secret is no longer sent.
    entra.set_federated_credential(&env.issuer, FIC_SUBJECT, FIC_AUDIENCE, env.jwks().await);
    let before = entra.client_auths(ACME).len();
    let (s, v) = env.probe("acme-entra").await;
    assert_eq!(s, 200, "{v}");
    let after: Vec<String> = entra.client_auths(ACME).into_iter().skip(before).collect();
    assert!(
        !after.is_empty() && after.iter().all(|a| a == "federated"),
        "{after:?}"
    );
}

/// The customer's browser opens the consent link of `state` and comes back from Entra
/// having consented: the callback's answer.
async fn consent(env: &IssuerEnv, entra: &FakeEntra, state: &str) -> (u16, Value) {
    let mut public = public_client(&env.pki, &env.issuer);
    let (status, cookie, location) = fake_entra::open_link(&mut public, state).await;
    assert_eq!(status, 302);
    fake_entra::come_back(
        &mut public,
        entra,
        &location,
        cookie.as_deref(),
        &fake_entra::SignIn::admin(ACME),
    )
    .await
}

/// A deployment with no stored secret at all (the README's end state) still onboards
/// customers: the consent is confirmed with the federated assertion (it used to be refused
/// with "no Entra app credential is active" before a link was issued).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_is_confirmed_with_the_federated_credential_alone() {
    let (mut env, entra) = start().await;
    entra.set_federated_credential(&env.issuer, FIC_SUBJECT, FIC_AUDIENCE, env.jwks().await);
    let state = fake_entra::onboard(&mut env.op, "t1", ACME).await;
    let (status, v) = consent(&env, &entra, &state).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("active")), "{v}");
    assert!(
        entra.client_auths(ACME).iter().all(|a| a == "federated"),
        "{:?}",
        entra.client_auths(ACME)
    );
}

/// A consent whose confirmation Entra refuses because the platform's own credential does
/// not match (here the FIC names another subject): the browser is told it failed and which
/// AADSTS code, never the FIC's subject; the audit record says which credential failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_consent_shows_the_browser_no_credential_detail() {
    let (mut env, entra) = start().await;
    entra.set_federated_credential(&env.issuer, FIC_SUBJECT, FIC_AUDIENCE, env.jwks().await);
    let state = fake_entra::onboard(&mut env.op, "t1", ACME).await;
    entra.set_federated_credential(&env.issuer, "someone-else", FIC_AUDIENCE, env.jwks().await);
    let (status, v) = consent(&env, &entra, &state).await;
    assert_ne!(status, 200, "{v}");
    let shown = v.to_string();
    assert!(shown.contains("700213"), "{shown}");
    assert!(
        !shown.contains(FIC_SUBJECT) && !shown.contains("subject"),
        "the browser learnt the FIC's subject: {shown}"
    );
    // The operator's log has Entra's description (the echo check takes the assertion, not
    // the fixed `client_assertion_type`, whose words every such description repeats).
    let logs = env.daemon.logs();
    assert!(
        logs.contains(
            "No matching federated identity record found for presented assertion subject"
        ),
        "{logs}"
    );
    let denied = env
        .daemon
        .audit_records()
        .into_iter()
        .find(|r| r["outcome"] == "denied" && r["error_code"] == "callback_rejected")
        .expect("the refusal is audited");
    assert!(
        denied["detail"]
            .as_str()
            .unwrap()
            .contains("federated credential"),
        "{denied}"
    );
}

/// Entra's descriptions of refusals outside the bad-credential codes (here a disabled app:
/// Entra's text names the app) go to the daemon's log; the consent browser and the worker
/// are told the AADSTS code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_descriptions_stay_in_the_daemons_log() {
    let (mut env, entra) = start().await;
    entra.set_federated_credential(&env.issuer, FIC_SUBJECT, FIC_AUDIENCE, env.jwks().await);
    prove(&mut env, &entra).await;
    let (s, v) = bind(&mut env).await;
    assert_eq!(s, 200, "{v}");
    env.add_instance("ie", "t1", "acme-entra").await;
    *entra.state.disabled.lock().unwrap() = true;

    let state = fake_entra::onboard(&mut env.op, "t1", ACME).await;
    let (_, v) = consent(&env, &entra, &state).await;
    let shown = v.to_string();
    assert!(shown.contains("7000112"), "{shown}");
    assert!(
        !shown.contains("credbroker-fake-app"),
        "the browser was shown Entra's description: {shown}"
    );

    let mut w1 = env.pki.client_for("w1", &env.daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "ie"})).await;
    assert_ne!(s, 200, "{v}");
    let told = v.to_string();
    assert!(told.contains("7000112"), "{told}");
    assert!(
        !told.contains("credbroker-fake-app"),
        "the worker was shown Entra's description: {told}"
    );
    assert!(
        env.daemon.logs().contains("credbroker-fake-app"),
        "the operator's log has Entra's description"
    );
}
