//! The client's user interface: parsing command lines, showing events (one readable line
//! each, or one JSON object per line with `--json`), and reading stdin.

use std::io::{self, BufRead, Write};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::peer::{CommandError, Event, Peer};
use crate::wire::ClientId;

/// One line the user typed, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Connect(ClientId),
    Accept(Option<ClientId>),
    Reject(Option<ClientId>),
    Send(String),
    Terminate(Option<ClientId>),
    Status,
    Leave,
    Help,
    /// An empty line: nothing to do.
    Nothing,
}

/// The commands, as shown by `help`.
pub const HELP: &str = "\
commands:
  connect <id>       ask client <id> to chat (resent until it answers)
  accept [id]        accept a connection request (the oldest, or the one from <id>)
  reject [id]        reject a connection request
  send <message>     send a message to the connected peer; a plain line does the same
  terminate [id]     end the session (or withdraw the request) with the peer
  status             show your id, sessions and waiting requests
  leave              end every session, leave the server and exit (also Ctrl-C, Ctrl-D)
  help               this list
a line that starts with a command word is that command; to send such a line, use send.";

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
    let id = |what: &str| -> Result<Option<ClientId>, String> {
        if rest.is_empty() {
            return Ok(None);
        }
        parse_id(rest)
            .map(Some)
            .map_err(|e| format!("{what}: {e}; for example {what} 3"))
    };
    match word.to_ascii_lowercase().as_str() {
        "connect" => match id("connect")? {
            Some(p) => Ok(Command::Connect(p)),
            None => Err("connect needs a client id, for example connect 3".into()),
        },
        "accept" => Ok(Command::Accept(id("accept")?)),
        "reject" => Ok(Command::Reject(id("reject")?)),
        "terminate" => Ok(Command::Terminate(id("terminate")?)),
        "send" => {
            // Everything after "send " as typed, inner spacing kept.
            let text = line
                .trim_start()
                .trim_start_matches('/')
                .get(4..)
                .unwrap_or("")
                .trim_start()
                .trim_end_matches(['\r', '\n']);
            if text.is_empty() {
                Err("send needs a message, for example send hello".into())
            } else {
                Ok(Command::Send(text.to_string()))
            }
        }
        "status" if rest.is_empty() => Ok(Command::Status),
        "leave" | "quit" | "exit" if rest.is_empty() => Ok(Command::Leave),
        "help" | "?" if rest.is_empty() => Ok(Command::Help),
        _ if slash => Err(format!("unknown command /{word}; type help for the list")),
        _ => Ok(Command::Send(
            line.trim_end_matches(['\r', '\n']).to_string(),
        )),
    }
}

fn parse_id(text: &str) -> Result<ClientId, String> {
    match text.parse::<ClientId>() {
        Ok(0) => Err("client ids start at 1".into()),
        Ok(id) => Ok(id),
        Err(_) => Err(format!("{text:?} is not a client id (a number)")),
    }
}

/// Replaces control characters (terminal escape sequences included) so that text from a
/// peer cannot move the cursor, change colours or clear the screen.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// One readable line for an event.
pub fn human_line(ev: &Event) -> String {
    match ev {
        Event::Registered { id, again: false } => {
            format!("registered: you are client {id}. Type help for the commands.")
        }
        Event::Registered { id, again: true } => {
            format!("registered again with the server: you are client {id}")
        }
        Event::Request { from } => {
            format!("client {from} wants to connect: type accept {from} or reject {from}")
        }
        Event::Connected { peer } => format!("connected to client {peer}"),
        Event::Rejected { peer } => format!("client {peer} rejected the connection"),
        Event::Inactive { peer } => format!("Client {peer} Inactive"),
        Event::NoAnswer { peer } => format!("no answer from client {peer}; gave up asking"),
        Event::LookupFailed { peer } => {
            format!("the server did not answer the lookup of client {peer}")
        }
        Event::Sent { peer, seq, text } => format!("[you -> {peer} #{seq}] {}", sanitize(text)),
        Event::Message { from, seq, text } => format!("[{from} #{seq}] {}", sanitize(text)),
        Event::Delivered { peer, seq } => format!("(#{seq} delivered to {peer})"),
        Event::Undelivered { peer, seq } => {
            format!("(#{seq} to {peer} was NOT delivered: no acknowledgement)")
        }
        Event::Terminated { peer, reason } => {
            format!("session with client {peer} ended: {reason}")
        }
        Event::Left { server_acked: true } => "left the server. Bye.".into(),
        Event::Left {
            server_acked: false,
        } => "left (the server did not confirm). Bye.".into(),
        Event::Notice { message } => format!("note: {message}"),
        Event::Fatal { message } => format!("error: {message}"),
    }
}

/// One JSON object for an event (see the README for the list).
pub fn json_line(ev: &Event) -> String {
    let v = match ev {
        Event::Registered { id, again } => json!({"event": "registered", "id": id, "again": again}),
        Event::Request { from } => json!({"event": "request", "from": from}),
        Event::Connected { peer } => json!({"event": "connected", "peer": peer}),
        Event::Rejected { peer } => json!({"event": "rejected", "peer": peer}),
        Event::Inactive { peer } => json!({"event": "inactive", "peer": peer}),
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
        Event::Terminated { peer, reason } => {
            json!({"event": "terminated", "peer": peer, "reason": reason.as_str()})
        }
        Event::Left { server_acked } => json!({"event": "left", "server_acked": server_acked}),
        Event::Notice { message } => json!({"event": "notice", "message": message}),
        Event::Fatal { message } => json!({"event": "error", "message": message, "fatal": true}),
    };
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

/// Carries out one input line on `peer`, showing errors and command output on `out`.
pub fn execute(peer: &mut Peer, now: Instant, line: &str, out: &mut dyn Output, json: bool) {
    let show_error = |out: &mut dyn Output, message: &str| {
        out.line(&if json {
            json_error(message)
        } else {
            format!("error: {message}")
        });
    };
    let cmd = match parse_command(line) {
        Ok(cmd) => cmd,
        Err(message) => return show_error(out, &message),
    };
    let result = match cmd {
        Command::Nothing => Ok(()),
        Command::Connect(p) => peer.connect(now, p),
        Command::Accept(p) => peer.accept(now, p).map(|_| ()),
        Command::Reject(p) => peer.reject(now, p).map(|p| {
            if !json {
                out.line(&format!("rejected the request of client {p}"));
            }
        }),
        Command::Send(text) => peer.send(now, None, &text).map(|_| ()),
        Command::Terminate(p) => peer.terminate(now, p).map(|p| {
            if !json {
                out.line(&format!("ending the session with client {p}..."));
            }
        }),
        Command::Leave => {
            peer.leave(now);
            Ok(())
        }
        Command::Status => {
            let (connected, requests) = (peer.connected_peers(), peer.pending_requests());
            out.line(&if json {
                json!({
                    "event": "status",
                    "id": peer.id(),
                    "current": peer.current_peer(),
                    "connected": connected,
                    "requests": requests,
                })
                .to_string()
            } else {
                let list = |v: &[ClientId]| {
                    if v.is_empty() {
                        "none".to_string()
                    } else {
                        v.iter()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                };
                format!(
                    "you are client {}; connected to: {}; current: {}; waiting requests from: {}",
                    peer.id().map_or("?".into(), |i| i.to_string()),
                    list(&connected),
                    peer.current_peer().map_or("none".into(), |p| p.to_string()),
                    list(&requests)
                )
            });
            Ok(())
        }
        Command::Help => {
            if json {
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
        show_error(out, &e.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse_command("connect 3"), Ok(Command::Connect(3)));
        assert_eq!(parse_command("  CONNECT   3 "), Ok(Command::Connect(3)));
        assert_eq!(parse_command("/connect 3"), Ok(Command::Connect(3)));
        assert_eq!(parse_command("accept"), Ok(Command::Accept(None)));
        assert_eq!(parse_command("accept 2"), Ok(Command::Accept(Some(2))));
        assert_eq!(parse_command("reject 2"), Ok(Command::Reject(Some(2))));
        assert_eq!(parse_command("terminate"), Ok(Command::Terminate(None)));
        assert_eq!(parse_command("leave"), Ok(Command::Leave));
        assert_eq!(parse_command("quit"), Ok(Command::Leave));
        assert_eq!(parse_command("help"), Ok(Command::Help));
        assert_eq!(parse_command("status"), Ok(Command::Status));
        assert_eq!(parse_command(""), Ok(Command::Nothing));
    }

    #[test]
    fn send_keeps_the_text_as_typed() {
        assert_eq!(
            parse_command("send  hello   world "),
            Ok(Command::Send("hello   world ".into()))
        );
        assert_eq!(
            parse_command("hello there"),
            Ok(Command::Send("hello there".into()))
        );
        // A plain line that merely starts like a command word is a message.
        assert_eq!(
            parse_command("leave me alone"),
            Ok(Command::Send("leave me alone".into()))
        );
        assert_eq!(
            parse_command("send accept my apologies"),
            Ok(Command::Send("accept my apologies".into()))
        );
    }

    #[test]
    fn bad_arguments_get_one_clear_line() {
        let e = parse_command("connect").unwrap_err();
        assert!(e.contains("connect 3"), "{e}");
        let e = parse_command("connect bob").unwrap_err();
        assert!(e.contains("not a client id"), "{e}");
        let e = parse_command("connect 0").unwrap_err();
        assert!(e.contains("start at 1"), "{e}");
        let e = parse_command("accept x").unwrap_err();
        assert!(e.contains("accept"), "{e}");
        let e = parse_command("send").unwrap_err();
        assert!(e.contains("send hello"), "{e}");
        let e = parse_command("/dance").unwrap_err();
        assert!(e.contains("unknown command /dance"), "{e}");
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
    }
}
