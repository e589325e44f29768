//! One session with a peer: its state (looking up, requesting, incoming, connected), its
//! send and receive windows, its timers, and the chat traffic on it. The table of sessions,
//! and what happens between a session and the rest (requests, their answers, the end of a
//! session, the current peer), is in sessions.rs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::event::{EndReason, Event, PeerStats, SessionInfo};
use super::files::Link;
use super::outputs::Outputs;
use super::retry::{Retry, Step};
use super::PeerConfig;
use crate::reliable::{Received, RecvWindow, SendConfig, SendWindow};
use crate::wire::{ClientId, Message, SessionId};

/// The settings of [`PeerConfig`] that sessions use.
pub(super) struct Settings {
    pub server: SocketAddr,
    pub server_retry: Duration,
    pub server_tries: u32,
    pub retry_interval: Duration,
    pub connect_tries: u32,
    pub terminate_tries: u32,
    pub chat: SendConfig,
    pub session_idle: Duration,
    pub session_timeout: Duration,
    /// Requests waiting for our answer: at most this many, and this many from one source.
    pub max_requests: usize,
    pub max_requests_per_source: usize,
}

impl Settings {
    pub fn new(config: &PeerConfig) -> Self {
        Settings {
            server: config.server,
            server_retry: config.server_retry,
            server_tries: config.server_tries,
            retry_interval: config.retry_interval,
            connect_tries: config.connect_tries,
            terminate_tries: config.terminate_tries,
            chat: config.chat.clone(),
            session_idle: config.session_idle,
            session_timeout: config.session_timeout,
            max_requests: config.max_requests,
            max_requests_per_source: config.max_requests_per_source,
        }
    }

    /// Our `ConnectRequest` for `session`.
    pub fn request(&self, me: ClientId, session: SessionId) -> Message {
        // Its handshake (`hs`) is added as it leaves (secure.rs).
        Message::ConnectRequest {
            from: me,
            session,
            hs: Vec::new(),
        }
    }

    /// A request not heard again for this long is taken as withdrawn: as long as a
    /// requester with our settings keeps resending (`connect_tries` retry intervals), and at
    /// least 3 of them. Fewer would drop a request under loss while its requester still
    /// asks (three resends lost in a row: one chance in 37 at 30% loss), and the person
    /// about to accept would see it vanish.
    pub fn request_lifetime(&self) -> Duration {
        self.retry_interval * self.connect_tries.max(3)
    }
}

pub(super) enum State {
    /// Waiting for the server to say where the peer is.
    LookingUp {
        retry: Retry,
    },
    /// `ConnectRequest` sent; waiting for `Accept` or `Reject`.
    Requesting {
        retry: Retry,
    },
    /// The peer asked; waiting for our user to answer. `order` ranks requests by arrival.
    Incoming {
        order: u64,
    },
    Connected {
        tx: Box<SendWindow>,
        rx: RecvWindow,
    },
}

pub(super) struct Session {
    pub peer: ClientId,
    pub id: SessionId,
    pub addr: Option<SocketAddr>,
    pub state: State,
    pub last_heard: Instant,
    pub last_sent: Instant,
    /// Where our latest `Ack` for this session waits in the queue of transmits (its
    /// position counted from the first transmit ever queued), so that the acknowledgement of
    /// the next `Chat` can be merged into it while it has not been sent yet.
    queued_ack: Option<u64>,
    /// Started by the queue (not by the user): its failures are not shown.
    pub auto: bool,
    /// The deadline the table of sessions last set for it (see `Timers::set`).
    pub scheduled: Option<Instant>,
}

/// What [`Session::handle_timeout`] found.
pub(super) enum Due {
    Nothing,
    /// The lookup or the request got no answer, or the request was withdrawn: the session
    /// is over, with this event for the user (unless the queue started it).
    GaveUp(Event),
    /// Nothing heard from the peer for the session timeout.
    Silent,
    /// A message of ours got no acknowledgement after every try.
    Broken,
}

impl Session {
    pub fn new(
        peer: ClientId,
        id: SessionId,
        addr: Option<SocketAddr>,
        state: State,
        now: Instant,
    ) -> Self {
        Session {
            peer,
            id,
            addr,
            state,
            last_heard: now,
            last_sent: now,
            queued_ack: None,
            auto: false,
            scheduled: None,
        }
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected { .. })
    }

    pub fn info(&self, current: bool) -> SessionInfo {
        SessionInfo {
            peer: self.peer,
            state: match self.state {
                State::LookingUp { .. } => "looking_up",
                State::Requesting { .. } => "requesting",
                State::Incoming { .. } => "incoming",
                State::Connected { .. } => "connected",
            },
            current,
            in_flight: match &self.state {
                State::Connected { tx, .. } => tx.outstanding(),
                _ => 0,
            },
        }
    }

    /// Adds what the windows dropped or repaired to `stats`.
    pub fn count_into(&self, stats: &mut PeerStats) {
        if let State::Connected { tx, rx } = &self.state {
            stats.duplicates += rx.duplicates();
            stats.retransmissions += tx.retransmissions();
            stats.early_retransmissions += tx.early_retransmissions();
        }
    }

    /// The session as the file transfers on it see it.
    pub fn link(&self) -> Link {
        let (rto, srtt) = match &self.state {
            State::Connected { tx, .. } => (tx.rtt().rto(), tx.rtt().srtt()),
            _ => (Duration::from_secs(1), None),
        };
        Link {
            peer: self.peer,
            session: self.id,
            addr: self.addr.expect("connected sessions have an address"),
            rto,
            srtt,
        }
    }

    /// The session is open: chat can flow.
    pub fn open(&mut self, now: Instant, chat: &SendConfig) {
        self.state = State::Connected {
            tx: Box::new(SendWindow::new(chat.clone())),
            rx: RecvWindow::new(chat.window),
        };
        self.last_heard = now;
        self.last_sent = now;
    }

    /// A `Chat` on this session (connected) from `src`: shows what is now in order, and
    /// acknowledges (merged into our `Ack` still queued, when it can be).
    pub fn receive_chat(
        &mut self,
        now: Instant,
        me: ClientId,
        src: SocketAddr,
        seq: u64,
        text: String,
        out: &mut Outputs,
    ) {
        self.last_heard = now;
        self.last_sent = now;
        let State::Connected { rx, .. } = &mut self.state else {
            unreachable!("chat is received on connected sessions")
        };
        let received = rx.receive(seq, text);
        let cumulative = rx.cumulative();
        match received {
            Received::Deliver(ready) => {
                for (seq, text) in ready {
                    let from = self.peer;
                    out.event(Event::Message { from, seq, text });
                }
            }
            Received::Held | Received::Duplicate => {}
            Received::TooFarAhead => return,
        }
        let session = self.id;
        if seq <= cumulative && merge_ack(out, self.queued_ack, src, session, seq, cumulative) {
            return;
        }
        self.queued_ack = Some(out.next_position());
        let ack = Message::Ack {
            from: me,
            session,
            seq,
            cumulative,
        };
        out.transmit(src, ack);
    }

    /// An `Ack` on this session (connected): reports what is now delivered.
    pub fn receive_ack(&mut self, now: Instant, seq: u64, cumulative: u64, out: &mut Outputs) {
        self.last_heard = now;
        let State::Connected { tx, .. } = &mut self.state else {
            unreachable!("acknowledgements are received on connected sessions")
        };
        tx.on_ack(now, seq, cumulative);
        while let Some(seq) = tx.poll_delivered() {
            out.event(Event::Delivered {
                peer: self.peer,
                seq,
            });
        }
    }

    /// When [`Session::handle_timeout`] has something to do.
    pub fn poll_timeout(&self, cfg: &Settings) -> Option<Instant> {
        let times: [Option<Instant>; 3] = match &self.state {
            State::LookingUp { retry } | State::Requesting { retry } => {
                [Some(retry.next()), None, None]
            }
            State::Incoming { .. } => [Some(self.last_heard + cfg.request_lifetime()), None, None],
            State::Connected { tx, .. } => [
                tx.poll_timeout(),
                Some(self.last_sent + cfg.session_idle),
                Some(self.last_heard + cfg.session_timeout),
            ],
        };
        times.into_iter().flatten().min()
    }

    /// Resends of `Lookup` and `ConnectRequest`, chat resends, pings; what ends the session
    /// is returned for the table of sessions to act on.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        me: ClientId,
        cfg: &Settings,
        out: &mut Outputs,
    ) -> Due {
        let peer = self.peer;
        match &mut self.state {
            State::LookingUp { retry } => {
                match retry.poll(now, cfg.server_tries, now + cfg.server_retry) {
                    Some(Step::GiveUp) => return Due::GaveUp(Event::LookupFailed { peer }),
                    Some(Step::Resend) => out.transmit(cfg.server, Message::lookup(peer)),
                    None => {}
                }
            }
            State::Requesting { retry } => {
                let to = self.addr.expect("requests go to an address");
                // Keep to the exact period even if this call came late.
                let then = (retry.next() + cfg.retry_interval).max(now);
                match retry.poll(now, cfg.connect_tries, then) {
                    Some(Step::GiveUp) => {
                        // Tell the peer, once, that we stopped asking.
                        let session = self.id;
                        out.transmit(to, Message::Terminate { from: me, session });
                        return Due::GaveUp(Event::NoAnswer { peer });
                    }
                    Some(Step::Resend) => out.transmit(to, cfg.request(me, self.id)),
                    None => {}
                }
            }
            State::Incoming { .. } if self.last_heard + cfg.request_lifetime() <= now => {
                let reason = EndReason::Cancelled;
                return Due::GaveUp(Event::Terminated { peer, reason });
            }
            State::Connected { tx, .. } => {
                if self.last_heard + cfg.session_timeout <= now {
                    return Due::Silent;
                }
                tx.handle_timeout(now);
                if tx.is_broken() {
                    return Due::Broken;
                }
                if self.last_sent + cfg.session_idle <= now && !tx.wants_to_send() {
                    let to = self.addr.expect("connected sessions have an address");
                    let session = self.id;
                    out.transmit(to, Message::Ping { from: me, session });
                    self.last_sent = now;
                }
            }
            _ => {}
        }
        Due::Nothing
    }

    /// Queues every chat message the send window wants to send now.
    pub fn flush(&mut self, now: Instant, me: ClientId, out: &mut Outputs) {
        let State::Connected { tx, .. } = &mut self.state else {
            return;
        };
        let to = self.addr.expect("connected sessions have an address");
        while let Some(chat) = tx.poll_transmit(now) {
            self.last_sent = now;
            out.transmit(
                to,
                Message::Chat {
                    from: me,
                    session: self.id,
                    seq: chat.seq,
                    text: chat.text.to_string(),
                },
            );
        }
    }
}

/// Folds the acknowledgement of `Chat` `seq`, which `cumulative` covers, into our `Ack`
/// for the same session at `position` if it is still queued and says nothing that the
/// new one does not: `cumulative` covers its `seq` too. True if merged.
fn merge_ack(
    out: &mut Outputs,
    position: Option<u64>,
    to: SocketAddr,
    session: SessionId,
    seq: u64,
    cumulative: u64,
) -> bool {
    let Some(t) = out.queued_mut(position) else {
        return false;
    };
    match &mut t.message {
        Message::Ack {
            session: queued_session,
            seq: queued_seq,
            cumulative: queued_cumulative,
            ..
        } if t.to == to && *queued_session == session && *queued_seq <= cumulative => {
            // The newest message's number: a fresh round-trip sample for the sender.
            *queued_seq = seq;
            *queued_cumulative = cumulative;
            true
        }
        _ => false,
    }
}
