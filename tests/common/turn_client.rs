//! The TURN client state machine ([`Relay`]) on a real socket, driven in real time: for the
//! tests against a real coturn (tests/relay_coturn.rs on loopback, tests/relay_lab.rs in
//! the namespace lab).

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use p2pchat::peer::relay::{Received, Relay, RelayEvent, TurnServer};

/// A [`Relay`] with its own socket.
pub struct TurnClient {
    pub socket: UdpSocket,
    pub relay: Relay,
    pub events: Vec<RelayEvent>,
    /// What the relay carried to us: (from, bytes).
    pub got: Vec<(SocketAddr, Vec<u8>)>,
    /// Every datagram that reached the socket, whatever the relay made of it.
    pub raw: usize,
}

impl TurnClient {
    /// Allocates on `turn` from `socket`.
    pub fn on(socket: UdpSocket, turn: &TurnServer) -> TurnClient {
        socket.set_nonblocking(true).unwrap();
        let relay = Relay::allocate(Instant::now(), socket.local_addr().unwrap(), turn);
        TurnClient {
            socket,
            relay,
            events: Vec::new(),
            got: Vec::new(),
            raw: 0,
        }
    }

    /// Reads what arrived, runs the timers, sends what is due, collects the events.
    pub fn step(&mut self) {
        let now = Instant::now();
        let mut buf = [0u8; 65536];
        loop {
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    self.raw += 1;
                    if let Received::Peer { from, data } =
                        self.relay.handle_datagram(now, from, &buf[..n])
                    {
                        self.got.push((from, data));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // ICMP port unreachable after coturn dies: nothing to read.
                Err(_) => break,
            }
        }
        if self.relay.poll_timeout(now).is_some_and(|t| t <= now) {
            self.relay.handle_timeout(now);
        }
        while let Some((to, d)) = self.relay.poll_transmit(now) {
            let _ = self.socket.send_to(&d, to);
        }
        while let Some(e) = self.relay.poll_event() {
            self.events.push(e);
        }
    }
}

/// Steps both until `done` or `limit` passes; returns the time taken, `None` at the limit.
pub fn run(
    a: &mut TurnClient,
    b: &mut TurnClient,
    limit: Duration,
    mut done: impl FnMut(&TurnClient, &TurnClient) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        a.step();
        b.step();
        if done(a, b) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}
