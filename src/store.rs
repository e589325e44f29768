//! The client's state directory: its identity, its offline outbox and its message history.
//!
//! # What is stored where
//!
//! One directory holds the state of one client identity. By default it is
//! [`Store::default_dir`], `<platform data dir>/p2pchat` (on Linux `$XDG_DATA_HOME/p2pchat`
//! or `~/.local/share/p2pchat`); a client that wants a second identity gives it a directory
//! of its own. It is created with mode 0700, and every file in it with mode 0600: the
//! identity holds the token that proves the name is ours.
//!
//! | file | what | type |
//! | --- | --- | --- |
//! | `lock` | empty; held locked while a client uses the directory | |
//! | `identity.json` | the registered name, display name, id and token | [`Identity`] |
//! | `outbox.json` | messages typed while their peer was away, to send later | [`Queued`] |
//!
//! The files are JSON, pretty-printed so that a person can read them, and each is an object
//! with `"version": 1` beside its data:
//!
//! ```text
//! identity.json      {"version": 1, "identity": {"name": "alice", "display_name": null, "id": 3, "token": 123}}
//! outbox.json        {"version": 1, "queued": [{"to": "bob", "text": "hi", "queued_at_ms": 1795000000000}]}
//! ```
//!
//! Fields that this version does not know are ignored, so a later version may add some; a
//! file whose `version` is not 1 is refused as [`StoreError::Corrupt`], as is one that is not
//! valid JSON of the right shape. A missing file is no error: no identity yet, an empty
//! outbox, no history. Loading never panics: the caller tells the user about the error and
//! goes on without that file (the next save then replaces it).
//!
//! # Atomicity
//!
//! Every save writes the whole file to `<file>.tmp` in the same directory, fsyncs it,
//! renames it over `<file>` and fsyncs the directory. Rename within a directory is atomic,
//! so a crash or power cut at any point leaves either the old file or the new one, never a
//! mix of the two; once a save has returned `Ok` the new file survives a crash. A `.tmp`
//! file left by a crash is never read, and [`Store::open`] deletes it.
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
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The format version written in every file, and the only one read.
pub const FORMAT_VERSION: u32 = 1;

const LOCK_FILE: &str = "lock";
const IDENTITY_FILE: &str = "identity.json";
const OUTBOX_FILE: &str = "outbox.json";
const TMP_SUFFIX: &str = ".tmp";

/// Why the state directory or one of its files could not be used.
#[derive(Debug)]
pub enum StoreError {
    /// Another client (in this process or another) holds the directory's lock.
    Locked { dir: PathBuf },
    /// Reading or writing `path` failed.
    Io { path: PathBuf, error: io::Error },
    /// `path` is not a file this version can read: not JSON, the wrong shape, or another
    /// format version. `detail` says what is wrong.
    Corrupt { path: PathBuf, detail: String },
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
            StoreError::Corrupt { path, detail } => write!(
                f,
                "{} is not a file this p2pchat can read ({detail}); \
                 move it aside to keep it, or the next save replaces it",
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

    /// Reads and parses `path`; `Ok(None)` if it does not exist.
    fn read<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>, StoreError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(path, e)),
        };
        parse(path, &bytes).map(Some)
    }

    /// Writes `value` as pretty JSON to `path`, atomically (see the module documentation).
    fn write<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), StoreError> {
        let mut json = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("cannot encode as JSON: {e}"),
        })?;
        json.push(b'\n');
        let _guard = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        write_atomic(path, &json)
    }
}

/// Creates `dir` and its missing parents with mode 0700 (before the umask). An existing
/// directory keeps its mode: the user may have chosen it.
fn create_dir(dir: &Path) -> Result<(), StoreError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| StoreError::io(dir, e))
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
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
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

/// The first thing read from every file, whatever else it holds.
#[derive(Deserialize)]
struct Header {
    version: Option<serde_json::Value>,
}

/// Parses a file's bytes: checks the version first, so that a file of another version is
/// reported as such rather than as a puzzling shape error.
fn parse<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let header: Header =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not a JSON object: {e}")))?;
    match header.version {
        None => return Err(corrupt("it has no \"version\" field".into())),
        Some(v) if v != FORMAT_VERSION => {
            return Err(corrupt(format!(
                "format version {v}, and this p2pchat reads only version {FORMAT_VERSION}"
            )))
        }
        Some(_) => {}
    }
    serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))
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
}
