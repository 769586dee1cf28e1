//! rate-limit: GCRA rate limiting in Envoy shared data (exact across workers,
//! bounded memory) with an optional global mode through an RLS-compatible
//! service. See README.md.

pub mod config;
pub mod decide;
pub mod gcra;
pub mod global;
pub mod headers;
pub mod request;

mod filter;
pub mod stage;
mod store;

pub use stage::SPEC;

#[cfg(test)]
use switchyard_emulator as _;

/// The filter's name in logs and metric names.
pub const NAME: &str = "rate-limit";

/// Installs this stage alone as the VM's module (the emulator's entry point;
/// the shipped module is `modules/rate-limit`).
pub extern "C" fn init() {
    switchyard_sdk::module::install_single(SPEC);
}
