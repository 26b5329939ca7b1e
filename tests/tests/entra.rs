//! `entra_multi_tenant` end to end against the local fake Entra: the admin-consent flow bound
//! to a broker tenant, the customer's tenant GUID and one browser; minting with claim checks,
//! caching and single flight; drift (`consent_stale`, `consent_missing`) and its repair by a
//! fresh consent; app credential rotation with two active; and every attack on the consent
//! callback a customer with a valid link or an anonymous client could try.

use std::time::Duration;

use credbroker::client::BrokerClient;
use credbroker_tests::fake_entra::{
    add_client_secret as add_secret, callback, come_back, onboard, open_link, FakeEntra, SignIn,
    ARM,
};
use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

const CLIENT_ID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const SECRET_A: &str = "secretA~0123456789abcdefghijklmnop";
const SECRET_B: &str = "secretB~0123456789abcdefghijklmnop";
/// Customer tenants.
pub(crate) const ACME: &str = "11111111-2222-4333-8444-555555555555";
const GLOBEX: &str = "22222222-3333-4444-8555-666666666666";
/// Our service principal in each.
pub(crate) const ACME_SP: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const GLOBEX_SP: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";

pub(crate) struct Env {
    _tmp: tempfile::TempDir,
    pki: std::sync::Arc<TestPki>,
    pub(crate) daemon: Daemon,
    pub(crate) entra: FakeEntra,
    pub(crate) op: BrokerClient,
    pub(crate) public: BrokerClient,
}

impl Env {
    fn w1(&self) -> BrokerClient {
        self.pki.client_for("w1", &self.daemon.url)
    }
}

/// The Graph permissions of policies/azure.json (the default expectation of a binding).
fn policy_roles() -> Vec<String> {
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

pub(crate) fn consent_all(entra: &FakeEntra, tenant: &str, sp: &str) {
    let roles = policy_roles();
    let refs: Vec<&str> = roles.iter().map(String::as_str).collect();
    entra.consent(tenant, sp, &refs);
}

pub(crate) async fn start() -> Env {
    start_with("", true).await
}

/// As [`start`], with `provider_lines` added to the provider's section and, when `secret`,
/// client secret A stored and active.
async fn start_with(provider_lines: &str, secret: bool) -> Env {
    let (tmp, pki) = setup();
    let entra = FakeEntra::start(CLIENT_ID, SECRET_A).await;
    let (public, port) = public_section(&pki);
    let extra = format!(
        "{public}[providers.entra_multi_tenant]\nclient_id = \"{CLIENT_ID}\"\nauthority_host = \"{}\"\narm_base_url = \"{}\"\ngraph_base_url = \"{}\"\nredirect_uri = \"https://127.0.0.1:{port}/callbacks/entra_multi_tenant/setup\"\nceiling_file = {:?}\ntimeout_ms = 3000\n{provider_lines}",
        entra.url,
        entra.url,
        entra.url,
        repo_root().join("policies/azure.json").display().to_string(),
    );
    entra.register_redirect_uri(&format!(
        "https://127.0.0.1:{port}/callbacks/entra_multi_tenant/setup"
    ));
    let daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            extra_toml: extra,
            ..Default::default()
        },
    );
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    if secret {
        add_secret(&mut op, SECRET_A).await;
    }
    let public = public_client(&pki, daemon.public_url.as_ref().expect("public listener"));
    Env {
        _tmp: tmp,
        pki,
        daemon,
        entra,
        op,
        public,
    }
}

/// The whole consent as the admin's browser does it: open the link, sign in at Entra as
/// `person` and consent, come back with what Entra sends.
pub(crate) async fn consent_round(
    public: &mut BrokerClient,
    entra: &FakeEntra,
    state: &str,
    person: &SignIn,
) -> (u16, Value) {
    let (s, cookie, location) = open_link(public, state).await;
    assert_eq!(s, 302, "the link opens");
    come_back(public, entra, &location, cookie.as_deref(), person).await
}

/// A return typed by whoever holds the link's browser: open the link, come back with
/// `query` (the state appended) without signing in at Entra.
pub(crate) async fn typed_return(
    public: &mut BrokerClient,
    state: &str,
    query: &str,
) -> (u16, Value) {
    let (_, cookie, _) = open_link(public, state).await;
    callback(public, &format!("{query}&state={state}"), cookie.as_deref()).await
}

pub(crate) fn token_requests_for(entra: &FakeEntra, tenant: &str) -> usize {
    entra
        .state
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t == tenant)
        .count()
}

async fn binding(op: &mut BrokerClient, id: &str) -> Value {
    let (s, v) = call(op, Method::GET, &format!("/v1/admin/bindings/{id}"), None).await;
    assert_eq!(s, 200, "{v}");
    v["binding"].clone()
}

async fn probe(op: &mut BrokerClient, id: &str) -> (u16, Value) {
    call(
        op,
        Method::POST,
        &format!("/v1/admin/bindings/{id}/probe"),
        Some(json!({})),
    )
    .await
}

fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// The audit record a caller was given `audit_id` (`aud_` + 20 hex digits of its hash) for.
pub(crate) fn record(daemon: &Daemon, audit_id: &str) -> Value {
    daemon
        .audit_records()
        .into_iter()
        .find(|r| format!("aud_{}", &r["hash"].as_str().unwrap()[..20]) == audit_id)
        .unwrap_or_else(|| panic!("no audit record {audit_id}"))
}

pub(crate) const BINDING: &str = "entra-multi-tenant-11111111-2222-4333-8444-555555555555";

/// Consents ACME for t1 and adds instance `i-entra` on its binding.
async fn bind_acme(env: &mut Env) {
    consent_all(&env.entra, ACME, ACME_SP);
    let state = onboard(&mut env.op, "t1", ACME).await;
    let (s, v) = consent_round(&mut env.public, &env.entra, &state, &SignIn::admin(ACME)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["binding"].as_str(), v["status"].as_str()),
        (Some(BINDING), Some("active")),
        "{v}"
    );
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/instances",
        Some(
            json!({"id": "i-entra", "tenant": "t1", "binding": BINDING, "connector_kind": "entra"}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_flow_minting_drift_and_rotation() {
    let mut env = start().await;
    consent_all(&env.entra, ACME, ACME_SP);

    // The link opens Entra's sign-in and consent page of exactly the tenant the operator
    // named: the authorization-code flow, whose code only the broker can redeem.
    let state = onboard(&mut env.op, "t1", ACME).await;
    let (s, cookie, location) = open_link(&mut env.public, &state).await;
    assert_eq!(s, 302);
    assert!(cookie.is_some());
    assert!(
        location.starts_with(&format!("{}/{ACME}/oauth2/v2.0/authorize?", env.entra.url)),
        "{location}"
    );
    for part in [
        format!("client_id={CLIENT_ID}"),
        format!("state={state}"),
        "response_type=code".to_owned(),
        "scope=openid+https%3A%2F%2Fgraph.microsoft.com%2F.default".to_owned(),
        "redirect_uri=https%3A%2F%2F127.0.0.1%3A".to_owned(),
        "prompt=consent".to_owned(),
        "nonce=".to_owned(),
    ] {
        assert!(location.contains(&part), "{part} in {location}");
    }
    assert!(!location.contains(&format!("nonce={state}")), "{location}");
    // Entra propagates the new service principal for a moment: answered by bounded retries.
    env.entra
        .state
        .tenants
        .lock()
        .unwrap()
        .get_mut(ACME)
        .unwrap()
        .propagating = 2;
    let back = env.entra.sign_in(&location, &SignIn::admin(ACME)).unwrap();
    let query = back.split_once('?').unwrap().1.to_owned();
    let (s, v) = callback(&mut env.public, &query, cookie.as_deref()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "active", "{v}");
    // The code was redeemed at ACME's token endpoint with our app's credential.
    let redeemed = env
        .entra
        .state
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, f)| {
            t == ACME && f.get("grant_type").map(String::as_str) == Some("authorization_code")
        })
        .count();
    assert_eq!(redeemed, 1);
    assert!(v["probe"].as_str().unwrap().contains(ACME_SP), "{v}");
    let b = binding(&mut env.op, BINDING).await;
    assert_eq!(b["tenant"], "t1");
    assert_eq!(b["config"]["tenant_id"], ACME);
    assert_eq!(b["trust_facts"]["service_principal_id"], ACME_SP, "{b}");
    assert_eq!(
        b["trust_facts"]["graph_permissions"]
            .as_array()
            .unwrap()
            .len(),
        policy_roles().len()
    );
    assert!(b["trust_facts"]["confirmed_at"].is_string());
    // Replaying the callback (same state, same code) is refused.
    let (s, v) = callback(&mut env.public, &query, cookie.as_deref()).await;
    assert_eq!((s, code(&v)), (403, "callback_rejected"), "{v}");

    // Minting: a Graph token for ACME, checked, cached, one upstream call for many callers.
    call(
        &mut env.op,
        Method::POST,
        "/v1/admin/instances",
        Some(
            json!({"id": "i-entra", "tenant": "t1", "binding": BINDING, "connector_kind": "entra"}),
        ),
    )
    .await;
    let before = token_requests_for(&env.entra, ACME);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut w = env.w1();
        tasks.push(tokio::spawn(async move {
            resolve(&mut w, json!({"instance_id": "i-entra"})).await
        }));
    }
    let mut tokens = std::collections::BTreeSet::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["kind"], "entra_access_token");
        tokens.insert(
            v["credentials"]["access_token"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(tokens.len(), 1, "single flight: one token for all");
    assert_eq!(
        token_requests_for(&env.entra, ACME),
        before + 1,
        "one upstream mint"
    );
    let claims = claims_of(tokens.iter().next().unwrap());
    assert_eq!(claims["tid"], ACME);
    let last = env
        .entra
        .state
        .requests
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .1
        .clone();
    assert_eq!(last["scope"], "https://graph.microsoft.com/.default");
    assert_eq!(last["grant_type"], "client_credentials");
    // ARM is not among this binding's resources.
    let (s, v) = resolve(
        &mut env.w1(),
        json!({"instance_id": "i-entra", "narrow": {"resource": "arm"}}),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "narrowing_exceeds_ceiling"), "{v}");
    // `credbroker client token` prints the same bearer for scripts.
    let ca = env.pki.dir.join("ca.crt");
    let (c, out, err) = run_cli(&[
        "client",
        "token",
        "--instance",
        "i-entra",
        "--server",
        &env.daemon.url,
        "--ca",
        ca.to_str().unwrap(),
        "--cert",
        env.pki.dir.join("w1.crt").to_str().unwrap(),
        "--key",
        env.pki.dir.join("w1.key").to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(out.trim(), tokens.iter().next().unwrap());
    let (c, out, err) = run_cli(&[
        "client",
        "token",
        "--json",
        "--instance",
        "i-entra",
        "--server",
        &env.daemon.url,
        "--ca",
        ca.to_str().unwrap(),
        "--cert",
        env.pki.dir.join("w1.crt").to_str().unwrap(),
        "--key",
        env.pki.dir.join("w1.key").to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{err}");
    let j: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["token_type"], "Bearer");
    assert!(j["expires_on"].as_i64().unwrap() > 0);

    // Drift: the customer removes one permission. The probe (and the next mint) sees it:
    // consent_stale naming the permission; resolves refused, cached token included.
    env.entra.revoke_role(ACME, "AuditLog.Read.All");
    let (s, v) = probe(&mut env.op, BINDING).await;
    assert_eq!((s, code(&v)), (403, "consent_stale"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("AuditLog.Read.All"),
        "{v}"
    );
    let b = binding(&mut env.op, BINDING).await;
    assert_eq!(b["drift"]["code"], "consent_stale", "{b}");
    let (s, v) = resolve(&mut env.w1(), json!({"instance_id": "i-entra"})).await;
    assert_eq!((s, code(&v)), (403, "consent_stale"), "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("AuditLog.Read.All"));
    // Re-consent through a fresh link restores it.
    consent_all(&env.entra, ACME, ACME_SP);
    let state = onboard(&mut env.op, "t1", ACME).await;
    let (s, v) = consent_round(&mut env.public, &env.entra, &state, &SignIn::admin(ACME)).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("active")), "{v}");
    assert!(binding(&mut env.op, BINDING).await.get("drift").is_none());
    let (s, v) = resolve(&mut env.w1(), json!({"instance_id": "i-entra"})).await;
    assert_eq!(s, 200, "{v}");

    // Rotation: a second secret, both active; the first revoked at Entra: mints go on.
    add_secret(&mut env.op, SECRET_B).await;
    // Neither secret's plain hash is in the audit log (its records name keyed fingerprints).
    let audit = serde_json::to_string(&env.daemon.audit_records()).unwrap();
    for secret in [SECRET_A, SECRET_B] {
        assert!(
            !audit.contains(&credbroker_tests::fake_entra::plain_secret_hash(secret)),
            "a plain hash of a client secret in the audit log"
        );
    }
    env.entra
        .state
        .secrets
        .lock()
        .unwrap()
        .push(SECRET_B.into());
    env.entra
        .state
        .secrets
        .lock()
        .unwrap()
        .retain(|s| s != SECRET_A);
    let (s, v) = probe(&mut env.op, BINDING).await;
    assert_eq!(s, 200, "{v}");
    // With no valid secret at all: provider_denied naming the rotation runbook.
    env.entra.state.secrets.lock().unwrap().clear();
    let (s, v) = probe(&mut env.op, BINDING).await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("entra-app-credential"),
        "{v}"
    );
    env.entra
        .state
        .secrets
        .lock()
        .unwrap()
        .push(SECRET_B.into());

    // Consent withdrawn (enterprise application deleted): consent_missing.
    env.entra.withdraw(ACME);
    let (s, v) = probe(&mut env.op, BINDING).await;
    assert_eq!((s, code(&v)), (403, "consent_missing"), "{v}");
    let (s, v) = resolve(&mut env.w1(), json!({"instance_id": "i-entra"})).await;
    assert_eq!((s, code(&v)), (403, "consent_missing"), "{v}");
    let b = binding(&mut env.op, BINDING).await;
    assert_eq!(b["drift"]["code"], "consent_missing", "{b}");
    // No secret ever reached the audit log, the store or the logs.
    let audit = serde_json::to_string(&env.daemon.audit_records()).unwrap();
    for secret in [SECRET_A, SECRET_B] {
        assert!(!audit.contains(secret));
        assert!(!env.daemon.logs().contains(secret));
    }
    assert!(!audit.contains(tokens.iter().next().unwrap().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_seen_by_a_resolve_marks_the_binding() {
    let mut env = start().await;
    bind_acme(&mut env).await;
    // The first mint sees the permission missing (no probe in between).
    env.entra.revoke_role(ACME, "Directory.Read.All");
    let (s, v) = resolve(&mut env.w1(), json!({"instance_id": "i-entra"})).await;
    assert_eq!((s, code(&v)), (403, "consent_stale"), "{v}");
    let audit_id = v["error"]["audit_id"].as_str().unwrap().to_owned();
    let rec = record(&env.daemon, &audit_id);
    assert!(
        rec["detail"]
            .as_str()
            .unwrap()
            .contains("Directory.Read.All"),
        "{rec}"
    );
    // The binding is marked through the audited pipeline (in its own task).
    let mut marked = false;
    for _ in 0..50 {
        if binding(&mut env.op, BINDING).await["drift"]["code"] == "consent_stale" {
            marked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(marked);
    assert!(env
        .daemon
        .audit_records()
        .iter()
        .any(|r| r["action"] == "binding.flag_trust_broken"
            && r["detail"].as_str().unwrap_or("").contains("consent_stale")));
    // Even once the fake grants it again, the binding stays refused until a probe passes.
    consent_all(&env.entra, ACME, ACME_SP);
    let (s, v) = resolve(&mut env.w1(), json!({"instance_id": "i-entra"})).await;
    assert_eq!((s, code(&v)), (403, "consent_stale"), "{v}");
    let (s, v) = probe(&mut env.op, BINDING).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = resolve(&mut env.w1(), json!({"instance_id": "i-entra"})).await;
    assert_eq!(s, 200, "{v}");
}

/// A hostile token endpoint (or a proxy before it) that echoes the request's client secret
/// in its error, as a server error and as a refusal: the secret reaches neither the worker,
/// the operator's probe answer, the binding's probe note, the audit log nor the daemon's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoed_client_secret_is_repeated_nowhere() {
    let mut env = start().await;
    bind_acme(&mut env).await;
    let leaked = |text: &str| text.contains(&SECRET_A[..12]);
    for status in [503, 400] {
        *env.entra.state.echo_secret.lock().unwrap() = Some(status);
        let (s, v) = probe(&mut env.op, BINDING).await;
        assert_ne!(s, 200, "{v}");
        assert!(!leaked(&v.to_string()), "probe answer: {v}");
        // Nothing is cached: a failed mint never is, nor a probe's token.
        let (s, v) = resolve(&mut env.w1(), json!({"instance_id": "i-entra"})).await;
        assert_ne!(s, 200, "{v}");
        assert!(!leaked(&v.to_string()), "resolve answer: {v}");
    }
    assert!(!leaked(&binding(&mut env.op, BINDING).await.to_string()));
    for r in env.daemon.audit_records() {
        assert!(!leaked(&r.to_string()), "audit record: {r}");
    }
    let logs = env.daemon.logs();
    assert!(
        logs.contains("withheld: it repeats what the request sent"),
        "{logs}"
    );
    assert!(!leaked(&logs), "the daemon's log holds the secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_failing_a_claim_check_are_never_handed_out() {
    let mut env = start().await;
    bind_acme(&mut env).await;
    for (what, check) in [("tid", "tid"), ("appid", "appid"), ("extra", "beyond")] {
        {
            let mut m = env.entra.state.misissue.lock().unwrap();
            *m = Default::default();
            match what {
                "tid" => m.tid = Some(GLOBEX.into()),
                "appid" => m.appid = Some("99999999-9999-4999-8999-999999999999".into()),
                _ => m.extra_roles = vec!["Directory.ReadWrite.All".into()],
            }
        }
        // A fresh mint each time: the probe re-checks, and resolves use a new narrowing key.
        let (s, v) = probe(&mut env.op, BINDING).await;
        assert_eq!((s, code(&v)), (502, "provider_denied"), "{what}: {v}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains(check), "{what}: {m}");
        assert!(!m.contains("eyJ"), "token material in {m}");
    }
    // The resolve path too (nothing is cached yet: the probes' tokens never are).
    env.entra.state.misissue.lock().unwrap().tid = Some(GLOBEX.into());
    let (s, v) = resolve(
        &mut env.w1(),
        json!({"instance_id": "i-entra", "narrow": {"resource": "graph"}}),
    )
    .await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(v.get("credentials").is_none());
    let audit_id = v["error"]["audit_id"].as_str().unwrap().to_owned();
    let rec = record(&env.daemon, &audit_id);
    assert!(
        rec["detail"]
            .as_str()
            .unwrap()
            .contains("failed the tid check"),
        "{rec}"
    );
    // v1 tokens (sts.windows.net issuer, appid) pass the same checks.
    *env.entra.state.misissue.lock().unwrap() = Default::default();
    *env.entra.state.v1_tokens.lock().unwrap() = true;
    let (s, v) = probe(&mut env.op, BINDING).await;
    assert_eq!(s, 200, "{v}");
    // The customer's admin makes our service principal a Global Administrator: its tokens
    // carry the role in `wids` whatever their `roles`, and none is handed out.
    env.entra
        .state
        .tenants
        .lock()
        .unwrap()
        .get_mut(ACME)
        .unwrap()
        .directory_roles = vec!["62e90394-69f5-4237-9190-012177145e10".into()];
    let (s, v) = resolve(
        &mut env.w1(),
        json!({"instance_id": "i-entra", "narrow": {"resource": "graph"}}),
    )
    .await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(v.get("credentials").is_none());
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("wids") && m.contains("62e90394"), "{m}");
    let (s, v) = probe(&mut env.op, BINDING).await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
}

/// The refusal of a link or binding for a GUID another tenant's link is out for.
fn link_out_for_another_tenant(s: u16, v: &Value) {
    assert_eq!((s, code(v)), (409, "conflict"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already out for another tenant"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_takeover_attempts_are_refused() {
    let mut env = start().await;
    consent_all(&env.entra, ACME, ACME_SP);
    consent_all(&env.entra, GLOBEX, GLOBEX_SP);

    // The operator names a tenant id, never `common`, `organizations` or a domain.
    for bad in ["common", "organizations", "contoso.onmicrosoft.com", ""] {
        let (s, v) = call(
            &mut env.op,
            Method::POST,
            "/v1/admin/onboard/entra_multi_tenant",
            Some(json!({"owner": "team-tests", "purpose": "integration test", "tenant": "t1", "account": {"login": bad, "id": 0}})),
        )
        .await;
        assert_eq!((s, code(&v)), (400, "bad_request"), "{bad}: {v}");
    }

    // A customer holding t1's valid link for ACME points its sign-in at GLOBEX (which
    // consented to our app for someone else) and comes back with a GLOBEX admin's code:
    // the broker redeems codes only at the pinned tenant, where Entra refuses it, and
    // nothing is minted for GLOBEX.
    let state = onboard(&mut env.op, "t1", ACME).await;
    let globex_before = token_requests_for(&env.entra, GLOBEX);
    let (_, cookie, location) = open_link(&mut env.public, &state).await;
    let swapped = location.replace(&format!("/{ACME}/"), &format!("/{GLOBEX}/"));
    assert_ne!(swapped, location);
    let (s, v) = come_back(
        &mut env.public,
        &env.entra,
        &swapped,
        cookie.as_deref(),
        &SignIn::admin(GLOBEX),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "callback_rejected"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("code was refused"),
        "{v}"
    );
    assert_eq!(
        token_requests_for(&env.entra, GLOBEX),
        globex_before,
        "nothing minted for the claimed tenant"
    );
    // An id_token naming another tenant (a broken or hostile upstream) proves nothing.
    let state = onboard(&mut env.op, "t1", ACME).await;
    env.entra.state.misissue.lock().unwrap().tid = Some(GLOBEX.into());
    let (s, v) = consent_round(&mut env.public, &env.entra, &state, &SignIn::admin(ACME)).await;
    env.entra.state.misissue.lock().unwrap().tid = None;
    assert_eq!((s, code(&v)), (403, "callback_rejected"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not the tenant"),
        "{v}"
    );
    let (s, v) = call(&mut env.op, Method::GET, "/v1/admin/unclaimed", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["unclaimed"].as_array().unwrap().len(),
        0,
        "a forged tenant is not kept: {v}"
    );

    // The same customer names GLOBEX itself (it consented long ago, for someone else) and
    // comes back claiming a consent it never gave: the mint works (the old consent), but no
    // permission was granted after the link was issued.
    env.entra.age(GLOBEX, 3600);
    let state = onboard(&mut env.op, "t1", GLOBEX).await;
    let (s, v) = consent_round(&mut env.public, &env.entra, &state, &SignIn::admin(GLOBEX)).await;
    assert_eq!((s, code(&v)), (403, "callback_rejected"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("granted after this link was issued"),
        "{v}"
    );
    let (s, v) = call(&mut env.op, Method::GET, "/v1/admin/bindings", None).await;
    assert_eq!(s, 200, "{v}");
    assert!(!v["bindings"].as_array().unwrap().is_empty(), "{v}");
    assert!(
        !v.to_string().contains(GLOBEX),
        "GLOBEX must not be bound: {v}"
    );

    // `error` (the admin declined) overrides a code: the state is consumed, the refusal
    // audited.
    let state = onboard(&mut env.op, "t1", ACME).await;
    let (s, v) = typed_return(
        &mut env.public,
        &state,
        "error=access_denied&error_description=AADSTS65004%3A+User+declined&code=x",
    )
    .await;
    assert_eq!((s, code(&v)), (403, "callback_rejected"), "{v}");
    let audit_id = v["error"]["audit_id"].as_str().expect("audited").to_owned();
    let rec = record(&env.daemon, &audit_id);
    assert!(
        rec["detail"].as_str().unwrap().contains("access_denied"),
        "{rec}"
    );
    let (s, v) = typed_return(&mut env.public, &state, "code=abc").await;
    assert_eq!((s, code(&v)), (403, "callback_rejected"), "consumed: {v}");

    // Forged and missing states: refused, counted, not audited (anonymous).
    let records = env.daemon.audit_records().len();
    for query in [
        "code=abc&state=forgedforgedforged".to_owned(),
        "code=abc".to_owned(),
        // What the admin-consent endpoint sends: typed by anyone, it names no code.
        format!("admin_consent=True&tenant={ACME}&state=abc"),
    ] {
        let (s, v) = callback(&mut env.public, &query, None).await;
        assert_eq!((s, code(&v)), (403, "callback_rejected"), "{query}: {v}");
    }
    assert_eq!(env.daemon.audit_records().len(), records);

    // The link finished in another browser (no cookie): refused and audited, state used up.
    let state = onboard(&mut env.op, "t1", ACME).await;
    let (_, _, location) = open_link(&mut env.public, &state).await;
    let (s, v) = come_back(
        &mut env.public,
        &env.entra,
        &location,
        None,
        &SignIn::admin(ACME),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "callback_rejected"), "{v}");
    assert!(v["error"]["audit_id"].is_string());

    // Two tenants never hold live links for one account at once (a consent given through
    // one would count as "granted after the link was issued" for the other): while t1
    // holds a link for ACME, t2's onboarding of ACME is refused.
    let state2 = onboard(&mut env.op, "t1", ACME).await;
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/onboard/entra_multi_tenant",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "tenant": "t2", "account": {"login": ACME, "id": 0}})),
    )
    .await;
    link_out_for_another_tenant(s, &v);
    // Nor does the operator bind ACME to t2 by hand meanwhile (t2's customer naming ACME's
    // GUID): ACME's admin consenting through t1's link would give t2's binding the consent
    // its probe finds.
    let by_hand = json!({"owner": "team-tests", "purpose": "integration test", "id": BINDING, "tenant": "t2", "provider": "entra_multi_tenant", "config": {"tenant_id": ACME}});
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(by_hand.clone()),
    )
    .await;
    link_out_for_another_tenant(s, &v);
    // A link still out when the account is bound to someone else (links from before this
    // check, set aside here while the binding is added by hand) can no longer take it, and
    // nothing is minted for ACME on t1's behalf. No new link is issued for t1.
    use credbroker::store::{Batch, Op, SledStore, Store, Table};
    env.daemon.stop();
    let links = {
        let store = SledStore::open(&env.daemon.data_dir.join("store")).unwrap();
        let links = store
            .scan(Table::Identifiers, "callback-state:")
            .await
            .unwrap();
        let mut batch = Batch::new();
        for (key, _) in &links {
            batch.push(Op::Delete(Table::Identifiers, key.clone()));
        }
        store.commit(batch).await.unwrap();
        links
    };
    env.daemon.restart();
    env.op = env.pki.client_for("op", &env.daemon.url);
    // With no link out, t2's customer naming ACME's GUID is still only a claim: one
    // multi-tenant app serves every customer, so ACME's tokens (it consented for t1's
    // onboarding before) would pass t2's probe. No consent of ACME was proven for t2.
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(by_hand.clone()),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "consent_missing"), "{v}");
    // Had ACME's admin consented through a link of t2's before (its proof planted here),
    // the hand binding stands.
    env.daemon.stop();
    {
        let store = SledStore::open(&env.daemon.data_dir.join("store")).unwrap();
        let mut batch = Batch::new();
        batch.prove_consent(&format!("entra_tenant:{ACME}"), "t2");
        store.commit(batch).await.unwrap();
    }
    env.daemon.restart();
    env.op = env.pki.client_for("op", &env.daemon.url);
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(by_hand),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    env.daemon.stop();
    {
        let store = SledStore::open(&env.daemon.data_dir.join("store")).unwrap();
        // The binding passed through ACME's link pin: an issuance for ACME planned before it
        // (another replica) fails its precondition instead of landing beside it.
        let pin = store
            .get(
                Table::Identifiers,
                &format!("link-pin:entra_multi_tenant:{ACME}"),
            )
            .await
            .unwrap()
            .unwrap();
        let pin: Value = serde_json::from_slice(&pin).unwrap();
        assert_eq!(pin["tenant"], "t2", "{pin}");
        let mut batch = Batch::new();
        for (key, raw) in links {
            batch.push(Op::Put(Table::Identifiers, key, raw));
        }
        store.commit(batch).await.unwrap();
    }
    env.daemon.restart();
    env.op = env.pki.client_for("op", &env.daemon.url);
    env.public = public_client(&env.pki, env.daemon.public_url.as_ref().unwrap());
    let acme_before = token_requests_for(&env.entra, ACME);
    let (s, v) = consent_round(&mut env.public, &env.entra, &state2, &SignIn::admin(ACME)).await;
    assert_eq!((s, code(&v)), (403, "callback_rejected"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another tenant"),
        "{v}"
    );
    assert_eq!(
        token_requests_for(&env.entra, ACME),
        acme_before,
        "nothing minted for t1"
    );
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/onboard/entra_multi_tenant",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "tenant": "t1", "account": {"login": ACME, "id": 0}})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    // Nor by hand.
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "acme-by-hand", "tenant": "t1", "provider": "entra_multi_tenant", "config": {"tenant_id": ACME.to_uppercase()}})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");

    // An unconsented tenant named at onboarding: the consent callback's claim is refused by
    // the mint that should confirm it.
    let unconsented = "33333333-4444-4555-8666-777777777777";
    env.entra.add_unconsented(unconsented);
    let state = onboard(&mut env.op, "t1", unconsented).await;
    let (s, v) = consent_round(
        &mut env.public,
        &env.entra,
        &state,
        &SignIn::admin(unconsented),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "callback_rejected"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("7000229"),
        "{v}"
    );

    // A worker of t1 cannot resolve t2's Entra instance.
    call(
        &mut env.op,
        Method::POST,
        "/v1/admin/instances",
        Some(
            json!({"id": "i-entra", "tenant": "t2", "binding": BINDING, "connector_kind": "entra"}),
        ),
    )
    .await;
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/workers",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "w2", "tenants": ["t1"]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    env.pki.worker("w2");
    let mut w2 = env.pki.client_for("w2", &env.daemon.url);
    let (s, v) = resolve(&mut w2, json!({"instance_id": "i-entra"})).await;
    assert_eq!((s, code(&v)), (404, "unknown_instance"), "{v}");
}

/// Role-assignment reads the fake ARM answered.
fn role_reads(entra: &FakeEntra) -> usize {
    *entra.state.role_reads.lock().unwrap()
}

/// A binding scoped to a management group: the subscriptions under the group are covered by
/// its assignments, but a role our service principal holds on a subscription outside every
/// declared scope rides in every ARM token too. Each subscription it sees outside the
/// subscription scopes has its roles read and held to the ceiling, at mint and probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_management_group_scope_checks_the_subscriptions_outside_it() {
    let mut env = start().await;
    let mg = "/providers/Microsoft.Management/managementGroups/mg-scanners";
    let outside = "/subscriptions/77777777-8888-4999-8aaa-bbbbbbbbbbbb";
    consent_all(&env.entra, ACME, ACME_SP);
    // ACME's consent proven for t1 first: the ARM binding is then added by hand, as the
    // onboarding runbook's step 3 does.
    credbroker_tests::fake_entra::prove_then_unbind(
        &mut env.op,
        &mut env.public,
        &env.entra,
        "t1",
        ACME,
    )
    .await;
    env.entra.assign(mg, ACME_SP, READER);
    // Sixty subscriptions under the group: each read where it is (ARM's list is documented
    // for subscription scopes down, not for a group), a few at a time.
    for i in 0..60 {
        env.entra.place(
            "mg-scanners",
            &format!("{i:08x}-1111-4222-8333-444444444444"),
        );
    }
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "acme-mg", "tenant": "t1", "provider": "entra_multi_tenant",
                    "config": {"tenant_id": ACME, "resources": ["graph", "arm"], "arm_scopes": [mg]}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let reads_before = role_reads(&env.entra);
    let (s, v) = probe(&mut env.op, "acme-mg").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(role_reads(&env.entra) - reads_before, 61);
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/instances",
        Some(
            json!({"id": "i-mg", "tenant": "t1", "binding": "acme-mg", "connector_kind": "azure"}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    // Contributor on a subscription inside the group: no ARM token is handed out.
    let inside = "/subscriptions/0000002a-1111-4222-8333-444444444444";
    env.entra.assign(inside, ACME_SP, CONTRIBUTOR);
    let (s, v) = resolve(
        &mut env.w1(),
        json!({"instance_id": "i-mg", "narrow": {"resource": "arm"}}),
    )
    .await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains(CONTRIBUTOR) && m.contains(inside), "{m}");
    env.entra
        .state
        .role_assignments
        .lock()
        .unwrap()
        .retain(|(_, _, r)| r == READER);
    // Nor outside it.
    env.entra.assign(outside, ACME_SP, CONTRIBUTOR);
    let arm = json!({"instance_id": "i-mg", "narrow": {"resource": "arm"}});
    let (s, v) = resolve(&mut env.w1(), arm.clone()).await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains(CONTRIBUTOR) && m.contains(outside), "{m}");
    assert!(v.get("credentials").is_none());
    // Reader there is within the ceiling: served.
    env.entra
        .state
        .role_assignments
        .lock()
        .unwrap()
        .retain(|(_, _, r)| r == READER);
    env.entra.assign(outside, ACME_SP, READER);
    let (s, v) = resolve(&mut env.w1(), arm).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_role_assignments_are_checked_by_the_probe() {
    let mut env = start().await;
    let sub = "/subscriptions/44444444-5555-4666-8777-888888888888";
    // Bound by hand (pending its probe), with ARM and one subscription to check, after
    // ACME's consent was proven for t1.
    consent_all(&env.entra, ACME, ACME_SP);
    credbroker_tests::fake_entra::prove_then_unbind(
        &mut env.op,
        &mut env.public,
        &env.entra,
        "t1",
        ACME,
    )
    .await;
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "acme-arm", "tenant": "t1", "provider": "entra_multi_tenant",
                    "config": {"tenant_id": ACME, "resources": ["graph", "arm"], "arm_scopes": [sub]}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["binding"]["status"], "pending_activation", "{v}");
    let id = "acme-arm";
    // No role assigned yet: the probe says to deploy the Bicep with our principal id.
    let (s, v) = probe(&mut env.op, id).await;
    assert_eq!((s, code(&v)), (422, "activation_failed"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("principalId={ACME_SP}")),
        "{v}"
    );
    env.entra.assign(sub, ACME_SP, READER);
    let answered = env.entra.state.answered.lock().unwrap().len();
    let (s, v) = probe(&mut env.op, id).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        binding(&mut env.op, id).await["trust_facts"]["arm"][0]["roles"][0],
        "Reader"
    );
    // Its record names both sign-ins (a Graph token, an ARM token), as the tenant's
    // service-principal sign-in log lists them.
    let tokens = sign_ins_since(&env, answered);
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    let named = probe_record_names(&env, id);
    assert!(named.starts_with(&tokens[0]), "{named}");
    assert!(
        tokens.iter().all(|t| named.contains(t.as_str())),
        "{tokens:?} {named}"
    );
    // A write role given to our service principal is refused by every ARM mint while the
    // binding is active...
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/instances",
        Some(json!({"id": "i-arm", "tenant": "t1", "binding": id, "connector_kind": "azure"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    env.entra.assign(sub, ACME_SP, CONTRIBUTOR);
    let arm = json!({"instance_id": "i-arm", "narrow": {"resource": "arm"}});
    let (s, v) = resolve(&mut env.w1(), arm.clone()).await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(CONTRIBUTOR),
        "{v}"
    );
    assert!(v.get("credentials").is_none());
    // ...and by the probe, which takes the binding out of service until a probe passes; its
    // record still names both sign-ins.
    let answered = env.entra.state.answered.lock().unwrap().len();
    probe_refused(&mut env.op, id, CONTRIBUTOR).await;
    let tokens = sign_ins_since(&env, answered);
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    let named = probe_record_names(&env, id);
    assert!(
        tokens.iter().all(|t| named.contains(t.as_str())),
        "{tokens:?} {named}"
    );
    let (s, v) = resolve(&mut env.w1(), arm.clone()).await;
    assert_eq!((s, code(&v)), (403, "binding_inactive"), "{v}");
    // Back to Reader only, probed again: ARM tokens are minted for ARM, one resource per
    // token.
    env.entra
        .state
        .role_assignments
        .lock()
        .unwrap()
        .retain(|(_, _, r)| r == READER);
    let (s, v) = probe(&mut env.op, id).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = resolve(&mut env.w1(), arm.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        claims_of(v["credentials"]["access_token"].as_str().unwrap())["aud"],
        ARM
    );
    assert!(v["details"]["roles"].is_null());
    // A write role given to a security group our service principal is a member of (a
    // group's owner can add it; no admin needed) is a role our principal holds: ARM lists
    // it for `assignedTo`, not for `principalId eq`. Refused by the probe, which takes the
    // binding out of service (and drops the token cached above).
    let group = "77777777-8888-4999-aaaa-bbbbbbbbbbbb";
    env.entra.add_to_group(group, ACME_SP);
    env.entra.assign(sub, group, CONTRIBUTOR);
    probe_refused(&mut env.op, id, CONTRIBUTOR).await;
    let (s, v) = resolve(&mut env.w1(), arm.clone()).await;
    assert_eq!((s, code(&v)), (403, "binding_inactive"), "{v}");
    env.entra
        .state
        .role_assignments
        .lock()
        .unwrap()
        .retain(|(_, p, _)| p != group);
    let (s, v) = probe(&mut env.op, id).await;
    assert_eq!(s, 200, "{v}");
    // A malicious upstream answering the role-assignment read without its list: not read as
    // "no roles held", the probe cannot pass.
    *env.entra.state.lists_without_value.lock().unwrap() = true;
    probe_unavailable(&mut env.op, id, "no value list").await;
    *env.entra.state.lists_without_value.lock().unwrap() = false;
    // One answering it densely (400 KB of `0,`, under the 1 MiB byte bound): refused before
    // it is parsed into a value many times its size.
    *env.entra.state.list_padding.lock().unwrap() = 200_000;
    probe_unavailable(&mut env.op, id, "more than 131072 JSON values").await;
    *env.entra.state.list_padding.lock().unwrap() = 0;
    // A role on a subscription the binding does not declare (its roles there unchecked):
    // refused.
    let other = "/subscriptions/55555555-6666-4777-8888-999999999999";
    env.entra.assign(other, ACME_SP, READER);
    probe_refused(&mut env.op, id, "55555555-6666-4777-8888-999999999999").await;
}

/// The request ids of the token sign-ins the fake answered after its `answered`-th answer.
fn sign_ins_since(env: &Env, answered: usize) -> Vec<String> {
    env.entra.state.answered.lock().unwrap()[answered..]
        .iter()
        .filter(|(service, _)| *service == "token")
        .map(|(_, id)| id.clone())
        .collect()
}

/// The upstream request ids and detail of binding `id`'s newest probe record, as one text.
fn probe_record_names(env: &Env, id: &str) -> String {
    let records = env.daemon.audit_records();
    let record = records
        .iter()
        .rev()
        .find(|r| r["action"] == "binding.probe" && r["binding"] == id)
        .unwrap();
    format!(
        "{} {}",
        record["upstream_request_id"].as_str().unwrap_or(""),
        record["detail"].as_str().unwrap_or("")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_credential_signs_client_assertions() {
    let mut env = start().await;
    bind_acme(&mut env).await;
    // The app's certificate: an RSA key and a self-signed certificate for it; Entra knows
    // the public key (uploaded to the app registration).
    let key = credbroker_tests::fake_github::AppKey::generate();
    let rsa =
        rcgen::KeyPair::from_pem_and_sign_algo(&key.private_pem, &rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["credbroker-entra".into()])
        .unwrap()
        .self_signed(&rsa)
        .unwrap();
    let material = format!("{}{}", cert.pem(), key.private_pem);
    env.entra
        .state
        .certificates
        .lock()
        .unwrap()
        .push(key.public_der.clone());
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/keys/entra_multi_tenant",
        Some(json!({"fields": {"certificate_pem": material}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert!(!v.to_string().contains("PRIVATE KEY"), "{v}");
    assert!(
        v["key"]["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("certificate:x5t#S256:"),
        "{v}"
    );
    let version = v["key"]["version"].as_u64().unwrap();
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        &format!("/v1/admin/keys/entra_multi_tenant/{version}/activate"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // The secret is revoked at Entra: the certificate alone keeps minting.
    env.entra.state.secrets.lock().unwrap().clear();
    let (s, v) = probe(&mut env.op, BINDING).await;
    assert_eq!(s, 200, "{v}");
    let last = env
        .entra
        .state
        .requests
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .1
        .clone();
    assert_eq!(
        last["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    // The fake drops the secret before recording a request, so ask how it authenticated.
    assert_eq!(last["client_auth"], "certificate", "{last:?}");
    // An unregistered certificate is refused like a wrong secret.
    env.entra.state.certificates.lock().unwrap().clear();
    let (s, v) = probe(&mut env.op, BINDING).await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("certificate v"),
        "{v}"
    );
}

/// A federated credential is an assertion of the broker's own issuer: with it as the only
/// credential and no `[issuer]`, no consent link is issued (a callback could never confirm
/// the consent it spends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_credential_without_an_issuer_issues_no_link() {
    let mut env = start_with("federated_subject = \"credbroker-entra\"\n", false).await;
    let op = &mut env.op;
    let (s, v) = call(
        op,
        Method::POST,
        "/v1/admin/onboard/entra_multi_tenant",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "tenant": "t1", "account": {"login": ACME, "id": 0}})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("[issuer]"),
        "{v}"
    );
    // With a stored secret beside it, the secret confirms consents.
    add_secret(op, SECRET_A).await;
    let (s, v) = call(
        op,
        Method::POST,
        "/v1/admin/onboard/entra_multi_tenant",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "tenant": "t1", "account": {"login": ACME, "id": 0}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

/// Probes binding `id`, which must be refused `activation_failed` naming `why`.
async fn probe_refused(op: &mut BrokerClient, id: &str, why: &str) {
    let (s, v) = probe(op, id).await;
    assert_eq!((s, code(&v)), (422, "activation_failed"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(why),
        "{why}: {v}"
    );
}

/// Probes binding `id`, which must fail `provider_unavailable` saying `why`.
async fn probe_unavailable(op: &mut BrokerClient, id: &str, why: &str) {
    let (s, v) = probe(op, id).await;
    assert_eq!(code(&v), "provider_unavailable", "{s} {v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(why),
        "{why}: {v}"
    );
}

/// "One live link per customer tenant GUID" holds while the other tenant's link can still
/// complete: once it is revoked (`onboard revoke`), or its issuer is disabled, another
/// tenant's onboarding of that GUID is no longer refused — unless the link was opened: its
/// customer's admin may be on the consent page, and that consent must not count for another
/// tenant's link. An opened link blocks until it expires, revoked or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_or_dead_consent_link_blocks_no_other_tenant_unless_opened() {
    let mut env = start().await;
    let url = env.daemon.url.clone();
    let body = |tenant: &str, guid: &str| json!({"owner": "team-tests", "purpose": "integration test", "tenant": tenant, "account": {"login": guid, "id": 0}});
    let links = |v: &Value| v["onboarding_links"].as_array().unwrap().clone();
    // t2's link for ACME, never opened, revoked: t1 may onboard ACME.
    let state = onboard(&mut env.op, "t2", ACME).await;
    let path = "/v1/admin/onboard/entra_multi_tenant";
    let (s, v) = call(&mut env.op, Method::POST, path, Some(body("t1", ACME))).await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    let (_, v) = onboarding_links(&mut env.op).await;
    assert!(!v.to_string().contains(&state), "a state listed: {v}");
    let listed = links(&v);
    assert_eq!(listed.len(), 1, "{v}");
    assert_eq!(listed[0]["account"]["login"], ACME, "{v}");
    assert_eq!(listed[0]["provider"], "entra_multi_tenant", "{v}");
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    let (s, v) = revoke_onboarding_link(&mut env.op, &id).await;
    assert_eq!(s, 200, "{v}");
    let (s, _, _) = open_link(&mut env.public, &state).await;
    assert_eq!(s, 403, "a revoked link was opened");
    let t1_state = onboard(&mut env.op, "t1", ACME).await;

    // t1's link, opened by its customer's admin, then revoked: t2 is still refused until it
    // expires, and it neither opens again nor completes.
    let (_, cookie, _) = open_link(&mut env.public, &t1_state).await;
    let (_, v) = onboarding_links(&mut env.op).await;
    let opened = links(&v)
        .into_iter()
        .find(|l| l["tenant"] == "t1" && l["opens"] == 1)
        .unwrap_or_else(|| panic!("{v}"));
    let opened_id = opened["id"].as_str().unwrap().to_owned();
    let (s, v) = revoke_onboarding_link(&mut env.op, &opened_id).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(&mut env.op, Method::POST, path, Some(body("t2", ACME))).await;
    assert_eq!(
        (s, code(&v)),
        (409, "conflict"),
        "an opened link stopped blocking: {v}"
    );
    let (_, v) = onboarding_links(&mut env.op).await;
    assert!(
        links(&v)
            .iter()
            .any(|l| l["id"] == opened_id.as_str() && l["status"] == "revoked"),
        "{v}"
    );
    let (s, _, _) = open_link(&mut env.public, &t1_state).await;
    assert_eq!(s, 403, "a revoked link was opened again");
    let (s, v) = callback(
        &mut env.public,
        &format!("code=abc&state={t1_state}"),
        cookie.as_deref(),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "callback_rejected"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("revoked"),
        "{v}"
    );
    let (s, v) = revoke_onboarding_link(&mut env.op, &opened_id).await;
    assert_eq!((s, code(&v)), (404, "unknown_record"), "{v}");

    // t2's link for GLOBEX from an operator disabled since, never opened: dead, it blocks
    // nobody.
    // Another GUID's link from the same operator, opened before the disable: it blocks on.
    const INITECH: &str = "33333333-4444-4555-8666-777777777777";
    let mut op2 = register_operator(&mut env.op, &env.pki, &url, "op2").await;
    let _dead = onboard(&mut op2, "t2", GLOBEX).await;
    let dead_opened = onboard(&mut op2, "t2", INITECH).await;
    let _ = open_link(&mut env.public, &dead_opened).await;
    let (s, v) = call(&mut env.op, Method::POST, path, Some(body("t1", GLOBEX))).await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    set_operator(&mut env.op, "op2", "disable").await;
    let (_, v) = onboarding_links(&mut env.op).await;
    let dead = links(&v)
        .iter()
        .filter(|l| l["tenant"] == "t2" && l["status"] == "dead")
        .count();
    assert_eq!(dead, 2, "{v}");
    let (s, v) = call(&mut env.op, Method::POST, path, Some(body("t1", GLOBEX))).await;
    assert_eq!(s, 200, "a dead link still blocks: {v}");
    let (s, v) = call(&mut env.op, Method::POST, path, Some(body("t1", INITECH))).await;
    assert_eq!(
        (s, code(&v)),
        (409, "conflict"),
        "an opened dead link stopped blocking: {v}"
    );
}

/// A return through an opened link that is refused — here Entra's `error`, sent without the
/// link's cookie by anyone holding the link — uses the link up but does not lift the
/// one-live-link rule: the customer's admin may still be on the consent page the link led
/// to, and a consent given there must not count for another tenant's link issued meanwhile.
/// The used link stays (listed `used`) until it expires, and further returns through it
/// write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_return_through_an_opened_link_keeps_its_guid_blocked() {
    let mut env = start().await;
    let state = onboard(&mut env.op, "t1", ACME).await;
    let _ = open_link(&mut env.public, &state).await;
    let refused = format!("error=access_denied&error_description=x&state={state}");
    let (s, v) = callback(&mut env.public, &refused, None).await;
    assert_eq!((s, code(&v)), (403, "callback_rejected"), "{v}");
    assert!(v["error"]["audit_id"].is_string(), "{v}");
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/onboard/entra_multi_tenant",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "tenant": "t2", "account": {"login": ACME, "id": 0}})),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (409, "conflict"),
        "a refused return lifted the block on its GUID: {v}"
    );
    let (links, v) = onboarding_links(&mut env.op).await;
    assert!(
        links
            .iter()
            .any(|l| l["tenant"] == "t1" && l["status"] == "used" && l["opens"].is_null()),
        "{v}"
    );
    // Returns through the used link, with or without its cookie, are refused unaudited; it
    // opens no more; an operator cannot revoke what is already used.
    let records = env.daemon.audit_records().len();
    let (s, cookie, _) = open_link(&mut env.public, &state).await;
    assert_eq!((s, cookie), (403, None), "a used link was opened again");
    for query in [refused.clone(), format!("code=abc&state={state}")] {
        let (s, v) = callback(&mut env.public, &query, None).await;
        assert_eq!((s, code(&v)), (403, "callback_rejected"), "{v}");
        assert!(v["error"]["audit_id"].is_null(), "{v}");
    }
    assert_eq!(env.daemon.audit_records().len(), records);
    let id = links
        .iter()
        .find(|l| l["tenant"] == "t1")
        .and_then(|l| l["id"].as_str())
        .unwrap()
        .to_owned();
    let (s, v) = revoke_onboarding_link(&mut env.op, &id).await;
    assert_eq!((s, code(&v)), (404, "unknown_record"), "{v}");
    // The same tenant may be given a new link for its GUID.
    let again = onboard(&mut env.op, "t1", ACME).await;
    assert_ne!(again, state);
}

/// A client secret stored by a release before keyed fingerprints (listed then under a plain
/// hash) is still refused when added again: accepted twice, a runbook's "activate the new
/// one, retire the old one, delete it at Entra" would leave no working secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_stored_under_its_earlier_fingerprint_is_still_found() {
    use credbroker::store::{Batch, Op, SledStore, Store, Table};
    let mut env = start().await;
    env.daemon.stop();
    {
        let store = SledStore::open(&env.daemon.data_dir.join("store")).unwrap();
        let key = "entra_multi_tenant/0000000001";
        let raw = store.get(Table::PlatformKeys, key).await.unwrap().unwrap();
        let mut record: Value = serde_json::from_slice(&raw).unwrap();
        assert!(
            record["fingerprint"]
                .as_str()
                .unwrap()
                .starts_with("client-secret:hmac-sha256:"),
            "{record}"
        );
        record["fingerprint"] = json!(format!(
            "client-secret:{}",
            credbroker_providers::plain_sha256_prefix(SECRET_A)
        ));
        let mut batch = Batch::new();
        batch.push(Op::Put(
            Table::PlatformKeys,
            key.into(),
            serde_json::to_vec(&record).unwrap(),
        ));
        store.commit(batch).await.unwrap();
    }
    env.daemon.restart();
    let mut op = env.pki.client_for("op", &env.daemon.url);
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/keys/entra_multi_tenant",
        Some(json!({"fields": {"client_secret": SECRET_A}})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    // The unkeyed hash is kept for that comparison only: listed, it would let whoever reads
    // the list test a leaked or guessed secret offline.
    let (s, v) = call(
        &mut op,
        Method::GET,
        "/v1/admin/keys/entra_multi_tenant",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let key = &v["keys"][0];
    assert!(key["fingerprint"].is_null(), "{v}");
    assert!(!v.to_string().contains(":sha256:"), "{v}");
    // Nor is it put on the record when that key is retired (its successor stored and
    // activated first).
    add_secret(&mut op, SECRET_B).await;
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/keys/entra_multi_tenant/1/retire",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let retired = env
        .daemon
        .audit_records()
        .into_iter()
        .find(|r| r["action"] == "keys.entra_multi_tenant.retire")
        .unwrap();
    assert!(
        retired["detail"].as_str().unwrap().contains("withheld"),
        "{retired}"
    );
    let audit = serde_json::to_string(&env.daemon.audit_records()).unwrap();
    assert!(
        !audit.contains(&credbroker_tests::fake_entra::plain_secret_hash(SECRET_A)),
        "an unkeyed hash of a client secret in the audit log"
    );
}

/// A tenant GUID named by hand is a claim: only a broker tenant whose consent link ACME's
/// admin came back through may bind it by hand (again, to add ARM), never another tenant,
/// and not a tenant created again under that tenant's id after its removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_guid_bound_by_hand_needs_its_consent_proven_for_that_tenant() {
    let mut env = start().await;
    consent_all(&env.entra, ACME, ACME_SP);
    let by_hand = |tenant: &str| json!({"owner": "team-tests", "purpose": "integration test", "id": format!("acme-{tenant}"), "tenant": tenant, "provider": "entra_multi_tenant", "config": {"tenant_id": ACME}});
    let add = async |op: &mut BrokerClient, body: Value| {
        call(op, Method::POST, "/v1/admin/bindings", Some(body)).await
    };
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": "t3", "name": "Third"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    // Proven for t3 only.
    credbroker_tests::fake_entra::prove_then_unbind(
        &mut env.op,
        &mut env.public,
        &env.entra,
        "t3",
        ACME,
    )
    .await;
    // Its used link would refuse other tenants until it expires: set aside here, so the
    // proof alone decides.
    {
        use credbroker::store::{Batch, Op, SledStore, Store, Table};
        env.daemon.stop();
        let store = SledStore::open(&env.daemon.data_dir.join("store")).unwrap();
        let mut batch = Batch::new();
        for (key, _) in store
            .scan(Table::Identifiers, "callback-state:")
            .await
            .unwrap()
        {
            batch.push(Op::Delete(Table::Identifiers, key));
        }
        store.commit(batch).await.unwrap();
        drop(store);
        env.daemon.restart();
        env.op = env.pki.client_for("op", &env.daemon.url);
    }
    for tenant in ["t1", "t2"] {
        let (s, v) = add(&mut env.op, by_hand(tenant)).await;
        assert_eq!((s, code(&v)), (403, "consent_missing"), "{tenant}: {v}");
    }
    let (s, v) = add(&mut env.op, by_hand("t3")).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &mut env.op,
        Method::DELETE,
        "/v1/admin/bindings/acme-t3",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // t3 removed and made again: another customer, whose hand binding of ACME is a claim.
    let (s, v) = call(&mut env.op, Method::DELETE, "/v1/admin/tenants/t3", None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": "t3", "name": "Another third"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = add(&mut env.op, by_hand("t3")).await;
    assert_eq!((s, code(&v)), (403, "consent_missing"), "{v}");
    // The proof is on the record.
    assert!(env.daemon.audit_records().iter().any(|r| r["detail"]
        .as_str()
        .is_some_and(|d| d.contains(&format!(
            "consent of entra_tenant:{ACME} proven for tenant t3"
        )))));
}

/// A tenant removed, and made again under its id for another customer, while its consent
/// link's return is being checked gets no proof: the new tenant may not bind the GUID by
/// hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_made_again_during_its_consent_gets_no_proof() {
    let mut env = start().await;
    consent_all(&env.entra, ACME, ACME_SP);
    let tenant = |name: &str| json!({"id": "t3", "name": name});
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/tenants",
        Some(tenant("Third")),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let state = onboard(&mut env.op, "t3", ACME).await;
    // (Records say when to the second: the new t3 is made in a later second than the link.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, cookie, location) =
        credbroker_tests::fake_entra::open_link(&mut env.public, &state).await;
    assert_eq!(s, 302);
    // The code's redemption is slow: t3 is removed and made again meanwhile.
    *env.entra.state.token_delay_ms.lock().unwrap() = 1500;
    let admin = SignIn::admin(ACME);
    let back = credbroker_tests::fake_entra::come_back(
        &mut env.public,
        &env.entra,
        &location,
        cookie.as_deref(),
        &admin,
    );
    let op = &mut env.op;
    let remake = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (s, v) = call(op, Method::DELETE, "/v1/admin/tenants/t3", None).await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = call(
            op,
            Method::POST,
            "/v1/admin/tenants",
            Some(tenant("Another")),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    };
    let ((s, v), ()) = tokio::join!(back, remake);
    assert_eq!((s, code(&v)), (403, "callback_rejected"), "{v}");
    *env.entra.state.token_delay_ms.lock().unwrap() = 0;
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "acme-t3", "tenant": "t3", "provider": "entra_multi_tenant", "config": {"tenant_id": ACME}})),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "consent_missing"), "{v}");
}
