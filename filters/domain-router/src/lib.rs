//! domain-router: routes each request to a cluster chosen from a table of
//! domains (Envoy's virtual-host precedence), path / method / header rules
//! and tenant-key maps, through a `cluster_header` route. Tables come inline
//! or from a control endpoint polled by one worker and shared with all.
//!
//! Pure modules: [`domain`], [`matcher`], [`table`], [`router`],
//! [`publish`], [`config`]. Glue: `core` (per-VM state), `stage` (the [`switchyard_sdk::stage::Stage`]).

pub mod config;
mod core;
pub mod domain;
pub mod matcher;
pub mod publish;
pub mod router;
pub mod stage;
pub mod table;

pub use stage::SPEC;

#[cfg(test)]
use switchyard_emulator as _;

/// Installs this stage alone as the VM's module (the emulator's entry point;
/// the shipped module is `modules/domain-router`).
pub extern "C" fn init() {
    switchyard_sdk::module::install_single(SPEC);
}
