//! Loss recovery on sparse traffic: how long a message takes to be shown when 10% of
//! datagrams are lost, and whether a clean path sees any needless resend.
//!
//! Two clients on loopback, each a small loop around the sans-IO `Peer` (a blocking
//! `std::net::UdpSocket`, like `examples/echo_bot.rs`), on threads of their own, and a
//! rendezvous server. Once they are connected, one sends a message every 20 ms. Each client
//! drops every datagram from its peer with probability 0.1 before `handle_datagram`, from a
//! seeded RNG (the seed is printed; give it as the second argument to replay the same drops),
//! so chat messages and acknowledgements are both lost. A sample is the time from `send` to
//! the receiver's `Message` event (shown).
//!
//! Then the same traffic on a clean path (nothing dropped): every resend there is spurious.
//!
//! There is no raw-UDP baseline here: raw UDP never recovers a lost datagram at all.
//!
//! ```sh
//! cargo run --release --example bench_loss            # 20 s of each
//! cargo run --release --example bench_loss -- 5       # 5 s of each
//! cargo run --release --example bench_loss -- 20 42   # seed 42
//! ```

mod bench_common;

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use bench_common::{arg_or, ms, peer_config, percentile, target, ServerThread};
use p2pchat::peer::{Event, Peer, PeerStats};
use p2pchat::registry::RegistryConfig;
use p2pchat::wire::{self, ClientId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PERIOD: Duration = Duration::from_millis(20);
const LOSS: f64 = 0.1;

fn main() {
    let secs = arg_or(20.0);
    let seed: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let count = ((secs * 1000.0 / PERIOD.as_millis() as f64) as u64).max(10);
    println!(
        "bench_loss: {count} messages, one every {} ms, loopback; seed {seed}",
        PERIOD.as_millis()
    );
    let server = ServerThread::start(RegistryConfig::default(), None);

    let lossy = run(server.addr, count, LOSS, seed);
    report(&format!("{:.0}% loss", LOSS * 100.0), &lossy);
    let clean = run(server.addr, count, 0.0, seed);
    report("clean path", &clean);
    server.stop();

    let p99 = percentile(&lossy.latencies, 0.99);
    target(
        "bench_loss p99 under 10% loss",
        &format!("{:.1} ms", ms(p99)),
        "<= 250 ms",
        p99 <= Duration::from_millis(250),
    );
    let spurious = clean.sender.retransmissions;
    target(
        "bench_loss spurious retransmissions on a clean path",
        &spurious.to_string(),
        "0",
        spurious == 0,
    );
}

struct Phase {
    /// Send to shown, sorted.
    latencies: Vec<Duration>,
    sender: PeerStats,
    receiver: PeerStats,
    /// Datagrams the benchmark dropped, at the sender and at the receiver.
    dropped: (u64, u64),
    undelivered: u64,
}

fn report(name: &str, p: &Phase) {
    let l = &p.latencies;
    println!(
        "{name}: {} shown; send to shown p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.len(),
        ms(percentile(l, 0.5)),
        ms(percentile(l, 0.9)),
        ms(percentile(l, 0.99)),
        ms(l.last().copied().unwrap_or_default()),
    );
    println!(
        "  dropped by the benchmark: {} at the sender, {} at the receiver; retransmissions {} ({} early), duplicates dropped {}, undelivered {}",
        p.dropped.0,
        p.dropped.1,
        p.sender.retransmissions,
        p.sender.early_retransmissions,
        p.receiver.duplicates,
        p.undelivered
    );
}

/// One client: a `Peer`, its socket, and the benchmark's random drops.
struct Client {
    socket: UdpSocket,
    peer: Peer,
    server: SocketAddr,
    rng: StdRng,
    loss: f64,
    /// Drop only once the session is open (a lost `Accept` would cost a 10 s retry).
    dropping: bool,
    dropped: u64,
    buf: Vec<u8>,
}

impl Client {
    fn new(server: SocketAddr, loss: f64, seed: u64) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        Client {
            socket,
            peer: Peer::new(peer_config(server), Instant::now()),
            server,
            rng: StdRng::seed_from_u64(seed),
            loss,
            dropping: false,
            dropped: 0,
            buf: vec![0u8; 65_536],
        }
    }

    /// Sends what the peer wants sent, waits for one datagram (at most until `until` or the
    /// peer's next deadline), handles it (or drops it), and runs the peer's timers.
    fn turn(&mut self, until: Option<Instant>) {
        while let Some(t) = self.peer.poll_transmit() {
            let _ = self.socket.send_to(&wire::encode(&t.message), t.to);
        }
        let now = Instant::now();
        let wait = self
            .peer
            .poll_timeout()
            .into_iter()
            .chain(until)
            .min()
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(100))
            .clamp(Duration::from_micros(100), Duration::from_millis(100));
        self.socket.set_read_timeout(Some(wait)).unwrap();
        match self.socket.recv_from(&mut self.buf) {
            Ok((len, from)) => {
                let drop = self.dropping && from != self.server && self.rng.random_bool(self.loss);
                if drop {
                    self.dropped += 1;
                } else {
                    self.peer
                        .handle_datagram(Instant::now(), from, &self.buf[..len]);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(e) => panic!("receive: {e}"),
        }
        let now = Instant::now();
        if self.peer.poll_timeout().is_some_and(|t| t <= now) {
            self.peer.handle_timeout(now);
        }
        while let Some(t) = self.peer.poll_transmit() {
            let _ = self.socket.send_to(&wire::encode(&t.message), t.to);
        }
    }

    /// Turns until registered; returns the id.
    fn register(&mut self) -> ClientId {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no registration");
            self.turn(None);
            match self.peer.poll_event() {
                Some(Event::Registered { id, .. }) => return id,
                Some(other) => panic!("unexpected while registering: {other:?}"),
                None => {}
            }
        }
    }
}

fn run(server: SocketAddr, count: u64, loss: f64, seed: u64) -> Phase {
    let mut sender = Client::new(server, loss, seed);
    let mut receiver = Client::new(server, loss, seed.wrapping_add(1));
    let to = receiver.register();
    let done = Arc::new(AtomicBool::new(false));
    let (shown_tx, shown_rx) = mpsc::channel::<(u64, Instant)>();

    let receiving = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut expected = 1;
            while !done.load(Ordering::SeqCst) {
                receiver.turn(None);
                while let Some(ev) = receiver.peer.poll_event() {
                    match ev {
                        Event::Request { from } => {
                            receiver.peer.accept(Instant::now(), Some(from)).unwrap();
                        }
                        Event::Connected { .. } => receiver.dropping = true,
                        Event::Message { seq, .. } => {
                            assert_eq!(seq, expected, "shown once, in order");
                            expected += 1;
                            let _ = shown_tx.send((seq, Instant::now()));
                        }
                        other => panic!("receiver: unexpected {other:?}"),
                    }
                }
            }
            (receiver.peer.stats(), receiver.dropped)
        })
    };

    sender.register();
    sender.peer.connect(Instant::now(), to).unwrap();
    let mut sent_at: Vec<Instant> = Vec::with_capacity(count as usize);
    let mut next_send: Option<Instant> = None;
    let (mut delivered, mut undelivered) = (0u64, 0u64);
    let text = "x".repeat(100);
    let deadline = Instant::now() + PERIOD * count as u32 + Duration::from_secs(30);
    while delivered + undelivered < count {
        assert!(Instant::now() < deadline, "the messages did not settle");
        sender.turn(next_send.filter(|_| (sent_at.len() as u64) < count));
        while let Some(ev) = sender.peer.poll_event() {
            match ev {
                Event::Connected { .. } => {
                    sender.dropping = true;
                    next_send = Some(Instant::now());
                }
                Event::Sent { .. } => {}
                Event::Delivered { .. } => delivered += 1,
                Event::Undelivered { .. } => undelivered += 1,
                other => panic!("sender: unexpected {other:?}"),
            }
        }
        let now = Instant::now();
        if let Some(t) = next_send {
            if now >= t && (sent_at.len() as u64) < count {
                sender.peer.send(now, Some(to), &text).unwrap();
                sent_at.push(now);
                // Keep to the period even if this turn came late.
                next_send = Some((t + PERIOD).max(now));
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    let (receiver_stats, receiver_dropped) = receiving.join().expect("receiver");
    let mut latencies: Vec<Duration> = shown_rx
        .try_iter()
        .map(|(seq, at)| at.saturating_duration_since(sent_at[seq as usize - 1]))
        .collect();
    latencies.sort_unstable();
    Phase {
        latencies,
        sender: sender.peer.stats(),
        receiver: receiver_stats,
        dropped: (sender.dropped, receiver_dropped),
        undelivered,
    }
}
