//! The `gcp_wif` harness: the provider against the fake GCP, its assertions signed by a test
//! issuer whose JWKS the fake holds inline (GCP's `jwksJson`).

use super::*;
use credbroker_tests::fake_gcp::{principal, FakeGcp, JwksSource, ProviderSpec};
use credbroker_tests::issuer_env::TestSigner;

const PROJECT: &str = "123456789012";
const SA: &str = "conformance-reader@acme-prod.iam.gserviceaccount.com";
const SUBJECT: &str = "cb-conformanceConformanceConformance0123";
const READ_ONLY: &str = "https://www.googleapis.com/auth/cloud-platform.read-only";
const STORAGE: &str = "https://www.googleapis.com/auth/devstorage.read_only";
const FULL: &str = "https://www.googleapis.com/auth/cloud-platform";

pub(super) struct Gcp {
    provider: Arc<dyn Provider>,
    gcp: FakeGcp,
    signer: TestSigner,
    _dir: tempfile::TempDir,
}

impl Gcp {
    pub(super) async fn start(d: &ProviderDescriptor) -> Gcp {
        let gcp = FakeGcp::start().await;
        let signer = TestSigner::new("https://issuer.conformance.example");
        let mut spec = ProviderSpec::new(
            PROJECT,
            "credbroker",
            "credbroker",
            &signer.issuer,
            JwksSource::Inline(signer.jwks()),
        );
        spec.subject_condition = Some(SUBJECT.into());
        gcp.add_provider(spec);
        gcp.grant_workload_identity_user(SA, &principal(PROJECT, "credbroker", SUBJECT));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("gcp.json"),
            json!({"scopes": [READ_ONLY, STORAGE, FULL], "roles": ["roles/viewer"]}).to_string(),
        )
        .unwrap();
        let section = format!(
            "ceiling_file = \"gcp.json\"\nsts_url = \"{}\"\niam_credentials_url = \"{}\"\ntimeout_ms = 3000\n",
            gcp.sts_url(),
            gcp.url
        );
        let provider = build(d, &section, dir.path()).await;
        Gcp {
            provider,
            gcp,
            signer,
            _dir: dir,
        }
    }

    fn last_iam_body(&self) -> Option<Value> {
        self.gcp
            .requests()
            .into_iter()
            .rev()
            .find(|r| matches!(r.endpoint, credbroker_tests::fake_gcp::Endpoint::Iam))
            .and_then(|r| r.body)
    }
}

#[async_trait]
impl Harness for Gcp {
    fn provider(&self) -> Arc<dyn Provider> {
        self.provider.clone()
    }
    fn binding(&self) -> (Value, Value) {
        (
            json!({"project_number": PROJECT, "pool_id": "credbroker", "provider_id": "credbroker",
                   "service_account": SA, "broker": {"subject": SUBJECT}}),
            json!({"scopes": [READ_ONLY, STORAGE]}),
        )
    }
    fn within(&self) -> Value {
        json!({"scopes": [STORAGE]})
    }
    fn beyond(&self) -> Value {
        json!({"scopes": [FULL]})
    }
    fn signer(&self) -> Option<&dyn credbroker_providers::AssertionSigner> {
        Some(&self.signer)
    }
    fn calls(&self) -> usize {
        usize::try_from(self.gcp.sts_calls() + self.gcp.iam_calls()).unwrap()
    }
    fn requested_scope(&self) -> Option<Value> {
        self.last_iam_body().map(|b| b["scope"].clone())
    }
    fn last_request(&self) -> Option<Value> {
        self.last_iam_body()
    }
    fn expected_scopes(&self) -> (Value, Value) {
        (json!([READ_ONLY, STORAGE]), json!([STORAGE]))
    }
}
