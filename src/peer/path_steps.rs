//! The steps of path choice that cross parts of [`Peer`]: a sealed datagram from an
//! address its session does not use (a direct path opening while the session is on the
//! relay), path checks, moving a session to a checked path, and acting on what paths.rs
//! made due (relay lost, requests moved to a relayed address, lookups, checks). The
//! choices themselves are paths.rs's and punch.rs's; see "Through a relay" in
//! [`crate::wire`].

use std::net::SocketAddr;
use std::time::Instant;

use log::debug;

use super::paths::Paths;
use super::punch::Punches;
use super::sessions::Sessions;
use super::{paths, Event, Path, Peer};
use crate::wire::{ClientId, Message, SessionId};

impl Peer {
    /// A sealed message of session `session` with `from` that came from `src`, one of the
    /// session's paths other than its address: a path check (`Ping` answered with a
    /// `Pong` there; a `Pong` from an address we check moves the session there). True if
    /// handled; anything else is handled as the session's.
    pub(super) fn on_other_path(
        &mut self,
        now: Instant,
        me: ClientId,
        src: SocketAddr,
        from: ClientId,
        session: SessionId,
        m: &Message,
    ) -> bool {
        match m {
            Message::Ping { .. } => {
                self.out.transmit(src, Message::Pong { from: me, session });
                true
            }
            Message::Pong { .. } => {
                if self.paths.checked(from, src).is_some() {
                    self.migrate(now, from, src);
                }
                true
            }
            _ => false,
        }
    }

    /// A `Sealed` of our session with `from` opened, but it came from `src`, which is not
    /// one of the session's addresses. Only a path check of a session on the relay is acted
    /// on, and only from one of the peer's IPs (its introduction): a `Ping` is answered
    /// with a `Pong` there, and we check that address ourselves.
    pub(super) fn sealed_from_new_path(
        &mut self,
        now: Instant,
        me: ClientId,
        src: SocketAddr,
        from: ClientId,
        session: SessionId,
        messages: Vec<Message>,
    ) {
        let ping = messages.iter().any(|m| matches!(m, Message::Ping { .. }));
        // Opened because it may be a new path (`may_be_new_path`): only a `Ping` is acted on.
        if !ping {
            self.secure.refused += 1;
            debug!("{src}: Sealed of session {session} from an address it does not use: dropped");
            return;
        }
        self.secure.add_path(from, session, src);
        self.out.transmit(src, Message::Pong { from: me, session });
        self.check_path(now, from, src);
    }

    /// A sign of a direct path to `peer`, whose session is on the relay, at `addr`: check
    /// it (sealed `Ping`s there; see paths.rs).
    pub(super) fn check_path(&mut self, now: Instant, peer: ClientId, addr: SocketAddr) {
        let Some(session) = self.sessions.connected_session(peer) else {
            return;
        };
        if self.paths.maybe_direct(now, peer, addr) {
            self.secure.add_path(peer, session, addr);
        }
    }

    /// The session with `peer` moves to `addr`, a direct path checked both ways.
    pub(super) fn migrate(&mut self, now: Instant, peer: ClientId, addr: SocketAddr) {
        let Some(session) = self.sessions.migrate(peer, addr) else {
            return;
        };
        self.secure.migrate(peer, session, addr);
        self.files.migrate(peer, session, addr);
        self.paths.closed(peer);
        let path = match self.punch.path(peer, addr) {
            Path::Relay => Path::Punched,
            p => p,
        };
        self.punch.finish(peer);
        self.out.event(Event::PathChanged { peer, path, addr });
        self.flush(now);
    }

    /// Acts on what the relay and the choice of paths made due.
    pub(super) fn after_paths(&mut self, now: Instant) {
        for ev in self.paths.take_events() {
            self.out.event(ev);
        }
        let due = self.paths.take_due();
        self.act_on_paths(now, due);
    }

    pub(super) fn act_on_paths(&mut self, now: Instant, due: paths::Due) {
        if let Some(relayed) = due.relayed {
            self.server.set_relay(relayed, &mut self.out);
        }
        if due.renew_grant {
            self.server.renew_grant(&mut self.out);
        }
        let me = self.server.id();
        let mut lost = due.lost;
        lost.sort_unstable();
        lost.dedup();
        for peer in lost {
            let through_relay = self
                .sessions
                .addr_of(peer)
                .is_some_and(|a| self.paths.is_relay_of(peer, a));
            if through_relay {
                if let Some(ended) = self.sessions.relay_lost(now, peer, &mut self.out) {
                    self.session_ended(ended);
                }
            }
        }
        let Some(me) = me else { return };
        for (peer, addr) in due.to_relay {
            debug!("no probe from {peer}: the request goes through the relays to {addr}");
            self.punch.relayed(peer);
            self.sessions.probed(now, me, peer, addr, &mut self.out);
        }
        for peer in due.lookups {
            self.out.transmit(self.config.server, Message::lookup(peer));
        }
        for (peer, session, addr) in due.checks {
            debug!("path check to {peer} at {addr}");
            self.out.transmit(addr, Message::Ping { from: me, session });
        }
    }

    /// Whether our request to `peer` may move to `src`: a valid probe came from there,
    /// and the request is not already at an address a probe came from (the first path
    /// found is kept, so that the peer's answer comes from where our request goes).
    pub(super) fn probed_from(&self, peer: ClientId, src: SocketAddr) -> bool {
        let pinned = self
            .sessions
            .addr_of(peer)
            .is_some_and(|a| a != src && self.punch.heard_from(peer, a));
        !pinned && self.punch.heard_from(peer, src)
    }
}

/// Whether a `Sealed` of `session` from `src`, an address the session does not use, may be
/// a direct path opening: the session is the one on the relay with `from`, and `src` is at
/// one of the IPs its introduction gave. Only then is it opened (and, if it is a `Ping`,
/// answered). Free of `Peer` so that it can be asked while `Peer::secure` is borrowed, and
/// only for such a datagram (not on every `Sealed`).
pub(super) fn may_be_new_path(
    paths: &Paths,
    sessions: &Sessions,
    punch: &Punches,
    from: ClientId,
    session: SessionId,
    src: SocketAddr,
) -> bool {
    paths.is_on_relay(from)
        && sessions.connected_session(from) == Some(session)
        && punch.is_peer_ip(from, src.ip())
}
