//! Throughput of one session: how fast two clients move reliable, ordered messages.
//!
//! A rendezvous server and two [`Endpoint`]s (the library's client loop: a `Peer` with its
//! mio socket) on loopback, each on a thread of its own. They connect; then one sends
//! 1,000,000 messages of 100 bytes, as a bot or a pasted file would: it keeps up to
//! `BACKLOG` messages queued ahead of what has been delivered. The receiver checks that
//! every message arrives exactly once, in order, with the right text; the sender checks that
//! it is told `Delivered` for each, in order.
//!
//! Senders run on CPU 0 and receivers on CPU 1 (pinned), so that each has a core of its own.
//!
//! In the same run, the baseline: one plain UDP socket sends 1,000,000 datagrams of 100 bytes
//! to another as fast as it can (one `send_to` each); the receiver (a mio loop, drained until
//! `WouldBlock`) counts what arrives within the blast and a short grace. Whatever the kernel
//! drops is simply lost: this is the speed of raw, unreliable UDP on this machine.
//!
//! Prints delivered messages per second, datagrams per message in each direction,
//! retransmissions, the baseline's datagrams per second, and the ratio.
//!
//! ```sh
//! cargo run --release --example bench_peer            # 1,000,000 messages
//! cargo run --release --example bench_peer -- 0.2     # a fifth of that
//! ```

mod bench_common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bench_common::{
    arg_or, connected_pair, pin_to_cpu, target, thread_cpu, thread_id, us, BlastReceiver,
    ServerThread,
};
use p2pchat::peer::Event;
use p2pchat::registry::RegistryConfig;

/// Messages queued ahead of the last one delivered, at most.
const BACKLOG: u64 = 100_000;
const MESSAGE_LEN: usize = 100;

fn main() {
    // What the sealing of every datagram of a session costs, measured first.
    bench_common::print_crypto_costs(100);
    let scale = arg_or(1.0);
    let n = ((1_000_000.0 * scale) as u64).max(1000);
    // Senders on CPU 0, receivers on CPU 1.
    let pinned = pin_to_cpu(0);
    println!("bench_peer: {n} messages of {MESSAGE_LEN} bytes, loopback; threads pinned to CPUs: {pinned}");

    let bare = bare_blast(n);
    println!(
        "bare UDP: sent {} datagrams in {:.3} s ({:.0}/s); received {} ({:.1}% lost) in {:.3} s: {:.0} datagrams/s",
        n,
        bare.send_time.as_secs_f64(),
        n as f64 / bare.send_time.as_secs_f64(),
        bare.received,
        100.0 * (n - bare.received) as f64 / n as f64,
        bare.receive_time.as_secs_f64(),
        bare.rate(),
    );

    let p2p = reliable(n);
    let rate = n as f64 / p2p.elapsed.as_secs_f64();
    println!(
        "p2pchat: {n} messages delivered in {:.3} s: {rate:.0} messages/s",
        p2p.elapsed.as_secs_f64()
    );
    println!(
        "  datagrams per message: {:.4} sender -> receiver ({} datagrams), {:.4} receiver -> sender ({} datagrams)",
        p2p.forward as f64 / n as f64,
        p2p.forward,
        p2p.backward as f64 / n as f64,
        p2p.backward,
    );
    println!(
        "  retransmissions {}, duplicates dropped by the receiver {}, lost 0, out of order 0 (checked)",
        p2p.retransmissions, p2p.duplicates
    );
    let busy = |cpu: Duration| 100.0 * cpu.as_secs_f64() / p2p.elapsed.as_secs_f64();
    println!(
        "  CPU per message: sender thread {:.2} us ({:.0}% busy), receiver thread {:.2} us ({:.0}% busy)",
        us(p2p.sender_cpu) / n as f64,
        busy(p2p.sender_cpu),
        us(p2p.receiver_cpu) / n as f64,
        busy(p2p.receiver_cpu),
    );
    let ratio = rate / bare.rate();
    println!("ratio p2pchat / bare UDP: {ratio:.2}");
    target(
        "bench_peer ratio",
        &format!("{ratio:.2}"),
        ">= 0.80, nothing lost, duplicated or out of order",
        ratio >= 0.8,
    );
}

struct Bare {
    received: u64,
    send_time: Duration,
    /// From the first send to the last datagram received.
    receive_time: Duration,
}

impl Bare {
    fn rate(&self) -> f64 {
        self.received as f64 / self.receive_time.as_secs_f64()
    }
}

fn bare_blast(n: u64) -> Bare {
    let started = Instant::now();
    let receiver = BlastReceiver::start(started, n, |len| {
        debug_assert_eq!(len, MESSAGE_LEN);
        1
    });
    let to = receiver.addr;
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let payload = [b'x'; MESSAGE_LEN];
    for _ in 0..n {
        // A full receive buffer drops the datagram; the send itself does not fail.
        let _ = tx.send_to(&payload, to);
    }
    let send_time = started.elapsed();
    let (received, receive_time) = receiver.finish();
    Bare {
        received,
        send_time,
        receive_time,
    }
}

/// The text of message `seq`: its number, then filler, `MESSAGE_LEN` bytes in all.
fn message_text(seq: u64, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    let _ = write!(out, "message {seq:>10} ");
    while out.len() < MESSAGE_LEN {
        out.push(char::from(b'a' + (out.len() as u8 + seq as u8) % 26));
    }
}

struct Reliable {
    elapsed: Duration,
    forward: u64,
    backward: u64,
    retransmissions: u64,
    duplicates: u64,
    /// CPU time of the sending and the receiving thread during the transfer.
    sender_cpu: Duration,
    receiver_cpu: Duration,
}

fn reliable(n: u64) -> Reliable {
    let server = ServerThread::start(RegistryConfig::default(), Some(1));
    let (mut a, mut b, ida, idb) = connected_pair(server.addr);
    let done = Arc::new(AtomicBool::new(false));

    let receiver = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            pin_to_cpu(1);
            let (sent0, _) = b.datagrams();
            let me = thread_id();
            let cpu0 = thread_cpu(me);
            let mut cpu = Duration::ZERO;
            let mut expected = 1u64;
            let mut want = String::new();
            while !done.load(Ordering::SeqCst) {
                b.turn(Some(Duration::from_millis(20)), |_| {}).unwrap();
                while let Some(ev) = b.peer().poll_event() {
                    match ev {
                        Event::Message { from, seq, text } => {
                            assert_eq!(from, ida);
                            assert_eq!(seq, expected, "out of order, lost or duplicated");
                            message_text(seq, &mut want);
                            assert_eq!(text, want, "message {seq} garbled");
                            expected += 1;
                            if expected > n {
                                cpu = thread_cpu(me).saturating_sub(cpu0);
                            }
                        }
                        other => panic!("receiver: unexpected {other:?}"),
                    }
                }
            }
            assert_eq!(expected, n + 1, "every message shown");
            let (sent, _) = b.datagrams();
            (sent - sent0, b.peer().stats().duplicates, cpu)
        })
    };

    let (sent0, _) = a.datagrams();
    let me = thread_id();
    let cpu0 = thread_cpu(me);
    let started = Instant::now();
    let mut next = 1u64;
    let mut delivered = 0u64;
    let mut text = String::new();
    while delivered < n {
        while next <= n && next - 1 - delivered < BACKLOG {
            message_text(next, &mut text);
            let seqs = a.peer().send(Instant::now(), Some(idb), &text).unwrap();
            assert_eq!(seqs, [next]);
            next += 1;
        }
        a.turn(Some(Duration::from_millis(20)), |_| {}).unwrap();
        while let Some(ev) = a.peer().poll_event() {
            match ev {
                Event::Sent { .. } => {}
                Event::Delivered { peer, seq } => {
                    assert_eq!(peer, idb);
                    assert_eq!(seq, delivered + 1, "delivered out of order");
                    delivered += 1;
                }
                other => panic!("sender: unexpected {other:?}"),
            }
        }
    }
    let elapsed = started.elapsed();
    let sender_cpu = thread_cpu(me).saturating_sub(cpu0);
    done.store(true, Ordering::SeqCst);
    let (backward, duplicates, receiver_cpu) = receiver.join().expect("receiver");
    let (sent, _) = a.datagrams();
    let retransmissions = a.peer().stats().retransmissions;
    server.stop();
    Reliable {
        elapsed,
        forward: sent - sent0,
        backward,
        retransmissions,
        duplicates,
        sender_cpu,
        receiver_cpu,
    }
}
