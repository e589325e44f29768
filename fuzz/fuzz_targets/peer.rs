//! Two `Peer`s and a `Registry` on a network the fuzzer drives: it chooses which datagram in
//! flight arrives next (or is lost, or arrives twice), when the clock moves, which user
//! commands each peer's user types, and it injects datagrams of its own (raw bytes,
//! well-formed messages, or messages forged with a session id seen on the wire) from any
//! address, including the server's and each peer's. Before the fuzzed steps both peers
//! register, and (if the input says so) open a session with each other, over a perfect
//! network.
//!
//! Checked throughout: nothing panics, and for each peer and each session (from one
//! `Connected` of a peer to the next; every receive window starts with one): the `Message`s
//! shown from that peer are numbered 1, 2, 3, ... with no repeat, no gap and no reordering;
//! our `Sent` messages are numbered 1, 2, 3, ...; every `Delivered` or `Undelivered` names a
//! message sent in that session, at most once, and `Delivered` comes in increasing order.
//! After `handle_timeout(now)`, `poll_timeout()` is not before `now`.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pchat::peer::{Event, Peer, PeerConfig};
use p2pchat::registry::{Registry, RegistryConfig};
use p2pchat::wire::Transmit;
use p2pchat::wire::{self, ClientId, Message, Packer, SessionId};
use p2pchat_fuzz::{Advance, FuzzAddr, FuzzMessage, Id, Num};

const SERVER: &str = "10.0.0.1:7070";
/// Node 0 has a TURN server here (nothing answers: what comes from it is the fuzzer's).
const TURN: &str = "10.0.0.9:3478";
const PEERS: [&str; 2] = ["10.0.1.1:4000", "10.0.1.2:4000"];
const STRANGERS: [&str; 2] = ["10.0.1.1:4001", "10.9.9.9:6666"];

#[derive(Arbitrary, Debug)]
struct Input {
    /// Retry interval in milliseconds, from 1 ms up.
    retry_ms: u16,
    seed: u64,
    /// Open a session between the two peers before the fuzzed steps.
    connect_first: bool,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// The `i`-th datagram in flight arrives.
    Deliver(u8),
    /// The `i`-th datagram in flight is lost.
    Lose(u8),
    /// The `i`-th datagram in flight arrives, and stays in flight to arrive again.
    Duplicate(u8),
    /// Everything in flight arrives, in order, with what it causes (bounded).
    Flush,
    /// The clock moves on, running every timer that falls due on the way.
    Advance(Advance),
    /// Peer `who`'s user types a command.
    Command { who: bool, cmd: Cmd },
    /// A datagram of the fuzzer's own reaches `to` from `from`.
    Inject {
        to: Target,
        from: Source,
        what: Payload,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Target {
    Server,
    Peer(bool),
}

#[derive(Arbitrary, Debug)]
enum Source {
    Server,
    /// Node 0's TURN server (raw bytes from it go to its TURN client).
    Turn,
    Peer(bool),
    Stranger(bool),
    Any(FuzzAddr),
}

#[derive(Arbitrary, Debug)]
enum Payload {
    /// Several payloads' bodies in one datagram.
    Packed(Vec<Payload>),
    Raw(Vec<u8>),
    Message(FuzzMessage),
    /// A peer message for a session id seen on the wire, `from` the other peer's id.
    Forged {
        session: u8,
        from_other: bool,
        kind: Forged,
    },
}

#[derive(Arbitrary, Debug)]
enum Forged {
    ConnectRequest {
        hs: Vec<u8>,
    },
    Accept {
        hs: Vec<u8>,
    },
    Reject {
        hs: Vec<u8>,
    },
    /// Ciphertext of the attacker's making, with any counter.
    Sealed {
        n: Num,
        data: Vec<u8>,
    },
    /// A datagram sent on the wire earlier, replayed as is or with one byte changed.
    Replay {
        index: u16,
        flip: Option<u16>,
    },
    Chat {
        seq: Num,
        text: String,
    },
    Ack {
        seq: Num,
        cumulative: Num,
    },
    Terminate,
    TerminateAck,
    Ping,
    Pong,
}

/// A peer to name in a command: the other peer, ourselves, or any id.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Who {
    Other,
    Me,
    Id(Id),
}

#[derive(Arbitrary, Debug)]
enum Cmd {
    Connect(Who),
    Accept(Option<Who>),
    Reject(Option<Who>),
    Send(Option<Who>, String),
    /// A long line, split into several messages.
    SendLong(Option<Who>, u16),
    Terminate(Option<Who>),
    Leave,
    Finish,
}

/// What one peer's user has seen in the current session with one other peer.
#[derive(Default, Debug)]
struct SessionView {
    /// The next `Message` number expected from the peer.
    next_shown: u64,
    /// Our messages numbered so far (`Sent`).
    sent: u64,
    /// Our messages reported `Delivered` or `Undelivered`.
    settled: BTreeSet<u64>,
    last_delivered: u64,
}

struct Node {
    addr: SocketAddr,
    peer: Peer,
    views: BTreeMap<ClientId, SessionView>,
}

struct Net {
    now: Instant,
    server: SocketAddr,
    registry: Registry,
    nodes: [Node; 2],
    in_flight: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Session ids seen on the wire, newest last.
    sessions: Vec<SessionId>,
    /// The last datagrams put on the wire, for replays.
    recorded: Vec<Vec<u8>>,
}

const MAX_IN_FLIGHT: usize = 256;

impl Net {
    fn node_of(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    /// Puts what a node sent on the network, packed as the driver packs it.
    fn queue(&mut self, from: SocketAddr, transmits: Vec<Transmit>) {
        let mut datagrams = Vec::new();
        let mut packer = Packer::new();
        for t in &transmits {
            if let Some(s) = Message::session(&t.message) {
                if !self.sessions.contains(&s) {
                    self.sessions.push(s);
                    if self.sessions.len() > 16 {
                        self.sessions.remove(0);
                    }
                }
            }
            packer.push(t.to, &t.message, |to, d| datagrams.push((to, d.to_vec())));
        }
        packer.flush(|to, d| datagrams.push((to, d.to_vec())));
        for (to, d) in datagrams {
            if to != self.server && self.node_of(to).is_none() {
                continue; // nobody there
            }
            if self.in_flight.len() >= MAX_IN_FLIGHT {
                self.in_flight.remove(0);
            }
            if self.recorded.len() >= 64 {
                self.recorded.remove(0);
            }
            self.recorded.push(d.clone());
            self.in_flight.push((from, to, d));
        }
    }

    fn drain_registry(&mut self) {
        let out: Vec<Transmit> = std::iter::from_fn(|| self.registry.poll_transmit()).collect();
        let server = self.server;
        self.queue(server, out);
        while self.registry.poll_event().is_some() {}
    }

    fn drain(&mut self, i: usize) {
        let from = self.nodes[i].addr;
        let out: Vec<Transmit> =
            std::iter::from_fn(|| self.nodes[i].peer.poll_transmit()).collect();
        self.queue(from, out);
        // What goes to the TURN server: nobody is there.
        let now = self.now;
        while self.nodes[i].peer.poll_relay_transmit(now).is_some() {}
        while let Some(e) = self.nodes[i].peer.poll_event() {
            self.nodes[i].check(&e);
        }
    }

    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let now = self.now;
        if to == self.server {
            self.registry.handle_datagram(now, from, bytes);
            self.drain_registry();
        } else if let Some(i) = self.node_of(to) {
            self.nodes[i].peer.handle_datagram(now, from, bytes);
            self.drain(i);
        }
    }

    fn deliver_nth(&mut self, n: u8, keep: bool) {
        if self.in_flight.is_empty() {
            return;
        }
        let k = usize::from(n) % self.in_flight.len();
        let (from, to, bytes) = if keep {
            self.in_flight[k].clone()
        } else {
            self.in_flight.remove(k)
        };
        self.deliver(from, to, &bytes);
    }

    fn flush(&mut self) {
        for _ in 0..2000 {
            if self.in_flight.is_empty() {
                return;
            }
            let (from, to, bytes) = self.in_flight.remove(0);
            self.deliver(from, to, &bytes);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.registry.poll_timeout();
        for n in &self.nodes {
            if let Some(t) = n.peer.poll_timeout() {
                next = Some(next.map_or(t, |m| m.min(t)));
            }
        }
        next
    }

    /// Moves the clock by `d`, running the timers due on the way, in order. A timer that
    /// stays due at the same instant after it ran, again and again, is a livelock. (With a
    /// retry interval of a millisecond, a long advance is many legitimate wake-ups: past a
    /// bound the clock jumps to the end, as if the driver were late.)
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        let mut stuck = 0;
        for _ in 0..20_000 {
            match self.next_deadline() {
                Some(t) if t <= end => {
                    if t <= self.now {
                        stuck += 1;
                        assert!(
                            stuck < 1000,
                            "timers due at {t:?} again and again: livelock"
                        );
                    } else {
                        stuck = 0;
                    }
                    self.now = self.now.max(t);
                    self.run_timers();
                }
                _ => break,
            }
        }
        self.now = self.now.max(end);
        self.run_timers();
    }

    fn run_timers(&mut self) {
        let now = self.now;
        if self.registry.poll_timeout().is_some_and(|t| t <= now) {
            self.registry.handle_timeout(now);
            self.drain_registry();
        }
        for i in 0..2 {
            if self.nodes[i].peer.poll_timeout().is_some_and(|t| t <= now) {
                self.nodes[i].peer.handle_timeout(now);
                self.drain(i);
                if let Some(t) = self.nodes[i].peer.poll_timeout() {
                    assert!(t >= now, "peer {i}: poll_timeout {t:?} before now {now:?}");
                }
            }
        }
    }

    /// Recorded datagram `index` (modulo how many there are), with byte `flip` (modulo its
    /// length) changed if given; empty if none was recorded.
    fn replayable(&self, index: usize, flip: Option<u16>) -> Vec<u8> {
        if self.recorded.is_empty() {
            return Vec::new();
        }
        let mut d = self.recorded[index % self.recorded.len()].clone();
        if let (Some(f), false) = (flip, d.is_empty()) {
            let i = usize::from(f) % d.len();
            d[i] ^= 0x5a;
        }
        d
    }

    fn id_of(&self, i: usize) -> ClientId {
        self.nodes[i].peer.id().unwrap_or(0)
    }

    fn who(&self, i: usize, w: Who) -> ClientId {
        match w {
            Who::Other => self.id_of(1 - i),
            Who::Me => self.id_of(i),
            Who::Id(id) => id.0,
        }
    }

    fn command(&mut self, i: usize, cmd: &Cmd) {
        let now = self.now;
        let who = |w: &Option<Who>| w.map(|w| self.who(i, w));
        match cmd {
            Cmd::Connect(w) => {
                let id = self.who(i, *w);
                let _ = self.nodes[i].peer.connect(now, id);
            }
            Cmd::Accept(w) => {
                let w = who(w);
                let _ = self.nodes[i].peer.accept(now, w);
            }
            Cmd::Reject(w) => {
                let w = who(w);
                let _ = self.nodes[i].peer.reject(now, w);
            }
            Cmd::Send(w, text) => {
                let w = who(w);
                let _ = self.nodes[i].peer.send(now, w, text);
            }
            Cmd::SendLong(w, len) => {
                let w = who(w);
                let text = "é".repeat(usize::from(*len % 4096));
                let _ = self.nodes[i].peer.send(now, w, &text);
            }
            Cmd::Terminate(w) => {
                let w = who(w);
                let _ = self.nodes[i].peer.terminate(now, w);
            }
            Cmd::Leave => self.nodes[i].peer.leave(now),
            Cmd::Finish => self.nodes[i].peer.finish(now),
        }
        self.drain(i);
    }

    fn source(&self, s: &Source) -> SocketAddr {
        match s {
            Source::Server => self.server,
            Source::Turn => TURN.parse().unwrap(),
            Source::Peer(b) => self.nodes[usize::from(*b)].addr,
            Source::Stranger(b) => STRANGERS[usize::from(*b)].parse().unwrap(),
            Source::Any(a) => a.to_addr(),
        }
    }

    fn inject(&mut self, to: Target, from: &Source, what: &Payload) {
        let to_addr = match to {
            Target::Server => self.server,
            Target::Peer(b) => self.nodes[usize::from(b)].addr,
        };
        let from_addr = self.source(from);
        let bytes = self.payload(to, what, 0);
        self.deliver(from_addr, to_addr, &bytes);
    }

    /// The datagram of a payload (`depth` bounds nesting).
    fn payload(&self, to: Target, what: &Payload, depth: u8) -> Vec<u8> {
        match what {
            Payload::Packed(parts) => {
                let mut d = vec![wire::MAGIC, wire::VERSION];
                if depth < 2 {
                    for p in parts.iter().take(16) {
                        let inner = self.payload(to, p, depth + 1);
                        d.extend_from_slice(inner.get(2..).unwrap_or_default());
                    }
                }
                d
            }
            Payload::Raw(b) => b.clone(),
            Payload::Message(m) => wire::encode(&m.to_message()),
            Payload::Forged {
                session,
                from_other,
                kind,
            } => {
                let session = if self.sessions.is_empty() {
                    0
                } else {
                    self.sessions[usize::from(*session) % self.sessions.len()]
                };
                let me = match to {
                    Target::Server => 0,
                    Target::Peer(b) => usize::from(b),
                };
                let from = if *from_other {
                    self.id_of(1 - me)
                } else {
                    self.id_of(me)
                };
                let msg = match kind {
                    Forged::ConnectRequest { hs } => Message::ConnectRequest {
                        from,
                        session,
                        hs: hs.clone(),
                    },
                    Forged::Accept { hs } => Message::Accept {
                        from,
                        session,
                        hs: hs.clone(),
                    },
                    Forged::Reject { hs } => Message::Reject {
                        from,
                        session,
                        hs: hs.clone(),
                    },
                    Forged::Sealed { n, data } => Message::Sealed {
                        from,
                        session,
                        n: n.0,
                        data: data.iter().copied().take(2048).collect(),
                    },
                    Forged::Replay { index, flip } => {
                        return self.replayable(usize::from(*index), *flip)
                    }
                    Forged::Chat { seq, text } => Message::Chat {
                        from,
                        session,
                        seq: seq.0,
                        text: text.clone(),
                    },
                    Forged::Ack { seq, cumulative } => Message::Ack {
                        from,
                        session,
                        seq: seq.0,
                        cumulative: cumulative.0,
                    },
                    Forged::Terminate => Message::Terminate { from, session },
                    Forged::TerminateAck => Message::TerminateAck { from, session },
                    Forged::Ping => Message::Ping { from, session },
                    Forged::Pong => Message::Pong { from, session },
                };
                wire::encode(&msg)
            }
        }
    }
}

impl Node {
    /// Checks one event against what this peer's user has seen so far.
    fn check(&mut self, e: &Event) {
        let me = self.addr;
        match e {
            Event::Connected { peer, .. } => {
                // A new session: new windows, numbers start again at 1.
                self.views.insert(
                    *peer,
                    SessionView {
                        next_shown: 1,
                        ..SessionView::default()
                    },
                );
            }
            Event::Message { from, seq, .. } => {
                let v = self
                    .views
                    .get_mut(from)
                    .unwrap_or_else(|| panic!("{me}: message {seq} from {from} without a session"));
                assert_eq!(
                    *seq, v.next_shown,
                    "{me}: message {seq} from {from} shown, expected {} (repeat, gap or reorder)",
                    v.next_shown
                );
                v.next_shown += 1;
            }
            Event::Sent { peer, seq, .. } => {
                let v = self
                    .views
                    .get_mut(peer)
                    .unwrap_or_else(|| panic!("{me}: sent {seq} to {peer} without a session"));
                assert_eq!(*seq, v.sent + 1, "{me}: sent numbers skip");
                v.sent = *seq;
            }
            Event::Delivered { peer, seq } | Event::Undelivered { peer, seq } => {
                let v = self
                    .views
                    .get_mut(peer)
                    .unwrap_or_else(|| panic!("{me}: {e:?} without a session"));
                assert!(
                    *seq >= 1 && *seq <= v.sent,
                    "{me}: {e:?} for a message never sent"
                );
                assert!(v.settled.insert(*seq), "{me}: {e:?} reported twice");
                if matches!(e, Event::Delivered { .. }) {
                    assert!(*seq > v.last_delivered, "{me}: {e:?} out of order");
                    v.last_delivered = *seq;
                }
            }
            _ => {}
        }
    }
}

fuzz_target!(|input: Input| {
    let server: SocketAddr = SERVER.parse().unwrap();
    let retry = Duration::from_millis(u64::from(input.retry_ms).max(1));
    let t0 = Instant::now();
    let mk = |k: usize| {
        let mut config = PeerConfig::new(server, retry);
        if k == 0 {
            config.turn = Some(p2pchat::peer::relay::TurnServer {
                addr: TURN.parse().unwrap(),
                username: "fuzz".into(),
                password: "fuzz".into(),
            });
        }
        Node {
            addr: PEERS[k].parse().unwrap(),
            peer: Peer::with_seed(config, t0, input.seed.wrapping_add(k as u64)),
            views: BTreeMap::new(),
        }
    };
    let mut net = Net {
        now: t0,
        server,
        registry: Registry::with_seed(RegistryConfig::default(), input.seed),
        nodes: [mk(0), mk(1)],
        in_flight: Vec::new(),
        sessions: Vec::new(),
        recorded: Vec::new(),
    };
    net.drain(0);
    net.drain(1);
    net.flush();
    assert!(net.nodes.iter().all(|n| n.peer.id().is_some()));
    if input.connect_first {
        let b = net.id_of(1);
        net.nodes[0].peer.connect(t0, b).unwrap();
        net.drain(0);
        net.flush();
        net.nodes[1].peer.accept(t0, None).unwrap();
        net.drain(1);
        net.flush();
        assert_eq!(net.nodes[0].peer.connected_peers(), vec![b]);
    }

    for step in input.steps.iter().take(200) {
        match step {
            Step::Deliver(n) => net.deliver_nth(*n, false),
            Step::Lose(n) => {
                if !net.in_flight.is_empty() {
                    let k = usize::from(*n) % net.in_flight.len();
                    net.in_flight.remove(k);
                }
            }
            Step::Duplicate(n) => net.deliver_nth(*n, true),
            Step::Flush => net.flush(),
            Step::Advance(a) => net.advance(a.duration()),
            Step::Command { who, cmd } => net.command(usize::from(*who), cmd),
            Step::Inject { to, from, what } => net.inject(*to, from, what),
        }
    }
});
