//! The client application around the [`Peer`](crate::peer::Peer) state machine: what a
//! person or a script types and sees, and what the client keeps on disk.

pub mod cli;
pub mod downloads;
pub mod journal;
pub mod profile;
pub mod store;
