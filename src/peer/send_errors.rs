//! Datagrams the socket refused to send: the driver tells the [`Peer`](super::Peer) why
//! ([`SendError`]), and the person hears it once, as one line that says what to do, instead
//! of a silent timeout ("no rendezvous server", `no_answer`) with the reason only in the
//! debug log.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::wire::ClientId;

/// Why the operating system refused to send a datagram.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SendError {
    /// No route to that network or host (ENETUNREACH, EHOSTUNREACH).
    NoRoute,
    /// The destination is of the other address family than the socket (EAFNOSUPPORT): an
    /// IPv6 address from an IPv4 socket.
    WrongFamily,
    /// The socket's own address cannot send there (EINVAL, EADDRNOTAVAIL): a socket bound to
    /// a loopback address sending to another machine.
    BadSource,
    /// The system refused (EACCES, EPERM): a firewall rule, or a broadcast address.
    Denied,
    /// Anything else, as the system said it.
    Other(String),
}

impl SendError {
    /// The short name of `--json`'s `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            SendError::NoRoute => "no_route",
            SendError::WrongFamily => "wrong_family",
            SendError::BadSource => "bad_source",
            SendError::Denied => "denied",
            SendError::Other(_) => "other",
        }
    }

    /// What to do about it, for the person.
    pub fn advice(&self) -> &'static str {
        match self {
            SendError::NoRoute => "check this machine's network connection and the address",
            SendError::WrongFamily => {
                "an IPv6 address cannot be reached from an IPv4 socket (nor the reverse): omit --bind, or bind an address of the same family (--bind [::]:0 for IPv6)"
            }
            SendError::BadSource => {
                "this client's --bind address cannot send there (a loopback address reaches only this machine): omit --bind, or use --bind 0.0.0.0:0"
            }
            SendError::Denied => "the system refused to send it (a firewall rule?)",
            SendError::Other(_) => "see the error above",
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::NoRoute => f.write_str("no route to it"),
            SendError::WrongFamily => f.write_str("address family not supported by this socket"),
            SendError::BadSource => f.write_str("invalid from this socket's address"),
            SendError::Denied => f.write_str("permission denied"),
            SendError::Other(text) => f.write_str(text),
        }
    }
}

/// Whom a datagram that could not be sent was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendTarget {
    /// The rendezvous server.
    Server,
    /// A peer we have a session with (or are asking for one).
    Peer(ClientId),
}

/// How long the same failure to the same address stays quiet after it was reported.
pub const SEND_ERROR_QUIET: Duration = Duration::from_secs(30);

/// How many (address, error) pairs are remembered for [`SEND_ERROR_QUIET`].
const REMEMBERED: usize = 32;

/// The failures reported lately, so that a resend every second does not repeat the line.
#[derive(Debug, Default)]
pub(crate) struct SendFailures {
    recent: Vec<(SocketAddr, SendError, Instant)>,
}

impl SendFailures {
    /// Whether this failure should be reported now (it was not, to `to`, within
    /// [`SEND_ERROR_QUIET`]); remembers that it is.
    pub(crate) fn report(&mut self, now: Instant, to: SocketAddr, error: &SendError) -> bool {
        self.recent
            .retain(|(_, _, at)| now.saturating_duration_since(*at) < SEND_ERROR_QUIET);
        if self.recent.iter().any(|(a, e, _)| *a == to && e == error) {
            return false;
        }
        if self.recent.len() >= REMEMBERED {
            self.recent.remove(0);
        }
        self.recent.push((to, error.clone(), now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_failure_is_reported_once_per_quiet_period_and_per_address() {
        let mut f = SendFailures::default();
        let t0 = Instant::now();
        let a: SocketAddr = "10.0.0.1:7070".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:7070".parse().unwrap();
        assert!(f.report(t0, a, &SendError::NoRoute));
        assert!(!f.report(t0 + Duration::from_secs(1), a, &SendError::NoRoute));
        assert!(f.report(t0 + Duration::from_secs(1), b, &SendError::NoRoute));
        assert!(f.report(t0 + Duration::from_secs(2), a, &SendError::Denied));
        assert!(!f.report(t0 + Duration::from_secs(29), a, &SendError::NoRoute));
        assert!(f.report(t0 + SEND_ERROR_QUIET, a, &SendError::NoRoute));
    }

    #[test]
    fn memory_is_bounded_by_forgetting_the_oldest() {
        let mut f = SendFailures::default();
        let t0 = Instant::now();
        for port in 0..100u16 {
            let to = SocketAddr::from(([10, 0, 0, 1], port));
            assert!(f.report(t0, to, &SendError::NoRoute));
        }
        assert_eq!(f.recent.len(), REMEMBERED);
    }
}
