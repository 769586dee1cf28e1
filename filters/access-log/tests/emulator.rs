//! The filter's real code through the proxy-wasm ABI, in the host emulator:
//! records in on_log, the log sink, and the single sender (lease, shared
//! queue, batches, retries, loss accounting) across two workers.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::time::Duration;
use switchyard_access_log::_initialize;
use switchyard_emulator::{CallOutcome, Host, Stream, Worker};

const M: &str = "switchyard.access-log.";

fn metric(host: &Host, name: &str) -> u64 {
    host.metric(&format!("{M}{name}")).unwrap_or(0)
}

fn host(config: &str) -> Host {
    Host::new(_initialize)
        .vm_id("access_log")
        .plugin_config(config.to_string())
        .echo_logs(false)
        .build()
}

/// One request through the filter, ending with on_log.
fn request(worker: &Worker, id: &str, extra: &[(&str, &[u8])]) -> Stream {
    let s = worker.http_stream();
    let mut headers: Vec<(&str, &[u8])> = vec![
        (":method", b"GET"),
        (":path", b"/p?x=1"),
        (":authority", b"shop.test"),
        ("x-request-id", id.as_bytes()),
    ];
    headers.extend_from_slice(extra);
    s.request_headers_bytes(&headers, true);
    s.response_headers(
        &[(":status", "200"), ("x-envoy-upstream-service-time", "3")],
        true,
    );
    s.set_property(&["response", "code"], 200i64.to_le_bytes());
    s.set_property(&["source", "address"], "10.0.0.9:5555");
    s.set_property(&["xds", "route_name"], "default");
    s.finish();
    s
}

fn logged_records(host: &Host) -> Vec<String> {
    host.logs()
        .into_iter()
        .filter(|r| r.message.starts_with('{'))
        .map(|r| r.message)
        .collect()
}

#[test]
fn on_log_writes_one_json_line_per_request_whatever_the_bytes() {
    let host = host(r#"{"trusted_hops":1,"request_headers":["x-evil","authorization","cookie"]}"#);
    let worker = host.start_worker();
    assert!(worker.configured());
    request(
        &worker,
        "r-1",
        &[
            ("x-evil", b"a\r\nb\0c\"d\\e\xff\xfe\"}\n{\"forged\":1}"),
            ("authorization", b"Bearer SECRET"),
            ("cookie", b"sid=SECRET"),
            ("x-forwarded-for", b"6.6.6.6, 7.7.7.7"),
        ],
    );
    let lines = logged_records(&host);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(!line.contains(['\n', '\r', '\0']), "{line:?}");
    assert!(!line.contains("SECRET"), "{line}");
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["request_id"], "r-1");
    assert_eq!(v["path"], "/p?x=1");
    assert_eq!(v["response_code"], 200);
    assert_eq!(v["upstream_service_time"], 3);
    assert_eq!(v["route_name"], "default");
    assert_eq!(v["client_address"], "7.7.7.7", "one trusted hop");
    assert_eq!(v["downstream_remote_address"], "10.0.0.9:5555");
    assert_eq!(v["request_headers"]["authorization"], "[REDACTED]");
    assert_eq!(
        v["request_headers"]["x-evil"],
        "a\r\nb\0c\"d\\e\u{fffd}\u{fffd}\"}\n{\"forged\":1}"
    );
    assert!(v.get("forged").is_none());
    assert_eq!(metric(&host, "records"), 1);
}

#[test]
fn sampling_counts_what_it_leaves_out() {
    let host = host(r#"{"sampling":{"rate":0.0}}"#);
    let worker = host.start_worker();
    request(&worker, "a", &[]);
    request(&worker, "b", &[("x-switchyard-ratelimit", b"over_limit")]);
    assert_eq!(metric(&host, "sampled_out"), 1);
    assert_eq!(metric(&host, "records"), 1);
    let v: Value = serde_json::from_str(&logged_records(&host)[0]).unwrap();
    assert_eq!(v["switchyard_ratelimit"], "over_limit");
}

const SHIPPING: &str = r#"{"log":{"enabled":false},"http":{"cluster":"collector","path":"/ingest",
    "batch_max_records":5,"flush_interval_ms":1000,"backoff_initial_ms":100,"backoff_max_ms":400,
    "buffer_max_records":20}}"#;

fn lines_of(body: &[u8]) -> Vec<Value> {
    std::str::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn one_sender_batches_retries_and_accounts_for_every_record() {
    let host = host(SHIPPING);
    let w0 = host.start_worker();
    let w1 = host.start_worker();
    assert!(w0.configured() && w1.configured());
    assert_eq!(w0.tick_period(), Some(Duration::from_millis(100)));
    w0.tick(); // takes the lease and owns the queue
    w1.tick(); // not the holder
    assert!(host.http_calls().is_empty());

    for i in 0..12 {
        let w = if i % 2 == 0 { &w0 } else { &w1 };
        request(w, &format!("q-{i:02}"), &[]);
        host.drain_all();
    }
    assert_eq!(metric(&host, "records"), 12);
    // One batch in flight, records from both workers, sent by worker 0.
    let calls = host.http_calls();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let call = &calls[0];
    assert_eq!(call.worker, 0);
    assert_eq!(call.header(":path"), Some("/ingest"));
    assert_eq!(call.header(":method"), Some("POST"));
    assert_eq!(call.header("content-type"), Some("application/x-ndjson"));
    let first_id = call.header("x-switchyard-batch-id").unwrap().to_string();
    let batch = lines_of(&call.body);
    assert_eq!(batch.len(), 5);
    assert_eq!(batch[0]["request_id"], "q-00");
    assert_eq!(batch[1]["request_id"], "q-01");
    host.respond_http_call(call.token, CallOutcome::status(200, "ok"));

    // The next full batch goes at once; the collector fails it.
    let call = host.expect_http_call("collector");
    let second_id = call.header("x-switchyard-batch-id").unwrap().to_string();
    assert_ne!(second_id, first_id);
    host.respond_http_call(call.token, CallOutcome::status(503, "down"));
    assert!(host.http_calls().is_empty(), "backing off");
    assert_eq!(metric(&host, "batch_failures"), 1);
    w0.tick();
    assert!(host.http_calls().is_empty(), "still backing off");
    host.advance(Duration::from_millis(200));
    w0.tick();
    let call = host.expect_http_call("collector");
    assert_eq!(
        call.header("x-switchyard-batch-id"),
        Some(second_id.as_str()),
        "same batch again"
    );
    assert_eq!(call.header("x-switchyard-batch-attempt"), Some("2"));
    host.respond_http_call(call.token, CallOutcome::Timeout);
    host.advance(Duration::from_millis(500));
    w0.tick();
    let call = host.expect_http_call("collector");
    assert_eq!(call.header("x-switchyard-batch-attempt"), Some("3"));
    host.respond_http_call(call.token, CallOutcome::status(204, ""));

    // Two records left: they wait for the flush interval.
    assert!(host.http_calls().is_empty());
    assert_eq!(metric(&host, "queue_depth"), 2);
    host.advance(Duration::from_millis(1000));
    w0.tick();
    let call = host.expect_http_call("collector");
    assert_eq!(lines_of(&call.body).len(), 2);
    host.respond_http_call(call.token, CallOutcome::status(200, ""));

    assert_eq!(metric(&host, "delivered"), 12);
    assert_eq!(metric(&host, "dropped"), 0);
    assert_eq!(metric(&host, "batches_sent"), 5);
    assert_eq!(metric(&host, "batch_failures"), 2);
    assert_eq!(metric(&host, "queue_depth"), 0);
}

#[test]
fn a_full_buffer_drops_and_counts_and_never_blocks_requests() {
    let host = host(SHIPPING);
    let w0 = host.start_worker();
    w0.tick();
    for i in 0..40 {
        request(&w0, &format!("b-{i:02}"), &[]);
    }
    // 20 held (5 in flight, 15 buffered), 20 dropped, nothing delivered yet.
    assert_eq!(metric(&host, "records"), 40);
    assert_eq!(metric(&host, "dropped"), 20);
    assert_eq!(metric(&host, "dropped_buffer_full"), 20);
    assert_eq!(metric(&host, "queue_depth"), 20);
    // The collector rejects the first batch for good (400): dropped too.
    let call = host.expect_http_call("collector");
    host.respond_http_call(call.token, CallOutcome::status(400, "bad"));
    assert_eq!(metric(&host, "dropped_rejected"), 5);
    for _ in 0..3 {
        let call = host.expect_http_call("collector");
        host.respond_http_call(call.token, CallOutcome::status(200, ""));
    }
    assert_eq!(metric(&host, "delivered"), 15);
    assert_eq!(metric(&host, "dropped"), 25);
    assert_eq!(metric(&host, "delivered") + metric(&host, "dropped"), 40);
    assert_eq!(metric(&host, "queue_depth"), 0);
}

#[test]
fn the_lease_moves_when_the_sender_stops_and_nothing_is_lost() {
    let host = host(SHIPPING);
    let w0 = host.start_worker();
    let w1 = host.start_worker();
    w0.tick();
    w1.tick();
    request(&w1, "l-0", &[]);
    host.drain_all();
    // Worker 0 stops ticking; after the lease TTL worker 1 takes over,
    // registers the queue and drains what is there.
    host.advance(Duration::from_secs(2));
    w1.tick();
    for i in 1..5 {
        request(&w1, &format!("l-{i}"), &[]);
        host.drain_all();
    }
    // Worker 0 still holds l-0 in its buffer and flushes it on its own tick.
    host.advance(Duration::from_secs(2));
    w0.tick();
    w1.tick();
    let mut ids = Vec::new();
    for call in host.http_calls() {
        for r in lines_of(&call.body) {
            ids.push(r["request_id"].as_str().unwrap().to_string());
        }
        host.respond_http_call(call.token, CallOutcome::status(200, ""));
    }
    ids.sort();
    assert_eq!(ids, ["l-0", "l-1", "l-2", "l-3", "l-4"]);
    assert_eq!(metric(&host, "delivered"), 5);
}

#[test]
fn otlp_batches() {
    let host = host(
        r#"{"naming":"otel","log":{"enabled":false},"http":{"cluster":"collector","format":"otlp_json","batch_max_records":2}}"#,
    );
    let w0 = host.start_worker();
    w0.tick();
    request(&w0, "o-1", &[]);
    request(&w0, "o-2", &[]);
    let call = host.expect_http_call("collector");
    assert_eq!(call.header("content-type"), Some("application/json"));
    let doc: Value = serde_json::from_slice(&call.body).unwrap();
    let recs = doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
        .as_array()
        .unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["body"]["stringValue"], "GET /p 200");
}

#[test]
fn bad_config_is_refused_and_names_the_field() {
    let host = Host::new(_initialize)
        .plugin_config(r#"{"http":{"cluster":"c","tick_ms":1}}"#)
        .echo_logs(false)
        .build();
    let worker = host.start_worker();
    assert!(!worker.configured());
    host.expect_log_contains("http.tick_ms: must be between 10 and 60000");
}
