//! Throughput and latency of the rendezvous server under a load of lookups, against a bare
//! UDP echo server loaded the same way.
//!
//! Runs the real server loop (`p2pchat::driver::Server`) on a thread, registers 100,000
//! clients with it (each from an address of its own: 127.2.x.1, many ports; the rate limit
//! is off), then loads it with lookups of random registered ids from `SOCKETS` sockets, each
//! keeping `OUTSTANDING` requests in flight: a new request goes out as soon as an answer
//! comes. The load generator is one thread with a mio loop, pinned to CPU 0; the servers
//! are pinned to CPU 1, so that each side has a core of its own.
//!
//! The baseline, in the same run: a bare UDP echo server written in the same mio style
//! (one thread, poll, drain the socket until `WouldBlock`, answer every datagram), loaded the
//! same way by the same generator with the same datagrams. The two alternate (lookups, echo,
//! echo, lookups) so that a change in the machine's load hits both alike.
//!
//! Prints lookups/s, echoes/s, p50/p99 latency of both, the CPU time each server thread spent
//! per answer, and the ratio.
//!
//! ```sh
//! cargo run --release --example bench_server           # 100,000 clients, 4 s of each load
//! cargo run --release --example bench_server -- 10     # 10 s of each load
//! cargo run --release --example bench_server -- 4 1000 # 1,000 clients
//! ```

mod bench_common;

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bench_common::{
    arg_or, percentile, pin_to_cpu, target, thread_cpu, thread_id, us, ServerThread,
};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use p2pchat::registry::RegistryConfig;
use p2pchat::wire::{self, ClientId, Message};

const SOCKETS: usize = 4;
const OUTSTANDING: usize = 8;
/// A request not answered within this is counted lost and replaced.
const GIVE_UP: Duration = Duration::from_millis(200);

fn main() {
    let secs = arg_or(4.0);
    let half = Duration::from_secs_f64(secs / 2.0);
    let clients: u32 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000)
        .max((SOCKETS * OUTSTANDING) as u32);
    println!(
        "bench_server: {clients} clients; {SOCKETS} sockets x {OUTSTANDING} requests outstanding; {secs} s of each load, loopback"
    );
    // The load generator on CPU 0, the servers on CPU 1.
    let pinned = pin_to_cpu(0);
    println!("threads pinned to CPUs: {pinned}");
    let server = ServerThread::start(
        RegistryConfig {
            ttl: Duration::from_secs(3600),
            max_clients: clients as usize + 1000,
            register_rate: 0.0,
            ..RegistryConfig::default()
        },
        Some(1),
    );
    let started = Instant::now();
    let registered = register_many(server.addr, clients);
    println!(
        "registered {registered} clients in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let echo = EchoServer::start();

    let mut lookups = Load::default();
    let mut echoes = Load::default();
    for to_server in [true, false, false, true] {
        let (name, total, one) = if to_server {
            let one = load(server.addr, server.tid, registered, half, true);
            ("lookups", &mut lookups, one)
        } else {
            let one = load(echo.addr, echo.tid, registered, half, false);
            ("echoes", &mut echoes, one)
        };
        let mut sorted = one.latencies.clone();
        sorted.sort_unstable();
        println!(
            "  {name}: {:.0}/s, p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
            one.rate(),
            us(percentile(&sorted, 0.5)),
            us(percentile(&sorted, 0.99)),
            us(percentile(&sorted, 0.999)),
            us(sorted.last().copied().unwrap_or_default()),
        );
        total.add(one);
    }
    echo.stop();
    let stats = server.stop();

    lookups.report("lookups (p2pchat server)");
    echoes.report("echoes (bare UDP echo)");
    println!(
        "server counters: {} datagrams, {} malformed, {} unexpected",
        stats.datagrams, stats.malformed, stats.unexpected
    );
    let ratio = lookups.rate() / echoes.rate();
    println!(
        "ratio lookups/s / echoes/s: {ratio:.2}; p50 latency ratio {:.2}",
        us(lookups.p(0.5)) / us(echoes.p(0.5))
    );
    target(
        "bench_server ratio",
        &format!("{ratio:.2}"),
        ">= 0.80",
        ratio >= 0.8,
    );
}

/// Registers `n` clients, each from an address of its own; returns how many got an id (their
/// ids are 1..=that, the lowest free ones).
fn register_many(server: SocketAddr, n: u32) -> u32 {
    const BATCH: usize = 128;
    let register = wire::encode_request(&Message::register(None, [0; 32]));
    let mut candidate = 0u32;
    let mut done = 0u32;
    let mut buf = [0u8; 2048];
    while done < n {
        // Bind a batch of sockets on addresses never used before (skipping any taken).
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH.min((n - done) as usize) {
            let (block, port) = (candidate / 20_000, 21_000 + (candidate % 20_000) as u16);
            candidate += 1;
            assert!(block < 250, "ran out of addresses");
            let ip = Ipv4Addr::new(127, 2, block as u8, 1);
            if let Ok(s) = StdSocket::bind(SocketAddrV4::new(ip, port)) {
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                batch.push(s);
            }
        }
        for _attempt in 0..5 {
            for s in &batch {
                s.send_to(&register, server).unwrap();
            }
            let mut missing = Vec::new();
            for s in batch.drain(..) {
                match s.recv_from(&mut buf) {
                    Ok((len, _))
                        if matches!(wire::decode(&buf[..len]), Ok(Message::Registered { .. })) =>
                    {
                        done += 1
                    }
                    _ => missing.push(s),
                }
            }
            batch = missing;
            if batch.is_empty() {
                break;
            }
        }
        assert!(batch.is_empty(), "registrations went unanswered");
    }
    done
}

#[derive(Default)]
struct Load {
    answers: u64,
    lost: u64,
    elapsed: Duration,
    server_cpu: Duration,
    /// CPU time of the load generator's thread.
    client_cpu: Duration,
    latencies: Vec<Duration>,
}

impl Load {
    fn add(&mut self, other: Load) {
        self.answers += other.answers;
        self.lost += other.lost;
        self.elapsed += other.elapsed;
        self.server_cpu += other.server_cpu;
        self.client_cpu += other.client_cpu;
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
    }

    fn rate(&self) -> f64 {
        self.answers as f64 / self.elapsed.as_secs_f64()
    }

    fn p(&self, q: f64) -> Duration {
        percentile(&self.latencies, q)
    }

    fn report(&self, name: &str) {
        println!(
            "{name}: {:.0}/s ({} answers in {:.2} s, {} lost); latency p50 {:.1} us, p99 {:.1} us; server thread CPU {:.2} us per answer ({:.0}% busy), load generator {:.0}% busy",
            self.rate(),
            self.answers,
            self.elapsed.as_secs_f64(),
            self.lost,
            us(self.p(0.5)),
            us(self.p(0.99)),
            us(self.server_cpu) / self.answers.max(1) as f64,
            100.0 * self.server_cpu.as_secs_f64() / self.elapsed.as_secs_f64(),
            100.0 * self.client_cpu.as_secs_f64() / self.elapsed.as_secs_f64(),
        );
    }
}

/// Loads the server at `to` for `len`: `SOCKETS` sockets, `OUTSTANDING` lookups in flight on
/// each. Request slot `k` looks up ids `k + 1 (mod SOCKETS * OUTSTANDING)`, so that an answer
/// (a `Found` from the p2pchat server, the same `Lookup` back from the echo server) names its
/// slot.
fn load(to: SocketAddr, server_tid: u32, ids: u32, len: Duration, lookups: bool) -> Load {
    let slots = (SOCKETS * OUTSTANDING) as u32;
    assert!(ids >= slots);
    let mut poll = Poll::new().unwrap();
    let sockets: Vec<UdpSocket> = (0..SOCKETS)
        .map(|i| {
            let mut s = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            poll.registry()
                .register(&mut s, Token(i), Interest::READABLE)
                .unwrap();
            s
        })
        .collect();
    let mut events = Events::with_capacity(64);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next_id = |slot: u32| -> ClientId {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let r = (rng % u64::from(ids / slots)) as u32;
        r * slots + slot + 1
    };
    let mut datagram = Vec::new();
    let mut sent_at = vec![Instant::now(); slots as usize];
    let mut expect = vec![0 as ClientId; slots as usize];
    let mut send = |socket: &UdpSocket, slot: u32, id: ClientId, sent_at: &mut [Instant]| {
        // Padded, as a client pads its requests (the server's answer to an address that
        // has not proved it receives is never larger than the request).
        let mut lookup = Message::lookup(id);
        wire::pad_request(&mut lookup);
        wire::encode_into(&lookup, &mut datagram);
        sent_at[slot as usize] = Instant::now();
        let _ = socket.send_to(&datagram, to);
    };
    let mut result = Load::default();
    let cpu0 = thread_cpu(server_tid);
    let me = thread_id();
    let client_cpu0 = thread_cpu(me);
    let started = Instant::now();
    for slot in 0..slots {
        let id = next_id(slot);
        expect[slot as usize] = id;
        send(&sockets[slot as usize % SOCKETS], slot, id, &mut sent_at);
    }
    let mut buf = vec![0u8; 65_536];
    let mut answers: VecDeque<ClientId> = VecDeque::new();
    while started.elapsed() < len {
        poll.poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
        // Round robin, one datagram per socket per pass, until a pass finds every socket
        // empty. (Draining one socket to the end before reading the next may never end, as
        // its answers come back faster than they are handled, and the other sockets' answers
        // would wait; so would a socket found empty once and not read again while the others
        // are busy.)
        let mut busy = true;
        while busy {
            busy = false;
            for socket in &sockets {
                match socket.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        busy = true;
                        let now = Instant::now();
                        let Ok(messages) = wire::decode_all(&buf[..n]) else {
                            continue;
                        };
                        answers.extend(messages.into_iter().filter_map(|m| match m {
                            Message::Found { id, .. } if lookups => Some(id),
                            Message::Lookup { id, .. } if !lookups => Some(id),
                            _ => None,
                        }));
                        while let Some(id) = answers.pop_front() {
                            let slot = (id - 1) % slots;
                            if expect[slot as usize] != id {
                                continue; // the answer to a request given up on
                            }
                            result.latencies.push(now - sent_at[slot as usize]);
                            result.answers += 1;
                            let id = next_id(slot);
                            expect[slot as usize] = id;
                            send(&sockets[slot as usize % SOCKETS], slot, id, &mut sent_at);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("load: {e}"),
                }
            }
        }
        let now = Instant::now();
        for slot in 0..slots {
            if now - sent_at[slot as usize] > GIVE_UP {
                result.lost += 1;
                let id = next_id(slot);
                expect[slot as usize] = id;
                send(&sockets[slot as usize % SOCKETS], slot, id, &mut sent_at);
            }
        }
    }
    result.elapsed = started.elapsed();
    result.server_cpu = thread_cpu(server_tid).saturating_sub(cpu0);
    result.client_cpu = thread_cpu(me).saturating_sub(client_cpu0);
    // Let the last answers arrive before the next load starts.
    thread::sleep(Duration::from_millis(50));
    result
}

/// A bare UDP echo server in the same mio style as the p2pchat server's loop.
struct EchoServer {
    addr: SocketAddr,
    tid: u32,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    handle: thread::JoinHandle<()>,
}

impl EchoServer {
    fn start() -> EchoServer {
        let mut socket = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(&mut socket, Token(0), Interest::READABLE)
            .unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(1)).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                pin_to_cpu(1);
                let _ = tx.send(thread_id());
                let mut events = Events::with_capacity(64);
                let mut buf = vec![0u8; 65_536];
                loop {
                    if let Err(e) = poll.poll(&mut events, None) {
                        if e.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        panic!("poll: {e}");
                    }
                    for event in events.iter() {
                        if event.token() != Token(0) {
                            continue;
                        }
                        loop {
                            match socket.recv_from(&mut buf) {
                                Ok((len, from)) => {
                                    let _ = socket.send_to(&buf[..len], from);
                                }
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                                Err(e) => panic!("echo: {e}"),
                            }
                        }
                    }
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
            })
        };
        let tid = rx.recv().unwrap();
        EchoServer {
            addr,
            tid,
            stop,
            waker,
            handle,
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        self.handle.join().unwrap();
    }
}
