//! What a [`Peer`](super::Peer) tells its user: events, why sessions and file transfers end,
//! why commands are refused, and the small types its commands take and return.

use std::fmt;
use std::net::SocketAddr;

use crate::text::human_bytes;
use crate::wire::{self, ClientId, Listed};

/// Whom a command is for: a numeric id or a name, as the user typed it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Id(ClientId),
    Name(String),
}

impl Target {
    /// A number is an id, anything else must be a valid name (see [`wire::check_name`]).
    pub fn parse(text: &str) -> Result<Target, String> {
        let text = text.strip_prefix('@').unwrap_or(text);
        if text.starts_with(|c: char| c.is_ascii_digit()) {
            return match text.parse::<ClientId>() {
                Ok(0) => Err("client ids start at 1".into()),
                Ok(id) => Ok(Target::Id(id)),
                Err(_) => Err(format!("{text:?} is neither a client id nor a name")),
            };
        }
        wire::check_name(text).map_err(|e| e.to_string())?;
        Ok(Target::Name(text.to_string()))
    }

    /// The same key for every spelling of the same peer (names ignore ASCII case).
    pub fn key(&self) -> String {
        match self {
            Target::Id(id) => id.to_string(),
            Target::Name(name) => name.to_ascii_lowercase(),
        }
    }

    /// Whether this target is peer `id`, whose name (if any) is `name`.
    pub fn is(&self, id: ClientId, name: Option<&str>) -> bool {
        match self {
            Target::Id(i) => *i == id,
            Target::Name(n) => name.is_some_and(|m| m.eq_ignore_ascii_case(n)),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Id(id) => write!(f, "{id}"),
            Target::Name(name) => f.write_str(name),
        }
    }
}

/// What [`Peer::send_to`](super::Peer::send_to) did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sending {
    /// Sent (to be acknowledged) as these numbers.
    Sent(Vec<u64>),
    /// Queued until a session with the target is open.
    Queued,
}

/// A session as listed by [`Peer::sessions`](super::Peer::sessions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub peer: ClientId,
    /// `"looking_up"`, `"requesting"`, `"incoming"` or `"connected"`.
    pub state: &'static str,
    /// Whether `send` without a target goes here.
    pub current: bool,
    /// Messages sent and not yet acknowledged.
    pub in_flight: usize,
}

/// Which way a session's datagrams go (see [`Event::Connected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// To the address the server sees, which is the peer's own (no NAT on its side, or
    /// nothing is known of its addresses).
    Direct,
    /// To one of the peer's own (LAN) addresses, which it told the server.
    Lan,
    /// To a NAT's mapping of the peer, opened by hole punching.
    Punched,
    /// Through TURN relays: ours, to the peer's relayed address (no direct path was found;
    /// the relays see sealed datagrams only).
    Relay,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Lan => "lan",
            Path::Punched => "punched",
            Path::Relay => "relay",
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// We terminated it and the peer acknowledged.
    ByUs,
    /// The peer terminated it (or told us it no longer knows it).
    ByPeer,
    /// A request was withdrawn before it was answered (by either side, or by `leave`).
    Cancelled,
    /// We terminated it and the peer never acknowledged.
    Unanswered,
    /// Nothing was heard from the peer for the session timeout.
    PeerSilent,
    /// The peer started a new session, so the old one is over.
    Replaced,
    /// A message of ours got no acknowledgement after every try: the peer is unreachable,
    /// and the messages after it could never be shown in order, so the session was ended.
    Undeliverable,
    /// The session went through our TURN relay, and the relay went away (see
    /// [`Event::RelayLost`]).
    RelayLost,
}

impl EndReason {
    /// A short stable name, used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ByUs => "by_us",
            EndReason::ByPeer => "by_peer",
            EndReason::Cancelled => "cancelled",
            EndReason::Unanswered => "unanswered",
            EndReason::PeerSilent => "peer_silent",
            EndReason::Replaced => "replaced",
            EndReason::Undeliverable => "undeliverable",
            EndReason::RelayLost => "relay_lost",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndReason::ByUs => "you ended it",
            EndReason::ByPeer => "the peer ended it",
            EndReason::Cancelled => "the request was withdrawn",
            EndReason::Unanswered => "you ended it; the peer did not confirm",
            EndReason::PeerSilent => "the peer stopped answering",
            EndReason::Replaced => "the peer started a new session",
            EndReason::Undeliverable => "a message could not be delivered, so it was ended",
            EndReason::RelayLost => "the relay it went through went away",
        })
    }
}

/// Something to show the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Registered with the server (again, after a server restart, with `again`).
    Registered { id: ClientId, again: bool },
    /// Peer `from` asks to connect; answer with `accept` or `reject`.
    Request { from: ClientId },
    /// A session with `peer` is open, at `addr`, over `path`.
    Connected {
        peer: ClientId,
        path: Path,
        addr: SocketAddr,
    },
    /// Our request to `peer` ends: nothing got through between us although the server
    /// introduced us, and both of us are behind NATs (so at least one changes ports, or
    /// drops what it was not expecting); a relay would be needed.
    NoPath { peer: ClientId },
    /// Our allocation on the TURN server `server` is made: peers that cannot be reached
    /// directly are reached through `relayed`.
    RelayReady {
        server: SocketAddr,
        relayed: SocketAddr,
    },
    /// No allocation could be made on the TURN server `server`: peers that cannot be
    /// reached directly cannot be reached.
    RelayFailed { server: SocketAddr, reason: String },
    /// The TURN server `server` stopped answering, or our allocation ended: the sessions
    /// through it end (with [`EndReason::RelayLost`]).
    RelayLost { server: SocketAddr, reason: String },
    /// The session with `peer` moved to another path (from the relay to a direct one),
    /// now at `addr`.
    PathChanged {
        peer: ClientId,
        path: Path,
        addr: SocketAddr,
    },
    /// `peer` rejected our request.
    Rejected { peer: ClientId },
    /// The server has no client `peer` ("Client 3 Inactive").
    Inactive { peer: ClientId },
    /// `peer` never answered our request.
    NoAnswer { peer: ClientId },
    /// The server never answered the lookup of `peer`.
    LookupFailed { peer: ClientId },
    /// Our message `seq` to `peer` was queued for sending.
    Sent {
        peer: ClientId,
        seq: u64,
        text: String,
    },
    /// Message `seq` from `from`, shown once, in order.
    Message {
        from: ClientId,
        seq: u64,
        text: String,
    },
    /// `peer` has shown our message `seq` (and every one before it).
    Delivered { peer: ClientId, seq: u64 },
    /// Our message `seq` to `peer` was never confirmed shown there (its retries ran out, or
    /// the session ended first). It may or may not have been shown.
    Undelivered { peer: ClientId, seq: u64 },
    /// The session with `peer` is over.
    Terminated { peer: ClientId, reason: EndReason },
    /// We left the server (`server_acked` false: it never answered, we left anyway).
    Left { server_acked: bool },
    /// Something the user should know that needs no answer.
    Notice { message: String },
    /// The system refused to send a datagram to `to` (for `target`): see
    /// [`SendError::advice`](super::SendError::advice).
    SendFailed {
        to: std::net::SocketAddr,
        target: super::SendTarget,
        error: super::SendError,
    },
    /// The client cannot go on (no server, id taken, server full, other protocol version).
    Fatal { message: String },
    /// The server gives for client `peer`, named `name`, a key (`fingerprint`) that is not
    /// the one pinned for that name (`pinned`): the peer is refused (no request is shown,
    /// none is sent) until the user types `trust <name>`.
    KeyChanged {
        peer: ClientId,
        name: String,
        fingerprint: String,
        pinned: String,
    },
    /// The server gave us our name.
    Claimed { name: String },
    /// The server knows no client named `name` (the answer to `connect name`).
    UnknownName { name: String },
    /// `text` waits for `to`, which is not connected; it goes once a session with `to` is
    /// open (the client keeps asking while `to` is offline or silent).
    Queued { to: Target, text: String },
    /// The messages queued for `to` went to `peer` as numbers `seqs` (a `Sent` event
    /// follows for each).
    Dequeued {
        to: Target,
        peer: ClientId,
        seqs: Vec<u64>,
    },
    /// The `count` messages queued for `to` were dropped: `reason`.
    QueueDropped {
        to: Target,
        count: usize,
        reason: String,
    },
    /// Who is online, from the server: `clients` in id order, `total` counted by the server.
    Online { clients: Vec<Listed>, total: u32 },
    /// The server did not list who is online.
    ListFailed { reason: String },
    // ---- file transfer (files.rs); `n` is the transfer's local number ----
    /// Our offer `n` of a file went to `peer`.
    FileOffered {
        peer: ClientId,
        n: u64,
        name: String,
        size: u64,
    },
    /// `from` offers a file; answer with `getfile n` or `refuse n`. `name` is as offered
    /// (it is cleaned before anything is written).
    FileOffer {
        from: ClientId,
        n: u64,
        name: String,
        size: u64,
        sha256: String,
    },
    /// Transfer `n` has moved `bytes` of `size` (at most a few times a second).
    FileProgress {
        peer: ClientId,
        n: u64,
        outgoing: bool,
        bytes: u64,
        size: u64,
        /// Bytes per second since the transfer started.
        rate: u64,
        eta_secs: Option<u64>,
    },
    /// File `n` from `from` arrived whole, its SHA-256 matched, and it is at `path`.
    FileReceived {
        from: ClientId,
        n: u64,
        path: std::path::PathBuf,
        size: u64,
        sha256: String,
    },
    /// `peer` has received our file `n` and confirmed its SHA-256.
    FileSent { peer: ClientId, n: u64, size: u64 },
    /// Transfer `n` ended without the file: why. Any partial file was removed.
    FileFailed {
        peer: ClientId,
        n: u64,
        reason: TransferFailure,
    },
    // ---- floods and strangers ----
    /// `count` more connection requests were ignored (no answer, no line of their own):
    /// too many were waiting for an answer, or too many from one source. Shown at most
    /// once per summary interval.
    RequestsIgnored { count: u64 },
    /// `count` more file offers were refused at once: too many were waiting for an answer
    /// from one peer, or in all. Shown at most once per summary interval.
    OffersRefused { count: u64 },
    /// The peer at `addr` (`peer`, when a session or request of ours is at that address)
    /// speaks protocol `version`, not ours: nothing it sends can be understood. Shown once
    /// per address.
    PeerVersion {
        peer: Option<ClientId>,
        addr: std::net::SocketAddr,
        version: u8,
    },
}

/// Why a command was refused. The `Display` text says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    NotRegistered,
    Leaving,
    OwnId,
    AlreadyConnected(ClientId),
    AlreadyConnecting(ClientId),
    NotConnected,
    NotConnectedTo(ClientId),
    NoRequest,
    NoRequestFrom(ClientId),
    NoSessionWith(ClientId),
    EmptyMessage,
    /// No session with a peer of that name.
    NoSessionNamed(String),
    /// `broadcast` with nobody connected.
    NobodyConnected,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::NotRegistered => {
                write!(f, "not registered with the server yet; wait for your id")
            }
            CommandError::Leaving => write!(f, "leaving; no new commands are taken"),
            CommandError::OwnId => write!(f, "that is your own id; connect to another client"),
            CommandError::AlreadyConnected(p) => write!(f, "already connected to {p}"),
            CommandError::AlreadyConnecting(p) => write!(
                f,
                "already waiting for {p} to answer; type terminate {p} to give up"
            ),
            CommandError::NotConnected => {
                write!(f, "not connected to anyone; type connect <id> first")
            }
            CommandError::NotConnectedTo(p) => {
                write!(f, "not connected to {p}; type connect {p} first")
            }
            CommandError::NoRequest => write!(f, "no connection request is waiting"),
            CommandError::NoRequestFrom(p) => write!(f, "no connection request from {p}"),
            CommandError::NoSessionWith(p) => {
                write!(f, "no session or request with {p} to terminate")
            }
            CommandError::EmptyMessage => write!(f, "nothing to send; type send <message>"),
            CommandError::NoSessionNamed(n) => {
                write!(f, "no session or request with {n}; type connect {n} first")
            }
            CommandError::NobodyConnected => {
                write!(f, "not connected to anyone; nothing was sent")
            }
        }
    }
}

impl std::error::Error for CommandError {}

/// Counters of what the peer dropped or repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Datagrams that could not be decoded.
    pub undecodable: u64,
    /// Decodable datagrams that matched nothing (strangers, stale sessions, unasked answers).
    pub ignored: u64,
    /// `Terminate`s sent for a session we do not know (resets).
    pub resets: u64,
    /// Chat messages received twice and not shown again.
    pub duplicates: u64,
    /// Chat messages resent.
    pub retransmissions: u64,
    /// Of those, resent before their timeout because a message sent after them had
    /// arrived (early retransmission).
    pub early_retransmissions: u64,
    /// Answers not sent to an address that has not proved it receives, because they would
    /// have been more bytes than it sent (see `wire`, "Amplification").
    pub withheld: u64,
    /// Messages past the first [`wire::MAX_PEER_MESSAGES`] of a datagram, dropped unread.
    pub excess: u64,
    /// Connection requests ignored for being past the bounds.
    pub requests_ignored: u64,
    /// File offers refused for being past the bounds.
    pub offers_refused: u64,
    /// Peer datagrams refused by the cryptography: a handshake or `Sealed` that does not
    /// open, a replayed one, one for a session we hold no keys for, a session message in
    /// clear.
    pub refused: u64,
    /// Messages not sent because their session had no keys (never sent in clear).
    pub unsealed: u64,
    /// Datagrams of another protocol version from addresses other than the server's.
    pub other_version: u64,
}

/// Why a transfer failed (the `reason` of `file_failed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferFailure {
    /// The receiver refused the offer.
    Refused,
    /// Cancelled by us (`by_peer` false) or by the peer.
    Cancelled { by_peer: bool },
    /// The file arrived whole but its SHA-256 differs from the offer's.
    ChecksumMismatch,
    /// Reading or writing the file failed (here, or at the peer when `detail` is empty).
    DiskError(String),
    /// Nobody answered the offer in time.
    Expired,
    /// A chunk got no acknowledgement after every try.
    Undeliverable,
    /// The session ended.
    SessionEnded(EndReason),
    /// The peer does not know the transfer (any more).
    Unknown,
    /// The offered file name could not be made safe (a path, `..`): refused at once.
    BadName(String),
    /// We accepted, but no chunk came after every `FileGet`.
    NotStarted,
    /// No chunk came for the stall timeout, though the session lives.
    Stalled,
    /// The receiver does not have the free space the file needs (`needed` bytes; `free`
    /// when it is us, `None` when the peer said so): refused before anything was written.
    NoSpace { needed: u64, free: Option<u64> },
}

impl TransferFailure {
    /// A short stable name, used in JSON output.
    pub fn as_str(&self) -> &'static str {
        match self {
            TransferFailure::Refused => "refused",
            TransferFailure::Cancelled { by_peer: false } => "cancelled",
            TransferFailure::Cancelled { by_peer: true } => "cancelled_by_peer",
            TransferFailure::ChecksumMismatch => "checksum_mismatch",
            TransferFailure::DiskError(_) => "disk_error",
            TransferFailure::Expired => "expired",
            TransferFailure::Undeliverable => "undeliverable",
            TransferFailure::SessionEnded(_) => "session_ended",
            TransferFailure::Unknown => "unknown_transfer",
            TransferFailure::BadName(_) => "bad_name",
            TransferFailure::NotStarted => "not_started",
            TransferFailure::Stalled => "stalled",
            TransferFailure::NoSpace { .. } => "no_space",
        }
    }
}

impl fmt::Display for TransferFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferFailure::Refused => write!(f, "the peer refused it"),
            TransferFailure::Cancelled { by_peer: false } => write!(f, "you cancelled it"),
            TransferFailure::Cancelled { by_peer: true } => write!(f, "the peer cancelled it"),
            TransferFailure::ChecksumMismatch => {
                write!(f, "the SHA-256 of what arrived does not match the offer")
            }
            TransferFailure::DiskError(d) if d.is_empty() => {
                write!(f, "the peer could not read or write the file")
            }
            TransferFailure::DiskError(d) => write!(f, "disk error: {d}"),
            TransferFailure::Expired => write!(f, "the offer was not answered in time"),
            TransferFailure::Undeliverable => write!(f, "the peer stopped acknowledging chunks"),
            TransferFailure::SessionEnded(r) => write!(f, "the session ended ({r})"),
            TransferFailure::Unknown => write!(f, "the peer does not know this transfer"),
            TransferFailure::BadName(why) => write!(f, "refused at once: {why}"),
            TransferFailure::NotStarted => write!(f, "the peer never started sending"),
            TransferFailure::Stalled => write!(f, "the peer stopped sending"),
            TransferFailure::NoSpace {
                needed,
                free: Some(free),
            } => write!(
                f,
                "not enough free space in the downloads directory: the file needs {}, {} are free",
                human_bytes(*needed),
                human_bytes(*free)
            ),
            TransferFailure::NoSpace { needed, free: None } => write!(
                f,
                "the peer does not have the {} of free space the file needs",
                human_bytes(*needed)
            ),
        }
    }
}

/// Why a file command was refused. The `Display` text says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileError {
    /// The session part of the command failed (not registered, not connected...).
    Session(CommandError),
    /// No transfer has that number.
    NoTransfer(u64),
    /// No number given, and not exactly one transfer fits.
    Ambiguous { what: &'static str, count: usize },
    /// Transfer `n` is not an offer waiting for our answer.
    NotAnOffer(u64),
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Session(e) => e.fmt(f),
            FileError::NoTransfer(n) => {
                write!(f, "no transfer {n}; type transfers for the list")
            }
            FileError::Ambiguous { what, count: 0 } => write!(f, "no {what}"),
            FileError::Ambiguous { what, count } => write!(
                f,
                "{count} {what}s: give the number (type transfers for the list)"
            ),
            FileError::NotAnOffer(n) => {
                write!(f, "transfer {n} is not an offer waiting for your answer")
            }
        }
    }
}

impl std::error::Error for FileError {}

impl From<CommandError> for FileError {
    fn from(e: CommandError) -> Self {
        FileError::Session(e)
    }
}

/// What `transfers` shows of one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferInfo {
    /// The local number (what `getfile`, `refuse` and `cancel` take).
    pub n: u64,
    pub peer: ClientId,
    /// True for a file we send.
    pub outgoing: bool,
    pub name: String,
    pub size: u64,
    /// Bytes acknowledged (outgoing) or written (incoming).
    pub done: u64,
    /// `"offered"` (waiting for the receiver), `"sending"`, `"receiving"`.
    pub state: &'static str,
}
