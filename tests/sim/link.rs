//! A bottleneck link, one direction of it: a one-way delay, a rate cap, a drop-tail queue
//! limited in bytes, and random loss.
//!
//! Pure arithmetic on times and sizes: [`Link::offer`] is told when a datagram enters the
//! link and how big it is, and answers when it comes out at the far end (or that it was
//! dropped). It never reads the clock and never sleeps, so the same code runs in the
//! simulated network's virtual time (`tests/sim`) and in the user-space emulator's real time
//! (`tests/common/emulator.rs`, `examples/link_emulator.rs`).
//!
//! The semantics are those of a real bottleneck (a router's output port with a byte-limited
//! FIFO, like Linux's `bfifo` in front of a link of fixed rate):
//!
//! - A datagram entering the link starts its serialization when every byte admitted before
//!   it has been serialized (at once on an idle link), and takes `size / rate` to serialize.
//! - The queue is the bytes admitted whose serialization has not started yet. The datagram
//!   being serialized has left the queue (it is on the wire). A datagram that would make the
//!   queue exceed its limit is dropped (drop-tail); the ones already queued are untouched.
//!   So an idle link always takes one datagram whatever its size, and a burst of `n`
//!   datagrams of `s` bytes at one instant into an idle link loses
//!   `n - 1 - floor(queue / s)` of them (the first goes on the wire, the queue holds the
//!   next `floor(queue / s)`).
//! - Once serialized, it arrives `delay` later.
//! - Random loss strikes on the wire, after the queue: a datagram lost at random has taken
//!   its place in the queue and its serialization time, as a frame corrupted on a radio link
//!   does. The draw is made when the datagram is admitted, from the caller's random number
//!   generator (seeded by the caller, so the same seed gives the same run).
//! - Without a rate there is no serializer and so no queue: every datagram arrives `delay`
//!   after it entered (or is lost at random). `queue` then has no effect.
//!
//! Sizes are whatever the caller counts: the simulated network counts the encoded datagram
//! plus [`OVERHEAD`] (the IPv4 and UDP headers a real datagram carries); the emulator
//! counts the IP packet as read from its TUN device, which already includes them.
//!
//! Serialization times are rounded up to the nanosecond, so a long stream runs at most one
//! nanosecond per datagram slower than the exact rate.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::Rng;

/// The bytes a UDP datagram carries on an IPv4 network beyond its payload: 20 of IPv4 header
/// (no options) and 8 of UDP header. The simulated network adds it to each encoded datagram
/// so that a rate means what it means on a real link (link-layer framing, such as
/// Ethernet's 38 bytes, is not counted, as a `tc` rate on an IP link would not).
pub const OVERHEAD: usize = 20 + 8;

/// One direction of a link. The default is a perfect link: no delay, no rate cap, no queue
/// limit, no loss.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkConfig {
    /// One-way delay, added after serialization.
    pub delay: Duration,
    /// The rate in bytes per second (`None`: no cap, no serialization time, no queue).
    pub rate: Option<u64>,
    /// The most bytes that may wait for serialization (`None`: no limit). Only with a rate.
    pub queue: Option<usize>,
    /// The chance (0 to 1) that a datagram is lost at random.
    pub loss: f64,
}

impl LinkConfig {
    /// Whether the configuration makes sense: a rate above zero, a loss between 0 and 1.
    pub fn check(&self) -> Result<(), String> {
        if self.rate == Some(0) {
            return Err("the rate must be above 0 bytes per second".into());
        }
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(format!(
                "the loss must be between 0 and 1, not {}",
                self.loss
            ));
        }
        Ok(())
    }

    /// The time `size` bytes take to serialize at this rate (zero without a rate), rounded
    /// up to the nanosecond.
    pub fn serialization(&self, size: usize) -> Duration {
        match self.rate {
            Some(rate) if rate > 0 => {
                let nanos = (size as u128 * 1_000_000_000).div_ceil(u128::from(rate));
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
            _ => Duration::ZERO,
        }
    }
}

/// What became of a datagram offered to a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It comes out at the far end at this time.
    Arrives(Instant),
    /// The queue was full: dropped at the tail.
    DroppedQueue,
    /// Lost at random (after taking its place in the queue and on the wire).
    Lost,
}

/// The counters of one link. Bytes are as the caller counted them (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams offered to the link, and their bytes.
    pub sent: u64,
    pub sent_bytes: u64,
    /// Dropped because the queue was full.
    pub dropped_queue: u64,
    pub dropped_queue_bytes: u64,
    /// Lost at random.
    pub dropped_loss: u64,
    /// Neither: they come out at the far end.
    pub passed: u64,
    pub passed_bytes: u64,
    /// The most bytes that waited in the queue at once.
    pub peak_queue_bytes: usize,
}

/// One direction of a link: its configuration, its queue and its counters.
#[derive(Debug, Clone)]
pub struct Link {
    config: LinkConfig,
    /// When the serializer has finished every datagram admitted so far.
    busy_until: Option<Instant>,
    /// The datagrams admitted whose serialization has not started: (start, bytes).
    waiting: VecDeque<(Instant, usize)>,
    waiting_bytes: usize,
    stats: LinkStats,
}

impl Link {
    /// A fresh link (nothing queued, counters at zero). `config` should pass
    /// [`LinkConfig::check`]; a rate of 0 is taken as 1 byte per second and a loss outside
    /// 0..=1 as the nearest bound, rather than failing later.
    pub fn new(mut config: LinkConfig) -> Link {
        config.rate = config.rate.map(|r| r.max(1));
        config.loss = if config.loss.is_nan() {
            0.0
        } else {
            config.loss.clamp(0.0, 1.0)
        };
        Link {
            config,
            busy_until: None,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            stats: LinkStats::default(),
        }
    }

    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// The bytes waiting for serialization at `now` (calls must come in time order).
    pub fn queued_bytes(&mut self, now: Instant) -> usize {
        self.advance(now);
        self.waiting_bytes
    }

    /// Forgets the datagrams whose serialization has started by `now`.
    fn advance(&mut self, now: Instant) {
        while let Some(&(start, size)) = self.waiting.front() {
            if start > now {
                break;
            }
            self.waiting.pop_front();
            self.waiting_bytes -= size;
        }
    }

    /// A datagram of `size` bytes enters the link at `now` (calls must come in time order):
    /// when it comes out, or why it does not. `rng` draws the random loss.
    pub fn offer<R: Rng + ?Sized>(&mut self, now: Instant, size: usize, rng: &mut R) -> Verdict {
        self.stats.sent += 1;
        self.stats.sent_bytes += size as u64;
        self.advance(now);
        let out = if self.config.rate.is_some() {
            let start = self.busy_until.map_or(now, |b| b.max(now));
            if start > now {
                if self
                    .config
                    .queue
                    .is_some_and(|limit| self.waiting_bytes + size > limit)
                {
                    self.stats.dropped_queue += 1;
                    self.stats.dropped_queue_bytes += size as u64;
                    return Verdict::DroppedQueue;
                }
                self.waiting.push_back((start, size));
                self.waiting_bytes += size;
                self.stats.peak_queue_bytes = self.stats.peak_queue_bytes.max(self.waiting_bytes);
            }
            let done = start + self.config.serialization(size);
            self.busy_until = Some(done);
            done
        } else {
            now
        };
        if self.config.loss > 0.0 && rng.random_bool(self.config.loss) {
            self.stats.dropped_loss += 1;
            return Verdict::Lost;
        }
        self.stats.passed += 1;
        self.stats.passed_bytes += size as u64;
        Verdict::Arrives(out + self.config.delay)
    }
}
