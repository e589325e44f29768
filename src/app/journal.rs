//! The message history as the client sees it: turns the events of a [`Peer`](crate::peer::Peer) into the
//! entries of a [`History`], and keeps each entry's delivery state up to date.
//!
//! Outgoing messages are matched to their entries by (peer, message number) for the life
//! of a session; queued messages by the order they were queued for a target. A
//! conversation is keyed by the peer's name when it has one (so that it survives a change
//! of id), else by its id.

use std::collections::{HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::app::render::Names;
use crate::app::store::{conversation_key, Delivery, Direction, Entry, History};
use crate::peer::{Event, Target};
use crate::wire::ClientId;

/// A history being kept up to date from events.
pub struct Journal {
    history: History,
    /// Outgoing messages of open sessions: (peer, seq) -> (conversation, entry).
    sent: HashMap<(ClientId, u64), (String, u64)>,
    /// Queued messages, per target key, oldest first: (conversation, entry).
    queued: HashMap<String, VecDeque<(String, u64)>>,
}

/// A mark for a delivery state, as shown in history lines.
pub fn mark(delivery: Delivery) -> &'static str {
    match delivery {
        Delivery::Queued => "(queued)",
        Delivery::Sent => "(sent, not confirmed)",
        Delivery::Delivered => "\u{2713}",
        Delivery::Undelivered => "\u{2717} NOT delivered",
        Delivery::Received => "",
    }
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Journal {
    pub fn new(history: History) -> Journal {
        Journal {
            history,
            sent: HashMap::new(),
            queued: HashMap::new(),
        }
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn history_mut(&mut self) -> &mut History {
        &mut self.history
    }

    /// The conversation with peer `id`.
    pub fn key_of_peer(&self, names: &dyn Names, id: ClientId) -> String {
        conversation_key(names.name_of(id), id)
    }

    /// The conversation a target names.
    pub fn key_of_target(&self, names: &dyn Names, target: &Target) -> String {
        match target {
            Target::Name(n) => conversation_key(Some(n), 0),
            Target::Id(id) => self.key_of_peer(names, *id),
        }
    }

    /// The last `count` entries of a conversation, oldest first.
    pub fn last(&self, key: &str, count: usize) -> Vec<&Entry> {
        self.history.last(key, count)
    }

    /// Links messages queued by an earlier run (and given back to the peer with
    /// [`Peer::restore_queued`](crate::peer::Peer::restore_queued)) to their history entries: the last `count` entries still
    /// marked queued in the target's conversation.
    pub fn restore_queued(&mut self, names: &dyn Names, target: &Target, count: usize) {
        let conv = self.key_of_target(names, target);
        let entries: Vec<u64> = self
            .history
            .last(&conv, usize::MAX)
            .into_iter()
            .filter(|e| e.delivery == Delivery::Queued)
            .map(|e| e.n)
            .collect();
        let start = entries.len().saturating_sub(count);
        let q = self.queued.entry(target.key()).or_default();
        for n in &entries[start..] {
            q.push_back((conv.clone(), *n));
        }
    }

    /// Records what `ev` says about messages.
    pub fn observe(&mut self, names: &dyn Names, ev: &Event, now: SystemTime) {
        let at = millis(now);
        match ev {
            Event::Connected { peer, .. } => {
                // Numbers start again in a new session.
                self.sent.retain(|(p, _), _| p != peer);
            }
            Event::Sent { peer, seq, text } => {
                if self.sent.contains_key(&(*peer, *seq)) {
                    return; // a queued message, recorded when it was queued
                }
                let conv = self.key_of_peer(names, *peer);
                let n = self.history.record(
                    &conv,
                    at,
                    Direction::Out,
                    Some(*peer),
                    text,
                    Delivery::Sent,
                );
                self.sent.insert((*peer, *seq), (conv, n));
            }
            Event::Message { from, text, .. } => {
                let conv = self.key_of_peer(names, *from);
                self.history.record(
                    &conv,
                    at,
                    Direction::In,
                    Some(*from),
                    text,
                    Delivery::Received,
                );
            }
            Event::Delivered { peer, seq } => self.settle(*peer, *seq, Delivery::Delivered),
            Event::Undelivered { peer, seq } => self.settle(*peer, *seq, Delivery::Undelivered),
            Event::Queued { to, text } => {
                let conv = self.key_of_target(names, to);
                let id = match to {
                    Target::Id(id) => Some(*id),
                    Target::Name(_) => None,
                };
                let n = self
                    .history
                    .record(&conv, at, Direction::Out, id, text, Delivery::Queued);
                self.queued
                    .entry(to.key())
                    .or_default()
                    .push_back((conv, n));
            }
            Event::Dequeued { to, peer, seqs } => {
                let q = self.queued.entry(to.key()).or_default();
                for seq in seqs {
                    if let Some((conv, n)) = q.pop_front() {
                        self.history.set_delivery(&conv, n, Delivery::Sent);
                        self.sent.insert((*peer, *seq), (conv, n));
                    }
                }
            }
            Event::QueueDropped { to, count, .. } => {
                let q = self.queued.entry(to.key()).or_default();
                for _ in 0..*count {
                    if let Some((conv, n)) = q.pop_front() {
                        self.history.set_delivery(&conv, n, Delivery::Undelivered);
                    }
                }
            }
            _ => {}
        }
    }

    fn settle(&mut self, peer: ClientId, seq: u64, delivery: Delivery) {
        if let Some((conv, n)) = self.sent.remove(&(peer, seq)) {
            self.history.set_delivery(&conv, n, delivery);
        }
    }
}
