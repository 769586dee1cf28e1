//! Counters, gauges and histograms.
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

use crate::host::{self, MetricType};

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

/// A monotonically increasing count.
#[derive(Debug, Clone, Copy)]
pub struct Counter(Option<u32>);

impl Counter {
    pub fn new(name: &str) -> Self {
        Counter(define(MetricType::Counter, name))
    }

    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`; Envoy rejects non-positive increments, so 0 is skipped.
    pub fn add(&self, n: u64) {
        if let (Some(id), Ok(n @ 1..)) = (self.0, i64::try_from(n)) {
            let _ = host::increment_metric(id, n);
        }
    }

    pub fn value(&self) -> Option<u64> {
        host::metric_value(self.0?).ok()
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

/// A distribution (latencies, sizes); Envoy computes the quantiles.
#[derive(Debug, Clone, Copy)]
pub struct Histogram(Option<u32>);

impl Histogram {
    pub fn new(name: &str) -> Self {
        Histogram(define(MetricType::Histogram, name))
    }

    pub fn record(&self, value: u64) {
        if let Some(id) = self.0 {
            let _ = host::record_metric(id, value);
        }
    }
}
