//! Per-VM state every stream shares: the configuration, compiled limits, the
//! slot table and the metrics.

use crate::config::{Config, Scope};
use crate::gcra::Rate;
use crate::{NAME, store};
use switchyard_sdk::metrics::{self, Counter};
use switchyard_sdk::slots::SlotTable;

pub struct Metrics {
    /// Requests let through (shadow-limited ones included).
    pub allowed: Counter,
    /// Requests rejected (locally, by the service, or on a failure).
    pub limited: Counter,
    /// Requests a shadow rule would have rejected.
    pub shadow_limited: Counter,
    /// CAS conflicts that were retried.
    pub cas_retries: Counter,
    /// Bucket updates that ran out of CAS attempts (denied: fail closed).
    pub cas_exhausted: Counter,
    /// Keys that found another key's active bucket in their slot (shared it).
    pub slot_collisions: Counter,
    /// Shared-data calls the host refused (denied: fail closed).
    pub store_errors: Counter,
    /// Rate limit service calls that failed (dispatch, timeout, gRPC error).
    pub rls_errors: Counter,
    /// Requests the local pre-check rejected without asking the service.
    pub rls_precheck_limited: Counter,
}

impl Metrics {
    fn new() -> Self {
        let c = |m: &str| Counter::new(&metrics::name(NAME, m));
        Metrics {
            allowed: c("allowed"),
            limited: c("limited"),
            shadow_limited: c("shadow_limited"),
            cas_retries: c("cas_retries"),
            cas_exhausted: c("cas_exhausted"),
            slot_collisions: c("slot_collisions"),
            store_errors: c("store_errors"),
            rls_errors: c("rls_errors"),
            rls_precheck_limited: c("rls_precheck_limited"),
        }
    }
}

pub struct Filter {
    pub config: Config,
    /// Per rule: its GCRA rate (local rules only).
    pub rates: Vec<Option<Rate>>,
    /// Per rule: the name its buckets are keyed by, the rule's name and its
    /// rate. A configuration that changes a rule's limit starts its buckets
    /// full, as Envoy's local_ratelimit does with a new config (a client
    /// carried over at its old limit stayed blocked when the limit was
    /// raised); an unchanged rule keeps its clients' state across updates.
    pub bucket_names: Vec<String>,
    pub slots: SlotTable,
    /// Global mode's memory of over-limit descriptors (`None`: off).
    pub precheck: Option<SlotTable>,
    pub metrics: Metrics,
}

impl Filter {
    pub fn new(config: Config) -> Self {
        let rates = config
            .rules
            .iter()
            .map(|r| match (r.scope, r.limit) {
                (Scope::Local, Some(l)) => Some(Rate::new(
                    u64::from(l.requests),
                    l.per.seconds(),
                    u64::from(l.burst()),
                )),
                _ => None,
            })
            .collect::<Vec<Option<Rate>>>();
        let bucket_names = config
            .rules
            .iter()
            .zip(&rates)
            .map(|(r, rate)| match rate {
                Some(t) => format!("{}\u{0}{}/{}", r.name, t.interval_ns, t.burst),
                None => r.name.clone(),
            })
            .collect();
        let slots = SlotTable::new(config.shared_prefix.as_str(), config.slots);
        let precheck = config
            .global
            .as_ref()
            .filter(|g| g.precheck_slots > 0)
            .map(|g| SlotTable::new(format!("{}g", config.shared_prefix), g.precheck_slots));
        Filter {
            config,
            rates,
            bucket_names,
            slots,
            precheck,
            metrics: Metrics::new(),
        }
    }

    pub fn store(&self) -> store::SharedStore {
        store::SharedStore::new(self.config.cas_attempts)
    }
}
