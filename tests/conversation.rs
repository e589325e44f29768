//! Whole conversations over the simulated network: two peers register, one asks, the other
//! accepts, they exchange 100 messages each way, one terminates, both leave.
//!
//! The lossy runs go over [`SEEDS`] seeds, each a different schedule of loss (30%),
//! duplication (10%) and reordering (jitter, and one datagram in ten held back). Every run
//! prints its seed and every assertion names it. To replay or search:
//!
//! - `SIM_SEED=<n> cargo test --test conversation` runs that one seed alone;
//! - `SIM_SEEDS=<count>` runs seeds `0..count` instead (try it with `--release`);
//! - `SIM_DUMP=1` prints the failing run's datagrams and events (`SIM_DUMP_ALL=1` with the
//!   `Chat`s and `Ack`s too).

mod sim;

use std::time::{Duration, Instant};

use p2pchat::peer::{EndReason, Event, PeerConfig};
use p2pchat::wire::{ClientId, Message};
use sim::{default_config, patient_config, seeds, NetConfig, Sim};

/// Seeds of the lossy runs.
const SEEDS: u64 = 500;

/// Messages each way.
const MESSAGES: usize = 100;

/// A whole run, from the first `Register` to both `Left`, must fit in this much virtual time.
const RUN_BOUND: Duration = Duration::from_secs(300);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// What a run did, for the assertions.
struct Run {
    sim: Sim,
    a: usize,
    b: usize,
}

impl Run {
    fn ids(&self) -> (ClientId, ClientId) {
        (self.sim.id(self.a), self.sim.id(self.b))
    }
}

fn text(from: &str, k: usize) -> String {
    format!("{from} says {k}")
}

/// Registers two peers, connects them, exchanges `MESSAGES` each way, terminates (a) and
/// leaves (both). Panics, naming the seed, if a phase does not complete within its bound.
fn converse(seed: u64, net: NetConfig, config: PeerConfig, setup: impl FnOnce(&mut Sim)) -> Run {
    let mut sim = Sim::new(seed, net);
    setup(&mut sim);
    let a = sim.add_peer(config.clone());
    let b = sim.add_peer(config);
    phase(&mut sim, secs(120), "both registered", |s| {
        s.registered(a) && s.registered(b)
    });
    let (ida, idb) = (sim.id(a), sim.id(b));

    sim.connect(a, b);
    phase(&mut sim, secs(200), "b sees the request", |s| {
        s.has(b, |e| matches!(e, Event::Request { .. }))
    });
    sim.accept(b, Some(ida));
    phase(&mut sim, secs(200), "a is connected", |s| {
        s.has(a, |e| matches!(e, Event::Connected { .. }))
    });

    // Both type, one line each every 50 ms.
    for k in 0..MESSAGES {
        sim.send(a, Some(idb), &text("a", k));
        sim.send(b, Some(ida), &text("b", k));
        sim.run_for(Duration::from_millis(50));
    }
    let delivered = |s: &Sim, i: usize| s.count(i, |e| matches!(e, Event::Delivered { .. }));
    phase(
        &mut sim,
        secs(300),
        "every message delivered and shown",
        |s| {
            delivered(s, a) == MESSAGES
                && delivered(s, b) == MESSAGES
                && s.shown(a, idb).len() == MESSAGES
                && s.shown(b, ida).len() == MESSAGES
        },
    );

    sim.terminate(a, Some(idb));
    let terminated = |s: &Sim, i: usize| s.has(i, |e| matches!(e, Event::Terminated { .. }));
    phase(&mut sim, secs(300), "both terminated", |s| {
        terminated(s, a) && terminated(s, b)
    });

    sim.leave(a);
    sim.leave(b);
    phase(&mut sim, secs(300), "both left", |s| {
        s.peer(a).is_finished() && s.peer(b).is_finished()
    });
    // Let stragglers (duplicates, late resends) arrive: they must change nothing.
    sim.run_for(secs(30));
    Run { sim, a, b }
}

/// Runs until `cond`, or panics naming `what` and the seed (dumping the run with `SIM_DUMP`).
fn phase(sim: &mut Sim, limit: Duration, what: &str, cond: impl FnMut(&Sim) -> bool) {
    if !sim.run_until(limit, cond) {
        if std::env::var("SIM_DUMP").is_ok() {
            dump(sim);
        }
        panic!(
            "seed {}: {what}: not reached within {limit:?} (virtual time {:?})",
            sim.seed,
            sim.elapsed()
        );
    }
}

/// The assertions every complete conversation must pass.
fn check(run: &Run) {
    let s = &run.sim;
    if std::env::var("SIM_DUMP").is_ok() {
        dump(s);
    }
    let (a, b) = (run.a, run.b);
    let (ida, idb) = run.ids();
    let seed = s.seed;
    for (me, other, other_id, other_name) in [(a, b, idb, "b"), (b, a, ida, "a")] {
        let expected: Vec<(u64, String)> = (0..MESSAGES)
            .map(|k| (k as u64 + 1, text(other_name, k)))
            .collect();
        assert_eq!(
            s.shown(me, other_id),
            expected,
            "seed {seed}: peer {me} must show each message of {other} once, in order"
        );
        let mut delivered: Vec<u64> = s
            .events(other)
            .iter()
            .filter_map(|e| match e {
                Event::Delivered { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        delivered.sort_unstable();
        assert_eq!(
            delivered,
            (1..=MESSAGES as u64).collect::<Vec<_>>(),
            "seed {seed}: peer {other} gets Delivered once for each message"
        );
        let events = s.events(me);
        let bad: Vec<&Event> = events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::Undelivered { .. }
                        | Event::Fatal { .. }
                        | Event::NoAnswer { .. }
                        | Event::LookupFailed { .. }
                        | Event::Rejected { .. }
                )
            })
            .collect();
        assert!(
            bad.is_empty(),
            "seed {seed}: peer {me}: {bad:?}: {:?}",
            summary(s, me)
        );
        let count = |pred: &dyn Fn(&Event) -> bool| events.iter().filter(|e| pred(e)).count();
        assert_eq!(
            count(&|e| matches!(e, Event::Connected { .. })),
            1,
            "seed {seed}: peer {me} connected once"
        );
        assert_eq!(
            count(&|e| matches!(e, Event::Terminated { .. })),
            1,
            "seed {seed}: peer {me} sees one Terminated"
        );
        assert_eq!(
            count(&|e| matches!(e, Event::Left { .. })),
            1,
            "seed {seed}: peer {me} left once"
        );
        assert_eq!(
            events
                .iter()
                .rev()
                .find(|e| matches!(e, Event::Left { .. })),
            Some(&Event::Left { server_acked: true }),
            "seed {seed}: peer {me}: the server acknowledged the leave"
        );
        assert!(s.peer(me).is_finished(), "seed {seed}: peer {me} finished");
    }
    assert_eq!(
        s.count(b, |e| matches!(e, Event::Request { .. })),
        1,
        "seed {seed}: the request is shown once"
    );
    assert!(
        s.has(a, |e| *e
            == Event::Terminated {
                peer: idb,
                reason: EndReason::ByUs
            }),
        "seed {seed}: a ended it and b confirmed: {:?}",
        summary(s, a)
    );
    assert!(
        s.has(b, |e| *e
            == Event::Terminated {
                peer: ida,
                reason: EndReason::ByPeer
            }),
        "seed {seed}: b must be told: {:?}",
        summary(s, b)
    );
    assert!(
        s.registry.is_empty(),
        "seed {seed}: the server table is empty"
    );
    let end = s
        .nodes
        .iter()
        .filter_map(|n| {
            n.events
                .iter()
                .rev()
                .find(|(_, e)| matches!(e, Event::Left { .. }))
        })
        .map(|(t, _)| *t - s.start)
        .max()
        .expect("both left");
    assert!(
        end <= RUN_BOUND,
        "seed {seed}: the run took {end:?} of virtual time (bound {RUN_BOUND:?})"
    );
}

/// Peer `i`'s events without the per-message ones.
fn summary(s: &Sim, i: usize) -> Vec<Event> {
    s.events(i)
        .into_iter()
        .filter(|e| {
            !matches!(
                e,
                Event::Sent { .. } | Event::Delivered { .. } | Event::Message { .. }
            )
        })
        .collect()
}

#[test]
fn conversation_without_loss_is_complete_and_quick() {
    println!("seed 1");
    let run = converse(1, NetConfig::perfect(), default_config(), |_| {});
    check(&run);
    let s = &run.sim;
    assert_eq!(s.stats.dropped + s.stats.filtered, 0);
    let chats = s.sent_by(s.addr(run.a), |m| matches!(m, Message::Chat { .. }));
    assert_eq!(chats.len(), MESSAGES, "nothing resent");
    assert!(s.elapsed() < secs(60), "{:?}", s.elapsed());
}

#[test]
fn conversations_under_30_percent_loss_duplication_and_reordering_are_complete() {
    let mut longest = Duration::ZERO;
    let mut totals = (0, 0, 0);
    for seed in seeds(SEEDS) {
        println!("seed {seed}");
        let run = converse(seed, NetConfig::lossy(0.3, 0.1), patient_config(), |_| {});
        check(&run);
        let s = &run.sim;
        assert!(s.stats.dropped > 0, "seed {seed}: the network lost nothing");
        assert!(
            s.stats.duplicated > 0,
            "seed {seed}: the network duplicated nothing"
        );
        let chats = s.sent_by(s.addr(run.a), |m| matches!(m, Message::Chat { .. }));
        assert!(chats.len() > MESSAGES, "seed {seed}: nothing was resent");
        longest = longest.max(s.elapsed());
        totals.0 += s.stats.sent;
        totals.1 += s.stats.dropped;
        totals.2 += s.stats.duplicated;
    }
    let (sent, dropped, duplicated) = totals;
    println!(
        "longest run {longest:?} of virtual time; {sent} datagrams sent, \
         {dropped} lost, {duplicated} duplicated"
    );
}

/// The simulated network does what the lossy runs rely on: it loses, duplicates and
/// reorders at about the configured rates.
#[test]
fn lossy_network_loses_duplicates_and_reorders_at_the_configured_rates() {
    let (mut sent, mut lost, mut doubled, mut overtaken, mut pairs) = (0, 0, 0, 0, 0);
    for seed in 0..10 {
        println!("seed {seed}");
        let run = converse(seed, NetConfig::lossy(0.3, 0.1), patient_config(), |_| {});
        let s = &run.sim;
        assert_eq!(
            s.stats.sent,
            s.log.len() as u64,
            "seed {seed}: every datagram is logged"
        );
        assert_eq!(s.stats.filtered, 0, "seed {seed}");
        sent += s.stats.sent;
        lost += s.stats.dropped;
        doubled += s.stats.duplicated;
        // Reordering: a datagram that arrives after one sent later on the same path.
        for (from, to) in [
            (s.addr(run.a), s.addr(run.b)),
            (s.addr(run.b), s.addr(run.a)),
        ] {
            let arrivals: Vec<Instant> = s
                .log
                .iter()
                .filter(|r| r.from == from && r.to == to)
                .filter_map(|r| r.arrivals.last().copied())
                .collect();
            pairs += arrivals.len().saturating_sub(1);
            overtaken += arrivals.windows(2).filter(|w| w[0] > w[1]).count();
        }
    }
    let rate = |n: u64| n as f64 / sent as f64;
    println!(
        "{sent} sent: {:.3} lost, {:.3} duplicated; {overtaken} of {pairs} consecutive pairs \
         arrive out of order",
        rate(lost),
        rate(doubled)
    );
    assert!((rate(lost) - 0.3).abs() < 0.02, "loss {}", rate(lost));
    // Duplicated: 10% of what was not lost.
    assert!(
        (rate(doubled) - 0.07).abs() < 0.02,
        "duplication {}",
        rate(doubled)
    );
    assert!(overtaken * 100 > pairs, "{overtaken} of {pairs} reordered");
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let seed = 42;
    println!("seed {seed}");
    let trace = |run: &Run| -> Vec<String> {
        let s = &run.sim;
        s.log
            .iter()
            .map(|r| {
                format!(
                    "{:?} {} {} {:?} {:?}",
                    r.at - s.start,
                    r.from,
                    r.to,
                    r.message,
                    r.fate
                )
            })
            .chain(s.nodes.iter().flat_map(|n| {
                n.events
                    .iter()
                    .map(move |(t, e)| format!("{:?} {e:?}", *t - s.start))
            }))
            .collect()
    };
    let first = converse(seed, NetConfig::lossy(0.3, 0.1), patient_config(), |_| {});
    let second = converse(seed, NetConfig::lossy(0.3, 0.1), patient_config(), |_| {});
    let (x, y) = (trace(&first), trace(&second));
    assert_eq!(x.len(), y.len(), "seed {seed}: the runs differ in length");
    if let Some(i) = (0..x.len()).find(|&i| x[i] != y[i]) {
        panic!(
            "seed {seed}: the runs part at line {i}:\n{}\n{}",
            x[i], y[i]
        );
    }
}

/// Loses the first `k` datagrams of each kind named. With `pings`, the first `2k + 2`
/// `Ping`s go too: an idle accepter pings every 5 s, with its `Accept` again while it has
/// heard nothing on the session, which brings the requester in without waiting for its
/// resent request.
fn lose_first(sim: &mut Sim, k: usize, pings: bool) {
    sim.drop_first(k, |m| matches!(m, Message::Accept { .. }));
    if pings {
        sim.drop_first(2 * k + 2, |m| matches!(m, Message::Ping { .. }));
    }
    sim.drop_first(k, |m| matches!(m, Message::Ack { .. }));
    sim.drop_first(k, |m| matches!(m, Message::TerminateAck { .. }));
    sim.drop_first(k, |m| matches!(m, Message::LeaveAck { .. }));
}

#[test]
fn conversation_with_accept_ack_terminate_ack_and_leave_ack_each_lost_three_times() {
    println!("seed 7");
    let run = converse(7, NetConfig::perfect(), default_config(), |s| {
        lose_first(s, 3, true)
    });
    check(&run);
    let s = &run.sim;
    let sent = |m: fn(&Message) -> bool| s.log.iter().filter(|r| m(&r.message)).count();
    assert_eq!(sent(|m| matches!(m, Message::Accept { .. })), 3 + 1);
    // The accepter sends its Accept again beside each Ping until it hears from the
    // requester (who cannot read the Pings without the keys the Accept brings): the
    // first request, the one sent at once when the peer's first hole-punching probe
    // arrives (punch.rs), and one resend carry the four Accepts.
    assert_eq!(
        sent(|m| matches!(m, Message::ConnectRequest { .. })),
        3,
        "lost Accepts are resent beside the pings, not only per resent request"
    );
    assert!(sent(|m| matches!(m, Message::TerminateAck { .. })) >= 4);
    assert_eq!(sent(|m| matches!(m, Message::LeaveAck { .. })), 2 + 3);
}

#[test]
fn conversations_with_the_answers_lost_repeatedly_and_random_loss_are_complete() {
    let mut lost: std::collections::BTreeMap<&str, usize> = Default::default();
    for seed in seeds(SEEDS / 2) {
        println!("seed {seed}");
        let run = converse(seed, NetConfig::lossy(0.3, 0.1), patient_config(), |s| {
            lose_first(s, 4, false)
        });
        check(&run);
        // The first four of each were lost; the run completed anyway. (A TerminateAck or a
        // LeaveAck may be needed fewer than five times: a reset from the peer also ends a
        // Terminate, and a NotRegistered answer also ends a Leave.)
        for r in run.sim.log.iter().filter(|r| r.fate == sim::Fate::Filtered) {
            *lost.entry(r.message.name()).or_insert(0) += 1;
        }
    }
    println!("lost by the filters over all seeds: {lost:?}");
    let runs = seeds(SEEDS / 2).len();
    assert_eq!(lost.get("Ack"), Some(&(4 * runs)), "{lost:?}");
    for name in ["TerminateAck", "LeaveAck"] {
        assert!(
            lost.get(name).is_some_and(|&n| n >= 3 * runs),
            "most runs lost {name} four times: {lost:?}"
        );
    }
}

/// What the default bounds gave up on, over all seeds.
#[derive(Debug, Default)]
struct GaveUp {
    registrations: usize,
    requests: usize,
    sessions_silent: usize,
    undelivered: usize,
}

/// The same conversation with the command line's default bounds under 30% loss: some
/// registrations, requests and messages are given up. Whatever happens, every message ends
/// in exactly one of `Delivered`/`Undelivered`, what is shown is shown once and in order,
/// every session that opened ends in `Terminated` on both sides, every peer ends in `Left`
/// or `Fatal`, and the run ends within the bound.
#[test]
fn default_bounds_end_every_message_and_session_in_an_event() {
    let mut gave_up = GaveUp::default();
    for seed in seeds(SEEDS / 2) {
        println!("seed {seed}");
        let mut sim = Sim::new(seed, NetConfig::lossy(0.3, 0.1));
        let a = sim.add_peer(default_config());
        let b = sim.add_peer(default_config());
        let up = |s: &Sim, i: usize| s.registered(i) || s.peer(i).is_finished();
        phase(&mut sim, secs(30), "registered or refused", |s| {
            up(s, a) && up(s, b)
        });
        for i in [a, b] {
            if !sim.registered(i) {
                gave_up.registrations += 1;
                let events = sim.events(i);
                assert!(
                    matches!(events.as_slice(), [Event::Fatal { message }]
                        if message.contains("no rendezvous server")),
                    "seed {seed}: peer {i}: {events:?}"
                );
            }
        }
        if sim.registered(a) && sim.registered(b) {
            let (ida, idb) = (sim.id(a), sim.id(b));
            let a_done = |s: &Sim| {
                s.has(a, |e| {
                    matches!(
                        e,
                        Event::Connected { .. }
                            | Event::NoAnswer { .. }
                            | Event::LookupFailed { .. }
                            | Event::Terminated { .. }
                    )
                })
            };
            sim.connect(a, b);
            phase(&mut sim, secs(200), "request seen or given up", |s| {
                s.has(b, |e| matches!(e, Event::Request { .. })) || a_done(s)
            });
            if sim.peer(b).pending_requests() == vec![ida] {
                sim.accept(b, Some(ida));
            }
            phase(&mut sim, secs(200), "connected or given up", a_done);
            if !sim.has(a, |e| matches!(e, Event::Connected { .. })) {
                gave_up.requests += 1;
            }
            for k in 0..MESSAGES {
                // A session may have ended already: the command is then refused.
                let _ = sim.command(a, |p, now| p.send(now, Some(idb), &text("a", k)));
                let _ = sim.command(b, |p, now| p.send(now, Some(ida), &text("b", k)));
                sim.run_for(Duration::from_millis(50));
            }
            phase(&mut sim, secs(300), "every message settled", |s| {
                [a, b].iter().all(|&i| {
                    let settled = s.count(i, |e| {
                        matches!(e, Event::Delivered { .. } | Event::Undelivered { .. })
                    });
                    settled == s.count(i, |e| matches!(e, Event::Sent { .. }))
                })
            });
            let _ = sim.command(a, |p, now| p.terminate(now, Some(idb)));
        }
        for i in [a, b] {
            sim.leave(i);
        }
        phase(&mut sim, secs(300), "both finished", |s| {
            s.peer(a).is_finished() && s.peer(b).is_finished()
        });
        sim.run_for(secs(30));
        assert!(
            sim.elapsed() <= RUN_BOUND + secs(30),
            "seed {seed}: {:?}",
            sim.elapsed()
        );

        for (me, other, name) in [(a, b, "a"), (b, a, "b")] {
            let events = sim.events(me);
            let (Some(my_id), Some(other_id)) = (sim.peer(me).id(), sim.peer(other).id()) else {
                continue;
            };
            // Every message ends in exactly one of Delivered / Undelivered.
            let mut fate = std::collections::BTreeMap::new();
            for e in &events {
                match e {
                    Event::Sent { seq, .. } => assert!(
                        fate.insert(*seq, None).is_none(),
                        "seed {seed}: {name} numbered {seq} twice"
                    ),
                    Event::Delivered { seq, .. } | Event::Undelivered { seq, .. } => {
                        let slot = fate.get_mut(seq).unwrap_or_else(|| {
                            panic!("seed {seed}: {name}: {e:?} for a message never sent")
                        });
                        assert!(slot.is_none(), "seed {seed}: {name}: {seq} settled twice");
                        *slot = Some(matches!(e, Event::Delivered { .. }));
                    }
                    _ => {}
                }
            }
            assert!(
                fate.values().all(Option::is_some),
                "seed {seed}: {name}: a message with no Delivered/Undelivered: {fate:?}"
            );
            // The other side showed a prefix, once each, in order, with the right texts.
            let shown = sim.shown(other, my_id);
            for (k, (seq, text_shown)) in shown.iter().enumerate() {
                assert_eq!(
                    *seq,
                    k as u64 + 1,
                    "seed {seed}: shown out of order: {shown:?}"
                );
                assert_eq!(*text_shown, text(name, k), "seed {seed}");
            }
            for (seq, delivered) in &fate {
                match delivered {
                    Some(false) => gave_up.undelivered += 1,
                    Some(true) => assert!(
                        *seq <= shown.len() as u64,
                        "seed {seed}: {name}: message {seq} reported delivered but never shown \
                         (shown: 1..={})",
                        shown.len()
                    ),
                    None => {}
                }
            }
            // Every session that opened ended, once; every peer ended.
            let opened = events
                .iter()
                .filter(|e| matches!(e, Event::Connected { peer, .. } if *peer == other_id))
                .count();
            let ended: Vec<EndReason> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Terminated { peer, reason } if *peer == other_id => Some(*reason),
                    _ => None,
                })
                .collect();
            let silent = ended
                .iter()
                .filter(|r| **r == EndReason::PeerSilent)
                .count();
            gave_up.sessions_silent += silent;
            assert!(
                opened <= ended.len(),
                "seed {seed}: {name}: {opened} sessions opened, {ended:?} ended"
            );
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, Event::Left { .. } | Event::Fatal { .. })),
                "seed {seed}: {name} never finished: {:?}",
                summary(&sim, me)
            );
        }
    }
    println!("given up with the default bounds under 30% loss: {gave_up:?}");
}

/// Prints the run's peer-to-peer datagrams and events (with `SIM_DUMP` set).
fn dump(s: &Sim) {
    for r in &s.log {
        if std::env::var("SIM_DUMP_ALL").is_ok()
            || !matches!(r.message, Message::Chat { .. } | Message::Ack { .. })
        {
            eprintln!(
                "{:>12.3?} {} -> {} {:?} {:?}",
                r.at - s.start,
                r.from,
                r.to,
                r.message,
                r.fate
            );
        }
    }
    for (i, n) in s.nodes.iter().enumerate() {
        for (t, e) in &n.events {
            if !matches!(
                e,
                Event::Sent { .. } | Event::Delivered { .. } | Event::Message { .. }
            ) {
                eprintln!("{:>12.3?} peer {i}: {e:?}", *t - s.start);
            }
        }
    }
}
