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
mod tests;

mod keys;
