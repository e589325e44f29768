//! The link to the rendezvous server: register (again after a server restart), keepalives,
//! leave. The names we claim and look up there are in names.rs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::event::{CommandError, Event};
use super::outputs::Outputs;
use super::retry::{Retry, Step};
use super::PeerConfig;
use crate::wire::{ClientId, ErrorCode, Key, Message, Token, TurnGrant};

enum State {
    Registering {
        retry: Retry,
        want: Option<ClientId>,
        again: bool,
    },
    Registered {
        keepalive_at: Instant,
    },
    Leaving {
        /// `None` once the server has answered or the tries ran out.
        retry: Option<Retry>,
        acked: bool,
    },
    Done,
}

/// Our registration with the server. See the module documentation.
pub(super) struct Server {
    addr: SocketAddr,
    /// Period of `Register` and `Leave` resends, and how many are sent.
    retry: Duration,
    tries: u32,
    /// The pause between rounds of `Register`s when registering again after a restart.
    round: Duration,
    state: State,
    id: Option<ClientId>,
    token: Token,
    ttl: Duration,
    /// The server said it is rate-limiting us: we keep trying, in rounds, until it lets
    /// us in (told once).
    rate_limited: bool,
    /// When we last started registering again because the server had forgotten us: it
    /// is not done again before a retry interval has passed.
    registered_again_at: Option<Instant>,
    /// The protocol version the server's address answered in, if not ours.
    other_version: Option<u8>,
    /// Our own addresses, told to the server after `Registered` and with every
    /// `Keepalive` (none: nothing is sent).
    candidates: Vec<SocketAddr>,
    /// Our static public key, registered with our id.
    key: Key,
    /// The server's static key, from its `Registered`.
    server_key: Option<Key>,
    /// Our relayed address on a TURN server, told with every `Keepalive`.
    relay: Option<SocketAddr>,
    /// The TURN server and credentials of the last `Registered`, until taken.
    grant: Option<TurnGrant>,
}

/// The longest time to live of our entry that we believe: a `Registered` saying more is
/// taken to say this, so that keepalives never stop (at most a third of it apart).
pub(super) const MAX_TTL: Duration = Duration::from_secs(3600);

/// What [`Server::handle_message`] did with a message from the server.
pub(super) enum Answer {
    /// We are registered (again): the name can be claimed.
    Registered,
    /// The server answered [`Server::renew_grant`]: the same registration, with fresh
    /// TURN credentials (in [`Server::take_grant`]).
    Regranted,
    Handled,
    /// Not about the registration.
    NotMine(Message),
}

impl Server {
    /// Starts registering: the first `Register` goes out at once.
    pub fn new(config: &PeerConfig, now: Instant, out: &mut Outputs) -> Self {
        let want = config.want_id;
        let server = Server {
            addr: config.server,
            retry: config.server_retry,
            tries: config.server_tries,
            round: config.retry_interval,
            state: State::Registering {
                retry: Retry::first(now + config.server_retry),
                want,
                again: false,
            },
            id: None,
            token: 0,
            ttl: Duration::from_secs(30),
            rate_limited: false,
            registered_again_at: None,
            other_version: None,
            candidates: config.candidates.clone().unwrap_or_default(),
            key: *config.identity.public(),
            server_key: None,
            relay: None,
            grant: None,
        };
        server.send_register(want, out);
        server
    }

    /// Our id, once registered (kept while registering again).
    pub fn id(&self) -> Option<ClientId> {
        self.id
    }

    pub fn token(&self) -> Token {
        self.token
    }

    pub fn is_registered(&self) -> bool {
        matches!(self.state, State::Registered { .. })
    }

    /// Neither leaving nor done.
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            State::Registered { .. } | State::Registering { .. }
        )
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Our id, for a command that needs one.
    pub fn usable_id(&self) -> Result<ClientId, CommandError> {
        match self.state {
            State::Leaving { .. } | State::Done => Err(CommandError::Leaving),
            _ => self.id.ok_or(CommandError::NotRegistered),
        }
    }

    pub fn send(&self, out: &mut Outputs, message: Message) {
        out.transmit(self.addr, message);
    }

    /// Tells the server our own addresses at once (a `Keepalive` with them), if we have
    /// any to tell; every keepalive carries them too.
    fn send_candidates(&self, out: &mut Outputs) {
        let Some(id) = self
            .id
            .filter(|_| !self.candidates.is_empty() || self.relay.is_some())
        else {
            return;
        };
        self.send(out, self.keepalive(id, self.token));
    }

    /// A `Keepalive` with our addresses and relayed address.
    fn keepalive(&self, id: ClientId, token: Token) -> Message {
        let mut m = Message::keepalive_with(id, token, self.candidates.clone());
        if let Message::Keepalive { relay, .. } = &mut m {
            *relay = self.relay;
        }
        m
    }

    /// Our relayed address is now `relay` (or none): the server is told at once, if we are
    /// registered, and with every keepalive.
    pub fn set_relay(&mut self, relay: Option<SocketAddr>, out: &mut Outputs) {
        self.relay = relay;
        if matches!(self.state, State::Registered { .. }) {
            self.send_candidates(out);
        }
    }

    /// Asks the server for fresh TURN credentials: a `Register` from our registered
    /// address with our key is answered with our registration as it is (same id, same
    /// token) and a new grant, the server's credentials being short-lived. Nothing is sent
    /// unless registered; the caller asks again if no answer comes.
    pub fn renew_grant(&self, out: &mut Outputs) {
        if let (State::Registered { .. }, Some(id)) = (&self.state, self.id) {
            self.send_register(Some(id), out);
        }
    }

    /// A `Registered` while registered: the answer to [`Server::renew_grant`], our
    /// registration with a fresh grant; with a new token if the server had forgotten us
    /// (restarted) and registered us again, with our id.
    fn renewed(&mut self, msg: Message, out: &mut Outputs) -> Answer {
        if !matches!(&msg, Message::Registered { id, .. } if Some(*id) == self.id) {
            // Not our registration (our id was given away): the next keepalive finds
            // out, and we register again then.
            out.ignore(self.addr, &msg);
            return Answer::Handled;
        }
        let Message::Registered {
            id,
            token,
            ttl_secs,
            key,
            turn,
            ..
        } = msg
        else {
            return Answer::NotMine(msg);
        };
        self.grant = turn;
        self.server_key = Some(key);
        self.ttl = Duration::from_secs(u64::from(ttl_secs.max(1))).min(MAX_TTL);
        if token == self.token {
            return Answer::Regranted;
        }
        self.token = token;
        out.event(Event::Registered { id, again: true });
        self.send_candidates(out);
        Answer::Registered
    }

    /// The TURN server and credentials the server gave with our registration, once.
    pub fn take_grant(&mut self) -> Option<TurnGrant> {
        self.grant.take()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Registering { retry, .. } => Some(retry.next()),
            State::Registered { keepalive_at } => Some(*keepalive_at),
            State::Leaving { retry: Some(r), .. } => Some(r.next()),
            State::Leaving { retry: None, .. } | State::Done => None,
        }
    }

    /// Resends `Register` and `Leave`, sends keepalives, gives up. `settled`: no
    /// `Terminate` of ours waits for its acknowledgement (see [`Server::left_if_done`]).
    pub fn handle_timeout(&mut self, now: Instant, settled: bool, out: &mut Outputs) {
        let (retry, tries) = (self.retry, self.tries);
        let keepalive = self.keepalive_period();
        let (id, token) = (self.id.unwrap_or_default(), self.token);
        match &mut self.state {
            State::Registering {
                retry: r,
                want,
                again,
            } => match r.poll(now, tries, now + retry) {
                None => {}
                Some(Step::Resend) => {
                    let want = *want;
                    self.send_register(want, out);
                }
                Some(Step::GiveUp) if self.rate_limited => {
                    // Rate-limited is not refused: another round, at the retry interval.
                    *r = Retry::round(now + self.round);
                }
                Some(Step::GiveUp) if *again => {
                    // Keep trying, at the retry interval, and say so once per round.
                    *r = Retry::round(now + self.round);
                    let message = format!(
                        "the rendezvous server at {} does not answer; still trying",
                        self.addr
                    );
                    out.event(Event::Notice { message });
                }
                Some(Step::GiveUp) => {
                    // A refusal ends registering at once, and rate-limited is retried for
                    // good: giving up means no answer we could use.
                    let message = match self.other_version {
                        Some(v) => format!(
                            "the server at {} speaks protocol version {v}; this client speaks version {}",
                            self.addr,
                            crate::wire::VERSION
                        ),
                        None => format!("no rendezvous server at {}", self.addr),
                    };
                    self.fatal(message, out);
                }
            },
            State::Registered { keepalive_at } if *keepalive_at <= now => {
                *keepalive_at = now + keepalive;
                let m = self.keepalive(id, token);
                self.send(out, m);
            }
            State::Leaving { retry: Some(r), .. } => match r.poll(now, tries, now + retry) {
                None => {}
                Some(Step::Resend) => self.send(out, Message::leave(id, token)),
                Some(Step::GiveUp) => {
                    out.event(Event::Notice {
                        message: format!(
                            "the rendezvous server at {} did not answer; leaving anyway",
                            self.addr
                        ),
                    });
                    self.left(false, settled, out);
                }
            },
            _ => {}
        }
    }

    /// A message from the server about our registration: `Registered`, the errors that
    /// answer `Register` or `Keepalive`, and the answers to `Leave`. Anything else comes
    /// back as [`Answer::NotMine`].
    pub fn handle_message(
        &mut self,
        now: Instant,
        msg: Message,
        settled: bool,
        out: &mut Outputs,
    ) -> Answer {
        match (&self.state, msg) {
            (
                State::Registering { again, .. },
                Message::Registered {
                    id,
                    token,
                    ttl_secs,
                    key,
                    turn,
                    ..
                },
            ) => {
                let again = *again;
                self.grant = turn;
                self.server_key = Some(key);
                self.id = Some(id);
                self.rate_limited = false;
                self.token = token;
                self.ttl = Duration::from_secs(u64::from(ttl_secs.max(1))).min(MAX_TTL);
                self.state = State::Registered {
                    keepalive_at: now + self.keepalive_period(),
                };
                out.event(Event::Registered { id, again });
                self.send_candidates(out);
                return Answer::Registered;
            }
            (State::Registering { again, want, .. }, Message::Error { code, detail, .. }) => {
                match (code, *again) {
                    (ErrorCode::IdTaken, true) if want.is_some() => {
                        // Someone took our old id while the server was away: take any.
                        out.event(Event::Notice {
                            message: format!("{detail}; registering with a new id"),
                        });
                        self.register_again(now, None, out);
                    }
                    (ErrorCode::RateLimited, _) => {
                        // Temporary: the retries go on at their pace, in rounds if need be,
                        // until the server lets us in; the user is told once why.
                        if !self.rate_limited {
                            out.event(Event::Notice {
                                message: format!("the server says: {detail}; retrying"),
                            });
                        }
                        self.rate_limited = true;
                    }
                    (ErrorCode::NotRegistered, _) => {
                        // Never an answer to `Register`: a late or duplicated answer to a
                        // `Keepalive` sent before, which is why we are registering again.
                        let message = Message::Error {
                            code,
                            detail,
                            nonce: 0,
                        };
                        out.ignore(self.addr, &message);
                    }
                    _ => self.fatal(format!("the server refused to register us: {detail}"), out),
                }
            }
            (State::Registered { .. }, msg @ Message::Registered { .. }) => {
                return self.renewed(msg, out);
            }
            (
                State::Registered { .. },
                msg @ Message::Error {
                    code: ErrorCode::IdTaken,
                    ..
                },
            ) => {
                // An answer to `renew_grant` from an address the server does not have us
                // at (our router changed our port): the next keepalive tells it, and we
                // register again then.
                out.ignore(self.addr, &msg);
            }
            (State::Registered { .. }, Message::Error { code, detail, .. }) => {
                if code == ErrorCode::NotRegistered {
                    let recently = self
                        .registered_again_at
                        .is_some_and(|t| now.saturating_duration_since(t) < self.round);
                    if recently {
                        // Registered again a moment ago and forgotten at once: not again
                        // before the retry interval is over (the next keepalive tells).
                        let message = Message::Error {
                            code,
                            detail,
                            nonce: 0,
                        };
                        out.ignore(self.addr, &message);
                        return Answer::Handled;
                    }
                    self.registered_again_at = Some(now);
                    out.event(Event::Notice {
                        message: "the server no longer knows us (restarted?); registering again"
                            .into(),
                    });
                    self.register_again(now, self.id, out);
                } else {
                    out.event(Event::Notice {
                        message: format!("the server says: {detail}"),
                    });
                }
            }
            (State::Leaving { retry: Some(_), .. }, Message::LeaveAck { .. }) => {
                self.left(true, settled, out);
            }
            (
                State::Leaving { retry: Some(_), .. },
                Message::Error {
                    code: ErrorCode::NotRegistered,
                    ..
                },
            ) => {
                // It does not know us: as good as left.
                self.left(true, settled, out);
            }
            (_, other) => return Answer::NotMine(other),
        }
        Answer::Handled
    }

    fn register_again(&mut self, now: Instant, want: Option<ClientId>, out: &mut Outputs) {
        self.state = State::Registering {
            retry: Retry::first(now + self.retry),
            want,
            again: true,
        };
        self.send_register(want, out);
    }

    /// A `Register` (its nonce and padding are added as it leaves: requests.rs).
    fn send_register(&self, want_id: Option<ClientId>, out: &mut Outputs) {
        let register = Message::register(want_id, self.key);
        self.send(out, register);
    }

    /// The server's static key, once registered.
    pub fn server_key(&self) -> Option<&Key> {
        self.server_key.as_ref()
    }

    /// Leaves now, if registered; returns false if never registered (then we are done).
    pub fn leave(&mut self, now: Instant, out: &mut Outputs) -> bool {
        let Some(id) = self.id else {
            // Never registered: nothing to tell anyone.
            self.state = State::Done;
            out.event(Event::Left {
                server_acked: false,
            });
            return false;
        };
        self.state = State::Leaving {
            retry: Some(Retry::first(now + self.retry)),
            acked: false,
        };
        self.send(out, Message::leave(id, self.token));
        true
    }

    /// The server registered us but will not have us as configured: leave (best effort,
    /// so that the entry does not wait for its expiry) and stop.
    pub fn give_up(&mut self, message: String, out: &mut Outputs) {
        if let Some(id) = self.id {
            let token = self.token;
            self.send(out, Message::leave(id, token));
        }
        self.fatal(message, out);
    }

    /// The client cannot go on.
    pub fn fatal(&mut self, message: String, out: &mut Outputs) {
        self.state = State::Done;
        out.event(Event::Fatal { message });
    }

    fn left(&mut self, acked: bool, settled: bool, out: &mut Outputs) {
        if let State::Leaving {
            retry, acked: a, ..
        } = &mut self.state
        {
            *retry = None;
            *a = acked;
        }
        self.left_if_done(settled, out);
    }

    /// Finishes leaving once the server part is over and every Terminate is `settled`.
    pub fn left_if_done(&mut self, settled: bool, out: &mut Outputs) {
        if let State::Leaving {
            retry: None, acked, ..
        } = self.state
        {
            if settled {
                self.state = State::Done;
                out.event(Event::Left {
                    server_acked: acked,
                });
            }
        }
    }

    /// A datagram from the server's address in another protocol version. Not fatal by
    /// itself (anyone can forge one): said once, and named if we give up registering.
    pub fn other_version(&mut self, found: u8, out: &mut Outputs) {
        if self.other_version.replace(found).is_none() {
            out.event(Event::Notice {
                message: format!(
                    "the server at {} answered in protocol version {found}; this client speaks version {}",
                    self.addr,
                    crate::wire::VERSION
                ),
            });
        }
    }

    fn keepalive_period(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }
}
