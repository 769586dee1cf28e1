//! Typed access to Envoy's request and connection attributes.
//!
//! Envoy encodes string attributes as raw bytes, integers as 8-byte
//! little-endian, durations and timestamps as nanoseconds. Route and cluster
//! names live under `xds` since Envoy 1.33.

#[cfg(feature = "host")]
pub use accessors::*;

/// Decodes an integer attribute (8 bytes, little-endian).
pub fn decode_i64(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(feature = "host")]
mod accessors {
    use super::decode_i64;
    use crate::host;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// A string attribute; `None` when absent, not UTF-8, or unreadable.
    pub fn string(path: &[&str]) -> Option<String> {
        host::property(path)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
    }

    /// An integer attribute.
    pub fn int(path: &[&str]) -> Option<i64> {
        decode_i64(&host::property(path).ok().flatten()?)
    }

    /// `source.address`: the downstream peer, `ip:port`.
    pub fn source_address() -> Option<String> {
        string(&["source", "address"])
    }

    /// `destination.address`: the local address the request arrived on.
    pub fn destination_address() -> Option<String> {
        string(&["destination", "address"])
    }

    /// `request.id` (x-request-id).
    pub fn request_id() -> Option<String> {
        string(&["request", "id"])
    }

    /// `upstream.address`: the upstream host that served the request.
    pub fn upstream_address() -> Option<String> {
        string(&["upstream", "address"])
    }

    /// `response.code`.
    pub fn response_code() -> Option<u16> {
        int(&["response", "code"]).and_then(|c| u16::try_from(c).ok())
    }

    /// `response.flags`: Envoy's response-flag bit set.
    pub fn response_flags() -> Option<u64> {
        int(&["response", "flags"]).and_then(|f| u64::try_from(f).ok())
    }

    /// `response.code_details`.
    pub fn response_code_details() -> Option<String> {
        string(&["response", "code_details"])
    }

    /// `request.duration`: time from first downstream byte to the last.
    pub fn request_duration() -> Option<Duration> {
        int(&["request", "duration"])
            .and_then(|ns| u64::try_from(ns).ok())
            .map(Duration::from_nanos)
    }

    /// `request.time`: when the first downstream byte arrived.
    pub fn request_time() -> Option<SystemTime> {
        int(&["request", "time"])
            .and_then(|ns| u64::try_from(ns).ok())
            .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns))
    }

    /// `request.total_size`, `response.total_size`: bytes including headers.
    pub fn request_size() -> Option<u64> {
        int(&["request", "total_size"]).and_then(|n| u64::try_from(n).ok())
    }

    pub fn response_size() -> Option<u64> {
        int(&["response", "total_size"]).and_then(|n| u64::try_from(n).ok())
    }

    /// The matched route's name (`xds.route_name`).
    pub fn route_name() -> Option<String> {
        string(&["xds", "route_name"])
    }

    /// The upstream cluster's name (`xds.cluster_name`).
    pub fn cluster_name() -> Option<String> {
        string(&["xds", "cluster_name"])
    }

    /// This plugin's name and root id, as configured in Envoy.
    pub fn plugin_name() -> Option<String> {
        string(&["plugin_name"])
    }

    pub fn plugin_root_id() -> Option<String> {
        string(&["plugin_root_id"])
    }

    /// The VM id (the scope of shared data and queues).
    pub fn plugin_vm_id() -> Option<String> {
        string(&["plugin_vm_id"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn integers_are_8_byte_le() {
        assert_eq!(decode_i64(&200i64.to_le_bytes()), Some(200));
        assert_eq!(decode_i64(&(-1i64).to_le_bytes()), Some(-1));
        assert_eq!(decode_i64(b"200"), None);
    }
}
