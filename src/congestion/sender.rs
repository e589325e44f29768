//! One transfer's sending side: chunks numbered 1, 2, 3, ...; every copy sent of a chunk is
//! a *transmission* with a number of its own (never reused, like QUIC's packet numbers), so
//! that loss detection can tell copies apart; acknowledgements name chunks (a cumulative
//! number and ranges above it).
//!
//! Loss detection is RFC 9002's (§6): a transmission is lost once one sent 3 later is
//! acknowledged (packet threshold), or once it is older than 9/8 of the round trip when a
//! later one is acknowledged (time threshold, with a timer for the rest). A lost chunk is
//! resent alone: the chunks that arrived after it are in the acknowledgement's ranges and
//! are not sent again. When acknowledgements stop, the probe timeout (PTO, §6.2: smoothed RTT
//! plus 4 x RTT variance plus the receiver's acknowledgement delay, doubling each time) sends
//! one probe, the oldest chunk not acknowledged, and declares nothing lost: a pause in the
//! acknowledgements costs one datagram, not a window. `max_tries` probe timeouts in a row
//! without an acknowledgement break the transfer (the peer is gone).
//!
//! What may leave is bounded three ways: the congestion window ([`Controller`]), the pacer
//! ([`Pacer`]), and the receiver's window (flow control: the receiver says up to which chunk
//! it can take; a receiver that says nothing takes [`SenderConfig::default_window`] chunks
//! beyond the cumulative number, as before this field existed).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::{Algorithm, Controller, FastStart, Growth, Pacer, Signal, Signals, FAST_GAIN};

/// Settings of a [`ChunkSender`].
#[derive(Debug, Clone)]
pub struct SenderConfig {
    pub algorithm: Algorithm,
    /// Probe timeouts in a row without an acknowledgement before the transfer is broken.
    pub max_tries: u32,
    /// The round trip assumed before one is measured (RFC 9002: 333 ms).
    pub initial_rtt: Duration,
    /// The longest probe timeout (the session's retry interval).
    pub max_pto: Duration,
    /// How long the receiver may hold an acknowledgement back (RFC 9002's max_ack_delay).
    pub max_ack_delay: Duration,
    /// Chunks beyond the cumulative number a receiver that advertises no window accepts.
    pub default_window: u64,
    /// Bytes a transmission costs on the wire beyond its data: the chunk's fields, the
    /// `Sealed` envelope around it (its fields and the 16-byte tag), the datagram header,
    /// IPv4 and UDP. 144: a full chunk of 1,056 bytes is a datagram of 1,200 on the wire (a
    /// test checks it against the encoding).
    pub overhead: u64,
    /// The largest chunk, in bytes of data.
    pub chunk_size: u64,
    /// Pace transmissions (off only for comparisons).
    pub pacing: bool,
    /// The initial congestion window, in datagrams (see [`INITIAL_WINDOW`]).
    pub initial_window: u64,
    /// Grow faster than doubling at the start while the path proves it has the room
    /// ([`FastStart`]).
    pub fast_start: bool,
}

/// The initial window of a transfer, in datagrams: 64, the fixed window the release before
/// congestion control sent at once, rather than RFC 9002's 10. RFC 9002 §7.2 allows a
/// larger initial window; here it is paced (a burst of at most [`super::pacer::MIN_BURST`]
/// datagrams, the rest spread over half the initial RTT until a round trip is measured, then
/// over half the minimum one), so it never leaves as the single burst the old fixed window
/// did. On a 100 ms path it saves between two and three doublings of slow start (~0.25 s
/// of a 32 MiB transfer at 100 Mbit/s).
pub const INITIAL_WINDOW: u64 = 64;

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            algorithm: Algorithm::Cubic,
            max_tries: 10,
            initial_rtt: Duration::from_millis(333),
            max_pto: Duration::from_secs(10),
            max_ack_delay: Duration::from_millis(25),
            default_window: 64,
            overhead: 144,
            chunk_size: crate::wire::CHUNK_SIZE as u64,
            pacing: true,
            initial_window: INITIAL_WINDOW,
            fast_start: true,
        }
    }
}

/// Counters of a sender.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Transmissions, first copies and resends.
    pub sent: u64,
    /// Resends of chunks declared lost.
    pub retransmissions: u64,
    /// Probes sent at a probe timeout.
    pub probes: u64,
    /// Transmissions declared lost.
    pub lost: u64,
    /// Window reductions: for a standing queue, for heavy loss, for persistent congestion.
    pub delay_signals: u64,
    pub loss_signals: u64,
    pub persistent: u64,
    /// The largest congestion window, and the most bytes in flight.
    pub max_window: u64,
    pub max_in_flight: u64,
    /// The congestion window now.
    pub window: u64,
    /// Slow starts ended by the bottleneck's rate measured at the end of fast growth.
    pub fast_exits: u64,
}

/// What [`ChunkSender::poll_transmit`] asks to send: chunk `seq`, of `len` bytes. The
/// sender keeps no copy of the chunks' bytes (the caller reads them again for a resend), so
/// that its memory does not follow its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    pub seq: u64,
    pub len: usize,
    /// True when this is not the chunk's first copy.
    pub retransmit: bool,
}

#[derive(Debug, Clone)]
struct Transmission {
    seq: u64,
    time: Instant,
    bytes: u64,
    /// The window limited what was in flight when it left.
    cwnd_limited: bool,
}

#[derive(Debug, Clone)]
struct Chunk {
    /// Bytes of data.
    len: usize,
    /// Its transmissions still in flight.
    in_flight: Vec<u64>,
    sends: u32,
    /// Declared lost and not yet resent.
    due: bool,
}

/// The sending side of one transfer. See the module documentation.
#[derive(Debug)]
pub struct ChunkSender {
    config: SenderConfig,
    controller: Box<dyn Controller>,
    pacer: Pacer,
    signals: Signals,
    fast: FastStart,
    srtt: Option<Duration>,
    rttvar: Duration,
    latest_rtt: Duration,
    next_pn: u64,
    next_seq: u64,
    /// Transmissions in flight (neither acknowledged nor declared lost), by number.
    sent: BTreeMap<u64, Transmission>,
    /// Chunks sent and not acknowledged, by number.
    chunks: BTreeMap<u64, Chunk>,
    /// Chunks pushed and never sent.
    waiting: VecDeque<(u64, usize)>,
    /// Chunks declared lost, to resend, lowest first.
    due: BTreeSet<u64>,
    cumulative: u64,
    /// The highest chunk the receiver can take.
    limit: u64,
    bytes_in_flight: u64,
    largest_acked_pn: u64,
    /// When the time threshold declares the next transmission lost.
    loss_time: Option<Instant>,
    pto_count: u32,
    last_sent: Option<Instant>,
    probes: u32,
    /// When the pacer lets the next datagram go, if it held one back.
    paced_until: Option<Instant>,
    /// The pacer, not a lack of data, held the latest transmissions back: the window is not
    /// underused (RFC 9002 §7.8), so what leaves now counts as window-limited.
    pacing_limited: bool,
    /// The first transmission sent since the sender last ran out of data: when the pacer
    /// then holds one back, those sent before it (a burst the bucket let go at once) were
    /// limited by the window and the pacer too, not by the data.
    burst_from: u64,
    /// Slow start ends without the drain (see [`Growth::Ended`] in `on_ack`).
    skip_drain: bool,
    broken: bool,
    stats: SenderStats,
    /// Bytes acknowledged so far, and (time, that count) at recent acknowledgements, for
    /// the delivery rate; records older than a minimum round trip are pruned.
    delivered: u64,
    deliveries: VecDeque<(Instant, u64)>,
}

impl ChunkSender {
    pub fn new(now: Instant, config: SenderConfig) -> Self {
        let mss = config.chunk_size + config.overhead;
        ChunkSender {
            controller: config
                .algorithm
                .build(mss, config.initial_window.saturating_mul(mss)),
            pacer: Pacer::new(now, mss),
            signals: Signals::new(),
            fast: FastStart::new(config.fast_start),
            srtt: None,
            rttvar: Duration::ZERO,
            latest_rtt: Duration::ZERO,
            next_pn: 1,
            next_seq: 1,
            sent: BTreeMap::new(),
            chunks: BTreeMap::new(),
            waiting: VecDeque::new(),
            due: BTreeSet::new(),
            cumulative: 0,
            limit: config.default_window,
            bytes_in_flight: 0,
            largest_acked_pn: 0,
            loss_time: None,
            pto_count: 0,
            last_sent: None,
            probes: 0,
            paced_until: None,
            pacing_limited: false,
            burst_from: 1,
            skip_drain: false,
            broken: false,
            stats: SenderStats::default(),
            delivered: 0,
            deliveries: VecDeque::new(),
            config,
        }
    }

    /// Numbers the next chunk, of `len` bytes, and queues it; returns its number.
    pub fn push(&mut self, len: usize) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.waiting.push_back((seq, len));
        seq
    }

    /// True when a new chunk pushed now could leave as far as the receiver's window and the
    /// congestion window go (the pacer aside): the time to push the next one, and not
    /// before.
    pub fn wants_data(&self) -> bool {
        self.waiting.is_empty()
            && self.next_seq <= self.limit
            && self.bytes_in_flight + self.mss() <= self.controller.window()
    }

    fn mss(&self) -> u64 {
        self.config.chunk_size + self.config.overhead
    }

    /// The next chunk to send now, if any: a probe, else a resend, else a new chunk, as the
    /// windows and the pacer allow. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Outgoing> {
        self.paced_until = None;
        if self.broken {
            return None;
        }
        if self.probes > 0 {
            self.probes -= 1;
            // The oldest chunk not acknowledged; or, when all have been, a new one.
            let seq = match self.chunks.keys().next() {
                Some(&seq) => seq,
                None => self.take_new()?,
            };
            self.stats.probes += 1;
            return Some(self.send(now, seq));
        }
        let has_due = !self.due.is_empty();
        let has_new = self.waiting.front().is_some_and(|&(s, _)| s <= self.limit);
        if !has_due && !has_new {
            self.pacing_limited = false;
            self.burst_from = self.next_pn;
            return None;
        }
        let window = self.controller.window();
        if self.bytes_in_flight > 0 && self.bytes_in_flight + self.mss() > window {
            return None;
        }
        if self.config.pacing {
            let gain = if self.controller.in_slow_start() {
                self.fast.pacing_gain()
            } else {
                1.25
            };
            // The window over the path's minimum round trip: the window spread over the
            // round trip the path has without a queue. Over the smoothed one, a queue in
            // the receiving host (acknowledgements of a burst sent after the whole burst
            // is read) slows the pacing and so the transfer: on loopback, to half. Before a
            // round trip is measured, the initial RTT (RFC 9002 §7.7).
            let rtt = self.signals.min_rtt().unwrap_or(self.config.initial_rtt);
            if let Some(at) = self.pacer.delay(now, self.mss(), window, Some(rtt), gain) {
                self.paced_until = Some(at);
                if !self.pacing_limited {
                    for t in self.sent.range_mut(self.burst_from..).map(|(_, t)| t) {
                        t.cwnd_limited = true;
                    }
                    self.pacing_limited = true;
                }
                return None;
            }
        }
        let seq = match self.due.pop_first() {
            Some(seq) => seq,
            None => self.take_new()?,
        };
        Some(self.send(now, seq))
    }

    /// Moves the next waiting chunk into the table of chunks; returns its number.
    fn take_new(&mut self) -> Option<u64> {
        if self.waiting.front()?.0 > self.limit {
            return None;
        }
        let (seq, len) = self.waiting.pop_front()?;
        self.chunks.insert(
            seq,
            Chunk {
                len,
                in_flight: Vec::new(),
                sends: 0,
                due: false,
            },
        );
        Some(seq)
    }

    fn send(&mut self, now: Instant, seq: u64) -> Outgoing {
        let pn = self.next_pn;
        self.next_pn += 1;
        let window = self.controller.window();
        let chunk = self
            .chunks
            .get_mut(&seq)
            .expect("sent chunks are in the table");
        let len = chunk.len;
        let bytes = len as u64 + self.config.overhead;
        let retransmit = chunk.sends > 0;
        chunk.sends += 1;
        chunk.due = false;
        chunk.in_flight.push(pn);
        self.due.remove(&seq);
        self.bytes_in_flight += bytes;
        self.sent.insert(
            pn,
            Transmission {
                seq,
                time: now,
                bytes,
                cwnd_limited: self.bytes_in_flight * 2 >= window || self.pacing_limited,
            },
        );
        self.pacer.on_sent(bytes);
        self.last_sent = Some(now);
        self.stats.sent += 1;
        if retransmit {
            self.stats.retransmissions += 1;
        }
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.bytes_in_flight);
        Outgoing {
            seq,
            len,
            retransmit,
        }
    }

    /// An acknowledgement: every chunk up to `cumulative` has arrived, and so have `seq`
    /// and the chunks of `ranges` (inclusive, any order; nonsense is ignored). `window`:
    /// the receiver takes chunks up to `cumulative + window` (0: it did not say).
    pub fn on_ack(
        &mut self,
        now: Instant,
        seq: u64,
        cumulative: u64,
        ranges: &[(u64, u64)],
        window: u64,
    ) {
        // Nothing beyond what was sent can have arrived.
        let top = self.waiting.front().map_or(self.next_seq, |&(s, _)| s) - 1;
        let cumulative = cumulative.min(top);
        let window = if window == 0 {
            self.config.default_window
        } else {
            window
        };
        if cumulative >= self.cumulative {
            self.cumulative = cumulative;
            self.limit = self.limit.max(cumulative.saturating_add(window));
        }
        let mut acked: Vec<u64> = self.chunks.range(..=cumulative).map(|(&s, _)| s).collect();
        let extra = std::iter::once((seq, seq)).chain(ranges.iter().copied().take(64));
        for (a, b) in extra {
            if a > b || b <= cumulative || a > top {
                continue;
            }
            acked.extend(
                self.chunks
                    .range(a.max(cumulative + 1)..=b)
                    .map(|(&s, _)| s),
            );
        }
        if acked.is_empty() {
            return;
        }
        // (largest pn newly acknowledged, its time, sent once, window-limited)
        let mut largest: Option<(u64, Instant, bool, bool)> = None;
        let mut acked_bytes = 0;
        let mut acked_count = 0;
        for s in acked {
            let Some(chunk) = self.chunks.remove(&s) else {
                continue;
            };
            if chunk.due {
                self.due.remove(&s);
            }
            for pn in chunk.in_flight {
                if let Some(t) = self.sent.remove(&pn) {
                    self.bytes_in_flight -= t.bytes;
                    acked_bytes += t.bytes;
                    acked_count += 1;
                    if largest.is_none_or(|(l, ..)| pn > l) {
                        largest = Some((pn, t.time, chunk.sends == 1, t.cwnd_limited));
                    }
                }
            }
        }
        let Some((pn, time, once, cwnd_limited)) = largest else {
            return;
        };
        self.delivered += acked_bytes;
        if self.controller.in_slow_start() {
            self.deliveries.push_back((now, self.delivered));
            if let Some(since) = self.signals.min_rtt().and_then(|m| now.checked_sub(m)) {
                while self.deliveries.len() >= 2 && self.deliveries[1].0 <= since {
                    self.deliveries.pop_front();
                }
            }
        } else {
            self.deliveries.clear();
        }
        self.pto_count = 0;
        self.largest_acked_pn = self.largest_acked_pn.max(pn);
        let sample = once.then(|| now.saturating_duration_since(time));
        if let Some(rtt) = sample {
            self.on_rtt_sample(rtt);
        }
        self.detect_lost(now);
        let ss = self.controller.in_slow_start();
        let largest_sent = self.next_pn - 1;
        match self.signals.on_ack(
            now,
            self.largest_acked_pn,
            largest_sent,
            sample,
            acked_count,
            ss,
        ) {
            Some(Signal::SlowStartDone) => {
                let bdp = if self.skip_drain {
                    None
                } else {
                    self.measured_bdp(now)
                };
                self.controller.exit_slow_start(bdp);
            }
            Some(signal) => {
                match signal {
                    Signal::Delay | Signal::DeepQueue => self.stats.delay_signals += 1,
                    _ => self.stats.loss_signals += 1,
                }
                self.controller.on_congestion(now, signal);
            }
            None => {}
        }
        // Fast growth at the start: each byte counts FAST_GAIN - 1 times while the path
        // keeps up (in slow start only: anything else ends it).
        let growth = if self.controller.in_slow_start() {
            self.fast.on_ack(
                now,
                pn,
                time,
                largest_sent,
                acked_bytes,
                sample,
                self.signals.min_rtt(),
                self.signals.slow_start_eta(),
            )
        } else {
            self.fast.stop();
            Growth::Plain
        };
        let srtt = self.srtt.unwrap_or(self.config.initial_rtt);
        self.controller.set_no_queue(self.signals.no_queue());
        self.controller.set_low_queue(self.signals.low_queue());
        let before = self.controller.window();
        self.controller.on_ack(now, acked_bytes, cwnd_limited, srtt);
        match growth {
            Growth::Plain => {}
            Growth::Fast { cap } => {
                if cwnd_limited {
                    let fast = before + acked_bytes * (FAST_GAIN - 1);
                    self.controller
                        .grow_to(cap.map_or(fast, |cap| fast.min(cap)));
                }
            }
            Growth::Ended { rate } => {
                // The acknowledgements came back at the bottleneck's rate: slow start ends
                // with the window at 9/8 of that rate x the minimum round trip (BBR's
                // estimate of the path's product; 9/8 as HyStart++'s drain here, a queue of
                // an eighth of the round trip: below a quarter of the target, the window
                // right at the product counts as an empty path and its boost overshoots
                // the first cut), up or down (down by half at most).
                if let (Some(rate), Some(min)) = (rate, self.signals.min_rtt()) {
                    let bdp = (rate * min.as_secs_f64()) as u64;
                    self.controller.grow_to(bdp + bdp / 8);
                    self.controller.exit_slow_start(Some(bdp));
                    self.stats.fast_exits += 1;
                } else {
                    // Ended by a queue, its rate not measured: another flow may have
                    // filled the link meanwhile (a transfer that starts a round trip
                    // after another grows as fast and meets the queue of the other's
                    // growth). Slow start ends at the queue as before (HyStart++), but
                    // without the drain to the delivery rate this flow measures, which is
                    // then its own small share: drained, it starts its convergence to an
                    // equal share from a quarter of the other's window rather than a half.
                    self.skip_drain = true;
                }
            }
        }
        self.stats.window = self.controller.window();
        self.stats.max_window = self.stats.max_window.max(self.stats.window);
    }

    /// The bandwidth-delay product as delivered: the delivery rate (bytes acknowledged
    /// over the last slow-start eta, while the standing queue that ended slow start shows
    /// the link busy) times the minimum round trip; `None` without records that old.
    fn measured_bdp(&self, now: Instant) -> Option<u64> {
        let min = self.signals.min_rtt()?;
        let since = now.checked_sub(self.signals.slow_start_eta())?;
        let &(then, before) = self.deliveries.iter().rev().find(|(t, _)| *t <= since)?;
        let span = now.saturating_duration_since(then).as_secs_f64();
        let rate = (self.delivered - before) as f64 / span.max(1e-9);
        Some((rate * min.as_secs_f64()) as u64)
    }

    /// RFC 9002 §5.3 (no acknowledgement delay is reported: the receiver acknowledges at
    /// once).
    fn on_rtt_sample(&mut self, rtt: Duration) {
        self.latest_rtt = rtt;
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                self.rttvar = (self.rttvar * 3 + srtt.abs_diff(rtt)) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// RFC 9002 §6.1: declares lost what the packet or time threshold says is, and sets the
    /// timer for the rest.
    fn detect_lost(&mut self, now: Instant) {
        self.loss_time = None;
        let rtt = self
            .srtt
            .unwrap_or(self.config.initial_rtt)
            .max(self.latest_rtt);
        let loss_delay = (rtt * 9 / 8).max(Duration::from_millis(1));
        let lost_before = now.checked_sub(loss_delay);
        let mut lost = Vec::new();
        for (&pn, t) in self.sent.range(..self.largest_acked_pn) {
            if self.largest_acked_pn >= pn + 3 || lost_before.is_some_and(|b| t.time <= b) {
                lost.push(pn);
            } else {
                self.loss_time = Some(t.time + loss_delay);
                break;
            }
        }
        if lost.is_empty() {
            return;
        }
        self.signals.on_lost(lost.len() as u64);
        self.stats.lost += lost.len() as u64;
        // Persistent congestion (§7.6): a run of consecutive transmissions, all lost,
        // spanning more than 3 probe timeouts, after a first round-trip sample.
        let span = self.pto_base() * 3;
        let mut run_start: Option<(u64, Instant)> = None;
        let mut prev_pn = 0;
        let mut persistent = false;
        for &pn in &lost {
            let t = &self.sent[&pn];
            match run_start {
                Some((_, start)) if pn == prev_pn + 1 => {
                    if self.srtt.is_some() && t.time.saturating_duration_since(start) > span {
                        persistent = true;
                    }
                }
                _ => run_start = Some((pn, t.time)),
            }
            prev_pn = pn;
        }
        for pn in lost {
            let t = self.sent.remove(&pn).expect("listed from the table");
            self.bytes_in_flight -= t.bytes;
            if let Some(chunk) = self.chunks.get_mut(&t.seq) {
                chunk.in_flight.retain(|&p| p != pn);
                if chunk.in_flight.is_empty() && !chunk.due {
                    chunk.due = true;
                    self.due.insert(t.seq);
                }
            }
        }
        if persistent {
            self.fast.stop();
            self.stats.persistent += 1;
            self.controller.on_persistent_congestion();
            self.signals.on_reduced(self.next_pn - 1);
        }
    }

    /// The probe timeout without back-off: smoothed RTT + max(4 x variance, 1 ms) + the
    /// receiver's acknowledgement delay (§6.2.1).
    fn pto_base(&self) -> Duration {
        match self.srtt {
            Some(srtt) => {
                srtt + (self.rttvar * 4).max(Duration::from_millis(1)) + self.config.max_ack_delay
            }
            None => self.config.initial_rtt * 2,
        }
    }

    fn pto_deadline(&self) -> Option<Instant> {
        if self.sent.is_empty() || self.broken {
            return None;
        }
        let backoff = 1u32 << self.pto_count.min(16);
        let pto = self
            .pto_base()
            .saturating_mul(backoff)
            .min(self.config.max_pto);
        Some(self.last_sent? + pto)
    }

    /// Does what is due at `now`: losses by the time threshold, a probe at the PTO.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.loss_time.is_some_and(|t| t <= now) {
            self.detect_lost(now);
            return;
        }
        if self.pto_deadline().is_some_and(|t| t <= now) {
            self.pto_count += 1;
            if self.pto_count >= self.config.max_tries {
                self.broken = true;
                return;
            }
            self.probes = 1;
            // The timer starts again from the probe.
            self.last_sent = Some(now);
        }
    }

    /// When [`ChunkSender::handle_timeout`] (or, for the pacer, [`ChunkSender::poll_transmit`])
    /// has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.broken {
            return None;
        }
        [self.loss_time, self.pto_deadline(), self.paced_until]
            .into_iter()
            .flatten()
            .min()
    }

    /// Every chunk up to this one has arrived.
    pub fn cumulative(&self) -> u64 {
        self.cumulative
    }

    /// True once `max_tries` probe timeouts in a row went unanswered.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Chunks held (pushed and not acknowledged).
    pub fn held(&self) -> usize {
        self.chunks.len() + self.waiting.len()
    }

    pub fn bytes_in_flight(&self) -> u64 {
        self.bytes_in_flight
    }

    pub fn window(&self) -> u64 {
        self.controller.window()
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        self.signals.min_rtt()
    }

    /// The receiver's window: the highest chunk it can take now.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// Resends of lost chunks and probes.
    pub fn retransmissions(&self) -> u64 {
        self.stats.retransmissions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Sends everything the sender lets go at `now`; returns the chunk numbers.
    fn drain(s: &mut ChunkSender, now: Instant) -> Vec<u64> {
        std::iter::from_fn(|| s.poll_transmit(now).map(|o| o.seq)).collect()
    }

    fn sender(chunks: usize) -> ChunkSender {
        let t0 = Instant::now();
        let mut s = ChunkSender::new(
            t0,
            SenderConfig {
                pacing: false,
                initial_window: 10,
                ..SenderConfig::default()
            },
        );
        for _ in 0..chunks {
            s.push(crate::wire::CHUNK_SIZE);
        }
        s
    }

    #[test]
    fn nonsense_acknowledgements_change_nothing_and_never_panic() {
        let t0 = Instant::now();
        let mut s = sender(20);
        assert_eq!(drain(&mut s, t0), (1..=10).collect::<Vec<_>>());
        let in_flight = s.bytes_in_flight();
        // Ranges backwards, beyond what was sent, at the very top of u64; a cumulative
        // number beyond what was sent.
        s.on_ack(
            t0 + ms(5),
            u64::MAX,
            0,
            &[(9, 3), (50, 60), (u64::MAX, u64::MAX)],
            0,
        );
        assert_eq!(s.bytes_in_flight(), in_flight);
        assert_eq!(s.cumulative(), 0);
        s.on_ack(t0 + ms(5), 0, u64::MAX, &[(0, u64::MAX)], u64::MAX);
        assert_eq!(s.cumulative(), 10, "only what was sent can be acknowledged");
        assert_eq!(s.bytes_in_flight(), 0);
        assert!(!s.is_broken());
    }

    #[test]
    fn a_receiver_that_advertises_no_window_gets_at_most_64_chunks_ahead() {
        let t0 = Instant::now();
        let mut s = sender(200);
        let mut now = t0;
        let mut sent = drain(&mut s, now);
        // Every chunk but the first arrives, again and again, as the acknowledgements of
        // an old receiver say: the congestion window opens, but nothing goes more than 64
        // beyond the cumulative number.
        for _ in 0..20 {
            now += ms(10);
            let top = *sent.iter().max().unwrap();
            s.on_ack(now, top, 0, &[(2, top)], 0);
            sent.extend(drain(&mut s, now));
        }
        assert_eq!(s.limit(), 64);
        assert_eq!(sent.iter().max(), Some(&64));
        // With a window of 100 advertised, up to 100.
        s.on_ack(now, 1, 0, &[], 100);
        assert_eq!(s.limit(), 100);
        sent.extend(drain(&mut s, now));
        assert_eq!(sent.iter().max(), Some(&100));
    }

    #[test]
    fn the_initial_window_of_64_chunks_is_paced_not_one_burst() {
        let t0 = Instant::now();
        let mut s = ChunkSender::new(t0, SenderConfig::default());
        for _ in 0..200 {
            s.push(1056);
        }
        // Before any round trip: a burst of 10, then the rest at 4 x the initial window
        // over the initial RTT (333 ms; 4: fast start's pacing gain), until the window is
        // full.
        let mut times = Vec::new();
        let mut now = t0;
        while times.len() < 100 {
            match s.poll_transmit(now) {
                Some(_) => times.push(now),
                None => match s.poll_timeout() {
                    Some(t) if t > now && t < t0 + ms(300) => now = t,
                    _ => break,
                },
            }
        }
        assert_eq!(times.len(), 64, "the initial window, no more");
        assert_eq!(times.iter().filter(|&&t| t == t0).count(), 10);
        let last = (times[63] - t0).as_secs_f64();
        // 54 x 1,200 bytes at 4 x 64 x 1,200 / 0.333 s: 70 ms.
        assert!(
            (0.065..0.075).contains(&last),
            "the 64th left after {last} s"
        );
    }

    #[test]
    fn the_default_overhead_is_what_a_sealed_chunk_costs_on_the_wire() {
        use crate::wire::{encoded_len, Message, CHUNK_SIZE};
        // Realistic field values: a small id, a random session, a transfer number and a
        // chunk number of a 32 MiB file, the session's nonce after a few thousand messages.
        let chunk = Message::Chunk {
            from: 1234,
            session: u64::MAX / 3,
            n: 3,
            seq: 30_000,
            data: vec![0xff; CHUNK_SIZE],
        };
        let body = encoded_len(&chunk) - 2;
        let sealed = encoded_len(&Message::Sealed {
            from: 1234,
            session: u64::MAX / 3,
            n: 40_000,
            data: vec![0; body + 16],
        });
        // IPv4 and UDP headers: 28 bytes.
        let wire = sealed as u64 + 28;
        let overhead = SenderConfig::default().overhead;
        assert_eq!(
            overhead,
            wire - CHUNK_SIZE as u64,
            "a full sealed chunk is {wire} bytes on the wire"
        );
    }

    #[test]
    fn a_probe_timeout_sends_one_probe_and_declares_nothing_lost() {
        let t0 = Instant::now();
        let mut s = sender(3);
        assert_eq!(drain(&mut s, t0), vec![1, 2, 3]);
        s.on_ack(t0 + ms(50), 1, 1, &[], 0);
        let pto = s.poll_timeout().expect("a probe timeout");
        // srtt 50 + 4 x 25 + 25 ms of acknowledgement delay, from the last send.
        assert_eq!(pto, t0 + ms(175));
        s.handle_timeout(pto);
        assert_eq!(drain(&mut s, pto), vec![2], "one probe: the oldest");
        assert_eq!(s.stats().lost, 0);
        // Both copies may arrive; 2 and 3 acknowledged, nothing resent again.
        s.on_ack(pto + ms(50), 3, 3, &[], 0);
        assert_eq!(s.bytes_in_flight(), 0);
        assert_eq!(s.cumulative(), 3);
    }
}
