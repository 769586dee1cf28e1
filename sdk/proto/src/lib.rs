//! Protobuf messages used by Switchyard filters and the test harness.
//!
//! Generated at build time by `prost-build` from the `.proto` files under
//! `proto/`, so the filters (wasm) and the harness (native) share one
//! definition of every message on the wire.

/// `xds.data.orca.v3`: the ORCA load report backends send in
/// `endpoint-load-metrics-bin` / `endpoint-load-metrics: BIN ...`.
pub mod orca {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/xds.data.orca.v3.rs"));
}

pub use prost::Message;
