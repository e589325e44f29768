//! What the parts of a [`Peer`](super::Peer) produce: datagrams to send and events to show,
//! queued in the order they were made, and a count of the inputs they dropped. Every part
//! writes into one `&mut Outputs` that it is handed; the peer drains it with
//! `poll_transmit` and `poll_event`. The file transfers keep an `Outputs` of their own,
//! drained after the peer's (chat goes first).

use std::collections::VecDeque;
use std::net::SocketAddr;

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
