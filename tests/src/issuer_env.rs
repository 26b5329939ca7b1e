//! A daemon with the broker's own OIDC issuer on its public listener and `gcp_wif` pointed at
//! the fake GCP: the harness the issuer, GCP, AWS web-identity and Entra federated-credential
//! tests share.

use std::sync::Arc;

use credbroker::client::BrokerClient;
use http::Method;
use serde_json::{json, Value};

use crate::fake_gcp::{principal, FakeGcp, JwksSource, ProviderSpec};
use crate::{
    call, public_client, public_section, repo_root, setup, Daemon, DaemonOptions, TestPki,
};

/// The customer project the tests federate with.
pub const PROJECT: &str = "123456789012";
/// Its pool and provider ids.
pub const POOL: &str = "credbroker";
/// The service account the broker impersonates.
pub const SA: &str = "credbroker-reader@acme-prod.iam.gserviceaccount.com";

/// A running daemon with an issuer and the fake GCP.
pub struct IssuerEnv {
    /// Keeps the test directory.
    pub tmp: tempfile::TempDir,
    /// Test PKI.
    pub pki: Arc<TestPki>,
    /// The daemon.
    pub daemon: Daemon,
    /// The fake GCP STS + IAM Credentials.
    pub gcp: FakeGcp,
    /// Operator client.
    pub op: BrokerClient,
    /// The issuer URL (= the public listener's base URL).
    pub issuer: String,
}

impl IssuerEnv {
    /// Starts a daemon whose `[issuer]` has `publish_lead_s` and `token_ttl_s`, plus `extra`
    /// TOML (`@ISSUER@` in it: the issuer URL); seeds tenants `t1`, `t2` and worker `w1`
    /// (for `t1`).
    pub async fn start(publish_lead_s: u64, token_ttl_s: u64, extra: &str) -> IssuerEnv {
        Self::start_with_env(publish_lead_s, token_ttl_s, extra, Vec::new()).await
    }

    /// [`IssuerEnv::start`] with extra environment variables for the daemon.
    pub async fn start_with_env(
        publish_lead_s: u64,
        token_ttl_s: u64,
        extra: &str,
        env: Vec<(String, String)>,
    ) -> IssuerEnv {
        let (tmp, pki) = setup();
        let gcp = FakeGcp::start().await;
        let (public, port) = public_section(&pki);
        let issuer = format!("https://127.0.0.1:{port}");
        // `extra` may name the public listener's address (known only here) as `@ISSUER@`.
        let extra = extra.replace("@ISSUER@", &issuer);
        let toml = format!(
            "{public}[issuer]\nurl = \"{issuer}\"\npublish_lead_s = {publish_lead_s}\ntoken_ttl_s = {token_ttl_s}\n\n[providers.gcp_wif]\nceiling_file = {:?}\nsts_url = \"{}\"\niam_credentials_url = \"{}\"\ntimeout_ms = 3000\n\n{extra}",
            repo_root().join("policies/gcp.json").display().to_string(),
            gcp.sts_url(),
            gcp.url,
        );
        let daemon = Daemon::start(
            tmp.path(),
            &pki,
            &DaemonOptions {
                extra_toml: toml,
                env,
                ..Default::default()
            },
        );
        let mut op = pki.client_for("op", &daemon.url);
        crate::seed_two_tenants(&mut op).await;
        IssuerEnv {
            tmp,
            pki,
            daemon,
            gcp,
            op,
            issuer,
        }
    }

    /// GET `path` on the public listener: status and JSON.
    pub async fn public_get(&self, path: &str) -> (u16, Value) {
        let mut c = public_client(&self.pki, &self.issuer);
        call(&mut c, Method::GET, path, None).await
    }

    /// The published JWKS.
    pub async fn jwks(&self) -> Value {
        let (s, v) = self.public_get("/.well-known/jwks.json").await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// The test CA (what a relying party trusts to fetch our discovery document).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.pki.dir.join("ca.crt")).unwrap()
    }

    /// How the fake GCP gets our keys: from the public listener (`url`), or pinned inline
    /// from the JWKS published now.
    pub async fn jwks_source(&self, inline: bool) -> JwksSource {
        if inline {
            JwksSource::Inline(self.jwks().await)
        } else {
            JwksSource::Url {
                url: self.issuer.clone(),
                ca_pem: self.ca_pem(),
            }
        }
    }

    /// Adds a `gcp_wif` binding `id` for `tenant` on pool `pool` with service account `sa`
    /// and `ceiling` (`null`: the platform's default scopes); status and answer.
    pub async fn add_gcp_binding(
        &mut self,
        id: &str,
        tenant: &str,
        pool: &str,
        sa: &str,
        ceiling: Value,
    ) -> (u16, Value) {
        call(
            &mut self.op,
            Method::POST,
            "/v1/admin/bindings",
            Some(
                json!({"owner": "team-tests", "purpose": "integration test", "id": id, "tenant": tenant, "provider": "gcp_wif", "ceiling": ceiling,
                "config": {"project_number": PROJECT, "pool_id": pool, "provider_id": pool,
                "service_account": sa}}),
            ),
        )
        .await
    }

    /// The ceiling that opts a binding into both scopes of policies/gcp.json.
    pub fn both_scopes() -> Value {
        json!({"scopes": ["https://www.googleapis.com/auth/cloud-platform.read-only",
                          "https://www.googleapis.com/auth/cloud-platform"]})
    }

    /// What the customer's gcloud script does for the binding's `subject`: a provider on
    /// `pool` trusting our issuer with the attribute condition pinned to it (`pinned`), and
    /// `workloadIdentityUser` on `sa` for exactly that principal.
    pub async fn customer_trusts(
        &self,
        pool: &str,
        sa: &str,
        subject: &str,
        pinned: bool,
        inline: bool,
    ) -> String {
        let mut spec = ProviderSpec::new(
            PROJECT,
            pool,
            pool,
            &self.issuer,
            self.jwks_source(inline).await,
        );
        if pinned {
            spec.subject_condition = Some(subject.to_owned());
        }
        let resource = self.gcp.add_provider(spec);
        self.gcp
            .grant_workload_identity_user(sa, &principal(PROJECT, pool, subject));
        resource
    }

    /// Runs a binding's probe.
    pub async fn probe(&mut self, id: &str) -> (u16, Value) {
        call(
            &mut self.op,
            Method::POST,
            &format!("/v1/admin/bindings/{id}/probe"),
            Some(json!({})),
        )
        .await
    }

    /// Adds instance `id` of `tenant` on `binding`.
    pub async fn add_instance(&mut self, id: &str, tenant: &str, binding: &str) {
        let (s, v) = call(
            &mut self.op,
            Method::POST,
            "/v1/admin/instances",
            Some(json!({"id": id, "tenant": tenant, "binding": binding, "connector_kind": "gcp"})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
}

/// The broker-made subject of a binding answer.
pub fn subject_of(binding: &Value) -> String {
    binding["binding"]["config"]["broker"]["subject"]
        .as_str()
        .unwrap_or_else(|| panic!("no subject in {binding}"))
        .to_owned()
}

/// An issuer for tests that run a provider outside the daemon (the conformance suite): signs
/// like the broker's (RS256, `kid`, `iss`/`sub`/`aud`/`iat`/`nbf`/`exp`/`jti`) with a test key.
pub struct TestSigner {
    /// The key (its JWK goes to the relying party).
    pub key: crate::fake_forge::ForgeKey,
    /// `iss`.
    pub issuer: String,
}

impl TestSigner {
    /// A fresh key for `issuer`.
    pub fn new(issuer: &str) -> TestSigner {
        TestSigner {
            key: crate::fake_forge::ForgeKey::generate("conformance-key"),
            issuer: issuer.to_owned(),
        }
    }

    /// `{"keys": [its JWK]}`.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.key.jwk()] })
    }
}

impl credbroker_providers::AssertionSigner for TestSigner {
    fn sign(
        &self,
        subject: &str,
        audience: &str,
    ) -> Result<secrecy::SecretString, credbroker_providers::ProviderError> {
        let now = crate::fake_forge::now();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(self.key.kid.clone());
        let claims = json!({"iss": self.issuer, "sub": subject, "aud": audience,
            "iat": now, "nbf": now, "exp": now + 300, "jti": crate::fake_forge::uuid()});
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key.encoding_key())
            .map_err(|e| credbroker_providers::ProviderError::Internal(e.to_string()))?;
        Ok(secrecy::SecretString::from(jwt))
    }
}
