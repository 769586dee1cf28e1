//! Lookup throughput: a 10-domain table against a 100 000-domain table, on
//! the same mix of hosts (exact, suffix wildcard, prefix wildcard, default).
//! `cargo bench -p switchyard-domain-router` (release build); prints ns per
//! decision and the ratio. Native numbers: the wasm module runs the same
//! code under V8, slower by a constant factor for both tables.

use std::hint::black_box;
use std::time::Instant;
use switchyard_domain_router::domain::normalize_host;
use switchyard_domain_router::matcher::RequestView;
use switchyard_domain_router::router::{Router, SplitKey};
use switchyard_domain_router::table;

struct Req;

impl RequestView for Req {
    fn path(&self) -> &[u8] {
        b"/api/v1/items"
    }
    fn method(&self) -> &[u8] {
        b"GET"
    }
    fn header(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
}

/// Pattern kind of domain `i` of `n`: 80% exact (0), 15% `*.suffix` (1),
/// 5% `prefix-*` (2), in that order, so small tables have every kind too.
pub fn kind(i: usize, n: usize) -> u8 {
    match i * 100 / n {
        0..80 => 0,
        80..95 => 1,
        _ => 2,
    }
}

/// Same shape as the scale test: 80% exact, 15% `*.suffix`, 5% `prefix-*`.
fn table(n: usize) -> String {
    let vhosts: Vec<String> = (0..n)
        .map(|i| {
            let domain = match kind(i, n) {
                0 => format!("tenant-{i}.customers.example.com"),
                1 => format!("*.t{i}.example.net"),
                _ => format!("edge-{i}-*"),
            };
            format!(
                r#"{{"domains":["{domain}"],"rules":[{{"cluster":"cell-{}"}}]}}"#,
                i % 50
            )
        })
        .chain([r#"{"domains":["*"],"rules":[{"cluster":"default"}]}"#.to_string()])
        .collect();
    format!(r#"{{"virtual_hosts":[{}]}}"#, vhosts.join(","))
}

/// Hosts spread over the whole table (so the big one misses caches as it
/// would in production), with ports and mixed case.
fn hosts(n: usize, count: usize) -> Vec<Vec<u8>> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    (0..count)
        .map(|k| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = (seed as usize) % n;
            let raw = match (k % 10, kind(i, n)) {
                (9, _) => "Unknown.Host.Example.org:443".to_string(),
                (_, 0) => format!("Tenant-{i}.customers.example.com:8080"),
                (_, 1) => format!("api.T{i}.example.net"),
                _ => format!("edge-{i}-node7"),
            };
            let mut h = Vec::new();
            normalize_host(raw.as_bytes(), &mut h);
            h
        })
        .collect()
}

fn ns_per_decision(router: &Router, hosts: &[Vec<u8>], rounds: usize) -> f64 {
    let mut random = || 0u64;
    let mut key = SplitKey {
        request_id_header: "x-request-id",
        random: &mut random,
    };
    let start = Instant::now();
    let mut found = 0usize;
    for _ in 0..rounds {
        for h in hosts {
            found += usize::from(black_box(router.decide(black_box(h), &Req, &mut key)).is_some());
        }
    }
    assert_eq!(found, rounds * hosts.len());
    start.elapsed().as_nanos() as f64 / (rounds * hosts.len()) as f64
}

fn main() {
    let small = table::parse(table(10).as_bytes()).expect("small table");
    let big = table::parse(table(100_000).as_bytes()).expect("big table");
    let small_hosts = hosts(10, 1 << 16);
    let big_hosts = hosts(100_000, 1 << 16);
    let (mut s, mut b) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        s.push(ns_per_decision(&small, &small_hosts, 20));
        b.push(ns_per_decision(&big, &big_hosts, 20));
    }
    s.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (s, b) = (s[3], b[3]);
    println!("domain-router lookup (median of 7 runs, 1.3M decisions each):");
    println!(
        "  10 domains:      {s:7.1} ns/decision ({:.1} M/s)",
        1e3 / s
    );
    println!(
        "  100 000 domains: {b:7.1} ns/decision ({:.1} M/s)",
        1e3 / b
    );
    println!("  ratio 100k/10:   {:.2}", b / s);
}
