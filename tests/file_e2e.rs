//! End-to-end tests of file transfer through the real binary (`p2pchat client --json`), on
//! loopback, with a real server: a few MiB arrive byte-identical; an existing file is not
//! overwritten; and, against a hand-driven peer speaking the protocol from a plain UDP
//! socket, hostile file names are refused and cancel from either side removes the partial
//! file.

mod common;
mod sim;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use common::{JsonClient, SealedPeer, Server, TempDir, WAIT};
use p2pchat::wire::{ClientId, FileEnd, Message, CHUNK_SIZE};
use sim::file_bytes;

/// Short resend periods, so that nothing in these tests waits long.
const RETRY: &str = "0.3";

/// The names of the files in `dir`, sorted.
fn files_in(dir: &TempDir) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A client with its downloads directory; waits for its id.
fn client(name: &str, server: SocketAddr, downloads: &Path) -> (JsonClient, ClientId) {
    client_with(name, server, downloads, &[])
}

fn client_with(
    name: &str,
    server: SocketAddr,
    downloads: &Path,
    extra: &[&str],
) -> (JsonClient, ClientId) {
    let server = server.to_string();
    let dir = downloads.to_str().unwrap().to_string();
    let mut args = vec![
        "--server",
        &server,
        "--retry-interval",
        RETRY,
        "--downloads",
        &dir,
    ];
    args.extend_from_slice(extra);
    let mut c = JsonClient::spawn(name, &args);
    let reg = c.wait_event("registered", |v| v["event"] == "registered");
    let id = reg["id"].as_u64().unwrap() as ClientId;
    (c, id)
}

/// Two connected clients, A and B, each with a downloads directory.
fn pair() -> (
    Server,
    JsonClient,
    JsonClient,
    ClientId,
    ClientId,
    TempDir,
    TempDir,
) {
    let server = Server::start(&[]);
    let (da, db) = (TempDir::new("a"), TempDir::new("b"));
    let (mut a, ida) = client("A", server.addr, &da.0);
    let (mut b, idb) = client("B", server.addr, &db.0);
    a.type_line(&format!("connect {idb}"));
    b.expect(json!({"event": "request", "from": ida}));
    b.type_line("accept");
    a.expect_connected(idb);
    b.expect_connected(ida);
    (server, a, b, ida, idb, da, db)
}

fn send_and_receive(name: &str, data: &[u8]) -> (Value, Vec<String>, TempDir, TempDir) {
    let (_server, mut a, mut b, ida, idb, da, db) = pair();
    let path = da.0.join(name);
    std::fs::write(&path, data).unwrap();
    if let Some(existing) = files_in(&db).first() {
        panic!("B's downloads should start empty, has {existing}");
    }
    // An earlier file of the same name on B's side, for the overwrite test.
    let before = db.0.join(name);
    std::fs::write(&before, b"older file, keep me").unwrap();
    a.type_line(&format!("sendfile {} @{idb}", path.display()));
    let offer = b.wait_event("file_offer", |v| v["event"] == "file_offer");
    assert_eq!(offer["from"], ida);
    assert_eq!(offer["name"], name);
    assert_eq!(offer["size"], data.len());
    assert_eq!(offer["sha256"], hex(&Sha256::digest(data)));
    let n = offer["n"].as_u64().unwrap();
    b.type_line(&format!("getfile {n}"));
    a.type_line("chat keeps flowing");
    let got = b.wait_event_within(Duration::from_secs(60), "file_received", |v| {
        v["event"] == "file_received"
    });
    b.wait_until(WAIT, "shown the chat message", |log| {
        log.iter()
            .any(|v| v["event"] == "message" && v["text"] == "chat keeps flowing")
    });
    a.wait_event("file_sent", |v| v["event"] == "file_sent");
    assert_eq!(
        std::fs::read(&before).unwrap(),
        b"older file, keep me",
        "the existing file was overwritten"
    );
    let names = files_in(&db);
    (got, names, da, db)
}

#[test]
fn a_file_of_a_few_mib_arrives_byte_identical_beside_an_existing_one() {
    let data = file_bytes(3 * 1024 * 1024 + 123, 1);
    let (got, names, _da, db) = send_and_receive("photo.tar.gz", &data);
    let path = PathBuf::from(got["path"].as_str().unwrap());
    assert_eq!(path, db.0.join("photo.tar (1).gz"));
    assert_eq!(got["sha256"], hex(&Sha256::digest(&data)));
    assert!(std::fs::read(&path).unwrap() == data, "the bytes differ");
    // The file, the older one, and no temporary file left behind.
    assert_eq!(names, vec!["photo.tar (1).gz", "photo.tar.gz"]);
}

#[test]
fn bad_file_commands_get_one_clear_error_line() {
    let (_server, mut a, _b, _ida, _idb, da, _db) = pair();
    for (line, needle) in [
        ("getfile", "no file offer"),
        ("getfile 7", "no transfer 7"),
        ("cancel 3", "no transfer 3"),
        ("refuse x", "not a transfer number"),
        ("sendfile", "sendfile needs a file"),
        ("sendfile /no/such/file", "cannot read /no/such/file"),
        ("sendfile x @0", "start at 1"),
        ("sendfile x @99", "not connected to 99"),
    ] {
        a.type_line(line);
        let e = a.wait_event(line, |v| v["event"] == "error");
        let message = e["message"].as_str().unwrap();
        assert!(message.contains(needle), "{line}: {message}");
    }
    a.type_line(&format!("sendfile {}", da.0.display()));
    let e = a.wait_event("directory", |v| v["event"] == "error");
    assert!(e["message"].as_str().unwrap().contains("directory"), "{e}");
    a.type_line("transfers");
    a.expect(json!({"event": "transfers", "transfers": []}));
}

// ---------------------------------------------------------------- a hand-driven peer

/// A peer driven by the test (see [`common::SealedPeer`]): registers, is accepted by a
/// real client, then sends whatever file messages the test wants, sealed.
struct RawPeer(SealedPeer);

impl std::ops::Deref for RawPeer {
    type Target = SealedPeer;
    fn deref(&self) -> &SealedPeer {
        &self.0
    }
}

impl RawPeer {
    /// Registers with `server`, asks client `peer` to connect, and has `c` accept.
    fn connect(server: SocketAddr, c: &mut JsonClient, peer: ClientId) -> RawPeer {
        RawPeer(SealedPeer::connect(server, peer, |id| {
            c.expect(json!({"event": "request", "from": id}));
            c.type_line(&format!("accept {id}"));
        }))
    }

    fn offer(&self, n: u64, name: &str, data: &[u8]) {
        self.send(
            self.to,
            &Message::FileOffer {
                from: self.id,
                session: self.session,
                n,
                name: name.into(),
                size: data.len() as u64,
                sha256: Sha256::digest(data).into(),
            },
        );
    }

    fn chunk(&self, n: u64, seq: u64, data: &[u8]) {
        let start = (seq as usize - 1) * CHUNK_SIZE;
        let end = (start + CHUNK_SIZE).min(data.len());
        self.send(
            self.to,
            &Message::Chunk {
                from: self.id,
                session: self.session,
                n,
                seq,
                data: data[start..end].to_vec(),
            },
        );
    }
}

#[test]
fn hostile_file_names_are_refused_and_odd_ones_cleaned() {
    let server = Server::start(&[]);
    // The downloads directory is outer/in, so that an escape to `..` would show in outer.
    let outer = TempDir::new("hostile");
    let db = TempDir(outer.0.join("in"));
    std::fs::create_dir(&db.0).unwrap();
    let (mut b, idb) = client("B", server.addr, &db.0);
    let raw = RawPeer::connect(server.addr, &mut b, idb);
    let data = b"payload".to_vec();
    let hostile = ["../x", "/etc/passwd", "a/b", "..", ".", "..\\..\\x", ""];
    for (k, name) in hostile.iter().enumerate() {
        let n = k as u64 + 1;
        raw.offer(n, name, &data);
        let cancel = raw.recv_until(
            "the refusal",
            |m| matches!(m, Message::FileCancel { n: got, .. } if *got == n),
        );
        assert!(
            matches!(
                cancel,
                Message::FileCancel {
                    reason: FileEnd::Refused,
                    ..
                }
            ),
            "{name:?}: {cancel:?}"
        );
        let failed = b.wait_event(name, |v| v["event"] == "file_failed");
        assert_eq!(failed["reason"], "bad_name", "{name:?}");
    }
    assert!(b.events("file_offer").is_empty());
    // Control characters and a leading dot are cleaned, and the file stays inside.
    let n = 50;
    raw.offer(n, ".evil\u{1b}[2J\u{7}.txt", &data);
    let offer = b.wait_event("file_offer", |v| v["event"] == "file_offer");
    let local = offer["n"].as_u64().unwrap();
    b.type_line(&format!("getfile {local}"));
    raw.recv_until("FileGet", |m| matches!(m, Message::FileGet { .. }));
    raw.chunk(n, 1, &data);
    let got = b.wait_event("file_received", |v| v["event"] == "file_received");
    let path = PathBuf::from(got["path"].as_str().unwrap());
    assert_eq!(path, db.0.join("evil_[2J_.txt"));
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(files_in(&db), vec!["evil_[2J_.txt"]);
    let ack = raw.recv_until("the last ChunkAck", |m| {
        matches!(m, Message::ChunkAck { cumulative: 1, .. })
    });
    assert!(matches!(ack, Message::ChunkAck { n: 50, .. }));
    // Nothing was written beside the downloads directory.
    assert_eq!(files_in(&outer), vec!["in"]);
}

/// B accepts a file from the raw peer, gets part of it, then `who` cancels.
fn cancel_partial(receiver_cancels: bool) {
    let server = Server::start(&[]);
    let db = TempDir::new("cancel");
    let (mut b, idb) = client("B", server.addr, &db.0);
    let raw = RawPeer::connect(server.addr, &mut b, idb);
    let data = file_bytes(100 * CHUNK_SIZE, 9);
    raw.offer(1, "part.bin", &data);
    let offer = b.wait_event("file_offer", |v| v["event"] == "file_offer");
    let local = offer["n"].as_u64().unwrap();
    b.type_line(&format!("getfile {local}"));
    raw.recv_until("FileGet", |m| matches!(m, Message::FileGet { .. }));
    for seq in 1..=10 {
        raw.chunk(1, seq, &data);
    }
    raw.recv_until("the ack of chunk 10", |m| {
        matches!(m, Message::ChunkAck { cumulative: 10, .. })
    });
    // The partial file exists, under its temporary name only.
    let names = files_in(&db);
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with(".p2pchat-part"), "{names:?}");
    if receiver_cancels {
        b.type_line("cancel");
        let c = raw.recv_until("FileCancel", |m| matches!(m, Message::FileCancel { .. }));
        assert!(
            matches!(
                c,
                Message::FileCancel {
                    reason: FileEnd::Cancelled,
                    n: 1,
                    ..
                }
            ),
            "{c:?}"
        );
        let failed = b.wait_event("file_failed", |v| v["event"] == "file_failed");
        assert_eq!(failed["reason"], "cancelled");
    } else {
        raw.send(
            raw.to,
            &Message::FileCancel {
                from: raw.id,
                session: raw.session,
                offerer: raw.id,
                n: 1,
                reason: FileEnd::Cancelled,
                precise: None,
            },
        );
        raw.recv_until("FileCancelAck", |m| {
            matches!(m, Message::FileCancelAck { n: 1, .. })
        });
        let failed = b.wait_event("file_failed", |v| v["event"] == "file_failed");
        assert_eq!(failed["reason"], "cancelled_by_peer");
    }
    assert_eq!(
        files_in(&db),
        Vec::<String>::new(),
        "the partial file is removed"
    );
    // A late chunk is answered with a FileCancel, not written.
    raw.chunk(1, 11, &data);
    raw.recv_until("FileCancel for a late chunk", |m| {
        matches!(m, Message::FileCancel { n: 1, .. })
    });
    assert_eq!(files_in(&db), Vec::<String>::new());
}

#[test]
fn cancel_by_the_receiver_removes_the_partial_file() {
    cancel_partial(true);
}

#[test]
fn cancel_by_the_sender_removes_the_partial_file() {
    cancel_partial(false);
}

#[test]
fn a_transfer_between_two_clients_can_be_cancelled_by_the_sender() {
    let (_server, mut a, mut b, _ida, idb, da, db) = pair();
    // Large enough not to finish before the cancel: a sparse file reads as zeros.
    let path = da.0.join("zeros.bin");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    // Hashing 1 GiB takes a moment; the offer only comes after.
    a.type_line(&format!("sendfile {} @{idb}", path.display()));
    let offer = b.wait_event_within(Duration::from_secs(120), "file_offer", |v| {
        v["event"] == "file_offer"
    });
    b.type_line(&format!("getfile {}", offer["n"]));
    a.wait_event_within(Duration::from_secs(10), "progress", |v| {
        v["event"] == "file_progress"
    });
    a.type_line("cancel");
    let fa = a.wait_event("file_failed", |v| v["event"] == "file_failed");
    assert_eq!(fa["reason"], "cancelled");
    let fb = b.wait_event("file_failed", |v| v["event"] == "file_failed");
    assert_eq!(fb["reason"], "cancelled_by_peer");
    assert_eq!(
        files_in(&db),
        Vec::<String>::new(),
        "the partial file is removed"
    );
}

#[test]
fn the_end_of_a_scripts_input_waits_for_its_file_to_be_hashed_and_sent() {
    let (_server, mut a, mut b, _ida, idb, da, db) = pair();
    let data = file_bytes(2 * 1024 * 1024, 4);
    let path = da.path().join("script.bin");
    std::fs::write(&path, &data).unwrap();
    a.type_line(&format!("sendfile {} @{idb}", path.display()));
    // End of input at once: the file is still being hashed.
    a.proc.close_stdin();
    let offer = b.wait_event("file_offer", |v| v["event"] == "file_offer");
    b.type_line(&format!("getfile {}", offer["n"]));
    let got = b.wait_event_within(Duration::from_secs(60), "file_received", |v| {
        v["event"] == "file_received"
    });
    assert!(std::fs::read(got["path"].as_str().unwrap()).unwrap() == data);
    assert!(a.wait_exit().success());
    assert_eq!(a.events("file_sent").len(), 1, "{:#?}", a.log);
    assert_eq!(a.events("left").len(), 1);
    assert_eq!(files_in(&db), vec!["script.bin"]);
}

#[test]
fn sendfile_to_a_peer_by_name_among_several_sessions() {
    let server = Server::start(&[]);
    let (da, db, dc) = (TempDir::new("a"), TempDir::new("b"), TempDir::new("c"));
    let (mut a, _) = client_with("alice", server.addr, &da.0, &["--name", "alice"]);
    let (mut b, _) = client_with("bob", server.addr, &db.0, &["--name", "bob"]);
    let (mut c, _) = client_with("carol", server.addr, &dc.0, &["--name", "carol"]);
    for (peer, name) in [(&mut b, "bob"), (&mut c, "carol")] {
        peer.wait_event("claimed", |v| v["event"] == "claimed");
        a.type_line(&format!("connect {name}"));
        peer.wait_event("request", |v| {
            v["event"] == "request" && v["name"] == "alice"
        });
        peer.type_line("accept alice");
        a.wait_event("connected", |v| {
            v["event"] == "connected" && v["name"] == name
        });
    }
    let data = file_bytes(200_000, 7);
    let path = da.0.join("for-bob.bin");
    std::fs::write(&path, &data).unwrap();
    // carol is the current peer (the last connected): the @name must win.
    a.type_line(&format!("sendfile {} @bob", path.display()));
    let offer = b.wait_event("file_offer", |v| v["event"] == "file_offer");
    assert_eq!(offer["name"], "for-bob.bin");
    b.type_line("getfile");
    let got = b.wait_event_within(Duration::from_secs(30), "file_received", |v| {
        v["event"] == "file_received"
    });
    let received = std::fs::read(got["path"].as_str().unwrap()).unwrap();
    assert_eq!(received, data);
    c.read_for(Duration::from_millis(300));
    assert!(c.events("file_offer").is_empty(), "carol got an offer");
    assert!(files_in(&dc).is_empty());
}

#[test]
fn getfile_of_an_offer_bigger_than_the_free_space_is_refused_and_writes_nothing() {
    let server = Server::start(&[]);
    let db = TempDir::new("nospace");
    let (mut b, idb) = client("B", server.addr, &db.0);
    let raw = RawPeer::connect(server.addr, &mut b, idb);
    let size = 1u64 << 50;
    let free = p2pchat::app::downloads::free_space(db.path()).unwrap();
    assert!(free < size, "{free} bytes free: more than a PiB?");
    raw.send(
        raw.to,
        &Message::FileOffer {
            from: raw.id,
            session: raw.session,
            n: 1,
            name: "huge.iso".into(),
            size,
            sha256: [7; 32],
        },
    );
    let offer = b.wait_event("file_offer", |v| v["event"] == "file_offer");
    assert_eq!(offer["size"], size);
    b.type_line(&format!("getfile {}", offer["n"]));
    let failed = b.wait_event("file_failed", |v| v["event"] == "file_failed");
    assert_eq!(failed["reason"], "no_space", "{failed}");
    let detail = failed["detail"].as_str().unwrap();
    assert!(
        detail.contains("not enough free space") && detail.contains("1.0 PiB"),
        "{detail}"
    );
    let cancel = raw.recv_until("FileCancel", |m| matches!(m, Message::FileCancel { .. }));
    assert_eq!(cancel.file_end(), Some(FileEnd::NoSpace), "{cancel:?}");
    assert!(
        matches!(
            cancel,
            Message::FileCancel {
                reason: FileEnd::Refused,
                n: 1,
                ..
            }
        ),
        "an older peer reads a refusal: {cancel:?}"
    );
    assert_eq!(files_in(&db), Vec::<String>::new(), "nothing was created");
    assert!(!b.log.iter().any(|v| v["event"] == "error"), "{:#?}", b.log);
    // A chunk sent anyway is answered with the cancel again, and not written.
    raw.chunk(1, 1, &[0u8; CHUNK_SIZE]);
    raw.recv_until("FileCancel again", |m| {
        m.file_end() == Some(FileEnd::NoSpace)
    });
    assert_eq!(files_in(&db), Vec::<String>::new());
}

#[test]
fn the_offerer_is_told_no_space_by_a_peer_without_room() {
    let server = Server::start(&[]);
    let da = TempDir::new("offerer");
    let (mut a, ida) = client("A", server.addr, &da.0);
    let raw = RawPeer::connect(server.addr, &mut a, ida);
    let path = da.0.join("big.bin");
    std::fs::write(&path, file_bytes(50_000, 5)).unwrap();
    a.type_line(&format!("sendfile {} @{}", path.display(), raw.id));
    let Message::FileOffer { n, .. } =
        raw.recv_until("FileOffer", |m| matches!(m, Message::FileOffer { .. }))
    else {
        unreachable!()
    };
    raw.send(
        raw.to,
        &Message::file_cancel(raw.id, raw.session, ida, n, FileEnd::NoSpace),
    );
    let failed = a.wait_event("file_failed", |v| v["event"] == "file_failed");
    assert_eq!(failed["reason"], "no_space", "{failed}");
    let detail = failed["detail"].as_str().unwrap();
    assert!(detail.contains("does not have the 48.8 KiB"), "{detail}");
    raw.recv_until("FileCancelAck", |m| {
        matches!(m, Message::FileCancelAck { .. })
    });
}
