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
    use crate::host;

    /// A string attribute; `None` when absent, not UTF-8, or unreadable.
    pub fn string(path: &[&str]) -> Option<String> {
        host::property(path)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
    }

    /// This plugin's name, as configured in Envoy.
    pub fn plugin_name() -> Option<String> {
        string(&["plugin_name"])
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
