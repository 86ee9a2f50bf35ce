//! Acknowledgements (docs/PROTOCOL.md, "Acknowledgements").
//!
//! An ack is a version 2 frame with a CRC-32C whose 9-byte payload is:
//!
//! ```text
//! offset  size  field
//! 0       1     status   see AckStatus
//! 1       8     seq      u64: the frame's index on this connection, from 0
//! ```

use bytes::{Buf, BufMut};

use crate::{
    AckError, Decoded,
    crc::{CrcSize, checksum},
    frame::decode_frame,
    header::{HEADER_LEN, Limits, Version},
};

/// Length of an ack payload.
const ACK_PAYLOAD_LEN: usize = 9;

/// Length of a whole ack frame: header, payload and CRC-32C.
pub const ACK_FRAME_LEN: usize = HEADER_LEN + ACK_PAYLOAD_LEN + 4;

/// The status of an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckStatus {
    /// 0: the handler has finished with the frame.
    Ok,
    /// 1: the trailer did not match; the connection goes on.
    CrcMismatch,
    /// 2: unknown version; the connection closes.
    UnsupportedVersion,
    /// 3: a crc_size the version does not define or the listener refuses; closes.
    UnsupportedCrcSize,
    /// 4: body_size above the listener's limit; closes.
    TooLarge,
    /// 5: the handler failed (e.g. the disk is full); the connection goes on.
    HandlerFailed,
    /// 6: crc_size > body_size; closes.
    MalformedHeader,
}

impl AckStatus {
    /// Whether the connection closes after this status.
    #[must_use]
    pub fn closes(self) -> bool {
        !matches!(self, Self::Ok | Self::CrcMismatch | Self::HandlerFailed)
    }
}

impl From<AckStatus> for u8 {
    fn from(status: AckStatus) -> Self {
        match status {
            AckStatus::Ok => 0,
            AckStatus::CrcMismatch => 1,
            AckStatus::UnsupportedVersion => 2,
            AckStatus::UnsupportedCrcSize => 3,
            AckStatus::TooLarge => 4,
            AckStatus::HandlerFailed => 5,
            AckStatus::MalformedHeader => 6,
        }
    }
}

impl TryFrom<u8> for AckStatus {
    type Error = AckError;

    fn try_from(raw: u8) -> Result<Self, Self::Error> {
        Ok(match raw {
            0 => Self::Ok,
            1 => Self::CrcMismatch,
            2 => Self::UnsupportedVersion,
            3 => Self::UnsupportedCrcSize,
            4 => Self::TooLarge,
            5 => Self::HandlerFailed,
            6 => Self::MalformedHeader,
            other => return Err(AckError::Status(other)),
        })
    }
}

impl std::fmt::Display for AckStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::CrcMismatch => "crc mismatch",
            Self::UnsupportedVersion => "unsupported version",
            Self::UnsupportedCrcSize => "unsupported crc size",
            Self::TooLarge => "frame too large",
            Self::HandlerFailed => "handler failed",
            Self::MalformedHeader => "malformed header",
        })
    }
}

/// An acknowledgement of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// What happened to the frame.
    pub status: AckStatus,
    /// The frame's index on its connection, from 0.
    pub seq: u64,
}

/// Appends the ack frame for `ack` ([`ACK_FRAME_LEN`] bytes).
pub fn encode_ack(ack: &Ack, dst: &mut impl BufMut) {
    let mut payload = [0u8; ACK_PAYLOAD_LEN];
    let mut body = payload.as_mut_slice();
    body.put_u8(ack.status.into());
    body.put_u64(ack.seq);
    dst.put_u32(2);
    dst.put_u32((ACK_PAYLOAD_LEN + 4) as u32);
    dst.put_u32(4);
    dst.put_slice(&payload);
    dst.put_u32(checksum(Version::V2, CrcSize::Crc32, &payload));
}

/// Decodes an ack frame from the front of `buf`.
///
/// # Errors
///
/// An [`AckError`] when the bytes are not a valid ack.
pub fn decode_ack(buf: &[u8]) -> Result<Decoded<Ack>, AckError> {
    let limits = Limits {
        max_body_size: (ACK_PAYLOAD_LEN + 4) as u32,
        allow_no_crc: false,
    };
    let frame = match decode_frame(buf, &limits)? {
        Decoded::Done(frame, _) => frame,
        Decoded::NeedMore(n) => return Ok(Decoded::NeedMore(n)),
    };
    let shape_ok = frame.header.version == Version::V2
        && frame.header.crc_size == CrcSize::Crc32
        && frame.payload.len() == ACK_PAYLOAD_LEN;
    if !shape_ok {
        return Err(AckError::Shape);
    }
    if !frame.crc_ok() {
        return Err(AckError::Crc);
    }
    let mut payload = frame.payload;
    let status = AckStatus::try_from(payload.get_u8())?;
    let seq = payload.get_u64();
    Ok(Decoded::Done(Ack { status, seq }, ACK_FRAME_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VECTORS: &[(AckStatus, u64, [u8; ACK_FRAME_LEN])] = &[
        (
            AckStatus::Ok,
            0,
            [
                0, 0, 0, 2, 0, 0, 0, 0x0d, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbb, 0xe5, 0x68,
                0xa3,
            ],
        ),
        (
            AckStatus::CrcMismatch,
            7,
            [
                0, 0, 0, 2, 0, 0, 0, 0x0d, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0, 0, 0, 7, 0x9b, 0x11, 0xda,
                0x00,
            ],
        ),
    ];

    #[test]
    fn encodes_and_decodes_the_protocol_vectors() {
        for &(status, seq, bytes) in VECTORS {
            let mut out = Vec::new();
            encode_ack(&Ack { status, seq }, &mut out);
            assert_eq!(out, bytes);
            assert_eq!(
                decode_ack(&bytes),
                Ok(Decoded::Done(Ack { status, seq }, ACK_FRAME_LEN))
            );
        }
    }

    #[test]
    fn rejects_a_frame_that_is_not_an_ack() {
        let mut frame = Vec::new();
        crate::encode_frame(Version::V1, CrcSize::Crc8, b"a", &mut frame).unwrap();
        assert_eq!(decode_ack(&frame), Err(AckError::Shape));
        let mut bad = VECTORS[0].2;
        bad[24] ^= 1;
        assert_eq!(decode_ack(&bad), Err(AckError::Crc));
    }

    #[test]
    fn status_codes_round_trip() {
        for raw in 0..=6u8 {
            assert_eq!(u8::from(AckStatus::try_from(raw).unwrap()), raw);
        }
        assert_eq!(AckStatus::try_from(7), Err(AckError::Status(7)));
    }

    proptest! {
        #[test]
        fn any_ack_round_trips(status in 0..=6u8, seq in any::<u64>()) {
            let ack = Ack { status: AckStatus::try_from(status).unwrap(), seq };
            let mut out = Vec::new();
            encode_ack(&ack, &mut out);
            prop_assert_eq!(decode_ack(&out), Ok(Decoded::Done(ack, ACK_FRAME_LEN)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = decode_ack(&bytes);
        }
    }
}
