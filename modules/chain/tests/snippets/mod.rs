//! The wasm filters of the `envoy-configs/` snippets: their plugin
//! configurations and the module each loads (shared by the tests that read
//! them).

use std::path::PathBuf;

/// The module a snippet loads, by its file name, and the module's entry.
pub fn module(filename: &str) -> Option<extern "C" fn()> {
    let name = filename.rsplit('/').next()?.trim_end_matches(".wasm");
    Some(match name {
        "switchyard" => switchyard::init,
        "switchyard_access_log" => switchyard_access_log::init,
        "switchyard_domain_router" => switchyard_domain_router::init,
        "switchyard_load_balancer" => switchyard_load_balancer::init,
        "switchyard_rate_limit" => switchyard_rate_limit::init,
        _ => return None,
    })
}

/// (plugin configuration, module file name) of every wasm filter of a
/// snippet: the `value: |` block, then the next `filename:`.
pub fn plugins(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if !lines[i].trim_end().ends_with("value: |") {
            i += 1;
            continue;
        }
        let header = indent(lines[i]);
        let mut block = Vec::new();
        i += 1;
        while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > header) {
            block.push(lines[i]);
            i += 1;
        }
        let file = lines[i..]
            .iter()
            .find_map(|l| l.split("filename:").nth(1))
            .map(|f| {
                f.trim()
                    .trim_matches(|c| c == '"' || c == '}' || c == ' ')
                    .to_string()
            })
            .unwrap_or_default();
        out.push((block.join("\n"), file));
    }
    out
}

/// Every snippet and ECDS resource file (`envoy-configs/*.yaml`,
/// `envoy-configs/ecds/*.yaml`), sorted.
pub fn files() -> Vec<PathBuf> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../envoy-configs");
    let mut files: Vec<_> = [dir.to_string(), format!("{dir}/ecds")]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).expect("envoy-configs/ readable"))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}
