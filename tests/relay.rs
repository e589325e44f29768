//! The TURN client state machine (src/peer/relay.rs) against an in-process, sans-IO TURN
//! server (turn-server-proto), on a simulated clock: allocation, permission and channel,
//! relayed data both ways between two allocations, refreshes over 25 minutes, release,
//! wrong credentials, and the server going silent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pchat::peer::relay::{
    is_turn, Received, Relay, RelayError, RelayEvent, TurnServer, SILENCE_LIMIT,
};
use turn_server_proto::api::{TurnServerApi, TurnServerPollRet};
use turn_server_proto::server::TurnServer as ModelServer;
use turn_server_proto::types::{TransportType, TurnCredentials};

const SERVER: &str = "192.0.2.1:3478";
const A: &str = "198.51.100.10:40000";
const B: &str = "203.0.113.20:50000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Two clients and a model TURN server, datagrams delivered at once, a simulated clock.
struct Net {
    base: Instant,
    now: Instant,
    server: ModelServer,
    /// Relayed addresses the server handed out.
    relayed: Vec<SocketAddr>,
    a: Relay,
    b: Relay,
    /// Peer data each client received: (from, bytes).
    got_a: Vec<(SocketAddr, Vec<u8>)>,
    got_b: Vec<(SocketAddr, Vec<u8>)>,
    /// Datagrams that reached a's address at all, whatever its relay made of them.
    raw_a: usize,
    events_a: Vec<RelayEvent>,
    events_b: Vec<RelayEvent>,
    /// The server is gone: everything to it is dropped.
    server_dead: bool,
    next_port: u16,
}

fn turn(user: &str, pass: &str) -> TurnServer {
    TurnServer {
        addr: addr(SERVER),
        username: user.into(),
        password: pass.into(),
    }
}

impl Net {
    fn new(pass_a: &str) -> Net {
        let base = Instant::now();
        let mut server = ModelServer::new(TransportType::Udp, addr(SERVER), "p2pchat".into());
        server.add_user("alice".into(), "secret-a".into());
        server.add_user("bob".into(), "secret-b".into());
        Net {
            base,
            now: base,
            server,
            relayed: Vec::new(),
            a: Relay::allocate(base, addr(A), &turn("alice", pass_a)),
            b: Relay::allocate(base, addr(B), &turn("bob", "secret-b")),
            got_a: Vec::new(),
            got_b: Vec::new(),
            raw_a: 0,
            events_a: Vec::new(),
            events_b: Vec::new(),
            server_dead: false,
            next_port: 60000,
        }
    }

    fn t(&self) -> turn_server_proto::types::Instant {
        turn_server_proto::types::Instant::from_nanos(
            self.now.duration_since(self.base).as_nanos() as i64
        )
    }

    /// Delivers datagrams until nothing moves (bounded).
    fn settle(&mut self) {
        let mut queue: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)> = VecDeque::new();
        for _ in 0..1000 {
            self.a.handle_timeout(self.now);
            self.b.handle_timeout(self.now);
            while let Some((to, d)) = self.a.poll_transmit(self.now) {
                queue.push_back((addr(A), to, d));
            }
            while let Some((to, d)) = self.b.poll_transmit(self.now) {
                queue.push_back((addr(B), to, d));
            }
            let t = self.t();
            if !self.server_dead {
                while let TurnServerPollRet::AllocateSocket {
                    transport,
                    listen_addr,
                    client_addr,
                    allocation_transport,
                    family,
                } = self.server.poll(t)
                {
                    let relayed: SocketAddr =
                        format!("192.0.2.1:{}", self.next_port).parse().unwrap();
                    self.next_port += 1;
                    self.relayed.push(relayed);
                    self.server.allocated_socket(
                        transport,
                        listen_addr,
                        client_addr,
                        allocation_transport,
                        family,
                        Ok(relayed),
                        t,
                    );
                }
                while let Some(tx) = self.server.poll_transmit(t) {
                    queue.push_back((tx.from, tx.to, tx.data));
                }
            }
            if queue.is_empty() {
                break;
            }
            while let Some((from, to, data)) = queue.pop_front() {
                self.deliver(from, to, data, &mut queue);
            }
        }
        while let Some(e) = self.a.poll_event() {
            self.events_a.push(e);
        }
        while let Some(e) = self.b.poll_event() {
            self.events_b.push(e);
        }
    }

    fn deliver(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        data: Vec<u8>,
        queue: &mut VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    ) {
        let t = self.t();
        if to == addr(SERVER) || self.relayed.contains(&to) {
            if self.server_dead {
                return;
            }
            let tx = turn_server_proto::stun::agent::Transmit::new(
                data.as_slice(),
                TransportType::Udp,
                from,
                to,
            );
            if let Some(out) = self.server.recv(tx, t) {
                let out = out.build();
                // turn-server-proto 0.7.3 addresses its Binding responses to its own
                // listening address (from == to); a real server (coturn) answers the
                // sender. Route such a response back to the requester.
                let dest = if out.to == addr(SERVER) { from } else { out.to };
                queue.push_back((out.from, dest, out.data));
            }
        } else if to == addr(A) {
            self.raw_a += 1;
            if let Received::Peer { from, data } = self.a.handle_datagram(self.now, from, &data) {
                self.got_a.push((from, data));
            }
        } else if to == addr(B) {
            if let Received::Peer { from, data } = self.b.handle_datagram(self.now, from, &data) {
                self.got_b.push((from, data));
            }
        }
    }

    /// Advances the clock in steps of `step`, settling after each, for `total`.
    fn run(&mut self, total: Duration, step: Duration) {
        let end = self.now + total;
        while self.now < end {
            self.now += step;
            self.settle();
        }
    }

    /// Both allocated, each permitted for the other's relayed address, channels bound.
    fn connect(&mut self) -> (SocketAddr, SocketAddr) {
        // The client answers the server's 401 (nonce, realm) on its next poll.
        self.run(Duration::from_secs(1), Duration::from_millis(100));
        let ra = self.a.relayed_addr().expect("a allocated");
        let rb = self.b.relayed_addr().expect("b allocated");
        assert!(self.events_a.contains(&RelayEvent::Allocated(ra)));
        self.a.permit(self.now, rb).unwrap();
        self.b.permit(self.now, ra).unwrap();
        self.run(Duration::from_secs(1), Duration::from_millis(100));
        assert!(self.a.is_ready(rb), "events of a: {:?}", self.events_a);
        assert!(self.b.is_ready(ra), "events of b: {:?}", self.events_b);
        assert!(self.events_a.contains(&RelayEvent::Ready(rb)));
        (ra, rb)
    }
}

#[test]
fn demultiplexes_by_first_byte() {
    assert!(is_turn(&[0x00, 0x01, 0, 0]), "STUN binding request");
    assert!(is_turn(&[0x01, 0x13]), "STUN data indication");
    assert!(is_turn(&[0x40, 0x00, 0, 4]), "ChannelData 0x4000");
    assert!(is_turn(&[0x4f, 0xff]), "ChannelData 0x4fff");
    assert!(!is_turn(&[p2pchat::wire::MAGIC, 1, 2]), "p2pchat datagram");
    assert!(!is_turn(&[]));
    assert!(!is_turn(&[0x04]));
    assert!(!is_turn(&[0x80]));
    // Every p2pchat datagram starts with MAGIC, outside both TURN ranges.
    let ping = p2pchat::wire::encode(&p2pchat::wire::Message::Ping {
        from: 1,
        session: 2,
    });
    assert!(!is_turn(&ping));
}

#[test]
fn relays_datagrams_both_ways_between_two_allocations() {
    let mut net = Net::new("secret-a");
    let (ra, rb) = net.connect();
    assert_ne!(ra, rb);

    net.a.send(net.now, rb, b"\x50sealed from a").unwrap();
    net.b.send(net.now, ra, b"\x50sealed from b").unwrap();
    net.settle();
    assert_eq!(net.got_b, vec![(ra, b"\x50sealed from a".to_vec())]);
    assert_eq!(net.got_a, vec![(rb, b"\x50sealed from b".to_vec())]);

    // A datagram that is not TURN traffic, or not from the server, is left to the caller.
    assert_eq!(
        net.a.handle_datagram(net.now, addr(SERVER), &[0x50, 1, 2]),
        Received::NotTurn
    );
    assert_eq!(
        net.a.handle_datagram(net.now, addr(B), &[0x40, 0, 0, 0]),
        Received::NotTurn
    );
}

#[test]
fn sending_needs_a_permission_and_an_allocation() {
    let mut net = Net::new("secret-a");
    assert_eq!(
        net.a.send(net.now, addr(B), b"x"),
        Err(RelayError::NotAllocated)
    );
    assert_eq!(
        net.a.permit(net.now, addr(B)),
        Err(RelayError::NotAllocated)
    );
    net.run(Duration::from_secs(1), Duration::from_millis(100));
    assert!(net.a.relayed_addr().is_some());
    let stranger: SocketAddr = "192.0.2.99:1".parse().unwrap();
    assert_eq!(
        net.a.send(net.now, stranger, b"x"),
        Err(RelayError::NoPermission(stranger))
    );
}

#[test]
fn refreshes_keep_the_allocation_and_channels_for_25_minutes() {
    let mut net = Net::new("secret-a");
    let (ra, rb) = net.connect();
    // Allocations last 10 min, permissions 5 min, channels 10 min unless refreshed.
    net.run(Duration::from_secs(25 * 60), Duration::from_secs(1));
    assert!(!net.a.is_ended(), "events of a: {:?}", net.events_a);
    assert!(!net.b.is_ended(), "events of b: {:?}", net.events_b);
    assert!(
        !net.events_a
            .iter()
            .any(|e| matches!(e, RelayEvent::Lost(_) | RelayEvent::PeerFailed(_))),
        "{:?}",
        net.events_a
    );
    net.a.send(net.now, rb, b"\x50still here").unwrap();
    net.settle();
    assert_eq!(net.got_b, vec![(ra, b"\x50still here".to_vec())]);
}

#[test]
fn wrong_credentials_fail_with_an_event() {
    let mut net = Net::new("not-the-password");
    net.run(Duration::from_secs(60), Duration::from_millis(500));
    assert!(net.a.relayed_addr().is_none());
    assert!(net.a.is_ended());
    assert!(
        net.events_a
            .iter()
            .any(|e| matches!(e, RelayEvent::Failed(_))),
        "{:?}",
        net.events_a
    );
    // The other client is unaffected.
    assert!(net.b.relayed_addr().is_some());
}

#[test]
fn a_silent_server_is_noticed_within_30_seconds() {
    let mut net = Net::new("secret-a");
    net.connect();
    let killed = net.now;
    net.server_dead = true;
    net.run(Duration::from_secs(30), Duration::from_millis(500));
    let lost = net
        .events_a
        .iter()
        .find(|e| matches!(e, RelayEvent::Lost(_)))
        .cloned();
    assert!(lost.is_some(), "{:?}", net.events_a);
    assert!(net.a.is_ended());
    assert!(net.now.duration_since(killed) <= Duration::from_secs(30));
    assert!(SILENCE_LIMIT < Duration::from_secs(30));
    assert_eq!(
        net.a.send(net.now, addr(B), b"x"),
        Err(RelayError::NotAllocated)
    );
}

#[test]
fn a_live_server_is_not_declared_lost_when_no_data_flows() {
    let mut net = Net::new("secret-a");
    net.connect();
    // No peer data at all for 2 minutes: the Binding probes keep it known alive.
    net.run(Duration::from_secs(120), Duration::from_millis(500));
    assert!(!net.a.is_ended(), "{:?}", net.events_a);
}

#[test]
fn release_deletes_the_allocation_on_the_server() {
    let mut net = Net::new("secret-a");
    let (ra, _rb) = net.connect();
    net.a.release(net.now);
    net.settle();
    assert!(net.a.is_ended());
    assert!(net
        .events_a
        .iter()
        .any(|e| matches!(e, RelayEvent::Lost(r) if r == "released")));
    // b still sends to a's old relayed address; the server no longer relays it (nothing
    // at all reaches a's socket).
    net.raw_a = 0;
    net.b.send(net.now, ra, b"\x50after release").unwrap();
    net.settle();
    assert_eq!(net.raw_a, 0);
    assert!(net.got_a.is_empty(), "{:?}", net.got_a);
}

#[test]
fn credentials_are_never_printed() {
    let t = turn("alice", "hunter2");
    assert!(!format!("{t:?}").contains("hunter2"));
    // The model server accepts what the client sends (same crate family's types).
    let _ = TurnCredentials::new("alice", "hunter2");
}
