//! Property tests (proptest) of hostile input: the same properties the fuzz targets in
//! `fuzz/` check, run here on every `cargo test` with a bounded number of cases.
//!
//! - Arbitrary bytes never make the decoder panic, and whatever decodes survives
//!   `encode` + `decode` unchanged.
//! - Arbitrary datagrams from arbitrary addresses into a `Registry` never panic, are answered
//!   only to their sender, and never change the table unless they are a `Register` from the
//!   new entry's address or a `Leave` with the right id and token from the entry's address.
//! - Arbitrary datagrams (raw, well-formed, or forged with a real session id) from arbitrary
//!   addresses, and arbitrary user commands, into two connected `Peer`s on a lossy simulated
//!   network never panic, and never show a message twice or out of order in a session.
//! - Arbitrary datagrams into a connected `Peer` from addresses that have not proved they
//!   receive are never answered, in all, with more bytes than came from each address.
//!
//! A failure prints the shrunk input; proptest also records its seed in
//! `tests/properties.proptest-regressions`, and every case there is replayed first on the
//! next run. Set `PROPTEST_CASES` to run more cases.

mod sim;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use p2pchat::peer::{Event, PeerConfig};
use p2pchat::registry::{Registry, RegistryConfig, TableEvent};
use p2pchat::wire::{
    decode, decode_all, encode, ClientId, ErrorCode, Message, SessionId, Token, MAGIC, VERSION,
};
use proptest::collection::vec;
use proptest::prelude::*;
use sim::{NetConfig, Sim, SERVER};

// ---------------------------------------------------------------------- strategies

fn small_id() -> impl Strategy<Value = ClientId> {
    prop_oneof![4 => 0u32..6, 1 => any::<u32>()]
}

fn small_u64() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..16, 1 => any::<u64>()]
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>(), any::<u32>()).prop_map(|(ip, port, scope)| {
            SocketAddr::V6(SocketAddrV6::new(ip.into(), port, 0, scope))
        }),
    ]
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{0,12}",
        vec(any::<char>(), 0..24).prop_map(String::from_iter),
    ]
}

fn arb_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::ServerFull),
        Just(ErrorCode::IdTaken),
        Just(ErrorCode::BadVersion),
        Just(ErrorCode::NotRegistered),
        Just(ErrorCode::RateLimited),
    ]
}

fn client_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (proptest::option::of(small_id()), any::<[u8; 32]>())
            .prop_map(|(id, key)| Message::register(id, key)),
        small_id().prop_map(Message::lookup),
        (small_id(), small_u64()).prop_map(|(id, token)| Message::leave(id, token)),
        (small_id(), small_u64()).prop_map(|(id, token)| Message::keepalive(id, token)),
    ]
}

fn server_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (small_id(), small_u64(), any::<u32>()).prop_map(|(id, token, ttl_secs)| {
            Message::Registered {
                key: [0; 32],
                id,
                token,
                ttl_secs,
                nonce: 0,
                turn: None,
            }
        }),
        (small_id(), arb_addr()).prop_map(|(id, addr)| Message::Found {
            key: [0; 32],
            id,
            addr,
            name: None,
            display_name: None,
            nonce: 0
        }),
        small_id().prop_map(|id| Message::Inactive { id, nonce: 0 }),
        small_id().prop_map(|id| Message::LeaveAck { id, nonce: 0 }),
        (arb_code(), arb_text()).prop_map(|(code, detail)| Message::Error {
            code,
            detail,
            nonce: 0
        }),
    ]
}

/// A peer-to-peer message of `kind` (0..15: session messages, then file transfer) with the
/// given fields.
fn peer_message(
    kind: u8,
    from: ClientId,
    session: SessionId,
    a: u64,
    b: u64,
    text: String,
) -> Message {
    match kind % 15 {
        0 => Message::ConnectRequest {
            hs: Vec::new(),
            from,
            session,
        },
        1 => Message::Accept {
            hs: Vec::new(),
            from,
            session,
        },
        2 => Message::Reject {
            hs: Vec::new(),
            from,
            session,
        },
        3 => Message::Chat {
            from,
            session,
            seq: a,
            text,
        },
        4 => Message::Ack {
            from,
            session,
            seq: a,
            cumulative: b,
        },
        5 => Message::Terminate { from, session },
        6 => Message::TerminateAck { from, session },
        7 => Message::Ping { from, session },
        8 => Message::Pong { from, session },
        // File transfer: numbers and sequence numbers small, so that they hit real ones.
        9 => Message::FileOffer {
            from,
            session,
            n: a % 4,
            name: text,
            size: b % 5000,
            sha256: [a as u8; 32],
        },
        10 => Message::FileGet {
            from,
            session,
            n: a % 4,
            window: b % 3000,
        },
        11 => Message::Chunk {
            from,
            session,
            n: a % 4,
            seq: b % 8,
            data: text.into_bytes(),
        },
        12 => Message::ChunkAck {
            from,
            session,
            n: a % 4,
            seq: b % 8,
            cumulative: b % 8,
            ranges: vec![(a % 8, b % 8)],
            window: a % 3,
        },
        13 => Message::FileCancel {
            from,
            session,
            offerer: from,
            n: a % 4,
            reason: p2pchat::wire::FileEnd::Cancelled,
            precise: None,
        },
        _ => Message::FileCancelAck {
            from,
            session,
            offerer: from,
            n: a % 4,
        },
    }
}

fn p2p_message() -> impl Strategy<Value = Message> {
    (
        0u8..15,
        small_id(),
        small_u64(),
        small_u64(),
        small_u64(),
        arb_text(),
    )
        .prop_map(|(k, from, session, a, b, text)| peer_message(k, from, session, a, b, text))
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![client_message(), server_message(), p2p_message()]
}

/// Datagrams a hostile sender might write: noise, noise behind a valid header, and valid
/// (possibly packed) messages with some bytes changed or cut off.
fn arb_datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..48),
        vec(any::<u8>(), 0..48).prop_map(|body| {
            let mut d = vec![MAGIC, VERSION];
            d.extend(body);
            d
        }),
        (
            vec(arb_message(), 1..4),
            vec((any::<proptest::sample::Index>(), any::<u8>()), 0..3),
            proptest::option::of(any::<proptest::sample::Index>()),
        )
            .prop_map(|(msgs, flips, cut)| {
                let mut d = vec![MAGIC, VERSION];
                for m in &msgs {
                    d.extend_from_slice(&encode(m)[2..]);
                }
                for (i, byte) in flips {
                    let i = i.index(d.len());
                    d[i] = byte;
                }
                if let Some(cut) = cut {
                    d.truncate(cut.index(d.len() + 1));
                }
                d
            }),
    ]
}

// ---------------------------------------------------------------------- decoding

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_and_what_decodes_round_trips(d in arb_datagram()) {
        let single = decode(&d);
        match decode_all(&d) {
            Ok(messages) => {
                prop_assert!(!messages.is_empty());
                prop_assert_eq!(single.is_ok(), messages.len() == 1);
                for m in &messages {
                    let bytes = encode(m);
                    let again = decode(&bytes);
                    prop_assert_eq!(again.as_ref(), Ok(m));
                    prop_assert_eq!(encode(&again.unwrap()), bytes);
                }
            }
            Err(_) => prop_assert!(single.is_err()),
        }
    }

    #[test]
    fn every_well_formed_message_round_trips(m in arb_message()) {
        prop_assert_eq!(decode(&encode(&m)), Ok(m));
    }
}

// ---------------------------------------------------------------------- the registry

const REG_ADDRS: [&str; 5] = [
    "10.0.0.2:4000",
    "10.0.0.3:4000",
    "10.0.0.2:4001",
    "[2001:db8::1]:4000",
    "10.0.0.4:65535",
];

#[derive(Debug, Clone)]
enum RegInput {
    /// Any datagram.
    Bytes(Vec<u8>),
    /// A well-formed message.
    Message(Message),
    /// A `Leave` (or `Keepalive`) naming the `entry`-th entry of the table, with its token
    /// xor `token_xor` and its id plus `id_delta`; from its own address when `own`.
    Known {
        entry: usize,
        leave: bool,
        own: bool,
        id_delta: u32,
        token_xor: u64,
    },
    /// A `Lookup` of the `asked`-th entry of the table from the address of the
    /// `asker`-th (both taken modulo the table's length), as a client that punches sends.
    LookupKnown { asker: usize, asked: usize },
    /// The expiry timer fires.
    Timeout,
}

fn reg_input() -> impl Strategy<Value = RegInput> {
    prop_oneof![
        2 => arb_datagram().prop_map(RegInput::Bytes),
        3 => client_message().prop_map(RegInput::Message),
        1 => arb_message().prop_map(RegInput::Message),
        3 => (any::<usize>(), any::<bool>(), any::<bool>(),
              prop_oneof![3 => Just(0u32), 1 => any::<u32>()],
              prop_oneof![3 => Just(0u64), 1 => any::<u64>()])
            .prop_map(|(entry, leave, own, id_delta, token_xor)| RegInput::Known {
                entry, leave, own, id_delta, token_xor
            }),
        1 => (any::<usize>(), any::<usize>())
            .prop_map(|(asker, asked)| RegInput::LookupKnown { asker, asked }),
        1 => Just(RegInput::Timeout),
    ]
}

type Row = (SocketAddr, Token, Instant);

fn reg_table(r: &Registry) -> BTreeMap<ClientId, Row> {
    r.entries()
        .map(|e| (e.id, (e.addr, e.token, e.joined)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn registry_table_changes_only_by_register_or_owner_leave(
        seed in any::<u64>(),
        max_clients in 0usize..4,
        ttl_secs in 1u64..40,
        steps in vec((0usize..REG_ADDRS.len(), 0u64..20_000, reg_input()), 1..60),
    ) {
        let addrs: Vec<SocketAddr> = REG_ADDRS.iter().map(|a| a.parse().unwrap()).collect();
        let ttl = Duration::from_secs(ttl_secs);
        let config = RegistryConfig {
            ttl,
            max_clients,
            register_rate: 1.0,
            register_burst: 3,
            list: true,
            turn: None,
        };
        let mut reg = Registry::with_seed(config, seed);
        let mut now = Instant::now();
        for (k, advance_ms, input) in steps {
            now += Duration::from_millis(advance_ms);
            let before = reg_table(&reg);
            let last_seen: BTreeMap<ClientId, Instant> =
                reg.entries().map(|e| (e.id, e.last_seen)).collect();
            let mut from = addrs[k];
            let datagram = match input {
                RegInput::Bytes(b) => Some(b),
                RegInput::Message(m) => Some(encode(&m)),
                RegInput::Known { entry, leave, own, id_delta, token_xor } => {
                    let (id, token) = match before.iter().nth(entry % before.len().max(1)) {
                        Some((&id, &(addr, token, _))) => {
                            if own {
                                from = addr;
                            }
                            (id.wrapping_add(id_delta), token ^ token_xor)
                        }
                        None => (id_delta, token_xor),
                    };
                    Some(encode(&if leave {
                        Message::leave(id, token)
                    } else {
                        Message::keepalive(id, token)
                    }))
                }
                RegInput::LookupKnown { asker, asked } => {
                    let n = before.len().max(1);
                    if let Some((_, &(addr, _, _))) = before.iter().nth(asker % n) {
                        from = addr;
                    }
                    let id = before.keys().nth(asked % n).copied().unwrap_or(0);
                    let mut lookup = Message::lookup(id);
                    p2pchat::wire::pad_request(&mut lookup);
                    Some(encode(&lookup))
                }
                RegInput::Timeout => None,
            };
            match &datagram {
                Some(d) => reg.handle_datagram(now, from, d),
                None => reg.handle_timeout(now),
            }
            let answers: Vec<_> = std::iter::from_fn(|| reg.poll_transmit()).collect();
            let events: Vec<_> = std::iter::from_fn(|| reg.poll_event()).collect();
            let after = reg_table(&reg);

            prop_assert!(after.len() <= max_clients);
            let addrs_in_use: BTreeSet<SocketAddr> = after.values().map(|r| r.0).collect();
            prop_assert_eq!(addrs_in_use.len(), after.len(), "two entries at one address");
            for (id, row) in &after {
                if let Some(old) = before.get(id) {
                    prop_assert_eq!(row, old, "client {} changed", id);
                }
            }
            let removed: Vec<ClientId> =
                before.keys().filter(|id| !after.contains_key(id)).copied().collect();
            let added: Vec<ClientId> =
                after.keys().filter(|id| !before.contains_key(id)).copied().collect();
            prop_assert_eq!(events.len(), removed.len() + added.len(), "{:?}", events);

            let Some(d) = datagram else {
                // An expiry sends nothing, adds nothing, and removes only the silent.
                prop_assert!(answers.is_empty());
                prop_assert!(added.is_empty());
                for id in &removed {
                    prop_assert!(last_seen[id] + ttl <= now, "client {} expired early", id);
                    let expired = TableEvent::Expired {
                        id: *id,
                        addr: before[id].0,
                        name: None,
                    };
                    prop_assert!(events.contains(&expired), "no event for expired client {}", id);
                }
                if let Some(t) = reg.poll_timeout() {
                    prop_assert!(t > now, "poll_timeout in the past after handle_timeout");
                }
                continue;
            };
            let messages = decode_all(&d).unwrap_or_default();
            // Answers go back to the sender, with one exception: a lookup (or name
            // resolution) from a registered client introduces it to the client it asked
            // for, so that both punch. That Introduce goes to the other client's registered
            // address, names the asker at the sending address, and proves itself with the
            // receiver's own token; only lookups can cause it, at most one per lookup.
            let asker = before.iter().find(|(_, r)| r.0 == from).map(|(&id, _)| id);
            let lookups = messages
                .iter()
                .filter(|m| matches!(m, Message::Lookup { .. } | Message::Resolve { .. }))
                .count();
            let mut introductions = 0;
            for a in answers.iter().filter(|a| a.to != from) {
                introductions += 1;
                let is_introduction = match &a.message {
                    Message::Introduce { id, addr, you, proof, .. } => {
                        Some(*id) == asker
                            && *addr == from
                            && *you == a.to
                            && before.values().any(|r| r.0 == a.to && r.1 == *proof)
                    }
                    _ => false,
                };
                prop_assert!(
                    is_introduction,
                    "an answer went to a third party {}: {:?} (for {:?} from {})",
                    a.to, a.message, messages, from
                );
            }
            prop_assert!(
                introductions <= lookups,
                "{} introductions for {} lookups", introductions, lookups
            );
            // What may have changed the table: a Leave from the owner with its token removes
            // that entry; a Register from an address without an entry adds one there.
            let honoured: Vec<ClientId> = messages
                .iter()
                .filter_map(|m| match m {
                    Message::Leave { id, token, .. } => before
                        .get(id)
                        .is_some_and(|r| r.0 == from && r.1 == *token)
                        .then_some(*id),
                    _ => None,
                })
                .collect();
            if messages.len() <= 1 {
                prop_assert_eq!(&removed, &honoured, "{:?} from {}", messages, from);
            } else {
                for id in &removed {
                    prop_assert!(honoured.contains(id) || !before.contains_key(id));
                }
            }
            for id in &added {
                prop_assert!(
                    messages.iter().any(|m| matches!(m, Message::Register { .. })),
                    "{:?} added client {}", messages, id
                );
                prop_assert_eq!(after[id].0, from);
            }
        }
    }
}

// ---------------------------------------------------------------------- two peers

#[derive(Debug, Clone)]
enum Source {
    Server,
    Peer(usize),
    Stranger,
    Any(SocketAddr),
}

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        Just(Source::Server),
        (0usize..2).prop_map(Source::Peer),
        Just(Source::Stranger),
        arb_addr().prop_map(Source::Any),
    ]
}

#[derive(Debug, Clone)]
enum Payload {
    Bytes(Vec<u8>),
    Message(Message),
    /// A peer message on a session id seen on the wire, from the other peer's id (or ours),
    /// sent from the other peer's address (when `spoof`) or from the op's source.
    Forged {
        spoof: bool,
        session: proptest::sample::Index,
        from_other: bool,
        kind: u8,
        a: u64,
        b: u64,
        text: String,
    },
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        1 => arb_datagram().prop_map(Payload::Bytes),
        1 => arb_message().prop_map(Payload::Message),
        4 => (prop::bool::weighted(0.8), any::<proptest::sample::Index>(),
              prop::bool::weighted(0.9), prop_oneof![2 => Just(3u8), 1 => 0u8..9], 0u64..12,
              0u64..12, arb_text())
            .prop_map(|(spoof, session, from_other, kind, a, b, text)| Payload::Forged {
                spoof, session, from_other, kind, a, b, text
            }),
    ]
}

#[derive(Debug, Clone)]
enum Who {
    Other,
    Me,
    Id(ClientId),
}

fn who() -> impl Strategy<Value = Option<Who>> {
    proptest::option::weighted(
        0.7,
        prop_oneof![4 => Just(Who::Other), 1 => Just(Who::Me), 1 => small_id().prop_map(Who::Id)],
    )
}

#[derive(Debug, Clone)]
enum Cmd {
    Connect(Option<Who>),
    Accept(Option<Who>),
    Reject(Option<Who>),
    Send(Option<Who>, String),
    Terminate(Option<Who>),
    Leave,
    Finish,
}

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        2 => who().prop_map(Cmd::Connect),
        2 => who().prop_map(Cmd::Accept),
        1 => who().prop_map(Cmd::Reject),
        10 => (who(), prop_oneof![3 => "[a-z]{1,8}", 1 => Just("é".repeat(700))])
            .prop_map(|(w, t)| Cmd::Send(w, t)),
        1 => who().prop_map(Cmd::Terminate),
        1 => Just(Cmd::Leave),
        1 => Just(Cmd::Finish),
    ]
}

#[derive(Debug, Clone)]
enum PeerOp {
    Inject {
        to: usize,
        from: Source,
        what: Payload,
    },
    Command {
        who: usize,
        cmd: Cmd,
    },
    /// Let the network and timers run this many milliseconds.
    Run(u64),
}

fn peer_op() -> impl Strategy<Value = PeerOp> {
    prop_oneof![
        4 => (0usize..2, source(), payload())
            .prop_map(|(to, from, what)| PeerOp::Inject { to, from, what }),
        3 => (0usize..2, cmd()).prop_map(|(who, cmd)| PeerOp::Command { who, cmd }),
        3 => prop_oneof![3 => 0u64..500, 1 => 0u64..30_000].prop_map(PeerOp::Run),
    ]
}

/// Two registered peers on a network without loss, the first connected to the second
/// (which accepted).
fn connected_sim(seed: u64, config: &PeerConfig) -> (Sim, Vec<usize>) {
    let mut s = Sim::new(seed, NetConfig::perfect());
    let v = s.add_registered_peers(2, config);
    let (a, b) = (v[0], v[1]);
    s.connect(a, b);
    s.expect(Duration::from_secs(60), "the request arrives", |s| {
        s.peer(b).pending_requests() == vec![s.id(a)]
    });
    s.accept(b, None);
    s.expect(Duration::from_secs(60), "connected", |s| {
        s.peer(a).connected_peers() == vec![s.id(b)]
    });
    (s, v)
}

/// The datagram of `what` for peer `to` (of the two whose ids are `ids`): a forged message
/// takes a session id seen on the wire. Also whether it is to come from the other peer's
/// address (a forged one, when asked to spoof).
fn payload_bytes(s: &Sim, ids: [ClientId; 2], to: usize, what: Payload) -> (Vec<u8>, bool) {
    match what {
        Payload::Bytes(b) => (b, false),
        Payload::Message(m) => (encode(&m), false),
        Payload::Forged {
            spoof,
            session,
            from_other,
            kind,
            a,
            b,
            text,
        } => {
            let sessions: Vec<SessionId> = s
                .log
                .iter()
                .filter_map(|r| Message::session(&r.message))
                .collect();
            let session = if sessions.is_empty() {
                0
            } else {
                sessions[session.index(sessions.len())]
            };
            let from = if from_other { ids[1 - to] } else { ids[to] };
            (
                encode(&peer_message(kind, from, session, a, b, text)),
                spoof,
            )
        }
    }
}

/// Checks one peer's events: in each session with a peer (from one `Connected` with it to
/// the next; each `Connected` starts new windows), messages shown from it are numbered
/// 1, 2, 3, ... (none twice, none skipped, none out of order), ours are numbered 1, 2, 3,
/// ..., and each of ours is reported `Delivered` or `Undelivered` at most once, `Delivered`
/// in order.
fn check_sessions(events: &[Event]) -> Result<(), String> {
    #[derive(Default)]
    struct View {
        shown: u64,
        sent: u64,
        settled: BTreeSet<u64>,
        delivered: u64,
    }
    let mut views: BTreeMap<ClientId, View> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let fail = |what: &str| Err(format!("event {i} {e:?}: {what}"));
        match e {
            Event::Connected { peer, .. } => {
                views.insert(*peer, View::default());
            }
            Event::Message { from, seq, .. } => {
                let Some(v) = views.get_mut(from) else {
                    return fail("a message without a session");
                };
                if *seq != v.shown + 1 {
                    return fail(&format!("expected message {}", v.shown + 1));
                }
                v.shown = *seq;
            }
            Event::Sent { peer, seq, .. } => {
                let Some(v) = views.get_mut(peer) else {
                    return fail("sent without a session");
                };
                if *seq != v.sent + 1 {
                    return fail(&format!("expected number {}", v.sent + 1));
                }
                v.sent = *seq;
            }
            Event::Delivered { peer, seq } | Event::Undelivered { peer, seq } => {
                let Some(v) = views.get_mut(peer) else {
                    return fail("without a session");
                };
                if *seq == 0 || *seq > v.sent {
                    return fail("for a message never sent");
                }
                if !v.settled.insert(*seq) {
                    return fail("reported twice");
                }
                if matches!(e, Event::Delivered { .. }) {
                    if *seq <= v.delivered {
                        return fail("delivered out of order");
                    }
                    v.delivered = *seq;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn connected_peers_under_hostile_input_never_show_a_message_twice_or_out_of_order(
        seed in any::<u64>(),
        retry_ms in prop_oneof![Just(1_000u64), Just(10_000u64), 50u64..3_000],
        loss in 0.0f64..0.3,
        duplicate in 0.0f64..0.2,
        ops in vec(peer_op(), 10..60),
    ) {
        let config = PeerConfig::new(SERVER, Duration::from_millis(retry_ms));
        let (mut s, v) = connected_sim(seed, &config);
        let (a, b) = (v[0], v[1]);
        s.net = NetConfig::lossy(loss, duplicate);
        let ids = [s.id(a), s.id(b)];
        let stranger: SocketAddr = "10.9.9.9:6666".parse().unwrap();

        for op in ops {
            match op {
                PeerOp::Run(ms) => s.run_for(Duration::from_millis(ms)),
                PeerOp::Command { who, cmd } => {
                    let me = v[who];
                    let name = |w: Option<Who>| w.map(|w| match w {
                        Who::Other => ids[1 - who],
                        Who::Me => ids[who],
                        Who::Id(id) => id,
                    });
                    s.command(me, |p, now| match cmd {
                        Cmd::Connect(w) => {
                            let _ = p.connect(now, name(w).unwrap_or(ids[1 - who]));
                        }
                        Cmd::Accept(w) => {
                            let _ = p.accept(now, name(w));
                        }
                        Cmd::Reject(w) => {
                            let _ = p.reject(now, name(w));
                        }
                        Cmd::Send(w, text) => {
                            let _ = p.send(now, name(w), &text);
                        }
                        Cmd::Terminate(w) => {
                            let _ = p.terminate(now, name(w));
                        }
                        Cmd::Leave => p.leave(now),
                        Cmd::Finish => p.finish(now),
                    });
                }
                PeerOp::Inject { to, from, what } => {
                    let mut src = match from {
                        Source::Server => SERVER,
                        Source::Peer(k) => s.addr(v[k]),
                        Source::Stranger => stranger,
                        Source::Any(addr) => addr,
                    };
                    let (bytes, spoof) = payload_bytes(&s, ids, to, what);
                    if spoof {
                        src = s.addr(v[1 - to]);
                    }
                    if !s.peer(v[to]).is_finished() {
                        s.command(v[to], |p, now| p.handle_datagram(now, src, &bytes));
                    }
                }
            }
        }
        s.run_for(Duration::from_secs(120));
        for &i in &v {
            let events = s.events(i);
            if let Err(e) = check_sessions(&events) {
                return Err(TestCaseError::fail(format!("peer {i} (seed {seed}): {e}")));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_peer_never_answers_an_unproven_address_with_more_bytes_than_it_sent(
        seed in any::<u64>(),
        ops in vec((0usize..2, prop_oneof![
            3 => Just(None),
            1 => arb_addr().prop_map(Some),
        ], payload(), 0u64..2_000), 10..80),
    ) {
        let config = PeerConfig::new(SERVER, Duration::from_secs(1));
        let (mut s, v) = connected_sim(seed, &config);
        let (a, b) = (v[0], v[1]);
        let ids = [s.id(a), s.id(b)];
        // A few strangers, so that requests and their credit come into play.
        let strangers: Vec<SocketAddr> = (0..3)
            .map(|k| SocketAddr::from(([10, 9, 9, 9], 6666 + k)))
            .collect();
        // Bytes received from, and sent in answer to, each address while it was unproven.
        let mut received: BTreeMap<(usize, SocketAddr), usize> = BTreeMap::new();
        let mut answered: BTreeMap<(usize, SocketAddr), usize> = BTreeMap::new();
        for (k, (to, from, what, ms)) in ops.into_iter().enumerate() {
            let src = from.unwrap_or(strangers[k % strangers.len()]);
            if src == SERVER || src == s.addr(a) || src == s.addr(b) {
                continue;
            }
            // Spoofing a peer's address is the other property's business: its address has
            // proved it receives.
            let (bytes, _) = payload_bytes(&s, ids, to, what);
            let me = v[to];
            if s.peer(me).is_finished() {
                continue;
            }
            let proven_before = s.peer(me).proves_receipt(src);
            let mark = s.log.len();
            s.command(me, |p, now| p.handle_datagram(now, src, &bytes));
            let proven_after = s.peer(me).proves_receipt(src);
            if !proven_before && !proven_after {
                let here = s.addr(me);
                let back: usize = s.log[mark..]
                    .iter()
                    .filter(|r| r.from == here && r.to == src)
                    .map(|r| encode(&r.message).len())
                    .sum();
                let got = received.entry((to, src)).or_default();
                *got += bytes.len();
                let sent = answered.entry((to, src)).or_default();
                *sent += back;
                prop_assert!(
                    *sent <= *got,
                    "peer {} answered {} {} bytes in all for {} received (seed {})",
                    to, src, *sent, *got, seed
                );
            }
            s.run_for(Duration::from_millis(ms));
        }
    }
}
