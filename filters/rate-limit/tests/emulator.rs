//! The filter's real code through the proxy-wasm ABI, in the host emulator:
//! several workers share buckets, time refills them, the RLS callout path.

use std::time::Duration;
use switchyard_emulator::{Action, GrpcOutcome, Host, LocalResponse, Stream, Worker};
use switchyard_proto::Message;
use switchyard_proto::rls::{RateLimitRequest, RateLimitResponse, rate_limit_response};

fn host(config: &str) -> Host {
    Host::new(switchyard_rate_limit::init)
        .plugin_config(config.to_string())
        .build()
}

fn metric(host: &Host, name: &str) -> u64 {
    host.metric(&format!("switchyard.rate-limit.{name}"))
        .unwrap_or(0)
}

/// One request from `peer` (with extra headers); returns the stream and the
/// action the filter took on the request headers.
fn send(worker: &Worker, peer: &str, extra: &[(&str, &str)]) -> (Stream, Action) {
    let stream = worker.http_stream();
    stream.set_property(&["source", "address"], peer);
    let mut headers = vec![
        (":method", "GET"),
        (":path", "/api/items?x=1"),
        (":authority", "api.test"),
    ];
    headers.extend_from_slice(extra);
    let action = stream.request_headers(&headers, true);
    (stream, action)
}

/// A rejection's `retry-after`, `RateLimit-Policy` and `RateLimit`.
fn assert_rejection_fields(r: &LocalResponse, retry_after: &str, policy: &str, state: &str) {
    assert_eq!(r.header("retry-after").as_deref(), Some(retry_after));
    assert_eq!(r.header("ratelimit-policy").as_deref(), Some(policy));
    assert_eq!(r.header("ratelimit").as_deref(), Some(state));
}

fn allowed(worker: &Worker, peer: &str, extra: &[(&str, &str)]) -> bool {
    let (stream, action) = send(worker, peer, extra);
    match stream.local_response() {
        Some(r) => {
            assert_eq!(action, Action::Pause);
            assert_eq!(r.status, 429, "{r:?}");
            false
        }
        None => {
            assert_eq!(action, Action::Continue);
            true
        }
    }
}

const PER_CLIENT: &str = r#"{
  "rules": [{
    "name": "per-client",
    "key": [{"type": "client_address"}],
    "limit": {"requests": 10, "per": "second", "burst": 5}
  }]
}"#;

#[test]
fn burst_then_429_with_headers_and_json() {
    let host = host(PER_CLIENT);
    let w = host.start_worker();
    assert!(w.configured());
    for i in 0..5 {
        assert!(allowed(&w, "10.0.0.1:1000", &[]), "request {i}");
    }
    let (stream, action) = send(&w, "10.0.0.1:1000", &[]);
    assert_eq!(action, Action::Pause);
    let r = stream.expect_local_response(429);
    assert_rejection_fields(
        &r,
        "1",
        r#""per-client";q=10;w=1"#,
        r#""per-client";r=0;t=1"#,
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(r.details, "switchyard_rate_limited");
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["policy"], "per-client");
    // Another client has its own bucket.
    assert!(allowed(&w, "10.0.0.2:1000", &[]));
    assert_eq!(metric(&host, "allowed"), 6);
    assert_eq!(metric(&host, "limited"), 1);
}

#[test]
fn workers_share_one_bucket_and_time_refills_it() {
    let host = host(PER_CLIENT);
    let a = host.start_worker();
    let b = host.start_worker();
    let mut admitted = 0;
    for i in 0..20 {
        let w = if i % 2 == 0 { &a } else { &b };
        admitted += u32::from(allowed(w, "10.0.0.1:1", &[]));
    }
    assert_eq!(admitted, 5, "burst 5 across both workers");
    // 10/s: one request per 100 ms comes back.
    host.advance(Duration::from_millis(100));
    assert!(allowed(&b, "10.0.0.1:1", &[]));
    assert!(!allowed(&a, "10.0.0.1:1", &[]));
    // Idle long enough: the full burst again (state expires by itself).
    host.advance(Duration::from_secs(60));
    let again = (0..10).filter(|_| allowed(&a, "10.0.0.1:1", &[])).count();
    assert_eq!(again, 5);
}

/// The process's shared data after `old`, under a new configuration (a
/// config update: new VMs, the same shared data and clock).
fn updated(old: &Host, config: &str) -> Host {
    let new = host(config);
    new.inherit(old);
    new
}

#[test]
fn a_changed_limit_starts_full_and_an_unchanged_one_carries_over() {
    let rule = |n: u32| {
        format!(
            r#"{{"rules": [{{"name": "per-client", "key": [{{"type": "client_address"}}],
                "limit": {{"requests": {n}, "per": "hour", "burst": {n}}}}}]}}"#
        )
    };
    let v1 = host(&rule(5));
    let w = v1.start_worker();
    for _ in 0..5 {
        assert!(allowed(&w, "9.9.9.9:1", &[]));
    }
    assert!(!allowed(&w, "9.9.9.9:1", &[]));
    // The same limit after an update (another rule edited, say): the
    // client is still over it.
    let same = updated(&v1, &rule(5));
    assert!(!allowed(&same.start_worker(), "9.9.9.9:1", &[]));
    // The limit raised to 10 an hour during an incident: the client gets
    // the new limit at once, as with Envoy's local_ratelimit. On the old
    // keys its debt of an hour covered the new burst and 8 of 8 were 429.
    let raised = updated(&v1, &rule(10));
    let w = raised.start_worker();
    for _ in 0..10 {
        assert!(allowed(&w, "9.9.9.9:1", &[]));
    }
    assert!(!allowed(&w, "9.9.9.9:1", &[]));
}

#[test]
fn shadow_mode_lets_everything_through_and_counts() {
    let host = host(
        r#"{"rules": [{"name": "s", "mode": "shadow",
            "limit": {"requests": 1, "per": "minute", "burst": 2}}]}"#,
    );
    let w = host.start_worker();
    for _ in 0..10 {
        assert!(allowed(&w, "10.0.0.1:1", &[]));
    }
    assert_eq!(metric(&host, "allowed"), 10);
    assert_eq!(metric(&host, "shadow_limited"), 8);
    assert_eq!(metric(&host, "limited"), 0);
}

#[test]
fn the_client_is_envoys_source_address_whatever_xff_says() {
    let host = host(
        r#"{"rules": [{"name": "c", "key": [{"type": "client_address"}],
            "limit": {"requests": 1, "per": "minute", "burst": 3}}]}"#,
    );
    let w = host.start_worker();
    // Envoy determined 198.51.100.7 (from XFF under xff_num_trusted_hops,
    // so port 0); the forged entries vary and never give a fresh bucket.
    let admitted = (0..20)
        .filter(|i| {
            let xff = format!("203.0.113.{i}, 198.51.100.7");
            allowed(&w, "198.51.100.7:0", &[("x-forwarded-for", &xff)])
        })
        .count();
    assert_eq!(admitted, 3);
    // Another client behind the same proxy: its own bucket, even when it
    // writes the first client's address into XFF.
    assert!(allowed(
        &w,
        "198.51.100.8:0",
        &[("x-forwarded-for", "198.51.100.7")]
    ));
    // A filter-side hop count is refused: Envoy's decides.
    let refused = self::host(r#"{"trusted_hops": 1}"#);
    assert!(!refused.start_worker().configured());
    assert!(
        refused
            .logs()
            .iter()
            .any(|l| l.message.contains("trusted_hops: must be 0")),
        "{:?}",
        refused.logs()
    );
}

#[test]
fn key_space_is_bounded_and_collisions_share_a_bucket() {
    let host = host(
        r#"{"slots": 4, "rules": [{"name": "k", "key": [{"type": "header", "name": "x-key"}],
            "limit": {"requests": 1, "per": "hour", "burst": 1}}]}"#,
    );
    let w = host.start_worker();
    let admitted = (0..200)
        .filter(|i| allowed(&w, "10.0.0.1:1", &[("x-key", &format!("key-{i}"))]))
        .count();
    // 200 keys on 4 slots: at most one admission per slot within the hour,
    // never "everything through".
    assert!(admitted <= 4, "{admitted}");
    assert!(metric(&host, "slot_collisions") >= 190);
    // Shared data holds the 4 slot keys and nothing per key.
    let used = (0..4)
        .filter(|slot| host.shared_data(&format!("rl/{slot}")).is_some())
        .count();
    assert!(used >= 1);
    assert!(host.shared_data("rl/4").is_none());
}

#[test]
fn missing_header_shares_a_bucket_or_skips_the_rule() {
    let host = host(
        r#"{"rules": [
            {"name": "share", "key": [{"type": "header", "name": "x-key"}],
             "limit": {"requests": 1, "per": "hour", "burst": 2}},
            {"name": "skip", "key": [{"type": "header", "name": "x-other", "missing": "skip_rule"}],
             "limit": {"requests": 1, "per": "hour", "burst": 1}}]}"#,
    );
    let w = host.start_worker();
    let admitted = (0..5).filter(|_| allowed(&w, "10.0.0.1:1", &[])).count();
    assert_eq!(admitted, 2);
}

#[test]
fn strictest_rule_decides_and_match_conditions_apply() {
    let host = host(
        r#"{"rules": [
            {"name": "global", "limit": {"requests": 100, "per": "second"}},
            {"name": "posts", "match": {"methods": ["POST"]}, "limit": {"requests": 1, "per": "hour", "burst": 1}}]}"#,
    );
    let w = host.start_worker();
    let post = |w: &Worker| {
        let s = w.http_stream();
        s.request_headers(
            &[(":method", "POST"), (":path", "/"), (":authority", "a")],
            true,
        );
        s.local_response().is_none()
    };
    assert!(post(&w));
    assert!(!post(&w));
    // GETs only meet the global rule.
    assert!(allowed(&w, "10.0.0.1:1", &[]));
}

#[test]
fn headers_on_allowed_responses() {
    let host = host(
        r#"{"response": {"headers_on_allowed": true},
            "rules": [{"name": "r", "limit": {"requests": 60, "per": "minute", "burst": 10}}]}"#,
    );
    let w = host.start_worker();
    let (s, _) = send(&w, "10.0.0.1:1", &[]);
    s.response_headers(&[(":status", "200")], true);
    assert_eq!(
        s.response_header("ratelimit-policy").as_deref(),
        Some(r#""r";q=60;w=60"#)
    );
    assert_eq!(
        s.response_header("ratelimit").as_deref(),
        Some(r#""r";r=9;t=1"#)
    );
}

#[test]
fn bad_config_is_refused_and_names_the_field() {
    let host = host(r#"{"rules": [{"name": "x", "limit": {"requests": 0, "per": "second"}}]}"#);
    let w = host.start_worker();
    assert!(!w.configured());
    host.expect_log_contains("rules[0].limit.requests: must be >= 1");
}

const GLOBAL: &str = r#"{
  "global": {"cluster": "rls", "domain": "edge", "timeout_ms": 250, "failure_mode": "FAILURE"},
  "rules": [{"name": "g", "scope": "global",
             "key": [{"type": "client_address"}, {"type": "constant", "value": "api"}]}]
}"#;

fn global_host(failure_mode: &str) -> Host {
    host(&GLOBAL.replace("FAILURE", failure_mode))
}

fn answer(code: i32, remaining: u32) -> Vec<u8> {
    use rate_limit_response::{DescriptorStatus, RateLimit};
    RateLimitResponse {
        overall_code: code,
        statuses: vec![DescriptorStatus {
            code,
            current_limit: Some(RateLimit {
                name: "edge-api".into(),
                requests_per_unit: 20,
                unit: rate_limit_response::rate_limit::Unit::Minute as i32,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(switchyard_proto::prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
        }],
        raw_body: Vec::new(),
    }
    .encode_to_vec()
}

#[test]
fn global_mode_asks_the_service_and_follows_its_answer() {
    let host = global_host("open");
    let w = host.start_worker();
    let (s, action) = send(&w, "10.0.0.3:9", &[]);
    assert_eq!(action, Action::Pause);
    let calls = host.grpc_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.upstream, "rls");
    assert_eq!(call.service, "envoy.service.ratelimit.v3.RateLimitService");
    assert_eq!(call.method, "ShouldRateLimit");
    assert_eq!(call.timeout, Duration::from_millis(250));
    let req = RateLimitRequest::decode(call.message.as_slice()).unwrap();
    assert_eq!(req.domain, "edge");
    let entries: Vec<(String, String)> = req.descriptors[0]
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    assert_eq!(
        entries,
        [
            ("remote_address".to_string(), "10.0.0.3".to_string()),
            ("generic_key".to_string(), "api".to_string())
        ]
    );
    host.respond_grpc_call(call.token, GrpcOutcome::Message(answer(1, 19)));
    assert!(s.request_resumed());
    assert!(s.local_response().is_none());

    let (s, _) = send(&w, "10.0.0.3:9", &[]);
    let token = host.grpc_calls()[0].token;
    host.respond_grpc_call(token, GrpcOutcome::Message(answer(2, 0)));
    let r = s.expect_local_response(429);
    assert_eq!(r.header("retry-after").as_deref(), Some("30"));
    assert_eq!(
        r.header("ratelimit-policy").as_deref(),
        Some(r#""edge-api";q=20;w=60"#)
    );
    assert_eq!(metric(&host, "allowed"), 1);
    assert_eq!(metric(&host, "limited"), 1);
}

/// A request from 10.0.0.3 whose RLS call fails (gRPC UNAVAILABLE).
fn send_unavailable(host: &Host, w: &Worker) -> Stream {
    let (s, _) = send(w, "10.0.0.3:9", &[]);
    let token = host.grpc_calls()[0].token;
    host.respond_grpc_call(
        token,
        GrpcOutcome::Status {
            code: 14,
            message: "unavailable".into(),
        },
    );
    s
}

#[test]
fn service_failure_follows_the_failure_mode() {
    for (mode, expect_allowed) in [("open", true), ("closed", false)] {
        let host = global_host(mode);
        let w = host.start_worker();
        let s = send_unavailable(&host, &w);
        assert_eq!(metric(&host, "rls_errors"), 1, "{mode}");
        if expect_allowed {
            assert!(s.request_resumed(), "{mode}");
            assert_eq!(metric(&host, "allowed"), 1);
        } else {
            let r = s.expect_local_response(500);
            assert_eq!(r.details, "switchyard_rate_limit_service_error");
            assert_eq!(metric(&host, "limited"), 1);
        }
    }
}

#[test]
fn a_shadow_rule_over_its_limit_counts_when_the_service_fails_closed() {
    let config = GLOBAL.replace("FAILURE", "closed").replace(
        r#""rules": ["#,
        r#""rules": [{"name": "s", "mode": "shadow",
             "limit": {"requests": 1, "per": "minute", "burst": 1}},"#,
    );
    let host = host(&config);
    let w = host.start_worker();
    for i in 0..3 {
        let s = send_unavailable(&host, &w);
        s.expect_local_response(500);
        // The first request is within the shadow rule's burst; on the old
        // code the later ones were not counted.
        assert_eq!(metric(&host, "shadow_limited"), i, "request {i}");
    }
}

#[test]
fn unknown_rls_cluster_fails_at_dispatch_per_failure_mode() {
    for (mode, expect) in [("open", Action::Continue), ("closed", Action::Pause)] {
        let host = Host::new(switchyard_rate_limit::init)
            .plugin_config(GLOBAL.replace("FAILURE", mode))
            .clusters(["other"])
            .build();
        let w = host.start_worker();
        let (s, action) = send(&w, "10.0.0.3:9", &[]);
        assert_eq!(action, expect, "{mode}");
        assert_eq!(metric(&host, "rls_errors"), 1);
        assert_eq!(s.local_response().is_some(), mode == "closed");
    }
}

#[test]
fn over_limit_answers_are_remembered_until_the_services_reset() {
    let host = global_host("open");
    let a = host.start_worker();
    let b = host.start_worker();
    let (s, _) = send(&a, "10.0.0.3:9", &[]);
    let token = host.grpc_calls()[0].token;
    host.respond_grpc_call(token, GrpcOutcome::Message(answer(2, 0)));
    s.expect_local_response(429);
    // The other worker knows too (shared data): no call, rejected at once.
    let (s, action) = send(&b, "10.0.0.3:9", &[]);
    assert_eq!(action, Action::Pause);
    assert!(host.grpc_calls().is_empty());
    let r = s.expect_local_response(429);
    // With the service's numbers, as its own rejection had them (the old
    // pre-check answered with `retry-after` alone).
    assert_rejection_fields(
        &r,
        "30",
        r#""edge-api";q=20;w=60"#,
        r#""edge-api";r=0;t=30"#,
    );
    assert_eq!(metric(&host, "rls_precheck_limited"), 1);
    // Another client is not affected.
    let (_, action) = send(&b, "10.0.0.4:9", &[]);
    assert_eq!(action, Action::Pause);
    assert_eq!(host.grpc_calls().len(), 1);
    // After the service's reset time the service is asked again.
    host.advance(Duration::from_secs(31));
    send(&a, "10.0.0.3:9", &[]);
    assert_eq!(host.grpc_calls().len(), 2);
}

#[test]
fn precheck_can_be_turned_off() {
    let host = host(&GLOBAL.replace("FAILURE", "open").replace(
        r#""timeout_ms": 250"#,
        r#""timeout_ms": 250, "precheck_slots": 0"#,
    ));
    let w = host.start_worker();
    let (_, _) = send(&w, "10.0.0.3:9", &[]);
    let token = host.grpc_calls()[0].token;
    host.respond_grpc_call(token, GrpcOutcome::Message(answer(2, 0)));
    send(&w, "10.0.0.3:9", &[]);
    assert_eq!(host.grpc_calls().len(), 1);
    assert_eq!(metric(&host, "rls_precheck_limited"), 0);
}

#[test]
fn an_rls_outage_logs_one_line_per_cause_per_period_naming_the_cluster() {
    let host = Host::new(switchyard_rate_limit::init)
        .plugin_config(GLOBAL.replace("FAILURE", "open"))
        .clusters(["other"])
        .build();
    let w = host.start_worker();
    for i in 0..50 {
        let (_, action) = send(&w, &format!("10.0.0.{}:9", i % 200), &[]);
        assert_eq!(action, Action::Continue);
    }
    assert_eq!(metric(&host, "rls_errors"), 50);
    let lines = host.logs_containing("rate limit service");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].message.contains("cluster \"rls\""), "{lines:?}");
    assert!(
        lines[0]
            .message
            .contains("not defined in Envoy or has no healthy hosts"),
        "{lines:?}"
    );
    // After the period, one more line says how many were held back.
    host.advance(std::time::Duration::from_secs(11));
    send(&w, "10.0.0.1:9", &[]);
    let lines = host.logs_containing("rate limit service");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].message.contains("49 more like it"), "{lines:?}");
}

#[test]
fn every_bucket_slot_exists_before_the_first_request() {
    // Issue 12, item 9: Envoy writes an absent shared-data key whatever
    // the CAS token, so two workers creating one fresh slot at once both
    // admitted. Slots are created at configure time instead, once.
    let host = self::host(
        r#"{"slots": 64, "shared_prefix": "fresh", "rules": [{"name": "k",
            "key": [{"type": "header", "name": "x-key"}],
            "limit": {"requests": 1, "per": "minute", "burst": 1}}]}"#,
    );
    let a = host.start_worker();
    assert!(a.configured());
    let tokens: Vec<u32> = (0..64)
        .map(|i| {
            host.shared_data(&format!("fresh/{i}"))
                .unwrap_or_else(|| panic!("slot {i} missing"))
                .1
        })
        .collect();
    assert!(host.shared_data("fresh/ready").is_some());
    // A second worker finds them and writes nothing.
    let b = host.start_worker();
    assert!(b.configured());
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(host.shared_data(&format!("fresh/{i}")).unwrap().1, *t);
    }
    // Fresh keys from both workers: each admitted exactly once.
    let mut admitted = 0;
    for k in 0..40 {
        let key = format!("key-{k}");
        admitted += u32::from(allowed(&a, "10.0.0.1:1", &[("x-key", &key)]));
        admitted += u32::from(allowed(&b, "10.0.0.1:1", &[("x-key", &key)]));
    }
    // 40 keys on 64 slots: collisions share a bucket, so at most 40.
    assert!(admitted <= 40, "{admitted}");
}
