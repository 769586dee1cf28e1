//! Switchyard SDK: a safe, testable layer over the `proxy-wasm` crate.
//!
//! - [`host`]: every host call returns a `Result`, never panics.
//! - [`config`]: typed plugin configuration with errors naming the field.
//! - [`shared`], [`slots`], [`codec`]: typed shared data with CAS retries,
//!   cached snapshots and a bounded key space.
//! - [`lease`], [`vm`]: periodic work on one worker at a time.
//! - [`callout`]: HTTP and gRPC callouts with closures.
//! - [`metrics`], [`properties`], [`client_addr`], [`http`], [`logging`].
//!
//! The pure modules (config, wire, codec, slots, client_addr, lease rules,
//! callout classification) build without the `host` feature, which is how
//! they also run as wasm-bindgen tests on `wasm32-unknown-unknown`.

pub mod callout;
pub mod client_addr;
pub mod codec;
pub mod config;
pub mod lease;
pub mod properties;
pub mod slots;
pub mod status;
pub mod wire;

#[cfg(feature = "host")]
mod abi;
#[cfg(feature = "host")]
pub mod host;
#[cfg(feature = "host")]
pub mod http;
#[cfg(feature = "host")]
pub mod logging;
#[cfg(feature = "host")]
pub mod metrics;
#[cfg(feature = "host")]
pub mod shared;
#[cfg(feature = "host")]
pub mod vm;

/// The proxy-wasm crate this SDK is built on (traits and types for contexts).
#[cfg(feature = "host")]
pub use proxy_wasm;
