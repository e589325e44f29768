//! The user-space link emulator (`tests/common/emulator.rs`) with the real binaries, in the
//! three-namespace lab of `tests/common/lab.rs`: a home that reaches the world only through
//! the emulator and a NAT.
//!
//! - The real server and a client in the world, a client at home behind a link of 20 ms each
//!   way (40 ms round trip) and 20 Mbit/s: they chat both ways, and a message's round trip
//!   (`send` typed to `delivered` printed) is at least 40 ms and not much more.
//! - A bounded UDP blast from a plain socket, each way, at about twice the link's rate:
//!   what arrives comes at the configured rate (within 3%, as the median over runs of 50
//!   datagrams; and not above it over the whole blast), and the queue's overflow is
//!   counted; then 10% random loss drops about 10%.
//!
//! Needs root, iproute2, nftables and /dev/net/tun; without them it fails with one line
//! saying why, or says it skipped with `P2PCHAT_SKIP_NETNS=1` (see `tests/common/netns.rs`).
//! The emulator's seed is printed; `LINK_SEED=n` chooses it.

mod common;

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::emulator::{LinkConfig, WayStats};
use common::lab::{self, Lab};
use common::netns::{self, Netns};
use common::{JsonClient, Server};
use p2pchat::wire::ClientId;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// 20 Mbit/s, in bytes per second.
const RATE: u64 = 2_500_000;
/// IPv4 and UDP headers: the blast's datagrams are this much bigger on the link.
const HEADERS: usize = 28;
/// The blast's datagrams' payload.
const PAYLOAD: usize = 1_200;

/// The lab, or `None` when `P2PCHAT_SKIP_NETNS=1` says to skip; prints the emulator's seed.
fn lab(tag: &str, up: LinkConfig, down: LinkConfig) -> Option<Lab> {
    if netns::skipped("link_emulator") {
        return None;
    }
    let seed = seed();
    println!("link_emulator ({tag}): emulator seed {seed} (LINK_SEED={seed} replays it)");
    Some(netns::require(
        "link_emulator",
        Lab::start(tag, up, down, seed),
    ))
}

fn seed() -> u64 {
    match std::env::var("LINK_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("LINK_SEED must be a number, not {s:?}")),
        Err(_) => 1,
    }
}

// ---------------------------------------------------------------- chat through the link

/// A `--json` client in `ns`, bound to `bind`, asking for `id`, with a short retry interval.
fn client(ns: &Netns, name: &str, bind: SocketAddrV4, id: ClientId, server: &str) -> JsonClient {
    let (bind, want) = (bind.to_string(), id.to_string());
    let args = [
        "--server",
        server,
        "--bind",
        &bind,
        "--id",
        &want,
        "--retry-interval",
        "0.2",
        "--no-state",
    ];
    let mut c = JsonClient::spawn_via(name, &ns.prefix(), &args);
    c.expect(json!({"event": "registered", "id": id, "again": false}));
    c
}

/// The `seq` of the next `sent` event of `c`.
fn next_sent(c: &mut JsonClient) -> u64 {
    let v = c.wait_event("sent", |v| v["event"] == "sent");
    v["seq"].as_u64().expect("a seq")
}

fn delivered(seq: u64) -> impl Fn(&Value) -> bool {
    move |v| v["event"] == "delivered" && v["seq"] == seq
}

#[test]
fn chat_through_the_emulator_takes_the_configured_round_trip() {
    let one_way = ms(20);
    let link = LinkConfig {
        delay: one_way,
        rate: Some(RATE),
        queue: Some(64 * 1024),
        loss: 0.0,
    };
    let Some(lab) = lab("chat", link, link) else {
        return;
    };
    let rtt = one_way * 2;
    let server_addr = SocketAddrV4::new(lab::WORLD, 7070).to_string();
    let server = Server::start_via(&lab.world.prefix(), &server_addr, &[]);
    let mut b = client(
        &lab.world,
        "B",
        SocketAddrV4::new(lab::WORLD, 40002),
        2,
        &server_addr,
    );
    let mut a = client(
        &lab.home,
        "A",
        SocketAddrV4::new(lab::HOME, 40001),
        1,
        &server_addr,
    );
    // The server sees the home client at the router's address: through the NAT.
    let seen = server.expect_join(1);
    assert_eq!(seen, SocketAddr::from((lab::ROUTER_WAN, 40001)));

    // Behind a NAT, the home client asks.
    a.type_line("connect 2");
    b.expect(json!({"event": "request", "from": 1}));
    b.type_line("accept 1");
    b.expect_connected(1);
    a.expect_connected(2);

    // Both ways.
    a.type_line("send hello from home");
    let seq = next_sent(&mut a);
    b.expect(json!({"event": "message", "from": 1, "seq": seq, "text": "hello from home"}));
    a.wait_event("delivered", delivered(seq));
    b.type_line("send hello from the world");
    let seq = next_sent(&mut b);
    a.expect(json!({"event": "message", "from": 2, "seq": seq, "text": "hello from the world"}));
    b.wait_event("delivered", delivered(seq));

    // A ping: one message at a time, from `send` typed to `delivered` printed.
    let mut rtts: Vec<Duration> = (0..10)
        .map(|i| {
            let typed = Instant::now();
            a.type_line(&format!("send ping {i}"));
            let seq = next_sent(&mut a);
            a.wait_event("delivered", delivered(seq));
            typed.elapsed()
        })
        .collect();
    rtts.sort_unstable();
    let (min, median, max) = (rtts[0], rtts[rtts.len() / 2], rtts[rtts.len() - 1]);
    let stats = lab.stats();
    println!(
        "round trip, configured {rtt:?}: min {min:.2?}, median {median:.2?}, max {max:.2?}; \
         emulator lateness: up mean {:.2?} max {:.2?}, down mean {:.2?} max {:.2?}",
        stats.up.late_mean(),
        stats.up.late_max,
        stats.down.late_mean(),
        stats.down.late_max
    );
    println!("up: {:?}\ndown: {:?}", stats.up, stats.down);
    assert!(min >= rtt, "a round trip of {min:?}, shorter than {rtt:?}");
    assert!(
        median <= rtt + ms(10),
        "median round trip {median:?}, configured {rtt:?}"
    );
    for (way, s) in [("up", &stats.up), ("down", &stats.down)] {
        assert!(s.forwarded > 0, "{way}: nothing forwarded");
        assert_eq!(s.link.dropped_queue + s.link.dropped_loss, 0, "{way}");
        assert_eq!((s.write_errors, s.overflow), (0, 0), "{way}");
    }
    drop(server);
}

// ---------------------------------------------------------------- a UDP blast

/// What a blast did.
struct Blast {
    sent: u64,
    received: u64,
    /// Bytes per second on the link (payload and headers) over the whole blast: the
    /// least-squares slope of the bytes received against the time they arrived.
    rate: f64,
    /// The median of the rates over each run of [`WINDOW`] consecutive datagrams: the rate
    /// while the link is busy, which a pause of some milliseconds (of the paced sender, the
    /// emulator or the receiving thread, on a shared machine) does not move.
    median_rate: f64,
}

/// Sends `count` datagrams of `payload` bytes from `tx` to `to`, at about `offered` bytes per
/// second (on the link), while `rx` counts what arrives; waits until 500 ms pass without a
/// datagram (at most 10 s).
fn blast(
    tx: &UdpSocket,
    to: SocketAddr,
    rx: UdpSocket,
    payload: usize,
    count: u64,
    offered: f64,
) -> Blast {
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            rx.set_read_timeout(Some(ms(500))).expect("read timeout");
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut buf = vec![0u8; 65_536];
            let mut arrivals = Vec::new();
            while Instant::now() < deadline {
                match rx.recv(&mut buf) {
                    Ok(n) => {
                        assert_eq!(n, payload, "a datagram of another size");
                        arrivals.push(Instant::now());
                    }
                    Err(_) if done.load(Ordering::SeqCst) => break,
                    Err(_) => {}
                }
            }
            arrivals
        })
    };
    // Bursts of `per_tick` every millisecond.
    let per_tick = ((offered / 1000.0) / (payload + HEADERS) as f64).ceil() as u64;
    let data = vec![0x5a; payload];
    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        for _ in 0..per_tick.min(count - sent) {
            tx.send_to(&data, to).expect("send");
            sent += 1;
        }
        let next = started + ms(sent / per_tick);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    done.store(true, Ordering::SeqCst);
    let arrivals = receiver.join().expect("the receiver");
    let size = (payload + HEADERS) as f64;
    Blast {
        sent,
        received: arrivals.len() as u64,
        rate: slope(&arrivals) * size,
        median_rate: median_window_rate(&arrivals) * size,
    }
}

/// Datagrams in a window of [`median_window_rate`].
const WINDOW: usize = 50;

/// Datagrams per second: the median, over every run of `WINDOW + 1` consecutive arrivals,
/// of `WINDOW` divided by the time from the first of the run to the last.
fn median_window_rate(arrivals: &[Instant]) -> f64 {
    let mut rates: Vec<f64> = arrivals
        .windows(WINDOW + 1)
        .map(|w| WINDOW as f64 / (w[WINDOW] - w[0]).as_secs_f64().max(1e-9))
        .collect();
    if rates.is_empty() {
        return 0.0;
    }
    rates.sort_unstable_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Datagrams per second: the least-squares slope of the count against the arrival times.
fn slope(arrivals: &[Instant]) -> f64 {
    let Some(&t0) = arrivals.first() else {
        return 0.0;
    };
    let n = arrivals.len() as f64;
    let xs: Vec<f64> = arrivals.iter().map(|t| (*t - t0).as_secs_f64()).collect();
    let mean_x = xs.iter().sum::<f64>() / n;
    let mean_y = (n - 1.0) / 2.0;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, x) in xs.iter().enumerate() {
        sxy += (x - mean_x) * (i as f64 - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
    }
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

/// A [`blast`] of 0.6 s at twice `link`'s rate.
fn overload(tx: &UdpSocket, to: SocketAddr, rx: &UdpSocket, link: &LinkConfig) -> Blast {
    let offered = 2.0 * link.rate.expect("a rate") as f64;
    let count = (offered * 0.6 / (PAYLOAD + HEADERS) as f64) as u64;
    let rx = rx.try_clone().expect("clone the receiving socket");
    blast(tx, to, rx, PAYLOAD, count, offered)
}

fn bind_in(ns: &Netns, addr: SocketAddrV4) -> UdpSocket {
    ns.bind_udp(addr).unwrap_or_else(|e| panic!("{e}"))
}

/// Checks one direction's blast against its link: the rate, the queue's overflow, and that
/// every packet the emulator wrote arrived.
fn check_capped(way: &str, b: &Blast, s: &WayStats, config: &LinkConfig) {
    let rate = config.rate.expect("a rate") as f64;
    println!(
        "{way}: {} datagrams sent, {} read by the emulator, {} dropped by its queue (peak {} bytes), {} received at {:.0} B/s ({:.3} of the configured {rate} B/s; {:.3} as the median over {WINDOW} datagrams); written late by {:.1?} on average, {:.1?} at most",
        b.sent,
        s.link.sent,
        s.link.dropped_queue,
        s.link.peak_queue_bytes,
        b.received,
        b.rate,
        b.rate / rate,
        b.median_rate / rate,
        s.late_mean(),
        s.late_max
    );
    assert!(
        (b.median_rate / rate - 1.0).abs() < 0.03,
        "{way}: {:.0} B/s while busy, configured {rate}",
        b.median_rate
    );
    // And over the whole blast never above the cap (a pause can only make it slower).
    assert!(
        b.rate / rate < 1.03,
        "{way}: {:.0} B/s, configured {rate}",
        b.rate
    );
    assert!(
        s.link.dropped_queue > 0,
        "{way}: the queue never overflowed"
    );
    assert_eq!(s.link.sent, s.link.passed + s.link.dropped_queue, "{way}");
    assert_eq!(b.received, s.forwarded, "{way}: written but not received");
    assert_eq!(s.forwarded, s.link.passed, "{way}");
    assert!(
        s.link.peak_queue_bytes <= config.queue.expect("a queue"),
        "{way}"
    );
    assert!(b.sent >= s.link.sent, "{way}");
}

#[test]
fn a_udp_blast_through_the_emulator_is_capped_at_the_rate_each_way() {
    // Queues of about 100 ms of their link: a paced sender that is not scheduled for a few
    // milliseconds (a shared machine) does not let the link go idle, so that what arrives
    // comes at the link's rate throughout; 0.6 s at twice the rate still overflows them.
    let up = LinkConfig {
        delay: ms(20),
        rate: Some(RATE),
        queue: Some(256 * 1024),
        loss: 0.0,
    };
    let down = LinkConfig {
        delay: ms(10),
        rate: Some(2 * RATE),
        queue: Some(384 * 1024),
        loss: 0.0,
    };
    let Some(mut lab) = lab("blast", up, down) else {
        return;
    };
    let home = bind_in(&lab.home, SocketAddrV4::new(lab::HOME, 9001));
    let world = bind_in(&lab.world, SocketAddrV4::new(lab::WORLD, 9002));
    let world_addr = SocketAddr::from((lab::WORLD, 9002));

    // Home to world.
    let b = overload(&home, world_addr, &world, &up);
    check_capped("up", &b, &lab.stats().up, &up);

    // World to home, with fresh counters: the home speaks first (a NAT lets in only
    // answers), then the world answers with its blast, to where the home's datagram came
    // from.
    lab.start_emulator(up, down, seed()).unwrap();
    home.send_to(b"hello", world_addr).unwrap();
    let mut buf = [0u8; 16];
    world
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (_, home_seen) = world.recv_from(&mut buf).expect("the home's hello");
    assert_eq!(home_seen, SocketAddr::from((lab::ROUTER_WAN, 9001)));
    let b = overload(&world, home_seen, &home, &down);
    let stats = lab.stats();
    check_capped("down", &b, &stats.down, &down);
    assert_eq!(stats.up.link.sent, 1, "up: only the hello");

    // Random loss, no rate: about 10% of 4,000 datagrams (the standard deviation of the
    // fraction is 0.0047; 0.025 is more than 5 of them).
    let lossy = LinkConfig {
        loss: 0.1,
        ..LinkConfig::default()
    };
    lab.start_emulator(lossy, LinkConfig::default(), seed())
        .unwrap();
    let b = blast(
        &home,
        world_addr,
        world.try_clone().unwrap(),
        PAYLOAD,
        4_000,
        4.0 * RATE as f64,
    );
    let s = lab.stop_emulator().expect("the emulator").up;
    let fraction = s.link.dropped_loss as f64 / s.link.sent as f64;
    println!(
        "loss 0.1: {} of {} lost at random ({fraction:.4}), {} received",
        s.link.dropped_loss, s.link.sent, b.received
    );
    assert!((fraction - 0.1).abs() < 0.025, "lost {fraction}");
    assert_eq!(b.received, s.link.passed);
    // Packets the home's TUN queue dropped (an emulator descheduled for long) never reached
    // the link; enough must have for the bound above to mean something.
    assert!(s.link.sent >= 3_000 && s.link.sent <= b.sent, "{s:?}");
}
