//! Whole frames: header, payload and CRC trailer (docs/PROTOCOL.md, "Frame layout").

use bytes::{BufMut, Bytes};

use crate::{
    Decoded, HeaderError,
    crc::{CrcSize, checksum, put_crc, read_crc},
    header::{HEADER_LEN, Header, Limits, Version, decode_header, encode_header},
};

/// A complete frame borrowed from the receive buffer, its CRC already checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// The frame's header.
    pub header: Header,
    /// The whole frame as received: header, payload and trailer.
    pub raw: &'a [u8],
    /// The payload, without the trailer.
    pub payload: &'a [u8],
    /// The CRC the sender wrote.
    pub received_crc: u32,
    /// The CRC computed over the payload.
    pub computed_crc: u32,
}

impl FrameRef<'_> {
    /// Whether the trailer matches the payload (always true without a CRC).
    #[must_use]
    pub fn crc_ok(&self) -> bool {
        self.received_crc == self.computed_crc
    }
}

/// A complete frame that owns its bytes (the codec's item). `raw` holds the
/// whole frame as received, so a sink can store or echo it without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame's header.
    pub header: Header,
    /// The whole frame: header, payload and trailer.
    pub raw: Bytes,
    /// Whether the trailer matched the payload.
    pub crc_ok: bool,
}

impl Frame {
    /// The payload, without header and trailer.
    #[must_use]
    pub fn payload(&self) -> Bytes {
        self.raw
            .slice(HEADER_LEN..HEADER_LEN + self.header.payload_len())
    }
}

/// Decodes one frame from the front of `buf` and checks its CRC.
///
/// A CRC mismatch is not an error: it is a frame whose
/// [`FrameRef::crc_ok`] is false, and the stream goes on after it.
///
/// # Errors
///
/// A [`HeaderError`] when the header can never start a valid frame (see
/// [`decode_header`]); the stream cannot be trusted after it.
pub fn decode_frame<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<Decoded<FrameRef<'a>>, HeaderError> {
    let header = match decode_header(buf, limits)? {
        Decoded::Done(header, _) => header,
        Decoded::NeedMore(n) => return Ok(Decoded::NeedMore(n)),
    };
    let frame_len = header.frame_len();
    let Some(raw) = buf.get(..frame_len) else {
        return Ok(Decoded::NeedMore(frame_len - buf.len()));
    };
    let body = raw.get(HEADER_LEN..).unwrap_or_default();
    let (payload, trailer) = body.split_at(header.payload_len());
    let computed_crc = checksum(header.version, header.crc_size, payload);
    let received_crc = read_crc(trailer);
    Ok(Decoded::Done(
        FrameRef {
            header,
            raw,
            payload,
            received_crc,
            computed_crc,
        },
        frame_len,
    ))
}

/// Appends a frame carrying `payload` with a `crc_size` trailer.
///
/// # Errors
///
/// [`HeaderError::PayloadTooLong`] when the body would not fit in 32 bits.
pub fn encode_frame(
    version: Version,
    crc_size: CrcSize,
    payload: &[u8],
    dst: &mut impl BufMut,
) -> Result<(), HeaderError> {
    let body_size = payload
        .len()
        .checked_add(crc_size.len())
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(HeaderError::PayloadTooLong(payload.len()))?;
    encode_header(
        &Header {
            version,
            body_size,
            crc_size,
        },
        dst,
    );
    dst.put_slice(payload);
    put_crc(crc_size, checksum(version, crc_size, payload), dst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unhex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    /// Frame vectors, also in docs/PROTOCOL.md, "Test vectors" (whose tables
    /// `tests/protocol_doc.rs` checks).
    const VECTORS: &[(u32, usize, &str, &str)] = &[
        (1, 1, "a", "00000001 00000002 00000001 61 10"),
        (1, 2, "a", "00000001 00000003 00000002 61 74d6"),
        (1, 4, "a", "00000001 00000005 00000004 61 991b83b0"),
        (1, 1, "hello", "00000001 00000006 00000001 68656c6c6f 2a"),
        (
            1,
            4,
            "hello",
            "00000001 00000009 00000004 68656c6c6f 14da46fd",
        ),
        (1, 1, "", "00000001 00000001 00000001 00"),
        (
            1,
            1,
            "{\"name\": \"李满满\", \"age\": 27}",
            "00000001 00000021 00000001 7b226e616d65223a2022e69d8ee6bba1e6bba1222c2022616765223a2032377d 66",
        ),
        (2, 1, "a", "00000002 00000002 00000001 61 20"),
        (2, 2, "a", "00000002 00000003 00000002 61 e8c1"),
        (2, 4, "a", "00000002 00000005 00000004 61 c1d04330"),
        (
            2,
            4,
            "123456789",
            "00000002 0000000d 00000004 313233343536373839 e3069283",
        ),
    ];

    fn parts(version: u32, crc: usize) -> (Version, CrcSize) {
        let version = Version::try_from(version).unwrap();
        let size = CrcSize::try_from(crc as u32).unwrap();
        (version, size)
    }

    #[test]
    fn encodes_every_protocol_vector() {
        for &(version, crc, payload, frame) in VECTORS {
            let (version, size) = parts(version, crc);
            let mut out = Vec::new();
            encode_frame(version, size, payload.as_bytes(), &mut out).unwrap();
            assert_eq!(out, unhex(frame), "{version:?} crc {crc} {payload:?}");
        }
    }

    #[test]
    fn decodes_every_protocol_vector() {
        for &(version, crc, payload, frame) in VECTORS {
            let (version, size) = parts(version, crc);
            let bytes = unhex(frame);
            let Ok(Decoded::Done(frame, used)) = decode_frame(&bytes, &Limits::default()) else {
                panic!("vector {payload:?} did not decode");
            };
            assert_eq!(used, bytes.len());
            assert_eq!(frame.header.version, version);
            assert_eq!(frame.header.crc_size, size);
            assert_eq!(frame.payload, payload.as_bytes());
            assert!(
                frame.crc_ok(),
                "{payload:?}: crc {:#x} != {:#x}",
                frame.received_crc,
                frame.computed_crc
            );
        }
    }

    #[test]
    fn a_flipped_bit_is_a_crc_mismatch_not_an_error() {
        let mut bytes = unhex("00000002 00000005 00000004 61 c1d04330");
        bytes[12] ^= 0x01;
        let Ok(Decoded::Done(frame, 17)) = decode_frame(&bytes, &Limits::default()) else {
            panic!("expected a frame");
        };
        assert!(!frame.crc_ok());
    }

    #[test]
    fn a_huge_body_size_is_rejected_from_the_header_alone() {
        let bytes = unhex("00000001 ffffff00 00000001");
        assert_eq!(
            decode_frame(&bytes, &Limits::default()),
            Err(HeaderError::TooLarge {
                size: 0xffff_ff00,
                limit: 16 * 1024 * 1024
            })
        );
    }

    #[test]
    fn rejects_crc_size_larger_than_body() {
        let bytes = unhex("00000002 00000001 00000004 61");
        assert_eq!(
            decode_frame(&bytes, &Limits::default()),
            Err(HeaderError::Malformed {
                body_size: 1,
                crc_size: 4
            })
        );
    }

    fn any_frame() -> impl Strategy<Value = (Version, CrcSize, Vec<u8>)> {
        (
            prop_oneof![Just(Version::V1), Just(Version::V2)],
            prop_oneof![
                Just(CrcSize::None),
                Just(CrcSize::Crc8),
                Just(CrcSize::Crc16),
                Just(CrcSize::Crc32)
            ],
            proptest::collection::vec(any::<u8>(), 0..300),
        )
    }

    fn no_crc_limits() -> Limits {
        Limits {
            allow_no_crc: true,
            ..Limits::default()
        }
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(frames in proptest::collection::vec(any_frame(), 1..8)) {
            let mut stream = Vec::new();
            for (version, size, payload) in &frames {
                encode_frame(*version, *size, payload, &mut stream).unwrap();
            }
            let mut rest = stream.as_slice();
            for (version, size, payload) in &frames {
                let Ok(Decoded::Done(frame, used)) = decode_frame(rest, &no_crc_limits()) else {
                    return Err(TestCaseError::fail("frame did not decode"));
                };
                prop_assert!(frame.crc_ok());
                prop_assert_eq!(frame.header.version, *version);
                prop_assert_eq!(frame.header.crc_size, *size);
                prop_assert_eq!(frame.payload, payload.as_slice());
                rest = &rest[used..];
            }
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn every_strict_prefix_needs_more(frame in any_frame(), cut in any::<prop::sample::Index>()) {
            let mut bytes = Vec::new();
            encode_frame(frame.0, frame.1, &frame.2, &mut bytes).unwrap();
            let cut = cut.index(bytes.len());
            let missing = bytes.len() - cut;
            match decode_frame(&bytes[..cut], &no_crc_limits()) {
                Ok(Decoded::NeedMore(n)) => prop_assert!(n >= 1 && n <= missing),
                other => return Err(TestCaseError::fail(format!("prefix of {cut} gave {other:?}"))),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                       max in any::<u32>(), allow_no_crc in any::<bool>()) {
            let limits = Limits { max_body_size: max, allow_no_crc };
            if let Ok(Decoded::Done(frame, used)) = decode_frame(&bytes, &limits) {
                prop_assert!(used <= bytes.len());
                prop_assert_eq!(frame.raw.len(), used);
            }
        }
    }
}
