//! The one-time intake page on the public listener, over HTTP: the form names the tenant and
//! connector and asks for exactly the binding's fields; a submission is sealed pending,
//! probed, and promoted only when it works; the link is used up by a working submission, a
//! few failures, expiry or revocation, and then answers exactly like a link never issued;
//! the form is refused without its CSRF pair; the value appears nowhere but in sealed
//! storage. (tests/tests/intake_browser.rs drives the same page in a real browser.)

use credbroker::client::BrokerClient;
use credbroker_tests::fake_servicenow::FakeServiceNow;
use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

pub const CLIENT: &str = "intake-client-0001";
pub const SECRET: &str = "CANARY-intake-secret-7f3a9c";

async fn start() -> (
    tempfile::TempDir,
    std::sync::Arc<TestPki>,
    Daemon,
    FakeServiceNow,
    BrokerClient,
    BrokerClient,
) {
    let (tmp, pki) = setup();
    let sn = FakeServiceNow::start(CLIENT, SECRET, &["snc_read_only"]).await;
    let (public, _) = public_section(&pki);
    let extra = format!("{public}{}", servicenow_section(&sn.authority));
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
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings",
        Some(
            json!({"owner": "team-tests", "purpose": "integration test", "id": "acme-snow", "tenant": "t1", "provider": "servicenow_oauth",
                    "config": {"instance_url": sn.url}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let public = public_client(&pki, daemon.public_url.as_ref().unwrap());
    (tmp, pki, daemon, sn, op, public)
}

async fn create_link(op: &mut BrokerClient, ttl_s: u64) -> (String, String) {
    let (s, v) = call(
        op,
        Method::POST,
        "/v1/admin/intake",
        Some(json!({"binding": "acme-snow", "ttl_s": ttl_s})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["fields"], json!(["client_id", "client_secret"]));
    let url = v["url"].as_str().unwrap();
    let path = url[url.find("/intake/").unwrap()..].to_owned();
    (path, v["id"].as_str().unwrap().to_owned())
}

struct Page {
    status: u16,
    headers: http::HeaderMap,
    html: String,
}

async fn get(public: &mut BrokerClient, path: &str) -> Page {
    let (s, h, b) = public.exchange(Method::GET, path, &[], None).await.unwrap();
    Page {
        status: s.as_u16(),
        headers: h,
        html: String::from_utf8(b).unwrap(),
    }
}

async fn post(public: &mut BrokerClient, path: &str, cookie: Option<&str>, form: &str) -> Page {
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    let (s, h, b) = public
        .exchange(Method::POST, path, &headers, Some(form.as_bytes().to_vec()))
        .await
        .unwrap();
    Page {
        status: s.as_u16(),
        headers: h,
        html: String::from_utf8(b).unwrap(),
    }
}

/// The cookie pair and CSRF value a GET of the page hands out.
fn form_state(page: &Page) -> (String, String) {
    let cookie = page.headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("__Host-credbroker-intake=")
            && cookie.contains("Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    (pair, intake_csrf(&page.html))
}

/// Opens the link at `path` and fills its form with a secret the fake refuses: the cookie
/// and the form body (both can be sent again).
async fn wrong_secret_form(public: &mut BrokerClient, path: &str) -> (String, String) {
    let page = get(public, path).await;
    assert_eq!(page.status, 200);
    let (cookie, csrf) = form_state(&page);
    let form = format!(
        "csrf={}&f_client_id={CLIENT}&f_client_secret=nope",
        enc(&csrf)
    );
    (cookie, form)
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The form with the working client and `csrf`.
fn good_form(csrf: &str) -> String {
    format!(
        "csrf={}&f_client_id={CLIENT}&f_client_secret={}",
        enc(csrf),
        enc(SECRET)
    )
}

/// Removes binding acme-snow and makes another under its id, for `tenant` (a pasted
/// secret with the same two fields).
async fn remake_acme_snow(op: &mut BrokerClient, tenant: &str) {
    let (s, v) = call(op, Method::DELETE, "/v1/admin/bindings/acme-snow", None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        op,
        Method::POST,
        "/v1/admin/bindings",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "acme-snow", "tenant": tenant, "provider": "pasted_secret", "ceiling": {"fields": ["client_id", "client_secret"]}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

/// An operator's own rotation of acme-snow, staged (not promoted): its version.
async fn stage_a_version(op: &mut BrokerClient) -> Value {
    let fields = json!({"fields": {"client_id": CLIENT, "client_secret": SECRET}});
    let (s, v) = call(
        op,
        Method::PUT,
        "/v1/admin/bindings/acme-snow/secret",
        Some(fields.clone()),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        op,
        Method::POST,
        "/v1/admin/bindings/acme-snow/secret/rotate",
        Some(fields),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["version"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intake_link_stores_a_working_secret_once_and_shows_it_nowhere() {
    let (tmp, _pki, daemon, sn, mut op, mut public) = start().await;
    // The binding's audit record says where its secret goes (an insider binding a host of
    // their own, then removing the binding, leaves that on the record).
    let added = daemon
        .audit_records()
        .into_iter()
        .find(|r| r["action"] == "binding.add" && r["binding"] == "acme-snow")
        .unwrap();
    assert!(
        added["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("config={{\"instance_url\":\"{}\"}}", sn.url)),
        "{added}"
    );
    let (path, id) = create_link(&mut op, 3600).await;

    // Opening the link (twice: mail scanners prefetch) changes nothing and shows the form.
    let before = daemon.audit_records().len();
    let _ = get(&mut public, &path).await;
    let page = get(&mut public, &path).await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert_eq!(
        daemon.audit_records().len(),
        before,
        "a GET changed something"
    );
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("frame-ancestors 'none'")
            && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    for (h, v) in [
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("strict-transport-security", "max-age=31536000"),
    ] {
        assert_eq!(page.headers[h], v, "{h}");
    }
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.html.contains("id=\"tenant\">t1<"), "{}", page.html);
    assert!(page.html.contains("acme-snow"));
    // The customer sees where the credential goes before pasting it.
    let host = sn
        .url
        .parse::<http::Uri>()
        .unwrap()
        .host()
        .unwrap()
        .to_owned();
    assert!(
        page.html.contains(&format!(
            "<strong id=\"destination\">{host}</strong> only (<code>{}</code>)",
            sn.url
        )),
        "{}",
        page.html
    );
    for f in ["client_id", "client_secret"] {
        assert!(
            page.html
                .contains(&format!("type=\"password\" id=\"f_{f}\"")),
            "{f}"
        );
    }
    assert!(!page.html.contains("<script") && !page.html.contains("style="));
    let (cookie, csrf) = form_state(&page);

    // Without the cookie, with a forged CSRF value, or with a field the form does not ask
    // for: refused, nothing stored.
    let good = good_form(&csrf);
    let p = post(&mut public, &path, None, &good).await;
    assert_eq!(p.status, 403, "{}", p.html);
    let forged = good_form("hmac-sha256:00000000000000000000000000000000");
    let p = post(&mut public, &path, Some(&cookie), &forged).await;
    assert_eq!(p.status, 403, "{}", p.html);
    let extra = format!("{good}&f_password=x");
    let p = post(&mut public, &path, Some(&cookie), &extra).await;
    assert_eq!(p.status, 400, "{}", p.html);
    // Names are compared once decoded: a second value smuggled under a percent-encoded
    // name, a second token the same way, or a name that decodes to one the form does not
    // ask for ('+' is a space) is refused with its reason; none counts as an attempt.
    for (form, why) in [
        (format!("{good}&f_%63lient_secret=x"), "a field twice"),
        (format!("{good}&%63srf=x"), "its token twice"),
        (format!("{good}&f_client+secret=x"), "does not ask for"),
    ] {
        let p = post(&mut public, &path, Some(&cookie), &form).await;
        assert_eq!(p.status, 400, "{form}: {}", p.html);
        assert!(p.html.contains(why), "{form}: {}", p.html);
        assert!(!p.html.contains(SECRET));
    }

    // A wrong secret: stored pending, probed, refused; the page says so without echoing it.
    let wrong = format!(
        "csrf={}&f_client_id={CLIENT}&f_client_secret=wrong-one",
        enc(&csrf)
    );
    let p = post(&mut public, &path, Some(&cookie), &wrong).await;
    assert_eq!(p.status, 422, "{}", p.html);
    assert!(
        p.html.contains("did not work") && p.html.contains("2 attempt(s) left"),
        "{}",
        p.html
    );
    assert!(!p.html.contains("wrong-one"));

    // The right one: stored, verified, promoted, the binding activated; the link used up.
    let stored = post(&mut public, &path, Some(&cookie), &good).await;
    assert_eq!(stored.status, 200, "{}", stored.html);
    assert!(
        stored.html.contains("Stored and verified"),
        "{}",
        stored.html
    );
    let (_, b) = call(&mut op, Method::GET, "/v1/admin/bindings/acme-snow", None).await;
    assert_eq!(b["binding"]["status"], "active", "{b}");
    assert!(b["binding"]["active_secret_version"].as_u64().is_some());
    let records = daemon.audit_records();
    assert!(records.iter().any(|r| r["action"] == "secret.promote"
        && r["actor"] == format!("intake:{id}").as_str()
        && r["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("set by intake link {id} created by"))));

    // Used: the link now answers exactly like one never issued.
    let used = get(&mut public, &path).await;
    let never = get(
        &mut public,
        "/intake/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    .await;
    assert_eq!((used.status, never.status), (404, 404));
    assert_eq!(used.html, never.html);
    assert!(used.html.contains("no longer valid"));
    let p = post(&mut public, &path, Some(&cookie), &good).await;
    assert_eq!(p.status, 404);
    // An anonymous client posting to links that never existed (or were used) changes
    // nothing and leaves no audit record: counted only.
    let records = daemon.audit_records().len();
    for _ in 0..5 {
        let p = post(
            &mut public,
            "/intake/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            Some(&cookie),
            &good,
        )
        .await;
        assert_eq!(p.status, 404);
    }
    // A record written after the answer would still count: give one the time to land.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        daemon.audit_records().len(),
        records,
        "an unauthenticated intake request was audited"
    );

    // The canary is nowhere: pages, admin answers, audit log, logs, the raw data directory.
    let (s, listed) = call(&mut op, Method::GET, "/v1/admin/intake", None).await;
    assert_eq!(s, 200, "{listed}");
    let (s, shown) = call(&mut op, Method::GET, "/v1/admin/bindings/acme-snow", None).await;
    assert_eq!(
        (s, shown["binding"]["id"].as_str()),
        (200, Some("acme-snow")),
        "{shown}"
    );
    let raw = bytes_of_every_file(tmp.path());
    let raw = String::from_utf8_lossy(&raw);
    for (what, text) in [
        ("form", page.html.as_str()),
        ("result", stored.html.as_str()),
        ("used link", p.html.as_str()),
        (
            "audit",
            &serde_json::to_string(&daemon.audit_records()).unwrap(),
        ),
        ("logs", &daemon.logs()),
        ("admin", &format!("{listed}{shown}")),
        ("data dir", &raw),
    ] {
        assert!(!text.contains(SECRET), "the secret is in the {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_revoked_and_exhausted_links_are_no_longer_valid() {
    let (_tmp, _pki, daemon, _sn, mut op, mut public) = start().await;
    // Expired.
    let (path, _) = create_link(&mut op, 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let p = get(&mut public, &path).await;
    assert_eq!(p.status, 404);
    // Revoked (and listed until then, without its URL).
    let (path, id) = create_link(&mut op, 3600).await;
    let (_, v) = call(&mut op, Method::GET, "/v1/admin/intake", None).await;
    let links = v["intake_links"].as_array().unwrap();
    assert!(links.iter().any(|l| l["id"] == id.as_str()));
    let token = &path[8..];
    assert!(!v.to_string().contains(token), "the token is listed");
    // An operator who pastes the link's token where its id belongs is refused, and the
    // refusal's record names no token: only that what was sent was not a link id.
    let (s, v) = call(
        &mut op,
        Method::DELETE,
        &format!("/v1/admin/intake/{token}"),
        None,
    )
    .await;
    assert_eq!((s, code(&v)), (404, "unknown_record"), "{v}");
    let refused = v["error"]["audit_id"].as_str().unwrap();
    let records = daemon.audit_records();
    let record = records
        .iter()
        .find(|r| {
            r["hash"]
                .as_str()
                .is_some_and(|h| h.starts_with(refused.trim_start_matches("aud_")))
        })
        .unwrap();
    assert_eq!(
        (&record["action"], &record["outcome"]),
        (&json!("intake.revoke"), &json!("denied")),
        "{record}"
    );
    assert!(
        record["detail"]
            .as_str()
            .unwrap()
            .starts_with("link=(not a link id)"),
        "{record}"
    );
    assert!(
        !records.iter().any(|r| r.to_string().contains(token)),
        "the token is in the audit log"
    );
    assert!(!daemon.logs().contains(token), "the token is in the log");
    assert_eq!(get(&mut public, &path).await.status, 200, "the link died");
    let (s, v) = call(
        &mut op,
        Method::DELETE,
        &format!("/v1/admin/intake/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let p = get(&mut public, &path).await;
    assert_eq!(p.status, 404);
    // Exhausted: three failing submissions use it up.
    let (path, _) = create_link(&mut op, 3600).await;
    for left in [2, 1, 0] {
        let (cookie, form) = wrong_secret_form(&mut public, &path).await;
        let p = post(&mut public, &path, Some(&cookie), &form).await;
        assert_eq!(p.status, 422, "{}", p.html);
        assert!(
            p.html.contains(&format!("{left} attempt(s) left"))
                || (left == 0 && p.html.contains("No attempts are left")),
            "{}",
            p.html
        );
    }
    assert_eq!(get(&mut public, &path).await.status, 404);
    // No failed version is left pending (while one is, `binding probe` tests it instead of
    // the active one): each was destroyed, audited.
    let (_, b): (u16, Value) =
        call(&mut op, Method::GET, "/v1/admin/bindings/acme-snow", None).await;
    assert!(b["binding"]["pending_secret_version"].is_null(), "{b}");
    assert!(
        daemon
            .audit_records()
            .iter()
            .filter(|r| r["action"] == "secret.destroy"
                && r["actor"].as_str().unwrap().starts_with("intake:"))
            .count()
            >= 3
    );
    // A link outlives nothing: its binding removed and the id re-created for another
    // tenant, the link is dead (it must never write into t2's binding).
    let (path, _) = create_link(&mut op, 3600).await;
    remake_acme_snow(&mut op, "t2").await;
    assert_eq!(get(&mut public, &path).await.status, 404);
    // Failures are audited; the old (absent) secret never served.
    assert_eq!(
        daemon
            .audit_records()
            .iter()
            .filter(|r| r["action"] == "intake.failed")
            .count(),
        3
    );
    let (_, b): (u16, Value) =
        call(&mut op, Method::GET, "/v1/admin/bindings/acme-snow", None).await;
    assert!(b["binding"]["active_secret_version"].is_null(), "{b}");
}

/// A version an operator staged (rotated, not yet promoted) is not the customer's to
/// destroy: a submission through a link while it waits is refused before an attempt is
/// spent, and the staged version stays. (Before, the submission replaced it — destroyed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_staged_version_is_not_destroyed_by_a_submission() {
    let (_tmp, pki, daemon, _sn, mut op, mut public) = start().await;
    let staged = stage_a_version(&mut op).await;
    let (path, _) = create_link(&mut op, 3600).await;
    let page = get(&mut public, &path).await;
    assert_eq!(page.status, 200);
    let (cookie, csrf) = form_state(&page);
    let good = good_form(&csrf);
    let p = post(&mut public, &path, Some(&cookie), &good).await;
    let records_before = daemon.audit_records().len();
    assert_eq!(p.status, 409, "{}", p.html);
    assert!(p.html.contains("already waiting"), "{}", p.html);
    // The link holder's refused submission is counted, not audited: no record is written
    // (nor an attempt spent, below).
    assert_eq!(daemon.audit_records().len(), records_before);
    let (_, metrics) = scrape(&pki, &daemon.url).await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("code=\"pending_version\""),
        "the refusal is not counted"
    );
    let (_, b): (u16, Value) =
        call(&mut op, Method::GET, "/v1/admin/bindings/acme-snow", None).await;
    assert_eq!(b["binding"]["pending_secret_version"], staged, "{b}");
    // Once the operator has promoted it, the link works, with every attempt left.
    let (s, v) = promote(&mut op, "acme-snow", staged).await;
    assert_eq!(s, 200, "{v}");
    // A version the operator staged that failed its probe is not worth keeping: the
    // customer's submission replaces it (an attempt spent, the link still works).
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/acme-snow/secret/rotate",
        Some(json!({"fields": {"client_id": CLIENT, "client_secret": "not-it"}})),
    )
    .await;
    assert_eq!(
        (s, v["probe"]["result"].as_str()),
        (200, Some("failed")),
        "{v}"
    );
    let (cookie, form) = wrong_secret_form(&mut public, &path).await;
    let p = post(&mut public, &path, Some(&cookie), &form).await;
    assert_eq!(p.status, 422, "{}", p.html);
    assert!(p.html.contains("2 attempt(s) left"), "{}", p.html);
}

/// Registers a second operator, op2, and has it create a link: the link's path.
async fn second_operators_link(pki: &TestPki, daemon: &Daemon, op: &mut BrokerClient) -> String {
    let mut op2 = register_operator(op, pki, &daemon.url, "op2").await;
    create_link(&mut op2, 3600).await.0
}

async fn disable_op2(op: &mut BrokerClient) {
    set_operator(op, "op2", "disable").await;
}

/// A link acts for the operator who made it: once that operator is disabled (offboarded,
/// perhaps hostile), the link neither shows its form nor takes a submission, and nothing is
/// stored, even after the operator is enabled again; links of operators still active keep
/// working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_of_a_disabled_operator_are_dead() {
    let (_tmp, pki, daemon, _sn, mut op, mut public) = start().await;
    let theirs = second_operators_link(&pki, &daemon, &mut op).await;
    let (ours, _) = create_link(&mut op, 3600).await;
    // The form is fetched while op2 is active; op2 is then disabled.
    let (cookie, form) = wrong_secret_form(&mut public, &theirs).await;
    disable_op2(&mut op).await;
    let before = daemon.audit_records().len();
    let p = post(&mut public, &theirs, Some(&cookie), &form).await;
    assert_eq!(p.status, 404, "{}", p.html);
    assert_eq!(get(&mut public, &theirs).await.status, 404);
    assert_eq!(
        daemon.audit_records().len(),
        before,
        "a dead link's submission changed something"
    );
    let (_, b): (u16, Value) =
        call(&mut op, Method::GET, "/v1/admin/bindings/acme-snow", None).await;
    assert!(b["binding"]["pending_secret_version"].is_null(), "{b}");
    assert_eq!(b["binding"]["last_secret_version"], 0, "{b}");
    // Enabled again, op2 does not get the link back: it was made before the disable.
    set_operator(&mut op, "op2", "enable").await;
    assert_eq!(get(&mut public, &theirs).await.status, 404);
    // The active operator's link still shows its form.
    assert_eq!(get(&mut public, &ours).await.status, 200);
}

/// Sets `path` (`tenants/t1`, `bindings/acme-snow`) to `status` (`enable`, `disable`).
async fn set_status(op: &mut BrokerClient, path: &str, status: &str) {
    let (s, v) = call(
        op,
        Method::POST,
        &format!("/v1/admin/{path}/{status}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

/// A connection an operator has switched off is not the customer's to change: while its
/// tenant or its binding is disabled, the link shows nothing and a form fetched before
/// changes nothing (no record, no version). The tenant enabled again, the link works as
/// before (an operator who wants it gone revokes it). (A binding that never had a secret
/// cannot be enabled again: `secret_missing`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_to_a_disabled_tenant_or_binding_are_dead_while_it_is() {
    let (_tmp, _pki, daemon, _sn, mut op, mut public) = start().await;
    let (path, _) = create_link(&mut op, 3600).await;
    for target in ["tenants/t1", "bindings/acme-snow"] {
        let page = get(&mut public, &path).await;
        assert_eq!(page.status, 200, "{target}: {}", page.html);
        let (cookie, csrf) = form_state(&page);
        set_status(&mut op, target, "disable").await;
        let before = daemon.audit_records().len();
        assert_eq!(get(&mut public, &path).await.status, 404, "{target}");
        let p = post(&mut public, &path, Some(&cookie), &good_form(&csrf)).await;
        assert_eq!(p.status, 404, "{target}: {}", p.html);
        assert_eq!(
            daemon.audit_records().len(),
            before,
            "{target}: a submission to a disabled connection changed something"
        );
        let (_, b): (u16, Value) =
            call(&mut op, Method::GET, "/v1/admin/bindings/acme-snow", None).await;
        assert_eq!(b["binding"]["last_secret_version"], 0, "{target}: {b}");
        if target.starts_with("tenants/") {
            set_status(&mut op, target, "enable").await;
            assert_eq!(get(&mut public, &path).await.status, 200);
        }
    }
}

/// A tenant disabled while a submission's probe runs at the source system: the promotion is
/// refused on it, the link answers as dead, and nothing is left to promote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_disabled_during_the_probe_does_not_get_it_promoted() {
    let (_tmp, pki, daemon, sn, mut op, mut public) = start().await;
    let (path, _) = create_link(&mut op, 3600).await;
    let submitting = submit_while_probing(&pki, &daemon, &sn, &mut public, &path).await;
    set_status(&mut op, "tenants/t1", "disable").await;
    let b = dead_after_its_probe(&sn, submitting, &mut op).await;
    assert_eq!(b["binding"]["status"], "pending_activation", "{b}");
}

/// A link made while no operator was registered yet (an upgrade from a release without
/// operator records) records its creator's revision as the one their record starts at: once
/// operators are registered, a disable and re-enable of that creator kill it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_made_before_operators_were_registered_die_with_a_disable() {
    let (_tmp, pki, daemon, _sn, mut op, mut public) = start().await;
    let (early, _) = create_link(&mut op, 3600).await;
    let mut op2 = register_operator(&mut op, &pki, &daemon.url, "op2").await;
    assert_eq!(get(&mut public, &early).await.status, 200);
    set_operator(&mut op2, "op", "disable").await;
    set_operator(&mut op2, "op", "enable").await;
    assert_eq!(get(&mut public, &early).await.status, 404);
}

/// Opens `link`, submits a working secret while the fake source holds its probe for 1.5 s,
/// and returns once the pending version is written (the probe under way): the submission.
async fn submit_while_probing(
    pki: &TestPki,
    daemon: &Daemon,
    sn: &FakeServiceNow,
    public: &mut BrokerClient,
    link: &str,
) -> tokio::task::JoinHandle<Page> {
    submit_while_probing_for(pki, daemon, sn, public, link, 1500).await
}

/// [`submit_while_probing`] with the probe held for `delay_ms`.
async fn submit_while_probing_for(
    pki: &TestPki,
    daemon: &Daemon,
    sn: &FakeServiceNow,
    public: &mut BrokerClient,
    link: &str,
    delay_ms: u64,
) -> tokio::task::JoinHandle<Page> {
    let page = get(public, link).await;
    assert_eq!(page.status, 200);
    let (cookie, csrf) = form_state(&page);
    let good = good_form(&csrf);
    *sn.state.delay_ms.lock().unwrap() = delay_ms;
    let submitting = {
        let mut client = public_client(pki, daemon.public_url.as_ref().unwrap());
        let path = link.to_owned();
        tokio::spawn(async move { post(&mut client, &path, Some(&cookie), &good).await })
    };
    let pending_written = |d: &Daemon| {
        d.audit_records()
            .iter()
            .any(|r| r["action"] == "secret.rotate" && r["outcome"] == "allowed")
    };
    for _ in 0..100 {
        if pending_written(daemon) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        pending_written(daemon),
        "the submission never got to its probe"
    );
    submitting
}

/// A submission runs detached from the customer's connection: one whose probe is calling
/// the customer's instance when the daemon is told to stop, its client gone, is waited for
/// before the audit log closes — its probe's record is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_probing_at_a_stop_is_recorded_before_the_log_closes() {
    let (_tmp, pki, mut daemon, sn, mut op, mut public) = start().await;
    let (path, _) = create_link(&mut op, 3600).await;
    let submitting = submit_while_probing(&pki, &daemon, &sn, &mut public, &path).await;
    submitting.abort();
    let _ = submitting.await;
    daemon.stop();
    let records = daemon.audit_records();
    assert!(
        records.iter().any(|r| r["action"] == "binding.probe"
            && r["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("intake:"))),
        "the submission's probe has no record: {records:?}"
    );
}

/// The end of a submission whose link died while its probe ran (held by the fake source):
/// the probe released, the page answers as a dead link, and the binding has neither an
/// active nor a pending version (nothing left for a later promotion). The binding's record.
async fn dead_after_its_probe(
    sn: &FakeServiceNow,
    submitting: tokio::task::JoinHandle<Page>,
    op: &mut BrokerClient,
) -> Value {
    assert!(!submitting.is_finished(), "the probe had to be under way");
    *sn.state.delay_ms.lock().unwrap() = 0;
    let p = submitting.await.unwrap();
    assert_eq!(p.status, 404, "{}", p.html);
    let (_, b): (u16, Value) = call(op, Method::GET, "/v1/admin/bindings/acme-snow", None).await;
    assert!(b["binding"]["active_secret_version"].is_null(), "{b}");
    assert!(b["binding"]["pending_secret_version"].is_null(), "{b}");
    b
}

/// A link acts for its creator to the end: a creator disabled while a submission's probe
/// runs at the source system does not get the secret promoted — the link answers as dead,
/// the refusal is audited, the binding keeps no active version, and the pending version is
/// destroyed rather than left for someone to promote later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creator_disabled_during_the_probe_does_not_get_it_promoted() {
    let (_tmp, pki, daemon, sn, mut op, mut public) = start().await;
    let theirs = second_operators_link(&pki, &daemon, &mut op).await;
    let submitting = submit_while_probing(&pki, &daemon, &sn, &mut public, &theirs).await;
    disable_op2(&mut op).await;
    let b = dead_after_its_probe(&sn, submitting, &mut op).await;
    // The probe's own stamp acts for the creator too: refused (and audited), so nothing is
    // recorded in their name after the disable, and no promotion is tried.
    let records = daemon.audit_records();
    let refused = records
        .iter()
        .filter(|r| {
            r["action"] == "binding.probe"
                && r["outcome"] == "denied"
                && r["error_code"] == "operator_required"
        })
        .count();
    assert_eq!(refused, 1, "the refusal is audited");
    assert!(
        !records.iter().any(|r| r["action"] == "secret.promote"),
        "a promotion was tried for a disabled creator"
    );
    // Nothing the dead link brought stays behind for a later promotion.
    assert!(b["binding"]["pending_secret_version"].is_null(), "{b}");
    let written = b["binding"]["last_secret_version"].as_u64().unwrap();
    assert_eq!(written, 1, "{b}");
    let (s, v) = promote(&mut op, "acme-snow", written).await;
    assert_ne!(s, 200, "{v}");
}

/// A link revoked while a submission's probe runs at the source system leaves nothing behind:
/// the promotion fails on the revoked link, the link answers as dead, and the pending version
/// (which passed its probe) is destroyed rather than left for an operator to promote later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_revoked_during_the_probe_leaves_nothing_to_promote() {
    let (_tmp, pki, daemon, sn, mut op, mut public) = start().await;
    let (path, id) = create_link(&mut op, 3600).await;
    let submitting = submit_while_probing(&pki, &daemon, &sn, &mut public, &path).await;
    let (s, v) = call(
        &mut op,
        Method::DELETE,
        &format!("/v1/admin/intake/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let b = dead_after_its_probe(&sn, submitting, &mut op).await;
    let written = b["binding"]["last_secret_version"].as_u64().unwrap();
    assert_eq!(written, 1, "{b}");
    let (s, v) = promote(&mut op, "acme-snow", written).await;
    assert_ne!(s, 200, "{v}");
}

/// A binding removed and made again under its id (for another tenant) while a
/// submission's probe runs is another binding: the submission, its link gone with the old
/// binding, ends as a dead link and destroys nothing of the new one's, though the version
/// the new one has staged bears the number the submission wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_made_again_during_the_probe_keeps_its_staged_version() {
    let (_tmp, pki, daemon, sn, mut op, mut public) = start().await;
    // t1's connection works (version 1); its customer sends version 2.
    let fields = json!({"fields": {"client_id": CLIENT, "client_secret": SECRET}});
    let (s, v) = call(
        &mut op,
        Method::PUT,
        "/v1/admin/bindings/acme-snow/secret",
        Some(fields),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (path, _) = create_link(&mut op, 3600).await;
    let submitting = submit_while_probing_for(&pki, &daemon, &sn, &mut public, &path, 3000).await;
    *sn.state.delay_ms.lock().unwrap() = 0;
    remake_acme_snow(&mut op, "t2").await;
    let staged = stage_a_version(&mut op).await;
    assert_eq!(staged, 2);
    assert!(!submitting.is_finished(), "the probe had to be under way");
    let p = submitting.await.unwrap();
    assert_eq!(p.status, 404, "{}", p.html);
    let (_, b): (u16, Value) =
        call(&mut op, Method::GET, "/v1/admin/bindings/acme-snow", None).await;
    assert_eq!(b["binding"]["tenant"], "t2", "{b}");
    assert_eq!(b["binding"]["pending_secret_version"], staged, "{b}");
}

/// A link that expires while a submission's probe runs at the source system gets nothing
/// promoted: the submission was admitted in time, but a link is good until `expires_at`,
/// not until its last probe ends. The page answers as a dead link, the refusal is audited,
/// and the pending version (which passed its probe) is destroyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_expires_during_the_probe_gets_nothing_promoted() {
    let (_tmp, pki, daemon, sn, mut op, mut public) = start().await;
    // Admitted at once, probed for 2.5 s (within the probe's 3 s deadline).
    let path = link_about_to_expire(&mut op).await;
    let before = arrived(&sn);
    let submitting = submit_while_probing_for(&pki, &daemon, &sn, &mut public, &path, 2500).await;
    held_at_the_source(&sn, before).await;
    let b = dead_after_its_probe(&sn, submitting, &mut op).await;
    let written = b["binding"]["last_secret_version"].as_u64().unwrap();
    assert_eq!(written, 1, "{b}");
    let refused = daemon
        .audit_records()
        .into_iter()
        .filter(|r| r["action"] == "secret.promote" && r["outcome"] == "denied")
        .count();
    assert_eq!(refused, 1, "the refusal is audited");
    let (s, v) = promote(&mut op, "acme-snow", written).await;
    assert_ne!(s, 200, "{v}");
}

/// A link made just after a second begins and good for 1 s (to the second): usable for
/// almost 2 s.
async fn link_about_to_expire(op: &mut BrokerClient) -> String {
    let into_second = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis()
    };
    while into_second() > 50 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    create_link(op, 1).await.0
}

/// Requests the fake source has seen arrive.
fn arrived(sn: &FakeServiceNow) -> u64 {
    sn.state.arrived.load(std::sync::atomic::Ordering::SeqCst)
}

/// Waits (up to 5 s) until a request beyond the `before`th has arrived at the fake source:
/// the probe's first call, held there by its delay, which can then be lifted for the rest.
async fn held_at_the_source(sn: &FakeServiceNow, before: u64) {
    for _ in 0..250 {
        if arrived(sn) > before {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the probe never called the source");
}

/// A wrong secret whose probe outlives the link: the page does not send the customer back
/// to a link that no longer works ("No attempts are left").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_checked_past_the_links_expiry_leaves_no_attempt() {
    let (_tmp, pki, daemon, sn, mut op, mut public) = start().await;
    let path = link_about_to_expire(&mut op).await;
    let (cookie, form) = wrong_secret_form(&mut public, &path).await;
    *sn.state.delay_ms.lock().unwrap() = 2500;
    let before = arrived(&sn);
    let submitting = {
        let mut client = public_client(&pki, daemon.public_url.as_ref().unwrap());
        let path = path.clone();
        tokio::spawn(async move { post(&mut client, &path, Some(&cookie), &form).await })
    };
    held_at_the_source(&sn, before).await;
    *sn.state.delay_ms.lock().unwrap() = 0;
    let p = submitting.await.unwrap();
    assert_eq!(p.status, 422, "{}", p.html);
    assert!(p.html.contains("No attempts are left"), "{}", p.html);
    assert_eq!(get(&mut public, &path).await.status, 404);
}

/// A link's attempts cannot be stretched by overlapping submissions: while the third (last)
/// one is still being probed, a fourth is refused as an invalid link before it reserves
/// anything, and the link ends used up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_submissions_cannot_exceed_the_attempts() {
    let (_tmp, pki, daemon, sn, mut op, mut public) = start().await;
    let (path, _) = create_link(&mut op, 3600).await;
    let (cookie, form) = wrong_secret_form(&mut public, &path).await;
    for left in [2, 1] {
        let p = post(&mut public, &path, Some(&cookie), &form).await;
        assert_eq!(p.status, 422, "{}", p.html);
        assert!(
            p.html.contains(&format!("{left} attempt(s) left")),
            "{}",
            p.html
        );
    }
    // The third submission's probe is held at the source system…
    *sn.state.delay_ms.lock().unwrap() = 2000;
    let third = {
        let mut client = public_client(&pki, daemon.public_url.as_ref().unwrap());
        let (path, cookie, form) = (path.clone(), cookie.clone(), form.clone());
        tokio::spawn(async move { post(&mut client, &path, Some(&cookie), &form).await })
    };
    // …its attempt is reserved (audited) before the probe starts…
    let submitted = |d: &Daemon| {
        d.audit_records()
            .iter()
            .filter(|r| r["action"] == "intake.submit")
            .count()
    };
    // (Its record comes before its commit: waited for until the link shows the last
    // attempt taken, so the fourth cannot read the link from before it.)
    for _ in 0..100 {
        if submitted(&daemon) == 3 && get(&mut public, &path).await.status == 404 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(submitted(&daemon), 3);
    // …so a fourth, sent meanwhile, finds no attempt left.
    let fourth = post(&mut public, &path, Some(&cookie), &form).await;
    assert_eq!(fourth.status, 404, "{}", fourth.html);
    let third = third.await.unwrap();
    assert_eq!(third.status, 422, "{}", third.html);
    assert!(
        third.html.contains("No attempts are left"),
        "{}",
        third.html
    );
    assert_eq!(submitted(&daemon), 3, "a fourth attempt was reserved");
    assert_eq!(get(&mut public, &path).await.status, 404);
}

/// Submissions of one link sent at once: each read the link with its attempts untouched, and
/// those that lost the race for the attempt under the admin lock each wrote an "allowed"
/// `intake.submit` record and then a "failed" one, for a submission that changed nothing,
/// and were answered 503. They are now refused (409) before any record: one record per
/// attempt actually taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_write_one_record_per_attempt_taken() {
    let (_tmp, pki, daemon, _sn, mut op, mut public) = start().await;
    let (path, _) = create_link(&mut op, 3600).await;
    let (cookie, form) = wrong_secret_form(&mut public, &path).await;
    let before = daemon.audit_records().len();
    // Three at once: the public listener's per-source connection cap is four, and the
    // test's own client holds one.
    let submissions: Vec<_> = (0..3)
        .map(|_| {
            let mut client = public_client(&pki, daemon.public_url.as_ref().unwrap());
            let (path, cookie, form) = (path.clone(), cookie.clone(), form.clone());
            tokio::spawn(async move { post(&mut client, &path, Some(&cookie), &form).await })
        })
        .collect();
    // Each submission either took an attempt (judged: 422; or 503 when another, reserved just
    // after it, changed the link before its version was written) or lost the race for one
    // (409, before any record).
    let mut judged = 0;
    for s in submissions {
        let page = s.await.unwrap();
        match page.status {
            422 | 503 => judged += 1,
            409 => assert!(page.html.contains("Another submission"), "{}", page.html),
            other => panic!("a submission answered {other}: {}", page.html),
        }
    }
    assert!(judged >= 1);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let records = daemon.audit_records();
    let submits: Vec<_> = records[before..]
        .iter()
        .filter(|r| r["action"] == "intake.submit")
        .collect();
    assert!(
        submits.iter().all(|r| r["outcome"] == "allowed"),
        "{submits:#?}"
    );
    assert_eq!(submits.len(), judged, "{submits:#?}");
}

/// A second submission while the first one's version is being checked (a customer who
/// pressed the button twice, or a colleague with another link of the connection) is told to
/// wait, not to ask their contact to discard a credential: the staged version is the
/// connection's own submission's. Refused before any record or attempt; the first one ends
/// as if alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_beside_one_being_checked_is_told_to_wait() {
    let (_tmp, pki, daemon, sn, mut op, mut public) = start().await;
    let (path, _) = create_link(&mut op, 3600).await;
    let (other, _) = create_link(&mut op, 3600).await;
    let submitting = submit_while_probing(&pki, &daemon, &sn, &mut public, &path).await;
    let before = daemon.audit_records().len();
    for link in [&path, &other] {
        let page = get(&mut public, link).await;
        assert_eq!(page.status, 200);
        let (cookie, csrf) = form_state(&page);
        let p = post(&mut public, link, Some(&cookie), &good_form(&csrf)).await;
        assert_eq!(p.status, 409, "{}", p.html);
        assert!(
            p.html
                .contains("Another submission for this connection is being checked"),
            "{}",
            p.html
        );
    }
    assert!(!submitting.is_finished(), "the probe had to be under way");
    assert_eq!(
        daemon.audit_records().len(),
        before,
        "refused before any record"
    );
    *sn.state.delay_ms.lock().unwrap() = 0;
    let p = submitting.await.unwrap();
    assert_eq!(p.status, 200, "{}", p.html);
    // The other link kept every attempt: it is refused now only because the secret is set
    // (the page works).
    let page = get(&mut public, &other).await;
    assert_eq!(page.status, 200, "{}", page.html);
}

/// `credbroker_callbacks_total` summed over every label set whose labels contain `part`.
async fn callbacks_with(pki: &TestPki, daemon: &Daemon, part: &str) -> u64 {
    let (_, m) = scrape(pki, &daemon.url).await;
    String::from_utf8(m)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("credbroker_callbacks_total{") && l.contains(part))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Anything the public listener refuses is counted, once (THREATS.md: unauthenticated
/// requests are counted, not audited one by one): an empty intake form, a route that does
/// not exist, a callback of no provider; a submission refused because a version is already
/// staged is counted as that refusal alone, not also as admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_refusal_is_counted_once() {
    let (_tmp, pki, daemon, _sn, mut op, mut public) = start().await;
    let (path, _) = create_link(&mut op, 3600).await;
    let page = get(&mut public, &path).await;
    let (cookie, csrf) = form_state(&page);
    let intake = "provider=\"intake\"";
    let before = callbacks_with(&pki, &daemon, intake).await;
    let empty = format!("csrf={}&f_client_id=&f_client_secret=", enc(&csrf));
    let p = post(&mut public, &path, Some(&cookie), &empty).await;
    assert_eq!(p.status, 400, "{}", p.html);
    assert!(p.html.contains("Nothing was entered"), "{}", p.html);
    assert_eq!(callbacks_with(&pki, &daemon, intake).await, before + 1);

    let before = callbacks_with(&pki, &daemon, "outcome=\"denied\"").await;
    for path in [
        "/nope",
        "/callbacks/no-such-provider/setup?state=x",
        // No issuer configured here.
        "/.well-known/openid-configuration",
    ] {
        let (s, _, _) = public.exchange(Method::GET, path, &[], None).await.unwrap();
        assert_eq!(s.as_u16(), 404, "{path}");
    }
    // No Forge provider configured here.
    let (s, _, _) = public
        .exchange(Method::POST, "/forge/trigger", &[], Some(b"{}".to_vec()))
        .await
        .unwrap();
    assert_eq!(s.as_u16(), 404);
    assert_eq!(
        callbacks_with(&pki, &daemon, "outcome=\"denied\"").await,
        before + 4
    );

    // A staged version refuses the submission: one count, the refusal's.
    stage_a_version(&mut op).await;
    let page = get(&mut public, &path).await;
    let (cookie, csrf) = form_state(&page);
    let before = callbacks_with(&pki, &daemon, intake).await;
    let good = good_form(&csrf);
    let p = post(&mut public, &path, Some(&cookie), &good).await;
    assert_eq!(p.status, 409, "{}", p.html);
    assert_eq!(callbacks_with(&pki, &daemon, intake).await, before + 1);
}

/// What a link and its form are bound to, each binding checked on its own: a link's
/// limits when it is made; the CSRF value to the link and to the browser's cookie; the form
/// to its content type; the link to the very binding it was made for (one re-created under
/// the same id, in the same tenant, is another). None of these refusals spends an attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_and_its_form_work_only_for_what_they_were_made_for() {
    let (_tmp, _pki, daemon, _sn, mut op, mut public) = start().await;
    // Limits of a link: a lifetime of 1 s to 7 days, 1 to 16 fields, each named once.
    let many: Vec<String> = (0..17).map(|i| format!("field{i}")).collect();
    for body in [
        json!({"binding": "acme-snow", "ttl_s": 0}),
        json!({"binding": "acme-snow", "ttl_s": 7 * 86_400 + 1}),
        json!({"binding": "acme-snow", "fields": []}),
        json!({"binding": "acme-snow", "fields": many}),
        json!({"binding": "acme-snow", "fields": ["client_id", "client_secret", "client_id"]}),
    ] {
        let (s, v) = call(
            &mut op,
            Method::POST,
            "/v1/admin/intake",
            Some(body.clone()),
        )
        .await;
        assert_eq!((s, code(&v)), (400, "bad_request"), "{body}: {v}");
    }
    let (_, v) = call(&mut op, Method::GET, "/v1/admin/intake", None).await;
    assert_eq!(v["intake_links"], json!([]), "{v}");

    let attempts_left = |page: &Page, left: u32| {
        assert_eq!(page.status, 422, "{}", page.html);
        assert!(
            page.html.contains(&format!("{left} attempt(s) left")),
            "{}",
            page.html
        );
    };
    let (a, _) = create_link(&mut op, 3600).await;
    let (b, _) = create_link(&mut op, 3600).await;
    let page_a = get(&mut public, &a).await;
    let (cookie_a, csrf_a) = form_state(&page_a);
    // Link A's cookie and form posted to link B.
    let p = post(&mut public, &b, Some(&cookie_a), &good_form(&csrf_a)).await;
    assert_eq!(p.status, 403, "{}", p.html);
    // The form of one opening with the cookie of another (of the same link).
    let (cookie_a2, csrf_a2) = form_state(&get(&mut public, &a).await);
    assert_ne!(cookie_a, cookie_a2);
    let p = post(&mut public, &a, Some(&cookie_a), &good_form(&csrf_a2)).await;
    assert_eq!(p.status, 403, "{}", p.html);
    // The right pair as text/plain (what a cross-site form may send) or with no type.
    for content_type in [Some("text/plain"), None] {
        let mut headers = vec![("cookie", cookie_a2.as_str())];
        if let Some(t) = content_type {
            headers.push(("content-type", t));
        }
        let (s, _, body) = public
            .exchange(
                Method::POST,
                &a,
                &headers,
                Some(good_form(&csrf_a2).into_bytes()),
            )
            .await
            .unwrap();
        assert_eq!(
            s,
            400,
            "{content_type:?}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    // A value longer than any secret.
    let long = format!(
        "csrf={}&f_client_id={CLIENT}&f_client_secret={}",
        enc(&csrf_a2),
        "x".repeat(9000)
    );
    let p = post(&mut public, &a, Some(&cookie_a2), &long).await;
    assert_eq!(p.status, 400, "{}", p.html);
    assert!(p.html.contains("A value is too long"), "{}", p.html);
    // None of those was a submission, or spent an attempt of either link.
    assert!(!daemon
        .audit_records()
        .iter()
        .any(|r| r["action"] == "intake.submit"));
    for path in [&a, &b] {
        let (cookie, form) = wrong_secret_form(&mut public, path).await;
        attempts_left(&post(&mut public, path, Some(&cookie), &form).await, 2);
    }

    // The binding removed and made again under its id, in the same tenant: the link made
    // for the first one is dead (its links went with it; a link that outlived it, written
    // back into the store, would still be refused by its creation time), and nothing is
    // written into the second.
    remake_acme_snow(&mut op, "t1").await;
    assert_eq!(get(&mut public, &a).await.status, 404);
    let p = post(&mut public, &a, Some(&cookie_a2), &good_form(&csrf_a2)).await;
    assert_eq!(p.status, 404, "{}", p.html);
    let (_, v) = call(&mut op, Method::GET, "/v1/admin/bindings/acme-snow", None).await;
    assert!(v["binding"]["active_secret_version"].is_null(), "{v}");
    assert!(v["binding"]["pending_secret_version"].is_null(), "{v}");
}
