//! Host → virtual host lookup with Envoy's precedence.
//!
//! Envoy (`RouteMatcher::findVirtualHost`) lowercases the host, optionally
//! strips the port, then tries: the exact name; suffix wildcards (`*.foo.com`,
//! `*-bar.foo.com`), longest first; prefix wildcards (`foo.*`, `foo-*`),
//! longest first; finally `*`. A wildcard never matches the empty string.
//!
//! Envoy scans one hash map per distinct wildcard length. Here every key
//! lives in one hash map per kind, and the candidate split points of the host
//! are derived from the host itself: label boundaries (a `.` in the host) for
//! the usual dot-aligned wildcards, plus the few distinct lengths of wildcards
//! that are not dot-aligned (`*-bar.foo.com`). A lookup costs
//! O(labels + distinct unaligned lengths) hash probes, whatever the number of
//! domains.

use foldhash::fast::FixedState;
use std::collections::HashMap;
use std::fmt;

type Map<V> = HashMap<Box<[u8]>, V, FixedState>;

/// One domain pattern of a virtual host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `api.example.com`.
    Exact(Vec<u8>),
    /// `*.example.com`: holds `.example.com`.
    Suffix(Vec<u8>),
    /// `api.*`: holds `api.`.
    Prefix(Vec<u8>),
    /// `*`.
    Any,
}

impl Pattern {
    /// Parses and lowercases a pattern the way Envoy's `RouteMatcher` does:
    /// `*` alone matches any host; a leading `*` makes a suffix wildcard and
    /// a trailing one a prefix wildcard; any other `*` is a literal
    /// character (Envoy accepts `a*b.example.com` as an exact name and
    /// `*a*` as the suffix `a*`).
    ///
    /// Errors: empty, longer than 1024 bytes, whitespace or control
    /// characters, and a port: hosts are matched without their port (as
    /// with Envoy's `ignore_port_in_host_matching: true`), so a domain with
    /// one could never match.
    pub fn parse(domain: &str) -> Result<Pattern, String> {
        let d = domain.to_ascii_lowercase().into_bytes();
        if d.is_empty() {
            return Err("must not be empty".into());
        }
        if d == b"*" {
            return Ok(Pattern::Any);
        }
        if d.len() > 1024 {
            return Err("longer than 1024 bytes".into());
        }
        if d.iter()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err("contains whitespace or control characters".into());
        }
        if let Some(i) = port_start(&d) {
            return Err(format!(
                "has a port (\"{}\"): hosts are matched without their port (like Envoy's \
                 ignore_port_in_host_matching), so it could never match; remove the port",
                String::from_utf8_lossy(&d[i..])
            ));
        }
        // Envoy's order: a leading `*` wins over a trailing one (`*a*` is
        // the suffix `a*`).
        let pattern = match (d.first(), d.last()) {
            (Some(b'*'), _) => Pattern::Suffix(d[1..].to_vec()),
            (_, Some(b'*')) => Pattern::Prefix(d[..d.len() - 1].to_vec()),
            _ => Pattern::Exact(d),
        };
        Ok(pattern)
    }
}

/// A pattern that appeared twice (Envoy refuses such a route table too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate;

impl fmt::Display for Duplicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("duplicate domain")
    }
}

/// Inserts a new key; a duplicate leaves the map as it was.
fn insert_new(map: &mut Map<u32>, key: Vec<u8>, value: u32) -> Result<(), Duplicate> {
    match map.entry(key.into_boxed_slice()) {
        std::collections::hash_map::Entry::Occupied(_) => Err(Duplicate),
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(value);
            Ok(())
        }
    }
}

/// Wildcards of one kind (suffix or prefix).
#[derive(Debug, Default)]
struct Wildcards {
    keys: Map<u32>,
    /// Distinct lengths of keys that are not dot-aligned, longest first.
    unaligned: Vec<usize>,
}

impl Wildcards {
    fn insert(&mut self, key: Vec<u8>, aligned: bool, value: u32) -> Result<(), Duplicate> {
        let len = key.len();
        insert_new(&mut self.keys, key, value)?;
        if !aligned && !self.unaligned.contains(&len) {
            self.unaligned.push(len);
            self.unaligned.sort_unstable_by(|a, b| b.cmp(a));
        }
        Ok(())
    }

    fn probe(&self, key: &[u8], probes: &mut u32) -> Option<u32> {
        *probes += 1;
        self.keys.get(key).copied()
    }

    /// Longest suffix key of `host` that is strictly shorter than it.
    fn longest_suffix(&self, host: &[u8], probes: &mut u32) -> Option<u32> {
        if self.keys.is_empty() {
            return None;
        }
        let n = host.len();
        // Start points, ascending = suffixes longest first. Aligned keys start
        // with `.`, so only dots are candidates for them; unaligned keys never
        // start with `.`, so only their lengths at a non-dot are. The two sets
        // are disjoint.
        let dots = (1..n).filter(|&i| host[i] == b'.');
        let unaligned = self
            .unaligned
            .iter()
            .filter(|&&l| l < n)
            .map(|&l| n - l)
            .filter(|&i| host[i] != b'.');
        merged(dots, unaligned, |a, b| a < b).find_map(|start| self.probe(&host[start..], probes))
    }

    /// Longest prefix key of `host` that is strictly shorter than it.
    fn longest_prefix(&self, host: &[u8], probes: &mut u32) -> Option<u32> {
        if self.keys.is_empty() {
            return None;
        }
        let n = host.len();
        // End points, descending = prefixes longest first (same reasoning,
        // mirrored: aligned keys end with `.`).
        let dots = (1..n).rev().filter(|&e| host[e - 1] == b'.');
        let unaligned = self
            .unaligned
            .iter()
            .copied()
            .filter(|&l| l < n && host[l - 1] != b'.');
        merged(dots, unaligned, |a, b| a > b).find_map(|end| self.probe(&host[..end], probes))
    }
}

/// Merges two sorted iterators (by `first`) into one.
fn merged(
    a: impl Iterator<Item = usize>,
    b: impl Iterator<Item = usize>,
    first: impl Fn(usize, usize) -> bool,
) -> impl Iterator<Item = usize> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(&x), Some(&y)) => {
            if first(x, y) {
                a.next()
            } else {
                b.next()
            }
        }
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

/// Domain patterns → virtual host index.
#[derive(Debug, Default)]
pub struct DomainIndex {
    exact: Map<u32>,
    suffixes: Wildcards,
    prefixes: Wildcards,
    any: Option<u32>,
}

impl DomainIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, pattern: Pattern, value: u32) -> Result<(), Duplicate> {
        match pattern {
            Pattern::Exact(d) => insert_new(&mut self.exact, d, value),
            Pattern::Suffix(s) => {
                let aligned = s.first() == Some(&b'.');
                self.suffixes.insert(s, aligned, value)
            }
            Pattern::Prefix(p) => {
                let aligned = p.last() == Some(&b'.');
                self.prefixes.insert(p, aligned, value)
            }
            Pattern::Any if self.any.is_some() => Err(Duplicate),
            Pattern::Any => {
                self.any = Some(value);
                Ok(())
            }
        }
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.exact.len()
            + self.suffixes.keys.len()
            + self.prefixes.keys.len()
            + usize::from(self.any.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The virtual host for a normalized host (see [`normalize_host`]).
    pub fn lookup(&self, host: &[u8]) -> Option<u32> {
        self.lookup_counting(host).0
    }

    /// [`DomainIndex::lookup`] plus the number of hash probes it took (for
    /// the scaling tests).
    pub fn lookup_counting(&self, host: &[u8]) -> (Option<u32>, u32) {
        let mut probes = 1;
        if let Some(v) = self.exact.get(host) {
            return (Some(*v), probes);
        }
        let found = self
            .suffixes
            .longest_suffix(host, &mut probes)
            .or_else(|| self.prefixes.longest_prefix(host, &mut probes))
            .or(self.any);
        (found, probes)
    }
}

/// Envoy's `HeaderUtility::getPortStart`: the last `:` unless it sits inside
/// an IPv6 literal's brackets.
fn port_start(host: &[u8]) -> Option<usize> {
    let colon = host.iter().rposition(|b| *b == b':')?;
    match host.iter().rposition(|b| *b == b']') {
        Some(bracket) if bracket > colon => None,
        _ => Some(colon),
    }
}

/// Lowercases `raw` and strips a port into `out` (reused between requests).
pub fn normalize_host(raw: &[u8], out: &mut Vec<u8>) {
    let host = match port_start(raw) {
        Some(i) => &raw[..i],
        None => raw,
    };
    out.clear();
    out.extend(host.iter().map(u8::to_ascii_lowercase));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(patterns: &[&str]) -> DomainIndex {
        let mut idx = DomainIndex::new();
        for (i, p) in patterns.iter().enumerate() {
            idx.insert(Pattern::parse(p).unwrap(), i as u32).unwrap();
        }
        idx
    }

    fn find(idx: &DomainIndex, host: &str) -> Option<u32> {
        let mut h = Vec::new();
        normalize_host(host.as_bytes(), &mut h);
        idx.lookup(&h)
    }

    /// Envoy's algorithm, literally: one map per wildcard length, longest
    /// first. The reference the fast lookup must agree with.
    fn reference(patterns: &[&str], host: &str) -> Option<u32> {
        let mut h = Vec::new();
        normalize_host(host.as_bytes(), &mut h);
        let pats: Vec<(Pattern, u32)> = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| (Pattern::parse(p).unwrap(), i as u32))
            .collect();
        if let Some((_, v)) = pats.iter().find(|(p, _)| *p == Pattern::Exact(h.clone())) {
            return Some(*v);
        }
        let best = |suffix: bool| {
            pats.iter()
                .filter_map(|(p, v)| match (p, suffix) {
                    (Pattern::Suffix(s), true) if s.len() < h.len() && h.ends_with(s) => {
                        Some((s.len(), *v))
                    }
                    (Pattern::Prefix(s), false) if s.len() < h.len() && h.starts_with(s) => {
                        Some((s.len(), *v))
                    }
                    _ => None,
                })
                .max_by_key(|(l, _)| *l)
                .map(|(_, v)| v)
        };
        best(true).or_else(|| best(false)).or_else(|| {
            pats.iter()
                .find(|(p, _)| *p == Pattern::Any)
                .map(|(_, v)| *v)
        })
    }

    #[test]
    fn precedence_follows_envoy() {
        let pats = [
            "api.example.com",   // 0
            "*.example.com",     // 1
            "*-bar.example.com", // 2
            "www.*",             // 3
            "www.example.*",     // 4
            "foo-*",             // 5
            "*",                 // 6
            "*.com",             // 7
            "API.Other.COM",     // 8
        ];
        let idx = index(&pats);
        let cases = [
            ("api.example.com", Some(0)),
            ("API.EXAMPLE.COM:8080", Some(0)),
            ("x.example.com", Some(1)),
            ("foo-bar.example.com", Some(2)),
            ("-bar.example.com", Some(1)), // `*-bar` needs at least one char
            ("www.example.com", Some(1)),  // suffix beats prefix
            ("www.example.org", Some(4)),  // longest prefix
            ("www.other.org", Some(3)),
            ("foo-x", Some(5)),
            ("foo-", Some(6)), // wildcard never matches empty
            ("example.com", Some(7)),
            (".example.com", Some(7)),
            ("api.other.com", Some(8)),
            ("nothing", Some(6)),
            ("[::1]:80", Some(6)),
        ];
        for (host, want) in cases {
            assert_eq!(find(&idx, host), want, "{host}");
            assert_eq!(reference(&pats, host), want, "reference {host}");
        }
    }

    #[test]
    fn fast_lookup_agrees_with_envoys_scan() {
        // Pseudo-random hosts and patterns over a tiny alphabet so that
        // collisions, dots at odd places and unaligned wildcards all occur.
        let alphabet = b"ab.-";
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut word = |max: u64| {
            let n = 1 + next() % max;
            (0..n)
                .map(|_| alphabet[(next() % 4) as usize] as char)
                .collect::<String>()
        };
        for round in 0..200 {
            let mut pats: Vec<String> = Vec::new();
            for _ in 0..12 {
                let w = word(6);
                let p = match round % 3 {
                    0 => format!("*{w}"),
                    1 => format!("{w}*"),
                    _ => w,
                };
                if !pats.contains(&p) {
                    pats.push(p);
                }
            }
            let refs: Vec<&str> = pats.iter().map(String::as_str).collect();
            let idx = index(&refs);
            for _ in 0..50 {
                let host = word(9);
                assert_eq!(
                    find(&idx, &host),
                    reference(&refs, &host),
                    "{host:?} in {refs:?}"
                );
            }
        }
    }

    #[test]
    fn ports_and_ipv6() {
        let mut out = Vec::new();
        normalize_host(b"Example.COM:443", &mut out);
        assert_eq!(out, b"example.com");
        normalize_host(b"[::1]:8080", &mut out);
        assert_eq!(out, b"[::1]");
        normalize_host(b"[::1]", &mut out);
        assert_eq!(out, b"[::1]");
        normalize_host(b"host:", &mut out);
        assert_eq!(out, b"host");
    }

    #[test]
    fn patterns_are_validated() {
        assert_eq!(Pattern::parse("*"), Ok(Pattern::Any));
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("a b").is_err());
        // Issue 12, item 9: what Envoy accepts is accepted, meaning what
        // Envoy makes of it: `*` inside a name is a literal character.
        assert_eq!(
            Pattern::parse("a*b.example.com"),
            Ok(Pattern::Exact(b"a*b.example.com".to_vec()))
        );
        assert_eq!(Pattern::parse("*a*"), Ok(Pattern::Suffix(b"a*".to_vec())));
        assert_eq!(Pattern::parse("**"), Ok(Pattern::Suffix(b"*".to_vec())));
        let idx = index(&["a*b.example.com", "*a*"]);
        assert_eq!(find(&idx, "a*b.example.com"), Some(0));
        assert_eq!(find(&idx, "axb.example.com"), None, "not a glob");
        assert_eq!(find(&idx, "xa*"), Some(1));
        assert_eq!(find(&idx, "xab"), None);
        // A port could never match a host whose port is stripped: refused,
        // saying so (it used to be accepted and never matched).
        for d in ["x.example.com:443", "[::1]:8080", "x.example.com:*"] {
            let e = Pattern::parse(d).unwrap_err();
            assert!(e.starts_with("has a port"), "{d}: {e}");
        }
        assert!(Pattern::parse("[::1]").is_ok(), "brackets are not a port");
        let mut idx = DomainIndex::new();
        idx.insert(Pattern::parse("A.com").unwrap(), 0).unwrap();
        assert_eq!(
            idx.insert(Pattern::parse("a.COM").unwrap(), 1),
            Err(Duplicate)
        );
        assert_eq!(idx.lookup(b"a.com"), Some(0), "a duplicate changes nothing");
        idx.insert(Pattern::Any, 2).unwrap();
        assert_eq!(idx.insert(Pattern::Any, 3), Err(Duplicate));
        assert_eq!(idx.lookup(b"b.com"), Some(2));
    }
}
