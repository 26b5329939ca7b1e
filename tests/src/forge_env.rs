//! The harness of the Forge suites (tests/tests/atlassian_forge*.rs): a daemon with
//! `[public]` and `[providers.atlassian_forge]` pointed at the fake Forge, tenants t1/t2 with
//! workers w1/w2, and helpers that onboard, invoke, wait for the acknowledged change and
//! resolve.

use std::sync::Arc;
use std::time::{Duration, Instant};

use credbroker::client::BrokerClient;
use http::Method;
use serde_json::{json, Value};

use crate::fake_forge::{invoke_body, lifecycle_body, send, trigger_body, FakeForge, Site};
use crate::*;

/// Our Forge app.
pub const APP_ID: &str = "ari:cloud:ecosystem::app/5b8e4b0c-1f3a-4c2d-9e7f-0a1b2c3d4e5f";
/// Customer sites (cloudIds).
pub const ACME: &str = "11111111-2222-4333-8444-555555555555";
pub const GLOBEX: &str = "22222222-3333-4444-8555-666666666666";
pub const STRAY: &str = "33333333-4444-4555-8666-777777777777";
/// Installations of our app on them.
pub const ACME_INST: &str = "aaaaaaaa-1111-4222-8333-444444444444";
pub const ACME_REINST: &str = "aaaaaaaa-5555-4666-8777-888888888888";
pub const GLOBEX_INST: &str = "bbbbbbbb-1111-4222-8333-444444444444";
pub const STRAY_INST: &str = "cccccccc-1111-4222-8333-444444444444";
pub const HOUR: i64 = 3600;
/// How long a detached store write may take to become visible after its 200.
pub const SETTLE: Duration = Duration::from_secs(10);

pub struct Env {
    pub _tmp: tempfile::TempDir,
    pub pki: Arc<TestPki>,
    pub daemon: Daemon,
    pub forge: FakeForge,
    pub op: BrokerClient,
    pub public: BrokerClient,
}

pub fn acme() -> Site {
    Site::new(ACME, ACME_INST)
}

pub fn globex() -> Site {
    Site::new(GLOBEX, GLOBEX_INST)
}

pub fn stray() -> Site {
    Site::new(STRAY, STRAY_INST)
}

/// RFC 3339 of Unix time `t`, as the resolve answer's `expires_at`.
pub fn rfc(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

pub async fn start() -> Env {
    start_with("").await
}

/// The daemon with `[public]` and `[providers.atlassian_forge]` (JWKS at the fake), plus
/// `provider_extra` lines in the provider's section; tenants t1, t2 (seed_two_tenants), worker
/// w1 serving t1 and w2 serving t2.
pub async fn start_with(provider_extra: &str) -> Env {
    start_custom(provider_extra, |public| public).await
}

/// [`start_with`], with the `[public]` section passed through `public` first (to tighten its
/// limits).
pub async fn start_custom(provider_extra: &str, public: impl FnOnce(String) -> String) -> Env {
    let (tmp, pki) = setup();
    let forge = FakeForge::start(APP_ID).await;
    let (section, _port) = public_section(&pki);
    let public = public(section);
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
    seed_two_tenants_and_w2(&pki, &mut op).await;
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
    pub fn worker(&self, name: &str) -> BrokerClient {
        self.pki.client_for(name, &self.daemon.url)
    }

    pub fn public_url(&self) -> String {
        self.daemon.public_url.clone().unwrap()
    }

    /// `credbroker ARGS` as operator `op`.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        operator_cli(&self.pki, &self.daemon.url, args)
    }

    /// `credbroker onboard atlassian --tenant T --cloud-id C`: exit code, parsed stdout
    /// (`null` on failure), stderr.
    pub fn onboard(&self, tenant: &str, cloud_id: &str) -> (i32, Value, String) {
        let (c, out, err) = self.cli(&[
            "onboard",
            "atlassian",
            "--tenant",
            tenant,
            "--cloud-id",
            cloud_id,
            "--owner",
            "team-tests",
            "--purpose",
            "integration test",
        ]);
        (c, serde_json::from_str(&out).unwrap_or(Value::Null), err)
    }

    /// Onboards, expecting success.
    pub fn expect_site(&self, tenant: &str, cloud_id: &str) -> Value {
        let (c, v, err) = self.onboard(tenant, cloud_id);
        assert_eq!(c, 0, "onboard {tenant} {cloud_id}: {err}");
        v
    }

    /// `credbroker unclaimed list`, parsed.
    pub fn unclaimed(&self) -> Vec<Value> {
        let (c, out, err) = self.cli(&["unclaimed", "list"]);
        assert_eq!(c, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v["unclaimed"].as_array().cloned().unwrap_or_default()
    }

    /// One invocation of `kind` from `site` with a fresh valid FIT.
    pub async fn invoke(&mut self, kind: &str, site: &Site, token: Option<&str>) -> (u16, Value) {
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
    pub async fn outcome(&self, s: u16, v: Value) -> (u16, Value) {
        if s != 200 || v["result"] != "accepted" {
            return (s, v);
        }
        let rid = v["request_id"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + SETTLE;
        loop {
            let logs = self.daemon.logs();
            // Whole lines only: the daemon's last line may be read half written (its
            // message before its fields).
            let line = logs
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .find(|l| l.contains(&rid) && l.contains("invocation"))
                .map(|l| l.trim_end().to_owned());
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

    /// The admin page's call from `site`: `code` typed by `account`, the system token
    /// `token` attached (the page's endpoint carries it). Answered once applied.
    pub async fn connect_as(
        &mut self,
        site: &Site,
        account: &str,
        code: &str,
        token: Option<&str>,
    ) -> (u16, Value) {
        let fit = self.forge.fit(site).admin_page(site, account).token();
        send(
            &mut self.public,
            "connect",
            Some(fit.as_str()),
            token,
            &json!({ "code": code }),
        )
        .await
    }

    /// The admin page's call from `site` by its administrator, with `body` as it is.
    pub async fn connect_raw(&mut self, site: &Site, body: &Value) -> (u16, Value) {
        let fit = self.forge.fit(site).admin_page(site, ADMIN_ACCOUNT).token();
        send(&mut self.public, "connect", Some(fit.as_str()), None, body).await
    }

    /// [`Env::connect_as`] by the site's administrator.
    pub async fn connect(&mut self, site: &Site, code: &str, token: Option<&str>) -> (u16, Value) {
        self.connect_as(site, ADMIN_ACCOUNT, code, token).await
    }

    /// The hourly trigger from `site` carrying `token`.
    pub async fn trigger(&mut self, site: &Site, token: &str) -> (u16, Value) {
        self.invoke("trigger", site, Some(token)).await
    }

    /// The Forge binding of `cloud_id`, if any (from the admin API's binding list).
    pub async fn binding_for(&mut self, cloud_id: &str) -> Option<Value> {
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
    pub async fn wait_binding(&mut self, cloud_id: &str, ok: impl Fn(&Value) -> bool) -> Value {
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

    pub async fn add_instance(&mut self, id: &str, tenant: &str, binding: &str) -> (u16, Value) {
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
    pub async fn wait_token(&self, worker: &str, instance: &str, token: &str) -> Value {
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
    pub async fn current_token(&self, worker: &str, instance: &str) -> String {
        let (s, v) = resolve(&mut self.worker(worker), json!({"instance_id": instance})).await;
        assert_eq!(s, 200, "{}", redact(&v));
        v["credentials"]["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn audit_count(&self) -> usize {
        self.daemon.audit_records().len()
    }

    pub fn audited(&self, action: &str) -> Vec<Value> {
        self.daemon
            .audit_records()
            .into_iter()
            .filter(|r| r["action"] == action)
            .collect()
    }

    /// Onboards `site` for `tenant`, binds it with a trigger carrying `token`, adds instance
    /// `instance` on the binding and waits until `token` resolves through it; the binding id.
    pub async fn bind(&mut self, tenant: &str, site: &Site, token: &str, instance: &str) -> String {
        let onboarded = self.expect_site(tenant, &site.cloud_id);
        let code = onboarded["connect_code"].as_str().unwrap().to_owned();
        let (s, v) = self.connect(site, &code, Some(token)).await;
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

/// The Atlassian account id of the site administrator who types connect codes.
pub const ADMIN_ACCOUNT: &str = "712020:5b10ac8d-82e0-4b22-8c7d-4ef5a1b2c3d4";

/// An answer with any access token blanked (for assertion messages).
pub fn redact(v: &Value) -> Value {
    let mut v = v.clone();
    if v["credentials"].is_object() {
        v["credentials"] = json!("<redacted>");
    }
    v
}

/// `provider_unavailable` (the spec says 503; the core answers the code with 504 today).
pub fn assert_unavailable(s: u16, v: &Value, what: &str) {
    assert!(
        matches!(s, 503 | 504) && code(v) == "provider_unavailable",
        "{what}: {s} {}",
        redact(v)
    );
}

/// `credbroker_callbacks_total{provider="atlassian_forge",outcome="denied",code="invocation_rejected"}`.
pub async fn invocations_rejected(env: &Env) -> u64 {
    refused_with(env, "invocation_rejected").await
}

/// `credbroker_callbacks_total` of the Forge provider refused with `code`.
pub async fn refused_with(env: &Env, code: &str) -> u64 {
    let (_, m) = scrape(&env.pki, &env.daemon.url).await;
    String::from_utf8(m)
        .unwrap()
        .lines()
        .filter(|l| {
            l.starts_with("credbroker_callbacks_total{")
                && l.contains("provider=\"atlassian_forge\"")
                && l.contains("outcome=\"denied\"")
                && l.contains(&format!("code=\"{code}\""))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}
