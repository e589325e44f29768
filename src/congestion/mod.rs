//! Congestion control, loss detection, pacing and flow control for the bulk data of a
//! session (file chunks). Plain state machines: no sockets, no clock (`now` is passed in).
//!
//! The pieces, after quinn-proto's `congestion/` module and RFC 9002 (QUIC loss detection
//! and congestion control):
//!
//! - [`Controller`]: how much may be in flight (the congestion window, in bytes). Two
//!   implementations: [`Cubic`] (RFC 9438, the default) and [`NewReno`] (RFC 9002 §7.3).
//! - [`Signals`]: *when* the window must shrink. It counts round trips and classifies what
//!   the path shows in each: a standing queue (the smallest round trip of a round above the
//!   path's minimum by more than a target) is congestion; loss is congestion only when it is
//!   heavy (more than 1 in 20 datagrams of a round, at least 4) or persistent (RFC 9002
//!   §7.6). Scattered loss with no queue behind it (a radio link's 1%) is not: it is
//!   repaired without shrinking the window. At most one reduction per round trip (the
//!   recovery period of RFC 9002 §7.3.2).
//! - [`Pacer`]: a token bucket that spreads a window over the round trip (after quinn's
//!   `pacing.rs`): rate 1.25 x window / minimum RTT (2 x in slow start, as Linux does; 4 x
//!   while [`FastStart`] grows),
//!   bursts of at most 2 ms of that rate (between 10 and 256 datagrams).
//! - [`FastStart`]: slow start grows x4 per round trip instead of x2 while the path proves
//!   it has the room (after SUSS and BBR's startup), and ends on the bottleneck's rate.
//! - [`ChunkSender`]: one transfer's sending side: numbering of transmissions, acknowledged
//!   ranges, packet-threshold (3) and time-threshold (9/8 RTT) loss detection, the probe
//!   timeout (PTO), the receiver's window (flow control), the controller and the pacer.
//!
//! # Why delay, and not loss alone
//!
//! A loss-based controller (Reno, CUBIC) fills the bottleneck's queue until it overflows:
//! with a drop-tail queue of one bandwidth-delay product (BDP) every round trip through it
//! doubles, and a chat message sent during a transfer waits behind the file. And it takes
//! every loss for congestion: at 1% random loss Reno's rate is capped near
//! `1.22 x MSS / (RTT x sqrt(p))`, 2% of a 100 Mbit/s link at 50 ms. So the window here
//! follows the queueing delay: a round whose *smallest* round trip is more than `target`
//! above the path's minimum (`target` = an eighth of the minimum RTT, between 2 ms and
//! 25 ms) shrinks the window by [`DELAY_BETA`] (0.9). With a queue of an eighth of the RTT
//! when the reduction comes, 0.9 x 1.125 BDP is still above one BDP: the link stays busy,
//! and chat waits at most about an eighth of the round trip behind the file. (A quarter
//! and 0.85 kept the link as busy, but chat's p99 at 50 ms / 20 Mbit/s sat at 1.46-1.51 x
//! the round trip against the 1.5 x target; an eighth and 0.9 gave 1.33 x in the
//! simulated network and 1.37-1.45 x through the link emulator.)
//! sample of a round ignores the queue a flow builds within one round (pacing at 2x in slow
//! start) and the scheduler's jitter; only a queue that outlives a round counts. This is the
//! idea of LEDBAT (RFC 6817) and of BBR's min-RTT probing, on top of CUBIC's growth; unlike
//! LEDBAT the target scales with the path, so a transfer is not starved by a longer path.
//!
//! Two flows through one bottleneck see the same queue, so both shrink together by the same
//! factor, and CUBIC's fast convergence (RFC 9438 §4.7) gives back the share of the larger:
//! the shares converge. Slow start ends on the delay signal too (HyStart++, RFC 9406, with
//! the path's minimum as the reference), before the queue overflows.

mod cubic;
mod newreno;
mod pacer;
mod sender;
mod signals;
mod startup;

use std::fmt;
use std::time::{Duration, Instant};

pub use cubic::Cubic;
pub use newreno::NewReno;
pub use pacer::Pacer;
pub use sender::{ChunkSender, Outgoing, SenderConfig, SenderStats, INITIAL_WINDOW};
pub use signals::{Signal, Signals, DEEP_QUEUE};
pub use startup::{FastStart, Growth, FAST_GAIN, FAST_ROUNDS};

/// The window is cut to this fraction on a delay signal (a standing queue above target).
pub const DELAY_BETA: f64 = 0.9;

/// A congestion controller: the congestion window, in bytes, driven by acknowledgements and
/// congestion signals. After quinn-proto's `Controller` trait.
pub trait Controller: Send + fmt::Debug {
    /// `bytes` were newly acknowledged at `now`. `cwnd_limited`: the window, not the
    /// application or the receiver, limited what was in flight (the window grows only then,
    /// RFC 9002 §7.8).
    fn on_ack(&mut self, now: Instant, bytes: u64, cwnd_limited: bool, srtt: Duration);

    /// The path showed congestion at `now` (at most once per round trip).
    fn on_congestion(&mut self, now: Instant, signal: Signal);

    /// Slow start is over (a queue began to stand). `bdp`: the bandwidth-delay product the
    /// sender measured (delivery rate x minimum RTT), if it has: the window drops to 9/8 of
    /// it (but by half at most), draining the queue that slow start's last round trip built
    /// before its samples could show it (as BBR's drain phase does); else it stays.
    fn exit_slow_start(&mut self, bdp: Option<u64>);

    /// In slow start: the window grows to `window` bytes if it is below (the path's product
    /// measured at the end of fast growth, see [`FastStart`]); else nothing.
    fn grow_to(&mut self, window: u64);

    /// Persistent congestion (RFC 9002 §7.6): back to the minimum window.
    fn on_persistent_congestion(&mut self);

    /// Whether the latest round trip showed no standing queue (the link has room): a
    /// controller may grow faster then. Called on every acknowledgement.
    fn set_no_queue(&mut self, _no_queue: bool) {}

    /// Whether the latest round trip showed a queue below half the target: a controller
    /// may step up its additive growth then, not when the queue is near the target.
    fn set_low_queue(&mut self, _low_queue: bool) {}

    /// The congestion window, in bytes.
    fn window(&self) -> u64;

    /// True while in slow start.
    fn in_slow_start(&self) -> bool;

    /// The controller's name, for figures and logs.
    fn name(&self) -> &'static str;
}

/// Which controller a [`ChunkSender`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    #[default]
    Cubic,
    NewReno,
}

impl Algorithm {
    /// A controller of this kind for datagrams of `mss` bytes, starting with a window of
    /// `initial` bytes (at least [`minimum_window`]).
    pub fn build(self, mss: u64, initial: u64) -> Box<dyn Controller> {
        let initial = initial.max(minimum_window(mss));
        match self {
            Algorithm::Cubic => Box::new(Cubic::with_window(mss, initial)),
            Algorithm::NewReno => Box::new(NewReno::with_window(mss, initial)),
        }
    }
}

/// The initial window of RFC 9002 §7.2: ten datagrams (at most 14,720 bytes, at least two).
pub fn initial_window(mss: u64) -> u64 {
    (10 * mss).min(14_720.max(2 * mss))
}

/// The smallest window: two datagrams (RFC 9002 §7.2).
pub fn minimum_window(mss: u64) -> u64 {
    2 * mss
}
