//! The client's user interface: parsing command lines, showing events (one readable line
//! each, or one JSON object per line with `--json`), and reading stdin.

use std::io::{self, BufRead, Write};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::client::journal::Journal;
use crate::peer::{CommandError, Event, Peer, Sending, Target};
use crate::text::sanitize;
use crate::wire::ClientId;

/// One line the user typed, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Connect(Target),
    Accept(Option<Target>),
    Reject(Option<Target>),
    /// To the current peer (no targets), or to each target.
    Send {
        targets: Vec<Target>,
        text: String,
    },
    Broadcast(String),
    Switch(Target),
    Terminate(Option<Target>),
    Sessions,
    List,
    History {
        peer: Option<Target>,
        count: usize,
    },
    Status,
    Leave,
    Help,
    /// An empty line: nothing to do.
    Nothing,
    // ---- file transfer ----
    /// `sendfile <path> [@id]`
    SendFile {
        path: String,
        to: Option<Target>,
    },
    /// `getfile [n]`
    GetFile(Option<u64>),
    /// `refuse [n]`
    Refuse(Option<u64>),
    /// `cancel [n]`
    Cancel(Option<u64>),
    /// `transfers`
    Transfers,
}

/// How many messages `history` shows without a count.
pub const DEFAULT_HISTORY: usize = 20;

/// The commands, as shown by `help`: what each does, and an example.
pub const HELP: &str = "\
commands (a leading / is allowed; a line that is not a command goes to the current peer):
  connect <id|name>            ask a client to chat (resent until it answers)   e.g. connect bob
  accept [id|name]             accept a connection request (default: oldest)    e.g. accept 3
  reject [id|name]             reject a connection request                      e.g. reject bob
  send [@id|@name ...] <text>  send to the current peer, or to each @peer;      e.g. send @bob @4 lunch?
                               a peer that is not connected gets it queued
  @name <text>                 the same as send @name <text>                    e.g. @bob hi
  broadcast <text>             send to every connected peer                     e.g. broadcast back soon
  switch <id|name>             make a connected peer the current one            e.g. switch bob
  sessions                     list sessions, requests and queued messages      e.g. sessions
  list                         who is online, from the server                   e.g. list
  history [id|name] [N]        the last N messages with a peer (default 20)     e.g. history bob 50
  terminate [id|name]          end a session, withdraw a request, drop a queue  e.g. terminate bob
  status                       your id and name, sessions and requests          e.g. status
  leave                        end every session, leave the server, exit        e.g. leave
  help                         this list                                        e.g. help
  sendfile <path> [@id]        offer a file to the current peer, or to @id      e.g. sendfile notes.pdf @3
  getfile [n]                  accept file offer n (default: the only one)      e.g. getfile 2
  refuse [n]                   refuse file offer n                              e.g. refuse 2
  cancel [n]                   stop transfer n, either way; removes the partial e.g. cancel 2
  transfers                    list the transfers going on or waiting           e.g. transfers
Ctrl-C and Ctrl-D leave too. To send a line that starts with a command word, use send.";

/// Parses one input line. A line that does not start with a command word is a message.
/// A leading `/` is allowed (`/connect 2`); with it, an unknown word is an error.
pub fn parse_command(line: &str) -> Result<Command, String> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Ok(Command::Nothing);
    }
    let (slash, body) = match trimmed.strip_prefix('/') {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let (word, rest) = match body.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim()),
        None => (body, ""),
    };
    let target = |what: &str| -> Result<Option<Target>, String> {
        if rest.is_empty() {
            return Ok(None);
        }
        Target::parse(rest)
            .map(Some)
            .map_err(|e| format!("{what}: {e}; for example {what} 3 or {what} bob"))
    };
    // Everything after the command word as typed, inner spacing kept.
    let after_word = || -> &str {
        let start = line.trim_start().trim_start_matches('/');
        start
            .get(word.len()..)
            .unwrap_or("")
            .trim_start()
            .trim_end_matches(['\r', '\n'])
    };
    match word.to_ascii_lowercase().as_str() {
        "connect" => match target("connect")? {
            Some(p) => Ok(Command::Connect(p)),
            None => Err("connect needs a client id or name, for example connect 3".into()),
        },
        "accept" => Ok(Command::Accept(target("accept")?)),
        "reject" => Ok(Command::Reject(target("reject")?)),
        "terminate" => Ok(Command::Terminate(target("terminate")?)),
        "switch" => match target("switch")? {
            Some(p) => Ok(Command::Switch(p)),
            None => Err("switch needs a connected peer, for example switch bob".into()),
        },
        "send" => parse_send(after_word()),
        "broadcast" => {
            let text = after_word();
            if text.is_empty() {
                Err("broadcast needs a message, for example broadcast hello all".into())
            } else {
                Ok(Command::Broadcast(text.to_string()))
            }
        }
        "history" => parse_history(rest),
        "sessions" if rest.is_empty() => Ok(Command::Sessions),
        "list" | "who" if rest.is_empty() => Ok(Command::List),
        "status" if rest.is_empty() => Ok(Command::Status),
        "leave" | "quit" | "exit" if rest.is_empty() => Ok(Command::Leave),
        "help" | "?" if rest.is_empty() => Ok(Command::Help),
        // ---- file transfer ----
        "sendfile" => parse_sendfile(rest),
        "getfile" => Ok(Command::GetFile(transfer_number("getfile", rest)?)),
        "refuse" => Ok(Command::Refuse(transfer_number("refuse", rest)?)),
        "cancel" => Ok(Command::Cancel(transfer_number("cancel", rest)?)),
        "transfers" if rest.is_empty() => Ok(Command::Transfers),
        _ if slash => Err(format!("unknown command /{word}; type help for the list")),
        _ if word.starts_with('@') => parse_send(line.trim_start().trim_end_matches(['\r', '\n'])),
        _ => Ok(Command::Send {
            targets: Vec::new(),
            text: line.trim_end_matches(['\r', '\n']).to_string(),
        }),
    }
}

/// `[@target ...] text`.
fn parse_send(mut rest: &str) -> Result<Command, String> {
    let mut targets = Vec::new();
    while let Some(after_at) = rest.strip_prefix('@') {
        let (word, tail) = after_at
            .split_once(char::is_whitespace)
            .unwrap_or((after_at, ""));
        let target = Target::parse(word).map_err(|e| format!("send: @{word}: {e}"))?;
        if !targets.contains(&target) {
            targets.push(target);
        }
        rest = tail.trim_start();
    }
    if rest.is_empty() {
        return Err("send needs a message, for example send hello or send @bob hello".into());
    }
    Ok(Command::Send {
        targets,
        text: rest.to_string(),
    })
}

/// `history [id|name] [N]`.
fn parse_history(rest: &str) -> Result<Command, String> {
    let words: Vec<&str> = rest.split_whitespace().collect();
    let count = |w: &str| -> Result<usize, String> {
        match w.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "history: {w:?} is not a count; for example history bob 20"
            )),
        }
    };
    let bad = || "history takes a peer and a count, for example history bob 20".to_string();
    match words.as_slice() {
        [] => Ok(Command::History {
            peer: None,
            count: DEFAULT_HISTORY,
        }),
        [one] => match Target::parse(one) {
            // A lone number is a peer id: "history 3" is the history with client 3.
            Ok(t) => Ok(Command::History {
                peer: Some(t),
                count: DEFAULT_HISTORY,
            }),
            Err(_) => Err(bad()),
        },
        [peer, n] => Ok(Command::History {
            peer: Some(Target::parse(peer).map_err(|e| format!("history: {e}"))?),
            count: count(n)?,
        }),
        _ => Err(bad()),
    }
}

/// How human output looks: colour (only on a terminal, never with `NO_COLOR`) and
/// timestamps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
    pub timestamps: bool,
}

impl Style {
    /// Colour when stdout is a terminal and `NO_COLOR` is unset or empty
    /// (<https://no-color.org>); timestamps always.
    pub fn for_terminal(stdout_is_terminal: bool) -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            color: stdout_is_terminal && !no_color,
            timestamps: true,
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// The local time of day of `at`, `HH:MM:SS`.
pub fn clock(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as libc::time_t;
    // SAFETY: localtime_r only reads `secs` and writes into the zeroed tm we pass, which
    // is a plain C struct.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            let day = secs.rem_euclid(86_400);
            return format!("{:02}:{:02}:{:02}", day / 3600, day / 60 % 60, day % 60);
        }
        tm
    };
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

/// Names of peers, for showing them: `bob (3)` rather than `client 3`.
pub trait Names {
    fn name_of(&self, id: ClientId) -> Option<&str>;
    fn display_name_of(&self, id: ClientId) -> Option<&str>;
}

impl Names for Peer {
    fn name_of(&self, id: ClientId) -> Option<&str> {
        Peer::name_of(self, id)
    }
    fn display_name_of(&self, id: ClientId) -> Option<&str> {
        Peer::display_name_of(self, id)
    }
}

/// No names known (for tests and plain rendering).
pub struct NoNames;

impl Names for NoNames {
    fn name_of(&self, _: ClientId) -> Option<&str> {
        None
    }
    fn display_name_of(&self, _: ClientId) -> Option<&str> {
        None
    }
}

/// `bob (3)`, or `client 3` for a peer without a name.
pub fn who(names: &dyn Names, id: ClientId) -> String {
    match names.name_of(id) {
        Some(n) => format!("{} ({id})", sanitize(n)),
        None => format!("client {id}"),
    }
}

/// `bob (3)`, or `3`: for message lines.
fn short(names: &dyn Names, id: ClientId) -> String {
    names
        .name_of(id)
        .map_or_else(|| id.to_string(), |n| format!("{} ({id})", sanitize(n)))
}

/// ` "Alice L."` when peer `id` has a display name.
fn display(names: &dyn Names, id: ClientId) -> String {
    names
        .display_name_of(id)
        .map_or_else(String::new, |d| format!(" \"{}\"", sanitize(d)))
}

fn ago(secs: u32) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs / 3600 % 24),
    }
}

/// One readable line for an event, without names, colour or time (see [`render_human`]).
pub fn human_line(ev: &Event) -> String {
    render_human(ev, &NoNames, Style::default(), SystemTime::now())
}

/// One readable line (or several, for `Online`) for an event.
pub fn render_human(ev: &Event, names: &dyn Names, style: Style, now: SystemTime) -> String {
    let time = if style.timestamps {
        format!("{} ", clock(now))
    } else {
        String::new()
    };
    match ev {
        Event::Registered { id, again: false } => {
            format!("registered: you are client {id}. Type help for the commands.")
        }
        Event::Registered { id, again: true } => {
            format!("registered again with the server: you are client {id}")
        }
        Event::Claimed { name } => format!("your name is {}", sanitize(name)),
        Event::Request { from } => {
            let name = names.name_of(*from).map_or(from.to_string(), sanitize);
            style.paint(
                "1",
                &format!(
                    "{} wants to connect{}: type accept {name} or reject {name}",
                    who(names, *from),
                    display(names, *from)
                ),
            )
        }
        Event::Connected { peer } => {
            format!(
                "connected to {}{}",
                who(names, *peer),
                display(names, *peer)
            )
        }
        Event::Rejected { peer } => format!("{} rejected the connection", who(names, *peer)),
        Event::Inactive { peer } => format!("Client {peer} Inactive"),
        Event::UnknownName { name } => format!("nobody online is named {}", sanitize(name)),
        Event::NoAnswer { peer } => {
            format!("no answer from {}; gave up asking", who(names, *peer))
        }
        Event::LookupFailed { peer } => {
            format!("the server did not answer the lookup of client {peer}")
        }
        Event::Sent { peer, seq, text } => style.paint(
            "2",
            &format!(
                "[{time}you -> {} #{seq}] {}",
                short(names, *peer),
                sanitize(text)
            ),
        ),
        Event::Message { from, seq, text } => format!(
            "[{time}{} #{seq}] {}",
            style.paint("1;36", &short(names, *from)),
            sanitize(text)
        ),
        Event::Delivered { peer, seq } => style.paint(
            "32",
            &format!("(\u{2713} #{seq} delivered to {})", short(names, *peer)),
        ),
        Event::Undelivered { peer, seq } => style.paint(
            "31",
            &format!(
                "(\u{2717} #{seq} to {} was NOT delivered: no acknowledgement)",
                short(names, *peer)
            ),
        ),
        Event::Queued { to, text } => style.paint(
            "33",
            &format!(
                "[{time}you -> {} queued] {} (not connected: it goes once you are)",
                sanitize(&to.to_string()),
                sanitize(text)
            ),
        ),
        Event::Dequeued { to, peer, seqs } => format!(
            "sending {} queued message{} to {}",
            seqs.len(),
            if seqs.len() == 1 { "" } else { "s" },
            if to.is(*peer, None) {
                who(names, *peer)
            } else {
                format!("{} ({peer})", sanitize(&to.to_string()))
            }
        ),
        Event::QueueDropped { to, count, reason } => style.paint(
            "31",
            &format!(
                "{count} message{} queued for {} NOT delivered: {reason}",
                if *count == 1 { "" } else { "s" },
                sanitize(&to.to_string())
            ),
        ),
        Event::Terminated { peer, reason } => {
            format!("session with {} ended: {reason}", who(names, *peer))
        }
        Event::Online { clients, total } => {
            let mut lines = vec![format!("{total} online:")];
            for c in clients {
                let since = now - std::time::Duration::from_secs(u64::from(c.online_secs));
                lines.push(format!(
                    "  {:>6}  {:<16} {:<24} since {} ({})",
                    c.id,
                    c.name.as_deref().map_or("-".into(), sanitize),
                    c.display_name.as_deref().map_or(String::new(), sanitize),
                    clock(since),
                    ago(c.online_secs)
                ));
            }
            lines.join("\n")
        }
        Event::ListFailed { reason } => format!("cannot list who is online: {reason}"),
        Event::Left { server_acked: true } => "left the server. Bye.".into(),
        Event::Left {
            server_acked: false,
        } => "left (the server did not confirm). Bye.".into(),
        Event::Notice { message } => style.paint("33", &format!("note: {message}")),
        Event::Fatal { message } => style.paint("31", &format!("error: {message}")),
        ev @ (Event::FileOffered { .. }
        | Event::FileOffer { .. }
        | Event::FileProgress { .. }
        | Event::FileReceived { .. }
        | Event::FileSent { .. }
        | Event::FileFailed { .. }) => file_human_line(ev, names),
    }
}

/// One JSON object for an event, without peer names (see [`render_json`]).
pub fn json_line(ev: &Event) -> String {
    render_json(ev, &NoNames)
}

/// One JSON object for an event (see the README for the list). Events about a peer carry
/// its `name` (and `display_name`) when it has one.
pub fn render_json(ev: &Event, names: &dyn Names) -> String {
    let mut v = match ev {
        Event::Registered { id, again } => json!({"event": "registered", "id": id, "again": again}),
        Event::Claimed { name } => json!({"event": "claimed", "name": name}),
        Event::Request { from } => json!({"event": "request", "from": from}),
        Event::Connected { peer } => json!({"event": "connected", "peer": peer}),
        Event::Rejected { peer } => json!({"event": "rejected", "peer": peer}),
        Event::Inactive { peer } => json!({"event": "inactive", "peer": peer}),
        Event::UnknownName { name } => json!({"event": "unknown_name", "name": name}),
        Event::NoAnswer { peer } => json!({"event": "no_answer", "peer": peer}),
        Event::LookupFailed { peer } => json!({"event": "lookup_failed", "peer": peer}),
        Event::Sent { peer, seq, text } => {
            json!({"event": "sent", "peer": peer, "seq": seq, "text": text})
        }
        Event::Message { from, seq, text } => {
            json!({"event": "message", "from": from, "seq": seq, "text": text})
        }
        Event::Delivered { peer, seq } => json!({"event": "delivered", "peer": peer, "seq": seq}),
        Event::Undelivered { peer, seq } => {
            json!({"event": "undelivered", "peer": peer, "seq": seq})
        }
        Event::Queued { to, text } => {
            json!({"event": "queued", "to": to.to_string(), "text": text})
        }
        Event::Dequeued { to, peer, seqs } => {
            json!({"event": "dequeued", "to": to.to_string(), "peer": peer, "seqs": seqs})
        }
        Event::QueueDropped { to, count, reason } => json!({
            "event": "queue_dropped", "to": to.to_string(), "count": count, "reason": reason
        }),
        Event::Terminated { peer, reason } => {
            json!({"event": "terminated", "peer": peer, "reason": reason.as_str()})
        }
        Event::Online { clients, total } => json!({
            "event": "online",
            "total": total,
            "clients": clients.iter().map(|c| json!({
                "id": c.id,
                "name": c.name,
                "display_name": c.display_name,
                "online_secs": c.online_secs,
            })).collect::<Vec<Value>>(),
        }),
        Event::ListFailed { reason } => json!({"event": "list_failed", "reason": reason}),
        Event::Left { server_acked } => json!({"event": "left", "server_acked": server_acked}),
        Event::Notice { message } => json!({"event": "notice", "message": message}),
        Event::Fatal { message } => json!({"event": "error", "message": message, "fatal": true}),
        ev @ (Event::FileOffered { .. }
        | Event::FileOffer { .. }
        | Event::FileProgress { .. }
        | Event::FileReceived { .. }
        | Event::FileSent { .. }
        | Event::FileFailed { .. }) => file_json(ev),
    };
    let about = match ev {
        Event::Request { from } | Event::Message { from, .. } => Some(*from),
        Event::Connected { peer }
        | Event::Rejected { peer }
        | Event::NoAnswer { peer }
        | Event::Sent { peer, .. }
        | Event::Delivered { peer, .. }
        | Event::Undelivered { peer, .. }
        | Event::Dequeued { peer, .. }
        | Event::Terminated { peer, .. } => Some(*peer),
        _ => None,
    };
    if let (Some(id), Some(map)) = (about, v.as_object_mut()) {
        if let Some(name) = names.name_of(id) {
            map.insert("name".into(), json!(name));
        }
        if let Some(d) = names.display_name_of(id) {
            map.insert("display_name".into(), json!(d));
        }
    }
    v.to_string()
}

/// The JSON line for a refused command or bad input.
pub fn json_error(message: &str) -> String {
    json!({"event": "error", "message": message}).to_string()
}

/// The human line for a refused command.
pub fn human_error(err: &CommandError) -> String {
    format!("error: {err}")
}

/// Where the client's output goes.
pub trait Output {
    /// Shows one line (without its newline) and makes sure it is visible at once.
    fn line(&mut self, text: &str);

    /// The program is about to exit: whatever follows must be printed at once, and the
    /// terminal left as it was found.
    fn finish(&mut self) {}
}

/// Plain stdout, flushed after every line (for scripts and `--json`).
pub struct StdoutOutput;

impl Output for StdoutOutput {
    fn line(&mut self, text: &str) {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

/// Prints above the line being edited, so that incoming messages do not garble it.
///
/// The line editor runs on a thread of its own and holds the terminal in raw mode while it
/// waits for a key; a process that exits then would leave the user's shell without echo.
/// So the terminal's settings are saved before the editor starts and put back by
/// [`Output::finish`] (and on drop), after which lines are printed directly.
pub struct PrinterOutput {
    printer: Box<dyn rustyline::ExternalPrinter + Send>,
    saved: Option<TerminalSettings>,
    finished: bool,
}

impl Output for PrinterOutput {
    fn line(&mut self, text: &str) {
        if self.finished || self.printer.print(format!("{text}\n")).is_err() {
            StdoutOutput.line(text);
        }
    }

    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if let Some(saved) = &self.saved {
            saved.restore();
        }
        // Erase the prompt the editor left on the current line.
        let mut out = io::stdout().lock();
        let _ = write!(out, "\r\x1b[2K");
        let _ = out.flush();
    }
}

impl Drop for PrinterOutput {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The settings of the terminal on stdin, to put back at exit.
struct TerminalSettings(libc::termios);

impl TerminalSettings {
    fn save() -> Option<Self> {
        // SAFETY: tcgetattr only writes into the termios we pass; a zeroed termios is a
        // valid value of that plain C struct.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            (libc::tcgetattr(libc::STDIN_FILENO, &mut t) == 0).then_some(TerminalSettings(t))
        }
    }

    fn restore(&self) {
        // SAFETY: tcsetattr only reads the termios, which tcgetattr filled in.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0);
        }
    }
}

/// What the stdin reader hands to the event loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Line(String),
    /// Ctrl-C at the prompt.
    Interrupt,
    /// End of input (Ctrl-D, or the end of a script's stdin).
    Eof,
}

/// Something that wakes the event loop after an input is queued.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// Reads stdin line by line on a thread of its own (stdin is not a terminal, or `--json`).
pub fn spawn_plain_reader(tx: Sender<Input>, wake: Wake) -> io::Result<()> {
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = io::stdin();
            let mut lines = stdin.lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match lines.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        // Invalid UTF-8 is replaced rather than refused: the line still goes.
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        if tx.send(Input::Line(line)).is_err() {
                            return;
                        }
                        wake();
                    }
                }
            }
            let _ = tx.send(Input::Eof);
            wake();
        })?;
    Ok(())
}

/// Starts a line editor (history, editing keys) on a thread of its own, and returns the
/// output that prints above the prompt.
pub fn spawn_terminal_reader(tx: Sender<Input>, wake: Wake) -> io::Result<PrinterOutput> {
    let saved = TerminalSettings::save();
    let (ptx, prx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("line-editor".into())
        .spawn(move || {
            let mut editor = match rustyline::DefaultEditor::new() {
                Ok(e) => e,
                Err(e) => {
                    let _ = ptx.send(Err(io::Error::other(e.to_string())));
                    return;
                }
            };
            match editor.create_external_printer() {
                Ok(p) => {
                    let boxed: Box<dyn rustyline::ExternalPrinter + Send> = Box::new(p);
                    if ptx.send(Ok(boxed)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = ptx.send(Err(io::Error::other(e.to_string())));
                    return;
                }
            }
            loop {
                let input = match editor.readline("> ") {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        Input::Line(line)
                    }
                    Err(rustyline::error::ReadlineError::Interrupted) => Input::Interrupt,
                    Err(_) => Input::Eof,
                };
                // After Ctrl-C the editor keeps reading: a second Ctrl-C forces the exit.
                let stop = input == Input::Eof;
                if tx.send(input).is_err() {
                    return;
                }
                wake();
                if stop {
                    return;
                }
            }
        })?;
    match prx.recv() {
        Ok(Ok(printer)) => Ok(PrinterOutput {
            printer,
            saved,
            finished: false,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other("the line editor did not start")),
    }
}

/// How the client shows things, and what it remembers: the state of one user interface.
pub struct Ui {
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
pub fn execute(peer: &mut Peer, now: Instant, line: &str, out: &mut dyn Output, ui: &mut Ui) {
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
            sanitize(&t.to_string()),
            texts.len(),
            if texts.len() == 1 { "" } else { "s" }
        ));
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
                "current": peer.current_peer(),
                "connected": connected,
                "requests": requests,
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
        "you are client {}{}; connected to: {}; current: {}; waiting requests from: {}",
        peer.id().map_or("?".into(), |i| i.to_string()),
        peer.name().map_or(String::new(), |n| format!(" ({n})")),
        list(&connected),
        peer.current_peer().map_or("none".into(), |p| who(peer, p)),
        list(&requests)
    ));
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
    if entries.is_empty() {
        out.line(&format!("no messages with {key} yet"));
        return;
    }
    for e in entries {
        let at = UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms);
        let mark = crate::client::journal::mark(e.delivery);
        let line = match e.direction {
            crate::client::store::Direction::Out => {
                format!("[{} you -> {key}] {} {mark}", clock(at), sanitize(&e.text))
            }
            crate::client::store::Direction::In => {
                format!("[{} {key}] {}", clock(at), sanitize(&e.text))
            }
        };
        out.line(&line);
    }
}

// ---------------------------------------------------------------------- file transfer

/// `sendfile <path> [@id]`: the path may hold spaces; a last word starting with `@` is the
/// target.
fn parse_sendfile(rest: &str) -> Result<Command, String> {
    const USAGE: &str =
        "sendfile needs a file, for example sendfile notes.txt or sendfile notes.txt @3";
    if rest.is_empty() {
        return Err(USAGE.into());
    }
    let (path, to) = match rest.rsplit_once(char::is_whitespace) {
        Some((path, last)) if last.starts_with('@') => (path.trim_end(), Some(last)),
        _ if rest.starts_with('@') => return Err(USAGE.into()),
        _ => (rest, None),
    };
    let to = to.map(parse_target).transpose()?;
    Ok(Command::SendFile {
        path: path.to_string(),
        to,
    })
}

/// A target peer, `@<id>` or `@<name>`.
pub fn parse_target(word: &str) -> Result<Target, String> {
    let t = word
        .strip_prefix('@')
        .ok_or_else(|| format!("{word:?}: a target is written @<id> or @<name>, for example @3"))?;
    Target::parse(t).map_err(|e| format!("{word}: {e}; for example @3 or @bob"))
}

fn transfer_number(what: &str, rest: &str) -> Result<Option<u64>, String> {
    if rest.is_empty() {
        return Ok(None);
    }
    match rest.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(format!(
            "{what}: {rest:?} is not a transfer number; for example {what} 2 (type transfers for the list)"
        )),
    }
}

/// `12.5 MiB`
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `[#########-----------]  45%  12.3 MiB of 27.0 MiB  4.1 MiB/s  4 s left`
pub fn progress_bar(bytes: u64, size: u64, rate: u64, eta_secs: Option<u64>) -> String {
    const WIDTH: u64 = 20;
    // Parts of `size` done, out of `of` (all done for an empty file).
    let part = |of: u64| {
        (u128::from(bytes.min(size)) * u128::from(of))
            .checked_div(u128::from(size))
            .map_or(of, |v| v as u64)
    };
    let (filled, percent) = (part(WIDTH), part(100));
    let eta = match eta_secs {
        Some(s) if s >= 3600 => format!("{}h{:02}m left", s / 3600, s % 3600 / 60),
        Some(s) if s >= 60 => format!("{}m{:02}s left", s / 60, s % 60),
        Some(s) => format!("{s} s left"),
        None => "time left unknown".into(),
    };
    format!(
        "[{}{}] {percent:>3}%  {} of {}  {}/s  {eta}",
        "#".repeat(filled as usize),
        "-".repeat((WIDTH - filled) as usize),
        human_bytes(bytes),
        human_bytes(size),
        human_bytes(rate),
    )
}

fn file_human_line(ev: &Event, names: &dyn Names) -> String {
    match ev {
        Event::FileOffered {
            peer,
            n,
            name,
            size,
        } => format!(
            "file {n}: offered {} ({}) to {}; waiting for the answer",
            sanitize(name),
            human_bytes(*size),
            who(names, *peer)
        ),
        Event::FileOffer {
            from,
            n,
            name,
            size,
            ..
        } => format!(
            "file offer {n} from {}: {} ({}). Type getfile {n} or refuse {n}",
            who(names, *from),
            sanitize(name),
            human_bytes(*size)
        ),
        Event::FileProgress {
            peer,
            n,
            outgoing,
            bytes,
            size,
            rate,
            eta_secs,
        } => format!(
            "file {n} {} {} {}",
            if *outgoing { "to" } else { "from" },
            who(names, *peer),
            progress_bar(*bytes, *size, *rate, *eta_secs)
        ),
        Event::FileReceived {
            from,
            n,
            path,
            size,
            sha256,
        } => format!(
            "file {n} from {} received: {} ({}, sha256 {sha256})",
            who(names, *from),
            sanitize(&path.display().to_string()),
            human_bytes(*size)
        ),
        Event::FileSent { peer, n, size } => format!(
            "file {n} sent: {} has all {} and the checksum matched",
            who(names, *peer),
            human_bytes(*size)
        ),
        Event::FileFailed { peer, n, reason } => {
            format!("file {n} ({}) failed: {reason}", who(names, *peer))
        }
        _ => String::new(),
    }
}

fn file_json(ev: &Event) -> serde_json::Value {
    match ev {
        Event::FileOffered {
            peer,
            n,
            name,
            size,
        } => {
            json!({"event": "file_offered", "peer": peer, "n": n, "name": name, "size": size})
        }
        Event::FileOffer {
            from,
            n,
            name,
            size,
            sha256,
        } => {
            json!({"event": "file_offer", "from": from, "n": n, "name": name, "size": size, "sha256": sha256})
        }
        Event::FileProgress {
            peer,
            n,
            outgoing,
            bytes,
            size,
            rate,
            eta_secs,
        } => {
            json!({"event": "file_progress", "peer": peer, "n": n, "outgoing": outgoing, "bytes": bytes, "size": size, "rate": rate, "eta_secs": eta_secs})
        }
        Event::FileReceived {
            from,
            n,
            path,
            size,
            sha256,
        } => {
            json!({"event": "file_received", "from": from, "n": n, "path": path.display().to_string(), "size": size, "sha256": sha256})
        }
        Event::FileSent { peer, n, size } => {
            json!({"event": "file_sent", "peer": peer, "n": n, "size": size})
        }
        Event::FileFailed { peer, n, reason } => {
            json!({"event": "file_failed", "peer": peer, "n": n, "reason": reason.as_str(), "detail": reason.to_string()})
        }
        _ => json!({"event": "notice", "message": "unknown event"}),
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
    /// [`offer_hashed`].
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
pub fn offer_hashed(
    peer: &mut Peer,
    now: Instant,
    file: HashedFile,
    out: &mut dyn Output,
    json: bool,
) {
    let path = file.path.display().to_string();
    let result = file
        .result
        .map_err(|e| format!("cannot read {path}: {e}"))
        .and_then(|(size, sha256)| {
            let source = crate::client::downloads::DiskSource::open(&file.path)
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
    use crate::client::downloads::{hash_file, DiskSink};
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
            let (n, _, offered) = peer.file_offer(n).map_err(|e| e.to_string())?;
            let name = safe_file_name(&offered)?;
            let dir = peer.config().files.downloads.clone();
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
                        sanitize(&t.name),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: ClientId) -> Target {
        Target::Id(n)
    }

    fn name(n: &str) -> Target {
        Target::Name(n.into())
    }

    fn send(targets: Vec<Target>, text: &str) -> Result<Command, String> {
        Ok(Command::Send {
            targets,
            text: text.into(),
        })
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse_command("connect 3"), Ok(Command::Connect(id(3))));
        assert_eq!(parse_command("  CONNECT   3 "), Ok(Command::Connect(id(3))));
        assert_eq!(parse_command("/connect 3"), Ok(Command::Connect(id(3))));
        assert_eq!(
            parse_command("connect bob"),
            Ok(Command::Connect(name("bob")))
        );
        assert_eq!(parse_command("accept"), Ok(Command::Accept(None)));
        assert_eq!(parse_command("accept 2"), Ok(Command::Accept(Some(id(2)))));
        assert_eq!(
            parse_command("reject bob"),
            Ok(Command::Reject(Some(name("bob"))))
        );
        assert_eq!(parse_command("terminate"), Ok(Command::Terminate(None)));
        assert_eq!(
            parse_command("switch Bob"),
            Ok(Command::Switch(name("Bob")))
        );
        assert_eq!(parse_command("sessions"), Ok(Command::Sessions));
        assert_eq!(parse_command("list"), Ok(Command::List));
        assert_eq!(parse_command("leave"), Ok(Command::Leave));
        assert_eq!(parse_command("quit"), Ok(Command::Leave));
        assert_eq!(parse_command("help"), Ok(Command::Help));
        assert_eq!(parse_command("status"), Ok(Command::Status));
        assert_eq!(parse_command(""), Ok(Command::Nothing));
        assert_eq!(
            parse_command("broadcast  hi  all"),
            Ok(Command::Broadcast("hi  all".into()))
        );
    }

    #[test]
    fn history_takes_a_peer_and_a_count() {
        assert_eq!(
            parse_command("history"),
            Ok(Command::History {
                peer: None,
                count: DEFAULT_HISTORY
            })
        );
        assert_eq!(
            parse_command("history bob 5"),
            Ok(Command::History {
                peer: Some(name("bob")),
                count: 5
            })
        );
        assert_eq!(
            parse_command("history 3"),
            Ok(Command::History {
                peer: Some(id(3)),
                count: DEFAULT_HISTORY
            })
        );
        assert!(parse_command("history bob many").is_err());
        assert!(parse_command("history bob 0").is_err());
        assert!(parse_command("history a b c").is_err());
    }

    #[test]
    fn send_takes_targets_before_the_text() {
        assert_eq!(
            parse_command("send @2 @bob hello there"),
            send(vec![id(2), name("bob")], "hello there")
        );
        assert_eq!(parse_command("@bob hi"), send(vec![name("bob")], "hi"));
        // The same target twice gets one copy.
        assert_eq!(
            parse_command("send @bob @BOB @bob x"),
            send(vec![name("bob"), name("BOB")], "x")
        );
        let e = parse_command("send @bob").unwrap_err();
        assert!(e.contains("needs a message"), "{e}");
        let e = parse_command("send @no/pe hi").unwrap_err();
        assert!(e.contains("@no/pe"), "{e}");
        // An @ inside the text is text.
        assert_eq!(
            parse_command("send mail me @ home"),
            send(vec![], "mail me @ home")
        );
    }

    #[test]
    fn send_keeps_the_text_as_typed() {
        assert_eq!(
            parse_command("send  hello   world "),
            send(vec![], "hello   world ")
        );
        assert_eq!(parse_command("hello there"), send(vec![], "hello there"));
        // A plain line that merely starts like a command word is a message.
        assert_eq!(
            parse_command("leave me alone"),
            send(vec![], "leave me alone")
        );
        assert_eq!(
            parse_command("send accept my apologies"),
            send(vec![], "accept my apologies")
        );
    }

    #[test]
    fn bad_arguments_get_one_clear_line() {
        let e = parse_command("connect").unwrap_err();
        assert!(e.contains("connect 3"), "{e}");
        let e = parse_command("connect b/ob").unwrap_err();
        assert!(e.contains("connect"), "{e}");
        let e = parse_command("connect 0").unwrap_err();
        assert!(e.contains("start at 1"), "{e}");
        let e = parse_command("accept 3x").unwrap_err();
        assert!(e.contains("accept"), "{e}");
        let e = parse_command("send").unwrap_err();
        assert!(e.contains("send hello"), "{e}");
        let e = parse_command("/dance").unwrap_err();
        assert!(e.contains("unknown command /dance"), "{e}");
        let e = parse_command("switch").unwrap_err();
        assert!(e.contains("switch bob"), "{e}");
    }

    #[test]
    fn help_gives_every_command_an_example() {
        for word in [
            "connect",
            "accept",
            "reject",
            "send",
            "broadcast",
            "switch",
            "sessions",
            "list",
            "history",
            "terminate",
            "status",
            "leave",
            "help",
        ] {
            let line = HELP
                .lines()
                .find(|l| l.trim_start().starts_with(word))
                .unwrap_or_else(|| panic!("{word} is not in help"));
            assert!(line.contains("e.g. "), "no example for {word}: {line}");
        }
    }

    #[test]
    fn file_commands_parse() {
        assert_eq!(
            parse_command("sendfile my notes.txt @3"),
            Ok(Command::SendFile {
                path: "my notes.txt".into(),
                to: Some(Target::Id(3))
            })
        );
        assert_eq!(
            parse_command("/sendfile a.txt"),
            Ok(Command::SendFile {
                path: "a.txt".into(),
                to: None
            })
        );
        assert_eq!(parse_command("getfile"), Ok(Command::GetFile(None)));
        assert_eq!(parse_command("getfile 4"), Ok(Command::GetFile(Some(4))));
        assert_eq!(parse_command("refuse 2"), Ok(Command::Refuse(Some(2))));
        assert_eq!(parse_command("cancel"), Ok(Command::Cancel(None)));
        assert_eq!(parse_command("transfers"), Ok(Command::Transfers));
        assert!(parse_command("sendfile")
            .unwrap_err()
            .contains("sendfile notes.txt"));
        assert!(parse_command("sendfile @3").is_err());
        assert_eq!(
            parse_command("sendfile a b @bob"),
            Ok(Command::SendFile {
                path: "a b".into(),
                to: Some(Target::Name("bob".into()))
            })
        );
        assert!(parse_command("sendfile a @-x").unwrap_err().contains("@3"));
        assert!(parse_command("cancel 0")
            .unwrap_err()
            .contains("transfer number"));
    }

    #[test]
    fn the_progress_line_shows_bar_rate_and_time_left() {
        let line = progress_bar(512 << 20, 1 << 30, 4 << 20, Some(128));
        assert_eq!(
            line,
            "[##########----------]  50%  512.0 MiB of 1.0 GiB  4.0 MiB/s  2m08s left"
        );
        assert!(progress_bar(0, 0, 0, None).starts_with("[####################] 100%"));
    }

    #[test]
    fn control_characters_from_peers_are_neutralised() {
        let shown = human_line(&Event::Message {
            from: 2,
            seq: 1,
            text: "hi\u{1b}[2J\u{7}there".into(),
        });
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert!(shown.contains("hi") && shown.contains("there"));
    }

    #[test]
    fn colour_only_when_asked_and_plain_lines_have_no_escapes() {
        let ev = Event::Delivered { peer: 2, seq: 1 };
        let now = SystemTime::now();
        let plain = render_human(&ev, &NoNames, Style::default(), now);
        assert!(!plain.contains('\u{1b}'), "{plain:?}");
        let coloured = render_human(
            &ev,
            &NoNames,
            Style {
                color: true,
                timestamps: false,
            },
            now,
        );
        assert!(coloured.starts_with("\u{1b}["), "{coloured:?}");
        assert!(coloured.contains("#1 delivered to 2"), "{coloured:?}");
    }

    #[test]
    fn message_lines_carry_the_time_when_asked() {
        let ev = Event::Message {
            from: 2,
            seq: 4,
            text: "hi".into(),
        };
        let at = UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let line = render_human(
            &ev,
            &NoNames,
            Style {
                color: false,
                timestamps: true,
            },
            at,
        );
        assert_eq!(line, format!("[{} 2 #4] hi", clock(at)));
        assert_eq!(clock(at).len(), 8);
    }

    #[test]
    fn json_events_have_the_documented_shape() {
        let v: serde_json::Value = serde_json::from_str(&json_line(&Event::Message {
            from: 2,
            seq: 1,
            text: "hi \"you\"".into(),
        }))
        .unwrap();
        assert_eq!(
            v,
            json!({"event": "message", "from": 2, "seq": 1, "text": "hi \"you\""})
        );
        let v: serde_json::Value =
            serde_json::from_str(&json_line(&Event::Inactive { peer: 3 })).unwrap();
        assert_eq!(v, json!({"event": "inactive", "peer": 3}));
        assert_eq!(
            human_line(&Event::Inactive { peer: 3 }),
            "Client 3 Inactive"
        );
        let v: serde_json::Value = serde_json::from_str(&json_line(&Event::Queued {
            to: name("bob"),
            text: "later".into(),
        }))
        .unwrap();
        assert_eq!(v, json!({"event": "queued", "to": "bob", "text": "later"}));
    }

    struct Bob;

    impl Names for Bob {
        fn name_of(&self, id: ClientId) -> Option<&str> {
            (id == 2).then_some("bob")
        }
        fn display_name_of(&self, id: ClientId) -> Option<&str> {
            (id == 2).then_some("Bob \u{1b}[31mB.")
        }
    }

    #[test]
    fn peers_are_shown_with_their_names() {
        let v: serde_json::Value =
            serde_json::from_str(&render_json(&Event::Connected { peer: 2 }, &Bob)).unwrap();
        assert_eq!(
            v,
            json!({"event": "connected", "peer": 2, "name": "bob", "display_name": "Bob \u{1b}[31mB."})
        );
        let line = render_human(
            &Event::Connected { peer: 2 },
            &Bob,
            Style::default(),
            SystemTime::now(),
        );
        assert!(line.starts_with("connected to bob (2)"), "{line}");
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        let line = render_human(
            &Event::Request { from: 2 },
            &Bob,
            Style::default(),
            SystemTime::now(),
        );
        assert!(line.contains("accept bob"), "{line}");
    }
}
