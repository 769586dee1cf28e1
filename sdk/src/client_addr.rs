//! Which address is the client's: the one Envoy itself determined.
//!
//! Envoy's HTTP connection manager decides the downstream address once per
//! request and exposes it as the `source.address` attribute; its own RBAC,
//! rate-limit descriptors and access logs use the same value. Switchyard's
//! stages read that value and never walk `X-Forwarded-For` themselves: a
//! second walk disagrees with Envoy in some topology (with
//! `use_remote_address: true` and a loopback peer, Envoy appends its *own*
//! address to XFF, so "the last entry is the peer" is false) and applies the
//! hop count twice in others.
//!
//! How to configure Envoy (HCM fields; Envoy's "IP address detection" and
//! `config_http_conn_man_headers_x-forwarded-for` docs):
//! - Edge (clients connect to Envoy directly): `use_remote_address: true`,
//!   `xff_num_trusted_hops: 0`. The client is the TCP peer.
//! - Behind N proxies you operate that append to XFF (TLS terminator, cloud
//!   load balancer, sidecar): `use_remote_address: true`,
//!   `xff_num_trusted_hops: N`. The client is the N-th XFF entry from the
//!   right, as Envoy received it.
//! - `use_remote_address: false` (Envoy's default) takes the client from XFF
//!   even when nothing trusted wrote it: a directly connected client chooses
//!   its own address. Use it only when every request passes a proxy you
//!   operate.
//!
//! The filters' former `trusted_hops` setting is refused when non-zero
//! ([`TRUSTED_HOPS_MOVED`]): the hop count belongs to Envoy.

use std::net::IpAddr;

/// The configuration error for a non-zero `trusted_hops` in a filter.
pub const TRUSTED_HOPS_MOVED: &str = "must be 0: the client address is the one Envoy determines \
     (source.address); set use_remote_address: true and xff_num_trusted_hops: N on the HTTP \
     connection manager instead";

/// Parses `ip`, `ip:port`, `[v6]:port` or `[v6]` into an IP address.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        return rest[..end].parse().ok();
    }
    // `a.b.c.d:port` (a bare v6 address parsed above).
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn address_forms() {
        assert_eq!(parse_ip("10.0.0.9:5555"), ip("10.0.0.9"));
        assert_eq!(parse_ip(" 7.7.7.7 "), ip("7.7.7.7"));
        assert_eq!(parse_ip("[::1]:80"), ip("::1"));
        assert_eq!(parse_ip("::1"), ip("::1"));
        assert_eq!(parse_ip("[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(parse_ip("1.2.3.4:99999"), None);
        assert_eq!(parse_ip("not-an-ip"), None);
        assert_eq!(parse_ip("[::1"), None);
        assert_eq!(parse_ip(""), None);
    }
}
