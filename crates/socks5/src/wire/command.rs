//! Requests and replies (RFC 1928 §4, §6) and the UDP request header (§7).

use bytes::BufMut;

use super::address::{after_prefix, check_address, need};
use super::negotiation::check_version;
use super::{Address, Command, Decoded, Reply, consts, decode_address, encode_address};
use crate::Error;

/// The client's request, RFC 1928 §4.
///
/// ```text
/// +-----+-----+-------+------+----------+----------+
/// | VER | CMD |  RSV  | ATYP | DST.ADDR | DST.PORT |      VER = X'05'
/// +-----+-----+-------+------+----------+----------+      RSV is sent as X'00' and
/// |  1  |  1  | X'00' |  1   | Variable |    2     |      ignored when received
/// +-----+-----+-------+------+----------+----------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// CMD.
    pub command: Command,
    /// ATYP, DST.ADDR and DST.PORT.
    pub destination: Address,
}

/// The server's reply to a request, RFC 1928 §6 (sent twice for BIND).
///
/// ```text
/// +-----+-----+-------+------+----------+----------+
/// | VER | REP |  RSV  | ATYP | BND.ADDR | BND.PORT |      VER = X'05'
/// +-----+-----+-------+------+----------+----------+      RSV is sent as X'00' and
/// |  1  |  1  | X'00' |  1   | Variable |    2     |      ignored when received
/// +-----+-----+-------+------+----------+----------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// REP.
    pub reply: Reply,
    /// ATYP, BND.ADDR and BND.PORT.
    pub bound: Address,
}

/// The header in front of every relayed UDP datagram, RFC 1928 §7.
///
/// ```text
/// +-----+------+------+----------+----------+----------+
/// | RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |      RSV = X'0000' (ignored
/// +-----+------+------+----------+----------+----------+      when received); FRAG X'00'
/// |  2  |  1   |  1   | Variable |    2     | Variable |      = a whole datagram
/// +-----+------+------+----------+----------+----------+
/// ```
///
/// DATA is not part of the header: it is everything after the bytes the decoder used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpHeader {
    /// FRAG: 0 for a standalone datagram, else a fragment number (this crate drops those).
    pub frag: u8,
    /// The destination (client to server) or the source (server to client) of DATA.
    pub address: Address,
}

impl UdpHeader {
    /// A standalone (FRAG = 0) header for `address`.
    #[must_use]
    pub fn new(address: Address) -> Self {
        UdpHeader {
            frag: consts::FRAG_STANDALONE,
            address,
        }
    }
}

/// The smallest address is 5 bytes, so a message with a 3-byte prefix is at least 8: asking
/// for the prefix and 2 more bytes never reads past a valid message.
const PREFIX_LEN: usize = 3;
const FIRST_ASK: usize = PREFIX_LEN + 2;

/// Decodes a [`Request`].
///
/// # Errors
///
/// [`Error::Version`] if the first byte is not 5, [`Error::Command`] for an unknown CMD, and the
/// errors of [`decode_address`]; each as soon as its byte is there.
pub fn decode_request(buf: &[u8]) -> Result<Decoded<Request>, Error> {
    check_version(buf, consts::SOCKS_VERSION, Error::Version)?;
    let command = match buf.get(1) {
        Some(&command) => Command::try_from(command)?,
        None => return Ok(need(FIRST_ASK, buf.len())),
    };
    let Some(rest) = buf.get(PREFIX_LEN..) else {
        return Ok(need(FIRST_ASK, buf.len()));
    };
    let decoded = decode_address(rest)?;
    Ok(after_prefix(PREFIX_LEN, decoded, |destination| Request {
        command,
        destination,
    }))
}

/// Encodes a [`Request`].
///
/// # Errors
///
/// The errors of [`encode_address`]; nothing is written then.
pub fn encode_request(request: &Request, out: &mut impl BufMut) -> Result<(), Error> {
    check_address(&request.destination)?;
    out.put_u8(consts::SOCKS_VERSION);
    out.put_u8(request.command.into());
    out.put_u8(consts::RESERVED);
    encode_address(&request.destination, out)
}

/// Decodes a [`Response`].
///
/// # Errors
///
/// [`Error::Version`] if the first byte is not 5, [`Error::UnknownReply`] for an unassigned
/// REP, and the errors of [`decode_address`]; each as soon as its byte is there.
pub fn decode_response(buf: &[u8]) -> Result<Decoded<Response>, Error> {
    check_version(buf, consts::SOCKS_VERSION, Error::Version)?;
    let reply = match buf.get(1) {
        Some(&reply) => Reply::try_from(reply)?,
        None => return Ok(need(FIRST_ASK, buf.len())),
    };
    let Some(rest) = buf.get(PREFIX_LEN..) else {
        return Ok(need(FIRST_ASK, buf.len()));
    };
    let decoded = decode_address(rest)?;
    Ok(after_prefix(PREFIX_LEN, decoded, |bound| Response {
        reply,
        bound,
    }))
}

/// Encodes a [`Response`].
///
/// # Errors
///
/// The errors of [`encode_address`]; nothing is written then.
pub fn encode_response(response: &Response, out: &mut impl BufMut) -> Result<(), Error> {
    check_address(&response.bound)?;
    out.put_u8(consts::SOCKS_VERSION);
    out.put_u8(response.reply.into());
    out.put_u8(consts::RESERVED);
    encode_address(&response.bound, out)
}

/// Decodes a [`UdpHeader`]; DATA starts at the `used` offset of [`Decoded::Done`].
///
/// For a datagram, [`Decoded::NeedMore`] means it was truncated.
///
/// # Errors
///
/// The errors of [`decode_address`].
pub fn decode_udp_header(buf: &[u8]) -> Result<Decoded<UdpHeader>, Error> {
    let (Some(&frag), Some(rest)) = (buf.get(2), buf.get(PREFIX_LEN..)) else {
        return Ok(need(FIRST_ASK, buf.len()));
    };
    let decoded = decode_address(rest)?;
    Ok(after_prefix(PREFIX_LEN, decoded, |address| UdpHeader {
        frag,
        address,
    }))
}

/// Encodes a [`UdpHeader`]; the caller appends DATA.
///
/// # Errors
///
/// The errors of [`encode_address`]; nothing is written then.
pub fn encode_udp_header(header: &UdpHeader, out: &mut impl BufMut) -> Result<(), Error> {
    check_address(&header.address)?;
    out.put_u16(u16::from(consts::RESERVED));
    out.put_u8(header.frag);
    encode_address(&header.address, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::address::strategy;
    use crate::wire::testing::{check_no_panic, check_prefixes};
    use proptest::prelude::*;

    fn v4(text: &str) -> Address {
        Address::Ip(text.parse().expect("valid socket address"))
    }

    #[test]
    fn decodes_requests() {
        let connect = |destination| Request {
            command: Command::Connect,
            destination,
        };
        let table: [(&[u8], Decoded<Request>); 7] = [
            (&[], Decoded::NeedMore(5)),
            (&[5, 1], Decoded::NeedMore(3)),
            (&[5, 1, 0], Decoded::NeedMore(2)),
            (&[5, 1, 0, 1], Decoded::NeedMore(6)),
            (
                &[5, 1, 0, 1, 10, 0, 0, 1, 0, 80],
                Decoded::Done(connect(v4("10.0.0.1:80")), 10),
            ),
            // RSV is ignored; bytes after the request are left alone.
            (
                &[5, 1, 7, 1, 10, 0, 0, 1, 0, 80, 0x47],
                Decoded::Done(connect(v4("10.0.0.1:80")), 10),
            ),
            (
                b"\x05\x03\x00\x03\x06a.test\x00\x35",
                Decoded::Done(
                    Request {
                        command: Command::UdpAssociate,
                        destination: Address::Domain("a.test".into(), 53),
                    },
                    13,
                ),
            ),
        ];
        for (bytes, expected) in table {
            assert_eq!(
                decode_request(bytes).expect("valid"),
                expected,
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn rejects_bad_requests_as_soon_as_the_byte_arrives() {
        assert!(matches!(decode_request(&[4]), Err(Error::Version(4))));
        assert!(matches!(decode_request(&[5, 9]), Err(Error::Command(9))));
        assert!(matches!(decode_request(&[5, 0]), Err(Error::Command(0))));
        assert!(matches!(
            decode_request(&[5, 1, 0, 2]),
            Err(Error::AddressType(2))
        ));
        assert!(matches!(
            decode_request(&[5, 1, 0, 3, 0]),
            Err(Error::EmptyDomain)
        ));
    }

    #[test]
    fn decodes_responses() {
        let bytes = [5, 0, 0, 1, 127, 0, 0, 1, 0x1F, 0x90];
        let expected = Response {
            reply: Reply::Succeeded,
            bound: v4("127.0.0.1:8080"),
        };
        assert_eq!(
            decode_response(&bytes).expect("valid"),
            Decoded::Done(expected, 10)
        );
        let refused = [5, 5, 0, 1, 0, 0, 0, 0, 0, 0];
        let Decoded::Done(response, _) = decode_response(&refused).expect("valid") else {
            panic!("complete message");
        };
        assert_eq!(response.reply, Reply::ConnectionRefused);
        assert!(matches!(
            decode_response(&[5, 9]),
            Err(Error::UnknownReply(9))
        ));
        assert!(matches!(decode_response(&[0]), Err(Error::Version(0))));
    }

    #[test]
    fn decodes_udp_headers() {
        let bytes = [0, 0, 0, 1, 127, 0, 0, 1, 0, 7, b'h', b'i'];
        let header = UdpHeader::new(v4("127.0.0.1:7"));
        assert_eq!(
            decode_udp_header(&bytes).expect("valid"),
            Decoded::Done(header, 10)
        );
        let fragment = [0xFF, 0xFF, 3, 1, 127, 0, 0, 1, 0, 7];
        let Decoded::Done(header, _) = decode_udp_header(&fragment).expect("valid") else {
            panic!("complete message");
        };
        assert_eq!(header.frag, 3);
        assert_eq!(
            decode_udp_header(&[0, 0]).expect("prefix"),
            Decoded::NeedMore(3)
        );
        assert!(matches!(
            decode_udp_header(&[0, 0, 0, 9]),
            Err(Error::AddressType(9))
        ));
    }

    #[test]
    fn encodes_to_the_rfc_layouts() {
        let mut out = Vec::new();
        let request = Request {
            command: Command::Bind,
            destination: v4("1.2.3.4:258"),
        };
        encode_request(&request, &mut out).expect("fits");
        let response = Response {
            reply: Reply::Succeeded,
            bound: Address::Ip("[::1]:1".parse().expect("valid")),
        };
        encode_response(&response, &mut out).expect("fits");
        encode_udp_header(&UdpHeader::new(Address::Domain("x".into(), 2)), &mut out).expect("fits");
        let mut expected = vec![5, 2, 0, 1, 1, 2, 3, 4, 1, 2];
        expected.extend_from_slice(&[5, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        expected.extend_from_slice(&[0, 1]);
        expected.extend_from_slice(&[0, 0, 0, 3, 1, b'x', 0, 2]);
        assert_eq!(out, expected);
    }

    #[test]
    fn writes_nothing_when_the_address_does_not_fit() {
        let mut out = Vec::new();
        let request = Request {
            command: Command::Connect,
            destination: Address::Domain("a".repeat(300), 1),
        };
        assert!(encode_request(&request, &mut out).is_err());
        let header = UdpHeader::new(Address::Domain(String::new(), 1));
        assert!(encode_udp_header(&header, &mut out).is_err());
        assert!(out.is_empty());
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            Just(Command::Connect),
            Just(Command::Bind),
            Just(Command::UdpAssociate)
        ]
    }

    fn reply() -> impl Strategy<Value = Reply> {
        (0u8..=8).prop_map(|byte| Reply::try_from(byte).expect("assigned"))
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            check_no_panic(&bytes, decode_request(&bytes))?;
            check_no_panic(&bytes, decode_response(&bytes))?;
            check_no_panic(&bytes, decode_udp_header(&bytes))?;
        }

        #[test]
        fn requests_round_trip(command in command(), destination in strategy::address()) {
            let request = Request { command, destination };
            let mut out = Vec::new();
            encode_request(&request, &mut out).expect("fits");
            check_prefixes(&out, decode_request)?;
            prop_assert_eq!(decode_request(&out).expect("valid"), Decoded::Done(request, out.len()));
        }

        #[test]
        fn responses_round_trip(reply in reply(), bound in strategy::address()) {
            let response = Response { reply, bound };
            let mut out = Vec::new();
            encode_response(&response, &mut out).expect("fits");
            check_prefixes(&out, decode_response)?;
            prop_assert_eq!(
                decode_response(&out).expect("valid"),
                Decoded::Done(response, out.len())
            );
        }

        #[test]
        fn udp_headers_round_trip(frag in any::<u8>(), address in strategy::address()) {
            let header = UdpHeader { frag, address };
            let mut out = Vec::new();
            encode_udp_header(&header, &mut out).expect("fits");
            check_prefixes(&out, decode_udp_header)?;
            prop_assert_eq!(
                decode_udp_header(&out).expect("valid"),
                Decoded::Done(header, out.len())
            );
        }
    }
}
