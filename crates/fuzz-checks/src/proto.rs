//! The CRC frame protocol's decoders: header, frame, ack, and the
//! `tokio_util` codecs over arbitrary chunking.

use bytes::BytesMut;
use crc::{CRC_8_SMBUS, CRC_16_ARC, CRC_32_ISCSI, CRC_32_ISO_HDLC, Crc};
use proto::{
    AckCodec, CrcSize, DEFAULT_MAX_BODY_SIZE, Decoded, FrameCodec, HEADER_LEN, Header, Limits,
    Version, decode_ack, decode_frame, decode_header, encode_ack, encode_frame,
    header::encode_header,
};
use tokio_util::codec::Decoder;

use crate::prefix::{self, Outcome};

/// The limits every input is decoded under: the default, the default with
/// no-CRC frames allowed, a tiny limit, and none at all.
const LIMITS: [Limits; 4] = [
    Limits {
        max_body_size: DEFAULT_MAX_BODY_SIZE,
        allow_no_crc: false,
    },
    Limits {
        max_body_size: DEFAULT_MAX_BODY_SIZE,
        allow_no_crc: true,
    },
    Limits {
        max_body_size: 16,
        allow_no_crc: false,
    },
    Limits {
        max_body_size: u32::MAX,
        allow_no_crc: true,
    },
];

/// `decode_header`: decides at exactly 12 bytes; what it accepts obeys the
/// limits and encodes back to the same 12 bytes; a header accepted under a
/// limit is accepted unchanged without one.
pub fn frame_header(data: &[u8]) {
    for limits in &LIMITS {
        let whole = prefix::check(data, |b| Outcome::from(decode_header(b, limits)));
        match whole {
            Outcome::NeedMore(n) => {
                assert!(data.len() < HEADER_LEN && n == HEADER_LEN - data.len());
            }
            Outcome::Done(header, used) => {
                assert_eq!(used, HEADER_LEN);
                assert!(header.body_size <= limits.max_body_size);
                assert!(header.crc_size.len() <= header.body_size as usize);
                assert!(limits.allow_no_crc || header.crc_size != CrcSize::None);
                let mut encoded = Vec::new();
                encode_header(&header, &mut encoded);
                assert_eq!(encoded, data[..HEADER_LEN]);
                let unlimited = decode_header(data, &LIMITS[3]);
                assert_eq!(unlimited, Ok(Decoded::Done(header, HEADER_LEN)));
            }
            Outcome::Error(_) => assert!(data.len() >= HEADER_LEN),
        }
    }
}

/// `decode_frame`: fails exactly when the header does; once the header is in,
/// asks for exactly the missing bytes; a frame's parts are the right slices
/// of the input; the computed CRC equals a reference CRC over the hex text
/// (version 1) or the payload (version 2) built the slow, obvious way; and a
/// frame whose CRC matches is exactly what `encode_frame` writes.
pub fn frame(data: &[u8]) {
    // The reference CRC is slow: computed once, for the first limits that
    // accept the frame (every limits that accepts it sees the same frame).
    let mut reference = None;
    for limits in &LIMITS {
        let whole = prefix::check(data, |b| Outcome::from(decode_frame(b, limits)));
        let header = decode_header(data, limits);
        match whole {
            Outcome::Error(error) => assert_eq!(header, Err(error)),
            Outcome::NeedMore(n) => match header {
                Ok(Decoded::Done(header, _)) => {
                    assert_eq!(n, header.frame_len() - data.len());
                }
                other => assert_eq!(other, Ok(Decoded::NeedMore(n))),
            },
            Outcome::Done(frame, used) => {
                assert_eq!(header, Ok(Decoded::Done(frame.header, HEADER_LEN)));
                check_frame(&frame.header, frame.raw, data, used);
                assert_eq!(
                    frame.payload,
                    &data[HEADER_LEN..][..frame.header.payload_len()]
                );
                let trailer = &frame.raw[HEADER_LEN + frame.payload.len()..];
                assert_eq!(trailer.len(), frame.header.crc_size.len());
                let received = trailer
                    .iter()
                    .fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
                assert_eq!(frame.received_crc, received);
                let (version, size) = (frame.header.version, frame.header.crc_size);
                let reference =
                    *reference.get_or_insert_with(|| reference_crc(version, size, frame.payload));
                assert_eq!(
                    frame.computed_crc,
                    reference,
                    "{version:?} {size:?} over {} bytes",
                    frame.payload.len()
                );
                let mut encoded = Vec::new();
                encode_frame(version, size, frame.payload, &mut encoded).expect("fits");
                assert_eq!(frame.crc_ok(), encoded == frame.raw);
            }
        }
    }
}

/// A decoded frame spans `used` bytes, is the start of `data` and is as long
/// as its header says.
fn check_frame(header: &Header, raw: &[u8], data: &[u8], used: usize) {
    assert_eq!(used, header.frame_len());
    assert_eq!(raw, &data[..used]);
}

static CRC8: Crc<u8> = Crc::<u8>::new(&CRC_8_SMBUS);
static CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_ARC);
static CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);
static CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// PROTOCOL.md's checksums, computed byte by byte over a hex string.
fn reference_crc(version: Version, size: CrcSize, payload: &[u8]) -> u32 {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let hex: Vec<u8>;
    let input = match version {
        Version::V1 => {
            hex = payload
                .iter()
                .flat_map(|&b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
                .collect();
            &hex[..]
        }
        Version::V2 => payload,
    };
    match (version, size) {
        (_, CrcSize::None) => 0,
        (_, CrcSize::Crc8) => u32::from(CRC8.checksum(input)),
        (_, CrcSize::Crc16) => u32::from(CRC16.checksum(input)),
        (Version::V1, CrcSize::Crc32) => CRC32.checksum(input),
        (Version::V2, CrcSize::Crc32) => CRC32C.checksum(input),
    }
}

/// `decode_ack`: an ack is exactly what `encode_ack` writes for it, and is a
/// version 2 CRC-32C frame whose CRC matches.
pub fn ack(data: &[u8]) {
    let whole = prefix::check(data, |b| Outcome::from(decode_ack(b)));
    if let Outcome::Done(ack, used) = whole {
        assert_eq!(used, proto::ACK_FRAME_LEN);
        let mut encoded = Vec::new();
        encode_ack(&ack, &mut encoded);
        assert_eq!(encoded, data[..used]);
        let Ok(Decoded::Done(frame, _)) = decode_frame(data, &Limits::default()) else {
            panic!("an ack that is not a frame");
        };
        assert!(frame.crc_ok() && frame.header.version == Version::V2);
    }
}

/// `decode_session`: decides from the 12-byte header whether the sizes are a
/// session frame's; what it accepts is exactly 40 bytes that `encode_session`
/// writes back (the version word aside, which the caller has checked), and a
/// data frame decoder refuses a session frame as an unknown version.
pub fn session(data: &[u8]) {
    let whole = prefix::check(data, |b| Outcome::from(proto::decode_session(b)));
    match whole {
        Outcome::Done(session, used) => {
            assert_eq!(used, proto::SESSION_FRAME_LEN);
            let mut encoded = Vec::new();
            proto::encode_session(&session, &mut encoded);
            assert_eq!(encoded[4..], data[4..used]);
            if proto::session::starts_session(data) == Some(true) {
                assert_eq!(encoded, data[..used]);
                let refused = decode_header(data, &Limits::default());
                assert!(matches!(refused, Err(e) if u8::from(e.ack_status()) == 2));
            }
        }
        Outcome::NeedMore(n) => {
            let want = if data.len() < 12 {
                12
            } else {
                proto::SESSION_FRAME_LEN
            };
            assert_eq!(n, want - data.len());
        }
        Outcome::Error(proto::SessionError::Shape {
            body_size,
            crc_size,
        }) => {
            assert!(data.len() >= 12 && (body_size, crc_size) != (28, 4));
        }
        Outcome::Error(_) => assert!(data.len() >= proto::SESSION_FRAME_LEN),
    }
}

/// The biggest capacity the codec's buffer may reach for these small inputs:
/// it reserves at most 256 KiB at a time for a body still arriving, never the
/// announced size (up to 4 GiB here).
const MAX_CAPACITY: usize = 1024 * 1024;

/// `FrameCodec` and `AckCodec` fed the stream in fuzzer-chosen chunks decode
/// exactly what they decode from the whole stream at once, which is what
/// `decode_frame` and `decode_ack` find walking the stream; the buffer never
/// grows by an announced size.
///
/// Input: byte 0 picks the limits (bits 5-6), byte-at-a-time feeding (bit 4)
/// and how many chunk lengths follow (bits 0-3); each of those bytes is a
/// chunk length (0 feeds nothing and decodes); the rest is the stream, whose
/// remainder after the listed chunks is fed at once.
pub fn frame_codec(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let limits = LIMITS[usize::from(control >> 5) % LIMITS.len()];
    let count = usize::from(control & 0x0f).min(rest.len());
    let (lengths, stream) = rest.split_at(count);
    let chunks = chunks(stream, lengths, control & 0x10 != 0);

    let frames = run_codec(&mut FrameCodec::new(limits), &[stream]);
    let chunked = run_codec(&mut FrameCodec::new(limits), &chunks);
    assert_eq!(frames, chunked, "frames: whole vs chunked");
    let mut rest = stream;
    for frame in &frames.items {
        let Ok(Decoded::Done(pure, used)) = decode_frame(rest, &limits) else {
            panic!("the codec found a frame decode_frame does not");
        };
        assert_eq!(
            (frame.header, &frame.raw[..], frame.crc_ok),
            (pure.header, pure.raw, pure.crc_ok())
        );
        rest = &rest[used..];
    }
    assert_eq!(frames.error.is_some(), decode_frame(rest, &limits).is_err());

    let acks = run_codec(&mut AckCodec, &[stream]);
    let chunked = run_codec(&mut AckCodec, &chunks);
    assert_eq!(acks, chunked, "acks: whole vs chunked");
    let mut rest = stream;
    for ack in &acks.items {
        assert_eq!(
            decode_ack(rest),
            Ok(Decoded::Done(*ack, proto::ACK_FRAME_LEN))
        );
        rest = &rest[proto::ACK_FRAME_LEN..];
    }
    assert_eq!(acks.error.is_some(), decode_ack(rest).is_err());
}

/// Splits `stream` into the chunks `lengths` name, then the remainder (byte
/// by byte when `bytewise`).
fn chunks<'a>(stream: &'a [u8], lengths: &[u8], bytewise: bool) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = stream;
    for &len in lengths {
        let (chunk, after) = rest.split_at(usize::from(len).min(rest.len()));
        chunks.push(chunk);
        rest = after;
    }
    if bytewise {
        chunks.extend(rest.chunks(1));
    } else {
        chunks.push(rest);
    }
    chunks
}

/// What a codec made of a stream.
#[derive(Debug, PartialEq)]
struct Decodes<T> {
    items: Vec<T>,
    error: Option<String>,
    left: Vec<u8>,
}

/// Feeds `chunks` one after another, decoding after each until the codec
/// needs more; stops at the first error.
fn run_codec<C: Decoder>(codec: &mut C, chunks: &[&[u8]]) -> Decodes<C::Item>
where
    C::Error: std::fmt::Debug,
{
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let decoded = codec.decode(&mut buf);
            assert!(
                buf.capacity() <= MAX_CAPACITY,
                "capacity {} holding {}",
                buf.capacity(),
                buf.len()
            );
            match decoded {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(error) => {
                    return Decodes {
                        items,
                        error: Some(format!("{error:?}")),
                        left: Vec::new(),
                    };
                }
            }
        }
    }
    Decodes {
        items,
        error: None,
        left: buf.to_vec(),
    }
}

/// `proto::pairs`: the input, as text (lossy), is a header value read for a few keys, never
/// panicking; a value found writes back as a plain pair or one with escapes; and the input
/// written as a value reads back exactly, among other pairs.
pub fn header_pairs(data: &[u8]) {
    use proto::pairs::{escape_value, find_pair};
    let text = String::from_utf8_lossy(data);
    for key in ["", "a", "seq", "listener", "%", "=", ";"] {
        if let Some(value) = find_pair(&text, key) {
            let mut written = String::new();
            escape_value(&mut written, &value);
            assert!(written.bytes().all(|b| b.is_ascii_graphic()), "{written:?}");
            assert_eq!(
                find_pair(&format!("{key}={written}"), key).as_deref(),
                Some(&*value)
            );
        }
    }
    let mut header = String::from("v=2;listener=");
    escape_value(&mut header, &text);
    header.push_str(";seq=7");
    assert!(header.bytes().all(|b| b.is_ascii_graphic()), "{header:?}");
    assert_eq!(find_pair(&header, "listener").as_deref(), Some(&*text));
    assert_eq!(find_pair(&header, "seq").as_deref(), Some("7"));
    assert_eq!(find_pair(&header, "v").as_deref(), Some("2"));
}
