//! The proxy-wasm wire formats: header maps and property paths.
//!
//! A header map is `u32 count`, then `count` pairs of `u32 key_len, u32
//! value_len`, then each key and value followed by a NUL byte; all integers
//! little-endian. Decoding never trusts the lengths: a malformed buffer from
//! the host yields `None`, not a panic.

/// Serialises header pairs.
pub fn encode_map<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let data: usize = pairs
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 2)
        .sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    // invariant: `get` returned exactly 4 bytes.
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Parses a serialised header map. Keys are returned lossily as UTF-8 (Envoy
/// only admits token characters in names); values stay bytes because clients
/// can send anything there.
pub fn decode_map(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let spans = decode_map_spans(bytes)?;
    Some(
        spans
            .iter()
            .map(|s| {
                let key = bytes.get(s[0]..s[1]).unwrap_or_default();
                let value = bytes.get(s[2]..s[3]).unwrap_or_default();
                (String::from_utf8_lossy(key).into_owned(), value.to_vec())
            })
            .collect(),
    )
}

/// Where the pairs of a serialised header map lie in `bytes`: per pair,
/// name start, name end, value start, value end. `None` when the count,
/// a length or the total does not fit `bytes`. Layout (proxy-wasm ABI): a
/// u32 count, then a u32 name length and a u32 value length per pair, then
/// each name and value followed by a NUL.
pub fn decode_map_spans(bytes: &[u8]) -> Option<Vec<[usize; 4]>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)?;
    // Each pair needs at least 10 bytes: a bound on `count` before allocating.
    if count > bytes.len() / 10 {
        return None;
    }
    let mut spans = Vec::with_capacity(count);
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    for i in 0..count {
        let klen = read_u32(bytes, 4 + i * 8)?;
        let vlen = read_u32(bytes, 8 + i * 8)?;
        let key_end = data.checked_add(klen)?;
        let value_start = key_end.checked_add(1)?;
        let value_end = value_start.checked_add(vlen)?;
        spans.push([data, key_end, value_start, value_end]);
        data = value_end.checked_add(1)?;
    }
    (data <= bytes.len()).then_some(spans)
}

/// Serialises a property path (`["xds", "route_name"]`) as NUL-joined segments.
pub fn encode_path(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn map_round_trip_keeps_arbitrary_value_bytes() {
        let pairs: Vec<(&str, &[u8])> =
            vec![(":path", b"/a"), ("x-bin", b"\xff\x00\r\n"), ("empty", b"")];
        let decoded = decode_map(&encode_map(&pairs)).unwrap();
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[1].0, "x-bin");
        assert_eq!(decoded[1].1, b"\xff\x00\r\n");
        assert_eq!(decoded[2].1, b"");
    }

    #[test]
    fn empty_buffer_is_an_empty_map() {
        assert_eq!(decode_map(&[]).unwrap().len(), 0);
        assert_eq!(decode_map(&encode_map::<&str, &str>(&[])).unwrap().len(), 0);
    }

    #[test]
    fn malformed_maps_are_rejected_not_panicking() {
        let good = encode_map(&[("k", "v")]);
        for cut in 1..good.len() {
            assert!(decode_map(&good[..cut]).is_none(), "cut at {cut}");
        }
        // A huge count with a tiny buffer.
        assert!(decode_map(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).is_none());
        // Lengths that overflow.
        let mut bad = vec![1, 0, 0, 0];
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        bad.extend_from_slice(&[0; 8]);
        assert!(decode_map(&bad).is_none());
    }

    #[test]
    fn path_is_nul_joined() {
        assert_eq!(encode_path(&["xds", "route_name"]), b"xds\0route_name");
        assert_eq!(encode_path(&["source", "address"]), b"source\0address");
    }
}
