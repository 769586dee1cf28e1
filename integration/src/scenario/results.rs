//! What a run measured: totals per flow, phase and backend, time series for
//! the report, the assertions' verdicts, and the summary table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

use super::driver::{FlowPlan, Obs};
use super::mix::MixComparison;
use super::spec::{Assertion, Scenario, Scope, StatusClass};

/// Counts and latency of a set of requests.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub sent: u64,
    pub completed: u64,
    pub transport_errors: u64,
    pub timeouts: u64,
    /// By status code (as text, JSON object keys).
    pub by_status: BTreeMap<String, u64>,
    /// Backend-served responses by backend.
    pub by_backend: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Requests sent per second over the window.
    pub rps: f64,
}

impl Totals {
    pub fn of<'a>(obs: impl IntoIterator<Item = &'a Obs>, window: Duration) -> Totals {
        let mut t = Totals::default();
        let mut lat = Vec::new();
        for o in obs {
            t.sent += 1;
            match o.status {
                0 if o.timeout => t.timeouts += 1,
                0 => t.transport_errors += 1,
                s => {
                    t.completed += 1;
                    *t.by_status.entry(s.to_string()).or_default() += 1;
                    lat.push(o.latency);
                }
            }
            if let Some(b) = &o.backend {
                *t.by_backend.entry(b.to_string()).or_default() += 1;
            }
        }
        lat.sort_unstable();
        t.p50_ms = percentile_ms(&lat, 50.0);
        t.p90_ms = percentile_ms(&lat, 90.0);
        t.p99_ms = percentile_ms(&lat, 99.0);
        t.p999_ms = percentile_ms(&lat, 99.9);
        t.max_ms = lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let secs = window.as_secs_f64();
        t.rps = if secs > 0.0 {
            t.sent as f64 / secs
        } else {
            0.0
        };
        t
    }

    pub fn status(&self, code: u16) -> u64 {
        self.by_status.get(&code.to_string()).copied().unwrap_or(0)
    }

    /// Requests with status in `lo..=hi`.
    pub fn status_range(&self, lo: u16, hi: u16) -> u64 {
        self.by_status
            .iter()
            .filter(|(k, _)| k.parse::<u16>().is_ok_and(|s| (lo..=hi).contains(&s)))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn errors(&self) -> u64 {
        self.transport_errors + self.timeouts
    }
}

/// Nearest-rank percentile of sorted latencies, in ms (0 when empty).
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

#[derive(Clone, Debug, Serialize)]
pub struct PhaseResult {
    pub name: String,
    pub start_s: f64,
    pub duration_s: f64,
    /// Requests per second asked for (open loop) or clients (closed loop).
    pub load: String,
    pub totals: Totals,
}

#[derive(Clone, Debug, Serialize)]
pub struct FlowResult {
    pub name: String,
    pub phases: Vec<PhaseResult>,
    pub totals: Totals,
    /// Open-loop sends skipped at the in-flight cap.
    pub dropped: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendResult {
    pub name: String,
    pub cluster: String,
    pub capacity: Option<usize>,
    pub latency: String,
    /// The latency in effect after each event that changed it:
    /// `"25.0 s: fixed 40 ms"`.
    pub latency_after: Vec<String>,
    /// Share of its cluster's backend-served responses (client view).
    pub share: f64,
    /// Requests the backend answered (its own count).
    pub requests: u64,
    /// 503s it injected.
    pub errors: u64,
    pub max_in_flight: usize,
    pub max_busy: usize,
    /// Mean of the sampled reported utilization (backends that report).
    pub mean_utilization: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EventRecord {
    pub at_s: f64,
    pub backend: String,
    pub action: String,
}

/// Access-log accounting.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LogResult {
    pub sink: String,
    /// Responses whose record should exist (sampling off), else `None`.
    pub expected: Option<u64>,
    /// Records the harness collected.
    pub collected: u64,
    /// Distinct request ids among them.
    pub unique_ids: u64,
    /// Expected records that never arrived (or, with sampling, the filter's
    /// own `dropped` count).
    pub lost: u64,
    pub duplicates: u64,
    /// The filter's counters (`records`, `delivered`, `dropped`, ...).
    pub filter_metrics: BTreeMap<String, u64>,
    /// Collected records, as JSON lines (replayable).
    pub records_file: Option<String>,
    /// How long the records took to arrive after the traffic ended.
    pub settle_s: f64,
}

/// Series for the report; `t` holds bucket middles in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    pub bucket_s: f64,
    pub t: Vec<f64>,
    /// Per backend: its share of the responses its cluster served (backends
    /// alone in a cluster are left out when there are several clusters);
    /// `None` in a bucket without any.
    pub share: BTreeMap<String, Vec<Option<f64>>>,
    pub latency_ms: BTreeMap<String, Vec<Option<f64>>>,
    /// Per flow: p50 and p99 latency (ms) per bucket, so a flow of 5 ms
    /// API calls is not hidden by one of 50 ms pages.
    pub flow_latency_ms: BTreeMap<String, BTreeMap<String, Vec<Option<f64>>>>,
    /// Traffic marks (s, label): flow starts and stops, phase boundaries.
    pub marks: Vec<(f64, String)>,
    /// Responses per second by class: 2xx, 3xx, 429, 4xx (other), 5xx, error.
    pub status_rps: BTreeMap<String, Vec<f64>>,
    /// (t, utilization it reports) per backend, sampled and averaged per
    /// bucket.
    pub utilization: BTreeMap<String, Vec<[f64; 2]>>,
    /// (t, requests in flight) per backend, sampled and averaged per bucket.
    pub in_flight: BTreeMap<String, Vec<[f64; 2]>>,
    /// (t, weight) per load-balancer endpoint, sampled.
    pub weights: BTreeMap<String, Vec<[f64; 2]>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AssertionResult {
    pub label: String,
    pub kind: String,
    pub passed: bool,
    /// Not applicable to this run (e.g. a flow that a replay replaces).
    pub skipped: bool,
    pub measured: Option<f64>,
    pub measured_text: String,
    pub expected: String,
    /// One line: what failed or passed, and the numbers.
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReplayResult {
    pub records_file: String,
    pub requests: usize,
    pub speed: f64,
    /// Lines skipped and headers left out (first 20).
    pub notes: Vec<String>,
    pub mix: MixComparison,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub description: String,
    pub file: Option<String>,
    /// `run` or `replay`.
    pub mode: String,
    pub runtime: String,
    pub envoy_version: String,
    pub scale: f64,
    pub started_unix_s: u64,
    pub planned_s: f64,
    pub elapsed_s: f64,
    pub passed: bool,
    pub totals: Totals,
    pub flows: Vec<FlowResult>,
    pub backends: Vec<BackendResult>,
    pub events: Vec<EventRecord>,
    pub log: Option<LogResult>,
    pub replay: Option<ReplayResult>,
    pub assertions: Vec<AssertionResult>,
    pub series: Series,
    /// Switchyard filter metrics and the listener's response counters.
    pub envoy_stats: BTreeMap<String, u64>,
    /// Paths of the files this run wrote.
    pub files: BTreeMap<String, String>,
}

impl RunResult {
    /// Messages of the failed assertions.
    pub fn failures(&self) -> Vec<String> {
        self.assertions
            .iter()
            .filter(|a| !a.passed && !a.skipped)
            .map(|a| a.message.clone())
            .collect()
    }
}

/// Which requests a scope selects.
pub struct ScopeFilter {
    flow: Option<Option<usize>>,
    phase: Option<String>,
    from: Option<Duration>,
    until: Option<Duration>,
    host: Option<String>,
}

impl ScopeFilter {
    /// `None` when the scope names a flow or phase this run does not have.
    pub fn new(scope: &Scope, flows: &[FlowPlan]) -> Option<ScopeFilter> {
        let flow = match &scope.flow {
            None => None,
            Some(name) => Some(Some(flows.iter().position(|f| &f.name == name)?)),
        };
        if let Some(p) = &scope.phase {
            let exists = flows
                .iter()
                .enumerate()
                .filter(|(i, _)| flow.is_none_or(|f| f == Some(*i)))
                .any(|(_, f)| f.phases.iter().any(|ph| &ph.name == p));
            if !exists {
                return None;
            }
        }
        Some(ScopeFilter {
            flow,
            phase: scope.phase.clone(),
            from: scope.from.map(|d| d.0),
            until: scope.until.map(|d| d.0),
            host: scope.host.as_ref().map(|h| h.to_ascii_lowercase()),
        })
    }

    pub fn matches(&self, o: &Obs, flows: &[FlowPlan]) -> bool {
        if let Some(Some(f)) = self.flow
            && o.flow != f
        {
            return false;
        }
        if let Some(p) = &self.phase {
            let name = flows
                .get(o.flow)
                .and_then(|f| f.phases.get(o.phase))
                .map(|ph| ph.name.as_str());
            if name != Some(p.as_str()) {
                return false;
            }
        }
        if self.from.is_some_and(|t| o.at < t) || self.until.is_some_and(|t| o.at >= t) {
            return false;
        }
        if let Some(h) = &self.host
            && !o.host.eq_ignore_ascii_case(h)
        {
            return false;
        }
        true
    }
}

/// Everything assertions look at.
pub struct Evidence<'a> {
    pub obs: &'a [Obs],
    pub flows: &'a [FlowPlan],
    pub log: Option<&'a LogResult>,
    pub stats: &'a BTreeMap<String, u64>,
    pub replay: Option<&'a MixComparison>,
    /// Per `x-request-id`: the request headers its backend received (the
    /// ones `backend_received` assertions name).
    pub received: &'a std::collections::HashMap<String, Vec<(String, String)>>,
}

fn bounds_text(min: Option<f64>, max: Option<f64>, fmt: impl Fn(f64) -> String) -> String {
    match (min, max) {
        (Some(a), Some(b)) => format!("{} ..= {}", fmt(a), fmt(b)),
        (Some(a), None) => format!(">= {}", fmt(a)),
        (None, Some(b)) => format!("<= {}", fmt(b)),
        (None, None) => "anything".into(),
    }
}

fn within(v: f64, min: Option<f64>, max: Option<f64>) -> bool {
    // A hair of slack so 0.1 + 0.2 style sums do not fail an exact bound.
    min.is_none_or(|m| v >= m - 1e-9) && max.is_none_or(|m| v <= m + 1e-9)
}

/// Evaluates one assertion.
pub fn evaluate(a: &Assertion, ev: &Evidence) -> AssertionResult {
    let label = a.label();
    let mut r = AssertionResult {
        label: label.clone(),
        kind: a.kind().into(),
        passed: false,
        skipped: false,
        measured: None,
        measured_text: "-".into(),
        expected: String::new(),
        message: String::new(),
    };
    let scoped: Option<Vec<&Obs>> = match a.scope() {
        None => Some(Vec::new()),
        Some(s) => ScopeFilter::new(s, ev.flows)
            .map(|f| ev.obs.iter().filter(|o| f.matches(o, ev.flows)).collect()),
    };
    let Some(scoped) = scoped else {
        r.skipped = true;
        r.passed = true;
        r.measured_text = "this run has no such flow or phase".into();
        r.expected = "-".into();
        r.message = format!("assertion {label:?} skipped: this run has no such flow or phase");
        return r;
    };
    let share =
        |num: usize, den: usize, min: Option<f64>, max: Option<f64>, r: &mut AssertionResult| {
            r.expected = bounds_text(min, max, |v| format!("{v:.3}"));
            if den == 0 {
                r.measured_text = "no requests in scope".into();
                return;
            }
            let v = num as f64 / den as f64;
            r.measured = Some(v);
            r.measured_text = format!("{v:.3} ({num} of {den})");
            r.passed = within(v, min, max);
        };
    match a {
        Assertion::BackendShare(c) => {
            let served: Vec<&&Obs> = scoped.iter().filter(|o| o.backend.is_some()).collect();
            let n = served
                .iter()
                .filter(|o| o.backend.as_deref() == Some(c.backend.as_str()))
                .count();
            share(n, served.len(), c.min, c.max, &mut r);
        }
        Assertion::BackendReceived(c) => {
            let served: Vec<&&Obs> = scoped.iter().filter(|o| o.backend.is_some()).collect();
            let n = served
                .iter()
                .filter(|o| {
                    let got = o.request_id.as_ref().and_then(|id| ev.received.get(id));
                    got.is_some_and(|hs| {
                        hs.iter().any(|(k, v)| {
                            k == &c.header && c.value.as_ref().is_none_or(|want| want == v)
                        })
                    })
                })
                .count();
            share(n, served.len(), c.min, c.max, &mut r);
        }
        Assertion::StatusShare(c) => {
            let n = scoped.iter().filter(|o| c.status.matches(o.status)).count();
            share(n, scoped.len(), c.min, c.max, &mut r);
        }
        Assertion::RatelimitedShare(c) => {
            let class = StatusClass::Code(c.status);
            let n = scoped.iter().filter(|o| class.matches(o.status)).count();
            share(n, scoped.len(), c.min, c.max, &mut r);
        }
        Assertion::Latency(c) => {
            let mut lat: Vec<Duration> = scoped
                .iter()
                .filter(|o| o.status != 0)
                .map(|o| o.latency)
                .collect();
            lat.sort_unstable();
            r.expected = bounds_text(c.min_ms, c.max_ms, |v| format!("{v} ms"));
            if lat.is_empty() {
                r.measured_text = "no responses in scope".into();
            } else {
                let v = percentile_ms(&lat, c.percentile);
                r.measured = Some(v);
                r.measured_text = format!("{v:.1} ms (of {} responses)", lat.len());
                r.passed = within(v, c.min_ms, c.max_ms);
            }
        }
        Assertion::Requests(c) => {
            let n = scoped.iter().filter(|o| o.status != 0).count() as u64;
            r.expected = bounds_text(c.min.map(|v| v as f64), c.max.map(|v| v as f64), |v| {
                format!("{v:.0}")
            });
            r.measured = Some(n as f64);
            r.measured_text = format!("{n} responses");
            r.passed = c.min.is_none_or(|m| n >= m) && c.max.is_none_or(|m| n <= m);
        }
        Assertion::LostLogRecords(c) => {
            r.expected = format!("<= {}", c.max);
            match ev.log {
                Some(log) => {
                    r.measured = Some(log.lost as f64);
                    r.measured_text = match log.expected {
                        Some(e) => format!("{} of {e} records lost", log.lost),
                        None => format!("{} records dropped by the filter", log.lost),
                    };
                    r.passed = log.lost <= c.max;
                }
                None => r.measured_text = "no access-log records collected".into(),
            }
        }
        Assertion::EnvoyStat(c) => {
            r.expected = bounds_text(c.min.map(|v| v as f64), c.max.map(|v| v as f64), |v| {
                format!("{v:.0}")
            });
            match ev.stats.get(&c.stat) {
                Some(&v) => {
                    r.measured = Some(v as f64);
                    r.measured_text = v.to_string();
                    r.passed = c.min.is_none_or(|m| v >= m) && c.max.is_none_or(|m| v <= m);
                }
                None => r.measured_text = "Envoy has no such stat".into(),
            }
        }
        Assertion::ReplayMix(c) => {
            r.expected = format!("<= {:.3}", c.max_deviation);
            match ev.replay {
                Some(mix) => {
                    let worst = mix
                        .rows
                        .iter()
                        .max_by(|a, b| a.diff.abs().total_cmp(&b.diff.abs()));
                    r.measured = Some(mix.max_deviation);
                    r.measured_text = match worst {
                        Some(w) => format!(
                            "{:.3} ({}: recorded {:.3}, replayed {:.3})",
                            mix.max_deviation, w.key, w.recorded, w.replayed
                        ),
                        None => format!("{:.3}", mix.max_deviation),
                    };
                    r.passed = mix.max_deviation <= c.max_deviation + 1e-9;
                }
                None => {
                    r.skipped = true;
                    r.passed = true;
                    r.measured_text = "not a replay".into();
                }
            }
        }
    }
    r.message = if r.skipped {
        format!("assertion {label:?} skipped: {}", r.measured_text)
    } else if r.passed {
        format!("assertion {label:?} passed: measured {}", r.measured_text)
    } else {
        format!(
            "assertion {label:?} failed: measured {}, expected {}",
            r.measured_text, r.expected
        )
    };
    r
}

/// Buckets the observations into the report's series. A backend's share
/// is of the responses its cluster served (`cluster_of`; backends missing
/// there count as one cluster).
pub fn series(
    obs: &[Obs],
    end: Duration,
    bucket: Duration,
    cluster_of: &BTreeMap<String, String>,
    flows: &[String],
) -> Series {
    let w = bucket.as_secs_f64().max(0.01);
    let n = ((end.as_secs_f64() / w).ceil() as usize).max(1);
    let mut s = Series {
        bucket_s: w,
        t: (0..n).map(|i| (i as f64 + 0.5) * w).collect(),
        ..Series::default()
    };
    let mut backend_counts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut served: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let cluster = |b: &str| cluster_of.get(b).map_or("", String::as_str);
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); n];
    let mut flow_lat: Vec<Vec<Vec<Duration>>> = vec![vec![Vec::new(); n]; flows.len()];
    for class in ["2xx", "429", "4xx", "5xx", "error"] {
        s.status_rps.insert(class.into(), vec![0.0; n]);
    }
    for o in obs {
        let i = ((o.at.as_secs_f64() / w) as usize).min(n - 1);
        if let Some(b) = &o.backend {
            backend_counts
                .entry(b.to_string())
                .or_insert_with(|| vec![0; n])[i] += 1;
            served.entry(cluster(b)).or_insert_with(|| vec![0; n])[i] += 1;
        }
        let class = match o.status {
            0 => "error",
            200..=299 => "2xx",
            300..=399 => "3xx",
            429 => "429",
            400..=499 => "4xx",
            _ => "5xx",
        };
        if let Some(v) = s
            .status_rps
            .entry(class.into())
            .or_insert_with(|| vec![0.0; n])
            .get_mut(i)
        {
            *v += 1.0 / w;
        }
        if o.status != 0 {
            lat[i].push(o.latency);
            if let Some(f) = flow_lat.get_mut(o.flow) {
                f[i].push(o.latency);
            }
        }
    }
    let backends_per_cluster = |c: &str| {
        backend_counts
            .keys()
            .filter(|b| cluster(b.as_str()) == c)
            .count()
    };
    let several = served.len() > 1;
    for (b, counts) in &backend_counts {
        let c = cluster(b);
        // Alone in its cluster next to others: always 100%, not worth a line.
        if several && backends_per_cluster(c) == 1 {
            continue;
        }
        let Some(total) = served.get(c) else { continue };
        let v = counts
            .iter()
            .zip(total)
            .map(|(&c, &t)| (t > 0).then(|| c as f64 / t as f64))
            .collect();
        s.share.insert(b.clone(), v);
    }
    for (name, p) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0)] {
        let v = lat
            .iter_mut()
            .map(|l| {
                l.sort_unstable();
                (!l.is_empty()).then(|| percentile_ms(l, p))
            })
            .collect();
        s.latency_ms.insert(name.into(), v);
    }
    for (name, mut buckets) in flows.iter().zip(flow_lat) {
        let per: BTreeMap<String, Vec<Option<f64>>> = [("p50", 50.0), ("p99", 99.0)]
            .iter()
            .map(|(p, q)| {
                let v = buckets
                    .iter_mut()
                    .map(|l| {
                        l.sort_unstable();
                        (!l.is_empty()).then(|| percentile_ms(l, *q))
                    })
                    .collect();
                ((*p).to_string(), v)
            })
            .collect();
        s.flow_latency_ms.insert(name.clone(), per);
    }
    s
}

/// Sampled (t, v) points averaged per bucket of width `w` seconds (the
/// point at the bucket's middle).
pub fn bucket_means(points: &[[f64; 2]], w: f64) -> Vec<[f64; 2]> {
    let mut out: Vec<[f64; 2]> = Vec::new();
    let mut cur: Option<(usize, f64, usize)> = None;
    for p in points {
        let i = (p[0] / w.max(1e-3)).max(0.0) as usize;
        match &mut cur {
            Some((b, sum, n)) if *b == i => {
                *sum += p[1];
                *n += 1;
            }
            _ => {
                if let Some((b, sum, n)) = cur {
                    out.push([(b as f64 + 0.5) * w, sum / n as f64]);
                }
                cur = Some((i, p[1], 1));
            }
        }
    }
    if let Some((b, sum, n)) = cur {
        out.push([(b as f64 + 0.5) * w, sum / n as f64]);
    }
    out
}

/// Flow and phase totals.
pub fn flows(obs: &[Obs], plans: &[FlowPlan], dropped: &[u64]) -> Vec<FlowResult> {
    plans
        .iter()
        .enumerate()
        .map(|(fi, f)| {
            let mine: Vec<&Obs> = obs.iter().filter(|o| o.flow == fi).collect();
            let start = f.phases.first().map_or(Duration::ZERO, |p| p.start);
            let phases = f
                .phases
                .iter()
                .enumerate()
                .map(|(pi, p)| PhaseResult {
                    name: p.name.clone(),
                    start_s: p.start.as_secs_f64(),
                    duration_s: p.duration.as_secs_f64(),
                    load: match &p.load {
                        super::driver::Load::Open { rate, .. } => format!("{rate} req/s"),
                        super::driver::Load::Closed { concurrency } => {
                            format!("{concurrency} clients")
                        }
                        super::driver::Load::Replay { shots, .. } => {
                            format!("{} recorded requests", shots.len())
                        }
                    },
                    totals: Totals::of(mine.iter().copied().filter(|o| o.phase == pi), p.duration),
                })
                .collect();
            FlowResult {
                name: f.name.clone(),
                phases,
                totals: Totals::of(mine.iter().copied(), f.end().saturating_sub(start)),
                dropped: dropped.get(fi).copied().unwrap_or(0),
            }
        })
        .collect()
}

fn pct(n: u64, d: u64) -> String {
    if d == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * n as f64 / d as f64)
    }
}

/// The end-of-run tables (flows, backends, assertions) as text.
/// The run's assertions as a JUnit XML report (what CI systems show as
/// tests): one `<testsuite>` named after the scenario, one `<testcase>`
/// per assertion (its label; class `<scenario>.<kind>`), `<failure>` with
/// the assertion's message when it failed, `<skipped>` when it did not
/// apply; the suite's time is the traffic's.
pub fn junit_xml(r: &RunResult) -> anyhow::Result<String> {
    junit_report(&r.scenario, r.elapsed_s, &r.assertions)
}

fn junit_report(
    scenario: &str,
    elapsed_s: f64,
    assertions: &[AssertionResult],
) -> anyhow::Result<String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut suite = TestSuite::new(scenario);
    for a in assertions {
        let status = if a.skipped {
            let mut s = TestCaseStatus::skipped();
            s.set_message(a.message.as_str());
            s
        } else if a.passed {
            TestCaseStatus::success()
        } else {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(a.message.as_str()).set_type(a.kind.as_str());
            s
        };
        let mut case = TestCase::new(a.label.as_str(), status);
        case.set_classname(format!("{scenario}.{}", a.kind))
            .set_system_out(a.message.as_str());
        suite.add_test_case(case);
    }
    suite.set_time(Duration::from_secs_f64(elapsed_s.max(0.0)));
    let mut report = Report::new("switchyard-harness");
    report.add_test_suite(suite);
    Ok(report.to_string()?)
}

pub fn summary_table(r: &RunResult) -> String {
    let mut out = String::new();
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(
        out,
        "scenario {} ({}, {} runtime, Envoy {}, scale {}): {verdict} in {:.1} s",
        r.scenario, r.mode, r.runtime, r.envoy_version, r.scale, r.elapsed_s
    );
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(vec![
            "flow / phase",
            "load",
            "requests",
            "req/s",
            "2xx",
            "429",
            "4xx",
            "5xx",
            "errors",
            "p50 ms",
            "p99 ms",
        ]);
    let mut row = |name: String, load: String, x: &Totals| {
        let d = x.sent;
        t.add_row(vec![
            name,
            load,
            d.to_string(),
            format!("{:.0}", x.rps),
            pct(x.status_range(200, 299), d),
            pct(x.status(429), d),
            pct(x.status_range(400, 499) - x.status(429), d),
            pct(x.status_range(500, 599), d),
            pct(x.errors(), d),
            format!("{:.1}", x.p50_ms),
            format!("{:.1}", x.p99_ms),
        ]);
    };
    for f in &r.flows {
        if f.phases.len() == 1 {
            row(f.name.clone(), f.phases[0].load.clone(), &f.totals);
        } else {
            row(f.name.clone(), String::new(), &f.totals);
            for p in &f.phases {
                row(format!("  {}", p.name), p.load.clone(), &p.totals);
            }
        }
    }
    row("all".into(), String::new(), &r.totals);
    let _ = writeln!(out, "{t}");

    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(vec![
            "backend",
            "cluster",
            "capacity",
            "latency",
            "share",
            "served",
            "503s",
            "max in flight",
            "mean util",
        ]);
    for b in &r.backends {
        t.add_row(vec![
            b.name.clone(),
            b.cluster.clone(),
            b.capacity.map_or("∞".into(), |c| c.to_string()),
            b.latency.clone(),
            format!("{:.1}%", b.share * 100.0),
            b.requests.to_string(),
            b.errors.to_string(),
            b.max_in_flight.to_string(),
            b.mean_utilization.map_or("-".into(), |u| format!("{u:.2}")),
        ]);
    }
    let _ = writeln!(out, "{t}");

    if let Some(log) = &r.log {
        let _ = writeln!(
            out,
            "access log ({}): {} records collected, {} lost{}",
            log.sink,
            log.collected,
            log.lost,
            log.expected
                .map(|e| format!(" of {e} expected"))
                .unwrap_or_default()
        );
    }
    if let Some(rep) = &r.replay {
        let _ = writeln!(
            out,
            "replay of {} ({} requests at ×{}): host/path/status mix differs by at most {:.1} points",
            rep.records_file,
            rep.requests,
            rep.speed,
            rep.mix.max_deviation * 100.0
        );
        let mut t = Table::new();
        t.load_preset(presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(vec!["host path status", "recorded", "replayed", "diff"]);
        for m in rep.mix.rows.iter().take(12) {
            t.add_row(vec![
                m.key.clone(),
                format!("{:.1}%", m.recorded * 100.0),
                format!("{:.1}%", m.replayed * 100.0),
                format!("{:+.1}", m.diff * 100.0),
            ]);
        }
        let _ = writeln!(out, "{t}");
    }

    if !r.assertions.is_empty() {
        let mut t = Table::new();
        t.load_preset(presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(vec!["", "assertion", "measured", "expected"]);
        for a in &r.assertions {
            let mark = if a.skipped {
                "skip"
            } else if a.passed {
                "ok"
            } else {
                "FAIL"
            };
            t.add_row(vec![
                mark.to_string(),
                a.label.clone(),
                a.measured_text.clone(),
                a.expected.clone(),
            ]);
        }
        let _ = writeln!(out, "{t}");
    }
    out
}

/// The bucket width for a run of `end`: the scenario's, else end / 60.
pub fn bucket_for(s: &Scenario, end: Duration) -> Duration {
    s.bucket
        .map(|b| b.0)
        .unwrap_or_else(|| (end / 60).max(Duration::from_millis(100)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::driver::{Load, PhasePlan};
    use std::sync::Arc;

    fn obs(at_ms: u64, status: u16, backend: Option<&str>, flow: usize) -> Obs {
        Obs {
            at: Duration::from_millis(at_ms),
            latency: Duration::from_millis(at_ms % 7 + 1),
            status,
            timeout: false,
            backend: backend.map(Arc::from),
            flow,
            phase: 0,
            host: Arc::from("h.test"),
            path: "/".into(),
            client: None,
            request_id: None,
        }
    }

    fn plans() -> Vec<FlowPlan> {
        ["web", "api"]
            .iter()
            .map(|n| FlowPlan {
                name: (*n).into(),
                phases: vec![PhasePlan {
                    name: "p".into(),
                    start: Duration::ZERO,
                    duration: Duration::from_secs(1),
                    load: Load::Open {
                        rate: 1.0,
                        max_in_flight: 1,
                    },
                    mix: Arc::new(vec![]),
                }],
                clients: None,
                seed: 0,
            })
            .collect()
    }

    #[test]
    fn assertions_measure_and_name_what_failed() {
        let mut o = vec![
            obs(0, 200, Some("a"), 0),
            obs(100, 200, Some("a"), 0),
            obs(200, 200, Some("b"), 0),
            obs(300, 429, None, 1),
            obs(900, 0, None, 1),
        ];
        for (i, x) in o.iter_mut().enumerate() {
            x.request_id = Some(format!("r{i}"));
        }
        let plans = plans();
        let stats = BTreeMap::from([("x.y".to_string(), 3u64)]);
        // r0 and r1 reached their backend with x-tenant: t1, r2 with t2.
        let received = std::collections::HashMap::from([
            (
                "r0".to_string(),
                vec![("x-tenant".to_string(), "t1".to_string())],
            ),
            (
                "r1".to_string(),
                vec![("x-tenant".to_string(), "t1".to_string())],
            ),
            (
                "r2".to_string(),
                vec![("x-tenant".to_string(), "t2".to_string())],
            ),
        ]);
        let ev = Evidence {
            obs: &o,
            flows: &plans,
            log: None,
            stats: &stats,
            replay: None,
            received: &received,
        };
        let s = Scenario::parse(
            r#"
name: t
envoy: {}
backends: [{name: a}, {name: b}]
traffic:
  - {name: web, requests: [{host: h}], phases: [{name: p, duration: 1s, rate: 1}]}
  - {name: api, requests: [{host: h}], phases: [{name: p, duration: 1s, rate: 1}]}
assertions:
  - backend_share: {backend: a, min: 0.7}
  - ratelimited_share: {max: 0.4, scope: {flow: api}}
  - status_share: {status: error, max: 0.0, scope: {from: 500ms}}
  - envoy_stat: {stat: x.y, min: 3}
  - replay_mix: {max_deviation: 0.01}
  - latency: {percentile: 50, max_ms: 100, scope: {flow: web}}
  - backend_received: {header: x-tenant, value: t1, min: 0.6, max: 0.7}
  - backend_received: {header: x-tenant, min: 1.0}
  - backend_received: {header: x-other, max: 0.0}
"#,
        )
        .unwrap();
        let r: Vec<AssertionResult> = s.assertions.iter().map(|a| evaluate(a, &ev)).collect();
        assert!(!r[0].passed);
        assert_eq!(
            r[0].message,
            "assertion \"backend_share(a)\" failed: measured 0.667 (2 of 3), expected >= 0.700"
        );
        assert!(!r[1].passed, "{}", r[1].message);
        assert_eq!(r[1].measured, Some(0.5));
        assert!(!r[2].passed);
        assert_eq!(r[2].measured_text, "1.000 (1 of 1)");
        assert!(r[3].passed);
        assert!(r[4].skipped && r[4].passed);
        assert!(r[5].passed, "{}", r[5].message);
        // Of the 3 requests a backend served, 2 arrived with t1, all with
        // the header, none with x-other.
        assert_eq!(r[6].measured_text, "0.667 (2 of 3)");
        assert!(r[6].passed && r[7].passed && r[8].passed, "{r:?}");
        // A scope naming a flow this run lacks (a replay) is skipped.
        let replay_plan = vec![FlowPlan {
            name: "replay".into(),
            ..plans[0].clone()
        }];
        let ev = Evidence {
            flows: &replay_plan,
            ..ev
        };
        assert!(evaluate(&s.assertions[1], &ev).skipped);
        assert!(!evaluate(&s.assertions[0], &ev).skipped);
    }

    #[test]
    fn series_buckets() {
        let o = vec![
            obs(0, 200, Some("a"), 0),
            obs(50, 200, Some("b"), 0),
            obs(150, 429, None, 0),
            obs(160, 200, Some("a"), 0),
            obs(170, 200, Some("solo"), 1),
        ];
        let clusters = BTreeMap::from([
            ("a".to_string(), "c1".to_string()),
            ("b".to_string(), "c1".to_string()),
            ("solo".to_string(), "c2".to_string()),
        ]);
        let s = series(
            &o,
            Duration::from_millis(200),
            Duration::from_millis(100),
            &clusters,
            &["web".to_string(), "api".to_string()],
        );
        assert_eq!(s.t.len(), 2);
        // Latency per flow: flow 1 only had its one request, in bucket 2.
        assert_eq!(s.flow_latency_ms["api"]["p50"][0], None);
        assert!(s.flow_latency_ms["api"]["p50"][1].is_some());
        assert!(s.flow_latency_ms["web"]["p99"][0].is_some());
        assert_eq!(s.share["a"], vec![Some(0.5), Some(1.0)]);
        assert_eq!(s.share["b"], vec![Some(0.5), Some(0.0)]);
        assert!(!s.share.contains_key("solo"));
        assert_eq!(s.status_rps["429"], vec![0.0, 10.0]);
        assert_eq!(s.status_rps["2xx"], vec![20.0, 20.0]);
        assert_eq!(
            bucket_means(&[[0.01, 1.0], [0.05, 3.0], [0.15, 5.0]], 0.1),
            vec![[0.05, 2.0], [0.15000000000000002, 5.0]]
        );
    }
}
