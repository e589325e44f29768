//! A sequence of datagrams (raw bytes, well-formed messages, several messages packed in one
//! datagram, or a `Leave`/`Keepalive` carrying the token of an entry that exists) from a
//! handful of addresses, and timer expiries, fed to a `Registry`.
//!
//! Two registries with the same seed and limits run side by side: `reg` gets every datagram
//! whole (`handle_datagram`), `model` gets the messages of a decodable datagram one by one
//! (`handle_message`), so that each message's effect can be checked on its own. The server
//! handles at most `MAX_MESSAGES_PER_DATAGRAM` (8) messages of a datagram and drops the
//! rest, so the model takes only the first 8 (the fuzzer packs up to 16). After every
//! message or timer expiry the outputs are drained and checked:
//!
//! - nothing panics;
//! - answers to a datagram go only to its sender; a timer expiry sends nothing;
//! - the table never holds more than `max_clients` entries, nor two entries at one address,
//!   nor (when registrations are rate-limited) more than `max_per_prefix` entries of one
//!   network (the addresses include an IPv4-mapped IPv6 one of the same /24 as three
//!   others);
//! - an entry is added only by a `Register` from its address, and removed by a message only
//!   when that message is a `Leave` from the entry's address with its id and token (and such
//!   a `Leave` always removes it); otherwise entries keep their address, token and join time;
//! - an expiry removes only entries not heard from for the time to live;
//! - every `Joined`/`Left`/`Expired` event matches a change of the table;
//! - after `handle_timeout(now)`, `poll_timeout()` is never at or before `now`;
//! - a packed datagram does exactly what its messages do one by one (same table, answers
//!   and events in both registries).
#![no_main]

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pchat::registry::MAX_MESSAGES_PER_DATAGRAM;
use p2pchat::registry::{Limits, Prefix, Registry, RegistryConfig, TableEvent};
use p2pchat::wire::Transmit;
use p2pchat::wire::{self, ClientId, Message, Token};
use p2pchat_fuzz::{Advance, FuzzMessage, Id, Num};

const ADDRS: [&str; 7] = [
    "10.0.0.2:4000",
    "10.0.0.3:4000",
    "10.0.0.2:4001",
    "[2001:db8::1]:4000",
    "10.0.0.4:65535",
    "0.0.0.0:0",
    "[::ffff:10.0.0.3]:4000",
];

#[derive(Arbitrary, Debug)]
struct Input {
    ttl_secs: u8,
    max_clients: u8,
    /// Registrations a second per source IP (0: no limit) and burst, both small.
    register_rate: u8,
    register_burst: u8,
    /// Clients per network (small), and `List` pages a second and at once.
    max_per_prefix: u8,
    list_rate: u8,
    list_burst: u8,
    seed: u64,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
struct Step {
    advance: Advance,
    from: u8,
    what: What,
}

#[derive(Arbitrary, Debug)]
enum What {
    Datagram(Vec<Part>),
    Raw(Vec<u8>),
    Timeout,
}

/// One message of a datagram.
#[derive(Arbitrary, Debug)]
enum Part {
    Message(FuzzMessage),
    /// A `Leave` or `Keepalive` with the id and token of the `entry`-th entry of the table,
    /// perturbed by `id_delta`/`token_xor`; when `own`, the whole datagram is sent from
    /// that entry's address.
    Known {
        entry: u8,
        leave: bool,
        own: bool,
        id_delta: Id,
        token_xor: Num,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    addr: SocketAddr,
    token: Token,
    joined: Instant,
    last_seen: Instant,
}

fn table(r: &Registry) -> BTreeMap<ClientId, Row> {
    r.entries()
        .map(|e| {
            (
                e.id,
                Row {
                    addr: e.addr,
                    token: e.token,
                    joined: e.joined,
                    last_seen: e.last_seen,
                },
            )
        })
        .collect()
}

fn drain(r: &mut Registry) -> (Vec<Transmit>, Vec<TableEvent>) {
    (
        std::iter::from_fn(|| r.poll_transmit()).collect(),
        std::iter::from_fn(|| r.poll_event()).collect(),
    )
}

/// Checks what hold after any input: at most `max` entries, at most `per_prefix` of one
/// network (if given), never two at one address.
fn check_table(after: &BTreeMap<ClientId, Row>, max: usize, per_prefix: Option<usize>) {
    assert!(after.len() <= max, "{} entries, max {max}", after.len());
    let mut seen = HashSet::new();
    let mut networks: BTreeMap<String, usize> = BTreeMap::new();
    for row in after.values() {
        assert!(seen.insert(row.addr), "two entries at {}", row.addr);
        *networks
            .entry(Prefix::of(row.addr.ip()).to_string())
            .or_default() += 1;
    }
    if let Some(cap) = per_prefix {
        assert!(
            networks.values().all(|&n| n <= cap),
            "{networks:?}, at most {cap} each"
        );
    }
}

fn diff(
    before: &BTreeMap<ClientId, Row>,
    after: &BTreeMap<ClientId, Row>,
) -> (Vec<ClientId>, Vec<ClientId>) {
    let removed = before
        .keys()
        .filter(|id| !after.contains_key(id))
        .copied()
        .collect();
    let added = after
        .keys()
        .filter(|id| !before.contains_key(id))
        .copied()
        .collect();
    (removed, added)
}

/// Checks the effect of one message `msg` from `from` at `now` on the model registry.
fn check_message(
    now: Instant,
    from: SocketAddr,
    msg: &Message,
    before: &BTreeMap<ClientId, Row>,
    after: &BTreeMap<ClientId, Row>,
    transmits: &[Transmit],
    events: &[TableEvent],
) {
    for t in transmits {
        assert_eq!(t.to, from, "an answer to {from} went to {}", t.to);
    }
    let (removed, added) = diff(before, after);
    for (id, a) in after {
        if let Some(b) = before.get(id) {
            assert_eq!(
                (a.addr, a.token, a.joined),
                (b.addr, b.token, b.joined),
                "client {id} changed"
            );
            if a.last_seen != b.last_seen {
                assert!(a.addr == from && a.last_seen == now);
            }
        }
    }
    // A Leave from the owner with its token removes exactly that entry; nothing else does.
    let honoured = match msg {
        Message::Leave { id, token, .. } => before
            .get(id)
            .is_some_and(|r| r.addr == from && r.token == *token)
            .then_some(*id),
        _ => None,
    };
    assert_eq!(
        removed,
        honoured.into_iter().collect::<Vec<_>>(),
        "{msg:?} from {from}"
    );
    if let Some(id) = honoured {
        assert_eq!(
            events,
            [TableEvent::Left {
                id,
                addr: from,
                name: None
            }]
        );
        assert!(transmits.contains(&Transmit {
            to: from,
            message: Message::LeaveAck { id, nonce: 0 }
        }));
    }
    if !added.is_empty() {
        assert!(
            matches!(msg, Message::Register { .. }),
            "{msg:?} added {added:?}"
        );
        assert_eq!(added.len(), 1);
        let row = &after[&added[0]];
        assert_eq!((row.addr, row.joined), (from, now));
        assert_eq!(
            events,
            [TableEvent::Joined {
                id: added[0],
                addr: from
            }]
        );
    }
    if removed.is_empty() && added.is_empty() {
        assert!(events.is_empty(), "{events:?} with no change");
    }
    // A Registered answer names the sender's entry as it is in the table.
    for t in transmits {
        if let Message::Registered { id, token, .. } = t.message {
            let row = after.get(&id).expect("Registered names an entry");
            assert_eq!((row.addr, row.token), (from, token));
        }
    }
}

fuzz_target!(|input: Input| {
    let addrs: Vec<SocketAddr> = ADDRS.iter().map(|a| a.parse().unwrap()).collect();
    let config = RegistryConfig {
        ttl: Duration::from_secs(u64::from(input.ttl_secs % 64)),
        max_clients: usize::from(input.max_clients % 5),
        register_rate: f64::from(input.register_rate % 4) / 2.0,
        register_burst: u32::from(input.register_burst % 4),
        list: true,
        turn: None,
    };
    let limits = Limits {
        max_per_prefix: Some(usize::from(input.max_per_prefix % 4) + 1),
        list_rate: f64::from(input.list_rate % 4),
        list_burst: u32::from(input.list_burst % 3) + 1,
    };
    let ttl = config.ttl;
    let max = config.max_clients;
    let per_prefix = (config.register_rate > 0.0).then(|| limits.per_prefix(max));
    let mut reg = Registry::with_seed(config.clone(), input.seed).with_limits(limits.clone());
    let mut model = Registry::with_seed(config, input.seed).with_limits(limits);
    let mut now = Instant::now();

    for step in input.steps.iter().take(256) {
        now += step.advance.duration();
        let mut from = addrs[usize::from(step.from) % addrs.len()];
        let datagram: Option<Vec<u8>> = match &step.what {
            What::Raw(bytes) => Some(bytes.clone()),
            What::Datagram(parts) => {
                let before = table(&model);
                let mut d = vec![wire::MAGIC, wire::VERSION];
                for part in parts.iter().take(16) {
                    let msg = match part {
                        Part::Message(m) => m.to_message(),
                        Part::Known {
                            entry,
                            leave,
                            own,
                            id_delta,
                            token_xor,
                        } => {
                            let (id, token) = if before.is_empty() {
                                (id_delta.0, token_xor.0)
                            } else {
                                let (&id, row) = before
                                    .iter()
                                    .nth(usize::from(*entry) % before.len())
                                    .unwrap();
                                if *own {
                                    from = row.addr;
                                }
                                (id.wrapping_add(id_delta.0), row.token ^ token_xor.0)
                            };
                            if *leave {
                                Message::leave(id, token)
                            } else {
                                Message::keepalive(id, token)
                            }
                        }
                    };
                    d.extend_from_slice(&wire::encode(&msg)[2..]);
                }
                Some(d)
            }
            What::Timeout => None,
        };

        let (transmits, events) = match &datagram {
            Some(bytes) => {
                let registered_before = table(&reg).values().any(|e| e.addr == from);
                reg.handle_datagram(now, from, bytes);
                let out = drain(&mut reg);
                let (mut all_t, mut all_e) = (Vec::new(), Vec::new());
                match wire::decode_all(bytes) {
                    Ok(messages) => {
                        // The model takes the messages one at a time, as many as the server
                        // handles of one datagram; each is checked.
                        for msg in messages.into_iter().take(MAX_MESSAGES_PER_DATAGRAM) {
                            let before = table(&model);
                            model.handle_message(now, from, msg.clone());
                            let after = table(&model);
                            check_table(&after, max, per_prefix);
                            let (t, e) = drain(&mut model);
                            check_message(now, from, &msg, &before, &after, &t, &e);
                            all_t.extend(t);
                            all_e.extend(e);
                        }
                    }
                    Err(_) => {
                        // Undecodable: nothing changes, at most a BadVersion answer.
                        let before = table(&model);
                        model.handle_datagram(now, from, bytes);
                        let (t, e) = drain(&mut model);
                        assert_eq!(
                            table(&model),
                            before,
                            "an undecodable datagram changed the table"
                        );
                        assert!(e.is_empty());
                        assert!(t.len() <= 1 && t.iter().all(|t| t.to == from));
                        all_t = t;
                    }
                }
                // Whole, the answers are those of the messages one by one, less the ones
                // that did not fit the datagram's size (the model's messages come without
                // their datagram, so nothing bounds its answers): the same in order, some
                // left out; and to an address with no registration (that has proved
                // nothing), no more bytes than the datagram had.
                let mut rest = all_t.iter();
                for t in &out.0 {
                    assert!(
                        rest.any(|m| m == t),
                        "answer {t:?} is not among those one by one: {all_t:?}"
                    );
                }
                if !registered_before {
                    let sent: usize = out.0.iter().map(|t| wire::encode(&t.message).len()).sum();
                    assert!(
                        sent <= bytes.len(),
                        "{sent} bytes of answers to {} bytes from an unregistered address",
                        bytes.len()
                    );
                }
                assert_eq!(out.1, all_e, "events differ, whole or one by one");
                out
            }
            None => {
                let before = table(&reg);
                reg.handle_timeout(now);
                model.handle_timeout(now);
                let (transmits, events) = drain(&mut reg);
                drain(&mut model);
                assert!(transmits.is_empty(), "a timer sent {transmits:?}");
                if let Some(t) = reg.poll_timeout() {
                    assert!(t > now, "poll_timeout {t:?} not after now {now:?}");
                }
                let after = table(&reg);
                let (removed, added) = diff(&before, &after);
                assert!(added.is_empty(), "a timer added {added:?}");
                for id in &removed {
                    let row = &before[id];
                    assert!(row.last_seen + ttl <= now, "client {id} expired early");
                    assert!(events.contains(&TableEvent::Expired {
                        id: *id,
                        addr: row.addr,
                        name: None
                    }));
                }
                assert_eq!(events.len(), removed.len(), "{events:?}");
                (transmits, events)
            }
        };
        let after = table(&reg);
        check_table(&after, max, per_prefix);
        assert_eq!(reg.len(), after.len());
        // The whole datagram did what its messages did one by one.
        assert_eq!(
            after,
            table(&model),
            "handle_datagram and handle_message disagree"
        );
        let _ = (transmits, events);
    }
});
