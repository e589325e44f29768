//! Attacks on `p2pchat server` over the wire, through the real binary on loopback: a `List`
//! flood from a registered client, a registration flood from the legitimate client's own IP
//! address, a few addresses of one network trying to fill the table.
//!
//! Every flood is bounded in count and time (a few seconds at most) and goes to 127.0.0.1.
//! The state machine's rules behind them are tested with a simulated clock in
//! `tests/registry.rs`; these check that the binary applies them, with its flags.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::Server;
use p2pchat::wire::{self, decode_all, encode, ClientId, ErrorCode, Message, Token};

fn socket_on(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

/// Every message in the next datagram from `server`, or none within the read timeout.
fn recv_all(sock: &UdpSocket, server: SocketAddr) -> Option<Vec<Message>> {
    let mut buf = [0u8; 65_536];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == server => {
                return Some(
                    decode_all(&buf[..n]).expect("the server sent an undecodable datagram"),
                )
            }
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// Registers `sock` (a few tries); panics if the server refuses.
fn register(sock: &UdpSocket, server: SocketAddr) -> (ClientId, Token) {
    for _ in 0..5 {
        sock.send_to(&encode(&Message::Register { want_id: None }), server)
            .unwrap();
        if let Some(answers) = recv_all(sock, server) {
            match &answers[..] {
                [Message::Registered { id, token, .. }] => return (*id, *token),
                other => panic!("Register answered {other:?}"),
            }
        }
    }
    panic!("no answer to Register");
}

// ---------------------------------------------------------------- List flood

/// A registered client sends `List` as fast as it can, eight to a datagram, for 2 s. It
/// gets no more pages than its burst and rate allow; another client's lookups are all
/// answered, none slower than 200 ms.
#[test]
fn a_list_flood_gets_the_list_rate_and_other_clients_lookups_are_answered() {
    let server = Server::start(&["--list-rate", "10", "--list-burst", "20"]);
    let addr = server.addr;
    // Some clients to list: pages of a few hundred bytes.
    let others: Vec<UdpSocket> = (0..30).map(|_| socket_on("127.0.0.1")).collect();
    for s in &others {
        register(s, addr);
    }
    let flooder = socket_on("127.0.0.1");
    let me = register(&flooder, addr);
    let victim = socket_on("127.0.0.1");
    let victim_id = register(&victim, addr).0;

    let stop = Arc::new(AtomicBool::new(false));
    let pages = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stop, pages, sent) = (Arc::clone(&stop), Arc::clone(&pages), Arc::clone(&sent));
        let flooder = flooder.try_clone().unwrap();
        thread::spawn(move || {
            let mut packer = wire::Packer::new();
            let mut datagram = Vec::new();
            for _ in 0..8 {
                packer.push(
                    addr,
                    &Message::List {
                        id: me.0,
                        token: me.1,
                        after: None,
                    },
                    |_, d| datagram = d.to_vec(),
                );
            }
            packer.flush(|_, d| datagram = d.to_vec());
            assert_eq!(decode_all(&datagram).unwrap().len(), 8);
            flooder.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 65_536];
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(2) {
                if flooder.send_to(&datagram, addr).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                while let Ok((n, _)) = flooder.recv_from(&mut buf) {
                    let listings = decode_all(&buf[..n])
                        .unwrap()
                        .iter()
                        .filter(|m| matches!(m, Message::Listing { .. }))
                        .count();
                    pages.fetch_add(listings as u64, Ordering::Relaxed);
                }
                // About 20,000 datagrams a second: a flood, without starving this machine.
                thread::sleep(Duration::from_micros(50));
            }
            thread::sleep(Duration::from_millis(200));
            while let Ok((n, _)) = flooder.recv_from(&mut buf) {
                let listings = decode_all(&buf[..n])
                    .unwrap()
                    .iter()
                    .filter(|m| matches!(m, Message::Listing { .. }))
                    .count();
                pages.fetch_add(listings as u64, Ordering::Relaxed);
            }
        })
    };
    thread::sleep(Duration::from_millis(100));
    let lookup = encode(&Message::Lookup { id: victim_id });
    let mut slowest = Duration::ZERO;
    let mut lookups = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let t = Instant::now();
        victim.send_to(&lookup, addr).unwrap();
        let answers = recv_all(&victim, addr).expect("a lookup went unanswered during the flood");
        assert!(
            matches!(answers[..], [Message::Found { .. }]),
            "{answers:?}"
        );
        slowest = slowest.max(t.elapsed());
        lookups += 1;
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let (pages, sent) = (pages.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
    println!("{sent} List datagrams sent, {pages} pages received; {lookups} lookups, slowest {slowest:?}");
    assert!(sent > 1000, "only {sent} datagrams: not a flood");
    // The burst (20) and 10 a second for about 2.3 s, with room for timing.
    assert!(
        pages <= 20 + 10 * 3,
        "{pages} pages for {sent} datagrams of 8 Lists"
    );
    assert!(
        slowest < Duration::from_millis(200),
        "slowest lookup {slowest:?}"
    );
}

// ---------------------------------------------------------------- registration flood

/// A flooder on 127.0.0.1 registers from a fresh port every millisecond (the bucket: ten a
/// second). A client on the same IP address, retrying once a second as the client does, is
/// registered within its five tries, and each retry refused meanwhile is told why
/// (`RateLimited`).
#[test]
fn a_client_on_an_ip_that_floods_registrations_is_still_registered() {
    let server = Server::start(&["--register-rate", "10", "--register-burst", "10"]);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let register = encode(&Message::Register { want_id: None });
            let started = Instant::now();
            let mut sent = 0;
            // Fresh ports, never the same twice (as the kernel's choice of a free port might).
            for port in 20_000u16..=65_000 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(20) {
                    break;
                }
                let Ok(s) = UdpSocket::bind(("127.0.0.1", port)) else {
                    continue;
                };
                let _ = s.send_to(&register, addr);
                sent += 1;
                thread::sleep(Duration::from_millis(1));
            }
            sent as f64 / started.elapsed().as_secs_f64()
        })
    };
    // Let the flood empty the bucket.
    thread::sleep(Duration::from_millis(300));
    // The client tries once a second, five times. Its first try finds a token about once
    // in 100 runs (one appears every 100 ms, the flood takes it within 1 ms); then it was
    // not refused, and a fresh client tries again.
    let mut outcome = None;
    for _client in 0..3 {
        let client = socket_on("127.0.0.1");
        client
            .set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        let mut answers = Vec::new();
        let mut registered_at = None;
        for try_ in 1..=5 {
            let t = Instant::now();
            client
                .send_to(&encode(&Message::Register { want_id: None }), addr)
                .unwrap();
            match recv_all(&client, addr).as_deref() {
                Some([Message::Registered { .. }]) => {
                    registered_at = Some(try_);
                    break;
                }
                Some([Message::Error { code, .. }]) => answers.push(Some(*code)),
                Some(other) => panic!("{other:?}"),
                None => answers.push(None),
            }
            thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
        }
        if registered_at != Some(1) {
            outcome = Some((registered_at, answers));
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rate = flood.join().unwrap();
    let (registered_at, answers) = outcome.expect("three clients registered at their first try");
    println!("flood: {rate:.0} registrations a second; the client: {answers:?}, then registered at try {registered_at:?}");
    assert!(rate > 100.0, "only {rate:.0} flood registrations a second");
    assert!(
        registered_at.is_some(),
        "the client was never registered; its answers: {answers:?}"
    );
    // Its first try may go unanswered (the flood's fresh addresses share a few answers a
    // second); every retry refused is told why.
    assert!(
        answers[1..]
            .iter()
            .all(|a| *a == Some(ErrorCode::RateLimited)),
        "a retry refused without being told why: {answers:?}"
    );
}

/// `--max-clients 200`: eleven addresses of 127.0.0.0/24, five ports each, get the
/// network's share (25) and `ServerFull` after it; another network still registers.
#[test]
fn eleven_addresses_of_one_network_cannot_fill_max_clients() {
    let server = Server::start(&[
        "--max-clients",
        "200",
        "--register-rate",
        "1000",
        "--register-burst",
        "1000",
    ]);
    let addr = server.addr;
    let mut sockets = Vec::new();
    let (mut registered, mut full) = (0, 0);
    for host in 1..=11 {
        for _ in 0..5 {
            let s = socket_on(&format!("127.0.0.{host}"));
            s.send_to(&encode(&Message::Register { want_id: None }), addr)
                .unwrap();
            match recv_all(&s, addr).as_deref() {
                Some([Message::Registered { .. }]) => registered += 1,
                Some(
                    [Message::Error {
                        code: ErrorCode::ServerFull,
                        detail,
                    }],
                ) => {
                    assert!(detail.contains("127.0.0.0/24"), "{detail}");
                    full += 1;
                }
                other => panic!("{other:?}"),
            }
            sockets.push(s);
        }
    }
    assert_eq!((registered, full), (25, 30));
    register(&socket_on("127.0.1.1"), addr);
}
