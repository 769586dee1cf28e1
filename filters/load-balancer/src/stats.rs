//! The filter's metrics (Envoy: `wasmcustom.switchyard.load-balancer.*`).
//!
//! Per-endpoint metrics are named after the endpoint (`picks.<name>`,
//! `weight.<name>`), defined on first use and capped per VM so a churning
//! discovery source cannot create stats without bound.

use std::cell::RefCell;
use std::collections::HashMap;
use switchyard_sdk::metrics::{self, Counter, Gauge};

use crate::orca::Reason;

pub const FILTER: &str = "load-balancer";

fn name(metric: &str) -> String {
    metrics::name(FILTER, metric)
}

pub struct Stats {
    pub no_endpoint: Counter,
    pub forged_headers: Counter,
    pub reports_accepted: Counter,
    pub reports_rejected: Counter,
    rejected_by_reason: Vec<(Reason, Counter)>,
    pub stale_reports: Counter,
    pub ejections: Counter,
    pub ejected: Gauge,
    pub endpoints: Gauge,
    pub weight_updates: Counter,
    pub discovery_ok: Counter,
    pub discovery_failed: Counter,
    pub picks_other: Counter,
    picks: RefCell<HashMap<String, Counter>>,
    weights: RefCell<HashMap<String, Gauge>>,
    per_endpoint_cap: usize,
}

impl Stats {
    pub fn new(max_endpoints: usize) -> Self {
        Stats {
            no_endpoint: Counter::new(&name("no_endpoint")),
            forged_headers: Counter::new(&name("forged_headers")),
            reports_accepted: Counter::new(&name("reports_accepted")),
            reports_rejected: Counter::new(&name("reports_rejected")),
            rejected_by_reason: Reason::ALL
                .iter()
                .map(|r| {
                    (
                        *r,
                        Counter::new(&name(&format!("reports_rejected.{}", r.as_str()))),
                    )
                })
                .collect(),
            stale_reports: Counter::new(&name("stale_reports")),
            ejections: Counter::new(&name("ejections")),
            ejected: Gauge::new(&name("ejected")),
            endpoints: Gauge::new(&name("endpoints")),
            weight_updates: Counter::new(&name("weight_updates")),
            discovery_ok: Counter::new(&name("discovery_ok")),
            discovery_failed: Counter::new(&name("discovery_failed")),
            picks_other: Counter::new(&name("picks.other")),
            picks: RefCell::new(HashMap::new()),
            weights: RefCell::new(HashMap::new()),
            per_endpoint_cap: max_endpoints.saturating_mul(2),
        }
    }

    pub fn rejected(&self, reason: Reason) {
        self.reports_rejected.inc();
        if let Some((_, c)) = self.rejected_by_reason.iter().find(|(r, _)| *r == reason) {
            c.inc();
        }
    }

    pub fn pick(&self, endpoint: &str) {
        let mut picks = self.picks.borrow_mut();
        if let Some(c) = picks.get(endpoint) {
            c.inc();
        } else if picks.len() < self.per_endpoint_cap {
            let c = Counter::new(&name(&format!("picks.{endpoint}")));
            c.inc();
            picks.insert(endpoint.to_string(), c);
        } else {
            self.picks_other.inc();
        }
    }

    /// Weights are published in thousandths (gauges are integers).
    pub fn weight(&self, endpoint: &str, weight: f64) {
        let milli = if weight.is_finite() && weight > 0.0 {
            (weight * 1000.0).round().min(u64::MAX as f64) as u64
        } else {
            0
        };
        let mut weights = self.weights.borrow_mut();
        if let Some(g) = weights.get(endpoint) {
            g.set(milli);
        } else if weights.len() < self.per_endpoint_cap {
            let g = Gauge::new(&name(&format!("weight.{endpoint}")));
            g.set(milli);
            weights.insert(endpoint.to_string(), g);
        }
    }
}
