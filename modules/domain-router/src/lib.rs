//! The domain-router stage alone as a proxy-wasm module: the plugin configuration is
//! the stage's configuration (see `filters/domain-router/README.md`).

switchyard_sdk::module!(single: switchyard_domain_router::SPEC, callbacks: []);
