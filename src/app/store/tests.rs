//! Unit tests of the parent module (kept apart so that the module reads as code).

use super::*;
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "p2pchat-store-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn identity() -> Identity {
    Identity {
        name: Some("alice".into()),
        display_name: Some("Alice Liddell".into()),
        id: Some(3),
        token: Some(u64::MAX - 1),
    }
}

#[test]
fn open_creates_the_directory_private() {
    let tmp = TempDir::new("create");
    let dir = tmp.0.join("a").join("b");
    let store = Store::open(&dir).unwrap();
    assert_eq!(store.dir(), dir);
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    assert!(dir.join(LOCK_FILE).is_file());
}

#[test]
fn missing_files_load_as_nothing() {
    let tmp = TempDir::new("missing");
    let store = Store::open(&tmp.0).unwrap();
    assert_eq!(store.load_identity().unwrap(), None);
    assert_eq!(store.load_outbox().unwrap(), vec![]);
}

#[test]
fn identity_round_trips() {
    let tmp = TempDir::new("identity");
    let store = Store::open(&tmp.0).unwrap();
    store.save_identity(&identity()).unwrap();
    assert_eq!(store.load_identity().unwrap(), Some(identity()));
    let changed = Identity {
        display_name: None,
        ..identity()
    };
    store.save_identity(&changed).unwrap();
    drop(store);
    let store = Store::open(&tmp.0).unwrap();
    assert_eq!(store.load_identity().unwrap(), Some(changed));
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(tmp.0.join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(
        mode & 0o077,
        0,
        "identity.json holds the token: mode {mode:o}"
    );
}

#[test]
fn outbox_round_trips() {
    let tmp = TempDir::new("outbox");
    let store = Store::open(&tmp.0).unwrap();
    let queued = vec![
        Queued {
            to: "bob".into(),
            text: "hi \"bob\" ✓\nsecond line".into(),
            queued_at_ms: 1_795_000_000_000,
        },
        Queued {
            to: "3".into(),
            text: String::new(),
            queued_at_ms: 0,
        },
    ];
    store.save_outbox(&queued).unwrap();
    assert_eq!(store.load_outbox().unwrap(), queued);
    store.save_outbox(&[]).unwrap();
    assert_eq!(store.load_outbox().unwrap(), vec![]);
}

#[test]
fn files_are_readable_json_with_a_version() {
    let tmp = TempDir::new("format");
    let store = Store::open(&tmp.0).unwrap();
    store.save_identity(&identity()).unwrap();
    let text = fs::read_to_string(tmp.0.join(IDENTITY_FILE)).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["version"], 1);
    assert_eq!(value["identity"]["name"], "alice");
    assert_eq!(value["identity"]["token"], u64::MAX - 1);
    assert!(text.lines().count() > 3, "pretty-printed: {text}");
}

#[test]
fn unknown_fields_are_ignored_and_missing_options_are_none() {
    let tmp = TempDir::new("future");
    let store = Store::open(&tmp.0).unwrap();
    fs::write(
        tmp.0.join(IDENTITY_FILE),
        r#"{"version": 1, "later": [1, 2], "identity": {"name": "bob", "avatar": "x"}}"#,
    )
    .unwrap();
    assert_eq!(
        store.load_identity().unwrap(),
        Some(Identity {
            name: Some("bob".into()),
            ..Identity::default()
        })
    );
    fs::write(
        tmp.0.join("history/bob.json"),
        r#"{"version": 1, "colour": "blue", "entries": [{"n": 4, "at_ms": 9,
            "direction": "in", "peer_id": null, "text": "x", "delivery": "received",
            "edited_at_ms": 12}]}"#,
    )
    .unwrap();
    let history = store.load_history().unwrap();
    assert_eq!(history.last("bob", 5)[0].n, 4);
    assert_eq!(history.conversations(), vec![("bob", 9)]);
}

#[test]
fn a_second_open_is_locked_until_the_first_is_dropped() {
    let tmp = TempDir::new("lock");
    let first = Store::open(&tmp.0).unwrap();
    // Same process, new open file description: flock conflicts.
    match Store::open(&tmp.0) {
        Err(StoreError::Locked { dir }) => assert_eq!(dir, tmp.0),
        other => panic!("expected Locked, got {other:?}"),
    }
    let message = Store::open(&tmp.0).unwrap_err().to_string();
    assert!(message.contains(&*tmp.0.to_string_lossy()), "{message}");
    assert!(message.contains("--state-dir"), "{message}");
    drop(first);
    let again = Store::open(&tmp.0).unwrap();
    assert!(matches!(
        Store::open(&tmp.0),
        Err(StoreError::Locked { .. })
    ));
    drop(again);
}

#[test]
fn garbage_and_truncated_files_are_corrupt_not_a_panic() {
    let tmp = TempDir::new("corrupt");
    let store = Store::open(&tmp.0).unwrap();
    store.save_identity(&identity()).unwrap();
    let path = tmp.0.join(IDENTITY_FILE);
    let good = fs::read(&path).unwrap();
    let bad: Vec<Vec<u8>> = vec![
        good[..good.len() / 2].to_vec(),
        Vec::new(),
        b"\xff\xfe garbage \x00".to_vec(),
        b"[1, 2, 3]".to_vec(),
        b"null".to_vec(),
        br#"{"identity": {"name": "x"}}"#.to_vec(),
        br#"{"version": 2, "identity": {}}"#.to_vec(),
        br#"{"version": "1", "identity": {}}"#.to_vec(),
        br#"{"version": 1, "identity": {"id": -1}}"#.to_vec(),
        br#"{"version": 1}"#.to_vec(),
    ];
    for contents in bad {
        fs::write(&path, &contents).unwrap();
        match store.load_identity() {
            Err(e @ StoreError::Corrupt { .. }) => {
                assert_eq!(e.path(), path);
                assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
            }
            other => panic!(
                "{:?}: expected Corrupt, got {other:?}",
                String::from_utf8_lossy(&contents)
            ),
        }
    }
    fs::write(
        tmp.0.join(OUTBOX_FILE),
        b"{\"version\": 1, \"queued\": [{\"to\": 3}]}",
    )
    .unwrap();
    assert!(matches!(
        store.load_outbox(),
        Err(StoreError::Corrupt { .. })
    ));
    // The next save replaces the corrupt file.
    store.save_identity(&identity()).unwrap();
    assert_eq!(store.load_identity().unwrap(), Some(identity()));
}

#[test]
fn a_crash_before_the_rename_leaves_the_old_file_and_open_cleans_up() {
    let tmp = TempDir::new("crash");
    let store = Store::open(&tmp.0).unwrap();
    store.save_identity(&identity()).unwrap();
    drop(store);
    // A crash between writing the temporary file and renaming it: a torn `.tmp` beside
    // the good file.
    let tmp_path = tmp.0.join("identity.json.tmp");
    fs::write(&tmp_path, b"{\"version\": 1, \"identity\": {\"na").unwrap();
    let other_tmp = tmp.0.join("outbox.json.tmp");
    fs::write(&other_tmp, b"").unwrap();
    let store = Store::open(&tmp.0).unwrap();
    assert_eq!(store.load_identity().unwrap(), Some(identity()));
    assert_eq!(store.load_outbox().unwrap(), vec![]);
    assert!(!tmp_path.exists(), "stale .tmp removed on open");
    assert!(!other_tmp.exists(), "stale .tmp removed on open");
    store.save_identity(&Identity::default()).unwrap();
    assert_eq!(store.load_identity().unwrap(), Some(Identity::default()));
    assert!(!tmp_path.exists(), "a save leaves no .tmp behind");
}

#[test]
fn a_stale_tmp_is_ignored_while_the_store_is_open() {
    let tmp = TempDir::new("tmp-open");
    let store = Store::open(&tmp.0).unwrap();
    store
        .save_outbox(&[Queued {
            to: "bob".into(),
            text: "hi".into(),
            queued_at_ms: 1,
        }])
        .unwrap();
    fs::write(tmp.0.join("outbox.json.tmp"), b"garbage").unwrap();
    assert_eq!(store.load_outbox().unwrap().len(), 1);
    // A save overwrites it rather than appending to it.
    store.save_outbox(&[]).unwrap();
    assert_eq!(store.load_outbox().unwrap(), vec![]);
}

#[test]
fn an_unwritable_directory_is_an_io_error() {
    let tmp = TempDir::new("io");
    let file = tmp.0.join("not-a-dir");
    fs::write(&file, b"").unwrap();
    match Store::open(&file.join("state")) {
        Err(e @ StoreError::Io { .. }) => assert!(e.to_string().contains("not-a-dir"), "{e}"),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn default_dir_ends_in_p2pchat() {
    if let Some(dir) = Store::default_dir() {
        assert!(dir.ends_with("p2pchat"), "{}", dir.display());
        assert!(dir.is_absolute(), "{}", dir.display());
    }
}
fn sample_history() -> History {
    let mut h = History::new(DEFAULT_HISTORY_CAP);
    let bob = conversation_key(Some("Bob"), 5);
    let anon = conversation_key(None, 3);
    h.record(
        &bob,
        1_000,
        Direction::Out,
        Some(5),
        "hi bob",
        Delivery::Sent,
    );
    h.record(
        &anon,
        2_000,
        Direction::In,
        Some(3),
        "who's this?",
        Delivery::Received,
    );
    h.record(
        &bob,
        3_000,
        Direction::In,
        None,
        "hi ✓ \"quoted\"\n",
        Delivery::Received,
    );
    h.record(
        &bob,
        4_000,
        Direction::Out,
        Some(5),
        "later",
        Delivery::Queued,
    );
    h
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().ino()
}

#[test]
fn history_round_trips() {
    let tmp = TempDir::new("history");
    let store = Store::open(&tmp.0).unwrap();
    assert!(store.load_history().unwrap().conversations().is_empty());
    let mut h = sample_history();
    assert!(h.is_dirty());
    store.save_history(&mut h).unwrap();
    assert!(!h.is_dirty());
    drop(store);
    let store = Store::open(&tmp.0).unwrap();
    let loaded = store.load_history().unwrap();
    assert!(!loaded.is_dirty());
    assert_eq!(loaded.conversations(), h.conversations());
    assert_eq!(
        loaded.conversations(),
        vec![("bob", 4_000), ("id-3", 2_000)]
    );
    for key in ["bob", "id-3"] {
        assert_eq!(loaded.last(key, 100), h.last(key, 100));
    }
    let bob: Vec<_> = loaded.last("bob", 100).iter().map(|e| e.n).collect();
    assert_eq!(bob, vec![1, 3, 4]);
    assert_eq!(loaded.last("bob", 1)[0].text, "later");
    assert_eq!(loaded.last("bob", 1)[0].delivery, Delivery::Queued);
    assert!(loaded.last("nobody", 5).is_empty());
    assert!(tmp.0.join("history/bob.json").is_file());
    assert!(tmp.0.join("history/id-3.json").is_file());
    let text = fs::read_to_string(tmp.0.join("history/bob.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["version"], 1);
    assert_eq!(value["conversation"], "bob");
    assert_eq!(value["entries"][0]["direction"], "out");
    assert_eq!(value["entries"][0]["delivery"], "sent");
    assert_eq!(value["entries"][1]["peer_id"], serde_json::Value::Null);
}

#[test]
fn n_continues_after_reload() {
    let tmp = TempDir::new("n");
    let store = Store::open(&tmp.0).unwrap();
    let mut h = sample_history();
    store.save_history(&mut h).unwrap();
    let mut loaded = store.load_history().unwrap();
    let n = loaded.record("carol", 5_000, Direction::Out, None, "x", Delivery::Sent);
    assert_eq!(n, 5);
    let m = loaded.record("id-3", 6_000, Direction::Out, None, "y", Delivery::Sent);
    assert_eq!(m, 6);
    store.save_history(&mut loaded).unwrap();
    // Highest n in a conversation other than the last one recorded.
    let mut again = store.load_history().unwrap();
    assert_eq!(
        again.record("bob", 7_000, Direction::In, None, "z", Delivery::Received),
        7
    );
}

#[test]
fn only_dirty_conversations_are_rewritten() {
    let tmp = TempDir::new("dirty");
    let store = Store::open(&tmp.0).unwrap();
    let mut h = sample_history();
    store.save_history(&mut h).unwrap();
    // Every save makes a new file (write, then rename): a new inode.
    let bob = tmp.0.join("history/bob.json");
    let anon = tmp.0.join("history/id-3.json");
    let (bob_ino, anon_ino) = (inode(&bob), inode(&anon));

    store.save_history(&mut h).unwrap();
    assert_eq!(
        (inode(&bob), inode(&anon)),
        (bob_ino, anon_ino),
        "nothing dirty"
    );

    let n = h.record(
        "bob",
        5_000,
        Direction::Out,
        Some(5),
        "more",
        Delivery::Sent,
    );
    assert!(h.is_dirty());
    store.save_history(&mut h).unwrap();
    assert!(!h.is_dirty());
    assert_ne!(inode(&bob), bob_ino, "bob changed");
    assert_eq!(inode(&anon), anon_ino, "id-3 did not");
    let bob_ino = inode(&bob);

    // A delivery change dirties only its conversation, and only if it changes.
    assert!(h.set_delivery("bob", n, Delivery::Sent));
    assert!(!h.is_dirty());
    assert!(h.set_delivery("bob", n, Delivery::Delivered));
    assert!(h.is_dirty());
    store.save_history(&mut h).unwrap();
    assert_ne!(inode(&bob), bob_ino);
    assert_eq!(inode(&anon), anon_ino);
    let loaded = store.load_history().unwrap();
    assert_eq!(loaded.last("bob", 1)[0].delivery, Delivery::Delivered);
    assert!(fs::read_dir(tmp.0.join(HISTORY_DIR)).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
}

#[test]
fn set_delivery_finds_only_kept_entries() {
    let mut h = History::new(2);
    let first = h.record("bob", 1, Direction::Out, None, "1", Delivery::Sent);
    let second = h.record("bob", 2, Direction::Out, None, "2", Delivery::Sent);
    let third = h.record("bob", 3, Direction::Out, None, "3", Delivery::Sent);
    assert!(
        !h.set_delivery("bob", first, Delivery::Delivered),
        "dropped"
    );
    assert!(
        !h.set_delivery("alice", second, Delivery::Delivered),
        "other conversation"
    );
    assert!(
        !h.set_delivery("bob", third + 1, Delivery::Delivered),
        "no such n"
    );
    assert!(h.set_delivery("bob", second, Delivery::Undelivered));
    assert_eq!(h.last("bob", 2)[0].delivery, Delivery::Undelivered);
    assert_eq!(h.last("bob", 2)[1].delivery, Delivery::Sent);
}

#[test]
fn cap_keeps_the_newest_entries() {
    let mut h = History::new(3);
    for i in 1..=5u64 {
        assert_eq!(
            h.record("bob", i, Direction::In, None, "x", Delivery::Received),
            i
        );
    }
    h.record("alice", 9, Direction::In, None, "x", Delivery::Received);
    let bob: Vec<_> = h.last("bob", 10).iter().map(|e| e.n).collect();
    assert_eq!(bob, vec![3, 4, 5]);
    let two: Vec<_> = h.last("bob", 2).iter().map(|e| e.n).collect();
    assert_eq!(two, vec![4, 5]);
    assert_eq!(h.last("alice", 10).len(), 1, "the cap is per conversation");
    assert_eq!(History::new(0).cap(), 1);

    // Loading applies DEFAULT_HISTORY_CAP to a file that holds more.
    let tmp = TempDir::new("cap");
    let store = Store::open(&tmp.0).unwrap();
    let mut big = History::new(DEFAULT_HISTORY_CAP + 5);
    for i in 0..DEFAULT_HISTORY_CAP as u64 + 5 {
        big.record("bob", i, Direction::In, None, "x", Delivery::Received);
    }
    store.save_history(&mut big).unwrap();
    let mut loaded = store.load_history().unwrap();
    let kept = loaded.last("bob", usize::MAX);
    assert_eq!(kept.len(), DEFAULT_HISTORY_CAP);
    assert_eq!(kept[0].n, 6);
    assert_eq!(
        kept[DEFAULT_HISTORY_CAP - 1].n,
        DEFAULT_HISTORY_CAP as u64 + 5
    );
    let next = loaded.record("bob", 0, Direction::In, None, "x", Delivery::Received);
    assert_eq!(next, DEFAULT_HISTORY_CAP as u64 + 6);
}

#[test]
fn conversations_are_listed_most_recent_first() {
    let mut h = History::new(10);
    assert!(h.conversations().is_empty());
    h.record("a", 100, Direction::In, None, "x", Delivery::Received);
    h.record("b", 200, Direction::In, None, "x", Delivery::Received);
    h.record("c", 300, Direction::In, None, "x", Delivery::Received);
    h.record("a", 400, Direction::In, None, "x", Delivery::Received);
    // The clock jumped back: b is still the latest.
    h.record("b", 50, Direction::In, None, "x", Delivery::Received);
    assert_eq!(h.conversations(), vec![("b", 50), ("a", 400), ("c", 300)]);
}

#[test]
fn a_corrupt_history_file_is_named_and_the_others_still_load() {
    let tmp = TempDir::new("history-corrupt");
    let store = Store::open(&tmp.0).unwrap();
    let mut h = sample_history();
    store.save_history(&mut h).unwrap();
    let bad = tmp.0.join("history/id-3.json");
    let good = fs::read(&bad).unwrap();
    for (k, contents) in [
        &good[..good.len() - 5],
        b"{\"version\": 1, \"entries\": [{\"n\": 1}]}",
    ]
    .into_iter()
    .enumerate()
    {
        fs::write(&bad, contents).unwrap();
        match store.load_history() {
            Err(e @ StoreError::Corrupt { .. }) => assert_eq!(e.path(), bad),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // Moved aside, never to be overwritten: to `.damaged`, then (each load below
        // moves its own copy) `.damaged-2`, `-3`, ... beside it.
        let aside = tmp.0.join(if k == 0 {
            "history/id-3.json.damaged"
        } else {
            "history/id-3.json.damaged-3"
        });
        assert!(!bad.exists());
        assert_eq!(fs::read(&aside).unwrap(), contents);
        fs::write(&bad, contents).unwrap();
        let (mut lossy, errors) = store.load_history_lossy();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path(), bad);
        assert!(
            errors[0].to_string().contains("moved aside"),
            "{}",
            errors[0]
        );
        assert_eq!(lossy.conversations(), vec![("bob", 4_000)]);
        assert_eq!(
            lossy.record("bob", 5_000, Direction::In, None, "x", Delivery::Received),
            5
        );
    }
    // Files other than `<key>.json` are not history.
    fs::create_dir(tmp.0.join("history/dir.json")).unwrap();
    assert_eq!(
        store.load_history().unwrap().conversations(),
        vec![("bob", 4_000)]
    );
}

#[test]
fn a_damaged_identity_is_moved_aside_and_never_overwritten() {
    let tmp = TempDir::new("damaged-identity");
    let store = Store::open(&tmp.0).unwrap();
    let path = tmp.0.join(IDENTITY_FILE);
    fs::write(&path, b"{\"version\": 1, \"identity\": {\"na").unwrap();
    let e = store.load_identity().unwrap_err();
    let aside = tmp.0.join("identity.json.damaged");
    assert!(e.to_string().contains(&*aside.to_string_lossy()), "{e}");
    store.save_identity(&identity()).unwrap();
    assert_eq!(
        fs::read(&aside).unwrap(),
        b"{\"version\": 1, \"identity\": {\"na"
    );
    assert_eq!(store.load_identity().unwrap(), Some(identity()));
}

#[test]
fn no_file_is_written_or_read_through_a_symbolic_link() {
    use std::os::unix::fs::symlink;
    let tmp = TempDir::new("symlinks");
    let store = Store::open(&tmp.0).unwrap();
    let outside = TempDir::new("symlinks-outside");
    let target = outside.0.join("stolen");
    // A link planted where the next save writes its temporary file.
    symlink(&target, tmp.0.join("identity.json.tmp")).unwrap();
    store.save_identity(&identity()).unwrap();
    assert!(!target.exists(), "the save followed the planted link");
    assert_eq!(store.load_identity().unwrap(), Some(identity()));
    // A link in place of a file is not read: it is moved aside as damaged.
    fs::write(&target, b"{\"version\": 1, \"queued\": []}").unwrap();
    symlink(&target, tmp.0.join(OUTBOX_FILE)).unwrap();
    match store.load_outbox() {
        Err(e @ StoreError::Corrupt { .. }) => {
            assert!(e.to_string().contains("symbolic link"), "{e}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    store.save_outbox(&[]).unwrap();
    assert_eq!(
        fs::read(&target).unwrap(),
        b"{\"version\": 1, \"queued\": []}",
        "the save wrote through the link"
    );
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&tmp.0.join(OUTBOX_FILE)), 0o600);
    assert_eq!(mode(&tmp.0.join(IDENTITY_FILE)), 0o600);
}

#[test]
fn an_open_state_directory_is_closed_to_others() {
    let tmp = TempDir::new("mode");
    fs::set_permissions(&tmp.0, fs::Permissions::from_mode(0o755)).unwrap();
    let _store = Store::open(&tmp.0).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&tmp.0), 0o700);
    assert_eq!(mode(&tmp.0.join(HISTORY_DIR)), 0o700);
}

#[test]
fn a_crash_mid_history_save_leaves_the_old_conversation() {
    let tmp = TempDir::new("history-crash");
    let store = Store::open(&tmp.0).unwrap();
    let mut h = sample_history();
    store.save_history(&mut h).unwrap();
    drop(store);
    let torn = tmp.0.join("history/bob.json.tmp");
    fs::write(&torn, b"{\"version\": 1, \"conversation\": \"bob\", \"entr").unwrap();
    fs::write(tmp.0.join("history/carol.json.tmp"), b"garbage").unwrap();
    let store = Store::open(&tmp.0).unwrap();
    assert!(!torn.exists());
    let loaded = store.load_history().unwrap();
    assert_eq!(loaded.conversations(), h.conversations());
    assert_eq!(loaded.last("bob", 10), h.last("bob", 10));
}

#[test]
fn any_key_gets_a_safe_file_and_comes_back() {
    let tmp = TempDir::new("keys");
    let store = Store::open(&tmp.0).unwrap();
    let keys = [
        "../escape",
        "a/b",
        "",
        ".",
        "..",
        ".hidden",
        "Alice",
        "%41",
        "é",
        "x.json.tmp",
    ];
    let mut h = History::new(10);
    for (i, key) in keys.iter().enumerate() {
        h.record(key, i as u64, Direction::In, None, key, Delivery::Received);
    }
    store.save_history(&mut h).unwrap();
    assert!(!tmp.0.join("escape.json").exists());
    for entry in fs::read_dir(tmp.0.join(HISTORY_DIR)).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(name.ends_with(".json") && !name.starts_with('.'), "{name}");
    }
    let loaded = store.load_history().unwrap();
    assert_eq!(loaded.conversations().len(), keys.len());
    for key in keys {
        assert_eq!(loaded.last(key, 10), h.last(key, 10), "{key:?}");
    }
}

#[test]
fn conversation_keys_of_names_and_ids() {
    assert_eq!(conversation_key(Some("alice"), 1), "alice");
    assert_eq!(conversation_key(Some("Alice"), 2), "alice");
    assert_eq!(conversation_key(Some("b.o-b_9"), 2), "b.o-b_9");
    assert_eq!(conversation_key(None, 3), "id-3");
    assert_eq!(conversation_key(None, u32::MAX), "id-4294967295");
    for hostile in [
        "", ".", "..", "../x", "a/b", "a\\b", "/", "a\0", "9lives", "_x",
    ] {
        let key = conversation_key(Some(hostile), 7);
        assert!(key.starts_with('_'), "{hostile:?} -> {key}");
        assert!(!key.contains(".."), "{hostile:?} -> {key}");
    }
    assert_ne!(
        conversation_key(Some("a/b"), 1),
        conversation_key(Some("a\\b"), 1)
    );
    assert_ne!(
        conversation_key(Some("a/b"), 1),
        conversation_key(Some("a_b"), 1)
    );
    assert_ne!(
        conversation_key(Some(""), 1),
        conversation_key(Some("."), 1)
    );
    // Stable: the key is a file name that must not change between versions.
    assert_eq!(
        fnv1a(b"a"),
        0xaf63_dc4c_8601_ec8c,
        "the published FNV-1a value"
    );
    assert_eq!(conversation_key(Some("a/b"), 1), "_a_b-e620c3190468cf61");
}

/// A key that is safe as one file name: what conversation_key promises.
fn assert_safe_key(key: &str) {
    assert!(!key.is_empty());
    assert!(key.len() <= MAX_KEY, "{key}");
    assert!(!key.contains(['/', '\\', '\0']), "{key:?}");
    assert!(
        key != "." && key != ".." && !key.starts_with('.'),
        "{key:?}"
    );
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b)),
        "{key:?}"
    );
    assert_eq!(file_stem(key), key, "a key is its own file name");
}

proptest::proptest! {
    #[test]
    fn conversation_key_is_safe_for_any_name(
        name in proptest::option::of(proptest::prop_oneof![
            proptest::arbitrary::any::<String>(),
            "[./\\\\%\\x00a-zA-Z0-9 _-]{0,40}",
            proptest::strategy::Just("..".to_string()),
        ]),
        id in proptest::arbitrary::any::<u32>(),
    ) {
        let key = conversation_key(name.as_deref(), id);
        assert_safe_key(&key);
        match name.as_deref() {
            Some(n) if crate::wire::check_name(n).is_ok() => {
                proptest::prop_assert_eq!(key, n.to_ascii_lowercase())
            }
            Some(_) => proptest::prop_assert!(!key.contains("..") && key.starts_with('_')),
            None => proptest::prop_assert_eq!(key, format!("id-{id}")),
        }
    }

    #[test]
    fn valid_names_are_their_lower_case(name in "[A-Za-z][A-Za-z0-9_.-]{0,31}") {
        proptest::prop_assert!(crate::wire::check_name(&name).is_ok());
        proptest::prop_assert_eq!(conversation_key(Some(&name), 0), name.to_ascii_lowercase());
    }

    #[test]
    fn file_stems_are_safe_and_reversible(key in proptest::arbitrary::any::<String>()) {
        let stem = file_stem(&key);
        proptest::prop_assert!(!stem.is_empty() && !stem.starts_with('.'));
        proptest::prop_assert!(!stem.contains(['/', '\0']));
        proptest::prop_assert_eq!(key_of_stem(&stem), key);
    }
}
