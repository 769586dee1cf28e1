//! Records as bytes: JSON string escaping for the record writer
//! ([`crate::record::line`]), and batch bodies (JSON lines or OTLP/HTTP JSON
//! logs).
//!
//! Log injection (Envoy CVE-2024-45808) is impossible by construction: every
//! value is written as a JSON string by [`push_json_str`], which escapes `"`,
//! `\` and every control character (CR, LF and NUL included) exactly as
//! serde_json does; invalid UTF-8 was already replaced by U+FFFD. U+2028 and
//! U+2029 are escaped as well, in records and in OTLP bodies, since some
//! line readers (JavaScript) split on them.

use crate::timefmt;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` to `out` as a JSON string literal, quotes included.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    push_escaped(out, s);
    out.push('"');
}

/// Bytes that [`push_escaped`] stops at: `"`, `\\`, the C0 controls, and
/// 0xE2 (the lead byte of U+2028/U+2029). Everything else is copied in runs.
const STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0xe2] = true;
    t
};

/// Appends `s` to `out` escaped for a JSON string, without quotes (for a
/// key written in pieces). Runs without a [`STOP`] byte are copied whole:
/// records are mostly plain ASCII, and this runs for every field of every
/// record.
pub fn push_escaped(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    // `done`: copied up to here; `from`: scanned up to here.
    let (mut done, mut from) = (0, 0);
    while let Some(skip) = bytes
        .get(from..)
        .and_then(|rest| rest.iter().position(|b| STOP[usize::from(*b)]))
    {
        let i = from + skip;
        // invariant: `position` found `i` inside `bytes[from..]`.
        let b = bytes[i];
        let (escape, len) = match b {
            b'"' => ("\\\"", 1),
            b'\\' => ("\\\\", 1),
            b'\n' => ("\\n", 1),
            b'\r' => ("\\r", 1),
            b'\t' => ("\\t", 1),
            0x08 => ("\\b", 1),
            0x0c => ("\\f", 1),
            // The other control characters: `\u00XX` below.
            0x00..=0x1f => ("", 1),
            // 0xE2: only U+2028 and U+2029 (JavaScript line terminators)
            // are escaped; other characters starting with it stay.
            _ => match bytes.get(i + 1..i + 3) {
                Some([0x80, 0xa8]) => ("\\u2028", 3),
                Some([0x80, 0xa9]) => ("\\u2029", 3),
                _ => {
                    from = i + 1;
                    continue;
                }
            },
        };
        // invariant: `i` is at an ASCII byte or the lead byte 0xE2, so a
        // character boundary.
        out.push_str(&s[done..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        done = i + len;
        from = done;
    }
    out.push_str(&s[done..]);
}

/// Escapes raw U+2028/U+2029 in serialised JSON (where they can only occur
/// inside strings) as `\u2028`/`\u2029`.
fn escape_line_separators(json: Vec<u8>) -> Vec<u8> {
    let is_separator = |w: &[u8]| matches!(w, [0xe2, 0x80, 0xa8 | 0xa9]);
    if !json.windows(3).any(is_separator) {
        return json;
    }
    let mut out = Vec::with_capacity(json.len() + 16);
    let mut i = 0;
    while let Some(&b) = json.get(i) {
        match json.get(i..i + 3) {
            Some(w) if is_separator(w) => {
                out.extend_from_slice(if w[2] == 0xa8 { b"\\u2028" } else { b"\\u2029" });
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// A JSON-lines body: each record followed by `\n`.
pub fn json_lines<S: AsRef<str>>(lines: &[S]) -> Vec<u8> {
    let size = lines.iter().map(|l| l.as_ref().len() + 1).sum();
    let mut body = Vec::with_capacity(size);
    for l in lines {
        body.extend_from_slice(l.as_ref().as_bytes());
        body.push(b'\n');
    }
    body
}

/// An OTLP/HTTP JSON `ExportLogsServiceRequest` with one log record per
/// line: the record's fields become attributes (in the line's order), its
/// start time the `timeUnixNano`, the severity follows the status (5xx
/// ERROR, 4xx WARN). Lines that do not parse as a JSON object (never ours)
/// are carried as a string body.
///
/// Written straight from each line's members, values copied as they are:
/// no `serde_json::Value` tree (which cost the module ~15 KB of code).
pub fn otlp_logs<S: AsRef<str>>(lines: &[S], observed_unix_nanos: u64, service: &str) -> Vec<u8> {
    let size: usize = lines.iter().map(|l| 2 * l.as_ref().len() + 256).sum();
    let mut out = String::with_capacity(size + 192);
    out.push_str(r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"#);
    push_json_str(&mut out, service);
    out.push_str(r#"}}]},"scopeLogs":[{"scope":{"name":"switchyard.access-log"},"logRecords":["#);
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_otlp_record(&mut out, line.as_ref(), observed_unix_nanos);
    }
    out.push_str("]}]}]}");
    // Raw values copied from lines may hold U+2028/U+2029 unescaped.
    escape_line_separators(out.into_bytes())
}

/// A JSON object's members in document order, values left as text.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Members<'a> {
    /// The last member named `key` (a JSON object's last duplicate wins).
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The members without earlier duplicates of a later key, in order.
    fn distinct(&self) -> impl Iterator<Item = &(String, &'a RawValue)> {
        self.0
            .iter()
            .enumerate()
            .filter(|(i, (k, _))| !self.0[i + 1..].iter().any(|(later, _)| later == k))
            .map(|(_, m)| m)
    }

    /// The first of `keys` whose value is a string, unescaped.
    fn text(&self, keys: &[&str]) -> Option<String> {
        keys.iter()
            .find_map(|k| serde_json::from_str::<String>(self.get(k)?.get()).ok())
    }

    /// The first of `keys` whose value is an integer ≥ 0.
    fn unsigned(&self, keys: &[&str]) -> Option<u64> {
        keys.iter().find_map(|k| self.get(k)?.get().parse().ok())
    }
}

fn push_otlp_record(out: &mut String, line: &str, observed: u64) {
    let Ok(fields) = serde_json::from_str::<Members>(line) else {
        out.push_str(r#"{"observedTimeUnixNano":""#);
        out.push_str(&observed.to_string());
        out.push_str(r#"","body":{"stringValue":"#);
        push_json_str(out, line);
        out.push_str("}}");
        return;
    };
    let time = fields
        .text(&["start_time", "timestamp"])
        .and_then(|t| timefmt::parse_rfc3339(&t))
        .unwrap_or(observed);
    let status = fields
        .unsigned(&["response_code", "http.response.status_code"])
        .unwrap_or(0);
    let (number, text) = match status {
        500.. | 0 => ("17", "ERROR"),
        400..=499 => ("13", "WARN"),
        _ => ("9", "INFO"),
    };
    let summary = format!(
        "{} {} {}",
        fields
            .text(&["method", "http.request.method"])
            .as_deref()
            .unwrap_or("-"),
        fields.text(&["path", "url.path"]).as_deref().unwrap_or("-"),
        status
    );
    out.push_str(r#"{"timeUnixNano":""#);
    out.push_str(&time.to_string());
    out.push_str(r#"","observedTimeUnixNano":""#);
    out.push_str(&observed.to_string());
    out.push_str(r#"","severityNumber":"#);
    out.push_str(number);
    out.push_str(r#","severityText":""#);
    out.push_str(text);
    out.push_str(r#"","body":{"stringValue":"#);
    push_json_str(out, &summary);
    out.push_str(r#"},"attributes":["#);
    let mut first = true;
    for (key, value) in fields.distinct().filter(|(_, v)| v.get() != "null") {
        if !std::mem::take(&mut first) {
            out.push(',');
        }
        push_key_value(out, key, value);
    }
    out.push_str("]}");
}

/// `{"key":…,"value":AnyValue}`.
fn push_key_value(out: &mut String, key: &str, value: &RawValue) {
    out.push_str(r#"{"key":"#);
    push_json_str(out, key);
    out.push_str(r#","value":"#);
    push_any_value(out, value);
    out.push('}');
}

/// OTLP's `AnyValue` in proto3 JSON (64-bit integers as strings), from a
/// valid JSON value's text.
fn push_any_value(out: &mut String, raw: &RawValue) {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            out.push_str(r#"{"stringValue":"#);
            out.push_str(text);
            out.push('}');
        }
        Some(b't' | b'f') => {
            out.push_str(r#"{"boolValue":"#);
            out.push_str(text);
            out.push('}');
        }
        Some(b'[') => {
            out.push_str(r#"{"arrayValue":{"values":["#);
            let items: Vec<&RawValue> = serde_json::from_str(text).unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_any_value(out, item);
            }
            out.push_str("]}}");
        }
        Some(b'{') => {
            out.push_str(r#"{"kvlistValue":{"values":["#);
            let members = serde_json::from_str::<Members>(text).unwrap_or(Members(Vec::new()));
            for (i, (key, value)) in members.distinct().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_key_value(out, key, value);
            }
            out.push_str("]}}");
        }
        Some(b'-' | b'0'..=b'9') => {
            // serde_json's reading: integers that fit 64 bits, except -0
            // (a float there), are integers; the rest floats.
            let int = (text != "-0")
                .then(|| {
                    text.parse::<i64>()
                        .map(|i| i.to_string())
                        .or_else(|_| text.parse::<u64>().map(|u| u.to_string()))
                        .ok()
                })
                .flatten();
            match int {
                Some(i) => {
                    out.push_str(r#"{"intValue":""#);
                    out.push_str(&i);
                    out.push_str(r#""}"#);
                }
                None => {
                    out.push_str(r#"{"doubleValue":"#);
                    out.push_str(text);
                    out.push('}');
                }
            }
        }
        // null (inside arrays and objects; left out at the top).
        _ => out.push_str("{}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::record::{Facts, line};
    use crate::testutil::Rng;
    use serde_json::Value;
    use switchyard_sdk::stage::Decisions;

    /// `naming`, short fields, the hostile header selected both ways.
    fn hostile_config(naming: &str) -> Config {
        switchyard_sdk::config::parse(
            format!(r#"{{"naming":"{naming}","max_field_bytes":64,"request_headers":["x-evil"],"response_headers":["x-evil"]}}"#).as_bytes(),
        )
        .unwrap()
    }

    fn hostile_facts(v: &[u8]) -> Facts {
        let mut f = Facts::default();
        for name in [
            ":path",
            ":authority",
            ":method",
            "user-agent",
            "x-request-id",
            "x-forwarded-for",
            "x-evil",
        ] {
            f.request_headers.add(name, v);
        }
        f.response_headers.add("x-evil", v);
        f.response_headers.add("x-envoy-upstream-service-time", v);
        let text = String::from_utf8_lossy(v).into_owned();
        f.response_code_details = Some(text.clone());
        f.route_name = Some(text.clone());
        f.decisions = Decisions {
            route: Some(text.clone()),
            endpoint: Some(text.clone()),
            rate_limit: Some(text),
            ..Decisions::default()
        };
        f
    }

    fn assert_one_json_line(line: &str) -> Value {
        assert!(
            !line.contains(['\n', '\r', '\0', '\u{2028}', '\u{2029}']),
            "{line:?}"
        );
        assert!(
            line.bytes().all(|b| b >= 0x20),
            "raw control byte in {line:?}"
        );
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    #[test]
    fn hostile_header_bytes_end_as_one_valid_json_line() {
        let v: &[u8] = b"a\r\nb\0c\"d\\e\xff\xfe\xc3(f\x1b[31m\xe2\x80\xa8g\"}\n{\"forged\":1}";
        for naming in ["envoy", "otel"] {
            let c: Config = switchyard_sdk::config::parse(
                format!(r#"{{"naming":"{naming}","request_headers":["x-evil"],"response_headers":["x-evil"]}}"#).as_bytes(),
            )
            .unwrap();
            let l = line(&c, &mut hostile_facts(v));
            let parsed = assert_one_json_line(&l);
            assert!(parsed.get("forged").is_none());
            let text = parsed.to_string();
            assert!(text.contains('\u{fffd}'), "invalid UTF-8 replaced: {text}");
        }
    }

    #[test]
    fn random_bytes_always_encode_to_one_parsable_line() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for naming in ["envoy", "otel"] {
            let c = hostile_config(naming);
            for _ in 0..3_000 {
                let v = rng.bytes(200);
                let l = line(&c, &mut hostile_facts(&v));
                assert_one_json_line(&l);
            }
        }
    }

    #[test]
    fn json_lines_body_has_one_record_per_line() {
        let body = json_lines(&["{\"a\":1}", "{\"b\":2}"]);
        assert_eq!(body, b"{\"a\":1}\n{\"b\":2}\n");
        assert!(json_lines::<&str>(&[]).is_empty());
    }

    /// The encoder this module had before it wrote OTLP directly: a
    /// `serde_json::Value` tree per line. The oracle for the one above.
    fn oracle_record(line: &str, observed: u64) -> Value {
        use serde_json::{Map, json};
        fn any(v: &Value) -> Value {
            match v {
                Value::String(s) => json!({ "stringValue": s }),
                Value::Bool(b) => json!({ "boolValue": b }),
                Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                    (Some(i), _) => json!({ "intValue": i.to_string() }),
                    (None, Some(u)) => json!({ "intValue": u.to_string() }),
                    _ => json!({ "doubleValue": n.as_f64().unwrap_or(0.0) }),
                },
                Value::Array(a) => {
                    json!({ "arrayValue": { "values": a.iter().map(any).collect::<Vec<_>>() } })
                }
                Value::Object(m) => json!({ "kvlistValue": { "values": m.iter()
                    .map(|(k, v)| json!({ "key": k, "value": any(v) }))
                    .collect::<Vec<_>>() } }),
                Value::Null => json!({}),
            }
        }
        let fields: Map<String, Value> = match serde_json::from_str(line) {
            Ok(Value::Object(m)) => m,
            _ => {
                return json!({"observedTimeUnixNano": observed.to_string(), "body": {"stringValue": line}});
            }
        };
        let text = |keys: &[&str]| keys.iter().find_map(|k| fields.get(*k)?.as_str());
        let time = text(&["start_time", "timestamp"])
            .and_then(timefmt::parse_rfc3339)
            .unwrap_or(observed);
        let status = ["response_code", "http.response.status_code"]
            .iter()
            .find_map(|k| fields.get(*k)?.as_u64())
            .unwrap_or(0);
        let (number, sev) = match status {
            500.. | 0 => (17, "ERROR"),
            400..=499 => (13, "WARN"),
            _ => (9, "INFO"),
        };
        let summary = format!(
            "{} {} {}",
            text(&["method", "http.request.method"]).unwrap_or("-"),
            text(&["path", "url.path"]).unwrap_or("-"),
            status
        );
        let attributes: Vec<Value> = fields
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| json!({ "key": k, "value": any(v) }))
            .collect();
        json!({"timeUnixNano": time.to_string(), "observedTimeUnixNano": observed.to_string(),
            "severityNumber": number, "severityText": sev,
            "body": {"stringValue": summary}, "attributes": attributes})
    }

    /// Attributes in key order (the oracle's map sorted them; the
    /// encoder keeps the line's order, which OTLP leaves free).
    fn sorted(mut record: Value) -> Value {
        if let Some(a) = record.get_mut("attributes").and_then(Value::as_array_mut) {
            a.sort_by(|x, y| x["key"].as_str().cmp(&y["key"].as_str()));
        }
        record
    }

    #[test]
    fn otlp_records_match_the_value_tree_encoding() {
        let mut lines: Vec<String> = [
            r#"{"a":-0,"b":1.5,"c":1e3,"d":18446744073709551615,"e":-9223372036854775808,"f":[1,"x",null,true,{"g":null}],"h":{},"i":[],"response_code":"503"}"#,
            r#"{"dup":1,"dup":2}"#,
            r#"[1,2]"#,
            r#""just a string""#,
            "",
            r#"{"method":"G\u0000T","path":"/\u2028","response_code":404}"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for naming in ["envoy", "otel"] {
            let c = hostile_config(naming);
            for _ in 0..500 {
                lines.push(line(&c, &mut hostile_facts(&rng.bytes(40))));
            }
        }
        let body = otlp_logs(&lines, 7, "svc");
        let doc: Value = serde_json::from_slice(&body).unwrap();
        let recs = doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
            .as_array()
            .unwrap();
        assert_eq!(recs.len(), lines.len());
        for (got, l) in recs.iter().zip(&lines) {
            assert_eq!(sorted(got.clone()), sorted(oracle_record(l, 7)), "{l}");
        }
    }

    #[test]
    fn otlp_body_maps_fields_to_attributes() {
        let lines = [
            r#"{"start_time":"2026-01-01T00:00:00.123Z","method":"GET","path":"/x","response_code":503,"request_id":"r1","request_headers":{"x-a":"1"},"upstream_host":null}"#,
            r#"{"timestamp":"2026-01-01T00:00:01.000Z","http.request.method":"POST","url.path":"/y","http.response.status_code":200,"http.request.header.x-request-id":["r2"]}"#,
            "not json",
        ];
        let body = otlp_logs(&lines, 42, "envoy");
        let doc: Value = serde_json::from_slice(&body).unwrap();
        let recs = &doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"];
        assert_eq!(recs[0]["timeUnixNano"], "1767225600123000000");
        assert_eq!(recs[0]["severityText"], "ERROR");
        assert_eq!(recs[0]["body"]["stringValue"], "GET /x 503");
        let attrs = recs[0]["attributes"].as_array().unwrap();
        let find = |k: &str| {
            attrs
                .iter()
                .find(|a| a["key"] == k)
                .map(|a| a["value"].clone())
        };
        assert_eq!(find("request_id").unwrap()["stringValue"], "r1");
        assert_eq!(find("response_code").unwrap()["intValue"], "503");
        assert_eq!(
            find("request_headers").unwrap()["kvlistValue"]["values"][0]["key"],
            "x-a"
        );
        assert!(find("upstream_host").is_none(), "nulls are left out");
        assert_eq!(recs[1]["severityText"], "INFO");
        assert_eq!(recs[1]["body"]["stringValue"], "POST /y 200");
        assert_eq!(recs[2]["body"]["stringValue"], "not json");
        assert_eq!(recs[2]["observedTimeUnixNano"], "42");
    }

    #[test]
    fn line_separators_are_escaped() {
        let mut f = Facts::default();
        f.request_headers
            .add(":path", "/a\u{2028}b\u{2029}".as_bytes());
        let l = line(&Config::default(), &mut f);
        assert!(l.contains("\\u2028") && l.contains("\\u2029"), "{l}");
        let v = assert_one_json_line(&l);
        assert_eq!(v["path"], "/a\u{2028}b\u{2029}");
    }

    /// The escaper writes what serde_json wrote (plus U+2028/U+2029), for
    /// any text.
    #[test]
    fn escaping_matches_serde_json() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            let text = String::from_utf8_lossy(&rng.bytes(40)).into_owned();
            let mut ours = String::new();
            push_json_str(&mut ours, &text);
            let theirs = serde_json::to_string(&text)
                .unwrap()
                .replace('\u{2028}', "\\u2028")
                .replace('\u{2029}', "\\u2029");
            assert_eq!(ours, theirs, "{text:?}");
        }
        let mut all = String::new();
        push_json_str(
            &mut all,
            "\u{0}\u{1f}\u{7f}\u{2028}\u{2029}\u{2027}é€\"\\\u{2028}",
        );
        // DEL and other non-control characters stay raw.
        assert_eq!(
            all,
            "\"\\u0000\\u001f\u{7f}\\u2028\\u2029\u{2027}é€\\\"\\\\\\u2028\""
        );
    }

    #[test]
    fn otlp_bodies_escape_line_separators_too() {
        let mut f = Facts::default();
        f.request_headers
            .add(":path", "/a\u{2028}b\u{2029}".as_bytes());
        f.request_headers.add("user-agent", "x\u{2028}y".as_bytes());
        for naming in ["envoy", "otel"] {
            let c: Config =
                switchyard_sdk::config::parse(format!(r#"{{"naming":"{naming}"}}"#).as_bytes())
                    .unwrap();
            let l = line(&c, &mut f);
            let body = otlp_logs(&[l.as_str()], 1, "envoy");
            let text = std::str::from_utf8(&body).unwrap();
            assert!(!text.contains(['\u{2028}', '\u{2029}']), "{text}");
            assert!(
                text.contains("\\u2028") && text.contains("\\u2029"),
                "{text}"
            );
            let doc: Value = serde_json::from_slice(&body).unwrap();
            let body = &doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["body"];
            assert_eq!(body["stringValue"], "- /a\u{2028}b\u{2029} 0");
        }
    }
}
