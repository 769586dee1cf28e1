//! What clients are told: `retry-after`, the IETF draft `RateLimit-Policy` and
//! `RateLimit` fields (structured-field lists, e.g. `"per-client";q=100;w=1`
//! and `"per-client";r=42;t=1`) and a short JSON body.

use crate::gcra::{Outcome, Rate, ceil_secs};

/// The numbers behind the headers of one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// Policy name (a validated token: no escaping needed in an sf-string).
    pub name: String,
    /// `q`: quota units per window.
    pub quota: u64,
    /// `w`: window, seconds.
    pub window_secs: u64,
    /// `r`: remaining now.
    pub remaining: u64,
    /// `t`: seconds until the quota is fully available again.
    pub reset_secs: u64,
    /// Seconds until the next request may succeed (rejections).
    pub retry_after_secs: u64,
}

impl Quota {
    /// From a local GCRA outcome.
    pub fn local(name: &str, rate: &Rate, outcome: &Outcome) -> Quota {
        Quota {
            name: name.to_string(),
            quota: rate.requests,
            window_secs: rate.window_secs,
            remaining: outcome.remaining,
            reset_secs: ceil_secs(outcome.reset_ns),
            // A rejected client told "0" would retry at once.
            retry_after_secs: if outcome.allowed {
                0
            } else {
                ceil_secs(outcome.retry_after_ns).max(1)
            },
        }
    }

    /// `RateLimit-Policy` value.
    pub fn policy(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            sf_name(&self.name),
            self.quota,
            self.window_secs
        )
    }

    /// `RateLimit` value.
    pub fn state(&self) -> String {
        format!(
            "\"{}\";r={};t={}",
            sf_name(&self.name),
            self.remaining,
            self.reset_secs
        )
    }

    /// The rejection's JSON body.
    pub fn body(&self) -> Vec<u8> {
        rejection_body(&self.name, self.retry_after_secs)
    }
}

/// A rejection's JSON body: `{"error":"rate_limited","policy":<name>,
/// "retry_after":<secs>}` (the name JSON-escaped: a service's limit names
/// are not validated).
pub fn rejection_body(policy: &str, retry_after_secs: u64) -> Vec<u8> {
    // A `str` always serialises; the fallback only keeps the body valid JSON.
    let name = serde_json::to_string(policy).unwrap_or_else(|_| "\"\"".to_string());
    format!(r#"{{"error":"rate_limited","policy":{name},"retry_after":{retry_after_secs}}}"#)
        .into_bytes()
}

/// Keeps a name inside an sf-string: printable ASCII without `"` and `\`
/// (rule names are validated tokens; names from a rate limit service are not).
fn sf_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Headers of a rejection (without `content-type`).
pub fn rejection_headers(q: &Quota, ratelimit_headers: bool) -> Vec<(&'static str, String)> {
    let mut h = vec![("retry-after", q.retry_after_secs.to_string())];
    if ratelimit_headers {
        h.push(("ratelimit-policy", q.policy()));
        h.push(("ratelimit", q.state()));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_follow_the_draft() {
        let rate = Rate::new(100, 60, 10);
        let out = Outcome {
            allowed: false,
            collided: false,
            remaining: 0,
            reset_ns: 5_400_000_000,
            retry_after_ns: 600_000_000,
        };
        let q = Quota::local("per-client", &rate, &out);
        assert_eq!(q.policy(), r#""per-client";q=100;w=60"#);
        assert_eq!(q.state(), r#""per-client";r=0;t=6"#);
        assert_eq!(q.retry_after_secs, 1);
        let body: serde_json::Value = serde_json::from_slice(&q.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "rate_limited", "policy": "per-client", "retry_after": 1})
        );
        // A service's name with quotes and control bytes stays valid JSON.
        let odd: serde_json::Value =
            serde_json::from_slice(&rejection_body("a\"b\r\n", 7)).unwrap();
        assert_eq!(odd["policy"], "a\"b\r\n");
        assert_eq!(odd["retry_after"], 7);
        let h = rejection_headers(&q, true);
        assert_eq!(h[0], ("retry-after", "1".to_string()));
        assert_eq!(h.len(), 3);
        assert_eq!(rejection_headers(&q, false).len(), 1);
    }

    #[test]
    fn odd_names_stay_inside_the_string() {
        let q = Quota {
            name: "a\"b\\c\u{e9}".into(),
            quota: 1,
            window_secs: 1,
            remaining: 0,
            reset_secs: 0,
            retry_after_secs: 1,
        };
        assert_eq!(q.policy(), r#""a_b_c_";q=1;w=1"#);
    }
}
