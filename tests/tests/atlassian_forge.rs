//! `atlassian_forge` end to end against the local fake Forge: the real daemon verifies
//! Forge invocation tokens (FITs) on its public listener (`POST /forge/{invoke,trigger,
//! lifecycle}`) against the fake's JWKS, binds an onboarded (expected) Atlassian site to its
//! tenant on the first verified invocation, keeps an unexpected site unclaimed, re-binds a
//! reinstall, captures the app system token each hourly trigger carries and hands it to that
//! tenant's workers only — never expired, never older than the one held, never narrowed,
//! never in a log, an audit record or on disk in clear. Every defective FIT is refused with
//! `401 invocation_rejected`, counted, not audited, and changes nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use credbroker::client::BrokerClient;
use credbroker_tests::fake_forge::{
    fingerprint, invoke_body, lifecycle_body, now, send, send_raw, system_token, trigger_body,
    Defect, FakeForge, Site,
};
use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

/// Our Forge app.
const APP_ID: &str = "ari:cloud:ecosystem::app/5b8e4b0c-1f3a-4c2d-9e7f-0a1b2c3d4e5f";
/// Customer sites (cloudIds).
const ACME: &str = "11111111-2222-4333-8444-555555555555";
const GLOBEX: &str = "22222222-3333-4444-8555-666666666666";
const STRAY: &str = "33333333-4444-4555-8666-777777777777";
/// Installations of our app on them.
const ACME_INST: &str = "aaaaaaaa-1111-4222-8333-444444444444";
const ACME_REINST: &str = "aaaaaaaa-5555-4666-8777-888888888888";
const GLOBEX_INST: &str = "bbbbbbbb-1111-4222-8333-444444444444";
const STRAY_INST: &str = "cccccccc-1111-4222-8333-444444444444";
const HOUR: i64 = 3600;
/// How long a detached store write may take to become visible after its 200.
const SETTLE: Duration = Duration::from_secs(10);

struct Env {
    _tmp: tempfile::TempDir,
    pki: Arc<TestPki>,
    daemon: Daemon,
    forge: FakeForge,
    op: BrokerClient,
    public: BrokerClient,
}

fn acme() -> Site {
    Site::new(ACME, ACME_INST)
}

fn globex() -> Site {
    Site::new(GLOBEX, GLOBEX_INST)
}

fn stray() -> Site {
    Site::new(STRAY, STRAY_INST)
}

/// RFC 3339 of Unix time `t`, as the resolve answer's `expires_at`.
fn rfc(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn start() -> Env {
    start_with("").await
}

/// The daemon with `[public]` and `[providers.atlassian_forge]` (JWKS at the fake), plus
/// `provider_extra` lines in the provider's section; tenants t1, t2 (seed_two_tenants), worker
/// w1 serving t1 and w2 serving t2.
async fn start_with(provider_extra: &str) -> Env {
    let (tmp, pki) = setup();
    let forge = FakeForge::start(APP_ID).await;
    let (public, _port) = public_section(&pki);
    let extra = format!(
        "{public}[providers.atlassian_forge]\napp_id = \"{APP_ID}\"\njwks_url = \"{}\"\nceiling_file = {:?}\ntimeout_ms = 3000\n{provider_extra}",
        forge.jwks_url,
        repo_root()
            .join("policies/atlassian.json")
            .display()
            .to_string(),
    );
    let daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            extra_toml: extra,
            ..Default::default()
        },
    );
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    pki.worker("w2");
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/workers",
        Some(json!({"id": "w2", "tenants": ["t2"]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let public = public_client(&pki, daemon.public_url.as_ref().expect("public listener"));
    Env {
        _tmp: tmp,
        pki,
        daemon,
        forge,
        op,
        public,
    }
}

impl Env {
    fn worker(&self, name: &str) -> BrokerClient {
        self.pki.client_for(name, &self.daemon.url)
    }

    fn public_url(&self) -> String {
        self.daemon.public_url.clone().unwrap()
    }

    /// `credbroker ARGS` as operator `op`.
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        operator_cli(&self.pki, &self.daemon.url, args)
    }

    /// `credbroker onboard atlassian --tenant T --cloud-id C`: exit code, parsed stdout
    /// (`null` on failure), stderr.
    fn onboard(&self, tenant: &str, cloud_id: &str) -> (i32, Value, String) {
        let (c, out, err) = self.cli(&[
            "onboard",
            "atlassian",
            "--tenant",
            tenant,
            "--cloud-id",
            cloud_id,
        ]);
        (c, serde_json::from_str(&out).unwrap_or(Value::Null), err)
    }

    /// Onboards, expecting success.
    fn expect_site(&self, tenant: &str, cloud_id: &str) -> Value {
        let (c, v, err) = self.onboard(tenant, cloud_id);
        assert_eq!(c, 0, "onboard {tenant} {cloud_id}: {err}");
        v
    }

    /// `credbroker unclaimed list`, parsed.
    fn unclaimed(&self) -> Vec<Value> {
        let (c, out, err) = self.cli(&["unclaimed", "list"]);
        assert_eq!(c, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v["unclaimed"].as_array().cloned().unwrap_or_default()
    }

    /// One invocation of `kind` from `site` with a fresh valid FIT.
    async fn invoke(&mut self, kind: &str, site: &Site, token: Option<&str>) -> (u16, Value) {
        let fit = match kind {
            "invoke" => self.forge.fit(site).endpoint("credbroker-endpoint"),
            _ => self.forge.fit(site),
        }
        .token();
        let body = match kind {
            "invoke" => invoke_body(site),
            "lifecycle" => lifecycle_body("avi:forge:installed:app", site, APP_ID),
            _ => trigger_body(site),
        };
        let (s, v) = send(&mut self.public, kind, Some(fit.as_str()), token, &body).await;
        self.outcome(s, v).await
    }

    /// What an acknowledged invocation did. The broker answers 200 `accepted` before its
    /// audited store write (Forge's 5 s budget) and logs the result under the request id:
    /// `(200, {"result": bound|rebound|captured|kept|unclaimed|ignored})` once applied, or the
    /// refusal's status and code. Anything else is returned as it came.
    async fn outcome(&self, s: u16, v: Value) -> (u16, Value) {
        if s != 200 || v["result"] != "accepted" {
            return (s, v);
        }
        let rid = v["request_id"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + SETTLE;
        loop {
            let logs = self.daemon.logs();
            let line = logs
                .lines()
                .find(|l| l.contains(&rid) && l.contains("invocation"))
                .map(str::to_owned);
            if let Some(line) = line {
                // Text (`result="bound"`) or JSON (`"result":"bound"`) log lines.
                let field = |name: &str| {
                    let (at, len) = [format!("{name}="), format!("\"{name}\":")]
                        .iter()
                        .find_map(|k| line.find(k.as_str()).map(|i| (i, k.len())))?;
                    Some(
                        line[at + len..]
                            .trim_start_matches('"')
                            .split(['"', ' ', ','])
                            .next()?
                            .to_owned(),
                    )
                };
                if line.contains("invocation applied") {
                    return (200, json!({"result": field("result"), "request_id": rid}));
                }
                let code = field("code").unwrap_or_default();
                let status = match code.as_str() {
                    "conflict" => 409,
                    "unavailable" => 503,
                    _ => 500,
                };
                return (status, json!({"error": {"code": code}, "request_id": rid}));
            }
            assert!(
                Instant::now() < deadline,
                "invocation {rid} was acknowledged but never applied"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The hourly trigger from `site` carrying `token`.
    async fn trigger(&mut self, site: &Site, token: &str) -> (u16, Value) {
        self.invoke("trigger", site, Some(token)).await
    }

    /// The Forge binding of `cloud_id`, if any (from the admin API's binding list).
    async fn binding_for(&mut self, cloud_id: &str) -> Option<Value> {
        let (s, v) = call(&mut self.op, Method::GET, "/v1/admin/bindings", None).await;
        assert_eq!(s, 200, "{v}");
        v["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["provider"] == "atlassian_forge" && b["config"]["cloud_id"] == cloud_id)
            .cloned()
    }

    /// Waits (the store write follows the 200) until `cloud_id`'s binding satisfies `ok`.
    async fn wait_binding(&mut self, cloud_id: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + SETTLE;
        loop {
            let b = self.binding_for(cloud_id).await;
            if let Some(found) = b.clone().filter(&ok) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "binding of {cloud_id} never got there: {b:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn add_instance(&mut self, id: &str, tenant: &str, binding: &str) -> (u16, Value) {
        call(
            &mut self.op,
            Method::POST,
            "/v1/admin/instances",
            Some(json!({"id": id, "tenant": tenant, "binding": binding, "connector_kind": "jira"})),
        )
        .await
    }

    /// Resolves as `worker` until the answer carries `token` (a capture commits after its
    /// 200); the answer.
    async fn wait_token(&self, worker: &str, instance: &str, token: &str) -> Value {
        let deadline = Instant::now() + SETTLE;
        let mut w = self.worker(worker);
        loop {
            let (s, v) = resolve(&mut w, json!({"instance_id": instance})).await;
            if s == 200 && v["credentials"]["access_token"] == token {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{worker} never got the expected token through {instance}: {s} {}",
                redact(&v)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The access token `worker` gets through `instance` now (panics unless 200).
    async fn current_token(&self, worker: &str, instance: &str) -> String {
        let (s, v) = resolve(&mut self.worker(worker), json!({"instance_id": instance})).await;
        assert_eq!(s, 200, "{}", redact(&v));
        v["credentials"]["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn audit_count(&self) -> usize {
        self.daemon.audit_records().len()
    }

    fn audited(&self, action: &str) -> Vec<Value> {
        self.daemon
            .audit_records()
            .into_iter()
            .filter(|r| r["action"] == action)
            .collect()
    }

    /// Onboards `site` for `tenant`, binds it with a trigger carrying `token`, adds instance
    /// `instance` on the binding and waits until `token` resolves through it; the binding id.
    async fn bind(&mut self, tenant: &str, site: &Site, token: &str, instance: &str) -> String {
        self.expect_site(tenant, &site.cloud_id);
        let (s, v) = self.trigger(site, token).await;
        assert_eq!((s, v["result"].as_str()), (200, Some("bound")), "{v}");
        let b = self
            .wait_binding(&site.cloud_id, |b| b["active_secret_version"].is_u64())
            .await;
        assert_eq!(b["tenant"], tenant, "{b}");
        let id = b["id"].as_str().unwrap().to_owned();
        let (s, v) = self.add_instance(instance, tenant, &id).await;
        assert_eq!(s, 201, "{v}");
        let worker = if tenant == "t1" { "w1" } else { "w2" };
        self.wait_token(worker, instance, token).await;
        id
    }
}

/// An answer with any access token blanked (for assertion messages).
fn redact(v: &Value) -> Value {
    let mut v = v.clone();
    if v["credentials"].is_object() {
        v["credentials"] = json!("<redacted>");
    }
    v
}

/// `provider_unavailable` (the spec says 503; the core answers the code with 504 today).
fn assert_unavailable(s: u16, v: &Value, what: &str) {
    assert!(
        matches!(s, 503 | 504) && code(v) == "provider_unavailable",
        "{what}: {s} {}",
        redact(v)
    );
}

/// `credbroker_callbacks_total{provider="atlassian_forge",outcome="denied",code="invocation_rejected"}`.
async fn invocations_rejected(env: &Env) -> u64 {
    let (_, m) = scrape(&env.pki, &env.daemon.url).await;
    String::from_utf8(m)
        .unwrap()
        .lines()
        .filter(|l| {
            l.starts_with("credbroker_callbacks_total{")
                && l.contains("provider=\"atlassian_forge\"")
                && l.contains("outcome=\"denied\"")
                && l.contains("code=\"invocation_rejected\"")
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn walk_bytes(dir: &std::path::Path, out: &mut Vec<u8>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk_bytes(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_from_an_expected_site_binds_it_and_its_token_resolves() {
    let mut env = start().await;
    let site = acme();
    let v = env.expect_site("t1", ACME);
    assert!(v["expected_site"].to_string().contains(ACME), "{v}");
    assert!(v["expires_at"].is_string(), "{v}");
    assert_eq!(
        v["remote_base_url"],
        format!("{}/forge", env.public_url()),
        "{v}"
    );
    assert!(env.binding_for(ACME).await.is_none(), "expected, not bound");

    let exp = now() + 2 * HOUR;
    let token = system_token(exp);
    let (s, v) = env.trigger(&site, &token).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("bound")), "{v}");
    assert!(v["request_id"].is_string(), "{v}");
    assert!(!v.to_string().contains(&token), "token echoed: {v}");

    let b = env
        .wait_binding(ACME, |b| b["active_secret_version"].is_u64())
        .await;
    assert_eq!(b["tenant"], "t1", "{b}");
    assert_eq!(b["status"], "active", "{b}");
    assert_eq!(b["config"]["installation_id"], site.installation_id, "{b}");
    assert_eq!(b["config"]["environment"], "PRODUCTION", "{b}");
    assert_eq!(b["config"]["api_base_url"], site.api_base_url(), "{b}");
    assert_eq!(b["config"]["previous_installations"], json!([]), "{b}");
    let binding = b["id"].as_str().unwrap().to_owned();
    assert!(binding.starts_with("atlassian-forge-"), "{binding}");

    let bound = env.audited("forge.bound");
    assert_eq!(bound.len(), 1, "{bound:?}");
    assert_eq!(bound[0]["tenant"], "t1");
    let captured = env.audited("forge.token_captured");
    assert_eq!(captured.len(), 1, "{captured:?}");
    assert!(
        captured[0].to_string().contains(&fingerprint(&token)),
        "the capture names the token's fingerprint: {}",
        captured[0]
    );

    let (s, v) = env.add_instance("i-forge", "t1", &binding).await;
    assert_eq!(s, 201, "{v}");
    let v = env.wait_token("w1", "i-forge", &token).await;
    assert_eq!(v["kind"], "atlassian_system_token", "{}", redact(&v));
    assert_eq!(v["provider"], "atlassian_forge", "{}", redact(&v));
    assert_eq!(v["expires_at"], rfc(exp), "{}", redact(&v));
    assert_eq!(v["details"]["cloud_id"], ACME, "{}", redact(&v));
    assert_eq!(
        v["details"]["api_base_url"],
        site.api_base_url(),
        "{}",
        redact(&v)
    );

    // The expectation was consumed: nothing is pending for ACME any more, and a second
    // trigger of the same installation only refreshes the token.
    let fresher = system_token(exp + 60);
    let (s, v) = env.invoke("invoke", &site, Some(fresher.as_str())).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    env.wait_token("w1", "i-forge", &fresher).await;
    assert_eq!(env.audited("forge.bound").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fit_defect_is_rejected_and_changes_nothing() {
    let mut env = start().await;
    env.expect_site("t1", ACME);
    let token = system_token(now() + 2 * HOUR);
    let audit_before = env.audit_count();
    let rejected_before = invocations_rejected(&env).await;
    let mut sent = 0;
    for &defect in Defect::ALL {
        for site in [acme(), stray()] {
            let fit = env.forge.defective(&site, defect);
            let (s, v) = send(
                &mut env.public,
                "trigger",
                Some(fit.as_str()),
                Some(token.as_str()),
                &trigger_body(&site),
            )
            .await;
            sent += 1;
            assert_eq!(
                (s, code(&v)),
                (401, "invocation_rejected"),
                "{defect:?} from {}: {v}",
                site.cloud_id
            );
            assert!(v["error"]["audit_id"].is_null(), "{defect:?}: {v}");
            assert!(!v.to_string().contains(&token), "{defect:?}: {v}");
        }
    }
    // The other routes verify the same way.
    for (kind, body) in [
        ("invoke", invoke_body(&acme())),
        (
            "lifecycle",
            lifecycle_body("avi:forge:installed:app", &acme(), APP_ID),
        ),
    ] {
        for defect in [Defect::AlgNone, Defect::OtherAppAudience, Defect::Expired] {
            let fit = env.forge.defective(&acme(), defect);
            let (s, v) = send(
                &mut env.public,
                kind,
                Some(fit.as_str()),
                Some(token.as_str()),
                &body,
            )
            .await;
            sent += 1;
            assert_eq!(
                (s, code(&v)),
                (401, "invocation_rejected"),
                "{kind} {defect:?}: {v}"
            );
        }
    }
    // Anyone can send these: counted, never audited, nothing stored (a detached write would
    // have landed by now).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.audit_count(),
        audit_before,
        "a rejected FIT was audited"
    );
    assert_eq!(
        invocations_rejected(&env).await,
        rejected_before + sent,
        "every rejection is counted"
    );
    assert!(env.binding_for(ACME).await.is_none());
    assert!(env.binding_for(STRAY).await.is_none());
    assert!(env.unclaimed().is_empty(), "a rejected FIT left a record");

    // The expectation is intact: the first valid trigger binds.
    let (s, v) = env.trigger(&acme(), &token).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("bound")), "{v}");
    let b = env.wait_binding(ACME, |_| true).await;
    assert_eq!(b["tenant"], "t1", "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refetches_the_jwks_once_within_the_cooldown() {
    let mut env = start().await;
    env.bind("t1", &acme(), &system_token(now() + 2 * HOUR), "i-forge")
        .await;
    let fetched = env.forge.jwks_fetches();
    assert!(fetched >= 1, "the JWKS was never fetched");
    // Whether or not the first load starts the 30 s cooldown, a refetch is due after it.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let fetched = env.forge.jwks_fetches();

    // Forge rotates: a FIT under the new kid makes the broker refetch once, and verifies.
    env.forge.rotate("forge-key-2");
    let token = system_token(now() + 3 * HOUR);
    let (s, v) = env.trigger(&acme(), &token).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    assert_eq!(env.forge.jwks_fetches(), fetched + 1, "one refetch");

    // A burst of FITs under unknown kids, concurrent and then one by one: no more fetches
    // inside the 30 s cooldown.
    let url = env.public_url();
    let mut tasks = Vec::new();
    // Three at once: with the test's own connection, the public listener's default of
    // four connections per source.
    for _ in 0..3 {
        let fit = env.forge.defective(&acme(), Defect::UnknownKid);
        let mut public = public_client(&env.pki, &url);
        tasks.push(tokio::spawn(async move {
            let body = trigger_body(&acme());
            send(&mut public, "trigger", Some(fit.as_str()), None, &body).await
        }));
    }
    for t in tasks {
        let (s, v) = t.await.unwrap();
        assert_eq!((s, code(&v)), (401, "invocation_rejected"), "{v}");
    }
    for _ in 0..5 {
        let fit = env.forge.defective(&acme(), Defect::UnknownKid);
        let (s, v) = send(
            &mut env.public,
            "trigger",
            Some(fit.as_str()),
            None,
            &trigger_body(&acme()),
        )
        .await;
        assert_eq!((s, code(&v)), (401, "invocation_rejected"), "{v}");
    }
    // Even a key Forge publishes now is not fetched before the cooldown ends.
    let late = env.forge.add_key("forge-key-3");
    let fit = env.forge.fit(&acme()).signed_by(late).token();
    let (s, v) = send(
        &mut env.public,
        "trigger",
        Some(fit.as_str()),
        None,
        &trigger_body(&acme()),
    )
    .await;
    assert_eq!((s, code(&v)), (401, "invocation_rejected"), "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.forge.jwks_fetches(),
        fetched + 1,
        "unknown kids refetched the JWKS inside the cooldown"
    );

    // Keys already held keep verifying without a fetch (the old key is still published).
    let old = env.forge.key("forge-key-1").expect("still published");
    let fit = env.forge.fit(&acme()).signed_by(old).token();
    let (s, v) = send(
        &mut env.public,
        "trigger",
        Some(fit.as_str()),
        None,
        &trigger_body(&acme()),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(env.forge.jwks_fetches(), fetched + 1);
    env.wait_token("w1", "i-forge", &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unexpected_site_is_kept_unclaimed_until_an_operator_claims_it() {
    let mut env = start().await;
    let site = stray();
    // Tokens sent while unclaimed expire later than the one sent after the claim: had either
    // been kept, the claimed binding would hand it out instead.
    let early = system_token(now() + 3 * HOUR);
    let (s, v) = env.trigger(&site, &early).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("unclaimed")), "{v}");
    let identifier = format!("atlassian_site:{STRAY}");
    let deadline = Instant::now() + SETTLE;
    let listed = loop {
        let list = env.unclaimed();
        if let Some(u) = list.iter().find(|u| u["identifier"] == identifier.as_str()) {
            break u.clone();
        }
        assert!(Instant::now() < deadline, "never unclaimed: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listed["provider"], "atlassian_forge", "{listed}");
    assert!(!listed.to_string().contains(&early), "token kept: {listed}");
    assert!(env.binding_for(STRAY).await.is_none(), "never bound");
    let about_stray = |env: &Env| {
        env.daemon
            .audit_records()
            .into_iter()
            .filter(|r| r["action"] != "unclaimed.list" && r.to_string().contains(STRAY))
            .count()
    };
    let audited = about_stray(&env);
    assert_eq!(audited, 1, "one audit record per new unclaimed site");

    // The same site again: still one record, one audit record.
    let second = system_token(now() + 2 * HOUR + 1800);
    let (s, v) = env.trigger(&site, &second).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("unclaimed")), "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        about_stray(&env),
        audited,
        "a known unclaimed site audited again"
    );
    let list = env.unclaimed();
    assert_eq!(
        list.iter()
            .filter(|u| u["identifier"] == identifier.as_str())
            .count(),
        1,
        "{list:?}"
    );
    // Nobody can resolve it: no tenant has a binding to put an instance on.
    for w in ["w1", "w2"] {
        let (s, v) = resolve(&mut env.worker(w), json!({"instance_id": "i-stray"})).await;
        assert_eq!((s, code(&v)), (404, "unknown_instance"), "{v}");
    }

    // The operator claims it for t2: audited, bound, no longer unclaimed.
    let (c, out, err) = env.cli(&[
        "unclaimed",
        "claim",
        "--identifier",
        &identifier,
        "--tenant",
        "t2",
    ]);
    assert_eq!(c, 0, "{err}");
    let claimed: Value = serde_json::from_str(&out).unwrap();
    let binding = claimed["binding"]["id"].as_str().unwrap().to_owned();
    assert!(env
        .audited("unclaimed.claim")
        .iter()
        .any(|r| r["outcome"] == "allowed" && r["tenant"] == "t2"));
    assert!(env.unclaimed().is_empty());
    let b = env.binding_for(STRAY).await.expect("claimed");
    assert_eq!(b["tenant"], "t2", "{b}");
    assert_eq!(b["id"], binding.as_str(), "{b}");
    assert!(
        b["active_secret_version"].is_null(),
        "no token was kept while unclaimed: {b}"
    );

    // The next trigger's token is captured and resolves for t2's worker only.
    let token = system_token(now() + 2 * HOUR);
    let (s, v) = env.trigger(&site, &token).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        matches!(v["result"].as_str(), Some("captured" | "bound")),
        "{v}"
    );
    let b = env
        .wait_binding(STRAY, |b| b["active_secret_version"].is_u64())
        .await;
    if b["status"] != "active" {
        // A claimed binding waits for its probe, as every claimed binding does.
        let (s, v) = call(
            &mut env.op,
            Method::POST,
            &format!("/v1/admin/bindings/{binding}/probe"),
            Some(json!({})),
        )
        .await;
        assert_eq!(
            (s, v["binding"]["status"].as_str()),
            (200, Some("active")),
            "{v}"
        );
    }
    let (s, v) = env.add_instance("i-stray", "t2", &binding).await;
    assert_eq!(s, 201, "{v}");
    env.wait_token("w2", "i-stray", &token).await;
    let (s, v) = resolve(&mut env.worker("w1"), json!({"instance_id": "i-stray"})).await;
    assert_eq!((s, code(&v)), (404, "unknown_instance"), "{}", redact(&v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expectation_that_expired_binds_nothing() {
    let mut env = start_with("expected_site_ttl_s = 1\n").await;
    let v = env.expect_site("t1", ACME);
    assert!(v["expires_at"].is_string(), "{v}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (s, v) = env.trigger(&acme(), &system_token(now() + 2 * HOUR)).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("unclaimed")), "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.binding_for(ACME).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_bound_or_expected_by_one_tenant_is_refused_to_another() {
    let mut env = start().await;
    // Malformed cloudIds are refused before anything is recorded.
    for bad in [
        "acme",
        "https://acme.atlassian.net",
        "11111111-2222-4333-8444",
    ] {
        let (c, _, err) = env.onboard("t1", bad);
        assert_ne!(c, 0, "{bad:?} accepted");
        assert!(err.contains("bad_request (400)"), "{bad:?}: {err}");
    }
    // Expected by t1: t2 cannot expect it too (CLI and API alike).
    env.expect_site("t1", ACME);
    let (c, _, err) = env.onboard("t2", ACME);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("conflict (409)"), "{err}");
    let (s, v) = call(
        &mut env.op,
        Method::POST,
        "/v1/admin/onboard/atlassian_forge",
        Some(json!({"tenant": "t2", "account": {"login": ACME, "id": 0}})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");

    // Bound to t1: still refused to t2; t2 cannot put an instance on it either.
    let token = system_token(now() + 2 * HOUR);
    let binding = env.bind("t1", &acme(), &token, "i-forge").await;
    let (c, _, err) = env.onboard("t2", ACME);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("conflict (409)"), "{err}");
    let (s, v) = env.add_instance("i-steal", "t2", &binding).await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");

    // Forge names ACME's installation with GLOBEX's site (expected by t2): the installation
    // belongs to another site's binding — refused, audited, nothing bound or captured.
    env.expect_site("t2", GLOBEX);
    let forged = globex().reinstalled(ACME_INST);
    let audit_before = env.audit_count();
    let sneaky = system_token(now() + 4 * HOUR);
    let (s, v) = env.trigger(&forged, &sneaky).await;
    assert!(
        (s, code(&v)) == (409, "conflict") || (s, v["result"].as_str()) == (200, Some("ignored")),
        "{s} {v}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.audit_count() > audit_before, "the refusal is audited");
    assert!(env.binding_for(GLOBEX).await.is_none());
    assert_eq!(env.current_token("w1", "i-forge").await, token);

    // t1's later triggers reach t1 only.
    let later = system_token(now() + 3 * HOUR);
    let (s, v) = env.trigger(&acme(), &later).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    env.wait_token("w1", "i-forge", &later).await;
    let mut w2 = env.worker("w2");
    let (s, v) = resolve(&mut w2, json!({"instance_id": "i-forge"})).await;
    assert_eq!((s, code(&v)), (404, "unknown_instance"), "{}", redact(&v));
    let (s, v) = resolve(&mut w2, json!({"instance_id": "i2"})).await;
    assert_eq!(s, 200, "{}", redact(&v));
    assert_eq!(v["credentials"]["token"], "t2-token");
    assert!(!v.to_string().contains(&later) && !v.to_string().contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinstall_rebinds_the_site_and_the_old_installation_is_ignored() {
    let mut env = start().await;
    let old = acme();
    let first = system_token(now() + 2 * HOUR);
    let binding = env.bind("t1", &old, &first, "i-forge").await;

    let new = old.reinstalled(ACME_REINST);
    let second = system_token(now() + 3 * HOUR);
    let (s, v) = env.trigger(&new, &second).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("rebound")), "{v}");
    let b = env
        .wait_binding(ACME, |b| {
            b["config"]["installation_id"] == new.installation_id.as_str()
        })
        .await;
    assert_eq!(b["id"], binding.as_str(), "same binding: {b}");
    assert_eq!(b["tenant"], "t1", "{b}");
    assert_eq!(b["status"], "active", "{b}");
    assert_eq!(
        b["config"]["previous_installations"],
        json!([old.installation_id]),
        "{b}"
    );
    let rebound = env.audited("forge.rebound");
    assert_eq!(rebound.len(), 1, "{rebound:?}");
    assert_eq!(rebound[0]["tenant"], "t1");
    env.wait_token("w1", "i-forge", &second).await;

    // The old installation is gone: its invocations are ignored, even with a fresher token.
    let stale = system_token(now() + 3 * HOUR + 1800);
    let (s, v) = env.trigger(&old, &stale).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("ignored")), "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.current_token("w1", "i-forge").await, second);
    let b = env.binding_for(ACME).await.unwrap();
    assert_eq!(b["config"]["installation_id"], new.installation_id, "{b}");
    assert_eq!(env.audited("forge.rebound").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_never_handed_out() {
    let mut env = start().await;
    env.expect_site("t1", ACME);
    // A token about to expire is captured…
    let short_exp = now() + 8;
    let short = system_token(short_exp);
    let (s, v) = env.trigger(&acme(), &short).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("bound")), "{v}");
    let b = env
        .wait_binding(ACME, |b| b["active_secret_version"].is_u64())
        .await;
    let binding = b["id"].as_str().unwrap().to_owned();
    let (s, v) = env.add_instance("i-forge", "t1", &binding).await;
    assert_eq!(s, 201, "{v}");
    // …but with less than a minute left it is not handed out…
    let mut w1 = env.worker("w1");
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i-forge"})).await;
    assert_unavailable(s, &v, "a token with seconds left");
    assert!(!v.to_string().contains(&short));
    // …nor once it has expired.
    let wait = (short_exp + 2 - now()).max(0) as u64;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i-forge"})).await;
    assert_unavailable(s, &v, "an expired token");
    assert!(!v.to_string().contains(&short));
    // A token that arrives already expired is not captured.
    let dead = system_token(now() - 30);
    let (s, v) = env.trigger(&acme(), &dead).await;
    assert!(
        !matches!(v["result"].as_str(), Some("captured" | "bound")),
        "{s} {v}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i-forge"})).await;
    assert_unavailable(s, &v, "after an expired token arrived");
    assert!(!v.to_string().contains(&dead));

    // The next trigger's token serves again.
    let exp = now() + 2 * HOUR;
    let token = system_token(exp);
    let (s, v) = env.trigger(&acme(), &token).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    let v = env.wait_token("w1", "i-forge", &token).await;
    assert_eq!(v["expires_at"], rfc(exp), "{}", redact(&v));
    // min_ttl_s beyond what it has left: refused, naming the next hourly trigger.
    let (s, v) = resolve(
        &mut w1,
        json!({"instance_id": "i-forge", "min_ttl_s": 2 * HOUR + 100}),
    )
    .await;
    assert_unavailable(s, &v, "min_ttl_s beyond the held token");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("trigger"),
        "{v}"
    );
    // Within it: served.
    let (s, v) = resolve(
        &mut w1,
        json!({"instance_id": "i-forge", "min_ttl_s": HOUR}),
    )
    .await;
    assert_eq!(s, 200, "{}", redact(&v));
    assert_eq!(v["credentials"]["access_token"], token.as_str());
    // No system token lives 4 h: asking for that much is a malformed request.
    let (s, v) = resolve(
        &mut w1,
        json!({"instance_id": "i-forge", "min_ttl_s": 14400}),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "bad_request"), "{}", redact(&v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresher_token_replaces_an_older_one_and_never_the_reverse() {
    let mut env = start().await;
    let t0 = now();
    let first = system_token(t0 + 2 * HOUR);
    env.bind("t1", &acme(), &first, "i-forge").await;
    let versions = |b: &Value| b["last_secret_version"].as_u64().unwrap_or(0);
    let v1 = versions(&env.binding_for(ACME).await.unwrap());

    // Fresher: captured.
    let fresher = system_token(t0 + 3 * HOUR);
    let (s, v) = env.trigger(&acme(), &fresher).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    env.wait_token("w1", "i-forge", &fresher).await;
    let v2 = versions(&env.binding_for(ACME).await.unwrap());
    assert_eq!(v2, v1 + 1, "one new secret version per capture");

    // Older, and expiring at the same instant: kept out.
    let older = system_token(t0 + 2 * HOUR + 1800);
    let same = system_token(t0 + 3 * HOUR);
    for t in [&older, &same] {
        let (s, v) = env.trigger(&acme(), t).await;
        assert_eq!((s, v["result"].as_str()), (200, Some("kept")), "{v}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.current_token("w1", "i-forge").await, fresher);
    assert_eq!(versions(&env.binding_for(ACME).await.unwrap()), v2);

    // The remote endpoint (`core:endpoint` invocations) captures the same way.
    let freshest = system_token(t0 + 3 * HOUR + 1800);
    let (s, v) = env.invoke("invoke", &acme(), Some(freshest.as_str())).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    env.wait_token("w1", "i-forge", &freshest).await;

    // One capture record per captured token, naming its fingerprint only.
    let captures: Vec<String> = env
        .audited("forge.token_captured")
        .iter()
        .map(Value::to_string)
        .collect();
    assert_eq!(captures.len(), 3, "{captures:?}");
    for (t, expected) in [
        (&first, true),
        (&fresher, true),
        (&freshest, true),
        (&older, false),
        (&same, false),
    ] {
        assert_eq!(
            captures.iter().any(|c| c.contains(&fingerprint(t))),
            expected,
            "{}",
            fingerprint(t)
        );
    }
    // An invocation without a system token changes nothing.
    let (s, v) = env.invoke("trigger", &acme(), None).await;
    assert_eq!(s, 200, "{v}");
    assert_ne!(v["result"], "captured", "{v}");
    assert_eq!(env.current_token("w1", "i-forge").await, freshest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_another_tenant_cannot_resolve_the_forge_binding() {
    let mut env = start().await;
    let acme_token = system_token(now() + 2 * HOUR);
    let globex_token = system_token(now() + 2 * HOUR + 60);
    let acme_binding = env.bind("t1", &acme(), &acme_token, "i-acme").await;
    env.bind("t2", &globex(), &globex_token, "i-globex").await;

    let mut w1 = env.worker("w1");
    let mut w2 = env.worker("w2");
    // Each tenant's worker gets its own site's token…
    assert_eq!(env.current_token("w1", "i-acme").await, acme_token);
    assert_eq!(env.current_token("w2", "i-globex").await, globex_token);
    // …and never the other's, whatever it claims.
    for (w, instance, other) in [
        (&mut w2, "i-acme", &acme_token),
        (&mut w1, "i-globex", &globex_token),
    ] {
        let (s, v) = resolve(w, json!({"instance_id": instance})).await;
        assert_eq!((s, code(&v)), (404, "unknown_instance"), "{}", redact(&v));
        assert!(!v.to_string().contains(other.as_str()));
    }
    let (s, v) = resolve(&mut w2, json!({"instance_id": "i-acme", "tenant_id": "t1"})).await;
    assert_ne!(s, 200, "{}", redact(&v));
    assert!(!v.to_string().contains(&acme_token));
    // t2 cannot hang an instance on t1's binding.
    let (s, v) = env.add_instance("i-steal", "t2", &acme_binding).await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_a_forge_token_is_refused() {
    let mut env = start().await;
    let token = system_token(now() + 2 * HOUR);
    env.bind("t1", &acme(), &token, "i-forge").await;
    let mut w1 = env.worker("w1");
    for narrow in [
        json!({"scopes": ["read:jira-work"]}),
        json!({"scopes": ["write:jira-work"]}),
        json!({"fields": ["access_token"]}),
    ] {
        let (s, v) = resolve(&mut w1, json!({"instance_id": "i-forge", "narrow": narrow})).await;
        assert!(
            matches!(
                (s, code(&v)),
                (403, "narrowing_exceeds_ceiling") | (400, "bad_request")
            ),
            "{narrow}: {s} {}",
            redact(&v)
        );
        assert!(!v.to_string().contains(&token));
    }
    // Without a narrowing: served at the fixed ceiling.
    assert_eq!(env.current_token("w1", "i-forge").await, token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_reaches_logs_audit_records_or_disk() {
    let mut env = start().await;
    let mut secrets: Vec<String> = Vec::new();
    let first = system_token(now() + 2 * HOUR);
    env.expect_site("t1", ACME);
    let fit = env.forge.fit(&acme()).token();
    let (s, v) = send(
        &mut env.public,
        "trigger",
        Some(fit.as_str()),
        Some(first.as_str()),
        &trigger_body(&acme()),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    secrets.extend([first.clone(), fit]);
    let b = env
        .wait_binding(ACME, |b| b["active_secret_version"].is_u64())
        .await;
    let binding = b["id"].as_str().unwrap().to_owned();
    env.add_instance("i-forge", "t1", &binding).await;
    env.wait_token("w1", "i-forge", &first).await;
    // A fresher one, a stale one, an unclaimed site's, a rejected one.
    let fresher = system_token(now() + 3 * HOUR);
    let (s, _) = env.trigger(&acme(), &fresher).await;
    assert_eq!(s, 200);
    env.wait_token("w1", "i-forge", &fresher).await;
    let stale = system_token(now() + HOUR);
    let (s, _) = env.trigger(&acme(), &stale).await;
    assert_eq!(s, 200);
    let unclaimed = system_token(now() + 2 * HOUR);
    let (s, _) = env.trigger(&stray(), &unclaimed).await;
    assert_eq!(s, 200);
    let rejected = system_token(now() + 2 * HOUR);
    let bad_fit = env.forge.defective(&acme(), Defect::KeyNotInJwks);
    let (s, _) = send(
        &mut env.public,
        "trigger",
        Some(bad_fit.as_str()),
        Some(rejected.as_str()),
        &trigger_body(&acme()),
    )
    .await;
    assert_eq!(s, 401);
    secrets.extend([fresher, stale, unclaimed, rejected, bad_fit]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // What operators can read.
    let mut readable = Vec::new();
    for args in [
        &["binding", "list"][..],
        &["binding", "show", binding.as_str()],
        &["unclaimed", "list"],
    ] {
        let (c, out, err) = env.cli(args);
        assert_eq!(c, 0, "{args:?}: {err}");
        readable.extend(out.into_bytes());
    }
    let (_, metrics) = scrape(&env.pki, &env.daemon.url).await;
    readable.extend(metrics);
    let logs = env.daemon.logs();
    let audit: String = env
        .daemon
        .audit_records()
        .iter()
        .map(Value::to_string)
        .collect();
    let mut disk = Vec::new();
    walk_bytes(&env.daemon.data_dir, &mut disk);
    for s in &secrets {
        assert!(!logs.contains(s.as_str()), "a token or FIT in the logs");
        assert!(
            !audit.contains(s.as_str()),
            "a token or FIT in the audit log"
        );
        assert!(
            !contains(&readable, s),
            "a token or FIT readable by operators"
        );
        assert!(!contains(&disk, s), "a token or FIT on disk in clear");
        // Not even its signature part (the part that makes a JWT a credential).
        let sig = s.rsplit('.').next().unwrap();
        if sig.len() > 20 {
            assert!(!logs.contains(sig), "a token signature in the logs");
            assert!(!contains(&disk, sig), "a token signature on disk");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forge_routes_refuse_wrong_methods_oversized_bodies_and_missing_tokens() {
    let mut env = start().await;
    env.expect_site("t1", ACME);
    let fit = env.forge.fit(&acme()).token();
    let bearer = format!("Bearer {fit}");
    // POST only.
    for (method, path) in [
        (Method::GET, "/forge/trigger"),
        (Method::GET, "/forge/invoke"),
        (Method::PUT, "/forge/lifecycle"),
        (Method::DELETE, "/forge/trigger"),
    ] {
        let (s, v) = send_raw(
            &mut env.public,
            method.clone(),
            path,
            &[("authorization", bearer.as_str())],
            None,
        )
        .await;
        assert_eq!(
            (s, code(&v)),
            (405, "method_not_allowed"),
            "{method} {path}: {v}"
        );
    }
    let (s, _) = send(
        &mut env.public,
        "everything",
        Some(fit.as_str()),
        None,
        &trigger_body(&acme()),
    )
    .await;
    assert_eq!(s, 404, "an unknown Forge route");

    // No, or no usable, FIT: 401, counted, not audited.
    let audit_before = env.audit_count();
    let rejected_before = invocations_rejected(&env).await;
    let body = serde_json::to_vec(&trigger_body(&acme())).unwrap();
    let attempts: [&[(&str, &str)]; 7] = [
        &[],
        &[("x-forge-oauth-system", "a.b.c")],
        &[("authorization", "Basic YWRtaW46YWRtaW4=")],
        &[("authorization", "Bearer ")],
        &[("authorization", "Bearer not-a-jwt")],
        &[("authorization", "Bearer a.b.c")],
        // The token without its scheme.
        &[("authorization", fit.as_str())],
    ];
    for headers in attempts {
        let (s, v) = send_raw(
            &mut env.public,
            Method::POST,
            "/forge/trigger",
            headers,
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (s, code(&v)),
            (401, "invocation_rejected"),
            "{headers:?}: {v}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.audit_count(), audit_before);
    assert_eq!(
        invocations_rejected(&env).await,
        rejected_before + attempts.len() as u64
    );

    // A body beyond the public listener's limit, even under a valid FIT: refused on its
    // declared length (the head alone is sent: a client still writing a refused body may
    // see the connection reset before the answer).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let url = env.public_url();
        let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("https://"))
            .await
            .unwrap();
        let mut tls = client_tls(&env.pki, "w1", b"http/1.1")
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let fit = env.forge.fit(&acme()).token();
        tls.write_all(
            format!(
                "POST /forge/trigger HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {fit}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                200 * 1024
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("payload_too_large"), "{answer}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(env.binding_for(ACME).await.is_none(), "nothing bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_bind_an_expected_site_and_triggers_bring_the_token() {
    let mut env = start().await;
    env.expect_site("t1", ACME);
    // The install event carries no system token: the site is bound, nothing to hand out yet.
    let (s, v) = env.invoke("lifecycle", &acme(), None).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("bound")), "{v}");
    let b = env.wait_binding(ACME, |_| true).await;
    assert_eq!(b["tenant"], "t1", "{b}");
    assert!(b["active_secret_version"].is_null(), "{b}");
    let binding = b["id"].as_str().unwrap().to_owned();
    let (s, v) = env.add_instance("i-forge", "t1", &binding).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = resolve(&mut env.worker("w1"), json!({"instance_id": "i-forge"})).await;
    assert_ne!(s, 200, "no token yet: {}", redact(&v));
    // An upgrade event changes nothing.
    let fit = env.forge.fit(&acme()).token();
    let (s, v) = send(
        &mut env.public,
        "lifecycle",
        Some(fit.as_str()),
        None,
        &lifecycle_body("avi:forge:upgraded:app", &acme(), APP_ID),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_ne!(v["result"], "rebound", "{v}");
    // The hourly trigger brings the token.
    let token = system_token(now() + 2 * HOUR);
    let (s, v) = env.trigger(&acme(), &token).await;
    assert_eq!((s, v["result"].as_str()), (200, Some("captured")), "{v}");
    env.wait_token("w1", "i-forge", &token).await;
    // A FIT with an invocation context and a principal (a user-initiated call) verifies too.
    let fit = env
        .forge
        .fit(&acme())
        .endpoint("credbroker-endpoint")
        .context(json!({"cloudId": ACME, "siteUrl": "https://acme.atlassian.net", "moduleKey": "credbroker-endpoint"}))
        .principal("5b10ac8d82e05b22cc7d4ef5")
        .token();
    let (s, v) = send(
        &mut env.public,
        "invoke",
        Some(fit.as_str()),
        None,
        &invoke_body(&acme()),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}
