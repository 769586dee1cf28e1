//! The attributes Envoy has for a proxied GET, so crossing counts include
//! the allocation Envoy makes for every property it returns.

use switchyard_emulator::Stream;

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// What Envoy knows when the request headers arrive.
pub fn set(s: &Stream) {
    // The demo's Envoy (`use_remote_address`, `xff_num_trusted_hops: 1`)
    // takes the client from the `x-forwarded-for: 7.7.7.7` the tests send;
    // an address from XFF has port 0.
    s.set_property(&["source", "address"], "7.7.7.7:0");
    s.set_property(&["request", "time"], int(1_764_480_000_000_000_000));
    s.set_property(&["request", "protocol"], "HTTP/1.1");
    s.set_property(&["xds", "route_name"], "routed");
}

/// What Envoy adds once the upstream answered.
pub fn set_response(s: &Stream) {
    s.set_property(&["request", "size"], int(0));
    s.set_property(&["request", "duration"], int(1_200_000));
    s.set_property(&["response", "size"], int(2));
    s.set_property(&["response", "flags"], int(0));
    s.set_property(&["response", "code_details"], "via_upstream");
    s.set_property(&["xds", "cluster_name"], "backend");
}
