//! The byte formats proxy-wasm 0.2.5 uses on the ABI: header maps and
//! property paths. Parsing never panics: input comes from the module.

/// A header map as Envoy holds it: ordered, keys lower-case, values raw bytes.
pub(crate) type HeaderMap = Vec<(String, Vec<u8>)>;

/// `u32` count, then `(key_len, value_len)` pairs as `u32`, then each key and
/// value followed by a NUL byte; all little-endian (proxy-wasm `serialize_map`).
pub(crate) fn serialize_map<K: AsRef<[u8]>, V: AsRef<[u8]>>(map: &[(K, V)]) -> Vec<u8> {
    let size = 4 + map
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 10)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&len32(map.len()).to_le_bytes());
    for (key, value) in map {
        out.extend_from_slice(&len32(key.as_ref().len()).to_le_bytes());
        out.extend_from_slice(&len32(value.as_ref().len()).to_le_bytes());
    }
    for (key, value) in map {
        out.extend_from_slice(key.as_ref());
        out.push(0);
        out.extend_from_slice(value.as_ref());
        out.push(0);
    }
    out
}

/// Inverse of [`serialize_map`]; `None` when the bytes are malformed. Keys
/// that are not UTF-8 are converted lossily (Envoy rejects them anyway).
pub(crate) fn deserialize_map(bytes: &[u8]) -> Option<HeaderMap> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)? as usize;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    if data > bytes.len() {
        return None;
    }
    let mut map = Vec::with_capacity(count);
    for n in 0..count {
        let sizes = 4 + n * 8;
        let key_len = read_u32(bytes, sizes)? as usize;
        let value_len = read_u32(bytes, sizes + 4)? as usize;
        let key = bytes.get(data..data.checked_add(key_len)?)?;
        data += key_len + 1;
        let value = bytes.get(data..data.checked_add(value_len)?)?;
        data += value_len + 1;
        map.push((String::from_utf8_lossy(key).into_owned(), value.to_vec()));
    }
    Some(map)
}

/// A property path as proxy-wasm sends it: segments joined by NUL bytes.
pub(crate) fn property_key(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
}

/// Header names are case-insensitive; Envoy stores them lower-case.
pub(crate) fn lower(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(raw))
}

// Maps and values beyond 4 GiB cannot cross a 32-bit ABI; saturate instead of
// wrapping so a (theoretical) oversize map fails to parse rather than lies.
fn len32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_round_trip_matches_proxy_wasm_layout() {
        let map = vec![
            (":method".to_string(), b"GET".to_vec()),
            ("x-bin".to_string(), vec![0xff, 0x00, 0x7f]),
        ];
        let bytes = serialize_map(&map);
        assert_eq!(&bytes[..4], &2u32.to_le_bytes());
        assert_eq!(&bytes[4..12], &[7, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(deserialize_map(&bytes), Some(map));
        assert_eq!(deserialize_map(&[]), Some(vec![]));
    }

    #[test]
    fn malformed_maps_are_rejected_not_panicking() {
        assert_eq!(deserialize_map(&[1, 0, 0]), None);
        assert_eq!(deserialize_map(&[1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(deserialize_map(&[0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn property_paths_join_with_nul() {
        assert_eq!(
            property_key(&["request", "path"]),
            b"request\0path".to_vec()
        );
        assert_eq!(property_key(&["plugin_name"]), b"plugin_name".to_vec());
    }
}
