//! `gcp_wif` end to end: the daemon's own OIDC issuer signs, the fake GCP STS fetches our
//! discovery document and JWKS from the public listener (or holds them inline), verifies the
//! assertion and the customer's attribute condition, and IAM Credentials impersonates the
//! service account. Activation, minting with cache and single flight, the audit record of
//! each assertion, every error mapped, and the attacks of THREATS.md's actors.

use credbroker_tests::fake_gcp::{principal, principal_set, ProviderSpec};
use credbroker_tests::issuer_env::{subject_of, IssuerEnv, POOL, PROJECT, SA};
use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

const READ_ONLY: &str = "https://www.googleapis.com/auth/cloud-platform.read-only";
const FULL: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Binding `g1` of t1, trusted by the customer as the shipped script sets it up, activated,
/// with instance `ig1`. Returns the binding's subject.
async fn activated(env: &mut IssuerEnv, inline: bool) -> String {
    let (s, v) = env
        .add_gcp_binding("g1", "t1", POOL, SA, IssuerEnv::both_scopes())
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["binding"]["status"], "pending_activation", "{v}");
    let subject = subject_of(&v);
    env.customer_trusts(POOL, SA, &subject, true, inline).await;
    let (s, v) = env.probe("g1").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["binding"]["status"], "active", "{v}");
    assert_eq!(
        v["binding"]["trust_facts"]["foreign_subject_refused_at"], "sts",
        "{v}"
    );
    env.add_instance("ig1", "t1", "g1").await;
    subject
}

fn last_sts_claims(env: &IssuerEnv) -> Value {
    env.gcp
        .requests()
        .into_iter()
        .rev()
        .find_map(|r| r.claims)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_end_to_end_with_cache_single_flight_and_audit() {
    let mut env = IssuerEnv::start(3600, 300, "").await;
    let subject = activated(&mut env, false).await;
    // The subject is the broker's: cb- + 40 alphanumerics, random.
    assert_eq!(subject.len(), 43);
    assert!(subject.starts_with("cb-"));
    assert!(subject[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
    // The fake fetched our discovery document and JWKS over TLS from the public listener.
    assert!(env.gcp.jwks_fetches() >= 1);

    let (sts0, iam0) = (env.gcp.sts_calls(), env.gcp.iam_calls());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut w = env.pki.client_for("w1", &env.daemon.url);
        tasks.push(tokio::spawn(async move {
            resolve(&mut w, json!({"instance_id": "ig1"})).await
        }));
    }
    let mut tokens = Vec::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["kind"], "gcp_access_token", "{v}");
        assert_eq!(v["details"]["service_account"], SA, "{v}");
        tokens.push(
            v["credentials"]["access_token"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 1, "one token for all eight");
    assert_eq!(env.gcp.sts_calls() - sts0, 1, "single flight: one exchange");
    assert_eq!(
        env.gcp.iam_calls() - iam0,
        1,
        "single flight: one impersonation"
    );
    let info = env
        .gcp
        .token_info(&tokens[0])
        .expect("a token the fake issued");
    assert_eq!(info.service_account, SA);
    let mut scopes = info.scopes.clone();
    scopes.sort();
    assert_eq!(
        scopes,
        vec![FULL.to_owned(), READ_ONLY.to_owned()],
        "the ceiling's scopes"
    );

    // What the broker sent: our issuer, the binding's subject, the provider's audience.
    let claims = last_sts_claims(&env);
    assert_eq!(claims["iss"], env.issuer.as_str());
    assert_eq!(claims["sub"], subject.as_str());
    assert_eq!(
        claims["aud"],
        format!("https://iam.googleapis.com/projects/{PROJECT}/locations/global/workloadIdentityPools/{POOL}/providers/{POOL}")
    );
    let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(ttl, 300, "assertions live token_ttl_s");

    // The minting resolve's one audit record names the assertion (jti, sub), never a token.
    let records = env.daemon.audit_records();
    let minted: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "resolve" && r["cached"] == false)
        .collect();
    assert_eq!(minted.len(), 1, "{minted:?}");
    let detail = minted[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("jti={}", claims["jti"].as_str().unwrap()))
            && detail.contains(&format!("sub={subject}")),
        "{detail}"
    );
    let cached = records
        .iter()
        .filter(|r| r["action"] == "resolve" && r["cached"] == true)
        .count();
    assert_eq!(cached, 7);
    // The probe's record names both of its assertions: the binding's and the foreign one.
    let probe = records
        .iter()
        .find(|r| r["action"] == "binding.probe")
        .unwrap();
    let pd = probe["detail"].as_str().unwrap();
    // …the second a random subject of the same shape (a `cb-` prefix condition fails it).
    assert_eq!(pd.matches("assertion jti=").count(), 2, "{pd}");
    assert_eq!(pd.matches(&format!("sub={subject}")).count(), 1, "{pd}");
    assert_eq!(pd.matches("sub=cb-").count(), 2, "{pd}");
    let log = audit_log_text(&env.daemon.data_dir);
    for t in env.gcp.state.subject_tokens.lock().unwrap().iter() {
        assert!(!log.contains(t.as_str()), "an assertion in the audit log");
    }
    assert!(
        !log.contains(&tokens[0]),
        "an access token in the audit log"
    );
    assert!(!env.daemon.logs().contains(&tokens[0]));

    // Narrowing within the ceiling mints a token with fewer scopes; beyond it is refused.
    let mut w1 = env.pki.client_for("w1", &env.daemon.url);
    let (s, v) = resolve(
        &mut w1,
        json!({"instance_id": "ig1", "narrow": {"scopes": [READ_ONLY]}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let narrowed = env
        .gcp
        .token_info(v["credentials"]["access_token"].as_str().unwrap())
        .unwrap();
    assert_eq!(narrowed.scopes, vec![READ_ONLY.to_owned()]);
    let (s, v) = resolve(
        &mut w1,
        json!({"instance_id": "ig1", "narrow": {"scopes": ["https://www.googleapis.com/auth/devstorage.full_control"]}}),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "narrowing_exceeds_ceiling"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_that_does_not_pin_the_subject_is_refused_at_probe() {
    let mut env = IssuerEnv::start(3600, 300, "").await;
    // The customer's provider has no attribute condition and the grant names every
    // identity of the pool: any assertion of our issuer — any tenant's — would pass.
    let (s, v) = env
        .add_gcp_binding("open", "t1", "openpool", SA, Value::Null)
        .await;
    assert_eq!(s, 201, "{v}");
    let subject = subject_of(&v);
    let source = env.jwks_source(false).await;
    env.gcp.add_provider(ProviderSpec::new(
        PROJECT,
        "openpool",
        "openpool",
        &env.issuer,
        source,
    ));
    env.gcp
        .grant_workload_identity_user(SA, &principal_set(PROJECT, "openpool"));
    let (s, v) = env.probe("open").await;
    assert_eq!((s, code(&v)), (422, "subject_not_enforced"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(&subject),
        "{v}"
    );
    let (_, b) = call(&mut env.op, Method::GET, "/v1/admin/bindings/open", None).await;
    assert_eq!(b["binding"]["status"], "pending_activation", "{b}");

    // Without the condition but with the grant for exactly our principal, the foreign
    // subject is refused at IAM: the probe passes and says where.
    env.gcp
        .revoke_workload_identity_user(SA, &principal_set(PROJECT, "openpool"));
    env.gcp
        .grant_workload_identity_user(SA, &principal(PROJECT, "openpool", &subject));
    let (s, v) = env.probe("open").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["binding"]["trust_facts"]["foreign_subject_refused_at"], "iam",
        "{v}"
    );
    // A binding without a ceiling of its own gets the platform's default scopes only.
    env.add_instance("iopen", "t1", "open").await;
    let mut w1 = env.pki.client_for("w1", &env.daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "iopen"})).await;
    assert_eq!(s, 200, "{v}");
    let info = env
        .gcp
        .token_info(v["credentials"]["access_token"].as_str().unwrap())
        .unwrap();
    assert_eq!(info.scopes, vec![READ_ONLY.to_owned()]);
    let (s, v) = resolve(
        &mut w1,
        json!({"instance_id": "iopen", "narrow": {"scopes": [FULL]}}),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "narrowing_exceeds_ceiling"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_jwks_and_every_upstream_error_mapped() {
    let mut env = IssuerEnv::start(3600, 300, "").await;
    let subject = activated(&mut env, true).await;
    assert_eq!(
        env.gcp.jwks_fetches(),
        0,
        "inline JWKS: GCP never reaches us"
    );
    let mut w1 = env.pki.client_for("w1", &env.daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "ig1"})).await;
    assert_eq!(s, 200, "{v}");
    // `expires_in` as a string is read as well as a number.
    env.gcp.set_expires_in_as_string(true);
    let narrow = |full: bool| {
        let scopes = if full {
            json!([FULL])
        } else {
            json!([READ_ONLY])
        };
        json!({"instance_id": "ig1", "narrow": {"scopes": scopes}})
    };
    let (s, v) = resolve(&mut w1, narrow(false)).await;
    assert_eq!(s, 200, "{v}");
    // A Google outage: 503 from STS → provider_unavailable (the cached token still served).
    env.gcp
        .fail_next_on(credbroker_tests::fake_gcp::Endpoint::Sts, 1, 503, "{}");
    let (s, v) = resolve(&mut w1, narrow(true)).await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    let (s, _) = resolve(&mut w1, json!({"instance_id": "ig1"})).await;
    assert_eq!(s, 200, "cached token served during the outage");
    // The customer removes the grant: 403 at IAM → provider_denied, binding trust_broken.
    env.gcp
        .revoke_workload_identity_user(SA, &principal(PROJECT, POOL, &subject));
    let (s, v) = resolve(&mut w1, narrow(true)).await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("PERMISSION_DENIED"),
        "{v}"
    );
    let mut flagged = false;
    for _ in 0..50 {
        let (_, b) = call(&mut env.op, Method::GET, "/v1/admin/bindings/g1", None).await;
        if b["binding"]["trust_broken"] == true {
            flagged = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(flagged, "the binding is flagged trust_broken");
    // The customer disables the provider: invalid_target → provider_denied.
    env.gcp
        .grant_workload_identity_user(SA, &principal(PROJECT, POOL, &subject));
    let resource = format!(
        "projects/{PROJECT}/locations/global/workloadIdentityPools/{POOL}/providers/{POOL}"
    );
    env.gcp.update_provider(&resource, |p| p.disabled = true);
    let (s, v) = env.probe("g1").await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid_target"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_reach_another_tenants_trust() {
    let mut env = IssuerEnv::start(3600, 300, "").await;
    let subject = activated(&mut env, false).await;
    // A second tenant's binding naming the same service account: refused (one account, one
    // tenant).
    let (s, v) = env.add_gcp_binding("g2", "t2", POOL, SA, Value::Null).await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    // Naming the same pool with another service account the customer granted to t1's
    // subject only: t2's assertion carries t2's subject, which the condition refuses.
    let other_sa = "credbroker-other@acme-prod.iam.gserviceaccount.com";
    env.gcp
        .grant_workload_identity_user(other_sa, &principal(PROJECT, POOL, &subject));
    let (s, v) = env
        .add_gcp_binding("g2", "t2", POOL, other_sa, Value::Null)
        .await;
    assert_eq!(s, 201, "{v}");
    assert_ne!(subject_of(&v), subject);
    let (s, v) = env.probe("g2").await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("attribute condition"),
        "{v}"
    );
    // Nobody supplies a subject: not an operator at binding add.
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/bindings",
        Some(
            json!({"owner": "team-tests", "purpose": "integration test", "id": "g3", "tenant": "t2", "provider": "gcp_wif", "config": {
            "project_number": PROJECT, "pool_id": POOL, "provider_id": POOL,
            "service_account": "credbroker-third@acme-prod.iam.gserviceaccount.com",
            "broker": {"subject": subject}}}),
        ),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
    // A worker of t1 asking for t2's instance is refused before anything is minted.
    env.add_instance("ig2", "t2", "g2").await;
    let sts = env.gcp.sts_calls();
    let mut w1 = env.pki.client_for("w1", &env.daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "ig2"})).await;
    assert_eq!((s, code(&v)), (404, "unknown_instance"), "{v}");
    assert_eq!(env.gcp.sts_calls(), sts);
    // A removed binding's subject is never issued again: the same id gets a new one.
    let (s, v) = call(&mut env.op, Method::DELETE, "/v1/admin/instances/ig1", None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(&mut env.op, Method::DELETE, "/v1/admin/bindings/g1", None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = env.add_gcp_binding("g1", "t1", POOL, SA, Value::Null).await;
    assert_eq!(s, 201, "{v}");
    assert_ne!(subject_of(&v), subject, "a subject is never reissued");
    // …and the re-created binding cannot activate on the old trust.
    let (s, v) = env.probe("g1").await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_auth_gets_tokens_through_client_gcp_metadata() {
    let mut env = IssuerEnv::start(3600, 300, "").await;
    activated(&mut env, false).await;
    let mut w1 = env.pki.client_for("w1", &env.daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "ig1"})).await;
    assert_eq!(s, 200, "{v}");
    let token = v["credentials"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let worker_env = [
        ("CREDBROKER_SERVER", env.daemon.url.clone()),
        (
            "CREDBROKER_CA",
            env.pki.dir.join("ca.crt").display().to_string(),
        ),
        (
            "CREDBROKER_WORKER_CERT",
            env.pki.dir.join("w1.crt").display().to_string(),
        ),
        (
            "CREDBROKER_WORKER_KEY",
            env.pki.dir.join("w1.key").display().to_string(),
        ),
    ];
    // `client token` prints the bearer.
    let out = std::process::Command::new(daemon_bin())
        .args(["client", "token", "--instance", "ig1"])
        .envs(worker_env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), token);
    // Its exit status says what happened (README "Exit status"): 1 the broker refused, 3
    // the broker could not be reached.
    let out = std::process::Command::new(daemon_bin())
        .args(["client", "token", "--instance", "nowhere"])
        .envs(worker_env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("resolve refused: unknown_instance"), "{err}");
    assert!(out.stdout.is_empty());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = std::process::Command::new(daemon_bin())
        .args(["client", "token", "--instance", "ig1"])
        .envs(worker_env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("CREDBROKER_SERVER", &nobody)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("cannot reach the broker"), "{err}");

    let log_path = env.daemon.data_dir.join("gcp-metadata.log");
    let (server, host) = metadata_server_logging(
        &worker_env,
        &[],
        std::fs::File::create(&log_path).unwrap().into(),
    );
    let script = r#"
import json, urllib.request
import google.auth.compute_engine
import google.auth.transport.requests
creds = google.auth.compute_engine.Credentials()
creds.refresh(google.auth.transport.requests.Request())
# Without Metadata-Flavor, the endpoint refuses (as GCE does).
import os
try:
    urllib.request.urlopen("http://" + os.environ["GCE_METADATA_HOST"] + "/computeMetadata/v1/instance/service-accounts/default/token")
    plain = "served"
except urllib.error.HTTPError as e:
    plain = e.code
# A page that rebound its own name to 127.0.0.1 sends that name as Host: refused.
try:
    urllib.request.urlopen(urllib.request.Request(
        "http://" + os.environ["GCE_METADATA_HOST"] + "/computeMetadata/v1/instance/service-accounts/default/token",
        headers={"Metadata-Flavor": "Google", "Host": "evil.example"}))
    rebound = "served"
except urllib.error.HTTPError as e:
    rebound = e.code
# A page served from the endpoint's own address (or rebound to it): the browser says so.
try:
    urllib.request.urlopen(urllib.request.Request(
        "http://" + os.environ["GCE_METADATA_HOST"] + "/computeMetadata/v1/instance/service-accounts/default/token",
        headers={"Metadata-Flavor": "Google", "Sec-Fetch-Site": "same-origin"}))
    browser = "served"
except urllib.error.HTTPError as e:
    browser = e.code
print(json.dumps({"token": creds.token, "email": creds.service_account_email, "plain": plain, "rebound": rebound, "browser": browser}))
"#;
    let out = std::process::Command::new(test_python())
        .args(["-c", script])
        .env("GCE_METADATA_HOST", &host)
        .env("GCE_METADATA_IP", &host)
        .output()
        .unwrap();
    // Another local user's process reaches loopback too: it is refused, unless allowed.
    assert_eq!(token_status_as(65534, &host), "403");
    // A client on a dual-stack socket (Java's, .NET's) is found in the IPv6 table: served
    // when it is this user's, refused when another's.
    assert_eq!(token_status_from(0, &host, true), "200");
    assert_eq!(token_status_from(65534, &host, true), "403");
    // And said in the endpoint's log (throttled: the first refusal at least).
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("a local process whose user is not allowed (--allow-uid) asked for a token"),
        "{log}"
    );
    // Nor can it hold the endpoint: its connections that send nothing (more than the 16 the
    // endpoint serves at once) take no slot, and the endpoint's own user is still served.
    let mut holder = KillOnDrop(
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args([
                "/bin/bash",
                "-c",
                // A connection the endpoint resets (refusals beyond the 16 it answers at
                // once are reset) may fail the next connect: the holder goes on regardless.
                "h=${1%:*}; p=${1##*:}; n=0; for i in $(seq 200); do exec {fd}<>\"/dev/tcp/$h/$p\" 2>/dev/null && n=$((n+1)); done; echo held $n; sleep 60",
                "holder",
                &host,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let held: usize = line
        .trim()
        .strip_prefix("held ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(held > 16, "only {held} connections were made");
    assert_eq!(token_status_as(0, &host), "200");
    drop(holder);
    drop(server);
    let (allowing, allowing_host) = metadata_server(&worker_env, &["--allow-uid", "65534"]);
    assert_eq!(token_status_as(65534, &allowing_host), "200");
    drop(allowing);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        got["token"],
        token.as_str(),
        "google-auth got the broker's token"
    );
    assert_eq!(got["email"], SA);
    assert_eq!(got["plain"], 403);
    assert_eq!(got["rebound"], 403);
    assert_eq!(got["browser"], 403);
}

/// `client gcp-metadata` for instance ig1 on a free loopback port, with `worker_env` and
/// `extra` arguments: the running server and the address it printed.
fn metadata_server(worker_env: &[(&str, String)], extra: &[&str]) -> (KillOnDrop, String) {
    metadata_server_logging(worker_env, extra, std::process::Stdio::null())
}

/// As [`metadata_server`], its standard error (its log) to `stderr`.
fn metadata_server_logging(
    worker_env: &[(&str, String)],
    extra: &[&str],
    stderr: std::process::Stdio,
) -> (KillOnDrop, String) {
    let mut server = KillOnDrop(
        std::process::Command::new(daemon_bin())
            .args([
                "client",
                "gcp-metadata",
                "--instance",
                "ig1",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .envs(worker_env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let host = line
        .trim()
        .strip_prefix("GCE_METADATA_HOST=")
        .unwrap()
        .to_owned();
    (server, host)
}

/// The status `client gcp-metadata` at `host` answers a token request sent by a process of
/// user `uid` (curl under setpriv: the suite runs as root).
fn token_status_as(uid: u32, host: &str) -> String {
    token_status_from(uid, host, false)
}

/// As [`token_status_as`], from a dual-stack socket when `mapped` (as the JVM and .NET
/// connect: to `::ffff:127.0.0.1`, their end in the kernel's IPv6 table).
fn token_status_from(uid: u32, host: &str, mapped: bool) -> String {
    let uid = uid.to_string();
    let target = if mapped {
        let port = host.rsplit(':').next().unwrap();
        format!("[::ffff:127.0.0.1]:{port}")
    } else {
        host.to_owned()
    };
    let out = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "-H",
            "Metadata-Flavor: Google",
            "-H",
            &format!("Host: {host}"),
            &format!("http://{target}/computeMetadata/v1/instance/service-accounts/default/token"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A worker that hangs up while the mint its resolve started is running (an HTTP/2 reset,
/// or a closed connection) leaves no unaudited use of the broker's issuer: the mint goes on
/// (its token is cached) and the resolve's record is written without it, naming the
/// assertion the exchange carried (`error_code` `client_closed`). Without it, a jti seen in
/// the customer's cloud logs would be missing from the export, as an attacker's would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolve_whose_client_hangs_up_mid_mint_is_still_audited() {
    let mut env = IssuerEnv::start(3600, 300, "").await;
    activated(&mut env, false).await;
    env.gcp.set_delay_ms(700);
    let sts0 = env.gcp.sts_calls();
    resolve_and_hang_up(&env, "hung-up").await;
    // The mint finishes (STS, then IAM, each held 700 ms) and its record is written.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let record = loop {
        let found = env
            .daemon
            .audit_records()
            .into_iter()
            .find(|r| r["action"] == "resolve" && r["job_id"] == "hung-up");
        if let Some(r) = found {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no record of the resolve whose client hung up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(env.gcp.sts_calls() - sts0, 1, "the exchange ran");
    let jti = last_sts_claims(&env)["jti"].as_str().unwrap().to_owned();
    assert_eq!(record["outcome"], "failed", "{record}");
    assert_eq!(record["error_code"], "client_closed", "{record}");
    assert_eq!(record["tenant"], "t1", "{record}");
    assert_eq!(record["actor"], "worker:w1", "{record}");
    let detail = record["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("jti={jti}")), "{detail}");
    assert!(
        record.get("token_fingerprint").is_none_or(Value::is_null),
        "nothing was handed out: {record}"
    );
    // What it minted was cached: the next resolve is served without an exchange.
    env.gcp.set_delay_ms(0);
    let mut w = env.pki.client_for("w1", &env.daemon.url);
    let (s, v) = resolve(&mut w, json!({"instance_id": "ig1"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["cached"], true, "{v}");
    assert_eq!(env.gcp.sts_calls() - sts0, 1);
    // One record for that resolve, not two.
    let records = env.daemon.audit_records();
    assert_eq!(
        records.iter().filter(|r| r["job_id"] == "hung-up").count(),
        1
    );
}

/// As worker w1, asks for `ig1` with `job_id` over HTTP/2 and hangs up 300 ms later
/// (the stream reset, the connection closed), before the answer.
async fn resolve_and_hang_up(env: &IssuerEnv, job_id: &str) {
    let addr = env.daemon.url.trim_start_matches("https://").to_owned();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = client_tls(&env.pki, "w1", b"h2")
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri("https://localhost/v1/resolve")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            json!({"instance_id": "ig1", "job_id": job_id}).to_string(),
        )))
        .unwrap();
    let answer = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        sender.send_request(req),
    )
    .await;
    assert!(
        answer.is_err(),
        "answered before the upstream did: {answer:?}"
    );
    // The request is reset and the connection closed.
    drop(sender);
    conn.abort();
}

/// The daemon stopped (SIGTERM) while such a mint still runs: it waits for the mint to end
/// and writes the resolve's record before closing the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_for_the_record_of_a_resolve_whose_client_hung_up() {
    let mut env = IssuerEnv::start(3600, 300, "").await;
    activated(&mut env, false).await;
    env.gcp.set_delay_ms(1000);
    resolve_and_hang_up(&env, "hung-up-at-stop").await;
    env.daemon.stop();
    let records = env.daemon.audit_records();
    let record = records
        .iter()
        .find(|r| r["job_id"] == "hung-up-at-stop")
        .expect("the record of the resolve whose client hung up, written before the stop");
    assert_eq!(record["error_code"], "client_closed", "{record}");
}
