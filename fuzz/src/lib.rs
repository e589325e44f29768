//! Structured inputs shared by the fuzz targets.
//!
//! libFuzzer hands each target a byte string; [`arbitrary`] turns it into these types. The
//! numbers that matter to the protocol (ids, sequence numbers) are drawn mostly from a small
//! range, so that the fuzzer hits "the id of a client that exists" and "the next message of
//! the session" often, and sometimes from the whole range.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use arbitrary::{Arbitrary, Result, Unstructured};
use p2pchat::wire::{ErrorCode, Message};

/// A client id: usually 0..=7, sometimes any `u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Id(pub u32);

impl<'a> Arbitrary<'a> for Id {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let b = u8::arbitrary(u)?;
        if b & 0x80 == 0 {
            Ok(Id(u32::from(b & 7)))
        } else {
            Ok(Id(u32::arbitrary(u)?))
        }
    }
}

/// A sequence number, token or session id: usually 0..=15, sometimes any `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Num(pub u64);

impl<'a> Arbitrary<'a> for Num {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let b = u8::arbitrary(u)?;
        if b & 0x80 == 0 {
            Ok(Num(u64::from(b & 15)))
        } else {
            Ok(Num(u64::arbitrary(u)?))
        }
    }
}

/// Any socket address, IPv4 or IPv6 (with flow info and scope id).
#[derive(Arbitrary, Debug, Clone)]
pub enum FuzzAddr {
    V4([u8; 4], u16),
    V6([u8; 16], u16, u32, u32),
}

impl FuzzAddr {
    pub fn to_addr(&self) -> SocketAddr {
        match *self {
            FuzzAddr::V4(ip, port) => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)),
            FuzzAddr::V6(ip, port, flow, scope) => {
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope))
            }
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum FuzzCode {
    ServerFull,
    IdTaken,
    BadVersion,
    NotRegistered,
    RateLimited,
    NameTaken,
    BadName,
    ListDisabled,
}

impl FuzzCode {
    pub fn to_code(self) -> ErrorCode {
        match self {
            FuzzCode::ServerFull => ErrorCode::ServerFull,
            FuzzCode::IdTaken => ErrorCode::IdTaken,
            FuzzCode::BadVersion => ErrorCode::BadVersion,
            FuzzCode::NotRegistered => ErrorCode::NotRegistered,
            FuzzCode::RateLimited => ErrorCode::RateLimited,
            FuzzCode::NameTaken => ErrorCode::NameTaken,
            FuzzCode::BadName => ErrorCode::BadName,
            FuzzCode::ListDisabled => ErrorCode::ListDisabled,
        }
    }
}

/// Every [`Message`], with fields the fuzzer can steer.
#[derive(Arbitrary, Debug, Clone)]
pub enum FuzzMessage {
    Register {
        want_id: Option<Id>,
        key: [u8; 32],
    },
    Lookup {
        id: Id,
    },
    Leave {
        id: Id,
        token: Num,
    },
    Keepalive {
        id: Id,
        token: Num,
        candidates: Vec<FuzzAddr>,
        relay: Option<FuzzAddr>,
    },
    Registered {
        id: Id,
        token: Num,
        ttl_secs: u32,
        key: [u8; 32],
    },
    Found {
        id: Id,
        addr: FuzzAddr,
        name: Option<String>,
        key: [u8; 32],
    },
    Claim {
        id: Id,
        token: Num,
        name: String,
        proof: Option<Vec<u8>>,
    },
    Resolve {
        name: String,
    },
    List {
        id: Id,
        token: Num,
        after: Option<Id>,
    },
    Claimed {
        id: Id,
        name: String,
    },
    Unknown {
        name: String,
    },
    Listing {
        clients: Vec<(Id, Option<String>, u32, [u8; 32])>,
        next: Option<Id>,
        total: u32,
    },
    Inactive {
        id: Id,
    },
    LeaveAck {
        id: Id,
    },
    Error {
        code: FuzzCode,
        detail: String,
    },
    ConnectRequest {
        from: Id,
        session: Num,
        hs: Vec<u8>,
    },
    Accept {
        from: Id,
        session: Num,
        hs: Vec<u8>,
    },
    Reject {
        from: Id,
        session: Num,
        hs: Vec<u8>,
    },
    /// A sealed datagram of a session: arbitrary ciphertext, any counter.
    Sealed {
        from: Id,
        session: Num,
        n: Num,
        data: Vec<u8>,
    },
    Chat {
        from: Id,
        session: Num,
        seq: Num,
        text: String,
    },
    Ack {
        from: Id,
        session: Num,
        seq: Num,
        cumulative: Num,
    },
    Terminate {
        from: Id,
        session: Num,
    },
    TerminateAck {
        from: Id,
        session: Num,
    },
    Ping {
        from: Id,
        session: Num,
    },
    Pong {
        from: Id,
        session: Num,
    },
    Introduce {
        id: Id,
        addr: FuzzAddr,
        candidates: Vec<FuzzAddr>,
        punch: Num,
        you: FuzzAddr,
        proof: Num,
        relay: Option<FuzzAddr>,
    },
    Probe {
        from: Id,
        punch: Num,
    },
}

impl FuzzMessage {
    pub fn to_message(&self) -> Message {
        use FuzzMessage as F;
        match self.clone() {
            F::Register { want_id, key } => Message::register(want_id.map(|i| i.0), key),
            F::Lookup { id } => Message::lookup(id.0),
            F::Leave { id, token } => Message::leave(id.0, token.0),
            F::Keepalive {
                id,
                token,
                candidates,
                relay,
            } => {
                let mut m = Message::keepalive_with(
                    id.0,
                    token.0,
                    candidates.iter().map(FuzzAddr::to_addr).collect(),
                );
                if let Message::Keepalive { relay: r, .. } = &mut m {
                    *r = relay.as_ref().map(FuzzAddr::to_addr);
                }
                m
            }
            F::Registered {
                id,
                token,
                ttl_secs,
                key,
            } => Message::Registered {
                id: id.0,
                token: token.0,
                ttl_secs,
                key,
                nonce: 0,
                turn: None,
            },
            F::Found {
                id,
                addr,
                name,
                key,
            } => Message::Found {
                id: id.0,
                addr: addr.to_addr(),
                key,
                name,
                display_name: None,
                nonce: 0,
            },
            F::Claim {
                id,
                token,
                name,
                proof,
            } => Message::Claim {
                id: id.0,
                token: token.0,
                name,
                display_name: None,
                proof: proof.map(|p| p.into_iter().take(256).collect()),
                nonce: 0,
                pad: Default::default(),
            },
            F::Resolve { name } => Message::resolve(name),
            F::List { id, token, after } => Message::List {
                id: id.0,
                token: token.0,
                after: after.map(|a| a.0),
                nonce: 0,
                pad: Default::default(),
            },
            F::Claimed { id, name } => Message::Claimed {
                id: id.0,
                name,
                nonce: 0,
            },
            F::Unknown { name } => Message::Unknown { name, nonce: 0 },
            F::Listing {
                clients,
                next,
                total,
            } => Message::Listing {
                clients: clients
                    .into_iter()
                    .map(|(id, name, online_secs, key)| p2pchat::wire::Listed {
                        id: id.0,
                        key,
                        name,
                        display_name: None,
                        online_secs,
                    })
                    .collect(),
                next: next.map(|n| n.0),
                total,
                nonce: 0,
            },
            F::Inactive { id } => Message::Inactive { id: id.0, nonce: 0 },
            F::LeaveAck { id } => Message::LeaveAck { id: id.0, nonce: 0 },
            F::Error { code, detail } => Message::Error {
                code: code.to_code(),
                detail,
                nonce: 0,
            },
            F::ConnectRequest { from, session, hs } => Message::ConnectRequest {
                from: from.0,
                session: session.0,
                hs,
            },
            F::Accept { from, session, hs } => Message::Accept {
                from: from.0,
                session: session.0,
                hs,
            },
            F::Reject { from, session, hs } => Message::Reject {
                from: from.0,
                session: session.0,
                hs,
            },
            F::Sealed {
                from,
                session,
                n,
                data,
            } => Message::Sealed {
                from: from.0,
                session: session.0,
                n: n.0,
                data: data.into_iter().take(p2pchat::wire::MAX_DATAGRAM).collect(),
            },
            F::Chat {
                from,
                session,
                seq,
                text,
            } => Message::Chat {
                from: from.0,
                session: session.0,
                seq: seq.0,
                text,
            },
            F::Ack {
                from,
                session,
                seq,
                cumulative,
            } => Message::Ack {
                from: from.0,
                session: session.0,
                seq: seq.0,
                cumulative: cumulative.0,
            },
            F::Terminate { from, session } => Message::Terminate {
                from: from.0,
                session: session.0,
            },
            F::TerminateAck { from, session } => Message::TerminateAck {
                from: from.0,
                session: session.0,
            },
            F::Ping { from, session } => Message::Ping {
                from: from.0,
                session: session.0,
            },
            F::Pong { from, session } => Message::Pong {
                from: from.0,
                session: session.0,
            },
            F::Introduce {
                id,
                addr,
                candidates,
                punch,
                you,
                proof,
                relay,
            } => Message::Introduce {
                id: id.0,
                addr: addr.to_addr(),
                candidates: candidates.iter().map(FuzzAddr::to_addr).collect(),
                punch: punch.0,
                you: you.to_addr(),
                proof: proof.0,
                pad: p2pchat::wire::Padding(0),
                relay: relay.as_ref().map(FuzzAddr::to_addr),
            },
            F::Probe { from, punch } => Message::Probe {
                from: from.0,
                punch: punch.0,
            },
        }
    }
}

/// How far the clock moves before a step: not at all, a few milliseconds, or seconds.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Advance {
    None,
    Millis(u16),
    Secs(u8),
}

impl Advance {
    pub fn duration(self) -> std::time::Duration {
        match self {
            Advance::None => std::time::Duration::ZERO,
            Advance::Millis(ms) => std::time::Duration::from_millis(u64::from(ms)),
            Advance::Secs(s) => std::time::Duration::from_secs(u64::from(s)),
        }
    }
}
