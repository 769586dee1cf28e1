//! The chain over TLS in real Envoy: a TLS listener serving HTTP/1.1 and
//! HTTP/2 by ALPN, TLS to the backends (their own CA, SNI and name
//! checked), with certificates made for the test (rcgen). Every stage does
//! what it does in clear text: the router routes, the rate limit answers
//! 429, the load balancer picks a backend, the access log writes the
//! record with the protocol the client spoke.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use std::time::Duration;
use switchyard_integration::backend::{BACKEND_HEADER, Backend, BackendSpec};
use switchyard_integration::envoy::{EnvoyBuilder, Runtime};
use switchyard_integration::paths;
use switchyard_integration::tls::{TestPki, https_get};

const TEMPLATE: &str = include_str!("../templates/chain-tls.yaml");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_behaves_the_same_over_tls_h1_and_h2() {
    paths::wasm_module("switchyard").expect("module built (make build)");
    let front = TestPki::new(&["shop.test"]).unwrap();
    let back = TestPki::new(&["backend.test"]).unwrap();
    let server = back.server_config(&[b"h2", b"http/1.1"]).unwrap();
    let a = Backend::start(BackendSpec::new("a").tls(server.clone()))
        .await
        .unwrap();
    let b = Backend::start(BackendSpec::new("b").tls(server))
        .await
        .unwrap();
    let addrs = [a.addr(), b.addr()];
    let chain = json!({"stages": [
        {"domain_router": {"table": {"virtual_hosts": [
            {"name": "shop", "domains": ["shop.test"], "rules": [{"name": "shop", "cluster": "shop"}]}]}}},
        {"rate_limit": {"rules": [{"name": "limited", "match": {"path_prefix": "/limited"},
            "key": [{"type": "client_address"}], "limit": {"requests": 2, "per": "minute"}}]}},
        {"load_balancer": {"mode": "endpoint", "policy": "round_robin",
            "endpoints": addrs.iter().map(|a| json!({"address": a.to_string()})).collect::<Vec<_>>()}},
        {"access_log": {"log": {"enabled": true}}}
    ]});
    let envoy = EnvoyBuilder::new(Runtime::from_env().unwrap(), TEMPLATE)
        .var("chain_config", chain.to_string())
        .var(
            "backends",
            addrs
                .iter()
                .map(|a| json!({"ip": a.ip().to_string(), "port": a.port()}))
                .collect::<Vec<_>>(),
        )
        .var("cert", &front.cert_pem)
        .var("key", &front.key_pem)
        .var("ca", &back.ca_pem)
        .var("upstream_name", "backend.test")
        .start()
        .await
        .unwrap_or_else(|e| panic!("Envoy did not start: {e}"));
    let ingress = envoy.listener("ingress").unwrap();
    let h2 = front.client_config(&[b"h2"]).unwrap();
    let h1 = front.client_config(&[b"http/1.1"]).unwrap();

    // Routed and balanced, over both protocols.
    let mut backends = Vec::new();
    for (client, version) in [
        (&h2, "HTTP/2"),
        (&h1, "HTTP/1.1"),
        (&h2, "HTTP/2"),
        (&h1, "HTTP/1.1"),
    ] {
        let r = https_get(ingress, client.clone(), "shop.test", "/item", &[])
            .await
            .unwrap();
        assert_eq!((r.status, r.version), (200, version), "{r:?}");
        backends.push(r.header(BACKEND_HEADER).unwrap_or("").to_string());
    }
    backends.sort();
    backends.dedup();
    assert_eq!(backends, ["a", "b"], "round robin over both TLS backends");
    // The rate limit's 429.
    let statuses = {
        let mut s = Vec::new();
        for _ in 0..3 {
            s.push(
                https_get(ingress, h2.clone(), "shop.test", "/limited", &[])
                    .await
                    .unwrap()
                    .status,
            );
        }
        s
    };
    assert_eq!(statuses, [200, 200, 429]);
    // A client that does not trust the listener's CA gets no answer.
    let untrusted = back.client_config(&[b"h2"]).unwrap();
    assert!(
        https_get(ingress, untrusted, "shop.test", "/item", &[])
            .await
            .is_err()
    );

    // The records: one per request, with the protocol the client spoke and
    // the stages' decisions.
    let records: Vec<Value> = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let r: Vec<Value> = envoy
                .logs()
                .lines()
                .filter(|l| l.contains("wasm log switchyard"))
                .filter_map(|l| l.find(": {").map(|i| &l[i + 2..]))
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if r.len() >= 7 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("7 records: {}", envoy.logs()));
    assert_eq!(records.len(), 7, "one record per request");
    let protocols: Vec<&str> = records
        .iter()
        .filter_map(|r| r["protocol"].as_str())
        .collect();
    assert!(
        protocols.contains(&"HTTP/2") && protocols.contains(&"HTTP/1.1"),
        "{protocols:?}"
    );
    let item = records.iter().find(|r| r["path"] == "/item").unwrap();
    assert_eq!(item["switchyard_route"], "shop", "{item}");
    let endpoint = item["switchyard_endpoint"].as_str().unwrap_or("");
    assert!(addrs.iter().any(|a| a.to_string() == endpoint), "{item}");
    assert_eq!(item["upstream_host"], item["switchyard_endpoint"], "{item}");
    let limited = records.iter().find(|r| r["response_code"] == 429).unwrap();
    assert!(
        limited["switchyard_ratelimit"]
            .as_str()
            .unwrap_or("")
            .starts_with("over_limit"),
        "{limited}"
    );
}
