//! The rendezvous server's state machine: the table of active clients.
//!
//! [`Registry`] never touches a socket or reads the clock. The driver feeds it datagrams
//! ([`Registry::handle_datagram`]) and timer expiries ([`Registry::handle_timeout`]) with the
//! current time, then drains its outputs: answers to send ([`Registry::poll_transmit`]), changes
//! to the table to print ([`Registry::poll_event`]) and the next time it must be woken
//! ([`Registry::poll_timeout`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::debug;
use rand::{Rng, SeedableRng};

use crate::identity::Identity;
use crate::wire::{
    self, ClientId, DecodeError, ErrorCode, Key, Listed, Message, Nonce, Token, Transmit,
};

mod introductions;
pub mod limits;
pub mod turn;

pub use introductions::usable_candidate;
use limits::{Limiter, Verdict};
pub use limits::{Limits, Prefix};

/// Settings of a [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// An entry not heard from for this long is removed.
    pub ttl: Duration,
    /// Registrations beyond this many active clients are refused with `ServerFull`.
    pub max_clients: usize,
    /// New registrations allowed per second from one network prefix (IPv4 /24, IPv6 /56),
    /// on average (a token bucket, fair to addresses that retry: see [`Limits`]); 0 means no
    /// limit per source (nor [`Limits::max_per_prefix`]). Retransmitted registrations do
    /// not count.
    pub register_rate: f64,
    /// How many new registrations one prefix may make at once before the rate applies (the
    /// bucket's size).
    pub register_burst: u32,
    /// Whether registered clients may ask who is online (`List`); `false` answers every
    /// `List` with `ListDisabled` (`p2pchat server --no-list`).
    pub list: bool,
    /// A TURN server and the secret shared with it (`p2pchat server --turn ...
    /// --turn-secret-file ...`): `Registered` then hands each client short-lived
    /// credentials for it (see [`turn`]).
    pub turn: Option<turn::TurnSecret>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            ttl: Duration::from_secs(30),
            max_clients: 100_000,
            register_rate: 20.0,
            register_burst: 200,
            list: true,
            turn: None,
        }
    }
}

/// The server handles at most this many messages of one datagram and drops the rest, so
/// that its answers to one datagram stay within a small multiple of the datagram's size.
pub const MAX_MESSAGES_PER_DATAGRAM: usize = 8;

/// One active client, as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: ClientId,
    pub addr: SocketAddr,
    pub token: Token,
    /// The static public key the client registered with.
    pub key: Key,
    pub joined: Instant,
    pub last_seen: Instant,
    /// The name the client claimed, as it spelled it.
    pub name: Option<String>,
    pub display_name: Option<String>,
}

/// A claimed name, kept beside the table (most clients have none, and pay nothing for it).
#[derive(Debug, Clone)]
struct Name {
    /// As the client spelled it (the index is by its ASCII-lowercase form).
    name: Box<str>,
    display_name: Option<Box<str>>,
}

/// How a client is stored: 96 bytes, times in nanoseconds since the table's epoch.
#[derive(Debug, Clone, Copy)]
struct Record {
    addr: SocketAddr,
    token: Token,
    key: Key,
    joined: u64,
    last_seen: u64,
    id: ClientId,
    /// Tells this registration from an earlier one of the same id in the expiry queue.
    serial: u32,
}

/// The active clients: records in a dense vector, found by id or by address in O(1) (the
/// cost of a lookup does not grow with the table), and their ids in order, so that a `List`
/// page costs the clients it lists whatever gaps the ids have.
#[derive(Debug, Default)]
struct Table {
    epoch: Option<Instant>,
    records: Vec<Record>,
    by_id: IdIndex,
    by_addr: HashMap<SocketAddr, u32>,
    /// The ids of the records, in order.
    ids: BTreeSet<ClientId>,
}

/// Where each id's record is. Ids are handed out lowest first, so they stay dense: those
/// below a bound that grows with the table are found by indexing a vector (one memory
/// access, with no hashing, however big the table); the few far above it (ids a client
/// asked for) are in a map.
#[derive(Debug, Default)]
struct IdIndex {
    /// `dense[id]` is the record's position, or `ABSENT`.
    dense: Vec<u32>,
    /// Ids at or above `dense.len()`, ordered so that `List` can page through them.
    sparse: BTreeMap<ClientId, u32>,
}

const ABSENT: u32 = u32::MAX;

impl IdIndex {
    fn get(&self, id: ClientId) -> Option<u32> {
        match self.dense.get(id as usize) {
            Some(&i) => (i != ABSENT).then_some(i),
            None => self.sparse.get(&id).copied(),
        }
    }

    /// Sets the position of `id`; `clients` is how many the table holds, which bounds how
    /// far the dense part may grow.
    fn set(&mut self, id: ClientId, position: u32, clients: usize) {
        let id_index = id as usize;
        if id_index >= self.dense.len() && id_index < 2 * clients + 1024 {
            // Grow the dense part past `id` (doubling, so growth costs O(1) per id), and
            // move the ids it now covers out of the map.
            let len = (id_index + 1).max(2 * self.dense.len());
            self.dense.resize(len, ABSENT);
            let dense = &mut self.dense;
            self.sparse
                .retain(|&id, &mut i| match dense.get_mut(id as usize) {
                    Some(slot) => {
                        *slot = i;
                        false
                    }
                    None => true,
                });
        }
        match self.dense.get_mut(id_index) {
            Some(slot) => *slot = position,
            None => {
                self.sparse.insert(id, position);
            }
        }
    }

    fn remove(&mut self, id: ClientId) -> Option<u32> {
        match self.dense.get_mut(id as usize) {
            Some(slot) => {
                let i = std::mem::replace(slot, ABSENT);
                (i != ABSENT).then_some(i)
            }
            None => self.sparse.remove(&id),
        }
    }
}

impl Table {
    /// `t` as nanoseconds since the epoch (the first time the table was given).
    fn nanos(&mut self, t: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(t);
        u64::try_from(t.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant(&self, nanos: u64) -> Instant {
        let epoch = self.epoch.expect("a table with records has an epoch");
        epoch + Duration::from_nanos(nanos)
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn contains(&self, id: ClientId) -> bool {
        self.by_id.get(id).is_some()
    }

    fn get(&self, id: ClientId) -> Option<&Record> {
        self.by_id.get(id).map(|i| &self.records[i as usize])
    }

    fn at_addr(&self, addr: &SocketAddr) -> Option<&Record> {
        self.by_addr.get(addr).map(|&i| &self.records[i as usize])
    }

    fn at_addr_mut(&mut self, addr: &SocketAddr) -> Option<&mut Record> {
        self.by_addr
            .get(addr)
            .map(|&i| &mut self.records[i as usize])
    }

    fn insert(&mut self, r: Record) {
        let i = u32::try_from(self.records.len()).expect("fewer than 2^32 clients");
        self.by_id.set(r.id, i, self.records.len() + 1);
        self.by_addr.insert(r.addr, i);
        self.ids.insert(r.id);
        self.records.push(r);
    }

    fn remove(&mut self, id: ClientId) -> Option<Record> {
        let i = self.by_id.remove(id)?;
        let r = self.records.swap_remove(i as usize);
        self.by_addr.remove(&r.addr);
        self.ids.remove(&id);
        // The last record moved into the hole.
        if let Some(moved) = self.records.get(i as usize) {
            self.by_id.set(moved.id, i, self.records.len());
            self.by_addr.insert(moved.addr, i);
        }
        Some(r)
    }

    fn entry(&self, r: &Record, name: Option<&Name>) -> Entry {
        Entry {
            id: r.id,
            addr: r.addr,
            token: r.token,
            key: r.key,
            joined: self.instant(r.joined),
            last_seen: self.instant(r.last_seen),
            name: name.map(|n| n.name.to_string()),
            display_name: name.and_then(|n| n.display_name.as_deref().map(str::to_string)),
        }
    }
}

/// A change to the table, for the driver to print. A client that leaves carries the name it
/// had, if any, since its entry is gone by the time the event is printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableEvent {
    Joined {
        id: ClientId,
        addr: SocketAddr,
    },
    /// The client claimed `name` (a first name, another one, or a new display name).
    Named {
        id: ClientId,
        addr: SocketAddr,
        name: String,
        display_name: Option<String>,
    },
    Left {
        id: ClientId,
        addr: SocketAddr,
        name: Option<String>,
    },
    Expired {
        id: ClientId,
        addr: SocketAddr,
        name: Option<String>,
    },
    /// Removed because client `by`, the next run of the same client (it proved it with this
    /// entry's token), claimed its name.
    Replaced {
        id: ClientId,
        addr: SocketAddr,
        name: String,
        by: ClientId,
    },
}

/// Counters of what the registry has seen; dropped datagrams are counted here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams handed to [`Registry::handle_datagram`].
    pub datagrams: u64,
    /// Not p2pchat at all: bad magic, too short, too large.
    pub garbage: u64,
    /// Right magic, other protocol version.
    pub bad_version: u64,
    /// Right header, undecodable body.
    pub malformed: u64,
    /// Decodable, but not something a server answers (peer-to-peer messages, answers).
    pub unexpected: u64,
    /// `Leave`, `Keepalive`, `Claim` or `List` that matched no registration (forged, stale,
    /// or after a restart).
    pub refused: u64,
    /// `Claim`s refused because the name was taken (`NameTaken`) or broke the rules
    /// (`BadName`).
    pub claims_refused: u64,
    /// `List` pages sent.
    pub list_pages: u64,
    /// Clients looked at to build the `List` pages: at most one more than each page lists,
    /// whatever gaps the ids have.
    pub list_examined: u64,
    /// `List` requests left unanswered because their client went over its `List` rate.
    pub list_limited: u64,
    /// New registrations refused because their source went over its rate.
    pub rate_limited: u64,
    /// New registrations refused because their prefix held `max_per_prefix` clients.
    pub prefix_full: u64,
    /// Messages dropped because their datagram packed more than
    /// [`MAX_MESSAGES_PER_DATAGRAM`].
    pub excess: u64,
    /// Answers not sent because they would have made the answers to a datagram from an
    /// address that has not proved it receives larger than that datagram.
    pub unsent_larger: u64,
}

/// What the answers to the message being handled are bound by: they go to `to`, echo
/// `nonce`, and, unless the message proved its sender receives (its token matches the
/// registration at its address), spend `budget`, the bytes left of the datagram it came in.
#[derive(Debug, Clone, Copy)]
struct Answering {
    to: SocketAddr,
    nonce: Nonce,
    /// `None`: no bound (a proven sender, or a message handed over without its datagram).
    budget: Option<usize>,
}

/// A departure remembered for a while, so that a repeated `Leave` gets its `LeaveAck` again.
#[derive(Debug, Clone, Copy)]
struct Departure {
    addr: SocketAddr,
    id: ClientId,
    token: Token,
    at: Instant,
}

/// The rendezvous server's table and rules. See the module documentation.
pub struct Registry {
    config: RegistryConfig,
    clients: Table,
    /// The claimed names, by id and by ASCII-lowercase name. Only named clients have
    /// entries here.
    names: HashMap<ClientId, Name>,
    by_name: HashMap<Box<str>, ClientId>,
    /// Ids below `next_id` that were freed; the lowest free id is the smaller of the first of
    /// these and `next_id`.
    free_ids: BTreeSet<ClientId>,
    next_id: ClientId,
    /// (deadline in the table's nanoseconds, id, serial): a lazy expiry queue. An item may
    /// be stale (the entry was refreshed, or replaced); it is checked against the entry when
    /// it comes due.
    expiry: BinaryHeap<Reverse<(u64, ClientId, u32)>>,
    serial: u32,
    departed: HashMap<SocketAddr, Departure>,
    limits: Limits,
    limiter: Limiter,
    departed_order: VecDeque<SocketAddr>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TableEvent>,
    stats: Stats,
    rng: rand::rngs::StdRng,
    /// The message being handled, while it is (see [`Answering`]).
    answering: Option<Answering>,
    /// Candidates and introductions, for hole punching (registry/introductions.rs).
    intro: introductions::Introductions,
    /// The server's static key for this run: `Claim` proofs are made to it.
    identity: Identity,
}

impl Registry {
    /// A registry whose tokens come from the operating system's randomness.
    pub fn new(config: RegistryConfig) -> Self {
        Self::with_rng(config, rand::rngs::StdRng::from_os_rng())
    }

    /// A registry whose tokens come from `seed`, for reproducible tests.
    pub fn with_seed(config: RegistryConfig, seed: u64) -> Self {
        Self::with_rng(config, rand::rngs::StdRng::seed_from_u64(seed))
    }

    fn with_rng(config: RegistryConfig, mut rng: rand::rngs::StdRng) -> Self {
        let key = rng.random();
        // The server's static key comes from the same generator (the OS's, but for tests).
        let secret: [u8; 32] = rng.random();
        Registry {
            config,
            clients: Table::default(),
            names: HashMap::new(),
            by_name: HashMap::new(),
            free_ids: BTreeSet::new(),
            next_id: 1,
            expiry: BinaryHeap::new(),
            serial: 0,
            departed: HashMap::new(),
            limits: Limits::default(),
            limiter: Limiter::new(key),
            departed_order: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            rng,
            answering: None,
            intro: introductions::Introductions::default(),
            identity: Identity::from_secret(secret),
        }
    }

    /// The server's static public key for this run (sent in `Registered`).
    pub fn key(&self) -> &Key {
        self.identity.public()
    }

    /// The same registry with other [`Limits`] (give them before the first datagram).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The active clients, in id order (this sorts: it is for printing and tests, not for
    /// a hot path).
    pub fn entries(&self) -> impl ExactSizeIterator<Item = Entry> {
        let mut all: Vec<Entry> = self
            .clients
            .records
            .iter()
            .map(|r| self.clients.entry(r, self.name_of(r.id)))
            .collect();
        all.sort_unstable_by_key(|e| e.id);
        all.into_iter()
    }

    pub fn get(&self, id: ClientId) -> Option<Entry> {
        self.clients
            .get(id)
            .map(|r| self.clients.entry(r, self.name_of(id)))
    }

    /// Whether any client has claimed a name.
    pub fn has_names(&self) -> bool {
        !self.names.is_empty()
    }

    fn name_of(&self, id: ClientId) -> Option<&Name> {
        if self.names.is_empty() {
            return None; // the common case costs no hashing
        }
        self.names.get(&id)
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.len() == 0
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Feeds one received datagram. Undecodable ones are counted and dropped.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.stats.datagrams += 1;
        match wire::decode_all(datagram) {
            Ok(messages) => {
                // Answers go to a source address that may be forged: handling every message
                // of a datagram packed with lookups would turn a small request into many
                // times its size in answers. A client never packs more than a few.
                let excess = messages.len().saturating_sub(MAX_MESSAGES_PER_DATAGRAM);
                if excess > 0 {
                    self.stats.excess += excess as u64;
                    debug!("{from}: {excess} messages past the first {MAX_MESSAGES_PER_DATAGRAM} of a datagram dropped");
                }
                // All the answers to one datagram, together, are no larger than it (unless
                // a message proves its sender receives: see `handle_bounded`).
                let mut budget = datagram.len();
                for msg in messages.into_iter().take(MAX_MESSAGES_PER_DATAGRAM) {
                    budget = self.handle_bounded(now, from, msg, budget);
                }
            }
            Err(DecodeError::BadVersion { found }) => {
                self.stats.bad_version += 1;
                debug!("{from}: protocol version {found}, answering BadVersion if it fits");
                let detail = format!(
                    "this server speaks protocol version {}, not {found}",
                    wire::VERSION
                );
                self.answer_within(from, 0, Some(datagram.len()), |r| {
                    r.send_error(from, ErrorCode::BadVersion, detail)
                });
            }
            Err(e @ DecodeError::Malformed { .. }) => {
                self.stats.malformed += 1;
                debug!("{from}: dropped: {e}");
            }
            Err(e) => {
                self.stats.garbage += 1;
                debug!("{from}: dropped: {e}");
            }
        }
    }

    /// Feeds one decoded message. Its answers echo its nonce; handed over without its
    /// datagram, their size is not bounded (see [`Registry::handle_datagram`]).
    pub fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        let nonce = msg.nonce().unwrap_or(0);
        self.answer_within(from, nonce, None, |r| r.dispatch(now, from, msg));
    }

    /// One message of a datagram, whose answers may spend `budget` bytes unless the message
    /// proves its sender receives: a token that matches the registration at `from` was
    /// learnt from our `Registered`, sent to that address. Returns the budget left.
    fn handle_bounded(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: Message,
        budget: usize,
    ) -> usize {
        let proven = match msg {
            Message::Keepalive { id, token, .. }
            | Message::Leave { id, token, .. }
            | Message::Claim { id, token, .. }
            | Message::List { id, token, .. } => self.owns(from, id, token),
            _ => false,
        };
        let (nonce, bound) = (msg.nonce().unwrap_or(0), (!proven).then_some(budget));
        self.answer_within(from, nonce, bound, |r| r.dispatch(now, from, msg))
            .unwrap_or(budget)
    }

    /// Runs `handle` with its answers to `to` echoing `nonce` and spending `budget` (see
    /// [`Answering`]); returns the budget left.
    fn answer_within(
        &mut self,
        to: SocketAddr,
        nonce: Nonce,
        budget: Option<usize>,
        handle: impl FnOnce(&mut Self),
    ) -> Option<usize> {
        self.answering = Some(Answering { to, nonce, budget });
        handle(self);
        self.answering.take().and_then(|a| a.budget)
    }

    fn dispatch(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        // Any message from a registered address shows the client is alive; but for a
        // `Register`, which may come from another client (another key) now bound there.
        let t = self.clients.nanos(now);
        if !matches!(msg, Message::Register { .. }) {
            if let Some(r) = self.clients.at_addr_mut(&from) {
                r.last_seen = t;
            }
        }
        match msg {
            Message::Register { want_id, key, .. } => self.register(now, from, want_id, key),
            Message::Lookup { id, .. } => {
                let answer = match self.clients.get(id) {
                    // Without names (the common case) the answer is built right here.
                    Some(r) if self.names.is_empty() => Message::Found {
                        id,
                        addr: r.addr,
                        key: r.key,
                        name: None,
                        display_name: None,
                        nonce: 0,
                    },
                    Some(r) => self.found(r.id, r.addr, r.key),
                    None => Message::Inactive { id, nonce: 0 },
                };
                let found = matches!(answer, Message::Found { .. });
                self.send(from, answer);
                if found {
                    self.introduce(now, from, id);
                }
            }
            Message::Resolve { name, .. } => {
                if let Some(id) = self.resolve(from, name) {
                    self.introduce(now, from, id);
                }
            }
            Message::Claim {
                id,
                token,
                name,
                display_name,
                proof,
                ..
            } => self.claim(from, id, token, name, display_name, proof),
            Message::List {
                id, token, after, ..
            } => self.list(now, from, id, token, after),
            Message::Leave { id, token, .. } => self.leave(now, from, id, token),
            Message::Keepalive {
                id,
                token,
                candidates,
                relay,
                ..
            } => {
                if !self.owns(from, id, token) {
                    self.not_registered(from, id, "keepalive");
                } else {
                    if !candidates.is_empty() {
                        self.intro.set_candidates(id, candidates);
                    }
                    // With a TURN server of our own, only its relayed addresses are
                    // handed on: a client cannot have its peers' requests sent through
                    // their relays to an address of its choosing.
                    let ours = |r: &SocketAddr| {
                        self.config
                            .turn
                            .as_ref()
                            .is_none_or(|t| t.server.ip() == r.ip())
                    };
                    match relay {
                        Some(r) if !ours(&r) => {
                            debug!("client {id}: relayed address {r} is not on our TURN server: not kept")
                        }
                        _ => self.intro.set_relay(id, relay),
                    }
                }
            }
            other => {
                self.stats.unexpected += 1;
                debug!("{from}: dropped unexpected {}", other.name());
            }
        }
    }

    /// Removes the entries whose time to live has run out.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now_ns = self.clients.nanos(now);
        let ttl = self.ttl_nanos();
        while let Some(&Reverse((deadline, id, serial))) = self.expiry.peek() {
            if deadline > now_ns {
                break;
            }
            self.expiry.pop();
            let Some(r) = self.clients.get(id) else {
                continue;
            };
            if r.serial != serial {
                continue; // the id was freed and handed to someone else, who has an item of its own
            }
            let due = r.last_seen.saturating_add(ttl);
            if due > now_ns {
                self.expiry.push(Reverse((due, id, serial)));
                continue;
            }
            let (r, name) = self.remove(id);
            debug!("client {id} at {} expired", r.addr);
            self.events.push_back(TableEvent::Expired {
                id,
                addr: r.addr,
                name: name.map(String::from),
            });
        }
        self.forget_departures(now);
    }

    /// The next time [`Registry::handle_timeout`] has work to do (it may find none).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiry = self
            .expiry
            .peek()
            .map(|Reverse((at, _, _))| self.clients.instant(*at));
        let departure = self
            .departed_order
            .front()
            .and_then(|addr| self.departed.get(addr))
            .map(|d| d.at + self.config.ttl);
        match (expiry, departure) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TableEvent> {
        self.events.pop_front()
    }

    /// Answers `to` with an [`Message::Error`].
    fn send_error(&mut self, to: SocketAddr, code: ErrorCode, detail: impl Into<String>) {
        let detail = detail.into();
        self.send(
            to,
            Message::Error {
                code,
                detail,
                nonce: 0,
            },
        );
    }

    /// Queues an answer: to the sender of the message being handled it echoes that
    /// message's nonce, and it is dropped if it does not fit the datagram's budget.
    fn send(&mut self, to: SocketAddr, mut message: Message) {
        if let Some(a) = self.answering.as_mut().filter(|a| a.to == to) {
            message.set_nonce(a.nonce);
            if let Some(budget) = a.budget.as_mut() {
                let size = wire::encoded_len(&message);
                if size > *budget {
                    self.stats.unsent_larger += 1;
                    debug!("{to}: answer of {size} bytes not sent: {budget} bytes left of what it sent");
                    return;
                }
                *budget -= size;
            }
        }
        self.transmits.push_back(Transmit { to, message });
    }

    fn owns(&self, from: SocketAddr, id: ClientId, token: Token) -> bool {
        self.clients
            .get(id)
            .is_some_and(|r| r.addr == from && r.token == token)
    }

    fn ttl_nanos(&self) -> u64 {
        u64::try_from(self.config.ttl.as_nanos()).unwrap_or(u64::MAX)
    }

    fn register(&mut self, now: Instant, from: SocketAddr, want_id: Option<ClientId>, key: Key) {
        if let Some(r) = self.clients.at_addr(&from) {
            if r.key != key {
                // Another client (another key) at the address of a registration: it may
                // not take that registration over (whoever can forge the address could
                // publish a key of theirs for the id). It waits for the entry to expire,
                // which this Register does not prevent.
                let detail = format!(
                    "{from} is registered with another key until that registration expires (at most {} s)",
                    self.config.ttl.as_secs()
                );
                self.send_error(from, ErrorCode::RateLimited, detail);
                return;
            }
            // A retransmission (our answer was lost), or a client asking for fresh TURN
            // credentials: the same registration again, with a new grant.
            let answer = self.registered(now, r.id, r.token);
            let t = self.clients.nanos(now);
            if let Some(r) = self.clients.at_addr_mut(&from) {
                r.last_seen = t;
            }
            self.send(from, answer);
            return;
        }
        if !self.within_source_limits(now, from) {
            return;
        }
        if self.clients.len() >= self.config.max_clients {
            let detail = format!(
                "server full ({} clients); try again later",
                self.config.max_clients
            );
            self.send_error(from, ErrorCode::ServerFull, detail);
            return;
        }
        let id = match want_id.filter(|&id| id != 0) {
            Some(id) if self.clients.contains(id) => {
                self.send_error(from, ErrorCode::IdTaken, format!("id {id} is taken"));
                return;
            }
            Some(id) => id,
            None => match self.lowest_free_id() {
                Some(id) => id,
                None => {
                    self.send_error(from, ErrorCode::ServerFull, "no free id left");
                    return;
                }
            },
        };
        self.take_id(id);
        let token = self.rng.random::<Token>();
        self.serial = self.serial.wrapping_add(1);
        let t = self.clients.nanos(now);
        self.clients.insert(Record {
            addr: from,
            token,
            key,
            joined: t,
            last_seen: t,
            id,
            serial: self.serial,
        });
        self.limiter.joined(from);
        let deadline = t.saturating_add(self.ttl_nanos());
        self.expiry.push(Reverse((deadline, id, self.serial)));
        if self.departed.remove(&from).is_some() {
            self.departed_order.retain(|a| *a != from);
        }
        debug!("client {id} joined from {from}");
        self.events.push_back(TableEvent::Joined { id, addr: from });
        let answer = self.registered(now, id, token);
        self.send(from, answer);
    }

    /// Whether a new registration from `from` is within the limits per source: its prefix's
    /// rate (spending a token; see [`Limits`] for how that is fair to clients that retry)
    /// and its cap on clients. If not, `from` is answered (`RateLimited` at most once a
    /// second, `ServerFull` for a prefix at its cap) or, past those bounds, not answered.
    fn within_source_limits(&mut self, now: Instant, from: SocketAddr) -> bool {
        let rate = self.config.register_rate;
        if rate <= 0.0 {
            return true;
        }
        let t = self.clients.nanos(now);
        let burst = f64::from(self.config.register_burst);
        let prefix = Prefix::of(from.ip());
        if let Verdict::Refuse { tell } = self.limiter.admit(t, from, rate, burst) {
            self.stats.rate_limited += 1;
            debug!("{from}: too many registrations from {prefix}");
            if tell {
                self.send_error(
                    from,
                    ErrorCode::RateLimited,
                    format!("too many registrations from {prefix}; keep retrying: addresses that retry are served first"),
                );
            }
            return false;
        }
        let cap = self.limits.per_prefix(self.config.max_clients);
        if self.limiter.live(from) >= cap {
            self.stats.prefix_full += 1;
            debug!("{from}: {prefix} has {cap} clients already");
            self.send_error(
                from,
                ErrorCode::ServerFull,
                format!("too many clients from {prefix} (at most {cap}); try again later"),
            );
            return false;
        }
        true
    }

    #[inline(never)] // kept out of handle_message, which lookups go through
    fn resolve(&mut self, from: SocketAddr, name: String) -> Option<ClientId> {
        let holder = if self.by_name.is_empty() {
            None
        } else {
            self.by_name
                .get(name.to_ascii_lowercase().as_str())
                .copied()
        };
        let found = holder
            .and_then(|id| self.clients.get(id))
            .map(|r| (r.id, r.addr, r.key));
        let answer = match found {
            Some((id, addr, key)) => self.found(id, addr, key),
            None => Message::Unknown { name, nonce: 0 },
        };
        self.send(from, answer);
        found.map(|(id, _, _)| id)
    }

    /// The answer to a `Lookup` or `Resolve` that found client `id` at `addr`.
    fn found(&self, id: ClientId, addr: SocketAddr, key: Key) -> Message {
        let name = self.name_of(id);
        Message::Found {
            id,
            addr,
            key,
            name: name.map(|n| n.name.to_string()),
            display_name: name.and_then(|n| n.display_name.as_deref().map(str::to_string)),
            nonce: 0,
        }
    }

    /// Answers a request that needs a registration (`id` and `token` from its address)
    /// and did not match one.
    fn not_registered(&mut self, from: SocketAddr, id: ClientId, what: &str) {
        self.stats.refused += 1;
        debug!("{from}: {what} for id {id} matches no registration");
        self.send_error(
            from,
            ErrorCode::NotRegistered,
            format!("client {id} is not registered from {from} with that token"),
        );
    }

    fn refuse_claim(&mut self, from: SocketAddr, code: ErrorCode, detail: String) {
        self.stats.claims_refused += 1;
        debug!("{from}: claim refused: {detail}");
        self.send_error(from, code, detail);
    }

    #[inline(never)] // rare: kept out of handle_message, which lookups go through
    fn claim(
        &mut self,
        from: SocketAddr,
        id: ClientId,
        token: Token,
        name: String,
        display_name: Option<String>,
        proof: Option<Vec<u8>>,
    ) {
        if !self.owns(from, id, token) {
            self.not_registered(from, id, "claim");
            return;
        }
        let checked = wire::check_name(&name).and_then(|()| {
            display_name
                .as_deref()
                .map_or(Ok(()), wire::check_display_name)
        });
        if let Err(e) = checked {
            self.refuse_claim(from, ErrorCode::BadName, e.0);
            return;
        }
        let key: Box<str> = name.to_ascii_lowercase().into();
        match self.by_name.get(&key).copied() {
            Some(holder) if holder == id => {
                // A retransmission, or a new spelling or display name of the same name.
                let n = self.names.get_mut(&id).expect("a holder has a name");
                let same = *n.name == *name && n.display_name.as_deref() == display_name.as_deref();
                if same {
                    self.send(from, Message::Claimed { id, name, nonce: 0 });
                    return;
                }
            }
            Some(holder) => {
                let holder_key = self.clients.get(holder).map(|r| r.key);
                let claimer_key = self.clients.get(id).map(|r| r.key);
                let proved = proof.is_some_and(|p| self.proves(&p, token, claimer_key));
                if !proved || holder_key != claimer_key {
                    let detail = format!("name {name} is taken by client {holder}");
                    self.refuse_claim(from, ErrorCode::NameTaken, detail);
                    return;
                }
                // The holder is this client's previous run, which did not leave.
                let (old, old_name) = self.remove(holder);
                debug!("client {holder} at {} replaced by client {id}", old.addr);
                self.events.push_back(TableEvent::Replaced {
                    id: holder,
                    addr: old.addr,
                    name: old_name.map_or_else(|| name.clone(), String::from),
                    by: id,
                });
            }
            None => {}
        }
        self.release_name(id);
        self.by_name.insert(key, id);
        self.names.insert(
            id,
            Name {
                name: name.as_str().into(),
                display_name: display_name.as_deref().map(Box::from),
            },
        );
        debug!("client {id} at {from} is now {name}");
        self.events.push_back(TableEvent::Named {
            id,
            addr: from,
            name: name.clone(),
            display_name,
        });
        self.send(from, Message::Claimed { id, name, nonce: 0 });
    }

    /// Answers `List` with one page: the clients above `after`, in id order, as many as fit
    /// in a datagram of `PACK_LIMIT` bytes; within the client's `List` rate.
    #[inline(never)] // rare: kept out of handle_message, which lookups go through
    fn list(
        &mut self,
        now: Instant,
        from: SocketAddr,
        id: ClientId,
        token: Token,
        after: Option<ClientId>,
    ) {
        if !self.owns(from, id, token) {
            self.not_registered(from, id, "list");
            return;
        }
        if !self.config.list {
            self.send_error(
                from,
                ErrorCode::ListDisabled,
                "this server does not list its clients",
            );
            return;
        }
        let t = self.clients.nanos(now);
        let (rate, burst) = (self.limits.list_rate, f64::from(self.limits.list_burst));
        if !self.limiter.allow_list(id, t, rate, burst) {
            // No answer: the client asks again a second later, as for a lost datagram.
            self.stats.list_limited += 1;
            debug!("{from}: client {id} asks for List pages faster than {rate} a second");
            return;
        }
        let page = self.page(now, after);
        self.stats.list_pages += 1;
        self.send(from, page);
    }

    /// One `Listing` page. Its size is measured with the encoder: MessagePack values
    /// concatenate, so the page is the empty `Listing` (with its `next` and `total`), plus
    /// the array header's growth, plus each client's own encoding; the result is checked
    /// with `wire::encode` before it goes. It walks the ordered ids from `after`, so it
    /// looks at the clients it lists and at most one more (`Stats::list_examined`).
    fn page(&mut self, now: Instant, after: Option<ClientId>) -> Message {
        use std::ops::Bound;
        let now_ns = self.clients.nanos(now);
        let total = u32::try_from(self.clients.len()).unwrap_or(u32::MAX);
        let empty = |next: Option<ClientId>| {
            wire::encode(&Message::Listing {
                clients: Vec::new(),
                next,
                total,
                nonce: 0,
            })
            .len()
        };
        let empty_last = empty(None);
        let size_with = |next: Option<ClientId>, items: usize, bytes: usize| {
            let empty = next.map_or(empty_last, |id| empty(Some(id)));
            // An empty array is one byte; up to 15 items too, then three (array 16).
            empty + if items <= 15 { 0 } else { 2 } + bytes
        };
        let mut clients: Vec<Listed> = Vec::new();
        let mut bytes = 0;
        let mut scratch = Vec::with_capacity(256);
        let mut next = None;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut ids = self.clients.ids.range((from, Bound::Unbounded)).peekable();
        while let Some(&id) = ids.next() {
            self.stats.list_examined += 1;
            let r = self.clients.get(id).expect("a listed id has a record");
            let name = self.name_of(id);
            let listed = Listed {
                id,
                key: r.key,
                name: name.map(|n| n.name.to_string()),
                display_name: name.and_then(|n| n.display_name.as_deref().map(str::to_string)),
                online_secs: u32::try_from(now_ns.saturating_sub(r.joined) / 1_000_000_000)
                    .unwrap_or(u32::MAX),
            };
            scratch.clear();
            rmp_serde::encode::write_named(&mut scratch, &listed)
                .expect("encoding into a Vec cannot fail");
            let with = bytes + scratch.len();
            let n = clients.len() + 1;
            // Exact when more clients follow (`next` is this id); the last client of the
            // table may also fit with `next` nil, which is shorter.
            let fits = size_with(Some(id), n, with) <= wire::PACK_LIMIT
                || (size_with(None, n, with) <= wire::PACK_LIMIT && ids.peek().is_none());
            if !fits {
                debug_assert!(!clients.is_empty(), "one client always fits in a page");
                next = clients.last().map(|c| c.id).or(after);
                break;
            }
            clients.push(listed);
            bytes = with;
        }
        let expected = size_with(next, clients.len(), bytes);
        let mut page = Message::Listing {
            clients,
            next,
            total,
            nonce: 0,
        };
        // Checked with the encoder itself (never expected to trim anything).
        debug_assert_eq!(wire::encode(&page).len(), expected, "page size");
        while wire::encode(&page).len() > wire::PACK_LIMIT {
            let Message::Listing { clients, next, .. } = &mut page else {
                unreachable!()
            };
            let Some(last) = clients.pop() else { break };
            debug!("listing page trimmed at client {}", last.id);
            *next = Some(clients.last().map_or(last.id.saturating_sub(1), |c| c.id));
        }
        page
    }

    /// Whether `proof` (a Noise `X` message to our key) proves the key `registered`, for
    /// the registration whose token is `token` (its payload).
    fn proves(&self, proof: &[u8], token: Token, registered: Option<Key>) -> bool {
        match self.identity.verify_proof(proof) {
            Some((key, payload)) => {
                Some(key) == registered && payload == token.to_be_bytes().as_slice()
            }
            None => false,
        }
    }

    fn registered(&self, now: Instant, id: ClientId, token: Token) -> Message {
        Message::Registered {
            turn: self.config.turn.as_ref().map(|t| t.grant(id, now)),
            id,
            token,
            key: *self.identity.public(),
            ttl_secs: u32::try_from(self.config.ttl.as_secs().max(1)).unwrap_or(u32::MAX),
            nonce: 0,
        }
    }

    fn leave(&mut self, now: Instant, from: SocketAddr, id: ClientId, token: Token) {
        if self.owns(from, id, token) {
            let (_, name) = self.remove(id);
            self.remember_departure(Departure {
                addr: from,
                id,
                token,
                at: now,
            });
            debug!("client {id} at {from} left");
            self.events.push_back(TableEvent::Left {
                id,
                addr: from,
                name: name.map(String::from),
            });
            self.send(from, Message::LeaveAck { id, nonce: 0 });
            return;
        }
        if self
            .departed
            .get(&from)
            .is_some_and(|d| d.id == id && d.token == token)
        {
            // Our LeaveAck was lost and the client asks again.
            self.send(from, Message::LeaveAck { id, nonce: 0 });
            return;
        }
        self.stats.refused += 1;
        debug!("{from}: leave for id {id} matches no registration; nothing deleted");
        self.send_error(
            from,
            ErrorCode::NotRegistered,
            format!("client {id} is not registered from {from} with that token"),
        );
    }

    /// Removes client `id` from the table, releasing its name; returns its record and the
    /// name it had.
    fn remove(&mut self, id: ClientId) -> (Record, Option<Box<str>>) {
        let r = self.clients.remove(id).expect("removing a present id");
        self.limiter.left(id, r.addr);
        self.intro.forget(id);
        if id < self.next_id {
            self.free_ids.insert(id);
        }
        (r, self.release_name(id))
    }

    /// Forgets the name of client `id`, if it has one, and returns it.
    fn release_name(&mut self, id: ClientId) -> Option<Box<str>> {
        if self.names.is_empty() {
            return None;
        }
        let n = self.names.remove(&id)?;
        self.by_name.remove(n.name.to_ascii_lowercase().as_str());
        Some(n.name)
    }

    fn lowest_free_id(&mut self) -> Option<ClientId> {
        if let Some(&id) = self.free_ids.first() {
            return Some(id);
        }
        // `next_id` may have been taken by a client that asked for it.
        while self.clients.contains(self.next_id) {
            self.next_id = self.next_id.checked_add(1)?;
        }
        Some(self.next_id)
    }

    fn take_id(&mut self, id: ClientId) {
        self.free_ids.remove(&id);
        if id == self.next_id {
            self.next_id = self.next_id.saturating_add(1);
        }
    }

    fn remember_departure(&mut self, d: Departure) {
        self.departed.insert(d.addr, d);
        self.departed_order.push_back(d.addr);
        // Bounded: never more remembered departures than clients the server may hold.
        while self.departed_order.len() > self.config.max_clients.max(1) {
            if let Some(addr) = self.departed_order.pop_front() {
                self.departed.remove(&addr);
            }
        }
    }

    fn forget_departures(&mut self, now: Instant) {
        while let Some(addr) = self.departed_order.front().copied() {
            match self.departed.get(&addr) {
                Some(d) if d.at + self.config.ttl > now => break,
                _ => {
                    self.departed_order.pop_front();
                    self.departed.remove(&addr);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use std::collections::BTreeMap;

    /// The id index agrees with a plain map, for ids handed out lowest first and for ids
    /// anywhere in the range (which a client may ask for).
    #[test]
    fn the_id_index_agrees_with_a_plain_map() {
        let seed = rand::random::<u64>();
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let mut index = IdIndex::default();
        let mut model: HashMap<ClientId, u32> = HashMap::new();
        for step in 0..50_000u32 {
            let id = match rng.random_range(0..10) {
                0 => rng.random::<ClientId>(),
                1 => rng.random_range(0..5000),
                _ => rng.random_range(0..(model.len() as u32 + 10)),
            };
            if rng.random_bool(0.3) {
                assert_eq!(
                    index.remove(id),
                    model.remove(&id),
                    "seed {seed} step {step}"
                );
            } else {
                model.insert(id, step);
                index.set(id, step, model.len());
            }
            let probe = rng.random_range(0..(model.len() as u32 + 10));
            assert_eq!(index.get(probe), model.get(&probe).copied(), "seed {seed}");
            assert_eq!(index.get(id), model.get(&id).copied(), "seed {seed}");
        }
        for (&id, &i) in &model {
            assert_eq!(index.get(id), Some(i), "seed {seed}");
        }
        assert!(index.dense.len() < 2 * 5000 + 1024 + 50_000, "seed {seed}");
    }

    /// Random joins, leaves, expiries and lookups, checked against a plain map: the dense
    /// table's two indexes must always agree with it (removal moves the last record).
    #[test]
    fn the_table_agrees_with_a_plain_map_under_random_churn() {
        let seed = rand::random::<u64>();
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let config = RegistryConfig {
            ttl: Duration::from_secs(5),
            max_clients: 64,
            register_rate: 0.0,
            ..RegistryConfig::default()
        };
        let mut r = Registry::with_seed(config, seed);
        let mut model: BTreeMap<ClientId, (SocketAddr, Token)> = BTreeMap::new();
        let t0 = Instant::now();
        let mut now = t0;
        for step in 0..20_000 {
            let from = SocketAddr::from(([127, 0, 0, 1], rng.random_range(1..100u16)));
            match rng.random_range(0..4) {
                0 => r.handle_message(now, from, Message::register(None, [0; 32])),
                1 => {
                    let mine = model.iter().find(|(_, (a, _))| *a == from);
                    if let Some((&id, &(_, token))) = mine {
                        r.handle_message(now, from, Message::leave(id, token));
                    }
                }
                2 => now += Duration::from_millis(rng.random_range(0..700)),
                _ => r.handle_message(now, from, Message::keepalive(0, 0)),
            }
            r.handle_timeout(now);
            while let Some(ev) = r.poll_event() {
                match ev {
                    TableEvent::Joined { id, addr } => {
                        let token = r.get(id).expect("joined").token;
                        assert!(model.insert(id, (addr, token)).is_none(), "seed {seed}");
                    }
                    TableEvent::Left { id, .. }
                    | TableEvent::Expired { id, .. }
                    | TableEvent::Replaced { id, .. } => {
                        assert!(model.remove(&id).is_some(), "seed {seed} step {step}");
                    }
                    TableEvent::Named { .. } => {}
                }
            }
            while r.poll_transmit().is_some() {}
            assert_eq!(r.len(), model.len(), "seed {seed} step {step}");
            for (&id, &(addr, token)) in &model {
                let e = r
                    .get(id)
                    .unwrap_or_else(|| panic!("seed {seed}: {id} lost"));
                assert_eq!((e.addr, e.token), (addr, token), "seed {seed} step {step}");
                assert_eq!(r.clients.at_addr(&addr).map(|x| x.id), Some(id));
            }
        }
    }
}
