//! The mio event loops: the only code that owns sockets, reads the clock or handles signals.
//!
//! Each loop is thin: it waits on the socket (and stdin, and signals) with a timeout equal
//! to the state machine's next deadline, feeds what arrives to the state machine with
//! `Instant::now()`, and sends what the state machine asks it to send.
//!
//! - [`server`]: the rendezvous server's loop around a [`Registry`](crate::registry::Registry).
//! - [`client`]: the client's loop: an [`Endpoint`] (socket, poller and [`Peer`](crate::peer::Peer)),
//!   stdin and signals, around an [`App`](crate::app::client::App).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::debug;
use mio::net::UdpSocket;
use mio::{Interest, Poll, Token};

use crate::peer::SendError;

pub mod client;
pub mod server;
mod udp;

use udp::{Received, RecvBatch, SendBatch, Udp};

pub use client::{run_client, ClientOptions, Endpoint, UiMode};
pub use server::{run_server, Server, ServerOptions, Stopper};

const SOCKET: Token = Token(0);

const SIGNALS: Token = Token(1);

const WAKER: Token = Token(2);

/// Size of the receive buffer: the largest UDP payload, so that an oversized datagram is
/// received whole and refused by the decoder rather than silently truncated.
pub(crate) const RECV_BUFFER: usize = 65_536;

/// An error that ends a program, with the one line to show the user.
#[derive(Debug)]
pub struct FatalError(pub String);

impl std::fmt::Display for FatalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FatalError {}

/// The address a client binds to reach `server`: `bind` as the person gave it, checked, or
/// by default the unspecified address of the server's family (`0.0.0.0:0`, `[::]:0`), so
/// that the client reaches a server on another machine, and a loopback address (`127.0.0.1:0`,
/// `[::1]:0`) for a server on this machine. A `bind` that cannot reach `server` is refused
/// with the reason and what to use instead.
pub fn client_bind(bind: Option<SocketAddr>, server: SocketAddr) -> Result<SocketAddr, String> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let server_ip = udp::canonical(server).ip();
    let Some(bind) = bind else {
        let ip: std::net::IpAddr = match (server_ip.is_loopback(), server_ip.is_ipv4()) {
            (true, true) => Ipv4Addr::LOCALHOST.into(),
            (true, false) => Ipv6Addr::LOCALHOST.into(),
            (false, true) => Ipv4Addr::UNSPECIFIED.into(),
            (false, false) => Ipv6Addr::UNSPECIFIED.into(),
        };
        return Ok(SocketAddr::new(ip, 0));
    };
    let ip = bind.ip();
    if ip.is_ipv4() && server_ip.is_ipv6() {
        return Err(format!(
            "--bind {bind} is IPv4 and the server {server} is IPv6: omit --bind, or use --bind [::]:0"
        ));
    }
    if ip.is_ipv6() && !ip.is_unspecified() && server_ip.is_ipv4() {
        return Err(format!(
            "--bind {bind} is IPv6 and the server {server} is IPv4: omit --bind, or use --bind 0.0.0.0:0"
        ));
    }
    if ip.is_loopback() && !server_ip.is_loopback() {
        return Err(format!(
            "--bind {bind} is a loopback address, which reaches only this machine, and the server {server} is not on it: omit --bind, or use --bind 0.0.0.0:0"
        ));
    }
    Ok(bind)
}

/// Binds a UDP socket, turning "address in use" and friends into one clear line.
pub fn bind(addr: SocketAddr) -> Result<UdpSocket, FatalError> {
    UdpSocket::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => {
                " (is another p2pchat already running there? choose another with --bind)"
            }
            io::ErrorKind::AddrNotAvailable => " (that address is not one of this machine's)",
            io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges)",
            _ => "",
        };
        FatalError(format!("cannot bind {addr}: {e}{hint}"))
    })
}

/// Binds `addr` and watches the socket with a new poller (token [`SOCKET`]); returns both
/// and the address actually bound.
fn watch_socket(addr: SocketAddr) -> Result<(Udp, Poll, SocketAddr), FatalError> {
    let mut socket = bind(addr)?;
    let local = socket
        .local_addr()
        .map_err(|e| FatalError(format!("cannot read the bound address: {e}")))?;
    let poll = Poll::new().map_err(|e| FatalError(format!("cannot create a poller: {e}")))?;
    poll.registry()
        .register(&mut socket, SOCKET, Interest::READABLE)
        .map_err(|e| FatalError(format!("cannot watch the socket: {e}")))?;
    Ok((Udp::new(socket, local), poll, local))
}

/// Receives every datagram waiting on a non-blocking socket (readiness is edge-triggered, so
/// the socket must be drained until `WouldBlock`), calling `each` for every one with what
/// [`Udp::recv`] says of it.
pub(crate) fn drain_socket(
    socket: &Udp,
    buf: &mut [u8],
    mut each: impl FnMut(Received, &[u8]),
) -> io::Result<()> {
    loop {
        match socket.recv(buf) {
            Ok(r) => each(r, &buf[..r.len]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // An ICMP "port unreachable" from an earlier send shows up here on Linux; it
            // concerns one destination, not this socket.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        }
    }
}

/// [`drain_socket`] with [`Udp::recv_batch`]: up to [`udp::BATCH`] datagrams per system
/// call, received into `batch`.
pub(crate) fn drain_socket_batched(
    socket: &Udp,
    batch: &mut RecvBatch,
    mut each: impl FnMut(Received, &[u8]),
) -> io::Result<()> {
    loop {
        match socket.recv_batch(batch) {
            Ok(n) => (0..n).for_each(|k| {
                let (r, data) = batch.get(k);
                each(r, data)
            }),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The receive buffer the server asks for: room for bursts (a flood, a crowd joining at once)
/// while the loop is busy or descheduled. The kernel grants at most `net.core.rmem_max`.
const SERVER_RECEIVE_BUFFER: usize = 4 << 20;

/// The receive buffer a client asks for: room for the windows of several file transfers
/// at once (64 chunks of 1,153 bytes each, and the kernel counts about twice that per
/// datagram), beyond Linux's usual 208 KiB default.
const CLIENT_RECEIVE_BUFFER: usize = 2 << 20;

/// Asks the kernel for a receive buffer of `bytes` (it may grant less); returns what the
/// socket has afterwards.
fn request_receive_buffer(socket: &Udp, bytes: usize) -> usize {
    use std::os::fd::AsRawFd;
    let fd = socket.socket().as_raw_fd();
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let mut got: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: plain setsockopt/getsockopt on a socket we own, with an int of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&want as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut got as *mut libc::c_int).cast(),
            &mut len,
        );
    }
    usize::try_from(got).unwrap_or(0)
}

/// Sends one datagram to `to` (from the local address `from`, if given: see [`Udp::send`]).
/// A failure is logged at debug level and returned: the caller decides whom to tell (every
/// protocol message is retried anyway; UDP gives no delivery promise).
pub(crate) fn send_datagram(
    socket: &Udp,
    to: SocketAddr,
    from: Option<std::net::IpAddr>,
    payload: &[u8],
) -> io::Result<()> {
    loop {
        match socket.send(to, from, payload) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!("send to {to} failed: {e}");
                return Err(e);
            }
        }
    }
}

/// What the person is told of a send the system refused.
pub(crate) fn send_error(e: &io::Error) -> SendError {
    match e.raw_os_error() {
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENETDOWN | libc::EHOSTDOWN) => {
            SendError::NoRoute
        }
        Some(libc::EAFNOSUPPORT) => SendError::WrongFamily,
        Some(libc::EINVAL | libc::EADDRNOTAVAIL) => SendError::BadSource,
        Some(libc::EACCES | libc::EPERM) => SendError::Denied,
        _ => SendError::Other(e.to_string()),
    }
}

/// How long to wait for `deadline`, rounded up to whole milliseconds so that the loop does
/// not spin waking up a few microseconds early.
pub(crate) fn wait_for(deadline: Option<Instant>, now: Instant) -> Option<Duration> {
    deadline.map(|d| {
        let left = d.saturating_duration_since(now);
        let ms = left.as_nanos().div_ceil(1_000_000);
        Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_binds_by_default_where_it_can_reach_its_server() {
        let cases = [
            ("127.0.0.1:7070", "127.0.0.1:0"),
            ("[::1]:7070", "[::1]:0"),
            ("192.168.1.10:7070", "0.0.0.0:0"),
            ("203.0.113.5:7070", "0.0.0.0:0"),
            ("[2001:db8::1]:7070", "[::]:0"),
            ("[::ffff:10.0.0.1]:7070", "0.0.0.0:0"),
        ];
        for (server, want) in cases {
            assert_eq!(client_bind(None, addr(server)), Ok(addr(want)), "{server}");
        }
    }

    #[test]
    fn a_bind_that_cannot_reach_the_server_is_refused_with_what_to_use() {
        let refused = [
            ("127.0.0.1:0", "10.0.0.1:7070", "loopback"),
            ("[::1]:0", "[2001:db8::1]:7070", "loopback"),
            ("0.0.0.0:0", "[2001:db8::1]:7070", "IPv4"),
            ("[2001:db8::2]:0", "10.0.0.1:7070", "IPv6"),
        ];
        for (bind, server, why) in refused {
            let e = client_bind(Some(addr(bind)), addr(server)).unwrap_err();
            assert!(
                e.contains(why) && e.contains("omit --bind"),
                "{bind} -> {server}: {e}"
            );
        }
        let accepted = [
            ("127.0.0.1:0", "127.0.0.1:7070"),
            ("0.0.0.0:4000", "10.0.0.1:7070"),
            ("[::]:0", "10.0.0.1:7070"),
            ("10.0.0.2:0", "10.0.0.1:7070"),
            ("0.0.0.0:0", "127.0.0.1:7070"),
        ];
        for (bind, server) in accepted {
            assert_eq!(client_bind(Some(addr(bind)), addr(server)), Ok(addr(bind)));
        }
    }

    #[test]
    fn send_errors_are_named_by_what_to_do() {
        let e = |n| send_error(&io::Error::from_raw_os_error(n));
        assert_eq!(e(libc::ENETUNREACH), SendError::NoRoute);
        assert_eq!(e(libc::EHOSTUNREACH), SendError::NoRoute);
        assert_eq!(e(libc::EAFNOSUPPORT), SendError::WrongFamily);
        assert_eq!(e(libc::EINVAL), SendError::BadSource);
        assert_eq!(e(libc::EPERM), SendError::Denied);
        assert!(matches!(e(libc::EMSGSIZE), SendError::Other(_)));
    }
}
