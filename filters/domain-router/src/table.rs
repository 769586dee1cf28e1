//! The routing table document (JSON) and its validation.
//!
//! The same document comes inline in the plugin configuration or from the
//! control endpoint; [`parse`] turns bytes into a compiled [`Router`] or an
//! error naming the field (`virtual_hosts[3].rules[0].match.path.regex:
//! invalid regex: ...`).
//!
//! ```json
//! {"version": 7,
//!  "virtual_hosts": [{"name": "shop", "domains": ["shop.example.com", "*.shop.example.com"],
//!    "rules": [
//!      {"name": "api-canary", "match": {"path": {"prefix": "/api"}},
//!       "weighted_clusters": {"clusters": [{"name": "shop-v1", "weight": 90},
//!                                          {"name": "shop-v2", "weight": 10}]}},
//!      {"cluster": "shop-v1", "request_headers_to_set": [{"name": "x-shop", "value": "1"}]}]},
//!   {"domains": ["*"], "rules": [{"tenant": "cells"}]}],
//!  "tenant_maps": {"cells": {"header": "x-tenant-id", "entries": {"acme": "cell-1"}}}}
//! ```

use crate::domain::{DomainIndex, Pattern};
use crate::matcher::{HeaderMatch, PathMatch, RequestMatch, ValueMatch, compile_regex};
use crate::router::{Extras, Router, Rule, Target, TenantMap, VirtualHost, Weighted};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use switchyard_sdk::config::{ConfigError, ensure};

/// Distinct named rules (each is a metric that lives as long as Envoy).
pub const MAX_RULE_STATS: usize = 1000;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
// Boxed slices and boxes below: serde fills a `Vec` starting at capacity 4,
// so a 100 000-domain document of one-rule hosts peaked at 150 MiB while
// parsing (wasm memory never shrinks); slices are shrunk to fit as they go.
pub struct TableDoc {
    /// Operator's version number, reported as the `table_version` gauge.
    pub version: Option<u64>,
    pub virtual_hosts: Vec<VirtualHostDoc>,
    /// Tenant key → cluster maps, referenced by rules' `tenant`.
    pub tenant_maps: BTreeMap<String, TenantMapDoc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VirtualHostDoc {
    pub name: Option<Box<str>>,
    pub domains: Box<[Box<str>]>,
    pub rules: Box<[RuleDoc]>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleDoc {
    /// Names the rule's `rule.<name>.matches` counter; unnamed rules are only
    /// counted in `matches`.
    pub name: Option<Box<str>>,
    #[serde(rename = "match")]
    pub matcher: Option<Box<MatchDoc>>,
    pub cluster: Option<Box<str>>,
    pub weighted_clusters: Option<Box<WeightedDoc>>,
    /// Name of a tenant map: the cluster is the map's entry for the tenant
    /// header; no entry (and no default) means this rule does not match.
    pub tenant: Option<Box<str>>,
    pub request_headers_to_set: Box<[HeaderValueDoc]>,
    pub request_headers_to_remove: Box<[String]>,
    pub host_rewrite: Option<Box<str>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatchDoc {
    pub path: Option<PathDoc>,
    pub methods: Vec<String>,
    pub headers: Vec<HeaderMatchDoc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathDoc {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderMatchDoc {
    pub name: String,
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
    pub present: Option<bool>,
    pub invert: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightedDoc {
    pub clusters: Vec<WeightedClusterDoc>,
    /// Header whose value keeps a client on one side of the split (e.g. a
    /// user id); without it (or when absent) the request id is used.
    pub sticky_header: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightedClusterDoc {
    pub name: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderValueDoc {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantMapDoc {
    pub header: String,
    pub entries: HashMap<String, String>,
    /// Cluster for tenants not in `entries` (and requests without the header).
    pub default_cluster: Option<String>,
}

/// Parses and compiles a table. The document must be exactly one JSON
/// object: empty input (an empty table is written `{}`), another root such
/// as `[]` and trailing data are errors, so a truncated or garbled control
/// answer never wipes or half-replaces the routes. Semantic checks need the
/// compiled form (regexes, duplicate domains), so they live in [`compile`].
pub fn parse(bytes: &[u8]) -> Result<Router, ConfigError> {
    let doc: TableDoc = switchyard_sdk::config::parse_document(bytes)?;
    compile(&doc)
}

/// A lowercase HTTP header name (what Envoy hands to filters).
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b)
        })
}

/// A value that can go into a header: no CR, LF or NUL.
fn valid_header_value(value: &str) -> bool {
    !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

fn check_cluster(name: &str, path: &str) -> Result<(), ConfigError> {
    ensure(!name.is_empty(), path, "must not be empty")?;
    ensure(
        valid_header_value(name) && name.len() <= 256,
        path,
        "must be at most 256 bytes without CR, LF or NUL",
    )
}

/// Interns cluster names: large tables repeat a few clusters many times.
#[derive(Default)]
struct Interner {
    ids: HashMap<String, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.ids.insert(name.to_string(), id);
        self.names.push(name.into());
        id
    }
}

struct Compiler {
    clusters: Interner,
    rule_names: Interner,
    tenant_ids: HashMap<String, u32>,
}

pub fn compile(doc: &TableDoc) -> Result<Router, ConfigError> {
    let mut c = Compiler {
        clusters: Interner::default(),
        rule_names: Interner::default(),
        tenant_ids: HashMap::new(),
    };
    let mut tenant_maps = Vec::with_capacity(doc.tenant_maps.len());
    for (name, map) in &doc.tenant_maps {
        let id = u32::try_from(tenant_maps.len()).unwrap_or(u32::MAX);
        tenant_maps.push(
            c.tenant_map(map)
                .map_err(|e| e.within(&format!("tenant_maps.{name}")))?,
        );
        c.tenant_ids.insert(name.clone(), id);
    }
    let mut domains = DomainIndex::new();
    let mut vhosts = Vec::with_capacity(doc.virtual_hosts.len());
    for (i, vh) in doc.virtual_hosts.iter().enumerate() {
        let at = format!("virtual_hosts[{i}]");
        let id = u32::try_from(i).map_err(|_| ConfigError::new(&at, "too many virtual hosts"))?;
        ensure(
            !vh.domains.is_empty(),
            &format!("{at}.domains"),
            "must not be empty",
        )?;
        for (j, d) in vh.domains.iter().enumerate() {
            let at = format!("{at}.domains[{j}]");
            let pattern = Pattern::parse(d).map_err(|e| ConfigError::new(&at, e))?;
            domains
                .insert(pattern, id)
                .map_err(|e| ConfigError::new(&at, format!("{e} {d:?}")))?;
        }
        let rules = vh
            .rules
            .iter()
            .enumerate()
            .map(|(j, r)| c.rule(r).map_err(|e| e.within(&format!("{at}.rules[{j}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        vhosts.push(VirtualHost {
            rules: rules.into_boxed_slice(),
        });
    }
    ensure(
        c.rule_names.names.len() <= MAX_RULE_STATS,
        "virtual_hosts",
        &format!("at most {MAX_RULE_STATS} distinct rule names (each is a metric)"),
    )?;
    Ok(Router {
        version: doc.version,
        domains,
        vhosts: vhosts.into_boxed_slice(),
        clusters: c.clusters.names.into_boxed_slice(),
        tenant_maps: tenant_maps.into_boxed_slice(),
        rule_names: c.rule_names.names.into_boxed_slice(),
    })
}

impl Compiler {
    fn tenant_map(&mut self, map: &TenantMapDoc) -> Result<TenantMap, ConfigError> {
        ensure(
            valid_header_name(&map.header),
            "header",
            "must be a lowercase header name",
        )?;
        let mut entries =
            crate::router::ByteMap::with_capacity_and_hasher(map.entries.len(), Default::default());
        for (key, cluster) in &map.entries {
            check_cluster(cluster, &format!("entries.{key}"))?;
            entries.insert(key.as_bytes().into(), self.clusters.id(cluster));
        }
        let default = match &map.default_cluster {
            Some(d) => {
                check_cluster(d, "default_cluster")?;
                Some(self.clusters.id(d))
            }
            None => None,
        };
        Ok(TenantMap {
            header: map.header.as_str().into(),
            entries,
            default,
        })
    }

    fn rule(&mut self, r: &RuleDoc) -> Result<Rule, ConfigError> {
        let target = self.target(r)?;
        let matcher = match &r.matcher {
            Some(m) => compile_match(m).map_err(|e| e.within("match"))?,
            None => None,
        };
        let stat = match &r.name {
            Some(n) => {
                ensure(
                    !n.is_empty()
                        && n.len() <= 64
                        && n.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)),
                    "name",
                    "must be 1-64 characters of [A-Za-z0-9_.-]",
                )?;
                Some(self.rule_names.id(n))
            }
            None => None,
        };
        let extras = compile_extras(r)?;
        Ok(Rule {
            matcher,
            target,
            extras,
            stat,
        })
    }

    fn target(&mut self, r: &RuleDoc) -> Result<Target, ConfigError> {
        let chosen = [
            r.cluster.is_some(),
            r.weighted_clusters.is_some(),
            r.tenant.is_some(),
        ];
        ensure(
            chosen.iter().filter(|c| **c).count() == 1,
            "",
            "exactly one of cluster, weighted_clusters, tenant is required",
        )?;
        if let Some(cluster) = &r.cluster {
            check_cluster(cluster, "cluster")?;
            return Ok(Target::Cluster(self.clusters.id(cluster)));
        }
        if let Some(name) = &r.tenant {
            let id = self.tenant_ids.get(&**name).ok_or_else(|| {
                ConfigError::new("tenant", format!("no tenant map named {name:?}"))
            })?;
            return Ok(Target::Tenant(*id));
        }
        let Some(w) = &r.weighted_clusters else {
            // invariant: exactly one of the three is set (checked above).
            return Err(ConfigError::new("", "no target"));
        };
        ensure(
            !w.clusters.is_empty(),
            "weighted_clusters.clusters",
            "must not be empty",
        )?;
        let mut total = 0u64;
        let mut clusters = Vec::with_capacity(w.clusters.len());
        for (i, wc) in w.clusters.iter().enumerate() {
            check_cluster(&wc.name, &format!("weighted_clusters.clusters[{i}].name"))?;
            total += u64::from(wc.weight);
            let cumulative = u32::try_from(total).map_err(|_| {
                ConfigError::new("weighted_clusters.clusters", "weights sum above 2^32-1")
            })?;
            clusters.push((self.clusters.id(&wc.name), cumulative));
        }
        ensure(
            total > 0,
            "weighted_clusters.clusters",
            "weights must not all be 0",
        )?;
        if let Some(h) = &w.sticky_header {
            ensure(
                valid_header_name(h),
                "weighted_clusters.sticky_header",
                "must be a lowercase header name",
            )?;
        }
        Ok(Target::Weighted(Box::new(Weighted {
            clusters: clusters.into_boxed_slice(),
            sticky_header: w.sticky_header.as_deref().map(Into::into),
        })))
    }
}

fn compile_match(m: &MatchDoc) -> Result<Option<Box<RequestMatch>>, ConfigError> {
    if m.path.is_none() && m.methods.is_empty() && m.headers.is_empty() {
        return Ok(None);
    }
    let path = match &m.path {
        None => None,
        Some(p) => Some(compile_path(p).map_err(|e| e.within("path"))?),
    };
    for (i, method) in m.methods.iter().enumerate() {
        ensure(
            !method.is_empty() && method.bytes().all(|b| b.is_ascii_graphic()),
            &format!("methods[{i}]"),
            "must be a method token",
        )?;
    }
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| compile_header(h).map_err(|e| e.within(&format!("headers[{i}]"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Box::new(RequestMatch {
        path,
        methods: m.methods.iter().map(|s| s.as_bytes().to_vec()).collect(),
        headers,
    })))
}

fn compile_path(p: &PathDoc) -> Result<PathMatch, ConfigError> {
    let set = [p.exact.is_some(), p.prefix.is_some(), p.regex.is_some()];
    ensure(
        set.iter().filter(|s| **s).count() == 1,
        "",
        "exactly one of exact, prefix, regex is required",
    )?;
    if let Some(e) = &p.exact {
        ensure(e.starts_with('/'), "exact", "must start with '/'")?;
        return Ok(PathMatch::Exact(e.as_bytes().to_vec()));
    }
    if let Some(pre) = &p.prefix {
        ensure(pre.starts_with('/'), "prefix", "must start with '/'")?;
        return Ok(PathMatch::Prefix(pre.as_bytes().to_vec()));
    }
    let re = p.regex.as_deref().unwrap_or_default();
    Ok(PathMatch::Regex(
        compile_regex(re).map_err(|e| ConfigError::new("regex", e))?,
    ))
}

fn compile_header(h: &HeaderMatchDoc) -> Result<HeaderMatch, ConfigError> {
    ensure(
        valid_header_name(&h.name) || h.name.starts_with(':'),
        "name",
        "must be a lowercase header name",
    )?;
    let set = [
        h.exact.is_some(),
        h.prefix.is_some(),
        h.regex.is_some(),
        h.present.is_some(),
    ];
    ensure(
        set.iter().filter(|s| **s).count() == 1,
        "",
        "exactly one of exact, prefix, regex, present is required",
    )?;
    let value = if let Some(e) = &h.exact {
        ValueMatch::Exact(e.as_bytes().to_vec())
    } else if let Some(p) = &h.prefix {
        ValueMatch::Prefix(p.as_bytes().to_vec())
    } else if let Some(r) = &h.regex {
        ValueMatch::Regex(compile_regex(r).map_err(|e| ConfigError::new("regex", e))?)
    } else {
        ValueMatch::Present(h.present.unwrap_or(true))
    };
    Ok(HeaderMatch {
        name: h.name.clone(),
        value,
        invert: h.invert,
    })
}

fn compile_extras(r: &RuleDoc) -> Result<Option<Box<Extras>>, ConfigError> {
    if r.request_headers_to_set.is_empty()
        && r.request_headers_to_remove.is_empty()
        && r.host_rewrite.is_none()
    {
        return Ok(None);
    }
    for (i, h) in r.request_headers_to_set.iter().enumerate() {
        let at = format!("request_headers_to_set[{i}]");
        ensure(
            valid_header_name(&h.name),
            &format!("{at}.name"),
            "must be a lowercase header name",
        )?;
        ensure(
            valid_header_value(&h.value),
            &format!("{at}.value"),
            "must not contain CR, LF or NUL",
        )?;
    }
    for (i, h) in r.request_headers_to_remove.iter().enumerate() {
        ensure(
            valid_header_name(h),
            &format!("request_headers_to_remove[{i}]"),
            "must be a lowercase header name",
        )?;
    }
    if let Some(host) = &r.host_rewrite {
        ensure(
            !host.is_empty() && valid_header_value(host) && !host.contains(' '),
            "host_rewrite",
            "must be a non-empty host without spaces, CR, LF or NUL",
        )?;
    }
    Ok(Some(Box::new(Extras {
        set: r
            .request_headers_to_set
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        remove: r.request_headers_to_remove.to_vec(),
        host_rewrite: r.host_rewrite.as_deref().map(String::from),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message `parse` gives for `doc`, which must be refused.
    fn refused(doc: &[u8]) -> String {
        match parse(doc) {
            Ok(r) => panic!(
                "{:?} installed as a table of {} domains",
                String::from_utf8_lossy(doc),
                r.domain_count()
            ),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn only_one_json_object_is_a_table() {
        const GOOD: &str =
            r#"{"virtual_hosts": [{"domains": ["a"], "rules": [{"cluster": "c"}]}]}"#;
        let not_object = "the document must be a JSON object, found ";
        let cases: Vec<(Vec<u8>, String)> = vec![
            (b"[]".to_vec(), format!("{not_object}an array")),
            (b"[3, []]".to_vec(), format!("{not_object}an array")),
            (b"null".to_vec(), format!("{not_object}null")),
            (b"3".to_vec(), format!("{not_object}a number")),
            (br#""{}""#.to_vec(), format!("{not_object}a string")),
            (
                b" \n".to_vec(),
                "the document is empty; it must be a JSON object".into(),
            ),
            (
                format!("{GOOD} x").into_bytes(),
                "trailing data after the JSON object at line 1 column 70".into(),
            ),
            (
                format!("{GOOD}{GOOD}").into_bytes(),
                "trailing data after the JSON object at line 1 column 69".into(),
            ),
            (
                format!("{GOOD}}}").into_bytes(),
                "trailing data after the JSON object at line 1 column 69".into(),
            ),
            (
                format!("{GOOD}\0").into_bytes(),
                "a NUL byte after the JSON object at line 1 column 69".into(),
            ),
        ];
        for (doc, want) in cases {
            assert_eq!(refused(&doc), want);
        }
        assert!(parse(format!("\n{GOOD}\n").as_bytes()).is_ok());
    }
}
