//! Interop with the real third-party STS implementation `moto` (server mode, trust policies
//! enforced via INITIAL_NO_AUTH_ACTION_COUNT) and the real AWS SDK for Python: boto3,
//! configured only with `credential_process = credbroker client aws-credential-process`,
//! sees the assumed-role identity minted through the daemon.
//!
//! Needs Python with moto[server] and boto3: `bash tests/run` installs them in a venv and sets
//! CREDBROKER_TEST_PYTHON.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use credbroker_tests::sts_shim::StsShim;
use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python() -> PathBuf {
    let py = std::env::var("CREDBROKER_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("CREDBROKER_TEST_PYTHON is not set: run the suite with `bash tests/run`, which installs moto and boto3 in a venv")
    });
    PathBuf::from(py)
}

fn setup_script() -> PathBuf {
    repo_root().join("tests/interop/moto_setup.py")
}

fn py(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(python())
        .arg(setup_script())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "moto_setup.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Starts moto's server on a free port (`no_auth`: INITIAL_NO_AUTH_ACTION_COUNT, after which
/// every call must be authenticated); waits until it listens.
async fn start_moto(no_auth: Option<&str>) -> (Moto, String, u16) {
    let port = free_port();
    let mut cmd = Command::new(python());
    cmd.args([
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(n) = no_auth {
        cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n);
    }
    let moto = Moto(cmd.spawn().unwrap());
    let mut up = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "moto did not start");
    (moto, format!("http://127.0.0.1:{port}"), port)
}

/// A boto3 profile whose `credential_process` is the client mode for `instance`.
fn broker_profile(
    dir: &std::path::Path,
    daemon: &Daemon,
    pki: &TestPki,
    instance: &str,
) -> PathBuf {
    let aws_config = dir.join("aws-config");
    std::fs::write(
        &aws_config,
        format!(
            "[profile broker]\nregion = us-east-1\ncredential_process = {} client aws-credential-process --instance {instance} --server {} --ca {} --cert {} --key {}\n",
            daemon_bin().display(),
            daemon.url,
            pki.dir.join("ca.crt").display(),
            pki.dir.join("w1.crt").display(),
            pki.dir.join("w1.key").display(),
        ),
    )
    .unwrap();
    aws_config
}

/// boto3 with only the broker profile: no AWS credential of its own.
fn whoami(moto_url: &str, aws_config: &std::path::Path) -> String {
    let clean_env = [
        ("AWS_CONFIG_FILE", aws_config.to_str().unwrap()),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/credbroker-test",
        ),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ACCESS_KEY_ID", ""),
        ("AWS_SECRET_ACCESS_KEY", ""),
    ];
    py(&["whoami", moto_url, "broker"], &clean_env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_gets_broker_minted_credentials_from_moto() {
    // vendor user, its policy and key (3) + two roles (2): then every call is authenticated.
    let (moto, moto_url, port) = start_moto(Some("5")).await;
    let vendor: Value = serde_json::from_str(&py(&["vendor", &moto_url], &[])).unwrap();

    let shim = StsShim::start(&format!("127.0.0.1:{port}")).await;
    let (tmp, pki) = setup();
    let extra = format!(
        "[providers.aws_assume_role]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nvendor_account_id = \"123456789012\"\nceiling_file = {:?}\n",
        shim.url,
        repo_root().join("policies/aws.json").display().to_string()
    );
    let env = aws_test_env(
        vendor["access_key_id"].as_str().unwrap(),
        vendor["secret_access_key"].as_str().unwrap(),
    );
    let daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            extra_toml: extra,
            env,
            ..Default::default()
        },
    );
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let (s, facts) = call(
        &mut op,
        Method::POST,
        "/v1/admin/onboard/aws_assume_role",
        Some(json!({"tenant": "t1"})),
    )
    .await;
    assert_eq!(s, 200, "{facts}");
    let external_id = facts["external_id"].as_str().unwrap();
    let roles: Value = serde_json::from_str(&py(&["roles", &moto_url, external_id], &[])).unwrap();
    let role_arn = roles["role_arn"].as_str().unwrap();

    let (s, v) = call(&mut op, Method::POST, "/v1/admin/bindings", Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "moto", "tenant": "t1", "provider": "aws_assume_role", "config": {"role_arn": role_arn}}))).await;
    assert_eq!(s, 201, "{v}");
    call(
        &mut op,
        Method::POST,
        "/v1/admin/instances",
        Some(json!({"id": "i-moto", "tenant": "t1", "binding": "moto", "connector_kind": "aws"})),
    )
    .await;

    // Plain moto accepts AssumeRole without the ExternalId even though the role requires it:
    // the activation probe catches that and refuses.
    shim.enforce.store(false, Ordering::SeqCst);
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/moto/probe",
        Some(json!({})),
    )
    .await;
    assert_eq!((s, code(&v)), (422, "external_id_not_enforced"), "{v}");

    // With the real rule restored in front of moto, activation passes.
    shim.enforce.store(true, Ordering::SeqCst);
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/moto/probe",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    // boto3 configured only with credential_process pointing at the client mode.
    let aws_config = broker_profile(tmp.path(), &daemon, &pki, "i-moto");
    let arn = whoami(&moto_url, &aws_config);
    assert_eq!(
        arn,
        "arn:aws:sts::123456789012:assumed-role/CredbrokerAccess/cb.t1.i-moto"
    );
    let minted = daemon
        .audit_records()
        .into_iter()
        .filter(|r| r["instance"] == "i-moto" && r["outcome"] == "allowed")
        .count();
    assert!(minted >= 1);

    // A role that trusts the vendor with another tenant's ExternalId: moto denies ours.
    let wrong = roles["wrong_role_arn"].as_str().unwrap();
    let (s, v) = call(&mut op, Method::POST, "/v1/admin/bindings", Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "moto-wrong", "tenant": "t1", "provider": "aws_assume_role", "config": {"role_arn": wrong}}))).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/moto-wrong/probe",
        Some(json!({})),
    )
    .await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    drop(moto);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_gets_web_identity_credentials_from_moto_with_no_aws_credential() {
    // Unsigned calls: moto without INITIAL_NO_AUTH_ACTION_COUNT.
    let (moto, moto_url, port) = start_moto(None).await;
    let shim = StsShim::start(&format!("127.0.0.1:{port}")).await;
    let extra = format!(
        "[providers.aws_assume_role]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nvendor_account_id = \"123456789012\"\nceiling_file = {:?}\n",
        shim.url,
        repo_root().join("policies/aws.json").display().to_string()
    );
    let mut env = credbroker_tests::issuer_env::IssuerEnv::start_with_env(
        3600,
        300,
        &extra,
        aws_env_without_credentials(),
    )
    .await;
    let (s, v) = call(&mut env.op, Method::POST, "/v1/admin/bindings", Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "moto-wi", "tenant": "t1", "provider": "aws_assume_role", "config": {"role_arn": "arn:aws:iam::123456789012:role/CredbrokerAccess", "model": "web_identity"}}))).await;
    assert_eq!(s, 201, "{v}");
    let subject = credbroker_tests::issuer_env::subject_of(&v);
    let host = env.issuer.trim_start_matches("https://").to_owned();
    let role: Value =
        serde_json::from_str(&py(&["web_role", &moto_url, &host, &subject], &[])).unwrap();
    assert_eq!(
        role["role_arn"],
        "arn:aws:iam::123456789012:role/CredbrokerAccess"
    );
    env.add_instance("i-moto", "t1", "moto-wi").await;

    // moto evaluates no trust condition: it hands out credentials for any subject, so the
    // probe — which also tries a foreign subject — refuses to activate.
    let (s, v) = env.probe("moto-wi").await;
    assert_eq!((s, code(&v)), (422, "subject_not_enforced"), "{v}");
    // With the role's sub condition enforced in front of moto, activation passes.
    *shim.web_subject.lock().unwrap() = Some(subject.clone());
    let (s, v) = env.probe("moto-wi").await;
    assert_eq!(s, 200, "{v}");

    let aws_config = broker_profile(env.tmp.path(), &env.daemon, &env.pki, "i-moto");
    let arn = whoami(&moto_url, &aws_config);
    assert_eq!(
        arn,
        "arn:aws:sts::123456789012:assumed-role/CredbrokerAccess/cb.t1.i-moto"
    );
    drop(moto);
}
