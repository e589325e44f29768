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

pub mod client;
pub mod server;

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
fn watch_socket(addr: SocketAddr) -> Result<(UdpSocket, Poll, SocketAddr), FatalError> {
    let mut socket = bind(addr)?;
    let local = socket
        .local_addr()
        .map_err(|e| FatalError(format!("cannot read the bound address: {e}")))?;
    let poll = Poll::new().map_err(|e| FatalError(format!("cannot create a poller: {e}")))?;
    poll.registry()
        .register(&mut socket, SOCKET, Interest::READABLE)
        .map_err(|e| FatalError(format!("cannot watch the socket: {e}")))?;
    Ok((socket, poll, local))
}

/// Receives every datagram waiting on a non-blocking socket (readiness is edge-triggered, so
/// the socket must be drained until `WouldBlock`), calling `each` for every one.
pub(crate) fn drain_socket(
    socket: &UdpSocket,
    buf: &mut [u8],
    mut each: impl FnMut(SocketAddr, &[u8]),
) -> io::Result<()> {
    loop {
        match socket.recv_from(buf) {
            Ok((len, from)) => each(from, &buf[..len]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // An ICMP "port unreachable" from an earlier send shows up here on Linux; it
            // concerns one destination, not this socket.
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
fn request_receive_buffer(socket: &UdpSocket, bytes: usize) -> usize {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
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

/// Sends one datagram; failures are logged and counted by the caller's retransmission logic
/// (UDP gives no delivery promise anyway, and every protocol message is retried).
pub(crate) fn send_datagram(socket: &UdpSocket, to: SocketAddr, payload: &[u8]) -> bool {
    loop {
        match socket.send_to(payload, to) {
            Ok(_) => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!("send to {to} failed: {e}");
                return false;
            }
        }
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
