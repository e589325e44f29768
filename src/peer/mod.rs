//! A client's state machine: registration with the rendezvous server, sessions with peers,
//! connection requests, accept/reject, chat, terminate and leave.
//!
//! [`Peer`] never touches a socket or reads the clock. Drive it like this:
//!
//! 1. Feed inputs with the current time: [`Peer::handle_datagram`] for every datagram that
//!    arrives, the user's commands ([`Peer::connect`], [`Peer::accept`], [`Peer::send`], ...),
//!    and [`Peer::handle_timeout`] once [`Peer::poll_timeout`]'s deadline has passed.
//! 2. After each input, drain [`Peer::poll_transmit`] (datagrams to send) and
//!    [`Peer::poll_event`] (things to show the user), then ask [`Peer::poll_timeout`] when to
//!    wake up next.
//! 3. Stop once [`Peer::is_finished`] is true (after `leave`, or a fatal event).
//!
//! Sessions are keyed by the peer's id, so several can be open at once. Each has a random
//! session id chosen by the requester; a peer message is acted on only when its `from`, its
//! source address and its session id all match, so datagrams from strangers or from an
//! earlier session change nothing. Every retry has a bound that ends in an event.
//!
//! Hostile input is bounded too (the protocol side is in [`crate::wire`], "Amplification"
//! and "Bounds"): a datagram is read for at most [`wire::MAX_PEER_MESSAGES`] messages; what
//! goes back to an address that has not proved it receives is at most what it sent; the
//! requests and file offers waiting for the person's answer are bounded, and those past
//! the bounds are shown as a count ([`Event::RequestsIgnored`], [`Event::OffersRefused`])
//! at most once per [`PeerConfig::summary_interval`]; a peer of another protocol version is
//! named once ([`Event::PeerVersion`]). The deadlines of sessions are kept in order, so
//! that a turn costs the same with many requests waiting as with none.
//!
//! # Layout
//!
//! `Peer` is a composition of parts, each a struct that owns its state, the logic over it
//! and its own timers (`poll_timeout`, `handle_timeout`); `Peer` dispatches the inputs to
//! them, takes the soonest of their deadlines, and does what involves two parts at once.
//!
//! - `mod.rs`: [`Peer`] and [`PeerConfig`]: the public API, the dispatch of inputs, and the
//!   steps that cross parts (opening a session sends what the outbox holds for the peer; a
//!   session that ends ends its file transfers).
//! - `event.rs`: what the peer tells its user: [`Event`], [`EndReason`], [`CommandError`],
//!   [`Target`], [`Sending`], [`SessionInfo`], [`PeerStats`].
//! - `send_errors.rs`: datagrams the socket refused to send, reported once per address.
//! - `server.rs`: the link to the rendezvous server: register (again after a restart),
//!   keepalives, leave.
//! - `names.rs`: the claim of our name, `Resolve`s, the `list` of who is online, and the
//!   names of peers.
//! - `sessions.rs`: the sessions with peers, by peer id: lookups, requests, accept/reject,
//!   terminate (resent until acknowledged), the current peer.
//! - `session.rs`: one session: its state, its windows and timers, chat and its
//!   acknowledgements, pings.
//! - `secure.rs`: the cryptography of sessions: the Noise `IK` handshake folded into
//!   `ConnectRequest`/`Accept`/`Reject`, the keys the server publishes and those pinned by
//!   name, the sealing of every other message of a session into `Sealed`, replay windows,
//!   and the rate of new handshakes.
//! - `outbox.rs`: messages queued for peers that are not connected, and when to try again.
//! - `files.rs`: file transfers, a sub-machine with its own `poll_*` and `handle_*`: the
//!   table of transfers, the answers to the peer's messages, the endings.
//! - `transfer.rs`: one transfer: reading and sending chunks, progress, its timers.
//! - `punch.rs`: hole punching: the server's introductions, our probes on their own short
//!   schedule, the paths they find (`path` of [`Event::Connected`]), and `NoPath`.
//! - `relay.rs`: [`relay::Relay`], a TURN client (allocation, permissions, channels,
//!   refreshes, release) over `turn-client-proto`.
//! - `paths.rs`: `Paths`, the relayed path and the choice between paths: our allocation,
//!   the peers' relayed addresses from their introductions, when a request goes through
//!   the relays, and the checks that move a session from the relay to a direct path.
//! - `path_steps.rs`: the steps of those choices that cross parts (a sealed `Ping` on a
//!   new path, moving a session with its keys and transfers, a lost relay ending
//!   sessions): more of `Peer`'s methods, kept apart from the dispatch here.
//! - `retry.rs`: `Retry`, the one "resend or give up" rule of every resent message.
//! - `timers.rs`: `Timers`, deadlines in order, so that the next one is found without
//!   walking every session.
//! - `outputs.rs`: `Outputs`, the queues of datagrams and events that every part writes into
//!   (the parts are handed `&mut Outputs`; what another part must do comes back as a value),
//!   with the limit on answers to addresses that have not proved they receive; `Tally` and
//!   `Seen`, which turn floods into a few events.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::debug;
use rand::SeedableRng;

mod event;
mod files;
mod names;
mod outbox;
mod outputs;
mod path_steps;
pub mod paths;
mod punch;
pub mod relay;
mod requests;
mod retry;
mod secure;
mod send_errors;
mod server;
mod session;
mod sessions;
mod timers;
mod transfer;

use crate::identity::{fingerprint, Identity};
use crate::reliable::SendConfig;
use crate::wire::{self, ClientId, DecodeError, Key, Message, SessionId, Token, Transmit};
pub use event::{
    CommandError, EndReason, Event, FileError, Path, PeerStats, Sending, SessionInfo, Target,
    TransferFailure, TransferInfo,
};
pub use files::{chunk_count, hex, FileConfig, FileSink, FileSource};
use files::{Files, Link};
use names::{Heard, Lapsed, Names};
use outbox::Outbox;
use outputs::{Outputs, Seen};
use paths::Paths;
use punch::Punches;
use relay::{Received, TurnServer};
use requests::Requests;
use secure::{Pin, Request, Secure};
use send_errors::SendFailures;
pub use send_errors::{SendError, SendTarget, SEND_ERROR_QUIET};
use server::{Answer, Server};
use sessions::{Connecting, Ended, Requested, Sessions, Terminated};

/// Settings of a [`Peer`]. [`PeerConfig::new`] derives sensible values from the retry
/// interval; every field may be changed after.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The rendezvous server.
    pub server: SocketAddr,
    /// Ask the server for this id.
    pub want_id: Option<ClientId>,
    /// Claim this unique name once registered.
    pub name: Option<String>,
    /// Shown beside the name.
    pub display_name: Option<String>,
    /// Our long-term key pair (from the state directory; a fresh one per run by default).
    /// With it the client takes its name back from a registration of its previous run
    /// that the server has not yet expired, and proves who it is to its peers.
    pub identity: Identity,
    /// Keys pinned by name (trust on first use, from the state directory): a peer of that
    /// name with another key is refused with [`Event::KeyChanged`] until [`Peer::trust`].
    pub pins: HashMap<String, Key>,
    /// The wall-clock time, since the Unix epoch, at the `now` the peer is created with:
    /// handshakes carry it (plus the time since), so that a replayed one is told from a
    /// peer's restart. The peer reads no clock itself.
    pub wall_clock: Duration,
    /// Messages of a session are sealed together into datagrams of at most this many
    /// bytes (0: each message alone).
    pub seal_limit: usize,
    /// New handshakes opened per second, at most: in all, and from one source IP (each
    /// costs Diffie-Hellman operations; past these, requests are dropped unopened and
    /// counted in [`PeerStats::refused`]).
    pub handshake_rate: (f64, f64),
    /// How often a peer that messages are queued for is looked up again while it is
    /// offline or does not answer.
    pub queue_retry: Duration,
    /// Period of `ConnectRequest` resends, and the longest any other resend waits.
    pub retry_interval: Duration,
    /// `ConnectRequest`s sent before the user is told there was no answer.
    pub connect_tries: u32,
    /// Period of `Register`, `Lookup` and `Leave` resends.
    pub server_retry: Duration,
    /// `Register`, `Lookup` and `Leave` sends before giving up.
    pub server_tries: u32,
    /// `Terminate` sends before giving up.
    pub terminate_tries: u32,
    /// Chat window, resend bound and timeouts.
    pub chat: SendConfig,
    /// A connected session with nothing sent for this long sends a `Ping`.
    pub session_idle: Duration,
    /// A connected session with nothing heard for this long is declared dead.
    pub session_timeout: Duration,
    /// File transfers: chunk window, progress events, offer lifetime.
    pub files: FileConfig,
    /// Connection requests waiting for our answer: at most this many; more are ignored
    /// (no answer) and counted, until some are answered or expire.
    pub max_requests: usize,
    /// Of those, at most this many from one source (an IPv4 address, an IPv6 /64).
    pub max_requests_per_source: usize,
    /// What floods make us ignore (requests, file offers) is shown as one count at most
    /// this often; so is a stranger's datagram of another protocol version.
    pub summary_interval: Duration,
    /// Our own addresses, told to the server (in `Keepalive`s) so that peers behind the same
    /// NAT reach us on the LAN: `None` lets the driver gather them (the addresses of the
    /// host's interfaces, only when the server is not on loopback); `Some` is the list to
    /// tell (empty: none).
    pub candidates: Option<Vec<SocketAddr>>,
    /// A TURN server to relay through when no direct path exists (`--turn`); without it,
    /// the one the rendezvous server grants, if any.
    pub turn: Option<TurnServer>,
    /// A session on the relay asks the server for the peer this often, so that both
    /// probe again and the session moves to a direct path once one opens.
    pub relay_upgrade: Duration,
}

impl PeerConfig {
    pub fn new(server: SocketAddr, retry_interval: Duration) -> Self {
        let retry_interval = retry_interval.max(Duration::from_millis(1));
        let server_retry = retry_interval.min(Duration::from_secs(1));
        let session_idle = retry_interval.min(Duration::from_secs(5));
        PeerConfig {
            server,
            want_id: None,
            name: None,
            display_name: None,
            identity: Identity::generate(),
            pins: HashMap::new(),
            wall_clock: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            seal_limit: wire::PACK_LIMIT,
            handshake_rate: (
                secure::HANDSHAKES_PER_SEC,
                secure::HANDSHAKES_PER_SOURCE_PER_SEC,
            ),
            queue_retry: retry_interval * 3,
            retry_interval,
            connect_tries: 6,
            server_retry,
            server_tries: 5,
            terminate_tries: 6,
            chat: SendConfig {
                initial_rto: server_retry,
                min_rto: Duration::from_millis(50).min(retry_interval),
                max_rto: retry_interval,
                ..SendConfig::default()
            },
            session_idle,
            session_timeout: session_idle * 6,
            files: FileConfig::from_chat(&SendConfig::default(), retry_interval, 6),
            max_requests: 64,
            max_requests_per_source: 8,
            summary_interval: Duration::from_secs(5),
            candidates: None,
            turn: None,
            relay_upgrade: retry_interval * 3,
        }
        .with_file_defaults()
    }

    /// Derives the file transfer settings from the chat's (call again after changing them);
    /// the downloads directory is kept.
    pub fn with_file_defaults(mut self) -> Self {
        let downloads = std::mem::take(&mut self.files.downloads);
        self.files = FileConfig::from_chat(&self.chat, self.retry_interval, self.connect_tries);
        self.files.downloads = downloads;
        // A transfer goes quiet for as long as a session may before it is given up.
        self.files.stall_timeout = self.session_timeout;
        self.files.summary_interval = self.summary_interval;
        self
    }
}

/// A client of the chat: see the module documentation.
pub struct Peer {
    config: PeerConfig,
    server: Server,
    names: Names,
    sessions: Sessions,
    outbox: Outbox,
    /// File transfers (files.rs).
    files: Files,
    /// `finish` was called: leave once every message is delivered.
    finishing: bool,
    out: Outputs,
    /// The nonces of our requests to the server that wait for their answers.
    requests: Requests,
    /// Datagrams that could not be decoded.
    undecodable: u64,
    /// Messages past the first [`wire::MAX_PEER_MESSAGES`] of a datagram.
    excess: u64,
    /// Peers heard speaking another protocol version.
    versions: Versions,
    /// Datagrams the socket refused lately (send_errors.rs).
    send_failures: SendFailures,
    /// Hole punching: the introductions from the server and our probes (punch.rs).
    punch: Punches,
    /// The relay, and the choice between relayed and direct paths (paths.rs).
    paths: Paths,
    /// Handshakes, keys and sealing (secure.rs).
    secure: Secure,
    /// When the keys of ended sessions were last swept.
    swept: Instant,
    /// When a refused request was last shown.
    refusal_shown: Option<Instant>,
}

/// Datagrams of another protocol version from others than the server: how many, the
/// addresses already named for it, and when a stranger was last named.
struct Versions {
    count: u64,
    named: Seen<SocketAddr>,
    stranger_at: Option<Instant>,
}

impl Versions {
    /// A datagram of protocol `version` from `from` (the peer `peer` there, if any): the
    /// event that names it, once per address; strangers at most once per `interval`,
    /// whatever the number of addresses a flood comes from.
    fn heard(
        &mut self,
        now: Instant,
        from: SocketAddr,
        peer: Option<ClientId>,
        version: u8,
        interval: Duration,
    ) -> Option<Event> {
        self.count += 1;
        if self.named.contains(&from) {
            debug!("{from}: dropped another datagram of protocol version {version}");
            return None;
        }
        if peer.is_none() {
            if self.stranger_at.is_some_and(|at| now < at + interval) {
                debug!("{from}: dropped a datagram of protocol version {version} (a stranger; one was named lately)");
                return None;
            }
            self.stranger_at = Some(now);
        }
        self.named.insert(from);
        Some(Event::PeerVersion {
            peer,
            addr: from,
            version,
        })
    }
}

/// How many addresses of peers of another protocol version are remembered (each is named
/// once).
const VERSION_MEMORY: usize = 256;

impl Peer {
    /// A peer that starts registering at `now`; session ids come from the OS's randomness.
    pub fn new(config: PeerConfig, now: Instant) -> Self {
        Self::with_rng(config, now, rand::rngs::StdRng::from_os_rng())
    }

    /// A peer whose session ids come from `seed`, for reproducible tests.
    pub fn with_seed(config: PeerConfig, now: Instant, seed: u64) -> Self {
        Self::with_rng(config, now, rand::rngs::StdRng::seed_from_u64(seed))
    }

    fn with_rng(config: PeerConfig, now: Instant, mut rng: rand::rngs::StdRng) -> Self {
        let mut out = Outputs::default();
        let own = config.candidates.clone().unwrap_or_default();
        let grace = config.retry_interval * (config.terminate_tries + 1);
        let secure = Secure::new(
            config.identity.clone(),
            config.wall_clock,
            now,
            config.pins.clone(),
            grace,
            config.handshake_rate,
        );
        let paths = Paths::new(config.turn.clone(), config.server, config.relay_upgrade);
        Peer {
            secure,
            swept: now,
            refusal_shown: None,
            requests: Requests::new(rand::rngs::StdRng::from_rng(&mut rng)),
            server: Server::new(&config, now, &mut out),
            names: Names::new(&config),
            sessions: Sessions::new(&config, rng),
            outbox: Outbox::new(config.queue_retry),
            files: Files::new(config.files.clone(), config.retry_interval),
            config,
            finishing: false,
            out,
            undecodable: 0,
            excess: 0,
            versions: Versions {
                count: 0,
                named: Seen::new(VERSION_MEMORY),
                stranger_at: None,
            },
            send_failures: SendFailures::default(),
            punch: Punches::new(own),
            paths,
        }
    }

    pub fn config(&self) -> &PeerConfig {
        &self.config
    }

    /// Our id, once registered.
    pub fn id(&self) -> Option<ClientId> {
        self.server.id()
    }

    /// The peer that `send` without a target goes to: the last one connected.
    pub fn current_peer(&self) -> Option<ClientId> {
        self.sessions.current()
    }

    /// Peers with an open session.
    pub fn connected_peers(&self) -> Vec<ClientId> {
        self.sessions.connected_peers()
    }

    /// The token of our registration.
    pub fn token(&self) -> Option<Token> {
        self.server.id().map(|_| self.server.token())
    }

    /// Our static public key.
    pub fn key(&self) -> &Key {
        self.secure.identity().public()
    }

    /// Our fingerprint (see [`crate::identity::fingerprint`]).
    pub fn fingerprint(&self) -> String {
        self.secure.identity().fingerprint()
    }

    /// The key of `peer`: proved by its handshake if we have a session with it, else the
    /// one the server published for it, if we asked.
    pub fn key_of(&self, peer: ClientId) -> Option<Key> {
        self.secure.key_of(peer)
    }

    /// The fingerprint of [`Peer::key_of`].
    pub fn fingerprint_of(&self, peer: ClientId) -> Option<String> {
        self.key_of(peer).map(|k| fingerprint(&k))
    }

    /// The key pinned for `name`.
    pub fn pinned(&self, name: &str) -> Option<Key> {
        self.secure.pinned(name).copied()
    }

    /// Pins `key` for `name` unless the name has a pin (for keys the user checked).
    pub fn pin(&mut self, name: &str, key: Key) -> bool {
        self.secure.pin(name, key)
    }

    /// `trust <name>`: forgets the key pinned for `name`, so that the key the server gives
    /// next is accepted (and pinned at the next session). The forgotten key, if any.
    pub fn trust(&mut self, name: &str) -> Option<Key> {
        self.secure.unpin(name)
    }

    /// Sessions with keys, requests and handshakes of ours held by the cryptography.
    pub fn secure_counts(&self) -> (usize, usize, usize) {
        self.secure.counts()
    }

    /// Our name, once the server has granted it.
    pub fn name(&self) -> Option<&str> {
        self.names.name()
    }

    /// The name of peer `id`, if we know it.
    pub fn name_of(&self, id: ClientId) -> Option<&str> {
        self.names.name_of(id)
    }

    /// The display name of peer `id`, if it has one.
    pub fn display_name_of(&self, id: ClientId) -> Option<&str> {
        self.names.display_name_of(id)
    }

    /// The peer with a session (in any state) that `target` names.
    pub fn find(&self, target: &Target) -> Option<ClientId> {
        find(&self.sessions, &self.names, target)
    }

    /// Every session and request, by peer id.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions.info()
    }

    /// The messages waiting for peers that are not connected, per target, oldest first.
    pub fn outbox(&self) -> Vec<(Target, Vec<String>)> {
        self.outbox.list()
    }

    /// Peers whose connection requests wait for our answer, oldest first.
    pub fn pending_requests(&self) -> Vec<ClientId> {
        self.sessions.pending_requests()
    }

    pub fn stats(&self) -> PeerStats {
        let mut stats = self.sessions.stats();
        stats.undecodable = self.undecodable;
        stats.ignored = self.out.ignored();
        stats.withheld = self.out.withheld() + self.files.withheld();
        stats.excess = self.excess;
        stats.offers_refused = self.files.offers_refused();
        stats.other_version = self.versions.count;
        stats.refused = self.secure.refused;
        stats.unsealed = self.secure.unsealed;
        stats
    }

    /// True once the peer has left (or failed fatally): the driver may close the socket.
    pub fn is_finished(&self) -> bool {
        self.server.is_done() && !self.paths.releasing()
    }

    /// Our relayed address on the TURN server, once allocated.
    pub fn relayed_addr(&self) -> Option<SocketAddr> {
        self.paths.relayed_addr()
    }

    /// Whether a datagram to `to` goes through our relay: the driver then hands it to
    /// [`Peer::relay_send`] instead of sending it (after packing, like any datagram).
    pub fn relays(&self, to: SocketAddr) -> bool {
        self.paths.carries(to)
    }

    /// Sends the encoded `datagram` to `to` through our relay; what goes to the TURN
    /// server comes out of [`Peer::poll_relay_transmit`].
    pub fn relay_send(&mut self, now: Instant, to: SocketAddr, datagram: &[u8]) {
        self.paths.send(now, to, datagram);
    }

    /// The next datagram to the TURN server (allocation, refreshes, relayed datagrams):
    /// drain it after [`Peer::poll_transmit`] and every `relay_send`.
    pub fn poll_relay_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        self.paths.poll_transmit(now)
    }

    /// The next datagram to send. Acknowledgements of chat messages wait here until
    /// taken: the acknowledgement of a later message of the same session replaces one not
    /// yet taken when it says everything the earlier one said, so a driver that receives a
    /// burst of datagrams before it sends sends one acknowledgement for the burst.
    ///
    /// Every message of a session leaves sealed (`Sealed`, several of one session
    /// together, up to [`PeerConfig::seal_limit`] bytes); `ConnectRequest`, `Accept` and
    /// `Reject` leave with their handshake. Nothing of a session leaves in clear: a message
    /// of a session without keys is dropped (and counted in [`PeerStats::unsealed`]).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.poll_transmit_plain().map(|(t, _)| t)
    }

    /// [`Peer::poll_transmit`], with the messages the datagram carries in clear (those
    /// sealed in it, or the message itself): for tests and logs, never for the wire.
    pub fn poll_transmit_plain(&mut self) -> Option<(Transmit, Vec<Message>)> {
        loop {
            // Chat first: file chunks only once the peer's own datagrams are out.
            let (mut t, chat) = match self.out.poll_transmit() {
                Some(t) => (t, true),
                None => (self.files.poll_transmit()?, false),
            };
            if t.to == self.config.server {
                // A request leaves with its nonce and padding (requests.rs).
                self.requests.stamp(&mut t.message);
                let plain = vec![t.message.clone()];
                return Some((t, plain));
            }
            // A hole-punching probe goes in clear: it comes before any session, and holds
            // only our id and the introduction's secret (punch.rs).
            if matches!(t.message, Message::Probe { .. }) {
                let plain = vec![t.message.clone()];
                return Some((t, plain));
            }
            // Everything else to a peer but the handshake leaves sealed, or not at all (a
            // message of a kind added later included: it is never sent in clear by default).
            if !Secure::is_handshake(&t.message) {
                let to = t.to;
                let batch = self.gather(to, t.message, chat);
                let Some(message) = self.secure.seal(to, &batch) else {
                    continue;
                };
                if let Some(Message::Ping { session, .. }) =
                    batch.iter().find(|m| matches!(m, Message::Ping { .. }))
                {
                    if let Some(accept) = self.secure.unheard_accept(to, *session) {
                        self.out.transmit(to, accept);
                    }
                }
                return Some((Transmit { to, message }, batch));
            }
            let sessions = &self.sessions;
            let to = t.to;
            let plain = t.message.clone();
            let sealed = self
                .secure
                .outgoing_handshake(to, t.message, |s| sessions.requested_peer(s));
            match sealed {
                Some(message) => return Some((Transmit { to, message }, vec![plain])),
                None => {
                    self.secure.unsealed += 1;
                    debug!("{to}: no key to answer with; not sent: {plain:?}");
                }
            }
        }
    }

    /// Seals `messages` (of one session of ours, to `to`) as [`Peer::poll_transmit`]
    /// would: `None` if the session has no keys. For tests that play a peer's part.
    pub fn seal(&mut self, to: SocketAddr, messages: &[Message]) -> Option<Message> {
        if !messages.iter().all(Secure::is_sealed_kind) {
            return None;
        }
        self.secure.seal(to, messages)
    }

    /// Opens a datagram from `from` that holds a `Sealed` of one of our sessions: the
    /// messages in it, or `None`. Nothing is acted on (the peer's state does not change
    /// but for the session's replay window). For tests that play a peer's part.
    pub fn open_sealed(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<Vec<Message>> {
        let mut out = Vec::new();
        for m in wire::decode_all(datagram).ok()? {
            match m {
                Message::Sealed {
                    from: id,
                    session,
                    n,
                    data,
                } => {
                    let opened = self.secure.open(from, id, session, n, &data, || false)?;
                    if !opened.known {
                        return None;
                    }
                    out.extend(opened.messages)
                }
                other => out.push(other),
            }
        }
        Some(out)
    }

    /// `first`, and the messages queued right after it for the same address and session
    /// that fit with it in one `Sealed` of [`PeerConfig::seal_limit`] bytes (from the
    /// chat queue only: the transfers' queue is not looked into).
    fn gather(&mut self, to: SocketAddr, first: Message, chat: bool) -> Vec<Message> {
        if !chat {
            return vec![first];
        }
        let room = Secure::room(self.config.seal_limit);
        let session = first.session();
        let mut size = wire::encoded_len(&first) - 2;
        let mut batch = vec![first];
        while let Some(next) = self.out.peek_transmit() {
            let len = wire::encoded_len(&next.message) - 2;
            if next.to != to
                || next.message.session() != session
                || !Secure::is_sealed_kind(&next.message)
                || size + len > room
            {
                break;
            }
            size += len;
            let next = self.out.poll_transmit().expect("peeked");
            batch.push(next.message);
        }
        batch
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.poll_event().or_else(|| self.files.poll_event())
    }

    /// The next time [`Peer::handle_timeout`] has work to do: the soonest of the parts'.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // The queue waits while we are not registered, and for good once we finish.
        let pursuing = !self.finishing && self.server.is_registered();
        [
            self.server.poll_timeout(),
            self.sessions.poll_timeout(),
            self.names.poll_timeout(),
            self.outbox.poll_timeout().filter(|_| pursuing),
            self.files.poll_timeout(),
            self.punch.poll_timeout(),
            self.paths.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ------------------------------------------------------------------ user commands

    /// Looks `peer` up and asks it to connect. If `peer` has already asked us, accepts.
    pub fn connect(&mut self, now: Instant, peer: ClientId) -> Result<(), CommandError> {
        let me = self.usable_id()?;
        if peer == me {
            return Err(CommandError::OwnId);
        }
        match self.sessions.connect(now, peer, &mut self.out)? {
            Connecting::Started => Ok(()),
            Connecting::Incoming => self.accept(now, Some(peer)).map(|_| ()),
        }
    }

    /// Connects to `target`, an id or a name (looked up with `Resolve`).
    pub fn connect_to(&mut self, now: Instant, target: &Target) -> Result<(), CommandError> {
        let name = match target {
            Target::Id(id) => return self.connect(now, *id),
            Target::Name(name) => name,
        };
        self.usable_id()?;
        if self.names.is_own_name(name) {
            return Err(CommandError::OwnId);
        }
        if let Some(p) = self.find(target) {
            return self.connect(now, p);
        }
        if self.names.show_resolve(&target.key()) {
            return Ok(());
        }
        self.names.resolve(now, name, false, &mut self.out);
        Ok(())
    }

    /// The peer with a session or request that `target` names, for `accept`, `reject`,
    /// `terminate` and `switch`. An id with no session is returned as is (the command then
    /// says there is none); a name must match a session.
    pub fn session_peer(&self, target: &Target) -> Result<ClientId, CommandError> {
        match (self.find(target), target) {
            (Some(p), _) => Ok(p),
            (None, Target::Id(id)) => Ok(*id),
            (None, Target::Name(name)) => Err(CommandError::NoSessionNamed(name.clone())),
        }
    }

    /// Makes `target`, which must be connected, the peer that `send` without a target goes to.
    pub fn switch(&mut self, target: &Target) -> Result<ClientId, CommandError> {
        let peer = self.session_peer(target)?;
        self.sessions.switch(peer)
    }

    /// Sends `text` to `target`, or to the current peer. A target that is not connected
    /// gets the message queued: the client connects (now, and again from time to time while
    /// the target is offline or does not answer) and sends the queue, in order, once a
    /// session is open.
    pub fn send_to(
        &mut self,
        now: Instant,
        target: Option<&Target>,
        text: &str,
    ) -> Result<Sending, CommandError> {
        let Some(target) = target else {
            return self.send(now, None, text).map(Sending::Sent);
        };
        if let Some(p) = self.find(target) {
            if self.sessions.is_connected(p) && !self.outbox.has_queue_for(p, self.name_of(p)) {
                return self.send(now, Some(p), text).map(Sending::Sent);
            }
        }
        let me = self.usable_id()?;
        if self.finishing {
            return Err(CommandError::Leaving);
        }
        if text.is_empty() {
            return Err(CommandError::EmptyMessage);
        }
        let own = match target {
            Target::Id(id) => *id == me,
            Target::Name(name) => self.names.is_own_name(name),
        };
        if own {
            return Err(CommandError::OwnId);
        }
        for piece in split_text(text, wire::MAX_TEXT) {
            let piece = piece.to_string();
            self.outbox
                .push(now, target.clone(), piece, true, &mut self.out);
        }
        self.pursue(now);
        self.flush(now);
        Ok(Sending::Queued)
    }

    /// Sends `text` to every connected peer: one copy each, numbered and acknowledged in
    /// each session. Returns the peers and their message numbers.
    pub fn broadcast(
        &mut self,
        now: Instant,
        text: &str,
    ) -> Result<Vec<(ClientId, Vec<u64>)>, CommandError> {
        self.usable_id()?;
        let peers = self.connected_peers();
        if peers.is_empty() {
            return Err(CommandError::NobodyConnected);
        }
        let mut sent = Vec::with_capacity(peers.len());
        for p in peers {
            sent.push((p, self.send(now, Some(p), text)?));
        }
        Ok(sent)
    }

    /// Puts back a message queued by an earlier run (from the state directory). No `Queued`
    /// event: the user was told when it was queued.
    pub fn restore_queued(&mut self, now: Instant, target: Target, text: String) {
        self.outbox.push(now, target, text, false, &mut self.out);
    }

    /// Drops the messages queued for `target`; returns how many there were.
    pub fn drop_queue(&mut self, target: &Target, reason: &str) -> usize {
        let Some(count) = self.outbox.drop(target, reason, &mut self.out) else {
            return 0;
        };
        self.names.forget_resolve(&target.key());
        count
    }

    /// Asks the server who is online; the answer comes as an `Online` event (or
    /// `ListFailed`), after as many pages as the server needs.
    pub fn list(&mut self, now: Instant) -> Result<(), CommandError> {
        let me = self.usable_id()?;
        self.names.list(now, me, self.server.token(), &mut self.out);
        Ok(())
    }

    /// Accepts the request of `peer`, or the oldest request. Returns whom we accepted.
    pub fn accept(
        &mut self,
        now: Instant,
        peer: Option<ClientId>,
    ) -> Result<ClientId, CommandError> {
        let me = self.usable_id()?;
        let peer = self.sessions.pick_request(peer)?;
        // The Accept first: opening sends what is queued for the peer, which should follow.
        self.sessions.send_accept(me, peer, &mut self.out);
        self.open(now, peer);
        Ok(peer)
    }

    /// Rejects the request of `peer`, or the oldest request. Returns whom we rejected.
    pub fn reject(
        &mut self,
        now: Instant,
        peer: Option<ClientId>,
    ) -> Result<ClientId, CommandError> {
        let me = self.usable_id()?;
        let peer = self.sessions.pick_request(peer)?;
        self.sessions.reject(now, me, peer, &mut self.out);
        Ok(peer)
    }

    /// Sends `text` to `peer` (default: the current peer). Text longer than
    /// [`wire::MAX_TEXT`] bytes goes as several messages. Returns the message numbers; a
    /// `Sent` event is emitted for each.
    pub fn send(
        &mut self,
        now: Instant,
        peer: Option<ClientId>,
        text: &str,
    ) -> Result<Vec<u64>, CommandError> {
        self.usable_id()?;
        if self.finishing {
            return Err(CommandError::Leaving);
        }
        if text.is_empty() {
            return Err(CommandError::EmptyMessage);
        }
        let seqs = self.sessions.send(peer, text, &mut self.out)?;
        self.flush(now);
        Ok(seqs)
    }

    /// Ends the session with `peer` (default: the current peer), or withdraws our request
    /// to it, or (with no session) declines its request.
    pub fn terminate(
        &mut self,
        now: Instant,
        peer: Option<ClientId>,
    ) -> Result<ClientId, CommandError> {
        let me = self.usable_id()?;
        let (peer, ended) = self.sessions.terminate(now, me, peer, &mut self.out)?;
        self.session_ended(ended);
        Ok(peer)
    }

    /// Leaves now: ends every session, tells the server, and finishes once it answers (or
    /// the tries run out). Messages not yet acknowledged are reported undelivered.
    pub fn leave(&mut self, now: Instant) {
        if !self.server.is_active() {
            return;
        }
        self.finishing = true;
        if let Some(me) = self.server.id() {
            for ended in self.sessions.end_all(now, me, &mut self.out) {
                self.session_ended(ended);
            }
        }
        // Never registered: nothing to tell anyone, and we are done at once.
        self.server.leave(now, &mut self.out);
        self.paths.release(now);
    }

    /// Leaves once everything the user started has settled (for the end of a script's
    /// input): every message sent so far is acknowledged or given up, and every `connect`
    /// has been answered (or has run out of tries). Requests from others are declined.
    pub fn finish(&mut self, now: Instant) {
        if self.finishing {
            return;
        }
        self.finishing = true;
        if let Some(me) = self.server.id() {
            for ended in self.sessions.decline_requests(now, me, &mut self.out) {
                self.session_ended(ended);
            }
            self.files.refuse_all(now, me);
        }
        self.leave_if_drained(now);
    }

    fn leave_if_drained(&mut self, now: Instant) {
        if !self.finishing || !self.server.is_active() {
            return;
        }
        if self.sessions.is_settled() && self.names.is_settled() && self.files.is_idle() {
            self.leave(now);
        }
    }

    fn usable_id(&self) -> Result<ClientId, CommandError> {
        self.server.usable_id()
    }

    // ------------------------------------------------------------------ file commands

    /// Offers a file to `peer` (default: the current peer). `sha256` is its digest; the
    /// bytes are read from `source` only once the peer accepts. Returns the local number.
    pub fn send_file(
        &mut self,
        now: Instant,
        peer: Option<ClientId>,
        name: &str,
        size: u64,
        sha256: [u8; 32],
        source: Box<dyn FileSource>,
    ) -> Result<u64, FileError> {
        let me = self.file_command_id()?;
        let link = self.file_link(peer)?;
        let n = self
            .files
            .offer(now, me, link, name.to_string(), size, sha256, source);
        Ok(n)
    }

    /// Accepts offer `n`, writing the file to `sink`.
    pub fn get_file(
        &mut self,
        now: Instant,
        n: u64,
        sink: Box<dyn FileSink>,
    ) -> Result<(), FileError> {
        let me = match self.file_command_id() {
            Ok(me) => me,
            Err(e) => {
                sink.abort();
                return Err(e);
            }
        };
        self.files.get(now, me, n, sink)
    }

    /// Refuses offer `n` (or the only one waiting).
    pub fn refuse_file(&mut self, now: Instant, n: Option<u64>) -> Result<u64, FileError> {
        let me = self.file_command_id()?;
        self.files.refuse(now, me, n, TransferFailure::Refused)
    }

    /// Refuses offer `n` because where it would be written has only `free` bytes left:
    /// the peer is told `NoSpace`, the user `FileFailed` with [`TransferFailure::NoSpace`].
    pub fn refuse_file_no_space(
        &mut self,
        now: Instant,
        n: u64,
        free: u64,
    ) -> Result<u64, FileError> {
        let me = self.file_command_id()?;
        let (_, _, _, needed) = self.files.pick_offer(Some(n))?;
        let why = TransferFailure::NoSpace {
            needed,
            free: Some(free),
        };
        self.files.refuse(now, me, Some(n), why)
    }

    /// Cancels transfer `n` (or the only one).
    pub fn cancel_file(&mut self, now: Instant, n: Option<u64>) -> Result<u64, FileError> {
        let me = self.file_command_id()?;
        self.files.cancel(now, me, n)
    }

    /// The offer `n` (or the only one) waiting for an answer: (number, peer, offered name,
    /// size).
    pub fn file_offer(&self, n: Option<u64>) -> Result<(u64, ClientId, String, u64), FileError> {
        self.files.pick_offer(n)
    }

    /// Every transfer going on or waiting.
    pub fn transfers(&self) -> Vec<TransferInfo> {
        self.files.list()
    }

    /// The congestion-control counters (window, signals, losses) of the transfers we are
    /// sending, by local number.
    pub fn sender_stats(&self) -> Vec<(u64, crate::congestion::SenderStats)> {
        self.files.sender_stats()
    }

    /// File chunks resent so far.
    pub fn chunk_retransmissions(&self) -> u64 {
        self.files.retransmissions()
    }

    fn file_command_id(&self) -> Result<ClientId, FileError> {
        self.id()
            .ok_or(FileError::Session(CommandError::NotRegistered))
    }

    // ------------------------------------------------------------------ network input

    /// Feeds one received datagram.
    ///
    /// At most [`wire::MAX_PEER_MESSAGES`] of its messages are handled. While `from` has not
    /// proved it receives (see [`Peer::proves_receipt`]), what is sent back to it in answer
    /// totals at most the datagram's length, plus its credit while a connection request is
    /// pending with it, either way (what it sent before and was not answered for); the rest
    /// is withheld and counted ([`PeerStats::withheld`]).
    /// The driver could not send a datagram to `to`. If `to` is the server or a session's
    /// peer, the person is told (once per address and error in [`SEND_ERROR_QUIET`]) whom
    /// it was for and what to do, with [`Event::SendFailed`]; a failure elsewhere (a probe to
    /// a candidate address of the other family, say) is only logged: another path may well
    /// work. Nothing else changes: the datagram counts as sent and lost, and is resent as
    /// any lost datagram is.
    pub fn handle_send_error(&mut self, now: Instant, to: SocketAddr, error: SendError) {
        let target = if to == self.config.server {
            SendTarget::Server
        } else if let Some(peer) = self.sessions.peer_at(to) {
            SendTarget::Peer(peer)
        } else {
            debug!("send to {to} failed: {error}");
            return;
        };
        if self.send_failures.report(now, to, &error) {
            self.out.event(Event::SendFailed { to, target, error });
        }
    }

    ///
    /// TURN traffic from our relay's server is the relay's; what it carried is handled as
    /// a datagram from the peer's relayed address.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if from != self.config.server {
            match self.paths.handle_datagram(now, from, datagram) {
                Received::NotTurn => {}
                Received::Handled => return self.after_paths(now),
                Received::Peer { from, data } => {
                    self.handle_plain(now, from, &data);
                    return self.after_paths(now);
                }
            }
        }
        self.handle_plain(now, from, datagram);
    }

    fn handle_plain(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.secure.tick(now);
        match wire::decode_all(datagram) {
            Ok(mut messages) => {
                if messages.len() > wire::MAX_PEER_MESSAGES {
                    let excess = messages.len() - wire::MAX_PEER_MESSAGES;
                    self.excess += excess as u64;
                    debug!(
                        "{from}: {excess} messages past the first {} of a datagram dropped",
                        wire::MAX_PEER_MESSAGES
                    );
                    messages.truncate(wire::MAX_PEER_MESSAGES);
                }
                // The budget of answers, once a message is handled for an address that has
                // not proved it receives (one that proves it midway, with an Accept, is
                // answered freely from there).
                let mut budget: Option<usize> = None;
                // Once proved (at the start, or by an Accept midway), for the whole datagram.
                let mut proven = false;
                for msg in messages {
                    proven = proven || self.proves_receipt(from);
                    let limited = !proven;
                    if limited {
                        let credit = &mut self.sessions;
                        let left = *budget.get_or_insert_with(|| {
                            datagram.len().saturating_add(credit.take_credit(from))
                        });
                        self.out.limit(from, left);
                        // The transfers only ever answer connected sessions: nothing from
                        // them may go to an address that has not proved it receives.
                        self.files.limit(from, 0);
                    }
                    self.handle_one(now, from, msg);
                    if limited {
                        budget = Some(self.out.unlimit());
                        self.files.unlimit();
                    }
                }
                if let Some(left) = budget {
                    self.sessions.give_credit(from, left);
                }
                self.flush(now);
                self.leave_if_drained(now);
            }
            Err(DecodeError::BadVersion { found }) if from == self.config.server => {
                self.server.other_version(found, &mut self.out);
            }
            Err(DecodeError::BadVersion { found }) => self.other_version(now, from, found),
            Err(e) => {
                self.undecodable += 1;
                debug!("{from}: dropped: {e}");
            }
        }
    }

    /// Whether `addr` has proved it receives what we send: the server's, or that of a
    /// connected session (or of one whose `Terminate` we resend after it was connected).
    pub fn proves_receipt(&self, addr: SocketAddr) -> bool {
        addr == self.config.server
            || self.sessions.proves_receipt(addr)
            || self.punch.proves_receipt(addr)
    }

    /// A datagram of protocol `version` from `from`, not the server: the user is told,
    /// once per address, who cannot be understood (see [`Versions::heard`]).
    fn other_version(&mut self, now: Instant, from: SocketAddr, version: u8) {
        let peer = self.sessions.peer_at(from);
        let interval = self.config.summary_interval;
        if let Some(ev) = self.versions.heard(now, from, peer, version, interval) {
            self.out.event(ev);
        }
    }

    /// Feeds one decoded message. No answer limit applies (it is counted against the
    /// datagram's length): a driver that receives datagrams feeds them to
    /// [`Peer::handle_datagram`].
    pub fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        self.secure.tick(now);
        self.handle_one(now, from, msg);
        self.flush(now);
        self.leave_if_drained(now);
    }

    fn handle_one(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        if from == self.config.server {
            self.handle_server_message(now, msg);
        } else {
            self.handle_peer_message(now, from, msg);
        }
    }

    /// A message from the server: names first, then our registration, then the answers to
    /// the lookups of sessions.
    fn handle_server_message(&mut self, now: Instant, msg: Message) {
        if !self.requests.is_answer(&msg) {
            // Not an answer to anything we asked: forged, or a late repeat.
            return self.out.ignore(self.config.server, &msg);
        }
        let (registered, id, token) = (
            self.server.is_registered(),
            self.server.id(),
            self.server.token(),
        );
        let msg = match self
            .names
            .handle_message(registered, id, token, msg, now, &mut self.out)
        {
            Heard::Handled => return,
            Heard::Refused(message) => return self.server.give_up(message, &mut self.out),
            Heard::Unknown { key } => return self.outbox.retry_later(now, &key),
            Heard::Found {
                peer,
                addr,
                key,
                name,
                display_name,
                auto,
            } => {
                if !self.learn_key(peer, key, Some(&name)) {
                    let reason = format!("the key of {name} is not the one pinned");
                    self.drop_queue(&Target::Name(name), &reason);
                    return;
                }
                self.learn_name(peer, Some(name), display_name);
                return self.resolved(now, peer, addr, auto);
            }
            Heard::NotMine(msg) => msg,
        };
        let settled = self.sessions.all_closed();
        let msg = match self.server.handle_message(now, msg, settled, &mut self.out) {
            Answer::Registered => {
                let grant = self.server.take_grant();
                self.paths.registered(now, grant);
                self.after_paths(now);
                let (id, token) = (self.server.id(), self.server.token());
                let proof = self
                    .server
                    .server_key()
                    .map(|k| self.secure.identity().prove(k, &token.to_be_bytes()));
                self.names.set_proof(proof);
                return self.names.claim(now, id, token, &mut self.out);
            }
            Answer::Regranted => {
                let grant = self.server.take_grant();
                self.paths.registered(now, grant);
                self.after_paths(now);
                return;
            }
            Answer::Handled => return,
            Answer::NotMine(msg) => msg,
        };
        let server = self.config.server;
        match msg {
            Message::Found {
                id,
                addr,
                key,
                name,
                display_name,
                ..
            } => {
                let Some(me) = self.server.id() else { return };
                if !self.learn_key(id, key, name.as_deref()) {
                    return;
                }
                let verified = self.verified(now, me, id, Some(key), &name, &display_name);
                if self.sessions.found(now, me, id, addr, &mut self.out) {
                    self.learn_name(id, name, display_name);
                    self.punch.expect_introduction(now, id, addr);
                    // A probe of the peer came before the server's answer: go there.
                    if let Some(heard) = self.punch.first_heard(id) {
                        if heard != addr && self.probed_from(id, heard) {
                            self.sessions.probed(now, me, id, heard, &mut self.out);
                        }
                    }
                } else if !verified {
                    // Logged without the names, which were not kept.
                    let msg = Message::Found {
                        id,
                        addr,
                        key,
                        name: None,
                        display_name: None,
                        nonce: 0,
                    };
                    self.out.ignore(server, &msg);
                }
            }
            msg @ Message::Introduce {
                id: peer,
                addr,
                punch,
                you,
                proof,
                ..
            } => {
                match self.server.id() {
                    // Only the server and we know our token: not forged.
                    Some(me) if proof == self.server.token() => {
                        let size = wire::encoded_len(&msg);
                        let Message::Introduce {
                            candidates, relay, ..
                        } = msg
                        else {
                            unreachable!()
                        };
                        if let Some(relay) = relay {
                            self.paths.introduced(now, peer, relay);
                        }
                        let out = &mut self.out;
                        self.punch
                            .introduce(now, me, peer, addr, candidates, punch, you, size, out);
                    }
                    _ => self.out.ignore(server, &msg),
                }
            }
            Message::Inactive { id, .. } => {
                if let Some(me) = self.server.id() {
                    self.verified(now, me, id, None, &None, &None);
                }
                if self.sessions.inactive(id, &mut self.out) {
                    self.outbox.retry_later(now, &id.to_string());
                } else {
                    self.out.ignore(server, &Message::Inactive { id, nonce: 0 });
                }
            }
            other => self.out.ignore(server, &other),
        }
    }

    /// A name we looked up is client `peer` at `addr`: ask it to connect (or, if it has
    /// asked us and the user asked for it, accept).
    fn resolved(&mut self, now: Instant, peer: ClientId, addr: SocketAddr, auto: bool) {
        let Some(me) = self.server.id() else { return };
        if peer == me {
            if !auto {
                self.out.event(Event::Notice {
                    message: "that name is yours; connect to another client".into(),
                });
            }
            return;
        }
        if self.sessions.contains(&peer) {
            if !auto {
                if let Err(e) = self.connect(now, peer) {
                    self.out.event(Event::Notice {
                        message: e.to_string(),
                    });
                }
            }
            return;
        }
        self.sessions
            .request(now, me, peer, addr, auto, &mut self.out);
    }

    /// The server says client `id` has `key` (and `name`): false, with
    /// [`Event::KeyChanged`], if the name is pinned to another key (then nothing of that
    /// answer is believed, and our attempt to reach `id`, if any, ends).
    fn learn_key(&mut self, id: ClientId, key: Key, name: Option<&str>) -> bool {
        if self.secure.learn(id, key, name) == Pin::Fine {
            return true;
        }
        let name = name.unwrap_or_default().to_string();
        let pinned = self
            .secure
            .pinned(&name)
            .map(fingerprint)
            .unwrap_or_default();
        self.sessions.abandon(id);
        // Requests claiming to be `id` are refused with it (the event says why).
        for line in self.secure.verdicts(id, None).refused {
            debug!("{line}");
        }
        self.out.event(Event::KeyChanged {
            peer: id,
            name,
            fingerprint: fingerprint(&key),
            pinned,
        });
        false
    }

    /// The server answered about `id` (`key` `None`: it does not know it): the requests
    /// claiming to be `id` are handed to the sessions if their key is the one published,
    /// refused (with a line for the person) if not. True if one was handed on.
    fn verified(
        &mut self,
        now: Instant,
        me: ClientId,
        id: ClientId,
        key: Option<Key>,
        name: &Option<String>,
        display_name: &Option<String>,
    ) -> bool {
        let verdicts = self.secure.verdicts(id, key);
        for message in verdicts.refused {
            // One line per summary interval at most: a flood of forged requests is not a
            // flood of lines (the rest are counted in `PeerStats::refused`).
            let quiet = self
                .refusal_shown
                .is_some_and(|at| now < at + self.config.summary_interval);
            if quiet {
                debug!("{message}");
            } else {
                self.refusal_shown = Some(now);
                self.out.event(Event::Notice { message });
            }
        }
        if verdicts.proved.is_empty() {
            return false;
        }
        self.learn_name(id, name.clone(), display_name.clone());
        for (src, session) in verdicts.proved {
            self.proved_request(now, me, src, id, session, true);
        }
        true
    }

    /// A request whose sender is proved to be `from`: to the sessions.
    fn proved_request(
        &mut self,
        now: Instant,
        me: ClientId,
        src: SocketAddr,
        from: ClientId,
        session: SessionId,
        fresh: bool,
    ) {
        // From another port of the peer's host (a NAT that changes ports), or from where
        // its probe came: our own request to it moves there. Only now that the handshake
        // proved the sender is the peer.
        let moved = self.probed_from(from, src);
        self.sessions.moved(from, src, moved);
        let (finishing, out) = (self.finishing, &mut self.out);
        let requested = self
            .sessions
            .handle_request(now, me, src, from, session, finishing, fresh, out);
        match requested {
            Requested::Nothing => {}
            Requested::Open => self.open(now, from),
            Requested::Replaced(ended) => self.session_ended(ended),
        }
    }

    /// A message from a peer: the handshake (`ConnectRequest`, `Accept`, `Reject`) or a
    /// `Sealed`, whose messages are handled in turn. A message of a session in clear is
    /// dropped: it proves nothing.
    fn handle_peer_message(&mut self, now: Instant, src: SocketAddr, msg: Message) {
        let Some(me) = self.server.id() else {
            self.out.ignore(src, &msg);
            return;
        };
        match msg {
            Message::ConnectRequest { from, session, hs } => {
                if from == me {
                    return self
                        .out
                        .ignore(src, &Message::ConnectRequest { from, session, hs });
                }
                match self.secure.handle_request(now, me, src, from, session, &hs) {
                    Request::Nothing => {}
                    Request::Verify(lookup) => self.out.transmit(self.config.server, lookup),
                    Request::Proved { fresh } => {
                        self.proved_request(now, me, src, from, session, fresh)
                    }
                }
            }
            Message::Accept { from, session, hs } => {
                if self.sessions.is_requesting(from, src, session)
                    && self.secure.handle_answer(from, src, session, &hs, true)
                {
                    self.open(now, from);
                } else {
                    self.out.ignore(src, &Message::Accept { from, session, hs });
                }
            }
            Message::Reject { from, session, hs } => {
                let proved = self.sessions.is_requesting(from, src, session)
                    && self.secure.handle_answer(from, src, session, &hs, false);
                let out = &mut self.out;
                if proved && self.sessions.handle_reject(from, src, session, out) {
                    let queued = self.outbox.targets_for(from, self.names.name_of(from));
                    for target in queued {
                        self.drop_queue(&target, "the peer rejected the connection");
                    }
                } else {
                    self.out.ignore(src, &Message::Reject { from, session, hs });
                }
            }
            Message::Sealed {
                from,
                session,
                n,
                data,
            } => {
                let (paths, sessions, punch) = (&self.paths, &self.sessions, &self.punch);
                let elsewhere =
                    || path_steps::may_be_new_path(paths, sessions, punch, from, session, src);
                let Some(opened) = self.secure.open(src, from, session, n, &data, elsewhere) else {
                    return;
                };
                if !opened.known {
                    return self.sealed_from_new_path(now, me, src, from, session, opened.messages);
                }
                let via = opened.addr;
                for m in opened.messages.into_iter().take(wire::MAX_PEER_MESSAGES) {
                    if src != via && self.on_other_path(now, me, src, from, session, &m) {
                        continue;
                    }
                    self.handle_session_message(now, me, via, m);
                }
            }
            Message::Probe { from, punch } => match self.punch.handle_probe(from, punch, src) {
                // A session on the relay: a direct path may have opened; check it.
                Some(_) if self.paths.is_on_relay(from) => self.check_path(now, from, src),
                // A path to the peer: our request to it goes there now. The probe carried
                // the secret the server gave the peer alone, so `src` is the peer's: what
                // goes there is not bound by what came from it (see `proves_receipt`).
                // Once per address: the first probe from it, or one from where our request
                // is not (yet) going.
                Some(heard)
                    if (heard.new || self.sessions.addr_of(from) != Some(src))
                        && self.probed_from(from, src) =>
                {
                    self.out.unlimit();
                    self.sessions.probed(now, me, from, src, &mut self.out)
                }
                Some(_) => {}
                None => self.out.ignore(src, &msg),
            },
            other => {
                // A message of a session in clear: nobody sends those.
                self.secure.refused += 1;
                self.out.ignore(src, &other);
            }
        }
    }

    /// A message of a session, out of a `Sealed` that opened with the session's keys.
    fn handle_session_message(
        &mut self,
        now: Instant,
        me: ClientId,
        src: SocketAddr,
        msg: Message,
    ) {
        match msg {
            Message::Terminate { from, session } => {
                let out = &mut self.out;
                match self
                    .sessions
                    .handle_terminate(now, me, src, from, session, out)
                {
                    Terminated::Nothing => {}
                    Terminated::Session(ended) => self.session_ended(ended),
                    Terminated::Closing => self.left_if_closed(),
                }
            }
            Message::TerminateAck { from, session } => {
                let out = &mut self.out;
                if self.sessions.handle_terminate_ack(src, from, session, out) {
                    self.left_if_closed();
                }
            }
            traffic => {
                if let Message::Chat { from, session, .. } | Message::Ping { from, session } =
                    traffic
                {
                    // Its Accept was lost, but a message on the session means it accepted
                    // (an idle accepter pings, after `session_idle`, before our next request
                    // goes out; answering with a reset would end the session it accepted).
                    if self.sessions.is_requesting(from, src, session) {
                        self.open(now, from);
                    }
                }
                let out = &mut self.out;
                if let Some((link, msg)) = self.sessions.handle_traffic(now, me, src, traffic, out)
                {
                    self.files.handle_message(now, me, link, msg);
                }
            }
        }
    }

    /// The session a file command goes on: with `peer`, or the current peer.
    pub(crate) fn file_link(&self, peer: Option<ClientId>) -> Result<Link, CommandError> {
        self.sessions.file_link(peer)
    }

    // ------------------------------------------------------------------ timers

    /// Does whatever is due at `now`: resends, keepalives, giving up.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.secure.tick(now);
        if now >= self.swept + Duration::from_secs(1) {
            self.swept = now;
            let sessions = &self.sessions;
            self.secure.sweep(now, |p, s| sessions.knows(p, s));
        }
        let settled = self.sessions.all_closed();
        self.server.handle_timeout(now, settled, &mut self.out);
        let me = self.server.id();
        for ended in self.sessions.handle_timeout(now, me, &mut self.out) {
            self.session_ended(ended);
        }
        // A Terminate given up may have been the last one the leaving waited for.
        self.left_if_closed();
        let token = self.server.token();
        match self.names.handle_timeout(now, me, token, &mut self.out) {
            Lapsed::Claim(message) => self.server.give_up(message, &mut self.out),
            Lapsed::Resolves(keys) => {
                for key in keys {
                    self.outbox.retry_later(now, &key);
                }
            }
        }
        self.pursue(now);
        let (sessions, punch) = (&self.sessions, &self.punch);
        let due = self.paths.handle_timeout(now, |peer| {
            if sessions.is_looking_up(peer) {
                None
            } else {
                Some(sessions.is_requesting_peer(peer) && punch.first_heard(peer).is_none())
            }
        });
        self.act_on_paths(now, due);
        self.after_paths(now);
        if let Some(me) = self.server.id() {
            self.files.handle_timeout(now, me);
            let due = self.punch.handle_timeout(now, me, &mut self.out);
            for peer in due.no_path {
                self.sessions.no_path(peer, &mut self.out);
            }
            for peer in due.reask {
                // Nothing from the peer yet: its introduction may have been lost. Asking
                // again makes the server introduce us again (at most once a second).
                if self.sessions.is_requesting_peer(peer) {
                    self.out.transmit(self.config.server, Message::lookup(peer));
                }
            }
        }
        self.flush(now);
        self.leave_if_drained(now);
    }

    // ------------------------------------------------------------------ across parts

    /// Opens the session with `peer` and sends what is queued for it.
    fn open(&mut self, now: Instant, peer: ClientId) {
        // Trust on first use: the name's key from now on is this one.
        if let (Some(name), Some(key)) = (self.names.name_of(peer), self.secure.key_of(peer)) {
            let name = name.to_string();
            self.secure.pin(&name, key);
        }
        let addr = self.sessions.addr_of(peer);
        let path = match addr {
            Some(addr) if self.paths.is_relay_of(peer, addr) => Path::Relay,
            Some(addr) => self.punch.path(peer, addr),
            None => Path::Direct,
        };
        if path != Path::Relay {
            // On the relay, the probes go on: a direct path may still open.
            self.punch.finish(peer);
        }
        self.sessions.open(now, peer, path, &mut self.out);
        if let (Some(addr), Some(session)) = (addr, self.sessions.connected_session(peer)) {
            self.paths.opened(now, peer, session, addr);
        }
        self.deliver_queued(now, peer);
    }

    /// A session ended: so do the file transfers on it.
    fn session_ended(&mut self, ended: Ended) {
        self.paths.closed(ended.peer);
        self.files
            .session_ended(ended.peer, ended.session, ended.reason);
    }

    /// Finishes leaving if the server part is over and no Terminate of ours is pending.
    fn left_if_closed(&mut self) {
        let settled = self.sessions.all_closed();
        self.server.left_if_done(settled, &mut self.out);
    }

    /// Remembers the name a server or a request gave for `peer`.
    fn learn_name(&mut self, peer: ClientId, name: Option<String>, display: Option<String>) {
        let sessions = &self.sessions;
        self.names
            .learn(peer, name, display, |p| sessions.contains(p));
    }

    /// Starts an attempt to reach every queued-for target whose time has come.
    fn pursue(&mut self, now: Instant) {
        if self.finishing || !self.server.is_registered() {
            return;
        }
        for key in self.outbox.due(now) {
            let target = self.outbox.target(&key);
            if let Some(peer) = self.find(&target) {
                if self.sessions.is_connected(peer) {
                    self.deliver_queued(now, peer);
                    continue;
                }
                // A session is on its way (or the peer asked us): wait for it.
                self.outbox.attempting(&key);
                continue;
            }
            self.outbox.attempting(&key);
            match &target {
                Target::Id(id) => {
                    if self.connect(now, *id).is_ok() {
                        self.sessions.set_auto(*id);
                    }
                }
                Target::Name(name) => {
                    if !self.names.is_resolving(&key) {
                        self.names.resolve(now, name, true, &mut self.out);
                    }
                }
            }
        }
        // Attempts that ended without a session: try again later.
        let (sessions, names) = (&self.sessions, &self.names);
        self.outbox.retry_idle(now, |key, target| {
            names.is_resolving(key) || find(sessions, names, target).is_some()
        });
    }

    /// Sends whatever is queued for `peer`, now connected, in the order it was queued.
    fn deliver_queued(&mut self, now: Instant, peer: ClientId) {
        let keys = self.outbox.keys_for(peer, self.names.name_of(peer));
        for key in keys {
            let (target, texts) = self.outbox.take(&key);
            self.names.forget_resolve(&key);
            let Some(seqs) = self.sessions.push_all(peer, &texts) else {
                return;
            };
            self.out.event(Event::Dequeued {
                to: target,
                peer,
                seqs: seqs.clone(),
            });
            for (seq, text) in seqs.into_iter().zip(texts) {
                self.out.event(Event::Sent { peer, seq, text });
            }
        }
        self.flush(now);
    }

    /// Queues every chat message and file chunk the send windows want to send now.
    fn flush(&mut self, now: Instant) {
        let Some(me) = self.server.id() else { return };
        self.sessions.flush(now, me, &mut self.out);
        self.files.flush(now, me);
    }
}

/// The peer with a session (in any state) that `target` names.
fn find(sessions: &Sessions, names: &Names, target: &Target) -> Option<ClientId> {
    match target {
        Target::Id(id) => sessions.contains(id).then_some(*id),
        Target::Name(_) => sessions.peers().find(|&p| target.is(p, names.name_of(p))),
    }
}

/// Splits `text` into pieces of at most `max` bytes, on character boundaries.
pub fn split_text(text: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        pieces.push(head);
        rest = tail;
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    pieces
}
