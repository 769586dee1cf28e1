//! Typed plugin configuration.
//!
//! Envoy hands the plugin configuration to `on_configure` as raw bytes. A
//! filter declares a `serde` struct (with `#[serde(deny_unknown_fields)]` so
//! typos are errors, not silently ignored) and implements [`Validate`] for the
//! rules serde cannot express. [`parse`] returns either the typed value or a
//! [`ConfigError`] whose message starts with the JSON path of the bad field,
//! e.g. `routes[3].weight: must be > 0`.

use serde::de::DeserializeOwned;
use std::fmt;

/// A configuration error: where (a JSON path such as `routes[3].weight`, empty
/// for the document root) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Prefixes the path with `parent` (a field name or `[index]`), so nested
    /// validators can report paths relative to themselves.
    pub fn within(mut self, parent: &str) -> Self {
        self.path = join_path(parent, &self.path);
        self
    }
}

fn join_path(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_string(),
        (_, true) => parent.to_string(),
        _ if child.starts_with('[') => format!("{parent}{child}"),
        _ => format!("{parent}.{child}"),
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Semantic checks that run after deserialisation succeeded.
pub trait Validate {
    /// Returns the first problem found. Paths are relative to `self`.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Parses `bytes` as JSON into `T` and validates it.
///
/// Empty input (or only whitespace) means "no configuration": `T::default()`
/// is returned, after validation, so a filter's documented defaults apply.
pub fn parse<T>(bytes: &[u8]) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate + Default,
{
    let value = if bytes.iter().all(u8::is_ascii_whitespace) {
        T::default()
    } else {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = display_path(e.path());
            ConfigError::new(path, e.into_inner().to_string())
        })?;
        value
    };
    value.validate()?;
    Ok(value)
}

/// `serde_path_to_error` prints `.` for the root and `a.b[3].c` otherwise.
fn display_path(path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p == "." { String::new() } else { p }
}

/// Reads and parses this plugin's configuration. On error, logs it at error
/// level naming the field and returns `None`: return `false` from
/// `on_configure` then, so Envoy refuses the configuration.
#[cfg(feature = "host")]
pub fn load_plugin_config<T>(filter: &str) -> Option<T>
where
    T: DeserializeOwned + Validate + Default,
{
    let bytes = match crate::host::plugin_configuration() {
        Ok(b) => b,
        Err(e) => {
            log::error!("{filter}: cannot read the plugin configuration: {e}");
            return None;
        }
    };
    match parse::<T>(&bytes) {
        Ok(config) => Some(config),
        Err(e) => {
            log::error!("{filter}: invalid configuration: {e}");
            None
        }
    }
}

/// Validates every item of a list, reporting `name[i].…` paths.
pub fn validate_each<'a, T: Validate + 'a>(
    name: &str,
    items: impl IntoIterator<Item = &'a T>,
) -> Result<(), ConfigError> {
    for (i, item) in items.into_iter().enumerate() {
        item.validate()
            .map_err(|e| e.within(&format!("{name}[{i}]")))?;
    }
    Ok(())
}

/// Shorthand for a failed check on `path`.
pub fn ensure(ok: bool, path: &str, message: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(path, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Route {
        name: String,
        weight: u32,
    }

    impl Validate for Route {
        fn validate(&self) -> Result<(), ConfigError> {
            ensure(self.weight > 0, "weight", "must be > 0")
        }
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Config {
        routes: Vec<Route>,
        timeout_ms: u64,
    }

    impl Validate for Config {
        fn validate(&self) -> Result<(), ConfigError> {
            validate_each("routes", &self.routes)
        }
    }

    #[test]
    fn empty_config_gives_defaults() {
        let c: Config = parse(b"  \n").unwrap();
        assert!(c.routes.is_empty());
        assert_eq!(c.timeout_ms, 0);
    }

    #[test]
    fn validation_error_names_the_indexed_field() {
        let doc = br#"{"routes":[{"name":"a","weight":1},{"name":"b","weight":1},
            {"name":"c","weight":2},{"name":"d","weight":0}]}"#;
        let err = parse::<Config>(doc).unwrap_err();
        assert_eq!(err.to_string(), "routes[3].weight: must be > 0");
    }

    #[test]
    fn type_error_names_the_field() {
        let err = parse::<Config>(br#"{"routes":[{"weight":"x"}]}"#).unwrap_err();
        assert_eq!(err.path, "routes[0].weight");
        assert!(err.message.contains("invalid type"), "{err}");
    }

    #[test]
    fn unknown_field_is_an_error() {
        let err = parse::<Config>(br#"{"routes":[],"timeout":5}"#).unwrap_err();
        assert!(err.message.contains("unknown field `timeout`"), "{err}");
    }

    #[test]
    fn syntax_error_is_reported() {
        let err = parse::<Config>(b"{not json").unwrap_err();
        assert!(err.message.contains("line 1"), "{err}");
    }
}
