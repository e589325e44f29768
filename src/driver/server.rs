//! The rendezvous server's loop: one socket, a [`Registry`], signals, and the table
//! printed as it changes, through an [`OutputQueue`] so that a stdout nobody reads never
//! stops the loop.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::{Events, Interest, Poll, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use super::{
    drain_socket, request_receive_buffer, send_datagram, wait_for, watch_socket, FatalError, Udp,
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
/// address and the table (on every change) to `out` through an [`OutputQueue`]: if `out`
/// blocks (stdout on a pipe nobody reads), lines are dropped and counted, and the server
/// goes on answering.
pub fn run_server(
    opts: &ServerOptions,
    limits: Limits,
    out: impl Write + Send + 'static,
) -> Result<(), FatalError> {
    let mut server = Server::bind(opts)?.with_limits(limits);
    server.stop_on_signals()?;
    let mut queue = OutputQueue::spawn(out);
    let result = server.run(&mut queue);
    // The last lines, if the reader takes them soon; never a wait on a reader that is gone.
    queue.finish(Duration::from_secs(1));
    result.map(|_| ())
}

/// Chunks of output (what one turn of the loop prints) waiting for the writer thread.
const OUTPUT_CHUNKS: usize = 64;
/// Most bytes one chunk may gather before its flush; past it, the rest is dropped.
const MAX_CHUNK: usize = 1 << 20;

/// Output that never blocks its writer: text written is gathered until `flush`, then handed
/// to a thread of its own through a bounded queue, and that thread writes it to the real
/// output. When the queue is full (the reader is slow, or gone), the text is dropped and
/// its lines counted, and the next text that gets through starts with a line saying how
/// many were dropped. Memory: at most 64 chunks (`OUTPUT_CHUNKS`) of at most 1 MiB
/// (`MAX_CHUNK`).
pub struct OutputQueue {
    pending: Vec<u8>,
    queue: Option<SyncSender<Vec<u8>>>,
    /// Lines dropped and not yet reported.
    dropped: u64,
    /// Lines dropped in all.
    dropped_total: u64,
    /// Closed by the writer thread when it ends.
    done: Receiver<()>,
}

impl OutputQueue {
    /// Starts the writer thread, which owns `out`.
    pub fn spawn(mut out: impl Write + Send + 'static) -> OutputQueue {
        let (queue, chunks) = mpsc::sync_channel::<Vec<u8>>(OUTPUT_CHUNKS);
        let (done_tx, done) = mpsc::channel::<()>();
        let spawned = thread::Builder::new().name("output".into()).spawn(move || {
            let _done = done_tx; // dropped when the thread ends
            for chunk in chunks {
                if out.write_all(&chunk).and_then(|()| out.flush()).is_err() {
                    break; // the reader is gone: what follows is counted as dropped
                }
            }
        });
        if let Err(e) = spawned {
            warn!("cannot start the output thread ({e}): the table will not be printed");
        }
        OutputQueue {
            pending: Vec::new(),
            queue: Some(queue),
            dropped: 0,
            dropped_total: 0,
            done,
        }
    }

    /// Lines dropped so far because the output was not being read.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped_total
    }

    /// Hands what is pending to the writer, closes the queue and waits at most `wait` for
    /// the writer to finish.
    pub fn finish(mut self, wait: Duration) {
        let _ = self.flush();
        self.queue = None;
        let _ = self.done.recv_timeout(wait);
        if self.dropped_total > 0 {
            info!(
                "{} lines of output dropped in all (the output was not being read)",
                self.dropped_total
            );
        }
    }

    fn drop_lines(&mut self, text: &[u8]) {
        let lines = text.iter().filter(|&&b| b == b'\n').count()
            + usize::from(text.last().is_some_and(|&b| b != b'\n'));
        self.dropped += lines as u64;
        self.dropped_total += lines as u64;
    }
}

impl Write for OutputQueue {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pending.len() + buf.len() > MAX_CHUNK {
            self.drop_lines(buf);
        } else {
            self.pending.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    /// Never blocks: hands the text written since the last flush to the writer thread if
    /// its queue has room, else drops it (counting its lines).
    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut chunk = Vec::new();
        if self.dropped > 0 {
            chunk = format!(
                "({} lines of output dropped: the output was not being read)\n",
                self.dropped
            )
            .into_bytes();
        }
        let notice_len = chunk.len();
        chunk.append(&mut self.pending);
        let refused = match &self.queue {
            Some(queue) => match queue.try_send(chunk) {
                Ok(()) => None,
                Err(TrySendError::Full(c) | TrySendError::Disconnected(c)) => Some(c),
            },
            None => Some(chunk),
        };
        match refused {
            None => self.dropped = 0,
            Some(c) => self.drop_lines(&c[notice_len..]),
        }
        Ok(())
    }
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

/// Which of this machine's addresses each client last reached the server at, for a server
/// bound to an unspecified address (`0.0.0.0`, `[::]`): what the server sends a client
/// later, not only the direct answer to a request, leaves from that address, the only one
/// the client (and its NAT) accepts the server's datagrams from. A server bound to one
/// address keeps nothing here.
///
/// Memory: an entry per address heard from within the registry's ttl (clients refresh
/// theirs with every keepalive), about 80 bytes each, at most `max_clients` + 4,096 of them.
/// When it is full (a flood of new addresses), a new address's answers still leave from the
/// right address (sent at once), but later messages to it leave from the kernel's choice.
struct ReplySources {
    map: HashMap<SocketAddr, (IpAddr, Instant)>,
    ttl: Duration,
    cap: usize,
    next_prune: Option<Instant>,
}

impl ReplySources {
    fn new(ttl: Duration, max_clients: usize) -> ReplySources {
        ReplySources {
            map: HashMap::new(),
            ttl,
            cap: max_clients.saturating_add(4_096),
            next_prune: None,
        }
    }

    /// `from` reached us at `to`; returns whether that is remembered.
    fn note(&mut self, from: SocketAddr, to: IpAddr, now: Instant) -> bool {
        if self.map.len() >= self.cap && !self.map.contains_key(&from) {
            self.prune_before(now);
            if self.map.len() >= self.cap {
                return false;
            }
        }
        self.map.insert(from, (to, now));
        self.next_prune.get_or_insert(now + self.ttl);
        true
    }

    fn get(&self, to: SocketAddr) -> Option<IpAddr> {
        self.map.get(&to).map(|&(ip, _)| ip)
    }

    /// Forgets the addresses not heard from within the ttl, at most once per ttl.
    fn prune(&mut self, now: Instant) {
        if self.next_prune.is_some_and(|at| at <= now) {
            self.prune_before(now);
            self.next_prune = (!self.map.is_empty()).then_some(now + self.ttl);
        }
    }

    fn prune_before(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.map
            .retain(|_, &mut (_, seen)| now.duration_since(seen) <= ttl);
    }
}

/// The rendezvous server's event loop: a bound socket and a [`Registry`]. `p2pchat server`
/// runs one until a signal; a program can run one on a thread and stop it with a
/// [`Stopper`] (the benchmarks do).
pub struct Server {
    socket: Udp,
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

    /// Serves until stopped; returns the registry's counters. Prints to `out` from the loop
    /// itself (flushing after each turn), so `out` must not block: [`run_server`] gives an
    /// [`OutputQueue`].
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
        let mut sources = ReplySources::new(config.ttl, config.max_clients);
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
                        let res = drain_socket(socket, &mut buf, |r, data| {
                            let now = Instant::now();
                            let kept = r.to.is_none_or(|to| sources.note(r.from, to, now));
                            registry.handle_datagram(now, r.from, data);
                            let source = |to: SocketAddr| match to == r.from {
                                true => r.to,
                                false => sources.get(to),
                            };
                            while let Some(t) = registry.poll_transmit() {
                                packer.push(t.to, &t.message, |to, d| {
                                    let _ = send_datagram(socket, to, source(to), d);
                                });
                            }
                            if !kept {
                                // Not remembered (the table of sources is full): the answers
                                // leave now, while the source is known.
                                packer.flush(|to, d| {
                                    let _ = send_datagram(socket, to, source(to), d);
                                });
                            }
                        });
                        packer.flush(|to, d| {
                            let _ = send_datagram(socket, to, sources.get(to), d);
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
                    "stopping; served {} datagrams; dropped {} garbage, {} malformed, {} other versions, {} unexpected; refused {}, rate-limited {} registrations and {} List requests, {} registrations from full networks",
                    stats.datagrams,
                    stats.garbage,
                    stats.malformed,
                    stats.bad_version,
                    stats.unexpected,
                    stats.refused,
                    stats.rate_limited,
                    stats.list_limited,
                    stats.prefix_full
                );
                let _ = writeln!(out, "p2pchat server on {local} stopped");
                let _ = out.flush();
                return Ok(stats);
            }
            let now = Instant::now();
            registry.handle_timeout(now);
            sources.prune(now);
            table.update(registry, now, &mut text);
            if !text.is_empty() {
                let _ = out.write_all(text.as_bytes());
                text.clear();
            }
            let _ = out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A writer that waits for `gate` before each write, as stdout does on a pipe that is
    /// full, and keeps what it wrote.
    struct Gated {
        gate: Arc<Mutex<()>>,
        written: Arc<Mutex<Vec<u8>>>,
        /// Writes begun (the writer thread has taken a chunk off the queue).
        begun: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.begun.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _open = self.gate.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_to_a_blocked_reader_is_dropped_counted_and_reported_once_it_flows() {
        let gate = Arc::new(Mutex::new(()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let begun = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let closed = gate.lock().unwrap();
        let mut out = OutputQueue::spawn(Gated {
            gate: Arc::clone(&gate),
            written: Arc::clone(&written),
            begun: Arc::clone(&begun),
        });
        // The writer takes the first chunk and waits on the reader; only then the rest
        // comes, so that what is kept does not depend on when the writer thread runs.
        write!(out, "line 0\ntwo\n").unwrap();
        out.flush().unwrap();
        let waiting = Instant::now();
        while begun.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(waiting.elapsed() < Duration::from_secs(5), "no writer");
            thread::sleep(Duration::from_millis(1));
        }
        let started = Instant::now();
        for k in 1..1000 {
            write!(out, "line {k}\ntwo\n").unwrap();
            out.flush().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the writer waited on the reader"
        );
        // The writer thread holds one chunk, the queue OUTPUT_CHUNKS; the rest is dropped.
        let kept = OUTPUT_CHUNKS as u64 + 1;
        let dropped = out.dropped_lines();
        assert_eq!(dropped, 2 * (1000 - kept), "lines dropped");
        drop(closed);
        // Once the reader reads again (and has read what was kept), the next text says how
        // many were dropped.
        let waiting = Instant::now();
        let last_kept = format!("line {}\ntwo\n", kept - 1);
        while !String::from_utf8_lossy(&written.lock().unwrap()).contains(&last_kept) {
            assert!(
                waiting.elapsed() < Duration::from_secs(5),
                "the writer is stuck"
            );
            thread::sleep(Duration::from_millis(1));
        }
        thread::sleep(Duration::from_millis(50));
        writeln!(out, "after").unwrap();
        out.flush().unwrap();
        out.finish(Duration::from_secs(5));
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let expected =
            format!("({dropped} lines of output dropped: the output was not being read)\nafter\n");
        assert!(text.ends_with(&expected), "{text}");
        assert!(text.starts_with("line 0\ntwo\nline 1\n"), "{text}");
    }
}
