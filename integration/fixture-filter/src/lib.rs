//! Test-only fixture: proves that a module built by this workspace loads in
//! real Envoy and runs on real requests. It stamps every response with
//! `x-switchyard-fixture: <plugin configuration>` and every upstream request
//! with `x-switchyard-fixture-request: <vm id>-<request count>` so a test can
//! assert both directions and that the configuration arrived.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::cell::Cell;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(FixtureRoot { stamp: Rc::new(String::new()), requests: Rc::new(Cell::new(0)) })
    });
}}

struct FixtureRoot {
    stamp: Rc<String>,
    requests: Rc<Cell<u64>>,
}

impl Context for FixtureRoot {}

impl RootContext for FixtureRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match String::from_utf8(config) {
            Ok(s) if !s.is_empty() && s.len() <= 256 => {
                self.stamp = Rc::new(s);
                log::info!("fixture configured: {}", self.stamp);
                true
            }
            _ => {
                log::error!("fixture: configuration must be 1..=256 bytes of UTF-8");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        self.requests.set(self.requests.get() + 1);
        Some(Box::new(FixtureStream {
            stamp: Rc::clone(&self.stamp),
            sequence: self.requests.get(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct FixtureStream {
    stamp: Rc<String>,
    sequence: u64,
}

impl Context for FixtureStream {}

impl HttpContext for FixtureStream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_http_request_header(
            "x-switchyard-fixture-request",
            Some(&self.sequence.to_string()),
        );
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_http_response_header("x-switchyard-fixture", Some(&self.stamp));
        Action::Continue
    }
}
