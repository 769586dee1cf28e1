//! The load-balancer stage alone as a proxy-wasm module: the plugin configuration is
//! the stage's configuration (see `filters/load-balancer/README.md`).

switchyard_sdk::module!(
    single: switchyard_load_balancer::SPEC,
    callbacks: [response_headers, response_trailers]
);
