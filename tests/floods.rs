//! The client's state machine under floods from strangers and eager peers, with a simulated
//! clock: what it holds stays bounded, what it shows stays a few lines, and a live session
//! goes on as before. (Through the real binary: tests/hostile_e2e.rs.)

mod sim;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pchat::identity::{Identity, PEER_PATTERN};
use p2pchat::peer::{Event, Peer, PeerConfig, TransferFailure};
use p2pchat::wire::{encode, ClientId, Key, Message, Transmit};
use sim::{default_config, NetConfig, Sim, SERVER};

/// Fixed seed of these tests.
const SEED: u64 = 0xf100d;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `cfg` without the rate of new handshakes (for the tests of the other bounds).
fn unlimited(mut cfg: PeerConfig) -> PeerConfig {
    cfg.handshake_rate = (1e9, 1e9);
    cfg
}

/// A peer driven by hand, registered as client 1.
fn registered(cfg: PeerConfig, t0: Instant) -> Peer {
    let mut p = Peer::with_seed(cfg, t0, SEED);
    // The answer echoes the nonce of the Register, as the server's does.
    let register = p.poll_transmit().expect("a Register").message;
    let registered = Message::Registered {
        key: [0; 32],
        id: 1,
        token: 7,
        ttl_secs: 30,
        nonce: register.nonce().expect("a request"),
        turn: None,
    };
    p.handle_datagram(t0, SERVER, &encode(&registered));
    drain(&mut p);
    p
}

/// Everything the peer wants sent and shown.
/// The nonce of the last request to the server among `sent` (an answer must echo it).
fn nonce_of_last_request(sent: &[Transmit]) -> u64 {
    sent.iter()
        .rev()
        .find(|t| t.message.is_server_request())
        .and_then(|t| t.message.nonce())
        .expect("a request to the server")
}

fn drain(p: &mut Peer) -> (Vec<Transmit>, Vec<Event>) {
    let sent = std::iter::from_fn(|| p.poll_transmit()).collect();
    let events = std::iter::from_fn(|| p.poll_event()).collect();
    (sent, events)
}

/// The key pair of made-up client `from`.
fn key_of(from: ClientId) -> Identity {
    let mut secret = [7u8; 32];
    secret[..4].copy_from_slice(&from.to_be_bytes());
    Identity::from_secret(secret)
}

/// A request of made-up client `from` to client `to` (whose key is `key`): a real IK first
/// message made with `from`'s own key.
fn request_with(from: ClientId, to: ClientId, key: &Key, session: u64) -> Message {
    request_as(&key_of(from), from, to, key, session)
}

/// A request made with `me`'s key, claiming to be `from`.
fn request_as(me: &Identity, from: ClientId, to: ClientId, key: &Key, session: u64) -> Message {
    let mut prologue = b"p2pchat v2".to_vec();
    prologue.extend_from_slice(&from.to_be_bytes());
    prologue.extend_from_slice(&to.to_be_bytes());
    prologue.extend_from_slice(&session.to_be_bytes());
    let mut hs = snow::Builder::new(PEER_PATTERN.parse().unwrap())
        .local_private_key(me.secret())
        .unwrap()
        .remote_public_key(key)
        .unwrap()
        .prologue(&prologue)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut msg1 = vec![0u8; 256];
    let time = 1_900_000_000_000_000_000u64 + session;
    let n = hs.write_message(&time.to_be_bytes(), &mut msg1).unwrap();
    msg1.truncate(n);
    Message::ConnectRequest {
        from,
        session,
        hs: msg1,
    }
}

/// A request from made-up client `from` to the hand-driven peer `p` (client 1).
fn request_to(p: &Peer, from: ClientId) -> Vec<u8> {
    encode(&request_with(from, 1, p.key(), u64::from(from) * 7919))
}

/// Hands `p` a request of made-up client `from` from `src`, and answers as the server the
/// `Lookup` with which `p` checks `from`'s key. What else `p` sent and showed.
fn deliver(
    p: &mut Peer,
    now: Instant,
    src: SocketAddr,
    from: ClientId,
) -> (Vec<Transmit>, Vec<Event>) {
    p.handle_datagram(now, src, &request_to(p, from));
    let (sent, mut events) = drain(p);
    let mut other = Vec::new();
    for t in sent {
        match t.message {
            Message::Lookup { id, nonce, .. } if t.to == SERVER && id == from => {
                let found = Message::Found {
                    id,
                    addr: src,
                    key: *key_of(from).public(),
                    name: None,
                    display_name: None,
                    nonce,
                };
                p.handle_datagram(now, SERVER, &encode(&found));
            }
            _ => other.push(t),
        }
    }
    let (more, e) = drain(p);
    other.extend(more);
    events.extend(e);
    (other, events)
}

fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// Runs the peer's timers up to `until`, collecting what it sends and shows.
fn run_timers(p: &mut Peer, until: Instant) -> (Vec<Transmit>, Vec<Event>) {
    let (mut sent, mut events) = (Vec::new(), Vec::new());
    for _ in 0..10_000 {
        match p.poll_timeout() {
            Some(t) if t <= until => {
                p.handle_timeout(t);
                let (s, e) = drain(p);
                sent.extend(s);
                events.extend(e);
            }
            _ => return (sent, events),
        }
    }
    panic!("timers still due after 10,000 turns");
}

/// Peer `asker` asks `asked`, which accepts; returns once the asker is connected.
fn connect(s: &mut Sim, asker: usize, asked: usize) {
    let id = s.id(asker);
    s.connect(asker, asked);
    s.expect(secs(60), "the request arrives", |s| {
        s.has(asked, |e| *e == Event::Request { from: id })
    });
    s.accept(asked, Some(id));
    let peer = s.id(asked);
    s.expect(secs(60), "connected", |s| {
        s.peer(asker).connected_peers().contains(&peer)
    });
}

fn ignored_counts(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::RequestsIgnored { count } => Some(*count),
            _ => None,
        })
        .collect()
}

fn requests_shown(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Request { .. }))
        .count()
}

// ---------------------------------------------------------------------- requests

#[test]
fn requests_from_one_source_past_its_bound_are_ignored_and_summed_up() {
    let t0 = Instant::now();
    let cfg = default_config();
    assert_eq!(
        (cfg.max_requests, cfg.max_requests_per_source),
        (64, 8),
        "the documented bounds"
    );
    let mut p = registered(unlimited(cfg.clone()), t0);
    // 500 made-up clients at one address, a millisecond apart: one source. (Each is a
    // real handshake, which the server confirms: a key of their own, registered.)
    let mut events = Vec::new();
    for k in 0..500u32 {
        let now = t0 + Duration::from_micros(u64::from(k) * 1000);
        let (sent, e) = deliver(&mut p, now, addr([10, 9, 9, 9], 6666), 1000 + k);
        assert!(sent.is_empty(), "a request is never answered: {sent:?}");
        events.extend(e);
        let (sent, e) = run_timers(&mut p, now);
        assert!(sent.is_empty(), "{sent:?}");
        events.extend(e);
    }
    assert_eq!(p.pending_requests().len(), 8);
    assert_eq!(requests_shown(&events), 8, "one line per request held");
    // Ignored: 492, shown as a count at once, then at most once per 5 s.
    let counts = ignored_counts(&events);
    assert_eq!(counts.first(), Some(&1), "{counts:?}");
    assert_eq!(counts.len(), 1, "0.5 s of flood, one line: {counts:?}");
    let (_, rest) = run_timers(&mut p, t0 + secs(20));
    let counts: Vec<u64> = counts.into_iter().chain(ignored_counts(&rest)).collect();
    assert_eq!(counts.iter().sum::<u64>(), 492, "{counts:?}");
    assert_eq!(p.stats().requests_ignored, 492);
    // The same client again: not a ninth.
    deliver(&mut p, t0 + secs(20), addr([10, 9, 9, 9], 6666), 1000);
    assert_eq!(p.pending_requests().len(), 8);
}

#[test]
fn requests_from_many_sources_stop_at_the_total_bound_and_others_come_in_once_they_expire() {
    let t0 = Instant::now();
    let cfg = default_config();
    // A request lives as long as a requester with our settings resends (session.rs).
    let lifetime = cfg.retry_interval * cfg.connect_tries.max(3);
    let mut p = registered(unlimited(cfg), t0);
    let mut events = Vec::new();
    // 200 sources, 2 requests each: 400 requests, 64 held.
    for k in 0..400u32 {
        let ip = [10, 20, (k / 2 / 250) as u8, (k / 2 % 250) as u8 + 1];
        events.extend(deliver(&mut p, t0, addr(ip, 5000 + (k % 2) as u16), 2000 + k).1);
    }
    assert_eq!(p.pending_requests().len(), 64);
    assert_eq!(requests_shown(&events), 64);
    assert_eq!(p.stats().requests_ignored, 336);
    // Nobody resends: the requests are taken as withdrawn after their lifetime...
    let (_, events) = run_timers(&mut p, t0 + lifetime);
    assert!(
        p.pending_requests().is_empty(),
        "{:?}",
        p.pending_requests()
    );
    let withdrawn = events
        .iter()
        .filter(|e| matches!(e, Event::Terminated { .. }))
        .count();
    assert_eq!(withdrawn, 64);
    // ... and a new one is held again, and shown.
    let (_, events) = deliver(&mut p, t0 + lifetime, addr([10, 30, 0, 1], 7000), 9000);
    assert!(
        events.contains(&Event::Request { from: 9000 }),
        "{events:?}"
    );
}

#[test]
fn a_new_session_request_past_the_bounds_does_not_end_the_session_it_would_replace() {
    // Peer 1 (b) is connected to peer 0 (a); then b's requests are full from a's address,
    // and a request from a with a smaller session id (as after a restart) comes: it is
    // ignored, and the session lives on.
    let mut s = Sim::new(SEED, NetConfig::perfect());
    let mut cfg = default_config();
    cfg.max_requests_per_source = 1;
    let v = s.add_registered_peers(3, &cfg);
    let (a, b, c) = (v[0], v[1], v[2]);
    connect(&mut s, a, b);
    // A stranger (registered as 4242, with a key of its own) at a's address (a forged
    // source) holds the one slot of that source.
    let now = s.now;
    let elsewhere = addr([10, 7, 7, 7], 4000);
    s.registry.handle_message(
        now,
        elsewhere,
        Message::register(Some(4242), *key_of(4242).public()),
    );
    while s.registry.poll_transmit().is_some() {}
    let (idb, keyb) = (s.id(b), *s.peer(b).key());
    s.deliver_now(s.addr(a), s.addr(b), &request_with(4242, idb, &keyb, 1));
    s.run_for(secs(1));
    assert_eq!(s.count(b, |e| *e == Event::Request { from: 4242 }), 1);
    // a restarts (its own key, a newer handshake): past the bound of its source.
    let key_a = Identity::from_secret(*s.peer(a).config().identity.secret());
    let replacing = request_as(&key_a, s.id(a), idb, &keyb, 0);
    s.deliver_now(s.addr(a), s.addr(b), &replacing);
    s.run_for(secs(1));
    assert_eq!(s.peer(b).connected_peers(), vec![s.id(a)]);
    assert_eq!(s.peer(b).stats().requests_ignored, 1);
    // Another source is not affected.
    s.connect(c, b);
    s.expect(secs(60), "c's request", |s| {
        s.has(b, |e| *e == Event::Request { from: s.id(c) })
    });
}

#[test]
fn chat_on_a_live_session_is_delivered_while_a_stranger_floods_requests() {
    let mut s = Sim::new(SEED, NetConfig::perfect());
    let v = s.add_registered_peers(2, &default_config());
    let (a, b) = (v[0], v[1]);
    connect(&mut s, a, b);
    let idb = s.id(b);
    let stranger = addr([10, 9, 9, 9], 6666);
    let keyb = *s.peer(b).key();
    for k in 0..50u32 {
        // Real handshakes, from ids the server does not know (b asks it, and refuses).
        for j in 0..10u32 {
            let m = request_with(100_000 + k * 10 + j, idb, &keyb, u64::from(j));
            s.deliver_now(stranger, s.addr(b), &m);
        }
        s.send(a, Some(idb), &format!("line {k}"));
        s.run_for(Duration::from_millis(100));
    }
    s.expect(secs(10), "all delivered", |s| {
        s.count(a, |e| matches!(e, Event::Delivered { .. })) == 50
    });
    let ida = s.id(a);
    assert_eq!(s.shown(b, ida).len(), 50);
    // a's request only: none of the stranger's claims is confirmed by the server.
    assert_eq!(s.count(b, |e| matches!(e, Event::Request { .. })), 1);
    // Their refusals are a line per summary interval (5 s) at most.
    let lines = s.count(b, |e| matches!(e, Event::Notice { .. }));
    assert!((1..=2).contains(&lines), "5 s of flood: {lines}");
    assert_eq!(s.peer(b).stats().refused, 500);
    assert!(s.peer(b).pending_requests().is_empty());
    assert_eq!(s.peer(b).stats().undecodable, 0);
}

// ---------------------------------------------------------------------- file offers

/// Peers `from` offer `count` files each to peer `to` (all connected to it).
fn offer_files(s: &mut Sim, from: &[usize], to: usize, count: usize) {
    let to_id = s.id(to);
    for &i in from {
        for k in 0..count {
            let data = vec![k as u8; 10];
            s.command(i, |p, now| {
                p.send_file(
                    now,
                    Some(to_id),
                    &format!("f{k}"),
                    10,
                    [0; 32],
                    Box::new(data),
                )
            })
            .expect("sendfile");
        }
    }
    s.run_for(secs(1));
}

#[test]
fn file_offers_past_the_bounds_per_peer_and_in_all_are_refused_and_summed_up() {
    let mut s = Sim::new(SEED, NetConfig::perfect());
    let mut cfg = default_config();
    cfg.files.max_pending_offers = 16;
    cfg.files.max_offers = 24;
    let v = s.add_registered_peers(3, &cfg);
    let (a, b, c) = (v[0], v[1], v[2]);
    connect(&mut s, a, b);
    connect(&mut s, c, b);
    // 20 offers from a: 16 held (per peer), 4 refused.
    offer_files(&mut s, &[a], b, 20);
    let held = |s: &Sim| s.count(b, |e| matches!(e, Event::FileOffer { .. }));
    assert_eq!(held(&s), 16);
    let refused = |s: &Sim, i| {
        s.count(i, |e| {
            matches!(
                e,
                Event::FileFailed {
                    reason: TransferFailure::Refused,
                    ..
                }
            )
        })
    };
    assert_eq!(refused(&s, a), 4);
    // 20 from c: 8 more held (24 in all), 12 refused.
    offer_files(&mut s, &[c], b, 20);
    assert_eq!(held(&s), 24);
    assert_eq!(refused(&s, c), 12);
    assert_eq!(s.peer(b).stats().offers_refused, 16);
    s.run_for(secs(10));
    let counts: Vec<u64> = s
        .events(b)
        .iter()
        .filter_map(|e| match e {
            Event::OffersRefused { count } => Some(*count),
            _ => None,
        })
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 16, "{counts:?}");
    assert!(counts.len() <= 2, "{counts:?}");
    // Refusing one makes room for one.
    s.command(b, |p, now| p.refuse_file(now, Some(1))).unwrap();
    offer_files(&mut s, &[c], b, 1);
    assert_eq!(held(&s), 25);
}

#[test]
fn ipv6_requests_count_against_their_slash_64_and_mapped_ipv4_against_its_address() {
    let t0 = Instant::now();
    let mut p = registered(unlimited(default_config()), t0);
    // Twelve addresses of one /64, and twelve of twelve other /64s.
    for k in 0..12u16 {
        let one: SocketAddr = format!("[2001:db8:0:1::{:x}]:4000", k + 1).parse().unwrap();
        deliver(&mut p, t0, one, 3000 + u32::from(k));
        let other: SocketAddr = format!("[2001:db8:0:{:x}::1]:4000", k + 100)
            .parse()
            .unwrap();
        deliver(&mut p, t0, other, 4000 + u32::from(k));
    }
    assert_eq!(p.pending_requests().len(), 8 + 12);
    // 10.1.1.1 as itself and as ::ffff:10.1.1.1: one source.
    for k in 0..6u16 {
        deliver(&mut p, t0, addr([10, 1, 1, 1], k), 5000 + u32::from(k));
        let mapped: SocketAddr = format!("[::ffff:10.1.1.1]:{}", 100 + k).parse().unwrap();
        deliver(&mut p, t0, mapped, 6000 + u32::from(k));
    }
    assert_eq!(p.pending_requests().len(), 8 + 12 + 8);
    assert_eq!(p.stats().requests_ignored, 4 + 4);
}

// ---------------------------------------------------------------------- amplification

/// A stranger: no session, no request.
fn stranger() -> SocketAddr {
    addr([10, 9, 9, 9], 6666)
}

/// The bytes of what was sent to `to`, each message counted as if alone (an upper bound of
/// what the driver sends, which packs them).
fn bytes_to(sent: &[Transmit], to: SocketAddr) -> usize {
    sent.iter()
        .filter(|t| t.to == to)
        .map(|t| encode(&t.message).len())
        .sum()
}

/// One datagram holding `msgs`, each encoded with field names.
fn packed(msgs: &[Message]) -> Vec<u8> {
    let mut d = encode(&msgs[0]);
    for m in &msgs[1..] {
        d.extend_from_slice(&encode(m)[2..]);
    }
    d
}

/// The shortest encoding of `Terminate { from: 1, session: 2 }`: the message named by its
/// variant index, its fields as an array (5 bytes). The index is looked up, so that the
/// test does not depend on the order of the variants.
fn tiny_terminate() -> Vec<u8> {
    (0u8..=127)
        .map(|index| vec![0x81, index, 0x92, 0x01, 0x02])
        .find(|body| {
            let mut d = vec![p2pchat::wire::MAGIC, p2pchat::wire::VERSION];
            d.extend_from_slice(body);
            p2pchat::wire::decode(&d)
                == Ok(Message::Terminate {
                    from: 1,
                    session: 2,
                })
        })
        .expect("Terminate has a variant index below 128")
}

#[test]
fn a_datagram_packed_with_tiny_terminates_gets_back_no_more_bytes_than_it_had() {
    // Measured before this change: 1,600 Terminates packed in one 8 KB datagram came back
    // as 1,600 TerminateAcks, 48 KB.
    let t0 = Instant::now();
    let mut p = registered(default_config(), t0);
    let tiny = tiny_terminate();
    let mut d = vec![p2pchat::wire::MAGIC, p2pchat::wire::VERSION];
    while d.len() + tiny.len() <= p2pchat::wire::MAX_DATAGRAM {
        d.extend_from_slice(&tiny);
    }
    let count = (d.len() - 2) / tiny.len();
    assert!(count > 1_600, "{count}");
    p.handle_datagram(t0, stranger(), &d);
    let (sent, events) = drain(&mut p);
    assert!(events.is_empty(), "{events:?}");
    // Only the first 64 messages are read at all, and a session message in clear proves
    // nothing (version 2): none is answered.
    assert_eq!(p.stats().excess, (count - 64) as u64);
    assert_eq!(bytes_to(&sent, stranger()), 0, "{sent:?}");
    assert_eq!(p.stats().refused, 64);
}

#[test]
fn session_messages_in_clear_from_a_stranger_get_no_answer_at_all() {
    // Before version 2 a Ping or Chat for an unknown session got a reset (within the
    // datagram's size); now nothing of a session is believed in clear, and nothing answers.
    let t0 = Instant::now();
    let mut p = registered(default_config(), t0);
    let pings: Vec<Message> = (0..30)
        .map(|k| Message::Ping {
            from: 50 + k,
            session: u64::MAX - u64::from(k),
        })
        .collect();
    p.handle_datagram(t0, stranger(), &packed(&pings));
    let terminate = encode(&Message::Terminate {
        from: 77,
        session: u64::MAX,
    });
    p.handle_datagram(t0, stranger(), &terminate);
    let chat = encode(&Message::Chat {
        from: 77,
        session: u64::MAX,
        seq: 1,
        text: "hello".into(),
    });
    p.handle_datagram(t0, stranger(), &chat);
    let (sent, events) = drain(&mut p);
    assert!(sent.is_empty(), "{sent:?}");
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(p.stats().refused, 32);
    assert_eq!(p.stats().resets, 0);
}

#[test]
fn new_handshakes_past_their_rate_are_dropped_unopened() {
    let t0 = Instant::now();
    let cfg = default_config();
    assert_eq!(cfg.handshake_rate, (200.0, 20.0), "the documented rates");
    let mut p = registered(cfg, t0);
    // 100 made-up clients at one address at once: 20 are opened (8 held, 12 past the
    // bound of a source), 80 dropped unopened.
    for k in 0..100 {
        deliver(&mut p, t0, stranger(), 7000 + k);
    }
    assert_eq!(p.pending_requests().len(), 8);
    assert_eq!(p.stats().requests_ignored, 12);
    assert_eq!(p.stats().refused, 80);
    // Another address has a budget of its own.
    deliver(&mut p, t0, addr([10, 8, 8, 8], 1), 8000);
    assert_eq!(p.pending_requests().len(), 9);
    // A second later the source has 20 more.
    for k in 0..30 {
        deliver(&mut p, t0 + secs(1), stranger(), 7100 + k);
    }
    assert_eq!(p.stats().refused, 80 + 10);
    // In all, at most 200 a second: 250 sources at once, 200 opened.
    let before = p.stats().refused;
    for k in 0..250u32 {
        let ip = [10, 40, (k / 250) as u8, (k % 250) as u8 + 1];
        deliver(&mut p, t0 + secs(2), addr(ip, 1), 9000 + k);
    }
    assert_eq!(p.stats().refused - before, 50);
}

#[test]
fn a_terminate_in_clear_does_not_withdraw_a_request() {
    let t0 = Instant::now();
    let mut p = registered(default_config(), t0);
    let (from, session) = (42, 42 * 7919);
    deliver(&mut p, t0, stranger(), from);
    assert_eq!(p.pending_requests(), vec![from]);
    // Anyone could send this: it is not sealed (there are no keys before our Accept).
    let terminate = encode(&Message::Terminate { from, session });
    p.handle_datagram(t0 + secs(1), stranger(), &terminate);
    let (sent, events) = drain(&mut p);
    assert!(sent.is_empty(), "{sent:?}");
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(p.pending_requests(), vec![from]);
    // It goes when it is not heard again for its lifetime.
    let cfg = default_config();
    let (_, events) = run_timers(&mut p, t0 + cfg.retry_interval * cfg.connect_tries.max(3));
    assert!(p.pending_requests().is_empty(), "{events:?}");
}

#[test]
fn a_connected_peer_is_answered_freely_also_just_after_it_ended_the_session() {
    let mut s = Sim::new(SEED, NetConfig::perfect());
    let v = s.add_registered_peers(2, &default_config());
    let (a, b) = (v[0], v[1]);
    connect(&mut s, a, b);
    let (ida, idb) = (s.id(a), s.id(b));
    assert!(s.peer(b).proves_receipt(s.addr(a)));
    assert!(!s.peer(b).proves_receipt(stranger()));
    // a ends the session; b's TerminateAck is lost, so a resends its Terminate: b, which
    // has forgotten the session, still answers (the TerminateAck is 3 bytes longer).
    s.drop_first(1, |m| matches!(m, Message::TerminateAck { .. }));
    s.terminate(a, Some(idb));
    s.expect(secs(60), "a sees the end confirmed", |s| {
        s.has(a, |e| matches!(e, Event::Terminated { .. }))
    });
    assert!(
        s.has(a, |e| *e
            == Event::Terminated {
                peer: idb,
                reason: p2pchat::peer::EndReason::ByUs
            }),
        "{:?}",
        s.events(a)
    );
    assert!(s.has(b, |e| *e
        == Event::Terminated {
            peer: ida,
            reason: p2pchat::peer::EndReason::ByPeer
        }));
    assert_eq!(s.peer(b).stats().withheld, 0);
    // Long after, a's address is a stranger's again.
    s.run_for(secs(120));
    assert!(!s.peer(b).proves_receipt(s.addr(a)));
}

// ---------------------------------------------------------------------- other versions

/// `msg` as a peer of protocol `version` would frame it.
fn of_version(version: u8, msg: &Message) -> Vec<u8> {
    let mut d = encode(msg);
    d[1] = version;
    d
}

fn version_events(events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .filter(|e| matches!(e, Event::PeerVersion { .. }))
        .cloned()
        .collect()
}

#[test]
fn a_peer_of_another_protocol_version_is_named_once_per_address() {
    let t0 = Instant::now();
    let mut p = registered(default_config(), t0);
    // We ask client 2, at `bob`, to connect; it answers in version 2.
    let bob = addr([10, 0, 1, 2], 4000);
    p.connect(t0, 2).unwrap();
    let (lookup, _) = drain(&mut p);
    let found = Message::Found {
        key: [0; 32],
        id: 2,
        addr: bob,
        name: None,
        display_name: None,
        nonce: nonce_of_last_request(&lookup),
    };
    p.handle_datagram(t0, SERVER, &encode(&found));
    drain(&mut p);
    let accept = of_version(
        3,
        &Message::Accept {
            hs: Vec::new(),
            from: 2,
            session: 1,
        },
    );
    let mut events = Vec::new();
    for k in 0..5 {
        p.handle_datagram(t0 + secs(k), bob, &accept);
        events.extend(drain(&mut p).1);
    }
    assert_eq!(
        version_events(&events),
        vec![Event::PeerVersion {
            peer: Some(2),
            addr: bob,
            version: 3
        }]
    );
    assert_eq!(p.stats().other_version, 5);
    assert_eq!(p.stats().undecodable, 0);
    assert!(!p.is_finished(), "a peer's version is not fatal");
}

#[test]
fn strangers_of_another_version_are_named_at_most_once_per_summary_interval() {
    let t0 = Instant::now();
    let cfg = default_config();
    let interval = cfg.summary_interval;
    let mut p = registered(cfg, t0);
    let ping = Message::Ping {
        from: 9,
        session: 9,
    };
    let mut events = Vec::new();
    // 1,000 addresses within a second, of versions 0 and 200.
    for k in 0..1_000u16 {
        let now = t0 + Duration::from_millis(u64::from(k));
        let version = if k % 2 == 0 { 0 } else { 200 };
        p.handle_datagram(now, addr([10, 7, 0, 1], k), &of_version(version, &ping));
        events.extend(drain(&mut p).1);
    }
    assert_eq!(
        version_events(&events),
        vec![Event::PeerVersion {
            peer: None,
            addr: addr([10, 7, 0, 1], 0),
            version: 0
        }]
    );
    // Later, another stranger is named.
    let later = addr([10, 7, 0, 2], 1);
    p.handle_datagram(t0 + interval + secs(1), later, &of_version(3, &ping));
    assert_eq!(
        version_events(&drain(&mut p).1),
        vec![Event::PeerVersion {
            peer: None,
            addr: later,
            version: 3
        }]
    );
    // Nothing is ever sent back to them.
    assert_eq!(p.stats().other_version, 1_001);
}
