//! Faster-than-doubling growth at the start of a transfer, while the path proves it has the
//! room: after SUSS ("Improving TCP Performance by Speeding Up Slow-Start", Arghavani et al.,
//! ACM SIGCOMM 2024), which quadruples CUBIC's window in a round of slow start when the
//! acknowledgements of the previous one came back in a short train and the round trip did
//! not rise, at most three times, and paces the extra data.
//!
//! Here the window's flight is paced at [`FAST_GAIN`] x window / minimum RTT (a quarter of
//! the round trip), and the acknowledgements of a flight are checked as they arrive: each
//! must come back no later after the flight's first acknowledgement than it left after the
//! flight's first transmission (with [`SLACK_NUM`]/[`SLACK_DEN`] and [`SLACK_MIN`] for
//! jitter), and with a round trip less than a quarter of slow start's eta above the minimum.
//! Such acknowledgements prove the bottleneck carries at least the rate the flight was sent
//! at: [`FAST_GAIN`] windows per round trip, so a window [`FAST_GAIN`] times larger still
//! fits the path without a queue. While that holds, each acknowledged byte grows the window
//! by [`FAST_GAIN`] - 1 bytes (x4 per round trip instead of x2). The first acknowledgement
//! that comes back later (the flight was faster than the bottleneck: the acknowledgements
//! are spread by it) or shows a queue ends it for good: slow start goes on doubling, paced
//! at 2x, and HyStart++'s exit and the drain to the measured product follow as before.
//!
//! The queue this can build is bounded as plain slow start's is: a window grows to at most
//! [`FAST_GAIN`] x the flight just proven to pass at a quarter of the round trip, so it is at
//! most the path's product, and a flight of it sent at a quarter of the round trip into a
//! bottleneck that turns out slower leaves at most 3/4 of the product queued (plain slow
//! start, a doubled window sent over half the round trip: up to 1/2 to one product).
//! Only in a transfer's first slow start and for at most [`FAST_ROUNDS`] round trips.

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
    /// Fast growth just ended because the path did not keep up: the acknowledgements came
    /// back spread by the bottleneck (or with a queue). `rate`: the rate (bytes/s) they came
    /// back at over the flight so far, the bottleneck's, when measured over at least
    /// [`MIN_SPAN`]; slow start ends there, the window set to that rate x the minimum RTT.
    Ended { rate: Option<f64> },
}

/// The shortest train of acknowledgements whose rate is taken for the bottleneck's.
pub const MIN_SPAN: Duration = Duration::from_millis(1);

impl FastStart {
    /// Fast growth on, or (`enabled` false) never.
    pub fn new(enabled: bool) -> Self {
        FastStart {
            active: enabled,
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
        let rate = self.first.and_then(|(acked0, _)| {
            let span = now.saturating_duration_since(acked0);
            (span >= MIN_SPAN).then(|| self.acked as f64 / span.as_secs_f64())
        });
        if queued || !kept_up {
            self.active = false;
            return Growth::Ended { rate };
        }
        let cap = rate
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
        // 2 ms back for 1 ms out is within 5/4 + 1 ms; 4 for 2 is not: the rate then,
        // 2,000 bytes over 4 ms, is the bottleneck's.
        assert!(matches!(got[1], Growth::Fast { .. }));
        assert_eq!(
            got[2],
            Growth::Ended {
                rate: Some(500_000.0)
            }
        );
        assert!(got[3..].iter().all(|&g| g == Growth::Plain));
        assert!(!f.active());
        assert_eq!(f.pacing_gain(), 2.0);
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
