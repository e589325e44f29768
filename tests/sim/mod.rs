//! A simulated network with a simulated clock, shared by the behaviour tests (`mod sim;`).
//!
//! One [`Registry`] at [`SERVER`] and any number of [`Peer`]s, each at its own address, talk
//! through a queue of datagrams in flight. Nothing touches a socket and nothing sleeps: the
//! clock is a virtual `now` that starts at one `Instant::now()` and jumps to the next thing
//! that happens (a datagram arriving, or the earliest `poll_timeout()` of the registry and of
//! every peer). Every datagram is encoded with [`wire::encode`] and handed over with
//! `handle_datagram`, so the decoder is on the path of every test.
//!
//! The network is seeded ([`Sim::new`]): each datagram may be lost, duplicated, and delayed by
//! a base latency plus jitter plus, sometimes, an extra reordering delay, all drawn from one
//! `StdRng`. The same seed replays the same run exactly. Tests can also drop chosen datagrams
//! ([`Sim::drop_first`]), take an address off the network ([`Sim::set_down`]), or hand a
//! datagram straight to a node ([`Sim::deliver_now`]).
//!
//! Any address may also have a link of its own, each way ([`Sim::set_link`], the model in
//! [`link`]): a one-way delay, a rate cap, a drop-tail queue limited in bytes and random
//! loss, as on the access link of a home. A datagram from `a` to `b` goes through `a`'s up
//! link, then the network above, then `b`'s down link. An address may be a [`Sim::add_sink`]:
//! it only records what arrives, for tests that send raw datagrams with [`Sim::inject`].
//!
//! Driving is bounded: [`Sim::run_until`] stops at a virtual-time limit, and any run that
//! takes more than [`MAX_STEPS`] steps panics (a livelock, e.g. a timer that never moves).
#![allow(dead_code)]

pub mod link;
pub mod nat;
pub mod turn;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use p2pchat::peer::{Event, Peer, PeerConfig};
use p2pchat::registry::{Registry, RegistryConfig, TableEvent};
use p2pchat::wire::Transmit;
use p2pchat::wire::{self, ClientId, Message};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use link::{Link, LinkConfig, LinkStats, Verdict, OVERHEAD};

/// Where the rendezvous server lives. Addresses are labels: nothing binds them.
pub const SERVER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7070));

/// The wall-clock time of the start of every simulation (peers added later are later).
pub const SIM_WALL_CLOCK: Duration = Duration::from_secs(1_800_000_000);

/// Steps one `run_until`/`run_for` may take before the run is declared a livelock.
pub const MAX_STEPS: u64 = 5_000_000;

/// The default retry interval of the client (`--retry-interval 10`).
pub const RETRY: Duration = Duration::from_secs(10);

/// The address of the `i`-th peer added to a simulation.
pub fn peer_addr(i: usize) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, 0, 1, u8::try_from(i + 1).expect("at most 254 peers")),
        4000,
    ))
}

/// A client configuration with the defaults of the command line (10 s retry interval).
pub fn default_config() -> PeerConfig {
    PeerConfig::new(SERVER, RETRY)
}

/// The seeds to run: `SIM_SEED` alone if set, else `0..count`, or `0..SIM_SEEDS` if set
/// (for a longer search: `SIM_SEEDS=5000 cargo test --release --test conversation`).
pub fn seeds(count: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("SIM_SEED") {
        return vec![s.parse().expect("SIM_SEED must be a number")];
    }
    let count = std::env::var("SIM_SEEDS")
        .map_or(count, |s| s.parse().expect("SIM_SEEDS must be a number"));
    (0..count).collect()
}

/// The client configuration for a network that loses 30%: the command line's defaults with
/// more tries before giving up, and a longer silence before a session is declared dead.
///
/// The default bounds are sized to notice a dead peer or server quickly. With 30% loss each
/// way a request/answer round trip fails 51% of the time, so 5 `Register`s all fail for
/// 3.5% of clients, 6 `ConnectRequest`s for 1.8% of requests, 10 sends of the last message
/// of a burst for 0.1% of messages; and when three `Terminate`s in a row are lost (2.7%,
/// they are 10 s apart by then) the other side hits its 30 s silence timeout first and
/// shows `PeerSilent` instead of `ByPeer`. Giving up then is the intended behaviour (and
/// `default_bounds_end_every_message_and_session_in_an_event` checks that each of those
/// ends in an event), but here the point is that nothing is lost, shown twice or shown out
/// of order when the peers persist.
pub fn patient_config() -> PeerConfig {
    let mut cfg = default_config();
    cfg.server_tries = 30;
    cfg.connect_tries = 20;
    cfg.terminate_tries = 30;
    cfg.chat.max_tries = 30;
    cfg.session_timeout = Duration::from_secs(120);
    cfg
}

/// Deterministic bytes that are not all alike.
pub fn file_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// How the simulated network treats datagrams. Probabilities are per datagram.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Chance a datagram is lost.
    pub loss: f64,
    /// Chance a datagram that was not lost arrives twice (the copy has its own delay).
    pub duplicate: f64,
    /// Every datagram takes at least this long.
    pub latency: Duration,
    /// Plus a uniformly random extra delay up to this.
    pub jitter: Duration,
    /// Chance a datagram is held back by up to `reorder_delay` more, so that later ones
    /// overtake it.
    pub reorder: f64,
    pub reorder_delay: Duration,
}

impl NetConfig {
    /// No loss, no duplication, no reordering; 10 ms one way.
    pub fn perfect() -> Self {
        NetConfig {
            loss: 0.0,
            duplicate: 0.0,
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
        }
    }

    /// Nothing at all: no loss, no delay. For tests where the links of [`Sim::set_link`]
    /// alone shape the path.
    pub fn instant() -> Self {
        NetConfig {
            latency: Duration::ZERO,
            ..Self::perfect()
        }
    }

    /// Lossy and disorderly: `loss` and `duplicate` as given, 10 ms + up to 30 ms of jitter,
    /// and one datagram in ten held back by up to 300 ms.
    pub fn lossy(loss: f64, duplicate: f64) -> Self {
        NetConfig {
            loss,
            duplicate,
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(30),
            reorder: 0.1,
            reorder_delay: Duration::from_millis(300),
        }
    }
}

/// What happened to a datagram handed to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Scheduled for delivery (once, or twice when duplicated).
    Sent { copies: u8 },
    /// Lost at random.
    Lost,
    /// Dropped by a test's filter.
    Filtered,
    /// Dropped by the sender's up link: its queue was full.
    LinkQueue,
    /// Lost at random on the sender's up link.
    LinkLost,
}

/// One datagram handed to the network, for tests that check what was sent when.
#[derive(Debug, Clone)]
pub struct Record {
    pub at: Instant,
    pub from: SocketAddr,
    pub to: SocketAddr,
    /// The message as its sender made it, in clear (a peer's messages of a session leave
    /// sealed: see `wire`).
    pub message: Message,
    /// What went on the wire: `message`, or the `Sealed` (or handshake) made of it.
    pub wire: Message,
    pub fate: Fate,
    /// When each copy is due to arrive (empty when it was lost or filtered). When the
    /// destination has a down link ([`Sim::set_link`]), when each copy reaches that link: what
    /// becomes of it there is decided then, and counted in the link's [`LinkStats`].
    pub arrivals: Vec<Instant>,
}

/// What a filter sees.
pub struct Packet<'a> {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub message: &'a Message,
}

struct Filter {
    remaining: usize,
    pred: Box<dyn FnMut(&Packet<'_>) -> bool>,
}

/// Counters of the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Lost at random.
    pub dropped: u64,
    /// Dropped by a filter.
    pub filtered: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Handed to a node's `handle_datagram`.
    pub delivered: u64,
    /// Arrived at an address that is down, unknown, or whose peer has finished.
    pub undeliverable: u64,
}

struct Datagram {
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
    /// Still to go through the destination's down link.
    enters_down_link: bool,
}

/// Which way along an address's link: `Up` carries what the address sends, `Down` what it
/// receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Up,
    Down,
}

/// A datagram that reached a sink ([`Sim::add_sink`]).
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: Instant,
    pub from: SocketAddr,
    /// The encoded datagram.
    pub bytes: Vec<u8>,
}

/// One simulated client.
pub struct Node {
    pub addr: SocketAddr,
    pub peer: Peer,
    /// Every event the peer emitted, with the virtual time it was drained.
    pub events: Vec<(Instant, Event)>,
}

/// The simulated network, clock, server and peers. See the module documentation.
pub struct Sim {
    pub seed: u64,
    /// When the simulation started; `now - start` is the virtual time elapsed.
    pub start: Instant,
    pub now: Instant,
    pub net: NetConfig,
    rng: StdRng,
    pub registry: Registry,
    pub registry_events: Vec<(Instant, TableEvent)>,
    pub nodes: Vec<Node>,
    in_flight: BTreeMap<(Instant, u64), Datagram>,
    order: u64,
    filters: Vec<Filter>,
    down: HashSet<SocketAddr>,
    links: HashMap<(SocketAddr, Direction), Link>,
    sinks: HashMap<SocketAddr, Vec<Arrival>>,
    /// Every datagram handed to the network, in order.
    pub log: Vec<Record>,
    pub stats: NetStats,
    pub steps: u64,
    /// Routers ([`Sim::add_nat`]) and which router each inside address is behind.
    pub nats: Vec<nat::Nat>,
    behind: HashMap<SocketAddr, usize>,
    /// A TURN server ([`Sim::add_turn`]).
    pub turn: Option<turn::TurnNode>,
    /// Datagrams that went through a peer's relay (encoded p2pchat datagrams), by sender.
    pub relayed: Vec<(SocketAddr, Message)>,
}

impl Sim {
    /// A simulation whose network, server tokens and peers' session ids all derive from
    /// `seed`. The server uses the default configuration (30 s time to live).
    pub fn new(seed: u64, net: NetConfig) -> Self {
        Self::with_registry(seed, net, RegistryConfig::default())
    }

    pub fn with_registry(seed: u64, net: NetConfig, config: RegistryConfig) -> Self {
        let now = Instant::now();
        Sim {
            seed,
            start: now,
            now,
            net,
            rng: StdRng::seed_from_u64(seed),
            registry: Registry::with_seed(config, seed ^ 0x5e4e_5e4e),
            registry_events: Vec::new(),
            nodes: Vec::new(),
            in_flight: BTreeMap::new(),
            order: 0,
            filters: Vec::new(),
            down: HashSet::new(),
            links: HashMap::new(),
            sinks: HashMap::new(),
            log: Vec::new(),
            stats: NetStats::default(),
            steps: 0,
            nats: Vec::new(),
            behind: HashMap::new(),
            turn: None,
            relayed: Vec::new(),
        }
    }

    /// Adds a TURN server at `addr` with long-term credentials for `users` (name,
    /// password).
    pub fn add_turn(&mut self, addr: SocketAddr, users: &[(&str, &str)]) {
        self.turn = Some(turn::TurnNode::new(addr, self.start, users));
    }

    /// A raw datagram (TURN traffic) from `from` to `to`: through the routers, lost like
    /// any other, but not in the log.
    fn transmit_bytes(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.stats.sent += 1;
        let Some(from) = self.translate_out(from, to) else {
            self.stats.undeliverable += 1;
            return;
        };
        if self.net.loss > 0.0 && self.rng.random_bool(self.net.loss) {
            self.stats.dropped += 1;
            return;
        }
        let now = self.now;
        self.schedule(from, to, bytes, now);
    }

    /// Adds a router with the public IP `public`; returns its index.
    pub fn add_nat(&mut self, public: std::net::IpAddr, kind: nat::NatKind) -> usize {
        self.nats.push(nat::Nat::new(public, kind));
        self.nats.len() - 1
    }

    /// Adds a peer at `addr` (an inside address of router `nat`, or a public one with
    /// `None`). Returns the peer's index.
    pub fn add_peer_at(
        &mut self,
        mut config: PeerConfig,
        addr: SocketAddr,
        nat: Option<usize>,
    ) -> usize {
        let i = self.nodes.len();
        config.server = SERVER;
        if let Some(n) = nat {
            self.behind.insert(addr, n);
        }
        let seed = self
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(i as u64 + 1);
        let peer = Peer::with_seed(config, self.now, seed);
        self.nodes.push(Node {
            addr,
            peer,
            events: Vec::new(),
        });
        self.drain_peer(i);
        i
    }

    /// What becomes of a datagram from `from` to `to` through the routers: the addresses
    /// it travels with, or `None` if a router drops it (hairpin). On a LAN (both behind
    /// the same router) and between public addresses, nothing changes.
    fn translate_out(&mut self, from: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
        let Some(&n) = self.behind.get(&from) else {
            return Some(from);
        };
        if self.behind.get(&to) == Some(&n) {
            return Some(from);
        }
        if to.ip() == self.nats[n].public {
            self.nats[n].hairpin_dropped += 1;
            return None;
        }
        if self.behind.contains_key(&to) {
            // Another LAN's private address: not routed on the internet.
            return None;
        }
        Some(self.nats[n].outbound(from, to))
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Adds a peer at [`peer_addr`]`(index)`, started now (it sends its `Register` at once).
    /// The configuration's server is set to [`SERVER`]. Returns the peer's index.
    /// Each peer gets a key pair of its own (a configuration is often shared by several
    /// peers): [`Sim::add_peer_keeping_identity`] keeps the configuration's.
    pub fn add_peer(&mut self, mut config: PeerConfig) -> usize {
        // From the seed, so that a run replays exactly.
        let mut keys = StdRng::seed_from_u64(self.seed ^ (0x6b65_7973 + self.nodes.len() as u64));
        config.identity = p2pchat::identity::Identity::from_secret(keys.random());
        self.add_peer_keeping_identity(config)
    }

    /// Adds a peer with the key pair of `config` (a restart of a peer).
    pub fn add_peer_keeping_identity(&mut self, mut config: PeerConfig) -> usize {
        let i = self.nodes.len();
        config.server = SERVER;
        // One message per datagram, as the driver's packing would not be seen otherwise;
        // and a wall clock that runs with the virtual one (a peer restarted later in the
        // run starts later).
        config.seal_limit = 0;
        config.wall_clock = SIM_WALL_CLOCK + (self.now - self.start);
        let seed = self
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(i as u64 + 1);
        let peer = Peer::with_seed(config, self.now, seed);
        self.nodes.push(Node {
            addr: peer_addr(i),
            peer,
            events: Vec::new(),
        });
        self.drain_peer(i);
        i
    }

    pub fn peer(&self, i: usize) -> &Peer {
        &self.nodes[i].peer
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// Removes every filter of [`Sim::drop_first`] and [`Sim::drop_first_where`].
    pub fn clear_filters(&mut self) {
        self.filters.clear();
    }

    /// The id the server gave peer `i`; panics if it has none yet.
    pub fn id(&self, i: usize) -> ClientId {
        self.nodes[i]
            .peer
            .id()
            .unwrap_or_else(|| panic!("peer {i} is not registered (seed {})", self.seed))
    }

    // ------------------------------------------------------------------ network control

    /// Drops the first `k` datagrams whose message satisfies `pred` (after which the filter
    /// lets everything through). Filters apply before random loss.
    pub fn drop_first(&mut self, k: usize, mut pred: impl FnMut(&Message) -> bool + 'static) {
        self.drop_first_where(k, move |p| pred(p.message));
    }

    /// Like [`Sim::drop_first`], with the addresses too.
    pub fn drop_first_where(&mut self, k: usize, pred: impl FnMut(&Packet<'_>) -> bool + 'static) {
        self.filters.push(Filter {
            remaining: k,
            pred: Box::new(pred),
        });
    }

    /// Takes `addr` off the network (`down`: true) or puts it back. Datagrams to a down
    /// address vanish; a down peer's or server's timers do not run (it is as if crashed,
    /// but its state is kept).
    pub fn set_down(&mut self, addr: SocketAddr, down: bool) {
        if down {
            self.down.insert(addr);
        } else {
            self.down.remove(&addr);
        }
    }

    /// Hands a datagram straight to the node at `to` now, bypassing the network and the
    /// links (no loss, no delay, not logged). For strangers and forged messages.
    /// A message of a session "from" a peer of the simulation is sealed with that peer's
    /// keys (as if it had sent it); from anyone else it goes as given.
    pub fn deliver_now(&mut self, from: SocketAddr, to: SocketAddr, message: &Message) {
        let message = self.sealed_by(from, to, message.clone());
        self.deliver(Datagram {
            from,
            to,
            bytes: wire::encode(&message),
            enters_down_link: false,
        });
    }

    /// Gives `addr` a link in direction `dir` (`Up`: what `addr` sends goes through it;
    /// `Down`: what it receives), replacing any it had, with a fresh queue and counters. See
    /// [`link`] for the model; sizes are the encoded datagram plus [`OVERHEAD`], and random
    /// loss is drawn from the simulation's seeded generator. Panics if `config` fails
    /// [`LinkConfig::check`].
    pub fn set_link(&mut self, addr: SocketAddr, dir: Direction, config: LinkConfig) {
        if let Err(e) = config.check() {
            panic!("link of {addr} ({dir:?}): {e}");
        }
        self.links.insert((addr, dir), Link::new(config));
    }

    /// The same link configuration both ways (two independent links with equal settings).
    pub fn set_links(&mut self, addr: SocketAddr, up: LinkConfig, down: LinkConfig) {
        self.set_link(addr, Direction::Up, up);
        self.set_link(addr, Direction::Down, down);
    }

    /// The counters of `addr`'s link in direction `dir`; panics if it has none.
    pub fn link_stats(&self, addr: SocketAddr, dir: Direction) -> &LinkStats {
        self.links
            .get(&(addr, dir))
            .unwrap_or_else(|| panic!("{addr} has no {dir:?} link"))
            .stats()
    }

    /// Bytes waiting in the queue of `addr`'s link in direction `dir` now; panics if it has
    /// none.
    pub fn link_queue(&mut self, addr: SocketAddr, dir: Direction) -> usize {
        let now = self.now;
        self.links
            .get_mut(&(addr, dir))
            .unwrap_or_else(|| panic!("{addr} has no {dir:?} link"))
            .queued_bytes(now)
    }

    /// Makes `addr` a sink: an address with no node that records every datagram arriving
    /// there (see [`Sim::arrivals`]).
    pub fn add_sink(&mut self, addr: SocketAddr) {
        self.sinks.entry(addr).or_default();
    }

    /// What arrived at sink `addr`, in order; panics if it is not a sink.
    pub fn arrivals(&self, addr: SocketAddr) -> &[Arrival] {
        self.sinks
            .get(&addr)
            .unwrap_or_else(|| panic!("{addr} is not a sink"))
    }

    /// Puts a datagram on the network as if `from` had sent it now (loss, delay and filters
    /// apply, and it is logged).
    /// Like [`Sim::deliver_now`], a message of a session from a peer of the simulation is
    /// sealed with its keys.
    pub fn inject(&mut self, from: SocketAddr, to: SocketAddr, message: Message) {
        let sealed = self.sealed_by(from, to, message.clone());
        self.transmit_plain(
            from,
            Transmit {
                to,
                message: sealed,
            },
            Some(message),
        );
    }

    /// `message` as the peer at `from` would send it to `to` (sealed, if it belongs to a
    /// session it has keys for); as given if `from` is no peer or has no keys.
    pub fn sealed_by(&mut self, from: SocketAddr, to: SocketAddr, message: Message) -> Message {
        match self.nodes.iter_mut().find(|n| n.addr == from) {
            Some(node) => node
                .peer
                .seal(to, std::slice::from_ref(&message))
                .unwrap_or(message),
            None => message,
        }
    }

    fn transmit(&mut self, from: SocketAddr, t: Transmit) {
        self.transmit_plain(from, t, None);
    }

    fn transmit_plain(&mut self, from: SocketAddr, t: Transmit, plain: Option<Message>) {
        self.stats.sent += 1;
        let Some(from) = self.translate_out(from, t.to) else {
            self.stats.undeliverable += 1;
            return;
        };
        let packet = Packet {
            from,
            to: t.to,
            message: plain.as_ref().unwrap_or(&t.message),
        };
        let mut arrivals = Vec::new();
        let mut filtered = false;
        for f in &mut self.filters {
            if f.remaining > 0 && (f.pred)(&packet) {
                f.remaining -= 1;
                filtered = true;
                break;
            }
        }
        // Through the sender's up link first, if it has one: when it comes out of it.
        let mut departs = Ok(self.now);
        let mut bytes = None;
        if !filtered {
            if let Some(link) = self.links.get_mut(&(from, Direction::Up)) {
                let encoded = wire::encode(&t.message);
                departs = match link.offer(self.now, encoded.len() + OVERHEAD, &mut self.rng) {
                    Verdict::Arrives(at) => Ok(at),
                    Verdict::DroppedQueue => Err(Fate::LinkQueue),
                    Verdict::Lost => Err(Fate::LinkLost),
                };
                bytes = Some(encoded);
            }
        }
        let fate = match departs {
            _ if filtered => {
                self.stats.filtered += 1;
                Fate::Filtered
            }
            Err(fate) => fate,
            Ok(_) if self.net.loss > 0.0 && self.rng.random_bool(self.net.loss) => {
                self.stats.dropped += 1;
                Fate::Lost
            }
            Ok(departs) => {
                let bytes = bytes.unwrap_or_else(|| wire::encode(&t.message));
                let copies = if self.net.duplicate > 0.0 && self.rng.random_bool(self.net.duplicate)
                {
                    self.stats.duplicated += 1;
                    2
                } else {
                    1
                };
                for _ in 1..copies {
                    arrivals.push(self.schedule(from, t.to, bytes.clone(), departs));
                }
                arrivals.push(self.schedule(from, t.to, bytes, departs));
                Fate::Sent { copies }
            }
        };
        self.log.push(Record {
            at: self.now,
            from,
            to: t.to,
            message: plain.unwrap_or_else(|| t.message.clone()),
            wire: t.message,
            fate,
            arrivals,
        });
    }

    /// Puts a datagram that left its sender (or its sender's up link) at `departs` on the
    /// network: it reaches `to` (or `to`'s down link) after the network's delay.
    fn schedule(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        bytes: Vec<u8>,
        departs: Instant,
    ) -> Instant {
        let mut delay = self.net.latency;
        if !self.net.jitter.is_zero() {
            delay += self.net.jitter.mul_f64(self.rng.random::<f64>());
        }
        if self.net.reorder > 0.0 && self.rng.random_bool(self.net.reorder) {
            delay += self.net.reorder_delay.mul_f64(self.rng.random::<f64>());
        }
        self.order += 1;
        let at = departs + delay;
        let enters_down_link = self.links.contains_key(&(to, Direction::Down));
        self.in_flight.insert(
            (at, self.order),
            Datagram {
                from,
                to,
                bytes,
                enters_down_link,
            },
        );
        at
    }

    /// A datagram reaches the down link of its destination now: it goes on to arrive when
    /// the link lets it out, or is dropped there.
    fn enter_down_link(&mut self, mut d: Datagram) {
        let Some(link) = self.links.get_mut(&(d.to, Direction::Down)) else {
            return self.deliver(d);
        };
        if let Verdict::Arrives(at) = link.offer(self.now, d.bytes.len() + OVERHEAD, &mut self.rng)
        {
            d.enters_down_link = false;
            self.order += 1;
            self.in_flight.insert((at, self.order), d);
        }
    }

    fn deliver(&mut self, mut d: Datagram) {
        // To a router's public address: through its mapping and filter.
        let via = self.nats.iter().position(|n| n.public == d.to.ip());
        if let Some(n) = via {
            match self.nats[n].inbound(d.from, d.to) {
                Some(inside) => d.to = inside,
                None => {
                    self.stats.undeliverable += 1;
                    return;
                }
            }
        }
        if self.down.contains(&d.to) {
            self.stats.undeliverable += 1;
            return;
        }
        let now = self.now;
        if let Some(arrivals) = self.sinks.get_mut(&d.to) {
            self.stats.delivered += 1;
            arrivals.push(Arrival {
                at: now,
                from: d.from,
                bytes: d.bytes,
            });
            return;
        }
        if self.turn.as_ref().is_some_and(|t| t.owns(d.to)) {
            let turn = self.turn.as_mut().expect("just seen");
            if turn.dead {
                self.stats.undeliverable += 1;
                return;
            }
            self.stats.delivered += 1;
            for (from, to, bytes) in turn.receive(now, d.from, d.to, &d.bytes) {
                self.transmit_bytes(from, to, bytes);
            }
            return;
        }
        if d.to == SERVER {
            self.stats.delivered += 1;
            self.registry.handle_datagram(now, d.from, &d.bytes);
            self.drain_registry();
            return;
        }
        match self.nodes.iter().position(|n| n.addr == d.to) {
            Some(i) if !self.nodes[i].peer.is_finished() => {
                self.stats.delivered += 1;
                self.nodes[i].peer.handle_datagram(now, d.from, &d.bytes);
                self.drain_peer(i);
            }
            _ => self.stats.undeliverable += 1,
        }
    }

    fn drain_registry(&mut self) {
        while let Some(t) = self.registry.poll_transmit() {
            self.transmit(SERVER, t);
        }
        while let Some(e) = self.registry.poll_event() {
            self.registry_events.push((self.now, e));
        }
    }

    fn drain_peer(&mut self, i: usize) {
        let from = self.nodes[i].addr;
        let now = self.now;
        while let Some((t, mut plain)) = self.nodes[i].peer.poll_transmit_plain() {
            let plain = (plain.len() == 1).then(|| plain.remove(0));
            if self.nodes[i].peer.relays(t.to) {
                // Through the peer's relay, as the driver does it.
                let bytes = wire::encode(&t.message);
                self.nodes[i].peer.relay_send(now, t.to, &bytes);
                self.relayed
                    .push((from, plain.unwrap_or_else(|| t.message.clone())));
                continue;
            }
            self.transmit_plain(from, t, plain);
        }
        while let Some((to, bytes)) = self.nodes[i].peer.poll_relay_transmit(now) {
            self.transmit_bytes(from, to, bytes);
        }
        while let Some(e) = self.nodes[i].peer.poll_event() {
            self.nodes[i].events.push((self.now, e));
        }
    }

    // ------------------------------------------------------------------ user commands

    /// Runs a user command on peer `i` at the current virtual time, then sends what it
    /// queued and collects its events.
    pub fn command<R>(&mut self, i: usize, f: impl FnOnce(&mut Peer, Instant) -> R) -> R {
        let now = self.now;
        let r = f(&mut self.nodes[i].peer, now);
        self.drain_peer(i);
        r
    }

    /// `connect <peer's id>` on peer `i`; panics if refused.
    pub fn connect(&mut self, i: usize, to: usize) {
        let id = self.id(to);
        let seed = self.seed;
        self.command(i, |p, now| p.connect(now, id))
            .unwrap_or_else(|e| panic!("peer {i}: connect {id} refused: {e} (seed {seed})"));
    }

    /// `accept [id]` on peer `i`; returns whom it accepted; panics if refused.
    pub fn accept(&mut self, i: usize, from: Option<ClientId>) -> ClientId {
        let seed = self.seed;
        self.command(i, |p, now| p.accept(now, from))
            .unwrap_or_else(|e| panic!("peer {i}: accept refused: {e} (seed {seed})"))
    }

    /// `reject [id]` on peer `i`; returns whom it rejected; panics if refused.
    pub fn reject(&mut self, i: usize, from: Option<ClientId>) -> ClientId {
        let seed = self.seed;
        self.command(i, |p, now| p.reject(now, from))
            .unwrap_or_else(|e| panic!("peer {i}: reject refused: {e} (seed {seed})"))
    }

    /// `send [id] text` on peer `i`; returns the message numbers; panics if refused.
    pub fn send(&mut self, i: usize, to: Option<ClientId>, text: &str) -> Vec<u64> {
        let seed = self.seed;
        self.command(i, |p, now| p.send(now, to, text))
            .unwrap_or_else(|e| panic!("peer {i}: send refused: {e} (seed {seed})"))
    }

    /// `terminate [id]` on peer `i`; panics if refused.
    pub fn terminate(&mut self, i: usize, peer: Option<ClientId>) -> ClientId {
        let seed = self.seed;
        self.command(i, |p, now| p.terminate(now, peer))
            .unwrap_or_else(|e| panic!("peer {i}: terminate refused: {e} (seed {seed})"))
    }

    /// `leave` on peer `i`.
    pub fn leave(&mut self, i: usize) {
        self.command(i, |p, now| p.leave(now));
    }

    // ------------------------------------------------------------------ the clock

    /// The next time something happens: a datagram arrives or a timer is due.
    pub fn next_event_time(&self) -> Option<Instant> {
        let mut next = self.in_flight.keys().next().map(|(t, _)| *t);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if !self.down.contains(&SERVER) {
            consider(self.registry.poll_timeout());
        }
        for n in &self.nodes {
            if !self.down.contains(&n.addr) && !n.peer.is_finished() {
                consider(n.peer.poll_timeout());
            }
        }
        next
    }

    /// Moves the clock to the next thing that happens and does it: delivers one datagram,
    /// or runs every timer that is due. Returns false when nothing is left to happen.
    pub fn step(&mut self) -> bool {
        let Some(t) = self.next_event_time() else {
            return false;
        };
        self.steps += 1;
        if t > self.now {
            self.now = t;
        }
        let now = self.now;
        if let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 <= now {
                let d = entry.remove();
                if d.enters_down_link {
                    self.enter_down_link(d);
                } else {
                    self.deliver(d);
                }
                return true;
            }
        }
        if !self.down.contains(&SERVER) && self.registry.poll_timeout().is_some_and(|t| t <= now) {
            self.registry.handle_timeout(now);
            self.drain_registry();
        }
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if self.down.contains(&n.addr) || n.peer.is_finished() {
                continue;
            }
            if n.peer.poll_timeout().is_some_and(|t| t <= now) {
                self.nodes[i].peer.handle_timeout(now);
                self.drain_peer(i);
            }
        }
        true
    }

    /// Runs until `cond` holds (true), or until `limit` of virtual time has passed or nothing
    /// is left to happen (false). Panics after [`MAX_STEPS`] steps: a livelock.
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Sim) -> bool) -> bool {
        let deadline = self.now + limit;
        let mut steps = 0u64;
        loop {
            if cond(self) {
                return true;
            }
            match self.next_event_time() {
                None => return false,
                Some(t) if t > deadline => {
                    self.now = deadline;
                    return false;
                }
                Some(_) => {}
            }
            self.step();
            steps += 1;
            assert!(
                steps <= MAX_STEPS,
                "livelock: {MAX_STEPS} steps at virtual time {:?} (seed {})",
                self.elapsed(),
                self.seed
            );
        }
    }

    /// Like [`Sim::run_until`], but panics (naming `what` and the seed) if `cond` is not
    /// reached within `limit`.
    pub fn expect(&mut self, limit: Duration, what: &str, cond: impl FnMut(&Sim) -> bool) {
        if !self.run_until(limit, cond) {
            panic!(
                "{what}: not reached within {limit:?} (virtual time {:?}, seed {})",
                self.elapsed(),
                self.seed
            );
        }
    }

    /// Does everything that happens in the next `d` of virtual time, and ends at `now + d`.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(d, |_| false);
        // `run_until` stops at the deadline, or earlier when nothing is left to happen.
        self.now = self.now.max(end);
    }

    // ------------------------------------------------------------------ observations

    /// The events of peer `i`, without times.
    pub fn events(&self, i: usize) -> Vec<Event> {
        self.nodes[i]
            .events
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// How many events of peer `i` satisfy `pred`.
    pub fn count(&self, i: usize, pred: impl Fn(&Event) -> bool) -> usize {
        self.nodes[i].events.iter().filter(|(_, e)| pred(e)).count()
    }

    pub fn has(&self, i: usize, pred: impl Fn(&Event) -> bool) -> bool {
        self.count(i, pred) > 0
    }

    /// When peer `i` first emitted an event satisfying `pred`.
    pub fn when(&self, i: usize, pred: impl Fn(&Event) -> bool) -> Option<Instant> {
        self.nodes[i]
            .events
            .iter()
            .find(|(_, e)| pred(e))
            .map(|(t, _)| *t)
    }

    /// Whether peer `i` has registered.
    pub fn registered(&self, i: usize) -> bool {
        self.nodes[i].peer.id().is_some()
    }

    /// The texts peer `i` was shown from `from`, in the order shown, with their numbers.
    pub fn shown(&self, i: usize, from: ClientId) -> Vec<(u64, String)> {
        self.nodes[i]
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Message { from: f, seq, text } if *f == from => Some((*seq, text.clone())),
                _ => None,
            })
            .collect()
    }

    /// The datagrams node `from` handed to the network whose message satisfies `pred`.
    pub fn sent_by(&self, from: SocketAddr, pred: impl Fn(&Message) -> bool) -> Vec<&Record> {
        self.log
            .iter()
            .filter(|r| r.from == from && pred(&r.message))
            .collect()
    }

    /// Registers `n` peers with `config` and runs until all have their ids.
    pub fn add_registered_peers(&mut self, n: usize, config: &PeerConfig) -> Vec<usize> {
        let peers: Vec<usize> = (0..n).map(|_| self.add_peer(config.clone())).collect();
        let all = peers.clone();
        self.expect(Duration::from_secs(120), "registration", move |s| {
            all.iter().all(|&i| s.registered(i))
        });
        peers
    }
}
