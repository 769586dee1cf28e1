//! Configuration: JSON in the plugin's `configuration` field.
//!
//! Everything has a default; `{}` logs every request to Envoy's log with
//! Envoy-style field names and the default redaction list. Adding `http`
//! ships records to a collector cluster as well.

use serde::Deserialize;
use switchyard_sdk::config::{ConfigError, Validate, ensure};

/// Field naming of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Naming {
    /// Envoy's JSON access-log names (`start_time`, `response_code`, ...).
    #[default]
    Envoy,
    /// OpenTelemetry HTTP semantic conventions (`http.request.method`, ...).
    Otel,
}

/// Body format of the batches posted to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One JSON record per line (`application/x-ndjson`).
    #[default]
    JsonLines,
    /// OTLP/HTTP JSON `ExportLogsServiceRequest` (`application/json`).
    OtlpJson,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub naming: Naming,
    /// Must be 0 (kept so that older configurations get a clear error): the
    /// client address is Envoy's own (`source.address`; Envoy's
    /// `xff_num_trusted_hops` decides it, see `switchyard_sdk::client_addr`).
    pub trusted_hops: u32,
    /// Request headers copied into the record (lowercase names).
    pub request_headers: Vec<String>,
    /// Response headers copied into the record (lowercase names).
    pub response_headers: Vec<String>,
    /// Headers whose values are never written, whatever else is configured.
    pub redact: Vec<String>,
    /// What a redacted value is replaced with.
    pub redaction: String,
    /// Query parameters whose values are replaced with `redaction` in the
    /// logged path (names matched ASCII case-insensitively): tokens, keys
    /// and passwords clients put in URLs.
    pub redact_query_params: Vec<String>,
    /// Longest string value in a record, in bytes (cut on a character
    /// boundary, `…` appended).
    pub max_field_bytes: usize,
    pub sampling: Sampling,
    pub log: LogSink,
    pub http: Option<HttpSink>,
    pub filter_state: Option<FilterStateSink>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            naming: Naming::Envoy,
            trusted_hops: 0,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            redact: DEFAULT_REDACT.iter().map(|s| s.to_string()).collect(),
            redaction: "[REDACTED]".into(),
            redact_query_params: DEFAULT_REDACT_QUERY.iter().map(|s| s.to_string()).collect(),
            max_field_bytes: 2048,
            sampling: Sampling::default(),
            log: LogSink::default(),
            http: None,
            filter_state: None,
        }
    }
}

/// Redacted unless the configuration says otherwise.
/// Query parameters redacted by default: the names OAuth 2.0 (RFC 6749,
/// RFC 6750 §2.3 `access_token`), API-key schemes and signed URLs use.
pub const DEFAULT_REDACT_QUERY: [&str; 14] = [
    "access_token",
    "id_token",
    "refresh_token",
    "token",
    "code",
    "api_key",
    "apikey",
    "key",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "signature",
    "sig",
];

pub const DEFAULT_REDACT: [&str; 4] = [
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sampling {
    /// Share of ordinary requests kept, 0..=1, decided on the request id so
    /// every Envoy (and a replay) keeps the same requests.
    pub rate: f64,
    /// Keep every request with status >= 400 (or no status) whatever the rate.
    pub keep_errors: bool,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            rate: 1.0,
            keep_errors: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogSink {
    /// One JSON line per record in Envoy's log (info level). Unset: on,
    /// unless `filter_state` is configured ([`Config::log_enabled`]).
    pub enabled: Option<bool>,
}

impl Config {
    /// Whether records go to Envoy's log: `log.enabled`, else on unless
    /// the `filter_state` sink hands them to Envoy's access logs (a second
    /// copy of each record in Envoy's log is rarely wanted, and costs a
    /// log line per request).
    pub fn log_enabled(&self) -> bool {
        self.log.enabled.unwrap_or(self.filter_state.is_none())
    }
}

/// Hands records to Envoy's own access logs as filter state, set in
/// `on_log` (the connection manager's access logs run after the filters'),
/// so Envoy owns the output: buffered file writes, rotation on reopen,
/// gRPC or OpenTelemetry access-log services.
///
/// - `content: "record"` (default): the JSON record as `wasm.<name>`, for a
///   format such as `%FILTER_STATE(wasm.switchyard:PLAIN)%`.
/// - `content: "decisions"` (chain module only): no record (unless `log`
///   or `http` asks for one); each Switchyard decision of the request as
///   its own value, `wasm.<name>.route`, `wasm.<name>.endpoint` and
///   `wasm.<name>.ratelimit` (absent when no stage made it), for an Envoy
///   access-log format that has Envoy's own fields besides. No Envoy
///   attribute is read, no sampling applies (Envoy's access-log filters
///   decide), and redaction is the format's choice of headers.
///
/// With this sink, Envoy's log is off unless `log.enabled` says otherwise.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterStateSink {
    /// Filter-state name without Envoy's `wasm.` prefix: 1–128 bytes of
    /// `A-Za-z0-9._-`.
    pub name: String,
    /// `"record"` (default) or `"decisions"`. A string checked by
    /// `validate` (a derived enum's visitor costs module size, and this
    /// way the error names the field).
    pub content: String,
}

impl FilterStateSink {
    /// Whether only the decisions are handed over (`content: "decisions"`).
    pub fn decisions_only(&self) -> bool {
        self.content == "decisions"
    }
}

impl Default for FilterStateSink {
    fn default() -> Self {
        FilterStateSink {
            name: "switchyard".into(),
            content: "record".into(),
        }
    }
}

impl Validate for FilterStateSink {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(
            matches!(self.content.as_str(), "record" | "decisions"),
            "content",
            "must be `record` or `decisions`",
        )?;
        ensure(
            (1..=128).contains(&self.name.len())
                && self
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')),
            "name",
            "must be 1-128 bytes of A-Za-z0-9._-",
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSink {
    /// Envoy cluster of the collector.
    pub cluster: String,
    pub path: String,
    /// `:authority` of the posts; empty = the cluster name.
    pub authority: String,
    pub format: Format,
    /// A batch is sent when it has this many records ...
    pub batch_max_records: usize,
    /// ... or this many bytes ...
    pub batch_max_bytes: usize,
    /// ... or its oldest record waited this long.
    pub flush_interval_ms: u64,
    pub timeout_ms: u64,
    /// Records held by the sender (waiting + in flight); beyond, new records
    /// are dropped and counted.
    pub buffer_max_records: usize,
    pub buffer_max_bytes: usize,
    /// Attempts per batch before it is dropped (and counted); 0 = retry
    /// until it is delivered (the bounded buffer then does the dropping).
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Tick period of every VM (lease renewal, flush checks).
    pub tick_ms: u64,
    /// Name of the shared queue (scope: the plugin's vm_id).
    pub queue: String,
}

impl Default for HttpSink {
    fn default() -> Self {
        HttpSink {
            cluster: String::new(),
            path: "/v1/logs".into(),
            authority: String::new(),
            format: Format::JsonLines,
            batch_max_records: 500,
            batch_max_bytes: 1 << 20,
            flush_interval_ms: 1000,
            timeout_ms: 5000,
            buffer_max_records: 50_000,
            buffer_max_bytes: 32 << 20,
            max_attempts: 0,
            backoff_initial_ms: 100,
            backoff_max_ms: 5000,
            tick_ms: 100,
            queue: "switchyard.access-log".into(),
        }
    }
}

/// Header names of the Switchyard decisions. A client (or an upstream) can
/// send them, so they are never copied into a record: the decisions are the
/// `switchyard_*` fields, taken from the stages themselves.
pub use switchyard_sdk::stage::DECISION_HEADERS;

fn header_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        || (name.starts_with(':') && name.len() > 1 && header_name_ok(&name[1..]))
}

fn headers_ok(field: &str, names: &[String]) -> Result<(), ConfigError> {
    for (i, name) in names.iter().enumerate() {
        ensure(
            header_name_ok(name),
            &format!("{field}[{i}]"),
            "must be a lowercase header name",
        )?;
    }
    Ok(())
}

/// Selected headers: valid names, and no forgeable copy of a decision.
fn selected_ok(field: &str, names: &[String]) -> Result<(), ConfigError> {
    headers_ok(field, names)?;
    for (i, name) in names.iter().enumerate() {
        ensure(
            !DECISION_HEADERS.contains(&name.as_str()),
            &format!("{field}[{i}]"),
            "is a Switchyard decision header a client can forge; the decision is logged as a switchyard_* field",
        )?;
    }
    Ok(())
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        selected_ok("request_headers", &self.request_headers)?;
        selected_ok("response_headers", &self.response_headers)?;
        headers_ok("redact", &self.redact)?;
        ensure(
            self.max_field_bytes >= 16,
            "max_field_bytes",
            "must be >= 16",
        )?;
        ensure(
            self.redaction.len() <= 64,
            "redaction",
            "must be at most 64 bytes",
        )?;
        ensure(
            self.trusted_hops == 0,
            "trusted_hops",
            switchyard_sdk::client_addr::TRUSTED_HOPS_MOVED,
        )?;
        ensure(
            self.sampling.rate.is_finite() && (0.0..=1.0).contains(&self.sampling.rate),
            "sampling.rate",
            "must be between 0 and 1",
        )?;
        ensure(
            self.log_enabled() || self.http.is_some() || self.filter_state.is_some(),
            "",
            "no sink: enable `log`, or configure `http` or `filter_state`",
        )?;
        if let Some(fs) = &self.filter_state {
            fs.validate().map_err(|e| e.within("filter_state"))?;
        }
        if let Some(http) = &self.http {
            http.validate().map_err(|e| e.within("http"))?;
        }
        Ok(())
    }
}

impl Validate for HttpSink {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(!self.cluster.is_empty(), "cluster", "must not be empty")?;
        ensure(self.path.starts_with('/'), "path", "must start with /")?;
        ensure(
            self.batch_max_records >= 1,
            "batch_max_records",
            "must be >= 1",
        )?;
        ensure(
            self.batch_max_bytes >= 1024,
            "batch_max_bytes",
            "must be >= 1024",
        )?;
        ensure(
            self.buffer_max_records >= self.batch_max_records,
            "buffer_max_records",
            "must be >= batch_max_records",
        )?;
        ensure(
            self.buffer_max_bytes >= self.batch_max_bytes,
            "buffer_max_bytes",
            "must be >= batch_max_bytes",
        )?;
        ensure(
            self.flush_interval_ms >= 1,
            "flush_interval_ms",
            "must be >= 1",
        )?;
        ensure(self.timeout_ms >= 1, "timeout_ms", "must be >= 1")?;
        ensure(
            self.backoff_initial_ms >= 1,
            "backoff_initial_ms",
            "must be >= 1",
        )?;
        ensure(
            self.backoff_max_ms >= self.backoff_initial_ms,
            "backoff_max_ms",
            "must be >= backoff_initial_ms",
        )?;
        ensure(
            (10..=60_000).contains(&self.tick_ms),
            "tick_ms",
            "must be between 10 and 60000",
        )?;
        ensure(!self.queue.is_empty(), "queue", "must not be empty")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::config::parse;

    #[test]
    fn empty_config_logs_with_default_redaction() {
        let c: Config = parse(b"").unwrap();
        assert_eq!(c.naming, Naming::Envoy);
        assert!(c.log_enabled());
        assert!(c.http.is_none());
        for h in DEFAULT_REDACT {
            assert!(c.redact.iter().any(|r| r == h), "{h}");
        }
    }

    #[test]
    fn filter_state_sink_defaults_and_errors_name_the_field() {
        let c: Config = parse(br#"{"log":{"enabled":false},"filter_state":{}}"#).unwrap();
        assert!(!c.log_enabled());
        // With the filter-state sink, Envoy's log is off unless asked for.
        let c: Config = parse(br#"{"filter_state":{}}"#).unwrap();
        assert!(!c.log_enabled());
        let c: Config = parse(br#"{"log":{"enabled":true},"filter_state":{}}"#).unwrap();
        assert!(c.log_enabled());
        let c: Config = parse(br#"{"http":{"cluster":"c"}}"#).unwrap();
        assert!(
            c.log_enabled(),
            "the collector sink keeps the log's default"
        );
        let c: Config = parse(br#"{"log":{"enabled":false},"filter_state":{}}"#).unwrap();
        let fs = c.filter_state.unwrap();
        assert_eq!(fs.name, "switchyard");
        assert!(!fs.decisions_only());
        let c: Config =
            parse(br#"{"filter_state":{"content":"decisions","name":"a.b-c_d"}}"#).unwrap();
        assert!(c.filter_state.unwrap().decisions_only());
        // The filter state alone is a sink.
        assert!(parse::<Config>(br#"{"log":{"enabled":false}}"#).is_err());
        let e = parse::<Config>(br#"{"filter_state":{"content":"all"}}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "filter_state.content: must be `record` or `decisions`"
        );
        for bad in [r#""""#, r#""a b""#, r#""wasm/x""#, r#""é""#] {
            let doc = format!(r#"{{"filter_state":{{"name":{bad}}}}}"#);
            let e = parse::<Config>(doc.as_bytes()).unwrap_err();
            assert_eq!(
                e.to_string(),
                "filter_state.name: must be 1-128 bytes of A-Za-z0-9._-",
                "{bad}"
            );
        }
        let long = format!(r#"{{"filter_state":{{"name":"{}"}}}}"#, "n".repeat(129));
        assert!(parse::<Config>(long.as_bytes()).is_err());
    }

    #[test]
    fn http_sink_defaults_and_errors_name_the_field() {
        let c: Config = parse(br#"{"http":{"cluster":"collector"}}"#).unwrap();
        let h = c.http.unwrap();
        assert_eq!(h.format, Format::JsonLines);
        assert_eq!(h.batch_max_records, 500);
        let e = parse::<Config>(br#"{"http":{}}"#).unwrap_err();
        assert_eq!(e.to_string(), "http.cluster: must not be empty");
        let e = parse::<Config>(
            br#"{"http":{"cluster":"c","batch_max_records":10,"buffer_max_records":5}}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "http.buffer_max_records: must be >= batch_max_records"
        );
        let e = parse::<Config>(br#"{"request_headers":["ok","X-Bad"]}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "request_headers[1]: must be a lowercase header name"
        );
        let e = parse::<Config>(br#"{"sampling":{"rate":1.5}}"#).unwrap_err();
        assert_eq!(e.to_string(), "sampling.rate: must be between 0 and 1");
        let e = parse::<Config>(br#"{"log":{"enabled":false}}"#).unwrap_err();
        assert!(e.to_string().contains("no sink"), "{e}");
        let e = parse::<Config>(br#"{"http":{"cluster":"c","formt":"x"}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `formt`"), "{e}");
        let c: Config =
            parse(br#"{"naming":"otel","http":{"cluster":"c","format":"otlp_json"}}"#).unwrap();
        assert_eq!(c.naming, Naming::Otel);
        assert_eq!(c.http.unwrap().format, Format::OtlpJson);
    }

    #[test]
    fn decision_headers_cannot_be_selected() {
        for field in ["request_headers", "response_headers"] {
            for name in DECISION_HEADERS {
                let json = format!(r#"{{"{field}":["x-ok","{name}"]}}"#);
                let e = parse::<Config>(json.as_bytes()).unwrap_err().to_string();
                assert!(
                    e.starts_with(&format!("{field}[1]: is a Switchyard decision")),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn pseudo_headers_may_be_selected() {
        let c: Config = parse(br#"{"request_headers":[":scheme","x-a_b"]}"#).unwrap();
        assert_eq!(c.request_headers.len(), 2);
        assert!(parse::<Config>(br#"{"request_headers":[":"]}"#).is_err());
    }
}
