//! Foundation checks against real Envoy: the fixture filter built by this
//! workspace runs on real requests in both runtimes, config errors surface
//! Envoy's own message, and nothing is left running afterwards.

use std::time::Duration;
use switchyard_integration::backend::{Backend, BackendSpec};
use switchyard_integration::envoy::{CONTAINER_LABEL, Envoy, EnvoyBuilder, Runtime};
use switchyard_integration::paths;
use switchyard_integration::traffic::{self, Load, Traffic};

const TEMPLATE: &str = include_str!("../templates/fixture.yaml");

async fn start_with_fixture(runtime: Runtime, stamp: &str, backend: &Backend) -> Envoy {
    paths::wasm_module("switchyard-fixture-filter").expect("fixture module built");
    let addr = backend.addr();
    EnvoyBuilder::new(runtime, TEMPLATE)
        .var("fixture_config", fixture_config(stamp))
        .var(
            "backends",
            vec![serde_json::json!({"ip": addr.ip().to_string(), "port": addr.port()})],
        )
        .concurrency(2)
        .start()
        .await
        .unwrap_or_else(|e| panic!("Envoy did not start: {e}"))
}

fn fixture_config(stamp: &str) -> String {
    serde_json::json!({ "stamp": stamp }).to_string()
}

fn backends_var(backend: &Backend) -> Vec<serde_json::Value> {
    let addr = backend.addr();
    vec![serde_json::json!({"ip": addr.ip().to_string(), "port": addr.port()})]
}

/// Starts Envoy with a fixture configuration that must be refused; returns
/// the error text.
async fn refused(config: &str) -> String {
    let backend = Backend::start(BackendSpec::new("b1")).await.unwrap();
    let err = EnvoyBuilder::new(Runtime::from_env().unwrap(), TEMPLATE)
        .var("fixture_config", config)
        .var("backends", backends_var(&backend))
        .keep_failed_runs(false)
        .start()
        .await
        .err()
        .expect("Envoy must refuse a plugin whose on_configure fails");
    err.to_string()
}

/// One request through Envoy: the filter stamped the response with its
/// configuration and the upstream request with a per-VM sequence number.
async fn assert_fixture_effect(runtime: Runtime) {
    let backend = Backend::start(BackendSpec::new("b1")).await.unwrap();
    let stamp = format!("hello-from-{}", runtime.name());
    let envoy = start_with_fixture(runtime, &stamp, &backend).await;
    let ingress = envoy.listener("ingress").unwrap();
    assert!(ingress.ip().is_loopback());

    let resp = traffic::get(ingress, "example.test", "/", &[("x-switchyard-echo", "1")])
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "body: {:?}", resp.body);
    assert_eq!(resp.header("x-switchyard-fixture"), Some(stamp.as_str()));
    assert_eq!(resp.header("x-switchyard-backend"), Some("b1"));
    let upstream = backend
        .last_request_headers()
        .expect("backend saw a request");
    let seq = upstream
        .iter()
        .find(|(k, _)| k == "x-switchyard-fixture-request")
        .map(|(_, v)| v.clone());
    assert_eq!(seq.as_deref(), Some("1"), "upstream headers: {upstream:?}");

    // A small burst: every response carries the stamp, and Envoy counts them.
    let report = Traffic::new(
        ingress,
        Load::Count {
            total: 200,
            concurrency: 8,
        },
    )
    .run()
    .await
    .unwrap();
    assert_eq!(report.status_count(200), 200, "{}", report.summary_table());
    let stats = envoy.stats().await.unwrap();
    assert!(
        stats
            .get("http.ingress.downstream_rq_2xx")
            .copied()
            .unwrap_or(0)
            >= 201,
        "stats: {:?}",
        stats.get("http.ingress.downstream_rq_2xx")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_filter_runs_in_envoy_in_docker() {
    if std::env::var_os("SWITCHYARD_SKIP_DOCKER").is_some() {
        eprintln!("SKIPPED: SWITCHYARD_SKIP_DOCKER is set");
        return;
    }
    let runtime = Runtime::docker().expect("docker runtime (scripts/setup-docker.sh)");
    println!("runtime: {runtime:?}");
    assert_fixture_effect(runtime).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_filter_runs_in_envoy_as_native_process() {
    let runtime = Runtime::native().expect("native runtime (scripts/setup-envoy.sh)");
    println!("runtime: {runtime:?}");
    assert_fixture_effect(runtime).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_fails_with_envoys_own_message() {
    let runtime = Runtime::from_env().unwrap();
    let broken = TEMPLATE.replace(
        "connect_timeout: 1s",
        "connect_timeout: 1s\n    no_such_field: 3",
    );
    let backend = Backend::start(BackendSpec::new("b1")).await.unwrap();
    let err = EnvoyBuilder::new(runtime, broken)
        .var("fixture_config", fixture_config("x"))
        .var("backends", backends_var(&backend))
        .keep_failed_runs(false)
        .start()
        .await
        .err()
        .expect("a broken config must not start");
    let text = err.to_string();
    println!("{text}");
    // Envoy's own words: the proto parser names the unknown field.
    assert!(text.contains("no_such_field"), "{text}");
    assert!(text.contains("exited during start-up"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_plugin_config_is_refused_and_envoy_names_the_field() {
    let text = refused(r#"{"stamp": ""}"#).await;
    assert!(
        text.contains("fixture: invalid configuration: stamp: must not be empty"),
        "{text}"
    );
    let text = refused(r#"{"stmp": "x"}"#).await;
    assert!(text.contains("unknown field `stmp`"), "{text}");
    let text = refused(r#"{"stamp": 7}"#).await;
    assert!(text.contains("stamp: invalid type: integer `7`"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_envoy_leaves_nothing_running() {
    for runtime in available_runtimes() {
        let backend = Backend::start(BackendSpec::new("b1")).await.unwrap();
        let envoy = start_with_fixture(runtime.clone(), "cleanup", &backend).await;
        let ingress = envoy.listener("ingress").unwrap();
        let container = envoy.container_name().map(str::to_string);
        drop(envoy);
        // Nothing listens on the ingress port any more (container or process gone).
        let mut closed = false;
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(ingress).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            closed,
            "{}: Envoy still accepts on {ingress}",
            runtime.name()
        );
        if let Some(name) = container {
            let out = std::process::Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("label={CONTAINER_LABEL}")])
                .args(["--filter", &format!("name=^{name}$")])
                .output()
                .unwrap();
            assert!(
                out.stdout.is_empty(),
                "containers left: {:?}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

fn available_runtimes() -> Vec<Runtime> {
    let mut v = vec![Runtime::native().unwrap()];
    if std::env::var_os("SWITCHYARD_SKIP_DOCKER").is_none() {
        v.push(Runtime::docker().unwrap());
    }
    v
}
