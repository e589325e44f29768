//! The real binaries against a hostile network: what an attacker on the same network sends
//! straight at a client or at the server, from raw UDP sockets on loopback, and what comes
//! back (bytes on the wire, lines on the screen).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::Proc;
use p2pchat::wire::{self, ErrorCode, Message};

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

/// Sends `datagram` to `to` from a fresh socket and counts the bytes that come back
/// within `wait`.
fn bytes_back(to: SocketAddr, datagram: &[u8], wait: Duration) -> usize {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    socket.send_to(datagram, to).unwrap();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 65_536];
    let mut total = 0;
    while Instant::now() < deadline {
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            total += n;
        }
    }
    total
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
    let back = bytes_back(server.addr, &lookups, wait);
    assert!(back <= lookups.len(), "{back} bytes back for 34");
    // Eight Keepalive{0, 0} ({3: [0, 0]}), no registration: 42 bytes. The old server sent
    // 793.
    let mut keepalives = vec![wire::MAGIC, wire::VERSION];
    for _ in 0..8 {
        keepalives.extend_from_slice(&[0x81, 0x03, 0x92, 0x00, 0x00]);
    }
    let back = bytes_back(server.addr, &keepalives, wait);
    assert!(back <= keepalives.len(), "{back} bytes back for 42");
    // Two bytes of another version: the old server sent a 77-byte BadVersion.
    assert_eq!(bytes_back(server.addr, b"P\x02", wait), 0);
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
    // sends: it answers every Register at once with a guess at the nonce. The client does
    // not take the id, and says there is no server; then a server that does see the
    // nonce registers it.
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
                id: 4242,
                token: 1,
                ttl_secs: u32::MAX,
                nonce: guess,
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
        id: 7,
        token: 99,
        ttl_secs: 30,
        nonce: register.nonce().unwrap(),
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
