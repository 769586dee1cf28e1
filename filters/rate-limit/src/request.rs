//! Which rules apply to a request and what their keys are. Pure: the request
//! is seen through [`RequestSource`], which the filter implements with host
//! calls and tests (and the fuzz target) with plain data.

use crate::config::{HeaderMatch, KeyPart, Match, Missing, Rule};
use std::cell::OnceCell;

/// Where request attributes come from. Values are bytes: clients send anything.
pub trait RequestSource {
    /// A request header (lowercase name; pseudo-headers included).
    fn header(&self, name: &str) -> Option<Vec<u8>>;
    /// The client address Envoy determined (`source.address` without the
    /// port; see `switchyard_sdk::client_addr`).
    fn client_address(&self) -> Option<String>;
    /// `xds.route_name`.
    fn route_name(&self) -> Option<String>;
}

/// A request with the attributes several rules read computed once.
pub struct Request<'a, S: RequestSource> {
    source: &'a S,
    path: OnceCell<Option<String>>,
    host: OnceCell<Option<String>>,
    method: OnceCell<Option<String>>,
    client: OnceCell<Option<String>>,
    route: OnceCell<Option<String>>,
}

impl<'a, S: RequestSource> Request<'a, S> {
    pub fn new(source: &'a S) -> Self {
        Request {
            source,
            path: OnceCell::new(),
            host: OnceCell::new(),
            method: OnceCell::new(),
            client: OnceCell::new(),
            route: OnceCell::new(),
        }
    }

    /// `:path` without query or fragment.
    pub fn path(&self) -> Option<&str> {
        self.path
            .get_or_init(|| {
                let raw = self.source.header(":path")?;
                let raw = String::from_utf8_lossy(&raw);
                let end = raw.find(['?', '#']).unwrap_or(raw.len());
                Some(raw[..end].to_string())
            })
            .as_deref()
    }

    /// `:authority` without port, lowercase.
    pub fn host(&self) -> Option<&str> {
        self.host
            .get_or_init(|| {
                let raw = self.source.header(":authority")?;
                Some(strip_port(&String::from_utf8_lossy(&raw)).to_ascii_lowercase())
            })
            .as_deref()
    }

    pub fn method(&self) -> Option<&str> {
        self.method
            .get_or_init(|| {
                let raw = self.source.header(":method")?;
                Some(String::from_utf8_lossy(&raw).to_ascii_uppercase())
            })
            .as_deref()
    }

    /// The client address Envoy determined, as text.
    pub fn client_address(&self) -> Option<&str> {
        self.client
            .get_or_init(|| self.source.client_address())
            .as_deref()
    }

    pub fn route_name(&self) -> Option<&str> {
        self.route
            .get_or_init(|| self.source.route_name().filter(|r| !r.is_empty()))
            .as_deref()
    }

    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.source.header(name)
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Whether `host` is covered by a configured domain (`name`, `*.suffix`, `*`).
pub fn domain_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            // At least one label before ".suffix".
            let Some(cut) = host.len().checked_sub(suffix.len() + 1) else {
                return false;
            };
            cut > 0
                && host.is_char_boundary(cut)
                && host.as_bytes()[cut] == b'.'
                && host[cut + 1..].eq_ignore_ascii_case(suffix)
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Whether a rule's match conditions hold.
pub fn matches<S: RequestSource>(m: &Match, req: &Request<'_, S>) -> bool {
    if !m.domains.is_empty() {
        let Some(host) = req.host() else {
            return false;
        };
        if !m.domains.iter().any(|d| domain_matches(d, host)) {
            return false;
        }
    }
    if m.path_prefix.is_some() || m.path_exact.is_some() {
        let Some(path) = req.path() else {
            return false;
        };
        if let Some(p) = &m.path_prefix
            && !path.starts_with(p.as_str())
        {
            return false;
        }
        if let Some(p) = &m.path_exact
            && path != p
        {
            return false;
        }
    }
    if !m.methods.is_empty() {
        let Some(method) = req.method() else {
            return false;
        };
        if !m.methods.iter().any(|x| x == method) {
            return false;
        }
    }
    m.headers.iter().all(|h| header_matches(h, req))
}

fn header_matches<S: RequestSource>(h: &HeaderMatch, req: &Request<'_, S>) -> bool {
    let value = req.header(&h.name);
    if let Some(present) = h.present {
        return value.is_some() == present;
    }
    let Some(value) = value else {
        return false;
    };
    if let Some(exact) = &h.exact {
        return value == exact.as_bytes();
    }
    if let Some(prefix) = &h.prefix {
        return value.starts_with(prefix.as_bytes());
    }
    false
}

/// One key part's value; `None` = absent (shared "missing" bucket).
pub type PartValue = Option<Vec<u8>>;

/// The key parts of `rule` for this request, or `None` when the rule does not
/// apply (a part configured `missing: skip_rule` has no value).
pub fn key_parts<S: RequestSource>(rule: &Rule, req: &Request<'_, S>) -> Option<Vec<PartValue>> {
    let mut parts = Vec::with_capacity(rule.key.len());
    for part in &rule.key {
        let (value, missing) = match part {
            KeyPart::ClientAddress { .. } => (
                req.client_address().map(|s| s.as_bytes().to_vec()),
                Missing::Share,
            ),
            KeyPart::Header { name, missing, .. } => (req.header(name), *missing),
            KeyPart::Path { .. } => (req.path().map(|s| s.as_bytes().to_vec()), Missing::Share),
            KeyPart::Domain { .. } => (req.host().map(|s| s.as_bytes().to_vec()), Missing::Share),
            KeyPart::Constant { value, .. } => (Some(value.as_bytes().to_vec()), Missing::Share),
            KeyPart::RouteName { missing, .. } => {
                (req.route_name().map(|s| s.as_bytes().to_vec()), *missing)
            }
        };
        if value.is_none() && missing == Missing::SkipRule {
            return None;
        }
        parts.push(value);
    }
    Some(parts)
}

/// The bytes a local bucket is keyed by: the rule name and every part,
/// length-prefixed so no two different part lists give the same bytes.
pub fn local_key(rule_name: &str, parts: &[PartValue]) -> Vec<u8> {
    let mut key = Vec::with_capacity(rule_name.len() + 1 + parts.len() * 24);
    key.extend_from_slice(rule_name.as_bytes());
    key.push(0);
    for part in parts {
        match part {
            Some(v) => {
                key.push(1);
                key.extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_le_bytes());
                key.extend_from_slice(v);
            }
            None => key.push(0),
        }
    }
    key
}

/// What an absent part is sent as to the rate limit service (entry values
/// must not be empty).
pub const MISSING_VALUE: &str = "_missing";

/// RLS descriptor entries `(key, value)` for a global rule. Header values
/// that are not UTF-8 are sent lossily (protobuf strings must be UTF-8).
pub fn descriptor_entries(rule: &Rule, parts: &[PartValue]) -> Vec<(String, String)> {
    rule.key
        .iter()
        .zip(parts)
        .map(|(part, value)| {
            let value = match value {
                Some(v) if !v.is_empty() => String::from_utf8_lossy(v).into_owned(),
                _ => MISSING_VALUE.to_string(),
            };
            (part.descriptor_key().to_string(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::collections::BTreeMap;

    #[derive(Default)]
    pub struct Fake {
        headers: BTreeMap<String, Vec<u8>>,
        peer: Option<String>,
        route: Option<String>,
    }

    impl Fake {
        fn new(pairs: &[(&str, &str)]) -> Self {
            Fake {
                headers: pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect(),
                peer: Some("7.7.7.7".into()),
                route: Some("r1".into()),
            }
        }
    }

    impl RequestSource for Fake {
        fn header(&self, name: &str) -> Option<Vec<u8>> {
            self.headers.get(name).cloned()
        }
        fn client_address(&self) -> Option<String> {
            self.peer.clone()
        }
        fn route_name(&self) -> Option<String> {
            self.route.clone()
        }
    }

    fn rule(json: &str) -> Rule {
        let c: Config = switchyard_sdk::config::parse(
            format!(r#"{{"global": {{"cluster": "c", "domain": "d"}}, "rules": [{json}]}}"#)
                .as_bytes(),
        )
        .unwrap();
        c.rules.into_iter().next().unwrap()
    }

    #[test]
    fn strip_port_forms() {
        assert_eq!(strip_port("a.test:8080"), "a.test");
        assert_eq!(strip_port("a.test"), "a.test");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1"), "[::1");
        assert_eq!(strip_port("a:"), "a:");
    }

    #[test]
    fn domains() {
        assert!(domain_matches("*", "x"));
        assert!(domain_matches("api.test", "API.test"));
        assert!(domain_matches("*.example.com", "a.example.com"));
        assert!(domain_matches("*.example.com", "a.b.EXAMPLE.com"));
        assert!(!domain_matches("*.example.com", "example.com"));
        assert!(!domain_matches("*.example.com", "badexample.com"));
        assert!(!domain_matches("*.example.com", ".example.com"));
    }

    #[test]
    fn match_conditions() {
        let r = rule(
            r#"{"name": "a", "limit": {"requests": 1, "per": "second"},
                "match": {"domains": ["api.test"], "path_prefix": "/v1/", "methods": ["GET"],
                          "headers": [{"name": "x-tier", "exact": "free"}, {"name": "x-skip", "present": false}]}}"#,
        );
        let base = [
            (":authority", "API.test:443"),
            (":path", "/v1/x?y=1"),
            (":method", "get"),
            ("x-tier", "free"),
        ];
        let ok = Fake::new(&base);
        assert!(matches(&r.matcher, &Request::new(&ok)));
        let mut variants = Vec::new();
        for (i, bad) in [
            (":authority", "other.test"),
            (":path", "/v2/x"),
            (":method", "POST"),
            ("x-tier", "paid"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut h = base.to_vec();
            h[i] = bad;
            variants.push(Fake::new(&h));
        }
        let mut skip = base.to_vec();
        skip.push(("x-skip", "1"));
        variants.push(Fake::new(&skip));
        variants.push(Fake::new(&base[1..]));
        for f in &variants {
            assert!(!matches(&r.matcher, &Request::new(f)));
        }
        // The query is not part of the path.
        let exact = rule(
            r#"{"name": "a", "limit": {"requests": 1, "per": "second"}, "match": {"path_exact": "/x"}}"#,
        );
        assert!(matches(
            &exact.matcher,
            &Request::new(&Fake::new(&[(":path", "/x?q#f")]))
        ));
        assert!(!matches(
            &exact.matcher,
            &Request::new(&Fake::new(&[(":path", "/xy")]))
        ));
        // Empty match: everything.
        let all = rule(r#"{"name": "a", "limit": {"requests": 1, "per": "second"}}"#);
        assert!(matches(&all.matcher, &Request::new(&Fake::default())));
    }

    #[test]
    fn key_parts_and_missing_policy() {
        let r = rule(
            r#"{"name": "a", "limit": {"requests": 1, "per": "second"},
                "key": [{"type": "client_address"}, {"type": "header", "name": "x-key"},
                        {"type": "path"}, {"type": "domain"}, {"type": "constant", "value": "c"},
                        {"type": "route_name"}]}"#,
        );
        let f = Fake::new(&[
            (":path", "/p?q"),
            (":authority", "H.test:1"),
            ("x-forwarded-for", "6.6.6.6, 7.7.7.7"),
        ]);
        let parts = key_parts(&r, &Request::new(&f)).unwrap();
        let as_str: Vec<Option<String>> = parts
            .iter()
            .map(|p| p.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()))
            .collect();
        assert_eq!(
            as_str,
            [
                Some("7.7.7.7".into()),
                None,
                Some("/p".into()),
                Some("h.test".into()),
                Some("c".into()),
                Some("r1".into())
            ]
        );
        let skip = rule(
            r#"{"name": "a", "limit": {"requests": 1, "per": "second"},
                "key": [{"type": "header", "name": "x-key", "missing": "skip_rule"}]}"#,
        );
        assert_eq!(key_parts(&skip, &Request::new(&f)), None);
        let entries = descriptor_entries(&r, &parts);
        assert_eq!(entries[0], ("remote_address".into(), "7.7.7.7".into()));
        assert_eq!(entries[1], ("x-key".into(), MISSING_VALUE.into()));
        assert_eq!(entries[4], ("generic_key".into(), "c".into()));
    }

    #[test]
    fn local_keys_are_unambiguous() {
        let a = local_key("r", &[Some(b"ab".to_vec()), Some(b"c".to_vec())]);
        let b = local_key("r", &[Some(b"a".to_vec()), Some(b"bc".to_vec())]);
        let c = local_key("r", &[None, Some(b"c".to_vec())]);
        let d = local_key("r", &[Some(Vec::new()), Some(b"c".to_vec())]);
        let e = local_key("s", &[Some(b"ab".to_vec()), Some(b"c".to_vec())]);
        let all = [a, b, c, d, e];
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(all[i], all[j], "{i} vs {j}");
            }
        }
    }

    #[test]
    fn the_key_is_envoys_client_address_whatever_xff_says() {
        let r = rule(
            r#"{"name": "a", "limit": {"requests": 1, "per": "second"}, "key": [{"type": "client_address"}]}"#,
        );
        let keys: Vec<Vec<u8>> = ["1.1.1.1", "2.2.2.2, 3.3.3.3", "garbage", "7.7.7.7"]
            .iter()
            .map(|forged| {
                let xff = format!("{forged}, 8.8.8.8");
                let f = Fake::new(&[("x-forwarded-for", &xff)]);
                local_key("a", &key_parts(&r, &Request::new(&f)).unwrap())
            })
            .collect();
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
    }
}
