//! What the parts of a [`Peer`](super::Peer) produce: datagrams to send and events to show,
//! queued in the order they were made, and a count of the inputs they dropped. Every part
//! writes into one `&mut Outputs` that it is handed; the peer drains it with
//! `poll_transmit` and `poll_event`. The file transfers keep an `Outputs` of their own,
//! drained after the peer's (chat goes first).
//!
//! Also here, the two ways a flood is kept off the screen and the wire: the answer
//! [limit](Outputs::limit) (while a datagram from an address that has not proved it
//! receives is handled, what goes back to it may not exceed a budget of bytes), and
//! [`Tally`] and [`Seen`], which turn many events into one.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::debug;

use super::event::Event;
use crate::wire::{self, Message, Transmit};

/// The answers to `to` may total `budget` more bytes.
#[derive(Debug, Clone, Copy)]
struct Limit {
    to: SocketAddr,
    budget: usize,
}

#[derive(Default)]
pub(super) struct Outputs {
    transmits: VecDeque<Transmit>,
    /// Transmits taken by `poll_transmit` so far: the position of `transmits[0]`.
    polled: u64,
    events: VecDeque<Event>,
    /// Datagrams that were decodable but matched nothing.
    ignored: u64,
    limit: Option<Limit>,
    /// Messages not sent because they did not fit in a limit.
    withheld: u64,
}

impl Outputs {
    /// Queues `message` for `to`, unless a [limit](Outputs::limit) on `to` has no room left
    /// for it (then it is counted and logged, and dropped).
    pub fn transmit(&mut self, to: SocketAddr, message: Message) {
        if let Some(limit) = self.limit.as_mut().filter(|l| l.to == to) {
            let cost = wire::encoded_len(&message);
            if cost > limit.budget {
                self.withheld += 1;
                debug!(
                    "{to}: not sent (it has not proved it receives; {cost} bytes, {} left of what it sent): {message:?}",
                    limit.budget
                );
                return;
            }
            limit.budget -= cost;
        }
        self.transmits.push_back(Transmit { to, message });
    }

    /// From now on, what is queued for `to` may total `budget` bytes (each message counted
    /// as if it went alone, header included) until [`Outputs::unlimit`].
    pub fn limit(&mut self, to: SocketAddr, budget: usize) {
        self.limit = Some(Limit { to, budget });
    }

    /// Ends the limit; returns the bytes it had left (0 without one).
    pub fn unlimit(&mut self) -> usize {
        self.limit.take().map_or(0, |l| l.budget)
    }

    /// Messages not sent because they did not fit in a limit.
    pub fn withheld(&self) -> u64 {
        self.withheld
    }

    pub fn event(&mut self, event: Event) {
        self.events.push_back(event);
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.transmits.pop_front()?;
        self.polled += 1;
        Some(t)
    }

    /// The next transmit, left in the queue.
    pub fn peek_transmit(&self) -> Option<&Transmit> {
        self.transmits.front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The position the next transmit will have, counted from the first transmit ever
    /// queued (for [`Outputs::queued_mut`]).
    pub fn next_position(&self) -> u64 {
        self.polled + self.transmits.len() as u64
    }

    /// The transmit at `position`, if it has not been taken yet (so that an acknowledgement
    /// can be merged into it).
    pub fn queued_mut(&mut self, position: Option<u64>) -> Option<&mut Transmit> {
        let index = position?.checked_sub(self.polled)?;
        self.transmits.get_mut(usize::try_from(index).ok()?)
    }

    /// Counts and logs a datagram from `from` that matched nothing.
    pub fn ignore(&mut self, from: SocketAddr, msg: &Message) {
        self.ignored += 1;
        debug!("{from}: ignored {msg:?}");
    }

    pub fn ignored(&self) -> u64 {
        self.ignored
    }
}

/// Things not shown one by one (connection requests past the bound, ...), counted and
/// shown as one event at most once per `interval`: the first at once, the next ones
/// summing up what came meanwhile.
#[derive(Debug)]
pub(super) struct Tally {
    interval: Duration,
    /// Counted since the last event.
    count: u64,
    /// Counted in all.
    total: u64,
    /// When the next event is due, while `count` is not zero.
    due: Option<Instant>,
    /// When the last event went out.
    last: Option<Instant>,
}

impl Tally {
    pub fn new(interval: Duration) -> Self {
        Tally {
            interval,
            count: 0,
            total: 0,
            due: None,
            last: None,
        }
    }

    /// Counts one more at `now`.
    pub fn add(&mut self, now: Instant) {
        self.count += 1;
        self.total += 1;
        if self.due.is_none() {
            let earliest = self.last.map_or(now, |last| last + self.interval);
            self.due = Some(earliest.max(now));
        }
    }

    /// When [`Tally::take_due`] has a count to give.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }

    /// The count to show now, if its time has come (and it is reset).
    pub fn take_due(&mut self, now: Instant) -> Option<u64> {
        if self.due? > now {
            return None;
        }
        self.due = None;
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

/// The keys already reported once (so that each is reported once), the newest `capacity`
/// of them: memory stays bounded whatever the number of keys, at the price of reporting
/// again one forgotten long ago.
#[derive(Debug)]
pub(super) struct Seen<K> {
    set: HashSet<K>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Copy> Seen<K> {
    pub fn new(capacity: usize) -> Self {
        Seen {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn contains(&self, key: &K) -> bool {
        self.set.contains(key)
    }

    /// Remembers `key`, forgetting the oldest if full. True if it was not known.
    pub fn insert(&mut self, key: K) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn a_limit_drops_what_does_not_fit_for_its_address_only() {
        let mut out = Outputs::default();
        let ack = Message::TerminateAck {
            from: 1,
            session: 2,
        };
        let cost = wire::encoded_len(&ack);
        assert_eq!(cost, wire::encode(&ack).len());
        out.limit(addr(1), 2 * cost + 1);
        for _ in 0..3 {
            out.transmit(addr(1), ack.clone());
            out.transmit(addr(2), ack.clone());
        }
        assert_eq!(out.unlimit(), 1);
        out.transmit(addr(1), ack.clone());
        let to: Vec<SocketAddr> = std::iter::from_fn(|| out.poll_transmit())
            .map(|t| t.to)
            .collect();
        assert_eq!(to.iter().filter(|&&a| a == addr(1)).count(), 3);
        assert_eq!(to.iter().filter(|&&a| a == addr(2)).count(), 3);
        assert_eq!(out.withheld(), 1);
    }

    #[test]
    fn a_tally_shows_at_once_then_at_most_once_per_interval() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Tally::new(5 * s);
        assert_eq!(t.poll_timeout(), None);
        t.add(t0);
        assert_eq!(t.poll_timeout(), Some(t0));
        assert_eq!(t.take_due(t0), Some(1));
        for k in 1..=300 {
            t.add(t0 + s * k / 100);
        }
        assert_eq!(t.poll_timeout(), Some(t0 + 5 * s));
        assert_eq!(t.take_due(t0 + 4 * s), None);
        assert_eq!(t.take_due(t0 + 5 * s), Some(300));
        assert_eq!(t.poll_timeout(), None);
        // Quiet for long: the next one is shown at once again.
        t.add(t0 + 60 * s);
        assert_eq!(t.take_due(t0 + 60 * s), Some(1));
        assert_eq!(t.total(), 302);
    }

    #[test]
    fn seen_remembers_the_newest_keys_only() {
        let mut seen = Seen::new(2);
        assert!(seen.insert(1));
        assert!(!seen.insert(1));
        assert!(seen.insert(2));
        assert!(seen.insert(3));
        assert!(!seen.contains(&1));
        assert!(seen.contains(&3));
        assert_eq!(seen.set.len(), 2);
    }
}
