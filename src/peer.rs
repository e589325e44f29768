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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::debug;
use rand::{Rng, SeedableRng};

use crate::registry::Transmit;
use crate::reliable::{Received, RecvWindow, SendConfig, SendWindow};
use crate::wire::{self, ClientId, DecodeError, ErrorCode, Message, SessionId, Token};

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
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// We terminated it and the peer acknowledged.
    ByUs,
    /// The peer terminated it (or told us it no longer knows it).
    ByPeer,
    /// A request was withdrawn before it was answered (by either side, or by `leave`).
    Cancelled,
    /// We terminated it and the peer never acknowledged.
    Unanswered,
    /// Nothing was heard from the peer for the session timeout.
    PeerSilent,
    /// The peer started a new session, so the old one is over.
    Replaced,
    /// A message of ours got no acknowledgement after every try: the peer is unreachable,
    /// and the messages after it could never be shown in order, so the session was ended.
    Undeliverable,
}

impl EndReason {
    /// A short stable name, used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ByUs => "by_us",
            EndReason::ByPeer => "by_peer",
            EndReason::Cancelled => "cancelled",
            EndReason::Unanswered => "unanswered",
            EndReason::PeerSilent => "peer_silent",
            EndReason::Replaced => "replaced",
            EndReason::Undeliverable => "undeliverable",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndReason::ByUs => "you ended it",
            EndReason::ByPeer => "the peer ended it",
            EndReason::Cancelled => "the request was withdrawn",
            EndReason::Unanswered => "you ended it; the peer did not confirm",
            EndReason::PeerSilent => "the peer stopped answering",
            EndReason::Replaced => "the peer started a new session",
            EndReason::Undeliverable => "a message could not be delivered, so it was ended",
        })
    }
}

/// Something to show the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Registered with the server (again, after a server restart, with `again`).
    Registered { id: ClientId, again: bool },
    /// Peer `from` asks to connect; answer with `accept` or `reject`.
    Request { from: ClientId },
    /// A session with `peer` is open.
    Connected { peer: ClientId },
    /// `peer` rejected our request.
    Rejected { peer: ClientId },
    /// The server has no client `peer` ("Client 3 Inactive").
    Inactive { peer: ClientId },
    /// `peer` never answered our request.
    NoAnswer { peer: ClientId },
    /// The server never answered the lookup of `peer`.
    LookupFailed { peer: ClientId },
    /// Our message `seq` to `peer` was queued for sending.
    Sent {
        peer: ClientId,
        seq: u64,
        text: String,
    },
    /// Message `seq` from `from`, shown once, in order.
    Message {
        from: ClientId,
        seq: u64,
        text: String,
    },
    /// `peer` has shown our message `seq` (and every one before it).
    Delivered { peer: ClientId, seq: u64 },
    /// Our message `seq` to `peer` was never confirmed shown there (its retries ran out, or
    /// the session ended first). It may or may not have been shown.
    Undelivered { peer: ClientId, seq: u64 },
    /// The session with `peer` is over.
    Terminated { peer: ClientId, reason: EndReason },
    /// We left the server (`server_acked` false: it never answered, we left anyway).
    Left { server_acked: bool },
    /// Something the user should know that needs no answer.
    Notice { message: String },
    /// The client cannot go on (no server, id taken, server full, other protocol version).
    Fatal { message: String },
}

/// Why a command was refused. The `Display` text says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    NotRegistered,
    Leaving,
    OwnId,
    AlreadyConnected(ClientId),
    AlreadyConnecting(ClientId),
    NotConnected,
    NotConnectedTo(ClientId),
    NoRequest,
    NoRequestFrom(ClientId),
    NoSessionWith(ClientId),
    EmptyMessage,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::NotRegistered => {
                write!(f, "not registered with the server yet; wait for your id")
            }
            CommandError::Leaving => write!(f, "leaving; no new commands are taken"),
            CommandError::OwnId => write!(f, "that is your own id; connect to another client"),
            CommandError::AlreadyConnected(p) => write!(f, "already connected to {p}"),
            CommandError::AlreadyConnecting(p) => write!(
                f,
                "already waiting for {p} to answer; type terminate {p} to give up"
            ),
            CommandError::NotConnected => {
                write!(f, "not connected to anyone; type connect <id> first")
            }
            CommandError::NotConnectedTo(p) => {
                write!(f, "not connected to {p}; type connect {p} first")
            }
            CommandError::NoRequest => write!(f, "no connection request is waiting"),
            CommandError::NoRequestFrom(p) => write!(f, "no connection request from {p}"),
            CommandError::NoSessionWith(p) => {
                write!(f, "no session or request with {p} to terminate")
            }
            CommandError::EmptyMessage => write!(f, "nothing to send; type send <message>"),
        }
    }
}

impl std::error::Error for CommandError {}

/// Counters of what the peer dropped or repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Datagrams that could not be decoded.
    pub undecodable: u64,
    /// Decodable datagrams that matched nothing (strangers, stale sessions, unasked answers).
    pub ignored: u64,
    /// `Terminate`s sent for a session we do not know (resets).
    pub resets: u64,
    /// Chat messages received twice and not shown again.
    pub duplicates: u64,
    /// Chat messages resent.
    pub retransmissions: u64,
    /// Of those, resent before their timeout because a message sent after them had
    /// arrived (early retransmission).
    pub early_retransmissions: u64,
}

enum ServerState {
    Registering {
        tries: u32,
        next: Instant,
        want: Option<ClientId>,
        again: bool,
    },
    Registered {
        keepalive_at: Instant,
    },
    Leaving {
        tries: u32,
        /// `None` once the server has answered or the tries ran out.
        next: Option<Instant>,
        acked: bool,
    },
    Done,
}

enum State {
    /// Waiting for the server to say where the peer is.
    LookingUp {
        tries: u32,
        next: Instant,
    },
    /// `ConnectRequest` sent; waiting for `Accept` or `Reject`.
    Requesting {
        tries: u32,
        next: Instant,
    },
    /// The peer asked; waiting for our user to answer. `order` ranks requests by arrival.
    Incoming {
        order: u64,
    },
    Connected {
        tx: Box<SendWindow>,
        rx: RecvWindow,
    },
}

struct Session {
    peer: ClientId,
    id: SessionId,
    addr: Option<SocketAddr>,
    state: State,
    last_heard: Instant,
    last_sent: Instant,
    /// Where our latest `Ack` for this session waits in the queue of transmits (its
    /// position counted from the first transmit ever queued), so that the acknowledgement of
    /// the next `Chat` can be merged into it while it has not been sent yet.
    queued_ack: Option<u64>,
}

/// A `Terminate` we keep resending until it is acknowledged.
struct Closing {
    peer: ClientId,
    addr: SocketAddr,
    tries: u32,
    next: Instant,
    period: Duration,
    /// Whether to show `Terminated` when it ends (not for a withdrawn request, which was
    /// shown already).
    announce: bool,
}

/// A client of the chat: see the module documentation.
pub struct Peer {
    config: PeerConfig,
    rng: rand::rngs::StdRng,
    id: Option<ClientId>,
    token: Token,
    ttl: Duration,
    server: ServerState,
    sessions: BTreeMap<ClientId, Session>,
    closing: BTreeMap<SessionId, Closing>,
    /// Requests we rejected, so that a resent request gets the same answer; with expiry.
    rejected: HashMap<(ClientId, SessionId), Instant>,
    current: Option<ClientId>,
    next_order: u64,
    /// `finish` was called: leave once every message is delivered.
    finishing: bool,
    /// Why the server last refused a registration that we keep retrying.
    refusal: Option<String>,
    transmits: VecDeque<Transmit>,
    /// Transmits taken by `poll_transmit` so far: the position of `transmits[0]`.
    polled: u64,
    events: VecDeque<Event>,
    stats: PeerStats,
}

impl Peer {
    /// A peer that starts registering at `now`; session ids come from the OS's randomness.
    pub fn new(config: PeerConfig, now: Instant) -> Self {
        Self::with_rng(config, now, rand::rngs::StdRng::from_os_rng())
    }

    /// A peer whose session ids come from `seed`, for reproducible tests.
    pub fn with_seed(config: PeerConfig, now: Instant, seed: u64) -> Self {
        Self::with_rng(config, now, rand::rngs::StdRng::seed_from_u64(seed))
    }

    fn with_rng(config: PeerConfig, now: Instant, rng: rand::rngs::StdRng) -> Self {
        let want = config.want_id;
        let mut peer = Peer {
            server: ServerState::Registering {
                tries: 1,
                next: now + config.server_retry,
                want,
                again: false,
            },
            config,
            rng,
            id: None,
            token: 0,
            ttl: Duration::from_secs(30),
            sessions: BTreeMap::new(),
            closing: BTreeMap::new(),
            rejected: HashMap::new(),
            current: None,
            next_order: 0,
            finishing: false,
            refusal: None,
            transmits: VecDeque::new(),
            polled: 0,
            events: VecDeque::new(),
            stats: PeerStats::default(),
        };
        peer.send_to_server(Message::Register { want_id: want });
        peer
    }

    pub fn config(&self) -> &PeerConfig {
        &self.config
    }

    /// Our id, once registered.
    pub fn id(&self) -> Option<ClientId> {
        self.id
    }

    /// The peer that `send` without a target goes to: the last one connected.
    pub fn current_peer(&self) -> Option<ClientId> {
        self.current
    }

    /// Peers with an open session.
    pub fn connected_peers(&self) -> Vec<ClientId> {
        self.sessions
            .values()
            .filter(|s| matches!(s.state, State::Connected { .. }))
            .map(|s| s.peer)
            .collect()
    }

    /// Peers whose connection requests wait for our answer, oldest first.
    pub fn pending_requests(&self) -> Vec<ClientId> {
        let mut v: Vec<(u64, ClientId)> = self
            .sessions
            .values()
            .filter_map(|s| match s.state {
                State::Incoming { order } => Some((order, s.peer)),
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, p)| p).collect()
    }

    pub fn stats(&self) -> PeerStats {
        let mut stats = self.stats.clone();
        for s in self.sessions.values() {
            if let State::Connected { tx, rx } = &s.state {
                stats.duplicates += rx.duplicates();
                stats.retransmissions += tx.retransmissions();
                stats.early_retransmissions += tx.early_retransmissions();
            }
        }
        stats
    }

    /// True once the peer has left (or failed fatally): the driver may close the socket.
    pub fn is_finished(&self) -> bool {
        matches!(self.server, ServerState::Done)
    }

    /// The next datagram to send. Acknowledgements of chat messages wait here until
    /// taken: the acknowledgement of a later message of the same session replaces one not
    /// yet taken when it says everything the earlier one said, so a driver that receives a
    /// burst of datagrams before it sends sends one acknowledgement for the burst.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.transmits.pop_front()?;
        self.polled += 1;
        Some(t)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next time [`Peer::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        match &self.server {
            ServerState::Registering { next, .. } => consider(*next),
            ServerState::Registered { keepalive_at } => consider(*keepalive_at),
            ServerState::Leaving { next: Some(n), .. } => consider(*n),
            ServerState::Leaving { next: None, .. } | ServerState::Done => {}
        }
        for s in self.sessions.values() {
            match &s.state {
                State::LookingUp { next, .. } | State::Requesting { next, .. } => consider(*next),
                State::Incoming { .. } => consider(s.last_heard + self.request_lifetime()),
                State::Connected { tx, .. } => {
                    if let Some(t) = tx.poll_timeout() {
                        consider(t);
                    }
                    consider(s.last_sent + self.config.session_idle);
                    consider(s.last_heard + self.config.session_timeout);
                }
            }
        }
        for c in self.closing.values() {
            consider(c.next);
        }
        next
    }

    /// A request not heard again for this long is taken as withdrawn.
    fn request_lifetime(&self) -> Duration {
        self.config.retry_interval * 3
    }

    // ------------------------------------------------------------------ user commands

    /// Looks `peer` up and asks it to connect. If `peer` has already asked us, accepts.
    pub fn connect(&mut self, now: Instant, peer: ClientId) -> Result<(), CommandError> {
        let me = self.usable_id()?;
        if peer == me {
            return Err(CommandError::OwnId);
        }
        match self.sessions.get(&peer).map(|s| &s.state) {
            Some(State::Connected { .. }) => return Err(CommandError::AlreadyConnected(peer)),
            Some(State::LookingUp { .. } | State::Requesting { .. }) => {
                return Err(CommandError::AlreadyConnecting(peer))
            }
            Some(State::Incoming { .. }) => return self.accept(now, Some(peer)).map(|_| ()),
            None => {}
        }
        let id = self.rng.random::<SessionId>();
        self.sessions.insert(
            peer,
            Session {
                peer,
                id,
                addr: None,
                state: State::LookingUp {
                    tries: 1,
                    next: now + self.config.server_retry,
                },
                last_heard: now,
                last_sent: now,
                queued_ack: None,
            },
        );
        self.send_to_server(Message::Lookup { id: peer });
        Ok(())
    }

    /// Accepts the request of `peer`, or the oldest request. Returns whom we accepted.
    pub fn accept(
        &mut self,
        now: Instant,
        peer: Option<ClientId>,
    ) -> Result<ClientId, CommandError> {
        let me = self.usable_id()?;
        let peer = self.pick_request(peer)?;
        let s = &self.sessions[&peer];
        let (to, session) = (s.addr.expect("requests have an address"), s.id);
        self.open(now, peer);
        self.transmit(to, Message::Accept { from: me, session });
        Ok(peer)
    }

    /// Rejects the request of `peer`, or the oldest request. Returns whom we rejected.
    pub fn reject(
        &mut self,
        now: Instant,
        peer: Option<ClientId>,
    ) -> Result<ClientId, CommandError> {
        let me = self.usable_id()?;
        let peer = self.pick_request(peer)?;
        let s = self.sessions.remove(&peer).expect("picked from sessions");
        self.reject_session(now, me, &s);
        Ok(peer)
    }

    fn reject_session(&mut self, now: Instant, me: ClientId, s: &Session) {
        if let Some(to) = s.addr {
            self.transmit(
                to,
                Message::Reject {
                    from: me,
                    session: s.id,
                },
            );
        }
        let until = now + self.config.retry_interval * (self.config.connect_tries + 1);
        self.rejected.insert((s.peer, s.id), until);
    }

    fn pick_request(&self, peer: Option<ClientId>) -> Result<ClientId, CommandError> {
        match peer {
            Some(p) => match self.sessions.get(&p).map(|s| &s.state) {
                Some(State::Incoming { .. }) => Ok(p),
                _ => Err(CommandError::NoRequestFrom(p)),
            },
            None => self
                .pending_requests()
                .first()
                .copied()
                .ok_or(CommandError::NoRequest),
        }
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
        let peer = match peer.or(self.current) {
            Some(p) => p,
            None => return Err(CommandError::NotConnected),
        };
        let Some(Session {
            state: State::Connected { tx, .. },
            ..
        }) = self.sessions.get_mut(&peer)
        else {
            return Err(CommandError::NotConnectedTo(peer));
        };
        let mut seqs = Vec::new();
        for piece in split_text(text, wire::MAX_TEXT) {
            let seq = tx.push(piece.to_string());
            seqs.push(seq);
            self.events.push_back(Event::Sent {
                peer,
                seq,
                text: piece.to_string(),
            });
        }
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
        let peer = match peer.or(self.current) {
            Some(p) => p,
            None => {
                // Nothing current: the only thing pending, if there is exactly one.
                let mut all = self.sessions.keys();
                match (all.next(), all.next()) {
                    (Some(&p), None) => p,
                    _ => return Err(CommandError::NotConnected),
                }
            }
        };
        let Some(s) = self.sessions.remove(&peer) else {
            return Err(CommandError::NoSessionWith(peer));
        };
        self.end_locally(now, me, s);
        self.refresh_current();
        Ok(peer)
    }

    /// Leaves now: ends every session, tells the server, and finishes once it answers (or
    /// the tries run out). Messages not yet acknowledged are reported undelivered.
    pub fn leave(&mut self, now: Instant) {
        if matches!(self.server, ServerState::Leaving { .. } | ServerState::Done) {
            return;
        }
        self.finishing = true;
        let Some(me) = self.id else {
            // Never registered: nothing to tell anyone.
            self.server = ServerState::Done;
            self.events.push_back(Event::Left {
                server_acked: false,
            });
            return;
        };
        let peers: Vec<ClientId> = self.sessions.keys().copied().collect();
        for p in peers {
            let s = self.sessions.remove(&p).expect("listed above");
            self.end_locally(now, me, s);
        }
        self.current = None;
        self.server = ServerState::Leaving {
            tries: 1,
            next: Some(now + self.config.server_retry),
            acked: false,
        };
        self.send_to_server(Message::Leave {
            id: me,
            token: self.token,
        });
    }

    /// Leaves once everything the user started has settled (for the end of a script's
    /// input): every message sent so far is acknowledged or given up, and every `connect`
    /// has been answered (or has run out of tries). Requests from others are declined.
    pub fn finish(&mut self, now: Instant) {
        if self.finishing {
            return;
        }
        self.finishing = true;
        if let Some(me) = self.id {
            let incoming: Vec<ClientId> = self
                .sessions
                .values()
                .filter(|s| matches!(s.state, State::Incoming { .. }))
                .map(|s| s.peer)
                .collect();
            for p in incoming {
                let s = self.sessions.remove(&p).expect("listed above");
                self.end_locally(now, me, s);
            }
        }
        self.leave_if_drained(now);
    }

    fn leave_if_drained(&mut self, now: Instant) {
        if !self.finishing
            || !matches!(
                self.server,
                ServerState::Registered { .. } | ServerState::Registering { .. }
            )
        {
            return;
        }
        let settled = self.sessions.values().all(|s| match &s.state {
            State::Connected { tx, .. } => tx.is_idle(),
            State::Incoming { .. } => true,
            State::LookingUp { .. } | State::Requesting { .. } => false,
        });
        if settled {
            self.leave(now);
        }
    }

    /// Ends a session on our side: tells the peer, reports what was not delivered. With
    /// `reason`, the end is shown now; without, once the peer acknowledges the Terminate.
    fn end_locally(&mut self, now: Instant, me: ClientId, mut s: Session) {
        self.end_locally_because(now, me, &mut s, None);
    }

    fn end_locally_because(
        &mut self,
        now: Instant,
        me: ClientId,
        s: &mut Session,
        reason: Option<EndReason>,
    ) {
        self.absorb_stats(s);
        match &mut s.state {
            State::Connected { tx, .. } => {
                let period = tx.rtt().rto().min(self.config.retry_interval);
                for seq in tx.abandon() {
                    self.events
                        .push_back(Event::Undelivered { peer: s.peer, seq });
                }
                if let Some(reason) = reason {
                    self.events.push_back(Event::Terminated {
                        peer: s.peer,
                        reason,
                    });
                }
                let addr = s.addr.expect("connected sessions have an address");
                self.start_closing(now, me, s, addr, period, reason.is_none());
            }
            State::Requesting { .. } => {
                self.events.push_back(Event::Terminated {
                    peer: s.peer,
                    reason: EndReason::Cancelled,
                });
                let addr = s.addr.expect("requests go to an address");
                let period = self.config.server_retry;
                self.start_closing(now, me, s, addr, period, false);
            }
            State::LookingUp { .. } => self.events.push_back(Event::Terminated {
                peer: s.peer,
                reason: EndReason::Cancelled,
            }),
            State::Incoming { .. } => self.reject_session(now, me, s),
        }
    }

    /// Keeps the counters of a session that is going away.
    fn absorb_stats(&mut self, s: &Session) {
        if let State::Connected { tx, rx } = &s.state {
            self.stats.duplicates += rx.duplicates();
            self.stats.retransmissions += tx.retransmissions();
            self.stats.early_retransmissions += tx.early_retransmissions();
        }
    }

    fn start_closing(
        &mut self,
        now: Instant,
        me: ClientId,
        s: &Session,
        addr: SocketAddr,
        period: Duration,
        announce: bool,
    ) {
        self.transmit(
            addr,
            Message::Terminate {
                from: me,
                session: s.id,
            },
        );
        self.closing.insert(
            s.id,
            Closing {
                peer: s.peer,
                addr,
                tries: 1,
                next: now + period,
                period,
                announce,
            },
        );
    }

    fn usable_id(&self) -> Result<ClientId, CommandError> {
        match self.server {
            ServerState::Leaving { .. } | ServerState::Done => Err(CommandError::Leaving),
            _ => self.id.ok_or(CommandError::NotRegistered),
        }
    }

    fn refresh_current(&mut self) {
        let still = self.current.is_some_and(|p| {
            self.sessions
                .get(&p)
                .is_some_and(|s| matches!(s.state, State::Connected { .. }))
        });
        if !still {
            self.current = self.connected_peers().last().copied();
        }
    }

    // ------------------------------------------------------------------ network input

    /// Feeds one received datagram.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        match wire::decode_all(datagram) {
            Ok(messages) => {
                for msg in messages {
                    self.handle_one(now, from, msg);
                }
                self.flush(now);
                self.leave_if_drained(now);
            }
            Err(DecodeError::BadVersion { found }) if from == self.config.server => {
                self.fatal(format!(
                    "the server at {from} speaks protocol version {found}; this client speaks version {}",
                    wire::VERSION
                ));
            }
            Err(e) => {
                self.stats.undecodable += 1;
                debug!("{from}: dropped: {e}");
            }
        }
    }

    /// Feeds one decoded message.
    pub fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Message) {
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

    fn ignore(&mut self, from: SocketAddr, msg: &Message) {
        self.stats.ignored += 1;
        debug!("{from}: ignored {msg:?}");
    }

    fn handle_server_message(&mut self, now: Instant, msg: Message) {
        match (&self.server, msg) {
            (
                ServerState::Registering { again, .. },
                Message::Registered {
                    id,
                    token,
                    ttl_secs,
                    ..
                },
            ) => {
                let again = *again;
                self.id = Some(id);
                self.refusal = None;
                self.token = token;
                self.ttl = Duration::from_secs(u64::from(ttl_secs.max(1)));
                self.server = ServerState::Registered {
                    keepalive_at: now + self.keepalive_period(),
                };
                self.events.push_back(Event::Registered { id, again });
            }
            (ServerState::Registering { again, want, .. }, Message::Error { code, detail }) => {
                match (code, *again) {
                    (ErrorCode::IdTaken, true) if want.is_some() => {
                        // Someone took our old id while the server was away: take any.
                        self.events.push_back(Event::Notice {
                            message: format!("{detail}; registering with a new id"),
                        });
                        self.server = ServerState::Registering {
                            tries: 1,
                            next: now + self.config.server_retry,
                            want: None,
                            again: true,
                        };
                        self.send_to_server(Message::Register { want_id: None });
                    }
                    (ErrorCode::RateLimited, _) => {
                        // Temporary: the retries go on at their pace, and the user knows why.
                        if self.refusal.is_none() {
                            self.events.push_back(Event::Notice {
                                message: format!("the server says: {detail}; retrying"),
                            });
                        }
                        self.refusal = Some(detail);
                    }
                    (ErrorCode::NotRegistered, _) => {
                        // Never an answer to `Register`: a late or duplicated answer to a
                        // `Keepalive` sent before, which is why we are registering again.
                        let message = Message::Error { code, detail };
                        self.ignore(self.config.server, &message);
                    }
                    _ => self.fatal(format!("the server refused to register us: {detail}")),
                }
            }
            (ServerState::Registered { .. }, Message::Error { code, detail }) => {
                if code == ErrorCode::NotRegistered {
                    self.events.push_back(Event::Notice {
                        message: "the server no longer knows us (restarted?); registering again"
                            .into(),
                    });
                    let want = self.id;
                    self.server = ServerState::Registering {
                        tries: 1,
                        next: now + self.config.server_retry,
                        want,
                        again: true,
                    };
                    self.send_to_server(Message::Register { want_id: want });
                } else {
                    self.events.push_back(Event::Notice {
                        message: format!("the server says: {detail}"),
                    });
                }
            }
            (ServerState::Leaving { next: Some(_), .. }, Message::LeaveAck { .. }) => {
                self.server_left(true);
            }
            (
                ServerState::Leaving { next: Some(_), .. },
                Message::Error {
                    code: ErrorCode::NotRegistered,
                    ..
                },
            ) => {
                // It does not know us: as good as left.
                self.server_left(true);
            }
            (_, Message::Found { id, addr, .. }) => {
                let Some(me) = self.id else { return };
                let retry = self.config.retry_interval;
                match self.sessions.get_mut(&id) {
                    Some(s) if matches!(s.state, State::LookingUp { .. }) => {
                        s.addr = Some(addr);
                        s.state = State::Requesting {
                            tries: 1,
                            next: now + retry,
                        };
                        let session = s.id;
                        let request = self.connect_request(me, session);
                        self.transmit(addr, request);
                    }
                    _ => self.ignore(
                        self.config.server,
                        &Message::Found {
                            id,
                            addr,
                            name: None,
                            display_name: None,
                        },
                    ),
                }
            }
            (_, Message::Inactive { id }) => match self.sessions.get(&id) {
                Some(s) if matches!(s.state, State::LookingUp { .. }) => {
                    self.sessions.remove(&id);
                    self.events.push_back(Event::Inactive { peer: id });
                }
                _ => self.ignore(self.config.server, &Message::Inactive { id }),
            },
            (_, other) => self.ignore(self.config.server, &other),
        }
    }

    fn handle_peer_message(&mut self, now: Instant, src: SocketAddr, msg: Message) {
        let Some(me) = self.id else {
            self.ignore(src, &msg);
            return;
        };
        match msg {
            Message::ConnectRequest { from, session, .. } => {
                self.on_request(now, me, src, from, session)
            }
            Message::Accept { from, session } => {
                if self.matches(from, src, session, |st| {
                    matches!(st, State::Requesting { .. })
                }) {
                    self.open(now, from);
                } else {
                    self.ignore(src, &msg);
                }
            }
            Message::Reject { from, session } => {
                if self.matches(from, src, session, |st| {
                    matches!(st, State::Requesting { .. })
                }) {
                    self.sessions.remove(&from);
                    self.events.push_back(Event::Rejected { peer: from });
                } else {
                    self.ignore(src, &msg);
                }
            }
            Message::Chat {
                from,
                session,
                seq,
                text,
            } => {
                if self.matches(from, src, session, |st| {
                    matches!(st, State::Requesting { .. })
                }) {
                    // Its Accept was lost, but a message on the session means it accepted.
                    self.open(now, from);
                }
                let Some(s) = Self::connected_mut(&mut self.sessions, from, src, session) else {
                    self.unknown_session(
                        me,
                        src,
                        session,
                        &Message::Chat {
                            from,
                            session,
                            seq,
                            text,
                        },
                    );
                    return;
                };
                s.last_heard = now;
                s.last_sent = now;
                let State::Connected { rx, .. } = &mut s.state else {
                    unreachable!("connected_mut returns connected sessions")
                };
                let received = rx.receive(seq, text);
                let cumulative = rx.cumulative();
                let queued = s.queued_ack;
                match received {
                    Received::Deliver(ready) => {
                        for (seq, text) in ready {
                            self.events.push_back(Event::Message { from, seq, text });
                        }
                    }
                    Received::Held | Received::Duplicate => {}
                    Received::TooFarAhead => return,
                }
                if seq <= cumulative && self.merge_ack(queued, src, session, seq, cumulative) {
                    return;
                }
                let position = self.polled + self.transmits.len() as u64;
                self.transmit(
                    src,
                    Message::Ack {
                        from: me,
                        session,
                        seq,
                        cumulative,
                    },
                );
                if let Some(s) = self.sessions.get_mut(&from) {
                    s.queued_ack = Some(position);
                }
            }
            Message::Ack {
                from,
                session,
                seq,
                cumulative,
            } => {
                let Some(s) = Self::connected_mut(&mut self.sessions, from, src, session) else {
                    self.unknown_session(me, src, session, &msg);
                    return;
                };
                s.last_heard = now;
                let State::Connected { tx, .. } = &mut s.state else {
                    unreachable!("connected_mut returns connected sessions")
                };
                tx.on_ack(now, seq, cumulative);
                while let Some(seq) = tx.poll_delivered() {
                    self.events.push_back(Event::Delivered { peer: from, seq });
                }
            }
            Message::Ping { from, session } => {
                if self.matches(from, src, session, |st| {
                    matches!(st, State::Requesting { .. })
                }) {
                    // As with a Chat: its Accept was lost, and an idle accepter pings
                    // (after `session_idle`) before our next request goes out. Answering
                    // with a reset would end the session it accepted.
                    self.open(now, from);
                }
                let Some(s) = Self::connected_mut(&mut self.sessions, from, src, session) else {
                    self.unknown_session(me, src, session, &msg);
                    return;
                };
                s.last_heard = now;
                s.last_sent = now;
                self.transmit(src, Message::Pong { from: me, session });
            }
            Message::Pong { from, session } => {
                match Self::connected_mut(&mut self.sessions, from, src, session) {
                    Some(s) => s.last_heard = now,
                    None => self.ignore(src, &msg),
                }
            }
            Message::Terminate { from, session } => {
                // Always acknowledged: our earlier TerminateAck may have been lost.
                self.transmit(src, Message::TerminateAck { from: me, session });
                if self.matches(from, src, session, |_| true) {
                    let s = self.sessions.remove(&from).expect("matched");
                    self.end_by_peer(s);
                } else if self.closing_matches(from, src, session) {
                    // Both ended it at once.
                    self.closed(session, EndReason::ByUs);
                } else {
                    self.ignore(src, &msg);
                }
            }
            Message::TerminateAck { from, session } => {
                if self.closing_matches(from, src, session) {
                    self.closed(session, EndReason::ByUs);
                } else {
                    self.ignore(src, &msg);
                }
            }
            other => self.ignore(src, &other),
        }
    }

    fn on_request(
        &mut self,
        now: Instant,
        me: ClientId,
        src: SocketAddr,
        from: ClientId,
        session: SessionId,
    ) {
        let msg = Message::ConnectRequest {
            from,
            session,
            name: None,
            display_name: None,
        };
        if from == me {
            self.ignore(src, &msg);
            return;
        }
        if self.rejected.contains_key(&(from, session)) {
            // Our Reject was lost: the same answer again.
            self.transmit(src, Message::Reject { from: me, session });
            return;
        }
        if self.finishing {
            self.transmit(src, Message::Reject { from: me, session });
            return;
        }
        let Some(s) = self.sessions.get_mut(&from) else {
            self.incoming(now, src, from, session);
            return;
        };
        let same_addr = s.addr == Some(src);
        match &s.state {
            State::Incoming { .. } if same_addr => {
                // A resend: not shown again. The newest request of the peer is the one we
                // will answer.
                s.last_heard = now;
                s.id = session;
            }
            State::Connected { .. } if s.id == session && same_addr => {
                // Our Accept was lost.
                s.last_heard = now;
                self.transmit(src, Message::Accept { from: me, session });
            }
            State::Connected { .. } if same_addr && session < s.id => {
                // The peer forgot the old session (restarted, or ended it without our
                // hearing) and asks anew. A larger id from the same peer is a leftover
                // request that lost a simultaneous open, and is ignored.
                let old = self.sessions.remove(&from).expect("present");
                self.end_with(old, EndReason::Replaced);
                self.incoming(now, src, from, session);
            }
            State::Requesting { .. } if same_addr && session < s.id => {
                // Both asked at once: the smaller session id wins, and we wanted this.
                s.id = session;
                self.open(now, from);
                self.transmit(src, Message::Accept { from: me, session });
            }
            State::LookingUp { .. } => {
                // We were about to ask it ourselves.
                s.id = session;
                s.addr = Some(src);
                self.open(now, from);
                self.transmit(src, Message::Accept { from: me, session });
            }
            _ => self.ignore(src, &msg),
        }
    }

    fn incoming(&mut self, now: Instant, src: SocketAddr, from: ClientId, session: SessionId) {
        self.next_order += 1;
        self.sessions.insert(
            from,
            Session {
                peer: from,
                id: session,
                addr: Some(src),
                state: State::Incoming {
                    order: self.next_order,
                },
                last_heard: now,
                last_sent: now,
                queued_ack: None,
            },
        );
        self.events.push_back(Event::Request { from });
    }

    /// Opens the session with `peer` (which has an address).
    fn open(&mut self, now: Instant, peer: ClientId) {
        let chat = self.config.chat.clone();
        let s = self
            .sessions
            .get_mut(&peer)
            .expect("opening a present session");
        s.state = State::Connected {
            tx: Box::new(SendWindow::new(chat.clone())),
            rx: RecvWindow::new(chat.window),
        };
        s.last_heard = now;
        s.last_sent = now;
        self.current = Some(peer);
        self.events.push_back(Event::Connected { peer });
    }

    /// Whether a message from `from` at `src` for `session` matches our session with it, in
    /// a state accepted by `state_ok`.
    fn matches(
        &self,
        from: ClientId,
        src: SocketAddr,
        session: SessionId,
        state_ok: impl Fn(&State) -> bool,
    ) -> bool {
        self.sessions
            .get(&from)
            .is_some_and(|s| s.id == session && s.addr == Some(src) && state_ok(&s.state))
    }

    /// Whether `session` is one we are closing with `from` at `src`.
    fn closing_matches(&self, from: ClientId, src: SocketAddr, session: SessionId) -> bool {
        self.closing
            .get(&session)
            .is_some_and(|c| c.peer == from && c.addr == src)
    }

    fn connected_mut(
        sessions: &mut BTreeMap<ClientId, Session>,
        from: ClientId,
        src: SocketAddr,
        session: SessionId,
    ) -> Option<&mut Session> {
        sessions.get_mut(&from).filter(|s| {
            s.id == session && s.addr == Some(src) && matches!(s.state, State::Connected { .. })
        })
    }

    /// A session message for a session we do not have: answer with a Terminate so that the
    /// sender ends its stale session. For a session we are closing, this is a resend of our
    /// Terminate, sooner than its timer: the peer evidently has not heard it.
    fn unknown_session(
        &mut self,
        me: ClientId,
        src: SocketAddr,
        session: SessionId,
        msg: &Message,
    ) {
        self.ignore(src, msg);
        if !self.closing.contains_key(&session) {
            self.stats.resets += 1;
        }
        self.transmit(src, Message::Terminate { from: me, session });
    }

    fn end_by_peer(&mut self, s: Session) {
        let reason = match s.state {
            State::Incoming { .. } | State::LookingUp { .. } => EndReason::Cancelled,
            _ => EndReason::ByPeer,
        };
        self.end_with(s, reason);
    }

    /// Drops a session the peer ended or that died: reports what was not delivered.
    fn end_with(&mut self, mut s: Session, reason: EndReason) {
        self.absorb_stats(&s);
        if let State::Connected { tx, .. } = &mut s.state {
            for seq in tx.abandon() {
                self.events
                    .push_back(Event::Undelivered { peer: s.peer, seq });
            }
        }
        self.events.push_back(Event::Terminated {
            peer: s.peer,
            reason,
        });
        self.refresh_current();
    }

    fn closed(&mut self, session: SessionId, reason: EndReason) {
        if let Some(c) = self.closing.remove(&session) {
            if c.announce {
                self.events.push_back(Event::Terminated {
                    peer: c.peer,
                    reason,
                });
            }
        }
        self.server_left_if_done();
    }

    // ------------------------------------------------------------------ timers

    /// Does whatever is due at `now`: resends, keepalives, giving up.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.server_timers(now);
        let peers: Vec<ClientId> = self.sessions.keys().copied().collect();
        for p in peers {
            self.session_timers(now, p);
        }
        let due: Vec<SessionId> = self
            .closing
            .iter()
            .filter(|(_, c)| c.next <= now)
            .map(|(&id, _)| id)
            .collect();
        for session in due {
            let max = self.config.terminate_tries;
            let cap = self.config.retry_interval;
            let c = self.closing.get_mut(&session).expect("listed above");
            if c.tries >= max {
                self.closed(session, EndReason::Unanswered);
                continue;
            }
            c.tries += 1;
            c.period = (c.period * 2).min(cap);
            c.next = now + c.period;
            let (to, me) = (c.addr, self.id.unwrap_or_default());
            self.transmit(to, Message::Terminate { from: me, session });
        }
        self.rejected.retain(|_, until| *until > now);
        self.flush(now);
        self.leave_if_drained(now);
    }

    fn server_timers(&mut self, now: Instant) {
        let (retry, tries_max) = (self.config.server_retry, self.config.server_tries);
        let keepalive = self.keepalive_period();
        match &mut self.server {
            ServerState::Registering {
                tries,
                next,
                want,
                again,
            } if *next <= now => {
                if *tries < tries_max {
                    *tries += 1;
                    *next = now + retry;
                    let want = *want;
                    self.send_to_server(Message::Register { want_id: want });
                } else if *again {
                    // Keep trying, at the retry interval, and say so once per round.
                    *tries = 0;
                    *next = now + self.config.retry_interval;
                    let message = format!(
                        "the rendezvous server at {} does not answer; still trying",
                        self.config.server
                    );
                    self.events.push_back(Event::Notice { message });
                } else {
                    let message = match self.refusal.take() {
                        Some(detail) => format!(
                            "the rendezvous server at {} refused to register us: {detail}",
                            self.config.server
                        ),
                        None => format!("no rendezvous server at {}", self.config.server),
                    };
                    self.fatal(message);
                }
            }
            ServerState::Registered { keepalive_at } if *keepalive_at <= now => {
                *keepalive_at = now + keepalive;
                let (id, token) = (self.id.unwrap_or_default(), self.token);
                self.send_to_server(Message::Keepalive { id, token });
            }
            ServerState::Leaving {
                tries,
                next: Some(next),
                ..
            } if *next <= now => {
                if *tries < tries_max {
                    *tries += 1;
                    *next = now + retry;
                    let (id, token) = (self.id.unwrap_or_default(), self.token);
                    self.send_to_server(Message::Leave { id, token });
                } else {
                    self.events.push_back(Event::Notice {
                        message: format!(
                            "the rendezvous server at {} did not answer; leaving anyway",
                            self.config.server
                        ),
                    });
                    self.server_left(false);
                }
            }
            _ => {}
        }
    }

    fn session_timers(&mut self, now: Instant, peer: ClientId) {
        let Some(me) = self.id else { return };
        let cfg = &self.config;
        let lifetime = self.request_lifetime();
        let s = self.sessions.get_mut(&peer).expect("listed by the caller");
        let mut out: Option<(SocketAddr, Message)> = None;
        let mut end: Option<Event> = None;
        match &mut s.state {
            State::LookingUp { tries, next } if *next <= now => {
                if *tries >= cfg.server_tries {
                    end = Some(Event::LookupFailed { peer });
                } else {
                    *tries += 1;
                    *next = now + cfg.server_retry;
                    out = Some((cfg.server, Message::Lookup { id: peer }));
                }
            }
            State::Requesting { tries, next } if *next <= now => {
                let to = s.addr.expect("requests go to an address");
                if *tries >= cfg.connect_tries {
                    // Tell the peer, once, that we stopped asking.
                    out = Some((
                        to,
                        Message::Terminate {
                            from: me,
                            session: s.id,
                        },
                    ));
                    end = Some(Event::NoAnswer { peer });
                } else {
                    *tries += 1;
                    // Keep to the exact period even if this call came late.
                    *next = (*next + cfg.retry_interval).max(now);
                    out = Some((to, Self::request_message(cfg, me, s.id)));
                }
            }
            State::Incoming { .. } if s.last_heard + lifetime <= now => {
                end = Some(Event::Terminated {
                    peer,
                    reason: EndReason::Cancelled,
                });
            }
            State::Connected { tx, .. } => {
                if s.last_heard + cfg.session_timeout <= now {
                    let s = self.sessions.remove(&peer).expect("present");
                    self.end_with(s, EndReason::PeerSilent);
                    return;
                }
                tx.handle_timeout(now);
                if tx.is_broken() {
                    let mut s = self.sessions.remove(&peer).expect("present");
                    self.end_locally_because(now, me, &mut s, Some(EndReason::Undeliverable));
                    self.refresh_current();
                    return;
                }
                if s.last_sent + cfg.session_idle <= now && !tx.wants_to_send() {
                    out = Some((
                        s.addr.expect("connected sessions have an address"),
                        Message::Ping {
                            from: me,
                            session: s.id,
                        },
                    ));
                    s.last_sent = now;
                }
            }
            _ => {}
        }
        if let Some((to, msg)) = out {
            self.transmit(to, msg);
        }
        if let Some(ev) = end {
            self.sessions.remove(&peer);
            self.events.push_back(ev);
        }
    }

    // ------------------------------------------------------------------ output helpers

    /// Queues every chat message the send windows want to send now.
    fn flush(&mut self, now: Instant) {
        let Some(me) = self.id else { return };
        for s in self.sessions.values_mut() {
            let State::Connected { tx, .. } = &mut s.state else {
                continue;
            };
            let to = s.addr.expect("connected sessions have an address");
            while let Some(out) = tx.poll_transmit(now) {
                s.last_sent = now;
                self.transmits.push_back(Transmit {
                    to,
                    message: Message::Chat {
                        from: me,
                        session: s.id,
                        seq: out.seq,
                        text: out.text.to_string(),
                    },
                });
            }
        }
    }

    /// Folds the acknowledgement of `Chat` `seq`, which `cumulative` covers, into our `Ack`
    /// for the same session at `position` if it is still queued and says nothing that the
    /// new one does not: `cumulative` covers its `seq` too. True if merged.
    fn merge_ack(
        &mut self,
        position: Option<u64>,
        to: SocketAddr,
        session: SessionId,
        seq: u64,
        cumulative: u64,
    ) -> bool {
        let Some(index) = position.and_then(|p| p.checked_sub(self.polled)) else {
            return false;
        };
        let Some(t) = self.transmits.get_mut(index as usize) else {
            return false;
        };
        match &mut t.message {
            Message::Ack {
                session: queued_session,
                seq: queued_seq,
                cumulative: queued_cumulative,
                ..
            } if t.to == to && *queued_session == session && *queued_seq <= cumulative => {
                // The newest message's number: a fresh round-trip sample for the sender.
                *queued_seq = seq;
                *queued_cumulative = cumulative;
                true
            }
            _ => false,
        }
    }

    fn connect_request(&self, me: ClientId, session: SessionId) -> Message {
        Self::request_message(&self.config, me, session)
    }

    fn request_message(cfg: &PeerConfig, me: ClientId, session: SessionId) -> Message {
        Message::ConnectRequest {
            from: me,
            session,
            name: cfg.name.clone(),
            display_name: cfg.display_name.clone(),
        }
    }

    fn transmit(&mut self, to: SocketAddr, message: Message) {
        self.transmits.push_back(Transmit { to, message });
    }

    fn send_to_server(&mut self, message: Message) {
        self.transmits.push_back(Transmit {
            to: self.config.server,
            message,
        });
    }

    fn keepalive_period(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }

    fn fatal(&mut self, message: String) {
        self.server = ServerState::Done;
        self.events.push_back(Event::Fatal { message });
    }

    fn server_left(&mut self, acked: bool) {
        if let ServerState::Leaving { next, acked: a, .. } = &mut self.server {
            *next = None;
            *a = acked;
        }
        self.server_left_if_done();
    }

    /// Finishes leaving once the server part is over and every Terminate is settled.
    fn server_left_if_done(&mut self) {
        if let ServerState::Leaving {
            next: None, acked, ..
        } = self.server
        {
            if self.closing.is_empty() {
                self.server = ServerState::Done;
                self.events.push_back(Event::Left {
                    server_acked: acked,
                });
            }
        }
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
