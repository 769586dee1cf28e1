//! Per-VM state shared by the root context and every stream, and the
//! shared-data keys behind it.
//!
//! Keys live under `switchyard/load-balancer/<plugin>/<config hash>/`, so two
//! plugins (or a reloaded configuration) never read each other's tables:
//! `table`, `lease`, `load/<slot>` and `health/<slot>` with `slot <
//! max_endpoints`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use switchyard_sdk::codec::{Codec, Postcard};
use switchyard_sdk::host;
use switchyard_sdk::lease::Lease;
use switchyard_sdk::shared::{SharedValue, Update};

use crate::config::Config;
use crate::health::{self, HealthRecord, Step};
use crate::picker::{Picker, Rng};
use crate::stats::Stats;
use crate::table::{self, LoadRecord, Table};

pub struct Shared {
    pub config: Config,
    pub prefix: String,
    pub table: SharedValue<Postcard<Table>>,
    pub lease: Lease,
    pub stats: Stats,
    pub local: RefCell<Local>,
}

/// What only this VM knows.
pub struct Local {
    pub picker: Option<Picker>,
    pub rng: Rng,
    /// EDF phase of this VM, so workers do not pick in lockstep.
    pub phase: f64,
    /// Requests this VM has in flight per endpoint slot (P2C).
    pub in_flight: Vec<u32>,
    /// Per slot: the last load record this VM wrote, to skip redundant writes.
    pub written: Vec<Option<LoadRecord>>,
}

impl Shared {
    pub fn new(config: Config, plugin: &str, config_hash: u64) -> Rc<Shared> {
        let prefix = format!("switchyard/load-balancer/{plugin}/{config_hash:016x}");
        let me = switchyard_sdk::vm::instance_id();
        let tick = Duration::from_millis(config.tick_ms());
        let ttl = (tick * 3).max(Duration::from_secs(1));
        let slots = config.max_endpoints as usize;
        // Golden-ratio spacing of VM phases.
        let phase = (me as f64 * 0.618_033_988_75).fract();
        Rc::new(Shared {
            table: SharedValue::new(format!("{prefix}/table")),
            lease: Lease::new(format!("{prefix}/lease"), ttl, me),
            stats: Stats::new(slots),
            local: RefCell::new(Local {
                picker: None,
                rng: Rng::new(me ^ host::now_nanos()),
                phase,
                in_flight: vec![0; slots],
                written: vec![None; slots],
            }),
            prefix,
            config,
        })
    }

    pub fn load_key(&self, slot: u16) -> String {
        format!("{}/load/{slot}", self.prefix)
    }

    pub fn health_key(&self, slot: u16) -> String {
        format!("{}/health/{slot}", self.prefix)
    }

    /// The current table; creates it from the static endpoints when no VM
    /// has yet. `None` only when shared data is unusable.
    pub fn current_table(&self) -> Option<Rc<Postcard<Table>>> {
        match self.table.get() {
            Ok(Some(t)) => Some(t),
            Ok(None) => {
                self.init_table();
                self.table.get().ok().flatten()
            }
            Err(e) => {
                log::warn!("load-balancer: reading the endpoint table: {e}");
                None
            }
        }
    }

    fn init_table(&self) {
        let (specs, dropped) =
            table::desired(&self.config, &[], self.config.max_endpoints as usize);
        if dropped > 0 {
            log::warn!("load-balancer: {dropped} endpoints over max_endpoints dropped");
        }
        let r = self.table.update(|cur| match cur {
            Some(_) => Update::Keep(()),
            None => Update::Write(Postcard(table::reconcile(&Table::default(), &specs)), ()),
        });
        if let Err(e) = r {
            log::warn!("load-balancer: creating the endpoint table: {e}");
        }
    }

    /// Stores a load report for the endpoint in `slot`. Writes at most a few
    /// times per weight-update period per VM (the leader samples once per
    /// period; more writes would only cost host calls).
    pub fn store_report(&self, slot: u16, record: LoadRecord) {
        let min_gap_ns = self
            .config
            .weighted_round_robin
            .weight_update_period_ms
            .saturating_mul(1_000_000)
            / 4;
        {
            let local = self.local.borrow();
            if let Some(Some(prev)) = local.written.get(usize::from(slot))
                && prev.fingerprint == record.fingerprint
                && record.at_ns.saturating_sub(prev.at_ns) < min_gap_ns
            {
                return;
            }
        }
        match host::set_shared_data(&self.load_key(slot), &record.encode(), 0) {
            Ok(_) => {
                if let Some(w) = self.local.borrow_mut().written.get_mut(usize::from(slot)) {
                    *w = Some(record);
                }
            }
            Err(e) => log::debug!("load-balancer: storing a load report: {e}"),
        }
    }

    /// Reads the load records of `slots` (the tick leader, once per
    /// period), indexed by slot.
    pub fn read_reports(&self, slots: &[u16]) -> Vec<Option<LoadRecord>> {
        let mut out = vec![None; self.config.max_endpoints as usize];
        for &slot in slots {
            let record = host::shared_data(&self.load_key(slot))
                .ok()
                .and_then(|(b, _)| b)
                .and_then(|b| LoadRecord::decode(&b));
            if let Some(o) = out.get_mut(usize::from(slot)) {
                *o = record;
            }
        }
        out
    }

    /// Records one outcome for an endpoint; ejects it (in the shared table)
    /// when its consecutive failures reach the threshold.
    pub fn record_outcome(&self, address: &str, slot: u16, fingerprint: u64, failed: bool) {
        let h = &self.config.passive_health;
        if !h.enabled {
            return;
        }
        let cell = SharedValue::<HealthRecord>::new(self.health_key(slot));
        let eject = cell.update(|cur| {
            match health::step(cur.copied(), fingerprint, failed, h.consecutive_failures) {
                Step::Keep => Update::Keep(false),
                Step::Write(r) => Update::Write(r, false),
                Step::Eject(r) => Update::Write(r, true),
            }
        });
        match eject {
            Ok(true) => self.eject(address),
            Ok(false) => {}
            Err(e) => log::debug!("load-balancer: health record of {address}: {e}"),
        }
    }

    fn eject(&self, address: &str) {
        let h = &self.config.passive_health;
        let now = host::now_nanos();
        let base = h.base_ejection_ms.saturating_mul(1_000_000);
        let max = h.max_ejection_ms.saturating_mul(1_000_000);
        let r = self.table.update(|cur| {
            let Some(cur) = cur else {
                return Update::Keep(None);
            };
            let mut next = cur.0.clone();
            match table::eject(&mut next, address, now, base, max, h.max_ejected_percent) {
                Some(until) => {
                    next.version += 1;
                    Update::Write(Postcard(next), Some(until))
                }
                None => Update::Keep(None),
            }
        });
        match r {
            Ok(Some(until)) => {
                self.stats.ejections.inc();
                log::info!(
                    "load-balancer: ejected {address} for {} ms",
                    until.saturating_sub(now) / 1_000_000
                );
            }
            Ok(None) => {
                log::debug!("load-balancer: {address} not ejected (already, or at the cap)")
            }
            Err(e) => log::warn!("load-balancer: ejecting {address}: {e}"),
        }
    }
}
