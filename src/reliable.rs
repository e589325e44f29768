//! Reliable, ordered delivery of chat messages over one session: a send window and a
//! receive window. Plain data structures: no sockets, no clock (`now` is passed in).
//!
//! The sender numbers messages 1, 2, 3, ..., keeps at most `window` of them in flight, and
//! resends each one whose acknowledgement has not come within the retransmission timeout
//! (RTO). The RTO follows RFC 6298: a smoothed round-trip time and its variance, samples
//! only from messages sent once (Karn's rule), doubling on every timeout, clamped between a
//! floor and the session's retry interval.
//!
//! A message need not wait for its timeout when the path shows it lost: once a message sent
//! once, and sent a reorder window (a quarter of the smoothed round trip, at least 1 ms) after
//! another, is acknowledged while the other is not, the other is resent at once (early
//! retransmission, after RACK, RFC 8985). On sparse traffic the next message's
//! acknowledgement so reveals a loss long before the RTO would, and messages sent together
//! may still arrive in any order without a resend.
//!
//! An acknowledgement names one message (`seq`: it has arrived, stop resending it) and a
//! cumulative number (every message up to it has arrived and has been shown, in order). A
//! message counts as *delivered* only once the cumulative number covers it: a message that
//! arrived early is not shown until the gap before it fills. After `max_tries` sends without
//! an acknowledgement the window is *broken*: the stream cannot go on in order, so the
//! session must end and every message not yet delivered is reported as such.
//!
//! The receiver delivers each message exactly once and in order: duplicates are dropped,
//! messages that arrive early wait (up to `window` ahead) for the gap to fill.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Deref;
use std::time::{Duration, Instant};

/// Settings of a send window.
#[derive(Debug, Clone)]
pub struct SendConfig {
    /// Most messages in flight (sent, not yet acknowledged) at once.
    pub window: usize,
    /// Sends of one message before it is reported undelivered.
    pub max_tries: u32,
    /// The RTO before any round trip has been measured.
    pub initial_rto: Duration,
    /// The RTO never goes below this.
    pub min_rto: Duration,
    /// The RTO never goes above this (the session's retry interval).
    pub max_rto: Duration,
}

impl Default for SendConfig {
    fn default() -> Self {
        SendConfig {
            window: 256,
            max_tries: 10,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(50),
            max_rto: Duration::from_secs(10),
        }
    }
}

/// A round-trip-time estimator and retransmission timeout, after RFC 6298.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    /// The RTO without back-off.
    base_rto: Duration,
    /// How many times the RTO has been doubled since the last fresh sample.
    backoff: u32,
    min_rto: Duration,
    max_rto: Duration,
}

impl RttEstimator {
    pub fn new(initial_rto: Duration, min_rto: Duration, max_rto: Duration) -> Self {
        RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            base_rto: initial_rto.clamp(min_rto, max_rto.max(min_rto)),
            backoff: 0,
            min_rto,
            max_rto: max_rto.max(min_rto),
        }
    }

    /// The smoothed round-trip time, once one has been measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The current timeout, back-off included.
    pub fn rto(&self) -> Duration {
        let factor = 1u32 << self.backoff.min(16);
        self.base_rto
            .saturating_mul(factor)
            .clamp(self.min_rto, self.max_rto)
    }

    /// A round-trip sample from a message that was sent exactly once.
    pub fn on_sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(rtt);
        // RFC 6298: RTO = SRTT + max(G, 4 * RTTVAR); a 1 ms clock granularity.
        self.base_rto = (srtt + (self.rttvar * 4).max(Duration::from_millis(1)))
            .clamp(self.min_rto, self.max_rto);
        self.backoff = 0;
    }

    /// A retransmission timer expired: double the timeout (RFC 6298, 5.5).
    pub fn on_timeout(&mut self) {
        if self.rto() < self.max_rto {
            self.backoff += 1;
        }
    }
}

#[derive(Debug, Clone)]
struct InFlight<T> {
    text: T,
    first_sent: Instant,
    /// When its latest copy was sent.
    last_sent: Instant,
    deadline: Instant,
    tries: u32,
    /// Acknowledged on its own: it has arrived (and waits there for a gap to fill).
    arrived: bool,
    /// Queued in `due` for a resend.
    due: bool,
}

/// What [`SendWindow::poll_transmit`] asks to send: for chat, text (`U = str`); for file
/// chunks, bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing<'a, U: ?Sized = str> {
    pub seq: u64,
    pub text: &'a U,
    /// True when this is a resend.
    pub retransmit: bool,
}

/// The sending half of a session. See the module documentation. The payload `T` is chat
/// text by default; file transfers send chunks of bytes through the same window.
#[derive(Debug, Clone)]
pub struct SendWindow<T = String> {
    config: SendConfig,
    rtt: RttEstimator,
    next_seq: u64,
    /// Numbered, not yet sent: the window was full.
    waiting: VecDeque<(u64, T)>,
    in_flight: BTreeMap<u64, InFlight<T>>,
    /// (deadline, seq) of every message in flight that is neither arrived nor due: the
    /// earliest is the next timeout, found without scanning the window.
    timers: BTreeSet<(Instant, u64)>,
    /// Due for a (re)send, in order.
    due: VecDeque<u64>,
    /// Delivered since the last `poll_delivered`.
    delivered: VecDeque<u64>,
    /// A message ran out of tries.
    broken: bool,
    retransmissions: u64,
    /// Of which sent early, before their timeout (see `detect_losses`).
    early_retransmissions: u64,
}

impl SendWindow {
    /// A send window for chat text.
    pub fn new(config: SendConfig) -> Self {
        Self::for_payload(config)
    }
}

impl<T: Deref> SendWindow<T> {
    /// A send window for any payload (file chunks: `SendWindow::<Vec<u8>>::for_payload`).
    pub fn for_payload(config: SendConfig) -> Self {
        let rtt = RttEstimator::new(config.initial_rto, config.min_rto, config.max_rto);
        SendWindow {
            config,
            rtt,
            next_seq: 1,
            waiting: VecDeque::new(),
            in_flight: BTreeMap::new(),
            timers: BTreeSet::new(),
            due: VecDeque::new(),
            delivered: VecDeque::new(),
            broken: false,
            retransmissions: 0,
            early_retransmissions: 0,
        }
    }

    /// Numbers a new message and queues it for sending; returns its number.
    pub fn push(&mut self, text: T) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.waiting.push_back((seq, text));
        seq
    }

    /// The next datagram to send now, if any: resends first, then new messages while the
    /// window has room. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Outgoing<'_, T::Target>> {
        let rto = self.rtt.rto();
        while let Some(seq) = self.due.pop_front() {
            // A message acknowledged after it was marked due is skipped.
            let resend = match self.in_flight.get_mut(&seq) {
                Some(f) => {
                    f.due = false;
                    !f.arrived
                }
                None => false,
            };
            if !resend {
                continue;
            }
            self.retransmissions += 1;
            let f = self.in_flight.get_mut(&seq).expect("checked above");
            f.tries += 1;
            f.last_sent = now;
            f.deadline = now + rto;
            self.timers.insert((f.deadline, seq));
            return Some(Outgoing {
                seq,
                text: &*f.text,
                retransmit: true,
            });
        }
        if self.in_flight.len() >= self.config.window {
            return None;
        }
        let (seq, text) = self.waiting.pop_front()?;
        let f = self.in_flight.entry(seq).or_insert(InFlight {
            text,
            first_sent: now,
            last_sent: now,
            deadline: now + rto,
            tries: 1,
            arrived: false,
            due: false,
        });
        self.timers.insert((f.deadline, seq));
        Some(Outgoing {
            seq,
            text: &*f.text,
            retransmit: false,
        })
    }

    /// An acknowledgement: `seq` has arrived, and everything up to `cumulative` has been
    /// shown in order (and is now delivered).
    pub fn on_ack(&mut self, now: Instant, seq: u64, cumulative: u64) {
        // When the acknowledged message was sent, if it was sent once (Karn's rule: only
        // then is it clear which copy arrived).
        let mut sent_once_at = None;
        if let Some(f) = self.in_flight.get_mut(&seq) {
            if f.tries == 1 && !f.arrived {
                self.rtt
                    .on_sample(now.saturating_duration_since(f.first_sent));
                sent_once_at = Some(f.first_sent);
            }
            if !f.arrived {
                self.timers.remove(&(f.deadline, seq));
                f.arrived = true;
            }
        }
        while let Some(entry) = self.in_flight.first_entry() {
            if *entry.key() > cumulative {
                break;
            }
            let (s, f) = entry.remove_entry();
            if !f.arrived {
                self.timers.remove(&(f.deadline, s));
            }
            self.delivered.push_back(s);
        }
        if let Some(acked_sent) = sent_once_at {
            self.detect_losses(acked_sent);
        }
    }

    /// Early retransmission (after RACK, RFC 8985, simplified): a message sent once that
    /// has arrived shows that every message whose latest copy went out more than a reorder
    /// window before it, and that has not arrived, is lost. Those are resent at once rather
    /// than at their timeout: on sparse traffic, the next message's acknowledgement reveals
    /// a loss long before the RTO would.
    fn detect_losses(&mut self, acked_sent: Instant) {
        let window = self.reorder_window();
        let Some(before) = acked_sent.checked_sub(window) else {
            return;
        };
        // Copies are first sent in order, so only messages first sent before `before` can
        // qualify: stop at the first one sent later.
        for (&seq, f) in self.in_flight.iter_mut() {
            if f.first_sent > before {
                break;
            }
            if f.arrived || f.due || f.last_sent > before || f.tries >= self.config.max_tries {
                continue;
            }
            self.timers.remove(&(f.deadline, seq));
            f.due = true;
            self.due.push_back(seq);
            self.early_retransmissions += 1;
        }
    }

    /// How much later than another message one may arrive without being taken for lost: a
    /// quarter of the smoothed round trip (RFC 8985), at least 1 ms.
    fn reorder_window(&self) -> Duration {
        (self.rtt.srtt().unwrap_or(self.rtt.rto()) / 4).max(Duration::from_millis(1))
    }

    /// Queues the messages whose timeout has passed for a resend. A message already sent
    /// `max_tries` times breaks the window instead (see [`SendWindow::is_broken`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired = false;
        while let Some(&(deadline, seq)) = self.timers.first() {
            if deadline > now {
                break;
            }
            self.timers.pop_first();
            let f = self
                .in_flight
                .get_mut(&seq)
                .expect("timers only name messages in flight");
            expired = true;
            if f.tries >= self.config.max_tries {
                self.broken = true;
            } else {
                f.due = true;
                self.due.push_back(seq);
            }
        }
        if expired {
            self.rtt.on_timeout();
        }
    }

    /// When [`SendWindow::handle_timeout`] must next be called, or `None` when nothing
    /// awaits an acknowledgement. A message already due is reported by
    /// [`SendWindow::wants_to_send`] instead.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.broken {
            return None;
        }
        self.timers.first().map(|&(deadline, _)| deadline)
    }

    /// True when [`SendWindow::poll_transmit`] would return something now.
    pub fn wants_to_send(&self) -> bool {
        !self.due.is_empty()
            || (!self.waiting.is_empty() && self.in_flight.len() < self.config.window)
    }

    pub fn poll_delivered(&mut self) -> Option<u64> {
        self.delivered.pop_front()
    }

    /// True once a message has been sent `max_tries` times without an acknowledgement: the
    /// peer is unreachable, and the messages after it can never be shown in order. The
    /// session should end; [`SendWindow::abandon`] lists what was not delivered.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Gives up on everything not yet delivered (the session ended); returns the numbers
    /// in order, so that the user can be told each one was not delivered.
    pub fn abandon(&mut self) -> Vec<u64> {
        let mut lost: Vec<u64> = self.in_flight.keys().copied().collect();
        lost.extend(self.waiting.iter().map(|(s, _)| *s));
        self.in_flight.clear();
        self.timers.clear();
        self.waiting.clear();
        self.due.clear();
        lost
    }

    /// Messages numbered but not yet acknowledged nor given up.
    pub fn outstanding(&self) -> usize {
        self.in_flight.len() + self.waiting.len()
    }

    pub fn is_idle(&self) -> bool {
        self.outstanding() == 0
    }

    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    /// Resends so far.
    pub fn retransmissions(&self) -> u64 {
        self.retransmissions
    }

    /// Of the resends, how many were early: a later message had arrived.
    pub fn early_retransmissions(&self) -> u64 {
        self.early_retransmissions
    }
}

/// What [`RecvWindow::receive`] made of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received<T = String> {
    /// New and in order: these messages (this one, and any that waited for it) are ready to
    /// show, in order.
    Deliver(Vec<(u64, T)>),
    /// Arrived before a gap; held until the gap fills.
    Held,
    /// Already received: not to be shown again (still to be acknowledged).
    Duplicate,
    /// Too far ahead of the gap to hold; dropped without an acknowledgement, so that the
    /// sender resends it later.
    TooFarAhead,
}

/// The receiving half of a session. See the module documentation.
#[derive(Debug, Clone)]
pub struct RecvWindow<T = String> {
    /// The next number to deliver.
    next: u64,
    held: BTreeMap<u64, T>,
    window: u64,
    duplicates: u64,
}

impl RecvWindow {
    /// A receive window for chat text.
    pub fn new(window: usize) -> Self {
        Self::for_payload(window)
    }
}

impl<T> RecvWindow<T> {
    /// A receive window for any payload (file chunks: `RecvWindow::<Vec<u8>>::for_payload`).
    pub fn for_payload(window: usize) -> Self {
        RecvWindow {
            next: 1,
            held: BTreeMap::new(),
            window: window.max(1) as u64,
            duplicates: 0,
        }
    }

    pub fn receive(&mut self, seq: u64, text: T) -> Received<T> {
        if seq < self.next || self.held.contains_key(&seq) {
            self.duplicates += 1;
            return Received::Duplicate;
        }
        if seq >= self.next.saturating_add(self.window) {
            return Received::TooFarAhead;
        }
        if seq > self.next {
            self.held.insert(seq, text);
            return Received::Held;
        }
        let mut ready = vec![(seq, text)];
        self.next += 1;
        while let Some(text) = self.held.remove(&self.next) {
            ready.push((self.next, text));
            self.next += 1;
        }
        Received::Deliver(ready)
    }

    /// Every message up to this number has been received.
    pub fn cumulative(&self) -> u64 {
        self.next - 1
    }

    /// The messages held above the gap, as inclusive `(first, last)` runs, the highest
    /// first, at most `max` of them (the selective acknowledgement of a `ChunkAck`).
    pub fn ranges(&self, max: usize) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &seq in self.held.keys().rev() {
            let full = out.len() == max;
            match out.last_mut() {
                Some((first, _)) if *first == seq + 1 => *first = seq,
                _ if full => break,
                _ => out.push((seq, seq)),
            }
        }
        out
    }

    /// How many messages beyond [`RecvWindow::cumulative`] it takes.
    pub fn capacity(&self) -> u64 {
        self.window
    }

    /// Messages held, waiting for a gap to fill.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Duplicates dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rto_follows_rfc6298() {
        let mut r = RttEstimator::new(Duration::from_secs(1), ms(50), Duration::from_secs(10));
        assert_eq!(r.rto(), Duration::from_secs(1));
        r.on_sample(ms(100));
        // srtt 100, rttvar 50: rto = 100 + 4 * 50
        assert_eq!(r.rto(), ms(300));
        r.on_sample(ms(100));
        // rttvar = 3/4 * 50 + 1/4 * 0 = 37.5; rto = 100 + 150
        assert_eq!(r.rto(), ms(250));
        r.on_timeout();
        assert_eq!(r.rto(), ms(500));
        r.on_timeout();
        assert_eq!(r.rto(), ms(1000));
        r.on_sample(ms(100));
        assert!(r.rto() < ms(500), "a fresh sample ends the back-off");
    }

    #[test]
    fn rto_stays_within_its_bounds() {
        let mut r = RttEstimator::new(Duration::from_secs(1), ms(50), ms(2000));
        r.on_sample(Duration::from_micros(30));
        assert_eq!(r.rto(), ms(50));
        for _ in 0..40 {
            r.on_timeout();
        }
        assert_eq!(r.rto(), ms(2000));
    }

    #[test]
    fn window_limits_messages_in_flight() {
        let t0 = Instant::now();
        let mut w = SendWindow::new(SendConfig {
            window: 2,
            ..SendConfig::default()
        });
        for i in 0..5 {
            w.push(format!("m{i}"));
        }
        assert_eq!(w.poll_transmit(t0).map(|o| o.seq), Some(1));
        assert_eq!(w.poll_transmit(t0).map(|o| o.seq), Some(2));
        assert_eq!(w.poll_transmit(t0), None);
        w.on_ack(t0 + ms(1), 1, 1);
        assert_eq!(w.poll_delivered(), Some(1));
        assert_eq!(w.poll_transmit(t0).map(|o| o.seq), Some(3));
    }

    #[test]
    fn cumulative_ack_covers_earlier_messages() {
        let t0 = Instant::now();
        let mut w = SendWindow::new(SendConfig::default());
        for i in 0..3 {
            w.push(format!("m{i}"));
        }
        while w.poll_transmit(t0).is_some() {}
        w.on_ack(t0 + ms(5), 3, 3);
        let got: Vec<u64> = std::iter::from_fn(|| w.poll_delivered()).collect();
        assert_eq!(got, vec![1, 2, 3]);
        assert!(w.is_idle());
    }

    #[test]
    fn unacked_message_is_resent_after_rto_then_given_up() {
        let t0 = Instant::now();
        let cfg = SendConfig {
            max_tries: 3,
            initial_rto: ms(100),
            min_rto: ms(100),
            max_rto: ms(1000),
            ..SendConfig::default()
        };
        let mut w = SendWindow::new(cfg);
        w.push("hello".into());
        assert!(w.poll_transmit(t0).is_some());
        assert_eq!(w.poll_timeout(), Some(t0 + ms(100)));
        w.handle_timeout(t0 + ms(99));
        assert_eq!(w.poll_transmit(t0 + ms(99)), None, "not before the RTO");
        w.handle_timeout(t0 + ms(100));
        let again = w.poll_transmit(t0 + ms(100)).expect("resent at the RTO");
        assert!(again.retransmit);
        // Back-off doubled the RTO.
        assert_eq!(w.poll_timeout(), Some(t0 + ms(300)));
        w.handle_timeout(t0 + ms(300));
        assert!(w.poll_transmit(t0 + ms(300)).is_some());
        assert!(!w.is_broken());
        w.handle_timeout(t0 + ms(700));
        assert_eq!(w.poll_transmit(t0 + ms(700)), None);
        assert!(w.is_broken(), "out of tries: the stream cannot go on");
        assert_eq!(w.poll_timeout(), None);
        assert_eq!(w.abandon(), vec![1]);
        assert!(w.is_idle());
    }

    #[test]
    fn an_early_message_is_not_delivered_until_the_gap_fills() {
        let t0 = Instant::now();
        let mut w = SendWindow::new(SendConfig {
            initial_rto: ms(100),
            min_rto: ms(100),
            ..SendConfig::default()
        });
        w.push("one".into());
        w.push("two".into());
        while w.poll_transmit(t0).is_some() {}
        // Message 2 arrived, message 1 did not: 2 waits at the receiver, unseen.
        w.on_ack(t0 + ms(10), 2, 0);
        assert_eq!(w.poll_delivered(), None, "2 is not shown yet");
        w.handle_timeout(t0 + ms(100));
        let resent: Vec<u64> =
            std::iter::from_fn(|| w.poll_transmit(t0 + ms(100)).map(|o| o.seq)).collect();
        assert_eq!(resent, vec![1], "only the missing message is resent");
        w.on_ack(t0 + ms(120), 1, 2);
        let got: Vec<u64> = std::iter::from_fn(|| w.poll_delivered()).collect();
        assert_eq!(got, vec![1, 2]);
        assert!(w.is_idle());
    }

    #[test]
    fn a_later_message_arriving_resends_an_earlier_one_before_its_timeout() {
        let t0 = Instant::now();
        let mut w = SendWindow::new(SendConfig::default());
        w.push("one".into());
        assert!(w.poll_transmit(t0).is_some());
        w.push("two".into());
        assert!(w.poll_transmit(t0 + ms(20)).is_some());
        // 2 arrived, 1 did not, and 1 went out well before 2: 1 is lost.
        w.on_ack(t0 + ms(21), 2, 0);
        let again = w.poll_transmit(t0 + ms(21)).expect("resent at once");
        assert_eq!((again.seq, again.retransmit), (1, true));
        assert_eq!((w.retransmissions(), w.early_retransmissions()), (1, 1));
        // Its timer starts again from the resend.
        assert_eq!(w.poll_timeout(), Some(t0 + ms(21) + w.rtt().rto()));
        w.on_ack(t0 + ms(22), 1, 2);
        let got: Vec<u64> = std::iter::from_fn(|| w.poll_delivered()).collect();
        assert_eq!(got, vec![1, 2]);
    }

    #[test]
    fn messages_sent_together_may_arrive_out_of_order_without_a_resend() {
        let t0 = Instant::now();
        let mut w = SendWindow::new(SendConfig::default());
        w.push("one".into());
        w.push("two".into());
        while w.poll_transmit(t0).is_some() {}
        w.on_ack(t0 + ms(5), 2, 0);
        assert_eq!(
            w.poll_transmit(t0 + ms(5)),
            None,
            "within the reorder window"
        );
        assert_eq!(w.retransmissions(), 0);
    }

    #[test]
    fn an_acknowledged_resend_reveals_no_loss() {
        let t0 = Instant::now();
        let mut w = SendWindow::new(SendConfig {
            initial_rto: ms(100),
            min_rto: ms(100),
            ..SendConfig::default()
        });
        w.push("one".into());
        assert!(w.poll_transmit(t0).is_some());
        w.push("two".into());
        assert!(w.poll_transmit(t0 + ms(20)).is_some());
        w.handle_timeout(t0 + ms(100));
        assert_eq!(w.poll_transmit(t0 + ms(100)).map(|o| o.seq), Some(1));
        w.handle_timeout(t0 + ms(120));
        assert_eq!(w.poll_transmit(t0 + ms(120)).map(|o| o.seq), Some(2));
        // Which copy of 2 arrived is unknown (Karn), so it says nothing about the copy of 1
        // sent between the two.
        w.on_ack(t0 + ms(121), 2, 0);
        assert_eq!(w.poll_transmit(t0 + ms(121)), None);
        assert_eq!(w.early_retransmissions(), 0);
    }

    #[test]
    fn receiver_drops_duplicates_and_holds_early_messages() {
        let mut r = RecvWindow::new(8);
        assert_eq!(r.receive(2, "b".into()), Received::Held);
        assert_eq!(r.receive(2, "b".into()), Received::Duplicate);
        assert_eq!(r.cumulative(), 0);
        assert_eq!(
            r.receive(1, "a".into()),
            Received::Deliver(vec![(1, "a".into()), (2, "b".into())])
        );
        assert_eq!(r.receive(1, "a".into()), Received::Duplicate);
        assert_eq!(r.cumulative(), 2);
        assert_eq!(r.receive(11, "far".into()), Received::TooFarAhead);
        assert_eq!(r.duplicates(), 2);
    }

    #[test]
    fn held_messages_are_reported_as_ranges_highest_first() {
        let mut r = RecvWindow::new(64);
        for seq in [3, 4, 5, 8, 10, 11] {
            assert_eq!(r.receive(seq, String::new()), Received::Held);
        }
        assert_eq!(r.ranges(16), vec![(10, 11), (8, 8), (3, 5)]);
        assert_eq!(r.ranges(2), vec![(10, 11), (8, 8)]);
        assert!(matches!(r.receive(1, String::new()), Received::Deliver(_)));
        assert!(matches!(r.receive(2, String::new()), Received::Deliver(_)));
        assert_eq!(r.cumulative(), 5);
        assert_eq!(r.ranges(16), vec![(10, 11), (8, 8)]);
        assert_eq!(r.held(), 3);
    }
}
