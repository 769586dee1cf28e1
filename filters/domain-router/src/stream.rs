//! HTTP stream: strips the client's routing header, asks the table, and
//! hands the chosen cluster to Envoy's `cluster_header` route.

use crate::config::NoMatchAction;
use crate::core::{Core, FILTER};
use crate::domain::normalize_host;
use crate::matcher::RequestView;
use crate::router::{Decision, SplitKey};
use std::cell::Cell;
use std::rc::Rc;
use switchyard_sdk::http::{self, REQUEST};
use switchyard_sdk::proxy_wasm::traits::{Context, HttpContext};
use switchyard_sdk::proxy_wasm::types::Action;

thread_local! {
    static SEQ: Cell<u64> = const { Cell::new(0) };
}

/// Entropy for splits of requests without any key header: time and a
/// per-VM sequence (only needs to spread, not to be secret).
fn fallback_random() -> u64 {
    let seq = SEQ.with(|s| {
        s.set(s.get().wrapping_add(1));
        s.get()
    });
    switchyard_sdk::host::now_nanos() ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The request as the matchers see it; other headers are read on demand.
struct HostRequest {
    path: Vec<u8>,
    method: Vec<u8>,
}

impl RequestView for HostRequest {
    fn path(&self) -> &[u8] {
        &self.path
    }
    fn method(&self) -> &[u8] {
        &self.method
    }
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        REQUEST.get(name)
    }
}

pub struct Stream {
    core: Rc<Core>,
}

impl Stream {
    pub fn new(core: Rc<Core>) -> Self {
        Stream { core }
    }

    fn route(&self, d: &Decision<'_>) {
        if let Some(extras) = d.extras {
            for name in &extras.remove {
                REQUEST.remove(name);
            }
            for (name, value) in &extras.set {
                REQUEST.set(name, value);
            }
            if let Some(host) = &extras.host_rewrite {
                REQUEST.set(":authority", host);
            }
        }
        // Written last, so a rule's own header edits cannot touch it.
        REQUEST.replace_trusted(&self.core.config.cluster_header, d.cluster);
        // ABI 0.2.1 clears the route cache on header writes already; this
        // makes it explicit where the host offers the foreign function.
        http::clear_route_cache();
    }

    fn no_match(&self, stripped: bool) -> Action {
        self.core.metrics.no_match.inc();
        let nm = &self.core.config.no_match;
        match nm.action {
            NoMatchAction::PassThrough => {
                if stripped {
                    http::clear_route_cache();
                }
                Action::Continue
            }
            NoMatchAction::LocalReply => {
                http::send_local_response(
                    nm.status,
                    "domain_router_no_match",
                    &[("content-type", "application/json")],
                    &self.core.no_match_body,
                );
                Action::Pause
            }
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let core = &self.core;
        core.refresh();
        let header = &core.config.cluster_header;
        // Whatever the outcome, a client never picks the cluster itself.
        let stripped = REQUEST.get(header).is_some();
        if stripped {
            REQUEST.remove(header);
            core.metrics.client_header_stripped.inc();
        }
        let (router, counters) = core.current();
        let mut host = Vec::new();
        normalize_host(&REQUEST.get(":authority").unwrap_or_default(), &mut host);
        let request = HostRequest {
            path: REQUEST.get(":path").unwrap_or_default(),
            method: REQUEST.get(":method").unwrap_or_default(),
        };
        let mut random = fallback_random;
        let mut key = SplitKey {
            request_id_header: &core.config.request_id_header,
            random: &mut random,
        };
        match router.decide(&host, &request, &mut key) {
            Some(d) => {
                core.metrics.matches.inc();
                if let Some(c) = d.stat.and_then(|i| counters.get(usize::try_from(i).ok()?)) {
                    c.inc();
                }
                log::trace!(
                    "{FILTER}: {} -> {}",
                    String::from_utf8_lossy(&host),
                    d.cluster
                );
                self.route(&d);
                Action::Continue
            }
            None => self.no_match(stripped),
        }
    }
}
