//! The server's limits against abuse: how fast one network may register, fairly between
//! its addresses; how many clients one network may hold; how often one client may ask for
//! a `List` page. Part of the state machine: times are the table's nanoseconds, nothing
//! here reads the clock.
//!
//! # Registrations: per prefix, fair to clients that retry
//!
//! New registrations are counted per network prefix (IPv4 /24, IPv6 /56; an IPv4-mapped
//! IPv6 address counts as its IPv4 address), not per address or IP: one host has 65,535
//! ports and a small network a few hundred addresses, all cheap to send from. Each prefix
//! has a token bucket (`register_rate` a second, `register_burst` at once).
//!
//! A bucket alone is first come, first served: a flooder sending a `Register` from a fresh
//! port every 10 ms takes every token as it appears, and a client on the same host that
//! retries once a second never finds one. What tells them apart is that the client
//! *retries from the same address* and the flooder never does (were it to, each of its
//! addresses would be one client, registered once). So:
//!
//! 1. A refused address is remembered in a table of sightings (a fixed array indexed by a
//!    keyed hash of the address, newest wins). A `Register` from an address seen refused
//!    in the last [`STALE`] is a retry: the address joins its prefix's waiting list, a FIFO
//!    of at most [`MAX_WAITING`] addresses (and [`MAX_WAITING_TOTAL`] over all prefixes).
//! 2. Tokens go to the waiting list first. The addresses on it that came back within
//!    [`EXPECTED`] (1.5 s) are expected back and each holds a token: an address on the list
//!    is admitted when it comes back and the bucket holds a token for it and for each of
//!    those ahead of it; an address not on the list only when the bucket holds more tokens
//!    than the list holds. So once a retrying client is on the list, the flood of new
//!    addresses gets nothing until it is served: it waits for the tokens of the addresses
//!    ahead of it, at most `MAX_WAITING / register_rate` seconds (1.6 s at the default 20 a
//!    second), plus one retry. With only the flooder's addresses ahead of it (which do not
//!    come back), it is admitted at its second or third try.
//! 3. An address on the list that stops retrying holds no token after [`EXPECTED`], and is
//!    dropped from the list after [`STALE`].
//!
//! What this does not guarantee: the first refusal of the client must still be in the
//! sightings table when its retry comes, a second later. The table has [`SIGHTING_SLOTS`]
//! slots; a flood of `F` fresh addresses a second overwrites a given slot within a second
//! with probability about `1 - exp(-F / SIGHTING_SLOTS)`: under 2% at 1,000 a second, 14%
//! at 10,000, 99% at 300,000 (then each retry is a new chance). An attacker who *does*
//! retry from each of many addresses is served like that many clients, in turn, until its
//! prefix holds `max_per_prefix` clients.
//!
//! # What a refused address is told
//!
//! An address gets at most one `RateLimited` a second. Addresses on a waiting list are
//! told at that pace; others only while their prefix has notices left ([`NOTICE_RATE`] a
//! second), so that a flood of fresh addresses (perhaps forged, to aim the answers at a
//! victim) is answered a few times a second, not once per datagram.
//!
//! # Memory
//!
//! Buckets for at most [`MAX_PREFIXES`] prefixes. When that many are tracked, a sweep (at
//! most once a second) forgets those that are idle (bucket full again, nobody waiting);
//! until it makes room, new prefixes share one bucket, [`Prefix::Others`] (with its own
//! waiting list, so fairness holds there too). The sightings table is allocated at the
//! first refusal: 768 KiB. Live clients per prefix are counted exactly (one small entry per
//! prefix with clients). `List` buckets exist only for clients that have listed, and go
//! with their client.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use crate::wire::ClientId;

/// Limits that come on top of the registration rate of
/// [`RegistryConfig`](super::RegistryConfig); a struct of their own so that code building a
/// `RegistryConfig` field by field keeps compiling. Given with
/// [`Registry::with_limits`](super::Registry::with_limits).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Most clients in the table from one prefix (IPv4 /24, IPv6 /56); `None`: the larger
    /// of 16 and an eighth of `max_clients`. Like the registration rate, it applies only
    /// when `register_rate` is above 0 (0 means no limit per source).
    pub max_per_prefix: Option<usize>,
    /// `List` pages one registered client may ask for per second, on average; 0 means no
    /// limit. A page asked for beyond it gets no answer (the client asks again a second
    /// later, as for a lost datagram).
    pub list_rate: f64,
    /// `List` pages one client may ask for at once before `list_rate` applies.
    pub list_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_per_prefix: None,
            list_rate: 16.0,
            list_burst: 64,
        }
    }
}

impl Limits {
    /// No limit on `List`, and the default cap per prefix.
    pub fn unlimited_list() -> Self {
        Limits {
            list_rate: 0.0,
            ..Limits::default()
        }
    }

    /// The cap on clients from one prefix, on a server of `max_clients`.
    pub fn per_prefix(&self, max_clients: usize) -> usize {
        self.max_per_prefix
            .unwrap_or_else(|| (max_clients / 8).max(16))
    }
}

/// The network a source address belongs to, for the limits: an IPv4 /24 or an IPv6 /56.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prefix {
    /// The first three bytes of an IPv4 address (or of an IPv4-mapped IPv6 one).
    V4([u8; 3]),
    /// The first seven bytes of an IPv6 address.
    V6([u8; 7]),
    /// Every prefix that found no room among the [`MAX_PREFIXES`] tracked: they share one
    /// registration bucket. (Never the prefix of an address.)
    Others,
}

impl Prefix {
    pub fn of(ip: IpAddr) -> Prefix {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Prefix::V4([a, b, c])
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Prefix::of(IpAddr::V4(v4)),
                None => {
                    let o = v6.octets();
                    Prefix::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6]])
                }
            },
        }
    }
}

/// `10.1.2.0/24`, `2001:db8:0:100::/56`, `other networks`.
impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Prefix::V4([a, b, c]) => write!(f, "{a}.{b}.{c}.0/24"),
            Prefix::V6(p) => {
                let mut o = [0u8; 16];
                o[..7].copy_from_slice(&p);
                write!(f, "{}/56", std::net::Ipv6Addr::from(o))
            }
            Prefix::Others => f.write_str("other networks"),
        }
    }
}

/// Most prefixes with a registration bucket of their own.
pub const MAX_PREFIXES: usize = 65_536;
/// Most addresses on one prefix's waiting list.
pub const MAX_WAITING: usize = 32;
/// Most addresses on all the waiting lists together.
pub const MAX_WAITING_TOTAL: usize = 16_384;
/// Slots of the table of refused addresses (12 bytes each).
pub const SIGHTING_SLOTS: usize = 1 << 16;
/// How long a refusal is remembered, and how long an address stays on a waiting list
/// without coming back: a client retries every second, so this allows for one lost retry.
pub const STALE: u64 = 3_000_000_000;
/// An address on a waiting list that came back within this is expected back soon: it
/// holds a token (one that came back longer ago, perhaps gone, holds none).
pub const EXPECTED: u64 = 1_500_000_000;
/// An address is told `RateLimited` at most this often.
pub const NOTICE_EVERY: u64 = 1_000_000_000;
/// `RateLimited` answers per second (and at once) to addresses of one prefix that are not
/// on its waiting list.
pub const NOTICE_RATE: f64 = 4.0;

const NANOS_PER_MS: u64 = 1_000_000;

/// What the limits say about a `Register` from a new address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Admit,
    /// Over the rate; `tell` says whether to answer `RateLimited` (at most once a second
    /// per address, a few times a second per prefix).
    Refuse {
        tell: bool,
    },
}

/// The state of the limits: registration buckets, waiting lists and sightings; clients per
/// prefix; `List` buckets.
#[derive(Debug)]
pub(super) struct Limiter {
    buckets: HashMap<Prefix, Bucket>,
    /// No sweep of idle buckets before this time.
    next_sweep: u64,
    waiting_total: usize,
    sightings: Sightings,
    /// Live clients per prefix (only prefixes with at least one).
    live: HashMap<Prefix, u32>,
    lists: HashMap<ClientId, ListBucket>,
}

/// A prefix's registration bucket and waiting list.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    /// `RateLimited` answers left for addresses not on the waiting list.
    notices: f64,
    last: u64,
    waiting: VecDeque<Waiter>,
}

#[derive(Debug, Clone, Copy)]
struct Waiter {
    addr: SocketAddr,
    /// Its last `Register`.
    seen: u64,
    /// When it was last told `RateLimited`.
    told: Option<u64>,
}

impl Bucket {
    fn full(burst: f64, now: u64) -> Bucket {
        Bucket {
            tokens: burst,
            notices: NOTICE_RATE,
            last: now,
            waiting: VecDeque::new(),
        }
    }

    fn refill(&mut self, now: u64, rate: f64, burst: f64) {
        let secs = now.saturating_sub(self.last) as f64 / 1e9;
        self.tokens = (self.tokens + secs * rate).min(burst);
        self.notices = (self.notices + secs * NOTICE_RATE).min(NOTICE_RATE);
        self.last = self.last.max(now);
    }

    /// Drops the addresses that stopped coming back; returns how many.
    fn drop_stale(&mut self, now: u64) -> usize {
        let before = self.waiting.len();
        self.waiting.retain(|w| now.saturating_sub(w.seen) < STALE);
        before - self.waiting.len()
    }
}

/// A token bucket of `List` pages for one client.
#[derive(Debug, Clone, Copy)]
struct ListBucket {
    tokens: f64,
    last: u64,
}

impl Limiter {
    /// `key` makes the hash of the sightings table unpredictable to senders.
    pub(super) fn new(key: u64) -> Limiter {
        Limiter {
            buckets: HashMap::new(),
            next_sweep: 0,
            waiting_total: 0,
            sightings: Sightings {
                key,
                slots: Vec::new(),
            },
            live: HashMap::new(),
            lists: HashMap::new(),
        }
    }

    /// Whether a `Register` from `addr`, which has no entry, may register now (`rate`
    /// above 0). Spends a token when it may.
    pub(super) fn admit(&mut self, now: u64, addr: SocketAddr, rate: f64, burst: f64) -> Verdict {
        let prefix = self.tracked(Prefix::of(addr.ip()), now, rate, burst);
        let b = self
            .buckets
            .entry(prefix)
            .or_insert_with(|| Bucket::full(burst, now));
        b.refill(now, rate, burst);
        self.waiting_total -= b.drop_stale(now);
        // A waiter seen lately is expected back within the second: it holds a token.
        let expected = |w: &Waiter| now.saturating_sub(w.seen) < EXPECTED;
        if let Some(k) = b.waiting.iter().position(|w| w.addr == addr) {
            // On the list: served when the tokens cover it and those ahead of it.
            let ahead = b.waiting.iter().take(k).filter(|w| expected(w)).count();
            if b.tokens >= (ahead + 1) as f64 {
                b.tokens -= 1.0;
                b.waiting.remove(k);
                self.waiting_total -= 1;
                return Verdict::Admit;
            }
            let w = &mut b.waiting[k];
            w.seen = now;
            let tell = w.told.is_none_or(|t| now.saturating_sub(t) >= NOTICE_EVERY);
            if tell {
                w.told = Some(now);
            }
            return Verdict::Refuse { tell };
        }
        let held = b.waiting.iter().filter(|w| expected(w)).count();
        if b.tokens >= (held + 1) as f64 {
            b.tokens -= 1.0;
            return Verdict::Admit;
        }
        // Refused. A retry joins the waiting list if there is room.
        let seen = self.sightings.see(addr, now);
        let room = b.waiting.len() < MAX_WAITING && self.waiting_total < MAX_WAITING_TOTAL;
        if seen.retry && room {
            b.waiting.push_back(Waiter {
                addr,
                seen: now,
                told: seen.told,
            });
            self.waiting_total += 1;
        }
        let may_tell = seen.may_tell && (seen.retry && room || b.notices >= 1.0);
        if may_tell {
            if !(seen.retry && room) {
                b.notices -= 1.0;
            }
            if let Some(w) = b.waiting.back_mut().filter(|w| w.addr == addr) {
                w.told = Some(now);
            }
            self.sightings.told(addr, now);
        }
        Verdict::Refuse { tell: may_tell }
    }

    /// The prefix whose bucket `prefix` uses: itself, or [`Prefix::Others`] when as many
    /// prefixes as allowed are tracked and none is idle.
    fn tracked(&mut self, prefix: Prefix, now: u64, rate: f64, burst: f64) -> Prefix {
        if self.buckets.len() < MAX_PREFIXES || self.buckets.contains_key(&prefix) {
            return prefix;
        }
        if now >= self.next_sweep {
            // At most once a second: the sweep looks at every bucket.
            self.next_sweep = now.saturating_add(1_000_000_000);
            let mut freed_waiters = 0;
            self.buckets.retain(|&p, b| {
                b.refill(now, rate, burst);
                freed_waiters += b.drop_stale(now);
                p == Prefix::Others || b.tokens < burst || !b.waiting.is_empty()
            });
            self.waiting_total -= freed_waiters;
            if self.buckets.len() < MAX_PREFIXES {
                return prefix;
            }
        }
        Prefix::Others
    }

    /// Clients in the table from `addr`'s prefix.
    pub(super) fn live(&self, addr: SocketAddr) -> usize {
        self.live
            .get(&Prefix::of(addr.ip()))
            .map_or(0, |&n| n as usize)
    }

    /// A client joined from `addr`.
    pub(super) fn joined(&mut self, addr: SocketAddr) {
        *self.live.entry(Prefix::of(addr.ip())).or_insert(0) += 1;
    }

    /// Client `id`, at `addr`, left the table.
    pub(super) fn left(&mut self, id: ClientId, addr: SocketAddr) {
        let prefix = Prefix::of(addr.ip());
        if let Some(n) = self.live.get_mut(&prefix) {
            *n -= 1;
            if *n == 0 {
                self.live.remove(&prefix);
            }
        }
        if !self.lists.is_empty() {
            self.lists.remove(&id);
        }
    }

    /// Whether client `id` may have a `List` page now (spends a token if so).
    pub(super) fn allow_list(&mut self, id: ClientId, now: u64, rate: f64, burst: f64) -> bool {
        if rate <= 0.0 {
            return true;
        }
        let b = self.lists.entry(id).or_insert(ListBucket {
            tokens: burst,
            last: now,
        });
        let secs = now.saturating_sub(b.last) as f64 / 1e9;
        b.tokens = (b.tokens + secs * rate).min(burst);
        b.last = b.last.max(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How many prefixes have a registration bucket, and how many addresses wait (for
    /// tests of the memory bound).
    #[cfg(test)]
    fn tracked_counts(&self) -> (usize, usize) {
        let waiting = self.buckets.values().map(|b| b.waiting.len()).sum();
        assert_eq!(waiting, self.waiting_total, "the waiting count drifted");
        (self.buckets.len(), waiting)
    }
}

/// Addresses refused lately: a direct-mapped table indexed by a keyed hash of the address,
/// the newest refusal winning a slot. Bounded memory whatever the flood; a slot's old
/// address is forgotten when another takes it (see the module documentation for the odds).
#[derive(Debug)]
struct Sightings {
    key: u64,
    /// Empty until the first refusal.
    slots: Vec<Sighting>,
}

/// One refused address: `tag` (never 0) tells it from others of its slot; times are in
/// milliseconds of the table's clock, wrapping.
#[derive(Debug, Clone, Copy, Default)]
struct Sighting {
    tag: u32,
    seen: u32,
    told: u32,
}

/// What the sightings table knew of an address when it was refused again.
struct Seen {
    /// It was refused within [`STALE`] before: this is a retry.
    retry: bool,
    /// It may be told `RateLimited` (not told in the last second, as far as the table can
    /// say; when another address took its slot, it cannot, and the answer is no).
    may_tell: bool,
    /// When it was last told, if known.
    told: Option<u64>,
}

impl Sightings {
    fn slot(&self, addr: SocketAddr) -> (usize, u32) {
        let mut h = DefaultHasher::new();
        self.key.hash(&mut h);
        addr.hash(&mut h);
        let h = h.finish();
        ((h as usize) % SIGHTING_SLOTS, (h >> 32) as u32 | 1)
    }

    /// Records a refusal of `addr` at `now`.
    fn see(&mut self, addr: SocketAddr, now: u64) -> Seen {
        if self.slots.is_empty() {
            self.slots = vec![Sighting::default(); SIGHTING_SLOTS];
        }
        let (i, tag) = self.slot(addr);
        let ms = (now / NANOS_PER_MS) as u32;
        let s = &mut self.slots[i];
        let fresh = s.tag != 0 && u64::from(ms.wrapping_sub(s.seen)) < STALE / NANOS_PER_MS;
        let seen = if fresh && s.tag == tag {
            let since_told = u64::from(ms.wrapping_sub(s.told)) * NANOS_PER_MS;
            Seen {
                retry: true,
                may_tell: since_told >= NOTICE_EVERY,
                told: now.checked_sub(since_told),
            }
        } else if fresh {
            // Another address's: this one may have been told and forgotten.
            *s = Sighting {
                tag,
                seen: ms,
                told: ms,
            };
            return Seen {
                retry: false,
                may_tell: false,
                told: Some(now),
            };
        } else {
            s.tag = tag;
            s.told = ms.wrapping_sub((NOTICE_EVERY / NANOS_PER_MS) as u32);
            Seen {
                retry: false,
                may_tell: true,
                told: None,
            }
        };
        s.seen = ms;
        seen
    }

    /// `addr` was told `RateLimited` at `now`.
    fn told(&mut self, addr: SocketAddr, now: u64) {
        let (i, tag) = self.slot(addr);
        if let Some(s) = self.slots.get_mut(i).filter(|s| s.tag == tag) {
            s.told = (now / NANOS_PER_MS) as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((a, port))
    }

    #[test]
    fn prefixes_are_slash_24_and_slash_56_and_mapped_addresses_count_as_ipv4() {
        let p = |s: &str| Prefix::of(s.parse::<IpAddr>().unwrap());
        assert_eq!(p("10.1.2.3"), p("10.1.2.250"));
        assert_ne!(p("10.1.2.3"), p("10.1.3.3"));
        assert_eq!(p("::ffff:10.1.2.9"), p("10.1.2.3"));
        assert_eq!(p("2001:db8:0:1ff::1"), p("2001:db8:0:100:ffff::"));
        assert_ne!(p("2001:db8:0:200::1"), p("2001:db8:0:100::1"));
        assert_eq!(p("10.1.2.3").to_string(), "10.1.2.0/24");
        assert_eq!(p("2001:db8:0:1ff::1").to_string(), "2001:db8:0:100::/56");
    }

    /// Buckets for at most `MAX_PREFIXES` prefixes (plus the shared one), and waiting
    /// lists of at most `MAX_WAITING_TOTAL` addresses, whatever comes.
    #[test]
    fn memory_stays_bounded_under_registrations_from_many_prefixes() {
        let mut l = Limiter::new(7);
        let mut now = 0;
        // Every prefix spends its one token, then each address retries (refused, and on a
        // waiting list).
        for round in 0..3u64 {
            for i in 0..(MAX_PREFIXES as u32 + 5000) {
                let [_, a, b, c] = i.to_be_bytes();
                let addr = v4([10 + a, b, c, 1], 1000 + round as u16);
                l.admit(now, addr, 0.001, 1.0);
                l.admit(now, addr, 0.001, 1.0);
            }
            now += SEC / 2;
        }
        let (prefixes, waiting) = l.tracked_counts();
        assert!(prefixes <= MAX_PREFIXES + 1, "{prefixes} prefixes");
        assert!(waiting <= MAX_WAITING_TOTAL, "{waiting} waiting");
        assert!(l.buckets.contains_key(&Prefix::Others));
        // Once they are idle (full buckets, nobody waiting), new prefixes get their own.
        now += 2000 * SEC;
        assert_eq!(
            l.admit(now, v4([99, 0, 0, 1], 1), 0.001, 1.0),
            Verdict::Admit
        );
        assert!(l
            .buckets
            .contains_key(&Prefix::of(v4([99, 0, 0, 1], 1).ip())));
        let (prefixes, waiting) = l.tracked_counts();
        assert!(prefixes < 10, "{prefixes} prefixes kept after the sweep");
        assert_eq!(waiting, 0);
    }

    /// An address told `RateLimited` is not told again within a second, even when the
    /// sightings table forgot it because another address took its slot.
    #[test]
    fn a_forgotten_address_is_not_told_twice_within_a_second() {
        let mut s = Sightings {
            key: 1,
            slots: Vec::new(),
        };
        let a = v4([10, 0, 0, 1], 1);
        let (slot, _) = {
            s.see(a, 0);
            s.slot(a)
        };
        s.told(a, 0);
        // Another address with the same slot (one in 65,536 has it).
        let b = (1..u32::MAX)
            .map(|i| v4(i.to_be_bytes(), 2))
            .find(|&b| s.slot(b).0 == slot)
            .expect("a colliding address");
        s.see(b, SEC / 10);
        let again = s.see(a, SEC / 5);
        assert!(!again.may_tell && !again.retry);
        // Later than a second after, it may be told.
        let later = s.see(a, 2 * SEC);
        assert!(later.may_tell && later.retry);
    }
}
