//! Collects [`Facts`] from Envoy at `on_log`: both header maps (as bytes)
//! and the stream's attributes.

use crate::record::Facts;
use std::time::UNIX_EPOCH;
use switchyard_sdk::client_addr;
use switchyard_sdk::http::{REQUEST, RESPONSE};
use switchyard_sdk::properties;

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn non_negative(v: Option<i64>) -> Option<u64> {
    v.and_then(|n| u64::try_from(n).ok())
}

pub fn collect(trusted_hops: u32) -> Facts {
    let request_headers = REQUEST.all();
    let response_headers = RESPONSE.all();
    let peer = properties::source_address();
    let xff = request_headers
        .iter()
        .find(|(k, _)| k == "x-forwarded-for")
        .map(|(_, v)| v.as_slice());
    let client_address = client_addr::client_address(peer.as_deref(), xff, trusted_hops);
    Facts {
        start_time_ns: properties::request_time()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(nanos),
        duration_ns: properties::request_duration().map(nanos),
        protocol: properties::string(&["request", "protocol"]),
        response_code: properties::response_code(),
        response_flags: properties::response_flags(),
        response_code_details: properties::response_code_details(),
        bytes_received: non_negative(properties::int(&["request", "size"])),
        bytes_sent: non_negative(properties::int(&["response", "size"])),
        upstream_host: properties::upstream_address(),
        upstream_cluster: properties::cluster_name(),
        route_name: properties::route_name(),
        downstream_remote_address: peer,
        client_address,
        request_headers,
        response_headers,
    }
}
