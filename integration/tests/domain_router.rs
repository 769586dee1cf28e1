//! domain-router in real Envoy: the same domains through Envoy's native
//! virtual hosts and through the filter pick the same cluster; a 90/10 split
//! holds over 10 000 requests; a client cannot pick the cluster; a table
//! swapped under load fails no request and a broken table keeps the old one.

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use switchyard_integration::backend::{BackendSet, BackendSpec};
use switchyard_integration::control::ControlServer;
use switchyard_integration::envoy::{Envoy, EnvoyBuilder, Runtime};
use switchyard_integration::paths;
use switchyard_integration::traffic::{self, HttpClient, Load, RequestSpec, Traffic};

const FILTER: &str = include_str!("../templates/domain-router.yaml");
const NATIVE: &str = include_str!("../templates/domain-router-native.yaml");
const HEADER: &str = "x-switchyard-cluster";

/// The tests of this file run one at a time even under `--test-threads 2`:
/// the timing assertions (visibility, throughput) must not share two cores
/// with another test's Envoy and load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn backends_var(set: &BackendSet) -> Vec<Value> {
    set.addrs()
        .into_iter()
        .map(|(name, a)| json!({"name": name, "ip": a.ip().to_string(), "port": a.port()}))
        .collect()
}

async fn start_filter(plugin: Value, backends: &BackendSet, control: Option<SocketAddr>) -> Envoy {
    paths::wasm_module("switchyard-domain-router").expect("module built (make build)");
    EnvoyBuilder::new(Runtime::from_env().unwrap(), FILTER)
        .var("plugin_config", plugin.to_string())
        .var("cluster_header", HEADER)
        .var("backends", backends_var(backends))
        .var(
            "control",
            control.map(|a| json!({"ip": a.ip().to_string(), "port": a.port()})),
        )
        .concurrency(2)
        .start()
        .await
        .unwrap_or_else(|e| panic!("Envoy did not start: {e}"))
}

/// (virtual host name, domain patterns), one backend / cluster each.
const VHOSTS: &[(&str, &[&str])] = &[
    ("exact", &["api.example.com"]),
    ("suffix", &["*.example.com"]),
    ("suffix-dash", &["*-bar.example.com"]),
    ("prefix", &["www.*"]),
    ("prefix-long", &["www.example.*"]),
    ("prefix-dash", &["foo-*"]),
    ("mixed-case", &["API.Mixed.COM", "Other.Mixed.com"]),
    ("tld", &["*.com"]),
    // `*` inside a name is a literal character in Envoy (issue 12, item 9).
    ("literal-star", &["a*b.example.org"]),
    ("star-suffix", &["*z*"]),
    ("default", &["*"]),
];

const HOSTS: &[&str] = &[
    "api.example.com",
    "API.EXAMPLE.COM:8080",
    "x.example.com",
    "X.Y.Example.Com:443",
    "foo-bar.example.com",
    "-bar.example.com",
    "www.example.com",
    "www.example.org",
    "WWW.other.org:1",
    "www.",
    "foo-x",
    "FOO-Y:10000",
    "foo-",
    "example.com",
    ".example.com",
    "api.mixed.com",
    "Api.MIXED.com:443",
    "other.mixed.com",
    "nothing",
    "localhost:10000",
    "[::1]:80",
    "x.y.com:99",
    "www.example.com.",
    "a*b.example.org",
    "axb.example.org",
    "xz*",
    "xzz",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_native_virtual_hosts_vs_filter() {
    let _serial = SERIAL.lock().await;
    let backends = BackendSet::start_all(VHOSTS.iter().map(|(n, _)| BackendSpec::new(*n)))
        .await
        .unwrap();
    let table = json!({"virtual_hosts": VHOSTS.iter().map(|(n, d)| json!({
        "name": n, "domains": d, "rules": [{"cluster": n}]})).collect::<Vec<_>>()});
    let filter = start_filter(json!({"table": table}), &backends, None).await;
    let native = EnvoyBuilder::new(Runtime::from_env().unwrap(), NATIVE)
        .var(
            "vhosts",
            VHOSTS
                .iter()
                .map(|(n, d)| json!({"name": n, "domains": d, "cluster": n}))
                .collect::<Vec<_>>(),
        )
        .var("backends", backends_var(&backends))
        .start()
        .await
        .unwrap_or_else(|e| panic!("native Envoy did not start: {e}"));
    let (f, n) = (
        filter.listener("ingress").unwrap(),
        native.listener("ingress").unwrap(),
    );
    let mut rows = Vec::new();
    for host in HOSTS {
        let by_native = traffic::get(n, host, "/", &[]).await.unwrap();
        let by_filter = traffic::get(f, host, "/", &[]).await.unwrap();
        assert_eq!(by_native.status, 200, "native {host}: {}", by_native.text());
        assert_eq!(by_filter.status, 200, "filter {host}: {}", by_filter.text());
        let (a, b) = (by_native.backend().unwrap(), by_filter.backend().unwrap());
        rows.push(format!("{host:<24} native={a:<12} filter={b}"));
        assert_eq!(a, b, "host {host:?}");
    }
    println!("{}", rows.join("\n"));
    // Every kind of pattern was exercised.
    for (name, _) in VHOSTS {
        assert!(
            rows.iter().any(|r| r.ends_with(&format!("filter={name}"))),
            "{name} never chosen"
        );
    }
}

fn split_table() -> Value {
    json!({"virtual_hosts": [{"domains": ["canary.test"], "rules": [
        {"name": "canary-split", "weighted_clusters": {"clusters": [
            {"name": "stable", "weight": 90}, {"name": "canary", "weight": 10}]}}]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_and_forged_routing_header() {
    let _serial = SERIAL.lock().await;
    let backends = BackendSet::start_all(["stable", "canary", "secret"].map(BackendSpec::new))
        .await
        .unwrap();
    let plugin = json!({"table": split_table(), "no_match": {"action": "pass_through"}});
    let envoy = start_filter(plugin, &backends, None).await;
    let ingress = envoy.listener("ingress").unwrap();

    // 90/10 over 10 000 requests (Envoy generates a fresh x-request-id each).
    let report = Traffic::new(ingress, Load::count(10_000, 16))
        .spec(RequestSpec::get("canary.test", "/"))
        .run()
        .await
        .unwrap();
    println!("{}", report.summary_table());
    assert_eq!(
        report.status_count(200),
        10_000,
        "{}",
        report.summary_table()
    );
    let canary = report.share("canary") * 100.0;
    println!("canary share: {canary:.2}% (want 10 ± 1.5)");
    assert!((canary - 10.0).abs() <= 1.5, "canary share {canary:.2}%");
    let stats = envoy.stats().await.unwrap();
    assert_eq!(
        stats.get("wasmcustom.switchyard.domain-router.rule.canary-split.matches"),
        Some(&10_000)
    );

    // A client naming a cluster itself: stripped, the table decides.
    let forged = Traffic::new(ingress, Load::count(200, 4))
        .spec(RequestSpec::get("canary.test", "/").header(HEADER, "secret"))
        .run()
        .await
        .unwrap();
    assert_eq!(forged.status_count(200), 200);
    assert_eq!(
        forged.by_backend.get("secret"),
        None,
        "{:?}",
        forged.by_backend
    );
    // No match + pass_through: the forged header is gone, Envoy's own route answers.
    let resp = traffic::get(ingress, "unknown.test", "/", &[(HEADER, "secret")])
        .await
        .unwrap();
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (404, "native fallback")
    );
    assert_eq!(backends["secret"].stats().requests, 0);
    let stats = envoy.stats().await.unwrap();
    assert_eq!(
        stats.get("wasmcustom.switchyard.domain-router.client_header_stripped"),
        Some(&201)
    );
}

fn table_to(cluster: &str, version: u64) -> String {
    json!({"version": version, "virtual_hosts": [
        {"domains": ["app.test"], "rules": [{"cluster": cluster}]}]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_swap_under_load_and_broken_table_kept() {
    let _serial = SERIAL.lock().await;
    let backends = BackendSet::start_all(["blue", "green"].map(BackendSpec::new))
        .await
        .unwrap();
    let control = ControlServer::start(table_to("blue", 1)).await.unwrap();
    let poll_ms = 500u64;
    let plugin =
        json!({"control": {"cluster": "control", "path": "/routes", "poll_interval_ms": poll_ms}});
    let envoy = start_filter(plugin, &backends, Some(control.addr())).await;
    let ingress = envoy.listener("ingress").unwrap();

    // No table yet (no inline one): the default local reply, JSON.
    // Then the first poll brings version 1.
    let deadline = Instant::now() + Duration::from_secs(5);
    let client = HttpClient::new();
    loop {
        let r = client.get(ingress, "app.test", "/", &[]).await.unwrap();
        if r.backend() == Some("blue") {
            break;
        }
        assert_eq!(r.status, 404, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(Instant::now() < deadline, "first table never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Steady load while the table changes to green.
    let steady = Traffic::new(ingress, Load::closed_loop(4, Duration::from_secs(4)))
        .spec(RequestSpec::get("app.test", "/"));
    let load = steady.run();
    let swap = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        control.set_document(table_to("green", 2));
        let changed = Instant::now();
        // Visible within one poll period (plus one tick and a request).
        let probe = HttpClient::new();
        loop {
            let r = probe.get(ingress, "app.test", "/", &[]).await.unwrap();
            if r.backend() == Some("green") {
                return changed.elapsed();
            }
            assert!(
                changed.elapsed() < Duration::from_secs(5),
                "new table never visible"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (report, visible_after) = tokio::join!(load, swap);
    let report = report.unwrap();
    println!("{}", report.summary_table());
    println!("new rules visible after {visible_after:?} (poll period {poll_ms} ms)");
    assert_eq!(
        report.success_count(),
        report.sent,
        "{}",
        report.summary_table()
    );
    assert!(report.sent > 100, "{}", report.summary_table());
    assert!(
        visible_after <= Duration::from_millis(poll_ms + 100),
        "visible after {visible_after:?}"
    );
    assert!(report.by_backend.contains_key("blue") && report.by_backend.contains_key("green"));

    // A broken table: rejected, counted, logged with the error; green stays.
    control.set_document(r#"{"virtual_hosts": [{"domains": ["app.test"], "rules": [{"match": {"path": {"regex": "("}}, "cluster": "blue"}]}]}"#);
    tokio::time::sleep(Duration::from_millis(poll_ms * 3)).await;
    let after = Traffic::new(ingress, Load::count(200, 4))
        .spec(RequestSpec::get("app.test", "/"))
        .run()
        .await
        .unwrap();
    assert_eq!(
        after.by_backend.get("green"),
        Some(&200),
        "{:?}",
        after.by_backend
    );
    let stats = envoy.stats().await.unwrap();
    let stat = |n: &str| {
        stats
            .get(&format!("wasmcustom.switchyard.domain-router.{n}"))
            .copied()
    };
    assert_eq!(
        stat("reload_failures"),
        Some(1),
        "rejected once, not on every poll"
    );
    assert_eq!(stat("table_version"), Some(2));
    assert_eq!(stat("reloads"), Some(2));
    let logs = envoy.logs();
    assert!(
        logs.contains("rejected table from the control endpoint")
            && logs.contains("virtual_hosts[0].rules[0].match.path.regex: invalid regex"),
        "no log line naming the error"
    );
    let served = control.stats();
    println!("control endpoint: {served:?}");
    assert!(
        served.not_modified > 0,
        "ETag / If-None-Match in use: {served:?}"
    );
}

/// `n` one-rule virtual hosts `tenant-<i>.customers.example.com` → one of
/// the backends, plus `*`.
fn many_domains(n: usize, clusters: &[&str]) -> String {
    let mut vhosts: Vec<Value> = (0..n)
        .map(|i| {
            json!({"domains": [format!("tenant-{i}.customers.example.com")],
                   "rules": [{"cluster": clusters[i % clusters.len()]}]})
        })
        .collect();
    vhosts.push(json!({"domains": ["*"], "rules": [{"cluster": clusters[0]}]}));
    json!({"version": n, "virtual_hosts": vhosts}).to_string()
}

async fn wait_for_version(envoy: &Envoy, version: u64) -> Duration {
    let start = Instant::now();
    loop {
        let stats = envoy.stats().await.unwrap();
        if stats.get("wasmcustom.switchyard.domain-router.table_version") == Some(&version) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "table {version} never loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rps(ingress: SocketAddr, n: usize, duration: Duration) -> f64 {
    let run = Traffic::new(ingress, Load::closed_loop(4, duration))
        .request(move |i| {
            let t = (i as usize).wrapping_mul(2_654_435_761) % n;
            RequestSpec::get(format!("tenant-{t}.customers.example.com"), "/")
        })
        .max_samples(0);
    let report = run.run().await.unwrap();
    assert_eq!(
        report.success_count(),
        report.sent,
        "{}",
        report.summary_table()
    );
    report.rps()
}

/// A 100 000-domain table arrives through the control endpoint and every
/// worker loads it; requests spread over all of it run about as fast as on
/// a 10-domain table. Two Envoys, one per table, are measured at the same
/// time so that whatever else runs on the machine slows both alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_domains_through_envoy() {
    let _serial = SERIAL.lock().await;
    let backends = BackendSet::start_all(["a", "b"].map(BackendSpec::new))
        .await
        .unwrap();
    let big = many_domains(100_000, &["a", "b"]);
    let (big_control, small_control) = (
        ControlServer::start(big.clone()).await.unwrap(),
        ControlServer::start(many_domains(10, &["a", "b"]))
            .await
            .unwrap(),
    );
    let plugin =
        json!({"control": {"cluster": "control", "path": "/routes", "poll_interval_ms": 1000}});
    let big_envoy = start_filter(plugin.clone(), &backends, Some(big_control.addr())).await;
    let small_envoy = start_filter(plugin, &backends, Some(small_control.addr())).await;
    let loaded = wait_for_version(&big_envoy, 100_000).await;
    wait_for_version(&small_envoy, 10).await;
    println!(
        "100 000-domain table ({:.1} MiB JSON) published in {loaded:?}",
        big.len() as f64 / 1048576.0
    );
    let (b_in, s_in) = (
        big_envoy.listener("ingress").unwrap(),
        small_envoy.listener("ingress").unwrap(),
    );
    let resp = traffic::get(b_in, "Tenant-99999.customers.example.com:80", "/", &[])
        .await
        .unwrap();
    assert_eq!(resp.backend(), Some("b"));
    // Warm-up: every worker builds its index on its first request.
    let warm = Duration::from_millis(500);
    tokio::join!(rps(b_in, 100_000, warm), rps(s_in, 10, warm));

    let window = Duration::from_secs(3);
    let (b, s) = tokio::join!(rps(b_in, 100_000, window), rps(s_in, 10, window));
    println!(
        "throughput, measured side by side: 100 000 domains {b:.0} req/s, 10 domains {s:.0} req/s, ratio {:.3}",
        b / s
    );
    // Loose bound: a shared 2-core machine is noisy; the number is reported.
    assert!(
        b / s > 0.8,
        "100k-domain table much slower: {b:.0} vs {s:.0} req/s"
    );
}
