//! p2pchat: a peer-to-peer terminal chat over UDP, with a rendezvous (lookup) server.
//!
//! # Layout
//!
//! The protocol core (no sockets, no clock, no terminal, no disk; it could be a crate of
//! its own):
//!
//! - [`wire`]: the datagrams, one serde enum encoded with MessagePack behind a two-byte
//!   header (magic byte and protocol version), and [`wire::Transmit`], what every state
//!   machine hands its driver. Its documentation is the protocol specification.
//! - [`reliable`]: the send and receive windows of one session: numbering, acknowledgements,
//!   retransmission timeouts after RFC 6298, duplicate removal and reordering.
//! - [`congestion`]: congestion control (CUBIC or NewReno behind one `Controller` trait,
//!   with a delay signal), pacing, RFC 9002 loss detection and flow control for the chunks
//!   of file transfers ([`congestion::ChunkSender`]).
//! - [`registry`]: the rendezvous server's state machine: the table of active clients,
//!   register, lookup, names, listing, leave, expiry, and the answers bound to their
//!   requests; `registry/limits.rs` ([`registry::limits`]) holds its limits against abuse
//!   (registrations per network, fair to clients that retry; clients per network; `List`
//!   pages per client); `registry/introductions.rs` introduces two clients to each other
//!   for hole punching (see "Across NATs" in [`wire`]).
//! - [`peer`]: a client's state machine, a folder split by concern (the link to the
//!   server and the nonces of our requests to it, names, sessions, the outbox of queued
//!   messages, file transfers, hole punching, the TURN relay and the choice of paths);
//!   its `mod.rs` has a Layout of its own.
//! - [`identity`]: a client's long-term X25519 key pair, its fingerprint, and the Noise
//!   `X` proof of a key to the server (the cryptography itself is the `snow` crate's).
//! - [`text`]: pure text helpers both sides use: [`text::sanitize`] for text from the
//!   network, [`text::safe_file_name`] for names a peer sends.
//!
//! Around it:
//!
//! - [`app`]: the application: command parsing, events as readable lines or JSON, the
//!   terminal, the client [`App`](app::client::App) that executes commands and fans events
//!   out to the history, the state directory and the screen, the server's table, and the
//!   files on disk (state directory, downloads).
//! - [`driver`]: the mio event loops that own the sockets, stdin, the clock and the
//!   signals, and drive the state machines. The only caller of `Instant::now()`.
//!
//! Imports run one way: `driver` -> `app` -> core; inside the core, `peer` and `registry`
//! -> `reliable`, `text` and `wire`; `peer` -> `congestion`.
//!
//! `examples/echo_bot.rs` drives a [`peer::Peer`] with a plain blocking socket: the state
//! machines need no particular event loop.
//!
//! The state machines follow one pattern: inputs are `handle_*` methods that take the
//! current time, outputs are drained with `poll_transmit` (datagrams to send), `poll_event`
//! (things to show) and `poll_timeout` (when to call `handle_timeout` next).

pub mod app;
pub mod congestion;
pub mod driver;
pub mod identity;
pub mod peer;
pub mod registry;
pub mod reliable;
pub mod text;
pub mod wire;
