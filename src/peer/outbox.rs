//! The outbox: messages for peers that are not connected, queued per target, and when to
//! try again to reach each target. Starting the attempts (a `connect` or a `Resolve`) and
//! sending the queue once a session is open are the peer's: the outbox keeps the books.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::event::{Event, Target};
use super::outputs::Outputs;
use crate::wire::ClientId;

/// Messages queued for a peer that is not connected, and the next attempt to reach it.
struct Pursuit {
    target: Target,
    texts: VecDeque<String>,
    /// When to try to connect again; `None` while an attempt is under way.
    next_try: Option<Instant>,
}

/// Every queue, by [`Target::key`]. See the module documentation.
pub(super) struct Outbox {
    queues: BTreeMap<String, Pursuit>,
    /// How long to wait before trying again to reach a target.
    retry: Duration,
}

impl Outbox {
    /// `retry`: how long an attempt that ended without a session waits for the next.
    pub fn new(retry: Duration) -> Self {
        Outbox {
            queues: BTreeMap::new(),
            retry,
        }
    }

    /// The messages waiting, per target, oldest first.
    pub fn list(&self) -> Vec<(Target, Vec<String>)> {
        self.queues
            .values()
            .map(|p| (p.target.clone(), p.texts.iter().cloned().collect()))
            .collect()
    }

    /// Queues `text` for `target`; a new queue is due for an attempt at once. `announce`:
    /// tell the user (a `Queued` event).
    pub fn push(
        &mut self,
        now: Instant,
        target: Target,
        text: String,
        announce: bool,
        out: &mut Outputs,
    ) {
        let pursuit = self.queues.entry(target.key()).or_insert_with(|| Pursuit {
            target: target.clone(),
            texts: VecDeque::new(),
            next_try: Some(now),
        });
        pursuit.texts.push_back(text.clone());
        if announce {
            out.event(Event::Queued { to: target, text });
        }
    }

    /// Drops the queue of `target`, telling the user why; returns how many messages it
    /// held, or `None` if there was none.
    pub fn drop(&mut self, target: &Target, reason: &str, out: &mut Outputs) -> Option<usize> {
        let p = self.queues.remove(&target.key())?;
        let count = p.texts.len();
        out.event(Event::QueueDropped {
            to: p.target,
            count,
            reason: reason.to_string(),
        });
        Some(count)
    }

    /// The keys of the queues for peer `id`, whose name (if known) is `name`.
    pub fn keys_for(&self, id: ClientId, name: Option<&str>) -> Vec<String> {
        self.queues
            .iter()
            .filter(|(_, p)| p.target.is(id, name))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The targets of the queues for peer `id`, whose name (if known) is `name`.
    pub fn targets_for(&self, id: ClientId, name: Option<&str>) -> Vec<Target> {
        self.queues
            .values()
            .filter(|p| p.target.is(id, name))
            .map(|p| p.target.clone())
            .collect()
    }

    /// Whether anything waits for peer `id`, whose name (if known) is `name`.
    pub fn has_queue_for(&self, id: ClientId, name: Option<&str>) -> bool {
        self.queues.values().any(|p| p.target.is(id, name))
    }

    /// Takes the queue `key` out to send it: its target and its messages, oldest first.
    pub fn take(&mut self, key: &str) -> (Target, VecDeque<String>) {
        let p = self.queues.remove(key).expect("a queue that is listed");
        (p.target, p.texts)
    }

    /// The keys of the queues whose next attempt is due.
    pub fn due(&self, now: Instant) -> Vec<String> {
        self.queues
            .iter()
            .filter(|(_, p)| p.next_try.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The target of queue `key`, which must exist.
    pub fn target(&self, key: &str) -> Target {
        self.queues[key].target.clone()
    }

    /// An attempt to reach the target of queue `key` is under way: no timer until it ends.
    pub fn attempting(&mut self, key: &str) {
        if let Some(p) = self.queues.get_mut(key) {
            p.next_try = None;
        }
    }

    /// An attempt to reach the target of queue `key` failed: try again later.
    pub fn retry_later(&mut self, now: Instant, key: &str) {
        let retry = now + self.retry;
        if let Some(p) = self.queues.get_mut(key) {
            p.next_try = Some(retry);
        }
    }

    /// Schedules the next attempt for every queue whose attempt ended without a session:
    /// one with no timer for which `trying` (given its key and target) is false.
    pub fn retry_idle(&mut self, now: Instant, trying: impl Fn(&str, &Target) -> bool) {
        let retry = now + self.retry;
        for (key, p) in self.queues.iter_mut() {
            if p.next_try.is_none() && !trying(key, &p.target) {
                p.next_try = Some(retry);
            }
        }
    }

    /// The next attempt due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queues.values().filter_map(|p| p.next_try).min()
    }
}
