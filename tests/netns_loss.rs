//! End-to-end tests under real packet loss: the real server and two real clients in a network
//! namespace of their own, whose kernel drops 20% of the UDP datagrams at random (an
//! nftables rule on the input hook, so every datagram, each way, is at risk).
//!
//! Each client sends 100 messages, most of them one at a time (a datagram each, since the
//! clients pack only what is ready at once), the last ones in a burst (packed together).
//! In a second test (a namespace of its own), one client sends the other a 1 MiB file,
//! which must arrive byte-identical with its SHA-256.
//!
//! It needs root and the `ip` (iproute2) and `nft` (nftables) commands; `.ci/run` installs
//! them. Without them the test fails with one line saying why, unless
//! `P2PCHAT_SKIP_NETNS=1` is set, in which case it says it was skipped and passes.
//!
//! The namespace is deleted when the test ends, whether it passes or fails (a drop guard,
//! dropped after the processes in it are killed).

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::netns::{self, Netns};
use common::{events_named, JsonClient, Server};
use p2pchat::wire::ClientId;

/// Messages sent each way.
const MESSAGES: usize = 100;
/// The first this many are typed one by one, the rest in one burst.
const PACED: usize = 80;
/// Inside the namespace every port is free: fixed addresses, so that a client restarted
/// after its registration gave up comes back on the address the server knows.
const SERVER: &str = "127.0.0.1:7070";
const BIND_A: &str = "127.0.0.1:40001";
const BIND_B: &str = "127.0.0.1:40002";

/// Every UDP datagram entering the namespace is counted by the first rule; one in five,
/// at random, is counted again and dropped by the second.
const RULESET: &str = "table inet p2ploss {
  chain input {
    type filter hook input priority 0;
    meta l4proto udp counter
    meta l4proto udp numgen random mod 100 < 20 counter drop
  }
}
";

// ---------------------------------------------------------------- the namespace

/// A network namespace with its loopback up and the loss rules loaded; deleted on drop.
/// `tag` tells apart the namespaces of tests that run at once.
fn create_lossy(tag: &str) -> Result<Netns, String> {
    let ns = Netns::create(&format!("p2ploss-{tag}-{}", std::process::id()))?;
    ns.nft(&["-f", "-"], Some(RULESET))?;
    Ok(ns)
}

/// The packet counts of the two counters: (UDP datagrams seen, dropped).
fn counters(ns: &Netns) -> (u64, u64) {
    let ruleset = ns
        .nft(&["list", "ruleset"], None)
        .unwrap_or_else(|e| panic!("{e}"));
    let counts: Vec<u64> = ruleset
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("counter packets ")? + "counter packets ".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect();
    match counts[..] {
        [seen, dropped] => (seen, dropped),
        _ => panic!("cannot read the two counters from {ruleset:?}"),
    }
}

// ---------------------------------------------------------------- clients under loss

/// A `--json` client in the namespace: short resend periods, and tries enough that 20% loss
/// never runs them out.
fn spawn_client(ns: &Netns, name: &str, bind: &str, id: ClientId, extra: &[&str]) -> JsonClient {
    let want = id.to_string();
    let mut args = vec![
        "--server",
        SERVER,
        "--bind",
        bind,
        "--id",
        &want,
        "--retry-interval",
        "0.2",
        "--connect-tries",
        "100",
        "--message-tries",
        "60",
    ];
    args.extend_from_slice(extra);
    JsonClient::spawn_via(name, &ns.prefix(), &args)
}

/// Starts a client and waits for its registration. Registration is tried 5 times, which
/// 20% loss each way defeats about once in 170 (the client then exits, as documented): such
/// a client is started again, on the same address, which the server knows if it heard one
/// of the Registers, so that the id is the same.
fn registered_client(
    ns: &Netns,
    name: &str,
    bind: &str,
    id: ClientId,
    extra: &[&str],
) -> JsonClient {
    for _ in 0..5 {
        let mut c = spawn_client(ns, name, bind, id, extra);
        let first = c.wait_event("registered (or a fatal error)", |v| {
            v["event"] == "registered" || v["event"] == "error"
        });
        if first == json!({"event": "registered", "id": id, "again": false}) {
            return c;
        }
        assert!(
            first["fatal"] == true
                && first["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("no rendezvous server")),
            "{name}: {first}; stderr: {:?}",
            c.proc.stderr()
        );
        println!("{name}: registration lost 5 times; starting it again");
        c.wait_exit();
    }
    panic!("{name}: could not register in 5 starts");
}

/// Reads until `log` has every sent message delivered and every message of the peer shown.
fn all_done(log: &[Value]) -> bool {
    events_named(log, "delivered").len() >= MESSAGES
        && events_named(log, "message").len() >= MESSAGES
}

fn text(from: &str, i: usize) -> String {
    format!("{from} says {i} of {MESSAGES}")
}

/// Checks one side's whole log: its messages sent, numbered and delivered once each, and the
/// peer's shown once each, in order.
fn check_log(c: &JsonClient, me: &str, peer: ClientId, other: &str) {
    let seqs = |name: &str| -> Vec<u64> {
        c.events(name)
            .iter()
            .map(|v| v["seq"].as_u64().expect("a seq"))
            .collect()
    };
    let all: Vec<u64> = (1..=MESSAGES as u64).collect();
    let sent: Vec<Value> = c.events("sent").into_iter().cloned().collect();
    let expected: Vec<Value> = (1..=MESSAGES)
        .map(|i| json!({"event": "sent", "peer": peer, "seq": i, "text": text(me, i)}))
        .collect();
    assert_eq!(sent, expected, "{me}: sent");
    let mut delivered = seqs("delivered");
    delivered.sort_unstable();
    assert_eq!(delivered, all, "{me}: delivered (each exactly once)");
    assert!(
        c.events("delivered").iter().all(|v| v["peer"] == peer),
        "{me}: {:#?}",
        c.events("delivered")
    );
    let shown: Vec<Value> = c.events("message").into_iter().cloned().collect();
    let expected: Vec<Value> = (1..=MESSAGES)
        .map(|i| json!({"event": "message", "from": peer, "seq": i, "text": text(other, i)}))
        .collect();
    assert_eq!(shown, expected, "{me}: messages shown");
    for bad in ["undelivered", "error", "no_answer", "rejected", "inactive"] {
        assert!(c.events(bad).is_empty(), "{me}: {bad} in {:#?}", c.log);
    }
    assert_eq!(c.events("connected").len(), 1, "{me}: {:#?}", c.log);
    assert_eq!(c.events("left").len(), 1, "{me}: {:#?}", c.log);
    assert_eq!(c.log.last().unwrap()["event"], "left", "{me}: {:#?}", c.log);
}

// ---------------------------------------------------------------- the test

/// The lossy namespace, or `None` when `P2PCHAT_SKIP_NETNS=1` says to skip.
fn lossy_netns(tag: &str) -> Option<Netns> {
    if netns::skipped("netns_loss") {
        return None;
    }
    Some(netns::require("netns_loss", create_lossy(tag)))
}

/// A (id 1) asks B (id 2), B accepts. A lookup that loses all 5 of its tries is asked again.
fn connect(a: &mut JsonClient, b: &mut JsonClient) {
    a.type_line("connect 2");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "B got no request; A: {:#?}; B: {:#?}",
            a.log,
            b.log
        );
        if let Some(v) = b.next_event_before(Instant::now() + Duration::from_millis(50)) {
            assert_eq!(v, json!({"event": "request", "from": 1}));
            break;
        }
        while let Some(v) = a.next_event_before(Instant::now()) {
            assert_eq!(v, json!({"event": "lookup_failed", "peer": 2}));
            println!("A: lookup lost 5 times; asking again");
            a.type_line("connect 2");
        }
    }
    b.type_line("accept 1");
    b.expect_connected(1);
    if a.events("connected").is_empty() {
        a.expect_connected(2);
    }
}

#[test]
fn a_hundred_messages_each_way_survive_twenty_percent_loss() {
    let Some(ns) = lossy_netns("chat") else {
        return;
    };
    let started = Instant::now();
    // Declared after `ns`, so dropped (killed) before the namespace is deleted.
    let server = Server::start_via(&ns.prefix(), SERVER, &[]);
    let mut a = registered_client(&ns, "A", BIND_A, 1, &[]);
    let mut b = registered_client(&ns, "B", BIND_B, 2, &[]);
    connect(&mut a, &mut b);
    let connected = started.elapsed();

    // Both type their lines: most of them 10 ms apart, so that each goes in a datagram of
    // its own (with its own chance of loss, and acknowledgements that overtake each other),
    // then the last ones at once, packed into a few datagrams.
    for i in 1..=MESSAGES {
        a.type_line(&format!("send {}", text("A", i)));
        b.type_line(&format!("send {}", text("B", i)));
        if i <= PACED {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let long = Duration::from_secs(20);
    a.wait_until(long, "done (all delivered and shown)", all_done);
    b.wait_until(long, "done (all delivered and shown)", all_done);
    let exchanged = started.elapsed();

    // Both leave. A ends the session; B is told (by its Terminate, or, were every one of
    // them lost, by the silence that follows) and leaves too.
    a.type_line("leave");
    a.wait_event_within(long, "left", |v| v["event"] == "left");
    b.wait_event_within(long, "terminated", |v| v["event"] == "terminated");
    b.type_line("leave");
    b.wait_event_within(long, "left", |v| v["event"] == "left");
    for c in [&mut a, &mut b] {
        let status = c.wait_exit();
        assert!(status.success(), "{} exited with {status}", c.name);
    }
    check_log(&a, "A", 2, "B");
    check_log(&b, "B", 1, "A");
    assert!(a.events("request").is_empty(), "A: {:#?}", a.log);
    assert_eq!(b.events("request").len(), 1, "B: {:#?}", b.log);
    drop(server);

    let (seen, dropped) = counters(&ns);
    println!(
        "nft: {dropped} of {seen} UDP datagrams dropped ({:.1}%); connected after {connected:?}, \
         200 messages exchanged after {exchanged:?}, both left after {:?}; \
         A left {}, B left {}, B saw the end as {}",
        100.0 * dropped as f64 / seen.max(1) as f64,
        started.elapsed(),
        a.log.last().unwrap(),
        b.log.last().unwrap(),
        b.events("terminated")[0]["reason"],
    );
    assert!(
        dropped > 0,
        "the kernel dropped nothing: no loss was tested"
    );
}

#[test]
fn a_file_arrives_identical_through_twenty_percent_loss() {
    let Some(ns) = lossy_netns("file") else {
        return;
    };
    let (da, db) = (
        common::TempDir::new("netns-a"),
        common::TempDir::new("netns-b"),
    );
    let server = Server::start_via(&ns.prefix(), SERVER, &[]);
    let mut a = registered_client(&ns, "A", BIND_A, 1, &["--downloads", da.arg()]);
    let mut b = registered_client(&ns, "B", BIND_B, 2, &["--downloads", db.arg()]);
    connect(&mut a, &mut b);
    // 1 MiB of bytes that are not all alike.
    let mut x: u32 = 0x1234_5678;
    let data: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let path = da.path().join("lossy.bin");
    std::fs::write(&path, &data).unwrap();
    a.type_line(&format!("sendfile {} @2", path.display()));
    let long = Duration::from_secs(60);
    let offer = b.wait_event_within(long, "file_offer", |v| v["event"] == "file_offer");
    b.type_line(&format!("getfile {}", offer["n"]));
    let got = b.wait_event_within(long, "file_received", |v| v["event"] == "file_received");
    a.wait_event_within(long, "file_sent", |v| v["event"] == "file_sent");
    let received = std::fs::read(got["path"].as_str().unwrap()).unwrap();
    assert!(received == data, "the bytes differ");
    assert_eq!(got["sha256"], offer["sha256"]);
    drop(server);
    let (seen, dropped) = counters(&ns);
    println!(
        "nft: {dropped} of {seen} UDP datagrams dropped ({:.1}%) during a 1 MiB transfer",
        100.0 * dropped as f64 / seen.max(1) as f64
    );
    assert!(
        dropped > 0,
        "the kernel dropped nothing: no loss was tested"
    );
}
