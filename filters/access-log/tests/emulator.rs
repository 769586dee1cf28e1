//! The filter's real code through the proxy-wasm ABI, in the host emulator:
//! records in on_log, the log sink, decisions of earlier stages (and client
//! copies ignored), host crossings per request, and the single sender
//! (lease, shared queue, batches, retries, loss accounting) across workers.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::time::Duration;
use switchyard_access_log::init;
use switchyard_emulator::{CallOutcome, Crossing, Host, Stream, Worker};
use switchyard_sdk::config::ConfigError;
use switchyard_sdk::stage::{Exchange, Flow, Phase, Phases, Setup, Stage, StageSpec};

const M: &str = "switchyard.access-log.";

fn metric(host: &Host, name: &str) -> u64 {
    host.metric(&format!("{M}{name}")).unwrap_or(0)
}

fn host(config: &str) -> Host {
    Host::new(init)
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
    let host = host(r#"{"request_headers":["x-evil","authorization","cookie"]}"#);
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
    // Envoy's own client address (source.address), never an XFF entry.
    assert_eq!(v["client_address"], "10.0.0.9");
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
    let s = worker.http_stream();
    s.request_headers(
        &[(":method", "GET"), (":path", "/"), ("x-request-id", "e")],
        true,
    );
    s.response_headers(&[(":status", "503")], true);
    s.finish();
    assert_eq!(metric(&host, "sampled_out"), 1);
    assert_eq!(metric(&host, "records"), 1, "errors are kept");
    let v: Value = serde_json::from_str(&logged_records(&host)[0]).unwrap();
    assert_eq!(v["response_code"], 503);
}

/// The headers that once carried decisions, with forged values.
const FORGED: [(&str, &[u8]); 3] = [
    ("x-switchyard-route", b"forged-route"),
    ("x-switchyard-endpoint", b"6.6.6.6:66"),
    ("x-switchyard-ratelimit", b"over_limit;policy=forged"),
];

#[test]
fn client_copies_of_decision_headers_are_ignored() {
    // A forged `over_limit` used to override sampling: now nothing is kept.
    let host = host(r#"{"sampling":{"rate":0.0}}"#);
    let worker = host.start_worker();
    let s = worker.http_stream();
    let mut headers: Vec<(&str, &[u8])> = vec![
        (":method", b"GET"),
        (":path", b"/"),
        ("x-request-id", b"f-1"),
    ];
    headers.extend_from_slice(&FORGED);
    s.request_headers_bytes(&headers, true);
    // An upstream's copy counts no more than a client's.
    s.response_headers_bytes(&[(":status", b"200"), FORGED[2]], true);
    s.finish();
    assert_eq!(metric(&host, "records"), 0);
    assert_eq!(metric(&host, "sampled_out"), 1);
    assert!(logged_records(&host).is_empty());

    // Kept records show no client copy: alone in its module, the access
    // log has no decisions, so the fields are null.
    let host = self::host("{}");
    let worker = host.start_worker();
    request(&worker, "f-2", &FORGED);
    let line = &logged_records(&host)[0];
    assert!(
        !line.contains("forged") && !line.contains("6.6.6.6"),
        "{line}"
    );
    let v: Value = serde_json::from_str(line).unwrap();
    for field in [
        "switchyard_route",
        "switchyard_endpoint",
        "switchyard_ratelimit",
    ] {
        assert_eq!(v[field], Value::Null, "{field}");
    }
}

// ---- in a chain: decisions from the stages before ----

/// Stands in for the router, balancer and rate limiter: decides from
/// `x-test-*` request headers, and reads both header maps as those stages
/// do.
struct Decider;

impl Stage for Decider {
    fn on_request_headers(&self, ex: &mut Exchange) -> Flow {
        let get = |ex: &mut Exchange, name: &str| ex.request().get_str(name).map(str::to_string);
        ex.decisions.route = get(ex, "x-test-route");
        ex.decisions.endpoint = get(ex, "x-test-endpoint");
        ex.decisions.rate_limit = get(ex, "x-test-ratelimit");
        Flow::Continue
    }

    fn on_response_headers(&self, ex: &mut Exchange) -> Flow {
        let _ = ex.response();
        Flow::Continue
    }
}

const DECIDER: StageSpec = StageSpec {
    name: "decider",
    filter: "decider",
    build: |_: switchyard_sdk::config::Source<'_>,
            _: &Setup|
     -> Result<Box<dyn Stage>, ConfigError> { Ok(Box::new(Decider)) },
    phases: Phases::of(&[Phase::RequestHeaders, Phase::ResponseHeaders]),
};

const CHAIN: &[StageSpec] = &[DECIDER, switchyard_access_log::SPEC];

extern "C" fn chain_init() {
    switchyard_sdk::module::install_chain(CHAIN);
}

fn chain_host(access_log: &str) -> Host {
    Host::new(chain_init)
        .vm_id("chain")
        .plugin_config(format!(
            r#"{{"stages":[{{"decider":{{}}}},{{"access_log":{access_log}}}]}}"#
        ))
        .echo_logs(false)
        .build()
}

#[test]
fn decisions_of_earlier_stages_are_logged_and_count_for_sampling() {
    let host = chain_host(r#"{"sampling":{"rate":0.0}}"#);
    let worker = host.start_worker();
    assert!(worker.configured());
    let mut limited: Vec<(&str, &[u8])> = vec![
        ("x-test-route", b"checkout"),
        ("x-test-endpoint", b"10.0.0.7:8080"),
        ("x-test-ratelimit", b"over_limit;policy=per-tenant"),
    ];
    limited.extend_from_slice(&FORGED);
    request(&worker, "d-1", &limited);
    request(
        &worker,
        "d-2",
        &[("x-test-ratelimit", b"ok;policy=per-tenant")],
    );
    assert_eq!(
        metric(&host, "records"),
        1,
        "over_limit kept, ok sampled out"
    );
    assert_eq!(metric(&host, "sampled_out"), 1);
    let line = &logged_records(&host)[0];
    assert!(
        !line.contains("forged") && !line.contains("6.6.6.6"),
        "{line}"
    );
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["request_id"], "d-1");
    assert_eq!(v["switchyard_route"], "checkout");
    assert_eq!(v["switchyard_endpoint"], "10.0.0.7:8080");
    assert_eq!(v["switchyard_ratelimit"], "over_limit;policy=per-tenant");
}

// ---- host crossings per request ----

/// A GET as Envoy reports it at `on_log`: every attribute a record uses.
fn realistic_get(worker: &Worker) -> Stream {
    let s = worker.http_stream();
    let int = |n: i64| n.to_le_bytes().to_vec();
    for (path, value) in [
        (&["source", "address"][..], b"10.0.0.9:5555".to_vec()),
        (&["request", "time"][..], int(1_767_225_600_123_000_000)),
        (&["request", "duration"][..], int(12_500_000)),
        (&["request", "protocol"][..], b"HTTP/1.1".to_vec()),
        (&["request", "size"][..], int(0)),
        (&["response", "size"][..], int(5)),
        (&["response", "flags"][..], int(0)),
        (&["response", "code_details"][..], b"via_upstream".to_vec()),
        (&["upstream", "address"][..], b"10.0.0.7:8080".to_vec()),
        (&["xds", "cluster_name"][..], b"backends".to_vec()),
        (&["xds", "route_name"][..], b"default".to_vec()),
    ] {
        s.set_property(path, value);
    }
    s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/p?x=1"),
            (":authority", "shop.test"),
            (":scheme", "http"),
            ("user-agent", "curl/8"),
            ("x-request-id", "c-1"),
            ("x-forwarded-for", "1.2.3.4"),
        ],
        true,
    );
    s.response_headers(
        &[
            (":status", "200"),
            ("content-type", "text/plain"),
            ("x-envoy-upstream-service-time", "3"),
        ],
        false,
    );
    s.response_body(b"hello", true);
    s.finish();
    s
}

/// A GET with the default configuration (log sink on), the access log
/// alone in its module (attributes one by one, CEL or not):
/// - 4 callbacks: context_create, request_headers, log, delete (the
///   module exports no response-headers, body or on_done callback);
/// - the two header maps: one `proxy_get_header_map_pairs` and one
///   allocation each (4); the request map in the request phase (to strip
///   forged decision headers), kept for on_log;
/// - 9 attributes, one `proxy_get_property` and one allocation each (18):
///   request.time, .protocol, response.flags, .size, .code_details,
///   upstream.address, xds.cluster_name, xds.route_name, source.address
///   (shared by downstream_remote_address and client_address); the status
///   comes from the response map's `:status`, the duration from one clock
///   read (1) minus request.time, and request.size is 0 without a read for
///   a request that ended with its headers;
/// - the log line (1); counters are flushed on the tick, not per request.
///
/// Before the port: 37. (A CEL batch of the 9 attributes made it 13
/// crossings, but cost more CPU in Envoy than the 16 it saved: the record's
/// attributes are read one by one, see the stage.)
/// 29 while the module also exported response headers.
const ACCESS_LOG_GET_BUDGET: usize = 28;

/// Every attribute is read once on its own, with CEL in Envoy or not, and
/// the record is the same byte for byte.
#[test]
fn crossing_budget_of_a_get() {
    let plain = Host::new(init)
        .vm_id("access_log")
        .plugin_config("{}")
        .echo_logs(false)
        .cel(false)
        .build();
    let worker = plain.start_worker();
    realistic_get(&worker);
    let without = realistic_get(&worker).crossings();
    let host = host("{}");
    let worker = host.start_worker();
    realistic_get(&worker);
    let crossings = realistic_get(&worker).crossings();
    println!("access-log GET: {crossings}");
    assert_eq!(crossings, without, "the same reads with CEL");
    assert!(
        crossings.total() <= ACCESS_LOG_GET_BUDGET,
        "over budget ({ACCESS_LOG_GET_BUDGET}): {crossings}"
    );
    let count = |name| {
        crossings
            .0
            .iter()
            .filter(|c| **c == Crossing::HostCall(name))
            .count()
    };
    assert_eq!(
        count("proxy_get_property"),
        9,
        "each attribute once: {crossings}"
    );
    assert_eq!(count("proxy_call_foreign_function"), 0, "{crossings}");
    let with = logged_records(&host);
    assert_eq!(logged_records(&plain), with);
    assert!(with[0].contains(r#""route_name":"default""#), "{}", with[0]);
    assert!(with[0].contains(r#""bytes_sent":5"#), "{}", with[0]);
}

/// An attribute Envoy does not have is `null` in the record, read once.
#[test]
fn an_absent_attribute_is_null() {
    let host = host("{}");
    let worker = host.start_worker();
    let s = worker.http_stream();
    s.set_property(&["request", "protocol"], b"HTTP/2".to_vec());
    s.set_property(&["response", "flags"], 0x800i64.to_le_bytes().to_vec());
    s.request_headers(
        &[(":method", "GET"), (":path", "/"), (":authority", "a")],
        true,
    );
    s.response_headers(&[(":status", "429")], true);
    s.finish();
    let crossings = s.crossings();
    let record = logged_records(&host).pop().unwrap();
    assert!(record.contains(r#""protocol":"HTTP/2""#), "{record}");
    assert!(record.contains(r#""response_flags":"RL""#), "{record}");
    assert!(record.contains(r#""route_name":null"#), "{record}");
    // Each read once, absent or not (the memo keeps "absent" too).
    let properties = crossings
        .0
        .iter()
        .filter(|c| **c == Crossing::HostCall("proxy_get_property"))
        .count();
    assert!(properties <= 9, "{crossings}");
}

/// The same GET sampled out (`rate: 0`, status 200): 4 callbacks, the
/// request map (for the request id) and the response map (its `:status`),
/// and response.flags (to rule out a rate-limited request): 4 + 2 + 2 + 2.
/// Before the port: 36 (every value was read before sampling); 11 with the
/// response-headers callback exported.
const ACCESS_LOG_SAMPLED_OUT_BUDGET: usize = 10;

#[test]
fn crossing_budget_of_a_sampled_out_get() {
    let host = host(r#"{"sampling":{"rate":0.0}}"#);
    let worker = host.start_worker();
    let s = realistic_get(&worker);
    let crossings = s.crossings();
    println!("access-log GET, sampled out: {crossings}");
    assert_eq!(metric(&host, "sampled_out"), 1);
    assert!(
        crossings.total() <= ACCESS_LOG_SAMPLED_OUT_BUDGET,
        "over budget ({ACCESS_LOG_SAMPLED_OUT_BUDGET}): {crossings}"
    );
}

/// In a chain the header maps the earlier stages read are free: on_log
/// reads only attributes.
#[test]
fn in_a_chain_on_log_reads_no_header_map_again() {
    let host = chain_host("{}");
    let worker = host.start_worker();
    let s = realistic_get(&worker);
    let crossings = s.crossings();
    println!("decider + access-log GET: {crossings}");
    assert_eq!(logged_records(&host).len(), 1);
    let on_log = crossings
        .0
        .iter()
        .position(|c| *c == Crossing::Callback("proxy_on_log"))
        .unwrap();
    let in_log = crossings.since(on_log + 1);
    assert!(
        !in_log
            .0
            .contains(&Crossing::HostCall("proxy_get_header_map_pairs")),
        "{in_log}"
    );
    let maps = crossings
        .0
        .iter()
        .filter(|c| **c == Crossing::HostCall("proxy_get_header_map_pairs"))
        .count();
    assert_eq!(maps, 2, "{crossings}");
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
    // Each VM holds its records until its tick (one queue item each);
    // held records count as queued.
    assert!(host.http_calls().is_empty());
    assert_eq!(metric(&host, "queue_depth"), 12);
    host.advance(Duration::from_millis(100));
    w0.tick();
    w1.tick();
    host.drain_all();
    // One batch in flight, sent by worker 0; worker 1's records reached
    // its buffer through the queue.
    assert_eq!(metric(&host, "queue_depth"), 12);
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
    assert_eq!(batch[1]["request_id"], "q-02");
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
    // The tick puts the VM's 40 records on the queue as one item.
    host.advance(Duration::from_millis(100));
    w0.tick();
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
    host.advance(Duration::from_millis(100));
    w1.tick();
    host.drain_all();
    // Worker 0 stops ticking; after the lease TTL worker 1 takes over,
    // registers the queue and drains what is there.
    host.advance(Duration::from_secs(2));
    w1.tick();
    for i in 1..5 {
        request(&w1, &format!("l-{i}"), &[]);
        host.drain_all();
    }
    host.advance(Duration::from_millis(100));
    w1.tick();
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

/// Each record used to be its own queue item: an enqueue in the request
/// and a wake-up of the sender's VM (callback, dequeue, bookkeeping). A VM
/// now holds its records and enqueues them as one item: at 64 records, on
/// its tick, or as it shuts down; none is lost or counted twice.
#[test]
fn records_reach_the_queue_in_batches_from_each_vm() {
    let host = host(SHIPPING);
    let w0 = host.start_worker();
    let w1 = host.start_worker();
    w0.tick();
    w1.tick();
    // The request pays no queue call.
    let s = request(&w1, "h-00", &[]);
    let crossings = s.crossings();
    assert!(
        !crossings
            .0
            .contains(&Crossing::HostCall("proxy_enqueue_shared_queue")),
        "{crossings}"
    );
    host.drain_all();
    assert_eq!(metric(&host, "queue_depth"), 1, "held in worker 1");
    // The 64th record sends the VM's batch without waiting for a tick.
    for i in 1..64 {
        request(&w1, &format!("h-{i:02}"), &[]);
    }
    host.drain_all();
    // The sender's buffer holds 20 (5 in flight): the rest are counted.
    assert_eq!(metric(&host, "queue_depth"), 20);
    assert_eq!(metric(&host, "dropped_buffer_full"), 44);
    // Held records go on the queue when their VM shuts down.
    request(&w1, "h-64", &[]);
    request(&w1, "h-65", &[]);
    w1.shutdown();
    host.drain_all();
    assert_eq!(metric(&host, "dropped_buffer_full"), 46);
    assert_eq!(metric(&host, "records"), 66);
    // Everything is delivered or dropped, once.
    for _ in 0..10 {
        host.advance(Duration::from_millis(1000));
        w0.tick();
        for call in host.http_calls() {
            host.respond_http_call(call.token, CallOutcome::status(200, ""));
        }
    }
    assert_eq!(metric(&host, "delivered"), 20);
    assert_eq!(metric(&host, "delivered") + metric(&host, "dropped"), 66);
    assert_eq!(metric(&host, "queue_depth"), 0);
}

/// The lease holder shuts down holding records (one batch in flight,
/// others buffered): they go back on the queue and the next holder ships
/// them. Before, they stayed in the dead VM, still counted as queued.
#[test]
fn a_holder_shutting_down_hands_its_records_on() {
    let host = host(SHIPPING);
    let w0 = host.start_worker();
    let w1 = host.start_worker();
    w0.tick();
    w1.tick();
    for i in 0..7 {
        request(&w0, &format!("d-{i}"), &[]);
    }
    host.advance(Duration::from_millis(100));
    w0.tick();
    // 5 in flight (never answered), 2 buffered, all in worker 0.
    assert_eq!(host.http_calls().len(), 1);
    assert_eq!(metric(&host, "queue_depth"), 7);
    request(&w1, "d-7", &[]);
    w0.shutdown();
    // Worker 0's records are on the queue (counted nowhere until a sender
    // drains them); worker 1 holds d-7.
    assert_eq!(metric(&host, "queue_depth"), 1, "nothing left in worker 0");
    // Worker 1 takes the lease at its next tick and drains the queue.
    let mut ids = Vec::new();
    for _ in 0..30 {
        host.advance(Duration::from_millis(100));
        w1.tick();
        for call in host.http_calls() {
            if call.worker == 1 {
                ids.extend(
                    lines_of(&call.body)
                        .iter()
                        .map(|r| r["request_id"].as_str().unwrap_or_default().to_string()),
                );
                host.respond_http_call(call.token, CallOutcome::status(200, ""));
            }
        }
    }
    ids.sort();
    assert_eq!(
        ids,
        ["d-0", "d-1", "d-2", "d-3", "d-4", "d-5", "d-6", "d-7"]
    );
    assert_eq!(metric(&host, "delivered"), 8);
    assert_eq!(metric(&host, "dropped"), 0);
    assert_eq!(metric(&host, "queue_depth"), 0);
}

/// A record longer than the item limit (64 KiB) goes alone; the ones
/// held before it go first, in order.
#[test]
fn a_long_record_goes_in_its_own_queue_item() {
    let host = host(
        r#"{"log":{"enabled":false},"request_headers":["x-big"],"max_field_bytes":200000,
            "http":{"cluster":"collector","batch_max_records":3}}"#,
    );
    let w0 = host.start_worker();
    w0.tick();
    request(&w0, "s-1", &[]);
    let big = vec![b'a'; 70_000];
    request(&w0, "s-2", &[("x-big", &big)]);
    request(&w0, "s-3", &[]);
    host.advance(Duration::from_millis(100));
    w0.tick();
    let call = host.expect_http_call("collector");
    let ids: Vec<String> = lines_of(&call.body)
        .iter()
        .map(|r| r["request_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids, ["s-1", "s-2", "s-3"]);
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
    host.advance(Duration::from_millis(100));
    w0.tick();
    let call = host.expect_http_call("collector");
    assert_eq!(call.header("content-type"), Some("application/json"));
    let doc: Value = serde_json::from_slice(&call.body).unwrap();
    let recs = doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
        .as_array()
        .unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["body"]["stringValue"], "GET /p 200");
}

/// Fault check: "periodic work runs once per worker when the callout cannot
/// be sent". A refused send (unknown cluster) keeps the batch and the
/// lease: retries come from the holder at the backoff's pace, at most
/// 1.3 × duration ÷ interval attempts whatever the worker count.
#[test]
fn a_refused_send_is_retried_by_the_holder_alone_at_the_backoff_pace() {
    const INTERVAL: Duration = Duration::from_millis(400);
    const RUN: Duration = Duration::from_secs(20);
    const TICK: Duration = Duration::from_millis(100);
    let lease = "switchyard/access-log/switchyard.access-log/sender";
    for workers in [1, 4] {
        let host = Host::new(init)
            .vm_id("access_log")
            .plugin_config(
                r#"{"log":{"enabled":false},"http":{"cluster":"collector","batch_max_records":1,
                    "backoff_initial_ms":400,"backoff_max_ms":400}}"#,
            )
            .clusters(["other"])
            .echo_logs(false)
            .build();
        let ws: Vec<Worker> = (0..workers).map(|_| host.start_worker()).collect();
        for w in &ws {
            w.tick();
        }
        let holder = host.shared_data(lease).unwrap().0;
        request(&ws[workers - 1], "r-1", &[]);
        host.advance(TICK);
        ws[workers - 1].tick();
        host.drain_all();
        assert_eq!(metric(&host, "batch_failures"), 1, "refused at once");
        for _ in 0..RUN.as_millis() / TICK.as_millis() {
            host.advance(TICK);
            for w in &ws {
                w.tick();
            }
        }
        let attempts = metric(&host, "batch_failures");
        let most = 1.3 * RUN.as_secs_f64() / INTERVAL.as_secs_f64();
        assert!(
            (attempts as f64) <= most,
            "{workers} workers: {attempts} attempts in {RUN:?}, at most {most}"
        );
        assert!(
            attempts >= 20,
            "{workers} workers: still retrying ({attempts})"
        );
        assert_eq!(metric(&host, "batches_sent"), attempts);
        assert_eq!(
            host.shared_data(lease).unwrap().0[..8],
            holder[..8],
            "the lease stays with its holder"
        );
        assert_eq!(metric(&host, "queue_depth"), 1, "the record is kept");
        assert_eq!(metric(&host, "dropped"), 0);
    }
}

#[test]
fn bad_config_is_refused_and_names_the_field() {
    let host = Host::new(init)
        .plugin_config(r#"{"http":{"cluster":"c","tick_ms":1}}"#)
        .echo_logs(false)
        .build();
    let worker = host.start_worker();
    assert!(!worker.configured());
    host.expect_log_contains("http.tick_ms: must be between 10 and 60000");
}

/// Alone in its module the access log sees no stage decisions: the
/// `decisions` content of the filter-state sink is refused there (it would
/// set nothing), and the record content works, without a log line.
#[test]
fn decisions_content_needs_the_chain_module() {
    let host = Host::new(init)
        .plugin_config(r#"{"filter_state":{"content":"decisions"}}"#)
        .echo_logs(false)
        .build();
    let worker = host.start_worker();
    assert!(!worker.configured());
    host.expect_log_contains("filter_state.content: `decisions` needs the chain module");

    let host = self::host(r#"{"filter_state":{}}"#);
    let worker = host.start_worker();
    assert!(worker.configured());
    let s = request(&worker, "fs-1", &[]);
    let record = s
        .property(&["switchyard"])
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    let v: Value = serde_json::from_str(&record).unwrap_or(Value::Null);
    assert_eq!(v["request_id"], "fs-1", "{record}");
    assert!(
        logged_records(&host).is_empty(),
        "filter_state alone writes no log line"
    );
}
