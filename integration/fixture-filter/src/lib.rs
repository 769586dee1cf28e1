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
use switchyard_sdk::config::{self, ConfigError, Validate, ensure};
use switchyard_sdk::metrics::{self, Counter};
use switchyard_sdk::shared::{SharedValue, Update};
use switchyard_sdk::stage::{Exchange, Flow, Phase, Phases, Setup, Stage, StageSpec};

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

/// How the module builds the fixture stage.
pub const SPEC: StageSpec = StageSpec {
    name: "fixture",
    filter: "fixture",
    build,
    phases: Phases::of(&[Phase::RequestHeaders, Phase::ResponseHeaders]),
};

switchyard_sdk::module!(single: SPEC, callbacks: [response_headers]);

fn build(raw: config::Source<'_>, _: &Setup) -> Result<Box<dyn Stage>, ConfigError> {
    let config: FixtureConfig = config::parse(raw)?;
    log::info!("fixture configured: stamp={}", config.stamp);
    let count = SharedValue::new(COUNT_KEY);
    // Created before traffic, so every later update is CAS-conditional.
    count
        .ensure(&0)
        .map_err(|e| ConfigError::new("", format!("shared data unusable: {e}")))?;
    Ok(Box::new(Fixture {
        stamp: config.stamp,
        sequence: Cell::new(0),
        count,
        requests: Counter::new(&metrics::name("fixture", "requests")),
    }))
}

/// What every stream of this VM uses.
struct Fixture {
    stamp: String,
    sequence: Cell<u64>,
    count: SharedValue<u64>,
    requests: Counter,
}

impl Stage for Fixture {
    fn on_request_headers(&self, ex: &mut Exchange) -> Flow {
        if ex.request().get(":path") == Some(b"/__fixture/count") {
            let count = self.count.get().ok().flatten().map_or(0, |c| *c);
            return ex.reply(200, "fixture_count", &[], count.to_string());
        }
        self.sequence.set(self.sequence.get() + 1);
        self.requests.inc();
        if let Err(e) = self.count.update(|n| {
            let next = n.copied().unwrap_or(0) + 1;
            Update::Write(next, ())
        }) {
            log::warn!("fixture: request count not updated: {e}");
        }
        ex.set_request_header(
            "x-switchyard-fixture-request",
            self.sequence.get().to_string(),
        );
        Flow::Continue
    }

    fn on_response_headers(&self, ex: &mut Exchange) -> Flow {
        ex.set_response_header("x-switchyard-fixture", &self.stamp);
        Flow::Continue
    }
}
