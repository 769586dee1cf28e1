//! `switchyard.wasm`: every Switchyard stage in one module. The plugin
//! configuration lists the stages to run, in order, each under its name:
//!
//! ```json
//! {"stages": [
//!   {"domain_router": {...}},
//!   {"rate_limit": {...}},
//!   {"load_balancer": {...}},
//!   {"access_log": {...}}
//! ]}
//! ```
//!
//! Each stage takes the same configuration as its own module. A request
//! costs one set of Envoy callbacks for the whole chain, each header map is
//! read once per phase, and later stages read earlier stages' decisions
//! directly (the access log's `switchyard_route`, `switchyard_endpoint`,
//! `switchyard_ratelimit`).

use switchyard_sdk::stage::StageSpec;

/// The stages this module knows, by configuration name.
pub const STAGES: &[StageSpec] = &[
    switchyard_domain_router::SPEC,
    switchyard_rate_limit::SPEC,
    switchyard_load_balancer::SPEC,
    switchyard_access_log::SPEC,
];

switchyard_sdk::module!(
    chain: STAGES,
    callbacks: [response_headers, response_trailers, log]
);

/// Installs the chain as the VM's module (the emulator's entry point).
pub extern "C" fn init() {
    switchyard_sdk::module::install_chain(STAGES);
}
