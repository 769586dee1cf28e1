//! Maglev consistent hashing (Eisenbud et al., NSDI '16), weighted as in
//! Envoy: every endpoint walks its own permutation of the table and claims
//! the next free entry; heavier endpoints take turns more often. Removing an
//! endpoint moves its keys and, by construction, very few others.

use switchyard_sdk::codec::fnv1a64;

/// Envoy's default table size (prime, so every skip is a generator).
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

/// A built lookup table: entry → member index.
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<u16>,
}

/// Whether `n` is prime (table sizes must be).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

impl Maglev {
    /// `members`: (stable name, weight > 0). `size` must be prime and larger
    /// than the member count; at most 65 535 members. `None` when there is
    /// nothing to hash onto.
    pub fn build(members: &[(&str, u32)], size: u32) -> Option<Maglev> {
        let members: Vec<(usize, &str, u32)> = members
            .iter()
            .enumerate()
            .filter(|(_, (_, w))| *w > 0)
            .map(|(i, (n, w))| (i, *n, *w))
            .collect();
        if members.is_empty() || members.len() > usize::from(u16::MAX) {
            return None;
        }
        let m = u64::from(size.max(members.len() as u32 + 1));
        let max_w = members.iter().map(|(_, _, w)| *w).max().unwrap_or(1);
        struct Walk {
            index: u16,
            offset: u64,
            skip: u64,
            next: u64,
            weight: u64,
            target: u64,
        }
        let mut walks: Vec<Walk> = members
            .iter()
            .map(|(i, name, w)| {
                let h1 = mix(fnv1a64(name.as_bytes()));
                let h2 = mix(h1 ^ 0x9e37_79b9_7f4a_7c15);
                Walk {
                    index: *i as u16,
                    offset: h1 % m,
                    skip: h2 % (m - 1) + 1,
                    next: 0,
                    weight: u64::from(*w),
                    target: 0,
                }
            })
            .collect();
        const EMPTY: u16 = u16::MAX;
        let mut table = vec![EMPTY; m as usize];
        let mut filled = 0u64;
        let mut round = 0u64;
        while filled < m {
            round += 1;
            for w in walks.iter_mut() {
                if filled >= m {
                    break;
                }
                // Weighted turns: a member of weight max_w/k moves every k rounds.
                if round * w.weight < w.target {
                    continue;
                }
                w.target += u64::from(max_w);
                loop {
                    let slot = ((w.offset + w.skip * w.next) % m) as usize;
                    w.next += 1;
                    if table[slot] == EMPTY {
                        table[slot] = w.index;
                        filled += 1;
                        break;
                    }
                }
            }
        }
        Some(Maglev { table })
    }

    /// The member index for a key hash.
    pub fn lookup(&self, hash: u64) -> usize {
        let i = (mix(hash) % self.table.len() as u64) as usize;
        usize::from(self.table[i])
    }
}

/// MurmurHash3's finaliser (the SDK's): spreads FNV's weak low bits.
pub use switchyard_sdk::codec::mix64 as mix;

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn build(names: &[String], size: u32) -> Maglev {
        let m: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        Maglev::build(&m, size).unwrap()
    }

    #[test]
    fn primes() {
        assert!(is_prime(65_537) && is_prime(5) && is_prime(2));
        assert!(!is_prime(1) && !is_prime(65_536) && !is_prime(9));
    }

    #[test]
    fn balanced_and_deterministic() {
        let n = names(5);
        let t = build(&n, 65_537);
        let mut counts = [0u32; 5];
        for k in 0..50_000u64 {
            counts[t.lookup(fnv1a64(&k.to_le_bytes()))] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        let again = build(&n, 65_537);
        assert_eq!(t.table, again.table);
    }

    #[test]
    fn removing_one_moves_about_its_share() {
        let n = names(5);
        let before = build(&n, 65_537);
        let fewer: Vec<String> = n.iter().filter(|x| *x != &n[2]).cloned().collect();
        let after = build(&fewer, 65_537);
        let (mut moved, total) = (0, 20_000u64);
        for k in 0..total {
            let h = fnv1a64(&k.to_le_bytes());
            let a = &n[before.lookup(h)];
            let b = &fewer[after.lookup(h)];
            if a != &n[2] && a != b {
                moved += 1;
            }
        }
        // Keys of the other members barely move (Maglev's "minimal disruption").
        assert!(moved < total / 50, "moved {moved} of {total}");
    }

    #[test]
    fn weights_shape_the_table() {
        let m = [("a", 1), ("b", 3)];
        let t = Maglev::build(&m, 10_007).unwrap();
        let b = t.table.iter().filter(|&&i| i == 1).count() as f64 / t.table.len() as f64;
        assert!((b - 0.75).abs() < 0.01, "{b}");
        assert!(Maglev::build(&[("a", 0)], 7).is_none());
        assert!(Maglev::build(&[], 7).is_none());
    }
}
