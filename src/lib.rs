//! p2pchat: a peer-to-peer terminal chat over UDP, with a rendezvous (lookup) server.
//!
//! # Layout
//!
//! - [`wire`]: the datagrams, one serde enum encoded with MessagePack behind a two-byte
//!   header (magic byte and protocol version). Its documentation is the protocol
//!   specification.
//! - [`registry`]: the rendezvous server's state machine: the table of active clients,
//!   register, lookup, leave, expiry. No sockets, no clock: `now` is passed in.
//! - [`peer`]: a client's state machine: registration and keepalives, sessions keyed by
//!   peer id, connection requests, accept/reject, chat, terminate, leave.
//! - [`reliable`]: the send and receive windows of one session: numbering, acknowledgements,
//!   retransmission timeouts after RFC 6298, duplicate removal and reordering.
//! - [`transfer`]: file transfers between peers, both sides, as a state machine owned by
//!   the `Peer`; the file is reached through the `FileSource` and `FileSink` traits.
//! - [`downloads`]: those traits on real files: the downloads directory, safe names,
//!   temporary files renamed once the SHA-256 matches.
//! - [`cli`]: the client's user interface: command parsing, events as readable lines or
//!   JSON objects, stdin readers (a line editor on a terminal).
//! - [`driver`]: the mio event loops that own the sockets, stdin, the clock and the
//!   signals, and drive the state machines. The only caller of `Instant::now()`.
//! - [`store`]: the client's state directory: identity, offline outbox and message history
//!   as JSON files, each saved atomically, the directory locked against a second client.
//! - [`journal`]: keeps the message history up to date from a peer's events (delivery
//!   states, queued messages).
//! - [`profile`]: a client's state between runs, glued to its events: the saved identity
//!   configures the peer, queued messages come back, changes are written as they happen.
//!
//! `examples/echo_bot.rs` drives a [`peer::Peer`] with a plain blocking socket: the state
//! machines need no particular event loop.
//!
//! The state machines follow one pattern: inputs are `handle_*` methods that take the
//! current time, outputs are drained with `poll_transmit` (datagrams to send), `poll_event`
//! (things to show) and `poll_timeout` (when to call `handle_timeout` next).

pub mod client;
pub mod driver;
pub mod peer;
pub mod registry;
pub mod reliable;
pub mod text;
pub mod wire;
