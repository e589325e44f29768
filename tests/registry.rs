//! The rendezvous server's rules, tested on the state machine alone.
//!
//! The clock is injected: every test starts from `t0 = Instant::now()` and moves time by
//! adding durations to it, so nothing here sleeps. Tokens come from `Registry::with_seed`, so
//! a failing run can be replayed exactly. Datagrams go in through `handle_datagram` as encoded
//! bytes, the same path the server takes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pchat::identity::Identity;
use p2pchat::registry::{Entry, Limits, Registry, RegistryConfig, Stats, TableEvent};
use p2pchat::wire::{self, encode, ClientId, ErrorCode, Message, Token};

const TTL: Duration = Duration::from_secs(30);
const SEED: u64 = 0x5eed;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A registry with the default 30 s time to live and room for `max_clients`.
fn registry(max_clients: usize) -> Registry {
    Registry::with_seed(
        RegistryConfig {
            ttl: TTL,
            max_clients,
            ..RegistryConfig::default()
        },
        SEED,
    )
}

/// Sends `msg` as a client does: a request padded to `wire::REQUEST_SIZE`, so that every
/// answer fits what the server may send an address that has not proved it receives.
fn send(r: &mut Registry, now: Instant, from: SocketAddr, msg: &Message) -> Vec<Message> {
    let mut msg = msg.clone();
    p2pchat::wire::pad_request(&mut msg);
    send_raw(r, now, from, &encode(&msg))
}

/// Feeds one datagram from `from` and returns the answers, checking that every answer goes
/// back to the sender (the server writes to no one else but to introduce two clients: the
/// `Introduce`s, to either, are left out here; tests/nat_sim.rs checks them).
fn send_raw(r: &mut Registry, now: Instant, from: SocketAddr, datagram: &[u8]) -> Vec<Message> {
    r.handle_datagram(now, from, datagram);
    let mut answers = Vec::new();
    while let Some(t) = r.poll_transmit() {
        if matches!(t.message, Message::Introduce { .. }) {
            continue;
        }
        assert_eq!(t.to, from, "answer {:?} sent to a third party", t.message);
        answers.push(t.message);
    }
    answers
}

fn events(r: &mut Registry) -> Vec<TableEvent> {
    std::iter::from_fn(|| r.poll_event()).collect()
}

/// The whole table, every field of every entry (last_seen included).
fn table(r: &Registry) -> Vec<Entry> {
    r.entries().collect()
}

fn ids(r: &Registry) -> Vec<ClientId> {
    r.entries().map(|e| e.id).collect()
}

/// Registers `from` (asking for `want_id`), expects `Registered`, drains the `Joined` event and
/// returns the id and token.
fn register(
    r: &mut Registry,
    now: Instant,
    from: SocketAddr,
    want_id: Option<ClientId>,
) -> (ClientId, Token) {
    register_with_key(r, now, from, want_id, [0; 32])
}

fn register_with_key(
    r: &mut Registry,
    now: Instant,
    from: SocketAddr,
    want_id: Option<ClientId>,
    key: p2pchat::wire::Key,
) -> (ClientId, Token) {
    let answers = send(r, now, from, &Message::register(want_id, key));
    let [Message::Registered {
        id,
        token,
        ttl_secs,
        ..
    }] = answers[..]
    else {
        panic!("Register from {from} was answered {answers:?}");
    };
    assert_eq!(ttl_secs, 30);
    assert_eq!(events(r), vec![TableEvent::Joined { id, addr: from }]);
    (id, token)
}

fn error_code(answers: &[Message]) -> ErrorCode {
    match answers {
        [Message::Error { code, .. }] => *code,
        other => panic!("expected one Error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- register

#[test]
fn register_assigns_the_lowest_free_id_starting_at_1() {
    let t0 = Instant::now();
    let mut r = registry(10);
    assert_eq!(register(&mut r, t0, addr(1001), None).0, 1);
    assert_eq!(register(&mut r, t0, addr(1002), None).0, 2);
    assert_eq!(register(&mut r, t0, addr(1003), None).0, 3);
    assert_eq!(ids(&r), [1, 2, 3]);
    for (e, port) in r.entries().zip([1001, 1002, 1003]) {
        assert_eq!(
            e.addr,
            addr(port),
            "client {} recorded at the wrong address",
            e.id
        );
        assert_eq!(e.joined, t0);
        assert_eq!(e.last_seen, t0);
    }
}

#[test]
fn register_gives_each_client_a_different_token() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (_, a) = register(&mut r, t0, addr(1001), None);
    let (_, b) = register(&mut r, t0, addr(1002), None);
    assert_ne!(a, b);
    assert_eq!(r.get(1).unwrap().token, a);
    assert_eq!(r.get(2).unwrap().token, b);
}

#[test]
fn freed_ids_are_reused_lowest_first() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let mut tokens = Vec::new();
    for port in 1001..=1004 {
        tokens.push(register(&mut r, t0, addr(port), None).1);
    }
    // Free 3, then 1 (the order of freeing must not matter).
    for (id, port, token) in [(3, 1003, tokens[2]), (1, 1001, tokens[0])] {
        let answers = send(&mut r, t0, addr(port), &Message::leave(id, token));
        assert_eq!(answers, [Message::LeaveAck { id, nonce: 0 }]);
    }
    assert_eq!(ids(&r), [2, 4]);
    events(&mut r);
    assert_eq!(register(&mut r, t0, addr(2001), None).0, 1);
    assert_eq!(register(&mut r, t0, addr(2002), None).0, 3);
    assert_eq!(register(&mut r, t0, addr(2003), None).0, 5);
}

#[test]
fn an_expired_id_is_reused() {
    let t0 = Instant::now();
    let mut r = registry(10);
    register(&mut r, t0, addr(1001), None);
    register(&mut r, t0 + secs(10), addr(1002), None);
    r.handle_timeout(t0 + secs(31)); // client 1 expires, client 2 does not
    assert_eq!(
        events(&mut r),
        [TableEvent::Expired {
            id: 1,
            addr: addr(1001),
            name: None
        }]
    );
    assert_eq!(register(&mut r, t0 + secs(31), addr(1003), None).0, 1);
}

#[test]
fn a_requested_free_id_is_granted() {
    let t0 = Instant::now();
    let mut r = registry(10);
    assert_eq!(register(&mut r, t0, addr(1001), Some(7)).0, 7);
    assert_eq!(r.get(7).unwrap().addr, addr(1001));
    // Ids below it are still handed out lowest first.
    assert_eq!(register(&mut r, t0, addr(1002), None).0, 1);
}

#[test]
fn automatic_ids_skip_an_id_that_was_requested() {
    let t0 = Instant::now();
    let mut r = registry(10);
    assert_eq!(register(&mut r, t0, addr(1001), Some(2)).0, 2);
    assert_eq!(register(&mut r, t0, addr(1002), None).0, 1);
    assert_eq!(register(&mut r, t0, addr(1003), None).0, 3);
    assert_eq!(ids(&r), [1, 2, 3]);
}

#[test]
fn a_requested_id_that_was_freed_is_granted() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (_, token) = register(&mut r, t0, addr(1001), None);
    register(&mut r, t0, addr(1002), None);
    send(&mut r, t0, addr(1001), &Message::leave(1, token));
    events(&mut r);
    assert_eq!(register(&mut r, t0, addr(1003), Some(1)).0, 1);
    // 1 is no longer free: the next automatic id is 3.
    assert_eq!(register(&mut r, t0, addr(1004), None).0, 3);
}

#[test]
fn a_requested_taken_id_gets_id_taken_and_changes_nothing() {
    let t0 = Instant::now();
    let mut r = registry(10);
    register(&mut r, t0, addr(1001), None);
    let before = table(&r);
    let answers = send(
        &mut r,
        t0 + secs(1),
        addr(1002),
        &Message::register(Some(1), [0; 32]),
    );
    assert_eq!(error_code(&answers), ErrorCode::IdTaken);
    assert_eq!(table(&r), before);
    assert_eq!(events(&mut r), []);
    // The refused address holds nothing: it can still register, and gets id 2.
    assert_eq!(register(&mut r, t0 + secs(1), addr(1002), None).0, 2);
}

#[test]
fn a_retransmitted_register_gets_the_same_id_and_token_and_no_second_entry() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, token) = register(&mut r, t0, addr(1001), None);
    for want_id in [None, Some(5), Some(id)] {
        let answers = send(
            &mut r,
            t0 + secs(2),
            addr(1001),
            &Message::register(want_id, [0; 32]),
        );
        assert_eq!(
            answers,
            [Message::Registered {
                key: *r.key(),
                id,
                token,
                ttl_secs: 30,
                nonce: 0,
                turn: None,
            }]
        );
    }
    assert_eq!(r.len(), 1);
    assert_eq!(events(&mut r), [], "a retransmission is not a second join");
    // The next client still gets 2: the retransmissions consumed no id.
    assert_eq!(register(&mut r, t0 + secs(2), addr(1002), None).0, 2);
}

#[test]
fn a_retransmitted_register_is_answered_even_when_the_server_is_full() {
    let t0 = Instant::now();
    let mut r = registry(1);
    let (id, token) = register(&mut r, t0, addr(1001), None);
    let answers = send(&mut r, t0, addr(1001), &Message::register(None, [0; 32]));
    assert_eq!(
        answers,
        [Message::Registered {
            key: *r.key(),
            id,
            token,
            ttl_secs: 30,
            nonce: 0,
            turn: None,
        }]
    );
}

#[test]
fn register_beyond_max_clients_gets_server_full_and_changes_nothing() {
    let t0 = Instant::now();
    let mut r = registry(2);
    register(&mut r, t0, addr(1001), None);
    let (_, token2) = register(&mut r, t0, addr(1002), None);
    let before = table(&r);
    for want_id in [None, Some(9)] {
        let answers = send(&mut r, t0, addr(1003), &Message::register(want_id, [0; 32]));
        assert_eq!(error_code(&answers), ErrorCode::ServerFull);
    }
    assert_eq!(table(&r), before);
    assert_eq!(events(&mut r), []);
    // Room again once someone leaves.
    send(&mut r, t0, addr(1002), &Message::leave(2, token2));
    events(&mut r);
    assert_eq!(register(&mut r, t0, addr(1003), None).0, 2);
}

// ---------------------------------------------------------------- lookup

#[test]
fn lookup_of_a_registered_id_finds_its_registered_address() {
    let t0 = Instant::now();
    let mut r = registry(10);
    register(&mut r, t0, addr(1001), None);
    register(&mut r, t0, addr(1002), None);
    // Anyone may ask, registered or not.
    for asker in [addr(1001), addr(9999)] {
        let answers = send(&mut r, t0, asker, &Message::lookup(2));
        assert_eq!(
            answers,
            [Message::Found {
                key: [0; 32],
                id: 2,
                addr: addr(1002),
                name: None,
                display_name: None,
                nonce: 0
            }]
        );
    }
}

#[test]
fn lookup_of_an_unknown_id_is_inactive() {
    let t0 = Instant::now();
    let mut r = registry(10);
    register(&mut r, t0, addr(1001), None);
    let before = table(&r);
    for id in [0, 2, 3, u32::MAX] {
        let answers = send(&mut r, t0, addr(9999), &Message::lookup(id));
        assert_eq!(answers, [Message::Inactive { id, nonce: 0 }]);
    }
    assert_eq!(table(&r), before);
}

#[test]
fn lookup_of_a_client_that_left_is_inactive() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, token) = register(&mut r, t0, addr(1001), None);
    send(&mut r, t0, addr(1001), &Message::leave(id, token));
    let answers = send(&mut r, t0, addr(9999), &Message::lookup(id));
    assert_eq!(answers, [Message::Inactive { id, nonce: 0 }]);
}

// ---------------------------------------------------------------- leave

#[test]
fn leave_with_the_right_token_from_the_registered_address_removes_acks_and_emits_left() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, token) = register(&mut r, t0, addr(1001), None);
    register(&mut r, t0, addr(1002), None);
    let answers = send(&mut r, t0 + secs(1), addr(1001), &Message::leave(id, token));
    assert_eq!(answers, [Message::LeaveAck { id, nonce: 0 }]);
    assert_eq!(ids(&r), [2]);
    assert!(r.get(id).is_none());
    assert_eq!(
        events(&mut r),
        [TableEvent::Left {
            id,
            addr: addr(1001),
            name: None,
        }]
    );
    assert_eq!(r.stats().refused, 0);
}

#[test]
fn a_repeated_leave_gets_leave_ack_again_without_a_second_event() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, token) = register(&mut r, t0, addr(1001), None);
    register(&mut r, t0, addr(1002), None);
    send(&mut r, t0, addr(1001), &Message::leave(id, token));
    assert_eq!(events(&mut r).len(), 1);
    let before = table(&r);
    for n in 1..=3 {
        let answers = send(&mut r, t0 + secs(n), addr(1001), &Message::leave(id, token));
        assert_eq!(answers, [Message::LeaveAck { id, nonce: 0 }], "repeat {n}");
    }
    assert_eq!(events(&mut r), []);
    assert_eq!(table(&r), before);
    assert_eq!(r.stats().refused, 0);
}

#[test]
fn a_repeated_leave_with_a_wrong_token_is_not_acknowledged() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, token) = register(&mut r, t0, addr(1001), None);
    send(&mut r, t0, addr(1001), &Message::leave(id, token));
    events(&mut r);
    let answers = send(
        &mut r,
        t0 + secs(1),
        addr(1001),
        &Message::leave(id, !token),
    );
    assert_eq!(error_code(&answers), ErrorCode::NotRegistered);
    assert_eq!(r.stats().refused, 1);
}

#[test]
fn a_repeated_leave_after_the_id_was_reused_deletes_nothing() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, token) = register(&mut r, t0, addr(1001), None);
    send(&mut r, t0, addr(1001), &Message::leave(id, token));
    events(&mut r);
    // Another client now holds id 1.
    assert_eq!(register(&mut r, t0, addr(1002), None).0, id);
    let before = table(&r);
    let answers = send(&mut r, t0 + secs(1), addr(1001), &Message::leave(id, token));
    assert_eq!(answers, [Message::LeaveAck { id, nonce: 0 }]);
    assert_eq!(table(&r), before);
    assert_eq!(events(&mut r), []);
}

#[test]
fn leave_with_a_wrong_token_deletes_nothing() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, token) = register(&mut r, t0, addr(1001), None);
    let before = table(&r);
    let answers = send(
        &mut r,
        t0,
        addr(1001),
        &Message::leave(id, token.wrapping_add(1)),
    );
    assert_eq!(error_code(&answers), ErrorCode::NotRegistered);
    assert_eq!(table(&r), before);
    assert_eq!(events(&mut r), []);
    assert_eq!(r.stats().refused, 1);
}

#[test]
fn leave_from_another_address_deletes_nothing() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, token) = register(&mut r, t0, addr(1001), None);
    let before = table(&r);
    // Even with the right id and token: the address is part of the proof.
    let answers = send(&mut r, t0, addr(6666), &Message::leave(id, token));
    assert_eq!(error_code(&answers), ErrorCode::NotRegistered);
    assert_eq!(table(&r), before);
    assert_eq!(events(&mut r), []);
    assert_eq!(r.stats().refused, 1);
}

#[test]
fn leave_for_another_clients_id_from_a_registered_address_deletes_nothing() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (_, token1) = register(&mut r, t0, addr(1001), None);
    register(&mut r, t0, addr(1002), None);
    let before = table(&r);
    // Client 1 tries to remove client 2 with its own token.
    let answers = send(&mut r, t0, addr(1001), &Message::leave(2, token1));
    assert_eq!(error_code(&answers), ErrorCode::NotRegistered);
    assert_eq!(table(&r), before);
    assert_eq!(events(&mut r), []);
}

#[test]
fn leave_for_an_unknown_id_is_not_registered() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let answers = send(&mut r, t0, addr(1001), &Message::leave(4, 1));
    assert_eq!(error_code(&answers), ErrorCode::NotRegistered);
    assert!(r.is_empty());
    assert_eq!(events(&mut r), []);
}

// ---------------------------------------------------------------- expiry

#[test]
fn an_entry_not_heard_from_expires_after_ttl() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, _) = register(&mut r, t0, addr(1001), None);
    r.handle_timeout(t0 + TTL - secs(1));
    assert_eq!(ids(&r), [id], "removed before its time to live ran out");
    assert_eq!(events(&mut r), []);
    r.handle_timeout(t0 + TTL + secs(1));
    assert!(r.is_empty(), "still there after its time to live");
    assert_eq!(
        events(&mut r),
        [TableEvent::Expired {
            id,
            addr: addr(1001),
            name: None,
        }]
    );
    let answers = send(&mut r, t0 + TTL + secs(1), addr(9999), &Message::lookup(id));
    assert_eq!(answers, [Message::Inactive { id, nonce: 0 }]);
}

#[test]
fn expiry_removes_only_the_entries_whose_time_has_come() {
    let t0 = Instant::now();
    let mut r = registry(10);
    register(&mut r, t0, addr(1001), None);
    register(&mut r, t0 + secs(20), addr(1002), None);
    r.handle_timeout(t0 + secs(31));
    assert_eq!(ids(&r), [2]);
    assert_eq!(
        events(&mut r),
        [TableEvent::Expired {
            id: 1,
            addr: addr(1001),
            name: None
        }]
    );
    r.handle_timeout(t0 + secs(51));
    assert!(r.is_empty());
}

#[test]
fn a_keepalive_refreshes_the_entry() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, token) = register(&mut r, t0, addr(1001), None);
    let answers = send(
        &mut r,
        t0 + secs(20),
        addr(1001),
        &Message::keepalive(id, token),
    );
    assert_eq!(answers, [], "a matching Keepalive is not answered");
    assert_eq!(r.get(id).unwrap().last_seen, t0 + secs(20));
    r.handle_timeout(t0 + secs(31));
    assert_eq!(ids(&r), [id], "expired although refreshed at t0+20s");
    assert_eq!(events(&mut r), []);
    r.handle_timeout(t0 + secs(51));
    assert!(r.is_empty());
    assert_eq!(events(&mut r).len(), 1);
}

#[test]
fn a_lookup_from_the_client_refreshes_the_entry() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, _) = register(&mut r, t0, addr(1001), None);
    send(&mut r, t0 + secs(25), addr(1001), &Message::lookup(42));
    r.handle_timeout(t0 + secs(31));
    assert_eq!(ids(&r), [id], "expired although it sent a Lookup at t0+25s");
    r.handle_timeout(t0 + secs(56));
    assert!(r.is_empty());
}

#[test]
fn a_retransmitted_register_refreshes_the_entry() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, _) = register(&mut r, t0, addr(1001), None);
    send(
        &mut r,
        t0 + secs(25),
        addr(1001),
        &Message::register(None, [0; 32]),
    );
    r.handle_timeout(t0 + secs(31));
    assert_eq!(ids(&r), [id]);
}

#[test]
fn a_lookup_from_a_stranger_does_not_refresh_the_entry() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, _) = register(&mut r, t0, addr(1001), None);
    send(&mut r, t0 + secs(25), addr(9999), &Message::lookup(id));
    assert_eq!(r.get(id).unwrap().last_seen, t0);
    r.handle_timeout(t0 + secs(31));
    assert!(r.is_empty());
}

#[test]
fn poll_timeout_reports_a_deadline_no_later_than_the_expiry() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, token) = register(&mut r, t0, addr(1001), None);
    assert!(
        r.poll_timeout()
            .expect("a registered client needs a wake-up")
            <= t0 + TTL
    );
    send(
        &mut r,
        t0 + secs(10),
        addr(1001),
        &Message::keepalive(id, token),
    );
    // A driver that sleeps until each deadline it is given, and only then calls
    // handle_timeout, must see the client expire at t0+40s: not before, not after.
    let expiry = t0 + secs(10) + TTL;
    let mut wakeups = 0;
    loop {
        let deadline = r
            .poll_timeout()
            .expect("client still registered, no wake-up asked");
        assert!(deadline <= expiry, "wake-up asked after the expiry");
        r.handle_timeout(deadline);
        wakeups += 1;
        assert!(wakeups < 10, "deadlines do not converge on the expiry");
        if r.is_empty() {
            assert_eq!(deadline, expiry, "expired at the wrong time");
            break;
        }
    }
    assert_eq!(
        events(&mut r),
        [TableEvent::Expired {
            id,
            addr: addr(1001),
            name: None,
        }]
    );
}

#[test]
fn an_empty_registry_asks_for_no_wakeup() {
    let r = registry(10);
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn a_remembered_departure_is_forgotten_after_ttl() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, token) = register(&mut r, t0, addr(1001), None);
    send(&mut r, t0, addr(1001), &Message::leave(id, token));
    let deadline = r.poll_timeout().expect("the departure needs forgetting");
    assert!(deadline <= t0 + TTL);
    r.handle_timeout(t0 + TTL + secs(1));
    assert_eq!(r.poll_timeout(), None);
    let answers = send(
        &mut r,
        t0 + TTL + secs(1),
        addr(1001),
        &Message::leave(id, token),
    );
    assert_eq!(error_code(&answers), ErrorCode::NotRegistered);
}

// ---------------------------------------------------------------- keepalive

#[test]
fn a_keepalive_from_an_unknown_address_gets_not_registered() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, token) = register(&mut r, t0, addr(1001), None);
    let before = table(&r);
    // Unknown id, and the right id and token from the wrong address.
    for (id, token) in [(7, 1), (id, token)] {
        let answers = send(
            &mut r,
            t0 + secs(5),
            addr(2002),
            &Message::keepalive(id, token),
        );
        assert_eq!(error_code(&answers), ErrorCode::NotRegistered);
    }
    assert_eq!(table(&r), before);
    assert_eq!(r.stats().refused, 2);
}

#[test]
fn a_keepalive_with_a_wrong_token_gets_not_registered() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (id, token) = register(&mut r, t0, addr(1001), None);
    let answers = send(&mut r, t0, addr(1001), &Message::keepalive(id, token ^ 1));
    assert_eq!(error_code(&answers), ErrorCode::NotRegistered);
    assert_eq!(ids(&r), [id]);
}

// ---------------------------------------------------------------- hostile input

/// Two registered clients, the events drained.
fn two_clients(t0: Instant) -> Registry {
    let mut r = registry(10);
    register(&mut r, t0, addr(1001), None);
    register(&mut r, t0, addr(1002), None);
    r
}

fn header_then(body: &[u8]) -> Vec<u8> {
    let mut d = vec![wire::MAGIC, wire::VERSION];
    d.extend_from_slice(body);
    d
}

#[test]
fn garbage_is_counted_and_changes_nothing() {
    let t0 = Instant::now();
    let mut r = two_clients(t0);
    let before = table(&r);
    let base = r.stats().clone();
    let datagrams: Vec<Vec<u8>> = vec![
        vec![],
        vec![wire::MAGIC],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0; 100],
        vec![0xff; 65_000],
        header_then(&[0x90; wire::MAX_DATAGRAM]), // one byte over the limit
    ];
    let n = datagrams.len() as u64;
    for d in &datagrams {
        for from in [addr(9999), addr(1001)] {
            let answers = send_raw(&mut r, t0, from, d);
            assert_eq!(answers, [], "garbage of {} bytes was answered", d.len());
        }
    }
    assert_eq!(
        *r.stats(),
        Stats {
            datagrams: base.datagrams + 2 * n,
            garbage: base.garbage + 2 * n,
            ..base
        }
    );
    assert_eq!(table(&r), before);
    assert_eq!(events(&mut r), []);
}

#[test]
fn malformed_bodies_are_counted_and_change_nothing() {
    let t0 = Instant::now();
    let mut r = two_clients(t0);
    let before = table(&r);
    let base = r.stats().clone();
    let mut trailing = encode(&Message::register(None, [0; 32]));
    trailing.push(0);
    let mut truncated = encode(&Message::leave(1, 5));
    truncated.pop();
    let datagrams: Vec<Vec<u8>> = vec![
        header_then(&[]),
        header_then(&[0xc1]), // never-used MessagePack byte
        header_then(b"\x81\xa5Shout\x81\xa2id\x03"), // {"Shout": {"id": 3}}
        header_then(b"\x81\xa6Lookup\x81\xa2id\xa1x"), // {"Lookup": {"id": "x"}}
        trailing,
        truncated,
    ];
    for d in &datagrams {
        assert_eq!(send_raw(&mut r, t0, addr(9999), d), []);
    }
    let n = datagrams.len() as u64;
    assert_eq!(
        *r.stats(),
        Stats {
            datagrams: base.datagrams + n,
            malformed: base.malformed + n,
            ..base
        }
    );
    assert_eq!(table(&r), before);
    assert_eq!(events(&mut r), []);
}

#[test]
fn a_wrong_version_gets_bad_version_is_counted_and_changes_nothing() {
    let t0 = Instant::now();
    let mut r = two_clients(t0);
    let before = table(&r);
    let base = r.stats().clone();
    for version in [0, 1, 0xff] {
        // Even a well-formed Register: the body of another version is never guessed at. A
        // client pads its requests, so the error fits.
        let mut register = Message::register(None, [0; 32]);
        p2pchat::wire::pad_request(&mut register);
        let mut d = encode(&register);
        d[1] = version;
        let answers = send_raw(&mut r, t0, addr(9999), &d);
        assert_eq!(error_code(&answers), ErrorCode::BadVersion);
        let Message::Error { detail, .. } = &answers[0] else {
            unreachable!()
        };
        assert!(detail.contains(&version.to_string()), "{detail:?}");
    }
    // A probe smaller than the error gets nothing: no answer is larger than its question.
    assert_eq!(send_raw(&mut r, t0, addr(9999), b"P\x01"), []);
    assert_eq!(
        *r.stats(),
        Stats {
            datagrams: base.datagrams + 4,
            bad_version: base.bad_version + 4,
            unsent_larger: base.unsent_larger + 1,
            ..base
        }
    );
    assert_eq!(table(&r), before);
    assert_eq!(events(&mut r), []);
}

fn unexpected_messages() -> Vec<Message> {
    vec![
        Message::Registered {
            key: [0; 32],
            id: 1,
            token: 1,
            ttl_secs: 1,
            nonce: 0,
            turn: None,
        },
        Message::Found {
            key: [0; 32],
            id: 1,
            addr: addr(1),
            name: None,
            display_name: None,
            nonce: 0,
        },
        Message::Inactive { id: 1, nonce: 0 },
        Message::LeaveAck { id: 1, nonce: 0 },
        Message::Error {
            code: ErrorCode::IdTaken,
            detail: "x".into(),
            nonce: 0,
        },
        Message::ConnectRequest {
            hs: Vec::new(),
            from: 1,
            session: 1,
        },
        Message::Accept {
            hs: Vec::new(),
            from: 1,
            session: 1,
        },
        Message::Reject {
            hs: Vec::new(),
            from: 1,
            session: 1,
        },
        Message::Chat {
            from: 1,
            session: 1,
            seq: 1,
            text: "hi".into(),
        },
        Message::Ack {
            from: 1,
            session: 1,
            seq: 1,
            cumulative: 1,
        },
        Message::Terminate {
            from: 1,
            session: 1,
        },
        Message::TerminateAck {
            from: 1,
            session: 1,
        },
        Message::Ping {
            from: 1,
            session: 1,
        },
        Message::Pong {
            from: 1,
            session: 1,
        },
    ]
}

#[test]
fn unexpected_peer_and_server_messages_are_counted_and_change_nothing() {
    let t0 = Instant::now();
    let mut r = two_clients(t0);
    let before = table(&r);
    let base = r.stats().clone();
    let msgs = unexpected_messages();
    for msg in &msgs {
        assert_eq!(send(&mut r, t0 + secs(1), addr(9999), msg), [], "{msg:?}");
    }
    let n = msgs.len() as u64;
    assert_eq!(
        *r.stats(),
        Stats {
            datagrams: base.datagrams + n,
            unexpected: base.unexpected + n,
            ..base
        }
    );
    assert_eq!(table(&r), before);
    assert_eq!(events(&mut r), []);
}

#[test]
fn random_garbage_never_panics_and_never_changes_the_table() {
    use rand::{Rng, SeedableRng};
    let seed = rand::random::<u64>();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let t0 = Instant::now();
    let mut r = two_clients(t0);
    let (_, token3) = register(&mut r, t0, addr(1003), Some(3));
    let before = table(&r);
    let base = r.stats().datagrams;

    let mut templates: Vec<Vec<u8>> = unexpected_messages().iter().map(encode).collect();
    templates.extend(
        [
            Message::register(None, [0; 32]),
            Message::register(Some(2), [0; 32]),
            Message::lookup(1),
            Message::leave(3, token3),
            Message::keepalive(3, token3),
        ]
        .iter()
        .map(encode),
    );

    let mut fed = 0u64;
    for i in 0..20_000u32 {
        let datagram: Vec<u8> = match rng.random_range(0..4) {
            // A valid datagram with a few bytes changed: reaches deep into the decoder.
            0 | 1 => {
                let mut d = templates[rng.random_range(0..templates.len())].clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..d.len());
                    d[at] = rng.random();
                }
                d
            }
            // The right header and random bytes after it.
            2 => {
                let mut d = vec![0u8; rng.random_range(2..64)];
                rng.fill(&mut d[..]);
                d[0] = wire::MAGIC;
                d[1] = wire::VERSION;
                d
            }
            // Anything at all, up to beyond the size limit.
            _ => {
                let len = if rng.random_bool(0.01) {
                    rng.random_range(wire::MAX_DATAGRAM..65_508)
                } else {
                    rng.random_range(0..200)
                };
                let mut d = vec![0u8; len];
                rng.fill(&mut d[..]);
                d
            }
        };
        // A mutation may still be a valid Register, which would rightly add a client: leave
        // those out. Every other message from a stranger must change nothing.
        if matches!(wire::decode(&datagram), Ok(Message::Register { .. })) {
            continue;
        }
        let from = addr(rng.random_range(20_000..60_000));
        let now = t0 + Duration::from_millis(u64::from(i)); // stays well inside the ttl
        r.handle_datagram(now, from, &datagram);
        fed += 1;
        while let Some(t) = r.poll_transmit() {
            assert_eq!(t.to, from, "seed {seed}: answered a third party");
        }
        assert_eq!(
            table(&r),
            before,
            "seed {seed}: datagram {datagram:02x?} changed the table"
        );
    }
    assert_eq!(events(&mut r), [], "seed {seed}");
    assert_eq!(r.stats().datagrams, base + fed);
}

// ---------------------------------------------------------------------- registration rate

fn rate_limited_registry(rate: f64, burst: u32) -> Registry {
    limited_registry(RegistryConfig::default().max_clients, rate, burst)
}

fn limited_registry(max_clients: usize, rate: f64, burst: u32) -> Registry {
    Registry::with_seed(
        RegistryConfig {
            max_clients,
            register_rate: rate,
            register_burst: burst,
            ..RegistryConfig::default()
        },
        SEED,
    )
}

fn addr_on(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn register_msg() -> Message {
    Message::register(None, [0; 32])
}

#[test]
fn registrations_beyond_the_burst_from_one_prefix_are_rate_limited() {
    let t0 = Instant::now();
    let mut r = rate_limited_registry(1.0, 3);
    for port in 1..=3 {
        register(&mut r, t0, addr(port), None);
    }
    // The rest of the second: refused, whatever the address of 127.0.0.0/24.
    let mut told = 0;
    for port in 4..=40 {
        let from = if port % 2 == 0 {
            addr(port)
        } else {
            addr_on([127, 0, 0, 2], port)
        };
        let answers = send(&mut r, t0, from, &register_msg());
        if !answers.is_empty() {
            let [Message::Error { code, detail, .. }] = &answers[..] else {
                panic!("{answers:?}")
            };
            assert_eq!(*code, ErrorCode::RateLimited);
            assert!(detail.contains("127.0.0.0/24"), "{detail}");
            told += 1;
        }
    }
    // Told a few times a second, not once per datagram (no reflected flood).
    assert_eq!(told, p2pchat::registry::limits::NOTICE_RATE as usize);
    assert_eq!(ids(&r), vec![1, 2, 3]);
    assert!(events(&mut r).is_empty());
    assert_eq!(r.stats().rate_limited, 37);
    // Another prefix is not affected.
    register(&mut r, t0, addr_on([127, 0, 1, 2], 1), None);
    // A second later the prefix has earned one more registration, and only one.
    let later = t0 + secs(1);
    register(&mut r, later, addr(100), None);
    let answers = send(&mut r, later, addr(101), &register_msg());
    assert_eq!(error_code(&answers), ErrorCode::RateLimited);
    assert_eq!(ids(&r), vec![1, 2, 3, 4, 5]);
}

/// One source floods registrations from fresh ports, 100 a second, and keeps the bucket of
/// its prefix empty; a client on the same IP retries once a second, as a client does. The
/// client is told `RateLimited` and registered at its third try, while the flood goes on;
/// the flood's fresh addresses get a few answers a second between them.
#[test]
fn a_client_retrying_from_an_ip_that_floods_is_registered_within_seconds() {
    let t0 = Instant::now();
    let mut r = rate_limited_registry(20.0, 200);
    let ms = |n: u64| Duration::from_millis(n);
    let flood_ip = [10, 9, 9, 9];
    let client = addr_on(flood_ip, 40_000);
    let mut flood_answers: std::collections::BTreeMap<u64, usize> = Default::default();
    let mut tries = Vec::new();
    let mut registered_at = None;
    // 10 s of flood, the client starting after 5 s, each try just after a flood datagram
    // (which took any token there was).
    for (tick, port) in (0..1000u64).zip(1024u16..) {
        let now = t0 + ms(10 * tick);
        let answers = send(&mut r, now, addr_on(flood_ip, port), &register_msg());
        let refused = answers
            .iter()
            .filter(|m| matches!(m, Message::Error { .. }))
            .count();
        *flood_answers.entry(tick / 100).or_default() += refused;
        if tick >= 500 && tick % 100 == 0 && registered_at.is_none() {
            let answers = send(&mut r, now, client, &register_msg());
            match &answers[..] {
                [Message::Registered { .. }] => registered_at = Some(tick / 100 - 5),
                [Message::Error { code, .. }] => tries.push(Some(*code)),
                [] => tries.push(None),
                other => panic!("{other:?}"),
            }
        }
        events(&mut r);
    }
    let waited = registered_at.expect("the retrying client was never registered");
    println!("the client's answers: {tries:?}; registered {waited} s after its first try");
    assert!(waited <= 3, "registered after {waited} s");
    assert!(
        tries.contains(&Some(ErrorCode::RateLimited)),
        "never told why: {tries:?}"
    );
    // The flood still gets the rate after its burst (200 + 20 a second, less the client's
    // one), and its refusals are answered a few times a second.
    let flood_registered = r.len() - 1;
    assert!(
        (200 + 20 * 9..=200 + 20 * 10).contains(&flood_registered),
        "{flood_registered} flood registrations"
    );
    // A bucket of 4 a second: at most 4 + 4 t in t seconds.
    let total: usize = flood_answers.values().sum();
    assert!(total <= 4 + 4 * 8, "{flood_answers:?}");
    assert!(flood_answers.values().all(|&n| n <= 8), "{flood_answers:?}");
}

/// Eleven addresses of one /24, each registering from hundreds of ports (fast enough that
/// the rate is not what stops them), fill their prefix's share of the table and no more:
/// the rest of `--max-clients` stays for everyone else.
#[test]
fn eleven_addresses_of_one_slash_24_cannot_fill_max_clients() {
    let t0 = Instant::now();
    let mut r = limited_registry(2000, 1000.0, 1000);
    let cap = r.limits().per_prefix(2000);
    assert_eq!(cap, 250);
    let mut now = t0;
    let mut full = 0;
    let mut mine = Vec::new();
    for port in 1..=200u16 {
        now += Duration::from_millis(10);
        for host in 1..=11u8 {
            let from = addr_on([10, 1, 2, host], port);
            match &send(&mut r, now, from, &register_msg())[..] {
                [Message::Registered { id, token, .. }] => mine.push((from, *id, *token)),
                [Message::Error { code, detail, .. }] => {
                    assert_eq!(*code, ErrorCode::ServerFull);
                    assert!(detail.contains("10.1.2.0/24"), "{detail}");
                    full += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        events(&mut r);
    }
    assert_eq!(r.len(), cap);
    assert_eq!(full, 11 * 200 - cap);
    assert_eq!(r.stats().prefix_full, full as u64);
    // Keepalives keep them, but another network still registers.
    for &(from, id, token) in &mine {
        send(&mut r, now, from, &Message::keepalive(id, token));
    }
    register(&mut r, now, addr_on([10, 1, 3, 1], 1), None);
    // One of them leaves: its prefix may have one more.
    let (from, id, token) = mine[0];
    send(&mut r, now, from, &Message::leave(id, token));
    events(&mut r);
    register(&mut r, now, addr_on([10, 1, 2, 99], 1), None);
    let answers = send(&mut r, now, addr_on([10, 1, 2, 99], 2), &register_msg());
    assert_eq!(error_code(&answers), ErrorCode::ServerFull);
}

/// The cap per prefix counts an IPv4-mapped IPv6 address as the IPv4 address it maps, and
/// IPv6 addresses by their /56.
#[test]
fn the_cap_per_prefix_counts_mapped_addresses_as_ipv4_and_ipv6_by_slash_56() {
    let t0 = Instant::now();
    let mut r = rate_limited_registry(100.0, 100).with_limits(Limits {
        max_per_prefix: Some(2),
        ..Limits::default()
    });
    let v6 = |s: &str| s.parse::<SocketAddr>().unwrap();
    register(&mut r, t0, addr_on([10, 1, 2, 3], 1), None);
    register(&mut r, t0, v6("[::ffff:10.1.2.4]:1"), None);
    let answers = send(&mut r, t0, addr_on([10, 1, 2, 5], 1), &register_msg());
    assert_eq!(error_code(&answers), ErrorCode::ServerFull);
    let answers = send(&mut r, t0, v6("[::ffff:10.1.2.6]:1"), &register_msg());
    assert_eq!(error_code(&answers), ErrorCode::ServerFull);
    register(&mut r, t0, v6("[2001:db8:0:1ff::1]:1"), None);
    register(&mut r, t0, v6("[2001:db8:0:100::2]:1"), None);
    let answers = send(&mut r, t0, v6("[2001:db8:0:1ab::3]:1"), &register_msg());
    assert_eq!(error_code(&answers), ErrorCode::ServerFull);
    register(&mut r, t0, v6("[2001:db8:0:200::1]:1"), None);
    assert_eq!(r.stats().prefix_full, 3);
}

/// A client that retries far faster than a client should is still told `RateLimited` at
/// most once a second.
#[test]
fn a_refused_address_is_told_at_most_once_a_second() {
    let t0 = Instant::now();
    let mut r = rate_limited_registry(0.1, 1);
    register(&mut r, t0, addr(1), None);
    let mut told = Vec::new();
    for tick in 0..50u64 {
        let now = t0 + Duration::from_millis(100 * tick);
        if !send(&mut r, now, addr(2), &register_msg()).is_empty() {
            told.push(tick);
        }
    }
    assert!(told.len() >= 4, "{told:?}");
    assert!(told.windows(2).all(|w| w[1] - w[0] >= 10), "{told:?}");
}

#[test]
fn a_retransmitted_register_spends_no_registration_token() {
    let t0 = Instant::now();
    let mut r = rate_limited_registry(1.0, 1);
    let (id, token) = register(&mut r, t0, addr(1), None);
    for _ in 0..10 {
        let answers = send(&mut r, t0, addr(1), &Message::register(None, [0; 32]));
        assert!(
            matches!(answers[..], [Message::Registered { id: i, token: t, .. }] if i == id && t == token),
            "{answers:?}"
        );
    }
    assert_eq!(r.stats().rate_limited, 0);
}

/// A zero rate means no limit per source: neither a rate nor a cap per prefix.
#[test]
fn a_zero_rate_means_no_limit() {
    let t0 = Instant::now();
    let mut r = limited_registry(500, 0.0, 1);
    assert!(r.limits().per_prefix(500) < 500);
    for port in 1..=500 {
        register(&mut r, t0, addr(port), None);
    }
    assert_eq!(r.len(), 500);
    assert_eq!(r.stats().rate_limited, 0);
    assert_eq!(r.stats().prefix_full, 0);
}

#[test]
fn the_default_rate_lets_many_clients_on_one_host_register_at_once() {
    let t0 = Instant::now();
    let mut r = Registry::with_seed(RegistryConfig::default(), SEED);
    for port in 1..=200 {
        register(&mut r, t0, addr(port), None);
    }
    assert_eq!(r.len(), 200);
}

#[test]
fn a_datagram_packed_with_lookups_gets_at_most_eight_answers() {
    let t0 = Instant::now();
    let mut r = registry(10);
    register(&mut r, t0, addr(1), None);
    let mut packer = wire::Packer::new();
    let mut datagram = Vec::new();
    // 80 lookups of 13 bytes each fit in one datagram under wire::PACK_LIMIT.
    for _ in 0..80 {
        packer.push(addr(9), &Message::lookup(1), |_, d| {
            assert!(datagram.is_empty(), "one datagram");
            datagram = d.to_vec();
        });
    }
    packer.flush(|_, d| datagram = d.to_vec());
    assert_eq!(wire::decode_all(&datagram).unwrap().len(), 80);
    let answers = send_raw(&mut r, t0, addr(9), &datagram);
    assert_eq!(answers.len(), 8);
    let answer_bytes: usize = answers.iter().map(|m| wire::encode(m).len()).sum();
    assert!(
        answer_bytes <= datagram.len(),
        "{answer_bytes} bytes of answers to a {}-byte datagram",
        datagram.len()
    );
    assert_eq!(r.stats().excess, 72);
}

/// A named client with the longest name and display name, at `addr(1)`: the largest
/// `Found` there is.
fn long_named_client(t0: Instant) -> Registry {
    let mut r = registry(10);
    let (id, token) = register(&mut r, t0, addr(1), None);
    let answers = send(
        &mut r,
        t0,
        addr(1),
        &claim_msg(
            id,
            token,
            &"n".repeat(wire::MAX_NAME),
            Some(&"d".repeat(wire::MAX_DISPLAY_NAME)),
            None,
        ),
    );
    assert!(
        matches!(answers[..], [Message::Claimed { .. }]),
        "{answers:?}"
    );
    r
}

fn total_bytes(answers: &[Message]) -> usize {
    answers.iter().map(|m| wire::encode(m).len()).sum()
}

#[test]
fn lookups_written_small_get_nothing_larger_than_themselves() {
    // As measured against the old server: eight Lookups of a client with long names,
    // each written with MessagePack's numeric variant index ({1: [id]}, 4 bytes): 34
    // bytes in, 1,210 out.
    let t0 = Instant::now();
    let mut r = long_named_client(t0);
    let mut datagram = vec![wire::MAGIC, wire::VERSION];
    for _ in 0..8 {
        datagram.extend_from_slice(&[0x81, 0x01, 0x91, 0x01]);
    }
    assert_eq!(datagram.len(), 34);
    assert!(wire::decode_all(&datagram)
        .unwrap()
        .iter()
        .all(|m| matches!(m, Message::Lookup { id: 1, .. })));
    let answers = send_raw(&mut r, t0, addr(9), &datagram);
    assert!(total_bytes(&answers) <= 34, "{answers:?}");
    assert_eq!(r.stats().unsent_larger, 8);
    // The same lookup padded as a client pads it gets the whole answer, names and all.
    let answers = send(
        &mut r,
        t0,
        addr(9),
        &Message::Lookup {
            id: 1,
            nonce: 7,
            pad: Default::default(),
        },
    );
    let [Message::Found {
        name: Some(name),
        display_name: Some(_),
        nonce: 7,
        ..
    }] = &answers[..]
    else {
        panic!("{answers:?}")
    };
    assert_eq!(name.len(), wire::MAX_NAME);
}

#[test]
fn keepalives_of_nobody_get_nothing_larger_than_themselves() {
    // As measured: eight Keepalive{0, 0} ({3: [0, 0]}), no registration needed: 42 bytes
    // in, 793 out.
    let t0 = Instant::now();
    let mut r = two_clients(t0);
    let mut datagram = vec![wire::MAGIC, wire::VERSION];
    for _ in 0..8 {
        datagram.extend_from_slice(&[0x81, 0x03, 0x92, 0x00, 0x00]);
    }
    assert_eq!(datagram.len(), 42);
    let answers = send_raw(&mut r, t0, addr(9), &datagram);
    assert!(total_bytes(&answers) <= 42, "{answers:?}");
    // Padded, the first refusals fit, and never more than the datagram's size.
    let mut keepalive = Message::Keepalive {
        id: 0,
        token: 0,
        nonce: 5,
        pad: Default::default(),
        candidates: Vec::new(),
        relay: None,
    };
    wire::pad_request(&mut keepalive);
    let mut packer = wire::Packer::new();
    let mut datagram = Vec::new();
    for _ in 0..4 {
        packer.push(addr(9), &keepalive, |_, d| datagram = d.to_vec());
    }
    packer.flush(|_, d| datagram = d.to_vec());
    let answers = send_raw(&mut r, t0, addr(9), &datagram);
    assert!(!answers.is_empty());
    assert!(total_bytes(&answers) <= datagram.len(), "{answers:?}");
    assert!(answers.iter().all(|m| matches!(
        m,
        Message::Error {
            code: ErrorCode::NotRegistered,
            nonce: 5,
            ..
        }
    )));
}

#[test]
fn a_client_that_proves_it_receives_gets_whole_answers_to_small_requests() {
    // A List page is far larger than the List; the token, learnt from our Registered at
    // that address, proves the address receives.
    let t0 = Instant::now();
    let mut r = registry(100);
    let mut me = (0, 0);
    for port in 1..=15 {
        me = register(&mut r, t0, addr(port), None);
    }
    let list = wire::encode(&Message::List {
        id: me.0,
        token: me.1,
        after: None,
        nonce: 9,
        pad: Default::default(),
    });
    let answers = send_raw(&mut r, t0, addr(15), &list);
    let [Message::Listing {
        clients, nonce: 9, ..
    }] = &answers[..]
    else {
        panic!("{answers:?}")
    };
    assert_eq!(clients.len(), 15);
    assert!(total_bytes(&answers) > 3 * list.len());
    // The same List with a wrong token, from the same address: a refusal that fits, or
    // nothing.
    let forged = wire::encode(&Message::List {
        id: me.0,
        token: me.1 ^ 1,
        after: None,
        nonce: 9,
        pad: Default::default(),
    });
    let answers = send_raw(&mut r, t0, addr(15), &forged);
    assert!(total_bytes(&answers) <= forged.len(), "{answers:?}");
}

#[test]
fn every_answer_echoes_the_nonce_of_its_request() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let mut register_msg = Message::Register {
        key: [0; 32],
        want_id: None,
        nonce: 11,
        pad: Default::default(),
    };
    let answers = send(&mut r, t0, addr(1), &register_msg);
    let [Message::Registered {
        id,
        token,
        nonce: 11,
        ..
    }] = answers[..]
    else {
        panic!("{answers:?}")
    };
    // A retransmission with another nonce gets the same registration with that nonce.
    register_msg.set_nonce(12);
    let answers = send(&mut r, t0, addr(1), &register_msg);
    assert!(
        matches!(answers[..], [Message::Registered { nonce: 12, id: i, .. }] if i == id),
        "{answers:?}"
    );
    for (request, nonce) in [
        (
            Message::Lookup {
                id: 5,
                nonce: 13,
                pad: Default::default(),
            },
            13,
        ),
        (
            Message::Resolve {
                name: "nobody".into(),
                nonce: 14,
                pad: Default::default(),
            },
            14,
        ),
        (
            Message::Keepalive {
                id,
                token: token ^ 1,
                nonce: 15,
                pad: Default::default(),
                candidates: Vec::new(),
                relay: None,
            },
            15,
        ),
        (
            Message::Leave {
                id,
                token,
                nonce: 16,
                pad: Default::default(),
            },
            16,
        ),
    ] {
        let answers = send(&mut r, t0, addr(1), &request);
        assert_eq!(answers.len(), 1, "{request:?}: {answers:?}");
        assert_eq!(answers[0].nonce(), Some(nonce), "{answers:?}");
    }
}

// ---------------------------------------------------------------------- names

fn claim_msg(
    id: ClientId,
    token: Token,
    name: &str,
    display_name: Option<&str>,
    proof: Option<Vec<u8>>,
) -> Message {
    Message::Claim {
        id,
        token,
        name: name.into(),
        display_name: display_name.map(String::from),
        proof,
        nonce: 0,
        pad: Default::default(),
    }
}

/// Claims `name` for the client registered at `from`, expects `Claimed` and the `Named`
/// event.
fn claim(
    r: &mut Registry,
    now: Instant,
    from: SocketAddr,
    (id, token): (ClientId, Token),
    name: &str,
    display_name: Option<&str>,
) {
    let answers = send(
        r,
        now,
        from,
        &claim_msg(id, token, name, display_name, None),
    );
    assert_eq!(
        answers,
        [Message::Claimed {
            id,
            name: name.into(),
            nonce: 0
        }]
    );
    assert_eq!(
        events(r),
        [TableEvent::Named {
            id,
            addr: from,
            name: name.into(),
            display_name: display_name.map(String::from)
        }]
    );
}

fn resolve(r: &mut Registry, now: Instant, name: &str) -> Message {
    let answers = send(r, now, addr(9999), &Message::resolve(name));
    assert_eq!(answers.len(), 1, "{answers:?}");
    answers.into_iter().next().unwrap()
}

fn found(id: ClientId, at: SocketAddr, name: &str, display_name: Option<&str>) -> Message {
    Message::Found {
        key: [0; 32],
        id,
        addr: at,
        name: Some(name.into()),
        display_name: display_name.map(String::from),
        nonce: 0,
    }
}

#[test]
fn a_claimed_name_is_granted_and_lookup_and_resolve_carry_it() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let alice = register(&mut r, t0, addr(1001), None);
    claim(&mut r, t0, addr(1001), alice, "Alice", Some("Alice L."));
    let e = r.get(alice.0).unwrap();
    assert_eq!(e.name.as_deref(), Some("Alice"));
    assert_eq!(e.display_name.as_deref(), Some("Alice L."));
    let by_id = send(&mut r, t0, addr(9999), &Message::lookup(alice.0));
    assert_eq!(by_id, [found(1, addr(1001), "Alice", Some("Alice L."))]);
    assert_eq!(
        resolve(&mut r, t0, "Alice"),
        found(1, addr(1001), "Alice", Some("Alice L."))
    );
    assert!(r.has_names());
}

#[test]
fn resolve_ignores_ascii_case_and_an_unclaimed_name_is_unknown() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let bob = register(&mut r, t0, addr(1002), None);
    assert_eq!(
        resolve(&mut r, t0, "bob"),
        Message::Unknown {
            name: "bob".into(),
            nonce: 0
        }
    );
    claim(&mut r, t0, addr(1002), bob, "bob", None);
    for asked in ["bob", "BOB", "bOb"] {
        assert_eq!(
            resolve(&mut r, t0, asked),
            found(1, addr(1002), "bob", None)
        );
    }
    for other in ["bobby", "2bob", "", "b\u{f6}b"] {
        assert_eq!(
            resolve(&mut r, t0, other),
            Message::Unknown {
                name: other.into(),
                nonce: 0
            }
        );
    }
}

#[test]
fn a_name_held_by_another_client_is_name_taken_without_regard_to_case() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let alice = register(&mut r, t0, addr(1001), None);
    let bob = register(&mut r, t0, addr(1002), None);
    claim(&mut r, t0, addr(1001), alice, "alice", None);
    for taken in ["alice", "Alice", "ALICE"] {
        let answers = send(
            &mut r,
            t0,
            addr(1002),
            &claim_msg(bob.0, bob.1, taken, None, None),
        );
        let [Message::Error { code, detail, .. }] = &answers[..] else {
            panic!("{answers:?}")
        };
        assert_eq!(*code, ErrorCode::NameTaken);
        assert!(detail.contains("taken by client 1"), "{detail}");
    }
    assert_eq!(events(&mut r), []);
    assert_eq!(r.get(bob.0).unwrap().name, None);
    assert_eq!(r.get(alice.0).unwrap().name.as_deref(), Some("alice"));
    assert_eq!(r.stats().claims_refused, 3);
}

#[test]
fn bad_names_and_display_names_are_refused_and_change_nothing() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let alice = register(&mut r, t0, addr(1001), None);
    claim(&mut r, t0, addr(1001), alice, "alice", None);
    let before = table(&r);
    let long_name = "a".repeat(wire::MAX_NAME + 1);
    let long_display = "d".repeat(wire::MAX_DISPLAY_NAME + 1);
    let bad = [
        ("", None),
        ("2alice", None),
        ("al ice", None),
        ("al/ice", None),
        ("\u{e9}lise", None),
        (long_name.as_str(), None),
        ("alice2", Some("")),
        ("alice2", Some("   ")),
        ("alice2", Some("a\u{1b}[2J")),
        ("alice2", Some(long_display.as_str())),
    ];
    for (name, display) in bad {
        let answers = send(
            &mut r,
            t0,
            addr(1001),
            &claim_msg(alice.0, alice.1, name, display, None),
        );
        let [Message::Error { code, detail, .. }] = &answers[..] else {
            panic!("{answers:?}")
        };
        assert_eq!(*code, ErrorCode::BadName, "{name:?} {display:?}");
        let expected = match display {
            None => wire::check_name(name),
            Some(d) => wire::check_display_name(d),
        };
        assert_eq!(Err(wire::BadName(detail.clone())), expected);
    }
    assert_eq!(table(&r), before, "a refused claim changed the table");
    assert_eq!(events(&mut r), []);
    assert_eq!(
        resolve(&mut r, t0, "alice"),
        found(1, addr(1001), "alice", None)
    );
}

#[test]
fn a_claim_from_another_address_or_with_a_wrong_token_is_not_registered() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let alice = register(&mut r, t0, addr(1001), None);
    let forged = [
        (
            addr(6666),
            claim_msg(alice.0, alice.1, "mallory", None, None),
        ),
        (
            addr(1001),
            claim_msg(alice.0, alice.1 ^ 1, "mallory", None, None),
        ),
        (addr(1001), claim_msg(7, alice.1, "mallory", None, None)),
    ];
    for (from, msg) in forged {
        let answers = send(&mut r, t0, from, &msg);
        assert_eq!(error_code(&answers), ErrorCode::NotRegistered, "{msg:?}");
    }
    assert_eq!(
        resolve(&mut r, t0, "mallory"),
        Message::Unknown {
            name: "mallory".into(),
            nonce: 0
        }
    );
    assert_eq!(r.get(alice.0).unwrap().name, None);
    assert_eq!(events(&mut r), []);
    assert_eq!(r.stats().refused, 3);
}

#[test]
fn a_claim_proving_the_holders_key_replaces_the_holder() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let me = Identity::generate();
    let old = register_with_key(&mut r, t0, addr(1001), None, *me.public());
    claim(&mut r, t0, addr(1001), old, "alice", Some("Alice"));
    // The client restarts on another port, before its old entry expires.
    let new = register_with_key(&mut r, t0 + secs(5), addr(1002), None, *me.public());
    assert_eq!(new.0, 2);
    let proof = me.prove(r.key(), &new.1.to_be_bytes());
    let answers = send(
        &mut r,
        t0 + secs(5),
        addr(1002),
        &claim_msg(new.0, new.1, "Alice", None, Some(proof)),
    );
    assert_eq!(
        answers,
        [Message::Claimed {
            id: 2,
            name: "Alice".into(),
            nonce: 0
        }]
    );
    assert_eq!(
        events(&mut r),
        [
            TableEvent::Replaced {
                id: 1,
                addr: addr(1001),
                name: "alice".into(),
                by: 2
            },
            TableEvent::Named {
                id: 2,
                addr: addr(1002),
                name: "Alice".into(),
                display_name: None
            }
        ]
    );
    assert_eq!(ids(&r), [2]);
    let mut expected = found(2, addr(1002), "Alice", None);
    if let Message::Found { key, .. } = &mut expected {
        *key = *me.public();
    }
    assert_eq!(resolve(&mut r, t0 + secs(5), "alice"), expected);
    // The old run's requests are no longer honoured.
    let answers = send(
        &mut r,
        t0 + secs(5),
        addr(1001),
        &Message::keepalive(old.0, old.1),
    );
    assert_eq!(error_code(&answers), ErrorCode::NotRegistered);
}

#[test]
fn a_claim_that_does_not_prove_the_holders_key_is_name_taken() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let (alice_key, bob_key) = (Identity::generate(), Identity::generate());
    let alice = register_with_key(&mut r, t0, addr(1001), None, *alice_key.public());
    claim(&mut r, t0, addr(1001), alice, "alice", None);
    // Bob registers with alice's public key (anyone can read it from a Found), and again
    // with his own.
    let squat = register_with_key(&mut r, t0, addr(1002), None, *alice_key.public());
    let bob = register_with_key(&mut r, t0, addr(1003), None, *bob_key.public());
    let alice_old_proof = alice_key.prove(r.key(), &alice.1.to_be_bytes());
    let tries = [
        // Alice's key presented, nothing proved.
        (addr(1002), squat, None),
        // Proved with bob's own key, not the registered one.
        (
            addr(1002),
            squat,
            Some(bob_key.prove(r.key(), &squat.1.to_be_bytes())),
        ),
        // A proof alice made for her own registration, replayed.
        (addr(1002), squat, Some(alice_old_proof)),
        // Bob's key proved, but it is not the holder's.
        (
            addr(1003),
            bob,
            Some(bob_key.prove(r.key(), &bob.1.to_be_bytes())),
        ),
        // A proof made to another server's key.
        (
            addr(1003),
            bob,
            Some(bob_key.prove(Identity::generate().public(), &bob.1.to_be_bytes())),
        ),
    ];
    for (from, (id, token), proof) in tries {
        let answers = send(
            &mut r,
            t0,
            from,
            &claim_msg(id, token, "alice", None, proof),
        );
        assert_eq!(error_code(&answers), ErrorCode::NameTaken);
    }
    assert_eq!(ids(&r), [1, 2, 3]);
    assert_eq!(events(&mut r), []);
}

#[test]
fn a_retransmitted_claim_gets_claimed_again_and_no_second_event() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let alice = register(&mut r, t0, addr(1001), None);
    claim(&mut r, t0, addr(1001), alice, "alice", Some("Alice L."));
    let before = table(&r);
    for _ in 0..3 {
        let answers = send(
            &mut r,
            t0,
            addr(1001),
            &claim_msg(alice.0, alice.1, "alice", Some("Alice L."), None),
        );
        assert_eq!(
            answers,
            [Message::Claimed {
                id: 1,
                name: "alice".into(),
                nonce: 0
            }]
        );
    }
    assert_eq!(events(&mut r), []);
    assert_eq!(table(&r), before);
    // A new display name for the same name is a change, and is reported.
    claim(
        &mut r,
        t0,
        addr(1001),
        alice,
        "alice",
        Some("Alice Liddell"),
    );
}

#[test]
fn a_new_claim_releases_the_old_name() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let alice = register(&mut r, t0, addr(1001), None);
    let bob = register(&mut r, t0, addr(1002), None);
    claim(&mut r, t0, addr(1001), alice, "alice", None);
    claim(&mut r, t0, addr(1001), alice, "alicia", None);
    assert_eq!(
        resolve(&mut r, t0, "alice"),
        Message::Unknown {
            name: "alice".into(),
            nonce: 0
        }
    );
    assert_eq!(
        resolve(&mut r, t0, "alicia"),
        found(1, addr(1001), "alicia", None)
    );
    claim(&mut r, t0, addr(1002), bob, "alice", None);
}

#[test]
fn a_claim_refreshes_the_entry() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let alice = register(&mut r, t0, addr(1001), None);
    claim(&mut r, t0 + secs(20), addr(1001), alice, "alice", None);
    assert_eq!(r.get(1).unwrap().last_seen, t0 + secs(20));
    r.handle_timeout(t0 + secs(40));
    assert_eq!(ids(&r), [1]);
}

#[test]
fn a_name_is_released_when_its_client_leaves() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let alice = register(&mut r, t0, addr(1001), None);
    claim(&mut r, t0, addr(1001), alice, "alice", None);
    let answers = send(&mut r, t0, addr(1001), &Message::leave(alice.0, alice.1));
    assert_eq!(answers, [Message::LeaveAck { id: 1, nonce: 0 }]);
    assert_eq!(
        events(&mut r),
        [TableEvent::Left {
            id: 1,
            addr: addr(1001),
            name: Some("alice".into())
        }]
    );
    assert!(!r.has_names());
    assert_eq!(
        resolve(&mut r, t0, "alice"),
        Message::Unknown {
            name: "alice".into(),
            nonce: 0
        }
    );
    let bob = register(&mut r, t0, addr(1002), None);
    claim(&mut r, t0, addr(1002), bob, "Alice", None);
}

#[test]
fn a_name_is_released_when_its_client_expires() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let alice = register(&mut r, t0, addr(1001), None);
    claim(&mut r, t0, addr(1001), alice, "alice", None);
    let bob = register(&mut r, t0 + secs(20), addr(1002), None);
    r.handle_timeout(t0 + TTL);
    assert_eq!(
        events(&mut r),
        [TableEvent::Expired {
            id: 1,
            addr: addr(1001),
            name: Some("alice".into())
        }]
    );
    assert_eq!(
        resolve(&mut r, t0 + TTL, "alice"),
        Message::Unknown {
            name: "alice".into(),
            nonce: 0
        }
    );
    claim(&mut r, t0 + TTL, addr(1002), bob, "alice", None);
}

// ---------------------------------------------------------------------- listing

fn list_msg((id, token): (ClientId, Token), after: Option<ClientId>) -> Message {
    Message::List {
        id,
        token,
        after,
        nonce: 0,
        pad: Default::default(),
    }
}

/// Asks for one page; returns it and its encoded size.
fn list_page(
    r: &mut Registry,
    now: Instant,
    from: SocketAddr,
    me: (ClientId, Token),
    after: Option<ClientId>,
) -> (Vec<wire::Listed>, Option<ClientId>, u32, usize) {
    let answers = send(r, now, from, &list_msg(me, after));
    let [msg @ Message::Listing { .. }] = &answers[..] else {
        panic!("List answered {answers:?}")
    };
    let size = encode(msg).len();
    let Message::Listing {
        clients,
        next,
        total,
        ..
    } = msg.clone()
    else {
        unreachable!()
    };
    (clients, next, total, size)
}

/// A registry without limits per source, nor on `List` pages.
fn unlimited_registry(max_clients: usize) -> Registry {
    Registry::with_seed(
        RegistryConfig {
            ttl: TTL,
            max_clients,
            register_rate: 0.0,
            ..RegistryConfig::default()
        },
        SEED,
    )
    .with_limits(Limits::unlimited_list())
}

/// Client number `i`'s address: a different one for every `i` below 6 million.
fn many_addr(i: u32) -> SocketAddr {
    let [_, a, b, c] = (i / 60_000).to_be_bytes();
    addr_on([10, a, b, c], 1024 + (i % 60_000) as u16)
}

/// A name of the longest length, different for every `i`.
fn long_name(i: u32) -> String {
    format!("n{i:0>width$}", width = wire::MAX_NAME - 1)
}

/// A display name of the longest length, different for every `i`.
fn long_display(i: u32) -> String {
    format!("{i:-<width$}", width = wire::MAX_DISPLAY_NAME)
}

#[test]
fn list_is_list_disabled_when_the_server_does_not_list() {
    let t0 = Instant::now();
    let mut r = Registry::with_seed(
        RegistryConfig {
            list: false,
            ..RegistryConfig::default()
        },
        SEED,
    );
    let alice = register(&mut r, t0, addr(1001), None);
    let answers = send(&mut r, t0, addr(1001), &list_msg(alice, None));
    let [Message::Error { code, detail, .. }] = &answers[..] else {
        panic!("{answers:?}")
    };
    assert_eq!(*code, ErrorCode::ListDisabled);
    assert_eq!(detail, "this server does not list its clients");
    // Names still work.
    claim(&mut r, t0, addr(1001), alice, "alice", None);
}

/// A client may ask for `list_burst` pages at once, then `list_rate` a second; a page
/// beyond that gets no answer (the client asks again, as for a lost datagram), and other
/// clients are not affected.
#[test]
fn list_pages_beyond_the_clients_list_rate_go_unanswered() {
    let t0 = Instant::now();
    let mut r = registry(10).with_limits(Limits {
        list_rate: 2.0,
        list_burst: 4,
        ..Limits::default()
    });
    let alice = register(&mut r, t0, addr(1001), None);
    let bob = register(&mut r, t0, addr(1002), None);
    for _ in 0..4 {
        list_page(&mut r, t0, addr(1001), alice, None);
    }
    for _ in 0..20 {
        let answers = send(&mut r, t0, addr(1001), &list_msg(alice, None));
        assert_eq!(answers, []);
    }
    assert_eq!(r.stats().list_limited, 20);
    list_page(&mut r, t0, addr(1002), bob, None);
    // Half a second later, one more page.
    let later = t0 + Duration::from_millis(500);
    list_page(&mut r, later, addr(1001), alice, Some(1));
    assert_eq!(send(&mut r, later, addr(1001), &list_msg(alice, None)), []);
    assert_eq!(r.stats().list_pages, 6);
    // A client that leaves and comes back under the same id starts with a full bucket.
    send(&mut r, later, addr(1001), &Message::leave(alice.0, alice.1));
    events(&mut r);
    let again = register(&mut r, later, addr(1003), None);
    assert_eq!(again.0, alice.0);
    for _ in 0..4 {
        list_page(&mut r, later, addr(1003), again, None);
    }
}

#[test]
fn list_from_a_stranger_or_with_a_wrong_token_is_not_registered() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let alice = register(&mut r, t0, addr(1001), None);
    for (from, me) in [
        (addr(6666), alice),
        (addr(1001), (alice.0, alice.1 ^ 1)),
        (addr(1001), (2, alice.1)),
    ] {
        let answers = send(&mut r, t0, from, &list_msg(me, None));
        assert_eq!(error_code(&answers), ErrorCode::NotRegistered);
    }
    assert_eq!(r.stats().refused, 3);
    assert_eq!(r.stats().list_pages, 0);
}

#[test]
fn a_list_shows_ids_names_and_time_online() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let alice = register(&mut r, t0, addr(1001), None);
    claim(&mut r, t0, addr(1001), alice, "alice", Some("Alice L."));
    register(&mut r, t0 + secs(7), addr(1002), None);
    let now = t0 + secs(10);
    let (clients, next, total, _) = list_page(&mut r, now, addr(1001), alice, None);
    assert_eq!(
        clients,
        [
            wire::Listed {
                key: [0; 32],
                id: 1,
                name: Some("alice".into()),
                display_name: Some("Alice L.".into()),
                online_secs: 10
            },
            wire::Listed {
                key: [0; 32],
                id: 2,
                name: None,
                display_name: None,
                online_secs: 3
            }
        ]
    );
    assert_eq!((next, total), (None, 2));
    let (clients, next, _, _) = list_page(&mut r, now, addr(1001), alice, Some(1));
    assert_eq!(clients.iter().map(|c| c.id).collect::<Vec<_>>(), [2]);
    assert_eq!(next, None);
    let (clients, next, _, _) = list_page(&mut r, now, addr(1001), alice, Some(2));
    assert_eq!((clients, next), (vec![], None));
}

/// 5,000 clients with names and display names of the longest length: every page fits in
/// `PACK_LIMIT` and is as full as it can be, and the pages list every client exactly once,
/// in id order.
#[test]
fn paging_through_5000_named_clients_lists_each_once_in_order_within_the_limit() {
    let t0 = Instant::now();
    let n = 5000u32;
    let mut r = unlimited_registry(n as usize);
    let mut me = (0, 0);
    for i in 0..n {
        let from = many_addr(i);
        let c = register(&mut r, t0, from, None);
        let display = long_display(i);
        assert_eq!(display.len(), wire::MAX_DISPLAY_NAME);
        claim(&mut r, t0, from, c, &long_name(i), Some(&display));
        if i == 0 {
            me = c;
        }
    }
    let now = t0 + secs(1);
    let mut seen: Vec<ClientId> = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let (clients, next, total, size) = list_page(&mut r, now, many_addr(0), me, after);
        pages += 1;
        assert!(size <= wire::PACK_LIMIT, "page of {size} bytes");
        assert_eq!(total, n);
        assert!(!clients.is_empty());
        for c in &clients {
            let i = c.id - 1;
            assert_eq!(c.name.as_deref(), Some(long_name(i).as_str()));
            assert_eq!(c.online_secs, 1);
        }
        seen.extend(clients.iter().map(|c| c.id));
        match next {
            Some(next) => {
                assert_eq!(Some(next), clients.last().map(|c| c.id));
                // As full as it can be: the following client would not have fitted.
                let mut more = clients.clone();
                more.push(wire::Listed {
                    key: [0; 32],
                    id: next + 1,
                    name: Some(long_name(next)),
                    display_name: Some(long_display(next)),
                    online_secs: 1,
                });
                let bigger = Message::Listing {
                    clients: more,
                    next: (next + 1 < n).then_some(next + 1),
                    total,
                    nonce: 0,
                };
                assert!(encode(&bigger).len() > wire::PACK_LIMIT, "page not full");
                after = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(seen, (1..=n).collect::<Vec<_>>());
    assert!(pages > 500, "{pages} pages");
    assert_eq!(r.stats().list_pages, pages);
}

/// Clients join and leave between pages: no client is listed twice, and every client online
/// from the first page to the last is listed.
#[test]
fn paging_is_correct_when_clients_join_and_leave_between_pages() {
    use rand::{Rng, SeedableRng};
    let seed = rand::random::<u64>();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut r = unlimited_registry(10_000);
    let mut online: std::collections::BTreeMap<ClientId, (SocketAddr, Token)> = Default::default();
    let mut next_addr = 0;
    let mut join = |r: &mut Registry, online: &mut std::collections::BTreeMap<_, _>| {
        let from = many_addr(next_addr);
        next_addr += 1;
        let (id, token) = register(r, t0, from, None);
        online.insert(id, (from, token));
        if id % 3 == 0 {
            claim(r, t0, from, (id, token), &long_name(id), None);
        }
    };
    for _ in 0..2000 {
        join(&mut r, &mut online);
    }
    // Client 1 lists, and stays throughout.
    let me = (1, online[&1].1);
    let mut stayed: std::collections::BTreeSet<ClientId> = online.keys().copied().collect();
    let mut seen: Vec<ClientId> = Vec::new();
    let mut after = None;
    loop {
        let (clients, next, total, size) = list_page(&mut r, t0, online[&1].0, me, after);
        assert!(size <= wire::PACK_LIMIT, "seed {seed}");
        assert_eq!(total as usize, online.len(), "seed {seed}");
        for c in &clients {
            assert!(online.contains_key(&c.id), "seed {seed}: {} listed", c.id);
        }
        seen.extend(clients.iter().map(|c| c.id));
        let Some(next) = next else { break };
        after = Some(next);
        // Between pages: some leave (never client 1), some join (reusing freed ids).
        for _ in 0..rng.random_range(0..6) {
            let id = rng.random_range(2..=online.keys().last().copied().unwrap());
            if let Some((from, token)) = online.remove(&id) {
                let answers = send(&mut r, t0, from, &Message::leave(id, token));
                assert_eq!(answers, [Message::LeaveAck { id, nonce: 0 }], "seed {seed}");
                events(&mut r);
                stayed.remove(&id);
            }
        }
        for _ in 0..rng.random_range(0..6) {
            join(&mut r, &mut online);
        }
    }
    let mut sorted = seen.clone();
    sorted.dedup();
    assert_eq!(sorted, seen, "seed {seed}: listed twice or out of order");
    for id in &stayed {
        assert!(seen.binary_search(id).is_ok(), "seed {seed}: {id} skipped");
    }
}

/// A registry without limits, and 60,000 clients registered in it (ids 1 to 60,000, from
/// `many_addr(0..60_000)`).
fn sixty_thousand_clients(t0: Instant) -> (Registry, Vec<(ClientId, Token)>) {
    let mut r = unlimited_registry(100_000);
    let clients = (0..60_000)
        .map(|i| register(&mut r, t0, many_addr(i), None))
        .collect();
    (r, clients)
}

/// Ids a client asked for, far above the others, are listed too, in order; and a long run
/// of free ids costs nothing: the 23 clients come in one page that looked at 23 clients.
#[test]
fn paging_covers_requested_ids_and_long_runs_of_free_ids() {
    let t0 = Instant::now();
    let (mut r, clients) = sixty_thousand_clients(t0);
    // All but the first and last 10 leave: a long run of free ids in the middle.
    for &(id, token) in &clients[10..clients.len() - 10] {
        let from = many_addr(id - 1);
        send(&mut r, t0, from, &Message::leave(id, token));
    }
    events(&mut r);
    let far = [4_000_000_000, 70_000, 3_000_000_000];
    for (k, id) in far.iter().enumerate() {
        register(&mut r, t0, many_addr(70_000 + k as u32), Some(*id));
    }
    let me = clients[0];
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let (page, next, total, _) = list_page(&mut r, t0, many_addr(0), me, after);
        pages += 1;
        assert_eq!(total, 23);
        seen.extend(page.iter().map(|c| c.id));
        match next {
            Some(n) => {
                assert!(after.is_none_or(|a| n > a), "no progress");
                after = Some(n);
            }
            None => break,
        }
    }
    let mut expected: Vec<ClientId> = (1..=10).chain(59_991..=60_000).collect();
    expected.extend([70_000, 3_000_000_000, 4_000_000_000]);
    assert_eq!(seen, expected);
    // With their keys, 23 clients take two pages; each page looks at the clients it
    // lists and at most one more.
    assert_eq!(pages, 2);
    assert!(
        r.stats().list_examined <= 23 + 2,
        "{}",
        r.stats().list_examined
    );
}

/// A table that once held 60,000 clients and now holds a few, spread out with gaps of
/// thousands of free ids (and ids a client asked for, far above): each page looks at the
/// clients it lists and at most one more, never at the free ids between them.
#[test]
fn a_list_page_looks_only_at_the_clients_it_lists_whatever_the_gaps() {
    let t0 = Instant::now();
    let (mut r, clients) = sixty_thousand_clients(t0);
    // Every 3,000th client stays, and names itself at length (8 to a page).
    let mut stay = Vec::new();
    for (i, &(id, token)) in clients.iter().enumerate() {
        if i % 3000 != 0 {
            send(&mut r, t0, many_addr(i as u32), &Message::leave(id, token));
        }
    }
    events(&mut r);
    for (i, &(id, token)) in clients.iter().enumerate().step_by(3000) {
        let from = many_addr(i as u32);
        claim(
            &mut r,
            t0,
            from,
            (id, token),
            &long_name(id),
            Some(&long_display(id)),
        );
        stay.push(id);
    }
    for (k, id) in [4_000_000_000, 70_000, 3_000_000_000]
        .into_iter()
        .enumerate()
    {
        register(&mut r, t0, many_addr(70_000 + k as u32), Some(id));
        stay.push(id);
    }
    stay.sort_unstable();
    events(&mut r);
    let me = clients[0];
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let examined = r.stats().list_examined;
        let (page, next, _, _) = list_page(&mut r, t0, many_addr(0), me, after);
        pages += 1;
        let looked = r.stats().list_examined - examined;
        assert!(
            looked <= page.len() as u64 + 1,
            "a page of {} clients looked at {looked}",
            page.len()
        );
        seen.extend(page.iter().map(|c| c.id));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, stay);
    assert!(pages >= 3, "{pages} pages");
}

#[test]
fn a_register_with_another_key_from_a_registered_address_takes_nothing_over() {
    let t0 = Instant::now();
    let mut r = registry(10);
    let old = register_with_key(&mut r, t0, addr(1001), None, [1; 32]);
    let before = table(&r);
    // Another client now bound at that address (or someone forging it), another key.
    let answers = send(
        &mut r,
        t0 + secs(1),
        addr(1001),
        &Message::register(None, [2; 32]),
    );
    assert_eq!(error_code(&answers), ErrorCode::RateLimited);
    assert_eq!(
        table(&r),
        before,
        "the entry, its key and its token are unchanged"
    );
    assert_eq!(r.get(old.0).unwrap().key, [1; 32]);
    assert_eq!(events(&mut r), []);
    // Its Registers do not keep the old entry alive: it expires, then the new key gets in.
    for k in 2..30 {
        send(
            &mut r,
            t0 + secs(k),
            addr(1001),
            &Message::register(None, [2; 32]),
        );
        r.handle_timeout(t0 + secs(k));
    }
    assert_eq!(r.get(old.0).unwrap().key, [1; 32], "still the old entry");
    r.handle_timeout(t0 + secs(31));
    assert!(r.get(old.0).is_none(), "expired");
    events(&mut r);
    let new = register_with_key(&mut r, t0 + secs(31), addr(1001), None, [2; 32]);
    assert_eq!(r.get(new.0).unwrap().key, [2; 32]);
}

// ---------------------------------------------------------------- relayed addresses

/// Registers a and b, has each tell `relay_of(i)` in a keepalive, lets a look b up, and
/// returns the `relay` of the introductions (to a about b, to b about a).
fn introductions_with_relays(
    turn: Option<SocketAddr>,
    relay_a: Option<SocketAddr>,
    relay_b: Option<SocketAddr>,
) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let t0 = Instant::now();
    let mut r = Registry::with_seed(
        RegistryConfig {
            ttl: TTL,
            max_clients: 10,
            turn: turn.map(|server| p2pchat::registry::turn::TurnSecret {
                server,
                secret: b"secret".to_vec(),
                lifetime: Duration::from_secs(3600),
                clock: (t0, 1_800_000_000),
            }),
            ..RegistryConfig::default()
        },
        SEED,
    );
    let (a, b) = (addr(4001), addr(4002));
    let (ida, ta) = register(&mut r, t0, a, None);
    let (idb, tb) = register(&mut r, t0, b, None);
    for (from, id, token, relay) in [(a, ida, ta, relay_a), (b, idb, tb, relay_b)] {
        let mut k = Message::keepalive_with(id, token, Vec::new());
        if let Message::Keepalive { relay: r, .. } = &mut k {
            *r = relay;
        }
        send(&mut r, t0, from, &k);
    }
    r.handle_datagram(
        t0,
        a,
        &encode(&{
            let mut m = Message::lookup(idb);
            wire::pad_request(&mut m);
            m
        }),
    );
    let (mut to_a, mut to_b) = (None, None);
    while let Some(t) = r.poll_transmit() {
        if let Message::Introduce { id, relay, .. } = t.message {
            if t.to == a && id == idb {
                to_a = Some(relay);
            } else if t.to == b && id == ida {
                to_b = Some(relay);
            }
        }
    }
    (
        to_a.expect("a was introduced to b"),
        to_b.expect("b was introduced to a"),
    )
}

#[test]
fn a_relayed_address_told_in_a_keepalive_reaches_the_peer_in_its_introduction() {
    let ra: SocketAddr = "192.0.2.1:49152".parse().unwrap();
    let rb: SocketAddr = "192.0.2.1:49153".parse().unwrap();
    assert_eq!(
        introductions_with_relays(None, Some(ra), Some(rb)),
        (Some(rb), Some(ra))
    );
    // One that told none: none in the introduction.
    assert_eq!(
        introductions_with_relays(None, Some(ra), None),
        (None, Some(ra))
    );
}

#[test]
fn with_a_turn_server_only_its_relayed_addresses_are_handed_on() {
    let turn: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let on_it: SocketAddr = "192.0.2.1:49152".parse().unwrap();
    let victim: SocketAddr = "203.0.113.99:53".parse().unwrap();
    assert_eq!(
        introductions_with_relays(Some(turn), Some(on_it), Some(victim)),
        (None, Some(on_it))
    );
}
