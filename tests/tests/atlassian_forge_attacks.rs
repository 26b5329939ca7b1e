//! Attacks on the Forge Remote endpoint and the `atlassian_forge` provider, against the real
//! daemon and the fake Forge: every defective FIT is refused with `401 invocation_rejected`,
//! counted, not audited, and changes nothing; the key set is not fetched more than once per
//! cooldown; a site belongs to one tenant; another tenant's worker gets nothing; tokens never
//! reach logs, audit records or the disk in clear; hostile requests at the routes' edges.

use std::time::Duration;

use credbroker_tests::fake_forge::{
    invoke_body, lifecycle_body, now, send, send_raw, system_token, trigger_body, Defect, Site,
};
use credbroker_tests::forge_env::*;
use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fit_defect_is_rejected_and_changes_nothing() {
    let mut env = start().await;
    let connect_code = env.expect_site("t1", ACME)["connect_code"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = system_token(now() + 2 * HOUR);
    let audit_before = env.audit_count();
    let rejected_before = invocations_rejected(&env).await;
    let mut sent = 0;
    for &defect in Defect::ALL {
        for site in [acme(), stray()] {
            let fit = env.forge.defective(&site, defect);
            let (s, v) = send(
                &mut env.public,
                "trigger",
                Some(fit.as_str()),
                Some(token.as_str()),
                &trigger_body(&site),
            )
            .await;
            sent += 1;
            assert_eq!(
                (s, code(&v)),
                (401, "invocation_rejected"),
                "{defect:?} from {}: {v}",
                site.cloud_id
            );
            assert!(v["error"]["audit_id"].is_null(), "{defect:?}: {v}");
            assert!(!v.to_string().contains(&token), "{defect:?}: {v}");
        }
    }
    // The other routes verify the same way.
    for (kind, body) in [
        ("invoke", invoke_body(&acme())),
        (
            "lifecycle",
            lifecycle_body("avi:forge:installed:app", &acme(), APP_ID),
        ),
    ] {
        for defect in [Defect::AlgNone, Defect::OtherAppAudience, Defect::Expired] {
            let fit = env.forge.defective(&acme(), defect);
            let (s, v) = send(
                &mut env.public,
                kind,
                Some(fit.as_str()),
                Some(token.as_str()),
                &body,
            )
            .await;
            sent += 1;
            assert_eq!(
                (s, code(&v)),
                (401, "invocation_rejected"),
                "{kind} {defect:?}: {v}"
            );
        }
    }
    // Anyone can send these: counted, never audited, nothing stored (a detached write would
    // have landed by now).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.audit_count(),
        audit_before,
        "a rejected FIT was audited"
    );
    assert_eq!(
        invocations_rejected(&env).await,
        rejected_before + sent,
        "every rejection is counted"
    );
    assert!(env.binding_for(ACME).await.is_none());
    assert!(env.binding_for(STRAY).await.is_none());
    assert!(env.unclaimed().is_empty(), "a rejected FIT left a record");

    // The expectation is intact: the administrator's code binds.
    let (s, v) = env.connect(&acme(), &connect_code, Some(&token)).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("bound")), "{v}");
    let b = env.wait_binding(ACME, |_| true).await;
    assert_eq!(b["tenant"], "t1", "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refetches_the_jwks_once_within_the_cooldown() {
    let mut env = start().await;
    env.bind("t1", &acme(), &system_token(now() + 2 * HOUR), "i-forge")
        .await;
    let fetched = env.forge.jwks_fetches();
    assert!(fetched >= 1, "the JWKS was never fetched");
    // Whether or not the first load starts the 30 s cooldown, a refetch is due after it.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let fetched = env.forge.jwks_fetches();

    // Forge rotates: a FIT under the new kid makes the broker refetch once, and verifies.
    env.forge.rotate("forge-key-2");
    let token = system_token(now() + 3 * HOUR);
    let (s, v) = env.trigger(&acme(), &token).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    assert_eq!(env.forge.jwks_fetches(), fetched + 1, "one refetch");

    // A burst of FITs under unknown kids, concurrent and then one by one: no more fetches
    // inside the 30 s cooldown.
    let url = env.public_url();
    let mut tasks = Vec::new();
    // Three at once: with the test's own connection, the public listener's default of
    // four connections per source.
    for _ in 0..3 {
        let fit = env.forge.defective(&acme(), Defect::UnknownKid);
        let mut public = public_client(&env.pki, &url);
        tasks.push(tokio::spawn(async move {
            let body = trigger_body(&acme());
            send(&mut public, "trigger", Some(fit.as_str()), None, &body).await
        }));
    }
    for t in tasks {
        let (s, v) = t.await.unwrap();
        assert_eq!((s, code(&v)), (401, "invocation_rejected"), "{v}");
    }
    for _ in 0..5 {
        let fit = env.forge.defective(&acme(), Defect::UnknownKid);
        let (s, v) = send(
            &mut env.public,
            "trigger",
            Some(fit.as_str()),
            None,
            &trigger_body(&acme()),
        )
        .await;
        assert_eq!((s, code(&v)), (401, "invocation_rejected"), "{v}");
    }
    // Even a key Forge publishes now is not fetched before the cooldown ends.
    let late = env.forge.add_key("forge-key-3");
    let fit = env.forge.fit(&acme()).signed_by(late).token();
    let (s, v) = send(
        &mut env.public,
        "trigger",
        Some(fit.as_str()),
        None,
        &trigger_body(&acme()),
    )
    .await;
    assert_eq!((s, code(&v)), (401, "invocation_rejected"), "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.forge.jwks_fetches(),
        fetched + 1,
        "unknown kids refetched the JWKS inside the cooldown"
    );

    // Keys already held keep verifying without a fetch (the old key is still published).
    let old = env.forge.key("forge-key-1").expect("still published");
    let fit = env.forge.fit(&acme()).signed_by(old).token();
    let (s, v) = send(
        &mut env.public,
        "trigger",
        Some(fit.as_str()),
        None,
        &trigger_body(&acme()),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(env.forge.jwks_fetches(), fetched + 1);
    env.wait_token("w1", "i-forge", &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_bound_or_expected_by_one_tenant_is_refused_to_another() {
    let mut env = start().await;
    // Malformed cloudIds are refused before anything is recorded.
    for bad in [
        "acme",
        "https://acme.atlassian.net",
        "11111111-2222-4333-8444",
    ] {
        let (c, _, err) = env.onboard("t1", bad);
        assert_ne!(c, 0, "{bad:?} accepted");
        assert!(err.contains("bad_request (400)"), "{bad:?}: {err}");
    }
    // Expected by t1: t2 cannot expect it too (CLI and API alike).
    env.expect_site("t1", ACME);
    let (c, _, err) = env.onboard("t2", ACME);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("conflict (409)"), "{err}");
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/onboard/atlassian_forge",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "tenant": "t2", "account": {"login": ACME, "id": 0}})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");

    // Bound to t1: still refused to t2; t2 cannot put an instance on it either.
    let token = system_token(now() + 2 * HOUR);
    let binding = env.bind("t1", &acme(), &token, "i-forge").await;
    let (c, _, err) = env.onboard("t2", ACME);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("conflict (409)"), "{err}");
    let (s, v) = env.add_instance("i-steal", "t2", &binding).await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");

    // Forge names ACME's installation with GLOBEX's site (expected by t2): the installation
    // belongs to another site's binding — refused, audited, nothing bound or captured.
    env.expect_site("t2", GLOBEX);
    let forged = globex().reinstalled(ACME_INST);
    let refused_before = env.audited("forge.refused").len();
    let sneaky = system_token(now() + 4 * HOUR);
    let (s, v) = env.trigger(&forged, &sneaky).await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.audited("forge.refused").len(),
        refused_before + 1,
        "the refusal is audited"
    );
    assert!(env.binding_for(GLOBEX).await.is_none());
    assert_eq!(env.current_token("w1", "i-forge").await, token);

    // t1's later triggers reach t1 only.
    let later = system_token(now() + 3 * HOUR);
    let (s, v) = env.trigger(&acme(), &later).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    env.wait_token("w1", "i-forge", &later).await;
    let mut w2 = env.worker("w2");
    let (s, v) = resolve(&mut w2, json!({"instance_id": "i-forge"})).await;
    assert_eq!((s, code(&v)), (404, "unknown_instance"), "{}", redact(&v));
    let (s, v) = resolve(&mut w2, json!({"instance_id": "i2"})).await;
    assert_eq!(s, 200, "{}", redact(&v));
    assert_eq!(v["credentials"]["token"], "t2-token");
    assert!(!v.to_string().contains(&later) && !v.to_string().contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_another_tenant_cannot_resolve_the_forge_binding() {
    let mut env = start().await;
    let acme_token = system_token(now() + 2 * HOUR);
    let globex_token = system_token(now() + 2 * HOUR + 60);
    let acme_binding = env.bind("t1", &acme(), &acme_token, "i-acme").await;
    env.bind("t2", &globex(), &globex_token, "i-globex").await;

    let mut w1 = env.worker("w1");
    let mut w2 = env.worker("w2");
    // Each tenant's worker gets its own site's token…
    assert_eq!(env.current_token("w1", "i-acme").await, acme_token);
    assert_eq!(env.current_token("w2", "i-globex").await, globex_token);
    // …and never the other's, whatever it claims.
    for (w, instance, other) in [
        (&mut w2, "i-acme", &acme_token),
        (&mut w1, "i-globex", &globex_token),
    ] {
        let (s, v) = resolve(w, json!({"instance_id": instance})).await;
        assert_eq!((s, code(&v)), (404, "unknown_instance"), "{}", redact(&v));
        assert!(!v.to_string().contains(other.as_str()));
    }
    let (s, v) = resolve(&mut w2, json!({"instance_id": "i-acme", "tenant_id": "t1"})).await;
    assert_eq!((s, code(&v)), (404, "unknown_instance"), "{}", redact(&v));
    assert!(!v.to_string().contains(&acme_token));
    // t2 cannot hang an instance on t1's binding.
    let (s, v) = env.add_instance("i-steal", "t2", &acme_binding).await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_reaches_logs_audit_records_or_disk() {
    let mut env = start().await;
    let mut secrets: Vec<String> = Vec::new();
    let first = system_token(now() + 2 * HOUR);
    let connect_code = env.expect_site("t1", ACME)["connect_code"]
        .as_str()
        .unwrap()
        .to_owned();
    let fit = env
        .forge
        .fit(&acme())
        .admin_page(&acme(), ADMIN_ACCOUNT)
        .token();
    let (s, v) = send(
        &mut env.public,
        "connect",
        Some(fit.as_str()),
        Some(first.as_str()),
        &json!({ "code": connect_code }),
    )
    .await;
    assert_eq!((s, v["result"].as_str()), (200, Some("bound")), "{v}");
    // The connect code is a secret of the onboarding: only its hash is kept.
    secrets.extend([first.clone(), fit, connect_code]);
    let b = env
        .wait_binding(ACME, |b| b["active_secret_version"].is_u64())
        .await;
    let binding = b["id"].as_str().unwrap().to_owned();
    env.add_instance("i-forge", "t1", &binding).await;
    env.wait_token("w1", "i-forge", &first).await;
    // A fresher one, a stale one, an unclaimed site's, a rejected one.
    let fresher = system_token(now() + 3 * HOUR);
    let (s, _) = env.trigger(&acme(), &fresher).await;
    assert_eq!(s, 200);
    env.wait_token("w1", "i-forge", &fresher).await;
    let stale = system_token(now() + HOUR);
    let (s, _) = env.trigger(&acme(), &stale).await;
    assert_eq!(s, 200);
    let unclaimed = system_token(now() + 2 * HOUR);
    let (s, _) = env.trigger(&stray(), &unclaimed).await;
    assert_eq!(s, 200);
    let rejected = system_token(now() + 2 * HOUR);
    let bad_fit = env.forge.defective(&acme(), Defect::KeyNotInJwks);
    let (s, _) = send(
        &mut env.public,
        "trigger",
        Some(bad_fit.as_str()),
        Some(rejected.as_str()),
        &trigger_body(&acme()),
    )
    .await;
    assert_eq!(s, 401);
    secrets.extend([fresher, stale, unclaimed, rejected, bad_fit]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // What operators can read.
    let mut readable = Vec::new();
    for args in [
        &["binding", "list"][..],
        &["binding", "show", binding.as_str()],
        &["unclaimed", "list"],
    ] {
        let (c, out, err) = env.cli(args);
        assert_eq!(c, 0, "{args:?}: {err}");
        readable.extend(out.into_bytes());
    }
    let (_, metrics) = scrape(&env.pki, &env.daemon.url).await;
    readable.extend(metrics);
    let logs = env.daemon.logs();
    let audit: String = env
        .daemon
        .audit_records()
        .iter()
        .map(Value::to_string)
        .collect();
    let disk = bytes_of_every_file(&env.daemon.data_dir);
    for s in &secrets {
        assert!(!logs.contains(s.as_str()), "a token or FIT in the logs");
        assert!(
            !audit.contains(s.as_str()),
            "a token or FIT in the audit log"
        );
        assert!(
            !contains(&readable, s),
            "a token or FIT readable by operators"
        );
        assert!(!contains(&disk, s), "a token or FIT on disk in clear");
        // Not even its signature part (the part that makes a JWT a credential).
        let sig = s.rsplit('.').next().unwrap();
        if sig.len() > 20 {
            assert!(!logs.contains(sig), "a token signature in the logs");
            assert!(!contains(&disk, sig), "a token signature on disk");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forge_routes_refuse_wrong_methods_oversized_bodies_and_missing_tokens() {
    let mut env = start().await;
    env.expect_site("t1", ACME);
    let fit = env.forge.fit(&acme()).token();
    let bearer = format!("Bearer {fit}");
    // POST only.
    for (method, path) in [
        (Method::GET, "/forge/trigger"),
        (Method::GET, "/forge/invoke"),
        (Method::PUT, "/forge/lifecycle"),
        (Method::DELETE, "/forge/trigger"),
    ] {
        let (s, v) = send_raw(
            &mut env.public,
            method.clone(),
            path,
            &[("authorization", bearer.as_str())],
            None,
        )
        .await;
        assert_eq!(
            (s, code(&v)),
            (405, "method_not_allowed"),
            "{method} {path}: {v}"
        );
    }
    let (s, _) = send(
        &mut env.public,
        "everything",
        Some(fit.as_str()),
        None,
        &trigger_body(&acme()),
    )
    .await;
    assert_eq!(s, 404, "an unknown Forge route");

    // No, or no usable, FIT: 401, counted, not audited.
    let audit_before = env.audit_count();
    let rejected_before = invocations_rejected(&env).await;
    let body = serde_json::to_vec(&trigger_body(&acme())).unwrap();
    let attempts: [&[(&str, &str)]; 7] = [
        &[],
        &[("x-forge-oauth-system", "a.b.c")],
        &[("authorization", "Basic YWRtaW46YWRtaW4=")],
        &[("authorization", "Bearer ")],
        &[("authorization", "Bearer not-a-jwt")],
        &[("authorization", "Bearer a.b.c")],
        // The token without its scheme.
        &[("authorization", fit.as_str())],
    ];
    for headers in attempts {
        let (s, v) = send_raw(
            &mut env.public,
            Method::POST,
            "/forge/trigger",
            headers,
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (s, code(&v)),
            (401, "invocation_rejected"),
            "{headers:?}: {v}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.audit_count(), audit_before);
    assert_eq!(
        invocations_rejected(&env).await,
        rejected_before + attempts.len() as u64
    );

    // A body beyond the public listener's limit, even under a valid FIT: refused on its
    // declared length (the head alone is sent: a client still writing a refused body may
    // see the connection reset before the answer).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let url = env.public_url();
        let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("https://"))
            .await
            .unwrap();
        let mut tls = client_tls(&env.pki, "w1", b"http/1.1")
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let fit = env.forge.fit(&acme()).token();
        tls.write_all(
            format!(
                "POST /forge/trigger HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {fit}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                200 * 1024
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("payload_too_large"), "{answer}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(env.binding_for(ACME).await.is_none(), "nothing bound");
}

/// A cloudId is public: naming the cloudId of a site already running the app unclaimed (the
/// customer installed first) does not win that site; its administrator's code does, and the
/// unclaimed record goes with the binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_running_the_app_unclaimed_is_bound_only_on_its_code() {
    let mut env = start().await;
    let (s, v) = env.trigger(&stray(), &system_token(now() + 2 * HOUR)).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("unclaimed")), "{v}");
    let (c, onboarded, err) = env.onboard("t2", STRAY);
    assert_eq!(c, 0, "{err}");
    assert!(onboarded["unclaimed_since"].is_string(), "{onboarded}");
    let (s, v) = env.trigger(&stray(), &system_token(now() + 3 * HOUR)).await;
    assert_eq!(
        (s, v["result"].as_str()),
        (200, Some("awaiting_code")),
        "{v}"
    );
    assert!(env.binding_for(STRAY).await.is_none());
    // An operator persuaded to claim it for another tenant is refused while t2's onboarding
    // is out (the claim would silently end it).
    let (c, _, err) = env.cli(&[
        "unclaimed",
        "claim",
        "--identifier",
        &format!("atlassian_site:{STRAY}"),
        "--tenant",
        "t1",
        "--owner",
        "team-tests",
        "--purpose",
        "integration test",
    ]);
    assert_eq!(c, 1, "{err}");
    assert!(
        err.contains("conflict (409)") && err.contains("onboarding out"),
        "{err}"
    );
    // A binding by hand is refused for any site, whatever is out: a cloudId and installation
    // id named by hand are the customer's word, and the site's next signed invocation would
    // hand its system token to that tenant's workers.
    let site = stray();
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "by-hand", "tenant": "t1", "provider": "atlassian_forge",
                    "config": {"cloud_id": STRAY, "installation_id": site.installation_id, "environment": "PRODUCTION", "api_base_url": site.api_base_url()}})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is not bound by hand"),
        "{v}"
    );
    // Nor does the CLI offer it.
    let (c, _, err) = env.cli(&["binding", "add", "atlassian", "by-hand", "--tenant", "t1"]);
    assert_ne!(c, 0, "{err}");
    assert!(err.contains("unrecognized subcommand 'atlassian'"), "{err}");
    let (s, v) = env
        .connect(&stray(), onboarded["connect_code"].as_str().unwrap(), None)
        .await;
    assert_eq!((s, v["result"].as_str()), (200, Some("bound")), "{v}");
    assert_eq!(env.binding_for(STRAY).await.unwrap()["tenant"], "t2");
    assert!(env.unclaimed().is_empty(), "the unclaimed record stayed");
}

/// An onboarding outlives nothing it names: a tenant removed since (and created again under
/// the same id) does not get the site; the site is kept unclaimed, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expectation_of_a_removed_tenant_binds_nothing() {
    let mut env = start().await;
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": "t3"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    env.expect_site("t3", STRAY);
    let (s, v) = call(&mut env.op, Method::DELETE, "/v1/admin/tenants/t3", None).await;
    assert_eq!(s, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": "t3"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = env.trigger(&stray(), &system_token(now() + 2 * HOUR)).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("unclaimed")), "{v}");
    assert!(env.binding_for(STRAY).await.is_none());
    let kept = env.unclaimed();
    assert!(
        kept.iter()
            .any(|u| u["reason"].as_str().is_some_and(|r| r.contains("removed"))),
        "{kept:?}"
    );
}

/// Jira and Confluence on one site are two live installations of the app: the other
/// product's installation does not take the binding over, and the bound one keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_products_installation_on_a_bound_site_does_not_take_it_over() {
    let mut env = start().await;
    let first = system_token(now() + 2 * HOUR);
    env.bind("t1", &acme(), &first, "i-forge").await;
    let confluence = Site {
        product: "confluence".into(),
        ..Site::new(ACME, "dddddddd-1111-4222-8333-444444444444")
    };
    let (s, v) = env
        .trigger(&confluence, &system_token(now() + 3 * HOUR))
        .await;
    assert_eq!((s, v["result"].as_str()), (200, Some("ignored")), "{v}");
    let b = env.binding_for(ACME).await.unwrap();
    assert_eq!(
        b["config"]["installation_id"],
        acme().installation_id,
        "{b}"
    );
    assert!(
        b["config"]["api_base_url"]
            .as_str()
            .unwrap()
            .contains("/ex/jira/"),
        "{b}"
    );
    assert_eq!(env.current_token("w1", "i-forge").await, first);
    let later = system_token(now() + 3 * HOUR + 60);
    let (s, v) = env.trigger(&acme(), &later).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    env.wait_token("w1", "i-forge", &later).await;
}

/// A reinstall retires the old installation's token at once, even one that outlives what
/// the new installation brings, and a reinstall that brings none leaves nothing to hand out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinstall_retires_the_old_installations_token() {
    let mut env = start().await;
    let old = system_token(now() + 3 * HOUR);
    env.bind("t1", &acme(), &old, "i-forge").await;
    let second = system_token(now() + 2 * HOUR);
    let reinstalled = acme().reinstalled(ACME_REINST);
    let (s, v) = env.trigger(&reinstalled, &second).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("rebound")), "{v}");
    env.wait_token("w1", "i-forge", &second).await;
    let again = acme().reinstalled("aaaaaaaa-9999-4666-8777-888888888888");
    let (s, v) = env.invoke("lifecycle", &again, None).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("rebound")), "{v}");
    let (s, v) = resolve(&mut env.worker("w1"), json!({"instance_id": "i-forge"})).await;
    assert_eq!((s, code(&v)), (409, "secret_missing"), "{}", redact(&v));
}

/// A FIT is a 25 s token: one claiming to live for an hour is refused (a copied FIT cannot be
/// replayed for long).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fit_claiming_a_long_life_is_refused() {
    let mut env = start().await;
    env.expect_site("t1", ACME);
    let t = now();
    let fit = env.forge.fit(&acme()).times(t, t, t + 3600).token();
    let token = system_token(t + 2 * HOUR);
    let (s, v) = send(
        &mut env.public,
        "trigger",
        Some(fit.as_str()),
        Some(token.as_str()),
        &trigger_body(&acme()),
    )
    .await;
    assert_eq!((s, code(&v)), (401, "invocation_rejected"), "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(env.binding_for(ACME).await.is_none());
}

/// Anyone can point a Forge app at the broker from Atlassian's addresses: refused
/// invocations are charged to the source, signed ones never refused for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_invocations_do_not_starve_signed_ones() {
    let mut env = start_custom("", |p| {
        p.replace(
            "requests_per_second_per_source = 100.0",
            "requests_per_second_per_source = 0.01",
        )
        .replace("burst_per_source = 100.0", "burst_per_source = 3.0")
    })
    .await;
    env.expect_site("t1", ACME);
    for _ in 0..10 {
        let fit = env.forge.defective(&acme(), Defect::OtherAppAudience);
        let (s, v) = send(
            &mut env.public,
            "trigger",
            Some(fit.as_str()),
            None,
            &trigger_body(&acme()),
        )
        .await;
        assert_eq!((s, code(&v)), (401, "invocation_rejected"), "{v}");
    }
    // The refusals used up the source's budget for everything else…
    let (s, v) = send_raw(
        &mut env.public,
        Method::GET,
        "/callbacks/github_app/start?state=x",
        &[],
        None,
    )
    .await;
    assert_eq!((s, code(&v)), (429, "rate_limited"), "{v}");
    // …but a signed invocation is still served.
    let token = system_token(now() + 2 * HOUR);
    let (s, v) = env.trigger(&acme(), &token).await;
    assert_eq!(
        (s, v["result"].as_str()),
        (200, Some("awaiting_code")),
        "{v}"
    );
}

/// The capture record names the token by the broker's keyed fingerprint, the one the
/// resolves that hand it out carry: a leak can be traced from capture to every worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_and_the_resolves_of_its_token_share_one_fingerprint() {
    let mut env = start().await;
    let token = system_token(now() + 2 * HOUR);
    env.bind("t1", &acme(), &token, "i-forge").await;
    let captured = env.audited("forge.token_captured");
    assert_eq!(captured.len(), 1, "{captured:?}");
    let fp = captured[0]["token_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let resolves: Vec<_> = env
        .audited("resolve")
        .into_iter()
        .filter(|r| r["outcome"] == "allowed")
        .collect();
    assert!(!resolves.is_empty());
    assert!(
        resolves
            .iter()
            .all(|r| r["token_fingerprint"] == fp.as_str()),
        "{fp} {resolves:?}"
    );
}

/// A revoked operator's onboarding (THREATS.md): a site expectation acts for the operator who
/// recorded it, so once they are disabled — and still after they are enabled again — the
/// site's first invocation binds nothing: it is kept unclaimed, saying why, for an active
/// operator to claim after checking whose it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_operators_expectation_binds_nothing() {
    let mut env = start().await;
    let url = env.daemon.url.clone();
    let mut op2 = register_operator(&mut env.op, &env.pki, &url, "op2").await;
    for (tenant, cloud_id) in [("t1", ACME), ("t2", STRAY)] {
        let (s, v) = call(
            &mut op2,
            Method::POST,
            "/v1/admin/onboard/atlassian_forge",
            Some(json!({"owner": "team-tests", "purpose": "integration test", "tenant": tenant, "account": {"login": cloud_id, "id": 0}})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    set_operator(&mut env.op, "op2", "disable").await;
    let (s, v) = env.trigger(&acme(), &system_token(now() + 2 * HOUR)).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("unclaimed")), "{v}");
    set_operator(&mut env.op, "op2", "enable").await;
    let (s, v) = env.trigger(&stray(), &system_token(now() + 2 * HOUR)).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("unclaimed")), "{v}");
    let kept = env.unclaimed();
    for (cloud_id, why) in [
        (ACME, "operator op2 is disabled"),
        (STRAY, "operator op2 was disabled after issuing it"),
    ] {
        assert!(env.binding_for(cloud_id).await.is_none(), "bound for op2");
        assert!(
            kept.iter()
                .any(|u| u["identifier"] == format!("atlassian_site:{cloud_id}")
                    && u["reason"].as_str().is_some_and(|r| r.contains(why))),
            "{cloud_id}: {kept:?}"
        );
    }
}

/// An operator lists the site expectations still out and revokes one: the revoked site's
/// first invocation binds nothing (kept unclaimed, as any unexpected site), the other is
/// bound as expected, and the revocation is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_expectation_binds_nothing() {
    let mut env = start().await;
    let mut codes = Vec::new();
    for (tenant, cloud_id) in [("t1", ACME), ("t2", STRAY)] {
        let (s, v) = call(
            &mut env.op,
            Method::POST,
            "/v1/admin/onboard/atlassian_forge",
            Some(json!({"owner": "team-tests", "purpose": "integration test", "tenant": tenant, "account": {"login": cloud_id, "id": 0}})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        codes.push(v["connect_code"].as_str().unwrap().to_owned());
    }
    let (_, v) = onboarding_links(&mut env.op).await;
    let links = v["onboarding_links"].as_array().unwrap();
    assert_eq!(links.len(), 2, "{v}");
    let stray_site = format!("atlassian_site:{STRAY}");
    let revoked = links
        .iter()
        .find(|l| l["site"] == stray_site.as_str())
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(revoked["kind"], "expected_site", "{v}");
    assert_eq!(revoked["tenant"], "t2", "{v}");
    assert_eq!(revoked["status"], "live", "{v}");
    let id = revoked["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("es_"), "{id}");
    let (s, v) = revoke_onboarding_link(&mut env.op, &id).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["site"], stray_site.as_str(), "{v}");

    // The revoked onboarding's code binds nothing either.
    let (s, v) = env
        .connect(&stray(), &codes[1], Some(&system_token(now() + 2 * HOUR)))
        .await;
    assert_eq!((s, v["result"].as_str()), (200, Some("unclaimed")), "{v}");
    assert!(
        env.binding_for(STRAY).await.is_none(),
        "bound after revocation"
    );
    let (s, v) = env
        .connect(&acme(), &codes[0], Some(&system_token(now() + 2 * HOUR)))
        .await;
    assert_eq!((s, v["result"].as_str()), (200, Some("bound")), "{v}");
    assert!(env.binding_for(ACME).await.is_some(), "the other site: {v}");
    assert!(env
        .daemon
        .audit_records()
        .iter()
        .any(|r| r["action"] == "onboarding.revoke"
            && r["tenant"] == "t2"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&stray_site))));
}

/// Anyone who installs the app on 256 sites fills the unclaimed list; the sites' hourly
/// triggers keep the records alive. Onboarding goes on (a site binds only on its
/// administrator's connect code, so a full list hides nothing an onboarding could win). An
/// operator ignores them: the ignored sites' triggers write nothing, and one of them is
/// bound only when onboarded and its administrator types the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unexpected_sites_is_ignored_and_onboarding_goes_on() {
    let mut env = start_custom("", |s| {
        s.replace(
            "requests_per_second_per_source = 100.0\nburst_per_source = 100.0",
            "requests_per_second_per_source = 1000.0\nburst_per_source = 1000.0",
        )
    })
    .await;
    let sites: Vec<Site> = (0..256u32)
        .map(|n| {
            Site::new(
                &format!("{n:08x}-0000-4000-8000-00000000f100"),
                &format!("{n:08x}-1111-4222-8333-00000000f100"),
            )
        })
        .collect();
    // Each trigger is answered before its store write, and the listener holds at most 64
    // writes in flight: on a slow disk the flood outruns them and is told `unavailable`
    // (503), which Forge retries. So does this sender, after a pause.
    for site in &sites {
        let fit = env.forge.fit(site).token();
        let token = system_token(now() + 2 * HOUR);
        let deadline = std::time::Instant::now() + SETTLE;
        loop {
            let (s, v) = send(
                &mut env.public,
                "trigger",
                Some(&fit),
                Some(&token),
                &trigger_body(site),
            )
            .await;
            if s == 503 && code(&v) == "unavailable" && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            assert_eq!(s, 200, "{v}");
            break;
        }
    }
    // Up to 64 writes answered first may still be queued, each an fsynced record and commit:
    // a minute for them on a slow disk (the loop ends as soon as all 256 are listed).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let (_, v) = call(&mut env.op, Method::GET, "/v1/admin/unclaimed", None).await;
        let listed = v["unclaimed"].as_array().unwrap().clone();
        if listed.len() == 256 || std::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(listed.len(), 256);
    let (c, _, err) = env.onboard("t1", ACME);
    assert_eq!(c, 0, "the full list blocks onboarding: {err}");

    let identifiers: Vec<String> = listed
        .iter()
        .map(|u| u["identifier"].as_str().unwrap().to_owned())
        .collect();
    // A worker's certificate ignores nothing (refused, audited as the worker's).
    let mut w1 = env.worker("w1");
    let (s, v) = call(
        &mut w1,
        Method::POST,
        "/v1/admin/unclaimed/ignore",
        Some(json!({"identifiers": identifiers})),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "operator_required"), "{v}");
    assert!(env.audited("unclaimed.ignore").is_empty());
    // Neither does a call naming none, or more than the cap.
    for body in [
        json!({"identifiers": []}),
        json!({"identifiers": vec!["x"; 257]}),
    ] {
        let (s, v) = call(
            &mut env.op,
            Method::POST,
            "/v1/admin/unclaimed/ignore",
            Some(body),
        )
        .await;
        assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
    }

    // Ignored by an operator, all at once.
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/unclaimed/ignore",
        Some(json!({"identifiers": identifiers})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ignored"].as_array().unwrap().len(), 256, "{v}");
    let ignoring = env.audited("unclaimed.ignore");
    assert_eq!(ignoring.len(), 1, "{ignoring:?}");
    let detail = ignoring[0]["detail"].as_str().unwrap();
    assert!(detail.contains("ignored 256 unclaimed installation(s)"));
    // Each one named: no site is left to be ignored off the record.
    for id in &identifiers {
        assert!(detail.contains(id.as_str()), "{id} not on the record");
    }
    // An ignored site's trigger writes nothing; onboarded, its administrator's code binds it.
    let records = env.audit_count();
    let (s, v) = env
        .trigger(&sites[0], &system_token(now() + 3 * HOUR))
        .await;
    assert_eq!((s, v["result"].as_str()), (200, Some("ignored")), "{v}");
    assert_eq!(env.audit_count(), records);
    let cloud = sites[0].cloud_id.clone();
    let (c, onboarded, err) = env.onboard("t2", &cloud);
    assert_eq!(c, 0, "{err}");
    assert!(onboarded["unclaimed_since"].is_string(), "{onboarded}");
    let (s, v) = env
        .trigger(&sites[0], &system_token(now() + 3 * HOUR))
        .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (200, Some("awaiting_code")),
        "{v}"
    );
    let the_code = onboarded["connect_code"].as_str().unwrap();
    let (s, v) = env.connect(&sites[0], the_code, None).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("bound")), "{v}");
    assert_eq!(env.binding_for(&cloud).await.unwrap()["tenant"], "t2");
    // A name it does not hold is refused whole: nothing is ignored.
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/unclaimed/ignore",
        Some(json!({"identifiers": [identifiers[1].clone(), "atlassian_site:nothing"]})),
    )
    .await;
    assert_eq!((s, code(&v)), (404, "unknown_record"), "{v}");
    // A new unexpected site is kept again: the list has room.
    let (s, v) = env.trigger(&stray(), &system_token(now() + 2 * HOUR)).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("unclaimed")), "{v}");
}

/// Ignored sites do not count against the unclaimed list's cap, but are kept: at most 4096
/// of them. With that many ignored (planted in the store), ignoring one more is refused
/// whole (`conflict`), and the site stays listed, not ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_sites_are_kept_up_to_their_own_cap() {
    use credbroker::store::{Batch, Op, Table};
    let mut env = start().await;
    let (s, v) = env.trigger(&stray(), &system_token(now() + 2 * HOUR)).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("unclaimed")), "{v}");
    env.daemon.stop();
    {
        let config = credbroker::config::Config::load(&env.daemon.config).unwrap();
        let store = credbroker::store::open(&config.store, &config.data_dir)
            .await
            .unwrap();
        let rows = store.scan(Table::Identifiers, "unclaimed:").await.unwrap();
        assert_eq!(rows.len(), 1);
        let mut record: Value = serde_json::from_slice(&rows[0].1).unwrap();
        record["ignored"] = json!(true);
        record.as_object_mut().unwrap().remove("expires_at");
        let mut batch = Batch::new();
        for n in 0..4096u32 {
            let identifier = format!("atlassian_site:{n:08x}-0000-4000-8000-00000000e100");
            record["identifier"] = json!(identifier);
            batch.push(Op::Put(
                Table::Identifiers,
                format!("unclaimed:{identifier}"),
                serde_json::to_vec(&record).unwrap(),
            ));
        }
        store.commit(batch).await.unwrap();
    }
    env.daemon.restart();
    env.op = env.pki.client_for("op", &env.daemon.url);
    let stray_id = format!("atlassian_site:{}", stray().cloud_id);
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/unclaimed/ignore",
        Some(json!({"identifiers": [stray_id]})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4096 unclaimed installations are ignored already"),
        "{v}"
    );
    let (_, v) = call(&mut env.op, Method::GET, "/v1/admin/unclaimed", None).await;
    let listed = v["unclaimed"].as_array().unwrap();
    assert_eq!(listed.len(), 4097);
    assert!(listed
        .iter()
        .any(|u| u["identifier"] == stray_id.as_str() && u["ignored"] != true));
}
