//! The session frame (docs/PROTOCOL.md, "Sessions and resending"): an
//! optional first frame on a connection that names the client's stream and
//! the number of the frame that follows it, so that a frame sent again on a
//! new connection keeps its identity (`stream id`, `seq`).
//!
//! ```text
//! offset  size  field
//! 0       4     version     u32 = 3
//! 4       4     body_size   u32 = 28
//! 8       4     crc_size    u32 = 4
//! 12      16    stream_id   chosen by the client, the same on every connection of one stream
//! 28      8     first_seq   u64, the seq of the first data frame after this one
//! 36      4     crc         CRC-32C of the 24 bytes at offsets 12..36
//! ```
//!
//! A session frame takes no sequence number and gets no ack. A server that
//! does not know it answers status 2 (unsupported version) and closes, so a
//! client learns at once that it cannot rely on resends being recognised.

use bytes::{Buf, BufMut};

use crate::{CrcSize, Decoded, Version, checksum};

/// The `version` word that marks a session frame.
pub const SESSION_VERSION: u32 = 3;

/// Length of a session frame on the wire.
pub const SESSION_FRAME_LEN: usize = 40;

const PAYLOAD_LEN: usize = 24;

/// What a session frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Session {
    /// The client's stream: the same on every connection that carries frames
    /// of one logical stream, different between streams (a random 128-bit
    /// value is the intended choice).
    pub stream_id: [u8; 16],
    /// The sequence number the first data frame after the session frame gets;
    /// later frames count up from it.
    pub first_seq: u64,
}

/// A session frame that cannot be trusted; the receiver closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The sizes are not those of a session frame.
    #[error(
        "malformed session frame: body_size {body_size} and crc_size {crc_size}, expected 28 and 4"
    )]
    Shape {
        /// The announced body size.
        body_size: u32,
        /// The announced CRC size.
        crc_size: u32,
    },
    /// The trailer does not match the payload.
    #[error("session frame crc mismatch")]
    Crc,
}

/// Whether `buf` starts with a session frame's version word. Needs 4 bytes;
/// fewer give `None`.
#[must_use]
pub fn starts_session(buf: &[u8]) -> Option<bool> {
    buf.first_chunk::<4>()
        .map(|word| u32::from_be_bytes(*word) == SESSION_VERSION)
}

/// Appends the session frame for `session` ([`SESSION_FRAME_LEN`] bytes).
pub fn encode_session(session: &Session, dst: &mut impl BufMut) {
    let payload = payload(session);
    dst.put_u32(SESSION_VERSION);
    dst.put_u32((PAYLOAD_LEN + 4) as u32);
    dst.put_u32(4);
    dst.put_slice(&payload);
    dst.put_u32(checksum(Version::V2, CrcSize::Crc32, &payload));
}

fn payload(session: &Session) -> [u8; PAYLOAD_LEN] {
    let mut payload = [0u8; PAYLOAD_LEN];
    let mut out = payload.as_mut_slice();
    out.put_slice(&session.stream_id);
    out.put_u64(session.first_seq);
    payload
}

/// Decodes a session frame from the front of `buf`, whose first word the
/// caller has seen to be [`SESSION_VERSION`] (see [`starts_session`]).
///
/// # Errors
///
/// A [`SessionError`] when the sizes or the CRC are wrong. The sizes are
/// judged from the 12-byte header alone, before the rest arrives.
pub fn decode_session(buf: &[u8]) -> Result<Decoded<Session>, SessionError> {
    let Some(head) = buf.get(4..12) else {
        return Ok(Decoded::NeedMore(12 - buf.len()));
    };
    let mut head = head;
    let (body_size, crc_size) = (head.get_u32(), head.get_u32());
    if body_size as usize != PAYLOAD_LEN + 4 || crc_size != 4 {
        return Err(SessionError::Shape {
            body_size,
            crc_size,
        });
    }
    let Some(frame) = buf.first_chunk::<SESSION_FRAME_LEN>() else {
        return Ok(Decoded::NeedMore(SESSION_FRAME_LEN - buf.len()));
    };
    let (_, rest) = frame.split_at(12);
    let (body, mut trailer) = rest.split_at(PAYLOAD_LEN);
    if checksum(Version::V2, CrcSize::Crc32, body) != trailer.get_u32() {
        return Err(SessionError::Crc);
    }
    let (id, mut seq) = body.split_at(16);
    let mut stream_id = [0u8; 16];
    stream_id.copy_from_slice(id);
    Ok(Decoded::Done(
        Session {
            stream_id,
            first_seq: seq.get_u64(),
        },
        SESSION_FRAME_LEN,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, decode_header};

    fn sample() -> Session {
        Session {
            stream_id: *b"0123456789abcdef",
            first_seq: 0x0102_0304_0506_0708,
        }
    }

    #[test]
    fn round_trips_and_says_how_long_it_is() {
        let mut buf = Vec::new();
        encode_session(&sample(), &mut buf);
        assert_eq!(buf.len(), SESSION_FRAME_LEN);
        assert_eq!(starts_session(&buf), Some(true));
        buf.extend_from_slice(b"next frame");
        assert_eq!(
            decode_session(&buf),
            Ok(Decoded::Done(sample(), SESSION_FRAME_LEN))
        );
    }

    #[test]
    fn asks_for_exactly_the_missing_bytes() {
        let mut buf = Vec::new();
        encode_session(&sample(), &mut buf);
        for cut in 0..SESSION_FRAME_LEN {
            let want = if cut < 12 {
                12 - cut
            } else {
                SESSION_FRAME_LEN - cut
            };
            assert_eq!(
                decode_session(buf.get(..cut).unwrap()),
                Ok(Decoded::NeedMore(want)),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn refuses_other_sizes_from_the_header_alone() {
        for (body, crc) in [(27u32, 4u32), (29, 4), (28, 2), (28, 0), (u32::MAX, 4)] {
            let mut buf = Vec::new();
            buf.put_u32(SESSION_VERSION);
            buf.put_u32(body);
            buf.put_u32(crc);
            assert_eq!(
                decode_session(&buf),
                Err(SessionError::Shape {
                    body_size: body,
                    crc_size: crc
                })
            );
        }
    }

    #[test]
    fn refuses_any_flipped_bit() {
        let mut good = Vec::new();
        encode_session(&sample(), &mut good);
        for byte in 12..SESSION_FRAME_LEN {
            for bit in 0..8 {
                let mut bad = good.clone();
                *bad.get_mut(byte).unwrap() ^= 1 << bit;
                assert_eq!(decode_session(&bad), Err(SessionError::Crc), "{byte}.{bit}");
            }
        }
    }

    #[test]
    fn a_data_frame_decoder_refuses_it_as_an_unknown_version() {
        let mut buf = Vec::new();
        encode_session(&sample(), &mut buf);
        assert_eq!(starts_session(b"\0\0\0\x01"), Some(false));
        assert_eq!(starts_session(b"\0\0\0"), None);
        let err = decode_header(&buf, &Limits::default()).unwrap_err();
        assert_eq!(u8::from(err.ack_status()), 2);
    }
}
