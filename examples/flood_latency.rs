//! Does a flood stop the rendezvous server, or a client, from serving the well-behaved?
//!
//! The server: runs the real server loop (`p2pchat::driver::Server`) on a thread with the
//! default settings, gives it a table that once held 60,000 clients (registered from 300
//! networks, then all but one in a thousand left: long runs of free ids), registers one
//! well-behaved client, and measures the round trip of its lookups (one at a time) in four
//! phases of the same run:
//!
//! 1. no flood;
//! 2. one source sending garbage as fast as it can;
//! 3. one source registering as fast as it can (from many ports of one IP address);
//! 4. one registered client asking for `List` pages as fast as it can, eight to a datagram.
//!
//! It prints p50/p99/max latency and lookups per second for each phase, the flood's rate,
//! how many lookups got no answer within a second, what the registration rate limit let
//! through and how many `List` pages the flooder got, and ends with the target line of the
//! `List` flood: the well-behaved client's p99 within 5x of the no-flood p99, no lookup
//! lost.
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

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bench_common::{connected_pair, percentile, time_delivery, us, Turning};
use p2pchat::driver::{Endpoint, Server, ServerOptions};
use p2pchat::peer::Event;
use p2pchat::registry::RegistryConfig;
use p2pchat::wire::{self, ClientId, Message, Token};

struct Phase {
    name: &'static str,
    /// What one sample is the round trip of: a lookup, a chat message.
    unit: &'static str,
    latencies: Vec<Duration>,
    lost: u64,
    elapsed: Duration,
    /// What the flood sent, and the answers it received (`List` pages in the `List`
    /// flood).
    flooded: Flooded,
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

    let started = Instant::now();
    let kept = leave_gaps(server_addr, 300, 1000);
    println!(
        "a table that held 60000 clients, {kept} of them left, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
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
    // The client that asks for List pages, on another network, registered just before.
    let lister = UdpSocket::bind("127.0.1.1:0").unwrap();
    lister
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let lister_id = register_with_token(&lister, server_addr).expect("the lister registers");
    let lists = measure(
        &client,
        server_addr,
        id,
        phase_len,
        "List flood",
        Some(Flood::List(lister, lister_id)),
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
    for p in [&quiet, &garbage, &registrations, &lists] {
        report(p, &quiet);
    }
    println!(
        "server counters: {} datagrams, {} garbage, {} malformed, {} registrations rate-limited, {} List pages sent",
        stats.datagrams, stats.garbage, stats.malformed, stats.rate_limited, stats.list_pages
    );
    let ratio = p99(&lists).as_secs_f64() / p99(&quiet).as_secs_f64().max(1e-9);
    let ok = ratio <= 5.0 && lists.lost == 0;
    println!(
        "flood_latency List flood: p99 {ratio:.1}x the no-flood p99 (target <= 5), {} lookups lost (target 0) {}",
        lists.lost,
        if ok { "ok" } else { "MISSED" }
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
        let flooding = Flooding::start(flood.then_some(
            move |stop: &AtomicBool, sent: &AtomicU64, _: &AtomicU64| {
                flood_requests(target, stop, sent)
            },
        ));
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
            flooded: flooding.finish(),
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
            hs: Vec::new(),
            from: id,
            session: u64::from(id) << 16,
        };
        if s.send_to(&wire::encode(&request), target).is_ok() {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        id = id.wrapping_add(1);
    }
}

enum Flood {
    Garbage,
    Register,
    /// From this registered client (its socket, id and token).
    List(UdpSocket, (ClientId, Token)),
}

fn register(socket: &UdpSocket, server: SocketAddr) -> Option<u32> {
    register_with_token(socket, server).map(|(id, _)| id)
}

fn register_with_token(socket: &UdpSocket, server: SocketAddr) -> Option<(ClientId, Token)> {
    let mut buf = [0u8; 2048];
    for _ in 0..5 {
        socket
            .send_to(
                &wire::encode_request(&Message::register(None, [0; 32])),
                server,
            )
            .ok()?;
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            if let Ok(Message::Registered { id, token, .. }) = wire::decode(&buf[..n]) {
                return Some((id, token));
            }
        }
    }
    None
}

/// Registers `blocks` x 200 clients, 200 from each of `blocks` networks (127.3.0.0/24,
/// 127.3.1.0/24, ...: within every source's registration burst), then makes all but one in
/// `keep_every` leave: the ids they had are free, in long runs. Returns how many left.
fn leave_gaps(server: SocketAddr, blocks: u32, keep_every: u32) -> u32 {
    const PER_BLOCK: usize = 200;
    let mut buf = [0u8; 2048];
    let mut left = 0;
    let mut n = 0u32;
    for block in 0..blocks {
        let ip = Ipv4Addr::new(127, 3 + (block / 256) as u8, (block % 256) as u8, 1);
        let sockets: Vec<UdpSocket> = (0..PER_BLOCK)
            .map(|_| {
                let s = UdpSocket::bind((ip, 0)).expect("bind a loopback address");
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                s
            })
            .collect();
        let mut registered: Vec<Option<(ClientId, Token)>> = vec![None; PER_BLOCK];
        for _attempt in 0..5 {
            for (s, r) in sockets.iter().zip(&registered) {
                if r.is_none() {
                    let _ = s.send_to(
                        &wire::encode_request(&Message::register(None, [0; 32])),
                        server,
                    );
                }
            }
            for (s, r) in sockets.iter().zip(registered.iter_mut()) {
                if r.is_none() {
                    if let Ok((len, _)) = s.recv_from(&mut buf) {
                        if let Ok(Message::Registered { id, token, .. }) = wire::decode(&buf[..len])
                        {
                            *r = Some((id, token));
                        }
                    }
                }
            }
            if registered.iter().all(Option::is_some) {
                break;
            }
        }
        let mut leaving = Vec::new();
        for (s, r) in sockets.iter().zip(&registered) {
            n += 1;
            if let Some((id, token)) = *r {
                if n % keep_every != 0 {
                    let _ = s.send_to(&wire::encode_request(&Message::leave(id, token)), server);
                    leaving.push(s);
                }
            }
        }
        // The acknowledgements (so that the leaves are done before the next block).
        for s in leaving {
            if s.recv_from(&mut buf).is_ok() {
                left += 1;
            }
        }
    }
    left
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
        move |stop: &AtomicBool, sent: &AtomicU64, answers: &AtomicU64| {
            run_flood(kind, server, stop, sent, answers)
        }
    }));
    let lookup = wire::encode_request(&Message::lookup(id));
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
        flooded: flooding.finish(),
    }
}

/// A flood on a thread of its own, if any, until [`Flooding::finish`].
struct Flooding {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    /// Answers the flood got back (counted by the floods that read them).
    answers: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

/// What a flood did: the part of a [`Phase`] it fills in.
struct Flooded {
    flood_sent: u64,
    flood_answers: u64,
}

impl Flooding {
    /// Starts `flood` (told when to stop, counting what it sent and what came back), and
    /// gives it time to reach full speed.
    fn start<F>(flood: Option<F>) -> Flooding
    where
        F: FnOnce(&AtomicBool, &AtomicU64, &AtomicU64) + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let answers = Arc::new(AtomicU64::new(0));
        let thread = flood.map(|flood| {
            let (stop, sent, answers) =
                (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&answers));
            thread::spawn(move || flood(&stop, &sent, &answers))
        });
        if thread.is_some() {
            thread::sleep(Duration::from_millis(200));
        }
        Flooding {
            stop,
            sent,
            answers,
            thread,
        }
    }

    /// Stops the flood; returns what it sent and got back.
    fn finish(self) -> Flooded {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread {
            t.join().expect("the flood thread");
        }
        Flooded {
            flood_sent: self.sent.load(Ordering::SeqCst),
            flood_answers: self.answers.load(Ordering::SeqCst),
        }
    }
}

fn run_flood(
    kind: Flood,
    server: SocketAddr,
    stop: &AtomicBool,
    sent: &AtomicU64,
    answers: &AtomicU64,
) {
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
            let register = wire::encode_request(&Message::register(None, [0; 32]));
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
        Flood::List(socket, (id, token)) => {
            // Eight Lists in a datagram (as many as the server handles of one), sent as fast
            // as the socket takes them; the pages that come back are counted.
            let list = wire::encode_request(&Message::List {
                id,
                token,
                after: None,
                nonce: 0,
                pad: Default::default(),
            });
            let mut datagram = list.clone();
            for _ in 1..8 {
                datagram.extend_from_slice(&list[2..]);
            }
            socket.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if socket.send_to(&datagram, server).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                while let Ok((n, _)) = socket.recv_from(&mut buf) {
                    if let Ok(messages) = wire::decode_all(&buf[..n]) {
                        let pages = messages
                            .iter()
                            .filter(|m| matches!(m, Message::Listing { .. }))
                            .count();
                        answers.fetch_add(pages as u64, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

fn p99(p: &Phase) -> Duration {
    let mut l = p.latencies.clone();
    l.sort_unstable();
    percentile(&l, 0.99)
}

fn report(p: &Phase, baseline: &Phase) {
    let mut l = p.latencies.clone();
    l.sort_unstable();
    let rate = l.len() as f64 / p.elapsed.as_secs_f64();
    let flood = if p.flooded.flood_sent > 0 {
        let answered = if p.flooded.flood_answers > 0 {
            format!(" ({} List pages answered)", p.flooded.flood_answers)
        } else {
            String::new()
        };
        format!(
            ", flood {:.0} datagrams/s{answered}",
            p.flooded.flood_sent as f64 / p.elapsed.as_secs_f64()
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
