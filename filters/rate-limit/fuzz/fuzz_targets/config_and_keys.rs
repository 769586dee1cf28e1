//! Config parsing and key extraction on arbitrary input.
//!
//! Input: `<config JSON> \0 <request>`; the request is `name: value` lines
//! (values are arbitrary bytes), `@peer`/`@route` lines set `source.address`
//! and the route name. Nothing may panic: a bad config is an error, every
//! request yields keys or "rule does not apply".
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_rate_limit::config::{Config, Scope};
use switchyard_rate_limit::gcra::{self, Rate};
use switchyard_rate_limit::request::{self, Request, RequestSource};
use switchyard_sdk::slots::SlotTable;

struct Fuzzed {
    headers: Vec<(String, Vec<u8>)>,
    peer: Option<String>,
    route: Option<String>,
}

impl RequestSource for Fuzzed {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
    fn client_address(&self) -> Option<String> {
        self.peer
            .as_deref()
            .and_then(switchyard_sdk::client_addr::host_of)
            .map(str::to_string)
    }
    fn route_name(&self) -> Option<String> {
        self.route.clone()
    }
}

fn parse_request(bytes: &[u8]) -> Fuzzed {
    let mut r = Fuzzed {
        headers: Vec::new(),
        peer: None,
        route: None,
    };
    for line in bytes.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        // Pseudo-headers start with ':' themselves: split at the next colon.
        let split = if colon == 0 {
            line[1..].iter().position(|b| *b == b':').map(|p| p + 1)
        } else {
            Some(colon)
        };
        let Some(split) = split else { continue };
        let name = String::from_utf8_lossy(&line[..split])
            .trim()
            .to_ascii_lowercase();
        let value = line[split + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[split + 1..])
            .to_vec();
        match name.as_str() {
            "@peer" => r.peer = Some(String::from_utf8_lossy(&value).into_owned()),
            "@route" => r.route = Some(String::from_utf8_lossy(&value).into_owned()),
            _ => r.headers.push((name, value)),
        }
    }
    r
}

fuzz_target!(|data: &[u8]| {
    let (config, req) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(config) = switchyard_sdk::config::parse::<Config>(config) else {
        return;
    };
    let source = parse_request(req);
    let request = Request::new(&source);
    let table = SlotTable::new(config.shared_prefix.as_str(), config.slots);
    for rule in &config.rules {
        if !request::matches(&rule.matcher, &request) {
            continue;
        }
        let Some(parts) = request::key_parts(rule, &request) else {
            continue;
        };
        match (rule.scope, rule.limit) {
            (Scope::Local, Some(limit)) => {
                let slot = table.slot(&request::local_key(&rule.name, &parts));
                assert!(slot.index < table.slots());
                let rate = Rate::new(
                    u64::from(limit.requests),
                    limit.per.seconds(),
                    u64::from(limit.burst()),
                );
                let (_, out) = gcra::step(None, slot.fingerprint, u64::MAX / 2, &rate);
                assert!(out.allowed, "a fresh bucket admits");
            }
            _ => {
                let entries = request::descriptor_entries(rule, &parts);
                assert_eq!(entries.len(), rule.key.len());
                assert!(entries.iter().all(|(k, v)| !k.is_empty() && !v.is_empty()));
            }
        }
    }
});
