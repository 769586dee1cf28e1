//! The periodic work, run by whichever VM claims it for the interval
//! ([`switchyard_sdk::job::Job`]): discovery polls and weight updates.

use std::rc::Rc;
use std::time::Duration;
use switchyard_sdk::callout::{CalloutError, Callouts, HttpRequest, HttpResponse};
use switchyard_sdk::host;
use switchyard_sdk::job::Job;
use switchyard_sdk::shared::Update;

use crate::config::DiscoveryConfig;
use crate::discovery;
use crate::stats::FILTER;
use crate::store::Store;
use crate::table::{self, LoadRecord, Table, WeightParams};

/// Sends one discovery poll; the answer comes back to this VM's root. A
/// refused send counts as a failed poll and waits for the next interval.
pub fn poll(store: &Rc<Store>, callouts: &Callouts, d: &DiscoveryConfig, job: &Rc<Job>, now: u64) {
    let mut req = HttpRequest::get(&d.cluster, &d.path)
        .timeout(Duration::from_millis(d.timeout_ms))
        .header("accept", "application/json");
    if let Some(a) = &d.authority {
        req = req.authority(a);
    }
    // A timeout longer than the interval: no second poll (from any VM)
    // while this one may still answer; the answer restores the interval.
    let overlap = d.timeout_ms > d.interval_ms;
    let next = now.saturating_add(d.interval_ms.saturating_mul(1_000_000));
    let s = Rc::clone(store);
    let j = Rc::clone(job);
    let sent = callouts.http(req, move |r| {
        if overlap {
            j.schedule(next);
        }
        on_discovery(&s, r);
    });
    match sent {
        Ok(_) if overlap => {
            job.schedule(now.saturating_add(d.timeout_ms.saturating_mul(1_000_000)));
        }
        Ok(_) => {}
        Err(e) => {
            store.stats.discovery_failed.inc();
            log::warn!("{FILTER}: discovery poll not sent: {e}");
        }
    }
}

/// A poll answered: a valid endpoint list replaces the discovered part of
/// the table; anything else keeps the last good one.
fn on_discovery(store: &Store, result: Result<HttpResponse, CalloutError>) {
    let config = &store.config;
    let max = config.max_endpoints as usize;
    let parsed = result
        .map_err(|e| e.to_string())
        .and_then(|resp| discovery::parse(&resp.body, config.mode, max));
    let found = match parsed {
        Ok(found) => found,
        Err(e) => {
            store.stats.discovery_failed.inc();
            log::warn!("{FILTER}: discovery: {e}; keeping the last good endpoint set");
            return;
        }
    };
    let (specs, dropped) = table::desired(config, &found, max);
    if dropped > 0 {
        log::warn!("{FILTER}: {dropped} endpoints over max_endpoints dropped");
    }
    let r = store.update_table(|cur| {
        let old = cur.cloned().unwrap_or_default();
        let next = table::reconcile(&old, &specs);
        if cur.is_some() && next.endpoints == old.endpoints {
            // The same set as before: no write, so no worker fetches and
            // decodes the table again.
            return Update::Keep(old);
        }
        Update::Write(next.clone(), next)
    });
    let t = match r {
        Ok(t) => t,
        Err(e) => {
            store.stats.discovery_failed.inc();
            log::warn!("{FILTER}: discovery: storing the endpoint table: {e}");
            return;
        }
    };
    store.stats.discovery_ok.inc();
    // Load fields in the payload count as reports received now.
    let now = host::now_nanos();
    let metrics = &config.weighted_round_robin.utilization_metrics;
    for d in &found {
        let (Some(load), Some(e)) = (&d.load, t.endpoints.iter().find(|e| e.address == d.address))
        else {
            continue;
        };
        store.store_report(
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

/// The weight job: fold the reports into the weights, end expired
/// ejections, publish.
pub fn update_weights(store: &Store, now: u64) {
    let Some(current) = store.table_or_init() else {
        return;
    };
    let slots: Vec<u16> = current.0.endpoints.iter().map(|e| e.slot).collect();
    let reports = store.read_reports(&slots);
    let params = WeightParams::from_config(&store.config);
    let r = store.update_table(|cur| {
        let Some(cur) = cur else {
            return Update::Keep(None);
        };
        let mut next = cur.clone();
        let stats = table::apply_reports(&mut next, &reports, now, params);
        if next == *cur {
            // Nothing moved (an idle proxy, reports unchanged): no write,
            // so no worker fetches and decodes the table again.
            return Update::Keep(Some((stats, next)));
        }
        next.version += 1;
        Update::Write(next.clone(), Some((stats, next)))
    });
    let (stats, t) = match r {
        Ok(Some(done)) => done,
        Ok(None) => return,
        Err(e) => {
            log::warn!("{FILTER}: weight update: {e}");
            return;
        }
    };
    let s = &store.stats;
    s.weight_updates.inc();
    s.stale_reports.add(u64::from(stats.stale));
    publish_gauges(store, &t, now);
}

fn publish_gauges(store: &Store, t: &Table, now: u64) {
    let s = &store.stats;
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
