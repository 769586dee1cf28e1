//! Host / path / status mixes: of a recording (access-log records) and of
//! a run (what the driver saw), and how far apart two are.
//!
//! Paths are compared without their query and with all-digit segments
//! folded to `{n}` (`/products/17?x=1` → `/products/{n}`), so a mix is over
//! the shapes of requests, not over every distinct URL.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use super::driver::Obs;

/// Requests per (host, path shape, status); status 0 = no response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mix {
    pub counts: BTreeMap<(String, String, u16), u64>,
}

impl Mix {
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn add(&mut self, host: &str, path: &str, status: u16) {
        *self
            .counts
            .entry((normalize_host(host), normalize_path(path), status))
            .or_default() += 1;
    }

    /// From access-log records (JSON lines, either naming); lines without
    /// a path are skipped.
    pub fn from_records(text: &str) -> Mix {
        let mut m = Mix::default();
        for line in text.lines() {
            let Ok(r) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let s = |k: &str| r.get(k).and_then(Value::as_str);
            let Some(path) = s("path").or_else(|| s("url.path")) else {
                continue;
            };
            let host = s("authority").or_else(|| s("server.address")).unwrap_or("");
            let status = ["response_code", "http.response.status_code"]
                .iter()
                .find_map(|k| r.get(*k).and_then(Value::as_u64))
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(0);
            m.add(host, path, status);
        }
        m
    }

    /// From a run's observations.
    pub fn from_obs<'a>(obs: impl IntoIterator<Item = &'a Obs>) -> Mix {
        let mut m = Mix::default();
        for o in obs {
            m.add(&o.host, &o.path, o.status);
        }
        m
    }

    fn shares_by<K: Ord + Clone>(
        &self,
        key: impl Fn(&(String, String, u16)) -> K,
    ) -> BTreeMap<K, f64> {
        let total = self.total().max(1) as f64;
        let mut out: BTreeMap<K, f64> = BTreeMap::new();
        for (k, n) in &self.counts {
            *out.entry(key(k)).or_default() += *n as f64 / total;
        }
        out
    }
}

/// `host:port` → `host`, lowercase.
pub fn normalize_host(h: &str) -> String {
    let h = h.trim().to_ascii_lowercase();
    match h.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name.to_string()
        }
        _ => h,
    }
}

/// Drops the query and folds all-digit segments to `{n}`.
pub fn normalize_path(p: &str) -> String {
    let p = p.split(['?', '#']).next().unwrap_or("");
    let segs: Vec<&str> = p
        .split('/')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "{n}"
            } else {
                s
            }
        })
        .collect();
    let joined = segs.join("/");
    if joined.is_empty() {
        "/".into()
    } else {
        joined
    }
}

/// One line of a comparison.
#[derive(Clone, Debug, Serialize)]
pub struct MixRow {
    pub key: String,
    pub recorded: f64,
    pub replayed: f64,
    pub diff: f64,
}

/// A recording's mix against a replay's.
#[derive(Clone, Debug, Serialize)]
pub struct MixComparison {
    pub recorded_requests: u64,
    pub replayed_requests: u64,
    /// Largest |difference| of the (host, path, status) shares.
    pub max_deviation: f64,
    /// (host, path, status), largest share first.
    pub rows: Vec<MixRow>,
    pub by_host: Vec<MixRow>,
    pub by_path: Vec<MixRow>,
    pub by_status: Vec<MixRow>,
}

fn rows<K: Ord + Clone>(
    a: &BTreeMap<K, f64>,
    b: &BTreeMap<K, f64>,
    name: impl Fn(&K) -> String,
) -> Vec<MixRow> {
    let keys: BTreeSet<&K> = a.keys().chain(b.keys()).collect();
    let mut out: Vec<MixRow> = keys
        .into_iter()
        .map(|k| {
            let r = a.get(k).copied().unwrap_or(0.0);
            let p = b.get(k).copied().unwrap_or(0.0);
            MixRow {
                key: name(k),
                recorded: r,
                replayed: p,
                diff: p - r,
            }
        })
        .collect();
    out.sort_by(|x, y| y.recorded.total_cmp(&x.recorded).then(x.key.cmp(&y.key)));
    out
}

fn status_name(s: u16) -> String {
    if s == 0 {
        "error".into()
    } else {
        s.to_string()
    }
}

pub fn compare(recorded: &Mix, replayed: &Mix) -> MixComparison {
    let joint = rows(
        &recorded.shares_by(Clone::clone),
        &replayed.shares_by(Clone::clone),
        |(h, p, s)| format!("{h} {p} {}", status_name(*s)),
    );
    let max_deviation = joint.iter().map(|r| r.diff.abs()).fold(0.0, f64::max);
    MixComparison {
        recorded_requests: recorded.total(),
        replayed_requests: replayed.total(),
        max_deviation,
        by_host: rows(
            &recorded.shares_by(|k| k.0.clone()),
            &replayed.shares_by(|k| k.0.clone()),
            Clone::clone,
        ),
        by_path: rows(
            &recorded.shares_by(|k| k.1.clone()),
            &replayed.shares_by(|k| k.1.clone()),
            Clone::clone,
        ),
        by_status: rows(
            &recorded.shares_by(|k| k.2),
            &replayed.shares_by(|k| k.2),
            |s| status_name(*s),
        ),
        rows: joint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        assert_eq!(normalize_path("/products/17?x=1"), "/products/{n}");
        assert_eq!(normalize_path("/a/b2/3/"), "/a/b2/{n}/");
        assert_eq!(normalize_path(""), "/");
        assert_eq!(normalize_host("Shop.Example.com:8080"), "shop.example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]:80");
    }

    #[test]
    fn records_and_comparison() {
        let text = concat!(
            r#"{"authority":"a.test","path":"/p/1?q","response_code":200}"#,
            "\n",
            r#"{"authority":"a.test","path":"/p/2","response_code":200}"#,
            "\n",
            r#"{"server.address":"b.test","url.path":"/x","http.response.status_code":429}"#,
            "\n",
            r#"{"authority":"b.test","path":"/x","response_code":null}"#,
            "\nnot json\n"
        );
        let rec = Mix::from_records(text);
        assert_eq!(rec.total(), 4);
        assert_eq!(
            rec.counts.get(&("a.test".into(), "/p/{n}".into(), 200)),
            Some(&2)
        );
        let mut rep = Mix::default();
        rep.add("a.test", "/p/9", 200);
        rep.add("a.test", "/p/9", 200);
        rep.add("b.test", "/x", 200);
        rep.add("b.test", "/x", 0);
        let c = compare(&rec, &rep);
        assert!((c.max_deviation - 0.25).abs() < 1e-9, "{c:?}");
        assert_eq!(c.rows[0].key, "a.test /p/{n} 200");
        let s200 = c.by_status.iter().find(|r| r.key == "200").unwrap();
        assert!((s200.diff - 0.25).abs() < 1e-9);
        assert_eq!(compare(&rec, &rec).max_deviation, 0.0);
    }
}
