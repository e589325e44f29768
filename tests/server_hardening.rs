//! Attacks on `p2pchat server` over the wire, through the real binary on loopback: a `List`
//! flood from a registered client, a registration flood from the legitimate client's own IP
//! address, a few addresses of one network trying to fill the table; and a server whose
//! stdout nobody reads.
//!
//! Every flood is bounded in count and time (a few seconds at most) and goes to 127.0.0.1.
//! The state machine's rules behind them are tested with a simulated clock in
//! `tests/registry.rs`; these check that the binary applies them, with its flags.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::{parse_listening_line, Server};
use p2pchat::wire::{self, decode_all, encode_request, ClientId, ErrorCode, Message, Token};

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
        sock.send_to(&encode_request(&Message::register(None, [0; 32])), server)
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
                        nonce: 0,
                        pad: Default::default(),
                    },
                    |_, d| datagram = d.to_vec(),
                );
            }
            packer.flush(|_, d| datagram = d.to_vec());
            assert_eq!(decode_all(&datagram).unwrap().len(), 8);
            flooder.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 65_536];
            // Counts the pages received so far.
            let mut count_pages = || {
                while let Ok((n, _)) = flooder.recv_from(&mut buf) {
                    let listings = decode_all(&buf[..n])
                        .unwrap()
                        .iter()
                        .filter(|m| matches!(m, Message::Listing { .. }))
                        .count();
                    pages.fetch_add(listings as u64, Ordering::Relaxed);
                }
            };
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(2) {
                if flooder.send_to(&datagram, addr).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                count_pages();
                // About 20,000 datagrams a second: a flood, without starving this machine.
                thread::sleep(Duration::from_micros(50));
            }
            thread::sleep(Duration::from_millis(200));
            count_pages();
        })
    };
    thread::sleep(Duration::from_millis(100));
    let lookup = encode_request(&Message::lookup(victim_id));
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
            let register = encode_request(&Message::register(None, [0; 32]));
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
                .send_to(&encode_request(&Message::register(None, [0; 32])), addr)
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
            s.send_to(&encode_request(&Message::register(None, [0; 32])), addr)
                .unwrap();
            match recv_all(&s, addr).as_deref() {
                Some([Message::Registered { .. }]) => registered += 1,
                Some(
                    [Message::Error {
                        code: ErrorCode::ServerFull,
                        detail,
                        ..
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

// ---------------------------------------------------------------- stdout nobody reads

/// A child process killed and reaped when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server's stdout is a pipe that the test stops reading after the first line. Clients
/// register and leave for 3 s, so the server prints far more than the pipe holds (its
/// table of a few hundred rows, ten times a second). Lookups are answered throughout, each
/// within 500 ms; once the pipe is read again, a line says how many lines were dropped.
#[test]
fn a_server_whose_stdout_is_not_read_keeps_answering() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_p2pchat"))
        .args([
            "server",
            "--bind",
            "127.0.0.1:0",
            "--register-rate",
            "0",
            "--table-rows",
            "1000",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start the p2pchat binary");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let child = Killed(child);
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let addr = parse_listening_line(first.trim_end()).expect("the listening line");
    // From here on, nobody reads stdout until the churn is over.

    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicU64::new(0));
    let churn = {
        let (stop, changes) = (Arc::clone(&stop), Arc::clone(&changes));
        thread::spawn(move || {
            let sockets: Vec<UdpSocket> = (0..300).map(|_| socket_on("127.0.0.1")).collect();
            for s in &sockets {
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
            }
            let mut held: Vec<Option<(ClientId, Token)>> = vec![None; sockets.len()];
            let started = Instant::now();
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(3) {
                // Keep most registered (a long table), and churn one in three.
                let i = k % sockets.len();
                k += 1;
                let msg = match held[i] {
                    Some((id, token)) if k % 3 == 0 => Message::leave(id, token),
                    Some(_) => continue,
                    None => Message::register(None, [0; 32]),
                };
                sockets[i].send_to(&encode_request(&msg), addr).unwrap();
                match recv_all(&sockets[i], addr).as_deref() {
                    Some([Message::Registered { id, token, .. }]) => held[i] = Some((*id, *token)),
                    Some([Message::LeaveAck { .. }]) => held[i] = None,
                    _ => continue,
                }
                changes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let prober = socket_on("127.0.0.1");
    let lookup = encode_request(&Message::lookup(1));
    let (mut lookups, mut slowest) = (0, Duration::ZERO);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        prober.send_to(&lookup, addr).unwrap();
        let answer = recv_all(&prober, addr).unwrap_or_else(|| {
            panic!(
                "a lookup went unanswered after {:?} of churn ({} changes)",
                started.elapsed(),
                changes.load(Ordering::Relaxed)
            )
        });
        assert!(
            matches!(
                answer[..],
                [Message::Found { .. } | Message::Inactive { .. }]
            ),
            "{answer:?}"
        );
        slowest = slowest.max(t.elapsed());
        lookups += 1;
        thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    let changes = changes.load(Ordering::Relaxed);
    println!("{changes} registrations and leaves, {lookups} lookups, slowest {slowest:?}");
    assert!(changes > 1000, "only {changes} changes: too little output");
    assert!(
        slowest < Duration::from_millis(500),
        "slowest lookup {slowest:?}"
    );

    // Read again: the server says how many lines it dropped, at its next change.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The backlog is up to 64 chunks of up to 1 MiB (OutputQueue), read line by line by a
    // debug build while the file's other tests load the machine. Each quiet 200 ms, one
    // more change makes the server print: the notice goes with the first text that gets
    // through, and a change printed while the queue was still full is dropped (and
    // counted) in its turn, so one late change was not always enough.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut late_changes = 0;
    let notice = loop {
        assert!(
            Instant::now() < deadline,
            "no line about dropped output ({late_changes} changes after the churn)"
        );
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("lines of output dropped") => break line,
            Ok(_) => {}
            Err(_) => {
                register(&socket_on("127.0.0.1"), addr);
                late_changes += 1;
            }
        }
    };
    println!("{notice}");
    let n: u64 = notice
        .trim_start_matches('(')
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{notice:?}"));
    assert!(n > 0, "{notice}");
    drop(child);
}

// ---------------------------------------------------------------- names in the table

/// A display name with a right-to-left override (which the server accepts: it is not a
/// control character) is printed as `p2pchat::text::sanitize` makes it, in the change line
/// and in the table. (An escape sequence never gets this far: the server refuses a display
/// name with control characters; the table's unit tests cover it.)
#[test]
fn the_printed_table_shows_a_display_name_as_sanitize_makes_it() {
    use p2pchat::text::sanitize;
    let server = Server::start(&[]);
    let sock = socket_on("127.0.0.1");
    let (id, token) = register(&sock, server.addr);
    let me = sock.local_addr().unwrap();
    server.expect_next_line(&format!("client {id} joined from {me}"));
    let display = "Mallory \u{202e}fdp.exe";
    sock.send_to(
        &encode_request(&Message::Claim {
            id,
            token,
            name: "mallory".into(),
            display_name: Some(display.into()),
            proof: None,
            nonce: 0,
            pad: Default::default(),
        }),
        server.addr,
    )
    .unwrap();
    let answers = recv_all(&sock, server.addr).expect("an answer to Claim");
    assert!(
        matches!(answers[..], [Message::Claimed { .. }]),
        "{answers:?}"
    );
    let safe = sanitize(display);
    let line = server
        .proc
        .wait_for_line("the change line", |l| l.contains("is now"));
    assert_eq!(line, format!("client {id} at {me} is now mallory ({safe})"));
    let row = server
        .proc
        .wait_for_line("the table row", |l| l.contains("mallory"));
    assert!(row.ends_with(&format!("  {safe}")), "{row:?}");
}
