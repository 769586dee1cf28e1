//! The record of one request, built from what Envoy knows at `on_log`.
//!
//! Pure: [`Facts`] is filled by the glue from headers and properties (all
//! values as bytes, since clients can send anything), [`build`] turns it into
//! an ordered list of fields under the configured naming, and
//! [`crate::encode`] writes it as one JSON line.

use crate::config::{Config, Naming, Sampling};
use crate::timefmt;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use std::net::IpAddr;

/// Request header set by the routing filter: the matched Switchyard route.
pub const ROUTE_HEADER: &str = "x-switchyard-route";
/// Request header set by the balancer: the picked endpoint (`ip:port`).
pub const ENDPOINT_HEADER: &str = "x-switchyard-endpoint";
/// Request header set by the rate limiter: `<verdict>[;key=value...]`.
pub const RATELIMIT_HEADER: &str = "x-switchyard-ratelimit";

/// Everything a record is made of, as Envoy reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The final request headers (after every filter), pseudo-headers included.
    pub request_headers: Vec<(String, Vec<u8>)>,
    pub response_headers: Vec<(String, Vec<u8>)>,
    /// `request.time` (ns since the epoch).
    pub start_time_ns: Option<u64>,
    /// `request.duration` (ns).
    pub duration_ns: Option<u64>,
    /// `request.protocol`, e.g. `HTTP/1.1`.
    pub protocol: Option<String>,
    pub response_code: Option<u16>,
    /// `response.flags` bit set.
    pub response_flags: Option<u64>,
    pub response_code_details: Option<String>,
    /// Body bytes (`request.size`, `response.size`).
    pub bytes_received: Option<u64>,
    pub bytes_sent: Option<u64>,
    pub upstream_host: Option<String>,
    pub upstream_cluster: Option<String>,
    pub route_name: Option<String>,
    /// `source.address`: the TCP peer.
    pub downstream_remote_address: Option<String>,
    /// The client, from X-Forwarded-For with the trusted hops (the glue
    /// computes it with `switchyard_sdk::client_addr`).
    pub client_address: Option<IpAddr>,
}

fn first<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Every value of `name`, joined with `, ` (as a proxy would fold them).
fn joined(headers: &[(String, Vec<u8>)], name: &str) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case(name) {
            match &mut out {
                None => out = Some(v.clone()),
                Some(o) => {
                    o.extend_from_slice(b", ");
                    o.extend_from_slice(v);
                }
            }
        }
    }
    out
}

impl Facts {
    pub fn request_header(&self, name: &str) -> Option<&[u8]> {
        first(&self.request_headers, name)
    }

    pub fn response_header(&self, name: &str) -> Option<&[u8]> {
        first(&self.response_headers, name)
    }

    /// The request id: `x-request-id` (Envoy's `request.id` attribute is the
    /// same header).
    pub fn request_id(&self) -> Option<&[u8]> {
        self.request_header("x-request-id")
    }

    /// The rate limiter's verdict (first `;` field of the contract header),
    /// from the request headers or, failing that, the response headers.
    pub fn ratelimit_verdict(&self) -> Option<String> {
        let raw = self
            .request_header(RATELIMIT_HEADER)
            .or_else(|| self.response_header(RATELIMIT_HEADER))?;
        let text = String::from_utf8_lossy(raw);
        Some(
            text.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase(),
        )
    }
}

// ---- sampling ----

/// Envoy's `RL` response flag (rate limited locally).
pub const FLAG_RATE_LIMITED: u64 = 0x800;

/// Why a record was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Status >= 400 or no status at all.
    Error,
    /// 429, Envoy's RL flag, or a Switchyard rate-limit verdict other than `ok`.
    RateLimited,
    /// Chosen by the sampling rate.
    Sampled,
}

/// Whether the record of this request is kept. Errors and rate-limited
/// requests always are (with `keep_errors`; rate-limited ones regardless);
/// the rest by a hash of the request id, so the choice is the same on every
/// worker, every Envoy and in a replay. Without a request id the record is
/// kept: nothing stable to sample on.
pub fn decide(sampling: &Sampling, facts: &Facts) -> Option<Keep> {
    let status = facts.response_code.unwrap_or(0);
    let flags = facts.response_flags.unwrap_or(0);
    let verdict = facts.ratelimit_verdict();
    if status == 429
        || flags & FLAG_RATE_LIMITED != 0
        || verdict
            .as_deref()
            .is_some_and(|v| !v.is_empty() && v != "ok")
    {
        return Some(Keep::RateLimited);
    }
    if sampling.keep_errors && (status == 0 || status >= 400) {
        return Some(Keep::Error);
    }
    if sampling.rate >= 1.0 {
        return Some(Keep::Sampled);
    }
    let Some(id) = facts.request_id() else {
        return Some(Keep::Sampled);
    };
    (unit_hash(id) < sampling.rate).then_some(Keep::Sampled)
}

/// A uniform value in [0, 1) from bytes: FNV-1a, then a SplitMix64 finaliser
/// so that ids differing in one trailing digit spread evenly.
pub fn unit_hash(bytes: &[u8]) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

// ---- response flags ----

/// Envoy's response-flag short names, by bit (`response.flags` is the legacy
/// bit set: bit i = `CoreResponseFlag` i).
const FLAG_NAMES: [&str; 30] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
    "UDO",
];

/// `UH,UF` style, `-` when none (as `%RESPONSE_FLAGS%`).
pub fn response_flags_text(flags: u64) -> String {
    let names: Vec<&str> = FLAG_NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| flags & (1u64 << i) != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

// ---- the record ----

/// Ordered fields of one record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    pub fields: Vec<(String, Value)>,
}

impl Record {
    fn put(&mut self, name: &str, value: Value) {
        self.fields.push((name.to_string(), value));
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.fields.len()))?;
        for (k, v) in &self.fields {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn clip(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    const MARK: &str = "…";
    let mut end = max.saturating_sub(MARK.len());
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(MARK);
    s
}

/// Turns header and property bytes into record text: redaction, UTF-8
/// repair (invalid sequences become U+FFFD), length limit. Control bytes
/// stay; the JSON encoder escapes them.
struct Texts<'a> {
    config: &'a Config,
}

impl Texts<'_> {
    fn redacted(&self, header: &str) -> bool {
        self.config
            .redact
            .iter()
            .any(|r| r.eq_ignore_ascii_case(header))
    }

    fn bytes(&self, b: &[u8]) -> String {
        clip(
            String::from_utf8_lossy(b).into_owned(),
            self.config.max_field_bytes,
        )
    }

    fn string(&self, s: &str) -> Value {
        Value::String(clip(s.to_string(), self.config.max_field_bytes))
    }

    /// A header's value for the record, or the redaction marker.
    fn header(&self, name: &str, value: &[u8]) -> Value {
        if self.redacted(name) {
            Value::String(self.config.redaction.clone())
        } else {
            Value::String(self.bytes(value))
        }
    }

    fn opt_header(&self, name: &str, value: Option<&[u8]>) -> Option<Value> {
        value.map(|v| self.header(name, v))
    }
}

fn num(v: Option<u64>) -> Option<Value> {
    v.map(Value::from)
}

/// Milliseconds, as Envoy's `%DURATION%` (whole ms, rounded down).
fn ms(ns: Option<u64>) -> Option<Value> {
    ns.map(|n| Value::from(n / 1_000_000))
}

/// `host[:port]` split as OTel wants it (`[v6]:port` understood).
fn split_authority(authority: &str) -> (String, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[')
        && let Some(end) = rest.find(']')
    {
        let port = rest[end + 1..]
            .strip_prefix(':')
            .and_then(|p| p.parse().ok());
        return (rest[..end].to_string(), port);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h.to_string(), Some(port)),
            Err(_) => (authority.to_string(), None),
        },
        _ => (authority.to_string(), None),
    }
}

fn split_addr(addr: &str) -> (String, Option<u16>) {
    split_authority(addr)
}

/// Builds the record. Absent values are `null` under Envoy naming (a fixed
/// schema, as Envoy's JSON format) and left out under OTel naming (absent
/// attributes, as the OTel data model).
pub fn build(config: &Config, facts: &Facts) -> Record {
    let t = Texts { config };
    let mut r = Record::default();
    let path = facts
        .request_header("x-envoy-original-path")
        .or_else(|| facts.request_header(":path"));
    let method = t.opt_header(":method", facts.request_header(":method"));
    let status = facts.response_code.map(Value::from);
    let flags = facts
        .response_flags
        .map(|f| Value::String(response_flags_text(f)));
    let upstream_service_time = facts
        .response_header("x-envoy-upstream-service-time")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Value::from);
    let xff = t.opt_header("x-forwarded-for", facts.request_header("x-forwarded-for"));
    let ua = t.opt_header("user-agent", facts.request_header("user-agent"));
    let request_id = t.opt_header("x-request-id", facts.request_id());
    let authority_raw = facts.request_header(":authority");
    let client = facts.client_address.map(|ip| Value::String(ip.to_string()));
    let switchyard = [
        ("route", ROUTE_HEADER),
        ("endpoint", ENDPOINT_HEADER),
        ("ratelimit", RATELIMIT_HEADER),
    ]
    .map(|(short, header)| {
        let v = facts
            .request_header(header)
            .or_else(|| facts.response_header(header));
        (short, t.opt_header(header, v))
    });

    match config.naming {
        Naming::Envoy => {
            let mut put = |name: &str, v: Option<Value>| r.put(name, v.unwrap_or(Value::Null));
            put(
                "start_time",
                facts
                    .start_time_ns
                    .map(|ns| Value::String(timefmt::format_rfc3339_ms(ns))),
            );
            put("method", method);
            put("path", t.opt_header(":path", path));
            put("protocol", facts.protocol.as_deref().map(|p| t.string(p)));
            put("response_code", status);
            put("response_flags", flags);
            put("bytes_received", num(facts.bytes_received));
            put("bytes_sent", num(facts.bytes_sent));
            put("duration", ms(facts.duration_ns));
            put("upstream_service_time", upstream_service_time);
            put("x_forwarded_for", xff);
            put("user_agent", ua);
            put("request_id", request_id);
            put("authority", t.opt_header(":authority", authority_raw));
            put(
                "upstream_host",
                facts.upstream_host.as_deref().map(|s| t.string(s)),
            );
            put(
                "upstream_cluster",
                facts.upstream_cluster.as_deref().map(|s| t.string(s)),
            );
            put(
                "route_name",
                facts.route_name.as_deref().map(|s| t.string(s)),
            );
            put(
                "downstream_remote_address",
                facts
                    .downstream_remote_address
                    .as_deref()
                    .map(|s| t.string(s)),
            );
            put(
                "response_code_details",
                facts.response_code_details.as_deref().map(|s| t.string(s)),
            );
            put("client_address", client);
            for (short, v) in switchyard {
                put(&format!("switchyard_{short}"), v);
            }
            if !config.request_headers.is_empty() {
                let m = selected(&t, &config.request_headers, &facts.request_headers);
                r.put("request_headers", Value::Object(m));
            }
            if !config.response_headers.is_empty() {
                let m = selected(&t, &config.response_headers, &facts.response_headers);
                r.put("response_headers", Value::Object(m));
            }
        }
        Naming::Otel => {
            let mut put = |name: &str, v: Option<Value>| {
                if let Some(v) = v {
                    r.put(name, v);
                }
            };
            put(
                "timestamp",
                facts
                    .start_time_ns
                    .map(|ns| Value::String(timefmt::format_rfc3339_ms(ns))),
            );
            put("http.request.method", method);
            if let Some(p) = path.filter(|_| t.redacted(":path")) {
                put("url.path", Some(t.header(":path", p)));
            } else if let Some(p) = path {
                let p = t.bytes(p);
                let (p, q) = match p.split_once('?') {
                    Some((p, q)) => (p.to_string(), Some(q.to_string())),
                    None => (p, None),
                };
                put("url.path", Some(Value::String(p)));
                put("url.query", q.map(Value::String));
            }
            put(
                "url.scheme",
                t.opt_header(":scheme", facts.request_header(":scheme")),
            );
            if let Some(proto) = facts.protocol.as_deref() {
                let (name, version) = proto.split_once('/').unwrap_or((proto, ""));
                put(
                    "network.protocol.name",
                    Some(t.string(&name.to_ascii_lowercase())),
                );
                if !version.is_empty() {
                    put("network.protocol.version", Some(t.string(version)));
                }
            }
            put("http.response.status_code", status);
            put("envoy.response_flags", flags);
            put("http.request.body.size", num(facts.bytes_received));
            put("http.response.body.size", num(facts.bytes_sent));
            put("envoy.duration_ms", ms(facts.duration_ns));
            put("envoy.upstream_service_time_ms", upstream_service_time);
            put("http.request.header.x-forwarded-for", xff.map(array1));
            put("user_agent.original", ua);
            put("http.request.header.x-request-id", request_id.map(array1));
            if let Some(a) = authority_raw {
                if t.redacted(":authority") {
                    put("server.address", Some(t.header(":authority", a)));
                } else {
                    let (host, port) = split_authority(&t.bytes(a));
                    put("server.address", Some(Value::String(host)));
                    put("server.port", port.map(Value::from));
                }
            }
            put("client.address", client);
            if let Some(peer) = facts.downstream_remote_address.as_deref() {
                let (ip, port) = split_addr(peer);
                put("network.peer.address", Some(t.string(&ip)));
                put("network.peer.port", port.map(Value::from));
            }
            put(
                "envoy.upstream_host",
                facts.upstream_host.as_deref().map(|s| t.string(s)),
            );
            put(
                "envoy.upstream_cluster",
                facts.upstream_cluster.as_deref().map(|s| t.string(s)),
            );
            put(
                "envoy.route_name",
                facts.route_name.as_deref().map(|s| t.string(s)),
            );
            put(
                "envoy.response_code_details",
                facts.response_code_details.as_deref().map(|s| t.string(s)),
            );
            for (short, v) in switchyard {
                put(&format!("switchyard.{short}"), v);
            }
            for name in &config.request_headers {
                if let Some(v) = joined(&facts.request_headers, name) {
                    put(
                        &format!("http.request.header.{name}"),
                        Some(array1(t.header(name, &v))),
                    );
                }
            }
            for name in &config.response_headers {
                if let Some(v) = joined(&facts.response_headers, name) {
                    put(
                        &format!("http.response.header.{name}"),
                        Some(array1(t.header(name, &v))),
                    );
                }
            }
        }
    }
    r
}

/// OTel's header attributes are string arrays.
fn array1(v: Value) -> Value {
    Value::Array(vec![v])
}

fn selected(t: &Texts<'_>, names: &[String], headers: &[(String, Vec<u8>)]) -> Map<String, Value> {
    let mut m = Map::new();
    for name in names {
        if let Some(v) = joined(headers, name) {
            m.insert(name.clone(), t.header(name, &v));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn h(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    fn facts() -> Facts {
        Facts {
            request_headers: h(&[
                (":method", b"GET"),
                (":path", b"/a/b?x=1"),
                (":authority", b"shop.test:8080"),
                (":scheme", b"http"),
                ("x-request-id", b"req-1"),
                ("user-agent", b"curl/8"),
                ("x-forwarded-for", b"1.2.3.4"),
                ("authorization", b"Bearer SECRET"),
                ("cookie", b"a=SECRET"),
                ("x-tenant", b"t1"),
                ("x-switchyard-route", b"checkout"),
                ("x-switchyard-endpoint", b"10.0.0.7:8080"),
            ]),
            response_headers: h(&[
                (":status", b"200"),
                ("x-envoy-upstream-service-time", b"7"),
                ("set-cookie", b"s=SECRET"),
                ("content-type", b"text/plain"),
            ]),
            start_time_ns: Some(1_767_225_600_123_000_000),
            duration_ns: Some(12_500_000),
            protocol: Some("HTTP/1.1".into()),
            response_code: Some(200),
            response_flags: Some(0),
            response_code_details: Some("via_upstream".into()),
            bytes_received: Some(0),
            bytes_sent: Some(42),
            upstream_host: Some("10.0.0.7:8080".into()),
            upstream_cluster: Some("backends".into()),
            route_name: Some("default".into()),
            downstream_remote_address: Some("127.0.0.1:5555".into()),
            client_address: Some("127.0.0.1".parse().unwrap()),
        }
    }

    fn config(json: &str) -> Config {
        switchyard_sdk::config::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn envoy_naming_has_the_default_format_fields() {
        let c = config(
            r#"{"request_headers":["x-tenant","authorization","cookie"],"response_headers":["set-cookie","content-type"]}"#,
        );
        let r = build(&c, &facts());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["start_time"], "2026-01-01T00:00:00.123Z");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a/b?x=1");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["response_code"], 200);
        assert_eq!(v["response_flags"], "-");
        assert_eq!(v["bytes_sent"], 42);
        assert_eq!(v["duration"], 12);
        assert_eq!(v["upstream_service_time"], 7);
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["authority"], "shop.test:8080");
        assert_eq!(v["upstream_cluster"], "backends");
        assert_eq!(v["route_name"], "default");
        assert_eq!(v["client_address"], "127.0.0.1");
        assert_eq!(v["switchyard_route"], "checkout");
        assert_eq!(v["switchyard_endpoint"], "10.0.0.7:8080");
        assert_eq!(v["switchyard_ratelimit"], Value::Null);
        assert_eq!(v["request_headers"]["x-tenant"], "t1");
        assert_eq!(v["request_headers"]["authorization"], "[REDACTED]");
        assert_eq!(v["request_headers"]["cookie"], "[REDACTED]");
        assert_eq!(v["response_headers"]["set-cookie"], "[REDACTED]");
        assert_eq!(v["response_headers"]["content-type"], "text/plain");
        assert!(!serde_json::to_string(&r).unwrap().contains("SECRET"));
        // Fixed order: start_time first, as Envoy's default format.
        assert_eq!(r.fields[0].0, "start_time");
    }

    #[test]
    fn otel_naming_follows_semantic_conventions() {
        let c = config(r#"{"naming":"otel","request_headers":["x-tenant","cookie"]}"#);
        let v = serde_json::to_value(build(&c, &facts())).unwrap();
        assert_eq!(v["http.request.method"], "GET");
        assert_eq!(v["url.path"], "/a/b");
        assert_eq!(v["url.query"], "x=1");
        assert_eq!(v["url.scheme"], "http");
        assert_eq!(v["network.protocol.name"], "http");
        assert_eq!(v["network.protocol.version"], "1.1");
        assert_eq!(v["http.response.status_code"], 200);
        assert_eq!(v["server.address"], "shop.test");
        assert_eq!(v["server.port"], 8080);
        assert_eq!(v["client.address"], "127.0.0.1");
        assert_eq!(v["network.peer.address"], "127.0.0.1");
        assert_eq!(v["network.peer.port"], 5555);
        assert_eq!(v["user_agent.original"], "curl/8");
        assert_eq!(v["http.request.header.x-request-id"][0], "req-1");
        assert_eq!(v["http.request.header.x-tenant"][0], "t1");
        assert_eq!(v["http.request.header.cookie"][0], "[REDACTED]");
        assert_eq!(v["switchyard.route"], "checkout");
        assert!(v.get("switchyard.ratelimit").is_none(), "absent: left out");
    }

    #[test]
    fn redaction_applies_to_standard_fields_too() {
        let c = config(r#"{"redact":["user-agent","x-forwarded-for"]}"#);
        let v = serde_json::to_value(build(&c, &facts())).unwrap();
        assert_eq!(v["user_agent"], "[REDACTED]");
        assert_eq!(v["x_forwarded_for"], "[REDACTED]");
    }

    #[test]
    fn long_values_are_clipped_on_a_char_boundary() {
        let mut f = facts();
        f.request_headers
            .push(("x-long".into(), "é".repeat(100).into_bytes()));
        let c = config(r#"{"max_field_bytes":21,"request_headers":["x-long"]}"#);
        let v = serde_json::to_value(build(&c, &f)).unwrap();
        let s = v["request_headers"]["x-long"].as_str().unwrap();
        assert!(s.len() <= 21, "{s}");
        assert!(s.ends_with('…'));
        assert_eq!(clip("short".into(), 16), "short");
    }

    #[test]
    fn repeated_headers_are_joined() {
        let mut f = facts();
        f.request_headers.push(("x-tenant".into(), b"t2".to_vec()));
        let c = config(r#"{"request_headers":["x-tenant"]}"#);
        let v = serde_json::to_value(build(&c, &f)).unwrap();
        assert_eq!(v["request_headers"]["x-tenant"], "t1, t2");
    }

    #[test]
    fn response_flags_names() {
        assert_eq!(response_flags_text(0), "-");
        assert_eq!(response_flags_text(0x2 | 0x20), "UH,UF");
        assert_eq!(response_flags_text(0x800), "RL");
        assert_eq!(response_flags_text(1 << 18), "DPE");
    }

    #[test]
    fn sampling_keeps_errors_and_rate_limited_and_is_deterministic() {
        let s = Sampling {
            rate: 0.0,
            keep_errors: true,
        };
        let mut f = facts();
        assert_eq!(decide(&s, &f), None);
        f.response_code = Some(503);
        assert_eq!(decide(&s, &f), Some(Keep::Error));
        f.response_code = Some(404);
        assert_eq!(decide(&s, &f), Some(Keep::Error));
        f.response_code = Some(429);
        assert_eq!(decide(&s, &f), Some(Keep::RateLimited));
        f.response_code = Some(200);
        f.request_headers
            .push((RATELIMIT_HEADER.into(), b"over_limit;policy=p1".to_vec()));
        assert_eq!(decide(&s, &f), Some(Keep::RateLimited));
        let mut g = facts();
        g.request_headers
            .push((RATELIMIT_HEADER.into(), b"OK; remaining=3".to_vec()));
        assert_eq!(decide(&s, &g), None);
        g.response_flags = Some(FLAG_RATE_LIMITED);
        assert_eq!(decide(&s, &g), Some(Keep::RateLimited));

        // A 30 % rate keeps about 30 % of ids, the same ones every time.
        let s = Sampling {
            rate: 0.3,
            keep_errors: true,
        };
        let mut kept = 0;
        for i in 0..20_000 {
            let mut f = facts();
            f.request_headers[4].1 = format!("req-{i}").into_bytes();
            let a = decide(&s, &f);
            assert_eq!(a, decide(&s, &f));
            kept += usize::from(a.is_some());
        }
        assert!((5_400..6_600).contains(&kept), "{kept}");
    }

    #[test]
    fn authority_splitting() {
        assert_eq!(split_authority("a.test"), ("a.test".into(), None));
        assert_eq!(split_authority("a.test:81"), ("a.test".into(), Some(81)));
        assert_eq!(split_authority("[::1]:81"), ("::1".into(), Some(81)));
        assert_eq!(split_authority("::1"), ("::1".into(), None));
        assert_eq!(split_authority("a:b"), ("a:b".into(), None));
    }
}
