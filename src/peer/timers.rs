//! `Timers`: the deadlines of many objects (sessions, requests, `Terminate`s being resent),
//! in order, so that the soonest is found in O(log n) and only what is due is visited:
//! the cost of `poll_timeout` and `handle_timeout` does not grow with the number of
//! objects waiting.
//!
//! An ordered set of `(deadline, key)` plus each key's current deadline, rather than a
//! binary heap with lazy invalidation: setting a key's deadline removes its old entry at
//! once, so the soonest entry is always a real deadline (`poll_timeout` never wakes the
//! loop for a stale one) and the set never holds more than one entry per key.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

#[derive(Debug)]
pub(super) struct Timers<K> {
    order: BTreeSet<(Instant, K)>,
    at: HashMap<K, Instant>,
}

impl<K: Ord + Hash + Copy> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            order: BTreeSet::new(),
            at: HashMap::new(),
        }
    }
}

impl<K: Ord + Hash + Copy> Timers<K> {
    /// `key` is next due at `when` (`None`: nothing due).
    pub fn set(&mut self, key: K, when: Option<Instant>) {
        let old = self.at.get(&key).copied();
        if old == when {
            return;
        }
        if let Some(old) = old {
            self.order.remove(&(old, key));
        }
        match when {
            Some(when) => {
                self.at.insert(key, when);
                self.order.insert((when, key));
            }
            None => {
                self.at.remove(&key);
            }
        }
    }

    /// The soonest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.order.first().map(|&(when, _)| when)
    }

    /// Takes out every key due at `now` (their deadlines are cleared: set them again once
    /// handled), soonest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<K> {
        let mut due = Vec::new();
        while let Some(&(when, key)) = self.order.first() {
            if when > now {
                break;
            }
            self.order.pop_first();
            self.at.remove(&key);
            due.push(key);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_soonest_deadline_is_next_and_a_new_deadline_replaces_the_old() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Timers::default();
        assert_eq!(t.next(), None);
        t.set(1u32, Some(t0 + 5 * s));
        t.set(2, Some(t0 + 3 * s));
        assert_eq!(t.next(), Some(t0 + 3 * s));
        // Later: the old entry goes at once.
        t.set(2, Some(t0 + 9 * s));
        assert_eq!(t.next(), Some(t0 + 5 * s));
        assert_eq!(t.at.len(), 2);
        assert_eq!(t.order.len(), 2);
        t.set(1, None);
        assert_eq!(t.next(), Some(t0 + 9 * s));
        assert_eq!(t.take_due(t0 + 8 * s), Vec::<u32>::new());
        t.set(3, Some(t0 + 9 * s));
        assert_eq!(t.take_due(t0 + 9 * s), vec![2, 3]);
        assert_eq!((t.next(), t.at.len()), (None, 0));
    }
}
