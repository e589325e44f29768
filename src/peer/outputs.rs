//! What the parts of a [`Peer`](super::Peer) produce: datagrams to send and events to show,
//! queued in the order they were made, and a count of the inputs they dropped. Every part
//! writes into one `&mut Outputs` that it is handed; the peer drains it with
//! `poll_transmit` and `poll_event`. The file transfers keep an `Outputs` of their own,
//! drained after the peer's (chat goes first).
//!
//! Also here, [`Tally`], which turns many events of a flood into one.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::debug;

use super::event::Event;
use crate::wire::{Message, Transmit};

#[derive(Default)]
pub(super) struct Outputs {
    transmits: VecDeque<Transmit>,
    /// Transmits taken by `poll_transmit` so far: the position of `transmits[0]`.
    polled: u64,
    events: VecDeque<Event>,
    /// Datagrams that were decodable but matched nothing.
    ignored: u64,
}

impl Outputs {
    pub fn transmit(&mut self, to: SocketAddr, message: Message) {
        self.transmits.push_back(Transmit { to, message });
    }

    pub fn event(&mut self, event: Event) {
        self.events.push_back(event);
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.transmits.pop_front()?;
        self.polled += 1;
        Some(t)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
