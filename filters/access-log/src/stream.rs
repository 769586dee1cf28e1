//! One HTTP stream: nothing happens until `on_log`, where the record is
//! built, written to the log sink and enqueued for the HTTP sink.

use crate::root::Shared;
use crate::{encode, facts, record};
use std::rc::Rc;
use switchyard_sdk::proxy_wasm::traits::{Context, HttpContext};

pub struct Stream {
    shared: Rc<Shared>,
}

impl Stream {
    pub fn new(shared: Rc<Shared>) -> Self {
        Stream { shared }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_log(&mut self) {
        let s = &self.shared;
        let facts = facts::collect(s.config.trusted_hops);
        if record::decide(&s.config.sampling, &facts).is_none() {
            s.metrics.sampled_out.inc();
            return;
        }
        let line = encode::line(&record::build(&s.config, &facts));
        s.metrics.records.inc();
        if s.config.log.enabled {
            log::info!("{line}");
        }
        if let Some(queue) = &s.queue
            && !queue.enqueue(&line)
        {
            s.metrics.drop_records(&s.metrics.dropped_enqueue, 1);
        }
    }
}
