//! Hole punching on the simulated network, through the NAT model of `tests/sim/nat.rs`:
//! the same shapes as the namespace lab (tests/nat_lab.rs), on a simulated clock, over
//! seeded lossy networks, with the bounds checked on every datagram: probes go only to
//! addresses from the server's introductions, never outweigh the introduction that caused
//! them, and introductions are limited per pair.

mod sim;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use p2pchat::peer::{Event, Path, PeerConfig};
use p2pchat::wire::{self, Message};
use sim::nat::NatKind;
use sim::{NetConfig, Sim, SERVER};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `--retry-interval 1`, and the peer tells `own` as its candidates.
fn config(own: SocketAddr) -> PeerConfig {
    let mut c = PeerConfig::new(SERVER, Duration::from_secs(1));
    c.candidates = Some(vec![own]);
    c
}

/// Where a peer is: behind a router of `kind` (public IP `public`), or public.
#[derive(Clone, Copy)]
enum Place {
    Public(&'static str),
    Behind(NatKind, &'static str, &'static str),
}

/// A sim with one peer at each place (routers with the same public IP are one router).
fn lab(seed: u64, net: NetConfig, places: &[Place]) -> Sim {
    let mut sim = Sim::new(seed, net);
    let mut routers: Vec<(IpAddr, usize)> = Vec::new();
    for place in places {
        match *place {
            Place::Public(a) => {
                sim.add_peer_at(config(addr(a)), addr(a), None);
            }
            Place::Behind(kind, public, inside) => {
                let public = ip(public);
                let n = match routers.iter().find(|(p, _)| *p == public) {
                    Some(&(_, n)) => n,
                    None => {
                        let n = sim.add_nat(public, kind);
                        routers.push((public, n));
                        n
                    }
                };
                sim.add_peer_at(config(addr(inside)), addr(inside), Some(n));
            }
        }
    }
    let n = places.len();
    sim.expect(Duration::from_secs(10), "all registered", |s| {
        (0..n).all(|i| s.registered(i))
    });
    // The candidates each sent after its registration reach the server.
    sim.run_for(Duration::from_millis(500));
    sim
}

/// Peer `a` connects to `b`, which accepts; both must be connected within 5 s. Returns
/// the paths (a's, b's) and how long it took.
fn connect(sim: &mut Sim, a: usize, b: usize) -> (Path, Path, Duration) {
    let started = sim.now;
    sim.connect(a, b);
    let ida = sim.id(a);
    sim.expect(Duration::from_secs(5), "the request", |s| {
        s.has(b, |e| matches!(e, Event::Request { from } if *from == ida))
    });
    sim.accept(b, Some(ida));
    let idb = sim.id(b);
    sim.expect(Duration::from_secs(5), "connected both ways", |s| {
        connected(s, a, idb).is_some() && connected(s, b, ida).is_some()
    });
    let took = sim.now - started;
    assert!(
        took <= Duration::from_secs(5),
        "took {took:?} (seed {})",
        sim.seed
    );
    let pa = connected(sim, a, idb).unwrap();
    let pb = connected(sim, b, ida).unwrap();
    (pa, pb, took)
}

fn connected(sim: &Sim, i: usize, peer: u32) -> Option<Path> {
    sim.events(i).into_iter().rev().find_map(|e| match e {
        Event::Connected { peer: p, path, .. } if p == peer => Some(path),
        _ => None,
    })
}

/// A message each way, shown and delivered.
fn exchange(sim: &mut Sim, a: usize, b: usize) {
    let (ida, idb) = (sim.id(a), sim.id(b));
    sim.send(a, Some(idb), "hello b");
    sim.send(b, Some(ida), "hello a");
    sim.expect(Duration::from_secs(10), "both delivered", |s| {
        s.shown(b, ida).iter().any(|(_, t)| t == "hello b")
            && s.shown(a, idb).iter().any(|(_, t)| t == "hello a")
    });
}

/// Every probe went to an address of an `Introduce` its sender received, and each
/// sender's probes to a peer total at most the bytes of the introductions of that peer it
/// received.
fn check_probe_bounds(sim: &Sim) {
    use std::collections::HashMap;
    let id_at: HashMap<SocketAddr, u32> = sim.registry.entries().map(|e| (e.addr, e.id)).collect();
    // (receiver id, introduced id) -> (addresses, bytes).
    let mut intros: HashMap<(u32, u32), (Vec<SocketAddr>, usize)> = HashMap::new();
    let mut probes: HashMap<(u32, u32), usize> = HashMap::new();
    for r in &sim.log {
        match &r.message {
            Message::Introduce {
                id,
                addr,
                candidates,
                ..
            } if r.from == SERVER => {
                let to = id_at[&r.to];
                let e = intros.entry((to, *id)).or_default();
                e.0.push(*addr);
                e.0.extend(candidates.iter().copied());
                e.1 += wire::encoded_len(&r.message);
            }
            Message::Probe { from, .. } => {
                let (&(_, peer), _) = intros
                    .iter()
                    .find(|((me, _), (addrs, _))| me == from && addrs.contains(&r.to))
                    .unwrap_or_else(|| {
                        panic!(
                            "probe from {from} to {} not from an introduction (seed {})",
                            r.to, sim.seed
                        )
                    });
                *probes.entry((*from, peer)).or_default() += wire::encoded_len(&r.message);
            }
            _ => {}
        }
    }
    assert!(!intros.is_empty(), "no introduction (seed {})", sim.seed);
    for (key, bytes) in probes {
        let allowed = intros[&key].1;
        assert!(
            bytes <= allowed,
            "{key:?}: {bytes} bytes of probes for {allowed} of introductions (seed {})",
            sim.seed
        );
    }
}

#[test]
fn behind_two_home_nats_peers_connect_whoever_asks_and_probes_stay_in_bounds() {
    let (mut runs, mut punched) = (0, 0);
    for seed in sim::seeds(20) {
        for first in [0, 1] {
            let mut sim = lab(
                seed,
                NetConfig::lossy(0.05, 0.01),
                &[
                    // Two homes with the same private range: B's LAN candidate is not
                    // routed from A's home.
                    Place::Behind(NatKind::Home, "198.51.100.20", "192.168.1.2:4000"),
                    Place::Behind(NatKind::Home, "198.51.100.21", "192.168.1.3:4000"),
                ],
            );
            let (pa, pb, _) = connect(&mut sim, first, 1 - first);
            // A side names the path from what the server told it: without the peer's
            // candidates (its `Candidates`, or the introduction, lost) it cannot tell a
            // NAT's address from the peer's own, and says "direct".
            for p in [pa, pb] {
                assert!(
                    p == Path::Punched || p == Path::Direct,
                    "seed {seed}: {p:?}"
                );
            }
            runs += 2;
            punched += usize::from(pa == Path::Punched) + usize::from(pb == Path::Punched);
            exchange(&mut sim, 0, 1);
            check_probe_bounds(&sim);
        }
    }
    println!("{punched} of {runs} sides said punched");
    assert!(
        punched * 10 >= runs * 8,
        "{punched} of {runs} sides said punched"
    );
}

#[test]
fn without_loss_a_connect_through_two_nats_takes_about_one_round_trip() {
    let mut sim = lab(
        1,
        NetConfig::perfect(),
        &[
            Place::Behind(NatKind::Home, "198.51.100.20", "192.168.1.2:4000"),
            Place::Behind(NatKind::Home, "198.51.100.21", "10.0.7.2:4000"),
        ],
    );
    // The asked side accepts at once: the time is the network's, not the person's.
    let started = sim.now;
    sim.connect(0, 1);
    let id0 = sim.id(0);
    sim.expect(Duration::from_secs(5), "the request", |s| {
        s.has(1, |e| matches!(e, Event::Request { .. }))
    });
    let asked = sim.now - started;
    sim.accept(1, Some(id0));
    // 10 ms one way: lookup and introduction (2 hops), probe, request: well under the 1 s
    // retry interval, which the request would otherwise wait for.
    println!("request arrived {asked:?} after connect");
    assert!(asked <= Duration::from_millis(100), "{asked:?}");
}

#[test]
fn behind_the_same_nat_without_hairpin_peers_connect_on_the_lan() {
    let mut sim = lab(
        2,
        NetConfig::perfect(),
        &[
            Place::Behind(NatKind::Home, "198.51.100.20", "192.168.1.2:4000"),
            Place::Behind(NatKind::Home, "198.51.100.20", "192.168.1.3:4000"),
        ],
    );
    let (pa, pb, _) = connect(&mut sim, 0, 1);
    assert_eq!((pa, pb), (Path::Lan, Path::Lan));
    exchange(&mut sim, 0, 1);
    assert!(
        sim.nats[0].hairpin_dropped > 0,
        "the router's address was tried"
    );
    check_probe_bounds(&sim);
}

#[test]
fn a_symmetric_nat_on_one_side_connects_both_directions() {
    let (mut runs, mut punched) = (0, 0);
    for seed in sim::seeds(10) {
        for first in [0, 1] {
            let mut sim = lab(
                seed,
                NetConfig::lossy(0.05, 0.0),
                &[
                    Place::Behind(NatKind::Symmetric, "198.51.100.20", "192.168.1.2:4000"),
                    Place::Public("198.51.100.11:4000"),
                ],
            );
            let (pa, pb, _) = connect(&mut sim, first, 1 - first);
            // The public side reaches the symmetric one at another port than the server
            // sees: punched (or "direct" when its introduction was lost, and with it what
            // it knew of the peer).
            let (public, natted) = if first == 0 { (pb, pa) } else { (pa, pb) };
            assert_eq!(natted, Path::Direct, "seed {seed}, first {first}");
            assert!(public == Path::Punched || public == Path::Direct);
            runs += 1;
            punched += usize::from(public == Path::Punched);
            exchange(&mut sim, 0, 1);
            check_probe_bounds(&sim);
        }
    }
    println!("{punched} of {runs} public sides said punched");
    assert!(punched * 10 >= runs * 8, "{punched} of {runs} said punched");
}

#[test]
fn both_symmetric_ends_the_request_with_no_path_not_no_answer() {
    let mut sim = lab(
        3,
        NetConfig::perfect(),
        &[
            Place::Behind(NatKind::Symmetric, "198.51.100.20", "192.168.1.2:4000"),
            Place::Behind(NatKind::Symmetric, "198.51.100.21", "10.0.7.2:4000"),
        ],
    );
    let started = sim.now;
    sim.connect(0, 1);
    let id1 = sim.id(1);
    sim.expect(Duration::from_secs(15), "no_path", |s| {
        s.has(0, |e| *e == Event::NoPath { peer: id1 })
    });
    let took = sim.now - started;
    assert!(took <= Duration::from_secs(6), "{took:?}");
    sim.run_for(Duration::from_secs(10));
    assert!(!sim.has(0, |e| matches!(
        e,
        Event::NoAnswer { .. } | Event::Connected { .. }
    )));
    assert!(!sim.has(1, |e| matches!(e, Event::Request { .. })));
    check_probe_bounds(&sim);
}

#[test]
fn a_public_peer_behind_no_nat_is_not_told_there_is_no_path() {
    // A full cone lets anything in: the peers reach each other, and no verdict is made
    // for a peer that answered.
    let mut sim = lab(
        4,
        NetConfig::perfect(),
        &[
            Place::Behind(NatKind::FullCone, "198.51.100.20", "192.168.1.2:4000"),
            Place::Public("198.51.100.11:4000"),
        ],
    );
    let (pa, pb, _) = connect(&mut sim, 1, 0);
    assert_eq!((pa, pb), (Path::Punched, Path::Direct));
    sim.run_for(Duration::from_secs(10));
    assert!(!sim.has(1, |e| matches!(e, Event::NoPath { .. })));
}

#[test]
fn a_forged_introduction_makes_no_probe() {
    let mut sim = lab(
        5,
        NetConfig::perfect(),
        &[Place::Public("198.51.100.10:4000")],
    );
    let victim = addr("203.0.113.99:53");
    let forged = Message::Introduce {
        id: 77,
        addr: victim,
        candidates: vec![],
        punch: 1,
        you: addr("198.51.100.10:4000"),
        proof: 12345, // not the peer's token
        pad: wire::Padding(0),
        relay: Some(victim),
    };
    sim.deliver_now(SERVER, addr("198.51.100.10:4000"), &forged);
    sim.run_for(Duration::from_secs(3));
    assert!(
        sim.log.iter().all(|r| r.to != victim),
        "something went to the victim"
    );
}

#[test]
fn a_pair_is_introduced_at_most_once_a_second() {
    let mut sim = lab(
        6,
        NetConfig::perfect(),
        &[
            Place::Public("198.51.100.10:4000"),
            Place::Public("198.51.100.11:4000"),
        ],
    );
    let asker = sim.addr(0);
    let idb = sim.id(1);
    // Ten lookups of B from A's registered address within half a second.
    for _ in 0..10 {
        let mut lookup = Message::lookup(idb);
        lookup.set_nonce(1);
        wire::pad_request(&mut lookup);
        sim.inject(asker, SERVER, lookup);
        sim.run_for(Duration::from_millis(50));
    }
    let intros = sim
        .log
        .iter()
        .filter(|r| matches!(r.message, Message::Introduce { .. }))
        .count();
    // To B once (the pair is told at most once a second), to A with each answer (its own
    // requests pay for them).
    let to_b = sim
        .log
        .iter()
        .filter(|r| matches!(r.message, Message::Introduce { .. }) && r.to == sim.addr(1))
        .count();
    assert_eq!(to_b, 1, "B was introduced once");
    assert_eq!(intros, 11, "and A with every answer");
    // An unregistered address asking is answered, but introduces no one.
    let stranger = addr("198.51.100.99:4000");
    sim.add_sink(stranger);
    sim.run_for(Duration::from_secs(2));
    let mut lookup = Message::lookup(idb);
    lookup.set_nonce(2);
    wire::pad_request(&mut lookup);
    sim.inject(stranger, SERVER, lookup);
    sim.run_for(Duration::from_millis(100));
    let after = sim
        .log
        .iter()
        .filter(|r| matches!(r.message, Message::Introduce { .. }))
        .count();
    assert_eq!(after, intros, "a stranger's lookup introduced someone");
    let _ = Instant::now();
}
