//! Any bytes in any header, path or attribute must encode to exactly one
//! line of valid JSON, under both namings, and survive the OTLP conversion.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchyard_access_log::config::{Config, Naming};
use switchyard_access_log::encode;
use switchyard_access_log::record::{self, Decisions, Facts, HeaderMap};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    // `|`-separated pieces feed the fields; the first byte picks the options.
    let mut pieces = rest.split(|b| *b == b'|');
    let mut next = || pieces.next().unwrap_or_default().to_vec();
    let config = Config {
        naming: if control & 1 == 0 {
            Naming::Envoy
        } else {
            Naming::Otel
        },
        request_headers: vec!["x-a".into(), "authorization".into(), ":scheme".into()],
        response_headers: vec!["x-b".into(), "set-cookie".into()],
        max_field_bytes: 16 + usize::from(control >> 1) * 4,
        ..Config::default()
    };
    let text = |b: Vec<u8>| Some(String::from_utf8_lossy(&b).into_owned());
    let mut facts = Facts {
        request_headers: HeaderMap::from_pairs(vec![
            (":method".into(), next()),
            (":path".into(), next()),
            (":authority".into(), next()),
            (":scheme".into(), next()),
            ("x-request-id".into(), next()),
            ("user-agent".into(), next()),
            ("x-forwarded-for".into(), next()),
            ("x-a".into(), next()),
            ("x-a".into(), next()),
            ("authorization".into(), next()),
        ]),
        response_headers: HeaderMap::from_pairs(vec![
            ("x-b".into(), next()),
            ("set-cookie".into(), next()),
            ("x-envoy-upstream-service-time".into(), next()),
        ]),
        start_time_ns: Some(u64::from(control).wrapping_mul(0x0123_4567_89ab_cdef)),
        protocol: text(next()),
        response_code_details: text(next()),
        upstream_host: text(next()),
        route_name: text(next()),
        downstream_remote_address: text(next()),
        response_code: Some(u16::from(control) * 3),
        response_flags: Some(u64::from(control) << 3),
        decisions: Decisions {
            route: text(next()),
            endpoint: text(next()),
            rate_limit: text(next()),
            ..Decisions::default()
        },
        ..Facts::default()
    };
    let _ = record::decide(&config.sampling, &mut facts);
    let line = record::line(&config, &mut facts);
    assert!(
        !line.contains(['\n', '\r', '\0', '\u{2028}', '\u{2029}']),
        "{line:?}"
    );
    let parsed: Value = serde_json::from_str(&line).expect("one JSON value");
    assert!(parsed.is_object());
    let otlp = encode::otlp_logs(&[line.as_str()], 1, "fuzz");
    serde_json::from_slice::<Value>(&otlp).expect("OTLP body is JSON");
    let otlp = String::from_utf8(otlp).expect("OTLP body is UTF-8");
    assert!(!otlp.contains(['\u{2028}', '\u{2029}']), "{otlp:?}");
});
