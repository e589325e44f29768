//! A NAT model for the simulated network (RFC 4787's terms): a router with one public IP
//! in front of a LAN of peers.
//!
//! - Mapping: endpoint-independent (one public port per inside address, kept when free,
//!   like Linux masquerade) or address-and-port-dependent ("symmetric": a new public port
//!   for every destination).
//! - Filtering: address-and-port-dependent (only replies: a datagram from `R` reaches a
//!   mapping only if the mapping has sent to `R`), or endpoint-independent (anyone may use
//!   an open mapping, a "full cone").
//! - No hairpin: a datagram from inside to the router's own public IP is dropped.
//!
//! Peers behind the same router reach each other directly on their LAN (their inside
//! addresses).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

/// How a router maps and filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping, address-and-port-dependent filtering (a home router).
    Home,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Address-and-port-dependent mapping and filtering.
    Symmetric,
}

#[derive(Debug)]
pub struct Nat {
    pub public: IpAddr,
    pub kind: NatKind,
    /// (inside address, destination for a symmetric NAT) -> public port.
    mappings: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// Public port -> inside address.
    inside: HashMap<u16, SocketAddr>,
    /// (public port, remote) pairs that have sent out: the replies let in.
    opened: HashSet<(u16, SocketAddr)>,
    next_port: u16,
    /// Datagrams dropped by the filter, and to the router's own address from inside.
    pub filtered: u64,
    pub hairpin_dropped: u64,
}

impl Nat {
    pub fn new(public: IpAddr, kind: NatKind) -> Nat {
        Nat {
            public,
            kind,
            mappings: HashMap::new(),
            inside: HashMap::new(),
            opened: HashSet::new(),
            next_port: 20_000,
            filtered: 0,
            hairpin_dropped: 0,
        }
    }

    /// A datagram from `from` (inside) to `to` (outside) leaves with this source.
    pub fn outbound(&mut self, from: SocketAddr, to: SocketAddr) -> SocketAddr {
        let key = match self.kind {
            NatKind::Symmetric => (from, Some(to)),
            NatKind::Home | NatKind::FullCone => (from, None),
        };
        let port = match self.mappings.get(&key) {
            Some(&p) => p,
            None => {
                // Keep the inside port when it is free (masquerade does), else the next.
                let mut p = if self.kind == NatKind::Symmetric {
                    self.next_port
                } else {
                    from.port()
                };
                while self.inside.contains_key(&p) || p == 0 {
                    p = self.next_port;
                    self.next_port = self.next_port.wrapping_add(1).max(1024);
                }
                if self.kind == NatKind::Symmetric {
                    self.next_port = p.wrapping_add(7).max(1024);
                }
                self.mappings.insert(key, p);
                self.inside.insert(p, from);
                p
            }
        };
        self.opened.insert((port, to));
        SocketAddr::new(self.public, port)
    }

    /// A datagram from `from` (outside) to `to` (this router's public address): the inside
    /// address it goes to, or `None` if the filter drops it.
    pub fn inbound(&mut self, from: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
        let inside = self.inside.get(&to.port()).copied();
        let allowed = match self.kind {
            NatKind::FullCone => inside.is_some(),
            NatKind::Home | NatKind::Symmetric => self.opened.contains(&(to.port(), from)),
        };
        if !allowed {
            self.filtered += 1;
            return None;
        }
        inside
    }
}
