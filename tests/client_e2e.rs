//! End-to-end tests of `p2pchat client`: the real binary, real UDP sockets on loopback, a
//! real `p2pchat server` in between.
//!
//! Each test starts its own server on `127.0.0.1:0` and its clients with piped stdin and
//! stdout: commands are typed as lines on stdin, events are read from stdout (one JSON object
//! per line with `--json`). The process harness (stdout read on a thread into a channel, so
//! that every wait has a timeout; every child killed on drop, so that a failing test leaves
//! no process behind) is in `common/mod.rs`, shared with `server_e2e.rs`.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{strip_fingerprint, Proc, Server, WAIT};
use p2pchat::wire::ClientId;

/// Short resend periods, so that nothing in these tests waits long.
const RETRY: &str = "0.3";

// ---------------------------------------------------------------- a --json client

/// A `p2pchat client --json` whose every stdout line is checked to be a JSON object with an
/// `"event"` string, and kept in `log`.
struct JsonClient {
    proc: Proc,
    id: ClientId,
    /// Every event printed so far, in order.
    log: Vec<Value>,
}

impl JsonClient {
    /// Starts a client with `--id id` and waits until it is registered.
    fn start(server: SocketAddr, id: ClientId) -> JsonClient {
        let (server, want) = (server.to_string(), id.to_string());
        let proc = Proc::spawn_with_stdin(&[
            "client",
            "--server",
            &server,
            "--json",
            "--retry-interval",
            RETRY,
            "--id",
            &want,
        ]);
        let mut c = JsonClient {
            proc,
            id,
            log: Vec::new(),
        };
        c.expect(json!({"event": "registered", "id": id, "again": false}));
        c
    }

    /// Parses one stdout line, failing the test unless it is an event object.
    fn parse(&self, line: &str) -> Value {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("client {}: not JSON ({e}): {line:?}", self.id));
        assert!(
            v.get("event").is_some_and(Value::is_string),
            "client {}: no \"event\" string in {line}",
            self.id
        );
        strip_fingerprint(v)
    }

    /// Types one command.
    fn type_line(&mut self, line: &str) {
        self.proc.write_line(line);
    }

    /// The next event, if one comes before `deadline`.
    fn next_event_before(&mut self, deadline: Instant) -> Option<Value> {
        let line = self
            .proc
            .next_line(deadline.saturating_duration_since(Instant::now()))?;
        let v = self.parse(&line);
        self.log.push(v.clone());
        Some(v)
    }

    /// The very next event; fails the test if none comes within [`WAIT`].
    fn next_event(&mut self, what: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        self.next_event_before(deadline).unwrap_or_else(|| {
            panic!(
                "client {}: no event (expected {what}) within {WAIT:?}; events so far: {:#?}; stderr: {:?}",
                self.id,
                self.log,
                self.proc.stderr()
            )
        })
    }

    /// Skips events until one satisfies `pred` (the skipped ones stay in the log); fails the
    /// test after [`WAIT`].
    fn wait_event(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next_event_before(deadline) {
                Some(v) if pred(&v) => return v,
                Some(_) => {}
                None => panic!(
                    "client {}: no event {what} within {WAIT:?}; events so far: {:#?}; stderr: {:?}",
                    self.id,
                    self.log,
                    self.proc.stderr()
                ),
            }
        }
    }

    /// Waits for exactly this event (others may come first).
    fn expect(&mut self, event: Value) -> Value {
        let what = event.to_string();
        self.wait_event(&what, |v| *v == event)
    }

    /// Waits for `connected` to `peer`: on loopback, a direct path to the peer's address.
    fn expect_connected(&mut self, peer: ClientId) -> Value {
        let v = self.wait_event("connected", |v| {
            v["event"] == "connected" && v["peer"] == peer
        });
        assert_eq!(v["path"], "direct", "{v}");
        assert!(
            v["addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{v}"
        );
        v
    }

    /// Returns once `event` is in the log, whether it was read already (skipped by an
    /// earlier wait) or comes within [`WAIT`].
    fn expect_logged(&mut self, event: Value) {
        if !self.log.contains(&event) {
            self.expect(event);
        }
    }

    /// Waits for the process to exit and reads its last events; returns the exit status.
    fn wait_exit(&mut self) -> ExitStatus {
        let status = self.proc.wait_exit();
        for line in self.proc.rest_of_stdout() {
            let v = self.parse(&line);
            self.log.push(v);
        }
        status
    }

    /// The logged events named `name`.
    fn events(&self, name: &str) -> Vec<&Value> {
        self.log.iter().filter(|v| v["event"] == name).collect()
    }
}

/// Starts clients 1 and 2 and connects them (1 asks, 2 accepts).
fn connected_pair(server: &Server) -> (JsonClient, JsonClient) {
    let mut one = JsonClient::start(server.addr, 1);
    let mut two = JsonClient::start(server.addr, 2);
    one.type_line("connect 2");
    two.expect(json!({"event": "request", "from": 1}));
    two.type_line("accept");
    two.expect_connected(1);
    one.expect_connected(2);
    (one, two)
}

// ---------------------------------------------------------------- tests

#[test]
fn two_json_clients_hold_a_whole_conversation() {
    let started = Instant::now();
    let server = Server::start(&[]);
    let mut one = JsonClient::start(server.addr, 1);
    let one_addr = server.expect_join(1);
    let mut two = JsonClient::start(server.addr, 2);
    let two_addr = server.expect_join(2);
    assert_eq!(server.expect_table(), [(1, one_addr), (2, two_addr)]);

    // 1 asks, 2 accepts.
    one.type_line("connect 2");
    two.expect(json!({"event": "request", "from": 1}));
    two.type_line("accept");
    two.expect_connected(1);
    one.expect_connected(2);

    // Several messages each way, typed without waiting: `send TEXT` and plain lines, with
    // non-ASCII text, quotes, a backslash and command words inside the text.
    let from_one: [(&str, &str); 4] = [
        ("send hello \"two\"", "hello \"two\""),
        (
            "héllo wörld — ünïcödé ✓ 日本語 🙂",
            "héllo wörld — ünïcödé ✓ 日本語 🙂",
        ),
        (
            "send connect 3 is not a command here",
            "connect 3 is not a command here",
        ),
        (
            "a back\\slash and 'single' quotes",
            "a back\\slash and 'single' quotes",
        ),
    ];
    let from_two: [(&str, &str); 3] = [
        ("\"quoted\" reply", "\"quoted\" reply"),
        (
            "send ça va? 👍 {\"json\": [1, 2]}",
            "ça va? 👍 {\"json\": [1, 2]}",
        ),
        ("send  keeps   inner   spacing", "keeps   inner   spacing"),
    ];
    for i in 0..from_one.len().max(from_two.len()) {
        if let Some((line, _)) = from_one.get(i) {
            one.type_line(line);
        }
        if let Some((line, _)) = from_two.get(i) {
            two.type_line(line);
        }
    }
    for (side, other, sent) in [(&mut one, 2, &from_one[..]), (&mut two, 1, &from_two[..])] {
        for (i, (_, text)) in sent.iter().enumerate() {
            let seq = i + 1;
            side.expect(json!({"event": "sent", "peer": other, "seq": seq, "text": text}));
        }
        let last = sent.len();
        side.expect(json!({"event": "delivered", "peer": other, "seq": last}));
    }
    // And the last message each way shows on the other side.
    for (side, from, sent) in [(&mut one, 2, &from_two[..]), (&mut two, 1, &from_one[..])] {
        let (seq, (_, text)) = (sent.len(), sent[sent.len() - 1]);
        side.expect_logged(json!({"event": "message", "from": from, "seq": seq, "text": text}));
    }

    // 1 ends the session.
    one.type_line("terminate");
    one.expect(json!({"event": "terminated", "peer": 2, "reason": "by_us"}));
    two.expect(json!({"event": "terminated", "peer": 1, "reason": "by_peer"}));

    // 1 asks again; 2 rejects.
    one.type_line("connect 2");
    two.expect(json!({"event": "request", "from": 1}));
    two.type_line("reject");
    one.expect(json!({"event": "rejected", "peer": 2}));

    // Nobody is client 3.
    one.type_line("connect 3");
    one.expect(json!({"event": "inactive", "peer": 3}));

    // Both leave, one after the other.
    one.type_line("leave");
    one.expect(json!({"event": "left", "server_acked": true}));
    let status = one.wait_exit();
    assert!(status.success(), "client 1 exited with {status}");
    server.expect_next_line(&format!("client 1 at {one_addr} left"));
    assert_eq!(server.expect_table(), [(2, two_addr)]);
    two.type_line("leave");
    two.expect(json!({"event": "left", "server_acked": true}));
    let status = two.wait_exit();
    assert!(status.success(), "client 2 exited with {status}");
    server.expect_next_line(&format!("client 2 at {two_addr} left"));
    server.expect_next_line("active clients: 0");

    // The whole logs: each message shown exactly once, in order, numbered from 1; each sent
    // message delivered exactly once; nothing undelivered, no error.
    for (side, sender, sent) in [(&one, 2, &from_two[..]), (&two, 1, &from_one[..])] {
        let shown: Vec<Value> = side.events("message").into_iter().cloned().collect();
        let expected: Vec<Value> = sent
            .iter()
            .enumerate()
            .map(|(i, (_, text))| {
                json!({"event": "message", "from": sender, "seq": i + 1, "text": text})
            })
            .collect();
        assert_eq!(shown, expected, "client {}: messages shown", side.id);
    }
    for (side, n) in [(&one, from_one.len()), (&two, from_two.len())] {
        let seqs = |name: &str| -> Vec<u64> {
            side.events(name)
                .iter()
                .map(|v| v["seq"].as_u64().expect("a seq"))
                .collect()
        };
        let all: Vec<u64> = (1..=n as u64).collect();
        assert_eq!(seqs("sent"), all, "client {}: sent", side.id);
        let mut delivered = seqs("delivered");
        delivered.sort_unstable();
        assert_eq!(delivered, all, "client {}: delivered", side.id);
        for bad in ["undelivered", "error", "notice"] {
            assert!(
                side.events(bad).is_empty(),
                "client {}: {bad} events in {:#?}",
                side.id,
                side.log
            );
        }
        assert_eq!(side.events("left").len(), 1, "client {}", side.id);
        assert_eq!(
            side.log.last().unwrap()["event"],
            "left",
            "client {}",
            side.id
        );
    }
    // Exactly one request each time 1 asked, exactly one answer each.
    assert_eq!(two.events("request").len(), 2, "{:#?}", two.log);
    assert_eq!(one.events("connected").len(), 1, "{:#?}", one.log);
    assert_eq!(one.events("rejected").len(), 1, "{:#?}", one.log);
    assert_eq!(one.events("terminated").len(), 1, "{:#?}", one.log);
    assert_eq!(two.events("terminated").len(), 1, "{:#?}", two.log);
    println!("took {:?}", started.elapsed());
}

#[test]
fn bad_commands_get_one_error_line_and_change_nothing() {
    let server = Server::start(&[]);
    let mut c = JsonClient::start(server.addr, 1);
    let bad = [
        ("/dance", "unknown command /dance"),
        ("connect 3x", "neither a client id nor a name"),
        ("connect b/ob", "use letters, digits"),
        ("connect 0", "start at 1"),
        ("accept", "no connection request"),
        ("send hi", "not connected"),
    ];
    for (line, _) in &bad {
        c.type_line(line);
    }
    // A valid command after them all: its answer is the line right after the errors.
    c.type_line("status");
    for (line, says) in &bad {
        let v = c.next_event(&format!("an error for {line:?}"));
        assert_eq!(v["event"], "error", "{line:?} answered with {v}");
        let message = v["message"].as_str().expect("an error message");
        assert!(message.contains(says), "{line:?}: {message:?}");
        assert!(v.get("fatal").is_none(), "{line:?}: {v}");
    }
    let status = c.next_event("the status");
    assert_eq!(
        status,
        json!({"event": "status", "id": 1, "name": null, "current": null, "connected": [], "requests": [], "relayed": null})
    );
    assert_eq!(c.proc.try_exit(), None, "the client exited");
    // Network commands still work too.
    c.type_line("connect 3");
    assert_eq!(
        c.next_event("inactive"),
        json!({"event": "inactive", "peer": 3})
    );
    c.type_line("leave");
    assert_eq!(
        c.next_event("left"),
        json!({"event": "left", "server_acked": true})
    );
    let exit = c.wait_exit();
    assert!(exit.success(), "exited with {exit}");
    assert_eq!(c.log.len(), 1 + bad.len() + 3, "{:#?}", c.log);
}

#[test]
fn no_server_exits_with_one_clear_line() {
    // A port that is bound (so nothing else takes it) and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let started = Instant::now();
    let mut c = Proc::spawn_with_stdin(&["client", "--server", &addr, "--retry-interval", "0.2"]);
    let status = c.wait_exit();
    let took = started.elapsed();
    assert!(!status.success(), "exited with {status} without a server");
    assert!(took < Duration::from_secs(4), "took {took:?} to give up");
    let stderr = c.full_stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr:?}");
    assert!(
        lines[0].contains(&format!("no rendezvous server at {addr}")),
        "stderr: {stderr:?}"
    );
    assert_eq!(
        c.rest_of_stdout(),
        Vec::<String>::new(),
        "printed on stdout"
    );
    println!("gave up after {took:?}");
}

#[test]
fn end_of_input_leaves_after_delivering() {
    let server = Server::start(&[]);
    let (mut one, mut two) = connected_pair(&server);
    let one_addr = server.expect_join(1);
    one.type_line("send last words, ünïcödé");
    one.proc.close_stdin();
    two.expect(json!({"event": "message", "from": 1, "seq": 1, "text": "last words, ünïcödé"}));
    let status = one.wait_exit();
    assert!(status.success(), "exited with {status}; log {:#?}", one.log);
    let names: Vec<&str> = one
        .log
        .iter()
        .map(|v| v["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "registered",
            "connected",
            "sent",
            "delivered",
            "terminated",
            "left"
        ],
        "{:#?}",
        one.log
    );
    assert_eq!(
        one.log[3],
        json!({"event": "delivered", "peer": 2, "seq": 1})
    );
    assert_eq!(one.log[5], json!({"event": "left", "server_acked": true}));
    two.expect(json!({"event": "terminated", "peer": 1, "reason": "by_peer"}));
    server.proc.wait_for_line("client 1 left", |l| {
        l == format!("client 1 at {one_addr} left")
    });
}

#[test]
fn sigterm_leaves_cleanly() {
    let server = Server::start(&[]);
    let mut c = JsonClient::start(server.addr, 1);
    let addr = server.expect_join(1);
    // stdin stays open: only the signal can make it leave.
    c.proc.signal("-TERM");
    c.expect(json!({"event": "left", "server_acked": true}));
    let status = c.wait_exit();
    assert!(status.success(), "exited with {status}");
    server
        .proc
        .wait_for_line("client 1 left", |l| l == format!("client 1 at {addr} left"));
    server.expect_next_line("active clients: 0");
}

#[test]
fn a_plain_client_prints_readable_lines() {
    let server = Server::start(&[]);
    let server_addr = server.addr.to_string();
    let mut c = Proc::spawn_with_stdin(&[
        "client",
        "--server",
        &server_addr,
        "--retry-interval",
        RETRY,
    ]);
    let first = c.expect_line("the registration");
    assert!(
        first.starts_with("registered: you are client 1"),
        "{first:?}"
    );
    c.write_line("connect 3");
    assert_eq!(c.expect_line("Client 3 Inactive"), "Client 3 Inactive");
    c.write_line("connect 3x");
    let error = c.expect_line("an error");
    assert!(
        error.starts_with("error: ") && error.contains("neither a client id nor a name"),
        "{error:?}"
    );
    c.write_line("leave");
    assert_eq!(c.expect_line("the goodbye"), "left the server. Bye.");
    let status = c.wait_exit();
    assert!(status.success(), "exited with {status}");
    assert_eq!(c.rest_of_stdout(), Vec::<String>::new());
    assert_eq!(c.full_stderr(), "");
}
