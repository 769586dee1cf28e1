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
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use switchyard_sdk::config::{ConfigError, Source, ensure, nested_error};

/// Distinct named rules (each is a metric that lives as long as Envoy).
pub const MAX_RULE_STATS: usize = 1000;

// Boxed slices and boxes below: serde fills a `Vec` starting at capacity 4;
// slices are shrunk to fit as they go.
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
/// answer never wipes or half-replaces the routes. Semantic checks (regexes,
/// duplicate domains) run as each virtual host is read (see [`Table`]).
pub fn parse<'a>(src: impl Into<Source<'a>>) -> Result<Router, ConfigError> {
    let table: Table = switchyard_sdk::config::parse_document(src)?;
    Ok(table.0)
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

/// A routing table compiled while it is read: each virtual host is compiled
/// as soon as it is parsed and its document dropped, so memory peaks at the
/// compiled router plus one virtual host's document, not at the whole
/// document tree (wasm memory never shrinks below its peak, and a
/// 100 000-domain tree is larger than the router built from it).
///
/// Shape: the JSON object in the module docs; keys `version`,
/// `virtual_hosts`, `tenant_maps`, each at most once, in any order (a rule's
/// `tenant` is resolved once the whole object is read). Errors name the
/// field, as [`switchyard_sdk::config::parse_document`] does.
#[derive(Debug)]
pub struct Table(pub Router);

impl<'de> Deserialize<'de> for Table {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TableVisitor)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum TableField {
    Version,
    VirtualHosts,
    TenantMaps,
}

struct TableVisitor;

impl<'de> Visitor<'de> for TableVisitor {
    type Value = Table;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a routing table object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Table, A::Error> {
        let mut c = Compiler::default();
        let mut version: Option<Option<u64>> = None;
        let mut tenant_maps: Option<BTreeMap<String, TenantMapDoc>> = None;
        let mut seen_virtual_hosts = false;
        while let Some(field) = map.next_key::<TableField>()? {
            match field {
                TableField::Version if version.is_some() => {
                    return Err(de::Error::duplicate_field("version"));
                }
                TableField::Version => version = Some(map.next_value()?),
                TableField::VirtualHosts if seen_virtual_hosts => {
                    return Err(de::Error::duplicate_field("virtual_hosts"));
                }
                TableField::VirtualHosts => {
                    seen_virtual_hosts = true;
                    map.next_value_seed(VirtualHosts(&mut c))?;
                }
                TableField::TenantMaps if tenant_maps.is_some() => {
                    return Err(de::Error::duplicate_field("tenant_maps"));
                }
                TableField::TenantMaps => tenant_maps = Some(map.next_value()?),
            }
        }
        c.finish(version.flatten(), tenant_maps.unwrap_or_default())
            .map(Table)
            .map_err(nested_error)
    }
}

/// Compiles `virtual_hosts` element by element.
struct VirtualHosts<'c>(&'c mut Compiler);

impl<'de> DeserializeSeed<'de> for VirtualHosts<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for VirtualHosts<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of virtual hosts")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(vh) = seq.next_element::<VirtualHostDoc>()? {
            let i = self.0.read;
            self.0
                .virtual_host(&vh)
                .map_err(|e| nested_error(e.within(&format!("[{i}]"))))?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Compiler {
    clusters: Interner,
    rule_names: Interner,
    /// Tenant map names in order of first reference (their ids), with the
    /// path of that reference, for the error if no such map is defined.
    tenants: Vec<(Box<str>, String)>,
    domains: DomainIndex,
    /// Compiled virtual hosts; several documents may share one.
    vhosts: Vec<VirtualHost>,
    /// Virtual host documents read so far (for error paths).
    read: usize,
    /// Cluster id → the shared virtual host whose one rule sends there.
    single_cluster: HashMap<u32, u32>,
}

impl Compiler {
    /// Compiles the next virtual host; error paths relative to it.
    fn virtual_host(&mut self, vh: &VirtualHostDoc) -> Result<(), ConfigError> {
        let index = self.read;
        self.read += 1;
        ensure(!vh.domains.is_empty(), "domains", "must not be empty")?;
        let mut rules = Vec::with_capacity(vh.rules.len());
        for (j, r) in vh.rules.iter().enumerate() {
            let at = format!("virtual_hosts[{index}].rules[{j}]");
            rules.push(
                self.rule(r, &at)
                    .map_err(|e| e.within(&format!("rules[{j}]")))?,
            );
        }
        // Virtual hosts that only send to one cluster share one compiled
        // host per cluster: a large multi-tenant table is mostly those.
        let single_cluster = match &rules[..] {
            [
                Rule {
                    matcher: None,
                    target: Target::Cluster(c),
                    extras: None,
                    stat: None,
                },
            ] => Some(*c),
            _ => None,
        };
        let shared = single_cluster.and_then(|c| self.single_cluster.get(&c).copied());
        let id = match shared {
            Some(id) => id,
            None => {
                let id = u32::try_from(self.vhosts.len())
                    .map_err(|_| ConfigError::new("", "too many virtual hosts"))?;
                self.vhosts.push(VirtualHost {
                    rules: rules.into_boxed_slice(),
                });
                if let Some(c) = single_cluster {
                    self.single_cluster.insert(c, id);
                }
                id
            }
        };
        for (j, d) in vh.domains.iter().enumerate() {
            let at = format!("domains[{j}]");
            let pattern = Pattern::parse(d).map_err(|e| ConfigError::new(&at, e))?;
            self.domains
                .insert(pattern, id)
                .map_err(|e| ConfigError::new(&at, format!("{e} {d:?}")))?;
        }
        ensure(
            self.rule_names.names.len() <= MAX_RULE_STATS,
            "",
            &format!("at most {MAX_RULE_STATS} distinct rule names in a table (each is a metric)"),
        )
    }

    /// The router, once the whole table is read; error paths relative to
    /// the table.
    fn finish(
        self,
        version: Option<u64>,
        mut docs: BTreeMap<String, TenantMapDoc>,
    ) -> Result<Router, ConfigError> {
        let Compiler {
            mut clusters,
            rule_names,
            tenants,
            domains,
            vhosts,
            ..
        } = self;
        // Every map is checked, referenced or not.
        for (name, doc) in &docs {
            Self::tenant_map(doc, &mut Interner::default())
                .map_err(|e| e.within(&format!("tenant_maps.{name}")))?;
        }
        let mut tenant_maps = Vec::with_capacity(tenants.len());
        for (name, referenced_at) in &tenants {
            let Some(doc) = docs.remove(&**name) else {
                return Err(ConfigError::new(
                    format!("{referenced_at}.tenant"),
                    format!("no tenant map named {name:?}"),
                ));
            };
            tenant_maps.push(
                Self::tenant_map(&doc, &mut clusters)
                    .map_err(|e| e.within(&format!("tenant_maps.{name}")))?,
            );
        }
        Ok(Router {
            version,
            domains,
            vhosts: vhosts.into_boxed_slice(),
            clusters: clusters.names.into_boxed_slice(),
            tenant_maps: tenant_maps.into_boxed_slice(),
            rule_names: rule_names.names.into_boxed_slice(),
        })
    }

    /// Compiles a tenant map, interning its clusters in `clusters`.
    fn tenant_map(map: &TenantMapDoc, clusters: &mut Interner) -> Result<TenantMap, ConfigError> {
        ensure(
            valid_header_name(&map.header),
            "header",
            "must be a lowercase header name",
        )?;
        let mut entries =
            crate::router::ByteMap::with_capacity_and_hasher(map.entries.len(), Default::default());
        for (key, cluster) in &map.entries {
            check_cluster(cluster, &format!("entries.{key}"))?;
            entries.insert(key.as_bytes().into(), clusters.id(cluster));
        }
        let default = match &map.default_cluster {
            Some(d) => {
                check_cluster(d, "default_cluster")?;
                Some(clusters.id(d))
            }
            None => None,
        };
        Ok(TenantMap {
            header: map.header.as_str().into(),
            entries,
            default,
        })
    }

    /// `at`: the rule's path in the table, kept for a `tenant` that names
    /// no map (known only at the end).
    fn rule(&mut self, r: &RuleDoc, at: &str) -> Result<Rule, ConfigError> {
        let target = self.target(r, at)?;
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

    fn target(&mut self, r: &RuleDoc, at: &str) -> Result<Target, ConfigError> {
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
            let id = match self.tenants.iter().position(|(n, _)| n == name) {
                Some(id) => id,
                None => {
                    self.tenants.push((name.clone(), at.to_string()));
                    self.tenants.len() - 1
                }
            };
            return Ok(Target::Tenant(u32::try_from(id).unwrap_or(u32::MAX)));
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

    #[test]
    fn tenant_maps_may_come_before_or_after_the_hosts() {
        let hosts = r#""virtual_hosts": [{"domains": ["a"], "rules": [{"tenant": "t"}]},
            {"domains": ["b"], "rules": [{"cluster": "c"}, {"tenant": "t"}]}]"#;
        let maps = r#""tenant_maps": {"t": {"header": "x-tenant", "entries": {"k": "cell"}},
            "unused": {"header": "x-other", "entries": {}}}"#;
        for doc in [
            format!("{{{hosts}, {maps}}}"),
            format!("{{{maps}, {hosts}}}"),
        ] {
            let r = parse(doc.as_bytes()).unwrap();
            assert_eq!((r.domain_count(), r.tenant_key_count()), (2, 1));
        }
        let missing = r#"{"virtual_hosts": [{"domains": ["a"], "rules": [{"cluster": "c"}]},
            {"domains": ["b"], "rules": [{"cluster": "c"}, {"tenant": "nope"}]}]}"#;
        assert_eq!(
            refused(missing.as_bytes()),
            "virtual_hosts[1].rules[1].tenant: no tenant map named \"nope\""
        );
        let bad_unused = format!(
            r#"{{{hosts}, "tenant_maps": {{"t": {{"header": "x-t"}}, "u": {{"header": "X"}}}}}}"#
        );
        assert_eq!(
            refused(bad_unused.as_bytes()),
            "tenant_maps.u.header: must be a lowercase header name"
        );
    }

    #[test]
    fn errors_inside_hosts_name_the_host_and_keys_appear_once() {
        let doc = r#"{"version": 3, "virtual_hosts": [{"domains": ["a"], "rules": [{"cluster": "c"}]},
            {"domains": ["b", "a"], "rules": [{"cluster": "c"}]}]}"#;
        assert!(
            refused(doc.as_bytes()).starts_with("virtual_hosts[1].domains[1]: "),
            "{}",
            refused(doc.as_bytes())
        );
        let doc = r#"{"virtual_hosts": [{"domains": ["a"], "rules": [{"cluster": 5}]}]}"#;
        assert!(
            refused(doc.as_bytes()).starts_with("virtual_hosts[0].rules[0].cluster: invalid type")
        );
        let twice = r#"{"virtual_hosts": [], "virtual_hosts": []}"#;
        assert!(refused(twice.as_bytes()).contains("duplicate field `virtual_hosts`"));
        assert!(refused(br#"{"hosts": []}"#).contains("unknown field `hosts`"));
        assert_eq!(parse(br#"{"version": 9}"#).unwrap().version, Some(9));
    }
}
