//! A header map as a stage sees it: every pair Envoy sent, in order, values
//! as bytes (clients can send anything), repeated headers kept.
//!
//! The SDK fills one per phase from a single `proxy_get_header_map_pairs`
//! call and keeps it in step with the stage's own writes, so later stages
//! (and `on_log`) read the map without asking Envoy again. Names are
//! lower-case, as Envoy stores them; lookups are ASCII case-insensitive.
//!
//! Repeated headers follow Envoy: [`HeaderMap::values`] yields every
//! occurrence (HTTP/1 sends `Cookie` lines separately; HTTP/2 crumbs arrive
//! joined by Envoy), [`HeaderMap::get`] the first, and
//! [`HeaderMap::cookie`] looks through every `Cookie` line.

/// Pairs of one header map (request, response or trailers).
///
/// The pairs are spans into one buffer: Envoy's serialised map as the host
/// handed it over (no copy per header), then whatever this VM set or added.
#[derive(Clone, Default)]
pub struct HeaderMap {
    buf: Vec<u8>,
    /// Per pair, in order: name start, name end, value start, value end.
    spans: Vec<[usize; 4]>,
}

impl HeaderMap {
    /// A map from pairs (tests, and maps not read from Envoy).
    pub fn from_pairs(pairs: Vec<(String, Vec<u8>)>) -> Self {
        let mut m = HeaderMap::default();
        for (k, v) in &pairs {
            m.push(k.as_bytes(), v);
        }
        m
    }

    /// The map of a `proxy_get_header_map_pairs` answer, kept as it is;
    /// `None` when malformed (see [`crate::wire::decode_map_spans`]).
    pub fn from_wire(buf: Vec<u8>) -> Option<Self> {
        let spans = crate::wire::decode_map_spans(&buf)?;
        Some(HeaderMap { buf, spans })
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        let n = self.buf.len();
        self.buf.extend(name.iter().map(u8::to_ascii_lowercase));
        let v = self.buf.len();
        self.buf.extend_from_slice(value);
        self.spans.push([n, v, v, self.buf.len()]);
    }

    fn pair(&self, s: &[usize; 4]) -> (&[u8], &[u8]) {
        (
            self.buf.get(s[0]..s[1]).unwrap_or_default(),
            self.buf.get(s[2]..s[3]).unwrap_or_default(),
        )
    }

    /// All pairs, in order: (name, value) as bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans.iter().map(|s| self.pair(s))
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The first value of `name`; `None` when absent. `host` names
    /// `:authority` too, as in Envoy's header maps and route matchers (an
    /// HTTP/1 `Host` arrives as `:authority`).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(k, _)| Self::is_named(k, name))
            .map(|(_, v)| v)
    }

    /// The first value of `name` when it is valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Whether `name` is present at all.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every value of `name`, in arrival order (`host`: `:authority`'s and
    /// any literal `host`'s).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(k, _)| Self::is_named(k, name))
            .map(|(_, v)| v)
    }

    /// Every value of `name` joined with `", "`, as a proxy folds repeated
    /// fields (RFC 9110 §5.3); `None` when absent.
    pub fn joined(&self, name: &str) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for v in self.values(name) {
            match &mut out {
                None => out = Some(v.to_vec()),
                Some(o) => {
                    o.extend_from_slice(b", ");
                    o.extend_from_slice(v);
                }
            }
        }
        out
    }

    /// Whether header `key` answers to `name` (ASCII case-insensitive; `host`
    /// is `:authority`).
    fn is_named(key: &[u8], name: &str) -> bool {
        key.eq_ignore_ascii_case(name.as_bytes())
            || (key == b":authority" && name.eq_ignore_ascii_case("host"))
    }

    /// The value of cookie `name`, looking through every `Cookie` line
    /// (RFC 6265 §5.4: `a=1; b=2`); the first occurrence wins.
    pub fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.values("cookie")
            .find_map(|line| cookie_value(line, name))
    }

    /// Replaces every value of `name` with `value` (appends when absent).
    pub fn set(&mut self, name: &str, value: &[u8]) {
        self.remove(name);
        self.push(name.as_bytes(), value);
    }

    /// Appends a value, keeping existing ones.
    pub fn add(&mut self, name: &str, value: &[u8]) {
        self.push(name.as_bytes(), value);
    }

    /// Removes every value of `name`; whether there was one. (The bytes stay
    /// in the buffer until the map is dropped: maps live for one request.)
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.spans.len();
        let buf = &self.buf;
        self.spans.retain(|s| {
            !buf.get(s[0]..s[1])
                .unwrap_or_default()
                .eq_ignore_ascii_case(name.as_bytes())
        });
        self.spans.len() != before
    }
}

impl PartialEq for HeaderMap {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for HeaderMap {}

impl std::fmt::Debug for HeaderMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

/// The value of cookie `name` in one `Cookie` header line.
pub fn cookie_value<'a>(line: &'a [u8], name: &str) -> Option<&'a [u8]> {
    line.split(|b| *b == b';')
        .map(|c| c.trim_ascii())
        .find_map(|c| {
            let eq = c.iter().position(|b| *b == b'=')?;
            // invariant: `eq` is a position in `c`, so both slices are in bounds.
            (c[..eq].trim_ascii() == name.as_bytes()).then(|| c[eq + 1..].trim_ascii())
        })
}

/// One pending change to a header map, applied to Envoy once per phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// `proxy_replace_header_map_value`: replaces every value (adds when absent).
    Set(String, Vec<u8>),
    /// `proxy_add_header_map_value`.
    Add(String, Vec<u8>),
    /// `proxy_remove_header_map_value`.
    Remove(String),
}

impl Edit {
    fn name(&self) -> &str {
        match self {
            Edit::Set(n, _) | Edit::Add(n, _) | Edit::Remove(n) => n,
        }
    }
}

/// Appends `edit` to `edits`, dropping earlier edits it makes pointless: a
/// set or remove of a name supersedes every earlier edit of that name (a
/// replace already clears all values), so each header costs at most one
/// host call, plus one per `Add` after it.
pub fn push_edit(edits: &mut Vec<Edit>, edit: Edit) {
    if matches!(edit, Edit::Set(..) | Edit::Remove(..)) {
        let name = edit.name().to_string();
        edits.retain(|e| !e.name().eq_ignore_ascii_case(&name));
    }
    edits.push(edit);
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        HeaderMap::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    /// A map read from Envoy's serialised form keeps every pair; edits
    /// after it (set, add, remove) see and change the same pairs.
    #[test]
    fn wire_maps_read_in_place_and_take_edits() {
        let wire = crate::wire::encode_map(&[
            (":path", &b"/a"[..]),
            ("cookie", b"a=1"),
            ("x-bin", b"\xff\x00"),
            ("Cookie", b"b=2"),
        ]);
        let mut m = HeaderMap::from_wire(wire).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m.get("x-bin"), Some(&b"\xff\x00"[..]));
        assert_eq!(m.cookie("b"), Some(&b"2"[..]));
        m.set("cookie", b"c=3");
        m.add("X-New", b"1");
        assert!(m.remove(":path"));
        assert!(!m.remove(":path"));
        let pairs: Vec<(&[u8], &[u8])> = m.iter().collect();
        assert_eq!(
            pairs,
            vec![
                (&b"x-bin"[..], &b"\xff\x00"[..]),
                (b"cookie", b"c=3"),
                (b"x-new", b"1")
            ]
        );
        assert!(HeaderMap::from_wire(vec![9, 0, 0, 0, 1]).is_none());
    }

    #[test]
    fn host_names_the_authority() {
        let m = map(&[(":authority", "h.test"), ("x-a", "1")]);
        assert_eq!(m.get("host"), Some(&b"h.test"[..]));
        assert_eq!(m.get("Host"), Some(&b"h.test"[..]));
        assert!(m.contains("host"));
        assert_eq!(map(&[("x-a", "1")]).get("host"), None);
    }

    #[test]
    fn repeated_headers_keep_every_value() {
        let m = map(&[("x-tier", "free"), ("x-tier", "premium"), ("a", "1")]);
        assert_eq!(m.get("X-Tier"), Some(&b"free"[..]));
        let all: Vec<&[u8]> = m.values("x-tier").collect();
        assert_eq!(all, vec![&b"free"[..], &b"premium"[..]]);
        assert_eq!(m.joined("x-tier").as_deref(), Some(&b"free, premium"[..]));
        assert_eq!(m.joined("absent"), None);
    }

    #[test]
    fn cookie_looks_through_every_line() {
        let m = map(&[("cookie", "a=1"), ("cookie", "session=user42; b=2")]);
        assert_eq!(m.cookie("session"), Some(&b"user42"[..]));
        assert_eq!(m.cookie("a"), Some(&b"1"[..]));
        assert_eq!(m.cookie("nope"), None);
        assert_eq!(cookie_value(b"novalue; x=", "x"), Some(&b""[..]));
        assert_eq!(
            cookie_value(b"a=1; session=abc ;b=2", "session"),
            Some(&b"abc"[..])
        );
    }

    #[test]
    fn writes_update_the_view() {
        let mut m = map(&[("x", "1"), ("x", "2")]);
        m.set("X", b"3");
        assert_eq!(m.values("x").count(), 1);
        assert_eq!(m.get("x"), Some(&b"3"[..]));
        m.add("x", b"4");
        assert_eq!(m.values("x").count(), 2);
        assert!(m.remove("x"));
        assert!(!m.remove("x"));
        assert!(m.is_empty());
    }

    #[test]
    fn a_set_or_remove_supersedes_earlier_edits_of_the_name() {
        let mut e = Vec::new();
        push_edit(&mut e, Edit::Remove("x-a".into()));
        push_edit(&mut e, Edit::Set("x-a".into(), b"1".to_vec()));
        push_edit(&mut e, Edit::Set("x-b".into(), b"1".to_vec()));
        push_edit(&mut e, Edit::Add("x-b".into(), b"2".to_vec()));
        push_edit(&mut e, Edit::Set("X-A".into(), b"2".to_vec()));
        assert_eq!(
            e,
            vec![
                Edit::Set("x-b".into(), b"1".to_vec()),
                Edit::Add("x-b".into(), b"2".to_vec()),
                Edit::Set("X-A".into(), b"2".to_vec()),
            ]
        );
    }
}
