//! One HTTP stream: pick on the request, learn from the response.

use std::rc::Rc;
use switchyard_sdk::codec::{Postcard, fnv1a64};
use switchyard_sdk::http::{self, REQUEST, RESPONSE};
use switchyard_sdk::proxy_wasm::traits::{Context, HttpContext};
use switchyard_sdk::proxy_wasm::types::Action;
use switchyard_sdk::{client_addr, host, properties};

use crate::config::{Mode, ORIGINAL_DST_HEADER, Policy};
use crate::orca;
use crate::picker::Picker;
use crate::state::Shared;
use crate::table::{LoadRecord, Table};

pub struct Stream {
    shared: Rc<Shared>,
    /// The table the pick was made from.
    table: Option<Rc<Postcard<Table>>>,
    /// Picked endpoints (first, then retry hosts), as table indices.
    picks: Vec<usize>,
    /// Slot whose in-flight count this stream holds.
    in_flight_slot: Option<u16>,
}

impl Stream {
    pub fn new(shared: Rc<Shared>) -> Self {
        Stream {
            shared,
            table: None,
            picks: Vec::new(),
            in_flight_slot: None,
        }
    }

    /// Removes selection headers the client sent: only this filter decides.
    fn strip_forged(&self) {
        let header = self.shared.config.header();
        let mut forged = false;
        for h in [header, ORIGINAL_DST_HEADER] {
            if REQUEST.get(h).is_some() {
                forged = true;
                REQUEST.remove(h);
            }
        }
        if forged {
            self.shared.stats.forged_headers.inc();
        }
    }

    /// The stickiness key's hash, when the policy hashes and the request has one.
    fn hash_key(&self) -> Option<u64> {
        let c = &self.shared.config;
        if c.policy != Policy::ConsistentHash {
            return None;
        }
        let h = &c.hash;
        if let Some(name) = &h.header {
            return REQUEST.get(name).map(|v| fnv1a64(&v));
        }
        if let Some(name) = &h.cookie {
            let cookies = REQUEST.get("cookie")?;
            return cookie_value(&cookies, name).map(fnv1a64);
        }
        if h.client_address {
            let peer = properties::source_address();
            let xff = REQUEST.get("x-forwarded-for");
            let ip = client_addr::client_address(peer.as_deref(), xff.as_deref(), h.trusted_hops)?;
            return Some(fnv1a64(ip.to_string().as_bytes()));
        }
        None
    }

    fn pick(&mut self) {
        let shared = Rc::clone(&self.shared);
        let Some(table) = shared.current_table() else {
            shared.stats.no_endpoint.inc();
            return;
        };
        let key = self.hash_key();
        let config = &shared.config;
        let t = &table.0;
        let picked = {
            let mut local = shared.local.borrow_mut();
            let local = &mut *local;
            let stale = local
                .picker
                .as_ref()
                .is_none_or(|p| p.version != t.version || p.endpoints != t.endpoints.len());
            if stale {
                let previous = local.picker.take();
                local.picker = Some(Picker::build(
                    t,
                    config,
                    host::now_nanos(),
                    local.phase,
                    previous,
                ));
            }
            let in_flight = &local.in_flight;
            let inputs = |i: usize| match t.endpoints.get(i) {
                Some(e) => {
                    let n = in_flight.get(usize::from(e.slot)).copied().unwrap_or(0);
                    (e.utilization, n)
                }
                None => (f64::MAX, u32::MAX),
            };
            match local.picker.as_mut() {
                Some(p) => p.pick(key, &mut local.rng, &inputs, config.mode == Mode::Endpoint),
                None => None,
            }
        };
        let Some(pick) = picked else {
            shared.stats.no_endpoint.inc();
            return;
        };
        let Some(first) = t.endpoints.get(pick.first) else {
            shared.stats.no_endpoint.inc();
            return;
        };
        let value = match config.mode {
            Mode::Endpoint => {
                let mut v = first.address.clone();
                for e in pick.retries.iter().filter_map(|&r| t.endpoints.get(r)) {
                    v.push(',');
                    v.push_str(&e.address);
                }
                v
            }
            Mode::OriginalDst | Mode::Cluster => first.address.clone(),
        };
        if !REQUEST.replace_trusted(config.header(), &value) {
            log::warn!("load-balancer: could not set {}", config.header());
            return;
        }
        if config.mode == Mode::Cluster {
            http::clear_route_cache();
        }
        shared.stats.pick(&first.name);
        let slot = first.slot;
        if let Some(n) = shared
            .local
            .borrow_mut()
            .in_flight
            .get_mut(usize::from(slot))
        {
            *n += 1;
            self.in_flight_slot = Some(slot);
        }
        self.picks = std::iter::once(pick.first).chain(pick.retries).collect();
        self.table = Some(table);
    }

    /// The table index of the endpoint that answered, if known.
    fn served(&self, t: &Table) -> Option<usize> {
        match self.shared.config.mode {
            Mode::Cluster => self.picks.first().copied(),
            Mode::Endpoint | Mode::OriginalDst => {
                let up = properties::upstream_address()?;
                t.endpoints.iter().position(|e| e.address == up)
            }
        }
    }

    fn learn(&mut self) {
        let shared = Rc::clone(&self.shared);
        let config = &shared.config;
        let bin = RESPONSE.get(orca::BIN_HEADER);
        let text = RESPONSE.get(orca::HEADER);
        if config.strip_load_reports {
            if bin.is_some() {
                RESPONSE.remove(orca::BIN_HEADER);
            }
            if text.is_some() {
                RESPONSE.remove(orca::HEADER);
            }
        }
        let report = orca::parse_headers(
            bin.as_deref(),
            text.as_deref(),
            config.max_report_bytes as usize,
        );
        let table = match self.table.clone() {
            Some(t) => t,
            // No pick (fallback routing): the table still maps the answer.
            None => match shared.current_table() {
                Some(t) => t,
                None => return,
            },
        };
        let t = &table.0;
        let served = self.served(t);
        match report {
            None => {}
            Some(Ok(r)) => {
                shared.stats.reports_accepted.inc();
                if let Some(e) = served.and_then(|i| t.endpoints.get(i)) {
                    let metrics = &config.weighted_round_robin.utilization_metrics;
                    shared.store_report(
                        e.slot,
                        LoadRecord {
                            fingerprint: e.fingerprint(),
                            at_ns: host::now_nanos(),
                            qps: r.rps_fractional,
                            eps: r.eps,
                            utilization: r.utilization_for(metrics),
                        },
                    );
                }
            }
            Some(Err(rejected)) => {
                shared.stats.rejected(rejected.reason);
                log::debug!("load-balancer: load report rejected: {rejected}");
            }
        }
        let status = RESPONSE
            .get_str(":status")
            .and_then(|s| s.trim().parse::<u16>().ok())
            .unwrap_or(0);
        let Some(s) = served else {
            return;
        };
        // Envoy moved on to a later host of the list only after the earlier
        // ones failed to connect or reset: those count as failures.
        if let Some(k) = self.picks.iter().position(|&p| p == s) {
            for e in self.picks[..k].iter().filter_map(|&p| t.endpoints.get(p)) {
                shared.record_outcome(&e.address, e.slot, e.fingerprint(), true);
            }
        }
        if let Some(e) = t.endpoints.get(s) {
            shared.record_outcome(&e.address, e.slot, e.fingerprint(), status >= 500);
        }
    }

    fn release(&mut self) {
        if let Some(slot) = self.in_flight_slot.take()
            && let Some(n) = self
                .shared
                .local
                .borrow_mut()
                .in_flight
                .get_mut(usize::from(slot))
        {
            *n = n.saturating_sub(1);
        }
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header
        .split(|b| *b == b';')
        .map(|c| c.trim_ascii())
        .find_map(|c| {
            let eq = c.iter().position(|b| *b == b'=')?;
            (c[..eq].trim_ascii() == name.as_bytes()).then(|| c[eq + 1..].trim_ascii())
        })
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.strip_forged();
        self.pick();
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.learn();
        self.release();
        Action::Continue
    }

    fn on_log(&mut self) {
        self.release();
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::cookie_value;

    #[test]
    fn cookies() {
        let h = b"a=1; session=abc ;b=2";
        assert_eq!(cookie_value(h, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie_value(h, "a"), Some(&b"1"[..]));
        assert_eq!(cookie_value(h, "sess"), None);
        assert_eq!(cookie_value(b"", "a"), None);
        assert_eq!(cookie_value(b"novalue; x=", "x"), Some(&b""[..]));
    }
}
