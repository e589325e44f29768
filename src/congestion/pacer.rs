//! Pacing: a token bucket that spreads the window over the round trip, after quinn-proto's
//! `pacing.rs`. Tokens (bytes) accrue at 1.25 x window / RTT (2 x in slow start, so that
//! pacing does not slow the doubling down), up to a burst of 2 ms of that rate, between
//! [`MIN_BURST`] and [`MAX_BURST`] datagrams. The sender passes the path's minimum RTT
//! (quinn passes the smoothed one; see `ChunkSender::poll_transmit` for why).

use std::time::{Duration, Instant};

/// Bursts last at most this long at the pacing rate.
const BURST_INTERVAL: Duration = Duration::from_millis(2);
/// The smallest burst allowed, in datagrams.
pub const MIN_BURST: u64 = 10;
/// The largest burst allowed, in datagrams.
pub const MAX_BURST: u64 = 256;

#[derive(Debug, Clone)]
pub struct Pacer {
    mss: u64,
    capacity: u64,
    tokens: u64,
    prev: Instant,
}

impl Pacer {
    pub fn new(now: Instant, mss: u64) -> Self {
        Pacer {
            mss,
            capacity: MIN_BURST * mss,
            tokens: MIN_BURST * mss,
            prev: now,
        }
    }

    /// The largest burst now, in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The pacing rate in bytes per second for `window` over the round trip `srtt`, times
    /// `gain` (1.25; 2 in slow start; 4 while growing fast, see `FastStart`).
    pub fn rate(window: u64, srtt: Duration, gain: f64) -> f64 {
        window as f64 * gain / srtt.as_secs_f64().max(1e-6)
    }

    /// When `bytes` may leave: `None` for now, or the time the bucket will hold them.
    /// `srtt` is `None` before the first round trip: the initial window goes unpaced.
    pub fn delay(
        &mut self,
        now: Instant,
        bytes: u64,
        window: u64,
        srtt: Option<Duration>,
        gain: f64,
    ) -> Option<Instant> {
        let srtt = srtt?;
        let rate = Self::rate(window, srtt, gain);
        let burst = (rate * BURST_INTERVAL.as_secs_f64()) as u64;
        self.capacity = burst.clamp(MIN_BURST * self.mss, MAX_BURST * self.mss);
        let elapsed = now.saturating_duration_since(self.prev).as_secs_f64();
        let new = (rate * elapsed) as u64;
        if new > 0 {
            self.tokens = self.tokens.saturating_add(new);
            self.prev = now;
        }
        self.tokens = self.tokens.min(self.capacity);
        if self.tokens >= bytes {
            return None;
        }
        let wait = (bytes - self.tokens) as f64 / rate;
        Some(now + Duration::from_secs_f64(wait).max(Duration::from_micros(1)))
    }

    /// `bytes` left.
    pub fn on_sent(&mut self, bytes: u64) {
        self.tokens = self.tokens.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_leaves_in_bursts_no_larger_than_the_capacity() {
        let t0 = Instant::now();
        let mss = 1000;
        let mut p = Pacer::new(t0, mss);
        let srtt = Some(Duration::from_millis(100));
        // 1 MB over 100 ms: 12.5 MB/s; 2 ms of it is 25 kB, 25 datagrams.
        let window = 1_000_000;
        let mut now = t0;
        let mut sent_at = Vec::new();
        while sent_at.len() < 1000 {
            match p.delay(now, mss, window, srtt, 1.25) {
                None => {
                    p.on_sent(mss);
                    sent_at.push(now);
                }
                Some(t) => now = t,
            }
        }
        assert_eq!(p.capacity(), 25 * mss);
        let first_burst = sent_at.iter().filter(|&&t| t == t0).count();
        assert!(first_burst <= 25, "first burst {first_burst}");
        let took = (*sent_at.last().unwrap() - t0).as_secs_f64();
        // 1000 datagrams at 12.5 MB/s: 80 ms, less the first burst.
        assert!((0.070..0.082).contains(&took), "took {took}");
    }
}
