//! Names: the claim of our own name, `Resolve`s of the names we connect to, the `list` of who
//! is online, and the names of peers as the server or their requests gave them.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::event::Event;
use super::outputs::Outputs;
use super::retry::{Retry, Step};
use super::PeerConfig;
use crate::wire::{self, ClientId, ErrorCode, Key, Listed, Message, Token};

/// The most clients one `list` collects (a bound on what a misbehaving server can make us
/// hold).
const MAX_LISTED: usize = 1_000_000;

/// The most peer names remembered; past it, the names of peers without a session go.
const MAX_NAMES: usize = 4096;

/// A `Resolve` of a name we wait for.
struct Resolving {
    name: String,
    retry: Retry,
    /// Started by the queue (not by the user): its failures are not shown.
    auto: bool,
}

/// A `list` in progress: the pages received so far.
struct Listing {
    after: Option<ClientId>,
    retry: Retry,
    clients: Vec<Listed>,
}

/// Every name a client deals with. See the module documentation.
pub(super) struct Names {
    server: SocketAddr,
    /// Period of `Claim`, `Resolve` and `List` resends, and how many are sent.
    retry: Duration,
    tries: u32,
    /// The name to claim once registered, with what goes with it in the `Claim`.
    wanted: Option<String>,
    display_name: Option<String>,
    /// The proof of our key to the server (see `Message::Claim`), for this registration.
    proof: Option<Vec<u8>>,
    /// Our name, once the server has granted it.
    name: Option<String>,
    /// Names (and display names) of peers, as the server or their requests gave them.
    peers: HashMap<ClientId, (String, Option<String>)>,
    /// Our `Claim` of our name, resent until answered.
    claiming: Option<Retry>,
    /// By the name in lower case (the key of the queue for it, if any).
    resolving: BTreeMap<String, Resolving>,
    listing: Option<Listing>,
}

/// What [`Names::handle_message`] made of a message from the server.
pub(super) enum Heard {
    Handled,
    /// The server refused the name we claim: the client cannot go on (why).
    Refused(String),
    /// No client has the name we resolved; `key` is the name in lower case.
    Unknown {
        key: String,
    },
    /// The name we resolved is client `peer` at `addr`; `auto`: for the queue.
    Found {
        peer: ClientId,
        addr: SocketAddr,
        key: Key,
        name: String,
        display_name: Option<String>,
        auto: bool,
    },
    /// Not about names.
    NotMine(Message),
}

/// What [`Names::handle_timeout`] gave up on.
pub(super) enum Lapsed {
    /// The claim of our name got no answer: the client cannot go on (why). Nothing else
    /// was looked at.
    Claim(String),
    /// These resolves (by key) got no answer.
    Resolves(Vec<String>),
}

impl Names {
    pub fn new(config: &PeerConfig) -> Self {
        Names {
            server: config.server,
            retry: config.server_retry,
            tries: config.server_tries,
            wanted: config.name.clone(),
            display_name: config.display_name.clone(),
            proof: None,
            name: None,
            peers: HashMap::new(),
            claiming: None,
            resolving: BTreeMap::new(),
            listing: None,
        }
    }

    /// Our name, once the server has granted it.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The name of peer `id`, if we know it.
    pub fn name_of(&self, id: ClientId) -> Option<&str> {
        self.peers.get(&id).map(|(n, _)| n.as_str())
    }

    /// The display name of peer `id`, if it has one.
    pub fn display_name_of(&self, id: ClientId) -> Option<&str> {
        self.peers.get(&id).and_then(|(_, d)| d.as_deref())
    }

    /// Whether `name` is ours (granted, or the one we claim).
    pub fn is_own_name(&self, name: &str) -> bool {
        let mine = self.name.as_deref().or(self.wanted.as_deref());
        mine.is_some_and(|m| m.eq_ignore_ascii_case(name))
    }

    /// Remembers the name a server or a request gave for `peer`. When the table is full,
    /// the names of peers for which `has_session` is false go first.
    pub fn learn(
        &mut self,
        peer: ClientId,
        name: Option<String>,
        display: Option<String>,
        has_session: impl Fn(&ClientId) -> bool,
    ) {
        let Some(name) = name.filter(|n| wire::check_name(n).is_ok()) else {
            return;
        };
        let display = display.filter(|d| wire::check_display_name(d).is_ok());
        if self.peers.len() >= MAX_NAMES && !self.peers.contains_key(&peer) {
            self.peers.retain(|p, _| has_session(p));
        }
        self.peers.insert(peer, (name, display));
    }

    /// The proof of our key for the registration we now have (sent with every `Claim`).
    pub fn set_proof(&mut self, proof: Option<Vec<u8>>) {
        self.proof = proof;
    }

    /// Just registered as `id`: claims the configured name, if any.
    pub fn claim(&mut self, now: Instant, id: Option<ClientId>, token: Token, out: &mut Outputs) {
        if self.wanted.is_some() {
            self.claiming = Some(Retry::first(now + self.retry));
            self.send_claim(id, token, out);
        }
    }

    fn send_claim(&self, id: Option<ClientId>, token: Token, out: &mut Outputs) {
        let (Some(id), Some(name)) = (id, self.wanted.clone()) else {
            return;
        };
        out.transmit(
            self.server,
            Message::Claim {
                id,
                token,
                name,
                display_name: self.display_name.clone(),
                proof: self.proof.clone(),
                nonce: 0,
                pad: Default::default(),
            },
        );
    }

    /// Looks `name` up; `auto`: for the queue, so its failures are not shown.
    pub fn resolve(&mut self, now: Instant, name: &str, auto: bool, out: &mut Outputs) {
        self.resolving.insert(
            name.to_ascii_lowercase(),
            Resolving {
                name: name.to_string(),
                retry: Retry::first(now + self.retry),
                auto,
            },
        );
        out.transmit(self.server, Message::resolve(name));
    }

    /// The user asks for a name the queue is already resolving: from now on the user
    /// sees how it goes. False if it is not being resolved.
    pub fn show_resolve(&mut self, key: &str) -> bool {
        match self.resolving.get_mut(key) {
            Some(r) => {
                r.auto = false;
                true
            }
            None => false,
        }
    }

    pub fn is_resolving(&self, key: &str) -> bool {
        self.resolving.contains_key(key)
    }

    /// Stops waiting for the `Resolve` of `key`.
    pub fn forget_resolve(&mut self, key: &str) {
        self.resolving.remove(key);
    }

    /// Asks the server who is online, from the first page.
    pub fn list(&mut self, now: Instant, me: ClientId, token: Token, out: &mut Outputs) {
        self.listing = Some(Listing {
            after: None,
            retry: Retry::first(now + self.retry),
            clients: Vec::new(),
        });
        out.transmit(
            self.server,
            Message::List {
                id: me,
                token,
                after: None,
                nonce: 0,
                pad: Default::default(),
            },
        );
    }

    /// Nothing the user asked of the server is unanswered.
    pub fn is_settled(&self) -> bool {
        self.resolving.values().all(|r| r.auto) && self.listing.is_none() && self.claiming.is_none()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let claim = self.claiming.iter().map(Retry::next);
        let list = self.listing.iter().map(|l| l.retry.next());
        let resolves = self.resolving.values().map(|r| r.retry.next());
        claim.chain(list).chain(resolves).min()
    }

    /// Resends of `Claim`, `Resolve` and `List`, and giving up on them.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        id: Option<ClientId>,
        token: Token,
        out: &mut Outputs,
    ) -> Lapsed {
        let (retry, max) = (self.retry, self.tries);
        let claim = self
            .claiming
            .as_mut()
            .and_then(|c| c.poll(now, max, now + retry));
        match claim {
            Some(Step::GiveUp) => {
                self.claiming = None;
                let name = self.wanted.clone().unwrap_or_default();
                return Lapsed::Claim(format!(
                    "the server at {} did not answer the claim of the name {name} (does it support names?)",
                    self.server
                ));
            }
            Some(Step::Resend) => self.send_claim(id, token, out),
            None => {}
        }
        if let Some(l) = self.listing.as_mut() {
            match l.retry.poll(now, max, now + retry) {
                Some(Step::GiveUp) => {
                    self.listing = None;
                    out.event(Event::ListFailed {
                        reason: "the server did not answer".into(),
                    });
                }
                Some(Step::Resend) => {
                    let (id, after) = (id.unwrap_or_default(), l.after);
                    out.transmit(
                        self.server,
                        Message::List {
                            id,
                            token,
                            after,
                            nonce: 0,
                            pad: Default::default(),
                        },
                    );
                }
                None => {}
            }
        }
        let mut lapsed = Vec::new();
        let keys: Vec<String> = self.resolving.keys().cloned().collect();
        for key in keys {
            let r = self.resolving.get_mut(&key).expect("listed above");
            match r.retry.poll(now, max, now + retry) {
                Some(Step::GiveUp) => {
                    let r = self.resolving.remove(&key).expect("listed above");
                    if !r.auto {
                        out.event(Event::Notice {
                            message: format!("the server did not answer the lookup of {}", r.name),
                        });
                    }
                    lapsed.push(key);
                }
                Some(Step::Resend) => {
                    let name = r.name.clone();
                    out.transmit(self.server, Message::resolve(name));
                }
                None => {}
            }
        }
        Lapsed::Resolves(lapsed)
    }

    /// A message from the server about names: the answer to our claim (while
    /// `registered`), to a `list`, to a `Resolve`. Anything else comes back as
    /// [`Heard::NotMine`].
    pub fn handle_message(
        &mut self,
        registered: bool,
        id: Option<ClientId>,
        token: Token,
        msg: Message,
        now: Instant,
        out: &mut Outputs,
    ) -> Heard {
        match (registered, msg) {
            (
                true,
                Message::Claimed {
                    id: claimed, name, ..
                },
            ) if self.claiming.is_some() && Some(claimed) == id => {
                self.claiming = None;
                if self.name.as_deref() != Some(name.as_str()) {
                    self.name = Some(name.clone());
                    out.event(Event::Claimed { name });
                }
            }
            (
                true,
                Message::Error {
                    code: ErrorCode::NameTaken | ErrorCode::BadName,
                    detail,
                    ..
                },
            ) if self.claiming.is_some() => {
                self.claiming = None;
                return Heard::Refused(format!("the server refused the name: {detail}"));
            }
            (
                true,
                Message::Error {
                    code: ErrorCode::ListDisabled,
                    detail,
                    ..
                },
            ) if self.listing.is_some() => {
                self.listing = None;
                out.event(Event::ListFailed { reason: detail });
            }
            (
                _,
                Message::Listing {
                    clients,
                    next,
                    total,
                    ..
                },
            ) if self.listing.is_some() => {
                let me = id.unwrap_or_default();
                let retry = now + self.retry;
                let l = self.listing.as_mut().expect("checked");
                // The answer to an earlier page, resent or late: its clients are at or below
                // where we are now.
                let stale = next.is_some_and(|n| Some(n) <= l.after)
                    || clients.first().is_some_and(|c| Some(c.id) <= l.after);
                if stale {
                    let msg = Message::Listing {
                        clients,
                        next,
                        total,
                        nonce: 0,
                    };
                    out.ignore(self.server, &msg);
                    return Heard::Handled;
                }
                let last = l.clients.last().map(|c| c.id);
                l.clients.extend(
                    clients
                        .into_iter()
                        .filter(|c| last.is_none_or(|id| c.id > id)),
                );
                match next {
                    Some(n) if Some(n) > l.after && l.clients.len() < MAX_LISTED => {
                        l.after = Some(n);
                        l.retry = Retry::first(retry);
                        out.transmit(
                            self.server,
                            Message::List {
                                id: me,
                                token,
                                after: Some(n),
                                nonce: 0,
                                pad: Default::default(),
                            },
                        );
                    }
                    _ => {
                        let l = self.listing.take().expect("checked");
                        out.event(Event::Online {
                            clients: l.clients,
                            total,
                        });
                    }
                }
            }
            (_, Message::Unknown { name, .. }) => {
                let key = name.to_ascii_lowercase();
                match self.resolving.remove(&key) {
                    Some(r) => {
                        if !r.auto {
                            out.event(Event::UnknownName { name: r.name });
                        }
                        return Heard::Unknown { key };
                    }
                    None => out.ignore(self.server, &Message::Unknown { name, nonce: 0 }),
                }
            }
            (
                _,
                Message::Found {
                    id: peer,
                    addr,
                    key,
                    name: Some(name),
                    display_name,
                    ..
                },
            ) if self.resolving.contains_key(&name.to_ascii_lowercase()) => {
                let r = self
                    .resolving
                    .remove(&name.to_ascii_lowercase())
                    .expect("checked");
                return Heard::Found {
                    peer,
                    addr,
                    key,
                    name,
                    display_name,
                    auto: r.auto,
                };
            }
            (_, other) => return Heard::NotMine(other),
        }
        Heard::Handled
    }
}
