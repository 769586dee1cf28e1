//! `switchyard-harness`: runs Switchyard against real Envoy.
//!
//! - `run <scenario.yaml>`: a scenario (see `integration/scenarios/`) with a
//!   progress bar, a summary table, a JSON result and an HTML report;
//! - `replay <records.jsonl> --scenario <scenario.yaml>`: access-log records
//!   replayed against the scenario's Envoy and backends;
//! - `demo`: the flagship scenario `integration/scenarios/demo.yaml`
//!   (Envoy in Docker when a daemon answers, else native);
//! - `bench`: the benchmarks;
//! - `validate <scenario.yaml>`: every check that needs no traffic.

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use switchyard_integration::bench;
use switchyard_integration::envoy::Runtime;
use switchyard_integration::scenario::run::{self as scenario_run, ReplayInput, RunOptions};
use switchyard_integration::scenario::{self, Scenario};

#[derive(Parser)]
#[command(
    name = "switchyard-harness",
    about = "Run Switchyard filters in real Envoy",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The flagship scenario (integration/scenarios/demo.yaml): the whole
    /// filter chain, three load-reporting backends, a bursting client and a
    /// backend slowing down; prints the table and the report's path.
    // On every command: `--scale -1` reaches the value check instead of
    // reading as a flag.
    #[command(allow_negative_numbers = true)]
    Demo {
        /// docker or native (default: docker when a daemon answers).
        #[arg(long)]
        runtime: Option<String>,
        /// Stretch or shrink the demo to this many seconds of traffic.
        #[arg(long)]
        seconds: Option<u64>,
        /// Another scenario file instead of demo.yaml.
        #[arg(long)]
        scenario: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Check a scenario without sending traffic: its fields, flows and
    /// phases, events and assertion windows inside the run, the request
    /// plans, and `envoy --mode validate` on the config it renders.
    #[command(allow_negative_numbers = true)]
    Validate {
        /// The scenario (YAML).
        scenario: PathBuf,
        /// docker or native (default: docker when a daemon answers).
        #[arg(long)]
        runtime: Option<String>,
    },
    /// Package every built module: the .wasm with its sha256, an OCI image
    /// (compat Wasm image: one layer with plugin.wasm) and example Istio
    /// WasmPlugin / Envoy Gateway EnvoyExtensionPolicy manifests.
    #[command(allow_negative_numbers = true)]
    Package {
        /// Where to write (default: build/package).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The registry the manifests pull from, e.g. ghcr.io/acme.
        #[arg(long, default_value = "REGISTRY")]
        registry: String,
        /// The image tag (default: the workspace version).
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        tag: String,
    },
    /// Start an envoy-configs file as it is against local example
    /// upstreams (make try CONFIG=rate-limit) and print what to try.
    #[command(allow_negative_numbers = true)]
    Try {
        /// A file of envoy-configs/ by name (rate-limit) or a path.
        config: String,
        /// Run the file's `# try:` lines, compare their output, and exit.
        #[arg(long)]
        check: bool,
        /// docker or native (default: docker when a daemon answers).
        #[arg(long)]
        runtime: Option<String>,
    },
    /// Run a scenario file.
    #[command(allow_negative_numbers = true)]
    Run {
        /// The scenario (YAML).
        scenario: PathBuf,
        /// docker or native (default: docker when a daemon answers).
        #[arg(long)]
        runtime: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Replay access-log records (JSON lines) against a scenario's Envoy
    /// config and backends, at recorded timing or `--speed` times faster.
    #[command(allow_negative_numbers = true)]
    Replay {
        /// Records written by the access-log filter (e.g. records.jsonl of a run).
        records: PathBuf,
        /// The scenario whose Envoy config, backends, events and assertions to use.
        #[arg(long)]
        scenario: PathBuf,
        /// 1 = recorded timing, 2 = twice as fast.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Fail when any host/path/status share differs from the recording's by
        /// more than this (e.g. 0.03 = 3 points).
        #[arg(long)]
        mix_tolerance: Option<f64>,
        /// docker or native (default: docker when a daemon answers).
        #[arg(long)]
        runtime: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Every variant against no filter and native Envoy, as ratios.
    #[command(allow_negative_numbers = true)]
    Bench {
        /// Interleaved rounds per variant.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds of closed-loop load per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Open-loop rate of the latency measurement, req/s (default: 20 %
        /// of the no-filter proxy's closed-loop throughput in round 1).
        #[arg(long)]
        open_loop_rps: Option<f64>,
        /// Where the JSON and markdown results go.
        #[arg(long, default_value = "results")]
        out: std::path::PathBuf,
        /// Core to pin Envoy to (run the harness on another one).
        #[arg(long, default_value_t = 0)]
        envoy_cpu: usize,
        /// Only the variants whose name contains one of these (the
        /// baseline always runs); skips the load-balancing quality matrix
        /// unless one of them is `lb-matrix`.
        #[arg(long)]
        only: Vec<String>,
        /// Interleaved repeats of every cell of the load-balancing matrix.
        #[arg(long, default_value_t = 3)]
        lb_repeats: usize,
        /// Scenarios of the load-balancing matrix, by letter (a: 1 proxy,
        /// b: 3 proxies, c: antagonist, d: crash, e: gRPC).
        #[arg(long, default_value = "abcde")]
        lb_scenarios: String,
        /// Only the matrix's policies whose name contains one of these.
        #[arg(long)]
        lb_policies: Vec<String>,
        /// Service time of the matrix's backends, ms.
        #[arg(long, default_value_t = switchyard_integration::lb_matrix::MatrixConfig::default().latency_ms)]
        lb_service_ms: u64,
        /// Vary the matrix's service times: log-normal with median
        /// --lb-service-ms and this 99th percentile, ms.
        #[arg(long)]
        lb_service_p99_ms: Option<u64>,
        /// How the matrix's clients space their sends: a Poisson process
        /// (many independent clients) or paced exactly 1/rate apart.
        #[arg(long, value_enum, default_value_t = switchyard_integration::lb_matrix::MatrixConfig::default().arrivals)]
        lb_arrivals: switchyard_integration::lb_matrix::ArrivalKind,
        /// An extra Switchyard policy for the matrix, `NAME=JSON` (JSON
        /// merged over the matrix's load-balancer configuration), to try a
        /// change against the others.
        #[arg(long)]
        lb_extra_policy: Vec<String>,
        /// Count Envoy's instructions per request under valgrind's
        /// callgrind instead of measuring CPU time and latency (noise-free;
        /// `make bench-instructions`).
        #[arg(long)]
        instructions: bool,
        /// Counted GETs per variant with --instructions.
        #[arg(long, default_value_t = 300)]
        instruction_requests: u64,
    },
}

#[derive(clap::Args, Clone, Debug)]
struct Common {
    /// Where result.json, report.html, junit.xml and records.jsonl go (default:
    /// integration/out/<scenario>-<mode>-<time>/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Short durations: every time in the scenario times its quick_scale.
    #[arg(long)]
    quick: bool,
    /// Every time in the scenario times this factor.
    #[arg(long, conflicts_with = "quick")]
    scale: Option<f64>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn runtime_from(arg: Option<String>) -> Result<Runtime> {
    match arg.as_deref() {
        None => Runtime::from_env(),
        Some("docker") => Runtime::docker(),
        Some("native") => Runtime::native(),
        Some(other) => bail!("--runtime must be docker or native, not {other:?}"),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match real_main().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Exit 0: passed; 1: an assertion failed (named on stderr); 2: the run
/// could not be done (bad scenario, Envoy refused the config, ...).
async fn real_main() -> Result<ExitCode> {
    match Cli::parse().command {
        Command::Demo {
            runtime,
            seconds,
            scenario,
            common,
        } => {
            let path = scenario.unwrap_or_else(|| scenario::scenarios_dir().join("demo.yaml"));
            let s = Scenario::load(&path)?;
            let mut common = common;
            if let Some(secs) = seconds {
                let planned = s.traffic_duration().as_secs_f64().max(0.001);
                common.scale = Some(secs.max(1) as f64 / planned);
                common.quick = false;
            }
            run_and_report(&s, runtime, &common, None, None).await
        }
        Command::Package { out, registry, tag } => {
            use switchyard_integration::{package, paths};
            let out = out.unwrap_or_else(|| paths::build_dir().join("package"));
            let examples = paths::workspace_root().join("envoy-configs");
            for p in package::package_all(&paths::wasm_dir(), &examples, &out, &registry, &tag)? {
                println!(
                    "{:<28} sha256 {}  image {} (digest sha256:{})",
                    p.name,
                    p.sha256,
                    p.oci.display(),
                    p.manifest_digest
                );
            }
            println!("manifests: {0}/istio, {0}/envoy-gateway", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Try {
            config,
            check,
            runtime,
        } => {
            use switchyard_integration::{paths, try_config};
            let root = paths::workspace_root();
            let path = if config.ends_with(".yaml") {
                PathBuf::from(&config)
            } else {
                root.join("envoy-configs").join(format!("{config}.yaml"))
            };
            let work = paths::build_dir().join("try");
            let trial = try_config::start(&path, &work, runtime_from(runtime)?).await?;
            if check {
                let failed = try_config::check(&trial, &root).await?;
                for (line, got) in &failed {
                    eprintln!(
                        "FAILED: {}\n  expected: {}\n  got:      {got}",
                        line.command, line.expected
                    );
                }
                println!(
                    "{}: {} of {} try lines as documented",
                    path.display(),
                    trial.lines.len() - failed.len(),
                    trial.lines.len()
                );
                return Ok(if failed.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
            println!(
                "{} is up (Envoy admin on 127.0.0.1:9901; the client CA for TLS listeners is {}).",
                path.display(),
                trial.ca_file.display()
            );
            println!("Try, from the repository root (expected output after =>):");
            for l in &trial.lines {
                println!("  {}\n      => {}", l.command, l.expected);
            }
            println!("Ctrl-C stops Envoy and the example upstreams.");
            tokio::signal::ctrl_c().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { scenario, runtime } => {
            let s = Scenario::load(&scenario)?;
            scenario_run::validate(&s, runtime_from(runtime)?).await?;
            println!("{}: valid", scenario.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            scenario,
            runtime,
            common,
        } => {
            let s = Scenario::load(&scenario)?;
            run_and_report(&s, runtime, &common, None, None).await
        }
        Command::Replay {
            records,
            scenario,
            speed,
            mix_tolerance,
            runtime,
            common,
        } => {
            let s = Scenario::load(&scenario)?;
            let input = ReplayInput { records, speed };
            run_and_report(&s, runtime, &common, Some(input), mix_tolerance).await
        }
        Command::Bench {
            rounds,
            seconds,
            open_loop_rps,
            out,
            envoy_cpu,
            only,
            lb_repeats,
            lb_scenarios,
            lb_policies,
            lb_service_ms,
            lb_service_p99_ms,
            lb_arrivals,
            lb_extra_policy,
            instructions,
            instruction_requests,
        } => {
            let mut lb_extra_policies = Vec::new();
            for p in &lb_extra_policy {
                let (name, json) = p.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!("--lb-extra-policy {p:?}: expected NAME=JSON")
                })?;
                let json: serde_json::Value = serde_json::from_str(json)
                    .map_err(|e| anyhow::anyhow!("--lb-extra-policy {name}: {e}"))?;
                lb_extra_policies.push((name.to_string(), json));
            }
            let cfg = bench::BenchConfig {
                rounds,
                duration: Duration::from_secs(seconds),
                open_loop_rps,
                envoy_cpu,
                only,
                lb_repeats,
                lb_scenarios,
                lb_policies,
                lb_extra_policies,
                lb_service_ms,
                lb_service_p99_ms,
                lb_arrivals,
                ..bench::BenchConfig::default()
            };
            if instructions {
                let icfg = switchyard_integration::instructions::InstructionConfig {
                    requests: instruction_requests,
                    ..Default::default()
                };
                return switchyard_integration::instructions::run_and_write(&cfg, &icfg, &out)
                    .await
                    .map(|()| ExitCode::SUCCESS);
            }
            bench_main(&cfg, &out).await.map(|()| ExitCode::SUCCESS)
        }
    }
}

async fn run_and_report(
    s: &Scenario,
    runtime: Option<String>,
    common: &Common,
    replay: Option<ReplayInput>,
    mix_tolerance: Option<f64>,
) -> Result<ExitCode> {
    let scale = match (common.quick, common.scale) {
        (true, _) => s.quick_scale,
        (false, Some(f)) => f,
        (false, None) => 1.0,
    };
    let started = std::time::Instant::now();
    let opts = RunOptions {
        runtime: Some(runtime_from(runtime)?),
        out_dir: common.out.clone(),
        scale,
        progress: !common.no_progress,
        replay,
        mix_tolerance,
    };
    let out = scenario_run::run(s, opts).await?;
    println!("{}", out.table);
    println!("result:  {}", out.json.display());
    if let Some(r) = &out.records {
        println!("records: {}", r.display());
    }
    println!("report:  {}", out.html.display());
    println!(
        "{} {} in {:.1} s",
        s.name,
        if out.passed() { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    if out.passed() {
        Ok(ExitCode::SUCCESS)
    } else {
        for f in out.result.failures() {
            eprintln!("FAILED: {f}");
        }
        Ok(ExitCode::from(1))
    }
}

async fn bench_main(cfg: &bench::BenchConfig, out: &std::path::Path) -> Result<()> {
    bench::run_and_write(cfg, out).await
}
