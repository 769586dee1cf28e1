//! Differential: the fast domain index against Envoy's algorithm written
//! plainly (exact; longest suffix wildcard shorter than the host; longest
//! prefix wildcard; `*`). Input: patterns, one per line, then `\0`, then
//! hosts, one per line.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_domain_router::domain::{DomainIndex, Pattern, normalize_host};

fn reference(patterns: &[(Pattern, u32)], host: &[u8]) -> Option<u32> {
    if let Some((_, v)) = patterns
        .iter()
        .find(|(p, _)| *p == Pattern::Exact(host.to_vec()))
    {
        return Some(*v);
    }
    let longest = |suffix: bool| {
        patterns
            .iter()
            .filter_map(|(p, v)| match (p, suffix) {
                (Pattern::Suffix(s), true) if s.len() < host.len() && host.ends_with(s) => {
                    Some((s.len(), *v))
                }
                (Pattern::Prefix(s), false) if s.len() < host.len() && host.starts_with(s) => {
                    Some((s.len(), *v))
                }
                _ => None,
            })
            .max_by_key(|(l, _)| *l)
            .map(|(_, v)| v)
    };
    longest(true).or_else(|| longest(false)).or_else(|| {
        patterns
            .iter()
            .find(|(p, _)| *p == Pattern::Any)
            .map(|(_, v)| *v)
    })
}

fuzz_target!(|data: &[u8]| {
    let (pats, hosts) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[..0]),
    };
    let Ok(pats) = std::str::from_utf8(pats) else {
        return;
    };
    let mut index = DomainIndex::new();
    let mut kept = Vec::new();
    for (i, line) in pats.lines().enumerate() {
        if let Ok(p) = Pattern::parse(line)
            && index.insert(p.clone(), i as u32).is_ok()
        {
            kept.push((p, i as u32));
        }
    }
    let mut host = Vec::new();
    for raw in hosts.split(|b| *b == b'\n') {
        normalize_host(raw, &mut host);
        assert_eq!(index.lookup(&host), reference(&kept, &host), "{host:?}");
    }
});
