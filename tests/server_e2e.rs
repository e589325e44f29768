//! End-to-end tests of `p2pchat server`: the real binary, real UDP sockets.
//!
//! Each test starts its own server on `127.0.0.1:0`, learns the port from the first line the
//! server prints, and talks to it with `std::net::UdpSocket`s. The process harness (stdout
//! read into a channel so that every wait has a timeout, the child killed when the test ends
//! whether it passes or fails) is in `common/mod.rs`, shared with `client_e2e.rs`.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use common::{Proc, Server};
use p2pchat::wire::{decode, encode_request, ClientId, ErrorCode, Message, Token, MAGIC, VERSION};

// ---------------------------------------------------------------- clients

fn socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    s
}

/// Receives one datagram from `server` and decodes it.
fn recv(sock: &UdpSocket, server: SocketAddr) -> Option<Message> {
    let mut buf = [0u8; 65_536];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == server => {
                return Some(decode(&buf[..n]).expect("the server sent an undecodable datagram"))
            }
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// Sends `msg` and returns the answer, resending a few times (every request here is
/// idempotent, as the protocol requires).
fn request(sock: &UdpSocket, server: SocketAddr, msg: &Message) -> Message {
    for _ in 0..3 {
        sock.send_to(&encode_request(msg), server).unwrap();
        if let Some(answer) = recv(sock, server) {
            return answer;
        }
    }
    panic!("no answer to {msg:?}");
}

fn register(sock: &UdpSocket, server: SocketAddr) -> (ClientId, Token, u32) {
    match request(sock, server, &Message::register(None, [0; 32])) {
        Message::Registered {
            id,
            token,
            ttl_secs,
            ..
        } => (id, token, ttl_secs),
        other => panic!("Register answered with {other:?}"),
    }
}

/// Registers a fresh socket and waits until the server has printed the join and the table.
fn joined_client(server: &Server, expect_id: ClientId) -> (UdpSocket, Token) {
    let sock = socket();
    let (id, token, _) = register(&sock, server.addr);
    assert_eq!(id, expect_id);
    let me = sock.local_addr().unwrap();
    server.expect_next_line(&format!("client {id} joined from {me}"));
    let rows = server.expect_table();
    assert!(rows.contains(&(id, me)), "{rows:?}");
    (sock, token)
}

// ---------------------------------------------------------------- tests

#[test]
fn register_then_lookup_finds_the_clients_address_as_seen_by_the_server() {
    let server = Server::start(&[]);
    let alice = socket();
    let (id, _, ttl_secs) = register(&alice, server.addr);
    assert_eq!((id, ttl_secs), (1, 30));
    let alice_addr = alice.local_addr().unwrap();
    server.expect_next_line(&format!("client 1 joined from {alice_addr}"));
    server.expect_next_line("active clients: 1");
    assert_eq!(
        server.read_table_after("active clients: 1"),
        [(1, alice_addr)]
    );

    let bob = socket();
    let answer = request(&bob, server.addr, &Message::lookup(1));
    assert_eq!(
        answer,
        Message::Found {
            key: [0; 32],
            id: 1,
            addr: alice_addr,
            name: None,
            display_name: None,
            nonce: 0
        }
    );
}

#[test]
fn lookup_of_an_unknown_id_is_inactive() {
    let server = Server::start(&[]);
    let (_alice, _) = joined_client(&server, 1);
    let bob = socket();
    for id in [2, 77] {
        let answer = request(&bob, server.addr, &Message::lookup(id));
        assert_eq!(answer, Message::Inactive { id, nonce: 0 });
    }
}

#[test]
fn a_second_register_from_the_same_socket_is_a_retransmission() {
    let server = Server::start(&[]);
    let (alice, token) = joined_client(&server, 1);
    let again = request(&alice, server.addr, &Message::register(None, [0; 32]));
    // The server's key, the same in every Registered of this run.
    let Message::Registered { key, .. } = again else {
        panic!("{again:?}")
    };
    assert_ne!(key, [0; 32]);
    assert_eq!(
        again,
        Message::Registered {
            key,
            id: 1,
            token,
            ttl_secs: 30,
            nonce: 0,
            turn: None,
        }
    );
    // Nothing was printed for it: the next line is the next client's join.
    let (_bob, _) = joined_client(&server, 2);
}

#[test]
fn max_clients_refuses_one_more_with_server_full() {
    let server = Server::start(&["--max-clients", "1"]);
    let (_alice, _) = joined_client(&server, 1);
    let bob = socket();
    match request(&bob, server.addr, &Message::register(None, [0; 32])) {
        Message::Error {
            code: ErrorCode::ServerFull,
            ..
        } => {}
        other => panic!("expected ServerFull, got {other:?}"),
    }
}

#[test]
fn a_hostile_batch_changes_nothing_and_the_server_keeps_answering() {
    use rand::{Rng, SeedableRng};
    let seed = rand::random::<u64>();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let server = Server::start(&[]);
    let (alice, token) = joined_client(&server, 1);
    let alice_addr = alice.local_addr().unwrap();
    let mallory = socket();
    let to = server.addr;

    // Random garbage: half not p2pchat at all, half a right header and a random body. Each is
    // checked to be undecodable, so that none of it deserves an answer.
    let mut sent = 0;
    while sent < 200 {
        let mut d = vec![0u8; rng.random_range(1..512)];
        rng.fill(&mut d[..]);
        if rng.random_bool(0.5) && d.len() >= 2 {
            d[0] = MAGIC;
            d[1] = VERSION;
        } else if d[0] == MAGIC {
            d[0] = !MAGIC;
        }
        if decode(&d).is_ok() {
            continue;
        }
        mallory.send_to(&d, to).unwrap();
        sent += 1;
    }
    mallory.send_to(&[], to).unwrap();
    let mut huge = vec![0u8; 65_000];
    huge[0] = MAGIC;
    huge[1] = VERSION;
    mallory.send_to(&huge, to).unwrap();
    // Garbage gets no answer at all.
    mallory
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert_eq!(recv(&mallory, to), None, "garbage was answered");
    mallory
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();

    let mut other_version = encode_request(&Message::leave(1, token));
    other_version[1] = VERSION + 1;
    mallory.send_to(&other_version, to).unwrap();
    match recv(&mallory, to) {
        Some(Message::Error {
            code: ErrorCode::BadVersion,
            ..
        }) => {}
        other => panic!("a datagram of another version was answered {other:?}"),
    }

    let forged = Message::leave(1, token ^ 0x5a5a);
    match request(&mallory, to, &forged) {
        Message::Error {
            code: ErrorCode::NotRegistered,
            ..
        } => {}
        other => panic!("a forged Leave was answered {other:?}"),
    }
    // Even the right token from the wrong socket deletes nothing.
    match request(&mallory, to, &Message::leave(1, token)) {
        Message::Error {
            code: ErrorCode::NotRegistered,
            ..
        } => {}
        other => panic!("a Leave from another socket was answered {other:?}"),
    }

    // The server still answers, and still has alice where she was.
    for asker in [&mallory, &alice] {
        assert_eq!(
            request(asker, to, &Message::lookup(1)),
            Message::Found {
                key: [0; 32],
                id: 1,
                addr: alice_addr,
                name: None,
                display_name: None,
                nonce: 0
            }
        );
    }
    // Nothing was printed for the whole batch: the very next lines are bob's join and a table
    // that still holds alice.
    let bob = socket();
    let (bob_id, _, _) = register(&bob, to);
    assert_eq!(bob_id, 2);
    let bob_addr = bob.local_addr().unwrap();
    server.expect_next_line(&format!("client 2 joined from {bob_addr}"));
    server.expect_next_line("active clients: 2");
    assert_eq!(
        server.read_table_after("active clients: 2"),
        [(1, alice_addr), (2, bob_addr)]
    );
}

#[test]
fn leave_is_acknowledged_and_the_printed_table_shows_the_client_gone() {
    let server = Server::start(&[]);
    let (alice, token) = joined_client(&server, 1);
    let alice_addr = alice.local_addr().unwrap();
    let leave = Message::leave(1, token);
    assert_eq!(
        request(&alice, server.addr, &leave),
        Message::LeaveAck { id: 1, nonce: 0 }
    );
    server.expect_next_line(&format!("client 1 at {alice_addr} left"));
    server.expect_next_line("active clients: 0");
    // A repeated Leave (its LeaveAck lost) is acknowledged again.
    assert_eq!(
        request(&alice, server.addr, &leave),
        Message::LeaveAck { id: 1, nonce: 0 }
    );
    assert_eq!(
        request(&socket(), server.addr, &Message::lookup(1)),
        Message::Inactive { id: 1, nonce: 0 }
    );
    // And printed nothing: the next line is the next join (which reuses id 1).
    let (_bob, _) = joined_client(&server, 1);
}

#[test]
fn a_silent_client_expires_after_the_ttl() {
    let server = Server::start(&["--ttl", "1"]);
    let alice = socket();
    let (id, _, ttl_secs) = register(&alice, server.addr);
    let registered = Instant::now();
    assert_eq!((id, ttl_secs), (1, 1));
    let alice_addr = alice.local_addr().unwrap();
    server.expect_next_line(&format!("client 1 joined from {alice_addr}"));
    assert_eq!(server.expect_table(), [(1, alice_addr)]);

    server.expect_next_line(&format!(
        "client 1 at {alice_addr} expired (not heard from)"
    ));
    let after = registered.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "expired after only {after:?} with --ttl 1"
    );
    server.expect_next_line("active clients: 0");
    assert_eq!(
        request(&socket(), server.addr, &Message::lookup(1)),
        Message::Inactive { id: 1, nonce: 0 }
    );
}

#[test]
fn keepalives_keep_a_client_past_the_ttl() {
    let server = Server::start(&["--ttl", "1"]);
    let (alice, token) = joined_client(&server, 1);
    let until = Instant::now() + Duration::from_millis(1800);
    while Instant::now() < until {
        alice
            .send_to(&encode_request(&Message::keepalive(1, token)), server.addr)
            .unwrap();
        thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        server.proc.next_line(Duration::ZERO),
        None,
        "something was printed although alice kept sending"
    );
    assert!(matches!(
        request(&socket(), server.addr, &Message::lookup(1)),
        Message::Found { id: 1, .. }
    ));
}

fn stops_with_status_0_on(signal: &str) {
    let mut server = Server::start(&[]);
    // With a client registered, so that the loop has a timer running too.
    let (_alice, _) = joined_client(&server, 1);
    server.proc.signal(signal);
    let status = server.proc.wait_exit();
    assert!(status.success(), "{signal}: exited with {status}");
}

#[test]
fn sigterm_stops_the_server_with_status_0() {
    stops_with_status_0_on("-TERM");
}

#[test]
fn sigint_stops_the_server_with_status_0() {
    stops_with_status_0_on("-INT");
}

#[test]
fn binding_a_port_already_in_use_fails_with_one_cannot_bind_line() {
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let mut proc = Proc::spawn(&["server", "--bind", &taken]);
    let status = proc.wait_exit();
    assert!(!status.success(), "bound a port that is in use");
    let stderr = proc.full_stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr:?}");
    assert!(lines[0].contains("cannot bind"), "stderr: {stderr:?}");
    assert!(lines[0].contains(&taken), "stderr: {stderr:?}");
    assert_eq!(proc.next_line(Duration::ZERO), None, "printed on stdout");
}

// ---------------------------------------------------------------- names and listing

/// Like [`request`], also returning the answer's size in bytes.
fn request_sized(sock: &UdpSocket, server: SocketAddr, msg: &Message) -> (Message, usize) {
    let mut buf = [0u8; 65_536];
    for _ in 0..3 {
        sock.send_to(&encode_request(msg), server).unwrap();
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from == server {
                let answer = decode(&buf[..n]).expect("the server sent an undecodable datagram");
                return (answer, n);
            }
        }
    }
    panic!("no answer to {msg:?}");
}

fn claim(sock: &UdpSocket, server: SocketAddr, id: ClientId, token: Token, name: &str) -> Message {
    request(
        sock,
        server,
        &Message::Claim {
            id,
            token,
            name: name.into(),
            display_name: Some(format!("{name:-<64}")),
            proof: None,
            nonce: 0,
            pad: Default::default(),
        },
    )
}

#[test]
fn names_are_claimed_resolved_and_listed_in_pages_over_udp() {
    let server = Server::start(&[]);
    let (alice, alice_token) = joined_client(&server, 1);
    let alice_addr = alice.local_addr().unwrap();
    let answer = request(
        &alice,
        server.addr,
        &Message::Claim {
            id: 1,
            token: alice_token,
            name: "alice".into(),
            display_name: Some("Alice L.".into()),
            proof: None,
            nonce: 0,
            pad: Default::default(),
        },
    );
    assert_eq!(
        answer,
        Message::Claimed {
            id: 1,
            name: "alice".into(),
            nonce: 0
        }
    );
    server.expect_next_line(&format!("client 1 at {alice_addr} is now alice (Alice L.)"));
    assert_eq!(server.expect_table(), [(1, alice_addr)]);

    let (bob, bob_token) = joined_client(&server, 2);
    match claim(&bob, server.addr, 2, bob_token, "ALICE") {
        Message::Error {
            code: ErrorCode::NameTaken,
            detail,
            ..
        } => assert!(detail.contains("taken by client 1"), "{detail}"),
        other => panic!("a taken name was answered {other:?}"),
    }
    let stranger = socket();
    assert_eq!(
        request(&stranger, server.addr, &Message::resolve("Alice")),
        Message::Found {
            key: [0; 32],
            id: 1,
            addr: alice_addr,
            name: Some("alice".into()),
            display_name: Some("Alice L.".into()),
            nonce: 0
        }
    );
    assert_eq!(
        request(&stranger, server.addr, &Message::resolve("zed")),
        Message::Unknown {
            name: "zed".into(),
            nonce: 0
        }
    );
    // A stranger may not list.
    assert!(matches!(
        request(
            &stranger,
            server.addr,
            &Message::List {
                id: 1,
                token: alice_token,
                after: None,
                nonce: 0,
                pad: Default::default()
            }
        ),
        Message::Error {
            code: ErrorCode::NotRegistered,
            ..
        }
    ));

    // 40 clients in all, most with the longest names: several pages.
    let mut others = vec![bob];
    for id in 3..=40 {
        let sock = socket();
        let (got, token, _) = register(&sock, server.addr);
        assert_eq!(got, id);
        let name = format!("c{id:0>31}");
        assert!(matches!(
            claim(&sock, server.addr, id, token, &name),
            Message::Claimed { .. }
        ));
        others.push(sock);
    }
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let list = Message::List {
            id: 1,
            token: alice_token,
            after,
            nonce: 0,
            pad: Default::default(),
        };
        let (answer, size) = request_sized(&alice, server.addr, &list);
        let Message::Listing {
            clients,
            next,
            total,
            ..
        } = answer
        else {
            panic!("List answered {answer:?}")
        };
        pages += 1;
        assert!(size <= p2pchat::wire::PACK_LIMIT, "a page of {size} bytes");
        assert_eq!(total, 40);
        seen.extend(clients.iter().map(|c| c.id));
        if let Some(c) = clients.iter().find(|c| c.id == 1) {
            assert_eq!(c.name.as_deref(), Some("alice"));
        }
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, (1..=40).collect::<Vec<_>>());
    assert!(pages >= 4, "{pages} pages");
}

#[test]
fn a_server_started_with_no_list_answers_list_disabled() {
    let server = Server::start(&["--no-list"]);
    let (alice, token) = joined_client(&server, 1);
    match request(
        &alice,
        server.addr,
        &Message::List {
            id: 1,
            token,
            after: None,
            nonce: 0,
            pad: Default::default(),
        },
    ) {
        Message::Error {
            code: ErrorCode::ListDisabled,
            detail,
            ..
        } => assert_eq!(detail, "this server does not list its clients"),
        other => panic!("List answered {other:?}"),
    }
    // Names still work.
    assert!(matches!(
        claim(&alice, server.addr, 1, token, "alice"),
        Message::Claimed { id: 1, .. }
    ));
}
