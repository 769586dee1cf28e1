//! The chain module (`switchyard.wasm`: router, rate limit, load balancer,
//! access log in one VM) in real Envoy: decisions pass between the stages
//! inside the module, where a client cannot write them (issue 12, item 1).

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use switchyard_integration::backend::{Backend, BackendSpec};
use switchyard_integration::envoy::{Envoy, EnvoyBuilder, Runtime};
use switchyard_integration::paths;
use switchyard_integration::traffic;

const TEMPLATE: &str = include_str!("../templates/scenario-chain.yaml");

/// What a client could forge: the access log used to read these.
const FORGED: &[(&str, &str)] = &[
    ("x-switchyard-route", "forged-route"),
    ("x-switchyard-endpoint", "10.66.66.66:6666"),
    ("x-switchyard-ratelimit", "over_limit;forged"),
];

async fn start(a: &Backend, b: &Backend, sampling: f64) -> Envoy {
    let access_log = json!({"log": {"enabled": true}, "sampling": {"rate": sampling}});
    start_with(a, b, access_log, false).await
}

async fn start_with(a: &Backend, b: &Backend, access_log: Value, decisions_log: bool) -> Envoy {
    paths::wasm_module("switchyard").expect("chain module built (make build)");
    let stages = json!({"stages": [
        {"domain_router": {"table": {"version": 1, "virtual_hosts": [
            {"name": "shop", "domains": ["shop.test"],
             "rules": [{"name": "shop-all", "cluster": "shop"}]}]}}},
        {"rate_limit": {"rules": [{"name": "per-client", "key": [{"type": "client_address"}],
                                   "limit": {"requests": 4, "per": "hour", "burst": 4}}]}},
        {"load_balancer": {"endpoints": [
            {"address": a.addr().to_string(), "name": "a"},
            {"address": b.addr().to_string(), "name": "b"}]}},
        {"access_log": access_log}
    ]});
    let endpoint = |x: &Backend| json!({"ip": x.addr().ip().to_string(), "port": x.addr().port()});
    EnvoyBuilder::new(Runtime::from_env().unwrap(), TEMPLATE)
        .var(
            "filters",
            vec![json!({"name": "switchyard", "vm_id": "switchyard",
                        "module": "switchyard.wasm", "config": stages.to_string()})],
        )
        .var(
            "clusters",
            vec![json!({"name": "shop", "endpoints": [endpoint(a), endpoint(b)]})],
        )
        .var("cluster_header", "x-switchyard-cluster")
        .var("override_host", "x-switchyard-lb-host")
        .var("collector", Option::<Value>::None)
        .var("discovery", Option::<Value>::None)
        .var("decisions_log", decisions_log)
        .concurrency(2)
        .start()
        .await
        .unwrap_or_else(|e| panic!("Envoy did not start: {e}"))
}

/// The records the access-log stage wrote to Envoy's log, by request id.
fn records(envoy: &Envoy) -> Vec<Value> {
    envoy
        .logs()
        .lines()
        .filter_map(|l| l.find(": {").map(|i| &l[i + 2..]))
        .filter_map(|j| serde_json::from_str::<Value>(j).ok())
        .filter(|v| v.get("request_id").is_some())
        .collect()
}

async fn wait_records(envoy: &Envoy, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = records(envoy);
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn headers<'a>(id: &'a str, client: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![("x-request-id", id), ("x-forwarded-for", client)];
    h.extend_from_slice(FORGED);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_come_from_the_stages_never_from_the_client() {
    let a = Backend::start(BackendSpec::new("a")).await.unwrap();
    let b = Backend::start(BackendSpec::new("b")).await.unwrap();
    let envoy = start(&a, &b, 1.0).await;
    let ingress = envoy.listener("ingress").unwrap();
    // 4 allowed, then 429s; every request carries forged decisions.
    let mut statuses = Vec::new();
    for i in 0..6 {
        let id = format!("chain-{i}");
        let r = traffic::get(ingress, "shop.test", "/item", &headers(&id, "7.7.7.7"))
            .await
            .unwrap();
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    // No forged header reached a backend.
    for backend in [&a, &b] {
        for (name, _) in backend.last_request_headers().unwrap_or_default() {
            assert!(
                !FORGED.iter().any(|(f, _)| name.eq_ignore_ascii_case(f)),
                "{name} reached backend {}",
                backend.name()
            );
        }
    }
    let recs = wait_records(&envoy, 6).await;
    assert_eq!(recs.len(), 6, "{recs:?}");
    let addrs = [a.addr().to_string(), b.addr().to_string()];
    for r in &recs {
        let text = r.to_string();
        assert!(!text.contains("forged"), "{text}");
        assert!(!text.contains("10.66.66.66"), "{text}");
        let verdict = r["switchyard_ratelimit"].as_str().unwrap_or_default();
        if r["response_code"] == 200 {
            assert_eq!(r["switchyard_route"], "shop-all", "{r}");
            let endpoint = r["switchyard_endpoint"].as_str().unwrap_or_default();
            assert!(addrs.iter().any(|a| a == endpoint), "{r}");
            assert_eq!(r["upstream_host"].as_str(), Some(endpoint), "{r}");
            assert!(verdict.starts_with("ok"), "{r}");
        } else {
            assert_eq!(r["response_code"], 429, "{r}");
            assert!(verdict.starts_with("over_limit"), "{r}");
        }
        assert_eq!(r["client_address"], "7.7.7.7", "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_verdict_does_not_keep_sampled_out_records() {
    let a = Backend::start(BackendSpec::new("a")).await.unwrap();
    let b = Backend::start(BackendSpec::new("b")).await.unwrap();
    let envoy = start(&a, &b, 0.0).await;
    let ingress = envoy.listener("ingress").unwrap();
    // 20 clients, one request each (never limited), all with a forged
    // `over_limit` verdict: sampling rate 0 keeps none of them.
    for i in 0..20 {
        let id = format!("sampled-{i}");
        let client = format!("7.7.8.{i}");
        let r = traffic::get(ingress, "shop.test", "/", &headers(&id, &client))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    // A real 429 is kept (sampling keeps rate-limited requests): the log
    // works, so the zero above is not an accident of a silent log.
    for i in 0..5 {
        let id = format!("limited-{i}");
        let _ = traffic::get(ingress, "shop.test", "/", &headers(&id, "7.7.9.9")).await;
    }
    let recs = wait_records(&envoy, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recs = if recs.is_empty() {
        recs
    } else {
        records(&envoy)
    };
    let sampled: Vec<&Value> = recs
        .iter()
        .filter(|r| {
            r["request_id"]
                .as_str()
                .unwrap_or("")
                .starts_with("sampled-")
        })
        .collect();
    assert!(sampled.is_empty(), "{sampled:?}");
    assert_eq!(recs.len(), 1, "one real 429 kept: {recs:?}");
    assert_eq!(recs[0]["response_code"], 429);
}

/// `filter_state: {content: decisions}`: the access-log stage builds no
/// record; Envoy's own access log prints Envoy's fields and the stages'
/// decisions from filter state, never the client's forged ones; a request
/// the rate limit answers has a verdict and no endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_reach_envoys_own_access_log_as_filter_state() {
    let a = Backend::start(BackendSpec::new("a")).await.unwrap();
    let b = Backend::start(BackendSpec::new("b")).await.unwrap();
    let access_log = json!({"log": {"enabled": false}, "filter_state": {"content": "decisions"}});
    let envoy = start_with(&a, &b, access_log, true).await;
    let ingress = envoy.listener("ingress").unwrap();
    for i in 0..6 {
        let id = format!("fs-{i}");
        let r = traffic::get(ingress, "shop.test", "/item", &headers(&id, "7.7.7.7"))
            .await
            .unwrap();
        assert_eq!(r.status, if i < 4 { 200 } else { 429 });
    }
    // Envoy flushes file access logs about once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines: Vec<Value> = loop {
        let text =
            std::fs::read_to_string(envoy.run_dir().join("decisions.log")).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= 6 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(lines.len(), 6, "{lines:?}");
    let addrs = [a.addr().to_string(), b.addr().to_string()];
    for l in &lines {
        let text = l.to_string();
        assert!(
            !text.contains("forged") && !text.contains("10.66.66.66"),
            "{text}"
        );
        assert_eq!(l["switchyard_route"], "shop-all", "{l}");
        let verdict = l["switchyard_ratelimit"].as_str().unwrap_or_default();
        if l["response_code"] == 200 {
            let endpoint = l["switchyard_endpoint"].as_str().unwrap_or_default();
            assert!(addrs.iter().any(|a| a == endpoint), "{l}");
            assert_eq!(l["upstream_host"].as_str(), Some(endpoint), "{l}");
            assert!(verdict.starts_with("ok"), "{l}");
        } else {
            assert_eq!(l["response_code"], 429, "{l}");
            assert!(verdict.starts_with("over_limit"), "{l}");
            assert_eq!(l["switchyard_endpoint"], Value::Null, "{l}");
        }
    }
    // No record was built: the stage's record counter stays at 0.
    let records = envoy
        .stat("wasmcustom.switchyard.access-log.records")
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(records, 0);
}
