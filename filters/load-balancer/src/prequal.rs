//! The `prequal` policy: pick by requests in flight and latency, the way
//! Prequal does (Wydrowski, Kleinberg, Rumble, Archer, "Load is not what
//! you should balance: Introducing Prequal", NSDI 2024), with load reports
//! in place of probes.
//!
//! Per pick: sample `choices` distinct endpoints of the level; an endpoint
//! is *hot* when its load estimate exceeds the `hot_quantile` of the
//! level's estimates, else *cold*. The cold sampled endpoint with the
//! lowest latency estimate wins; when every sampled endpoint is hot, the
//! one with the lowest load (the paper's hot-cold lexicographic rule; see
//! [`choose`] for where this differs).
//!
//! Estimates, per worker, in VM memory (no host call per pick):
//! - **requests in flight** (RIF): the backend's own count from its latest
//!   report (`named_metrics.<in_flight_metric>`, so it includes every
//!   other proxy's requests), moved by what this worker sent or finished
//!   there since;
//! - **load**: Prequal's replicas are alike; ours may not be, so when
//!   reports carry a utilization the load is that utilization, moved by
//!   this worker's requests since, each worth 1 / capacity (capacity =
//!   reported RIF / reported utilization, averaged); else plain RIF. A
//!   pick compares loads with its own request added, `(RIF + 1) /
//!   capacity`: the Shortest Expected Delay (SED) rule of queueing theory
//!   for servers of unequal speed, so the larger of two equally utilized
//!   endpoints is colder;
//! - **latency**: an average of this worker's own successful answers as
//!   Envoy measured them (`x-envoy-upstream-service-time`, ms), forgotten
//!   after `max_age_ms` without one.
//!
//! Estimates age by the VM's tick clock (every 20 ms), so a pick reads no
//! clock: the policy costs no crossing over weighted round robin.
//!
//! A report older than `max_age_ms` no longer counts. Without a usable
//! report, with nothing of this worker's there and no probe of this
//! worker's for `max_age_ms`, the endpoint is probed: its load counts as
//! 0, so the next pick that samples it sends one request; otherwise
//! (the probe out, or failed without a report) it counts as typical (the
//! level's median). So an endpoint that was hot is tried again, one
//! request per worker per `max_age_ms` (a dead one, whose probes fail at
//! once without a report, too), not by every proxy at once, and never
//! left out for good: assumed typical, a stale endpoint next to two
//! overloaded ones was as hot as the hotter of them, never picked, so
//! never heard from again (the matrix's antagonist scenario, BENCHMARKS.md
//! eleventh session).

use crate::picker::Rng;

/// Weight of a new sample in the latency and capacity averages.
const ALPHA: f64 = 0.2;

/// What this worker knows of one endpoint slot.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Requests this worker has in flight there.
    in_flight: u32,
    /// Whether the latest report this worker received from the endpoint
    /// carried an in-flight count (the `auto` policy's switch).
    reports_in_flight: bool,
    /// The latest report with an in-flight count.
    report: Option<Seen>,
    /// Requests the endpoint serves at utilization 1 (average); 0 = unknown.
    capacity: f64,
    /// Average latency of successful answers, ns, and when the last came.
    latency_ns: f64,
    latency_at: u64,
    /// When this worker last sent a request there without a usable report
    /// (a probe): the next may go `max_age_ns` later.
    probed_at: Option<u64>,
    /// Whether the latest answer this worker recorded from there failed.
    last_failed: bool,
}

/// A report as this worker received it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    rif: f64,
    /// Reported utilization; 0 when none.
    utilization: f64,
    /// This worker's requests in flight there when it arrived.
    local: u32,
    at_ns: u64,
}

/// One endpoint's estimates at a pick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Requests in flight (reported and local, see the module docs).
    pub rif: f64,
    /// Whether `rif` rests on a report (else it is this worker's own
    /// count alone, a lower bound).
    pub reported: bool,
    /// Whether the endpoint's latest report to this worker carried an
    /// in-flight count, however old it is.
    pub reports_in_flight: bool,
    /// Utilization-based load (see the module docs); `None` without a
    /// reported utilization and capacity.
    pub load: Option<f64>,
    /// What one more request adds to `load`: 1 / capacity; 0 when `load`
    /// is `None`.
    pub step: f64,
    /// Latency estimate in ns; `None` when unknown or forgotten.
    pub latency_ns: Option<f64>,
    /// Whether a request may probe the endpoint now: no usable report,
    /// nothing of this worker's there, and no probe of this worker's for
    /// `max_age` (one that failed without a report, e.g. a refused
    /// connection, does not clear the way for the next at once).
    pub probe: bool,
    /// No usable report, and the latest answer this worker recorded from
    /// the endpoint failed: until its next probe it is no candidate (a dead
    /// endpoint gets its probes, not a share).
    pub failing: bool,
}

impl Estimate {
    /// What a pick assumes of an endpoint it knows nothing about.
    pub const UNKNOWN: Estimate = Estimate {
        rif: f64::MAX,
        reported: false,
        reports_in_flight: false,
        load: None,
        step: 0.0,
        latency_ns: None,
        probe: false,
        failing: false,
    };
}

/// This worker's view of every endpoint slot.
#[derive(Debug, Clone)]
pub struct Live {
    slots: Vec<Slot>,
    /// The fingerprint of the endpoint each slot's state belongs to (0:
    /// none yet). A slot freed by a removed endpoint goes to the next one
    /// added, which must not inherit its counts, reports or failures.
    owners: Vec<u64>,
    max_age_ns: u64,
}

impl Live {
    /// `slots` endpoint slots; reports and latencies older than
    /// `max_age_ns` are not used.
    pub fn new(slots: usize, max_age_ns: u64) -> Self {
        Live {
            slots: vec![Slot::default(); slots],
            owners: vec![0; slots],
            max_age_ns,
        }
    }

    /// Gives `slot` to the endpoint with `fingerprint`: when it belonged
    /// to another endpoint, its state starts over. Returns whether it
    /// changed hands (the caller forgets the slot's other per-worker
    /// records too).
    pub fn adopt(&mut self, slot: u16, fingerprint: u64) -> bool {
        let i = usize::from(slot);
        match (self.owners.get_mut(i), self.slots.get_mut(i)) {
            (Some(owner), Some(s)) if *owner != fingerprint => {
                *owner = fingerprint;
                *s = Slot::default();
                true
            }
            _ => false,
        }
    }

    /// Whether `slot`'s state belongs to the endpoint with `fingerprint`:
    /// a request picked from an older table may end after its endpoint's
    /// slot went to another.
    pub fn owns(&self, slot: u16, fingerprint: u64) -> bool {
        self.owners.get(usize::from(slot)) == Some(&fingerprint)
    }

    /// The latest answer this worker recorded from `slot` (see
    /// [`Estimate::failing`]).
    pub fn answered(&mut self, slot: u16, failed: bool) {
        if let Some(s) = self.slots.get_mut(usize::from(slot)) {
            s.last_failed = failed;
        }
    }

    /// A request was sent to `slot` at `now_ns` (a probe when the slot
    /// had no usable report).
    pub fn start(&mut self, slot: u16, now_ns: u64) {
        let max_age_ns = self.max_age_ns;
        if let Some(s) = self.slots.get_mut(usize::from(slot)) {
            if usable(s, now_ns, max_age_ns).is_none() {
                s.probed_at = Some(now_ns);
            }
            s.in_flight = s.in_flight.saturating_add(1);
        }
    }

    /// A request sent to `slot` ended (answered, reset or abandoned).
    pub fn finish(&mut self, slot: u16) {
        if let Some(s) = self.slots.get_mut(usize::from(slot)) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }

    /// This worker's requests in flight at `slot`.
    pub fn in_flight(&self, slot: u16) -> u32 {
        self.slots.get(usize::from(slot)).map_or(0, |s| s.in_flight)
    }

    /// A load report from `slot` at `now_ns`: `rif` its requests in flight
    /// (when reported), `utilization` its utilization (A58's choice of
    /// field). Values that are not finite and ≥ 0 are ignored (the report
    /// parser already refuses them). A report without a count still
    /// counts: it clears [`Estimate::reports_in_flight`].
    pub fn report(&mut self, slot: u16, rif: Option<f64>, utilization: f64, now_ns: u64) {
        let Some(s) = self.slots.get_mut(usize::from(slot)) else {
            return;
        };
        let rif = rif.filter(|r| r.is_finite() && *r >= 0.0);
        s.reports_in_flight = rif.is_some();
        let Some(rif) = rif else {
            return;
        };
        s.report = Some(Seen {
            rif,
            utilization: if utilization.is_finite() {
                utilization.max(0.0)
            } else {
                0.0
            },
            local: s.in_flight,
            at_ns: now_ns,
        });
        if rif > 0.0 && utilization.is_finite() && utilization > 0.0 {
            let c = rif / utilization;
            s.capacity = if s.capacity > 0.0 {
                s.capacity + ALPHA * (c - s.capacity)
            } else {
                c
            };
        }
    }

    /// A successful answer from `slot` took `latency_ns`.
    pub fn latency(&mut self, slot: u16, latency_ns: u64, now_ns: u64) {
        let Some(s) = self.slots.get_mut(usize::from(slot)) else {
            return;
        };
        let l = latency_ns as f64;
        let fresh = s.latency_ns > 0.0 && now_ns.saturating_sub(s.latency_at) <= self.max_age_ns;
        s.latency_ns = if fresh {
            s.latency_ns + ALPHA * (l - s.latency_ns)
        } else {
            l.max(1.0)
        };
        s.latency_at = now_ns;
    }

    /// The estimates of `slot` at `now_ns`.
    pub fn estimate(&self, slot: u16, now_ns: u64) -> Estimate {
        let Some(s) = self.slots.get(usize::from(slot)) else {
            return Estimate::UNKNOWN;
        };
        let local = f64::from(s.in_flight);
        let (rif, reported, load) = match usable(s, now_ns, self.max_age_ns) {
            Some(r) => {
                let moved = local - f64::from(r.local);
                let rif = (r.rif + moved).max(local);
                let load = (r.utilization > 0.0 && s.capacity > 0.0)
                    .then(|| (r.utilization + moved / s.capacity).max(local / s.capacity));
                (rif, true, load)
            }
            None => (local, false, None),
        };
        let latency_ns = (s.latency_ns > 0.0
            && now_ns.saturating_sub(s.latency_at) <= self.max_age_ns)
            .then_some(s.latency_ns);
        Estimate {
            failing: !reported && s.last_failed,
            rif,
            reported,
            reports_in_flight: s.reports_in_flight,
            load,
            step: if load.is_some() {
                1.0 / s.capacity
            } else {
                0.0
            },
            latency_ns,
            probe: !reported
                && s.in_flight == 0
                && s.probed_at
                    .is_none_or(|at| now_ns.saturating_sub(at) >= self.max_age_ns),
        }
    }
}

/// The slot's report if it still counts at `now_ns`: younger than
/// `max_age_ns`. Not longer while requests are out: a dead endpoint's
/// requests, failing at once without a report, kept its last (idle)
/// report alive for as long as they kept coming, and drew the next ones.
fn usable(s: &Slot, now_ns: u64, max_age_ns: u64) -> Option<Seen> {
    s.report
        .filter(|r| now_ns.saturating_sub(r.at_ns) <= max_age_ns)
}

/// The hot-cold rule over a level: `estimates[k]` belongs to member `k`,
/// `penalties[k]` is its relative success when observed failures penalise
/// it (`crate::observed`). Samples `choices` distinct members (all when
/// fewer) and returns the chosen member's index into `estimates`; `None`
/// for an empty level.
///
/// Refinements for few endpoints and several proxies (Prequal pools many
/// probes of many replicas): latencies within `LATENCY_TOLERANCE` of each
/// other count as equal, so noise does not send every proxy to the same
/// endpoint and the lower load decides; an endpoint without a usable
/// report gets one probe from this worker per `max_age` (load 0 while it
/// may, [`Estimate::probe`]) and is otherwise no candidate when its last
/// answer failed ([`Estimate::failing`]: a dead endpoint gets its probes,
/// not a share) and assumed typical (the level's median) when it did not,
/// not idle, so every proxy does not rush to it at once; one
/// without a latency is assumed of typical latency; a utilization-based
/// load of 1 or more is hot whatever the quantile; and when every sampled
/// endpoint is hot, the least loaded of the whole level wins.
pub fn choose(
    estimates: &[Estimate],
    penalties: &[Option<f64>],
    choices: usize,
    hot_quantile: f64,
    rng: &mut Rng,
) -> Option<usize> {
    let n = estimates.len();
    if n <= 1 {
        return (n == 1).then_some(0);
    }
    // Utilization-based loads only when every reported endpoint has one.
    let normalise = estimates
        .iter()
        .filter(|e| e.reported)
        .all(|e| e.load.is_some());
    // The load with this request added: Shortest Expected Delay's
    // (n + 1) / capacity, so of two endpoints equally utilized the larger
    // one, with more free slots, is colder (a small one queues sooner).
    // Without capacities, n + 1 orders as plain in-flight counts do.
    let own_load = |e: &Estimate| match e.load {
        Some(l) if normalise => l + e.step,
        _ => e.rif,
    };
    let reported: Vec<f64> = estimates
        .iter()
        .filter(|e| e.reported)
        .map(own_load)
        .collect();
    let typical_load = median(&reported);
    let latencies: Vec<f64> = estimates.iter().filter_map(|e| e.latency_ns).collect();
    let typical_latency = median(&latencies).unwrap_or(0.0);
    let loads: Vec<f64> = estimates
        .iter()
        .enumerate()
        .map(|(k, e)| {
            // Unreported: a probe counts as idle (this worker's own count
            // there, 0); one whose last answer failed is no candidate until
            // its probe; otherwise typical.
            let mut l = own_load(e);
            if !e.reported
                && !e.probe
                && let Some(t) = typical_load
            {
                l = if e.failing { f64::INFINITY } else { l.max(t) };
            }
            // Observed failures count against an endpoint whatever it reports.
            if let Some(s) = penalties.get(k).copied().flatten() {
                l = (l + 1.0) / s.max(1e-6);
            }
            l
        })
        .collect();
    let latency = |k: usize| estimates[k].latency_ns.unwrap_or(typical_latency);
    let threshold = quantile(&loads, hot_quantile);
    // Partial Fisher-Yates over member indices: `d` distinct samples.
    let d = choices.clamp(1, n);
    let mut order: Vec<usize> = (0..n).collect();
    for i in 0..d {
        let j = i + rng.below(n - i);
        order.swap(i, j);
    }
    let sampled = &order[..d];
    let better_cold = |a: usize, b: usize| {
        let (la, lb) = (latency(a), latency(b));
        if la < lb * (1.0 - LATENCY_TOLERANCE) {
            a
        } else if lb < la * (1.0 - LATENCY_TOLERANCE) || loads[b] < loads[a] {
            b
        } else {
            a
        }
    };
    // A load above 1 with this request added means it would queue (no free
    // slot), whatever the quantile says (with 3 endpoints, the 0.8 quantile
    // leaves 2 cold however loaded).
    let cold =
        |k: usize| loads[k].is_finite() && loads[k] <= threshold && !(normalise && loads[k] > FULL);
    let chosen = sampled
        .iter()
        .copied()
        .filter(|&k| cold(k))
        .reduce(better_cold);
    // Every sampled endpoint hot: the least loaded of the whole level (its
    // loads are known anyway), not of the sample, which may have missed
    // the one endpoint with room.
    chosen.or_else(|| (0..n).min_by(|&a, &b| loads[a].total_cmp(&loads[b])))
}

/// Whether one more request at the endpoint `e` would wait for a slot: its
/// utilization-based load with the request added is above 1. `false` when
/// the load is unknown (no utilization or capacity yet).
pub fn would_queue(e: &Estimate) -> bool {
    e.load.is_some_and(|l| l + e.step > FULL)
}

/// A load with the request added above this has no free slot (1, with room
/// for rounding in capacity estimates).
const FULL: f64 = 1.0 + 1e-9;

/// Latencies closer than this fraction count as equal.
pub const LATENCY_TOLERANCE: f64 = 0.2;

/// The median of `values` (upper median), `None` when empty.
fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// The `q` quantile of `values` (linear interpolation between closest
/// ranks); `values` is not empty.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let (a, b) = (v[lo], v[hi.min(v.len() - 1)]);
    a + (b - a) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(rif: f64, load: Option<f64>, latency_ms: Option<f64>) -> Estimate {
        Estimate {
            rif,
            reported: true,
            reports_in_flight: true,
            load,
            // Capacity = rif / load, as `Live` estimates it.
            step: load.map_or(0.0, |l| if rif > 0.0 { l / rif } else { 0.0 }),
            latency_ns: latency_ms.map(|l| l * 1e6),
            probe: false,
            failing: false,
        }
    }

    fn shares(estimates: &[Estimate], choices: usize, q: f64) -> Vec<usize> {
        let mut rng = Rng::new(7);
        let mut c = vec![0; estimates.len()];
        for _ in 0..3000 {
            c[choose(estimates, &[], choices, q, &mut rng).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn the_hottest_endpoint_gets_nothing_while_colder_ones_exist() {
        let e = [
            est(2.0, None, Some(10.0)),
            est(3.0, None, Some(10.0)),
            est(9.0, None, Some(1.0)),
        ];
        let got = shares(&e, 3, 0.6);
        assert_eq!(got[2], 0, "hot despite its latency: {got:?}");
    }

    #[test]
    fn among_cold_endpoints_the_fastest_wins() {
        let e = [
            est(2.0, None, Some(30.0)),
            est(3.0, None, Some(10.0)),
            est(9.0, None, Some(1.0)),
        ];
        assert_eq!(shares(&e, 3, 0.6), vec![0, 3000, 0]);
    }

    #[test]
    fn utilization_decides_when_every_reported_endpoint_has_one() {
        // 8 in flight on a 16-wide endpoint (0.5) is colder than 3 on a
        // 4-wide one (0.75).
        let e = [
            est(3.0, Some(0.75), Some(10.0)),
            est(8.0, Some(0.5), Some(10.0)),
        ];
        assert_eq!(shares(&e, 2, 0.0), vec![0, 3000]);
        // One without: plain in-flight counts for all.
        let e = [est(3.0, Some(0.75), Some(10.0)), est(8.0, None, Some(10.0))];
        assert_eq!(shares(&e, 2, 0.0), vec![3000, 0]);
    }

    #[test]
    fn of_two_equally_utilized_endpoints_the_larger_is_colder() {
        // 3 of 4 slots and 12 of 16: the same 0.75, but one more request
        // leaves the small one full and the large one with 3 free slots
        // (Shortest Expected Delay's (n + 1) / capacity).
        let e = [
            est(3.0, Some(0.75), Some(10.0)),
            est(12.0, Some(0.75), Some(10.0)),
        ];
        assert_eq!(shares(&e, 2, 1.0), vec![0, 3000]);
        // One free slot left is still cold: the fastest, a (3 of 4), wins
        // every pick. Were it hot, the slower cold c would win instead;
        // b, with no free slot, is hot even though the quantile lets
        // everything in.
        let e = [
            est(3.0, Some(0.75), Some(1.0)),
            est(16.0, Some(1.0), Some(1.0)),
            est(2.0, Some(0.25), Some(10.0)),
        ];
        assert_eq!(shares(&e, 3, 1.0), vec![3000, 0, 0]);
    }

    #[test]
    fn two_choices_spread_picks_over_the_cold_endpoints() {
        let e = [
            est(1.0, None, Some(10.0)),
            est(1.0, None, Some(20.0)),
            est(1.0, None, Some(40.0)),
            est(1.0, None, Some(80.0)),
        ];
        let got = shares(&e, 2, 0.9);
        // Endpoint k wins when sampled with a slower one: 3, 2, 1, 0 of 6 pairs.
        assert!(got[0] > got[1] && got[1] > got[2], "{got:?}");
        assert_eq!(got[3], 0, "the slowest never wins a pair: {got:?}");
    }

    #[test]
    fn latencies_within_the_tolerance_leave_the_choice_to_the_load() {
        let e = [est(3.0, None, Some(10.0)), est(1.0, None, Some(11.0))];
        assert_eq!(shares(&e, 2, 1.0), vec![0, 3000]);
        let e = [est(3.0, None, Some(10.0)), est(1.0, None, Some(13.0))];
        assert_eq!(shares(&e, 2, 1.0), vec![3000, 0]);
    }

    /// c's report has aged out; `probes` requests of this worker are there.
    fn stale(probes: f64) -> Estimate {
        Estimate {
            rif: probes,
            reported: false,
            reports_in_flight: true,
            load: None,
            step: 0.0,
            latency_ns: None,
            probe: probes == 0.0,
            failing: false,
        }
    }

    #[test]
    fn an_endpoint_without_a_fresh_report_gets_a_probe_then_counts_as_typical() {
        // Nothing of this worker's there: the next pick that samples it
        // probes it.
        let e = [
            est(2.0, None, Some(10.0)),
            est(4.0, None, Some(10.0)),
            stale(0.0),
        ];
        assert_eq!(shares(&e, 3, 1.0), vec![0, 0, 3000]);
        // The probe out: assumed at the median (4 + 1 with a request
        // added) with the median latency; a loses nothing to it.
        let e = [e[0], e[1], stale(1.0)];
        assert_eq!(shares(&e, 3, 1.0), vec![3000, 0, 0]);
        // The probe ended without a report (a refused connection) less
        // than `max_age` ago: typical again, no new probe yet.
        let e = [
            e[0],
            e[1],
            Estimate {
                probe: false,
                ..stale(0.0)
            },
        ];
        assert_eq!(shares(&e, 3, 1.0), vec![3000, 0, 0]);
        // Still picked when sampled only with hotter ones.
        let got = shares(&e, 2, 1.0);
        assert!(got[2] > 0 && got[0] > got[2], "{got:?}");
        // Its last answer failed (a refused connection): no candidate until
        // its next probe, however it is sampled. On the old rule it counted
        // as typical and took a share of connect failures.
        let e = [
            e[0],
            e[1],
            Estimate {
                probe: false,
                failing: true,
                ..stale(0.0)
            },
        ];
        assert_eq!(shares(&e, 2, 1.0)[2], 0);
        assert_eq!(shares(&e, 3, 1.0)[2], 0);
    }

    #[test]
    fn a_slot_given_to_another_endpoint_starts_over() {
        let max_age = 1_000_000_000;
        let mut live = Live::new(2, max_age);
        assert!(live.adopt(1, 0xA), "first owner");
        assert!(!live.adopt(1, 0xA), "same owner: kept");
        live.start(1, 10);
        live.report(1, Some(9.0), 0.9, 20);
        live.answered(1, true);
        assert!(live.owns(1, 0xA));
        assert_eq!(live.estimate(1, 30).rif, 9.0);
        // Endpoint A removed, B added in its slot: B inherits nothing.
        assert!(live.adopt(1, 0xB));
        assert!(!live.owns(1, 0xA) && live.owns(1, 0xB));
        let e = live.estimate(1, 30);
        assert_eq!((e.rif, e.reported, e.failing), (0.0, false, false));
        assert!(e.probe && !e.reports_in_flight);
    }

    #[test]
    fn a_failed_answer_without_a_report_marks_the_endpoint_failing() {
        let max_age = 1_000_000_000;
        let mut live = Live::new(1, max_age);
        live.start(0, 10);
        live.answered(0, true);
        live.finish(0);
        let e = live.estimate(0, 20);
        assert!(e.failing && !e.probe, "{e:?}");
        // A usable report outweighs the failure (it answered since).
        live.report(0, Some(1.0), 0.1, 30);
        assert!(!live.estimate(0, 40).failing);
        // A success clears it.
        live.answered(0, false);
        assert!(!live.estimate(0, 3 * max_age).failing);
    }

    #[test]
    fn a_probe_that_ends_without_a_report_waits_max_age_for_the_next() {
        let max_age = 1_000_000_000;
        let mut live = Live::new(1, max_age);
        assert!(live.estimate(0, 0).probe, "never heard from: probe");
        live.start(0, 10);
        assert!(!live.estimate(0, 20).probe, "the probe is out");
        // Refused at once, no report: a dead endpoint is probed once per
        // `max_age`, not at the rate requests arrive.
        live.finish(0);
        assert!(!live.estimate(0, 30).probe);
        assert!(!live.estimate(0, 10 + max_age - 1).probe);
        assert!(live.estimate(0, 10 + max_age).probe);
        // A report makes it an endpoint like the others; aged out, and the
        // last probe long past, it may be probed again.
        live.report(0, Some(2.0), 0.5, 2 * max_age);
        assert!(!live.estimate(0, 2 * max_age + 1).probe);
        assert!(live.estimate(0, 3 * max_age + 1).probe);
        // Sent to while its report was fresh: not a probe.
        live.report(0, Some(2.0), 0.5, 4 * max_age);
        live.start(0, 4 * max_age + 1);
        live.finish(0);
        assert!(live.estimate(0, 5 * max_age + 2).probe);
    }

    #[test]
    fn a_stale_endpoint_next_to_overloaded_ones_is_probed_not_left_out() {
        // The antagonist scenario's trap: a and b queue (utilization 25),
        // c went unheard for `max_age`. Assumed typical (the upper median,
        // 25), c was as hot as the hottest, never picked, never heard from.
        let e = [
            est(100.0, Some(25.0), Some(500.0)),
            est(200.0, Some(25.0), Some(500.0)),
            stale(0.0),
        ];
        let got = shares(&e, 2, 0.8);
        assert_eq!(got, vec![0, 0, 3000]);
    }

    #[test]
    fn a_saturated_endpoint_is_hot_and_a_hot_sample_falls_back_to_the_level() {
        // Utilizations 17 and 18 (long queues) and 0.9: whichever pair is
        // sampled, the one with room gets every request.
        let e = [
            est(70.0, Some(18.0), Some(700.0)),
            est(34.0, Some(17.0), Some(700.0)),
            est(9.0, Some(0.9), Some(11.0)),
        ];
        assert_eq!(shares(&e, 2, 0.8), vec![0, 0, 3000]);
    }

    #[test]
    fn observed_failures_make_an_idle_reporter_hot() {
        let e = [est(0.0, None, Some(1.0)), est(4.0, None, Some(10.0))];
        let mut rng = Rng::new(3);
        let picked = choose(&e, &[Some(0.2), None], 2, 0.0, &mut rng);
        assert_eq!(picked, Some(1));
    }

    #[test]
    fn a_report_without_a_count_clears_the_switch_but_keeps_the_last_count() {
        let mut live = Live::new(2, 1_000_000_000);
        assert!(!live.estimate(0, 0).reports_in_flight, "no report yet");
        live.report(0, Some(4.0), 0.5, 10);
        assert!(live.estimate(0, 20).reports_in_flight);
        live.report(0, None, 0.9, 30);
        let e = live.estimate(0, 40);
        assert!(!e.reports_in_flight);
        assert_eq!(e.rif, 4.0, "the last count still stands for prequal");
        live.report(0, Some(f64::NAN), 0.9, 50);
        assert!(
            !live.estimate(0, 60).reports_in_flight,
            "an invalid count is none"
        );
        live.report(0, Some(1.0), 0.9, 70);
        assert!(live.estimate(0, 80).reports_in_flight);
    }

    #[test]
    fn reported_in_flight_is_moved_by_what_this_worker_did_since() {
        let mut live = Live::new(4, 1_000_000_000);
        live.start(1, 0);
        live.start(1, 0);
        // The backend counts 10, our 2 included.
        live.report(1, Some(10.0), 0.5, 100);
        assert_eq!(live.estimate(1, 200).rif, 10.0);
        live.start(1, 0);
        live.finish(1);
        live.finish(1);
        assert_eq!(live.estimate(1, 200).rif, 9.0);
        // Capacity 10 / 0.5 = 20: one request less is 0.05 less.
        assert_eq!(live.estimate(1, 200).load, Some(0.45));
        // Aged out: requests out do not keep it (a dead endpoint's failing
        // requests would, for ever, and its idle report would draw more);
        // this worker's own count is what is known.
        let aged = live.estimate(1, 2_000_000_000);
        assert!(!aged.reported && aged.rif == 1.0, "{aged:?}");
        assert!(!aged.probe, "a request of this worker is out");
        live.finish(1);
        let gone = live.estimate(1, 2_000_000_001);
        assert!(
            !gone.reported && gone.rif == 0.0 && gone.load.is_none(),
            "{gone:?}"
        );
        // Never below this worker's own count.
        live.report(1, Some(0.0), 0.0, 300);
        live.start(1, 0);
        live.start(1, 0);
        assert_eq!(live.estimate(1, 400).rif, 2.0);
    }

    #[test]
    fn latency_is_averaged_and_forgotten_when_old() {
        let mut live = Live::new(2, 1_000);
        assert_eq!(live.estimate(0, 0).latency_ns, None);
        live.latency(0, 100, 10);
        live.latency(0, 200, 20);
        assert_eq!(live.estimate(0, 30).latency_ns, Some(120.0));
        assert_eq!(live.estimate(0, 5_000).latency_ns, None);
        // After forgetting, the next sample starts afresh.
        live.latency(0, 50, 5_000);
        assert_eq!(live.estimate(0, 5_001).latency_ns, Some(50.0));
        // Out-of-range slots are ignored, not a panic.
        live.latency(9, 1, 1);
        live.report(9, Some(1.0), 1.0, 1);
        assert_eq!(live.estimate(9, 1).rif, f64::MAX);
    }

    #[test]
    fn quantiles_interpolate() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[1.0, 2.0], 0.25), 1.25);
        assert_eq!(quantile(&[5.0], 0.9), 5.0);
    }
}
