//! access-log: one structured record per request, built in `on_log`,
//! written to Envoy's log and/or shipped in batches to a collector.
//!
//! Pure logic: [`config`], [`record`] (fields, redaction, sampling),
//! [`encode`] (one JSON line; batch bodies), [`shipper`] (bounded buffer,
//! batches, retries, loss accounting), [`timefmt`]. Host glue: `root`
//! (root context), `stream` (per request), `sender` (the single shipper:
//! lease, shared queue, callouts), `facts` (what Envoy knows at `on_log`),
//! `stats` (metrics).

pub mod config;
pub mod encode;
pub mod record;
pub mod shipper;
pub mod timefmt;

mod facts;
mod root;
mod sender;
mod stats;
mod stream;

#[cfg(test)]
mod testutil;

#[cfg(test)]
use switchyard_emulator as _;

use switchyard_sdk::proxy_wasm;
use switchyard_sdk::proxy_wasm::traits::RootContext;

/// Filter name in metrics (`switchyard.access-log.<metric>`) and logs.
pub const FILTER: &str = "access-log";

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::Root::default()) });
}}
