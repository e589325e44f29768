//! The mio event loops: the only code that owns sockets, reads the clock or handles signals.
//!
//! Each loop is thin: it waits on the socket (and stdin, and signals) with a timeout equal
//! to the state machine's next deadline, feeds what arrives to the state machine with
//! `Instant::now()`, and sends what the state machine asks it to send.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::client::cli::{self, Input, Output, StdoutOutput, Ui, Wake};
use crate::client::profile::{Profile, StateChoice};
use crate::peer::{Event, Peer, PeerConfig};
use crate::registry::{Registry, RegistryConfig, Stats as RegistryStats, TableEvent};
use crate::wire::{ClientId, Packer};

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

/// Settings of `p2pchat server`.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub bind: SocketAddr,
    pub registry: RegistryConfig,
    /// Above this many clients the printed table shows the count, not every row.
    pub table_rows: usize,
}

/// The table is printed at most this often; changes in between are shown together.
const TABLE_INTERVAL: Duration = Duration::from_millis(100);
/// More changes than this in one go are summed up in one line instead of one line each.
const MAX_CHANGE_LINES: usize = 20;

/// Runs the rendezvous server until SIGINT or SIGTERM. Prints the listening address and the
/// table (on every change) to `out`.
pub fn run_server(opts: &ServerOptions, out: &mut dyn Write) -> Result<(), FatalError> {
    let mut server = Server::bind(opts)?;
    server.stop_on_signals()?;
    server.run(out).map(|_| ())
}

/// Stops a running [`Server`] from another thread.
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Stopper {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// The rendezvous server's event loop: a bound socket and a [`Registry`]. `p2pchat server`
/// runs one until a signal; a program can run one on a thread and stop it with a
/// [`Stopper`] (the benchmarks do).
pub struct Server {
    socket: UdpSocket,
    poll: Poll,
    local: SocketAddr,
    registry: Registry,
    table_rows: usize,
    stop: Stopper,
    signals: Option<Signals>,
}

impl Server {
    /// Binds the socket (one clear error if the port is taken).
    pub fn bind(opts: &ServerOptions) -> Result<Server, FatalError> {
        let (socket, poll, local) = watch_socket(opts.bind)?;
        let granted = request_receive_buffer(&socket, SERVER_RECEIVE_BUFFER);
        info!("receive buffer: {granted} bytes (asked for {SERVER_RECEIVE_BUFFER})");
        let waker = Waker::new(poll.registry(), WAKER)
            .map_err(|e| FatalError(format!("cannot create a waker: {e}")))?;
        Ok(Server {
            socket,
            poll,
            local,
            registry: Registry::new(opts.registry.clone()),
            table_rows: opts.table_rows,
            stop: Stopper {
                flag: Arc::new(AtomicBool::new(false)),
                waker: Arc::new(waker),
            },
            signals: None,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn stopper(&self) -> Stopper {
        self.stop.clone()
    }

    /// Makes SIGINT and SIGTERM stop the server cleanly.
    pub fn stop_on_signals(&mut self) -> Result<(), FatalError> {
        let mut signals = Signals::new([SIGINT, SIGTERM])
            .map_err(|e| FatalError(format!("cannot install signal handlers: {e}")))?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| FatalError(format!("cannot watch signals: {e}")))?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Serves until stopped; returns the registry's counters.
    pub fn run(mut self, out: &mut dyn Write) -> Result<RegistryStats, FatalError> {
        let local = self.local;
        let config = self.registry.config().clone();
        let _ = writeln!(
            out,
            "p2pchat server listening on {local} (ttl {}s, at most {} clients)",
            config.ttl.as_secs(),
            config.max_clients
        );
        let _ = out.flush();
        info!("listening on {local}");

        let mut events = Events::with_capacity(64);
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut packer = Packer::new();
        let started = Instant::now();
        let started_wall = std::time::SystemTime::now();
        let registry = &mut self.registry;
        let socket = &self.socket;
        let mut changes = Vec::new();
        // The table changed and is yet to be printed; when it may be printed next.
        let mut table_due = false;
        let mut next_table = started;
        loop {
            let deadline = match (registry.poll_timeout(), table_due) {
                (Some(t), true) => Some(t.min(next_table)),
                (None, true) => Some(next_table),
                (t, false) => t,
            };
            let timeout = wait_for(deadline, Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(FatalError(format!("poll failed: {e}")));
            }
            let mut stop = false;
            for event in events.iter() {
                match event.token() {
                    SOCKET => {
                        let res = drain_socket(socket, &mut buf, |from, data| {
                            registry.handle_datagram(Instant::now(), from, data);
                            while let Some(t) = registry.poll_transmit() {
                                packer.push(t.to, &t.message, |to, d| {
                                    send_datagram(socket, to, d);
                                });
                            }
                        });
                        packer.flush(|to, d| {
                            send_datagram(socket, to, d);
                        });
                        if let Err(e) = res {
                            warn!("receive failed: {e}");
                        }
                    }
                    SIGNALS => {
                        if let Some(signals) = self.signals.as_mut() {
                            stop |= signals.pending().next().is_some();
                        }
                    }
                    WAKER => stop |= self.stop.flag.load(Ordering::SeqCst),
                    _ => {}
                }
            }
            if stop {
                let stats = registry.stats().clone();
                info!(
                    "stopping; served {} datagrams; dropped {} garbage, {} malformed, {} other versions, {} unexpected; refused {}, rate-limited {}",
                    stats.datagrams,
                    stats.garbage,
                    stats.malformed,
                    stats.bad_version,
                    stats.unexpected,
                    stats.refused,
                    stats.rate_limited
                );
                let _ = writeln!(out, "p2pchat server on {local} stopped");
                let _ = out.flush();
                return Ok(stats);
            }
            let now = Instant::now();
            registry.handle_timeout(now);
            changes.extend(std::iter::from_fn(|| registry.poll_event()));
            if !changes.is_empty() {
                let _ = write!(out, "{}", render_changes(&changes));
                changes.clear();
                table_due = true;
            }
            if table_due && now >= next_table {
                let wall = |at: Instant| started_wall + at.saturating_duration_since(started);
                let _ = write!(out, "{}", render_table(registry, self.table_rows, wall));
                table_due = false;
                next_table = now + TABLE_INTERVAL;
            }
            let _ = out.flush();
        }
    }
}

/// "client 3" or "client 3 (alice)".
fn client_label(id: ClientId, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("client {id} ({name})"),
        None => format!("client {id}"),
    }
}

/// One line per change, or one line summing them up when there are many.
pub fn render_changes(changes: &[TableEvent]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if changes.len() <= MAX_CHANGE_LINES {
        for ev in changes {
            let _ = match ev {
                TableEvent::Joined { id, addr } => writeln!(s, "client {id} joined from {addr}"),
                TableEvent::Named {
                    id,
                    addr,
                    name,
                    display_name,
                } => match display_name {
                    Some(d) => writeln!(s, "client {id} at {addr} is now {name} ({d})"),
                    None => writeln!(s, "client {id} at {addr} is now {name}"),
                },
                TableEvent::Left { id, addr, name } => {
                    writeln!(s, "{} at {addr} left", client_label(*id, name.as_deref()))
                }
                TableEvent::Expired { id, addr, name } => writeln!(
                    s,
                    "{} at {addr} expired (not heard from)",
                    client_label(*id, name.as_deref())
                ),
                TableEvent::Replaced { id, addr, name, by } => writeln!(
                    s,
                    "{} at {addr} left (replaced by its next run, client {by})",
                    client_label(*id, Some(name))
                ),
            };
        }
    } else {
        let count = |f: fn(&TableEvent) -> bool| changes.iter().filter(|e| f(e)).count();
        let _ = write!(
            s,
            "{} clients joined, {} left, {} expired",
            count(|e| matches!(e, TableEvent::Joined { .. })),
            count(|e| matches!(e, TableEvent::Left { .. } | TableEvent::Replaced { .. })),
            count(|e| matches!(e, TableEvent::Expired { .. })),
        );
        let named = count(|e| matches!(e, TableEvent::Named { .. }));
        if named > 0 {
            let _ = write!(s, ", {named} named");
        }
        s.push('\n');
    }
    s
}

/// The table as printed by the server: a count, then one row per client in id order (only
/// the count above `max_rows` clients). The name columns are there when a client has one.
pub fn render_table(
    registry: &Registry,
    max_rows: usize,
    wall_clock: impl Fn(Instant) -> std::time::SystemTime,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if registry.len() > max_rows {
        let _ = writeln!(
            s,
            "active clients: {} (more than {max_rows}: rows not printed; see --table-rows)",
            registry.len()
        );
        return s;
    }
    let _ = writeln!(s, "active clients: {}", registry.len());
    if !registry.is_empty() {
        let names = registry.has_names();
        let _ = write!(s, "  {:>6}  {:<24}  JOINED (UTC)", "ID", "ADDRESS");
        let _ = if names {
            writeln!(s, "  {:<16}  DISPLAY NAME", "NAME")
        } else {
            writeln!(s)
        };
        for e in registry.entries() {
            let _ = write!(
                s,
                "  {:>6}  {:<24}  {}",
                e.id,
                e.addr.to_string(),
                utc_time_of_day(wall_clock(e.joined))
            );
            if names {
                let _ = write!(s, "      {:<16}", e.name.as_deref().unwrap_or("-"));
                if let Some(d) = &e.display_name {
                    let _ = write!(s, "  {d}");
                }
                s.truncate(s.trim_end().len());
            }
            s.push('\n');
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
    /// Where the identity, queued messages and history are kept.
    pub state: StateChoice,
    /// Colour and timestamps of readable output.
    pub style: cli::Style,
}

/// Runs the chat client until the user leaves. Returns an error (to print on stderr, exit
/// non-zero) only when the client cannot work at all: no server, a refused registration, a
/// port in use.
pub fn run_client(opts: &ClientOptions) -> Result<(), FatalError> {
    let (mut profile, journal, mut notices) =
        Profile::open(&opts.state, opts.peer.name.as_deref()).map_err(FatalError)?;
    let mut config = opts.peer.clone();
    profile.configure(&mut config);
    let mut endpoint = Endpoint::bind(opts.bind, config)?;
    let mut ui = Ui::new(opts.ui == UiMode::Json, opts.style, journal);
    notices.extend(profile.restore(endpoint.peer(), Instant::now(), ui.journal.as_mut()));
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| FatalError(format!("cannot install signal handlers: {e}")))?;
    endpoint
        .poll_registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(|e| FatalError(format!("cannot watch signals: {e}")))?;
    let waker = Arc::new(
        Waker::new(endpoint.poll_registry(), WAKER)
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
    // ---- file transfer: `sendfile` hashes on a thread and wakes the loop when done.
    ui.hasher.in_background(Arc::clone(&wake));
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
    let json = ui.json;
    info!("client socket bound to {}", endpoint.local_addr());
    for message in notices {
        ui.show(endpoint.peer(), &Event::Notice { message }, out.as_mut());
    }

    let _keep_waker = waker;
    // Lines typed before the server gave us an id wait here, in order.
    let mut held: VecDeque<Input> = VecDeque::new();
    let mut interrupts = 0u32;
    // Says what happens to queued messages and writes the state, at any exit.
    let finish = |profile: &mut Profile, ui: &mut Ui, peer: &Peer, out: &mut dyn Output| {
        for message in profile.finish(peer, ui.journal.as_mut()) {
            out.line(&ui.render(
                peer,
                &Event::Notice { message },
                std::time::SystemTime::now(),
            ));
        }
    };
    loop {
        endpoint.flush();
        while let Some(ev) = endpoint.peer().poll_event() {
            if let Some(message) = profile.observe(endpoint.peer(), &ev) {
                ui.show(endpoint.peer(), &Event::Notice { message }, out.as_mut());
            }
            if let Event::Fatal { message } = ev {
                finish(&mut profile, &mut ui, endpoint.peer(), out.as_mut());
                out.finish();
                if json {
                    out.line(&cli::json_line(&Event::Fatal {
                        message: message.clone(),
                    }));
                }
                return Err(FatalError(message));
            }
            if matches!(ev, Event::Left { .. }) {
                finish(&mut profile, &mut ui, endpoint.peer(), out.as_mut());
                out.finish();
            }
            ui.show(endpoint.peer(), &ev, out.as_mut());
        }
        if endpoint.peer().is_finished() {
            return Ok(());
        }
        let wait = match ui.journal.as_mut() {
            Some(j) => {
                let (wait, failed) = profile.save_history(j, Instant::now(), false);
                if let Some(message) = failed {
                    ui.show(endpoint.peer(), &Event::Notice { message }, out.as_mut());
                }
                wait
            }
            None => None,
        };
        endpoint.turn(wait, |token| match token {
            WAKER => held.extend(inputs.try_iter()),
            SIGNALS if signals.pending().count() > 0 => held.push_front(Input::Interrupt),
            _ => {}
        })?;
        let peer = endpoint.peer();
        if peer.id().is_some() {
            for file in ui.hasher.take() {
                cli::offer_hashed(peer, Instant::now(), file, out.as_mut(), json);
            }
        }
        while let Some(input) = held.front() {
            let registered = peer.id().is_some();
            let now = Instant::now();
            match input {
                Input::Interrupt => {
                    interrupts += 1;
                    if interrupts >= 2 {
                        finish(&mut profile, &mut ui, peer, out.as_mut());
                        out.finish();
                        out.line(&if json {
                            cli::json_error("interrupted twice: exiting without waiting")
                        } else {
                            "interrupted twice: exiting without waiting".to_string()
                        });
                        return Ok(());
                    }
                    peer.leave(now);
                }
                // The end of input waits for the files still being hashed for sendfile.
                Input::Eof if registered && ui.hasher.hashing() == 0 => peer.finish(now),
                Input::Line(line) if registered => {
                    cli::execute(peer, now, line, out.as_mut(), &mut ui)
                }
                // Not registered yet: keep it for later.
                _ => break,
            }
            held.pop_front();
        }
    }
}

/// A client's state machine with its own socket and poller: what a program embeds to chat
/// without writing an event loop (the `p2pchat client` loop and the benchmarks use it).
///
/// Call [`Endpoint::turn`] in a loop; between turns, give commands through
/// [`Endpoint::peer`] and read its events with `endpoint.peer().poll_event()`.
pub struct Endpoint {
    socket: UdpSocket,
    poll: Poll,
    events: Events,
    buf: Vec<u8>,
    packer: Packer,
    peer: Peer,
    local: SocketAddr,
    received: u64,
}

impl Endpoint {
    /// Binds `addr` and starts registering with the server of `config`.
    pub fn bind(addr: SocketAddr, config: PeerConfig) -> Result<Endpoint, FatalError> {
        let (socket, poll, local) = watch_socket(addr)?;
        let granted = request_receive_buffer(&socket, CLIENT_RECEIVE_BUFFER);
        debug!("client receive buffer: {granted} bytes (asked for {CLIENT_RECEIVE_BUFFER})");
        Ok(Endpoint {
            socket,
            poll,
            events: Events::with_capacity(64),
            buf: vec![0u8; RECV_BUFFER],
            packer: Packer::new(),
            peer: Peer::new(config, Instant::now()),
            local,
            received: 0,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The state machine: commands, events, state.
    pub fn peer(&mut self) -> &mut Peer {
        &mut self.peer
    }

    /// The poller, to register more event sources (tokens other than 0, which is the socket).
    pub fn poll_registry(&self) -> &mio::Registry {
        self.poll.registry()
    }

    /// Sends every datagram the state machine has ready, packed per destination.
    pub fn flush(&mut self) {
        let socket = &self.socket;
        while let Some(t) = self.peer.poll_transmit() {
            self.packer.push(t.to, &t.message, |to, d| {
                send_datagram(socket, to, d);
            });
        }
        self.packer.flush(|to, d| {
            send_datagram(socket, to, d);
        });
    }

    /// One turn of the loop: sends what is ready, waits for a datagram (at most `max_wait`,
    /// and never past the state machine's next deadline), handles what came and what fell
    /// due, and sends the answers. Other event sources that fired are passed to `other`.
    pub fn turn(
        &mut self,
        max_wait: Option<Duration>,
        mut other: impl FnMut(Token),
    ) -> Result<(), FatalError> {
        self.flush();
        let now = Instant::now();
        let timeout = match (wait_for(self.peer.poll_timeout(), now), max_wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(FatalError(format!("poll failed: {e}")));
            }
        }
        for event in self.events.iter() {
            match event.token() {
                SOCKET => {
                    let (peer, received) = (&mut self.peer, &mut self.received);
                    let res = drain_socket(&self.socket, &mut self.buf, |from, data| {
                        *received += 1;
                        peer.handle_datagram(Instant::now(), from, data);
                    });
                    if let Err(e) = res {
                        warn!("receive failed: {e}");
                    }
                }
                token => other(token),
            }
        }
        let now = Instant::now();
        if self.peer.poll_timeout().is_some_and(|t| t <= now) {
            self.peer.handle_timeout(now);
        }
        self.flush();
        Ok(())
    }

    /// Datagrams sent and received so far.
    pub fn datagrams(&self) -> (u64, u64) {
        (self.packer.datagrams(), self.received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Message;

    fn registry_with(n: u16) -> Registry {
        let mut r = Registry::with_seed(
            RegistryConfig {
                register_rate: 0.0,
                ..RegistryConfig::default()
            },
            1,
        );
        let now = Instant::now();
        for port in (1..=n).rev() {
            let from = SocketAddr::from(([127, 0, 0, 1], port));
            r.handle_message(now, from, Message::Register { want_id: None });
        }
        r
    }

    #[test]
    fn the_table_lists_rows_in_id_order_up_to_the_limit() {
        let r = registry_with(3);
        let text = render_table(&r, 3, |_| std::time::UNIX_EPOCH);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "active clients: 3");
        let ids: Vec<&str> = lines[2..]
            .iter()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(ids, ["1", "2", "3"]);
        assert!(lines[2].ends_with("00:00:00"), "{:?}", lines[2]);
    }

    #[test]
    fn above_the_limit_the_table_is_only_a_count() {
        let r = registry_with(4);
        let text = render_table(&r, 3, |_| std::time::UNIX_EPOCH);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("active clients: 4 (more than 3"), "{text}");
    }

    #[test]
    fn many_changes_are_summed_up_in_one_line() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let few: Vec<TableEvent> = (1..=3).map(|id| TableEvent::Joined { id, addr }).collect();
        assert_eq!(render_changes(&few).lines().count(), 3);
        let mut many: Vec<TableEvent> =
            (1..=30).map(|id| TableEvent::Joined { id, addr }).collect();
        many.push(TableEvent::Left {
            id: 1,
            addr,
            name: None,
        });
        many.push(TableEvent::Expired {
            id: 2,
            addr,
            name: Some("bob".into()),
        });
        assert_eq!(
            render_changes(&many),
            "30 clients joined, 1 left, 1 expired\n"
        );
    }

    #[test]
    fn names_get_columns_in_the_table_once_a_client_has_one() {
        let mut r = registry_with(2);
        let now = Instant::now();
        let alice = SocketAddr::from(([127, 0, 0, 1], 2)); // registered first: client 1
        let token = r.get(1).unwrap().token;
        r.handle_message(
            now,
            alice,
            Message::Claim {
                id: 1,
                token,
                name: "alice".into(),
                display_name: Some("Alice L.".into()),
                previous: None,
            },
        );
        let text = render_table(&r, 3, |_| std::time::UNIX_EPOCH);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "      ID  ADDRESS                   JOINED (UTC)  NAME              DISPLAY NAME"
        );
        assert_eq!(
            lines[2],
            "       1  127.0.0.1:2               00:00:00      alice             Alice L."
        );
        assert_eq!(
            lines[3],
            "       2  127.0.0.1:1               00:00:00      -"
        );
    }

    #[test]
    fn change_lines_name_the_client() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let changes = [
            TableEvent::Named {
                id: 3,
                addr,
                name: "alice".into(),
                display_name: Some("Alice L.".into()),
            },
            TableEvent::Left {
                id: 3,
                addr,
                name: Some("alice".into()),
            },
            TableEvent::Expired {
                id: 4,
                addr,
                name: None,
            },
            TableEvent::Replaced {
                id: 5,
                addr,
                name: "bob".into(),
                by: 6,
            },
        ];
        assert_eq!(
            render_changes(&changes),
            "client 3 at 127.0.0.1:9 is now alice (Alice L.)\n\
             client 3 (alice) at 127.0.0.1:9 left\n\
             client 4 at 127.0.0.1:9 expired (not heard from)\n\
             client 5 (bob) at 127.0.0.1:9 left (replaced by its next run, client 6)\n"
        );
        let many: Vec<TableEvent> = (1..=25)
            .map(|id| TableEvent::Named {
                id,
                addr,
                name: format!("n{id}"),
                display_name: None,
            })
            .chain(changes)
            .collect();
        assert_eq!(
            render_changes(&many),
            "0 clients joined, 2 left, 1 expired, 26 named\n"
        );
    }

    #[test]
    fn time_of_day_is_utc_hours_minutes_seconds() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 3600 * 13 + 60 * 5 + 9);
        assert_eq!(utc_time_of_day(t), "13:05:09");
    }
}
