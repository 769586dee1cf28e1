//! Switchyard integration harness: real Envoy, real backends, real traffic.
//!
//! - [`envoy`]: start Envoy from a config template, in Docker or as a native
//!   process, wait until ready, read stats and logs, always clean up.
//! - [`backend`]: loopback HTTP backends with configurable latency, errors and
//!   capacity that report their load in Envoy's ORCA formats.
//! - [`discovery`]: a scripted server: endpoint-discovery source and an
//!   upstream with byte-exact (e.g. malformed) headers, restartable on its port.
//! - [`traffic`]: a traffic driver that returns status, backend and latency
//!   distributions.
//! - [`grpc_backend`]: a unary gRPC backend (HTTP/2) reporting its load in
//!   trailing metadata.
//! - [`rls`]: a rate limit service (Envoy RLS gRPC API) with fixed-window
//!   counting.
//! - [`scenario`]: YAML scenarios (config, backends with events, traffic
//!   phases, assertions), replay of access-log recordings, and the report.

pub mod backend;
pub mod bench;
pub mod collector;
pub mod control;
pub mod discovery;
pub mod envoy;
pub mod grpc_backend;
pub mod paths;
pub mod replay;
pub mod rls;
pub mod scenario;
pub mod server;
pub mod traffic;
