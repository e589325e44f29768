//! When the congestion window must shrink: round trips, the path's minimum round trip, the
//! standing queue, and loss that is congestion rather than noise. See the module
//! documentation of [`crate::congestion`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What a round trip showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Slow start is over: a queue began to stand (HyStart++'s delay increase).
    SlowStartDone,
    /// A standing queue above the target: shrink by [`super::DELAY_BETA`].
    Delay,
    /// A standing queue more than [`DEEP_QUEUE`] times the target (the link slowed down,
    /// or slow start overshot): shrink by half.
    DeepQueue,
    /// Heavy loss in one round: shrink by the controller's own factor.
    Loss,
}

/// A standing queue this many times the target is a [`Signal::DeepQueue`].
pub const DEEP_QUEUE: u32 = 4;

/// Most datagrams lost in a round that are still taken for noise: 1 in 20.
const HEAVY_LOSS_DIVISOR: u64 = 20;
/// Fewer losses than this in a round are never congestion on their own.
const HEAVY_LOSS_MIN: u64 = 4;
/// Rounds in a row with no standing queue before [`Signals::no_queue`] says so.
pub const EMPTY_ROUNDS: u32 = 3;
/// Samples of a round before slow start may end within it (RFC 9406's N_RTT_SAMPLE).
const SLOW_START_SAMPLES: u32 = 8;

/// Round trips and the classification of what each showed. Transmissions are numbered
/// 1, 2, 3, ... by the sender; a round ends when a transmission sent after it began is
/// acknowledged.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    min_rtt: Option<Duration>,
    /// The round ends when a transmission numbered above this is acknowledged.
    round_end: u64,
    round_min: Option<Duration>,
    round_samples: u32,
    round_acked: u64,
    round_lost: u64,
    /// Slow start already ended in this round.
    round_exited: bool,
    /// The latest samples with their times (those of the last quarter of eta, and at
    /// least [`SLOW_START_SAMPLES`]), for slow start's check.
    recent: VecDeque<(Instant, Duration)>,
    /// The latest transmission sent when the window last shrank: rounds made of what was
    /// sent before it are not judged (one reduction per round trip).
    recovery_end: u64,
    rounds: u64,
    /// The standing queue of the latest round judged.
    last_queue: Duration,
    /// Rounds in a row that showed (almost) no standing queue.
    empty_rounds: u32,
    delay_signals: u64,
    loss_signals: u64,
}

impl Signals {
    pub fn new() -> Self {
        Self::default()
    }

    /// The smallest round trip seen.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// The standing queue that counts as congestion on this path: an eighth of the minimum
    /// round trip, between 2 and 25 ms.
    pub fn target(&self) -> Duration {
        let min = self.min_rtt.unwrap_or(Duration::from_millis(100));
        (min / 8).clamp(Duration::from_millis(2), Duration::from_millis(25))
    }

    /// The rise that ends slow start (RFC 9406's eta: an eighth of the minimum, 4 to 16 ms).
    pub fn slow_start_eta(&self) -> Duration {
        let min = self.min_rtt.unwrap_or(Duration::from_millis(100));
        (min / 8).clamp(Duration::from_millis(4), Duration::from_millis(16))
    }

    /// True when the latest [`EMPTY_ROUNDS`] rounds all showed (almost) no standing queue:
    /// less than a quarter of the target. The link then has room to fill. One round is not
    /// enough: after a cut for a standing queue the queue drains for a round or two while
    /// the link is still full, and flows that share it would grow in proportion to their
    /// windows then, which keeps the shares as unequal as they are.
    pub fn no_queue(&self) -> bool {
        self.empty_rounds >= EMPTY_ROUNDS
    }

    /// True when the latest round showed a standing queue below half the target.
    pub fn low_queue(&self) -> bool {
        self.rounds > 0 && self.last_queue < self.target() / 2
    }

    /// Round trips completed.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// Reductions for a standing queue, and for heavy loss.
    pub fn counts(&self) -> (u64, u64) {
        (self.delay_signals, self.loss_signals)
    }

    /// `count` transmissions were declared lost.
    pub fn on_lost(&mut self, count: u64) {
        self.round_lost += count;
    }

    /// An acknowledgement: `acked` transmissions newly acknowledged, the largest of them
    /// numbered `largest_acked`; `largest_sent` the latest transmission so far; `sample` a
    /// round-trip sample if the acknowledgement gave one; `slow_start` whether the
    /// controller is in slow start. Returns what the controller must be told, if anything.
    pub fn on_ack(
        &mut self,
        now: Instant,
        largest_acked: u64,
        largest_sent: u64,
        sample: Option<Duration>,
        acked: u64,
        slow_start: bool,
    ) -> Option<Signal> {
        if let Some(rtt) = sample {
            self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
            self.round_min = Some(self.round_min.map_or(rtt, |m| m.min(rtt)));
            self.round_samples += 1;
            self.recent.push_back((now, rtt));
            let keep = self.slow_start_eta() / 4;
            while self.recent.len() > SLOW_START_SAMPLES as usize
                && self.recent.front().is_some_and(|&(t, _)| t + keep < now)
            {
                self.recent.pop_front();
            }
        }
        self.round_acked += acked;
        let judged = self.round_end > self.recovery_end;
        let queue = match (self.round_min, self.min_rtt) {
            (Some(r), Some(m)) => r.saturating_sub(m),
            _ => Duration::ZERO,
        };
        // Slow start ends as soon as the samples of the last quarter of eta (at least 8 of
        // them, over at least an eighth of eta: not one burst of acknowledgements handled
        // late after a stall) all show a queue above eta: a round's minimum would see it one round later, when the window
        // has doubled again and the queue overflows (the packets of a round that first
        // fills the link saw no queue when they left).
        if slow_start && judged && !self.round_exited {
            let eta = self.slow_start_eta();
            let recent_min = self.recent.iter().map(|&(_, r)| r).min();
            let standing = match (recent_min, self.min_rtt) {
                (Some(r), Some(m)) => r.saturating_sub(m),
                _ => Duration::ZERO,
            };
            let span = self
                .recent
                .front()
                .map_or(Duration::ZERO, |&(t, _)| now.saturating_duration_since(t));
            if self.recent.len() >= SLOW_START_SAMPLES as usize && span >= eta / 8 && standing > eta
            {
                self.round_exited = true;
                self.recent.clear();
                return Some(Signal::SlowStartDone);
            }
        }
        if largest_acked <= self.round_end {
            return None;
        }
        // The round is over: judge it, and start the next.
        let verdict = if !judged {
            None
        } else if queue > self.target() * DEEP_QUEUE {
            Some(Signal::DeepQueue)
        } else if queue > self.target() {
            Some(Signal::Delay)
        } else if self.round_lost >= HEAVY_LOSS_MIN
            && self.round_lost * HEAVY_LOSS_DIVISOR > self.round_acked + self.round_lost
        {
            Some(Signal::Loss)
        } else {
            None
        };
        self.rounds += 1;
        self.last_queue = queue;
        if queue < self.target() / 4 {
            self.empty_rounds = self.empty_rounds.saturating_add(1);
        } else {
            self.empty_rounds = 0;
        }
        self.round_end = largest_sent;
        self.round_min = None;
        self.round_samples = 0;
        self.round_acked = 0;
        self.round_lost = 0;
        self.round_exited = false;
        match verdict {
            Some(Signal::Delay | Signal::DeepQueue) => self.delay_signals += 1,
            Some(Signal::Loss) => self.loss_signals += 1,
            _ => {}
        }
        if matches!(
            verdict,
            Some(Signal::Delay | Signal::DeepQueue | Signal::Loss)
        ) {
            self.recovery_end = largest_sent;
        }
        verdict
    }

    /// The window was cut for another reason (persistent congestion): the rounds in flight
    /// are not judged again.
    pub fn on_reduced(&mut self, largest_sent: u64) {
        self.recovery_end = largest_sent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Acknowledges transmissions `from..=to` one by one with round trip `rtt`, `sent`
    /// being the latest sent at each ack; returns the signals.
    fn acks(s: &mut Signals, from: u64, to: u64, sent: u64, rtt: Duration) -> Vec<Signal> {
        let t0 = Instant::now();
        (from..=to)
            .filter_map(|pn| s.on_ack(t0, pn, sent.max(pn), Some(rtt), 1, false))
            .collect()
    }

    #[test]
    fn a_standing_queue_above_target_is_a_delay_signal_once_per_round_trip() {
        let mut s = Signals::new();
        assert!(acks(&mut s, 1, 10, 10, ms(50)).is_empty());
        assert_eq!(s.target(), Duration::from_micros(6_250));
        // From here every sample is 20 ms above the minimum; the first round of them ends
        // when 21 is acknowledged (it was sent after the round began).
        assert!(acks(&mut s, 11, 20, 20, ms(70)).is_empty());
        assert_eq!(acks(&mut s, 21, 30, 30, ms(70)), vec![Signal::Delay]);
        // The next round was sent before the cut: not judged.
        assert!(acks(&mut s, 31, 40, 40, ms(70)).is_empty());
        assert_eq!(acks(&mut s, 41, 50, 50, ms(70)), vec![Signal::Delay]);
        assert_eq!(s.counts(), (2, 0));
    }

    #[test]
    fn one_low_sample_in_a_round_means_no_standing_queue() {
        let mut s = Signals::new();
        acks(&mut s, 1, 10, 20, ms(50));
        for round in 0..5u64 {
            let base = 11 + round * 10;
            let mut got = Vec::new();
            for pn in base..base + 10 {
                let rtt = if pn == base + 5 { ms(51) } else { ms(90) };
                got.extend(s.on_ack(Instant::now(), pn, base + 19, Some(rtt), 1, false));
            }
            assert!(got.is_empty(), "round {round}: {got:?}");
        }
    }

    #[test]
    fn scattered_loss_is_not_congestion_but_heavy_loss_is() {
        let mut s = Signals::new();
        acks(&mut s, 1, 100, 200, ms(50));
        // 2 lost of 100 in a round: noise.
        s.on_lost(2);
        assert!(acks(&mut s, 101, 200, 300, ms(50)).is_empty());
        s.on_lost(2);
        assert!(acks(&mut s, 201, 300, 400, ms(50)).is_empty());
        // 10 of 100: congestion.
        s.on_lost(10);
        assert!(acks(&mut s, 301, 390, 490, ms(50)).is_empty());
        s.on_lost(10);
        assert_eq!(acks(&mut s, 391, 480, 580, ms(50)), vec![Signal::Loss]);
        assert_eq!(s.counts(), (0, 1));
    }

    #[test]
    fn slow_start_ends_when_the_queue_rises_by_eta() {
        let t0 = Instant::now();
        let mut s = Signals::new();
        // One sample a millisecond.
        let at = |pn: u64| t0 + ms(pn);
        for pn in 1..=10 {
            assert_eq!(s.on_ack(at(pn), pn, 20, Some(ms(40)), 1, true), None);
        }
        let mut got = Vec::new();
        for pn in 11..=30 {
            let slow_start = got.is_empty();
            if let Some(signal) = s.on_ack(at(pn), pn, 40, Some(ms(46)), 1, slow_start) {
                got.push((pn, signal));
            }
        }
        // eta is 5 ms at 40 ms: 8 samples at least, over 0.6 ms at least, all 6 ms above
        // the minimum, end it.
        assert_eq!(got, vec![(18, Signal::SlowStartDone)]);
    }

    #[test]
    fn a_burst_of_late_samples_handled_at_once_does_not_end_slow_start() {
        let t0 = Instant::now();
        let mut s = Signals::new();
        for pn in 1..=10 {
            s.on_ack(t0 + ms(pn), pn, 20, Some(ms(40)), 1, true);
        }
        // 20 acknowledgements handled in the same instant after a stall: all late.
        let late = t0 + ms(30);
        for pn in 11..=30 {
            assert_eq!(s.on_ack(late, pn, 40, Some(ms(50)), 1, true), None);
        }
    }
}
