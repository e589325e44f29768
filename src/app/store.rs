//! The client's state directory: its identity, its offline outbox and its message history.
//!
//! # What is stored where
//!
//! One directory holds the state of one client identity. By default it is
//! [`Store::default_dir`], `<platform data dir>/p2pchat` (on Linux `$XDG_DATA_HOME/p2pchat`
//! or `~/.local/share/p2pchat`); a client that wants a second identity gives it a directory
//! of its own. It is created with mode 0700 (an existing one that others can read or enter
//! is set back to 0700), and every file in it with mode 0600: the identity holds the token
//! with which the client claims its name back after a restart. No file in it is ever opened
//! through a symbolic link (`O_NOFOLLOW`), and temporary files are created exclusively, so
//! a link planted at `identity.json.tmp` cannot send the identity elsewhere.
//!
//! | file | what | type |
//! | --- | --- | --- |
//! | `lock` | empty; held locked while a client uses the directory | |
//! | `identity.json` | the registered name, display name, id and token | [`Identity`] |
//! | `outbox.json` | messages typed while their peer was away, to send later | [`Queued`] |
//! | `history/<key>.json` | one conversation's last entries; `<key>` is [`conversation_key`] | [`Entry`] |
//!
//! The files are JSON, pretty-printed so that a person can read them, and each is an object
//! with `"version": 1` beside its data:
//!
//! ```text
//! identity.json      {"version": 1, "identity": {"name": "alice", "display_name": null, "id": 3, "token": 123}}
//! outbox.json        {"version": 1, "queued": [{"to": "bob", "text": "hi", "queued_at_ms": 1795000000000}]}
//! history/bob.json   {"version": 1, "conversation": "bob", "entries": [{"n": 7, "at_ms": 1795000000000,
//!                     "direction": "out", "peer_id": 5, "text": "hi", "delivery": "delivered"}]}
//! ```
//!
//! Fields that this version does not know are ignored, so a later version may add some; a
//! file whose `version` is not 1 is refused as [`StoreError::Corrupt`], as is one that is not
//! valid JSON of the right shape (or is a symbolic link). A missing file is no error: no
//! identity yet, an empty outbox, no history. Loading never panics. A damaged file is never
//! overwritten: loading it moves it aside to `<file>.damaged` (or `.damaged-2`, ...), the
//! error names both paths, and the caller tells the user and goes on without that file.
//!
//! # Atomicity
//!
//! Every save writes the whole file to `<file>.tmp` in the same directory, fsyncs it,
//! renames it over `<file>` and fsyncs the directory. Rename within a directory is atomic,
//! so a crash or power cut at any point leaves either the old file or the new one, never a
//! mix of the two; once a save has returned `Ok` the new file survives a crash. A `.tmp`
//! file left by a crash is never read, and [`Store::open`] deletes it.
//!
//! The history is saved one conversation per file, and only the conversations changed since
//! the last save are rewritten, so a save costs what changed, not the whole history. Each
//! file is replaced atomically on its own; a crash in the middle of a save that writes
//! several leaves some of them new and the rest old, each one whole.
//!
//! # The lock
//!
//! Two clients writing the same directory would overwrite each other's outbox and history,
//! and would both claim the same identity. [`Store::open`] therefore takes an exclusive,
//! non-blocking `flock(2)` on the `lock` file and holds it as long as the [`Store`] lives. A
//! second client, in another process or in the same one (a lock belongs to an open file
//! description, and each `open` makes a new one), gets [`StoreError::Locked`]. The operating
//! system releases the lock when the process ends, however it ends, so a crashed client
//! never leaves the directory locked. `flock` locks are advisory and may not work across
//! machines on a network file system.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The format version written in every file, and the only one read.
pub const FORMAT_VERSION: u32 = 1;

/// How many entries [`Store::load_history`] keeps per conversation.
pub const DEFAULT_HISTORY_CAP: usize = 1000;

const LOCK_FILE: &str = "lock";
const IDENTITY_FILE: &str = "identity.json";
const OUTBOX_FILE: &str = "outbox.json";
const HISTORY_DIR: &str = "history";
const TMP_SUFFIX: &str = ".tmp";

/// Why the state directory or one of its files could not be used.
#[derive(Debug)]
pub enum StoreError {
    /// Another client (in this process or another) holds the directory's lock.
    Locked { dir: PathBuf },
    /// Reading or writing `path` failed.
    Io { path: PathBuf, error: io::Error },
    /// `path` is not a file this version can read: not JSON, the wrong shape, another
    /// format version, or a symbolic link. `detail` says what is wrong; `kept` is where the
    /// file was moved aside to (`None` if it could not be moved).
    Corrupt {
        path: PathBuf,
        detail: String,
        kept: Option<PathBuf>,
    },
}

impl StoreError {
    /// The file or directory the error is about.
    pub fn path(&self) -> &Path {
        match self {
            StoreError::Locked { dir } => dir,
            StoreError::Io { path, .. } | StoreError::Corrupt { path, .. } => path,
        }
    }

    fn io(path: &Path, error: io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Locked { dir } => write!(
                f,
                "another p2pchat client is using {}; give this one its own --state-dir",
                dir.display()
            ),
            StoreError::Io { path, error } => write!(
                f,
                "cannot read or write {}: {error}; check its permissions and the free disk space",
                path.display()
            ),
            StoreError::Corrupt {
                path,
                detail,
                kept: Some(kept),
            } => write!(
                f,
                "{} is not a file this p2pchat can read ({detail}); it was moved aside to {}",
                path.display(),
                kept.display()
            ),
            StoreError::Corrupt {
                path,
                detail,
                kept: None,
            } => write!(
                f,
                "{} is not a file this p2pchat can read ({detail}); \
                 move it aside to keep it, or p2pchat will write over it",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Who this client is to the rendezvous server, kept so that it gets the same name and id
/// back after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: Option<String>,
    pub display_name: Option<String>,
    pub id: Option<u32>,
    pub token: Option<u64>,
}

/// A message typed while its peer could not be reached, to send when it can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// The peer as the user typed it: a name like `"bob"` or a numeric id like `"3"`.
    pub to: String,
    pub text: String,
    /// When it was queued, in milliseconds since the Unix epoch.
    pub queued_at_ms: u64,
}

/// Whether a history entry was received or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
}

/// Where a history entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Sent while the peer was away: waiting in the outbox.
    Queued,
    /// Sent, not yet acknowledged.
    Sent,
    /// Acknowledged by the peer.
    Delivered,
    /// Given up on.
    Undelivered,
    /// An incoming message.
    Received,
}

/// One message in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unique and increasing across the whole history (all conversations), across reloads.
    pub n: u64,
    /// When it was sent or received, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub direction: Direction,
    pub peer_id: Option<u32>,
    pub text: String,
    pub delivery: Delivery,
}

/// Conversations keyed by peer (see [`conversation_key`]), each keeping its last `cap`
/// entries, and which of them changed since the last [`Store::save_history`].
#[derive(Debug, Clone)]
pub struct History {
    cap: usize,
    next_n: u64,
    conversations: BTreeMap<String, Conversation>,
}

#[derive(Debug, Clone, Default)]
struct Conversation {
    /// Oldest first, `n` increasing.
    entries: VecDeque<Entry>,
    /// Changed since the last save.
    dirty: bool,
}

impl History {
    /// An empty history that keeps the last `cap` entries of each conversation (at least 1).
    pub fn new(cap: usize) -> History {
        History {
            cap: cap.max(1),
            next_n: 1,
            conversations: BTreeMap::new(),
        }
    }

    /// How many entries each conversation keeps.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Appends an entry to `conversation` (created if new), assigning it the next `n`;
    /// drops the conversation's oldest entry if it holds more than `cap`; marks the
    /// conversation dirty. Returns the `n`.
    pub fn record(
        &mut self,
        conversation: &str,
        at_ms: u64,
        direction: Direction,
        peer_id: Option<u32>,
        text: &str,
        delivery: Delivery,
    ) -> u64 {
        let n = self.next_n;
        self.next_n = self.next_n.saturating_add(1);
        let c = self
            .conversations
            .entry(conversation.to_owned())
            .or_default();
        c.entries.push_back(Entry {
            n,
            at_ms,
            direction,
            peer_id,
            text: text.to_owned(),
            delivery,
        });
        while c.entries.len() > self.cap {
            c.entries.pop_front();
        }
        c.dirty = true;
        n
    }

    /// Changes the delivery state of entry `n` of `conversation`, if it is still kept
    /// (marking the conversation dirty if the state changed). True if the entry was found.
    pub fn set_delivery(&mut self, conversation: &str, n: u64, delivery: Delivery) -> bool {
        let Some(c) = self.conversations.get_mut(conversation) else {
            return false;
        };
        let Ok(i) = c.entries.binary_search_by_key(&n, |e| e.n) else {
            return false;
        };
        if c.entries[i].delivery != delivery {
            c.entries[i].delivery = delivery;
            c.dirty = true;
        }
        true
    }

    /// The last `count` entries of `conversation`, oldest first (fewer if it has fewer,
    /// none if there is no such conversation).
    pub fn last(&self, conversation: &str, count: usize) -> Vec<&Entry> {
        self.conversations
            .get(conversation)
            .map(|c| {
                let skip = c.entries.len().saturating_sub(count);
                c.entries.iter().skip(skip).collect()
            })
            .unwrap_or_default()
    }

    /// The conversation keys with the time of their latest entry, the most recently
    /// recorded first. (Recorded order, by `n`, not `at_ms`, so that a clock that jumped
    /// back does not reorder them.) Conversations with no entries are left out.
    pub fn conversations(&self) -> Vec<(&str, u64)> {
        let mut list: Vec<(&str, u64, u64)> = self
            .conversations
            .iter()
            .filter_map(|(key, c)| c.entries.back().map(|e| (key.as_str(), e.at_ms, e.n)))
            .collect();
        list.sort_by_key(|&(_, _, n)| std::cmp::Reverse(n));
        list.into_iter().map(|(key, at, _)| (key, at)).collect()
    }

    /// Whether any conversation changed since the last save.
    pub fn is_dirty(&self) -> bool {
        self.conversations.values().any(|c| c.dirty)
    }

    /// Adds a conversation read from its file: entries put in `n` order without duplicates,
    /// the oldest dropped beyond `cap`, `next_n` moved past them. Not dirty: the file has it.
    fn insert_loaded(&mut self, key: String, mut entries: Vec<Entry>) {
        entries.sort_by_key(|e| e.n);
        entries.dedup_by_key(|e| e.n);
        if let Some(last) = entries.last() {
            self.next_n = self.next_n.max(last.n.saturating_add(1));
        }
        let skip = entries.len().saturating_sub(self.cap);
        let entries: VecDeque<Entry> = entries.into_iter().skip(skip).collect();
        self.conversations.insert(
            key,
            Conversation {
                entries,
                dirty: false,
            },
        );
    }
}

/// The longest key [`conversation_key`] makes, in bytes.
const MAX_KEY: usize = 64;

/// The file-safe key of a conversation: a peer's name lower-cased (`"alice"`), or
/// `"id-3"` for a peer without a name.
///
/// Names are `[A-Za-z][A-Za-z0-9_.-]{0,31}` (see [`crate::wire::check_name`]) and match
/// without regard to case, so `Alice` and `alice` share a conversation. Anything else passed
/// as a name (empty, too long, other characters) gives `_<the name made safe>-<hash>`: only
/// `[a-z0-9_-]`, at most 64 bytes, the hash (64-bit FNV-1a of the name's bytes, stable
/// across versions) keeping different names apart. No key is empty, holds a path separator
/// or a NUL, starts with `.`, or is `..`.
pub fn conversation_key(name: Option<&str>, id: u32) -> String {
    match name {
        None => format!("id-{id}"),
        Some(name) if is_plain_name(name) => name.to_ascii_lowercase(),
        Some(name) => {
            let safe: String = name
                .chars()
                .map(|c| match c.to_ascii_lowercase() {
                    c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
                    _ => '_',
                })
                .take(MAX_KEY - 18)
                .collect();
            format!("_{safe}-{:016x}", fnv1a(name.as_bytes()))
        }
    }
}

/// Whether `name` follows the name rule of [`crate::wire::check_name`]. Kept here rather
/// than called so that a change to that rule can never make an unsafe file name.
fn is_plain_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    (1..=32).contains(&name.len())
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// 64-bit FNV-1a: a fixed hash, so a key, and so a file name, never changes.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The file name (before `.json`) of a conversation key. A key made by
/// [`conversation_key`] is its own file name; any other key still gets a safe one, each
/// byte outside `[a-z0-9_-]` (and a `.` at the start) written `%XX`, the empty key `%`.
fn file_stem(key: &str) -> String {
    if key.is_empty() {
        return "%".into();
    }
    let mut stem = String::with_capacity(key.len());
    for (i, b) in key.bytes().enumerate() {
        if b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || matches!(b, b'_' | b'-')
            || (b == b'.' && i > 0)
        {
            stem.push(char::from(b));
        } else {
            stem.push_str(&format!("%{b:02X}"));
        }
    }
    stem
}

/// The conversation key of a file name (before `.json`): undoes [`file_stem`], and takes
/// any other name (one a person made) as it is.
fn key_of_stem(stem: &str) -> String {
    if stem == "%" {
        return String::new();
    }
    let bytes = stem.as_bytes();
    let mut key = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                key.push(b);
                i += 3;
            }
            (b, _) => {
                key.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&key).into_owned()
}

/// The state directory of one client identity, locked for as long as this value lives.
///
/// See the [module documentation](self) for the files and their guarantees.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Holds the `flock`; closing it (on drop) releases the lock.
    _lock: File,
    /// Serialises saves, which share `<file>.tmp` names, between threads.
    writing: Mutex<()>,
}

impl Store {
    /// `<platform data dir>/p2pchat` (Linux: `$XDG_DATA_HOME/p2pchat` or
    /// `~/.local/share/p2pchat`), or `None` if the platform has no data directory (no home).
    pub fn default_dir() -> Option<PathBuf> {
        dirs::data_dir().map(|d| d.join("p2pchat"))
    }

    /// Opens the state directory `dir`: creates it (and its parents, mode 0700) if needed,
    /// takes its lock, and deletes the `.tmp` files a crash may have left.
    ///
    /// Fails with [`StoreError::Locked`] at once, without waiting, if another `Store` holds
    /// the lock, in this process or another.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        create_dir(dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| StoreError::io(&lock_path, e))?;
        // SAFETY: flock takes a file descriptor that `lock` owns and keeps open.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            return Err(if error.kind() == io::ErrorKind::WouldBlock {
                StoreError::Locked {
                    dir: dir.to_path_buf(),
                }
            } else {
                StoreError::io(&lock_path, error)
            });
        }
        let store = Store {
            dir: dir.to_path_buf(),
            _lock: lock,
            writing: Mutex::new(()),
        };
        // Only now, holding the lock, is no one else writing a `.tmp` file here.
        remove_stale_tmp(dir)?;
        let history = dir.join(HISTORY_DIR);
        create_dir(&history)?;
        remove_stale_tmp(&history)?;
        // The new names (lock, history/) survive a crash.
        sync_dir(dir)?;
        Ok(store)
    }

    /// The directory this store uses.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The saved identity, or `None` if none was saved.
    pub fn load_identity(&self) -> Result<Option<Identity>, StoreError> {
        Ok(self
            .read::<IdentityFile>(&self.dir.join(IDENTITY_FILE))?
            .map(|f| f.identity))
    }

    /// Saves the identity, replacing the one saved before.
    pub fn save_identity(&self, identity: &Identity) -> Result<(), StoreError> {
        self.write(
            &self.dir.join(IDENTITY_FILE),
            &IdentityFileRef {
                version: FORMAT_VERSION,
                identity,
            },
        )
    }

    /// The saved outbox, oldest first as saved; empty if none was saved.
    pub fn load_outbox(&self) -> Result<Vec<Queued>, StoreError> {
        Ok(self
            .read::<OutboxFile>(&self.dir.join(OUTBOX_FILE))?
            .map(|f| f.queued)
            .unwrap_or_default())
    }

    /// Saves the whole outbox, replacing the one saved before.
    pub fn save_outbox(&self, queued: &[Queued]) -> Result<(), StoreError> {
        self.write(
            &self.dir.join(OUTBOX_FILE),
            &OutboxFileRef {
                version: FORMAT_VERSION,
                queued,
            },
        )
    }

    /// The saved history, keeping the last [`DEFAULT_HISTORY_CAP`] entries of each
    /// conversation; empty if none was saved. Fails on the first conversation file that
    /// cannot be read: see [`Store::load_history_lossy`] to keep the others.
    pub fn load_history(&self) -> Result<History, StoreError> {
        let mut history = History::new(DEFAULT_HISTORY_CAP);
        for (path, key) in self.history_files()? {
            let entries = self.read_history_file(&path)?;
            history.insert_loaded(key, entries);
        }
        Ok(history)
    }

    /// Like [`Store::load_history`], but a conversation file that cannot be read is left
    /// out, with its error, instead of failing the whole load. A client that goes on
    /// without a broken file should load this way: with an empty history instead, its next
    /// save would replace the good files of the conversations it records, dropping their
    /// older entries.
    pub fn load_history_lossy(&self) -> (History, Vec<StoreError>) {
        let mut history = History::new(DEFAULT_HISTORY_CAP);
        let files = match self.history_files() {
            Ok(files) => files,
            Err(e) => return (history, vec![e]),
        };
        let mut errors = Vec::new();
        for (path, key) in files {
            match self.read_history_file(&path) {
                Ok(entries) => history.insert_loaded(key, entries),
                Err(e) => errors.push(e),
            }
        }
        (history, errors)
    }

    /// Writes the conversations changed since the last save, each atomically to its own
    /// file `history/<key>.json`, and clears their dirty marks. Unchanged conversations are
    /// not touched. On an error the conversations not yet written stay dirty, so the next
    /// save tries them again.
    pub fn save_history(&self, history: &mut History) -> Result<(), StoreError> {
        let dir = self.dir.join(HISTORY_DIR);
        for (key, conversation) in history.conversations.iter_mut() {
            if !conversation.dirty {
                continue;
            }
            let path = dir.join(format!("{}.json", file_stem(key)));
            self.write(
                &path,
                &HistoryFileRef {
                    version: FORMAT_VERSION,
                    conversation: key,
                    entries: &conversation.entries,
                },
            )?;
            conversation.dirty = false;
        }
        Ok(())
    }

    /// The conversation files in `history/` with their keys, in key order.
    fn history_files(&self) -> Result<Vec<(PathBuf, String)>, StoreError> {
        let dir = self.dir.join(HISTORY_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(&dir, e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue; // `.tmp` files, files moved aside, anything else.
            };
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                files.push((entry.path(), key_of_stem(stem)));
            }
        }
        files.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(files)
    }

    fn read_history_file(&self, path: &Path) -> Result<Vec<Entry>, StoreError> {
        Ok(self
            .read::<HistoryFile>(path)?
            .map(|f| f.entries)
            .unwrap_or_default())
    }

    /// Reads and parses `path`; `Ok(None)` if it does not exist. A file that cannot be
    /// parsed, or a symbolic link, is moved aside (see [`move_aside`]) and reported as
    /// [`StoreError::Corrupt`].
    fn read<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>, StoreError> {
        let read = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .and_then(|mut file| {
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes).map(|_| bytes)
            });
        let parsed = match read {
            Ok(bytes) => parse(path, &bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: "it is a symbolic link, which p2pchat does not follow here".into(),
                kept: None,
            }),
            Err(e) => return Err(StoreError::io(path, e)),
        };
        match parsed {
            Err(StoreError::Corrupt { path, detail, .. }) => {
                let _guard = self.writing.lock().unwrap_or_else(|e| e.into_inner());
                let kept = move_aside(&path);
                Err(StoreError::Corrupt { path, detail, kept })
            }
            other => other.map(Some),
        }
    }

    /// Writes `value` as pretty JSON to `path`, atomically (see the module documentation).
    fn write<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), StoreError> {
        // Cannot fail for these types (no maps with non-string keys), but never panic.
        let mut json = serde_json::to_vec_pretty(value)
            .map_err(|e| StoreError::io(path, io::Error::new(io::ErrorKind::InvalidData, e)))?;
        json.push(b'\n');
        let _guard = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        write_atomic(path, &json)
    }
}

/// Creates `dir` and its missing parents with mode 0700 (before the umask). An existing
/// `dir` that its group or others may read, write or enter is set to 0700: it holds the
/// identity's token.
fn create_dir(dir: &Path) -> Result<(), StoreError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| StoreError::io(dir, e))?;
    let mode = fs::metadata(dir)
        .map_err(|e| StoreError::io(dir, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o700 | 0o700))
            .map_err(|e| StoreError::io(dir, e))?;
        log::info!(
            "{}: mode set to 0700 (it was {:o})",
            dir.display(),
            mode & 0o777
        );
    }
    Ok(())
}

/// Moves a damaged `path` aside to `<path>.damaged` (or `.damaged-2`, `-3`, ...) without
/// replacing anything there, so that the next save cannot destroy it. Returns where it is
/// now, or `None` if it could not be moved (then the save will replace it).
fn move_aside(path: &Path) -> Option<PathBuf> {
    for k in 1..=100 {
        let mut name = path.file_name()?.to_os_string();
        name.push(if k == 1 {
            ".damaged".to_string()
        } else {
            format!(".damaged-{k}")
        });
        let aside = path.with_file_name(name);
        // A hard link never replaces an existing name; the link itself (not a target) is
        // what moves when `path` is a symbolic link.
        match fs::hard_link(path, &aside) {
            Ok(()) => {
                return match fs::remove_file(path) {
                    Ok(()) => {
                        let _ = sync_dir(path.parent().unwrap_or(Path::new(".")));
                        Some(aside)
                    }
                    Err(_) => {
                        let _ = fs::remove_file(&aside);
                        None
                    }
                };
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(_) => return None,
        }
    }
    None
}

/// Deletes the `*.tmp` files in `dir` (a missing `dir` has none).
fn remove_stale_tmp(dir: &Path) -> Result<(), StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let path = entry.path();
        let is_tmp = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(TMP_SUFFIX));
        if is_tmp && entry.file_type().is_ok_and(|t| t.is_file()) {
            match fs::remove_file(&path) {
                Ok(()) => log::info!("removed {}, left by a crash", path.display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&path, e)),
            }
        }
    }
    Ok(())
}

/// Replaces `path` by `contents`: writes `<path>.tmp`, fsyncs it, renames it over `path`,
/// fsyncs the directory. A crash leaves either the old file or the new one.
fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(TMP_SUFFIX);
    let tmp = dir.join(tmp_name);
    // Created exclusively and never through a link: a `.tmp` already there (a planted link,
    // or the leftover of a crash; no other client writes here while we hold the lock) is
    // removed, not followed, and the creation tried once more.
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp)
    };
    let written = create()
        .or_else(|e| {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e);
            }
            fs::remove_file(&tmp)?;
            create()
        })
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.sync_all()
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::io(&tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::io(path, e));
    }
    sync_dir(dir)
}

/// Fsyncs a directory, so that the names created or renamed in it survive a crash.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

/// Parses a file's bytes: a JSON object whose `"version"` is checked first, so that a file
/// of another version is reported as such rather than as a puzzling shape error.
fn parse<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
        kept: None,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(corrupt("not a JSON object".into()));
    };
    match object.get("version") {
        None => return Err(corrupt("it has no \"version\" field".into())),
        Some(v) if *v != FORMAT_VERSION => {
            return Err(corrupt(format!(
                "format version {v}, and this p2pchat reads only version {FORMAT_VERSION}"
            )))
        }
        Some(_) => {}
    }
    serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
}

#[derive(Deserialize)]
struct HistoryFile {
    // The file's name is the key; the "conversation" field is there for a person reading it.
    entries: Vec<Entry>,
}

#[derive(Serialize)]
struct HistoryFileRef<'a> {
    version: u32,
    conversation: &'a str,
    entries: &'a VecDeque<Entry>,
}

#[derive(Deserialize)]
struct IdentityFile {
    identity: Identity,
}

#[derive(Serialize)]
struct IdentityFileRef<'a> {
    version: u32,
    identity: &'a Identity,
}

#[derive(Deserialize)]
struct OutboxFile {
    queued: Vec<Queued>,
}

#[derive(Serialize)]
struct OutboxFileRef<'a> {
    version: u32,
    queued: &'a [Queued],
}

#[cfg(test)]
mod tests {
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
}
