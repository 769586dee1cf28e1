//! load-balancer: per-request upstream selection from ORCA load reports.
//!
//! Backends report their load in their responses (ORCA, in headers or
//! trailers); workers store the reports in shared data, a periodic job
//! turns them into gRFC A58 weights and publishes one endpoint table, and
//! every request picks from it (A58 weighted round robin, P2C, Maglev, round
//! robin or random, with priority failover and passive health). The pick
//! reaches Envoy in a header for
//! `envoy.load_balancing_policies.override_host`, an ORIGINAL_DST cluster or
//! a `cluster_header` route. Pure logic lives in the modules below; `stage`
//! is the [`switchyard_sdk::stage::Stage`], `store` its shared data and
//! `jobs` its periodic work.

pub mod config;
pub mod discovery;
pub mod health;
pub mod maglev;
pub mod observed;
pub mod orca;
pub mod picker;
pub mod prequal;
pub mod priority;
pub mod stage;
pub mod table;
pub mod weights;

mod jobs;
mod stats;
mod store;

pub use stage::SPEC;

#[cfg(test)]
use switchyard_emulator as _;

/// Installs this stage alone as the VM's module (the emulator's entry point;
/// the shipped module is `modules/load-balancer`).
pub extern "C" fn init() {
    switchyard_sdk::module::install_single(SPEC);
}
