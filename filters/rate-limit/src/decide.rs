//! Local decisions over several rules: the strictest decides.
//!
//! Storage is behind [`Store`] (shared data with CAS in the filter, a map in
//! tests), so the combination rules are tested natively:
//! - Shadow rules run their own buckets (consuming when they would allow) and
//!   only count what they would have limited.
//! - One enforce rule: one CAS update.
//! - Several enforce rules: all are checked first without writing; if any
//!   would deny, the request is rejected and *no* bucket is charged (a client
//!   flooding its per-client limit must not drain a shared global bucket with
//!   requests that are rejected anyway). Otherwise each is charged; a rule
//!   that denies in that second pass (another worker won the race in between)
//!   still rejects the request.
//! - A store that cannot answer (CAS retries exhausted, host error) counts as
//!   a denial: fail closed.

use crate::config::Mode;
use crate::gcra::{self, Bucket, Outcome, Rate};

/// Why a store could not complete an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Every CAS attempt lost the race.
    Contended,
    /// The host refused the call.
    Host(String),
}

/// Bucket storage with compare-and-swap.
pub trait Store {
    /// The bucket at `slot` (no write).
    fn peek(&mut self, slot: &SlotRef) -> Result<Option<Bucket>, StoreError>;
    /// Read-modify-write of the bucket at `slot` with the GCRA step.
    fn charge(&mut self, slot: &SlotRef, rate: &Rate, now_ns: u64) -> Result<Outcome, StoreError>;
}

/// Where one rule's bucket for this request lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRef {
    pub shared_key: String,
    pub fingerprint: u64,
}

/// One rule to check for this request.
#[derive(Debug, Clone)]
pub struct Check {
    pub rule: usize,
    pub slot: SlotRef,
    pub rate: Rate,
    pub mode: Mode,
}

/// One rule's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleResult {
    pub rule: usize,
    pub rate: Rate,
    pub outcome: Outcome,
}

/// The request's local verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The rejecting rule (longest retry-after among the denying ones).
    pub rejected: Option<RuleResult>,
    /// The enforce rule with the least remaining (for headers on allowed
    /// responses).
    pub tightest: Option<RuleResult>,
    /// Some shadow rule would have rejected it.
    pub shadow_limited: bool,
    /// Rules whose key shared another key's bucket.
    pub collisions: u64,
    /// Store failures (each one denied its rule: fail closed).
    pub store_errors: Vec<StoreError>,
}

/// What a failed store operation counts as: a denial with a 1 s retry-after.
fn failed(rate: &Rate) -> Outcome {
    Outcome {
        allowed: false,
        collided: false,
        remaining: 0,
        reset_ns: rate.interval_ns,
        retry_after_ns: 1_000_000_000,
    }
}

/// Evaluates `checks` at `now_ns`.
pub fn decide<S: Store>(store: &mut S, checks: &[Check], now_ns: u64) -> Verdict {
    let mut v = Verdict::default();
    let charge = |store: &mut S, v: &mut Verdict, c: &Check| -> Outcome {
        match store.charge(&c.slot, &c.rate, now_ns) {
            Ok(o) => {
                v.collisions += u64::from(o.collided);
                o
            }
            Err(e) => {
                v.store_errors.push(e);
                failed(&c.rate)
            }
        }
    };
    for c in checks.iter().filter(|c| c.mode == Mode::Shadow) {
        if !charge(store, &mut v, c).allowed {
            v.shadow_limited = true;
        }
    }
    let enforce: Vec<&Check> = checks.iter().filter(|c| c.mode == Mode::Enforce).collect();
    let mut results = Vec::with_capacity(enforce.len());
    if enforce.len() > 1 {
        // Dry run first: reject without charging anyone when a rule would deny.
        let mut denied = Vec::new();
        for c in &enforce {
            let outcome = match store.peek(&c.slot) {
                Ok(b) => gcra::step(b.as_ref(), c.slot.fingerprint, now_ns, &c.rate).1,
                Err(e) => {
                    v.store_errors.push(e);
                    failed(&c.rate)
                }
            };
            if !outcome.allowed {
                v.collisions += u64::from(outcome.collided);
                denied.push(RuleResult {
                    rule: c.rule,
                    rate: c.rate,
                    outcome,
                });
            }
        }
        if !denied.is_empty() {
            v.rejected = longest_wait(denied);
            return v;
        }
    }
    for c in &enforce {
        let outcome = charge(store, &mut v, c);
        results.push(RuleResult {
            rule: c.rule,
            rate: c.rate,
            outcome,
        });
    }
    let (denied, allowed): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| !r.outcome.allowed);
    if !denied.is_empty() {
        v.rejected = longest_wait(denied);
        return v;
    }
    v.tightest = allowed.into_iter().min_by(|a, b| {
        a.outcome
            .remaining
            .cmp(&b.outcome.remaining)
            .then(b.outcome.reset_ns.cmp(&a.outcome.reset_ns))
    });
    v
}

fn longest_wait(denied: Vec<RuleResult>) -> Option<RuleResult> {
    denied.into_iter().max_by_key(|r| r.outcome.retry_after_ns)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A map store; `fail` makes every operation on a key fail.
    #[derive(Default)]
    pub struct MapStore {
        pub buckets: HashMap<String, Bucket>,
        pub fail: Option<(String, StoreError)>,
        pub charges: u64,
    }

    impl Store for MapStore {
        fn peek(&mut self, slot: &SlotRef) -> Result<Option<Bucket>, StoreError> {
            if let Some((k, e)) = &self.fail
                && *k == slot.shared_key
            {
                return Err(e.clone());
            }
            Ok(self.buckets.get(&slot.shared_key).copied())
        }
        fn charge(
            &mut self,
            slot: &SlotRef,
            rate: &Rate,
            now_ns: u64,
        ) -> Result<Outcome, StoreError> {
            let current = self.peek(slot)?;
            self.charges += 1;
            let (next, out) = gcra::step(current.as_ref(), slot.fingerprint, now_ns, rate);
            if let Some(n) = next {
                self.buckets.insert(slot.shared_key.clone(), n);
            }
            Ok(out)
        }
    }

    fn check(rule: usize, key: &str, requests: u64, burst: u64, mode: Mode) -> Check {
        Check {
            rule,
            slot: SlotRef {
                shared_key: key.to_string(),
                fingerprint: rule as u64 + 1,
            },
            rate: Rate::new(requests, 1, burst),
            mode,
        }
    }

    const T0: u64 = 1_000_000_000_000;

    #[test]
    fn single_rule_allows_burst_then_rejects() {
        let mut s = MapStore::default();
        let checks = [check(0, "k", 10, 3, Mode::Enforce)];
        let vs: Vec<Verdict> = (0..4).map(|_| decide(&mut s, &checks, T0)).collect();
        assert!(vs[..3].iter().all(|v| v.rejected.is_none()));
        assert_eq!(
            vs[2].tightest.as_ref().map(|r| r.outcome.remaining),
            Some(0)
        );
        let r = vs[3].rejected.as_ref().unwrap();
        assert_eq!((r.rule, r.outcome.retry_after_ns), (0, 100_000_000));
    }

    #[test]
    fn strictest_rejects_without_draining_the_others() {
        let mut s = MapStore::default();
        // Per-client 2 at once, global 100 at once.
        let checks = [
            check(0, "global", 100, 100, Mode::Enforce),
            check(1, "client", 1, 2, Mode::Enforce),
        ];
        for _ in 0..2 {
            assert!(decide(&mut s, &checks, T0).rejected.is_none());
        }
        let global_after_two = s.buckets["global"];
        for _ in 0..50 {
            let v = decide(&mut s, &checks, T0);
            assert_eq!(v.rejected.as_ref().map(|r| r.rule), Some(1));
        }
        // The 50 rejected requests did not charge the global bucket.
        assert_eq!(s.buckets["global"], global_after_two);
    }

    #[test]
    fn tightest_rule_gives_the_headers() {
        let mut s = MapStore::default();
        let checks = [
            check(0, "a", 100, 100, Mode::Enforce),
            check(1, "b", 10, 5, Mode::Enforce),
        ];
        let v = decide(&mut s, &checks, T0);
        let t = v.tightest.unwrap();
        assert_eq!((t.rule, t.outcome.remaining), (1, 4));
    }

    #[test]
    fn shadow_counts_but_never_rejects() {
        let mut s = MapStore::default();
        let checks = [check(0, "k", 1, 1, Mode::Shadow)];
        let v1 = decide(&mut s, &checks, T0);
        let v2 = decide(&mut s, &checks, T0);
        assert!(v1.rejected.is_none() && !v1.shadow_limited);
        assert!(v2.rejected.is_none() && v2.shadow_limited);
        assert!(v2.tightest.is_none());
    }

    #[test]
    fn store_failures_fail_closed() {
        for err in [StoreError::Contended, StoreError::Host("x".into())] {
            let mut s = MapStore {
                fail: Some(("k".into(), err.clone())),
                ..Default::default()
            };
            let single = [check(0, "k", 100, 100, Mode::Enforce)];
            let v = decide(&mut s, &single, T0);
            assert!(v.rejected.is_some());
            assert_eq!(v.store_errors, std::slice::from_ref(&err));
            let two = [
                check(0, "ok", 100, 100, Mode::Enforce),
                check(1, "k", 100, 100, Mode::Enforce),
            ];
            let v = decide(&mut s, &two, T0);
            assert_eq!(v.rejected.map(|r| r.rule), Some(1));
            assert_eq!(s.charges, 0, "nothing charged when a peek fails");
        }
    }

    #[test]
    fn collisions_are_counted() {
        let mut s = MapStore::default();
        let a = [check(0, "slot", 1, 5, Mode::Enforce)];
        let mut b = a.clone();
        b[0].slot.fingerprint = 99;
        decide(&mut s, &a, T0);
        let v = decide(&mut s, &b, T0);
        assert_eq!(v.collisions, 1);
    }
}
