//! `aws_assume_role` end to end against the local fake STS: activation probe, minting,
//! narrowing, caching and single flight, failure handling, trust withdrawal, audit records,
//! and the `credential_process` client mode. The fake verifies every request's SigV4
//! signature with the vendor key the daemon is given, so every test here also shows that the
//! daemon signs with the configured credentials.

use std::time::{Duration, Instant};

use credbroker::client::BrokerClient;
use credbroker_tests::fake_sts::{
    FakeRole, FakeSts, Faults, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY,
};
use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

const VENDOR: &str = "111111111111";
const CUSTOMER: &str = "222222222222";

struct Env {
    _tmp: tempfile::TempDir,
    pki: std::sync::Arc<TestPki>,
    daemon: Daemon,
    sts: FakeSts,
    op: BrokerClient,
    w1: BrokerClient,
    /// STS is reached through this proxy when the test asked for one.
    proxy: Option<credbroker_tests::tcp_fault::TcpFault>,
    /// The platform ceiling file the daemon reads.
    ceiling_file: std::path::PathBuf,
}

/// Binds `role` (trusting `external_id`) as `binding` for instance `instance` of t1 and
/// activates it by a probe.
async fn bind_active(
    env: &mut Env,
    binding: &str,
    instance: &str,
    role_arn: &str,
    external_id: &str,
) {
    env.sts.add_role(role_arn, role(Some(external_id)));
    let (s, v) = bind(env, binding, instance, role_arn).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = probe(env, binding).await;
    assert_eq!(s, 200, "{v}");
}

/// Registers worker `id` for `tenant`, issues its certificate: its client.
async fn add_worker(env: &mut Env, id: &str, tenant: &str) -> BrokerClient {
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/workers",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": id, "tenants": [tenant]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    env.pki.worker(id);
    env.pki.client_for(id, &env.daemon.url)
}

/// How [`start_custom`] configures the daemon.
struct StartOptions<'a> {
    cache_extra: &'a str,
    through_proxy: bool,
    /// Per-attempt STS deadline, milliseconds.
    attempt_timeout_ms: u64,
    /// A platform ceiling to write and configure instead of policies/aws.json.
    ceiling: Option<Value>,
    /// The vendor secret the daemon signs with (the fake knows `TEST_SECRET_ACCESS_KEY`).
    secret: &'a str,
}

impl Default for StartOptions<'_> {
    fn default() -> Self {
        StartOptions {
            cache_extra: "",
            through_proxy: false,
            // Long enough that a loaded machine never turns a fast answer into a retry (the
            // tests count STS calls exactly); the slow-answer case sets its own.
            attempt_timeout_ms: 2000,
            ceiling: None,
            secret: TEST_SECRET_ACCESS_KEY,
        }
    }
}

async fn start() -> Env {
    start_with("").await
}

async fn start_with(cache_extra: &str) -> Env {
    start_full(cache_extra, false).await
}

/// A daemon with the AWS provider on the fake STS, optionally reached through a TCP proxy
/// that can reset connections.
async fn start_full(cache_extra: &str, through_proxy: bool) -> Env {
    start_opts(cache_extra, through_proxy, 2000).await
}

/// [`start_full`] with the per-attempt STS deadline in milliseconds.
async fn start_opts(cache_extra: &str, through_proxy: bool, attempt_timeout_ms: u64) -> Env {
    start_custom(StartOptions {
        cache_extra,
        through_proxy,
        attempt_timeout_ms,
        ..StartOptions::default()
    })
    .await
}

/// A daemon with the AWS provider on the fake STS, configured by `o`.
async fn start_custom(o: StartOptions<'_>) -> Env {
    let StartOptions {
        cache_extra,
        through_proxy,
        attempt_timeout_ms,
        ceiling,
        secret,
    } = o;
    let (tmp, pki) = setup();
    let sts = FakeSts::start(VENDOR).await;
    let proxy = if through_proxy {
        Some(
            credbroker_tests::tcp_fault::TcpFault::start(sts.url.trim_start_matches("http://"))
                .await,
        )
    } else {
        None
    };
    let endpoint = proxy.as_ref().map_or(sts.url.clone(), |p| p.url.clone());
    let ceiling_file = match &ceiling {
        Some(c) => {
            let path = tmp.path().join("aws-ceiling.json");
            std::fs::write(&path, serde_json::to_vec_pretty(c).unwrap()).unwrap();
            path
        }
        None => repo_root().join("policies/aws.json"),
    };
    let extra = format!(
        "[cache]\nmint_timeout_ms = 4000\n{cache_extra}\n[providers.aws_assume_role]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nvendor_account_id = \"{VENDOR}\"\nbroker_principal_arn = \"arn:aws:iam::{VENDOR}:role/credbroker\"\nattempt_timeout_ms = {attempt_timeout_ms}\nmax_attempts = 3\nceiling_file = {:?}\n",
        endpoint,
        ceiling_file.display().to_string()
    );
    let daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            extra_toml: extra,
            env: aws_test_env(TEST_ACCESS_KEY_ID, secret),
            ..Default::default()
        },
    );
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let w1 = pki.client_for("w1", &daemon.url);
    Env {
        _tmp: tmp,
        pki,
        daemon,
        sts,
        op,
        w1,
        proxy,
        ceiling_file,
    }
}

async fn onboard(op: &mut BrokerClient, tenant: &str) -> Value {
    let (s, v) = call(
        op,
        Method::POST,
        "/v1/admin/onboard/aws_assume_role",
        Some(json!({"tenant": tenant})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v
}

fn role(external_id: Option<&str>) -> FakeRole {
    FakeRole {
        account: CUSTOMER.into(),
        trusted_account: VENDOR.into(),
        external_id: external_id.map(str::to_owned),
        max_session_s: 3600,
        report_account: None,
        report_role: None,
        report_partition: None,
        any_external_id: false,
        allow_set_source_identity: true,
        allow_tag_session: true,
        require_source_identity: false,
        web_identity: None,
    }
}

/// An error answer's message.
fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

/// Binds `arn` for t1 as binding `bid` with instance `iid`; returns the add response.
/// `POST /v1/admin/bindings/{binding}/probe`.
async fn probe(env: &mut Env, binding: &str) -> (u16, Value) {
    call(
        &mut env.op,
        Method::POST,
        &format!("/v1/admin/bindings/{binding}/probe"),
        Some(json!({})),
    )
    .await
}

/// Onboards tenant t1 and has the customer create the role its template makes, trusting the
/// broker with t1's ExternalId: the ExternalId and the role's ARN.
async fn onboarded_role(env: &mut Env) -> (String, String) {
    let external_id = onboard(&mut env.op, "t1").await["external_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let arn = format!("arn:aws:iam::{CUSTOMER}:role/CredbrokerAccess");
    env.sts.add_role(&arn, role(Some(&external_id)));
    (external_id, arn)
}

async fn bind(env: &mut Env, bid: &str, iid: &str, arn: &str) -> (u16, Value) {
    bind_for(env, "t1", bid, iid, arn).await
}

/// `operator`'s probe of `binding`, started on a connection of its own.
fn spawn_probe(env: &Env, operator: &str, binding: &str) -> tokio::task::JoinHandle<(u16, Value)> {
    let mut client = env.pki.client_for(operator, &env.daemon.url);
    let path = format!("/v1/admin/bindings/{binding}/probe");
    tokio::spawn(async move { call(&mut client, Method::POST, &path, Some(json!({}))).await })
}

/// [`bind`] for `tenant`.
async fn bind_for(env: &mut Env, tenant: &str, bid: &str, iid: &str, arn: &str) -> (u16, Value) {
    let r = call(&mut env.op, Method::POST, "/v1/admin/bindings", Some(json!({"owner": "team-tests", "purpose": "integration test", "id": bid, "tenant": tenant, "provider": "aws_assume_role", "config": {"role_arn": arn}}))).await;
    if r.0 == 201 {
        let (s, v) = call(
            &mut env.op,
            Method::POST,
            "/v1/admin/instances",
            Some(json!({"id": iid, "tenant": tenant, "binding": bid, "connector_kind": "aws"})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_minting_narrowing_and_caching() {
    let mut env = start().await;
    let facts = onboard(&mut env.op, "t1").await;
    let external_id = facts["external_id"].as_str().unwrap().to_owned();
    assert_eq!(external_id.len(), 40);
    assert!(external_id.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(facts["vendor_account_id"], VENDOR);
    assert_eq!(
        facts["template_parameters"]["ExternalId"],
        external_id.as_str()
    );
    // The templates trust the broker's own role only: the customer is handed its ARN.
    assert_eq!(
        facts["template_parameters"]["BrokerPrincipalArn"],
        format!("arn:aws:iam::{VENDOR}:role/credbroker")
    );
    // Onboarding again gives the same ExternalId; another tenant gets another one.
    assert_eq!(
        onboard(&mut env.op, "t1").await["external_id"],
        external_id.as_str()
    );
    assert_ne!(
        onboard(&mut env.op, "t2").await["external_id"],
        external_id.as_str()
    );

    let arn = format!("arn:aws:iam::{CUSTOMER}:role/CredbrokerAccess");
    env.sts.add_role(&arn, role(Some(&external_id)));
    let (s, v) = bind(&mut env, "aws1", "i-aws", &arn).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["binding"]["status"], "pending_activation");
    assert_eq!(
        v["binding"]["config"]["broker"]["external_id"],
        external_id.as_str()
    );

    // Pending bindings do not resolve.
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!((s, code(&v)), (403, "binding_inactive"));

    // The probe passes: with ExternalId accepted, without it and with another value denied,
    // account matches.
    let calls = env.sts.state.calls();
    let (s, v) = probe(&mut env, "aws1").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["binding"]["status"], "active");
    assert!(v["binding"]["last_tested_at"].is_string());
    assert_eq!(env.sts.state.calls() - calls, 3);
    let probe_calls = env.sts.state.requests.lock().unwrap().clone();
    let n = probe_calls.len();
    assert!(probe_calls[n - 3].get("ExternalId") == Some(&external_id));
    assert!(!probe_calls[n - 2].contains_key("ExternalId"));
    let wrong = probe_calls[n - 1].get("ExternalId").unwrap();
    assert_ne!(wrong, &external_id);
    assert_eq!(wrong.len(), 40);

    // Minting.
    let calls = env.sts.state.calls();
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "job_id": "scan-42"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["kind"], "aws_sts");
    assert_eq!(v["provider"], "aws_assume_role");
    assert!(v["credentials"]["AccessKeyId"]
        .as_str()
        .unwrap()
        .starts_with("ASIA"));
    assert!(v["credentials"]["SessionToken"].is_string());
    assert!(v["credentials"]["Expiration"].is_string());
    assert!(v["expires_at"].is_string());
    assert_eq!(v["cached"], false);
    let sent = env.sts.state.last_request();
    assert_eq!(sent["RoleArn"], arn);
    assert_eq!(sent["ExternalId"], external_id);
    assert_eq!(sent["RoleSessionName"], "cb.t1.i-aws");
    assert_eq!(sent["DurationSeconds"], "3600");
    assert!(!sent.contains_key("SourceIdentity"));
    let token = v["credentials"]["SessionToken"].clone();

    // Cached: no STS call; same token.
    let (_, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!(
        (v["cached"].as_bool(), &v["credentials"]["SessionToken"]),
        (Some(true), &token)
    );
    assert_eq!(env.sts.state.calls() - calls, 1);

    // Narrowing beyond the ceiling is refused before STS is called.
    for narrow in [
        json!({"policy_arns": ["arn:aws:iam::aws:policy/AdministratorAccess"]}),
        json!({"policy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}}),
    ] {
        let (s, v) = resolve(
            &mut env.w1,
            json!({"instance_id": "i-aws", "narrow": narrow}),
        )
        .await;
        assert_eq!((s, code(&v)), (403, "narrowing_exceeds_ceiling"), "{v}");
    }
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": {"roles": []}}),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "bad_request"));
    assert_eq!(env.sts.state.calls() - calls, 1);

    // Narrowing within the ceiling: separate cache entry, session policy sent.
    let narrow = json!({"policy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["ec2:DescribeInstances"], "Resource": "*"}]},
                        "policy_arns": ["arn:aws:iam::aws:policy/SecurityAudit"]});
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["cached"], false);
    assert_ne!(v["credentials"]["SessionToken"], token);
    let sent = env.sts.state.last_request();
    assert!(sent["Policy"].contains("ec2:DescribeInstances"));
    assert_eq!(
        sent["PolicyArns.member.1.arn"],
        "arn:aws:iam::aws:policy/SecurityAudit"
    );
    let (_, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow}),
    )
    .await;
    assert_eq!(v["cached"], true);
    assert_eq!(env.sts.state.calls() - calls, 2);

    // Single flight against the fake's counter: 50 concurrent cold resolves, one call.
    env.sts.faults().delay = Duration::from_millis(200);
    let cold = json!({"policy_arns": ["arn:aws:iam::aws:policy/job-function/ViewOnlyAccess"]});
    let before = env.sts.state.calls();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let pki = env.pki.clone();
        let url = env.daemon.url.clone();
        let cold = cold.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = pki.client_for("w1", &url);
            resolve(&mut c, json!({"instance_id": "i-aws", "narrow": cold}))
                .await
                .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        env.sts.state.calls() - before,
        1,
        "concurrent cold misses share one STS call"
    );
    env.sts.faults().delay = Duration::ZERO;

    // Audit: the minted resolve carries the STS request id and a fingerprint, never the token.
    let records = env.daemon.audit_records();
    let minted: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["kind"] == "resolve"
                && r["outcome"] == "allowed"
                && r["cached"] == false
                && r["provider"] == "aws_assume_role"
        })
        .collect();
    assert!(!minted.is_empty());
    assert!(minted.iter().all(|r| r["upstream_request_id"]
        .as_str()
        .is_some_and(|id| id.starts_with("c6104cbe-"))));
    assert!(records.iter().any(|r| r["job_id"] == "scan-42"));
    let log = audit_log_text(&env.daemon.data_dir);
    assert!(!log.contains(token.as_str().unwrap()));
    assert!(
        !env.daemon.logs().contains(token.as_str().unwrap()),
        "session token in logs"
    );

    // The credential_process client mode prints AWS's Version 1 JSON.
    let pki = &env.pki;
    let (c, out, err) = run_cli(&[
        "client",
        "aws-credential-process",
        "--instance",
        "i-aws",
        "--server",
        &env.daemon.url,
        "--ca",
        pki.dir.join("ca.crt").to_str().unwrap(),
        "--cert",
        pki.dir.join("w1.crt").to_str().unwrap(),
        "--key",
        pki.dir.join("w1.key").to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Version"], 1);
    for k in [
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "Expiration",
    ] {
        assert!(v[k].is_string(), "{k}");
    }
    // …and fails clearly for an instance that is not AWS.
    let (c, _, err) = run_cli(&[
        "client",
        "aws-credential-process",
        "--instance",
        "i1",
        "--server",
        &env.daemon.url,
        "--ca",
        pki.dir.join("ca.crt").to_str().unwrap(),
        "--cert",
        pki.dir.join("w1.crt").to_str().unwrap(),
        "--key",
        pki.dir.join("w1.key").to_str().unwrap(),
    ]);
    assert_ne!(c, 0);
    assert!(err.contains("does not resolve to AWS credentials"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_refusals_and_identifier_rules() {
    let mut env = start().await;
    let external_id = onboard(&mut env.op, "t1").await["external_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A role that does not require the ExternalId: AssumeRole succeeds either way (the trap).
    let lax = format!("arn:aws:iam::{CUSTOMER}:role/Lax");
    env.sts.add_role(&lax, role(None));
    bind(&mut env, "lax", "i-lax", &lax).await;
    let (s, v) = probe(&mut env, "lax").await;
    assert_eq!((s, code(&v)), (422, "external_id_not_enforced"), "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sts:ExternalId"));
    let (_, v) = call(&mut env.op, Method::GET, "/v1/admin/bindings/lax", None).await;
    assert_eq!(v["binding"]["status"], "pending_activation");
    assert!(v["binding"]["last_probe"]
        .as_str()
        .unwrap()
        .contains("external_id_not_enforced"));
    assert!(v["binding"]["last_tested_at"].is_string());
    // Enabling runs the same probe and refuses the same way.
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings/lax/enable",
        Some(json!({})),
    )
    .await;
    assert_eq!((s, code(&v)), (422, "external_id_not_enforced"));
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-lax"})).await;
    assert_eq!((s, code(&v)), (403, "binding_inactive"));

    // A role that answers from another account than the ARN names.
    let odd = format!("arn:aws:iam::{CUSTOMER}:role/Odd");
    env.sts.add_role(
        &odd,
        FakeRole {
            report_account: Some("333333333333".into()),
            any_external_id: false,
            ..role(Some(&external_id))
        },
    );
    bind(&mut env, "odd", "i-odd", &odd).await;
    let (s, v) = probe(&mut env, "odd").await;
    assert_eq!((s, code(&v)), (422, "account_mismatch"), "{v}");

    // A role that trusts the vendor but with another ExternalId (e.g. copied from another
    // tenant's onboarding): denied.
    let other = format!("arn:aws:iam::{CUSTOMER}:role/Other");
    env.sts
        .add_role(&other, role(Some("SomeoneElsesExternalId0123456789abcdef")));
    bind(&mut env, "other", "i-other", &other).await;
    let (s, v) = probe(&mut env, "other").await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");

    // Naming a role proves nothing and claims nothing: t2 may name the role t1 named (and
    // its probe will fail: the role does not trust t2's ExternalId).
    let (s, v) = call(&mut env.op, Method::POST, "/v1/admin/bindings", Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "named", "tenant": "t2", "provider": "aws_assume_role", "config": {"role_arn": lax}}))).await;
    assert_eq!(s, 201, "{v}");
    // A customer naming another company's role first does not block that company: t2 names
    // the role t1's customer made before t1 does, and t1 still binds and activates it.
    let early = format!("arn:aws:iam::{CUSTOMER}:role/Early");
    env.sts.add_role(&early, role(Some(&external_id)));
    let (s, v) = call(&mut env.op, Method::POST, "/v1/admin/bindings", Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "squat", "tenant": "t2", "provider": "aws_assume_role", "config": {"role_arn": early}}))).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = probe(&mut env, "squat").await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    let (s, v) = bind(&mut env, "early", "i-early", &early).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = probe(&mut env, "early").await;
    assert_eq!(s, 200, "{v}");
    // One role ARN, one tenant, once proved: a new binding naming it is refused.
    let (s, v) = call(&mut env.op, Method::POST, "/v1/admin/bindings", Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "steal", "tenant": "t2", "provider": "aws_assume_role", "config": {"role_arn": early}}))).await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    // Two bindings named the role before either was proved: the first probe takes it, the
    // second passes upstream and is refused, and stays pending.
    let twin = format!("arn:aws:iam::{CUSTOMER}:role/Twin");
    env.sts.add_role(&twin, role(Some(&external_id)));
    for (b, i) in [("twin1", "i-twin1"), ("twin2", "i-twin2")] {
        let (s, v) = bind(&mut env, b, i, &twin).await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = probe(&mut env, "twin1").await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = probe(&mut env, "twin2").await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    assert!(message(&v).contains("binding twin1"), "{v}");
    let (_, v) = call(&mut env.op, Method::GET, "/v1/admin/bindings/twin2", None).await;
    assert_eq!(v["binding"]["status"], "pending_activation", "{v}");
    assert!(v["binding"]["last_probe"]
        .as_str()
        .unwrap()
        .starts_with("passed upstream, but conflict"));
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-twin2"})).await;
    assert_eq!((s, code(&v)), (403, "binding_inactive"), "{v}");
    // The ExternalId is never accepted from an operator.
    let (s, v) = call(&mut env.op, Method::POST, "/v1/admin/bindings", Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "forced", "tenant": "t2", "provider": "aws_assume_role",
        "config": {"role_arn": format!("arn:aws:iam::{CUSTOMER}:role/X"), "broker": {"external_id": "chosen-by-the-customer-0123456789abcdef"}}}))).await;
    assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
    // Malformed ARNs and durations are refused before anything is stored.
    for config in [
        json!({"role_arn": "arn:aws:iam::1234:role/X"}),
        json!({"role_arn": lax, "duration_s": 43200}),
        json!({"role_arn": lax, "extra": 1}),
    ] {
        let (s, v) = call(&mut env.op, Method::POST, "/v1/admin/bindings", Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "bad", "tenant": "t1", "provider": "aws_assume_role", "config": config}))).await;
        assert_eq!(s, 400, "{v}");
    }
    // Removing the binding that proved a role frees it for another tenant.
    call(
        &mut env.op,
        Method::DELETE,
        "/v1/admin/instances/i-early",
        None,
    )
    .await;
    let (s, _) = call(
        &mut env.op,
        Method::DELETE,
        "/v1/admin/bindings/early",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = call(&mut env.op, Method::POST, "/v1/admin/bindings", Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "early2", "tenant": "t2", "provider": "aws_assume_role", "config": {"role_arn": early}}))).await;
    assert_eq!(s, 201, "{v}");
    // Every refusal above is in the audit log.
    let records = env.daemon.audit_records();
    assert!(records
        .iter()
        .any(|r| r["action"] == "binding.probe" && r["error_code"] == "external_id_not_enforced"));
    assert!(records
        .iter()
        .any(|r| r["action"] == "binding.add" && r["error_code"] == "conflict"));
}

/// A binding that never proved its role holds nothing, whatever its status and across a
/// restart: the start-up re-claim takes a role for an active binding only, so a customer's
/// binding an operator disabled after its probe failed does not block the role's owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unproved_binding_claims_its_role_at_no_start() {
    let mut env = start().await;
    let (_, arn) = onboarded_role(&mut env).await;
    let (s, v) = bind_for(&mut env, "t2", "squat", "i-squat", &arn).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = probe(&mut env, "squat").await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings/squat/disable",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    env.daemon.restart();
    env.op = env.pki.client_for("op", &env.daemon.url);
    let (s, v) = bind(&mut env, "aws1", "i-aws", &arn).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = probe(&mut env, "aws1").await;
    assert_eq!(s, 200, "{v}");
}

/// Every STS call a probe makes is an AssumeRole in the customer's CloudTrail, refused ones
/// included: the probe's audit record names each call's request id, and the calls carry a
/// session name no instance's session can have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_accounts_for_every_sts_call_it_makes() {
    let mut env = start().await;
    let (_, arn) = onboarded_role(&mut env).await;
    // An instance named as the probe's session once was.
    let (s, v) = bind(&mut env, "aws1", "activation-probe", &arn).await;
    assert_eq!(s, 201, "{v}");
    let lax = format!("arn:aws:iam::{CUSTOMER}:role/Lax");
    env.sts.add_role(&lax, role(None));
    let (s, v) = bind(&mut env, "lax", "i-lax", &lax).await;
    assert_eq!(s, 201, "{v}");

    for (binding, status) in [("aws1", 200), ("lax", 422)] {
        let answered = env.sts.state.answered.lock().unwrap().len();
        let sent = env.sts.state.calls();
        let (s, v) = probe(&mut env, binding).await;
        assert_eq!(s, status, "{v}");
        let ids: Vec<String> = env.sts.state.answered.lock().unwrap()[answered..].to_vec();
        // The passing probe: with the ExternalId, without it, with another. The lax role's:
        // with it, then without it (accepted, so the probe stops there).
        assert_eq!(ids.len(), if status == 200 { 3 } else { 2 }, "{ids:?}");
        for request in &env.sts.state.requests.lock().unwrap()[sent..] {
            assert_eq!(request["RoleSessionName"], "cbprobe.t1", "{request:?}");
        }
        let records = env.daemon.audit_records();
        let record = records
            .iter()
            .rev()
            .find(|r| r["action"] == "binding.probe" && r["binding"] == binding)
            .unwrap();
        let named = format!(
            "{} {}",
            record["upstream_request_id"].as_str().unwrap_or(""),
            record["detail"].as_str().unwrap_or("")
        );
        for id in &ids {
            assert!(named.contains(id.as_str()), "{id} missing from {record}");
        }
    }
    // The instance called `activation-probe` mints under its own session name.
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "activation-probe"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        env.sts.state.last_request()["RoleSessionName"],
        "cb.t1.activation-probe"
    );
}

/// Onboards t1, creates its role in the fake, binds it as `aws1` (instance `i-aws`) and
/// activates it; returns the ExternalId and role ARN.
async fn active_aws_binding(env: &mut Env) -> (String, String) {
    let (external_id, arn) = onboarded_role(env).await;
    bind(env, "aws1", "i-aws", &arn).await;
    let (s, v) = probe(env, "aws1").await;
    assert_eq!(s, 200, "{v}");
    (external_id, arn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_bounded_and_cached_tokens_survive_outages() {
    // A per-attempt deadline short enough that three slow attempts end inside the mint's.
    let mut env = start_opts("", false, 800).await;
    let (external_id, arn) = active_aws_binding(&mut env).await;
    let narrow = |n: u32| json!({"policy": {"Statement": {"Effect": "Deny", "Action": format!("s3:Nothing{n}"), "Resource": "*"}}});

    // Throttling twice, then success: retried with backoff, 3 calls.
    let before = env.sts.state.calls();
    env.sts.faults().throttle_next = 2;
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow(1)}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(env.sts.state.calls() - before, 3);

    // Persistent 500s: bounded retries, then provider_unavailable.
    let before = env.sts.state.calls();
    env.sts.faults().fail_next = 100;
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow(2)}),
    )
    .await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    assert_eq!(
        env.sts.state.calls() - before,
        3,
        "max_attempts bounds the retries"
    );
    env.sts.faults().fail_next = 0;

    // Slow answers: the per-attempt timeout bounds the wait (3 attempts × 800 ms + backoff).
    env.sts.faults().delay = Duration::from_secs(3);
    let started = Instant::now();
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow(3)}),
    )
    .await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    assert!(
        started.elapsed() < Duration::from_millis(4000),
        "took {:?}",
        started.elapsed()
    );
    env.sts.faults().delay = Duration::ZERO;

    // Malformed XML and credentials expired on arrival are upstream failures, not tokens.
    env.sts.faults().malformed = true;
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow(4)}),
    )
    .await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    env.sts.faults().malformed = false;
    env.sts.faults().expired = true;
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow(5)}),
    )
    .await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    env.sts.faults().expired = false;

    // Outage: a still-valid cached token is served; a cold key fails.
    let (s, _) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!(s, 200);
    env.sts.faults().down = true;
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!((s, v["cached"].as_bool()), (200, Some(true)));
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow(6)}),
    )
    .await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"));
    env.sts.faults().down = false;

    // The customer withdraws the trust: AccessDenied -> provider_denied, binding flagged.
    env.sts
        .add_role(&arn, role(Some("RotatedAwayExternalId0123456789abcdefgh")));
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow(7)}),
    )
    .await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    // The flag is set off the response path, through the audited admin pipeline.
    let v = wait_for_trust_broken(&mut env.op, "aws1").await;
    assert_eq!(v["binding"]["trust_broken"], true, "{v}");
    let records = env.daemon.audit_records();
    let denied = records
        .iter()
        .rev()
        .find(|r| r["error_code"] == "provider_denied")
        .unwrap();
    assert!(denied["upstream_request_id"].is_string());
    assert_eq!(
        denied["detail"],
        "upstream denied: binding flagged trust_broken"
    );
    // DurationSeconds above the role's MaxSessionDuration: STS's ValidationError is a denial
    // that is not the customer's doing (no trust_broken flag). The probe asks for the
    // duration a mint would, so such a binding never activates (it used to activate on the
    // probe's 900 s and then fail every resolve).
    let short = format!("arn:aws:iam::{CUSTOMER}:role/ShortSessions");
    env.sts.add_role(
        &short,
        FakeRole {
            max_session_s: 1800,
            ..role(Some(&external_id))
        },
    );
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(
            json!({"owner": "team-tests", "purpose": "integration test", "id": "short", "tenant": "t1", "provider": "aws_assume_role",
        "config": {"role_arn": short, "duration_s": 3600, "source_identity": true}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    call(
        &mut env.op,
        Method::POST,
        "/v1/admin/instances",
        Some(json!({"id": "i-short", "tenant": "t1", "binding": "short", "connector_kind": "aws"})),
    )
    .await;
    let (s, v) = probe(&mut env, "short").await;
    assert_ne!(s, 200, "{v}");
    assert!(v.to_string().contains("MaxSessionDuration"), "{v}");
    let sent = env.sts.state.last_request();
    assert_eq!(sent["DurationSeconds"], "3600", "what a mint asks for");
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-short"})).await;
    assert_ne!(s, 200, "{v}");
    let (_, v) = call(&mut env.op, Method::GET, "/v1/admin/bindings/short", None).await;
    assert_eq!(v["binding"]["status"], "pending_activation", "{v}");
    assert_eq!(v["binding"]["trust_broken"], false);

    // Restoring the trust and re-probing clears the flag.
    env.sts.add_role(&arn, role(Some(&external_id)));
    let (s, v) = probe(&mut env, "aws1").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["binding"]["trust_broken"], false);
    let (c, out, err) = env.daemon.cli(&[
        "audit",
        "verify",
        "--config",
        env.daemon.config.to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_breaker_stops_hammering_a_dead_upstream() {
    let mut env = start_with("breaker_failures = 2\nbreaker_open_ms = 1500\n").await;
    active_aws_binding(&mut env).await;
    let (s, _) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!(s, 200, "warm the cache");
    let narrow = |n: u32| json!({"policy": {"Statement": {"Effect": "Deny", "Action": format!("s3:Nothing{n}"), "Resource": "*"}}});

    env.sts.faults().down = true;
    // Two failing mints (3 attempts each) open the circuit…
    for n in 0..2 {
        let (s, v) = resolve(
            &mut env.w1,
            json!({"instance_id": "i-aws", "narrow": narrow(n)}),
        )
        .await;
        assert_eq!((s, code(&v)), (504, "provider_unavailable"));
    }
    // …after which cold mints fail fast without touching STS, while the cached token is
    // still served.
    let calls = env.sts.state.calls();
    for n in 2..6 {
        let (s, v) = resolve(
            &mut env.w1,
            json!({"instance_id": "i-aws", "narrow": narrow(n)}),
        )
        .await;
        assert_eq!((s, code(&v)), (504, "provider_unavailable"));
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("circuit open"),
            "{v}"
        );
    }
    assert_eq!(
        env.sts.state.calls(),
        calls,
        "no upstream call while the circuit is open"
    );
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!((s, v["cached"].as_bool()), (200, Some(true)));
    // One binding's failures open its own circuit (the provider's opens only when several
    // tenants fail together).
    let (_, m) = scrape(&env.pki, &env.daemon.url).await;
    assert!(String::from_utf8(m)
        .unwrap()
        .contains("credbroker_open_binding_circuits 1"));

    // The upstream recovers: after the open period one trial goes through and closes it.
    env.sts.faults().down = false;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow(7)}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow(8)}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(env.daemon.logs().contains("circuit opened"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_are_bounded_upstream_failures() {
    // STS behind a proxy that can reset connections.
    let mut env = start_full("", true).await;
    active_aws_binding(&mut env).await;
    let (s, _) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!(s, 200, "warm the cache");

    env.proxy.as_ref().unwrap().set_reset(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = env.sts.state.calls();
    let started = Instant::now();
    let narrow =
        json!({"policy": {"Statement": {"Effect": "Deny", "Action": "s3:Reset", "Resource": "*"}}});
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow}),
    )
    .await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded: {:?}",
        started.elapsed()
    );
    // Live pooled connections were cut (at least one: the warm-up's), then every new attempt
    // was reset: max_attempts (3) new connections at most.
    let resets = env
        .proxy
        .as_ref()
        .unwrap()
        .resets
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (2..=3 + 2).contains(&resets),
        "retries bounded by max_attempts: {resets} resets"
    );
    assert_eq!(env.sts.state.calls(), before, "nothing reached STS");
    // The cached token is still served.
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!((s, v["cached"].as_bool()), (200, Some(true)));
    // Connections recover with the network.
    env.proxy.as_ref().unwrap().set_reset(false);
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

/// Reads binding `id` until it is flagged `trust_broken` (at most 5 s) and returns it.
async fn wait_for_trust_broken(op: &mut BrokerClient, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, v) = call(op, Method::GET, &format!("/v1/admin/bindings/{id}"), None).await;
        if v["binding"]["trust_broken"] == true || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_trust_is_flagged_by_an_audited_change() {
    let mut env = start().await;
    let (_, arn) = active_aws_binding(&mut env).await;
    env.sts
        .add_role(&arn, role(Some("RotatedAwayExternalId0123456789abcdefgh")));
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    let v = wait_for_trust_broken(&mut env.op, "aws1").await;
    assert_eq!(v["binding"]["trust_broken"], true, "{v}");
    // The flag is its own audit record, by the broker, after the resolve's record.
    let records = env.daemon.audit_records();
    let denied = records
        .iter()
        .position(|r| r["kind"] == "resolve" && r["error_code"] == "provider_denied")
        .unwrap();
    let flag = records
        .iter()
        .position(|r| r["action"] == "binding.flag_trust_broken")
        .expect("an audit record for the flag");
    assert!(flag > denied);
    assert_eq!(records[flag]["actor"], "broker");
    assert_eq!(records[flag]["outcome"], "allowed");
    assert_eq!(records[flag]["binding"], "aws1");
}

/// Attack: a worker hammers a binding whose trust the customer withdrew, many denials in
/// flight at once and more after the flag landed. Each resolve is audited; the broker's
/// flag is one change with one record, and the admin path is not flooded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_denials_raises_one_audited_flag() {
    let narrow = |n: u32| json!({"policy": {"Statement": {"Effect": "Deny", "Action": format!("s3:Nothing{n}"), "Resource": "*"}}});
    let mut env = start().await;
    let (_, arn) = active_aws_binding(&mut env).await;
    env.sts
        .add_role(&arn, role(Some("RotatedAwayExternalId0123456789abcdefgh")));
    for wave in 0..3u32 {
        let mut tasks = Vec::new();
        for i in 0..12u32 {
            let mut w1 = env.pki.client_for("w1", &env.daemon.url);
            tasks.push(tokio::spawn(async move {
                resolve(
                    &mut w1,
                    json!({"instance_id": "i-aws", "narrow": narrow(100 + wave * 12 + i)}),
                )
                .await
            }));
        }
        for t in tasks {
            let (s, v) = t.await.unwrap();
            assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
        }
        let v = wait_for_trust_broken(&mut env.op, "aws1").await;
        assert_eq!(v["binding"]["trust_broken"], true, "{v}");
    }
    // Let any flag task still running finish before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let records = env.daemon.audit_records();
    let denials = records
        .iter()
        .filter(|r| r["kind"] == "resolve" && r["error_code"] == "provider_denied")
        .count();
    assert_eq!(denials, 36, "every denied resolve has its record");
    let flags: Vec<_> = records
        .iter()
        .filter(|r| r["action"] == "binding.flag_trust_broken")
        .collect();
    assert_eq!(flags.len(), 1, "{flags:?}");
    assert_eq!(flags[0]["outcome"], "allowed");
}

/// Every managed policy ARN and action of `ceiling`, as STS received them.
fn session_policies(sent: &std::collections::HashMap<String, String>) -> (Vec<String>, Value) {
    let mut arns: Vec<String> = (1..=10)
        .filter_map(|i| sent.get(&format!("PolicyArns.member.{i}.arn")).cloned())
        .collect();
    arns.sort();
    let policy = sent
        .get("Policy")
        .map(|p| serde_json::from_str(p).unwrap())
        .unwrap_or(Value::Null);
    (arns, policy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unnarrowed_session_carries_exactly_the_binding_ceiling() {
    let mut env = start().await;
    let (external_id, arn) = active_aws_binding(&mut env).await;
    // The platform ceiling (policies/aws.json), for a binding that sets none.
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!(s, 200, "{v}");
    let (arns, policy) = session_policies(&env.sts.state.last_request());
    let platform: Value =
        serde_json::from_slice(&std::fs::read(repo_root().join("policies/aws.json")).unwrap())
            .unwrap();
    let mut expected_arns: Vec<String> = platform["managed_policy_arns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().replace("${Partition}", "aws"))
        .collect();
    expected_arns.sort();
    assert_eq!(arns, expected_arns, "every ceiling policy ARN is sent");
    assert_eq!(policy["Statement"].as_array().unwrap().len(), 1);
    assert_eq!(policy["Statement"][0]["Effect"], "Allow");
    assert_eq!(policy["Statement"][0]["Resource"], "*");
    let mut expected_actions: Vec<Value> = platform["actions"].as_array().unwrap().clone();
    expected_actions.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    assert_eq!(
        policy["Statement"][0]["Action"],
        Value::Array(expected_actions)
    );

    // A binding with its own, narrower ceiling: exactly that ceiling, nothing of the platform's.
    let second = format!("arn:aws:iam::{CUSTOMER}:role/Narrow");
    env.sts.add_role(&second, role(Some(&external_id)));
    let (s, v) = call(&mut env.op, Method::POST, "/v1/admin/bindings", Some(json!({"owner": "team-tests", "purpose": "integration test", 
        "id": "aws-narrow", "tenant": "t1", "provider": "aws_assume_role",
        "config": {"role_arn": second},
        "ceiling": {"managed_policy_arns": [], "actions": ["ec2:DescribeInstances", "s3:ListAllMyBuckets"]}}))).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(&mut env.op, Method::POST, "/v1/admin/instances",
        Some(json!({"id": "i-narrow", "tenant": "t1", "binding": "aws-narrow", "connector_kind": "aws"}))).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = probe(&mut env, "aws-narrow").await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-narrow"})).await;
    assert_eq!(s, 200, "{v}");
    let (arns, policy) = session_policies(&env.sts.state.last_request());
    assert!(arns.is_empty(), "{arns:?}");
    assert_eq!(
        policy["Statement"][0]["Action"],
        json!(["ec2:DescribeInstances", "s3:ListAllMyBuckets"])
    );

    // Ceilings STS cannot carry are refused when the binding is created, not at resolve.
    let many: Vec<String> = (0..200)
        .map(|i| format!("ec2:DescribeThing{i:03}"))
        .collect();
    for (ceiling, why) in [
        (
            json!({"managed_policy_arns": [], "actions": []}),
            "grants nothing",
        ),
        (
            json!({"managed_policy_arns": [], "actions": many}),
            "characters",
        ),
    ] {
        let (s, v) = call(
            &mut env.op,
            Method::POST,
            "/v1/admin/bindings",
            Some(
                json!({"owner": "team-tests", "purpose": "integration test", 
            "id": "aws-bad", "tenant": "t1", "provider": "aws_assume_role",
            "config": {"role_arn": format!("arn:aws:iam::{CUSTOMER}:role/Bad")},
            "ceiling": ceiling}),
            ),
        )
        .await;
        assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{v}");
    }
    let _ = arn;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_naming_one_instance_or_worker_are_never_shared() {
    let mut env = start().await;
    let (_, _) = active_aws_binding(&mut env).await;
    // A second instance and a second worker on the same binding.
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/instances",
        Some(json!({"id": "i-aws2", "tenant": "t1", "binding": "aws1", "connector_kind": "aws"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let mut tokens = std::collections::HashSet::new();
    let calls = env.sts.state.calls();
    for instance in ["i-aws", "i-aws2"] {
        let (s, v) = resolve(&mut env.w1, json!({"instance_id": instance})).await;
        assert_eq!(
            (s, v["cached"].as_bool()),
            (200, Some(false)),
            "{instance}: {v}"
        );
        assert_eq!(
            env.sts.state.last_request()["RoleSessionName"],
            format!("cb.t1.{instance}")
        );
        assert!(tokens.insert(
            v["credentials"]["SessionToken"]
                .as_str()
                .unwrap()
                .to_owned()
        ));
    }
    assert_eq!(env.sts.state.calls() - calls, 2, "one session per instance");
    // Each instance is then served its own cached session.
    for instance in ["i-aws", "i-aws2"] {
        let (_, v) = resolve(&mut env.w1, json!({"instance_id": instance})).await;
        assert_eq!(v["cached"], true);
    }

    // With SourceIdentity the session names the worker too: w2 never gets w1's session.
    let (external_id, _) = (
        onboard(&mut env.op, "t1").await["external_id"]
            .as_str()
            .unwrap()
            .to_owned(),
        (),
    );
    let si = format!("arn:aws:iam::{CUSTOMER}:role/WithSourceIdentity");
    env.sts.add_role(&si, role(Some(&external_id)));
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(
            json!({"owner": "team-tests", "purpose": "integration test", 
        "id": "aws-si", "tenant": "t1", "provider": "aws_assume_role",
        "config": {"role_arn": si, "source_identity": true}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    call(
        &mut env.op,
        Method::POST,
        "/v1/admin/instances",
        Some(json!({"id": "i-si", "tenant": "t1", "binding": "aws-si", "connector_kind": "aws"})),
    )
    .await;
    let (s, v) = probe(&mut env, "aws-si").await;
    assert_eq!(s, 200, "{v}");
    let mut w2 = add_worker(&mut env, "w2", "t1").await;
    let (s, v1) = resolve(&mut env.w1, json!({"instance_id": "i-si"})).await;
    assert_eq!(s, 200, "{v1}");
    assert_eq!(env.sts.state.last_request()["SourceIdentity"], "w1");
    let (s, v2) = resolve(&mut w2, json!({"instance_id": "i-si"})).await;
    assert_eq!((s, v2["cached"].as_bool()), (200, Some(false)), "{v2}");
    assert_eq!(env.sts.state.last_request()["SourceIdentity"], "w2");
    assert_ne!(
        v1["credentials"]["SessionToken"],
        v2["credentials"]["SessionToken"]
    );
    let (_, again) = resolve(&mut w2, json!({"instance_id": "i-si"})).await;
    assert_eq!(again["cached"], true);
    assert_eq!(
        again["credentials"]["SessionToken"],
        v2["credentials"]["SessionToken"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_created_binding_never_receives_its_predecessors_credential() {
    // STS answers slowly, so a mint is still in flight while the binding is removed,
    // re-added under the same id and activated again.
    let mut env = start_opts("", false, 5000).await;
    let (_, _) = active_aws_binding(&mut env).await;
    let (s, old) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!(s, 200, "{old}");
    let seen_before = [old["credentials"]["SessionToken"].clone()];

    env.sts.faults().delay = Duration::from_millis(1500);
    let in_flight = {
        let pki = env.pki.clone();
        let url = env.daemon.url.clone();
        tokio::spawn(async move {
            let mut c = pki.client_for("w1", &url);
            resolve(&mut c, json!({"instance_id": "i-aws", "narrow": {"policy_arns": ["arn:aws:iam::aws:policy/SecurityAudit"]}})).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for path in ["/v1/admin/instances/i-aws", "/v1/admin/bindings/aws1"] {
        let (s, v) = call(&mut env.op, Method::DELETE, path, None).await;
        assert_eq!(s, 200, "{path}: {v}");
    }
    env.sts.faults().delay = Duration::ZERO;
    active_aws_binding(&mut env).await;
    // The resolve verified before the removal; by the time its mint lands the binding is
    // another one under the same id: what it minted is withheld, not handed out.
    let (s, v) = in_flight.await.unwrap();
    assert_eq!((s, code(&v)), (503, "unavailable"), "{v}");
    assert!(message(&v).contains("binding changed"), "{v}");

    // The re-created binding: a new session for the unnarrowed and for the narrowed request,
    // never one minted for the binding that was removed.
    for narrow in [
        None,
        Some(json!({"policy_arns": ["arn:aws:iam::aws:policy/SecurityAudit"]})),
    ] {
        let mut body = json!({"instance_id": "i-aws"});
        if let Some(n) = &narrow {
            body["narrow"] = n.clone();
        }
        let (s, v) = resolve(&mut env.w1, body.clone()).await;
        assert_eq!((s, v["cached"].as_bool()), (200, Some(false)), "{v}");
        assert!(
            !seen_before.contains(&v["credentials"]["SessionToken"]),
            "{narrow:?}"
        );
        let (_, again) = resolve(&mut env.w1, body).await;
        assert_eq!(again["cached"], true);
        assert_eq!(
            again["credentials"]["SessionToken"],
            v["credentials"]["SessionToken"]
        );
    }
}

/// One tenant's worker must not turn every resolve into an STS call by asking for more
/// remaining lifetime than any session has (issue 10, item 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_min_ttl_no_session_can_meet_is_refused_before_sts() {
    let mut env = start().await;
    active_aws_binding(&mut env).await;
    let calls = env.sts.state.calls();
    for min_ttl in [3600, 43_200] {
        let (s, v) = resolve(
            &mut env.w1,
            json!({"instance_id": "i-aws", "min_ttl_s": min_ttl}),
        )
        .await;
        assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("3600"),
            "names the maximum: {v}"
        );
    }
    assert_eq!(
        env.sts.state.calls(),
        calls,
        "no STS call for a refused request"
    );
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "min_ttl_s": 3000}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

/// A mint takes up to the mint deadline: a worker or binding disabled while it runs (the
/// operator told it is in force) is not answered with what the mint brought, and the
/// refusal's record names the upstream call that minted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_mint_brings_is_withheld_from_a_chain_disabled_during_it() {
    let mut env = start().await;
    active_aws_binding(&mut env).await;
    env.sts.faults().delay = Duration::from_millis(1000);
    for (n, change, want) in [
        (1, "/v1/admin/workers/w1/disable", "worker_not_authorized"),
        (2, "/v1/admin/bindings/aws1/disable", "binding_inactive"),
    ] {
        let calls = env.sts.state.calls();
        let mut w1 = env.pki.client_for("w1", &env.daemon.url);
        // A narrowing of its own: a cache miss, so a mint.
        let narrow = json!({"policy": {"Statement": {"Effect": "Deny", "Action": format!("s3:Withheld{n}"), "Resource": "*"}}});
        let mint = tokio::spawn(async move {
            resolve(&mut w1, json!({"instance_id": "i-aws", "narrow": narrow})).await
        });
        // The mint is under way: the fake holds its answer.
        let waited = Instant::now();
        while env.sts.state.calls() == calls {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "no mint started"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (s, v) = call(&mut env.op, Method::POST, change, Some(json!({}))).await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = mint.await.unwrap();
        assert_eq!((s, code(&v)), (403, want), "{v}");
        assert!(v.get("credentials").is_none(), "{v}");
        if n == 1 {
            let (s, v) = call(
                &mut env.op,
                Method::POST,
                "/v1/admin/workers/w1/enable",
                Some(json!({})),
            )
            .await;
            assert_eq!(s, 200, "{v}");
        }
    }
    let withheld: Vec<Value> = env
        .daemon
        .audit_records()
        .into_iter()
        .filter(|r| {
            r["action"] == "resolve"
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("minted, then withheld"))
        })
        .collect();
    assert_eq!(withheld.len(), 2, "{withheld:?}");
    // Each names the chain the mint was made for, the worker's disable included (the second
    // check stops at the worker): t1's report accounts for the AssumeRole into its role.
    for (r, code) in withheld
        .iter()
        .zip(["worker_not_authorized", "binding_inactive"])
    {
        assert_eq!(
            (&r["outcome"], &r["error_code"]),
            (&json!("denied"), &json!(code)),
            "{r}"
        );
        assert!(r["upstream_request_id"].is_string(), "{r}");
        assert_eq!(
            (&r["tenant"], &r["binding"], &r["provider"]),
            (&json!("t1"), &json!("aws1"), &json!("aws_assume_role")),
            "{r}"
        );
    }
}

/// A probe waits on the customer's STS; it must not hold up other operators' changes
/// (issue 10, item 12: no lock held across an upstream call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_probe_does_not_hold_up_other_changes() {
    let mut env = start_opts("", false, 5000).await;
    let (_, arn) = onboarded_role(&mut env).await;
    bind(&mut env, "aws1", "i-aws", &arn).await;
    env.sts.faults().delay = std::time::Duration::from_millis(1500);
    let probing = spawn_probe(&env, "op", "aws1");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": "t-meanwhile"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert!(
        !probing.is_finished(),
        "the change had to wait for the probe's STS calls"
    );
    env.sts.faults().delay = std::time::Duration::ZERO;
    let (s, v) = probing.await.unwrap();
    assert_eq!(s, 200, "{v}");
}

/// A probe calls the customer's STS. One under way when the daemon is told to stop, its
/// operator's client gone (so the listener's drain does not wait for it), is waited for
/// before the audit log closes: the customer's CloudTrail never shows an AssumeRole the
/// broker's log has no record of. (Before, the stop closed the log under it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_under_way_at_a_stop_is_recorded_before_the_log_closes() {
    let mut env = start_opts("", false, 5000).await;
    let (_, arn) = onboarded_role(&mut env).await;
    bind(&mut env, "aws1", "i-aws", &arn).await;
    let before = env.sts.state.calls();
    env.sts.faults().delay = std::time::Duration::from_millis(1500);
    let probing = spawn_probe(&env, "op", "aws1");
    for _ in 0..200 {
        if env.sts.state.calls() > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(env.sts.state.calls() > before, "the probe reached STS");
    probing.abort();
    let _ = probing.await;
    env.daemon.stop();
    let records = env.daemon.audit_records();
    assert!(
        records
            .iter()
            .any(|r| r["action"] == "binding.probe" && r["binding"] == "aws1"),
        "the probe's AssumeRole calls have no record: {records:?}"
    );
}

/// A revoked operator cannot keep acting (THREATS.md): an operator disabled while their
/// probe waits on STS does not get it landed — the binding stays pending and the refusal is
/// audited as theirs — because the operator's record as read at the commit is one of its
/// preconditions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_disabled_during_their_probe_does_not_land_it() {
    probe_while_the_operator_changes(&["disable"]).await;
}

/// An enable of an operator already active changes nothing: their probe lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enable_of_an_active_operator_cancels_nothing() {
    probe_while_the_operator_changes(&["enable"]).await;
}

/// Nor does a disable followed by a re-enable while the probe waits (the certificate
/// revoked, the name given a new one): the record must be the one the request was admitted
/// on, not merely active again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_disabled_and_re_enabled_during_their_probe_does_not_land_it() {
    probe_while_the_operator_changes(&["disable", "enable"]).await;
}

/// op2 probes a binding held 1.5 s at STS; meanwhile op applies `changes` to op2's record.
async fn probe_while_the_operator_changes(changes: &[&str]) {
    let mut env = start_opts("", false, 5000).await;
    let (_, arn) = onboarded_role(&mut env).await;
    bind(&mut env, "aws1", "i-aws", &arn).await;
    let url = env.daemon.url.clone();
    register_operator(&mut env.op, &env.pki, &url, "op2").await;
    env.sts.faults().delay = std::time::Duration::from_millis(1500);
    let probing = spawn_probe(&env, "op2", "aws1");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for change in changes {
        set_operator(&mut env.op, "op2", change).await;
    }
    assert!(!probing.is_finished(), "the probe had to be under way");
    env.sts.faults().delay = std::time::Duration::ZERO;
    let (s, v) = probing.await.unwrap();
    if changes == ["enable"] {
        assert_eq!(s, 200, "{v}");
        return;
    }
    assert_eq!((s, code(&v)), (403, "operator_required"), "{v}");
    let (_, b) = call(&mut env.op, Method::GET, "/v1/admin/bindings/aws1", None).await;
    assert_eq!(b["binding"]["status"], "pending_activation", "{b}");
    let refused = env
        .daemon
        .audit_records()
        .into_iter()
        .filter(|r| r["actor"] == "operator:op2" && r["outcome"] == "denied")
        .count();
    assert_eq!(refused, 1, "the refusal is audited as op2's");
}

/// Confused deputy, three ways (issue 10, item 4): a role whose trust policy only requires
/// that *an* ExternalId be present passes neither activation nor minting; one role spelt two
/// ways (case, path) cannot be bound by two tenants; a tenant re-created under a deleted
/// tenant's id never receives the old ExternalId a customer's trust policy may still pin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confused_deputy_attempts_are_refused() {
    let mut env = start().await;
    let ext1 = onboard(&mut env.op, "t1").await["external_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Any value accepted: the probe's random wrong ExternalId gets in, so it is refused.
    let loose = format!("arn:aws:iam::{CUSTOMER}:role/Loose");
    env.sts.add_role(
        &loose,
        FakeRole {
            any_external_id: true,
            ..role(Some(&ext1))
        },
    );
    let (s, v) = bind(&mut env, "aws-loose", "i-loose", &loose).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = probe(&mut env, "aws-loose").await;
    assert_eq!((s, code(&v)), (422, "external_id_not_enforced"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("WRONG ExternalId"),
        "{v}"
    );
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-loose"})).await;
    assert_eq!((s, code(&v)), (403, "binding_inactive"), "{v}");

    // A refusal that is not the trust policy's (here RegionDisabled on the calls without or
    // with a wrong ExternalId) proves nothing: the probe does not pass on it.
    let strict = format!("arn:aws:iam::{CUSTOMER}:role/Strict");
    env.sts.add_role(&strict, role(Some(&ext1)));
    let (s, v) = bind(&mut env, "aws-strict", "i-strict", &strict).await;
    assert_eq!(s, 201, "{v}");
    env.sts.faults().region_disabled_on_external_id_mismatch = true;
    let (s, v) = probe(&mut env, "aws-strict").await;
    assert_eq!(
        (s, code(&v)),
        (502, "provider_denied"),
        "activated on a refusal that proves nothing: {v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("RegionDisabledException")),
        "{v}"
    );
    let (_, b) = call(
        &mut env.op,
        Method::GET,
        "/v1/admin/bindings/aws-strict",
        None,
    )
    .await;
    assert_eq!(b["binding"]["status"], "pending_activation", "{b}");
    env.sts.faults().region_disabled_on_external_id_mismatch = false;
    // Nor does a 403 that is not STS's (a proxy's HTML page in the path): only a readable
    // AccessDenied is the trust policy refusing.
    env.sts.faults().html_403_on_external_id_mismatch = true;
    let (s, v) = probe(&mut env, "aws-strict").await;
    assert_eq!(
        (s, code(&v)),
        (502, "provider_denied"),
        "activated on a 403 that proves nothing: {v}"
    );
    env.sts.faults().html_403_on_external_id_mismatch = false;
    let (s, v) = probe(&mut env, "aws-strict").await;
    assert_eq!(s, 200, "{v}");

    // One role, two spellings: t1 binds role/Audit and proves it, t2 tries role/team/AUDIT.
    let audit = format!("arn:aws:iam::{CUSTOMER}:role/Audit");
    env.sts.add_role(&audit, role(Some(&ext1)));
    let (s, v) = bind(&mut env, "aws-audit", "i-audit", &audit).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = probe(&mut env, "aws-audit").await;
    assert_eq!(s, 200, "{v}");
    for spelling in ["role/AUDIT", "role/team/audit", "role/Audit"] {
        let (s, v) = call(
            &mut env.op,
            Method::POST,
            "/v1/admin/bindings",
            Some(
                json!({"owner": "team-tests", "purpose": "integration test", "id": "aws-t2", "tenant": "t2", "provider": "aws_assume_role",
                "config": {"role_arn": format!("arn:aws:iam::{CUSTOMER}:{spelling}")}}),
            ),
        )
        .await;
        assert_eq!((s, code(&v)), (409, "conflict"), "{spelling}: {v}");
    }

    // A tenant re-created under a deleted tenant's id gets a fresh ExternalId.
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": "t3"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let old = onboard(&mut env.op, "t3").await["external_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, v) = call(&mut env.op, Method::DELETE, "/v1/admin/tenants/t3", None).await;
    assert_eq!(s, 200, "{v}");
    let removal = env
        .daemon
        .audit_records()
        .into_iter()
        .rev()
        .find(|r| r["tenant"] == "t3" && r["outcome"] == "allowed")
        .unwrap();
    assert!(
        removal["detail"]
            .as_str()
            .unwrap()
            .contains("retired 1 generated parameter(s): aws_assume_role:external_id"),
        "{removal}"
    );
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": "t3"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let new = onboard(&mut env.op, "t3").await["external_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(
        old, new,
        "a re-created tenant inherited the deleted tenant's ExternalId"
    );
}

/// While the audit log is failing, nothing reaches STS: every exchange the customer's
/// CloudTrail shows must be in the audit log, and no record of it could be made. The resolve
/// that finds the log failing was minted before its record failed (nothing handed out); the
/// ones after it, each asking a narrowing never minted, are refused before any call. Once the
/// log is writable again, minting resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_exchange_is_made_while_the_audit_log_is_failing() {
    let mut env = start().await;
    let ext = onboard(&mut env.op, "t1").await["external_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let arn = format!("arn:aws:iam::{CUSTOMER}:role/Audit");
    bind_active(&mut env, "aws1", "i-aws", &arn, &ext).await;
    env.daemon.stop();
    point_audit_at_dev_full(&env.daemon.data_dir);
    env.daemon.restart();
    let mut w1 = env.pki.client_for("w1", &env.daemon.url);
    let narrowed = |action: &str| json!({"instance_id": "i-aws", "narrow": {"policy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": [action], "Resource": "*"}]}}});
    let calls = env.sts.state.calls();
    let (s, v) = resolve(&mut w1, narrowed("ec2:DescribeInstances")).await;
    assert_eq!((s, code(&v)), (503, "audit_unavailable"), "{v}");
    assert_eq!(env.sts.state.calls() - calls, 1, "the first one minted");
    for action in [
        "ec2:DescribeVpcs",
        "ec2:DescribeSubnets",
        "s3:ListAllMyBuckets",
    ] {
        let (s, v) = resolve(&mut w1, narrowed(action)).await;
        assert_eq!((s, code(&v)), (503, "audit_unavailable"), "{v}");
        assert!(v["credentials"].is_null(), "{v}");
    }
    // A flood of them at once (a worker hammering during the outage): each refused the same
    // way, none reaching STS.
    let mut flood = Vec::new();
    for n in 0..40 {
        let pki = env.pki.clone();
        let url = env.daemon.url.clone();
        let body = narrowed(["ec2:DescribeImages", "ec2:DescribeVolumes"][n % 2]);
        flood.push(tokio::spawn(async move {
            let mut c = pki.client_for("w1", &url);
            let (s, v) = resolve(&mut c, body).await;
            (s, code(&v).to_owned())
        }));
    }
    for f in flood {
        assert_eq!(f.await.unwrap(), (503, "audit_unavailable".to_owned()));
    }
    // An operator's certificate on the resolve endpoint gets its own refusal decided (it
    // is not a worker), not a probe of the log: refused all the same, nothing minted.
    let mut op = env.pki.client_for("op", &env.daemon.url);
    let (s, _) = resolve(&mut op, narrowed("ec2:DescribeVpcs")).await;
    assert!(s == 403 || s == 503, "{s}");
    assert_eq!(
        env.sts.state.calls() - calls,
        1,
        "STS was called while the audit log was known to be failing"
    );
    free_audit_space(&env.daemon.data_dir);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = resolve(&mut w1, narrowed("ec2:DescribeVpcs")).await;
        if s == 200 {
            break;
        }
        assert_eq!((s, code(&v)), (503, "audit_unavailable"), "{v}");
        assert!(Instant::now() < deadline, "minting did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.sts.state.calls() - calls, 2);
}

/// A store written by the previous release keyed AWS roles on the raw ARN. At the first
/// start the canonical identifiers are claimed; of two bindings of one role under two
/// spellings (possible then), the later is disabled, audited (issue 10, item 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_of_the_previous_release_claim_their_canonical_role() {
    use credbroker::store::{Batch, Op, Table};
    let mut env = start().await;
    let ext1 = onboard(&mut env.op, "t1").await["external_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let arn = format!("arn:aws:iam::{CUSTOMER}:role/Audit");
    bind_active(&mut env, "aws1", "i-aws", &arn, &ext1).await;
    env.daemon.stop();
    {
        let config = credbroker::config::Config::load(&env.daemon.config).unwrap();
        let store = credbroker::store::open(&config.store, &config.data_dir)
            .await
            .unwrap();
        let canonical = format!("exclusive:aws_role:aws:{CUSTOMER}:audit");
        let owner = store
            .get(Table::Identifiers, &canonical)
            .await
            .unwrap()
            .expect("canonical claim");
        let mut b = Batch::new();
        b.push(Op::Delete(Table::Identifiers, canonical));
        b.push(Op::Put(
            Table::Identifiers,
            format!("exclusive:aws_role_arn:{arn}"),
            owner,
        ));
        // A second binding of the same role, spelt otherwise, made for t2 by the old release.
        let mut other: Value =
            serde_json::from_slice(&store.get(Table::Bindings, "aws1").await.unwrap().unwrap())
                .unwrap();
        let other_arn = format!("arn:aws:iam::{CUSTOMER}:role/team/AUDIT");
        other["id"] = json!("aws2");
        other["tenant"] = json!("t2");
        other["config"]["role_arn"] = json!(other_arn);
        b.push(Op::Put(
            Table::Bindings,
            "aws2".into(),
            serde_json::to_vec(&other).unwrap(),
        ));
        b.push(Op::Put(
            Table::Identifiers,
            format!("exclusive:aws_role_arn:{other_arn}"),
            serde_json::to_vec(&json!({"tenant": "t2", "binding": "aws2"})).unwrap(),
        ));
        b.push(Op::Put(Table::Meta, "schema_version".into(), b"2".to_vec()));
        store.commit(b).await.unwrap();
    }
    for _ in 0..2 {
        env.daemon.restart();
        env.op = env.pki.client_for("op", &env.daemon.url);
        env.w1 = env.pki.client_for("w1", &env.daemon.url);
    }
    let (_, v) = call(&mut env.op, Method::GET, "/v1/admin/bindings/aws2", None).await;
    assert_eq!(v["binding"]["status"], "disabled", "{v}");
    assert!(
        v["binding"]["last_probe"]
            .as_str()
            .unwrap()
            .contains("held by binding aws1"),
        "{v}"
    );
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!(s, 200, "aws1 keeps working: {v}");
    let migrations: Vec<Value> = env
        .daemon
        .audit_records()
        .into_iter()
        .filter(|r| r["action"] == "store.migrate")
        .collect();
    assert_eq!(migrations.len(), 1, "{migrations:?}");
    let detail = migrations[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("aws1") && detail.contains("binding aws2 disabled"),
        "{detail}"
    );
    // A third spelling is refused now.
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(
            json!({"owner": "team-tests", "purpose": "integration test", "id": "aws3", "tenant": "t2", "provider": "aws_assume_role",
            "config": {"role_arn": format!("arn:aws:iam::{CUSTOMER}:role/audit")}}),
        ),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
}

/// One tenant can hurt all (issue 10, item 8): a binding whose upstream keeps failing opens
/// only its own circuit — another binding of the provider keeps minting — and a worker that
/// defeats the cache (a new narrowing each call) is stopped by the mint rate limits, per
/// worker and per binding, while cached credentials are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_binding_or_worker_cannot_exhaust_the_upstream_for_others() {
    let mut env = start_with(
        "breaker_failures = 2\nbreaker_open_ms = 60000\nmints_per_minute_per_worker = 6\nmints_per_minute_per_binding = 60\n",
    )
    .await;
    let (external_id, _) = active_aws_binding(&mut env).await;
    let other = format!("arn:aws:iam::{CUSTOMER}:role/Other");
    bind_active(&mut env, "aws2", "i-aws2", &other, &external_id).await;
    let narrow = |n: u32| json!({"policy": {"Statement": {"Effect": "Deny", "Action": format!("s3:Nothing{n}"), "Resource": "*"}}});

    // aws2's role is down (that customer's trouble): its circuit opens after two failures,
    // and the resolves it then fails fast call nobody, so they spend no mint token…
    env.sts.faults().down_roles = vec![other.clone()];
    let calls = env.sts.state.calls();
    for n in 0..8 {
        let (s, v) = resolve(
            &mut env.w1,
            json!({"instance_id": "i-aws2", "narrow": narrow(n)}),
        )
        .await;
        assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    }
    // (two mints of at most three attempts each; without the circuit, eight)
    let sent = env.sts.state.calls() - calls;
    assert!(
        (2..=6).contains(&sent),
        "the circuit did not open: {sent} calls"
    );
    // …and aws1 keeps minting fresh credentials from the same provider.
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow(100)}),
    )
    .await;
    assert_eq!((s, v["cached"].as_bool()), (200, Some(false)), "{v}");
    env.sts.faults().down_roles.clear();

    // w1 has used 3 of its 6 mints a minute (2 failed on aws2, 1 on aws1; the probes are not
    // resolves). Cache-defeating resolves run out after three more…
    for n in 200..203 {
        let (s, v) = resolve(
            &mut env.w1,
            json!({"instance_id": "i-aws", "narrow": narrow(n)}),
        )
        .await;
        assert_eq!((s, v["cached"].as_bool()), (200, Some(false)), "{v}");
    }
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow(203)}),
    )
    .await;
    assert_eq!((s, code(&v)), (429, "rate_limited"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("worker"),
        "{v}"
    );
    // …while a cached credential is still served.
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow(100)}),
    )
    .await;
    assert_eq!((s, v["cached"].as_bool()), (200, Some(true)), "{v}");
}

/// One tenant cannot trip a limit for the others (THREATS.md): the fresh mints its workers
/// cause through all its bindings of one provider together stop at the tenant's share
/// (`mints_per_minute_per_tenant`), however many bindings and workers it spreads them over,
/// while another tenant keeps minting from the same provider and the first tenant's cached
/// credentials are still served. (A platform-wide quota such as a GitHub App's is what the
/// share protects; the fake STS stands in for any upstream here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_exhaust_a_provider_for_the_others() {
    let mut env = start_with(
        "mints_per_minute_per_worker = 0\nmints_per_minute_per_binding = 0\nmints_per_minute_per_tenant = 4\n",
    )
    .await;
    let (ext1, _) = active_aws_binding(&mut env).await;
    let second = format!("arn:aws:iam::{CUSTOMER}:role/Second");
    bind_active(&mut env, "aws2", "i-aws2", &second, &ext1).await;
    let ext2 = onboard(&mut env.op, "t2").await["external_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let theirs = "arn:aws:iam::333333333333:role/Theirs";
    env.sts.add_role(
        theirs,
        FakeRole {
            account: "333333333333".into(),
            ..role(Some(&ext2))
        },
    );
    let (s, v) = bind_for(&mut env, "t2", "aws-t2", "i-t2", theirs).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = probe(&mut env, "aws-t2").await;
    assert_eq!(s, 200, "{v}");
    let mut w2 = add_worker(&mut env, "w2", "t1").await;
    let mut w3 = add_worker(&mut env, "w3", "t2").await;
    let narrow = |n: u32| json!({"policy": {"Statement": {"Effect": "Deny", "Action": format!("s3:Nothing{n}"), "Resource": "*"}}});

    // t1's two workers defeat the cache through its two bindings: four fresh mints in all
    // (the probes are not resolves)…
    let sent_before = env.sts.state.calls();
    for (n, instance) in [(0, "i-aws"), (1, "i-aws2"), (2, "i-aws"), (3, "i-aws2")] {
        let worker = if n % 2 == 0 { &mut env.w1 } else { &mut w2 };
        let (s, v) = resolve(
            worker,
            json!({"instance_id": instance, "narrow": narrow(n)}),
        )
        .await;
        assert_eq!((s, v["cached"].as_bool()), (200, Some(false)), "{v}");
    }
    // …and the fifth, from either worker and either binding, is refused before STS.
    for (worker, instance) in [(&mut env.w1, "i-aws2"), (&mut w2, "i-aws")] {
        let (s, v) = resolve(
            worker,
            json!({"instance_id": instance, "narrow": narrow(9)}),
        )
        .await;
        assert_eq!((s, code(&v)), (429, "rate_limited"), "{v}");
        assert!(message(&v).contains("tenant"), "{v}");
    }
    assert_eq!(
        env.sts.state.calls() - sent_before,
        4,
        "a refused mint reached STS"
    );
    // t2 mints its own share from the same provider…
    for n in 0..4 {
        let (s, v) = resolve(&mut w3, json!({"instance_id": "i-t2", "narrow": narrow(n)})).await;
        assert_eq!((s, v["cached"].as_bool()), (200, Some(false)), "{v}");
    }
    // …and t1's cached credentials are still served.
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws2", "narrow": narrow(1)}),
    )
    .await;
    assert_eq!((s, v["cached"].as_bool()), (200, Some(true)), "{v}");
    let refused = env
        .daemon
        .audit_records()
        .into_iter()
        .filter(|r| r["action"] == "resolve" && r["outcome"] != "allowed")
        .count();
    assert_eq!(refused, 2, "every refused resolve is audited");
}

/// A malicious or broken STS (THREATS.md): a session token a worker could not put into a
/// header or a credentials file as it is (a line break and a header of the attacker's) is
/// `provider_unavailable` and never handed out or cached; credentials stated to live ten
/// years are handed out and cached as living the session asked for (an hour), so they are
/// not served past their real end; an over-long request id is not written into the audit
/// record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sts_answer_a_worker_could_not_use_as_it_is_is_never_handed_out() {
    let mut env = start().await;
    active_aws_binding(&mut env).await;
    env.sts.faults().session_token = Some("FwoGZXIvYXdzEfake\nX-Injected: yes".into());
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    assert!(message(&v).contains("SessionToken"), "{v}");
    env.sts.faults().session_token = None;

    env.sts.faults().far_expiration = true;
    env.sts.faults().request_id = Some("R".repeat(300));
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!((s, v["cached"].as_bool()), (200, Some(false)), "{v}");
    let parse = |t: &Value| {
        time::OffsetDateTime::parse(
            t.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let latest = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    assert!(parse(&v["expires_at"]) <= latest, "{v}");
    assert_eq!(
        parse(&v["credentials"]["Expiration"]),
        parse(&v["expires_at"]),
        "{v}"
    );
    let id = v["request_id"].as_str().unwrap().to_owned();
    let record = env
        .daemon
        .audit_records()
        .into_iter()
        .find(|r| r["action"] == "resolve" && r["request_id"] == id.as_str())
        .unwrap();
    assert!(record["upstream_request_id"].is_null(), "{record}");
}

// ---- What real STS refuses and the fake now refuses too (issue 18, item 6) -------------

/// Reads binding `id`.
async fn binding(op: &mut BrokerClient, id: &str) -> Value {
    let (s, v) = call(op, Method::GET, &format!("/v1/admin/bindings/{id}"), None).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// The fake verifies every SigV4 signature with the vendor key it knows. A daemon whose
/// secret is wrong is refused with STS's `SignatureDoesNotMatch` (an unknown key with
/// `InvalidClientTokenId`): that is the platform's fault, so the probe does not activate,
/// resolves answer `provider_denied` naming the STS code with its request id audited, cached
/// credentials keep being served, and the binding is not flagged `trust_broken` (the
/// customer changed nothing; the trust runbook would send operators to the wrong party).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_signing_with_a_wrong_secret_is_refused_without_blaming_the_customer() {
    const WRONG: &str = "not-the-vendor-secret-0000";
    let mut env = start_custom(StartOptions {
        secret: WRONG,
        ..StartOptions::default()
    })
    .await;
    let (_, arn) = onboarded_role(&mut env).await;
    let (s, v) = bind(&mut env, "aws1", "i-aws", &arn).await;
    assert_eq!(s, 201, "{v}");

    // Activation: the first AssumeRole is refused on its signature; nothing activates.
    let calls = env.sts.state.calls();
    let (s, v) = probe(&mut env, "aws1").await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(message(&v).contains("SignatureDoesNotMatch"), "{v}");
    assert_eq!(
        env.sts.state.calls() - calls,
        1,
        "the probe stops at the refused signature"
    );
    let b = binding(&mut env.op, "aws1").await;
    assert_eq!(b["binding"]["status"], "pending_activation", "{b}");

    // The fake learns the secret the daemon holds (the key re-issued with it): the same
    // daemon's signatures now verify; it activates and mints.
    env.sts.set_credentials(TEST_ACCESS_KEY_ID, WRONG);
    let (s, v) = probe(&mut env, "aws1").await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!((s, v["cached"].as_bool()), (200, Some(false)), "{v}");

    // The key's secret changes under the running daemon: cold mints are refused.
    env.sts
        .set_credentials(TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY);
    let narrow = json!({"policy_arns": ["arn:aws:iam::aws:policy/SecurityAudit"]});
    let calls = env.sts.state.calls();
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow}),
    )
    .await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(message(&v).contains("SignatureDoesNotMatch"), "{v}");
    assert_eq!(env.sts.state.calls() - calls, 1, "a refusal is not retried");
    // The cached credential is still served.
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!((s, v["cached"].as_bool()), (200, Some(true)), "{v}");
    // A key STS does not know at all (deleted in the vendor account).
    env.sts.remove_credentials(TEST_ACCESS_KEY_ID);
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow}),
    )
    .await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(message(&v).contains("InvalidClientTokenId"), "{v}");

    // Neither refusal is the customer's doing: no flag, and each resolve's record names
    // STS's code and request id.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = binding(&mut env.op, "aws1").await;
    assert_eq!(b["binding"]["trust_broken"], false, "{b}");
    let records = env.daemon.audit_records();
    assert!(!records
        .iter()
        .any(|r| r["action"] == "binding.flag_trust_broken"));
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "resolve" && r["error_code"] == "provider_denied")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    for (r, sts_code) in refused
        .iter()
        .zip(["SignatureDoesNotMatch", "InvalidClientTokenId"])
    {
        assert!(
            r["upstream_request_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("c6104cbe-")),
            "{r}"
        );
        assert!(
            r["detail"].as_str().is_some_and(|d| d.contains(sts_code)),
            "{r}"
        );
    }
}

/// A role whose trust policy lacks `sts:SetSourceIdentity` refuses every AssumeRole that
/// carries a SourceIdentity, one without `sts:TagSession` every AssumeRole with session tags
/// (PROTOCOLS.md; the shipped template grants neither). The probe's first call carries what
/// an unnarrowed mint carries — SourceIdentity, session policies — so a binding whose mints
/// would all be refused never activates; and the broker sends no session tags, so roles from
/// the shipped template keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_refuses_what_a_mint_sends_never_activates() {
    let mut env = start().await;
    let external_id = onboard(&mut env.op, "t1").await["external_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A role that demands a SourceIdentity but no ExternalId: the probe's calls without the
    // tenant's ExternalId carry the same SourceIdentity as its first call, so they succeed
    // and the missing ExternalId condition is caught (they are not refused for a missing
    // SourceIdentity and taken for an enforced ExternalId).
    let lax = format!("arn:aws:iam::{CUSTOMER}:role/SourceIdentityOnly");
    env.sts.add_role(
        &lax,
        FakeRole {
            require_source_identity: true,
            ..role(None)
        },
    );
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(
            json!({"owner": "team-tests", "purpose": "integration test", "id": "aws-lax-si", "tenant": "t1", "provider": "aws_assume_role",
            "config": {"role_arn": lax, "source_identity": true}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = probe(&mut env, "aws-lax-si").await;
    assert_eq!(
        (s, code(&v)),
        (422, "external_id_not_enforced"),
        "activated a role any tenant's ExternalId opens: {v}"
    );

    // source_identity on a role whose trust lacks sts:SetSourceIdentity.
    let arn = format!("arn:aws:iam::{CUSTOMER}:role/NoSourceIdentity");
    env.sts.add_role(
        &arn,
        FakeRole {
            allow_set_source_identity: false,
            ..role(Some(&external_id))
        },
    );
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(
            json!({"owner": "team-tests", "purpose": "integration test", "id": "aws-si", "tenant": "t1", "provider": "aws_assume_role",
            "config": {"role_arn": arn, "source_identity": true}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/instances",
        Some(json!({"id": "i-si", "tenant": "t1", "binding": "aws-si", "connector_kind": "aws"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let calls = env.sts.state.calls();
    let (s, v) = probe(&mut env, "aws-si").await;
    assert_eq!(
        (s, code(&v)),
        (502, "provider_denied"),
        "activated a role that refuses every resolve: {v}"
    );
    assert!(message(&v).contains("sts:SetSourceIdentity"), "{v}");
    let first = env.sts.state.requests.lock().unwrap()[calls].clone();
    assert_eq!(
        first.get("SourceIdentity").map(String::as_str),
        Some("credbroker"),
        "the probe sends a SourceIdentity as a mint does: {first:?}"
    );
    let b = binding(&mut env.op, "aws-si").await;
    assert_eq!(b["binding"]["status"], "pending_activation", "{b}");
    assert!(
        b["binding"]["last_probe"]
            .as_str()
            .unwrap()
            .contains("SetSourceIdentity"),
        "{b}"
    );
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-si"})).await;
    assert_eq!((s, code(&v)), (403, "binding_inactive"), "{v}");

    // The customer adds sts:SetSourceIdentity: the probe passes and mints name the worker.
    env.sts.add_role(&arn, role(Some(&external_id)));
    let (s, v) = probe(&mut env, "aws-si").await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-si"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(env.sts.state.last_request()["SourceIdentity"], "w1");

    // A role with neither permission (the shipped template's trust) and a binding without
    // source_identity: activates and mints, unnarrowed and narrowed.
    let plain = format!("arn:aws:iam::{CUSTOMER}:role/ShippedTemplate");
    env.sts.add_role(
        &plain,
        FakeRole {
            allow_set_source_identity: false,
            allow_tag_session: false,
            ..role(Some(&external_id))
        },
    );
    let (s, v) = bind(&mut env, "aws-plain", "i-plain", &plain).await;
    assert_eq!(s, 201, "{v}");
    let calls = env.sts.state.calls();
    let (s, v) = probe(&mut env, "aws-plain").await;
    assert_eq!(s, 200, "{v}");
    let probe_first = env.sts.state.requests.lock().unwrap()[calls].clone();
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-plain"})).await;
    assert_eq!(s, 200, "{v}");
    let minted = env.sts.state.last_request();
    assert!(!minted.contains_key("SourceIdentity"));
    // The probe carried the very session policies of an unnarrowed mint.
    assert_eq!(
        session_policies(&probe_first),
        session_policies(&minted),
        "the probe's first call is an unnarrowed mint's"
    );
    assert!(!session_policies(&probe_first).0.is_empty());
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-plain", "narrow": {"policy_arns": ["arn:aws:iam::aws:policy/SecurityAudit"]}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let sent = env.sts.state.requests.lock().unwrap().clone();
    assert!(
        sent.iter().all(|r| !r
            .keys()
            .any(|k| k.starts_with("Tags.") || k.starts_with("TransitiveTagKeys."))),
        "session tags were sent: a role without sts:TagSession would refuse them"
    );
}

/// The ten managed policies of the ceilings below (real AWS managed policy names).
const TEN_POLICIES: [&str; 10] = [
    "SecurityAudit",
    "job-function/ViewOnlyAccess",
    "ReadOnlyAccess",
    "AWSCloudTrail_ReadOnlyAccess",
    "AmazonEC2ReadOnlyAccess",
    "AmazonS3ReadOnlyAccess",
    "IAMReadOnlyAccess",
    "AWSConfigUserAccess",
    "AmazonGuardDutyReadOnlyAccess",
    "AWSSecurityHubReadOnlyAccess",
];

/// What one STS session can carry is limited beyond each parameter's own limit
/// (PROTOCOLS.md): at most 10 PolicyArns, and the packed size of policy + ARNs (+ tags)
/// under 100 %. The first is refused before any call (narrowing, binding ceiling, platform
/// ceiling); the second cannot be computed beforehand, so a ceiling that does not pack
/// never activates (`activation_failed`), and a narrowing that does not pack is refused
/// with `provider_denied` naming it — not flagged `trust_broken`, not counted as an outage
/// (it opens no circuit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_policies_sts_cannot_carry_are_refused_clearly() {
    let templated: Vec<String> = TEN_POLICIES
        .iter()
        .map(|p| format!("arn:${{Partition}}:iam::aws:policy/{p}"))
        .collect();
    let arns: Vec<String> = TEN_POLICIES
        .iter()
        .map(|p| format!("arn:aws:iam::aws:policy/{p}"))
        .collect();
    // The platform ceiling: the shipped actions plus 44 more (a ~1850-character session
    // policy) and ten managed policies. Each within its limit; together they do not pack.
    let shipped: Value =
        serde_json::from_slice(&std::fs::read(repo_root().join("policies/aws.json")).unwrap())
            .unwrap();
    let mut actions = shipped["actions"].as_array().unwrap().clone();
    actions.extend((0..44).map(|i| json!(format!("ec2:DescribeThing{i:03}"))));
    let platform = json!({"managed_policy_arns": templated, "actions": actions});
    let mut env = start_custom(StartOptions {
        cache_extra: "breaker_failures = 2\nbreaker_open_ms = 60000\n",
        ceiling: Some(platform.clone()),
        ..StartOptions::default()
    })
    .await;
    let external_id = onboard(&mut env.op, "t1").await["external_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A binding that carries the platform ceiling never activates.
    let big = format!("arn:aws:iam::{CUSTOMER}:role/Big");
    env.sts.add_role(&big, role(Some(&external_id)));
    let (s, v) = bind(&mut env, "aws-big", "i-big", &big).await;
    assert_eq!(s, 201, "{v}");
    let calls = env.sts.state.calls();
    let (s, v) = probe(&mut env, "aws-big").await;
    assert_eq!((s, code(&v)), (422, "activation_failed"), "{v}");
    assert!(message(&v).contains("PackedPolicyTooLarge"), "{v}");
    assert!(message(&v).contains("ceiling"), "{v}");
    assert_eq!(env.sts.state.calls() - calls, 1);
    let first = env.sts.state.requests.lock().unwrap()[calls].clone();
    let mut sorted = arns.clone();
    sorted.sort();
    assert_eq!(
        session_policies(&first).0,
        sorted,
        "the probe carries the ceiling"
    );
    let b = binding(&mut env.op, "aws-big").await;
    assert_eq!(b["binding"]["status"], "pending_activation", "{b}");

    // A binding ceiling of the ten policies and one action packs, with a plausible size.
    let slim = format!("arn:aws:iam::{CUSTOMER}:role/Slim");
    env.sts.add_role(&slim, role(Some(&external_id)));
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(
            json!({"owner": "team-tests", "purpose": "integration test", 
        "id": "aws-slim", "tenant": "t1", "provider": "aws_assume_role",
        "config": {"role_arn": slim},
        "ceiling": {"managed_policy_arns": templated, "actions": ["ec2:DescribeInstances"]}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/instances",
        Some(
            json!({"id": "i-slim", "tenant": "t1", "binding": "aws-slim", "connector_kind": "aws"}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = probe(&mut env, "aws-slim").await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-slim"})).await;
    assert_eq!(s, 200, "{v}");
    let size = env.sts.state.packed_policy_size.lock().unwrap().unwrap();
    assert!((20..80).contains(&size), "PackedPolicySize {size}");

    // A narrowing inside that ceiling that does not pack: the ten ARNs and a ~1950-character
    // Deny policy. Refused, named, not the customer's fault — and not an outage: three of
    // them (breaker_failures = 2) open no circuit.
    let deny: Vec<String> = (0..110).map(|i| format!("s3:Nothing{i:04}")).collect();
    let policy = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": deny, "Resource": "*"}]});
    assert!(
        policy.to_string().len() <= 2048,
        "within the inline policy limit"
    );
    for _ in 0..3 {
        let calls = env.sts.state.calls();
        let (s, v) = resolve(
            &mut env.w1,
            json!({"instance_id": "i-slim", "narrow": {"policy": policy, "policy_arns": arns}}),
        )
        .await;
        assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
        assert!(message(&v).contains("PackedPolicyTooLarge"), "{v}");
        assert!(message(&v).contains("narrow"), "{v}");
        assert_eq!(env.sts.state.calls() - calls, 1, "not retried");
    }
    // The same policy with two of the ARNs packs: it is the combination STS refuses.
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-slim", "narrow": {"policy": policy, "policy_arns": arns[..2]}}),
    )
    .await;
    assert_eq!((s, v["cached"].as_bool()), (200, Some(false)), "{v}");
    let records = env.daemon.audit_records();
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "resolve" && r["error_code"] == "provider_denied")
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused.iter().all(|r| r["upstream_request_id"].is_string()
        && r["detail"]
            .as_str()
            .is_some_and(|d| d.contains("PackedPolicyTooLarge"))));

    // More than ten PolicyArns never reach STS: a narrowing…
    let eleven: Vec<String> = arns
        .iter()
        .cloned()
        .chain(std::iter::once(arns[0].clone()))
        .collect();
    let calls = env.sts.state.calls();
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-slim", "narrow": {"policy_arns": eleven}}),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
    assert!(message(&v).contains("at most 10"), "{v}");
    assert_eq!(env.sts.state.calls(), calls, "no STS call");
    // …a binding ceiling…
    let eleven_templated: Vec<String> = templated
        .iter()
        .cloned()
        .chain(std::iter::once(templated[0].clone()))
        .collect();
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(
            json!({"owner": "team-tests", "purpose": "integration test", 
        "id": "aws-eleven", "tenant": "t1", "provider": "aws_assume_role",
        "config": {"role_arn": format!("arn:aws:iam::{CUSTOMER}:role/Eleven")},
        "ceiling": {"managed_policy_arns": eleven_templated, "actions": []}}),
        ),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
    assert!(message(&v).contains("at most 10"), "{v}");
    // Nothing of the above is the customer's doing.
    for id in ["aws-big", "aws-slim"] {
        let b = binding(&mut env.op, id).await;
        assert_eq!(b["binding"]["trust_broken"], false, "{b}");
    }
    // …or the platform ceiling: the daemon refuses to start.
    env.daemon.stop();
    let mut eleven_platform = platform;
    eleven_platform["managed_policy_arns"]
        .as_array_mut()
        .unwrap()
        .push(json!("arn:${Partition}:iam::aws:policy/AWSSupportAccess"));
    std::fs::write(
        &env.ceiling_file,
        serde_json::to_vec_pretty(&eleven_platform).unwrap(),
    )
    .unwrap();
    let (c, err) = env.daemon.serve_refused(&[]);
    assert_ne!(c, 0, "{err}");
    assert!(err.contains("at most 10"), "{err}");
}

/// Refusals that are the platform's own (PROTOCOLS.md): the broker's caller credentials
/// expired (`ExpiredToken`) or STS is not activated in the configured region
/// (`RegionDisabledException`). Each refuses cold resolves with `provider_denied` naming
/// STS's code, audited with the request id; it is neither retried nor counted as an outage
/// (no circuit opens); cached credentials keep being served; a pending binding does not
/// activate; and no binding is flagged `trust_broken`. Once the fault clears, everything
/// works without any operator action on the bindings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_caller_credentials_and_a_disabled_region_are_the_platforms_refusals() {
    let mut env = start_with("breaker_failures = 2\nbreaker_open_ms = 60000\n").await;
    let (external_id, _) = active_aws_binding(&mut env).await;
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!(s, 200, "warm the cache: {v}");
    let pending = format!("arn:aws:iam::{CUSTOMER}:role/Pending");
    env.sts.add_role(&pending, role(Some(&external_id)));
    let (s, v) = bind(&mut env, "aws-pending", "i-pending", &pending).await;
    assert_eq!(s, 201, "{v}");
    let narrow = |n: u32| json!({"policy": {"Statement": {"Effect": "Deny", "Action": format!("s3:Nothing{n}"), "Resource": "*"}}});

    type SetFault = fn(&mut Faults, bool);
    let faults: [(&str, SetFault); 2] = [
        ("ExpiredToken", |f, on| f.caller_token_expired = on),
        ("RegionDisabledException", |f, on| f.region_disabled = on),
    ];
    let mut n = 0;
    for (sts_code, set) in faults {
        {
            let mut f = env.sts.faults();
            set(&mut f, true);
        }
        // More refusals than breaker_failures: each one still reaches STS once.
        for _ in 0..3 {
            n += 1;
            let calls = env.sts.state.calls();
            let (s, v) = resolve(
                &mut env.w1,
                json!({"instance_id": "i-aws", "narrow": narrow(n)}),
            )
            .await;
            assert_eq!((s, code(&v)), (502, "provider_denied"), "{sts_code}: {v}");
            assert!(message(&v).contains(sts_code), "{v}");
            assert_eq!(
                env.sts.state.calls() - calls,
                1,
                "{sts_code}: one call, not retried, no circuit open"
            );
        }
        let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
        assert_eq!((s, v["cached"].as_bool()), (200, Some(true)), "{v}");
        let (s, v) = probe(&mut env, "aws-pending").await;
        assert_eq!((s, code(&v)), (502, "provider_denied"), "{sts_code}: {v}");
        assert!(message(&v).contains(sts_code), "{v}");
        let b = binding(&mut env.op, "aws-pending").await;
        assert_eq!(b["binding"]["status"], "pending_activation", "{b}");
        {
            let mut f = env.sts.faults();
            set(&mut f, false);
        }
    }

    // The fault cleared: fresh credentials again, and the pending binding activates.
    let (s, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow(n + 1)}),
    )
    .await;
    assert_eq!((s, v["cached"].as_bool()), (200, Some(false)), "{v}");
    let (s, v) = probe(&mut env, "aws-pending").await;
    assert_eq!(s, 200, "{v}");

    // Nothing was blamed on the customer; every refusal is audited with STS's code and id.
    // A flag is raised after the refusal is answered: give one the time to land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = binding(&mut env.op, "aws1").await;
    assert_eq!(b["binding"]["trust_broken"], false, "{b}");
    let records = env.daemon.audit_records();
    assert!(!records
        .iter()
        .any(|r| r["action"] == "binding.flag_trust_broken"));
    for (sts_code, _) in faults {
        let refused: Vec<&Value> = records
            .iter()
            .filter(|r| {
                r["kind"] == "resolve"
                    && r["error_code"] == "provider_denied"
                    && r["detail"].as_str().is_some_and(|d| d.contains(sts_code))
            })
            .collect();
        assert_eq!(refused.len(), 3, "{sts_code}: {refused:?}");
        assert!(refused.iter().all(|r| r["upstream_request_id"].is_string()));
    }
}

/// A malicious or broken STS answering with far more than any real answer (a few KiB) is not
/// read into memory: the read stops at 256 KiB (`provider_unavailable`, saying so), it is not
/// retried, nothing is handed out, and an answer just under the bound still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_sts_answer_is_cut_not_buffered() {
    let mut env = start().await;
    active_aws_binding(&mut env).await;
    env.sts.faults().padding = Some(16 * 1024 * 1024);
    let calls = env.sts.state.calls();
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    assert!(message(&v).contains("more than 256 KiB"), "{v}");
    // Not taken for a transient failure: asked once, not max_attempts times.
    assert_eq!(env.sts.state.calls(), calls + 1, "retried");
    env.sts.faults().padding = Some(200 * 1024);
    let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
    assert_eq!((s, v["cached"].as_bool()), (200, Some(false)), "{v}");
}

/// A malicious or broken STS answering an active binding's mint with a session that is not
/// the role's: in another account, of another role of the same account (two tenants may
/// each bind a role of one AWS account), or of the same account and role name in another
/// partition. Not handed out; and a probe refuses activation for
/// the same reason, though a mint must not rely on the probe having seen the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_not_of_the_bindings_role_is_never_handed_out() {
    type Lie = fn(&mut FakeRole);
    let cases: [(Lie, &str); 3] = [
        (
            |r| r.report_account = Some("333333333333".into()),
            "account 333333333333",
        ),
        (
            |r| r.report_role = Some("OtherTenantsRole".into()),
            "another role than the binding's",
        ),
        (
            |r| r.report_partition = Some("aws-us-gov".into()),
            "in partition aws-us-gov but",
        ),
    ];
    for (lie, says) in cases {
        let mut env = start().await;
        let (_, arn) = active_aws_binding(&mut env).await;
        lie(env.sts.state.roles.lock().unwrap().get_mut(&arn).unwrap());
        let (s, v) = resolve(&mut env.w1, json!({"instance_id": "i-aws"})).await;
        assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
        assert!(message(&v).contains(says), "{v}");
        assert!(v["credentials"].is_null(), "{v}");
        let (s, v) = probe(&mut env, "aws1").await;
        assert_eq!((s, code(&v)), (422, "account_mismatch"), "{v}");
    }
}

/// An enable racing the binding's creation (its routing found no binding yet) never
/// activates it without the probe: the decision is taken again on the record the change is
/// preconditioned on. The role here does not enforce the ExternalId, so a probe would refuse
/// it: an `active` binding could only come from a skipped probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enable_racing_the_bindings_creation_never_skips_its_probe() {
    let mut env = start().await;
    onboard(&mut env.op, "t1").await;
    let arn = format!("arn:aws:iam::{CUSTOMER}:role/Unenforced");
    env.sts.add_role(&arn, role(None));
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..30 {
        let id = format!("race{i}");
        let mut adder = env.pki.client_for("op", &env.daemon.url);
        let mut enabler = env.pki.client_for("op", &env.daemon.url);
        for c in [&mut adder, &mut enabler] {
            let (s, _) = call(c, Method::GET, "/v1/admin/tenants/t1", None).await;
            assert_eq!(s, 200);
        }
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let body = json!({"owner": "team-tests", "purpose": "integration test", "id": id, "tenant": "t1", "provider": "aws_assume_role", "config": {"role_arn": arn}});
        let add = {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                call(&mut adder, Method::POST, "/v1/admin/bindings", Some(body)).await
            })
        };
        let path = format!("/v1/admin/bindings/{id}/enable");
        let enable = tokio::spawn(async move {
            start.wait().await;
            call(&mut enabler, Method::POST, &path, Some(json!({}))).await
        });
        let (s, v) = add.await.unwrap();
        assert_eq!(s, 201, "{v}");
        let (s, v) = enable.await.unwrap();
        *outcomes.entry(format!("{s} {}", code(&v))).or_default() += 1;
        let (_, b) = call(
            &mut env.op,
            Method::GET,
            &format!("/v1/admin/bindings/{id}"),
            None,
        )
        .await;
        assert_eq!(
            b["binding"]["status"], "pending_activation",
            "enabled without its probe (enable answered {s}: {v}): {b}"
        );
        let (s, v) = call(
            &mut env.op,
            Method::DELETE,
            &format!("/v1/admin/bindings/{id}"),
            None,
        )
        .await;
        assert!(s == 200 || s == 204, "{v}");
    }
    println!("enable outcomes while racing the creation: {outcomes:?}");
}

/// A worker that varies its narrowing on every call (each a new cache key, within the mint
/// limits) fills only its own tenant's share of the token cache: another tenant's cached
/// session is still served from the cache, not minted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_s_narrowing_churn_leaves_the_others_cached() {
    let mut env = start_with("max_entries = 8\nmax_entries_per_tenant = 4\n").await;
    active_aws_binding(&mut env).await;
    let external_id = onboard(&mut env.op, "t2").await["external_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let arn2 = format!("arn:aws:iam::{CUSTOMER}:role/OtherTenant");
    env.sts.add_role(&arn2, role(Some(&external_id)));
    let (s, v) = bind_for(&mut env, "t2", "aws2", "i-aws2", &arn2).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = probe(&mut env, "aws2").await;
    assert_eq!(s, 200, "{v}");
    let mut w2 = add_worker(&mut env, "w2", "t2").await;
    let (s, v) = resolve(&mut w2, json!({"instance_id": "i-aws2"})).await;
    assert_eq!(s, 200, "{v}");
    let session = v["credentials"]["SessionToken"].clone();
    // Sessions expiring later than t2's: by expiry alone, t2's would go first.
    let narrow = |n: u32| json!({"policy": {"Statement": {"Effect": "Deny", "Action": format!("s3:Churn{n}"), "Resource": "*"}}});
    for n in 0..20 {
        let (s, v) = resolve(
            &mut env.w1,
            json!({"instance_id": "i-aws", "narrow": narrow(n)}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["cached"], false, "{v}");
    }
    let calls = env.sts.state.calls();
    let (s, v) = resolve(&mut w2, json!({"instance_id": "i-aws2"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["cached"].as_bool(), &v["credentials"]["SessionToken"]),
        (Some(true), &session),
        "another tenant's churn pushed t2's session out of the cache"
    );
    assert_eq!(env.sts.state.calls(), calls);
    // t1's latest sessions are still its own to be served.
    let (_, v) = resolve(
        &mut env.w1,
        json!({"instance_id": "i-aws", "narrow": narrow(19)}),
    )
    .await;
    assert_eq!(v["cached"], true, "{v}");
}
