//! The TURN client (src/peer/relay.rs) against a real coturn `turnserver`, on loopback
//! only, with the short-lived credentials the rendezvous server hands out
//! (src/registry/turn.rs, coturn's `use-auth-secret`). The test starts its own
//! `turnserver` from a config file it writes (no system service), and kills it.
//!
//! Needs coturn installed (`.ci/run` installs it); without it each test fails with one
//! line saying so, unless `P2PCHAT_SKIP_TURN=1`.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::turn_client::{run, TurnClient};
use p2pchat::peer::relay::{RelayEvent, TurnServer, SILENCE_LIMIT};
use p2pchat::registry::turn::{rest_credentials, TurnSecret};
use p2pchat::wire::{decode, encode_request, Message};

mod common;

const SECRET: &str = "relay-test-secret";

struct Coturn {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts turnserver on 127.0.0.1, or returns None (skip) when P2PCHAT_SKIP_TURN=1.
fn start_coturn() -> Option<Coturn> {
    let found = Command::new("turnserver")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if std::env::var("P2PCHAT_SKIP_TURN").as_deref() == Ok("1") {
            eprintln!("P2PCHAT_SKIP_TURN=1 and no turnserver: skipped");
            return None;
        }
        panic!(
            "turnserver (coturn) is not installed: apt-get install coturn, or P2PCHAT_SKIP_TURN=1"
        );
    }
    let port = free_udp_port();
    // Relay ports: a small range picked from the process id, away from the ephemeral
    // range's usual start.
    let base = 20000 + (std::process::id() % 2000) as u16 * 10 + (port % 10);
    let dir = std::env::temp_dir().join(format!("p2pchat-coturn-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("turnserver.conf");
    std::fs::write(
        &conf,
        format!(
            "listening-ip=127.0.0.1\nlistening-port={port}\nrelay-ip=127.0.0.1\n\
             min-port={base}\nmax-port={}\nuse-auth-secret\nstatic-auth-secret={SECRET}\n\
             realm=p2pchat.test\nno-tls\nno-dtls\nno-cli\nallow-loopback-peers\n\
             no-software-attribute\nfingerprint\nuserdb={}\npidfile={}\n\
             log-file=stdout\nsimple-log\n",
            base + 9,
            dir.join("turndb").display(),
            dir.join("turnserver.pid").display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let mut child = Command::new("turnserver")
        .arg("-c")
        .arg(&conf)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start turnserver");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Ready when it listens: a Binding request is answered.
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let binding = [
        0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    let mut buf = [0u8; 1500];
    for _ in 0..50 {
        probe.send_to(&binding, addr).unwrap();
        if probe.recv_from(&mut buf).is_ok() {
            return Some(Coturn { child, addr, dir });
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    panic!("turnserver did not answer within 5 s; its log:\n{log}");
}

/// A client of `server` on a loopback socket of its own.
fn client(server: SocketAddr, username: String, password: String) -> TurnClient {
    let turn = TurnServer {
        addr: server,
        username,
        password,
    };
    TurnClient::on(UdpSocket::bind("127.0.0.1:0").unwrap(), &turn)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn secret_for(server: SocketAddr) -> TurnSecret {
    TurnSecret {
        server,
        secret: SECRET.as_bytes().to_vec(),
        lifetime: Duration::from_secs(600),
        clock: (Instant::now(), unix_now()),
    }
}

fn pair(coturn: &Coturn) -> (TurnClient, TurnClient) {
    let s = secret_for(coturn.addr);
    let ca = s.credentials_for("1", unix_now());
    let cb = s.credentials_for("2", unix_now());
    (
        client(coturn.addr, ca.username, ca.password),
        client(coturn.addr, cb.username, cb.password),
    )
}

/// Both allocated and permitted for each other; returns the relayed addresses.
fn connect(a: &mut TurnClient, b: &mut TurnClient) -> (SocketAddr, SocketAddr) {
    let took = run(a, b, Duration::from_secs(5), |a, b| {
        a.relay.relayed_addr().is_some() && b.relay.relayed_addr().is_some()
    });
    assert!(
        took.is_some(),
        "no allocation: {:?} {:?}",
        a.events,
        b.events
    );
    let ra = a.relay.relayed_addr().unwrap();
    let rb = b.relay.relayed_addr().unwrap();
    let now = Instant::now();
    a.relay.permit(now, rb).unwrap();
    b.relay.permit(now, ra).unwrap();
    let took = run(a, b, Duration::from_secs(5), |a, b| {
        a.relay.is_ready(rb) && b.relay.is_ready(ra)
    });
    assert!(took.is_some(), "no channel: {:?} {:?}", a.events, b.events);
    (ra, rb)
}

#[test]
fn two_clients_exchange_datagrams_through_coturn_with_rest_credentials() {
    let Some(coturn) = start_coturn() else { return };
    let (mut a, mut b) = pair(&coturn);
    let (ra, rb) = connect(&mut a, &mut b);
    assert_eq!(ra.ip(), coturn.addr.ip());

    let now = Instant::now();
    for i in 0..20u8 {
        a.relay.send(now, rb, &[0x50, 0xa0, i]).unwrap();
        b.relay.send(now, ra, &[0x50, 0xb0, i]).unwrap();
    }
    let took = run(&mut a, &mut b, Duration::from_secs(5), |a, b| {
        a.got.len() == 20 && b.got.len() == 20
    });
    assert!(took.is_some(), "a got {:?}, b got {:?}", a.got, b.got);
    // Loopback does not lose or reorder these few.
    for i in 0..20u8 {
        assert_eq!(b.got[i as usize], (ra, vec![0x50, 0xa0, i]));
        assert_eq!(a.got[i as usize], (rb, vec![0x50, 0xb0, i]));
    }

    // Release: coturn frees a's allocation; b's datagrams to it are no longer relayed.
    // First check that a datagram from b reaches a's socket at all while allocated.
    a.raw = 0;
    b.relay.send(Instant::now(), ra, &[0x50, 0xfe]).unwrap();
    run(&mut a, &mut b, Duration::from_secs(2), |a, _| a.raw > 0);
    assert!(a.raw > 0);
    a.relay.release(Instant::now());
    a.step();
    assert!(a.relay.is_ended());
    // The delete goes out and is answered; coturn frees the allocation on its next
    // timer tick (up to about a second, seen: still relaying 300 ms after its answer).
    run(&mut a, &mut b, Duration::from_secs(2), |_, _| false);
    a.raw = 0;
    for _ in 0..3 {
        b.relay.send(Instant::now(), ra, &[0x50, 0xff]).unwrap();
    }
    run(&mut a, &mut b, Duration::from_millis(500), |_, _| false);
    assert_eq!(a.raw, 0, "coturn still relays to a released allocation");
}

#[test]
fn wrong_or_expired_credentials_fail_with_an_event() {
    let Some(coturn) = start_coturn() else { return };
    let wrong = rest_credentials(b"not-the-secret", "1", unix_now() + 600);
    let expired = rest_credentials(SECRET.as_bytes(), "2", unix_now() - 10);
    let mut a = client(coturn.addr, wrong.username, wrong.password);
    let mut b = client(coturn.addr, expired.username, expired.password);
    let took = run(&mut a, &mut b, Duration::from_secs(20), |a, b| {
        a.relay.is_ended() && b.relay.is_ended()
    });
    assert!(took.is_some(), "{:?} {:?}", a.events, b.events);
    for c in [&a, &b] {
        assert!(c.relay.relayed_addr().is_none());
        assert!(
            c.events.iter().any(|e| matches!(e, RelayEvent::Failed(_))),
            "{:?}",
            c.events
        );
    }
}

#[test]
fn killing_coturn_gives_a_lost_event_within_30_seconds() {
    let Some(mut coturn) = start_coturn() else {
        return;
    };
    let (mut a, mut b) = pair(&coturn);
    connect(&mut a, &mut b);
    coturn.child.kill().unwrap();
    coturn.child.wait().unwrap();
    let killed = Instant::now();
    let took = run(&mut a, &mut b, Duration::from_secs(30), |a, b| {
        a.relay.is_ended() && b.relay.is_ended()
    });
    let took = took.unwrap_or_else(|| panic!("no event in 30 s: {:?}", a.events));
    eprintln!("relay loss noticed {:?} after the kill", killed.elapsed());
    assert!(took <= Duration::from_secs(30));
    assert!(took + Duration::from_secs(1) >= SILENCE_LIMIT - PROBE_SLACK);
    assert!(
        a.events
            .iter()
            .any(|e| matches!(e, RelayEvent::Lost(r) if r.contains("not answered"))),
        "{:?}",
        a.events
    );
}

/// The loss is noticed no earlier than the silence limit less one probe interval.
const PROBE_SLACK: Duration = p2pchat::peer::relay::PROBE_EVERY;

/// Registers with a rendezvous server from `socket` and returns its `Registered`.
fn register(socket: &UdpSocket, server: SocketAddr) -> Message {
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        socket
            .send_to(&encode_request(&Message::register(None, [0; 32])), server)
            .unwrap();
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            if from == server {
                return decode(&buf[..n]).unwrap();
            }
        }
    }
    panic!("no answer from the rendezvous server");
}

#[test]
fn the_rendezvous_server_hands_out_credentials_that_coturn_accepts() {
    let Some(coturn) = start_coturn() else { return };
    let secret_file = coturn.dir.join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let url = format!("turn:{}", coturn.addr);
    let server = common::Server::start(&[
        "--turn",
        &url,
        "--turn-secret-file",
        secret_file.to_str().unwrap(),
    ]);
    let mut clients = Vec::new();
    for _ in 0..2 {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let answer = register(&socket, server.addr);
        let Message::Registered {
            id,
            turn: Some(grant),
            ..
        } = answer
        else {
            panic!("no TURN grant in {answer:?}");
        };
        assert_eq!(grant.server, coturn.addr);
        assert!(grant.user.ends_with(&format!(":{id}")), "{}", grant.user);
        let turn = TurnServer {
            addr: grant.server,
            username: grant.user,
            password: grant.pass,
        };
        clients.push(TurnClient::on(socket, &turn));
    }
    let mut b = clients.pop().unwrap();
    let mut a = clients.pop().unwrap();
    let (ra, rb) = connect(&mut a, &mut b);
    a.relay
        .send(Instant::now(), rb, b"\x50hello via coturn")
        .unwrap();
    let took = run(&mut a, &mut b, Duration::from_secs(5), |_, b| {
        !b.got.is_empty()
    });
    assert!(took.is_some());
    assert_eq!(b.got[0], (ra, b"\x50hello via coturn".to_vec()));
}

#[test]
fn the_server_refuses_a_turn_server_without_a_secret_or_an_empty_secret() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p2pchat"))
        .args([
            "server",
            "--bind",
            "127.0.0.1:0",
            "--turn",
            "turn:127.0.0.1:3478",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--turn-secret-file"));
    let dir = std::env::temp_dir().join(format!("p2pchat-empty-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("secret");
    std::fs::write(&empty, "\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p2pchat"))
        .args([
            "server",
            "--bind",
            "127.0.0.1:0",
            "--turn",
            "turn:127.0.0.1:3478",
        ])
        .arg("--turn-secret-file")
        .arg(&empty)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the client's grant renewal (src/peer/paths.rs, "Fresh credentials") relies on:
/// coturn keeps an allocation made with REST credentials past their expiry (its refreshes,
/// permissions and channels are still accepted), while a new allocation with expired ones
/// is refused (`wrong_or_expired_credentials_fail_with_an_event`).
#[test]
fn an_allocation_outlives_its_credentials() {
    let Some(coturn) = start_coturn() else { return };
    let s = secret_for(coturn.addr);
    let short = rest_credentials(SECRET.as_bytes(), "1", unix_now() + 3);
    let long = s.credentials_for("2", unix_now());
    let mut a = client(coturn.addr, short.username, short.password);
    let mut b = client(coturn.addr, long.username, long.password);
    let (ra, rb) = connect(&mut a, &mut b);
    // Past the expiry (whole seconds in the user name: up to 2 s more).
    run(&mut a, &mut b, Duration::from_secs(5), |_, _| false);
    // A new channel (an authenticated ChannelBind) on a's allocation, and data both ways.
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    let other_addr = other.local_addr().unwrap();
    a.relay.permit(Instant::now(), other_addr).unwrap();
    let took = run(&mut a, &mut b, Duration::from_secs(5), |a, _| {
        a.relay.is_ready(other_addr)
    });
    assert!(
        took.is_some(),
        "no channel after the expiry: {:?}",
        a.events
    );
    let now = Instant::now();
    a.relay.send(now, rb, &[0x50, 0xa1]).unwrap();
    b.relay.send(now, ra, &[0x50, 0xb1]).unwrap();
    let took = run(&mut a, &mut b, Duration::from_secs(5), |a, b| {
        !a.got.is_empty() && !b.got.is_empty()
    });
    assert!(took.is_some(), "a got {:?}, b got {:?}", a.got, b.got);
    assert!(!a.relay.is_ended(), "{:?}", a.events);
}
