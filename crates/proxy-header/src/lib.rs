//! The PROXY protocol header (versions 1 and 2, as HAProxy specifies it): the few bytes a
//! load balancer writes at the start of a connection it forwards, naming the client it
//! accepted the connection from and the address that client connected to.
//!
//! # Layout
//!
//! - [`decode`]: pure and sans-IO. It borrows the bytes received so far and answers
//!   [`Decoded::NeedMore`] while they are a valid beginning of a header, [`Decoded::Done`] with
//!   the [`Header`] and its length once one is complete, and an [`Error`] as soon as the bytes
//!   can never be a valid header. It never reads past the header's end, so the caller can
//!   hand the bytes after it to the protocol that follows.
//! - [`encode`], [`encode_v1`] and [`encode_v2`]: write a header, for balancers, clients and
//!   tests; [`encode_v2`] can add TLVs and a CRC-32C TLV.
//! - [`Error`]: the one error type.
//!
//! What the decoder accepts:
//! - version 1: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` or `PROXY UNKNOWN ...\r\n`, at most
//!   [`MAX_V1_LEN`] bytes with the CRLF; ports are decimal without leading zeros.
//! - version 2: the 12-byte signature, version 2 with command `LOCAL` ([`Endpoints::Local`]) or
//!   `PROXY`; TCP over IPv4 or IPv6 ([`Endpoints::Tcp`]); `UNSPEC` and `AF_UNIX` stream
//!   ([`Endpoints::Unknown`]: the spec lets a receiver keep the real endpoints). A datagram
//!   transport (UDP, `AF_UNIX` datagram) cannot describe a stream connection and is refused
//!   ([`Error::Datagram`]), as is any family byte the spec does not define. TLVs are skipped, but
//!   they must be well formed, and a CRC-32C TLV (type `0x03`) must match.
//!
//! Left out on purpose: sockets, timeouts and the decision whom to trust; the TLVs' contents
//! (ALPN, authority, SSL, ...) are not returned.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

mod decode;
mod encode;
mod error;
#[doc(hidden)]
pub mod fuzzing;

use std::net::SocketAddr;

pub use decode::decode;
pub use encode::{Tlv, encode, encode_v1, encode_v2};
pub use error::Error;

/// The longest version 1 header, CRLF included (the spec's 107 bytes).
pub const MAX_V1_LEN: usize = 107;

/// The version 2 signature, the header's first 12 bytes.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The fixed part of a version 2 header: signature, version and command, family and
/// transport, and the length of the rest.
pub const V2_FIXED_LEN: usize = 16;

/// The longest version 2 header: the fixed part and a 16-bit length.
pub const MAX_V2_LEN: usize = V2_FIXED_LEN + u16::MAX as usize;

/// The outcome of [`decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<T> {
    /// The input is a valid beginning of a header; at least this many more bytes are needed.
    NeedMore(usize),
    /// A complete value and the number of input bytes it used.
    Done(T, usize),
}

/// A protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text format.
    V1,
    /// The binary format.
    V2,
}

/// The versions a receiver accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// Only the text format.
    V1,
    /// Only the binary format.
    V2,
    /// Either; the first byte tells which.
    Any,
}

impl Versions {
    /// Whether `version` is one of these.
    #[must_use]
    pub fn accepts(self, version: Version) -> bool {
        matches!(
            (self, version),
            (Self::Any, _) | (Self::V1, Version::V1) | (Self::V2, Version::V2)
        )
    }
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Which format it came in.
    pub version: Version,
    /// What it says about the connection.
    pub endpoints: Endpoints,
}

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// Version 2 `LOCAL`: the balancer's own connection (a health check, say). Keep the real
    /// endpoints.
    Local,
    /// A forwarded connection whose addresses the header does not give in a form this crate
    /// passes on (version 1 `UNKNOWN`, version 2 `UNSPEC` or `AF_UNIX`). Keep the real
    /// endpoints.
    Unknown,
    /// A forwarded TCP connection: `source` is the client, `destination` the address it
    /// connected to. Both have the same family.
    Tcp {
        /// The client's address and port.
        source: SocketAddr,
        /// The address and port the client connected to.
        destination: SocketAddr,
    },
}

impl Header {
    /// The client's address, if the header names one.
    #[must_use]
    pub fn source(&self) -> Option<SocketAddr> {
        match self.endpoints {
            Endpoints::Tcp { source, .. } => Some(source),
            Endpoints::Local | Endpoints::Unknown => None,
        }
    }
}
