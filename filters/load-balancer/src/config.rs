//! Configuration: JSON in the plugin's `configuration` field.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use switchyard_sdk::config::{ConfigError, Validate, ensure, validate_each};

use crate::maglev;

/// How the pick reaches Envoy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `ip:port[,ip:port...]` in a header read by the cluster's
    /// `envoy.load_balancing_policies.override_host` policy; the hosts after
    /// the first serve retries. Keeps Envoy's pools and health checks.
    #[default]
    Endpoint,
    /// One `ip:port` in `x-envoy-original-dst-host` for an ORIGINAL_DST
    /// cluster with `use_http_header`.
    OriginalDst,
    /// A cluster name in a header read by a `cluster_header` route;
    /// endpoint addresses are cluster names.
    Cluster,
}

impl Mode {
    pub fn default_header(self) -> &'static str {
        match self {
            Mode::Endpoint => "x-switchyard-lb-host",
            Mode::OriginalDst => ORIGINAL_DST_HEADER,
            Mode::Cluster => "x-switchyard-lb-cluster",
        }
    }
}

/// Envoy's ORIGINAL_DST request header.
pub const ORIGINAL_DST_HEADER: &str = "x-envoy-original-dst-host";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Per priority level, [`Policy::WeightedRoundRobin`]'s order; while
    /// the latest report this worker has from every endpoint of the level
    /// carried an in-flight count, a pick whose endpoint has no free slot
    /// (see [`crate::prequal::would_queue`]), or no usable report with a
    /// utilization and a known capacity to tell (none younger than
    /// `prequal.max_age_ms` while nothing is in flight there; capacity is
    /// learned from reports with a count above 0), goes by
    /// [`Policy::Prequal`]'s rule
    /// instead, which may pick it again as a typical endpoint: a full one
    /// is probed once its report has aged out. The default: in the quality matrix (BENCHMARKS.md) it
    /// kept A58's steady spread where capacity holds still (Prequal alone
    /// herded three proxies onto the same endpoint) and Prequal's escape
    /// where it moves.
    #[default]
    Auto,
    /// gRFC A58 weights from load reports (configured weights until reports
    /// arrive), earliest-deadline-first.
    WeightedRoundRobin,
    /// Power of two choices on reported utilization plus local in-flight.
    P2c,
    /// Prequal's hot-cold rule on requests in flight (reported and local)
    /// and observed latency ([`crate::prequal`]).
    Prequal,
    /// Maglev on a header, cookie or the client address (sticky).
    ConsistentHash,
    /// Configured weights only, earliest-deadline-first.
    RoundRobin,
    /// Random, in proportion to configured weights.
    Random,
}

impl Policy {
    /// Whether picks may use Prequal's per-worker estimates (in flight,
    /// reported in-flight counts, latency), so they must be kept.
    pub fn uses_estimates(self) -> bool {
        matches!(self, Policy::Prequal | Policy::Auto)
    }

    /// Whether levels carry A58 weights from load reports.
    pub fn uses_report_weights(self) -> bool {
        matches!(self, Policy::WeightedRoundRobin | Policy::Auto)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    #[default]
    Active,
    /// Finishes what it has, gets no new requests.
    Draining,
}

/// How often each worker checks for a newer endpoint table, in ms. A
/// request reads no shared data to pick; this bounds how long a worker may
/// still pick an endpoint another worker just ejected (Envoy's own outlier
/// ejections also reach the workers asynchronously). 50 checks a second
/// per worker cost far less than one read per request.
pub const TABLE_SYNC_MS: u64 = 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub mode: Mode,
    /// Header carrying the pick; empty = the mode's default.
    pub header: String,
    /// Endpoint mode: extra hosts listed after the pick for Envoy's retries.
    pub retry_hosts: u32,
    pub policy: Policy,
    pub weighted_round_robin: WrrConfig,
    pub p2c: P2cConfig,
    pub prequal: PrequalConfig,
    pub hash: HashConfig,
    /// Envoy's priority overprovisioning factor.
    pub overprovisioning_factor: f64,
    pub passive_health: HealthConfig,
    pub endpoints: Vec<EndpointConfig>,
    pub discovery: Option<DiscoveryConfig>,
    /// Upper bound on endpoints (shared-data keys are per endpoint slot).
    pub max_endpoints: u32,
    /// Remove the ORCA headers from responses before the client sees them.
    pub strip_load_reports: bool,
    /// Larger report headers are rejected unparsed.
    pub max_report_bytes: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Endpoint,
            header: String::new(),
            retry_hosts: 2,
            policy: Policy::Auto,
            weighted_round_robin: WrrConfig::default(),
            p2c: P2cConfig::default(),
            prequal: PrequalConfig::default(),
            hash: HashConfig::default(),
            overprovisioning_factor: 1.4,
            passive_health: HealthConfig::default(),
            endpoints: Vec::new(),
            discovery: None,
            max_endpoints: 64,
            strip_load_reports: true,
            max_report_bytes: 4096,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WrrConfig {
    pub blackout_period_ms: u64,
    pub weight_expiration_period_ms: u64,
    pub weight_update_period_ms: u64,
    pub error_utilization_penalty: f64,
    /// Named metrics used as utilization when application_utilization is 0.
    pub utilization_metrics: Vec<String>,
    pub min_weight_ratio: f64,
    pub max_weight_ratio: f64,
}

impl Default for WrrConfig {
    fn default() -> Self {
        WrrConfig {
            blackout_period_ms: 10_000,
            weight_expiration_period_ms: 180_000,
            weight_update_period_ms: 1_000,
            error_utilization_penalty: 1.0,
            utilization_metrics: Vec::new(),
            min_weight_ratio: 0.01,
            max_weight_ratio: 10.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct P2cConfig {
    /// Score = (utilization + in_flight × in_flight_cost) / weight.
    pub in_flight_cost: f64,
}

impl Default for P2cConfig {
    fn default() -> Self {
        P2cConfig {
            in_flight_cost: 0.1,
        }
    }
}

/// The `prequal` policy ([`crate::prequal`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrequalConfig {
    /// Endpoints sampled per pick (Prequal's probes); all when fewer.
    pub choices: u32,
    /// An endpoint whose load estimate is above this quantile of its
    /// level's estimates is hot (Prequal's `Q_RIF`), in `[0, 1]`.
    pub hot_quantile: f64,
    /// The ORCA named metric (`named_metrics.<name>`) in which backends
    /// report their requests in flight.
    pub in_flight_metric: String,
    /// Reports and latency samples older than this are not used, ms.
    pub max_age_ms: u64,
}

impl Default for PrequalConfig {
    fn default() -> Self {
        PrequalConfig {
            choices: 2,
            hot_quantile: 0.8,
            in_flight_metric: "in_flight".into(),
            max_age_ms: 1000,
        }
    }
}

impl Validate for PrequalConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(self.choices >= 1, "choices", "must be >= 1")?;
        ensure(
            self.hot_quantile.is_finite() && (0.0..=1.0).contains(&self.hot_quantile),
            "hot_quantile",
            "must be in [0, 1]",
        )?;
        ensure(
            !self.in_flight_metric.is_empty(),
            "in_flight_metric",
            "must not be empty",
        )?;
        ensure(self.max_age_ms >= 1, "max_age_ms", "must be >= 1")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HashConfig {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub client_address: bool,
    /// Must be 0 (kept so that older configurations get a clear error): the
    /// client address is Envoy's own (`source.address`; Envoy's
    /// `xff_num_trusted_hops` decides it, see `switchyard_sdk::client_addr`).
    pub trusted_hops: u32,
    /// Maglev table size (prime).
    pub table_size: u32,
}

impl Default for HashConfig {
    fn default() -> Self {
        HashConfig {
            header: None,
            cookie: None,
            client_address: false,
            trusted_hops: 0,
            table_size: maglev::DEFAULT_TABLE_SIZE,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub enabled: bool,
    /// Consecutive 5xx / connect failures that eject.
    pub consecutive_failures: u32,
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    pub max_ejected_percent: u32,
    /// Observed failures override self-reported load (`crate::observed`).
    pub success_rate: SuccessRateConfig,
}

/// The observed-failure rule of [`crate::observed`], per worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SuccessRateConfig {
    /// An endpoint's latest answers are forgotten after this long without
    /// any, ms (0: off).
    pub window_ms: u64,
    /// Latest answers (at most `observed::DEPTH`, 64) an endpoint needs
    /// before it is judged.
    pub request_volume: u32,
    /// How much worse than the level's best failure fraction (0..1) an
    /// endpoint may be before it is penalised.
    pub margin: f64,
}

impl Default for SuccessRateConfig {
    fn default() -> Self {
        SuccessRateConfig {
            window_ms: 10_000,
            request_volume: 20,
            margin: 0.1,
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            consecutive_failures: 3,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejected_percent: 50,
            success_rate: SuccessRateConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointConfig {
    /// `ip:port` (cluster mode: an Envoy cluster name).
    pub address: String,
    /// Used in metric names; default derived from the address.
    pub name: Option<String>,
    pub weight: u32,
    pub priority: u32,
    pub zone: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub state: State,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            address: String::new(),
            name: None,
            weight: 1,
            priority: 0,
            zone: None,
            labels: BTreeMap::new(),
            state: State::Active,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Envoy cluster serving the endpoint list.
    pub cluster: String,
    pub path: String,
    /// `:authority`; default = the cluster name.
    pub authority: Option<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            cluster: String::new(),
            path: "/endpoints".into(),
            authority: None,
            interval_ms: 5_000,
            timeout_ms: 2_000,
        }
    }
}

pub const MAX_WEIGHT: u32 = 10_000;
pub const MAX_PRIORITY: u32 = 7;
pub const MAX_RETRY_HOSTS: u32 = 8;
const MAX_ENDPOINTS: u32 = 1024;
const MAX_TABLE_SIZE: u32 = 1_048_573;

fn header_name_ok(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Metric-name-safe: letters, digits, `_` and `-`.
pub fn name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `address` can name an endpoint in `mode`.
pub fn address_ok(mode: Mode, address: &str) -> bool {
    match mode {
        Mode::Endpoint | Mode::OriginalDst => address.parse::<SocketAddr>().is_ok(),
        // A cluster name: one header value, no list separators.
        Mode::Cluster => {
            !address.is_empty()
                && address.len() <= 200
                && address.bytes().all(|b| b.is_ascii_graphic() && b != b',')
        }
    }
}

impl Config {
    pub fn header(&self) -> &str {
        if self.header.is_empty() {
            self.mode.default_header()
        } else {
            &self.header
        }
    }

    /// How often every VM ticks (each periodic job is due on some ticks).
    /// The stage's tick: the re-sync of each worker's table copy (one
    /// 8-byte shared-data read), so ejections, new weights and discovered
    /// endpoints reach every worker within [`TABLE_SYNC_MS`]; the weight
    /// and discovery jobs check on the same tick whether they are due.
    pub fn tick_ms(&self) -> u64 {
        TABLE_SYNC_MS
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(
            self.header.is_empty() || header_name_ok(&self.header),
            "header",
            "must be a lowercase header name",
        )?;
        ensure(
            self.retry_hosts <= MAX_RETRY_HOSTS,
            "retry_hosts",
            "must be <= 8",
        )?;
        ensure(
            self.overprovisioning_factor.is_finite()
                && (1.0..=10.0).contains(&self.overprovisioning_factor),
            "overprovisioning_factor",
            "must be in [1, 10]",
        )?;
        ensure(
            (1..=MAX_ENDPOINTS).contains(&self.max_endpoints),
            "max_endpoints",
            "must be in [1, 1024]",
        )?;
        ensure(
            (64..=1 << 20).contains(&self.max_report_bytes),
            "max_report_bytes",
            "must be in [64, 1048576]",
        )?;
        ensure(
            !self.endpoints.is_empty() || self.discovery.is_some(),
            "endpoints",
            "give endpoints, a discovery source, or both",
        )?;
        ensure(
            self.endpoints.len() <= self.max_endpoints as usize,
            "endpoints",
            "more endpoints than max_endpoints",
        )?;
        validate_each("endpoints", &self.endpoints)?;
        for (i, e) in self.endpoints.iter().enumerate() {
            ensure(
                address_ok(self.mode, &e.address),
                &format!("endpoints[{i}].address"),
                match self.mode {
                    Mode::Cluster => "must be a cluster name",
                    _ => "must be ip:port",
                },
            )?;
            let dup = self.endpoints[..i].iter().any(|o| o.address == e.address);
            ensure(
                !dup,
                &format!("endpoints[{i}].address"),
                "duplicate address",
            )?;
        }
        self.weighted_round_robin
            .validate()
            .map_err(|e| e.within("weighted_round_robin"))?;
        self.p2c.validate().map_err(|e| e.within("p2c"))?;
        self.prequal.validate().map_err(|e| e.within("prequal"))?;
        self.passive_health
            .validate()
            .map_err(|e| e.within("passive_health"))?;
        if let Some(d) = &self.discovery {
            d.validate().map_err(|e| e.within("discovery"))?;
        }
        self.hash.validate().map_err(|e| e.within("hash"))?;
        if self.policy == Policy::ConsistentHash {
            let sources = usize::from(self.hash.header.is_some())
                + usize::from(self.hash.cookie.is_some())
                + usize::from(self.hash.client_address);
            ensure(
                sources == 1,
                "hash",
                "consistent_hash needs exactly one of header, cookie, client_address",
            )?;
            ensure(
                self.hash.table_size > self.max_endpoints,
                "hash.table_size",
                "must be larger than max_endpoints",
            )?;
        }
        Ok(())
    }
}

impl Validate for WrrConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(
            self.weight_update_period_ms >= 50,
            "weight_update_period_ms",
            "must be >= 50",
        )?;
        ensure(
            self.weight_expiration_period_ms >= self.weight_update_period_ms,
            "weight_expiration_period_ms",
            "must be >= weight_update_period_ms",
        )?;
        ensure(
            self.error_utilization_penalty.is_finite() && self.error_utilization_penalty >= 0.0,
            "error_utilization_penalty",
            "must be a finite number >= 0",
        )?;
        ensure(
            self.min_weight_ratio.is_finite()
                && self.min_weight_ratio > 0.0
                && self.min_weight_ratio <= 1.0,
            "min_weight_ratio",
            "must be in (0, 1]",
        )?;
        ensure(
            self.max_weight_ratio.is_finite() && self.max_weight_ratio >= 1.0,
            "max_weight_ratio",
            "must be a finite number >= 1",
        )?;
        for (i, m) in self.utilization_metrics.iter().enumerate() {
            ensure(
                !m.is_empty(),
                &format!("utilization_metrics[{i}]"),
                "must not be empty",
            )?;
        }
        Ok(())
    }
}

impl Validate for P2cConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(
            self.in_flight_cost.is_finite() && self.in_flight_cost >= 0.0,
            "in_flight_cost",
            "must be a finite number >= 0",
        )
    }
}

impl Validate for HashConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(h) = &self.header {
            ensure(
                header_name_ok(h),
                "header",
                "must be a lowercase header name",
            )?;
        }
        if let Some(c) = &self.cookie {
            ensure(
                !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'=' && b != b';'),
                "cookie",
                "must be a cookie name",
            )?;
        }
        ensure(
            self.trusted_hops == 0,
            "trusted_hops",
            switchyard_sdk::client_addr::TRUSTED_HOPS_MOVED,
        )?;
        ensure(
            self.table_size <= MAX_TABLE_SIZE && maglev::is_prime(self.table_size),
            "table_size",
            "must be a prime <= 1048573",
        )
    }
}

impl Validate for HealthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(
            self.consecutive_failures >= 1,
            "consecutive_failures",
            "must be >= 1",
        )?;
        ensure(
            self.base_ejection_ms >= 1,
            "base_ejection_ms",
            "must be >= 1",
        )?;
        ensure(
            self.max_ejection_ms >= self.base_ejection_ms,
            "max_ejection_ms",
            "must be >= base_ejection_ms",
        )?;
        ensure(
            self.max_ejected_percent <= 100,
            "max_ejected_percent",
            "must be <= 100",
        )?;
        let s = &self.success_rate;
        ensure(
            s.window_ms == 0 || (100..=3_600_000).contains(&s.window_ms),
            "success_rate.window_ms",
            "must be 0 (off) or between 100 and 3600000",
        )?;
        ensure(
            (1..=crate::observed::DEPTH).contains(&s.request_volume),
            "success_rate.request_volume",
            "must be between 1 and 64",
        )?;
        ensure(
            s.margin.is_finite() && (0.0..1.0).contains(&s.margin),
            "success_rate.margin",
            "must be in [0, 1)",
        )
    }
}

impl Validate for EndpointConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(
            (1..=MAX_WEIGHT).contains(&self.weight),
            "weight",
            "must be in [1, 10000]",
        )?;
        ensure(self.priority <= MAX_PRIORITY, "priority", "must be <= 7")?;
        if let Some(n) = &self.name {
            ensure(
                name_ok(n),
                "name",
                "must be 1-64 letters, digits, '_' or '-'",
            )?;
        }
        Ok(())
    }
}

impl Validate for DiscoveryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(!self.cluster.is_empty(), "cluster", "must not be empty")?;
        ensure(self.path.starts_with('/'), "path", "must start with '/'")?;
        ensure(self.interval_ms >= 100, "interval_ms", "must be >= 100")?;
        ensure(
            (10..=60_000).contains(&self.timeout_ms),
            "timeout_ms",
            "must be in [10, 60000]",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::config::parse;

    fn err(doc: &str) -> String {
        parse::<Config>(doc.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_and_defaults() {
        let c: Config = parse(br#"{"endpoints":[{"address":"127.0.0.1:8080"}]}"#).unwrap();
        assert_eq!(c.mode, Mode::Endpoint);
        assert_eq!(c.header(), "x-switchyard-lb-host");
        assert_eq!(c.policy, Policy::Auto);
        assert_eq!(c.endpoints[0].weight, 1);
        assert_eq!(c.weighted_round_robin.blackout_period_ms, 10_000);
        assert_eq!(c.tick_ms(), TABLE_SYNC_MS);
        assert!(c.strip_load_reports);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            err("{}"),
            "endpoints: give endpoints, a discovery source, or both"
        );
        assert_eq!(
            err(r#"{"endpoints":[{"address":"nope"}]}"#),
            "endpoints[0].address: must be ip:port"
        );
        assert_eq!(
            err(r#"{"endpoints":[{"address":"127.0.0.1:1","weight":0}]}"#),
            "endpoints[0].weight: must be in [1, 10000]"
        );
        assert_eq!(
            err(r#"{"endpoints":[{"address":"127.0.0.1:1"},{"address":"127.0.0.1:1"}]}"#),
            "endpoints[1].address: duplicate address"
        );
        assert!(err(r#"{"endpoints":[],"polcy":"p2c"}"#).contains("unknown field `polcy`"));
        assert_eq!(
            err(r#"{"endpoints":[{"address":"127.0.0.1:1"}],"prequal":{"hot_quantile":1.5}}"#),
            "prequal.hot_quantile: must be in [0, 1]"
        );
        assert_eq!(
            err(r#"{"endpoints":[{"address":"127.0.0.1:1"}],"prequal":{"choices":0}}"#),
            "prequal.choices: must be >= 1"
        );
        assert_eq!(
            err(r#"{"discovery":{"cluster":""}}"#),
            "discovery.cluster: must not be empty"
        );
        assert_eq!(
            err(r#"{"endpoints":[{"address":"127.0.0.1:1"}],"policy":"consistent_hash"}"#),
            "hash: consistent_hash needs exactly one of header, cookie, client_address"
        );
        assert_eq!(
            err(r#"{"endpoints":[{"address":"127.0.0.1:1"}],"hash":{"table_size":65536}}"#),
            "hash.table_size: must be a prime <= 1048573"
        );
        assert_eq!(
            err(
                r#"{"endpoints":[{"address":"127.0.0.1:1"}],"weighted_round_robin":{"weight_update_period_ms":1}}"#
            ),
            "weighted_round_robin.weight_update_period_ms: must be >= 50"
        );
    }

    #[test]
    fn cluster_mode_takes_cluster_names() {
        let c: Config = parse(
            br#"{"mode":"cluster","endpoints":[{"address":"backend-a"},{"address":"backend-b","priority":1}]}"#,
        )
        .unwrap();
        assert_eq!(c.header(), "x-switchyard-lb-cluster");
        assert_eq!(
            err(r#"{"mode":"cluster","endpoints":[{"address":"a,b"}]}"#),
            "endpoints[0].address: must be a cluster name"
        );
    }
}
