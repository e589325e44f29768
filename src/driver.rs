//! The mio event loops: the only code that owns sockets, reads the clock or handles signals.
//!
//! Each loop is thin: it waits on the socket (and stdin, and signals) with a timeout equal
//! to the state machine's next deadline, feeds what arrives to the state machine with
//! `Instant::now()`, and sends what the state machine asks it to send.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::registry::{Registry, RegistryConfig, TableEvent};
use crate::wire;

const SOCKET: Token = Token(0);
const SIGNALS: Token = Token(1);

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

/// Settings of `p2pchat server`.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub bind: SocketAddr,
    pub registry: RegistryConfig,
}

/// Runs the rendezvous server until SIGINT or SIGTERM. Prints the listening address and the
/// table (on every change) to `out`.
pub fn run_server(opts: &ServerOptions, out: &mut dyn Write) -> Result<(), FatalError> {
    let mut socket = bind(opts.bind)?;
    let local = socket
        .local_addr()
        .map_err(|e| FatalError(format!("cannot read the bound address: {e}")))?;
    let mut poll = Poll::new().map_err(|e| FatalError(format!("cannot create a poller: {e}")))?;
    poll.registry()
        .register(&mut socket, SOCKET, Interest::READABLE)
        .map_err(|e| FatalError(format!("cannot watch the socket: {e}")))?;
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| FatalError(format!("cannot install signal handlers: {e}")))?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(|e| FatalError(format!("cannot watch signals: {e}")))?;

    let mut registry = Registry::new(opts.registry.clone());
    let _ = writeln!(
        out,
        "p2pchat server listening on {local} (ttl {}s, at most {} clients)",
        opts.registry.ttl.as_secs(),
        opts.registry.max_clients
    );
    let _ = out.flush();
    info!("listening on {local}");

    let mut events = Events::with_capacity(64);
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut payload = Vec::with_capacity(256);
    let started = Instant::now();
    let started_wall = std::time::SystemTime::now();
    loop {
        let timeout = wait_for(registry.poll_timeout(), Instant::now());
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(FatalError(format!("poll failed: {e}")));
        }
        for event in events.iter() {
            match event.token() {
                SOCKET => {
                    let res = drain_socket(&socket, &mut buf, |from, data| {
                        registry.handle_datagram(Instant::now(), from, data);
                        while let Some(t) = registry.poll_transmit() {
                            wire::encode_into(&t.message, &mut payload);
                            send_datagram(&socket, t.to, &payload);
                        }
                    });
                    if let Err(e) = res {
                        warn!("receive failed: {e}");
                    }
                }
                SIGNALS if signals.pending().next().is_some() => {
                    info!("signal received, shutting down");
                    let stats = registry.stats();
                    info!(
                            "served {} datagrams; dropped {} garbage, {} malformed, {} other versions, {} unexpected; refused {}",
                            stats.datagrams,
                            stats.garbage,
                            stats.malformed,
                            stats.bad_version,
                            stats.unexpected,
                            stats.refused
                        );
                    let _ = writeln!(out, "p2pchat server on {local} stopped");
                    let _ = out.flush();
                    return Ok(());
                }
                _ => {}
            }
        }
        registry.handle_timeout(Instant::now());
        let mut changed = false;
        while let Some(ev) = registry.poll_event() {
            changed = true;
            let line = match ev {
                TableEvent::Joined { id, addr } => format!("client {id} joined from {addr}"),
                TableEvent::Left { id, addr } => format!("client {id} at {addr} left"),
                TableEvent::Expired { id, addr } => {
                    format!("client {id} at {addr} expired (not heard from)")
                }
            };
            let _ = writeln!(out, "{line}");
        }
        if changed {
            let wall = |at: Instant| started_wall + at.saturating_duration_since(started);
            let _ = write!(out, "{}", render_table(&registry, wall));
            let _ = out.flush();
        }
    }
}

/// The table as printed by the server: a count, then one row per client.
pub fn render_table(
    registry: &Registry,
    wall_clock: impl Fn(Instant) -> std::time::SystemTime,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "active clients: {}", registry.len());
    if !registry.is_empty() {
        let _ = writeln!(s, "  {:>6}  {:<24}  JOINED (UTC)", "ID", "ADDRESS");
        for e in registry.entries() {
            let _ = writeln!(
                s,
                "  {:>6}  {:<24}  {}",
                e.id,
                e.addr.to_string(),
                utc_time_of_day(wall_clock(e.joined))
            );
        }
    }
    s
}

/// "HH:MM:SS" of a wall-clock time, in UTC (no time-zone database needed).
pub fn utc_time_of_day(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, day % 3600 / 60, day % 60)
}
