//! `make bench-instructions`: Envoy's CPU instructions per request for each
//! `make bench` variant, counted by valgrind's callgrind: a noise-free twin
//! of the CPU-time table, for machines whose CPU time moves ±20 % between
//! runs (shared hypervisors).
//!
//! Each variant's Envoy (`--concurrency 1`, the bench's configuration and
//! backends) runs under `valgrind --tool=callgrind --instr-atstart=no`.
//! After a warm-up, two windows are counted with `callgrind_control`:
//! 1. idle for `idle` seconds: what the process spends without traffic
//!    (wasm ticks, Envoy's timers), as a rate;
//! 2. `requests` sequential GETs on one keep-alive connection.
//!
//! Per request = (window 2 − idle rate × window 2's length) / requests:
//! every instruction of the process (Envoy, V8, the module's code, the
//! allocator), user space only. The idle correction matters because
//! valgrind slows the process ~50×, so a 20 ms tick fires ~50× more often
//! per request than at full speed. Repeat runs of a variant agree within
//! ~0.1 %; the ratios track the CPU-time table's (BENCHMARKS.md).

use crate::backend::{Backend, BackendSpec, OrcaFormat};
use crate::bench::{self, BenchConfig, Role, Variant};
use crate::traffic::HttpClient;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Settings of the instruction count.
#[derive(Debug, Clone, Serialize)]
pub struct InstructionConfig {
    /// Counted GETs per variant.
    pub requests: u64,
    /// Length of the idle window.
    pub idle: Duration,
    /// Uncounted GETs first (JIT tiers, caches, connections).
    pub warmup: u64,
}

impl Default for InstructionConfig {
    fn default() -> Self {
        InstructionConfig {
            requests: 300,
            idle: Duration::from_secs(10),
            warmup: 100,
        }
    }
}

/// One variant's count.
#[derive(Debug, Clone, Serialize)]
pub struct InstructionRow {
    pub name: String,
    pub role: Role,
    /// Instructions per request, idle share removed.
    pub per_request: f64,
    /// Instructions per second without traffic.
    pub idle_per_second: f64,
    /// Instructions per request before the idle correction.
    pub raw_per_request: f64,
    pub requests: u64,
}

/// The valgrind command line Envoy runs under (`{run_dir}`: its run
/// directory, where the dumps go).
fn valgrind() -> Vec<String> {
    [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        // V8 writes and rewrites machine code in anonymous memory.
        "--smc-check=all-non-file",
        "--callgrind-out-file={run_dir}/callgrind.out",
    ]
    .map(String::from)
    .to_vec()
}

fn control(pid: u32, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .output()
        .context("running callgrind_control (apt install valgrind)")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The instruction total of dump number `n` (`callgrind.out.<n>`), waiting
/// for valgrind to write it.
async fn dump_total(run_dir: &Path, n: u32) -> Result<u64> {
    let path: PathBuf = run_dir.join(format!("callgrind.out.{n}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let total = text
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("totals:")
                        .or_else(|| l.strip_prefix("summary:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .max();
            if let Some(t) = total {
                return Ok(t);
            }
        }
        if Instant::now() > deadline {
            bail!("no callgrind dump at {}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Counts one window: zero the counters, count while `work` runs, dump.
async fn window<F, Fut>(pid: u32, run_dir: &Path, n: u32, work: F) -> Result<(u64, Duration)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    control(pid, &["-z"])?;
    control(pid, &["-i", "on"])?;
    let t0 = Instant::now();
    work().await?;
    let took = t0.elapsed();
    control(pid, &["-i", "off"])?;
    control(pid, &["-d"])?;
    Ok((dump_total(run_dir, n).await?, took))
}

async fn gets(client: &HttpClient, addr: std::net::SocketAddr, v: &Variant, n: u64) -> Result<()> {
    for i in 0..n {
        let id = format!("instr-{i}");
        let r = client
            .get(addr, &v.host, &v.path, &[("x-request-id", &id)])
            .await?;
        if !(200..300).contains(&r.status) {
            bail!("{}: status {} under valgrind", v.name, r.status);
        }
    }
    Ok(())
}

async fn count(
    v: &Variant,
    backends: &[Backend],
    cfg: &BenchConfig,
    icfg: &InstructionConfig,
) -> Result<InstructionRow> {
    let envoy = bench::start_variant_with(v, backends, cfg.envoy_cpu, 1, valgrind()).await?;
    let pid = envoy.pid().context("Envoy has no pid")?;
    let addr = envoy.listener("ingress")?;
    let client = HttpClient::new();
    gets(&client, addr, v, icfg.warmup).await?;
    let idle_secs = icfg.idle;
    let (idle, _) = window(pid, envoy.run_dir(), 1, || async move {
        tokio::time::sleep(idle_secs).await;
        Ok(())
    })
    .await?;
    let (busy, took) = window(pid, envoy.run_dir(), 2, || {
        gets(&client, addr, v, icfg.requests)
    })
    .await?;
    if let Some(keep) = std::env::var_os("SWITCHYARD_KEEP_CALLGRIND") {
        // The counted window's profile, for callgrind_annotate (by object:
        // V8's generated code shows as `???`).
        let name: String = v
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        for (n, window) in [(1, "idle"), (2, "requests")] {
            let to = Path::new(&keep).join(format!("callgrind.{name}.{window}.out"));
            std::fs::copy(envoy.run_dir().join(format!("callgrind.out.{n}")), &to)
                .with_context(|| format!("keeping {}", to.display()))?;
        }
    }
    let idle_per_second = idle as f64 / icfg.idle.as_secs_f64();
    let n = icfg.requests.max(1) as f64;
    Ok(InstructionRow {
        name: v.name.clone(),
        role: v.role.clone(),
        per_request: (busy as f64 - idle_per_second * took.as_secs_f64()).max(0.0) / n,
        idle_per_second,
        raw_per_request: busy as f64 / n,
        requests: icfg.requests,
    })
}

/// Counts every selected variant (`cfg.only`; the baseline always runs; the
/// 100 000-domain table only when named: its parse takes minutes under
/// valgrind).
pub async fn run(
    cfg: &BenchConfig,
    icfg: &InstructionConfig,
    progress: impl Fn(&str),
) -> Result<Vec<InstructionRow>> {
    let variants: Vec<Variant> = bench::standard_variants()
        .into_iter()
        .filter(|v| {
            let named = cfg.only.iter().any(|o| v.name.contains(o.as_str()));
            v.role == Role::Baseline
                || named
                || (cfg.only.is_empty() && !v.name.contains("100 000"))
        })
        .collect();
    let mut backends = Vec::new();
    for name in ["bench-a", "bench-b", "bench-c"] {
        backends.push(Backend::start(BackendSpec::new(name).orca(OrcaFormat::Text)).await?);
    }
    let mut rows = Vec::new();
    for v in &variants {
        progress(&format!("instructions: {}", v.name));
        rows.push(count(v, &backends, cfg, icfg).await?);
    }
    Ok(rows)
}

/// The rows as a markdown table: instructions per request, the baseline's
/// count over the variant's (what throughput would be if CPU followed
/// instructions), and the same against the variant's native equivalent.
pub fn markdown(rows: &[InstructionRow], icfg: &InstructionConfig) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Envoy instructions per request (callgrind, --concurrency 1, {} sequential GETs, idle rate over {:?} removed)\n",
        icfg.requests, icfg.idle
    );
    let _ = writeln!(
        out,
        "| variant | role | instructions/request | + vs baseline | baseline ÷ variant | native ÷ variant | idle instructions/s |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    let base = rows.first().map_or(0.0, |r| r.per_request);
    for r in rows {
        let native = match &r.role {
            Role::Switchyard { group } => rows
                .iter()
                .find(|n| {
                    n.role
                        == Role::Native {
                            group: bench::native_group(group).to_string(),
                        }
                })
                .map(|n| format!("{:.3}", n.per_request / r.per_request)),
            _ => None,
        };
        let role = match &r.role {
            Role::Baseline => "baseline".to_string(),
            Role::Switchyard { group } => format!("switchyard {group}"),
            Role::Native { group } => format!("native {group}"),
        };
        let _ = writeln!(
            out,
            "| {} | {role} | {:.0} | {:+.0} | {:.3} | {} | {:.0} |",
            r.name,
            r.per_request,
            r.per_request - base,
            base / r.per_request.max(1.0),
            native.unwrap_or_default(),
            r.idle_per_second
        );
    }
    out
}

/// Runs the count and writes `instructions-<time>.json` and
/// `instructions.md` to `out`.
pub async fn run_and_write(cfg: &BenchConfig, icfg: &InstructionConfig, out: &Path) -> Result<()> {
    let progress = |step: &str| eprintln!("bench: {step}");
    let rows = run(cfg, icfg, progress).await?;
    std::fs::create_dir_all(out)?;
    let json = out.join(format!(
        "instructions-{}.json",
        crate::bench::unix_seconds()
    ));
    std::fs::write(
        &json,
        serde_json::to_vec_pretty(&serde_json::json!({"config": icfg, "rows": rows}))?,
    )?;
    let table = markdown(&rows, icfg);
    std::fs::write(out.join("instructions.md"), &table)?;
    println!("{table}\nresults: {}", json.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, role: Role, per_request: f64) -> InstructionRow {
        InstructionRow {
            name: name.into(),
            role,
            per_request,
            idle_per_second: 1000.0,
            raw_per_request: per_request + 10.0,
            requests: 300,
        }
    }

    #[test]
    fn markdown_gives_ratios_against_baseline_and_native() {
        let rows = [
            row("no filter", Role::Baseline, 100_000.0),
            row(
                "chain",
                Role::Switchyard {
                    group: "chain".into(),
                },
                200_000.0,
            ),
            row(
                "chain, log",
                Role::Switchyard {
                    group: "chain-envoylog".into(),
                },
                250_000.0,
            ),
            row(
                "native chain",
                Role::Native {
                    group: "chain".into(),
                },
                110_000.0,
            ),
        ];
        let md = markdown(&rows, &InstructionConfig::default());
        let line = |name: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| {name} |")))
                .unwrap_or_default()
                .to_string()
        };
        assert!(
            line("chain").contains("| 200000 | +100000 | 0.500 | 0.550 |"),
            "{md}"
        );
        // A group without its own native row uses the one it maps to.
        assert!(line("chain, log").contains("| 0.400 | 0.440 |"), "{md}");
        assert!(line("no filter").contains("| 1.000 |  |"), "{md}");
    }
}
