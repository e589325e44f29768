//! File transfer throughput and memory: a 1 GiB file from one client to another over
//! loopback, against a bare UDP blast of the same bytes in the same run.
//!
//! The file (pseudo-random bytes, written to a temporary directory, never held in memory)
//! goes through the library's client loop, [`Endpoint`], in two child processes (this same
//! program started again), so that each side's peak memory (`VmHWM` of
//! `/proc/self/status`) is its own: the receiver writes it to its downloads directory and
//! checks its SHA-256; the sender hashes it first (timed apart), then offers it. The
//! throughput is the receiver's: from `getfile` to the file verified and renamed. The same
//! runs with a 64 MiB file show whether the peak memory depends on the file's size.
//!
//! The baseline, in the same run: one plain UDP socket reads the same file and sends its
//! bytes in datagrams of the same size as p2pchat's `Chunk`s, as fast as it can (one
//! `send_to` each), to a mio socket that counts what arrives. What the kernel drops is
//! simply lost: that is the speed of raw, unreliable UDP here.
//!
//! ```sh
//! cargo run --release --example bench_file            # 1 GiB (and 64 MiB)
//! cargo run --release --example bench_file -- 0.25    # a quarter of that
//! ```

mod bench_common;

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bench_common::{arg_or, peer_config, pin_to_cpu, target, BlastReceiver, ServerThread};
use p2pchat::app::downloads::{hash_file, DiskSink, DiskSource};
use p2pchat::driver::Endpoint;
use p2pchat::peer::Event;
use p2pchat::registry::RegistryConfig;
use p2pchat::text::safe_file_name;
use p2pchat::wire::{self, ClientId, Message, CHUNK_SIZE};

const MIB: u64 = 1 << 20;

fn main() {
    // What the sealing of every datagram of a session costs, measured first.
    bench_common::print_crypto_costs(100);
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--child-receiver") => return child_receiver(&args[2], &args[3]),
        Some("--child-sender") => return child_sender(&args[2], &args[3], &args[4]),
        _ => {}
    }
    let scale = arg_or(1.0);
    let big = ((1024.0 * scale) as u64).max(16) * MIB;
    let small = (big / 16).max(4 * MIB);
    let pinned = pin_to_cpu(0);
    println!(
        "bench_file: files of {} MiB and {} MiB over loopback; threads pinned to CPUs: {pinned}",
        big / MIB,
        small / MIB
    );
    let dir = std::env::temp_dir().join(format!("p2pchat-bench-file-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("downloads")).expect("temporary directory");
    let server = ServerThread::start(RegistryConfig::default(), None);

    let mut results = Vec::new();
    for size in [small, big] {
        let path = dir.join(format!("file-{}MiB.bin", size / MIB));
        write_file(&path, size).expect("write the test file");
        let bare = bare_blast(&path, size);
        let p2p = transfer(server.addr, &path, &dir.join("downloads"));
        let _ = std::fs::remove_file(&p2p.received_path);
        let _ = std::fs::remove_file(&path);
        let mbs = |bytes: u64, d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
        let bare_rate = mbs(bare.received, bare.time);
        let p2p_rate = mbs(size, p2p.elapsed);
        println!("{} MiB:", size / MIB);
        println!(
            "  bare UDP: {} datagrams of {} bytes sent, {:.1}% lost; {:.1} MB/s of file bytes received",
            bare.sent,
            bare.datagram,
            100.0 * (bare.sent - bare.received / CHUNK_SIZE as u64) as f64 / bare.sent as f64,
            bare_rate
        );
        println!(
            "  p2pchat: {:.2} s from getfile to verified: {p2p_rate:.1} MB/s; sender hashed it first in {:.2} s",
            p2p.elapsed.as_secs_f64(),
            p2p.hash_time.as_secs_f64()
        );
        println!(
            "  datagrams: {} sender -> receiver, {} receiver -> sender ({:.3} per chunk)",
            p2p.chunks,
            p2p.acks,
            p2p.acks as f64 / p2p.chunks.max(1) as f64
        );
        println!(
            "  peak memory (VmHWM): sender {} KiB, receiver {} KiB; sender retransmitted {} chunks",
            p2p.sender_hwm_kib, p2p.receiver_hwm_kib, p2p.retransmissions
        );
        println!(
            "  sender's most bytes in flight {} KiB (window peak {} KiB)",
            p2p.in_flight / 1024,
            p2p.max_window / 1024
        );
        results.push((size, p2p_rate / bare_rate, p2p));
    }
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);

    let (_, ratio, big_run) = &results[1];
    let (_, _, small_run) = &results[0];
    println!("ratio p2pchat / bare UDP ({} MiB): {ratio:.2}", big / MIB);
    let grow = |a: u64, b: u64| b as f64 / a as f64;
    let sender_growth = grow(small_run.sender_hwm_kib, big_run.sender_hwm_kib);
    let receiver_growth = grow(small_run.receiver_hwm_kib, big_run.receiver_hwm_kib);
    println!(
        "peak memory {} MiB / {} MiB: sender {sender_growth:.2}x, receiver {receiver_growth:.2}x",
        big / MIB,
        small / MIB
    );
    target(
        "bench_file ratio",
        &format!("{ratio:.2}"),
        ">= 0.70",
        *ratio >= 0.7,
    );
    let flat = sender_growth <= 1.10 && receiver_growth <= 1.10;
    target(
        "bench_file peak memory growth with 16x the file",
        &format!(
            "sender {sender_growth:.2}x, receiver {receiver_growth:.2}x ({} / {} KiB)",
            big_run.sender_hwm_kib, big_run.receiver_hwm_kib
        ),
        "<= 1.10x",
        flat,
    );
}

/// Writes `size` pseudo-random bytes to `path`, a block at a time.
fn write_file(path: &Path, size: u64) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(MIB as usize, File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let k = left.min(MIB) as usize;
        out.write_all(&block[..k])?;
        left -= k as u64;
    }
    // On disk before the runs, so that its write-back does not compete with them.
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// The size of a datagram holding one full `Chunk`, as p2pchat sends it.
fn chunk_datagram_len() -> usize {
    wire::encode(&Message::Chunk {
        from: 1,
        session: u64::MAX / 3,
        n: 1,
        seq: 1_000_000,
        data: vec![0; CHUNK_SIZE],
    })
    .len()
}

struct Bare {
    sent: u64,
    datagram: usize,
    /// File bytes received.
    received: u64,
    /// From the first send to the last datagram received.
    time: Duration,
}

fn bare_blast(path: &Path, size: u64) -> Bare {
    let datagram = chunk_datagram_len();
    let started = Instant::now();
    // File bytes: what a datagram carries beyond the header.
    let receiver = BlastReceiver::start(started, size, move |len| {
        (len - (datagram - CHUNK_SIZE)) as u64
    });
    let to = receiver.addr;
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut file = BufReader::with_capacity(256 * 1024, File::open(path).unwrap());
    let header = datagram - CHUNK_SIZE;
    let mut payload = vec![0u8; datagram];
    let mut sent = 0u64;
    loop {
        let k = read_up_to(&mut file, &mut payload[header..]).unwrap();
        if k == 0 {
            break;
        }
        // A full receive buffer drops the datagram; the send itself does not fail.
        let _ = tx.send_to(&payload[..header + k], to);
        sent += 1;
    }
    let (received, time) = receiver.finish();
    Bare {
        sent,
        datagram,
        received,
        time,
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..])? {
            0 => break,
            k => filled += k,
        }
    }
    Ok(filled)
}

struct Transfer {
    elapsed: Duration,
    hash_time: Duration,
    sender_hwm_kib: u64,
    receiver_hwm_kib: u64,
    retransmissions: u64,
    /// The most bytes the sender had in flight, and its congestion window's peak.
    in_flight: u64,
    max_window: u64,
    received_path: PathBuf,
    /// Datagrams the sender and the receiver sent.
    chunks: u64,
    acks: u64,
}

/// Runs the receiver and the sender as child processes; reads their report lines.
fn transfer(server: SocketAddr, path: &Path, downloads: &Path) -> Transfer {
    let me = std::env::current_exe().expect("this program's path");
    let mut receiver = Command::new(&me)
        .args(["--child-receiver", &server.to_string()])
        .arg(downloads)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the receiver");
    let mut rlines = BufReader::new(receiver.stdout.take().unwrap()).lines();
    let id = field(&mut rlines, "id");
    let mut sender = Command::new(&me)
        .args(["--child-sender", &server.to_string(), &id])
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the sender");
    let mut slines = BufReader::new(sender.stdout.take().unwrap()).lines();
    let hash_time = Duration::from_secs_f64(field(&mut slines, "hashed").parse().unwrap());
    let elapsed = Duration::from_secs_f64(field(&mut rlines, "received").parse().unwrap());
    let acks: u64 = field(&mut rlines, "datagrams").parse().unwrap();
    let received_path = PathBuf::from(field(&mut rlines, "path"));
    let receiver_hwm_kib = field(&mut rlines, "hwm").parse().unwrap();
    let retransmissions = field(&mut slines, "retransmissions").parse().unwrap();
    let chunks: u64 = field(&mut slines, "datagrams").parse().unwrap();
    let inflight = field(&mut slines, "inflight");
    let (in_flight, max_window) = inflight.split_once(' ').expect("two numbers");
    let sender_hwm_kib = field(&mut slines, "hwm").parse().unwrap();
    assert!(receiver.wait().unwrap().success(), "the receiver failed");
    assert!(sender.wait().unwrap().success(), "the sender failed");
    Transfer {
        elapsed,
        hash_time,
        sender_hwm_kib,
        receiver_hwm_kib,
        retransmissions,
        in_flight: in_flight.parse().unwrap(),
        max_window: max_window.parse().unwrap(),
        received_path,
        chunks,
        acks,
    }
}

/// The value of the next `name value` line of a child.
fn field(lines: &mut impl Iterator<Item = io::Result<String>>, name: &str) -> String {
    for line in lines.by_ref() {
        let line = line.expect("read a child's output");
        if let Some(v) = line.strip_prefix(name).and_then(|r| r.strip_prefix(' ')) {
            return v.to_string();
        }
    }
    panic!("a child ended without reporting {name}");
}

/// `VmHWM` of this process, in KiB.
fn peak_memory_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn child_receiver(server: &str, dir: &str) {
    pin_to_cpu(1);
    let mut cfg = peer_config(server.parse().unwrap());
    cfg.files.downloads = PathBuf::from(dir);
    let mut ep = Endpoint::bind("127.0.0.1:0".parse().unwrap(), cfg).unwrap();
    let mut started = None;
    loop {
        ep.turn(Some(Duration::from_millis(50)), |_| {}).unwrap();
        while let Some(ev) = ep.peer().poll_event() {
            match ev {
                Event::Registered { id, .. } => println!("id {id}"),
                Event::Request { from } => {
                    ep.peer().accept(Instant::now(), Some(from)).unwrap();
                }
                Event::FileOffer { n, name, .. } => {
                    let name = safe_file_name(&name).unwrap();
                    let sink = DiskSink::create(Path::new(dir), &name).unwrap();
                    started = Some(Instant::now());
                    ep.peer()
                        .get_file(Instant::now(), n, Box::new(sink))
                        .unwrap();
                }
                Event::FileReceived { path, .. } => {
                    let elapsed = started.expect("got").elapsed();
                    // Let the last acknowledgement go out.
                    let until = Instant::now() + Duration::from_millis(300);
                    while Instant::now() < until {
                        ep.turn(Some(Duration::from_millis(10)), |_| {}).unwrap();
                    }
                    println!("received {}", elapsed.as_secs_f64());
                    println!("datagrams {}", ep.datagrams().0);
                    println!("path {}", path.display());
                    println!("hwm {}", peak_memory_kib());
                    return;
                }
                Event::FileFailed { reason, .. } => panic!("receiver: transfer failed: {reason}"),
                _ => {}
            }
        }
    }
}

fn child_sender(server: &str, peer: &str, path: &str) {
    pin_to_cpu(0);
    let peer: ClientId = peer.parse().unwrap();
    let cfg = peer_config(server.parse().unwrap());
    let mut ep = Endpoint::bind("127.0.0.1:0".parse().unwrap(), cfg).unwrap();
    // The congestion window's peak and the most bytes in flight, reported with the peak
    // memory (the sender reads each chunk as it leaves and keeps no copy for a resend, so
    // its memory should not follow them).
    let mut most = (0u64, 0u64);
    loop {
        ep.turn(Some(Duration::from_millis(50)), |_| {}).unwrap();
        for (_, st) in ep.peer().sender_stats() {
            most = (most.0.max(st.max_window), most.1.max(st.max_in_flight));
        }
        while let Some(ev) = ep.peer().poll_event() {
            match ev {
                Event::Registered { .. } => ep.peer().connect(Instant::now(), peer).unwrap(),
                Event::Connected { .. } => {
                    let t = Instant::now();
                    let (size, sha256) = hash_file(Path::new(path)).unwrap();
                    println!("hashed {}", t.elapsed().as_secs_f64());
                    let source = DiskSource::open(Path::new(path)).unwrap();
                    ep.peer()
                        .send_file(
                            Instant::now(),
                            Some(peer),
                            "bench.bin",
                            size,
                            sha256,
                            Box::new(source),
                        )
                        .unwrap();
                }
                Event::FileSent { .. } => {
                    println!("retransmissions {}", ep.peer().chunk_retransmissions());
                    println!("datagrams {}", ep.datagrams().0);
                    println!("inflight {} {}", most.1, most.0);
                    println!("hwm {}", peak_memory_kib());
                    return;
                }
                Event::FileFailed { reason, .. } => panic!("sender: transfer failed: {reason}"),
                _ => {}
            }
        }
    }
}
