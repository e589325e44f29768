//! The "resend or give up" rule, once: every message of the protocol that is resent until
//! answered (`Register`, `Leave`, `Claim`, `List`, `Resolve`, `Lookup`, `ConnectRequest`,
//! `Terminate`, `FileOffer`, `FileGet`, `FileCancel`) keeps a [`Retry`].

use std::time::{Duration, Instant};

/// How many times a message was sent, and when the next send (or the giving up) is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Retry {
    tries: u32,
    next: Instant,
}

/// What a due [`Retry`] says to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Send again: the try is counted and the next one scheduled.
    Resend,
    /// Every try has been made: give up (the `Retry` is left as it was).
    GiveUp,
}

impl Retry {
    /// Sent once (just now); the next try is due at `next`.
    pub fn first(next: Instant) -> Self {
        Retry { tries: 1, next }
    }

    /// A new round with nothing sent yet: its first try is due at `next`.
    pub fn round(next: Instant) -> Self {
        Retry { tries: 0, next }
    }

    /// When [`Retry::poll`] has something to say.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// The rule. Before the deadline, `None`. From it on: [`Step::GiveUp`] once `max` tries
    /// have been made, else [`Step::Resend`], counting the try and scheduling the next one at
    /// `then`.
    pub fn poll(&mut self, now: Instant, max: u32, then: Instant) -> Option<Step> {
        if self.next > now {
            return None;
        }
        if self.tries >= max {
            return Some(Step::GiveUp);
        }
        self.tries += 1;
        self.next = then;
        Some(Step::Resend)
    }

    /// [`Retry::poll`] with a period that doubles at every resend, up to `cap`; `period` is
    /// the one that led here, and is doubled only when a resend is due.
    pub fn poll_doubling(
        &mut self,
        now: Instant,
        max: u32,
        period: &mut Duration,
        cap: Duration,
    ) -> Option<Step> {
        let doubled = (*period * 2).min(cap);
        let step = self.poll(now, max, now + doubled);
        if step == Some(Step::Resend) {
            *period = doubled;
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn nothing_is_due_before_the_deadline() {
        let t0 = Instant::now();
        let mut r = Retry::first(t0 + S);
        assert_eq!(r.poll(t0, 3, t0 + 2 * S), None);
        assert_eq!(r.poll(t0 + S / 2, 3, t0 + 2 * S), None);
        assert_eq!(r.next(), t0 + S);
    }

    #[test]
    fn a_due_resend_is_counted_and_scheduled_at_then() {
        let t0 = Instant::now();
        let mut r = Retry::first(t0 + S);
        assert_eq!(r.poll(t0 + S, 3, t0 + 3 * S), Some(Step::Resend));
        assert_eq!(r.next(), t0 + 3 * S);
        assert_eq!(r.poll(t0 + 2 * S, 3, t0 + 9 * S), None);
    }

    #[test]
    fn it_gives_up_after_max_tries_counting_the_first_send() {
        let t0 = Instant::now();
        let mut r = Retry::first(t0 + S);
        let mut sends = 1;
        let mut now = t0;
        loop {
            now += S;
            match r.poll(now, 4, now + S) {
                Some(Step::Resend) => sends += 1,
                Some(Step::GiveUp) => break,
                None => panic!("due every second"),
            }
        }
        assert_eq!(sends, 4);
        assert_eq!(now, t0 + 4 * S);
        // Giving up changes nothing: asked again, it says the same.
        assert_eq!(r.poll(now + S, 4, now), Some(Step::GiveUp));
    }

    #[test]
    fn a_new_round_sends_max_times_before_giving_up() {
        let t0 = Instant::now();
        let mut r = Retry::round(t0);
        let resends = (0..10)
            .map_while(|k| match r.poll(t0 + k * S, 3, t0 + (k + 1) * S) {
                Some(Step::Resend) => Some(()),
                _ => None,
            })
            .count();
        assert_eq!(resends, 3);
    }

    #[test]
    fn max_one_gives_up_at_the_first_deadline() {
        let t0 = Instant::now();
        let mut r = Retry::first(t0 + S);
        assert_eq!(r.poll(t0 + S, 1, t0 + 2 * S), Some(Step::GiveUp));
    }

    #[test]
    fn a_doubling_period_doubles_at_each_resend_up_to_the_cap() {
        let t0 = Instant::now();
        let mut period = S;
        let mut r = Retry::first(t0 + period);
        let cap = 5 * S;
        assert_eq!(r.poll_doubling(t0, 9, &mut period, cap), None);
        assert_eq!(period, S);
        let mut now = t0 + S;
        let mut periods = Vec::new();
        for _ in 0..4 {
            assert_eq!(
                r.poll_doubling(now, 9, &mut period, cap),
                Some(Step::Resend)
            );
            assert_eq!(r.next(), now + period);
            periods.push(period);
            now = r.next();
        }
        assert_eq!(periods, [2 * S, 4 * S, 5 * S, 5 * S]);
    }

    #[test]
    fn giving_up_leaves_a_doubling_period_alone() {
        let t0 = Instant::now();
        let mut period = S;
        let mut r = Retry::first(t0 + S);
        assert_eq!(
            r.poll_doubling(t0 + S, 1, &mut period, 10 * S),
            Some(Step::GiveUp)
        );
        assert_eq!(period, S);
    }
}
