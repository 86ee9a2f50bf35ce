//! The properties the `cargo fuzz` targets of `fuzz/` check, one function per
//! target, kept here so that the stable test `tests/corpus.rs` replays every
//! committed corpus file through exactly the code the fuzzer ran: a crash
//! found once stays fixed.
//!
//! Every function takes the fuzzer's bytes, runs a parser that sees untrusted
//! input and panics when a property fails (that is how libFuzzer learns of a
//! failure). Modules: [`prefix`] (the "a prefix decides no differently"
//! property shared by every pure decoder), [`proto`] (frame header, frame,
//! ack, session frame, the `tokio_util` codecs, the compact NATS headers' pairs), [`socks5`] (greeting, RFC 1929 request,
//! request, UDP header, and the replies a client parses), [`socks4`] (the
//! SOCKS4/4a request and reply), [`config`]
//! (`server`'s config loader) and [`proxy_header()`] (the PROXY protocol header).
//!
//! Left out on purpose: anything with I/O. The decoders are pure; the config
//! loader reads a `users_file`, which [`config`] keeps away from special files.

pub mod config;
pub mod prefix;
pub mod proto;
pub mod socks4;
pub mod socks5;

/// A fuzz target's check: panics when a property fails.
pub type Check = fn(&[u8]);

/// Every fuzz target by name (the file name in `fuzz/fuzz_targets/` and the
/// folder in `fuzz/corpus/`) with its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("frame_header", proto::frame_header),
    ("frame", proto::frame),
    ("frame_codec", proto::frame_codec),
    ("ack", proto::ack),
    ("session", proto::session),
    ("header_pairs", proto::header_pairs),
    ("socks5_greeting", socks5::greeting),
    ("socks5_password_request", socks5::password_request),
    ("socks5_request", socks5::request),
    ("socks5_udp_header", socks5::udp_header),
    ("socks5_client_replies", socks5::client_replies),
    ("socks4_request", socks4::request),
    ("config", config::parse),
    ("proxy_header", proxy_header),
];

/// The PROXY protocol header (v1 text, v2 binary): the checks live beside the parser, in
/// `proxy_header::fuzzing`.
pub fn proxy_header(data: &[u8]) {
    ::proxy_header::fuzzing::check(data);
}
