//! The ABI's enums as the emulator speaks them (the same values as
//! proxy-wasm 0.2.5's `types`), defined here so the emulator does not link
//! the `proxy-wasm` crate: a module built on the Switchyard SDK exports its
//! own callbacks, and two sets would clash.

#![allow(missing_docs)] // the ABI's own names; see proxy-wasm's spec.

/// Log levels (`proxy_log`, `proxy_get_log_level`).
#[derive(Copy, Clone, Eq, PartialEq, Hash, Debug, PartialOrd, Ord)]
#[repr(u32)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// What a stream callback answered.
#[derive(Copy, Clone, Eq, PartialEq, Hash, Debug)]
#[repr(u32)]
pub enum Action {
    Continue = 0,
    Pause = 1,
}

/// Host call statuses.
#[derive(Copy, Clone, Eq, PartialEq, Hash, Debug)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
}

/// Metric kinds (`proxy_define_metric`).
#[derive(Copy, Clone, Eq, PartialEq, Hash, Debug)]
#[repr(u32)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}
