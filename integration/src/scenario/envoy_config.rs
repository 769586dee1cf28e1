//! From a scenario to an [`EnvoyBuilder`]: filter configurations completed
//! with what only exists at run time (backend addresses, the collector and
//! discovery clusters), and the template variables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::spec::{FilterDef, FilterKind, ModuleLayout, Scenario};
use crate::envoy::{EnvoyBuilder, Runtime};
use crate::paths;

/// The built-in chain template.
pub const CHAIN_TEMPLATE: &str = include_str!("../../templates/scenario-chain.yaml");

/// Path of the load balancer's endpoint list on the harness's discovery
/// server.
pub const DISCOVERY_PATH: &str = "/endpoints";

/// A backend as Envoy and the filters see it.
#[derive(Clone, Debug)]
pub struct BackendAddr {
    pub name: String,
    pub cluster: String,
    pub addr: SocketAddr,
}

/// What is running next to Envoy.
pub struct Infra<'a> {
    pub backends: &'a [BackendAddr],
    pub collector: Option<SocketAddr>,
    pub discovery: Option<SocketAddr>,
}

fn ip_port(a: SocketAddr) -> Value {
    json!({"ip": a.ip().to_string(), "port": a.port()})
}

/// The load balancer's endpoints: the listed backends, else all.
pub fn lb_endpoints(s: &Scenario, infra: &Infra) -> Vec<BackendAddr> {
    let names = match s.filter(FilterKind::LoadBalancer) {
        Some(FilterDef::LoadBalancer(lb)) => lb.endpoints.clone(),
        _ => return Vec::new(),
    };
    infra
        .backends
        .iter()
        .filter(|b| names.as_ref().is_none_or(|n| n.contains(&b.name)))
        .cloned()
        .collect()
}

/// A filter's configuration as Envoy gets it.
pub fn filter_config(s: &Scenario, f: &FilterDef, infra: &Infra) -> Value {
    let mut c = f.config().clone();
    let Some(obj) = c.as_object_mut() else {
        return c;
    };
    match f {
        FilterDef::LoadBalancer(_) => {
            if !obj.contains_key("endpoints") {
                let eps: Vec<Value> = lb_endpoints(s, infra)
                    .iter()
                    .map(|b| json!({"address": b.addr.to_string(), "name": b.name}))
                    .collect();
                obj.insert("endpoints".into(), Value::Array(eps));
            }
            if infra.discovery.is_some() && !obj.contains_key("discovery") {
                obj.insert(
                    "discovery".into(),
                    json!({"cluster": "discovery", "path": DISCOVERY_PATH, "interval_ms": 200, "timeout_ms": 1000}),
                );
            }
        }
        FilterDef::AccessLog(a) => {
            if a.sink.collector() {
                let http = obj
                    .entry("http")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Some(h) = http.as_object_mut() {
                    h.entry("cluster").or_insert_with(|| "collector".into());
                }
            }
            let log = obj
                .entry("log")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(l) = log.as_object_mut() {
                if a.sink.envoy_log() {
                    l.insert("enabled".into(), true.into());
                } else {
                    // One Envoy log line per request only costs when nobody reads it.
                    l.entry("enabled").or_insert(false.into());
                }
            }
        }
        FilterDef::DomainRouter(_) | FilterDef::RateLimit(_) | FilterDef::Wasm(_) => {}
    }
    c
}

/// The Envoy builder for the scenario (not started).
pub fn builder(s: &Scenario, runtime: Runtime, infra: &Infra) -> Result<EnvoyBuilder> {
    let builtins = s
        .envoy
        .filters
        .iter()
        .filter(|f| f.kind().is_some())
        .count();
    let chain = s.envoy.module == ModuleLayout::Chain && builtins > 0;
    if chain {
        paths::wasm_module(CHAIN_CRATE)?;
    } else {
        for k in s.envoy.filters.iter().filter_map(FilterDef::kind) {
            paths::wasm_module(k.crate_name())?;
        }
    }
    let configs: BTreeMap<FilterKind, Value> = s
        .envoy
        .filters
        .iter()
        .filter_map(|f| Some((f.kind()?, filter_config(s, f, infra))))
        .collect();
    let template = match &s.envoy.template {
        None => CHAIN_TEMPLATE.to_string(),
        Some(t) => {
            let path = resolve_template(s, t);
            std::fs::read_to_string(&path)
                .with_context(|| format!("envoy.template: reading {}", path.display()))?
        }
    };
    let mut b = EnvoyBuilder::new(runtime, template).concurrency(s.envoy.concurrency);

    // In the scenario's order: the built-ins (one chain filter at the first
    // one's place, or one module each) and every `wasm` module as its own
    // filter, copied into the run directory (which Envoy sees in Docker too).
    let mut filters: Vec<Value> = Vec::new();
    let mut chain_placed = false;
    for (i, f) in s.envoy.filters.iter().enumerate() {
        match (f, f.kind()) {
            (FilterDef::Wasm(w), _) => {
                let module = s.wasm_module(w);
                let run_file = format!("module-{i}.wasm");
                b = b.copy_file(&run_file, &module);
                filters.push(json!({
                    "name": w.plugin_name(),
                    "vm_id": format!("{}-{i}", w.plugin_name()),
                    "module": Value::Null,
                    "run_file": run_file,
                    "config": f.config().to_string(),
                }));
            }
            (_, Some(_)) if chain => {
                if !chain_placed {
                    filters.push(chain_filter(s, &configs));
                    chain_placed = true;
                }
            }
            (_, Some(k)) => filters.push(json!({
                "name": k.name(),
                "vm_id": k.name(),
                "module": format!("{}.wasm", k.crate_name().replace('-', "_")),
                "run_file": Value::Null,
                "config": configs.get(&k).map(Value::to_string).unwrap_or_default(),
            })),
            (_, None) => {}
        }
    }
    let mut clusters: Vec<(String, Vec<Value>)> = Vec::new();
    for be in infra.backends {
        match clusters.iter_mut().find(|(n, _)| *n == be.cluster) {
            Some((_, eps)) => eps.push(ip_port(be.addr)),
            None => clusters.push((be.cluster.clone(), vec![ip_port(be.addr)])),
        }
    }
    let clusters: Vec<Value> = clusters
        .into_iter()
        .map(|(name, endpoints)| json!({"name": name, "endpoints": endpoints}))
        .collect();
    let cluster_header = configs.get(&FilterKind::DomainRouter).map(|c| {
        c.get("cluster_header")
            .and_then(Value::as_str)
            .unwrap_or("x-switchyard-cluster")
            .to_string()
    });
    let override_host = configs.get(&FilterKind::LoadBalancer).map(|c| {
        c.get("header")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
            .unwrap_or("x-switchyard-lb-host")
            .to_string()
    });
    let backends: Vec<Value> = infra
        .backends
        .iter()
        .map(|be| {
            json!({"name": be.name, "cluster": be.cluster, "ip": be.addr.ip().to_string(), "port": be.addr.port()})
        })
        .collect();
    b = b
        .var("filters", filters)
        .var("clusters", clusters)
        .var("cluster_header", cluster_header)
        .var(
            "default_cluster",
            infra.backends.first().map(|be| be.cluster.clone()),
        )
        .var("override_host", override_host)
        .var("collector", infra.collector.map(ip_port))
        .var("collector_port", infra.collector.map(|a| a.port()))
        .var("discovery", infra.discovery.map(ip_port))
        .var("backends", backends);
    for (var, kind) in &s.envoy.config_vars {
        b = b.var(var, configs.get(kind).map(Value::to_string));
    }
    for (k, v) in &s.envoy.vars {
        b = b.var(k, v);
    }
    Ok(b)
}

/// The chain module's crate (`build/wasm/switchyard.wasm`).
pub const CHAIN_CRATE: &str = "switchyard";

/// The one Wasm filter of a chain scenario: `switchyard.wasm` with
/// `{"stages": [{"<filter>": config}, ...]}` in the scenario's order.
fn chain_filter(s: &Scenario, configs: &BTreeMap<FilterKind, Value>) -> Value {
    let stages: Vec<Value> = s
        .envoy
        .filters
        .iter()
        .filter_map(FilterDef::kind)
        .map(|k| json!({ k.name(): configs.get(&k).cloned().unwrap_or_else(|| json!({})) }))
        .collect();
    json!({
        "name": "switchyard",
        "vm_id": "switchyard",
        "module": "switchyard.wasm",
        "run_file": Value::Null,
        "config": json!({ "stages": stages }).to_string(),
    })
}

/// A template path: relative to the scenario file, else to the workspace.
pub fn resolve_template(s: &Scenario, t: &str) -> PathBuf {
    let p = PathBuf::from(t);
    if p.is_absolute() {
        return p;
    }
    if let Some(dir) = s.source.as_ref().and_then(|f| f.parent()) {
        let candidate = dir.join(&p);
        if candidate.is_file() {
            return candidate;
        }
    }
    paths::workspace_root().join(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_completed() {
        let s = Scenario::parse(
            r#"
name: t
envoy:
  filters:
    - load_balancer: {endpoints: [b], config: {policy: p2c}}
    - access_log: {sink: collector, config: {sampling: {rate: 0.5}}}
    - rate_limit: {}
backends: [{name: a}, {name: b, cluster: other}]
traffic: [{name: f, requests: [{host: x}], phases: [{duration: 1s, rate: 1}]}]
"#,
        )
        .unwrap();
        let backends = vec![
            BackendAddr {
                name: "a".into(),
                cluster: "backends".into(),
                addr: "127.0.0.1:1000".parse().unwrap(),
            },
            BackendAddr {
                name: "b".into(),
                cluster: "other".into(),
                addr: "127.0.0.1:2000".parse().unwrap(),
            },
        ];
        let infra = Infra {
            backends: &backends,
            collector: Some("127.0.0.1:3000".parse().unwrap()),
            discovery: Some("127.0.0.1:4000".parse().unwrap()),
        };
        let lb = filter_config(&s, &s.envoy.filters[0], &infra);
        assert_eq!(
            lb["endpoints"],
            json!([{"address": "127.0.0.1:2000", "name": "b"}])
        );
        assert_eq!(lb["policy"], "p2c");
        assert_eq!(lb["discovery"]["cluster"], "discovery");
        let al = filter_config(&s, &s.envoy.filters[1], &infra);
        assert_eq!(al["http"]["cluster"], "collector");
        assert_eq!(al["log"]["enabled"], false);
        assert_eq!(al["sampling"]["rate"], 0.5);
        assert_eq!(filter_config(&s, &s.envoy.filters[2], &infra), json!({}));
    }
}
