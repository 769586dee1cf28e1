//! The filter's real code through the proxy-wasm ABI, in the host emulator:
//! several workers sharing one process's shared data, a tick leader, callouts.

use std::time::Duration;
use switchyard_emulator::{CallOutcome, Host, Stream, Worker};

const INIT: extern "C" fn() = switchyard_load_balancer::_initialize;
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
        assert_eq!(hosts.len(), 2, "pick then one retry host: {pick}");
        assert_ne!(hosts[0], hosts[1]);
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
    w1.tick(); // takes the lease and publishes weights 125 : 500
    assert_eq!(metric(&host, "weight.a"), 125_000);
    assert_eq!(metric(&host, "weight.b"), 500_000);
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
    let picks: Vec<String> = (0..6).map(|_| first(&request(&w2, &[]).1)).collect();
    assert!(picks.iter().any(|p| p == B), "{picks:?}");
}

#[test]
fn a_success_in_between_resets_the_count() {
    let host = Host::new(INIT)
        .plugin_config(format!(
            r#"{{"endpoints":[{{"address":"{A}"}},{{"address":"{B}"}}]}}"#
        ))
        .build();
    let w = host.start_worker();
    for status in ["503", "503", "200", "503", "503"] {
        let (s, _) = request(&w, &[]);
        respond(&s, A, status, None);
    }
    assert_eq!(metric(&host, "ejections"), 0);
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

#[test]
fn discovery_by_the_leader_and_garbage_keeps_the_last_set() {
    let host = Host::new(INIT)
        .plugin_config(
            r#"{"discovery":{"cluster":"disc","path":"/eps","interval_ms":1000},
                "weighted_round_robin":{"weight_update_period_ms":1000}}"#,
        )
        .clusters(["disc"])
        .build();
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
