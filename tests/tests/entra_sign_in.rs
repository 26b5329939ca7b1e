//! The Entra consent link binds a customer tenant only on the sign-in of one of that
//! tenant's administrators, made through the link's own authorization request (THREATS.md:
//! "a customer admin of tenant A … wants to bind an identifier that belongs to someone
//! else"). Each attempt a customer holding a valid link could make against the real daemon,
//! with the fake Entra answering as the real one does.

use credbroker_tests::fake_entra::{
    callback, come_back, onboard, open_link, SignIn, CLOUD_APP_ADMIN, PRIVILEGED_ROLE_ADMIN,
};
use credbroker_tests::*;
use http::Method;
use serde_json::Value;

use crate::entra::{
    consent_all, consent_round, record, start, token_requests_for, Env, ACME, ACME_SP, BINDING,
};

async fn bound(env: &mut Env) -> bool {
    let (s, v) = call(&mut env.op, Method::GET, "/v1/admin/bindings", None).await;
    assert_eq!(s, 200, "{v}");
    v.to_string().contains(BINDING)
}

fn refused_for(v: &Value, why: &str) {
    assert_eq!(code(v), "callback_rejected", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap_or("").contains(why),
        "{why} in {v}"
    );
}

/// The takeover the admin-consent endpoint allowed: customer A, holding t1's link pinned to
/// ACME (which is someone else's tenant), opens it, sends the consent page on to ACME's
/// administrator with another state, and, once that admin has consented, comes back in its
/// own browser claiming the consent. Nothing it can type proves a sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_given_through_anothers_browser_binds_nothing() {
    let mut env = start().await;
    let state = onboard(&mut env.op, "t1", ACME).await;
    let (s, cookie, location) = open_link(&mut env.public, &state).await;
    assert_eq!(s, 302);
    // ACME's admin follows the forwarded page (its state swapped) and consents: their
    // browser comes back with a code under a state the broker never issued, refused and
    // only counted.
    consent_all(&env.entra, ACME, ACME_SP);
    let forwarded = location.replace(&format!("state={state}"), "state=forwardedbyA");
    let records = env.daemon.audit_records().len();
    let (s, v) = come_back(
        &mut env.public,
        &env.entra,
        &forwarded,
        None,
        &SignIn::admin(ACME),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    refused_for(&v, "state");
    assert!(v["error"]["audit_id"].is_null(), "{v}");
    assert_eq!(
        env.daemon.audit_records().len(),
        records,
        "counted, not audited"
    );
    // A comes back with what the admin-consent endpoint would have sent: no code, refused
    // before the state is touched.
    let (s, v) = callback(
        &mut env.public,
        &format!("admin_consent=True&tenant={ACME}&state={state}"),
        cookie.as_deref(),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"]["audit_id"].is_null(), "{v}");
    // With a made-up code: Entra redeems no such code, the refusal is audited, the state
    // used up, and nothing is minted or bound.
    let minted = token_requests_for(&env.entra, ACME);
    let (s, v) = callback(
        &mut env.public,
        &format!("code=0.AXYZmadeup&state={state}"),
        cookie.as_deref(),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    refused_for(&v, "code was refused");
    assert!(v["error"]["audit_id"].is_string(), "{v}");
    assert_eq!(
        token_requests_for(&env.entra, ACME),
        minted + 1,
        "only the code's redemption, no mint"
    );
    assert!(!bound(&mut env).await, "ACME was bound to t1");
}

/// Who signs in through the link decides: a member without a directory role, a Cloud
/// Application Administrator (who cannot grant Graph's application permissions), and a
/// sign-in whose id_token lists no roles at all are refused, though a consent was given
/// meanwhile; so is a code obtained through another authorization request (its nonce), and
/// an id_token for another app. A Privileged Role Administrator's sign-in then binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_administrators_sign_in_through_the_link_binds() {
    let mut env = start().await;
    consent_all(&env.entra, ACME, ACME_SP);
    let cases: [(SignIn, &str); 3] = [
        (
            SignIn::member(ACME),
            "not a Global Administrator or Privileged Role Administrator",
        ),
        (
            SignIn {
                wids: Some(vec![CLOUD_APP_ADMIN.into()]),
                ..SignIn::admin(ACME)
            },
            "not a Global Administrator or Privileged Role Administrator",
        ),
        (
            SignIn {
                wids: None,
                ..SignIn::admin(ACME)
            },
            "groupMembershipClaims",
        ),
    ];
    for (person, why) in cases {
        let state = onboard(&mut env.op, "t1", ACME).await;
        let (s, v) = consent_round(&mut env.public, &env.entra, &state, &person).await;
        assert_eq!(s, 403, "{person:?}: {v}");
        refused_for(&v, why);
        let audit_id = v["error"]["audit_id"].as_str().expect("audited");
        let rec = record(&env.daemon, audit_id);
        assert_eq!(rec["outcome"], "denied", "{rec}");
        assert!(!bound(&mut env).await, "{person:?} bound ACME");
    }

    // The admin signs in through an authorization request of their own making (another
    // nonce) and brings the code back under the link's state and cookie.
    let state = onboard(&mut env.op, "t1", ACME).await;
    let (_, cookie, location) = open_link(&mut env.public, &state).await;
    let nonce = location
        .split('&')
        .find_map(|p| p.strip_prefix("nonce="))
        .unwrap()
        .to_owned();
    let other = location.replace(&format!("nonce={nonce}"), "nonce=chosenbytheattacker");
    let (s, v) = come_back(
        &mut env.public,
        &env.entra,
        &other,
        cookie.as_deref(),
        &SignIn::admin(ACME),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    refused_for(&v, "another authorization request");

    // An id_token issued to another app.
    let state = onboard(&mut env.op, "t1", ACME).await;
    env.entra.state.misissue.lock().unwrap().appid =
        Some("99999999-0000-4000-8000-000000000000".into());
    let (s, v) = consent_round(&mut env.public, &env.entra, &state, &SignIn::admin(ACME)).await;
    env.entra.state.misissue.lock().unwrap().appid = None;
    assert_eq!(s, 403, "{v}");
    refused_for(&v, "not for our app");
    assert!(!bound(&mut env).await);

    // A Privileged Role Administrator can grant the permissions: bound and active.
    let state = onboard(&mut env.op, "t1", ACME).await;
    let pra = SignIn {
        wids: Some(vec![CLOUD_APP_ADMIN.into(), PRIVILEGED_ROLE_ADMIN.into()]),
        ..SignIn::admin(ACME)
    };
    let (s, v) = consent_round(&mut env.public, &env.entra, &state, &pra).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("active")), "{v}");
    assert!(bound(&mut env).await);
    // The admin's delegated access token and id_token are in no record, log or answer.
    let audit = serde_json::to_string(&env.daemon.audit_records()).unwrap();
    let logs = env.daemon.logs();
    for text in [audit.as_str(), logs.as_str(), &v.to_string()] {
        assert!(!text.contains("eyJ"), "a JWT was written: {text}");
        assert!(!text.contains("1.AQ"), "a code was written");
    }
}

/// An upstream (or a proxy before it) that repeats the request it was sent, the sign-in's
/// code included, in its error description: the code reaches no log, record or answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_code_echoed_by_entra_is_repeated_nowhere() {
    let mut env = start().await;
    consent_all(&env.entra, ACME, ACME_SP);
    let state = onboard(&mut env.op, "t1", ACME).await;
    let (_, cookie, location) = open_link(&mut env.public, &state).await;
    let back = env.entra.sign_in(&location, &SignIn::admin(ACME)).unwrap();
    let query = back.split_once('?').unwrap().1.to_owned();
    let code = query
        .split('&')
        .find_map(|p| p.strip_prefix("code="))
        .unwrap()
        .to_owned();
    *env.entra.state.echo_secret.lock().unwrap() = Some(500);
    let (s, v) = callback(&mut env.public, &query, cookie.as_deref()).await;
    assert_eq!(s, 403, "{v}");
    let audit = serde_json::to_string(&env.daemon.audit_records()).unwrap();
    let logs = env.daemon.logs();
    assert!(
        logs.contains("Entra's token endpoint is unavailable"),
        "the refusal was logged: {logs}"
    );
    for (what, text) in [("answer", v.to_string()), ("audit", audit), ("log", logs)] {
        assert!(!text.contains(&code), "the code is in the {what}");
    }
    assert!(!bound(&mut env).await);
}

/// The relay a customer could still try: it forwards its link's sign-in page (its state
/// swapped) to the account's administrator and asks for "the address it showed" when that
/// refuses, to bring the code back under its own link's state and cookie. A refused return
/// is sent on (303) to a page without its code, whether the refusal was counted (an unknown
/// state) or audited (another browser's state), and whether the code came in the query or
/// (the forwarded page asking for it) in the fragment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_return_clears_its_code_from_the_address_bar() {
    let mut env = start().await;
    consent_all(&env.entra, ACME, ACME_SP);
    let state = onboard(&mut env.op, "t1", ACME).await;
    let (_, _, location) = open_link(&mut env.public, &state).await;
    let cleared = |v: &Value| {
        format!(
            "/callbacks/entra_multi_tenant/setup?refused={}#refused",
            v["error"]["request_id"].as_str().unwrap()
        )
    };
    for forwarded in [
        // Its state swapped: unknown, counted.
        location.replace(&format!("state={state}"), "state=forwardedbyA"),
        // Its state kept (another browser, no cookie): audited, the state used up.
        location.clone(),
    ] {
        let back = env.entra.sign_in(&forwarded, &SignIn::admin(ACME)).unwrap();
        let query = back.split_once('?').unwrap().1.to_owned();
        assert!(query.contains("code="), "{query}");
        let (s, to, v) = raw(
            &mut env.public,
            &format!("/callbacks/entra_multi_tenant/setup?{query}"),
        )
        .await;
        let page = cleared(&v);
        assert_eq!((s, to.as_ref()), (303, Some(&page)), "{v}");
        assert_eq!(code(&v), "callback_rejected", "{v}");
        let rid = v["error"]["request_id"].as_str().unwrap().to_owned();
        let (s, to, v) = raw(&mut env.public, page.trim_end_matches("#refused")).await;
        assert_eq!((s, to), (403, None), "{v}");
        refused_for(&v, "never send that address to anyone");
        refused_for(&v, &format!("(request {rid}:"));
    }
    // The page names only a request id of the broker's own form: any other query that
    // starts like the page's is a return like any other, refused and sent on to the page.
    for query in [
        "refused=%3Cscript%3E",
        "refused=req_zz",
        "refused=x",
        "refused=req_zz&code=abc&state=x",
        "refusedX&code=abc&state=x",
    ] {
        let (s, to, v) = raw(
            &mut env.public,
            &format!("/callbacks/entra_multi_tenant/setup?{query}"),
        )
        .await;
        assert_eq!((s, to.as_ref()), (303, Some(&cleared(&v))), "{query}: {v}");
        assert!(!v.to_string().contains("(request"), "{v}");
    }
    // Without a code in the query — the forwarded page asked for `response_mode=fragment`,
    // so the browser keeps the code after `#` and sends nothing — or with none at all: sent
    // on all the same, and the Location's own fragment replaces the one holding the code.
    for query in ["", "state=unknownstate&error=access_denied"] {
        let (s, to, v) = raw(
            &mut env.public,
            &format!("/callbacks/entra_multi_tenant/setup?{query}"),
        )
        .await;
        assert_eq!((s, to.as_ref()), (303, Some(&cleared(&v))), "{query}: {v}");
    }
    // Only a provider with callbacks has the page, or is sent to it.
    for path in [
        "/callbacks/aws/setup?code=abc&state=x",
        "/callbacks/aws/setup?refused",
        "/callbacks/nosuch/setup?refused",
    ] {
        let (s, to, v) = raw(&mut env.public, path).await;
        assert_eq!((s, to), (404, None), "{path}: {v}");
    }
    assert!(!bound(&mut env).await);
}

/// A GET on the public listener as a browser makes it, redirects not followed: (status,
/// `Location`, JSON body).
async fn raw(
    public: &mut credbroker::client::BrokerClient,
    path: &str,
) -> (u16, Option<String>, Value) {
    let (s, h, body) = public.exchange(Method::GET, path, &[], None).await.unwrap();
    let location = h
        .get(http::header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (s.as_u16(), location, body)
}
