//! `atlassian_forge` end to end against the local fake Forge: the real daemon binds an
//! onboarded (expected) Atlassian site to its tenant once the site's administrator types the
//! onboarding's connect code on the app's admin page (`POST /forge/connect`; the trigger and
//! lifecycle calls alone bind nothing), keeps an unexpected site
//! unclaimed until an operator claims it, re-binds a reinstall, captures the app system token
//! each hourly trigger carries and hands it to that tenant's workers — never expired, never
//! older than the one held, never narrowed. The attacks are in atlassian_forge_attacks.rs.

use std::time::{Duration, Instant};

use credbroker_tests::fake_forge::{
    fingerprint, invoke_body, lifecycle_body, now, send, system_token,
};
use credbroker_tests::forge_env::*;
use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_from_an_expected_site_binds_it_and_its_token_resolves() {
    let mut env = start().await;
    let site = acme();
    let v = env.expect_site("t1", ACME);
    assert!(v["expected_site"].to_string().contains(ACME), "{v}");
    assert!(v["expires_at"].is_string(), "{v}");
    assert_eq!(
        v["remote_base_url"],
        format!("{}/forge", env.public_url()),
        "{v}"
    );
    assert!(env.binding_for(ACME).await.is_none(), "expected, not bound");
    let connect_code = v["connect_code"].as_str().unwrap().to_owned();
    assert!(
        connect_code.len() == 24 && connect_code.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{connect_code}"
    );

    // The site's own invocations are not proof that it is the tenant's: the trigger (and
    // the install event) leave it unbound until its administrator types the code.
    let exp = now() + 2 * HOUR;
    let token = system_token(exp);
    let (s, v) = env.trigger(&site, &token).await;
    assert_eq!(
        (s, v["result"].as_str()),
        (200, Some("awaiting_code")),
        "{v}"
    );
    assert!(
        env.binding_for(ACME).await.is_none(),
        "bound without the code"
    );
    let (s, v) = env
        .connect(&site, &format!("  {connect_code} "), Some(&token))
        .await;
    assert_eq!((s, v["result"].as_str()), (200, Some("bound")), "{v}");
    assert!(v["request_id"].is_string(), "{v}");
    assert!(!v.to_string().contains(&token), "token echoed: {v}");

    let b = env
        .wait_binding(ACME, |b| b["active_secret_version"].is_u64())
        .await;
    assert_eq!(b["tenant"], "t1", "{b}");
    assert_eq!(b["status"], "active", "{b}");
    assert_eq!(b["config"]["installation_id"], site.installation_id, "{b}");
    assert_eq!(b["config"]["environment"], "PRODUCTION", "{b}");
    assert_eq!(b["config"]["api_base_url"], site.api_base_url(), "{b}");
    assert_eq!(b["config"]["previous_installations"], json!([]), "{b}");
    let binding = b["id"].as_str().unwrap().to_owned();
    assert!(binding.starts_with("atlassian-forge-"), "{binding}");

    let bound = env.audited("forge.bound");
    assert_eq!(bound.len(), 1, "{bound:?}");
    assert_eq!(bound[0]["tenant"], "t1");
    let detail = bound[0]["detail"].as_str().unwrap();
    assert!(detail.contains("connect code"), "{detail}");
    // No Atlassian user data is kept: not even who typed the code.
    let everything = serde_json::to_string(&env.daemon.audit_records()).unwrap();
    assert!(!everything.contains(ADMIN_ACCOUNT), "{detail}");
    assert!(!env.daemon.logs().contains(ADMIN_ACCOUNT));
    assert!(
        !serde_json::to_string(&env.daemon.audit_records())
            .unwrap()
            .contains(&connect_code),
        "the code is not on the record"
    );
    let captured = env.audited("forge.token_captured");
    assert_eq!(captured.len(), 1, "{captured:?}");
    assert!(
        captured[0]
            .to_string()
            .contains(&fingerprint(&env.daemon.data_dir, &token)),
        "the capture names the token's fingerprint: {}",
        captured[0]
    );
    // Only the keyed one: an unkeyed hash on the binding or the record would let whoever
    // reads them test a leaked token offline, and learn whose it is.
    assert_eq!(
        b["trust_facts"]["system_token"]["fingerprint"],
        json!(fingerprint(&env.daemon.data_dir, &token)),
        "{b}"
    );
    let unkeyed = hex::encode(
        &aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref()[..8],
    );
    assert!(!b.to_string().contains(&unkeyed), "{b}");
    assert!(!everything.contains(&unkeyed));

    let (s, v) = env.add_instance("i-forge", "t1", &binding).await;
    assert_eq!(s, 201, "{v}");
    let v = env.wait_token("w1", "i-forge", &token).await;
    assert_eq!(v["kind"], "atlassian_system_token", "{}", redact(&v));
    assert_eq!(v["provider"], "atlassian_forge", "{}", redact(&v));
    assert_eq!(v["expires_at"], rfc(exp), "{}", redact(&v));
    assert_eq!(v["details"]["cloud_id"], ACME, "{}", redact(&v));
    assert_eq!(
        v["details"]["api_base_url"],
        site.api_base_url(),
        "{}",
        redact(&v)
    );

    // The expectation was consumed: nothing is pending for ACME any more, and a second
    // trigger of the same installation only refreshes the token.
    let fresher = system_token(exp + 60);
    let (s, v) = env.invoke("invoke", &site, Some(fresher.as_str())).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    env.wait_token("w1", "i-forge", &fresher).await;
    assert_eq!(env.audited("forge.bound").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unexpected_site_is_kept_unclaimed_until_an_operator_claims_it() {
    let mut env = start().await;
    let site = stray();
    // Tokens sent while unclaimed expire later than the one sent after the claim: had either
    // been kept, the claimed binding would hand it out instead.
    let early = system_token(now() + 3 * HOUR);
    let (s, v) = env.trigger(&site, &early).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("unclaimed")), "{v}");
    let identifier = format!("atlassian_site:{STRAY}");
    let deadline = Instant::now() + SETTLE;
    let listed = loop {
        let list = env.unclaimed();
        if let Some(u) = list.iter().find(|u| u["identifier"] == identifier.as_str()) {
            break u.clone();
        }
        assert!(Instant::now() < deadline, "never unclaimed: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listed["provider"], "atlassian_forge", "{listed}");
    assert!(!listed.to_string().contains(&early), "token kept: {listed}");
    assert!(env.binding_for(STRAY).await.is_none(), "never bound");
    let about_stray = |env: &Env| {
        env.daemon
            .audit_records()
            .into_iter()
            .filter(|r| r["action"] != "unclaimed.list" && r.to_string().contains(STRAY))
            .count()
    };
    let audited = about_stray(&env);
    assert_eq!(audited, 1, "one audit record per new unclaimed site");

    // The same site again: still one record, one audit record.
    let second = system_token(now() + 2 * HOUR + 1800);
    let (s, v) = env.trigger(&site, &second).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("unclaimed")), "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        about_stray(&env),
        audited,
        "a known unclaimed site audited again"
    );
    let list = env.unclaimed();
    assert_eq!(
        list.iter()
            .filter(|u| u["identifier"] == identifier.as_str())
            .count(),
        1,
        "{list:?}"
    );
    // Nobody can resolve it: no tenant has a binding to put an instance on.
    for w in ["w1", "w2"] {
        let (s, v) = resolve(&mut env.worker(w), json!({"instance_id": "i-stray"})).await;
        assert_eq!((s, code(&v)), (404, "unknown_instance"), "{v}");
    }

    // The operator claims it for t2: audited, bound, no longer unclaimed.
    let (c, out, err) = env.cli(&[
        "unclaimed",
        "claim",
        "--identifier",
        &identifier,
        "--tenant",
        "t2",
        "--owner",
        "team-tests",
        "--purpose",
        "integration test",
    ]);
    assert_eq!(c, 0, "{err}");
    let claimed: Value = serde_json::from_str(&out).unwrap();
    let binding = claimed["binding"]["id"].as_str().unwrap().to_owned();
    assert!(env
        .audited("unclaimed.claim")
        .iter()
        .any(|r| r["outcome"] == "allowed" && r["tenant"] == "t2"));
    assert!(env.unclaimed().is_empty());
    let b = env.binding_for(STRAY).await.expect("claimed");
    assert_eq!(b["tenant"], "t2", "{b}");
    assert_eq!(b["id"], binding.as_str(), "{b}");
    assert!(
        b["active_secret_version"].is_null(),
        "no token was kept while unclaimed: {b}"
    );

    // The next trigger's token is captured and resolves for t2's worker only.
    let token = system_token(now() + 2 * HOUR);
    let (s, v) = env.trigger(&site, &token).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        matches!(v["result"].as_str(), Some("captured" | "bound")),
        "{v}"
    );
    let b = env
        .wait_binding(STRAY, |b| b["active_secret_version"].is_u64())
        .await;
    if b["status"] != "active" {
        // A claimed binding waits for its probe, as every claimed binding does.
        let (s, v) = call(
            &mut env.op,
            Method::POST,
            &format!("/v1/admin/bindings/{binding}/probe"),
            Some(json!({})),
        )
        .await;
        assert_eq!(
            (s, v["binding"]["status"].as_str()),
            (200, Some("active")),
            "{v}"
        );
    }
    let (s, v) = env.add_instance("i-stray", "t2", &binding).await;
    assert_eq!(s, 201, "{v}");
    env.wait_token("w2", "i-stray", &token).await;
    let (s, v) = resolve(&mut env.worker("w1"), json!({"instance_id": "i-stray"})).await;
    assert_eq!((s, code(&v)), (404, "unknown_instance"), "{}", redact(&v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expectation_that_expired_binds_nothing() {
    let mut env = start_with("expected_site_ttl_s = 1\n").await;
    let v = env.expect_site("t1", ACME);
    assert!(v["expires_at"].is_string(), "{v}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Even the right code, typed too late, binds nothing.
    let connect_code = v["connect_code"].as_str().unwrap();
    let (s, v) = env.connect(&acme(), connect_code, None).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("unclaimed")), "{v}");
    let (s, v) = env.trigger(&acme(), &system_token(now() + 2 * HOUR)).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("unclaimed")), "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.binding_for(ACME).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinstall_rebinds_the_site_and_the_old_installation_is_ignored() {
    let mut env = start().await;
    let old = acme();
    let first = system_token(now() + 2 * HOUR);
    let binding = env.bind("t1", &old, &first, "i-forge").await;

    let new = old.reinstalled(ACME_REINST);
    let second = system_token(now() + 3 * HOUR);
    let (s, v) = env.trigger(&new, &second).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("rebound")), "{v}");
    let b = env
        .wait_binding(ACME, |b| {
            b["config"]["installation_id"] == new.installation_id.as_str()
        })
        .await;
    assert_eq!(b["id"], binding.as_str(), "same binding: {b}");
    assert_eq!(b["tenant"], "t1", "{b}");
    assert_eq!(b["status"], "active", "{b}");
    assert_eq!(
        b["config"]["previous_installations"],
        json!([old.installation_id]),
        "{b}"
    );
    let rebound = env.audited("forge.rebound");
    assert_eq!(rebound.len(), 1, "{rebound:?}");
    assert_eq!(rebound[0]["tenant"], "t1");
    env.wait_token("w1", "i-forge", &second).await;

    // The old installation is gone: its invocations are ignored, even with a fresher token.
    let stale = system_token(now() + 3 * HOUR + 1800);
    let (s, v) = env.trigger(&old, &stale).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("ignored")), "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.current_token("w1", "i-forge").await, second);
    let b = env.binding_for(ACME).await.unwrap();
    assert_eq!(b["config"]["installation_id"], new.installation_id, "{b}");
    assert_eq!(env.audited("forge.rebound").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_never_handed_out() {
    let mut env = start().await;
    let connect_code = env.expect_site("t1", ACME)["connect_code"]
        .as_str()
        .unwrap()
        .to_owned();
    // A token about to expire is captured…
    let short_exp = now() + 8;
    let short = system_token(short_exp);
    let (s, v) = env.connect(&acme(), &connect_code, Some(&short)).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("bound")), "{v}");
    let b = env
        .wait_binding(ACME, |b| b["active_secret_version"].is_u64())
        .await;
    let binding = b["id"].as_str().unwrap().to_owned();
    let (s, v) = env.add_instance("i-forge", "t1", &binding).await;
    assert_eq!(s, 201, "{v}");
    // …but with less than a minute left it is not handed out…
    let mut w1 = env.worker("w1");
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i-forge"})).await;
    assert_unavailable(s, &v, "a token with seconds left");
    assert!(!v.to_string().contains(&short));
    // …nor once it has expired.
    let wait = (short_exp + 2 - now()).max(0) as u64;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i-forge"})).await;
    assert_unavailable(s, &v, "an expired token");
    assert!(!v.to_string().contains(&short));
    // A token that arrives already expired is not captured, though it outlives the one
    // held (so only the expiry check refuses it): kept, no new version, the refusal logged.
    let held = env.binding_for(ACME).await.unwrap();
    let dead_exp = now() - 1;
    assert!(
        dead_exp > short_exp,
        "the dead token must outlive the held one"
    );
    let dead = system_token(dead_exp);
    let (s, v) = env.trigger(&acme(), &dead).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("kept")), "{v}");
    env.daemon.wait_log("the system token has expired", 1).await;
    let after = env.binding_for(ACME).await.unwrap();
    assert_eq!(
        after["last_secret_version"], held["last_secret_version"],
        "{after}"
    );
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i-forge"})).await;
    assert_unavailable(s, &v, "after an expired token arrived");
    assert!(!v.to_string().contains(&dead));

    // The next trigger's token serves again.
    let exp = now() + 2 * HOUR;
    let token = system_token(exp);
    let (s, v) = env.trigger(&acme(), &token).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    let v = env.wait_token("w1", "i-forge", &token).await;
    assert_eq!(v["expires_at"], rfc(exp), "{}", redact(&v));
    // min_ttl_s beyond what it has left: refused, naming the next hourly trigger.
    let (s, v) = resolve(
        &mut w1,
        json!({"instance_id": "i-forge", "min_ttl_s": 2 * HOUR + 100}),
    )
    .await;
    assert_unavailable(s, &v, "min_ttl_s beyond the held token");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("trigger"),
        "{v}"
    );
    // Within it: served.
    let (s, v) = resolve(
        &mut w1,
        json!({"instance_id": "i-forge", "min_ttl_s": HOUR}),
    )
    .await;
    assert_eq!(s, 200, "{}", redact(&v));
    assert_eq!(v["credentials"]["access_token"], token.as_str());
    // No system token lives 4 h: asking for that much is a malformed request.
    let (s, v) = resolve(
        &mut w1,
        json!({"instance_id": "i-forge", "min_ttl_s": 14400}),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "bad_request"), "{}", redact(&v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresher_token_replaces_an_older_one_and_never_the_reverse() {
    let mut env = start().await;
    let t0 = now();
    let first = system_token(t0 + 2 * HOUR);
    env.bind("t1", &acme(), &first, "i-forge").await;
    let versions = |b: &Value| b["last_secret_version"].as_u64().unwrap_or(0);
    let v1 = versions(&env.binding_for(ACME).await.unwrap());

    // Fresher: captured.
    let fresher = system_token(t0 + 3 * HOUR);
    let (s, v) = env.trigger(&acme(), &fresher).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    env.wait_token("w1", "i-forge", &fresher).await;
    let v2 = versions(&env.binding_for(ACME).await.unwrap());
    assert_eq!(v2, v1 + 1, "one new secret version per capture");

    // Older, and expiring at the same instant: kept out.
    let older = system_token(t0 + 2 * HOUR + 1800);
    let same = system_token(t0 + 3 * HOUR);
    for t in [&older, &same] {
        let (s, v) = env.trigger(&acme(), t).await;
        assert_eq!((s, v["result"].as_str()), (200, Some("kept")), "{v}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.current_token("w1", "i-forge").await, fresher);
    assert_eq!(versions(&env.binding_for(ACME).await.unwrap()), v2);
    // A token claiming to live longer than Atlassian issues them (4 h, plus clock skew):
    // though it outlives the one held, it is not captured (a forged or mis-dated token
    // would otherwise be handed out for as long as it claims).
    let too_long = system_token(now() + 5 * HOUR);
    let (s, v) = env.trigger(&acme(), &too_long).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("kept")), "{v}");
    env.daemon
        .wait_log("the system token claims to live longer than 4 h", 1)
        .await;
    assert_eq!(env.current_token("w1", "i-forge").await, fresher);
    assert_eq!(versions(&env.binding_for(ACME).await.unwrap()), v2);

    // The remote endpoint (`core:endpoint` invocations) captures the same way.
    let freshest = system_token(t0 + 3 * HOUR + 1800);
    let (s, v) = env.invoke("invoke", &acme(), Some(freshest.as_str())).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    env.wait_token("w1", "i-forge", &freshest).await;

    // One capture record per captured token, naming its fingerprint only.
    let captures: Vec<String> = env
        .audited("forge.token_captured")
        .iter()
        .map(Value::to_string)
        .collect();
    assert_eq!(captures.len(), 3, "{captures:?}");
    for (t, expected) in [
        (&first, true),
        (&fresher, true),
        (&freshest, true),
        (&older, false),
        (&same, false),
    ] {
        assert_eq!(
            captures
                .iter()
                .any(|c| c.contains(&fingerprint(&env.daemon.data_dir, t))),
            expected,
            "{}",
            fingerprint(&env.daemon.data_dir, t)
        );
    }
    // An invocation without a system token changes nothing.
    let (s, v) = env.invoke("trigger", &acme(), None).await;
    assert_eq!(s, 200, "{v}");
    assert_ne!(v["result"], "captured", "{v}");
    assert_eq!(env.current_token("w1", "i-forge").await, freshest);
}

/// The admin page's call carries a system token header that the invocation token does not
/// sign, and its caller (a site administrator in a browser) may have had a hand in it. Its
/// token fills a gap and never keeps a trigger's out: one taken at connect gives way to the
/// next trigger's even when that one expires sooner, and one planted with a later expiry
/// while a trigger's token lives is not taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_admin_page_never_keeps_a_triggers_out() {
    let mut env = start().await;
    let t0 = now();
    let from_page = system_token(t0 + 2 * HOUR);
    env.bind("t1", &acme(), &from_page, "i-forge").await;
    let from_trigger = system_token(t0 + 2 * HOUR - 600);
    let (s, v) = env.trigger(&acme(), &from_trigger).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    env.wait_token("w1", "i-forge", &from_trigger).await;
    let planted = system_token(t0 + 3 * HOUR);
    // The site is bound: the page's call is taken whatever code it carries.
    let (s, v) = env
        .connect(&acme(), "AnyCodeTypedOnTheAdminPage1", Some(&planted))
        .await;
    let (s, v) = env.outcome(s, v).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("kept")), "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.current_token("w1", "i-forge").await, from_trigger);
    // Triggers go on as before: a fresher one is taken.
    let fresher = system_token(t0 + 2 * HOUR + 600);
    let (s, v) = env.trigger(&acme(), &fresher).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    env.wait_token("w1", "i-forge", &fresher).await;
}

/// A binding the schema-3 migration disabled, because another tenant's binding holds its
/// site, is not activated by an operator's enable (Forge has no probe: a plain enable):
/// 409 `conflict`, and it stays disabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enable_never_activates_a_binding_of_another_bindings_site() {
    let mut env = start().await;
    let token = system_token(now() + 2 * HOUR);
    let f1 = env.bind("t1", &acme(), &token, "i-forge").await;
    env.daemon.stop();
    // A second binding of it, for t2, as a store could hold it before identifiers were
    // exclusive.
    copy_binding(&env.daemon.config, &f1, "f2", "t2").await;
    env.daemon.restart();
    env.op = env.pki.client_for("op", &env.daemon.url);
    let status = |v: &Value| v["binding"]["status"].as_str().unwrap_or("").to_owned();
    let (_, v) = call(&mut env.op, Method::GET, "/v1/admin/bindings/f2", None).await;
    assert_eq!(status(&v), "disabled", "{v}");
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings/f2/enable",
        None,
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    let (_, v) = call(&mut env.op, Method::GET, "/v1/admin/bindings/f2", None).await;
    assert_eq!(status(&v), "disabled", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_a_forge_token_or_pasting_one_is_refused() {
    let mut env = start().await;
    let token = system_token(now() + 2 * HOUR);
    let binding = env.bind("t1", &acme(), &token, "i-forge").await;
    // Nor is an intake link made for it: its token comes from signed invocations, and the
    // write a pasted one would end in is refused after the customer spent an attempt.
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/intake",
        Some(json!({"binding": binding, "fields": ["access_token"]})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
    assert!(v.to_string().contains("signed invocations"), "{v}");
    let mut w1 = env.worker("w1");
    for narrow in [
        json!({"scopes": ["read:jira-work"]}),
        json!({"scopes": ["write:jira-work"]}),
        json!({"fields": ["access_token"]}),
    ] {
        let (s, v) = resolve(&mut w1, json!({"instance_id": "i-forge", "narrow": narrow})).await;
        assert!(
            matches!(
                (s, code(&v)),
                (403, "narrowing_exceeds_ceiling") | (400, "bad_request")
            ),
            "{narrow}: {s} {}",
            redact(&v)
        );
        assert!(!v.to_string().contains(&token));
    }
    // Without a narrowing: served at the fixed ceiling.
    assert_eq!(env.current_token("w1", "i-forge").await, token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_bind_an_expected_site_and_triggers_bring_the_token() {
    let mut env = start().await;
    let connect_code = env.expect_site("t1", ACME)["connect_code"]
        .as_str()
        .unwrap()
        .to_owned();
    // The install event changes nothing until the site's administrator types the code.
    let (s, v) = env.invoke("lifecycle", &acme(), None).await;
    assert_eq!(
        (s, v["result"].as_str()),
        (200, Some("awaiting_code")),
        "{v}"
    );
    // A page call without a system token: the site is bound, nothing to hand out yet.
    let (s, v) = env.connect(&acme(), &connect_code, None).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("bound")), "{v}");
    let b = env.wait_binding(ACME, |_| true).await;
    assert_eq!(b["tenant"], "t1", "{b}");
    assert!(b["active_secret_version"].is_null(), "{b}");
    let binding = b["id"].as_str().unwrap().to_owned();
    let (s, v) = env.add_instance("i-forge", "t1", &binding).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = resolve(&mut env.worker("w1"), json!({"instance_id": "i-forge"})).await;
    assert_eq!(
        (s, code(&v)),
        (409, "secret_missing"),
        "no token yet: {}",
        redact(&v)
    );
    // An upgrade event changes nothing.
    let fit = env.forge.fit(&acme()).token();
    let (s, v) = send(
        &mut env.public,
        "lifecycle",
        Some(fit.as_str()),
        None,
        &lifecycle_body("avi:forge:upgraded:app", &acme(), APP_ID),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_ne!(v["result"], "rebound", "{v}");
    // The hourly trigger brings the token.
    let token = system_token(now() + 2 * HOUR);
    let (s, v) = env.trigger(&acme(), &token).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    env.wait_token("w1", "i-forge", &token).await;
    // A FIT with an invocation context and a principal (a user-initiated call) verifies, and
    // is then refused on any route but /forge/connect (the app's only page sends codes only).
    let fit = env
        .forge
        .fit(&acme())
        .endpoint("credbroker-endpoint")
        .context(json!({"cloudId": ACME, "siteUrl": "https://acme.atlassian.net", "moduleKey": "credbroker-endpoint"}))
        .principal("5b10ac8d82e05b22cc7d4ef5")
        .token();
    let (s, v) = send(
        &mut env.public,
        "invoke",
        Some(fit.as_str()),
        None,
        &invoke_body(&acme()),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "callback_rejected"), "{v}");
}
