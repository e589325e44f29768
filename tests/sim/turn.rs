//! A TURN server in the simulated network: turn-server-proto's sans-IO server (the same
//! model as tests/relay.rs), at one address, handing out relayed addresses on its own IP.
//! It records every datagram it receives and relays, so that tests can check what a relay
//! operator sees.

use std::net::SocketAddr;
use std::time::Instant;

use turn_server_proto::api::{TurnServerApi, TurnServerPollRet};
use turn_server_proto::server::TurnServer as ModelServer;
use turn_server_proto::types::TransportType;

/// A datagram the server sends: (from, to, bytes).
type Out = (SocketAddr, SocketAddr, Vec<u8>);

pub struct TurnNode {
    pub addr: SocketAddr,
    server: ModelServer,
    base: Instant,
    /// Relayed addresses handed out.
    pub relayed: Vec<SocketAddr>,
    next_port: u16,
    /// The server is gone: what reaches it is dropped.
    pub dead: bool,
    /// Every datagram that reached the server or one of its relayed addresses.
    pub seen: Vec<Vec<u8>>,
    /// The last answer to each (client, transaction id): a retransmitted request gets
    /// the same answer again (RFC 8656 7.2 asks it, coturn does it; the model server
    /// would answer a repeated Allocate with an error).
    answers: std::collections::HashMap<(SocketAddr, [u8; 12]), Out>,
}

impl TurnNode {
    pub fn new(addr: SocketAddr, base: Instant, users: &[(&str, &str)]) -> TurnNode {
        let mut server = ModelServer::new(TransportType::Udp, addr, "p2pchat".into());
        for (u, p) in users {
            server.add_user((*u).into(), (*p).into());
        }
        TurnNode {
            addr,
            server,
            base,
            relayed: Vec::new(),
            next_port: 49152,
            dead: false,
            seen: Vec::new(),
            answers: std::collections::HashMap::new(),
        }
    }

    /// Whether a datagram to `to` is this server's.
    pub fn owns(&self, to: SocketAddr) -> bool {
        to == self.addr || self.relayed.contains(&to)
    }

    fn t(&self, now: Instant) -> turn_server_proto::types::Instant {
        turn_server_proto::types::Instant::from_nanos(
            now.duration_since(self.base).as_nanos() as i64
        )
    }

    /// A datagram from `from` reached `to` (ours): what the server sends in answer, as
    /// (from, to, bytes).
    pub fn receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: SocketAddr,
        data: &[u8],
    ) -> Vec<Out> {
        if self.dead {
            return Vec::new();
        }
        self.seen.push(data.to_vec());
        let t = self.t(now);
        let mut out = Vec::new();
        // A STUN request (first two bits 0, class bits of a request) to the server itself.
        let txid: Option<[u8; 12]> = (to == self.addr && data.len() >= 20 && data[0] < 4)
            .then(|| data[8..20].try_into().unwrap());
        if let Some(id) = txid {
            if let Some(answer) = self.answers.get(&(from, id)) {
                out.push(answer.clone());
                return out;
            }
        }
        let tx = turn_server_proto::stun::agent::Transmit::new(data, TransportType::Udp, from, to);
        if let Some(reply) = self.server.recv(tx, t) {
            let reply = reply.build();
            // turn-server-proto addresses its Binding responses to its own listening
            // address (from == to); a real server answers the sender.
            let dest = if reply.to == self.addr {
                from
            } else {
                reply.to
            };
            out.push((reply.from, dest, reply.data));
        }
        self.poll(now, &mut out);
        if let Some(id) = txid {
            if let Some(answer) = out
                .iter()
                .find(|(_, dest, d)| *dest == from && d.len() >= 20 && d[8..20] == id)
            {
                self.answers.insert((from, id), answer.clone());
            }
        }
        out
    }

    fn poll(&mut self, now: Instant, out: &mut Vec<Out>) {
        let t = self.t(now);
        while let TurnServerPollRet::AllocateSocket {
            transport,
            listen_addr,
            client_addr,
            allocation_transport,
            family,
        } = self.server.poll(t)
        {
            let relayed = SocketAddr::new(self.addr.ip(), self.next_port);
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
            out.push((tx.from, tx.to, tx.data));
        }
    }
}
