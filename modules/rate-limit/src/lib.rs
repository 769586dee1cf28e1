//! The rate-limit stage alone as a proxy-wasm module: the plugin configuration is
//! the stage's configuration (see `filters/rate-limit/README.md`).

switchyard_sdk::module!(single: switchyard_rate_limit::SPEC, callbacks: [response_headers]);
