//! The rate-limit filter in real Envoy with `--concurrency 2`: exact across
//! workers under 10x overload, shadow mode, forged X-Forwarded-For, bounded
//! memory under a flood of distinct keys, and global mode with two Envoys
//! sharing one rate limit service (RLS).

use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard_integration::backend::{Backend, BackendSpec};
use switchyard_integration::envoy::{Envoy, EnvoyBuilder, Runtime};
use switchyard_integration::paths;
use switchyard_integration::rls::{RlsServer, RlsSpec};
use switchyard_integration::traffic::{self, Load, RequestSpec, Traffic, TrafficReport};

const TEMPLATE: &str = include_str!("../templates/rate_limit.yaml");
const MODULE: &str = "switchyard-rate-limit";

fn backends_var(backend: &Backend) -> Vec<serde_json::Value> {
    let addr = backend.addr();
    vec![json!({"ip": addr.ip().to_string(), "port": addr.port()})]
}

async fn start(config: serde_json::Value, backend: &Backend, rls: Option<SocketAddr>) -> Envoy {
    paths::wasm_module(MODULE).expect("rate-limit module built (make build)");
    let mut b = EnvoyBuilder::new(Runtime::from_env().unwrap(), TEMPLATE)
        .var("rl_config", config.to_string())
        .var("backends", backends_var(backend))
        .concurrency(2);
    if let Some(rls) = rls {
        b = b.var(
            "rls",
            json!({"ip": rls.ip().to_string(), "port": rls.port()}),
        );
    }
    b.start()
        .await
        .unwrap_or_else(|e| panic!("Envoy did not start: {e}"))
}

async fn metric(envoy: &Envoy, name: &str) -> u64 {
    envoy
        .stat(&format!("wasmcustom.switchyard.rate-limit.{name}"))
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Envoy's access log (start time on Envoy's clock, status) once it holds
/// `expected` lines. `/reopen_logs` makes Envoy flush its log buffer now
/// rather than after its 10 s flush interval.
async fn access_log(envoy: &Envoy, expected: u64) -> Vec<(f64, u16)> {
    let path = envoy
        .config()
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("path: \"")
                .and_then(|p| p.strip_suffix('"'))
                .filter(|p| p.ends_with("rate_limit_access.log"))
                .map(str::to_string)
        })
        .expect("template has the access log");
    let mut lines = Vec::new();
    for _ in 0..100 {
        let spec = RequestSpec::get("admin", "/reopen_logs").method("POST");
        let _ = traffic::send(envoy.admin_addr(), &spec).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        lines = text
            .lines()
            .filter_map(|l| {
                let (t, s) = l.split_once(' ')?;
                Some((t.parse().ok()?, s.trim().parse().ok()?))
            })
            .collect();
        if lines.len() as u64 >= expected {
            break;
        }
    }
    assert_eq!(lines.len() as u64, expected, "access log lines");
    lines
}

/// What GCRA must admit over the requests in `log` (all seen by a saturated
/// bucket): burst + rate × (last start − first start), on Envoy's clock.
fn expected_admitted(log: &[(f64, u16)], rate: f64, burst: f64) -> (f64, f64) {
    let first = log.iter().map(|(t, _)| *t).fold(f64::INFINITY, f64::min);
    let last = log
        .iter()
        .map(|(t, _)| *t)
        .fold(f64::NEG_INFINITY, f64::max);
    let span = last - first;
    (burst + rate * span, span)
}

/// 1000 req/s offered (10x the limit) for `seconds`.
async fn overload(ingress: SocketAddr, seconds: u64) -> TrafficReport {
    Traffic::new(
        ingress,
        Load::open_loop(1000.0, Duration::from_secs(seconds), 256),
    )
    .request(|_| RequestSpec::get("api.test", "/items"))
    .max_samples(0)
    .run()
    .await
    .unwrap()
}

/// Overload duration: the issue's 10 s; `SWITCHYARD_RL_OVERLOAD_SECS` shortens it.
fn overload_secs() -> u64 {
    std::env::var("SWITCHYARD_RL_OVERLOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

fn single_bucket(mode: &str) -> serde_json::Value {
    json!({"rules": [{
        "name": "overload",
        "mode": mode,
        "limit": {"requests": 100, "per": "second", "burst": 100}
    }]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_x_overload_admits_rate_times_duration_plus_burst_within_one_percent() {
    let backend = Backend::start(BackendSpec::new("a")).await.unwrap();
    let envoy = start(single_bucket("enforce"), &backend, None).await;
    let ingress = envoy.listener("ingress").unwrap();
    let report = overload(ingress, overload_secs()).await;
    println!("{}", report.summary_table());
    assert_eq!(report.transport_errors + report.timeouts, 0, "{report:?}");

    let log = access_log(&envoy, report.completed).await;
    let admitted = log.iter().filter(|(_, s)| *s == 200).count() as f64;
    let (expected, span) = expected_admitted(&log, 100.0, 100.0);
    let error = (admitted - expected) / expected;
    println!(
        "offered {} over {span:.3} s (Envoy's clock): admitted {admitted}, expected {expected:.1} \
         (100/s x {span:.3} s + burst 100), error {:+.3}%",
        report.completed,
        error * 100.0
    );
    assert!(error.abs() <= 0.01, "admitted {admitted} vs {expected:.1}");
    assert_eq!(report.status_count(200) as f64, admitted);
    assert_eq!(
        report.status_count(200) + report.status_count(429),
        report.completed
    );
    // Everyone else got a proper rejection and the counters agree.
    assert_eq!(metric(&envoy, "allowed").await, report.status_count(200));
    assert_eq!(metric(&envoy, "limited").await, report.status_count(429));
    let exhausted = metric(&envoy, "cas_exhausted").await;
    println!(
        "cas_retries {} cas_exhausted {exhausted}",
        metric(&envoy, "cas_retries").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_carries_retry_after_ratelimit_headers_and_json() {
    let backend = Backend::start(BackendSpec::new("a")).await.unwrap();
    let config = json!({
        "response": {"headers_on_allowed": true},
        "rules": [{
            "name": "tiny",
            "match": {"domains": ["*.test"], "path_prefix": "/", "methods": ["GET"]},
            // Skipped if Envoy had no route name: then nothing would be limited.
            "key": [{"type": "route_name", "missing": "skip_rule"}, {"type": "domain"}],
            "limit": {"requests": 2, "per": "minute", "burst": 2}
        }]
    });
    let envoy = start(config, &backend, None).await;
    let ingress = envoy.listener("ingress").unwrap();
    let client = traffic::HttpClient::new();
    let first = client.get(ingress, "api.test", "/", &[]).await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit-policy"), Some(r#""tiny";q=2;w=60"#));
    assert_eq!(first.header("ratelimit"), Some(r#""tiny";r=1;t=30"#));
    client.get(ingress, "api.test", "/", &[]).await.unwrap();
    let r = client.get(ingress, "api.test", "/", &[]).await.unwrap();
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("30"));
    assert_eq!(r.header("ratelimit-policy"), Some(r#""tiny";q=2;w=60"#));
    assert_eq!(r.header("ratelimit"), Some(r#""tiny";r=0;t=60"#));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body,
        json!({"error": "rate_limited", "policy": "tiny", "retry_after": 30})
    );
    assert_eq!(r.backend(), None);
    // Another domain is another key; a host outside the match is not limited.
    for host in ["b.test", "other.example", "other.example"] {
        let r = client.get(ingress, host, "/", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_admits_everything_and_counts_what_it_would_limit() {
    let backend = Backend::start(BackendSpec::new("a")).await.unwrap();
    let envoy = start(single_bucket("shadow"), &backend, None).await;
    let ingress = envoy.listener("ingress").unwrap();
    let report = overload(ingress, 3).await;
    assert_eq!(report.status_count(200), report.completed, "{report:?}");
    let log = access_log(&envoy, report.completed).await;
    let (expected, span) = expected_admitted(&log, 100.0, 100.0);
    let shadow = metric(&envoy, "shadow_limited").await;
    let would_admit = (report.completed - shadow) as f64;
    println!(
        "shadow: {} requests over {span:.3} s all admitted; shadow_limited {shadow}, \
         would have admitted {would_admit} (expected {expected:.1})",
        report.completed
    );
    assert_eq!(metric(&envoy, "limited").await, 0);
    assert_eq!(metric(&envoy, "allowed").await, report.completed);
    assert!(
        ((would_admit - expected) / expected).abs() <= 0.01,
        "{would_admit} vs {expected:.1}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_leftmost_x_forwarded_for_does_not_give_a_fresh_bucket() {
    let backend = Backend::start(BackendSpec::new("a")).await.unwrap();
    let config = json!({
        "rules": [{"name": "per-client", "key": [{"type": "client_address"}],
                   "limit": {"requests": 1, "per": "minute", "burst": 10}}]
    });
    let envoy = start(config, &backend, None).await;
    let ingress = envoy.listener("ingress").unwrap();
    // The trusted proxy appended the real client 198.51.100.7; the client
    // wrote a different leftmost entry into every request.
    let forged = Traffic::new(ingress, Load::count(100, 4))
        .request(|i| {
            RequestSpec::get("api.test", "/").header(
                "x-forwarded-for",
                format!("203.0.{}.{}, 198.51.100.7", i / 250, i % 250),
            )
        })
        .run()
        .await
        .unwrap();
    assert_eq!(forged.status_count(200), 10, "{forged:?}");
    assert_eq!(forged.status_count(429), 90, "{forged:?}");
    // A different real client (what the trusted proxy saw) has its own bucket.
    let other = traffic::get(
        ingress,
        "api.test",
        "/",
        &[("x-forwarded-for", "203.0.113.1, 198.51.100.8")],
    )
    .await
    .unwrap();
    assert_eq!(other.status, 200);
    // The issue's victim: `<anything>, 7.7.7.7` from the loopback proxy is
    // client 7.7.7.7, not Envoy's own address that it appended to XFF.
    let victim = traffic::get(
        ingress,
        "api.test",
        "/",
        &[("x-forwarded-for", "10.66.66.66, 7.7.7.7")],
    )
    .await
    .unwrap();
    assert_eq!(victim.status, 200);
}

/// Envoy's `/memory` `allocated` (bytes held by Envoy's allocator).
async fn allocated(envoy: &Envoy) -> u64 {
    let body = envoy.admin_get("/memory").await.unwrap();
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let v = &doc["allocated"];
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("no allocated in {body}"))
}

/// `count` requests, each from its own client address (the XFF entry the
/// trusted proxy appended), starting at `first`.
async fn distinct_clients(ingress: SocketAddr, first: u64, count: u64) -> TrafficReport {
    Traffic::new(ingress, Load::count(count, 32))
        .request(move |i| {
            let n = first + i;
            RequestSpec::get("api.test", "/").header(
                "x-forwarded-for",
                format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255),
            )
        })
        .max_samples(0)
        .run()
        .await
        .unwrap()
}

/// Slots in the memory test and the documented per-slot bound (README).
const MEMORY_SLOTS: u64 = 8192;
const BYTES_PER_SLOT_BOUND: u64 = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_keys_keeps_memory_bounded() {
    let backend = Backend::start(BackendSpec::new("a")).await.unwrap();
    let config = json!({
        "slots": MEMORY_SLOTS,
        "rules": [{"name": "per-client", "key": [{"type": "client_address"}],
                   "limit": {"requests": 1, "per": "hour", "burst": 1}}]
    });
    let envoy = start(config, &backend, None).await;
    let ingress = envoy.listener("ingress").unwrap();
    // Warm-up with one key: connections, buffers and stats exist after it.
    let warm = distinct_clients(ingress, 0, 1).await;
    assert_eq!(warm.completed, 1);
    Traffic::new(ingress, Load::count(2000, 32))
        .max_samples(0)
        .run()
        .await
        .unwrap();
    let base = allocated(&envoy).await;
    let half = std::env::var("SWITCHYARD_RL_DISTINCT_KEYS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(50_000)
        / 2;
    let a = distinct_clients(ingress, 1, half).await;
    let mid = allocated(&envoy).await;
    let b = distinct_clients(ingress, 1 + half, half).await;
    let end = allocated(&envoy).await;
    assert_eq!(a.completed + b.completed, 2 * half, "{a:?} {b:?}");
    let collisions = metric(&envoy, "slot_collisions").await;
    let bound = MEMORY_SLOTS * BYTES_PER_SLOT_BOUND;
    println!(
        "allocated: base {base} B, after {half} keys {mid} B (+{}), after {} keys {end} B (+{}); \
         bound slots x {BYTES_PER_SLOT_BOUND} B = {bound} B; slot_collisions {collisions}",
        mid as i64 - base as i64,
        2 * half,
        end as i64 - base as i64,
    );
    // Growth is bounded by the slot table, not by the number of keys...
    assert!(
        end.saturating_sub(base) <= bound,
        "grew {} B > {bound} B",
        end - base
    );
    // ...and the second half of the keys (the table is full by then) adds
    // almost nothing: memory is flat.
    assert!(
        end.saturating_sub(mid) <= bound / 4,
        "second half grew {} B",
        end.saturating_sub(mid)
    );
    // Colliding keys shared buckets: limited, not let through.
    assert!(collisions > 0);
    assert!(
        a.status_count(200) + b.status_count(200) <= MEMORY_SLOTS,
        "{a:?} {b:?}"
    );
}

fn global_config(failure_mode: &str, timeout_ms: u64) -> serde_json::Value {
    json!({
        "global": {"cluster": "rls", "domain": "edge", "timeout_ms": timeout_ms,
                   "failure_mode": failure_mode, "status_on_error": 503},
        "rules": [{"name": "edge-api", "scope": "global",
                   "key": [{"type": "constant", "value": "api"}, {"type": "path"}]}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_envoys_sharing_one_rls_limit_together() {
    let rls = RlsServer::start(RlsSpec::per_minute(20)).await.unwrap();
    let backend = Backend::start(BackendSpec::new("a")).await.unwrap();
    // A remembers over-limit answers (the default pre-check); B asks every time.
    let config_a = global_config("closed", 1000);
    let mut config_b = config_a.clone();
    config_b["global"]["precheck_slots"] = json!(0);
    let (a, b) = tokio::join!(
        start(config_a, &backend, Some(rls.addr())),
        start(config_b, &backend, Some(rls.addr()))
    );
    let run = |envoy: &Envoy| {
        let traffic = Traffic::new(envoy.listener("ingress").unwrap(), Load::count(30, 4))
            .request(|_| RequestSpec::get("api.test", "/orders"));
        async move { traffic.run().await }
    };
    let (ra, rb) = tokio::join!(run(&a), run(&b));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let admitted = ra.status_count(200) + rb.status_count(200);
    let precheck_a = metric(&a, "rls_precheck_limited").await;
    println!(
        "envoy A admitted {}, envoy B admitted {}, together {admitted} (RLS limit 20/min); \
         RLS calls {}, A's pre-check answered {precheck_a} itself",
        ra.status_count(200),
        rb.status_count(200),
        rls.stats().calls
    );
    assert_eq!(admitted, 20, "{ra:?} {rb:?}");
    assert_eq!(ra.status_count(429) + rb.status_count(429), 40);
    assert_eq!(rls.stats().calls + precheck_a, 60);
    assert_eq!(metric(&b, "rls_precheck_limited").await, 0);
    // Both Envoys asked with the same descriptor.
    let last = rls.stats().last.unwrap();
    assert_eq!(last.domain, "edge");
    let entries: Vec<(String, String)> = last.descriptors[0]
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    assert_eq!(
        entries,
        [
            ("generic_key".to_string(), "api".to_string()),
            ("path".to_string(), "/orders".to_string())
        ]
    );
    // The service's numbers reach the client.
    let r = traffic::get(b.listener("ingress").unwrap(), "api.test", "/orders", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some(r#""edge-api";q=20;w=60"#)
    );
    assert!(r.header("retry-after").is_some_and(|v| v != "0"), "{r:?}");
    // A answers from memory until the service's window resets.
    let calls = rls.stats().calls;
    let r = traffic::get(a.listener("ingress").unwrap(), "api.test", "/orders", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some_and(|v| v != "0"), "{r:?}");
    // (A's first rejection came from a service answer, which it remembered.)
    assert_eq!(rls.stats().calls, calls, "answered without a call");
    for envoy in [&a, &b] {
        assert_eq!(metric(envoy, "rls_errors").await, 0);
    }
}

/// A loopback port nobody listens on.
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rls_down_or_slow_follows_the_failure_mode() {
    let backend = Backend::start(BackendSpec::new("a")).await.unwrap();
    // Down (connection refused), fail open: every request goes through.
    let down = closed_port().await;
    let open = start(global_config("open", 200), &backend, Some(down)).await;
    let r = Traffic::new(open.listener("ingress").unwrap(), Load::count(20, 4))
        .run()
        .await
        .unwrap();
    assert_eq!(r.status_count(200), 20, "{r:?}");
    assert_eq!(metric(&open, "rls_errors").await, 20);
    assert_eq!(metric(&open, "allowed").await, 20);
    drop(open);

    // Down, fail closed: every request gets status_on_error.
    let closed = start(global_config("closed", 200), &backend, Some(down)).await;
    let r = Traffic::new(closed.listener("ingress").unwrap(), Load::count(20, 4))
        .run()
        .await
        .unwrap();
    assert_eq!(r.status_count(503), 20, "{r:?}");
    assert_eq!(metric(&closed, "rls_errors").await, 20);
    drop(closed);

    // Up but slower than the timeout, fail closed: the timeout counts as a failure.
    let slow = RlsServer::start(RlsSpec::per_minute(1000).delay(Duration::from_millis(600)))
        .await
        .unwrap();
    let timeout = start(global_config("closed", 100), &backend, Some(slow.addr())).await;
    let started = std::time::Instant::now();
    let r = traffic::get(timeout.listener("ingress").unwrap(), "api.test", "/", &[])
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.text(), r#"{"error":"rate_limit_service_unavailable"}"#);
    assert!(took < Duration::from_millis(500), "answered after {took:?}");
    assert_eq!(metric(&timeout, "rls_errors").await, 1);
}

/// CPU seconds Envoy's process has used (user + system, all threads). The
/// process is found by its run directory on the command line, which is the
/// same path for the native and the Docker runtime.
fn envoy_cpu_secs(envoy: &Envoy) -> f64 {
    let log_path = envoy
        .config()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("path: \"")?
                .strip_suffix('"')
                .map(str::to_string)
        })
        .expect("access log path");
    let run_dir = std::path::Path::new(&log_path)
        .parent()
        .expect("run dir")
        .display()
        .to_string();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !(cmdline.contains(&format!("{run_dir}/envoy.yaml"))
            && cmdline.contains("--concurrency"))
        {
            continue;
        }
        if cmdline.starts_with("docker") {
            continue; // the docker CLI, not Envoy
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .map(|(_, r)| r)
            .unwrap_or("")
            .split(' ')
            .collect();
        // After "pid (comm) ": state is field 3, utime 14, stime 15 (1-based).
        let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        return (utime + stime) / ticks;
    }
    panic!("Envoy process for {run_dir} not found");
}

/// CPU per request of this filter vs Envoy's native local_ratelimit on the
/// same limit (100/s, burst 100), same run, same closed-loop load (nearly all
/// requests are rejected by either). Not part of the default run:
/// `cargo test -p switchyard-integration --test rate_limit -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_cpu_per_request_vs_native_local_ratelimit() {
    let backend = Backend::start(BackendSpec::new("a")).await.unwrap();
    let mut rows = Vec::new();
    for variant in ["native local_ratelimit", "switchyard rate-limit"] {
        let mut b = EnvoyBuilder::new(Runtime::from_env().unwrap(), TEMPLATE)
            .var("rl_config", single_bucket("enforce").to_string())
            .var("backends", backends_var(&backend))
            .concurrency(2);
        if variant.starts_with("native") {
            b = b.var(
                "native_local_ratelimit",
                json!({"max_tokens": 100, "requests_per_fill": 5, "fill_ms": 50}),
            );
        }
        let envoy = b.start().await.unwrap();
        let ingress = envoy.listener("ingress").unwrap();
        let load = |n| {
            let traffic = Traffic::new(ingress, Load::count(n, 16)).max_samples(0);
            async move { traffic.run().await }
        };
        load(2000).await.unwrap();
        let cpu0 = envoy_cpu_secs(&envoy);
        let report = load(40_000).await.unwrap();
        let cpu = envoy_cpu_secs(&envoy) - cpu0;
        let per_request_us = cpu * 1e6 / report.completed as f64;
        println!(
            "{variant:<24} {} requests ({} x 200, {} x 429) in {:.2} s: Envoy CPU {cpu:.2} s = {per_request_us:.1} µs/request",
            report.completed,
            report.status_count(200),
            report.status_count(429),
            report.elapsed.as_secs_f64()
        );
        rows.push(per_request_us);
    }
    println!(
        "switchyard rate-limit / native local_ratelimit CPU per request: {:.2}x",
        rows[1] / rows[0]
    );
}

/// Issue 12, item 9: two workers meeting one fresh slot at once both
/// admitted (2/150 and 19/150 keys with burst 1 were admitted twice):
/// Envoy writes an absent shared-data key whatever the CAS token. Slots now
/// exist from configure time, so every fresh key is admitted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_keys_are_admitted_once_across_workers() {
    let backend = Backend::start(BackendSpec::new("a")).await.unwrap();
    let config = json!({
        "slots": 65536,
        "rules": [{"name": "per-key", "key": [{"type": "header", "name": "x-key"}],
                   "limit": {"requests": 1, "per": "hour", "burst": 1}}]
    });
    let envoy = start(config, &backend, None).await;
    let ingress = envoy.listener("ingress").unwrap();
    // Keep-alive connections, so requests race on the workers, not on
    // connection setup; Envoy spreads the connections over its 2 workers.
    let client = traffic::HttpClient::new();
    let mut twice = 0;
    for round in 0..3 {
        // 150 fresh keys, each sent 6 times at the same moment.
        let mut sends = Vec::new();
        for k in 0..150 {
            for _ in 0..6 {
                let key = format!("r{round}-k{k}");
                let client = client.clone();
                sends.push((
                    k,
                    tokio::spawn(async move {
                        client
                            .get(ingress, "api.test", "/", &[("x-key", key.as_str())])
                            .await
                            .map(|r| r.status)
                    }),
                ));
            }
        }
        let mut admitted = vec![0; 150];
        for (k, h) in sends {
            if h.await.unwrap().unwrap() == 200 {
                admitted[k] += 1;
            }
        }
        // (A key may find its slot taken by an earlier key: 0 admitted.)
        twice += admitted.iter().filter(|n| **n > 1).count();
    }
    assert_eq!(twice, 0, "fresh keys admitted more than once (of 450)");
}
