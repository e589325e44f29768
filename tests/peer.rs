//! The client's state-machine rules, with a simulated clock.
//!
//! Most tests run two or more `Peer`s and the `Registry` over the simulated network of
//! `tests/sim` with no random loss (10 ms one way); a chosen datagram is lost with a filter
//! when a rule is about losses. A few drive one `Peer` by hand to check exact instants.
//! Nothing sleeps: "10 s later" is an addition to a virtual clock. Every test uses the one
//! fixed [`SEED`] (printed, and named by the simulator's own failure messages), so a
//! failure replays exactly.

mod sim;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pchat::peer::{EndReason, Event, Peer};
use p2pchat::wire::{encode, ClientId, ErrorCode, Message, SessionId};
use sim::{default_config, NetConfig, Sim, RETRY, SERVER};

/// Fixed seed of these tests: ids, tokens and session ids are reproducible.
const SEED: u64 = 0x7065_6572;

/// Generous bound on any single wait in these tests.
const LIMIT: Duration = Duration::from_secs(300);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A third party: nobody the server or the peers know.
fn stranger() -> SocketAddr {
    "10.9.9.9:6666".parse().unwrap()
}

/// Two registered peers, `a` and `b`, on a network without loss.
fn pair() -> (Sim, usize, usize) {
    println!("seed {SEED}");
    let mut s = Sim::new(SEED, NetConfig::perfect());
    let v = s.add_registered_peers(2, &default_config());
    (s, v[0], v[1])
}

/// Two peers with an open session: `a` asked, `b` accepted.
fn connected_pair() -> (Sim, usize, usize) {
    let (mut s, a, b) = pair();
    s.connect(a, b);
    s.expect(LIMIT, "b sees the request", |s| s.has(b, is_request));
    let ida = s.id(a);
    s.accept(b, Some(ida));
    s.expect(LIMIT, "a is connected", |s| s.has(a, is_connected));
    assert!(s.has(b, is_connected));
    (s, a, b)
}

fn is_request(e: &Event) -> bool {
    matches!(e, Event::Request { .. })
}

fn is_connected(e: &Event) -> bool {
    matches!(e, Event::Connected { .. })
}

fn is_terminated(e: &Event) -> bool {
    matches!(e, Event::Terminated { .. })
}

fn is_left(e: &Event) -> bool {
    matches!(e, Event::Left { .. })
}

fn is_connect_request(m: &Message) -> bool {
    matches!(m, Message::ConnectRequest { .. })
}

fn is_accept(m: &Message) -> bool {
    matches!(m, Message::Accept { .. })
}

fn is_ping(m: &Message) -> bool {
    matches!(m, Message::Ping { .. })
}

fn session_of(m: &Message) -> SessionId {
    m.session()
        .unwrap_or_else(|| panic!("{m:?} has no session"))
}

/// The session id of the first request `a` sent.
fn first_session(s: &Sim, a: usize) -> SessionId {
    session_of(&s.sent_by(s.addr(a), is_connect_request)[0].message)
}

/// Drains one hand-driven peer: its datagrams and its events.
/// `reply` as the server sends it: with the nonce of the last request to the server in
/// `sent` (a client takes only answers to its requests).
fn echo(sent: &[Message], mut reply: Message) -> Message {
    let nonce = sent
        .iter()
        .rev()
        .find(|m| m.is_server_request())
        .and_then(Message::nonce)
        .expect("a request to the server was sent");
    reply.set_nonce(nonce);
    reply
}

fn drain(p: &mut Peer) -> (Vec<Message>, Vec<Event>) {
    let sent = std::iter::from_fn(|| p.poll_transmit())
        .map(|t| t.message)
        .collect();
    let events = std::iter::from_fn(|| p.poll_event()).collect();
    (sent, events)
}

// ---------------------------------------------------------------------- connection requests

#[test]
fn connect_request_is_resent_exactly_at_each_retry_interval_then_no_answer() {
    let t0 = Instant::now();
    let asked: SocketAddr = "10.0.1.2:4000".parse().unwrap();
    let cfg = default_config();
    assert_eq!(cfg.retry_interval, secs(10));
    assert_eq!(cfg.connect_tries, 6);
    let mut p = Peer::with_seed(cfg.clone(), t0, SEED);
    let registered = Message::Registered {
        key: [0; 32],
        id: 1,
        token: 7,
        ttl_secs: 30,
        nonce: 0,
        turn: None,
    };
    let (sent, _) = drain(&mut p);
    p.handle_datagram(t0, SERVER, &encode(&echo(&sent, registered)));
    p.connect(t0, 2).unwrap();
    let found = Message::Found {
        key: [0; 32],
        id: 2,
        addr: asked,
        name: None,
        display_name: None,
        nonce: 0,
    };
    let (sent, _) = drain(&mut p);
    p.handle_datagram(t0, SERVER, &encode(&echo(&sent, found)));
    let (sent, _) = drain(&mut p);
    let requests = sent.iter().filter(|m| is_connect_request(m)).count();
    assert_eq!(
        requests, 1,
        "the first request goes out with the Found: {sent:?}"
    );

    let mut first_hs: Option<Vec<u8>> = None;
    for k in 1..u32::from(6u8) {
        let mark = t0 + cfg.retry_interval * k;
        p.handle_timeout(mark - ms(1));
        let (sent, events) = drain(&mut p);
        assert!(
            !sent.iter().any(is_connect_request),
            "request {} resent before the {k}0 s mark: {sent:?}",
            k + 1
        );
        assert!(events.is_empty(), "{events:?}");
        assert!(
            p.poll_timeout().is_some_and(|t| t <= mark),
            "the peer must ask to be woken by the {k}0 s mark"
        );
        p.handle_timeout(mark);
        let (sent, _) = drain(&mut p);
        let requests: Vec<&Message> = sent.iter().filter(|m| is_connect_request(m)).collect();
        assert_eq!(requests.len(), 1, "one resend at the {k}0 s mark: {sent:?}");
        assert!(
            matches!(requests[0], Message::ConnectRequest { from: 1, hs, .. } if !hs.is_empty()),
            "a request with its handshake: {:?}",
            requests[0]
        );
        // Every resend carries the same handshake message.
        let hs_of = |m: &Message| match m {
            Message::ConnectRequest { hs, .. } => hs.clone(),
            _ => unreachable!(),
        };
        first_hs.get_or_insert_with(|| hs_of(requests[0]));
        assert_eq!(Some(hs_of(requests[0])), first_hs);
    }
    // Six requests sent; the sixth is given the same interval, then the user is told.
    p.handle_timeout(t0 + secs(60) - ms(1));
    let (sent, events) = drain(&mut p);
    assert!(!sent.iter().any(is_connect_request), "{sent:?}");
    assert!(events.is_empty(), "no answer yet: {events:?}");
    p.handle_timeout(t0 + secs(60));
    let (sent, events) = drain(&mut p);
    assert!(
        !sent.iter().any(is_connect_request),
        "no seventh request: {sent:?}"
    );
    assert_eq!(events, vec![Event::NoAnswer { peer: 2 }]);
    // No Terminate: before an Accept there are no keys to seal one with, and one in
    // clear would be believed by nobody. The asked peer drops the request when it is not
    // heard again.
    assert!(
        !sent
            .iter()
            .any(|m| matches!(m, Message::Terminate { .. } | Message::Sealed { .. })),
        "nothing of a session without keys: {sent:?}"
    );
    // Nothing more about peer 2, ever.
    p.handle_timeout(t0 + secs(200));
    let (sent, events) = drain(&mut p);
    assert!(!sent.iter().any(is_connect_request), "{sent:?}");
    assert!(events.is_empty(), "{events:?}");
    assert!(p.connect(t0 + secs(200), 2).is_ok(), "may ask again");
}

#[test]
fn connect_request_resends_on_the_network_are_one_retry_interval_apart() {
    let (mut s, a, b) = pair();
    s.connect(a, b);
    s.expect(LIMIT, "no answer", |s| {
        s.has(a, |e| matches!(e, Event::NoAnswer { .. }))
    });
    let all: Vec<Instant> = s
        .sent_by(s.addr(a), is_connect_request)
        .iter()
        .map(|r| r.at)
        .collect();
    // Besides the schedule, one request goes at once when the peer's first probe shows
    // where it is (tests/nat_sim.rs); the schedule is not moved by it.
    let times: Vec<Instant> = all
        .iter()
        .copied()
        .filter(|t| (*t - all[0]).as_nanos() % RETRY.as_nanos() == 0)
        .collect();
    assert_eq!(times.len(), 6, "connect_tries requests");
    assert_eq!(all.len(), 7, "and one after the first probe: {all:?}");
    for (k, t) in times.iter().enumerate() {
        assert_eq!(
            *t - times[0],
            RETRY * k as u32,
            "request {} off its mark",
            k + 1
        );
    }
    let no_answer = s.when(a, |e| matches!(e, Event::NoAnswer { .. })).unwrap();
    assert_eq!(no_answer - times[0], RETRY * 6);
    // The asked side, which never answered, saw one request; it is dropped once it is
    // not heard again for as long as a requester resends (connect_tries retry intervals
    // after the last one, which came one interval before the no_answer).
    let tries = default_config().connect_tries;
    s.run_for(RETRY * (tries - 1) + secs(1));
    assert_eq!(s.count(b, is_request), 1);
    assert!(s.peer(b).pending_requests().is_empty());
    assert_eq!(
        s.count(b, |e| *e
            == Event::Terminated {
                peer: s.id(a),
                reason: EndReason::Cancelled
            }),
        1
    );
}

#[test]
fn connect_to_an_id_the_server_does_not_know_reports_inactive() {
    let (mut s, a, _b) = pair();
    s.command(a, |p, now| p.connect(now, 99)).unwrap();
    s.expect(LIMIT, "inactive", |s| {
        s.has(a, |e| matches!(e, Event::Inactive { .. }))
    });
    assert_eq!(s.events(a).last(), Some(&Event::Inactive { peer: 99 }));
    assert!(s.sent_by(s.addr(a), is_connect_request).is_empty());
    // Nothing is left pending: the same command may be given again.
    s.run_for(secs(30));
    assert_eq!(
        s.count(a, |e| matches!(e, Event::Inactive { .. })),
        1,
        "{:?}",
        s.events(a)
    );
    assert!(s.command(a, |p, now| p.connect(now, 99)).is_ok());
}

#[test]
fn lost_accept_is_sent_again_with_the_same_bytes_and_nothing_is_shown_twice() {
    let (mut s, a, b) = pair();
    // The first Accept is lost, and so is the first Ping of the accepting side. The
    // accepter sends its Accept again beside its pings until it hears from the requester,
    // and for each resent request: every copy is the same bytes (the same handshake).
    s.drop_first(1, is_accept);
    s.drop_first(1, is_ping);
    s.connect(a, b);
    s.expect(LIMIT, "request", |s| s.has(b, is_request));
    let ida = s.id(a);
    s.accept(b, None);
    s.expect(LIMIT, "a connected", |s| s.has(a, is_connected));
    let requests = s.sent_by(s.addr(a), is_connect_request);
    let accepts = s.sent_by(s.addr(b), is_accept);
    assert!(
        accepts.len() >= 2,
        "the Accept was sent again: {}",
        accepts.len()
    );
    assert!(
        accepts.iter().all(|r| r.wire == accepts[0].wire),
        "every Accept is the same bytes"
    );
    assert!(
        requests.iter().all(|r| r.wire == requests[0].wire),
        "every request is the same bytes"
    );
    s.run_for(secs(60));
    assert_eq!(s.count(b, is_request), 1, "{:?}", s.events(b));
    assert_eq!(s.count(b, is_connected), 1, "{:?}", s.events(b));
    assert_eq!(s.count(a, is_connected), 1, "{:?}", s.events(a));
    assert!(!s.has(a, is_terminated) && !s.has(b, is_terminated));
    // And the session works.
    s.send(a, None, "hello");
    s.send(b, Some(ida), "hi");
    s.expect(LIMIT, "both delivered", |s| {
        s.has(a, |e| matches!(e, Event::Delivered { .. }))
            && s.has(b, |e| matches!(e, Event::Delivered { .. }))
    });
    assert_eq!(s.shown(b, ida), vec![(1, "hello".to_string())]);
}

#[test]
fn a_lost_accept_is_sent_again_for_the_resent_request_and_nothing_ends() {
    let (mut s, a, b) = pair();
    s.drop_first(1, is_accept);
    s.connect(a, b);
    s.expect(LIMIT, "request", |s| s.has(b, is_request));
    s.accept(b, None);
    // The accepting side pings after `session_idle` (5 s); the requester cannot read it
    // (no keys before the Accept) and it changes nothing. The request resent at 10 s gets
    // the same Accept again.
    assert!(default_config().session_idle < RETRY);
    s.expect(secs(12), "a connected by the second Accept", |s| {
        s.has(a, is_connected)
    });
    s.run_for(secs(60));
    assert!(!s.has(a, is_terminated), "{:?}", s.events(a));
    assert!(!s.has(b, is_terminated), "{:?}", s.events(b));
    assert_eq!(s.count(b, is_request), 1, "{:?}", s.events(b));
    assert_eq!(s.count(a, is_connected), 1, "{:?}", s.events(a));
    assert_eq!(s.count(b, is_connected), 1, "{:?}", s.events(b));
    assert_eq!(s.peer(a).connected_peers(), vec![s.id(b)]);
    assert_eq!(s.peer(b).connected_peers(), vec![s.id(a)]);
}

#[test]
fn retransmitted_request_is_shown_once() {
    let (mut s, a, b) = pair();
    s.connect(a, b);
    s.run_for(secs(25));
    // 3 on the schedule, and one at once when b's first probe came.
    assert_eq!(s.sent_by(s.addr(a), is_connect_request).len(), 4);
    assert_eq!(s.count(b, is_request), 1, "{:?}", s.events(b));
    assert_eq!(s.peer(b).pending_requests(), vec![s.id(a)]);
}

#[test]
fn rejected_request_that_is_resent_gets_reject_again() {
    let (mut s, a, b) = pair();
    s.drop_first(1, |m| matches!(m, Message::Reject { .. }));
    s.connect(a, b);
    s.expect(LIMIT, "request", |s| s.has(b, is_request));
    let ida = s.id(a);
    assert_eq!(s.reject(b, None), ida);
    s.expect(LIMIT, "rejected", |s| {
        s.has(a, |e| matches!(e, Event::Rejected { .. }))
    });
    let session = first_session(&s, a);
    let rejects = s.sent_by(s.addr(b), |m| matches!(m, Message::Reject { .. }));
    assert_eq!(rejects.len(), 2, "the resent request was rejected again");
    for r in &rejects {
        assert_eq!(
            r.message,
            Message::Reject {
                hs: Vec::new(),
                from: s.id(b),
                session
            }
        );
    }
    s.run_for(secs(60));
    // The first, the one sent at once when b's first hole-punching probe arrived
    // (punch.rs), and the resend whose Reject came through.
    assert_eq!(s.sent_by(s.addr(a), is_connect_request).len(), 3);
    assert_eq!(
        s.count(b, is_request),
        1,
        "not shown again: {:?}",
        s.events(b)
    );
    assert_eq!(
        s.events(a)
            .iter()
            .filter(|e| matches!(e, Event::Rejected { .. }))
            .collect::<Vec<_>>(),
        vec![&Event::Rejected { peer: s.id(b) }]
    );
    assert!(!s.has(a, is_connected) && !s.has(b, is_connected));
}

/// Peers 1, 2 and 3 ask peer 0, one second apart.
fn three_requests() -> (Sim, Vec<usize>) {
    println!("seed {SEED}");
    let mut s = Sim::new(SEED, NetConfig::perfect());
    let v = s.add_registered_peers(4, &default_config());
    for &p in &v[1..] {
        s.connect(p, v[0]);
        s.run_for(secs(1));
    }
    let ids: Vec<ClientId> = v[1..].iter().map(|&p| s.id(p)).collect();
    assert_eq!(s.peer(v[0]).pending_requests(), ids, "oldest first");
    (s, v)
}

#[test]
fn accept_and_reject_without_an_id_pick_the_oldest_request() {
    let (mut s, v) = three_requests();
    let (target, first, second, third) = (v[0], v[1], v[2], v[3]);
    assert_eq!(s.accept(target, None), s.id(first));
    assert_eq!(s.reject(target, None), s.id(second));
    assert_eq!(s.peer(target).pending_requests(), vec![s.id(third)]);
    s.expect(LIMIT, "answers arrive", |s| {
        s.has(first, is_connected) && s.has(second, |e| matches!(e, Event::Rejected { .. }))
    });
    assert!(!s.has(third, is_connected));
    assert!(!s.has(third, |e| matches!(e, Event::Rejected { .. })));
}

#[test]
fn accept_and_reject_with_an_id_pick_that_request() {
    let (mut s, v) = three_requests();
    let (target, first, second, third) = (v[0], v[1], v[2], v[3]);
    let (id1, id2, id3) = (s.id(first), s.id(second), s.id(third));
    assert_eq!(s.accept(target, Some(id2)), id2);
    assert_eq!(s.peer(target).pending_requests(), vec![id1, id3]);
    assert_eq!(s.reject(target, Some(id3)), id3);
    assert_eq!(s.peer(target).pending_requests(), vec![id1]);
    let err = s.command(target, |p, now| p.accept(now, Some(id3)));
    assert!(err.is_err(), "no request from {id3} any more");
    s.expect(LIMIT, "answers arrive", |s| {
        s.has(second, is_connected) && s.has(third, |e| matches!(e, Event::Rejected { .. }))
    });
    assert!(!s.has(first, is_connected));
    assert!(!s.has(first, |e| matches!(e, Event::Rejected { .. })));
    assert_eq!(s.peer(target).connected_peers(), vec![id2]);
}

// ---------------------------------------------------------------------- chat

#[test]
fn duplicate_chat_is_not_shown_twice_but_is_acknowledged_again() {
    let (mut s, a, b) = connected_pair();
    let (ida, session) = (s.id(a), first_session(&s, a));
    let chat = Message::Chat {
        from: ida,
        session,
        seq: 1,
        text: "hello".into(),
    };
    s.deliver_now(s.addr(a), s.addr(b), &chat);
    s.deliver_now(s.addr(a), s.addr(b), &chat);
    s.run_for(secs(1));
    assert_eq!(s.shown(b, ida), vec![(1, "hello".to_string())]);
    let acks = s.sent_by(s.addr(b), |m| {
        matches!(
            m,
            Message::Ack {
                seq: 1,
                cumulative: 1,
                ..
            }
        )
    });
    assert_eq!(acks.len(), 2, "every copy is acknowledged");
    assert_eq!(s.peer(b).stats().duplicates, 1);
}

#[test]
fn early_chat_is_held_and_shown_after_the_one_before_it_in_order() {
    let (mut s, a, b) = connected_pair();
    let ida = s.id(a);
    s.drop_first(1, |m| matches!(m, Message::Chat { seq: 1, .. }));
    s.send(a, None, "one");
    s.send(a, None, "two");
    // Number 2 arrives and is acknowledged, but not shown: 1 is missing.
    s.expect(LIMIT, "ack of 2", |s| {
        !s.sent_by(s.addr(b), |m| {
            matches!(
                m,
                Message::Ack {
                    seq: 2,
                    cumulative: 0,
                    ..
                }
            )
        })
        .is_empty()
    });
    assert!(s.shown(b, ida).is_empty(), "{:?}", s.events(b));
    s.expect(LIMIT, "both shown", |s| s.shown(b, ida).len() == 2);
    assert_eq!(
        s.shown(b, ida),
        vec![(1, "one".to_string()), (2, "two".to_string())]
    );
    s.expect(LIMIT, "both delivered", |s| {
        s.count(a, |e| matches!(e, Event::Delivered { .. })) == 2
    });
    assert_eq!(s.shown(b, ida).len(), 2);
}

#[test]
fn acknowledgements_of_chats_received_before_the_next_send_are_merged_into_one() {
    let (mut s, a, b) = connected_pair();
    let (ida, session, from) = (s.id(a), first_session(&s, a), s.addr(a));
    let to = s.addr(b);
    // Sealed by a, as a would send them.
    let mut chat = |seq: u64| {
        encode(&s.sealed_by(
            from,
            to,
            Message::Chat {
                from: ida,
                session,
                seq,
                text: format!("m{seq}"),
            },
        ))
    };
    let acks = |s: &Sim| -> Vec<(u64, u64)> {
        s.sent_by(s.addr(b), |m| matches!(m, Message::Ack { .. }))
            .iter()
            .map(|r| match r.message {
                Message::Ack {
                    seq, cumulative, ..
                } => (seq, cumulative),
                _ => unreachable!(),
            })
            .collect()
    };
    // A burst that a driver receives before it sends: 1, 2, a duplicate of 1, 3, then 5
    // (early: its acknowledgement says more than the cumulative one, so it goes on its own).
    let sealed: Vec<Vec<u8>> = [1, 2, 1, 3, 5, 4, 6].into_iter().map(&mut chat).collect();
    s.command(b, |p, now| {
        for d in &sealed[..5] {
            p.handle_datagram(now, from, d);
        }
    });
    assert_eq!(acks(&s), vec![(3, 3), (5, 3)]);
    // 4 fills the gap: both are shown and one acknowledgement covers everything.
    s.command(b, |p, now| {
        p.handle_datagram(now, from, &sealed[5]);
        p.handle_datagram(now, from, &sealed[6]);
    });
    assert_eq!(acks(&s), vec![(3, 3), (5, 3), (6, 6)]);
    let shown: Vec<u64> = s.shown(b, ida).iter().map(|(seq, _)| *seq).collect();
    assert_eq!(shown, vec![1, 2, 3, 4, 5, 6]);
    // Taken one by one, as the simulator does, every datagram gets its own.
    s.deliver_now(
        from,
        s.addr(b),
        &Message::Chat {
            from: ida,
            session,
            seq: 6,
            text: "m6".into(),
        },
    );
    assert_eq!(acks(&s).last(), Some(&(6, 6)));
    assert_eq!(acks(&s).len(), 4);
}

#[test]
fn delivered_chat_gets_delivered() {
    let (mut s, a, b) = connected_pair();
    let (ida, idb) = (s.id(a), s.id(b));
    assert_eq!(s.send(a, None, "hello"), vec![1]);
    assert!(s.has(a, |e| *e
        == Event::Sent {
            peer: idb,
            seq: 1,
            text: "hello".into()
        }));
    s.expect(LIMIT, "delivered", |s| {
        s.has(a, |e| matches!(e, Event::Delivered { .. }))
    });
    assert_eq!(s.shown(b, ida), vec![(1, "hello".to_string())]);
    s.run_for(secs(30));
    assert_eq!(
        s.count(a, |e| *e == Event::Delivered { peer: idb, seq: 1 }),
        1
    );
    assert!(!s.has(a, |e| matches!(e, Event::Undelivered { .. })));
    assert_eq!(s.peer(a).stats().retransmissions, 0);
}

#[test]
fn unacknowledged_chat_is_resent_then_reported_undelivered() {
    let (mut s, a, b) = connected_pair();
    let (ida, idb) = (s.id(a), s.id(b));
    let tries = default_config().chat.max_tries;
    // Every acknowledgement is lost; everything else gets through.
    s.drop_first(usize::MAX, |m| matches!(m, Message::Ack { .. }));
    let sent_at = s.now;
    s.send(a, None, "hello");
    s.expect(LIMIT, "undelivered", |s| {
        s.has(a, |e| matches!(e, Event::Undelivered { .. }))
    });
    let chats = s.sent_by(s.addr(a), |m| matches!(m, Message::Chat { .. }));
    assert_eq!(chats.len(), tries as usize, "sent max_tries times");
    let gaps: Vec<Duration> = chats.windows(2).map(|w| w[1].at - w[0].at).collect();
    for w in gaps.windows(2) {
        assert!(w[0] <= w[1], "the resend timeout backs off: {gaps:?}");
    }
    assert!(
        gaps.iter().all(|g| *g <= RETRY),
        "never beyond the retry interval: {gaps:?}"
    );
    assert_eq!(
        s.events(a)
            .iter()
            .filter(|e| matches!(e, Event::Undelivered { .. }))
            .count(),
        1
    );
    assert!(s.has(a, |e| *e == Event::Undelivered { peer: idb, seq: 1 }));
    assert!(!s.has(a, |e| matches!(e, Event::Delivered { .. })));
    let given_up = s
        .when(a, |e| matches!(e, Event::Undelivered { .. }))
        .unwrap();
    assert!(
        given_up - sent_at <= RETRY * tries,
        "{:?}",
        given_up - sent_at
    );
    // The receiver showed it once, however many copies came.
    assert_eq!(s.shown(b, ida), vec![(1, "hello".to_string())]);
    // The stream cannot go on in order past a message that never arrived, so the session
    // ends on both sides, and says why.
    assert!(s.has(a, |e| *e
        == Event::Terminated {
            peer: idb,
            reason: EndReason::Undeliverable
        }));
    assert_eq!(s.peer(a).connected_peers(), Vec::<u32>::new());
    s.expect(LIMIT, "the peer is told", |s| {
        s.has(b, |e| {
            *e == Event::Terminated {
                peer: ida,
                reason: EndReason::ByPeer,
            }
        })
    });
}

#[test]
fn a_message_after_a_lost_one_is_never_reported_delivered_unshown() {
    let (mut s, a, b) = connected_pair();
    let (ida, idb) = (s.id(a), s.id(b));
    // Every copy of message 1 is lost; message 2 arrives and is acknowledged on its own.
    s.drop_first(usize::MAX, |m| matches!(m, Message::Chat { seq: 1, .. }));
    s.send(a, None, "one");
    s.send(a, None, "two");
    s.expect(LIMIT, "the session ends", |s| s.has(a, is_terminated));
    assert!(
        s.shown(b, ida).is_empty(),
        "2 waits at b for 1, which never comes"
    );
    assert!(
        !s.has(a, |e| matches!(e, Event::Delivered { .. })),
        "nothing was shown, so nothing may be reported delivered: {:?}",
        s.events(a)
    );
    assert!(s.has(a, |e| *e == Event::Undelivered { peer: idb, seq: 1 }));
    assert!(s.has(a, |e| *e == Event::Undelivered { peer: idb, seq: 2 }));
    assert!(s.has(a, |e| *e
        == Event::Terminated {
            peer: idb,
            reason: EndReason::Undeliverable
        }));
    // Its own acknowledgement stopped the resends of message 2.
    let twos = s.sent_by(s.addr(a), |m| matches!(m, Message::Chat { seq: 2, .. }));
    assert_eq!(twos.len(), 1);
}

#[test]
fn a_ping_for_a_session_being_closed_is_answered_with_terminate_at_once() {
    let (mut s, a, b) = connected_pair();
    let idb = s.id(b);
    // a's Terminates are all lost, so b still thinks the session is open.
    s.drop_first(usize::MAX, |m| matches!(m, Message::Terminate { .. }));
    s.terminate(a, None);
    let terminates = |s: &Sim| {
        s.sent_by(s.addr(a), |m| matches!(m, Message::Terminate { .. }))
            .len()
    };
    let session = match &s.sent_by(s.addr(a), |m| matches!(m, Message::Terminate { .. }))[0].message
    {
        Message::Terminate { session, .. } => *session,
        other => unreachable!("{other:?}"),
    };
    let before = terminates(&s);
    s.deliver_now(s.addr(b), s.addr(a), &Message::Ping { from: idb, session });
    assert_eq!(
        terminates(&s),
        before + 1,
        "the Ping is answered with a Terminate now"
    );
    // And it does not bring the session back on a's side.
    assert!(s.peer(a).connected_peers().is_empty());
}

// ---------------------------------------------------------------------- terminate and leave

#[test]
fn terminate_is_resent_until_acknowledged_and_both_sides_see_terminated() {
    let (mut s, a, b) = connected_pair();
    let (ida, idb) = (s.id(a), s.id(b));
    s.drop_first(2, |m| matches!(m, Message::TerminateAck { .. }));
    assert_eq!(s.terminate(a, None), idb);
    s.expect(LIMIT, "both terminated", |s| {
        s.has(a, is_terminated) && s.has(b, is_terminated)
    });
    s.run_for(secs(60));
    let session = first_session(&s, a);
    let terminates = s.sent_by(s.addr(a), |m| matches!(m, Message::Terminate { .. }));
    assert_eq!(
        terminates.len(),
        3,
        "resent until the third is acknowledged"
    );
    assert!(terminates
        .iter()
        .all(|r| r.message == Message::Terminate { from: ida, session }));
    let ended = |i: usize, peer| {
        s.events(i)
            .into_iter()
            .filter(|e| matches!(e, Event::Terminated { peer: p, .. } if *p == peer))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ended(a, idb),
        vec![Event::Terminated {
            peer: idb,
            reason: EndReason::ByUs
        }]
    );
    assert_eq!(
        ended(b, ida),
        vec![Event::Terminated {
            peer: ida,
            reason: EndReason::ByPeer
        }]
    );
    assert!(s.peer(a).connected_peers().is_empty());
    assert!(s.peer(b).connected_peers().is_empty());
}

#[test]
fn terminate_never_acknowledged_ends_unanswered_after_terminate_tries() {
    let (mut s, a, b) = connected_pair();
    let idb = s.id(b);
    s.set_down(s.addr(b), true);
    let start = s.now;
    s.terminate(a, None);
    s.expect(LIMIT, "a terminated", |s| s.has(a, is_terminated));
    let terminates = s.sent_by(s.addr(a), |m| matches!(m, Message::Terminate { .. }));
    assert_eq!(
        terminates.len(),
        default_config().terminate_tries as usize,
        "terminate_tries sends"
    );
    assert_eq!(
        s.events(a).last(),
        Some(&Event::Terminated {
            peer: idb,
            reason: EndReason::Unanswered
        })
    );
    let ended = s.when(a, is_terminated).unwrap();
    assert!(ended - start <= RETRY * 6, "{:?}", ended - start);
    s.run_for(secs(60));
    assert_eq!(s.count(a, is_terminated), 1);
    assert_eq!(
        s.sent_by(s.addr(a), |m| matches!(m, Message::Terminate { .. }))
            .len(),
        default_config().terminate_tries as usize,
        "no resend after giving up"
    );
}

#[test]
fn leave_is_resent_until_leave_ack_and_ends_left_acked() {
    let (mut s, a, _b) = pair();
    let ida = s.id(a);
    s.drop_first(2, |m| matches!(m, Message::LeaveAck { .. }));
    s.leave(a);
    s.expect(LIMIT, "left", |s| s.has(a, is_left));
    assert_eq!(
        s.events(a).last(),
        Some(&Event::Left { server_acked: true })
    );
    assert_eq!(
        s.sent_by(s.addr(a), |m| matches!(m, Message::Leave { .. }))
            .len(),
        3,
        "resent until the third LeaveAck got through"
    );
    assert!(s.peer(a).is_finished());
    assert!(s.registry.get(ida).is_none(), "the server forgot it");
    assert_eq!(s.count(a, is_left), 1);
}

#[test]
fn leave_with_the_server_gone_ends_left_unacked_after_server_tries() {
    let (mut s, a, _b) = pair();
    s.set_down(SERVER, true);
    let start = s.now;
    s.leave(a);
    s.expect(LIMIT, "left", |s| s.has(a, is_left));
    let cfg = default_config();
    assert_eq!(
        s.events(a).last(),
        Some(&Event::Left {
            server_acked: false
        })
    );
    assert_eq!(
        s.sent_by(s.addr(a), |m| matches!(m, Message::Leave { .. }))
            .len(),
        cfg.server_tries as usize
    );
    let left = s.when(a, is_left).unwrap();
    assert_eq!(left - start, cfg.server_retry * cfg.server_tries);
    assert!(s.has(a, |e| matches!(e, Event::Notice { .. })), "told why");
    assert!(s.peer(a).is_finished());
}

#[test]
fn terminate_while_waiting_for_an_answer_cancels_the_request() {
    let (mut s, a, b) = pair();
    let (ida, idb) = (s.id(a), s.id(b));
    s.connect(a, b);
    s.expect(LIMIT, "request", |s| s.has(b, is_request));
    assert_eq!(s.terminate(a, Some(idb)), idb);
    assert_eq!(
        s.events(a).last(),
        Some(&Event::Terminated {
            peer: idb,
            reason: EndReason::Cancelled
        }),
        "shown at once"
    );
    s.expect(LIMIT, "b's request withdrawn", |s| s.has(b, is_terminated));
    assert_eq!(
        s.events(b).last(),
        Some(&Event::Terminated {
            peer: ida,
            reason: EndReason::Cancelled
        })
    );
    assert!(s.peer(b).pending_requests().is_empty());
    assert!(s.command(b, |p, now| p.accept(now, None)).is_err());
    s.run_for(secs(60));
    assert_eq!(s.count(a, is_terminated), 1, "{:?}", s.events(a));
    // The first, and the one sent at once when b's first probe arrived; no resend.
    assert_eq!(
        s.sent_by(s.addr(a), is_connect_request).len(),
        2,
        "no resend"
    );
    assert!(!s.has(a, |e| matches!(e, Event::NoAnswer { .. })));
}

#[test]
fn connect_after_terminate_works_again() {
    let (mut s, a, b) = connected_pair();
    let (ida, idb) = (s.id(a), s.id(b));
    s.send(a, None, "first");
    s.expect(LIMIT, "delivered", |s| {
        s.has(a, |e| matches!(e, Event::Delivered { .. }))
    });
    s.terminate(a, None);
    s.expect(LIMIT, "both terminated", |s| {
        s.has(a, is_terminated) && s.has(b, is_terminated)
    });
    s.connect(a, b);
    s.expect(LIMIT, "second request", |s| s.count(b, is_request) == 2);
    s.accept(b, Some(ida));
    s.expect(LIMIT, "connected again", |s| s.count(a, is_connected) == 2);
    assert_eq!(s.count(b, is_connected), 2);
    let sessions: Vec<SessionId> = s
        .sent_by(s.addr(a), is_connect_request)
        .iter()
        .map(|r| session_of(&r.message))
        .collect();
    assert_ne!(sessions.first(), sessions.last(), "a new session id");
    assert_eq!(s.send(a, None, "second"), vec![1], "numbering starts again");
    s.expect(LIMIT, "delivered", |s| {
        s.count(a, |e| matches!(e, Event::Delivered { .. })) == 2
    });
    assert_eq!(
        s.shown(b, ida),
        vec![(1, "first".to_string()), (1, "second".to_string())]
    );
    assert_eq!(s.peer(a).connected_peers(), vec![idb]);
}

// ---------------------------------------------------------------------- strangers

#[test]
fn accept_from_a_third_address_or_for_another_session_changes_nothing() {
    let (mut s, a, b) = pair();
    let idb = s.id(b);
    s.connect(a, b);
    s.expect(LIMIT, "request", |s| s.has(b, is_request));
    let session = first_session(&s, a);
    let forged = [
        (
            stranger(),
            Message::Accept {
                hs: Vec::new(),
                from: idb,
                session,
            },
        ),
        (
            s.addr(b),
            Message::Accept {
                hs: Vec::new(),
                from: idb,
                session: session.wrapping_add(1),
            },
        ),
        (
            s.addr(b),
            Message::Chat {
                from: idb,
                session: session.wrapping_add(1),
                seq: 1,
                text: "not yours".into(),
            },
        ),
    ];
    for (from, msg) in &forged {
        s.deliver_now(*from, s.addr(a), msg);
    }
    assert!(!s.has(a, is_connected), "{:?}", s.events(a));
    assert!(s.peer(a).connected_peers().is_empty());
    assert!(s.peer(a).stats().ignored >= 3);
    // The real answer still opens the session, once.
    s.accept(b, None);
    s.expect(LIMIT, "connected", |s| s.has(a, is_connected));
    s.run_for(secs(30));
    assert_eq!(s.count(a, is_connected), 1);
    assert_eq!(s.peer(a).connected_peers(), vec![idb]);
}

#[test]
fn chat_from_a_third_address_or_with_a_wrong_session_changes_nothing() {
    let (mut s, a, b) = connected_pair();
    let (ida, idb) = (s.id(a), s.id(b));
    let session = first_session(&s, a);
    let chat = |session, text: &str| Message::Chat {
        from: idb,
        session,
        seq: 1,
        text: text.into(),
    };
    s.deliver_now(stranger(), s.addr(a), &chat(session, "from a stranger"));
    s.deliver_now(s.addr(b), s.addr(a), &chat(session ^ 1, "wrong session"));
    s.deliver_now(
        stranger(),
        s.addr(a),
        &Message::Terminate { from: idb, session },
    );
    s.run_for(secs(1));
    assert!(s.shown(a, idb).is_empty(), "{:?}", s.events(a));
    assert!(!s.has(a, is_terminated));
    assert_eq!(s.peer(a).connected_peers(), vec![idb]);
    assert!(s.peer(a).stats().ignored >= 3);
    // Message number 1 of the real session is still to come, and is shown.
    s.send(b, Some(ida), "real");
    s.expect(LIMIT, "shown", |s| !s.shown(a, idb).is_empty());
    assert_eq!(s.shown(a, idb), vec![(1, "real".to_string())]);
    assert!(!s.has(b, is_terminated), "{:?}", s.events(b));
}

#[test]
fn an_unasked_lookup_answer_changes_nothing() {
    let (mut s, a, b) = connected_pair();
    let idb = s.id(b);
    let before = s.events(a).len();
    let sent_before = s.sent_by(s.addr(a), |_| true).len();
    // From the server's own address, but nobody asked: a Found for a stranger, an Inactive
    // for the connected peer.
    s.deliver_now(
        SERVER,
        s.addr(a),
        &Message::Found {
            key: [0; 32],
            id: 7,
            addr: stranger(),
            name: None,
            display_name: None,
            nonce: 0,
        },
    );
    s.deliver_now(SERVER, s.addr(a), &Message::Inactive { id: idb, nonce: 0 });
    // From a stranger pretending to be the server: the connected peer is "elsewhere".
    s.deliver_now(
        stranger(),
        s.addr(a),
        &Message::Found {
            key: [0; 32],
            id: idb,
            addr: stranger(),
            name: None,
            display_name: None,
            nonce: 0,
        },
    );
    assert_eq!(s.events(a).len(), before, "no event: {:?}", s.events(a));
    assert_eq!(
        s.sent_by(s.addr(a), |_| true).len(),
        sent_before,
        "nothing sent because of them"
    );
    assert_eq!(s.peer(a).connected_peers(), vec![idb]);
    assert!(s.peer(a).stats().ignored >= 3);
    // The session still works with the real address.
    s.send(a, None, "still here");
    s.expect(LIMIT, "delivered", |s| {
        s.has(a, |e| matches!(e, Event::Delivered { .. }))
    });
}

#[test]
fn a_request_claiming_a_connected_peers_id_from_another_address_changes_nothing() {
    let (mut s, a, b) = connected_pair();
    let idb = s.id(b);
    // Session id 0 is smaller than any real one: from the real address it would replace
    // the session. From a third address it must not.
    s.deliver_now(
        stranger(),
        s.addr(a),
        &Message::ConnectRequest {
            hs: Vec::new(),
            from: idb,
            session: 0,
        },
    );
    s.run_for(secs(1));
    assert!(!s.has(a, is_terminated), "{:?}", s.events(a));
    assert_eq!(s.count(a, is_request), 0, "{:?}", s.events(a));
    assert_eq!(s.peer(a).connected_peers(), vec![idb]);
}

#[test]
fn server_answers_from_a_third_address_are_ignored_while_registering() {
    let t0 = Instant::now();
    let mut p = Peer::with_seed(default_config(), t0, SEED);
    let (register, _) = drain(&mut p);
    let forged = Message::Registered {
        key: [0; 32],
        id: 66,
        token: 1,
        ttl_secs: 30,
        nonce: 0,
        turn: None,
    };
    p.handle_datagram(t0, stranger(), &encode(&forged));
    let refusal = Message::Error {
        code: ErrorCode::IdTaken,
        detail: "forged".into(),
        nonce: 0,
    };
    p.handle_datagram(t0, stranger(), &encode(&refusal));
    let (sent, events) = drain(&mut p);
    assert!(sent.is_empty() && events.is_empty(), "{sent:?} {events:?}");
    assert_eq!(p.id(), None);
    assert!(!p.is_finished());
    // The real server's answer is taken.
    let real = Message::Registered {
        key: [0; 32],
        id: 3,
        token: 2,
        ttl_secs: 30,
        nonce: 0,
        turn: None,
    };
    p.handle_datagram(t0, SERVER, &encode(&echo(&register, real)));
    assert_eq!(p.id(), Some(3));
}

// ---------------------------------------------------------------------- the server

#[test]
fn forged_server_answers_from_the_servers_address_change_nothing() {
    // Off the path, an attacker can send from the server's address but cannot see our
    // nonces: its NotRegistered and Registered{4242, ttl 2^32-1} (which once made a client
    // take id 4242 and stop its keepalives) are not answers to anything we asked.
    let (mut s, a, _b) = pair();
    let id = s.id(a);
    let before = s.events(a).len();
    let addr = s.addr(a);
    for nonce in [0, 1, 0xdead_beef] {
        s.inject(
            SERVER,
            addr,
            Message::Error {
                code: ErrorCode::NotRegistered,
                detail: "forged".into(),
                nonce,
            },
        );
        s.inject(
            SERVER,
            addr,
            Message::Registered {
                key: [0; 32],
                id: 4242,
                token: 1,
                ttl_secs: u32::MAX,
                nonce,
                turn: None,
            },
        );
    }
    let t = s.now;
    s.run_for(secs(60));
    assert_eq!(s.id(a), id);
    assert_eq!(s.events(a).len(), before, "{:?}", &s.events(a)[before..]);
    assert!(!s
        .sent_by(addr, |m| matches!(m, Message::Register { .. }))
        .iter()
        .any(|r| r.at > t));
    // Its keepalives went on, every third of the real time to live (30 s).
    let keepalives = s
        .sent_by(addr, |m| matches!(m, Message::Keepalive { .. }))
        .iter()
        .filter(|r| r.at > t)
        .count();
    assert!(keepalives >= 5, "{keepalives} keepalives in 60 s");
}

#[test]
fn no_registration_answer_is_fatal_no_rendezvous_server() {
    println!("seed {SEED}");
    let mut s = Sim::new(SEED, NetConfig::perfect());
    s.set_down(SERVER, true);
    let a = s.add_peer(default_config());
    s.expect(LIMIT, "fatal", |s| {
        s.has(a, |e| matches!(e, Event::Fatal { .. }))
    });
    let cfg = default_config();
    match s.events(a).as_slice() {
        [Event::Fatal { message }] => {
            assert!(message.contains("no rendezvous server"), "{message:?}")
        }
        other => panic!("expected one Fatal event, got {other:?}"),
    }
    let registers = s.sent_by(s.addr(a), |m| matches!(m, Message::Register { .. }));
    assert_eq!(registers.len(), cfg.server_tries as usize);
    let fatal = s.when(a, |e| matches!(e, Event::Fatal { .. })).unwrap();
    assert_eq!(fatal - s.start, cfg.server_retry * cfg.server_tries);
    assert!(s.peer(a).is_finished());
    assert!(s.peer(a).id().is_none());
    assert_eq!(s.next_event_time(), None, "nothing left to do");
}

#[test]
fn late_not_registered_while_registering_again_is_not_fatal() {
    let t0 = Instant::now();
    let mut p = Peer::with_seed(default_config(), t0, SEED);
    let registered = Message::Registered {
        key: [0; 32],
        id: 4,
        token: 7,
        ttl_secs: 30,
        nonce: 0,
        turn: None,
    };
    let (register, _) = drain(&mut p);
    p.handle_datagram(t0, SERVER, &encode(&echo(&register, registered.clone())));
    drain(&mut p);
    // The server forgot us; its answer to our Keepalive arrives twice (duplicated, or the
    // answers to two Keepalives).
    let t1 = t0 + secs(10);
    p.handle_timeout(t1);
    let (keepalive, _) = drain(&mut p);
    let forgotten = echo(
        &keepalive,
        Message::Error {
            code: p2pchat::wire::ErrorCode::NotRegistered,
            detail: "client 4 is not registered".into(),
            nonce: 0,
        },
    );
    p.handle_datagram(t1, SERVER, &encode(&forgotten));
    let (sent, events) = drain(&mut p);
    assert!(
        matches!(
            sent.as_slice(),
            [Message::Register {
                want_id: Some(4),
                ..
            }]
        ),
        "{sent:?}"
    );
    assert!(
        matches!(events.as_slice(), [Event::Notice { .. }]),
        "{events:?}"
    );
    p.handle_datagram(t1 + ms(5), SERVER, &encode(&forgotten));
    let (_, events) = drain(&mut p);
    assert!(
        !events.iter().any(|e| matches!(e, Event::Fatal { .. })),
        "a stale NotRegistered is no refusal of the new Register: {events:?}"
    );
    assert!(!p.is_finished());
    p.handle_datagram(t1 + ms(10), SERVER, &encode(&echo(&sent, registered)));
    let (_, events) = drain(&mut p);
    assert_eq!(events, vec![Event::Registered { id: 4, again: true }]);
}

// ---------------------------------------------------------------------- rate-limited registration

fn rate_limited() -> Message {
    Message::Error {
        code: ErrorCode::RateLimited,
        detail: "too many registrations from 10.0.1.1; wait".into(),
        nonce: 0,
    }
}

#[test]
fn a_rate_limited_registration_is_retried_and_the_user_told_why() {
    let t0 = Instant::now();
    let cfg = default_config();
    let mut p = Peer::with_seed(cfg.clone(), t0, SEED);
    let (register, _) = drain(&mut p);
    p.handle_datagram(t0, SERVER, &encode(&echo(&register, rate_limited())));
    let (_, events) = drain(&mut p);
    assert!(
        matches!(events.as_slice(), [Event::Notice { message }] if message.contains("too many registrations")),
        "{events:?}"
    );
    assert!(!p.is_finished());
    p.handle_timeout(t0 + cfg.server_retry);
    let (sent, _) = drain(&mut p);
    assert!(
        matches!(sent.as_slice(), [Message::Register { .. }]),
        "retried: {sent:?}"
    );
    let registered = Message::Registered {
        key: [0; 32],
        id: 4,
        token: 9,
        ttl_secs: 30,
        nonce: 0,
        turn: None,
    };
    p.handle_datagram(
        t0 + cfg.server_retry,
        SERVER,
        &encode(&echo(&sent, registered)),
    );
    let (_, events) = drain(&mut p);
    assert_eq!(
        events,
        vec![Event::Registered {
            id: 4,
            again: false
        }]
    );
}

#[test]
fn a_rate_limited_client_keeps_trying_says_so_once_and_gets_in() {
    let t0 = Instant::now();
    let cfg = default_config();
    let mut p = Peer::with_seed(cfg.clone(), t0, SEED);
    let mut now = t0;
    let (mut sent, _) = drain(&mut p);
    let mut notices = 0;
    let mut registers = 1;
    // Refused every time for far longer than the tries of one round.
    while now < t0 + cfg.retry_interval * 5 {
        if let Some(register) = sent.iter().rev().find(|m| m.is_server_request()) {
            p.handle_datagram(
                now,
                SERVER,
                &encode(&echo(std::slice::from_ref(register), rate_limited())),
            );
        }
        now = p.poll_timeout().expect("still trying");
        p.handle_timeout(now);
        let (s, events) = drain(&mut p);
        registers += s
            .iter()
            .filter(|m| matches!(m, Message::Register { .. }))
            .count();
        notices += events
            .iter()
            .filter(|e| matches!(e, Event::Notice { .. }))
            .count();
        assert!(
            !events.iter().any(|e| matches!(e, Event::Fatal { .. })),
            "rate-limited is not refused: {events:?}"
        );
        if !s.is_empty() {
            sent = s;
        }
    }
    assert!(!p.is_finished());
    assert_eq!(notices, 1, "told once why");
    assert!(
        registers > cfg.server_tries as usize * 2,
        "{registers} Registers"
    );
    // The server lets it in at last: it answers the next Register.
    let sent = loop {
        now = p.poll_timeout().expect("still trying");
        p.handle_timeout(now);
        let (s, _) = drain(&mut p);
        if s.iter().any(|m| matches!(m, Message::Register { .. })) {
            break s;
        }
    };
    let registered = Message::Registered {
        key: [0; 32],
        id: 9,
        token: 1,
        ttl_secs: 30,
        nonce: 0,
        turn: None,
    };
    p.handle_datagram(now, SERVER, &encode(&echo(&sent, registered)));
    let (_, events) = drain(&mut p);
    assert_eq!(
        events,
        vec![Event::Registered {
            id: 9,
            again: false
        }]
    );
}

// ---------------------------------------------------------------------- send failures

#[test]
fn a_refused_send_to_the_server_or_a_peer_is_one_event_and_elsewhere_only_logged() {
    use p2pchat::peer::{SendError, SendTarget, SEND_ERROR_QUIET};
    let t0 = Instant::now();
    let mut p = Peer::with_seed(default_config(), t0, SEED);
    drain(&mut p);
    let failed = |events: &[Event]| -> Vec<Event> {
        events
            .iter()
            .filter(|e| matches!(e, Event::SendFailed { .. }))
            .cloned()
            .collect()
    };
    p.handle_send_error(t0, SERVER, SendError::NoRoute);
    let (_, events) = drain(&mut p);
    assert_eq!(
        failed(&events),
        vec![Event::SendFailed {
            to: SERVER,
            target: SendTarget::Server,
            error: SendError::NoRoute
        }]
    );
    // Every resend fails the same way: said once per quiet period, then again.
    p.handle_send_error(t0 + secs(1), SERVER, SendError::NoRoute);
    assert!(failed(&drain(&mut p).1).is_empty());
    p.handle_send_error(t0 + SEND_ERROR_QUIET, SERVER, SendError::NoRoute);
    assert_eq!(failed(&drain(&mut p).1).len(), 1);
    // An address that is neither the server nor a session's peer (a probe's candidate).
    p.handle_send_error(t0, stranger(), SendError::WrongFamily);
    assert!(failed(&drain(&mut p).1).is_empty());
}

#[test]
fn a_refused_send_to_a_connected_peer_names_the_peer() {
    use p2pchat::peer::{SendError, SendTarget};
    let (mut s, a, b) = connected_pair();
    let (idb, addr_b) = (s.id(b), s.addr(b));
    s.command(a, |p, now| {
        p.handle_send_error(now, addr_b, SendError::Denied)
    });
    let events = s.events(a);
    assert!(
        events.contains(&Event::SendFailed {
            to: addr_b,
            target: SendTarget::Peer(idb),
            error: SendError::Denied
        }),
        "{events:?}"
    );
}
