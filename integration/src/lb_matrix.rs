//! The load-balancing quality matrix of `make bench`: scenarios × policies,
//! each cell the median of interleaved repeats with their spread.
//!
//! Backends of concurrency capacity 1×/2×/4× (`unit_capacity` slots of
//! `latency_ms` each, 50 ms: slow enough that the proxies' shared core
//! stays far from full) report measured ORCA (`application_utilization`,
//! `named_metrics.in_flight`) in TEXT headers; the traffic is open-loop
//! (latency from the intended send time, so coordinated omission is
//! corrected) and split evenly over the scenario's proxies, each a native
//! Envoy with one worker. Scenarios:
//! - `a`: 1 proxy, offered `load_share` of the total capacity;
//! - `b`: 3 proxies, same backends and load;
//! - `c`: 3 proxies; an antagonist holds `antagonist_slots` of the
//!   capacity, moving between backends every `antagonist_period`; offered
//!   `antagonist_load_share` of what is left (never overloaded);
//! - `d`: 3 proxies; the smallest backend crashes (port closed) for
//!   `crash_for` and comes back;
//! - `e`: as `b`, unary gRPC over HTTP/2 end to end, the reports (BIN) in
//!   the trailers.
//!
//! Every policy runs behind the same route (retries on connect failure and
//! reset, 2 of them) and the same passive health (3 consecutive failures
//! eject for 1 s).
//!
//! Beside the policies, every scenario but `d` measures its floor
//! ([`FLOOR_POLICY`]): the same proxies in front of three endpoints that
//! lead to one server with all the slots, a single queue that any free
//! slot serves next (round robin over the three ports, so connections and
//! paths are as for the policies). With fixed service times no dispatcher
//! that sends each request to one of several backends as it arrives can
//! start a request sooner than that pooled FIFO queue with the same
//! traffic (resource pooling: it never idles a slot while a request waits,
//! split queues can); with varied service times that holds on average. It
//! runs no wasm filter, so for Switchyard's policies it is a bound with
//! room to spare. A floor above the goal says the goal is out of every
//! policy's reach in that run.

use crate::backend::{Backend, BackendSpec, Latency, OrcaFormat};
use crate::bench::{BASE, ENDPOINTS, Role, Variant, median_f, start_variant, wasm_filter};
use crate::envoy::Envoy;
use crate::scenario::html::{Line, Mark, PALETTE, Style, YAxis, chart, esc};
use crate::traffic::{Arrivals, Load, RequestSpec, Sample, Traffic, TrafficReport};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The policy the load balancer uses when its configuration names none
/// (`auto`), as the matrix labels it. The matrix's backends report their
/// requests in flight, so here `auto` follows A58's order and turns to
/// Prequal's rule when that order names a full endpoint; the A58 line
/// shows what `auto` is without such reports.
pub const DEFAULT_POLICY: &str = "switchyard auto (default)";

/// The reference row: three endpoints of one server with every slot of the
/// scenario's three backends (see the module docs).
pub const FLOOR_POLICY: &str = "floor: one queue for all the slots";

/// The floor's backend.
const POOL: &str = "pool";

/// The backends' names, smallest first.
pub const BACKENDS: [&str; 3] = ["x1", "x2", "x4"];

/// Matrix settings.
#[derive(Debug, Clone, Serialize)]
pub struct MatrixConfig {
    /// Interleaved repeats of every cell (the table shows medians).
    pub repeats: usize,
    /// Service time of every backend, ms (the median when
    /// `service_p99_ms` is set).
    pub latency_ms: u64,
    /// When set (and above `latency_ms`): service times vary, log-normal
    /// with median `latency_ms` and this 99th percentile, ms.
    pub service_p99_ms: Option<u64>,
    /// How each proxy's client spaces its sends.
    pub arrivals: ArrivalKind,
    /// Slots of the smallest backend (the others have 2× and 4×).
    pub unit_capacity: usize,
    /// Offered load in `a`, `b` and `d`, as a share of the total capacity.
    pub load_share: f64,
    /// Measured length of `a` and `b`.
    pub steady: Duration,
    /// Slots the antagonist of `c` holds.
    pub antagonist_slots: usize,
    /// How long the antagonist stays on one backend in `c`.
    pub antagonist_period: Duration,
    /// Moves of the antagonist in `c` (the scenario lasts `period × moves`).
    pub antagonist_moves: usize,
    /// Offered load in `c`, as a share of the capacity the antagonist leaves.
    pub antagonist_load_share: f64,
    /// `d`: healthy before the crash, down, and healthy after.
    pub crash_after: Duration,
    pub crash_for: Duration,
    pub crash_tail: Duration,
    /// Traffic before every measurement (reports, blackout), not counted.
    pub warmup: Duration,
    /// Core the proxies are pinned to.
    pub envoy_cpu: usize,
    /// The scenarios to run, by letter (`abcde` = all).
    pub scenarios: String,
    /// Only the policies whose name contains one of these (empty: all).
    pub policies: Vec<String>,
    /// More Switchyard policies to compare, as (name, load-balancer
    /// configuration merged over the matrix's): for trying a change.
    pub extra_policies: Vec<(String, serde_json::Value)>,
}

impl Default for MatrixConfig {
    fn default() -> Self {
        MatrixConfig {
            repeats: 3,
            // Not 10 ms: at 5× the rate the three proxies, sharing one core
            // on the 2-core machine, used 72 % of it with a wasm filter and
            // 42 % with Envoy's own policies, and p99 measured the wait for
            // that core more than the balancing (BENCHMARKS.md, tenth session).
            latency_ms: 50,
            service_p99_ms: None,
            arrivals: ArrivalKind::Poisson,
            unit_capacity: 4,
            load_share: 0.7,
            steady: Duration::from_secs(8),
            antagonist_slots: 6,
            antagonist_period: Duration::from_secs(10),
            antagonist_moves: 3,
            antagonist_load_share: 0.75,
            crash_after: Duration::from_secs(5),
            crash_for: Duration::from_secs(10),
            crash_tail: Duration::from_secs(5),
            warmup: Duration::from_secs(2),
            envoy_cpu: 0,
            scenarios: "abcde".into(),
            policies: Vec::new(),
            extra_policies: Vec::new(),
        }
    }
}

/// How the matrix's clients space their sends ([`Arrivals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum ArrivalKind {
    /// Exactly `1/rate` apart per proxy.
    Paced,
    /// A Poisson process per proxy; in one repeat every policy gets the
    /// same send times (the seed is the repeat's and the proxy's), so the
    /// policies are compared on the same traffic.
    Poisson,
}

impl ArrivalKind {
    fn arrivals(self, repeat: usize, proxy: usize) -> Arrivals {
        match self {
            ArrivalKind::Paced => Arrivals::Paced,
            ArrivalKind::Poisson => Arrivals::Poisson {
                seed: (repeat as u64) << 32 | proxy as u64,
            },
        }
    }
}

/// A scenario of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Scenario {
    OneProxy,
    ThreeProxies,
    Antagonist,
    Crash,
    Grpc,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::OneProxy,
        Scenario::ThreeProxies,
        Scenario::Antagonist,
        Scenario::Crash,
        Scenario::Grpc,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Scenario::OneProxy => "(a) 1 proxy, 1×/2×/4× at 70 %",
            Scenario::ThreeProxies => "(b) 3 proxies, 1×/2×/4× at 70 %",
            Scenario::Antagonist => "(c) 3 proxies, antagonist moving every 10 s",
            Scenario::Crash => "(d) 3 proxies, x1 crashed for 10 s",
            Scenario::Grpc => "(e) 3 proxies, gRPC unary over HTTP/2, reports in trailers",
        }
    }

    /// The scenario's letter in the issue and on the command line.
    pub fn letter(self) -> char {
        match self {
            Scenario::OneProxy => 'a',
            Scenario::ThreeProxies => 'b',
            Scenario::Antagonist => 'c',
            Scenario::Crash => 'd',
            Scenario::Grpc => 'e',
        }
    }

    fn proxies(self) -> usize {
        match self {
            Scenario::OneProxy => 1,
            _ => 3,
        }
    }
}

/// The policies `cfg` asks for: the standard ones and its extra ones,
/// filtered by name.
fn policies(cfg: &MatrixConfig) -> Result<Vec<Variant>> {
    let mut all = standard_policies();
    for (name, lb) in &cfg.extra_policies {
        let name = format!("switchyard {name}");
        anyhow::ensure!(
            lb.is_object(),
            "extra policy {name:?}: the configuration must be a JSON object, got {lb}"
        );
        anyhow::ensure!(
            all.iter().all(|p| p.name != name),
            "extra policy {name:?}: a policy of that name exists"
        );
        all.push(switchyard_policy(&name, lb));
    }
    all.retain(|p| cfg.policies.is_empty() || cfg.policies.iter().any(|f| p.name.contains(f)));
    Ok(all)
}

/// A Switchyard load-balancer policy behind the matrix's route: `policy`
/// is merged over the matrix's load-balancer configuration.
fn switchyard_policy(name: &str, policy: &serde_json::Value) -> Variant {
    let mut lb = serde_json::json!({"mode": "endpoint", "endpoints": ENDPOINTS,
        "passive_health": {"base_ejection_ms": 1000, "max_ejection_ms": 1000},
        "weighted_round_robin": {"blackout_period_ms": 1000, "weight_update_period_ms": 200}});
    if let (Some(lb), Some(p)) = (lb.as_object_mut(), policy.as_object()) {
        lb.extend(p.clone());
    }
    Variant::new(name, Role::Switchyard { group: "lb".into() }, BASE)
        .partial(
            "filters",
            wasm_filter("lb", "switchyard_load_balancer", &lb),
        )
        .partial(
            "lb_extra",
            include_str!("../templates/bench/lb-override-host.yaml"),
        )
        .partial(
            "route_action",
            include_str!("../templates/bench/matrix-route.yaml"),
        )
}

/// The matrix's standard policies: how each Envoy is configured.
fn standard_policies() -> Vec<Variant> {
    let native = || Role::Native { group: "lb".into() };
    let route = include_str!("../templates/bench/matrix-route.yaml");
    let outlier = include_str!("../templates/bench/matrix-outlier.yaml");
    let builtin = |name: &str, policy: &str| {
        Variant::new(name, native(), BASE)
            .partial("lb_extra", format!("{policy}\n{outlier}"))
            .partial("route_action", route)
    };
    vec![
        switchyard_policy(DEFAULT_POLICY, &serde_json::json!({})),
        switchyard_policy(
            "switchyard A58 WRR",
            &serde_json::json!({"policy": "weighted_round_robin"}),
        ),
        builtin("envoy round_robin", ""),
        builtin(
            "envoy least_request",
            include_str!("../templates/bench/native-least-request.yaml"),
        ),
        builtin(
            "envoy client_side_weighted_round_robin",
            include_str!("../templates/bench/native-cswrr-fast.yaml"),
        ),
        builtin(
            "envoy random",
            include_str!("../templates/bench/native-random.yaml"),
        ),
        builtin(FLOOR_POLICY, ""),
    ]
}

/// One run of one cell.
#[derive(Debug, Clone, Serialize)]
pub struct CellRun {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// Share of successful answers per backend over the run.
    pub shares: BTreeMap<String, f64>,
    /// p99 of the successful answers of each backend, µs: where the tail
    /// comes from.
    pub backend_p99_us: BTreeMap<String, u64>,
    /// CPU the proxies used over the measurement, in cores (they share
    /// one); `None` when a proxy's process cannot be read.
    pub proxy_cores: Option<f64>,
    /// `d`: from the crash until the proxies stopped sending to the dead
    /// backend (the end of the first burst of connect failures), ms.
    pub off_ms: Option<u64>,
    /// `d`: from its recovery until its first answer, ms.
    pub back_ms: Option<u64>,
    /// `d`: connection attempts of all proxies to the dead backend while
    /// it was down.
    pub dead_attempts: Option<u64>,
    /// Per second from the measurement's start: (p99 µs, share per
    /// backend, reported utilization per backend).
    pub timeline: Vec<Second>,
}

/// One second of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub p99_us: u64,
    pub shares: BTreeMap<String, f64>,
    pub utilization: BTreeMap<String, f64>,
}

/// A cell: every repeat of one policy in one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub scenario: Scenario,
    pub policy: String,
    pub runs: Vec<CellRun>,
}

impl Cell {
    /// Median and (min, max) of a figure over the repeats.
    pub fn stat(&self, f: impl Fn(&CellRun) -> f64) -> (f64, f64, f64) {
        let v: Vec<f64> = self.runs.iter().map(f).collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (median_f(v), lo, hi)
    }
}

impl MatrixConfig {
    /// The backends' service time distribution.
    fn service(&self) -> Latency {
        match self.service_p99_ms {
            Some(p99) if p99 > self.latency_ms => Latency::LogNormal {
                p50: Duration::from_millis(self.latency_ms),
                p99: Duration::from_millis(p99),
            },
            _ => Latency::ms(self.latency_ms),
        }
    }

    /// Mean service time, ms: what a slot serves per second follows from
    /// it.
    pub fn mean_service_ms(&self) -> f64 {
        (self.service().mean().as_secs_f64() * 1000.0).max(1.0)
    }
}

/// Starts the three backends of the matrix, or for the floor three ports of
/// one backend with all their slots.
async fn backends(cfg: &MatrixConfig, grpc: bool, floor: bool) -> Result<Vec<Backend>> {
    let mut out = Vec::new();
    let sizes: &[(&str, usize)] = if floor {
        &[(POOL, 7)]
    } else {
        &[(BACKENDS[0], 1), (BACKENDS[1], 2), (BACKENDS[2], 4)]
    };
    for &(name, k) in sizes {
        let spec = BackendSpec::new(name)
            .latency(cfg.service())
            .capacity(cfg.unit_capacity * k);
        let spec = if grpc {
            spec.grpc().orca(OrcaFormat::BinHeader)
        } else {
            spec.orca(OrcaFormat::Text)
        };
        out.push(Backend::start(spec).await?);
    }
    if let (true, Some(pool)) = (floor, out.first()) {
        let more = [pool.another_port().await?, pool.another_port().await?];
        out.extend(more);
    }
    Ok(out)
}

/// The cluster speaks HTTP/2 to gRPC backends.
const UPSTREAM_HTTP2: &str = "typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config:
      http2_protocol_options: {}
";

/// A unary gRPC call with an empty message (a 5-byte frame).
fn grpc_call() -> RequestSpec {
    RequestSpec::get("bench.local", "/switchyard.bench.Bench/Call")
        .method("POST")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))
}

/// Connect failures of every proxy to `addr` (Envoy's per-host stat).
async fn connect_failures(proxies: &[Envoy], addr: std::net::SocketAddr) -> u64 {
    let key = format!("::{addr}::cx_connect_fail::");
    let mut total = 0;
    for p in proxies {
        if let Ok(text) = p.admin_get("/clusters").await {
            total += text
                .lines()
                .filter_map(|l| l.split_once(&key).map(|(_, n)| n))
                .filter_map(|n| n.trim().parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    total
}

/// Open-loop traffic at `rate` (total) split over `proxies`, for `d`.
fn spawn_traffic(
    proxies: &[Envoy],
    rate: f64,
    d: Duration,
    grpc: bool,
    arrivals: impl Fn(usize) -> Arrivals,
) -> Result<Vec<tokio::task::JoinHandle<Result<TrafficReport>>>> {
    let n = proxies.len().max(1) as f64;
    let mut tasks = Vec::new();
    for (i, p) in proxies.iter().enumerate() {
        let t = Traffic::new(
            p.listener("ingress")?,
            Load::OpenLoop {
                rate_per_sec: rate / n,
                duration: d,
                max_in_flight: 4096,
                arrivals: arrivals(i),
            },
        );
        let t = if grpc {
            t.http2().spec(grpc_call())
        } else {
            t.spec(RequestSpec::get("bench.local", "/"))
        };
        tasks.push(tokio::spawn(async move { t.run().await }));
    }
    Ok(tasks)
}

async fn join(
    tasks: Vec<tokio::task::JoinHandle<Result<TrafficReport>>>,
) -> Result<Vec<TrafficReport>> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// Samples every backend's reported utilization every 100 ms until `stop`.
fn spawn_utilization_probe(
    backends: &[Backend],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Duration, Vec<f64>)>> {
    // The backends stay alive for the whole run; the probe reads their
    // reports through cloned handles of their shared state.
    let probes: Vec<_> = backends.iter().map(Backend::report_probe).collect();
    let start = Instant::now();
    tokio::spawn(async move {
        let mut out = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let u = probes.iter().map(|p| p().application_utilization).collect();
            out.push((start.elapsed(), u));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out
    })
}

/// Whether `scenario` measures `policy`: the floor has no crash to
/// compare (one backend down would be all of them).
fn measured(scenario: Scenario, policy: &Variant) -> bool {
    !(scenario == Scenario::Crash && policy.name == FLOOR_POLICY)
}

/// Runs one cell once.
async fn run_cell(
    cfg: &MatrixConfig,
    scenario: Scenario,
    policy: &Variant,
    repeat: usize,
) -> Result<CellRun> {
    let grpc = scenario == Scenario::Grpc;
    let floor = policy.name == FLOOR_POLICY;
    let mut backends = backends(cfg, grpc, floor).await?;
    let mut policy = policy.clone();
    if grpc {
        let extra = policy.partials.get("lb_extra").cloned().unwrap_or_default();
        policy = policy.partial("lb_extra", format!("{extra}\n{UPSTREAM_HTTP2}"));
    }
    let mut proxies = Vec::new();
    for _ in 0..scenario.proxies() {
        proxies.push(start_variant(&policy, &backends, cfg.envoy_cpu, 1).await?);
    }
    let slot_rps = 1000.0 / cfg.mean_service_ms();
    let total_slots = cfg.unit_capacity * 7;
    let rate = match scenario {
        Scenario::Antagonist => {
            (total_slots - cfg.antagonist_slots.min(total_slots)) as f64
                * slot_rps
                * cfg.antagonist_load_share
        }
        _ => total_slots as f64 * slot_rps * cfg.load_share,
    };
    // The antagonist's place per period: (x1, x2, x4) slots, the same total.
    let a = cfg.antagonist_slots;
    let moves = [[0, 0, a], [0, a, 0], [a / 2, 0, a - a / 2]];
    if scenario == Scenario::Antagonist {
        if floor {
            // The pool holds every slot (its ports share them): the
            // antagonist's moves leave it the same capacity.
            if let Some(pool) = backends.first_mut() {
                pool.set_antagonist(a);
            }
        } else {
            for (b, s) in backends.iter_mut().zip(moves[0]) {
                b.set_antagonist(s);
            }
        }
    }
    // The warm-up's send times differ from the measurement's (other seeds).
    let warmup = |i| cfg.arrivals.arrivals(repeat + cfg.repeats, i);
    join(spawn_traffic(&proxies, rate, cfg.warmup, grpc, warmup)?).await?;
    let length = match scenario {
        Scenario::OneProxy | Scenario::ThreeProxies | Scenario::Grpc => cfg.steady,
        Scenario::Antagonist => cfg.antagonist_period * cfg.antagonist_moves as u32,
        Scenario::Crash => cfg.crash_after + cfg.crash_for + cfg.crash_tail,
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = spawn_utilization_probe(&backends, stop.clone());
    let cpu_before = cpu_seconds(&proxies);
    let start = Instant::now();
    let arrivals = |i| cfg.arrivals.arrivals(repeat, i);
    let traffic = spawn_traffic(&proxies, rate, length, grpc, arrivals)?;
    let (mut off_ms, mut recovered_at, mut dead_attempts) = (None, None, None);
    match scenario {
        Scenario::Antagonist if !floor => {
            for k in 1..cfg.antagonist_moves {
                tokio::time::sleep_until((start + cfg.antagonist_period * k as u32).into()).await;
                for (b, s) in backends.iter_mut().zip(moves[k % moves.len()]) {
                    b.set_antagonist(s);
                }
            }
        }
        // No crash for the floor: `run` does not measure one.
        Scenario::Crash if floor => {}
        Scenario::Crash => {
            tokio::time::sleep_until((start + cfg.crash_after).into()).await;
            let dead = backends[0].addr();
            backends[0].crash().await;
            let crashed = Instant::now();
            // Off = the end of the first burst of attempts: the last new
            // connect failure before 200 ms without any. Later single
            // failures are re-admission probes after an ejection (Envoy's
            // and ours alike), counted in `dead_attempts`.
            let first = connect_failures(&proxies, dead).await;
            let (mut last, mut last_change, mut quiet) = (first, crashed, 0);
            while crashed.elapsed() < cfg.crash_for {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = connect_failures(&proxies, dead).await;
                if now != last {
                    last = now;
                    if off_ms.is_none() {
                        last_change = Instant::now();
                    }
                    quiet = 0;
                } else {
                    quiet += 1;
                    if quiet == 2 && off_ms.is_none() {
                        off_ms = Some(last_change.duration_since(crashed).as_millis() as u64);
                    }
                }
            }
            dead_attempts = Some(last - first);
            backends[0].recover().await?;
            recovered_at = Some(start.elapsed());
        }
        _ => {}
    }
    let reports = join(traffic).await?;
    let proxy_cores = match (cpu_before, cpu_seconds(&proxies)) {
        (Some(a), Some(b)) => Some((b - a) / start.elapsed().as_secs_f64()),
        _ => None,
    };
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let utilization = probe.await.unwrap_or_default();
    for b in &mut backends {
        b.set_antagonist(0);
    }
    drop(proxies);
    let mut samples: Vec<&Sample> = reports.iter().flat_map(|r| r.samples.iter()).collect();
    samples.sort_by_key(|s| s.at);
    let back_ms = recovered_at.and_then(|t| {
        samples
            .iter()
            .find(|s| s.at >= t && s.backend.as_deref() == Some(BACKENDS[0]))
            .map(|s| (s.at - t).as_millis() as u64)
    });
    let mut latency = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut requests = 0;
    let mut ok = 0;
    let mut by_backend: BTreeMap<String, u64> = BTreeMap::new();
    for r in &reports {
        latency.add(&r.latency).ok();
        requests += r.sent + r.dropped;
        ok += r.success_count();
    }
    for s in &samples {
        if let (Some(b), Some(200..=299)) = (&s.backend, s.status) {
            *by_backend.entry(b.to_string()).or_default() += 1;
        }
    }
    let shares = share_map(&by_backend);
    let backend_p99_us = backend_p99(&samples);
    let timeline = timeline(&samples, &utilization, length);
    let errors = requests.saturating_sub(ok);
    Ok(CellRun {
        requests,
        errors,
        error_rate: errors as f64 / requests.max(1) as f64,
        p50_us: latency.value_at_quantile(0.50),
        p99_us: latency.value_at_quantile(0.99),
        p999_us: latency.value_at_quantile(0.999),
        shares,
        backend_p99_us,
        proxy_cores,
        off_ms,
        back_ms,
        dead_attempts,
        timeline,
    })
}

/// CPU seconds the proxies used so far, all of them; `None` when one
/// cannot be read.
fn cpu_seconds(proxies: &[Envoy]) -> Option<f64> {
    proxies
        .iter()
        .map(|p| p.cpu_time().ok().map(|d| d.as_secs_f64()))
        .sum()
}

/// p99 latency of each backend's successful answers, µs.
fn backend_p99(samples: &[&Sample]) -> BTreeMap<String, u64> {
    let mut by: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for s in samples {
        if let (Some(b), Some(200..=299)) = (&s.backend, s.status) {
            by.entry(b).or_default().push(s.latency.as_micros() as u64);
        }
    }
    by.into_iter()
        .map(|(b, mut v)| {
            v.sort_unstable();
            let k = ((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1;
            (b.to_string(), v[k])
        })
        .collect()
}

fn share_map(counts: &BTreeMap<String, u64>) -> BTreeMap<String, f64> {
    let total: u64 = counts.values().sum();
    BACKENDS
        .iter()
        .map(|b| {
            let n = counts.get(*b).copied().unwrap_or(0);
            (b.to_string(), n as f64 / total.max(1) as f64)
        })
        .collect()
}

/// Per-second p99, shares and mean reported utilization.
fn timeline(samples: &[&Sample], util: &[(Duration, Vec<f64>)], length: Duration) -> Vec<Second> {
    let secs = length.as_secs().max(1) as usize;
    (0..secs)
        .map(|k| {
            let in_second = |at: Duration| at.as_secs() as usize == k;
            let mut lat: Vec<u64> = Vec::new();
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            for s in samples.iter().filter(|s| in_second(s.at)) {
                lat.push(s.latency.as_micros() as u64);
                if let (Some(b), Some(200..=299)) = (&s.backend, s.status) {
                    *counts.entry(b.to_string()).or_default() += 1;
                }
            }
            lat.sort_unstable();
            let p99 = lat
                .get((lat.len() as f64 * 0.99) as usize)
                .or(lat.last())
                .copied()
                .unwrap_or(0);
            let points: Vec<&Vec<f64>> = util
                .iter()
                .filter(|(at, _)| in_second(*at))
                .map(|(_, u)| u)
                .collect();
            let utilization = BACKENDS
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let v: Vec<f64> = points.iter().filter_map(|p| p.get(i).copied()).collect();
                    (b.to_string(), v.iter().sum::<f64>() / v.len().max(1) as f64)
                })
                .collect();
            Second {
                p99_us: p99,
                shares: share_map(&counts),
                utilization,
            }
        })
        .collect()
}

/// Runs the matrix: for each repeat, every scenario, every policy in turn
/// (so drift hits all policies alike).
pub async fn run(cfg: &MatrixConfig, progress: impl Fn(&str)) -> Result<Vec<Cell>> {
    let policies = policies(cfg)?;
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| cfg.scenarios.contains(s.letter()))
        .collect();
    let mut cells: Vec<Cell> = Vec::new();
    for &scenario in &scenarios {
        for p in policies.iter().filter(|p| measured(scenario, p)) {
            cells.push(Cell {
                scenario,
                policy: p.name.clone(),
                runs: Vec::new(),
            });
        }
    }
    for repeat in 0..cfg.repeats {
        for &scenario in &scenarios {
            for p in policies.iter().filter(|p| measured(scenario, p)) {
                progress(&format!(
                    "lb matrix {}/{}: {} · {}",
                    repeat + 1,
                    cfg.repeats,
                    scenario.label(),
                    p.name
                ));
                let run = run_cell(cfg, scenario, p, repeat).await?;
                if let Some(c) = cells
                    .iter_mut()
                    .find(|c| c.scenario == scenario && c.policy == p.name)
                {
                    c.runs.push(run);
                }
            }
        }
    }
    Ok(cells)
}

fn ms(us: f64) -> String {
    format!("{:.1}", us / 1000.0)
}

/// The matrix as markdown: per scenario, each policy's medians with the
/// spread (min–max over the repeats) and the verdicts of the LB-quality
/// issue for the Switchyard default; nothing when the matrix did not run.
pub fn markdown(cells: &[Cell], cfg: &MatrixConfig, default_policy: &str) -> String {
    let mut out = String::new();
    if cells.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "LB quality matrix: backends x1/x2/x4 of {}/{}/{} slots × {}, reports in TEXT headers (utilization and `named_metrics.in_flight`), open-loop with {}; median of {} interleaved repeats, [min–max] beside. Latencies in ms, coordinated-omission corrected.\n",
        cfg.unit_capacity,
        cfg.unit_capacity * 2,
        cfg.unit_capacity * 4,
        match cfg.service() {
            Latency::LogNormal { p99, .. } => format!(
                "log-normal service times (median {} ms, p99 {} ms, mean {:.1} ms)",
                cfg.latency_ms,
                p99.as_millis(),
                cfg.mean_service_ms()
            ),
            _ => format!("{} ms", cfg.latency_ms),
        },
        match cfg.arrivals {
            ArrivalKind::Paced => "paced sends (exactly 1/rate apart per proxy)",
            ArrivalKind::Poisson =>
                "Poisson arrivals (the same send times for every policy of a repeat)",
        },
        cfg.repeats
    );
    for scenario in Scenario::ALL {
        let row: Vec<&Cell> = cells.iter().filter(|c| c.scenario == scenario).collect();
        if row.iter().all(|c| c.runs.is_empty()) {
            continue;
        }
        let _ = writeln!(out, "**{}**\n", scenario.label());
        let crash = scenario == Scenario::Crash;
        let _ = writeln!(
            out,
            "| policy | p50 | p99 | p99.9 | errors | shares x1/x2/x4 | p99 x1/x2/x4 | proxy CPU |{}",
            if crash {
                " off after | attempts while down | back after |"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---|---|---:|{}",
            if crash { "---:|---:|---:|" } else { "" }
        );
        for c in &row {
            let (p50, _, _) = c.stat(|r| r.p50_us as f64);
            let (p99, p99lo, p99hi) = c.stat(|r| r.p99_us as f64);
            let (p999, _, _) = c.stat(|r| r.p999_us as f64);
            let (err, errlo, errhi) = c.stat(|r| r.error_rate);
            let pooled = c.policy == FLOOR_POLICY;
            let shares = BACKENDS
                .iter()
                .map(|b| {
                    if pooled {
                        return "—".to_string();
                    }
                    let (s, _, _) = c.stat(|r| r.shares.get(*b).copied().unwrap_or(0.0));
                    format!("{:.0}%", s * 100.0)
                })
                .collect::<Vec<_>>()
                .join(" / ");
            let tails = BACKENDS
                .iter()
                .map(|b| {
                    if pooled || c.runs.iter().any(|r| !r.backend_p99_us.contains_key(*b)) {
                        // No successful answer in some repeat: no tail to show.
                        return "—".to_string();
                    }
                    let (t, _, _) =
                        c.stat(|r| r.backend_p99_us.get(*b).copied().unwrap_or(0) as f64);
                    ms(t)
                })
                .collect::<Vec<_>>()
                .join(" / ");
            let cpu = if c.runs.iter().all(|r| r.proxy_cores.is_some()) {
                let (cores, _, _) = c.stat(|r| r.proxy_cores.unwrap_or(0.0));
                format!("{:.0}%", cores * 100.0)
            } else {
                "—".to_string()
            };
            let mut line = format!(
                "| {} | {} | {} [{}–{}] | {} | {:.2}% [{:.2}–{:.2}] | {} | {} | {} |",
                c.policy,
                ms(p50),
                ms(p99),
                ms(p99lo),
                ms(p99hi),
                ms(p999),
                err * 100.0,
                errlo * 100.0,
                errhi * 100.0,
                shares,
                tails,
                cpu
            );
            if crash {
                let (off, offlo, offhi) = c.stat(|r| r.off_ms.map_or(f64::INFINITY, |o| o as f64));
                let (tries, _, _) = c.stat(|r| r.dead_attempts.unwrap_or(0) as f64);
                let (back, _, backhi) = c.stat(|r| r.back_ms.map_or(f64::INFINITY, |b| b as f64));
                let _ = write!(
                    line,
                    " {off:.0} ms [{offlo:.0}–{offhi:.0}] | {tries:.0} | {back:.0} ms [max {backhi:.0}] |"
                );
            }
            let _ = writeln!(out, "{line}");
        }
        // The goals for the default policy, and the same yardstick
        // for every other Switchyard policy.
        let _ = writeln!(out);
        let mut ours: Vec<&str> = vec![default_policy];
        ours.extend(
            row.iter()
                .map(|c| c.policy.as_str())
                .filter(|p| p.starts_with("switchyard") && *p != default_policy),
        );
        for policy in ours {
            let _ = writeln!(out, "{}\n", verdict(scenario, &row, policy));
        }
        if let Some(f) = floor_verdict(scenario, &row) {
            let _ = writeln!(out, "{f}\n");
        }
    }
    out
}

/// What the floor says of the goal in `scenario`: the lowest ratio to the
/// best built-in any policy could have had in these runs.
fn floor_verdict(scenario: Scenario, row: &[&Cell]) -> Option<String> {
    let goal = match scenario {
        Scenario::OneProxy => 1.1,
        Scenario::ThreeProxies | Scenario::Antagonist | Scenario::Grpc => 0.8,
        Scenario::Crash => return None,
    };
    let p99 = |c: &Cell| c.stat(|r| r.p99_us as f64).0;
    let floor = row
        .iter()
        .find(|c| c.policy == FLOOR_POLICY && !c.runs.is_empty())?;
    let best = row
        .iter()
        .filter(|c| c.policy.starts_with("envoy") && !c.runs.is_empty())
        .min_by(|a, b| p99(a).total_cmp(&p99(b)))?;
    let ratio = p99(floor) / p99(best).max(1.0);
    Some(format!(
        "The floor (one queue for all the slots): p99 {}, {:.2}× the best built-in's: {}.",
        ms(p99(floor)),
        ratio,
        if ratio <= goal {
            format!("the goal (≤ {goal}×) is within a policy's reach here")
        } else {
            format!("no policy could reach the goal (≤ {goal}×) in these runs")
        }
    ))
}

/// The LB-quality issue's acceptance for `policy` in `scenario`.
fn verdict(scenario: Scenario, row: &[&Cell], policy: &str) -> String {
    let default_policy = policy;
    let Some(ours) = row.iter().find(|c| c.policy == policy) else {
        return String::new();
    };
    let builtins: Vec<&&Cell> = row
        .iter()
        .filter(|c| c.policy.starts_with("envoy"))
        .collect();
    let p99 = |c: &Cell| c.stat(|r| r.p99_us as f64).0;
    let err = |c: &Cell| c.stat(|r| r.error_rate).0;
    let Some(best) = builtins.iter().min_by(|a, b| p99(a).total_cmp(&p99(b))) else {
        return String::new();
    };
    let ratio = p99(ours) / p99(best).max(1.0);
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    match scenario {
        Scenario::OneProxy => format!(
            "{default_policy}: p99 {:.2}× the best built-in's ({}; goal ≤ 1.1×): {}.",
            ratio,
            best.policy,
            met(ratio <= 1.1)
        ),
        Scenario::ThreeProxies | Scenario::Antagonist | Scenario::Grpc => {
            let no_more_errors = err(ours) <= err(best) + 1e-9;
            format!(
                "{default_policy}: p99 {:.2}× the best built-in's ({}; goal ≤ 0.8×): {}; error rate {:.2}% vs {:.2}%: {}.",
                ratio,
                best.policy,
                met(ratio <= 0.8),
                err(ours) * 100.0,
                err(best) * 100.0,
                met(no_more_errors)
            )
        }
        Scenario::Crash => {
            let off = ours
                .stat(|r| r.off_ms.map_or(f64::INFINITY, |o| o as f64))
                .2;
            let back = ours.stat(|r| r.back_ms.unwrap_or(u64::MAX) as f64).2;
            let e = ours.stat(|r| r.error_rate).2;
            format!(
                "{default_policy} (worst repeat): errors {:.2}% (goal < 0.5 %): {}; off the dead backend after {:.0} ms (goal < 1 s): {}; back {:.0} ms after its recovery, 1 s ejection included (goal ≤ 2 s): {}.",
                e * 100.0,
                met(e < 0.005),
                off,
                met(off < 1000.0),
                back,
                met(back <= 2000.0)
            )
        }
    }
}

/// An HTML page with, per scenario, the p99 per second of every policy and
/// the default policy's per-backend shares and reported utilization over
/// time (first repeat).
pub fn html(cells: &[Cell], cfg: &MatrixConfig, default_policy: &str) -> Result<String> {
    let mut out = String::from(
        "<!doctype html><meta charset=utf-8><title>Switchyard LB quality matrix</title><body style=\"font-family:sans-serif\">",
    );
    let _ = write!(
        out,
        "<h1>LB quality matrix</h1><pre>{}</pre>",
        esc(&markdown(cells, cfg, default_policy))
    );
    for scenario in Scenario::ALL {
        let row: Vec<&Cell> = cells.iter().filter(|c| c.scenario == scenario).collect();
        let Some(len) = row
            .iter()
            .filter_map(|c| c.runs.first())
            .map(|r| r.timeline.len())
            .max()
        else {
            continue;
        };
        let events = events(scenario, cfg);
        let lines: Vec<Line> = row
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let r = c.runs.first()?;
                Some(Line {
                    name: c.policy.clone(),
                    color: PALETTE[i % PALETTE.len()],
                    points: r
                        .timeline
                        .iter()
                        .enumerate()
                        .map(|(k, s)| Some((k as f64 + 0.5, s.p99_us as f64 / 1000.0)))
                        .collect(),
                })
            })
            .collect();
        let y_max = lines
            .iter()
            .flat_map(|l| l.points.iter().flatten().map(|p| p.1))
            .fold(1.0, f64::max);
        let _ = write!(out, "<h2>{}</h2>", esc(scenario.label()));
        out.push_str(&chart(
            "p99 latency per second (ms), every policy",
            "p99 (ms)",
            len as f64,
            y_max * 1.05,
            YAxis::Plain,
            &lines,
            &events,
            Style::Lines,
        )?);
        if let Some(r) = row
            .iter()
            .find(|c| c.policy == default_policy)
            .and_then(|c| c.runs.first())
        {
            let mut lines = Vec::new();
            for (i, b) in BACKENDS.iter().enumerate() {
                lines.push(Line {
                    name: format!("{b} share"),
                    color: PALETTE[i],
                    points: r
                        .timeline
                        .iter()
                        .enumerate()
                        .map(|(k, s)| Some((k as f64 + 0.5, s.shares.get(*b).copied()?)))
                        .collect(),
                });
                lines.push(Line {
                    name: format!("{b} utilization"),
                    color: PALETTE[i + 3],
                    points: r
                        .timeline
                        .iter()
                        .enumerate()
                        .map(|(k, s)| Some((k as f64 + 0.5, s.utilization.get(*b).copied()?)))
                        .collect(),
                });
            }
            out.push_str(&chart(
                &format!("{default_policy}: share of answers and reported utilization per backend"),
                "share / utilization",
                len as f64,
                1.2,
                YAxis::Percent,
                &lines,
                &events,
                Style::Lines,
            )?);
        }
    }
    Ok(out)
}

/// Marks of a scenario's events, seconds from the measurement's start.
fn events(scenario: Scenario, cfg: &MatrixConfig) -> Vec<Mark> {
    let mark = |t: f64, label: &str| Mark {
        t,
        label: label.to_string(),
        traffic: false,
    };
    match scenario {
        Scenario::Antagonist => (1..cfg.antagonist_moves)
            .map(|k| {
                mark(
                    cfg.antagonist_period.as_secs_f64() * k as f64,
                    "antagonist moves",
                )
            })
            .collect(),
        Scenario::Crash => vec![
            mark(cfg.crash_after.as_secs_f64(), "x1 crashes"),
            mark(
                (cfg.crash_after + cfg.crash_for).as_secs_f64(),
                "x1 recovers",
            ),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn sample(ms: u64, backend: &str, status: u16) -> Sample {
        Sample {
            at: Duration::ZERO,
            latency: Duration::from_millis(ms),
            status: Some(status),
            backend: Some(Arc::from(backend)),
        }
    }

    #[test]
    fn extra_policies_must_be_objects_with_new_names() {
        let cfg = |name: &str, lb: serde_json::Value| MatrixConfig {
            extra_policies: vec![(name.into(), lb)],
            ..MatrixConfig::default()
        };
        let ok = policies(&cfg("d3", serde_json::json!({"prequal": {"choices": 3}}))).unwrap();
        assert!(ok.iter().any(|p| p.name == "switchyard d3"));
        assert!(policies(&cfg("x", serde_json::json!(3))).is_err());
        assert!(policies(&cfg("A58 WRR", serde_json::json!({}))).is_err());
        let only = MatrixConfig {
            policies: vec!["client_side".into()],
            ..MatrixConfig::default()
        };
        let names: Vec<String> = policies(&only)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["envoy client_side_weighted_round_robin"]);
    }

    #[test]
    fn the_rate_follows_the_mean_service_time() {
        let fixed = MatrixConfig::default();
        assert_eq!(fixed.mean_service_ms(), 50.0);
        // p99 = 4 × p50: σ = ln 4 / 2.326 = 0.596, mean = 50 × e^0.178.
        let varied = MatrixConfig {
            service_p99_ms: Some(200),
            ..MatrixConfig::default()
        };
        assert!(
            (varied.mean_service_ms() - 59.7).abs() < 0.1,
            "{}",
            varied.mean_service_ms()
        );
        // A p99 not above the median is a fixed time.
        let odd = MatrixConfig {
            service_p99_ms: Some(50),
            ..MatrixConfig::default()
        };
        assert_eq!(odd.service(), Latency::ms(50));
    }

    #[test]
    fn each_backend_has_its_own_tail_of_successful_answers() {
        let mut v: Vec<Sample> = (1..=100).map(|ms| sample(ms, "x1", 200)).collect();
        v.push(sample(5, "x4", 200));
        // A failure's latency is not the backend's answer.
        v.push(sample(9_000, "x4", 503));
        let refs: Vec<&Sample> = v.iter().collect();
        let p99 = backend_p99(&refs);
        assert_eq!(p99.get("x1"), Some(&99_000));
        assert_eq!(p99.get("x4"), Some(&5_000));
    }

    fn cell(scenario: Scenario, policy: &str, p99_ms: u64) -> Cell {
        let run = CellRun {
            requests: 100,
            errors: 0,
            error_rate: 0.0,
            p50_us: 50_000,
            p99_us: p99_ms * 1000,
            p999_us: p99_ms * 1000,
            shares: BTreeMap::new(),
            backend_p99_us: BTreeMap::new(),
            proxy_cores: None,
            off_ms: None,
            back_ms: None,
            dead_attempts: None,
            timeline: Vec::new(),
        };
        Cell {
            scenario,
            policy: policy.into(),
            runs: vec![run],
        }
    }

    #[test]
    fn the_floor_says_whether_any_policy_could_reach_the_goal() {
        let verdict = |floor_ms, builtin_ms| {
            let b = Scenario::ThreeProxies;
            let cells = [
                cell(b, DEFAULT_POLICY, 60),
                cell(b, "envoy client_side_weighted_round_robin", builtin_ms),
                cell(b, "envoy round_robin", 400),
                cell(b, FLOOR_POLICY, floor_ms),
            ];
            let row: Vec<&Cell> = cells.iter().collect();
            floor_verdict(b, &row).unwrap()
        };
        // 68 / 75 = 0.91: not even the pooled queue gets to 0.8×.
        assert!(verdict(68, 75).contains("0.91× the best built-in's: no policy could reach"));
        assert!(verdict(55, 70).contains("0.79× the best built-in's: the goal (≤ 0.8×) is within"));
        // The floor is no built-in: it never is the yardstick itself.
        let b = Scenario::ThreeProxies;
        let cells = [
            cell(b, DEFAULT_POLICY, 60),
            cell(b, FLOOR_POLICY, 50),
            cell(b, "envoy random", 90),
        ];
        let row: Vec<&Cell> = cells.iter().collect();
        assert!(verdict_of(&row).contains("envoy random"));
        // No floor row (or the crash scenario): nothing to say.
        assert_eq!(floor_verdict(b, &row[..1]), None);
        assert_eq!(floor_verdict(Scenario::Crash, &row), None);
    }

    fn verdict_of(row: &[&Cell]) -> String {
        verdict(Scenario::ThreeProxies, row, DEFAULT_POLICY)
    }

    #[test]
    fn every_scenario_but_the_crash_measures_the_floor() {
        let all = policies(&MatrixConfig::default()).unwrap();
        let floor = all.iter().find(|p| p.name == FLOOR_POLICY).unwrap();
        for s in Scenario::ALL {
            assert_eq!(measured(s, floor), s != Scenario::Crash, "{s:?}");
            assert!(
                all.iter()
                    .filter(|p| p.name != FLOOR_POLICY)
                    .all(|p| measured(s, p))
            );
        }
    }

    #[test]
    fn every_policy_of_a_repeat_gets_the_same_send_times() {
        let a = ArrivalKind::Poisson;
        assert_eq!(a.arrivals(1, 2), a.arrivals(1, 2));
        // Each proxy and each repeat its own process.
        assert_ne!(a.arrivals(1, 2), a.arrivals(1, 1));
        assert_ne!(a.arrivals(1, 2), a.arrivals(2, 2));
        assert_eq!(ArrivalKind::Paced.arrivals(1, 2), Arrivals::Paced);
    }
}
