//! The address field shared by requests, replies and UDP headers (RFC 1928 §4, §5, §6, §7).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use bytes::BufMut;

use super::{Decoded, consts};
use crate::Error;

/// A destination or bound address: ATYP, ADDR and PORT, RFC 1928 §4 and §5.
///
/// ```text
/// +------+----------+----------+
/// | ATYP |   ADDR   |   PORT   |     ATYP X'01': ADDR is 4 octets (IPv4)
/// +------+----------+----------+     ATYP X'03': ADDR is 1 length octet + 1..=255 name octets
/// |  1   | Variable |    2     |     ATYP X'04': ADDR is 16 octets (IPv6)
/// +------+----------+----------+     PORT in network byte order
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// ATYP X'01' or X'04'. IPv6 flow info and scope id are not carried on the wire.
    Ip(SocketAddr),
    /// ATYP X'03': a fully-qualified domain name and a port.
    ///
    /// RFC 1928 does not say how the name is encoded. Decoding accepts any 1 to 255 bytes and
    /// replaces bytes that are not UTF-8 with U+FFFD: such a name can never resolve, so it is
    /// answered like any other unknown name (Host unreachable), and the rules see the same text
    /// the resolver sees.
    Domain(String, u16),
}

impl Address {
    /// `0.0.0.0:0`, the BND address of a failure reply.
    pub const UNSPECIFIED: Address =
        Address::Ip(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)));

    /// The port.
    #[must_use]
    pub fn port(&self) -> u16 {
        match self {
            Address::Ip(address) => address.port(),
            Address::Domain(_, port) => *port,
        }
    }

    /// The address with a domain name that is an IP literal (`"127.0.0.1"`,
    /// `"::1"` or `"[::1]"`, as some clients send, Chromium among them) turned
    /// into that IP: such a name needs no resolver, and rules judge it as the IP it is.
    #[must_use]
    pub fn without_ip_literal_name(self) -> Address {
        match &self {
            Address::Domain(name, port) => {
                let bare = name
                    .strip_prefix('[')
                    .and_then(|n| n.strip_suffix(']'))
                    .unwrap_or(name);
                match bare.parse::<std::net::IpAddr>() {
                    Ok(ip) => Address::Ip(SocketAddr::new(ip, *port)),
                    Err(_) => self,
                }
            }
            Address::Ip(_) => self,
        }
    }

    /// How many bytes [`encode_address`] writes (for a domain longer than 255 bytes, what it
    /// would write if it fit).
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        match self {
            Address::Ip(SocketAddr::V4(_)) => 1 + 4 + 2,
            Address::Ip(SocketAddr::V6(_)) => 1 + 16 + 2,
            Address::Domain(name, _) => 1 + 1 + name.len() + 2,
        }
    }
}

#[cfg(test)]
mod literal_tests {
    use super::*;

    #[test]
    fn ip_literal_names_become_ips_and_other_names_stay() {
        let cases = [
            ("127.0.0.1", Some("127.0.0.1:80")),
            ("::1", Some("[::1]:80")),
            ("[::1]", Some("[::1]:80")),
            ("localhost", None),
            ("1.2.3.4.example", None),
        ];
        for (name, expected) in cases {
            let address = Address::Domain(name.to_owned(), 80).without_ip_literal_name();
            match expected {
                Some(ip) => assert_eq!(address, Address::Ip(ip.parse().expect("ip")), "{name}"),
                None => assert_eq!(address, Address::Domain(name.to_owned(), 80), "{name}"),
            }
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(address: SocketAddr) -> Self {
        Address::Ip(address)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(address) => address.fmt(f),
            Address::Domain(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

/// Decodes an address (ATYP, ADDR, PORT) from the start of `buf`.
///
/// # Errors
///
/// [`Error::AddressType`] for an ATYP other than 1, 3 or 4; [`Error::EmptyDomain`] for a
/// domain name of length 0.
pub fn decode_address(buf: &[u8]) -> Result<Decoded<Address>, Error> {
    // With nothing yet, ask for ATYP plus one more byte: the shortest address (a one-letter
    // name) is 5 bytes, so 2 never reads past the end of a valid address.
    let Some((&atyp, rest)) = buf.split_first() else {
        return Ok(Decoded::NeedMore(2));
    };
    match atyp {
        consts::ATYP_IPV4 => {
            let total = 1 + 4 + 2;
            let Some((ip, rest)) = rest.split_first_chunk::<4>() else {
                return Ok(need(total, buf.len()));
            };
            let Some(port) = rest.first_chunk::<2>() else {
                return Ok(need(total, buf.len()));
            };
            let address = SocketAddr::from((Ipv4Addr::from(*ip), u16::from_be_bytes(*port)));
            Ok(Decoded::Done(Address::Ip(address), total))
        }
        consts::ATYP_IPV6 => {
            let total = 1 + 16 + 2;
            let Some((ip, rest)) = rest.split_first_chunk::<16>() else {
                return Ok(need(total, buf.len()));
            };
            let Some(port) = rest.first_chunk::<2>() else {
                return Ok(need(total, buf.len()));
            };
            let address = SocketAddr::from((Ipv6Addr::from(*ip), u16::from_be_bytes(*port)));
            Ok(Decoded::Done(Address::Ip(address), total))
        }
        consts::ATYP_DOMAIN => {
            let Some((&len, rest)) = rest.split_first() else {
                return Ok(Decoded::NeedMore(1));
            };
            if len == 0 {
                return Err(Error::EmptyDomain);
            }
            let len = usize::from(len);
            let total = 1 + 1 + len + 2;
            let Some((name, rest)) = rest.split_at_checked(len) else {
                return Ok(need(total, buf.len()));
            };
            let Some(port) = rest.first_chunk::<2>() else {
                return Ok(need(total, buf.len()));
            };
            let name = String::from_utf8_lossy(name).into_owned();
            Ok(Decoded::Done(
                Address::Domain(name, u16::from_be_bytes(*port)),
                total,
            ))
        }
        other => Err(Error::AddressType(other)),
    }
}

/// Encodes an address (ATYP, ADDR, PORT).
///
/// # Errors
///
/// [`Error::EmptyDomain`] or [`Error::TooLong`] for a domain name of 0 or more than 255 bytes;
/// nothing is written then.
pub fn encode_address(address: &Address, out: &mut impl BufMut) -> Result<(), Error> {
    match address {
        Address::Ip(SocketAddr::V4(address)) => {
            out.put_u8(consts::ATYP_IPV4);
            out.put_slice(&address.ip().octets());
            out.put_u16(address.port());
        }
        Address::Ip(SocketAddr::V6(address)) => {
            out.put_u8(consts::ATYP_IPV6);
            out.put_slice(&address.ip().octets());
            out.put_u16(address.port());
        }
        Address::Domain(name, port) => {
            let len = domain_len(name)?;
            out.put_u8(consts::ATYP_DOMAIN);
            out.put_u8(len);
            out.put_slice(name.as_bytes());
            out.put_u16(*port);
        }
    }
    Ok(())
}

/// Checks an address before a message that holds it starts being written.
pub(super) fn check_address(address: &Address) -> Result<(), Error> {
    match address {
        Address::Ip(_) => Ok(()),
        Address::Domain(name, _) => domain_len(name).map(drop),
    }
}

fn domain_len(name: &str) -> Result<u8, Error> {
    match u8::try_from(name.len()) {
        Ok(0) => Err(Error::EmptyDomain),
        Ok(len) => Ok(len),
        Err(_) => Err(Error::TooLong {
            field: "domain name",
            len: name.len(),
        }),
    }
}

/// `NeedMore` for a message of `total` bytes of which `have` arrived (`have < total`).
pub(super) fn need<T>(total: usize, have: usize) -> Decoded<T> {
    Decoded::NeedMore(total.saturating_sub(have).max(1))
}

/// Offsets a nested decoder's answer by the `prefix` bytes in front of it.
pub(super) fn after_prefix<T, U>(
    prefix: usize,
    decoded: Decoded<T>,
    build: impl FnOnce(T) -> U,
) -> Decoded<U> {
    match decoded {
        Decoded::NeedMore(n) => Decoded::NeedMore(n),
        Decoded::Done(value, used) => Decoded::Done(build(value), prefix + used),
    }
}

#[cfg(test)]
pub(super) mod strategy {
    //! proptest strategies shared by the wire tests.
    use super::Address;
    use proptest::prelude::*;
    use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

    pub(in crate::wire) fn address() -> impl Strategy<Value = Address> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| Address::Ip(SocketAddr::from((ip, port)))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| Address::Ip(SocketAddr::V6(
                SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0)
            ))),
            ("\\PC{1,63}", any::<u16>())
                .prop_filter("fits in 255 bytes", |(name, _)| name.len() <= 255)
                .prop_map(|(name, port)| Address::Domain(name, port)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(bytes: &[u8]) -> Result<Decoded<Address>, Error> {
        decode_address(bytes)
    }

    #[test]
    fn decodes_each_address_type() {
        let v4 = Address::Ip("127.0.0.1:80".parse().expect("valid"));
        let v6 = Address::Ip("[::1]:443".parse().expect("valid"));
        let domain = Address::Domain("example.com".into(), 8080);
        let table: [(&[u8], Decoded<Address>); 5] = [
            (&[0x01, 127, 0, 0, 1, 0, 80], Decoded::Done(v4.clone(), 7)),
            (&[0x01, 127, 0, 0, 1, 0, 80, 0xAA], Decoded::Done(v4, 7)),
            (
                &[
                    0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0xBB,
                ],
                Decoded::Done(v6, 19),
            ),
            (b"\x03\x0bexample.com\x1f\x90", Decoded::Done(domain, 15)),
            (
                b"\x03\x02\xff\xfe\x00\x01",
                Decoded::Done(Address::Domain("\u{fffd}\u{fffd}".into(), 1), 6),
            ),
        ];
        for (bytes, expected) in table {
            assert_eq!(decode(bytes).expect("valid"), expected, "{bytes:02x?}");
        }
    }

    #[test]
    fn asks_for_exactly_what_it_can_know_is_missing() {
        let table: [(&[u8], usize); 6] = [
            (&[], 2),
            (&[0x01], 6),
            (&[0x01, 127, 0, 0, 1, 0], 1),
            (&[0x04, 0], 17),
            (&[0x03], 1),
            (b"\x03\x03ab", 3),
        ];
        for (bytes, more) in table {
            assert_eq!(
                decode(bytes).expect("prefix"),
                Decoded::NeedMore(more),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn rejects_unknown_address_types_and_empty_names() {
        assert!(matches!(
            decode(&[0x02, 0, 0]),
            Err(Error::AddressType(0x02))
        ));
        assert!(matches!(decode(&[0x00]), Err(Error::AddressType(0x00))));
        assert!(matches!(
            decode(&[0x03, 0x00, 0, 80]),
            Err(Error::EmptyDomain)
        ));
    }

    #[test]
    fn refuses_to_encode_names_that_do_not_fit() {
        let mut out = Vec::new();
        let long = Address::Domain("a".repeat(256), 1);
        assert!(matches!(
            encode_address(&long, &mut out),
            Err(Error::TooLong {
                field: "domain name",
                len: 256
            })
        ));
        let empty = Address::Domain(String::new(), 1);
        assert!(matches!(
            encode_address(&empty, &mut out),
            Err(Error::EmptyDomain)
        ));
        assert!(out.is_empty());
        let longest = Address::Domain("a".repeat(255), 1);
        encode_address(&longest, &mut out).expect("255 bytes fit");
        assert_eq!(out.len(), longest.encoded_len());
    }

    #[test]
    fn displays_like_a_socket_address() {
        assert_eq!(
            Address::Ip("[::1]:80".parse().expect("valid")).to_string(),
            "[::1]:80"
        );
        assert_eq!(Address::Domain("a.test".into(), 1).to_string(), "a.test:1");
        assert_eq!(Address::UNSPECIFIED.to_string(), "0.0.0.0:0");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Decoded::Done(_, used)) = decode(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }

        #[test]
        fn encode_then_decode_round_trips(address in strategy::address()) {
            let mut out = Vec::new();
            encode_address(&address, &mut out).expect("fits");
            prop_assert_eq!(out.len(), address.encoded_len());
            prop_assert_eq!(decode(&out).expect("valid"), Decoded::Done(address, out.len()));
            for cut in 0..out.len() {
                match decode(&out[..cut]).expect("prefix") {
                    Decoded::NeedMore(n) => prop_assert!(n >= 1 && n <= out.len() - cut),
                    Decoded::Done(..) => prop_assert!(false, "a prefix decoded"),
                }
            }
        }
    }
}
