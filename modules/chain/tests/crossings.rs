//! Crossings per GET of every `make bench` variant, counted in the emulator
//! with the bench's configurations (`integration/src/bench.rs`), written to
//! `build/crossings.json` for the bench table, and held to budgets.

use serde_json::{Value, json};
use std::collections::BTreeMap;
mod envoy_properties;

use switchyard_emulator::{Crossings, Host};

/// The bench's router table: 10 virtual hosts, requests match the last.
fn router() -> Value {
    let mut hosts: Vec<Value> = (0..9)
        .map(|i| {
            json!({"name": format!("other-{i}"),
                "domains": [format!("tenant-{i}.example.com"), format!("*.tenant-{i}.example.com")],
                "rules": [{"cluster": "backend"}]})
        })
        .collect();
    hosts.push(
        json!({"name": "bench", "domains": ["bench.local"], "rules": [{"cluster": "backend"}]}),
    );
    json!({"cluster_header": "x-switchyard-cluster", "table": {"version": 1, "virtual_hosts": hosts}})
}

fn rate_limit() -> Value {
    json!({"rules": [{"name": "per-client", "key": [{"type": "client_address"}],
        "limit": {"requests": 1_000_000, "per": "second", "burst": 1_000_000}}]})
}

fn load_balancer() -> Value {
    json!({"mode": "endpoint", "endpoints": [
        {"address": "127.0.0.1:9001"}, {"address": "127.0.0.1:9002"}, {"address": "127.0.0.1:9003"}]})
}

fn access_log() -> Value {
    json!({})
}

/// The access log alone as a bench variant runs it: records to Envoy's
/// file access log through filter state.
fn access_log_fs() -> Value {
    json!({"log": {"enabled": false}, "filter_state": {}})
}

/// The crossings of a steady-state GET (after warm-up requests) as the
/// bench sends it: wrk's GET, a 200 with a TEXT load report and a body.
fn count(init: extern "C" fn(), config: &Value) -> Crossings {
    let host = Host::new(init).plugin_config(config.to_string()).build();
    let worker = host.start_worker();
    assert!(worker.configured(), "{config}: {:?}", host.logs());
    let mut last = Crossings::default();
    // Steady state: the VM has ticked (every 20 ms in Envoy).
    worker.tick();
    // The first requests build per-VM caches (table, per-endpoint metrics).
    for _ in 0..5 {
        let s = worker.http_stream();
        envoy_properties::set(&s);
        s.request_headers(
            &[
                (":authority", "bench.local"),
                (":path", "/"),
                (":method", "GET"),
                ("x-request-id", "r"),
            ],
            true,
        );
        let picked = s.request_header("x-switchyard-lb-host").unwrap_or_default();
        let upstream = picked
            .split(',')
            .next()
            .unwrap_or("127.0.0.1:9001")
            .to_string();
        s.set_property(&["upstream", "address"], upstream);
        envoy_properties::set_response(&s);
        s.response_headers(
            &[
                (":status", "200"),
                (
                    "endpoint-load-metrics",
                    "TEXT application_utilization=0.5,rps_fractional=100",
                ),
            ],
            false,
        );
        s.response_body(b"ok", true);
        s.finish();
        last = s.crossings();
    }
    last
}

/// Per-stage budgets: each single-stage module's GET, its callbacks
/// (context create, request headers, the phases the stage takes part in,
/// delete) included.
const BUDGETS: &[(&str, usize)] = &[
    // 3 callbacks, request map (2), cluster header replace.
    ("domain_router", 6),
    // 4 callbacks (response headers for the RateLimit headers, no log),
    // source.address (2), clock, bucket read (2) + CAS write, and the
    // request map (2), read to strip forged decision headers
    // (`DECISION_HEADERS`; this rule keys on the client address alone).
    ("rate_limit", 12),
    // Budgets of the load balancer and access log stages are held by their
    // crates' own emulator tests; here they are only counted.
];

/// The bench chain in one module, steady state: 5 callbacks; request map
/// (2); rate limit: source.address (2), clock, bucket read (2) + CAS write;
/// load balancer: pick replace (its table is re-synced on the tick);
/// router: cluster replace; response map (2); upstream.address (2), health
/// write, report strip (reports are stamped by the tick or request-phase
/// clock, no read); access log: the decisions as filter state, one write
/// each (the bench router's rules have no name: endpoint and verdict).
/// Counters cost nothing per request (flushed on the tick). Was 94 with
/// four proxy-wasm modules; 33 with the access log's record built in the
/// module (4 attribute reads, the clock, the record), which Envoy's own
/// access log now formats.
const CHAIN_BUDGET: usize = 23;

#[test]
fn bench_variants_crossings() {
    let mut counts = BTreeMap::new();
    let singles: [(&str, extern "C" fn(), Value); 5] = [
        ("domain_router", switchyard_domain_router::init, router()),
        ("rate_limit", switchyard_rate_limit::init, rate_limit()),
        (
            "load_balancer",
            switchyard_load_balancer::init,
            load_balancer(),
        ),
        ("access_log", switchyard_access_log::init, access_log()),
        (
            "access_log_fs",
            switchyard_access_log::init,
            access_log_fs(),
        ),
    ];
    let mut separate = Vec::new();
    for (name, init, config) in &singles {
        let c = count(*init, config);
        println!("{name}: {c}");
        if *name != "access_log" {
            separate.extend(c.0.iter().copied());
        }
        counts.insert(name.to_string(), c.clone());
        if let Some((_, budget)) = BUDGETS.iter().find(|(n, _)| n == name) {
            assert!(c.total() <= *budget, "{name} over its budget {budget}: {c}");
        }
    }
    counts.insert("chain_separate".into(), Crossings(separate));
    // The bench chain: the decisions as filter state for Envoy's own JSON
    // access log.
    let decisions = json!({"log": {"enabled": false}, "filter_state": {"content": "decisions"}});
    let chain = json!({"stages": [
        {"domain_router": router()},
        {"rate_limit": rate_limit()},
        {"load_balancer": load_balancer()},
        {"access_log": decisions},
    ]});
    let envoy_log = json!({"stages": [
        {"domain_router": router()},
        {"rate_limit": rate_limit()},
        {"load_balancer": load_balancer()},
        {"access_log": access_log()},
    ]});
    counts.insert("chain_envoylog".into(), count(switchyard::init, &envoy_log));
    let c = count(switchyard::init, &chain);
    println!("chain: {c}");
    counts.insert("chain".into(), c.clone());
    assert!(
        c.total() <= CHAIN_BUDGET,
        "chain over its budget {CHAIN_BUDGET}: {c}"
    );

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/crossings.json");
    for (key, c) in &counts {
        c.record(&path, key);
    }
}
