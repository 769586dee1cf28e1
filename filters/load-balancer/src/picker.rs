//! Per-worker picking state, rebuilt when the shared table changes.
//!
//! A pick first chooses a priority level by the levels' load shares (see
//! [`crate::priority`]), then an endpoint within the level by the policy.
//! When no level has a healthy endpoint the picker is in panic mode and
//! spreads over every non-draining endpoint, ejected or not (Envoy does the
//! same rather than fail everything).

use crate::config::{Config, Policy};
use crate::maglev::{self, Maglev};
use crate::observed::{self, Observed};
use crate::prequal::{self, Estimate};
use crate::table::{self, Table};
use crate::weights::Edf;

/// What the picker may ask about an endpoint (a table index) at a pick:
/// the adaptive policies' inputs.
pub trait Signals {
    /// Reported utilization as stored in the table.
    fn utilization(&self, i: usize) -> f64;
    /// Requests this worker has in flight there.
    fn in_flight(&self, i: usize) -> u32;
    /// The `prequal` policy's estimates.
    fn estimate(&self, i: usize) -> Estimate;
}

/// The endpoints chosen for one request: indices into the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    pub first: usize,
    /// Distinct other endpoints for Envoy's retries, best first.
    pub retries: Vec<usize>,
}

struct Level {
    priority: u8,
    members: Vec<usize>,
    edf: Edf,
    /// Configured weights of `members`, for random and P2C.
    weights: Vec<u32>,
    /// Relative success of members penalised for observed failures
    /// ([`crate::observed`]), for P2C and Prequal.
    penalties: Vec<Option<f64>>,
    /// Built lazily for consistent hashing, keyed by the member set.
    maglev: Option<(Vec<(String, u32)>, Maglev)>,
}

/// A small, fast PRNG (xorshift64*): picks need spread, not secrecy.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(maglev::mix(seed) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Picker {
    /// Table version this was built from.
    pub version: u64,
    /// Endpoint count of that table (a cheap guard besides the version).
    pub endpoints: usize,
    /// [`crate::observed::Observed::generation`] this was built with.
    pub observed_generation: u64,
    levels: Vec<Level>,
    loads: Vec<u32>,
    level_edf: Edf,
    pub panic: bool,
    policy: Policy,
    retry_hosts: usize,
    in_flight_cost: f64,
    prequal: (usize, f64),
    table_size: u32,
    rotate: usize,
}

impl Picker {
    /// Builds the picker for `table` at `now_ns`. `previous` lends its
    /// Maglev tables when a level's member set did not change (they are the
    /// expensive part). `observed` is this worker's view of the endpoints'
    /// answers; its failures override self-reported load (see
    /// [`crate::observed`]).
    pub fn build(
        table: &Table,
        config: &Config,
        now_ns: u64,
        seed: u64,
        previous: Option<Picker>,
        observed: &Observed,
    ) -> Picker {
        let rate = &config.passive_health.success_rate;
        let (mut levels, mut loads) =
            table::healthy_levels(table, now_ns, config.overprovisioning_factor);
        let panic = loads.iter().all(|l| *l == 0);
        if panic {
            // Everyone who is not draining, in one level.
            let all: Vec<usize> = (0..table.endpoints.len())
                .filter(|&i| !table.endpoints[i].draining)
                .collect();
            levels = vec![(0, all)];
            loads = vec![100];
        }
        let previous = previous.map(|p| (p.levels, p.level_edf));
        let (old_levels, old_level_edf) = match previous {
            Some((l, e)) => (l, Some(e)),
            None => (Vec::new(), None),
        };
        let mut old_maglevs: Vec<(Vec<(String, u32)>, Maglev)> = Vec::new();
        let mut old_edfs: Vec<(u8, Edf)> = Vec::new();
        for l in old_levels {
            old_edfs.push((l.priority, l.edf));
            if let Some(m) = l.maglev {
                old_maglevs.push(m);
            }
        }
        let use_dynamic = config.policy.uses_report_weights();
        // invariant: every member index below came from `table` itself.
        let priorities: Vec<u8> = levels.iter().map(|(p, _)| *p).collect();
        let built = levels
            .into_iter()
            .map(|(priority, members)| {
                let weights: Vec<u32> =
                    members.iter().map(|&i| table.endpoints[i].weight).collect();
                let any_dynamic =
                    use_dynamic && members.iter().any(|&i| table.endpoints[i].dyn_weight > 0.0);
                let answers: Vec<observed::Answers> = members
                    .iter()
                    .map(|&i| observed.answers(table.endpoints[i].slot, now_ns))
                    .collect();
                let penalties = observed::penalties(&answers, rate.request_volume, rate.margin);
                let mut level_weights: Vec<f64> = members
                    .iter()
                    .zip(&weights)
                    .map(|(&i, &w)| {
                        if any_dynamic {
                            table.endpoints[i].dyn_weight
                        } else {
                            f64::from(w)
                        }
                    })
                    .collect();
                observed::penalise_weights(&mut level_weights, &penalties);
                // The carry key: the endpoint's address fingerprint (its
                // slot may go to another endpoint once it is removed).
                let edf_weights = members
                    .iter()
                    .zip(&level_weights)
                    .map(|(&i, &w)| (i, table.endpoints[i].fingerprint(), w));
                let prev_edf = old_edfs
                    .iter()
                    .find(|(p, _)| *p == priority)
                    .map(|(_, e)| e);
                let edf = Edf::carrying(edf_weights, seed, prev_edf);
                let maglev = if config.policy == Policy::ConsistentHash {
                    let key: Vec<(String, u32)> = members
                        .iter()
                        .map(|&i| {
                            (
                                table.endpoints[i].address.clone(),
                                table.endpoints[i].weight,
                            )
                        })
                        .collect();
                    match old_maglevs.iter().position(|(k, _)| *k == key) {
                        Some(p) => Some(old_maglevs.swap_remove(p)),
                        None => {
                            let named: Vec<(&str, u32)> =
                                key.iter().map(|(a, w)| (a.as_str(), *w)).collect();
                            Maglev::build(&named, config.hash.table_size).map(|m| (key, m))
                        }
                    }
                } else {
                    None
                };
                Level {
                    priority,
                    members,
                    edf,
                    weights,
                    penalties,
                    maglev,
                }
            })
            .collect();
        let level_edf = Edf::carrying(
            loads
                .iter()
                .zip(&priorities)
                .enumerate()
                .map(|(i, (l, p))| (i, u64::from(*p), f64::from(*l))),
            seed,
            old_level_edf.as_ref(),
        );
        Picker {
            version: table.version,
            endpoints: table.endpoints.len(),
            observed_generation: observed.generation,
            levels: built,
            loads,
            level_edf,
            panic,
            policy: config.policy,
            retry_hosts: config.retry_hosts as usize,
            in_flight_cost: config.p2c.in_flight_cost,
            prequal: (config.prequal.choices as usize, config.prequal.hot_quantile),
            table_size: config.hash.table_size,
            rotate: 0,
        }
    }

    /// Chooses endpoints. `key` is the stickiness hash (consistent hashing);
    /// `signals` feed P2C and Prequal. `retries`: whether to add retry
    /// hosts (endpoint mode only).
    pub fn pick(
        &mut self,
        key: Option<u64>,
        rng: &mut Rng,
        signals: &dyn Signals,
        retries: bool,
    ) -> Option<Pick> {
        let level = match (self.policy, key) {
            (Policy::ConsistentHash, Some(h)) => crate::priority::level_for(
                &self.loads,
                (maglev::mix(h ^ 0x5bd1_e995) % 100) as u32,
            )?,
            _ => self.level_edf.pick()?,
        };
        let first = {
            let l = self.levels.get_mut(level)?;
            if l.members.is_empty() {
                return None;
            }
            match (self.policy, key) {
                (Policy::ConsistentHash, Some(h)) => match &l.maglev {
                    Some((_, m)) => *l.members.get(m.lookup(h))?,
                    None => l.edf.pick()?,
                },
                (Policy::Random, _) => weighted_random(&l.members, &l.weights, rng),
                (Policy::P2c, _) => p2c(l, rng, signals, self.in_flight_cost),
                // `auto`: A58's smooth order. While every member's latest
                // report carried an in-flight count, a pick whose endpoint
                // has no free slot, or no usable report with a utilization
                // to tell, goes by Prequal's rule; except that an endpoint
                // without a usable report where this worker has nothing in
                // flight keeps its turn, once per `max_age`: the request
                // probes it (an old report of a full endpoint would veto it
                // for good).
                (Policy::Auto, _) => {
                    let estimates: Vec<Estimate> =
                        l.members.iter().map(|&i| signals.estimate(i)).collect();
                    let first = l.edf.pick()?;
                    let k = l.members.iter().position(|&m| m == first)?;
                    let e = estimates.get(k)?;
                    // An endpoint whose last answer failed and that sent no
                    // usable report since, while others did, gives its turns
                    // away until its probe: a dead one that never reported
                    // to this worker (or not since it died) drew its whole
                    // share, every attempt a connect failure, with passive
                    // health off. (Without reports anywhere, A58's order.)
                    if e.failing && !e.probe && estimates.iter().any(|x| x.reported) {
                        by_prequal(l, &estimates, self.prequal, rng)?
                    } else if !estimates.iter().all(|e| e.reports_in_flight)
                        || e.probe
                        || (e.load.is_some() && !prequal::would_queue(e))
                    {
                        first
                    } else {
                        by_prequal(l, &estimates, self.prequal, rng)?
                    }
                }
                (Policy::Prequal, _) => {
                    let estimates: Vec<Estimate> =
                        l.members.iter().map(|&i| signals.estimate(i)).collect();
                    by_prequal(l, &estimates, self.prequal, rng)?
                }
                _ => l.edf.pick()?,
            }
        };
        let retries = if retries {
            self.retry_list(level, first)
        } else {
            Vec::new()
        };
        Some(Pick { first, retries })
    }

    /// Other endpoints for retries: the same level first, then the others,
    /// rotating the start so retries spread too.
    fn retry_list(&mut self, level: usize, first: usize) -> Vec<usize> {
        if self.retry_hosts == 0 {
            return Vec::new();
        }
        self.rotate = self.rotate.wrapping_add(1);
        let mut out = Vec::with_capacity(self.retry_hosts);
        let order = std::iter::once(level).chain((0..self.levels.len()).filter(|&l| l != level));
        for l in order {
            let members = &self.levels[l].members;
            let n = members.len();
            for k in 0..n {
                let m = members[(self.rotate + k) % n];
                if m != first && !out.contains(&m) {
                    out.push(m);
                    if out.len() == self.retry_hosts {
                        return out;
                    }
                }
            }
        }
        out
    }

    /// The Maglev table size in use (for diagnostics).
    pub fn table_size(&self) -> u32 {
        self.table_size
    }
}

/// Prequal's pick among `l`'s members, whose estimates are `estimates`
/// (same order); `(choices, hot_quantile)` from the configuration.
fn by_prequal(
    l: &Level,
    estimates: &[Estimate],
    (choices, q): (usize, f64),
    rng: &mut Rng,
) -> Option<usize> {
    let k = prequal::choose(estimates, &l.penalties, choices, q, rng)?;
    l.members.get(k).copied()
}

// invariant (both): `members` is non-empty and as long as `weights`; the
// caller returns early on an empty level.
fn weighted_random(members: &[usize], weights: &[u32], rng: &mut Rng) -> usize {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return members[rng.below(members.len())];
    }
    let mut x = rng.next_u64() % total;
    for (m, w) in members.iter().zip(weights) {
        let w = u64::from(*w);
        if x < w {
            return *m;
        }
        x -= w;
    }
    members[members.len() - 1]
}

/// Two distinct random members; the lower `(utilization + in_flight × cost)
/// / weight` wins, ties at random.
fn p2c(l: &Level, rng: &mut Rng, signals: &dyn Signals, cost: f64) -> usize {
    let n = l.members.len();
    if n == 1 {
        return l.members[0];
    }
    let a = rng.below(n);
    let mut b = rng.below(n - 1);
    if b >= a {
        b += 1;
    }
    let score = |k: usize| {
        let i = l.members[k];
        let (mut util, in_flight) = (signals.utilization(i), signals.in_flight(i));
        let mut divisor = f64::from(l.weights[k].max(1));
        // Observed failures beat a self-reported idle load.
        if let Some(s) = l.penalties.get(k).copied().flatten() {
            util = util.max(1.0 - s);
            divisor *= s.max(1e-6);
        }
        (util + f64::from(in_flight) * cost) / divisor
    };
    let (sa, sb) = (score(a), score(b));
    let winner = if sa < sb {
        a
    } else if sb < sa {
        b
    } else if rng.next_u64() & 1 == 0 {
        a
    } else {
        b
    };
    l.members[winner]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Spec, default_name, reconcile};
    use switchyard_sdk::codec::fnv1a64;
    use switchyard_sdk::config::parse;

    fn table(specs: &[(&str, u8, u32)]) -> Table {
        let specs: Vec<Spec> = specs
            .iter()
            .map(|(a, p, w)| Spec {
                address: a.to_string(),
                name: default_name(a),
                weight: *w,
                priority: *p,
                draining: false,
                zone: String::new(),
            })
            .collect();
        reconcile(&Table::default(), &specs)
    }

    fn config(extra: &str) -> Config {
        let doc = format!(r#"{{"endpoints":[{{"address":"127.0.0.1:1"}}]{extra}}}"#);
        parse(doc.as_bytes()).unwrap()
    }

    /// Signals from a function of the table index: (utilization, in
    /// flight, estimate).
    struct Fixed<F: Fn(usize) -> (f64, u32, Estimate)>(F);

    impl<F: Fn(usize) -> (f64, u32, Estimate)> Signals for Fixed<F> {
        fn utilization(&self, i: usize) -> f64 {
            (self.0)(i).0
        }
        fn in_flight(&self, i: usize) -> u32 {
            (self.0)(i).1
        }
        fn estimate(&self, i: usize) -> Estimate {
            (self.0)(i).2
        }
    }

    const NONE: Estimate = Estimate {
        rif: 0.0,
        reported: false,
        reports_in_flight: false,
        load: None,
        step: 0.0,
        latency_ns: None,
        probe: false,
        failing: false,
    };

    type Inputs = fn(usize) -> (f64, u32, Estimate);

    /// A reported estimate: `rif` in flight, `ms` latency.
    fn est(rif: f64, ms: f64) -> Estimate {
        Estimate {
            rif,
            reported: true,
            reports_in_flight: true,
            load: None,
            step: 0.0,
            latency_ns: Some(ms * 1e6),
            probe: false,
            failing: false,
        }
    }

    /// A reported estimate with a utilization: `rif` in flight at `load`.
    fn util(rif: f64, load: f64) -> Estimate {
        Estimate {
            load: Some(load),
            step: load / rif,
            ..est(rif, 10.0)
        }
    }

    #[allow(non_upper_case_globals)]
    const no_inputs: Fixed<Inputs> = Fixed(|_| (0.0, 0, NONE));

    /// First picks of `n` requests over 3 endpoints with `inputs`.
    fn picks3<F: Fn(usize) -> (f64, u32, Estimate)>(
        p: &mut Picker,
        rng: &mut Rng,
        inputs: &Fixed<F>,
        n: usize,
    ) -> [usize; 3] {
        let mut got = [0; 3];
        for _ in 0..n {
            got[p.pick(None, rng, inputs, false).unwrap().first] += 1;
        }
        got
    }

    fn count(p: &mut Picker, n: usize, size: usize) -> Vec<usize> {
        let mut rng = Rng::new(1);
        let mut c = vec![0; size];
        for _ in 0..n {
            c[p.pick(None, &mut rng, &no_inputs, false).unwrap().first] += 1;
        }
        c
    }

    #[test]
    fn dynamic_weights_win_over_configured() {
        let mut t = table(&[("a:1", 0, 5), ("b:1", 0, 1), ("c:1", 0, 1)]);
        let c = config("");
        let mut p = Picker::build(&t, &c, 0, 0, None, &Observed::default());
        assert_eq!(
            count(&mut p, 700, 3),
            vec![500, 100, 100],
            "configured weights"
        );
        for (e, w) in t.endpoints.iter_mut().zip([125.0, 250.0, 500.0]) {
            e.dyn_weight = w;
        }
        let mut p = Picker::build(&t, &c, 0, 0, None, &Observed::default());
        assert_eq!(count(&mut p, 700, 3), vec![100, 200, 400]);
        // Plain round robin ignores report weights.
        let mut p = Picker::build(
            &t,
            &config(r#","policy":"round_robin""#),
            0,
            0,
            None,
            &Observed::default(),
        );
        assert_eq!(count(&mut p, 700, 3), vec![500, 100, 100]);
    }

    #[test]
    fn observed_failures_override_a_self_reported_idle_load() {
        // Issue 12, item 7: c reports itself idle (a huge A58 weight, an
        // utilization of 0.0001) and fails 2 of 3 requests.
        let mut t = table(&[("a:1", 0, 1), ("b:1", 0, 1), ("c:1", 0, 1)]);
        for (e, w) in t.endpoints.iter_mut().zip([200.0, 200.0, 2000.0]) {
            e.dyn_weight = w;
        }
        let mut seen = Observed::new(10_000_000_000);
        for i in 0..60u64 {
            seen.record(t.endpoints[0].slot, false, i);
            seen.record(t.endpoints[1].slot, false, i);
            seen.record(t.endpoints[2].slot, i % 3 != 0, i);
        }
        let c = config("");
        let mut p = Picker::build(&t, &c, 0, 0, None, &Observed::default());
        let before = count(&mut p, 1200, 3);
        assert!(before[2] > 900, "unobserved, the report wins: {before:?}");
        let mut p = Picker::build(&t, &c, 0, 0, None, &seen);
        let after = count(&mut p, 1400, 3);
        // Its weight: the typical 200 × its relative success 1/3.
        assert_eq!(after, vec![600, 600, 200]);
        // P2C: its reported 0.0001 no longer beats the others' 0.5.
        let c = config(r#","policy":"p2c""#);
        let mut p = Picker::build(&t, &c, 0, 0, None, &seen);
        let utilization = Fixed(|i: usize| (if i == 2 { 0.0001 } else { 0.5 }, 0, NONE));
        let mut rng = Rng::new(3);
        let mut got = [0; 3];
        for _ in 0..3000 {
            got[p.pick(None, &mut rng, &utilization, false).unwrap().first] += 1;
        }
        assert!(got[2] < 1000, "p2c liar share {got:?}");
        // Off: the report wins again.
        let c = config(r#","passive_health":{"success_rate":{"window_ms":0}}"#);
        assert_eq!(c.passive_health.success_rate.window_ms, 0);
    }

    #[test]
    fn failover_and_panic() {
        let mut t = table(&[("a:1", 0, 1), ("b:1", 0, 1), ("c:1", 1, 1)]);
        let c = config("");
        t.endpoints[0].ejected_until_ns = 100;
        // 1 of 2 healthy × 1.4 = 70% stays on level 0.
        let mut p = Picker::build(&t, &c, 0, 0, None, &Observed::default());
        assert_eq!(count(&mut p, 1000, 3), vec![0, 700, 300]);
        t.endpoints[1].draining = true;
        t.endpoints[2].ejected_until_ns = 100;
        let mut p = Picker::build(&t, &c, 0, 0, None, &Observed::default());
        assert!(p.panic);
        let got = count(&mut p, 100, 3);
        assert_eq!(got[1], 0, "draining never picked, even in panic: {got:?}");
        assert_eq!(got[0] + got[2], 100);
        // After the ejections end, back to normal.
        let mut p = Picker::build(&t, &c, 200, 0, None, &Observed::default());
        assert!(!p.panic);
        assert_eq!(count(&mut p, 100, 3), vec![100, 0, 0]);
    }

    #[test]
    fn retries_are_distinct_and_prefer_the_same_level() {
        let t = table(&[("a:1", 0, 1), ("b:1", 0, 1), ("c:1", 1, 1), ("d:1", 0, 1)]);
        let mut p = Picker::build(&t, &config(""), 0, 0, None, &Observed::default());
        let mut rng = Rng::new(3);
        for _ in 0..20 {
            let pick = p.pick(None, &mut rng, &no_inputs, true).unwrap();
            assert_eq!(pick.retries.len(), 2);
            assert!(!pick.retries.contains(&pick.first));
            assert_ne!(pick.retries[0], pick.retries[1]);
            assert!(pick.retries.iter().all(|&r| r != 2), "{pick:?}");
        }
        let t = table(&[("a:1", 0, 1)]);
        let mut p = Picker::build(&t, &config(""), 0, 0, None, &Observed::default());
        assert!(
            p.pick(None, &mut rng, &no_inputs, true)
                .unwrap()
                .retries
                .is_empty()
        );
    }

    #[test]
    fn sticky_keys_and_minimal_movement() {
        let c = config(r#","policy":"consistent_hash","hash":{"header":"x-user"}"#);
        let addrs = ["a:1", "b:1", "c:1", "d:1"];
        let t = table(&addrs.map(|a| (a, 0u8, 1u32)));
        let mut p = Picker::build(&t, &c, 0, 0, None, &Observed::default());
        let mut rng = Rng::new(9);
        let before: Vec<String> = (0..4000u32)
            .map(|k| {
                let h = fnv1a64(format!("user-{k}").as_bytes());
                let i = p.pick(Some(h), &mut rng, &no_inputs, false).unwrap().first;
                assert_eq!(
                    p.pick(Some(h), &mut rng, &no_inputs, false).unwrap().first,
                    i
                );
                t.endpoints[i].address.clone()
            })
            .collect();
        let mut t2 = t.clone();
        t2.endpoints[1].draining = true;
        t2.version += 1;
        let mut p2 = Picker::build(&t2, &c, 0, 0, Some(p), &Observed::default());
        let mut moved = 0;
        for (k, old) in before.iter().enumerate() {
            let h = fnv1a64(format!("user-{k}").as_bytes());
            let i = p2.pick(Some(h), &mut rng, &no_inputs, false).unwrap().first;
            if old != "b:1" && &t2.endpoints[i].address != old {
                moved += 1;
            }
            assert_ne!(t2.endpoints[i].address, "b:1");
        }
        assert!(moved < 80, "moved {moved} keys that b:1 did not own");
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let t = table(&[("a:1", 0, 1), ("b:1", 0, 1)]);
        let mut p = Picker::build(
            &t,
            &config(r#","policy":"p2c""#),
            0,
            0,
            None,
            &Observed::default(),
        );
        let mut rng = Rng::new(5);
        let inputs = Fixed(|i: usize| {
            if i == 0 {
                (0.9, 3, NONE)
            } else {
                (0.2, 0, NONE)
            }
        });
        for _ in 0..50 {
            assert_eq!(p.pick(None, &mut rng, &inputs, false).unwrap().first, 1);
        }
    }

    #[test]
    fn prequal_sends_nothing_to_the_hot_endpoint_and_the_rest_to_the_fastest_cold_one() {
        let t = table(&[("a:1", 0, 1), ("b:1", 0, 1), ("c:1", 0, 1)]);
        let mut p = Picker::build(
            &t,
            &config(r#","policy":"prequal","prequal":{"choices":3}"#),
            0,
            0,
            None,
            &Observed::default(),
        );
        let inputs = Fixed(move |i: usize| match i {
            0 => (0.0, 0, est(9.0, 1.0)),
            1 => (0.0, 0, est(2.0, 20.0)),
            _ => (0.0, 0, est(3.0, 10.0)),
        });
        let mut rng = Rng::new(5);
        for _ in 0..50 {
            assert_eq!(p.pick(None, &mut rng, &inputs, false).unwrap().first, 2);
        }
    }

    #[test]
    fn auto_gives_a_failing_unreported_endpoint_its_probes_only() {
        let t = table(&[("a:1", 0, 1), ("b:1", 0, 1), ("c:1", 0, 1)]);
        let mut p = Picker::build(&t, &config(""), 0, 0, None, &Observed::default());
        // c's last answer failed (a refused connection), it never reported
        // to this worker and its probe is spent; a and b report.
        let dead = Estimate {
            failing: true,
            ..NONE
        };
        let inputs = Fixed(move |i: usize| match i {
            0 => (0.0, 0, util(2.0, 0.25)),
            1 => (0.0, 0, util(2.0, 0.25)),
            _ => (0.0, 0, dead),
        });
        let mut rng = Rng::new(3);
        let got = picks3(&mut p, &mut rng, &inputs, 300);
        // On the old rule c kept its A58 turns: a third of the picks, each a
        // connect failure with passive health off.
        assert_eq!(got[2], 0, "{got:?}");
        // Its probe is due: it gets its turn.
        let probing = Fixed(move |i: usize| match i {
            0 => (0.0, 0, util(2.0, 0.25)),
            1 => (0.0, 0, util(2.0, 0.25)),
            _ => (
                0.0,
                0,
                Estimate {
                    probe: true,
                    ..dead
                },
            ),
        });
        let got = picks3(&mut p, &mut rng, &probing, 300);
        assert!(got[2] >= 90, "{got:?}");
        // No reports anywhere: A58's order, as before.
        let silent = Fixed(move |i: usize| match i {
            0 | 1 => (0.0, 0, NONE),
            _ => (0.0, 0, dead),
        });
        assert_eq!(picks3(&mut p, &mut rng, &silent, 300), [100, 100, 100]);
    }

    #[test]
    fn auto_keeps_a58_order_and_sends_nothing_to_a_full_endpoint() {
        let mut t = table(&[("a:1", 0, 1), ("b:1", 0, 1), ("c:1", 0, 1)]);
        for (e, w) in t.endpoints.iter_mut().zip([125.0, 250.0, 500.0]) {
            e.dyn_weight = w;
        }
        let c = config("");
        assert_eq!(c.policy, Policy::Auto);
        let mut p = Picker::build(&t, &c, 0, 0, None, &Observed::default());
        // No in-flight counts: the A58 weights decide.
        assert_eq!(count(&mut p, 700, 3), vec![100, 200, 400]);
        // Counts with room everywhere (4 + 1 of 8 slots, 8 + 1 of 16, ...):
        // still A58's order, exactly.
        let room = Fixed(move |i: usize| match i {
            0 => (0.0, 0, util(4.0, 0.5)),
            1 => (0.0, 0, util(8.0, 0.5)),
            _ => (0.0, 0, util(16.0, 0.5)),
        });
        let mut rng = Rng::new(5);
        let mut got = [0; 3];
        for _ in 0..700 {
            got[p.pick(None, &mut rng, &room, false).unwrap().first] += 1;
        }
        assert_eq!(got, [100, 200, 400]);
        // c is full (32 of 32): a and b keep their own turns, and c's go to
        // them by Prequal's rule (b, 8 of 16 slots, is colder than a, 6 of
        // 8, whenever the two are sampled together).
        let full = Fixed(move |i: usize| match i {
            0 => (0.0, 0, util(6.0, 0.75)),
            1 => (0.0, 0, util(8.0, 0.5)),
            _ => (0.0, 0, util(32.0, 1.0)),
        });
        let mut got = [0; 3];
        for _ in 0..700 {
            got[p.pick(None, &mut rng, &full, false).unwrap().first] += 1;
        }
        assert_eq!(got[2], 0, "{got:?}");
        assert!(got[0] >= 100 && got[1] - 200 > got[0] - 100, "{got:?}");
        // Counts without a utilization (no capacity, so no "full"):
        // Prequal's rule throughout; c is hot, b the faster cold one.
        let counts = Fixed(move |i: usize| match i {
            0 => (0.0, 0, est(3.0, 20.0)),
            1 => (0.0, 0, est(2.0, 10.0)),
            _ => (0.0, 0, est(9.0, 1.0)),
        });
        let mut got = [0; 3];
        for _ in 0..300 {
            got[p.pick(None, &mut rng, &counts, false).unwrap().first] += 1;
        }
        assert_eq!(got[2], 0, "{got:?}");
        assert!(got[1] > got[0], "{got:?}");
        // c went unheard for `max_age` (no usable report) and this worker
        // has nothing there, while a and b queue: c keeps its turns, each
        // a probe. On the old rule it got none, so it never reported again.
        let probe = Fixed(move |i: usize| match i {
            0 => (0.0, 0, util(100.0, 25.0)),
            1 => (0.0, 0, util(200.0, 25.0)),
            _ => (
                0.0,
                0,
                Estimate {
                    rif: 0.0,
                    reported: false,
                    load: None,
                    step: 0.0,
                    probe: true,
                    ..util(32.0, 1.0)
                },
            ),
        });
        let mut got = [0; 3];
        for _ in 0..700 {
            got[p.pick(None, &mut rng, &probe, false).unwrap().first] += 1;
        }
        assert!(got[2] >= 400, "{got:?}");
    }

    #[test]
    fn random_follows_configured_weights() {
        let t = table(&[("a:1", 0, 1), ("b:1", 0, 3)]);
        let mut p = Picker::build(
            &t,
            &config(r#","policy":"random""#),
            0,
            0,
            None,
            &Observed::default(),
        );
        let got = count(&mut p, 8000, 2);
        assert!((1700..2300).contains(&got[0]), "{got:?}");
    }

    #[test]
    fn nothing_to_pick() {
        let mut t = table(&[("a:1", 0, 1)]);
        t.endpoints[0].draining = true;
        let mut p = Picker::build(&t, &config(""), 0, 0, None, &Observed::default());
        assert_eq!(p.pick(None, &mut Rng::new(1), &no_inputs, true), None);
        let mut p = Picker::build(
            &Table::default(),
            &config(""),
            0,
            0,
            None,
            &Observed::default(),
        );
        assert_eq!(p.pick(None, &mut Rng::new(1), &no_inputs, true), None);
    }
}
