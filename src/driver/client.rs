//! The client's loop: an [`Endpoint`] (socket, poller, [`Peer`]), the stdin reader and
//! signals, around the [`App`] that carries out commands and shows events.

use std::io;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use super::udp::BATCH;
use super::{
    drain_socket_batched, request_receive_buffer, send_error, wait_for, watch_socket, FatalError,
    RecvBatch, SendBatch, Udp, CLIENT_RECEIVE_BUFFER, SIGNALS, SOCKET, WAKER,
};
use crate::app::client::{App, Exit};
use crate::app::profile::StateChoice;
use crate::app::render::Style;
use crate::app::terminal::{self, Output, StdoutOutput, Wake};
use crate::peer::{Peer, PeerConfig};
use crate::wire::Packer;

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
    pub style: Style,
}

/// Runs the chat client until the user leaves. Returns an error (to print on stderr, exit
/// non-zero) only when the client cannot work at all: no server, a refused registration, a
/// port in use.
pub fn run_client(opts: &ClientOptions) -> Result<(), FatalError> {
    let json = opts.ui == UiMode::Json;
    let (mut app, mut notices) =
        App::open(&opts.state, opts.peer.name.as_deref(), json, opts.style).map_err(FatalError)?;
    let mut config = opts.peer.clone();
    app.configure(&mut config);
    let mut endpoint = Endpoint::bind(opts.bind, config)?;
    notices.extend(app.restore(endpoint.peer(), Instant::now()));
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
    app.hash_in_background(Arc::clone(&wake));
    let (tx, inputs) = mpsc::channel();
    let mut out: Box<dyn Output> = match opts.ui {
        UiMode::Terminal => Box::new(
            terminal::spawn_terminal_reader(tx, wake)
                .map_err(|e| FatalError(format!("cannot start the line editor: {e}")))?,
        ),
        UiMode::Plain | UiMode::Json => {
            terminal::spawn_plain_reader(tx, wake)
                .map_err(|e| FatalError(format!("cannot read stdin: {e}")))?;
            Box::new(StdoutOutput)
        }
    };
    info!("client socket bound to {}", endpoint.local_addr());
    app.show_notices(endpoint.peer(), notices, out.as_mut());

    let _keep_waker = waker;
    let ended = |exit: Exit| match exit {
        Exit::Done => Ok(()),
        Exit::Fatal(message) => Err(FatalError(message)),
    };
    loop {
        endpoint.flush();
        while let Some(ev) = endpoint.peer().poll_event() {
            if let Some(exit) = app.on_event(endpoint.peer(), ev, out.as_mut()) {
                return ended(exit);
            }
        }
        if endpoint.peer().is_finished() {
            return Ok(());
        }
        let wait = app.save_history(endpoint.peer(), Instant::now(), out.as_mut());
        endpoint.turn(wait, |token| match token {
            WAKER => inputs.try_iter().for_each(|input| app.input(input)),
            SIGNALS if signals.pending().count() > 0 => app.interrupt(),
            _ => {}
        })?;
        if let Some(exit) = app.run_inputs(endpoint.peer(), Instant::now(), out.as_mut()) {
            return ended(exit);
        }
    }
}

/// A client's state machine with its own socket and poller: what a program embeds to chat
/// without writing an event loop (the `p2pchat client` loop and the benchmarks use it).
///
/// Call [`Endpoint::turn`] in a loop; between turns, give commands through
/// [`Endpoint::peer`] and read its events with `endpoint.peer().poll_event()`.
pub struct Endpoint {
    socket: Udp,
    poll: Poll,
    events: Events,
    recv: RecvBatch,
    batch: SendBatch,
    packer: Packer,
    peer: Peer,
    local: SocketAddr,
    received: u64,
}

/// Where a packed datagram goes: set aside in `relayed` if it is for a peer's relayed
/// address (our TURN relay wraps it), else into `batch`. True when the batch is full.
fn route(
    peer: &Peer,
    relayed: &mut Vec<(SocketAddr, Vec<u8>)>,
    batch: &mut super::udp::SendBatch,
    to: SocketAddr,
    d: &[u8],
) -> bool {
    if peer.relays(to) {
        relayed.push((to, d.to_vec()));
        false
    } else {
        batch.push(to, d);
        batch.len() >= BATCH
    }
}

impl Endpoint {
    /// Binds `addr` and starts registering with the server of `config`.
    pub fn bind(addr: SocketAddr, mut config: PeerConfig) -> Result<Endpoint, FatalError> {
        let (socket, poll, local) = watch_socket(addr)?;
        let chosen = config.candidates.as_deref();
        let own = crate::app::candidates::candidates(chosen, config.server, local);
        debug!("candidates told to the server: {own:?}");
        config.candidates = Some(own);
        let granted = request_receive_buffer(&socket, CLIENT_RECEIVE_BUFFER);
        debug!("client receive buffer: {granted} bytes (asked for {CLIENT_RECEIVE_BUFFER})");
        Ok(Endpoint {
            socket,
            poll,
            events: Events::with_capacity(64),
            recv: RecvBatch::new(),
            batch: SendBatch::default(),
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

    /// Sends every datagram the state machine has ready, packed per destination. A send
    /// the system refuses is handed back to the state machine, which tells the person.
    pub fn flush(&mut self) {
        let socket = &self.socket;
        let mut failed = Vec::new();
        // Datagrams to peers' relayed addresses go through our TURN relay: set aside here
        // (packed like any other), wrapped below. The others are gathered in `batch` and sent
        // [`udp::BATCH`] per system call.
        let mut relayed = Vec::new();
        let batch = &mut self.batch;
        let mut fail = |to: SocketAddr, e: io::Error| failed.push((to, send_error(&e)));
        while let Some(t) = self.peer.poll_transmit() {
            let peer = &self.peer;
            self.packer.push(t.to, &t.message, |to, d| {
                if route(peer, &mut relayed, batch, to, d) {
                    socket.send_batch(batch, &mut fail);
                }
            });
        }
        let peer = &self.peer;
        self.packer.flush(|to, d| {
            route(peer, &mut relayed, batch, to, d);
        });
        socket.send_batch(batch, &mut fail);
        let now = Instant::now();
        for (to, d) in relayed {
            self.peer.relay_send(now, to, &d);
        }
        while let Some((to, d)) = self.peer.poll_relay_transmit(now) {
            batch.push(to, &d);
            if batch.len() >= BATCH {
                socket.send_batch(batch, &mut fail);
            }
        }
        socket.send_batch(batch, &mut fail);
        for (to, error) in failed {
            self.peer.handle_send_error(now, to, error);
        }
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
                    let res = drain_socket_batched(&self.socket, &mut self.recv, |r, data| {
                        *received += 1;
                        peer.handle_datagram(Instant::now(), r.from, data);
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
