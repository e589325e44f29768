//! Introductions, for hole punching: the clients' own addresses (the `candidates` of their
//! `Keepalive`s), and the
//! `Introduce` the server sends both clients when one looks the other up, so that both
//! send towards each other at once and both NATs open (see "Across NATs" in
//! [`crate::wire`]).
//!
//! What an introduction may cause is bounded: only a registered client asking from its
//! registered address is introduced; the other client of a pair is told at most once per
//! [`INTRODUCE_INTERVAL`]; the introduction to the asker spends the budget of its `Lookup`
//! (it never outweighs what the asker sent); the one to the other client goes to its
//! registered address, which has proved it receives, padded so that the probes it causes
//! (at most its size) stay smaller than it.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use log::debug;
use rand::Rng;

use super::{Record, Registry};
use crate::wire::{self, ClientId, Message, Token, Transmit};

/// One pair (asker, asked) is introduced at most this often; a lookup between them
/// sooner is answered without one.
pub const INTRODUCE_INTERVAL: Duration = Duration::from_secs(1);
/// How long the `punch` secret of a pair is kept, so that the introductions of a second
/// lookup (a connect retried) carry the same one as those both clients may still hold.
pub const PUNCH_LIFETIME: Duration = Duration::from_secs(30);
/// The most pairs remembered at once; past it, lookups are answered without introductions
/// until some are forgotten.
pub const MAX_PAIRS: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Pair {
    punch: Token,
    created: Instant,
    sent: Instant,
}

/// The candidates of the clients and the pairs introduced lately.
#[derive(Debug, Default)]
pub(super) struct Introductions {
    candidates: HashMap<ClientId, Vec<SocketAddr>>,
    /// The relayed addresses (on TURN servers) the clients told.
    relays: HashMap<ClientId, SocketAddr>,
    /// By (smaller id, larger id): one secret for the pair whoever asks.
    pairs: HashMap<(ClientId, ClientId), Pair>,
    order: VecDeque<((ClientId, ClientId), Instant)>,
    /// Introductions sent (one per client introduced).
    pub sent: u64,
    /// Lookups answered without an introduction because the pair was introduced lately.
    pub limited: u64,
}

/// Whether `addr` may be handed to another client as a candidate: a unicast address a
/// peer could reach (not loopback, unspecified, multicast or an IPv6 link-local address,
/// which needs a scope the peer cannot know), with a port.
pub fn usable_candidate(addr: &SocketAddr) -> bool {
    let ip = addr.ip();
    let link_local_v6 = match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    };
    addr.port() != 0
        && !ip.is_loopback()
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && !link_local_v6
        && !matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

impl Introductions {
    /// Client `id` says it is at `addrs` (besides the address the server sees): the usable
    /// ones are kept, replacing the last list.
    pub fn set_candidates(&mut self, id: ClientId, addrs: Vec<SocketAddr>) {
        let mut kept: Vec<SocketAddr> = addrs.into_iter().filter(usable_candidate).collect();
        kept.dedup();
        kept.truncate(wire::MAX_CANDIDATES);
        if kept.is_empty() {
            self.candidates.remove(&id);
        } else {
            self.candidates.insert(id, kept);
        }
    }

    pub fn candidates(&self, id: ClientId) -> &[SocketAddr] {
        self.candidates.get(&id).map_or(&[], Vec::as_slice)
    }

    /// Client `id` says its relayed address is `addr` (kept if it is a unicast address
    /// with a port; loopback too, for a TURN server on the same host as its clients; `None`
    /// keeps the last one: a `Keepalive` without it says nothing new).
    pub fn set_relay(&mut self, id: ClientId, addr: Option<SocketAddr>) {
        let usable = |a: &SocketAddr| a.ip().is_loopback() || usable_candidate(a);
        match addr {
            Some(a) if usable(&a) => {
                self.relays.insert(id, a);
            }
            Some(a) => debug!("client {id}: relayed address {a} not kept (unusable)"),
            None => {}
        }
    }

    pub fn relay(&self, id: ClientId) -> Option<SocketAddr> {
        self.relays.get(&id).copied()
    }

    /// Client `id` is gone.
    pub fn forget(&mut self, id: ClientId) {
        self.candidates.remove(&id);
        self.relays.remove(&id);
    }

    /// The secret for introducing `a` and `b` now, and whether `b` (the one that did not
    /// ask) is to be told too: not if the pair was introduced less than
    /// [`INTRODUCE_INTERVAL`] ago. `None` if too many pairs are remembered.
    fn due(
        &mut self,
        now: Instant,
        a: ClientId,
        b: ClientId,
        rng: &mut impl Rng,
    ) -> Option<(Token, bool)> {
        self.forget_pairs(now);
        let key = (a.min(b), a.max(b));
        if let Some(p) = self.pairs.get_mut(&key) {
            if now < p.sent + INTRODUCE_INTERVAL {
                self.limited += 1;
                return Some((p.punch, false));
            }
            p.sent = now;
            return Some((p.punch, true));
        }
        if self.pairs.len() >= MAX_PAIRS {
            self.limited += 1;
            return None;
        }
        let punch = rng.random_range(1..=Token::MAX);
        self.pairs.insert(
            key,
            Pair {
                punch,
                created: now,
                sent: now,
            },
        );
        self.order.push_back((key, now));
        Some((punch, true))
    }

    fn forget_pairs(&mut self, now: Instant) {
        while let Some(&(key, created)) = self.order.front() {
            if now < created + PUNCH_LIFETIME {
                break;
            }
            self.order.pop_front();
            if self.pairs.get(&key).is_some_and(|p| p.created == created) {
                self.pairs.remove(&key);
            }
        }
    }
}

impl Registry {
    /// The sender of a `Lookup` or `Resolve` that found client `asked` is introduced to it,
    /// and it to the sender, if the sender is registered at `from` and the pair was not
    /// introduced lately. Called after the `Found` was queued: the introduction to the
    /// asker spends what is left of its request's budget, and is not sent if it does not
    /// fit (an older client pads its lookups less, and does not know `Introduce`).
    pub(super) fn introduce(&mut self, now: Instant, from: SocketAddr, asked: ClientId) {
        let Some(&asker) = self.clients.at_addr(&from) else {
            return;
        };
        let Some(&other) = self.clients.get(asked) else {
            return;
        };
        if asker.id == other.id {
            return;
        }
        let left = self.answering.and_then(|a| a.budget);
        let to_asker = self.introduction(&other, &asker, 0);
        if left.is_some_and(|left| wire::encoded_len(&to_asker) > left) {
            self.stats.unsent_larger += 1;
            debug!("{from}: lookup too small to carry an introduction");
            return;
        }
        let Some((punch, tell_other)) = self.intro.due(now, asker.id, other.id, &mut self.rng)
        else {
            debug!("too many pairs introduced lately");
            return;
        };
        let mut to_asker = self.introduction(&other, &asker, punch);
        // A few bytes short of the room: padding may overshoot its target by a header byte.
        let room = left.map_or(wire::INTRODUCE_SIZE, |left| left.saturating_sub(8));
        wire::pad_to(&mut to_asker, room.min(wire::INTRODUCE_SIZE));
        if left.is_some_and(|left| wire::encoded_len(&to_asker) > left) {
            // Padding grew a header past the room: send it as it was.
            to_asker = self.introduction(&other, &asker, punch);
        }
        // The asker's copy answers its own request (within its budget), so a lookup that
        // is asked again gets it again; the other's is not sent more than once an
        // `INTRODUCE_INTERVAL`.
        self.intro.sent += 1;
        self.send(from, to_asker);
        if !tell_other {
            debug!(
                "clients {} and {} were introduced lately",
                asker.id, other.id
            );
            return;
        }
        let mut to_other = self.introduction(&asker, &other, punch);
        wire::pad_to(&mut to_other, wire::INTRODUCE_SIZE);
        debug!(
            "introducing clients {} at {} and {} at {}",
            asker.id, asker.addr, other.id, other.addr
        );
        self.intro.sent += 1;
        // To the other client's registered address, which has proved it receives: not
        // bound by the asker's budget.
        self.transmits.push_back(Transmit {
            to: other.addr,
            message: to_other,
        });
    }

    /// The `Introduce` that tells `to` about `about`.
    fn introduction(&self, about: &Record, to: &Record, punch: Token) -> Message {
        Message::Introduce {
            id: about.id,
            addr: about.addr,
            candidates: self.intro.candidates(about.id).to_vec(),
            punch,
            you: to.addr,
            proof: to.token,
            pad: wire::Padding(0),
            relay: self.intro.relay(about.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_a_peer_could_reach_are_candidates() {
        for bad in [
            "127.0.0.1:4000",
            "0.0.0.0:4000",
            "224.0.0.1:4000",
            "255.255.255.255:4000",
            "[::1]:4000",
            "[fe80::1]:4000",
            "192.168.1.2:0",
        ] {
            assert!(!usable_candidate(&bad.parse().unwrap()), "{bad}");
        }
        for good in ["192.168.1.2:4000", "10.0.0.7:1", "[2001:db8::7]:4000"] {
            assert!(usable_candidate(&good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn a_pair_is_introduced_at_most_once_a_second_with_one_secret() {
        let mut intro = Introductions::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        let (first, told) = intro.due(t0, 1, 2, &mut rng).expect("first introduction");
        assert!(told);
        let soon = intro.due(t0 + Duration::from_millis(500), 2, 1, &mut rng);
        assert_eq!(
            soon,
            Some((first, false)),
            "the asker only, with the same secret"
        );
        assert_eq!(intro.limited, 1);
        let again = intro.due(t0 + INTRODUCE_INTERVAL, 2, 1, &mut rng);
        assert_eq!(again, Some((first, true)), "the same secret, whoever asks");
        let later = intro.due(t0 + PUNCH_LIFETIME + INTRODUCE_INTERVAL, 1, 2, &mut rng);
        assert!(
            later.is_some_and(|(p, _)| p != first),
            "a new secret once forgotten"
        );
    }

    use rand::SeedableRng;
}
