//! The client application: carries out what the person (or script) types on the
//! [`Peer`], and fans every event out to the state directory, the message history and the
//! screen. The driver (src/driver/client.rs) owns the socket, the clock and the threads; it
//! hands inputs and events to an [`App`] and does what the `App` says.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::app::command::{parse_command, Command, HELP};
use crate::app::journal::Journal;
use crate::app::profile::{Profile, StateChoice};
use crate::app::render::{
    clock, display, human_bytes, json_error, json_line, render_human, render_json, who, Names,
    Style,
};
use crate::app::terminal::{Input, Output, Wake};
use crate::identity::fingerprint;
use crate::peer::{CommandError, Event, Peer, PeerConfig, Sending, Target};
use crate::text::{sanitize, sanitize_name};
use crate::wire::ClientId;

/// How a client run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The person left, or the input ended and everything was delivered.
    Done,
    /// The client cannot work at all (no server, a refused registration): the message to
    /// print on stderr, exiting non-zero.
    Fatal(String),
}

/// A running client application: the user interface, the state directory, and the
/// inputs that wait until the server has given us an id.
pub struct App {
    ui: Ui,
    profile: Profile,
    /// Lines typed before the server gave us an id wait here, in order.
    held: VecDeque<Input>,
    interrupts: u32,
}

impl App {
    /// Opens the state directory. Returns the application and notices for the user (to
    /// show with [`App::show_notices`] once the output is set up); an error only when an
    /// explicit state directory cannot be used.
    pub fn open(
        state: &StateChoice,
        name: Option<&str>,
        json: bool,
        style: Style,
    ) -> Result<(App, Vec<String>), String> {
        let (profile, journal, notices) = Profile::open(state, name)?;
        let app = App {
            ui: Ui::new(json, style, journal),
            profile,
            held: VecDeque::new(),
            interrupts: 0,
        };
        Ok((app, notices))
    }

    /// Fills in what the command line left open from the saved identity.
    pub fn configure(&self, config: &mut PeerConfig) {
        self.profile.configure(config);
    }

    /// Gives the messages queued by the last run back to `peer`; returns notices.
    pub fn restore(&mut self, peer: &mut Peer, now: Instant) -> Vec<String> {
        self.profile.restore(peer, now, self.ui.journal.as_mut())
    }

    /// Lets the file hasher of `sendfile` wake the event loop when a file is hashed.
    pub fn hash_in_background(&self, wake: Wake) {
        self.ui.hasher.in_background(wake);
    }

    /// Shows notices (from opening the state, or restoring it).
    pub fn show_notices(&mut self, peer: &Peer, notices: Vec<String>, out: &mut dyn Output) {
        for message in notices {
            self.ui.show(peer, &Event::Notice { message }, out);
        }
    }

    /// Fans one event out: the state directory, the history, the screen. Returns how the
    /// run ends if this event ends it.
    pub fn on_event(&mut self, peer: &Peer, ev: Event, out: &mut dyn Output) -> Option<Exit> {
        if let Some(message) = self.profile.observe(peer, &ev) {
            self.ui.show(peer, &Event::Notice { message }, out);
        }
        if let Event::Fatal { message } = ev {
            self.finish(peer, out);
            if self.ui.json {
                out.line(&json_line(&Event::Fatal {
                    message: message.clone(),
                }));
            }
            return Some(Exit::Fatal(message));
        }
        if matches!(ev, Event::Left { .. }) {
            self.finish(peer, out);
        }
        self.ui.show(peer, &ev, out);
        None
    }

    /// Writes the history if it is due; returns how long until it is due next.
    pub fn save_history(
        &mut self,
        peer: &Peer,
        now: Instant,
        out: &mut dyn Output,
    ) -> Option<Duration> {
        let journal = self.ui.journal.as_mut()?;
        let (wait, failed) = self.profile.save_history(journal, now, false);
        if let Some(message) = failed {
            self.ui.show(peer, &Event::Notice { message }, out);
        }
        wait
    }

    /// An input line (or the end of input) from the reader thread.
    pub fn input(&mut self, input: Input) {
        self.held.push_back(input);
    }

    /// Ctrl-C or SIGTERM: goes before any input still waiting.
    pub fn interrupt(&mut self) {
        self.held.push_front(Input::Interrupt);
    }

    /// Offers the files hashed since the last turn, then carries out the inputs that can
    /// be carried out (all of them once registered). Returns how the run ends if an input
    /// ends it (a second interrupt).
    pub fn run_inputs(
        &mut self,
        peer: &mut Peer,
        now: Instant,
        out: &mut dyn Output,
    ) -> Option<Exit> {
        if peer.id().is_some() {
            for file in self.ui.hasher.take() {
                offer_hashed(peer, now, file, out, self.ui.json);
            }
        }
        while let Some(input) = self.held.front() {
            let registered = peer.id().is_some();
            match input {
                Input::Interrupt => {
                    self.interrupts += 1;
                    if self.interrupts >= 2 {
                        self.finish(peer, out);
                        out.line(&if self.ui.json {
                            json_error("interrupted twice: exiting without waiting")
                        } else {
                            "interrupted twice: exiting without waiting".to_string()
                        });
                        return Some(Exit::Done);
                    }
                    peer.leave(now);
                }
                // The end of input waits for the files still being hashed for sendfile.
                Input::Eof if registered && self.ui.hasher.hashing() == 0 => peer.finish(now),
                Input::Line(line) if registered => {
                    if let Ok(Command::Trust(name)) = parse_command(line) {
                        // The pin goes from the state directory too.
                        if let Some(message) = self.profile.unpin(&name) {
                            self.ui.error(out, &message);
                        }
                    }
                    execute(peer, now, line, out, &mut self.ui)
                }
                // Not registered yet: keep it for later.
                _ => break,
            }
            self.held.pop_front();
        }
        None
    }

    /// At any exit: says what happens to queued messages, writes the state, and leaves
    /// the terminal as it was found.
    fn finish(&mut self, peer: &Peer, out: &mut dyn Output) {
        for message in self.profile.finish(peer, self.ui.journal.as_mut()) {
            out.line(
                &self
                    .ui
                    .render(peer, &Event::Notice { message }, SystemTime::now()),
            );
        }
        out.finish();
    }
}

/// How the client shows things, and what it remembers: the state of one user interface.
struct Ui {
    /// One JSON object per line instead of readable lines.
    pub json: bool,
    pub style: Style,
    /// The message history, when the client keeps state.
    pub journal: Option<Journal>,
    /// Files being hashed for `sendfile`.
    pub hasher: Hasher,
}

impl Ui {
    pub fn new(json: bool, style: Style, journal: Option<Journal>) -> Ui {
        Ui {
            json,
            style,
            journal,
            hasher: Hasher::default(),
        }
    }

    /// Records `ev` in the history and shows it.
    pub fn show(&mut self, peer: &Peer, ev: &Event, out: &mut dyn Output) {
        let now = SystemTime::now();
        if let Some(j) = &mut self.journal {
            j.observe(peer, ev, now);
        }
        out.line(&self.render(peer, ev, now));
    }

    pub fn render(&self, names: &dyn Names, ev: &Event, now: SystemTime) -> String {
        if self.json {
            render_json(ev, names)
        } else {
            render_human(ev, names, self.style, now)
        }
    }

    fn error(&self, out: &mut dyn Output, message: &str) {
        out.line(&if self.json {
            json_error(message)
        } else {
            self.style.paint("31", &format!("error: {message}"))
        });
    }

    /// A line answering a command (not an event): human mode only.
    fn say(&self, out: &mut dyn Output, text: &str) {
        if !self.json {
            out.line(text);
        }
    }
}

/// Carries out one input line on `peer`, showing errors and command output on `out`.
fn execute(peer: &mut Peer, now: Instant, line: &str, out: &mut dyn Output, ui: &mut Ui) {
    let cmd = match parse_command(line) {
        Ok(cmd) => cmd,
        Err(message) => return ui.error(out, &message),
    };
    let named = |peer: &Peer, t: &Option<Target>| -> Result<Option<ClientId>, CommandError> {
        t.as_ref().map(|t| peer.session_peer(t)).transpose()
    };
    let result = match cmd {
        Command::Nothing => Ok(()),
        Command::Connect(t) => peer.connect_to(now, &t),
        Command::Accept(t) => named(peer, &t).and_then(|p| peer.accept(now, p).map(|_| ())),
        Command::Reject(t) => named(peer, &t).and_then(|p| {
            peer.reject(now, p).map(|p| {
                ui.say(out, &format!("rejected the request of {}", who(peer, p)));
            })
        }),
        Command::Send { targets, text } if targets.is_empty() => {
            peer.send_to(now, None, &text).map(|_| ())
        }
        Command::Send { targets, text } => {
            // Each target on its own: one that fails does not stop the others.
            for t in &targets {
                match peer.send_to(now, Some(t), &text) {
                    Ok(Sending::Sent(_) | Sending::Queued) => {}
                    Err(e) => ui.error(out, &format!("@{t}: {e}")),
                }
            }
            Ok(())
        }
        Command::Broadcast(text) => peer.broadcast(now, &text).map(|_| ()),
        Command::Switch(t) => peer.switch(&t).map(|p| {
            if ui.json {
                out.line(
                    &json!({"event": "switched", "peer": p, "name": peer.name_of(p)}).to_string(),
                );
            } else {
                out.line(&format!("now talking to {}", who(peer, p)));
            }
        }),
        Command::Terminate(t) => {
            // With no session, `terminate bob` drops what is queued for bob, if anything.
            let dropped = match &t {
                Some(t) if peer.find(t).is_none() => peer.drop_queue(t, "you cancelled them"),
                _ => 0,
            };
            if dropped > 0 {
                Ok(())
            } else {
                named(peer, &t).and_then(|p| {
                    peer.terminate(now, p).map(|p| {
                        ui.say(out, &format!("ending the session with {}...", who(peer, p)));
                        // A queue that was trying to reach this peer stops too.
                        if let Some(t) = &t {
                            peer.drop_queue(t, "you ended the session");
                        }
                    })
                })
            }
        }
        Command::Leave => {
            peer.leave(now);
            Ok(())
        }
        Command::List => peer.list(now),
        Command::Sessions => {
            show_sessions(peer, out, ui);
            Ok(())
        }
        Command::History {
            peer: target,
            count,
        } => {
            show_history(peer, target, count, out, ui);
            Ok(())
        }
        Command::Status => {
            show_status(peer, out, ui);
            Ok(())
        }
        Command::Fingerprint(target) => {
            show_fingerprint(peer, target, out, ui);
            Ok(())
        }
        Command::Trust(name) => {
            let line = match peer.trust(&name) {
                Some(old) => format!(
                    "forgot the key {} of {name}: its next key is accepted and pinned",
                    fingerprint(&old)
                ),
                None => format!("no key is pinned for {name}: its next key is pinned"),
            };
            ui.say(out, &line);
            Ok(())
        }
        Command::SendFile { .. }
        | Command::GetFile(_)
        | Command::Refuse(_)
        | Command::Cancel(_)
        | Command::Transfers => {
            if let Err(message) = execute_file_command(peer, now, cmd, out, ui.json, &ui.hasher) {
                ui.error(out, &message);
            }
            Ok(())
        }
        Command::Help => {
            if ui.json {
                out.line(&json!({"event": "help", "text": HELP}).to_string());
            } else {
                for l in HELP.lines() {
                    out.line(l);
                }
            }
            Ok(())
        }
    };
    if let Err(e) = result {
        ui.error(out, &e.to_string());
    }
}

fn show_sessions(peer: &Peer, out: &mut dyn Output, ui: &Ui) {
    let sessions = peer.sessions();
    let outbox = peer.outbox();
    if ui.json {
        out.line(
            &json!({
                "event": "sessions",
                "sessions": sessions.iter().map(|s| json!({
                    "peer": s.peer,
                    "name": peer.name_of(s.peer),
                    "state": s.state,
                    "current": s.current,
                    "in_flight": s.in_flight,
                })).collect::<Vec<Value>>(),
                "queued": outbox.iter().map(|(t, texts)| json!({
                    "to": t.to_string(),
                    "count": texts.len(),
                })).collect::<Vec<Value>>(),
            })
            .to_string(),
        );
        return;
    }
    if sessions.is_empty() && outbox.is_empty() {
        out.line("no sessions; type connect <id|name>");
        return;
    }
    for s in &sessions {
        let state = match s.state {
            "connected" => "connected",
            "incoming" => "asks to connect (accept or reject)",
            "requesting" => "asked, waiting for an answer",
            _ => "looking up",
        };
        out.line(&format!(
            "{} {}{}: {state}{}",
            if s.current { "*" } else { " " },
            who(peer, s.peer),
            display(peer, s.peer),
            if s.in_flight > 0 {
                format!(", {} not yet acknowledged", s.in_flight)
            } else {
                String::new()
            }
        ));
    }
    for (t, texts) in &outbox {
        out.line(&format!(
            "  {}: {} message{} queued until connected",
            sanitize_name(&t.to_string()),
            texts.len(),
            if texts.len() == 1 { "" } else { "s" }
        ));
    }
}

/// `fingerprint [peer]`: ours, or the key of a peer (proved by its session, else as the
/// server gave it, else as pinned).
fn show_fingerprint(peer: &Peer, target: Option<Target>, out: &mut dyn Output, ui: &Ui) {
    let Some(target) = target else {
        let f = peer.fingerprint();
        if ui.json {
            out.line(&json!({"event": "fingerprint", "fingerprint": f}).to_string());
        } else {
            out.line(&format!("your key fingerprint: {f}"));
        }
        return;
    };
    let id = peer.session_peer(&target).ok();
    let known = id
        .and_then(|p| peer.fingerprint_of(p))
        .or_else(|| match &target {
            Target::Name(n) => peer.pinned(n).map(|k| fingerprint(&k)),
            Target::Id(_) => None,
        });
    let Some(f) = known else {
        return ui.error(
            out,
            &format!("no key known for {target} yet: connect to it first"),
        );
    };
    if ui.json {
        let mut v = json!({"event": "fingerprint", "fingerprint": f, "peer": id});
        if let Target::Name(n) = &target {
            v["name"] = json!(n);
        }
        out.line(&v.to_string());
    } else {
        out.line(&format!("key fingerprint of {target}: {f}"));
    }
}

fn show_status(peer: &Peer, out: &mut dyn Output, ui: &Ui) {
    let (connected, requests) = (peer.connected_peers(), peer.pending_requests());
    if ui.json {
        out.line(
            &json!({
                "event": "status",
                "id": peer.id(),
                "name": peer.name(),
                "fingerprint": peer.fingerprint(),
                "current": peer.current_peer(),
                "connected": connected,
                "requests": requests,
                "relayed": peer.relayed_addr().map(|a| a.to_string()),
            })
            .to_string(),
        );
        return;
    }
    let list = |v: &[ClientId]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter()
                .map(|&p| who(peer, p))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    out.line(&format!(
        "you are client {}{}, key fingerprint {}; connected to: {}; current: {}; waiting requests from: {}",
        peer.id().map_or("?".into(), |i| i.to_string()),
        peer.name().map_or(String::new(), |n| format!(" ({n})")),
        peer.fingerprint(),
        list(&connected),
        peer.current_peer().map_or("none".into(), |p| who(peer, p)),
        list(&requests)
    ));
    if let Some(relayed) = peer.relayed_addr() {
        out.line(&format!(
            "relay: peers that cannot reach you directly reach you at {relayed}"
        ));
    }
}

fn show_history(peer: &Peer, target: Option<Target>, count: usize, out: &mut dyn Output, ui: &Ui) {
    let Some(journal) = &ui.journal else {
        return ui.error(
            out,
            "no history is kept: this client runs without a state directory",
        );
    };
    let key = match &target {
        Some(t) => journal.key_of_target(peer, t),
        None => match peer.current_peer() {
            Some(p) => journal.key_of_peer(peer, p),
            None => {
                return ui.error(
                    out,
                    "history of whom? type history <id|name>, for example history bob",
                )
            }
        },
    };
    let entries = journal.last(&key, count);
    if ui.json {
        out.line(
            &json!({
                "event": "history",
                "peer": key,
                "entries": entries.iter().map(|e| json!({
                    "at_ms": e.at_ms,
                    "direction": e.direction,
                    "peer_id": e.peer_id,
                    "text": e.text,
                    "delivery": e.delivery,
                })).collect::<Vec<Value>>(),
            })
            .to_string(),
        );
        return;
    }
    let key = sanitize_name(&key);
    if entries.is_empty() {
        out.line(&format!("no messages with {key} yet"));
        return;
    }
    for e in entries {
        let at = UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms);
        let mark = crate::app::journal::mark(e.delivery);
        let line = match e.direction {
            crate::app::store::Direction::Out => {
                format!("[{} you -> {key}] {} {mark}", clock(at), sanitize(&e.text))
            }
            crate::app::store::Direction::In => {
                format!("[{} {key}] {}", clock(at), sanitize(&e.text))
            }
        };
        out.line(&line);
    }
}

/// A file hashed for `sendfile`, ready to be offered.
#[derive(Debug)]
pub struct HashedFile {
    pub path: std::path::PathBuf,
    pub to: Option<ClientId>,
    pub name: String,
    /// Size and SHA-256, or why the file could not be read.
    pub result: Result<(u64, [u8; 32]), String>,
}

/// Files being hashed on background threads, and the results waiting for the loop.
#[derive(Default)]
struct Jobs {
    /// Set by the driver: wakes its loop when a result is ready. Without it, `sendfile`
    /// hashes in place.
    wake: Option<Wake>,
    pending: usize,
    ready: Vec<HashedFile>,
}

/// Where `sendfile` hashes files: in place (the default), or on background threads whose
/// results the loop collects (see [`Hasher::in_background`]). One per client.
#[derive(Clone, Default)]
pub struct Hasher {
    jobs: Arc<std::sync::Mutex<Jobs>>,
}

impl Hasher {
    fn jobs(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `sendfile` hash files on a background thread and call `wake` when one is
    /// done; the loop then takes the results with [`Hasher::take`] and offers them with
    /// `offer_hashed`.
    pub fn in_background(&self, wake: Wake) {
        self.jobs().wake = Some(wake);
    }

    /// Files hashed since the last call.
    pub fn take(&self) -> Vec<HashedFile> {
        let mut jobs = self.jobs();
        let ready = std::mem::take(&mut jobs.ready);
        jobs.pending -= ready.len();
        ready
    }

    /// How many files are still being hashed (the end of input waits for them).
    pub fn hashing(&self) -> usize {
        let jobs = self.jobs();
        jobs.pending + jobs.ready.len()
    }
}

/// Offers a hashed file.
fn offer_hashed(peer: &mut Peer, now: Instant, file: HashedFile, out: &mut dyn Output, json: bool) {
    let path = file.path.display().to_string();
    let result = file
        .result
        .map_err(|e| format!("cannot read {path}: {e}"))
        .and_then(|(size, sha256)| {
            let source = crate::app::downloads::DiskSource::open(&file.path)
                .map_err(|e| format!("cannot read {path}: {e}"))?;
            peer.send_file(now, file.to, &file.name, size, sha256, Box::new(source))
                .map_err(|e| format!("cannot offer {path}: {e}"))
        });
    if let Err(message) = result {
        out.line(&if json {
            json_error(&message)
        } else {
            format!("error: {message}")
        });
    }
}

/// Carries out a file command: opens and hashes files, creates downloads.
fn execute_file_command(
    peer: &mut Peer,
    now: Instant,
    cmd: Command,
    out: &mut dyn Output,
    json: bool,
    hasher: &Hasher,
) -> Result<(), String> {
    use crate::app::downloads::{free_space, hash_file, DiskSink};
    use crate::text::safe_file_name;
    match cmd {
        Command::SendFile { path, to } => {
            let p = std::path::Path::new(&path);
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| format!("{path:?} does not name a file"))?
                .to_string();
            let to = match &to {
                Some(t) => Some(peer.session_peer(t).map_err(|e| e.to_string())?),
                None => None,
            };
            // Refuse early what the peer would: no point hashing it first.
            peer.file_link(to).map_err(|e| e.to_string())?;
            if p.is_dir() {
                return Err(format!("{path} is a directory; only files can be sent"));
            }
            std::fs::File::open(p).map_err(|e| format!("cannot read {path}: {e}"))?;
            // The offer carries the digest: hash the file first, on a thread of its own
            // when the driver takes the results (a big file takes seconds), so that chat
            // and the session keepalives go on meanwhile.
            let wake = hasher.jobs().wake.clone();
            match wake {
                Some(wake) => {
                    hasher.jobs().pending += 1;
                    let job_path = p.to_path_buf();
                    let hasher = hasher.clone();
                    std::thread::Builder::new()
                        .name("hash".into())
                        .spawn(move || {
                            let result = hash_file(&job_path).map_err(|e| e.to_string());
                            let mut jobs = hasher.jobs();
                            jobs.ready.push(HashedFile {
                                path: job_path,
                                to,
                                name,
                                result,
                            });
                            drop(jobs);
                            wake();
                        })
                        .map_err(|e| format!("cannot start hashing {path}: {e}"))?;
                    if !json {
                        out.line(&format!("computing the SHA-256 of {path}..."));
                    }
                }
                None => {
                    let result = hash_file(p).map_err(|e| e.to_string());
                    offer_hashed(
                        peer,
                        now,
                        HashedFile {
                            path: p.to_path_buf(),
                            to,
                            name,
                            result,
                        },
                        out,
                        json,
                    );
                }
            }
        }
        Command::GetFile(n) => {
            let (n, _, offered, size) = peer.file_offer(n).map_err(|e| e.to_string())?;
            let name = safe_file_name(&offered)?;
            let dir = peer.config().files.downloads.clone();
            // No space, no download: refused before anything is created (the peer is told
            // why, and the person by the file_failed line). A directory whose free space
            // cannot be read is tried: writing will say if it is full.
            match free_space(&dir) {
                Ok(free) if free < size => {
                    peer.refuse_file_no_space(now, n, free)
                        .map_err(|e| e.to_string())?;
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => log::debug!("free space of {}: {e}", dir.display()),
            }
            let sink = DiskSink::create(&dir, &name)
                .map_err(|e| format!("cannot receive file {n}: {e}"))?;
            peer.get_file(now, n, Box::new(sink))
                .map_err(|e| e.to_string())?;
            if !json {
                out.line(&if dir == std::path::Path::new(".") {
                    format!(
                        "receiving file {n} into the current directory (no downloads directory \
                         is known here; choose one with --downloads)"
                    )
                } else {
                    format!("receiving file {n} into {}", dir.display())
                });
            }
        }
        Command::Refuse(n) => {
            peer.refuse_file(now, n).map_err(|e| e.to_string())?;
        }
        Command::Cancel(n) => {
            peer.cancel_file(now, n).map_err(|e| e.to_string())?;
        }
        Command::Transfers => {
            let list = peer.transfers();
            if json {
                let items: Vec<serde_json::Value> = list
                    .iter()
                    .map(|t| {
                        json!({"n": t.n, "peer": t.peer, "outgoing": t.outgoing, "name": t.name,
                               "size": t.size, "done": t.done, "state": t.state})
                    })
                    .collect();
                out.line(&json!({"event": "transfers", "transfers": items}).to_string());
            } else if list.is_empty() {
                out.line("no transfers");
            } else {
                for t in list {
                    out.line(&format!(
                        "file {} {} client {}: {} ({} of {}) {}",
                        t.n,
                        if t.outgoing { "to" } else { "from" },
                        t.peer,
                        sanitize_name(&t.name),
                        human_bytes(t.done),
                        human_bytes(t.size),
                        t.state
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}
