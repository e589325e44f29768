//! Command lines as typed: what each means, and the help text.

use crate::peer::Target;
#[cfg(test)]
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
    /// `fingerprint [id|name]`: ours, or a peer's.
    Fingerprint(Option<Target>),
    /// `trust <name>`: accept a new key for `name` (forget its pin).
    Trust(String),
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
  fingerprint [id|name]        your key's fingerprint, or a peer's              e.g. fingerprint bob
  trust <name>                 accept a new key for name after a warning        e.g. trust bob
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
        "fingerprint" => Ok(Command::Fingerprint(target("fingerprint")?)),
        "trust" => match target("trust")? {
            Some(Target::Name(name)) => Ok(Command::Trust(name)),
            _ => Err("trust needs the name of a peer, for example trust bob".into()),
        },
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
        assert_eq!(parse_command("fingerprint"), Ok(Command::Fingerprint(None)));
        assert_eq!(
            parse_command("fingerprint bob"),
            Ok(Command::Fingerprint(Some(Target::Name("bob".into()))))
        );
        assert_eq!(parse_command("trust bob"), Ok(Command::Trust("bob".into())));
        assert!(parse_command("trust").is_err());
        assert!(parse_command("trust 3").is_err());
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
}
