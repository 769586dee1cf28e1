//! `make package`'s output as the platforms take it: the OCI images hold the
//! module as `plugin.wasm` in the compat layout, the manifests carry the
//! image digest, and real Envoy loads a packaged module through its
//! `remote` data source with the right sha256 and refuses a wrong one.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::time::Duration;
use switchyard_integration::control::ControlServer;
use switchyard_integration::envoy::{EnvoyBuilder, Runtime};
use switchyard_integration::package::{self, LAYER_MEDIA_TYPE};
use switchyard_integration::paths;
use switchyard_integration::traffic::get;

const TEMPLATE: &str = include_str!("../templates/remote-module.yaml");

fn packaged() -> (tempfile::TempDir, Vec<package::Packaged>) {
    paths::wasm_module("switchyard-rate-limit").expect("module built (make build)");
    let out = tempfile::tempdir().unwrap();
    let examples = paths::workspace_root().join("envoy-configs");
    let done = package::package_all(
        &paths::wasm_dir(),
        &examples,
        out.path(),
        "registry.test/acme",
        "9.9.9",
    )
    .unwrap();
    (out, done)
}

#[test]
fn every_image_holds_its_module_and_every_manifest_its_digest() {
    let (out, done) = packaged();
    assert!(
        done.iter().any(|p| p.name == "switchyard"),
        "the chain module"
    );
    assert!(!done.iter().any(|p| p.name.contains("fixture")));
    let sums = std::fs::read_to_string(out.path().join("SHA256SUMS")).unwrap();
    for p in &done {
        let module = std::fs::read(paths::wasm_dir().join(format!("{}.wasm", p.name))).unwrap();
        let (digest, media_type, wasm) = package::read_layout(&p.oci).unwrap();
        assert_eq!(wasm, module, "{}: plugin.wasm is the module", p.name);
        assert_eq!(media_type, LAYER_MEDIA_TYPE, "{}", p.name);
        assert_eq!(digest, p.manifest_digest);
        assert!(sums.contains(&format!("{}  {}.wasm", p.sha256, p.name)));
        for dir in ["istio", "envoy-gateway"] {
            let text =
                std::fs::read_to_string(out.path().join(dir).join(format!("{}.yaml", p.name)))
                    .unwrap_or_else(|e| panic!("{dir}/{}: {e}", p.name));
            let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
            let (url, sha) = if dir == "istio" {
                (&doc["spec"]["url"], &doc["spec"]["sha256"])
            } else {
                let image = &doc["spec"]["wasm"][0]["code"]["image"];
                (&image["url"], &image["sha256"])
            };
            assert_eq!(
                sha.as_str(),
                Some(p.manifest_digest.as_str()),
                "{dir}/{}",
                p.name
            );
            let image = format!("registry.test/acme/{}:9.9.9", p.name.replace('_', "-"));
            assert!(
                url.as_str().unwrap().ends_with(&image),
                "{dir}/{}: {url:?}",
                p.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_loads_a_packaged_module_remotely_only_with_its_sha256() {
    let (_out, done) = packaged();
    let p = done
        .iter()
        .find(|p| p.name == "switchyard_rate_limit")
        .unwrap();
    let server = ControlServer::start(std::fs::read(&p.wasm).unwrap())
        .await
        .unwrap();
    let start = |sha256: String| {
        EnvoyBuilder::new(Runtime::from_env().unwrap(), TEMPLATE)
            .var("module_port", server.addr().port())
            .var("sha256", sha256)
            .concurrency(1)
            .start()
    };

    // The right sha256: the module runs (a second request in the minute is 429).
    let envoy = start(p.sha256.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ingress = envoy.listener("ingress").unwrap();
    let first = get(ingress, "a.test", "/", &[]).await.unwrap();
    let second = get(ingress, "a.test", "/", &[]).await.unwrap();
    assert_eq!(
        (first.status, second.status),
        (200, 429),
        "{}",
        envoy.logs()
    );
    assert!(server.stats().served >= 1);
    drop(envoy);

    // A wrong sha256: Envoy fetches it and refuses to run it.
    let wrong: String = p.sha256.chars().rev().collect();
    match start(wrong).await {
        Err(e) => println!("refused at start: {e}"),
        Ok(envoy) => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let ingress = envoy.listener("ingress");
            let statuses: Vec<u16> = match ingress {
                Ok(addr) => {
                    let mut s = Vec::new();
                    for _ in 0..2 {
                        s.push(get(addr, "a.test", "/", &[]).await.map_or(0, |r| r.status));
                    }
                    s
                }
                Err(_) => Vec::new(),
            };
            // Envoy 1.36-1.40 start, then fail the plugin closed: every
            // request 503, "failed to load" in the log.
            let logs = envoy.logs();
            assert!(
                !statuses.is_empty() && statuses.iter().all(|s| *s == 503),
                "{statuses:?}: {logs}"
            );
            assert!(logs.contains("rate-limit failed to load"), "{logs}");
        }
    }
}
