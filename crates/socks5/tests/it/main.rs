//! Integration tests: a real server on 127.0.0.1:0 (and ::1) driven by raw bytes and our
//! client, Rust peers only (curl and PySocks run in `cargo xtask e2e`). Nothing leaves the
//! machine: names resolve through a static resolver.

mod auth;
mod bind;
mod bypass;
mod chain;
mod connect;
mod embed;
mod eyeballs;
mod handshake;
mod harness;
mod modules;
mod replies;
mod socks4;
mod stress;
mod udp;
