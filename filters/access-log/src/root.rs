//! Root context: configuration, metrics, and the sender's clock (ticks,
//! queue notifications, callout answers).

use crate::FILTER;
use crate::config::Config;
use crate::sender::{QueueRef, Sender};
use crate::stats::Metrics;
use crate::stream::Stream;
use std::rc::Rc;
use switchyard_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use switchyard_sdk::proxy_wasm::types::ContextType;
use switchyard_sdk::{host, properties, vm};

/// Per-VM state every stream shares.
pub struct Shared {
    pub config: Config,
    pub metrics: Rc<Metrics>,
    /// Set when the HTTP sink is configured.
    pub queue: Option<Rc<QueueRef>>,
}

#[derive(Default)]
pub struct Root {
    shared: Option<Rc<Shared>>,
    sender: Option<Rc<Sender>>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        if let Some(sender) = &self.sender {
            sender.on_http_call_response(token, body_size);
        }
    }

    fn on_done(&mut self) -> bool {
        if let Some(sender) = &self.sender {
            sender.release();
        }
        true
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
        let metrics = Rc::new(Metrics::new());
        let mut queue = None;
        self.sender = None;
        if let Some(sink) = &config.http {
            let vm_id = properties::plugin_vm_id().unwrap_or_default();
            let q = Rc::new(QueueRef::new(vm_id, sink.queue.clone()));
            // Creates the queue if no VM has yet, so on_log can enqueue at once.
            let _ = q.id();
            let sender = Sender::new(
                sink.clone(),
                Rc::clone(&q),
                Rc::clone(&metrics),
                vm::instance_id(),
            );
            if let Err(e) = host::set_tick_period(sender.tick_period()) {
                log::error!("{FILTER}: cannot set the tick period: {e}");
                return false;
            }
            queue = Some(q);
            self.sender = Some(sender);
        }
        self.shared = Some(Rc::new(Shared {
            config,
            metrics,
            queue,
        }));
        true
    }

    fn on_tick(&mut self) {
        if let Some(sender) = &self.sender {
            sender.on_tick();
        }
    }

    fn on_queue_ready(&mut self, _queue_id: u32) {
        if let Some(sender) = &self.sender {
            sender.on_queue_ready();
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(Rc::clone(self.shared.as_ref()?))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
