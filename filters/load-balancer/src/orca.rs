//! ORCA per-request load reports, in every form Envoy accepts.
//!
//! - `endpoint-load-metrics: TEXT cpu_utilization=0.7,named_metrics.foo=1`
//! - `endpoint-load-metrics: JSON {"cpuUtilization":0.7}` (proto3 JSON of
//!   `xds.data.orca.v3.OrcaLoadReport`; original field names also accepted)
//! - `endpoint-load-metrics: BIN <base64>` and `endpoint-load-metrics-bin:
//!   <base64>` (padded or unpadded base64), decoded with prost.
//!
//! One header map (response headers or trailers) carries at most one report:
//! a header with more than one value, or both headers whose reports differ
//! (or either of which is invalid), is rejected as
//! [`Reason::DuplicateHeader`]; no copy "wins" over another ([`parse_report`]).
//!
//! A report is rejected as a whole, with a [`Reason`], for what Envoy rejects
//! (unknown keys, duplicates, NaN, infinities, bad base64 or protobuf) plus
//! negative values (meaningless for load) and values larger than the
//! configured size limit (checked before any parsing).

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use prost::Message as _;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use switchyard_proto::orca::OrcaLoadReport;

/// The report header with a format prefix.
pub const HEADER: &str = "endpoint-load-metrics";
/// The legacy gRPC header: bare base64 of the serialized report.
pub const BIN_HEADER: &str = "endpoint-load-metrics-bin";

/// The values of one report that load balancing uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    pub cpu_utilization: f64,
    pub mem_utilization: f64,
    pub application_utilization: f64,
    pub rps_fractional: f64,
    pub eps: f64,
    pub named_metrics: BTreeMap<String, f64>,
    pub utilization: BTreeMap<String, f64>,
    pub request_cost: BTreeMap<String, f64>,
}

impl LoadReport {
    /// The utilization A58 divides by: `application_utilization` when > 0,
    /// else the largest of the configured named metrics, else
    /// `cpu_utilization` (Envoy's client_side_weighted_round_robin order).
    pub fn utilization_for(&self, named: &[String]) -> f64 {
        if self.application_utilization > 0.0 {
            return self.application_utilization;
        }
        let from_named = named
            .iter()
            .filter_map(|n| self.named_metrics.get(n))
            .copied()
            .fold(0.0_f64, f64::max);
        if from_named > 0.0 {
            from_named
        } else {
            self.cpu_utilization
        }
    }

    // `rps` is deprecated in the proto but older backends still send it.
    #[allow(deprecated)]
    fn from_proto(p: OrcaLoadReport) -> Result<Self, Rejected> {
        let r = LoadReport {
            cpu_utilization: p.cpu_utilization,
            mem_utilization: p.mem_utilization,
            application_utilization: p.application_utilization,
            // The deprecated integer rps only counts when the fractional one is absent.
            rps_fractional: if p.rps_fractional == 0.0 {
                p.rps as f64
            } else {
                p.rps_fractional
            },
            eps: p.eps,
            named_metrics: p.named_metrics,
            utilization: p.utilization,
            request_cost: p.request_cost,
        };
        r.check_values()?;
        Ok(r)
    }

    /// Every value finite and non-negative.
    fn check_values(&self) -> Result<(), Rejected> {
        let scalars = [
            ("cpu_utilization", self.cpu_utilization),
            ("mem_utilization", self.mem_utilization),
            ("application_utilization", self.application_utilization),
            ("rps_fractional", self.rps_fractional),
            ("eps", self.eps),
        ];
        for (k, v) in scalars {
            check_value(k, v)?;
        }
        for (prefix, map) in [
            ("named_metrics.", &self.named_metrics),
            ("utilization.", &self.utilization),
            ("request_cost.", &self.request_cost),
        ] {
            for (k, v) in map {
                if k.is_empty() {
                    return Err(Rejected::new(Reason::Syntax, format!("empty {prefix} key")));
                }
                check_value(k, *v)?;
            }
        }
        Ok(())
    }
}

/// Why a report was rejected; `as_str` names a metric suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Larger than the configured limit.
    Oversized,
    /// No `TEXT `, `JSON ` or `BIN ` prefix.
    UnknownFormat,
    /// Malformed text, JSON or a number that does not parse.
    Syntax,
    UnknownKey,
    Duplicate,
    NaN,
    Infinite,
    Negative,
    BadBase64,
    BadProtobuf,
    /// More than one report in one header map: a repeated header, or both
    /// forms with reports that differ.
    DuplicateHeader,
}

impl Reason {
    /// Every reason, for defining one metric each.
    pub const ALL: [Reason; 11] = [
        Reason::Oversized,
        Reason::UnknownFormat,
        Reason::Syntax,
        Reason::UnknownKey,
        Reason::Duplicate,
        Reason::NaN,
        Reason::Infinite,
        Reason::Negative,
        Reason::BadBase64,
        Reason::BadProtobuf,
        Reason::DuplicateHeader,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Oversized => "oversized",
            Reason::UnknownFormat => "unknown_format",
            Reason::Syntax => "syntax",
            Reason::UnknownKey => "unknown_key",
            Reason::Duplicate => "duplicate",
            Reason::NaN => "nan",
            Reason::Infinite => "infinite",
            Reason::Negative => "negative",
            Reason::BadBase64 => "bad_base64",
            Reason::BadProtobuf => "bad_protobuf",
            Reason::DuplicateHeader => "duplicate_header",
        }
    }
}

/// A rejected report: the reason (counted) and a detail (logged at debug).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: Reason,
    pub detail: String,
}

impl Rejected {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejected {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

fn check_value(key: &str, v: f64) -> Result<(), Rejected> {
    if v.is_nan() {
        Err(Rejected::new(Reason::NaN, format!("{key} is NaN")))
    } else if v.is_infinite() {
        Err(Rejected::new(
            Reason::Infinite,
            format!("{key} is infinite"),
        ))
    } else if v < 0.0 {
        Err(Rejected::new(
            Reason::Negative,
            format!("{key} is negative"),
        ))
    } else {
        Ok(())
    }
}

/// The report in one header map, from every value of
/// `endpoint-load-metrics-bin` (`bin`) and of `endpoint-load-metrics`
/// (`prefixed`); `None` when neither header is there.
///
/// Duplicates are malformed, never "first wins" (a proxy or a backend bug
/// could otherwise steer the weights with whichever copy comes first): more
/// than one value of either header is rejected, and so are both headers
/// unless both parse to the same report.
pub fn parse_report(
    bin: &[&[u8]],
    prefixed: &[&[u8]],
    max_bytes: usize,
) -> Option<Result<LoadReport, Rejected>> {
    match (bin, prefixed) {
        ([], []) => None,
        ([b], []) => Some(parse_bin_header(b, max_bytes)),
        ([], [p]) => Some(parse_header(p, max_bytes)),
        ([b], [p]) => Some(
            match (parse_bin_header(b, max_bytes), parse_header(p, max_bytes)) {
                (Ok(x), Ok(y)) if x == y => Ok(x),
                _ => Err(Rejected::new(
                    Reason::DuplicateHeader,
                    format!("{BIN_HEADER} and {HEADER} disagree"),
                )),
            },
        ),
        _ => Some(Err(Rejected::new(
            Reason::DuplicateHeader,
            format!(
                "{} values of {BIN_HEADER}, {} of {HEADER}",
                bin.len(),
                prefixed.len()
            ),
        ))),
    }
}

/// `endpoint-load-metrics`: `TEXT ...`, `JSON ...` or `BIN ...`.
pub fn parse_header(value: &[u8], max_bytes: usize) -> Result<LoadReport, Rejected> {
    let value = checked_str(value, max_bytes)?;
    if let Some(body) = value.strip_prefix("TEXT ") {
        parse_text(body)
    } else if let Some(body) = value.strip_prefix("JSON ") {
        parse_json(body)
    } else if let Some(body) = value.strip_prefix("BIN ") {
        decode_bin(body)
    } else {
        let prefix: String = value.chars().take(5).take_while(|c| *c != ' ').collect();
        Err(Rejected::new(
            Reason::UnknownFormat,
            format!("unsupported format {prefix:?}"),
        ))
    }
}

/// `endpoint-load-metrics-bin`: bare base64.
pub fn parse_bin_header(value: &[u8], max_bytes: usize) -> Result<LoadReport, Rejected> {
    decode_bin(checked_str(value, max_bytes)?)
}

fn checked_str(value: &[u8], max_bytes: usize) -> Result<&str, Rejected> {
    if value.len() > max_bytes {
        return Err(Rejected::new(
            Reason::Oversized,
            format!("{} bytes > limit {max_bytes}", value.len()),
        ));
    }
    std::str::from_utf8(value).map_err(|_| Rejected::new(Reason::Syntax, "not UTF-8"))
}

/// Standard alphabet; padding optional (grpc-go sends it unpadded).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Base64 of a serialized `OrcaLoadReport`.
pub fn decode_bin(b64: &str) -> Result<LoadReport, Rejected> {
    let b64 = b64.trim();
    if b64.is_empty() {
        return Err(Rejected::new(Reason::BadBase64, "empty value"));
    }
    let raw = BASE64
        .decode(b64)
        .map_err(|e| Rejected::new(Reason::BadBase64, e.to_string()))?;
    if raw.is_empty() {
        // Envoy treats an empty decoding as a failure.
        return Err(Rejected::new(Reason::BadBase64, "decodes to nothing"));
    }
    let proto = OrcaLoadReport::decode(raw.as_slice())
        .map_err(|e| Rejected::new(Reason::BadProtobuf, e.to_string()))?;
    LoadReport::from_proto(proto)
}

/// `key=value` pairs separated by commas (`:` also accepted as the
/// separator, as older Envoy versions used). Map fields are flattened as
/// `named_metrics.<k>`, `utilization.<k>`, `request_cost.<k>`.
pub fn parse_text(body: &str) -> Result<LoadReport, Rejected> {
    let mut r = LoadReport::default();
    let mut seen: Vec<&str> = Vec::new();
    for item in body.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some(at) = item.find(['=', ':']) else {
            return Err(Rejected::new(Reason::Syntax, format!("no '=' in {item:?}")));
        };
        let (key, value) = (item[..at].trim(), item[at + 1..].trim());
        if key.is_empty() || value.is_empty() {
            return Err(Rejected::new(
                Reason::Syntax,
                format!("empty key or value in {item:?}"),
            ));
        }
        if seen.contains(&key) {
            return Err(Rejected::new(
                Reason::Duplicate,
                format!("duplicate metric {key}"),
            ));
        }
        seen.push(key);
        let v: f64 = value
            .parse()
            .map_err(|_| Rejected::new(Reason::Syntax, format!("bad number in {item:?}")))?;
        check_value(key, v)?;
        set_field(&mut r, key, v)?;
    }
    Ok(r)
}

/// Stores a flattened (TEXT-style) key.
fn set_field(r: &mut LoadReport, key: &str, v: f64) -> Result<(), Rejected> {
    let maps: [(&str, &mut BTreeMap<String, f64>); 3] = [
        ("named_metrics.", &mut r.named_metrics),
        ("utilization.", &mut r.utilization),
        ("request_cost.", &mut r.request_cost),
    ];
    for (prefix, map) in maps {
        if let Some(k) = key.strip_prefix(prefix) {
            if k.is_empty() {
                return Err(Rejected::new(Reason::Syntax, format!("empty {prefix} key")));
            }
            map.insert(k.to_string(), v);
            return Ok(());
        }
    }
    let slot = match key {
        "cpu_utilization" => &mut r.cpu_utilization,
        "mem_utilization" => &mut r.mem_utilization,
        "application_utilization" => &mut r.application_utilization,
        "rps_fractional" => &mut r.rps_fractional,
        "eps" => &mut r.eps,
        _ => {
            return Err(Rejected::new(
                Reason::UnknownKey,
                format!("unknown metric {key}"),
            ));
        }
    };
    *slot = v;
    Ok(())
}

/// proto3 JSON of `OrcaLoadReport`: lowerCamelCase or original names,
/// numbers or numeric strings, unknown fields and duplicates rejected.
pub fn parse_json(body: &str) -> Result<LoadReport, Rejected> {
    let mut de = serde_json::Deserializer::from_str(body);
    let fields = match de.deserialize_map(ObjectVisitor) {
        Ok(f) => f,
        Err(e) => return Err(json_error(e)),
    };
    if de.end().is_err() {
        return Err(Rejected::new(Reason::Syntax, "trailing characters"));
    }
    let fields = fields?;
    let mut r = LoadReport::default();
    let mut seen: Vec<&'static str> = Vec::new();
    for (name, value) in fields {
        let canonical = canonical_field(&name)
            .ok_or_else(|| Rejected::new(Reason::UnknownKey, format!("unknown field {name}")))?;
        if seen.contains(&canonical) {
            return Err(Rejected::new(
                Reason::Duplicate,
                format!("duplicate field {name}"),
            ));
        }
        seen.push(canonical);
        match (canonical, value) {
            ("named_metrics" | "utilization" | "request_cost", JsonValue::Map(entries)) => {
                let map = match canonical {
                    "named_metrics" => &mut r.named_metrics,
                    "utilization" => &mut r.utilization,
                    _ => &mut r.request_cost,
                };
                for (k, v) in entries {
                    if k.is_empty() {
                        return Err(Rejected::new(Reason::Syntax, "empty map key"));
                    }
                    if map.contains_key(&k) {
                        return Err(Rejected::new(
                            Reason::Duplicate,
                            format!("duplicate key {k}"),
                        ));
                    }
                    check_value(&k, v)?;
                    map.insert(k, v);
                }
            }
            ("named_metrics" | "utilization" | "request_cost", JsonValue::Null) => {}
            ("named_metrics" | "utilization" | "request_cost", JsonValue::Number(_)) => {
                return Err(Rejected::new(
                    Reason::Syntax,
                    format!("{name} is not an object"),
                ));
            }
            ("rps", JsonValue::Number(v)) => {
                // uint64 in proto: only whole non-negative numbers.
                check_value("rps", v)?;
                if v.fract() != 0.0 {
                    return Err(Rejected::new(Reason::Syntax, "rps is not an integer"));
                }
                if r.rps_fractional == 0.0 {
                    r.rps_fractional = v;
                }
            }
            (_, JsonValue::Number(v)) => {
                check_value(canonical, v)?;
                set_field(&mut r, canonical, v)?;
            }
            (_, JsonValue::Null) => {}
            (_, JsonValue::Map(_)) => {
                return Err(Rejected::new(
                    Reason::Syntax,
                    format!("{name} is an object"),
                ));
            }
        }
    }
    Ok(r)
}

/// The proto field a JSON name refers to.
fn canonical_field(name: &str) -> Option<&'static str> {
    Some(match name {
        "cpuUtilization" | "cpu_utilization" => "cpu_utilization",
        "memUtilization" | "mem_utilization" => "mem_utilization",
        "applicationUtilization" | "application_utilization" => "application_utilization",
        "rpsFractional" | "rps_fractional" => "rps_fractional",
        "eps" => "eps",
        "rps" => "rps",
        "namedMetrics" | "named_metrics" => "named_metrics",
        "utilization" => "utilization",
        "requestCost" | "request_cost" => "request_cost",
        _ => return None,
    })
}

fn json_error(e: serde_json::Error) -> Rejected {
    Rejected::new(Reason::Syntax, format!("bad JSON: {e}"))
}

/// A top-level field value: a number (possibly from a string), a map of
/// numbers, or null.
enum JsonValue {
    Number(f64),
    Map(Vec<(String, f64)>),
    Null,
}

/// Fields in document order, so duplicates are seen (a map type would
/// silently keep the last one). The inner `Result` carries rejections that
/// are not JSON syntax errors (NaN spelled as a string, ...).
type Fields = Result<Vec<(String, JsonValue)>, Rejected>;

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut out = Vec::new();
        let mut failure = None;
        // Read to the end even after a failure: the JSON must still be
        // consumed whole, and a syntax error later on is still an error.
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<RawValue>()?;
            match value.0 {
                Ok(v) => out.push((key, v)),
                Err(r) => {
                    failure.get_or_insert(r);
                }
            }
        }
        Ok(match failure {
            Some(r) => Err(r),
            None => Ok(out),
        })
    }
}

/// Deserialises one top-level value into a [`JsonValue`].
struct RawValue(Result<JsonValue, Rejected>);

impl<'de> de::Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawValueVisitor)
    }
}

struct RawValueVisitor;

impl<'de> Visitor<'de> for RawValueVisitor {
    type Value = RawValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number, a numeric string, an object of numbers or null")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawValue, E> {
        Ok(RawValue(Ok(JsonValue::Number(v))))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawValue, E> {
        Ok(RawValue(Ok(JsonValue::Number(v as f64))))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawValue, E> {
        Ok(RawValue(Ok(JsonValue::Number(v as f64))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawValue, E> {
        Ok(RawValue(number_from_string(v).map(JsonValue::Number)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<RawValue, E> {
        Ok(RawValue(Ok(JsonValue::Null)))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawValue, E> {
        Ok(RawValue(Err(Rejected::new(
            Reason::Syntax,
            "boolean where a number belongs",
        ))))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(RawValue(Err(Rejected::new(
            Reason::Syntax,
            "array where a number belongs",
        ))))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
        let mut entries = Vec::new();
        let mut failure = None;
        while let Some(key) = map.next_key::<String>()? {
            let v = map.next_value::<RawValue>()?;
            if failure.is_some() {
                continue;
            }
            match v.0 {
                Ok(JsonValue::Number(n)) => entries.push((key, n)),
                Ok(_) => {
                    failure = Some(Rejected::new(
                        Reason::Syntax,
                        format!("map value for {key} is not a number"),
                    ))
                }
                Err(r) => failure = Some(r),
            }
        }
        Ok(RawValue(match failure {
            Some(r) => Err(r),
            None => Ok(JsonValue::Map(entries)),
        }))
    }
}

/// proto3 JSON allows doubles as strings, including "NaN" and "Infinity"
/// (which load reports must not carry).
fn number_from_string(s: &str) -> Result<f64, Rejected> {
    match s {
        "NaN" => Err(Rejected::new(Reason::NaN, "NaN")),
        "Infinity" | "-Infinity" => Err(Rejected::new(Reason::Infinite, s.to_string())),
        _ => {
            // Rust also parses "nan"/"inf"; proto3 JSON does not.
            let v: f64 = s
                .parse()
                .map_err(|_| Rejected::new(Reason::Syntax, format!("bad number {s:?}")))?;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(Rejected::new(Reason::Syntax, format!("bad number {s:?}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 4096;

    fn full() -> LoadReport {
        LoadReport {
            cpu_utilization: 0.7,
            mem_utilization: 0.9,
            application_utilization: 0.8,
            rps_fractional: 1000.0,
            eps: 2.0,
            named_metrics: [("foo".to_string(), 123.0)].into(),
            utilization: [("total".to_string(), 0.5)].into(),
            request_cost: BTreeMap::new(),
        }
    }

    fn reason(r: Result<LoadReport, Rejected>) -> Reason {
        r.expect_err("must be rejected").reason
    }

    #[test]
    fn text_form() {
        let v = b"TEXT cpu_utilization=0.7,mem_utilization=0.9,rps_fractional=1000,eps=2,\
                  named_metrics.foo=123,utilization.total=0.5,application_utilization=0.8";
        assert_eq!(parse_header(v, MAX).unwrap(), full());
        // Spaces and the old ':' separator.
        let r = parse_header(b"TEXT cpu_utilization: 0.25 , eps=1", MAX).unwrap();
        assert_eq!((r.cpu_utilization, r.eps), (0.25, 1.0));
        assert_eq!(parse_header(b"TEXT ", MAX).unwrap(), LoadReport::default());
    }

    #[test]
    fn text_rejections() {
        let cases: [(&[u8], Reason); 12] = [
            (b"TEXT cpu_utilization=NaN", Reason::NaN),
            (b"TEXT cpu_utilization=nan", Reason::NaN),
            (b"TEXT cpu_utilization=inf", Reason::Infinite),
            (b"TEXT eps=-1", Reason::Negative),
            (
                b"TEXT cpu_utilization=0.1,cpu_utilization=0.2",
                Reason::Duplicate,
            ),
            (b"TEXT bogus=1", Reason::UnknownKey),
            (b"TEXT rps=1", Reason::UnknownKey),
            (b"TEXT cpu_utilization", Reason::Syntax),
            (b"TEXT cpu_utilization=", Reason::Syntax),
            (b"TEXT named_metrics.=1", Reason::Syntax),
            (b"TEXT cpu_utilization=0.5x", Reason::Syntax),
            (b"XML <a/>", Reason::UnknownFormat),
        ];
        for (v, want) in cases {
            assert_eq!(
                reason(parse_header(v, MAX)),
                want,
                "{}",
                String::from_utf8_lossy(v)
            );
        }
        assert_eq!(
            reason(parse_header(b"text cpu_utilization=1", MAX)),
            Reason::UnknownFormat
        );
        assert_eq!(reason(parse_header(&[b'T', 0xff], MAX)), Reason::Syntax);
    }

    #[test]
    fn oversized_is_rejected_before_parsing() {
        let mut v = b"TEXT cpu_utilization=0.5,".to_vec();
        v.resize(64 * 1024, b' ');
        assert_eq!(reason(parse_header(&v, MAX)), Reason::Oversized);
        assert_eq!(reason(parse_bin_header(&v, MAX)), Reason::Oversized);
    }

    #[test]
    fn json_form() {
        let camel =
            br#"JSON {"cpuUtilization":0.7,"memUtilization":0.9,"applicationUtilization":0.8,
            "rpsFractional":1000,"eps":2,"namedMetrics":{"foo":123},"utilization":{"total":0.5}}"#;
        assert_eq!(parse_header(camel, MAX).unwrap(), full());
        let snake = br#"JSON {"cpu_utilization":"0.7","mem_utilization":0.9,"application_utilization":0.8,
            "rps_fractional":1000,"eps":2,"named_metrics":{"foo":"123"},"utilization":{"total":0.5}}"#;
        assert_eq!(parse_header(snake, MAX).unwrap(), full());
        let r = parse_header(br#"JSON {"rps": 12, "requestCost": {"db": 3}}"#, MAX).unwrap();
        assert_eq!(r.rps_fractional, 12.0);
        assert_eq!(r.request_cost.get("db"), Some(&3.0));
        assert_eq!(
            parse_header(b"JSON {}", MAX).unwrap(),
            LoadReport::default()
        );
    }

    #[test]
    fn json_rejections() {
        let cases: [(&[u8], Reason); 13] = [
            (
                br#"JSON {"cpuUtilization":"NaN","rpsFractional":10}"#,
                Reason::NaN,
            ),
            (
                br#"JSON {"eps":"Infinity","cpuUtilization":"NaN"}"#,
                Reason::Infinite,
            ),
            (br#"JSON {"cpuUtilization":"Infinity"}"#, Reason::Infinite),
            (br#"JSON {"cpuUtilization":-0.5}"#, Reason::Negative),
            (br#"JSON {"namedMetrics":{"a":-1}}"#, Reason::Negative),
            (br#"JSON {"namedMetrics":{"a":"NaN"}}"#, Reason::NaN),
            (
                br#"JSON {"cpuUtilization":0.1,"cpu_utilization":0.2}"#,
                Reason::Duplicate,
            ),
            (br#"JSON {"namedMetrics":{"a":1,"a":2}}"#, Reason::Duplicate),
            (br#"JSON {"cpu":0.1}"#, Reason::UnknownKey),
            (br#"JSON {"cpuUtilization":0.1"#, Reason::Syntax),
            (br#"JSON [1,2]"#, Reason::Syntax),
            (br#"JSON {"cpuUtilization":true}"#, Reason::Syntax),
            (br#"JSON {"cpuUtilization":"nan"}"#, Reason::Syntax),
        ];
        for (v, want) in cases {
            assert_eq!(
                reason(parse_header(v, MAX)),
                want,
                "{}",
                String::from_utf8_lossy(v)
            );
        }
        assert_eq!(reason(parse_header(br#"JSON {} x"#, MAX)), Reason::Syntax);
        assert_eq!(
            reason(parse_header(br#"JSON {"rps": 1.5}"#, MAX)),
            Reason::Syntax
        );
    }

    fn proto_b64(p: &OrcaLoadReport, pad: bool) -> String {
        let bytes = p.encode_to_vec();
        let s = base64::engine::general_purpose::STANDARD.encode(bytes);
        if pad {
            s
        } else {
            s.trim_end_matches('=').to_string()
        }
    }

    fn proto_full() -> OrcaLoadReport {
        OrcaLoadReport {
            cpu_utilization: 0.7,
            mem_utilization: 0.9,
            application_utilization: 0.8,
            rps_fractional: 1000.0,
            eps: 2.0,
            named_metrics: [("foo".to_string(), 123.0)].into(),
            utilization: [("total".to_string(), 0.5)].into(),
            ..Default::default()
        }
    }

    #[test]
    fn binary_forms() {
        let padded = proto_b64(&proto_full(), true);
        let unpadded = proto_b64(&proto_full(), false);
        assert_ne!(padded, unpadded, "the example must need padding");
        for b64 in [&padded, &unpadded] {
            let prefixed = format!("BIN {b64}");
            assert_eq!(parse_header(prefixed.as_bytes(), MAX).unwrap(), full());
            assert_eq!(parse_bin_header(b64.as_bytes(), MAX).unwrap(), full());
        }
    }

    #[test]
    fn binary_rejections() {
        assert_eq!(
            reason(parse_bin_header(b"!!!not base64", MAX)),
            Reason::BadBase64
        );
        assert_eq!(reason(parse_bin_header(b"", MAX)), Reason::BadBase64);
        assert_eq!(reason(parse_header(b"BIN ", MAX)), Reason::BadBase64);
        // Valid base64 of bytes that are not a protobuf message.
        let junk = base64::engine::general_purpose::STANDARD.encode([0xff, 0xff, 0xff]);
        assert_eq!(
            reason(parse_bin_header(junk.as_bytes(), MAX)),
            Reason::BadProtobuf
        );
        let nan = OrcaLoadReport {
            cpu_utilization: f64::NAN,
            ..Default::default()
        };
        assert_eq!(
            reason(parse_bin_header(proto_b64(&nan, true).as_bytes(), MAX)),
            Reason::NaN
        );
        let neg = OrcaLoadReport {
            named_metrics: [("q".to_string(), -3.0)].into(),
            cpu_utilization: 0.1,
            ..Default::default()
        };
        assert_eq!(
            reason(parse_bin_header(proto_b64(&neg, true).as_bytes(), MAX)),
            Reason::Negative
        );
    }

    #[test]
    fn one_report_per_map() {
        let b64 = proto_b64(&proto_full(), true);
        let text = b"TEXT cpu_utilization=0.7,mem_utilization=0.9,rps_fractional=1000,eps=2,\
                     named_metrics.foo=123,utilization.total=0.5,application_utilization=0.8";
        let (bin, other): (&[u8], &[u8]) = (b64.as_bytes(), b"TEXT cpu_utilization=0.1");
        assert_eq!(parse_report(&[], &[], MAX), None);
        assert_eq!(parse_report(&[bin], &[], MAX), Some(Ok(full())));
        assert_eq!(parse_report(&[], &[text], MAX), Some(Ok(full())));
        // Both forms saying the same: accepted.
        assert_eq!(parse_report(&[bin], &[text], MAX), Some(Ok(full())));
        let dup = |r: Option<Result<LoadReport, Rejected>>| r.map(reason);
        let want = Some(Reason::DuplicateHeader);
        // Both forms disagreeing, or one of them invalid: neither wins.
        assert_eq!(dup(parse_report(&[bin], &[other], MAX)), want);
        assert_eq!(dup(parse_report(&[bin], &[b"TEXT bogus=1"], MAX)), want);
        assert_eq!(dup(parse_report(&[b"!!"], &[text], MAX)), want);
        // A repeated header, even with equal values.
        assert_eq!(dup(parse_report(&[], &[text, other], MAX)), want);
        assert_eq!(dup(parse_report(&[], &[text, text], MAX)), want);
        assert_eq!(dup(parse_report(&[bin, bin], &[], MAX)), want);
    }

    #[test]
    fn utilization_choice() {
        let names = vec!["gpu".to_string(), "queue".to_string()];
        let mut r = LoadReport {
            cpu_utilization: 0.3,
            ..Default::default()
        };
        assert_eq!(r.utilization_for(&names), 0.3);
        r.named_metrics.insert("queue".into(), 0.6);
        r.named_metrics.insert("gpu".into(), 0.4);
        r.named_metrics.insert("other".into(), 0.9);
        assert_eq!(r.utilization_for(&names), 0.6);
        r.application_utilization = 0.2;
        assert_eq!(r.utilization_for(&names), 0.2);
    }
}
