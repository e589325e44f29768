//! What the `bench_*` examples share: the run-length argument, percentiles, the target line,
//! a rendezvous server on a thread, two connected [`Endpoint`]s and the time of one message
//! between them, a thread's CPU time, and pinning a thread to a CPU.
//!
//! Each benchmark uses its own part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use p2pchat::driver::{Endpoint, Server, ServerOptions, Stopper};
use p2pchat::peer::{Event, PeerConfig};
use p2pchat::registry::{RegistryConfig, Stats as RegistryStats};
use p2pchat::wire::ClientId;

/// The first command-line argument as a number (seconds, or a scale), or `default`.
pub fn arg_or(default: f64) -> f64 {
    match std::env::args().nth(1) {
        None => default,
        Some(a) => a.parse().unwrap_or_else(|_| {
            eprintln!("usage: {} [NUMBER]   (got {a:?})", program());
            std::process::exit(2);
        }),
    }
}

fn program() -> String {
    std::env::args()
        .next()
        .and_then(|p| p.rsplit('/').next().map(str::to_string))
        .unwrap_or_default()
}

/// The `p`-quantile (0..=1) of sorted values (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The last lines of every benchmark: `name: value (target X) ok|MISSED`.
pub fn target(name: &str, value: &str, target: &str, ok: bool) {
    println!(
        "{name}: {value} (target {target}) {}",
        if ok { "ok" } else { "MISSED" }
    );
}

/// A rendezvous server (`driver::Server`, the real loop) on a thread of its own.
pub struct ServerThread {
    pub addr: SocketAddr,
    stopper: Stopper,
    handle: JoinHandle<RegistryStats>,
    /// The server thread's id, to read its CPU time.
    pub tid: u32,
}

impl ServerThread {
    /// Starts a server; its thread is pinned to `cpu` if given (see [`pin_to_cpu`]).
    pub fn start(registry: RegistryConfig, cpu: Option<usize>) -> ServerThread {
        let opts = ServerOptions {
            bind: "127.0.0.1:0".parse().unwrap(),
            registry,
            table_rows: 100,
        };
        let server = Server::bind(&opts).expect("bind the server");
        let addr = server.local_addr();
        let stopper = server.stopper();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = thread::spawn(move || {
            if let Some(cpu) = cpu {
                pin_to_cpu(cpu);
            }
            let _ = tx.send(thread_id());
            server.run(&mut std::io::sink()).expect("server ran")
        });
        let tid = rx.recv().expect("server thread started");
        ServerThread {
            addr,
            stopper,
            handle,
            tid,
        }
    }

    pub fn stop(self) -> RegistryStats {
        self.stopper.stop();
        self.handle.join().expect("server thread")
    }
}

/// Pins the calling thread to CPU `cpu` (Linux), so that the two busy threads of a benchmark
/// (a sender and a receiver, a client and a server) each have a core, instead of the
/// scheduler sometimes putting both on one core to take turns (which made runs on this
/// 2-core machine bimodal). Threads spawned afterwards inherit the pinning. Does nothing on a
/// machine with one CPU, or when the environment variable `BENCH_NO_PIN` is set; returns
/// whether the thread is pinned.
pub fn pin_to_cpu(cpu: usize) -> bool {
    if std::env::var_os("BENCH_NO_PIN").is_some() {
        return false;
    }
    // Not `available_parallelism`: that counts the CPUs this thread may use, one once pinned.
    // SAFETY: sysconf has no preconditions; a zeroed cpu_set_t is the empty set; CPU_SET and
    // sched_setaffinity only read and write the set given, which lives on this stack frame.
    unsafe {
        let cpus = usize::try_from(libc::sysconf(libc::_SC_NPROCESSORS_ONLN)).unwrap_or(1);
        if cpus < 2 {
            return false;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The calling thread's id (Linux: from /proc/thread-self).
pub fn thread_id() -> u32 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time a thread of this process has run so far (Linux: /proc/self/task/TID/schedstat).
pub fn thread_cpu(tid: u32) -> Duration {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

/// A client configuration for loopback benchmarks: the command line's defaults.
pub fn peer_config(server: SocketAddr) -> PeerConfig {
    PeerConfig::new(server, Duration::from_secs(10))
}

/// Two endpoints on loopback, registered with `server` and connected to each other (the
/// first asked, the second accepted). Returns them with their ids.
pub fn connected_pair(server: SocketAddr) -> (Endpoint, Endpoint, ClientId, ClientId) {
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut a = Endpoint::bind(bind, peer_config(server)).expect("bind a");
    let mut b = Endpoint::bind(bind, peer_config(server)).expect("bind b");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut ida, mut idb) = (None, None);
    let (mut a_connected, mut b_connected, mut asked) = (false, false, false);
    while !(a_connected && b_connected) {
        assert!(
            Instant::now() < deadline,
            "the two endpoints did not connect"
        );
        a.turn(Some(Duration::from_millis(1)), |_| {}).unwrap();
        b.turn(Some(Duration::from_millis(1)), |_| {}).unwrap();
        for (ep, id, connected) in [
            (&mut a, &mut ida, &mut a_connected),
            (&mut b, &mut idb, &mut b_connected),
        ] {
            while let Some(ev) = ep.peer().poll_event() {
                match ev {
                    Event::Registered { id: got, .. } => *id = Some(got),
                    Event::Request { from } => {
                        ep.peer().accept(Instant::now(), Some(from)).unwrap();
                    }
                    Event::Connected { .. } => *connected = true,
                    other => panic!("unexpected while connecting: {other:?}"),
                }
            }
        }
        if let (Some(_), Some(idb), false) = (ida, idb, asked) {
            a.peer().connect(Instant::now(), idb).unwrap();
            asked = true;
        }
    }
    a.flush();
    b.flush();
    (a, b, ida.unwrap(), idb.unwrap())
}

/// An endpoint turning on a thread of its own until [`Turning::stop`], handing every event
/// it emits to `each` with `state`.
pub struct Turning<S> {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(Endpoint, S)>>,
}

impl<S: Send + 'static> Turning<S> {
    /// Starts the thread (pinned to `cpu`, if given).
    pub fn start(
        mut endpoint: Endpoint,
        cpu: Option<usize>,
        mut state: S,
        mut each: impl FnMut(&mut S, Event) + Send + 'static,
    ) -> Turning<S> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            if let Some(cpu) = cpu {
                pin_to_cpu(cpu);
            }
            while !flag.load(Ordering::SeqCst) {
                endpoint
                    .turn(Some(Duration::from_millis(20)), |_| {})
                    .unwrap();
                while let Some(ev) = endpoint.peer().poll_event() {
                    each(&mut state, ev);
                }
            }
            (endpoint, state)
        });
        Turning {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the thread; returns the endpoint and the state.
    pub fn stop(mut self) -> (Endpoint, S) {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("running");
        thread.join().expect("the endpoint's thread")
    }
}

/// Sends `text` to `to` from `sender` and turns it until that message is `Delivered`: how
/// long it took, or `None` if it was reported `Undelivered`. Any other event of the sender
/// than `Sent` and the settling of earlier messages fails the benchmark.
pub fn time_delivery(sender: &mut Endpoint, to: ClientId, text: &str) -> Option<Duration> {
    let t = Instant::now();
    let seq = sender.peer().send(t, Some(to), text).unwrap()[0];
    loop {
        sender
            .turn(Some(Duration::from_millis(100)), |_| {})
            .unwrap();
        while let Some(ev) = sender.peer().poll_event() {
            match ev {
                Event::Delivered { seq: s, .. } if s == seq => return Some(t.elapsed()),
                Event::Undelivered { seq: s, .. } if s == seq => return None,
                Event::Sent { .. } | Event::Delivered { .. } | Event::Undelivered { .. } => {}
                other => panic!("sender: unexpected {other:?}"),
            }
        }
    }
}

/// The receiving side of a bare UDP blast (the baseline the benchmarks compare with), on a
/// thread pinned to CPU 1: counts what arrives until `expected` is counted, or until 200 ms
/// pass without a datagram once the sender has said it is done.
pub struct BlastReceiver {
    pub addr: SocketAddr,
    sending_done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: JoinHandle<(u64, Duration)>,
}

impl BlastReceiver {
    /// Starts receiving; each datagram of `len` bytes counts `count(len)`. Times are
    /// measured from `started`.
    pub fn start(
        started: Instant,
        expected: u64,
        count: impl Fn(usize) -> u64 + Send + 'static,
    ) -> BlastReceiver {
        use mio::{Events, Interest, Poll, Token};
        use std::sync::atomic::{AtomicBool, Ordering};
        let mut rx = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = rx.local_addr().unwrap();
        let sending_done = std::sync::Arc::new(AtomicBool::new(false));
        let done = std::sync::Arc::clone(&sending_done);
        let handle = thread::spawn(move || {
            pin_to_cpu(1);
            let mut poll = Poll::new().unwrap();
            poll.registry()
                .register(&mut rx, Token(0), Interest::READABLE)
                .unwrap();
            let mut events = Events::with_capacity(64);
            let mut buf = vec![0u8; 65_536];
            let mut received = 0u64;
            let mut last = started;
            let mut quiet_since: Option<Instant> = None;
            loop {
                poll.poll(&mut events, Some(Duration::from_millis(10)))
                    .unwrap();
                let before = received;
                loop {
                    match rx.recv_from(&mut buf) {
                        Ok((len, _)) => received += count(len),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => panic!("receive: {e}"),
                    }
                }
                let now = Instant::now();
                if received > before {
                    last = now;
                    quiet_since = None;
                } else if done.load(Ordering::SeqCst) {
                    // The grace: 200 ms without a datagram once the sender is done.
                    let q = *quiet_since.get_or_insert(now);
                    if now - q > Duration::from_millis(200) || received >= expected {
                        return (received, last - started);
                    }
                }
            }
        });
        BlastReceiver {
            addr,
            sending_done,
            handle,
        }
    }

    /// The sender is done: waits for the stragglers; returns what was counted and the time
    /// from the start to the last datagram.
    pub fn finish(self) -> (u64, Duration) {
        self.sending_done
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// What the cryptography costs, measured with the library's own sealing: two in-memory
/// peers and a registry (no sockets) connect, then one seals a `Chat` of `chat_len` bytes
/// of text, and a full `Chunk`, each alone in a datagram, and the other opens it (wire
/// encoding and decoding included), `rounds` times each. Also the same messages encoded
/// and decoded in clear, for the difference. Returns (chat sealed, chat clear, chunk
/// sealed, chunk clear), per datagram.
pub fn crypto_costs(chat_len: usize, rounds: u32) -> (Duration, Duration, Duration, Duration) {
    use p2pchat::peer::Peer;
    use p2pchat::registry::Registry;
    use p2pchat::wire::{self, Message};
    let now = Instant::now();
    let server: SocketAddr = "10.0.0.1:7070".parse().unwrap();
    let addrs: [SocketAddr; 2] = [
        "10.0.1.1:4000".parse().unwrap(),
        "10.0.1.2:4000".parse().unwrap(),
    ];
    let mut registry = Registry::new(RegistryConfig::default());
    let mut peers = [
        Peer::new(PeerConfig::new(server, Duration::from_secs(1)), now),
        Peer::new(PeerConfig::new(server, Duration::from_secs(1)), now),
    ];
    let mut chat = None;
    let pump = |registry: &mut Registry, peers: &mut [Peer; 2], chat: &mut Option<Message>| {
        for _ in 0..50 {
            let mut moved = false;
            for i in 0..2 {
                while let Some((t, plain)) = peers[i].poll_transmit_plain() {
                    moved = true;
                    if let [m @ Message::Chat { .. }] = &plain[..] {
                        *chat = Some(m.clone());
                    }
                    let bytes = wire::encode(&t.message);
                    if t.to == server {
                        registry.handle_datagram(now, addrs[i], &bytes);
                    } else if let Some(j) = addrs.iter().position(|a| *a == t.to) {
                        peers[j].handle_datagram(now, addrs[i], &bytes);
                    }
                }
            }
            while let Some(t) = registry.poll_transmit() {
                moved = true;
                if let Some(j) = addrs.iter().position(|a| *a == t.to) {
                    peers[j].handle_datagram(now, server, &wire::encode(&t.message));
                }
            }
            if !moved {
                return;
            }
        }
    };
    pump(&mut registry, &mut peers, &mut chat);
    let (ida, idb) = (peers[0].id().unwrap(), peers[1].id().unwrap());
    peers[0].connect(now, idb).unwrap();
    pump(&mut registry, &mut peers, &mut chat);
    peers[1].accept(now, Some(ida)).unwrap();
    pump(&mut registry, &mut peers, &mut chat);
    peers[0].send(now, None, &"x".repeat(chat_len)).unwrap();
    pump(&mut registry, &mut peers, &mut chat);
    let chat = chat.expect("the chat went out");
    let Message::Chat { from, session, .. } = chat else {
        unreachable!()
    };
    let chunk = Message::Chunk {
        from,
        session,
        n: 1,
        seq: 2,
        data: vec![0x5a; wire::CHUNK_SIZE],
    };
    let [a, b] = &mut peers;
    let mut time = |m: &Message, sealed: bool| {
        let t = Instant::now();
        for _ in 0..rounds {
            if sealed {
                let s = a.seal(addrs[1], std::slice::from_ref(m)).expect("keys");
                let opened = b.open_sealed(addrs[0], &wire::encode(&s)).expect("opens");
                std::hint::black_box(opened);
            } else {
                std::hint::black_box(wire::decode(&wire::encode(m)).unwrap());
            }
        }
        t.elapsed() / rounds
    };
    (
        time(&chat, true),
        time(&chat, false),
        time(&chunk, true),
        time(&chunk, false),
    )
}

/// Prints [`crypto_costs`] as one line.
pub fn print_crypto_costs(chat_len: usize) {
    let (chat, chat_clear, chunk, chunk_clear) = crypto_costs(chat_len, 20_000);
    println!(
        "cryptography: a {chat_len}-byte chat datagram sealed + opened (encoding included) {:.2} µs, in clear {:.2} µs: +{:.2} µs; a full chunk ({} bytes) {:.2} µs, in clear {:.2} µs: +{:.2} µs",
        us(chat),
        us(chat_clear),
        us(chat.saturating_sub(chat_clear)),
        p2pchat::wire::CHUNK_SIZE,
        us(chunk),
        us(chunk_clear),
        us(chunk.saturating_sub(chunk_clear)),
    );
}
