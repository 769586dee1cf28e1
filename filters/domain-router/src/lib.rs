//! domain-router: routes each request to a cluster chosen from a table of
//! domains (Envoy's virtual-host precedence), path / method / header rules
//! and tenant-key maps, through a `cluster_header` route. Tables come inline
//! or from a control endpoint polled by one worker and shared with all.
//!
//! Pure modules: [`domain`], [`matcher`], [`table`], [`router`],
//! [`publish`], [`config`]. Glue: `core` (per-VM state), `root`, `stream`.

pub mod config;
mod core;
pub mod domain;
pub mod matcher;
pub mod publish;
mod root;
pub mod router;
mod stream;
pub mod table;

use switchyard_sdk::proxy_wasm;
use switchyard_sdk::proxy_wasm::traits::RootContext;

#[cfg(test)]
use switchyard_emulator as _;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::Root::default()) });
}}
