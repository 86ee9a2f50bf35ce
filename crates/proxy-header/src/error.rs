//! The one error type of the crate.

use crate::Version;

/// Why bytes can never be a valid header, or a header cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Neither the version 1 `PROXY ` prefix nor the version 2 signature.
    #[error("not a PROXY protocol header: byte {byte:#04x} at offset {offset}")]
    Signature {
        /// Where the first wrong byte is.
        offset: usize,
        /// That byte.
        byte: u8,
    },
    /// A header of a version the receiver does not accept.
    #[error("a PROXY protocol {found:?} header, which this listener does not accept")]
    NotAccepted {
        /// The version the bytes begin.
        found: Version,
    },
    /// A version 1 header without its CRLF within the first 107 bytes.
    #[error("no CRLF within the {max} bytes a version 1 header may use", max = crate::MAX_V1_LEN)]
    V1TooLong,
    /// A version 1 line that does not follow the format.
    #[error("malformed version 1 header: {0}")]
    V1Malformed(&'static str),
    /// A version 2 header whose version nibble is not 2.
    #[error("version/command byte {0:#04x}: version 2 expected")]
    V2Version(u8),
    /// A version 2 command other than `LOCAL` (0) or `PROXY` (1).
    #[error("version/command byte {0:#04x}: command LOCAL or PROXY expected")]
    V2Command(u8),
    /// A family/transport byte the spec does not define.
    #[error("family/transport byte {0:#04x} is not defined")]
    Family(u8),
    /// A datagram transport (UDP or `AF_UNIX` datagram) announced for a stream connection.
    #[error("family/transport byte {0:#04x} announces a datagram transport on a stream connection")]
    Datagram(u8),
    /// A version 2 length too short for the addresses of its family.
    #[error("length {len} is too short for the {need} address bytes of family {family:#04x}")]
    AddressTooShort {
        /// The family/transport byte.
        family: u8,
        /// The header's length field.
        len: u16,
        /// The address bytes that family needs.
        need: usize,
    },
    /// A TLV running past the end of the header.
    #[error("TLV at offset {offset} runs past the end of the header")]
    Tlv {
        /// Where the TLV starts.
        offset: usize,
    },
    /// A CRC-32C TLV whose value is not 4 bytes.
    #[error("CRC-32C TLV of {0} bytes, 4 expected")]
    CrcLength(u16),
    /// A CRC-32C TLV that does not match the header.
    #[error("CRC-32C mismatch: the header says {expected:#010x}, its bytes give {computed:#010x}")]
    CrcMismatch {
        /// The TLV's value.
        expected: u32,
        /// The checksum of the header with the TLV's value zeroed.
        computed: u32,
    },
    /// An encoded version 2 header would be longer than the 16-bit length allows.
    #[error("a version 2 header of {len} bytes after the fixed part exceeds 65535")]
    TooLong {
        /// The length it would have.
        len: usize,
    },
}
