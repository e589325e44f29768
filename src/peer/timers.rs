//! `Timers`: the deadlines of many objects (sessions, requests, `Terminate`s being resent),
//! in order, so that the soonest is found in O(log n) and only what is due is visited:
//! the cost of `poll_timeout` and `handle_timeout` does not grow with the number of
//! objects waiting.
//!
//! An ordered set of `(deadline, key)`, rather than a binary heap with lazy invalidation:
//! setting a key's deadline removes its old entry at once, so the soonest entry is always a
//! real deadline (`poll_timeout` never wakes the loop for a stale one) and the set holds
//! one entry per key. Each owner keeps the deadline it was last given beside its own state,
//! so that setting an unchanged deadline (after every datagram, for a session that is
//! chatting) costs one comparison.

use std::collections::BTreeSet;
use std::time::Instant;

#[derive(Debug)]
pub(super) struct Timers<K> {
    order: BTreeSet<(Instant, K)>,
}

impl<K: Ord + Copy> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            order: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Copy> Timers<K> {
    /// `key` is next due at `when` (`None`: nothing due). `at` is where its owner keeps
    /// the deadline `key` was last given (`None` at first, and once it is gone): it is
    /// updated here.
    pub fn set(&mut self, key: K, at: &mut Option<Instant>, when: Option<Instant>) {
        if *at == when {
            return;
        }
        if let Some(old) = *at {
            self.order.remove(&(old, key));
        }
        if let Some(when) = when {
            self.order.insert((when, key));
        }
        *at = when;
    }

    /// The soonest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.order.first().map(|&(when, _)| when)
    }

    /// The keys due at `now`, with their deadlines, soonest first. They stay due until set
    /// again.
    pub fn due(&self, now: Instant) -> Vec<(Instant, K)> {
        self.order
            .iter()
            .take_while(|&&(when, _)| when <= now)
            .copied()
            .collect()
    }

    /// Drops the entry of a key whose owner is gone (which `set` should have cleared), so
    /// that it cannot stay due for ever.
    pub fn orphan(&mut self, when: Instant, key: K) {
        self.order.remove(&(when, key));
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
        let (mut one, mut two, mut three) = (None, None, None);
        assert_eq!(t.next(), None);
        t.set(1u32, &mut one, Some(t0 + 5 * s));
        t.set(2, &mut two, Some(t0 + 3 * s));
        assert_eq!(t.next(), Some(t0 + 3 * s));
        // Later: the old entry goes at once.
        t.set(2, &mut two, Some(t0 + 9 * s));
        assert_eq!((two, t.next()), (Some(t0 + 9 * s), Some(t0 + 5 * s)));
        assert_eq!(t.order.len(), 2);
        t.set(1, &mut one, None);
        assert_eq!((one, t.next()), (None, Some(t0 + 9 * s)));
        assert_eq!(t.due(t0 + 8 * s), vec![]);
        t.set(3, &mut three, Some(t0 + 9 * s));
        assert_eq!(t.due(t0 + 9 * s), vec![(t0 + 9 * s, 2), (t0 + 9 * s, 3)]);
        // Due until set again.
        assert_eq!(t.due(t0 + 10 * s).len(), 2);
        t.orphan(t0 + 9 * s, 3);
        assert_eq!(t.due(t0 + 10 * s), vec![(t0 + 9 * s, 2)]);
        t.set(2, &mut two, None);
        three = None;
        t.set(3, &mut three, Some(t0 + 20 * s));
        assert_eq!(t.due(t0 + 10 * s), vec![]);
        assert_eq!(t.order.len(), 1);
    }
}
