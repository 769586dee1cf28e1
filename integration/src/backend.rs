//! Real upstream test servers for the integration harness.
//!
//! Each [`Backend`] is a tokio + hyper 1 HTTP/1.1 (keep-alive) server bound to
//! `127.0.0.1:0`. It answers every request with `200` (or `503` for injected
//! errors), the header `x-switchyard-backend: <name>`, an optional ORCA load
//! report header in one of the formats Envoy accepts, and a small body
//! (`<name>\n`, or a JSON echo of the request when it carries
//! `x-switchyard-echo: 1`).
//!
//! Latency, error rate and the reported load can be changed while the server
//! runs, so a scenario can slow a backend down, make it fail and recover it.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::{Deref, Index};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use rand::Rng as _;
use switchyard_proto::Message as _;
use switchyard_proto::orca::OrcaLoadReport;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Response header naming the backend that served the request.
pub const BACKEND_HEADER: &str = "x-switchyard-backend";
/// Request header that turns the response body into a JSON echo of the request.
pub const ECHO_HEADER: &str = "x-switchyard-echo";
/// ORCA header carrying `TEXT ...`, `JSON ...` or `BIN ...` reports.
pub const ORCA_HEADER: &str = "endpoint-load-metrics";
/// ORCA header carrying a bare base64 serialized `OrcaLoadReport`.
pub const ORCA_BIN_HEADER: &str = "endpoint-load-metrics-bin";
/// The ORCA named metric in which measured reports carry the backend's
/// requests in flight (`named_metrics.in_flight`; the load balancer's
/// `prequal.in_flight_metric` default).
pub const IN_FLIGHT_METRIC: &str = "in_flight";
/// Capacity used for measured utilization when the backend has no capacity limit.
pub const NOMINAL_CAPACITY: usize = 100;

/// How a backend reports its load to Envoy (ORCA per-request reporting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OrcaFormat {
    /// No load report header.
    #[default]
    None,
    /// `endpoint-load-metrics: TEXT cpu_utilization=0.7,...`
    Text,
    /// `endpoint-load-metrics: JSON {"cpuUtilization":0.7,...}` (proto3 JSON).
    Json,
    /// `endpoint-load-metrics: BIN <base64 OrcaLoadReport>`
    Bin,
    /// `endpoint-load-metrics-bin: <base64 OrcaLoadReport>`
    BinHeader,
}

/// Where the reported load values come from.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum OrcaSource {
    /// Computed from the live state: utilization from busy/queued requests
    /// against capacity, rates over the last second.
    #[default]
    Measured,
    /// Always report exactly these values (tests that need exact weights).
    Fixed(LoadReport),
}

/// An ORCA load report (the subset of `xds.data.orca.v3.OrcaLoadReport`
/// that Envoy and the A58 weighting use).
///
/// Values should be finite; Envoy rejects reports it cannot parse.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    pub cpu_utilization: f64,
    pub mem_utilization: f64,
    pub application_utilization: f64,
    pub rps_fractional: f64,
    pub eps: f64,
    pub named_metrics: BTreeMap<String, f64>,
    pub utilization: BTreeMap<String, f64>,
}

impl LoadReport {
    /// An all-zero report; chain the setters below.
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cpu(mut self, v: f64) -> Self {
        self.cpu_utilization = v;
        self
    }
    pub fn mem(mut self, v: f64) -> Self {
        self.mem_utilization = v;
        self
    }
    pub fn application(mut self, v: f64) -> Self {
        self.application_utilization = v;
        self
    }
    pub fn rps(mut self, v: f64) -> Self {
        self.rps_fractional = v;
        self
    }
    pub fn eps(mut self, v: f64) -> Self {
        self.eps = v;
        self
    }
    /// Adds `named_metrics.<key>`.
    pub fn named(mut self, key: impl Into<String>, v: f64) -> Self {
        self.named_metrics.insert(key.into(), v);
        self
    }
    /// Adds `utilization.<key>`.
    pub fn util(mut self, key: impl Into<String>, v: f64) -> Self {
        self.utilization.insert(key.into(), v);
        self
    }

    /// Scalar fields in wire order: (TEXT name, JSON name, value).
    fn scalars(&self) -> [(&'static str, &'static str, f64); 5] {
        [
            ("cpu_utilization", "cpuUtilization", self.cpu_utilization),
            ("mem_utilization", "memUtilization", self.mem_utilization),
            (
                "application_utilization",
                "applicationUtilization",
                self.application_utilization,
            ),
            ("rps_fractional", "rpsFractional", self.rps_fractional),
            ("eps", "eps", self.eps),
        ]
    }

    /// TEXT body (without the `TEXT ` prefix). Zero scalars are omitted,
    /// except `cpu_utilization`, which is always present.
    pub fn to_text(&self) -> String {
        let mut parts = Vec::new();
        for (i, (name, _, v)) in self.scalars().into_iter().enumerate() {
            if i == 0 || v != 0.0 {
                parts.push(format!("{name}={v}"));
            }
        }
        for (k, v) in &self.named_metrics {
            parts.push(format!("named_metrics.{k}={v}"));
        }
        for (k, v) in &self.utilization {
            parts.push(format!("utilization.{k}={v}"));
        }
        parts.join(",")
    }

    /// proto3 JSON body (without the `JSON ` prefix), lowerCamelCase names.
    /// Zero scalars are omitted, except `cpuUtilization`.
    pub fn to_json(&self) -> String {
        let mut obj = serde_json::Map::new();
        for (i, (_, name, v)) in self.scalars().into_iter().enumerate() {
            if i == 0 || v != 0.0 {
                obj.insert(name.to_owned(), json_number(v));
            }
        }
        for (name, map) in [
            ("namedMetrics", &self.named_metrics),
            ("utilization", &self.utilization),
        ] {
            if !map.is_empty() {
                let m = map
                    .iter()
                    .map(|(k, v)| (k.clone(), json_number(*v)))
                    .collect();
                obj.insert(name.to_owned(), serde_json::Value::Object(m));
            }
        }
        serde_json::Value::Object(obj).to_string()
    }

    /// The prost message this report encodes to.
    pub fn to_proto(&self) -> OrcaLoadReport {
        OrcaLoadReport {
            cpu_utilization: self.cpu_utilization,
            mem_utilization: self.mem_utilization,
            application_utilization: self.application_utilization,
            rps_fractional: self.rps_fractional,
            eps: self.eps,
            named_metrics: self.named_metrics.clone(),
            utilization: self.utilization.clone(),
            ..Default::default()
        }
    }

    /// Reads the fields this type models from a prost message (the deprecated
    /// integer `rps` and `request_cost` are ignored).
    pub fn from_proto(p: &OrcaLoadReport) -> Self {
        Self {
            cpu_utilization: p.cpu_utilization,
            mem_utilization: p.mem_utilization,
            application_utilization: p.application_utilization,
            rps_fractional: p.rps_fractional,
            eps: p.eps,
            named_metrics: p.named_metrics.clone(),
            utilization: p.utilization.clone(),
        }
    }

    /// Standard base64 of the serialized `OrcaLoadReport`.
    pub fn to_bin_base64(&self) -> String {
        BASE64.encode(self.to_proto().encode_to_vec())
    }

    /// The response header (name, value) for `fmt`; `None` for [`OrcaFormat::None`].
    pub fn header(&self, fmt: OrcaFormat) -> Option<(&'static str, String)> {
        match fmt {
            OrcaFormat::None => None,
            OrcaFormat::Text => Some((ORCA_HEADER, format!("TEXT {}", self.to_text()))),
            OrcaFormat::Json => Some((ORCA_HEADER, format!("JSON {}", self.to_json()))),
            OrcaFormat::Bin => Some((ORCA_HEADER, format!("BIN {}", self.to_bin_base64()))),
            OrcaFormat::BinHeader => Some((ORCA_BIN_HEADER, self.to_bin_base64())),
        }
    }

    /// Parses a report from a response header in any of the formats above, so
    /// tests can check what a backend (or a proxy passing it on) sent.
    pub fn from_header(name: &str, value: &str) -> anyhow::Result<Self> {
        if name.eq_ignore_ascii_case(ORCA_BIN_HEADER) {
            return Self::from_bin_base64(value.trim());
        }
        ensure!(
            name.eq_ignore_ascii_case(ORCA_HEADER),
            "not an ORCA header: {name}"
        );
        let (kind, body) = value
            .trim()
            .split_once(' ')
            .ok_or_else(|| anyhow!("ORCA header without format prefix: {value}"))?;
        match kind {
            "TEXT" => Self::parse_text(body),
            "JSON" => Self::parse_json(body),
            "BIN" => Self::from_bin_base64(body.trim()),
            other => bail!("unknown ORCA format {other}"),
        }
    }

    /// Decodes standard base64 of a serialized `OrcaLoadReport`.
    pub fn from_bin_base64(b64: &str) -> anyhow::Result<Self> {
        let raw = BASE64.decode(b64).context("ORCA BIN: bad base64")?;
        let p = OrcaLoadReport::decode(raw.as_slice()).context("ORCA BIN: bad protobuf")?;
        Ok(Self::from_proto(&p))
    }

    /// Parses a TEXT body (`cpu_utilization=0.7,named_metrics.foo=1,...`).
    pub fn parse_text(body: &str) -> anyhow::Result<Self> {
        let mut r = Self::default();
        for item in body.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, val) = item
                .split_once('=')
                .ok_or_else(|| anyhow!("ORCA TEXT: no '=' in {item:?}"))?;
            let v: f64 = val
                .trim()
                .parse()
                .with_context(|| format!("ORCA TEXT: bad number in {item:?}"))?;
            let key = key.trim();
            if let Some(k) = key.strip_prefix("named_metrics.") {
                r.named_metrics.insert(k.to_owned(), v);
            } else if let Some(k) = key.strip_prefix("utilization.") {
                r.utilization.insert(k.to_owned(), v);
            } else {
                *r.scalar_mut(key)
                    .ok_or_else(|| anyhow!("ORCA TEXT: unknown key {key}"))? = v;
            }
        }
        Ok(r)
    }

    /// Parses a proto3 JSON body (camelCase or original snake_case names).
    pub fn parse_json(body: &str) -> anyhow::Result<Self> {
        let v: serde_json::Value = serde_json::from_str(body).context("ORCA JSON: bad JSON")?;
        let obj = v
            .as_object()
            .ok_or_else(|| anyhow!("ORCA JSON: not an object"))?;
        let mut r = Self::default();
        for (key, val) in obj {
            match key.as_str() {
                "namedMetrics" | "named_metrics" | "utilization" => {
                    let m = val
                        .as_object()
                        .ok_or_else(|| anyhow!("ORCA JSON: {key} is not an object"))?;
                    let target = if key == "utilization" {
                        &mut r.utilization
                    } else {
                        &mut r.named_metrics
                    };
                    for (k, x) in m {
                        target.insert(k.clone(), json_to_f64(x)?);
                    }
                }
                other => {
                    let snake = camel_to_snake(other);
                    *r.scalar_mut(&snake)
                        .ok_or_else(|| anyhow!("ORCA JSON: unknown key {other}"))? =
                        json_to_f64(val)?;
                }
            }
        }
        Ok(r)
    }

    fn scalar_mut(&mut self, snake_name: &str) -> Option<&mut f64> {
        match snake_name {
            "cpu_utilization" => Some(&mut self.cpu_utilization),
            "mem_utilization" => Some(&mut self.mem_utilization),
            "application_utilization" => Some(&mut self.application_utilization),
            "rps_fractional" => Some(&mut self.rps_fractional),
            "eps" => Some(&mut self.eps),
            _ => None,
        }
    }
}

/// proto3 JSON spells non-finite doubles as strings.
fn json_number(v: f64) -> serde_json::Value {
    match serde_json::Number::from_f64(v) {
        Some(n) => serde_json::Value::Number(n),
        None if v.is_nan() => "NaN".into(),
        None if v > 0.0 => "Infinity".into(),
        None => "-Infinity".into(),
    }
}

fn json_to_f64(v: &serde_json::Value) -> anyhow::Result<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64().ok_or_else(|| anyhow!("bad number {n}")),
        serde_json::Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            s => s.parse().with_context(|| format!("bad number {s:?}")),
        },
        other => bail!("ORCA JSON: expected a number, got {other}"),
    }
}

fn camel_to_snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Time a backend spends "working" on each request (while holding a
/// capacity slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latency {
    Fixed(Duration),
    /// Uniformly random in `[min, max]`.
    Uniform {
        min: Duration,
        max: Duration,
    },
    /// Log-normal with this median and 99th percentile: most requests are
    /// quick, a few are much slower (the shape real services have). Draws
    /// are capped at 10 × `p99`.
    LogNormal {
        p50: Duration,
        p99: Duration,
    },
}

impl Default for Latency {
    fn default() -> Self {
        Latency::Fixed(Duration::ZERO)
    }
}

impl Latency {
    /// Fixed latency in milliseconds.
    pub fn ms(ms: u64) -> Self {
        Latency::Fixed(Duration::from_millis(ms))
    }
    /// Uniform latency between `min_ms` and `max_ms` milliseconds.
    pub fn uniform_ms(min_ms: u64, max_ms: u64) -> Self {
        Latency::Uniform {
            min: Duration::from_millis(min_ms),
            max: Duration::from_millis(max_ms),
        }
    }
    /// σ of a log-normal with median `p50` and 99th percentile `p99`;
    /// `None` when that is no spread (`p50` zero or `p99` not above it).
    fn log_normal_sigma(p50: Duration, p99: Duration) -> Option<f64> {
        // z of the 99th percentile of the standard normal.
        (!p50.is_zero() && p99 > p50)
            .then(|| (p99.as_secs_f64() / p50.as_secs_f64()).ln() / 2.326_347_874)
    }

    /// The mean latency (log-normal: median × e^(σ²/2), ignoring the cap
    /// at 10 × p99).
    pub fn mean(&self) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform { min, max } => (min + max) / 2,
            Latency::LogNormal { p50, p99 } => match Self::log_normal_sigma(p50, p99) {
                Some(sigma) => p50.mul_f64((sigma * sigma / 2.0).exp()),
                None => p50,
            },
        }
    }

    /// Draws one request's latency.
    pub fn sample(&self) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform { min, max } => {
                let (lo, hi) = if min <= max { (min, max) } else { (max, min) };
                let lo_ns = u64::try_from(lo.as_nanos()).unwrap_or(u64::MAX);
                let hi_ns = u64::try_from(hi.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(rand::rng().random_range(lo_ns..=hi_ns))
            }
            Latency::LogNormal { p50, p99 } => {
                let Some(sigma) = Self::log_normal_sigma(p50, p99) else {
                    return p50;
                };
                let median = p50.as_secs_f64();
                // Box-Muller; u1 in (0, 1] keeps ln finite.
                let mut rng = rand::rng();
                let u1: f64 = 1.0 - rng.random::<f64>();
                let u2: f64 = rng.random::<f64>();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let cap = p99.as_secs_f64() * 10.0;
                Duration::from_secs_f64((median * (sigma * z).exp()).min(cap))
            }
        }
    }
}

/// How injected errors are spread over requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorPattern {
    /// Deterministic: after N requests exactly `floor(N * rate)` were errors,
    /// evenly spaced (tests can assert exact counts).
    #[default]
    Even,
    /// Each request fails independently with probability `rate`.
    Random,
}

/// Configuration of one backend. Build with [`BackendSpec::new`] and the
/// chained setters.
#[derive(Clone, Debug)]
pub struct BackendSpec {
    /// Sent back in `x-switchyard-backend`; must be a valid header value.
    pub name: String,
    pub latency: Latency,
    /// Share of requests answered with 503, in `[0, 1]`.
    pub error_rate: f64,
    pub error_pattern: ErrorPattern,
    /// Injected errors answer at once, without waiting for capacity or latency
    /// (a crashing backend) instead of after the normal work (a failing one).
    pub fail_fast: bool,
    /// Max requests served concurrently; extra ones queue. `None` = unlimited.
    pub capacity: Option<usize>,
    pub orca: OrcaFormat,
    pub orca_source: OrcaSource,
    /// Serve unary gRPC over cleartext HTTP/2 instead of HTTP/1.1: the
    /// answer is an empty message, `grpc-status` (0, or 14 UNAVAILABLE for
    /// an injected error) and the load report (`endpoint-load-metrics-bin`)
    /// travel in the trailers, as gRPC servers send them.
    pub grpc: bool,
    /// Serve over TLS with this configuration (HTTP/1.1 or HTTP/2 by ALPN;
    /// see [`crate::tls::TestPki`]). Not with `grpc`.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Request headers to keep per request, by `x-request-id`
    /// ([`Backend::received`]): what the proxy passed on.
    pub record_headers: Vec<String>,
}

impl BackendSpec {
    /// A backend that answers 200 immediately, unlimited capacity, no ORCA.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            latency: Latency::default(),
            error_rate: 0.0,
            error_pattern: ErrorPattern::Even,
            fail_fast: false,
            capacity: None,
            orca: OrcaFormat::None,
            orca_source: OrcaSource::Measured,
            grpc: false,
            tls: None,
            record_headers: Vec::new(),
        }
    }
    /// Keep these request headers per request (the `record_headers` field).
    pub fn record_headers(mut self, names: Vec<String>) -> Self {
        self.record_headers = names;
        self
    }
    /// Serve over TLS (the `tls` field).
    pub fn tls(mut self, config: std::sync::Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }
    /// Unary gRPC over HTTP/2, reports in trailers (the `grpc` field).
    pub fn grpc(mut self) -> Self {
        self.grpc = true;
        self
    }
    pub fn latency(mut self, l: Latency) -> Self {
        self.latency = l;
        self
    }
    pub fn latency_ms(self, ms: u64) -> Self {
        self.latency(Latency::ms(ms))
    }
    pub fn latency_uniform_ms(self, min_ms: u64, max_ms: u64) -> Self {
        self.latency(Latency::uniform_ms(min_ms, max_ms))
    }
    pub fn error_rate(mut self, r: f64) -> Self {
        self.error_rate = r;
        self
    }
    pub fn error_pattern(mut self, p: ErrorPattern) -> Self {
        self.error_pattern = p;
        self
    }
    pub fn fail_fast(mut self, yes: bool) -> Self {
        self.fail_fast = yes;
        self
    }
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = Some(n);
        self
    }
    pub fn orca(mut self, f: OrcaFormat) -> Self {
        self.orca = f;
        self
    }
    pub fn orca_source(mut self, s: OrcaSource) -> Self {
        self.orca_source = s;
        self
    }
    /// Shorthand for `.orca_source(OrcaSource::Fixed(report))`.
    pub fn orca_fixed(self, report: LoadReport) -> Self {
        self.orca_source(OrcaSource::Fixed(report))
    }
}

/// A snapshot of a backend's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Responses produced (200 and 503).
    pub requests: u64,
    /// Injected 503s among them.
    pub errors: u64,
    /// TCP connections accepted (keep-alive reuse shows as few connections).
    pub connections: u64,
    /// Requests received and not yet answered (queued + busy), now.
    pub in_flight: usize,
    /// Highest `in_flight` seen.
    pub max_in_flight: usize,
    /// Requests holding a capacity slot (being "worked on"), now.
    pub busy: usize,
    /// Highest `busy` seen; never above the capacity.
    pub max_busy: usize,
    /// Requests waiting for a capacity slot, now.
    pub queued: usize,
    /// Responses per request path (without query string).
    pub by_path: BTreeMap<String, u64>,
}

/// One request as the backend received it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// In arrival order; values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
}

/// Settings that may change while the backend runs.
struct Knobs {
    latency: Latency,
    error_rate: f64,
    error_pattern: ErrorPattern,
    fail_fast: bool,
    orca: OrcaFormat,
    orca_source: OrcaSource,
    /// Running sum for [`ErrorPattern::Even`].
    error_acc: f64,
}

impl Knobs {
    fn roll_error(&mut self) -> bool {
        let rate = self.error_rate;
        match self.error_pattern {
            ErrorPattern::Even => {
                self.error_acc += rate;
                // The epsilon keeps e.g. ten additions of 0.1 counting as one error.
                if self.error_acc >= 1.0 - 1e-9 {
                    self.error_acc -= 1.0;
                    true
                } else {
                    false
                }
            }
            ErrorPattern::Random => rate > 0.0 && rand::rng().random_bool(rate),
        }
    }
}

/// Clamps to `[0, 1]`, NaN to 0 (so `random_bool` can never panic).
fn sanitize_rate(r: f64) -> f64 {
    if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) }
}

const BUCKET: Duration = Duration::from_millis(100);
const WINDOW_BUCKETS: u64 = 10;

/// Requests and errors per second over the last ~1 s, in 100 ms buckets
/// (one spare slot holds the bucket being filled).
struct RateWindow {
    origin: Instant,
    /// (bucket index, requests, errors)
    slots: [(u64, u64, u64); WINDOW_BUCKETS as usize + 1],
}

impl RateWindow {
    fn new(origin: Instant) -> Self {
        Self {
            origin,
            slots: [(0, 0, 0); WINDOW_BUCKETS as usize + 1],
        }
    }
    fn bucket(&self, now: Instant) -> u64 {
        let ms = now.saturating_duration_since(self.origin).as_millis();
        u64::try_from(ms / BUCKET.as_millis()).unwrap_or(u64::MAX)
    }
    fn record(&mut self, now: Instant, error: bool) {
        let idx = self.bucket(now);
        let slot = &mut self.slots[(idx % (WINDOW_BUCKETS + 1)) as usize];
        if slot.0 != idx {
            *slot = (idx, 0, 0);
        }
        slot.1 += 1;
        slot.2 += u64::from(error);
    }
    /// (rps, eps) over the completed buckets of the last second (fewer while
    /// the backend is younger than that).
    fn rates(&self, now: Instant) -> (f64, f64) {
        let idx = self.bucket(now);
        let n = idx.min(WINDOW_BUCKETS);
        if n == 0 {
            return (0.0, 0.0);
        }
        let (mut req, mut err) = (0u64, 0u64);
        for &(b, r, e) in &self.slots {
            if b >= idx - n && b < idx {
                req += r;
                err += e;
            }
        }
        let secs = n as f64 * BUCKET.as_secs_f64();
        (req as f64 / secs, err as f64 / secs)
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    connections: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    busy: AtomicUsize,
    max_busy: AtomicUsize,
    queued: AtomicUsize,
    /// Capacity slots an antagonist holds ([`Backend::set_antagonist`]).
    antagonist: AtomicUsize,
}

/// Increments a gauge (and its high-water mark) and decrements it on drop, so
/// gauges stay right when hyper drops a request future (client went away).
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn up(g: &'a AtomicUsize, max: Option<&AtomicUsize>) -> Self {
        let now = g.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(m) = max {
            m.fetch_max(now, Ordering::SeqCst);
        }
        Gauge(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Shared {
    name: String,
    grpc: bool,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    name_value: HeaderValue,
    capacity: Option<usize>,
    permits: Option<Semaphore>,
    knobs: Mutex<Knobs>,
    counters: Counters,
    rates: Mutex<RateWindow>,
    by_path: Mutex<BTreeMap<String, u64>>,
    last: Mutex<Option<SeenRequest>>,
    record_headers: Vec<String>,
    /// `x-request-id` → the recorded headers (name, value) it arrived with.
    received: Mutex<HashMap<String, Vec<(String, String)>>>,
}

/// Locks ignoring poisoning: the guarded data are plain counters and settings
/// that stay consistent even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Utilization counts the antagonist's slots (a real server's CPU
    /// does); `named_metrics.in_flight` ([`IN_FLIGHT_METRIC`]) is the
    /// requests received and not yet answered, this one included.
    fn measured_report(&self) -> LoadReport {
        let cap = self.capacity.unwrap_or(NOMINAL_CAPACITY).max(1) as f64;
        let c = &self.counters;
        let busy = c.busy.load(Ordering::SeqCst) as f64;
        let queued = c.queued.load(Ordering::SeqCst) as f64;
        let antagonist = c.antagonist.load(Ordering::SeqCst) as f64;
        let in_flight = c.in_flight.load(Ordering::SeqCst) as f64;
        let (rps, eps) = lock(&self.rates).rates(Instant::now());
        LoadReport {
            cpu_utilization: ((busy + antagonist) / cap).min(1.0),
            application_utilization: (busy + queued + antagonist) / cap,
            rps_fractional: rps,
            eps,
            ..LoadReport::default()
        }
        .named(IN_FLIGHT_METRIC, in_flight)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let _in_flight = Gauge::up(&self.counters.in_flight, Some(&self.counters.max_in_flight));
        let (parts, body) = req.into_parts();
        let seen = SeenRequest {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |p| p.to_string()),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        };
        if !self.record_headers.is_empty()
            && let Some(id) = seen.headers.iter().find(|(k, _)| k == "x-request-id")
        {
            let kept: Vec<(String, String)> = seen
                .headers
                .iter()
                .filter(|(k, _)| self.record_headers.contains(k))
                .cloned()
                .collect();
            lock(&self.received).insert(id.1.clone(), kept);
        }
        *lock(&self.last) = Some(seen.clone());
        // Drain the request body so the connection can be reused; a broken
        // body just counts as empty.
        let _ = body.collect().await;

        let (error, fail_fast, latency) = {
            let mut k = lock(&self.knobs);
            (k.roll_error(), k.fail_fast, k.latency.sample())
        };

        let _busy = if error && fail_fast {
            None
        } else {
            let permit = match &self.permits {
                Some(sem) => {
                    let _queued = Gauge::up(&self.counters.queued, None);
                    // The semaphore is never closed, so acquire cannot fail.
                    sem.acquire().await.ok()
                }
                None => None,
            };
            let busy = Gauge::up(&self.counters.busy, Some(&self.counters.max_busy));
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            Some((busy, permit))
        };

        lock(&self.rates).record(Instant::now(), error);
        let (orca, source) = {
            let k = lock(&self.knobs);
            (k.orca, k.orca_source.clone())
        };
        let orca_header = match (orca, source) {
            (OrcaFormat::None, _) => None,
            (fmt, OrcaSource::Fixed(r)) => r.header(fmt),
            (fmt, OrcaSource::Measured) => self.measured_report().header(fmt),
        };

        let echo = parts
            .headers
            .get(ECHO_HEADER)
            .is_some_and(|v| v.as_bytes() == b"1");
        let (body, content_type) = if echo {
            let json = serde_json::json!({
                "backend": self.name,
                "method": seen.method,
                "path": seen.path,
                "headers": seen.headers,
            });
            (Bytes::from(json.to_string()), "application/json")
        } else {
            (Bytes::from(format!("{}\n", self.name)), "text/plain")
        };

        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = if error {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let h = resp.headers_mut();
        h.insert(
            HeaderName::from_static(BACKEND_HEADER),
            self.name_value.clone(),
        );
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some((name, value)) = orca_header {
            // Only metric names with characters invalid in headers can fail here.
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(HeaderName::from_static(name), v);
            }
        }

        self.counters.requests.fetch_add(1, Ordering::SeqCst);
        if error {
            self.counters.errors.fetch_add(1, Ordering::SeqCst);
        }
        *lock(&self.by_path)
            .entry(parts.uri.path().to_owned())
            .or_default() += 1;
        resp
    }
}

/// A running backend server on `127.0.0.1`. Stopped by [`Backend::stop`] or
/// on drop (the accept loop and every connection task are aborted).
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The accept loop; `None` while crashed ([`Backend::crash`]).
    task: Option<JoinHandle<()>>,
    antagonist: Option<JoinHandle<()>>,
}

/// Serves `listener` for `shared` until aborted.
fn serve_task(listener: TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    use crate::server::{Protocol, serve};
    let counted = shared.clone();
    let on_accept = move || {
        counted.counters.connections.fetch_add(1, Ordering::SeqCst);
    };
    tokio::spawn(async move {
        if shared.grpc {
            serve(listener, Protocol::Http2, on_accept, move |req| {
                let shared = shared.clone();
                async move { as_grpc(shared.handle(req).await) }
            })
            .await
        } else {
            let protocol = match &shared.tls {
                Some(cfg) => Protocol::Tls(tokio_rustls::TlsAcceptor::from(cfg.clone())),
                None => Protocol::Http1,
            };
            serve(listener, protocol, on_accept, move |req| {
                let shared = shared.clone();
                async move { shared.handle(req).await }
            })
            .await
        }
    })
}

/// The gRPC form of an answer: an empty message; `grpc-status` 0 for a
/// 200, else 14 (UNAVAILABLE); the load report headers move to the
/// trailers (TEXT and JSON reports too, though gRPC servers send BIN).
fn as_grpc(resp: Response<Full<Bytes>>) -> Response<crate::server::GrpcBody> {
    let (parts, _) = resp.into_parts();
    let mut trailers = hyper::HeaderMap::new();
    let status = if parts.status == StatusCode::OK {
        "0"
    } else {
        "14"
    };
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    for name in [ORCA_HEADER, ORCA_BIN_HEADER] {
        if let Some(v) = parts.headers.get(name) {
            trailers.insert(HeaderName::from_static(name), v.clone());
        }
    }
    let mut out = crate::server::grpc_response(Some(&[]), trailers);
    if let Some(v) = parts.headers.get(BACKEND_HEADER) {
        out.headers_mut()
            .insert(HeaderName::from_static(BACKEND_HEADER), v.clone());
    }
    out
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Backend {
    /// Binds `127.0.0.1:0` and starts serving. Must be called inside a tokio
    /// runtime.
    pub async fn start(spec: BackendSpec) -> anyhow::Result<Backend> {
        let name_value = HeaderValue::from_str(&spec.name)
            .with_context(|| format!("backend name {:?} is not a header value", spec.name))?;
        ensure!(spec.capacity != Some(0), "backend capacity must be > 0");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("bind backend listener on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: spec.name,
            grpc: spec.grpc,
            tls: spec.tls.clone(),
            name_value,
            capacity: spec.capacity,
            permits: spec.capacity.map(Semaphore::new),
            knobs: Mutex::new(Knobs {
                latency: spec.latency,
                error_rate: sanitize_rate(spec.error_rate),
                error_pattern: spec.error_pattern,
                fail_fast: spec.fail_fast,
                orca: spec.orca,
                orca_source: spec.orca_source,
                error_acc: 0.0,
            }),
            counters: Counters::default(),
            rates: Mutex::new(RateWindow::new(Instant::now())),
            by_path: Mutex::new(BTreeMap::new()),
            last: Mutex::new(None),
            record_headers: spec
                .record_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            received: Mutex::new(HashMap::new()),
        });
        let task = serve_task(listener, shared.clone());
        Ok(Backend {
            addr,
            shared,
            task: Some(task),
            antagonist: None,
        })
    }

    /// Another endpoint of the same server: a new `127.0.0.1` port whose
    /// requests share this one's slots (one queue), knobs, reports and
    /// counters, as several listeners of one process do. The new port has
    /// its own [`Backend::crash`] and no antagonist of its own.
    pub async fn another_port(&self) -> anyhow::Result<Backend> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("bind backend listener on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        Ok(Backend {
            addr,
            shared: self.shared.clone(),
            task: Some(serve_task(listener, self.shared.clone())),
            antagonist: None,
        })
    }

    /// Crashes the backend: the port closes and every connection drops
    /// (requests in flight get a reset, new ones a refused connection).
    pub async fn crash(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same port after [`Backend::crash`].
    pub async fn recover(&mut self) -> anyhow::Result<()> {
        self.crash().await;
        let mut last = None;
        // The port was ours a moment ago; retry briefly in case the kernel
        // has not released it yet.
        for _ in 0..50 {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => {
                    self.task = Some(serve_task(listener, self.shared.clone()));
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last.map_or_else(|| anyhow::anyhow!("bind failed"), anyhow::Error::from))
            .with_context(|| format!("rebinding {}", self.addr))
    }

    /// An antagonist (another tenant, a GC, a noisy neighbour) takes
    /// `slots` of the capacity from now on, whatever the proxies send: it
    /// waits for them like a request and holds them until the next call.
    /// Reported utilization counts them. No-op without a capacity limit.
    pub fn set_antagonist(&mut self, slots: usize) {
        if let Some(t) = self.antagonist.take() {
            t.abort();
        }
        self.shared.counters.antagonist.store(0, Ordering::SeqCst);
        let slots = slots.min(self.shared.capacity.unwrap_or(0));
        if slots == 0 {
            return;
        }
        let shared = self.shared.clone();
        self.antagonist = Some(tokio::spawn(async move {
            let Some(sem) = &shared.permits else { return };
            let Ok(n) = u32::try_from(slots) else { return };
            // The semaphore is never closed.
            let Ok(_held) = sem.acquire_many(n).await else {
                return;
            };
            shared.counters.antagonist.store(slots, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }));
    }

    /// The bound address (always `127.0.0.1:<port>`).
    /// The recorded request headers ([`BackendSpec::record_headers`]) of
    /// each request, by `x-request-id`.
    pub fn received(&self) -> HashMap<String, Vec<(String, String)>> {
        lock(&self.shared.received).clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn name(&self) -> &str {
        &self.shared.name
    }
    pub fn capacity(&self) -> Option<usize> {
        self.shared.capacity
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> BackendStats {
        let c = &self.shared.counters;
        BackendStats {
            requests: c.requests.load(Ordering::SeqCst),
            errors: c.errors.load(Ordering::SeqCst),
            connections: c.connections.load(Ordering::SeqCst),
            in_flight: c.in_flight.load(Ordering::SeqCst),
            max_in_flight: c.max_in_flight.load(Ordering::SeqCst),
            busy: c.busy.load(Ordering::SeqCst),
            max_busy: c.max_busy.load(Ordering::SeqCst),
            queued: c.queued.load(Ordering::SeqCst),
            by_path: lock(&self.shared.by_path).clone(),
        }
    }

    /// Zeroes the counters and resets the high-water marks to the current
    /// gauges, e.g. between phases of a scenario.
    pub fn reset_stats(&self) {
        let c = &self.shared.counters;
        c.requests.store(0, Ordering::SeqCst);
        c.errors.store(0, Ordering::SeqCst);
        c.connections.store(0, Ordering::SeqCst);
        c.max_in_flight
            .store(c.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
        c.max_busy
            .store(c.busy.load(Ordering::SeqCst), Ordering::SeqCst);
        lock(&self.shared.by_path).clear();
    }

    /// Applies to requests that arrive from now on.
    pub fn set_latency(&self, l: Latency) {
        lock(&self.shared.knobs).latency = l;
    }
    /// Clamped to `[0, 1]`.
    pub fn set_error_rate(&self, r: f64) {
        lock(&self.shared.knobs).error_rate = sanitize_rate(r);
    }
    pub fn set_error_pattern(&self, p: ErrorPattern) {
        lock(&self.shared.knobs).error_pattern = p;
    }
    pub fn set_fail_fast(&self, yes: bool) {
        lock(&self.shared.knobs).fail_fast = yes;
    }
    pub fn set_orca_format(&self, f: OrcaFormat) {
        lock(&self.shared.knobs).orca = f;
    }
    pub fn set_orca_source(&self, s: OrcaSource) {
        lock(&self.shared.knobs).orca_source = s;
    }

    /// A function giving the measured report of this backend at any time
    /// (for probes that outlive a borrow of the backend).
    pub fn report_probe(&self) -> impl Fn() -> LoadReport + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || shared.measured_report()
    }

    /// The load this backend would report right now (fixed or measured).
    pub fn current_report(&self) -> LoadReport {
        match &lock(&self.shared.knobs).orca_source {
            OrcaSource::Fixed(r) => r.clone(),
            OrcaSource::Measured => self.shared.measured_report(),
        }
    }

    /// The most recent request received (what the proxy sent upstream).
    pub fn last_request(&self) -> Option<SeenRequest> {
        lock(&self.shared.last).clone()
    }
    /// Headers of the most recent request received.
    pub fn last_request_headers(&self) -> Option<Vec<(String, String)>> {
        lock(&self.shared.last).as_ref().map(|r| r.headers.clone())
    }

    /// Stops the server and waits until the accept loop is gone; its
    /// connection tasks are aborted with it, closing keep-alive connections.
    pub async fn stop(mut self) {
        self.set_antagonist(0);
        self.crash().await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        for t in [self.task.take(), self.antagonist.take()]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
    }
}

/// Several backends started together, looked up by name.
#[derive(Debug, Default)]
pub struct BackendSet {
    backends: Vec<Backend>,
}

impl BackendSet {
    /// Starts every spec; names must be unique. On error the ones already
    /// started are stopped (dropped).
    pub async fn start_all(specs: impl IntoIterator<Item = BackendSpec>) -> anyhow::Result<Self> {
        let mut backends: Vec<Backend> = Vec::new();
        for spec in specs {
            ensure!(
                backends.iter().all(|b| b.name() != spec.name),
                "duplicate backend name {:?}",
                spec.name
            );
            backends.push(Backend::start(spec).await?);
        }
        Ok(Self { backends })
    }
    pub fn get(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name() == name)
    }
    /// (name, address) of each backend, in start order, e.g. for rendering
    /// an Envoy cluster.
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        self.backends
            .iter()
            .map(|b| (b.name().to_owned(), b.addr()))
            .collect()
    }
    /// Stats of every backend by name.
    pub fn stats(&self) -> BTreeMap<String, BackendStats> {
        self.backends
            .iter()
            .map(|b| (b.name().to_owned(), b.stats()))
            .collect()
    }
    pub async fn stop_all(self) {
        for b in self.backends {
            b.stop().await;
        }
    }
}

impl Deref for BackendSet {
    type Target = [Backend];
    fn deref(&self) -> &[Backend] {
        &self.backends
    }
}

/// `set["a"]`; panics if no backend has that name (like `HashMap`'s `Index`).
impl Index<&str> for BackendSet {
    type Output = Backend;
    fn index(&self, name: &str) -> &Backend {
        match self.get(name) {
            Some(b) => b,
            None => panic!("no backend named {name:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::{self, Load, Traffic};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn full_report() -> LoadReport {
        LoadReport::new()
            .cpu(0.7)
            .mem(0.9)
            .application(0.8)
            .rps(1000.0)
            .eps(2.0)
            .named("foo", 123.0)
            .util("total", 0.5)
    }

    fn header<'a>(resp: &'a traffic::Response, name: &str) -> &'a str {
        resp.header(name)
            .unwrap_or_else(|| panic!("missing header {name}: {:?}", resp.headers))
    }

    #[test]
    fn text_and_json_encoding() {
        let r = full_report();
        assert_eq!(
            r.to_text(),
            "cpu_utilization=0.7,mem_utilization=0.9,application_utilization=0.8,\
             rps_fractional=1000,eps=2,named_metrics.foo=123,utilization.total=0.5"
        );
        let j: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(
            j,
            serde_json::json!({
                "cpuUtilization": 0.7, "memUtilization": 0.9,
                "applicationUtilization": 0.8, "rpsFractional": 1000.0, "eps": 2.0,
                "namedMetrics": {"foo": 123.0}, "utilization": {"total": 0.5}
            })
        );
        // Zeros are omitted except cpu_utilization.
        assert_eq!(LoadReport::new().to_text(), "cpu_utilization=0");
        assert_eq!(LoadReport::new().to_json(), r#"{"cpuUtilization":0.0}"#);
        assert_eq!(
            LoadReport::new().eps(3.0).to_text(),
            "cpu_utilization=0,eps=3"
        );
        // Parsers invert the encoders.
        assert_eq!(LoadReport::parse_text(&r.to_text()).unwrap(), r);
        assert_eq!(LoadReport::parse_json(&r.to_json()).unwrap(), r);
        assert_eq!(LoadReport::from_bin_base64(&r.to_bin_base64()).unwrap(), r);
        assert!(LoadReport::parse_text("bogus=1").is_err());
        assert!(LoadReport::from_header("endpoint-load-metrics", "XML <a/>").is_err());
    }

    #[test]
    fn latency_sampling_and_error_pattern() {
        let l = Latency::uniform_ms(5, 10);
        for _ in 0..1000 {
            let d = l.sample();
            assert!(d >= Duration::from_millis(5) && d <= Duration::from_millis(10));
        }
        assert_eq!(Latency::ms(3).sample(), Duration::from_millis(3));
        let ln = Latency::LogNormal {
            p50: Duration::from_millis(10),
            p99: Duration::from_millis(50),
        };
        let mut draws: Vec<Duration> = (0..20_000).map(|_| ln.sample()).collect();
        draws.sort();
        let (p50, p99) = (draws[10_000], draws[19_800]);
        assert!(
            p50 > Duration::from_millis(9) && p50 < Duration::from_millis(11),
            "{p50:?}"
        );
        assert!(
            p99 > Duration::from_millis(40) && p99 < Duration::from_millis(62),
            "{p99:?}"
        );
        assert!(draws[19_999] <= Duration::from_millis(500));

        let mut k = Knobs {
            latency: Latency::default(),
            error_rate: 0.1,
            error_pattern: ErrorPattern::Even,
            fail_fast: false,
            orca: OrcaFormat::None,
            orca_source: OrcaSource::Measured,
            error_acc: 0.0,
        };
        let errors = (0..1000).filter(|_| k.roll_error()).count();
        assert_eq!(errors, 100);
        k.error_pattern = ErrorPattern::Random;
        k.error_rate = 1.0;
        assert!((0..100).all(|_| k.roll_error()));
        k.error_rate = 0.0;
        assert!((0..100).all(|_| !k.roll_error()));
    }

    #[test]
    fn rate_window() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(t0);
        assert_eq!(w.rates(t0), (0.0, 0.0));
        // 10 requests (2 errors) in every 100 ms bucket for 2 s.
        for b in 0..20u64 {
            for i in 0..10u64 {
                w.record(t0 + BUCKET * b as u32 + Duration::from_millis(i), i < 2);
            }
        }
        let (rps, eps) = w.rates(t0 + Duration::from_millis(2050));
        assert!((rps - 100.0).abs() < 1e-9, "rps {rps}");
        assert!((eps - 20.0).abs() < 1e-9, "eps {eps}");
        // Half a second in: only 5 complete buckets, still the true rate.
        let mut w = RateWindow::new(t0);
        for b in 0..5u64 {
            for i in 0..10u64 {
                w.record(t0 + BUCKET * b as u32 + Duration::from_millis(i), false);
            }
        }
        let (rps, _) = w.rates(t0 + Duration::from_millis(520));
        assert!((rps - 100.0).abs() < 1e-9, "rps {rps}");
        // Long idle: everything ages out.
        assert_eq!(w.rates(t0 + Duration::from_secs(10)), (0.0, 0.0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn orca_formats_round_trip() {
        let report = full_report();
        for fmt in [
            OrcaFormat::Text,
            OrcaFormat::Json,
            OrcaFormat::Bin,
            OrcaFormat::BinHeader,
        ] {
            let b = Backend::start(
                BackendSpec::new("orca")
                    .orca(fmt)
                    .orca_fixed(report.clone()),
            )
            .await
            .unwrap();
            let resp = traffic::get(b.addr(), "svc", "/", &[]).await.unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(header(&resp, BACKEND_HEADER), "orca");
            let (name, value) = if fmt == OrcaFormat::BinHeader {
                assert!(resp.header(ORCA_HEADER).is_none());
                (ORCA_BIN_HEADER, header(&resp, ORCA_BIN_HEADER))
            } else {
                assert!(resp.header(ORCA_BIN_HEADER).is_none());
                (ORCA_HEADER, header(&resp, ORCA_HEADER))
            };
            assert_eq!(LoadReport::from_header(name, value).unwrap(), report);
            match fmt {
                OrcaFormat::Text => {
                    assert_eq!(value, format!("TEXT {}", report.to_text()));
                }
                OrcaFormat::Json => {
                    let j: serde_json::Value =
                        serde_json::from_str(value.strip_prefix("JSON ").unwrap()).unwrap();
                    assert_eq!(j["cpuUtilization"], 0.7);
                    assert_eq!(j["namedMetrics"]["foo"], 123.0);
                }
                OrcaFormat::Bin | OrcaFormat::BinHeader => {
                    let b64 = value.strip_prefix("BIN ").unwrap_or(value);
                    let raw = BASE64.decode(b64).unwrap();
                    let p = OrcaLoadReport::decode(raw.as_slice()).unwrap();
                    assert_eq!(p.cpu_utilization, 0.7);
                    assert_eq!(p.application_utilization, 0.8);
                    assert_eq!(p.rps_fractional, 1000.0);
                    assert_eq!(p.eps, 2.0);
                    assert_eq!(p.named_metrics.get("foo"), Some(&123.0));
                    assert_eq!(p.utilization.get("total"), Some(&0.5));
                }
                OrcaFormat::None => unreachable!(),
            }
            b.stop().await;
        }
        // No ORCA by default.
        let b = Backend::start(BackendSpec::new("plain")).await.unwrap();
        let resp = traffic::get(b.addr(), "svc", "/", &[]).await.unwrap();
        assert!(resp.header(ORCA_HEADER).is_none() && resp.header(ORCA_BIN_HEADER).is_none());
        assert_eq!(&resp.body[..], b"plain\n");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn capacity_queues_requests() {
        let b = Backend::start(BackendSpec::new("cap").capacity(2).latency_ms(100))
            .await
            .unwrap();
        let report = Traffic::new(b.addr(), Load::count(12, 6))
            .run()
            .await
            .unwrap();
        assert_eq!(report.status_count(200), 12);
        let s = b.stats();
        assert_eq!(s.requests, 12);
        assert!(s.max_busy <= 2, "{s:?}");
        assert!(s.max_in_flight > 2, "queueing not visible: {s:?}");
        assert_eq!((s.in_flight, s.busy, s.queued), (0, 0, 0));
        // 12 requests, 2 at a time, 100 ms each: at least 600 ms.
        assert!(report.elapsed >= Duration::from_millis(590), "{report:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_port_shares_the_slots() {
        let b = Backend::start(BackendSpec::new("pool").capacity(2).latency_ms(100))
            .await
            .unwrap();
        let c = b.another_port().await.unwrap();
        assert_ne!(b.addr(), c.addr());
        let (tb, tc) = (
            Traffic::new(b.addr(), Load::count(4, 2)),
            Traffic::new(c.addr(), Load::count(4, 2)),
        );
        let (rb, rc) = tokio::join!(tb.run(), tc.run());
        let (rb, rc) = (rb.unwrap(), rc.unwrap());
        assert_eq!(rb.status_count(200) + rc.status_count(200), 8);
        let s = b.stats();
        // One set of counters and slots: 4 at a time sent, 2 served.
        assert_eq!(s.requests, 8);
        assert!(s.max_busy <= 2 && s.max_in_flight > 2, "{s:?}");
        // 8 requests, 2 at a time, 100 ms each: at least 400 ms for the
        // later of the two ports (apart, each would take 200 ms).
        let longest = rb.elapsed.max(rc.elapsed);
        assert!(longest >= Duration::from_millis(390), "{rb:?} {rc:?}");
        // Its own port: crashing one leaves the other serving.
        let mut c = c;
        c.crash().await;
        let resp = traffic::get(b.addr(), "svc", "/", &[]).await.unwrap();
        assert_eq!(resp.status, 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn injected_errors() {
        let b = Backend::start(
            BackendSpec::new("bad")
                .error_rate(1.0)
                .orca(OrcaFormat::Text),
        )
        .await
        .unwrap();
        let r = Traffic::new(b.addr(), Load::count(50, 4))
            .run()
            .await
            .unwrap();
        assert_eq!(r.status_count(503), 50);
        assert_eq!(r.by_backend.get("bad"), Some(&50));
        assert_eq!(b.stats().errors, 50);
        // Errors still carry the backend name and a load report.
        let resp = traffic::get(b.addr(), "svc", "/", &[]).await.unwrap();
        assert_eq!(resp.status, 503);
        assert_eq!(header(&resp, BACKEND_HEADER), "bad");
        assert!(resp.header(ORCA_HEADER).is_some());

        // A quarter, spread evenly: exact count.
        b.set_error_rate(0.25);
        b.reset_stats();
        let r = Traffic::new(b.addr(), Load::count(200, 4))
            .run()
            .await
            .unwrap();
        assert_eq!(r.status_count(503), 50);
        assert_eq!(r.status_count(200), 150);
        assert_eq!(b.stats().errors, 50);

        // Recover.
        b.set_error_rate(0.0);
        let resp = traffic::get(b.addr(), "svc", "/", &[]).await.unwrap();
        assert_eq!(resp.status, 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fail_fast_skips_capacity_and_latency() {
        let b = Backend::start(
            BackendSpec::new("ff")
                .latency_ms(5_000)
                .capacity(1)
                .error_rate(1.0)
                .fail_fast(true),
        )
        .await
        .unwrap();
        let t = Instant::now();
        let r = Traffic::new(b.addr(), Load::count(10, 5))
            .run()
            .await
            .unwrap();
        assert_eq!(r.status_count(503), 10);
        assert!(t.elapsed() < Duration::from_secs(4));
        assert_eq!(b.stats().max_busy, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn echo_and_last_request() {
        let b = Backend::start(BackendSpec::new("echo")).await.unwrap();
        assert!(b.last_request().is_none());
        let resp = traffic::get(
            b.addr(),
            "example.test",
            "/some/path?q=1",
            &[(ECHO_HEADER, "1"), ("x-custom", "hello")],
        )
        .await
        .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(header(&resp, "content-type"), "application/json");
        let j: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(j["backend"], "echo");
        assert_eq!(j["method"], "GET");
        assert_eq!(j["path"], "/some/path?q=1");
        let headers = j["headers"].as_array().unwrap();
        let has = |k: &str, v: &str| headers.iter().any(|h| h[0] == k && h[1] == v);
        assert!(has("host", "example.test"), "{headers:?}");
        assert!(has("x-custom", "hello"), "{headers:?}");

        let seen = b.last_request().unwrap();
        assert_eq!(seen.path, "/some/path?q=1");
        let hs = b.last_request_headers().unwrap();
        assert!(hs.contains(&("x-custom".to_owned(), "hello".to_owned())));
        assert_eq!(b.stats().by_path.get("/some/path"), Some(&1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_knobs() {
        let b = Backend::start(BackendSpec::new("knobs").orca(OrcaFormat::Text))
            .await
            .unwrap();
        let fixed = LoadReport::new().cpu(0.25).application(0.5);
        b.set_orca_source(OrcaSource::Fixed(fixed.clone()));
        assert_eq!(b.current_report(), fixed);
        let resp = traffic::get(b.addr(), "svc", "/", &[]).await.unwrap();
        assert_eq!(
            LoadReport::from_header(ORCA_HEADER, header(&resp, ORCA_HEADER)).unwrap(),
            fixed
        );

        b.set_orca_format(OrcaFormat::BinHeader);
        let resp = traffic::get(b.addr(), "svc", "/", &[]).await.unwrap();
        assert_eq!(
            LoadReport::from_header(ORCA_BIN_HEADER, header(&resp, ORCA_BIN_HEADER)).unwrap(),
            fixed
        );

        // Slow down: a lower bound only, never flaky.
        b.set_latency(Latency::ms(200));
        let t = Instant::now();
        let resp = traffic::get(b.addr(), "svc", "/", &[]).await.unwrap();
        assert_eq!(resp.status, 200);
        assert!(t.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn measured_load() {
        let b = Backend::start(
            BackendSpec::new("m")
                .capacity(4)
                .latency_ms(5)
                .error_rate(0.5)
                .orca(OrcaFormat::Text),
        )
        .await
        .unwrap();
        let r = Traffic::new(b.addr(), Load::closed_loop(4, Duration::from_millis(1500)))
            .run()
            .await
            .unwrap();
        assert!(r.completed > 0);
        // All traffic is done, so the only busy request is this one: 1/4.
        let resp = traffic::get(b.addr(), "svc", "/", &[]).await.unwrap();
        let rep = LoadReport::from_header(ORCA_HEADER, header(&resp, ORCA_HEADER)).unwrap();
        assert_eq!(rep.cpu_utilization, 0.25, "{rep:?}");
        assert_eq!(rep.application_utilization, 0.25, "{rep:?}");
        assert_eq!(rep.mem_utilization, 0.0);
        assert!(rep.rps_fractional > 0.0, "{rep:?}");
        assert!(rep.eps > 0.0 && rep.eps <= rep.rps_fractional, "{rep:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_closes_keepalive_connections() {
        let b = Backend::start(BackendSpec::new("s")).await.unwrap();
        let mut conn = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.ends_with(b"s\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"));
        b.stop().await;
        // The idle keep-alive connection is closed by the stop.
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("connection left open after stop")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backend_set() {
        let set = BackendSet::start_all([
            BackendSpec::new("a"),
            BackendSpec::new("b").orca(OrcaFormat::Json),
        ])
        .await
        .unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set["b"].name(), "b");
        assert!(set.get("c").is_none());
        let addrs = set.addrs();
        assert_eq!(addrs[0].0, "a");
        assert!(addrs.iter().all(|(_, a)| a.ip().is_loopback()));
        let resp = traffic::get(set["a"].addr(), "svc", "/", &[])
            .await
            .unwrap();
        assert_eq!(resp.body, Bytes::from_static(b"a\n"));
        assert_eq!(set.stats()["a"].requests, 1);
        set.stop_all().await;

        let dup = BackendSet::start_all([BackendSpec::new("x"), BackendSpec::new("x")]).await;
        assert!(dup.is_err());
        assert!(
            Backend::start(BackendSpec::new("zero").capacity(0))
                .await
                .is_err()
        );
        assert!(Backend::start(BackendSpec::new("bad\nname")).await.is_err());
    }
}
