//! Where the harness finds the workspace's build outputs.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The workspace root: `SWITCHYARD_ROOT` when set, else the parent of this
/// crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    match std::env::var_os("SWITCHYARD_ROOT") {
        Some(root) => PathBuf::from(root),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
    }
}

/// `build/`: set-up records (envoy-path, envoy-image, ...) and wasm modules.
pub fn build_dir() -> PathBuf {
    workspace_root().join("build")
}

/// Where the modules are: `SWITCHYARD_WASM_DIR` when set (a user's own
/// modules), else `build/wasm/`, the shipped (wasm-opt'ed) modules, one per
/// wasm crate.
pub fn wasm_dir() -> PathBuf {
    match std::env::var_os("SWITCHYARD_WASM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => build_dir().join("wasm"),
    }
}

/// The files of `dir` (not below it) whose extension is one of `exts`
/// (without the dot), sorted by path. Errors: `dir` unreadable.
pub fn files_with_extension(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| exts.contains(&x))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// The shipped module of crate `crate_name` (dashes or underscores).
pub fn wasm_module(crate_name: &str) -> Result<PathBuf> {
    let path = wasm_dir().join(format!("{}.wasm", crate_name.replace('-', "_")));
    if !path.is_file() {
        bail!("{} is missing: run `make build` first", path.display());
    }
    Ok(path)
}

/// `envoy-configs/`: the ready-to-use Envoy snippets.
pub fn envoy_configs_dir() -> PathBuf {
    workspace_root().join("envoy-configs")
}

/// Reads a one-line record written by a set-up script, e.g. `envoy-path`.
pub fn setup_record(name: &str) -> Result<String> {
    let path = build_dir().join(name);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is missing: the set-up scripts write it (run `make build` or `make test`)",
            path.display()
        )
    })?;
    Ok(text.trim().to_string())
}
