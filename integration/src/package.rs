//! `make package`: every shipped module as a file with its sha256, as an OCI
//! image, and with example manifests for Istio and Envoy Gateway.
//!
//! Per module `<m>` (e.g. `switchyard_rate_limit`), under the output folder:
//! - `<m>.wasm` and `<m>.wasm.sha256` (`sha256sum -c` reads it): what
//!   Envoy's `vm_config.code.remote` (`sha256`) and an `http(s)://` URL in
//!   Istio or Envoy Gateway take;
//! - `oci/<m>/`: an [OCI image layout](https://github.com/opencontainers/image-spec/blob/main/image-layout.md)
//!   (`oci-layout`, `index.json`, `blobs/sha256/…`) tagged with the version:
//!   one `application/vnd.oci.image.layer.v1.tar+gzip` layer holding
//!   `plugin.wasm` — the "compat" variant of the Wasm image specification
//!   that Istio's `WasmPlugin` and Envoy Gateway's `EnvoyExtensionPolicy`
//!   pull (the same image `FROM scratch` + `COPY plugin.wasm` would give).
//!   Push it with `skopeo copy oci:DIR:TAG docker://…`, `oras cp
//!   --from-oci-layout DIR:TAG …` or `crane push DIR …`;
//! - `istio/<m>.yaml` and `envoy-gateway/<m>.yaml`: a `WasmPlugin` and an
//!   `EnvoyExtensionPolicy` pulling that image, with its manifest digest as
//!   `sha256` (what both compare for `oci://`), and the plugin
//!   configuration of the module's `envoy-configs/` example.
//!
//! Archives are reproducible: fixed tar metadata, no gzip time stamp, so the
//! same module gives the same digests.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Media types of the compat Wasm image (OCI image spec).
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The file the layer holds: the name both platforms look for.
pub const PLUGIN_FILE: &str = "plugin.wasm";

/// What [`package_module`] wrote for one module.
#[derive(Debug, Clone)]
pub struct Packaged {
    /// The module's file name without `.wasm`.
    pub name: String,
    /// The copied module.
    pub wasm: PathBuf,
    /// Hex sha256 of the module.
    pub sha256: String,
    /// The OCI image layout folder.
    pub oci: PathBuf,
    /// Hex sha256 of the image manifest (the image's digest).
    pub manifest_digest: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `bytes` as a blob of `layout`; its descriptor.
fn blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Result<Value> {
    let digest = sha256_hex(bytes);
    let dir = layout.join("blobs").join("sha256");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(&digest), bytes)?;
    Ok(json!({"mediaType": media_type, "digest": format!("sha256:{digest}"), "size": bytes.len()}))
}

/// `plugin.wasm` in a tar (fixed owner, mode and time) and its gzip (no
/// time stamp, no name): the same module gives the same bytes.
fn layer(module: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(module.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, PLUGIN_FILE, module)?;
    let tar = builder.into_inner()?;
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar)?;
    Ok((tar, gz.finish()?))
}

/// Packages `module` (a `.wasm` file) into `out`, the image tagged
/// `version`. Errors: unreadable module, not a Wasm binary, unwritable
/// `out`.
pub fn package_module(module: &Path, out: &Path, version: &str) -> Result<Packaged> {
    let bytes = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    if !bytes.starts_with(b"\0asm") {
        bail!("{} is not a Wasm module", module.display());
    }
    let name = module
        .file_stem()
        .and_then(|s| s.to_str())
        .context("module file name")?
        .to_string();
    std::fs::create_dir_all(out)?;
    let wasm = out.join(format!("{name}.wasm"));
    std::fs::write(&wasm, &bytes)?;
    let sha256 = sha256_hex(&bytes);
    std::fs::write(
        out.join(format!("{name}.wasm.sha256")),
        format!("{sha256}  {name}.wasm\n"),
    )?;

    let oci = out.join("oci").join(&name);
    if oci.exists() {
        std::fs::remove_dir_all(&oci)?;
    }
    std::fs::create_dir_all(&oci)?;
    let (tar, gz) = layer(&bytes)?;
    let layer = blob(&oci, LAYER_MEDIA_TYPE, &gz)?;
    // Docker's platform for Wasm images is wasi/wasm.
    let config = serde_json::to_vec(&json!({
        "architecture": "wasm",
        "os": "wasi",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&tar))]},
    }))?;
    let config = blob(&oci, CONFIG_MEDIA_TYPE, &config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config,
        "layers": [layer],
        "annotations": {
            "org.opencontainers.image.title": name,
            "org.opencontainers.image.version": version,
        },
    }))?;
    let mut manifest_desc = blob(&oci, MANIFEST_MEDIA_TYPE, &manifest)?;
    manifest_desc["annotations"] = json!({"org.opencontainers.image.ref.name": version});
    std::fs::write(
        oci.join("index.json"),
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [manifest_desc],
        }))?,
    )?;
    std::fs::write(oci.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(Packaged {
        name,
        wasm,
        sha256,
        oci,
        manifest_digest: sha256_hex(&manifest),
    })
}

/// The plugin configuration (JSON text) and plugin name of each module's
/// first `envoy-configs/` example, by module file stem: every Wasm filter
/// whose `vm_config.code.local.filename` names the module.
pub fn example_configs(dir: &Path) -> Result<BTreeMap<String, (String, String)>> {
    fn walk(v: &serde_yaml_ng::Value, out: &mut BTreeMap<String, (String, String)>) {
        use serde_yaml_ng::Value as Y;
        match v {
            Y::Mapping(m) => {
                let config = m.get("config").unwrap_or(v);
                let file = config
                    .get("vm_config")
                    .and_then(|vm| vm.get("code"))
                    .and_then(|c| c.get("local"))
                    .and_then(|l| l.get("filename"))
                    .and_then(Y::as_str);
                let value = config
                    .get("configuration")
                    .and_then(|c| c.get("value"))
                    .and_then(Y::as_str);
                if let (Some(file), Some(value)) = (file, value) {
                    let stem = file
                        .rsplit('/')
                        .next()
                        .unwrap_or(file)
                        .trim_end_matches(".wasm");
                    let plugin = config.get("name").and_then(Y::as_str).unwrap_or(stem);
                    out.entry(stem.to_string())
                        .or_insert_with(|| (value.to_string(), plugin.to_string()));
                }
                for (_, child) in m {
                    walk(child, out);
                }
            }
            Y::Sequence(s) => s.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    for f in crate::paths::files_with_extension(dir, &["yaml"])? {
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&f)?)
            .with_context(|| format!("parsing {}", f.display()))?;
        walk(&doc, &mut out);
    }
    Ok(out)
}

/// The example manifests of one packaged module: (Istio `WasmPlugin`,
/// Envoy Gateway `EnvoyExtensionPolicy`), pulling
/// `<registry>/<name>:<version>`; `config` is the plugin configuration
/// (JSON text, an object).
pub fn manifests(
    p: &Packaged,
    registry: &str,
    version: &str,
    plugin: &str,
    config: &str,
) -> Result<(String, String)> {
    let config: Value = serde_json::from_str(config).context("plugin configuration")?;
    let image = format!("{registry}/{}:{version}", p.name.replace('_', "-"));
    let name = p.name.replace('_', "-");
    let istio = json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": name, "namespace": "istio-system"},
        "spec": {
            "selector": {"matchLabels": {"istio": "ingressgateway"}},
            "url": format!("oci://{image}"),
            "sha256": p.manifest_digest,
            "imagePullPolicy": "IfNotPresent",
            "pluginName": plugin,
            "pluginConfig": config,
        },
    });
    let gateway = json!({
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "EnvoyExtensionPolicy",
        "metadata": {"name": name},
        "spec": {
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "backend"}],
            "wasm": [{
                "name": plugin,
                "code": {"type": "Image", "image": {"url": image, "sha256": p.manifest_digest}},
                "config": config,
            }],
        },
    });
    let header = format!(
        "# Generated by `make package` for {}.wasm {version}: push oci/{} as {image} first.\n",
        p.name, p.name
    );
    Ok((
        header.clone() + &serde_yaml_ng::to_string(&istio)?,
        header + &serde_yaml_ng::to_string(&gateway)?,
    ))
}

/// Packages every module of `wasm_dir` but the test fixture into `out`,
/// with manifests for the modules `envoy-configs/` (`examples`) configures.
/// Writes `SHA256SUMS` over the modules.
pub fn package_all(
    wasm_dir: &Path,
    examples: &Path,
    out: &Path,
    registry: &str,
    version: &str,
) -> Result<Vec<Packaged>> {
    let configs = example_configs(examples)?;
    let modules: Vec<PathBuf> = crate::paths::files_with_extension(wasm_dir, &["wasm"])
        .context("run make build")?
        .into_iter()
        .filter(|p| {
            !p.file_stem()
                .is_some_and(|s| s.to_string_lossy().contains("fixture"))
        })
        .collect();
    if modules.is_empty() {
        bail!("no modules in {} (run make build)", wasm_dir.display());
    }
    let mut done = Vec::new();
    let mut sums = String::new();
    for m in modules {
        let p = package_module(&m, out, version)?;
        sums.push_str(&format!("{}  {}.wasm\n", p.sha256, p.name));
        if let Some((config, plugin)) = configs.get(&p.name) {
            let (istio, gateway) = manifests(&p, registry, version, plugin, config)?;
            for (dir, text) in [("istio", istio), ("envoy-gateway", gateway)] {
                std::fs::create_dir_all(out.join(dir))?;
                std::fs::write(out.join(dir).join(format!("{}.yaml", p.name)), text)?;
            }
        }
        done.push(p);
    }
    std::fs::write(out.join("SHA256SUMS"), sums)?;
    Ok(done)
}

/// What an OCI layout holds for its first image: (manifest digest hex, the
/// layer's media type, the `plugin.wasm` bytes in it). Checks every blob's
/// digest and size on the way, as a registry client would.
pub fn read_layout(layout: &Path) -> Result<(String, String, Vec<u8>)> {
    let read_blob = |desc: &Value| -> Result<Vec<u8>> {
        let digest = desc["digest"].as_str().context("descriptor digest")?;
        let hex = digest.strip_prefix("sha256:").context("sha256 digest")?;
        let bytes = std::fs::read(layout.join("blobs").join("sha256").join(hex))?;
        if sha256_hex(&bytes) != hex || desc["size"].as_u64() != Some(bytes.len() as u64) {
            bail!("blob {digest} does not match its descriptor");
        }
        Ok(bytes)
    };
    let layout_file: Value = serde_json::from_slice(&std::fs::read(layout.join("oci-layout"))?)?;
    if layout_file["imageLayoutVersion"] != "1.0.0" {
        bail!("oci-layout: {layout_file}");
    }
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let desc = &index["manifests"][0];
    if desc["mediaType"] != MANIFEST_MEDIA_TYPE {
        bail!("index: {index}");
    }
    let manifest_bytes = read_blob(desc)?;
    let manifest: Value = serde_json::from_slice(&manifest_bytes)?;
    read_blob(&manifest["config"])?;
    let layers = manifest["layers"].as_array().context("layers")?;
    let last = layers.last().context("no layer")?;
    let gz = read_blob(last)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz.as_slice()));
    let mut wasm = None;
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path()?.file_name().is_some_and(|n| n == PLUGIN_FILE) {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes)?;
            wasm = Some(bytes);
        }
    }
    Ok((
        sha256_hex(&manifest_bytes),
        last["mediaType"].as_str().unwrap_or_default().to_string(),
        wasm.context("no plugin.wasm in the layer")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_holds_the_module_as_plugin_wasm_and_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("switchyard_x.wasm");
        std::fs::write(&module, b"\0asm\x01\0\0\0 a module").unwrap();
        let a = package_module(&module, &dir.path().join("a"), "1.2.3").unwrap();
        let b = package_module(&module, &dir.path().join("b"), "1.2.3").unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest, "reproducible");
        let (digest, media_type, wasm) = read_layout(&a.oci).unwrap();
        assert_eq!(digest, a.manifest_digest);
        assert_eq!(media_type, LAYER_MEDIA_TYPE);
        assert_eq!(wasm, std::fs::read(&module).unwrap());
        let sums = std::fs::read_to_string(dir.path().join("a/switchyard_x.wasm.sha256")).unwrap();
        assert_eq!(sums, format!("{}  switchyard_x.wasm\n", a.sha256));
        // A layer changed after the fact is caught.
        let blobs = a.oci.join("blobs/sha256");
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(blobs.join(&a.manifest_digest)).unwrap())
                .unwrap();
        let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
        let layer = blobs.join(layer_digest.trim_start_matches("sha256:"));
        let mut bytes = std::fs::read(&layer).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&layer, bytes).unwrap();
        assert!(read_layout(&a.oci).is_err());
        // Not a module.
        std::fs::write(&module, b"text").unwrap();
        assert!(package_module(&module, &dir.path().join("c"), "1").is_err());
    }
}
