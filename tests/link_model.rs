//! The link model of the simulated network (`tests/sim/link.rs`, [`Sim::set_link`]): rate,
//! drop-tail queue, one-way delay and random loss, each direction on its own.
//!
//! Most tests send raw datagrams ([`Sim::inject`]) between sinks ([`Sim::add_sink`]), so
//! that every size and time is known; one drives a real `Registry` and two `Peer`s through
//! links. Everything runs in virtual time. The loss test is seeded and prints its seeds;
//! `SIM_SEED=n` replays one.

mod sim;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pchat::peer::Event;
use p2pchat::wire::{self, Message};
use sim::{Direction, Fate, LinkConfig, NetConfig, Sim, OVERHEAD};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A datagram whose encoding has the same length for every `i` below 1,000,000 (the number
/// is stored in the same number of bytes), `payload` bytes of data.
fn datagram(i: u64, payload: usize) -> Message {
    Message::Chunk {
        from: 7,
        session: 0x5e55_1011,
        n: 1,
        seq: 1_000_000 + i,
        data: vec![0xab; payload],
    }
}

/// The size a link counts for [`datagram`]`(_, payload)`.
fn link_size(payload: usize) -> usize {
    let len = wire::encode(&datagram(0, payload)).len();
    assert_eq!(len, wire::encode(&datagram(999_999, payload)).len());
    len + OVERHEAD
}

/// The number `i` of a datagram made by [`datagram`].
fn number(bytes: &[u8]) -> u64 {
    match wire::decode(bytes) {
        Ok(Message::Chunk { seq, .. }) => seq - 1_000_000,
        other => panic!("not a test datagram: {other:?}"),
    }
}

/// A simulation with no network delay or loss of its own, and sinks at `a` and `b`.
fn two_sinks(seed: u64, a: SocketAddr, b: SocketAddr) -> Sim {
    let mut sim = Sim::new(seed, NetConfig::instant());
    sim.add_sink(a);
    sim.add_sink(b);
    sim
}

const A: &str = "10.9.0.1:5000";
const B: &str = "10.9.0.2:5000";

#[test]
fn a_long_stream_through_a_rate_capped_link_arrives_at_the_rate() {
    let (a, b) = (addr(A), addr(B));
    let mut sim = two_sinks(1, a, b);
    let rate = 125_000; // 1 Mbit/s
    sim.set_link(
        a,
        Direction::Up,
        LinkConfig {
            delay: ms(10),
            rate: Some(rate),
            ..LinkConfig::default()
        },
    );
    // 1.5 times the rate: a datagram of about 1,000 bytes every 5.33 ms for 10 s.
    let size = link_size(960);
    let every = Duration::from_secs_f64(size as f64 / (1.5 * rate as f64));
    let count = 1_875;
    for i in 0..count {
        sim.inject(a, b, datagram(i, 960));
        sim.run_for(every);
    }
    sim.run_for(Duration::from_secs(30));
    let got = sim.arrivals(b);
    assert_eq!(got.len(), count as usize, "no queue limit: nothing is lost");
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, d)| number(&d.bytes) == i as u64),
        "in order"
    );
    // The rate between the first and the last arrival: the bytes after the first.
    let span = got[got.len() - 1].at - got[0].at;
    let measured = ((got.len() - 1) * size) as f64 / span.as_secs_f64();
    println!(
        "{count} datagrams of {size} bytes offered at 1.5 x {rate} B/s: arrived at {measured:.1} B/s"
    );
    assert!(
        (measured / rate as f64 - 1.0).abs() < 0.01,
        "measured {measured:.1} B/s, configured {rate}"
    );
    let stats = sim.link_stats(a, Direction::Up);
    assert_eq!((stats.sent, stats.passed), (count, count));
    assert_eq!(stats.sent_bytes, count * size as u64);
    // The queue grew by a third of what was offered: about a third of 1.9 MB at the end.
    let third = (count as usize * size) / 3;
    assert!(
        stats.peak_queue_bytes > third * 9 / 10 && stats.peak_queue_bytes <= third + size,
        "peak queue {} bytes, a third of the stream is {third}",
        stats.peak_queue_bytes
    );
}

#[test]
fn a_burst_bigger_than_the_queue_loses_exactly_what_does_not_fit() {
    let (a, b) = (addr(A), addr(B));
    let mut sim = two_sinks(2, a, b);
    let queue = 10_000;
    let config = LinkConfig {
        delay: ms(5),
        rate: Some(250_000),
        queue: Some(queue),
        loss: 0.0,
    };
    sim.set_link(a, Direction::Up, config);
    let size = link_size(1_100);
    // One goes on the wire at once, the queue holds what fits whole, the rest is dropped.
    let fits = 1 + queue / size;
    let burst = 40;
    for round in 0..2u64 {
        let t0 = sim.now;
        for i in 0..burst {
            sim.inject(a, b, datagram(round * 100 + i, 1_100));
        }
        assert_eq!(sim.link_queue(a, Direction::Up), (fits - 1) * size);
        sim.run_for(Duration::from_secs(1));
        let got: Vec<u64> = sim
            .arrivals(b)
            .iter()
            .filter(|d| d.at >= t0)
            .map(|d| number(&d.bytes))
            .collect();
        let expected: Vec<u64> = (0..fits as u64).map(|i| round * 100 + i).collect();
        assert_eq!(
            got, expected,
            "round {round}: the first {fits} arrive, in order"
        );
        let dropped = sim
            .log
            .iter()
            .filter(|r| r.at >= t0 && r.fate == Fate::LinkQueue)
            .count();
        assert_eq!(dropped, burst as usize - fits, "round {round}");
        // The queue drained between the rounds: the second burst fares the same.
        assert_eq!(sim.link_queue(a, Direction::Up), 0);
    }
    let stats = sim.link_stats(a, Direction::Up);
    println!("{burst} datagrams of {size} bytes twice into a queue of {queue} bytes: {stats:?}");
    assert_eq!(stats.sent, 2 * burst);
    assert_eq!(stats.passed, 2 * fits as u64);
    assert_eq!(stats.dropped_queue, 2 * (burst - fits as u64));
    assert_eq!(
        stats.dropped_queue_bytes,
        2 * (burst - fits as u64) * size as u64
    );
    assert_eq!(stats.dropped_loss, 0);
    assert_eq!(stats.peak_queue_bytes, (fits - 1) * size);
}

#[test]
fn delay_adds_exactly_the_one_way_delay() {
    let (a, b) = (addr(A), addr(B));
    // The network's own 10 ms between the two links.
    let mut sim = Sim::new(3, NetConfig::perfect());
    sim.add_sink(a);
    sim.add_sink(b);
    let up = LinkConfig {
        delay: ms(17),
        ..LinkConfig::default()
    };
    let down = LinkConfig {
        delay: Duration::from_micros(23_456),
        rate: Some(1_000_000),
        ..LinkConfig::default()
    };
    sim.set_link(a, Direction::Up, up);
    sim.set_link(b, Direction::Down, down);
    let size = link_size(500);
    let t0 = sim.now;
    sim.inject(a, b, datagram(0, 500));
    // Another datagram later, alone on both links: the same time again.
    sim.run_for(ms(200));
    let t1 = sim.now;
    sim.inject(a, b, datagram(1, 500));
    // And one from b to a, which has no link that way: the network's 10 ms only.
    sim.inject(b, a, datagram(2, 500));
    sim.run_for(ms(200));
    let one_way = up.delay + ms(10) + down.serialization(size) + down.delay;
    println!(
        "a -> b: {:?} (17 ms up, 10 ms network, {:?} serialization at 1 MB/s, 23.456 ms down)",
        one_way,
        down.serialization(size)
    );
    let got = sim.arrivals(b);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].at - t0, one_way);
    assert_eq!(got[1].at - t1, one_way);
    assert_eq!(sim.arrivals(a)[0].at - t1, ms(10));
}

#[test]
fn a_chat_round_trip_through_links_takes_both_delays_and_serializations() {
    let mut sim = Sim::new(4, NetConfig::instant());
    let peers = sim.add_registered_peers(2, &sim::default_config());
    let (a, b) = (sim.addr(peers[0]), sim.addr(peers[1]));
    let up = LinkConfig {
        delay: ms(15),
        rate: Some(125_000),
        ..LinkConfig::default()
    };
    let down = LinkConfig {
        delay: ms(25),
        rate: Some(500_000),
        ..LinkConfig::default()
    };
    sim.set_links(a, up, down);
    sim.connect(0, 1);
    sim.expect(ms(1_000), "the request", |s| {
        s.has(1, |e| matches!(e, Event::Request { .. }))
    });
    sim.accept(1, None);
    sim.expect(ms(1_000), "connected", |s| {
        s.has(0, |e| matches!(e, Event::Connected { .. }))
    });
    sim.run_for(ms(500));
    let sent_at: Instant = sim.now;
    let seq = sim.send(0, None, "ping through the links")[0];
    sim.expect(ms(1_000), "delivered", |s| {
        s.has(
            0,
            |e| matches!(e, Event::Delivered { seq: n, .. } if *n == seq),
        )
    });
    let delivered_at = sim
        .when(
            0,
            |e| matches!(e, Event::Delivered { seq: n, .. } if *n == seq),
        )
        .unwrap();
    let chat = sim.sent_by(a, |m| matches!(m, Message::Chat { .. }))[0];
    let ack = sim.sent_by(b, |m| matches!(m, Message::Ack { .. }))[0];
    let (chat_len, ack_len) = (
        // As they went on the wire: sealed.
        wire::encode(&chat.wire).len() + OVERHEAD,
        wire::encode(&ack.wire).len() + OVERHEAD,
    );
    let expected = up.serialization(chat_len) + up.delay + down.serialization(ack_len) + down.delay;
    println!(
        "send -> delivered: {:?}; chat {chat_len} bytes, ack {ack_len} bytes",
        delivered_at - sent_at
    );
    assert_eq!(delivered_at - sent_at, expected);
    assert!(sim.link_stats(a, Direction::Up).passed > 0);
    assert!(sim.link_stats(a, Direction::Down).passed > 0);
}

#[test]
fn loss_fraction_matches_over_many_datagrams() {
    let (a, b) = (addr(A), addr(B));
    let count = 50_000u64;
    let loss = 0.2;
    let run = |seed: u64| -> (Vec<u64>, u64) {
        let mut sim = two_sinks(seed, a, b);
        sim.set_link(
            a,
            Direction::Up,
            LinkConfig {
                loss,
                ..LinkConfig::default()
            },
        );
        for i in 0..count {
            sim.inject(a, b, datagram(i, 10));
        }
        sim.run_for(ms(1));
        let got = sim.arrivals(b).iter().map(|d| number(&d.bytes)).collect();
        (got, sim.link_stats(a, Direction::Up).dropped_loss)
    };
    for seed in sim::seeds(3) {
        println!("seed {seed} (replay with SIM_SEED={seed})");
        let (got, lost) = run(seed);
        let fraction = lost as f64 / count as f64;
        println!("  {lost} of {count} lost: {fraction:.4} (configured {loss})");
        // The standard deviation of the fraction is 0.0018: 0.01 is more than 5 of them.
        assert!((fraction - loss).abs() < 0.01, "seed {seed}: {fraction}");
        assert_eq!(got.len() as u64 + lost, count, "seed {seed}");
        // The same seed, the same datagrams lost; another seed, others.
        assert_eq!(run(seed).0, got, "seed {seed} twice");
        assert_ne!(run(seed + 1000).0, got, "seed {seed} and {}", seed + 1000);
    }
}

#[test]
fn the_two_directions_are_independent() {
    let (a, b) = (addr(A), addr(B));
    let mut sim = two_sinks(5, a, b);
    let up = LinkConfig {
        delay: ms(5),
        rate: Some(125_000),
        queue: Some(20_000),
        loss: 0.0,
    };
    let down = LinkConfig {
        delay: ms(30),
        rate: Some(1_000_000),
        queue: None,
        loss: 0.0,
    };
    sim.set_links(a, up, down);
    let size = link_size(1_100);
    // A burst from a fills its up link's queue (and overflows it) ...
    let t0 = sim.now;
    for i in 0..100 {
        sim.inject(a, b, datagram(i, 1_100));
    }
    // ... while a stream toward a, at the down link's rate, goes through untouched.
    let stream = 200u64;
    let every = down.serialization(size);
    for i in 0..stream {
        sim.inject(b, a, datagram(1_000 + i, 1_100));
        sim.run_for(every);
    }
    sim.run_for(Duration::from_secs(2));
    let to_a = sim.arrivals(a);
    assert_eq!(to_a.len() as u64, stream);
    // Each arrives after exactly its serialization and the down link's delay: no wait.
    for (i, d) in to_a.iter().enumerate() {
        assert_eq!(
            d.at - (t0 + every * i as u32),
            every + down.delay,
            "datagram {i}"
        );
    }
    let fits = 1 + 20_000 / size;
    let to_b = sim.arrivals(b);
    assert_eq!(to_b.len(), fits);
    // The up link serialized them at its own rate.
    let last = to_b[fits - 1].at - t0;
    assert_eq!(last, up.serialization(size) * fits as u32 + up.delay);
    let (s_up, s_down) = (
        sim.link_stats(a, Direction::Up).clone(),
        sim.link_stats(a, Direction::Down).clone(),
    );
    println!("up: {s_up:?}\ndown: {s_down:?}");
    assert_eq!(
        (s_up.sent, s_up.passed, s_up.dropped_queue),
        (100, fits as u64, 100 - fits as u64)
    );
    assert_eq!(
        (s_down.sent, s_down.passed, s_down.dropped_queue),
        (stream, stream, 0)
    );
    assert_eq!(s_down.peak_queue_bytes, 0);
}
