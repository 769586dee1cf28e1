//! load-balancer: per-request upstream selection from ORCA load reports.
//!
//! Backends report their load in every response (ORCA); workers store the
//! reports in shared data, a tick leader turns them into gRFC A58 weights
//! and publishes one endpoint table, and every request picks from it (A58
//! weighted round robin, P2C, Maglev, round robin or random, with priority
//! failover and passive health). The pick reaches Envoy in a header for
//! `envoy.load_balancing_policies.override_host`, an ORIGINAL_DST cluster or
//! a `cluster_header` route. Pure logic lives in the modules below; `root`
//! and `stream` glue it to the proxy-wasm contexts.

pub mod config;
pub mod discovery;
pub mod health;
pub mod maglev;
pub mod orca;
pub mod picker;
pub mod priority;
pub mod table;
pub mod weights;

mod root;
mod state;
mod stats;
mod stream;

use switchyard_sdk::proxy_wasm;
use switchyard_sdk::proxy_wasm::traits::RootContext;

#[cfg(test)]
use switchyard_emulator as _;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::Root::default()) });
}}
