//! The access-log stage alone as a proxy-wasm module: the plugin configuration is
//! the stage's configuration (see `filters/access-log/README.md`).

switchyard_sdk::module!(single: switchyard_access_log::SPEC, callbacks: [log]);
