//! The filter's metrics (Envoy: `wasmcustom.switchyard.access-log.<name>`).
//! Every VM defines the same names, so Envoy sums them across workers.

use crate::FILTER;
use switchyard_sdk::metrics::{Counter, Gauge, name};

pub struct Metrics {
    /// Records built (kept by sampling).
    pub records: Counter,
    pub sampled_out: Counter,
    /// Batch sends dispatched (retries included).
    pub batches_sent: Counter,
    /// Sends that did not end in a 2xx (refused dispatch, transport, non-2xx).
    pub batch_failures: Counter,
    /// Records in batches the collector acknowledged.
    pub delivered: Counter,
    /// Records given up, any reason (sum of the `dropped_*` below).
    pub dropped: Counter,
    pub dropped_buffer_full: Counter,
    pub dropped_rejected: Counter,
    pub dropped_attempts: Counter,
    pub dropped_enqueue: Counter,
    /// Records Envoy refused as filter state (`filter_state` sink); not in
    /// `dropped`, which accounts for the collector's records.
    pub filter_state_failures: Counter,
    /// Records held by senders (buffered, in flight, awaiting retry).
    pub queue_depth: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let c = |m: &str| Counter::new(&name(FILTER, m));
        Metrics {
            records: c("records"),
            sampled_out: c("sampled_out"),
            batches_sent: c("batches_sent"),
            batch_failures: c("batch_failures"),
            delivered: c("delivered"),
            dropped: c("dropped"),
            dropped_buffer_full: c("dropped_buffer_full"),
            dropped_rejected: c("dropped_rejected"),
            dropped_attempts: c("dropped_attempts"),
            dropped_enqueue: c("dropped_enqueue"),
            filter_state_failures: c("filter_state_failures"),
            queue_depth: Gauge::new(&name(FILTER, "queue_depth")),
        }
    }

    /// Counts `n` dropped records under `reason` and the total.
    pub fn drop_records(&self, reason: &Counter, n: u64) {
        reason.add(n);
        self.dropped.add(n);
    }
}
