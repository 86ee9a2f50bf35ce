//! The 12-byte frame header (docs/PROTOCOL.md, "Frame layout").
//!
//! ```text
//! offset  size  field
//! 0       4     version      u32: 1 or 2
//! 4       4     body_size    u32: bytes that follow the header (payload + crc)
//! 8       4     crc_size     u32: 0, 1, 2 or 4; the last crc_size bytes of the body
//! ```

use bytes::{Buf, BufMut};

use crate::{Decoded, HeaderError, crc::CrcSize};

/// Length of the header in bytes.
pub const HEADER_LEN: usize = 12;

/// The default limit on `body_size`: 16 MiB (docs/PROTOCOL.md, "Limits").
pub const DEFAULT_MAX_BODY_SIZE: u32 = 16 * 1024 * 1024;

/// The protocol version of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// The legacy format of the reference Python client: the CRC covers the
    /// lowercase hex text of the payload; CRC-32 is CRC-32/ISO-HDLC.
    V1,
    /// The native format: the CRC covers the raw payload; CRC-32 is CRC-32C.
    V2,
}

impl TryFrom<u32> for Version {
    type Error = HeaderError;

    fn try_from(raw: u32) -> Result<Self, Self::Error> {
        match raw {
            1 => Ok(Self::V1),
            2 => Ok(Self::V2),
            other => Err(HeaderError::Version(other)),
        }
    }
}

impl From<Version> for u32 {
    fn from(version: Version) -> Self {
        match version {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }
}

/// A checked header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame's version.
    pub version: Version,
    /// Bytes after the header: payload and CRC.
    pub body_size: u32,
    /// The size of the CRC trailer.
    pub crc_size: CrcSize,
}

impl Header {
    /// Length of the payload: `body_size - crc_size`.
    #[must_use]
    pub fn payload_len(&self) -> usize {
        // `decode_header` and `Header::new` guarantee crc_size <= body_size.
        (self.body_size as usize).saturating_sub(self.crc_size.len())
    }

    /// Length of the whole frame, header included.
    #[must_use]
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_size as usize
    }
}

/// What a receiver accepts. The defaults are docs/PROTOCOL.md's: a 16 MiB body
/// limit and no frames without a checksum.
///
/// ```
/// let limits = proto::Limits { max_body_size: 1 << 20, ..proto::Limits::default() };
/// assert!(!limits.allow_no_crc);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest `body_size` accepted (payload and CRC).
    pub max_body_size: u32,
    /// Whether `crc_size = 0` (no checksum) is accepted.
    pub allow_no_crc: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            allow_no_crc: false,
        }
    }
}

/// Decodes and checks a header, before any body byte is looked at.
///
/// The checks run in docs/PROTOCOL.md's order, and the first that fails decides
/// the error: version, `crc_size > body_size`, the size limit, the CRC size.
///
/// # Errors
///
/// A [`HeaderError`] for a header that can never start a valid frame.
pub fn decode_header(buf: &[u8], limits: &Limits) -> Result<Decoded<Header>, HeaderError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(Decoded::NeedMore(HEADER_LEN - buf.len()));
    };
    let mut head = head.as_slice(); // exactly 12 bytes: the reads below cannot run short
    let (version, body_size, crc_size) = (head.get_u32(), head.get_u32(), head.get_u32());
    let version = Version::try_from(version)?;
    if crc_size > body_size {
        return Err(HeaderError::Malformed {
            body_size,
            crc_size,
        });
    }
    let limit = limits.max_body_size;
    if body_size > limit {
        return Err(HeaderError::TooLarge {
            size: body_size,
            limit,
        });
    }
    let crc_size = match CrcSize::try_from(crc_size) {
        Ok(CrcSize::None) if !limits.allow_no_crc => None,
        Ok(size) => Some(size),
        Err(_) => None,
    }
    .ok_or(HeaderError::CrcSize {
        crc_size,
        expected: if limits.allow_no_crc {
            "0, 1, 2 or 4"
        } else {
            "1, 2 or 4"
        },
    })?;
    Ok(Decoded::Done(
        Header {
            version,
            body_size,
            crc_size,
        },
        HEADER_LEN,
    ))
}

/// Encodes a header.
pub fn encode_header(header: &Header, dst: &mut impl BufMut) {
    dst.put_u32(header.version.into());
    dst.put_u32(header.body_size);
    dst.put_u32(header.crc_size.len() as u32);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(version: u32, body_size: u32, crc_size: u32) -> Vec<u8> {
        [version, body_size, crc_size]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect()
    }

    #[test]
    fn needs_twelve_bytes() {
        let limits = Limits::default();
        for len in 0..HEADER_LEN {
            let bytes = head(1, 2, 1);
            assert_eq!(
                decode_header(&bytes[..len], &limits),
                Ok(Decoded::NeedMore(HEADER_LEN - len))
            );
        }
    }

    #[test]
    fn checks_in_protocol_order() {
        let limits = Limits {
            max_body_size: 100,
            allow_no_crc: false,
        };
        let cases = [
            // Unknown version wins over everything else.
            (head(3, 1000, 2000), HeaderError::Version(3)),
            // crc_size > body_size wins over the size limit and the crc size.
            (
                head(1, 1000, 3000),
                HeaderError::Malformed {
                    body_size: 1000,
                    crc_size: 3000,
                },
            ),
            (
                head(2, 1000, 3),
                HeaderError::TooLarge {
                    size: 1000,
                    limit: 100,
                },
            ),
            (
                head(2, 10, 3),
                HeaderError::CrcSize {
                    crc_size: 3,
                    expected: "1, 2 or 4",
                },
            ),
            (
                head(1, 10, 0),
                HeaderError::CrcSize {
                    crc_size: 0,
                    expected: "1, 2 or 4",
                },
            ),
        ];
        for (bytes, error) in cases {
            assert_eq!(decode_header(&bytes, &limits), Err(error));
        }
    }

    #[test]
    fn accepts_no_crc_only_when_allowed() {
        let limits = Limits {
            allow_no_crc: true,
            ..Limits::default()
        };
        let Ok(Decoded::Done(header, 12)) = decode_header(&head(2, 5, 0), &limits) else {
            panic!("expected a header");
        };
        assert_eq!(header.crc_size, CrcSize::None);
        assert_eq!(header.payload_len(), 5);
    }

    #[test]
    fn encodes_what_it_decodes() {
        let header = Header {
            version: Version::V1,
            body_size: 9,
            crc_size: CrcSize::Crc32,
        };
        let mut out = Vec::new();
        encode_header(&header, &mut out);
        assert_eq!(out, head(1, 9, 4));
        assert_eq!(
            decode_header(&out, &Limits::default()),
            Ok(Decoded::Done(header, 12))
        );
    }
}
