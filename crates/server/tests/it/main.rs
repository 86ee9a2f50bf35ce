//! Integration tests of the `server` binary and library over real sockets on
//! 127.0.0.1, as one test binary with a module per area.
#![allow(
    unreachable_pub,
    reason = "test helpers are shared between the modules of one test binary"
)]

mod access_log;
mod admin;
mod common;
mod config;
mod crash;
mod crc_tcp;
mod doors;
mod file_sink;
mod http;
mod login_log;
mod modules;
mod nats;
mod per_ip;
mod process;
mod proxy_protocol;
mod reload;
mod socks5;
