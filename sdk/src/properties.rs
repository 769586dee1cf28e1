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

/// How an Envoy attribute a batched read may carry is encoded
/// ([Envoy's attribute reference](https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/advanced/attributes)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    /// `string`: raw bytes, as `proxy_get_property` returns them.
    Text,
    /// `int`, `uint` or `timestamp`: 8 bytes little-endian (a timestamp in
    /// ns since the epoch), as `proxy_get_property` returns them.
    Int,
}

/// The type of an attribute that [`batch_expression`] may read; `None` for
/// the rest (bytes, maps, messages, metadata).
pub fn attribute_type(path: &[&str]) -> Option<AttrType> {
    use AttrType::{Int, Text};
    Some(match path {
        [
            "request",
            "path" | "url_path" | "host" | "scheme" | "method" | "referer",
        ]
        | ["request", "useragent" | "id" | "protocol" | "query"]
        | ["response", "code_details"]
        | [
            "connection",
            "requested_server_name" | "tls_version" | "termination_details",
        ]
        | [
            "upstream",
            "address" | "transport_failure_reason" | "local_address",
        ]
        | ["source" | "destination", "address"]
        | ["xds", "cluster_name" | "route_name" | "virtual_host_name"] => Text,
        ["request", "size" | "total_size" | "time"]
        | [
            "response",
            "code" | "flags" | "grpc_status" | "size" | "total_size",
        ]
        | ["connection", "id"]
        | ["upstream", "port"]
        | ["source" | "destination", "port"] => Int,
        _ => return None,
    })
}

/// One CEL expression reading every path: a list with, per path, a list of
/// the attribute or an empty list when Envoy has none (`has()`), so that one
/// absent attribute does not fail the others (Envoy cannot serialise a
/// `null`). `None` when a path is not an [`attribute_type`] (its segments
/// are then not known CEL identifiers). Evaluated by Envoy's
/// `expr_evaluate` foreign function.
pub fn batch_expression(paths: &[&[&str]]) -> Option<String> {
    let mut out = String::from("[");
    for (i, path) in paths.iter().enumerate() {
        attribute_type(path)?;
        let dotted = path.join(".");
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&format!("has({dotted}) ? [{dotted}] : []"));
    }
    out.push(']');
    Some(out)
}

/// Decodes the answer to a [`batch_expression`]. Envoy serialises a CEL
/// list like a header map (`crate::wire`): per element, the element's own
/// serialisation as the name and an empty value; an element is serialised
/// as `proxy_get_property` would (strings raw, integers and timestamps 8
/// bytes little-endian), a nested list the same way again. Returns each
/// value in that encoding, `None` for an absent one; `None` overall when the
/// answer does not match the paths (count, shape or an integer's size), so
/// the caller reads them one by one instead.
pub fn decode_batch(bytes: &[u8], paths: &[&[&str]]) -> Option<Vec<Option<Vec<u8>>>> {
    let elements = list_elements(bytes)?;
    if elements.len() != paths.len() {
        return None;
    }
    elements
        .into_iter()
        .zip(paths)
        .map(|(element, path)| match list_elements(element)?.as_slice() {
            [] => Some(None),
            [value] => match attribute_type(path)? {
                AttrType::Int if value.len() != 8 => None,
                _ => Some(Some(value.to_vec())),
            },
            _ => None,
        })
        .collect()
}

/// A serialised CEL list's elements (empty bytes: an empty list).
fn list_elements(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    crate::wire::decode_map_spans(bytes)?
        .into_iter()
        .map(|[ks, ke, vs, ve]| (vs == ve).then(|| bytes.get(ks..ke)).flatten())
        .collect()
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

    /// A CEL list as Envoy serialises one: like a header map whose names are
    /// the elements.
    fn list(elements: &[&[u8]]) -> Vec<u8> {
        crate::wire::encode_map(&elements.iter().map(|e| (*e, &b""[..])).collect::<Vec<_>>())
    }

    #[test]
    fn a_batch_reads_strings_integers_and_absent_values() {
        let paths: [&[&str]; 3] = [
            &["request", "protocol"],
            &["response", "flags"],
            &["xds", "route_name"],
        ];
        assert_eq!(
            batch_expression(&paths).unwrap(),
            "[has(request.protocol) ? [request.protocol] : [], \
             has(response.flags) ? [response.flags] : [], \
             has(xds.route_name) ? [xds.route_name] : []]"
        );
        let flags = 0x800i64.to_le_bytes();
        let answer = list(&[&list(&[b"HTTP/1.1"]), &list(&[&flags]), &list(&[])]);
        assert_eq!(
            decode_batch(&answer, &paths).unwrap(),
            vec![Some(b"HTTP/1.1".to_vec()), Some(flags.to_vec()), None]
        );
        // An empty list may also come as no bytes at all.
        let answer = list(&[&list(&[b""]), &list(&[&flags]), b""]);
        assert_eq!(
            decode_batch(&answer, &paths).unwrap(),
            vec![Some(Vec::new()), Some(flags.to_vec()), None]
        );
        // Wrong count, an integer that is not 8 bytes, two values, a value
        // where a name belongs, garbage: the caller reads one by one.
        assert_eq!(decode_batch(&answer, &paths[..2]), None);
        let short = list(&[&list(&[b"x"]), &list(&[b"1"]), b""]);
        assert_eq!(decode_batch(&short, &paths), None);
        let two = list(&[&list(&[b"a", b"b"]), &list(&[&flags]), b""]);
        assert_eq!(decode_batch(&two, &paths), None);
        let valued = crate::wire::encode_map(&[("a", "b"), ("c", ""), ("", "")]);
        assert_eq!(decode_batch(&valued, &paths), None);
        assert_eq!(decode_batch(b"\xff\xff", &paths), None);
        // Bytes and metadata are not batched.
        assert_eq!(
            batch_expression(&[&["connection", "dns_san_peer_certificate"]]),
            None
        );
        assert_eq!(batch_expression(&[&["metadata", "a.b"]]), None);
    }

    #[test]
    fn integers_are_8_byte_le() {
        assert_eq!(decode_i64(&200i64.to_le_bytes()), Some(200));
        assert_eq!(decode_i64(&(-1i64).to_le_bytes()), Some(-1));
        assert_eq!(decode_i64(b"200"), None);
    }
}
