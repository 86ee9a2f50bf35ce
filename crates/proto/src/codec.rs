//! `tokio_util::codec` adapters over the pure decoders, for use with
//! `FramedRead`/`FramedWrite`.
//!
//! ```
//! use proto::{FrameCodec, Limits};
//! let codec = FrameCodec::new(Limits { max_body_size: 64 * 1024, ..Limits::default() });
//! assert_eq!(codec.limits().max_body_size, 65536);
//! ```

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::{
    Ack, AckError, Decoded, HeaderError,
    ack::{decode_ack, encode_ack},
    crc::CrcSize,
    frame::{Frame, decode_frame, encode_frame},
    header::{Limits, Version, decode_header},
};

/// The most the decoder reserves at once for a body that is still arriving:
/// the buffer grows only as bytes come in, never by the announced size.
const MAX_RESERVE_STEP: usize = 256 * 1024;

/// A frame or transport failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The peer sent a header that can never start a valid frame.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The peer sent something that is not an acknowledgement.
    #[error(transparent)]
    Ack(#[from] AckError),
    /// The transport failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Decodes [`Frame`]s under [`Limits`] and encodes [`Outgoing`] frames and [`Ack`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec {
    limits: Limits,
}

impl FrameCodec {
    /// A codec that applies `limits` to every received header.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }

    /// The limits this codec applies.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// A frame to send: the encoder computes its header and CRC.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The frame's version.
    pub version: Version,
    /// The CRC trailer's size.
    pub crc_size: CrcSize,
    /// The payload.
    pub payload: &'a [u8],
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let header = match decode_header(src, &self.limits)? {
            Decoded::Done(header, _) => header,
            Decoded::NeedMore(_) => return Ok(None),
        };
        let frame_len = header.frame_len();
        if src.len() < frame_len {
            src.reserve((frame_len - src.len()).min(MAX_RESERVE_STEP));
            return Ok(None);
        }
        let (used, crc_ok) = match decode_frame(src, &self.limits)? {
            Decoded::Done(frame, used) => (used, frame.crc_ok()),
            Decoded::NeedMore(_) => return Ok(None),
        };
        let raw = src.split_to(used).freeze();
        Ok(Some(Frame {
            header,
            raw,
            crc_ok,
        }))
    }
}

impl Encoder<Outgoing<'_>> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Outgoing<'_>, dst: &mut BytesMut) -> Result<(), CodecError> {
        dst.reserve(item.payload.len() + 16);
        Ok(encode_frame(
            item.version,
            item.crc_size,
            item.payload,
            dst,
        )?)
    }
}

impl Encoder<Ack> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Ack, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_ack(&item, dst);
        Ok(())
    }
}

/// Decodes the acknowledgements a listener sends back (the client's side).
#[derive(Debug, Clone, Copy, Default)]
pub struct AckCodec;

impl Decoder for AckCodec {
    type Item = Ack;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Ack>, CodecError> {
        match decode_ack(src)? {
            Decoded::Done(ack, used) => {
                let _ = src.split_to(used);
                Ok(Some(ack))
            }
            Decoded::NeedMore(_) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AckStatus;
    use proptest::prelude::*;

    fn encode_all(frames: &[(Version, CrcSize, Vec<u8>)]) -> Vec<u8> {
        let mut codec = FrameCodec::default();
        let mut out = BytesMut::new();
        for (version, crc_size, payload) in frames {
            codec
                .encode(
                    Outgoing {
                        version: *version,
                        crc_size: *crc_size,
                        payload,
                    },
                    &mut out,
                )
                .unwrap();
        }
        out.to_vec()
    }

    fn decode_in_pieces(bytes: &[u8], cuts: &[usize]) -> Vec<Frame> {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            let cut = cut.clamp(start, bytes.len());
            buf.extend_from_slice(&bytes[start..cut]);
            start = cut;
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                frames.push(frame);
            }
        }
        assert!(buf.is_empty());
        frames
    }

    #[test]
    fn does_not_reserve_the_announced_size() {
        let mut codec = FrameCodec::new(Limits {
            max_body_size: u32::MAX,
            ..Limits::default()
        });
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 4][..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() <= 12 + MAX_RESERVE_STEP + 64,
            "reserved {}",
            buf.capacity()
        );
    }

    #[test]
    fn reports_a_bad_header_as_an_error() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&[0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 1][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::Header(HeaderError::Version(9)))
        ));
    }

    #[test]
    fn ack_codec_reads_acks_in_order() {
        let mut buf = BytesMut::new();
        let mut codec = FrameCodec::default();
        for seq in 0..3 {
            codec
                .encode(
                    Ack {
                        status: AckStatus::Ok,
                        seq,
                    },
                    &mut buf,
                )
                .unwrap();
        }
        let seqs: Vec<u64> = std::iter::from_fn(|| AckCodec.decode(&mut buf).unwrap())
            .map(|a| a.seq)
            .collect();
        assert_eq!(seqs, [0, 1, 2]);
    }

    proptest! {
        #[test]
        fn any_split_decodes_like_the_whole(
            frames in proptest::collection::vec(
                (prop_oneof![Just(Version::V1), Just(Version::V2)],
                 prop_oneof![Just(CrcSize::Crc8), Just(CrcSize::Crc16), Just(CrcSize::Crc32)],
                 proptest::collection::vec(any::<u8>(), 0..200)), 1..6),
            mut cuts in proptest::collection::vec(0usize..1500, 0..6),
        ) {
            let bytes = encode_all(&frames);
            cuts.sort_unstable();
            let whole = decode_in_pieces(&bytes, &[]);
            let split = decode_in_pieces(&bytes, &cuts);
            prop_assert_eq!(&whole, &split);
            prop_assert_eq!(whole.len(), frames.len());
            for (frame, (_, _, payload)) in whole.iter().zip(&frames) {
                prop_assert!(frame.crc_ok);
                prop_assert_eq!(&frame.payload()[..], payload.as_slice());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::from(bytes.as_slice());
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }
}
