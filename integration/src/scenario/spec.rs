//! The scenario file format (YAML) and its validation.
//!
//! A file is parsed as YAML into a JSON value, then deserialized with every
//! struct refusing unknown fields; `serde_path_to_error` names the field
//! that failed (`backends[1].latency: unknown variant ...`). A second pass
//! checks what serde cannot (names that must exist, ranges, one-of fields)
//! and names the field the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A duration written as `250ms`, `5s`, `1.5s`, `2m` or a number of seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn secs(&self) -> f64 {
        self.0.as_secs_f64()
    }
}

/// Parses `250ms`, `5s`, `1.5s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 250ms, 5s, 1.5s, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {text:?}")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}"))
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 250ms, 5s or 2m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Duration::try_from_secs_f64(v)
                    .map(Dur)
                    .map_err(|e| E::custom(format!("{v}: {e}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(|s| Dur(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A whole scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seeds the request mixes and client picks (same file, same requests).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Time scale for `--quick` runs (tests): every duration, start and
    /// event time is multiplied by it.
    #[serde(default = "default_quick_scale")]
    pub quick_scale: f64,
    pub envoy: EnvoySpec,
    pub backends: Vec<BackendDef>,
    pub traffic: Vec<FlowDef>,
    #[serde(default)]
    pub assertions: Vec<Assertion>,
    /// Per-request timeout of the traffic driver.
    #[serde(default = "default_timeout")]
    pub request_timeout: Dur,
    /// Width of one time-series bucket in the report (default: the run
    /// length / 60, at least 100 ms).
    #[serde(default)]
    pub bucket: Option<Dur>,
    /// Where the file was read from (set by [`Scenario::load`]).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

fn default_seed() -> u64 {
    1
}
fn default_quick_scale() -> f64 {
    0.25
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

/// Which Envoy config: the built-in chain template (default) with the
/// listed filters in order, or a template file with variables.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoySpec {
    /// A template file (relative to the scenario file, else to the
    /// workspace); default: `integration/templates/scenario-chain.yaml`.
    #[serde(default)]
    pub template: Option<String>,
    /// Extra template variables.
    #[serde(default)]
    pub vars: BTreeMap<String, Value>,
    /// Template variable → filter whose final configuration (endpoints and
    /// sinks filled in) it receives as a JSON string, e.g.
    /// `lb_config: load_balancer` for `templates/load_balancer.yaml`.
    #[serde(default)]
    pub config_vars: BTreeMap<String, FilterKind>,
    /// Envoy worker threads.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Filters in chain order (the HTTP router comes last by itself).
    #[serde(default)]
    pub filters: Vec<FilterDef>,
    /// How the filters are loaded: `chain` (default: one Wasm filter running
    /// `switchyard.wasm` with the filters as its stages, one set of
    /// callbacks per request) or `separate` (one Wasm filter and module
    /// per filter).
    #[serde(default)]
    pub module: ModuleLayout,
    /// Listener name to send traffic to.
    #[serde(default = "default_listener")]
    pub listener: String,
}

/// How a scenario's filters are loaded into Envoy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleLayout {
    /// One Wasm filter with `switchyard.wasm`, the filters as its stages.
    #[default]
    Chain,
    /// One Wasm filter per filter, each with its own module.
    Separate,
}

fn default_concurrency() -> u32 {
    2
}
fn default_listener() -> String {
    "ingress".into()
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FilterKind {
    DomainRouter,
    RateLimit,
    LoadBalancer,
    AccessLog,
}

impl FilterKind {
    pub fn name(self) -> &'static str {
        match self {
            FilterKind::DomainRouter => "domain_router",
            FilterKind::RateLimit => "rate_limit",
            FilterKind::LoadBalancer => "load_balancer",
            FilterKind::AccessLog => "access_log",
        }
    }
    /// The wasm crate (module `build/wasm/<crate with underscores>.wasm`).
    pub fn crate_name(self) -> &'static str {
        match self {
            FilterKind::DomainRouter => "switchyard-domain-router",
            FilterKind::RateLimit => "switchyard-rate-limit",
            FilterKind::LoadBalancer => "switchyard-load-balancer",
            FilterKind::AccessLog => "switchyard-access-log",
        }
    }
    /// Envoy's metric prefix for the filter.
    pub fn metric_prefix(self) -> &'static str {
        match self {
            FilterKind::DomainRouter => "wasmcustom.switchyard.domain-router.",
            FilterKind::RateLimit => "wasmcustom.switchyard.rate-limit.",
            FilterKind::LoadBalancer => "wasmcustom.switchyard.load-balancer.",
            FilterKind::AccessLog => "wasmcustom.switchyard.access-log.",
        }
    }
}

/// One filter of the chain: `- load_balancer: {config: {...}}`, or any
/// module: `- wasm: {module: path.wasm, config: {...}}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FilterDef {
    DomainRouter(PluginDef),
    RateLimit(PluginDef),
    LoadBalancer(LoadBalancerDef),
    AccessLog(AccessLogDef),
    Wasm(WasmDef),
}

impl FilterDef {
    /// The built-in filter; `None` for a `wasm` module.
    pub fn kind(&self) -> Option<FilterKind> {
        Some(match self {
            FilterDef::DomainRouter(_) => FilterKind::DomainRouter,
            FilterDef::RateLimit(_) => FilterKind::RateLimit,
            FilterDef::LoadBalancer(_) => FilterKind::LoadBalancer,
            FilterDef::AccessLog(_) => FilterKind::AccessLog,
            FilterDef::Wasm(_) => return None,
        })
    }
    /// The filter's name: the built-in's, or the module's plugin name.
    pub fn name(&self) -> String {
        match self {
            FilterDef::Wasm(w) => w.plugin_name(),
            _ => self
                .kind()
                .map(|k| k.name().to_string())
                .unwrap_or_default(),
        }
    }
    pub fn config(&self) -> &Value {
        match self {
            FilterDef::DomainRouter(p) | FilterDef::RateLimit(p) => &p.config,
            FilterDef::LoadBalancer(l) => &l.config,
            FilterDef::AccessLog(a) => &a.config,
            FilterDef::Wasm(w) => &w.config,
        }
    }
}

/// Any Wasm module as its own Envoy Wasm filter, in the chain's order
/// (e.g. one made with `make new-filter`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmDef {
    /// The `.wasm` file: relative to the scenario file, else to the
    /// workspace, or a name in `build/wasm/`.
    pub module: String,
    /// Its plugin configuration (sent as JSON).
    #[serde(default = "empty_object")]
    pub config: Value,
    /// The plugin name (default: the file name without `.wasm`).
    #[serde(default)]
    pub name: Option<String>,
}

impl WasmDef {
    pub fn plugin_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            Path::new(&self.module)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "wasm".into())
        })
    }
}

/// A filter whose configuration is passed as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginDef {
    #[serde(default = "empty_object")]
    pub config: Value,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// The load balancer: without `endpoints` in its config, the harness lists
/// these backends (default: all) with their addresses and names.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerDef {
    #[serde(default)]
    pub endpoints: Option<Vec<String>>,
    #[serde(default = "empty_object")]
    pub config: Value,
}

/// The access log and where the harness collects its records from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogDef {
    #[serde(default)]
    pub sink: Sink,
    #[serde(default = "empty_object")]
    pub config: Value,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Sink {
    /// The filter's HTTP sink posts batches to the harness's collector.
    #[default]
    Collector,
    /// Records are read back from Envoy's log.
    EnvoyLog,
    /// Both; lost records are counted for each.
    Both,
}

impl Sink {
    pub fn collector(self) -> bool {
        matches!(self, Sink::Collector | Sink::Both)
    }
    pub fn envoy_log(self) -> bool {
        matches!(self, Sink::EnvoyLog | Sink::Both)
    }
}

/// One backend server.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendDef {
    /// Sent back in `x-switchyard-backend`; the name shares are counted by.
    pub name: String,
    /// The Envoy cluster it belongs to (built-in template).
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Requests served at once; more queue. Default: unlimited.
    #[serde(default)]
    pub capacity: Option<usize>,
    #[serde(default)]
    pub latency: LatencySpec,
    /// Share of requests answered 503.
    #[serde(default)]
    pub error_rate: f64,
    /// `even` (exact counts) or `random`.
    #[serde(default)]
    pub error_pattern: ErrorPatternSpec,
    /// Errors answer at once (a crashing backend) instead of after the work.
    #[serde(default)]
    pub fail_fast: bool,
    #[serde(default)]
    pub orca: OrcaSpec,
    #[serde(default)]
    pub events: Vec<EventDef>,
}

fn default_cluster() -> String {
    "backends".into()
}

/// How long a backend works on a request.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LatencySpec {
    FixedMs(f64),
    /// `[min, max]`, uniformly distributed.
    UniformMs([f64; 2]),
    /// Log-normal with this median and 99th percentile.
    Lognormal {
        p50_ms: f64,
        p99_ms: f64,
    },
}

impl Default for LatencySpec {
    fn default() -> Self {
        LatencySpec::FixedMs(0.0)
    }
}

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v.max(0.0) / 1000.0)
}

impl LatencySpec {
    pub fn to_latency(&self) -> crate::backend::Latency {
        use crate::backend::Latency;
        match *self {
            LatencySpec::FixedMs(v) => Latency::Fixed(ms(v)),
            LatencySpec::UniformMs([a, b]) => Latency::Uniform {
                min: ms(a),
                max: ms(b),
            },
            LatencySpec::Lognormal { p50_ms, p99_ms } => Latency::LogNormal {
                p50: ms(p50_ms),
                p99: ms(p99_ms),
            },
        }
    }

    /// Every time multiplied by `f`.
    pub fn times(&self, f: f64) -> LatencySpec {
        match *self {
            LatencySpec::FixedMs(v) => LatencySpec::FixedMs(v * f),
            LatencySpec::UniformMs([a, b]) => LatencySpec::UniformMs([a * f, b * f]),
            LatencySpec::Lognormal { p50_ms, p99_ms } => LatencySpec::Lognormal {
                p50_ms: p50_ms * f,
                p99_ms: p99_ms * f,
            },
        }
    }

    fn check(&self, path: &str) -> Result<()> {
        let ok = |v: f64| v.is_finite() && (0.0..=600_000.0).contains(&v);
        match *self {
            LatencySpec::FixedMs(v) if !ok(v) => bail!("{path}.fixed_ms: must be 0..=600000"),
            LatencySpec::UniformMs([a, b]) if !ok(a) || !ok(b) || a > b => {
                bail!("{path}.uniform_ms: must be [min, max] with 0 <= min <= max <= 600000")
            }
            LatencySpec::Lognormal { p50_ms, p99_ms }
                if !ok(p50_ms) || !ok(p99_ms) || p50_ms <= 0.0 || p99_ms < p50_ms =>
            {
                bail!("{path}.lognormal: needs 0 < p50_ms <= p99_ms <= 600000")
            }
            _ => Ok(()),
        }
    }

    pub fn describe(&self) -> String {
        match *self {
            LatencySpec::FixedMs(v) => format!("{v} ms"),
            LatencySpec::UniformMs([a, b]) => format!("{a}–{b} ms"),
            LatencySpec::Lognormal { p50_ms, p99_ms } => {
                format!("p50 {p50_ms} ms, p99 {p99_ms} ms")
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorPatternSpec {
    #[default]
    Even,
    Random,
}

/// ORCA load reporting: the header format and fixed values (default:
/// measured from the live state: utilization = busy and queued requests /
/// capacity).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OrcaSpec {
    #[serde(default)]
    pub format: OrcaFormatSpec,
    #[serde(default)]
    pub fixed: Option<FixedReport>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OrcaFormatSpec {
    #[default]
    None,
    Text,
    Json,
    Bin,
    BinHeader,
}

impl OrcaFormatSpec {
    pub fn to_format(self) -> crate::backend::OrcaFormat {
        use crate::backend::OrcaFormat;
        match self {
            OrcaFormatSpec::None => OrcaFormat::None,
            OrcaFormatSpec::Text => OrcaFormat::Text,
            OrcaFormatSpec::Json => OrcaFormat::Json,
            OrcaFormatSpec::Bin => OrcaFormat::Bin,
            OrcaFormatSpec::BinHeader => OrcaFormat::BinHeader,
        }
    }
}

/// Fixed ORCA values.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FixedReport {
    #[serde(default)]
    pub cpu_utilization: f64,
    #[serde(default)]
    pub mem_utilization: f64,
    #[serde(default)]
    pub application_utilization: f64,
    #[serde(default)]
    pub rps_fractional: f64,
    #[serde(default)]
    pub eps: f64,
    #[serde(default)]
    pub named_metrics: BTreeMap<String, f64>,
    #[serde(default)]
    pub utilization: BTreeMap<String, f64>,
}

impl FixedReport {
    pub fn to_report(&self) -> crate::backend::LoadReport {
        crate::backend::LoadReport {
            cpu_utilization: self.cpu_utilization,
            mem_utilization: self.mem_utilization,
            application_utilization: self.application_utilization,
            rps_fractional: self.rps_fractional,
            eps: self.eps,
            named_metrics: self.named_metrics.clone(),
            utilization: self.utilization.clone(),
        }
    }
}

impl OrcaSpec {
    pub fn source(&self) -> crate::backend::OrcaSource {
        match &self.fixed {
            Some(f) => crate::backend::OrcaSource::Fixed(f.to_report()),
            None => crate::backend::OrcaSource::Measured,
        }
    }
}

/// Something that happens to a backend at a time (exactly one action).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventDef {
    /// From the start of the traffic.
    pub at: Dur,
    #[serde(default)]
    pub slow_down: Option<SlowDown>,
    #[serde(default)]
    pub fail: Option<Fail>,
    #[serde(default)]
    pub recover: Option<Empty>,
    #[serde(default)]
    pub drain: Option<Empty>,
    /// New load-reporting behaviour (e.g. `{format: none}`: stops reporting).
    #[serde(default)]
    pub orca: Option<OrcaSpec>,
}

/// `{}`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// New latency, or the current one multiplied by `factor`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowDown {
    #[serde(default)]
    pub latency: Option<LatencySpec>,
    #[serde(default)]
    pub factor: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fail {
    #[serde(default = "one")]
    pub error_rate: f64,
    #[serde(default)]
    pub fail_fast: bool,
}

fn one() -> f64 {
    1.0
}

/// What an event does, resolved.
#[derive(Clone, Debug)]
pub enum Action {
    SlowDown(SlowDown),
    Fail(Fail),
    Recover,
    Drain,
    Orca(OrcaSpec),
}

impl EventDef {
    pub fn action(&self) -> Option<Action> {
        let mut all = Vec::new();
        if let Some(s) = &self.slow_down {
            all.push(Action::SlowDown(s.clone()));
        }
        if let Some(f) = &self.fail {
            all.push(Action::Fail(f.clone()));
        }
        if self.recover.is_some() {
            all.push(Action::Recover);
        }
        if self.drain.is_some() {
            all.push(Action::Drain);
        }
        if let Some(o) = &self.orca {
            all.push(Action::Orca(o.clone()));
        }
        if all.len() == 1 { all.pop() } else { None }
    }
}

impl Action {
    pub fn describe(&self, base: &LatencySpec) -> String {
        match self {
            Action::SlowDown(s) => match (&s.latency, s.factor) {
                (Some(l), _) => format!("slow down to {}", l.describe()),
                (None, Some(f)) => format!("slow down ×{f} ({})", base.times(f).describe()),
                (None, None) => "slow down".into(),
            },
            Action::Fail(f) => format!(
                "fail ({:.0}% 503{})",
                f.error_rate * 100.0,
                if f.fail_fast { ", fast" } else { "" }
            ),
            Action::Recover => "recover".into(),
            Action::Drain => "drain".into(),
            Action::Orca(o) => format!("load reports: {:?}", o.format).to_lowercase(),
        }
    }
}

/// A traffic flow: phases in sequence, from `start`; flows run side by side.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowDef {
    pub name: String,
    #[serde(default)]
    pub start: Dur,
    /// The request mix (weighted); a phase may replace it.
    #[serde(default)]
    pub requests: Vec<RequestDef>,
    /// Client addresses sent in `X-Forwarded-For` (one per request).
    #[serde(default)]
    pub clients: Option<ClientPool>,
    pub phases: Vec<PhaseDef>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseDef {
    #[serde(default)]
    pub name: Option<String>,
    pub duration: Dur,
    /// Open loop: requests per second, on schedule whatever the answers.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Open loop: sends due while this many are outstanding are dropped.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Closed loop: this many clients, each sending when its last answer came.
    #[serde(default)]
    pub concurrency: Option<usize>,
    #[serde(default)]
    pub requests: Option<Vec<RequestDef>>,
}

fn default_max_in_flight() -> usize {
    1024
}

/// One kind of request in a mix. `path` may hold `{i}` (the flow's request
/// number) and `{rand:N}` (a random number below N).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestDef {
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default = "default_method")]
    pub method: String,
    pub host: String,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
}

fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}

/// Client addresses: a list, or `count` addresses from an IPv4 `cidr`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientPool {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub cidr: Option<String>,
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub pick: Pick,
    /// The header the address goes in.
    #[serde(default = "default_xff")]
    pub header: String,
}

fn default_xff() -> String {
    "x-forwarded-for".into()
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Pick {
    #[default]
    Random,
    RoundRobin,
}

impl ClientPool {
    /// The addresses, in order.
    pub fn expand(&self, path: &str) -> Result<Vec<String>> {
        let mut out = self.addresses.clone();
        match (&self.cidr, self.count) {
            (Some(cidr), count) => {
                let (base, bits) = cidr
                    .split_once('/')
                    .with_context(|| format!("{path}.cidr: {cidr:?} is not a.b.c.d/n"))?;
                let base: Ipv4Addr = base
                    .parse()
                    .with_context(|| format!("{path}.cidr: {base:?} is not an IPv4 address"))?;
                let bits: u32 = bits
                    .parse()
                    .ok()
                    .filter(|b| (8..=32).contains(b))
                    .with_context(|| format!("{path}.cidr: prefix length must be 8..=32"))?;
                let size = 1u64 << (32 - bits);
                // Skip the network address (and broadcast) of larger nets.
                let usable = if size > 2 { size - 2 } else { size };
                let n = u64::from(count.unwrap_or(usable.min(256) as u32));
                if n == 0 || n > usable {
                    bail!("{path}.count: must be 1..={usable} for {cidr}");
                }
                let first = u32::from(base) & (u32::MAX.checked_shl(32 - bits).unwrap_or(0));
                let offset = u32::from(size > 2);
                for i in 0..n as u32 {
                    out.push(Ipv4Addr::from(first + offset + i).to_string());
                }
            }
            (None, Some(_)) => bail!("{path}.count: needs cidr"),
            (None, None) => {}
        }
        if out.is_empty() {
            bail!("{path}: needs addresses or cidr");
        }
        Ok(out)
    }
}

/// Which requests an assertion looks at (all when empty).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    #[serde(default)]
    pub flow: Option<String>,
    #[serde(default)]
    pub phase: Option<String>,
    /// Sent at or after (scenario time).
    #[serde(default)]
    pub from: Option<Dur>,
    /// Sent before.
    #[serde(default)]
    pub until: Option<Dur>,
    #[serde(default)]
    pub host: Option<String>,
}

impl Scope {
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(f) = &self.flow {
            parts.push(format!("flow {f}"));
        }
        if let Some(p) = &self.phase {
            parts.push(format!("phase {p}"));
        }
        if let Some(h) = &self.host {
            parts.push(format!("host {h}"));
        }
        match (self.from, self.until) {
            (Some(a), Some(b)) => parts.push(format!("{}s..{}s", a.secs(), b.secs())),
            (Some(a), None) => parts.push(format!("from {}s", a.secs())),
            (None, Some(b)) => parts.push(format!("until {}s", b.secs())),
            (None, None) => {}
        }
        parts.join(", ")
    }
}

/// A check on the run. A failed one fails the run, naming it and what was
/// measured.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Assertion {
    /// Share of the backend-served responses that came from `backend`.
    BackendShare(ShareCheck),
    /// Share of the requests sent whose status is `status` (`200`, `"2xx"`,
    /// `"5xx"`, or `"error"` for transport errors and timeouts).
    StatusShare(StatusCheck),
    /// Share of the requests answered `status` (429) by the rate limiter.
    RatelimitedShare(RatelimitedCheck),
    /// A latency percentile, in ms.
    Latency(LatencyCheck),
    /// Responses whose access-log record never arrived.
    LostLogRecords(LostCheck),
    /// Number of responses.
    Requests(CountCheck),
    /// An Envoy counter or gauge at the end of the run.
    EnvoyStat(StatCheck),
    /// Share of the backend-served requests whose backend received
    /// `header` (with `value`, when given): what the filters passed on.
    BackendReceived(ReceivedCheck),
    /// Replay only: the host/path/status mix against the recording's, as
    /// the largest difference in share.
    ReplayMix(MixCheck),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareCheck {
    #[serde(default)]
    pub name: Option<String>,
    pub backend: String,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub scope: Scope,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceivedCheck {
    #[serde(default)]
    pub name: Option<String>,
    /// A request header name.
    pub header: String,
    /// Its exact value; absent: the header is there at all.
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub scope: Scope,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusCheck {
    #[serde(default)]
    pub name: Option<String>,
    pub status: StatusClass,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub scope: Scope,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatelimitedCheck {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_429")]
    pub status: u16,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub scope: Scope,
}

fn default_429() -> u16 {
    429
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyCheck {
    #[serde(default)]
    pub name: Option<String>,
    /// 0..=100, e.g. 99 or 99.9.
    pub percentile: f64,
    #[serde(default)]
    pub max_ms: Option<f64>,
    #[serde(default)]
    pub min_ms: Option<f64>,
    #[serde(default)]
    pub scope: Scope,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LostCheck {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub max: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountCheck {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub min: Option<u64>,
    #[serde(default)]
    pub max: Option<u64>,
    #[serde(default)]
    pub scope: Scope,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatCheck {
    #[serde(default)]
    pub name: Option<String>,
    /// Full name, e.g. `wasmcustom.switchyard.load-balancer.ejections`.
    pub stat: String,
    #[serde(default)]
    pub min: Option<u64>,
    #[serde(default)]
    pub max: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixCheck {
    #[serde(default)]
    pub name: Option<String>,
    /// Largest allowed difference of any share, e.g. 0.03 (3 points).
    pub max_deviation: f64,
}

/// `200`, `"429"`, `"2xx"`, `"5xx"` or `"error"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusClass {
    Code(u16),
    Class(u16),
    Error,
}

impl StatusClass {
    pub fn parse(s: &str) -> Option<StatusClass> {
        let s = s.trim().to_ascii_lowercase();
        if s == "error" {
            return Some(StatusClass::Error);
        }
        if let Some(d) = s.strip_suffix("xx") {
            let d: u16 = d.parse().ok()?;
            return (1..=5).contains(&d).then_some(StatusClass::Class(d));
        }
        let c: u16 = s.parse().ok()?;
        (100..=599).contains(&c).then_some(StatusClass::Code(c))
    }

    /// Whether an outcome (0 = no response) is in the class.
    pub fn matches(&self, status: u16) -> bool {
        match *self {
            StatusClass::Code(c) => status == c,
            StatusClass::Class(d) => status / 100 == d,
            StatusClass::Error => status == 0,
        }
    }

    pub fn label(&self) -> String {
        match self {
            StatusClass::Code(c) => c.to_string(),
            StatusClass::Class(d) => format!("{d}xx"),
            StatusClass::Error => "error".into(),
        }
    }
}

impl<'de> Deserialize<'de> for StatusClass {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let text = match &v {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            _ => String::new(),
        };
        StatusClass::parse(&text).ok_or_else(|| {
            de::Error::custom(format!(
                "{v} is not a status: use e.g. 200, \"2xx\", \"5xx\" or \"error\""
            ))
        })
    }
}

impl Assertion {
    pub fn kind(&self) -> &'static str {
        match self {
            Assertion::BackendShare(_) => "backend_share",
            Assertion::BackendReceived(_) => "backend_received",
            Assertion::StatusShare(_) => "status_share",
            Assertion::RatelimitedShare(_) => "ratelimited_share",
            Assertion::Latency(_) => "latency",
            Assertion::LostLogRecords(_) => "lost_log_records",
            Assertion::Requests(_) => "requests",
            Assertion::EnvoyStat(_) => "envoy_stat",
            Assertion::ReplayMix(_) => "replay_mix",
        }
    }

    pub fn scope(&self) -> Option<&Scope> {
        match self {
            Assertion::BackendShare(c) => Some(&c.scope),
            Assertion::BackendReceived(c) => Some(&c.scope),
            Assertion::StatusShare(c) => Some(&c.scope),
            Assertion::RatelimitedShare(c) => Some(&c.scope),
            Assertion::Latency(c) => Some(&c.scope),
            Assertion::Requests(c) => Some(&c.scope),
            Assertion::LostLogRecords(_) | Assertion::EnvoyStat(_) | Assertion::ReplayMix(_) => {
                None
            }
        }
    }

    fn scope_mut(&mut self) -> Option<&mut Scope> {
        match self {
            Assertion::BackendShare(c) => Some(&mut c.scope),
            Assertion::BackendReceived(c) => Some(&mut c.scope),
            Assertion::StatusShare(c) => Some(&mut c.scope),
            Assertion::RatelimitedShare(c) => Some(&mut c.scope),
            Assertion::Latency(c) => Some(&mut c.scope),
            Assertion::Requests(c) => Some(&mut c.scope),
            Assertion::LostLogRecords(_) | Assertion::EnvoyStat(_) | Assertion::ReplayMix(_) => {
                None
            }
        }
    }

    fn given_name(&self) -> Option<&str> {
        match self {
            Assertion::BackendShare(c) => c.name.as_deref(),
            Assertion::BackendReceived(c) => c.name.as_deref(),
            Assertion::StatusShare(c) => c.name.as_deref(),
            Assertion::RatelimitedShare(c) => c.name.as_deref(),
            Assertion::Latency(c) => c.name.as_deref(),
            Assertion::LostLogRecords(c) => c.name.as_deref(),
            Assertion::Requests(c) => c.name.as_deref(),
            Assertion::EnvoyStat(c) => c.name.as_deref(),
            Assertion::ReplayMix(c) => c.name.as_deref(),
        }
    }

    /// The name a failure is reported under: the given `name`, else the
    /// kind, its subject and scope, e.g. `backend_share(large) [flow shop]`.
    pub fn label(&self) -> String {
        if let Some(n) = self.given_name() {
            return n.to_string();
        }
        let subject = match self {
            Assertion::BackendShare(c) => format!("({})", c.backend),
            Assertion::BackendReceived(c) => match &c.value {
                Some(v) => format!("({}: {v})", c.header),
                None => format!("({})", c.header),
            },
            Assertion::StatusShare(c) => format!("({})", c.status.label()),
            Assertion::RatelimitedShare(c) if c.status != 429 => format!("({})", c.status),
            Assertion::Latency(c) => format!("(p{})", c.percentile),
            Assertion::EnvoyStat(c) => format!("({})", c.stat),
            _ => String::new(),
        };
        let scope = self
            .scope()
            .map(Scope::describe)
            .filter(|s| !s.is_empty())
            .map(|s| format!(" [{s}]"))
            .unwrap_or_default();
        format!("{}{subject}{scope}", self.kind())
    }
}

impl Scenario {
    /// Reads, parses and validates a scenario file.
    pub fn load(path: impl AsRef<Path>) -> Result<Scenario> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        let mut s =
            Scenario::parse(&text).with_context(|| format!("scenario {}", path.display()))?;
        s.source = Some(path.to_path_buf());
        Ok(s)
    }

    /// Parses and validates scenario YAML.
    pub fn parse(text: &str) -> Result<Scenario> {
        let raw: Value = serde_yaml_ng::from_str(text).context("not valid YAML")?;
        let s: Scenario = serde_path_to_error::deserialize(raw).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                anyhow::anyhow!("{}", e.inner())
            } else {
                anyhow::anyhow!("{path}: {}", e.inner())
            }
        })?;
        s.validate()?;
        Ok(s)
    }

    /// Checks what serde cannot; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            bail!("name: must not be empty");
        }
        if !(self.quick_scale > 0.0 && self.quick_scale <= 1.0) {
            bail!("quick_scale: must be in (0, 1]");
        }
        if self.request_timeout.0.is_zero() {
            bail!("request_timeout: must be > 0");
        }
        if let Some(b) = self.bucket
            && b.0 < Duration::from_millis(10)
        {
            bail!("bucket: must be at least 10ms");
        }
        if self.envoy.concurrency == 0 {
            bail!("envoy.concurrency: must be >= 1");
        }
        let mut kinds = BTreeSet::new();
        for (i, f) in self.envoy.filters.iter().enumerate() {
            let path = format!(
                "envoy.filters[{i}].{}",
                f.kind().map_or("wasm", FilterKind::name)
            );
            if let Some(k) = f.kind()
                && !kinds.insert(k)
            {
                bail!("{path}: listed twice");
            }
            if let FilterDef::Wasm(w) = f {
                let module = self.wasm_module(w);
                if !module.is_file() {
                    bail!("{path}.module: {} is not a file", module.display());
                }
            }
            if !f.config().is_object() {
                bail!("{path}.config: must be a mapping");
            }
            if let FilterDef::LoadBalancer(lb) = f {
                if let Some(names) = &lb.endpoints {
                    for (j, n) in names.iter().enumerate() {
                        if !self.backends.iter().any(|b| &b.name == n) {
                            bail!("{path}.endpoints[{j}]: no backend named {n:?}");
                        }
                    }
                }
                let mode = lb.config.get("mode").and_then(Value::as_str);
                if self.envoy.template.is_none() && mode.is_some_and(|m| m != "endpoint") {
                    bail!(
                        "{path}.config.mode: the built-in template runs endpoint mode; \
                         use envoy.template for {mode:?}"
                    );
                }
            }
        }
        for (var, kind) in &self.envoy.config_vars {
            if !kinds.contains(kind) {
                bail!(
                    "envoy.config_vars.{var}: filter {} is not in envoy.filters",
                    kind.name()
                );
            }
        }
        if self.backends.is_empty() {
            bail!("backends: at least one backend is needed");
        }
        let mut names = BTreeSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            let path = format!("backends[{i}]");
            if b.name.is_empty() || hyper::header::HeaderValue::from_str(&b.name).is_err() {
                bail!("{path}.name: {:?} must be non-empty header text", b.name);
            }
            if !names.insert(b.name.as_str()) {
                bail!("{path}.name: {:?} is used twice", b.name);
            }
            if !valid_cluster_name(&b.cluster) {
                bail!("{path}.cluster: {:?} must be [A-Za-z0-9_.-]+", b.cluster);
            }
            if b.capacity == Some(0) {
                bail!("{path}.capacity: must be >= 1");
            }
            if !(0.0..=1.0).contains(&b.error_rate) {
                bail!("{path}.error_rate: must be in [0, 1]");
            }
            b.latency.check(&format!("{path}.latency"))?;
            for (j, e) in b.events.iter().enumerate() {
                let epath = format!("{path}.events[{j}]");
                let Some(action) = e.action() else {
                    bail!("{epath}: needs exactly one of slow_down, fail, recover, drain, orca");
                };
                match action {
                    Action::SlowDown(s) => match (&s.latency, s.factor) {
                        (Some(l), None) => l.check(&format!("{epath}.slow_down.latency"))?,
                        (None, Some(f)) if f.is_finite() && f > 0.0 => {}
                        (None, Some(_)) => bail!("{epath}.slow_down.factor: must be > 0"),
                        _ => bail!("{epath}.slow_down: needs exactly one of latency, factor"),
                    },
                    Action::Fail(f) if !(0.0..=1.0).contains(&f.error_rate) => {
                        bail!("{epath}.fail.error_rate: must be in [0, 1]")
                    }
                    Action::Drain => {
                        let lb = self.envoy.filters.iter().find_map(|f| match f {
                            FilterDef::LoadBalancer(lb) => Some(lb),
                            _ => None,
                        });
                        let endpoint = lb.is_some_and(|lb| {
                            lb.endpoints.as_ref().is_none_or(|n| n.contains(&b.name))
                        });
                        if !endpoint {
                            bail!(
                                "{epath}.drain: draining goes through the load balancer's \
                                 discovery: {:?} must be one of its endpoints",
                                b.name
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
        if self.traffic.is_empty() {
            bail!("traffic: at least one flow is needed");
        }
        self.validate_event_times()?;
        let mut flows = BTreeSet::new();
        for (i, f) in self.traffic.iter().enumerate() {
            let path = format!("traffic[{i}]");
            if f.name.is_empty() || !flows.insert(f.name.as_str()) {
                bail!("{path}.name: {:?} must be non-empty and unique", f.name);
            }
            if let Some(c) = &f.clients {
                c.expand(&format!("{path}.clients"))?;
                if hyper::header::HeaderName::from_bytes(c.header.as_bytes()).is_err() {
                    bail!("{path}.clients.header: {:?} is not a header name", c.header);
                }
            }
            check_mix(&f.requests, &format!("{path}.requests"))?;
            if f.phases.is_empty() {
                bail!("{path}.phases: at least one phase is needed");
            }
            let mut phase_names = BTreeSet::new();
            for (j, p) in f.phases.iter().enumerate() {
                let ppath = format!("{path}.phases[{j}]");
                if !phase_names.insert(phase_name(p, j)) {
                    bail!(
                        "{ppath}.name: {:?} is used twice in the flow",
                        phase_name(p, j)
                    );
                }
                if p.duration.0.is_zero() {
                    bail!("{ppath}.duration: must be > 0");
                }
                match (p.rate, p.concurrency) {
                    (Some(r), None) if r.is_finite() && r > 0.0 && r <= 100_000.0 => {}
                    (Some(_), None) => bail!("{ppath}.rate: must be in (0, 100000]"),
                    (None, Some(c)) if (1..=4096).contains(&c) => {}
                    (None, Some(_)) => bail!("{ppath}.concurrency: must be 1..=4096"),
                    _ => bail!(
                        "{ppath}: needs exactly one of rate (open loop), concurrency (closed loop)"
                    ),
                }
                if p.max_in_flight == 0 {
                    bail!("{ppath}.max_in_flight: must be >= 1");
                }
                match &p.requests {
                    Some(m) => check_mix(m, &format!("{ppath}.requests"))?,
                    None if f.requests.is_empty() => {
                        bail!(
                            "{ppath}.requests: the flow has no requests; give them here or in {path}.requests"
                        )
                    }
                    None => {}
                }
            }
        }
        for (i, a) in self.assertions.iter().enumerate() {
            self.check_assertion(a, &format!("assertions[{i}].{}", a.kind()))?;
        }
        Ok(())
    }

    fn check_assertion(&self, a: &Assertion, path: &str) -> Result<()> {
        let share = |min: Option<f64>, max: Option<f64>| -> Result<()> {
            if min.is_none() && max.is_none() {
                bail!("{path}: needs min or max");
            }
            for (n, v) in [("min", min), ("max", max)] {
                if let Some(v) = v
                    && !(0.0..=1.0).contains(&v)
                {
                    bail!("{path}.{n}: a share is in [0, 1], not {v}");
                }
            }
            if let (Some(a), Some(b)) = (min, max)
                && a > b
            {
                bail!("{path}: min {a} > max {b}");
            }
            Ok(())
        };
        match a {
            Assertion::BackendShare(c) => {
                if !self.backends.iter().any(|b| b.name == c.backend) {
                    bail!("{path}.backend: no backend named {:?}", c.backend);
                }
                share(c.min, c.max)?;
            }
            Assertion::StatusShare(c) => share(c.min, c.max)?,
            Assertion::BackendReceived(c) => {
                let valid = !c.header.is_empty()
                    && c.header
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !valid {
                    bail!("{path}.header: must be a lowercase header name");
                }
                share(c.min, c.max)?;
            }
            Assertion::RatelimitedShare(c) => share(c.min, c.max)?,
            Assertion::Latency(c) => {
                if !(0.0..=100.0).contains(&c.percentile) {
                    bail!("{path}.percentile: must be in [0, 100]");
                }
                if c.min_ms.is_none() && c.max_ms.is_none() {
                    bail!("{path}: needs min_ms or max_ms");
                }
            }
            Assertion::LostLogRecords(_) => {
                let sink = self
                    .envoy
                    .filters
                    .iter()
                    .any(|f| f.kind() == Some(FilterKind::AccessLog));
                if !sink {
                    bail!("{path}: needs the access_log filter in envoy.filters");
                }
            }
            Assertion::Requests(c) => {
                if c.min.is_none() && c.max.is_none() {
                    bail!("{path}: needs min or max");
                }
            }
            Assertion::EnvoyStat(c) => {
                if c.min.is_none() && c.max.is_none() {
                    bail!("{path}: needs min or max");
                }
            }
            Assertion::ReplayMix(c) => {
                if !(0.0..=1.0).contains(&c.max_deviation) {
                    bail!("{path}.max_deviation: a share difference is in [0, 1]");
                }
            }
        }
        if let Some(scope) = a.scope() {
            if let Some(flow) = &scope.flow {
                let Some(f) = self.traffic.iter().find(|f| &f.name == flow) else {
                    bail!("{path}.scope.flow: no flow named {flow:?}");
                };
                if let Some(phase) = &scope.phase
                    && !f
                        .phases
                        .iter()
                        .enumerate()
                        .any(|(j, p)| &phase_name(p, j) == phase)
                {
                    bail!("{path}.scope.phase: flow {flow:?} has no phase {phase:?}");
                }
            } else if let Some(phase) = &scope.phase {
                let any = self.traffic.iter().any(|f| {
                    f.phases
                        .iter()
                        .enumerate()
                        .any(|(j, p)| &phase_name(p, j) == phase)
                });
                if !any {
                    bail!("{path}.scope.phase: no flow has a phase {phase:?}");
                }
            }
            if let (Some(a), Some(b)) = (scope.from, scope.until)
                && a >= b
            {
                bail!("{path}.scope: from must be before until");
            }
            // A window that starts after the last flow ends sees nothing.
            let end = self.traffic_duration();
            if let Some(from) = scope.from
                && from.0 >= end
            {
                bail!(
                    "{path}.scope.from: {:?} is not before the traffic ends ({end:?})",
                    from.0
                );
            }
            if let Some(until) = scope.until
                && until.0 > end
            {
                bail!(
                    "{path}.scope.until: {:?} is after the traffic ends ({end:?})",
                    until.0
                );
            }
        }
        Ok(())
    }

    /// Events that would never happen: after the last flow ends the run
    /// stops. Checked with [`Scenario::validate`].
    fn validate_event_times(&self) -> Result<()> {
        let end = self.traffic_duration();
        for (i, b) in self.backends.iter().enumerate() {
            for (j, e) in b.events.iter().enumerate() {
                if e.at.0 >= end {
                    bail!(
                        "backends[{i}].events[{j}].at: {:?} is not before the traffic ends ({end:?})",
                        e.at.0
                    );
                }
            }
        }
        Ok(())
    }

    /// The same scenario with every time multiplied by `f` (durations,
    /// starts, event times, assertion windows, the bucket width).
    pub fn scaled(&self, f: f64) -> Scenario {
        let mut s = self.clone();
        let k = |d: &mut Dur| d.0 = d.0.mul_f64(f);
        for b in &mut s.backends {
            for e in &mut b.events {
                k(&mut e.at);
            }
        }
        for fl in &mut s.traffic {
            k(&mut fl.start);
            for p in &mut fl.phases {
                k(&mut p.duration);
            }
        }
        for a in &mut s.assertions {
            if let Some(sc) = a.scope_mut() {
                if let Some(d) = &mut sc.from {
                    k(d);
                }
                if let Some(d) = &mut sc.until {
                    k(d);
                }
            }
        }
        if let Some(b) = &mut s.bucket {
            k(b);
        }
        s
    }

    /// When the last flow ends.
    pub fn traffic_duration(&self) -> Duration {
        self.traffic
            .iter()
            .map(|f| f.start.0 + f.phases.iter().map(|p| p.duration.0).sum::<Duration>())
            .max()
            .unwrap_or_default()
    }

    pub fn filter(&self, kind: FilterKind) -> Option<&FilterDef> {
        self.envoy.filters.iter().find(|f| f.kind() == Some(kind))
    }

    /// The request headers `backend_received` assertions look at: every
    /// backend keeps them per request.
    pub fn received_headers(&self) -> Vec<String> {
        let mut h: Vec<String> = self
            .assertions
            .iter()
            .filter_map(|a| match a {
                Assertion::BackendReceived(c) => Some(c.header.clone()),
                _ => None,
            })
            .collect();
        h.sort();
        h.dedup();
        h
    }

    /// Where a `wasm` filter's module is: relative to the scenario file,
    /// else to the workspace, else a name in `build/wasm/`.
    pub fn wasm_module(&self, w: &WasmDef) -> PathBuf {
        let p = PathBuf::from(&w.module);
        if p.is_absolute() {
            return p;
        }
        let mut candidates = Vec::new();
        if let Some(dir) = self.source.as_ref().and_then(|f| f.parent()) {
            candidates.push(dir.join(&p));
        }
        candidates.push(crate::paths::workspace_root().join(&p));
        candidates.push(crate::paths::wasm_dir().join(&p));
        candidates
            .iter()
            .find(|c| c.is_file())
            .cloned()
            .unwrap_or_else(|| candidates.last().cloned().unwrap_or(p))
    }
}

/// A phase's name: its `name`, else `phase-<n>` (1-based).
pub fn phase_name(p: &PhaseDef, index: usize) -> String {
    p.name
        .clone()
        .unwrap_or_else(|| format!("phase-{}", index + 1))
}

fn valid_cluster_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn check_mix(mix: &[RequestDef], path: &str) -> Result<()> {
    for (i, r) in mix.iter().enumerate() {
        let rpath = format!("{path}[{i}]");
        if !(r.weight.is_finite() && r.weight > 0.0) {
            bail!("{rpath}.weight: must be > 0");
        }
        if hyper::Method::from_bytes(r.method.as_bytes()).is_err() {
            bail!("{rpath}.method: {:?} is not a method", r.method);
        }
        if hyper::header::HeaderValue::from_str(&r.host).is_err() {
            bail!("{rpath}.host: {:?} is not header text", r.host);
        }
        super::driver::check_path_template(&r.path)
            .map_err(|e| anyhow::anyhow!("{rpath}.path: {e}"))?;
        for (k, v) in &r.headers {
            if hyper::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                bail!("{rpath}.headers: {k:?} is not a header name");
            }
            if hyper::header::HeaderValue::from_str(v).is_err() {
                bail!("{rpath}.headers.{k}: {v:?} is not header text");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name: t
envoy: {}
backends:
  - name: a
traffic:
  - name: f
    requests: [{host: a.test}]
    phases: [{duration: 1s, rate: 10}]
"#;

    fn err(yaml: &str) -> String {
        format!("{:#}", Scenario::parse(yaml).expect_err("must be refused"))
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn minimal_scenario_and_defaults() {
        let s = Scenario::parse(MINIMAL).unwrap();
        assert_eq!(s.envoy.concurrency, 2);
        assert_eq!(s.backends[0].cluster, "backends");
        assert_eq!(s.traffic[0].phases[0].rate, Some(10.0));
        assert_eq!(s.traffic_duration(), Duration::from_secs(1));
        assert_eq!(s.scaled(0.5).traffic_duration(), Duration::from_millis(500));
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_field() {
        let e = err(&MINIMAL.replace("- name: a", "- name: a\n    capacty: 3"));
        assert!(e.contains("backends[0]") && e.contains("capacty"), "{e}");
        let e = err(&MINIMAL.replace("- name: a", "- name: a\n    latency: {fixd_ms: 3}"));
        assert!(
            e.contains("backends[0].latency") && e.contains("fixd_ms"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("duration: 1s", "duration: 1 fortnight"));
        assert!(e.contains("traffic[0].phases[0].duration"), "{e}");
        let e = err(&MINIMAL.replace("rate: 10", "rate: 10, concurrency: 2"));
        assert!(e.contains("traffic[0].phases[0]: needs exactly one"), "{e}");
        let e = err(&format!(
            "{MINIMAL}assertions:\n  - backend_share: {{backend: zz, min: 0.1}}\n"
        ));
        assert!(e.contains("assertions[0].backend_share.backend"), "{e}");
        let e = err(&format!(
            "{MINIMAL}assertions:\n  - status_share: {{status: 7xx, min: 0.1}}\n"
        ));
        assert!(e.contains("assertions[0].status_share.status"), "{e}");
        let e = err(&format!(
            "{MINIMAL}assertions:\n  - latency: {{percentile: 99, max_ms: 5, scope: {{flow: nope}}}}\n"
        ));
        assert!(e.contains("assertions[0].latency.scope.flow"), "{e}");
        let e = err(&MINIMAL.replace(
            "- name: a",
            "- name: a\n    events: [{at: 1s, fail: {}, recover: {}}]",
        ));
        assert!(
            e.contains("backends[0].events[0]: needs exactly one"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("envoy: {}", "envoy: {filters: [{rate_limits: {}}]}"));
        assert!(
            e.contains("envoy.filters[0]") && e.contains("rate_limits"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("- name: a", "- name: a\n    events: [{at: 1s, drain: {}}]"));
        assert!(e.contains("backends[0].events[0].drain"), "{e}");
    }

    #[test]
    fn what_would_never_happen_is_refused_before_any_traffic() {
        // The traffic ends at 1 s: an event then, or a window after it.
        let e = err(&MINIMAL.replace(
            "- name: a",
            "- name: a\n    events: [{at: 1s, fail: {error_rate: 1}}]",
        ));
        assert!(
            e.contains("backends[0].events[0].at") && e.contains("traffic ends"),
            "{e}"
        );
        let e = err(&format!(
            "{MINIMAL}assertions:\n  - backend_share: {{backend: a, min: 0.1, scope: {{from: 2s}}}}\n"
        ));
        assert!(e.contains("assertions[0].backend_share.scope.from"), "{e}");
        let e = err(&format!(
            "{MINIMAL}assertions:\n  - backend_share: {{backend: a, min: 0.1, scope: {{until: 3s}}}}\n"
        ));
        assert!(e.contains("assertions[0].backend_share.scope.until"), "{e}");
        // Inside the run: fine.
        Scenario::parse(&MINIMAL.replace(
            "- name: a",
            "- name: a\n    events: [{at: 500ms, fail: {error_rate: 1}}]",
        ))
        .unwrap();
    }

    #[test]
    fn client_pools() {
        let p = ClientPool {
            addresses: vec![],
            cidr: Some("198.51.100.0/24".into()),
            count: Some(3),
            pick: Pick::Random,
            header: default_xff(),
        };
        assert_eq!(
            p.expand("c").unwrap(),
            ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        );
        let one = ClientPool {
            cidr: Some("203.0.113.7/32".into()),
            count: None,
            ..p.clone()
        };
        assert_eq!(one.expand("c").unwrap(), ["203.0.113.7"]);
        let big = ClientPool {
            count: Some(300),
            ..p
        };
        assert!(big.expand("c").unwrap_err().to_string().contains("c.count"));
    }

    #[test]
    fn status_classes_and_labels() {
        assert_eq!(StatusClass::parse("2xx"), Some(StatusClass::Class(2)));
        assert_eq!(StatusClass::parse("429"), Some(StatusClass::Code(429)));
        assert_eq!(StatusClass::parse("error"), Some(StatusClass::Error));
        assert_eq!(StatusClass::parse("9xx"), None);
        assert!(StatusClass::Class(5).matches(503));
        assert!(StatusClass::Error.matches(0));
        let s = Scenario::parse(&format!(
            "{MINIMAL}assertions:\n  - backend_share: {{backend: a, min: 0.5, scope: {{flow: f, from: 500ms}}}}\n  - status_share: {{name: mostly ok, status: 200, min: 0.9}}\n"
        ))
        .unwrap();
        assert_eq!(
            s.assertions[0].label(),
            "backend_share(a) [flow f, from 0.5s]"
        );
        assert_eq!(s.assertions[1].label(), "mostly ok");
    }
}
