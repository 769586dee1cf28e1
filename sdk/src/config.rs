//! Typed plugin configuration.
//!
//! Envoy hands the plugin configuration to `on_configure` as raw bytes. A
//! filter declares a `serde` struct (with `#[serde(deny_unknown_fields)]` so
//! typos are errors, not silently ignored) and implements [`Validate`] for the
//! rules serde cannot express. [`parse`] returns either the typed value or a
//! [`ConfigError`] whose message starts with the JSON path of the bad field,
//! e.g. `routes[3].weight: must be > 0`.
//!
//! A document is exactly one JSON object: any other root (`[]`, `3`, `null`,
//! a string) and anything but whitespace after the object (`{} x`, `{}{}`,
//! a trailing NUL) is an error, never defaults or a half-read document.
//! [`parse_document`] enforces that for every JSON the filters read: plugin
//! configurations and control or discovery answers alike.

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
/// Anything else must be one JSON object (see [`parse_document`]).
pub fn parse<T>(bytes: &[u8]) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate + Default,
{
    let value = if bytes.iter().all(u8::is_ascii_whitespace) {
        T::default()
    } else {
        parse_document(bytes)?
    };
    value.validate()?;
    Ok(value)
}

/// Parses `bytes` as exactly one JSON object into `T`, without defaults or
/// validation (for documents with their own checks, such as control and
/// discovery answers; plugin configurations go through [`parse`]).
///
/// Refused, with a message naming the problem: empty input, a root that is
/// not an object (serde's derived structs would read `[]` as all defaults),
/// and anything but whitespace after the object (`{} x`, `{}{}`, `{}}`, a
/// trailing NUL), which a deserializer never asked to `end()` ignores.
pub fn parse_document<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    check_root(bytes)?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = display_path(e.path());
        ConfigError::new(path, e.into_inner().to_string())
    })?;
    de.end().map_err(|e| trailing_error(bytes, &e))?;
    Ok(value)
}

/// The byte order mark some editors prepend; RFC 8259 forbids sending it.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// JSON's own whitespace (RFC 8259): what may surround the root object.
fn is_json_whitespace(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Refuses a document whose first non-whitespace byte does not open an
/// object, naming what was found instead.
fn check_root(bytes: &[u8]) -> Result<(), ConfigError> {
    let Some(at) = bytes.iter().position(|b| !is_json_whitespace(b)) else {
        return Err(ConfigError::new(
            "",
            "the document is empty; it must be a JSON object",
        ));
    };
    let rest = &bytes[at..];
    let found = match rest[0] {
        b'{' => return Ok(()),
        b'[' => "an array".to_string(),
        b'"' => "a string".to_string(),
        b'-' | b'0'..=b'9' => "a number".to_string(),
        _ if rest.starts_with(b"true") || rest.starts_with(b"false") => "a boolean".to_string(),
        _ if rest.starts_with(b"null") => "null".to_string(),
        _ if rest.starts_with(UTF8_BOM) => "a UTF-8 byte order mark (remove it)".to_string(),
        b => {
            let (line, column) = line_column(bytes, at);
            format!("{} at line {line} column {column}", describe_byte(b))
        }
    };
    Err(ConfigError::new(
        "",
        format!("the document must be a JSON object, found {found}"),
    ))
}

/// Explains a failed `Deserializer::end`: the object was complete but more
/// than whitespace followed it.
fn trailing_error(bytes: &[u8], e: &serde_json::Error) -> ConfigError {
    let (line, column) = (e.line(), e.column());
    // A NUL usually means a C string's terminator was sent along: say so.
    let what = match byte_at(bytes, line, column) {
        Some(0) => "a NUL byte",
        _ => "trailing data",
    };
    ConfigError::new(
        "",
        format!("{what} after the JSON object at line {line} column {column}"),
    )
}

/// 1-based line and byte column of `bytes[index]`, as serde_json counts them.
fn line_column(bytes: &[u8], index: usize) -> (usize, usize) {
    let before = &bytes[..index.min(bytes.len())];
    let line = 1 + before.iter().filter(|b| **b == b'\n').count();
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    (line, index - line_start + 1)
}

/// The byte serde_json reports at 1-based `line` and `column`, if any.
fn byte_at(bytes: &[u8], line: usize, column: usize) -> Option<u8> {
    let line_start = if line <= 1 {
        0
    } else {
        bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(line - 2)
            .map(|(i, _)| i + 1)?
    };
    bytes.get(line_start + column.checked_sub(1)?).copied()
}

/// A byte for a message: itself when printable, else its hex value.
fn describe_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("`{}`", b as char)
    } else {
        format!("byte 0x{b:02X}")
    }
}

/// `serde_path_to_error` prints `.` for the root and `a.b[3].c` otherwise.
fn display_path(path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p == "." { String::new() } else { p }
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

    /// The message `parse::<Config>` gives for `doc`, which must be refused.
    fn refused(doc: &[u8]) -> String {
        match parse::<Config>(doc) {
            Ok(c) => panic!("{:?} accepted as {c:?}", String::from_utf8_lossy(doc)),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn non_object_roots_are_refused() {
        let cases: [(&[u8], &str); 9] = [
            (b"[]", "an array"),
            (b"[3, []]", "an array"),
            (b"  \n [{}]", "an array"),
            (br#""str""#, "a string"),
            (b"3", "a number"),
            (b"-1", "a number"),
            (b"null", "null"),
            (b"true", "a boolean"),
            (b"\xEF\xBB\xBF{}", "a UTF-8 byte order mark (remove it)"),
        ];
        for (doc, found) in cases {
            assert_eq!(
                refused(doc),
                format!("the document must be a JSON object, found {found}")
            );
        }
        assert_eq!(
            refused(b"\n <html>"),
            "the document must be a JSON object, found `<` at line 2 column 2"
        );
        assert_eq!(
            refused(b"\0{}"),
            "the document must be a JSON object, found byte 0x00 at line 1 column 1"
        );
    }

    #[test]
    fn trailing_data_is_refused() {
        let cases: [(&[u8], &str); 5] = [
            (
                br#"{"timeout_ms":1} x"#,
                "trailing data after the JSON object at line 1 column 18",
            ),
            (
                b"{}}",
                "trailing data after the JSON object at line 1 column 3",
            ),
            (
                br#"{}{"timeout_ms":1}"#,
                "trailing data after the JSON object at line 1 column 3",
            ),
            (
                b"{}\0",
                "a NUL byte after the JSON object at line 1 column 3",
            ),
            (
                b"{\n}\n \0",
                "a NUL byte after the JSON object at line 3 column 2",
            ),
        ];
        for (doc, want) in cases {
            assert_eq!(refused(doc), want);
        }
    }

    #[test]
    fn whitespace_around_the_object_is_fine() {
        let c: Config = parse(b" \r\n\t{\"timeout_ms\": 5}\n\n ").unwrap();
        assert_eq!(c.timeout_ms, 5);
    }

    #[test]
    fn parse_document_checks_the_root_without_defaults() {
        use serde_json::Value;
        let err = |doc: &[u8]| parse_document::<Value>(doc).unwrap_err().to_string();
        assert_eq!(
            err(b"  "),
            "the document is empty; it must be a JSON object"
        );
        assert_eq!(
            err(br#"{"a":1} x"#),
            "trailing data after the JSON object at line 1 column 9"
        );
        assert_eq!(
            err(b"{}{}"),
            "trailing data after the JSON object at line 1 column 3"
        );
        assert_eq!(
            err(b"[3, []]"),
            "the document must be a JSON object, found an array"
        );
        let doc: Value = parse_document(br#" {"a": [1]} "#).unwrap();
        assert_eq!(doc["a"][0], 1);
    }
}
