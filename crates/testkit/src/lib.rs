//! Test support for the netkit workspace (not published).
//!
//! The crates' integration tests and `cargo xtask` each needed the same few
//! helpers; they live here once:
//!
//! - [`ChildGuard`]: a child process killed (and reaped) when the guard drops,
//!   so a failing test never leaves a server running;
//! - [`wait_exit`] and [`wait_until`]: waits on a real condition, always
//!   bounded by a timeout, and `within` (feature `tokio`): an await bounded
//!   by a timeout;
//! - [`stderr_lines`] and [`wait_listening`]: the server binary's log lines,
//!   read on a thread, and its JSON `listening` event;
//! - [`free_loopback_port`]: a loopback address nothing listens on;
//! - [`SplitMix64`]: a small seeded generator, so sizes, contents and kill
//!   points can be recomputed from the seed;
//! - [`ModuleGraph`]: which top-level modules of a crate name which, and a
//!   cycle search, so each crate can test that its modules form no cycle.

mod child;
mod lines;
mod modgraph;
mod rng;
mod wait;

pub use child::ChildGuard;
pub use lines::{stderr_lines, wait_listening};
pub use modgraph::{ModuleGraph, assert_acyclic};
pub use rng::SplitMix64;
#[cfg(feature = "tokio")]
pub use wait::within;
pub use wait::{free_loopback_port, wait_exit, wait_until};
