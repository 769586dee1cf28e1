//! __NAME__: adds a configured header to every response.
//!
//! A Switchyard stage: `config` (JSON, validated), `logic` (pure, unit
//! tested) and the [`Stage`] below; the SDK owns the proxy-wasm contexts.

pub mod config;
pub mod logic;

use switchyard_sdk::config::{ConfigError, Source};
use switchyard_sdk::metrics::{self, Counter};
use switchyard_sdk::stage::{Exchange, Flow, Phase, Phases, Setup, Stage, StageSpec};

#[cfg(test)]
use switchyard_emulator as _;

/// How a module builds this stage.
pub const SPEC: StageSpec = StageSpec {
    name: "__NAME_SNAKE__",
    filter: "__NAME__",
    build,
    phases: Phases::of(&[Phase::ResponseHeaders]),
};

// This crate is its own module (build/wasm/switchyard___NAME_SNAKE__.wasm).
switchyard_sdk::module!(single: SPEC, callbacks: [response_headers]);

fn build(config: Source<'_>, _: &Setup) -> Result<Box<dyn Stage>, ConfigError> {
    Ok(Box::new(Filter {
        config: switchyard_sdk::config::parse(config)?,
        responses: Counter::new(&metrics::name("__NAME__", "responses")),
    }))
}

/// Per-VM state: the configuration and the metrics.
struct Filter {
    config: config::Config,
    responses: Counter,
}

impl Stage for Filter {
    fn on_response_headers(&self, ex: &mut Exchange) -> Flow {
        let (name, value) = logic::response_header(&self.config);
        ex.set_response_header(name, value);
        self.responses.inc();
        Flow::Continue
    }
}
