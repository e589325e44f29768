//! What a client keeps between runs, glued to its event stream: the state directory
//! ([`Store`]) is opened at start, the saved identity configures the [`Peer`], messages
//! queued by the last run are given back to it, and every change is written as it happens
//! (the history at most once a second, and at exit).
//!
//! State is best effort once the client runs: a write that fails is reported once and the
//! chat goes on. Only an explicit `--state-dir` that cannot be used stops the client at
//! start.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::app::journal::Journal;
use crate::app::store::{Identity, Queued, Store, StoreError};
use crate::peer::{Event, Peer, PeerConfig, Target};
use crate::wire::Key;

/// Where the client keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChoice {
    /// Nothing is kept (`--no-state`).
    Off,
    /// A directory per name in the platform's data directory (`anonymous` without a name);
    /// if another client holds it, this one keeps nothing.
    Default,
    /// This directory (`--state-dir`); the client does not start if it cannot use it.
    Dir(PathBuf),
}

/// The history is written at most this often while the client runs.
pub const HISTORY_SAVE_PERIOD: Duration = Duration::from_secs(1);

/// A client's state directory, while the client runs.
pub struct Profile {
    store: Option<Store>,
    identity: Identity,
    /// Our key pair, when kept in the state directory (else the peer's fresh one).
    key: Option<crate::identity::Identity>,
    /// The keys pinned by name, as saved.
    pins: BTreeMap<String, Key>,
    /// When each queued message was queued, per target key, in queue order.
    queued_at: HashMap<String, VecDeque<u64>>,
    last_history_save: Option<Instant>,
    /// A write failed and the user was told: not again.
    write_failed: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Profile {
    /// Opens the state. Returns the profile, the journal (kept in memory only when no
    /// state is kept) and notices for the user; an error only for an explicit directory
    /// that cannot be used.
    pub fn open(
        choice: &StateChoice,
        name: Option<&str>,
    ) -> Result<(Profile, Option<Journal>, Vec<String>), String> {
        let mut notices = Vec::new();
        let store = match choice {
            StateChoice::Off => None,
            StateChoice::Dir(dir) => Some(Store::open(dir).map_err(|e| e.to_string())?),
            StateChoice::Default => match Store::default_dir()
                .map(|d| d.join(name.map_or_else(|| "anonymous".into(), str::to_ascii_lowercase)))
            {
                None => {
                    notices.push(
                        "this platform has no data directory: nothing is kept between runs (use --state-dir DIR)"
                            .to_string(),
                    );
                    None
                }
                Some(dir) => match Store::open(&dir) {
                    Ok(store) => Some(store),
                    Err(StoreError::Locked { dir }) => {
                        notices.push(format!(
                            "another p2pchat client is using {}: this one keeps nothing between runs (give it --state-dir DIR)",
                            dir.display()
                        ));
                        None
                    }
                    Err(e) => {
                        notices.push(format!("{e}; nothing is kept between runs"));
                        None
                    }
                },
            },
        };
        let mut profile = Profile {
            store,
            identity: Identity::default(),
            key: None,
            pins: BTreeMap::new(),
            queued_at: HashMap::new(),
            last_history_save: None,
            write_failed: false,
        };
        // Without a state directory the history lives as long as the process.
        let mut journal = Some(Journal::new(crate::app::store::History::new(
            crate::app::store::DEFAULT_HISTORY_CAP,
        )));
        if let Some(store) = &profile.store {
            match store.load_identity() {
                Ok(found) => profile.identity = found.unwrap_or_default(),
                Err(e) => notices.push(format!("{e}; starting with a fresh identity")),
            }
            match store.load_or_create_key() {
                Ok((key, _)) => profile.key = Some(key),
                Err(e) => notices.push(format!(
                    "{e}; using a fresh key for this run (peers that pinned the old one will refuse it)"
                )),
            }
            match store.load_pins() {
                Ok(pins) => profile.pins = pins,
                Err(e) => notices.push(format!("{e}; no key is pinned")),
            }
            // A bad conversation file is skipped (and named), not the whole history: the
            // good files stay as they are.
            let (history, errors) = store.load_history_lossy();
            notices.extend(errors.into_iter().map(|e| e.to_string()));
            journal = Some(Journal::new(history));
        }
        Ok((profile, journal, notices))
    }

    /// Whether state is kept.
    pub fn keeps_state(&self) -> bool {
        self.store.is_some()
    }

    /// Fills in what the command line left open from the saved identity: the name and
    /// display name, our key pair (with which the name is claimed back) and the pins.
    pub fn configure(&self, config: &mut PeerConfig) {
        let same_name = match (&config.name, &self.identity.name) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            (None, _) => true,
            (Some(_), None) => false,
        };
        if config.name.is_none() {
            config.name = self.identity.name.clone();
        }
        if config.display_name.is_none() && same_name {
            config.display_name = self.identity.display_name.clone();
        }
        if let Some(key) = &self.key {
            config.identity = key.clone();
        }
        config.pins = self.pins.iter().map(|(n, k)| (n.clone(), *k)).collect();
    }

    /// Gives the messages the last run left queued back to `peer`. Returns a notice.
    pub fn restore(
        &mut self,
        peer: &mut Peer,
        now: Instant,
        mut journal: Option<&mut Journal>,
    ) -> Vec<String> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        let queued = match store.load_outbox() {
            Ok(q) => q,
            Err(e) => return vec![format!("{e}; the messages it held are not sent")],
        };
        let mut counts: Vec<(Target, usize)> = Vec::new();
        let mut notices = Vec::new();
        for q in queued {
            let target = match Target::parse(&q.to) {
                Ok(t) => t,
                Err(e) => {
                    notices.push(format!("a queued message for {:?} is dropped: {e}", q.to));
                    continue;
                }
            };
            self.queued_at
                .entry(target.key())
                .or_default()
                .push_back(q.queued_at_ms);
            peer.restore_queued(now, target.clone(), q.text);
            match counts.iter_mut().find(|(t, _)| t.key() == target.key()) {
                Some((_, n)) => *n += 1,
                None => counts.push((target, 1)),
            }
        }
        for (target, n) in counts {
            if let Some(j) = journal.as_deref_mut() {
                j.restore_queued(peer, &target, n);
            }
            notices.push(format!(
                "{n} message{} queued for {target} by your last run: sent once you are connected",
                if n == 1 { "" } else { "s" }
            ));
        }
        notices
    }

    /// Writes what `ev` changed. Returns a notice if a write failed (once).
    pub fn observe(&mut self, peer: &Peer, ev: &Event) -> Option<String> {
        self.store.as_ref()?;
        match ev {
            Event::Connected { peer: p, .. } => {
                // Trust on first use: the peer pinned its key; keep it.
                let name = peer.name_of(*p)?.to_ascii_lowercase();
                let key = peer.pinned(&name)?;
                if self.pins.get(&name) == Some(&key) {
                    return None;
                }
                self.pins.insert(name, key);
                self.save_pins()
            }
            Event::Registered { id, .. } => {
                self.identity.id = Some(*id);
                self.identity.token = peer.token();
                self.save_identity()
            }
            Event::Claimed { name } => {
                self.identity.name = Some(name.clone());
                self.identity.display_name = peer.config().display_name.clone();
                self.save_identity()
            }
            Event::Queued { to, .. } => {
                self.queued_at
                    .entry(to.key())
                    .or_default()
                    .push_back(now_ms());
                self.save_outbox(peer)
            }
            Event::Dequeued { to, seqs, .. } => {
                self.forget(to, seqs.len());
                self.save_outbox(peer)
            }
            Event::QueueDropped { to, count, .. } => {
                self.forget(to, *count);
                self.save_outbox(peer)
            }
            _ => None,
        }
    }

    fn forget(&mut self, to: &Target, count: usize) {
        if let Some(q) = self.queued_at.get_mut(&to.key()) {
            for _ in 0..count {
                q.pop_front();
            }
        }
    }

    fn save_pins(&mut self) -> Option<String> {
        let result = self.store.as_ref()?.save_pins(&self.pins);
        self.failed(result)
    }

    /// `trust <name>`: the pin of `name` is forgotten (here and in `peer`). Returns the
    /// notice of a failed write, if any.
    pub fn unpin(&mut self, name: &str) -> Option<String> {
        self.pins.remove(&name.to_ascii_lowercase())?;
        self.save_pins()
    }

    fn save_identity(&mut self) -> Option<String> {
        let result = self.store.as_ref()?.save_identity(&self.identity);
        self.failed(result)
    }

    fn save_outbox(&mut self, peer: &Peer) -> Option<String> {
        let mut all = Vec::new();
        for (target, texts) in peer.outbox() {
            let times = self.queued_at.get(&target.key());
            for (i, text) in texts.into_iter().enumerate() {
                all.push(Queued {
                    to: target.to_string(),
                    text,
                    queued_at_ms: times.and_then(|t| t.get(i)).copied().unwrap_or_else(now_ms),
                });
            }
        }
        let result = self.store.as_ref()?.save_outbox(&all);
        self.failed(result)
    }

    /// Writes the history if it changed and the last write is `HISTORY_SAVE_PERIOD` old
    /// (or `force`). Returns when to call again, and a notice if a write failed.
    pub fn save_history(
        &mut self,
        journal: &mut Journal,
        now: Instant,
        force: bool,
    ) -> (Option<Duration>, Option<String>) {
        let Some(store) = &self.store else {
            return (None, None);
        };
        if !journal.history().is_dirty() {
            return (None, None);
        }
        if let Some(last) = self.last_history_save {
            let due = last + HISTORY_SAVE_PERIOD;
            if !force && now < due {
                return (Some(due - now), None);
            }
        }
        let result = store.save_history(journal.history_mut());
        self.last_history_save = Some(now);
        (None, self.failed(result))
    }

    /// At exit: writes everything. Returns what to tell the user about queued messages.
    pub fn finish(&mut self, peer: &Peer, journal: Option<&mut Journal>) -> Vec<String> {
        let mut notices = Vec::new();
        if let Some(j) = journal {
            if let (_, Some(n)) = self.save_history(j, Instant::now(), true) {
                notices.push(n);
            }
        }
        let outbox = peer.outbox();
        if self.store.is_some() {
            if let Some(n) = self.save_outbox(peer) {
                notices.push(n);
            }
        }
        for (target, texts) in outbox {
            let n = texts.len();
            let plural = if n == 1 { "" } else { "s" };
            let (stay, were) = if n == 1 {
                ("stays", "was")
            } else {
                ("stay", "were")
            };
            notices.push(if self.store.is_some() && !self.write_failed {
                format!("{n} message{plural} for {target} {stay} queued: sent when you are both online")
            } else {
                format!("{n} message{plural} for {target} {were} NOT delivered (nothing is kept between runs)")
            });
        }
        notices
    }

    fn failed(&mut self, result: Result<(), StoreError>) -> Option<String> {
        match result {
            Ok(()) => None,
            Err(e) if !self.write_failed => {
                self.write_failed = true;
                Some(format!("{e}; what changes now may not be kept (said once)"))
            }
            Err(_) => None,
        }
    }
}
