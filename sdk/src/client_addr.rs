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

/// The address part of Envoy's `source.address` (`ip:port`, `[v6]:port`,
/// or either without the port), exactly as Envoy wrote it: an IPv6 zone
/// stays (`[fe80::1%4]:0` → `fe80::1%4`, which Envoy's access log prints
/// too). `None` unless it is an IP address.
pub fn host_of(address: &str) -> Option<&str> {
    let s = address.trim();
    let host = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let tail = &rest[end + 1..];
        if !(tail.is_empty() || tail.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        &rest[..end]
    } else if is_ip(s) {
        s
    } else {
        let (host, port) = s.rsplit_once(':')?;
        if !is_port(port) || host.contains(':') {
            return None;
        }
        host
    };
    is_ip(host).then_some(host)
}

fn is_port(p: &str) -> bool {
    p.parse::<u16>().is_ok()
}

/// An IPv4 or IPv6 address, an IPv6 zone (`%eth0`, `%4`) allowed.
fn is_ip(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() {
        return true;
    }
    match s.split_once('%') {
        Some((ip, zone)) => {
            !zone.is_empty()
                && zone
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && ip.parse::<std::net::Ipv6Addr>().is_ok()
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn address_forms() {
        assert_eq!(host_of("10.0.0.9:5555"), Some("10.0.0.9"));
        assert_eq!(host_of(" 7.7.7.7 "), Some("7.7.7.7"));
        assert_eq!(host_of("[::1]:80"), Some("::1"));
        assert_eq!(host_of("::1"), Some("::1"));
        assert_eq!(host_of("[2001:db8::1]"), Some("2001:db8::1"));
        // Issue 12, item 3: a scoped client (found in real Envoy: the
        // record's client_address was null and every scoped client shared
        // one rate-limit bucket). Envoy prints the zone; so do we.
        assert_eq!(host_of("[fe80::1%4]:0"), Some("fe80::1%4"));
        assert_eq!(host_of("fe80::1%eth0"), Some("fe80::1%eth0"));
        assert_eq!(host_of("1.2.3.4:99999"), None);
        assert_eq!(host_of("not-an-ip"), None);
        assert_eq!(host_of("not-an-ip:80"), None);
        assert_eq!(host_of("[::1"), None);
        assert_eq!(host_of("[::1]x"), None);
        assert_eq!(host_of("1.2.3.4%4"), None, "zones are IPv6 only");
        assert_eq!(host_of("fe80::1%"), None);
        assert_eq!(host_of(""), None);
    }
}
