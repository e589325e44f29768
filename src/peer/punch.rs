//! Hole punching: what an `Introduce` from the server starts (see "Across NATs" in
//! [`crate::wire`]).
//!
//! When one client looks the other up, the server introduces each to the other: the
//! peer's id, its address as the server sees it (`observed`), its own addresses
//! (`candidates`, LAN addresses) and a secret, `punch`, that only the two of them and the
//! server know. Each side then sends small `Probe`s to every address of the other, on a
//! short schedule of its own (rounds [`FIRST_ROUND`] apart, doubling), so that both NATs
//! see outgoing traffic towards the other and let the other's datagrams in. A probe that
//! arrives with the right secret shows where the peer really is: a LAN address, its
//! observed address, or another port of its IP (a NAT that changes ports, "peer
//! reflexive"); the session then goes to that address.
//!
//! Bounds: probes go only to the addresses of an introduction (never to one learnt from a
//! datagram), their bytes total at most the introduction's, a probe is never answered as
//! such, and at most [`MAX_ATTEMPTS`] introductions are held at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use log::debug;

use super::event::Path;
use super::outputs::Outputs;
use crate::wire::{self, ClientId, Message, Token};

/// The first round of probes goes at once; the next this much later, then twice as long
/// each time up to [`MAX_GAP`] (0, 100, 300, 700 ms, 1.2 s, 1.7 s, ...), until the budget
/// is spent.
pub const FIRST_ROUND: Duration = Duration::from_millis(100);
/// The longest pause between two rounds of probes.
pub const MAX_GAP: Duration = Duration::from_millis(500);
/// If nothing arrived from the peer this long after the introduction, and both are behind
/// NATs, a request of ours to it ends with [`Event::NoPath`](super::Event::NoPath).
pub const VERDICT_AFTER: Duration = Duration::from_secs(5);
/// If nothing came from the peer this long after an introduction, the server is asked
/// again (a `Lookup` of the peer, if we are asking it to connect), so that a lost
/// introduction to the peer is sent again; at most [`REASKS`] times.
pub const REASK_AFTER: Duration = Duration::from_secs(1);
pub const REASKS: u8 = 3;
/// An introduction is forgotten this long after it came (probes from the peer after that
/// are ignored).
pub const ATTEMPT_LIFETIME: Duration = Duration::from_secs(30);
/// The most introductions held at once; more are ignored until some are forgotten.
pub const MAX_ATTEMPTS: usize = 64;

/// One introduction: the peer's addresses, the secret, and our probes to it.
#[derive(Debug, Clone)]
struct Attempt {
    punch: Token,
    observed: SocketAddr,
    candidates: Vec<SocketAddr>,
    /// Our address as the server sees it.
    you: SocketAddr,
    /// Where our probes go: `observed` and `candidates`, less our own addresses.
    targets: Vec<SocketAddr>,
    /// Bytes our probes may still take.
    budget: usize,
    /// The delay before the round after the next.
    gap: Duration,
    next_round: Option<Instant>,
    started: Instant,
    verdict_at: Option<Instant>,
    reask_at: Option<Instant>,
    reasks: u8,
    /// Addresses a probe with the right secret came from, first first.
    heard: Vec<SocketAddr>,
}

impl Attempt {
    /// Whether both sides are behind NATs: each one's observed address is not one of its
    /// own. Unknown (false) when a side told no candidates.
    fn both_behind_nats(&self, own: &[SocketAddr]) -> bool {
        let we = !own.is_empty() && !own.contains(&self.you);
        let they = !self.candidates.is_empty() && !self.candidates.contains(&self.observed);
        we && they
    }

    /// Whether `ip` is one of the peer's, from the introduction.
    fn has_ip(&self, ip: IpAddr) -> bool {
        self.observed.ip() == ip || self.candidates.iter().any(|c| c.ip() == ip)
    }
}

/// What [`Punches::handle_timeout`] found due.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Due {
    /// Nothing heard, both behind NATs: no direct path.
    pub no_path: Vec<ClientId>,
    /// Nothing heard yet: ask the server again.
    pub reask: Vec<ClientId>,
}

/// What a valid probe taught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Heard {
    /// The first probe from this address (the session may move to it).
    pub new: bool,
}

/// Every introduction we hold, by peer. See the module documentation.
#[derive(Debug)]
pub(super) struct Punches {
    /// Our own candidates (what we told the server).
    own: Vec<SocketAddr>,
    by_peer: HashMap<ClientId, Attempt>,
    /// Probes sent, and valid probes received.
    pub sent: u64,
    pub received: u64,
}

impl Punches {
    pub fn new(own: Vec<SocketAddr>) -> Self {
        Punches {
            own,
            by_peer: HashMap::new(),
            sent: 0,
            received: 0,
        }
    }

    /// An `Introduce` of `peer`, of `size` bytes, addressed to us: probe it. A second one
    /// with the same secret adds its size to the budget (and keeps what was heard).
    #[allow(clippy::too_many_arguments)]
    pub fn introduce(
        &mut self,
        now: Instant,
        me: ClientId,
        peer: ClientId,
        observed: SocketAddr,
        candidates: Vec<SocketAddr>,
        punch: Token,
        you: SocketAddr,
        size: usize,
        out: &mut Outputs,
    ) {
        self.forget_old(now);
        if peer == me {
            return;
        }
        let mut targets = vec![observed];
        for c in &candidates {
            if !targets.contains(c) {
                targets.push(*c);
            }
        }
        // Never to ourselves: a LAN candidate of the peer may be one of our own addresses
        // (two homes with the same private range).
        targets.retain(|t| !self.own.contains(t) && *t != you);
        let full = !self.by_peer.contains_key(&peer) && self.by_peer.len() >= MAX_ATTEMPTS;
        match self.by_peer.get_mut(&peer) {
            Some(a) if a.punch == punch => {
                a.budget = a.budget.saturating_add(size);
                a.gap = FIRST_ROUND;
                a.next_round = Some(now);
            }
            _ if full => {
                debug!("introduction of {peer} ignored: {MAX_ATTEMPTS} held already");
                return;
            }
            _ => {
                self.by_peer.insert(
                    peer,
                    Attempt {
                        punch,
                        observed,
                        candidates,
                        you,
                        targets,
                        budget: size,
                        gap: FIRST_ROUND,
                        next_round: Some(now),
                        started: now,
                        verdict_at: Some(now + VERDICT_AFTER),
                        reask_at: Some(now + REASK_AFTER),
                        reasks: 0,
                        heard: Vec::new(),
                    },
                );
            }
        }
        self.rounds(now, me, out);
    }

    /// The server said where `peer` is, and we ask it to connect: its introduction
    /// should come with the answer. Until it does, a placeholder (no secret: no probe
    /// matches it) makes us ask the server again after [`REASK_AFTER`], in case it was
    /// lost.
    pub fn expect_introduction(&mut self, now: Instant, peer: ClientId, observed: SocketAddr) {
        if self.by_peer.contains_key(&peer) || self.by_peer.len() >= MAX_ATTEMPTS {
            return;
        }
        self.by_peer.insert(
            peer,
            Attempt {
                punch: 0,
                observed,
                candidates: Vec::new(),
                you: observed,
                targets: Vec::new(),
                budget: 0,
                gap: FIRST_ROUND,
                next_round: None,
                started: now,
                verdict_at: None,
                reask_at: Some(now + REASK_AFTER),
                reasks: 0,
                heard: Vec::new(),
            },
        );
    }

    /// A `Probe` from `from` at `src`: `Some` if it carries the secret of our introduction
    /// to `from` and comes from one of its IPs (any port: a NAT may change it).
    pub fn handle_probe(&mut self, from: ClientId, punch: Token, src: SocketAddr) -> Option<Heard> {
        let a = self.by_peer.get_mut(&from)?;
        if a.punch == 0 || a.punch != punch || !a.has_ip(src.ip()) {
            return None;
        }
        self.received += 1;
        let new = !a.heard.contains(&src);
        if new {
            debug!("{src}: probe from {from}: a path to it");
            a.heard.push(src);
            a.verdict_at = None;
            a.reask_at = None;
        }
        Some(Heard { new })
    }

    /// Whether a valid probe came from `addr` (it has proved it is the peer, and receives:
    /// the secret came to it from the server).
    /// Our request to `peer` went through the relays: no `NoPath` verdict for it.
    pub fn relayed(&mut self, peer: ClientId) {
        if let Some(a) = self.by_peer.get_mut(&peer) {
            a.verdict_at = None;
        }
    }

    /// Whether `ip` is one of `peer`'s, from its introduction.
    pub fn is_peer_ip(&self, peer: ClientId, ip: IpAddr) -> bool {
        self.by_peer.get(&peer).is_some_and(|a| a.has_ip(ip))
    }

    pub fn proves_receipt(&self, addr: SocketAddr) -> bool {
        self.by_peer.values().any(|a| a.heard.contains(&addr))
    }

    /// Whether `addr` is where `peer` may really be, though not the address we had for
    /// it: a valid probe came from it.
    pub fn heard_from(&self, peer: ClientId, addr: SocketAddr) -> bool {
        self.by_peer
            .get(&peer)
            .is_some_and(|a| a.heard.contains(&addr))
    }

    /// The first address a valid probe of `peer` came from.
    pub fn first_heard(&self, peer: ClientId) -> Option<SocketAddr> {
        self.by_peer
            .get(&peer)
            .and_then(|a| a.heard.first().copied())
    }

    /// Which path a session with `peer` at `addr` takes.
    pub fn path(&self, peer: ClientId, addr: SocketAddr) -> Path {
        let Some(a) = self.by_peer.get(&peer) else {
            return Path::Direct;
        };
        if a.candidates.contains(&addr) && addr != a.observed {
            Path::Lan
        } else if addr == a.observed && (a.candidates.is_empty() || a.candidates.contains(&addr)) {
            Path::Direct
        } else {
            Path::Punched
        }
    }

    /// The session with `peer` is open: no more probes to it.
    pub fn finish(&mut self, peer: ClientId) {
        if let Some(a) = self.by_peer.get_mut(&peer) {
            a.next_round = None;
            a.verdict_at = None;
            a.reask_at = None;
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.by_peer
            .values()
            .flat_map(|a| {
                [
                    a.next_round,
                    a.verdict_at,
                    a.reask_at,
                    Some(a.started + ATTEMPT_LIFETIME),
                ]
            })
            .flatten()
            .min()
    }

    /// Sends the rounds that are due; returns the peers we heard nothing from within
    /// [`VERDICT_AFTER`] while both are behind NATs, and those to ask the server about
    /// again ([`REASK_AFTER`]).
    pub fn handle_timeout(&mut self, now: Instant, me: ClientId, out: &mut Outputs) -> Due {
        self.forget_old(now);
        self.rounds(now, me, out);
        let own = &self.own;
        let mut due = Due::default();
        for (&peer, a) in &mut self.by_peer {
            if a.reask_at.is_some_and(|at| at <= now) {
                a.reasks += 1;
                a.reask_at = (a.reasks < REASKS).then_some(now + REASK_AFTER);
                due.reask.push(peer);
            }
            if a.verdict_at.is_some_and(|at| at <= now) {
                a.verdict_at = None;
                if a.heard.is_empty() && a.both_behind_nats(own) {
                    due.no_path.push(peer);
                }
            }
        }
        due.no_path.sort_unstable();
        due.reask.sort_unstable();
        due
    }

    fn rounds(&mut self, now: Instant, me: ClientId, out: &mut Outputs) {
        for (&peer, a) in &mut self.by_peer {
            if a.next_round.is_none_or(|t| t > now) {
                continue;
            }
            let probe = Message::Probe {
                from: me,
                punch: a.punch,
            };
            let cost = wire::encoded_len(&probe);
            let mut sent = 0;
            for &t in &a.targets {
                if a.budget < cost {
                    break;
                }
                a.budget -= cost;
                out.transmit(t, probe.clone());
                sent += 1;
            }
            self.sent += sent;
            a.next_round = (sent > 0 && a.budget >= cost).then(|| now + a.gap);
            a.gap = (a.gap * 2).min(MAX_GAP);
            debug!("probed {peer} at {sent} addresses; {} bytes left", a.budget);
        }
    }

    fn forget_old(&mut self, now: Instant) {
        self.by_peer
            .retain(|_, a| now < a.started + ATTEMPT_LIFETIME);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn probes(out: &mut Outputs) -> Vec<SocketAddr> {
        let mut v = Vec::new();
        while let Some(t) = out.poll_transmit() {
            assert!(matches!(t.message, Message::Probe { from: 1, punch: 9 }));
            v.push(t.to);
        }
        v
    }

    #[test]
    fn probes_go_only_to_the_introduced_addresses_and_never_outweigh_the_introduction() {
        let own = vec![addr("192.168.1.2:4000")];
        let mut p = Punches::new(own);
        let mut out = Outputs::default();
        let t0 = Instant::now();
        let observed = addr("198.51.100.7:5000");
        // The peer's candidates include one of our own addresses (the same private range
        // at home): never probed.
        let cands = vec![addr("192.168.1.2:4000"), addr("192.168.1.9:5000")];
        p.introduce(
            t0,
            1,
            2,
            observed,
            cands,
            9,
            addr("203.0.113.1:4000"),
            512,
            &mut out,
        );
        let mut all = probes(&mut out);
        assert_eq!(all, vec![observed, addr("192.168.1.9:5000")]);
        let mut last = t0;
        let mut early = 2; // the first round, at once
        for _ in 0..20 {
            let Some(now) = p.poll_timeout() else { break };
            if now > t0 + VERDICT_AFTER {
                break;
            }
            p.handle_timeout(now, 1, &mut out);
            let round = probes(&mut out);
            if !round.is_empty() {
                last = now;
            }
            if now <= t0 + Duration::from_millis(300) {
                early += round.len();
            }
            all.extend(round);
        }
        let cost = wire::encoded_len(&Message::Probe { from: 1, punch: 9 });
        assert!(
            all.len() * cost <= 512,
            "{} probes of {cost} bytes",
            all.len()
        );
        assert!(all.len() >= 8, "several rounds: {}", all.len());
        assert!(all
            .iter()
            .all(|a| *a == observed || *a == addr("192.168.1.9:5000")));
        assert_eq!(early, 6, "three rounds in the first 300 ms");
        let took = last - t0;
        assert!(
            took < VERDICT_AFTER,
            "rounds are over before the verdict: {took:?}"
        );
    }

    #[test]
    fn a_probe_counts_only_with_the_secret_and_from_an_ip_of_the_peer() {
        let mut p = Punches::new(vec![]);
        let mut out = Outputs::default();
        let t0 = Instant::now();
        let observed = addr("198.51.100.7:5000");
        p.introduce(
            t0,
            1,
            2,
            observed,
            vec![],
            9,
            addr("203.0.113.1:4000"),
            512,
            &mut out,
        );
        assert_eq!(p.handle_probe(2, 8, observed), None, "wrong secret");
        assert_eq!(p.handle_probe(3, 9, observed), None, "another peer");
        assert_eq!(
            p.handle_probe(2, 9, addr("198.51.100.8:5000")),
            None,
            "another IP"
        );
        // Another port of the peer's IP: a NAT that changes ports.
        let other_port = addr("198.51.100.7:6123");
        assert_eq!(p.handle_probe(2, 9, other_port), Some(Heard { new: true }));
        assert_eq!(p.handle_probe(2, 9, other_port), Some(Heard { new: false }));
        assert!(p.proves_receipt(other_port));
        assert!(p.heard_from(2, other_port));
        assert_eq!(p.path(2, other_port), Path::Punched);
    }

    #[test]
    fn paths_are_named_by_the_address_used() {
        let own = vec![addr("192.168.1.2:4000")];
        let mut p = Punches::new(own);
        let mut out = Outputs::default();
        let t0 = Instant::now();
        let you = addr("203.0.113.1:4000");
        let natted = addr("198.51.100.7:5000");
        let lan = addr("192.168.1.9:5000");
        p.introduce(t0, 1, 2, natted, vec![lan], 9, you, 512, &mut out);
        assert_eq!(p.path(2, lan), Path::Lan);
        assert_eq!(p.path(2, natted), Path::Punched);
        let public = addr("198.51.100.20:5000");
        p.introduce(t0, 1, 3, public, vec![public], 10, you, 512, &mut out);
        assert_eq!(p.path(3, public), Path::Direct);
        assert_eq!(p.path(4, public), Path::Direct, "no introduction");
    }

    #[test]
    fn nothing_heard_behind_two_nats_is_a_verdict_after_a_few_seconds() {
        let mut p = Punches::new(vec![addr("192.168.1.2:4000")]);
        let mut out = Outputs::default();
        let t0 = Instant::now();
        let (you, natted, lan) = (
            addr("203.0.113.1:4000"),
            addr("198.51.100.7:5000"),
            addr("192.168.7.9:5000"),
        );
        p.introduce(t0, 1, 2, natted, vec![lan], 9, you, 512, &mut out);
        // A public peer (its observed address is its own): no verdict.
        p.introduce(t0, 1, 3, lan, vec![lan], 10, you, 512, &mut out);
        let half = p.handle_timeout(t0 + VERDICT_AFTER / 2, 1, &mut out);
        assert_eq!(half.no_path, Vec::<ClientId>::new());
        assert_eq!(half.reask, vec![2, 3], "nothing heard yet: ask again");
        assert_eq!(
            p.handle_timeout(t0 + VERDICT_AFTER, 1, &mut out).no_path,
            vec![2]
        );
        let later = p.handle_timeout(t0 + VERDICT_AFTER * 2, 1, &mut out);
        assert!(later.no_path.is_empty(), "once");
        // Heard in time: no verdict, nothing to ask again.
        let mut q = Punches::new(vec![addr("192.168.1.2:4000")]);
        q.introduce(t0, 1, 2, natted, vec![lan], 9, you, 512, &mut out);
        q.handle_probe(2, 9, natted);
        assert_eq!(
            q.handle_timeout(t0 + VERDICT_AFTER, 1, &mut out),
            Due::default()
        );
    }
}
