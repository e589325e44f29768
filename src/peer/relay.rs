//! A relayed path through a TURN server (RFC 8656), for peers that hole punching cannot
//! join (issue 16).
//!
//! [`Relay`] is a sans-IO state machine like the rest of [`crate::peer`]: no socket, no
//! clock. It wraps `turn-client-proto`'s UDP client (chosen because it is sans-IO, so it
//! fits this design: it takes datagrams and `now`, and hands back datagrams and a wake-up
//! time; it does the long-term-credential handshake, refreshes the allocation, the
//! permissions and the channels before they expire, and deletes the allocation on
//! request). What this module adds: conversion between `std::time::Instant` and the
//! crate's own clock type, demultiplexing by the first byte ([`is_turn`]), a channel
//! bound per peer (4 bytes of overhead per datagram instead of a 36-byte Send
//! indication), and plain events ([`RelayEvent`]) including the relay going silent.
//!
//! The relay only ever carries what the caller gives it: the p2pchat layer gives it
//! sealed (Noise) datagrams, so the TURN operator sees addresses, sizes and timing, never
//! content.
//!
//! Demultiplexing (RFC 7983): a STUN message begins with a byte 0..=3, a TURN ChannelData
//! message with 64..=79, and every p2pchat datagram with [`crate::wire::MAGIC`] (0x50 =
//! 80), so the three never overlap.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use turn_client_proto::api::{TurnClientApi, TurnConfig, TurnEvent, TurnPollRet, TurnRecvRet};
use turn_client_proto::stun::agent::Transmit as TurnTransmit;
use turn_client_proto::types::prelude::DelayedTransmitBuild;
use turn_client_proto::types::{TransportType, TurnCredentials};
use turn_client_proto::udp::TurnClientUdp;

/// While we hold an allocation, a STUN Binding request goes to the TURN server this often
/// (the allocation's own refreshes are minutes apart): its answer shows the relay is
/// still there, and it keeps our NAT's mapping towards the relay open.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// If nothing at all came from the TURN server for this long while we hold an
/// allocation, the relay is declared gone ([`RelayEvent::Lost`]): four probes unanswered,
/// well under the 30 s the issue allows.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(20);
/// An allocation not made this long after it was asked for fails
/// ([`RelayEvent::Failed`]): coturn answers wrong or expired credentials with a 401 that
/// the client may keep retrying, and a server that is not there does not answer at all.
pub const ALLOCATE_WITHIN: Duration = Duration::from_secs(10);

/// Whether a datagram is TURN/STUN traffic (first byte 0..=3: STUN; 64..=79: TURN
/// ChannelData) rather than a p2pchat datagram (first byte [`crate::wire::MAGIC`]).
pub fn is_turn(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(0x00..=0x03) | Some(0x40..=0x4f))
}

/// Where the TURN server is and the credentials to use with it.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnServer {
    pub addr: SocketAddr,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for TurnServer {
    // Never print the password (logs, panics).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnServer")
            .field("addr", &self.addr)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What happened to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// The server gave us this relayed address: peers can reach us there.
    Allocated(SocketAddr),
    /// The allocation could not be made (wrong credentials, server refused, no answer).
    Failed(String),
    /// A channel to this peer is bound: datagrams to and from it pass the relay.
    Ready(SocketAddr),
    /// Permission or channel for this peer was refused.
    PeerFailed(SocketAddr),
    /// The allocation ended (expired, not refreshable, server silent, or released).
    Lost(String),
}

/// What a datagram from the network was.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// TURN control traffic, handled here.
    Handled,
    /// A datagram relayed from `from` (a peer's address as the relay sees it).
    Peer { from: SocketAddr, data: Vec<u8> },
    /// Not TURN traffic from our server: the caller handles it as a p2pchat datagram.
    NotTurn,
}

/// Why a send through the relay could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayError {
    /// No allocation (yet, or any more).
    NotAllocated,
    /// The relay has no permission for the peer yet.
    NoPermission(SocketAddr),
    Other(String),
}

impl fmt::Display for RelayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayError::NotAllocated => write!(f, "no relay allocation"),
            RelayError::NoPermission(p) => write!(f, "the relay has no permission for {p}"),
            RelayError::Other(e) => write!(f, "relay: {e}"),
        }
    }
}

/// A datagram to send: to the TURN server, from our socket.
pub type Datagram = (SocketAddr, Vec<u8>);

/// One TURN allocation and the peers permitted on it. See the module documentation.
#[derive(Debug)]
pub struct Relay {
    client: TurnClientUdp,
    server: SocketAddr,
    /// The origin of the crate's clock (`turn_client_proto::stun::Instant`).
    base: Instant,
    events: VecDeque<RelayEvent>,
    relayed: Option<SocketAddr>,
    /// Peers we asked for (permission + channel), and whether their channel is bound.
    peers: Vec<(SocketAddr, bool)>,
    /// The last time anything came from the server.
    heard: Instant,
    /// Datagrams built by `send`, waiting for `poll_transmit`.
    queued: VecDeque<Datagram>,
    /// When the next Binding probe goes to the server.
    next_probe: Option<Instant>,
    ended: bool,
    /// After [`Relay::release`]: until then the client may still send the delete (its
    /// requests are paced 50 ms apart, so it may not go at once).
    releasing_until: Option<Instant>,
}

/// How long a released allocation's delete may take to leave.
pub const RELEASE_WITHIN: Duration = Duration::from_secs(1);

impl Relay {
    /// Starts an allocation on `server` from our socket at `local`.
    pub fn allocate(now: Instant, local: SocketAddr, server: &TurnServer) -> Self {
        let credentials = TurnCredentials::new(&server.username, &server.password);
        let mut config = TurnConfig::new(credentials);
        config.set_allocation_transport(TransportType::Udp);
        Relay {
            client: TurnClientUdp::allocate(local, server.addr, config),
            server: server.addr,
            base: now,
            events: VecDeque::new(),
            relayed: None,
            peers: Vec::new(),
            heard: now,
            queued: VecDeque::new(),
            next_probe: None,
            ended: false,
            releasing_until: None,
        }
    }

    fn t(&self, now: Instant) -> turn_client_proto::stun::Instant {
        let nanos = now.saturating_duration_since(self.base).as_nanos();
        turn_client_proto::stun::Instant::from_nanos(nanos.min(i64::MAX as u128) as i64)
    }

    fn std_instant(&self, t: turn_client_proto::stun::Instant) -> Instant {
        self.base + Duration::from_nanos(t.as_nanos().max(0) as u64)
    }

    /// The TURN server's address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Our relayed address, once allocated.
    pub fn relayed_addr(&self) -> Option<SocketAddr> {
        self.relayed
    }

    /// Whether the allocation is over (failed, lost or released).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Whether a channel to `peer` is bound.
    pub fn is_ready(&self, peer: SocketAddr) -> bool {
        self.peers.iter().any(|(p, ready)| *p == peer && *ready)
    }

    /// Whether a permission and channel for `peer` were asked for (and not refused).
    pub fn has_peer(&self, peer: SocketAddr) -> bool {
        self.peers.iter().any(|(p, _)| *p == peer)
    }

    /// Asks for a permission and a channel for `peer` (its relayed address, or any
    /// address it will send from). [`RelayEvent::Ready`] follows.
    pub fn permit(&mut self, now: Instant, peer: SocketAddr) -> Result<(), RelayError> {
        if self.ended || self.relayed.is_none() {
            return Err(RelayError::NotAllocated);
        }
        if self.peers.iter().any(|(p, _)| *p == peer) {
            return Ok(());
        }
        let t = self.t(now);
        if !self.client.have_permission(TransportType::Udp, peer.ip()) {
            self.client
                .create_permission(TransportType::Udp, peer.ip(), t)
                .map_err(|e| RelayError::Other(e.to_string()))?;
        }
        self.client
            .bind_channel(TransportType::Udp, peer, t)
            .map_err(|e| RelayError::Other(e.to_string()))?;
        self.peers.push((peer, false));
        Ok(())
    }

    /// Sends `data` to `peer` through the relay: the datagram to the server is queued for
    /// [`Relay::poll_transmit`].
    pub fn send(&mut self, now: Instant, peer: SocketAddr, data: &[u8]) -> Result<(), RelayError> {
        if self.ended || self.relayed.is_none() {
            return Err(RelayError::NotAllocated);
        }
        if !self.client.have_permission(TransportType::Udp, peer.ip()) {
            return Err(RelayError::NoPermission(peer));
        }
        let t = self.t(now);
        match self.client.send_to(TransportType::Udp, peer, data, t) {
            Ok(Some(build)) => {
                let to = build.to;
                self.queued.push_back((to, build.data.build()));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(RelayError::Other(e.to_string())),
        }
    }

    /// A datagram came from `from` to our socket.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Received {
        if from != self.server || !is_turn(data) {
            return Received::NotTurn;
        }
        if self.ended {
            if self.releasing_until.is_none_or(|u| now >= u) {
                return Received::NotTurn;
            }
            // The answer to our delete (so that it is not sent again); nothing else.
            let t = self.t(now);
            let local = self.client.local_addr();
            let _ = self
                .client
                .recv(TurnTransmit::new(data, TransportType::Udp, from, local), t);
            while self.client.poll_event().is_some() {}
            return Received::Handled;
        }
        let t = self.t(now);
        let local = self.client.local_addr();
        let ret = self
            .client
            .recv(TurnTransmit::new(data, TransportType::Udp, from, local), t);
        let received = match ret {
            TurnRecvRet::Handled => Received::Handled,
            // TURN-looking traffic from the server that the client does not track: the
            // answers to our Binding probes. Dropped here (it is no p2pchat datagram).
            TurnRecvRet::Ignored(_) => Received::Handled,
            TurnRecvRet::PeerData(d) => Received::Peer {
                from: d.peer,
                data: d.data().to_vec(),
            },
            TurnRecvRet::PeerIcmp { .. } => Received::Handled,
        };
        self.heard = now;
        self.collect();
        received
    }

    /// Moves the client's events into ours.
    fn collect(&mut self) {
        while let Some(e) = self.client.poll_event() {
            match e {
                TurnEvent::AllocationCreated(_, addr) => {
                    if self.relayed.is_none() {
                        self.relayed = Some(addr);
                        self.next_probe = Some(self.heard + PROBE_EVERY);
                        self.events.push_back(RelayEvent::Allocated(addr));
                    }
                }
                TurnEvent::AllocationCreateFailed(family) => {
                    if self.relayed.is_none() && !self.ended {
                        self.ended = true;
                        self.events.push_back(RelayEvent::Failed(format!(
                            "the TURN server {} gave no {family:?} allocation",
                            self.server
                        )));
                    }
                }
                TurnEvent::ChannelCreated(_, peer) => {
                    if let Some(p) = self.peers.iter_mut().find(|(p, _)| *p == peer) {
                        if !p.1 {
                            p.1 = true;
                            self.events.push_back(RelayEvent::Ready(peer));
                        }
                    }
                }
                TurnEvent::ChannelCreateFailed(_, peer) => {
                    self.peers.retain(|(p, _)| *p != peer);
                    self.events.push_back(RelayEvent::PeerFailed(peer));
                }
                TurnEvent::PermissionCreateFailed(_, ip) => {
                    let failed: Vec<SocketAddr> = self
                        .peers
                        .iter()
                        .filter(|(p, _)| p.ip() == ip)
                        .map(|(p, _)| *p)
                        .collect();
                    self.peers.retain(|(p, _)| p.ip() != ip);
                    for p in failed {
                        self.events.push_back(RelayEvent::PeerFailed(p));
                    }
                }
                TurnEvent::PermissionCreated(..)
                | TurnEvent::TcpConnected(_)
                | TurnEvent::TcpConnectFailed(_) => {}
            }
        }
    }

    fn end(&mut self, reason: String) {
        if !self.ended {
            self.ended = true;
            self.peers.clear();
            self.queued.clear();
            if self.relayed.is_some() {
                self.events.push_back(RelayEvent::Lost(reason));
            } else {
                self.events.push_back(RelayEvent::Failed(reason));
            }
        }
    }

    /// Time passed: retransmissions, refreshes, expiry, silence.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ended {
            if self.releasing_until.is_some_and(|u| now < u) {
                let t = self.t(now);
                let _ = self.client.poll(t);
            } else {
                self.releasing_until = None;
            }
            return;
        }
        let t = self.t(now);
        let closed = matches!(self.client.poll(t), TurnPollRet::Closed);
        self.collect();
        if !closed
            && self.relayed.is_none()
            && now.saturating_duration_since(self.base) >= ALLOCATE_WITHIN
        {
            self.client.protocol_error();
            self.end(format!(
                "no allocation from the TURN server {} within {} s (wrong or expired credentials, or no answer)",
                self.server,
                ALLOCATE_WITHIN.as_secs()
            ));
        } else if closed {
            let reason = if self.relayed.is_some() {
                format!("the TURN allocation on {} ended", self.server)
            } else {
                format!("no allocation from the TURN server {}", self.server)
            };
            self.end(reason);
        } else if self.relayed.is_some()
            && now.saturating_duration_since(self.heard) >= SILENCE_LIMIT
        {
            self.client.protocol_error();
            self.end(format!(
                "the TURN server {} has not answered for {} s",
                self.server,
                SILENCE_LIMIT.as_secs()
            ));
        } else if self.next_probe.is_some_and(|p| p <= now) {
            self.next_probe = Some(now + PROBE_EVERY);
            self.queued.push_back((self.server, binding_request()));
        }
    }

    /// When [`Relay::handle_timeout`] should next run.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        if self.ended {
            let until = self.releasing_until?;
            let t = self.t(now);
            return match self.client.poll(t) {
                TurnPollRet::WaitUntil(w) => Some(self.std_instant(w).min(until)),
                _ => Some(until),
            };
        }
        let t = self.t(now);
        let wake = match self.client.poll(t) {
            TurnPollRet::WaitUntil(w) => Some(self.std_instant(w)),
            _ => Some(now),
        };
        self.collect();
        let silence = match self.relayed {
            Some(_) => self.heard + SILENCE_LIMIT,
            None => self.base + ALLOCATE_WITHIN,
        };
        let silence = Some(silence);
        [wake, silence, self.next_probe].into_iter().flatten().min()
    }

    /// The next datagram to send (always to the TURN server).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Datagram> {
        if let Some(d) = self.queued.pop_front() {
            return Some(d);
        }
        if self.ended && self.releasing_until.is_none_or(|u| now >= u) {
            return None;
        }
        let t = self.t(now);
        let tx = self.client.poll_transmit(t)?;
        Some((tx.to, tx.data.to_vec()))
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// Releases the allocation: a Refresh with lifetime 0 goes out through
    /// [`Relay::poll_transmit`] within [`RELEASE_WITHIN`] (keep driving `handle_timeout`
    /// and `poll_transmit` until `poll_timeout` says `None`); ends at once with
    /// [`RelayEvent::Lost`] ("released"): nothing more is sent to or taken from peers.
    pub fn release(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        let t = self.t(now);
        let deleting = self.relayed.is_some() && self.client.delete(t).is_ok();
        self.end("released".to_string());
        if deleting {
            self.releasing_until = Some(now + RELEASE_WITHIN);
        }
    }
}

/// A STUN Binding request (RFC 8489) with a fresh transaction id.
fn binding_request() -> Vec<u8> {
    use turn_client_proto::stun::types::message::{Message, MessageWriteVec, BINDING};
    use turn_client_proto::stun::types::prelude::MessageWrite;
    Message::builder_request(BINDING, MessageWriteVec::new()).finish()
}
