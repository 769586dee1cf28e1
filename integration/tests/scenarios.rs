//! Scenarios in real Envoy: every file under `integration/scenarios/` runs
//! with short durations (its `quick_scale`) so none rots; a scenario with a
//! failing assertion fails through the CLI and names it; an access-log
//! recording replays with the recorded host/path/status mix.

use std::path::{Path, PathBuf};

use switchyard_integration::scenario::run::{ReplayInput, RunOptions, run};
use switchyard_integration::scenario::{self, Scenario};

/// The runs take turns: two at once on a 2-core machine would measure each
/// other (latency and share assertions).
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn quick(s: &Scenario, dir: &Path) -> RunOptions {
    RunOptions {
        out_dir: Some(dir.to_path_buf()),
        scale: s.quick_scale,
        ..RunOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_passes_with_short_durations() {
    let _turn = HEAVY.lock().await;
    let files = scenario::all_scenario_files().expect("integration/scenarios/ readable");
    assert!(
        files.iter().any(|f| f.ends_with("demo.yaml")),
        "the flagship scenario is missing: {files:?}"
    );
    let mut failed = Vec::new();
    for file in &files {
        let s = Scenario::load(file).unwrap_or_else(|e| panic!("{e:#}"));
        let dir = tempfile::tempdir().expect("temp dir");
        let t = std::time::Instant::now();
        match run(&s, quick(&s, dir.path())).await {
            Ok(out) => {
                println!("{}", out.table);
                println!("{}: {:.1} s", file.display(), t.elapsed().as_secs_f64());
                let html = std::fs::read_to_string(&out.html).expect("report written");
                assert!(
                    html.matches("<svg").count() >= 4,
                    "charts in {}",
                    out.html.display()
                );
                let json: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&out.json).expect("result written"))
                        .expect("result is JSON");
                assert_eq!(json["passed"], out.passed());
                if !out.passed() {
                    failed.push(format!("{}: {:?}", file.display(), out.result.failures()));
                }
            }
            Err(e) => failed.push(format!("{}: {e:#}", file.display())),
        }
    }
    assert!(
        failed.is_empty(),
        "scenarios failed:\n{}",
        failed.join("\n")
    );
}

const FAILING: &str = r#"
name: deliberately-failing
envoy: {}
backends:
  - {name: only, latency: {fixed_ms: 1}}
traffic:
  - name: f
    requests: [{host: x.example.com, path: /}]
    phases: [{duration: 1s, rate: 50}]
assertions:
  - status_share: {name: "everything is 200", status: 200, min: 1.0}
  - backend_share: {name: "only gets at most half", backend: only, max: 0.5}
"#;

async fn harness(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-harness"))
        .args(args)
        .output()
        .await
        .expect("harness runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_assertion_exits_non_zero_and_names_it() {
    let _turn = HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("failing.yaml");
    std::fs::write(&file, FAILING).expect("write scenario");
    let out_dir = dir.path().join("out");
    let out = harness(&[
        "run",
        file.to_str().expect("utf-8 path"),
        "--no-progress",
        "--out",
        out_dir.to_str().expect("utf-8 path"),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "exit status");
    assert!(
        stderr.contains(
            "FAILED: assertion \"only gets at most half\" failed: measured 1.000 (50 of 50), expected <= 0.500"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("everything is 200"),
        "a passing one is not a failure"
    );
    assert!(
        stdout.contains("FAIL") && stdout.contains("report:"),
        "{stdout}"
    );
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("result.json")).expect("result.json"))
            .expect("JSON");
    assert_eq!(result["passed"], false);
    assert_eq!(result["assertions"][1]["passed"], false);
    assert_eq!(result["assertions"][1]["measured"], 1.0);
    let html = std::fs::read_to_string(out_dir.join("report.html")).expect("report.html");
    assert!(html.contains("FAILED") && html.contains("only gets at most half"));
    // Shares stacked per cluster, latency per flow, hover values.
    assert!(html.contains("(stacked)"), "stacked shares");
    assert!(html.contains("Flow "), "a latency chart per flow");
    assert!(html.contains("<title>"), "hover titles");
    // JUnit XML as a CI system reads it: one test case per assertion, the
    // failed one a failure with the assertion's message.
    let junit = std::fs::read(out_dir.join("junit.xml")).expect("junit.xml");
    let suites = junit_parser::from_reader(std::io::Cursor::new(junit)).expect("JUnit XML");
    assert_eq!(suites.suites.len(), 1);
    let cases = &suites.suites[0].cases;
    let n = result["assertions"].as_array().map_or(0, Vec::len);
    assert_eq!(cases.len(), n, "one test case per assertion");
    let failed: Vec<_> = cases.iter().filter(|c| c.status.is_failure()).collect();
    assert_eq!(failed.len(), 1, "{cases:?}");
    assert_eq!(failed[0].original_name, "only gets at most half");
    assert_eq!(
        failed[0].classname.as_deref(),
        Some("deliberately-failing.backend_share")
    );
    assert!(
        failed[0]
            .status
            .failure_as_ref()
            .message
            .contains("expected <= 0.500"),
        "{:?}",
        failed[0].status
    );

    // A scenario error is exit 2 and names the field.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        FAILING.replace("{name: only,", "{name: only, capcity: 3,"),
    )
    .expect("write scenario");
    let out = harness(&["run", bad.to_str().expect("utf-8 path"), "--no-progress"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("backends[0]") && stderr.contains("capcity"),
        "{stderr}"
    );
}

fn scenario_file(name: &str) -> PathBuf {
    scenario::scenarios_dir().join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_log_recording_replays_with_the_same_mix() {
    let _turn = HEAVY.lock().await;
    let s = Scenario::load(scenario_file("rate-limit-burst.yaml")).expect("scenario");
    let dir = tempfile::tempdir().expect("temp dir");
    let rec = run(&s, quick(&s, &dir.path().join("record")))
        .await
        .expect("recording run");
    assert!(rec.passed(), "{:?}", rec.result.failures());
    let records = rec.records.clone().expect("records.jsonl written");
    let lines = std::fs::read_to_string(&records).expect("records");
    assert_eq!(lines.lines().count() as u64, rec.result.totals.completed);

    let replay = run(
        &s,
        RunOptions {
            replay: Some(ReplayInput {
                records: records.clone(),
                speed: 1.0,
            }),
            mix_tolerance: Some(0.03),
            ..quick(&s, &dir.path().join("replay"))
        },
    )
    .await
    .expect("replay run");
    println!("{}", replay.table);
    let r = replay.result.replay.as_ref().expect("replay result");
    assert_eq!(r.requests as u64, rec.result.totals.completed);
    assert_eq!(replay.result.totals.sent, rec.result.totals.completed);
    // The recording has what makes a replay hard: hosts, path shapes and a
    // timing-dependent status (429).
    let statuses: Vec<&str> = r.mix.by_status.iter().map(|m| m.key.as_str()).collect();
    assert!(
        statuses.contains(&"429") && statuses.contains(&"200"),
        "{statuses:?}"
    );
    assert!(
        r.mix.by_host.len() >= 2 && r.mix.by_path.len() >= 3,
        "{:?}",
        r.mix
    );
    assert!(
        r.mix.max_deviation <= 0.03,
        "mix differs by {:.3}: {:?}",
        r.mix.max_deviation,
        r.mix.rows
    );
    assert!(replay.passed(), "{:?}", replay.result.failures());
}

/// Issue 14, item 6: `validate` checks every scenario file without traffic
/// (Envoy's `--mode validate` included) and refuses, with the field's path
/// and exit 2, an event after the run's end; `--version` answers and a
/// negative option value reaches its check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_without_traffic_and_the_cli_takes_negative_values() {
    for file in scenario::all_scenario_files().expect("integration/scenarios/ readable") {
        let out = harness(&["validate", file.to_str().expect("utf-8 path")]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{}: {stderr}", file.display());
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let late = dir.path().join("late.yaml");
    let text = FAILING.replace(
        "- {name: only, latency: {fixed_ms: 1}}",
        "- {name: only, latency: {fixed_ms: 1}, events: [{at: 5s, fail: {error_rate: 1}}]}",
    );
    assert!(
        text.contains("events"),
        "the fixture's backend line changed"
    );
    std::fs::write(&late, text).expect("write scenario");
    let out = harness(&["validate", late.to_str().expect("utf-8 path")]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("backends[0].events[0].at") && stderr.contains("traffic ends"),
        "{stderr}"
    );
    let out = harness(&["--version"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("switchyard-harness "));
    let fine = dir.path().join("fine.yaml");
    std::fs::write(&fine, FAILING).expect("write scenario");
    let out = harness(&["run", fine.to_str().expect("utf-8 path"), "--scale", "-1"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the time scale must be > 0"), "{stderr}");
}
