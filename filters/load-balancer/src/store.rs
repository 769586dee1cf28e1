//! What the VMs of one Envoy process share, and how a VM reads and writes it.
//!
//! Keys live under `switchyard/load-balancer/<plugin>/<config hash>/`, so two
//! plugins (or a reloaded configuration) never read each other's data:
//! - `table`: the endpoint [`Table`] (postcard), changed only with CAS;
//! - `table_version`: the version of the last table written (8 bytes, u64
//!   little-endian), written by whoever wrote the table, right after it.
//!   Requests read only this key and fetch the table when it moved;
//! - `job/discovery`, `job/weights`: next-run times of the periodic jobs
//!   ([`switchyard_sdk::job::Job`]);
//! - `load/<slot>` and `health/<slot>` with `slot < max_endpoints`.

use std::cell::RefCell;
use std::rc::Rc;
use switchyard_sdk::codec::{Codec, Postcard};
use switchyard_sdk::host::{self, HostError};
use switchyard_sdk::shared::{SharedValue, Update, UpdateError};

use crate::config::Config;
use crate::health::{self, HealthRecord, Step};
use crate::stats::{FILTER, Stats};
use crate::table::{self, LoadRecord, Table};

/// Configuration, metrics and the shared-data side of one VM. Behind an
/// `Rc`: discovery answers (callout closures) use it too.
pub struct Store {
    /// The stage's configuration.
    pub config: Config,
    /// The stage's metrics (defined once per VM).
    pub stats: Stats,
    prefix: String,
    /// The plugin's keys above every configuration's prefix.
    plugin_prefix: String,
    config_hash: u64,
    table: SharedValue<Postcard<Table>>,
    version: SharedValue<u64>,
    /// Per slot: the last load record this VM wrote, to skip redundant writes.
    written: RefCell<Vec<Option<LoadRecord>>>,
    /// Per slot: its health record's cell, made on first use (its key is
    /// not formatted again per response).
    health: RefCell<Vec<Option<Rc<SharedValue<HealthRecord>>>>>,
    /// This VM published a table since the stage last synced: its own
    /// picks follow at once (other VMs on their next tick).
    published_here: std::cell::Cell<bool>,
}

/// The keys of one configuration of a plugin.
fn config_prefix(plugin_prefix: &str, config_hash: u64) -> String {
    format!("{plugin_prefix}/{config_hash:016x}")
}

impl Store {
    /// The store of plugin `plugin` with configuration hash `config_hash`.
    pub fn new(config: Config, plugin: &str, config_hash: u64) -> Store {
        let plugin_prefix = format!("switchyard/load-balancer/{plugin}");
        let prefix = config_prefix(&plugin_prefix, config_hash);
        let slots = config.max_endpoints as usize;
        Store {
            table: SharedValue::new(format!("{prefix}/table")),
            version: SharedValue::new(format!("{prefix}/table_version")),
            stats: Stats::new(slots),
            written: RefCell::new(vec![None; slots]),
            health: RefCell::new(vec![None; slots]),
            published_here: std::cell::Cell::new(false),
            prefix,
            plugin_prefix,
            config_hash,
            config,
        }
    }

    /// A new configuration of the plugin (an ECDS or listener update) takes
    /// over the endpoint state of the one before: its table is the previous
    /// configuration's table reconciled with the new endpoints, so an
    /// endpoint in both keeps its slot, weights and ejection (Envoy's
    /// outlier detection keeps a host's ejection across an EDS update; a
    /// fresh table let an ejected endpoint take traffic again, and a return
    /// to an earlier configuration revived that one's stale table). Called
    /// when the configuration loads; the first VM to see it does the work.
    pub fn carry_over(&self) {
        let latest: SharedValue<u64> = SharedValue::new(format!("{}/latest", self.plugin_prefix));
        let previous = match latest.get() {
            Ok(v) => v.map(|v| *v),
            Err(e) => {
                log::debug!("{FILTER}: reading the latest configuration: {e}");
                return;
            }
        };
        if previous == Some(self.config_hash) {
            return;
        }
        let seed = previous.and_then(|h| {
            let key = format!("{}/table", config_prefix(&self.plugin_prefix, h));
            SharedValue::<Postcard<Table>>::new(key)
                .get()
                .ok()
                .flatten()
        });
        if let Some(seed) = seed {
            let mut next = table::reconcile(&seed.0, &self.configured_specs());
            let r = self.update_table(|cur| {
                // Readers compare versions for equality: never reuse one.
                next.version = next.version.max(cur.map_or(0, |c| c.version) + 1);
                Update::Write(next.clone(), ())
            });
            if let Err(e) = r {
                log::warn!("{FILTER}: carrying the endpoint table over: {e}");
                return;
            }
        }
        if let Err(e) = latest.set(&self.config_hash) {
            log::debug!("{FILTER}: recording the latest configuration: {e}");
        }
    }

    /// A key under this configuration's prefix, e.g. `job/weights`.
    pub fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    /// The published table version (one 8-byte shared-data read).
    pub fn published_version(&self) -> Result<Option<u64>, HostError> {
        Ok(self.version.get()?.map(|v| *v))
    }

    /// The current table, created from the static endpoints when no VM has
    /// yet. `None` only when shared data is unusable.
    pub fn table_or_init(&self) -> Option<Rc<Postcard<Table>>> {
        match self.table.get() {
            Ok(Some(t)) => Some(t),
            Ok(None) => {
                self.init_table();
                self.table.get().ok().flatten()
            }
            Err(e) => {
                switchyard_sdk::logging::warn_throttled("load-balancer/table", || {
                    format!("{FILTER}: reading the endpoint table: {e}")
                });
                None
            }
        }
    }

    /// The configured endpoints, as a table is built from them (those over
    /// `max_endpoints` dropped, with a warning).
    fn configured_specs(&self) -> Vec<table::Spec> {
        let (specs, dropped) =
            table::desired(&self.config, &[], self.config.max_endpoints as usize);
        if dropped > 0 {
            log::warn!("{FILTER}: {dropped} endpoints over max_endpoints dropped");
        }
        specs
    }

    fn init_table(&self) {
        let specs = self.configured_specs();
        let r = self.update_table(|cur| match cur {
            Some(_) => Update::Keep(()),
            None => Update::Write(table::reconcile(&Table::default(), &specs), ()),
        });
        if let Err(e) = r {
            log::warn!("{FILTER}: creating the endpoint table: {e}");
        }
    }

    /// Read-modify-write of the table with CAS (`f` may run several times);
    /// a written table's version is then published in `table_version`.
    pub fn update_table<R>(
        &self,
        mut f: impl FnMut(Option<&Table>) -> Update<Table, R>,
    ) -> Result<R, UpdateError> {
        let (r, written) = self.table.update(|cur| match f(cur.map(|c| &c.0)) {
            Update::Write(next, r) => {
                let v = next.version;
                Update::Write(Postcard(next), (r, Some(v)))
            }
            Update::Keep(r) => Update::Keep((r, None)),
        })?;
        if let Some(v) = written {
            self.publish_version(v);
        }
        Ok(r)
    }

    /// Writes `table_version`. Unconditional: readers compare it for
    /// equality with what they last synced at, so two writers finishing out
    /// of order cost one extra fetch, never a missed table.
    pub fn publish_version(&self, version: u64) {
        self.published_here.set(true);
        if let Err(e) = self.version.set(&version) {
            log::warn!("{FILTER}: publishing table version {version}: {e}");
        }
    }

    /// Whether this VM published a table since the last call.
    pub fn take_published_here(&self) -> bool {
        self.published_here.replace(false)
    }

    /// Stores a load report for the endpoint in `slot`. Writes at most a few
    /// times per weight-update period per VM (the weight job samples once
    /// per period; more writes would only cost host calls).
    pub fn store_report(&self, slot: u16, record: LoadRecord) {
        let min_gap_ns = self
            .config
            .weighted_round_robin
            .weight_update_period_ms
            .saturating_mul(1_000_000)
            / 4;
        if let Some(Some(prev)) = self.written.borrow().get(usize::from(slot))
            && prev.fingerprint == record.fingerprint
            && record.at_ns.saturating_sub(prev.at_ns) < min_gap_ns
        {
            return;
        }
        match host::set_shared_data(&self.key(&format!("load/{slot}")), &record.encode(), 0) {
            Ok(_) => {
                if let Some(w) = self.written.borrow_mut().get_mut(usize::from(slot)) {
                    *w = Some(record);
                }
            }
            Err(e) => log::debug!("{FILTER}: storing a load report: {e}"),
        }
    }

    /// Reads the load records of `slots` (the weight job, once per period),
    /// indexed by slot.
    pub fn read_reports(&self, slots: &[u16]) -> Vec<Option<LoadRecord>> {
        let mut out = vec![None; self.config.max_endpoints as usize];
        for &slot in slots {
            let record = host::shared_data(&self.key(&format!("load/{slot}")))
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
    ///
    /// A success writes the cleared record without reading it first: one
    /// host call that returns nothing, where a read would return a value.
    /// It cannot undo a concurrent failure count (that one is CAS-written
    /// and retries on the changed token).
    pub fn record_outcome(&self, address: &str, slot: u16, fingerprint: u64, failed: bool) {
        let h = &self.config.passive_health;
        if !h.enabled {
            return;
        }
        let cell = self.health_cell(slot);
        if !failed {
            let cleared = HealthRecord {
                fingerprint,
                consecutive: 0,
            };
            if let Err(e) = cell.set(&cleared) {
                log::debug!("{FILTER}: health record of {address}: {e}");
            }
            return;
        }
        let eject = cell.update(|cur| {
            match health::step(cur.copied(), fingerprint, true, h.consecutive_failures) {
                Step::Keep => Update::Keep(false),
                Step::Write(r) => Update::Write(r, false),
                Step::Eject(r) => Update::Write(r, true),
            }
        });
        match eject {
            Ok(true) => self.eject(address),
            Ok(false) => {}
            Err(e) => log::debug!("{FILTER}: health record of {address}: {e}"),
        }
    }

    /// The health record cell of `slot` (kept per VM).
    fn health_cell(&self, slot: u16) -> Rc<SharedValue<HealthRecord>> {
        let mut cells = self.health.borrow_mut();
        let i = usize::from(slot);
        if let Some(Some(cell)) = cells.get(i) {
            return Rc::clone(cell);
        }
        let cell = Rc::new(SharedValue::new(self.key(&format!("health/{slot}"))));
        if let Some(entry) = cells.get_mut(i) {
            *entry = Some(Rc::clone(&cell));
        }
        cell
    }

    fn eject(&self, address: &str) {
        let h = &self.config.passive_health;
        let now = host::now_nanos();
        let base = h.base_ejection_ms.saturating_mul(1_000_000);
        let max = h.max_ejection_ms.saturating_mul(1_000_000);
        let r = self.update_table(|cur| {
            let Some(cur) = cur else {
                return Update::Keep(None);
            };
            let mut next = cur.clone();
            match table::eject(&mut next, address, now, base, max, h.max_ejected_percent) {
                Some(until) => {
                    next.version += 1;
                    Update::Write(next, Some(until))
                }
                None => Update::Keep(None),
            }
        });
        match r {
            Ok(Some(until)) => {
                self.stats.ejections.inc();
                log::info!(
                    "{FILTER}: ejected {address} for {} ms",
                    until.saturating_sub(now) / 1_000_000
                );
            }
            Ok(None) => {
                log::debug!("{FILTER}: {address} not ejected (already, or at the cap)")
            }
            Err(e) => log::warn!("{FILTER}: ejecting {address}: {e}"),
        }
    }
}
