//! Every `envoy-configs/` file behaves as its comments say: `make try`
//! starts it as it is against local example upstreams, and each of its
//! `# try:` curl lines prints what the file says it prints (needs curl;
//! uses ports 9901, 10000 and 10443, one file at a time).

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use switchyard_integration::envoy::Runtime;
use switchyard_integration::{paths, try_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_config_does_what_its_try_lines_say() {
    paths::wasm_module("switchyard").expect("module built (make build)");
    let root = paths::workspace_root();
    let files = paths::files_with_extension(&root.join("envoy-configs"), &["yaml"]).unwrap();
    let mut failures = Vec::new();
    for f in &files {
        let yaml = std::fs::read_to_string(f).unwrap();
        assert!(
            !try_config::try_lines(&yaml).is_empty(),
            "{} has no `# try:` lines",
            f.display()
        );
        // The lines name the client CA as build/try/ca.pem: write it there.
        let trial = try_config::start(
            f,
            &paths::build_dir().join("try"),
            Runtime::from_env().unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
        let failed = try_config::check(&trial, &root).await.unwrap();
        println!(
            "{}: {} of {} lines as documented",
            f.display(),
            trial.lines.len() - failed.len(),
            trial.lines.len()
        );
        for (line, got) in failed {
            failures.push(format!(
                "{}: {}\n  expected: {}\n  got:      {got}",
                f.display(),
                line.command,
                line.expected
            ));
        }
        drop(trial);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
