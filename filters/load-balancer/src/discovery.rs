//! The discovery payload: the endpoint list the discovery job polls.
//!
//! ```json
//! {"endpoints": [
//!   {"address": "10.0.0.7:8080", "weight": 2, "priority": 0, "state": "active",
//!    "name": "b7", "zone": "eu-1", "labels": {"pool": "gpu"},
//!    "load": {"application_utilization": 0.4, "rps_fractional": 120, "eps": 1}}
//! ]}
//! ```
//!
//! The payload must be exactly one JSON object (no other root such as `[]`,
//! nothing but whitespace after it). Unknown fields are ignored (servers may
//! send more); every known field is checked, and one bad endpoint rejects
//! the whole payload so the last good set stays in force.

use serde::Deserialize;
use std::collections::BTreeMap;

use crate::config::{self, MAX_PRIORITY, MAX_WEIGHT, Mode};
use crate::orca::LoadReport;

/// One endpoint from a valid payload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Discovered {
    pub address: String,
    pub name: Option<String>,
    pub weight: u32,
    pub priority: u8,
    pub draining: bool,
    pub zone: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Load fields, as a report received at poll time.
    pub load: Option<LoadReport>,
}

#[derive(Deserialize)]
struct Payload {
    endpoints: Vec<RawEndpoint>,
}

#[derive(Deserialize)]
struct RawEndpoint {
    address: String,
    name: Option<String>,
    weight: Option<u32>,
    priority: Option<u32>,
    state: Option<String>,
    zone: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    load: Option<RawLoad>,
}

#[derive(Deserialize)]
struct RawLoad {
    cpu_utilization: Option<f64>,
    mem_utilization: Option<f64>,
    application_utilization: Option<f64>,
    rps_fractional: Option<f64>,
    eps: Option<f64>,
    named_metrics: Option<BTreeMap<String, f64>>,
}

/// Parses and checks a payload for `mode` with at most `max` endpoints.
pub fn parse(body: &[u8], mode: Mode, max: usize) -> Result<Vec<Discovered>, String> {
    let payload: Payload =
        switchyard_sdk::config::parse_document(body).map_err(|e| format!("bad JSON: {e}"))?;
    if payload.endpoints.len() > max {
        return Err(format!(
            "{} endpoints > max_endpoints {max}",
            payload.endpoints.len()
        ));
    }
    let mut out: Vec<Discovered> = Vec::with_capacity(payload.endpoints.len());
    for (i, raw) in payload.endpoints.into_iter().enumerate() {
        let d = check(raw, mode).map_err(|e| format!("endpoints[{i}].{e}"))?;
        if out.iter().any(|o| o.address == d.address) {
            return Err(format!("endpoints[{i}].address: duplicate {}", d.address));
        }
        out.push(d);
    }
    Ok(out)
}

fn check(raw: RawEndpoint, mode: Mode) -> Result<Discovered, String> {
    if !config::address_ok(mode, &raw.address) {
        return Err(format!("address: {:?} is not valid here", raw.address));
    }
    if let Some(n) = &raw.name
        && !config::name_ok(n)
    {
        return Err("name: must be 1-64 letters, digits, '_' or '-'".into());
    }
    let weight = raw.weight.unwrap_or(1);
    if !(1..=MAX_WEIGHT).contains(&weight) {
        return Err("weight: must be in [1, 10000]".into());
    }
    let priority = raw.priority.unwrap_or(0);
    if priority > MAX_PRIORITY {
        return Err("priority: must be <= 7".into());
    }
    let draining = match raw.state.as_deref() {
        None | Some("active") => false,
        Some("draining") => true,
        Some(other) => return Err(format!("state: {other:?} is not active|draining")),
    };
    let load = match raw.load {
        None => None,
        Some(l) => Some(load_report(l).map_err(|e| format!("load.{e}"))?),
    };
    Ok(Discovered {
        address: raw.address,
        name: raw.name,
        weight,
        priority: priority as u8,
        draining,
        zone: raw.zone,
        labels: raw.labels.unwrap_or_default(),
        load,
    })
}

fn load_report(l: RawLoad) -> Result<LoadReport, String> {
    let r = LoadReport {
        cpu_utilization: l.cpu_utilization.unwrap_or(0.0),
        mem_utilization: l.mem_utilization.unwrap_or(0.0),
        application_utilization: l.application_utilization.unwrap_or(0.0),
        rps_fractional: l.rps_fractional.unwrap_or(0.0),
        eps: l.eps.unwrap_or(0.0),
        named_metrics: l.named_metrics.unwrap_or_default(),
        ..LoadReport::default()
    };
    let scalars = [
        ("cpu_utilization", r.cpu_utilization),
        ("mem_utilization", r.mem_utilization),
        ("application_utilization", r.application_utilization),
        ("rps_fractional", r.rps_fractional),
        ("eps", r.eps),
    ];
    let named = r.named_metrics.iter().map(|(k, v)| (k.as_str(), *v));
    for (k, v) in scalars.into_iter().chain(named) {
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!("{k}: must be a finite number >= 0"));
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_payload() {
        let body = br#"{"version": 7, "endpoints": [
            {"address": "10.0.0.7:8080", "weight": 2, "priority": 1, "state": "draining",
             "name": "b7", "zone": "eu-1", "labels": {"pool": "gpu"}, "extra": true,
             "load": {"application_utilization": 0.4, "rps_fractional": 120, "eps": 1}},
            {"address": "10.0.0.8:8080"}
        ]}"#;
        let got = parse(body, Mode::Endpoint, 64).unwrap();
        assert_eq!(got.len(), 2);
        let a = &got[0];
        assert_eq!((a.weight, a.priority, a.draining), (2, 1, true));
        assert_eq!(a.labels.get("pool").map(String::as_str), Some("gpu"));
        let load = a.load.as_ref().unwrap();
        assert_eq!(
            (load.application_utilization, load.rps_fractional),
            (0.4, 120.0)
        );
        assert_eq!(
            (got[1].weight, got[1].draining, got[1].load.is_none()),
            (1, false, true)
        );
        assert!(
            parse(br#"{"endpoints": []}"#, Mode::Endpoint, 64)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn garbage_is_rejected_whole() {
        let cases: [(&[u8], &str); 9] = [
            (b"not json", "bad JSON"),
            (br#"{"endpoints": {}}"#, "bad JSON"),
            (br#"{}"#, "bad JSON"),
            (
                br#"{"endpoints": [{"address": "x"}]}"#,
                "endpoints[0].address",
            ),
            (
                br#"{"endpoints": [{"address": "10.0.0.1:1", "weight": 0}]}"#,
                "endpoints[0].weight",
            ),
            (
                br#"{"endpoints": [{"address": "10.0.0.1:1", "priority": 9}]}"#,
                "endpoints[0].priority",
            ),
            (
                br#"{"endpoints": [{"address": "10.0.0.1:1", "state": "gone"}]}"#,
                "endpoints[0].state",
            ),
            (
                br#"{"endpoints": [{"address": "10.0.0.1:1", "load": {"eps": -1}}]}"#,
                "endpoints[0].load.eps",
            ),
            (
                br#"{"endpoints": [{"address": "10.0.0.1:1"}, {"address": "10.0.0.1:1"}]}"#,
                "endpoints[1].address: duplicate",
            ),
        ];
        for (body, want) in cases {
            let e = parse(body, Mode::Endpoint, 64).unwrap_err();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        let many = format!(
            r#"{{"endpoints": [{}]}}"#,
            (0..3)
                .map(|i| format!(r#"{{"address": "10.0.0.{i}:1"}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(
            parse(many.as_bytes(), Mode::Endpoint, 2)
                .unwrap_err()
                .contains("max_endpoints")
        );
    }

    #[test]
    fn only_one_json_object_is_a_payload() {
        const GOOD: &str = r#"{"endpoints": [{"address": "10.0.0.1:1"}]}"#;
        let not_object = "bad JSON: the document must be a JSON object, found ";
        let cases: Vec<(Vec<u8>, String)> = vec![
            (b"[]".to_vec(), format!("{not_object}an array")),
            (b"[3, []]".to_vec(), format!("{not_object}an array")),
            // Read as a `Payload` sequence, this was one endpoint list.
            (
                br#"[[{"address": "10.0.0.1:1"}]]"#.to_vec(),
                format!("{not_object}an array"),
            ),
            (b"null".to_vec(), format!("{not_object}null")),
            (b"3".to_vec(), format!("{not_object}a number")),
            (br#""{}""#.to_vec(), format!("{not_object}a string")),
            (
                b"".to_vec(),
                "bad JSON: the document is empty; it must be a JSON object".into(),
            ),
            (
                format!("{GOOD} x").into_bytes(),
                "bad JSON: trailing data after the JSON object at line 1 column 44".into(),
            ),
            (
                format!("{GOOD}{GOOD}").into_bytes(),
                "bad JSON: trailing data after the JSON object at line 1 column 43".into(),
            ),
            (
                format!("{GOOD}}}").into_bytes(),
                "bad JSON: trailing data after the JSON object at line 1 column 43".into(),
            ),
            (
                format!("{GOOD}\0").into_bytes(),
                "bad JSON: a NUL byte after the JSON object at line 1 column 43".into(),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(parse(&body, Mode::Endpoint, 64), Err(want));
        }
        assert_eq!(
            parse(format!("\n{GOOD}\n").as_bytes(), Mode::Endpoint, 64).map(|d| d.len()),
            Ok(1)
        );
    }

    #[test]
    fn cluster_mode_addresses() {
        assert!(
            parse(
                br#"{"endpoints": [{"address": "pool-a"}]}"#,
                Mode::Cluster,
                8
            )
            .is_ok()
        );
        assert!(
            parse(
                br#"{"endpoints": [{"address": "pool-a"}]}"#,
                Mode::Endpoint,
                8
            )
            .is_err()
        );
    }
}
