//! The real binaries against a hostile network: what an attacker on the same network sends
//! straight at a client or at the server, from raw UDP sockets on loopback, and what comes
//! back (bytes on the wire, lines on the screen).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{JsonClient, Proc, Server};
use p2pchat::wire::{self, ClientId, ErrorCode, Message};

/// Short resend periods, so that nothing waits long.
const RETRY: &str = "0.3";

/// A socket posing as the rendezvous server.
fn fake_server() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// The next datagram that decodes as `Register`, within `limit`: its source and message.
fn next_register(socket: &UdpSocket, limit: Duration) -> (SocketAddr, Message) {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 65_536];
    while Instant::now() < deadline {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if let Ok(msg @ Message::Register { .. }) = wire::decode(&buf[..n]) {
            return (from, msg);
        }
    }
    panic!("no Register within {limit:?}");
}

/// Characters that must never reach a terminal from the network: escape sequences start
/// with ESC (or a C1 control), BEL ends a title change, U+202E reverses what follows.
fn assert_no_raw_controls(what: &str, text: &str) {
    for c in [
        '\u{1b}', '\u{7}', '\u{9b}', '\u{202E}', '\u{2066}', '\u{200B}',
    ] {
        assert!(
            !text.contains(c),
            "{what} shows U+{:04X} raw: {text:?}",
            c as u32
        );
    }
}

#[test]
fn text_the_server_sends_reaches_the_terminal_made_harmless() {
    let (server, addr) = fake_server();
    let addr = addr.to_string();
    let mut client = Proc::spawn(&[
        "client",
        "--server",
        &addr,
        "--no-state",
        "--retry-interval",
        RETRY,
    ]);
    let hostile = "\u{1b}[2J\u{1b}]0;owned\u{7}\u{1b}[31mred\u{202E}txt.exe\u{200B}";
    // A refusal to wait ("the server says: ...; retrying"), then one that ends the client.
    let (from, register) = next_register(&server, Duration::from_secs(5));
    // Each answer echoes the nonce of the Register it answers, as the server does.
    let refuse = |register: &Message, code, detail: &str| {
        wire::encode(&Message::Error {
            code,
            detail: detail.into(),
            nonce: register.nonce().unwrap(),
        })
    };
    server
        .send_to(&refuse(&register, ErrorCode::RateLimited, hostile), from)
        .unwrap();
    let notice = client.wait_for_line("the rate-limit notice", |l| l.contains("the server says"));
    assert_no_raw_controls("the notice", &notice);
    assert!(notice.contains("<U+202E>"), "{notice:?}");
    let (from, register) = next_register(&server, Duration::from_secs(5));
    server
        .send_to(&refuse(&register, ErrorCode::BadName, hostile), from)
        .unwrap();
    let status = client.wait_exit();
    assert!(!status.success());
    let stderr = client.full_stderr();
    assert!(stderr.contains("refused to register us"), "{stderr:?}");
    assert_no_raw_controls("the fatal error on stderr", &stderr);
    for line in client.rest_of_stdout() {
        assert_no_raw_controls("stdout", &line);
    }
}

#[test]
fn the_server_never_answers_an_unproven_address_with_more_than_it_sent() {
    let server = common::Server::start(&[]);
    // A client with the longest name and display name, so that Found is as large as it
    // gets.
    let name = "n".repeat(wire::MAX_NAME);
    let display = "d".repeat(wire::MAX_DISPLAY_NAME);
    let addr = server.addr.to_string();
    let client = Proc::spawn_with_stdin(&[
        "client",
        "--server",
        &addr,
        "--no-state",
        "--json",
        "--retry-interval",
        RETRY,
        "--name",
        &name,
        "--display-name",
        &display,
    ]);
    client.wait_for_line("claimed", |l| l.contains("\"claimed\""));
    let wait = Duration::from_millis(300);
    // Eight Lookups written small ({1: [1]}): 34 bytes. The old server sent 1,210.
    let mut lookups = vec![wire::MAGIC, wire::VERSION];
    for _ in 0..8 {
        lookups.extend_from_slice(&[0x81, 0x01, 0x91, 0x01]);
    }
    assert_eq!(lookups.len(), 34);
    let (back, _) = bytes_back(server.addr, &lookups, wait);
    assert!(back <= lookups.len(), "{back} bytes back for 34");
    // Eight Keepalive{0, 0} ({3: [0, 0]}), no registration: 42 bytes. The old server sent
    // 793.
    let mut keepalives = vec![wire::MAGIC, wire::VERSION];
    for _ in 0..8 {
        keepalives.extend_from_slice(&[0x81, 0x03, 0x92, 0x00, 0x00]);
    }
    let (back, _) = bytes_back(server.addr, &keepalives, wait);
    assert!(back <= keepalives.len(), "{back} bytes back for 42");
    // Two bytes of another version: the old server sent a 77-byte BadVersion.
    assert_eq!(bytes_back(server.addr, b"P\x02", wait).0, 0);
    // A lookup padded as a client pads it is answered in full, names and all.
    let lookup = wire::encode_request(&Message::Lookup {
        id: 1,
        nonce: 42,
        pad: Default::default(),
    });
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket.send_to(&lookup, server.addr).unwrap();
    let mut buf = [0u8; 65_536];
    let (n, _) = socket.recv_from(&mut buf).expect("an answer");
    assert!(n <= lookup.len());
    match wire::decode(&buf[..n]).unwrap() {
        Message::Found {
            name: Some(n),
            nonce: 42,
            ..
        } => assert_eq!(n, name),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_client_takes_no_answer_it_did_not_ask_for() {
    // An attacker who can send from the server's address but cannot read what the client
    // sends: it answers three Registers at once with a guess at the nonce (an id, and a
    // refusal that would end the client). The client takes neither; then a server that
    // does see the nonce registers it.
    let (server, addr) = fake_server();
    let addr = addr.to_string();
    let mut client = Proc::spawn_with_stdin(&[
        "client",
        "--server",
        &addr,
        "--no-state",
        "--json",
        "--retry-interval",
        RETRY,
    ]);
    let mut forged = 0;
    let (from, register) = loop {
        let (from, register) = next_register(&server, Duration::from_secs(5));
        let guess = register.nonce().unwrap() ^ 1;
        for answer in [
            Message::Registered {
                key: [0; 32],
                id: 4242,
                token: 1,
                ttl_secs: u32::MAX,
                nonce: guess,
                turn: None,
            },
            Message::Error {
                code: ErrorCode::IdTaken,
                detail: "forged".into(),
                nonce: guess,
            },
        ] {
            server.send_to(&wire::encode(&answer), from).unwrap();
        }
        forged += 1;
        if forged == 3 {
            break (from, register);
        }
    };
    let answer = Message::Registered {
        key: [0; 32],
        id: 7,
        token: 99,
        ttl_secs: 30,
        nonce: register.nonce().unwrap(),
        turn: None,
    };
    server.send_to(&wire::encode(&answer), from).unwrap();
    let line = client.wait_for_line("registered", |l| l.contains("\"registered\""));
    assert!(line.contains("\"id\":7"), "{line}");
    client.close_stdin();
    // Nothing forged was shown: no other id, no refusal.
    for line in client.rest_of_stdout() {
        assert!(!line.contains("4242") && !line.contains("forged"), "{line}");
    }
}

// ---------------------------------------------------------------- a client under attack

/// A `--json` client registered with `server`, and the address it chats from (as the
/// server saw it join).
fn target_client(server: &Server, extra: &[&str]) -> (JsonClient, ClientId, SocketAddr) {
    let server_addr = server.addr.to_string();
    let mut args = vec![
        "--server",
        &server_addr,
        "--no-state",
        "--retry-interval",
        RETRY,
    ];
    args.extend_from_slice(extra);
    let mut c = JsonClient::spawn("target", &args);
    let reg = c.wait_event("registered", |v| v["event"] == "registered");
    let id = reg["id"].as_u64().unwrap() as ClientId;
    let addr = server.expect_join(id);
    (c, id, addr)
}

/// Sends `datagram` from a fresh socket to `to`, then counts the bytes that come back
/// until nothing has come for `quiet`.
fn bytes_back(to: SocketAddr, datagram: &[u8], quiet: Duration) -> (usize, usize) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(quiet)).unwrap();
    sock.send_to(datagram, to).unwrap();
    let (mut bytes, mut datagrams) = (0, 0);
    let mut buf = vec![0u8; 65_536];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        bytes += n;
        datagrams += 1;
    }
    (bytes, datagrams)
}

/// One datagram holding `msgs`, each encoded with field names.
fn packed(msgs: impl IntoIterator<Item = Message>) -> Vec<u8> {
    let mut d = vec![wire::MAGIC, wire::VERSION];
    for m in msgs {
        d.extend_from_slice(&wire::encode(&m)[2..]);
    }
    d
}

/// `Terminate { from: 1, session: 2 }` in 5 bytes: named by its variant index (looked
/// up), fields as an array.
fn tiny_terminate() -> Vec<u8> {
    (0u8..=127)
        .map(|index| vec![0x81, index, 0x92, 0x01, 0x02])
        .find(|body| {
            let mut d = vec![wire::MAGIC, wire::VERSION];
            d.extend_from_slice(body);
            wire::decode(&d)
                == Ok(Message::Terminate {
                    from: 1,
                    session: 2,
                })
        })
        .expect("Terminate has a variant index below 128")
}

#[test]
fn a_client_never_answers_a_stranger_at_all() {
    let server = Server::start(&[]);
    let (mut client, _, target) = target_client(&server, &[]);
    let tiny = tiny_terminate();
    let mut terminates = vec![wire::MAGIC, wire::VERSION];
    while terminates.len() + tiny.len() <= wire::MAX_DATAGRAM {
        terminates.extend_from_slice(&tiny);
    }
    let unknown = |k: u32| (1000 + k, u64::MAX - u64::from(k));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Measured before: 1,600 of these came back as 48 KB of TerminateAcks.
        ("8 KB of 5-byte Terminates", terminates),
        (
            "Pings for unknown sessions",
            packed((0..36).map(|k| {
                let (from, session) = unknown(k);
                Message::Ping { from, session }
            })),
        ),
        (
            "Terminates for unknown sessions",
            packed((0..30).map(|k| {
                let (from, session) = unknown(k);
                Message::Terminate { from, session }
            })),
        ),
        (
            "one Terminate",
            wire::encode(&Message::Terminate {
                from: 7,
                session: 7,
            }),
        ),
        (
            "Chats for unknown sessions",
            packed((0..20).map(|k| {
                let (from, session) = unknown(k);
                Message::Chat {
                    from,
                    session,
                    seq: 1,
                    text: "x".into(),
                }
            })),
        ),
        (
            "Acks and FileGets for unknown sessions",
            packed((0..20).flat_map(|k| {
                let (from, session) = unknown(k);
                [
                    Message::Ack {
                        from,
                        session,
                        seq: 1,
                        cumulative: 1,
                    },
                    Message::FileGet {
                        from,
                        session,
                        n: 1,
                        window: 0,
                    },
                ]
            })),
        ),
        (
            "ConnectRequests",
            packed((0..60).map(|k| Message::ConnectRequest {
                from: 5000 + k,
                session: u64::from(k),
                hs: vec![0; 96],
            })),
        ),
    ];
    let mut answered = 0;
    for (what, datagram) in &cases {
        let (back, datagrams) = bytes_back(target, datagram, Duration::from_millis(300));
        println!(
            "{what}: {} bytes sent, {back} back in {datagrams} datagrams",
            datagram.len()
        );
        assert!(
            back <= datagram.len(),
            "{what}: {back} bytes back for {} sent",
            datagram.len()
        );
        answered += usize::from(back > 0);
    }
    // Since version 2 nothing of a session is believed in clear (there are no resets:
    // they could not be authenticated), and a handshake that does not open is dropped:
    // a stranger gets nothing back at all.
    assert_eq!(answered, 0, "a stranger was answered");
    // The client is alive and well.
    client.type_line("status");
    client.wait_event("status", |v| v["event"] == "status");
}

/// A socket registered with the server as a client (a peer the test drives by hand).
fn raw_client(server: SocketAddr) -> (UdpSocket, ClientId) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + common::WAIT;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // A real key: the client's handshake to it must be possible.
        let key = *p2pchat::identity::Identity::generate().public();
        let register = wire::encode_request(&Message::register(None, key));
        sock.send_to(&register, server).unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if let Ok(Message::Registered { id, .. }) = wire::decode(&buf[..n]) {
                return (sock, id);
            }
        }
    }
    panic!("the raw client did not register");
}

/// `msg` framed as a peer of protocol `version` would.
fn of_version(version: u8, msg: &Message) -> Vec<u8> {
    let mut d = wire::encode(msg);
    d[1] = version;
    d
}

#[test]
fn a_peer_of_another_protocol_version_gets_one_clear_line() {
    let server = Server::start(&[]);
    let (mut client, id, target) = target_client(&server, &[]);
    // A peer we ask to connect answers in version 3.
    let (peer, peer_id) = raw_client(server.addr);
    client.type_line(&format!("connect {peer_id}"));
    let deadline = Instant::now() + common::WAIT;
    let mut buf = [0u8; 2048];
    let session = loop {
        assert!(
            Instant::now() < deadline,
            "no ConnectRequest reached the peer"
        );
        if let Ok((n, _)) = peer.recv_from(&mut buf) {
            if let Ok(Message::ConnectRequest { session, .. }) = wire::decode(&buf[..n]) {
                break session;
            }
        }
    };
    let accept = of_version(
        3,
        &Message::Accept {
            hs: Vec::new(),
            from: peer_id,
            session,
        },
    );
    for _ in 0..4 {
        peer.send_to(&accept, target).unwrap();
    }
    let line = client.wait_event("peer_version", |v| v["event"] == "peer_version");
    assert_eq!(line["peer"], peer_id);
    assert_eq!(line["version"], 3);
    assert_eq!(line["addr"], peer.local_addr().unwrap().to_string());
    // A stranger in version 0, twice, then another within the summary interval.
    let strangers: Vec<UdpSocket> = (0..2)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let ping = of_version(
        0,
        &Message::Ping {
            from: 9,
            session: 9,
        },
    );
    for s in [&strangers[0], &strangers[0], &strangers[1]] {
        s.send_to(&ping, target).unwrap();
    }
    let line = client.wait_event("the stranger's peer_version", |v| {
        v["event"] == "peer_version" && v["peer"].is_null()
    });
    assert_eq!(line["addr"], strangers[0].local_addr().unwrap().to_string());
    assert_eq!(line["version"], 0);
    client.read_for(Duration::from_millis(500));
    assert_eq!(client.events("peer_version").len(), 2, "{:#?}", client.log);
    // Nothing went back to the stranger, and the client goes on.
    strangers[0]
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(strangers[0].recv_from(&mut buf).is_err());
    client.type_line("status");
    let status = client.wait_event("status", |v| v["event"] == "status");
    assert_eq!(status["id"], id);
}

/// The peak resident memory of process `pid` (VmHWM), in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in kB");
    kb * 1024
}

#[test]
fn a_flood_of_connection_requests_leaves_a_live_session_chatting_in_bounded_memory() {
    const FLOOD: u32 = 100_000;
    let server = Server::start(&[]);
    let (mut b, idb, target) = target_client(&server, &[]);
    let server_addr = server.addr.to_string();
    let mut a = JsonClient::spawn(
        "A",
        &[
            "--server",
            &server_addr,
            "--no-state",
            "--retry-interval",
            RETRY,
        ],
    );
    let ida = a.wait_event("registered", |v| v["event"] == "registered")["id"].clone();
    a.type_line(&format!("connect {idb}"));
    b.wait_event("request", |v| v["event"] == "request");
    b.type_line("accept");
    a.wait_event("connected", |v| v["event"] == "connected");
    // A few messages first, so that the session has measured its round trip (a message
    // lost in the flood is then resent after about 50 ms, not the first second).
    let mut k = 0;
    for _ in 0..5 {
        k += 1;
        a.type_line(&format!("message {k} before the flood"));
        a.wait_event("delivered", |v| v["event"] == "delivered" && v["seq"] == k);
    }
    let quiet_memory = peak_memory(b.proc.pid());
    // The flood: distinct fake ids from another loopback address, at the rate measured
    // on the client before the bounds (300,000 in 9 s), for 3 s.
    const RATE: f64 = 33_000.0;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let sock = UdpSocket::bind("127.0.0.2:0").unwrap();
            let started = Instant::now();
            let mut sent = 0u32;
            while sent < FLOOD && started.elapsed() < Duration::from_secs(20) {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let request = Message::ConnectRequest {
                    from: 1_000_000 + sent,
                    session: u64::from(sent) << 20 | 0x5eed,
                    hs: vec![0; 96],
                };
                if sock.send_to(&wire::encode(&request), target).is_ok() {
                    sent += 1;
                }
                if sent % 500 == 0 {
                    let due = Duration::from_secs_f64(f64::from(sent) / RATE);
                    std::thread::sleep(due.saturating_sub(started.elapsed()));
                }
            }
            (sent, started.elapsed())
        })
    };
    // Meanwhile, a chats with b, one message at a time.
    let mut latencies = Vec::new();
    while !flooder.is_finished() || k < 25 {
        k += 1;
        let t = Instant::now();
        a.type_line(&format!("message {k} through the flood"));
        a.wait_event_within(Duration::from_secs(10), "delivered", |v| {
            v["event"] == "delivered" && v["seq"] == k
        });
        latencies.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(10).saturating_sub(t.elapsed()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, took) = flooder.join().unwrap();
    b.read_for(Duration::from_millis(500));
    let flooded_memory = peak_memory(b.proc.pid());
    latencies.sort();
    let max = *latencies.last().unwrap();
    let p50 = latencies[latencies.len() / 2];
    let requests = b.events("request").len();
    let summaries: Vec<u64> = b
        .events("requests_ignored")
        .iter()
        .map(|v| v["count"].as_u64().unwrap())
        .collect();
    // What b printed besides the chat itself.
    let other_lines = b.log.iter().filter(|v| v["event"] != "message").count();
    println!(
        "flood: {sent} requests in {took:?}; b printed {other_lines} lines besides the chat \
         ({requests} requests, summaries {summaries:?}); peak memory {} KiB before, {} KiB \
         after; {} messages, send -> delivered p50 {p50:?}, max {max:?}",
        quiet_memory / 1024,
        flooded_memory / 1024,
        latencies.len()
    );
    assert!(sent >= FLOOD / 2, "the flood sent only {sent}");
    // Every message was delivered (waited for above), and promptly.
    assert!(max < Duration::from_secs(2), "a message took {max:?}");
    // Bounded memory and lines: a summary, not a line per request.
    assert!(
        flooded_memory < 20 << 20,
        "peak memory {} KiB",
        flooded_memory / 1024
    );
    assert!(
        other_lines < 200,
        "b printed {other_lines} lines: {:#?}",
        b.log
    );
    // Their handshakes do not open (at most 20 a second from that source are even
    // tried): none becomes a request, and none is a line.
    assert_eq!(requests, 1, "a's request only");
    assert!(summaries.is_empty(), "{summaries:?}");
    // The messages arrived in order, once each.
    let texts: Vec<String> = b
        .events("message")
        .iter()
        .map(|v| v["text"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (1..=k)
        .map(|k| match k {
            1..=5 => format!("message {k} before the flood"),
            _ => format!("message {k} through the flood"),
        })
        .collect();
    assert_eq!(texts, expected);
    assert!(b.events("message").iter().all(|v| v["from"] == ida));
}
