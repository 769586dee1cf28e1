//! Root context: configuration, and on every tick the table refresh plus,
//! on the lease holder only, the poll of the control endpoint.

use crate::config::Config;
use crate::core::{Core, FILTER};
use crate::publish::{self, PollClock};
use crate::stream::Stream;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use switchyard_sdk::callout::{CalloutError, Callouts, HttpRequest};
use switchyard_sdk::host;
use switchyard_sdk::lease::Lease;
use switchyard_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use switchyard_sdk::proxy_wasm::types::ContextType;

#[derive(Default)]
pub struct Root {
    core: Option<Rc<Core>>,
    callouts: Callouts,
    lease: Option<Lease>,
    clock: Rc<RefCell<PollClock>>,
    /// ETag of the last answer seen (good or rejected), so a rejected table
    /// is reported once, not on every poll.
    last_etag: Rc<RefCell<Option<String>>>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Root {
    fn poll(&mut self) {
        let Some(core) = &self.core else { return };
        let (Some(control), Some(lease)) = (&core.config.control, &self.lease) else {
            return;
        };
        match lease.acquire() {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                log::debug!("{FILTER}: lease: {e}");
                return;
            }
        }
        let now = host::now_nanos();
        let stuck_after = nanos(Duration::from_millis(control.timeout_ms) + Duration::from_secs(5));
        if !self.clock.borrow().due(now, stuck_after) {
            return;
        }
        let etag = self
            .last_etag
            .borrow()
            .clone()
            .unwrap_or_else(|| core.loaded_etag());
        let mut req = HttpRequest::get(&control.cluster, &control.path)
            .authority(control.authority.as_deref().unwrap_or(&control.cluster))
            .timeout(Duration::from_millis(control.timeout_ms))
            .header("accept", "application/json");
        if !etag.is_empty() {
            req = req.header("if-none-match", &etag);
        }
        let interval = control
            .poll_interval()
            .saturating_sub(control.tick_period());
        self.clock.borrow_mut().started(now, nanos(interval));
        let (core2, clock, last_etag) = (
            Rc::clone(core),
            Rc::clone(&self.clock),
            Rc::clone(&self.last_etag),
        );
        let sent = self.callouts.http(req, move |result| {
            clock.borrow_mut().finished();
            match result {
                Ok(resp) => {
                    let etag = resp
                        .header("etag")
                        .map(|e| String::from_utf8_lossy(e).into_owned())
                        .unwrap_or_default();
                    core2.accept(&resp.body, &etag);
                    *last_etag.borrow_mut() = (!etag.is_empty()).then_some(etag);
                }
                Err(CalloutError::Status(r)) if r.status == 304 => {
                    log::debug!("{FILTER}: table not modified");
                }
                Err(e) => {
                    core2.metrics.poll_errors.inc();
                    log::warn!("{FILTER}: polling the control endpoint failed: {e}");
                }
            }
        });
        if let Err(e) = sent {
            self.clock.borrow_mut().finished();
            core.metrics.poll_errors.inc();
            log::warn!("{FILTER}: cannot poll the control endpoint: {e}");
            // Maybe this VM cannot call out (e.g. the main thread): let
            // another one take over.
            let _ = lease.release();
        }
    }
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
        let core = match Core::new(config) {
            Ok(c) => Rc::new(c),
            Err(e) => {
                log::error!("{FILTER}: invalid configuration: {e}");
                return false;
            }
        };
        if let (Some(control), Some(sync)) = (&core.config.control, &core.sync) {
            let tick = control.tick_period();
            self.lease = Some(Lease::new(
                publish::lease_key(&sync.prefix),
                tick * 3,
                switchyard_sdk::vm::instance_id(),
            ));
            if let Err(e) = host::set_tick_period(tick) {
                log::error!("{FILTER}: cannot set the tick period: {e}");
                return false;
            }
        }
        self.core = Some(core);
        true
    }

    fn on_tick(&mut self) {
        if let Some(core) = &self.core {
            core.refresh();
        }
        self.poll();
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(Rc::clone(self.core.as_ref()?))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
