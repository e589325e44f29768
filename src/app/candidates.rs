//! The client's own addresses (LAN candidates), which it tells the server so that a peer
//! behind the same NAT can reach it without going through the router (see "Across NATs"
//! in [`crate::wire`]).
//!
//! They are the addresses of the host's network interfaces (`getifaddrs`: this reads the
//! list, it sends nothing), of the server's address family, with the socket's port; never
//! loopback, and none at all when the server is on loopback (a test or a single machine,
//! where the addresses of the host's real interfaces must not be handed out).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::registry::usable_candidate;
use crate::wire::MAX_CANDIDATES;

/// The candidates to tell the server, for a socket bound to `local` talking to `server`.
/// `chosen` is what the person gave (`--candidates`): `None` gathers them, `Some` is the
/// list to use (ports of 0 become the socket's port).
pub fn candidates(
    chosen: Option<&[SocketAddr]>,
    server: SocketAddr,
    local: SocketAddr,
) -> Vec<SocketAddr> {
    let mut list: Vec<SocketAddr> = match chosen {
        Some(list) => list
            .iter()
            .map(|a| match a.port() {
                0 => SocketAddr::new(a.ip(), local.port()),
                _ => *a,
            })
            .collect(),
        None if server.ip().is_loopback() => Vec::new(),
        None if !local.ip().is_unspecified() => vec![local],
        None => interface_addresses()
            .into_iter()
            .filter(|ip| ip.is_ipv4() == server.is_ipv4())
            .map(|ip| SocketAddr::new(ip, local.port()))
            .collect(),
    };
    list.retain(usable_candidate);
    list.dedup();
    list.truncate(MAX_CANDIDATES);
    list
}

/// The addresses of the host's interfaces that are up (empty if they cannot be read).
fn interface_addresses() -> Vec<IpAddr> {
    let mut found = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return found;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            let up = ifa.ifa_flags & (libc::IFF_UP as libc::c_uint) != 0;
            if ifa.ifa_addr.is_null() || !up {
                continue;
            }
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    found.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))));
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    found.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        libc::freeifaddrs(head);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_loopback_server_gets_no_candidates_and_a_given_list_gets_the_socket_port() {
        let local = addr("0.0.0.0:4567");
        assert!(candidates(None, addr("127.0.0.1:7070"), local).is_empty());
        let given = [
            addr("192.168.1.2:0"),
            addr("127.0.0.1:0"),
            addr("10.0.0.1:99"),
        ];
        assert_eq!(
            candidates(Some(&given), addr("127.0.0.1:7070"), local),
            vec![addr("192.168.1.2:4567"), addr("10.0.0.1:99")]
        );
        assert!(candidates(Some(&[]), addr("198.51.100.1:7070"), local).is_empty());
        // A socket bound to one address: that address.
        let bound = addr("192.168.1.2:4567");
        assert_eq!(
            candidates(None, addr("198.51.100.1:7070"), bound),
            vec![bound]
        );
    }
}
