use crate::ack::AckStatus;

/// A header that can never become a valid frame. The receiver answers with
/// [`HeaderError::ack_status`] and closes: the stream cannot be trusted after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// `version` is neither 1 nor 2.
    #[error("unsupported version {0}, expected 1 or 2")]
    Version(u32),
    /// `crc_size` is larger than `body_size`.
    #[error("malformed header: crc_size {crc_size} is larger than body_size {body_size}")]
    Malformed {
        /// The announced body size.
        body_size: u32,
        /// The announced CRC size.
        crc_size: u32,
    },
    /// `body_size` is above the receiver's limit.
    #[error("frame too large: body_size {size} is above the limit of {limit} bytes")]
    TooLarge {
        /// The announced body size.
        size: u32,
        /// The receiver's limit.
        limit: u32,
    },
    /// `crc_size` is not 1, 2 or 4 (or 0 where the receiver allows it).
    #[error("unsupported crc_size {crc_size}, expected {expected}")]
    CrcSize {
        /// The announced CRC size.
        crc_size: u32,
        /// The sizes the receiver accepts, for the message.
        expected: &'static str,
    },
    /// An encoder was given a payload whose body would not fit `body_size`'s 32 bits.
    #[error("a payload of {0} bytes does not fit in one frame")]
    PayloadTooLong(usize),
}

impl HeaderError {
    /// The acknowledgement status docs/PROTOCOL.md assigns to this error.
    #[must_use]
    pub fn ack_status(&self) -> AckStatus {
        match self {
            Self::Version(_) => AckStatus::UnsupportedVersion,
            Self::Malformed { .. } => AckStatus::MalformedHeader,
            Self::TooLarge { .. } | Self::PayloadTooLong(_) => AckStatus::TooLarge,
            Self::CrcSize { .. } => AckStatus::UnsupportedCrcSize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_each_error_to_its_ack_status() {
        let cases = [
            (HeaderError::Version(3), AckStatus::UnsupportedVersion, 2),
            (
                HeaderError::Malformed {
                    body_size: 1,
                    crc_size: 2,
                },
                AckStatus::MalformedHeader,
                6,
            ),
            (
                HeaderError::TooLarge { size: 9, limit: 8 },
                AckStatus::TooLarge,
                4,
            ),
            (
                HeaderError::CrcSize {
                    crc_size: 3,
                    expected: "1, 2 or 4",
                },
                AckStatus::UnsupportedCrcSize,
                3,
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.ack_status(), status, "{error}");
            assert_eq!(u8::from(status), code);
        }
    }
}

/// A frame that is not a valid acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The frame's header is invalid.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The frame is not version 2 with a CRC-32C and a 9-byte payload.
    #[error(
        "not an acknowledgement: expected a version 2 frame with crc_size 4 and 9 payload bytes"
    )]
    Shape,
    /// The trailer does not match the payload.
    #[error("acknowledgement crc mismatch")]
    Crc,
    /// The status byte is not one docs/PROTOCOL.md defines.
    #[error("unknown acknowledgement status {0}")]
    Status(u8),
}
