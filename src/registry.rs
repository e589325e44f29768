//! The rendezvous server's state machine: the table of active clients.
//!
//! [`Registry`] never touches a socket or reads the clock. The driver feeds it datagrams
//! ([`Registry::handle_datagram`]) and timer expiries ([`Registry::handle_timeout`]) with the
//! current time, then drains its outputs: answers to send ([`Registry::poll_transmit`]), changes
//! to the table to print ([`Registry::poll_event`]) and the next time it must be woken
//! ([`Registry::poll_timeout`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use log::debug;
use rand::{Rng, SeedableRng};

use crate::wire::{self, ClientId, DecodeError, ErrorCode, Message, Token};

/// Settings of a [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// An entry not heard from for this long is removed.
    pub ttl: Duration,
    /// Registrations beyond this many active clients are refused with `ServerFull`.
    pub max_clients: usize,
    /// New registrations allowed per second from one source IP address, on average
    /// (a token bucket); 0 means no limit. Retransmitted registrations do not count.
    pub register_rate: f64,
    /// How many new registrations one source IP address may make at once before the rate
    /// applies (the bucket's size).
    pub register_burst: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            ttl: Duration::from_secs(30),
            max_clients: 100_000,
            register_rate: 20.0,
            register_burst: 200,
        }
    }
}

/// Most source addresses whose registration buckets are remembered; past it, full buckets
/// (sources quiet long enough to have refilled) are forgotten.
const MAX_BUCKETS: usize = 65_536;

/// A token bucket limiting new registrations from one source IP address.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// When this source was last told it is rate-limited (told at most once a second, so
    /// that refusals do not become a flood of their own).
    warned: Option<Instant>,
}

/// One active client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: ClientId,
    pub addr: SocketAddr,
    pub token: Token,
    pub joined: Instant,
    pub last_seen: Instant,
    serial: u64,
}

/// A change to the table, for the driver to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableEvent {
    Joined { id: ClientId, addr: SocketAddr },
    Left { id: ClientId, addr: SocketAddr },
    Expired { id: ClientId, addr: SocketAddr },
}

/// An answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub message: Message,
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
    /// `Leave` or `Keepalive` that matched no registration (forged, stale, or after a restart).
    pub refused: u64,
    /// New registrations refused because their source went over its rate.
    pub rate_limited: u64,
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
    clients: BTreeMap<ClientId, Entry>,
    by_addr: HashMap<SocketAddr, ClientId>,
    /// Ids below `next_id` that were freed; the lowest free id is the smaller of the first of
    /// these and `next_id`.
    free_ids: BTreeSet<ClientId>,
    next_id: ClientId,
    /// (deadline, id, serial): a lazy expiry queue. An item may be stale (the entry was
    /// refreshed, or replaced); it is checked against the entry when it comes due.
    expiry: BinaryHeap<Reverse<(Instant, ClientId, u64)>>,
    serial: u64,
    departed: HashMap<SocketAddr, Departure>,
    buckets: HashMap<IpAddr, Bucket>,
    departed_order: VecDeque<SocketAddr>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TableEvent>,
    stats: Stats,
    rng: rand::rngs::StdRng,
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

    fn with_rng(config: RegistryConfig, rng: rand::rngs::StdRng) -> Self {
        Registry {
            config,
            clients: BTreeMap::new(),
            by_addr: HashMap::new(),
            free_ids: BTreeSet::new(),
            next_id: 1,
            expiry: BinaryHeap::new(),
            serial: 0,
            departed: HashMap::new(),
            buckets: HashMap::new(),
            departed_order: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            rng,
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The active clients, by id.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = &Entry> {
        self.clients.values()
    }

    pub fn get(&self, id: ClientId) -> Option<&Entry> {
        self.clients.get(&id)
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Feeds one received datagram. Undecodable ones are counted and dropped.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.stats.datagrams += 1;
        match wire::decode_all(datagram) {
            Ok(messages) => {
                for msg in messages {
                    self.handle_message(now, from, msg);
                }
            }
            Err(DecodeError::BadVersion { found }) => {
                self.stats.bad_version += 1;
                debug!("{from}: protocol version {found}, answering BadVersion");
                self.send(
                    from,
                    Message::Error {
                        code: ErrorCode::BadVersion,
                        detail: format!(
                            "this server speaks protocol version {}, not {found}",
                            wire::VERSION
                        ),
                    },
                );
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

    /// Feeds one decoded message.
    pub fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        // Any message from a registered address shows the client is alive.
        if let Some(id) = self.by_addr.get(&from) {
            if let Some(entry) = self.clients.get_mut(id) {
                entry.last_seen = now;
            }
        }
        match msg {
            Message::Register { want_id } => self.register(now, from, want_id),
            Message::Lookup { id } => {
                let answer = match self.clients.get(&id) {
                    Some(entry) => Message::Found {
                        id,
                        addr: entry.addr,
                    },
                    None => Message::Inactive { id },
                };
                self.send(from, answer);
            }
            Message::Leave { id, token } => self.leave(now, from, id, token),
            Message::Keepalive { id, token } => {
                if !self.owns(from, id, token) {
                    self.stats.refused += 1;
                    debug!("{from}: keepalive for id {id} matches no registration");
                    self.send(
                        from,
                        Message::Error {
                            code: ErrorCode::NotRegistered,
                            detail: format!("client {id} is not registered from {from}"),
                        },
                    );
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
        while let Some(&Reverse((deadline, id, serial))) = self.expiry.peek() {
            if deadline > now {
                break;
            }
            self.expiry.pop();
            let Some(entry) = self.clients.get(&id) else {
                continue;
            };
            if entry.serial != serial {
                continue; // the id was freed and handed to someone else, who has an item of its own
            }
            let due = entry.last_seen + self.config.ttl;
            if due > now {
                self.expiry.push(Reverse((due, id, serial)));
                continue;
            }
            let entry = self.remove(id);
            debug!("client {id} at {} expired", entry.addr);
            self.events.push_back(TableEvent::Expired {
                id,
                addr: entry.addr,
            });
        }
        self.forget_departures(now);
    }

    /// The next time [`Registry::handle_timeout`] has work to do (it may find none).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiry = self.expiry.peek().map(|Reverse((at, _, _))| *at);
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

    fn send(&mut self, to: SocketAddr, message: Message) {
        self.transmits.push_back(Transmit { to, message });
    }

    fn owns(&self, from: SocketAddr, id: ClientId, token: Token) -> bool {
        self.clients
            .get(&id)
            .is_some_and(|e| e.addr == from && e.token == token)
    }

    fn register(&mut self, now: Instant, from: SocketAddr, want_id: Option<ClientId>) {
        if let Some(id) = self.by_addr.get(&from) {
            // A retransmission (our answer was lost): the same answer again.
            let entry = &self.clients[id];
            let answer = self.registered(entry.id, entry.token);
            self.send(from, answer);
            return;
        }
        if !self.take_registration_token(now, from) {
            return;
        }
        if self.clients.len() >= self.config.max_clients {
            let detail = format!(
                "server full ({} clients); try again later",
                self.config.max_clients
            );
            self.send(
                from,
                Message::Error {
                    code: ErrorCode::ServerFull,
                    detail,
                },
            );
            return;
        }
        let id = match want_id.filter(|&id| id != 0) {
            Some(id) if self.clients.contains_key(&id) => {
                self.send(
                    from,
                    Message::Error {
                        code: ErrorCode::IdTaken,
                        detail: format!("id {id} is taken"),
                    },
                );
                return;
            }
            Some(id) => id,
            None => match self.lowest_free_id() {
                Some(id) => id,
                None => {
                    let detail = "no free id left".to_string();
                    self.send(
                        from,
                        Message::Error {
                            code: ErrorCode::ServerFull,
                            detail,
                        },
                    );
                    return;
                }
            },
        };
        self.take_id(id);
        let token = self.rng.random::<Token>();
        self.serial += 1;
        let entry = Entry {
            id,
            addr: from,
            token,
            joined: now,
            last_seen: now,
            serial: self.serial,
        };
        self.expiry
            .push(Reverse((now + self.config.ttl, id, self.serial)));
        self.clients.insert(id, entry);
        self.by_addr.insert(from, id);
        if self.departed.remove(&from).is_some() {
            self.departed_order.retain(|a| *a != from);
        }
        debug!("client {id} joined from {from}");
        self.events.push_back(TableEvent::Joined { id, addr: from });
        let answer = self.registered(id, token);
        self.send(from, answer);
    }

    /// Spends one of the source's registration tokens; false (and perhaps a `RateLimited`
    /// answer) when it has none left.
    fn take_registration_token(&mut self, now: Instant, from: SocketAddr) -> bool {
        let (rate, burst) = (
            self.config.register_rate,
            f64::from(self.config.register_burst),
        );
        if rate <= 0.0 {
            return true;
        }
        if self.buckets.len() >= MAX_BUCKETS {
            self.buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
            });
        }
        let b = self.buckets.entry(from.ip()).or_insert(Bucket {
            tokens: burst,
            last: now,
            warned: None,
        });
        let refill = now.saturating_duration_since(b.last).as_secs_f64() * rate;
        b.tokens = (b.tokens + refill).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return true;
        }
        self.stats.rate_limited += 1;
        let warn = b
            .warned
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if warn {
            b.warned = Some(now);
            debug!("{from}: too many registrations from {}", from.ip());
            self.send(
                from,
                Message::Error {
                    code: ErrorCode::RateLimited,
                    detail: format!("too many registrations from {}; wait", from.ip()),
                },
            );
        }
        false
    }

    fn registered(&self, id: ClientId, token: Token) -> Message {
        Message::Registered {
            id,
            token,
            ttl_secs: u32::try_from(self.config.ttl.as_secs().max(1)).unwrap_or(u32::MAX),
        }
    }

    fn leave(&mut self, now: Instant, from: SocketAddr, id: ClientId, token: Token) {
        if self.owns(from, id, token) {
            self.remove(id);
            self.remember_departure(Departure {
                addr: from,
                id,
                token,
                at: now,
            });
            debug!("client {id} at {from} left");
            self.events.push_back(TableEvent::Left { id, addr: from });
            self.send(from, Message::LeaveAck { id });
            return;
        }
        if self
            .departed
            .get(&from)
            .is_some_and(|d| d.id == id && d.token == token)
        {
            // Our LeaveAck was lost and the client asks again.
            self.send(from, Message::LeaveAck { id });
            return;
        }
        self.stats.refused += 1;
        debug!("{from}: leave for id {id} matches no registration; nothing deleted");
        self.send(
            from,
            Message::Error {
                code: ErrorCode::NotRegistered,
                detail: format!("client {id} is not registered from {from} with that token"),
            },
        );
    }

    fn remove(&mut self, id: ClientId) -> Entry {
        let entry = self.clients.remove(&id).expect("removing a present id");
        self.by_addr.remove(&entry.addr);
        if id < self.next_id {
            self.free_ids.insert(id);
        }
        entry
    }

    fn lowest_free_id(&mut self) -> Option<ClientId> {
        if let Some(&id) = self.free_ids.first() {
            return Some(id);
        }
        // `next_id` may have been taken by a client that asked for it.
        while self.clients.contains_key(&self.next_id) {
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
