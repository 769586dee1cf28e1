//! The chain module configured through ECDS (extension config discovery)
//! from a file, in real Envoy: a new configuration rolled out under steady
//! load fails no request and takes effect within a second.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use switchyard_integration::backend::{BACKEND_HEADER, Backend, BackendSpec};
use switchyard_integration::envoy::{EnvoyBuilder, Runtime};
use switchyard_integration::paths;
use switchyard_integration::traffic::{HttpClient, RequestSpec};

const TEMPLATE: &str = include_str!("../templates/ecds.yaml");
const RESOURCE: &str = include_str!("../templates/ecds-resource.yaml");
const FILE: &str = "switchyard-ecds.yaml";

/// The chain's configuration: shop.test to `cluster`, an access log.
fn chain(cluster: &str) -> String {
    json!({"stages": [
        {"domain_router": {
            "cluster_header": "x-switchyard-cluster",
            "table": {"virtual_hosts": [{"name": "shop", "domains": ["shop.test"], "rules": [{"name": "shop", "cluster": cluster}]}]}
        }},
        {"access_log": {}}
    ]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_configuration_under_load_fails_nothing_and_applies_within_a_second() {
    paths::wasm_module("switchyard").expect("module built (make build)");
    let a = Backend::start(BackendSpec::new("a")).await.unwrap();
    let b = Backend::start(BackendSpec::new("b")).await.unwrap();
    let backends: Vec<Value> = [("a", &a), ("b", &b)]
        .iter()
        .map(|(n, s)| json!({"name": n, "ip": s.addr().ip().to_string(), "port": s.addr().port()}))
        .collect();
    let envoy = EnvoyBuilder::new(Runtime::from_env().unwrap(), TEMPLATE)
        .var("backends", backends)
        .var("version", 1)
        .var("chain_config", chain("a"))
        .file(FILE, RESOURCE)
        .concurrency(2)
        .start()
        .await
        .unwrap_or_else(|e| panic!("Envoy did not start: {e}"));
    let ingress = envoy.listener("ingress").unwrap();

    // Steady load: two clients, one request every 5 ms each, for 4 s; the
    // new version goes out after 1.5 s.
    let t0 = Instant::now();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                let client = HttpClient::new();
                let spec = RequestSpec::get("shop.test", "/item");
                let mut seen = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_millis(5));
                while t0.elapsed() < Duration::from_secs(4) {
                    tick.tick().await;
                    let sent = t0.elapsed();
                    let r = client.send(ingress, &spec).await;
                    let (status, backend) = match r {
                        Ok(r) => (r.status, r.header(BACKEND_HEADER).unwrap_or("").to_string()),
                        Err(_) => (0, String::new()),
                    };
                    seen.push((sent, status, backend));
                }
                seen
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let path = envoy.run_dir().join(FILE);
    let v1 = std::fs::read_to_string(&path).unwrap();
    let (old, new) = (
        serde_json::to_string(&chain("a")).unwrap(),
        serde_json::to_string(&chain("b")).unwrap(),
    );
    assert!(v1.contains(&old), "{v1}");
    let v2 = v1
        .replace(&old, &new)
        .replace("version_info: \"1\"", "version_info: \"2\"");
    // Atomically: Envoy watches for the file being moved into place.
    let tmp = envoy.run_dir().join("ecds.tmp");
    std::fs::write(&tmp, v2).unwrap();
    let swapped = t0.elapsed();
    std::fs::rename(&tmp, &path).unwrap();

    let mut seen = Vec::new();
    for c in clients {
        seen.extend(c.await.unwrap());
    }
    seen.sort_by_key(|(t, _, _)| *t);
    let failed: Vec<_> = seen.iter().filter(|(_, s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        seen.iter()
            .filter(|(t, _, _)| *t < swapped)
            .all(|(_, _, b)| b == "a"),
        "before the change every request goes to a"
    );
    let first_b = seen
        .iter()
        .find(|(_, _, b)| b == "b")
        .map(|(t, _, _)| *t)
        .unwrap_or_else(|| panic!("no request reached b: {}", envoy.logs()));
    let applied = first_b.saturating_sub(swapped);
    let late_a = seen
        .iter()
        .filter(|(t, _, b)| *t > swapped + Duration::from_secs(1) && b == "a")
        .count();
    println!(
        "{} requests, 0 failed; the new version took {applied:?}; {late_a} to a after +1 s",
        seen.len()
    );
    assert!(
        applied <= Duration::from_secs(1),
        "applied after {applied:?}"
    );
    assert_eq!(late_a, 0, "a second after the change nothing goes to a");
    assert!(envoy.logs().contains("switchyard"), "the module logged");
}
