//! Runs the built `client` binary against small in-test peers on loopback: a
//! frame server that answers acks as each test scripts, a raw byte recorder,
//! and a SOCKS5 proxy; and reads files in the `file` sink's format.

mod bench;
mod modules;
mod read;
mod resend;
mod send;
mod socks;
mod support;
