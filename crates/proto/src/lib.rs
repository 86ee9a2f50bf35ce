//! The CRC frame protocol of `docs/PROTOCOL.md`: a 12-byte big-endian header
//! (`version`, `body_size`, `crc_size`), a payload and a CRC trailer, plus the
//! acknowledgement frame a listener sends back.
//!
//! Modules:
//! - [`header`]: the header, its checks in the order the protocol fixes, and
//!   the [`Limits`] a receiver applies;
//! - [`crc`]: the checksums of each version and size, with the version 1
//!   "CRC over the hex text" computed without building the hex string;
//! - [`frame`]: whole frames, pure [`decode_frame`] and [`encode_frame`];
//! - [`ack`]: the acknowledgement frame and its [`AckStatus`];
//! - [`session`]: the optional first frame that names a client's stream, so
//!   a frame sent again on a new connection keeps its identity;
//! - [`codec`]: a `tokio_util::codec` adapter over the pure functions;
//! - [`pairs`]: the `key=value;` values of the `nats` handler's compact
//!   message headers, written and read.
//!
//! Left out on purpose: sockets, files, configuration. Decoders are sans-IO:
//! they borrow a byte slice, never consume it, and say how many bytes they
//! used; they never allocate for a body that has not arrived.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

pub mod ack;
pub mod codec;
pub mod crc;
mod error;
pub mod frame;
pub mod header;
pub mod pairs;
pub mod session;

pub use ack::{ACK_FRAME_LEN, Ack, AckStatus, decode_ack, encode_ack};
pub use codec::{AckCodec, CodecError, FrameCodec, Outgoing};
pub use crc::{CrcSize, checksum};
pub use error::{AckError, HeaderError};
pub use frame::{Frame, FrameRef, decode_frame, encode_frame};
pub use header::{DEFAULT_MAX_BODY_SIZE, HEADER_LEN, Header, Limits, Version, decode_header};
pub use session::{SESSION_FRAME_LEN, Session, SessionError, decode_session, encode_session};

/// The outcome of a pure decoder that borrows its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<T> {
    /// The input is a valid prefix; at least this many more bytes are needed.
    NeedMore(usize),
    /// A complete value and the number of input bytes it used.
    Done(T, usize),
}
