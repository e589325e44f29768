//! CUBIC (RFC 9438), counted in bytes, with its Reno-friendly region and fast convergence.

use std::time::{Duration, Instant};

use super::{initial_window, minimum_window, Controller, Signal, DELAY_BETA};

/// The delay cut of a flow cut again below its previous window (see [`Cubic::on_congestion`]).
pub const DELAY_BETA_CONVERGE: f64 = 0.85;

/// RFC 9438's C, in segments per second cubed.
const C: f64 = 0.4;
/// RFC 9438's beta: the window after a loss.
const BETA: f64 = 0.7;
/// The additive increase, in segments per round trip, after a delay signal (see
/// [`Cubic::on_ack`]).
pub const DELAY_AI: f64 = 4.0;
/// The additive increase grows by DELAY_AI every this many round trips after a cut.
pub const DELAY_AI_ROUNDS: f64 = 3.0;
/// ... but to at most this many times DELAY_AI while the queue is above half the target.
pub const DELAY_AI_NEAR: f64 = 2.0;
/// The proportional part of that increase: the window over this, per round trip.
pub const DELAY_AI_SHARE: f64 = 16.0;

#[derive(Debug, Clone)]
pub struct Cubic {
    mss: u64,
    window: u64,
    ssthresh: u64,
    /// The window before the latest reduction, in bytes.
    w_max: f64,
    /// Seconds to grow back to `w_max`.
    k: f64,
    /// When the current growth began (the first acknowledgement after a reduction).
    epoch: Option<Instant>,
    /// The Reno-friendly estimate, in bytes.
    w_est: f64,
    /// The factor of the latest reduction (its alpha follows from it).
    beta: f64,
    /// The latest reduction (or the end of slow start) came from the delay signal.
    delay_mode: bool,
    /// The latest round trip showed no standing queue.
    no_queue: bool,
    /// The window when the latest delay cut came.
    last_cut: f64,
    /// The latest round trip showed a queue below half the target.
    low_queue: bool,
}

impl Cubic {
    /// With RFC 9002's initial window ([`initial_window`]).
    pub fn new(mss: u64) -> Self {
        Self::with_window(mss, initial_window(mss))
    }

    /// With an initial window of `window` bytes.
    pub fn with_window(mss: u64, window: u64) -> Self {
        Cubic {
            mss,
            window,
            ssthresh: u64::MAX,
            w_max: 0.0,
            k: 0.0,
            epoch: None,
            w_est: 0.0,
            beta: BETA,
            delay_mode: false,
            no_queue: false,
            last_cut: 0.0,
            low_queue: false,
        }
    }

    /// W_cubic(t), in bytes.
    fn w_cubic(&self, t: f64) -> f64 {
        let mss = self.mss as f64;
        (C * (t - self.k).powi(3) * mss + self.w_max).max(0.0)
    }

    fn reduce(&mut self, beta: f64) {
        let w = self.window as f64;
        // Fast convergence: a flow cut again below its previous maximum gives more back.
        self.w_max = if w < self.w_max {
            w * (1.0 + beta) / 2.0
        } else {
            w
        };
        self.beta = beta;
        self.window = ((w * beta) as u64).max(minimum_window(self.mss));
        self.ssthresh = self.window;
        self.epoch = None;
    }
}

impl Controller for Cubic {
    fn on_ack(&mut self, now: Instant, bytes: u64, cwnd_limited: bool, srtt: Duration) {
        if !cwnd_limited {
            return;
        }
        if self.window < self.ssthresh {
            self.window += bytes;
            return;
        }
        let mss = self.mss as f64;
        let epoch = *self.epoch.get_or_insert_with(|| {
            let w = self.window as f64;
            if w < self.w_max {
                self.k = ((self.w_max - w) / mss / C).cbrt();
            } else {
                self.k = 0.0;
                self.w_max = w;
            }
            self.w_est = w;
            now
        });
        let t = now.saturating_duration_since(epoch).as_secs_f64();
        let w = self.window as f64;
        // Reno-friendly region (RFC 9438 §4.3): alpha = 3 (1 - beta) / (1 + beta) segments
        // per round trip. After a delay signal, DELAY_AI segments: flows that share a
        // queue are cut together by the same factor, and an increase the same for each
        // (additive, not CUBIC's, which grows with the flow's own W_max) makes their
        // shares converge (AIMD) within a few cuts rather than a few K. While the path
        // shows no queue at all, 1/DELAY_AI_SHARE of the window more (in proportion, so it
        // keeps the shares as they are): a window left below the path's product by a slow
        // start that ended early (on samples a busy CPU delayed) regains it in tens of
        // round trips rather than hundreds at 100 ms, and the queue chat waits behind
        // is not pushed any higher.
        let per_round = if self.delay_mode {
            let boost = if self.no_queue {
                w / DELAY_AI_SHARE
            } else {
                0.0
            };
            // While the queue is below half the target, the additive step grows with the
            // round trips since the cut, the same for every flow cut at the same moment:
            // still AIMD (equal steps), but the queue is refilled in fewer round trips, so
            // flows are cut (and converge) more often. Near the target it is back to
            // DELAY_AI, so the queue does not overshoot the target (chat waits behind it).
            let step = if self.low_queue {
                1.0 + t / srtt.as_secs_f64().max(1e-6) / DELAY_AI_ROUNDS
            } else {
                (1.0 + t / srtt.as_secs_f64().max(1e-6) / DELAY_AI_ROUNDS).min(DELAY_AI_NEAR)
            };
            DELAY_AI * mss * step + boost
        } else {
            3.0 * (1.0 - self.beta) / (1.0 + self.beta) * mss
        };
        self.w_est += per_round * bytes as f64 / w;
        let cubic_now = self.w_cubic(t);
        if cubic_now < self.w_est {
            self.window = self.window.max(self.w_est as u64);
            return;
        }
        // Concave and convex regions (§4.4, §4.5): aim at W_cubic one round trip ahead,
        // growing by at most half the window per round trip.
        let target = self.w_cubic(t + srtt.as_secs_f64()).clamp(w, 1.5 * w);
        let grow = (target - w) * bytes as f64 / w;
        self.window += grow as u64;
    }

    fn on_congestion(&mut self, _now: Instant, signal: Signal) {
        match signal {
            Signal::SlowStartDone => self.exit_slow_start(None),
            Signal::Delay => {
                // Fast convergence for the delay signal: a flow cut again below the window
                // of its previous cut is losing share to another flow; it gives back more
                // (0.85: still at least the path's product, with a queue of the target).
                let w = self.window as f64;
                let beta = if w < self.last_cut {
                    DELAY_BETA_CONVERGE
                } else {
                    DELAY_BETA
                };
                self.last_cut = w;
                self.reduce(beta)
            }
            Signal::DeepQueue => self.reduce(0.5),
            Signal::Loss => self.reduce(BETA),
        }
        self.delay_mode = match signal {
            Signal::Loss => false,
            Signal::SlowStartDone | Signal::Delay | Signal::DeepQueue => true,
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
            self.epoch = None;
            self.w_max = self.window as f64;
            self.delay_mode = true;
        }
    }

    fn grow_to(&mut self, window: u64) {
        if self.window < self.ssthresh {
            self.window = self.window.max(window);
        }
    }

    fn on_persistent_congestion(&mut self) {
        self.reduce(BETA);
        self.window = minimum_window(self.mss);
    }

    fn set_no_queue(&mut self, no_queue: bool) {
        self.no_queue = no_queue;
    }

    fn set_low_queue(&mut self, low_queue: bool) {
        self.low_queue = low_queue;
    }

    fn window(&self) -> u64 {
        self.window
    }

    fn in_slow_start(&self) -> bool {
        self.window < self.ssthresh
    }

    fn name(&self) -> &'static str {
        "cubic"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u64 = 1200;

    #[test]
    fn slow_start_doubles_per_round_then_a_loss_cuts_by_beta() {
        let t0 = Instant::now();
        let rtt = Duration::from_millis(50);
        let mut c = Cubic::new(MSS);
        let w0 = c.window();
        c.on_ack(t0, w0, true, rtt);
        assert_eq!(c.window(), 2 * w0);
        c.on_congestion(t0, Signal::Loss);
        assert_eq!(c.window(), (2 * w0) * 7 / 10);
        assert!(!c.in_slow_start());
    }

    #[test]
    fn after_a_cut_the_window_grows_back_to_its_old_maximum_in_k_seconds() {
        let t0 = Instant::now();
        let rtt = Duration::from_millis(50);
        let mut c = Cubic::new(MSS);
        c.on_ack(t0, 500 * MSS, true, rtt);
        let before = c.window();
        c.on_congestion(t0, Signal::Delay);
        assert_eq!(c.window(), (before as f64 * DELAY_BETA) as u64);
        // Acknowledge a window per round trip for 10 s.
        let mut now = t0;
        let mut max_seen = 0;
        for _ in 0..200 {
            now += rtt;
            let w = c.window();
            c.on_ack(now, w, true, rtt);
            max_seen = max_seen.max(c.window());
        }
        let k = ((before as f64 * (1.0 - DELAY_BETA)) / MSS as f64 / C).cbrt();
        assert!(k > 5.0 && k < 7.0, "k {k}");
        assert!(
            max_seen > before,
            "grew past w_max after k: {max_seen} vs {before}"
        );
    }

    #[test]
    fn an_application_limited_flow_does_not_grow_its_window() {
        let t0 = Instant::now();
        let mut c = Cubic::new(MSS);
        let w0 = c.window();
        c.on_ack(t0, 100 * MSS, false, Duration::from_millis(10));
        assert_eq!(c.window(), w0);
    }
}
