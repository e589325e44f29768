//! End-to-end tests of crashes and restarts: the real binaries on loopback, one of them
//! killed with SIGKILL (no `Leave`, no `Terminate`: what a crash or a pulled cable looks like
//! to the others), and sometimes started again on the same address.
//!
//! The process harness (every wait with a timeout, every child killed on drop) is in
//! `common/mod.rs`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{events_named, free_udp_port, JsonClient, Server, TempDir};
use p2pchat::wire::ClientId;

/// The retry interval of every client here: session Pings every 0.2 s, a silent session
/// declared dead after 1.2 s.
const RETRY: &str = "0.2";

/// Starts `p2pchat client --json --server SERVER --retry-interval 0.2 --id ID EXTRA` and
/// waits for its registration (`again: false`).
fn client(name: &str, server: SocketAddr, id: ClientId, extra: &[&str]) -> JsonClient {
    let (server, want) = (server.to_string(), id.to_string());
    let mut args = vec![
        "--server",
        &server,
        "--retry-interval",
        RETRY,
        "--id",
        &want,
    ];
    args.extend_from_slice(extra);
    let mut c = JsonClient::spawn(name, &args);
    c.expect(json!({"event": "registered", "id": id, "again": false}));
    c
}

/// `asker` connects to `answerer`, which accepts; both see `connected`.
fn connect(asker: &mut JsonClient, asker_id: ClientId, answerer: &mut JsonClient, id: ClientId) {
    asker.type_line(&format!("connect {id}"));
    answerer.expect(json!({"event": "request", "from": asker_id}));
    answerer.type_line(&format!("accept {asker_id}"));
    answerer.expect_connected(asker_id);
    asker.expect_connected(id);
}

/// `from` sends `texts` to `to` (its current peer); waits until `to` has shown them all and
/// `from` has been told the last one was delivered. Returns the numbers they got.
fn exchange(
    from: &mut JsonClient,
    from_id: ClientId,
    to: &mut JsonClient,
    to_id: ClientId,
    texts: &[String],
) -> Vec<u64> {
    for t in texts {
        from.type_line(&format!("send {t}"));
    }
    let mut seqs = Vec::new();
    for t in texts {
        let sent = from.wait_event(&format!("sent {t:?}"), |v| {
            v["event"] == "sent" && v["text"] == t.as_str()
        });
        assert_eq!(sent["peer"], to_id, "{sent}");
        seqs.push(sent["seq"].as_u64().expect("a seq"));
    }
    let last = *seqs.last().expect("something to send");
    from.wait_event(&format!("delivered #{last}"), |v| {
        *v == json!({"event": "delivered", "peer": to_id, "seq": last})
    });
    for (t, seq) in texts.iter().zip(&seqs) {
        let shown = json!({"event": "message", "from": from_id, "seq": seq, "text": t});
        if !to.log.contains(&shown) {
            to.expect(shown);
        }
    }
    seqs
}

/// The (seq, text) of every message `log` shows from `from`, in order.
fn shown_from(log: &[Value], from: ClientId) -> Vec<(u64, String)> {
    events_named(log, "message")
        .into_iter()
        .filter(|v| v["from"] == from)
        .map(|v| {
            (
                v["seq"].as_u64().expect("a seq"),
                v["text"].as_str().expect("a text").to_string(),
            )
        })
        .collect()
}

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix} {i}")).collect()
}

// ---------------------------------------------------------------- tests

#[test]
fn a_killed_client_is_dropped_by_the_server_and_its_peer_is_told() {
    let server = Server::start(&["--ttl", "1"]);
    let mut one = client("client 1", server.addr, 1, &[]);
    let one_addr = server.expect_join(1);
    let mut two = client("client 2", server.addr, 2, &[]);
    let two_addr = server.expect_join(2);
    assert_eq!(server.expect_table(), [(1, one_addr), (2, two_addr)]);
    connect(&mut one, 1, &mut two, 2);
    exchange(&mut one, 1, &mut two, 2, &texts("before the crash", 2));

    let status = two.proc.kill();
    let killed = Instant::now();
    assert!(!status.success(), "client 2 exited with {status}");

    // The peer: nothing heard for the session timeout (6 × 0.2 s) ends the session.
    one.wait_event_within(Duration::from_secs(4), "terminated by silence", |v| {
        v["event"] == "terminated"
    });
    let told = killed.elapsed();
    assert_eq!(
        one.log.last().unwrap(),
        &json!({"event": "terminated", "peer": 2, "reason": "peer_silent"}),
        "{:#?}",
        one.log
    );
    // The last thing heard came at most a Ping interval (0.2 s) before the kill, so the
    // end comes about 1.0 to 1.2 s after it; the bound leaves room for a busy machine.
    assert!(
        told >= Duration::from_millis(500),
        "the session ended only {told:?} after the crash, before its timeout"
    );

    // The server: no keepalive for the TTL (1 s) drops the entry; client 1 stays.
    let expired = format!("client 2 at {two_addr} expired (not heard from)");
    server
        .proc
        .wait_for_line(&expired, |l| l == expired.as_str());
    let dropped = killed.elapsed();
    assert_eq!(server.expect_table(), [(1, one_addr)]);
    // The last keepalive came at most ttl/3 before the kill.
    assert!(
        dropped >= Duration::from_millis(600),
        "expired only {dropped:?} after the crash with --ttl 1"
    );

    // Client 1 carries on: it can look client 2 up and is told it is gone.
    one.type_line("connect 2");
    one.expect(json!({"event": "inactive", "peer": 2}));
    for bad in ["undelivered", "error", "notice"] {
        assert!(one.events(bad).is_empty(), "{bad} in {:#?}", one.log);
    }
    one.type_line("leave");
    one.expect(json!({"event": "left", "server_acked": true}));
    let status = one.wait_exit();
    assert!(status.success(), "client 1 exited with {status}");
    println!("peer told after {told:?}, server dropped it after {dropped:?}");
}

#[test]
fn a_client_registers_again_after_a_server_restart() {
    let bind = format!("127.0.0.1:{}", free_udp_port());
    let mut server = Server::start_at(&bind, &["--ttl", "1"]);
    let mut c = client("client 1", server.addr, 1, &[]);
    let addr = server.expect_join(1);
    assert_eq!(server.expect_table(), [(1, addr)]);

    let status = server.proc.kill();
    assert!(!status.success(), "the server exited with {status}");
    let restarted = Instant::now();
    let server = Server::start_at(&bind, &["--ttl", "1"]);

    // Its next keepalive (every ttl/3) is answered NotRegistered: it registers again, with
    // the same id, which is free on the new server.
    let notice = c.wait_event("a notice", |v| v["event"] == "notice");
    assert!(
        notice["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{notice}"
    );
    c.expect(json!({"event": "registered", "id": 1, "again": true}));
    let took = restarted.elapsed();
    let names: Vec<&str> = c.log.iter().map(|v| v["event"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["registered", "notice", "registered"],
        "{:#?}",
        c.log
    );
    assert_eq!(server.expect_join(1), addr);
    assert_eq!(server.expect_table(), [(1, addr)]);

    // And it is really registered: the keepalives keep it past the TTL, and it leaves
    // with an acknowledgement.
    c.read_for(Duration::from_millis(1500));
    assert_eq!(c.log.len(), 3, "{:#?}", c.log);
    assert_eq!(server.proc.next_line(Duration::ZERO), None, "it expired");
    c.type_line("leave");
    c.expect(json!({"event": "left", "server_acked": true}));
    let status = c.wait_exit();
    assert!(status.success(), "the client exited with {status}");
    server
        .proc
        .wait_for_line("client 1 left", |l| l == format!("client 1 at {addr} left"));
    println!("registered again {took:?} after the restart");
}

#[test]
fn a_restarted_peer_is_not_confused_with_its_stale_session() {
    let server = Server::start(&[]);
    let b_bind = format!("127.0.0.1:{}", free_udp_port());
    // B's state directory keeps its key across the crash: the restarted B proves the same
    // key, so A replaces the old session at once.
    let b_state = TempDir::new("restarted-b");
    let b_dir = b_state.0.display().to_string();
    let mut a = client("A", server.addr, 1, &[]);
    let mut b = client(
        "B",
        server.addr,
        2,
        &["--bind", &b_bind, "--state-dir", &b_dir],
    );
    connect(&mut a, 1, &mut b, 2);
    let old_to_b = texts("old session, A to B,", 3);
    let old_to_a = texts("old session, B to A,", 3);
    assert_eq!(exchange(&mut a, 1, &mut b, 2, &old_to_b), [1, 2, 3]);
    assert_eq!(exchange(&mut b, 2, &mut a, 1, &old_to_a), [1, 2, 3]);
    let before_crash = a.log.len();

    // B crashes and comes back at once, on the same address with the same id: the server
    // takes its Register as a retransmission and answers with the same id.
    b.proc.kill();
    drop(b);
    let restarted = Instant::now();
    let mut b2 = client(
        "B'",
        server.addr,
        2,
        &["--bind", &b_bind, "--state-dir", &b_dir],
    );
    b2.type_line("connect 1");

    // A still has the old session with 2. Whichever way it learns that session is over
    // (the new request replaces it, or B' resets A's Ping on it, or silence), it ends it
    // once and shows the new request once.
    a.wait_event("the new request", |v| {
        *v == json!({"event": "request", "from": 2})
    });
    let since = &a.log[before_crash..];
    let ended: Vec<&Value> = events_named(since, "terminated");
    assert_eq!(ended.len(), 1, "{since:#?}");
    assert_eq!(ended[0]["peer"], 2, "{since:#?}");
    let ended_at = since.iter().position(|v| v["event"] == "terminated");
    let request_at = since.iter().position(|v| v["event"] == "request");
    assert!(ended_at < request_at, "{since:#?}");
    let reason = ended[0]["reason"].to_string();
    a.type_line("accept 2");
    a.expect_connected(2);
    b2.expect_connected(1);
    let took = restarted.elapsed();

    // The new session numbers from 1 again, both ways.
    let new_to_b = texts("new session, A to B',", 3);
    let new_to_a = texts("new session, B' to A,", 3);
    assert_eq!(exchange(&mut a, 1, &mut b2, 2, &new_to_b), [1, 2, 3]);
    assert_eq!(exchange(&mut b2, 2, &mut a, 1, &new_to_a), [1, 2, 3]);

    // Nothing more comes: no second request, no stray message, no second ending.
    a.read_for(Duration::from_millis(600));
    b2.read_for(Duration::from_millis(100));
    let since = &a.log[before_crash..];
    assert_eq!(events_named(since, "request").len(), 1, "{since:#?}");
    assert_eq!(events_named(since, "terminated").len(), 1, "{since:#?}");
    assert_eq!(events_named(since, "connected").len(), 1, "{since:#?}");
    // Every message A ever showed from 2, each once: the old session's, then the new one's.
    let expected: Vec<(u64, String)> = old_to_a
        .iter()
        .chain(&new_to_a)
        .zip([1, 2, 3, 1, 2, 3])
        .map(|(t, seq)| (seq, t.clone()))
        .collect();
    assert_eq!(shown_from(&a.log, 2), expected, "{:#?}", a.log);
    let expected: Vec<(u64, String)> = new_to_b
        .iter()
        .zip(1..)
        .map(|(t, seq)| (seq, t.clone()))
        .collect();
    assert_eq!(shown_from(&b2.log, 1), expected, "{:#?}", b2.log);
    for side in [&a, &b2] {
        for bad in ["undelivered", "error", "request", "notice"] {
            let found = side.events(bad);
            let allowed = usize::from(bad == "request" && side.name == "A");
            assert_eq!(
                found.len(),
                allowed,
                "{}: {bad} in {:#?}",
                side.name,
                side.log
            );
        }
    }
    assert!(b2.events("terminated").is_empty(), "{:#?}", b2.log);
    println!(
        "A ended the stale session ({reason}) and was connected to B' {took:?} after the restart"
    );
}
