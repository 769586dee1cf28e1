//! Request matchers of a rule: path, method and headers, compiled once per
//! table. Semantics follow Envoy's route match: `path` (exact) and `regex`
//! see the path without its query string, `prefix` sees the whole `:path`;
//! a regex must match the whole value; a header matcher on an absent header
//! fails unless it asks for absence.

use regex_lite::Regex;

/// What a rule may look at. Implemented over the host's headers in the
/// filter and over plain maps in tests.
pub trait RequestView {
    /// The `:path` pseudo-header.
    fn path(&self) -> &[u8];
    /// The `:method` pseudo-header.
    fn method(&self) -> &[u8];
    /// A request header's (first) value.
    fn header(&self, name: &str) -> Option<Vec<u8>>;
    /// Every value of a repeated request header, in order (Envoy's route
    /// header matcher matches when any of them does).
    fn header_values(&self, name: &str) -> Vec<Vec<u8>> {
        self.header(name).into_iter().collect()
    }
}

/// Compiles `pattern` to match a whole value (Envoy's `safe_regex` is a full
/// match). Size limits keep a hostile table from blowing up memory.
pub fn compile_regex(pattern: &str) -> Result<Regex, String> {
    regex_lite::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .nest_limit(64)
        .build()
        .map_err(|e| format!("invalid regex: {e}"))
}

fn regex_matches(re: &Regex, value: &[u8]) -> bool {
    // regex-lite matches text: a value that is not UTF-8 cannot match.
    std::str::from_utf8(value).is_ok_and(|v| re.is_match(v))
}

/// How `:path` is matched.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Regex(Regex),
}

impl PathMatch {
    pub fn matches(&self, path: &[u8]) -> bool {
        match self {
            PathMatch::Prefix(p) => path.starts_with(p),
            PathMatch::Exact(p) => strip_query(path) == p.as_slice(),
            PathMatch::Regex(re) => regex_matches(re, strip_query(path)),
        }
    }
}

/// The path without `?query` (and without a `#fragment`, which clients
/// should not send but may).
pub fn strip_query(path: &[u8]) -> &[u8] {
    let end = path
        .iter()
        .position(|b| *b == b'?' || *b == b'#')
        .unwrap_or(path.len());
    &path[..end]
}

/// How one header's value is matched.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Regex(Regex),
    /// `true`: the header must be present (any value); `false`: absent.
    Present(bool),
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: String,
    pub value: ValueMatch,
    /// Inverts the result (Envoy's `invert_match`).
    pub invert: bool,
}

impl HeaderMatch {
    /// Whether the request satisfies this matcher. A repeated header
    /// matches when any of its values does (as Envoy's route matcher was
    /// observed to: `x-tier: free` then `x-tier: premium` matches `exact:
    /// premium`); `invert` negates the result. A missing header matches no
    /// value matcher, inverted or not: as in Envoy's
    /// `HeaderUtility::matchHeaders` (without `treat_missing_header_as_empty`),
    /// only `present` speaks of absence.
    pub fn matches(&self, request: &dyn RequestView) -> bool {
        let values = request.header_values(&self.name);
        let hit = match &self.value {
            ValueMatch::Present(want) => values.is_empty() != *want,
            _ if values.is_empty() => return false,
            ValueMatch::Exact(e) => values.iter().any(|v| v == e),
            ValueMatch::Prefix(p) => values.iter().any(|v| v.starts_with(p)),
            ValueMatch::Regex(re) => values.iter().any(|v| regex_matches(re, v)),
        };
        hit != self.invert
    }
}

/// Everything a rule requires of a request; empty matches all.
#[derive(Debug, Clone, Default)]
pub struct RequestMatch {
    pub path: Option<PathMatch>,
    /// Allowed methods (exact, case-sensitive as HTTP methods are); empty = any.
    pub methods: Vec<Vec<u8>>,
    pub headers: Vec<HeaderMatch>,
}

impl RequestMatch {
    pub fn matches(&self, request: &dyn RequestView) -> bool {
        if let Some(p) = &self.path
            && !p.matches(request.path())
        {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == request.method()) {
            return false;
        }
        self.headers.iter().all(|h| h.matches(request))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request for tests: path, method, headers (names lowercase).
    #[derive(Default)]
    pub struct FakeRequest {
        pub path: String,
        pub method: String,
        pub headers: Vec<(String, String)>,
    }

    impl FakeRequest {
        pub fn new(method: &str, path: &str, headers: &[(&str, &str)]) -> Self {
            FakeRequest {
                path: path.into(),
                method: method.into(),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }
        }
    }

    impl RequestView for FakeRequest {
        fn path(&self) -> &[u8] {
            self.path.as_bytes()
        }
        fn method(&self) -> &[u8] {
            self.method.as_bytes()
        }
        fn header(&self, name: &str) -> Option<Vec<u8>> {
            self.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_bytes().to_vec())
        }
        fn header_values(&self, name: &str) -> Vec<Vec<u8>> {
            self.headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_bytes().to_vec())
                .collect()
        }
    }

    #[test]
    fn repeated_headers_match_when_any_value_does() {
        let m = HeaderMatch {
            name: "x-tier".into(),
            value: ValueMatch::Exact(b"premium".to_vec()),
            invert: false,
        };
        let both = FakeRequest::new("GET", "/", &[("x-tier", "free"), ("x-tier", "premium")]);
        assert!(m.matches(&both));
        let free = FakeRequest::new("GET", "/", &[("x-tier", "free")]);
        assert!(!m.matches(&free));
        let inverted = HeaderMatch { invert: true, ..m };
        assert!(!inverted.matches(&both));
        assert!(inverted.matches(&free));
        // Missing: no value matcher matches, inverted or not (Envoy's
        // route matcher; the old rule matched the inverted one).
        let none = FakeRequest::new("GET", "/", &[]);
        for value in [
            ValueMatch::Exact(b"premium".to_vec()),
            ValueMatch::Prefix(b"p".to_vec()),
        ] {
            for invert in [false, true] {
                let m = HeaderMatch {
                    name: "x-tier".into(),
                    value: value.clone(),
                    invert,
                };
                assert!(!m.matches(&none), "{m:?}");
            }
        }
        // `present` speaks of absence: inverted, a missing header matches.
        let present = HeaderMatch {
            name: "x-tier".into(),
            value: ValueMatch::Present(true),
            invert: true,
        };
        assert!(present.matches(&none));
        assert!(!present.matches(&free));
    }

    #[test]
    fn path_matchers() {
        let exact = PathMatch::Exact(b"/a".to_vec());
        assert!(exact.matches(b"/a"));
        assert!(exact.matches(b"/a?x=1"));
        assert!(!exact.matches(b"/ab"));
        let prefix = PathMatch::Prefix(b"/api".to_vec());
        assert!(prefix.matches(b"/api/v1"));
        assert!(!prefix.matches(b"/ap"));
        let re = PathMatch::Regex(compile_regex("/v[0-9]+/.*").unwrap());
        assert!(re.matches(b"/v12/users?q=1"));
        assert!(!re.matches(b"/x/v12/users"), "whole-path match");
        assert!(!re.matches(b"/v1\xff/x"), "non-UTF-8 never matches");
    }

    #[test]
    fn header_matchers() {
        let r = FakeRequest::new("GET", "/", &[("x-env", "canary-1"), ("x-empty", "")]);
        let m = |value: ValueMatch, invert: bool| HeaderMatch {
            name: "x-env".into(),
            value,
            invert,
        };
        assert!(m(ValueMatch::Exact(b"canary-1".to_vec()), false).matches(&r));
        assert!(!m(ValueMatch::Exact(b"canary".to_vec()), false).matches(&r));
        assert!(m(ValueMatch::Prefix(b"canary".to_vec()), false).matches(&r));
        assert!(
            m(
                ValueMatch::Regex(compile_regex("canary-\\d").unwrap()),
                false
            )
            .matches(&r)
        );
        assert!(m(ValueMatch::Present(true), false).matches(&r));
        assert!(!m(ValueMatch::Present(false), false).matches(&r));
        assert!(m(ValueMatch::Exact(b"prod".to_vec()), true).matches(&r));
        let absent = HeaderMatch {
            name: "x-missing".into(),
            value: ValueMatch::Prefix(Vec::new()),
            invert: false,
        };
        assert!(!absent.matches(&r), "absent header never matches a value");
    }

    #[test]
    fn methods_and_all_of() {
        let m = RequestMatch {
            path: Some(PathMatch::Prefix(b"/api".to_vec())),
            methods: vec![b"GET".to_vec(), b"HEAD".to_vec()],
            headers: vec![],
        };
        assert!(m.matches(&FakeRequest::new("GET", "/api/x", &[])));
        assert!(!m.matches(&FakeRequest::new("POST", "/api/x", &[])));
        assert!(!m.matches(&FakeRequest::new("get", "/api/x", &[])));
        assert!(!m.matches(&FakeRequest::new("GET", "/x", &[])));
        assert!(RequestMatch::default().matches(&FakeRequest::new("PUT", "/", &[])));
    }

    #[test]
    fn hostile_regexes_are_refused() {
        assert!(compile_regex("(").is_err());
        assert!(compile_regex(&"(".repeat(100).to_string()).is_err());
        assert!(compile_regex("a{1000}{1000}").is_err(), "size limit");
    }
}
