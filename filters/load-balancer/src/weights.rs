//! gRFC A58 weights (Envoy's client_side_weighted_round_robin) from load
//! reports, and the pickers that spread requests by weight.
//!
//! Per endpoint: `weight = qps / (utilization + eps / qps × penalty)`; a
//! report that yields no weight (qps or utilization ≤ 0) is ignored. A
//! weight counts only after the blackout period since the endpoint's first
//! weighted report (so a restarted backend reporting an idle 0.01 cannot
//! grab all traffic), and expires when no report arrived for the expiration
//! period (then the blackout starts over). Endpoints without a weight get the
//! median of the others; weights are clamped to `[min_ratio, max_ratio] ×
//! median` so one wild report cannot starve or flood anyone. (Envoy's CSWRR
//! clamps to the mean, which includes the outlier itself: with 3 endpoints
//! one report can still take 94–100 % of the traffic. The median is not
//! moved by one outlier, so the ratio holds.)

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// The A58 weight of one report; 0 when the report carries none.
pub fn report_weight(qps: f64, eps: f64, utilization: f64, penalty: f64) -> f64 {
    if !(qps > 0.0 && utilization > 0.0) {
        return 0.0;
    }
    let penalty_term = if eps > 0.0 && penalty > 0.0 {
        eps / qps * penalty
    } else {
        0.0
    };
    let w = qps / (utilization + penalty_term);
    if w.is_finite() && w > 0.0 { w } else { 0.0 }
}

/// Periods of the weight state machine, in host-clock nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Periods {
    pub blackout_ns: u64,
    pub expiration_ns: u64,
}

/// One endpoint's weight history (kept in the published table so the weight
/// job resumes where its last run stopped, on whichever VM).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WeightState {
    /// The last report's weight (0 = none yet).
    pub weight: f64,
    /// When that report arrived (0 = never).
    pub last_update_ns: u64,
    /// Start of the current run of weighted reports (0 = not in one).
    pub non_empty_since_ns: u64,
}

impl WeightState {
    /// Records a report that arrived at `at_ns` with weight `weight`.
    /// Reports without a weight are ignored, as in A58.
    pub fn on_report(&mut self, weight: f64, at_ns: u64) {
        if weight <= 0.0 || !weight.is_finite() {
            return;
        }
        if self.non_empty_since_ns == 0 {
            self.non_empty_since_ns = at_ns.max(1);
        }
        self.last_update_ns = at_ns;
        self.weight = weight;
    }

    /// The weight to use at `now_ns` (0 = none). Returns also whether the
    /// weight expired just now (a stale report).
    pub fn effective(&mut self, now_ns: u64, p: Periods) -> (f64, bool) {
        if self.non_empty_since_ns == 0 {
            return (0.0, false);
        }
        if now_ns.saturating_sub(self.last_update_ns) >= p.expiration_ns {
            // Expired: the next report starts a new blackout.
            self.non_empty_since_ns = 0;
            self.weight = 0.0;
            return (0.0, true);
        }
        if p.blackout_ns > 0 && now_ns.saturating_sub(self.non_empty_since_ns) < p.blackout_ns {
            return (0.0, false);
        }
        (self.weight, false)
    }
}

/// The lower median of `values` (sorted in place): the middle value, or
/// the lower of the two middle ones for an even count, so one high outlier
/// never moves it (with 2 endpoints the plain median is their mean, which
/// the outlier sets). `None` when empty.
pub fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    (n > 0).then(|| values[(n - 1) / 2])
}

/// Gives endpoints without a weight (0) the median of the others and clamps
/// everything to `[min_ratio, max_ratio] × median`. Returns false when no
/// endpoint has a weight (the caller then falls back to configured weights).
pub fn fill_and_clamp(weights: &mut [f64], min_ratio: f64, max_ratio: f64) -> bool {
    let mut valid: Vec<f64> = weights.iter().copied().filter(|w| *w > 0.0).collect();
    let Some(median) = median(&mut valid) else {
        return false;
    };
    for w in weights.iter_mut() {
        if *w <= 0.0 {
            *w = median;
        }
    }
    let (lo, hi) = (median * min_ratio, median * max_ratio);
    for w in weights.iter_mut() {
        *w = w.clamp(lo.min(hi), hi.max(lo));
    }
    true
}

/// Earliest-deadline-first weighted round robin: each pick takes the entry
/// whose next deadline is soonest and moves it by `1 / weight`. Over any
/// window, entry `i` gets `weight_i / Σ weight` of the picks, evenly spread.
///
/// Rebuilding with new weights keeps each surviving entry's progress
/// towards its next turn (matched by a stable key), so frequent weight
/// updates neither restart the sequence nor favour anyone.
#[derive(Debug, Clone, Default)]
pub struct Edf {
    heap: BinaryHeap<Slot>,
    seq: u64,
    /// Deadline of the last pick: the scheduler's clock.
    now: f64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    deadline: f64,
    seq: u64,
    step: f64,
    item: usize,
    key: u64,
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Slot {}
impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Slot {
    // Reversed: BinaryHeap is a max-heap and we want the earliest deadline;
    // ties go to the entry scheduled first (stable, fair).
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .deadline
            .total_cmp(&self.deadline)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// Where a new entry's first turn falls, as a fraction of its step:
/// uniform in [0, 1) per (VM seed, entry key). Each VM (and proxy) starts
/// every entry at its own point, so VMs built from the same table do not
/// pick in lockstep, which paced or synchronised clients turn into bursts of
/// one request per proxy at the same endpoint at once. Envoy starts its EDF
/// schedulers after a random number of picks for the same reason; one
/// phase for all entries (used before, and 0 in every VM with a random id)
/// only rescales the same order.
fn start_fraction(seed: u64, key: u64) -> f64 {
    crate::picker::Rng::new(seed ^ crate::maglev::mix(key)).unit()
}

impl Edf {
    /// `items`: (item, weight); the item doubles as its key. Non-positive or
    /// non-finite weights are left out. `seed` (the VM's random id) places
    /// each entry's first turn ([`start_fraction`]).
    pub fn new(items: impl IntoIterator<Item = (usize, f64)>, seed: u64) -> Self {
        Edf::carrying(items.into_iter().map(|(i, w)| (i, i as u64, w)), seed, None)
    }

    /// `items`: (item, key, weight). Entries whose key was in `previous`
    /// keep the fraction of their wait already served; new ones start at
    /// [`start_fraction`]`(seed, key)` of a step.
    pub fn carrying(
        items: impl IntoIterator<Item = (usize, u64, f64)>,
        seed: u64,
        previous: Option<&Edf>,
    ) -> Self {
        let mut edf = Edf::default();
        for (item, key, w) in items {
            if !(w > 0.0 && w.is_finite()) {
                continue;
            }
            let step = 1.0 / w;
            let left = previous
                .and_then(|p| p.heap.iter().find(|s| s.key == key).map(|s| (p, s)))
                .map(|(p, s)| ((s.deadline - p.now) / s.step).clamp(0.0, 1.0))
                .unwrap_or_else(|| start_fraction(seed, key));
            edf.push(item, key, step * left, step);
        }
        edf
    }

    fn push(&mut self, item: usize, key: u64, deadline: f64, step: f64) {
        self.seq += 1;
        self.heap.push(Slot {
            deadline,
            seq: self.seq,
            step,
            item,
            key,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn pick(&mut self) -> Option<usize> {
        let s = self.heap.pop()?;
        self.now = s.deadline;
        self.push(s.item, s.key, s.deadline + s.step, s.step);
        Some(s.item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a58_formula() {
        assert_eq!(report_weight(100.0, 0.0, 0.5, 1.0), 200.0);
        // eps/qps × penalty adds to the utilization: 100 / (0.5 + 10/100 × 1).
        let w = report_weight(100.0, 10.0, 0.5, 1.0);
        assert!((w - 100.0 / 0.6).abs() < 1e-9, "{w}");
        assert_eq!(report_weight(0.0, 0.0, 0.5, 1.0), 0.0);
        assert_eq!(report_weight(100.0, 0.0, 0.0, 1.0), 0.0);
        assert_eq!(report_weight(f64::NAN, 0.0, 0.5, 1.0), 0.0);
        assert_eq!(
            report_weight(1e308, 0.0, 1e-308, 1.0),
            0.0,
            "overflow → none"
        );
    }

    #[test]
    fn blackout_then_weight_then_expiry() {
        let p = Periods {
            blackout_ns: 10 * S,
            expiration_ns: 180 * S,
        };
        let mut s = WeightState::default();
        assert_eq!(s.effective(S, p), (0.0, false));
        s.on_report(0.0, S); // no weight: ignored
        assert_eq!(s.non_empty_since_ns, 0);
        s.on_report(50.0, 100 * S);
        assert_eq!(s.effective(105 * S, p), (0.0, false), "in blackout");
        s.on_report(60.0, 108 * S);
        assert_eq!(s.effective(110 * S, p), (60.0, false), "blackout over");
        // No report for the expiration period: stale, and blackout again.
        assert_eq!(s.effective(288 * S, p), (0.0, true));
        s.on_report(70.0, 289 * S);
        assert_eq!(s.effective(290 * S, p), (0.0, false));
        assert_eq!(s.effective(299 * S, p), (70.0, false));
    }

    #[test]
    fn zero_blackout_counts_at_once() {
        let p = Periods {
            blackout_ns: 0,
            expiration_ns: S,
        };
        let mut s = WeightState::default();
        s.on_report(5.0, 7);
        assert_eq!(s.effective(7, p), (5.0, false));
    }

    #[test]
    fn median_fill_and_clamp() {
        let mut w = [100.0, 0.0, 300.0, 200.0];
        assert!(fill_and_clamp(&mut w, 0.01, 10.0));
        assert_eq!(w, [100.0, 200.0, 300.0, 200.0]);
        let mut w = [0.0, 0.0];
        assert!(!fill_and_clamp(&mut w, 0.01, 10.0));
        // One wild report: clamped to 10 × the median, the tiny one to 1%.
        let mut w = vec![1.0; 20];
        w.extend([1e9, 1e-9]);
        fill_and_clamp(&mut w, 0.01, 10.0);
        assert_eq!((w[20], w[21]), (10.0, 0.01));
    }

    #[test]
    fn the_ratio_cap_holds_with_three_endpoints() {
        // Issue 12, item 7: clamped to 10 × the mean (which includes the
        // outlier), one of three endpoints kept 94–100 % of the traffic.
        for outlier in [1e3, 1e6, 1e12] {
            let mut w = [1.0, 1.0, outlier];
            fill_and_clamp(&mut w, 0.01, 10.0);
            let share = w[2] / w.iter().sum::<f64>();
            assert!(share <= 10.0 / 12.0 + 1e-12, "{outlier}: {share}");
            assert!(w[2] / w[0] <= 10.0);
            // Two endpoints: the plain median (their mean) would follow the
            // outlier; the lower median does not (found in real Envoy: a
            // liar kept 400 of 400 requests).
            let mut w = [1.0, outlier];
            fill_and_clamp(&mut w, 0.01, 10.0);
            assert_eq!(w, [1.0, 10.0], "{outlier}");
            // Two honest, two liars: each liar at most 10 × an honest one.
            let mut w = [1.0, 1.0, outlier, outlier];
            fill_and_clamp(&mut w, 0.01, 10.0);
            assert_eq!(w, [1.0, 1.0, 10.0, 10.0], "{outlier}");
        }
    }

    fn shares(edf: &mut Edf, n: usize, picks: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..picks {
            c[edf.pick().unwrap()] += 1;
        }
        c
    }

    #[test]
    fn edf_follows_weights_exactly_and_smoothly() {
        let mut edf = Edf::new([(0, 125.0), (1, 250.0), (2, 500.0)], 0);
        assert_eq!(shares(&mut edf, 3, 700), vec![100, 200, 400]);
        // Smooth: the heaviest never waits more than 2 picks in a row.
        let mut edf = Edf::new([(0, 1.0), (1, 2.0), (2, 4.0)], 5);
        let seq: Vec<usize> = (0..70).map(|_| edf.pick().unwrap()).collect();
        let max_gap = seq
            .split(|&i| i == 2)
            .map(<[usize]>::len)
            .max()
            .unwrap_or(0);
        assert!(max_gap <= 2, "{seq:?}");
    }

    #[test]
    fn rebuilding_keeps_progress() {
        // One pick per rebuild: without carried progress the heaviest entry
        // would win every time.
        let items = [(0, 10, 1.0), (1, 11, 2.0), (2, 12, 4.0)];
        let mut edf = Edf::carrying(items, 5, None);
        let mut c = [0; 3];
        for _ in 0..700 {
            c[edf.pick().unwrap()] += 1;
            edf = Edf::carrying(items, 5, Some(&edf));
        }
        assert_eq!(c, [100, 200, 400]);
        // Keys, not positions, carry: a reordered table keeps the shares.
        let swapped = [(0, 12, 4.0), (1, 11, 2.0), (2, 10, 1.0)];
        let mut c = [0u32; 3];
        for _ in 0..700 {
            c[edf.pick().unwrap()] += 1;
            edf = Edf::carrying(swapped, 5, Some(&edf));
        }
        let want: [u32; 3] = [400, 200, 100];
        assert!(c.iter().zip(want).all(|(g, w)| g.abs_diff(w) <= 1), "{c:?}");
    }

    #[test]
    fn vms_with_different_phases_interleave_their_picks() {
        // Three proxies with the same weights, their k-th requests at the
        // same moment (paced clients): in lockstep every backend gets its
        // requests three at a time.
        let weights = [(0, 1.0), (1, 2.0), (2, 4.0)];
        let same_pick_share = |seeds: [u64; 3]| {
            let mut edfs: Vec<Edf> = seeds.iter().map(|&s| Edf::new(weights, s)).collect();
            let rounds = 700;
            let same = (0..rounds)
                .filter(|_| {
                    let picks: Vec<usize> = edfs.iter_mut().filter_map(Edf::pick).collect();
                    picks.windows(2).all(|w| w[0] == w[1])
                })
                .count();
            same as f64 / rounds as f64
        };
        assert_eq!(same_pick_share([42; 3]), 1.0);
        // Seeds as `instance_id` makes them: random 64-bit ids. Independent
        // random picks would agree (1³ + 2³ + 4³) / 7³ = 21 % of the time;
        // so do these on average (a given triple may agree more or less: a
        // smooth order of 3 entries has few shapes).
        let mut rng = crate::picker::Rng::new(7);
        let triples = 200;
        let mean = (0..triples)
            .map(|_| same_pick_share([rng.next_u64(), rng.next_u64(), rng.next_u64()]))
            .sum::<f64>()
            / f64::from(triples);
        assert!(mean < 0.3, "{mean}");
    }

    #[test]
    fn edf_skips_bad_weights() {
        let mut edf = Edf::new([(0, 0.0), (1, f64::NAN), (2, -1.0)], 0);
        assert!(edf.is_empty());
        assert_eq!(edf.pick(), None);
        let mut edf = Edf::new([(4, 1.0), (5, 0.0)], 3);
        assert_eq!(edf.pick(), Some(4));
    }
}
