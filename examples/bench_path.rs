//! File transfers over emulated paths: 100 Mbit/s at 20, 50 and 100 ms, with 1% random
//! loss, two transfers sharing one link, and chat during a transfer at 50 ms / 20 Mbit/s.
//!
//! The lab of `tests/common/lab.rs`: the senders at *home*, behind the link emulator and a
//! NAT; the server and the receivers in the *world*. The emulator's link has the rate, a
//! one-way delay of half the round trip and a drop-tail queue of one bandwidth-delay product
//! in each direction (and the loss, when there is one, in each direction). The chunks go
//! up; the acknowledgements come down. Each client is the library's own loop
//! ([`Endpoint`]) on a thread; the file is in memory (its SHA-256 still checked by the
//! receiver), so disks play no part.
//!
//! In the same run, per path: a raw-UDP baseline (a blast of datagrams of a chunk's size
//! at 1.2 x the link's rate for 2 s; what arrives per second in the last 1.5 s, as file
//! bytes: what the link gives a sender that knows its rate and never resends), and once,
//! the emulator's own ceiling (an unshaped blast of 40,000 datagrams/s for 1 s: the share
//! that arrived; `bench_link` measures it in full).
//!
//! A transfer's rate is file bytes over the time from `getfile` to verified; its share of the
//! link is that rate over the link's rate (a chunk's IP packet carries 1,056 file bytes in
//! 1,200 bytes, sealed, so 88% is a full link). With two transfers, each rate is what it
//! received until the first one finished; together is their sum. Chat: one message every
//! 50 ms from the sender during its transfer, `send` to `delivered` (the acknowledgement
//! back), against the base round trip measured by 20 messages before the transfer.
//!
//! Needs root, iproute2, nftables and /dev/net/tun. Each figure is the median of the runs.
//!
//! ```sh
//! cargo run --release --example bench_path              # 3 runs of each, 32 MiB
//! cargo run --release --example bench_path -- 5         # 5 runs
//! BENCH_PATH_MIB=8 cargo run --release --example bench_path -- 1
//! BENCH_PATH_FAST=0 cargo run --release --example bench_path   # without fast start
//! BENCH_PATH_ONLY="100 ms" cargo run --release --example bench_path   # the rows whose
//!                                                # name holds this ("two", "chat", ...)
//! ```

mod bench_common;
mod link_common;

use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bench_common::{arg_or, ms, percentile, target};
use link_common::emulator::LinkConfig;
use link_common::lab::{self, Lab};
use p2pchat::driver::{Endpoint, Server, ServerOptions};
use p2pchat::peer::{Event, FileSink, PeerConfig};
use p2pchat::registry::RegistryConfig;
use p2pchat::wire::{ClientId, CHUNK_SIZE};
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;
/// A blast datagram's payload: about a `Chunk`'s encoded size.
const BLAST_PAYLOAD: usize = 1_160;

#[derive(Clone, Copy, Debug)]
struct Path {
    rtt_ms: u64,
    mbit: u64,
    loss: f64,
}

impl Path {
    fn rate(&self) -> u64 {
        self.mbit * 1_000_000 / 8
    }

    fn link(&self) -> LinkConfig {
        let rtt = Duration::from_millis(self.rtt_ms);
        LinkConfig {
            delay: rtt / 2,
            rate: Some(self.rate()),
            queue: Some((self.rate() as f64 * rtt.as_secs_f64()) as usize),
            loss: self.loss,
        }
    }

    fn label(&self) -> String {
        let mut s = format!("{} ms, {} Mbit/s", self.rtt_ms, self.mbit);
        if self.loss > 0.0 {
            s += &format!(", {}% loss", self.loss * 100.0);
        }
        s
    }
}

fn in_ns<T: Send>(ns: &link_common::netns::Netns, f: impl FnOnce() -> io::Result<T> + Send) -> T {
    ns.enter(f)
        .unwrap_or_else(|e| panic!("in {}: {e}", ns.name))
}

fn config(server: SocketAddr) -> PeerConfig {
    let mut cfg = PeerConfig::new(server, Duration::from_secs(10));
    // BENCH_PATH_FAST=0: without fast start (plain doubling), for comparison.
    if std::env::var("BENCH_PATH_FAST").is_ok_and(|v| v == "0") {
        cfg.files.sender.fast_start = false;
    }
    cfg
}

/// When the first transfer finished, and the bytes each had received then.
type FirstDone = Option<(Instant, Vec<u64>)>;

/// What one run of transfers measured.
struct Outcome {
    /// Per flow: rate in bytes/s (until the first finished, when there are two).
    rates: Vec<f64>,
    /// Per flow: rate over the second half of the file (after slow start).
    second_half: Vec<f64>,
    /// Chunks resent, per flow.
    resent: Vec<u64>,
    /// Per flow: the sender's largest window (bytes), and its cuts for a queue and for loss.
    control: Vec<(u64, u64, u64)>,
    /// Chat send -> delivered during the transfer, and the base round trip before it.
    chat: Option<(Vec<Duration>, Duration)>,
}

/// `flows` transfers of `size` bytes from the home to the world, at once.
fn transfers(lab: &Lab, size: usize, flows: usize, chat: bool) -> Outcome {
    let server = in_ns(&lab.world, || {
        Server::bind(&ServerOptions {
            bind: SocketAddr::V4(SocketAddrV4::new(lab::WORLD, 0)),
            registry: RegistryConfig::default(),
            table_rows: 10,
        })
        .map_err(|e| io::Error::other(e.0))
    });
    let server_addr = server.local_addr();
    let stopper = server.stopper();
    let server_thread = thread::spawn(move || server.run(&mut io::sink()));

    let data: Arc<Vec<u8>> = Arc::new((0..size).map(|i| (i * 7 + i / 4099) as u8).collect());
    let digest: [u8; 32] = Sha256::digest(data.as_slice()).into();
    let counters: Arc<Vec<AtomicU64>> = Arc::new((0..flows).map(|_| AtomicU64::new(0)).collect());
    let first_done: Arc<Mutex<FirstDone>> = Arc::new(Mutex::new(None));
    let started: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; flows]));
    let halfway: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; flows]));
    let barrier = Arc::new(Barrier::new(flows));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    let mut senders = Vec::new();
    for k in 0..flows {
        // The receiver, in the world.
        let mut rx = in_ns(&lab.world, || {
            Endpoint::bind(
                SocketAddr::V4(SocketAddrV4::new(lab::WORLD, 0)),
                config(server_addr),
            )
            .map_err(|e| io::Error::other(e.0))
        });
        let (id_tx, id_rx) = mpsc::channel::<ClientId>();
        let (counters, first_done, started, rx_stop) = (
            Arc::clone(&counters),
            Arc::clone(&first_done),
            Arc::clone(&started),
            Arc::clone(&stop),
        );
        let halfway = Arc::clone(&halfway);
        handles.push(thread::spawn(move || {
            let stop = rx_stop;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                rx.turn(Some(Duration::from_millis(5)), |_| {}).unwrap();
                if counters[k].load(Ordering::Relaxed) >= size as u64 / 2 {
                    halfway.lock().unwrap()[k].get_or_insert_with(Instant::now);
                }
                while let Some(ev) = rx.peer().poll_event() {
                    match ev {
                        Event::Registered { id, .. } => id_tx.send(id).unwrap(),
                        Event::Request { from } => {
                            rx.peer().accept(Instant::now(), Some(from)).unwrap();
                        }
                        Event::FileOffer { n, .. } => {
                            let sink = SharedSink(Arc::clone(&counters), k);
                            started.lock().unwrap()[k] = Some(Instant::now());
                            rx.peer()
                                .get_file(Instant::now(), n, Box::new(sink))
                                .unwrap();
                        }
                        Event::FileReceived { .. } => {
                            let now = Instant::now();
                            let mut first = first_done.lock().unwrap();
                            if first.is_none() {
                                let got = counters.iter().map(|c| c.load(Ordering::Relaxed));
                                *first = Some((now, got.collect()));
                            }
                            drop(first);
                            // Let the last acknowledgement go out.
                            let until = now + Duration::from_millis(300);
                            while Instant::now() < until {
                                rx.turn(Some(Duration::from_millis(10)), |_| {}).unwrap();
                            }
                            return Some(now);
                        }
                        Event::FileFailed { reason, .. } => {
                            eprintln!("receiver {k}: {reason}");
                            return None;
                        }
                        _ => {}
                    }
                }
            }
            None
        }));
        let receiver = id_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("registered");
        // The sender, at home.
        let mut tx = in_ns(&lab.home, || {
            Endpoint::bind(
                SocketAddr::V4(SocketAddrV4::new(lab::HOME, 0)),
                config(server_addr),
            )
            .map_err(|e| io::Error::other(e.0))
        });
        let (data, barrier, stop) = (Arc::clone(&data), Arc::clone(&barrier), Arc::clone(&stop));
        let chatting = chat && k == 0;
        senders.push(thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut base = Vec::new();
            let mut pending: Option<(u64, Instant)> = None;
            let mut during = Vec::new();
            let mut in_transfer: Vec<(u64, Instant)> = Vec::new();
            let mut offered = false;
            let mut connected = false;
            let mut next_chat = Instant::now();
            let mut control = (0, 0, 0);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                tx.turn(Some(Duration::from_millis(2)), |_| {}).unwrap();
                if let Some((_, s)) = tx.peer().sender_stats().first() {
                    control = (s.max_window, s.delay_signals, s.loss_signals);
                }
                let now = Instant::now();
                while let Some(ev) = tx.peer().poll_event() {
                    match ev {
                        Event::Registered { .. } => {
                            tx.peer().connect(Instant::now(), receiver).unwrap();
                        }
                        Event::Connected { .. } => connected = true,
                        Event::Delivered { seq, .. } => {
                            if let Some((s, at)) = pending {
                                if s == seq {
                                    base.push(now - at);
                                    pending = None;
                                }
                            }
                            if let Some(i) = in_transfer.iter().position(|&(s, _)| s == seq) {
                                during.push(now - in_transfer.swap_remove(i).1);
                            }
                        }
                        Event::FileSent { .. } => {
                            let retransmissions = tx.peer().chunk_retransmissions();
                            let chat = chatting.then(|| {
                                base.sort();
                                (during.clone(), percentile(&base, 0.5))
                            });
                            return Some((retransmissions, chat, control));
                        }
                        Event::FileFailed { reason, .. } => {
                            eprintln!("sender {k}: {reason}");
                            return None;
                        }
                        _ => {}
                    }
                }
                if !connected {
                    continue;
                }
                // Before the file: the base round trip, 20 messages one at a time.
                if chatting && base.len() < 20 {
                    if pending.is_none() {
                        let seqs = tx.peer().send(now, Some(receiver), "base").unwrap();
                        pending = Some((seqs[0], now));
                    }
                    continue;
                }
                if !offered {
                    barrier.wait();
                    let source = Box::new(data.as_ref().clone());
                    tx.peer()
                        .send_file(
                            Instant::now(),
                            Some(receiver),
                            "f",
                            size as u64,
                            digest,
                            source,
                        )
                        .unwrap();
                    offered = true;
                    next_chat = Instant::now() + Duration::from_millis(200);
                }
                if chatting && now >= next_chat {
                    let seqs = tx.peer().send(now, Some(receiver), "during").unwrap();
                    in_transfer.push((seqs[0], now));
                    next_chat = now + Duration::from_millis(50);
                }
            }
            None
        }));
    }
    let sent: Vec<_> = senders.into_iter().map(|h| h.join().unwrap()).collect();
    let ends: Vec<Option<Instant>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    stopper.stop();
    let _ = server_thread.join();
    let started = started.lock().unwrap().clone();
    let first = first_done.lock().unwrap().clone();
    let halfway = halfway.lock().unwrap().clone();
    let mut second_half = Vec::new();
    let mut rates = Vec::new();
    let mut resent = Vec::new();
    let mut control = Vec::new();
    let mut chat = None;
    for k in 0..flows {
        let (Some(start), Some(end), Some(Some((r, c, ctl)))) = (started[k], ends[k], sent.get(k))
        else {
            rates.push(0.0);
            second_half.push(0.0);
            control.push((0, 0, 0));
            resent.push(0);
            continue;
        };
        let rate = if flows == 1 {
            size as f64 / (end - start).as_secs_f64()
        } else {
            let (t, got) = first.as_ref().expect("one finished");
            got[k] as f64 / t.saturating_duration_since(start).as_secs_f64()
        };
        rates.push(rate);
        second_half.push(match halfway[k] {
            Some(h) => (size as u64 / 2) as f64 / end.saturating_duration_since(h).as_secs_f64(),
            None => 0.0,
        });
        resent.push(*r);
        control.push(*ctl);
        if let Some(c) = c {
            chat = Some(c.clone());
        }
    }
    Outcome {
        rates,
        second_half,
        resent,
        control,
        chat,
    }
}

/// A download counting into `counters[k]`.
struct SharedSink(Arc<Vec<AtomicU64>>, usize);

impl FileSink for SharedSink {
    fn write_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        self.0[self.1].fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    fn finish(self: Box<Self>) -> io::Result<PathBuf> {
        Ok(PathBuf::from("memory"))
    }
    fn abort(self: Box<Self>) {}
}

/// A raw UDP blast from the home to the world at `pace` datagrams/s for `secs`; returns the
/// datagrams per second that arrived over the last three quarters, and the share of all
/// sent that arrived.
fn blast(lab: &Lab, pace: f64, secs: f64) -> (f64, f64) {
    let rx: UdpSocket = in_ns(&lab.world, || {
        UdpSocket::bind(SocketAddrV4::new(lab::WORLD, 0))
    });
    let to = rx.local_addr().unwrap();
    let tx: UdpSocket = in_ns(&lab.home, || {
        UdpSocket::bind(SocketAddrV4::new(lab::HOME, 0))
    });
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let steady = start + Duration::from_secs_f64(secs / 4.0);
    let end = start + Duration::from_secs_f64(secs);
    let counter = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (mut all, mut late) = (0u64, 0u64);
        let mut last = None;
        loop {
            match rx.recv(&mut buf) {
                Ok(_) => {
                    all += 1;
                    let now = Instant::now();
                    if now >= steady {
                        late += 1;
                        last = Some(now);
                    }
                }
                Err(_) if Instant::now() > end => break,
                Err(_) => {}
            }
        }
        (all, late, last)
    });
    let payload = vec![0x42u8; BLAST_PAYLOAD];
    let mut sent = 0u64;
    while Instant::now() < end {
        let due = (start.elapsed().as_secs_f64() * pace) as u64;
        while sent < due {
            let _ = tx.send_to(&payload, to);
            sent += 1;
        }
        thread::sleep(Duration::from_micros(200));
    }
    let (all, late, last) = counter.join().unwrap();
    let span = last.map_or(1.0, |l| (l - steady).as_secs_f64().max(1e-3));
    (late as f64 / span, all as f64 / sent.max(1) as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

/// Whether the row named `label` runs (`BENCH_PATH_ONLY`: the rows whose name holds it).
fn wanted(label: &str) -> bool {
    std::env::var("BENCH_PATH_ONLY").map_or(true, |only| label.contains(&only))
}

fn main() {
    let runs = (arg_or(3.0) as usize).max(1);
    let size = std::env::var("BENCH_PATH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32)
        * MIB;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "bench_path: {} MiB, {runs} run(s) of each; load average {}",
        size / MIB,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut lab = Lab::start("bpath", LinkConfig::default(), LinkConfig::default(), 1)
        .unwrap_or_else(|e| {
            eprintln!("bench_path needs root, iproute2, nftables and /dev/net/tun: {e}");
            std::process::exit(2);
        });
    let (per_sec, arrived) = blast(&lab, 40_000.0, 1.0);
    println!(
        "emulator ceiling check: unshaped blast of 40,000 datagrams/s for 1 s: {:.0}% arrived ({per_sec:.0}/s)",
        arrived * 100.0
    );
    let file_bytes = |datagrams: f64| datagrams * CHUNK_SIZE as f64;
    let mut lines = Vec::new();

    // One transfer over each path.
    let single = [
        (
            Path {
                rtt_ms: 20,
                mbit: 100,
                loss: 0.0,
            },
            0.8,
        ),
        (
            Path {
                rtt_ms: 50,
                mbit: 100,
                loss: 0.0,
            },
            0.8,
        ),
        (
            Path {
                rtt_ms: 100,
                mbit: 100,
                loss: 0.0,
            },
            0.8,
        ),
        (
            Path {
                rtt_ms: 50,
                mbit: 100,
                loss: 0.01,
            },
            0.5,
        ),
    ];
    for (k, (path, goal)) in single.iter().enumerate() {
        if !wanted(&path.label()) {
            continue;
        }
        let mut shares = Vec::new();
        let mut halves = Vec::new();
        let mut raws = Vec::new();
        let mut resent = Vec::new();
        for run in 0..runs {
            let seed = 100 + (k * 10 + run) as u64;
            lab.start_emulator(path.link(), path.link(), seed).unwrap();
            let pace = 1.2 * path.rate() as f64 / (BLAST_PAYLOAD + 28) as f64;
            let (per_sec, _) = blast(&lab, pace, 2.0);
            raws.push(file_bytes(per_sec) / path.rate() as f64);
            lab.start_emulator(path.link(), path.link(), seed).unwrap();
            let out = transfers(&lab, size, 1, false);
            let stats = lab.stats();
            let share = out.rates[0] / path.rate() as f64;
            let half = out.second_half[0] / path.rate() as f64;
            println!(
                "  {} run {run}: {:.1} MB/s = {:.0}% of the link ({:.0}% over the second half; raw UDP {:.0}%); {} chunks resent; window at most {} kB, cut {} times for a queue, {} for loss; emulator: {} dropped by the queue, {} lost at random up",
                path.label(),
                out.rates[0] / 1e6,
                share * 100.0,
                half * 100.0,
                raws.last().unwrap() * 100.0,
                out.resent[0],
                out.control[0].0 / 1000,
                out.control[0].1,
                out.control[0].2,
                stats.up.link.dropped_queue,
                stats.up.link.dropped_loss,
            );
            shares.push(share);
            halves.push(half);
            resent.push(out.resent[0] as f64);
        }
        let (share, raw) = (median(shares), median(raws));
        lines.push((
            format!("bench_path {}", path.label()),
            format!(
                "{:.0}% of the link, {:.1} MB/s ({:.0}% over the second half; raw UDP {:.0}%, ratio {:.2}); {:.0} chunks resent",
                share * 100.0,
                share * path.rate() as f64 / 1e6,
                median(halves) * 100.0,
                raw * 100.0,
                share / raw,
                median(resent)
            ),
            format!(">= {:.0}%", goal * 100.0),
            share >= *goal,
        ));
    }

    // Two transfers at once over one 50 ms / 100 Mbit/s link.
    let path = Path {
        rtt_ms: 50,
        mbit: 100,
        loss: 0.0,
    };
    let (mut togethers, mut ratios) = (Vec::new(), Vec::new());
    for run in 0..runs * usize::from(wanted("two transfers")) {
        lab.start_emulator(path.link(), path.link(), 200 + run as u64)
            .unwrap();
        let out = transfers(&lab, size, 2, false);
        let together = out.rates.iter().sum::<f64>() / path.rate() as f64;
        let (a, b) = (out.rates[0], out.rates[1]);
        let ratio = a.min(b) / a.max(b).max(1.0);
        println!(
            "  two transfers run {run}: {:.1} and {:.1} MB/s, together {:.0}% of the link, ratio {ratio:.2}; {:?} chunks resent",
            a / 1e6,
            b / 1e6,
            together * 100.0,
            out.resent
        );
        togethers.push(together);
        ratios.push(ratio);
    }
    let two_ran = !togethers.is_empty();
    let (together, ratio) = (median(togethers), median(ratios));
    if two_ran {
        lines.push((
            "bench_path two transfers at once, 50 ms, 100 Mbit/s".to_string(),
            format!(
                "together {:.0}% of the link, slower/faster {ratio:.2}",
                together * 100.0
            ),
            ">= 80% and >= 0.40".to_string(),
            together >= 0.8 && ratio >= 0.4,
        ));
    }

    // Chat during a 50 ms / 20 Mbit/s transfer.
    let path = Path {
        rtt_ms: 50,
        mbit: 20,
        loss: 0.0,
    };
    let (mut p99s, mut bases, mut shares) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs * usize::from(wanted("chat")) {
        lab.start_emulator(path.link(), path.link(), 300 + run as u64)
            .unwrap();
        let out = transfers(&lab, size / 2, 1, true);
        let Some((mut during, base)) = out.chat else {
            println!("  chat run {run}: the transfer failed");
            continue;
        };
        // The three slowest, with their place in the run (one message every 50 ms).
        let mut slowest: Vec<(usize, Duration)> = during.iter().copied().enumerate().collect();
        slowest.sort_by_key(|&(_, d)| std::cmp::Reverse(d));
        let slowest: Vec<String> = slowest
            .iter()
            .take(3)
            .map(|&(k, d)| format!("#{k} {:.1} ms", ms(d)))
            .collect();
        during.sort();
        let p99 = percentile(&during, 0.99);
        let share = out.rates[0] / path.rate() as f64;
        println!(
            "  chat run {run}: {} messages during a transfer at {:.0}% of the link: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (slowest: {}); base round trip {:.1} ms",
            during.len(),
            share * 100.0,
            ms(percentile(&during, 0.5)),
            ms(p99),
            ms(*during.last().unwrap_or(&Duration::ZERO)),
            slowest.join(", "),
            ms(base)
        );
        p99s.push(ms(p99));
        bases.push(ms(base));
        shares.push(share);
    }
    let chat_ran = !p99s.is_empty();
    let (p99, base) = (median(p99s), median(bases));
    if chat_ran {
        lines.push((
        "bench_path chat during a transfer, 50 ms, 20 Mbit/s".to_string(),
        format!(
            "p99 {p99:.1} ms = {:.2} x the base round trip ({base:.1} ms); transfer {:.0}% of the link",
            p99 / base.max(1e-9),
            median(shares) * 100.0
        ),
            "p99 <= 1.5 x base".to_string(),
            p99 <= 1.5 * base,
        ));
    }
    drop(lab);
    for (name, value, goal, ok) in lines {
        target(&name, &value, &goal, ok);
    }
}
