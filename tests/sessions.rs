//! Several sessions at once, group messages and the offline queue, on the simulated network.
//!
//! The lossy runs go over several seeds (30% loss, 10% duplication, reordering); every
//! assertion names its seed, and `SIM_SEED=<n>` replays one.

mod sim;

use std::time::Duration;

use p2pchat::peer::{Event, PeerConfig, Sending, Target};
use p2pchat::wire::ClientId;
use sim::{default_config, patient_config, seeds, NetConfig, Sim};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Peer `hub` connects to each of `spokes`, which accept; returns once all are connected.
fn connect_all(s: &mut Sim, hub: usize, spokes: &[usize]) {
    let hub_id = s.id(hub);
    for &i in spokes {
        s.connect(hub, i);
    }
    for &i in spokes {
        s.expect(secs(600), "the request arrives", |s| {
            s.has(
                i,
                |e| matches!(e, Event::Request { from } if *from == hub_id),
            )
        });
        s.accept(i, Some(hub_id));
    }
    let spokes_ids: Vec<ClientId> = spokes.iter().map(|&i| s.id(i)).collect();
    s.expect(secs(600), "every session open", |s| {
        let mut c = s.peer(hub).connected_peers();
        c.sort_unstable();
        let mut want = spokes_ids.clone();
        want.sort_unstable();
        c == want
    });
}

fn shown_texts(s: &Sim, i: usize, from: ClientId) -> Vec<String> {
    s.shown(i, from).into_iter().map(|(_, t)| t).collect()
}

#[test]
fn a_broadcast_to_five_peers_under_loss_reaches_each_exactly_once_in_order() {
    const LINES: usize = 40;
    for seed in seeds(40) {
        println!("seed {seed}");
        let mut s = Sim::new(seed, NetConfig::lossy(0.3, 0.1));
        let cfg = patient_config();
        let all = s.add_registered_peers(6, &cfg);
        let (hub, spokes) = (all[0], &all[1..]);
        connect_all(&mut s, hub, spokes);
        let hub_id = s.id(hub);
        for k in 0..LINES {
            let sent = s
                .command(hub, |p, now| p.broadcast(now, &format!("line {k}")))
                .unwrap_or_else(|e| panic!("seed {seed}: broadcast refused: {e}"));
            assert_eq!(sent.len(), 5, "seed {seed}: one copy per peer");
            s.run_for(Duration::from_millis(20));
        }
        let want: Vec<String> = (0..LINES).map(|k| format!("line {k}")).collect();
        let delivered = |s: &Sim| s.count(hub, |e| matches!(e, Event::Delivered { .. }));
        s.expect(secs(900), "every copy delivered", |s| {
            delivered(s) == 5 * LINES
        });
        s.run_for(secs(30));
        for &i in spokes {
            assert_eq!(
                shown_texts(&s, i, hub_id),
                want,
                "seed {seed}: peer {i} shows every line once, in order"
            );
        }
        // Each peer's copies are acknowledged one by one: (peer, seq) pairs are unique.
        let mut pairs: Vec<(ClientId, u64)> = s
            .events(hub)
            .iter()
            .filter_map(|e| match e {
                Event::Delivered { peer, seq } => Some((*peer, *seq)),
                _ => None,
            })
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        assert_eq!(
            pairs.len(),
            5 * LINES,
            "seed {seed}: one Delivered per copy"
        );
        assert!(
            !s.has(hub, |e| matches!(e, Event::Undelivered { .. })),
            "seed {seed}: nothing undelivered"
        );
    }
}

#[test]
fn broadcast_with_nobody_connected_is_refused_and_sends_nothing() {
    let mut s = Sim::new(1, NetConfig::perfect());
    let a = s.add_registered_peers(1, &default_config())[0];
    let before = s.log.len();
    let r = s.command(a, |p, now| p.broadcast(now, "anyone?"));
    assert!(r.is_err(), "{r:?}");
    s.run_for(secs(1));
    assert_eq!(
        s.log[before..]
            .iter()
            .filter(|r| matches!(r.message, p2pchat::wire::Message::Chat { .. }))
            .count(),
        0
    );
}

#[test]
fn send_to_several_targets_numbers_each_copy_in_its_own_session() {
    let mut s = Sim::new(2, NetConfig::perfect());
    let all = s.add_registered_peers(3, &default_config());
    let (a, b, c) = (all[0], all[1], all[2]);
    connect_all(&mut s, a, &[b, c]);
    let (ida, idb, idc) = (s.id(a), s.id(b), s.id(c));
    s.send(a, Some(idb), "only b");
    for t in [Target::Id(idb), Target::Id(idc)] {
        let r = s.command(a, |p, now| p.send_to(now, Some(&t), "both"));
        assert!(matches!(r, Ok(Sending::Sent(_))), "{r:?}");
    }
    s.run_for(secs(2));
    assert_eq!(
        s.shown(b, ida),
        vec![(1, "only b".to_string()), (2, "both".to_string())]
    );
    assert_eq!(s.shown(c, ida), vec![(1, "both".to_string())]);
}

#[test]
fn switch_chooses_where_a_plain_send_goes() {
    let mut s = Sim::new(3, NetConfig::perfect());
    let all = s.add_registered_peers(3, &default_config());
    let (a, b, c) = (all[0], all[1], all[2]);
    connect_all(&mut s, a, &[b, c]);
    let (ida, idb) = (s.id(a), s.id(b));
    let chosen = s.command(a, |p, _| p.switch(&Target::Id(idb)));
    assert_eq!(chosen, Ok(idb));
    assert_eq!(s.peer(a).current_peer(), Some(idb));
    s.command(a, |p, now| p.send_to(now, None, "to the current one"))
        .unwrap();
    s.run_for(secs(1));
    assert_eq!(s.shown(b, ida).len(), 1);
    assert!(s.shown(c, ida).is_empty());
    // Not connected to 99: refused, the current peer unchanged.
    assert!(s.command(a, |p, _| p.switch(&Target::Id(99))).is_err());
    assert_eq!(s.peer(a).current_peer(), Some(idb));
    let listed = s.peer(a).sessions();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed.iter().filter(|x| x.current).count(), 1);
}

/// Queues `count` messages on `a` for `to`, checking each is reported queued.
fn queue_for(s: &mut Sim, a: usize, to: &Target, count: usize) -> Vec<String> {
    let texts: Vec<String> = (0..count).map(|k| format!("queued {k}")).collect();
    for t in &texts {
        let r = s.command(a, |p, now| p.send_to(now, Some(to), t));
        assert_eq!(r, Ok(Sending::Queued), "seed {}", s.seed);
    }
    assert_eq!(
        s.count(a, |e| matches!(e, Event::Queued { .. })),
        count,
        "seed {}",
        s.seed
    );
    texts
}

#[test]
fn a_queue_for_a_peer_that_comes_back_is_delivered_in_order_and_loses_nothing() {
    for seed in seeds(40) {
        println!("seed {seed}");
        let mut s = Sim::new(seed, NetConfig::lossy(0.3, 0.1));
        let mut cfg = patient_config();
        cfg.queue_retry = secs(20);
        let a = s.add_registered_peers(1, &cfg)[0];
        let ida = s.id(a);
        // Client 2 is not registered yet: the messages wait.
        let texts = queue_for(&mut s, a, &Target::Id(2), 12);
        s.run_for(secs(90));
        assert!(
            !s.has(a, |e| matches!(e, Event::Inactive { .. })),
            "seed {seed}: the queue's lookups are quiet"
        );
        assert_eq!(s.peer(a).outbox()[0].1.len(), 12, "seed {seed}");
        // Now it comes.
        let mut bcfg = cfg.clone();
        bcfg.want_id = Some(2);
        let b = s.add_peer(bcfg);
        s.expect(secs(600), "the queue's request arrives", |s| {
            s.has(b, |e| matches!(e, Event::Request { from } if *from == ida))
        });
        s.accept(b, Some(ida));
        s.expect(secs(900), "every queued message delivered", |s| {
            s.count(a, |e| matches!(e, Event::Delivered { .. })) == 12
        });
        assert_eq!(
            shown_texts(&s, b, ida),
            texts,
            "seed {seed}: each queued message shown once, in order"
        );
        assert!(s.peer(a).outbox().is_empty(), "seed {seed}");
        let dequeued: usize = s
            .events(a)
            .iter()
            .map(|e| match e {
                Event::Dequeued { seqs, .. } => seqs.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(dequeued, 12, "seed {seed}");
    }
}

#[test]
fn messages_sent_while_the_queue_waits_keep_their_order() {
    let mut s = Sim::new(5, NetConfig::perfect());
    let mut cfg = default_config();
    cfg.queue_retry = secs(5);
    let all = s.add_registered_peers(2, &cfg);
    let (a, b) = (all[0], all[1]);
    let (ida, idb) = (s.id(a), s.id(b));
    // b is online: the queue asks at once; b answers only later.
    let first = queue_for(&mut s, a, &Target::Id(idb), 2);
    s.expect(secs(30), "request", |s| {
        s.has(b, |e| matches!(e, Event::Request { .. }))
    });
    let r = s.command(a, |p, now| p.send_to(now, Some(&Target::Id(idb)), "third"));
    assert_eq!(r, Ok(Sending::Queued));
    s.accept(b, Some(ida));
    s.run_for(secs(2));
    let mut want = first;
    want.push("third".into());
    assert_eq!(shown_texts(&s, b, ida), want);
}

#[test]
fn a_rejected_queue_is_reported_not_delivered() {
    let mut s = Sim::new(6, NetConfig::perfect());
    let all = s.add_registered_peers(2, &default_config());
    let (a, b) = (all[0], all[1]);
    let idb = s.id(b);
    queue_for(&mut s, a, &Target::Id(idb), 3);
    s.expect(secs(30), "request", |s| {
        s.has(b, |e| matches!(e, Event::Request { .. }))
    });
    s.reject(b, None);
    s.expect(secs(30), "dropped", |s| {
        s.has(a, |e| matches!(e, Event::QueueDropped { count: 3, .. }))
    });
    assert!(s.peer(a).outbox().is_empty());
    assert!(s.shown(b, s.id(a)).is_empty());
}

#[test]
fn messages_restored_from_a_previous_run_are_delivered_without_being_announced_again() {
    let mut s = Sim::new(7, NetConfig::perfect());
    let all = s.add_registered_peers(2, &default_config());
    let (a, b) = (all[0], all[1]);
    let (ida, idb) = (s.id(a), s.id(b));
    for t in ["from last run 1", "from last run 2"] {
        s.command(a, |p, now| {
            p.restore_queued(now, Target::Id(idb), t.to_string())
        });
    }
    assert!(!s.has(a, |e| matches!(e, Event::Queued { .. })));
    s.expect(secs(30), "request", |s| {
        s.has(b, |e| matches!(e, Event::Request { .. }))
    });
    s.accept(b, Some(ida));
    s.run_for(secs(2));
    assert_eq!(
        shown_texts(&s, b, ida),
        vec!["from last run 1".to_string(), "from last run 2".to_string()]
    );
}

#[test]
fn queueing_for_yourself_is_refused() {
    let mut s = Sim::new(8, NetConfig::perfect());
    let a = s.add_registered_peers(1, &default_config())[0];
    let ida = s.id(a);
    let r = s.command(a, |p, now| p.send_to(now, Some(&Target::Id(ida)), "me"));
    assert!(r.is_err(), "{r:?}");
    assert!(s.peer(a).outbox().is_empty());
}

fn named_config(name: &str) -> PeerConfig {
    let mut cfg = patient_config();
    cfg.name = Some(name.to_string());
    cfg
}

fn claimed(s: &Sim, i: usize) -> bool {
    s.has(i, |e| matches!(e, Event::Claimed { .. }))
}

#[test]
fn peers_connect_by_name_under_loss() {
    for seed in seeds(20) {
        println!("seed {seed}");
        let mut s = Sim::new(seed, NetConfig::lossy(0.3, 0.1));
        let a = s.add_peer(named_config("alice"));
        let b = s.add_peer(named_config("bob"));
        s.expect(secs(300), "both named", |s| claimed(s, a) && claimed(s, b));
        let r = s.command(a, |p, now| p.connect_to(now, &Target::Name("BOB".into())));
        assert_eq!(r, Ok(()), "seed {seed}");
        let ida = s.id(a);
        s.expect(secs(600), "the request", |s| {
            s.has(b, |e| matches!(e, Event::Request { from } if *from == ida))
        });
        assert_eq!(s.peer(b).name_of(ida), Some("alice"), "seed {seed}");
        let accepted = s.command(b, |p, now| {
            let who = p.session_peer(&Target::Name("alice".into()))?;
            p.accept(now, Some(who))
        });
        assert_eq!(accepted, Ok(ida), "seed {seed}");
        let idb = s.id(b);
        s.expect(secs(600), "connected", |s| {
            s.peer(a).connected_peers() == vec![idb]
        });
        assert_eq!(s.peer(a).name_of(idb), Some("bob"), "seed {seed}");
    }
}

#[test]
fn a_queue_for_a_name_waits_until_someone_claims_it() {
    for seed in seeds(20) {
        println!("seed {seed}");
        let mut s = Sim::new(seed, NetConfig::lossy(0.3, 0.1));
        let mut cfg = named_config("alice");
        cfg.queue_retry = secs(15);
        let a = s.add_peer(cfg);
        s.expect(secs(300), "named", |s| claimed(s, a));
        let texts = queue_for(&mut s, a, &Target::Name("bob".into()), 5);
        s.run_for(secs(60));
        assert!(
            !s.has(a, |e| matches!(e, Event::UnknownName { .. })),
            "seed {seed}: the queue's lookups are quiet"
        );
        let b = s.add_peer(named_config("bob"));
        s.expect(secs(300), "bob named", |s| claimed(s, b));
        let ida = s.id(a);
        s.expect(secs(600), "the queue's request", |s| {
            s.has(b, |e| matches!(e, Event::Request { from } if *from == ida))
        });
        s.accept(b, Some(ida));
        s.expect(secs(900), "every queued message delivered", |s| {
            s.count(a, |e| matches!(e, Event::Delivered { .. })) == 5
        });
        assert_eq!(shown_texts(&s, b, ida), texts, "seed {seed}");
    }
}

#[test]
fn list_pages_through_thousands_of_clients_under_loss() {
    use p2pchat::registry::RegistryConfig;
    use p2pchat::wire::Message;
    use std::net::{Ipv4Addr, SocketAddr};
    const OTHERS: u32 = 3000;
    for seed in seeds(5) {
        println!("seed {seed}");
        let config = RegistryConfig {
            ttl: secs(3600),
            register_rate: 0.0,
            max_clients: 10_000,
            ..RegistryConfig::default()
        };
        let mut s = Sim::with_registry(seed, NetConfig::lossy(0.3, 0.1), config);
        // Clients that only register (and half of them claim a long name), straight into the
        // server's state machine.
        let now = s.now;
        for k in 0..OTHERS {
            let addr = SocketAddr::from((Ipv4Addr::from(0x0a02_0000 + k), 5000));
            s.registry
                .handle_message(now, addr, Message::register(None, [0; 32]));
            let mut token = None;
            while let Some(t) = s.registry.poll_transmit() {
                if let Message::Registered { id, token: tk, .. } = t.message {
                    token = Some((id, tk));
                }
            }
            let (id, token) = token.expect("registered");
            if k % 2 == 0 {
                let name = format!("n{k:0>31}");
                s.registry.handle_message(
                    now,
                    addr,
                    Message::Claim {
                        id,
                        token,
                        name,
                        display_name: Some("x".repeat(64)),
                        proof: None,
                        nonce: 0,
                        pad: Default::default(),
                    },
                );
                while s.registry.poll_transmit().is_some() {}
            }
        }
        while s.registry.poll_event().is_some() {}
        let a = s.add_peer(patient_config());
        s.expect(secs(300), "registered", |s| s.registered(a));
        s.command(a, |p, now| p.list(now)).unwrap();
        s.expect(secs(3000), "the listing", |s| {
            s.has(a, |e| {
                matches!(e, Event::Online { .. } | Event::ListFailed { .. })
            })
        });
        let online = s
            .events(a)
            .into_iter()
            .find_map(|e| match e {
                Event::Online { clients, total } => Some((clients, total)),
                _ => None,
            })
            .unwrap_or_else(|| panic!("seed {seed}: the list failed: {:?}", s.events(a)));
        let (clients, total) = online;
        assert_eq!(total, OTHERS + 1, "seed {seed}");
        assert_eq!(
            clients.len(),
            (OTHERS + 1) as usize,
            "seed {seed}: everyone, once"
        );
        assert!(
            clients.windows(2).all(|w| w[0].id < w[1].id),
            "seed {seed}: in id order, no duplicates"
        );
        let named = clients.iter().filter(|c| c.name.is_some()).count();
        assert_eq!(named, (OTHERS / 2) as usize, "seed {seed}");
    }
}
