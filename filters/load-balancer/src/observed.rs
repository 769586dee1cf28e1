//! What this worker saw of each endpoint (answers and failures over a
//! sliding window), and the rule that lets observed failures override an
//! endpoint's self-reported load.
//!
//! Why: load reports are the backend's own claim. A backend that reports
//! itself idle (utilization 0.0001, rps 10 000) while failing 2 of 3
//! requests wins every A58 weight and every P2C comparison, and a failure
//! pattern that never reaches `consecutive_failures` in a row is never
//! ejected. Envoy's success-rate outlier detection needs at least 5 hosts
//! (`success_rate_minimum_hosts`); this rule works from 2.
//!
//! The rule (per priority level, per worker): the level's best observed
//! failure fraction `f_best` is the reference; an endpoint with at least
//! `request_volume` answers in the window whose failure fraction `f`
//! exceeds `f_best + margin` is *penalised* with its relative success
//! `s = (1 − f) / (1 − f_best)`:
//! - weighted round robin / round robin: its weight becomes
//!   `min(weight, median weight of the unpenalised members) × s`, so its
//!   self-report cannot lift it above a typical endpoint;
//! - P2C: its utilization counts as at least `1 − s`, and its score is
//!   divided by `s`.
//!
//! When every endpoint fails alike (an outage of the service, not of one
//! endpoint) nobody is penalised, so traffic does not slosh around.
//! Counting is per worker, in VM memory: no host call per request.

/// Answers (ok, failed) per endpoint slot in two half-window buckets.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    half_ns: u64,
    bucket_start_ns: u64,
    current: Vec<(u32, u32)>,
    previous: Vec<(u32, u32)>,
    /// Bumped each time the buckets rotate: a picker built before sees
    /// stale penalties and is rebuilt.
    pub generation: u64,
}

impl Observed {
    /// `window_ns`: how far back answers count (0 disables observing).
    pub fn new(window_ns: u64) -> Self {
        Observed {
            half_ns: window_ns / 2,
            ..Observed::default()
        }
    }

    /// Whether observing is on.
    pub fn enabled(&self) -> bool {
        self.half_ns > 0
    }

    /// Rotates the buckets when `now_ns` left the current one.
    pub fn advance(&mut self, now_ns: u64) {
        if !self.enabled() {
            return;
        }
        let elapsed = now_ns.saturating_sub(self.bucket_start_ns);
        if elapsed < self.half_ns {
            return;
        }
        if elapsed >= 2 * self.half_ns {
            // Idle for a whole window: nothing recent is left.
            self.previous.clear();
        } else {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.clear();
        self.bucket_start_ns = now_ns;
        self.generation += 1;
    }

    /// Counts one answer of the endpoint in `slot`.
    pub fn record(&mut self, slot: u16, failed: bool, now_ns: u64) {
        if !self.enabled() {
            return;
        }
        self.advance(now_ns);
        let i = usize::from(slot);
        if self.current.len() <= i {
            self.current.resize(i + 1, (0, 0));
        }
        let c = &mut self.current[i];
        if failed {
            c.1 = c.1.saturating_add(1);
        } else {
            c.0 = c.0.saturating_add(1);
        }
    }

    /// The failure fraction of `slot` over the last one to two half
    /// windows; `None` below `request_volume` answers.
    pub fn failure_fraction(&self, slot: u16, request_volume: u32) -> Option<f64> {
        let i = usize::from(slot);
        let get = |v: &Vec<(u32, u32)>| v.get(i).copied().unwrap_or((0, 0));
        let (a, b) = (get(&self.current), get(&self.previous));
        let ok = u64::from(a.0) + u64::from(b.0);
        let failed = u64::from(a.1) + u64::from(b.1);
        let n = ok + failed;
        (n >= u64::from(request_volume.max(1))).then(|| failed as f64 / n as f64)
    }
}

/// The relative success `s` of each member that the rule penalises
/// (`None`: not penalised). `failures[k]`: member `k`'s failure fraction,
/// `None` without enough answers.
pub fn penalties(failures: &[Option<f64>], margin: f64) -> Vec<Option<f64>> {
    let best = failures
        .iter()
        .flatten()
        .copied()
        .filter(|f| f.is_finite())
        .fold(None, |m: Option<f64>, f| Some(m.map_or(f, |m| m.min(f))));
    let Some(best) = best else {
        return vec![None; failures.len()];
    };
    failures
        .iter()
        .map(|f| match f {
            Some(f) if *f > best + margin && best < 1.0 => {
                Some(((1.0 - f) / (1.0 - best)).max(0.0))
            }
            _ => None,
        })
        .collect()
}

/// Applies the penalties to a level's weights (see the module docs).
pub fn penalise_weights(weights: &mut [f64], penalties: &[Option<f64>]) {
    let mut typical: Vec<f64> = weights
        .iter()
        .zip(penalties)
        .filter(|(w, p)| p.is_none() && **w > 0.0)
        .map(|(w, _)| *w)
        .collect();
    if typical.is_empty() {
        // Everyone penalised differently: scale each by its own success.
        typical = weights.iter().copied().filter(|w| *w > 0.0).collect();
    }
    let median = crate::weights::median(&mut typical);
    for (w, p) in weights.iter_mut().zip(penalties) {
        if let Some(s) = p {
            let base = match median {
                Some(m) => w.min(m),
                None => *w,
            };
            *w = base * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const S: u64 = 1_000_000_000;

    #[test]
    fn counts_over_a_sliding_window() {
        let mut o = Observed::new(10 * S);
        for i in 0..30 {
            o.record(2, i % 3 != 0, S);
        }
        assert_eq!(o.failure_fraction(2, 20), Some(20.0 / 30.0));
        assert_eq!(o.failure_fraction(2, 31), None, "below the volume");
        assert_eq!(o.failure_fraction(7, 1), None, "never seen");
        // Half a window later the answers are still counted...
        o.advance(7 * S);
        assert_eq!(o.failure_fraction(2, 20), Some(20.0 / 30.0));
        // ...a whole window later they are gone.
        o.advance(13 * S);
        assert_eq!(o.failure_fraction(2, 1), None);
        assert!(o.generation >= 2);
    }

    #[test]
    fn a_long_pause_forgets_everything() {
        let mut o = Observed::new(10 * S);
        o.record(0, true, S);
        o.advance(100 * S);
        assert_eq!(o.failure_fraction(0, 1), None);
    }

    #[test]
    fn disabled_counts_nothing() {
        let mut o = Observed::new(0);
        o.record(0, true, S);
        assert_eq!(o.failure_fraction(0, 1), None);
    }

    #[test]
    fn only_endpoints_worse_than_the_best_by_the_margin_are_penalised() {
        let p = penalties(&[Some(0.0), Some(0.02), Some(2.0 / 3.0), None], 0.1);
        assert_eq!(p[0], None);
        assert_eq!(p[1], None, "within the margin");
        assert!((p[2].unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(p[3], None, "no data");
        // Everyone failing alike: an outage, nobody is singled out.
        assert!(
            penalties(&[Some(0.5), Some(0.52)], 0.1)
                .iter()
                .all(Option::is_none)
        );
        assert!(penalties(&[None, None], 0.1).iter().all(Option::is_none));
        assert!(
            penalties(&[Some(1.0), Some(1.0)], 0.1)
                .iter()
                .all(Option::is_none)
        );
    }

    #[test]
    fn the_liar_loses_its_self_reported_weight() {
        // Issue 12, item 7: a backend reporting itself idle (a huge A58
        // weight) while failing 2 of 3 requests; two honest ones.
        let mut w = [100.0, 100.0, 1_000_000.0];
        let p = penalties(&[Some(0.0), Some(0.0), Some(2.0 / 3.0)], 0.1);
        penalise_weights(&mut w, &p);
        let share = w[2] / w.iter().sum::<f64>();
        assert!(share <= 1.0 / 3.0, "liar share {share}");
        assert!((w[2] - 100.0 / 3.0).abs() < 1e-6, "{w:?}");
        // A small endpoint that fails keeps no more than its own weight.
        let mut w = [100.0, 100.0, 10.0];
        penalise_weights(&mut w, &p);
        assert!((w[2] - 10.0 / 3.0).abs() < 1e-9, "{w:?}");
    }
}
