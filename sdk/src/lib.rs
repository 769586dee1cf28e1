//! Switchyard SDK: a safe, testable layer over the `proxy-wasm` crate.
//!
//! - [`host`]: every host call returns a `Result`, never panics.
//! - [`config`]: typed plugin configuration with errors naming the field.
//! - [`shared`], [`slots`], [`codec`]: typed shared data with CAS retries,
//!   cached snapshots and a bounded key space.
//! - [`lease`], [`vm`]: periodic work on one worker at a time.
//! - [`callout`]: HTTP and gRPC callouts with closures.
//! - [`stage`], [`module`]: the SDK owns the proxy-wasm contexts; a filter
//!   is a [`stage::Stage`], built alone or in a chain module.
//! - [`headers`]: header maps read once per phase, repeated headers kept.
//! - [`job`]: periodic work once per interval across workers.
//! - [`metrics`], [`properties`], [`client_addr`], [`logging`].
//!
//! The pure modules (config, wire, codec, slots, client_addr, lease rules,
//! callout classification) build without the `host` feature, which is how
//! they also run as wasm-bindgen tests on `wasm32-unknown-unknown`.

pub mod callout;
pub mod client_addr;
pub mod codec;
pub mod config;
pub mod headers;
pub mod job;
pub mod lease;
pub mod properties;
pub mod slots;
pub mod status;
pub mod wire;

#[cfg(feature = "host")]
mod abi;
#[cfg(feature = "host")]
pub mod dispatch;
#[cfg(feature = "host")]
pub mod host;
#[cfg(feature = "host")]
pub mod logging;
#[cfg(feature = "host")]
pub mod metrics;
#[cfg(feature = "host")]
pub mod module;
#[cfg(feature = "host")]
pub mod shared;
#[cfg(feature = "host")]
pub mod stage;
#[cfg(feature = "host")]
pub mod vm;
