//! The relayed path and the choice between paths: our TURN allocation ([`Relay`]), the
//! peers' relayed addresses from their introductions, when a request goes through the
//! relays, and how a session on the relay moves to a direct path (see "Through a relay"
//! in [`crate::wire`]).
//!
//! - **Allocation.** With a TURN server (the client's `--turn` flags, else the one the
//!   rendezvous server grants in `Registered`), we allocate as soon as we are registered,
//!   and tell the server our relayed address in every `Keepalive`; the server hands it to
//!   the peers it introduces us to (`relay` of `Introduce`). An allocation that fails or is
//!   lost is tried again, [`RETRY_FIRST`] later, then twice as long each time up to
//!   [`RETRY_MAX`].
//! - **Direct first.** An introduction that carries the peer's relayed address gets a
//!   permission and a channel for it at once (so that the peer's first datagram through
//!   the relays is let in), but nothing goes there yet: if no probe from the peer came
//!   [`RELAY_AFTER`] after the introduction, a request of ours to the peer moves to its
//!   relayed address (relay to relay: ours to the TURN server, from our allocation to the
//!   peer's, from there to the peer) and is sent at once. The session that opens there has
//!   the path `relay`.
//! - **Upgrade.** A session on the relay keeps looking for a direct path: it asks the
//!   server for the peer every [`PeerConfig::relay_upgrade`](super::PeerConfig) (the server
//!   introduces both again, so both probe again). A probe from the peer (or a sealed `Ping`
//!   from one of the peer's addresses) starts a path check: sealed `Ping`s to that address,
//!   [`CHECK_GAP`] apart, at most [`CHECK_TRIES`]; the peer answers a `Ping` that comes from
//!   elsewhere than its session's address with a `Pong` to where it came from (and checks
//!   that address itself). A `Pong` from the address checked proves the path both ways: the
//!   session moves there. What was in flight on the relay still opens (the relay stays one
//!   of the session's paths), and the chat's sequence numbers drop what comes twice, so
//!   nothing is lost or shown twice.
//! - **Fresh credentials.** The rendezvous server's credentials are short-lived (a day):
//!   coturn keeps an allocation made with them past their expiry, but refuses a new one.
//!   So an allocation (again) with a grant older than [`GRANT_FRESH`] first asks the server
//!   for a new grant (a `Register` of our registration, answered with it as it is and a new
//!   grant) and allocates when it comes, or with the old one [`GRANT_WAIT`] later.
//! - **Loss.** The relay silent for [`relay::SILENCE_LIMIT`] (or its allocation ended) is
//!   [`Event::RelayLost`]; the sessions through it end with `RelayLost`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use log::debug;

use super::event::Event;
use super::relay::{Received, Relay, RelayError, RelayEvent, TurnServer};
use crate::wire::{ClientId, SessionId, TurnGrant};

/// A request goes through the relays if no probe from the peer came this long after the
/// introduction (probes go at 0, 100, 300 and 700 ms).
pub const RELAY_AFTER: Duration = Duration::from_secs(1);
/// Path checks: a sealed `Ping` to the address checked this often, at most this many.
pub const CHECK_GAP: Duration = Duration::from_millis(200);
pub const CHECK_TRIES: u8 = 5;
/// An allocation that failed or was lost is tried again this long after, then twice as
/// long each time, up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(5);
pub const RETRY_MAX: Duration = Duration::from_secs(600);
/// A grant from the rendezvous server older than this is renewed before an allocation
/// (the server's credentials live [`crate::registry::turn::CREDENTIAL_LIFETIME`]).
pub const GRANT_FRESH: Duration = Duration::from_secs(3600);
/// How long an allocation waits for the renewed grant before it goes with the old one.
pub const GRANT_WAIT: Duration = Duration::from_secs(2);
/// The most peers' relayed addresses held at once (introductions are bounded too).
const MAX_PEER_RELAYS: usize = 256;

/// A peer's relayed address, from its introduction.
#[derive(Debug, Clone, Copy)]
struct PeerRelay {
    addr: SocketAddr,
    /// When a request of ours may go there (`None`: done, or not for a request).
    at: Option<Instant>,
    introduced: Instant,
}

/// A session on the relay, and what it does to find a direct path.
#[derive(Debug, Clone)]
struct OnRelay {
    session: SessionId,
    /// The peer's relayed address (the session's address while on the relay).
    addr: SocketAddr,
    next_lookup: Instant,
    checks: Vec<Check>,
}

#[derive(Debug, Clone, Copy)]
struct Check {
    addr: SocketAddr,
    tries: u8,
    next: Instant,
}

/// What [`Paths::handle_timeout`] found due.
#[derive(Debug, Default)]
pub(super) struct Due {
    /// Requests to move to the peer's relayed address (and send there now).
    pub to_relay: Vec<(ClientId, SocketAddr)>,
    /// Peers to look up again (to punch again).
    pub lookups: Vec<ClientId>,
    /// Path checks to send: a sealed `Ping` of `session` to the address.
    pub checks: Vec<(ClientId, SessionId, SocketAddr)>,
    /// Our relay is gone: these peers' sessions through it end.
    pub lost: Vec<ClientId>,
    /// Our relayed address changed (told to the server).
    pub relayed: Option<Option<SocketAddr>>,
    /// Ask the rendezvous server for fresh TURN credentials.
    pub renew_grant: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct Paths {
    /// From the client's flags; wins over the server's grant.
    configured: Option<TurnServer>,
    /// What we allocate with.
    turn: Option<TurnServer>,
    /// When the rendezvous server granted `turn` (`None`: ours, from the flags).
    granted_at: Option<Instant>,
    /// We asked for a fresh grant and allocate when it comes (or at `allocate_at`).
    renewing: bool,
    relay: Option<Relay>,
    /// When to allocate (again).
    allocate_at: Option<Instant>,
    retry_gap: Duration,
    /// The relay's next deadline, as of the last input (its `poll_timeout` needs `now`).
    wake: Option<Instant>,
    /// The family of the rendezvous server's address: our socket's.
    v6: bool,
    upgrade_every: Duration,
    peers: HashMap<ClientId, PeerRelay>,
    on_relay: HashMap<ClientId, OnRelay>,
    /// Leaving: the release of the allocation is under way.
    leaving: bool,
    events: Vec<Event>,
    due: Due,
}

impl Paths {
    pub fn new(configured: Option<TurnServer>, server: SocketAddr, upgrade: Duration) -> Self {
        Paths {
            turn: configured.clone(),
            configured,
            granted_at: None,
            renewing: false,
            relay: None,
            allocate_at: None,
            retry_gap: RETRY_FIRST,
            wake: None,
            v6: server.is_ipv6(),
            upgrade_every: upgrade,
            peers: HashMap::new(),
            on_relay: HashMap::new(),
            leaving: false,
            events: Vec::new(),
            due: Due::default(),
        }
    }

    /// Our relayed address, if we hold an allocation.
    pub fn relayed_addr(&self) -> Option<SocketAddr> {
        self.relay
            .as_ref()
            .filter(|r| !r.is_ended())?
            .relayed_addr()
    }

    /// Whether datagrams to `to` go through our relay (`to` is a peer's relayed address
    /// we asked a channel for).
    pub fn carries(&self, to: SocketAddr) -> bool {
        self.relay
            .as_ref()
            .is_some_and(|r| !r.is_ended() && r.has_peer(to))
    }

    /// Whether `addr` is the relayed address of `peer`.
    pub fn is_relay_of(&self, peer: ClientId, addr: SocketAddr) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.addr == addr)
    }

    /// Whether the session with `peer` is on the relay.
    pub fn is_on_relay(&self, peer: ClientId) -> bool {
        self.on_relay.contains_key(&peer)
    }

    /// We are registered: allocate, if we have a TURN server (ours, or `grant`).
    pub fn registered(&mut self, now: Instant, grant: Option<TurnGrant>) {
        if self.configured.is_none() {
            if let Some(g) = grant {
                self.turn = Some(TurnServer {
                    addr: g.server,
                    username: g.user,
                    password: g.pass,
                });
                self.granted_at = Some(now);
                if std::mem::take(&mut self.renewing) && self.allocate_at.is_some() {
                    // The allocation that waited for these credentials goes now.
                    self.allocate_at = Some(now);
                }
            }
        }
        let live = self.relay.as_ref().is_some_and(|r| !r.is_ended());
        if self.turn.is_some() && !live && self.allocate_at.is_none() && !self.leaving {
            self.allocate_at = Some(now);
        }
        self.step(now);
    }

    fn allocate(&mut self, now: Instant) {
        let Some(turn) = &self.turn else { return };
        // The crate wants our local address only to label what it sends; the socket's
        // wildcard of the right family will do.
        let local = if self.v6 {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
        } else {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
        };
        debug!("allocating on the TURN server {}", turn.addr);
        self.relay = Some(Relay::allocate(now, local, turn));
    }

    /// An introduction of `peer` carried its relayed address `addr`. `requesting`: we ask
    /// `peer` to connect (the request may go there later).
    pub fn introduced(&mut self, now: Instant, peer: ClientId, addr: SocketAddr) {
        if self.peers.len() >= MAX_PEER_RELAYS && !self.peers.contains_key(&peer) {
            self.forget_old(now);
            if self.peers.len() >= MAX_PEER_RELAYS {
                debug!("relayed address of {peer} not kept: too many");
                return;
            }
        }
        let at = match self.peers.get(&peer) {
            // A new introduction of a session on the relay: its request is long done.
            Some(p) if p.addr == addr && p.at.is_none() => None,
            _ => Some(now + RELAY_AFTER),
        };
        self.peers.insert(
            peer,
            PeerRelay {
                addr,
                at,
                introduced: now,
            },
        );
        self.permit(now, addr);
        self.step(now);
    }

    fn forget_old(&mut self, now: Instant) {
        let on_relay = &self.on_relay;
        self.peers.retain(|p, r| {
            on_relay.contains_key(p) || now < r.introduced + Duration::from_secs(300)
        });
    }

    fn permit(&mut self, now: Instant, addr: SocketAddr) {
        let Some(relay) = self.relay.as_mut().filter(|r| r.relayed_addr().is_some()) else {
            return; // done once allocated
        };
        if let Err(e) = relay.permit(now, addr) {
            debug!("no channel to {addr} on the relay: {e}");
        }
    }

    /// The request to `peer` is not going through the relay (a probe came first, or it was
    /// answered).
    pub fn settled(&mut self, peer: ClientId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.at = None;
        }
    }

    /// The session with `peer` opened at `addr`: on the relay if that is its relayed
    /// address.
    pub fn opened(&mut self, now: Instant, peer: ClientId, session: SessionId, addr: SocketAddr) {
        self.settled(peer);
        if self.is_relay_of(peer, addr) {
            self.on_relay.insert(
                peer,
                OnRelay {
                    session,
                    addr,
                    next_lookup: now + self.upgrade_every,
                    checks: Vec::new(),
                },
            );
        } else {
            self.on_relay.remove(&peer);
        }
    }

    /// The session with `peer` ended.
    pub fn closed(&mut self, peer: ClientId) {
        self.on_relay.remove(&peer);
    }

    /// A sign of a direct path to `peer` at `addr` (a probe, or a sealed `Ping` from
    /// there): check it, if the session is on the relay. True if a check started.
    pub fn maybe_direct(&mut self, now: Instant, peer: ClientId, addr: SocketAddr) -> bool {
        let Some(s) = self.on_relay.get_mut(&peer) else {
            return false;
        };
        if addr == s.addr || s.checks.iter().any(|c| c.addr == addr) {
            return false;
        }
        if s.checks.len() >= 4 {
            s.checks.remove(0);
        }
        debug!("checking a direct path to {peer} at {addr}");
        s.checks.push(Check {
            addr,
            tries: 0,
            next: now,
        });
        true
    }

    /// The session `session` with `peer` is on the relay and checks `addr`.
    pub fn checking(&self, peer: ClientId, addr: SocketAddr) -> Option<SessionId> {
        let s = self.on_relay.get(&peer)?;
        s.checks.iter().any(|c| c.addr == addr).then_some(s.session)
    }

    /// A `Pong` came from `addr`, which we check: the session moves there (the caller
    /// moves it). Returns the session.
    pub fn checked(&mut self, peer: ClientId, addr: SocketAddr) -> Option<SessionId> {
        let session = self.checking(peer, addr)?;
        self.on_relay.remove(&peer);
        Some(session)
    }

    /// A datagram from `from`: TURN traffic from our server is handled here (what the
    /// relay carried comes back as [`Received::Peer`]).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Received {
        let Some(relay) = self.relay.as_mut() else {
            return Received::NotTurn;
        };
        let received = relay.handle_datagram(now, from, data);
        if received != Received::NotTurn {
            self.step(now);
        }
        received
    }

    /// Sends `datagram` to `to` through the relay.
    pub fn send(&mut self, now: Instant, to: SocketAddr, datagram: &[u8]) {
        let Some(relay) = self.relay.as_mut() else {
            return;
        };
        match relay.send(now, to, datagram) {
            Ok(()) => {}
            Err(RelayError::NotAllocated) => debug!("{to}: not sent, no relay"),
            Err(e) => debug!("{to}: not sent through the relay: {e}"),
        }
        self.wake = relay.poll_timeout(now);
    }

    /// The next datagram to the TURN server.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        let relay = self.relay.as_mut()?;
        let d = relay.poll_transmit(now);
        if d.is_none() {
            self.wake = relay.poll_timeout(now);
        }
        d
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let checks = self
            .on_relay
            .values()
            .flat_map(|s| s.checks.iter().map(|c| c.next).chain([s.next_lookup]));
        let requests = self.peers.values().filter_map(|p| p.at);
        [self.wake, self.allocate_at]
            .into_iter()
            .flatten()
            .chain(checks)
            .chain(requests)
            .min()
    }

    /// Time passed. `requesting(peer)`: whether our request to `peer` waits for an
    /// answer and no probe of it came (then it may go through the relays): `Some(true)`;
    /// `None` while we still look it up (the request may follow).
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        requesting: impl Fn(ClientId) -> Option<bool>,
    ) -> Due {
        if let Some(relay) = self.relay.as_mut() {
            relay.handle_timeout(now);
        }
        self.step(now);
        let relay = self.relay.as_ref().filter(|r| !r.is_ended());
        let mut due = std::mem::take(&mut self.due);
        for (&peer, p) in self.peers.iter_mut() {
            let Some(at) = p.at.filter(|at| *at <= now) else {
                continue;
            };
            let asking = requesting(peer);
            if asking == Some(false) {
                p.at = None;
            } else if asking == Some(true) && relay.is_some_and(|r| r.is_ready(p.addr)) {
                p.at = None;
                due.to_relay.push((peer, p.addr));
            } else if relay.is_some_and(|r| r.has_peer(p.addr))
                && now < p.introduced + RELAY_AFTER * 5
            {
                // The channel (or the lookup's answer) is on its way: look again shortly.
                p.at = Some(at.max(now) + Duration::from_millis(100));
            } else {
                p.at = None;
            }
        }
        for (&peer, s) in self.on_relay.iter_mut() {
            if s.next_lookup <= now {
                s.next_lookup = now + self.upgrade_every;
                due.lookups.push(peer);
            }
            s.checks.retain_mut(|c| {
                if c.next > now {
                    return true;
                }
                if c.tries >= CHECK_TRIES {
                    debug!("no direct path to {peer} at {}", c.addr);
                    return false;
                }
                c.tries += 1;
                c.next = now + CHECK_GAP;
                due.checks.push((peer, s.session, c.addr));
                true
            });
        }
        due.to_relay.sort_unstable();
        due.lookups.sort_unstable();
        due
    }

    /// Runs the relay's events and the allocation schedule.
    fn step(&mut self, now: Instant) {
        if self.allocate_at.is_some_and(|at| at <= now) && !self.leaving {
            let stale = self
                .granted_at
                .is_some_and(|t| now.saturating_duration_since(t) >= GRANT_FRESH);
            if stale && !self.renewing {
                debug!("asking the rendezvous server for fresh TURN credentials first");
                self.renewing = true;
                self.due.renew_grant = true;
                self.allocate_at = Some(now + GRANT_WAIT);
            } else {
                self.renewing = false;
                self.allocate_at = None;
                self.allocate(now);
            }
        }
        let Some(relay) = self.relay.as_mut() else {
            return;
        };
        let server = relay.server();
        let mut allocated = None;
        let mut ended = None;
        while let Some(e) = relay.poll_event() {
            match e {
                RelayEvent::Allocated(addr) => {
                    self.retry_gap = RETRY_FIRST;
                    allocated = Some(addr);
                    self.events.push(Event::RelayReady {
                        server,
                        relayed: addr,
                    });
                }
                RelayEvent::Failed(reason) => {
                    ended = Some(false);
                    self.events.push(Event::RelayFailed { server, reason });
                }
                RelayEvent::Lost(reason) => {
                    ended = Some(true);
                    if !self.leaving {
                        self.events.push(Event::RelayLost { server, reason });
                    }
                }
                RelayEvent::Ready(p) => debug!("relay: channel to {p} bound"),
                RelayEvent::PeerFailed(p) => debug!("relay: no permission or channel for {p}"),
            }
        }
        self.wake = relay.poll_timeout(now);
        if let Some(addr) = allocated {
            self.due.relayed = Some(Some(addr));
            let known: Vec<SocketAddr> = self.peers.values().map(|p| p.addr).collect();
            for a in known {
                self.permit(now, a);
            }
            if let Some(relay) = self.relay.as_mut() {
                self.wake = relay.poll_timeout(now);
            }
        }
        if let Some(lost) = ended {
            if self.leaving {
                return;
            }
            if lost {
                let gone: Vec<ClientId> = self.on_relay.keys().copied().collect();
                self.on_relay.clear();
                self.due.lost.extend(gone);
                // Requests that went to a relayed address cannot be answered either.
                let moved: Vec<ClientId> = self.peers.keys().copied().collect();
                self.due.lost.extend(moved);
                self.due.relayed = Some(None);
            }
            self.allocate_at = Some(now + self.retry_gap);
            self.retry_gap = (self.retry_gap * 2).min(RETRY_MAX);
        }
    }

    /// The events of the relay (ready, failed, lost).
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// What the last inputs made due at once (lost sessions, a new relayed address).
    pub fn take_due(&mut self) -> Due {
        std::mem::take(&mut self.due)
    }

    /// Leaving: releases the allocation.
    pub fn release(&mut self, now: Instant) {
        self.leaving = true;
        self.allocate_at = None;
        self.on_relay.clear();
        for p in self.peers.values_mut() {
            p.at = None;
        }
        if let Some(relay) = self.relay.as_mut() {
            relay.release(now);
            self.wake = relay.poll_timeout(now);
        }
    }

    /// Whether the release of the allocation is still going out.
    pub fn releasing(&self) -> bool {
        self.leaving && self.wake.is_some()
    }
}
