//! The endpoint table every worker reads and the records behind it.
//!
//! One shared-data key holds the [`Table`]: endpoints with their configured
//! attributes, the weights the weight job last computed, and ejections.
//! Workers read only its small version key per request and fetch and decode
//! the table after a change (see `store`). Per endpoint there is one load-report key
//! and one health key, addressed by the endpoint's `slot` (`0..max_endpoints`):
//! the key space is bounded however often discovery changes the set.

use serde::{Deserialize, Serialize};
use switchyard_sdk::codec::{Codec, fnv1a64};

use crate::config::{Config, EndpointConfig, State};
use crate::discovery::Discovered;
use crate::priority;
use crate::weights::{self, Periods, WeightState};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// Bumped by every write.
    pub version: u64,
    pub endpoints: Vec<Entry>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub address: String,
    /// Metric-safe name.
    pub name: String,
    /// Index of this endpoint's load and health keys.
    pub slot: u16,
    /// Configured (or discovered) weight.
    pub weight: u32,
    pub priority: u8,
    pub draining: bool,
    pub zone: String,
    /// The A58 state machine (only the weight job changes it).
    pub ws: WeightState,
    /// Weight after median fill and clamping; 0 when the level has no
    /// report-based weights (configured weights apply then).
    pub dyn_weight: f64,
    /// Utilization from the latest report (P2C).
    pub utilization: f64,
    /// Ejected until this host time (0 = not ejected).
    pub ejected_until_ns: u64,
    /// Ejections so far (the next one lasts longer).
    pub ejections: u32,
    pub last_ejected_ns: u64,
}

impl Entry {
    pub fn fingerprint(&self) -> u64 {
        fnv1a64(self.address.as_bytes())
    }

    pub fn ejected(&self, now_ns: u64) -> bool {
        self.ejected_until_ns > now_ns
    }
}

/// A metric-safe default name for an address: `10.0.0.1:80` → `10_0_0_1_80`.
pub fn default_name(address: &str) -> String {
    let mut s: String = address
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(64);
    s
}

/// One endpoint as the configuration or discovery describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub address: String,
    pub name: String,
    pub weight: u32,
    pub priority: u8,
    pub draining: bool,
    pub zone: String,
}

impl From<&EndpointConfig> for Spec {
    fn from(e: &EndpointConfig) -> Self {
        Spec {
            address: e.address.clone(),
            name: e.name.clone().unwrap_or_else(|| default_name(&e.address)),
            weight: e.weight,
            priority: u8::try_from(e.priority).unwrap_or(u8::MAX),
            draining: e.state == State::Draining,
            zone: e.zone.clone().unwrap_or_default(),
        }
    }
}

impl From<&Discovered> for Spec {
    fn from(d: &Discovered) -> Self {
        Spec {
            address: d.address.clone(),
            name: d.name.clone().unwrap_or_else(|| default_name(&d.address)),
            weight: d.weight,
            priority: d.priority,
            draining: d.draining,
            zone: d.zone.clone().unwrap_or_default(),
        }
    }
}

/// Static endpoints overlaid by discovered ones (same address: discovery
/// wins), in that order, at most `max` (the rest are dropped; the count of
/// dropped is returned).
pub fn desired(config: &Config, discovered: &[Discovered], max: usize) -> (Vec<Spec>, usize) {
    let mut out: Vec<Spec> = config.endpoints.iter().map(Spec::from).collect();
    for d in discovered {
        let spec = Spec::from(d);
        match out.iter_mut().find(|s| s.address == spec.address) {
            Some(s) => *s = spec,
            None => out.push(spec),
        }
    }
    let dropped = out.len().saturating_sub(max);
    out.truncate(max);
    (out, dropped)
}

/// The next table for `specs`: endpoints already present keep their slot,
/// weight history and ejection state; new ones take the lowest free slots.
pub fn reconcile(old: &Table, specs: &[Spec]) -> Table {
    let mut used: Vec<u16> = Vec::new();
    let mut endpoints: Vec<Entry> = Vec::with_capacity(specs.len());
    let mut fresh: Vec<usize> = Vec::new();
    for spec in specs {
        let entry = match old.endpoints.iter().find(|e| e.address == spec.address) {
            Some(e) => {
                used.push(e.slot);
                Entry {
                    name: spec.name.clone(),
                    weight: spec.weight,
                    priority: spec.priority,
                    draining: spec.draining,
                    zone: spec.zone.clone(),
                    ..e.clone()
                }
            }
            None => {
                fresh.push(endpoints.len());
                Entry {
                    address: spec.address.clone(),
                    name: spec.name.clone(),
                    weight: spec.weight,
                    priority: spec.priority,
                    draining: spec.draining,
                    zone: spec.zone.clone(),
                    ..Entry::default()
                }
            }
        };
        endpoints.push(entry);
    }
    let mut next_free = 0u16;
    for i in fresh {
        while used.contains(&next_free) {
            next_free += 1;
        }
        endpoints[i].slot = next_free;
        used.push(next_free);
    }
    Table {
        version: old.version + 1,
        endpoints,
    }
}

/// A load report as stored per endpoint slot: what A58 and P2C need.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadRecord {
    pub fingerprint: u64,
    pub at_ns: u64,
    pub qps: f64,
    pub eps: f64,
    pub utilization: f64,
}

impl Codec for LoadRecord {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(&self.fingerprint.to_le_bytes());
        v.extend_from_slice(&self.at_ns.to_le_bytes());
        v.extend_from_slice(&self.qps.to_le_bytes());
        v.extend_from_slice(&self.eps.to_le_bytes());
        v.extend_from_slice(&self.utilization.to_le_bytes());
        v
    }
    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 40 {
            return None;
        }
        let r = LoadRecord {
            fingerprint: u64::decode(&b[0..8])?,
            at_ns: u64::decode(&b[8..16])?,
            qps: f64::decode(&b[16..24])?,
            eps: f64::decode(&b[24..32])?,
            utilization: f64::decode(&b[32..40])?,
        };
        // Another writer's garbage must not poison the weights.
        let ok = [r.qps, r.eps, r.utilization]
            .iter()
            .all(|v| v.is_finite() && *v >= 0.0);
        ok.then_some(r)
    }
}

/// Parameters of a weight update.
#[derive(Debug, Clone, Copy)]
pub struct WeightParams {
    pub periods: Periods,
    pub penalty: f64,
    pub min_ratio: f64,
    pub max_ratio: f64,
}

impl WeightParams {
    pub fn from_config(c: &Config) -> Self {
        let w = &c.weighted_round_robin;
        WeightParams {
            periods: Periods {
                blackout_ns: w.blackout_period_ms.saturating_mul(1_000_000),
                expiration_ns: w.weight_expiration_period_ms.saturating_mul(1_000_000),
            },
            penalty: w.error_utilization_penalty,
            min_ratio: w.min_weight_ratio,
            max_ratio: w.max_weight_ratio,
        }
    }
}

/// What a weight update changed, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// Weights that expired this round (no report for the expiration period).
    pub stale: u32,
    /// Ejections that ended this round.
    pub unejected: u32,
}

/// Folds the latest per-slot reports into the weights and ends expired
/// ejections. `reports[slot]` is the record read from that slot's key.
pub fn apply_reports(
    table: &mut Table,
    reports: &[Option<LoadRecord>],
    now_ns: u64,
    p: WeightParams,
) -> UpdateStats {
    let mut stats = UpdateStats::default();
    let mut effective = vec![0.0; table.endpoints.len()];
    for (i, e) in table.endpoints.iter_mut().enumerate() {
        let fp = e.fingerprint();
        if let Some(Some(r)) = reports.get(usize::from(e.slot))
            && r.fingerprint == fp
        {
            if r.at_ns > e.ws.last_update_ns {
                let w = weights::report_weight(r.qps, r.eps, r.utilization, p.penalty);
                e.ws.on_report(w, r.at_ns);
            }
            if now_ns.saturating_sub(r.at_ns) < p.periods.expiration_ns {
                e.utilization = r.utilization;
            } else {
                e.utilization = 0.0;
            }
        }
        let (w, expired) = e.ws.effective(now_ns, p.periods);
        if expired {
            stats.stale += 1;
        }
        effective[i] = w;
        if e.ejected_until_ns != 0 && e.ejected_until_ns <= now_ns {
            e.ejected_until_ns = 0;
            stats.unejected += 1;
        }
    }
    // Median fill and clamping per priority level (each level is balanced
    // on its own, as in Envoy).
    let mut levels: Vec<u8> = table.endpoints.iter().map(|e| e.priority).collect();
    levels.sort_unstable();
    levels.dedup();
    for level in levels {
        let idx: Vec<usize> = (0..table.endpoints.len())
            .filter(|&i| table.endpoints[i].priority == level && !table.endpoints[i].draining)
            .collect();
        let mut w: Vec<f64> = idx.iter().map(|&i| effective[i]).collect();
        let any = weights::fill_and_clamp(&mut w, p.min_ratio, p.max_ratio);
        for (k, &i) in idx.iter().enumerate() {
            table.endpoints[i].dyn_weight = if any { w[k] } else { 0.0 };
        }
    }
    for e in table.endpoints.iter_mut().filter(|e| e.draining) {
        e.dyn_weight = 0.0;
    }
    stats
}

/// Marks endpoint `address` ejected when the share of ejected endpoints
/// allows it. Returns the ejection's end, or `None` when not ejected (gone,
/// already ejected, or the cap is reached).
pub fn eject(
    table: &mut Table,
    address: &str,
    now_ns: u64,
    base_ns: u64,
    max_ns: u64,
    max_percent: u32,
) -> Option<u64> {
    let total = table.endpoints.iter().filter(|e| !e.draining).count();
    let ejected = table
        .endpoints
        .iter()
        .filter(|e| !e.draining && e.ejected(now_ns))
        .count();
    let e = table.endpoints.iter_mut().find(|e| e.address == address)?;
    if e.ejected(now_ns) || e.draining {
        return None;
    }
    if !crate::health::may_eject(total, ejected, max_percent) {
        return None;
    }
    // A long healthy stretch forgets earlier ejections.
    if e.last_ejected_ns != 0 && now_ns.saturating_sub(e.last_ejected_ns) > max_ns.saturating_mul(2)
    {
        e.ejections = 0;
    }
    e.ejections = e.ejections.saturating_add(1);
    let until = now_ns.saturating_add(crate::health::ejection_ns(base_ns, max_ns, e.ejections));
    e.ejected_until_ns = until;
    e.last_ejected_ns = now_ns;
    Some(until)
}

/// Per level: (priority, members that may take new requests at `now_ns`)
/// and the load share of each level in percent.
pub fn healthy_levels(
    table: &Table,
    now_ns: u64,
    overprovisioning: f64,
) -> (Vec<(u8, Vec<usize>)>, Vec<u32>) {
    let mut prios: Vec<u8> = table
        .endpoints
        .iter()
        .filter(|e| !e.draining)
        .map(|e| e.priority)
        .collect();
    prios.sort_unstable();
    prios.dedup();
    let mut levels = Vec::with_capacity(prios.len());
    let mut counts = Vec::with_capacity(prios.len());
    for p in prios {
        let all: Vec<usize> = (0..table.endpoints.len())
            .filter(|&i| table.endpoints[i].priority == p && !table.endpoints[i].draining)
            .collect();
        let healthy: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| !table.endpoints[i].ejected(now_ns))
            .collect();
        counts.push((healthy.len() as u32, all.len() as u32));
        levels.push((p, healthy));
    }
    let loads = priority::level_loads(&counts, overprovisioning);
    (levels, loads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::config::parse;

    const S: u64 = 1_000_000_000;

    fn spec(addr: &str, prio: u8) -> Spec {
        Spec {
            address: addr.into(),
            name: default_name(addr),
            weight: 1,
            priority: prio,
            draining: false,
            zone: String::new(),
        }
    }

    #[test]
    fn reconcile_keeps_slots_and_state() {
        let t0 = reconcile(
            &Table::default(),
            &[
                spec("10.0.0.1:80", 0),
                spec("10.0.0.2:80", 0),
                spec("10.0.0.3:80", 0),
            ],
        );
        assert_eq!(t0.version, 1);
        assert_eq!(
            t0.endpoints.iter().map(|e| e.slot).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        let mut t0 = t0;
        t0.endpoints[2].ejections = 4;
        // .2 leaves, .4 arrives: it reuses the free slot 1; .3 keeps slot 2.
        let t1 = reconcile(
            &t0,
            &[
                spec("10.0.0.1:80", 0),
                spec("10.0.0.3:80", 1),
                spec("10.0.0.4:80", 0),
            ],
        );
        let slots: Vec<(String, u16)> = t1
            .endpoints
            .iter()
            .map(|e| (e.address.clone(), e.slot))
            .collect();
        assert_eq!(
            slots,
            vec![
                ("10.0.0.1:80".into(), 0),
                ("10.0.0.3:80".into(), 2),
                ("10.0.0.4:80".into(), 1)
            ]
        );
        assert_eq!(t1.endpoints[1].ejections, 4);
        assert_eq!(t1.endpoints[1].priority, 1);
        assert_eq!(default_name("10.0.0.1:80"), "10_0_0_1_80");
    }

    #[test]
    fn desired_overlays_discovery() {
        let c: Config = parse(
            br#"{"endpoints":[{"address":"10.0.0.1:80","name":"one","weight":3},{"address":"10.0.0.2:80"}]}"#,
        )
        .unwrap();
        let d = vec![
            Discovered {
                address: "10.0.0.2:80".into(),
                draining: true,
                ..Discovered::default()
            },
            Discovered {
                address: "10.0.0.9:80".into(),
                ..Discovered::default()
            },
        ];
        let (specs, dropped) = desired(&c, &d, 64);
        assert_eq!(dropped, 0);
        assert_eq!(specs.len(), 3);
        assert_eq!((specs[0].name.as_str(), specs[0].weight), ("one", 3));
        assert!(specs[1].draining);
        assert_eq!(specs[2].address, "10.0.0.9:80");
        let (specs, dropped) = desired(&c, &d, 2);
        assert_eq!((specs.len(), dropped), (2, 1));
    }

    fn params(blackout_s: u64) -> WeightParams {
        WeightParams {
            periods: Periods {
                blackout_ns: blackout_s * S,
                expiration_ns: 180 * S,
            },
            penalty: 1.0,
            min_ratio: 0.01,
            max_ratio: 10.0,
        }
    }

    fn report(t: &Table, i: usize, util: f64, at: u64) -> Option<LoadRecord> {
        Some(LoadRecord {
            fingerprint: t.endpoints[i].fingerprint(),
            at_ns: at,
            qps: 100.0,
            eps: 0.0,
            utilization: util,
        })
    }

    #[test]
    fn weights_1_2_4_after_blackout() {
        let mut t = reconcile(
            &Table::default(),
            &[
                spec("10.0.0.1:80", 0),
                spec("10.0.0.2:80", 0),
                spec("10.0.0.3:80", 0),
            ],
        );
        let reports = |t: &Table, at| {
            vec![
                report(t, 0, 0.8, at),
                report(t, 1, 0.4, at),
                report(t, 2, 0.2, at),
            ]
        };
        let r = reports(&t, S);
        apply_reports(&mut t, &r, S, params(2));
        assert!(t.endpoints.iter().all(|e| e.dyn_weight == 0.0), "blackout");
        let r = reports(&t, 3 * S);
        apply_reports(&mut t, &r, 3 * S + 1, params(2));
        let w: Vec<f64> = t.endpoints.iter().map(|e| e.dyn_weight).collect();
        assert_eq!(w, vec![125.0, 250.0, 500.0]);
        assert_eq!(t.endpoints[2].utilization, 0.2);
        // A report from a previous owner of the slot does not count.
        let mut foreign = reports(&t, 4 * S);
        if let Some(Some(r)) = foreign.get_mut(0) {
            r.fingerprint ^= 1;
            r.utilization = 0.01;
        }
        apply_reports(&mut t, &foreign, 4 * S, params(2));
        assert_eq!(t.endpoints[0].dyn_weight, 125.0);
    }

    #[test]
    fn stale_reports_expire_and_missing_get_the_median() {
        let mut t = reconcile(
            &Table::default(),
            &[
                spec("10.0.0.1:80", 0),
                spec("10.0.0.2:80", 0),
                spec("10.0.0.3:80", 0),
            ],
        );
        let r = vec![report(&t, 0, 0.5, S), report(&t, 1, 0.25, S), None];
        let stats = apply_reports(&mut t, &r, S, params(0));
        assert_eq!(stats.stale, 0);
        let w: Vec<f64> = t.endpoints.iter().map(|e| e.dyn_weight).collect();
        // The missing one gets the (lower) median of 200 and 400.
        assert_eq!(w, vec![200.0, 400.0, 200.0]);
        let stats = apply_reports(&mut t, &r, 200 * S, params(0));
        assert_eq!(stats.stale, 2);
        assert!(t.endpoints.iter().all(|e| e.dyn_weight == 0.0));
    }

    #[test]
    fn ejection_cap_growth_and_expiry() {
        let mut t = reconcile(
            &Table::default(),
            &[
                spec("a:1", 0),
                spec("b:1", 0),
                spec("c:1", 0),
                spec("d:1", 0),
            ],
        );
        assert_eq!(eject(&mut t, "a:1", S, S, 10 * S, 50), Some(2 * S));
        assert_eq!(eject(&mut t, "a:1", S, S, 10 * S, 50), None, "already");
        assert_eq!(eject(&mut t, "b:1", S, S, 10 * S, 50), Some(2 * S));
        assert_eq!(
            eject(&mut t, "c:1", S, S, 10 * S, 50),
            None,
            "cap: 3 of 4 > 50%"
        );
        let (levels, loads) = healthy_levels(&t, S, 1.4);
        assert_eq!(levels[0].1, vec![2, 3]);
        assert_eq!(loads, vec![100]);
        let stats = apply_reports(&mut t, &[], 3 * S, params(0));
        assert_eq!(stats.unejected, 2);
        // Second ejection of a lasts twice as long.
        assert_eq!(eject(&mut t, "a:1", 4 * S, S, 10 * S, 50), Some(6 * S));
        assert_eq!(eject(&mut t, "zz:1", 4 * S, S, 10 * S, 50), None);
    }

    #[test]
    fn draining_is_never_healthy_and_levels_fail_over() {
        let mut t = reconcile(
            &Table::default(),
            &[spec("a:1", 0), spec("b:1", 0), spec("c:1", 1)],
        );
        t.endpoints[0].draining = true;
        let (levels, loads) = healthy_levels(&t, 0, 1.4);
        assert_eq!(levels, vec![(0, vec![1]), (1, vec![2])]);
        assert_eq!(loads, vec![100, 0]);
        t.endpoints[1].ejected_until_ns = 10;
        let (_, loads) = healthy_levels(&t, 0, 1.4);
        assert_eq!(loads, vec![0, 100]);
    }

    #[test]
    fn load_record_codec_rejects_garbage() {
        let r = LoadRecord {
            fingerprint: 7,
            at_ns: 9,
            qps: 1.5,
            eps: 0.0,
            utilization: 0.25,
        };
        assert_eq!(LoadRecord::decode(&r.encode()), Some(r));
        let mut bad = r;
        bad.qps = f64::NAN;
        assert_eq!(LoadRecord::decode(&bad.encode()), None);
        assert_eq!(LoadRecord::decode(&[0; 39]), None);
    }
}
