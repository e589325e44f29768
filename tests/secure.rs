//! End-to-end encryption and authenticated peers (issue 13), on the simulated network: an
//! attacker who records, modifies, injects and replays datagrams achieves nothing; a
//! stranger cannot claim someone's id or name; a peer that restarts replaces its session
//! at once; a name whose key changed is refused until `trust`.

mod sim;

use std::net::SocketAddr;
use std::time::Duration;

use p2pchat::identity::Identity;
use p2pchat::peer::{EndReason, Event, PeerConfig};
use p2pchat::wire::{self, Message};
use sim::{default_config, patient_config, seeds, NetConfig, Sim};

const LIMIT: Duration = Duration::from_secs(300);
const SEED: u64 = 13;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn named(name: &str) -> PeerConfig {
    let mut c = default_config();
    c.name = Some(name.into());
    c
}

fn is_request(e: &Event) -> bool {
    matches!(e, Event::Request { .. })
}

fn is_connected(e: &Event) -> bool {
    matches!(e, Event::Connected { .. })
}

fn is_message(e: &Event) -> bool {
    matches!(e, Event::Message { .. })
}

fn is_terminated(e: &Event) -> bool {
    matches!(e, Event::Terminated { .. })
}

/// alice (a) and bob (b), registered with their names, connected (alice asked).
fn connected(seed: u64) -> (Sim, usize, usize) {
    println!("seed {seed}");
    let mut s = Sim::new(seed, NetConfig::perfect());
    let a = s.add_peer(named("alice"));
    let b = s.add_peer(named("bob"));
    s.expect(LIMIT, "registered", |s| s.registered(a) && s.registered(b));
    s.run_for(secs(1));
    s.connect(a, b);
    s.expect(LIMIT, "bob sees the request", |s| s.has(b, is_request));
    let ida = s.id(a);
    s.accept(b, Some(ida));
    s.expect(LIMIT, "alice is connected", |s| s.has(a, is_connected));
    (s, a, b)
}

/// Every datagram that went between the two peers' addresses, as sent.
fn between(s: &Sim, x: SocketAddr, y: SocketAddr) -> Vec<(SocketAddr, SocketAddr, Message)> {
    s.log
        .iter()
        .filter(|r| (r.from == x && r.to == y) || (r.from == y && r.to == x))
        .map(|r| (r.from, r.to, r.wire.clone()))
        .collect()
}

#[test]
fn nothing_of_a_conversation_travels_in_clear() {
    let (mut s, a, b) = connected(SEED);
    s.send(a, None, "the-marker-of-alice");
    s.send(b, None, "the-marker-of-bob");
    s.expect(LIMIT, "both shown", |s| {
        s.has(a, is_message) && s.has(b, is_message)
    });
    let (x, y) = (s.addr(a), s.addr(b));
    let all = between(&s, x, y);
    assert!(all.len() >= 6, "{all:?}");
    for (_, _, m) in &all {
        // Only the handshake, sealed datagrams and hole-punching probes (our id and the
        // introduction's secret, before any session), and no marker in any byte.
        assert!(
            matches!(
                m,
                Message::ConnectRequest { .. }
                    | Message::Accept { .. }
                    | Message::Reject { .. }
                    | Message::Sealed { .. }
                    | Message::Probe { .. }
            ),
            "{m:?}"
        );
        let bytes = wire::encode(m);
        for marker in [&b"the-marker"[..], b"alice", b"bob", b"Chat", b"Ack"] {
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker),
                "{marker:?} readable in {m:?}"
            );
        }
    }
}

/// The attacker of the issue: it records every datagram between alice and bob, then
/// replays each, bit-flips each, and sends session messages in clear with the right ids
/// and session, from the peers' own addresses. Nothing is shown twice, nothing new is
/// shown, no session ends, no event at all.
#[test]
fn an_attacker_that_replays_modifies_and_injects_achieves_nothing() {
    let (mut s, a, b) = connected(SEED);
    for k in 0..5 {
        s.send(a, None, &format!("a{k}"));
        s.send(b, None, &format!("b{k}"));
    }
    s.expect(LIMIT, "all shown", |s| {
        s.count(a, is_message) == 5 && s.count(b, is_message) == 5
    });
    s.run_for(secs(2));
    let (x, y) = (s.addr(a), s.addr(b));
    let (ida, idb) = (s.id(a), s.id(b));
    let recorded = between(&s, x, y);
    let events = (s.events(a).len(), s.events(b).len());
    let refused = (s.peer(a).stats().refused, s.peer(b).stats().refused);
    let session = match recorded
        .iter()
        .find(|(_, _, m)| matches!(m, Message::Sealed { .. }))
    {
        Some((_, _, Message::Sealed { session, .. })) => *session,
        _ => panic!("no sealed datagram"),
    };
    let mut sent = 0u64;
    // Replays, straight from the sender's address. A replayed probe is not refused by the
    // secure layer (it is not of a session): it is only heard again, which changes nothing
    // (the events and sessions below say so); it is not counted.
    for (from, to, m) in &recorded {
        s.deliver_now(*from, *to, m);
        sent += u64::from(!matches!(m, Message::Probe { .. }));
    }
    // Modified: each bit position of the sealed data flipped in turn, and the counter moved.
    for (from, to, m) in &recorded {
        if let Message::Sealed {
            from: f,
            session,
            n,
            data,
        } = m
        {
            for i in [0, data.len() / 2, data.len() - 1] {
                let mut bent = data.clone();
                bent[i] ^= 0x40;
                let m = Message::Sealed {
                    from: *f,
                    session: *session,
                    n: *n,
                    data: bent,
                };
                deliver_raw(&mut s, *from, *to, &m);
                sent += 1;
            }
            let moved = Message::Sealed {
                from: *f,
                session: *session,
                n: n + 1000,
                data: data.clone(),
            };
            deliver_raw(&mut s, *from, *to, &moved);
            sent += 1;
        }
    }
    // Injected in clear, with the right ids, session and addresses.
    for (from, to, id) in [(x, y, ida), (y, x, idb)] {
        for m in [
            Message::Terminate { from: id, session },
            Message::Chat {
                from: id,
                session,
                seq: 6,
                text: "forged".into(),
            },
            Message::Ping { from: id, session },
        ] {
            deliver_raw(&mut s, from, to, &m);
            sent += 1;
        }
    }
    s.run_for(secs(30));
    assert_eq!(
        (s.events(a).len(), s.events(b).len()),
        events,
        "no event: {:?} {:?}",
        &s.events(a)[events.0..],
        &s.events(b)[events.1..]
    );
    assert_eq!(s.count(a, is_message), 5);
    assert_eq!(s.count(b, is_message), 5);
    assert!(!s.has(a, is_terminated) && !s.has(b, is_terminated));
    assert_eq!(s.peer(a).connected_peers(), vec![idb]);
    assert_eq!(s.peer(b).connected_peers(), vec![ida]);
    let now_refused = (s.peer(a).stats().refused, s.peer(b).stats().refused);
    let more = (now_refused.0 - refused.0) + (now_refused.1 - refused.1);
    // Every datagram but the replayed handshake resends (answered as resends) is refused.
    assert!(more + 4 >= sent, "refused {more} of {sent}");
    // The session still works.
    s.send(a, None, "after");
    s.expect(LIMIT, "shown after the attack", |s| {
        s.count(b, is_message) == 6
    });
}

/// A sealed datagram captured on the way and replayed from another address before the
/// original arrives is refused on its address, unopened: the original, when it comes, is
/// still shown at once (the copy did not take its counter), and exactly once.
#[test]
fn a_sealed_datagram_replayed_from_elsewhere_first_does_not_spoil_the_original() {
    let (mut s, a, b) = connected(SEED);
    let (x, y) = (s.addr(a), s.addr(b));
    let ida = s.id(a);
    // Hold back alice's first datagram with the chat "held" (as an on-path attacker would
    // that races the original).
    s.drop_first_where(1, move |p| {
        p.from == x && matches!(p.message, Message::Chat { text, .. } if text == "held")
    });
    s.send(a, None, "held");
    s.run_for(Duration::from_millis(1));
    let captured = s
        .log
        .iter()
        .rev()
        .find(|r| r.from == x && matches!(&r.message, Message::Chat { text, .. } if text == "held"))
        .map(|r| r.wire.clone())
        .expect("the chat was sent");
    assert!(matches!(captured, Message::Sealed { .. }), "{captured:?}");
    assert!(s.shown(b, ida).is_empty());
    let refused = s.peer(b).stats().refused;
    s.deliver_now("10.9.9.9:1".parse().unwrap(), y, &captured);
    s.run_for(Duration::from_millis(1));
    assert_eq!(
        s.peer(b).stats().refused,
        refused + 1,
        "the copy is refused"
    );
    assert!(s.shown(b, ida).is_empty());
    s.deliver_now(x, y, &captured);
    s.run_for(Duration::from_millis(1));
    let shown: Vec<String> = s.shown(b, ida).into_iter().map(|(_, t)| t).collect();
    assert_eq!(
        shown,
        vec!["held".to_string()],
        "the original is shown at once"
    );
    s.run_for(secs(10));
    assert_eq!(s.shown(b, ida).len(), 1, "shown once");
}

/// `deliver_now` without the sim's help (it would seal a clear message with the peer's keys).
fn deliver_raw(s: &mut Sim, from: SocketAddr, to: SocketAddr, m: &Message) {
    let stranger: SocketAddr = "10.9.9.9:1".parse().unwrap();
    // Deliver "from" the peer's address: build the bytes here, hand them over directly.
    let bytes = wire::encode(m);
    let i = s.nodes.iter().position(|n| n.addr == to).expect("a peer");
    let now = s.now;
    s.nodes[i].peer.handle_datagram(now, from, &bytes);
    // Drain what it answered through the network (nothing is expected).
    let _ = stranger;
    s.run_for(Duration::from_millis(1));
}

#[test]
fn an_unregistered_socket_claiming_alices_id_and_name_is_refused_and_never_shown() {
    println!("seed {SEED}");
    let mut s = Sim::new(SEED, NetConfig::perfect());
    let a = s.add_peer(named("alice"));
    let b = s.add_peer(named("bob"));
    s.expect(LIMIT, "registered", |s| s.registered(a) && s.registered(b));
    s.run_for(secs(1));
    let (ida, idb, bob) = (s.id(a), s.id(b), s.addr(b));
    // Mallory: a key of her own, bob's public key from the server, alice's id; a valid
    // IK handshake, from an address the server does not know.
    let mallory_addr: SocketAddr = "10.0.7.7:4000".parse().unwrap();
    let mut mallory = Sim::new(SEED, NetConfig::perfect());
    let _ = &mut mallory;
    let m = forged_request(&s, ida, idb, 77);
    s.deliver_now(mallory_addr, bob, &m);
    s.run_for(secs(5));
    assert!(!s.has(b, is_request), "{:?}", s.events(b));
    assert!(
        s.has(
            b,
            |e| matches!(e, Event::Notice { message } if message.contains("claiming to be client"))
        ),
        "{:?}",
        s.events(b)
    );
    assert!(s.peer(b).pending_requests().is_empty());
    // bob connecting to alice meanwhile reaches the real alice.
    s.connect(b, a);
    s.expect(LIMIT, "alice asked", |s| s.has(a, is_request));
    s.accept(a, Some(idb));
    s.expect(LIMIT, "bob connected", |s| s.has(b, is_connected));
    s.send(b, None, "for alice only");
    s.expect(LIMIT, "alice got it", |s| s.has(a, is_message));
    assert!(s
        .log
        .iter()
        .all(|r| r.to != mallory_addr || !matches!(r.message, Message::Chat { .. })));
}

/// A request with a real Noise IK first message, made with a key of the attacker's own,
/// to `to`'s published key, claiming to be `from`.
fn forged_request(s: &Sim, from: u32, to: u32, session: u64) -> Message {
    let key = s.registry.get(to).expect("registered").key;
    let attacker = Identity::generate();
    let mut prologue = b"p2pchat v2".to_vec();
    prologue.extend_from_slice(&from.to_be_bytes());
    prologue.extend_from_slice(&to.to_be_bytes());
    prologue.extend_from_slice(&session.to_be_bytes());
    let mut hs = snow::Builder::new(p2pchat::identity::PEER_PATTERN.parse().unwrap())
        .local_private_key(attacker.secret())
        .unwrap()
        .remote_public_key(&key)
        .unwrap()
        .prologue(&prologue)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut msg1 = vec![0u8; 256];
    let now_ns = 4_000_000_000_000_000_000u64;
    let n = hs.write_message(&now_ns.to_be_bytes(), &mut msg1).unwrap();
    msg1.truncate(n);
    Message::ConnectRequest {
        from,
        session,
        hs: msg1,
    }
}

#[test]
fn a_blind_reset_and_a_replayed_old_request_end_nothing() {
    let (mut s, a, b) = connected(SEED);
    let (ida, x, y) = (s.id(a), s.addr(a), s.addr(b));
    // The request of this session, recorded.
    let old = between(&s, x, y)
        .into_iter()
        .find(|(_, _, m)| matches!(m, Message::ConnectRequest { .. }))
        .expect("a request")
        .2;
    let events = s.events(b).len();
    // Session 0 from alice's address, with a handshake of garbage and with none.
    for hs in [vec![], vec![7u8; 96]] {
        deliver_raw(
            &mut s,
            x,
            y,
            &Message::ConnectRequest {
                from: ida,
                session: 0,
                hs,
            },
        );
    }
    // The old request, replayed.
    deliver_raw(&mut s, x, y, &old);
    s.run_for(secs(30));
    assert_eq!(s.events(b).len(), events, "{:?}", &s.events(b)[events..]);
    assert!(!s.has(a, is_terminated) && !s.has(b, is_terminated));
    s.send(a, None, "still here");
    s.expect(LIMIT, "shown", |s| s.has(b, is_message));
}

#[test]
fn a_peer_that_restarts_with_its_key_replaces_its_old_session_at_once() {
    let (mut s, a, b) = connected(SEED);
    let (ida, idb) = (s.id(a), s.id(b));
    // alice crashes (nothing sent) and starts again with the same key on the same address
    // (so the server gives her the same id back).
    let mut cfg = named("alice");
    cfg.server = sim::SERVER;
    cfg.seal_limit = 0;
    cfg.identity = identity_of(&s, a);
    cfg.wall_clock = sim::SIM_WALL_CLOCK + (s.now - s.start);
    let now = s.now;
    s.nodes[a].peer = p2pchat::peer::Peer::with_seed(cfg, now, 99);
    s.command(a, |_, _| ());
    s.run_for(secs(1));
    assert_eq!(s.id(a), ida, "the same id back");
    let asked = s.now;
    s.connect(a, b);
    s.expect(secs(3), "bob ends the old session at once", |s| {
        s.has(b, |e| {
            *e == Event::Terminated {
                peer: ida,
                reason: EndReason::Replaced,
            }
        })
    });
    assert!(s.now - asked < secs(3));
    s.expect(secs(3), "and shows the new request", |s| {
        s.count(b, is_request) == 2
    });
    s.accept(b, Some(ida));
    s.expect(LIMIT, "connected again", |s| s.count(a, is_connected) == 2);
    s.send(a, None, "back");
    s.expect(LIMIT, "shown", |s| {
        s.has(
            b,
            |e| matches!(e, Event::Message { text, .. } if text == "back"),
        )
    });
    let _ = idb;
}

fn identity_of(s: &Sim, i: usize) -> Identity {
    Identity::from_secret(*s.peer(i).config().identity.secret())
}

#[test]
fn a_name_whose_key_changed_is_refused_until_trust() {
    let (mut s, a, b) = connected(SEED);
    let ida = s.id(a);
    assert!(s.peer(a).pinned("bob").is_some(), "bob pinned on first use");
    s.terminate(a, Some(s.id(b)));
    s.run_for(secs(5));
    // bob leaves; "bob" is claimed by someone else, with another key.
    s.leave(b);
    s.run_for(secs(5));
    let m = s.add_peer(named("bob"));
    s.expect(LIMIT, "the new bob registered", |s| s.registered(m));
    s.run_for(secs(2));
    s.command(a, |p, now| {
        p.connect_to(now, &p2pchat::peer::Target::Name("bob".into()))
    })
    .unwrap();
    s.expect(LIMIT, "key_changed", |s| {
        s.has(
            a,
            |e| matches!(e, Event::KeyChanged { name, .. } if name == "bob"),
        )
    });
    s.run_for(secs(20));
    assert!(!s.has(m, is_request), "nothing was sent to the new bob");
    // The person checks the new fingerprint and trusts it.
    assert!(s.command(a, |p, _| p.trust("bob")).is_some());
    s.command(a, |p, now| {
        p.connect_to(now, &p2pchat::peer::Target::Name("bob".into()))
    })
    .unwrap();
    s.expect(LIMIT, "the new bob is asked", |s| s.has(m, is_request));
    s.accept(m, Some(ida));
    s.expect(LIMIT, "connected to the new bob", |s| {
        s.count(a, is_connected) == 2
    });
    let new_key = *s.peer(m).key();
    assert_eq!(s.peer(a).pinned("bob"), Some(new_key));
}

#[test]
fn handshakes_complete_under_30_percent_loss_duplication_and_reordering() {
    for seed in seeds(20) {
        println!("seed {seed}");
        let mut s = Sim::new(seed, NetConfig::lossy(0.3, 0.2));
        let a = s.add_peer(patient_config());
        let b = s.add_peer(patient_config());
        s.expect(LIMIT, "registered", |s| s.registered(a) && s.registered(b));
        s.connect(a, b);
        s.expect(LIMIT, "request", |s| s.has(b, is_request));
        let ida = s.id(a);
        s.accept(b, Some(ida));
        s.expect(LIMIT, "connected", |s| s.has(a, is_connected));
        s.send(a, None, "hello");
        s.expect(LIMIT, "shown", |s| s.has(b, is_message));
        assert_eq!(s.count(b, is_request), 1, "seed {seed}");
        assert_eq!(s.count(b, is_message), 1, "seed {seed}");
    }
}
