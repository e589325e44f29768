//! Sessions with peers, keyed by the peer's id: looking a peer up, our requests and theirs,
//! accept and reject, chat with its acknowledgements, keepalive pings, and the end of a
//! session (a `Terminate` resent until acknowledged).
//!
//! A peer message is acted on only when its `from`, its source address and its session id
//! all match a session, so datagrams from strangers or from an earlier session change
//! nothing; a session message for a session we do not have is answered with a `Terminate`.
//!
//! What a flood of requests could grow is bounded: the requests waiting for our person's
//! answer (in all, and per source), and the work per turn. The deadlines of sessions and
//! of our `Terminate`s are kept in order ([`Timers`]), and an [`Index`] answers, without
//! walking the table, which addresses have proved they receive (for the answer limit of
//! `Peer::handle_datagram`), which peers are connected, and how many requests each source
//! holds.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;

use super::event::{CommandError, EndReason, Event, Path, PeerStats, SessionInfo};
use super::files::Link;
use super::outputs::{Outputs, Tally};
use super::retry::{Retry, Step};
use super::session::{Due, Session, Settings, State};
use super::timers::Timers;
use super::{split_text, PeerConfig};
use crate::wire::{self, ClientId, Message, SessionId};

/// A `Terminate` we keep resending until it is acknowledged.
struct Closing {
    peer: ClientId,
    addr: SocketAddr,
    retry: Retry,
    period: Duration,
    /// Whether to show `Terminated` when it ends (not for a withdrawn request, which was
    /// shown already).
    announce: bool,
    /// The session was connected: its address has proved it receives.
    proven: bool,
    /// The deadline last set in the timers.
    scheduled: Option<Instant>,
}

/// What has a deadline in [`Sessions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    /// A session or request, by peer.
    Session(ClientId),
    /// A `Terminate` of ours being resent, by session id.
    Closing(SessionId),
}

/// The most bytes of credit an address holding a request keeps (see [`Held`]).
const MAX_CREDIT: usize = wire::MAX_DATAGRAM;

/// The requests pending with one address, either way: its requests waiting for our answer,
/// and ours waiting for its.
#[derive(Debug, Default)]
struct Held {
    requests: u32,
    /// Bytes received from the address while a request was pending with it, less the bytes
    /// sent to it in answer: what it may still be answered with beyond a datagram's own
    /// length.
    credit: usize,
}

/// The sessions by address and by state: kept up to date as sessions come, change state
/// and go (in [`Sessions::put`], [`Sessions::take`], [`Sessions::open`] and around
/// closings), so that the questions of every datagram cost no walk of the table.
#[derive(Debug, Default)]
struct Index {
    /// Addresses that have proved they receive, with how many reasons: connected sessions,
    /// sessions whose `Terminate` we resend after they were connected, and sessions the
    /// peer ended lately (see [`Sessions::retire`]).
    proven: HashMap<SocketAddr, u32>,
    /// Addresses of sessions the peer ended, proven until then, in that order.
    retired: VecDeque<(SocketAddr, Instant)>,
    /// Connected peers, in id order.
    connected: BTreeSet<ClientId>,
    /// Requests waiting for our answer: in all, and per source.
    incoming: usize,
    by_source: HashMap<IpAddr, u32>,
    /// Requests pending either way, per address.
    held: HashMap<SocketAddr, Held>,
}

impl Index {
    fn add(&mut self, s: &Session) {
        match (&s.state, s.addr) {
            (State::Connected { .. }, Some(addr)) => {
                *self.proven.entry(addr).or_default() += 1;
                self.connected.insert(s.peer);
            }
            (State::Incoming { .. }, Some(addr)) => {
                self.incoming += 1;
                *self.by_source.entry(source(addr.ip())).or_default() += 1;
                self.held.entry(addr).or_default().requests += 1;
            }
            (State::Requesting { .. }, Some(addr)) => {
                self.held.entry(addr).or_default().requests += 1;
            }
            _ => {}
        }
    }

    fn remove(&mut self, s: &Session) {
        match (&s.state, s.addr) {
            (State::Connected { .. }, Some(addr)) => {
                self.unprove(addr);
                self.connected.remove(&s.peer);
            }
            (State::Incoming { .. }, Some(addr)) => {
                self.incoming -= 1;
                decrement(&mut self.by_source, source(addr.ip()));
                self.release(addr);
            }
            (State::Requesting { .. }, Some(addr)) => self.release(addr),
            _ => {}
        }
    }

    /// A request pending with `addr` is over; with the last one its credit goes.
    fn release(&mut self, addr: SocketAddr) {
        if let Some(h) = self.held.get_mut(&addr) {
            h.requests -= 1;
            if h.requests == 0 {
                self.held.remove(&addr);
            }
        }
    }

    fn prove(&mut self, addr: SocketAddr) {
        *self.proven.entry(addr).or_default() += 1;
    }

    fn unprove(&mut self, addr: SocketAddr) {
        decrement(&mut self.proven, addr);
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

/// The source a request is counted against: its IPv4 address, or the /64 of its IPv6
/// address (one host commonly holds a whole /64), an IPv4-mapped address as IPv4.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// A session that has ended, so that what travelled on it (file transfers) ends too.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ended {
    pub peer: ClientId,
    pub session: SessionId,
    pub reason: EndReason,
}

/// What [`Sessions::connect`] started.
pub(super) enum Connecting {
    /// A lookup (or nothing new: an attempt of the queue, now shown to the user).
    Started,
    /// The peer has asked us: accept its request.
    Incoming,
}

/// What [`Sessions::handle_request`] wants done next.
pub(super) enum Requested {
    Nothing,
    /// Open the session with the requester (we had asked it too, or were about to).
    Open,
    /// The peer's old session ended (a new request replaces it).
    Replaced(Ended),
}

/// What a `Terminate` from a peer ended.
pub(super) enum Terminated {
    Nothing,
    /// The peer ended its session.
    Session(Ended),
    /// Our own `Terminate` of it is settled (both ended it at once).
    Closing,
}

/// Every session and request of a client. See the module documentation.
pub(super) struct Sessions {
    cfg: Settings,
    /// Session ids.
    rng: StdRng,
    by_peer: BTreeMap<ClientId, Session>,
    closing: BTreeMap<SessionId, Closing>,
    /// Requests we rejected, so that a resent request gets the same answer; with expiry,
    /// and in the order they expire (they all live as long).
    rejected: HashMap<(ClientId, SessionId), Instant>,
    rejected_order: VecDeque<((ClientId, SessionId), Instant)>,
    timers: Timers<Timer>,
    index: Index,
    /// Requests ignored for being past the bounds, shown as a count now and then.
    ignored: Tally,
    current: Option<ClientId>,
    next_order: u64,
    /// Resets sent, and the counters of sessions that have ended.
    stats: PeerStats,
}

impl Sessions {
    pub fn new(config: &PeerConfig, rng: StdRng) -> Self {
        Sessions {
            cfg: Settings::new(config),
            rng,
            by_peer: BTreeMap::new(),
            closing: BTreeMap::new(),
            rejected: HashMap::new(),
            rejected_order: VecDeque::new(),
            timers: Timers::default(),
            index: Index::default(),
            ignored: Tally::new(config.summary_interval),
            current: None,
            next_order: 0,
            stats: PeerStats::default(),
        }
    }

    // ------------------------------------------------------------------ queries

    /// The peer that `send` without a target goes to: the last one connected.
    pub fn current(&self) -> Option<ClientId> {
        self.current
    }

    /// Whether there is a session (in any state) with `peer`.
    pub fn contains(&self, peer: &ClientId) -> bool {
        self.by_peer.contains_key(peer)
    }

    /// The peers with a session (in any state), in id order.
    pub fn peers(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.by_peer.keys().copied()
    }

    pub fn is_connected(&self, peer: ClientId) -> bool {
        self.by_peer.get(&peer).is_some_and(Session::is_connected)
    }

    /// Peers with an open session.
    pub fn connected_peers(&self) -> Vec<ClientId> {
        self.index.connected.iter().copied().collect()
    }

    /// Whether `addr` has proved it receives what we send: it is the address of a
    /// connected session (or of one we are ending after it was connected).
    pub fn proves_receipt(&self, addr: SocketAddr) -> bool {
        self.index.proven.contains_key(&addr)
    }

    /// The credit of `addr` (see [`Held`]), taken out to answer a datagram from it.
    pub fn take_credit(&mut self, addr: SocketAddr) -> usize {
        self.index
            .held
            .get_mut(&addr)
            .map_or(0, |h| std::mem::take(&mut h.credit))
    }

    /// What is left of the budget of a datagram from `addr` becomes its credit, if a
    /// request is pending with it (its, waiting for our answer, or ours, for its).
    pub fn give_credit(&mut self, addr: SocketAddr, bytes: usize) {
        if let Some(h) = self.index.held.get_mut(&addr) {
            h.credit = bytes.min(MAX_CREDIT);
        }
    }

    /// The peer whose session (in any state) is at `addr`, if any (the first by id). A
    /// stranger's address, in neither index, costs no walk of the table.
    pub fn peer_at(&self, addr: SocketAddr) -> Option<ClientId> {
        if !self.index.held.contains_key(&addr) && !self.index.proven.contains_key(&addr) {
            // Requests (either way) and connected sessions are indexed by address; a
            // lookup has none, and the one that learns it from a request opens at once.
            return None;
        }
        self.by_peer
            .values()
            .find(|s| s.addr == Some(addr))
            .map(|s| s.peer)
    }

    /// Every session and request, by peer id.
    pub fn info(&self) -> Vec<SessionInfo> {
        self.by_peer
            .values()
            .map(|s| s.info(self.current == Some(s.peer)))
            .collect()
    }

    /// Peers whose connection requests wait for our answer, oldest first.
    pub fn pending_requests(&self) -> Vec<ClientId> {
        let mut v: Vec<(u64, ClientId)> = self
            .by_peer
            .values()
            .filter_map(|s| match s.state {
                State::Incoming { order } => Some((order, s.peer)),
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, p)| p).collect()
    }

    /// Resets sent, and what the send and receive windows dropped or repaired, of the
    /// sessions open now and of those that have ended.
    pub fn stats(&self) -> PeerStats {
        let mut stats = self.stats.clone();
        for s in self.by_peer.values() {
            s.count_into(&mut stats);
        }
        stats.requests_ignored = self.ignored.total();
        stats
    }

    /// Every message sent is acknowledged or given up, every request of ours answered (the
    /// queue's own attempts aside).
    pub fn is_settled(&self) -> bool {
        self.by_peer.values().all(|s| match &s.state {
            State::Connected { tx, .. } => tx.is_idle(),
            State::Incoming { .. } => true,
            State::LookingUp { .. } | State::Requesting { .. } => s.auto,
        })
    }

    /// No `Terminate` of ours waits for its acknowledgement.
    pub fn all_closed(&self) -> bool {
        self.closing.is_empty()
    }

    /// The session a file command goes on: with `peer`, or the current peer.
    pub fn file_link(&self, peer: Option<ClientId>) -> Result<Link, CommandError> {
        let peer = peer.or(self.current).ok_or(CommandError::NotConnected)?;
        match self.by_peer.get(&peer) {
            Some(s) if s.is_connected() => Ok(s.link()),
            _ => Err(CommandError::NotConnectedTo(peer)),
        }
    }

    // ------------------------------------------------------------------ commands

    /// Looks `peer` up, unless there is a session with it already.
    pub fn connect(
        &mut self,
        now: Instant,
        peer: ClientId,
        out: &mut Outputs,
    ) -> Result<Connecting, CommandError> {
        match self.by_peer.get_mut(&peer).map(|s| (&s.state, &mut s.auto)) {
            Some((State::Connected { .. }, _)) => return Err(CommandError::AlreadyConnected(peer)),
            Some((State::LookingUp { .. } | State::Requesting { .. }, auto)) if *auto => {
                // The queue was already trying: from now on the user sees how it goes.
                *auto = false;
                return Ok(Connecting::Started);
            }
            Some((State::LookingUp { .. } | State::Requesting { .. }, _)) => {
                return Err(CommandError::AlreadyConnecting(peer))
            }
            Some((State::Incoming { .. }, _)) => return Ok(Connecting::Incoming),
            None => {}
        }
        let id = self.rng.random::<SessionId>();
        let retry = Retry::first(now + self.cfg.server_retry);
        self.put(Session::new(
            peer,
            id,
            None,
            State::LookingUp { retry },
            now,
        ));
        out.transmit(self.cfg.server, Message::lookup(peer));
        Ok(Connecting::Started)
    }

    /// The attempt to reach `peer` was started by the queue: its failures are not shown.
    pub fn set_auto(&mut self, peer: ClientId) {
        if let Some(s) = self.by_peer.get_mut(&peer) {
            s.auto = true;
        }
    }

    /// Asks `peer`, whose address we know, to connect (there is no session with it).
    pub fn request(
        &mut self,
        now: Instant,
        me: ClientId,
        peer: ClientId,
        addr: SocketAddr,
        auto: bool,
        out: &mut Outputs,
    ) {
        let session = self.rng.random::<SessionId>();
        let retry = Retry::first(now + self.cfg.retry_interval);
        let mut s = Session::new(peer, session, Some(addr), State::Requesting { retry }, now);
        s.auto = auto;
        self.put(s);
        out.transmit(addr, self.cfg.request(me, session));
    }

    /// The request of `peer`, or the oldest request, for `accept` and `reject`.
    pub fn pick_request(&self, peer: Option<ClientId>) -> Result<ClientId, CommandError> {
        match peer {
            Some(p) => match self.by_peer.get(&p).map(|s| &s.state) {
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

    /// Sends our `Accept` of the request of `peer` (then [`Sessions::open`] it).
    pub fn send_accept(&self, me: ClientId, peer: ClientId, out: &mut Outputs) {
        let s = &self.by_peer[&peer];
        let (to, session) = (s.addr.expect("requests have an address"), s.id);
        out.transmit(
            to,
            Message::Accept {
                from: me,
                session,
                hs: Vec::new(),
            },
        );
    }

    /// Rejects the request of `peer` (picked with [`Sessions::pick_request`]).
    pub fn reject(&mut self, now: Instant, me: ClientId, peer: ClientId, out: &mut Outputs) {
        let s = self.take(peer).expect("picked from sessions");
        self.reject_session(now, me, &s, out);
    }

    fn reject_session(&mut self, now: Instant, me: ClientId, s: &Session, out: &mut Outputs) {
        if let Some(to) = s.addr {
            out.transmit(
                to,
                Message::Reject {
                    from: me,
                    session: s.id,
                    hs: Vec::new(),
                },
            );
        }
        let until = now + self.cfg.retry_interval * (self.cfg.connect_tries + 1);
        self.rejected.insert((s.peer, s.id), until);
        self.rejected_order.push_back(((s.peer, s.id), until));
    }

    /// Opens the session with `peer` (which has an address), over `path`.
    pub fn open(&mut self, now: Instant, peer: ClientId, path: Path, out: &mut Outputs) {
        let s = self
            .by_peer
            .get_mut(&peer)
            .expect("opening a present session");
        self.index.remove(s);
        s.open(now, &self.cfg.chat);
        self.index.add(s);
        let addr = s.addr.expect("open sessions have an address");
        self.reschedule(peer);
        self.current = Some(peer);
        out.event(Event::Connected { peer, path, addr });
    }

    // ------------------------------------------------------------------ across NATs

    /// Whether our request to `peer` waits for its answer.
    pub fn is_requesting_peer(&self, peer: ClientId) -> bool {
        self.by_peer
            .get(&peer)
            .is_some_and(|s| matches!(s.state, State::Requesting { .. }))
    }

    /// Whether we look `peer` up (a request follows the answer).
    pub fn is_looking_up(&self, peer: ClientId) -> bool {
        self.by_peer
            .get(&peer)
            .is_some_and(|s| matches!(s.state, State::LookingUp { .. }))
    }

    /// The address of the session with `peer`, if it has one yet.
    pub fn addr_of(&self, peer: ClientId) -> Option<SocketAddr> {
        self.by_peer.get(&peer).and_then(|s| s.addr)
    }

    /// A message from `peer` at `src`, which is not the address of our request to it: the
    /// request moves there if `src` is another port of the same host (a NAT that changes
    /// ports answers from another mapping) or `heard` (a probe with the secret of our
    /// introduction came from it). Other sessions never move.
    pub fn moved(&mut self, peer: ClientId, src: SocketAddr, heard: bool) {
        let Some(s) = self.by_peer.get_mut(&peer) else {
            return;
        };
        let Some(addr) = s.addr else { return };
        let requesting = matches!(s.state, State::Requesting { .. });
        if !requesting || addr == src || !(heard || addr.ip() == src.ip()) {
            return;
        }
        log::debug!("request to {peer} moves from {addr} to {src}");
        self.index.remove(s);
        s.addr = Some(src);
        self.index.add(s);
    }

    /// A valid probe from `peer` came from `src`, for the first time: our request to it
    /// goes there now (and from then on), without waiting for the retry interval.
    pub fn probed(
        &mut self,
        _now: Instant,
        me: ClientId,
        peer: ClientId,
        src: SocketAddr,
        out: &mut Outputs,
    ) {
        self.moved(peer, src, true);
        if let Some(s) = self.by_peer.get(&peer) {
            if matches!(s.state, State::Requesting { .. }) && s.addr == Some(src) {
                out.transmit(src, self.cfg.request(me, s.id));
            }
        }
    }

    /// Nothing got through between us and `peer`, both behind NATs: our request to it (or
    /// our lookup) ends with `NoPath` (quietly, if the queue started it).
    pub fn no_path(&mut self, peer: ClientId, out: &mut Outputs) {
        let asking = self
            .by_peer
            .get(&peer)
            .is_some_and(|s| matches!(s.state, State::Requesting { .. } | State::LookingUp { .. }));
        if !asking {
            return;
        }
        let s = self.take(peer).expect("just seen");
        if !s.auto {
            out.event(Event::NoPath { peer });
        }
    }

    /// The id of the connected session with `peer`.
    pub fn connected_session(&self, peer: ClientId) -> Option<SessionId> {
        self.by_peer
            .get(&peer)
            .filter(|s| matches!(s.state, State::Connected { .. }))
            .map(|s| s.id)
    }

    /// The connected session with `peer` moves to `addr` (a path checked both ways):
    /// everything of it goes there from now on. Its id, if it is connected.
    pub fn migrate(&mut self, peer: ClientId, addr: SocketAddr) -> Option<SessionId> {
        let s = self.by_peer.get_mut(&peer)?;
        if !matches!(s.state, State::Connected { .. }) || s.addr == Some(addr) {
            return None;
        }
        log::debug!("session with {peer} moves from {:?} to {addr}", s.addr);
        self.index.remove(s);
        s.addr = Some(addr);
        self.index.add(s);
        Some(s.id)
    }

    /// The relay the session (or request) with `peer` went through is gone: it ends with
    /// [`EndReason::RelayLost`].
    pub fn relay_lost(&mut self, now: Instant, peer: ClientId, out: &mut Outputs) -> Option<Ended> {
        let connected = self
            .by_peer
            .get(&peer)
            .is_some_and(|s| matches!(s.state, State::Connected { .. } | State::Requesting { .. }));
        if !connected {
            return None;
        }
        let s = self.take(peer)?;
        Some(self.end_with(now, s, EndReason::RelayLost, out))
    }

    /// Makes `peer`, which must be connected, the current peer.
    pub fn switch(&mut self, peer: ClientId) -> Result<ClientId, CommandError> {
        if self.is_connected(peer) {
            self.current = Some(peer);
            Ok(peer)
        } else {
            Err(CommandError::NotConnectedTo(peer))
        }
    }

    /// Queues `text` for `peer` (default: the current peer), in pieces of at most
    /// [`wire::MAX_TEXT`] bytes, with a `Sent` event for each. Returns their numbers.
    pub fn send(
        &mut self,
        peer: Option<ClientId>,
        text: &str,
        out: &mut Outputs,
    ) -> Result<Vec<u64>, CommandError> {
        let peer = match peer.or(self.current) {
            Some(p) => p,
            None => return Err(CommandError::NotConnected),
        };
        let Some(Session {
            state: State::Connected { tx, .. },
            ..
        }) = self.by_peer.get_mut(&peer)
        else {
            return Err(CommandError::NotConnectedTo(peer));
        };
        let mut seqs = Vec::new();
        for piece in split_text(text, wire::MAX_TEXT) {
            let seq = tx.push(piece.to_string());
            seqs.push(seq);
            out.event(Event::Sent {
                peer,
                seq,
                text: piece.to_string(),
            });
        }
        Ok(seqs)
    }

    /// Queues `texts` for `peer` as they are, no event; their numbers, or `None` if
    /// `peer` is not connected.
    pub fn push_all<'a>(
        &mut self,
        peer: ClientId,
        texts: impl IntoIterator<Item = &'a String>,
    ) -> Option<Vec<u64>> {
        let Some(Session {
            state: State::Connected { tx, .. },
            ..
        }) = self.by_peer.get_mut(&peer)
        else {
            return None;
        };
        Some(
            texts
                .into_iter()
                .map(|text| tx.push(text.clone()))
                .collect(),
        )
    }

    /// Ends the session with `peer` (default: the current peer, or the only session), or
    /// withdraws our request, or declines its request.
    pub fn terminate(
        &mut self,
        now: Instant,
        me: ClientId,
        peer: Option<ClientId>,
        out: &mut Outputs,
    ) -> Result<(ClientId, Ended), CommandError> {
        let peer = match peer.or(self.current) {
            Some(p) => p,
            None => {
                // Nothing current: the only thing pending, if there is exactly one.
                let mut all = self.by_peer.keys();
                match (all.next(), all.next()) {
                    (Some(&p), None) => p,
                    _ => return Err(CommandError::NotConnected),
                }
            }
        };
        let Some(mut s) = self.take(peer) else {
            return Err(CommandError::NoSessionWith(peer));
        };
        let ended = self.end_locally(now, me, &mut s, None, out);
        self.refresh_current();
        Ok((peer, ended))
    }

    /// Ends every session (to leave); nothing is current after.
    pub fn end_all(&mut self, now: Instant, me: ClientId, out: &mut Outputs) -> Vec<Ended> {
        let peers: Vec<ClientId> = self.by_peer.keys().copied().collect();
        let ended = self.end_each(now, me, peers, out);
        self.current = None;
        ended
    }

    /// Declines every request waiting for our answer.
    pub fn decline_requests(
        &mut self,
        now: Instant,
        me: ClientId,
        out: &mut Outputs,
    ) -> Vec<Ended> {
        let incoming: Vec<ClientId> = self
            .by_peer
            .values()
            .filter(|s| matches!(s.state, State::Incoming { .. }))
            .map(|s| s.peer)
            .collect();
        self.end_each(now, me, incoming, out)
    }

    fn end_each(
        &mut self,
        now: Instant,
        me: ClientId,
        peers: Vec<ClientId>,
        out: &mut Outputs,
    ) -> Vec<Ended> {
        let mut ended = Vec::with_capacity(peers.len());
        for p in peers {
            let mut s = self.take(p).expect("listed above");
            ended.push(self.end_locally(now, me, &mut s, None, out));
        }
        ended
    }

    /// Ends a session on our side: tells the peer, reports what was not delivered. With
    /// `reason`, the end is shown now; without, once the peer acknowledges the Terminate.
    fn end_locally(
        &mut self,
        now: Instant,
        me: ClientId,
        s: &mut Session,
        reason: Option<EndReason>,
        out: &mut Outputs,
    ) -> Ended {
        self.absorb_stats(s);
        let ended = Ended {
            peer: s.peer,
            session: s.id,
            reason: reason.unwrap_or(EndReason::ByUs),
        };
        match &mut s.state {
            State::Connected { tx, .. } => {
                let period = tx.rtt().rto().min(self.cfg.retry_interval);
                for seq in tx.abandon() {
                    out.event(Event::Undelivered { peer: s.peer, seq });
                }
                if let Some(reason) = reason {
                    out.event(Event::Terminated {
                        peer: s.peer,
                        reason,
                    });
                }
                let addr = s.addr.expect("connected sessions have an address");
                self.start_closing(now, me, s, addr, period, reason.is_none(), out);
            }
            State::Requesting { .. } => {
                // The queue's own attempts end quietly: the user never started them.
                if !s.auto {
                    out.event(Event::Terminated {
                        peer: s.peer,
                        reason: EndReason::Cancelled,
                    });
                }
                // No Terminate: before the peer's Accept there are no keys to seal one
                // with, and one in clear would be believed by no one. The peer drops the
                // request when it is not heard again (`request_lifetime`).
            }
            State::LookingUp { .. } if s.auto => {}
            State::LookingUp { .. } => out.event(Event::Terminated {
                peer: s.peer,
                reason: EndReason::Cancelled,
            }),
            State::Incoming { .. } => self.reject_session(now, me, s, out),
        }
        ended
    }

    /// Keeps the counters of a session that is going away.
    fn absorb_stats(&mut self, s: &Session) {
        s.count_into(&mut self.stats);
    }

    #[allow(clippy::too_many_arguments)]
    fn start_closing(
        &mut self,
        now: Instant,
        me: ClientId,
        s: &Session,
        addr: SocketAddr,
        period: Duration,
        announce: bool,
        out: &mut Outputs,
    ) {
        out.transmit(
            addr,
            Message::Terminate {
                from: me,
                session: s.id,
            },
        );
        let proven = s.is_connected();
        let retry = Retry::first(now + period);
        let mut closing = Closing {
            peer: s.peer,
            addr,
            retry,
            period,
            announce,
            proven,
            scheduled: None,
        };
        if proven {
            self.index.prove(addr);
        }
        let key = Timer::Closing(s.id);
        if let Some(mut old) = self.closing.remove(&s.id) {
            if old.proven {
                self.index.unprove(old.addr);
            }
            self.timers.set(key, &mut old.scheduled, None);
        }
        self.timers
            .set(key, &mut closing.scheduled, Some(retry.next()));
        self.closing.insert(s.id, closing);
    }

    // ------------------------------------------------------------------ the table

    /// Adds a session (there is none with its peer).
    fn put(&mut self, s: Session) {
        let peer = s.peer;
        self.take(peer);
        self.index.add(&s);
        self.by_peer.insert(peer, s);
        self.reschedule(peer);
    }

    /// Removes the session with `peer`.
    fn take(&mut self, peer: ClientId) -> Option<Session> {
        let mut s = self.by_peer.remove(&peer)?;
        self.index.remove(&s);
        self.timers
            .set(Timer::Session(peer), &mut s.scheduled, None);
        Some(s)
    }

    /// A session the peer ended (or that went silent): if it was connected, its address
    /// stays proven for as long as the peer may resend its `Terminate` (its tries, at most a
    /// retry interval apart), so that our `TerminateAck` to a resend, which is 3 bytes
    /// longer, is not withheld.
    fn retire(&mut self, now: Instant, s: &Session) {
        if let (true, Some(addr)) = (s.is_connected(), s.addr) {
            let until = now + self.cfg.retry_interval * self.cfg.terminate_tries;
            self.index.prove(addr);
            self.index.retired.push_back((addr, until));
        }
    }

    /// Sets the deadline of the session with `peer` (none if it is gone) from its state:
    /// called after whatever may change it.
    fn reschedule(&mut self, peer: ClientId) {
        if let Some(s) = self.by_peer.get_mut(&peer) {
            let when = s.poll_timeout(&self.cfg);
            self.timers
                .set(Timer::Session(peer), &mut s.scheduled, when);
        }
    }

    fn refresh_current(&mut self) {
        let still = self.current.is_some_and(|p| self.is_connected(p));
        if !still {
            self.current = self.connected_peers().last().copied();
        }
    }

    // ------------------------------------------------------------------ from the server

    /// The server says where `peer`, which we look up, is: ask it. False if we were not
    /// looking it up.
    pub fn found(
        &mut self,
        now: Instant,
        me: ClientId,
        peer: ClientId,
        addr: SocketAddr,
        out: &mut Outputs,
    ) -> bool {
        let retry = Retry::first(now + self.cfg.retry_interval);
        match self.by_peer.get_mut(&peer) {
            Some(s) if matches!(s.state, State::LookingUp { .. }) => {
                self.index.remove(s);
                s.addr = Some(addr);
                s.state = State::Requesting { retry };
                self.index.add(s);
                out.transmit(addr, self.cfg.request(me, s.id));
                self.reschedule(peer);
                true
            }
            _ => false,
        }
    }

    /// The server has no client `peer`, which we look up: the attempt ends (shown unless
    /// the queue started it). False if we were not looking it up.
    pub fn inactive(&mut self, peer: ClientId, out: &mut Outputs) -> bool {
        match self.by_peer.get(&peer) {
            Some(s) if matches!(s.state, State::LookingUp { .. }) => {
                let s = self.take(peer).expect("just seen");
                if !s.auto {
                    out.event(Event::Inactive { peer });
                }
                true
            }
            _ => false,
        }
    }

    // ------------------------------------------------------------------ from peers

    /// Whether the session `session` with `peer` is still held: open, asked, being closed,
    /// or rejected lately (so that its keys are kept: secure.rs).
    pub fn knows(&self, peer: ClientId, session: SessionId) -> bool {
        self.by_peer.get(&peer).is_some_and(|s| s.id == session)
            || self.closing.get(&session).is_some_and(|c| c.peer == peer)
            || self.rejected.contains_key(&(peer, session))
    }

    /// The peer we ask to connect with session `session` (or have asked: the request of
    /// ours a simultaneous open made obsolete).
    pub fn requested_peer(&self, session: SessionId) -> Option<ClientId> {
        self.by_peer
            .values()
            .find(|s| s.id == session && matches!(s.state, State::Requesting { .. }))
            .map(|s| s.peer)
            .or_else(|| self.closing.get(&session).map(|c| c.peer))
    }

    /// Drops our attempt to reach `peer` (its key is not the one pinned), quietly: the
    /// caller tells the user why.
    pub fn abandon(&mut self, peer: ClientId) {
        if matches!(
            self.by_peer.get(&peer).map(|s| &s.state),
            Some(State::LookingUp { .. } | State::Requesting { .. })
        ) {
            self.take(peer);
        }
    }

    /// Whether a message from `from` at `src` for `session` matches our request to it.
    pub fn is_requesting(&self, from: ClientId, src: SocketAddr, session: SessionId) -> bool {
        self.matches(from, src, session, |st| {
            matches!(st, State::Requesting { .. })
        })
    }

    /// A `ConnectRequest` whose sender is proved (secure.rs). `finishing`: we decline
    /// every request. `fresh`: a handshake never seen before, newer than any earlier one
    /// of the same key (not a resend).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_request(
        &mut self,
        now: Instant,
        me: ClientId,
        src: SocketAddr,
        from: ClientId,
        session: SessionId,
        finishing: bool,
        fresh: bool,
        out: &mut Outputs,
    ) -> Requested {
        let msg = Message::ConnectRequest {
            from,
            session,
            hs: Vec::new(),
        };
        if from == me {
            out.ignore(src, &msg);
            return Requested::Nothing;
        }
        // Our Reject was lost (the same answer again), or we are leaving and decline all.
        if finishing || self.rejected.contains_key(&(from, session)) {
            out.transmit(
                src,
                Message::Reject {
                    from: me,
                    session,
                    hs: Vec::new(),
                },
            );
            return Requested::Nothing;
        }
        let Some(s) = self.by_peer.get_mut(&from) else {
            self.incoming(now, src, from, session, out);
            return Requested::Nothing;
        };
        let same_addr = s.addr == Some(src);
        match &s.state {
            State::Incoming { .. } if same_addr => {
                // A resend: not shown again. The newest request of the peer is the one we
                // will answer.
                s.last_heard = now;
                s.id = session;
                self.reschedule(from);
            }
            State::Connected { .. } if s.id == session && same_addr => {
                // Our Accept was lost.
                s.last_heard = now;
                out.transmit(
                    src,
                    Message::Accept {
                        from: me,
                        session,
                        hs: Vec::new(),
                    },
                );
                self.reschedule(from);
            }
            State::Connected { .. } if same_addr && fresh && s.id != session => {
                // The peer forgot the old session (restarted, or ended it without our
                // hearing) and asks anew: its handshake is newer than any we saw from its
                // key, so it is no replay and no leftover of a simultaneous open (whose
                // request we saw before the session opened). A request past the bounds
                // is ignored: the session it would end stays.
                if !self.can_hold(src) {
                    self.ignore_request(now, src, &msg);
                    return Requested::Nothing;
                }
                let old = self.take(from).expect("present");
                let ended = self.end_with(now, old, EndReason::Replaced, out);
                self.incoming(now, src, from, session, out);
                return Requested::Replaced(ended);
            }
            State::Requesting { .. } if same_addr && session < s.id => {
                // Both asked at once: the smaller session id wins, and we wanted this.
                s.id = session;
                out.transmit(
                    src,
                    Message::Accept {
                        from: me,
                        session,
                        hs: Vec::new(),
                    },
                );
                return Requested::Open;
            }
            State::LookingUp { .. } => {
                // We were about to ask it ourselves.
                s.id = session;
                s.addr = Some(src);
                out.transmit(
                    src,
                    Message::Accept {
                        from: me,
                        session,
                        hs: Vec::new(),
                    },
                );
                return Requested::Open;
            }
            _ => out.ignore(src, &msg),
        }
        Requested::Nothing
    }

    /// A new request of `from`, held for our person's answer unless past the bounds.
    fn incoming(
        &mut self,
        now: Instant,
        src: SocketAddr,
        from: ClientId,
        session: SessionId,
        out: &mut Outputs,
    ) {
        if !self.can_hold(src) {
            let msg = Message::ConnectRequest {
                from,
                session,
                hs: Vec::new(),
            };
            self.ignore_request(now, src, &msg);
            return;
        }
        self.next_order += 1;
        let state = State::Incoming {
            order: self.next_order,
        };
        self.put(Session::new(from, session, Some(src), state, now));
        out.event(Event::Request { from });
    }

    /// Whether one more request from `src` may wait for our answer.
    fn can_hold(&self, src: SocketAddr) -> bool {
        let from_source = self
            .index
            .by_source
            .get(&source(src.ip()))
            .copied()
            .unwrap_or(0);
        self.index.incoming < self.cfg.max_requests
            && (from_source as usize) < self.cfg.max_requests_per_source
    }

    /// A request past the bounds: no answer, no line of its own; counted, and shown in
    /// the next `RequestsIgnored`.
    fn ignore_request(&mut self, now: Instant, src: SocketAddr, msg: &Message) {
        self.ignored.add(now);
        log::debug!("{src}: too many requests waiting for an answer; ignored {msg:?}");
    }

    /// A `Reject` of our request: true if it matched (the request is over).
    pub fn handle_reject(
        &mut self,
        from: ClientId,
        src: SocketAddr,
        session: SessionId,
        out: &mut Outputs,
    ) -> bool {
        if !self.is_requesting(from, src, session) {
            return false;
        }
        self.take(from);
        out.event(Event::Rejected { peer: from });
        true
    }

    /// A `Terminate` (always acknowledged: our earlier `TerminateAck` may have been lost).
    pub fn handle_terminate(
        &mut self,
        now: Instant,
        me: ClientId,
        src: SocketAddr,
        from: ClientId,
        session: SessionId,
        out: &mut Outputs,
    ) -> Terminated {
        out.transmit(src, Message::TerminateAck { from: me, session });
        if self.matches(from, src, session, |_| true) {
            let s = self.take(from).expect("matched");
            let reason = match s.state {
                State::Incoming { .. } | State::LookingUp { .. } => EndReason::Cancelled,
                _ => EndReason::ByPeer,
            };
            Terminated::Session(self.end_with(now, s, reason, out))
        } else if self.closing_matches(from, src, session) {
            // Both ended it at once.
            self.closed(session, EndReason::ByUs, out);
            Terminated::Closing
        } else {
            out.ignore(src, &Message::Terminate { from, session });
            Terminated::Nothing
        }
    }

    /// A `TerminateAck`: true if it settled a `Terminate` of ours.
    pub fn handle_terminate_ack(
        &mut self,
        src: SocketAddr,
        from: ClientId,
        session: SessionId,
        out: &mut Outputs,
    ) -> bool {
        if self.closing_matches(from, src, session) {
            self.closed(session, EndReason::ByUs, out);
            true
        } else {
            out.ignore(src, &Message::TerminateAck { from, session });
            false
        }
    }

    /// A message on an open session: `Chat`, `Ack`, `Ping`, `Pong`, or one of a file
    /// transfer, which comes back with the session's [`Link`] for the transfers. The
    /// session's deadline is not set again here: [`Sessions::flush`], which the owning peer
    /// calls after every input, does it for every connected session.
    pub fn handle_traffic(
        &mut self,
        now: Instant,
        me: ClientId,
        src: SocketAddr,
        msg: Message,
        out: &mut Outputs,
    ) -> Option<(Link, Message)> {
        match msg {
            Message::Chat {
                from,
                session,
                seq,
                text,
            } => {
                let Some(s) = Self::connected_mut(&mut self.by_peer, from, src, session) else {
                    let msg = Message::Chat {
                        from,
                        session,
                        seq,
                        text,
                    };
                    self.unknown_session(me, src, session, &msg, out);
                    return None;
                };
                // Its deadline is set again by `flush`, which follows every datagram.
                s.receive_chat(now, me, src, seq, text, out);
            }
            Message::Ack {
                from,
                session,
                seq,
                cumulative,
            } => {
                let Some(s) = Self::connected_mut(&mut self.by_peer, from, src, session) else {
                    self.unknown_session(me, src, session, &msg, out);
                    return None;
                };
                s.receive_ack(now, seq, cumulative, out);
            }
            Message::Ping { from, session } => {
                let Some(s) = Self::connected_mut(&mut self.by_peer, from, src, session) else {
                    self.unknown_session(me, src, session, &msg, out);
                    return None;
                };
                s.last_heard = now;
                s.last_sent = now;
                out.transmit(src, Message::Pong { from: me, session });
            }
            Message::Pong { from, session } => {
                match Self::connected_mut(&mut self.by_peer, from, src, session) {
                    Some(s) => s.last_heard = now,
                    None => out.ignore(src, &msg),
                }
            }
            // ---- file transfer (files.rs) ----
            other => match super::files::route(&other) {
                Some((from, session)) => {
                    match Self::connected_mut(&mut self.by_peer, from, src, session) {
                        Some(s) => {
                            s.last_heard = now;
                            return Some((s.link(), other));
                        }
                        None => self.unknown_session(me, src, session, &other, out),
                    }
                }
                None => out.ignore(src, &other),
            },
        }
        None
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
        self.by_peer
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
        sessions
            .get_mut(&from)
            .filter(|s| s.id == session && s.addr == Some(src) && s.is_connected())
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
        out: &mut Outputs,
    ) {
        out.ignore(src, msg);
        if !self.closing.contains_key(&session) {
            self.stats.resets += 1;
        }
        out.transmit(src, Message::Terminate { from: me, session });
    }

    /// Drops a session the peer ended or that died: reports what was not delivered.
    fn end_with(
        &mut self,
        now: Instant,
        mut s: Session,
        reason: EndReason,
        out: &mut Outputs,
    ) -> Ended {
        self.absorb_stats(&s);
        self.retire(now, &s);
        if let State::Connected { tx, .. } = &mut s.state {
            for seq in tx.abandon() {
                out.event(Event::Undelivered { peer: s.peer, seq });
            }
        }
        out.event(Event::Terminated {
            peer: s.peer,
            reason,
        });
        self.refresh_current();
        Ended {
            peer: s.peer,
            session: s.id,
            reason,
        }
    }

    fn closed(&mut self, session: SessionId, reason: EndReason, out: &mut Outputs) {
        if let Some(mut c) = self.closing.remove(&session) {
            self.timers
                .set(Timer::Closing(session), &mut c.scheduled, None);
            if c.proven {
                self.index.unprove(c.addr);
            }
            if c.announce {
                out.event(Event::Terminated {
                    peer: c.peer,
                    reason,
                });
            }
        }
    }

    // ------------------------------------------------------------------ timers and output

    /// The soonest deadline of a session, a `Terminate` or the count of ignored requests.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retired = self.index.retired.front().map(|&(_, until)| until);
        [self.timers.next(), self.ignored.poll_timeout(), retired]
            .into_iter()
            .flatten()
            .min()
    }

    /// Resends, pings, timeouts of sessions and of our `Terminate`s, and the expiry of the
    /// requests we rejected: only those that are due. Returns the sessions that ended. `me`
    /// is `None` only before we ever registered, when there are no sessions.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        me: Option<ClientId>,
        out: &mut Outputs,
    ) -> Vec<Ended> {
        let mut ended = Vec::new();
        for (when, timer) in self.timers.due(now) {
            match timer {
                Timer::Session(p) if self.by_peer.contains_key(&p) => {
                    if let Some(me) = me {
                        ended.extend(self.session_timers(now, me, p, out));
                    }
                    self.reschedule(p);
                }
                Timer::Closing(session) if self.closing.contains_key(&session) => {
                    self.closing_timer(now, me, session, out)
                }
                orphan => {
                    debug_assert!(false, "a deadline without its owner: {orphan:?}");
                    self.timers.orphan(when, orphan);
                }
            }
        }
        while let Some(&(addr, until)) = self.index.retired.front() {
            if until > now {
                break;
            }
            self.index.retired.pop_front();
            self.index.unprove(addr);
        }
        while let Some(&(key, until)) = self.rejected_order.front() {
            if until > now {
                break;
            }
            self.rejected_order.pop_front();
            if self.rejected.get(&key) == Some(&until) {
                self.rejected.remove(&key);
            }
        }
        if let Some(count) = self.ignored.take_due(now) {
            out.event(Event::RequestsIgnored { count });
        }
        ended
    }

    /// Our `Terminate` of `session` is due: resent, or given up.
    fn closing_timer(
        &mut self,
        now: Instant,
        me: Option<ClientId>,
        session: SessionId,
        out: &mut Outputs,
    ) {
        let max = self.cfg.terminate_tries;
        let cap = self.cfg.retry_interval;
        let Some(c) = self.closing.get_mut(&session) else {
            return;
        };
        match c.retry.poll_doubling(now, max, &mut c.period, cap) {
            Some(Step::GiveUp) => return self.closed(session, EndReason::Unanswered, out),
            Some(Step::Resend) => {
                let from = me.unwrap_or_default();
                out.transmit(c.addr, Message::Terminate { from, session });
            }
            None => {}
        }
        let next = c.retry.next();
        self.timers
            .set(Timer::Closing(session), &mut c.scheduled, Some(next));
    }

    fn session_timers(
        &mut self,
        now: Instant,
        me: ClientId,
        peer: ClientId,
        out: &mut Outputs,
    ) -> Option<Ended> {
        let s = self.by_peer.get_mut(&peer)?;
        match s.handle_timeout(now, me, &self.cfg, out) {
            Due::Nothing => None,
            Due::GaveUp(event) => {
                // An attempt the queue started fails quietly: the queue tries again later.
                let auto = self.take(peer).is_some_and(|s| s.auto);
                if !auto {
                    out.event(event);
                }
                None
            }
            Due::Silent => {
                let s = self.take(peer).expect("present");
                Some(self.end_with(now, s, EndReason::PeerSilent, out))
            }
            Due::Broken => {
                let mut s = self.take(peer).expect("present");
                let why = Some(EndReason::Undeliverable);
                let ended = self.end_locally(now, me, &mut s, why, out);
                self.refresh_current();
                Some(ended)
            }
        }
    }

    /// Queues every chat message the send windows want to send now (only connected
    /// sessions have any), and sets their deadlines again.
    pub fn flush(&mut self, now: Instant, me: ClientId, out: &mut Outputs) {
        for peer in &self.index.connected {
            let Some(s) = self.by_peer.get_mut(peer) else {
                continue;
            };
            s.flush(now, me, out);
            let when = s.poll_timeout(&self.cfg);
            self.timers
                .set(Timer::Session(*peer), &mut s.scheduled, when);
        }
    }
}
