//! NewReno (RFC 9002 §7.3): slow start, then one datagram per round trip; halve on loss.

use std::time::{Duration, Instant};

use super::{initial_window, minimum_window, Controller, Signal, DELAY_BETA};

#[derive(Debug, Clone)]
pub struct NewReno {
    mss: u64,
    window: u64,
    ssthresh: u64,
    /// Bytes acknowledged toward the next increase in congestion avoidance.
    acked: u64,
}

impl NewReno {
    /// With RFC 9002's initial window ([`initial_window`]).
    pub fn new(mss: u64) -> Self {
        Self::with_window(mss, initial_window(mss))
    }

    /// With an initial window of `window` bytes.
    pub fn with_window(mss: u64, window: u64) -> Self {
        NewReno {
            mss,
            window,
            ssthresh: u64::MAX,
            acked: 0,
        }
    }

    fn reduce(&mut self, beta: f64) {
        self.window = ((self.window as f64 * beta) as u64).max(minimum_window(self.mss));
        self.ssthresh = self.window;
        self.acked = 0;
    }
}

impl Controller for NewReno {
    fn on_ack(&mut self, _now: Instant, bytes: u64, cwnd_limited: bool, _srtt: Duration) {
        if !cwnd_limited {
            return;
        }
        if self.window < self.ssthresh {
            self.window += bytes;
            return;
        }
        self.acked += bytes;
        if self.acked >= self.window {
            self.acked -= self.window;
            self.window += self.mss;
        }
    }

    fn on_congestion(&mut self, _now: Instant, signal: Signal) {
        match signal {
            Signal::SlowStartDone => self.exit_slow_start(None),
            Signal::Delay => self.reduce(DELAY_BETA),
            Signal::DeepQueue => self.reduce(0.5),
            Signal::Loss => self.reduce(0.5),
        }
    }

    fn exit_slow_start(&mut self, bdp: Option<u64>) {
        if self.window < self.ssthresh {
            if let Some(bdp) = bdp {
                // At most halved: a flow that joins a busy link measures its own small
                // share, not the path's product, and must not be starved by it.
                let drained = (bdp + bdp / 8)
                    .max(self.window / 2)
                    .max(minimum_window(self.mss));
                self.window = self.window.min(drained);
            }
            self.ssthresh = self.window;
        }
    }

    fn grow_to(&mut self, window: u64) {
        if self.window < self.ssthresh {
            self.window = self.window.max(window);
        }
    }

    fn on_persistent_congestion(&mut self) {
        self.reduce(0.5);
        self.window = minimum_window(self.mss);
    }

    fn window(&self) -> u64 {
        self.window
    }

    fn in_slow_start(&self) -> bool {
        self.window < self.ssthresh
    }

    fn name(&self) -> &'static str {
        "newreno"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_datagram_more_per_window_acknowledged_then_halved_on_loss() {
        let t0 = Instant::now();
        let rtt = Duration::from_millis(10);
        let mut r = NewReno::new(1000);
        r.exit_slow_start(None);
        let w = r.window();
        r.on_ack(t0, w, true, rtt);
        assert_eq!(r.window(), w + 1000);
        r.on_congestion(t0, Signal::Loss);
        assert_eq!(r.window(), (w + 1000) / 2);
    }
}
