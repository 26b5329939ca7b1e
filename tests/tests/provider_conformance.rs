//! The provider conformance suite: every provider in the catalog, built from its settings
//! section the way the daemon builds it and run against its local fake, must keep the
//! promises the core relies on.
//!
//! - The ceiling mode it declares holds: `upstream` — an unnarrowed mint sends exactly the
//!   binding's ceiling and a narrowed one exactly the narrowing (checked on the fake's
//!   recorded request); `local` — the credential is cut to the ceiling / narrowing; `fixed`
//!   — any `narrow` is refused; `verified` — a credential beyond the ceiling is refused.
//! - Narrowing beyond the ceiling is refused before any upstream call.
//! - Arbitrary configuration, ceiling and narrowing JSON never panics.
//! - The credential scope it declares is the truth: a credential that does not name the
//!   instance (or the worker) is requested identically for every instance (worker), and one
//!   that does is not.
//!
//! A provider without a harness here fails the suite: registering it in the catalog is what
//! brings it under these checks.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use credbroker_providers::{
    Availability, BindingContext, CeilingEnforcement, IssuedCredential, MintRequest, Provider,
    ProviderDescriptor, ProviderError, SecretFields, CATALOG,
};
use credbroker_tests::fake_atlassian_dc::FakeAtlassianDc;
use credbroker_tests::fake_entra::FakeEntra;
use credbroker_tests::fake_forge::{self, FakeForge};
use credbroker_tests::fake_github::{AppKey, FakeGithub, FakeInstallation};
use credbroker_tests::fake_servicenow::FakeServiceNow;
use credbroker_tests::fake_sts::{FakeRole, FakeSts};
use credbroker_tests::{aws_test_env, repo_root};

#[path = "provider_conformance/gcp.rs"]
mod gcp;

/// A provider under test with its fake.
#[async_trait]
trait Harness: Send {
    fn provider(&self) -> Arc<dyn Provider>;
    /// A valid binding: (config, ceiling), the ceiling strictly narrower than the platform's.
    fn binding(&self) -> (Value, Value);
    /// A narrowing inside the binding's ceiling.
    fn within(&self) -> Value;
    /// A well-formed narrowing beyond the binding's ceiling.
    fn beyond(&self) -> Value;
    /// The binding's opened secret, for providers that need one.
    fn secret(&self) -> Option<SecretFields> {
        None
    }
    /// Upstream calls so far.
    fn calls(&self) -> usize;
    /// The scope the last upstream request asked for, in a provider-neutral form; `None` for
    /// providers without an upstream.
    fn requested_scope(&self) -> Option<Value>;
    /// The last upstream request as a whole (to compare two mints).
    fn last_request(&self) -> Option<Value>;
    /// What `requested_scope` must be for an unnarrowed mint and for `within()`.
    fn expected_scopes(&self) -> (Value, Value);
    /// The scope a credential carries, for `local` and `verified` providers.
    fn issued_scope(&self, _credential: &IssuedCredential) -> Value {
        Value::Null
    }
    /// `verified` providers: makes the upstream issue credentials beyond the binding's
    /// ceiling (`true`) or behave again (`false`).
    fn exceed_upstream(&self, _on: bool) {}
    /// The issuer signing the provider's assertions, for providers that federate with the
    /// broker's own issuer.
    fn signer(&self) -> Option<&dyn credbroker_providers::AssertionSigner> {
        None
    }
}

async fn build(descriptor: &ProviderDescriptor, section: &str, base: &Path) -> Arc<dyn Provider> {
    match descriptor.availability {
        Availability::Builtin(make) => make(),
        Availability::Configured(build) => {
            let section: toml::Value = toml::from_str(section).unwrap();
            build(section, base).await.unwrap()
        }
    }
}

// ---- aws_assume_role ------------------------------------------------------------------

struct Aws {
    provider: Arc<dyn Provider>,
    sts: FakeSts,
    _dir: tempfile::TempDir,
}

const CUSTOMER_ROLE: &str = "arn:aws:iam::222222222222:role/CredbrokerAccess";
const EXTERNAL_ID: &str = "ExternalIdForConformance0123456789abcdef";

impl Aws {
    async fn start(d: &ProviderDescriptor) -> Aws {
        for (k, v) in aws_test_env("AKIAVENDORTESTKEY000", "vendor-test-secret") {
            std::env::set_var(k, v);
        }
        let sts = FakeSts::start("111111111111").await;
        sts.add_role(
            CUSTOMER_ROLE,
            FakeRole {
                account: "222222222222".into(),
                trusted_account: "111111111111".into(),
                external_id: Some(EXTERNAL_ID.into()),
                max_session_s: 3600,
                report_account: None,
                report_role: None,
                any_external_id: false,
                ..FakeRole::default()
            },
        );
        // A relative ceiling_file, resolved against the directory the section came from.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::copy(
            repo_root().join("policies/aws.json"),
            dir.path().join("policies/aws.json"),
        )
        .unwrap();
        let section = format!(
            "region = \"us-east-1\"\nendpoint_url = \"{}\"\nvendor_account_id = \"111111111111\"\nattempt_timeout_ms = 2000\nmax_attempts = 1\nceiling_file = \"policies/aws.json\"\n",
            sts.url
        );
        let provider = build(d, &section, dir.path()).await;
        Aws {
            provider,
            sts,
            _dir: dir,
        }
    }
}

fn aws_scope(form: &std::collections::HashMap<String, String>) -> Value {
    let mut arns: Vec<&String> = (1..=10)
        .filter_map(|i| form.get(&format!("PolicyArns.member.{i}.arn")))
        .collect();
    arns.sort();
    let policy: Value = form
        .get("Policy")
        .map(|p| serde_json::from_str(p).unwrap())
        .unwrap_or(Value::Null);
    json!({ "policy_arns": arns, "policy": policy })
}

#[async_trait]
impl Harness for Aws {
    fn provider(&self) -> Arc<dyn Provider> {
        self.provider.clone()
    }
    fn binding(&self) -> (Value, Value) {
        (
            json!({"role_arn": CUSTOMER_ROLE, "broker": {"external_id": EXTERNAL_ID}}),
            json!({"managed_policy_arns": ["arn:${Partition}:iam::aws:policy/SecurityAudit"],
                   "actions": ["ec2:Describe*", "s3:ListAllMyBuckets"]}),
        )
    }
    fn within(&self) -> Value {
        json!({"policy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["ec2:DescribeInstances"], "Resource": "*"}]}})
    }
    fn beyond(&self) -> Value {
        json!({"policy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["iam:ListRoles"], "Resource": "*"}]}})
    }
    fn calls(&self) -> usize {
        self.sts.state.calls()
    }
    fn requested_scope(&self) -> Option<Value> {
        Some(aws_scope(&self.sts.state.last_request()))
    }
    fn last_request(&self) -> Option<Value> {
        Some(json!(self.sts.state.last_request()))
    }
    fn expected_scopes(&self) -> (Value, Value) {
        (
            json!({"policy_arns": ["arn:aws:iam::aws:policy/SecurityAudit"],
                   "policy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["ec2:Describe*", "s3:ListAllMyBuckets"], "Resource": "*"}]}}),
            json!({"policy_arns": [],
                   "policy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["ec2:DescribeInstances"], "Resource": "*"}]}}),
        )
    }
}

// ---- github_app -------------------------------------------------------------------------

struct Github {
    provider: Arc<dyn Provider>,
    gh: FakeGithub,
    _dir: tempfile::TempDir,
}

const INSTALLATION: u64 = 1001;

impl Github {
    async fn start(d: &ProviderDescriptor) -> Github {
        let gh = FakeGithub::start(4242).await;
        let key = AppKey::generate();
        gh.register_key("A", &key);
        let policy: Value = serde_json::from_slice(
            &std::fs::read(repo_root().join("policies/github.json")).unwrap(),
        )
        .unwrap();
        gh.install(
            INSTALLATION,
            FakeInstallation {
                login: "acme-org".into(),
                permissions: policy["permissions"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect(),
                repositories: vec!["api".into(), "web".into(), "infra".into()],
                suspended: false,
            },
        );
        // Every path relative: resolved against the directory the section came from.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("gh")).unwrap();
        std::fs::write(
            dir.path().join("gh/webhook.secret"),
            "conformance-webhook-secret-0123",
        )
        .unwrap();
        std::fs::set_permissions(
            dir.path().join("gh/webhook.secret"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(dir.path().join("gh/app.pem"), &key.private_pem).unwrap();
        std::fs::set_permissions(
            dir.path().join("gh/app.pem"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::copy(
            repo_root().join("policies/github.json"),
            dir.path().join("gh/github.json"),
        )
        .unwrap();
        let section = format!(
            "app_id = 4242\napi_base_url = \"{}\"\ninstall_url = \"https://github.com/apps/x/installations/new\"\nwebhook_secret_file = \"gh/webhook.secret\"\nprivate_key_file = \"./gh/app.pem\"\nceiling_file = \"gh/github.json\"\ntimeout_ms = 3000\n",
            gh.url
        );
        let provider = build(d, &section, dir.path()).await;
        Github {
            provider,
            gh,
            _dir: dir,
        }
    }

    fn token_requests(&self) -> Vec<Value> {
        self.gh
            .state
            .requests_to("/access_tokens")
            .into_iter()
            .map(|r| r.body)
            .collect()
    }
}

#[async_trait]
impl Harness for Github {
    fn provider(&self) -> Arc<dyn Provider> {
        self.provider.clone()
    }
    fn binding(&self) -> (Value, Value) {
        (
            json!({"installation_id": INSTALLATION}),
            json!({"permissions": {"contents": "read", "metadata": "read", "issues": "read"},
                   "repositories": ["api", "web"]}),
        )
    }
    fn within(&self) -> Value {
        json!({"permissions": {"contents": "read"}, "repositories": ["api"]})
    }
    fn beyond(&self) -> Value {
        json!({"permissions": {"contents": "write"}})
    }
    fn calls(&self) -> usize {
        self.gh.state.requests.lock().unwrap().len()
    }
    fn requested_scope(&self) -> Option<Value> {
        self.token_requests().last().cloned()
    }
    fn last_request(&self) -> Option<Value> {
        self.token_requests().last().cloned()
    }
    fn expected_scopes(&self) -> (Value, Value) {
        (
            json!({"permissions": {"contents": "read", "issues": "read", "metadata": "read"},
                   "repositories": ["api", "web"]}),
            json!({"permissions": {"contents": "read"}, "repositories": ["api"]}),
        )
    }
}

// ---- entra_multi_tenant ------------------------------------------------------------------

struct Entra {
    provider: Arc<dyn Provider>,
    entra: FakeEntra,
    _dir: tempfile::TempDir,
}

const ENTRA_CLIENT: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const ENTRA_TENANT: &str = "11111111-2222-4333-8444-555555555555";
const ENTRA_SECRET: &str = "conformance~secret~0123456789";
const ENTRA_ROLES: [&str; 2] = ["Directory.Read.All", "User.Read.All"];

impl Entra {
    async fn start(d: &ProviderDescriptor) -> Entra {
        let entra = FakeEntra::start(ENTRA_CLIENT, ENTRA_SECRET).await;
        entra.consent(
            ENTRA_TENANT,
            "aaaaaaaa-0000-4000-8000-000000000001",
            &ENTRA_ROLES,
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            repo_root().join("policies/azure.json"),
            dir.path().join("azure.json"),
        )
        .unwrap();
        let section = format!(
            "client_id = \"{ENTRA_CLIENT}\"\nauthority_host = \"{}\"\nceiling_file = \"./azure.json\"\ntimeout_ms = 3000\n",
            entra.url
        );
        let provider = build(d, &section, dir.path()).await;
        let mut material = SecretFields::new();
        material.insert("client_secret", secrecy::SecretString::from(ENTRA_SECRET));
        provider
            .platform_keys()
            .unwrap()
            .install(vec![credbroker_providers::PlatformKey {
                version: 1,
                material,
            }])
            .unwrap();
        Entra {
            provider,
            entra,
            _dir: dir,
        }
    }
}

#[async_trait]
impl Harness for Entra {
    fn provider(&self) -> Arc<dyn Provider> {
        self.provider.clone()
    }
    fn binding(&self) -> (Value, Value) {
        (
            json!({"tenant_id": ENTRA_TENANT}),
            json!({"graph_application_permissions": ENTRA_ROLES}),
        )
    }
    fn within(&self) -> Value {
        json!({"resource": "graph"})
    }
    fn beyond(&self) -> Value {
        json!({"resource": "arm"})
    }
    fn calls(&self) -> usize {
        self.entra.state.requests.lock().unwrap().len()
    }
    fn requested_scope(&self) -> Option<Value> {
        self.last_request().map(|r| r["scope"].clone())
    }
    fn last_request(&self) -> Option<Value> {
        self.entra
            .state
            .requests
            .lock()
            .unwrap()
            .last()
            .map(|(tenant, form)| json!({"tenant": tenant, "form": form}))
    }
    fn expected_scopes(&self) -> (Value, Value) {
        (json!(ENTRA_ROLES), json!(ENTRA_ROLES))
    }
    fn issued_scope(&self, credential: &IssuedCredential) -> Value {
        credential.details["roles"].clone()
    }
    fn exceed_upstream(&self, on: bool) {
        self.entra.state.misissue.lock().unwrap().extra_roles = if on {
            vec!["Group.Read.All".into()]
        } else {
            Vec::new()
        };
    }
}

// ---- atlassian_dc_pat ---------------------------------------------------------------------

struct Dc {
    provider: Arc<dyn Provider>,
    dc: FakeAtlassianDc,
    token: String,
}

#[async_trait]
impl Harness for Dc {
    fn provider(&self) -> Arc<dyn Provider> {
        self.provider.clone()
    }
    fn binding(&self) -> (Value, Value) {
        // A PAT cannot be narrowed: no ceiling.
        (
            json!({"base_url": self.dc.url, "product": "jira"}),
            Value::Null,
        )
    }
    fn within(&self) -> Value {
        json!({"fields": ["token"]})
    }
    fn beyond(&self) -> Value {
        json!({"fields": ["password"]})
    }
    fn secret(&self) -> Option<SecretFields> {
        let mut f = SecretFields::new();
        f.insert("token", secrecy::SecretString::from(self.token.clone()));
        Some(f)
    }
    fn calls(&self) -> usize {
        self.dc.state.requests.lock().unwrap().len()
    }
    fn requested_scope(&self) -> Option<Value> {
        None
    }
    fn last_request(&self) -> Option<Value> {
        None
    }
    fn expected_scopes(&self) -> (Value, Value) {
        (Value::Null, Value::Null)
    }
}

// ---- servicenow_oauth --------------------------------------------------------------------

struct Snow {
    provider: Arc<dyn Provider>,
    sn: FakeServiceNow,
    _dir: tempfile::TempDir,
}

impl Snow {
    async fn start(d: &ProviderDescriptor) -> Snow {
        let sn = FakeServiceNow::start(
            "conformance-client",
            "conformance-secret",
            &["snc_read_only"],
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            repo_root().join("policies/servicenow.json"),
            dir.path().join("servicenow.json"),
        )
        .unwrap();
        let section = format!(
            "ceiling_file = \"servicenow.json\"\nallowed_hosts = [\"{}\"]\ntimeout_ms = 3000\n",
            sn.authority
        );
        let provider = build(d, &section, dir.path()).await;
        Snow {
            provider,
            sn,
            _dir: dir,
        }
    }
}

#[async_trait]
impl Harness for Snow {
    fn provider(&self) -> Arc<dyn Provider> {
        self.provider.clone()
    }
    fn binding(&self) -> (Value, Value) {
        (
            json!({"instance_url": self.sn.url}),
            json!({"roles": ["snc_read_only"], "tables": ["incident"]}),
        )
    }
    fn within(&self) -> Value {
        json!({"tables": ["incident"]})
    }
    fn beyond(&self) -> Value {
        json!({"tables": ["sys_user"]})
    }
    fn secret(&self) -> Option<SecretFields> {
        let mut f = SecretFields::new();
        f.insert(
            "client_id",
            secrecy::SecretString::from("conformance-client"),
        );
        f.insert(
            "client_secret",
            secrecy::SecretString::from("conformance-secret"),
        );
        Some(f)
    }
    fn calls(&self) -> usize {
        self.sn.state.requests.lock().unwrap().len()
    }
    fn requested_scope(&self) -> Option<Value> {
        None
    }
    fn last_request(&self) -> Option<Value> {
        self.sn
            .state
            .requests
            .lock()
            .unwrap()
            .last()
            .map(|(r, form)| json!({"request": r, "form": form}))
    }
    fn expected_scopes(&self) -> (Value, Value) {
        (Value::Null, Value::Null)
    }
}

// ---- atlassian_forge ----------------------------------------------------------------------

struct Forge {
    provider: Arc<dyn Provider>,
    _forge: FakeForge,
    _dir: tempfile::TempDir,
    /// The captured system token the binding holds (what a scheduled trigger delivered).
    token: String,
    expires_at: i64,
}

const FORGE_APP: &str = "ari:cloud:ecosystem::app/5b8e4b0c-1f3a-4c2d-9e7f-0a1b2c3d4e5f";
const FORGE_CLOUD: &str = "11111111-2222-4333-8444-555555555555";
const FORGE_INSTALLATION: &str =
    "ari:cloud:ecosystem::installation/aaaaaaaa-1111-4222-8333-444444444444";

impl Forge {
    async fn start(d: &ProviderDescriptor) -> Forge {
        let forge = FakeForge::start(FORGE_APP).await;
        // A relative ceiling_file, resolved against the directory the section came from.
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            repo_root().join("policies/atlassian.json"),
            dir.path().join("atlassian.json"),
        )
        .unwrap();
        let section = format!(
            "app_id = \"{FORGE_APP}\"\njwks_url = \"{}\"\nceiling_file = \"atlassian.json\"\ntimeout_ms = 3000\n",
            forge.jwks_url
        );
        let provider = build(d, &section, dir.path()).await;
        let expires_at = fake_forge::now() + 2 * 3600;
        Forge {
            provider,
            _forge: forge,
            _dir: dir,
            token: fake_forge::system_token(expires_at),
            expires_at,
        }
    }
}

#[async_trait]
impl Harness for Forge {
    fn provider(&self) -> Arc<dyn Provider> {
        self.provider.clone()
    }
    fn binding(&self) -> (Value, Value) {
        // The scopes are fixed by the app's manifest (policies/atlassian.json): a binding
        // carries no ceiling of its own (a claimed one is created with none).
        (
            json!({"cloud_id": FORGE_CLOUD, "installation_id": FORGE_INSTALLATION,
                   "environment": "PRODUCTION",
                   "api_base_url": format!("https://api.atlassian.com/ex/jira/{FORGE_CLOUD}"),
                   "previous_installations": []}),
            Value::Null,
        )
    }
    fn within(&self) -> Value {
        json!({"scopes": ["read:jira-work"]})
    }
    fn beyond(&self) -> Value {
        json!({"scopes": ["write:jira-work"]})
    }
    fn secret(&self) -> Option<SecretFields> {
        let mut f = SecretFields::new();
        f.insert(
            "system_token",
            secrecy::SecretString::from(self.token.clone()),
        );
        let rfc = |t: i64| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .unwrap()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        f.insert(
            "expires_at",
            secrecy::SecretString::from(rfc(self.expires_at)),
        );
        f.insert(
            "captured_at",
            secrecy::SecretString::from(rfc(fake_forge::now())),
        );
        Some(f)
    }
    fn calls(&self) -> usize {
        // A mint opens the captured token: nothing upstream is called.
        0
    }
    fn requested_scope(&self) -> Option<Value> {
        None
    }
    fn last_request(&self) -> Option<Value> {
        None
    }
    fn expected_scopes(&self) -> (Value, Value) {
        (Value::Null, Value::Null)
    }
}

// ---- pasted_secret ----------------------------------------------------------------------

struct Pasted {
    provider: Arc<dyn Provider>,
}

#[async_trait]
impl Harness for Pasted {
    fn provider(&self) -> Arc<dyn Provider> {
        self.provider.clone()
    }
    fn binding(&self) -> (Value, Value) {
        (json!({}), json!({"fields": ["username", "token"]}))
    }
    fn within(&self) -> Value {
        json!({"fields": ["token"]})
    }
    fn beyond(&self) -> Value {
        json!({"fields": ["password"]})
    }
    fn secret(&self) -> Option<SecretFields> {
        let mut f = SecretFields::new();
        for (k, v) in [("username", "u"), ("token", "t"), ("password", "p")] {
            f.insert(k, secrecy::SecretString::from(v));
        }
        Some(f)
    }
    fn calls(&self) -> usize {
        0
    }
    fn requested_scope(&self) -> Option<Value> {
        None
    }
    fn last_request(&self) -> Option<Value> {
        None
    }
    fn expected_scopes(&self) -> (Value, Value) {
        (json!(["token", "username"]), json!(["token"]))
    }
    fn issued_scope(&self, credential: &IssuedCredential) -> Value {
        let mut names: Vec<&str> = credential.credentials.names().collect();
        names.sort_unstable();
        json!(names)
    }
}

async fn harness_for(d: &ProviderDescriptor) -> Box<dyn Harness> {
    match d.id {
        "aws_assume_role" => Box::new(Aws::start(d).await),
        "github_app" => Box::new(Github::start(d).await),
        "entra_multi_tenant" => Box::new(Entra::start(d).await),
        "servicenow_oauth" => Box::new(Snow::start(d).await),
        "atlassian_forge" => Box::new(Forge::start(d).await),
        "gcp_wif" => Box::new(gcp::Gcp::start(d).await),
        "atlassian_dc_pat" => {
            let dc = FakeAtlassianDc::start().await;
            let token = dc.state.issue("scanner", 60).raw;
            let section = format!("allowed_hosts = [\"{}\"]\n", dc.authority);
            Box::new(Dc {
                provider: build(d, &section, Path::new("/")).await,
                dc,
                token,
            })
        }
        "pasted_secret" => Box::new(Pasted {
            provider: build(d, "", Path::new("/")).await,
        }),
        other => panic!(
            "provider {other} has no conformance harness: add one (with its fake) in tests/tests/provider_conformance.rs"
        ),
    }
}

// ---- the checks ---------------------------------------------------------------------------

fn narrowing_of(
    p: &dyn Provider,
    ctx: &BindingContext<'_>,
    narrow: Option<&Value>,
) -> Result<credbroker_providers::Narrowing, ProviderError> {
    p.normalize_narrowing(ctx, narrow)
}

async fn mint(
    h: &dyn Harness,
    narrow: Option<&Value>,
    instance: &str,
    worker: &str,
) -> Result<IssuedCredential, ProviderError> {
    let p = h.provider();
    let (config, ceiling) = h.binding();
    let bound = p.bind(&config, &ceiling)?;
    let ctx = BindingContext {
        tenant_id: "t1",
        binding_id: "b1",
        config: &config,
        ceiling: &ceiling,
        bound: &bound,
    };
    let narrowing = narrowing_of(p.as_ref(), &ctx, narrow)?;
    let secret = h.secret();
    p.mint(&MintRequest {
        binding: ctx,
        instance_id: instance,
        worker,
        narrowing: &narrowing,
        secret: secret.as_ref(),
        timeout: Duration::from_secs(5),
        min_ttl_s: 0,
        assertions: h.signer().unwrap_or(&credbroker_providers::NoIssuer),
    })
    .await
}

async fn check_ceiling_mode(h: &dyn Harness) {
    let p = h.provider();
    let id = p.id();
    let (config, ceiling) = h.binding();
    let bound = p
        .bind(&config, &ceiling)
        .unwrap_or_else(|e| panic!("{id}: the harness binding is invalid: {e}"));
    let (at_ceiling, at_within) = h.expected_scopes();
    let within = h.within();
    match p.ceiling_enforcement() {
        CeilingEnforcement::Upstream => {
            mint(h, None, "i1", "w1").await.unwrap();
            assert_eq!(
                h.requested_scope(),
                Some(at_ceiling),
                "{id}: an unnarrowed mint must ask for exactly the ceiling"
            );
            mint(h, Some(&within), "i1", "w1").await.unwrap();
            assert_eq!(
                h.requested_scope(),
                Some(at_within),
                "{id}: a narrowed mint must ask for exactly the narrowing"
            );
        }
        CeilingEnforcement::Local => {
            let c = mint(h, None, "i1", "w1").await.unwrap();
            assert_eq!(h.issued_scope(&c), at_ceiling, "{id}: cut to the ceiling");
            let c = mint(h, Some(&within), "i1", "w1").await.unwrap();
            assert_eq!(h.issued_scope(&c), at_within, "{id}: cut to the narrowing");
        }
        CeilingEnforcement::Fixed => {
            let ctx = BindingContext {
                tenant_id: "t1",
                binding_id: "b1",
                config: &config,
                ceiling: &ceiling,
                bound: &bound,
            };
            assert!(
                narrowing_of(p.as_ref(), &ctx, Some(&within)).is_err(),
                "{id}: a fixed-scope provider must refuse any narrow"
            );
        }
        CeilingEnforcement::Verified => {
            let c = mint(h, None, "i1", "w1").await.unwrap();
            assert_eq!(
                h.issued_scope(&c),
                at_ceiling,
                "{id}: verified at the ceiling"
            );
            // An upstream that issues beyond the ceiling: the credential is refused.
            h.exceed_upstream(true);
            let err = mint(h, None, "i1", "w1").await.err();
            h.exceed_upstream(false);
            assert!(
                matches!(err, Some(ProviderError::Denied { .. })),
                "{id}: a credential beyond the ceiling must be refused, got {err:?}"
            );
        }
    }
    // Beyond the ceiling: refused, and the upstream never hears of it.
    let before = h.calls();
    let err = mint(h, Some(&h.beyond()), "i1", "w1").await.err();
    assert!(
        matches!(err, Some(ProviderError::NarrowingExceedsCeiling(_))),
        "{id}: beyond the ceiling must be narrowing_exceeds_ceiling, got {err:?}"
    );
    assert_eq!(
        h.calls(),
        before,
        "{id}: an upstream call for a refused narrowing"
    );
}

async fn check_credential_scope(h: &dyn Harness) {
    let p = h.provider();
    let id = p.id();
    let (config, ceiling) = h.binding();
    let bound = p.bind(&config, &ceiling).unwrap();
    let scope = p.credential_scope(&BindingContext {
        tenant_id: "t1",
        binding_id: "b1",
        config: &config,
        ceiling: &ceiling,
        bound: &bound,
    });
    if h.last_request().is_none() {
        return; // nothing upstream can name a caller
    }
    let request_for = |instance: &'static str, worker: &'static str| async move {
        mint(h, None, instance, worker).await.unwrap();
        h.last_request().unwrap()
    };
    let a = request_for("i1", "w1").await;
    let b = request_for("i2", "w1").await;
    assert_eq!(
        scope.instance,
        a != b,
        "{id}: declares instance scope {} but the upstream request {} the instance",
        scope.instance,
        if a != b { "names" } else { "does not name" }
    );
    let c = request_for("i1", "w2").await;
    assert_eq!(
        scope.worker,
        a != c,
        "{id}: declares worker scope {} but the upstream request {} the worker",
        scope.worker,
        if a != c { "names" } else { "does not name" }
    );
}

/// A small deterministic generator of JSON values shaped like what callers send.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn value(&mut self, depth: u32) -> Value {
        const KEYS: &[&str] = &[
            "role_arn",
            "broker",
            "external_id",
            "duration_s",
            "source_identity",
            "policy",
            "policy_arns",
            "Statement",
            "Effect",
            "Action",
            "Resource",
            "permissions",
            "repositories",
            "installation_id",
            "fields",
            "tenant_id",
            "resources",
            "resource",
            "arm_scopes",
            "graph_application_permissions",
            "arm_role_definitions",
            "instance_url",
            "base_url",
            "product",
            "roles",
            "tables",
            "managed_policy_arns",
            "actions",
            "contents",
            "metadata",
            "cloud_id",
            "installation_id",
            "api_base_url",
            "environment",
            "previous_installations",
            "scopes",
        ];
        const STRINGS: &[&str] = &[
            "",
            "*",
            "read",
            "write",
            "admin",
            "Allow",
            "Deny",
            "ec2:Describe*",
            "s3:*",
            "arn:aws:iam::222222222222:role/X",
            "arn:aws:iam::aws:policy/SecurityAudit",
            "arn:${Partition}:iam::aws:policy/SecurityAudit",
            "token",
            "graph",
            "arm",
            "https://acme.service-now.com",
            "http://127.0.0.1:1",
            "incident",
            "jira",
            "11111111-2222-4333-8444-555555555555",
            "User.Read.All",
            "/subscriptions/11111111-2222-4333-8444-555555555555",
            "\u{0}",
            "é",
            "api",
            "PRODUCTION",
            "read:jira-work",
            "https://api.atlassian.com/ex/jira/11111111-2222-4333-8444-555555555555",
            "ari:cloud:ecosystem::installation/aaaaaaaa-1111-4222-8333-444444444444",
        ];
        match self.next() % if depth > 3 { 5 } else { 8 } {
            0 => Value::Null,
            1 => Value::Bool(self.next().is_multiple_of(2)),
            2 => json!((self.next() as i64).wrapping_sub(i64::MAX / 2)),
            3 => json!((self.next() % 100_000) as f64 / 7.0),
            4 => json!(STRINGS[(self.next() % STRINGS.len() as u64) as usize]),
            5 | 6 => {
                let mut m = serde_json::Map::new();
                for _ in 0..self.next() % 5 {
                    let k = KEYS[(self.next() % KEYS.len() as u64) as usize];
                    m.insert(k.to_owned(), self.value(depth + 1));
                }
                Value::Object(m)
            }
            _ => Value::Array(
                (0..self.next() % 4)
                    .map(|_| self.value(depth + 1))
                    .collect(),
            ),
        }
    }
}

fn check_never_panics(h: &dyn Harness) {
    let p = h.provider();
    let (config, ceiling) = h.binding();
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    for _ in 0..2000 {
        let v = g.value(0);
        let _ = p.exclusive_identifiers(&v);
        for (cfg, ceil) in [(&config, &ceiling), (&v, &ceiling), (&config, &v)] {
            // Arbitrary configuration and ceilings are refused or bound, never a panic; a
            // bound binding then takes any narrowing.
            let Ok(bound) = p.bind(cfg, ceil) else {
                continue;
            };
            let ctx = BindingContext {
                tenant_id: "t1",
                binding_id: "b1",
                config: cfg,
                ceiling: ceil,
                bound: &bound,
            };
            let _ = p.describe_ceiling(&ctx);
            let _ = p.credential_scope(&ctx);
            let _ = p.normalize_narrowing(&ctx, Some(&v));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_in_the_catalog_conforms() {
    credbroker_tests::init_crypto();
    assert!(!CATALOG.is_empty());
    for d in CATALOG {
        let h = harness_for(d).await;
        assert_eq!(h.provider().id(), d.id, "descriptor and provider disagree");
        check_ceiling_mode(h.as_ref()).await;
        check_credential_scope(h.as_ref()).await;
        check_never_panics(h.as_ref());
    }
}
