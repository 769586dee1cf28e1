//! GCRA (generic cell rate algorithm): one timestamp per key.
//!
//! A key's state is its "theoretical arrival time" (TAT): when the bucket
//! would be empty again if no more requests came. With emission interval
//! `T = unit / requests` and burst `b`, a request at `now` is allowed when
//! `max(TAT, now) + T - now <= b·T`, and then moves TAT to `max(TAT, now) + T`.
//! Over a saturated interval of length `D` that admits exactly `b + D/T`
//! requests (± 1), whatever the arrival pattern.
//!
//! Idle keys need no clean-up: a TAT in the past means a full bucket, so a
//! slot whose owner went quiet is simply reused by the next key.
//!
//! Collisions (two keys in one slot, see `SlotTable`): the value records the
//! owner's fingerprint. A different key finding an *active* bucket (TAT in the
//! future) shares it: both keys draw on one budget, so each gets at most the
//! limit and together they get the limit. That errs toward limiting the
//! colliding keys, never toward letting everything through. A different key
//! finding an *idle* bucket takes the slot over (nothing is lost: an idle
//! bucket holds no debt).

use switchyard_sdk::codec::Codec;

/// A slot's value: owner fingerprint and TAT (host clock, ns). 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub owner: u64,
    pub tat_ns: u64,
}

impl Codec for Bucket {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.owner.to_le_bytes());
        v.extend_from_slice(&self.tat_ns.to_le_bytes());
        v
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 16 {
            return None;
        }
        Some(Bucket {
            owner: u64::decode(&bytes[..8])?,
            tat_ns: u64::decode(&bytes[8..])?,
        })
    }
}

/// A limit in GCRA terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Emission interval `T` (ns per request), at least 1.
    pub interval_ns: u64,
    /// Burst `b`: requests allowed at once from a full bucket, at least 1.
    pub burst: u64,
    /// For headers: the configured quota and window.
    pub requests: u64,
    pub window_secs: u64,
}

impl Rate {
    /// `requests` per `window_secs` with `burst`; zero inputs are clamped to 1.
    pub fn new(requests: u64, window_secs: u64, burst: u64) -> Rate {
        let requests = requests.max(1);
        let window_secs = window_secs.max(1);
        let window_ns = u128::from(window_secs) * 1_000_000_000;
        let interval = (window_ns / u128::from(requests)).max(1);
        Rate {
            interval_ns: u64::try_from(interval).unwrap_or(u64::MAX),
            burst: burst.max(1),
            requests,
            window_secs,
        }
    }

    /// `b·T`: how far TAT may run ahead of now.
    pub fn tolerance_ns(&self) -> u64 {
        self.interval_ns.saturating_mul(self.burst)
    }
}

/// What one request did to one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// The key found another key's active bucket and shares it.
    pub collided: bool,
    /// Requests still allowed right now after this one.
    pub remaining: u64,
    /// Until the bucket is full again (ns).
    pub reset_ns: u64,
    /// Until the next request would be allowed (ns); 0 when allowed.
    pub retry_after_ns: u64,
}

/// One GCRA step for key `fingerprint` at `now_ns` on the slot's current
/// value. Returns the value to write (`None` when nothing changes: a denied
/// request costs nothing) and the outcome. Pure: the caller does the CAS.
pub fn step(
    current: Option<&Bucket>,
    fingerprint: u64,
    now_ns: u64,
    rate: &Rate,
) -> (Option<Bucket>, Outcome) {
    let (owner, tat, collided) = match current {
        Some(b) if b.owner == fingerprint => (fingerprint, b.tat_ns, false),
        // Another key's bucket still holds debt: share it (see module docs).
        Some(b) if b.tat_ns > now_ns => (b.owner, b.tat_ns, true),
        // Empty or idle slot: this key takes it with a full bucket.
        _ => (fingerprint, now_ns, false),
    };
    let tat = tat.max(now_ns);
    let new_tat = tat.saturating_add(rate.interval_ns);
    let tolerance = rate.tolerance_ns();
    let ahead = new_tat - now_ns;
    if ahead > tolerance {
        let outcome = Outcome {
            allowed: false,
            collided,
            remaining: 0,
            reset_ns: tat - now_ns,
            retry_after_ns: ahead - tolerance,
        };
        return (None, outcome);
    }
    let outcome = Outcome {
        allowed: true,
        collided,
        remaining: (tolerance - ahead) / rate.interval_ns,
        reset_ns: ahead,
        retry_after_ns: 0,
    };
    let next = Bucket {
        owner,
        tat_ns: new_tat,
    };
    (Some(next), outcome)
}

/// Nanoseconds to whole seconds, rounded up (headers count in seconds; a
/// client told 0 would retry at once).
pub fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn run(rate: &Rate, times: impl IntoIterator<Item = u64>) -> (u64, Option<Bucket>) {
        let mut b: Option<Bucket> = None;
        let mut allowed = 0;
        for t in times {
            let (next, out) = step(b.as_ref(), 7, t, rate);
            if out.allowed {
                allowed += 1;
            }
            if let Some(n) = next {
                b = Some(n);
            }
        }
        (allowed, b)
    }

    #[test]
    fn codec_round_trip_and_rejects_other_sizes() {
        let b = Bucket {
            owner: 0xdead_beef,
            tat_ns: u64::MAX - 3,
        };
        assert_eq!(Bucket::decode(&b.encode()), Some(b));
        assert_eq!(b.encode().len(), 16);
        assert_eq!(Bucket::decode(&[0; 15]), None);
        assert_eq!(Bucket::decode(&[0; 17]), None);
    }

    #[test]
    fn burst_then_rate() {
        let rate = Rate::new(100, 1, 100);
        assert_eq!(rate.interval_ns, 10 * MS);
        // 1000 requests at one instant: exactly the burst.
        let (n, _) = run(&rate, std::iter::repeat_n(5 * S, 1000));
        assert_eq!(n, 100);
        // 10x overload for 10 s (one request per ms): burst + rate x duration.
        let start = 5 * S;
        let (n, _) = run(&rate, (0..10_000u64).map(|i| start + i * MS));
        // The last arrival is at 9.999 s: 100 + 999.9 -> 1099 or 1100.
        assert!((1099..=1100).contains(&n), "{n}");
    }

    #[test]
    fn remaining_reset_and_retry_after() {
        let rate = Rate::new(10, 60, 5);
        let now = 100 * S;
        let mut b = None;
        let mut outs = Vec::new();
        for _ in 0..6 {
            let (next, out) = step(b.as_ref(), 1, now, &rate);
            b = next.or(b);
            outs.push(out);
        }
        let remaining: Vec<u64> = outs.iter().map(|o| o.remaining).collect();
        assert_eq!(remaining, [4, 3, 2, 1, 0, 0]);
        assert!(outs[..5].iter().all(|o| o.allowed));
        let denied = outs[5];
        assert!(!denied.allowed);
        // T = 6 s: the 6th request may come 6 s later; full again after 30 s.
        assert_eq!(denied.retry_after_ns, 6 * S);
        assert_eq!(denied.reset_ns, 30 * S);
        assert_eq!(ceil_secs(denied.retry_after_ns), 6);
        // After 6 s exactly one more fits.
        let (_, out) = step(b.as_ref(), 1, now + 6 * S, &rate);
        assert!(out.allowed);
        assert_eq!(out.remaining, 0);
    }

    #[test]
    fn idle_bucket_is_full_again_and_can_change_owner() {
        let rate = Rate::new(1, 1, 1);
        let b = Bucket {
            owner: 1,
            tat_ns: 10 * S,
        };
        // Same owner later: allowed.
        let (next, out) = step(Some(&b), 1, 11 * S, &rate);
        assert!(out.allowed && !out.collided);
        assert_eq!(next.map(|n| n.tat_ns), Some(12 * S));
        // Another key on an idle slot takes it over, no collision.
        let (next, out) = step(Some(&b), 2, 11 * S, &rate);
        assert!(out.allowed && !out.collided);
        assert_eq!(next.map(|n| n.owner), Some(2));
    }

    #[test]
    fn collision_shares_the_active_bucket() {
        let rate = Rate::new(1, 1, 2);
        let now = 50 * S;
        let (b, _) = step(None, 1, now, &rate);
        let b = b.unwrap();
        // Key 2 lands on key 1's active bucket: it shares it, owner kept.
        let (b2, out) = step(Some(&b), 2, now, &rate);
        assert!(out.allowed && out.collided);
        assert_eq!(b2.unwrap().owner, 1);
        // Together they got the burst of 2; a third request from either is denied.
        let (_, out) = step(b2.as_ref(), 1, now, &rate);
        assert!(!out.allowed);
        let (_, out) = step(b2.as_ref(), 2, now, &rate);
        assert!(!out.allowed && out.collided);
    }

    #[test]
    fn extreme_rates_do_not_overflow() {
        let slow = Rate::new(1, 3600, 1_000_000);
        assert_eq!(slow.interval_ns, 3600 * S);
        assert_eq!(slow.tolerance_ns(), 3600 * S * 1_000_000);
        let (_, out) = step(None, 1, u64::MAX - 5, &slow);
        assert!(out.allowed);
        let fast = Rate::new(u64::MAX, 1, 1);
        assert_eq!(fast.interval_ns, 1);
        let zero = Rate::new(0, 0, 0);
        assert_eq!((zero.requests, zero.window_secs, zero.burst), (1, 1, 1));
    }
}
