//! `switchyard-harness`: runs Switchyard against real Envoy.
//!
//! `demo` starts three load-reporting backends and Envoy (Docker when a
//! daemon answers, else native) with the Switchyard modules that exist, sends
//! traffic through it and prints what happened.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::time::Duration;
use switchyard_integration::backend::{BackendSet, BackendSpec, OrcaFormat};
use switchyard_integration::bench;
use switchyard_integration::envoy::{EnvoyBuilder, Runtime};
use switchyard_integration::paths;
use switchyard_integration::traffic::{self, Load, RequestSpec, Traffic};

#[derive(Parser)]
#[command(
    name = "switchyard-harness",
    about = "Run Switchyard filters in real Envoy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Envoy + backends + traffic, with a summary.
    Demo {
        /// docker or native (default: docker when a daemon answers).
        #[arg(long)]
        runtime: Option<String>,
        /// Seconds of traffic.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent client connections.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Every variant against no filter and native Envoy, as ratios.
    Bench {
        /// Interleaved rounds per variant.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds of closed-loop load per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Where the JSON and markdown results go.
        #[arg(long, default_value = "results")]
        out: std::path::PathBuf,
        /// Core to pin Envoy to (run the harness on another one).
        #[arg(long, default_value_t = 0)]
        envoy_cpu: usize,
    },
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
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Demo {
            runtime,
            seconds,
            concurrency,
        } => {
            demo(
                runtime_from(runtime)?,
                Duration::from_secs(seconds),
                concurrency,
            )
            .await
        }
        Command::Bench {
            rounds,
            seconds,
            out,
            envoy_cpu,
        } => {
            let cfg = bench::BenchConfig {
                rounds,
                duration: Duration::from_secs(seconds),
                envoy_cpu,
                ..bench::BenchConfig::default()
            };
            bench_main(&cfg, &out).await
        }
    }
}

async fn bench_main(cfg: &bench::BenchConfig, out: &std::path::Path) -> Result<()> {
    bench::run_and_write(cfg, out).await
}

async fn demo(runtime: Runtime, duration: Duration, concurrency: usize) -> Result<()> {
    println!("== Switchyard demo ({} runtime)", runtime.name());
    let backends = BackendSet::start_all(vec![
        BackendSpec::new("small")
            .latency_ms(4)
            .capacity(4)
            .orca(OrcaFormat::Text),
        BackendSpec::new("medium")
            .latency_ms(4)
            .capacity(8)
            .orca(OrcaFormat::Json),
        BackendSpec::new("large")
            .latency_ms(4)
            .capacity(16)
            .orca(OrcaFormat::BinHeader),
    ])
    .await?;
    paths::wasm_module("switchyard-fixture-filter")?;
    let endpoints: Vec<serde_json::Value> = backends
        .addrs()
        .iter()
        .map(|(_, a)| serde_json::json!({"ip": a.ip().to_string(), "port": a.port()}))
        .collect();
    let template = paths::workspace_root().join("integration/templates/fixture.yaml");
    let envoy = EnvoyBuilder::from_file(runtime, template)?
        .var("fixture_config", r#"{"stamp": "switchyard-demo"}"#)
        .var("backends", endpoints)
        .concurrency(2)
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ingress = envoy.listener("ingress")?;
    println!(
        "envoy ready: ingress http://{ingress}  admin http://{}",
        envoy.admin_addr()
    );

    let probe = traffic::get(ingress, "demo.local", "/", &[]).await?;
    println!(
        "probe: {} from backend {:?}, filter stamp {:?}, load report {:?}",
        probe.status,
        probe.header("x-switchyard-backend").unwrap_or("-"),
        probe.header("x-switchyard-fixture").unwrap_or("-"),
        probe
            .header("endpoint-load-metrics")
            .or(probe.header("endpoint-load-metrics-bin"))
            .unwrap_or("-"),
    );

    println!("sending traffic for {duration:?} with {concurrency} connections ...");
    let report = Traffic::new(
        ingress,
        Load::ClosedLoop {
            concurrency,
            duration,
        },
    )
    .spec(RequestSpec::get("demo.local", "/"))
    .run()
    .await
    .context("running traffic")?;
    println!("{}", report.summary_table());
    println!("backend   served  max-in-flight  capacity");
    for (name, stats) in backends.stats() {
        let cap = backends.get(&name).and_then(|b| b.capacity()).unwrap_or(0);
        println!(
            "{name:<9} {:>6}  {:>13}  {cap:>8}",
            stats.requests, stats.max_in_flight
        );
    }
    let stats = envoy.stats().await?;
    for key in [
        "http.ingress.downstream_rq_2xx",
        "http.ingress.downstream_rq_5xx",
        "cluster.backends.upstream_rq_total",
    ] {
        println!("envoy {key} = {}", stats.get(key).copied().unwrap_or(0));
    }
    if report.success_count() == 0 {
        bail!("no request succeeded");
    }
    Ok(())
}
