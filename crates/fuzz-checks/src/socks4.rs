//! The SOCKS4 and SOCKS4a decoders: the request a server parses and the
//! reply a client parses.

use socks5::wire::Address;
use socks5::wire::protocol::{Detected, MAX_DETECT_LEN, detect};
use socks5::wire::socks4::{
    MAX_HOST_LEN, MAX_USER_ID_LEN, Socks4Error, decode_reply, decode_request, encode_reply,
    encode_request,
};

use crate::prefix::{self, Outcome};

impl<T> From<Result<socks5::wire::Decoded<T>, Socks4Error>> for Outcome<T, Socks4Error> {
    fn from(result: Result<socks5::wire::Decoded<T>, Socks4Error>) -> Self {
        match result {
            Ok(socks5::wire::Decoded::NeedMore(n)) => Outcome::NeedMore(n),
            Ok(socks5::wire::Decoded::Done(value, used)) => Outcome::Done(value, used),
            Err(error) => Outcome::Error(error),
        }
    }
}

/// The request: decodes by prefix (so the user id and the host name are
/// bounded: a decoder that buffered past 255 bytes without deciding would
/// fail the prefix property at the 256th), never uses more than 8 + 256 + 256
/// bytes, its encoding decodes to the same request, and it encodes back to
/// exactly the bytes it used when its host name, if any, is UTF-8. Every
/// reply decodes by prefix and encodes back to its 8 bytes. The protocol
/// detection of a shared port, which sees the same first bytes, decides
/// within [`MAX_DETECT_LEN`] bytes and never changes its mind.
pub fn request(data: &[u8]) {
    detection(data);
    let decode = |b| Outcome::from(decode_request(b));
    if let Outcome::Done(request, used) = prefix::check(data, decode) {
        assert!(
            used <= 8 + MAX_USER_ID_LEN + 1 + MAX_HOST_LEN + 1,
            "used {used}"
        );
        assert!(request.user_id.len() <= MAX_USER_ID_LEN);
        let lossless = match &request.destination {
            Address::Ip(ip) => {
                assert!(ip.is_ipv4(), "{ip}");
                true
            }
            Address::Domain(..) => {
                let host = &data[8 + request.user_id.len() + 1..used - 1];
                assert!(!host.is_empty() && host.len() <= MAX_HOST_LEN);
                std::str::from_utf8(host).is_ok()
            }
        };
        let mut encoded = Vec::new();
        match encode_request(&request, &mut encoded) {
            Ok(()) => {
                assert_eq!(
                    decode(&encoded),
                    Outcome::Done(request.clone(), encoded.len()),
                    "decode(encode(m)) == m"
                );
                if lossless {
                    // SOCKS4a's marker may be any 0.0.0.x; the encoder writes 0.0.0.1.
                    let mut expected = data[..used].to_vec();
                    if request.is_socks4a() {
                        expected[7] = 1;
                    }
                    assert_eq!(encoded, expected);
                }
            }
            Err(error) => assert!(!lossless, "a valid request does not encode: {error}"),
        }
    }
    if let Outcome::Done(reply, used) = prefix::check(data, |b| Outcome::from(decode_reply(b))) {
        let mut encoded = Vec::new();
        encode_reply(&reply, &mut encoded);
        assert_eq!(encoded, data[..used]);
    }
}

/// [`detect`]: a prefix that decides agrees with the whole; one that does not
/// asks for at least one and at most `MAX_DETECT_LEN - k` more bytes.
fn detection(data: &[u8]) {
    let whole = detect(data);
    for k in 0..=data.len().min(MAX_DETECT_LEN) {
        match detect(&data[..k]) {
            Detected::NeedMore(n) => assert!(n >= 1 && k + n <= MAX_DETECT_LEN, "{k}: {n}"),
            decided => assert_eq!(decided, whole, "prefix of {k}"),
        }
    }
    if data.len() >= MAX_DETECT_LEN {
        assert!(matches!(whole, Detected::Protocol(_)), "{whole:?}");
    }
}
