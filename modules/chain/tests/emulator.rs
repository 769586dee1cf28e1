//! The chain module (`switchyard.wasm`) through the real ABI in the host
//! emulator: the demo chain's stages share one exchange, the access log
//! reads the other stages' decisions, and a GET stays within its crossing
//! budget.

use serde_json::Value;
mod envoy_properties;

use switchyard_emulator::{Action, Host, Stream, Worker};

/// The demo chain (`integration/scenarios/demo.yaml`), with the addresses
/// the harness fills in.
const DEMO: &str = r#"{"stages": [
  {"domain_router": {
    "table": {"version": 1, "virtual_hosts": [
      {"name": "shop", "domains": ["shop.example.com"], "rules": [{"name": "shop", "cluster": "shop"}]},
      {"name": "api", "domains": ["api.example.com"], "rules": [{"name": "api", "cluster": "api"}]}]},
    "no_match": {"action": "local_reply", "status": 404, "body": {"error": "no_route"}}}},
  {"rate_limit": {
    "rules": [{"name": "api-per-client", "match": {"domains": ["api.example.com"]},
               "key": [{"type": "client_address"}],
               "limit": {"requests": 10, "per": "second", "burst": 10}}]}},
  {"load_balancer": {
    "policy": "weighted_round_robin",
    "weighted_round_robin": {"blackout_period_ms": 1000, "weight_update_period_ms": 250,
                             "weight_expiration_period_ms": 3000},
    "endpoints": [{"address": "127.0.0.1:9001", "name": "small"},
                  {"address": "127.0.0.1:9002", "name": "medium"},
                  {"address": "127.0.0.1:9003", "name": "large"}]}},
  {"access_log": {"log": {"enabled": true},
                  "http": {"cluster": "collector", "flush_interval_ms": 250}}}
]}"#;

fn demo() -> (Host, Worker) {
    let host = Host::new(switchyard::init)
        .plugin_config(DEMO)
        .clusters(["collector"])
        .build();
    let worker = host.start_worker();
    assert!(worker.configured(), "{:?}", host.logs());
    (host, worker)
}

/// A GET as Envoy drives it; the picked upstream answers 200.
fn get(worker: &Worker, authority: &str, extra: &[(&str, &str)]) -> (Stream, Action) {
    let s = worker.http_stream();
    envoy_properties::set(&s);
    let mut headers = vec![
        (":authority", authority),
        (":path", "/item/1"),
        (":method", "GET"),
        ("x-request-id", "req-1"),
        ("x-forwarded-for", "7.7.7.7"),
    ];
    headers.extend_from_slice(extra);
    let action = s.request_headers(&headers, true);
    if action == Action::Continue {
        let picked = s.request_header("x-switchyard-lb-host").unwrap_or_default();
        let upstream = picked.split(',').next().unwrap_or_default().to_string();
        s.set_property(&["upstream", "address"], upstream);
        s.set_property(&["xds", "cluster_name"], "shop");
        envoy_properties::set_response(&s);
        s.response_headers(
            &[
                (":status", "200"),
                (
                    "endpoint-load-metrics",
                    "TEXT application_utilization=0.5,rps_fractional=10",
                ),
            ],
            false,
        );
        s.response_body(b"ok", true);
    }
    s.finish();
    (s, action)
}

/// The access-log record of the last request (the log sink's JSON line).
fn last_record(host: &Host) -> Value {
    let line = host
        .logs()
        .iter()
        .rev()
        .find_map(|l| l.message.find('{').map(|i| l.message[i..].to_string()))
        .unwrap_or_default();
    serde_json::from_str(&line).unwrap_or(Value::Null)
}

/// A GET through the demo chain (shop domain: no rate limit applies):
/// 5 callbacks; request map (2); load balancer: pick replace (its table is
/// re-synced on the tick); router: cluster replace; response map (2),
/// upstream.address (2), clock, health write, report strip; access log: 7
/// more attributes (14; the cluster is the router's decision, a GET's
/// request.size is 0 without a read), clock, the log line, the queue.
/// Counters are flushed on the tick. Was ~94 with four proxy-wasm modules,
/// 37 with a table-version read per request.
const DEMO_GET_BUDGET: usize = 33;

#[test]
fn a_get_through_the_demo_chain_stays_within_budget() {
    let (_host, worker) = demo();
    // Warm-up: the first requests of a VM build the load balancer's table
    // and its per-endpoint metrics.
    for _ in 0..4 {
        get(&worker, "shop.example.com", &[]);
    }
    let (s, action) = get(&worker, "shop.example.com", &[]);
    assert_eq!(action, Action::Continue);
    let c = s.crossings();
    println!("{c}");
    assert!(c.total() <= DEMO_GET_BUDGET, "{c}");
}

#[test]
fn stages_see_each_other_and_the_log_has_their_decisions() {
    let (host, worker) = demo();
    let (s, _) = get(&worker, "shop.example.com", &[]);
    assert_eq!(
        s.request_header("x-switchyard-cluster").as_deref(),
        Some("shop")
    );
    let picked = s.request_header("x-switchyard-lb-host").unwrap_or_default();
    assert!(picked.starts_with("127.0.0.1:900"), "{picked}");
    let record = last_record(&host);
    assert_eq!(record["switchyard_route"], "shop", "{record}");
    let endpoint = record["switchyard_endpoint"].as_str().unwrap_or_default();
    assert!(
        picked.starts_with(endpoint) && !endpoint.is_empty(),
        "{record}"
    );
    let verdict = record["switchyard_ratelimit"].as_str().unwrap_or_default();
    assert!(verdict.is_empty() || verdict.starts_with("ok"), "{record}");
}

#[test]
fn forged_decision_headers_never_reach_the_record_or_the_backend() {
    let (host, worker) = demo();
    let forged = [
        ("x-switchyard-route", "forged"),
        ("x-switchyard-endpoint", "10.66.66.66:6666"),
        ("x-switchyard-ratelimit", "over_limit"),
        ("x-switchyard-cluster", "evil"),
        ("x-switchyard-lb-host", "10.66.66.66:6666"),
    ];
    let (s, _) = get(&worker, "shop.example.com", &forged);
    for name in [
        "x-switchyard-route",
        "x-switchyard-endpoint",
        "x-switchyard-ratelimit",
    ] {
        assert_eq!(s.request_header(name), None, "{name} reaches the backend");
    }
    assert_eq!(
        s.request_header("x-switchyard-cluster").as_deref(),
        Some("shop")
    );
    assert!(
        !s.request_header("x-switchyard-lb-host")
            .unwrap_or_default()
            .contains("10.66.66.66")
    );
    let record = last_record(&host);
    assert_eq!(record["switchyard_route"], "shop", "{record}");
    assert_ne!(
        record["switchyard_endpoint"], "10.66.66.66:6666",
        "{record}"
    );
    assert_ne!(record["switchyard_ratelimit"], "over_limit", "{record}");
}

#[test]
fn a_rejected_request_is_logged_as_over_limit() {
    let (host, worker) = demo();
    let mut last = None;
    for _ in 0..12 {
        last = Some(get(&worker, "api.example.com", &[]));
    }
    let (s, action) = last.unwrap_or_else(|| get(&worker, "api.example.com", &[]));
    assert_eq!(action, Action::Pause);
    assert_eq!(s.local_response().map(|r| r.status), Some(429));
    let record = last_record(&host);
    let verdict = record["switchyard_ratelimit"].as_str().unwrap_or_default();
    assert!(verdict.starts_with("over_limit"), "{record}");
}

#[test]
fn unknown_stage_and_malformed_chain_are_refused() {
    for (config, expect) in [
        (r#"{"stages": [{"nope": {}}]}"#, "unknown stage `nope`"),
        (r#"{"stages": []}"#, "stages: must list at least one stage"),
        (
            r#"{"stages": [{"access_log": {}}, {"rate_limit": {}}, {"access_log": {}}]}"#,
            "stages[2]: `access_log` already appears in stages[0]",
        ),
        (
            r#"{"stages": [{"rate_limit": {}, "access_log": {}}]}"#,
            "exactly one key",
        ),
        (
            r#"{"stages": [{"rate_limit": {"slots": "x"}}]}"#,
            "stages[0].rate_limit.slots",
        ),
    ] {
        let host = Host::new(switchyard::init).plugin_config(config).build();
        let worker = host.start_worker();
        assert!(!worker.configured(), "{config}");
        assert!(
            host.logs().iter().any(|l| l.message.contains(expect)),
            "{config}: {:?}",
            host.logs()
        );
    }
}

#[test]
fn a_request_answered_by_a_later_stage_has_no_endpoint() {
    // The load balancer picks before the rate limit rejects: the pick was
    // never used, so the 429's record names no endpoint (found in real
    // Envoy with the stages in this order).
    let host = Host::new(switchyard::init)
        .plugin_config(
            r#"{"stages": [
              {"load_balancer": {"endpoints": [{"address": "127.0.0.1:9001"}]}},
              {"rate_limit": {"rules": [{"name": "one", "limit": {"requests": 1, "per": "hour"}}]}},
              {"access_log": {"log": {"enabled": true}}}]}"#,
        )
        .build();
    let worker = host.start_worker();
    assert!(worker.configured(), "{:?}", host.logs());
    let (_, first) = get(&worker, "shop.example.com", &[]);
    assert_eq!(first, Action::Continue);
    assert_eq!(last_record(&host)["switchyard_endpoint"], "127.0.0.1:9001");
    let (s, second) = get(&worker, "shop.example.com", &[]);
    assert_eq!(second, Action::Pause);
    assert_eq!(s.local_response().map(|r| r.status), Some(429));
    let record = last_record(&host);
    assert_eq!(record["switchyard_endpoint"], Value::Null, "{record}");
    assert!(
        record["switchyard_ratelimit"]
            .as_str()
            .unwrap_or_default()
            .starts_with("over_limit"),
        "{record}"
    );
}

/// A load report that arrives after a later, faster request's report is
/// the newer one: the load balancer stamps reports with its tick clock
/// (or the request's clock, whichever is later), not with when the
/// request arrived. Before, in a chain whose rate limit had read the
/// clock as the slow request arrived, its report carried that older time,
/// and the weight job, having already used the fast request's report,
/// never used it.
#[test]
fn a_slow_requests_report_counts_though_a_later_request_reported_first() {
    let config = r#"{"stages": [
      {"rate_limit": {"rules": [{"name": "all", "key": [{"type": "client_address"}],
                                 "limit": {"requests": 1000, "per": "second", "burst": 1000}}]}},
      {"load_balancer": {"policy": "weighted_round_robin",
        "weighted_round_robin": {"blackout_period_ms": 0, "weight_update_period_ms": 100},
        "endpoints": [{"address": "127.0.0.1:9001", "name": "only"}]}}]}"#;
    let host = Host::new(switchyard::init).plugin_config(config).build();
    let w = host.start_worker();
    assert!(w.configured(), "{:?}", host.logs());
    let start = || {
        let s = w.http_stream();
        envoy_properties::set(&s);
        s.request_headers(
            &[(":authority", "a"), (":path", "/"), (":method", "GET")],
            true,
        );
        s.set_property(&["upstream", "address"], "127.0.0.1:9001");
        s
    };
    let answer = |s: Stream, utilization: &str| {
        let report = format!("TEXT application_utilization={utilization},rps_fractional=10");
        s.response_headers(
            &[(":status", "200"), ("endpoint-load-metrics", &report)],
            true,
        );
        s.finish();
    };
    let weight = || {
        host.metrics()
            .iter()
            .find(|(k, _)| k.ends_with("weight.only"))
            .map_or(0, |(_, v)| *v)
    };
    let step = |ms| {
        host.advance(std::time::Duration::from_millis(ms));
        w.tick();
    };
    step(20);
    let slow = start();
    step(500);
    answer(start(), "0.1");
    step(150);
    assert_eq!(weight(), 100_000, "the fast request's report: 10 / 0.1");
    answer(slow, "0.9");
    step(150);
    assert_eq!(
        weight(),
        11_111,
        "the slow request's later report: 10 / 0.9"
    );
}

/// `filter_state: {content: "decisions"}`: the access-log stage leaves each
/// decision as filter state for Envoy's own access log, builds no record
/// (no attribute read, no log line), and costs one write per decision.
#[test]
fn decisions_as_filter_state_build_no_record() {
    let config = DEMO.replace(
        r#"{"access_log": {"log": {"enabled": true},
                  "http": {"cluster": "collector", "flush_interval_ms": 250}}}"#,
        r#"{"access_log": {"log": {"enabled": false}, "filter_state": {"content": "decisions"}}}"#,
    );
    assert_ne!(config, DEMO, "the demo's access-log stage moved");
    let host = Host::new(switchyard::init)
        .plugin_config(config)
        .clusters(["collector"])
        .build();
    let worker = host.start_worker();
    assert!(worker.configured(), "{:?}", host.logs());
    for _ in 0..4 {
        get(&worker, "shop.example.com", &[]);
    }
    let logs_before = host.logs().len();
    let (s, action) = get(
        &worker,
        "shop.example.com",
        &[("x-switchyard-route", "forged")],
    );
    assert_eq!(action, Action::Continue);
    let text = |name: &str| {
        s.property(&[name])
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    };
    assert_eq!(text("switchyard.route").as_deref(), Some("shop"));
    let endpoint = text("switchyard.endpoint").unwrap_or_default();
    assert!(endpoint.starts_with("127.0.0.1:900"), "{endpoint}");
    assert!(
        text("switchyard.ratelimit").is_none(),
        "the shop domain has no rate limit"
    );
    assert!(text("switchyard").is_none(), "no record");
    assert!(
        !host.logs()[logs_before..]
            .iter()
            .any(|l| l.message.contains("request_id")),
        "no record in the log"
    );
    let c = s.crossings();
    let sets =
        c.0.iter()
            .filter(|x| format!("{x:?}").contains("proxy_set_property"))
            .count();
    assert_eq!(sets, 2, "{c}");
    assert!(c.total() <= DEMO_GET_BUDGET - 10, "{c}");
}
