//! File transfers on the simulated network: whole files through 30% loss, duplication and
//! reordering, chat flowing at the same time, cancel from either side, refusal, a bad
//! digest, a hostile name, and a peer that vanishes mid-transfer.
//!
//! The files are in memory (`Vec<u8>` sources, [`MemSink`] sinks). Seeded runs print their
//! seed; `SIM_SEED=<n>` replays one.

mod sim;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2pchat::peer::{EndReason, Event, PeerConfig};
use p2pchat::peer::{FileSink, TransferFailure};
use p2pchat::wire::{ClientId, FileEnd, Message, CHUNK_SIZE};
use sha2::{Digest, Sha256};
use sim::{default_config, file_bytes, seeds, NetConfig, Sim};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// What a [`MemSink`] holds and how it ended.
#[derive(Default, Debug)]
struct Written {
    data: Vec<u8>,
    finished: bool,
    aborted: bool,
}

/// An in-memory download.
struct MemSink(Arc<Mutex<Written>>);

impl FileSink for MemSink {
    fn write_chunk(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0.lock().unwrap().data.extend_from_slice(data);
        Ok(())
    }
    fn finish(self: Box<Self>) -> std::io::Result<PathBuf> {
        self.0.lock().unwrap().finished = true;
        Ok(PathBuf::from("memory"))
    }
    fn abort(self: Box<Self>) {
        let mut w = self.0.lock().unwrap();
        w.aborted = true;
        w.data.clear();
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// [`sim::patient_config`] (bounds for 30% loss), with file transfers derived from it
/// and patient `FileCancel`s too.
fn patient_config() -> PeerConfig {
    let mut cfg = sim::patient_config().with_file_defaults();
    cfg.files.cancel_tries = 30;
    cfg
}

/// Two registered peers (0 and 1) with a session.
fn connected(seed: u64, net: NetConfig, cfg: &PeerConfig) -> Sim {
    let mut sim = Sim::new(seed, net);
    sim.add_registered_peers(2, cfg);
    sim.connect(0, 1);
    sim.expect(secs(300), "the request arrives", |s| {
        s.has(1, |e| matches!(e, Event::Request { .. }))
    });
    sim.accept(1, None);
    sim.expect(secs(300), "both connected", |s| {
        s.has(0, |e| matches!(e, Event::Connected { .. }))
            && s.has(1, |e| matches!(e, Event::Connected { .. }))
    });
    sim
}

/// Peer 0 offers `data` (under `name`, with `digest`) to peer 1 and waits for the offer to
/// arrive; returns peer 0's and peer 1's numbers of the transfer.
fn offer(sim: &mut Sim, name: &str, data: Vec<u8>, digest: [u8; 32]) -> (u64, u64) {
    let to = sim.id(1);
    let size = data.len() as u64;
    let seed = sim.seed;
    let mine = sim
        .command(0, |p, now| {
            p.send_file(now, Some(to), name, size, digest, Box::new(data))
        })
        .unwrap_or_else(|e| panic!("sendfile refused: {e} (seed {seed})"));
    sim.expect(secs(120), "the offer arrives", |s| {
        s.has(1, |e| matches!(e, Event::FileOffer { .. }))
    });
    let theirs = sim
        .events(1)
        .iter()
        .find_map(|e| match e {
            Event::FileOffer { n, .. } => Some(*n),
            _ => None,
        })
        .expect("offered");
    (mine, theirs)
}

fn get(sim: &mut Sim, n: u64) -> Arc<Mutex<Written>> {
    let written = Arc::new(Mutex::new(Written::default()));
    let sink = Box::new(MemSink(Arc::clone(&written)));
    sim.command(1, |p, now| p.get_file(now, n, sink))
        .expect("getfile");
    written
}

fn failed(sim: &Sim, i: usize) -> Option<TransferFailure> {
    sim.events(i).into_iter().find_map(|e| match e {
        Event::FileFailed { reason, .. } => Some(reason),
        _ => None,
    })
}

#[test]
fn a_file_arrives_identical_through_loss_while_chat_flows() {
    for seed in seeds(12) {
        println!("seed {seed}");
        let cfg = patient_config();
        let mut sim = connected(seed, NetConfig::lossy(0.3, 0.1), &cfg);
        let data = file_bytes(150 * CHUNK_SIZE + 77, seed);
        let (_, n) = offer(&mut sim, "data.bin", data.clone(), sha256(&data));
        let offered = sim.events(1).into_iter().find_map(|e| match e {
            Event::FileOffer {
                name, size, sha256, ..
            } => Some((name, size, sha256)),
            _ => None,
        });
        assert_eq!(
            offered,
            Some((
                "data.bin".to_string(),
                data.len() as u64,
                p2pchat::peer::hex(&sha256(&data))
            )),
            "seed {seed}"
        );
        let written = get(&mut sim, n);
        // Chat both ways while the chunks travel.
        let (a, b) = (sim.id(0), sim.id(1));
        for k in 0..20 {
            sim.send(0, Some(b), &format!("a{k}"));
            sim.send(1, Some(a), &format!("b{k}"));
            sim.run_for(Duration::from_millis(50));
        }
        sim.expect(secs(600), "the file is received and confirmed", |s| {
            s.has(1, |e| matches!(e, Event::FileReceived { .. }))
                && s.has(0, |e| matches!(e, Event::FileSent { .. }))
        });
        let w = written.lock().unwrap();
        assert!(w.finished && !w.aborted, "seed {seed}");
        assert!(w.data == data, "seed {seed}: the bytes differ");
        drop(w);
        sim.expect(secs(600), "every chat message shown", |s| {
            s.shown(1, a).len() == 20 && s.shown(0, b).len() == 20
        });
        let texts: Vec<String> = sim.shown(1, a).into_iter().map(|(_, t)| t).collect();
        let want: Vec<String> = (0..20).map(|k| format!("a{k}")).collect();
        assert_eq!(texts, want, "seed {seed}");
        assert_eq!(failed(&sim, 0), None, "seed {seed}");
        assert_eq!(failed(&sim, 1), None, "seed {seed}");
        // Progress was reported, but not per chunk.
        let progress = sim.count(1, |e| matches!(e, Event::FileProgress { .. }));
        assert!(progress < 150, "seed {seed}: {progress} progress events");
    }
}

#[test]
fn an_empty_file_arrives() {
    let cfg = default_config().with_file_defaults();
    let mut sim = connected(1, NetConfig::perfect(), &cfg);
    let (_, n) = offer(&mut sim, "empty", Vec::new(), sha256(&[]));
    let written = get(&mut sim, n);
    sim.expect(secs(10), "received", |s| {
        s.has(1, |e| matches!(e, Event::FileReceived { size: 0, .. }))
            && s.has(0, |e| matches!(e, Event::FileSent { .. }))
    });
    assert!(written.lock().unwrap().finished);
}

#[test]
fn nothing_is_sent_until_the_receiver_answers_and_a_refusal_ends_it() {
    let cfg = default_config().with_file_defaults();
    let mut sim = connected(2, NetConfig::perfect(), &cfg);
    let data = file_bytes(10 * CHUNK_SIZE, 2);
    let (_, n) = offer(&mut sim, "x.bin", data.clone(), sha256(&data));
    sim.run_for(secs(5));
    assert!(sim
        .sent_by(sim.addr(0), |m| matches!(m, Message::Chunk { .. }))
        .is_empty());
    sim.command(1, |p, now| p.refuse_file(now, Some(n)))
        .expect("refuse");
    sim.expect(secs(10), "the offerer hears the refusal", |s| {
        failed(s, 0) == Some(TransferFailure::Refused)
    });
    assert!(sim.peer(0).transfers().is_empty());
    assert!(sim.peer(1).transfers().is_empty());
    assert!(sim
        .sent_by(sim.addr(0), |m| matches!(m, Message::Chunk { .. }))
        .is_empty());
}

fn cancel_mid_transfer(canceller: usize, seed: u64) {
    let cfg = patient_config();
    let mut sim = connected(seed, NetConfig::lossy(0.3, 0.1), &cfg);
    let data = file_bytes(2000 * CHUNK_SIZE, seed);
    let (mine, theirs) = offer(&mut sim, "big.bin", data.clone(), sha256(&data));
    let written = get(&mut sim, theirs);
    sim.expect(secs(600), "some bytes written", |_| {
        written.lock().unwrap().data.len() > 20 * CHUNK_SIZE
    });
    let n = if canceller == 0 { mine } else { theirs };
    sim.command(canceller, |p, now| p.cancel_file(now, Some(n)))
        .expect("cancel");
    let other = 1 - canceller;
    sim.expect(secs(600), "both sides report the failure", |s| {
        failed(s, 0).is_some() && failed(s, 1).is_some()
    });
    assert_eq!(
        failed(&sim, canceller),
        Some(TransferFailure::Cancelled { by_peer: false }),
        "seed {seed}"
    );
    assert_eq!(
        failed(&sim, other),
        Some(TransferFailure::Cancelled { by_peer: true }),
        "seed {seed}"
    );
    let w = written.lock().unwrap();
    assert!(w.aborted && !w.finished && w.data.is_empty(), "seed {seed}");
    drop(w);
    // Once settled, no chunk flows any more and chat still works.
    sim.run_for(secs(30));
    let chunks_before = sim
        .sent_by(sim.addr(0), |m| matches!(m, Message::Chunk { .. }))
        .len();
    let b = sim.id(1);
    sim.send(0, Some(b), "still here");
    sim.expect(secs(300), "chat after the cancel", |s| {
        s.shown(1, s.id(0)).len() == 1
    });
    let chunks_after = sim
        .sent_by(sim.addr(0), |m| matches!(m, Message::Chunk { .. }))
        .len();
    assert_eq!(chunks_before, chunks_after, "seed {seed}");
}

#[test]
fn the_receiver_cancels_mid_transfer() {
    for seed in seeds(4) {
        println!("seed {seed}");
        cancel_mid_transfer(1, seed);
    }
}

#[test]
fn the_sender_cancels_mid_transfer() {
    for seed in seeds(4) {
        println!("seed {seed}");
        cancel_mid_transfer(0, seed);
    }
}

#[test]
fn a_wrong_digest_fails_on_both_sides_and_removes_the_file() {
    let cfg = default_config().with_file_defaults();
    let mut sim = connected(3, NetConfig::perfect(), &cfg);
    let data = file_bytes(5 * CHUNK_SIZE + 1, 3);
    let (_, n) = offer(&mut sim, "x.bin", data, [0; 32]);
    let written = get(&mut sim, n);
    sim.expect(secs(10), "both fail", |s| {
        failed(s, 0).is_some() && failed(s, 1).is_some()
    });
    assert_eq!(failed(&sim, 1), Some(TransferFailure::ChecksumMismatch));
    assert_eq!(failed(&sim, 0), Some(TransferFailure::ChecksumMismatch));
    let w = written.lock().unwrap();
    assert!(w.aborted && !w.finished);
}

#[test]
fn a_hostile_file_name_is_refused_at_once() {
    let cfg = default_config().with_file_defaults();
    let mut sim = connected(4, NetConfig::perfect(), &cfg);
    let to = sim.id(1);
    for (k, name) in ["../x", "/etc/passwd", "a/b", "..", "c:\\x"]
        .iter()
        .enumerate()
    {
        sim.command(0, |p, now| {
            p.send_file(
                now,
                Some(to),
                name,
                3,
                sha256(b"abc"),
                Box::new(b"abc".to_vec()),
            )
        })
        .expect("sendfile");
        sim.expect(secs(10), "the offerer hears the refusal", |s| {
            s.count(0, |e| {
                matches!(
                    e,
                    Event::FileFailed {
                        reason: TransferFailure::Refused,
                        ..
                    }
                )
            }) == k + 1
        });
    }
    assert_eq!(
        sim.count(1, |e| matches!(
            e,
            Event::FileFailed {
                reason: TransferFailure::BadName(_),
                ..
            }
        )),
        5
    );
    assert!(!sim.has(1, |e| matches!(e, Event::FileOffer { .. })));
    assert!(sim.peer(1).transfers().is_empty());
}

#[test]
fn a_vanishing_peer_fails_the_transfer_on_the_other_side() {
    for (vanisher, seed) in [(0usize, 5u64), (1, 6)] {
        println!("seed {seed}, peer {vanisher} vanishes");
        let cfg = default_config().with_file_defaults();
        let mut sim = connected(seed, NetConfig::perfect(), &cfg);
        let data = file_bytes(100_000 * CHUNK_SIZE, seed);
        let (_, n) = offer(&mut sim, "huge.bin", data.clone(), sha256(&data));
        let written = get(&mut sim, n);
        sim.expect(secs(60), "some bytes written", |_| {
            written.lock().unwrap().data.len() > 100 * CHUNK_SIZE
        });
        let addr = sim.addr(vanisher);
        sim.set_down(addr, true);
        let other = 1 - vanisher;
        sim.expect(secs(120), "the transfer fails", |s| {
            failed(s, other).is_some()
        });
        match failed(&sim, other) {
            Some(TransferFailure::SessionEnded(EndReason::PeerSilent))
            | Some(TransferFailure::Undeliverable) => {}
            other => panic!("seed {seed}: {other:?}"),
        }
        if other == 1 {
            assert!(written.lock().unwrap().aborted, "seed {seed}");
        }
        assert!(sim.peer(other).transfers().is_empty());
    }
}

#[test]
fn commands_with_unknown_or_ambiguous_numbers_are_refused() {
    let cfg = default_config().with_file_defaults();
    let mut sim = connected(7, NetConfig::perfect(), &cfg);
    let e = sim
        .command(1, |p, now| p.cancel_file(now, Some(9)))
        .unwrap_err();
    assert!(e.to_string().contains("no transfer 9"), "{e}");
    let e = sim
        .command(1, |p, now| p.refuse_file(now, None))
        .unwrap_err();
    assert!(e.to_string().contains("no file offer"), "{e}");
    let data = b"hello".to_vec();
    offer(&mut sim, "a.txt", data.clone(), sha256(&data));
    let to: ClientId = sim.id(1);
    sim.command(0, |p, now| {
        p.send_file(
            now,
            Some(to),
            "b.txt",
            5,
            sha256(&data),
            Box::new(data.clone()),
        )
    })
    .expect("second offer");
    sim.run_for(secs(1));
    let e = sim
        .command(1, |p, now| p.refuse_file(now, None))
        .unwrap_err();
    assert!(e.to_string().contains("2 file offer"), "{e}");
    let e = sim.command(1, |p, _| p.file_offer(Some(77))).unwrap_err();
    assert!(e.to_string().contains("no transfer 77"), "{e}");
}

#[test]
fn several_transfers_run_at_once_in_both_directions() {
    for seed in seeds(4) {
        println!("seed {seed}");
        let cfg = patient_config();
        let mut sim = connected(100 + seed, NetConfig::lossy(0.3, 0.1), &cfg);
        let (a, b) = (sim.id(0), sim.id(1));
        // Two files from 0 to 1, one from 1 to 0, all offered before any is accepted.
        let files: Vec<Vec<u8>> = (0..3)
            .map(|k| file_bytes(40 * CHUNK_SIZE + 13 * k, seed * 10 + k as u64))
            .collect();
        for (k, data) in files.iter().enumerate() {
            let (from, to) = if k < 2 { (0, b) } else { (1, a) };
            let (d, digest) = (data.clone(), sha256(data));
            let size = data.len() as u64;
            sim.command(from, |p, now| {
                p.send_file(now, Some(to), &format!("f{k}"), size, digest, Box::new(d))
            })
            .expect("sendfile");
        }
        sim.expect(secs(300), "every offer arrives", |s| {
            s.count(1, |e| matches!(e, Event::FileOffer { .. })) == 2
                && s.count(0, |e| matches!(e, Event::FileOffer { .. })) == 1
        });
        let mut sinks = Vec::new();
        for i in [0usize, 1] {
            let offers: Vec<(u64, String)> = sim
                .events(i)
                .into_iter()
                .filter_map(|e| match e {
                    Event::FileOffer { n, name, .. } => Some((n, name)),
                    _ => None,
                })
                .collect();
            for (n, name) in offers {
                let written = Arc::new(Mutex::new(Written::default()));
                let sink = Box::new(MemSink(Arc::clone(&written)));
                sim.command(i, |p, now| p.get_file(now, n, sink))
                    .expect("getfile");
                sinks.push((name, written));
            }
        }
        sim.send(0, Some(b), "during");
        // The chat too: the files may now be done before its resends (30% loss) get it
        // through.
        sim.expect(secs(900), "every file received and confirmed", |s| {
            s.shown(1, a).len() == 1
                && s.count(1, |e| matches!(e, Event::FileReceived { .. })) == 2
                && s.count(0, |e| matches!(e, Event::FileReceived { .. })) == 1
                && s.count(0, |e| matches!(e, Event::FileSent { .. })) == 2
                && s.count(1, |e| matches!(e, Event::FileSent { .. })) == 1
        });
        for (name, written) in sinks {
            let k: usize = name[1..].parse().unwrap();
            let w = written.lock().unwrap();
            assert!(w.finished, "seed {seed}: {name}");
            assert!(w.data == files[k], "seed {seed}: {name} differs");
        }
        assert_eq!(sim.shown(1, a).len(), 1, "seed {seed}");
        // The numbers are per client: peer 1 numbered its own offer after the two it got.
        let numbers: Vec<u64> = sim
            .events(1)
            .into_iter()
            .filter_map(|e| match e {
                Event::FileOffer { n, .. } | Event::FileOffered { n, .. } => Some(n),
                _ => None,
            })
            .collect();
        let mut unique = numbers.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), numbers.len(), "seed {seed}: {numbers:?}");
    }
}

#[test]
fn a_receiver_that_gets_no_chunk_gives_up_after_its_tries() {
    let cfg = default_config().with_file_defaults();
    let mut sim = connected(8, NetConfig::perfect(), &cfg);
    let data = file_bytes(3 * CHUNK_SIZE, 8);
    let (_, n) = offer(&mut sim, "x.bin", data.clone(), sha256(&data));
    // Every FileGet is lost: the offerer never starts.
    sim.drop_first(1000, |m| matches!(m, Message::FileGet { .. }));
    let written = get(&mut sim, n);
    sim.expect(secs(120), "the receiver gives up", |s| {
        failed(s, 1).is_some()
    });
    assert_eq!(failed(&sim, 1), Some(TransferFailure::NotStarted));
    assert!(written.lock().unwrap().aborted);
    let gets = sim
        .sent_by(sim.addr(1), |m| matches!(m, Message::FileGet { .. }))
        .len();
    assert!(gets >= 6, "{gets} FileGets");
    sim.expect(secs(60), "the offerer is told", |s| failed(s, 0).is_some());
    assert_eq!(
        failed(&sim, 0),
        Some(TransferFailure::Cancelled { by_peer: true })
    );
}

#[test]
fn an_unanswered_offer_expires_on_both_sides() {
    let cfg = default_config().with_file_defaults();
    let lifetime = cfg.files.offer_lifetime;
    let mut sim = connected(9, NetConfig::perfect(), &cfg);
    let data = b"never taken".to_vec();
    offer(&mut sim, "x.txt", data.clone(), sha256(&data));
    sim.run_for(lifetime - secs(1));
    assert_eq!(failed(&sim, 0), None, "not before its lifetime");
    let offers = sim
        .sent_by(sim.addr(0), |m| matches!(m, Message::FileOffer { .. }))
        .len();
    assert!(
        (2..=12).contains(&offers),
        "{offers} offers in {lifetime:?}"
    );
    sim.expect(secs(30), "both told", |s| {
        failed(s, 0).is_some() && failed(s, 1).is_some()
    });
    assert_eq!(failed(&sim, 0), Some(TransferFailure::Expired));
    assert_eq!(failed(&sim, 1), Some(TransferFailure::Expired));
    assert!(sim.peer(1).transfers().is_empty());
}

#[test]
fn a_sender_that_stops_while_the_session_lives_fails_the_transfer_as_stalled() {
    let cfg = default_config().with_file_defaults();
    let stall = cfg.files.stall_timeout;
    let mut sim = connected(10, NetConfig::perfect(), &cfg);
    let data = file_bytes(5000 * CHUNK_SIZE, 10);
    let (_, n) = offer(&mut sim, "x.bin", data.clone(), sha256(&data));
    let written = get(&mut sim, n);
    sim.expect(secs(60), "some bytes written", |_| {
        written.lock().unwrap().data.len() > 100 * CHUNK_SIZE
    });
    // From now on no chunk, nor the sender's FileCancel, reaches the receiver; the
    // session's pings still do.
    let sender = sim.addr(0);
    sim.drop_first_where(usize::MAX, move |p| {
        p.from == sender
            && matches!(
                p.message,
                Message::Chunk { .. } | Message::FileCancel { .. }
            )
    });
    let stopped = sim.now;
    sim.expect(stall + secs(5), "the receiver gives up", |s| {
        failed(s, 1).is_some()
    });
    assert_eq!(failed(&sim, 1), Some(TransferFailure::Stalled));
    assert!(sim.now >= stopped + stall, "not before the stall timeout");
    assert!(written.lock().unwrap().aborted);
    assert!(!sim.has(1, |e| matches!(e, Event::Terminated { .. })));
}

#[test]
fn an_offer_refused_for_want_of_space_fails_as_no_space_on_both_sides() {
    let mut sim = connected(11, NetConfig::perfect(), &default_config());
    let data = file_bytes(5000, 3);
    let digest = sha256(&data);
    let (mine, theirs) = offer(&mut sim, "big.bin", data, digest);
    sim.command(1, |p, now| p.refuse_file_no_space(now, theirs, 1234))
        .expect("refused");
    sim.run_for(secs(5));
    assert_eq!(
        failed(&sim, 1),
        Some(TransferFailure::NoSpace {
            needed: 5000,
            free: Some(1234)
        })
    );
    assert_eq!(
        failed(&sim, 0),
        Some(TransferFailure::NoSpace {
            needed: 5000,
            free: None
        })
    );
    assert!(sim.events(0).iter().any(|e| matches!(
        e,
        Event::FileFailed { n, .. } if *n == mine
    )));
    // On the wire: a refusal that every peer can read, NoSpace for those that know it.
    let cancels = sim.sent_by(sim.addr(1), |m| matches!(m, Message::FileCancel { .. }));
    assert!(!cancels.is_empty());
    for c in cancels {
        assert!(
            matches!(
                c.message,
                Message::FileCancel {
                    reason: FileEnd::Refused,
                    precise: Some(FileEnd::NoSpace),
                    ..
                }
            ),
            "{:?}",
            c.message
        );
    }
    // Nothing moved.
    assert!(sim
        .sent_by(sim.addr(0), |m| matches!(m, Message::Chunk { .. }))
        .is_empty());
    let shown = TransferFailure::NoSpace {
        needed: 1 << 50,
        free: Some(3 << 30),
    }
    .to_string();
    assert_eq!(
        shown,
        "not enough free space in the downloads directory: the file needs 1.0 PiB, 3.0 GiB are free"
    );
}

/// A source over bytes in memory that counts its reads, and fails every read at or past
/// `fail_from` (a disk that goes bad mid-transfer).
struct CountingSource {
    data: Vec<u8>,
    reads: Arc<Mutex<u64>>,
    fail_from: u64,
}

impl p2pchat::peer::FileSource for CountingSource {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        *self.reads.lock().unwrap() += 1;
        if offset >= self.fail_from {
            return Err(std::io::Error::other("the disk went away"));
        }
        let start = (offset as usize).min(self.data.len());
        let n = buf.len().min(self.data.len() - start);
        buf[..n].copy_from_slice(&self.data[start..start + n]);
        Ok(n)
    }
}

fn offer_from(sim: &mut Sim, data: &[u8], source: CountingSource) -> u64 {
    let to = sim.id(1);
    let (size, digest) = (data.len() as u64, sha256(data));
    sim.command(0, |p, now| {
        p.send_file(now, Some(to), "counted.bin", size, digest, Box::new(source))
    })
    .expect("sendfile");
    sim.expect(secs(120), "the offer arrives", |s| {
        s.has(1, |e| matches!(e, Event::FileOffer { .. }))
    });
    sim.events(1)
        .iter()
        .find_map(|e| match e {
            Event::FileOffer { n, .. } => Some(*n),
            _ => None,
        })
        .expect("offered")
}

/// The sender keeps no copy of the chunks in flight: each copy it sends, a resend too, is
/// read from the source as it leaves. Through 30% loss the file arrives whole, and the
/// source was read once per chunk sent (first copies and resends), more than once per chunk.
#[test]
fn every_chunk_sent_is_read_as_it_leaves_resends_too() {
    let seed = 3;
    println!("seed {seed}");
    let cfg = patient_config();
    let mut sim = connected(seed, NetConfig::lossy(0.3, 0.1), &cfg);
    let chunks = 120;
    let data = file_bytes(chunks * CHUNK_SIZE, seed);
    let reads = Arc::new(Mutex::new(0));
    let source = CountingSource {
        data: data.clone(),
        reads: Arc::clone(&reads),
        fail_from: u64::MAX,
    };
    let n = offer_from(&mut sim, &data, source);
    let written = get(&mut sim, n);
    sim.expect(secs(600), "the file is received and confirmed", |s| {
        s.has(1, |e| matches!(e, Event::FileReceived { .. }))
            && s.has(0, |e| matches!(e, Event::FileSent { .. }))
    });
    assert!(written.lock().unwrap().data == data, "the bytes differ");
    let sent = sim
        .sent_by(sim.addr(0), |m| matches!(m, Message::Chunk { .. }))
        .len() as u64;
    let reads = *reads.lock().unwrap();
    println!("{chunks} chunks, {sent} sent, {reads} reads");
    assert_eq!(reads, sent, "one read per chunk sent");
    assert!(sent > chunks as u64, "30% loss and no resend?");
}

/// A source that fails mid-transfer fails it on both sides (disk_error at the sender), and
/// nothing of it is left at the receiver.
#[test]
fn a_source_that_fails_mid_transfer_fails_it_on_both_sides() {
    let seed = 4;
    println!("seed {seed}");
    let cfg = default_config().with_file_defaults();
    let mut sim = connected(seed, NetConfig::perfect(), &cfg);
    let data = file_bytes(200 * CHUNK_SIZE, seed);
    let source = CountingSource {
        data: data.clone(),
        reads: Arc::new(Mutex::new(0)),
        fail_from: 50 * CHUNK_SIZE as u64,
    };
    let n = offer_from(&mut sim, &data, source);
    let written = get(&mut sim, n);
    sim.expect(secs(120), "failed on both sides", |s| {
        failed(s, 0).is_some() && failed(s, 1).is_some()
    });
    assert!(
        matches!(failed(&sim, 0), Some(TransferFailure::DiskError(d)) if d.contains("the disk went away")),
        "{:?}",
        failed(&sim, 0)
    );
    // The receiver is told it was the peer's disk (an empty detail).
    assert_eq!(
        failed(&sim, 1),
        Some(TransferFailure::DiskError(String::new()))
    );
    let w = written.lock().unwrap();
    assert!(w.aborted && !w.finished && w.data.is_empty());
}
