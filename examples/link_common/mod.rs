//! What the link emulator's examples (`link_emulator`, `bench_link`) share with the tests:
//! the emulator, the lab and the namespace helpers of `tests/common/`, included by path
//! (they are files, not a crate; see `tests/common/emulator.rs`). Declared here once, as
//! siblings, because `lab.rs` and `emulator.rs` reach each other and `netns.rs` through
//! `super::`.
//!
//! Each example uses its own part of it.
#![allow(dead_code)]

#[path = "../../tests/common/emulator.rs"]
pub mod emulator;
#[path = "../../tests/common/lab.rs"]
pub mod lab;
#[path = "../../tests/common/netns.rs"]
pub mod netns;
