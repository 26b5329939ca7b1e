//! `aws_assume_role` in web-identity mode end to end against the local fake STS: the daemon
//! runs with **no AWS credential at all** and reaches the customer's role with
//! `AssumeRoleWithWebIdentity` and an assertion from its own issuer; the role's trust pins the
//! binding's subject. Activation (a foreign subject must be denied), minting, the audit
//! record, and the refusals.

use credbroker_tests::fake_sts::{FakeRole, FakeSts, WebIdentityTrust};
use credbroker_tests::issuer_env::{subject_of, IssuerEnv};
use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

const CUSTOMER: &str = "222222222222";
const ROLE: &str = "arn:aws:iam::222222222222:role/CredbrokerAccess";

struct Env {
    env: IssuerEnv,
    sts: FakeSts,
    /// The issuer as IAM names it: host[:port], no scheme.
    host: String,
}

async fn start() -> Env {
    start_logging("debug").await
}

/// [`start`] with the daemon's `RUST_LOG` set to `rust_log`.
async fn start_logging(rust_log: &str) -> Env {
    let sts = FakeSts::start("111111111111").await;
    let extra = format!(
        "[providers.aws_assume_role]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nvendor_account_id = \"111111111111\"\nattempt_timeout_ms = 2000\nmax_attempts = 1\nceiling_file = {:?}\n",
        sts.url,
        repo_root().join("policies/aws.json").display().to_string()
    );
    let mut vars = aws_env_without_credentials();
    vars.push(("RUST_LOG".into(), rust_log.into()));
    let env = IssuerEnv::start_with_env(3600, 300, &extra, vars).await;
    let host = env.issuer.trim_start_matches("https://").to_owned();
    Env { env, sts, host }
}

/// A customer role trusting our issuer (on `host`) for `sub` (`None`: any subject).
fn web_role(host: &str, sub: Option<&str>) -> FakeRole {
    FakeRole {
        account: CUSTOMER.into(),
        max_session_s: 3600,
        web_identity: Some(WebIdentityTrust {
            provider_host: host.to_owned(),
            aud: Some("sts.amazonaws.com".into()),
            sub: sub.map(str::to_owned),
        }),
        ..FakeRole::default()
    }
}

async fn add_binding(e: &mut Env, id: &str, tenant: &str, config: Value) -> (u16, Value) {
    call(
        &mut e.env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": id, "tenant": tenant, "provider": "aws_assume_role", "config": config})),
    )
    .await
}

/// What the customer's web-identity stack creates: the IAM OIDC provider for our issuer
/// (audience sts.amazonaws.com, our JWKS) and the role trusting it for `sub`.
async fn customer_stack(e: &Env, sub: Option<&str>) {
    e.sts.add_oidc_provider(
        &e.host,
        vec!["sts.amazonaws.com".into()],
        e.env.jwks().await,
    );
    e.sts.add_role(ROLE, web_role(&e.host, sub));
}

/// Binding `wi` (tenant t1, web identity), the customer's stack trusting its subject, and
/// its probe, which passes: the subject and the probe's answer.
async fn probed_web_binding(e: &mut Env) -> (String, Value) {
    let (s, v) = add_binding(
        e,
        "wi",
        "t1",
        json!({"role_arn": ROLE, "model": "web_identity"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let subject = subject_of(&v);
    customer_stack(e, Some(&subject)).await;
    let (s, v) = e.env.probe("wi").await;
    assert_eq!(s, 200, "{v}");
    (subject, v)
}

/// Instance `iwi` of binding `wi` and one resolve of it by worker w1, which is served: the
/// worker's client and the answer.
async fn resolved(e: &mut Env) -> (credbroker::client::BrokerClient, Value) {
    e.env.add_instance("iwi", "t1", "wi").await;
    let mut w1 = e.env.pki.client_for("w1", &e.env.daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "iwi"})).await;
    assert_eq!(s, 200, "{v}");
    (w1, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_identity_end_to_end_with_no_aws_credential() {
    let mut e = start().await;
    let (subject, v) = probed_web_binding(&mut e).await;
    assert_eq!(v["binding"]["status"], "active", "{v}");
    assert_eq!(v["binding"]["trust_facts"]["model"], "web_identity", "{v}");
    let (mut w1, v) = resolved(&mut e).await;
    assert_eq!(v["kind"], "aws_sts", "{v}");
    assert!(
        v["credentials"]["AccessKeyId"]
            .as_str()
            .unwrap()
            .starts_with("ASIA"),
        "{v}"
    );
    // The call STS saw: our token for this binding's subject, the session naming the tenant.
    let last = e.sts.state.last_request();
    assert_eq!(last["Action"], "AssumeRoleWithWebIdentity");
    assert_eq!(last["WebIdentityToken.sub"], subject);
    assert_eq!(last["WebIdentityToken.aud"], "sts.amazonaws.com");
    assert_eq!(last["WebIdentityToken.iss"], e.env.issuer);
    assert_eq!(last["RoleSessionName"], "cb.t1.iwi");
    assert!(!last.contains_key("ExternalId"));
    // The resolve's audit record names the assertion.
    let records = e.env.daemon.audit_records();
    let minted = records
        .iter()
        .find(|r| r["action"] == "resolve" && r["outcome"] == "allowed")
        .unwrap();
    let detail = minted["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("jti={}", last["WebIdentityToken.jti"]))
            && detail.contains(&subject),
        "{detail}"
    );
    // The customer deletes the OIDC provider: InvalidIdentityToken → provider_denied, and
    // the binding is flagged.
    e.sts.remove_oidc_provider(&e.host);
    let narrowed = json!({"instance_id": "iwi", "narrow": {"policy_arns": ["arn:aws:iam::aws:policy/SecurityAudit"]}});
    let (s, v) = resolve(&mut w1, narrowed).await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("InvalidIdentityToken"),
        "{v}"
    );
}

/// AWS holding no key for the assertion's `kid` ("Couldn't retrieve verification key": the
/// broker's JWKS unreachable, or a key it does not hold yet, here a rotation with `--now`)
/// is the broker's side: `provider_unavailable`, and the binding is not flagged as if the
/// customer had withdrawn the trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_aws_does_not_hold_is_not_a_withdrawn_trust() {
    let mut e = start().await;
    probed_web_binding(&mut e).await;
    let (mut w1, _) = resolved(&mut e).await;
    let (s, v) = call(
        &mut e.env.op,
        Method::POST,
        "/v1/admin/issuer/keys",
        Some(json!({"now": true})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let narrowed = json!({"instance_id": "iwi", "narrow": {"policy_arns": ["arn:aws:iam::aws:policy/SecurityAudit"]}});
    let (s, v) = resolve(&mut w1, narrowed).await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("verification key"),
        "{v}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (s, b) = call(&mut e.env.op, Method::GET, "/v1/admin/bindings/wi", None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["binding"]["trust_broken"], false, "{b}");
}

/// An operator who turns the AWS SDK's logs up to trace (to debug STS) does not get the
/// broker's assertion in them: the SDK's request trace prints the form it sends (the
/// `WebIdentityToken`, a bearer credential for the customer's role for its lifetime), so
/// those crates log at most at debug whatever the filter names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logging_does_not_write_the_assertion() {
    let mut e = start_logging(
        "debug,aws_smithy_runtime=trace,aws_smithy_runtime::client::orchestrator=trace,aws_sigv4=trace",
    )
    .await;
    probed_web_binding(&mut e).await;
    resolved(&mut e).await;
    assert_eq!(
        e.sts.state.last_request()["Action"],
        "AssumeRoleWithWebIdentity"
    );
    let logs = e.env.daemon.logs();
    // The SDK did log (at debug): the filter reached it.
    assert!(logs.contains("aws_smithy_runtime"), "no SDK log at all");
    assert!(
        !logs.contains("WebIdentityToken"),
        "the request form was logged"
    );
    assert!(!logs.contains("eyJ"), "a JWT was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_does_not_pin_the_subject_is_refused_at_probe() {
    let mut e = start().await;
    let (s, v) = add_binding(
        &mut e,
        "wi",
        "t1",
        json!({"role_arn": ROLE, "model": "web_identity"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    // The role trusts our issuer and audience but any subject: any tenant's assertion.
    customer_stack(&e, None).await;
    let (s, v) = e.env.probe("wi").await;
    assert_eq!((s, code(&v)), (422, "subject_not_enforced"), "{v}");
    let (_, b) = call(&mut e.env.op, Method::GET, "/v1/admin/bindings/wi", None).await;
    assert_eq!(b["binding"]["status"], "pending_activation", "{b}");
    // A role pinned to another tenant's subject denies ours.
    let (s, v) = add_binding(
        &mut e,
        "wi2",
        "t2",
        json!({"role_arn": "arn:aws:iam::222222222222:role/Other", "model": "web_identity"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (_, first) = call(&mut e.env.op, Method::GET, "/v1/admin/bindings/wi", None).await;
    e.sts.add_role(
        "arn:aws:iam::222222222222:role/Other",
        web_role(&e.host, Some(&subject_of(&first))),
    );
    let (s, v) = e.env.probe("wi2").await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    // SourceIdentity cannot be sent with AssumeRoleWithWebIdentity: refused at binding add.
    let (s, v) = add_binding(&mut e, "wi3", "t1", json!({"role_arn": "arn:aws:iam::222222222222:role/Third", "model": "web_identity", "source_identity": true})).await;
    assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
    // The classic model still needs AWS credentials, which this daemon does not have: its
    // probe fails without reaching a customer role (no static secret on the platform).
    let (s, v) = add_binding(
        &mut e,
        "classic",
        "t1",
        json!({"role_arn": "arn:aws:iam::222222222222:role/Classic"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert!(
        v["binding"]["config"]["broker"].get("subject").is_none(),
        "{v}"
    );
    let calls = e.sts.state.calls();
    let (s, v) = e.env.probe("classic").await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    assert_eq!(e.sts.state.calls(), calls, "the classic probe reached STS");
    let (_, b) = call(
        &mut e.env.op,
        Method::GET,
        "/v1/admin/bindings/classic",
        None,
    )
    .await;
    assert_eq!(b["binding"]["status"], "pending_activation", "{b}");
}
