//! Path selection with a TURN relay, on the simulated network (tests/sim, with a model TURN
//! server from turn-server-proto and the NAT model of tests/sim/nat.rs), `--retry-interval
//! 1`: peers behind routers that change ports for every destination connect through the
//! relays within 5 s and chat; a pair that can punch still gets a direct path; a session on
//! the relay moves to a direct path once the routers let one open, without losing or
//! repeating a message; a relay that goes away ends the sessions through it with a reason;
//! a relay that refuses us leaves the old verdict (no path). The seeds are printed.

mod sim;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use p2pchat::peer::paths::{GRANT_WAIT, RETRY_FIRST};
use p2pchat::peer::relay::TurnServer;
use p2pchat::peer::{EndReason, Event, Path, PeerConfig};
use p2pchat::registry::turn::{TurnSecret, CREDENTIAL_LIFETIME};
use p2pchat::registry::RegistryConfig;
use p2pchat::wire::Message;
use sim::nat::NatKind;
use sim::{NetConfig, Sim, SERVER};

const TURN: &str = "192.0.2.1:3478";
const A_PUBLIC: &str = "198.51.100.10";
const B_PUBLIC: &str = "203.0.113.20";
const A_INSIDE: &str = "192.168.1.10:4000";
const B_INSIDE: &str = "192.168.2.10:4000";
const MARKER: &str = "MARKER-through-the-relay";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `--retry-interval 1`, own address as the candidate, and a TURN server with `user`'s
/// credentials (`pass`).
fn config(own: &str, user: &str, pass: &str) -> PeerConfig {
    let mut c = PeerConfig::new(SERVER, Duration::from_secs(1));
    c.candidates = Some(vec![addr(own)]);
    c.turn = Some(TurnServer {
        addr: addr(TURN),
        username: user.into(),
        password: pass.into(),
    });
    c
}

/// Two peers, a behind a router of `kind` at A_PUBLIC, b behind one at B_PUBLIC, a TURN
/// server on the internet; both registered (and, with the right password, allocated).
fn lab(
    seed: u64,
    net: NetConfig,
    kind: NatKind,
    pass_a: &str,
    tweak: impl Fn(&mut PeerConfig),
) -> Sim {
    println!("seed {seed}");
    let mut sim = Sim::new(seed, net);
    sim.add_turn(addr(TURN), &[("a", "pw-a"), ("b", "pw-b")]);
    let na = sim.add_nat(ip(A_PUBLIC), kind);
    let nb = sim.add_nat(ip(B_PUBLIC), kind);
    let mut ca = config(A_INSIDE, "a", pass_a);
    let mut cb = config(B_INSIDE, "b", "pw-b");
    tweak(&mut ca);
    tweak(&mut cb);
    sim.add_peer_at(ca, addr(A_INSIDE), Some(na));
    sim.add_peer_at(cb, addr(B_INSIDE), Some(nb));
    sim.expect(Duration::from_secs(10), "both registered", |s| {
        s.registered(0) && s.registered(1)
    });
    if pass_a == "pw-a" {
        sim.expect(Duration::from_secs(10), "both relays ready", |s| {
            (0..2).all(|i| s.has(i, |e| matches!(e, Event::RelayReady { .. })))
        });
    }
    // The keepalives with the relayed addresses reach the server.
    sim.run_for(Duration::from_millis(500));
    sim
}

fn connected(sim: &Sim, i: usize, peer: u32) -> Option<(Path, SocketAddr)> {
    sim.events(i).into_iter().rev().find_map(|e| match e {
        Event::Connected {
            peer: p,
            path,
            addr,
        } if p == peer => Some((path, addr)),
        _ => None,
    })
}

/// a connects to b, which accepts: both connected within 5 s of the connect. The paths.
fn connect(sim: &mut Sim) -> (Path, Path) {
    let started = sim.now;
    sim.connect(0, 1);
    let (ida, idb) = (sim.id(0), sim.id(1));
    sim.expect(Duration::from_secs(5), "the request", |s| {
        s.has(1, |e| matches!(e, Event::Request { from } if *from == ida))
    });
    sim.accept(1, Some(ida));
    sim.expect(Duration::from_secs(5), "connected both ways", |s| {
        connected(s, 0, idb).is_some() && connected(s, 1, ida).is_some()
    });
    let took = sim.now - started;
    assert!(
        took <= Duration::from_secs(5),
        "took {took:?} (seed {})",
        sim.seed
    );
    (
        connected(sim, 0, idb).unwrap().0,
        connected(sim, 1, ida).unwrap().0,
    )
}

/// Sends `n` numbered messages each way, one each way every `gap`, then waits until all
/// are shown. Checks each side shows exactly the other's messages, once each, in order.
fn chat(
    sim: &mut Sim,
    n: usize,
    gap: Duration,
    tag: &str,
    mut between: impl FnMut(&mut Sim, usize),
) {
    let (ida, idb) = (sim.id(0), sim.id(1));
    let before_a = sim.shown(0, idb).len();
    let before_b = sim.shown(1, ida).len();
    for k in 0..n {
        sim.send(0, Some(idb), &format!("{MARKER} {tag} a{k}"));
        sim.send(1, Some(ida), &format!("{MARKER} {tag} b{k}"));
        sim.run_for(gap);
        between(sim, k);
    }
    let seed = sim.seed;
    sim.expect(Duration::from_secs(20), "every message shown", |s| {
        s.shown(1, ida).len() >= before_b + n && s.shown(0, idb).len() >= before_a + n
    });
    sim.run_for(Duration::from_secs(2));
    let want =
        |who: &str| -> Vec<String> { (0..n).map(|k| format!("{MARKER} {tag} {who}{k}")).collect() };
    let got_b: Vec<String> = sim.shown(1, ida)[before_b..]
        .iter()
        .map(|(_, t)| t.clone())
        .collect();
    let got_a: Vec<String> = sim.shown(0, idb)[before_a..]
        .iter()
        .map(|(_, t)| t.clone())
        .collect();
    assert_eq!(
        got_b,
        want("a"),
        "b shows a's messages once each, in order (seed {seed})"
    );
    assert_eq!(
        got_a,
        want("b"),
        "a shows b's messages once each, in order (seed {seed})"
    );
}

/// Nothing the TURN server received holds the marker text.
fn relay_saw_no_plaintext(sim: &Sim) {
    let turn = sim.turn.as_ref().unwrap();
    assert!(!turn.seen.is_empty());
    for d in &turn.seen {
        assert!(
            !d.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "the relay saw the chat's text (seed {})",
            sim.seed
        );
    }
}

#[test]
fn peers_behind_routers_that_change_ports_connect_through_the_relays_and_chat() {
    for seed in sim::seeds(6) {
        let mut sim = lab(
            seed,
            NetConfig::perfect(),
            NatKind::Symmetric,
            "pw-a",
            |_| {},
        );
        let (pa, pb) = connect(&mut sim);
        assert_eq!((pa, pb), (Path::Relay, Path::Relay), "seed {seed}");
        chat(&mut sim, 20, Duration::from_millis(50), "relay", |_, _| {});
        // Every datagram between them went through the relays.
        let relayed = sim.relayed.len();
        assert!(
            relayed >= 40,
            "{relayed} datagrams through the relays (seed {seed})"
        );
        let direct_chat = sim
            .log
            .iter()
            .filter(|r| matches!(r.message, Message::Chat { .. }))
            .count();
        assert_eq!(direct_chat, 0, "chat outside the relays (seed {seed})");
        relay_saw_no_plaintext(&sim);
        // Neither side was told there is no path.
        assert!(!(0..2).any(|i| sim.has(i, |e| matches!(e, Event::NoPath { .. }))));
    }
}

#[test]
fn connects_through_the_relays_under_loss() {
    for seed in sim::seeds(8) {
        let net = NetConfig::lossy(0.05, 0.02);
        let mut sim = lab(seed, net, NatKind::Symmetric, "pw-a", |_| {});
        let (pa, pb) = connect(&mut sim);
        assert_eq!((pa, pb), (Path::Relay, Path::Relay), "seed {seed}");
        chat(&mut sim, 10, Duration::from_millis(100), "lossy", |_, _| {});
    }
}

#[test]
fn a_pair_that_can_punch_gets_a_direct_path_with_a_relay_configured() {
    for seed in sim::seeds(4) {
        let mut sim = lab(seed, NetConfig::perfect(), NatKind::Home, "pw-a", |_| {});
        let (pa, pb) = connect(&mut sim);
        assert_eq!((pa, pb), (Path::Punched, Path::Punched), "seed {seed}");
        chat(&mut sim, 5, Duration::from_millis(50), "direct", |_, _| {});
        assert!(
            sim.relayed.is_empty(),
            "nothing goes through the relay (seed {seed})"
        );
    }
}

#[test]
fn a_session_on_the_relay_moves_to_a_direct_path_without_loss_or_repeats() {
    for seed in sim::seeds(6) {
        let net = NetConfig::lossy(0.02, 0.01);
        let mut sim = lab(seed, net, NatKind::Home, "pw-a", |_| {});
        // A firewall between the two homes passes no UDP between them at first (the
        // relay's traffic goes through the TURN server, which it lets through).
        let (a, b) = (ip(A_PUBLIC), ip(B_PUBLIC));
        sim.drop_first_where(usize::MAX, move |p| {
            (p.from.ip() == a && p.to.ip() == b) || (p.from.ip() == b && p.to.ip() == a)
        });
        let (pa, pb) = connect(&mut sim);
        assert_eq!((pa, pb), (Path::Relay, Path::Relay), "seed {seed}");
        // Midway through a steady chat, the firewall opens: the next introduction (every
        // 3 s on the relay) lets both probe again, and the session moves.
        chat(
            &mut sim,
            100,
            Duration::from_millis(100),
            "moving",
            |s, k| {
                if k == 10 {
                    s.clear_filters();
                }
            },
        );
        let (ida, idb) = (sim.id(0), sim.id(1));
        for (i, peer) in [(0, idb), (1, ida)] {
            let moved = sim.events(i).into_iter().find_map(|e| match e {
                Event::PathChanged {
                    peer: p,
                    path,
                    addr,
                } if p == peer => Some((path, addr)),
                _ => None,
            });
            let (path, to) =
                moved.unwrap_or_else(|| panic!("peer {i} never left the relay (seed {seed})"));
            assert_ne!(path, Path::Relay, "seed {seed}");
            assert!(
                !sim.turn.as_ref().unwrap().relayed.contains(&to),
                "moved to a relayed address (seed {seed})"
            );
        }
        // After the move, chat no longer goes through the relays.
        let through = sim.relayed.len();
        chat(&mut sim, 10, Duration::from_millis(50), "after", |_, _| {});
        let late = sim.relayed.len() - through;
        assert!(
            late == 0,
            "{late} datagrams still through the relays (seed {seed})"
        );
    }
}

#[test]
fn the_relay_going_away_ends_the_sessions_through_it_with_a_reason() {
    for seed in sim::seeds(3) {
        // The default session timeout (30 s), so that the relay's own silence verdict
        // comes first.
        let mut sim = lab(
            seed,
            NetConfig::perfect(),
            NatKind::Symmetric,
            "pw-a",
            |c| {
                c.session_idle = Duration::from_secs(5);
                c.session_timeout = Duration::from_secs(30);
            },
        );
        let (pa, _) = connect(&mut sim);
        assert_eq!(pa, Path::Relay);
        chat(&mut sim, 3, Duration::from_millis(50), "before", |_, _| {});
        let died = sim.now;
        sim.turn.as_mut().unwrap().dead = true;
        sim.expect(
            Duration::from_secs(30),
            "relay_lost and the sessions ended on both",
            |s| {
                (0..2).all(|i| {
                    s.has(i, |e| matches!(e, Event::RelayLost { .. }))
                        && s.has(i, |e| {
                            matches!(
                                e,
                                Event::Terminated {
                                    reason: EndReason::RelayLost,
                                    ..
                                }
                            )
                        })
                })
            },
        );
        let took = sim.now - died;
        assert!(
            took <= Duration::from_secs(30),
            "took {took:?} (seed {seed})"
        );
        // No hang: both still take commands, and say there is nobody to send to.
        let idb = sim.id(1);
        let refused = sim.command(0, |p, now| p.send(now, Some(idb), "still there?"));
        assert!(refused.is_err(), "seed {seed}");
        assert!(!sim.peer(0).is_finished() && !sim.peer(1).is_finished());
    }
}

#[test]
fn a_relay_that_refuses_us_is_said_and_the_old_verdict_stands() {
    let seed = 11;
    let mut sim = lab(
        seed,
        NetConfig::perfect(),
        NatKind::Symmetric,
        "wrong",
        |_| {},
    );
    sim.expect(Duration::from_secs(15), "relay_failed", |s| {
        s.has(0, |e| matches!(e, Event::RelayFailed { .. }))
    });
    let idb = sim.id(1);
    sim.connect(0, 1);
    sim.expect(Duration::from_secs(10), "no_path", |s| {
        s.has(0, |e| matches!(e, Event::NoPath { peer } if *peer == idb))
    });
    assert!(sim.relayed.is_empty());
}

#[test]
fn leaving_releases_the_allocation() {
    let seed = 5;
    let mut sim = lab(
        seed,
        NetConfig::perfect(),
        NatKind::Symmetric,
        "pw-a",
        |_| {},
    );
    let seen = sim.turn.as_ref().unwrap().seen.len();
    sim.leave(0);
    sim.expect(Duration::from_secs(5), "finished", |s| {
        s.peer(0).is_finished()
    });
    let after = sim.turn.as_ref().unwrap().seen.len();
    assert!(after > seen, "nothing reached the TURN server on leave");
    // The delete (a Refresh with lifetime 0) went: its answer ended the allocation.
    let relayed = sim.turn.as_ref().unwrap().relayed[0];
    assert!(!sim.peer(0).relays(relayed));
}

/// The TURN users that the rendezvous server's grants for client `id` name when issued
/// within `window` seconds from `unix` (coturn's REST credentials carry their expiry).
fn rest_users(secret: &TurnSecret, id: u32, unix: u64, window: u64) -> Vec<(String, String)> {
    (0..=window)
        .map(|s| {
            let c = secret.credentials_for(&id.to_string(), unix + s);
            (c.username, c.password)
        })
        .collect()
}

/// A client of a rendezvous server that grants coturn REST credentials, alone (no NAT),
/// its relay ready; then two hours pass and its TURN server restarts, knowing only
/// credentials issued from then on (the old ones have "expired"). `meanwhile` runs once the
/// relay is lost. Returns the simulation once the relay is ready again or failed, and how
/// long after the loss that was.
fn relay_lost_hours_later(seed: u64, meanwhile: impl Fn(&mut Sim, &TurnSecret)) -> (Sim, Duration) {
    println!("seed {seed}");
    let unix = 1_800_000_000;
    let secret = TurnSecret {
        server: addr(TURN),
        secret: b"sim-shared-secret".to_vec(),
        lifetime: CREDENTIAL_LIFETIME,
        clock: (std::time::Instant::now(), unix),
    };
    let config = RegistryConfig {
        turn: Some(secret.clone()),
        ..RegistryConfig::default()
    };
    let mut sim = Sim::with_registry(seed, NetConfig::perfect(), config);
    let users = rest_users(&secret, 1, unix, 30);
    let users: Vec<(&str, &str)> = users.iter().map(|(u, p)| (&u[..], &p[..])).collect();
    sim.add_turn(addr(TURN), &users);
    let mut c = PeerConfig::new(SERVER, Duration::from_secs(1));
    c.candidates = Some(vec![addr(A_INSIDE)]);
    sim.add_peer_at(c, addr(A_INSIDE), None);
    sim.expect(Duration::from_secs(10), "registered, relay ready", |s| {
        s.registered(0) && s.has(0, |e| matches!(e, Event::RelayReady { .. }))
    });
    assert_eq!(sim.id(0), 1);

    sim.run_for(Duration::from_secs(2 * 3600));
    sim.turn.as_mut().unwrap().dead = true;
    sim.expect(Duration::from_secs(30), "relay_lost", |s| {
        s.has(0, |e| matches!(e, Event::RelayLost { .. }))
    });
    let lost = sim.now;
    let now_unix = unix + (sim.now - sim.start).as_secs();
    let users = rest_users(&secret, 1, now_unix, 60);
    let users: Vec<(&str, &str)> = users.iter().map(|(u, p)| (&u[..], &p[..])).collect();
    sim.add_turn(addr(TURN), &users);
    meanwhile(&mut sim, &secret);
    sim.expect(
        Duration::from_secs(30),
        "the relay ready again, or failed",
        |s| relay_ready_count(s) == 2 || s.has(0, |e| matches!(e, Event::RelayFailed { .. })),
    );
    let took = sim.now - lost;
    println!("ready again {took:?} after the loss");
    (sim, took)
}

fn relay_ready_count(sim: &Sim) -> usize {
    sim.events(0)
        .iter()
        .filter(|e| matches!(e, Event::RelayReady { .. }))
        .count()
}

fn assert_ready_again_without_failure(sim: &Sim, took: Duration) {
    let failed: Vec<_> = sim
        .events(0)
        .into_iter()
        .filter(|e| matches!(e, Event::RelayFailed { .. }))
        .collect();
    assert!(failed.is_empty(), "seed {}: {failed:?}", sim.seed);
    assert_eq!(relay_ready_count(sim), 2);
    assert!(
        took <= RETRY_FIRST + GRANT_WAIT + Duration::from_secs(1),
        "{took:?}"
    );
}

/// The rendezvous server's credentials live a day; coturn refuses a new allocation with
/// expired ones. A client whose relay is lost two hours after it registered asks the
/// server for a fresh grant before it allocates again, and gets its relay back without a
/// failure. With the renewal disabled this test fails (relay_failed): the restarted TURN
/// server does not know the old credentials.
#[test]
fn allocating_again_hours_later_asks_the_server_for_fresh_credentials() {
    let (sim, took) = relay_lost_hours_later(21, |_, _| {});
    assert_ready_again_without_failure(&sim, took);
}

/// The same, the rendezvous server having restarted too, just before the client asks
/// (between two keepalives): it registers the client again with its id and a new token,
/// and the client takes the new token (its keepalives are not refused afterwards).
#[test]
fn asking_for_fresh_credentials_from_a_restarted_server_registers_again() {
    let (mut sim, took) = relay_lost_hours_later(22, |sim, secret| {
        // The renewal goes RETRY_FIRST after the loss: restart the server just before.
        sim.run_for(RETRY_FIRST - Duration::from_millis(50));
        let config = RegistryConfig {
            turn: Some(secret.clone()),
            ..RegistryConfig::default()
        };
        sim.registry = p2pchat::registry::Registry::with_seed(config, 0xfeed);
    });
    assert_ready_again_without_failure(&sim, took);
    assert!(
        sim.has(0, |e| matches!(e, Event::Registered { id: 1, again: true })),
        "{:?}",
        sim.events(0)
    );
    let token = sim.registry.get(1).expect("registered again").token;
    sim.run_for(Duration::from_secs(60));
    assert_eq!(sim.registry.get(1).map(|e| e.token), Some(token));
    assert_eq!(sim.id(0), 1);
    // Registered again by the renewal's answer, not by a keepalive refused afterwards.
    let refused: Vec<_> = sim
        .events(0)
        .into_iter()
        .filter(
            |e| matches!(e, Event::Notice { message } if message.contains("no longer knows us")),
        )
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
}
