//! End-to-end tests of `p2pchat server`: the real binary, real UDP sockets.
//!
//! Each test starts its own server on `127.0.0.1:0`, learns the port from the first line the
//! server prints, and talks to it with `std::net::UdpSocket`s. The server's stdout is read on
//! a background thread into a channel, so every wait has a timeout; the child is killed when
//! the test ends, whether it passes or fails.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use p2pchat::wire::{decode, encode, ClientId, ErrorCode, Message, Token, MAGIC, VERSION};

/// The longest any single wait may take; only a failing test ever waits this long.
const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- the server process

/// A running `p2pchat` child, killed and reaped on drop.
struct Proc {
    child: Child,
    stdout: Receiver<String>,
    /// Everything written to stderr so far (shown when a test fails).
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_p2pchat"))
            .args(args)
            .env_remove("RUST_LOG") // only the server's own lines on stderr
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the p2pchat binary");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            child,
            stdout: rx,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next stdout line, or `None` if none comes within `timeout` (or stdout closed).
    fn next_line(&self, timeout: Duration) -> Option<String> {
        self.stdout.recv_timeout(timeout).ok()
    }

    /// The next stdout line, failing the test if none comes within [`WAIT`].
    fn expect_line(&self, what: &str) -> String {
        self.next_line(WAIT).unwrap_or_else(|| {
            panic!(
                "server printed no line (expected {what}) within {WAIT:?}; stderr: {:?}",
                self.stderr()
            )
        })
    }

    /// Skips stdout lines until one satisfies `pred`; fails the test after [`WAIT`].
    fn wait_for_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some(line) if pred(&line) => return line,
                Some(line) => seen.push(line),
                None => panic!(
                    "no line {what} within {WAIT:?}; lines seen: {seen:#?}; stderr: {:?}",
                    self.stderr()
                ),
            }
        }
    }

    /// Waits for the process to end, failing the test if it does not within [`WAIT`].
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process still running {WAIT:?} later; stderr: {:?}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([name, &pid])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill {name} {pid} failed");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `p2pchat server` listening on a free loopback port.
struct Server {
    proc: Proc,
    addr: SocketAddr,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut args = vec!["server", "--bind", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let proc = Proc::spawn(&args);
        let first = proc.expect_line("the listening line");
        let addr = first
            .strip_prefix("p2pchat server listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        Server { proc, addr }
    }

    /// Waits for the next printed table and returns its rows as (id, address).
    fn expect_table(&self) -> Vec<(ClientId, SocketAddr)> {
        let head = self.proc.wait_for_line("\"active clients: N\"", |l| {
            l.starts_with("active clients: ")
        });
        self.read_table_after(&head)
    }

    /// The rows of the table whose first line is `head`, read from the lines that follow.
    fn read_table_after(&self, head: &str) -> Vec<(ClientId, SocketAddr)> {
        let n: usize = head["active clients: ".len()..]
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("bad table head {head:?}"));
        let mut rows = Vec::new();
        if n > 0 {
            let columns = self.proc.expect_line("the table's column heads");
            assert!(columns.contains("ID"), "{columns:?}");
            for _ in 0..n {
                let row = self.proc.expect_line("a table row");
                let mut cells = row.split_whitespace();
                let (Some(Ok(id)), Some(Ok(addr))) =
                    (cells.next().map(str::parse), cells.next().map(str::parse))
                else {
                    panic!("bad table row {row:?}")
                };
                rows.push((id, addr));
            }
        }
        rows
    }

    /// Asserts that the very next line printed is `expected` (nothing printed in between).
    fn expect_next_line(&self, expected: &str) {
        let line = self.proc.expect_line(expected);
        assert_eq!(line, expected);
    }
}

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
        sock.send_to(&encode(msg), server).unwrap();
        if let Some(answer) = recv(sock, server) {
            return answer;
        }
    }
    panic!("no answer to {msg:?}");
}

fn register(sock: &UdpSocket, server: SocketAddr) -> (ClientId, Token, u32) {
    match request(sock, server, &Message::Register { want_id: None }) {
        Message::Registered {
            id,
            token,
            ttl_secs,
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
    let answer = request(&bob, server.addr, &Message::Lookup { id: 1 });
    assert_eq!(
        answer,
        Message::Found {
            id: 1,
            addr: alice_addr
        }
    );
}

#[test]
fn lookup_of_an_unknown_id_is_inactive() {
    let server = Server::start(&[]);
    let (_alice, _) = joined_client(&server, 1);
    let bob = socket();
    for id in [2, 77] {
        let answer = request(&bob, server.addr, &Message::Lookup { id });
        assert_eq!(answer, Message::Inactive { id });
    }
}

#[test]
fn a_second_register_from_the_same_socket_is_a_retransmission() {
    let server = Server::start(&[]);
    let (alice, token) = joined_client(&server, 1);
    let again = request(&alice, server.addr, &Message::Register { want_id: None });
    assert_eq!(
        again,
        Message::Registered {
            id: 1,
            token,
            ttl_secs: 30
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
    match request(&bob, server.addr, &Message::Register { want_id: None }) {
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

    let mut other_version = encode(&Message::Leave { id: 1, token });
    other_version[1] = VERSION + 1;
    mallory.send_to(&other_version, to).unwrap();
    match recv(&mallory, to) {
        Some(Message::Error {
            code: ErrorCode::BadVersion,
            ..
        }) => {}
        other => panic!("a datagram of another version was answered {other:?}"),
    }

    let forged = Message::Leave {
        id: 1,
        token: token ^ 0x5a5a,
    };
    match request(&mallory, to, &forged) {
        Message::Error {
            code: ErrorCode::NotRegistered,
            ..
        } => {}
        other => panic!("a forged Leave was answered {other:?}"),
    }
    // Even the right token from the wrong socket deletes nothing.
    match request(&mallory, to, &Message::Leave { id: 1, token }) {
        Message::Error {
            code: ErrorCode::NotRegistered,
            ..
        } => {}
        other => panic!("a Leave from another socket was answered {other:?}"),
    }

    // The server still answers, and still has alice where she was.
    for asker in [&mallory, &alice] {
        assert_eq!(
            request(asker, to, &Message::Lookup { id: 1 }),
            Message::Found {
                id: 1,
                addr: alice_addr
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
    let leave = Message::Leave { id: 1, token };
    assert_eq!(
        request(&alice, server.addr, &leave),
        Message::LeaveAck { id: 1 }
    );
    server.expect_next_line(&format!("client 1 at {alice_addr} left"));
    server.expect_next_line("active clients: 0");
    // A repeated Leave (its LeaveAck lost) is acknowledged again.
    assert_eq!(
        request(&alice, server.addr, &leave),
        Message::LeaveAck { id: 1 }
    );
    assert_eq!(
        request(&socket(), server.addr, &Message::Lookup { id: 1 }),
        Message::Inactive { id: 1 }
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
        request(&socket(), server.addr, &Message::Lookup { id: 1 }),
        Message::Inactive { id: 1 }
    );
}

#[test]
fn keepalives_keep_a_client_past_the_ttl() {
    let server = Server::start(&["--ttl", "1"]);
    let (alice, token) = joined_client(&server, 1);
    let until = Instant::now() + Duration::from_millis(1800);
    while Instant::now() < until {
        alice
            .send_to(&encode(&Message::Keepalive { id: 1, token }), server.addr)
            .unwrap();
        thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        server.proc.next_line(Duration::ZERO),
        None,
        "something was printed although alice kept sending"
    );
    assert!(matches!(
        request(&socket(), server.addr, &Message::Lookup { id: 1 }),
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
    // Let the stderr reader reach the end of the pipe.
    let deadline = Instant::now() + WAIT;
    while !proc.stderr().ends_with('\n') && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let stderr = proc.stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr:?}");
    assert!(lines[0].contains("cannot bind"), "stderr: {stderr:?}");
    assert!(lines[0].contains(&taken), "stderr: {stderr:?}");
    assert_eq!(proc.next_line(Duration::ZERO), None, "printed on stdout");
}
