//! The root context: configuration and stream creation.

use crate::filter::Filter;
use crate::stream::Stream;
use std::rc::Rc;
use switchyard_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use switchyard_sdk::proxy_wasm::types::ContextType;

#[derive(Default)]
pub struct Root {
    filter: Option<Rc<Filter>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        switchyard_sdk::logging::init();
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let Some(config) = switchyard_sdk::config::load_plugin_config(crate::NAME) else {
            return false;
        };
        self.filter = Some(Rc::new(Filter::new(config)));
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(Rc::clone(self.filter.as_ref()?))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
