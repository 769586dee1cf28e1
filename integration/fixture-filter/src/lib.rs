//! Test-only fixture: proves that a module built by this workspace loads in
//! real Envoy, runs on real requests, and that the SDK's pieces work there.
//!
//! - every response gets `x-switchyard-fixture: <config.stamp>`;
//! - every upstream request gets `x-switchyard-fixture-request: <n>`, the
//!   request's sequence number in this VM;
//! - a process-wide request count is kept in shared data with CAS (all
//!   workers), and `GET /__fixture/count` answers it as a local reply;
//! - counter metric `switchyard.fixture.requests`.
//!
//! Configuration (JSON): `{"stamp": "text"}`; a bad one is refused with the
//! field named in Envoy's log.

use serde::Deserialize;
use std::cell::Cell;
use std::rc::Rc;
use switchyard_sdk::config::{self, ConfigError, Validate, ensure};
use switchyard_sdk::http::{REQUEST, RESPONSE, send_local_response};
use switchyard_sdk::metrics::{self, Counter};
use switchyard_sdk::proxy_wasm;
use switchyard_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use switchyard_sdk::proxy_wasm::types::{Action, ContextType};
use switchyard_sdk::shared::{SharedValue, Update};

/// Shared-data key of the process-wide request count.
pub const COUNT_KEY: &str = "switchyard/fixture/requests";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FixtureConfig {
    pub stamp: String,
}

impl Validate for FixtureConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(!self.stamp.is_empty(), "stamp", "must not be empty")?;
        ensure(
            self.stamp.len() <= 256,
            "stamp",
            "must be at most 256 bytes",
        )
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FixtureRoot::default()) });
}}

#[derive(Default)]
struct FixtureRoot {
    shared: Option<Rc<Shared>>,
}

/// What every stream of this VM uses.
struct Shared {
    stamp: String,
    sequence: Cell<u64>,
    count: SharedValue<u64>,
    requests: Counter,
}

impl Context for FixtureRoot {}

impl RootContext for FixtureRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        switchyard_sdk::logging::init();
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(config) = config::load_plugin_config::<FixtureConfig>("fixture") else {
            return false;
        };
        log::info!("fixture configured: stamp={}", config.stamp);
        let count = SharedValue::new(COUNT_KEY);
        // Created before traffic, so every later update is CAS-conditional.
        if let Err(e) = count.ensure(&0) {
            log::error!("fixture: shared data unusable: {e}");
            return false;
        }
        self.shared = Some(Rc::new(Shared {
            stamp: config.stamp,
            sequence: Cell::new(0),
            count,
            requests: Counter::new(&metrics::name("fixture", "requests")),
        }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = Rc::clone(self.shared.as_ref()?);
        shared.sequence.set(shared.sequence.get() + 1);
        Some(Box::new(FixtureStream {
            sequence: shared.sequence.get(),
            shared,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct FixtureStream {
    shared: Rc<Shared>,
    sequence: u64,
}

impl Context for FixtureStream {}

impl HttpContext for FixtureStream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if REQUEST.get(":path").as_deref() == Some(b"/__fixture/count") {
            let count = self.shared.count.get().ok().flatten().map_or(0, |c| *c);
            send_local_response(200, "fixture_count", &[], count.to_string().as_bytes());
            return Action::Pause;
        }
        self.shared.requests.inc();
        if let Err(e) = self.shared.count.update(|n| {
            let next = n.copied().unwrap_or(0) + 1;
            Update::Write(next, ())
        }) {
            log::warn!("fixture: request count not updated: {e}");
        }
        REQUEST.set("x-switchyard-fixture-request", self.sequence.to_string());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        RESPONSE.set("x-switchyard-fixture", &self.shared.stamp);
        Action::Continue
    }
}
