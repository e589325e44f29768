//! The rendezvous server's loop: one socket, a [`Registry`], signals, and the table
//! printed as it changes.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use log::{info, warn};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use super::{
    drain_socket, request_receive_buffer, send_datagram, wait_for, watch_socket, FatalError,
    RECV_BUFFER, SERVER_RECEIVE_BUFFER, SIGNALS, SOCKET, WAKER,
};
use crate::app::table::TablePrinter;
use crate::registry::{Limits, Registry, RegistryConfig, Stats as RegistryStats};
use crate::wire::Packer;

/// Settings of `p2pchat server`.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub bind: SocketAddr,
    pub registry: RegistryConfig,
    /// Above this many clients the printed table shows the count, not every row.
    pub table_rows: usize,
}

/// Runs the rendezvous server, with `limits`, until SIGINT or SIGTERM. Prints the listening
/// address and the table (on every change) to `out`.
pub fn run_server(
    opts: &ServerOptions,
    limits: Limits,
    out: &mut dyn Write,
) -> Result<(), FatalError> {
    let mut server = Server::bind(opts)?.with_limits(limits);
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

    /// The same server with other [`Limits`] than the default ones.
    pub fn with_limits(mut self, limits: Limits) -> Server {
        self.registry = self.registry.with_limits(limits);
        self
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
        let mut table = TablePrinter::new(
            self.table_rows,
            Instant::now(),
            std::time::SystemTime::now(),
        );
        let mut text = String::new();
        let registry = &mut self.registry;
        let socket = &self.socket;
        loop {
            let deadline = match (registry.poll_timeout(), table.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
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
            table.update(registry, now, &mut text);
            if !text.is_empty() {
                let _ = out.write_all(text.as_bytes());
                text.clear();
            }
            let _ = out.flush();
        }
    }
}
