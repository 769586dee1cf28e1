//! Switchyard integration harness: real Envoy, real backends, real traffic.
//!
//! - [`envoy`]: start Envoy from a config template, in Docker or as a native
//!   process, wait until ready, read stats and logs, always clean up.
//! - [`backend`]: loopback backends (HTTP/1.1, or unary gRPC over HTTP/2 with
//!   reports in the trailers) with configurable latency, errors, capacity, an
//!   antagonist taking capacity, crashes; they report their load in Envoy's
//!   ORCA formats, requests in flight included.
//! - [`discovery`]: a scripted server: endpoint-discovery source and an
//!   upstream with byte-exact (e.g. malformed) headers, restartable on its port.
//! - [`traffic`]: a traffic driver that returns status, backend and latency
//!   distributions.
//! - [`lb_matrix`]: the load-balancing quality matrix of `make bench`
//!   (policies × scenarios with several proxies, antagonists, crashes, gRPC).
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
pub mod instructions;
pub mod lb_matrix;
pub mod package;
pub mod paths;
pub mod replay;
pub mod rls;
pub mod scenario;
pub mod server;
pub mod tls;
pub mod traffic;
pub mod try_config;
