//! Counters and gauges.
//!
//! Define each metric once per VM (in the root context) and share the handle;
//! defining the same name in every VM yields the same Envoy stat, so values
//! aggregate across workers. Envoy lists wasm-defined metrics under the
//! `wasmcustom.` prefix. Naming convention: `switchyard.<filter>.<metric>`
//! built with [`name`], snake_case metric names, no per-request values in
//! names (every distinct name is a new stat that lives forever).
//!
//! A handle whose definition failed is inert: updates are dropped rather
//! than failing the request.
//!
//! Counters are summed in the VM and handed to Envoy by [`flush`], which the
//! SDK's root runs on every tick (at least every [`FLUSH_PERIOD`]): a
//! request pays no host call for a count, and Envoy's stats lag by at most
//! one flush period. Gauges and histograms are written at once.

use crate::host::{self, MetricType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// How often counters reach Envoy at the latest.
pub const FLUSH_PERIOD: Duration = Duration::from_millis(250);

thread_local! {
    /// Every counter of this VM with its unflushed count.
    static PENDING: RefCell<Vec<(u32, Rc<Cell<u64>>)>> = const { RefCell::new(Vec::new()) };
}

/// Hands every counter's count since the last flush to Envoy: one host call
/// per counter that moved.
pub fn flush() {
    PENDING.with(|p| {
        for (id, n) in p.borrow().iter() {
            let v = n.take();
            if let Ok(v @ 1..) = i64::try_from(v) {
                let _ = host::increment_metric(*id, v);
            }
        }
    });
}

/// `switchyard.<filter>.<metric>`.
pub fn name(filter: &str, metric: &str) -> String {
    format!("switchyard.{filter}.{metric}")
}

fn define(kind: MetricType, name: &str) -> Option<u32> {
    match host::define_metric(kind, name) {
        Ok(id) => Some(id),
        Err(e) => {
            log::warn!("metric {name}: {e}");
            None
        }
    }
}

/// A monotonically increasing count, summed in the VM until [`flush`].
#[derive(Debug, Clone)]
pub struct Counter {
    id: Option<u32>,
    pending: Rc<Cell<u64>>,
}

impl Counter {
    pub fn new(name: &str) -> Self {
        let id = define(MetricType::Counter, name);
        let pending = Rc::new(Cell::new(0));
        if let Some(id) = id {
            PENDING.with(|p| p.borrow_mut().push((id, Rc::clone(&pending))));
        }
        Counter { id, pending }
    }

    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n` (no host call; see [`flush`]).
    pub fn add(&self, n: u64) {
        if self.id.is_some() {
            self.pending.set(self.pending.get().saturating_add(n));
        }
    }

    /// Envoy's value plus what this VM has not flushed yet.
    pub fn value(&self) -> Option<u64> {
        let flushed = host::metric_value(self.id?).ok()?;
        Some(flushed.saturating_add(self.pending.get()))
    }
}

/// A value that goes up and down (queue depth, table version, weights).
#[derive(Debug, Clone, Copy)]
pub struct Gauge(Option<u32>);

impl Gauge {
    pub fn new(name: &str) -> Self {
        Gauge(define(MetricType::Gauge, name))
    }

    pub fn set(&self, value: u64) {
        if let Some(id) = self.0 {
            let _ = host::record_metric(id, value);
        }
    }

    pub fn add(&self, delta: i64) {
        if let Some(id) = self.0 {
            let _ = host::increment_metric(id, delta);
        }
    }

    pub fn value(&self) -> Option<u64> {
        host::metric_value(self.0?).ok()
    }
}
