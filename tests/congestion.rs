//! Congestion control, pacing, loss recovery and flow control of file transfers on the
//! simulated network, through the link model of `tests/sim/link.rs` (one-way delay, rate,
//! drop-tail byte queue, random loss). Virtual time: a transfer of seconds runs in
//! milliseconds of real time. Seeded runs print their seed; `SIM_SEED=<n>` replays one.
//!
//! The paths: the sender's up link has the rate, the queue, the loss and half the round
//! trip; its down link the other half. Two senders share a bottleneck through the
//! receiver's down link instead. "Share of the link" is file bytes per second over the
//! link's rate (a chunk's datagram is 7% more than its file bytes).

mod sim;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2pchat::peer::{Event, FileSink, PeerConfig};
use p2pchat::wire::{Message, CHUNK_SIZE};
use sha2::{Digest, Sha256};
use sim::{default_config, file_bytes, seeds, Direction, LinkConfig, NetConfig, Sim};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Megabits per second, in bytes per second.
fn mbit(n: u64) -> u64 {
    n * 1_000_000 / 8
}

const MIB: usize = 1 << 20;

/// A download that only counts (the file's digest is checked by the receiver).
struct CountSink(Arc<Mutex<u64>>);

impl FileSink for CountSink {
    fn write_chunk(&mut self, data: &[u8]) -> std::io::Result<()> {
        *self.0.lock().unwrap() += data.len() as u64;
        Ok(())
    }
    fn finish(self: Box<Self>) -> std::io::Result<PathBuf> {
        Ok(PathBuf::from("memory"))
    }
    fn abort(self: Box<Self>) {}
}

/// A path: round trip, rate (bytes/s), drop-tail queue (bytes), random loss.
#[derive(Clone, Copy, Debug)]
struct Path {
    rtt: Duration,
    rate: u64,
    queue: usize,
    loss: f64,
}

impl Path {
    /// `rtt_ms` and `mbit_s`, with a queue of one bandwidth-delay product and no loss.
    fn new(rtt_ms: u64, mbit_s: u64) -> Path {
        let rate = mbit(mbit_s);
        Path {
            rtt: ms(rtt_ms),
            rate,
            queue: (rate as f64 * ms(rtt_ms).as_secs_f64()) as usize,
            loss: 0.0,
        }
    }

    fn bottleneck(&self) -> LinkConfig {
        LinkConfig {
            delay: self.rtt / 2,
            rate: Some(self.rate),
            queue: Some(self.queue),
            loss: self.loss,
        }
    }

    fn plain(&self) -> LinkConfig {
        LinkConfig {
            delay: self.rtt / 2,
            ..LinkConfig::default()
        }
    }
}

/// `n` registered peers on an instant network, peer 0 connected to each other one.
fn peers(seed: u64, n: usize, cfg: &PeerConfig) -> Sim {
    let mut sim = Sim::new(seed, NetConfig::instant());
    sim.add_registered_peers(n, cfg);
    for other in 1..n {
        sim.connect(other, 0);
        let id = sim.id(other);
        sim.expect(ms(10_000), "the request arrives", |s| {
            s.has(0, |e| matches!(e, Event::Request { from } if *from == id))
        });
        sim.accept(0, Some(id));
        sim.expect(ms(10_000), "connected", move |s| {
            s.has(other, |e| matches!(e, Event::Connected { .. }))
        });
    }
    sim
}

/// A transfer under way: who sends, its bytes, and when the receiver asked for it.
struct Flow {
    from: usize,
    size: u64,
    started: Instant,
    received: Arc<Mutex<u64>>,
}

/// Peer `from` offers `size` bytes to peer `to`; `to` accepts at once.
fn start(sim: &mut Sim, from: usize, to: usize, size: usize, seed: u64) -> Flow {
    let data = file_bytes(size, seed);
    let digest: [u8; 32] = Sha256::digest(&data).into();
    let to_id = sim.id(to);
    let from_id = sim.id(from);
    sim.command(from, |p, now| {
        p.send_file(now, Some(to_id), "f", size as u64, digest, Box::new(data))
    })
    .expect("sendfile");
    sim.expect(ms(10_000), "the offer arrives", |s| {
        s.has(
            to,
            |e| matches!(e, Event::FileOffer { from, .. } if *from == from_id),
        )
    });
    let n = sim
        .events(to)
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::FileOffer { from, n, .. } if *from == from_id => Some(*n),
            _ => None,
        })
        .expect("offered");
    let received = Arc::new(Mutex::new(0));
    let sink = Box::new(CountSink(Arc::clone(&received)));
    sim.command(to, |p, now| p.get_file(now, n, sink))
        .expect("getfile");
    Flow {
        from,
        size: size as u64,
        started: sim.now,
        received,
    }
}

/// When peer `i` was told its file arrived whole (the `k`-th time).
fn received_at(sim: &Sim, i: usize, k: usize) -> Option<Instant> {
    sim.nodes[i]
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::FileReceived { .. }))
        .nth(k)
        .map(|(t, _)| *t)
}

/// Chunks sent by `from`: (datagrams, distinct chunks).
fn chunks_sent(sim: &Sim, from: usize) -> (usize, usize) {
    let seqs: Vec<u64> = sim
        .sent_by(sim.addr(from), |m| matches!(m, Message::Chunk { .. }))
        .iter()
        .map(|r| match r.message {
            Message::Chunk { seq, .. } => seq,
            _ => unreachable!(),
        })
        .collect();
    let mut distinct = seqs.clone();
    distinct.sort_unstable();
    distinct.dedup();
    (seqs.len(), distinct.len())
}

/// One file of `size` bytes from peer 1 to peer 0 over `path` (on peer 1's links); returns
/// the share of the link's rate it got, and the simulation.
fn one_transfer(seed: u64, path: Path, size: usize, cfg: &PeerConfig) -> (Shares, Sim) {
    let mut sim = peers(seed, 2, cfg);
    sim.set_links(sim.addr(1), path.bottleneck(), path.plain());
    let flow = start(&mut sim, 1, 0, size, seed);
    let received = Arc::clone(&flow.received);
    let half = flow.size / 2;
    sim.expect(ms(600_000), "half the file arrives", move |_| {
        *received.lock().unwrap() >= half
    });
    let (half_at, half_bytes) = (sim.now, *flow.received.lock().unwrap());
    sim.expect(ms(600_000), "the file arrives", |s| {
        received_at(s, 0, 0).is_some()
    });
    let end = received_at(&sim, 0, 0).unwrap();
    assert_eq!(*flow.received.lock().unwrap(), flow.size);
    let rate = path.rate as f64;
    let share = flow.size as f64 / (end - flow.started).as_secs_f64() / rate;
    let second = (flow.size - half_bytes) as f64 / (end - half_at).as_secs_f64() / rate;
    (
        Shares {
            whole: share,
            second_half: second,
        },
        sim,
    )
}

/// The share of the link a transfer got: over the whole of it (from `getfile` to verified,
/// slow start included), and over its second half.
#[derive(Debug, Clone, Copy)]
struct Shares {
    whole: f64,
    second_half: f64,
}

fn config() -> PeerConfig {
    default_config().with_file_defaults()
}

#[test]
fn the_window_grows_to_the_bandwidth_delay_product_and_fills_the_link() {
    for (rtt, mbit_s) in [(20, 100), (50, 100), (100, 100), (50, 20)] {
        let path = Path::new(rtt, mbit_s);
        let (share, sim) = one_transfer(1, path, 16 * MIB, &config());
        let link = sim.link_stats(sim.addr(1), Direction::Up);
        let (sent, distinct) = chunks_sent(&sim, 1);
        println!(
            "{rtt} ms, {mbit_s} Mbit/s: {:.0}% of the link ({:.0}% in the second half), {} resends, {} queue drops, peak queue {} kB",
            share.whole * 100.0,
            share.second_half * 100.0,
            sent - distinct,
            link.dropped_queue,
            link.peak_queue_bytes / 1000
        );
        // Once the window is there the link is full (a chunk's datagram is 7% more than
        // its data, so 93% is all of it).
        assert!(
            share.second_half >= 0.85,
            "{rtt} ms {mbit_s} Mbit/s: {share:?}"
        );
        // Slow start takes its toll on the whole: at 100 ms it lasts 0.7 s of a 2.1 s
        // transfer (the benchmark's 32 MiB halve that share).
        assert!(share.whole >= 0.6, "{rtt} ms {mbit_s} Mbit/s: {share:?}");
    }
}

#[test]
fn a_clean_long_path_sees_no_resend_at_all() {
    // A queue of two BDPs: nothing is dropped, so any resend would be spurious.
    let mut path = Path::new(100, 100);
    path.queue *= 2;
    let (share, sim) = one_transfer(2, path, 16 * MIB, &config());
    let link = sim.link_stats(sim.addr(1), Direction::Up);
    let (sent, distinct) = chunks_sent(&sim, 1);
    println!("share {share:?}, queue drops {}", link.dropped_queue);
    assert_eq!(link.dropped_queue, 0);
    assert_eq!(sent, distinct, "spurious resends");
}

#[test]
fn the_bottleneck_queue_stays_short_so_chat_stays_quick() {
    // 50 ms, 20 Mbit/s, a queue of one BDP (50 ms): chat sent every 50 ms during a
    // transfer from the same peer, send -> delivered.
    let path = Path::new(50, 20);
    let mut sim = peers(3, 2, &config());
    sim.set_links(sim.addr(1), path.bottleneck(), path.plain());
    let flow = start(&mut sim, 1, 0, 16 * MIB, 3);
    let to = sim.id(0);
    let mut k = 0;
    while received_at(&sim, 0, 0).is_none() {
        sim.run_for(ms(50));
        sim.send(1, Some(to), &format!("chat {k}"));
        k += 1;
        assert!(k < 10_000);
    }
    sim.run_for(ms(2_000));
    let events = &sim.nodes[1].events;
    let sent: Vec<(u64, Instant)> = events
        .iter()
        .filter_map(|(t, e)| match e {
            Event::Sent { seq, .. } => Some((*seq, *t)),
            _ => None,
        })
        .collect();
    let mut delays: Vec<Duration> = sent
        .iter()
        .map(|&(seq, at)| {
            let done = events
                .iter()
                .find_map(|(t, e)| match e {
                    Event::Delivered { seq: s, .. } if *s == seq => Some(*t),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("chat {seq} delivered"));
            done - at
        })
        .collect();
    delays.sort();
    let p99 = delays[delays.len() * 99 / 100];
    let took = received_at(&sim, 0, 0).unwrap() - flow.started;
    let share = flow.size as f64 / took.as_secs_f64() / path.rate as f64;
    println!(
        "{} chats, p50 {:?}, p99 {:?}, max {:?}; transfer {:.0}% of the link",
        delays.len(),
        delays[delays.len() / 2],
        p99,
        delays.last().unwrap(),
        share * 100.0
    );
    assert!(p99 <= path.rtt * 3 / 2, "p99 {p99:?}");
    assert!(share >= 0.8, "share {share:.2}");
}

#[test]
fn random_loss_of_one_percent_does_not_collapse_the_window() {
    for seed in seeds(3) {
        println!("seed {seed}");
        let mut path = Path::new(50, 100);
        path.loss = 0.01;
        let (share, sim) = one_transfer(seed, path, 16 * MIB, &config());
        let share = share.whole;
        let link = sim.link_stats(sim.addr(1), Direction::Up);
        let (sent, distinct) = chunks_sent(&sim, 1);
        println!(
            "  {:.0}% of the link; {} lost at random, {} queue drops, {} resends",
            share * 100.0,
            link.dropped_loss,
            link.dropped_queue,
            sent - distinct
        );
        assert!(share >= 0.5, "seed {seed}: {share:.2}");
        // Each loss costs about one resend, not a window.
        let losses = link.dropped_loss + link.dropped_queue;
        assert!(
            (sent - distinct) as u64 <= losses * 3 / 2 + 10,
            "seed {seed}: {} resends for {losses} losses",
            sent - distinct
        );
    }
}

#[test]
fn a_lost_chunk_is_resent_alone_well_before_any_timeout() {
    // A queue of 4 BDPs: nothing is dropped there.
    let mut path = Path::new(50, 20);
    path.queue *= 4;
    let mut sim = peers(4, 2, &config());
    sim.set_links(sim.addr(1), path.bottleneck(), path.plain());
    sim.drop_first(1, |m| matches!(m, Message::Chunk { seq: 300, .. }));
    start(&mut sim, 1, 0, 2 * MIB, 4);
    sim.expect(ms(60_000), "the file arrives", |s| {
        received_at(s, 0, 0).is_some()
    });
    let copies: Vec<Instant> = sim
        .sent_by(sim.addr(1), |m| {
            matches!(m, Message::Chunk { seq: 300, .. })
        })
        .iter()
        .map(|r| r.at)
        .collect();
    let (sent, distinct) = chunks_sent(&sim, 1);
    assert_eq!(copies.len(), 2, "chunk 300 sent twice");
    assert_eq!(sent - distinct, 1, "no other chunk resent");
    let gap = copies[1] - copies[0];
    println!("resent after {gap:?}");
    // One round trip and a little queueing: not a timeout.
    assert!(gap < path.rtt * 2, "resent after {gap:?}");
}

#[test]
fn the_window_backs_off_when_the_link_slows_down() {
    // 50 ms at 50 Mbit/s, then the link drops to 10 Mbit/s: the queue must drain, not
    // overflow for the rest of the transfer.
    let fast = Path::new(50, 50);
    let mut sim = peers(5, 2, &config());
    sim.set_links(sim.addr(1), fast.bottleneck(), fast.plain());
    let flow = start(&mut sim, 1, 0, 16 * MIB, 5);
    sim.run_for(ms(1_500));
    let mut slow = Path::new(50, 10);
    slow.queue = fast.queue;
    sim.set_link(sim.addr(1), Direction::Up, slow.bottleneck());
    let mut peaks = Vec::new();
    while received_at(&sim, 0, 0).is_none() {
        sim.run_for(ms(500));
        let q = sim.link_queue(sim.addr(1), Direction::Up);
        peaks.push(q);
    }
    let link = sim.link_stats(sim.addr(1), Direction::Up).clone();
    let settled = &peaks[peaks.len() / 2..];
    let mean = settled.iter().sum::<usize>() / settled.len();
    println!(
        "queue samples {:?} (bytes), {} dropped of {}",
        peaks, link.dropped_queue, link.sent
    );
    // A queue of a quarter of the round trip at 10 Mbit/s is 16 kB; the link's queue
    // holds 312 kB.
    assert!(mean < 40_000, "mean queue {mean} bytes after settling");
    // The queue it had when the link slowed (and the window) overflow for a while.
    assert!(
        link.dropped_queue * 20 < link.sent,
        "{} of {} dropped",
        link.dropped_queue,
        link.sent
    );
    assert_eq!(*flow.received.lock().unwrap(), flow.size);
}

#[test]
fn a_shallow_queue_overflows_but_heavy_loss_still_backs_off() {
    // A queue of 15 kB (2.4 ms at 50 Mbit/s) under a 50 ms round trip: too short for the
    // delay signal; the loss must keep to a few percent, and the link busy.
    let mut path = Path::new(50, 50);
    path.queue = 15_000;
    let (share, sim) = one_transfer(6, path, 16 * MIB, &config());
    let share = share.whole;
    let link = sim.link_stats(sim.addr(1), Direction::Up);
    let dropped = link.dropped_queue as f64 / link.sent as f64;
    println!(
        "{:.0}% of the link, {:.1}% dropped",
        share * 100.0,
        dropped * 100.0
    );
    assert!(dropped < 0.10, "{:.1}% dropped", dropped * 100.0);
    assert!(share >= 0.5, "share {share:.2}");
}

#[test]
fn two_transfers_through_one_bottleneck_share_it_fairly() {
    // Started together, and up to 60 ms (a round trip and a bit) apart. A transfer that
    // joins much later starts from its own small share and converges more slowly than a
    // transfer of this size lasts: 100 ms apart, the ratio over 16 MiB is about 0.27 (seed 5 of SIM_SEEDS=8)
    // (see the README).
    for seed in seeds(4) {
        println!("seed {seed}");
        // Peers 1 and 2 send to peer 0, whose down link is the bottleneck.
        let path = Path::new(50, 100);
        let mut sim = peers(seed, 3, &config());
        let half = LinkConfig {
            delay: path.rtt / 4,
            ..LinkConfig::default()
        };
        let mut bottleneck = path.bottleneck();
        bottleneck.delay = path.rtt / 4;
        sim.set_links(sim.addr(0), half, bottleneck);
        for i in [1, 2] {
            sim.set_links(sim.addr(i), half, half);
        }
        let size = 16 * MIB;
        // The second starts 20 ms later with each seed.
        let a = start(&mut sim, 1, 0, size, seed);
        sim.run_for(ms(seed * 20));
        let b = start(&mut sim, 2, 0, size, seed + 1);
        // Both run until the first finishes: compare what each moved until then.
        sim.expect(ms(600_000), "one file arrives", |s| {
            received_at(s, 0, 0).is_some()
        });
        let end = received_at(&sim, 0, 0).unwrap();
        let ra = *a.received.lock().unwrap() as f64 / (end - a.started).as_secs_f64();
        let rb = *b.received.lock().unwrap() as f64 / (end - b.started).as_secs_f64();
        let total = (ra + rb) / path.rate as f64;
        let ratio = ra.min(rb) / ra.max(rb);
        println!(
            "  {} {:.1} MB/s, {} {:.1} MB/s: together {:.0}% of the link, ratio {ratio:.2}",
            a.from,
            ra / 1e6,
            b.from,
            rb / 1e6,
            total * 100.0
        );
        assert!(total >= 0.8, "seed {seed}: together {total:.2}");
        assert!(ratio >= 0.4, "seed {seed}: ratio {ratio:.2}");
        sim.expect(ms(600_000), "the other arrives", |s| {
            received_at(s, 0, 1).is_some()
        });
    }
}

/// The most chunks `from` sent within any `span`.
fn largest_burst(sim: &Sim, from: usize, span: Duration) -> usize {
    let times: Vec<Instant> = sim
        .sent_by(sim.addr(from), |m| matches!(m, Message::Chunk { .. }))
        .iter()
        .map(|r| r.at)
        .collect();
    let mut most = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= span {
            lo += 1;
        }
        most = most.max(hi - lo + 1);
    }
    most
}

#[test]
fn pacing_spreads_the_window_so_no_burst_exceeds_the_bucket() {
    // 100 ms at 20 Mbit/s, and after the first 32 only one acknowledgement in 64 gets
    // through (as when acks are thinned or bunched on the way back): each one that arrives
    // opens the window by 64 chunks at once. Unpaced, they leave back to back; paced, at
    // most a bucket.
    let path = Path::new(100, 20);
    let size = 4 * MIB;
    let chunks = size.div_ceil(CHUNK_SIZE) as u64;
    // (The acknowledgement of the whole file always passes.)
    let thin = |sim: &mut Sim| {
        let mut count = 0u64;
        sim.drop_first(usize::MAX, move |m| match m {
            Message::ChunkAck { cumulative, .. } if *cumulative < chunks => {
                count += 1;
                count > 32 && count % 64 != 0
            }
            _ => false,
        })
    };
    let run = |pacing: bool| {
        let mut cfg = config();
        cfg.files.sender.pacing = pacing;
        let mut sim = peers(7, 2, &cfg);
        sim.set_links(sim.addr(1), path.bottleneck(), path.plain());
        thin(&mut sim);
        start(&mut sim, 1, 0, size, 7);
        // The largest window, read just before the end.
        let mut window = 0;
        while received_at(&sim, 0, 0).is_none() {
            sim.run_for(ms(100));
            if let Some((_, s)) = sim.peer(1).sender_stats().first() {
                window = s.max_window;
            }
            assert!(sim.elapsed() < Duration::from_secs(600), "the file arrives");
        }
        (sim, window)
    };
    let ((paced, window), (unpaced, _)) = (run(true), run(false));
    // Within 100 µs the link carries 0.2 chunks: a burst is what the sender let go at once.
    let b_paced = largest_burst(&paced, 1, Duration::from_micros(100));
    let b_unpaced = largest_burst(&unpaced, 1, Duration::from_micros(100));
    println!("largest burst: paced {b_paced}, unpaced {b_unpaced} chunks");
    // The bucket holds 2 ms at the pacing rate, at least 10 chunks: at most 2 x window /
    // RTT (slow start, which the thinned acknowledgements let run long); one more may be
    // due as it refills.
    let mss = (CHUNK_SIZE + 80) as f64;
    let bucket = (0.002 * 2.0 * window as f64 / path.rtt.as_secs_f64() / mss).max(10.0);
    println!("largest window {window} bytes: a bucket of {bucket:.1} chunks");
    assert!(b_paced as f64 <= bucket + 1.0, "paced burst {b_paced}");
    assert!(b_unpaced >= 2 * b_paced, "unpaced burst {b_unpaced}");
}

#[test]
fn the_sender_never_exceeds_the_receivers_window() {
    // A receiver that takes 32 chunks beyond its cumulative number, on a long fat path:
    // the window, not the link, limits the rate, and no chunk beyond it is ever sent.
    let path = Path::new(100, 100);
    let mut cfg = config();
    cfg.files.receive_window = 32;
    let (share, sim) = one_transfer(8, path, 2 * MIB, &cfg);
    let share = share.whole;
    let acks: Vec<(Instant, u64)> = sim
        .sent_by(sim.addr(0), |m| matches!(m, Message::ChunkAck { .. }))
        .iter()
        .filter_map(|r| match (&r.message, r.arrivals.first()) {
            (
                Message::ChunkAck {
                    cumulative, window, ..
                },
                Some(&at),
            ) => {
                // (The acknowledgement of the whole file says no window: nothing is left.)
                assert!(*window == 32 || *window == 0, "window {window}");
                Some((at, *cumulative))
            }
            _ => None,
        })
        .collect();
    let mut worst = 0i64;
    for r in sim.sent_by(sim.addr(1), |m| matches!(m, Message::Chunk { .. })) {
        let Message::Chunk { seq, .. } = r.message else {
            unreachable!()
        };
        let known = acks
            .iter()
            .filter(|(at, _)| *at <= r.at)
            .map(|&(_, c)| c)
            .max()
            .unwrap_or(0);
        worst = worst.max(seq as i64 - known as i64);
    }
    // 32 chunks per 100 ms round trip: 352 kB/s at most.
    let rate = share * path.rate as f64;
    println!("furthest ahead: {worst} chunks; {:.0} kB/s", rate / 1e3);
    assert!(
        worst <= 32,
        "a chunk {worst} ahead of the cumulative number"
    );
    assert!(rate <= 32.0 * 1100.0 / 0.1 * 1.05, "rate {rate}");
    assert!(rate >= 32.0 * 1100.0 / 0.1 * 0.6, "rate {rate}");
}

#[test]
fn a_slow_start_ended_early_by_a_delay_spike_regains_the_link() {
    // 100 ms at 100 Mbit/s; 250 ms in, every datagram is held 30 ms longer for 300 ms (as a
    // busy CPU or a radio link would): slow start ends on that, far below the path's
    // product. While the path then shows no queue the window grows by 1/16 of itself per
    // round trip on top of the additive 4 chunks, and the second half of the file still
    // fills the link.
    let path = Path::new(100, 100);
    let mut sim = peers(9, 2, &config());
    sim.set_links(sim.addr(1), path.bottleneck(), path.plain());
    let flow = start(&mut sim, 1, 0, 32 * MIB, 9);
    sim.run_for(ms(250));
    let mut spike = path.plain();
    spike.delay += ms(30);
    sim.set_link(sim.addr(1), Direction::Down, spike);
    sim.run_for(ms(300));
    sim.set_link(sim.addr(1), Direction::Down, path.plain());
    let received = Arc::clone(&flow.received);
    let half = flow.size / 2;
    sim.expect(ms(600_000), "half the file", move |_| {
        *received.lock().unwrap() >= half
    });
    let (half_at, half_bytes) = (sim.now, *flow.received.lock().unwrap());
    sim.expect(ms(600_000), "the file arrives", |s| {
        received_at(s, 0, 0).is_some()
    });
    let end = received_at(&sim, 0, 0).unwrap();
    let second = (flow.size - half_bytes) as f64 / (end - half_at).as_secs_f64() / path.rate as f64;
    let window = sim.peer(1).sender_stats();
    println!(
        "second half {:.0}% of the link ({window:?})",
        second * 100.0
    );
    assert!(second >= 0.85, "second half {second:.2}");
}

/// The benchmark's hardest path in the simulated network: 32 MiB over 100 ms at 100
/// Mbit/s reaches 80% of the link from `getfile` to the last chunk (88% is full: the rest
/// is the round trip before the first chunk and the growth from the initial window; with
/// plain doubling, 76-78%). Prints what each round trip delivered and the window.
#[test]
fn a_long_fat_path_is_filled_within_a_few_round_trips() {
    let rtt = 100;
    let path = Path::new(rtt, 100);
    let mut sim = peers(1, 2, &config());
    sim.set_links(sim.addr(1), path.bottleneck(), path.plain());
    let flow = start(&mut sim, 1, 0, 32 * MIB, 1);
    let mut last = 0;
    let mut round = 0;
    let mut delivered = Vec::new();
    while received_at(&sim, 0, 0).is_none() && round < 100 {
        sim.run_for(ms(rtt));
        round += 1;
        let got = *flow.received.lock().unwrap();
        let share = (got - last) as f64 / (path.rate as f64 * rtt as f64 / 1000.0);
        let stats = sim.nodes[1].peer.sender_stats();
        let window = stats.first().map_or(0, |(_, s)| s.window);
        if round <= 8 {
            println!(
                "round trip {round}: {:4.1}% of the link delivered, window {:5} kB",
                share * 100.0,
                window / 1000
            );
        }
        delivered.push(share);
        last = got;
    }
    let end = received_at(&sim, 0, 0).expect("the file arrives");
    let took = (end - flow.started).as_secs_f64();
    let share = flow.size as f64 / took / path.rate as f64;
    let link = sim.link_stats(sim.addr(1), Direction::Up);
    let (sent, distinct) = chunks_sent(&sim, 1);
    println!(
        "took {took:.3} s: {:.1}% of the link; peak queue {} kB, {} queue drops, {} resends",
        share * 100.0,
        link.peak_queue_bytes / 1000,
        link.dropped_queue,
        sent - distinct
    );
    assert!(share >= 0.80, "{:.1}% of the link", share * 100.0);
    // Full from the fifth round trip on (the first carries the request and no data, the
    // next three the growth: 64 chunks, then x4, then the link's rate).
    assert!(
        delivered[4..delivered.len() - 1].iter().all(|&s| s >= 0.85),
        "{delivered:?}"
    );
    // Faster growth, and still no queue overflow, no resend, a peak queue below one
    // bandwidth-delay product.
    assert_eq!(link.dropped_queue, 0);
    assert_eq!(sent, distinct, "spurious resends");
    assert!(
        link.peak_queue_bytes < path.queue,
        "peak queue {}",
        link.peak_queue_bytes
    );
}
