//! The TURN relay in the NAT lab (issue 16): a real coturn on the public side of the
//! namespace lab of tests/nat_lab.rs (tests/common/natlab.rs), at 198.51.100.3:3478, run
//! from the README's coturn configuration (tests/common/coturn.rs), next to the real
//! rendezvous server (198.51.100.2, `--turn turn:198.51.100.3:3478 --turn-secret-file`),
//! and real clients (`--json`, `--retry-interval 1`) behind nftables home routers:
//!
//! - the harness itself: two TURN clients (the `Relay` state machine of src/peer/relay.rs,
//!   on sockets opened in the home namespaces) behind port-changing NATs allocate on that
//!   coturn and exchange datagrams relay to relay; coturn refuses a peer in a private
//!   range; a packet capture in coturn's namespace sees the relayed datagrams and the
//!   plain marker they carry (so the capture can see a marker when there is one);
//! - both clients behind port-changing NATs: connected through the relay within 5 s, chat
//!   both ways, a 1 MiB file with a matching SHA-256, and a capture in coturn's namespace
//!   that sees the relayed datagrams but never the chat's marker text nor the file's
//!   marker bytes;
//! - a pair that can punch, with the relay configured: a direct path, not the relay;
//! - coturn killed under a relayed session: `relay_lost` and the session's end on both
//!   sides within 30 s, both clients still running and answering.
//!
//! Needs root, iproute2, nftables and coturn (`.ci/run` installs them);
//! `P2PCHAT_SKIP_NETNS=1` or `P2PCHAT_SKIP_TURN=1` skips it. The cases run in parallel;
//! the loss case (the relay's 20 s silence limit) is the floor of the file's wall time.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256};

use common::capture::{self, Capture, Report};
use common::coturn::{self, Coturn};
use common::natlab::*;
use common::netns;
use common::turn_client::{run, TurnClient};
use common::{events_named, JsonClient, TempDir};
use p2pchat::peer::relay::{RelayEvent, TurnServer};
use p2pchat::registry::turn::rest_credentials;
use p2pchat::wire::ClientId;

const TEST: &str = "relay_lab";
const TURN_IP: &str = "198.51.100.3";
const TURN: &str = "turn:198.51.100.3:3478";
const SECRET: &str = "relay-lab-secret";
/// In the chat text: a capture of the relay must never contain it.
const CHAT_MARKER: &str = "CHAT-MARKER-q7Zx3Kp9";
/// Repeated all through the test file (once every 64 bytes).
const FILE_MARKER: &[u8] = b"FILE-MARKER-wQ4t8Lm2";

// ---------------------------------------------------------------- the lab with a relay

/// The NAT lab, with coturn at [`TURN_IP`] (namespace index `turn_ns`).
struct RelayLab {
    // Dropped first: coturn, then the namespaces.
    coturn: Coturn,
    turn_ns: usize,
    lab: Lab,
    /// The secret's file, for the server's `--turn-secret-file`.
    secret_file: TempDir,
}

impl RelayLab {
    /// The lab and coturn, or `None` when skipped.
    fn new(tag: &str) -> Option<RelayLab> {
        if coturn::skipped(TEST) {
            return None;
        }
        let mut lab = Lab::for_test(TEST, tag)?;
        let turn_ns = need(lab.public_host("turn", TURN_IP));
        let coturn = need(Coturn::start_in(&lab.nets[turn_ns], TURN_IP, SECRET));
        let secret_file = TempDir::new("turn-secret");
        std::fs::write(secret_file.path().join("secret"), format!("{SECRET}\n")).unwrap();
        Some(RelayLab {
            coturn,
            turn_ns,
            lab,
            secret_file,
        })
    }

    /// Two hosts, each behind its own home router of kind `nat` (198.51.100.20 with
    /// 192.168.1.0/24, 198.51.100.21 with 10.0.7.0/24).
    fn two_homes(&mut self, nat: Nat) -> (usize, usize) {
        let (a, b, _) = self.two_homes_and_routers(nat);
        (a, b)
    }

    /// [`RelayLab::two_homes`], and the two homes.
    fn two_homes_and_routers(&mut self, nat: Nat) -> (usize, usize, [Home; 2]) {
        let lab = &mut self.lab;
        let h1 = need(lab.home("r1", "198.51.100.20", "192.168.1", nat));
        let h2 = need(lab.home("r2", "198.51.100.21", "10.0.7", nat));
        let a = need(lab.home_host("a", &h1, 2));
        let b = need(lab.home_host("b", &h2, 2));
        (a, b, [h1, h2])
    }

    /// The rendezvous server, handing out credentials for coturn.
    fn server(&self) -> common::Server {
        let file = self.secret_file.path().join("secret");
        self.lab
            .server_with(&["--turn", TURN, "--turn-secret-file", file.to_str().unwrap()])
    }

    /// A packet capture in coturn's namespace, looking for `markers`.
    fn capture(&self, markers: Vec<Vec<u8>>) -> Capture {
        need(Capture::start(
            &self.lab.nets[self.turn_ns],
            coturn::PORT,
            markers,
        ))
    }

    /// Sends each marker once in a plain UDP datagram from the server's namespace to
    /// coturn's address, port 9 (nobody listens): the capture must find these, which shows
    /// it would find a marker anywhere.
    fn send_control(&self, markers: &[&[u8]]) {
        let s = need(self.lab.nets[0].bind_udp(format!("{SERVER_IP}:0").parse().unwrap()));
        for m in markers {
            s.send_to(m, (TURN_IP, 9)).unwrap();
        }
    }
}

/// The value, or this file's one-line failure (see [`netns::require`]).
fn need<T>(setup: Result<T, String>) -> T {
    netns::require(TEST, setup)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Stops `capture` after letting its reader catch up.
fn stop(capture: Capture) -> Report {
    std::thread::sleep(capture::DRAIN);
    let report = capture.stop();
    println!(
        "capture in coturn's namespace: {} frames, UDP {:?}, ChannelData {:?} ({:?} bytes), \
         {} marker hits, {} dropped by the kernel",
        report.frames,
        report.udp,
        report.channel_data,
        report.channel_bytes,
        report.hits.len(),
        report.dropped
    );
    report
}

/// Checks that every marker was seen in the control datagrams (to port 9) and in nothing
/// else.
fn assert_markers_only_in_control(report: &Report, markers: usize) {
    let (control, other): (Vec<_>, Vec<_>) = report.hits.iter().partition(|h| h.dst.port() == 9);
    assert!(
        other.is_empty(),
        "the relay's capture contains a marker outside the control datagrams: {other:#?}"
    );
    for m in 0..markers {
        assert!(
            control.iter().any(|h| h.marker == m),
            "the capture missed control marker {m}: {report:?}"
        );
    }
}

// ---------------------------------------------------------------- the harness, without the client

/// The `Relay` state machine on a socket of a lab namespace, driven in real time, with
/// credentials for client `id` made from the lab's secret.
fn turn_client(socket: UdpSocket, server: SocketAddr, id: &str) -> TurnClient {
    let c = rest_credentials(SECRET.as_bytes(), id, unix_now() + 600);
    let turn = TurnServer {
        addr: server,
        username: c.username,
        password: c.password,
    };
    TurnClient::on(socket, &turn)
}

#[test]
fn coturn_in_the_lab_relays_between_two_allocations_behind_port_changing_nats() {
    let Some(mut rl) = RelayLab::new("rharn") else {
        return;
    };
    let (ha, hb) = rl.two_homes(Nat::Symmetric);
    let marker = b"PLAIN-THROUGH-THE-RELAY".to_vec();
    let capture = rl.capture(vec![marker.clone()]);
    let bind = |ns: usize, ip: &str| need(rl.lab.nets[ns].bind_udp(ip.parse().unwrap()));
    let mut a = turn_client(bind(ha, "192.168.1.2:0"), rl.coturn.addr, "1");
    let mut b = turn_client(bind(hb, "10.0.7.2:0"), rl.coturn.addr, "2");
    let allocated = run(&mut a, &mut b, Duration::from_secs(5), |a, b| {
        a.relay.relayed_addr().is_some() && b.relay.relayed_addr().is_some()
    });
    assert!(
        allocated.is_some(),
        "no allocation: {:?} {:?}",
        a.events,
        b.events
    );
    let (ra, rb) = (
        a.relay.relayed_addr().unwrap(),
        b.relay.relayed_addr().unwrap(),
    );
    assert_eq!(ra.ip().to_string(), TURN_IP);
    assert_eq!(rb.ip().to_string(), TURN_IP);
    let now = Instant::now();
    a.relay.permit(now, rb).unwrap();
    b.relay.permit(now, ra).unwrap();
    // A peer in a private range: the README's configuration denies it.
    let private: SocketAddr = "192.168.1.3:5000".parse().unwrap();
    a.relay.permit(now, private).unwrap();
    let ready = run(&mut a, &mut b, Duration::from_secs(5), |a, b| {
        a.relay.is_ready(rb)
            && b.relay.is_ready(ra)
            && a.events.contains(&RelayEvent::PeerFailed(private))
    });
    assert!(
        ready.is_some(),
        "no channel, or the private peer was not refused: {:?} {:?}",
        a.events,
        b.events
    );
    assert!(!a.relay.is_ready(private));

    const N: u8 = 50;
    for i in 0..N {
        let now = Instant::now();
        a.relay
            .send(now, rb, &[&marker[..], &[0xa0, i]].concat())
            .unwrap();
        b.relay
            .send(now, ra, &[&marker[..], &[0xb0, i]].concat())
            .unwrap();
        a.step();
        b.step();
    }
    let all = run(&mut a, &mut b, Duration::from_secs(5), |a, b| {
        a.got.len() == N as usize && b.got.len() == N as usize
    });
    assert!(
        all.is_some(),
        "a got {}, b got {}",
        a.got.len(),
        b.got.len()
    );
    // Each saw the other at its relayed address, with its bytes.
    assert!(b
        .got
        .iter()
        .all(|(from, d)| *from == ra && d.starts_with(&marker) && d[marker.len()] == 0xa0));
    assert!(a
        .got
        .iter()
        .all(|(from, d)| *from == rb && d.starts_with(&marker) && d[marker.len()] == 0xb0));
    rl.send_control(&[&marker]);
    let report = stop(capture);
    // Every datagram crossed coturn's interface twice (in from its sender, out to its
    // receiver), as ChannelData; the plain marker is in each of those.
    let on_eth0 = report.channel_data.get("eth0").copied().unwrap_or(0);
    assert!(on_eth0 >= 4 * u64::from(N), "{report:?}");
    let marked = report
        .hits
        .iter()
        .filter(|h| h.interface == "eth0" && h.dst.port() != 9)
        .count();
    assert!(
        marked >= 4 * usize::from(N),
        "{marked} marked datagrams: {report:?}"
    );
}

// ---------------------------------------------------------------- with the real client

/// A `--json` client in `ns` with its own downloads directory, registered.
fn client(lab: &Lab, ns: usize, name: &str, extra: &[&str]) -> (JsonClient, ClientId, TempDir) {
    let downloads = TempDir::new(&format!("dl-{name}"));
    let mut args = vec!["--downloads", downloads.arg()];
    args.extend_from_slice(extra);
    let (c, id) = lab.client(ns, name, &args);
    (c, id, downloads)
}

/// Waits for `relay_ready` (the client allocated on coturn soon after registering).
fn relay_ready(c: &mut JsonClient) -> Value {
    let v = c.wait_event_within(Duration::from_secs(5), "relay_ready", |v| {
        v["event"] == "relay_ready" || v["event"] == "relay_failed"
    });
    assert_eq!(v["event"], "relay_ready", "{}: {v}", c.name);
    assert_eq!(v["server"], format!("{TURN_IP}:{}", coturn::PORT), "{v}");
    let relayed: SocketAddr = v["relayed"].as_str().unwrap_or("").parse().unwrap();
    assert_eq!(relayed.ip().to_string(), TURN_IP, "{v}");
    v
}

/// Both behind port-changing NATs, relays ready; connected (A asked) with path "relay".
struct RelayedPair {
    a: JsonClient,
    ia: ClientId,
    b: JsonClient,
    ib: ClientId,
    da: TempDir,
    db: TempDir,
    _server: common::Server,
    rl: RelayLab,
}

fn relayed_pair(tag: &str, before_connect: impl FnOnce(&RelayLab)) -> Option<RelayedPair> {
    relayed_pair_with(tag, &[], before_connect)
}

/// [`relayed_pair`], with `extra` flags for both clients.
fn relayed_pair_with(
    tag: &str,
    extra: &[&str],
    before_connect: impl FnOnce(&RelayLab),
) -> Option<RelayedPair> {
    let mut rl = RelayLab::new(tag)?;
    let (ha, hb) = rl.two_homes(Nat::Symmetric);
    let server = rl.server();
    let (mut a, ia, da) = client(&rl.lab, ha, "A", extra);
    let (mut b, ib, db) = client(&rl.lab, hb, "B", extra);
    let ready_a = relay_ready(&mut a);
    let ready_b = relay_ready(&mut b);
    before_connect(&rl);
    let (ours, theirs) = connect(&mut a, ia, &mut b, ib);
    assert_eq!(
        (path(&ours), path(&theirs)),
        ("relay", "relay"),
        "{ours} / {theirs}"
    );
    // Each reaches the other at the other's relayed address.
    assert_eq!(ours["addr"], ready_b["relayed"], "{ours}");
    assert_eq!(theirs["addr"], ready_a["relayed"], "{theirs}");
    Some(RelayedPair {
        a,
        ia,
        b,
        ib,
        da,
        db,
        _server: server,
        rl,
    })
}

/// 1 MiB: 64-byte blocks of [`FILE_MARKER`] and pseudo-random bytes (a fixed seed).
fn marked_file() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = Vec::with_capacity(1 << 20);
    while data.len() < 1 << 20 {
        data.extend_from_slice(FILE_MARKER);
        while data.len() % 64 != 0 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push(x as u8);
        }
    }
    data.truncate(1 << 20);
    data
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A chat message with the marker from `from` to `to`, shown there and delivered.
fn marked_message(from: &mut JsonClient, from_id: ClientId, to: &mut JsonClient, to_id: ClientId) {
    let text = format!("{CHAT_MARKER} from {}", from.name);
    from.type_line(&format!("send @{to_id} {text}"));
    to.wait_event_within(Duration::from_secs(5), "message", |v| {
        v["event"] == "message" && v["from"] == from_id && v["text"] == text
    });
    from.wait_event_within(Duration::from_secs(5), "delivered", |v| {
        v["event"] == "delivered" && v["peer"] == to_id
    });
}

/// Sends `data` as a file from A to B; returns B's `file_received`.
fn transfer(p: &mut RelayedPair, data: &[u8], within: Duration) -> Value {
    let path = p.da.path().join("marked.bin");
    std::fs::write(&path, data).unwrap();
    let started = Instant::now();
    p.a.type_line(&format!("sendfile {} @{}", path.display(), p.ib));
    let offer = p.b.wait_event("file_offer", |v| v["event"] == "file_offer");
    p.b.type_line(&format!("getfile {}", offer["n"]));
    let got =
        p.b.wait_event_within(within, "file_received", |v| v["event"] == "file_received");
    p.a.wait_event("file_sent", |v| v["event"] == "file_sent");
    println!("1 MiB through the relay in {:?}", started.elapsed());
    got
}

#[test]
fn behind_port_changing_nats_peers_chat_and_send_a_file_through_the_relay_which_sees_no_content() {
    let markers = vec![CHAT_MARKER.as_bytes().to_vec(), FILE_MARKER.to_vec()];
    let mut capture = None;
    let Some(mut p) = relayed_pair("rfile", |rl| capture = Some(rl.capture(markers.clone())))
    else {
        return;
    };
    let capture = capture.unwrap();
    let (ia, ib) = (p.ia, p.ib);
    marked_message(&mut p.a, ia, &mut p.b, ib);
    marked_message(&mut p.b, ib, &mut p.a, ia);
    let data = marked_file();
    let got = transfer(&mut p, &data, Duration::from_secs(30));
    assert_eq!(got["sha256"], hex(&Sha256::digest(&data)), "{got}");
    let received = std::fs::read(got["path"].as_str().unwrap()).unwrap();
    assert!(received == data, "the received bytes differ");
    assert!(Path::new(got["path"].as_str().unwrap()).starts_with(p.db.path()));
    // Still on the relay (no punching possible here).
    for c in [&p.a, &p.b] {
        assert!(
            c.events("path_changed").is_empty(),
            "{}: {:#?}",
            c.name,
            c.log
        );
    }
    p.rl.send_control(&[CHAT_MARKER.as_bytes(), FILE_MARKER]);
    let report = stop(capture);
    assert_markers_only_in_control(&report, 2);
    // The file crossed coturn's interface twice (in from A, out to B) as ChannelData: at
    // least 2 MiB of it, in at least two datagrams per chunk.
    let chunks = (data.len() / p2pchat::wire::CHUNK_SIZE) as u64;
    let on_eth0 = report.channel_data.get("eth0").copied().unwrap_or(0);
    let bytes = report.channel_bytes.get("eth0").copied().unwrap_or(0);
    assert!(
        on_eth0 >= 2 * chunks,
        "{on_eth0} relayed datagrams for {chunks} chunks"
    );
    assert!(bytes >= 2 * data.len() as u64, "{bytes} relayed bytes");
    assert_eq!(
        report.dropped, 0,
        "the capture lost frames: it could have missed a marker"
    );
}

#[test]
fn a_pair_that_can_punch_gets_a_direct_path_with_the_relay_configured() {
    let Some(mut rl) = RelayLab::new("rpunch") else {
        return;
    };
    let (ha, hb) = rl.two_homes(Nat::Home);
    // No --turn on the server: the clients are given the relay and credentials directly.
    let _server = rl.lab.server();
    let creds = |id: &str| rest_credentials(SECRET.as_bytes(), id, unix_now() + 600);
    let (ca, cb) = (creds("a"), creds("b"));
    let flags = |c: &p2pchat::registry::turn::Credentials| {
        vec![
            "--turn".to_string(),
            TURN.to_string(),
            "--turn-user".to_string(),
            c.username.clone(),
            "--turn-pass".to_string(),
            c.password.clone(),
        ]
    };
    let (fa, fb) = (flags(&ca), flags(&cb));
    let fa: Vec<&str> = fa.iter().map(String::as_str).collect();
    let fb: Vec<&str> = fb.iter().map(String::as_str).collect();
    let (mut a, ia, _da) = client(&rl.lab, ha, "A", &fa);
    let (mut b, ib, _db) = client(&rl.lab, hb, "B", &fb);
    relay_ready(&mut a);
    relay_ready(&mut b);
    let (ours, theirs) = connect(&mut a, ia, &mut b, ib);
    assert_eq!((path(&ours), path(&theirs)), ("punched", "punched"));
    assert_eq!(addr_ip(&ours), "198.51.100.21");
    exchange(&mut a, ia, &mut b, ib);
    // And it stays there.
    a.read_for(Duration::from_millis(1500));
    b.read_for(Duration::from_millis(200));
    for c in [&a, &b] {
        assert!(
            c.events("path_changed").is_empty(),
            "{}: {:#?}",
            c.name,
            c.log
        );
    }
}

/// With `--retry-interval 1` the session's own silence limit (6 pings, 6 s) ends it
/// before the relay's (20 s): `peer_silent`, then `relay_lost`.
#[test]
fn killing_coturn_under_a_relayed_session_ends_it_clearly_on_both_sides_within_30_s() {
    coturn_killed("rkill", "1", "peer_silent");
}

/// With `--retry-interval 4` the session's silence limit is 24 s: the relay's loss, at
/// 20 s, ends the session first (`relay_lost`).
#[test]
fn killing_coturn_ends_a_relayed_session_with_relay_lost_when_the_session_would_wait_longer() {
    coturn_killed("rkil4", "4", "relay_lost");
}

/// Kills coturn under a relayed pair (clients with `--retry-interval retry`); both must
/// see `relay_lost` and their session end, for `reason`, within 30 s, and still answer.
fn coturn_killed(tag: &str, retry: &str, reason: &str) {
    let Some(mut p) = relayed_pair_with(tag, &["--retry-interval", retry], |_| {}) else {
        return;
    };
    let (ia, ib) = (p.ia, p.ib);
    exchange(&mut p.a, ia, &mut p.b, ib);
    p.rl.coturn.kill();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(30);
    // When each saw the relay lost and the session end (read in turns, so that the times
    // are those of the events, within 50 ms).
    let mut lost: [Option<(Duration, Value)>; 2] = [None, None];
    let mut ended: [Option<(Duration, Value)>; 2] = [None, None];
    while lost.iter().chain(&ended).any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "not both relay_lost and terminated on both sides within 30 s of the kill: \
             A {:#?}, B {:#?}",
            p.a.log,
            p.b.log
        );
        for (i, (c, other)) in [(&mut p.a, ib), (&mut p.b, ia)].into_iter().enumerate() {
            let slice = (Instant::now() + Duration::from_millis(50)).min(deadline);
            while let Some(v) = c.next_event_before(slice) {
                let at = killed.elapsed();
                if v["event"] == "relay_lost" && lost[i].is_none() {
                    lost[i] = Some((at, v));
                } else if v["event"] == "terminated" && v["peer"] == other {
                    assert!(ended[i].is_none(), "{}: two ends: {:#?}", c.name, c.log);
                    ended[i] = Some((at, v));
                }
            }
        }
    }
    for (i, name) in ["A", "B"].into_iter().enumerate() {
        let (lost_at, lost) = lost[i].clone().unwrap();
        let (end_at, end) = ended[i].clone().unwrap();
        println!("{name}: {lost} {lost_at:?} and {end} {end_at:?} after the kill");
        assert_eq!(
            lost["server"],
            format!("{TURN_IP}:{}", coturn::PORT),
            "{lost}"
        );
        assert_eq!(end["reason"], reason, "{name}: {end}, {lost}");
        // Whichever ends the session, the relay's loss is said within its own limit.
        assert!(lost_at <= Duration::from_secs(21), "{name}: {lost_at:?}");
    }
    // Both still running, and answering.
    for c in [&mut p.a, &mut p.b] {
        assert!(c.proc.try_exit().is_none(), "{} exited", c.name);
        c.type_line("sessions");
        let v = c.wait_event("sessions", |v| v["event"] == "sessions");
        assert_eq!(v["sessions"].as_array().map(Vec::len), Some(0), "{v}");
    }
}

/// Home 1's router drops everything between its home and home 2's router: no probe gets
/// through either way, as between two NATs that change ports, while the relay (another
/// address) is reachable. Removed by [`UNBLOCK`].
const BLOCK: &str = "table ip relaylab_block {
  chain forward {
    type filter hook forward priority -10; policy accept;
    ip daddr 198.51.100.21 drop
    ip saddr 198.51.100.21 drop
  }
}
";
const UNBLOCK: &str = "delete table ip relaylab_block\n";

/// A pair that cannot punch at first (a firewall rule), so its session goes through the
/// relay; once the rule is gone, the session's periodic look for a direct path finds one
/// and moves there (`path_changed`), and a stream of messages sent all along arrives
/// whole, once each, in order.
#[test]
fn a_relayed_session_moves_to_the_punched_path_when_one_opens_losing_nothing() {
    let Some(mut rl) = RelayLab::new("rup") else {
        return;
    };
    let (ha, hb, [h1, _]) = rl.two_homes_and_routers(Nat::Home);
    let r1 = h1.router;
    need(rl.lab.nets[r1].nft(&["-f", "-"], Some(BLOCK)));
    let _server = rl.server();
    let (mut a, ia, _da) = client(&rl.lab, ha, "A", &[]);
    let (mut b, ib, _db) = client(&rl.lab, hb, "B", &[]);
    relay_ready(&mut a);
    relay_ready(&mut b);
    let (ours, theirs) = connect(&mut a, ia, &mut b, ib);
    assert_eq!((path(&ours), path(&theirs)), ("relay", "relay"));
    exchange(&mut a, ia, &mut b, ib);

    // A message every 30 ms or so: 10 on the relay, then the firewall rule goes, and
    // on until both have moved, and 20 more; 15 s at most.
    let mut sent = 0u32;
    let mut after = 0;
    let mut opened = None;
    let mut moved_at: [Option<Duration>; 2] = [None, None];
    while after < 20 {
        if sent == 10 {
            need(rl.lab.nets[r1].nft(&["-f", "-"], Some(UNBLOCK)));
            opened = Some(Instant::now());
        }
        let since = opened.map_or(Duration::ZERO, |t| t.elapsed());
        assert!(
            since < Duration::from_secs(15),
            "no path_changed on both sides within 15 s of the path opening: A {:#?}, B {:#?}",
            a.log,
            b.log
        );
        sent += 1;
        a.type_line(&format!("send @{ib} stream {sent}"));
        a.read_for(Duration::from_millis(15));
        b.read_for(Duration::from_millis(15));
        for (i, c) in [&a, &b].into_iter().enumerate() {
            if moved_at[i].is_none() && !c.events("path_changed").is_empty() {
                moved_at[i] = Some(since);
            }
        }
        if moved_at.iter().all(Option::is_some) {
            after += 1;
        }
    }
    println!(
        "on the direct path {:?} (A) and {:?} (B) after it opened; {sent} messages sent",
        moved_at[0].unwrap(),
        moved_at[1].unwrap()
    );
    let texts: Vec<String> = (1..=sent).map(|i| format!("stream {i}")).collect();
    b.wait_until(Duration::from_secs(5), "every message shown", |log| {
        texts.iter().all(|t| {
            log.iter()
                .any(|v| v["event"] == "message" && v["text"] == *t)
        })
    });
    a.wait_until(Duration::from_secs(5), "every message delivered", |log| {
        events_named(log, "delivered").len() == sent as usize + 1
    });
    b.read_for(Duration::from_millis(300));
    let shown: Vec<&str> = b
        .events("message")
        .iter()
        .filter_map(|v| v["text"].as_str())
        .filter(|t| t.starts_with("stream "))
        .collect();
    assert_eq!(shown, texts, "lost, doubled or out of order");
    for (c, peer_ip) in [(&a, "198.51.100.21"), (&b, "198.51.100.20")] {
        let changed = c.events("path_changed");
        assert_eq!(changed.len(), 1, "{}: {changed:#?}", c.name);
        assert_eq!(path(changed[0]), "punched", "{}: {}", c.name, changed[0]);
        assert_eq!(addr_ip(changed[0]), peer_ip, "{}: {}", c.name, changed[0]);
        assert!(
            c.events("terminated").is_empty(),
            "{}: {:#?}",
            c.name,
            c.log
        );
    }
    // And chat flows both ways there, no longer through the relay: the relay's capture
    // sees no ChannelData meanwhile (and does see a control datagram).
    let capture = rl.capture(vec![b"CONTROL".to_vec()]);
    exchange(&mut a, ia, &mut b, ib);
    a.read_for(Duration::from_millis(500));
    rl.send_control(&[b"CONTROL"]);
    let report = stop(capture);
    assert_markers_only_in_control(&report, 1);
    assert_eq!(report.channel_data.get("eth0"), None, "{report:?}");
}
