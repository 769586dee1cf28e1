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

/// A configuration's bytes: in VM memory, or left in the host and read in
/// chunks, so a large configuration (a 100 000-domain table is ~11 MiB) is
/// never held whole next to what is built from it (wasm memory never shrinks
/// below its peak).
#[derive(Clone, Copy)]
pub enum Source<'a> {
    Bytes(&'a [u8]),
    /// `len` bytes, read by `read(offset, max)`, which answers at most `max`
    /// bytes from `offset` (empty at the end or when the host fails).
    Chunked {
        len: usize,
        read: &'a dyn Fn(usize, usize) -> Vec<u8>,
    },
}

impl<'a> From<&'a [u8]> for Source<'a> {
    fn from(b: &'a [u8]) -> Self {
        Source::Bytes(b)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Source<'a> {
    fn from(b: &'a [u8; N]) -> Self {
        Source::Bytes(b)
    }
}

impl<'a> From<&'a Vec<u8>> for Source<'a> {
    fn from(b: &'a Vec<u8>) -> Self {
        Source::Bytes(b)
    }
}

/// Bytes asked of the host per read of a [`Source::Chunked`].
pub const CHUNK: usize = 64 << 10;

impl<'a> Source<'a> {
    /// A reader over the bytes (one type for both kinds, so each
    /// configuration type's deserializer is compiled once).
    pub fn reader(self) -> SourceReader<'a> {
        SourceReader {
            src: self,
            pos: 0,
            chunk: Vec::new(),
            at: 0,
            short: false,
        }
    }

    /// Each byte in order, without holding the whole source.
    pub fn bytes(self) -> impl Iterator<Item = u8> + 'a {
        let mut r = self.reader();
        std::iter::from_fn(move || r.next_byte())
    }

    /// FNV-1a (64-bit) of the bytes, as [`crate::codec::fnv1a64`].
    pub fn fnv1a64(self) -> u64 {
        self.bytes()
            .fold(crate::codec::FNV_OFFSET, crate::codec::fnv1a64_step)
    }
}

/// [`std::io::Read`] over a [`Source`].
pub struct SourceReader<'a> {
    src: Source<'a>,
    /// Offset of the next byte in the source.
    pos: usize,
    /// The chunk being read (chunked sources), from offset `pos - at`.
    chunk: Vec<u8>,
    at: usize,
    /// The host answered nothing before the announced length.
    short: bool,
}

impl SourceReader<'_> {
    /// The unread part of the current chunk, refilled when used up.
    fn fill(&mut self) -> &[u8] {
        match self.src {
            Source::Bytes(b) => b.get(self.pos..).unwrap_or_default(),
            Source::Chunked { len, read } => {
                if self.at >= self.chunk.len() && self.pos < len && !self.short {
                    // Cut to `len`; a host answering nothing ends the
                    // source early, which readers report.
                    let mut c = read(self.pos, CHUNK.min(len - self.pos));
                    c.truncate(len - self.pos);
                    self.short = c.is_empty();
                    self.chunk = c;
                    self.at = 0;
                }
                self.chunk.get(self.at..).unwrap_or_default()
            }
        }
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        self.at += n;
    }

    fn next_byte(&mut self) -> Option<u8> {
        let b = *self.fill().first()?;
        self.consume(1);
        Some(b)
    }
}

impl std::io::Read for SourceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.fill().is_empty() && self.short && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                SHORT,
            ));
        }
        let avail = self.fill();
        let n = avail.len().min(buf.len());
        // invariant: `n` is at most both lengths (the `min` above).
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

const SHORT: &str = "the host answered only part of the document";

impl Source<'_> {
    /// Whether the bytes are only whitespace (or none); an error if the
    /// host did not answer them all.
    fn is_blank(self) -> Result<bool, ConfigError> {
        let mut r = self.reader();
        let blank = std::iter::from_fn(|| r.next_byte()).all(|b| is_json_whitespace(&b));
        if r.short {
            return Err(ConfigError::new("", SHORT));
        }
        Ok(blank)
    }
}

/// Parses the configuration as JSON into `T` and validates it.
///
/// Empty input (or only whitespace) means "no configuration": `T::default()`
/// is returned, after validation, so a filter's documented defaults apply.
/// Anything else must be one JSON object (see [`parse_document`]).
pub fn parse<'a, T>(src: impl Into<Source<'a>>) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate + Default,
{
    let src = src.into();
    let value = if src.is_blank()? {
        T::default()
    } else {
        parse_document(src)?
    };
    value.validate()?;
    Ok(value)
}

/// Parses the source as exactly one JSON object into `T`, without defaults
/// or validation (for documents with their own checks, such as control and
/// discovery answers; plugin configurations go through [`parse`]).
///
/// Refused, with a message naming the problem: empty input, a root that is
/// not an object (serde's derived structs would read `[]` as all defaults),
/// and anything but whitespace after the object (`{} x`, `{}{}`, `{}}`, a
/// trailing NUL), which a deserializer never asked to `end()` ignores.
///
/// A deserializer may report an error below where it was raised by
/// [`nested_error`]: its path is appended to the place it was raised.
pub fn parse_document<'a, T: DeserializeOwned>(
    src: impl Into<Source<'a>>,
) -> Result<T, ConfigError> {
    let src = src.into();
    check_root(src)?;
    let mut de = serde_json::Deserializer::from_reader(src.reader());
    let value = T::deserialize(&mut de).map_err(|e| located_error(src, &e))?;
    de.end().map_err(|e| trailing_error(src, &e))?;
    Ok(value)
}

/// A serde_json error as a [`ConfigError`] naming the field.
///
/// The path is found from where serde_json stopped (its line and column)
/// by re-reading the document up to there ([`path_at`]), not by wrapping
/// every type's deserializer (`serde_path_to_error` doubled the modules'
/// configuration code). What the error is about decides what to do with a
/// `}` or `]` the parser had already looked at: a missing field or a wrong
/// length is about that object or array, a wrong value is about the value
/// just read before it.
///
/// serde_json places an error raised after a value's own deserializer has
/// returned (a `deserialize_with` or `try_from` that validates, a tagged,
/// untagged or flattened type, which serde buffers first) where the
/// enclosing object ends: such errors name that object, not the field.
/// Validate in [`Validate`] instead, where paths are exact, or read the type
/// in one pass (as the rate limit's key parts are).
fn located_error(src: Source<'_>, e: &serde_json::Error) -> ConfigError {
    let full = e.to_string();
    let message = strip_position(&full);
    if e.line() == 0 {
        // Raised outside the parser (an I/O error such as a short read).
        return ConfigError::new("", message);
    }
    if let Some((below, message)) = message
        .strip_prefix(NESTED)
        .and_then(|m| m.split_once(NESTED))
    {
        let mut at = path_at(src, e.line(), e.column(), Closer::Ends);
        // Raised by a list's visitor between two elements: the parser has
        // begun the next one, and `below` starts at the list.
        if at.began_element && below.starts_with('[') {
            at.segments.pop();
        }
        return ConfigError::new(join_path(&render(&at.segments), below), message);
    }
    let closer = if message.starts_with("missing field") || message.starts_with("invalid length") {
        Closer::Ends
    } else {
        Closer::AfterScalar
    };
    // Keep serde_json's position on messages that had one (as before).
    let at = path_at(src, e.line(), e.column(), closer);
    ConfigError::new(render(&at.segments), full)
}

/// What a `}` or `]` the parser counted last means for the error's path.
#[derive(Clone, Copy, PartialEq)]
enum Closer {
    /// The object or array it closes is what the error is about.
    Ends,
    /// After a number or literal it was only looked at (serde_json peeks
    /// one byte past a number): the error is about the scalar.
    AfterScalar,
}

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `a.b[2].c`; a key is written as it is (an empty key too: `m..x`).
fn render(segments: &[Segment]) -> String {
    let mut out = String::new();
    for (i, s) in segments.iter().enumerate() {
        match s {
            Segment::Key(k) if i == 0 => out.push_str(k),
            Segment::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Segment::Index(n) => {
                out.push('[');
                out.push_str(&n.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// Where [`path_at`] found the parser.
struct At {
    segments: Vec<Segment>,
    /// The last bytes read were a `,` in a list and the first byte of the
    /// next element (serde_json's look past an element's end).
    began_element: bool,
}

/// One open object or array while [`path_at`] re-reads a document.
enum Frame {
    /// The member key read last, if its value is still current.
    Object(Option<String>),
    /// The element's index, once that element has begun.
    Array(usize, bool),
}

/// A key's text between its quotes, unescaped (`\u00e9` → `é`).
fn unescape_key(raw: &[u8]) -> String {
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    // Through the reader every configuration is parsed with: no second
    // copy of serde_json's string parser in the module.
    let mut de = serde_json::Deserializer::from_reader(Source::Bytes(&quoted).reader());
    <String as serde::Deserialize>::deserialize(&mut de)
        .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned())
}

/// The JSON path of the value the parser was in at serde_json's 1-based
/// `line` and `column` (bytes read on that line, the byte it looked at last
/// included).
fn path_at(src: Source<'_>, line: usize, column: usize, closer: Closer) -> At {
    let mut stack: Vec<Frame> = Vec::new();
    let mut r = src.reader();
    let (mut l, mut c) = (1, 0);
    let mut in_string: Option<Vec<u8>> = None;
    let mut escaped = false;
    let mut after_scalar = false;
    let mut in_scalar = false;
    // After a `,` in a list: the next value start begins an element.
    let mut after_comma = false;
    let mut began_element = false;
    let begin = |stack: &mut Vec<Frame>| {
        if let Some(Frame::Array(_, started)) = stack.last_mut() {
            *started = true;
        }
    };
    while (l, c) < (line, column) {
        let Some(b) = r.next_byte() else { break };
        if b == b'\n' {
            (l, c) = (l + 1, 0);
        } else {
            c += 1;
        }
        if let Some(text) = in_string.as_mut() {
            began_element = false;
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                // A string right after `{` or `,` in an object is a key.
                let key = unescape_key(text);
                in_string = None;
                if let Some(Frame::Object(slot @ None)) = stack.last_mut() {
                    *slot = Some(key);
                }
                continue;
            }
            text.push(b);
            continue;
        }
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            after_scalar = after_scalar || in_scalar;
            in_scalar = false;
            continue;
        }
        let was_scalar = in_scalar;
        in_scalar = false;
        let value_start = !matches!(b, b'}' | b']' | b',' | b':');
        began_element = value_start
            && after_comma
            && !was_scalar
            && matches!(stack.last(), Some(Frame::Array(..)));
        after_comma = false;
        match b {
            // serde_json looks one byte past a number or literal: the
            // error is about the scalar, not what that byte starts or ends.
            b'}' | b']' | b','
                if closer == Closer::AfterScalar
                    && (was_scalar || after_scalar)
                    && (l, c) >= (line, column) => {}
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object(key)) => *key = None,
                Some(Frame::Array(i, started)) => {
                    (*i, *started) = (*i + 1, false);
                    after_comma = true;
                }
                None => {}
            },
            b':' => {}
            b'"' => {
                if !matches!(stack.last(), Some(Frame::Object(None))) {
                    begin(&mut stack);
                }
                in_string = Some(Vec::new());
            }
            b'{' | b'[' => {
                begin(&mut stack);
                stack.push(if b == b'{' {
                    Frame::Object(None)
                } else {
                    Frame::Array(0, false)
                });
            }
            _ => {
                if !was_scalar {
                    begin(&mut stack);
                }
                in_scalar = true;
            }
        }
        after_scalar = false;
    }
    let segments = stack
        .into_iter()
        .filter_map(|f| match f {
            Frame::Object(Some(k)) => Some(Segment::Key(k)),
            Frame::Array(i, true) => Some(Segment::Index(i)),
            _ => None,
        })
        .collect();
    At {
        segments,
        began_element,
    }
}

/// Marks a [`nested_error`]'s path inside a serde error message.
const NESTED: &str = "\u{1}";

/// A serde error carrying `e`'s path relative to the value being
/// deserialized, for a hand-written `Deserialize` that validates as it
/// reads (so a large document is never held whole): [`parse_document`]
/// appends the path to where the error was raised.
///
/// Raise it from that value's own `visit_map` / `visit_seq`, while the
/// parser is still inside the value: the path is found from where the
/// parser stopped, and an error raised after the value was returned to
/// its parent is placed by the parent (one level too high).
pub fn nested_error<E: serde::de::Error>(e: ConfigError) -> E {
    E::custom(format_args!("{NESTED}{}{NESTED}{}", e.path, e.message))
}

/// serde_json appends ` at line L column C` to custom errors; a nested
/// error names its field instead.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i)
            if message[i + 9..]
                .bytes()
                .all(|b| b.is_ascii_digit() || b" column".contains(&b)) =>
        {
            message[..i].to_string()
        }
        _ => message.to_string(),
    }
}

/// The byte order mark some editors prepend; RFC 8259 forbids sending it.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// JSON's own whitespace (RFC 8259): what may surround the root object.
fn is_json_whitespace(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Refuses a document whose first non-whitespace byte does not open an
/// object, naming what was found instead.
fn check_root(src: Source<'_>) -> Result<(), ConfigError> {
    let mut line = 1;
    let mut line_start = 0;
    let mut bytes = src.bytes().enumerate();
    let Some((at, first)) = bytes.by_ref().find(|(i, b)| {
        if *b == b'\n' {
            line += 1;
            line_start = i + 1;
        }
        !is_json_whitespace(b)
    }) else {
        return Err(ConfigError::new(
            "",
            "the document is empty; it must be a JSON object",
        ));
    };
    let mut rest = vec![first];
    rest.extend(bytes.take(4).map(|(_, b)| b));
    let found = match first {
        b'{' => return Ok(()),
        b'[' => "an array".to_string(),
        b'"' => "a string".to_string(),
        b'-' | b'0'..=b'9' => "a number".to_string(),
        _ if rest.starts_with(b"true") || rest.starts_with(b"false") => "a boolean".to_string(),
        _ if rest.starts_with(b"null") => "null".to_string(),
        _ if rest.starts_with(UTF8_BOM) => "a UTF-8 byte order mark (remove it)".to_string(),
        b => {
            let column = at - line_start + 1;
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
fn trailing_error(src: Source<'_>, e: &serde_json::Error) -> ConfigError {
    let (line, column) = (e.line(), e.column());
    // A NUL usually means a C string's terminator was sent along: say so.
    let what = match byte_at(src, line, column) {
        Some(0) => "a NUL byte",
        _ => "trailing data",
    };
    ConfigError::new(
        "",
        format!("{what} after the JSON object at line {line} column {column}"),
    )
}

/// The byte serde_json reports at 1-based `line` and `column`, if any.
fn byte_at(src: Source<'_>, line: usize, column: usize) -> Option<u8> {
    let mut bytes = src.bytes();
    for _ in 1..line {
        bytes.by_ref().find(|b| *b == b'\n')?;
    }
    bytes.nth(column.checked_sub(1)?)
}

/// A byte for a message: itself when printable, else its hex value.
fn describe_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("`{}`", b as char)
    } else {
        format!("byte 0x{b:02X}")
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

    /// `doc` as a host would hand it over: `step` bytes per read at most.
    fn chunked<T>(doc: &[u8], step: usize, f: impl FnOnce(Source<'_>) -> T) -> T {
        let read = |at: usize, max: usize| doc[at..(at + max.min(step)).min(doc.len())].to_vec();
        f(Source::Chunked {
            len: doc.len(),
            read: &read,
        })
    }

    #[test]
    fn chunked_sources_parse_like_bytes() {
        let doc = br#"{"routes":[{"name":"a","weight":1},{"name":"b","weight":2}],"timeout_ms":7}"#;
        for step in [1, 3, 64, CHUNK] {
            let c: Config = chunked(doc, step, |s| parse(s)).unwrap();
            assert_eq!(
                (c.routes.len(), c.routes[1].weight, c.timeout_ms),
                (2, 2, 7)
            );
            assert_eq!(
                chunked(doc, step, |s| s.fnv1a64()),
                crate::codec::fnv1a64(doc)
            );
        }
        for doc in [
            &b"{}}"[..],
            b"{\n}\n \0",
            b"\n <html>",
            b"[1]",
            br#"{"routes":[{"weight":0}]}"#,
        ] {
            let bytes = parse::<Config>(doc).unwrap_err();
            assert_eq!(chunked(doc, 2, |s| parse::<Config>(s)).unwrap_err(), bytes);
        }
        // A host that answers less than asked ends the source: an error, never a hang.
        let short = |_: usize, _: usize| Vec::new();
        let src = Source::Chunked {
            len: 10,
            read: &short,
        };
        assert_eq!(parse::<Config>(src).unwrap_err().message, SHORT);
        let half = |at: usize, _: usize| if at == 0 { b"{ ".to_vec() } else { Vec::new() };
        let src = Source::Chunked {
            len: 10,
            read: &half,
        };
        let err = parse_document::<Config>(src).unwrap_err();
        assert!(err.message.contains(SHORT), "{err}");
    }

    /// Reads a list of weights, refusing a zero as it goes, as a large
    /// table's deserializer does.
    #[derive(Debug)]
    struct Checked;

    impl<'de> Deserialize<'de> for Checked {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_seq(CheckedVisitor)
        }
    }

    struct CheckedVisitor;

    impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
        type Value = Checked;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("weights")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
            let mut i = 0;
            while let Some(w) = seq.next_element::<u32>()? {
                if w == 0 {
                    return Err(nested_error(ConfigError::new(
                        format!("[{i}].weight"),
                        "must be > 0",
                    )));
                }
                i += 1;
            }
            Ok(Checked)
        }
    }

    #[derive(Debug, Deserialize)]
    struct Outer {
        #[allow(dead_code)]
        inner: Checked,
    }

    #[test]
    fn nested_errors_name_the_field_below_where_they_were_raised() {
        // The zero first, in the middle and last: the parser stops in a
        // different place each time (before the next element, at `]`).
        for (doc, want) in [
            (r#"{"inner": [0, 1]}"#, "inner[0].weight: must be > 0"),
            (r#"{"inner": [1, 2, 0]}"#, "inner[2].weight: must be > 0"),
            (
                r#"{"inner": [1, 0, 3], "n": 1}"#,
                "inner[1].weight: must be > 0",
            ),
            (
                r#"{"n": 1, "inner": [1, 0]}"#,
                "inner[1].weight: must be > 0",
            ),
        ] {
            let err = parse_document::<Outer>(doc.as_bytes()).unwrap_err();
            assert_eq!(err.to_string(), want, "{doc}");
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Paths {
        a: Option<Vec<Inner>>,
        b: Option<u32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        x: u32,
        y: Option<String>,
    }

    /// A map whose values must not be 0, refused as it is read.
    #[derive(Debug)]
    struct NoZero;

    impl<'de> Deserialize<'de> for NoZero {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(NoZeroVisitor)
        }
    }

    struct NoZeroVisitor;

    impl<'de> serde::de::Visitor<'de> for NoZeroVisitor {
        type Value = NoZero;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("counts")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<NoZero, A::Error> {
            while let Some((k, v)) = map.next_entry::<String, u32>()? {
                if v == 0 {
                    return Err(nested_error(ConfigError::new(k, "must not be 0")));
                }
            }
            Ok(NoZero)
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Probe {
        m: Option<std::collections::BTreeMap<String, Inner>>,
        z: Option<std::collections::BTreeMap<String, NoZero>>,
        v: Option<Vec<Checked>>,
        l: Option<std::collections::BTreeMap<String, Checked>>,
    }

    /// Keys as the document means them (escapes undone, empty and
    /// bracketed keys kept), and nested errors under maps and lists of
    /// lists (found by a review of the first version).
    #[test]
    fn paths_keep_odd_keys_and_nested_lists() {
        for (doc, want) in [
            (r#"{"m": {"k\u00e9": {"x": 1.5}}}"#, "m.ké.x"),
            (r#"{"m": {"a\"b": {"x": 1.5}}}"#, "m.a\"b.x"),
            (r#"{"\u006d": {"k": {"x": "s"}}}"#, "m.k.x"),
            (r#"{"m": {"": {"x": "s"}}}"#, "m..x"),
            (r#"{"z": {"k": {"k": 0}}}"#, "z.k.k"),
            (r#"{"z": {"z": {"z": 0}}}"#, "z.z.z"),
            (r#"{"z": {"k": {"j": 1, "k": 0, "y": 2}}}"#, "z.k.k"),
            (r#"{"v": [[1], [2, 0]]}"#, "v[1][1].weight"),
            (r#"{"v": [[1], [2, 0, 3]]}"#, "v[1][1].weight"),
            (r#"{"v": [[0, 1]]}"#, "v[0][0].weight"),
            (r#"{"v": [[1], [0]], "m": {}}"#, "v[1][0].weight"),
            (r#"{"l": {"x[3]": [0]}}"#, "l.x[3][0].weight"),
        ] {
            let err = parse_document::<Probe>(doc.as_bytes()).unwrap_err();
            assert_eq!(err.path, want, "{doc}: {err}");
            let chunked = chunked(doc.as_bytes(), 1, |s| parse_document::<Probe>(s)).unwrap_err();
            assert_eq!(chunked, err, "{doc}");
        }
    }

    /// Where serde_json stops for each kind of error, and the path named:
    /// a number is followed by the byte after it, a missing field is
    /// found at the closing brace.
    #[test]
    fn errors_name_the_field_wherever_the_parser_stopped() {
        for (doc, want) in [
            (r#"{"b": "x"}"#, "b"),
            (r#"{"b": -1, "a": []}"#, "b"),
            (r#"{"a": [{"x": 1}, {"x": "no"}]}"#, "a[1].x"),
            (r#"{"a": [{"x": 1}, {"x": 1.5}], "b": 1}"#, "a[1].x"),
            (r#"{"a": [{"x": 1}, {"x": 2, "y": 3}]}"#, "a[1].y"),
            (r#"{"a": [{"x": 1, "z": 3}]}"#, "a[0].z"),
            (r#"{"a": [{"x": 1}, {"y": "s"}]}"#, "a[1]"),
            (r#"{"a": [{"y": "s"}], "b": 2}"#, "a[0]"),
            (r#"{"a": [{"x": 1}, 7]}"#, "a[1]"),
            (r#"{"a": {"x": 1}}"#, "a"),
            (r#"{"a": [{"x": 1}], "c": {}}"#, "c"),
            (r#"{"a": [{"x": 1,}]}"#, "a[0]"),
            (
                "{\n  \"a\": [\n    {\"x\": 1},\n    {\"x\": true}\n  ]\n}",
                "a[1].x",
            ),
            (r#"{"a": [{"x": 1, "y": "a\"b"}, {"y": "\"}"}]}"#, "a[1]"),
        ] {
            let err = parse_document::<Paths>(doc.as_bytes()).unwrap_err();
            assert_eq!(err.path, want, "{doc}: {err}");
            let chunked = chunked(doc.as_bytes(), 3, |s| parse_document::<Paths>(s)).unwrap_err();
            assert_eq!(chunked, err, "{doc}");
        }
    }
}
