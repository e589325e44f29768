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

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::debug;
use rand::{Rng, SeedableRng};

mod event;
mod files;
mod names;
mod outbox;
mod outputs;
mod retry;
mod server;

use crate::reliable::{Received, RecvWindow, SendConfig, SendWindow};
use crate::wire::{self, ClientId, DecodeError, Message, SessionId, Token, Transmit};
pub use event::{CommandError, EndReason, Event, PeerStats, Sending, SessionInfo, Target};
pub use files::{
    chunk_count, hex, FileConfig, FileError, FileSink, FileSource, TransferFailure, TransferInfo,
};
use files::{Files, Link};
use names::{Heard, Lapsed, Names};
use outbox::Outbox;
use outputs::Outputs;
use retry::{Retry, Step};
use server::{Answer, Server};

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
    /// The token of this client's previous run (from its state directory), so that it can
    /// take its name back from a registration the server has not yet expired.
    pub previous_token: Option<Token>,
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
            previous_token: None,
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
        self
    }
}

enum State {
    /// Waiting for the server to say where the peer is.
    LookingUp {
        retry: Retry,
    },
    /// `ConnectRequest` sent; waiting for `Accept` or `Reject`.
    Requesting {
        retry: Retry,
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
    /// Started by the queue (not by the user): its failures are not shown.
    auto: bool,
}

/// A `Terminate` we keep resending until it is acknowledged.
struct Closing {
    peer: ClientId,
    addr: SocketAddr,
    retry: Retry,
    period: Duration,
    /// Whether to show `Terminated` when it ends (not for a withdrawn request, which was
    /// shown already).
    announce: bool,
}

/// A client of the chat: see the module documentation.
pub struct Peer {
    config: PeerConfig,
    rng: rand::rngs::StdRng,
    server: Server,
    sessions: BTreeMap<ClientId, Session>,
    closing: BTreeMap<SessionId, Closing>,
    /// Requests we rejected, so that a resent request gets the same answer; with expiry.
    rejected: HashMap<(ClientId, SessionId), Instant>,
    current: Option<ClientId>,
    next_order: u64,
    /// `finish` was called: leave once every message is delivered.
    finishing: bool,
    out: Outputs,
    stats: PeerStats,
    names: Names,
    outbox: Outbox,
    /// File transfers (src/transfer.rs).
    files: Files,
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
        let files = Files::new(config.files.clone(), config.retry_interval);
        let mut out = Outputs::default();
        Peer {
            server: Server::new(&config, now, &mut out),
            names: Names::new(&config),
            outbox: Outbox::new(config.queue_retry),
            config,
            rng,
            sessions: BTreeMap::new(),
            closing: BTreeMap::new(),
            rejected: HashMap::new(),
            current: None,
            next_order: 0,
            finishing: false,
            out,
            stats: PeerStats::default(),
            files,
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

    /// The token of our registration (kept by the client so that its next run can claim its
    /// name back: see [`PeerConfig::previous_token`]).
    pub fn token(&self) -> Option<Token> {
        self.server.id().map(|_| self.server.token())
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
        self.sessions
            .values()
            .map(|s| SessionInfo {
                peer: s.peer,
                state: match s.state {
                    State::LookingUp { .. } => "looking_up",
                    State::Requesting { .. } => "requesting",
                    State::Incoming { .. } => "incoming",
                    State::Connected { .. } => "connected",
                },
                current: self.current == Some(s.peer),
                in_flight: match &s.state {
                    State::Connected { tx, .. } => tx.outstanding(),
                    _ => 0,
                },
            })
            .collect()
    }

    /// The messages waiting for peers that are not connected, per target, oldest first.
    pub fn outbox(&self) -> Vec<(Target, Vec<String>)> {
        self.outbox.list()
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
        stats.ignored = self.out.ignored();
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
        self.server.is_done()
    }

    /// The next datagram to send. Acknowledgements of chat messages wait here until
    /// taken: the acknowledgement of a later message of the same session replaces one not
    /// yet taken when it says everything the earlier one said, so a driver that receives a
    /// burst of datagrams before it sends sends one acknowledgement for the burst.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        // Chat first: file chunks only once the peer's own datagrams are out.
        self.out
            .poll_transmit()
            .or_else(|| self.files.poll_transmit())
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.poll_event().or_else(|| self.files.poll_event())
    }

    /// The next time [`Peer::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(t) = self.server.poll_timeout() {
            consider(t);
        }
        for s in self.sessions.values() {
            match &s.state {
                State::LookingUp { retry } | State::Requesting { retry } => consider(retry.next()),
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
            consider(c.retry.next());
        }
        if let Some(t) = self.names.poll_timeout() {
            consider(t);
        }
        if !self.finishing && self.server.is_registered() {
            if let Some(t) = self.outbox.poll_timeout() {
                consider(t);
            }
        }
        if let Some(t) = self.files.poll_timeout() {
            consider(t);
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
        match self
            .sessions
            .get_mut(&peer)
            .map(|s| (&s.state, &mut s.auto))
        {
            Some((State::Connected { .. }, _)) => return Err(CommandError::AlreadyConnected(peer)),
            Some((State::LookingUp { .. } | State::Requesting { .. }, auto)) if *auto => {
                // The queue was already trying: from now on the user sees how it goes.
                *auto = false;
                return Ok(());
            }
            Some((State::LookingUp { .. } | State::Requesting { .. }, _)) => {
                return Err(CommandError::AlreadyConnecting(peer))
            }
            Some((State::Incoming { .. }, _)) => return self.accept(now, Some(peer)).map(|_| ()),
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
                    retry: Retry::first(now + self.config.server_retry),
                },
                last_heard: now,
                last_sent: now,
                queued_ack: None,
                auto: false,
            },
        );
        self.server
            .send(&mut self.out, Message::Lookup { id: peer });
        Ok(())
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
        match self.sessions.get(&peer).map(|s| &s.state) {
            Some(State::Connected { .. }) => {
                self.current = Some(peer);
                Ok(peer)
            }
            _ => Err(CommandError::NotConnectedTo(peer)),
        }
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
            if matches!(self.sessions[&p].state, State::Connected { .. })
                && !self.outbox.has_queue_for(p, self.name_of(p))
            {
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
            self.outbox
                .push(now, target.clone(), piece.to_string(), true, &mut self.out);
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

    /// Starts an attempt to reach every queued-for target whose time has come.
    fn pursue(&mut self, now: Instant) {
        if self.finishing || !self.server.is_registered() {
            return;
        }
        for key in self.outbox.due(now) {
            let target = self.outbox.target(&key);
            if let Some(peer) = self.find(&target) {
                if matches!(self.sessions[&peer].state, State::Connected { .. }) {
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
                        if let Some(s) = self.sessions.get_mut(id) {
                            s.auto = true;
                        }
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
        let keys = self.outbox.keys_for(peer, self.name_of(peer));
        for key in keys {
            let (target, texts) = self.outbox.take(&key);
            self.names.forget_resolve(&key);
            let Some(Session {
                state: State::Connected { tx, .. },
                ..
            }) = self.sessions.get_mut(&peer)
            else {
                return;
            };
            let mut sent = Vec::with_capacity(texts.len());
            for text in &texts {
                sent.push((tx.push(text.clone()), text.clone()));
            }
            self.out.event(Event::Dequeued {
                to: target,
                peer,
                seqs: sent.iter().map(|(seq, _)| *seq).collect(),
            });
            for (seq, text) in sent {
                self.out.event(Event::Sent { peer, seq, text });
            }
        }
        self.flush(now);
    }

    /// Remembers the name a server or a request gave for `peer`.
    fn learn_name(&mut self, peer: ClientId, name: Option<String>, display: Option<String>) {
        let sessions = &self.sessions;
        self.names
            .learn(peer, name, display, |p| sessions.contains_key(p));
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
        // The Accept first: opening sends what is queued for the peer, which should follow.
        self.transmit(to, Message::Accept { from: me, session });
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
            self.out.event(Event::Sent {
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
        if !self.server.is_active() {
            return;
        }
        self.finishing = true;
        let Some(me) = self.server.id() else {
            self.server.leave(now, &mut self.out);
            return;
        };
        let peers: Vec<ClientId> = self.sessions.keys().copied().collect();
        for p in peers {
            let s = self.sessions.remove(&p).expect("listed above");
            self.end_locally(now, me, s);
        }
        self.current = None;
        self.server.leave(now, &mut self.out);
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
            self.files.refuse_all(now, me);
        }
        self.leave_if_drained(now);
    }

    fn leave_if_drained(&mut self, now: Instant) {
        if !self.finishing || !self.server.is_active() {
            return;
        }
        let settled = self.sessions.values().all(|s| match &s.state {
            State::Connected { tx, .. } => tx.is_idle(),
            State::Incoming { .. } => true,
            State::LookingUp { .. } | State::Requesting { .. } => s.auto,
        }) && self.names.is_settled()
            && self.files.is_idle();
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
        self.files
            .session_ended(s.peer, s.id, reason.unwrap_or(EndReason::ByUs));
        match &mut s.state {
            State::Connected { tx, .. } => {
                let period = tx.rtt().rto().min(self.config.retry_interval);
                for seq in tx.abandon() {
                    self.out.event(Event::Undelivered { peer: s.peer, seq });
                }
                if let Some(reason) = reason {
                    self.out.event(Event::Terminated {
                        peer: s.peer,
                        reason,
                    });
                }
                let addr = s.addr.expect("connected sessions have an address");
                self.start_closing(now, me, s, addr, period, reason.is_none());
            }
            State::Requesting { .. } => {
                // The queue's own attempts end quietly: the user never started them.
                if !s.auto {
                    self.out.event(Event::Terminated {
                        peer: s.peer,
                        reason: EndReason::Cancelled,
                    });
                }
                let addr = s.addr.expect("requests go to an address");
                let period = self.config.server_retry;
                self.start_closing(now, me, s, addr, period, false);
            }
            State::LookingUp { .. } if s.auto => {}
            State::LookingUp { .. } => self.out.event(Event::Terminated {
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
                retry: Retry::first(now + period),
                period,
                announce,
            },
        );
    }

    fn usable_id(&self) -> Result<ClientId, CommandError> {
        self.server.usable_id()
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
        self.files.refuse(now, me, n)
    }

    /// Cancels transfer `n` (or the only one).
    pub fn cancel_file(&mut self, now: Instant, n: Option<u64>) -> Result<u64, FileError> {
        let me = self.file_command_id()?;
        self.files.cancel(now, me, n)
    }

    /// The offer `n` (or the only one) waiting for an answer: (number, peer, offered name).
    pub fn file_offer(&self, n: Option<u64>) -> Result<(u64, ClientId, String), FileError> {
        self.files.pick_offer(n)
    }

    /// Every transfer going on or waiting.
    pub fn transfers(&self) -> Vec<TransferInfo> {
        self.files.list()
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
                let message = format!(
                    "the server at {from} speaks protocol version {found}; this client speaks version {}",
                    wire::VERSION
                );
                self.server.fatal(message, &mut self.out);
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

    fn handle_server_message(&mut self, now: Instant, msg: Message) {
        let (registered, id, token) = (
            self.server.is_registered(),
            self.server.id(),
            self.server.token(),
        );
        match self
            .names
            .handle_message(registered, id, token, msg, now, &mut self.out)
        {
            Heard::Handled => {}
            Heard::Refused(message) => self.server.give_up(message, &mut self.out),
            Heard::Unknown { key } => self.outbox.retry_later(now, &key),
            Heard::Found {
                peer,
                addr,
                name,
                display_name,
                auto,
            } => {
                self.learn_name(peer, Some(name), display_name);
                self.resolved(now, peer, addr, auto);
            }
            Heard::NotMine(msg) => self.handle_registration(now, msg),
        }
    }

    fn handle_registration(&mut self, now: Instant, msg: Message) {
        let settled = self.closing.is_empty();
        let msg = match self.server.handle_message(now, msg, settled, &mut self.out) {
            Answer::Registered => {
                let (id, token) = (self.server.id(), self.server.token());
                self.names.claim(now, id, token, &mut self.out);
                return;
            }
            Answer::Handled => return,
            Answer::NotMine(msg) => msg,
        };
        match msg {
            Message::Found {
                id,
                addr,
                name,
                display_name,
            } => {
                let Some(me) = self.server.id() else { return };
                let retry = self.config.retry_interval;
                match self.sessions.get_mut(&id) {
                    Some(s) if matches!(s.state, State::LookingUp { .. }) => {
                        self.learn_name(id, name, display_name);
                        let s = self.sessions.get_mut(&id).expect("just seen");
                        s.addr = Some(addr);
                        s.state = State::Requesting {
                            retry: Retry::first(now + retry),
                        };
                        let session = s.id;
                        let request = Self::request_message(&self.config, me, session);
                        self.transmit(addr, request);
                    }
                    _ => self.out.ignore(
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
            Message::Inactive { id } => match self.sessions.get(&id) {
                Some(s) if matches!(s.state, State::LookingUp { .. }) => {
                    let s = self.sessions.remove(&id).expect("just seen");
                    if !s.auto {
                        self.out.event(Event::Inactive { peer: id });
                    }
                    self.outbox.retry_later(now, &id.to_string());
                }
                _ => self
                    .out
                    .ignore(self.config.server, &Message::Inactive { id }),
            },
            other => self.out.ignore(self.config.server, &other),
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
        if self.sessions.contains_key(&peer) {
            if !auto {
                if let Err(e) = self.connect(now, peer) {
                    self.out.event(Event::Notice {
                        message: e.to_string(),
                    });
                }
            }
            return;
        }
        let session = self.rng.random::<SessionId>();
        self.sessions.insert(
            peer,
            Session {
                peer,
                id: session,
                addr: Some(addr),
                state: State::Requesting {
                    retry: Retry::first(now + self.config.retry_interval),
                },
                last_heard: now,
                last_sent: now,
                queued_ack: None,
                auto,
            },
        );
        let request = Self::request_message(&self.config, me, session);
        self.transmit(addr, request);
    }

    fn handle_peer_message(&mut self, now: Instant, src: SocketAddr, msg: Message) {
        let Some(me) = self.server.id() else {
            self.out.ignore(src, &msg);
            return;
        };
        match msg {
            Message::ConnectRequest {
                from,
                session,
                name,
                display_name,
            } => {
                self.on_request(now, me, src, from, session);
                // The name is the requester's claim: kept for a request we now hold from
                // that address, never for someone else's session.
                let holds = self.sessions.get(&from).is_some_and(|s| {
                    s.id == session
                        && s.addr == Some(src)
                        && !matches!(s.state, State::Connected { .. })
                });
                if holds && name.is_some() {
                    self.learn_name(from, name, display_name);
                }
            }
            Message::Accept { from, session } => {
                if self.matches(from, src, session, |st| {
                    matches!(st, State::Requesting { .. })
                }) {
                    self.open(now, from);
                } else {
                    self.out.ignore(src, &msg);
                }
            }
            Message::Reject { from, session } => {
                if self.matches(from, src, session, |st| {
                    matches!(st, State::Requesting { .. })
                }) {
                    self.sessions.remove(&from);
                    self.out.event(Event::Rejected { peer: from });
                    let queued = self.outbox.targets_for(from, self.name_of(from));
                    for target in queued {
                        self.drop_queue(&target, "the peer rejected the connection");
                    }
                } else {
                    self.out.ignore(src, &msg);
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
                            self.out.event(Event::Message { from, seq, text });
                        }
                    }
                    Received::Held | Received::Duplicate => {}
                    Received::TooFarAhead => return,
                }
                if seq <= cumulative && self.merge_ack(queued, src, session, seq, cumulative) {
                    return;
                }
                let position = self.out.next_position();
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
                    self.out.event(Event::Delivered { peer: from, seq });
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
                    None => self.out.ignore(src, &msg),
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
                    self.out.ignore(src, &msg);
                }
            }
            Message::TerminateAck { from, session } => {
                if self.closing_matches(from, src, session) {
                    self.closed(session, EndReason::ByUs);
                } else {
                    self.out.ignore(src, &msg);
                }
            }
            // ---- file transfer (src/transfer.rs) ----
            other => match files::route(&other) {
                Some((from, session)) => {
                    match Self::connected_mut(&mut self.sessions, from, src, session) {
                        Some(s) => {
                            s.last_heard = now;
                            let link = Self::link_of(s);
                            self.files.handle_message(now, me, link, other);
                        }
                        None => self.unknown_session(me, src, session, &other),
                    }
                }
                None => self.out.ignore(src, &other),
            },
        }
    }

    /// The session a file command goes on: with `peer`, or the current peer.
    pub(crate) fn file_link(&self, peer: Option<ClientId>) -> Result<Link, CommandError> {
        let peer = peer.or(self.current).ok_or(CommandError::NotConnected)?;
        match self.sessions.get(&peer) {
            Some(s) if matches!(s.state, State::Connected { .. }) => Ok(Self::link_of(s)),
            _ => Err(CommandError::NotConnectedTo(peer)),
        }
    }

    fn link_of(s: &Session) -> Link {
        let rto = match &s.state {
            State::Connected { tx, .. } => tx.rtt().rto(),
            _ => Duration::from_secs(1),
        };
        Link {
            peer: s.peer,
            session: s.id,
            addr: s.addr.expect("connected sessions have an address"),
            rto,
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
            self.out.ignore(src, &msg);
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
                self.transmit(src, Message::Accept { from: me, session });
                self.open(now, from);
            }
            State::LookingUp { .. } => {
                // We were about to ask it ourselves.
                s.id = session;
                s.addr = Some(src);
                self.transmit(src, Message::Accept { from: me, session });
                self.open(now, from);
            }
            _ => self.out.ignore(src, &msg),
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
                auto: false,
            },
        );
        self.out.event(Event::Request { from });
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
        self.out.event(Event::Connected { peer });
        self.deliver_queued(now, peer);
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
        self.out.ignore(src, msg);
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
        self.files.session_ended(s.peer, s.id, reason);
        if let State::Connected { tx, .. } = &mut s.state {
            for seq in tx.abandon() {
                self.out.event(Event::Undelivered { peer: s.peer, seq });
            }
        }
        self.out.event(Event::Terminated {
            peer: s.peer,
            reason,
        });
        self.refresh_current();
    }

    fn closed(&mut self, session: SessionId, reason: EndReason) {
        if let Some(c) = self.closing.remove(&session) {
            if c.announce {
                self.out.event(Event::Terminated {
                    peer: c.peer,
                    reason,
                });
            }
        }
        let settled = self.closing.is_empty();
        self.server.left_if_done(settled, &mut self.out);
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
            .filter(|(_, c)| c.retry.next() <= now)
            .map(|(&id, _)| id)
            .collect();
        for session in due {
            let max = self.config.terminate_tries;
            let cap = self.config.retry_interval;
            let c = self.closing.get_mut(&session).expect("listed above");
            match c.retry.poll_doubling(now, max, &mut c.period, cap) {
                Some(Step::GiveUp) => self.closed(session, EndReason::Unanswered),
                Some(Step::Resend) => {
                    let (to, me) = (c.addr, self.server.id().unwrap_or_default());
                    self.transmit(to, Message::Terminate { from: me, session });
                }
                None => {}
            }
        }
        self.rejected.retain(|_, until| *until > now);
        self.name_timers(now);
        self.pursue(now);
        if let Some(me) = self.server.id() {
            self.files.handle_timeout(now, me);
        }
        self.flush(now);
        self.leave_if_drained(now);
    }

    /// Resends of `Claim`, `Resolve` and `List`, and giving up on them.
    fn name_timers(&mut self, now: Instant) {
        let (id, token) = (self.server.id(), self.server.token());
        match self.names.handle_timeout(now, id, token, &mut self.out) {
            Lapsed::Claim(message) => self.server.give_up(message, &mut self.out),
            Lapsed::Resolves(keys) => {
                for key in keys {
                    self.outbox.retry_later(now, &key);
                }
            }
        }
    }

    fn server_timers(&mut self, now: Instant) {
        let settled = self.closing.is_empty();
        self.server.handle_timeout(now, settled, &mut self.out);
    }

    fn session_timers(&mut self, now: Instant, peer: ClientId) {
        let Some(me) = self.server.id() else { return };
        let cfg = &self.config;
        let lifetime = self.request_lifetime();
        let s = self.sessions.get_mut(&peer).expect("listed by the caller");
        let mut out: Option<(SocketAddr, Message)> = None;
        let mut end: Option<Event> = None;
        match &mut s.state {
            State::LookingUp { retry } => {
                match retry.poll(now, cfg.server_tries, now + cfg.server_retry) {
                    Some(Step::GiveUp) => end = Some(Event::LookupFailed { peer }),
                    Some(Step::Resend) => out = Some((cfg.server, Message::Lookup { id: peer })),
                    None => {}
                }
            }
            State::Requesting { retry } => {
                let to = s.addr.expect("requests go to an address");
                // Keep to the exact period even if this call came late.
                let then = (retry.next() + cfg.retry_interval).max(now);
                match retry.poll(now, cfg.connect_tries, then) {
                    Some(Step::GiveUp) => {
                        // Tell the peer, once, that we stopped asking.
                        out = Some((
                            to,
                            Message::Terminate {
                                from: me,
                                session: s.id,
                            },
                        ));
                        end = Some(Event::NoAnswer { peer });
                    }
                    Some(Step::Resend) => out = Some((to, Self::request_message(cfg, me, s.id))),
                    None => {}
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
            // An attempt the queue started fails quietly: the queue tries again later.
            let auto = self.sessions.remove(&peer).is_some_and(|s| s.auto);
            if !auto {
                self.out.event(ev);
            }
        }
    }

    // ------------------------------------------------------------------ output helpers

    /// Queues every chat message the send windows want to send now.
    fn flush(&mut self, now: Instant) {
        let Some(me) = self.server.id() else { return };
        for s in self.sessions.values_mut() {
            let State::Connected { tx, .. } = &mut s.state else {
                continue;
            };
            let to = s.addr.expect("connected sessions have an address");
            while let Some(out) = tx.poll_transmit(now) {
                s.last_sent = now;
                self.out.transmit(
                    to,
                    Message::Chat {
                        from: me,
                        session: s.id,
                        seq: out.seq,
                        text: out.text.to_string(),
                    },
                );
            }
        }
        self.files.flush(now, me);
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
        let Some(t) = self.out.queued_mut(position) else {
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

    /// Our `ConnectRequest` for `session`, with the name we claim.
    fn request_message(cfg: &PeerConfig, me: ClientId, session: SessionId) -> Message {
        Message::ConnectRequest {
            from: me,
            session,
            name: cfg.name.clone(),
            display_name: cfg.display_name.clone(),
        }
    }

    fn transmit(&mut self, to: SocketAddr, message: Message) {
        self.out.transmit(to, message);
    }
}

/// The peer with a session (in any state) that `target` names.
fn find(
    sessions: &BTreeMap<ClientId, Session>,
    names: &Names,
    target: &Target,
) -> Option<ClientId> {
    match target {
        Target::Id(id) => sessions.contains_key(id).then_some(*id),
        Target::Name(_) => sessions
            .keys()
            .copied()
            .find(|&p| target.is(p, names.name_of(p))),
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
