//! What a module says about a broken configuration, for every plugin
//! configuration of `envoy-configs/` broken in every place: each value
//! swapped for one of another type, an unknown key in each object, each key
//! removed. The answers (accepted, or the error with the path it names) are
//! held in `config_errors.golden`, so a change to how errors are made (the
//! path tracking, a serde upgrade) that names another field, or none, fails
//! here. `UPDATE_GOLDEN=1` rewrites the file after a reviewed change.

mod snippets;

use serde_json::Value;
use snippets::{files, module, plugins};
use switchyard_emulator::Host;

/// A JSON pointer-like path for the case's description (`a.b[2].c`).
fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else if child.starts_with('[') {
        format!("{parent}{child}")
    } else {
        format!("{parent}.{child}")
    }
}

/// A value of another JSON type than `v`.
fn other_type(v: &Value) -> Value {
    match v {
        Value::String(_) => Value::from(7),
        Value::Number(_) | Value::Bool(_) => Value::from("x"),
        Value::Null | Value::Array(_) | Value::Object(_) => Value::from(5),
    }
}

/// Every broken copy of `doc`: (what was broken, the copy).
fn breakages(doc: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    walk(doc, "", &mut |path, edit| {
        let mut copy = doc.clone();
        if edit(&mut copy) {
            out.push((path, copy));
        }
    });
    out
}

type Edit<'a> = &'a dyn Fn(&mut Value) -> bool;

/// Calls `f` with a description and an edit for each breakage below `v`
/// (at `path`). An edit finds its node again from the root by `path`.
fn walk(v: &Value, path: &str, f: &mut dyn FnMut(String, Edit<'_>)) {
    let pointer = |path: &str| -> String {
        // `a.b[2]` → `/a/b/2` (the snippets' keys have no `.`, `[` or `/`).
        path.replace('[', ".")
            .replace(']', "")
            .split('.')
            .filter(|s| !s.is_empty())
            .fold(String::new(), |p, s| format!("{p}/{s}"))
    };
    let here = pointer(path);
    if !path.is_empty() {
        let swapped = other_type(v);
        f(format!("{path} = {swapped}"), &|doc: &mut Value| {
            doc.pointer_mut(&here)
                .map(|n| *n = swapped.clone())
                .is_some()
        });
    }
    match v {
        Value::Object(map) => {
            f(format!("{path} + unknown key"), &|doc: &mut Value| {
                doc.pointer_mut(&here)
                    .and_then(Value::as_object_mut)
                    .map(|m| m.insert("zz_unknown".into(), Value::from(1)))
                    .is_some()
            });
            for (k, child) in map {
                f(format!("{} removed", join(path, k)), &|doc: &mut Value| {
                    doc.pointer_mut(&here)
                        .and_then(Value::as_object_mut)
                        .and_then(|m| m.remove(k))
                        .is_some()
                });
                walk(child, &join(path, k), f);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(child, &format!("{path}[{i}]"), f);
            }
        }
        _ => {}
    }
}

/// `accepted`, or the module's configuration error.
fn answer(init: extern "C" fn(), config: &str) -> String {
    let host = Host::new(init).plugin_config(config).build();
    let worker = host.start_worker();
    if worker.configured() {
        return "accepted".into();
    }
    host.logs()
        .iter()
        .find_map(|l| {
            l.message
                .split_once("invalid configuration: ")
                .map(|(_, e)| e.to_string())
        })
        .unwrap_or_else(|| format!("refused without a configuration error: {:?}", host.logs()))
}

#[test]
fn broken_configurations_name_the_field() {
    let mut lines = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for path in files() {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let yaml = std::fs::read_to_string(&path).expect("snippet readable");
        for (config, file) in plugins(&yaml) {
            let init = module(&file).expect("a known module");
            let doc: Value = serde_json::from_str(&config).expect("snippet JSON");
            // Identical configurations in several snippets are tried once.
            if !seen.insert((file.clone(), doc.to_string())) {
                continue;
            }
            for (what, broken) in breakages(&doc) {
                lines.push(format!(
                    "{name} {file}: {what} => {}",
                    answer(init, &broken.to_string())
                ));
            }
        }
    }
    let got = lines.join("\n") + "\n";
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/config_errors.golden");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(golden, &got).expect("golden file writable");
        return;
    }
    let want = std::fs::read_to_string(golden).expect("config_errors.golden (UPDATE_GOLDEN=1)");
    let diff: Vec<String> = want
        .lines()
        .zip(got.lines())
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("- {w}\n+ {g}"))
        .collect();
    assert!(
        diff.is_empty() && want.lines().count() == got.lines().count(),
        "{} of {} answers differ from config_errors.golden ({} lines), the first:\n{}",
        diff.len(),
        got.lines().count(),
        want.lines().count(),
        diff[..diff.len().min(20)].join("\n")
    );
    // Not a vacuous list: most breakages are refused, with a path.
    let refused = got.lines().filter(|l| !l.ends_with("=> accepted")).count();
    assert!(refused > 200, "only {refused} breakages refused");
}
