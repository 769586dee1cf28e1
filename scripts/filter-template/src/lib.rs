//! __NAME__: adds a configured header to every response.

pub mod config;
pub mod logic;

use std::rc::Rc;
use switchyard_sdk::http::RESPONSE;
use switchyard_sdk::metrics::{self, Counter};
use switchyard_sdk::proxy_wasm;
use switchyard_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use switchyard_sdk::proxy_wasm::types::{Action, ContextType};

#[cfg(test)]
use switchyard_emulator as _;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Per-VM state shared with every stream.
struct Shared {
    config: config::Config,
    responses: Counter,
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        switchyard_sdk::logging::init();
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let Some(config) = switchyard_sdk::config::load_plugin_config("__NAME__") else {
            return false;
        };
        self.shared = Some(Rc::new(Shared {
            config,
            responses: Counter::new(&metrics::name("__NAME__", "responses")),
        }));
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            shared: Rc::clone(self.shared.as_ref()?),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    shared: Rc<Shared>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let (name, value) = logic::response_header(&self.shared.config);
        RESPONSE.set(name, value);
        self.shared.responses.inc();
        Action::Continue
    }
}
