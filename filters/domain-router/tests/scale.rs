//! A 100 000-domain table: how much memory the compiled index takes, and
//! that lookups cost O(labels) hash probes whatever the table size.
//!
//! Memory is measured with a counting allocator around `table::parse` (the
//! JSON document and serde structures are dropped before the measurement),
//! so the number is the per-worker index: every worker VM holds one.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use switchyard_domain_router::table;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// High-water mark of `LIVE` (wasm linear memory never shrinks, so the peak
/// while parsing is what a VM keeps).
static PEAK: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        PEAK.fetch_max(live + layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Pattern kind of domain `i` of `n`: 80% exact (0), 15% `*.suffix` (1),
/// 5% `prefix-*` (2), in that order, so small tables have every kind too.
pub fn kind(i: usize, n: usize) -> u8 {
    match i * 100 / n {
        0..80 => 0,
        80..95 => 1,
        _ => 2,
    }
}

/// `n` virtual hosts: 80% exact names, 15% `*.suffix`, 5% `prefix-*`, each
/// with one rule to one of 50 clusters, plus a `*` default.
pub fn big_table(n: usize) -> String {
    let mut vhosts = Vec::with_capacity(n + 1);
    for i in 0..n {
        let domain = match kind(i, n) {
            0 => format!("tenant-{i}.customers.example.com"),
            1 => format!("*.t{i}.example.net"),
            _ => format!("edge-{i}-*"),
        };
        vhosts.push(format!(
            r#"{{"domains":["{domain}"],"rules":[{{"cluster":"cell-{}"}}]}}"#,
            i % 50
        ));
    }
    vhosts.push(r#"{"domains":["*"],"rules":[{"cluster":"default"}]}"#.into());
    format!(r#"{{"virtual_hosts":[{}]}}"#, vhosts.join(","))
}

fn tenant_table(n: usize) -> String {
    let entries: Vec<String> = (0..n)
        .map(|i| format!(r#""tenant-{i:06}":"cell-{}""#, i % 50))
        .collect();
    format!(
        r#"{{"virtual_hosts":[{{"domains":["*"],"rules":[{{"tenant":"t"}}]}}],
           "tenant_maps":{{"t":{{"header":"x-tenant-id","entries":{{{}}}}}}}}}"#,
        entries.join(",")
    )
}

/// The counter is process-wide: tests measuring it must not overlap.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The router, its live size and the peak extra memory while parsing.
fn measured(json: &str) -> (switchyard_domain_router::router::Router, isize, isize) {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let router = table::parse(json.as_bytes()).expect("generated table parses");
    let after = LIVE.load(Ordering::SeqCst);
    (router, after - before, PEAK.load(Ordering::SeqCst) - before)
}

fn mib(bytes: isize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

const PROBE_HOSTS: &[&str] = &[
    "tenant-12.customers.example.com",
    "a.b.t85000.example.net",
    "edge-99999-x",
    "unknown.deep.sub.domain.example.org",
    "x",
];

#[test]
fn hundred_thousand_domains_memory_and_probes() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let small_json = big_table(10);
    let big_json = big_table(100_000);
    let (small, small_bytes, _) = measured(&small_json);
    let (big, big_bytes, big_peak) = measured(&big_json);
    assert_eq!(big.domain_count(), 100_001);
    println!(
        "10 domains: {small_bytes} B index; 100 000 domains: {:.1} MiB index \
         ({:.0} B/domain), peak while parsing {:.1} MiB, JSON document (shared-data blob) {:.1} MiB",
        mib(big_bytes),
        big_bytes as f64 / 100_000.0,
        mib(big_peak),
        mib(big_json.len() as isize)
    );
    assert!(big_bytes < 40 << 20, "index too large: {big_bytes} B");
    // Virtual hosts are compiled as they are read: no document tree beside
    // the index (before: a 34 MiB peak for a 12 MiB index).
    assert!(
        big_peak < big_bytes + big_bytes / 4,
        "peak {big_peak} B while parsing, index {big_bytes} B"
    );

    for host in PROBE_HOSTS {
        let (_, p_small) = small.lookup_host(host.as_bytes());
        let (found, p_big) = big.lookup_host(host.as_bytes());
        let labels = host.split('.').count() as u32;
        println!("{host:<40} probes: 10 domains {p_small}, 100k domains {p_big}");
        assert!(found.is_some(), "{host}: the default catches all");
        // One exact probe, at most one per label for each wildcard kind and
        // one per distinct unaligned wildcard length (here none for suffixes,
        // a handful of `edge-N-` prefix lengths).
        let unaligned_prefix_lengths = 6;
        assert!(
            p_big <= 1 + 2 * labels + unaligned_prefix_lengths,
            "{host}: {p_big} probes"
        );
    }
}

#[test]
fn hundred_thousand_tenant_keys_memory() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let json = tenant_table(100_000);
    let (router, bytes, peak) = measured(&json);
    assert_eq!(router.tenant_key_count(), 100_000);
    println!(
        "100 000 tenant keys: {:.1} MiB index ({:.0} B/key), peak while parsing {:.1} MiB, JSON {:.1} MiB",
        mib(bytes),
        bytes as f64 / 100_000.0,
        mib(peak),
        mib(json.len() as isize)
    );
    assert!(bytes < 20 << 20, "{bytes} B");
}
