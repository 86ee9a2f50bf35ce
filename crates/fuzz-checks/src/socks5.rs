//! The SOCKS5 and RFC 1929 decoders: what a server parses from a client
//! (greeting, username/password request, request, UDP header) and what a
//! client parses from a server (method selection, password status, reply).

use socks5::wire::{
    Address, decode_greeting, decode_method_selection, decode_password_request,
    decode_password_status, decode_request, decode_response, decode_udp_header, encode_greeting,
    encode_method_selection, encode_password_request, encode_password_status, encode_request,
    encode_response, encode_udp_header,
};

use crate::prefix::{self, Outcome, Socks5ErrorKind};

/// The version-negotiation greeting: decodes by prefix, and encodes back to
/// exactly the bytes it used. [`socks5::sniff`], which names what a
/// non-SOCKS5 peer sent for the log, never panics either.
pub fn greeting(data: &[u8]) {
    let _ = socks5::sniff(data);
    exact(
        data,
        |b| Outcome::from(decode_greeting(b)),
        |m, out| {
            encode_greeting(m, out).expect("a decoded greeting fits");
        },
    );
}

/// The RFC 1929 username/password request: decodes by prefix, and encodes
/// back to exactly the bytes it used.
pub fn password_request(data: &[u8]) {
    exact(
        data,
        |b| Outcome::from(decode_password_request(b)),
        |m, out| {
            encode_password_request(m, out).expect("a decoded request fits");
        },
    );
}

/// The request (CONNECT, BIND, UDP ASSOCIATE): decodes by prefix, its
/// encoding decodes to the same request, and it encodes back to the bytes it
/// used (RSV as 0) when its domain name, if any, is UTF-8. An IP-literal name
/// becomes that IP and keeps its port.
pub fn request(data: &[u8]) {
    let request = with_address(
        data,
        &[2],
        |b| Outcome::from(decode_request(b)),
        encode_request,
        |r| &r.destination,
    );
    if let Some(request) = request {
        literal_names(&request.destination);
    }
}

/// The UDP request header: the properties of [`request`] (RSV as 0).
pub fn udp_header(data: &[u8]) {
    let header = with_address(
        data,
        &[0, 1],
        |b| Outcome::from(decode_udp_header(b)),
        encode_udp_header,
        |h| &h.address,
    );
    if let Some(header) = header {
        literal_names(&header.address);
    }
}

/// What a client parses from the proxy: the method selection and the
/// password status (exact round trips) and the reply (the properties of
/// [`request`]).
pub fn client_replies(data: &[u8]) {
    exact(
        data,
        |b| Outcome::from(decode_method_selection(b)),
        |m, out| {
            encode_method_selection(m, out);
        },
    );
    exact(
        data,
        |b| Outcome::from(decode_password_status(b)),
        |m, out| {
            encode_password_status(m, out);
        },
    );
    with_address(
        data,
        &[2],
        |b| Outcome::from(decode_response(b)),
        encode_response,
        |r| &r.bound,
    );
}

/// Checks the prefix property, and that a decoded message encodes back to
/// exactly the bytes it used.
fn exact<T: std::fmt::Debug + PartialEq>(
    data: &[u8],
    decode: impl Fn(&[u8]) -> Outcome<T, Socks5ErrorKind>,
    encode: impl Fn(&T, &mut Vec<u8>),
) {
    if let Outcome::Done(message, used) = prefix::check(data, decode) {
        let mut encoded = Vec::new();
        encode(&message, &mut encoded);
        assert_eq!(encoded, data[..used], "{message:?}");
    }
}

/// Where the address starts in a request, a reply and a UDP header.
const ADDRESS_AT: usize = 3;

/// A message that holds an address: decodes by prefix; its encoding decodes
/// to the same message; and it encodes back to the bytes it used, with the
/// `reserved` offsets written as 0, whenever its domain name (if any) was
/// valid UTF-8. A name that was not is decoded lossily (each bad sequence
/// becomes U+FFFD), so its encoding may differ or even be too long to encode.
fn with_address<T: std::fmt::Debug + PartialEq + Clone>(
    data: &[u8],
    reserved: &[usize],
    decode: impl Fn(&[u8]) -> Outcome<T, Socks5ErrorKind>,
    encode: impl Fn(&T, &mut Vec<u8>) -> Result<(), socks5::Error>,
    address: impl Fn(&T) -> &Address,
) -> Option<T> {
    let Outcome::Done(message, used) = prefix::check(data, &decode) else {
        return None;
    };
    let lossless = match address(&message) {
        Address::Ip(_) => true,
        Address::Domain(..) => {
            let len = usize::from(data[ADDRESS_AT + 1]);
            std::str::from_utf8(&data[ADDRESS_AT + 2..][..len]).is_ok()
        }
    };
    let mut encoded = Vec::new();
    match encode(&message, &mut encoded) {
        Ok(()) => {
            assert_eq!(
                decode(&encoded),
                Outcome::Done(message.clone(), encoded.len()),
                "decode(encode(m)) == m"
            );
            if lossless {
                let mut expected = data[..used].to_vec();
                for &at in reserved {
                    expected[at] = 0;
                }
                assert_eq!(encoded, expected);
            }
            Some(message)
        }
        Err(error) => {
            assert!(!lossless, "a valid message does not encode: {error}");
            Some(message)
        }
    }
}

/// [`Address::without_ip_literal_name`], which the server applies to every
/// name a client sends, keeps the port and changes only IP literals.
fn literal_names(address: &Address) {
    let resolved = address.clone().without_ip_literal_name();
    assert_eq!(resolved.port(), address.port());
    if let (Address::Domain(name, _), Address::Ip(ip)) = (address, &resolved) {
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        assert_eq!(
            bare.parse::<std::net::IpAddr>().ok(),
            Some(ip.ip()),
            "{name}"
        );
    }
}
