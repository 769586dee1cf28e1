//! The filter's real code through the proxy-wasm ABI, in the host emulator:
//! several workers sharing one process's shared data, periodic jobs, callouts.

use std::time::Duration;
use switchyard_emulator::{CallOutcome, Crossing, Host, Stream, Worker};

const INIT: extern "C" fn() = switchyard_load_balancer::init;
const A: &str = "10.0.0.1:80";
const B: &str = "10.0.0.2:80";
const C: &str = "10.0.0.3:80";

fn metric(host: &Host, name: &str) -> u64 {
    host.metric(&format!("switchyard.load-balancer.{name}"))
        .unwrap_or(0)
}

/// A request on `worker`; returns the stream and the pick header.
fn request(worker: &Worker, extra: &[(&str, &str)]) -> (Stream, Option<String>) {
    let s = worker.http_stream();
    let mut headers = vec![(":path", "/"), (":method", "GET"), (":authority", "svc")];
    headers.extend_from_slice(extra);
    s.request_headers(&headers, true);
    let pick = s.request_header("x-switchyard-lb-host");
    (s, pick)
}

/// Completes `s` as answered by `upstream` with `status` and `report`.
fn respond(s: &Stream, upstream: &str, status: &str, report: Option<&str>) {
    s.set_property(&["upstream", "address"], upstream);
    let mut headers = vec![(":status", status)];
    if let Some(r) = report {
        headers.push(("endpoint-load-metrics", r));
    }
    s.response_headers(&headers, true);
    s.finish();
}

fn first(pick: &Option<String>) -> String {
    pick.as_deref()
        .unwrap_or("")
        .split(',')
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn picks_by_configured_weight_and_removes_forged_headers() {
    let host = Host::new(INIT)
        .plugin_config(format!(
            r#"{{"policy":"round_robin","endpoints":[{{"address":"{A}","weight":1}},{{"address":"{B}","weight":3}}]}}"#
        ))
        .build();
    let w = host.start_worker();
    assert!(w.configured());
    let mut counts = [0; 2];
    for _ in 0..40 {
        let (s, pick) = request(
            &w,
            &[
                ("x-switchyard-lb-host", "6.6.6.6:1"),
                ("x-envoy-original-dst-host", "6.6.6.6:1"),
            ],
        );
        let pick = pick.expect("a pick");
        let hosts: Vec<&str> = pick.split(',').collect();
        // The pick, one distinct retry host, then the two again: one entry
        // per attempt for up to 10 retries, never another endpoint.
        assert_eq!(hosts.len(), 11, "pick, retry host, repeated: {pick}");
        assert_ne!(hosts[0], hosts[1]);
        assert!(hosts.chunks(2).all(|c| c[0] == hosts[0]), "{pick}");
        assert!(!pick.contains("6.6.6.6"));
        assert_eq!(s.request_header("x-envoy-original-dst-host"), None);
        counts[usize::from(hosts[0] == B)] += 1;
        respond(&s, hosts[0], "200", None);
    }
    assert_eq!(counts, [10, 30]);
    assert_eq!(metric(&host, "forged_headers"), 40);
    assert_eq!(metric(&host, "picks.10_0_0_2_80"), 30);
}

#[test]
fn reports_on_one_worker_set_the_weights_on_another() {
    let host = Host::new(INIT)
        .plugin_config(format!(
            r#"{{"endpoints":[{{"address":"{A}","name":"a"}},{{"address":"{B}","name":"b"}}],
                "weighted_round_robin":{{"blackout_period_ms":0,"weight_update_period_ms":100}}}}"#
        ))
        .build();
    let w1 = host.start_worker();
    let w2 = host.start_worker();
    for (up, util) in [(A, "0.8"), (B, "0.2")] {
        let (s, _) = request(&w1, &[]);
        respond(
            &s,
            up,
            "200",
            Some(&format!(
                "TEXT application_utilization={util},rps_fractional=100"
            )),
        );
        assert_eq!(s.response_header("endpoint-load-metrics"), None, "stripped");
    }
    host.advance(Duration::from_millis(150));
    w1.tick(); // runs the weight job: weights 125 : 500
    assert_eq!(metric(&host, "weight.a"), 125_000);
    assert_eq!(metric(&host, "weight.b"), 500_000);
    // Other workers follow the published table on their next tick.
    w2.tick();
    let mut b = 0;
    for _ in 0..500 {
        let (s, pick) = request(&w2, &[]);
        b += usize::from(first(&pick) == B);
        s.finish();
    }
    assert_eq!(b, 400, "1:4 on the other worker");
    assert_eq!(metric(&host, "reports_accepted"), 2);
}

#[test]
fn an_idle_weight_job_writes_nothing_and_workers_fetch_nothing() {
    let host = two_endpoints_quick_weights();
    let w = host.start_worker();
    let (s, _) = request(&w, &[]);
    respond(
        &s,
        A,
        "200",
        Some("TEXT application_utilization=0.5,rps_fractional=100"),
    );
    host.advance(Duration::from_millis(150));
    w.tick(); // the report moves a weight: a new table
    let keys = host.shared_keys_ending("/table");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (_, cas) = host.shared_data(&keys[0]).expect("table written");
    let runs = metric(&host, "weight_updates");
    // No traffic: the job runs, and the table (and its version) stay.
    for _ in 0..5 {
        host.advance(Duration::from_millis(150));
        w.tick();
    }
    assert!(metric(&host, "weight_updates") >= runs + 5);
    assert_eq!(host.shared_data(&keys[0]).map(|(_, c)| c), Some(cas));
}

#[test]
fn an_idle_tick_reads_the_job_lease_once_per_interval_not_per_tick() {
    let host = Host::new(INIT)
        .plugin_config(format!(
            r#"{{"endpoints":[{{"address":"{A}","name":"a"}}],
                "weighted_round_robin":{{"weight_update_period_ms":1000}}}}"#
        ))
        .build();
    let w = host.start_worker();
    w.tick();
    // 40 ticks of 20 ms: 0.8 s, within one weight-job interval. Each
    // reads the table version (to follow it); none reads the job's lease.
    let before = host.shared_reads();
    for _ in 0..40 {
        host.advance(Duration::from_millis(20));
        w.tick();
    }
    assert_eq!(host.shared_reads() - before, 40);
}

#[test]
fn consecutive_failures_on_two_workers_eject() {
    let host = Host::new(INIT)
        .plugin_config(format!(
            r#"{{"policy":"round_robin","endpoints":[{{"address":"{A}"}},{{"address":"{B}"}},{{"address":"{C}"}}],
                "passive_health":{{"consecutive_failures":3,"base_ejection_ms":1000}}}}"#
        ))
        .build();
    let w1 = host.start_worker();
    let w2 = host.start_worker();
    for w in [&w1, &w2, &w1] {
        let (s, _) = request(w, &[]);
        respond(&s, B, "503", None);
    }
    assert_eq!(metric(&host, "ejections"), 1);
    // w1 ejected, so it follows at once; w2 on its next tick (≤ 20 ms).
    w2.tick();
    for w in [&w1, &w2] {
        for _ in 0..30 {
            let (s, pick) = request(w, &[]);
            assert_ne!(first(&pick), B);
            s.finish();
        }
    }
    // The ejection ends with the next weight update after its time.
    host.advance(Duration::from_millis(1200));
    w1.tick();
    w2.tick();
    let picks: Vec<String> = (0..6).map(|_| first(&request(&w2, &[]).1)).collect();
    assert!(picks.iter().any(|p| p == B), "{picks:?}");
}

#[test]
fn a_configuration_update_keeps_an_endpoints_ejection() {
    let config = |eps: &[&str]| {
        let eps: Vec<String> = eps
            .iter()
            .map(|a| format!(r#"{{"address":"{a}"}}"#))
            .collect();
        format!(
            r#"{{"policy":"round_robin","endpoints":[{}],
                "passive_health":{{"consecutive_failures":3,"base_ejection_ms":60000}}}}"#,
            eps.join(",")
        )
    };
    let v1 = Host::new(INIT).plugin_config(config(&[A, B])).build();
    let w = v1.start_worker();
    for _ in 0..3 {
        let (s, _) = request(&w, &[]);
        respond(&s, B, "503", None);
    }
    assert_eq!(metric(&v1, "ejections"), 1);
    // An update adds C: new VMs, the process's shared data and clock.
    let v2 = Host::new(INIT).plugin_config(config(&[A, B, C])).build();
    v2.inherit(&v1);
    let w = v2.start_worker();
    w.tick();
    let picks: Vec<String> = (0..30).map(|_| first(&request(&w, &[]).1)).collect();
    // B stays ejected for its 60 s; on the old per-configuration table it
    // took a third of the picks again at once.
    assert!(!picks.iter().any(|p| p == B), "{picks:?}");
    assert!(picks.iter().any(|p| p == C), "{picks:?}");
}

// The two tests below list A alone: every pick is A, so every answer is
// A's own (an answer from A to a pick of B would count against B, the
// earlier host; VMs start their weighted order at random points).
#[test]
fn a_success_in_between_resets_the_count() {
    let host = Host::new(INIT)
        .plugin_config(format!(r#"{{"endpoints":[{{"address":"{A}"}}]}}"#))
        .build();
    let w = host.start_worker();
    for status in ["503", "503", "200", "503", "503"] {
        let (s, _) = request(&w, &[]);
        respond(&s, A, status, None);
    }
    assert_eq!(metric(&host, "ejections"), 0);
}

/// A success on one worker resets the count that another worker's failures
/// built, at once: "in a row" is across workers, as Envoy's outlier
/// detection counts it. (Deferring the reset to the tick let a 2-in-3
/// failing backend be ejected in real Envoy: successes on one worker, a
/// streak on the other.)
#[test]
fn a_success_on_another_worker_resets_the_count() {
    let host = Host::new(INIT)
        .plugin_config(format!(
            r#"{{"endpoints":[{{"address":"{A}"}}],
                "passive_health":{{"consecutive_failures":3}}}}"#
        ))
        .build();
    let (w1, w2) = (host.start_worker(), host.start_worker());
    for _ in 0..2 {
        let (s, _) = request(&w1, &[]);
        respond(&s, A, "503", None);
    }
    let (s, _) = request(&w2, &[]);
    respond(&s, A, "200", None);
    let (s, _) = request(&w1, &[]);
    respond(&s, A, "503", None);
    assert_eq!(metric(&host, "ejections"), 0);
    // Two more failures make three in a row since the reset.
    for _ in 0..2 {
        let (s, _) = request(&w1, &[]);
        respond(&s, A, "503", None);
    }
    assert_eq!(metric(&host, "ejections"), 1);
}

#[test]
fn retry_to_a_later_host_counts_as_failure_of_the_earlier_ones() {
    let host = Host::new(INIT)
        .plugin_config(format!(
            r#"{{"policy":"round_robin","endpoints":[{{"address":"{A}"}},{{"address":"{B}"}},{{"address":"{C}"}}]}}"#
        ))
        .build();
    let w = host.start_worker();
    // A is down: whenever it comes first, Envoy moves on to the next host.
    for _ in 0..9 {
        let (s, pick) = request(&w, &[]);
        let pick = pick.unwrap();
        let served = pick.split(',').find(|h| *h != A).unwrap();
        respond(&s, served, "200", None);
    }
    assert_eq!(metric(&host, "ejections"), 1);
    for _ in 0..9 {
        let (s, pick) = request(&w, &[]);
        assert_ne!(first(&pick), A);
        s.finish();
    }
}

/// Endpoints from discovery on cluster `disc` every second.
fn discovery_host() -> Host {
    Host::new(INIT)
        .plugin_config(
            r#"{"discovery":{"cluster":"disc","path":"/eps","interval_ms":1000},
                "weighted_round_robin":{"weight_update_period_ms":1000}}"#,
        )
        .clusters(["disc"])
        .build()
}

#[test]
fn discovery_by_the_leader_and_garbage_keeps_the_last_set() {
    let host = discovery_host();
    let w1 = host.start_worker();
    let w2 = host.start_worker();
    // Nothing known yet: no pick, the header stays absent (fallback routing).
    let (s, pick) = request(&w2, &[("x-switchyard-lb-host", "6.6.6.6:1")]);
    assert_eq!(pick, None);
    s.finish();
    assert_eq!(metric(&host, "no_endpoint"), 1);

    w1.tick();
    let call = host.expect_http_call("disc");
    assert!(
        call.headers
            .contains(&(":path".to_string(), "/eps".to_string()))
    );
    let body = format!(
        r#"{{"endpoints":[{{"address":"{A}","name":"a"}},{{"address":"{B}","name":"b","state":"draining"}}]}}"#
    );
    w1.respond_http_call(call.token, CallOutcome::status(200, body));
    assert_eq!(metric(&host, "discovery_ok"), 1);
    w2.tick();
    for _ in 0..10 {
        let (s, pick) = request(&w2, &[]);
        assert_eq!(first(&pick), A, "draining b gets nothing");
        s.finish();
    }

    host.advance(Duration::from_millis(1100));
    w1.tick();
    let call = host.expect_http_call("disc");
    w1.respond_http_call(call.token, CallOutcome::status(200, "{garbage"));
    host.advance(Duration::from_millis(1100));
    w1.tick();
    let call = host.expect_http_call("disc");
    w1.respond_http_call(call.token, CallOutcome::status(503, "down"));
    assert_eq!(metric(&host, "discovery_failed"), 2);
    let (s, pick) = request(&w2, &[]);
    assert_eq!(first(&pick), A, "last good set kept");
    s.finish();
}

/// Picks of `n` requests on `w`, each answered by its pick; `fails`
/// answers 503 every other time.
fn shares(w: &Worker, n: usize, fails: Option<&str>) -> std::collections::BTreeMap<String, usize> {
    let mut got = std::collections::BTreeMap::new();
    let mut toggle = false;
    for _ in 0..n {
        let (s, pick) = request(w, &[]);
        let to = first(&pick);
        let status = if Some(to.as_str()) == fails {
            toggle = !toggle;
            if toggle { "503" } else { "200" }
        } else {
            "200"
        };
        respond(&s, &to, status, None);
        *got.entry(to).or_insert(0) += 1;
    }
    got
}

/// Answers `w`'s next discovery poll (a second later) with `body`.
fn answer_discovery(host: &Host, w: &Worker, body: String) {
    host.advance(Duration::from_millis(1100));
    w.tick();
    let call = host.expect_http_call("disc");
    w.respond_http_call(call.token, CallOutcome::status(200, body));
}

/// A discovery answer listing `(address, name)` pairs.
fn endpoint_set(eps: &[(&str, &str)]) -> String {
    let eps: Vec<String> = eps
        .iter()
        .map(|(a, n)| format!(r#"{{"address":"{a}","name":"{n}"}}"#))
        .collect();
    format!(r#"{{"endpoints":[{}]}}"#, eps.join(","))
}

#[test]
fn an_endpoint_in_a_removed_ones_slot_inherits_nothing() {
    let host = discovery_host();
    let w = host.start_worker();
    const D: &str = "10.0.0.4:80";
    answer_discovery(&host, &w, endpoint_set(&[(A, "a"), (B, "b"), (C, "c")]));
    w.tick();
    // C fails every other request: never 3 in a row, so never ejected, but
    // observed failures penalise its share.
    shares(&w, 300, Some(C));
    // Penalties are worked out when the picker is rebuilt, at most twice
    // per observed window.
    host.advance(Duration::from_millis(5500));
    w.tick();
    shares(&w, 10, Some(C));
    let before = shares(&w, 300, Some(C));
    let c = before.get(C).copied().unwrap_or(0);
    assert!(c < 80, "C penalised: {before:?}");
    // C goes, D comes and takes C's slot: D starts with a clean record.
    answer_discovery(&host, &w, endpoint_set(&[(A, "a"), (B, "b"), (D, "d")]));
    w.tick();
    let after = shares(&w, 300, None);
    let d = after.get(D).copied().unwrap_or(0);
    assert!((90..=110).contains(&d), "D gets a third at once: {after:?}");
}

#[test]
fn an_unchanged_discovery_answer_writes_nothing() {
    let host = discovery_host();
    let w = host.start_worker();
    let answer = |body: String| answer_discovery(&host, &w, body);
    let set = endpoint_set;
    answer(set(&[(A, "a"), (B, "b")]));
    let key = host.shared_keys_ending("/table");
    assert_eq!(key.len(), 1, "{key:?}");
    let cas = || host.shared_data(&key[0]).map(|(_, c)| c);
    let written = cas();
    // The same set again: the table stays as it is.
    answer(set(&[(A, "a"), (B, "b")]));
    assert_eq!(cas(), written);
    assert_eq!(metric(&host, "discovery_ok"), 2);
    // A changed set is written.
    answer(set(&[(A, "a")]));
    assert_ne!(cas(), written);
    let (s, pick) = request(&w, &[]);
    assert_eq!(first(&pick), A);
    s.finish();
}

#[test]
fn malformed_reports_are_counted_by_reason() {
    let host = Host::new(INIT)
        .plugin_config(format!(r#"{{"endpoints":[{{"address":"{A}"}}]}}"#))
        .build();
    let w = host.start_worker();
    let big = format!("TEXT cpu_utilization={}", "1".repeat(10_000));
    for r in [
        "TEXT cpu_utilization=NaN",
        "TEXT eps=-1",
        "BIN !!!",
        big.as_str(),
        "JSON {\"cpu\": 1}",
        "TEXT cpu_utilization=0.5,cpu_utilization=0.5",
    ] {
        let (s, _) = request(&w, &[]);
        respond(&s, A, "200", Some(r));
    }
    for reason in [
        "nan",
        "negative",
        "bad_base64",
        "oversized",
        "unknown_key",
        "duplicate",
    ] {
        assert_eq!(
            metric(&host, &format!("reports_rejected.{reason}")),
            1,
            "{reason}"
        );
    }
    assert_eq!(metric(&host, "reports_rejected"), 6);
}

#[test]
fn sticky_on_a_cookie() {
    let host = Host::new(INIT)
        .plugin_config(format!(
            r#"{{"policy":"consistent_hash","hash":{{"cookie":"session","table_size":1009}},
                "endpoints":[{{"address":"{A}"}},{{"address":"{B}"}},{{"address":"{C}"}}]}}"#
        ))
        .build();
    let w1 = host.start_worker();
    let w2 = host.start_worker();
    let mut seen = std::collections::BTreeSet::new();
    for k in 0..30 {
        let cookie = format!("lang=en; session=s{k}");
        let one = first(&request(&w1, &[("cookie", cookie.as_str())]).1);
        let two = first(&request(&w2, &[("cookie", cookie.as_str())]).1);
        assert_eq!(one, two, "same key, same backend on every worker");
        seen.insert(one);
    }
    assert_eq!(seen.len(), 3);
}

#[test]
fn bad_config_is_refused_and_names_the_field() {
    let host = Host::new(INIT)
        .plugin_config(r#"{"endpoints":[{"address":"nope"}]}"#)
        .build();
    let w = host.start_worker();
    assert!(!w.configured());
    host.expect_log_contains("endpoints[0].address: must be ip:port");
}

/// A serialized ORCA report in base64, as gRPC servers send it.
fn bin_report(application_utilization: f64) -> String {
    use base64::Engine as _;
    use prost::Message as _;
    let r = switchyard_proto::orca::OrcaLoadReport {
        application_utilization,
        rps_fractional: 100.0,
        ..Default::default()
    };
    base64::engine::general_purpose::STANDARD.encode(r.encode_to_vec())
}

/// A gRPC answer from `upstream`: headers without a status, then trailers.
fn grpc_respond(s: &Stream, upstream: &str, trailers: &[(&str, &str)]) {
    s.set_property(&["upstream", "address"], upstream);
    s.response_headers(
        &[(":status", "200"), ("content-type", "application/grpc")],
        false,
    );
    s.response_body(b"\0\0\0\0\0", false);
    s.response_trailers(trailers);
    s.finish();
}

#[test]
fn reports_in_trailers_are_learned_and_stripped() {
    let host = Host::new(INIT)
        .plugin_config(format!(
            r#"{{"endpoints":[{{"address":"{A}","name":"a"}},{{"address":"{B}","name":"b"}},{{"address":"{C}","name":"c"}}],
                "weighted_round_robin":{{"blackout_period_ms":0,"weight_update_period_ms":100}}}}"#
        ))
        .build();
    let w = host.start_worker();
    let text = "TEXT application_utilization=0.8,rps_fractional=100".to_string();
    let prefixed = format!("BIN {}", bin_report(0.2));
    let bare = bin_report(0.4);
    for (up, name, value) in [
        (A, "endpoint-load-metrics", &text),
        (B, "endpoint-load-metrics", &prefixed),
        (C, "endpoint-load-metrics-bin", &bare),
    ] {
        let (s, _) = request(&w, &[]);
        grpc_respond(&s, up, &[("grpc-status", "0"), (name, value.as_str())]);
        let trailers = s.response_trailers_now();
        assert!(
            trailers
                .iter()
                .all(|(k, _)| !k.starts_with("endpoint-load-metrics")),
            "stripped: {trailers:?}"
        );
        assert!(trailers.iter().any(|(k, _)| k == "grpc-status"), "kept");
    }
    assert_eq!(metric(&host, "reports_accepted"), 3);
    assert_eq!(metric(&host, "reports_rejected"), 0);
    host.advance(Duration::from_millis(150));
    w.tick();
    // qps / utilization: 100/0.8 : 100/0.2 : 100/0.4 = 125 : 500 : 250.
    assert_eq!(metric(&host, "weight.a"), 125_000);
    assert_eq!(metric(&host, "weight.b"), 500_000);
    assert_eq!(metric(&host, "weight.c"), 250_000);
}

#[test]
fn a_report_in_the_headers_wins_over_the_trailers_one() {
    let host = Host::new(INIT)
        .plugin_config(format!(
            r#"{{"endpoints":[{{"address":"{A}","name":"a"}},{{"address":"{B}","name":"b"}}],
                "weighted_round_robin":{{"blackout_period_ms":0,"weight_update_period_ms":100}}}}"#
        ))
        .build();
    let w = host.start_worker();
    for (up, util) in [(A, "0.8"), (B, "0.2")] {
        let (s, _) = request(&w, &[]);
        s.set_property(&["upstream", "address"], up);
        let in_headers = format!("TEXT application_utilization={util},rps_fractional=100");
        s.response_headers(
            &[
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("endpoint-load-metrics", in_headers.as_str()),
            ],
            false,
        );
        s.response_trailers(&[
            ("grpc-status", "0"),
            (
                "endpoint-load-metrics",
                "TEXT application_utilization=0.01,rps_fractional=1",
            ),
        ]);
        assert_eq!(s.response_header("endpoint-load-metrics"), None);
        assert!(
            s.response_trailers_now()
                .iter()
                .all(|(k, _)| k == "grpc-status")
        );
        s.finish();
    }
    assert_eq!(metric(&host, "reports_accepted"), 2, "one per response");
    host.advance(Duration::from_millis(150));
    w.tick();
    assert_eq!(metric(&host, "weight.a"), 125_000);
    assert_eq!(metric(&host, "weight.b"), 500_000);
}

#[test]
fn duplicated_report_headers_are_rejected_not_first_wins() {
    let host = Host::new(INIT)
        .plugin_config(format!(
            r#"{{"endpoints":[{{"address":"{A}","name":"a"}}],
                "weighted_round_robin":{{"blackout_period_ms":0,"weight_update_period_ms":100}}}}"#
        ))
        .build();
    let w = host.start_worker();
    let low = "TEXT application_utilization=0.1,rps_fractional=100";
    let high = "TEXT application_utilization=0.9,rps_fractional=100";
    let conflicting_bin = bin_report(0.5);
    let cases: [&[(&str, &str)]; 3] = [
        // Two lines of the same header.
        &[
            ("endpoint-load-metrics", low),
            ("endpoint-load-metrics", high),
        ],
        // Both forms, saying different things.
        &[
            ("endpoint-load-metrics", low),
            ("endpoint-load-metrics-bin", conflicting_bin.as_str()),
        ],
        // Even equal copies: one report per response.
        &[
            ("endpoint-load-metrics", low),
            ("endpoint-load-metrics", low),
        ],
    ];
    for reports in cases {
        let (s, _) = request(&w, &[]);
        s.set_property(&["upstream", "address"], A);
        let mut headers = vec![(":status", "200")];
        headers.extend_from_slice(reports);
        s.response_headers(&headers, true);
        let left = s.response_headers_now();
        assert!(
            left.iter()
                .all(|(k, _)| !k.starts_with("endpoint-load-metrics")),
            "stripped: {left:?}"
        );
        s.finish();
    }
    // In trailers too.
    let (s, _) = request(&w, &[]);
    grpc_respond(
        &s,
        A,
        &[
            ("grpc-status", "0"),
            ("endpoint-load-metrics", high),
            ("endpoint-load-metrics", low),
        ],
    );
    assert_eq!(metric(&host, "reports_rejected.duplicate_header"), 4);
    assert_eq!(metric(&host, "reports_rejected"), 4);
    assert_eq!(metric(&host, "reports_accepted"), 0);
    host.advance(Duration::from_millis(150));
    w.tick();
    // No report-based weight: the configured weight (1) still applies.
    assert_eq!(metric(&host, "weight.a"), 1_000);
}

#[test]
fn grpc_status_in_trailers_decides_the_health_outcome() {
    // No retry hosts: B answering a pick of A blames nobody but B.
    let host = Host::new(INIT)
        .plugin_config(format!(
            r#"{{"policy":"round_robin","retry_hosts":0,"endpoints":[{{"address":"{A}"}},{{"address":"{B}"}},{{"address":"{C}"}}],
                "passive_health":{{"consecutive_failures":3}}}}"#
        ))
        .build();
    let w = host.start_worker();
    // NOT_FOUND and friends are the application's answer, like a 404.
    for _ in 0..3 {
        let (s, _) = request(&w, &[]);
        grpc_respond(&s, B, &[("grpc-status", "5")]);
    }
    assert_eq!(metric(&host, "ejections"), 0);
    // Two UNAVAILABLE, a trailers-only UNAVAILABLE, and B is out.
    for _ in 0..2 {
        let (s, _) = request(&w, &[]);
        grpc_respond(&s, B, &[("grpc-status", "14")]);
    }
    assert_eq!(metric(&host, "ejections"), 0);
    let (s, _) = request(&w, &[]);
    s.set_property(&["upstream", "address"], B);
    s.response_headers(
        &[
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", "14"),
        ],
        true,
    );
    s.finish();
    assert_eq!(metric(&host, "ejections"), 1);
    for _ in 0..9 {
        let (s, pick) = request(&w, &[]);
        assert_ne!(first(&pick), B);
        s.finish();
    }
}

#[test]
fn cookie_lines_hash_like_one_cookie_header() {
    let host = Host::new(INIT)
        .plugin_config(format!(
            r#"{{"policy":"consistent_hash","hash":{{"cookie":"session","table_size":1009}},
                "endpoints":[{{"address":"{A}"}},{{"address":"{B}"}},{{"address":"{C}"}}]}}"#
        ))
        .build();
    let w = host.start_worker();
    let mut seen = std::collections::BTreeSet::new();
    for k in 0..30 {
        let session = format!("session=user{k}");
        let joined = format!("a=1; {session}");
        let one_line = first(&request(&w, &[("cookie", joined.as_str())]).1);
        // HTTP/1.1: `Cookie: a=1` then `Cookie: session=user42`.
        let two_lines = first(&request(&w, &[("cookie", "a=1"), ("cookie", session.as_str())]).1);
        assert_eq!(one_line, two_lines, "{session}");
        seen.insert(one_line);
    }
    assert_eq!(seen.len(), 3, "the key spreads: {seen:?}");
}

/// What a steady-state GET costs (table unchanged since the last request;
/// the endpoint answers 200 with a load report, its last stored report is
/// recent; default configuration, endpoint mode):
/// - 4 callbacks: `proxy_on_context_create`, `proxy_on_request_headers`,
///   `proxy_on_response_headers`, `proxy_on_delete` (no `proxy_on_log`:
///   the module does not export it);
/// - request, 3: `proxy_get_header_map_pairs` + its allocation (the map,
///   read once), `proxy_replace_header_map_value` (the pick; it also
///   drops client copies and clears the route cache); the table version is
///   checked on the tick, not per request;
/// - response, 6: `proxy_get_header_map_pairs` + its allocation,
///   `proxy_get_property` + its allocation (`upstream.address`: which
///   listed host served), `proxy_set_shared_data` (the cleared health
///   record), `proxy_remove_header_map_value` (the report, stripped). The
///   report's time is the VM's tick clock, no clock read.
///
/// Counters cost nothing per request (summed in the VM, flushed on the
/// tick). Was 26 with the proxy-wasm dispatcher, 17 with a version read
/// per request, 15 with a clock read per response, 14 with `proxy_on_log`
/// exported.
const LB_GET_BUDGET: usize = 13;

#[test]
fn a_steady_state_get_stays_within_its_crossing_budget() {
    let host = Host::new(INIT)
        .plugin_config(format!(
            r#"{{"endpoints":[{{"address":"{A}"}},{{"address":"{B}"}},{{"address":"{C}"}}]}}"#
        ))
        .build();
    let w = host.start_worker();
    let get = || {
        let s = w.http_stream();
        s.set_property(&["source", "address"], "192.0.2.1:40000");
        s.request_headers(
            &[
                (":authority", "svc"),
                (":path", "/item/1"),
                (":method", "GET"),
                ("user-agent", "bench"),
                ("accept", "*/*"),
            ],
            true,
        );
        let up = first(&s.request_header("x-switchyard-lb-host"));
        s.set_property(&["upstream", "address"], up.clone());
        s.response_headers(
            &[
                (":status", "200"),
                ("content-type", "text/plain"),
                (
                    "endpoint-load-metrics",
                    "TEXT application_utilization=0.5,rps_fractional=100",
                ),
            ],
            false,
        );
        s.response_body(b"ok", true);
        s.finish();
        (s, up)
    };
    // Warm-up: every endpoint answers once and gets its first report stored
    // (the emulator's clock stands still, so none is rewritten afterwards).
    let mut seen = std::collections::BTreeSet::new();
    let mut warm_up = 0;
    while seen.len() < 3 && warm_up < 30 {
        seen.insert(get().1);
        warm_up += 1;
    }
    assert_eq!(seen.len(), 3);
    // Steady state: the VM has ticked (every 20 ms in Envoy); its tick
    // clock stamps the response's bookkeeping. The first request after a
    // tick may rebuild the picker (new weights): one more.
    w.tick();
    get();
    let crossings = get().0.crossings();
    println!("{crossings}");
    let shared_reads = crossings
        .0
        .iter()
        .filter(|c| **c == Crossing::HostCall("proxy_get_shared_data"))
        .count();
    assert_eq!(
        shared_reads, 0,
        "the table is re-synced on the tick: {crossings}"
    );
    assert!(crossings.total() <= LB_GET_BUDGET, "{crossings}");
    assert_eq!(metric(&host, "reports_accepted"), warm_up + 2);
}

#[test]
fn p2c_counts_a_request_in_flight_until_its_stream_ends() {
    let host = Host::new(INIT)
        .plugin_config(format!(
            r#"{{"policy":"p2c","p2c":{{"in_flight_cost":1.0}},
                "endpoints":[{{"address":"{A}"}},{{"address":"{B}"}}]}}"#
        ))
        .build();
    let w = host.start_worker();
    let other = |x: &str| if x == A { B } else { A };
    for _ in 0..5 {
        let (s1, p1) = request(&w, &[]);
        let x = first(&p1);
        // The answer alone does not end the request: x is still busy.
        s1.set_property(&["upstream", "address"], x.clone());
        s1.response_headers(&[(":status", "200")], false);
        let (s2, p2) = request(&w, &[]);
        assert_eq!(first(&p2), other(&x));
        // s1 ends (once, though its response phase ran): only s2's endpoint is busy.
        s1.response_body(b"", true);
        s1.finish();
        let (s3, p3) = request(&w, &[]);
        assert_eq!(first(&p3), x);
        s2.finish();
        s3.finish();
    }
}

/// A Prequal GET costs what a weighted-round-robin one does: its estimates
/// live in VM memory, age by the tick's clock, and its latencies are
/// Envoy's `x-envoy-upstream-service-time` from the response map.
const PREQUAL_GET_BUDGET: usize = LB_GET_BUDGET;

#[test]
fn prequal_follows_the_backends_in_flight_counts_and_this_workers_latencies() {
    let host = Host::new(INIT)
        .plugin_config(format!(
            r#"{{"policy":"prequal","prequal":{{"choices":3,"hot_quantile":0.5}},
                "endpoints":[{{"address":"{A}"}},{{"address":"{B}"}},{{"address":"{C}"}}]}}"#
        ))
        .build();
    let w = host.start_worker();
    // The VM has ticked (its tick clock stamps reports and latencies).
    w.tick();
    // Each endpoint answers once: A reports 30 requests in flight (other
    // proxies' traffic this worker cannot see), B and C 2 each; the same
    // capacity of 40 everywhere (in_flight / utilization).
    let report = |rif: f64| {
        format!(
            "TEXT application_utilization={},named_metrics.in_flight={rif}",
            rif / 40.0
        )
    };
    let latency_ms = std::collections::BTreeMap::from([(A, 1u64), (B, 20), (C, 5)]);
    // Each answers one request (whatever was picked: as if Envoy had
    // moved on). A report is stamped with this worker's count there then:
    // 1 when the endpoint was also the pick.
    let mut own_then = std::collections::BTreeMap::new();
    for up in [A, B, C] {
        let (s, pick) = request(&w, &[]);
        own_then.insert(up, usize::from(first(&pick) == up));
        let rif = if up == A { 30.0 } else { 2.0 };
        let service_ms = latency_ms[up].to_string();
        s.set_property(&["upstream", "address"], up);
        s.response_headers(
            &[
                (":status", "200"),
                ("endpoint-load-metrics", &report(rif)),
                // Envoy's router adds it to every proxied response.
                ("x-envoy-upstream-service-time", &service_ms),
            ],
            true,
        );
        s.finish();
    }
    // A is hot (30 of 40 busy) though the fastest; of B and C, C answers
    // sooner: every pick goes to C while those estimates hold.
    let mut picks = Vec::new();
    for _ in 0..10 {
        let (s, pick) = request(&w, &[]);
        picks.push(first(&pick));
        s.finish();
    }
    assert!(picks.iter().all(|p| p == C), "{picks:?}");
    // C's in-flight count grows with this worker's own requests (fresh,
    // before any report): once it is the hottest, A is below the median
    // and the fastest.
    let mut held = Vec::new();
    let mut moved_to = None;
    for _ in 0..40 {
        let (s, pick) = request(&w, &[]);
        if first(&pick) != C {
            moved_to = Some(first(&pick));
            break;
        }
        held.push(s);
    }
    assert_eq!(moved_to.as_deref(), Some(A), "{} held on C", held.len());
    // C reaches A's count (reported, less this worker's requests there
    // that ended since): a tie at the median, both cold, and A answers
    // faster.
    assert_eq!(2 - own_then[C] + held.len(), 30 - own_then[A]);
    // The steady-state cost.
    let (s, pick) = request(&w, &[]);
    let up = first(&pick);
    s.set_property(&["upstream", "address"], up);
    s.response_headers(
        &[(":status", "200"), ("endpoint-load-metrics", &report(2.0))],
        true,
    );
    s.finish();
    let crossings = s.crossings();
    assert!(crossings.total() <= PREQUAL_GET_BUDGET, "{crossings}");
}

/// Serves 10 new requests on `w`, each by the endpoint picked for it,
/// with the report `report_of` gives for that endpoint.
fn serve_picked(w: &Worker, report_of: impl Fn(&str) -> &'static str) {
    for _ in 0..10 {
        let (s, pick) = request(w, &[]);
        let up = first(&pick);
        respond(&s, &up, "200", Some(report_of(&up)));
    }
}

/// B's share of 1000 picks on `w` (each answered, without a report).
fn share_of_b(w: &Worker) -> usize {
    let mut b = 0;
    for _ in 0..1000 {
        let (s, pick) = request(w, &[]);
        let up = first(&pick);
        b += usize::from(up == B);
        respond(&s, &up, "200", None);
    }
    b
}

/// A and B, default policy, A58 without blackout, weights every 100 ms.
fn two_endpoints_quick_weights() -> Host {
    Host::new(INIT)
        .plugin_config(format!(
            r#"{{"endpoints":[{{"address":"{A}"}},{{"address":"{B}"}}],
                "weighted_round_robin":{{"blackout_period_ms":0,"weight_update_period_ms":100}}}}"#
        ))
        .build()
}

const AT_90: &str = "TEXT application_utilization=0.9,rps_fractional=100";
const AT_10: &str = "TEXT application_utilization=0.1,rps_fractional=100";

/// `auto` (the default) leaves Prequal as soon as the reports stop
/// carrying in-flight counts, even while this worker holds a request
/// whose old count Prequal would keep using (found by review: it stayed
/// on Prequal, and B got half the picks where A58 gives it ~9 of 10).
#[test]
fn auto_falls_back_to_a58_when_reports_stop_carrying_in_flight_counts() {
    let host = two_endpoints_quick_weights();
    let w = host.start_worker();
    // Counts first: Prequal.
    serve_picked(
        &w,
        |_| "TEXT application_utilization=0.5,rps_fractional=100,named_metrics.in_flight=3",
    );
    // A long request (a stream) at A, held open throughout.
    let held = loop {
        let (s, pick) = request(&w, &[]);
        if first(&pick) == A {
            break s;
        }
        respond(&s, &first(&pick), "200", None);
    };
    for _ in 0..30 {
        host.advance(Duration::from_millis(100));
        w.tick();
        serve_picked(&w, |up| if up == A { AT_90 } else { AT_10 });
    }
    let with_held = share_of_b(&w);
    respond(&held, A, "200", None);
    let without = share_of_b(&w);
    assert!(
        with_held > 850 && without > 850,
        "A58 gives B 9 of 10: {with_held} with the long request at A, {without} after"
    );
}

/// One endpoint that reports in-flight counts does not take its level
/// off A58 while the others report utilization only (found by review:
/// the reporter at 95 % got every pick).
#[test]
fn auto_stays_on_a58_until_every_endpoint_reports_in_flight_counts() {
    const A_COUNTS: &str =
        "TEXT application_utilization=0.95,rps_fractional=100,named_metrics.in_flight=5";
    let host = two_endpoints_quick_weights();
    let w = host.start_worker();
    for _ in 0..30 {
        host.advance(Duration::from_millis(100));
        w.tick();
        serve_picked(&w, |up| if up == A { A_COUNTS } else { AT_10 });
    }
    let b = share_of_b(&w);
    assert!(b > 850, "A58 gives B ~9 of 10, got {b} of 1000");
    // Once B reports its count too, Prequal decides: A with 4 requests
    // from elsewhere against an idle B (a count includes the request it
    // answers).
    for _ in 0..5 {
        host.advance(Duration::from_millis(100));
        w.tick();
        serve_picked(&w, |up| {
            if up == A {
                A_COUNTS
            } else {
                "TEXT application_utilization=0.1,rps_fractional=100,named_metrics.in_flight=1"
            }
        });
    }
    let b = share_of_b(&w);
    assert!(b > 850, "Prequal sends to the idle B, got {b} of 1000");
}
