//! A native host for proxy-wasm filters: the proxy-wasm ABI 0.2.1 imports
//! (`proxy_log`, `proxy_get_header_map_value`, ...) implemented as plain
//! `#[no_mangle]` Rust functions, so a filter written with the `proxy-wasm`
//! crate runs through proxy-wasm's real dispatcher inside `cargo test`,
//! with Envoy's semantics where they matter (see the README for limits).
//!
//! ```ignore
//! let host = Host::new(my_filter::_initialize).plugin_config(r#"{"limit":1}"#).build();
//! let worker = host.start_worker();
//! assert!(worker.configured());
//! let stream = worker.http_stream();
//! assert_eq!(stream.request_headers(&[(":path", "/"), (":method", "GET")], true), Action::Continue);
//! assert_eq!(stream.request_header("x-added").as_deref(), Some("yes"));
//! stream.finish();
//! ```
//!
//! Model: a [`Host`] is one Envoy process (shared data, queues, metrics,
//! clock, logs, callouts); each [`Worker`] is one Envoy worker thread with
//! its own VM (proxy-wasm's dispatcher is thread-local); a [`Stream`] is one
//! HTTP stream on a worker.
//!
//! Linking: the host functions live in this crate; a test binary links them
//! when it uses this crate. A filter's own unit tests that run filter code
//! without naming the emulator need it linked too: add
//! `#[cfg(test)] use switchyard_emulator as _;` to the filter crate (with the
//! emulator as a dev-dependency).
//!
//! A filter panic fails the call that ran it, with the panic message, and
//! kills only that worker's VM (see [`Worker::crash_message`]).

#![warn(missing_docs)]

mod abi;
mod host;
mod types;
mod vm;
mod wire;
mod worker;

pub use host::{GrpcCall, GrpcStream, Host, HostBuilder, HostFailure, HttpCall, LogRecord};
pub use types::{Action, LogLevel, MetricType, Status};
pub use vm::{Crossing, LocalResponse};
pub use worker::{CallOutcome, Crossings, GrpcOutcome, GrpcStreamEvent, Stream, Worker};
