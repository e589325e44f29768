//! The cryptography of sessions: the Noise `IK` handshake folded into `ConnectRequest` and
//! `Accept`/`Reject`, the keys the server publishes and the keys pinned by name, and the
//! sealing and opening of everything else a session carries (`Sealed`).
//!
//! It sits between the sessions (sessions.rs, which only ever see messages whose sender is
//! proved) and the wire:
//!
//! - Outgoing: a `ConnectRequest`, `Accept` or `Reject` the sessions made gets its `hs`
//!   here (built once per session and cached, so that a resend carries the same bytes);
//!   every other message of a session is sealed with the session's transport keys, several
//!   for the same session into one `Sealed` ([`Secure::seal`]). A message of a session we
//!   hold no keys for is never sent in clear: it is dropped and counted.
//! - Incoming: a `ConnectRequest` is opened with our static key; its sender's static key
//!   must be the one the server publishes for the id it claims (asked with a `Lookup` when
//!   not known), and its timestamp newer than any handshake seen from that key, else it
//!   changes nothing. An `Accept`/`Reject` is believed only if it completes our handshake.
//!   A `Sealed` is opened, checked against the session's replay window, and its messages
//!   handed on.
//!
//! Timestamps: every handshake payload carries the sender's wall-clock time in nanoseconds
//! since the Unix epoch (the peer is told the wall-clock time of its start in
//! [`PeerConfig::wall_clock`](super::PeerConfig::wall_clock); it never reads a clock).
//! Per key, the newest one seen is kept: an older or equal one is a replay.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::debug;
use snow::{HandshakeState, StatelessTransportState};

use crate::identity::{fingerprint, params, Identity, PEER_PATTERN};
use crate::wire::{self, ClientId, Key, Message, SessionId};

/// Bound into every handshake (the Noise prologue), with the two ids and the session id.
const PROLOGUE: &[u8] = b"p2pchat v2";
/// The AEAD tag of every sealed message.
pub const TAG: usize = 16;
/// How many keys the newest handshake time is remembered for.
const KEY_MEMORY: usize = 4096;
/// How many keys the server published are remembered, by id.
const PUBLISHED_MEMORY: usize = 4096;
/// Requests waiting for the server to confirm their sender's key, at most.
const MAX_VERIFYING: usize = 64;
/// The defaults of [`PeerConfig::handshake_rate`](super::PeerConfig::handshake_rate):
/// new handshakes (first messages never seen) opened per second, at most, in all and
/// from one source IP address. Each costs Diffie-Hellman operations, so that a flood of
/// them (garbage or not) costs a bounded share of the CPU. Legitimate requests are resent
/// every retry interval and get through between the bursts of a flood from elsewhere.
pub const HANDSHAKES_PER_SEC: f64 = 200.0;
pub const HANDSHAKES_PER_SOURCE_PER_SEC: f64 = 20.0;
/// Sources whose handshake rate is remembered.
const SOURCE_MEMORY: usize = 4096;

/// A token bucket: `rate` a second, at most `rate` (one second's worth) at once.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant, rate: f64) -> Self {
        Bucket {
            tokens: rate,
            at: now,
        }
    }

    fn take(&mut self, now: Instant, rate: f64) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(rate);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The replay window of one direction of a session: the highest counter accepted and a
/// bitmap of the 2048 below it (RFC 6479, as WireGuard does). A counter is accepted once;
/// one more than 1984 below the highest is refused as too old.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    last: Option<u64>,
    bits: [u64; WORDS],
}

const WORDS: usize = 32;
/// The counters below the highest that the window can tell apart (one word is the
/// highest's own).
pub const WINDOW: u64 = (WORDS as u64 - 1) * 64;

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            last: None,
            bits: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    /// Whether counter `n` may be accepted (not seen, not too old). Checked before the
    /// (costlier) decryption; [`ReplayWindow::accept`] after it succeeds.
    pub fn check(&self, n: u64) -> bool {
        let Some(last) = self.last else { return true };
        if n > last {
            return true;
        }
        if last - n >= WINDOW {
            return false;
        }
        self.bits[(n / 64) as usize % WORDS] & (1 << (n % 64)) == 0
    }

    /// Marks `n` as seen (it passed [`ReplayWindow::check`] and decrypted).
    pub fn accept(&mut self, n: u64) {
        match self.last {
            Some(last) if n <= last => {}
            Some(last) => {
                let (from, to) = (last / 64, n / 64);
                for i in 1..=(to - from).min(WORDS as u64) {
                    self.bits[((from + i) % WORDS as u64) as usize] = 0;
                }
                self.last = Some(n);
            }
            None => self.last = Some(n),
        }
        self.bits[(n / 64) as usize % WORDS] |= 1 << (n % 64);
    }
}

/// The keys of an established session.
struct Transport {
    peer: ClientId,
    sid: SessionId,
    addr: SocketAddr,
    /// The peer's static key, proved by the handshake.
    key: Key,
    cipher: StatelessTransportState,
    /// The counter of the next message we seal.
    next: u64,
    window: ReplayWindow,
    /// When it is dropped, once its session is over (see [`Secure::sweep`]).
    expires: Option<Instant>,
    /// Other addresses of the peer this session also speaks on, latest last (at most
    /// [`MAX_PATHS`]): a direct path being checked while the session goes through a
    /// relay, and the relay once the session moved off it (what was in flight there
    /// still opens).
    paths: Vec<SocketAddr>,
}

impl Transport {
    fn speaks_on(&self, addr: SocketAddr) -> bool {
        self.addr == addr || self.paths.contains(&addr)
    }
}

/// The most other addresses a session speaks on (see `Transport::paths`).
pub const MAX_PATHS: usize = 4;

/// What [`Secure::open`] opened.
#[derive(Debug)]
pub struct Opened {
    pub messages: Vec<Message>,
    /// The session's address (where it was sent, if that is one of its paths).
    pub addr: SocketAddr,
    /// Whether it came from the session's address or one of its paths: a `Sealed` from
    /// anywhere else opens (the keys prove the peer sent it), but only its path checks
    /// may be acted on (see `paths.rs`).
    pub known: bool,
}

/// Our request to a peer: the handshake, and its first message (resent as is).
struct Initiating {
    hs: HandshakeState,
    msg1: Vec<u8>,
    addr: SocketAddr,
}

/// A peer's request to us.
struct Responding {
    src: SocketAddr,
    /// Its first message, to tell a resend (the same bytes) from a new request.
    msg1: Vec<u8>,
    /// The handshake, until we answer.
    hs: Option<HandshakeState>,
    /// The requester's static key, proved by the handshake.
    key: Key,
    /// Confirmed: the server publishes `key` for the id it claims.
    verified: bool,
    /// Its time (see the module documentation).
    time: u64,
    /// Our answer (the whole message, `Accept` or `Reject`), resent as is.
    answer: Option<Message>,
    /// When it is dropped, once nothing refers to it (see [`Secure::sweep`]).
    expires: Option<Instant>,
    /// Heard first at.
    since: Instant,
}

/// What became of an incoming `ConnectRequest`.
pub(super) enum Request {
    /// Nothing to do (forged, replayed, past the bounds, or waiting for the server).
    Nothing,
    /// Proved: hand it to the sessions. `fresh`: a handshake never seen before (a resend
    /// of one already handed on is not fresh).
    Proved { fresh: bool },
    /// The sender's key must be confirmed by the server: send this `Lookup`.
    Verify(Message),
}

/// What the server's answer about a peer did to the requests waiting for it.
pub(super) struct Verdicts {
    /// Requests now proved: (source address, session id), to hand to the sessions.
    pub proved: Vec<(SocketAddr, SessionId)>,
    /// Requests refused, with the line to show.
    pub refused: Vec<String>,
}

/// Where a name's key stands against the pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Pin {
    /// Not pinned yet, or pinned to this key.
    Fine,
    /// Pinned to another key.
    Changed,
}

/// See the module documentation.
pub(super) struct Secure {
    identity: Identity,
    /// The wall-clock time (since the Unix epoch) at `start`.
    wall_clock: Duration,
    start: Instant,
    /// The latest `now` the peer was given, and the last handshake time we sent.
    clock: Instant,
    last_time: u64,
    /// How long keys outlive their session (our `Terminate`s and the peer's resends).
    grace: Duration,
    /// The keys the server published, by id (from authentic answers), oldest first.
    published: HashMap<ClientId, Key>,
    published_order: VecDeque<ClientId>,
    /// Keys pinned by name (ASCII lowercase).
    pins: HashMap<String, Key>,
    /// The newest handshake time seen from each key.
    latest: HashMap<Key, u64>,
    latest_order: VecDeque<Key>,
    initiating: HashMap<(ClientId, SessionId), Initiating>,
    responding: HashMap<(ClientId, SessionId), Responding>,
    transports: HashMap<(ClientId, SessionId), Transport>,
    /// The budget of new handshakes, in all and per source IP.
    budget: Bucket,
    /// Handshakes a second: in all, per source.
    rates: (f64, f64),
    by_source: HashMap<std::net::IpAddr, Bucket>,
    source_order: VecDeque<std::net::IpAddr>,
    /// Scratch buffers.
    plain: Vec<u8>,
    sealed: Vec<u8>,
    /// Datagrams refused: forged, replayed, or for a session we hold no keys for.
    pub refused: u64,
    /// Messages not sent because their session had no keys.
    pub unsealed: u64,
}

fn prologue(requester: ClientId, asked: ClientId, session: SessionId) -> Vec<u8> {
    let mut p = PROLOGUE.to_vec();
    p.extend_from_slice(&requester.to_be_bytes());
    p.extend_from_slice(&asked.to_be_bytes());
    p.extend_from_slice(&session.to_be_bytes());
    p
}

/// The payload of the answer: 1 accept, 0 reject, then the time.
fn answer_payload(accept: bool, time: u64) -> [u8; 9] {
    let mut p = [0u8; 9];
    p[0] = u8::from(accept);
    p[1..].copy_from_slice(&time.to_be_bytes());
    p
}

impl Secure {
    pub fn new(
        identity: Identity,
        wall_clock: Duration,
        start: Instant,
        pins: HashMap<String, Key>,
        grace: Duration,
        rates: (f64, f64),
    ) -> Self {
        Secure {
            identity,
            wall_clock,
            start,
            clock: start,
            last_time: 0,
            grace,
            published: HashMap::new(),
            published_order: VecDeque::new(),
            pins,
            latest: HashMap::new(),
            latest_order: VecDeque::new(),
            initiating: HashMap::new(),
            responding: HashMap::new(),
            transports: HashMap::new(),
            budget: Bucket::full(start, rates.0),
            rates,
            by_source: HashMap::new(),
            source_order: VecDeque::new(),
            plain: Vec::new(),
            sealed: Vec::new(),
            refused: 0,
            unsealed: 0,
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The peer was given `now` (the time of the handshakes we build next).
    pub fn tick(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
    }

    /// Our time for a handshake, in nanoseconds since the Unix epoch: the wall-clock time
    /// of our start plus the time since (as of the latest `now`), and always more than the
    /// last one we sent.
    fn time(&mut self) -> u64 {
        let t = self.wall_clock + self.clock.saturating_duration_since(self.start);
        let t = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
        self.last_time = t.max(self.last_time + 1);
        self.last_time
    }

    /// Records `time` as seen from `key`; false if it is not newer than one seen before.
    fn newer(&mut self, key: Key, time: u64) -> bool {
        match self.latest.get_mut(&key) {
            Some(t) if *t >= time => false,
            Some(t) => {
                *t = time;
                true
            }
            None => {
                self.latest.insert(key, time);
                self.latest_order.push_back(key);
                if self.latest_order.len() > KEY_MEMORY {
                    if let Some(old) = self.latest_order.pop_front() {
                        self.latest.remove(&old);
                    }
                }
                true
            }
        }
    }

    // ------------------------------------------------------------------ keys and pins

    /// The server says client `id` has `key` (and `name`, if it claimed one). `Changed` if
    /// the name is pinned to another key (the key is then not believed for `id`).
    pub fn learn(&mut self, id: ClientId, key: Key, name: Option<&str>) -> Pin {
        if let Some(name) = name {
            if self
                .pins
                .get(&name.to_ascii_lowercase())
                .is_some_and(|k| *k != key)
            {
                self.published.remove(&id);
                return Pin::Changed;
            }
        }
        if self.published.insert(id, key).is_none() {
            self.published_order.push_back(id);
            if self.published_order.len() > PUBLISHED_MEMORY {
                if let Some(old) = self.published_order.pop_front() {
                    self.published.remove(&old);
                }
            }
        }
        Pin::Fine
    }

    /// The key of our session with `peer` (proved by its handshake), else the one the server
    /// published.
    pub fn key_of(&self, peer: ClientId) -> Option<Key> {
        self.transports
            .values()
            .filter(|t| t.peer == peer && t.expires.is_none())
            .map(|t| t.key)
            .next()
            .or_else(|| self.published.get(&peer).copied())
    }

    /// The key pinned for `name`.
    pub fn pinned(&self, name: &str) -> Option<&Key> {
        self.pins.get(&name.to_ascii_lowercase())
    }

    /// Pins `key` for `name` if the name has no pin yet (trust on first use). True if it
    /// was pinned now.
    pub fn pin(&mut self, name: &str, key: Key) -> bool {
        let lower = name.to_ascii_lowercase();
        if self.pins.contains_key(&lower) {
            return false;
        }
        self.pins.insert(lower, key);
        true
    }

    /// Forgets the pin of `name` (`trust <name>`): its next key is pinned anew. The key it
    /// was pinned to, if any.
    pub fn unpin(&mut self, name: &str) -> Option<Key> {
        self.pins.remove(&name.to_ascii_lowercase())
    }

    // ------------------------------------------------------------------ the handshake

    /// The `hs` of our `ConnectRequest` to `peer` at `addr` for `session`: built once, the
    /// same bytes for every resend. `None` if we do not know the peer's key.
    pub fn request(
        &mut self,
        me: ClientId,
        peer: ClientId,
        addr: SocketAddr,
        session: SessionId,
    ) -> Option<Vec<u8>> {
        if let Some(i) = self.initiating.get_mut(&(peer, session)) {
            i.addr = addr;
            return Some(i.msg1.clone());
        }
        let key = *self.published.get(&peer)?;
        let prologue = prologue(me, peer, session);
        let mut hs = snow::Builder::new(params(PEER_PATTERN))
            .local_private_key(self.identity.secret())
            .and_then(|b| b.remote_public_key(&key))
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_initiator())
            .ok()?;
        let mut msg1 = vec![0u8; 256];
        let n = hs
            .write_message(&self.time().to_be_bytes(), &mut msg1)
            .ok()?;
        msg1.truncate(n);
        self.initiating.insert(
            (peer, session),
            Initiating {
                hs,
                msg1: msg1.clone(),
                addr,
            },
        );
        Some(msg1)
    }

    /// A `ConnectRequest` from `src` claiming to be `from`: see [`Request`].
    pub fn handle_request(
        &mut self,
        now: Instant,
        me: ClientId,
        src: SocketAddr,
        from: ClientId,
        session: SessionId,
        msg1: &[u8],
    ) -> Request {
        if let Some(r) = self.responding.get_mut(&(from, session)) {
            if r.msg1 == msg1 && r.src == src {
                // A resend of a request we know; one still waiting for the server asks
                // it again (our Lookup or its answer may have been lost).
                return if r.verified {
                    Request::Proved { fresh: false }
                } else {
                    Request::Verify(Message::lookup(from))
                };
            }
        }
        if !self.afford(now, src) {
            self.refused += 1;
            debug!("{src}: too many new handshakes lately; a ConnectRequest dropped unopened");
            return Request::Nothing;
        }
        let prologue = prologue(from, me, session);
        let Ok(mut hs) = snow::Builder::new(params(PEER_PATTERN))
            .local_private_key(self.identity.secret())
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_responder())
        else {
            return Request::Nothing;
        };
        let mut payload = [0u8; 64];
        let opened = hs.read_message(msg1, &mut payload);
        let key: Option<Key> = hs.get_remote_static().and_then(|k| k.try_into().ok());
        let (Ok(8), Some(key)) = (opened, key) else {
            self.refused += 1;
            debug!("{src}: a ConnectRequest claiming to be {from} does not open; dropped");
            return Request::Nothing;
        };
        let time = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
        if self.latest.get(&key).is_some_and(|&t| t >= time) {
            self.refused += 1;
            debug!("{src}: a replayed or old ConnectRequest from {from}; dropped");
            return Request::Nothing;
        }
        let verified = self.published.get(&from) == Some(&key);
        if verified {
            // Only a proved request moves the key's time on: one refused (its sender is
            // not who it claims) may not make the real one's look old.
            self.newer(key, time);
        } else {
            let waiting = self.responding.values().filter(|r| !r.verified).count();
            if waiting >= MAX_VERIFYING {
                self.refused += 1;
                debug!("{src}: too many requests wait for the server; dropped");
                return Request::Nothing;
            }
        }
        self.responding.insert(
            (from, session),
            Responding {
                src,
                msg1: msg1.to_vec(),
                hs: Some(hs),
                key,
                verified,
                time,
                answer: None,
                expires: None,
                since: now,
            },
        );
        if verified {
            Request::Proved { fresh: true }
        } else {
            Request::Verify(Message::lookup(from))
        }
    }

    /// Whether a new handshake from `src` may be opened now (see [`HANDSHAKES_PER_SEC`]).
    fn afford(&mut self, now: Instant, src: SocketAddr) -> bool {
        let ip = match src.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        let (all, rate) = self.rates;
        let mut source = self
            .by_source
            .get(&ip)
            .copied()
            .unwrap_or_else(|| Bucket::full(now, rate));
        let mut global = self.budget;
        let ok = source.take(now, rate) && global.take(now, all);
        if ok {
            self.budget = global;
        }
        if self.by_source.insert(ip, source).is_none() {
            self.source_order.push_back(ip);
            if self.source_order.len() > SOURCE_MEMORY {
                if let Some(old) = self.source_order.pop_front() {
                    self.by_source.remove(&old);
                }
            }
        }
        ok
    }

    /// The server answered about `id` (`key` is `None`: it has no such client). The
    /// requests claiming to be `id` are proved if their key is the one it publishes.
    pub fn verdicts(&mut self, id: ClientId, key: Option<Key>) -> Verdicts {
        let mut verdicts = Verdicts {
            proved: Vec::new(),
            refused: Vec::new(),
        };
        let waiting: Vec<SessionId> = self
            .responding
            .iter()
            .filter(|((p, _), r)| *p == id && !r.verified)
            .map(|((_, s), _)| *s)
            .collect();
        for session in waiting {
            let r = self.responding.get_mut(&(id, session)).expect("listed");
            if Some(r.key) == key {
                r.verified = true;
                let (src, key, time) = (r.src, r.key, r.time);
                if !self.newer(key, time) {
                    // A newer request of the same key was proved meanwhile.
                    self.responding.remove(&(id, session));
                    continue;
                }
                verdicts.proved.push((src, session));
            } else {
                let r = self.responding.remove(&(id, session)).expect("listed");
                self.refused += 1;
                verdicts.refused.push(match key {
                    Some(_) => format!(
                        "refused a connection request from {} claiming to be client {id}: its key ({}) is not the one the server has for {id}",
                        r.src,
                        fingerprint(&r.key)
                    ),
                    None => format!(
                        "refused a connection request from {} claiming to be client {id}, which the server does not know",
                        r.src
                    ),
                });
            }
        }
        verdicts
    }

    /// Our answer to the request of `peer` for `session` to `to`: `Accept` (with the
    /// session's keys from now on) or `Reject`, built once and resent as is.
    fn answer(
        &mut self,
        me: ClientId,
        to: SocketAddr,
        session: SessionId,
        accept: bool,
    ) -> Option<Message> {
        let time = self.time();
        let (&(peer, _), r) = self
            .responding
            .iter_mut()
            .find(|((_, s), r)| *s == session && r.src == to && r.verified)?;
        if let Some(answer) = &r.answer {
            return Some(answer.clone());
        }
        let mut hs = r.hs.take()?;
        let mut msg2 = vec![0u8; 128];
        let n = hs
            .write_message(&answer_payload(accept, time), &mut msg2)
            .ok()?;
        msg2.truncate(n);
        let answer = if accept {
            Message::Accept {
                from: me,
                session,
                hs: msg2,
            }
        } else {
            Message::Reject {
                from: me,
                session,
                hs: msg2,
            }
        };
        r.answer = Some(answer.clone());
        let key = r.key;
        if accept {
            let cipher = hs.into_stateless_transport_mode().ok()?;
            self.put_transport(peer, session, to, key, cipher);
        }
        Some(answer)
    }

    fn put_transport(
        &mut self,
        peer: ClientId,
        session: SessionId,
        addr: SocketAddr,
        key: Key,
        cipher: StatelessTransportState,
    ) {
        self.transports.insert(
            (peer, session),
            Transport {
                peer,
                sid: session,
                addr,
                key,
                cipher,
                next: 0,
                window: ReplayWindow::default(),
                expires: None,
                paths: Vec::new(),
            },
        );
    }

    /// An `Accept` (`accept`) or `Reject` from `from` at `src` for `session`: true if it
    /// completes our handshake (the peer is who we asked, and it said so now).
    pub fn handle_answer(
        &mut self,
        from: ClientId,
        src: SocketAddr,
        session: SessionId,
        msg2: &[u8],
        accept: bool,
    ) -> bool {
        let Some(i) = self.initiating.get_mut(&(from, session)) else {
            return false;
        };
        if i.addr != src {
            return false;
        }
        let mut payload = [0u8; 64];
        let Ok(9) = i.hs.read_message(msg2, &mut payload) else {
            self.refused += 1;
            debug!("{src}: an answer claiming to be {from} does not open; dropped");
            return false;
        };
        if payload[0] != u8::from(accept) {
            self.refused += 1;
            return false;
        }
        let i = self.initiating.remove(&(from, session)).expect("present");
        let key: Key = match i.hs.get_remote_static().and_then(|k| k.try_into().ok()) {
            Some(k) => k,
            None => return false,
        };
        let time = u64::from_be_bytes(payload[1..9].try_into().expect("8 bytes"));
        self.newer(key, time);
        if accept {
            match i.hs.into_stateless_transport_mode() {
                Ok(cipher) => self.put_transport(from, session, src, key, cipher),
                Err(_) => return false,
            }
        }
        true
    }

    // ------------------------------------------------------------------ sealing

    /// Whether a message to a peer is one of the handshake (`ConnectRequest`, `Accept`,
    /// `Reject`), which travel in clear with their Noise message.
    pub fn is_handshake(msg: &Message) -> bool {
        matches!(
            msg,
            Message::ConnectRequest { .. } | Message::Accept { .. } | Message::Reject { .. }
        )
    }

    /// Whether a message to a peer is sealed (every message of a session but the three of
    /// the handshake).
    pub fn is_sealed_kind(msg: &Message) -> bool {
        msg.session().is_some()
            && !matches!(
                msg,
                Message::ConnectRequest { .. }
                    | Message::Accept { .. }
                    | Message::Reject { .. }
                    | Message::Sealed { .. }
            )
    }

    /// Fills in the `hs` of a handshake message we send (or returns `None` to drop it).
    pub fn outgoing_handshake(
        &mut self,
        to: SocketAddr,
        msg: Message,
        requested: impl Fn(SessionId) -> Option<ClientId>,
    ) -> Option<Message> {
        match msg {
            Message::ConnectRequest { from, session, .. } => {
                let peer = requested(session)?;
                let hs = self.request(from, peer, to, session)?;
                Some(Message::ConnectRequest { from, session, hs })
            }
            Message::Accept { from, session, .. } => self.answer(from, to, session, true),
            Message::Reject { from, session, .. } => self.answer(from, to, session, false),
            other => Some(other),
        }
    }

    /// The transport of session `session` to `to`, if any.
    fn transport_to(&mut self, to: SocketAddr, session: SessionId) -> Option<&mut Transport> {
        self.transports
            .values_mut()
            .find(|t| t.sid == session && t.speaks_on(to))
    }

    /// Session `session` with `peer` also speaks on `addr` (a path being checked). False
    /// if there is no such session.
    pub fn add_path(&mut self, peer: ClientId, session: SessionId, addr: SocketAddr) -> bool {
        let Some(t) = self.transports.get_mut(&(peer, session)) else {
            return false;
        };
        if !t.speaks_on(addr) {
            if t.paths.len() >= MAX_PATHS {
                t.paths.remove(0);
            }
            t.paths.push(addr);
        }
        true
    }

    /// Session `session` with `peer` moves to `addr` (one of its paths): what it seals goes
    /// there; the old address stays one of its paths.
    pub fn migrate(&mut self, peer: ClientId, session: SessionId, addr: SocketAddr) {
        let Some(t) = self.transports.get_mut(&(peer, session)) else {
            return;
        };
        if t.addr == addr {
            return;
        }
        let old = std::mem::replace(&mut t.addr, addr);
        t.paths.retain(|p| *p != addr);
        if t.paths.len() >= MAX_PATHS {
            t.paths.remove(0);
        }
        t.paths.push(old);
    }

    /// Our `Accept` of session `session` with the peer at `to`, if the peer has sent
    /// nothing sealed since (it may not have it: a lost `Accept` leaves the requester
    /// without keys, unable to read our pings). Sent again beside a `Ping`, it brings the
    /// requester in without waiting for its next request.
    pub fn unheard_accept(&self, to: SocketAddr, session: SessionId) -> Option<Message> {
        let t = self
            .transports
            .values()
            .find(|t| t.addr == to && t.sid == session && t.window.last.is_none())?;
        let r = self.responding.get(&(t.peer, session))?;
        match &r.answer {
            Some(accept @ Message::Accept { .. }) => Some(accept.clone()),
            _ => None,
        }
    }

    /// How many bytes of messages fit in one `Sealed` of at most `limit` bytes.
    pub fn room(limit: usize) -> usize {
        // The envelope: a Sealed with the largest ids and counter, and a bin16 header.
        let envelope = wire::encoded_len(&Message::Sealed {
            from: u32::MAX,
            session: u64::MAX,
            n: u64::MAX,
            data: vec![0; 256],
        }) - 256;
        limit.saturating_sub(envelope + TAG + 2)
    }

    /// Seals `messages` (of one session, to `to`) into one `Sealed`; `None` (and they are
    /// counted, not sent) if the session has no keys.
    pub fn seal(&mut self, to: SocketAddr, messages: &[Message]) -> Option<Message> {
        let first = messages.first()?;
        let Some(session) = first.session() else {
            // Not of a session: nothing to seal it with, and it is not sent in clear.
            self.unsealed += messages.len() as u64;
            debug!("{to}: not of a session, not sent: {first:?}");
            return None;
        };
        let from = peer_from(first);
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        for m in messages {
            wire::append_message(m, &mut plain);
        }
        let result = self.seal_bytes(to, from, session, &plain);
        self.plain = plain;
        if result.is_none() {
            self.unsealed += messages.len() as u64;
            debug!(
                "{to}: no keys for session {session}; {} messages not sent",
                messages.len()
            );
        }
        result
    }

    fn seal_bytes(
        &mut self,
        to: SocketAddr,
        from: ClientId,
        session: SessionId,
        plain: &[u8],
    ) -> Option<Message> {
        let mut sealed = std::mem::take(&mut self.sealed);
        let t = self.transport_to(to, session)?;
        let n = t.next;
        t.next += 1;
        sealed.clear();
        sealed.resize(plain.len() + TAG, 0);
        let len = t.cipher.write_message(n, plain, &mut sealed).ok()?;
        let data = sealed[..len].to_vec();
        self.sealed = sealed;
        Some(Message::Sealed {
            from,
            session,
            n,
            data,
        })
    }

    /// Opens a `Sealed` from `from` at `src`: its messages, each of that session and sender,
    /// or `None` (counted) if it is forged, replayed, or of a session we hold no keys for.
    /// From an address the session does not use, it is opened only if `elsewhere()` says
    /// it may be a new path (asked only then), else refused unopened: a copy replayed from elsewhere neither costs
    /// an AEAD open nor takes the original's counter.
    pub fn open(
        &mut self,
        src: SocketAddr,
        from: ClientId,
        session: SessionId,
        n: u64,
        data: &[u8],
        elsewhere: impl FnOnce() -> bool,
    ) -> Option<Opened> {
        let opened = self.open_inner(src, from, session, n, data, elsewhere);
        if opened.is_none() {
            self.refused += 1;
        }
        opened
    }

    fn open_inner(
        &mut self,
        src: SocketAddr,
        from: ClientId,
        session: SessionId,
        n: u64,
        data: &[u8],
        elsewhere: impl FnOnce() -> bool,
    ) -> Option<Opened> {
        let t = self.transports.get_mut(&(from, session))?;
        let (addr, known) = (t.addr, t.speaks_on(src));
        if !known && !elsewhere() {
            debug!("{src}: Sealed of session {session} from an address it does not use: dropped");
            return None;
        }
        let mut plain = std::mem::take(&mut self.plain);
        if !t.window.check(n) || data.len() < TAG {
            debug!("{src}: Sealed {n} of session {session} refused (replay)");
            return None;
        }
        plain.clear();
        plain.resize(data.len(), 0);
        let Ok(len) = t.cipher.read_message(n, data, &mut plain) else {
            debug!("{src}: Sealed {n} of session {session} does not open");
            self.plain = plain;
            return None;
        };
        t.window.accept(n);
        let decoded = wire::decode_body(&plain[..len]);
        self.plain = plain;
        let messages = decoded.ok()?;
        let own = messages.iter().all(|m| {
            Self::is_sealed_kind(m) && m.session() == Some(session) && peer_from(m) == from
        });
        own.then_some(Opened {
            messages,
            addr,
            known,
        })
    }

    // ------------------------------------------------------------------ lifetime

    /// Forgets what no session refers to any more, `grace` after it stopped: `live(peer,
    /// session)` says whether the sessions still hold (or close, or remember) it.
    pub fn sweep(&mut self, now: Instant, live: impl Fn(ClientId, SessionId) -> bool) {
        let grace = self.grace;
        let keep = |key: &(ClientId, SessionId), expires: &mut Option<Instant>| {
            if live(key.0, key.1) {
                *expires = None;
                return true;
            }
            let until = *expires.get_or_insert(now + grace);
            until > now
        };
        self.transports.retain(|k, t| keep(k, &mut t.expires));
        self.responding.retain(|k, r| {
            if !r.verified && now < r.since + grace {
                return true; // still waiting for the server
            }
            keep(k, &mut r.expires)
        });
        self.initiating.retain(|&(p, s), _| live(p, s));
    }

    /// Sessions with keys, requests and handshakes held (for tests and `status`).
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.transports.len(),
            self.responding.len(),
            self.initiating.len(),
        )
    }
}

/// The `from` of a peer-to-peer message.
pub(super) fn peer_from(msg: &Message) -> ClientId {
    match msg {
        Message::ConnectRequest { from, .. }
        | Message::Accept { from, .. }
        | Message::Reject { from, .. }
        | Message::Sealed { from, .. }
        | Message::Chat { from, .. }
        | Message::Ack { from, .. }
        | Message::Terminate { from, .. }
        | Message::TerminateAck { from, .. }
        | Message::Ping { from, .. }
        | Message::Pong { from, .. }
        | Message::FileOffer { from, .. }
        | Message::FileGet { from, .. }
        | Message::Chunk { from, .. }
        | Message::ChunkAck { from, .. }
        | Message::FileCancel { from, .. }
        | Message::FileCancelAck { from, .. } => *from,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_chunk_sealed_alone_fits_one_packed_datagram() {
        let chunk = Message::Chunk {
            from: u32::MAX,
            session: u64::MAX,
            n: u64::MAX,
            seq: u64::MAX,
            data: vec![0xff; wire::CHUNK_SIZE],
        };
        let body = wire::encoded_len(&chunk) - 2;
        let sealed = wire::encoded_len(&Message::Sealed {
            from: u32::MAX,
            session: u64::MAX,
            n: u64::MAX,
            data: vec![0; body + TAG],
        });
        assert!(sealed <= wire::PACK_LIMIT, "{sealed} bytes");
        assert!(
            body <= Secure::room(wire::PACK_LIMIT),
            "{body} bytes of messages"
        );
    }

    #[test]
    fn the_replay_window_accepts_each_counter_once_and_refuses_the_too_old() {
        let mut w = ReplayWindow::default();
        for n in [5, 3, 4, 100, 99, 2000] {
            assert!(w.check(n), "{n}");
            w.accept(n);
            assert!(!w.check(n), "{n} twice");
        }
        assert!(!w.check(5) && !w.check(100));
        assert!(w.check(1999) && w.check(2000 - WINDOW + 1));
        assert!(!w.check(2000 - WINDOW), "too old");
        w.accept(1_000_000);
        assert!(!w.check(1999), "far behind now");
        assert!(w.check(1_000_000 - 1));
        assert!(!w.check(1_000_000));
    }
}
