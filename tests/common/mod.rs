//! The process harness shared by the end-to-end tests: the real `p2pchat` binary as a
//! child process.
//!
//! A child's stdout is read on a background thread into a channel of lines, so that every
//! wait has a timeout (and a test that fails never hangs); its stderr is collected on another
//! thread, to be shown when a test fails. The child is killed and reaped when its [`Proc`] is
//! dropped, so a test that passes, fails or panics leaves no process behind.

// Each test file uses its own part of the harness.
#![allow(dead_code)]

pub mod capture;
pub mod coturn;
pub mod emulator;
pub mod lab;
pub mod natlab;
pub mod netns;
pub mod turn_client;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use p2pchat::wire::ClientId;

/// The longest any single wait may take; only a failing test ever waits this long.
pub const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- any p2pchat process

/// What the stderr reader has collected.
#[derive(Default)]
struct StderrSink {
    text: String,
    /// The child closed its stderr (it exited, normally).
    closed: bool,
}

/// A running `p2pchat` child, killed and reaped on drop.
pub struct Proc {
    child: Child,
    /// The child's stdin, while open (only for [`Proc::spawn_with_stdin`]).
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Arc<Mutex<StderrSink>>,
    /// The child's own data directory (`XDG_DATA_HOME`), removed on drop.
    data_home: TempDir,
}

/// A fresh directory under the system's temporary directory, removed (with what it holds)
/// on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("p2pchat-test-{}-{what}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cannot create a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    pub fn arg(&self) -> &str {
        self.0.to_str().expect("temporary paths are UTF-8")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Proc {
    /// Starts `p2pchat ARGS` with stdin closed (`/dev/null`).
    pub fn spawn(args: &[&str]) -> Proc {
        Self::start(&[], args, Stdio::null())
    }

    /// Starts `p2pchat ARGS` with a pipe on stdin, to type commands with
    /// [`Proc::write_line`]. The pipe stays open until [`Proc::close_stdin`] or the drop.
    pub fn spawn_with_stdin(args: &[&str]) -> Proc {
        Self::start(&[], args, Stdio::piped())
    }

    /// Starts `PREFIX... p2pchat ARGS`, with a pipe on stdin (or `/dev/null` if not
    /// `piped`). The prefix is a command that runs the binary, such as
    /// `ip netns exec NS`; it must exec it (not fork), so that killing the child kills
    /// `p2pchat` itself. An empty prefix runs the binary directly.
    pub fn spawn_via(prefix: &[&str], args: &[&str], piped: bool) -> Proc {
        let stdin = if piped { Stdio::piped() } else { Stdio::null() };
        Self::start(prefix, args, stdin)
    }

    fn start(prefix: &[&str], args: &[&str], stdin: Stdio) -> Proc {
        let bin = env!("CARGO_BIN_EXE_p2pchat");
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        // Every child gets a data directory of its own: its default state directory is
        // there, so tests never share state (nor touch the user's).
        let data_home = TempDir::new("data");
        let mut child = command
            .args(args)
            .env("XDG_DATA_HOME", data_home.path())
            .env_remove("NO_COLOR")
            .env_remove("RUST_LOG") // only the program's own lines on stderr
            .stdin(stdin)
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
        let stderr = Arc::new(Mutex::new(StderrSink::default()));
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                sink.lock()
                    .unwrap()
                    .text
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            sink.lock().unwrap().closed = true;
        });
        Proc {
            data_home,
            stdin: child.stdin.take(),
            child,
            stdout: rx,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().text.clone()
    }

    /// Everything the child wrote to stderr, once it has closed it (call after the child
    /// exited); fails the test if stderr is still open after [`WAIT`].
    pub fn full_stderr(&self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let sink = self.stderr.lock().unwrap();
                if sink.closed {
                    return sink.text.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "stderr still open {WAIT:?} later; so far: {:?}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Types one line on the child's stdin.
    pub fn write_line(&mut self, line: &str) {
        let stdin = self
            .stdin
            .as_mut()
            .expect("stdin is not a pipe, or was closed");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| {
                panic!(
                    "cannot write {line:?} to the child: {e}; stderr: {:?}",
                    self.stderr.lock().unwrap().text
                )
            });
    }

    /// Closes the child's stdin: end of input.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line, or `None` if none comes within `timeout` (or stdout closed).
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.stdout.recv_timeout(timeout).ok()
    }

    /// The next stdout line, failing the test if none comes within [`WAIT`].
    pub fn expect_line(&self, what: &str) -> String {
        self.next_line(WAIT).unwrap_or_else(|| {
            panic!(
                "no line printed (expected {what}) within {WAIT:?}; stderr: {:?}",
                self.stderr()
            )
        })
    }

    /// Skips stdout lines until one satisfies `pred`; fails the test after [`WAIT`].
    pub fn wait_for_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_for_line_within(WAIT, what, pred)
    }

    /// Skips stdout lines until one satisfies `pred`; fails the test after `timeout`.
    pub fn wait_for_line_within(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some(line) if pred(&line) => return line,
                Some(line) => seen.push(line),
                None => panic!(
                    "no line {what} within {timeout:?}; lines seen: {seen:#?}; stderr: {:?}",
                    self.stderr()
                ),
            }
        }
    }

    /// Every stdout line not read yet, up to the end of stdout; fails the test if stdout is
    /// still open after [`WAIT`] (call it once the child exits, or is about to).
    pub fn rest_of_stdout(&self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(RecvTimeoutError::Disconnected) => return lines,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "stdout still open {WAIT:?} later; lines since: {lines:#?}; stderr: {:?}",
                    self.stderr()
                ),
            }
        }
    }

    /// The exit status, if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the process to end, failing the test if it does not within [`WAIT`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.try_exit() {
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

    /// Kills the process with SIGKILL (a crash: no goodbye to anyone) and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        self.child.kill().expect("cannot kill the child");
        self.child.wait().expect("cannot reap the child")
    }

    /// Sends a signal with `kill` (`name` such as `-TERM`).
    pub fn signal(&self, name: &str) {
        let pid = self.pid().to_string();
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

// ---------------------------------------------------------------- the server

/// The address in the server's first line, `p2pchat server listening on ADDR (...)`.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("p2pchat server listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
}

/// A `p2pchat server` listening on a free loopback port.
pub struct Server {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `p2pchat server --bind 127.0.0.1:0 EXTRA` and learns its port.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_via(&[], "127.0.0.1:0", extra)
    }

    /// Starts `p2pchat server --bind BIND EXTRA` (a fixed port, to restart a server where
    /// its clients expect it) and waits for its listening line.
    pub fn start_at(bind: &str, extra: &[&str]) -> Server {
        Self::start_via(&[], bind, extra)
    }

    /// Starts `PREFIX... p2pchat server --bind BIND EXTRA` (see [`Proc::spawn_via`]) and
    /// waits for its listening line.
    pub fn start_via(prefix: &[&str], bind: &str, extra: &[&str]) -> Server {
        let mut args = vec!["server", "--bind", bind];
        args.extend_from_slice(extra);
        let proc = Proc::spawn_via(prefix, &args, false);
        let first = proc.expect_line("the listening line");
        let addr = parse_listening_line(&first)
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        Server { proc, addr }
    }

    /// Waits for the next printed table and returns its rows as (id, address).
    pub fn expect_table(&self) -> Vec<(ClientId, SocketAddr)> {
        let head = self.proc.wait_for_line("\"active clients: N\"", |l| {
            l.starts_with("active clients: ")
        });
        self.read_table_after(&head)
    }

    /// The rows of the table whose first line is `head`, read from the lines that follow.
    pub fn read_table_after(&self, head: &str) -> Vec<(ClientId, SocketAddr)> {
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
    pub fn expect_next_line(&self, expected: &str) {
        let line = self.proc.expect_line(expected);
        assert_eq!(line, expected);
    }

    /// Waits for `client ID joined from ADDR` and returns the address.
    pub fn expect_join(&self, id: ClientId) -> SocketAddr {
        let prefix = format!("client {id} joined from ");
        let line = self
            .proc
            .wait_for_line(&format!("{prefix}ADDR"), |l| l.starts_with(&prefix));
        line[prefix.len()..]
            .parse()
            .unwrap_or_else(|_| panic!("bad join line {line:?}"))
    }
}

// ---------------------------------------------------------------- ports

/// A UDP port on 127.0.0.1 that was free a moment ago: bound, noted, released. For a
/// process that must come back on the same address (a restarted server or client).
pub fn free_udp_port() -> u16 {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("cannot bind a probe socket");
    sock.local_addr().expect("local_addr").port()
}

// ---------------------------------------------------------------- a --json client

/// A `p2pchat client --json` with piped stdin: commands are typed as lines, every stdout
/// line is checked to be a JSON object with an `"event"` string and kept in `log`.
pub struct JsonClient {
    pub proc: Proc,
    /// A name for messages (`"A"`, `"client 2"`).
    pub name: String,
    /// Every event printed so far, in order.
    pub log: Vec<serde_json::Value>,
}

impl JsonClient {
    /// Starts `PREFIX... p2pchat client --json ARGS` (see [`Proc::spawn_via`]); waits for
    /// nothing.
    pub fn spawn_via(name: &str, prefix: &[&str], args: &[&str]) -> JsonClient {
        let mut all = vec!["client", "--json"];
        all.extend_from_slice(args);
        JsonClient {
            proc: Proc::spawn_via(prefix, &all, true),
            name: name.to_string(),
            log: Vec::new(),
        }
    }

    /// Starts `p2pchat client --json ARGS`; waits for nothing.
    pub fn spawn(name: &str, args: &[&str]) -> JsonClient {
        Self::spawn_via(name, &[], args)
    }

    /// Parses one stdout line, failing the test unless it is an event object.
    pub fn parse(&self, line: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line:?}", self.name));
        assert!(
            v.get("event").is_some_and(serde_json::Value::is_string),
            "{}: no \"event\" string in {line}",
            self.name
        );
        strip_fingerprint(v)
    }

    /// Types one command.
    pub fn type_line(&mut self, line: &str) {
        self.proc.write_line(line);
    }

    /// The next event, if one comes before `deadline`.
    pub fn next_event_before(&mut self, deadline: Instant) -> Option<serde_json::Value> {
        let line = self
            .proc
            .next_line(deadline.saturating_duration_since(Instant::now()))?;
        let v = self.parse(&line);
        self.log.push(v.clone());
        Some(v)
    }

    /// Skips events until one satisfies `pred` (the skipped ones stay in the log); fails the
    /// test after `timeout`.
    pub fn wait_event_within(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_event_before(deadline) {
                Some(v) if pred(&v) => return v,
                Some(_) => {}
                None => panic!(
                    "{}: no event {what} within {timeout:?}; events so far: {:#?}; stderr: {:?}",
                    self.name,
                    self.log,
                    self.proc.stderr()
                ),
            }
        }
    }

    /// [`JsonClient::wait_event_within`] [`WAIT`].
    pub fn wait_event(
        &mut self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.wait_event_within(WAIT, what, pred)
    }

    /// Waits for exactly this event (others may come first).
    pub fn expect(&mut self, event: serde_json::Value) -> serde_json::Value {
        let what = event.to_string();
        self.wait_event(&what, |v| *v == event)
    }

    /// Waits for `connected` to `peer` (others may come first), which says the path
    /// (`direct`, `lan` or `punched`) and the peer's address; returns it.
    pub fn expect_connected(&mut self, peer: ClientId) -> serde_json::Value {
        let v = self.wait_event(&format!("connected to {peer}"), |v| {
            v["event"] == "connected" && v["peer"] == peer
        });
        assert!(
            ["direct", "lan", "punched"].contains(&v["path"].as_str().unwrap_or("")),
            "{}: {v}",
            self.name
        );
        let addr = v["addr"].as_str().unwrap_or("");
        assert!(addr.parse::<SocketAddr>().is_ok(), "{}: {v}", self.name);
        v
    }

    /// Reads events until the whole log satisfies `done`; fails the test after `timeout`.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(&self.log) {
            if self.next_event_before(deadline).is_none() {
                panic!(
                    "{}: not {what} within {timeout:?}; events so far: {:#?}; stderr: {:?}",
                    self.name,
                    self.log,
                    self.proc.stderr()
                );
            }
        }
    }

    /// Reads every event printed within `quiet` (to check that nothing more comes).
    pub fn read_for(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while self.next_event_before(deadline).is_some() {}
    }

    /// Waits for the process to exit and reads its last events; returns the exit status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let status = self.proc.wait_exit();
        for line in self.proc.rest_of_stdout() {
            let v = self.parse(&line);
            self.log.push(v);
        }
        status
    }

    /// The logged events named `name`.
    pub fn events(&self, name: &str) -> Vec<&serde_json::Value> {
        events_named(&self.log, name)
    }
}

/// The events of `log` named `name`.
pub fn events_named<'a>(log: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    log.iter().filter(|v| v["event"] == name).collect()
}

/// `registered`, `request`, `connected` and `status` carry a fingerprint, different on every
/// run: it is checked to look like one (four groups of five base32 characters) and taken
/// out, so that tests compare the rest exactly.
pub fn strip_fingerprint(mut v: serde_json::Value) -> serde_json::Value {
    let event = v["event"].as_str().unwrap_or_default().to_string();
    if matches!(
        event.as_str(),
        "registered" | "request" | "connected" | "status"
    ) {
        if let Some(map) = v.as_object_mut() {
            let f = map
                .remove("fingerprint")
                .unwrap_or_else(|| panic!("{event} without a fingerprint"));
            let f = f.as_str().unwrap_or_default();
            let groups: Vec<&str> = f.split('-').collect();
            assert!(
                groups.len() == 4
                    && groups.iter().all(|g| g.len() == 5
                        && g.bytes()
                            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))),
                "not a fingerprint: {f:?}"
            );
        }
    }
    v
}

/// A peer the test drives by hand from a plain UDP socket, with a real [`Peer`] state
/// machine inside for the handshake: once connected, the test sends whatever messages of
/// the session it wants, sealed with the session's keys as a real peer would (hostile file
/// names, forged chunks...), and reads what comes back opened.
///
/// [`Peer`]: p2pchat::peer::Peer
pub struct SealedPeer {
    pub sock: std::net::UdpSocket,
    pub peer: std::cell::RefCell<p2pchat::peer::Peer>,
    pub id: ClientId,
    pub session: p2pchat::wire::SessionId,
    pub to: SocketAddr,
    pub server: SocketAddr,
}

impl SealedPeer {
    /// Registers with `server`, asks client `target` (driven by `accept`, which must type
    /// `accept`) to connect, and returns once the session is open.
    pub fn connect(
        server: SocketAddr,
        target: ClientId,
        accept: impl FnOnce(ClientId),
    ) -> SealedPeer {
        use p2pchat::peer::{Peer, PeerConfig};
        use p2pchat::wire::Message;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let config = PeerConfig::new(server, Duration::from_secs(1));
        let mut raw = SealedPeer {
            sock,
            peer: std::cell::RefCell::new(Peer::new(config, Instant::now())),
            id: 0,
            session: 0,
            to: server,
            server,
        };
        raw.drive("registered", |p, _| p.id().is_some());
        raw.id = raw.peer.borrow().id().unwrap();
        raw.peer
            .borrow_mut()
            .connect(Instant::now(), target)
            .unwrap();
        let mut asked = None;
        raw.drive("the request sent", |_, sent| {
            asked = sent.iter().find_map(|(addr, m)| match m {
                Message::ConnectRequest { session, .. } => Some((*addr, *session)),
                _ => None,
            });
            asked.is_some()
        });
        let (to, session) = asked.expect("sent");
        (raw.to, raw.session) = (to, session);
        accept(raw.id);
        raw.drive("connected", |p, _| p.connected_peers() == [target]);
        raw
    }

    /// Sends `m`: sealed if it is a message of our session, else padded as a client pads
    /// its requests to the server.
    pub fn send(&self, to: SocketAddr, m: &p2pchat::wire::Message) {
        let sealed = if m.session().is_some() {
            self.peer
                .borrow_mut()
                .seal(to, std::slice::from_ref(m))
                .unwrap_or_else(|| m.clone())
        } else {
            let mut m = m.clone();
            p2pchat::wire::pad_request(&mut m);
            m
        };
        self.sock
            .send_to(&p2pchat::wire::encode(&sealed), to)
            .unwrap();
    }

    /// The next message (opened) satisfying `pred` (others are dropped), within [`WAIT`].
    pub fn recv_until(
        &self,
        what: &str,
        pred: impl Fn(&p2pchat::wire::Message) -> bool,
    ) -> p2pchat::wire::Message {
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "sealed peer: no {what} within {WAIT:?}");
            self.sock.set_read_timeout(Some(left)).unwrap();
            let Ok((len, from)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            let opened = self.peer.borrow_mut().open_sealed(from, &buf[..len]);
            for m in opened.unwrap_or_default() {
                if pred(&m) {
                    return m;
                }
            }
        }
    }

    /// Drives the inner peer (sends what it has, handles what comes, its timers) until
    /// `done(peer, everything sent so far)`, within [`WAIT`].
    pub fn drive(
        &mut self,
        what: &str,
        mut done: impl FnMut(&p2pchat::peer::Peer, &[(SocketAddr, p2pchat::wire::Message)]) -> bool,
    ) {
        let deadline = Instant::now() + WAIT;
        let mut sent = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            {
                let mut p = self.peer.borrow_mut();
                while let Some((t, plain)) = p.poll_transmit_plain() {
                    self.sock
                        .send_to(&p2pchat::wire::encode(&t.message), t.to)
                        .unwrap();
                    for m in plain {
                        sent.push((t.to, m));
                    }
                }
                while p.poll_event().is_some() {}
                if done(&p, &sent) {
                    return;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "sealed peer: not {what} within {WAIT:?}");
            self.sock
                .set_read_timeout(Some(left.min(Duration::from_millis(20))))
                .unwrap();
            let mut p = self.peer.borrow_mut();
            if let Ok((len, from)) = self.sock.recv_from(&mut buf) {
                p.handle_datagram(Instant::now(), from, &buf[..len]);
            }
            let now = Instant::now();
            if p.poll_timeout().is_some_and(|t| t <= now) {
                p.handle_timeout(now);
            }
        }
    }
}
