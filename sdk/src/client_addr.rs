//! Which address is the client's.
//!
//! Every proxy in front of Envoy appends the address it received the request
//! from to `X-Forwarded-For`, so the entries are trustworthy only from the
//! right: the leftmost one is whatever the client wrote. With `trusted_hops`
//! proxies in front of Envoy that you operate, the client is the entry those
//! proxies saw, counted from the right.
//!
//! Envoy configuration this assumes (checked in real Envoy):
//! - HCM `use_remote_address: true` (the edge setting): then `source.address`
//!   is the TCP peer. The list considered is the XFF entries followed by the
//!   peer, unless Envoy already appended the peer (so `skip_xff_append` may
//!   be either), and the client is entry `trusted_hops` counted from the
//!   right, 0 being the peer.
//! - With Envoy's default `use_remote_address: false`, Envoy itself has
//!   already replaced `source.address` with an XFF entry (chosen by its
//!   `xff_num_trusted_hops`): use `trusted_hops: 0` here, or the hop count
//!   is applied twice and a forged entry can win.
//!
//! A list shorter than needed (the request bypassed the trusted proxies)
//! yields the leftmost available entry, which is the best anyone can know.

use std::net::IpAddr;

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

/// The client address given the peer address, the `X-Forwarded-For` value
/// and the number of trusted proxy hops in front of Envoy.
///
/// Unparseable XFF entries end the walk: a proxy we trust writes valid
/// addresses, so garbage means we reached the part the client wrote, and the
/// last good entry is used.
pub fn client_address(peer: Option<&str>, xff: Option<&[u8]>, trusted_hops: u32) -> Option<IpAddr> {
    let peer_ip = peer.and_then(parse_ip);
    if trusted_hops == 0 {
        return peer_ip;
    }
    let xff = xff.map(String::from_utf8_lossy).unwrap_or_default();
    let mut entries: Vec<&str> = xff
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    // Walk right to left: entry 0 is the peer.
    let mut hops: Vec<Option<IpAddr>> = Vec::with_capacity(entries.len() + 1);
    let last_is_peer = match (entries.last(), peer_ip) {
        (Some(last), Some(p)) => parse_ip(last) == Some(p),
        _ => false,
    };
    if !last_is_peer {
        hops.push(peer_ip);
    }
    entries.reverse();
    hops.extend(entries.iter().map(|e| parse_ip(e)));

    let mut best = None;
    for (i, hop) in hops.into_iter().enumerate() {
        match hop {
            Some(ip) => best = Some(ip),
            None => break,
        }
        if i as u32 == trusted_hops {
            break;
        }
    }
    best
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
    fn no_trusted_hops_means_the_peer() {
        let got = client_address(Some("10.0.0.9:5555"), Some(b"1.1.1.1, 2.2.2.2"), 0);
        assert_eq!(got, ip("10.0.0.9"));
    }

    #[test]
    fn one_trusted_hop_takes_what_that_proxy_appended() {
        // Client 7.7.7.7 forged "6.6.6.6"; proxy 10.0.0.9 appended 7.7.7.7.
        let got = client_address(Some("10.0.0.9:5555"), Some(b"6.6.6.6, 7.7.7.7"), 1);
        assert_eq!(got, ip("7.7.7.7"));
    }

    #[test]
    fn same_answer_when_envoy_appended_the_peer_itself() {
        let got = client_address(
            Some("10.0.0.9:5555"),
            Some(b"6.6.6.6, 7.7.7.7, 10.0.0.9"),
            1,
        );
        assert_eq!(got, ip("7.7.7.7"));
    }

    #[test]
    fn two_trusted_hops() {
        let got = client_address(Some("10.0.0.2:1"), Some(b"6.6.6.6,7.7.7.7,10.0.0.1"), 2);
        assert_eq!(got, ip("7.7.7.7"));
    }

    #[test]
    fn forged_leftmost_entries_never_win() {
        for forged in ["1.2.3.4", "1.2.3.4, 5.6.7.8", "9.9.9.9,8.8.8.8,1.1.1.1"] {
            let xff = format!("{forged}, 7.7.7.7");
            let got = client_address(Some("10.0.0.9:1"), Some(xff.as_bytes()), 1);
            assert_eq!(got, ip("7.7.7.7"), "{xff}");
        }
    }

    #[test]
    fn short_list_uses_what_exists() {
        assert_eq!(client_address(Some("10.0.0.9:1"), None, 1), ip("10.0.0.9"));
        assert_eq!(
            client_address(Some("10.0.0.9:1"), Some(b"7.7.7.7"), 3),
            ip("7.7.7.7")
        );
    }

    #[test]
    fn garbage_stops_the_walk() {
        let got = client_address(Some("10.0.0.9:1"), Some(b"7.7.7.7, not-an-ip"), 2);
        assert_eq!(got, ip("10.0.0.9"));
    }

    #[test]
    fn ipv6_forms() {
        assert_eq!(parse_ip("[::1]:80"), ip("::1"));
        assert_eq!(parse_ip("::1"), ip("::1"));
        assert_eq!(parse_ip("[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(parse_ip("1.2.3.4:99999"), None);
        let got = client_address(Some("[::1]:9"), Some(b"2001:db8::7"), 1);
        assert_eq!(got, ip("2001:db8::7"));
    }
}
