//! Latency of one message: from `send` to the sender's `Delivered`, one message at a time.
//!
//! A rendezvous server and two [`Endpoint`]s (the library's client loop: a `Peer` with its
//! mio socket) on loopback, each endpoint on a thread of its own. They connect; then one
//! sends a message, waits until it is told `Delivered` (the other side has shown it and
//! acknowledged), and sends the next. The time from `send` to `Delivered` is one sample.
//!
//! In the same run, the baseline: a bare UDP ping-pong between two mio sockets on two
//! threads, each with the same kind of loop (poll, drain the socket until `WouldBlock`,
//! answer). One sends a ping and waits for the pong before the next.
//!
//! The measuring side runs on CPU 0, the answering side on CPU 1 (pinned), so that each
//! has a core of its own. The two alternate in rounds (bare, p2pchat, p2pchat, bare, ...) so that a change in the
//! machine's load hits both alike. Prints p50/p99 of both and the ratio of the p50s.
//!
//! ```sh
//! cargo run --release --example bench_latency          # 4 s of each
//! cargo run --release --example bench_latency -- 10    # 10 s of each
//! ```

mod bench_common;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bench_common::{
    arg_or, connected_pair, percentile, pin_to_cpu, target, time_delivery, us, ServerThread,
    Turning,
};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use p2pchat::driver::Endpoint;
use p2pchat::peer::Event;
use p2pchat::registry::RegistryConfig;
use p2pchat::wire::ClientId;

const ROUNDS: u32 = 4;

fn main() {
    // What the sealing of every datagram of a session costs, measured first.
    bench_common::print_crypto_costs(100);
    let secs = arg_or(4.0);
    let slice = Duration::from_secs_f64(secs / f64::from(ROUNDS));
    println!("bench_latency: {secs} s of each, in {ROUNDS} rounds, loopback");

    // The side that measures on CPU 0, the side that answers on CPU 1.
    let pinned = pin_to_cpu(0);
    println!("threads pinned to CPUs: {pinned}");
    let server = ServerThread::start(RegistryConfig::default(), Some(1));
    let (a, b, _, idb) = connected_pair(server.addr);
    let mut chat = Chat::start(a, b, idb);
    let mut pingpong = PingPong::start();

    let (mut bare, mut p2p) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // bare first in even rounds, p2pchat first in odd ones: ABBA ABBA...
        if round % 2 == 0 {
            pingpong.run(slice, &mut bare);
            chat.run(slice, &mut p2p);
        } else {
            chat.run(slice, &mut p2p);
            pingpong.run(slice, &mut bare);
        }
    }
    let retransmissions = chat.sender.peer().stats().retransmissions;
    let lost_pings = pingpong.lost;
    chat.stop();
    pingpong.stop();
    server.stop();

    bare.sort_unstable();
    p2p.sort_unstable();
    let show = |name: &str, v: &[Duration]| {
        println!(
            "{name}: {} round trips, p50 {:.1} us, p90 {:.1} us, p99 {:.1} us, max {:.1} us",
            v.len(),
            us(percentile(v, 0.5)),
            us(percentile(v, 0.9)),
            us(percentile(v, 0.99)),
            us(v.last().copied().unwrap_or_default()),
        );
    };
    show("bare UDP ping-pong", &bare);
    show("p2pchat send -> Delivered", &p2p);
    println!("p2pchat retransmissions: {retransmissions}; bare pings lost: {lost_pings}");
    let ratio = us(percentile(&p2p, 0.5)) / us(percentile(&bare, 0.5));
    println!(
        "ratio of p50s: {ratio:.2}; ratio of p99s: {:.2}",
        us(percentile(&p2p, 0.99)) / us(percentile(&bare, 0.99))
    );
    target(
        "bench_latency p50 ratio",
        &format!("{ratio:.2}"),
        "<= 1.50",
        ratio <= 1.5,
    );
}

/// The sender endpoint here, the receiver on a thread that shows what comes until stopped.
struct Chat {
    sender: Endpoint,
    to: ClientId,
    receiver: Turning<u64>,
}

impl Chat {
    fn start(sender: Endpoint, receiver: Endpoint, to: ClientId) -> Chat {
        let receiver = Turning::start(receiver, Some(1), 0u64, |shown, ev| match ev {
            Event::Message { seq, .. } => {
                *shown += 1;
                assert_eq!(seq, *shown, "shown in order, once");
            }
            other => panic!("receiver: unexpected {other:?}"),
        });
        Chat {
            sender,
            to,
            receiver,
        }
    }

    fn run(&mut self, len: Duration, samples: &mut Vec<Duration>) {
        let text = "x".repeat(100);
        let started = Instant::now();
        while started.elapsed() < len {
            let took = time_delivery(&mut self.sender, self.to, &text);
            samples.push(took.expect("every message is delivered on loopback"));
        }
    }

    fn stop(self) {
        self.receiver.stop();
    }
}

/// A bare UDP ping-pong: the pinging socket here, the answering one on a thread.
struct PingPong {
    socket: UdpSocket,
    poll: Poll,
    events: Events,
    to: std::net::SocketAddr,
    /// Pings never answered (UDP may drop them, even on loopback).
    lost: u64,
    stop: Arc<AtomicBool>,
    ponger: Option<thread::JoinHandle<()>>,
}

impl PingPong {
    fn start() -> PingPong {
        let any = "127.0.0.1:0".parse().unwrap();
        let mut pong = UdpSocket::bind(any).unwrap();
        let to = pong.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ponger = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                pin_to_cpu(1);
                let mut poll = Poll::new().unwrap();
                poll.registry()
                    .register(&mut pong, Token(0), Interest::READABLE)
                    .unwrap();
                let mut events = Events::with_capacity(64);
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::SeqCst) {
                    poll.poll(&mut events, Some(Duration::from_millis(20)))
                        .unwrap();
                    loop {
                        match pong.recv_from(&mut buf) {
                            Ok((len, from)) => {
                                let _ = pong.send_to(&buf[..len], from);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => panic!("ponger: {e}"),
                        }
                    }
                }
            })
        };
        let mut socket = UdpSocket::bind(any).unwrap();
        let poll = Poll::new().unwrap();
        poll.registry()
            .register(&mut socket, Token(0), Interest::READABLE)
            .unwrap();
        PingPong {
            socket,
            poll,
            events: Events::with_capacity(64),
            to,
            lost: 0,
            stop,
            ponger: Some(ponger),
        }
    }

    fn run(&mut self, len: Duration, samples: &mut Vec<Duration>) {
        // As big as a p2pchat datagram carrying one 100-byte chat message.
        let ping = [b'p'; 140];
        let mut buf = vec![0u8; 65_536];
        let started = Instant::now();
        while started.elapsed() < len {
            let t = Instant::now();
            self.socket.send_to(&ping, self.to).unwrap();
            'wait: loop {
                self.poll
                    .poll(&mut self.events, Some(Duration::from_millis(100)))
                    .unwrap();
                if t.elapsed() > Duration::from_secs(1) {
                    self.lost += 1;
                    break 'wait;
                }
                loop {
                    match self.socket.recv_from(&mut buf) {
                        Ok(_) => {
                            samples.push(t.elapsed());
                            break 'wait;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => panic!("pinger: {e}"),
                    }
                }
            }
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.ponger.take() {
            h.join().expect("ponger");
        }
    }
}
