//! Does a flood stop the rendezvous server, or a client, from serving the well-behaved?
//!
//! The server: runs the real server loop (`p2pchat::driver::Server`) on a thread, registers
//! one well-behaved client, and measures the round trip of its lookups (one at a time) in
//! three phases of the same run:
//!
//! 1. no flood;
//! 2. one source sending garbage as fast as it can;
//! 3. one source registering as fast as it can (from many ports of one IP address).
//!
//! It prints p50/p99/max latency and lookups per second for each phase, the flood's rate,
//! how many lookups got no answer within a second, and what the registration rate limit let
//! through.
//!
//! A client: two [`Endpoint`]s (the library's client loop) with a session, each on a
//! thread, measure chat latency (`send` to `Delivered`, one message of 100 bytes at a time)
//! in two more phases: no flood, and one source (127.0.0.2) sending `ConnectRequest`s with
//! distinct fake ids to the receiving client as fast as it can. It prints p50/p99/max, the
//! flood's rate, and what the receiving client held, ignored and showed.
//!
//! ```sh
//! cargo run --release --example flood_latency            # 3 s per phase
//! cargo run --release --example flood_latency -- 10      # 10 s per phase
//! ```

mod bench_common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bench_common::{connected_pair, percentile, time_delivery, us, Turning};
use p2pchat::driver::{Endpoint, Server, ServerOptions};
use p2pchat::peer::Event;
use p2pchat::registry::RegistryConfig;
use p2pchat::wire::{self, ClientId, Message};

struct Phase {
    name: &'static str,
    /// What one sample is the round trip of: a lookup, a chat message.
    unit: &'static str,
    latencies: Vec<Duration>,
    lost: u64,
    elapsed: Duration,
    flood_sent: u64,
}

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let phase_len = Duration::from_secs(secs);

    let opts = ServerOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        registry: RegistryConfig::default(),
        table_rows: 100,
    };
    let server = Server::bind(&opts).expect("bind the server");
    let server_addr = server.local_addr();
    let stopper = server.stopper();
    let server_thread = thread::spawn(move || server.run(&mut std::io::sink()));

    // The well-behaved client: registered, then looking itself up, one lookup at a time.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let id = register(&client, server_addr).expect("the well-behaved client registers");

    println!("flood_latency: server on {server_addr}, {secs} s per phase, lookups one at a time");
    let quiet = measure(&client, server_addr, id, phase_len, "no flood", None);
    let garbage = measure(
        &client,
        server_addr,
        id,
        phase_len,
        "garbage flood",
        Some(Flood::Garbage),
    );
    let registrations = measure(
        &client,
        server_addr,
        id,
        phase_len,
        "registration flood",
        Some(Flood::Register),
    );

    // The client phases, with the same server.
    let (a, b, _, idb) = connected_pair(server_addr);
    let mut chat = Chat::start(a, b, idb);
    let calm = chat.run(phase_len, "client chat, no flood", false);
    let flooded = chat.run(phase_len, "client chat, request flood", true);
    let receiver = chat.stop();

    stopper.stop();
    let stats = server_thread
        .join()
        .expect("server thread")
        .expect("server ran");
    for p in [&quiet, &garbage, &registrations] {
        report(p, &quiet);
    }
    println!(
        "server counters: {} datagrams, {} garbage, {} malformed, {} registrations rate-limited",
        stats.datagrams, stats.garbage, stats.malformed, stats.rate_limited
    );
    for p in [&calm, &flooded] {
        report(p, &calm);
    }
    println!(
        "receiving client: {} datagrams received, {} messages shown in order; {} requests \
         shown, {} ignored ({} of them in {} summary lines so far), {} other lines; requests \
         waiting at the end: {}",
        receiver.datagrams,
        receiver.shown,
        receiver.requests,
        receiver.ignored_total,
        receiver.ignored,
        receiver.summaries,
        receiver.other_lines,
        receiver.pending
    );
}

/// What the receiving client did in the client phases.
#[derive(Default)]
struct Receiver {
    datagrams: u64,
    shown: u64,
    requests: u64,
    /// Counted in `RequestsIgnored` events, and in all.
    ignored: u64,
    ignored_total: u64,
    summaries: u64,
    other_lines: u64,
    pending: usize,
}

/// A session between two endpoints: the sender here, the receiver on a thread that shows
/// what comes until stopped (and the events a flood of requests causes).
struct Chat {
    sender: Endpoint,
    to: ClientId,
    target: SocketAddr,
    receiver: Turning<Receiver>,
}

impl Chat {
    fn start(sender: Endpoint, receiver: Endpoint, to: ClientId) -> Chat {
        let target = receiver.local_addr();
        let receiver = Turning::start(receiver, None, Receiver::default(), |r, ev| match ev {
            Event::Message { seq, .. } => {
                r.shown += 1;
                assert_eq!(seq, r.shown, "shown in order, once");
            }
            Event::Request { .. } => r.requests += 1,
            Event::RequestsIgnored { count } => {
                r.ignored += count;
                r.summaries += 1;
            }
            _ => r.other_lines += 1,
        });
        Chat {
            sender,
            to,
            target,
            receiver,
        }
    }

    /// Measures for `len`, with a flood of requests at the receiver if `flood`.
    fn run(&mut self, len: Duration, name: &'static str, flood: bool) -> Phase {
        let target = self.target;
        let flooding =
            Flooding::start(flood.then_some(move |stop: &AtomicBool, sent: &AtomicU64| {
                flood_requests(target, stop, sent)
            }));
        let text = "x".repeat(100);
        let mut latencies = Vec::new();
        let mut lost = 0;
        let started = Instant::now();
        while started.elapsed() < len {
            match time_delivery(&mut self.sender, self.to, &text) {
                Some(took) => latencies.push(took),
                None => lost += 1,
            }
        }
        Phase {
            name,
            unit: "message",
            latencies,
            lost,
            elapsed: started.elapsed(),
            flood_sent: flooding.finish(),
        }
    }

    fn stop(self) -> Receiver {
        let (mut endpoint, mut r) = self.receiver.stop();
        r.pending = endpoint.peer().pending_requests().len();
        r.ignored_total = endpoint.peer().stats().requests_ignored;
        r.datagrams = endpoint.datagrams().1;
        r
    }
}

/// `ConnectRequest`s with distinct fake ids, from 127.0.0.2, as fast as one socket sends.
fn flood_requests(target: SocketAddr, stop: &AtomicBool, sent: &AtomicU64) {
    let s = UdpSocket::bind("127.0.0.2:0").unwrap();
    let mut id: u32 = 1_000_000;
    while !stop.load(Ordering::Relaxed) {
        let request = Message::ConnectRequest {
            from: id,
            session: u64::from(id) << 16,
            name: None,
            display_name: None,
        };
        if s.send_to(&wire::encode(&request), target).is_ok() {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        id = id.wrapping_add(1);
    }
}

#[derive(Clone, Copy)]
enum Flood {
    Garbage,
    Register,
}

fn register(socket: &UdpSocket, server: SocketAddr) -> Option<u32> {
    let mut buf = [0u8; 2048];
    for _ in 0..5 {
        socket
            .send_to(&wire::encode(&Message::Register { want_id: None }), server)
            .ok()?;
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            if let Ok(Message::Registered { id, .. }) = wire::decode(&buf[..n]) {
                return Some(id);
            }
        }
    }
    None
}

fn measure(
    client: &UdpSocket,
    server: SocketAddr,
    id: u32,
    len: Duration,
    name: &'static str,
    flood: Option<Flood>,
) -> Phase {
    let flooding = Flooding::start(flood.map(|kind| {
        move |stop: &AtomicBool, sent: &AtomicU64| run_flood(kind, server, stop, sent)
    }));
    let lookup = wire::encode(&Message::Lookup { id });
    let mut buf = [0u8; 2048];
    let mut latencies = Vec::new();
    let mut lost = 0;
    let started = Instant::now();
    while started.elapsed() < len {
        let t = Instant::now();
        client.send_to(&lookup, server).unwrap();
        loop {
            match client.recv_from(&mut buf) {
                Ok((n, from)) if from == server => {
                    if matches!(wire::decode(&buf[..n]), Ok(Message::Found { .. })) {
                        latencies.push(t.elapsed());
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    lost += 1;
                    break;
                }
            }
        }
    }
    Phase {
        name,
        unit: "lookup",
        latencies,
        lost,
        elapsed: started.elapsed(),
        flood_sent: flooding.finish(),
    }
}

/// A flood on a thread of its own, if any, until [`Flooding::finish`].
struct Flooding {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Flooding {
    /// Starts `flood` (told when to stop, and counting what it sent), and gives it time
    /// to reach full speed.
    fn start<F>(flood: Option<F>) -> Flooding
    where
        F: FnOnce(&AtomicBool, &AtomicU64) + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let thread = flood.map(|flood| {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            thread::spawn(move || flood(&stop, &sent))
        });
        if thread.is_some() {
            thread::sleep(Duration::from_millis(200));
        }
        Flooding { stop, sent, thread }
    }

    /// Stops the flood; returns how many datagrams it sent.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread {
            t.join().expect("the flood thread");
        }
        self.sent.load(Ordering::SeqCst)
    }
}

fn run_flood(kind: Flood, server: SocketAddr, stop: &AtomicBool, sent: &AtomicU64) {
    match kind {
        Flood::Garbage => {
            // Another source address than the client's: 127.0.0.2.
            let s = UdpSocket::bind("127.0.0.2:0").unwrap();
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut datagram = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                for b in datagram.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                if s.send_to(&datagram, server).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Flood::Register => {
            // Many ports of one address, each a would-be new client.
            let sockets: Vec<UdpSocket> = (0..512)
                .map(|_| UdpSocket::bind("127.0.0.2:0").unwrap())
                .collect();
            let register = wire::encode(&Message::Register { want_id: None });
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                if sockets[i % sockets.len()]
                    .send_to(&register, server)
                    .is_ok()
                {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }
    }
}

fn report(p: &Phase, baseline: &Phase) {
    let mut l = p.latencies.clone();
    l.sort_unstable();
    let rate = l.len() as f64 / p.elapsed.as_secs_f64();
    let flood = if p.flood_sent > 0 {
        format!(
            ", flood {:.0} datagrams/s",
            p.flood_sent as f64 / p.elapsed.as_secs_f64()
        )
    } else {
        String::new()
    };
    let mut b = baseline.latencies.clone();
    b.sort_unstable();
    println!(
        "{}: {} p50 {:.0} us, p99 {:.0} us, max {:.0} us, {:.0} {}s/s, {} unanswered{} (p99 {:.1}x the no-flood p99)",
        p.name,
        p.unit,
        us(percentile(&l, 0.5)),
        us(percentile(&l, 0.99)),
        us(l.last().copied().unwrap_or_default()),
        rate,
        p.unit,
        p.lost,
        flood,
        us(percentile(&l, 0.99)) / us(percentile(&b, 0.99)).max(1e-9),
    );
}
