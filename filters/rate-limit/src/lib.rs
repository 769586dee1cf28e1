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
mod root;
mod store;
mod stream;

use switchyard_sdk::proxy_wasm;
use switchyard_sdk::proxy_wasm::traits::RootContext;

#[cfg(test)]
use switchyard_emulator as _;

/// The filter's name in logs and metric names.
pub const NAME: &str = "rate-limit";

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::Root::default()) });
}}
