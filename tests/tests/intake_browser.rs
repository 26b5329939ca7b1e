//! The intake page in a real browser: headless Chromium (Debian `chromium` +
//! `chromium-driver`, installed by tests/run) driven over WebDriver opens the link, fills the
//! masked fields, submits, and sees the result; the same link again is invalid, an expired
//! link is invalid, a forged CSRF token is refused; the canary is in no page source; the CSP
//! header is set (checked over HTTP in tests/tests/intake.rs). Screenshots of the form and
//! the result page go to target/test-output/intake/.

use std::time::Duration;

use credbroker_tests::browser::browser;
use credbroker_tests::fake_servicenow::FakeServiceNow;
use credbroker_tests::*;
use fantoccini::Locator;
use http::Method;
use serde_json::json;

const CLIENT: &str = "browser-client-0001";
const SECRET: &str = "CANARY-browser-secret-4b1d0e";

/// Loads `url` and checks the page says the link is no longer valid; its source. Chromium
/// has been seen on a loaded CI machine to report an empty document for a page it just
/// loaded: the page is read again (three tries), and the browser's own view of it is
/// printed while it stays empty or unexpected.
async fn no_longer_valid(c: &fantoccini::Client, url: &str) -> String {
    let mut source = String::new();
    for _ in 0..3 {
        c.goto(url).await.unwrap();
        source = c.source().await.unwrap();
        if source.contains("This link is no longer valid") {
            return source;
        }
        println!(
            "empty or unexpected document at {:?}: {source:?}",
            c.current_url().await.map(|u| u.to_string())
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("{url}: the page does not say the link is no longer valid: {source}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_pastes_a_secret_in_a_real_browser() {
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
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "acme-snow", "tenant": "t1", "provider": "servicenow_oauth", "config": {"instance_url": sn.url}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let link = |ttl: u64| {
        let mut op = pki.client_for("op", &daemon.url);
        async move {
            let (s, v) = call(
                &mut op,
                Method::POST,
                "/v1/admin/intake",
                Some(json!({"binding": "acme-snow", "ttl_s": ttl})),
            )
            .await;
            assert_eq!(s, 201, "{v}");
            v["url"].as_str().unwrap().to_owned()
        }
    };
    let out = repo_root().join("target/test-output/intake");
    std::fs::create_dir_all(&out).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let (_driver, c) = browser(profile.path()).await;

    // The customer opens the link, sees the form, types into the masked fields, submits.
    let url = link(3600).await;
    c.goto(&url).await.unwrap();
    let tenant = c
        .find(Locator::Id("tenant"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(tenant, "t1");
    let secret_input = c.find(Locator::Id("f_client_secret")).await.unwrap();
    assert_eq!(
        secret_input.attr("type").await.unwrap().as_deref(),
        Some("password")
    );
    c.find(Locator::Id("f_client_id"))
        .await
        .unwrap()
        .send_keys(CLIENT)
        .await
        .unwrap();
    secret_input.send_keys(SECRET).await.unwrap();
    std::fs::write(out.join("form.png"), c.screenshot().await.unwrap()).unwrap();
    c.find(Locator::Id("submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let result = c
        .wait()
        .for_element(Locator::Id("result"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(result, "Stored and verified");
    let source = c.source().await.unwrap();
    assert!(
        !source.contains(SECRET),
        "the result page echoes the secret"
    );
    std::fs::write(out.join("result.png"), c.screenshot().await.unwrap()).unwrap();
    println!(
        "screenshots: {} and {}",
        out.join("form.png").display(),
        out.join("result.png").display()
    );

    // The same link again: no longer valid.
    let source = no_longer_valid(&c, &url).await;
    assert!(!source.contains(SECRET));

    // An expired link: no longer valid.
    let expired = link(1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    no_longer_valid(&c, &expired).await;

    // A forged CSRF token: refused, nothing stored.
    let fresh = link(3600).await;
    c.goto(&fresh).await.unwrap();
    c.execute(
        "document.querySelector('input[name=csrf]').value = arguments[0];",
        vec![json!("hmac-sha256:00000000000000000000000000000000")],
    )
    .await
    .unwrap();
    // (The page's CSP forbids its own scripts; WebDriver's script runs outside it, as an
    // attacker's page posting a crafted form would.)
    c.find(Locator::Id("f_client_id"))
        .await
        .unwrap()
        .send_keys(CLIENT)
        .await
        .unwrap();
    c.find(Locator::Id("f_client_secret"))
        .await
        .unwrap()
        .send_keys("forged-attempt")
        .await
        .unwrap();
    c.find(Locator::Id("submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // Wait for the answer page (the click only starts the navigation).
    let refused = c
        .wait()
        .for_element(Locator::Id("refused"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(refused, "Not accepted");
    let versions = {
        let (_, b) = call(&mut op, Method::GET, "/v1/admin/bindings/acme-snow", None).await;
        b["binding"]["secret_versions"].as_array().unwrap().len()
    };
    assert_eq!(versions, 1, "the forged submission stored something");
    c.close().await.unwrap();

    // The canary: in no log, audit record or admin answer.
    let audit = serde_json::to_string(&daemon.audit_records()).unwrap();
    assert!(!audit.contains(SECRET) && !daemon.logs().contains(SECRET));
}
