//! Faster-than-doubling growth at the start of a transfer, while the path proves it has the
//! room: after SUSS ("Improving TCP Performance by Speeding Up Slow-Start", Arghavani et al.,
//! ACM SIGCOMM 2024), which quadruples CUBIC's window in a round of slow start when the
//! acknowledgements of the previous one came back in a short train and the round trip did
//! not rise, at most three times, and paces the extra data; and after BBR's startup, which
//! ends on the delivery rate it measured and sets the window from it.
//!
//! Here the window's flight is paced at [`FAST_GAIN`] x window / minimum RTT (a quarter of
//! the round trip), and the acknowledgements of a flight are checked as they arrive: each
//! must come back no later after the flight's first acknowledgement than it left after the
//! flight's first transmission (with [`SLACK_NUM`]/[`SLACK_DEN`] and [`SLACK_MIN`] for
//! jitter), and with a round trip less than a quarter of slow start's eta above the minimum.
//! Such acknowledgements prove the bottleneck carries at least the rate the flight was sent
//! at. While that holds, each acknowledged byte grows the window by [`FAST_GAIN`] - 1 bytes
//! (x4 per round trip instead of x2), but never above the rate the flight's
//! acknowledgements came back at x the minimum RTT: what the path is proven to hold.
//!
//! Fast growth ends for good at the first acknowledgement that does not keep up or shows a
//! queue:
//! - spread by the bottleneck (the flight left faster than it drains): the rate of the
//!   acknowledgements is counted over [`FastStart::measure_span`] (plain growth, pacing at
//!   2x, meanwhile) and slow start ends with the window at 9/8 of that rate x the minimum
//!   RTT (BBR's estimate of the path's product, with HyStart++'s drain factor here);
//! - a queue without that spread (another flow's, perhaps): slow start goes on doubling and
//!   HyStart++ ends it as before, but without the drain to this flow's own delivery rate
//!   (see `ChunkSender::on_ack`).
//!
//! The queue this can build is bounded as plain slow start's is: a window grows to at most
//! what the acknowledgements proved, so it is at most the path's product, and a flight of it
//! sent at a quarter of the round trip into a bottleneck that turns out slower leaves at most
//! 3/4 of the product queued (plain slow start, a doubled window sent over half the round
//! trip: up to 1/2 to one product). Only in a transfer's first slow start and for at most
//! [`FAST_ROUNDS`] round trips.

use std::time::{Duration, Instant};

/// The growth per round trip (and the pacing gain) while the path keeps up.
pub const FAST_GAIN: u64 = 4;
/// Round trips of fast growth at most (SUSS: three).
pub const FAST_ROUNDS: u32 = 3;
/// An acknowledgement may come back this much later (over the flight's spread) and still
/// show the path kept up: 5/4.
const SLACK_NUM: u32 = 5;
const SLACK_DEN: u32 = 4;
/// ... plus this (the scheduler's jitter, a burst's own spread at the bottleneck).
const SLACK_MIN: Duration = Duration::from_millis(1);

/// The state of fast growth. See the module documentation.
#[derive(Debug, Clone)]
pub struct FastStart {
    /// Still growing fast.
    active: bool,
    /// Fast growth is over: the bottleneck spread the acknowledgements, and their rate is
    /// being measured over [`FastStart::measure_span`] before slow start ends on it.
    measuring: bool,
    /// Round trips begun while fast.
    rounds: u32,
    /// The current flight ends with this transmission (its acknowledgement ends the round).
    round_end: u64,
    /// The flight's first acknowledgement: when it came, and when its transmission left.
    first: Option<(Instant, Instant)>,
    /// Bytes acknowledged in the flight after its first acknowledgement.
    acked: u64,
}

/// What an acknowledgement means for the window in slow start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Growth {
    /// Plain slow start: each acknowledged byte grows the window by one byte.
    Plain,
    /// Each acknowledged byte grows the window by [`FAST_GAIN`] - 1 bytes, but not beyond
    /// `cap`, if any: the rate the flight's acknowledgements came back at so far x the
    /// minimum RTT (what the path is proven to hold; above it, only plain growth).
    Fast { cap: Option<u64> },
    /// Fast growth ended because the path did not keep up. `rate`: when the bottleneck
    /// spread the acknowledgements, the rate (bytes/s) they came back at, measured over at
    /// least [`FastStart::measure_span`] (plain growth meanwhile): the bottleneck's; slow
    /// start ends there, the window set to 9/8 of that rate x the minimum RTT. `None`: a
    /// queue ended it, not a measured rate (another flow's queue, perhaps).
    Ended { rate: Option<f64> },
}

/// The shortest train of acknowledgements whose rate caps fast growth.
pub const MIN_SPAN: Duration = Duration::from_millis(1);

impl FastStart {
    /// Fast growth on, or (`enabled` false) never.
    pub fn new(enabled: bool) -> Self {
        FastStart {
            active: enabled,
            measuring: false,
            rounds: 0,
            round_end: 0,
            first: None,
            acked: 0,
        }
    }

    /// True while growing fast.
    pub fn active(&self) -> bool {
        self.active
    }

    /// The pacing gain in slow start: [`FAST_GAIN`] while fast, else 2.
    pub fn pacing_gain(&self) -> f64 {
        if self.active {
            FAST_GAIN as f64
        } else {
            2.0
        }
    }

    /// Slow start ended (or the window was cut): no more fast growth.
    pub fn stop(&mut self) {
        self.active = false;
        self.measuring = false;
    }

    /// How long acknowledgements are counted to measure the bottleneck's rate: an eighth
    /// of the minimum RTT, at least 2 ms (a receiver or a link that hands acknowledgements
    /// over in bunches would make a shorter train look faster than the bottleneck).
    pub fn measure_span(min_rtt: Option<Duration>) -> Duration {
        (min_rtt.unwrap_or_default() / 8).max(Duration::from_millis(2))
    }

    /// The rate of the flight's acknowledgements after its first, if they span `at_least`.
    fn rate(&self, now: Instant, at_least: Duration) -> Option<f64> {
        let (acked0, _) = self.first?;
        let span = now.saturating_duration_since(acked0);
        (span >= at_least && span > Duration::ZERO).then(|| self.acked as f64 / span.as_secs_f64())
    }

    /// An acknowledgement in slow start: its largest transmission `pn` newly acknowledged
    /// left at `sent`; `largest_sent` is the latest transmission so far; `sample` the round
    /// trip it gave, if any; `bytes` newly acknowledged; `min_rtt` and `eta` the path's
    /// minimum and slow start's eta.
    #[allow(clippy::too_many_arguments)]
    pub fn on_ack(
        &mut self,
        now: Instant,
        pn: u64,
        sent: Instant,
        largest_sent: u64,
        bytes: u64,
        sample: Option<Duration>,
        min_rtt: Option<Duration>,
        eta: Duration,
    ) -> Growth {
        if self.measuring {
            if pn > self.round_end {
                // The flight is over before the span: its rate so far.
                self.measuring = false;
                return Growth::Ended {
                    rate: self.rate(now, MIN_SPAN),
                };
            }
            self.acked += bytes;
            if let Some(rate) = self.rate(now, Self::measure_span(min_rtt)) {
                self.measuring = false;
                return Growth::Ended { rate: Some(rate) };
            }
            return Growth::Plain;
        }
        if !self.active {
            return Growth::Plain;
        }
        if pn > self.round_end {
            // A new flight's first acknowledgement.
            self.round_end = largest_sent;
            self.rounds += 1;
            if self.rounds > FAST_ROUNDS {
                self.active = false;
                return Growth::Plain;
            }
            self.first = Some((now, sent));
            self.acked = 0;
        } else {
            self.acked += bytes;
        }
        let queued = match (sample, min_rtt) {
            (Some(rtt), Some(min)) => rtt > min + eta / 4,
            _ => false,
        };
        let kept_up = match self.first {
            Some((acked0, sent0)) => {
                let spread = sent.saturating_duration_since(sent0);
                let back = now.saturating_duration_since(acked0);
                back <= spread * SLACK_NUM / SLACK_DEN + SLACK_MIN
            }
            None => true,
        };
        if queued {
            self.active = false;
            return Growth::Ended { rate: None };
        }
        if !kept_up {
            self.active = false;
            self.measuring = true;
            return Growth::Plain;
        }
        let cap = self
            .rate(now, MIN_SPAN)
            .zip(min_rtt)
            .map(|(rate, min)| (rate * min.as_secs_f64()) as u64);
        Growth::Fast { cap }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const ETA: Duration = Duration::from_millis(12);
    const MIN: Option<Duration> = Some(Duration::from_millis(100));

    #[test]
    fn acknowledgements_as_fast_as_the_flight_left_keep_it_fast_within_the_proven_rate() {
        let t0 = Instant::now();
        let mut f = FastStart::new(true);
        // A flight of 10 sent 1 ms apart, acknowledged 100 ms later, 1 ms apart, 1,000
        // bytes each.
        let mut got = Vec::new();
        for pn in 1..=10 {
            let sent = t0 + ms(pn);
            got.push(f.on_ack(sent + ms(100), pn, sent, 10, 1000, MIN, MIN, ETA));
        }
        // No rate before a millisecond of acknowledgements; then 1,000 bytes a millisecond,
        // x 100 ms: the path holds 100 kB.
        assert_eq!(got[0], Growth::Fast { cap: None });
        assert!(got[1..]
            .iter()
            .all(|&g| g == Growth::Fast { cap: Some(100_000) }));
        assert!(f.active());
        assert_eq!(f.pacing_gain(), FAST_GAIN as f64);
    }

    #[test]
    fn acknowledgements_spread_by_a_slower_bottleneck_end_it_with_its_rate() {
        let t0 = Instant::now();
        let mut f = FastStart::new(true);
        // Sent 1 ms apart, acknowledged 2 ms apart: the bottleneck has half that rate.
        let mut got = Vec::new();
        for pn in 1..=10 {
            let sent = t0 + ms(pn);
            let now = t0 + ms(100 + 2 * pn);
            got.push(f.on_ack(now, pn, sent, 10, 1000, None, MIN, ETA));
        }
        // 2 ms back for 1 ms out is within 5/4 + 1 ms; 4 for 2 is not: from there the
        // window grows as in plain slow start, and the rate is measured over an eighth of
        // the minimum RTT (12.5 ms; 14 ms at the 8th): 7,000 bytes over 14 ms, the
        // bottleneck's.
        assert!(matches!(got[1], Growth::Fast { .. }));
        assert!(got[2..7].iter().all(|&g| g == Growth::Plain), "{got:?}");
        assert!(!f.active());
        assert_eq!(f.pacing_gain(), 2.0);
        assert_eq!(
            got[7],
            Growth::Ended {
                rate: Some(500_000.0)
            }
        );
        assert!(got[8..].iter().all(|&g| g == Growth::Plain));
    }

    #[test]
    fn a_rising_round_trip_ends_it_and_so_do_the_rounds() {
        let t0 = Instant::now();
        let mut f = FastStart::new(true);
        // A quarter of eta (3 ms) above the minimum: a queue.
        assert_eq!(
            f.on_ack(t0, 1, t0, 1, 1000, Some(ms(104)), MIN, ETA),
            Growth::Ended { rate: None }
        );
        assert!(!f.active());

        let mut f = FastStart::new(true);
        let mut now = t0;
        for round in 1..=FAST_ROUNDS as u64 + 1 {
            now += ms(100);
            let g = f.on_ack(now, round, now - ms(100), round, 1000, MIN, MIN, ETA);
            if round <= FAST_ROUNDS as u64 {
                assert!(matches!(g, Growth::Fast { .. }), "round {round}: {g:?}");
            } else {
                assert_eq!(g, Growth::Plain, "round {round}");
            }
        }
        assert!(!f.active());
        assert_eq!(
            FastStart::new(false).on_ack(t0, 1, t0, 1, 1000, None, None, ETA),
            Growth::Plain
        );
    }
}
