//! A compiled routing table and the per-request decision.
//!
//! Cluster names are interned (rules hold `u32` ids) and rules keep their
//! rarely used parts boxed, so a table of 100 000 one-rule domains stays
//! small. Built by [`crate::table::compile`].

use crate::domain::DomainIndex;
use crate::matcher::{RequestMatch, RequestView};
use foldhash::fast::FixedState;
use std::collections::HashMap;
use switchyard_sdk::codec::fnv1a64;

/// Byte-string keyed map with a fixed, fast hasher.
pub type ByteMap<V> = HashMap<Box<[u8]>, V, FixedState>;

#[derive(Debug)]
pub struct Router {
    pub version: Option<u64>,
    pub(crate) domains: DomainIndex,
    pub(crate) vhosts: Box<[VirtualHost]>,
    pub(crate) clusters: Box<[Box<str>]>,
    pub(crate) tenant_maps: Box<[TenantMap]>,
    pub(crate) rule_names: Box<[Box<str>]>,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub(crate) rules: Box<[Rule]>,
}

#[derive(Debug)]
pub struct Rule {
    pub(crate) matcher: Option<Box<RequestMatch>>,
    pub(crate) target: Target,
    pub(crate) extras: Option<Box<Extras>>,
    /// Index into [`Router::rule_names`] for named rules.
    pub(crate) stat: Option<u32>,
}

#[derive(Debug)]
pub enum Target {
    Cluster(u32),
    Weighted(Box<Weighted>),
    /// Index into [`Router::tenant_maps`].
    Tenant(u32),
}

#[derive(Debug)]
pub struct Weighted {
    /// (cluster id, cumulative weight), in order.
    pub(crate) clusters: Box<[(u32, u32)]>,
    pub(crate) sticky_header: Option<Box<str>>,
}

#[derive(Debug)]
pub struct TenantMap {
    pub(crate) header: Box<str>,
    pub(crate) entries: ByteMap<u32>,
    pub(crate) default: Option<u32>,
}

/// Request changes a matched rule asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extras {
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
    pub host_rewrite: Option<String>,
}

/// What the table decided for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    pub cluster: &'a str,
    /// The matched rule's name index (for its counter), if named.
    pub stat: Option<u32>,
    pub extras: Option<&'a Extras>,
}

/// Where the weighted split gets its key when the rule has no sticky header
/// (or the request lacks it).
pub struct SplitKey<'a> {
    /// Usually `x-request-id`.
    pub request_id_header: &'a str,
    /// Fallback entropy when the request has neither header.
    pub random: &'a mut dyn FnMut() -> u64,
}

/// 64-bit finalizer (MurmurHash3 fmix64): FNV's low bits are weak for
/// similar keys such as UUIDs; this spreads every input bit.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Stable bucket in `0..total` for a key.
pub fn bucket(key: &[u8], total: u32) -> u32 {
    // invariant: total > 0 (validated); the result is < total so fits u32.
    u32::try_from(mix(fnv1a64(key)) % u64::from(total.max(1))).unwrap_or(0)
}

impl Weighted {
    fn pick(&self, request: &dyn RequestView, key: &mut SplitKey<'_>) -> u32 {
        let total = self.clusters.last().map_or(1, |(_, c)| *c);
        let value = self
            .sticky_header
            .as_deref()
            .and_then(|h| request.header(h))
            .or_else(|| request.header(key.request_id_header));
        let b = match value {
            Some(v) => bucket(&v, total),
            None => u32::try_from(mix((key.random)()) % u64::from(total.max(1))).unwrap_or(0),
        };
        self.clusters
            .iter()
            .find(|(_, cumulative)| b < *cumulative)
            .or(self.clusters.last())
            .map_or(0, |(id, _)| *id)
    }
}

impl Router {
    /// An empty table: nothing matches.
    pub fn empty() -> Router {
        Router {
            version: None,
            domains: DomainIndex::new(),
            vhosts: Box::new([]),
            clusters: Box::new([]),
            tenant_maps: Box::new([]),
            rule_names: Box::new([]),
        }
    }

    /// Names of the named rules, by stat index.
    pub fn rule_names(&self) -> &[Box<str>] {
        &self.rule_names
    }

    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    pub fn tenant_key_count(&self) -> usize {
        self.tenant_maps.iter().map(|m| m.entries.len()).sum()
    }

    /// The virtual host index for a normalized host, and how many hash
    /// probes finding it took (diagnostics and the scaling tests).
    pub fn lookup_host(&self, host: &[u8]) -> (Option<u32>, u32) {
        self.domains.lookup_counting(host)
    }

    /// The first matching rule of the host's virtual host, in order.
    /// `host` is normalized (lowercase, no port).
    pub fn decide<'a>(
        &'a self,
        host: &[u8],
        request: &dyn RequestView,
        key: &mut SplitKey<'_>,
    ) -> Option<Decision<'a>> {
        let vhost = self
            .vhosts
            .get(usize::try_from(self.domains.lookup(host)?).ok()?)?;
        vhost.rules.iter().find_map(|rule| {
            if let Some(m) = &rule.matcher
                && !m.matches(request)
            {
                return None;
            }
            let cluster = match &rule.target {
                Target::Cluster(id) => *id,
                Target::Weighted(w) => w.pick(request, key),
                Target::Tenant(t) => {
                    let map = self.tenant_maps.get(usize::try_from(*t).ok()?)?;
                    request
                        .header(&map.header)
                        .and_then(|k| map.entries.get(k.as_slice()).copied())
                        .or(map.default)?
                }
            };
            Some(Decision {
                cluster: self.clusters.get(usize::try_from(cluster).ok()?)?,
                stat: rule.stat,
                extras: rule.extras.as_deref(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::matcher::tests::FakeRequest;
    use crate::table::parse;

    fn decide(table: &str, host: &str, req: &FakeRequest) -> Option<String> {
        let router = parse(table.as_bytes()).unwrap();
        let mut h = Vec::new();
        crate::domain::normalize_host(host.as_bytes(), &mut h);
        let mut random = || 7u64;
        let mut key = super::SplitKey {
            request_id_header: "x-request-id",
            random: &mut random,
        };
        router
            .decide(&h, req, &mut key)
            .map(|d| d.cluster.to_string())
    }

    const TABLE: &str = r#"{
      "version": 3,
      "virtual_hosts": [
        {"name": "shop", "domains": ["shop.example.com", "*.shop.example.com"], "rules": [
          {"name": "admin", "match": {"path": {"prefix": "/admin"}, "methods": ["POST"]}, "cluster": "admin"},
          {"match": {"headers": [{"name": "x-beta", "exact": "1"}]}, "cluster": "beta"},
          {"match": {"path": {"regex": "/v[0-9]+/.*"}}, "cluster": "versioned"},
          {"cluster": "shop", "request_headers_to_set": [{"name": "x-shop", "value": "1"}],
           "host_rewrite": "shop.internal"}
        ]},
        {"domains": ["*"], "rules": [{"tenant": "cells"}, {"match": {"path": {"exact": "/health"}}, "cluster": "health"}]}
      ],
      "tenant_maps": {"cells": {"header": "x-tenant-id", "entries": {"acme": "cell-1", "globex": "cell-2"}}}
    }"#;

    #[test]
    fn hosts_sending_to_one_cluster_share_a_compiled_host() {
        let table = r#"{"virtual_hosts": [
            {"domains": ["a.test"], "rules": [{"cluster": "one"}]},
            {"domains": ["b.test", "*.b.test"], "rules": [{"cluster": "two"}]},
            {"domains": ["c.test"], "rules": [{"cluster": "one"}]},
            {"domains": ["d.test"], "rules": [{"name": "d", "cluster": "one"}]},
            {"domains": ["e.test"], "rules": [{"cluster": "one", "host_rewrite": "e"}]},
            {"domains": ["f.test"], "rules": [{"match": {"path": {"prefix": "/x"}}, "cluster": "two"}]}]}"#;
        let router = parse(table.as_bytes()).unwrap();
        // a and c share; b; d (named: its own counter); e (an edit); f (a match).
        assert_eq!(router.vhosts.len(), 5);
        assert_eq!(router.domain_count(), 7);
        let get = FakeRequest::new("GET", "/", &[]);
        for (host, cluster) in [
            ("a.test", Some("one")),
            ("c.test", Some("one")),
            ("x.b.test", Some("two")),
            ("d.test", Some("one")),
            ("e.test", Some("one")),
            ("f.test", None),
        ] {
            assert_eq!(decide(table, host, &get).as_deref(), cluster, "{host}");
        }
        assert_eq!(
            decide(table, "f.test", &FakeRequest::new("GET", "/x", &[])).as_deref(),
            Some("two")
        );
    }

    #[test]
    fn rules_match_in_order() {
        let get = |path: &str, h: &[(&str, &str)]| FakeRequest::new("GET", path, h);
        assert_eq!(
            decide(
                TABLE,
                "shop.example.com",
                &FakeRequest::new("POST", "/admin/x", &[])
            ),
            Some("admin".into())
        );
        assert_eq!(
            decide(
                TABLE,
                "a.shop.example.com",
                &get("/admin/x", &[("x-beta", "1")])
            ),
            Some("beta".into()),
            "GET skips the POST-only rule"
        );
        assert_eq!(
            decide(TABLE, "shop.example.com", &get("/v2/x", &[])),
            Some("versioned".into())
        );
        assert_eq!(
            decide(TABLE, "SHOP.example.com:80", &get("/", &[])),
            Some("shop".into())
        );
    }

    #[test]
    fn tenant_lookup_falls_through_on_miss() {
        let get = |path: &str, h: &[(&str, &str)]| FakeRequest::new("GET", path, h);
        assert_eq!(
            decide(TABLE, "x.test", &get("/", &[("x-tenant-id", "acme")])),
            Some("cell-1".into())
        );
        assert_eq!(
            decide(
                TABLE,
                "x.test",
                &get("/health", &[("x-tenant-id", "nobody")])
            ),
            Some("health".into())
        );
        assert_eq!(decide(TABLE, "x.test", &get("/", &[])), None);
    }

    #[test]
    fn extras_and_version() {
        let router = parse(TABLE.as_bytes()).unwrap();
        assert_eq!(router.version, Some(3));
        assert_eq!(router.rule_names().len(), 1);
        let mut random = || 0u64;
        let mut key = super::SplitKey {
            request_id_header: "x-request-id",
            random: &mut random,
        };
        let d = router
            .decide(
                b"shop.example.com",
                &FakeRequest::new("GET", "/", &[]),
                &mut key,
            )
            .unwrap();
        let extras = d.extras.unwrap();
        assert_eq!(extras.host_rewrite.as_deref(), Some("shop.internal"));
        assert_eq!(extras.set, vec![("x-shop".to_string(), "1".to_string())]);
    }

    #[test]
    fn weighted_split_is_stable_and_close_to_weights() {
        let table = r#"{"virtual_hosts": [{"domains": ["*"], "rules": [
            {"match": {"headers": [{"name": "x-user", "present": true}]},
             "weighted_clusters": {"sticky_header": "x-user",
               "clusters": [{"name": "stable", "weight": 90}, {"name": "canary", "weight": 10}]}},
            {"weighted_clusters": {"clusters": [{"name": "stable", "weight": 90}, {"name": "canary", "weight": 10}]}}]}]}"#;
        let mut canary = 0;
        for i in 0..20_000 {
            // UUID-like request ids differing in a few characters.
            let id = format!("8c2b{i:04x}-1f2e-4d3c-9b8a-{:012x}", i * 7919);
            let req = FakeRequest::new("GET", "/", &[("x-request-id", &id)]);
            let first = decide(table, "h", &req);
            assert_eq!(first, decide(table, "h", &req), "same id, same side");
            canary += usize::from(first.as_deref() == Some("canary"));
        }
        let share = canary as f64 / 20_000.0;
        assert!((share - 0.10).abs() < 0.01, "canary share {share}");
        // The sticky header wins over the request id.
        let a = FakeRequest::new("GET", "/", &[("x-user", "u1"), ("x-request-id", "r1")]);
        let b = FakeRequest::new("GET", "/", &[("x-user", "u1"), ("x-request-id", "r2")]);
        assert_eq!(decide(table, "h", &a), decide(table, "h", &b));
    }

    #[test]
    fn invalid_tables_name_the_field() {
        let err = |t: &str| parse(t.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            err(r#"{"virtual_hosts": [{"domains": ["a"], "rules": [{"match": {"path": {"regex": "("}}, "cluster": "c"}]}]}"#)
                .split(':')
                .next(),
            Some("virtual_hosts[0].rules[0].match.path.regex")
        );
        assert!(
            err(r#"{"virtual_hosts": [{"domains": ["a", "A"], "rules": []}]}"#)
                .starts_with("virtual_hosts[0].domains[1]: duplicate domain")
        );
        assert!(err(r#"{"virtual_hosts": [{"domains": ["a"], "rules": [{"cluster": "c", "tenant": "t"}]}]}"#)
            .contains("exactly one of cluster"));
        assert!(
            err(r#"{"virtual_hosts": [{"domains": ["a"], "rules": [{"tenant": "t"}]}]}"#)
                .contains("no tenant map named")
        );
        assert!(err(r#"{"virtual_hosts": [{"domains": ["a"], "rules": [{"weighted_clusters": {"clusters": [{"name": "a", "weight": 0}]}}]}]}"#)
            .contains("weights must not all be 0"));
        assert!(err(r#"{"virtual_hostz": []}"#).contains("unknown field"));
        assert!(err("").contains("the document is empty"));
        assert!(
            err(r#"{"virtual_hosts": [{"domains": ["a"], "rules": [{"cluster": "bad\r\nx"}]}]}"#)
                .contains("CR, LF")
        );
        assert!(parse(b"{}").is_ok());
    }
}
