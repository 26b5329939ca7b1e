//! The proof that binds an Atlassian site to a tenant: the connect code the tenant's
//! onboarding hands out, typed by an administrator of the site on the app's admin page
//! (`POST /forge/connect`, a FIT of the `jira:adminPage` module naming the user). A cloudId
//! is public: naming it (`onboard atlassian --cloud-id`) proves nothing, and neither does the
//! site's own trigger or install event.
//!
//! Attacks tried, each against the real daemon: a tenant naming another customer's cloudId
//! and waiting for that site's invocations; another onboarding's code; the right code sent
//! from another module, without a user, in a trigger's body, or unsigned; a code replaced by
//! a newer onboarding; guessing (refusals are counted, never audited one by one).

use credbroker_tests::fake_forge::{now, send, system_token};
use credbroker_tests::forge_env::*;
use credbroker_tests::*;
use serde_json::{json, Value};

fn code_of(onboarded: &Value) -> String {
    onboarded["connect_code"].as_str().unwrap().to_owned()
}

/// Tenant t2 names acme's cloudId (public) before acme's administrator does anything: acme's
/// install event and triggers bind nothing, and no code but the one t2 holds would — which
/// only acme's administrator can type on acme's admin page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naming_a_sites_cloud_id_binds_nothing_without_its_administrator() {
    let mut env = start().await;
    let t2_code = code_of(&env.expect_site("t2", ACME));
    let token = system_token(now() + 2 * HOUR);
    for kind in ["lifecycle", "trigger", "invoke"] {
        let (s, v) = env.invoke(kind, &acme(), Some(&token)).await;
        assert_eq!(
            (s, v["result"].as_str()),
            (200, Some("awaiting_code")),
            "{kind}: {v}"
        );
    }
    // A code in a trigger's body is not read: only the admin page's call carries one.
    let fit = env.forge.fit(&acme()).token();
    let (s, v) = send(
        &mut env.public,
        "trigger",
        Some(fit.as_str()),
        Some(token.as_str()),
        &json!({ "code": t2_code }),
    )
    .await;
    let (s, v) = env.outcome(s, v).await;
    assert_eq!(
        (s, v["result"].as_str()),
        (200, Some("awaiting_code")),
        "{v}"
    );
    // The page (a call naming a person) reaches no route but /forge/connect: the others are
    // not limited per site.
    let page = env
        .forge
        .fit(&acme())
        .admin_page(&acme(), ADMIN_ACCOUNT)
        .token();
    for kind in ["trigger", "lifecycle", "invoke"] {
        let (s, v) = send(
            &mut env.public,
            kind,
            Some(page.as_str()),
            Some(token.as_str()),
            &json!({}),
        )
        .await;
        assert_eq!((s, code(&v)), (403, "callback_rejected"), "{kind}: {v}");
    }
    assert!(env.binding_for(ACME).await.is_none());
    assert!(env.audited("forge.bound").is_empty());
}

/// The right code, but not from the admin page, or not from a person: refused (403
/// `callback_rejected`, counted, not audited), nothing bound. Unsigned: 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_counts_only_from_the_admin_page_and_a_person() {
    let mut env = start().await;
    let the_code = code_of(&env.expect_site("t1", ACME));
    let token = system_token(now() + 2 * HOUR);
    let audit_before = env.audit_count();
    let refused_before = refused_with(&env, "callback_rejected").await;
    let site = acme();
    let fits = [
        ("a trigger", env.forge.fit(&site).token()),
        (
            "another module",
            env.forge
                .fit(&site)
                .endpoint("credbroker-endpoint")
                .principal(ADMIN_ACCOUNT)
                .token(),
        ),
        (
            "the page's type with another key",
            env.forge
                .fit(&site)
                .admin_page(&site, ADMIN_ACCOUNT)
                .set("/app/module/key", json!("credbroker-settings"))
                .token(),
        ),
        (
            "no user",
            env.forge
                .fit(&site)
                .admin_page(&site, ADMIN_ACCOUNT)
                .remove("/principal")
                .token(),
        ),
    ];
    for (what, fit) in &fits {
        let (s, v) = send(
            &mut env.public,
            "connect",
            Some(fit.as_str()),
            Some(&token),
            &json!({ "code": the_code }),
        )
        .await;
        assert_eq!((s, code(&v)), (403, "callback_rejected"), "{what}: {v}");
        assert!(
            !v.to_string().contains(&the_code),
            "{what}: the code is echoed: {v}"
        );
    }
    for body in [
        json!({}),
        json!({"code": ""}),
        json!({"code": "short"}),
        json!({"code": [the_code]}),
        json!({"code": the_code, "more": 1}),
    ] {
        let (s, v) = env.connect_raw(&site, &body).await;
        assert_eq!((s, code(&v)), (403, "callback_rejected"), "{body}: {v}");
    }
    let (s, v) = send(
        &mut env.public,
        "connect",
        None,
        None,
        &json!({ "code": the_code }),
    )
    .await;
    assert_eq!((s, code(&v)), (401, "invocation_rejected"), "{v}");
    assert_eq!(
        env.audit_count(),
        audit_before,
        "refusals are counted, not audited"
    );
    assert_eq!(
        refused_with(&env, "callback_rejected").await,
        refused_before + fits.len() as u64 + 5
    );
    assert!(env.binding_for(ACME).await.is_none());
    // The administrator's own call binds, and the binding is t1's.
    let (s, v) = env.connect(&site, &the_code, Some(&token)).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("bound")), "{v}");
    assert_eq!(env.binding_for(ACME).await.unwrap()["tenant"], "t1");
    // That was the site's tenth signed connect call this minute: the next is refused before
    // the admin lock (one site's page cannot hold what every tenant's triggers wait on).
    let (s, v) = env.connect(&site, &the_code, None).await;
    assert_eq!((s, code(&v)), (429, "rate_limited"), "{v}");
    let (s, v) = env.connect(&globex(), "A".repeat(24).as_str(), None).await;
    assert_eq!(
        (s, v["result"].as_str()),
        (200, Some("unclaimed")),
        "another site is not limited: {v}"
    );
}

/// Another onboarding's code (t2's, for globex) typed on acme's page: refused. A code a newer
/// onboarding replaced: refused. Wrong codes are counted, not audited; the right one binds,
/// and typing it again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_latest_code_of_the_sites_own_onboarding_binds_it() {
    let mut env = start().await;
    let globex_code = code_of(&env.expect_site("t2", GLOBEX));
    let old = code_of(&env.expect_site("t1", ACME));
    let latest = code_of(&env.expect_site("t1", ACME));
    assert_ne!(old, latest);
    let audit_before = env.audit_count();
    for wrong in [&globex_code, &old, &"A".repeat(24)] {
        let (s, v) = env.connect(&acme(), wrong, None).await;
        assert_eq!((s, code(&v)), (403, "callback_rejected"), "{v}");
        assert!(!v.to_string().contains(wrong.as_str()), "{v}");
    }
    assert_eq!(env.audit_count(), audit_before);
    assert!(env.binding_for(ACME).await.is_none());
    assert!(
        env.binding_for(GLOBEX).await.is_none(),
        "globex's code bound globex from acme"
    );

    let token = system_token(now() + 2 * HOUR);
    let (s, v) = env.connect(&acme(), &latest, Some(&token)).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("bound")), "{v}");
    let b = env
        .wait_binding(ACME, |b| b["active_secret_version"].is_u64())
        .await;
    assert_eq!(b["tenant"], "t1", "{b}");
    // Bound: the code is spent with its expectation; typed again, it changes nothing.
    let (s, v) = env.connect(&acme(), &latest, None).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("kept")), "{v}");
    assert_eq!(env.audited("forge.bound").len(), 1);
    // globex's administrator, typing globex's own code, binds globex to t2.
    let (s, v) = env.connect(&globex(), &globex_code, None).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("bound")), "{v}");
    assert_eq!(env.binding_for(GLOBEX).await.unwrap()["tenant"], "t2");
}

/// A site nobody expects, connecting with some code: kept unclaimed for an operator, as any
/// unexpected site is; nothing bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_from_a_site_nobody_expects_binds_nothing() {
    let mut env = start().await;
    let the_code = code_of(&env.expect_site("t1", ACME));
    let (s, v) = env
        .connect(&stray(), &the_code, Some(&system_token(now() + 2 * HOUR)))
        .await;
    assert_eq!((s, v["result"].as_str()), (200, Some("unclaimed")), "{v}");
    assert!(env.binding_for(STRAY).await.is_none());
    assert!(env.binding_for(ACME).await.is_none());
    assert_eq!(env.unclaimed().len(), 1);
}
