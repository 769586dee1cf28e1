//! The root context: configuration, and on every tick the leader's work
//! (discovery polls, weight updates) for whichever VM holds the lease.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;
use switchyard_sdk::callout::{CalloutError, Callouts, HttpRequest, HttpResponse};
use switchyard_sdk::codec::{Postcard, fnv1a64};
use switchyard_sdk::host;
use switchyard_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use switchyard_sdk::proxy_wasm::types::ContextType;
use switchyard_sdk::shared::Update;

use crate::config::Config;
use crate::discovery;
use crate::state::Shared;
use crate::stats::FILTER;
use crate::stream::Stream;
use crate::table::{self, LoadRecord, WeightParams};

#[derive(Default)]
pub struct Root {
    shared: Option<Rc<Shared>>,
    callouts: Callouts,
    next_update_ns: u64,
    next_poll_ns: u64,
    poll_in_flight: Rc<Cell<bool>>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        self.callouts.on_http_response(token, body_size);
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        switchyard_sdk::logging::init();
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let Some(config) = switchyard_sdk::config::load_plugin_config::<Config>(FILTER) else {
            return false;
        };
        let raw = host::plugin_configuration().unwrap_or_default();
        let plugin = switchyard_sdk::properties::plugin_name().unwrap_or_default();
        let tick = Duration::from_millis(config.tick_ms());
        let shared = Shared::new(config, &plugin, fnv1a64(&raw));
        // Every VM creates the table if missing, so the first request finds it.
        let _ = shared.current_table();
        if let Err(e) = host::set_tick_period(tick) {
            log::error!("{FILTER}: cannot set the tick period: {e}");
            return false;
        }
        self.shared = Some(shared);
        self.next_update_ns = 0;
        self.next_poll_ns = 0;
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        match shared.lease.acquire() {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                log::debug!("{FILTER}: lease: {e}");
                return;
            }
        }
        let now = host::now_nanos();
        if shared.config.discovery.is_some()
            && now >= self.next_poll_ns
            && !self.poll_in_flight.get()
        {
            self.poll(&shared, now);
        }
        if now >= self.next_update_ns {
            let period = shared.config.weighted_round_robin.weight_update_period_ms;
            self.next_update_ns = now.saturating_add(period.saturating_mul(1_000_000));
            update_weights(&shared, now);
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        // proxy-wasm panics on `None`; without a configuration the stream
        // passes through untouched.
        Some(match &self.shared {
            Some(s) => Box::new(Stream::new(Rc::clone(s))),
            None => Box::new(Inert),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A stream of an unconfigured plugin (Envoy normally refuses those).
struct Inert;

impl Context for Inert {}
impl HttpContext for Inert {}

impl Root {
    fn poll(&mut self, shared: &Rc<Shared>, now: u64) {
        let Some(d) = &shared.config.discovery else {
            return;
        };
        self.next_poll_ns = now.saturating_add(d.interval_ms.saturating_mul(1_000_000));
        let mut req = HttpRequest::get(&d.cluster, &d.path)
            .timeout(Duration::from_millis(d.timeout_ms))
            .header("accept", "application/json");
        if let Some(a) = &d.authority {
            req = req.authority(a);
        }
        let in_flight = Rc::clone(&self.poll_in_flight);
        let s = Rc::clone(shared);
        match self.callouts.http(req, move |r| {
            in_flight.set(false);
            on_discovery(&s, r);
        }) {
            Ok(_) => self.poll_in_flight.set(true),
            Err(e) => {
                shared.stats.discovery_failed.inc();
                log::warn!("{FILTER}: discovery poll not sent: {e}");
            }
        }
    }
}

/// A poll answered: a valid endpoint list replaces the discovered part of
/// the table; anything else keeps the last good one.
fn on_discovery(shared: &Shared, result: Result<HttpResponse, CalloutError>) {
    let config = &shared.config;
    let max = config.max_endpoints as usize;
    let parsed = result
        .map_err(|e| e.to_string())
        .and_then(|resp| discovery::parse(&resp.body, config.mode, max));
    let found = match parsed {
        Ok(found) => found,
        Err(e) => {
            shared.stats.discovery_failed.inc();
            log::warn!("{FILTER}: discovery: {e}; keeping the last good endpoint set");
            return;
        }
    };
    let (specs, dropped) = table::desired(config, &found, max);
    if dropped > 0 {
        log::warn!("{FILTER}: {dropped} endpoints over max_endpoints dropped");
    }
    let r = shared.table.update(|cur| {
        let old = cur.map(|c| c.0.clone()).unwrap_or_default();
        Update::Write(Postcard(table::reconcile(&old, &specs)), ())
    });
    if let Err(e) = r {
        shared.stats.discovery_failed.inc();
        log::warn!("{FILTER}: discovery: storing the endpoint table: {e}");
        return;
    }
    shared.stats.discovery_ok.inc();
    // Load fields in the payload count as reports received now.
    let Some(t) = shared.table.get().ok().flatten() else {
        return;
    };
    let now = host::now_nanos();
    let metrics = &config.weighted_round_robin.utilization_metrics;
    for d in &found {
        let (Some(load), Some(e)) = (
            &d.load,
            t.0.endpoints.iter().find(|e| e.address == d.address),
        ) else {
            continue;
        };
        shared.store_report(
            e.slot,
            LoadRecord {
                fingerprint: e.fingerprint(),
                at_ns: now,
                qps: load.rps_fractional,
                eps: load.eps,
                utilization: load.utilization_for(metrics),
            },
        );
    }
}

/// The leader's periodic step: fold the reports into the weights, end
/// expired ejections, publish.
fn update_weights(shared: &Shared, now: u64) {
    let slots: Vec<u16> = match shared.table.get() {
        Ok(Some(t)) => t.0.endpoints.iter().map(|e| e.slot).collect(),
        _ => return,
    };
    let reports = shared.read_reports(&slots);
    let params = WeightParams::from_config(&shared.config);
    let r = shared.table.update(|cur| {
        let Some(cur) = cur else {
            return Update::Keep(None);
        };
        let mut next = cur.0.clone();
        let stats = table::apply_reports(&mut next, &reports, now, params);
        next.version += 1;
        Update::Write(Postcard(next), Some(stats))
    });
    let stats = match r {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            log::warn!("{FILTER}: weight update: {e}");
            return;
        }
    };
    let s = &shared.stats;
    s.weight_updates.inc();
    s.stale_reports.add(u64::from(stats.stale));
    if let Some(t) = shared.table.get().ok().flatten() {
        let t = &t.0;
        s.endpoints.set(t.endpoints.len() as u64);
        s.ejected
            .set(t.endpoints.iter().filter(|e| e.ejected(now)).count() as u64);
        for e in &t.endpoints {
            let level_dynamic = t
                .endpoints
                .iter()
                .any(|o| o.priority == e.priority && o.dyn_weight > 0.0);
            let w = if e.draining {
                0.0
            } else if level_dynamic {
                e.dyn_weight
            } else {
                f64::from(e.weight)
            };
            s.weight(&e.name, w);
        }
    }
}
