//! `make try CONFIG=<name>`: one `envoy-configs/` file, as it is, against
//! local example upstreams, with the curl lines to try.
//!
//! Every upstream address the file names (`socket_address` of a cluster,
//! and `"host:port"` endpoints in plugin configurations) gets a local
//! server on 127.0.0.1 and is rewritten to it: the cluster `collector` an
//! access-log collector, `ratelimit` a rate limit service (10 per minute
//! per descriptor), every other one an example backend that answers 200,
//! names itself in `x-switchyard-backend` (`<cluster>-<n>`) and reports
//! its load in ORCA (TEXT, measured); over TLS when the cluster speaks TLS
//! (certificates from a test CA, written beside the run). Modules come from
//! `build/wasm`, ECDS resources from `envoy-configs/ecds/` (rewritten the
//! same way). Listeners keep their ports (10000, 10443), admin 9901.
//!
//! The file's own `# try: <command> => <expected output>` lines (the first
//! ` => ` separates them) are what to try; `--check` runs each with
//! `sh -c` and compares its output.

use crate::backend::{Backend, BackendSpec, OrcaFormat};
use crate::collector::Collector;
use crate::envoy::{Envoy, EnvoyBuilder, Runtime};
use crate::rls::{RlsServer, RlsSpec};
use crate::tls::TestPki;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One `# try:` line: a shell command and the output it should print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TryLine {
    pub command: String,
    pub expected: String,
}

/// The `# try: <command> => <expected>` lines of a config file.
pub fn try_lines(yaml: &str) -> Vec<TryLine> {
    yaml.lines()
        .filter_map(|l| {
            l.trim_start()
                .strip_prefix('#')
                .and_then(|l| l.trim_start().strip_prefix("try:"))
        })
        .filter_map(|l| {
            let (command, expected) = l.split_once(" => ")?;
            Some(TryLine {
                command: command.trim().to_string(),
                expected: expected.trim().to_string(),
            })
        })
        .collect()
}

/// An upstream the file names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Upstream {
    cluster: String,
    host: String,
    port: u16,
    tls_name: Option<String>,
}

/// The upstreams of a config: each cluster's `socket_address`es (with the
/// SNI when the cluster speaks TLS), then `"host:port"` strings in plugin
/// configurations that no cluster names (e.g. original_dst endpoints).
fn upstreams(yaml: &str) -> Result<Vec<Upstream>> {
    use serde_yaml_ng::Value as Y;
    let doc: Y = serde_yaml_ng::from_str(yaml).context("parsing the config")?;
    let mut out = Vec::new();
    let clusters = doc["static_resources"]["clusters"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    for c in &clusters {
        let name = c["name"].as_str().unwrap_or("upstream").to_string();
        let tls_name = c["transport_socket"]["typed_config"]["sni"]
            .as_str()
            .map(str::to_string);
        let endpoints = c["load_assignment"]["endpoints"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        for group in endpoints {
            for e in group["lb_endpoints"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
            {
                let sa = &e["endpoint"]["address"]["socket_address"];
                if let (Some(host), Some(port)) =
                    (sa["address"].as_str(), sa["port_value"].as_u64())
                {
                    out.push(Upstream {
                        cluster: name.clone(),
                        host: host.to_string(),
                        port: u16::try_from(port).context("port")?,
                        tls_name: tls_name.clone(),
                    });
                }
            }
        }
    }
    // "host:port" in plugin configurations.
    let mut rest = yaml;
    while let Some(at) = rest.find('"') {
        rest = &rest[at + 1..];
        let Some(end) = rest.find('"') else { break };
        let s = &rest[..end];
        rest = &rest[end + 1..];
        if let Some((host, port)) = s.rsplit_once(':')
            && let Ok(port) = port.parse::<u16>()
            && !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && !out.iter().any(|u| u.host == host && u.port == port)
        {
            out.push(Upstream {
                cluster: "endpoint".into(),
                host: host.to_string(),
                port,
                tls_name: None,
            });
        }
    }
    Ok(out)
}

/// The local servers standing in for the upstreams; they stop on drop.
#[derive(Default)]
pub struct Upstreams {
    backends: Vec<Backend>,
    collectors: Vec<Collector>,
    services: Vec<RlsServer>,
}

/// A running try: Envoy on the file, the local upstreams, and the client CA
/// (for TLS listeners) at `ca_file`.
pub struct Trial {
    pub envoy: Envoy,
    pub upstreams: Upstreams,
    pub lines: Vec<TryLine>,
    pub ca_file: PathBuf,
}

/// Starts `config` (a path in `envoy-configs/`) against local upstreams.
/// `work` holds what the run writes (the client CA at `work/ca.pem`).
pub async fn start(config: &Path, work: &Path, runtime: Runtime) -> Result<Trial> {
    let original =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let ups = upstreams(&original)?;
    std::fs::create_dir_all(work)?;
    // One certificate for the TLS listener and every TLS upstream name.
    let mut names = vec!["localhost".to_string()];
    names.extend(original.lines().filter_map(|l| {
        l.split("--resolve ")
            .nth(1)?
            .split(':')
            .next()
            .map(str::to_string)
    }));
    names.extend(ups.iter().filter_map(|u| u.tls_name.clone()));
    names.sort();
    names.dedup();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = TestPki::new(&refs)?;
    let ca_file = work.join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem)?;

    let mut local = BTreeMap::new();
    let mut upstreams = Upstreams::default();
    let mut per_cluster: BTreeMap<String, usize> = BTreeMap::new();
    for u in &ups {
        if local.contains_key(&(u.host.clone(), u.port)) {
            continue;
        }
        let n = per_cluster.entry(u.cluster.clone()).or_default();
        let addr = match u.cluster.as_str() {
            "collector" => {
                let c = Collector::start().await?;
                let a = c.addr();
                upstreams.collectors.push(c);
                a
            }
            "ratelimit" => {
                let s = RlsServer::start(RlsSpec::per_minute(10)).await?;
                let a = s.addr();
                upstreams.services.push(s);
                a
            }
            cluster => {
                let mut spec = BackendSpec::new(format!("{cluster}-{n}")).orca(OrcaFormat::Text);
                if u.tls_name.is_some() {
                    spec = spec.tls(pki.server_config(&[b"http/1.1"])?);
                }
                let b = Backend::start(spec).await?;
                let a = b.addr();
                upstreams.backends.push(b);
                a
            }
        };
        *n += 1;
        local.insert((u.host.clone(), u.port), addr);
    }
    let rewrite = |text: &str| -> String {
        let mut t = text
            .replace("/etc/switchyard/wasm", "{{ wasm_dir }}")
            .replace("/etc/switchyard/ecds/", "{{ run_dir }}/ecds-")
            .replace("/etc/switchyard/tls/", "{{ run_dir }}/tls-");
        for ((host, port), addr) in &local {
            t = t
                .replace(
                    &format!("address: {host}, port_value: {port} "),
                    &format!("address: {}, port_value: {} ", addr.ip(), addr.port()),
                )
                .replace(&format!("\"{host}:{port}\""), &format!("\"{addr}\""));
        }
        t
    };
    let mut builder = EnvoyBuilder::new(runtime, rewrite(&original))
        .concurrency(2)
        .file("tls-server.pem", pki.cert_pem.clone())
        .file("tls-server-key.pem", pki.key_pem.clone())
        .file("tls-upstream-ca.pem", pki.ca_pem.clone());
    let ecds = config.parent().unwrap_or(Path::new(".")).join("ecds");
    if original.contains("/etc/switchyard/ecds/") && ecds.is_dir() {
        for e in std::fs::read_dir(&ecds)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            builder = builder.file(
                &format!("ecds-{name}"),
                rewrite(&std::fs::read_to_string(e.path())?),
            );
        }
    }
    let envoy = builder.start().await.map_err(|e| {
        anyhow::anyhow!("Envoy did not start (are ports 9901/10000/10443 free?): {e}")
    })?;
    Ok(Trial {
        envoy,
        upstreams,
        lines: try_lines(&original),
        ca_file,
    })
}

/// Runs each try line with `sh -c` in `dir` (the workspace root, where the
/// lines' relative paths start); the lines whose output differs, with what
/// they printed.
pub async fn check(trial: &Trial, dir: &Path) -> Result<Vec<(TryLine, String)>> {
    if trial.lines.is_empty() {
        bail!("the file has no `# try:` lines");
    }
    let mut failed = Vec::new();
    for line in &trial.lines {
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&line.command)
            .current_dir(dir)
            .output()
            .await
            .context("running sh")?;
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if got != line.expected {
            failed.push((line.clone(), got));
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_lines_and_upstreams_are_read_from_the_file() {
        let yaml = r#"
# try: curl -s localhost:10000/ => 200
#   try: echo a=>b => a=>b
static_resources:
  clusters:
  - name: shop
    transport_socket: {typed_config: {sni: shop.internal}}
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 10.0.0.11, port_value: 8080 } } }
  - name: collector
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: c.internal, port_value: 4318 } } }
extra: '{"endpoints": [{"address": "10.0.0.11:8080"}, {"address": "10.0.0.99:80"}], "x": "a:b"}'
"#;
        let lines = try_lines(yaml);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].command, "echo a=>b");
        assert_eq!(lines[1].expected, "a=>b");
        let ups = upstreams(yaml).unwrap();
        let names: Vec<_> = ups
            .iter()
            .map(|u| (u.cluster.as_str(), u.host.as_str(), u.port))
            .collect();
        assert_eq!(
            names,
            [
                ("shop", "10.0.0.11", 8080),
                ("collector", "c.internal", 4318),
                ("endpoint", "10.0.0.99", 80)
            ]
        );
        assert_eq!(ups[0].tls_name.as_deref(), Some("shop.internal"));
    }
}
