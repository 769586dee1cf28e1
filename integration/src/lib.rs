//! Switchyard integration harness: real Envoy, real backends, real traffic.
//!
//! - [`envoy`]: start Envoy from a config template, in Docker or as a native
//!   process, wait until ready, read stats and logs, always clean up.
//! - [`backend`]: loopback HTTP backends with configurable latency, errors and
//!   capacity that report their load in Envoy's ORCA formats.
//! - [`traffic`]: a traffic driver that returns status, backend and latency
//!   distributions.

pub mod backend;
pub mod envoy;
pub mod paths;
pub mod traffic;
