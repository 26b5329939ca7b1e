//! The one audited pipeline for changes (audit, then commit), against a store double that
//! blocks or fails inside its commit: the audit log and the store always agree.
//!
//! - A change whose caller goes away while the commit is in progress (a client that hung up)
//!   still commits: its "allowed" record is never left without the change.
//! - A commit that fails after the record was written gets a second record saying so, and
//!   the change is absent — for admin changes and for probes alike.
//! - A request refused because the broker cannot catch up with the store (another
//!   replica's changes unknown) is audited like any other refusal.
//! - A value generated for a tenant (AWS's ExternalId) on one replica while another removes
//!   the tenant fails the removal: it is never left behind for a tenant created again with
//!   the same id, who would then be handed it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::sync::Notify;

use credbroker::admin::{AdminOp, Collection, NewBinding, NewTenant};
use credbroker::broker::{Broker, BrokerKeys, BrokerSettings};
use credbroker::config::{Config, TlsSettings};
use credbroker::ids::{BindingId, TenantId};
use credbroker::store::records::Records;
use credbroker::store::{Batch, ChangeHook, Op, SledStore, Store, StoreError, Table};
use credbroker_providers::{ProviderRegistry, SecretFields};

/// A store that can hold a commit until released, or fail the next one.
struct GatedStore {
    inner: Arc<SledStore>,
    hold: AtomicBool,
    fail: AtomicBool,
    /// Fail the next `sync` (the store unreachable when a request is judged).
    fail_sync: AtomicBool,
    /// Apply the next batch that makes a secret version active, then answer with an error
    /// (a commit whose acknowledgement was lost).
    lose_promotion_answer: AtomicBool,
    /// Fail the next batch that makes a secret version active without applying it (a
    /// store failure whose outcome the broker cannot know).
    fail_promotion: AtomicBool,
    /// Hold the next batch that writes a pending secret version until released.
    hold_pending: AtomicBool,
    entered: Notify,
    release: Notify,
}

#[async_trait]
impl Store for GatedStore {
    async fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key).await
    }
    async fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.scan(table, prefix).await
    }
    async fn scan_page(
        &self,
        table: Table,
        prefix: &str,
        after: Option<&str>,
        bounds: (usize, usize),
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.scan_page(table, prefix, after, bounds).await
    }
    async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let pending = batch.ops.iter().any(|op| {
            matches!(op, Op::Put(Table::Secrets, _, v)
                if String::from_utf8_lossy(v).contains("\"state\":\"pending\""))
        });
        if self.hold.swap(false, Ordering::SeqCst)
            || (pending && self.hold_pending.swap(false, Ordering::SeqCst))
        {
            self.entered.notify_one();
            self.release.notified().await;
        }
        if self.fail.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Backend("injected commit failure".into()));
        }
        let promotes = batch.ops.iter().any(|op| {
            matches!(op, Op::Put(Table::Secrets, _, v)
                if String::from_utf8_lossy(v).contains("\"state\":\"active\""))
        });
        if promotes && self.fail_promotion.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Backend(
                "injected: the promotion's commit failed".into(),
            ));
        }
        if promotes && self.lose_promotion_answer.swap(false, Ordering::SeqCst) {
            self.inner.commit(batch).await?;
            return Err(StoreError::Backend(
                "injected: committed, its answer lost".into(),
            ));
        }
        self.inner.commit(batch).await
    }
    async fn sync(&self) -> Result<(), StoreError> {
        if self.fail_sync.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Backend("injected sync failure".into()));
        }
        self.inner.sync().await
    }
    fn on_change(&self, hook: ChangeHook) {
        self.inner.on_change(hook)
    }
    fn backend(&self) -> &'static str {
        "gated"
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    data_dir: PathBuf,
    store: Arc<GatedStore>,
    broker: Arc<Broker>,
    records: Records,
}

fn config_in(dir: &std::path::Path) -> Config {
    let unused = PathBuf::from("unused");
    Config::with_defaults(
        dir.to_owned(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        credbroker_tests::TD,
        TlsSettings {
            cert: unused.clone(),
            key: unused.clone(),
            client_ca: unused,
            crl: None,
            crl_check_interval_s: credbroker::config::DEFAULT_CRL_CHECK_S,
            stale_crl: credbroker::config::StaleCrl::Refuse,
        },
    )
}

async fn start() -> Env {
    start_with(None).await
}

/// As [`start`], with these `[providers.*]` sections (TOML) configured.
async fn start_with(providers: Option<&str>) -> Env {
    start_configured(providers, false).await
}

/// As [`start_with`]; with `public`, a `[public]` section naming a base URL (intake links).
async fn start_configured(providers: Option<&str>, public: bool) -> Env {
    credbroker_tests::init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config_in(tmp.path());
    if public {
        config.public = Some(
            toml::from_str(
                "listen = \"127.0.0.1:1\"\ncert = \"unused\"\nkey = \"unused\"\nbase_url = \"https://broker.example.org\"\n",
            )
            .unwrap(),
        );
    }
    BrokerKeys::init(&config).unwrap();
    let inner = Arc::new(SledStore::open(&config.store_dir()).unwrap());
    let store = Arc::new(GatedStore {
        inner,
        hold: AtomicBool::new(false),
        fail: AtomicBool::new(false),
        fail_sync: AtomicBool::new(false),
        lose_promotion_answer: AtomicBool::new(false),
        fail_promotion: AtomicBool::new(false),
        hold_pending: AtomicBool::new(false),
        entered: Notify::new(),
        release: Notify::new(),
    });
    let broker = Broker::open(
        store.clone(),
        BrokerKeys::load(&config).unwrap(),
        match providers {
            None => ProviderRegistry::builtin(),
            Some(toml_text) => {
                ProviderRegistry::from_settings(&toml::from_str(toml_text).unwrap(), tmp.path())
                    .await
                    .unwrap()
            }
        },
        BrokerSettings::from_config(&config),
    )
    .await
    .unwrap();
    Env {
        data_dir: tmp.path().to_owned(),
        records: broker.records().clone(),
        _tmp: tmp,
        store,
        broker,
    }
}

fn audit_records(env: &Env) -> Vec<Value> {
    credbroker_tests::audit_log_text(&env.data_dir)
        .lines()
        .filter(|l| l.starts_with("{\"seq\":"))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn add_tenant(id: &str) -> AdminOp {
    AdminOp::AddTenant(NewTenant {
        id: TenantId::parse(id).unwrap(),
        name: String::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_caller_goes_away_mid_commit_still_lands() {
    let env = start().await;
    env.store.hold.store(true, Ordering::SeqCst);
    let broker = env.broker.clone();
    let caller = tokio::spawn(async move {
        broker
            .admin("operator:test", add_tenant("t1"), "req-dropped")
            .await
    });
    // The record is durable and the commit has started: now the caller goes away.
    tokio::time::timeout(Duration::from_secs(5), env.store.entered.notified())
        .await
        .expect("the commit started");
    caller.abort();
    assert!(caller.await.err().is_some_and(|e| e.is_cancelled()));
    env.store.release.notify_one();

    let t1 = TenantId::parse("t1").unwrap();
    let mut landed = false;
    for _ in 0..250 {
        if env.records.tenant(&t1).await.unwrap().is_some() {
            landed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let records = audit_records(&env);
    let allowed = records
        .iter()
        .filter(|r| r["request_id"] == "req-dropped")
        .collect::<Vec<_>>();
    assert_eq!(allowed.len(), 1, "{allowed:?}");
    assert_eq!(allowed[0]["outcome"], "allowed");
    assert!(landed, "an allowed record without its change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_fails_after_its_record_gets_a_second_record() {
    let env = start().await;
    env.store.fail.store(true, Ordering::SeqCst);
    let err = env
        .broker
        .admin("operator:test", add_tenant("t2"), "req-failed")
        .await
        .err()
        .expect("the commit failed");
    assert_eq!(err.0.code.as_str(), "internal");
    let records = audit_records(&env);
    let mine: Vec<&Value> = records
        .iter()
        .filter(|r| r["request_id"] == "req-failed")
        .collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert_eq!(mine[0]["outcome"], "allowed");
    assert_eq!(mine[1]["outcome"], "failed");
    let first = format!("aud_{}", &mine[0]["hash"].as_str().unwrap()[..20]);
    assert!(
        mine[1]["detail"].as_str().unwrap().contains(&first),
        "{}",
        mine[1]
    );
    assert!(env
        .records
        .tenant(&TenantId::parse("t2").unwrap())
        .await
        .unwrap()
        .is_none());

    // A probe's stamp is a change like any other.
    for op in [
        add_tenant("t3"),
        AdminOp::AddBinding(NewBinding {
            id: BindingId::parse("b3").unwrap(),
            tenant: TenantId::parse("t3").unwrap(),
            provider: credbroker_providers::DEMO_PROVIDER.into(),
            config: json!({}),
            ceiling: Value::Null,
            owner: "team-tests".into(),
            purpose: "integration test".into(),
            max_secret_age_days: None,
            tenant_created_by: None,
        }),
        AdminOp::SecretSet(
            "b3".into(),
            {
                let mut f = SecretFields::new();
                f.insert("token", SecretString::from("probe-me"));
                f
            },
            None,
        ),
    ] {
        env.broker
            .admin("operator:test", op, "setup")
            .await
            .ok()
            .unwrap();
    }
    env.store.fail.store(true, Ordering::SeqCst);
    assert!(env
        .broker
        .admin("operator:test", AdminOp::Probe("b3".into()), "req-probe")
        .await
        .is_err());
    let records = audit_records(&env);
    let probe: Vec<&Value> = records
        .iter()
        .filter(|r| r["request_id"] == "req-probe")
        .collect();
    assert_eq!(probe.len(), 2, "{probe:?}");
    assert_eq!(probe[1]["outcome"], "failed");
    let b3 = env
        .records
        .binding(&BindingId::parse("b3").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(b3.last_tested_at.is_none(), "the failed stamp did not land");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_id_made_while_its_tenant_is_removed_fails_the_removal() {
    let env = start().await;
    env.broker
        .admin("operator:test", add_tenant("t9"), "setup")
        .await
        .ok()
        .unwrap();
    // Another replica: a broker of its own (its own admin lock and audit log) over the same
    // store.
    let tmp2 = tempfile::tempdir().unwrap();
    let config2 = config_in(tmp2.path());
    BrokerKeys::init(&config2).unwrap();
    // (No STS is called: onboarding only generates the ExternalId.)
    let aws: std::collections::BTreeMap<String, toml::Value> = toml::from_str(&format!(
        "[aws_assume_role]\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:9\"\nvendor_account_id = \"111122223333\"\nceiling_file = {:?}\n",
        credbroker_tests::repo_root().join("policies/aws.json").display().to_string()
    ))
    .unwrap();
    // The test store has no leases, so this broker keeps a file log of its own, which a
    // store holding tenants already would refuse as a removed one: a forensic start here.
    let mut settings2 = BrokerSettings::from_config(&config2);
    settings2.audit.forensic_start = true;
    let replica = Broker::open(
        env.store.clone(),
        BrokerKeys::load(&config2).unwrap(),
        ProviderRegistry::from_settings(&aws, tmp2.path())
            .await
            .unwrap(),
        settings2,
    )
    .await
    .unwrap();
    // The removal is planned (the tenant read, no parameter yet) and held in its commit …
    env.store.hold.store(true, Ordering::SeqCst);
    let broker = env.broker.clone();
    let removal = tokio::spawn(async move {
        broker
            .admin(
                "operator:test",
                AdminOp::Remove(Collection::Tenants, "t9".into()),
                "req-remove",
            )
            .await
    });
    tokio::time::timeout(Duration::from_secs(5), env.store.entered.notified())
        .await
        .expect("the removal's commit started");
    // … while the other replica onboards the tenant to AWS, generating its ExternalId.
    let t9 = TenantId::parse("t9").unwrap();
    let onboarded = replica
        .admin(
            "operator:test",
            AdminOp::Onboard(
                "aws_assume_role".into(),
                t9.clone(),
                None,
                None,
                String::new(),
            ),
            "req-onboard",
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("onboarding failed: {}", e.message));
    let external_id = onboarded.response["external_id"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            onboarded.response["parameters"]["external_id"]
                .as_str()
                .map(str::to_owned)
        });
    env.store.release.notify_one();
    let removed = removal.await.unwrap();
    let err = removed.err().expect("the removal must fail").0;
    assert_eq!(err.code.as_str(), "conflict", "{}", err.message);
    // The tenant stays, with its value: not a value without its tenant.
    assert!(env.records.tenant(&t9).await.unwrap().is_some());
    let kept = env
        .records
        .tenant_parameter("aws_assume_role", "external_id", &t9)
        .await
        .unwrap();
    assert!(kept.is_some());
    if let Some(id) = external_id {
        assert_eq!(kept.as_deref(), Some(id.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_before_it_is_judged_is_audited() {
    let env = start().await;
    env.store.fail_sync.store(true, Ordering::SeqCst);
    let (err, receipt) = env
        .broker
        .admin("operator:test", add_tenant("t5"), "req-unjudged")
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code.as_str(), "unavailable");
    let receipt = receipt.expect("the refusal has an audit record");
    let records = audit_records(&env);
    let mine: Vec<&Value> = records
        .iter()
        .filter(|r| r["request_id"] == "req-unjudged")
        .collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["outcome"], "failed");
    assert_eq!(mine[0]["error_code"], "unavailable");
    assert_eq!(mine[0]["action"], "tenant.add");
    assert_eq!(
        format!("aud_{}", &mine[0]["hash"].as_str().unwrap()[..20]),
        receipt.audit_id
    );
}

/// A broker over the gated store with a Data Center binding `acme-jira` of tenant t1 on a
/// fake instance, its PAT (60 days, with its id) set and probed active: the fake, the
/// broker and that PAT.
async fn active_pat_binding() -> (
    credbroker_tests::fake_atlassian_dc::FakeAtlassianDc,
    Env,
    credbroker_tests::fake_atlassian_dc::FakePat,
) {
    let dc = credbroker_tests::fake_atlassian_dc::FakeAtlassianDc::start().await;
    let env = start_with(Some(&format!(
        "[atlassian_dc_pat]\nallowed_hosts = [\"{}\"]\nnew_token_days = 90\ntimeout_ms = 3000\n",
        dc.authority
    )))
    .await;
    let old = dc.state.issue("scanner", 60);
    {
        let admin = |op| env.broker.admin("operator:test", op, "req-dc");
        admin(add_tenant("t1"))
            .await
            .map_err(|(e, _)| e.message)
            .unwrap();
        let binding: NewBinding = serde_json::from_value(json!({
            "id": "acme-jira", "tenant": "t1", "provider": "atlassian_dc_pat",
            "owner": "team-tests", "purpose": "integration test",
            "config": {"base_url": dc.url, "product": "jira"}
        }))
        .unwrap();
        admin(AdminOp::AddBinding(binding))
            .await
            .map_err(|(e, _)| e.message)
            .unwrap();
        let mut fields = SecretFields::new();
        fields.insert("token", SecretString::from(old.raw.clone()));
        fields.insert("token_id", SecretString::from(old.id.to_string()));
        admin(AdminOp::SecretSet("acme-jira".into(), fields, None))
            .await
            .map_err(|(e, _)| e.message)
            .unwrap();
        admin(AdminOp::Probe("acme-jira".into()))
            .await
            .map_err(|(e, _)| e.message)
            .unwrap();
    }
    (dc, env, old)
}

/// A self-rotation whose promotion commit lands but whose answer is lost (the store applied
/// it, then answered with an error): the successor is what resolves hand out, so it is not
/// withdrawn upstream — the rotation reads the binding afresh and goes on as promoted,
/// revoking the old PAT. (Before, any error withdrew the successor: the binding served a
/// revoked PAT and the old, valid one was superseded, never served again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_rotation_whose_promotion_answer_is_lost_keeps_its_successor() {
    let (dc, env, old) = active_pat_binding().await;
    let admin = |op| env.broker.admin("operator:test", op, "req-dc");

    env.store
        .lose_promotion_answer
        .store(true, Ordering::SeqCst);
    let rotated = admin(AdminOp::SecretSelfRotate("acme-jira".into())).await;
    assert!(
        !env.store.lose_promotion_answer.load(Ordering::SeqCst),
        "the promotion was committed"
    );
    let id = BindingId::parse("acme-jira").unwrap();
    let b = env.records.binding(&id).await.unwrap().unwrap();
    assert_eq!(b.active_secret_version, Some(2));
    let pats = dc.state.pats.lock().unwrap().clone();
    assert_eq!(pats.len(), 1, "{pats:?}");
    assert_ne!(
        pats[0].id, old.id,
        "the old PAT was revoked, its successor kept"
    );
    let outcome = rotated.map_err(|(e, _)| e.message).unwrap();
    assert_eq!(
        outcome.response["old_revoked_upstream"], true,
        "{}",
        outcome.response
    );
    let records = audit_records(&env);
    assert!(
        !records
            .iter()
            .any(|r| r["action"] == "secret.revoke_upstream"
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("successor"))),
        "the successor was withdrawn: {records:?}"
    );
}

/// A self-rotation whose promotion commit fails in the store (the broker cannot know whether
/// it landed: a PostgreSQL COMMIT may apply after its answer is lost): the successor is not
/// withdrawn upstream (it might be what resolves hand out), it stays the pending version, and
/// the record says the outcome is not known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_rotation_whose_promotion_commit_fails_keeps_its_successor() {
    let (dc, env, _old) = active_pat_binding().await;
    let admin = |op| env.broker.admin("operator:test", op, "req-dc");

    env.store.fail_promotion.store(true, Ordering::SeqCst);
    let rotated = admin(AdminOp::SecretSelfRotate("acme-jira".into())).await;
    assert!(rotated.is_err(), "the promotion failed");
    assert!(!env.store.fail_promotion.load(Ordering::SeqCst));
    let id = BindingId::parse("acme-jira").unwrap();
    let b = env.records.binding(&id).await.unwrap().unwrap();
    assert_eq!(b.active_secret_version, Some(1));
    assert_eq!(b.pending_secret_version, Some(2));
    assert_eq!(
        dc.state.pats.lock().unwrap().len(),
        2,
        "the successor was withdrawn, or the old PAT revoked"
    );
    let records = audit_records(&env);
    assert!(
        records
            .iter()
            .any(|r| r["action"] == "secret.revoke_upstream"
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("is not known"))),
        "{records:?}"
    );
}

/// A customer who submits an intake link twice at once (a double click on "Store"): the
/// second submission passes the staged-version check while the first one's version is
/// being written, then reserves an attempt once it is. The first version passes its probe
/// and is promoted — the link changed only by that reservation, which cannot write — and the
/// second is refused. (Before, the first was refused at its promotion because the link had
/// changed, its version destroyed, the second refused as staged: two attempts, nothing
/// stored.) The interleaving is made exact by holding the first one's write in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_intake_submission_stores_the_first() {
    use credbroker_tests::fake_servicenow::FakeServiceNow;
    const CLIENT: &str = "3f1c0ffee0c0ffee0c0ffee0c0ffee01";
    const SECRET: &str = "sn-client-secret-v1-0123456789";
    let sn = FakeServiceNow::start(CLIENT, SECRET, &["snc_read_only"]).await;
    let env = start_configured(
        Some(&format!(
            "[servicenow_oauth]\nceiling_file = {:?}\nallowed_hosts = [\"{}\"]\ntimeout_ms = 3000\n",
            credbroker_tests::repo_root()
                .join("policies/servicenow.json")
                .display()
                .to_string(),
            sn.authority
        )),
        true,
    )
    .await;
    let admin = |op| env.broker.admin("operator:test", op, "req-intake");
    admin(add_tenant("t1"))
        .await
        .map_err(|(e, _)| e.message)
        .unwrap();
    let binding: NewBinding = serde_json::from_value(json!({
        "id": "acme-snow", "tenant": "t1", "provider": "servicenow_oauth",
        "owner": "team-tests", "purpose": "integration test",
        "config": {"instance_url": sn.url}
    }))
    .unwrap();
    admin(AdminOp::AddBinding(binding))
        .await
        .map_err(|(e, _)| e.message)
        .unwrap();
    let link: credbroker::admin::NewIntake =
        serde_json::from_value(json!({"binding": "acme-snow", "ttl_s": 3600})).unwrap();
    let created = admin(AdminOp::IntakeCreate(link))
        .await
        .map_err(|(e, _)| e.message)
        .unwrap();
    let url = created.response["url"].as_str().unwrap().to_owned();
    let token = url.rsplit('/').next().unwrap().to_owned();

    // The form, as the customer's browser gets it: its cookie and CSRF value.
    let page = env
        .broker
        .intake_http(
            false,
            &token,
            &http::HeaderMap::new(),
            Ok(Default::default()),
            "r0",
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.html);
    let cookie = page.set_cookie.unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let csrf = credbroker_tests::intake_csrf(&page.html);
    let enc = |v: &str| -> String {
        v.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let form = format!(
        "csrf={}&f_client_id={}&f_client_secret={}",
        enc(&csrf),
        enc(CLIENT),
        enc(SECRET)
    );
    let submit = |rid: &'static str| {
        let broker = env.broker.clone();
        let (token, cookie, form) = (token.clone(), cookie.clone(), form.clone());
        tokio::spawn(async move {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::COOKIE, cookie.parse().unwrap());
            broker
                .intake_http(true, &token, &headers, Ok(form.into_bytes().into()), rid)
                .await
        })
    };
    // The first reserves its attempt; its pending version's write is held…
    env.store.hold_pending.store(true, Ordering::SeqCst);
    let entered = env.store.entered.notified();
    let first = submit("r1");
    entered.await;
    // …while the second passes the staged check and waits to reserve its own.
    let second = submit("r2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.store.release.notify_one();
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    let stored = [&first, &second]
        .iter()
        .filter(|p| p.status == 200 && p.html.contains("Stored and verified"))
        .count();
    assert_eq!(
        stored, 1,
        "first: {} {}\nsecond: {} {}",
        first.status, first.html, second.status, second.html
    );
    let id = BindingId::parse("acme-snow").unwrap();
    let b = env.records.binding(&id).await.unwrap().unwrap();
    assert!(b.active_secret_version.is_some(), "nothing stored: {b:?}");
}

/// A self-rotation that fails after its intent is on record answers with that record, and is
/// not audited again as a refusal: here the broker starts stopping while the successor's
/// version is being written, so its probe is refused (no exchange starts once a stop has
/// begun), and the successor is withdrawn. (Before, the refusal carried no receipt and a
/// `denied` secret.self_rotate record was added after the steps that had happened.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_rotation_failing_after_its_intent_is_not_recorded_as_refused() {
    let (_dc, env, _old) = active_pat_binding().await;
    env.store.hold_pending.store(true, Ordering::SeqCst);
    let entered = env.store.entered.notified();
    let rotation = {
        let broker = env.broker.clone();
        tokio::spawn(async move {
            broker
                .admin(
                    "operator:test",
                    AdminOp::SecretSelfRotate("acme-jira".into()),
                    "req-stop",
                )
                .await
        })
    };
    entered.await;
    let settling = {
        let broker = env.broker.clone();
        tokio::spawn(async move { broker.settle_reports(tokio::time::Instant::now()).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.store.release.notify_one();
    let refused = rotation.await.unwrap();
    settling.await.unwrap();
    let (err, receipt) = match refused {
        Ok(o) => panic!("the rotation went through: {}", o.response),
        Err(refused) => refused,
    };
    assert!(
        receipt.is_some(),
        "{}: answered without its record",
        err.message
    );
    let records = audit_records(&env);
    let denied: Vec<_> = records
        .iter()
        .filter(|r| r["action"] == "secret.self_rotate" && r["outcome"] == "denied")
        .collect();
    assert!(denied.is_empty(), "{denied:?}");
    assert!(records
        .iter()
        .any(|r| r["action"] == "secret.self_rotate" && r["outcome"] == "allowed"));
}
