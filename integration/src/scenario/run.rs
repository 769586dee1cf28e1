//! Runs a scenario: backends, collector and discovery up, Envoy started,
//! backend events and samplers scheduled, the traffic driven, the access
//! log accounted for, results written (JSON, HTML, records).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::driver::{self, ClientPlan, FlowPlan, Live, Load, MixEntry, Obs, PhasePlan, Shot};
use super::envoy_config::{self, BackendAddr, Infra};
use super::html;
use super::mix::{self, Mix};
use super::results::{
    self, BackendResult, EventRecord, Evidence, LogResult, ReplayResult, RunResult, Totals,
};
use super::spec::{
    Action, Assertion, BackendDef, ErrorPatternSpec, FilterDef, FilterKind, MixCheck,
    OrcaFormatSpec, Scenario, Sink, phase_name,
};
use crate::backend::{Backend, BackendSet, BackendSpec, ErrorPattern};
use crate::collector::Collector;
use crate::discovery::DiscoveryServer;
use crate::envoy::{Envoy, Runtime};
use crate::paths;
use crate::replay::Replay;

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Default: [`Runtime::from_env`] (Docker when a daemon answers).
    pub runtime: Option<Runtime>,
    /// Default: `integration/out/<scenario>-<mode>-<time>/`.
    pub out_dir: Option<PathBuf>,
    /// Every time in the scenario is multiplied by this (1 = as written).
    pub scale: f64,
    /// An indicatif progress bar on stderr (hidden when it is no terminal).
    pub progress: bool,
    /// Replay recorded traffic instead of the scenario's flows.
    pub replay: Option<ReplayInput>,
    /// Replay: fail when the host/path/status mix differs by more than this.
    pub mix_tolerance: Option<f64>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            runtime: None,
            out_dir: None,
            scale: 1.0,
            progress: false,
            replay: None,
            mix_tolerance: None,
        }
    }
}

/// Access-log records to replay.
#[derive(Clone, Debug)]
pub struct ReplayInput {
    pub records: PathBuf,
    /// 1 = recorded timing, 2 = twice as fast.
    pub speed: f64,
}

/// A finished run.
#[derive(Debug)]
pub struct RunOutcome {
    pub result: RunResult,
    pub dir: PathBuf,
    pub json: PathBuf,
    pub html: PathBuf,
    pub records: Option<PathBuf>,
    pub table: String,
    pub obs: Vec<Obs>,
}

impl RunOutcome {
    pub fn passed(&self) -> bool {
        self.result.passed
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prints above the progress bar, or to stderr without one.
fn say(pb: &ProgressBar, msg: impl AsRef<str>) {
    if pb.is_hidden() {
        eprintln!("{}", msg.as_ref());
    } else {
        pb.println(msg.as_ref());
    }
}

/// The scenario's flows as the driver runs them.
pub fn plan_flows(s: &Scenario) -> Result<Vec<FlowPlan>> {
    let mut plans = Vec::new();
    for (fi, f) in s.traffic.iter().enumerate() {
        let base: Arc<Vec<MixEntry>> = Arc::new(
            f.requests
                .iter()
                .map(MixEntry::from_def)
                .collect::<Result<_>>()?,
        );
        let mut t = f.start.0;
        let mut phases = Vec::new();
        for (pi, p) in f.phases.iter().enumerate() {
            let mix = match &p.requests {
                Some(m) => Arc::new(m.iter().map(MixEntry::from_def).collect::<Result<_>>()?),
                None => base.clone(),
            };
            let load = match (p.rate, p.concurrency) {
                (Some(rate), _) => Load::Open {
                    rate,
                    max_in_flight: p.max_in_flight,
                },
                (None, Some(concurrency)) => Load::Closed { concurrency },
                (None, None) => bail!("traffic[{fi}].phases[{pi}]: no rate or concurrency"),
            };
            phases.push(PhasePlan {
                name: phase_name(p, pi),
                start: t,
                duration: p.duration.0,
                load,
                mix,
            });
            t += p.duration.0;
        }
        let clients = match &f.clients {
            Some(c) => Some(ClientPlan {
                addresses: c
                    .expand(&format!("traffic[{fi}].clients"))?
                    .into_iter()
                    .map(Arc::from)
                    .collect(),
                pick: c.pick,
                header: c.header.to_ascii_lowercase(),
            }),
            None => None,
        };
        plans.push(FlowPlan {
            name: f.name.clone(),
            phases,
            clients,
            seed: s.seed.wrapping_mul(1_000_003).wrapping_add(fi as u64),
        });
    }
    Ok(plans)
}

struct ReplayPlan {
    flow: FlowPlan,
    recorded: Mix,
    requests: usize,
    notes: Vec<String>,
}

fn replay_plan(input: &ReplayInput) -> Result<ReplayPlan> {
    if !(input.speed.is_finite() && input.speed > 0.0) {
        bail!("--speed must be > 0");
    }
    let bytes = std::fs::read(&input.records)
        .with_context(|| format!("reading {}", input.records.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let replay = Replay::parse(&text);
    let notes: Vec<String> = replay
        .notes
        .iter()
        .take(20)
        .map(|(l, w)| format!("line {l}: {w}"))
        .collect();
    if replay.requests.is_empty() {
        bail!(
            "{}: no replayable access-log records{}",
            input.records.display(),
            notes.first().map(|n| format!(" ({n})")).unwrap_or_default()
        );
    }
    let shots: Vec<Shot> = replay
        .requests
        .iter()
        .map(|r| Shot {
            offset: r.offset.div_f64(input.speed),
            spec: r.spec.clone(),
        })
        .collect();
    let end = shots.last().map_or(Duration::ZERO, |s| s.offset) + Duration::from_millis(1);
    let requests = shots.len();
    Ok(ReplayPlan {
        flow: FlowPlan {
            name: "replay".into(),
            phases: vec![PhasePlan {
                name: "replay".into(),
                start: Duration::ZERO,
                duration: end,
                load: Load::Replay {
                    shots: Arc::new(shots),
                    max_in_flight: 4096,
                },
                mix: Arc::new(Vec::new()),
            }],
            clients: None,
            seed: 0,
        },
        recorded: Mix::from_records(&text),
        requests,
        notes,
    })
}

/// The latency a backend's events put in effect, in time order:
/// `"25.0 s: slow down ×4 (fixed 40 ms)"`, `"40.0 s: recover"`.
fn latency_after(d: &BackendDef) -> Vec<String> {
    d.events
        .iter()
        .filter_map(|e| {
            let a = e.action()?;
            match a {
                Action::SlowDown(_) | Action::Recover => Some(format!(
                    "{:.1} s: {}",
                    e.at.0.as_secs_f64(),
                    match a {
                        Action::Recover => d.latency.describe(),
                        _ => a.describe(&d.latency),
                    }
                )),
                _ => None,
            }
        })
        .collect()
}

/// Chart marks for the traffic: each flow's start and stop (when not the
/// run's), and its phase boundaries.
fn traffic_marks(plans: &[FlowPlan], end: Duration) -> Vec<(f64, String)> {
    let mut marks = Vec::new();
    for f in plans {
        for (i, p) in f.phases.iter().enumerate() {
            let t = p.start.as_secs_f64();
            if i == 0 {
                if t > 0.0 {
                    marks.push((t, format!("{} starts", f.name)));
                }
            } else {
                marks.push((t, format!("{}: {}", f.name, p.name)));
            }
        }
        let stop = f.end();
        if stop + Duration::from_millis(50) < end {
            marks.push((stop.as_secs_f64(), format!("{} stops", f.name)));
        }
    }
    marks.sort_by(|a, b| a.0.total_cmp(&b.0));
    marks
}

fn backend_spec(d: &BackendDef) -> BackendSpec {
    let mut b = BackendSpec::new(d.name.clone())
        .latency(d.latency.to_latency())
        .error_rate(d.error_rate)
        .error_pattern(match d.error_pattern {
            ErrorPatternSpec::Even => ErrorPattern::Even,
            ErrorPatternSpec::Random => ErrorPattern::Random,
        })
        .fail_fast(d.fail_fast)
        .orca(d.orca.format.to_format())
        .orca_source(d.orca.source());
    if let Some(c) = d.capacity {
        b = b.capacity(c);
    }
    b
}

/// `integration/out/<name>-<mode>-<YYYYmmdd-HHMMSS>`.
fn default_out_dir(name: &str, mode: &str) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    paths::workspace_root()
        .join("integration/out")
        .join(format!("{safe}-{mode}-{}", utc_stamp(secs)))
}

/// `YYYYmmdd-HHMMSS` in UTC (civil date from days, H. Hinnant).
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The discovery document: the load balancer's endpoints, drained ones
/// marked `draining`.
fn discovery_doc(eps: &[BackendAddr], drained: &BTreeSet<String>) -> Value {
    Value::Array(
        eps.iter()
            .map(|b| {
                let state = if drained.contains(&b.name) {
                    "draining"
                } else {
                    "active"
                };
                json!({"address": b.addr.to_string(), "name": b.name, "state": state})
            })
            .collect(),
    )
}

/// What samplers collect while the traffic runs.
#[derive(Default)]
struct Samples {
    utilization: BTreeMap<String, Vec<[f64; 2]>>,
    in_flight: BTreeMap<String, Vec<[f64; 2]>>,
    weights: BTreeMap<String, Vec<[f64; 2]>>,
}

fn reported_utilization(b: &Backend) -> f64 {
    let r = b.current_report();
    if r.application_utilization > 0.0 {
        r.application_utilization
    } else {
        r.cpu_utilization
    }
}

/// The load balancer's `weight.<endpoint>` gauges (weight × 1000).
async fn lb_weights(admin: SocketAddr) -> Option<BTreeMap<String, f64>> {
    let resp = crate::traffic::get(
        admin,
        "admin",
        "/stats?format=json&filter=load-balancer%5C.weight%5C.",
        &[],
    )
    .await
    .ok()?;
    let doc: Value = serde_json::from_slice(&resp.body).ok()?;
    let prefix = format!("{}weight.", FilterKind::LoadBalancer.metric_prefix());
    let mut out = BTreeMap::new();
    for s in doc["stats"].as_array()? {
        if let (Some(name), Some(v)) = (s["name"].as_str(), s["value"].as_f64())
            && let Some(ep) = name.strip_prefix(&prefix)
        {
            out.insert(ep.to_string(), v / 1000.0);
        }
    }
    Some(out)
}

/// Runs `scenario` (scaled by `opts.scale`) and writes its results.
/// Everything `switchyard-harness validate` can check before any traffic:
/// the scenario's own rules (field values, unknown flows and phases,
/// events and assertion windows outside the run; [`Scenario::load`] ran
/// them), the request plans of every flow, and Envoy's `--mode validate`
/// on the rendered config (placeholder loopback addresses stand for the
/// backends, collector and discovery server a run would start).
pub async fn validate(s: &Scenario, runtime: Runtime) -> Result<()> {
    plan_flows(s)?;
    let placeholder = |k: u16| SocketAddr::from(([127, 0, 0, 1], 10_000 + k));
    let addrs: Vec<BackendAddr> = s
        .backends
        .iter()
        .enumerate()
        .map(|(i, d)| BackendAddr {
            name: d.name.clone(),
            cluster: d.cluster.clone(),
            addr: placeholder(u16::try_from(i).unwrap_or(u16::MAX - 10_000)),
        })
        .collect();
    let collector = match s.filter(FilterKind::AccessLog) {
        Some(FilterDef::AccessLog(a)) if a.sink.collector() => Some(placeholder(9_000)),
        _ => None,
    };
    let drains = s
        .backends
        .iter()
        .any(|b| b.events.iter().any(|e| e.drain.is_some()));
    let infra = Infra {
        backends: &addrs,
        collector,
        discovery: drains.then(|| placeholder(9_001)),
    };
    envoy_config::builder(s, runtime, &infra)?
        .validate()
        .await
        .map_err(|e| anyhow!("{e}"))
}

pub async fn run(scenario: &Scenario, opts: RunOptions) -> Result<RunOutcome> {
    let started = Instant::now();
    let s = if (opts.scale - 1.0).abs() > f64::EPSILON {
        if !(opts.scale.is_finite() && opts.scale > 0.0) {
            bail!("the time scale must be > 0");
        }
        scenario.scaled(opts.scale)
    } else {
        scenario.clone()
    };
    let mode = if opts.replay.is_some() {
        "replay"
    } else {
        "run"
    };
    let runtime = match &opts.runtime {
        Some(r) => r.clone(),
        None => Runtime::from_env()?,
    };
    let (plans, replay) = match &opts.replay {
        None => (plan_flows(&s)?, None),
        Some(input) => {
            let r = replay_plan(input)?;
            (vec![r.flow.clone()], Some(r))
        }
    };
    let end = plans.iter().map(FlowPlan::end).max().unwrap_or_default();
    let dir = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| default_out_dir(&s.name, mode));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let pb = if opts.progress {
        ProgressBar::new(end.as_millis().max(1) as u64)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{spinner:.green} {prefix:.bold} [{bar:30.cyan/blue}] {msg}")
            .map_err(|e| anyhow!("progress bar style: {e}"))?
            .progress_chars("=> "),
    );
    pb.set_prefix(s.name.clone());

    // Backends, collector, discovery.
    let received_headers = s.received_headers();
    let set = Arc::new(
        BackendSet::start_all(
            s.backends
                .iter()
                .map(|d| backend_spec(d).record_headers(received_headers.clone())),
        )
        .await?,
    );
    let addrs: Vec<BackendAddr> = s
        .backends
        .iter()
        .filter_map(|d| {
            set.get(&d.name).map(|b| BackendAddr {
                name: d.name.clone(),
                cluster: d.cluster.clone(),
                addr: b.addr(),
            })
        })
        .collect();
    let sink = match s.filter(FilterKind::AccessLog) {
        Some(FilterDef::AccessLog(a)) => Some(a.sink),
        _ => None,
    };
    let collector = match sink {
        Some(k) if k.collector() => Some(Collector::start().await?),
        _ => None,
    };
    let drains = s
        .backends
        .iter()
        .any(|b| b.events.iter().any(|e| e.drain.is_some()));
    let discovery = if drains {
        Some(Arc::new(DiscoveryServer::start().await?))
    } else {
        None
    };
    let infra = Infra {
        backends: &addrs,
        collector: collector.as_ref().map(Collector::addr),
        discovery: discovery.as_ref().map(|d| d.addr()),
    };
    let lb_eps = envoy_config::lb_endpoints(&s, &infra);
    let drained: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    if let Some(d) = &discovery {
        d.set_endpoints(discovery_doc(&lb_eps, &lock(&drained)));
    }

    let builder = envoy_config::builder(&s, runtime.clone(), &infra)?;
    say(
        &pb,
        format!(
            "== {} ({mode}, {} runtime{}): starting Envoy with {}",
            s.name,
            runtime.name(),
            if (opts.scale - 1.0).abs() > f64::EPSILON {
                format!(", time ×{}", opts.scale)
            } else {
                String::new()
            },
            if s.envoy.filters.is_empty() {
                "no Switchyard filter".to_string()
            } else {
                s.envoy
                    .filters
                    .iter()
                    .map(FilterDef::name)
                    .collect::<Vec<_>>()
                    .join(" → ")
            }
        ),
    );
    let envoy = builder.start().await.map_err(|e| anyhow!("{e}"))?;
    std::fs::write(dir.join("envoy.yaml"), envoy.config())?;
    let target = envoy.listener(&s.envoy.listener)?;
    let admin = envoy.admin_addr();
    say(
        &pb,
        format!(
            "   Envoy ready: http://{target} (admin http://{admin}); {:.1} s of traffic",
            end.as_secs_f64()
        ),
    );

    let t0 = Instant::now() + Duration::from_millis(50);
    let events: Arc<Mutex<Vec<EventRecord>>> = Arc::default();
    let mut background = tokio::task::JoinSet::new();

    // Backend events.
    for def in &s.backends {
        for e in &def.events {
            let Some(action) = e.action() else { continue };
            let (set, def, events, pb) = (set.clone(), def.clone(), events.clone(), pb.clone());
            let (discovery, drained, lb_eps) = (discovery.clone(), drained.clone(), lb_eps.clone());
            let at = e.at.0;
            background.spawn(async move {
                tokio::time::sleep_until((t0 + at).into()).await;
                let Some(b) = set.get(&def.name) else { return };
                let what = action.describe(&def.latency);
                match &action {
                    Action::SlowDown(sd) => {
                        let l = match (&sd.latency, sd.factor) {
                            (Some(l), _) => l.clone(),
                            (None, f) => def.latency.times(f.unwrap_or(1.0)),
                        };
                        b.set_latency(l.to_latency());
                    }
                    Action::Fail(f) => {
                        b.set_error_rate(f.error_rate);
                        b.set_fail_fast(f.fail_fast);
                    }
                    Action::Orca(o) => {
                        b.set_orca_format(o.format.to_format());
                        b.set_orca_source(o.source());
                    }
                    Action::Recover => {
                        b.set_latency(def.latency.to_latency());
                        b.set_error_rate(def.error_rate);
                        b.set_fail_fast(def.fail_fast);
                        b.set_orca_format(def.orca.format.to_format());
                        b.set_orca_source(def.orca.source());
                        if let Some(d) = &discovery {
                            let mut dr = lock(&drained);
                            if dr.remove(&def.name) {
                                d.set_endpoints(discovery_doc(&lb_eps, &dr));
                            }
                        }
                    }
                    Action::Drain => {
                        if let Some(d) = &discovery {
                            let mut dr = lock(&drained);
                            dr.insert(def.name.clone());
                            d.set_endpoints(discovery_doc(&lb_eps, &dr));
                        }
                    }
                }
                let at_s = t0.elapsed().as_secs_f64();
                say(&pb, format!("   t={at_s:6.2}s  {}: {what}", def.name));
                lock(&events).push(EventRecord {
                    at_s,
                    backend: def.name.clone(),
                    action: what,
                });
            });
        }
    }

    // Samplers: reported utilization and in-flight per backend; the load
    // balancer's weights from Envoy.
    let samples: Arc<Mutex<Samples>> = Arc::default();
    let every = (end / 300).clamp(Duration::from_millis(100), Duration::from_secs(1));
    {
        let (set, samples) = (set.clone(), samples.clone());
        // Utilization only of backends that report it (now or after an event).
        let reporting: BTreeSet<String> = s
            .backends
            .iter()
            .filter(|b| {
                b.orca.format != OrcaFormatSpec::None || b.events.iter().any(|e| e.orca.is_some())
            })
            .map(|b| b.name.clone())
            .collect();
        background.spawn(async move {
            let mut tick = tokio::time::interval_at(t0.into(), every);
            loop {
                tick.tick().await;
                let t = t0.elapsed().as_secs_f64();
                let mut sm = lock(&samples);
                for b in set.iter() {
                    let name = b.name().to_string();
                    if reporting.contains(&name) {
                        let u = reported_utilization(b);
                        sm.utilization.entry(name.clone()).or_default().push([t, u]);
                    }
                    let f = b.stats().in_flight as f64;
                    sm.in_flight.entry(name).or_default().push([t, f]);
                }
            }
        });
    }
    if s.filter(FilterKind::LoadBalancer).is_some() {
        let samples = samples.clone();
        let every = every.max(Duration::from_millis(500));
        background.spawn(async move {
            let mut tick = tokio::time::interval_at(t0.into(), every);
            loop {
                tick.tick().await;
                let t = t0.elapsed().as_secs_f64();
                if let Some(w) = lb_weights(admin).await {
                    let mut sm = lock(&samples);
                    for (ep, v) in w {
                        sm.weights.entry(ep).or_default().push([t, v]);
                    }
                }
            }
        });
    }

    // Progress.
    let live = Arc::new(Live::default());
    {
        let (pb, live) = (pb.clone(), live.clone());
        let total = end.as_secs_f64();
        background.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut last = (Instant::now(), 0u64);
            let mut rps = 0.0;
            loop {
                tick.tick().await;
                let t = t0.elapsed();
                let sent = Live::get(&live.sent);
                let dt = last.0.elapsed().as_secs_f64();
                if dt >= 1.0 {
                    rps = (sent - last.1) as f64 / dt;
                    last = (Instant::now(), sent);
                }
                pb.set_position(t.as_millis() as u64);
                pb.set_message(format!(
                    "{:5.1}/{total:.0} s  {sent} req  {rps:.0}/s  2xx {}  429 {}  5xx {}  errors {}",
                    t.as_secs_f64().min(total),
                    Live::get(&live.ok),
                    Live::get(&live.limited),
                    Live::get(&live.server_errors),
                    Live::get(&live.errors),
                ));
            }
        });
    }

    let run_id = format!(
        "{:08x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0)
    );
    let driver::Output { obs, dropped } = driver::run(
        target,
        &plans,
        t0,
        s.request_timeout.0,
        &run_id,
        live.clone(),
    )
    .await?;
    background.abort_all();
    while background.join_next().await.is_some() {}
    pb.finish_and_clear();
    let traffic_s = t0.elapsed().as_secs_f64();
    say(
        &pb,
        format!(
            "   traffic done: {} requests in {traffic_s:.1} s",
            obs.len()
        ),
    );

    // Access-log records.
    let log = match sink {
        Some(k) => Some(collect_log(&s, k, collector.as_ref(), &envoy, &obs, &dir, &pb).await?),
        None => None,
    };
    let all_stats = envoy.stats().await.unwrap_or_default();
    let mut log = log;
    if let Some(l) = &mut log {
        let prefix = FilterKind::AccessLog.metric_prefix();
        l.filter_metrics = all_stats
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), *v)))
            .collect();
        if l.expected.is_none() {
            l.lost = l.filter_metrics.get("dropped").copied().unwrap_or(0);
        }
    }
    let envoy_stats: BTreeMap<String, u64> = all_stats
        .iter()
        .filter(|(k, _)| {
            k.starts_with("wasmcustom.")
                || k.starts_with("http.ingress.downstream_rq_")
                || (k.starts_with("cluster.")
                    && (k.ends_with(".upstream_rq_total") || k.ends_with(".upstream_rq_retry")))
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    drop(envoy);

    // Results.
    let samples = std::mem::take(&mut *lock(&samples));
    let events = std::mem::take(&mut *lock(&events));
    let totals = Totals::of(obs.iter(), end);
    // Shares per cluster, as the charts show them.
    let served_in = |cluster: &str| -> u64 {
        s.backends
            .iter()
            .filter(|b| b.cluster == cluster)
            .map(|b| totals.by_backend.get(&b.name).copied().unwrap_or(0))
            .sum()
    };
    let backends: Vec<BackendResult> = s
        .backends
        .iter()
        .map(|d| {
            let st = set.get(&d.name).map(|b| b.stats()).unwrap_or_default();
            let util = samples.utilization.get(&d.name);
            let mean = util
                .filter(|u| !u.is_empty())
                .map(|u| u.iter().map(|p| p[1]).sum::<f64>() / u.len() as f64);
            BackendResult {
                name: d.name.clone(),
                cluster: d.cluster.clone(),
                capacity: d.capacity,
                latency: d.latency.describe(),
                latency_after: latency_after(d),
                share: totals.by_backend.get(&d.name).copied().unwrap_or(0) as f64
                    / served_in(&d.cluster).max(1) as f64,
                requests: st.requests,
                errors: st.errors,
                max_in_flight: st.max_in_flight,
                max_busy: st.max_busy,
                mean_utilization: mean,
            }
        })
        .collect();
    let replay_result = replay.as_ref().map(|r| {
        let replayed = Mix::from_obs(obs.iter());
        ReplayResult {
            records_file: opts
                .replay
                .as_ref()
                .map(|i| i.records.display().to_string())
                .unwrap_or_default(),
            requests: r.requests,
            speed: opts.replay.as_ref().map_or(1.0, |i| i.speed),
            notes: r.notes.clone(),
            mix: mix::compare(&r.recorded, &replayed),
        }
    });
    let mut assertions: Vec<Assertion> = s.assertions.clone();
    if let Some(tol) = opts.mix_tolerance {
        assertions.push(Assertion::ReplayMix(MixCheck {
            name: Some(format!("replayed host/path/status mix within {tol}")),
            max_deviation: tol,
        }));
    }
    let mut received = std::collections::HashMap::new();
    for d in &s.backends {
        if let Some(b) = set.get(&d.name) {
            received.extend(b.received());
        }
    }
    let ev = Evidence {
        obs: &obs,
        flows: &plans,
        log: log.as_ref(),
        stats: &all_stats,
        replay: replay_result.as_ref().map(|r| &r.mix),
        received: &received,
    };
    let verdicts: Vec<_> = assertions
        .iter()
        .map(|a| results::evaluate(a, &ev))
        .collect();
    let passed = verdicts.iter().all(|a| a.passed || a.skipped);
    let json_path = dir.join("result.json");
    let html_path = dir.join("report.html");
    let mut files = BTreeMap::new();
    files.insert("result_json".into(), json_path.display().to_string());
    files.insert("report_html".into(), html_path.display().to_string());
    let junit_path = dir.join("junit.xml");
    files.insert("junit_xml".into(), junit_path.display().to_string());
    files.insert(
        "envoy_yaml".into(),
        dir.join("envoy.yaml").display().to_string(),
    );
    let records = log
        .as_ref()
        .and_then(|l| l.records_file.as_ref())
        .map(PathBuf::from);
    if let Some(r) = &records {
        files.insert("records".into(), r.display().to_string());
    }
    let cluster_of: BTreeMap<String, String> = s
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.cluster.clone()))
        .collect();
    let flow_names: Vec<String> = plans.iter().map(|p| p.name.clone()).collect();
    let mut series = results::series(
        &obs,
        end,
        results::bucket_for(&s, end),
        &cluster_of,
        &flow_names,
    );
    series.marks = traffic_marks(&plans, end);
    let w = series.bucket_s;
    let smooth = |m: BTreeMap<String, Vec<[f64; 2]>>| {
        m.into_iter()
            .map(|(k, v)| (k, results::bucket_means(&v, w)))
            .collect()
    };
    series.utilization = smooth(samples.utilization);
    series.in_flight = smooth(samples.in_flight);
    series.weights = samples.weights;
    let result = RunResult {
        scenario: s.name.clone(),
        description: s.description.trim().to_string(),
        file: s.source.as_ref().map(|p| p.display().to_string()),
        mode: mode.into(),
        runtime: runtime.name().into(),
        envoy_version: runtime.envoy_version(),
        scale: opts.scale,
        started_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .saturating_sub(started.elapsed().as_secs()),
        planned_s: end.as_secs_f64(),
        elapsed_s: traffic_s,
        passed,
        totals,
        flows: results::flows(&obs, &plans, &dropped),
        backends,
        events,
        log,
        replay: replay_result,
        assertions: verdicts,
        series,
        envoy_stats,
        files,
    };
    std::fs::write(&json_path, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&html_path, html::render(&result)?)
        .with_context(|| format!("writing {}", html_path.display()))?;
    std::fs::write(&junit_path, results::junit_xml(&result)?)
        .with_context(|| format!("writing {}", junit_path.display()))?;
    let table = results::summary_table(&result);
    Ok(RunOutcome {
        result,
        dir,
        json: json_path,
        html: html_path,
        records,
        table,
        obs,
    })
}

/// The `sampling.rate` of an access-log config (1 when absent).
fn sampling_rate(config: &Value) -> f64 {
    config
        .get("sampling")
        .and_then(|s| s.get("rate"))
        .and_then(Value::as_f64)
        .unwrap_or(1.0)
}

/// Record lines Envoy's log sink wrote: everything after `: ` on a
/// `wasm log ...: {` line.
pub fn envoy_log_records(logs: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| l.contains("wasm log ") && l.contains(": {"))
        .filter_map(|l| l.find(": {").map(|i| l[i + 2..].to_string()))
        .filter(|l| serde_json::from_str::<Value>(l).is_ok())
        .collect()
}

/// Waits for the access-log records of every answered request (or until
/// the filter has settled), writes them to `records.jsonl` and counts what
/// is missing.
async fn collect_log(
    s: &Scenario,
    sink: Sink,
    collector: Option<&Collector>,
    envoy: &Envoy,
    obs: &[Obs],
    dir: &Path,
    pb: &ProgressBar,
) -> Result<LogResult> {
    let config = s
        .filter(FilterKind::AccessLog)
        .map(|f| f.config().clone())
        .unwrap_or(Value::Null);
    let full = sampling_rate(&config) >= 1.0;
    let expected: HashSet<&str> = obs
        .iter()
        .filter(|o| o.status != 0)
        .filter_map(|o| o.request_id.as_deref())
        .collect();
    let t = Instant::now();
    let deadline = t + Duration::from_secs(20);
    let prefix = FilterKind::AccessLog.metric_prefix();
    let mut last_count = u64::MAX;
    let mut stable_polls = 0;
    let mut log_lines: Vec<String> = Vec::new();
    let missing = |ids: &HashSet<String>| expected.iter().filter(|id| !ids.contains(**id)).count();
    let (mut lost_c, mut lost_l) = (0usize, 0usize);
    loop {
        let mut have: u64 = 0;
        let mut done = true;
        if let Some(c) = collector.filter(|_| sink.collector()) {
            let ids: HashSet<String> = c.request_ids().into_keys().collect();
            have += ids.len() as u64;
            lost_c = missing(&ids);
            done &= if full { lost_c == 0 } else { false };
        }
        if sink.envoy_log() {
            log_lines = envoy_log_records(&envoy.logs());
            let ids: HashSet<String> = log_lines
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| crate::collector::request_id(&v))
                .collect();
            have += ids.len() as u64;
            lost_l = missing(&ids);
            done &= if full { lost_l == 0 } else { false };
        }
        if done || Instant::now() > deadline {
            break;
        }
        // Settled: the filter holds nothing and the count stopped moving
        // (what is missing now is lost, not late).
        let stats = envoy.stats().await.unwrap_or_default();
        let m = |n: &str| stats.get(&format!("{prefix}{n}")).copied().unwrap_or(0);
        let settled = m("queue_depth") == 0 && m("records") == m("delivered") + m("dropped");
        if have == last_count {
            stable_polls += 1;
        } else {
            stable_polls = 0;
        }
        last_count = have;
        if (settled || !sink.collector()) && stable_polls >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settle_s = t.elapsed().as_secs_f64();
    let (lines, collected, unique, duplicates) = match collector.filter(|_| sink.collector()) {
        Some(c) => {
            let st = c.stats();
            (
                c.to_json_lines(),
                st.records,
                st.unique_request_ids,
                st.duplicate_records,
            )
        }
        None => {
            let n = log_lines.len() as u64;
            let mut text = log_lines.join("\n");
            text.push('\n');
            (text, n, n, 0)
        }
    };
    let path = dir.join("records.jsonl");
    std::fs::write(&path, &lines).with_context(|| format!("writing {}", path.display()))?;
    let lost = lost_c.max(lost_l) as u64;
    say(
        pb,
        format!(
            "   access log: {collected} records in {settle_s:.1} s{}",
            if full {
                format!(", {lost} of {} missing", expected.len())
            } else {
                String::new()
            }
        ),
    );
    Ok(LogResult {
        sink: match sink {
            Sink::Collector => "collector",
            Sink::EnvoyLog => "envoy_log",
            Sink::Both => "both",
        }
        .into(),
        expected: full.then_some(expected.len() as u64),
        collected,
        unique_ids: unique,
        lost,
        duplicates,
        filter_metrics: BTreeMap::new(),
        records_file: Some(path.display().to_string()),
        settle_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(1_767_225_600 + 3_723), "20260101-010203");
    }

    #[test]
    fn log_lines() {
        let logs = "[2026][1][info][wasm] [x] wasm log access_log access_log access_log: {\"request_id\":\"a\"}\nother line\n[..] wasm log x: {broken\n";
        assert_eq!(envoy_log_records(logs), ["{\"request_id\":\"a\"}"]);
    }
}
