//! `servicenow_oauth` end to end against the local fake instance: activation by a probe that
//! reads the application user's roles, minting with caching and single flight, every error
//! shape mapped to its code, staged rotation of the pasted OAuth client, the instance-URL
//! rules, and the client secret never leaving the broker.

use credbroker::client::BrokerClient;
use credbroker_tests::fake_servicenow::FakeServiceNow;
use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

const CLIENT: &str = "3f1c0ffee0c0ffee0c0ffee0c0ffee01";
const SECRET: &str = "sn-client-secret-v1-0123456789";
const SECRET2: &str = "sn-client-secret-v2-9876543210";

struct Env {
    _tmp: tempfile::TempDir,
    pki: std::sync::Arc<TestPki>,
    daemon: Daemon,
    sn: FakeServiceNow,
    op: BrokerClient,
}

/// A daemon with `extra` in its config and the two test tenants; its operator client.
async fn daemon_with(
    extra: String,
) -> (
    tempfile::TempDir,
    std::sync::Arc<TestPki>,
    Daemon,
    BrokerClient,
) {
    let (tmp, pki) = setup();
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
    (tmp, pki, daemon, op)
}

async fn start() -> Env {
    let sn = FakeServiceNow::start(CLIENT, SECRET, &["snc_read_only", "sn_cmdb_user"]).await;
    let (tmp, pki, daemon, op) = daemon_with(servicenow_section(&sn.authority)).await;
    Env {
        _tmp: tmp,
        pki,
        daemon,
        sn,
        op,
    }
}

async fn probe(op: &mut BrokerClient) -> (u16, Value) {
    call(
        op,
        Method::POST,
        "/v1/admin/bindings/acme-snow/probe",
        Some(json!({})),
    )
    .await
}

/// `GET /v1/admin/bindings/acme-snow`.
async fn binding(op: &mut BrokerClient) -> (u16, Value) {
    call(op, Method::GET, "/v1/admin/bindings/acme-snow", None).await
}

/// Binds the fake instance to t1 with the OAuth client, activates it, adds `i-snow`.
async fn bind(env: &mut Env) {
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(
            json!({"owner": "team-tests", "purpose": "integration test", "id": "acme-snow", "tenant": "t1", "provider": "servicenow_oauth",
                    "config": {"instance_url": env.sn.url}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["binding"]["status"], "pending_activation", "{v}");
    let (s, v) = call(
        &mut env.op,
        Method::PUT,
        "/v1/admin/bindings/acme-snow/secret",
        Some(json!({"fields": {"client_id": CLIENT, "client_secret": SECRET}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = probe(&mut env.op).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["binding"]["status"], "active", "{v}");
    assert!(
        v["probe"]["summary"]
            .as_str()
            .unwrap()
            .contains("snc_read_only"),
        "{v}"
    );
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/instances",
        Some(json!({"id": "i-snow", "tenant": "t1", "binding": "acme-snow", "connector_kind": "servicenow"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minting_caching_and_every_error_shape() {
    let mut env = start().await;
    bind(&mut env).await;

    // Eight concurrent resolves: one token request, one bearer, never the client secret.
    let before = env.sn.token_requests();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut w = env.pki.client_for("w1", &env.daemon.url);
        tasks.push(tokio::spawn(async move {
            resolve(&mut w, json!({"instance_id": "i-snow"})).await
        }));
    }
    let mut tokens = std::collections::BTreeSet::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["kind"], "servicenow_oauth");
        assert!(!v.to_string().contains(SECRET));
        tokens.insert(
            v["credentials"]["access_token"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(tokens.len(), 1);
    assert_eq!(env.sn.token_requests(), before + 1);
    // The form carried the grant; the secret never travelled in a query string (the fake
    // refuses that) and is not recorded.
    let last = env
        .sn
        .state
        .requests
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(r, _)| r == "POST /oauth_token.do")
        .unwrap()
        .1
        .clone();
    assert_eq!(last["grant_type"], "client_credentials");
    assert_eq!(last["client_id"], CLIENT);
    // A bearer cannot be narrowed.
    let mut w1 = env.pki.client_for("w1", &env.daemon.url);
    let (s, v) = resolve(
        &mut w1,
        json!({"instance_id": "i-snow", "narrow": {"tables": ["incident"]}}),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "narrowing_exceeds_ceiling"), "{v}");

    // Each error shape, seen by a probe (which always mints afresh).
    *env.sn.state.grant_enabled.lock().unwrap() = false;
    let (s, v) = probe(&mut env.op).await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("wrong")
            && m.contains("glide.oauth.inbound.client.credential.grant_type.enabled"),
        "{m}"
    );
    *env.sn.state.grant_enabled.lock().unwrap() = true;
    *env.sn.state.app_user.lock().unwrap() = false;
    let (s, v) = probe(&mut env.op).await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("OAuth Application User"),
        "{v}"
    );
    *env.sn.state.app_user.lock().unwrap() = true;
    *env.sn.state.hibernating.lock().unwrap() = true;
    let (s, v) = probe(&mut env.op).await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("hibernating"),
        "{v}"
    );
    // A hostile instance's 100 KB content type is not quoted into the refusal or the
    // probe's audit record.
    *env.sn.state.page_content_type.lock().unwrap() = Some(format!("text/{}", "x".repeat(100_000)));
    let (s, v) = probe(&mut env.op).await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.len() < 1000, "{} bytes", message.len());
    let record = env
        .daemon
        .audit_records()
        .into_iter()
        .rev()
        .find(|r| {
            let id = v["error"]["audit_id"].as_str().unwrap();
            r["hash"].as_str().unwrap().starts_with(&id["aud_".len()..])
        })
        .expect("the probe's record");
    assert!(
        record.to_string().len() < 4000,
        "{} bytes",
        record.to_string().len()
    );
    *env.sn.state.page_content_type.lock().unwrap() = None;
    *env.sn.state.hibernating.lock().unwrap() = false;
    // A stuck instance: the request's deadline (timeout_ms = 3000) ends it.
    *env.sn.state.delay_ms.lock().unwrap() = 4000;
    let (s, v) = probe(&mut env.op).await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer within"),
        "{v}"
    );
    *env.sn.state.delay_ms.lock().unwrap() = 0;
    // An application user holding a role beyond the ceiling: the probe refuses.
    env.sn.state.roles.lock().unwrap().push("admin".into());
    let (s, v) = probe(&mut env.op).await;
    assert_eq!((s, code(&v)), (422, "activation_failed"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("admin"),
        "{v}"
    );
    // What the probe refused is not served: the binding was serving, its cached bearer
    // (minted before the role was added) is forgotten and no new one is minted.
    let minted = env.sn.token_requests();
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i-snow"})).await;
    assert_eq!((s, code(&v)), (403, "binding_inactive"), "{v}");
    assert_eq!(env.sn.token_requests(), minted);
    env.sn.state.roles.lock().unwrap().retain(|r| r != "admin");
    let (s, v) = probe(&mut env.op).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["binding"]["status"], "active", "{v}");
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i-snow"})).await;
    assert_eq!(s, 200, "{v}");
    // No rows (ACLs can hide them) is not "no roles": refused.
    let kept: Vec<String> = std::mem::take(&mut *env.sn.state.roles.lock().unwrap());
    let (s, v) = probe(&mut env.op).await;
    assert_eq!((s, code(&v)), (422, "activation_failed"), "{v}");
    *env.sn.state.roles.lock().unwrap() = kept;
    // A row whose role name is hidden is a role the broker cannot vouch for: refused.
    env.sn.state.roles.lock().unwrap().push(String::new());
    let (s, v) = probe(&mut env.op).await;
    assert_eq!((s, code(&v)), (422, "activation_failed"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not be read"),
        "{v}"
    );
    env.sn.state.roles.lock().unwrap().retain(|r| !r.is_empty());
    // A full page of rows (the read asks for at most 1,000) may leave a role past it
    // unseen: refused, not judged on part of the list.
    let kept = env.sn.state.roles.lock().unwrap().clone();
    env.sn
        .state
        .roles
        .lock()
        .unwrap()
        .resize(1000, "snc_read_only".to_owned());
    let (s, v) = probe(&mut env.op).await;
    assert_eq!((s, code(&v)), (422, "activation_failed"), "{v}");
    *env.sn.state.roles.lock().unwrap() = kept;

    // The client secret never left the broker: not in the audit log, the logs, or admin
    // answers.
    let audit = serde_json::to_string(&env.daemon.audit_records()).unwrap();
    assert!(!audit.contains(SECRET));
    assert!(!env.daemon.logs().contains(SECRET));
    let (s, v) = binding(&mut env.op).await;
    assert_eq!(
        (s, v["binding"]["id"].as_str()),
        (200, Some("acme-snow")),
        "{v}"
    );
    assert!(!v.to_string().contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_secret_is_probed_before_it_serves() {
    let mut env = start().await;
    bind(&mut env).await;
    // A wrong new secret: pending, its probe fails, promotion refused; v1 keeps working.
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings/acme-snow/secret/rotate",
        Some(json!({"fields": {"client_id": CLIENT, "client_secret": "not-the-secret"}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["probe"]["result"], "failed", "{v}");
    assert_eq!(v["probe"]["code"], "provider_denied", "{v}");
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings/acme-snow/secret/2/promote",
        Some(json!({})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    let mut w1 = env.pki.client_for("w1", &env.daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i-snow"})).await;
    assert_eq!(s, 200, "{v}");
    // The customer adds a second secret at the instance; the rotation to it passes and is
    // promoted; then the old one is removed at the instance and minting goes on.
    env.sn
        .state
        .clients
        .lock()
        .unwrap()
        .get_mut(CLIENT)
        .unwrap()
        .push(SECRET2.into());
    let (_, v) = rotate_and_promote(
        &mut env.op,
        "acme-snow",
        json!({"client_id": CLIENT, "client_secret": SECRET2}),
    )
    .await;
    assert_eq!(v["version"], 3);
    env.sn
        .state
        .clients
        .lock()
        .unwrap()
        .get_mut(CLIENT)
        .unwrap()
        .retain(|s| s != SECRET);
    let (s, v) = probe(&mut env.op).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_urls_outside_servicenow_are_refused() {
    let mut env = start().await;
    for url in [
        "http://acme.service-now.com",
        "https://acme.service-now.com.evil.example",
        "https://169.254.169.254",
        "https://10.0.0.5",
        "https://[::1]:8443",
        "https://localhost",
        "https://acme.service-now.com/oauth_token.do?x=",
    ] {
        let (s, v) = call(
            &mut env.op,
            Method::POST,
            "/v1/admin/bindings",
            Some(
                json!({"owner": "team-tests", "purpose": "integration test", "id": "bad-snow", "tenant": "t1", "provider": "servicenow_oauth",
                        "config": {"instance_url": url}}),
            ),
        )
        .await;
        assert_eq!((s, code(&v)), (400, "bad_request"), "{url}: {v}");
    }
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(
            json!({"owner": "team-tests", "purpose": "integration test", "id": "ok-snow", "tenant": "t1", "provider": "servicenow_oauth",
                    "config": {"instance_url": "https://acme.service-now.com"}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

/// An operator destroys the active client secret at once (it leaked) while a mint from it
/// is under way: what the mint brings is withheld (the binding's generation is unchanged,
/// its secret version is not), and the next resolve finds no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mint_from_a_secret_destroyed_meanwhile_is_withheld() {
    use std::sync::atomic::Ordering;
    let mut env = start().await;
    bind(&mut env).await;
    *env.sn.state.delay_ms.lock().unwrap() = 1000;
    let before = env.sn.state.arrived.load(Ordering::SeqCst);
    let mut w1 = env.pki.client_for("w1", &env.daemon.url);
    let mint =
        tokio::spawn(async move { resolve(&mut w1, json!({"instance_id": "i-snow"})).await });
    // The mint is under way: the fake holds its answer.
    let waited = std::time::Instant::now();
    while env.sn.state.arrived.load(Ordering::SeqCst) == before {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(10),
            "no mint started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (s, v) = call(
        &mut env.op,
        Method::DELETE,
        "/v1/admin/bindings/acme-snow/secret/1?force=true",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        waited.elapsed() < std::time::Duration::from_millis(900),
        "destroyed after the mint landed: the test proves nothing"
    );
    let (s, v) = mint.await.unwrap();
    assert_eq!((s, code(&v)), (503, "unavailable"), "{v}");
    assert!(v.get("credentials").is_none(), "{v}");
    let mut w1 = env.pki.client_for("w1", &env.daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i-snow"})).await;
    assert_eq!((s, code(&v)), (409, "secret_missing"), "{v}");
}

/// A custom domain on `allowed_hosts` that resolves to an internal address (set so from the
/// start, or re-pointed later) is refused on connection, before anything is sent: the
/// customer who controls the name learns nothing about what answers inside, and the client
/// secret goes nowhere. `localhost` (allowed, so plain http is accepted) stands for a
/// customer's DNS record pointing at an internal address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_domain_resolving_to_an_internal_address_is_never_contacted() {
    // What answers inside: it counts the connections it is offered.
    let (inside, offered, _inside) = credbroker_tests::loopback::counting_listener().await;
    let port = inside.port();
    let (_tmp, _pki, _daemon, mut op) =
        daemon_with(servicenow_section(&format!("localhost:{port}"))).await;
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings",
        Some(
            json!({"owner": "team-tests", "purpose": "integration test", "id": "acme-snow", "tenant": "t1", "provider": "servicenow_oauth",
                    "config": {"instance_url": format!("http://localhost:{port}")}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &mut op,
        Method::PUT,
        "/v1/admin/bindings/acme-snow/secret",
        Some(json!({"fields": {"client_id": CLIENT, "client_secret": SECRET}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = probe(&mut op).await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    assert_eq!(
        offered.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the internal address was contacted"
    );
}

/// A probe is an exchange with the customer's instance that its own logs keep: while the
/// broker's audit log is known to be failing (a full disk), the probe is refused before
/// anything is sent, as a resolve is, instead of being made and then left unrecorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_probe_reaches_the_instance_while_the_audit_log_fails() {
    let mut env = start().await;
    bind(&mut env).await;
    let mut op = restart_with_a_failing_audit_log(&mut env.daemon, &env.pki).await;
    let before = env.sn.token_requests();
    let (s, v) = probe(&mut op).await;
    assert_eq!((s, code(&v)), (503, "audit_unavailable"), "{v}");
    assert_eq!(
        env.sn.token_requests(),
        before,
        "the probe reached the instance with the audit log failing"
    );
}

/// A hostile instance (or a proxy before it) that repeats the client secret it was sent in
/// its answer to the token request (in an error's `error`, as the `X-Transaction-ID` the
/// broker keeps as the upstream request id, inside the access token, or in the content type
/// a refusal quotes): the secret reaches
/// neither the worker, the operator's probe answer, the binding's probe note, the audit log
/// nor the daemon's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoed_client_secret_is_repeated_nowhere() {
    use credbroker_tests::fake_servicenow::Echo;
    let mut env = start().await;
    bind(&mut env).await;
    let leaked = |text: &str| text.contains(&SECRET[..12]);
    let mut w1 = env.pki.client_for("w1", &env.daemon.url);
    for (echo, expected) in [
        (Echo::ErrorField, (502, "provider_denied")),
        (Echo::RequestId, (502, "provider_denied")),
        (Echo::AccessToken, (504, "provider_unavailable")),
        (Echo::ContentType, (504, "provider_unavailable")),
    ] {
        *env.sn.state.echo_secret.lock().unwrap() = echo;
        let (s, v) = probe(&mut env.op).await;
        assert_ne!(s, 200, "{echo:?}: {v}");
        assert!(!leaked(&v.to_string()), "{echo:?}: probe answer: {v}");
        // Nothing is cached: the probe's token never is.
        let (s, v) = resolve(&mut w1, json!({"instance_id": "i-snow"})).await;
        assert_eq!((s, code(&v)), expected, "{echo:?}: {v}");
        if echo == Echo::ErrorField {
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("unrecognised_error"),
                "{v}"
            );
        }
        assert!(!leaked(&v.to_string()), "{echo:?}: resolve answer: {v}");
    }
    let (s, v) = binding(&mut env.op).await;
    assert_eq!(s, 200, "{v}");
    assert!(!leaked(&v.to_string()), "binding: {v}");
    for r in env.daemon.audit_records() {
        assert!(!leaked(&r.to_string()), "audit record: {r}");
    }
    assert!(
        !leaked(&env.daemon.logs()),
        "the daemon's log holds the secret"
    );
}

/// An active binding whose versions were all destroyed does not serve the next secret set on
/// it unprobed: a client whose application user now holds `admin` would otherwise mint past
/// the ceiling, which only the probe checks. The binding goes back to pending activation, and
/// its probe refuses the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_set_after_every_version_was_destroyed_is_probed_first() {
    let mut env = start().await;
    bind(&mut env).await;
    let (s, v) = call(
        &mut env.op,
        Method::DELETE,
        "/v1/admin/bindings/acme-snow/secret",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    env.sn.state.roles.lock().unwrap().push("admin".into());
    let (s, v) = call(
        &mut env.op,
        Method::PUT,
        "/v1/admin/bindings/acme-snow/secret",
        Some(json!({"fields": {"client_id": CLIENT, "client_secret": SECRET}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["binding_status"], "pending_activation", "{v}");
    let mut w1 = env.pki.client_for("w1", &env.daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i-snow"})).await;
    assert_eq!((s, code(&v)), (403, "binding_inactive"), "{v}");
    let (s, v) = probe(&mut env.op).await;
    assert_eq!((s, code(&v)), (422, "activation_failed"), "{v}");
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i-snow"})).await;
    assert_eq!((s, code(&v)), (403, "binding_inactive"), "{v}");
    // The application user back at its roles: the probe passes and the binding serves.
    env.sn.state.roles.lock().unwrap().retain(|r| r != "admin");
    let (s, v) = probe(&mut env.op).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["binding"]["status"], "active", "{v}");
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i-snow"})).await;
    assert_eq!(s, 200, "{v}");
    let record = env
        .daemon
        .audit_records()
        .into_iter()
        .rev()
        .find(|r| r["action"] == "secret.set")
        .unwrap();
    assert!(
        record["detail"]
            .as_str()
            .unwrap()
            .contains("binding_status=PendingActivation"),
        "{record}"
    );
}
