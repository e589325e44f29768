//! The application around the protocol state machines: what people and scripts type and
//! see, and what the client keeps on disk. Both programs' presentation lives here (the
//! client's event lines and the server's table), so that every line a person reads is made
//! in one place; the mio loops in [`crate::driver`] only move bytes and time.
//!
//! - [`command`]: command lines as typed, and the help text.
//! - [`render`]: events as readable lines or JSON objects.
//! - [`table`]: the rendezvous server's table and change lines.
//! - [`terminal`]: output above a line editor's prompt, or plain stdout; the stdin readers.
//! - [`client`]: the [`App`](client::App): carries out commands on the
//!   [`Peer`](crate::peer::Peer) and fans its events out to the state, history and screen.
//! - [`profile`]: the state between runs, glued to the peer's events.
//! - [`store`]: the state directory's files (identity, outbox, history), locked and atomic.
//! - [`journal`]: the message history kept up to date from the peer's events.
//! - [`downloads`]: the transfers' files on disk.
//! - [`candidates`]: the client's own (LAN) addresses, told to the server for hole punching.

pub mod candidates;
pub mod client;
pub mod command;
pub mod downloads;
pub mod journal;
pub mod profile;
pub mod render;
pub mod store;
pub mod table;
pub mod terminal;
