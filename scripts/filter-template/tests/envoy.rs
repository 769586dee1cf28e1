//! The crate's envoy.yaml in real Envoy: `make try` starts it as it is
//! against a local example upstream, and each `# try:` line prints what the
//! file says. Needs the module built (`make build`) and curl.

use switchyard_integration::envoy::Runtime;
use switchyard_integration::{paths, try_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_yaml_does_what_its_try_lines_say() {
    paths::wasm_module("switchyard-__NAME__").expect("the module is built (make build)");
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy.yaml");
    let runtime = Runtime::from_env().expect("an Envoy runtime (make setup)");
    let trial = try_config::start(&config, &paths::build_dir().join("try"), runtime)
        .await
        .expect("Envoy starts on envoy.yaml");
    let failed = try_config::check(&trial, &paths::workspace_root())
        .await
        .expect("the try lines run");
    assert!(failed.is_empty(), "{failed:#?}");
}
