//! The mio event loops: the only code that owns sockets, reads the clock or handles signals.
//!
//! Each loop is thin: it waits on the socket (and stdin, and signals) with a timeout equal
//! to the state machine's next deadline, feeds what arrives to the state machine with
//! `Instant::now()`, and sends what the state machine asks it to send.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::cli::{self, Input, Output, StdoutOutput, Wake};
use crate::peer::{Event, Peer, PeerConfig};
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

const WAKER: Token = Token(2);

/// How the client talks to its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UiMode {
    /// A person at a terminal: line editing, history, output printed above the prompt.
    Terminal,
    /// A script: commands read line by line, one readable line per event.
    Plain,
    /// A script: commands read line by line, one JSON object per event.
    Json,
}

/// Settings of `p2pchat client`.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub bind: SocketAddr,
    pub peer: PeerConfig,
    pub ui: UiMode,
}

/// Runs the chat client until the user leaves. Returns an error (to print on stderr, exit
/// non-zero) only when the client cannot work at all: no server, a refused registration, a
/// port in use.
pub fn run_client(opts: &ClientOptions) -> Result<(), FatalError> {
    let mut socket = bind(opts.bind)?;
    let mut poll = Poll::new().map_err(|e| FatalError(format!("cannot create a poller: {e}")))?;
    poll.registry()
        .register(&mut socket, SOCKET, Interest::READABLE)
        .map_err(|e| FatalError(format!("cannot watch the socket: {e}")))?;
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| FatalError(format!("cannot install signal handlers: {e}")))?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(|e| FatalError(format!("cannot watch signals: {e}")))?;
    let waker = Arc::new(
        Waker::new(poll.registry(), WAKER)
            .map_err(|e| FatalError(format!("cannot create a waker: {e}")))?,
    );
    // The loop keeps its own reference: if the reader thread held the only one, its exit
    // (at end of input) would close the waker before the loop saw the wake-up.
    let wake: Wake = {
        let waker = Arc::clone(&waker);
        Arc::new(move || {
            let _ = waker.wake();
        })
    };
    let (tx, inputs) = mpsc::channel();
    let mut out: Box<dyn Output> = match opts.ui {
        UiMode::Terminal => Box::new(
            cli::spawn_terminal_reader(tx, wake)
                .map_err(|e| FatalError(format!("cannot start the line editor: {e}")))?,
        ),
        UiMode::Plain | UiMode::Json => {
            cli::spawn_plain_reader(tx, wake)
                .map_err(|e| FatalError(format!("cannot read stdin: {e}")))?;
            Box::new(StdoutOutput)
        }
    };
    let json = opts.ui == UiMode::Json;
    if let Ok(local) = socket.local_addr() {
        info!("client socket bound to {local}");
    }

    let _keep_waker = waker;
    let mut peer = Peer::new(opts.peer.clone(), Instant::now());
    // Lines typed before the server gave us an id wait here, in order.
    let mut held: VecDeque<Input> = VecDeque::new();
    let mut interrupts = 0u32;
    let mut events = Events::with_capacity(64);
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut payload = Vec::with_capacity(256);
    loop {
        while let Some(t) = peer.poll_transmit() {
            wire::encode_into(&t.message, &mut payload);
            send_datagram(&socket, t.to, &payload);
        }
        while let Some(ev) = peer.poll_event() {
            if let Event::Fatal { message } = ev {
                if json {
                    out.line(&cli::json_line(&Event::Fatal {
                        message: message.clone(),
                    }));
                }
                return Err(FatalError(message));
            }
            out.line(&if json {
                cli::json_line(&ev)
            } else {
                cli::human_line(&ev)
            });
        }
        if peer.is_finished() {
            return Ok(());
        }

        let timeout = wait_for(peer.poll_timeout(), Instant::now());
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
                        peer.handle_datagram(Instant::now(), from, data);
                    });
                    if let Err(e) = res {
                        warn!("receive failed: {e}");
                    }
                }
                WAKER => held.extend(inputs.try_iter()),
                SIGNALS => {
                    let n = signals.pending().count();
                    if n > 0 {
                        held.push_front(Input::Interrupt);
                    }
                }
                _ => {}
            }
        }
        while let Some(input) = held.front() {
            let registered = peer.id().is_some();
            let now = Instant::now();
            match input {
                Input::Interrupt => {
                    interrupts += 1;
                    if interrupts >= 2 {
                        out.line(&if json {
                            cli::json_error("interrupted twice: exiting without waiting")
                        } else {
                            "interrupted twice: exiting without waiting".to_string()
                        });
                        return Ok(());
                    }
                    peer.leave(now);
                }
                Input::Eof if registered => peer.finish(now),
                Input::Line(line) if registered => {
                    cli::execute(&mut peer, now, line, out.as_mut(), json)
                }
                // Not registered yet: keep it for later.
                _ => break,
            }
            held.pop_front();
        }
        let now = Instant::now();
        if peer.poll_timeout().is_some_and(|t| t <= now) {
            peer.handle_timeout(now);
        }
    }
}
