//! Host status codes and the error carrying them (no host calls here, so
//! pure code can name them).

use std::fmt;

/// A status other than Ok from the host (or an unreadable answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError {
    /// The ABI function that failed, e.g. `proxy_set_shared_data`.
    pub call: &'static str,
    /// The proxy-wasm status code.
    pub status: u32,
}

/// proxy-wasm status codes, as `u32` so unknown values stay representable.
pub mod code {
    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const BAD_ARGUMENT: u32 = 2;
    pub const SERIALIZATION_FAILURE: u32 = 3;
    pub const PARSE_FAILURE: u32 = 4;
    pub const EMPTY: u32 = 7;
    pub const CAS_MISMATCH: u32 = 8;
    pub const INTERNAL_FAILURE: u32 = 10;
    pub const UNIMPLEMENTED: u32 = 12;
}

impl HostError {
    pub fn status_name(&self) -> &'static str {
        match self.status {
            code::NOT_FOUND => "NotFound",
            code::BAD_ARGUMENT => "BadArgument",
            code::SERIALIZATION_FAILURE => "SerializationFailure",
            code::PARSE_FAILURE => "ParseFailure",
            code::EMPTY => "Empty",
            code::CAS_MISMATCH => "CasMismatch",
            code::INTERNAL_FAILURE => "InternalFailure",
            code::UNIMPLEMENTED => "Unimplemented",
            _ => "Unknown",
        }
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed: {} ({})",
            self.call,
            self.status_name(),
            self.status
        )
    }
}

impl std::error::Error for HostError {}

pub type HostResult<T> = Result<T, HostError>;
