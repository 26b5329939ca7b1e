//! Concurrent cold misses share one upstream mint. The daemon runs in-process here so the
//! test can register a counting provider through the public registry; TLS, HTTP, the tenant
//! chain, the cache and the audit log are the real ones.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use credbroker::broker::{Broker, BrokerKeys};
use credbroker::config::Config;
use credbroker::tls::ReloadableTls;
use credbroker_providers::ProviderRegistry;
use credbroker_tests::counting::CountingProvider;
use credbroker_tests::*;
use http::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_cold_resolves_cause_one_mint() {
    let (tmp, pki) = setup();
    let config_path = tmp.path().join("credbroker.toml");
    // 200 workers of one address connect at once: room for all their handshakes (by default
    // one source gets at most half of 256).
    write_config(
        &config_path,
        &tmp.path().join("data"),
        &pki,
        None,
        "[limits]\nmax_handshakes = 512\n",
    );
    let config = Config::load(&config_path).unwrap();
    BrokerKeys::init(&config).unwrap();
    let mints = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut registry = ProviderRegistry::builtin();
    registry.register(Arc::new(CountingProvider {
        mints: mints.clone(),
        delay: Duration::ZERO,
        gate: Some(gate.clone()),
    }));
    let broker = Broker::open_with_config(&config, registry).await.unwrap();
    let tls = Arc::new(ReloadableTls::new(config.tls.clone()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server =
        credbroker::server::spawn(listener, broker.clone(), tls, config.limits.clone()).unwrap();
    let url = format!("https://{}", server.local_addr);

    let mut op = pki.client_for("op", &url);
    for (path, body) in [
        ("tenants", json!({"id": "t1"})),
        (
            "bindings",
            json!({"id": "b1", "tenant": "t1", "provider": "test_counting", "owner": "team-tests", "purpose": "integration test"}),
        ),
        (
            "instances",
            json!({"id": "i1", "tenant": "t1", "binding": "b1", "connector_kind": "aws"}),
        ),
        (
            "workers",
            json!({"id": "w1", "tenants": ["t1"], "owner": "team-tests", "purpose": "integration test"}),
        ),
    ] {
        let (s, v) = call(
            &mut op,
            Method::POST,
            &format!("/v1/admin/{path}"),
            Some(body),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let before = broker.audit_log().stats().records.load(Ordering::Relaxed);

    // 200 workers' requests, each on its own connection, all for the same cold key.
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let pki = pki.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = pki.client_for("w1", &url);
            resolve(&mut c, json!({"instance_id": "i1"})).await
        }));
    }
    // The upstream answers only once all 200 are parked: one leading the mint, 199 joined to
    // it. Without single flight they would all mint (or the test times out waiting).
    let metrics = broker.metrics();
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while !(mints.load(Ordering::SeqCst) >= 1 && metrics.cache_shared_mints.get() >= 199) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "200 callers never parked on one mint: {} mints, {} joined",
        mints.load(Ordering::SeqCst),
        metrics.cache_shared_mints.get()
    );
    assert_eq!(mints.load(Ordering::SeqCst), 1, "one mint while all wait");
    assert_eq!(
        metrics.cache_hits.get(),
        0,
        "nobody was served from the cache"
    );
    gate.add_permits(1000);
    let mut tokens = std::collections::HashSet::new();
    let mut minted = 0;
    for t in tasks {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, 200, "{v}");
        tokens.insert(v["credentials"]["token"].as_str().unwrap().to_owned());
        if v["cached"] == false {
            minted += 1;
        }
    }
    assert_eq!(mints.load(Ordering::SeqCst), 1, "exactly one upstream mint");
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        minted, 1,
        "one response reports the mint, the others shared it"
    );
    assert_eq!(metrics.cache_shared_mints.get(), 199);
    assert_eq!(metrics.cache_misses.get(), 200);
    let after = broker.audit_log().stats().records.load(Ordering::Relaxed);
    assert_eq!(after - before, 200, "one audit record per resolve");

    // Warm: served from cache. A different narrowing is a different key.
    let mut w = pki.client_for("w1", &url);
    let (_, v) = resolve(&mut w, json!({"instance_id": "i1"})).await;
    assert_eq!(v["cached"], true);
    assert_eq!(mints.load(Ordering::SeqCst), 1);
    let (_, v) = resolve(
        &mut w,
        json!({"instance_id": "i1", "narrow": {"scope": "read"}}),
    )
    .await;
    assert_eq!(v["cached"], false);
    assert_eq!(mints.load(Ordering::SeqCst), 2);
    // min_ttl_s beyond the cached token's remaining life forces a fresh mint.
    let (_, v) = resolve(&mut w, json!({"instance_id": "i1", "min_ttl_s": 7200})).await;
    assert_eq!(v["cached"], false);
    assert_eq!(mints.load(Ordering::SeqCst), 3);
    // Disabling the binding refuses even a cached token.
    call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/b1/disable",
        Some(json!({})),
    )
    .await;
    let (s, v) = resolve(&mut w, json!({"instance_id": "i1"})).await;
    assert_eq!((s, code(&v)), (403, "binding_inactive"));

    let (_, metrics) = scrape(&pki, &url).await;
    let metrics = String::from_utf8(metrics).unwrap();
    // The exposition carries the values the broker counted, not only the names.
    let value = |series: &str| {
        metric_value(&metrics, series).unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
    };
    assert_eq!(value("credbroker_cache_hits_total"), 1.0, "{metrics}");
    assert_eq!(value("credbroker_cache_shared_mints_total"), 199.0);
    assert_eq!(value("credbroker_cache_misses_total"), 202.0);
    assert_eq!(
        value("credbroker_mints_total{provider=\"test_counting\"}"),
        3.0
    );
    assert!(value("credbroker_audit_batch_size_count") >= 1.0);
    assert!(
        value("credbroker_audit_batch_size_sum") >= 205.0,
        "{metrics}"
    );

    server.shutdown(Duration::from_secs(5)).await;
    broker.shutdown();
    let verifier = credbroker::keys::AuditVerifier::load(&config.audit_public_key_file()).unwrap();
    credbroker::audit::verify_log(
        &config.audit_dir(),
        &verifier,
        config.audit.max_unanchored(),
    )
    .unwrap();
}
