//! Events as a person or a script sees them: one readable line each (with the time,
//! names, colour on a terminal), or one JSON object per line with `--json`. Text that came
//! from the network goes through [`sanitize`] before it reaches a terminal.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::peer::{CommandError, Event, Path, Peer, SendError, SendTarget};
pub use crate::text::human_bytes;
use crate::text::{sanitize, sanitize_name};
use crate::wire::ClientId;

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

    pub(crate) fn paint(&self, code: &str, text: &str) -> String {
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
    /// The fingerprint of peer `id`'s key, if known.
    fn fingerprint_of(&self, _id: ClientId) -> Option<String> {
        None
    }
    /// Our own fingerprint.
    fn own_fingerprint(&self) -> Option<String> {
        None
    }
}

impl Names for Peer {
    fn name_of(&self, id: ClientId) -> Option<&str> {
        Peer::name_of(self, id)
    }
    fn display_name_of(&self, id: ClientId) -> Option<&str> {
        Peer::display_name_of(self, id)
    }
    fn fingerprint_of(&self, id: ClientId) -> Option<String> {
        Peer::fingerprint_of(self, id)
    }
    fn own_fingerprint(&self) -> Option<String> {
        Some(Peer::fingerprint(self))
    }
}

/// ` [key K7QXM-2ZC4A-HJ3NP-WTY5R]` when the fingerprint of peer `id` is known.
fn key_note(names: &dyn Names, id: ClientId) -> String {
    names
        .fingerprint_of(id)
        .map_or_else(String::new, |f| format!(" [key {f}]"))
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
        Some(n) => format!("{} ({id})", sanitize_name(n)),
        None => format!("client {id}"),
    }
}

/// `bob (3)`, or `3`: for message lines.
fn short(names: &dyn Names, id: ClientId) -> String {
    names.name_of(id).map_or_else(
        || id.to_string(),
        |n| format!("{} ({id})", sanitize_name(n)),
    )
}

/// ` "Alice L."` when peer `id` has a display name.
pub(crate) fn display(names: &dyn Names, id: ClientId) -> String {
    names
        .display_name_of(id)
        .map_or_else(String::new, |d| format!(" \"{}\"", sanitize_name(d)))
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

/// "cannot send to the server at 10.0.0.1:7070: no route to it: check ...".
fn send_failed_line(
    names: &dyn Names,
    to: std::net::SocketAddr,
    target: SendTarget,
    error: &SendError,
) -> String {
    let whom = match target {
        SendTarget::Server => format!("the server at {to}"),
        SendTarget::Peer(id) => format!("{} at {to}", who(names, id)),
    };
    format!(
        "cannot send to {whom}: {}: {}",
        sanitize(&error.to_string()),
        error.advice()
    )
}

/// One readable line (or several, for `Online`) for an event.
pub fn render_human(ev: &Event, names: &dyn Names, style: Style, now: SystemTime) -> String {
    let time = if style.timestamps {
        format!("{} ", clock(now))
    } else {
        String::new()
    };
    match ev {
        Event::Registered { id, again: false } => match names.own_fingerprint() {
            Some(f) => format!(
                "registered: you are client {id}, key fingerprint {f}. Type help for the commands."
            ),
            None => format!("registered: you are client {id}. Type help for the commands."),
        },
        Event::Registered { id, again: true } => {
            format!("registered again with the server: you are client {id}")
        }
        Event::Claimed { name } => format!("your name is {}", sanitize_name(name)),
        Event::Request { from } => {
            let name = names.name_of(*from).map_or(from.to_string(), sanitize_name);
            style.paint(
                "1",
                &format!(
                    "{} wants to connect{}{}: type accept {name} or reject {name}",
                    who(names, *from),
                    display(names, *from),
                    key_note(names, *from)
                ),
            )
        }
        Event::Connected { peer, path, addr } => {
            format!(
                "connected to {}{}{} at {addr} ({}, encrypted)",
                who(names, *peer),
                display(names, *peer),
                key_note(names, *peer),
                match path {
                    Path::Direct => "direct",
                    Path::Lan => "on the LAN",
                    Path::Punched => "punched through NATs",
                    Path::Relay => "through the TURN relay: it sees sizes and timing, not content",
                }
            )
        }
        Event::PathChanged { peer, path, addr } => format!(
            "{} is now reached {} at {addr} (was through the relay)",
            who(names, *peer),
            match path {
                Path::Relay => "through the relay",
                Path::Lan => "on the LAN",
                Path::Direct | Path::Punched => "directly",
            }
        ),
        Event::RelayReady { server, relayed } => format!(
            "relay ready: {relayed} on the TURN server {server} (used only for peers that cannot be reached directly)"
        ),
        Event::RelayFailed { server, reason } => format!(
            "no relay: {}; peers behind NATs that change ports cannot be reached (the TURN server was {server})",
            sanitize(reason)
        ),
        Event::RelayLost { server, reason } => style.paint(
            "1;33",
            &format!(
                "lost the relay (TURN server {server}): {}; sessions through it end",
                sanitize(reason)
            ),
        ),
        Event::NoPath { peer } => format!(
            "no direct path to {}: both behind NATs that change ports (nothing got through either way); gave up asking",
            who(names, *peer)
        ),
        Event::Rejected { peer } => format!("{} rejected the connection", who(names, *peer)),
        Event::KeyChanged {
            peer,
            name,
            fingerprint,
            pinned,
        } => {
            let name = sanitize_name(name);
            style.paint(
                "1;31",
                &format!(
                    "WARNING: the server gives {name} (client {peer}) the key {fingerprint}, but {name} had the key {pinned}. Someone may be pretending to be {name}: refused. If {name} really has a new key (compare fingerprints with them another way), type trust {name}"
                ),
            )
        }
        Event::Inactive { peer } => format!("Client {peer} Inactive"),
        Event::UnknownName { name } => format!("nobody online is named {}", sanitize_name(name)),
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
                sanitize_name(&to.to_string()),
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
                format!("{} ({peer})", sanitize_name(&to.to_string()))
            }
        ),
        Event::QueueDropped { to, count, reason } => style.paint(
            "31",
            &format!(
                "{count} message{} queued for {} NOT delivered: {}",
                if *count == 1 { "" } else { "s" },
                sanitize_name(&to.to_string()),
                sanitize(reason)
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
                    c.name.as_deref().map_or("-".into(), sanitize_name),
                    c.display_name
                        .as_deref()
                        .map_or(String::new(), sanitize_name),
                    clock(since),
                    ago(c.online_secs)
                ));
            }
            lines.join("\n")
        }
        Event::ListFailed { reason } => {
            format!("cannot list who is online: {}", sanitize(reason))
        }
        Event::Left { server_acked: true } => "left the server. Bye.".into(),
        Event::Left {
            server_acked: false,
        } => "left (the server did not confirm). Bye.".into(),
        Event::Notice { message } => style.paint("33", &format!("note: {}", sanitize(message))),
        Event::SendFailed { to, target, error } => {
            style.paint("31", &send_failed_line(names, *to, *target, error))
        }
        Event::Fatal { message } => style.paint("31", &format!("error: {}", sanitize(message))),
        Event::RequestsIgnored { count } => style.paint(
            "33",
            &format!(
                "{count} more connection request{} ignored (too many waiting for your answer; \
                 type sessions to see them)",
                plural(*count)
            ),
        ),
        Event::OffersRefused { count } => style.paint(
            "33",
            &format!(
                "{count} more file offer{} refused at once (too many waiting for your answer; \
                 type transfers to see them)",
                plural(*count)
            ),
        ),
        Event::PeerVersion {
            peer,
            addr,
            version,
        } => {
            let who = peer.map_or_else(|| addr.to_string(), |p| who(names, p));
            let ours = crate::wire::VERSION;
            let advice = if *version > ours {
                "update p2pchat to talk to them"
            } else {
                "they must update p2pchat to talk to you"
            };
            style.paint(
                "33",
                &format!("{who} uses protocol version {version}, this client {ours}: {advice}"),
            )
        }
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
        Event::Connected { peer, path, addr } => json!({
            "event": "connected", "peer": peer, "path": path.as_str(), "addr": addr.to_string()
        }),
        Event::NoPath { peer } => json!({"event": "no_path", "peer": peer}),
        Event::PathChanged { peer, path, addr } => json!({
            "event": "path_changed", "peer": peer, "path": path.as_str(), "addr": addr.to_string()
        }),
        Event::RelayReady { server, relayed } => json!({
            "event": "relay_ready", "server": server.to_string(), "relayed": relayed.to_string()
        }),
        Event::RelayFailed { server, reason } => json!({
            "event": "relay_failed", "server": server.to_string(), "reason": reason
        }),
        Event::RelayLost { server, reason } => json!({
            "event": "relay_lost", "server": server.to_string(), "reason": reason
        }),
        Event::Rejected { peer } => json!({"event": "rejected", "peer": peer}),
        Event::KeyChanged {
            peer,
            name,
            fingerprint,
            pinned,
        } => json!({
            "event": "key_changed", "peer": peer, "name": name,
            "fingerprint": fingerprint, "pinned": pinned
        }),
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
        Event::SendFailed { to, target, error } => json!({
            "event": "send_failed",
            "to": to.to_string(),
            "target": match target {
                SendTarget::Server => "server",
                SendTarget::Peer(_) => "peer",
            },
            "peer": match target {
                SendTarget::Peer(id) => Some(*id),
                SendTarget::Server => None,
            },
            "error": error.code(),
            "message": send_failed_line(names, *to, *target, error),
        }),
        Event::Fatal { message } => json!({"event": "error", "message": message, "fatal": true}),
        Event::RequestsIgnored { count } => json!({"event": "requests_ignored", "count": count}),
        Event::OffersRefused { count } => json!({"event": "offers_refused", "count": count}),
        Event::PeerVersion {
            peer,
            addr,
            version,
        } => json!({
            "event": "peer_version", "peer": peer, "addr": addr.to_string(), "version": version
        }),
        ev @ (Event::FileOffered { .. }
        | Event::FileOffer { .. }
        | Event::FileProgress { .. }
        | Event::FileReceived { .. }
        | Event::FileSent { .. }
        | Event::FileFailed { .. }) => file_json(ev),
    };
    let about = match ev {
        Event::Request { from } | Event::Message { from, .. } => Some(*from),
        Event::Connected { peer, .. }
        | Event::NoPath { peer }
        | Event::Rejected { peer }
        | Event::NoAnswer { peer }
        | Event::Sent { peer, .. }
        | Event::Delivered { peer, .. }
        | Event::Undelivered { peer, .. }
        | Event::Dequeued { peer, .. }
        | Event::Terminated { peer, .. } => Some(*peer),
        Event::PeerVersion { peer, .. } => *peer,
        _ => None,
    };
    if let (Event::Request { .. } | Event::Connected { .. }, Some(id), Some(map)) =
        (ev, about, v.as_object_mut())
    {
        if let Some(f) = names.fingerprint_of(id) {
            map.insert("fingerprint".into(), json!(f));
        }
    }
    if let (Event::Registered { .. }, Some(map)) = (ev, v.as_object_mut()) {
        if let Some(f) = names.own_fingerprint() {
            map.insert("fingerprint".into(), json!(f));
        }
    }
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

/// `"s"` unless `count` is one.
fn plural(count: u64) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

/// The JSON line for a refused command or bad input.
pub fn json_error(message: &str) -> String {
    json!({"event": "error", "message": message}).to_string()
}

/// The human line for a refused command.
pub fn human_error(err: &CommandError) -> String {
    format!("error: {}", sanitize(&err.to_string()))
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
            sanitize_name(name),
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
            sanitize_name(name),
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
            let reason = sanitize(&reason.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Target;

    fn name(n: &str) -> Target {
        Target::Name(n.into())
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
    fn ignored_requests_and_refused_offers_are_one_counted_line() {
        let ev = Event::RequestsIgnored { count: 312 };
        assert_eq!(
            human_line(&ev),
            "312 more connection requests ignored (too many waiting for your answer; \
             type sessions to see them)"
        );
        assert_eq!(
            json_line(&ev),
            r#"{"event":"requests_ignored","count":312}"#
        );
        let one = human_line(&Event::OffersRefused { count: 1 });
        assert!(
            one.starts_with("1 more file offer refused at once"),
            "{one}"
        );
        assert_eq!(
            json_line(&Event::OffersRefused { count: 1 }),
            r#"{"event":"offers_refused","count":1}"#
        );
    }

    #[test]
    fn a_peer_of_another_version_is_named_with_what_to_do() {
        struct Bob;
        impl Names for Bob {
            fn name_of(&self, _: ClientId) -> Option<&str> {
                Some("bob")
            }
            fn display_name_of(&self, _: ClientId) -> Option<&str> {
                None
            }
        }
        let addr: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let newer = Event::PeerVersion {
            peer: Some(2),
            addr,
            version: 3,
        };
        let line = render_human(&newer, &Bob, Style::default(), SystemTime::now());
        assert_eq!(
            line,
            "bob (2) uses protocol version 3, this client 2: update p2pchat to talk to them"
        );
        assert_eq!(
            render_json(&newer, &Bob),
            r#"{"event":"peer_version","peer":2,"addr":"127.0.0.1:4000","version":3,"name":"bob"}"#
        );
        let stranger = Event::PeerVersion {
            peer: None,
            addr,
            version: 0,
        };
        assert_eq!(
            human_line(&stranger),
            "127.0.0.1:4000 uses protocol version 0, this client 2: they must update p2pchat \
             to talk to you"
        );
        assert_eq!(
            json_line(&stranger),
            r#"{"event":"peer_version","peer":null,"addr":"127.0.0.1:4000","version":0}"#
        );
    }

    #[test]
    fn a_changed_key_is_a_loud_line_and_a_key_changed_event() {
        let ev = Event::KeyChanged {
            peer: 3,
            name: "bob".into(),
            fingerprint: "AAAAA-BBBBB-CCCCC-DDDDD".into(),
            pinned: "EEEEE-FFFFF-GGGGG-HHHHH".into(),
        };
        let line = human_line(&ev);
        assert!(line.starts_with("WARNING"), "{line}");
        assert!(line.contains("trust bob"), "{line}");
        assert!(
            line.contains("AAAAA-BBBBB-CCCCC-DDDDD") && line.contains("EEEEE-FFFFF-GGGGG-HHHHH")
        );
        assert_eq!(
            json_line(&ev),
            r#"{"event":"key_changed","peer":3,"name":"bob","fingerprint":"AAAAA-BBBBB-CCCCC-DDDDD","pinned":"EEEEE-FFFFF-GGGGG-HHHHH"}"#
        );
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
    fn text_the_server_sends_is_never_printed_raw() {
        let hostile = "x\u{1b}[2J\u{1b}]0;owned\u{7}\u{1b}[31m\u{202E}y";
        for ev in [
            Event::Notice {
                message: format!("the server says: {hostile}; retrying"),
            },
            Event::Fatal {
                message: format!("the server refused to register us: {hostile}"),
            },
            Event::ListFailed {
                reason: hostile.into(),
            },
        ] {
            let shown = render_human(&ev, &NoNames, Style::default(), SystemTime::now());
            assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
            assert!(
                !shown.contains('\u{202E}') && shown.contains("<U+202E>"),
                "{shown:?}"
            );
        }
    }

    #[test]
    fn names_cannot_reverse_or_hide_themselves() {
        struct Hostile;
        impl Names for Hostile {
            fn name_of(&self, _: ClientId) -> Option<&str> {
                Some("bob\u{202E}kcilc")
            }
            fn display_name_of(&self, _: ClientId) -> Option<&str> {
                Some("Bob\u{200B}\u{2066}")
            }
        }
        let shown = render_human(
            &Event::Request { from: 2 },
            &Hostile,
            Style::default(),
            SystemTime::now(),
        );
        assert!(shown.contains("bob<U+202E>kcilc (2)"), "{shown:?}");
        assert!(!shown.chars().any(crate::text::is_invisible), "{shown:?}");
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
        let connected = Event::Connected {
            peer: 2,
            path: Path::Punched,
            addr: "198.51.100.7:5000".parse().unwrap(),
        };
        let v: serde_json::Value = serde_json::from_str(&render_json(&connected, &Bob)).unwrap();
        assert_eq!(
            v,
            json!({"event": "connected", "peer": 2, "path": "punched", "addr": "198.51.100.7:5000", "name": "bob", "display_name": "Bob \u{1b}[31mB."})
        );
        let line = render_human(&connected, &Bob, Style::default(), SystemTime::now());
        assert!(line.starts_with("connected to bob (2)"), "{line}");
        assert!(line.contains("at 198.51.100.7:5000 (punched"), "{line}");
        let line = render_human(
            &Event::NoPath { peer: 2 },
            &Bob,
            Style::default(),
            SystemTime::now(),
        );
        assert!(
            line.starts_with("no direct path to bob (2): both behind NATs that change ports"),
            "{line}"
        );
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
