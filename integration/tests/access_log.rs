//! The access-log filter in real Envoy (`--concurrency 2`): one record per
//! request at the collector, loss accounting through a collector outage,
//! hostile header bytes, redaction, OTLP, and replaying records as traffic.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_integration::backend::{Backend, BackendSpec};
use switchyard_integration::collector::{self, Collector, Mode};
use switchyard_integration::envoy::{Envoy, EnvoyBuilder, Runtime};
use switchyard_integration::paths;
use switchyard_integration::replay::Replay;
use switchyard_integration::traffic::{HttpClient, Load, RequestSpec, Traffic};

const TEMPLATE: &str = include_str!("../templates/access-log.yaml");
const METRIC: &str = "wasmcustom.switchyard.access-log.";

/// The two load tests take turns: the latency comparison of the outage test
/// would otherwise measure the other test's load on a 2-core machine.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The template with the filter's `config`, one backend and the
/// collector, `--concurrency 2`; callers add variables and start it.
fn builder(config: &Value, backend: &Backend, collector: &Collector, inject: bool) -> EnvoyBuilder {
    paths::wasm_module("switchyard-access-log").expect("module built (make build)");
    let addr = backend.addr();
    EnvoyBuilder::new(Runtime::from_env().unwrap(), TEMPLATE)
        .var("access_log_config", config.to_string())
        .var(
            "backends",
            vec![json!({"ip": addr.ip().to_string(), "port": addr.port()})],
        )
        .var("collector_port", collector.addr().port())
        .var("inject", inject)
        .concurrency(2)
}

async fn start(config: Value, backend: &Backend, collector: &Collector, inject: bool) -> Envoy {
    builder(&config, backend, collector, inject)
        .start()
        .await
        .unwrap_or_else(|e| panic!("Envoy did not start: {e}"))
}

async fn metric(envoy: &Envoy, name: &str) -> u64 {
    envoy
        .stat(&format!("{METRIC}{name}"))
        .await
        .unwrap()
        .unwrap_or(0)
}

/// The record lines the log sink wrote: Envoy prefixes each with
/// `[time][thread][info][wasm] [source...] wasm log <root> <vm>: `.
fn log_records(envoy: &Envoy) -> Vec<String> {
    envoy
        .logs()
        .lines()
        .filter(|l| l.contains("wasm log access_log") && l.contains(": {"))
        .map(|l| l[l.find(": {").map_or(0, |i| i + 2)..].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_yields_exactly_one_record() {
    let _turn = HEAVY.lock().await;
    // The issue asks for 100 000; 20 000 keeps this file near a minute on a
    // shared 2-core CI machine (override with SWITCHYARD_ACCESS_LOG_REQUESTS).
    let n: u64 = std::env::var("SWITCHYARD_ACCESS_LOG_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let backend = Backend::start(BackendSpec::new("b1")).await.unwrap();
    let collector = Collector::start().await.unwrap();
    let config = json!({
        "request_headers": ["x-tenant"],
        "http": {"cluster": "collector", "batch_max_records": 500, "flush_interval_ms": 200}
    });
    let envoy = start(config, &backend, &collector, false).await;
    let ingress = envoy.listener("ingress").unwrap();

    let t0 = Instant::now();
    let report = Traffic::new(ingress, Load::count(n, 32))
        .request(|i| {
            RequestSpec::get("shop.test", format!("/item/{i}?q={}", i % 7))
                .header("x-request-id", format!("req-{i:06}"))
                .header("x-tenant", format!("t{}", i % 3))
        })
        .max_samples(0)
        .run()
        .await
        .unwrap();
    let sent_in = t0.elapsed();
    assert_eq!(report.status_count(200), n, "{}", report.summary_table());

    let (done, stats) = collector
        .wait_until(Duration::from_secs(60), |s| s.unique_request_ids >= n)
        .await;
    let delivered_in = t0.elapsed();
    // Give late duplicates, if any, a chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats_after = collector.stats();
    println!(
        "{n} requests in {sent_in:?} ({:.0} req/s), all records at the collector after {delivered_in:?}: {stats_after:?}",
        report.rps()
    );
    assert!(done, "collector has {stats:?}");
    assert_eq!(stats_after.records, n, "{stats_after:?}");
    assert_eq!(stats_after.unique_request_ids, n);
    assert_eq!(stats_after.duplicate_records, 0);
    assert_eq!(stats_after.bad_lines, 0, "{:?}", collector.bad_lines());
    let ids = collector.request_ids();
    for i in 0..n {
        assert_eq!(ids.get(&format!("req-{i:06}")), Some(&1), "req-{i:06}");
    }
    assert_eq!(metric(&envoy, "records").await, n);
    assert_eq!(metric(&envoy, "delivered").await, n);
    assert_eq!(metric(&envoy, "dropped").await, 0);
    assert_eq!(metric(&envoy, "queue_depth").await, 0);
    let batches = metric(&envoy, "batches_sent").await;
    println!(
        "batches sent: {batches}, collector batches: {}",
        stats_after.batches
    );

    // A record carries the Envoy-style fields.
    let r = collector
        .records()
        .into_iter()
        .find(|r| r["request_id"] == "req-000007")
        .unwrap();
    println!("record: {r}");
    assert_eq!(r["method"], "GET");
    assert_eq!(r["path"], "/item/7?q=0");
    assert_eq!(r["authority"], "shop.test");
    assert_eq!(r["response_code"], 200);
    assert_eq!(r["response_flags"], "-");
    assert_eq!(r["protocol"], "HTTP/1.1");
    assert_eq!(r["upstream_cluster"], "backends");
    assert_eq!(r["route_name"], "default");
    assert_eq!(r["upstream_host"], backend.addr().to_string());
    assert_eq!(r["client_address"], "127.0.0.1");
    assert_eq!(r["request_headers"]["x-tenant"], "t1");
    assert_eq!(r["response_code_details"], "via_upstream");
    assert!(r["start_time"].as_str().unwrap().ends_with('Z'));
    assert!(
        r["duration"].is_u64() && r["upstream_service_time"].is_u64(),
        "{r}"
    );

    // The log sink: one parsable line per request as well.
    let lines = log_records(&envoy);
    let mut seen = HashSet::new();
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(
            seen.insert(collector::request_id(&v).unwrap()),
            "twice: {l}"
        );
    }
    assert_eq!(lines.len() as u64, n);

    // The records replay as the same requests.
    let replay = Replay::parse(&collector.to_json_lines());
    assert_eq!(
        replay.requests.len() as u64,
        n,
        "{:?}",
        &replay.notes[..replay.notes.len().min(5)]
    );
    assert!(
        replay.notes.is_empty(),
        "{:?}",
        &replay.notes[..5.min(replay.notes.len())]
    );
    let last = replay.requests.last().unwrap();
    assert!(last.offset > Duration::ZERO && last.offset < sent_in + Duration::from_secs(1));
    let first7 = replay
        .requests
        .iter()
        .find(|r| r.request_id.as_deref() == Some("req-000007"))
        .unwrap();
    assert_eq!(first7.spec.path, "/item/7?q=0");
    assert_eq!(first7.spec.host, "shop.test");
    assert!(
        first7
            .spec
            .headers
            .contains(&("x-tenant".into(), "t1".into()))
    );
    let client = HttpClient::new();
    let mut sent_ids = Vec::new();
    for r in replay.requests.iter().take(20) {
        let mut spec = r.spec.clone();
        for h in &mut spec.headers {
            if h.0 == "x-request-id" {
                h.1 = format!("replay-{}", h.1);
                sent_ids.push(h.1.clone());
            }
        }
        assert_eq!(client.send(ingress, &spec).await.unwrap().status, 200);
    }
    let (replayed, s) = collector
        .wait_until(Duration::from_secs(10), |s| s.unique_request_ids >= n + 20)
        .await;
    assert!(replayed, "{s:?}");
    // The replayed requests' own ids (records in start-time order: two
    // requests started in the same millisecond may come either way).
    assert_eq!(sent_ids.len(), 20);
    let at_collector = collector.request_ids();
    for id in &sent_ids {
        assert!(at_collector.contains_key(id), "{id} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_outage_is_accounted_and_does_not_slow_requests() {
    let _turn = HEAVY.lock().await;
    let backend = Backend::start(BackendSpec::new("b1")).await.unwrap();
    let collector = Collector::start().await.unwrap();
    // A small buffer so a 3 s outage at this rate must drop (and count).
    let config = json!({
        "log": {"enabled": false},
        "http": {
            "cluster": "collector", "batch_max_records": 200, "flush_interval_ms": 200,
            "buffer_max_records": 1600, "backoff_initial_ms": 100, "backoff_max_ms": 800,
            "timeout_ms": 1000
        }
    });
    let envoy = start(config, &backend, &collector, false).await;
    let ingress = envoy.listener("ingress").unwrap();

    const RATE: f64 = 800.0;
    let phases = [
        (3.0, Mode::Up),
        (3.0, Mode::Unavailable),
        (2.0, Mode::Up),
        (3.0, Mode::Refusing),
        (3.0, Mode::Up),
    ];
    let total: f64 = phases.iter().map(|p| p.0).sum();
    let traffic = Traffic::new(
        ingress,
        Load::open_loop(RATE, Duration::from_secs_f64(total), 256),
    )
    .request(|i| RequestSpec::get("shop.test", "/x").header("x-request-id", format!("o-{i:06}")));
    let run = tokio::spawn(async move { traffic.run().await });
    let mut at = 0.0;
    for (secs, mode) in phases {
        collector.set_mode(mode).await.unwrap();
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        at += secs;
        println!("t={at:.0}s collector was {mode:?}: {:?}", collector.stats());
    }
    let report = run.await.unwrap().unwrap();
    println!("{}", report.summary_table());
    assert_eq!(report.completed, report.sent, "{report:?}");
    assert_eq!(report.status_count(200), report.completed);

    // Every request has a record that is either delivered or counted dropped.
    let requests = report.completed;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (delivered, dropped, depth) = loop {
        let delivered = collector.stats().unique_request_ids;
        let dropped = metric(&envoy, "dropped").await;
        let depth = metric(&envoy, "queue_depth").await;
        if delivered + dropped == requests && depth == 0 || Instant::now() > deadline {
            break (delivered, dropped, depth);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stats = collector.stats();
    println!(
        "requests {requests}, delivered {delivered}, dropped {dropped} (buffer full {}, rejected {}, attempts {}, enqueue {}), depth {depth}, batches sent {}, failures {}, collector {stats:?}",
        metric(&envoy, "dropped_buffer_full").await,
        metric(&envoy, "dropped_rejected").await,
        metric(&envoy, "dropped_attempts").await,
        metric(&envoy, "dropped_enqueue").await,
        metric(&envoy, "batches_sent").await,
        metric(&envoy, "batch_failures").await,
    );
    assert_eq!(metric(&envoy, "records").await, requests);
    assert_eq!(delivered + dropped, requests);
    assert_eq!(depth, 0);
    assert_eq!(stats.duplicate_records, 0);
    assert_eq!(metric(&envoy, "delivered").await, delivered);
    assert!(
        dropped > 0,
        "a 3 s outage at {RATE} req/s overflows a 1600-record buffer"
    );
    assert!(metric(&envoy, "batch_failures").await > 0);
    assert!(
        stats.rejected_posts > 0,
        "the sender kept trying during the 503 phase"
    );
    // Delivery resumed: the last second's requests all arrived.
    let ids = collector.request_ids();
    let tail = (requests as f64 - RATE) as u64;
    let missing: Vec<u64> = (tail..requests)
        .filter(|i| !ids.contains_key(&format!("o-{i:06}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of the last {} missing",
        missing.len(),
        requests - tail
    );

    // Request latency during the outages vs. while the collector was up.
    let window = |a: f64, b: f64| {
        let mut h = Vec::new();
        for s in &report.samples {
            let t = s.at.as_secs_f64();
            if t >= a && t < b {
                h.push(s.latency);
            }
        }
        h
    };
    let p99 = |mut v: Vec<Duration>| {
        v.sort();
        v[(v.len() * 99 / 100).min(v.len() - 1)]
    };
    let per_second: Vec<String> = (0..14)
        .map(|t| {
            let w = window(t as f64, t as f64 + 1.0);
            if w.is_empty() {
                "-".into()
            } else {
                format!("{}:{:?}", t, p99(w))
            }
        })
        .collect();
    println!("p99 per second: {per_second:?}");
    // Each phase separately: the worst healthy phase is the noise floor of
    // this (shared) machine; an outage phase must stay near it.
    let healthy = [window(0.5, 3.0), window(6.0, 8.0), window(11.0, 14.0)]
        .into_iter()
        .map(p99)
        .max()
        .unwrap();
    let outage = [window(3.0, 6.0), window(8.0, 11.0)]
        .into_iter()
        .map(p99)
        .max()
        .unwrap();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load1: f64 = load
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "p99 latency: worst healthy phase {healthy:?}, worst outage phase {outage:?} (load {load1} on {cores} cores)"
    );
    let near = outage <= healthy * 3 + Duration::from_millis(20);
    if load1 > 2.0 * cores {
        // Other processes own the CPUs: latency says nothing about the filter.
        if !near {
            println!(
                "WARNING: outage p99 {outage:?} vs healthy {healthy:?} not compared: machine overloaded"
            );
        }
    } else {
        assert!(near, "outage p99 {outage:?} vs healthy {healthy:?}");
    }
}

/// Sends raw bytes (anything hyper would refuse to write) and returns the
/// status line, if any.
fn raw_request(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_stay_one_json_line_and_secrets_stay_out() {
    let backend = Backend::start(BackendSpec::new("b1")).await.unwrap();
    let collector = Collector::start().await.unwrap();
    let config = json!({
        "request_headers": ["x-evil", "x-tenant", "authorization", "cookie", "proxy-authorization"],
        "response_headers": ["x-evil-resp", "set-cookie"],
        "http": {"cluster": "collector", "flush_interval_ms": 100}
    });
    let envoy = start(config, &backend, &collector, true).await;
    let ingress = envoy.listener("ingress").unwrap();
    let client = HttpClient::new();

    // Secrets in every redacted header, quotes and backslashes elsewhere.
    let spec = RequestSpec::get("shop.test", "/secret")
        .header("x-request-id", "secret-1")
        .header("authorization", "Bearer SECRET-TOKEN-123")
        .header("proxy-authorization", "Basic SECRET-PROXY-000")
        .header("cookie", "session=SECRET-COOKIE-456")
        .header("x-tenant", r#"t"1\ {"forged":true} "#);
    assert_eq!(client.send(ingress, &spec).await.unwrap().status, 200);
    // Lua adds CR, LF, NUL, quotes and invalid UTF-8 to request and response
    // headers; the route also sets a set-cookie with a secret.
    // Envoy writes that response header to the client as it is, which no
    // HTTP client parses: send it on a raw socket.
    let status = raw_request(
        ingress,
        b"GET /inject HTTP/1.1\r\nhost: shop.test\r\nx-request-id: inject-1\r\nx-inject: 1\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    // Invalid UTF-8 and quotes straight from the client, on the raw socket.
    let raw = b"GET /raw?q=%22x%22 HTTP/1.1\r\nhost: shop.test\r\nx-request-id: raw-1\r\nx-evil: \xff\xfe\"quoted\" \\ \xc3(\r\nuser-agent: \xe2\x80\xa8ua\r\nconnection: close\r\n\r\n";
    println!("raw request: {}", raw_request(ingress, raw));
    // Bare CR / NUL in a header: Envoy's codec refuses these itself.
    for (i, bad) in [&b"a\rb"[..], b"a\0b"].iter().enumerate() {
        let mut req = format!(
            "GET /codec HTTP/1.1\r\nhost: shop.test\r\nx-request-id: codec-{i}\r\nx-evil: "
        )
        .into_bytes();
        req.extend_from_slice(bad);
        req.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
        println!("codec-{i}: {}", raw_request(ingress, &req));
    }

    let records = metric(&envoy, "records").await;
    let (done, stats) = collector
        .wait_until(Duration::from_secs(15), |s| s.records >= records)
        .await;
    assert!(
        done && records >= 3,
        "records {records}, collector {stats:?}"
    );
    assert_eq!(stats.bad_lines, 0, "{:?}", collector.bad_lines());

    // The log sink: every record is one line that parses.
    let lines = log_records(&envoy);
    assert_eq!(lines.len() as u64, records, "{lines:#?}");
    for l in &lines {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
    let log = envoy.logs();
    for secret in [
        "SECRET-TOKEN-123",
        "SECRET-COOKIE-456",
        "SECRET-PROXY-000",
        "SECRET-SETCOOKIE-789",
    ] {
        assert!(
            !collector.bodies_contain(secret.as_bytes()),
            "{secret} reached the collector"
        );
        assert!(!log.contains(secret), "{secret} in Envoy's log");
    }
    let by_id = |id: &str| {
        collector
            .records()
            .into_iter()
            .find(|r| r["request_id"] == id)
            .unwrap_or_else(|| panic!("no record {id}"))
    };
    let s = by_id("secret-1");
    assert_eq!(s["request_headers"]["authorization"], "[REDACTED]");
    assert_eq!(s["request_headers"]["cookie"], "[REDACTED]");
    assert_eq!(s["request_headers"]["x-tenant"], r#"t"1\ {"forged":true}"#);
    assert!(s.get("forged").is_none());

    let inj = by_id("inject-1");
    println!("injected: {inj}");
    let evil = inj["request_headers"]["x-evil"].as_str().unwrap();
    for part in ["cr\rlf\nquote\"back\\bad", "end"] {
        assert!(evil.contains(part), "{evil:?}");
    }
    assert!(
        evil.contains('\u{fffd}'),
        "invalid UTF-8 became U+FFFD: {evil:?}"
    );
    assert!(
        inj["response_headers"]["x-evil-resp"]
            .as_str()
            .unwrap()
            .contains("cr\rlf\n")
    );
    assert_eq!(inj["response_headers"]["set-cookie"], "[REDACTED]");

    let raw = by_id("raw-1");
    println!("raw: {raw}");
    assert!(
        raw["request_headers"]["x-evil"]
            .as_str()
            .unwrap()
            .contains("\"quoted\" \\")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_naming_and_otlp_batches() {
    let backend = Backend::start(BackendSpec::new("b1")).await.unwrap();
    let collector = Collector::start().await.unwrap();
    let config = json!({
        "naming": "otel",
        "request_headers": ["x-tenant"],
        "log": {"enabled": false},
        "http": {"cluster": "collector", "format": "otlp_json", "batch_max_records": 100, "flush_interval_ms": 100}
    });
    let envoy = start(config, &backend, &collector, false).await;
    let ingress = envoy.listener("ingress").unwrap();
    let n = 1000;
    let report = Traffic::new(ingress, Load::count(n, 8))
        .request(|i| {
            RequestSpec::get("api.test:8080", format!("/v/{i}?k=v"))
                .header("x-request-id", format!("ot-{i}"))
                .header("x-tenant", "t9")
        })
        .run()
        .await
        .unwrap();
    assert_eq!(report.status_count(200), n);
    let (done, stats) = collector
        .wait_until(Duration::from_secs(20), |s| s.unique_request_ids >= n)
        .await;
    assert!(done, "{stats:?}");
    assert_eq!(
        (stats.records, stats.duplicate_records, stats.bad_lines),
        (n, 0, 0)
    );
    let r = collector
        .records()
        .into_iter()
        .find(|r| collector::request_id(r).as_deref() == Some("ot-5"))
        .unwrap();
    println!("otel record: {r}");
    assert_eq!(r["http.request.method"], "GET");
    assert_eq!(r["url.path"], "/v/5");
    assert_eq!(r["url.query"], "k=v");
    assert_eq!(r["http.response.status_code"], 200);
    assert_eq!(r["server.address"], "api.test");
    assert_eq!(r["server.port"], 8080);
    assert_eq!(r["client.address"], "127.0.0.1");
    assert_eq!(r["http.request.header.x-tenant"][0], "t9");
    let replay = Replay::parse(&collector.to_json_lines());
    assert_eq!(replay.requests.len() as u64, n);
    let spec = &replay
        .requests
        .iter()
        .find(|q| q.request_id.as_deref() == Some("ot-5"))
        .unwrap()
        .spec;
    assert_eq!(
        (spec.host.as_str(), spec.path.as_str()),
        ("api.test:8080", "/v/5?k=v")
    );
}

/// Sends one HTTP/1.1 GET from `peer_ip` (a loopback address) with the
/// given X-Forwarded-For and returns the status line.
async fn get_from(peer_ip: &str, to: SocketAddr, request_id: &str, xff: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(peer_ip.parse().unwrap(), 0))
        .unwrap();
    let mut s = socket.connect(to).await.unwrap();
    let xff = xff.map_or(String::new(), |v| format!("x-forwarded-for: {v}\r\n"));
    let req = format!(
        "GET /who HTTP/1.1\r\nhost: shop.test\r\nx-request-id: {request_id}\r\n{xff}connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Issue 12, item 3: the filters' client address is the one Envoy itself
/// determines, in every topology: direct client, a front proxy on loopback
/// (Envoy then appends its own address to XFF, not the peer's), a front
/// proxy on another address, `use_remote_address` true and false, and
/// 0–2 trusted hops. A differential test: for each request, the record's
/// `client_address` equals Envoy's `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_address_is_envoys_own_in_every_topology() {
    let backend = Backend::start(BackendSpec::new("b1")).await.unwrap();
    let collector = Collector::start().await.unwrap();
    let xffs: [Option<&str>; 9] = [
        None,
        Some("7.7.7.7"),
        Some("6.6.6.6, 7.7.7.7"),
        Some("5.5.5.5,6.6.6.6, 7.7.7.7"),
        Some("forged-garbage, 7.7.7.7"),
        Some("7.7.7.7, not-an-ip"),
        Some("2001:db8::7"),
        Some("1.1.1.1, 127.0.0.1"),
        // A scoped IPv6 client: Envoy keeps the zone (as an index).
        Some("fe80::1%lo"),
    ];
    // 127.0.0.1: a client or proxy on Envoy's own address; 127.0.0.2: a
    // front proxy on another (loopback, as tests must be) address.
    let peers = ["127.0.0.1", "127.0.0.2"];
    let mut compared = 0;
    for use_remote_address in [true, false] {
        for hops in 0..=2u32 {
            let topology = format!("use_remote_address {use_remote_address}, {hops} trusted hops");
            let config = json!({"log": {"enabled": true}});
            let envoy = builder(&config, &backend, &collector, false)
                .var("use_remote_address", use_remote_address)
                .var("xff_num_trusted_hops", hops)
                .var("native_client_log", true)
                .start()
                .await
                .unwrap_or_else(|e| panic!("Envoy did not start: {e}"));
            let ingress = envoy.listener("ingress").unwrap();
            let mut ids = Vec::new();
            for peer in peers {
                for (i, xff) in xffs.iter().enumerate() {
                    let id = format!("ca-{peer}-{i}");
                    let status = get_from(peer, ingress, &id, *xff).await;
                    assert!(status.contains(" 200 "), "{topology}: {status}");
                    ids.push((id, peer, *xff));
                }
            }
            // Envoy flushes file access logs about once a second.
            let deadline = Instant::now() + Duration::from_secs(10);
            let (native, records) = loop {
                let logs = std::fs::read_to_string(envoy.run_dir().join("native_client.log"))
                    .unwrap_or_default();
                let native: std::collections::HashMap<String, String> = logs
                    .lines()
                    .filter_map(|l| {
                        let rest = &l[l.find("native-client ")? + "native-client ".len()..];
                        let (id, addr) = rest.trim().split_once(' ')?;
                        Some((id.to_string(), addr.to_string()))
                    })
                    .collect();
                let records: std::collections::HashMap<String, Value> = log_records(&envoy)
                    .iter()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter_map(|v| Some((v["request_id"].as_str()?.to_string(), v)))
                    .collect();
                let complete = ids
                    .iter()
                    .all(|(id, ..)| native.contains_key(id) && records.contains_key(id));
                if complete || Instant::now() > deadline {
                    break (native, records);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            for (id, peer, xff) in &ids {
                let envoys = native
                    .get(id)
                    .unwrap_or_else(|| panic!("{topology}: no native line for {id}"));
                let ours = &records
                    .get(id)
                    .unwrap_or_else(|| panic!("{topology}: no record for {id}"))["client_address"];
                assert_eq!(
                    ours.as_str(),
                    Some(envoys.as_str()),
                    "{topology}, peer {peer}, XFF {xff:?}"
                );
                compared += 1;
            }
            // The issue's case: `<anything>, 7.7.7.7` from 127.0.0.1 with one
            // trusted hop at the edge is client 7.7.7.7.
            if use_remote_address && hops == 1 {
                let r = &records["ca-127.0.0.1-4"];
                assert_eq!(r["client_address"], "7.7.7.7", "{r}");
            }
        }
    }
    assert_eq!(compared, 6 * peers.len() * xffs.len());
}

/// The record's Envoy attributes hold Envoy's values in real Envoy, for an
/// upstream answer and for a direct response: protocol, route, code
/// details, flags, bytes, upstream host and the start time (a timestamp).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_hold_envoys_values() {
    paths::wasm_module("switchyard-access-log").expect("module built (make build)");
    let backend = Backend::start(BackendSpec::new("b1")).await.unwrap();
    let collector = Collector::start().await.unwrap();
    let addr = backend.addr();
    let envoy = EnvoyBuilder::new(Runtime::from_env().unwrap(), TEMPLATE)
        .var("access_log_config", json!({}).to_string())
        .var(
            "backends",
            vec![json!({"ip": addr.ip().to_string(), "port": addr.port()})],
        )
        .var("collector_port", collector.addr().port())
        .var("inject", false)
        .start()
        .await
        .unwrap_or_else(|e| panic!("Envoy did not start: {e}"));
    let ingress = envoy.listener("ingress").unwrap();
    for (i, inject) in [(0, ""), (1, "x-inject: 1\r\n"), (2, "")] {
        let req = format!(
            "GET /b/{i} HTTP/1.1\r\nhost: shop.test\r\nx-request-id: batch-{i}\r\n{inject}connection: close\r\n\r\n"
        );
        let status = tokio::task::spawn_blocking(move || raw_request(ingress, req.as_bytes()))
            .await
            .unwrap();
        assert!(status.contains("200"), "{status}");
    }
    let records = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let r = log_records(&envoy);
            if r.len() >= 3 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("3 records: {}", envoy.logs()));
    let record = |id: &str| -> Value {
        records
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|r| r["request_id"] == id)
            .unwrap()
    };
    for id in ["batch-0", "batch-2"] {
        let r = record(id);
        assert_eq!(r["protocol"], "HTTP/1.1", "{r}");
        assert_eq!(r["route_name"], "default", "{r}");
        assert_eq!(r["response_code_details"], "via_upstream", "{r}");
        assert_eq!(r["response_flags"], "-", "{r}");
        assert!(r["bytes_sent"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["upstream_host"], addr.to_string(), "{r}");
        // request.time (a timestamp, 8 bytes of ns): a time
        // of these years, not 1970 or garbage.
        let start = r["start_time"].as_str().unwrap();
        let year: i32 = start.get(..4).and_then(|y| y.parse().ok()).unwrap_or(0);
        assert!((2025..2100).contains(&year), "{start}");
    }
    let direct = record("batch-1");
    assert_eq!(direct["route_name"], "injected", "{direct}");
    assert_eq!(
        direct["response_code_details"], "direct_response",
        "{direct}"
    );
    assert_eq!(direct["bytes_sent"], 7, "{direct}");
    assert_eq!(direct["upstream_host"], Value::Null, "{direct}");
}

/// The `filter_state` sink in real Envoy: the record the filter leaves in
/// filter state in `on_log` is there for the connection manager's own file
/// access log (`%FILTER_STATE(wasm.switchyard:PLAIN)%`), byte
/// for byte the line the log sink writes, one line per request, hostile
/// header bytes included, for an upstream answer and a direct response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_state_sink_hands_records_to_envoys_access_log() {
    let backend = Backend::start(BackendSpec::new("b1")).await.unwrap();
    let collector = Collector::start().await.unwrap();
    let config = json!({
        "request_headers": ["x-evil", "x-tenant"],
        "log": {"enabled": true},
        "filter_state": {},
    });
    let envoy = builder(&config, &backend, &collector, true)
        .var("filter_state_log", true)
        .start()
        .await
        .unwrap_or_else(|e| panic!("Envoy did not start: {e}"));
    let ingress = envoy.listener("ingress").unwrap();
    let n = 40u64;
    let plain = n - n / 5;
    let report = Traffic::new(ingress, Load::count(plain, 4))
        .request(|i| {
            RequestSpec::get("shop.test", format!("/fs/{i}"))
                .header("x-request-id", format!("fs-{i:03}"))
                .header("x-tenant", format!("t{i}"))
        })
        .max_samples(0)
        .run()
        .await
        .unwrap();
    assert_eq!(
        report.status_count(200),
        plain,
        "{}",
        report.summary_table()
    );
    // The rest take the direct-response route, where a Lua filter adds
    // CR, LF, quotes, invalid UTF-8 and NUL to the request and response
    // (raw requests: the response is no valid HTTP for a client library).
    for i in plain..n {
        let req = format!(
            "GET /fs/{i} HTTP/1.1\r\nhost: shop.test\r\nx-request-id: fs-{i:03}\r\nx-inject: 1\r\nconnection: close\r\n\r\n"
        );
        let status = raw_request(ingress, req.as_bytes());
        assert!(status.contains(" 200 "), "{status}");
    }

    // Envoy flushes file access logs about once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (lines, logged) = loop {
        let file = std::fs::read_to_string(envoy.run_dir().join("records.log")).unwrap_or_default();
        let lines: Vec<String> = file.lines().map(str::to_string).collect();
        let logged = log_records(&envoy);
        if (lines.len() as u64 >= n && logged.len() as u64 >= n) || Instant::now() > deadline {
            break (lines, logged);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(lines.len() as u64, n, "records.log: {lines:?}");
    let mut ids = HashSet::new();
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["response_code"], 200, "{v}");
        assert!(ids.insert(v["request_id"].as_str().unwrap().to_string()));
        // The same bytes as the log sink's line for that request.
        assert!(logged.contains(line), "not in Envoy's log: {line}");
    }
    assert_eq!(ids.len() as u64, n);
    let injected: Vec<&String> = lines.iter().filter(|l| l.contains("x-evil")).collect();
    assert_eq!(injected.len() as u64, n / 5, "{injected:?}");
    assert!(
        injected
            .iter()
            .all(|l| l.contains(r#"\r"#) && !l.contains('\r')),
        "{injected:?}"
    );
    assert_eq!(metric(&envoy, "filter_state_failures").await, 0);
    assert_eq!(metric(&envoy, "records").await, n);
}
