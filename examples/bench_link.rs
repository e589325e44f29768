//! The link emulator's own ceiling: how many 1,200-byte UDP datagrams a second it forwards
//! with no delay, no rate cap and no loss, in the lab of `tests/common/lab.rs` (home -
//! emulator - router with NAT - world), against the same blast from the router to the world
//! (the veth alone, no emulator) in the same run.
//!
//! A sender in one namespace sends at a fixed pace, a receiver in the other counts; the pace
//! steps up (20,000 datagrams a second, then 40,000, ...) until less than 99% arrives. A
//! step's figure is what arrived per second. The ceiling is the highest pace at which at
//! least 99% arrived; the most that arrived at any pace is printed too. Needs root,
//! iproute2, nftables and /dev/net/tun.
//!
//! ```sh
//! cargo run --release --example bench_link            # 1 s per step
//! cargo run --release --example bench_link -- 0.5     # 0.5 s per step
//! ```

mod bench_common;
mod link_common;

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_common::{arg_or, target, thread_cpu};
use link_common::emulator::{self, LinkConfig};
use link_common::lab::{self, Lab};
use link_common::netns::{self, Netns};

/// UDP payload bytes of each datagram.
const PAYLOAD: usize = 1_200;
/// Bytes of each IP packet (IPv4 and UDP headers).
const PACKET: usize = PAYLOAD + 28;
/// The paces tried, in datagrams per second.
const STEP: u64 = 20_000;
const MAX_PACE: u64 = 400_000;

struct Step {
    pace: u64,
    sent: u64,
    received: u64,
    /// Datagrams per second received, over the step.
    per_sec: f64,
}

/// The id of this process's thread named `name` (Linux: /proc/self/task/*/comm).
fn thread_named(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc/self/task").ok()?.find_map(|e| {
        let e = e.ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == name).then(|| e.file_name().to_str()?.parse().ok())?
    })
}

fn bind_in(ns: &Netns, addr: SocketAddrV4) -> UdpSocket {
    ns.bind_udp(addr).unwrap_or_else(|e| panic!("{e}"))
}

/// Sends at `pace` datagrams a second for `length` from `tx` to `to`, counting what `rx`
/// receives.
fn step(tx: &UdpSocket, to: SocketAddr, rx: &UdpSocket, pace: u64, length: Duration) -> Step {
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (rx, done) = (rx.try_clone().expect("clone"), Arc::clone(&done));
        std::thread::spawn(move || {
            rx.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            let mut buf = vec![0u8; 2048];
            let (mut received, mut first, mut last) = (0u64, None, None);
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                match rx.recv(&mut buf) {
                    Ok(_) => {
                        let now = Instant::now();
                        first.get_or_insert(now);
                        last = Some(now);
                        received += 1;
                    }
                    Err(_) if done.load(Ordering::SeqCst) => break,
                    Err(_) => {}
                }
            }
            (received, first.zip(last).map(|(f, l)| l - f))
        })
    };
    // Bursts every 100 µs (sleeps are coarser; the schedule catches up).
    let data = vec![0x5a; PAYLOAD];
    let total = (pace as f64 * length.as_secs_f64()) as u64;
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        let due = (started.elapsed().as_secs_f64() * pace as f64) as u64;
        while sent < due.min(total) {
            // A full device queue drops the datagram; the count says so.
            let _ = tx.send_to(&data, to);
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    done.store(true, Ordering::SeqCst);
    let (received, span) = receiver.join().expect("the receiver");
    let span = span.unwrap_or_default().max(length.mul_f64(0.5));
    Step {
        pace,
        sent,
        received,
        per_sec: received.saturating_sub(1) as f64 / span.as_secs_f64(),
    }
}

fn mbit(per_sec: f64) -> f64 {
    per_sec * PACKET as f64 * 8.0 / 1e6
}

/// Steps the pace up until less than 99% arrives; returns the ceiling (the last pace with
/// 99%, as measured) and the most received per second. With `emulator` (its thread id and a
/// way to read its counters), also what it read and wrote and the CPU time it used.
fn climb(
    what: &str,
    tx: &UdpSocket,
    to: SocketAddr,
    rx: &UdpSocket,
    length: Duration,
    emulator: Option<(u32, &dyn Fn() -> emulator::WayStats)>,
) -> (f64, f64) {
    println!("{what}:");
    let (mut ceiling, mut most) = (0.0f64, 0.0f64);
    let mut pace = STEP;
    while pace <= MAX_PACE {
        let before = emulator.map(|(tid, stats)| (thread_cpu(tid), stats(), Instant::now()));
        let s = step(tx, to, rx, pace, length);
        let share = s.received as f64 / s.sent.max(1) as f64;
        let mut line = format!(
            "  pace {:>6}/s: sent {:>7}, received {:>7} ({:5.1}%): {:>7.0}/s = {:6.1} Mbit/s",
            s.pace,
            s.sent,
            s.received,
            100.0 * share,
            s.per_sec,
            mbit(s.per_sec)
        );
        if let (Some((tid, stats)), Some((cpu0, w0, t0))) = (emulator, before) {
            let (cpu, w) = (thread_cpu(tid) - cpu0, stats());
            let read = w.link.sent - w0.link.sent;
            line += &format!(
                "; emulator read {read}, wrote {}, busy {:.0}% ({:.2} us of CPU per packet)",
                w.forwarded - w0.forwarded,
                100.0 * cpu.as_secs_f64() / t0.elapsed().as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / read.max(1) as f64
            );
        }
        println!("{line}");
        most = most.max(s.per_sec);
        if share < 0.99 {
            break;
        }
        ceiling = s.per_sec;
        pace += STEP;
        // Let queues drain between steps.
        std::thread::sleep(Duration::from_millis(200));
    }
    (ceiling, most)
}

fn main() {
    let length = Duration::from_secs_f64(arg_or(1.0).clamp(0.1, 60.0));
    let lab = netns::require(
        "bench_link",
        Lab::start("bench", LinkConfig::default(), LinkConfig::default(), 1),
    );
    println!(
        "bench_link: {PAYLOAD}-byte UDP datagrams ({PACKET}-byte IP packets), {length:?} per pace"
    );
    let world = bind_in(&lab.world, SocketAddrV4::new(lab::WORLD, 9200));
    let to = SocketAddr::from((lab::WORLD, 9200));

    let router = bind_in(&lab.router, SocketAddrV4::new(lab::ROUTER_WAN, 9201));
    let (base, base_most) = climb(
        "baseline: router to world (veth, no emulator)",
        &router,
        to,
        &world,
        length,
        None,
    );

    let home = bind_in(&lab.home, SocketAddrV4::new(lab::HOME, 9202));
    let before = lab.stats().up;
    let tid = thread_named("link-emulator").expect("the emulator's thread");
    let up = || lab.stats().up;
    let (ceiling, most) = climb(
        "through the emulator: home to world (TUN, emulator, TUN, NAT, veth)",
        &home,
        to,
        &world,
        length,
        Some((tid, &up)),
    );
    let after = lab.stats().up;
    println!(
        "emulator: {} packets read, {} written, {} refused, {} over its buffer; lateness mean {:.1?}, max {:.1?}",
        after.link.sent - before.link.sent,
        after.forwarded - before.forwarded,
        after.write_errors,
        after.overflow,
        after.late_mean(),
        after.late_max
    );
    println!(
        "ceiling (99% delivered): emulator {ceiling:.0} datagrams/s = {:.1} Mbit/s; baseline {base:.0}/s = {:.1} Mbit/s; ratio {:.2}",
        mbit(ceiling),
        mbit(base),
        ceiling / base.max(1.0)
    );
    println!(
        "most received at any pace: emulator {most:.0}/s = {:.1} Mbit/s; baseline {base_most:.0}/s = {:.1} Mbit/s",
        mbit(most),
        mbit(base_most)
    );
    target(
        "bench_link ceiling",
        &format!("{:.1} Mbit/s ({ceiling:.0} datagrams/s)", mbit(ceiling)),
        ">= 100 Mbit/s",
        mbit(ceiling) >= 100.0,
    );
}
