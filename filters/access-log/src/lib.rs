//! access-log: one structured record per request, built in `on_log`,
//! written to Envoy's log and/or shipped in batches to a collector.
//!
//! Pure logic: [`config`], [`record`] (the record read on demand from a
//! [`record::Source`], sampling, redaction, the JSON line), [`encode`]
//! (JSON escaping; batch bodies), [`shipper`] (bounded buffer, batches,
//! retries, loss accounting), [`timefmt`]. Host glue: [`stage`] (the
//! [`switchyard_sdk::stage::Stage`]), `sender` (the single shipper: lease,
//! shared queue, callouts), `stats` (metrics).

pub mod config;
pub mod encode;
pub mod record;
pub mod shipper;
pub mod stage;
pub mod timefmt;

mod sender;
mod stats;

#[cfg(test)]
mod testutil;

#[cfg(test)]
use switchyard_emulator as _;

pub use stage::SPEC;

/// Filter name in metrics (`switchyard.access-log.<metric>`) and logs.
pub const FILTER: &str = "access-log";

/// Installs this stage alone as the VM's module (the emulator's entry point;
/// the shipped module is `modules/access-log`).
pub extern "C" fn init() {
    switchyard_sdk::module::install_single(SPEC);
}
