//! Turns access-log records back into traffic.
//!
//! Reads JSON lines written by the access-log filter (either naming, or the
//! flat records [`crate::collector::Collector::to_json_lines`] writes) and
//! yields [`RequestSpec`]s with their offset from the first record's start
//! time, keeping the request id (`x-request-id`), method, authority, path
//! and query, user agent, `X-Forwarded-For` and the selected request
//! headers. Redacted values and values that are not valid header text (the
//! record shows U+FFFD or a control character where the client sent raw
//! bytes) are left out and listed in [`Replay::notes`].
//! `switchyard-harness replay` ([`crate::scenario`]) builds on
//! [`Replay::parse`].

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::traffic::RequestSpec;

/// The marker the access-log filter writes for redacted values (default).
pub const DEFAULT_REDACTION: &str = "[REDACTED]";

/// One request to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayRequest {
    /// Line number in the input (1-based).
    pub line: usize,
    /// From the earliest start time in the input (zero without start times).
    pub offset: Duration,
    pub request_id: Option<String>,
    pub spec: RequestSpec,
}

/// Requests sorted by offset, plus what was skipped or changed and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replay {
    pub requests: Vec<ReplayRequest>,
    /// `(line, why)`: lines skipped and headers left out.
    pub notes: Vec<(usize, String)>,
}

impl Replay {
    /// Parses JSON lines; blank lines are ignored, unusable lines noted.
    pub fn parse(text: &str) -> Replay {
        Self::parse_with(text, DEFAULT_REDACTION)
    }

    /// As [`Replay::parse`], for a filter configured with another
    /// `redaction` marker.
    pub fn parse_with(text: &str, redaction: &str) -> Replay {
        let mut replay = Replay::default();
        let mut starts = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let record: Value = match serde_json::from_str(line) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => {
                    replay.notes.push((n, "not a JSON object".into()));
                    continue;
                }
                Err(e) => {
                    replay.notes.push((n, format!("not JSON: {e}")));
                    continue;
                }
            };
            match request_of(&record, redaction, n, &mut replay.notes) {
                Some((spec, id, start)) => {
                    starts.push(start);
                    replay.requests.push(ReplayRequest {
                        line: n,
                        offset: Duration::ZERO,
                        request_id: id,
                        spec,
                    });
                }
                None => replay.notes.push((n, "no method or path".into())),
            }
        }
        let first = starts.iter().flatten().min().copied();
        for (r, start) in replay.requests.iter_mut().zip(starts) {
            if let (Some(first), Some(start)) = (first, start) {
                r.offset = Duration::from_nanos(start - first);
            }
        }
        replay.requests.sort_by_key(|r| (r.offset, r.line));
        replay
    }

    /// Reads and parses a file of JSON lines.
    pub fn load(path: impl AsRef<Path>) -> anyhow::Result<Replay> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Self::parse(&String::from_utf8_lossy(&bytes)))
    }

    /// The specs alone, in replay order.
    pub fn specs(&self) -> Vec<RequestSpec> {
        self.requests.iter().map(|r| r.spec.clone()).collect()
    }
}

fn str_field<'a>(r: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| match r.get(*k)? {
        Value::String(s) => Some(s.as_str()),
        Value::Array(a) => a.first()?.as_str(),
        _ => None,
    })
}

/// Text a header can carry again: visible ASCII, spaces and tabs (no
/// U+FFFD, no control characters).
fn header_safe(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// Headers the client's HTTP stack sets itself, or that would change the
/// replay's framing.
fn skipped_header(name: &str) -> bool {
    name.starts_with(':')
        || matches!(
            name,
            "host"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "keep-alive"
                | "upgrade"
                | "te"
                | "x-request-id"
        )
}

type Parsed = (RequestSpec, Option<String>, Option<u64>);

fn request_of(
    r: &Value,
    redaction: &str,
    line: usize,
    notes: &mut Vec<(usize, String)>,
) -> Option<Parsed> {
    let method = str_field(r, &["method", "http.request.method"])?;
    let path = match str_field(r, &["path"]) {
        Some(p) => p.to_string(),
        None => {
            let p = str_field(r, &["url.path"])?;
            match str_field(r, &["url.query"]) {
                Some(q) => format!("{p}?{q}"),
                None => p.to_string(),
            }
        }
    };
    let authority = match str_field(r, &["authority"]) {
        Some(a) => a.to_string(),
        None => match (
            str_field(r, &["server.address"]),
            r.get("server.port").and_then(Value::as_u64),
        ) {
            (Some(h), Some(p)) if h.contains(':') => format!("[{h}]:{p}"),
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => String::new(),
        },
    };
    let request_id =
        str_field(r, &["request_id", "http.request.header.x-request-id"]).map(str::to_string);
    let start = str_field(r, &["start_time", "timestamp"]).and_then(parse_rfc3339);

    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(ua) = str_field(r, &["user_agent", "user_agent.original"]) {
        headers.push(("user-agent".into(), ua.to_string()));
    }
    // The same clients in a replay (a rate limiter or a hash on the client
    // address sees them): the replayer plays one trusted proxy in front of
    // Envoy, so it sends the client the recording Envoy determined. The
    // recorded X-Forwarded-For is what Envoy forwarded, its own appended
    // address included: sent as is, every client would become that one.
    if let Some(client) = str_field(r, &["client_address", "client.address"]) {
        headers.push(("x-forwarded-for".into(), client.to_string()));
    } else if let Some(xff) = str_field(r, &["x_forwarded_for"]) {
        headers.push(("x-forwarded-for".into(), xff.to_string()));
    }
    if let Some(Value::Object(m)) = r.get("request_headers") {
        for (k, v) in m {
            if let Some(v) = v.as_str() {
                headers.push((k.clone(), v.to_string()));
            }
        }
    }
    if let Value::Object(m) = r {
        for (k, v) in m {
            if let Some(name) = k.strip_prefix("http.request.header.") {
                let v = match v {
                    Value::Array(a) => a.first().and_then(Value::as_str),
                    Value::String(s) => Some(s.as_str()),
                    _ => None,
                };
                if let Some(v) = v {
                    headers.push((name.to_string(), v.to_string()));
                }
            }
        }
    }
    let mut kept: Vec<(String, String)> = Vec::new();
    for (k, v) in headers {
        let k = k.to_ascii_lowercase();
        if skipped_header(&k) || kept.iter().any(|(n, _)| *n == k) {
            continue;
        }
        if v == redaction {
            notes.push((line, format!("header {k}: redacted, left out")));
        } else if !header_safe(&v) {
            notes.push((line, format!("header {k}: not replayable text, left out")));
        } else {
            kept.push((k, v));
        }
    }
    if let Some(id) = &request_id
        && header_safe(id)
    {
        kept.push(("x-request-id".into(), id.clone()));
    }
    let path = if header_safe(&path) {
        path
    } else {
        notes.push((line, "path: not replayable text, percent-encoded".into()));
        percent_encode_unsafe(&path)
    };
    let spec = RequestSpec {
        method: method.to_string(),
        host: authority,
        path,
        headers: kept,
        ..RequestSpec::default()
    };
    Some((spec, request_id, start))
}

fn percent_encode_unsafe(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if (0x21..0x7f).contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]Z` → ns since the epoch (what the filter writes).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |a: usize, z: usize| -> Option<i64> {
        let t = s.get(a..z)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d, h, mi, sec) = (
        num(0, 4)?,
        num(5, 7)?,
        num(8, 10)?,
        num(11, 13)?,
        num(14, 16)?,
        num(17, 19)?,
    );
    let rest = s.get(19..)?;
    let (frac, tail) = match rest.strip_prefix('.') {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            (&r[..end], &r[end..])
        }
        None => ("", rest),
    };
    if tail != "Z" || !(1..=12).contains(&mo) {
        return None;
    }
    let mut nanos = 0i64;
    for (i, c) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(c - b'0') * 10i64.pow(8 - i as u32);
    }
    // Days from the civil date (H. Hinnant).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy.rem_euclid(400);
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    u64::try_from(secs * 1_000_000_000 + nanos).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_and_otel_records_become_requests_in_time_order() {
        let text = concat!(
            r#"{"start_time":"2026-01-01T00:00:01.500Z","method":"POST","path":"/b?x=1","authority":"shop.test","request_id":"r2","user_agent":"ua/1","request_headers":{"x-tenant":"t1","authorization":"[REDACTED]","x-bad":"a\u0000b"}}"#,
            "\n\n",
            r#"{"timestamp":"2026-01-01T00:00:00.250Z","http.request.method":"GET","url.path":"/a","url.query":"q=2","server.address":"api.test","server.port":8080,"http.request.header.x-request-id":["r1"],"http.request.header.x-tenant":["t2"]}"#,
            "\nnot json\n",
            r#"{"start_time":"2026-01-01T00:00:00.000Z","path":"/no-method"}"#,
            "\n"
        );
        let replay = Replay::parse(text);
        assert_eq!(replay.requests.len(), 2, "{replay:?}");
        let a = &replay.requests[0];
        assert_eq!(a.request_id.as_deref(), Some("r1"));
        assert_eq!(a.offset, Duration::ZERO);
        assert_eq!(
            (
                a.spec.method.as_str(),
                a.spec.host.as_str(),
                a.spec.path.as_str()
            ),
            ("GET", "api.test:8080", "/a?q=2")
        );
        assert!(a.spec.headers.contains(&("x-tenant".into(), "t2".into())));
        assert!(
            a.spec
                .headers
                .contains(&("x-request-id".into(), "r1".into()))
        );
        let b = &replay.requests[1];
        assert_eq!(b.offset, Duration::from_millis(1250));
        assert_eq!(
            (
                b.spec.method.as_str(),
                b.spec.host.as_str(),
                b.spec.path.as_str()
            ),
            ("POST", "shop.test", "/b?x=1")
        );
        assert!(
            b.spec
                .headers
                .contains(&("user-agent".into(), "ua/1".into()))
        );
        assert!(
            b.spec
                .headers
                .iter()
                .all(|(k, _)| k != "authorization" && k != "x-bad")
        );
        let notes: Vec<String> = replay
            .notes
            .iter()
            .map(|(l, w)| format!("{l}: {w}"))
            .collect();
        assert!(
            notes.iter().any(|n| n.contains("authorization: redacted")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("x-bad: not replayable")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.starts_with("4: not JSON")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.starts_with("5: no method")),
            "{notes:?}"
        );
    }

    #[test]
    fn the_recorded_client_is_the_replayed_one() {
        // Envoy appended its own address to what it forwarded: the record's
        // client_address is the client (found replaying rate-limit-burst:
        // every request became one client and the 429 share doubled).
        let text = r#"{"start_time":"2026-01-01T00:00:00.000Z","method":"GET","path":"/","authority":"a.test","x_forwarded_for":"203.0.113.9, 10.0.0.1","client_address":"203.0.113.9"}"#;
        let replay = Replay::parse(text);
        let h = &replay.requests[0].spec.headers;
        let xff: Vec<_> = h.iter().filter(|(k, _)| k == "x-forwarded-for").collect();
        assert_eq!(
            xff,
            [&("x-forwarded-for".to_string(), "203.0.113.9".to_string())]
        );
    }

    #[test]
    fn forwarded_for_is_kept() {
        let text = r#"{"start_time":"2026-01-01T00:00:00.000Z","method":"GET","path":"/","authority":"a.test","x_forwarded_for":"203.0.113.9","request_headers":{"x-forwarded-for":"ignored"}}"#;
        let replay = Replay::parse(text);
        let h = &replay.requests[0].spec.headers;
        assert_eq!(
            h.iter()
                .filter(|(k, _)| k == "x-forwarded-for")
                .collect::<Vec<_>>(),
            [&("x-forwarded-for".to_string(), "203.0.113.9".to_string())]
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-01-01T00:00:00.123Z"),
            Some(1_767_225_600_123_000_000)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T23:59:59.999Z"),
            Some(1_709_251_199_999_000_000)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }
}
