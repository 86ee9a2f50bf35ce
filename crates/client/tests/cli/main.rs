//! Runs the built `client` binary against small in-test peers on loopback: a
//! frame server that answers acks as each test scripts, a raw byte recorder,
//! and a SOCKS5 proxy.

mod bench;
mod send;
mod socks;
mod support;
